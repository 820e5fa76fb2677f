/* zdtm-style helpers for kernel objects a process holds in its memory or fd table (own code;
 * CRIU's zdtm static tests bpf_hash, bpf_array, aio00, aio01, cow00 and cow01 say what state to
 * set up): z_kobj MODE READY_FD DIR, the protocol of zdtm_helper.h. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <linux/aio_abi.h>
#include <linux/bpf.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "zdtm_helper.h"

static long bpf(int cmd, union bpf_attr* a) { return syscall(SYS_bpf, cmd, a, sizeof(*a)); }

static int map_create(uint32_t type, uint32_t key, uint32_t value, uint32_t max, uint32_t flags,
                      const char* name) {
  union bpf_attr a;
  memset(&a, 0, sizeof a);
  a.map_type = type;
  a.key_size = key;
  a.value_size = value;
  a.max_entries = max;
  a.map_flags = flags;
  snprintf(a.map_name, sizeof a.map_name, "%s", name);
  return (int)bpf(BPF_MAP_CREATE, &a);
}
static int map_update(int fd, const void* k, const void* v) {
  union bpf_attr a;
  memset(&a, 0, sizeof a);
  a.map_fd = fd;
  a.key = (uint64_t)(uintptr_t)k;
  a.value = (uint64_t)(uintptr_t)v;
  a.flags = BPF_ANY;
  return (int)bpf(BPF_MAP_UPDATE_ELEM, &a);
}
static int map_lookup(int fd, const void* k, void* v) {
  union bpf_attr a;
  memset(&a, 0, sizeof a);
  a.map_fd = fd;
  a.key = (uint64_t)(uintptr_t)k;
  a.value = (uint64_t)(uintptr_t)v;
  return (int)bpf(BPF_MAP_LOOKUP_ELEM, &a);
}
static int map_info(int fd, struct bpf_map_info* info) {
  union bpf_attr a;
  memset(&a, 0, sizeof a);
  memset(info, 0, sizeof *info);
  a.info.bpf_fd = fd;
  a.info.info_len = sizeof *info;
  a.info.info = (uint64_t)(uintptr_t)info;
  return (int)bpf(BPF_OBJ_GET_INFO_BY_FD, &a);
}
static int map_count(int fd, uint32_t key_size) {
  char k[64], n[64];
  int count = 0;
  union bpf_attr a;
  for (int first = 1;; first = 0) {
    memset(&a, 0, sizeof a);
    a.map_fd = fd;
    a.key = first ? 0 : (uint64_t)(uintptr_t)k;
    a.next_key = (uint64_t)(uintptr_t)n;
    if (bpf(BPF_MAP_GET_NEXT_KEY, &a) < 0) return errno == ENOENT ? count : -1;
    memcpy(k, n, key_size);
    count++;
  }
}
/* "frozen:" and "memlock:" of /proc/self/fdinfo/FD. */
static void fdinfo_of(int fd, int* frozen, long long* memlock) {
  char p[64], line[256];
  snprintf(p, sizeof p, "/proc/self/fdinfo/%d", fd);
  FILE* f = fopen(p, "r");
  *frozen = -1;
  *memlock = -1;
  if (!f) return;
  while (fgets(line, sizeof line, f)) {
    sscanf(line, "frozen: %d", frozen);
    sscanf(line, "memlock: %lld", memlock);
  }
  fclose(f);
}

/* bpf_hash, bpf_array: a map of each type filled and frozen; the same attributes, fdinfo and
 * elements after the restore, still frozen (an update fails). Also a second description of the
 * hash map (BPF_MAP_GET_FD_BY_ID) that must stay the same map, a per-CPU array, and an LRU hash
 * left writable. */
