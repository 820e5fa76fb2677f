// zdtm-style helper for fd kinds: fd_kinds READY_FD GO_FILE MODE DIR [ARGS...]
// Sets up the fds of MODE (in DIR), reports "ready" on READY_FD and closes it, then waits for
// GO_FILE (polling it: the wait itself is restored, mid-nanosleep), checks that every fd kept its
// number, flags, data and sharing, and exits 0, or with a code naming the first failed check.
// Children it forks check their side too; the parent's exit code includes theirs.
//
// Modes: files, pipes, unix, anon, pty, locks, tcp-server NETNS ADDR PORT, tcp-client NETNS ADDR
// PORT (the TCP modes stream a pattern with an echo peer and verify every byte; see
// files_zdtm_test.cc).
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pty.h>
#include <sched.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/file.h>
#include <sys/inotify.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

static const char* go_file;
static const char* dir;
static int ready = -1;  // the children close it: the test waits for its EOF

// A failed check goes to stderr and to DIR/fail.txt (a restored process's stderr may be
// /dev/null), with errno.
static void report(int code, const char* what) {
  int err = errno;
  fprintf(stderr, "fd_kinds: check %d failed: %s (errno %d %s)\n", code, what, err, strerror(err));
  char p[4096];
  snprintf(p, sizeof(p), "%s/fail.txt", dir);
  FILE* f = fopen(p, "a");
  if (f) {
    fprintf(f, "pid %d: check %d failed: %s (errno %d %s)\n", getpid(), code, what, err, strerror(err));
    fclose(f);
  }
}
#define CHECK(cond, code)    \
  do {                       \
    if (!(cond)) {           \
      report(code, #cond);   \
      return code;           \
    }                        \
  } while (0)

static void wait_go(void) {
  struct timespec ts = {0, 1000000};
  while (access(go_file, F_OK) != 0) nanosleep(&ts, NULL);
}

static int readn(int fd, char* buf, size_t n) {
  size_t got = 0;
  while (got < n) {
    ssize_t r = read(fd, buf + got, n - got);
    if (r <= 0) return -1;
    got += r;
  }
  return 0;
}

static int cloexec(int fd) { return fcntl(fd, F_GETFD) & FD_CLOEXEC; }
static void at(int fd, int want) {
  if (fd != want) {
    dup2(fd, want);
    close(fd);
  }
}

static char* path(const char* name) {
  static char buf[8][4096];
  static int i;
  char* p = buf[i++ % 8];
  snprintf(p, 4096, "%s/%s", dir, name);
  return p;
}

// Forks a child that waits for GO then runs check(); returns its pid.
static pid_t child(int (*check)(void)) {
  pid_t c = fork();
  if (c == 0) {
    close(ready);
    wait_go();
    _exit(check());
  }
  return c;
}

static int join(pid_t c) {
  int st;
  if (waitpid(c, &st, 0) != c) return 90;
  if (!WIFEXITED(st)) return 91;
  return WEXITSTATUS(st);
}

// ---- files: regular, deleted, dup, cloexec, O_APPEND, shared offset with a child ----
static int files_child(void) {
  char b[4];
  // The parent read 3 bytes after GO; we share its description: we continue after them... the
  // order is fixed by the parent waiting for us, so we read first: "234".
  CHECK(readn(10, b, 3) == 0 && !memcmp(b, "234", 3), 10);
  return 0;
}
static int files_setup(pid_t* kid) {
  int fd = open(path("reg"), O_RDWR | O_CREAT | O_TRUNC, 0644);
  write(fd, "0123456789", 10);
  lseek(fd, 2, SEEK_SET);
  at(fd, 10);
  dup2(10, 11);
  fcntl(11, F_SETFD, FD_CLOEXEC);
  fd = open(path("log"), O_WRONLY | O_CREAT | O_APPEND, 0600);
  at(fd, 12);
  fcntl(12, F_SETFD, FD_CLOEXEC);
  fd = open(path("ghost"), O_RDWR | O_CREAT, 0600);
  write(fd, "ghost-data", 10);
  lseek(fd, 6, SEEK_SET);
  unlink(path("ghost"));
  at(fd, 13);
  fd = open("/dev/null", O_RDONLY);
  at(fd, 14);
  *kid = child(files_child);
  return 0;
}
static int files_check(pid_t kid) {
  CHECK(join(kid) == 0, 11);
  char b[8];
  CHECK(lseek(10, 0, SEEK_CUR) == 5, 12);  // moved by the child: one description
  CHECK(lseek(11, 0, SEEK_CUR) == 5, 13);  // and by the dup
  CHECK(!cloexec(10) && cloexec(11) && cloexec(12), 14);
  CHECK((fcntl(12, F_GETFL) & (O_APPEND | O_ACCMODE)) == (O_APPEND | O_WRONLY), 15);
  CHECK(write(12, "x", 1) == 1, 16);
  struct stat st;
  CHECK(fstat(13, &st) == 0 && st.st_nlink == 0 && st.st_size == 10, 17);
  CHECK(readn(13, b, 4) == 0 && !memcmp(b, "data", 4), 18);
  CHECK(read(14, b, 1) == 0, 19);
  return 0;
}

// ---- pipes: data, shared by parent and child; FIFO with data ----
static int pipes_child(void) {
  char b[8];
  CHECK(fcntl(20, F_GETFD) < 0, 20);  // the child closed its read end
  CHECK(write(21, "child", 5) == 5, 21);
  (void)b;
  return 0;
}
static int pipes_setup(pid_t* kid) {
  int p[2];
  pipe(p);
  at(p[0], 20);
  at(p[1], 21);
  write(21, "before", 6);
  mkfifo(path("fifo"), 0600);
  int r = open(path("fifo"), O_RDONLY | O_NONBLOCK);
  int w = open(path("fifo"), O_WRONLY);
  at(r, 22);
  at(w, 23);
  fcntl(22, F_SETFL, 0);
  write(23, "fifo!", 5);
  pid_t c = fork();
  if (c == 0) {
    close(ready);
    close(20);
    wait_go();
    _exit(pipes_child());
  }
  *kid = c;
  return 0;
}
static int pipes_check(pid_t kid) {
  CHECK(join(kid) == 0, 22);
  char b[16];
  CHECK(readn(20, b, 11) == 0 && !memcmp(b, "beforechild", 11), 23);
  CHECK(readn(22, b, 5) == 0 && !memcmp(b, "fifo!", 5), 24);
  CHECK(write(23, "z", 1) == 1 && readn(22, b, 1) == 0 && b[0] == 'z', 25);
  return 0;
}

// ---- unix: pair with data, listener + accepted + pending, dgram with queue ----
static socklen_t unaddr(const char* name, int abstract, struct sockaddr_un* sa) {
  memset(sa, 0, sizeof(*sa));
  sa->sun_family = AF_UNIX;
  if (abstract) {
    snprintf(sa->sun_path + 1, sizeof(sa->sun_path) - 1, "%s", name);
    return offsetof(struct sockaddr_un, sun_path) + 1 + strlen(name);
  }
  snprintf(sa->sun_path, sizeof(sa->sun_path), "%s", name);
  return sizeof(*sa);
}
static int unix_setup(pid_t* kid) {
  int sv[2];
  socketpair(AF_UNIX, SOCK_STREAM, 0, sv);
  at(sv[0], 30);
  at(sv[1], 31);
  write(30, "pair-data", 9);
  struct sockaddr_un sa;
  socklen_t l = unaddr(path("listen"), 0, &sa);
  int ls = socket(AF_UNIX, SOCK_STREAM, 0);
  bind(ls, (struct sockaddr*)&sa, l);
  listen(ls, 5);
  at(ls, 32);
  int c = socket(AF_UNIX, SOCK_STREAM, 0);
  connect(c, (struct sockaddr*)&sa, l);
  at(c, 33);  // pending: not accepted
  char an[64];
  snprintf(an, sizeof(an), "godwit-fdk-%d", getpid());
  socklen_t al = unaddr(an, 1, &sa);
  int d = socket(AF_UNIX, SOCK_DGRAM, 0);
  bind(d, (struct sockaddr*)&sa, al);
  at(d, 34);
  int s = socket(AF_UNIX, SOCK_DGRAM, 0);
  connect(s, (struct sockaddr*)&sa, al);
  at(s, 35);
  send(35, "dg1", 3, 0);
  send(35, "dgram-2", 7, 0);
  *kid = 0;
  return 0;
}
static int unix_check(pid_t kid) {
  char b[16];
  CHECK(readn(31, b, 9) == 0 && !memcmp(b, "pair-data", 9), 30);
  int a = accept(32, NULL, NULL);
  CHECK(a >= 0, 31);
  CHECK(write(33, "hi", 2) == 2 && readn(a, b, 2) == 0, 32);
  CHECK(recv(34, b, 16, 0) == 3 && recv(34, b, 16, 0) == 7 && !memcmp(b, "dgram-2", 7), 33);
  return 0;
}

// ---- anon: eventfd, epoll, signalfd, timerfd, inotify, memfd ----
static int anon_setup(pid_t* kid) {
  at(eventfd(5, EFD_NONBLOCK), 40);
  int ep = epoll_create1(0);
  dup3(ep, 41, O_CLOEXEC);
  close(ep);
  struct epoll_event ev = {.events = EPOLLIN, .data.u64 = 0xfeed};
  epoll_ctl(41, EPOLL_CTL_ADD, 40, &ev);
  sigset_t m;
  sigemptyset(&m);
  sigaddset(&m, SIGUSR1);
  sigprocmask(SIG_BLOCK, &m, NULL);
  at(signalfd(-1, &m, SFD_NONBLOCK), 42);
  int t = timerfd_create(CLOCK_MONOTONIC, 0);
  struct itimerspec its = {.it_interval = {1000, 0}, .it_value = {100, 0}};
  timerfd_settime(t, 0, &its, NULL);
  at(t, 43);
  int in = inotify_init1(IN_NONBLOCK);
  inotify_add_watch(in, dir, IN_CREATE);
  at(in, 44);
  int mf = memfd_create("fdk", MFD_ALLOW_SEALING);
  write(mf, "memfd-contents", 14);
  fcntl(mf, F_ADD_SEALS, F_SEAL_SHRINK);
  at(mf, 45);
  *kid = 0;
  return 0;
}
static int anon_check(pid_t kid) {
  struct epoll_event ev;
  CHECK(epoll_wait(41, &ev, 1, 0) == 1 && ev.data.u64 == 0xfeed, 40);
  CHECK(cloexec(41), 41);
  uint64_t v;
  CHECK(read(40, &v, 8) == 8 && v == 5, 42);
  kill(getpid(), SIGUSR1);
  struct signalfd_siginfo si;
  CHECK(read(42, &si, sizeof(si)) == sizeof(si) && si.ssi_signo == SIGUSR1, 43);
  struct itimerspec its;
  timerfd_gettime(43, &its);
  CHECK(its.it_value.tv_sec > 0 && its.it_value.tv_sec <= 100 && its.it_interval.tv_sec == 1000, 44);
  close(open(path("created"), O_CREAT | O_WRONLY, 0600));
  char buf[512];
  CHECK(read(44, buf, sizeof(buf)) > 0 && ((struct inotify_event*)buf)->wd == 1, 45);
  char b[14];
  CHECK(pread(45, b, 14, 0) == 14 && !memcmp(b, "memfd-contents", 14), 46);
  CHECK(fcntl(45, F_GET_SEALS) == F_SEAL_SHRINK, 47);
  return 0;
}

// ---- pty ----
static int pty_setup(pid_t* kid) {
  int m, s;
  struct winsize ws = {.ws_row = 40, .ws_col = 132};
  if (openpty(&m, &s, NULL, NULL, &ws) < 0) return 50;
  at(m, 50);
  at(s, 51);
  *kid = 0;
  return 0;
}
static int pty_check(pid_t kid) {
  struct winsize ws;
  CHECK(ioctl(51, TIOCGWINSZ, &ws) == 0 && ws.ws_row == 40 && ws.ws_col == 132, 50);
  char b[3];
  CHECK(write(50, "ok\n", 3) == 3 && readn(51, b, 3) == 0, 51);
  return 0;
}

// ---- locks ----
static int locks_setup(pid_t* kid) {
  int f = open(path("flock"), O_RDWR | O_CREAT, 0600);
  flock(f, LOCK_EX);
  at(f, 60);
  int p = open(path("posix"), O_RDWR | O_CREAT, 0600);
  at(p, 61);  // first: closing any fd of the file would drop the lock
  struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 10};
  fcntl(61, F_SETLK, &fl);
  *kid = 0;
  return 0;
}
static int locks_check(pid_t kid) {
  int f = open(path("flock"), O_RDWR);
  CHECK(flock(f, LOCK_EX | LOCK_NB) < 0, 60);
  int p = open(path("posix"), O_RDWR);
  struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 1};
  CHECK(fcntl(p, F_OFD_GETLK, &fl) == 0 && fl.l_type == F_WRLCK, 61);
  return 0;
}

