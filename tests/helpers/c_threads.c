// A multi-threaded process for container copies (tests/container_copy_test.cc): NTHREADS
// threads each count in a loop; the main thread writes their sum to /dev/shm/count every 20 ms.
// Static (busybox rootfs). Usage: c_threads NTHREADS
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static volatile unsigned long counts[16];

static void* Count(void* arg) {
  volatile unsigned long* c = arg;
  for (;;) {
    (*c)++;
    usleep(1000);
  }
  return NULL;
}

int main(int argc, char** argv) {
  int n = argc > 1 ? atoi(argv[1]) : 2;
  if (n < 1 || n > 16) return 2;
  for (int i = 0; i < n; i++) {
    pthread_t t;
    if (pthread_create(&t, NULL, Count, (void*)&counts[i]) != 0) return 1;
  }
  for (;;) {
    unsigned long sum = 0;
    for (int i = 0; i < n; i++) sum += counts[i];
    FILE* f = fopen("/dev/shm/count.tmp", "w");
    if (f) {
      fprintf(f, "%lu\n", sum);
      fclose(f);
      rename("/dev/shm/count.tmp", "/dev/shm/count");
    }
    usleep(20000);
  }
}
