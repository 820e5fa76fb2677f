// Holds MIB MiB of pseudo-random data and blocks in pause(): what `godwit dump` of a big,
// idle process measures. cr_hold READY_FD MIB [random|low]
// low: 4 random bits per byte (zstd -1 stores about 60%): data that compression does shrink.
#define _GNU_SOURCE
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

int main(int argc, char** argv) {
  if (argc < 3) return 100;
  int ready_fd = atoi(argv[1]);
  // Nothing inherited from the benchmark's shell beyond stdio and the ready pipe.
  syscall(SYS_close_range, ready_fd + 1, ~0U, 0);
  size_t len = strtoull(argv[2], NULL, 10) << 20;
  uint64_t* m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (m == MAP_FAILED) return 101;
  uint64_t mask = argc > 3 && argv[3][0] == 'l' ? 0x0f0f0f0f0f0f0f0fULL : ~0ULL;
  uint64_t x = 88172645463325252ULL;
  for (size_t i = 0; i < len / 8; ++i) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    m[i] = x & mask;
  }
  if (write(ready_fd, "ready\n", 6) != 6) return 102;
  close(ready_fd);
  for (;;) pause();
}