static int m_bpf(void) {
  const uint32_t max = 10;
  int h = map_create(BPF_MAP_TYPE_HASH, 4, 4, max, BPF_F_NO_PREALLOC | BPF_F_NUMA_NODE,
                     "hash_test_map");
  int ar = map_create(BPF_MAP_TYPE_ARRAY, 4, 4, max, BPF_F_NUMA_NODE, "array_test_map");
  int pc = map_create(BPF_MAP_TYPE_PERCPU_ARRAY, 4, 12, 4, 0, "percpu");
  int lru = map_create(BPF_MAP_TYPE_LRU_HASH, 8, 16, 32, 0, "lru");
  SETUP(h >= 0 && ar >= 0 && pc >= 0 && lru >= 0);
  for (uint32_t i = 0; i < max; ++i) {
    uint32_t k = i + 1, v = i + 2;
    SETUP(map_update(h, &k, &v) == 0);
    k = i;
    v = i + 1;
    SETUP(map_update(ar, &k, &v) == 0);
  }
  long ncpu = sysconf(_SC_NPROCESSORS_CONF);
  char pcv[64 * 16];
  memset(pcv, 0, sizeof pcv);
  for (long c = 0; c < ncpu && c < 64; ++c) snprintf(pcv + c * 16, 12, "cpu%ld", c);
  uint32_t k2 = 2;
  SETUP(map_update(pc, &k2, pcv) == 0);
  for (uint64_t i = 0; i < 5; ++i) {
    char v[16];
    snprintf(v, sizeof v, "lru-%llu", (unsigned long long)i);
    SETUP(map_update(lru, &i, v) == 0);
  }
  union bpf_attr a;
  memset(&a, 0, sizeof a);
  a.map_fd = h;
  SETUP(bpf(BPF_MAP_FREEZE, &a) == 0);
  memset(&a, 0, sizeof a);
  a.map_fd = ar;
  SETUP(bpf(BPF_MAP_FREEZE, &a) == 0);
  struct bpf_map_info hi0, ai0, hi1, ai1;
  SETUP(map_info(h, &hi0) == 0 && map_info(ar, &ai0) == 0);
  memset(&a, 0, sizeof a);
  a.map_id = hi0.id;
  int h2 = (int)bpf(BPF_MAP_GET_FD_BY_ID, &a);
  SETUP(h2 >= 0);
  int hf0, af0;
  long long hm0, am0;
  fdinfo_of(h, &hf0, &hm0);
  fdinfo_of(ar, &af0, &am0);
  SETUP(hf0 == 1 && af0 == 1);
  ready_and_wait();

  CHECK(map_info(h, &hi1) == 0 && map_info(ar, &ai1) == 0, "map info");
  CHECK(hi1.type == hi0.type && hi1.key_size == 4 && hi1.value_size == 4 &&
            hi1.max_entries == max && hi1.map_flags == hi0.map_flags &&
            !strcmp(hi1.name, "hash_test_map"),
        "hash attributes: type %u flags %#x name %s", hi1.type, hi1.map_flags, hi1.name);
  CHECK(ai1.type == ai0.type && ai1.map_flags == ai0.map_flags && ai1.max_entries == max &&
            !strcmp(ai1.name, "array_test_map"),
        "array attributes: type %u flags %#x name %s", ai1.type, ai1.map_flags, ai1.name);
  int hf1, af1;
  long long hm1, am1;
  fdinfo_of(h, &hf1, &hm1);
  fdinfo_of(ar, &af1, &am1);
  CHECK(hf1 == 1 && af1 == 1, "still frozen: %d %d", hf1, af1);
  CHECK(hm1 == hm0 && am1 == am0, "memlock %lld/%lld, was %lld/%lld", hm1, am1, hm0, am0);
  CHECK(map_count(h, 4) == (int)max, "hash elements: %d", map_count(h, 4));
  for (uint32_t i = 0; i < max; ++i) {
    uint32_t k = i + 1, v = 0;
    CHECK(map_lookup(h, &k, &v) == 0 && v == i + 2, "hash key %u: %u", k, v);
    k = i;
    CHECK(map_lookup(ar, &k, &v) == 0 && v == i + 1, "array index %u: %u", k, v);
  }
  uint32_t k = 1, v = 7;
  CHECK(map_update(h, &k, &v) < 0 && errno == EPERM, "a frozen map refuses updates");
  struct bpf_map_info h2i;
  CHECK(map_info(h2, &h2i) == 0 && h2i.id == hi1.id, "the second fd is the same map: %u vs %u",
        h2i.id, hi1.id);
  char got[64 * 16];
  CHECK(map_lookup(pc, &k2, got) == 0 && !memcmp(got, pcv, (size_t)(ncpu < 64 ? ncpu : 64) * 16),
        "per-CPU values");
  CHECK(map_count(lru, 8) == 5, "lru elements: %d", map_count(lru, 8));
  uint64_t lk = 3;
  char lv[16];
  CHECK(map_lookup(lru, &lk, lv) == 0 && !strcmp(lv, "lru-3"), "lru value");
  uint64_t nk = 9;
  char nv[16] = "new";
  CHECK(map_update(lru, &nk, nv) == 0, "the lru map takes updates");
  return 0;
}

