// The limits the checkpoint/restore benchmark compares to, in GB/s:
//   hot:    memcpy of a 256 MiB buffer into another one already faulted in (one thread, best of
//           5);
//   fresh:  memcpy of 256 MiB into freshly mmapped anonymous memory (4 KiB pages), one thread:
//           what any copy into new memory costs here (a page fault, zeroing and, on this VM, the
//           hypervisor's work for every new page). Best of 3, each into a new mapping.
// With MIB (and SETTLE seconds), page creation for MIB MiB, as the issue 13 limits:
//   recent1, recent2: memcpy into fresh memory freed moments ago (a buffer of MIB MiB touched
//           and unmapped right before), 1 and 2 threads (each half of the range);
//   idle1, idle2: the same after the freed memory sat idle SETTLE seconds (free page reporting
//           hands it back to the host: the next touch pays for it again).
// Prints "HOT FRESH" or, with MIB, "HOT FRESH RECENT1 RECENT2 IDLE1 IDLE2".
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec / 1e9;
}

static char* fresh(size_t len) {
  char* p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) exit(1);
  madvise(p, len, MADV_NOHUGEPAGE);  // 4 KiB pages, like the benchmark's process
  return p;
}

static const size_t kSrc = 256u << 20;
static char* src;

struct part {
  char* dst;
  size_t len;
};

static void* fill(void* arg) {
  struct part* p = arg;
  for (size_t o = 0; o < p->len; o += kSrc) {
    size_t n = p->len - o < kSrc ? p->len - o : kSrc;
    memcpy(p->dst + o, src, n);
  }
  return NULL;
}

// GB/s of copying into len bytes of new memory with n threads.
static double create(size_t len, int n) {
  char* d = fresh(len);
  pthread_t t[2];
  struct part p[2];
  double t0 = now();
  for (int i = 0; i < n; ++i) {
    p[i].dst = d + len / n * i;
    p[i].len = len / n;
    pthread_create(&t[i], NULL, fill, &p[i]);
  }
  for (int i = 0; i < n; ++i) pthread_join(t[i], NULL);
  double gbs = len / (now() - t0) / 1e9;
  munmap(d, len);
  return gbs;
}

int main(int argc, char** argv) {
  size_t len = kSrc;
  src = fresh(len);
  char* b = fresh(len);
  memset(src, 1, len);
  memset(b, 2, len);
  double hot = 0, cold = 0;
  for (int i = 0; i < 5; ++i) {
    double t0 = now();
    memcpy(b, src, len);
    double gbs = len / (now() - t0) / 1e9;
    if (gbs > hot) hot = gbs;
    src[i] = b[i + 1];
  }
  munmap(b, len);
  for (int i = 0; i < 3; ++i) {
    char* c = fresh(len);
    double t0 = now();
    memcpy(c, src, len);
    double gbs = len / (now() - t0) / 1e9;
    if (gbs > cold) cold = gbs;
    src[i] = c[i + 1];
    munmap(c, len);
  }
  if (argc < 2) {
    printf("%.2f %.2f\n", hot, cold);
    return 0;
  }
  size_t mib = strtoull(argv[1], NULL, 10) << 20;
  int settle = argc > 2 ? atoi(argv[2]) : 3;
  double r[2], id[2];
  for (int n = 1; n <= 2; ++n) {
    // Recently freed: touch and free MIB MiB, then create pages right away.
    char* warm = fresh(mib);
    memset(warm, 3, mib);
    munmap(warm, mib);
    r[n - 1] = create(mib, n);
    // Idle: whatever was freed sits SETTLE seconds first.
    sleep(settle);
    id[n - 1] = create(mib, n);
  }
  printf("%.2f %.2f %.2f %.2f %.2f %.2f\n", hot, cold, r[0], r[1], id[0], id[1]);
  return 0;
}
