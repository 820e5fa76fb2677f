// zdtm-style helper: cr_bigmem READY_FD GO_FILE MIB
// Holds MIB MiB of pseudo-random data (no zero pages) and its checksum; after GO_FILE exists it
// recomputes it: exit 0 if every byte survived.
#define _GNU_SOURCE
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

int main(int argc, char** argv) {
  if (argc < 4) return 100;
  int ready_fd = atoi(argv[1]);
  const char* go = argv[2];
  size_t len = strtoull(argv[3], NULL, 10) << 20;
  uint64_t* m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (m == MAP_FAILED) return 101;
  size_t n = len / 8;
  uint64_t x = 88172645463325252ULL, a = 0, b = 0;
  for (size_t i = 0; i < n; ++i) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    m[i] = x;
    a += x;
    b ^= x * (i | 1);
  }
  if (write(ready_fd, "ready\n", 6) != 6) return 102;
  close(ready_fd);
  while (access(go, F_OK) != 0) {
  }
  uint64_t a2 = 0, b2 = 0;
  x = 88172645463325252ULL;
  for (size_t i = 0; i < n; ++i) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    if (m[i] != x) return 1;  // byte for byte against the generator
    a2 += m[i];
    b2 ^= m[i] * (i | 1);
  }
  return a2 == a && b2 == b ? 0 : 2;
}
