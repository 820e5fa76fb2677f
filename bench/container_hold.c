// Runs inside a benchmark container: holds MIB MiB of anonymous memory, the first half
// pseudo-random (incompressible), the second half text-like (zstd shrinks it ~10x), then creates
// READY_FILE and sleeps. Static (the container's rootfs is busybox). container_hold MIB READY_FILE
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

int main(int argc, char** argv) {
  if (argc < 3) return 100;
  size_t len = strtoull(argv[1], NULL, 10) << 20;
  uint64_t* m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (m == MAP_FAILED) return 101;
  uint64_t x = 88172645463325252ULL;
  size_t half = len / 16;  // in uint64_t
  for (size_t i = 0; i < half; ++i) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    m[i] = x;
  }
  char* t = (char*)(m + half);
  size_t rest = len - half * 8, off = 0;
  for (unsigned long n = 0; off < rest; ++n) {
    char line[96];
    int k = snprintf(line, sizeof(line), "record %lu: status=ok value=%lu owner=bench\n", n,
                     (n * 2654435761u) % 1000);
    for (int i = 0; i < k && off < rest; ++i) t[off++] = line[i];
  }
  int fd = open(argv[2], O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) return 102;
  close(fd);
  for (;;) pause();
}
