// zdtm-style helper: cr_loop READY_FD GO_FILE [MIB] [THREADS] [PROCS]
// Fills MIB MiB of heap (malloc) and 1 MiB of brk memory with a pseudo-random pattern, spawns
// THREADS-1 extra threads that each own a region (in each of PROCS processes: the root forks
// PROCS-1 copies first, which it reaps and checks at the end), reports "ready" on READY_FD, then loops
// recomputing checksums and advancing register/stack/FPU state. It exits 0 once GO_FILE exists
// and one more full round of checks passed; any mismatch exits with a distinct code.
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static const char* go_file;
static size_t region_len;

static uint64_t fill(uint64_t* p, size_t n, uint64_t seed) {
  uint64_t x = seed, sum = 0;
  for (size_t i = 0; i < n; ++i) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    p[i] = x;
    sum = sum * 31 + x;
  }
  return sum;
}

static uint64_t checksum(const uint64_t* p, size_t n) {
  uint64_t sum = 0;
  for (size_t i = 0; i < n; ++i) sum = sum * 31 + p[i];
  return sum;
}

struct worker {
  pthread_t th;
  uint64_t* mem;
  uint64_t expect;
  int result;
  uint64_t seed;
};

// Vector state: a pattern parked in zmm31 (AVX-512) or ymm15 (AVX2) that nothing in the loop
// touches (the helper is built without -mavx; the loop calls only access()).
static int vec_kind;  // 2: zmm31, 1: ymm15, 0: none
static const uint64_t vpat[8] __attribute__((aligned(64))) = {
    0x0123456789abcdefULL, 0xfedcba9876543210ULL, 0x1111111111111111ULL, 0x2222222222222222ULL,
    0x3333333333333333ULL, 0x4444444444444444ULL, 0x5555555555555555ULL, 0x6666666666666666ULL};

static void vec_load(void) {
  if (vec_kind == 2) __asm__ volatile("vmovdqu64 (%0), %%zmm31" ::"r"(vpat) : "memory");
  else if (vec_kind == 1) __asm__ volatile("vmovdqu (%0), %%ymm15" ::"r"(vpat) : "memory");
}

static int vec_ok(void) {
  uint64_t out[8] __attribute__((aligned(64))) = {0};
  if (vec_kind == 2) __asm__ volatile("vmovdqu64 %%zmm31, (%0)" ::"r"(out) : "memory");
  else if (vec_kind == 1) __asm__ volatile("vmovdqu %%ymm15, (%0)" ::"r"(out) : "memory");
  else return 1;
  return memcmp(out, vpat, vec_kind == 2 ? 64 : 32) == 0;
}

// The loop every thread runs: checksum of its region, a double that counts iterations (xmm state),
// an on-stack array (stack contents), until GO_FILE exists.
static int loop(uint64_t* mem, size_t n, uint64_t expect) {
  volatile uint64_t stack_state[64];
  for (int i = 0; i < 64; ++i) stack_state[i] = expect ^ (uint64_t)i;
  double fp = 0;
  vec_load();
  for (uint64_t iter = 1;; ++iter) {
    if (!vec_ok()) return 6;
    if (checksum(mem, n) != expect) return 2;
    fp += 1.0;
    if (fp != (double)iter) return 3;
    for (int i = 0; i < 64; ++i)
      if (stack_state[i] != (expect ^ (uint64_t)i)) return 4;
    int go = access(go_file, F_OK) == 0;
    if (go) {
      // One more full round after GO was seen.
      if (checksum(mem, n) != expect) return 5;
      return 0;
    }
  }
}

static void* worker_main(void* arg) {
  struct worker* w = arg;
  w->result = loop(w->mem, region_len / 8, w->expect);
  return NULL;
}

int main(int argc, char** argv) {
  if (argc < 3) return 100;
  int ready_fd = atoi(argv[1]);
  go_file = argv[2];
  size_t mib = argc > 3 ? strtoul(argv[3], NULL, 10) : 16;
  int threads = argc > 4 ? atoi(argv[4]) : 1;
  int procs = argc > 5 ? atoi(argv[5]) : 1;
  pid_t kids[64];
  int nkids = 0, is_child = 0;
  int sync[2];
  if (pipe(sync)) return 105;
  for (int i = 1; i < procs && i < 64; ++i) {
    pid_t k = fork();
    if (k == 0) {
      is_child = 1;  // a child reports to the root instead of the test
      close(ready_fd);
      close(sync[0]);
      ready_fd = sync[1];
      nkids = 0;
      break;
    }
    kids[nkids++] = k;
  }
  if (!is_child) close(sync[1]);
  region_len = mib << 20;
  __builtin_cpu_init();
  vec_kind = __builtin_cpu_supports("avx512f") ? 2 : __builtin_cpu_supports("avx2") ? 1 : 0;
  uint64_t* heap = malloc(region_len);
  if (!heap) return 101;
  uint64_t expect = fill(heap, region_len / 8, 0x9e3779b97f4a7c15ULL);
  // brk memory
  uint64_t* b = sbrk(1 << 20);
  if (b == (void*)-1) return 102;
  uint64_t bexpect = fill(b, (1 << 20) / 8, 12345);
  struct worker* ws = calloc(threads, sizeof(*ws));
  for (int i = 1; i < threads; ++i) {
    ws[i].mem = malloc(region_len);
    ws[i].expect = fill(ws[i].mem, region_len / 8, 777 + i);
    if (pthread_create(&ws[i].th, NULL, worker_main, &ws[i])) return 103;
  }
  if (!is_child) {
    char c;
    for (int i = 0; i < nkids; ++i)
      if (read(sync[0], &c, 1) != 1) return 106;
    close(sync[0]);
  }
  // Children report one byte each to the root; the root reports a line to the test.
  if (is_child ? write(ready_fd, "r", 1) != 1 : write(ready_fd, "ready\n", 6) != 6) return 104;
  close(ready_fd);
  int r = loop(heap, region_len / 8, expect);
  if (r) return 10 + r;
  if (checksum(b, (1 << 20) / 8) != bexpect) return 20;
  if (sbrk(0) != (char*)b + (1 << 20)) return 21;
  for (int i = 1; i < threads; ++i) {
    if (pthread_join(ws[i].th, NULL)) return 30;
    if (ws[i].result) return 30 + ws[i].result;
  }
  for (int i = 0; i < nkids; ++i) {
    int st;
    if (waitpid(kids[i], &st, 0) != kids[i]) return 40;
    if (!WIFEXITED(st)) return 60 + WTERMSIG(st);
    if (WEXITSTATUS(st)) return 50 + WEXITSTATUS(st);
  }
  return 0;
}
