// zdtm-style helper: cr_pages READY_FD GO_FILE DATA_FILE MODE [fsize]
// Memory shaped like what the page dump and fill paths split on, then checked byte for byte:
//   A: 37 MiB + 3 pages of private anonymous memory, pages present in runs of 1..4 pages and
//      one long run (chunk and batch boundaries fall inside runs);
//   B: 16 MiB with every other page present (4096 one-page runs: several pwritev calls);
//   C: 3 written pages made PROT_NONE (unreadable: read through /proc/PID/mem);
//   D: 64 KiB written then PROT_READ;
//   E: a private mapping of DATA_FILE (16 pages of 'F') with pages 2, 3 and 9 written (COWed);
// MODE: "random" (incompressible contents) or "pattern" (zstd shrinks it).
// "fsize": RLIMIT_FSIZE set to 1 MiB (the process must not be made to write its pages itself).
// After GO_FILE exists: exit 0 if every present page holds its data and every other page of A
// and B reads as zero.
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#define PAGE 4096
static int pattern;

static void fill(uint64_t* p, uint64_t region, uint64_t page) {
  uint64_t x = (region << 40) ^ (page * 0x9E3779B97F4A7C15ULL) ^ 88172645463325252ULL;
  for (int k = 0; k < PAGE / 8; ++k) {
    if (pattern) {
      p[k] = (region << 32) | (page << 8) | (k & 7);
    } else {
      x ^= x << 13;
      x ^= x >> 7;
      x ^= x << 17;
      p[k] = x;
    }
  }
}

static int check(const uint64_t* p, uint64_t region, uint64_t page) {
  uint64_t want[PAGE / 8];
  fill(want, region, page);
  return memcmp(p, want, PAGE) == 0;
}

static int zero(const char* p) {
  for (int i = 0; i < PAGE; ++i)
    if (p[i]) return 0;
  return 1;
}

static int present_a(size_t i) { return (i % 7) < (i % 5) || (i >= 1000 && i < 3000); }

int main(int argc, char** argv) {
  if (argc < 5) return 100;
  int ready_fd = atoi(argv[1]);
  const char* go = argv[2];
  pattern = strcmp(argv[4], "pattern") == 0;
  size_t na = (37u << 20) / PAGE + 3, nb = (16u << 20) / PAGE;
  int prot = PROT_READ | PROT_WRITE, fl = MAP_PRIVATE | MAP_ANONYMOUS;
  char* a = mmap(NULL, na * PAGE, prot, fl, -1, 0);
  char* b = mmap(NULL, nb * PAGE, prot, fl, -1, 0);
  char* c = mmap(NULL, 3 * PAGE, prot, fl, -1, 0);
  char* d = mmap(NULL, 16 * PAGE, prot, fl, -1, 0);
  if (a == MAP_FAILED || b == MAP_FAILED || c == MAP_FAILED || d == MAP_FAILED) return 101;
  for (size_t i = 0; i < na; ++i)
    if (present_a(i)) fill((uint64_t*)(a + i * PAGE), 1, i);
  for (size_t i = 0; i < nb; i += 2) fill((uint64_t*)(b + i * PAGE), 2, i);
  for (size_t i = 0; i < 3; ++i) fill((uint64_t*)(c + i * PAGE), 3, i);
  for (size_t i = 0; i < 16; ++i) fill((uint64_t*)(d + i * PAGE), 4, i);
  if (mprotect(c, 3 * PAGE, PROT_NONE) || mprotect(d, 16 * PAGE, PROT_READ)) return 102;
  int fd = open(argv[3], O_RDWR | O_CREAT | O_TRUNC, 0600);
  if (fd < 0) return 103;
  char fpage[PAGE];
  memset(fpage, 'F', PAGE);
  for (int i = 0; i < 16; ++i)
    if (write(fd, fpage, PAGE) != PAGE) return 104;
  char* e = mmap(NULL, 16 * PAGE, prot, MAP_PRIVATE, fd, 0);
  if (e == MAP_FAILED) return 105;
  close(fd);
  volatile char sink = 0;
  for (int i = 0; i < 16; ++i) sink += e[i * PAGE];  // page cache pages, not written
  (void)sink;
  fill((uint64_t*)(e + 2 * PAGE), 5, 2);
  fill((uint64_t*)(e + 3 * PAGE), 5, 3);
  fill((uint64_t*)(e + 9 * PAGE), 5, 9);
  if (argc > 5 && strcmp(argv[5], "fsize") == 0) {
    struct rlimit rl = {1 << 20, 1 << 20};
    if (setrlimit(RLIMIT_FSIZE, &rl)) return 106;
  }
  if (write(ready_fd, "ready\n", 6) != 6) return 107;
  close(ready_fd);
  while (access(go, F_OK) != 0) usleep(1000);
  for (size_t i = 0; i < na; ++i) {
    char* p = a + i * PAGE;
    if (present_a(i) ? !check((uint64_t*)p, 1, i) : !zero(p)) return 10;
  }
  for (size_t i = 0; i < nb; ++i) {
    char* p = b + i * PAGE;
    if (i % 2 == 0 ? !check((uint64_t*)p, 2, i) : !zero(p)) return 11;
  }
  if (mprotect(c, 3 * PAGE, PROT_READ)) return 12;
  for (size_t i = 0; i < 3; ++i)
    if (!check((uint64_t*)(c + i * PAGE), 3, i)) return 13;
  for (size_t i = 0; i < 16; ++i)
    if (!check((uint64_t*)(d + i * PAGE), 4, i)) return 14;
  for (int i = 0; i < 16; ++i) {
    char* p = e + i * PAGE;
    if (i == 2 || i == 3 || i == 9) {
      if (!check((uint64_t*)p, 5, i)) return 15;
    } else if (memcmp(p, fpage, PAGE) != 0) {
      return 16;
    }
  }
  return 0;
}