/* A BPF map type whose elements are not reached by a key walk (a queue): refused at dump. */
static int m_bpf_queue(void) {
  int q = map_create(BPF_MAP_TYPE_QUEUE, 0, 4, 8, 0, "q");
  SETUP(q >= 0);
  uint32_t v = 5;
  union bpf_attr a;
  memset(&a, 0, sizeof a);
  a.map_fd = q;
  a.value = (uint64_t)(uintptr_t)&v;
  SETUP(bpf(BPF_MAP_UPDATE_ELEM, &a) == 0);
  ready_and_wait();
  return 0;
}


/* AIO: the ring header of a context (fs/aio.c struct aio_ring). */
struct ring_hdr {
  unsigned id, nr, head, tail, magic, compat, incompat, header_length;
};
static int submit_null(aio_context_t ctx, int fd, uint64_t data) {
  static char b[1];
  struct iocb cb;
  memset(&cb, 0, sizeof cb);
  cb.aio_fildes = fd;
  cb.aio_lio_opcode = IOCB_CMD_PWRITE;
  cb.aio_buf = (uint64_t)(uintptr_t)b;
  cb.aio_nbytes = 1;
  cb.aio_data = data;
  struct iocb* p = &cb;
  return (int)syscall(SYS_io_submit, ctx, 1, &p);
}

/* aio00: a plain context, nothing submitted: io_getevents finds it (0 events, not EINVAL). */
static int m_aio00(void) {
  aio_context_t ctx = 0;
  SETUP(syscall(SYS_io_setup, 1, &ctx) == 0);
  ready_and_wait();
  struct io_event ev;
  struct timespec zero = {0, 0};
  long n = syscall(SYS_io_getevents, ctx, 0, 1, &ev, &zero);
  CHECK(n == 0, "io_getevents on the restored context: %ld", n);
  CHECK(syscall(SYS_io_destroy, ctx) == 0, "io_destroy");
  return 0;
}

/* aio01 and more: contexts whose tail went round (tail < head) or not, with completed events
 * not yet reaped: head, tail and nr the same after the restore, the unreaped events read back
 * with their data, and the next submission lands at tail + 1. The ring stays at its address. */
