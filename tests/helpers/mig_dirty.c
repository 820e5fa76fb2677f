// A workload for live-migration tests and benchmarks: holds MIB MiB of anonymous memory and
// rewrites PCT percent of its pages (chosen at random) every INTERVAL_MS, forever.
//
//   mig_dirty MIB PCT INTERVAL_MS DIR [lock]
//
// INTERVAL_MS 0: the pages are rewritten once, then it waits for signals; < 0: rewritten without
// pause, as fast as the CPU it gets allows (a writer only a CPU throttle slows down).
// lock: every mapping is locked (mlockall MCL_CURRENT) once filled: a lazy restore can page none
// of it (the restore fills it whole).
//
// Every page is self-describing: word 0 its index, word 1 its generation, the rest pseudo-random
// words seeded by (index, generation): incompressible, and checkable. A separate table holds each
// page's current generation. On SIGUSR1 the whole memory is checked against the table and the
// result written to DIR/verify ("OK <pages> <rewrites>" or "BAD page <i> ..."): a page that came
// back stale (an older round's copy), torn, zeroed or shifted fails. DIR/ready appears once the
// memory is filled. Static: it runs in a busybox container.
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096
#define WORDS (PAGE / 8)

static volatile sig_atomic_t verify_requested;

static void on_usr1(int sig) {
  (void)sig;
  verify_requested = 1;
}

static void fill(uint64_t* p, uint64_t index, uint64_t gen) {
  uint64_t x = (index + 1) * 0x9E3779B97F4A7C15ULL ^ (gen + 1) * 0xC2B2AE3D27D4EB4FULL;
  p[0] = index;
  p[1] = gen;
  for (int i = 2; i < WORDS; ++i) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    p[i] = x;
  }
}

static int check(const uint64_t* p, uint64_t index, uint64_t gen) {
  uint64_t want[WORDS];
  fill(want, index, gen);
  return memcmp(p, want, PAGE) == 0;
}

static void write_file(const char* dir, const char* name, const char* text) {
  char path[4096], tmp[4096];
  snprintf(path, sizeof(path), "%s/%s", dir, name);
  snprintf(tmp, sizeof(tmp), "%s/.%s.tmp", dir, name);
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) return;
  if (write(fd, text, strlen(text)) < 0) {
  }
  close(fd);
  rename(tmp, path);
}

int main(int argc, char** argv) {
  if (argc < 5) {
    fprintf(stderr, "usage: mig_dirty MIB PCT INTERVAL_MS DIR [lock]\n");
    return 2;
  }
  uint64_t npages = strtoull(argv[1], NULL, 10) * (1 << 20) / PAGE;
  double pct = atof(argv[2]);
  long interval_ms = atol(argv[3]);
  const char* dir = argv[4];
  uint64_t* mem = mmap(NULL, npages * PAGE, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  uint32_t* gens = mmap(NULL, npages * sizeof(uint32_t), PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED || gens == MAP_FAILED) return 3;
  for (uint64_t i = 0; i < npages; ++i) {
    gens[i] = 0;
    fill(mem + i * WORDS, i, 0);
  }
  if (argc > 5 && strcmp(argv[5], "lock") == 0 && mlockall(MCL_CURRENT) != 0) {
    perror("mlockall");
    return 4;
  }
  struct sigaction sa;
  memset(&sa, 0, sizeof(sa));
  sa.sa_handler = on_usr1;
  sigaction(SIGUSR1, &sa, NULL);
  write_file(dir, "ready", "1\n");
  uint64_t per_round = (uint64_t)(npages * pct / 100.0);
  uint64_t rewrites = 0;
  uint64_t x = 0x2545F4914F6CDD1DULL;
  for (;;) {
    if (verify_requested) {
      verify_requested = 0;
      char msg[256];
      snprintf(msg, sizeof(msg), "OK %llu %llu\n", (unsigned long long)npages,
               (unsigned long long)rewrites);
      for (uint64_t i = 0; i < npages; ++i) {
        if (!check(mem + i * WORDS, i, gens[i])) {
          const uint64_t* p = mem + i * WORDS;
          snprintf(msg, sizeof(msg), "BAD page %llu: header index %llu gen %llu, table gen %u\n",
                   (unsigned long long)i, (unsigned long long)p[0], (unsigned long long)p[1],
                   gens[i]);
          break;
        }
      }
      write_file(dir, "verify", msg);
    }
    for (uint64_t k = 0; k < per_round; ++k) {
      x ^= x << 13;
      x ^= x >> 7;
      x ^= x << 17;
      uint64_t i = x % npages;
      gens[i]++;
      fill(mem + i * WORDS, i, gens[i]);
      rewrites++;
    }
    if (interval_ms > 0) {
      struct timespec ts = {interval_ms / 1000, (interval_ms % 1000) * 1000000L};
      nanosleep(&ts, NULL);
    } else if (interval_ms == 0) {
      pause();
    }  // < 0: at once again, as fast as the CPU allows
  }
}
