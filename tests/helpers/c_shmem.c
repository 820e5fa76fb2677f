/* Container init for tests/container_mm_test.cc (static: the rootfs is busybox only).
 * Shared anonymous memory and a SysV segment (the container's IPC namespace), both shared with a
 * child. The parent counts in both every 10 ms; the child copies what it sees in them to
 * /dev/shm/child ("anon=N sysv=M ok=1"), so it keeps up only while the memory is really shared.
 * ok=0: the pattern in the rest of the shared anonymous mapping was damaged. */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/shm.h>
#include <unistd.h>

#define SIZE (1 << 20)

static void fill(unsigned char* p) {
  for (size_t i = 64; i < SIZE; ++i) p[i] = (unsigned char)(i * 13 + (i >> 12));
}
static int intact(const unsigned char* p) {
  for (size_t i = 64; i < SIZE; ++i)
    if (p[i] != (unsigned char)(i * 13 + (i >> 12))) return 0;
  return 1;
}
static void put(const char* path, const char* text) {
  char tmp[256];
  snprintf(tmp, sizeof tmp, "%s.tmp", path);
  FILE* f = fopen(tmp, "w");
  if (!f) return;
  fputs(text, f);
  fclose(f);
  rename(tmp, path);
}

int main(void) {
  volatile unsigned long* anon = mmap(NULL, SIZE, PROT_READ | PROT_WRITE,
                                      MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (anon == MAP_FAILED) return 1;
  fill((unsigned char*)anon);
  int id = shmget(IPC_PRIVATE, 8192, IPC_CREAT | 0600);
  if (id < 0) return 2;
  volatile unsigned long* sysv = shmat(id, NULL, 0);
  if (sysv == (void*)-1) return 3;
  pid_t c = fork();
  if (c < 0) return 4;
  if (c == 0) {
    for (;;) {
      char buf[128];
      snprintf(buf, sizeof buf, "anon=%lu sysv=%lu ok=%d\n", anon[0], sysv[0],
               intact((const unsigned char*)anon));
      put("/dev/shm/child", buf);
      usleep(10000);
    }
  }
  char buf[64];
  snprintf(buf, sizeof buf, "%d\n", id);
  put("/dev/shm/shmid", buf);
  for (;;) {
    anon[0]++;
    sysv[0]++;
    snprintf(buf, sizeof buf, "%lu\n", anon[0]);
    put("/dev/shm/parent", buf);
    usleep(10000);
  }
}