static int aio_ring_case(aio_context_t* ctx, int fd, unsigned wrap, unsigned pending) {
  SETUP(syscall(SYS_io_setup, 64, ctx) == 0);
  volatile struct ring_hdr* r = (struct ring_hdr*)*ctx;
  unsigned nr = r->nr;
  /* Submit and reap until the tail has gone (wrap ? to the last slot : half way), then leave
   * `pending` completions unreaped (with wrap: across the end, so tail < head). */
  unsigned total = wrap ? nr - 1 : nr / 2;
  struct io_event ev;
  for (unsigned i = 0; i < total; ++i) {
    SETUP(submit_null(*ctx, fd, i) == 1);
    SETUP(syscall(SYS_io_getevents, *ctx, 1, 1, &ev, NULL) == 1);
  }
  for (unsigned i = 0; i < pending; ++i) SETUP(submit_null(*ctx, fd, 1000 + i) == 1);
  return 0;
}
static int m_aio01(void) {
  int fd = open("/dev/null", O_WRONLY);
  SETUP(fd >= 0);
  aio_context_t a = 0, b = 0;
  aio_ring_case(&a, fd, 0, 3);
  aio_ring_case(&b, fd, 1, 3);
  struct ring_hdr ha = *(struct ring_hdr*)a, hb = *(struct ring_hdr*)b;
  SETUP(hb.tail < hb.head && ha.tail == ha.head + 3);
  ready_and_wait();
  struct ring_hdr na = *(volatile struct ring_hdr*)a, nb = *(volatile struct ring_hdr*)b;
  CHECK(na.head == ha.head && na.tail == ha.tail && na.nr == ha.nr, "ring a: head %u tail %u nr %u,"
        " was %u %u %u", na.head, na.tail, na.nr, ha.head, ha.tail, ha.nr);
  CHECK(nb.head == hb.head && nb.tail == hb.tail && nb.nr == hb.nr, "ring b: head %u tail %u nr %u,"
        " was %u %u %u", nb.head, nb.tail, nb.nr, hb.head, hb.tail, hb.nr);
  struct io_event ev[4];
  struct timespec zero = {0, 0};
  long n = syscall(SYS_io_getevents, a, 0, 4, ev, &zero);
  CHECK(n == 3 && ev[0].data == 1000 && ev[1].data == 1001 && ev[2].data == 1002 && ev[0].res == 1,
        "ring a's unreaped events: %ld", n);
  n = syscall(SYS_io_getevents, b, 0, 4, ev, &zero);
  CHECK(n == 3 && ev[0].data == 1000 && ev[1].data == 1001 && ev[2].data == 1002,
        "ring b's unreaped events (across the end): %ld", n);
  nb = *(volatile struct ring_hdr*)b;
  CHECK(submit_null(b, fd, 7) == 1, "submit on the restored context");
  struct ring_hdr after = *(volatile struct ring_hdr*)b;
  CHECK(after.tail == (nb.tail + 1) % nb.nr && after.head == nb.head, "tail %u after a submit, was %u",
        after.tail, nb.tail);
  CHECK(syscall(SYS_io_getevents, b, 1, 1, ev, NULL) == 1 && ev[0].data == 7, "its event");
  CHECK(syscall(SYS_io_destroy, a) == 0 && syscall(SYS_io_destroy, b) == 0, "io_destroy");
  return 0;
}

/* COW: the physical frame of the page at addr in pid (pagemap bits 0-54; 0 if not present). */
static uint64_t pfn_of(pid_t pid, const void* addr) {
  char path[64];
  snprintf(path, sizeof path, "/proc/%d/pagemap", pid);
  int fd = open(path, O_RDONLY);
  if (fd < 0) return 0;
  uint64_t e = 0;
  long pg = sysconf(_SC_PAGESIZE);
  if (pread(fd, &e, 8, (off_t)((uintptr_t)addr / pg * 8)) != 8) e = 0;
  close(fd);
  if (!(e >> 63)) return 0;
  return e & ((1ULL << 55) - 1);
}

/* cow00, cow01: a parent's private memory, anonymous (between guard pages, so no VMA merges)
 * and of a file, with pages written before the fork only (shared: one frame in both after the
 * restore too), written again by the child or by the parent after it (each its own content), and
 * never written (zeros, or the file's). The child answers on a pipe. */