// ---- TCP streaming with an echo peer ----
// The client sends pattern bytes and checks the echo; the server echoes and checks the pattern.
static unsigned char pat(uint64_t i) { return (unsigned char)((i * 2654435761u) >> 13); }

static int enter_netns(const char* ns) {
  char p[256];
  snprintf(p, sizeof(p), "/run/netns/%s", ns);
  int fd = open(p, O_RDONLY);
  if (fd < 0 || setns(fd, CLONE_NEWNET) < 0) return -1;
  close(fd);
  return 0;
}

static int tcp_echo(int fd) {  // server side: until EOF
  uint64_t n = 0;
  unsigned char buf[65536];
  for (;;) {
    ssize_t r = read(fd, buf, sizeof(buf));
    if (r == 0) return 0;
    CHECK(r > 0, 70);
    for (ssize_t i = 0; i < r; i++) CHECK(buf[i] == pat(n + i), 71);
    n += r;
    ssize_t off = 0;
    while (off < r) {
      ssize_t w = write(fd, buf + off, r - off);
      CHECK(w > 0, 72);
      off += w;
    }
  }
}

// Client: streams until GO_FILE exists and then 1 MiB more, checks every echoed byte, then
// closes its side and waits for the echo's EOF.
static int tcp_stream(int fd) {
  uint64_t sent = 0, got = 0, stop_at = UINT64_MAX;
  unsigned char buf[65536];
  fcntl(fd, F_SETFL, O_NONBLOCK);
  for (;;) {
    if (stop_at == UINT64_MAX && access(go_file, F_OK) == 0) stop_at = sent + (1 << 20);
    struct pollfd p = {fd, POLLIN | (sent < stop_at ? POLLOUT : 0), 0};
    // EINTR: a poll() frozen mid-call may come back interrupted after restore (the engine's
    // restart of restart_syscall; reported to its owner): not a file-descriptor matter.
    int pr = poll(&p, 1, 100);
    if (pr < 0 && errno == EINTR) continue;
    CHECK(pr >= 0, 73);
    CHECK(!(p.revents & (POLLERR | POLLNVAL)), 74);
    if (p.revents & POLLOUT) {
      size_t n = sizeof(buf);
      if (stop_at != UINT64_MAX && stop_at - sent < n) n = stop_at - sent;
      for (size_t i = 0; i < n; i++) buf[i] = pat(sent + i);
      ssize_t w = write(fd, buf, n);
      CHECK(w > 0 || errno == EAGAIN, 75);
      if (w > 0) sent += w;
      if (sent == stop_at) shutdown(fd, SHUT_WR);
    }
    if (p.revents & (POLLIN | POLLHUP)) {
      ssize_t r = read(fd, buf, sizeof(buf));
      if (r == 0) {
        CHECK(got == sent && sent == stop_at, 76);
        return 0;
      }
      CHECK(r > 0 || errno == EAGAIN, 77);
      for (ssize_t i = 0; i < r; i++) CHECK(buf[i] == pat(got + i), 78);
      if (r > 0) got += r;
    }
  }
}

