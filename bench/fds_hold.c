// Holds a mixed fd table for the fd benchmark (scripts/bench.d/30-fds.sh) and blocks in pause():
//   fds_hold READY_FD DIR GROUPS PORT_FILE NCONN
// GROUPS groups of 9 fds (a regular file, a pipe with 1 KiB queued, a unix socketpair with 1 KiB
// queued, an eventfd, a timerfd, a memfd, /dev/null) plus one epoll watching every eventfd, plus a
// TCP listener on 127.0.0.1 whose port goes to PORT_FILE; it accepts NCONN connections from the
// driver and queues 1 KiB on each. Then it reports "create_us=N" (the time it took to create the
// non-TCP fds: the limit the dump is compared with) on READY_FD.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char** argv) {
  if (argc < 6) return 100;
  int ready = atoi(argv[1]);
  const char* dir = argv[2];
  int groups = atoi(argv[3]);
  const char* port_file = argv[4];
  int nconn = atoi(argv[5]);
  syscall(SYS_close_range, ready + 1, ~0U, 0);
  char buf[1024];
  memset(buf, 'q', sizeof(buf));
  double t0 = now();
  int ep = epoll_create1(0);
  for (int g = 0; g < groups; g++) {
    char path[4096];
    snprintf(path, sizeof(path), "%s/f%d", dir, g % 50);
    int f = open(path, O_RDWR | O_CREAT, 0600);
    if (f < 0) return 101;
    int p[2];
    if (pipe(p)) return 102;
    write(p[1], buf, sizeof(buf));
    int sv[2];
    socketpair(AF_UNIX, SOCK_STREAM, 0, sv);
    write(sv[0], buf, sizeof(buf));
    int e = eventfd(g, 0);
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = g};
    epoll_ctl(ep, EPOLL_CTL_ADD, e, &ev);
    int t = timerfd_create(CLOCK_MONOTONIC, 0);
    struct itimerspec its = {.it_value = {3600, 0}};
    timerfd_settime(t, 0, &its, NULL);
    int m = memfd_create("bench", 0);
    write(m, buf, 128);
    if (open("/dev/null", O_RDWR) < 0) return 103;
  }
  double create = now() - t0;
  int l = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t al = sizeof(a);
  if (bind(l, (struct sockaddr*)&a, al) || listen(l, 1024)) return 104;
  getsockname(l, (struct sockaddr*)&a, &al);
  FILE* pf = fopen(port_file, "w");
  fprintf(pf, "%d\n", ntohs(a.sin_port));
  fclose(pf);
  for (int i = 0; i < nconn; i++) {
    int c = accept(l, NULL, NULL);
    if (c < 0) return 105;
    write(c, buf, sizeof(buf));  // queued at the driver; the driver's 4 KiB stay queued here
  }
  dprintf(ready, "create_us=%.0f\n", create * 1e6);
  close(ready);
  for (;;) pause();
}
