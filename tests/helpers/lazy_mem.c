// zdtm-style helper for lazy restore: lazy_mem READY_FD GO_FILE MIB
// Holds MIB MiB of incompressible private anonymous memory (a pattern derived from each page's
// index), plus smaller regions each exercising one thing the lazy pager must get right. After
// GO_FILE exists (the restored copy, with its pages still owed), it checks, with pages faulted
// from several threads at once:
//   - four threads verify a quarter of the big region each (concurrent faults);
//   - a forked child verifies the whole big region (a fork while pages are owed: the child is
//     owed the same pages) and exits 0 if it matches;
//   - write(2) from an owed buffer into a pipe (the kernel touches the missing page: it must
//     wait for it, not fail with EFAULT) reads back the right bytes;
//   - region D, discarded with MADV_DONTNEED after the restore, reads zero (a page the program
//     dropped must never be filled later);
//   - region M, moved with mremap after the restore, holds its data at the new address;
//   - region U, unmapped and mapped again fresh at the same address, reads zero;
//   - region Z, never written before the dump, reads zero.
// Exit 0 if everything holds, else the number of the failed check (stderr says which).
// Before GO_FILE it loops on nanosleep, touching nothing.
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096
#define SMALL (64 * PAGE)

static uint64_t* big;
static size_t big_pages;

static void fill(uint64_t* p, uint64_t tag, uint64_t page) {
  uint64_t x = (tag << 40) ^ (page * 0x9E3779B97F4A7C15ULL) ^ 0x2545F4914F6CDD1DULL;
  for (int k = 0; k < PAGE / 8; ++k) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    p[k] = x;
  }
}

static int check(const uint64_t* p, uint64_t tag, uint64_t page) {
  uint64_t want[PAGE / 8];
  fill(want, tag, page);
  return memcmp(p, want, PAGE) == 0;
}

static int zero(const char* p, size_t len) {
  for (size_t i = 0; i < len; ++i)
    if (p[i]) return 0;
  return 1;
}

struct part {
  size_t from, to;
  int bad;
  size_t first_bad;
};

// What a wrong page holds instead: zero, another page of the big region (which), or neither.
static void describe(size_t i) {
  const uint64_t* p = big + i * (PAGE / 8);
  if (zero((const char*)p, PAGE)) {
    fprintf(stderr, "big page %zu (at %p) reads zero\n", i, (void*)p);
    return;
  }
  for (size_t j = 0; j < big_pages; ++j)
    if (check(p, 1, j)) {
      fprintf(stderr, "big page %zu (at %p) holds page %zu's data\n", i, (void*)p, j);
      return;
    }
  size_t same = 0;
  uint64_t want[PAGE / 8];
  fill(want, 1, i);
  for (int k = 0; k < PAGE / 8; ++k) same += p[k] == want[k];
  fprintf(stderr, "big page %zu (at %p) holds other data (%zu of 512 words right)\n", i,
          (void*)p, same);
}

static void* verify(void* arg) {
  struct part* pt = arg;
  for (size_t i = pt->from; i < pt->to; ++i)
    if (!check(big + i * (PAGE / 8), 1, i) && pt->bad++ == 0) pt->first_bad = i;
  return NULL;
}

static char* region(uint64_t tag, int write) {
  char* p = mmap(NULL, SMALL, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) exit(90);
  if (write)
    for (size_t i = 0; i < SMALL / PAGE; ++i) fill((uint64_t*)(p + i * PAGE), tag, i);
  return p;
}

int main(int argc, char** argv) {
  if (argc < 4) return 99;
  int ready = atoi(argv[1]);
  const char* go = argv[2];
  size_t mib = strtoul(argv[3], NULL, 10);
  big_pages = mib * 256;
  big = mmap(NULL, big_pages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (big == MAP_FAILED) return 98;
  for (size_t i = 0; i < big_pages; ++i) fill(big + i * (PAGE / 8), 1, i);
  char* d = region(2, 1);
  char* m = region(3, 1);
  char* u = region(4, 1);
  char* z = region(5, 0);
  z[0] = 0;  // mapped, one page touched (zero)
  char* w = region(6, 1);
  if (write(ready, "ready\n", 6) != 6) return 97;
  close(ready);
  struct timespec ts = {0, 1000000};
  while (access(go, F_OK) != 0) nanosleep(&ts, NULL);

  // The kernel reads an owed page (the pipe is big enough for one page).
  int pfd[2];
  if (pipe(pfd) != 0) return 96;
  if (write(pfd[1], w + 5 * PAGE, PAGE) != PAGE) {
    fprintf(stderr, "write from an owed page: %s\n", strerror(errno));
    return 1;
  }
  char back[PAGE];
  if (read(pfd[0], back, PAGE) != PAGE || !check((uint64_t*)back, 6, 5)) {
    fprintf(stderr, "pipe round trip of an owed page differs\n");
    return 1;
  }
  // Dropped pages stay dropped.
  if (madvise(d, SMALL, MADV_DONTNEED) != 0) return 95;
  // Moved pages keep their data.
  char* m2 = mmap(NULL, SMALL * 2, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (m2 == MAP_FAILED) return 94;
  m2 = mremap(m, SMALL, SMALL, MREMAP_MAYMOVE | MREMAP_FIXED, m2 + SMALL);
  if (m2 == MAP_FAILED) return 93;
  // Unmapped and mapped fresh: zero.
  if (munmap(u, SMALL) != 0) return 92;
  char* u2 = mmap(u, SMALL, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
  if (u2 != u) return 91;

  pid_t child = fork();
  if (child == 0) {
    for (size_t i = 0; i < big_pages; ++i)
      if (!check(big + i * (PAGE / 8), 1, i)) _exit(1);
    _exit(0);
  }
  pthread_t t[4];
  struct part parts[4];
  for (int i = 0; i < 4; ++i) {
    parts[i].from = big_pages * i / 4;
    parts[i].to = big_pages * (i + 1) / 4;
    parts[i].bad = 0;
    parts[i].first_bad = 0;
    pthread_create(&t[i], NULL, verify, &parts[i]);
  }
  int bad = 0;
  for (int i = 0; i < 4; ++i) {
    pthread_join(t[i], NULL);
    bad += parts[i].bad;
  }
  if (bad) {
    fprintf(stderr, "%d pages of the big region differ\n", bad);
    for (int i = 0; i < 4; ++i)
      if (parts[i].bad) describe(parts[i].first_bad);
    return 2;
  }
  int st = 0;
  if (child < 0 || waitpid(child, &st, 0) != child || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
    fprintf(stderr, "the forked child saw wrong pages (status %#x)\n", st);
    return 3;
  }
  if (!zero(d, SMALL)) {
    fprintf(stderr, "a page discarded with MADV_DONTNEED came back filled\n");
    return 4;
  }
  for (size_t i = 0; i < SMALL / PAGE; ++i)
    if (!check((uint64_t*)(m2 + i * PAGE), 3, i)) {
      fprintf(stderr, "page %zu of the mremapped region (now at %p, was %p) differs: %s\n", i,
              (void*)(m2 + i * PAGE), (void*)(m + i * PAGE),
              zero(m2 + i * PAGE, PAGE) ? "it reads zero" : "it holds other data");
      return 5;
    }
  if (!zero(u, SMALL)) {
    fprintf(stderr, "a region unmapped and mapped again is not zero\n");
    return 6;
  }
  if (!zero(z, SMALL)) {
    fprintf(stderr, "a never-written region is not zero\n");
    return 7;
  }
  return 0;
}
