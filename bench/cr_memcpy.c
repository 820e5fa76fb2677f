// The limits the checkpoint/restore benchmark compares to, single core, in GB/s:
//   hot:   memcpy of a 256 MiB buffer into another one already faulted in (best of 5);
//   fresh: memcpy of 256 MiB into freshly mmapped anonymous memory (4 KiB pages): what any copy
//          into new memory costs here (a page fault, zeroing and, on this VM, the hypervisor's
//          work for every new page: a PVM guest whose freed memory goes back to the host).
//          Best of 3, each into a new mapping.
// Prints "HOT FRESH".
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

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

int main(void) {
  size_t len = 256u << 20;
  char* a = fresh(len);
  char* b = fresh(len);
  memset(a, 1, len);
  memset(b, 2, len);
  double hot = 0, cold = 0;
  for (int i = 0; i < 5; ++i) {
    double t0 = now();
    memcpy(b, a, len);
    double gbs = len / (now() - t0) / 1e9;
    if (gbs > hot) hot = gbs;
    a[i] = b[i + 1];
  }
  for (int i = 0; i < 3; ++i) {
    char* c = fresh(len);
    double t0 = now();
    memcpy(c, a, len);
    double gbs = len / (now() - t0) / 1e9;
    if (gbs > cold) cold = gbs;
    a[i] = c[i + 1];
    munmap(c, len);
  }
  printf("%.2f %.2f\n", hot, cold);
  return 0;
}
