// Lazy restore helper: regions moved (mremap) while the pager copies their pages.
//   lazy_churn READY_FD GO_FILE NREG
// NREG regions of 64 KiB, adjacent (one VMA), each page filled with a pattern of (region, page);
// a PROT_NONE reservation holds their destinations. Once GO_FILE exists (the restored copy, its
// pages still owed and being pushed by the pager's workers from the lowest address up), each
// region is moved into the reservation in turn, then every page is checked at its new place.
// A page the pager gave up on while its region moved reads zero. Exit 0 if all hold, else 1
// (stderr names the first wrong page).
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096
#define REG (16 * PAGE)

static void fill(uint64_t* p, uint64_t reg, uint64_t page) {
  uint64_t x = (reg << 32) ^ (page * 0x9E3779B97F4A7C15ULL) ^ 0x5DEECE66DULL;
  for (int k = 0; k < PAGE / 8; ++k) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    p[k] = x;
  }
}

int main(int argc, char** argv) {
  if (argc < 4) return 99;
  int ready = atoi(argv[1]);
  const char* go = argv[2];
  size_t nreg = strtoul(argv[3], NULL, 10);
  // The reservation first (above), then the regions (below it: the pager starts there).
  char* dst = mmap(NULL, nreg * REG * 2, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  char* mem = mmap(NULL, nreg * REG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (dst == MAP_FAILED || mem == MAP_FAILED) return 98;
  for (size_t r = 0; r < nreg; ++r)
    for (size_t p = 0; p < REG / PAGE; ++p) fill((uint64_t*)(mem + r * REG + p * PAGE), r, p);
  if (write(ready, "ready\n", 6) != 6) return 97;
  close(ready);
  struct timespec ts = {0, 1000000};
  while (access(go, F_OK) != 0) nanosleep(&ts, NULL);
  // Every other slot of the reservation: the moved regions stay apart (no merging).
  for (size_t r = 0; r < nreg; ++r)
    if (mremap(mem + r * REG, REG, REG, MREMAP_MAYMOVE | MREMAP_FIXED, dst + 2 * r * REG) ==
        MAP_FAILED)
      return 96;
  uint64_t want[PAGE / 8];
  for (size_t r = 0; r < nreg; ++r)
    for (size_t p = 0; p < REG / PAGE; ++p) {
      fill(want, r, p);
      const char* at = dst + 2 * r * REG + p * PAGE;
      if (memcmp(at, want, PAGE) != 0) {
        int zero = 1;
        for (size_t i = 0; i < PAGE; ++i) zero &= at[i] == 0;
        fprintf(stderr, "region %zu page %zu (moved from %p) %s\n", r, p,
                (void*)(mem + r * REG + p * PAGE), zero ? "reads zero" : "holds other data");
        return 1;
      }
    }
  return 0;
}
