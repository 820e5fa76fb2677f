// A workload for pre-copy (tests/cr_precopy_test.cc, tests/container_precopy_test.cc): two
// arrays of MIB/2 MiB each, filled equal; NPROC processes (the first forks the others after the
// fill: their arrays start as shared copy-on-write pages) each increment words of a small working
// set (WORKSET_KIB of each array) in both arrays, a little memory written all the time. Every
// 2048 increments a 1 MiB region (mapped before the tracking started) is replaced by a fresh
// mapping (mmap MAP_FIXED over it) filled for a new generation: one dirty tracking never saw. Every
// 8192 increments one more page of a private mapping of DIR/priv (copied on write before) is
// dropped with MADV_DONTNEED, so it reads the file again. Once DIR/go exists, each
// process checks every word (a == b, the increments add up, the region holds its generation)
// and writes "ok N" or "bad CODE" to DIR/result-I; the first waits for the others.
// Then it exits with 0 or the first bad code, or with "stay" sleeps (a container's init).
// Readiness: READY_FD (a pipe the test reads, or "-") gets a line and DIR/ready is created once
// every process runs its loop. Static (runs in a busybox rootfs).
// Usage: c_precopy READY_FD|- MIB WORKSET_KIB NPROC DIR [stay]
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define REGION (1u << 20)

static char dir[512];

static void path(char* out, size_t n, const char* name) { snprintf(out, n, "%s/%s", dir, name); }

static void write_file(const char* name, const char* text) {
  char p[600], tmp[640];
  path(p, sizeof(p), name);
  snprintf(tmp, sizeof(tmp), "%s.tmp", p);
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) return;
  if (write(fd, text, strlen(text)) < 0) {
  }
  close(fd);
  rename(tmp, p);
}

static uint64_t* fill_region(uint64_t* at, uint64_t gen) {
  uint64_t* r = mmap(at, REGION, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | (at ? MAP_FIXED : 0), -1, 0);
  if (r == MAP_FAILED) exit(20);
  for (size_t j = 0; j < REGION / 8; ++j) r[j] = gen * 1000003u + j;
  return r;
}

// A private mapping of DIR/priv (PRIV_PAGES pages of 'f'), every page copied on write ('c')
// before the tracking starts; then one page after another dropped (MADV_DONTNEED) while the
// rounds run: those read the file's 'f' again, and a restore must not bring the copies back.
#define PRIV_PAGES 256
static char* map_priv(void) {
  char p[600];
  path(p, sizeof(p), "priv");
  int fd = open(p, O_RDONLY);
  if (fd < 0) exit(21);
  char* m = mmap(NULL, PRIV_PAGES * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
  close(fd);
  if (m == MAP_FAILED) exit(22);
  for (size_t i = 0; i < PRIV_PAGES; ++i) memset(m + i * 4096, 'c', 4096);
  return m;
}

// One process's loop until DIR/go, then its check. Returns 0 or a bad code.
static int work(int index, uint64_t* a, uint64_t* b, size_t n, size_t workset,
                uint64_t* region) {
  uint64_t gen = 0;
  char* priv = map_priv();
  size_t dropped = 0;
  struct timespec pause = {0, 50000};
  char go[600];
  path(go, sizeof(go), "go");
  uint64_t it = 0;
  for (;;) {
    ++it;
    // A stride of 509 words (just under a page) spreads the increments over the working set.
    size_t idx = (it * 509) % workset;
    a[idx]++;
    b[idx]++;
    if ((it & 2047) == 0) region = fill_region(region, ++gen);
    if ((it & 8191) == 0 && dropped < PRIV_PAGES)
      madvise(priv + 4096 * dropped++, 4096, MADV_DONTNEED);
    if ((it & 63) == 0) nanosleep(&pause, NULL);
    if ((it & 1023) == 0 && access(go, F_OK) == 0) break;
  }
  uint64_t sa = 0, s0 = 0;
  int bad = 0;
  for (size_t j = 0; j < n; ++j) {
    if (a[j] != b[j]) bad = bad ? bad : 11;
    sa += a[j];
    s0 += j;
  }
  if (!bad && sa - s0 != it) bad = 12;
  for (size_t j = 0; j < REGION / 8 && !bad; ++j)
    if (region[j] != gen * 1000003u + j) bad = 13;
  for (size_t i = 0; i < PRIV_PAGES * 4096 && !bad; ++i)
    if (priv[i] != (i / 4096 < dropped ? 'f' : 'c')) bad = 14;
  char name[32], text[64];
  snprintf(name, sizeof(name), "result-%d", index);
  if (bad)
    snprintf(text, sizeof(text), "bad %d\n", bad);
  else
    snprintf(text, sizeof(text), "ok %llu\n", (unsigned long long)it);
  write_file(name, text);
  return bad;
}

int main(int argc, char** argv) {
  if (argc < 6) return 2;
  int ready_fd = strcmp(argv[1], "-") == 0 ? -1 : atoi(argv[1]);
  size_t mib = strtoul(argv[2], NULL, 10);
  size_t workset = strtoul(argv[3], NULL, 10) * 1024 / 8;
  int nproc = atoi(argv[4]);
  snprintf(dir, sizeof(dir), "%s", argv[5]);
  int stay = argc > 6 && strcmp(argv[6], "stay") == 0;
  size_t n = mib * (1u << 20) / 2 / 8;
  if (nproc < 1 || workset == 0 || workset > n) return 2;
  uint64_t* a = mmap(NULL, n * 8, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  uint64_t* b = mmap(NULL, n * 8, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (a == MAP_FAILED || b == MAP_FAILED) return 3;
  for (size_t j = 0; j < n; ++j) a[j] = b[j] = j;
  {
    char p[600];
    path(p, sizeof(p), "priv");
    int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) return 10;
    char page[4096];
    memset(page, 'f', sizeof(page));
    for (int i = 0; i < PRIV_PAGES; ++i)
      if (write(fd, page, sizeof(page)) != (ssize_t)sizeof(page)) return 10;
    close(fd);
  }
  // Mapped before the tracking starts, replaced after: tracking must see that it is not the
  // mapping it protected.
  uint64_t* region = fill_region(NULL, 0);
  // The others start now; each signals on a pipe once in its loop's process (forked, arrays in).
  int started[2];
  if (pipe(started) < 0) return 4;
  pid_t kids[16];
  for (int i = 1; i < nproc && i < 16; ++i) {
    kids[i] = fork();
    if (kids[i] < 0) return 5;
    if (kids[i] == 0) {
      close(started[0]);
      if (write(started[1], "k", 1) != 1) _exit(6);
      close(started[1]);
      if (ready_fd >= 0) close(ready_fd);
      _exit(work(i, a, b, n, workset, region));
    }
  }
  close(started[1]);
  char c;
  for (int i = 1; i < nproc; ++i)
    if (read(started[0], &c, 1) != 1) return 7;
  close(started[0]);
  write_file("ready", "ready\n");
  if (ready_fd >= 0) {
    if (write(ready_fd, "ready\n", 6) != 6) return 8;
    close(ready_fd);
  }
  int bad = work(0, a, b, n, workset, region);
  for (int i = 1; i < nproc; ++i) {
    int st = 0;
    if (waitpid(kids[i], &st, 0) < 0) return 9;
    int code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    if (!bad) bad = code;
  }
  if (stay)
    for (;;) pause();
  return bad;
}
