// zdtm-style helper: cr_memfd_maps READY_FD DIR
// Memory shared between an fd and a mapping, or backed by deleted files: a memfd both open (fd) and
// mapped shared, a private mapping of a memfd (one page written), a shared and a private mapping of
// files in DIR that are deleted before the dump. Reports "ready", waits in sigsuspend for SIGUSR2,
// then checks every mapping's contents and that fd and mapping are still one object (writes through
// one are read through the other). Exit 0 if everything holds, else the number of the failed check.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define PG 4096

static void on_usr2(int sig) { (void)sig; }

static int all(const char* p, char c, size_t n) {
  for (size_t i = 0; i < n; ++i)
    if (p[i] != c) return 0;
  return 1;
}

static char* file_map(const char* dir, const char* name, char fill, int flags) {
  char path[4096];
  snprintf(path, sizeof(path), "%s/%s", dir, name);
  int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
  if (fd < 0) return NULL;
  char buf[2 * PG];
  memset(buf, fill, sizeof(buf));
  if (write(fd, buf, sizeof(buf)) != sizeof(buf)) return NULL;
  char* m = mmap(NULL, 2 * PG, PROT_READ | PROT_WRITE, flags, fd, 0);
  close(fd);
  unlink(path);
  return m == MAP_FAILED ? NULL : m;
}

int main(int argc, char** argv) {
  if (argc < 3) return 100;
  int ready = atoi(argv[1]);
  const char* dir = argv[2];
  struct sigaction sa;
  memset(&sa, 0, sizeof(sa));
  sa.sa_handler = on_usr2;
  sigaction(SIGUSR2, &sa, NULL);
  sigset_t usr2, none;
  sigemptyset(&usr2);
  sigaddset(&usr2, SIGUSR2);
  sigemptyset(&none);
  sigprocmask(SIG_BLOCK, &usr2, NULL);

  // 1. memfd open and mapped shared.
  int both = memfd_create("both", 0);
  if (both < 0 || ftruncate(both, 2 * PG) < 0) return 101;
  char* bm = mmap(NULL, 2 * PG, PROT_READ | PROT_WRITE, MAP_SHARED, both, 0);
  if (bm == MAP_FAILED) return 102;
  if (pwrite(both, "fd-before", 9, 0) != 9) return 103;
  memcpy(bm + PG, "map-before", 10);
  // 2. memfd mapped private; page 1 written (copied on write).
  int priv = memfd_create("priv", 0);
  char buf[2 * PG];
  memset(buf, 'P', sizeof(buf));
  if (priv < 0 || write(priv, buf, sizeof(buf)) != sizeof(buf)) return 104;
  char* pm = mmap(NULL, 2 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE, priv, 0);
  if (pm == MAP_FAILED) return 105;
  memset(pm + PG, 'W', PG);
  // 3. deleted file mapped shared; 4. deleted file mapped private, page 1 written.
  char* sm = file_map(dir, "shared", 'S', MAP_SHARED);
  char* dm = file_map(dir, "private", 'D', MAP_PRIVATE);
  if (!sm || !dm) return 106;
  sm[PG] = 's';
  memset(dm + PG, 'E', PG);

  if (write(ready, "ready\n", 6) != 6) return 107;
  close(ready);
  sigsuspend(&none);

  // 1: contents, then fd -> mapping and mapping -> fd.
  if (memcmp(bm, "fd-before", 9) != 0) return 1;
  char got[16] = {0};
  if (pread(both, got, 10, PG) != 10 || memcmp(got, "map-before", 10) != 0) return 2;
  if (pwrite(both, "fd-after", 8, 100) != 8 || memcmp(bm + 100, "fd-after", 8) != 0) return 3;
  memcpy(bm + 5000, "map-after", 9);
  if (pread(both, got, 9, 5000) != 9 || memcmp(got, "map-after", 9) != 0) return 4;
  // 2: the unwritten page is the memfd's (a write through the fd shows), the written one private.
  if (!all(pm, 'P', PG) || !all(pm + PG, 'W', PG)) return 5;
  if (pwrite(priv, "Q", 1, 0) != 1 || pm[0] != 'Q') return 6;
  if (pread(priv, got, 1, PG) != 1 || got[0] != 'P') return 7;
  // 3 and 4.
  if (!all(sm, 'S', PG) || sm[PG] != 's' || !all(sm + PG + 1, 'S', PG - 1)) return 8;
  if (!all(dm, 'D', PG) || !all(dm + PG, 'E', PG)) return 9;
  sm[0] = 'x';
  dm[0] = 'y';
  if (sm[0] != 'x' || dm[0] != 'y') return 10;
  return 0;
}