enum { kPages = 6 };
static char* cow_anon(void) {
  long pg = sysconf(_SC_PAGESIZE);
  char* a = mmap(NULL, (kPages + 2) * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  SETUP(a != MAP_FAILED);
  SETUP(mmap(a, pg, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) == a);
  SETUP(mmap(a + (kPages + 1) * pg, pg, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) !=
        MAP_FAILED);
  return a + pg;
}
static int m_cow(void) {
  long pg = sysconf(_SC_PAGESIZE);
  char* a = cow_anon();
  /* A file mapped privately: its pages 0..kPages-1 hold 'F'+i. */
  int fd = open(path_in("cow.file"), O_RDWR | O_CREAT | O_TRUNC, 0600);
  SETUP(fd >= 0);
  for (int i = 0; i < kPages; ++i) {
    char b[4096];
    memset(b, 'F' + i, sizeof b);
    SETUP(write(fd, b, sizeof b) == (ssize_t)sizeof b);
  }
  char* f = mmap(NULL, kPages * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
  SETUP(f != MAP_FAILED);
  close(fd);
  /* Page i: 0 shared (written before), 1 child writes after, 2 parent writes after, 3 untouched,
   * 4 shared and read-only afterwards (mprotect in both: three VMAs each), 5 shared. */
  for (int i = 0; i < kPages; ++i)
    if (i != 3) {
      memset(a + i * pg, 'a' + i, pg);
      memset(f + i * pg, 'k' + i, pg);
    }
  int ping[2], pong[2];
  SETUP(pipe(ping) == 0 && pipe(pong) == 0);
  pid_t c = zfork();
  SETUP(c >= 0);
  if (c == 0) {
    close(ping[1]);
    close(pong[0]);
    memset(a + 1 * pg, 'C', pg);
    memset(f + 1 * pg, 'C', pg);
    SETUP(mprotect(a + 4 * pg, pg, PROT_READ) == 0);
    SETUP(write(pong[1], "r", 1) == 1);
    char x;
    while (read(ping[0], &x, 1) == 1) {
      int bad = 0;
      for (int i = 0; i < kPages; ++i) {
        char want = i == 1 ? 'C' : i == 3 ? 0 : 'a' + i;
        char wantf = i == 1 ? 'C' : i == 3 ? 'F' + i : 'k' + i;
        if (a[i * pg] != want || a[i * pg + pg - 1] != want) bad = 1 + i;
        if (f[i * pg] != wantf || f[i * pg + pg - 1] != wantf) bad = 10 + i;
      }
      char r = bad ? (char)bad : 'o';
      SETUP(write(pong[1], &r, 1) == 1);
    }
    _exit(0);
  }
  close(ping[0]);
  close(pong[1]);
  char x;
  SETUP(read(pong[0], &x, 1) == 1);
  memset(a + 2 * pg, 'P', pg);
  memset(f + 2 * pg, 'P', pg);
  SETUP(mprotect(a + 4 * pg, pg, PROT_READ) == 0);
  uint64_t before = pfn_of(c, a), beforef = pfn_of(c, f);
  SETUP(before != 0 && before == pfn_of(getpid(), a));
  SETUP(beforef != 0 && beforef == pfn_of(getpid(), f));
  ready_and_wait();

  for (int i = 0; i < kPages; ++i) {
    char want = i == 2 ? 'P' : i == 3 ? 0 : 'a' + i;
    char wantf = i == 2 ? 'P' : i == 3 ? 'F' + i : 'k' + i;
    CHECK(a[i * pg] == want && a[i * pg + pg - 1] == want, "parent anon page %d: %d", i, a[i * pg]);
    CHECK(f[i * pg] == wantf && f[i * pg + pg - 1] == wantf, "parent file page %d: %d", i, f[i * pg]);
  }
  SETUP(write(ping[1], "?", 1) == 1);
  CHECK(read(pong[0], &x, 1) == 1 && x == 'o', "the child's pages: %d", x);
  int shared_pages[] = {0, 4, 5};
  for (int k = 0; k < 3; ++k) {
    int i = shared_pages[k];
    uint64_t pc = pfn_of(c, a + i * pg), pp = pfn_of(getpid(), a + i * pg);
    CHECK(pc != 0 && pc == pp, "anon page %d is one page in both (child %llx parent %llx)", i,
          (unsigned long long)pc, (unsigned long long)pp);
    pc = pfn_of(c, f + i * pg);
    pp = pfn_of(getpid(), f + i * pg);
    CHECK(pc != 0 && pc == pp, "file page %d is one page in both (child %llx parent %llx)", i,
          (unsigned long long)pc, (unsigned long long)pp);
  }
  CHECK(pfn_of(c, a + 1 * pg) != pfn_of(getpid(), a + 1 * pg), "written pages are each's own");
  /* Copy-on-write still: a write in the parent leaves the child's page as it was. */
  memset(a, 'Z', pg);
  SETUP(write(ping[1], "?", 1) == 1);
  CHECK(read(pong[0], &x, 1) == 1 && x == 'o', "the child's pages after the parent wrote: %d", x);
  CHECK(mprotect(a + 4 * pg, pg, PROT_READ | PROT_WRITE) == 0, "mprotect");
  close(ping[1]);
  int st;
  CHECK(waitpid(c, &st, 0) == c && WIFEXITED(st) && WEXITSTATUS(st) == 0, "child exit");
  return 0;
}

int main(int argc, char** argv) {
  int bad = zdtm_start(argc, argv);
  if (bad) return bad;
  static const struct zdtm_mode modes[] = {
      {"bpf", m_bpf},
      {"bpf_queue", m_bpf_queue},
      {"aio00", m_aio00},
      {"aio01", m_aio01},
      {"cow", m_cow},
  };
  return zdtm_run(argv[1], modes, sizeof modes / sizeof modes[0]);
}