static int tcp_addr(const char* ip, int port, struct sockaddr_storage* ss) {
  memset(ss, 0, sizeof(*ss));
  if (strchr(ip, ':')) {
    struct sockaddr_in6* a = (struct sockaddr_in6*)ss;
    a->sin6_family = AF_INET6;
    a->sin6_port = htons(port);
    inet_pton(AF_INET6, ip, &a->sin6_addr);
    return sizeof(*a);
  }
  struct sockaddr_in* a = (struct sockaddr_in*)ss;
  a->sin_family = AF_INET;
  a->sin_port = htons(port);
  inet_pton(AF_INET, ip, &a->sin_addr);
  return sizeof(*a);
}

int main(int argc, char** argv) {
  if (argc < 5) return 99;
  ready = atoi(argv[1]);
  go_file = argv[2];
  const char* mode = argv[3];
  dir = argv[4];
  pid_t kid = 0;
  int rc = 0;
  int (*check)(pid_t) = NULL;
  if (!strncmp(mode, "tcp-", 4)) {
    if (argc < 8 || enter_netns(argv[5]) < 0) return 98;
    struct sockaddr_storage ss;
    int len = tcp_addr(argv[6], atoi(argv[7]), &ss);
    int fd;
    if (!strcmp(mode, "tcp-server")) {
      int l = socket(ss.ss_family, SOCK_STREAM, 0);
      int one = 1;
      setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
      if (bind(l, (struct sockaddr*)&ss, len) < 0 || listen(l, 4) < 0) return 97;
      dprintf(ready, "ready\n");  // listening: the peer may connect
      close(ready);
      fd = accept(l, NULL, NULL);
      if (fd < 0) return 96;
      close(l);
      return tcp_echo(fd);
    }
    fd = socket(ss.ss_family, SOCK_STREAM, 0);
    if (connect(fd, (struct sockaddr*)&ss, len) < 0) return 95;
    dprintf(ready, "ready\n");
    close(ready);
    return tcp_stream(fd);
  }
  if (!strcmp(mode, "files")) rc = files_setup(&kid), check = files_check;
  else if (!strcmp(mode, "pipes")) rc = pipes_setup(&kid), check = pipes_check;
  else if (!strcmp(mode, "unix")) rc = unix_setup(&kid), check = unix_check;
  else if (!strcmp(mode, "anon")) rc = anon_setup(&kid), check = anon_check;
  else if (!strcmp(mode, "pty")) rc = pty_setup(&kid), check = pty_check;
  else if (!strcmp(mode, "locks")) rc = locks_setup(&kid), check = locks_check;
  else return 99;
  if (rc) return rc;
  dprintf(ready, "ready\n");
  close(ready);
  wait_go();
  return check(kid);
}
