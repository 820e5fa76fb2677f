/* Ports of CRIU zdtm static tests for file descriptors and sockets (own code; the originals in
 * checkpoint-restore/criu, test/zdtm/static/, say what each checks): z_files MODE READY_FD DIR.
 * Same protocol as z_static.c: a mode sets its state up, writes "ready\n" on READY_FD and closes
 * it, waits for SIGUSR2 (blocked, taken with sigwaitinfo), checks its own state and exits 0, or
 * with the number of the failed check (reason on stderr). Children report through their exit
 * codes, which the mode's parent checks. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
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
#include <sys/fanotify.h>
#include <sys/file.h>
#include <sys/inotify.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <arpa/inet.h>
#include <linux/if_ether.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <netinet/udp.h>
#include <termios.h>
#include <unistd.h>

#include "zdtm_helper.h"

static ssize_t read_full(int fd, void* buf, size_t n) {
  size_t got = 0;
  while (got < n) {
    ssize_t r = read(fd, (char*)buf + got, n - got);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return got ? (ssize_t)got : r;
    got += r;
  }
  return got;
}
/* The children's exit codes: the first non-zero one (its number plus 50), or 0. */
/* Children wait for the parent's word over a pipe (the parent gets SIGUSR2). */
static int go_pipe[2];
static void go_init(void) { SETUP(pipe(go_pipe) == 0); }
static void child_wait_go(void) {
  char c;
  close(go_pipe[1]);
  SETUP(read(go_pipe[0], &c, 1) == 0 || c == 'g');
}
static void go_children(void) { close(go_pipe[1]); }

/* pipe00: a pipe shared by a parent and a child, data queued in it both ways around. */
static int m_pipe00(void) {
  int p[2], q[2];
  SETUP(pipe(p) == 0 && pipe(q) == 0);
  go_init();
  pid_t c = zfork();
  if (c == 0) {
    close(p[1]);
    close(q[0]);
    child_wait_go();
    char buf[64] = {};
    CHECK(read(p[0], buf, sizeof buf) == 16 && !memcmp(buf, "parent-to-child!", 16), "p data");
    CHECK(write(q[1], "child-to-parent!", 16) == 16, "write q");
    _exit(0);
  }
  close(p[0]);
  close(q[1]);
  SETUP(write(p[1], "parent-to-child!", 16) == 16);
  ready_and_wait();
  go_children();
  char buf[64] = {};
  CHECK(read(q[0], buf, sizeof buf) == 16 && !memcmp(buf, "child-to-parent!", 16), "q data");
  CHECK(reap(c) == 0, "child");
  return 0;
}

/* pipe01: a pipe grown with F_SETPIPE_SZ to 1 MiB and filled nearly full. */
static int m_pipe01(void) {
  int p[2];
  const size_t sz = 1 << 20, n = sz - 4096 - 123;
  SETUP(pipe(p) == 0);
  SETUP(fcntl(p[1], F_SETPIPE_SZ, (int)sz) >= (int)sz);
  char* buf = malloc(sz);
  fill(buf, n, 7);
  SETUP(write(p[1], buf, n) == (ssize_t)n);
  int size_before = fcntl(p[0], F_GETPIPE_SZ);
  ready_and_wait();
  CHECK(fcntl(p[0], F_GETPIPE_SZ) == size_before, "pipe size %d, was %d",
        fcntl(p[0], F_GETPIPE_SZ), size_before);
  int avail = 0;
  CHECK(ioctl(p[0], FIONREAD, &avail) == 0 && avail == (int)n, "queued %d", avail);
  memset(buf, 0, sz);
  CHECK(read_full(p[0], buf, n) == (ssize_t)n && same(buf, n, 7), "data");
  /* Still a whole 1 MiB of room. */
  fcntl(p[1], F_SETFL, O_NONBLOCK);
  CHECK(write(p[1], buf, sz) == (ssize_t)sz, "room");
  return 0;
}

/* pipe02: two unshared descriptions of one pipe end (reopened through /proc), one O_NONBLOCK. */
static int m_pipe02(void) {
  int p[2];
  char path[64];
  SETUP(pipe(p) == 0);
  snprintf(path, sizeof path, "/proc/self/fd/%d", p[0]);
  int fd = open(path, O_RDONLY);
  SETUP(fd >= 0 && fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) == 0);
  ready_and_wait();
  CHECK(fcntl(fd, F_GETFL) & O_NONBLOCK, "O_NONBLOCK lost on %d", fd);
  CHECK(!(fcntl(p[0], F_GETFL) & O_NONBLOCK), "O_NONBLOCK appeared on %d", p[0]);
  char c;
  CHECK(read(fd, &c, 1) < 0 && errno == EAGAIN, "nonblocking read");
  CHECK(write(p[1], "x", 1) == 1 && read(p[0], &c, 1) == 1 && c == 'x', "same pipe");
  return 0;
}

/* A packet-mode pipe (pipe2 O_DIRECT): queued writes stay separate packets. */
static int m_pipe_direct(void) {
  int p[2];
  SETUP(pipe2(p, O_DIRECT) == 0);
  SETUP(write(p[1], "one", 3) == 3 && write(p[1], "second", 6) == 6 && write(p[1], "3", 1) == 1);
  ready_and_wait();
  CHECK(fcntl(p[1], F_GETFL) & O_DIRECT, "O_DIRECT lost (write end)");
  char buf[64];
  CHECK(read(p[0], buf, sizeof buf) == 3 && !memcmp(buf, "one", 3), "packet 1");
  CHECK(read(p[0], buf, sizeof buf) == 6 && !memcmp(buf, "second", 6), "packet 2");
  CHECK(read(p[0], buf, sizeof buf) == 1 && buf[0] == '3', "packet 3");
  CHECK(write(p[1], "ab", 2) == 2 && write(p[1], "cd", 2) == 2 && read(p[0], buf, 64) == 2,
        "still packets");
  return 0;
}

/* fifo-rowo-pair: one fifo opened read-only (non-blocking) and write-only, data queued. */
static int m_fifo_rowo_pair(void) {
  const char* path = path_in("rowo.fifo");
  SETUP(mkfifo(path, 0600) == 0);
  int r = open(path, O_RDONLY | O_NONBLOCK);
  int w = open(path, O_WRONLY);
  SETUP(r >= 0 && w >= 0);
  SETUP(fcntl(r, F_SETFL, 0) == 0); /* blocking again, as the original */
  char data[4000];
  fill(data, sizeof data, 3);
  SETUP(write(w, data, sizeof data) == sizeof data);
  ready_and_wait();
  CHECK((fcntl(r, F_GETFL) & O_ACCMODE) == O_RDONLY, "r mode");
  CHECK((fcntl(w, F_GETFL) & O_ACCMODE) == O_WRONLY, "w mode");
  char got[4000];
  CHECK(read_full(r, got, sizeof got) == sizeof got && same(got, sizeof got, 3), "data");
  CHECK(write(w, "z", 1) == 1 && read(r, got, 1) == 1 && got[0] == 'z', "same fifo");
  struct stat a, b;
  CHECK(fstat(r, &a) == 0 && stat(path, &b) == 0 && a.st_ino == b.st_ino, "the named fifo");
  return 0;
}

/* fifo_wronly: a child blocked reading a fifo the parent holds write-only. */
static int m_fifo_wronly(void) {
  const char* path = path_in("wronly.fifo");
  SETUP(mkfifo(path, 0600) == 0);
  int sync[2];
  SETUP(pipe(sync) == 0);
  pid_t c = zfork();
  if (c == 0) {
    close(sync[0]);
    int r = open(path, O_RDONLY);
    if (r < 0) _exit(2);
    close(sync[1]);
    char buf[32] = {};
    if (read_full(r, buf, 10) != 10 || memcmp(buf, "0123456789", 10)) _exit(3);
    _exit(0);
  }
  close(sync[1]);
  int w = open(path, O_WRONLY);
  char x;
  SETUP(w >= 0 && read(sync[0], &x, 1) == 0);
  ready_and_wait();
  CHECK((fcntl(w, F_GETFL) & O_ACCMODE) == O_WRONLY, "mode");
  CHECK(write(w, "0123456789", 10) == 10, "write");
  CHECK(reap(c) == 0, "reader child");
  return 0;
}

/* unlink_fifo: an O_RDWR fifo whose name is gone. */
static int m_unlink_fifo(void) {
  const char* path = path_in("gone.fifo");
  SETUP(mkfifo(path, 0600) == 0);
  int fd = open(path, O_RDWR);
  SETUP(fd >= 0 && unlink(path) == 0);
  SETUP(write(fd, "queued", 6) == 6);
  ready_and_wait();
  struct stat st;
  CHECK(fstat(fd, &st) == 0 && S_ISFIFO(st.st_mode), "fifo");
  CHECK(access(path, F_OK) < 0 && errno == ENOENT, "name came back");
  char buf[16];
  CHECK(read(fd, buf, sizeof buf) == 6 && !memcmp(buf, "queued", 6), "data");
  CHECK(write(fd, "ab", 2) == 2 && read(fd, buf, 16) == 2, "works");
  return 0;
}

static socklen_t un_addr(struct sockaddr_un* a, const char* path) {
  memset(a, 0, sizeof *a);
  a->sun_family = AF_UNIX;
  strncpy(a->sun_path, path, sizeof a->sun_path - 1);
  return offsetof(struct sockaddr_un, sun_path) + strlen(path) + 1;
}
static int expect_read(int fd, const char* s) {
  char buf[256] = {};
  size_t n = strlen(s);
  ssize_t r = recv(fd, buf, n, MSG_DONTWAIT);
  return r == (ssize_t)n && !memcmp(buf, s, n);
}

/* sk-unix-rel: a dgram socket bound to a relative name (cwd is DIR), and a client sending to it
 * by that relative name. */
static int m_sk_unix_rel(void) {
  SETUP(chdir(dir) == 0);
  struct sockaddr_un a;
  socklen_t l = un_addr(&a, "rel.sk");
  int srv = socket(AF_UNIX, SOCK_DGRAM, 0), cli = socket(AF_UNIX, SOCK_DGRAM, 0);
  SETUP(srv >= 0 && cli >= 0 && bind(srv, (void*)&a, l) == 0);
  SETUP(sendto(cli, "before", 6, 0, (void*)&a, l) == 6);
  ready_and_wait();
  CHECK(expect_read(srv, "before"), "queued");
  CHECK(sendto(cli, "after", 5, 0, (void*)&a, l) == 5, "send by relative name");
  CHECK(expect_read(srv, "after"), "received");
  struct sockaddr_un g;
  socklen_t gl = sizeof g;
  CHECK(getsockname(srv, (void*)&g, &gl) == 0 && !strcmp(g.sun_path, "rel.sk"), "name %s",
        g.sun_path);
  return 0;
}

static int pending_data;
/* Unix sockets in many states at once: a listener with a pending (not accepted)
 * connection carrying data, an accepted pair with data both ways, a half-shut pair, a dgram
 * socket connected to a bound one, a seqpacket pair, and a connected socket whose listener is
 * gone. */
static int m_sk_unix_states(void) {
  struct sockaddr_un a, d;
  socklen_t al = un_addr(&a, path_in("sk01.listen")), dl = un_addr(&d, path_in("sk01.dgram"));
  int lst = socket(AF_UNIX, SOCK_STREAM, 0);
  SETUP(lst >= 0 && bind(lst, (void*)&a, al) == 0 && listen(lst, 8) == 0);
  int c1 = socket(AF_UNIX, SOCK_STREAM, 0);
  SETUP(connect(c1, (void*)&a, al) == 0);
  int s1 = accept(lst, NULL, NULL);
  SETUP(s1 >= 0);
  SETUP(write(c1, "c1->s1", 6) == 6 && write(s1, "s1->c1", 6) == 6);
  int pend = socket(AF_UNIX, SOCK_STREAM, 0); /* never accepted before the dump */
  SETUP(connect(pend, (void*)&a, al) == 0);
  if (pending_data) SETUP(write(pend, "pending", 7) == 7);
  int hs[2];
  SETUP(socketpair(AF_UNIX, SOCK_STREAM, 0, hs) == 0);
  SETUP(write(hs[0], "half", 4) == 4 && shutdown(hs[0], SHUT_WR) == 0);
  int dsrv = socket(AF_UNIX, SOCK_DGRAM, 0), dcli = socket(AF_UNIX, SOCK_DGRAM, 0);
  SETUP(bind(dsrv, (void*)&d, dl) == 0 && connect(dcli, (void*)&d, dl) == 0);
  SETUP(send(dcli, "dg1", 3, 0) == 3 && send(dcli, "dgram2", 6, 0) == 6);
  int sp[2];
  SETUP(socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sp) == 0);
  SETUP(send(sp[0], "rec1", 4, 0) == 4 && send(sp[0], "record2", 7, 0) == 7);
  /* An orphan: connected, then its listener closed (the accepted end stays with us). */
  struct sockaddr_un o;
  socklen_t ol = un_addr(&o, path_in("sk01.orphan"));
  int ol_sk = socket(AF_UNIX, SOCK_STREAM, 0);
  SETUP(bind(ol_sk, (void*)&o, ol) == 0 && listen(ol_sk, 1) == 0);
  int oc = socket(AF_UNIX, SOCK_STREAM, 0);
  SETUP(connect(oc, (void*)&o, ol) == 0);
  int os = accept(ol_sk, NULL, NULL);
  SETUP(os >= 0);
  close(ol_sk);
  SETUP(write(oc, "orphan", 6) == 6);
  ready_and_wait();
  CHECK(expect_read(s1, "c1->s1") && expect_read(c1, "s1->c1"), "accepted pair");
  int s2 = accept4(lst, NULL, NULL, SOCK_NONBLOCK);
  CHECK(s2 >= 0, "the pending connection is still queued");
  CHECK(!pending_data || expect_read(s2, "pending"), "pending data");
  CHECK(write(s2, "ack", 3) == 3 && expect_read(pend, "ack"), "pending pair works");
  CHECK(expect_read(hs[1], "half"), "half data");
  char b[8];
  CHECK(recv(hs[1], b, sizeof b, MSG_DONTWAIT) == 0, "EOF after shutdown");
  CHECK(send(hs[0], "x", 1, MSG_NOSIGNAL) < 0 && errno == EPIPE, "write side stays shut");
  CHECK(write(hs[1], "back", 4) == 4 && expect_read(hs[0], "back"), "other way open");
  CHECK(expect_read(dsrv, "dg1") && expect_read(dsrv, "dgram2"), "dgram queue");
  CHECK(send(dcli, "dg3", 3, 0) == 3 && expect_read(dsrv, "dg3"), "dgram connected");
  char rb[16];
  CHECK(recv(sp[1], rb, sizeof rb, 0) == 4 && recv(sp[1], rb, sizeof rb, 0) == 7, "seqpacket");
  CHECK(expect_read(os, "orphan") && write(os, "o", 1) == 1 && expect_read(oc, "o"), "orphan");
  int c3 = socket(AF_UNIX, SOCK_STREAM, 0);
  CHECK(connect(c3, (void*)&a, al) == 0, "listener listens");
  return 0;
}

/* socket_queues: stream and dgram pairs with two messages queued each way. */
static int m_socket_queues(void) {
  int s[2], d[2];
  SETUP(socketpair(AF_UNIX, SOCK_STREAM, 0, s) == 0 && socketpair(AF_UNIX, SOCK_DGRAM, 0, d) == 0);
  SETUP(write(s[0], "stream-l1", 9) == 9 && write(s[0], "stream-l2", 9) == 9);
  SETUP(write(s[1], "stream-r1", 9) == 9 && write(s[1], "stream-r2", 9) == 9);
  SETUP(write(d[0], "dgram-l1", 8) == 8 && write(d[0], "dgram-l2x", 9) == 9);
  SETUP(write(d[1], "dgram-r1", 8) == 8 && write(d[1], "dgram-r2x", 9) == 9);
  ready_and_wait();
  char buf[64] = {};
  CHECK(read(s[1], buf, 64) == 18 && !memcmp(buf, "stream-l1stream-l2", 18), "stream l");
  CHECK(read(s[0], buf, 64) == 18 && !memcmp(buf, "stream-r1stream-r2", 18), "stream r");
  CHECK(expect_read(d[1], "dgram-l1") && expect_read(d[1], "dgram-l2x"), "dgram l");
  CHECK(expect_read(d[0], "dgram-r1") && expect_read(d[0], "dgram-r2x"), "dgram r");
  return 0;
}

/* sockets00: a named stream listener with an accepted connection, and an abstract dgram pair;
 * the bound file keeps its mode. */
static int m_sockets00(void) {
  struct sockaddr_un a;
  socklen_t al = un_addr(&a, path_in("sockets00.sk"));
  int l = socket(AF_UNIX, SOCK_STREAM, 0);
  SETUP(bind(l, (void*)&a, al) == 0 && listen(l, 4) == 0 && chmod(a.sun_path, 0741) == 0);
  int c = socket(AF_UNIX, SOCK_STREAM, 0);
  SETUP(connect(c, (void*)&a, al) == 0);
  int s = accept(l, NULL, NULL);
  SETUP(s >= 0);
  struct stat before;
  SETUP(stat(a.sun_path, &before) == 0);
  struct sockaddr_un ab = {.sun_family = AF_UNIX};
  snprintf(ab.sun_path + 1, sizeof ab.sun_path - 1, "fz-sockets00-%d", getpid());
  socklen_t abl = offsetof(struct sockaddr_un, sun_path) + 1 + strlen(ab.sun_path + 1);
  int ds = socket(AF_UNIX, SOCK_DGRAM, 0), dc = socket(AF_UNIX, SOCK_DGRAM, 0);
  SETUP(bind(ds, (void*)&ab, abl) == 0 && sendto(dc, "abs", 3, 0, (void*)&ab, abl) == 3);
  ready_and_wait();
  struct stat after;
  CHECK(stat(a.sun_path, &after) == 0 && S_ISSOCK(after.st_mode), "socket file");
  CHECK((after.st_mode & 07777) == (before.st_mode & 07777), "mode %o was %o",
        after.st_mode & 07777, before.st_mode & 07777);
  CHECK(write(c, "ping", 4) == 4 && expect_read(s, "ping"), "connection");
  int c2 = socket(AF_UNIX, SOCK_STREAM, 0);
  CHECK(connect(c2, (void*)&a, al) == 0, "listener");
  CHECK(expect_read(ds, "abs"), "abstract queue");
  CHECK(sendto(dc, "abs2", 4, 0, (void*)&ab, abl) == 4 && expect_read(ds, "abs2"), "abstract");
  return 0;
}

/* sockets01: shut down unix sockets (stream both directions, dgram). */
static int m_sockets01(void) {
  int s[2], r[2], d[2];
  SETUP(socketpair(AF_UNIX, SOCK_STREAM, 0, s) == 0 && socketpair(AF_UNIX, SOCK_STREAM, 0, r) == 0);
  SETUP(socketpair(AF_UNIX, SOCK_DGRAM, 0, d) == 0);
  SETUP(shutdown(s[0], SHUT_RDWR) == 0);
  SETUP(shutdown(r[0], SHUT_RD) == 0);
  SETUP(shutdown(d[0], SHUT_WR) == 0);
  ready_and_wait();
  char b[4];
  CHECK(send(s[0], "x", 1, MSG_NOSIGNAL) < 0 && errno == EPIPE, "s[0] write shut");
  CHECK(recv(s[1], b, 1, MSG_DONTWAIT) == 0, "s[1] sees EOF");
  CHECK(send(s[1], "x", 1, MSG_NOSIGNAL) < 0 && errno == EPIPE, "s[1] peer shut reading");
  CHECK(recv(r[0], b, 1, MSG_DONTWAIT) == 0, "r[0] read shut");
  CHECK(send(r[0], "y", 1, 0) == 1 && expect_read(r[1], "y"), "r[0] still writes");
  CHECK(send(d[0], "z", 1, MSG_NOSIGNAL) < 0 && errno == EPIPE, "dgram write shut");
  CHECK(send(d[1], "w", 1, 0) == 1 && expect_read(d[0], "w"), "dgram reads");
  return 0;
}

/* sockets02: a stream pair whose one end was closed with data left for the other. */
static int m_sockets02(void) {
  int s[2];
  SETUP(socketpair(AF_UNIX, SOCK_STREAM, 0, s) == 0);
  SETUP(write(s[1], "last words", 10) == 10);
  close(s[1]);
  ready_and_wait();
  CHECK(expect_read(s[0], "last words"), "data");
  char b;
  CHECK(recv(s[0], &b, 1, MSG_DONTWAIT) == 0, "EOF");
  CHECK(send(s[0], "x", 1, MSG_NOSIGNAL) < 0 && errno == EPIPE, "peer gone");
  return 0;
}

/* sock_opts00/01 and more: SOL_SOCKET options changed from their defaults. */
static int m_sock_opts(void) {
  static const struct {
    int opt, unix_sk;
    const char* name;
  } opts[] = {
      {SO_PRIORITY, 0, "SO_PRIORITY"}, {SO_RCVLOWAT, 0, "SO_RCVLOWAT"}, {SO_MARK, 0, "SO_MARK"},
      {SO_PASSCRED, 1, "SO_PASSCRED"}, {SO_PASSSEC, 1, "SO_PASSSEC"},
      {SO_DONTROUTE, 0, "SO_DONTROUTE"}, {SO_NO_CHECK, 0, "SO_NO_CHECK"},
      {SO_OOBINLINE, 0, "SO_OOBINLINE"}, {SO_KEEPALIVE, 0, "SO_KEEPALIVE"},
      {SO_BROADCAST, 0, "SO_BROADCAST"}, {SO_REUSEADDR, 0, "SO_REUSEADDR"},
      {SO_REUSEPORT, 0, "SO_REUSEPORT"}, {SO_PEEK_OFF, 1, "SO_PEEK_OFF"},
  };
  enum { N = sizeof opts / sizeof opts[0] };
  int val[N];
  int sk = socket(AF_INET, SOCK_STREAM, 0), usk[2];
  SETUP(sk >= 0 && socketpair(AF_UNIX, SOCK_STREAM, 0, usk) == 0);
  for (int i = 0; i < N; i++) {
    int fd = opts[i].unix_sk ? usk[0] : sk, v = 0, r;
    socklen_t l = sizeof v;
    SETUP(getsockopt(fd, SOL_SOCKET, opts[i].opt, &v, &l) == 0);
    v = opts[i].opt == SO_PEEK_OFF ? 3 : v + 1;
    SETUP(setsockopt(fd, SOL_SOCKET, opts[i].opt, &v, sizeof v) == 0);
    l = sizeof r;
    SETUP(getsockopt(fd, SOL_SOCKET, opts[i].opt, &r, &l) == 0);
    val[i] = r;
  }
  struct linger lg = {1, 7};
  struct timeval tv = {3, 250000}, tv2 = {5, 0};
  int sndbuf = 65536, rcvbuf = 98304;
  SETUP(setsockopt(sk, SOL_SOCKET, SO_LINGER, &lg, sizeof lg) == 0);
  SETUP(setsockopt(sk, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) == 0);
  SETUP(setsockopt(sk, SOL_SOCKET, SO_SNDTIMEO, &tv2, sizeof tv2) == 0);
  SETUP(setsockopt(sk, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf) == 0);
  SETUP(setsockopt(sk, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf) == 0);
  int nodelay = 1, keepidle = 77;
  SETUP(setsockopt(sk, IPPROTO_TCP, TCP_NODELAY, &nodelay, sizeof nodelay) == 0);
  SETUP(setsockopt(sk, IPPROTO_TCP, TCP_KEEPIDLE, &keepidle, sizeof keepidle) == 0);
  int sb, rb;
  struct timeval rt0;
  socklen_t l = sizeof rt0;
  getsockopt(sk, SOL_SOCKET, SO_RCVTIMEO, &rt0, &l); /* rounded to jiffies by the kernel */
  l = sizeof sb;
  getsockopt(sk, SOL_SOCKET, SO_SNDBUF, &sb, &l);
  getsockopt(sk, SOL_SOCKET, SO_RCVBUF, &rb, &l);
  SETUP(write(usk[1], "0123456789", 10) == 10);
  ready_and_wait();
  for (int i = 0; i < N; i++) {
    int fd = opts[i].unix_sk ? usk[0] : sk, r = -1;
    socklen_t ll = sizeof r;
    CHECK(getsockopt(fd, SOL_SOCKET, opts[i].opt, &r, &ll) == 0 && r == val[i],
          "%s: %d, was %d", opts[i].name, r, val[i]);
  }
  struct linger lg2;
  struct timeval t;
  socklen_t sl = sizeof lg2;
  CHECK(getsockopt(sk, SOL_SOCKET, SO_LINGER, &lg2, &sl) == 0 && lg2.l_onoff && lg2.l_linger == 7,
        "SO_LINGER %d %d", lg2.l_onoff, lg2.l_linger);
  sl = sizeof t;
  CHECK(getsockopt(sk, SOL_SOCKET, SO_RCVTIMEO, &t, &sl) == 0 && t.tv_sec == rt0.tv_sec &&
            t.tv_usec == rt0.tv_usec, "SO_RCVTIMEO %ld.%06ld", (long)t.tv_sec, (long)t.tv_usec);
  CHECK(getsockopt(sk, SOL_SOCKET, SO_SNDTIMEO, &t, &sl) == 0 && t.tv_sec == 5, "SO_SNDTIMEO");
  int v;
  sl = sizeof v;
  CHECK(getsockopt(sk, SOL_SOCKET, SO_SNDBUF, &v, &sl) == 0 && v == sb, "SO_SNDBUF %d, was %d", v, sb);
  CHECK(getsockopt(sk, SOL_SOCKET, SO_RCVBUF, &v, &sl) == 0 && v == rb, "SO_RCVBUF %d, was %d", v, rb);
  CHECK(getsockopt(sk, IPPROTO_TCP, TCP_NODELAY, &v, &sl) == 0 && v, "TCP_NODELAY");
  CHECK(getsockopt(sk, IPPROTO_TCP, TCP_KEEPIDLE, &v, &sl) == 0 && v == 77, "TCP_KEEPIDLE %d", v);
  /* SO_PEEK_OFF works: a peek starts at offset 3 and moves it. */
  char b[4] = {};
  CHECK(recv(usk[0], b, 2, MSG_PEEK) == 2 && !memcmp(b, "34", 2), "peek at offset: %.2s", b);
  return 0;
}

/* deleted_unix_sock: a bound listener whose socket file was removed. */
static int m_deleted_unix_sock(void) {
  struct sockaddr_un a;
  socklen_t al = un_addr(&a, path_in("deleted.sk"));
  int l = socket(AF_UNIX, SOCK_STREAM, 0);
  SETUP(bind(l, (void*)&a, al) == 0 && listen(l, 4) == 0);
  int c = socket(AF_UNIX, SOCK_STREAM, 0);
  SETUP(connect(c, (void*)&a, al) == 0);
  int s = accept(l, NULL, NULL);
  SETUP(s >= 0 && unlink(a.sun_path) == 0);
  SETUP(write(c, "data", 4) == 4);
  ready_and_wait();
  CHECK(access(a.sun_path, F_OK) < 0 && errno == ENOENT, "the socket file came back");
  CHECK(expect_read(s, "data"), "queued");
  CHECK(write(s, "back", 4) == 4 && expect_read(c, "back"), "connection");
  struct sockaddr_un g;
  socklen_t gl = sizeof g;
  CHECK(getsockname(l, (void*)&g, &gl) == 0 && !strcmp(g.sun_path, a.sun_path), "name kept");
  return 0;
}

/* socket-tcp-*: a loopback TCP pair in several states: the client shut its writes (server in
 * CLOSE_WAIT, client in FIN_WAIT2), then the server shut too (closing states), with data
 * queued; plus a closed (never connected, bound) socket. Dumped with --tcp-established. */
static int tcp_pair(int* cli, int* srv, int* port) {
  int l = socket(AF_INET, SOCK_STREAM, 0), one = 1;
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t al = sizeof a;
  setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (bind(l, (void*)&a, sizeof a) || listen(l, 1) || getsockname(l, (void*)&a, &al)) return -1;
  *port = ntohs(a.sin_port);
  *cli = socket(AF_INET, SOCK_STREAM, 0);
  if (connect(*cli, (void*)&a, sizeof a)) return -1;
  *srv = accept(l, NULL, NULL);
  close(l);
  return *srv >= 0 ? 0 : -1;
}
static int tcp_state(int fd) {
  struct tcp_info ti;
  socklen_t l = sizeof ti;
  return getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &l) ? -1 : ti.tcpi_state;
}
static int m_tcp_halfclosed(void) {
  int c, s, port;
  SETUP(tcp_pair(&c, &s, &port) == 0);
  SETUP(write(c, "request", 7) == 7 && shutdown(c, SHUT_WR) == 0);
  SETUP(write(s, "reply-part1", 11) == 11);
  /* The FIN reaches the server asynchronously (loopback: at once, but bounded anyway). */
  for (int i = 0; i < 1000 && tcp_state(s) != TCP_CLOSE_WAIT; i++) usleep(1000);
  SETUP(tcp_state(s) == TCP_CLOSE_WAIT);
  int closed = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in b = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  SETUP(bind(closed, (void*)&b, sizeof b) == 0);
  socklen_t bl = sizeof b;
  SETUP(getsockname(closed, (void*)&b, &bl) == 0);
  int cs = tcp_state(c), ss = tcp_state(s);
  ready_and_wait();
  /* The client has sent its FIN (FIN_WAIT1 until the restored peer acks it again, then
   * FIN_WAIT2). godwit restores the server's received FIN as SHUT_RD on an ESTABLISHED socket
   * (TCP_REPAIR cannot set CLOSE_WAIT): reads see EOF, poll sees POLLRDHUP. */
  (void)ss;
  CHECK(cs == TCP_FIN_WAIT2 && (tcp_state(c) == TCP_FIN_WAIT1 || tcp_state(c) == TCP_FIN_WAIT2),
        "client state %d", tcp_state(c));
  struct pollfd pf = {s, POLLRDHUP, 0};
  CHECK(poll(&pf, 1, 0) == 1 && (pf.revents & POLLRDHUP), "server sees the peer's FIN");
  char buf[32] = {};
  CHECK(read_full(s, buf, 7) == 7 && !memcmp(buf, "request", 7), "request");
  CHECK(read(s, buf, 1) == 0, "server sees the FIN");
  CHECK(write(s, "-part2", 6) == 6 && shutdown(s, SHUT_WR) == 0, "server finishes");
  CHECK(read_full(c, buf, 17) == 17 && !memcmp(buf, "reply-part1-part2", 17), "reply");
  CHECK(read(c, buf, 1) == 0, "client sees the FIN");
  struct sockaddr_in g;
  socklen_t gl = sizeof g;
  CHECK(getsockname(closed, (void*)&g, &gl) == 0 && g.sin_port == b.sin_port, "closed bound");
  CHECK(tcp_state(closed) == TCP_CLOSE, "closed state");
  return 0;
}

/* socket_udp-corked: a UDP socket with UDP_CORK and a datagram held back by the cork. */
static int m_udp_corked(void) {
  int r = socket(AF_INET, SOCK_DGRAM, 0), s = socket(AF_INET, SOCK_DGRAM, 0), one = 1;
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t al = sizeof a;
  SETUP(bind(r, (void*)&a, sizeof a) == 0 && getsockname(r, (void*)&a, &al) == 0);
  SETUP(connect(s, (void*)&a, sizeof a) == 0);
  SETUP(setsockopt(s, IPPROTO_UDP, UDP_CORK, &one, sizeof one) == 0);
  SETUP(send(s, "corked", 6, 0) == 6);
  ready_and_wait();
  int zero = 0;
  CHECK(setsockopt(s, IPPROTO_UDP, UDP_CORK, &zero, sizeof zero) == 0, "uncork");
  char b[16];
  CHECK(recv(r, b, sizeof b, 0) == 6 && !memcmp(b, "corked", 6), "held datagram");
  return 0;
}

/* file_fown: F_SETOWN / F_SETSIG / O_ASYNC on both ends of a pipe; the signal still comes. */
static volatile sig_atomic_t sigio_count;
static void on_sigio(int sig) { (void)sig, sigio_count++; }
static int m_file_fown(void) {
  int p[2];
  SETUP(setpgid(0, 0) == 0 && pipe(p) == 0);
  struct sigaction sa = {.sa_handler = on_sigio, .sa_flags = SA_RESTART};
  SETUP(sigaction(SIGIO, &sa, NULL) == 0);
  for (int i = 0; i < 2; i++) {
    SETUP(fcntl(p[i], F_SETOWN, getpid()) == 0 && fcntl(p[i], F_SETSIG, SIGIO) == 0);
    SETUP(fcntl(p[i], F_SETFL, fcntl(p[i], F_GETFL) | O_ASYNC) == 0);
  }
  /* A socket owned by the process group, with a realtime signal. */
  int sk[2];
  SETUP(socketpair(AF_UNIX, SOCK_STREAM, 0, sk) == 0);
  SETUP(fcntl(sk[0], F_SETOWN, -getpgrp()) == 0 && fcntl(sk[0], F_SETSIG, SIGRTMIN + 3) == 0);
  int fl[2], own[2], sig[2];
  for (int i = 0; i < 2; i++) {
    fl[i] = fcntl(p[i], F_GETFL);
    own[i] = fcntl(p[i], F_GETOWN);
    sig[i] = fcntl(p[i], F_GETSIG);
  }
  struct f_owner_ex ox;
  SETUP(fcntl(sk[0], F_GETOWN_EX, &ox) == 0 && ox.type == F_OWNER_PGRP);
  ready_and_wait();
  for (int i = 0; i < 2; i++) {
    CHECK(fcntl(p[i], F_GETFL) == fl[i], "flags[%d] %o, were %o", i, fcntl(p[i], F_GETFL), fl[i]);
    CHECK(fcntl(p[i], F_GETOWN) == own[i], "owner[%d] %d, was %d", i, fcntl(p[i], F_GETOWN), own[i]);
    CHECK(fcntl(p[i], F_GETSIG) == sig[i], "sig[%d] %d, was %d", i, fcntl(p[i], F_GETSIG), sig[i]);
  }
  struct f_owner_ex ox2;
  CHECK(fcntl(sk[0], F_GETOWN_EX, &ox2) == 0 && ox2.type == F_OWNER_PGRP && ox2.pid == ox.pid,
        "socket owner type %d pid %d", ox2.type, ox2.pid);
  CHECK(fcntl(sk[0], F_GETSIG) == SIGRTMIN + 3, "socket sig %d", fcntl(sk[0], F_GETSIG));
  sigio_count = 0;
  CHECK(write(p[1], "x", 1) == 1, "write");
  for (int i = 0; i < 1000 && !sigio_count; i++) usleep(1000);
  CHECK(sigio_count > 0, "no SIGIO after restore");
  return 0;
}

/* fd: one description dup'ed to many numbers in a parent and two children; the offset is one. */
static int m_fd(void) {
  int fd = open(path_in("fd.file"), O_RDWR | O_CREAT, 0600);
  SETUP(fd >= 0);
  int nums[] = {10, 33, 100, 257, 600};
  for (unsigned i = 0; i < sizeof nums / sizeof nums[0]; i++) SETUP(dup2(fd, nums[i]) == nums[i]);
  SETUP(write(fd, "abcdef", 6) == 6);
  go_init();
  pid_t kids[2];
  for (int k = 0; k < 2; k++) {
    kids[k] = zfork();
    if (kids[k] == 0) {
      child_wait_go();
      /* Child k writes at the shared offset after the parent, one at a time. */
      char c = 'X' + k;
      int me = nums[k + 2];
      struct flock lk = {.l_type = F_WRLCK, .l_whence = SEEK_SET};
      if (fcntl(me, F_SETLKW, &lk)) _exit(2);
      if (write(me, &c, 1) != 1) _exit(3);
      lk.l_type = F_UNLCK;
      fcntl(me, F_SETLK, &lk);
      _exit(0);
    }
  }
  ready_and_wait();
  CHECK(lseek(nums[4], 0, SEEK_CUR) == 6, "offset");
  for (unsigned i = 0; i < sizeof nums / sizeof nums[0]; i++) {
    struct stat a, b;
    CHECK(fstat(nums[i], &a) == 0 && fstat(fd, &b) == 0 && a.st_ino == b.st_ino, "fd %d", nums[i]);
  }
  go_children();
  CHECK(reap(kids[0]) == 0 && reap(kids[1]) == 0, "children");
  CHECK(lseek(fd, 0, SEEK_CUR) == 8, "children moved the shared offset: %ld",
        (long)lseek(fd, 0, SEEK_CUR));
  return 0;
}

/* fdt_shared: processes sharing one fd table (CLONE_FILES): an fd one opens after restore is
 * there in the other. Child 0 also forked a grandchild (a copy of the shared table, its own from
 * then on): the parent's close of 901 does not reach it. */
static int fdt_go[2][2], fdt_back[2], fdt_gc[2];
static char fdt_stack[2][64 << 10];
static int fdt_child(void* arg) {
  int k = (int)(intptr_t)arg;
  char c;
  pid_t gc = 0;
  if (k == 0) {
    gc = zfork();
    if (gc < 0) _exit(8);
    if (gc == 0) {
      if (read(fdt_gc[0], &c, 1) != 1) _exit(2);
      _exit(fcntl(901, F_GETFD) == -1 ? 3 : 0);
    }
    if (write(fdt_back[1], "f", 1) != 1) _exit(9);
  }
  if (read(fdt_go[k][0], &c, 1) != 1) _exit(2);
  int fd = open("/dev/null", O_RDONLY);
  if (fd < 0 || dup2(fd, 910 + k) != 910 + k) _exit(3);
  close(fd);
  if (write(fdt_back[1], "o", 1) != 1) _exit(4);
  if (read(fdt_go[k][0], &c, 1) != 1) _exit(5);
  /* The parent closed 901 in the one table. */
  if (fcntl(901, F_GETFD) != -1) _exit(6);
  if (gc > 0) {
    int st = -1;
    if (waitpid(gc, &st, 0) != gc || !WIFEXITED(st) || WEXITSTATUS(st) != 0) _exit(7);
  }
  _exit(0);
}
static int m_fdt_shared(void) {
  SETUP(pipe(fdt_go[0]) == 0 && pipe(fdt_go[1]) == 0 && pipe(fdt_back) == 0 && pipe(fdt_gc) == 0);
  SETUP(dup2(fdt_back[0], 901) == 901);
  pid_t c[2];
  for (int k = 0; k < 2; k++) {
    c[k] = clone(fdt_child, fdt_stack[k] + sizeof fdt_stack[k], CLONE_FILES | SIGCHLD,
                 (void*)(intptr_t)k);
    SETUP(c[k] > 0);
  }
  char f;
  SETUP(read(fdt_back[0], &f, 1) == 1); /* the grandchild exists */
  ready_and_wait();
  char b[2];
  CHECK(write(fdt_go[0][1], "a", 1) == 1 && write(fdt_go[1][1], "a", 1) == 1, "go 1");
  CHECK(read_full(fdt_back[0], b, 2) == 2, "children opened");
  CHECK(fcntl(910, F_GETFD) != -1 && fcntl(911, F_GETFD) != -1,
        "the children's new fds are not in our table");
  CHECK(close(901) == 0, "close");
  CHECK(write(fdt_gc[1], "g", 1) == 1, "grandchild go");
  CHECK(write(fdt_go[0][1], "b", 1) == 1 && write(fdt_go[1][1], "b", 1) == 1, "go 2");
  int r0 = reap(c[0]), r1 = reap(c[1]);
  CHECK(r0 == 0 && r1 == 0, "children %d %d", r0, r1);
  return 0;
}

/* file_locks00..08 and ofd_file_locks: POSIX read and write locks on ranges, flock shared and
 * exclusive, and OFD locks; a fresh child probes each. */
static int probe_posix(int fd, short type, off_t start, off_t len, pid_t* holder) {
  struct flock lk = {.l_type = type, .l_whence = SEEK_SET, .l_start = start, .l_len = len};
  if (fcntl(fd, F_GETLK, &lk)) return -2;
  if (holder) *holder = lk.l_pid;
  return lk.l_type;
}
static int m_file_locks(void) {
  int f1 = open(path_in("locks1"), O_RDWR | O_CREAT, 0600);
  int f2 = open(path_in("locks2"), O_RDWR | O_CREAT, 0600);
  int f3 = open(path_in("locks3"), O_RDWR | O_CREAT, 0600);
  int f4 = open(path_in("locks4"), O_RDWR | O_CREAT, 0600);
  SETUP(f1 >= 0 && f2 >= 0 && f3 >= 0 && f4 >= 0);
  struct flock w = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 10};
  struct flock r = {.l_type = F_RDLCK, .l_whence = SEEK_SET, .l_start = 100, .l_len = 0};
  SETUP(fcntl(f1, F_SETLK, &w) == 0 && fcntl(f1, F_SETLK, &r) == 0);
  SETUP(flock(f2, LOCK_EX) == 0);
  SETUP(flock(f3, LOCK_SH) == 0);
  struct flock o = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 5, .l_len = 5};
  SETUP(fcntl(f4, F_OFD_SETLK, &o) == 0);
  /* A child holds its own lock on f1's file (a read lock at 50..59). */
  go_init();
  pid_t c = zfork();
  if (c == 0) {
    int cf = open(path_in("locks1"), O_RDWR);
    struct flock cr = {.l_type = F_RDLCK, .l_whence = SEEK_SET, .l_start = 50, .l_len = 10};
    if (cf < 0 || fcntl(cf, F_SETLK, &cr)) _exit(2);
    child_wait_go();
    _exit(0);
  }
  /* Wait until the child's lock is there. */
  for (int i = 0; i < 2000; i++) {
    pid_t h = 0;
    if (probe_posix(f1, F_WRLCK, 50, 10, &h) == F_RDLCK && h == c) break;
    usleep(1000);
  }
  ready_and_wait();
  pid_t me = getpid();
  pid_t prober = fork();
  if (prober == 0) {
    int g1 = open(path_in("locks1"), O_RDWR), g2 = open(path_in("locks2"), O_RDWR);
    int g3 = open(path_in("locks3"), O_RDWR), g4 = open(path_in("locks4"), O_RDWR);
    pid_t h = 0;
    if (probe_posix(g1, F_RDLCK, 0, 1, &h) != F_WRLCK || h != me) _exit(31);
    if (probe_posix(g1, F_RDLCK, 10, 40, NULL) != F_UNLCK) _exit(32);
    if (probe_posix(g1, F_WRLCK, 100000, 1, &h) != F_RDLCK || h != me) _exit(33);
    if (probe_posix(g1, F_WRLCK, 55, 1, &h) != F_RDLCK || h != c) _exit(34);
    if (flock(g2, LOCK_SH | LOCK_NB) == 0 || errno != EWOULDBLOCK) _exit(35);
    if (flock(g3, LOCK_SH | LOCK_NB) != 0) _exit(36);
    flock(g3, LOCK_UN);
    if (flock(g3, LOCK_EX | LOCK_NB) == 0) _exit(37);
    struct flock q = {.l_type = F_RDLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 100};
    if (fcntl(g4, F_OFD_GETLK, &q) || q.l_type != F_WRLCK || q.l_start != 5 || q.l_len != 5) _exit(38);
    _exit(0);
  }
  int pr = reap(prober);
  CHECK(pr == 0, "lock probe failed at step %d", pr);
  go_children();
  CHECK(reap(c) == 0, "child");
  return 0;
}

/* signalfd00: a signalfd for a blocked signal that is pending. */
static int m_signalfd00(void) {
  sigset_t m;
  sigemptyset(&m);
  sigaddset(&m, SIGUSR1);
  sigaddset(&m, SIGRTMIN + 1);
  SETUP(sigprocmask(SIG_BLOCK, &m, NULL) == 0);
  int fd = signalfd(-1, &m, SFD_NONBLOCK | SFD_CLOEXEC);
  SETUP(fd >= 0);
  union sigval sv = {.sival_int = 4242};
  SETUP(kill(getpid(), SIGUSR1) == 0 && sigqueue(getpid(), SIGRTMIN + 1, sv) == 0);
  ready_and_wait();
  CHECK(fcntl(fd, F_GETFD) & FD_CLOEXEC, "cloexec");
  struct signalfd_siginfo si;
  CHECK(read(fd, &si, sizeof si) == sizeof si && si.ssi_signo == SIGUSR1, "first %d", si.ssi_signo);
  CHECK(read(fd, &si, sizeof si) == sizeof si && si.ssi_signo == (unsigned)SIGRTMIN + 1 &&
            si.ssi_int == 4242, "rt signal %d value %d", si.ssi_signo, si.ssi_int);
  CHECK(read(fd, &si, sizeof si) < 0 && errno == EAGAIN, "nonblocking, empty");
  CHECK(kill(getpid(), SIGUSR1) == 0 && read(fd, &si, sizeof si) == sizeof si, "mask kept");
  return 0;
}

/* epoll01: an epoll set watching another epoll set that watches a pipe. */
static int m_epoll01(void) {
  int p[2];
  SETUP(pipe(p) == 0);
  int inner = epoll_create1(0), outer = epoll_create1(EPOLL_CLOEXEC);
  struct epoll_event e = {.events = EPOLLIN, .data.u64 = 0x1122334455667788ull};
  SETUP(epoll_ctl(inner, EPOLL_CTL_ADD, p[0], &e) == 0);
  struct epoll_event e2 = {.events = EPOLLIN | EPOLLET, .data.u64 = 77};
  SETUP(epoll_ctl(outer, EPOLL_CTL_ADD, inner, &e2) == 0);
  ready_and_wait();
  struct epoll_event got;
  CHECK(epoll_wait(outer, &got, 1, 0) == 0, "nothing ready yet");
  CHECK(write(p[1], "x", 1) == 1, "write");
  CHECK(epoll_wait(outer, &got, 1, 1000) == 1 && got.data.u64 == 77, "outer");
  CHECK(epoll_wait(inner, &got, 1, 0) == 1 && got.data.u64 == 0x1122334455667788ull, "inner");
  return 0;
}

/* inotify_irmap: an inotify watch on a directory (found again by its inode), events after. */
static int m_inotify_irmap(void) {
  const char* d = path_in("watched");
  SETUP(mkdir(d, 0700) == 0);
  int fd = inotify_init1(IN_NONBLOCK);
  int wd = inotify_add_watch(fd, d, IN_CREATE | IN_DELETE);
  int wd2 = inotify_add_watch(fd, dir, IN_ATTRIB);
  SETUP(fd >= 0 && wd >= 0 && wd2 >= 0);
  ready_and_wait();
  char path[600];
  snprintf(path, sizeof path, "%s/newfile", d);
  int n = open(path, O_CREAT | O_WRONLY, 0600);
  CHECK(n >= 0, "create");
  char buf[4096] __attribute__((aligned(8)));
  ssize_t r = -1;
  for (int i = 0; i < 1000 && r <= 0; i++) {
    r = read(fd, buf, sizeof buf);
    if (r <= 0) usleep(1000);
  }
  struct inotify_event* ev = (void*)buf;
  CHECK(r > 0 && ev->wd == wd && (ev->mask & IN_CREATE) && !strcmp(ev->name, "newfile"),
        "event wd %d mask %x", r > 0 ? ev->wd : -1, r > 0 ? ev->mask : 0);
  return 0;
}

/* pty00..04, tty00: a pty pair with termios settings and data queued both ways; a child whose
 * controlling terminal is the slave. */
static int m_pty(void) {
  int master, slave, dummy = open("/dev/ptmx", O_RDWR | O_NOCTTY);
  SETUP(dummy >= 0 && openpty(&master, &slave, NULL, NULL, NULL) == 0);
  close(dummy); /* a free pts number below ours: restore must still give ours back */
  struct termios t;
  SETUP(tcgetattr(slave, &t) == 0);
  t.c_lflag &= ~(ECHO | ICANON);
  t.c_cc[VMIN] = 1;
  SETUP(tcsetattr(slave, TCSANOW, &t) == 0);
  struct winsize ws = {.ws_row = 33, .ws_col = 111};
  SETUP(ioctl(master, TIOCSWINSZ, &ws) == 0);
  SETUP(write(master, "to-slave", 8) == 8);
  SETUP(write(slave, "to-master\n", 10) == 10); /* ONLCR: the master reads "\r\n" */
  char name[64];
  SETUP(ptsname_r(master, name, sizeof name) == 0);
  go_init();
  int sync[2];
  SETUP(pipe(sync) == 0);
  pid_t c = zfork();
  if (c == 0) {
    close(sync[0]);
    if (setsid() < 0) _exit(2);
    int ct = open(name, O_RDWR);
    if (ct < 0 || ioctl(ct, TIOCSCTTY, 0)) _exit(3);
    close(sync[1]);
    child_wait_go();
    /* Still our controlling terminal, and we lead its foreground group. */
    if (tcgetpgrp(ct) != getpid()) _exit(4);
    if (tcgetsid(ct) != getpid()) _exit(5);
    int tty = open("/dev/tty", O_RDWR);
    if (tty < 0) _exit(6);
    if (write(tty, "from-child", 10) != 10) _exit(7);
    _exit(0);
  }
  close(sync[1]);
  char x;
  SETUP(read(sync[0], &x, 1) == 0);
  ready_and_wait();
  struct termios t2;
  CHECK(tcgetattr(slave, &t2) == 0 && !(t2.c_lflag & (ECHO | ICANON)), "termios lflag %x",
        t2.c_lflag);
  struct winsize ws2;
  CHECK(ioctl(master, TIOCGWINSZ, &ws2) == 0 && ws2.ws_row == 33 && ws2.ws_col == 111, "winsize");
  char buf[32] = {};
  CHECK(read(slave, buf, 8) == 8 && !memcmp(buf, "to-slave", 8), "queued input: %.8s", buf);
  char nm[64];
  CHECK(ptsname_r(master, nm, sizeof nm) == 0 && !strcmp(nm, name), "pts %s, was %s", nm, name);
  CHECK(read_full(master, buf, 11) == 11 && !memcmp(buf, "to-master\r\n", 11),
        "queued output: %.11s", buf);
  go_children();
  CHECK(reap(c) == 0, "child with controlling tty");
  CHECK(read_full(master, buf, 10) == 10 && !memcmp(buf, "from-child", 10), "child output");
  CHECK(write(slave, "out", 3) == 3 && read_full(master, buf, 3) == 3, "output");
  return 0;
}

/* unlink_largefile: an unlinked file open past 2 GiB (sparse), the offset there. */
static int m_unlink_largefile(void) {
  int fd = open(path_in("large"), O_RDWR | O_CREAT | O_LARGEFILE, 0600);
  SETUP(fd >= 0);
  off_t far = (off_t)5 << 30;
  SETUP(pwrite(fd, "head", 4, 0) == 4 && pwrite(fd, "tail", 4, far) == 4);
  SETUP(lseek(fd, far + 2, SEEK_SET) == far + 2 && unlink(path_in("large")) == 0);
  ready_and_wait();
  struct stat st;
  CHECK(fstat(fd, &st) == 0 && st.st_nlink == 0 && st.st_size == far + 4, "size %lld",
        (long long)st.st_size);
  CHECK(lseek(fd, 0, SEEK_CUR) == far + 2, "offset");
  char b[4];
  CHECK(read(fd, b, 2) == 2 && !memcmp(b, "il", 2), "tail");
  CHECK(pread(fd, b, 4, 0) == 4 && !memcmp(b, "head", 4), "head");
  CHECK(pread(fd, b, 4, 1 << 30) == 4 && !b[0] && !b[3], "hole");
  return 0;
}

/* file_append: an O_APPEND description: writes still go to the end. */
static int m_file_append(void) {
  int fd = open(path_in("append"), O_RDWR | O_CREAT | O_APPEND, 0600);
  SETUP(fd >= 0 && write(fd, "12345", 5) == 5 && lseek(fd, 1, SEEK_SET) == 1);
  ready_and_wait();
  CHECK(fcntl(fd, F_GETFL) & O_APPEND, "O_APPEND lost");
  CHECK(lseek(fd, 0, SEEK_CUR) == 1, "offset");
  CHECK(write(fd, "67", 2) == 2, "write");
  char b[8] = {};
  CHECK(pread(fd, b, 8, 0) == 7 && !memcmp(b, "1234567", 7), "appended: %s", b);
  return 0;
}

/* file_attr: an unlinked file written to, with an odd mode (setuid/setgid) and mtime. */
static int m_file_attr(void) {
  const char* p = path_in("attr");
  int fd = open(p, O_RDWR | O_CREAT | O_TRUNC, 0644);
  const size_t n = 1000000;
  char* data = malloc(n);
  fill(data, n, 9);
  SETUP(fd >= 0 && write(fd, data, n) == (ssize_t)n);
  struct timespec ts[2] = {{0, 0}, {123456, 0}};
  SETUP(utimensat(AT_FDCWD, p, ts, 0) == 0 && fchmod(fd, 06604) == 0 && unlink(p) == 0);
  ready_and_wait();
  struct stat st;
  CHECK(fstat(fd, &st) == 0 && (st.st_mode & 07777) == 06604, "mode %o", st.st_mode & 07777);
  CHECK(st.st_mtime == 123456, "mtime %ld", (long)st.st_mtime);
  CHECK(st.st_nlink == 0 && st.st_size == (off_t)n && lseek(fd, 0, SEEK_CUR) == (off_t)n,
        "size/offset");
  memset(data, 0, n);
  CHECK(pread(fd, data, n, 0) == (ssize_t)n && same(data, n, 9), "data");
  CHECK(close(fd) == 0 && unlink(p) < 0 && errno == ENOENT, "the name came back");
  return 0;
}

/* write_read01/02: a file written before the dump, read after (02: through a dup in a child). */
static int m_write_read(void) {
  int fd = open(path_in("wr"), O_RDWR | O_CREAT | O_TRUNC, 0600);
  char d[20000];
  fill(d, sizeof d, 5);
  SETUP(fd >= 0 && write(fd, d, sizeof d) == sizeof d && lseek(fd, 0, SEEK_SET) == 0);
  go_init();
  pid_t c = zfork();
  if (c == 0) {
    child_wait_go();
    char got[10000];
    if (read_full(fd, got, 10000) != 10000 || !same(got, 10000, 5)) _exit(2);
    _exit(0);
  }
  ready_and_wait();
  go_children();
  CHECK(reap(c) == 0, "child read the first half");
  char got[10000];
  CHECK(read_full(fd, got, 10000) == 10000 && !memcmp(got, d + 10000, 10000), "second half");
  return 0;
}

/* cmdlinenv00: argv and the environment as /proc shows them. */
static char** g_argv;
static int g_argc;
static int read_proc(const char* name, char* buf, size_t n) {
  int fd = open(name, O_RDONLY);
  if (fd < 0) return -1;
  int r = (int)read_full(fd, buf, n);
  close(fd);
  return r;
}
static int m_cmdlinenv00(void) {
  SETUP(setenv("FZ_CMDLINENV", "some value = with spaces", 1) == 0);
  char before[4096], envb[65536];
  int n = read_proc("/proc/self/cmdline", before, sizeof before);
  int en = read_proc("/proc/self/environ", envb, sizeof envb);
  SETUP(n > 0 && en >= 0);
  ready_and_wait();
  char after[4096], enva[65536];
  CHECK(read_proc("/proc/self/cmdline", after, sizeof after) == n && !memcmp(before, after, n),
        "cmdline");
  CHECK(read_proc("/proc/self/environ", enva, sizeof enva) == en && !memcmp(envb, enva, en),
        "environ");
  CHECK(!strcmp(getenv("FZ_CMDLINENV"), "some value = with spaces"), "getenv");
  CHECK(g_argc == 4 && !strcmp(g_argv[1], "cmdlinenv00"), "argv");
  return 0;
}

/* vfork00: a child made by vfork that exec'd (the parent resumed) and waits for its parent. */
static int m_vfork00(void) {
  int p[2];
  SETUP(pipe(p) == 0 && fcntl(ready_fd, F_SETFD, FD_CLOEXEC) == 0);
  pid_t c = vfork();
  if (c == 0) {
    /* The child: a shell reading until its stdin is closed. */
    dup2(p[0], 0);
    execl("/bin/sh", "sh", "-c", "read x; test \"$x\" = go", (char*)NULL);
    _exit(99);
  }
  SETUP(c > 0);
  close(p[0]);
  ready_and_wait();
  CHECK(write(p[1], "go\n", 3) == 3, "write");
  CHECK(reap(c) == 0, "vforked child");
  return 0;
}

/* Kinds godwit refuses: the test checks the dump fails naming them and the tree lives on. */
/* fanotify00: a fanotify group (non-blocking) with an inode mark (open and close-write of
 * files in DIR, events on children) and an ignored mask, and a mount mark: after the restore
 * opening a file in DIR makes an event, and the marks are in fdinfo. */
static int m_fanotify(void) {
  int fd = fanotify_init(FAN_CLASS_NOTIF | FAN_NONBLOCK, O_RDONLY);
  SETUP(fd >= 0);
  SETUP(fanotify_mark(fd, FAN_MARK_ADD, FAN_OPEN | FAN_CLOSE_WRITE | FAN_EVENT_ON_CHILD,
                      AT_FDCWD, dir) == 0);
  SETUP(fanotify_mark(fd, FAN_MARK_ADD | FAN_MARK_IGNORED_MASK | FAN_MARK_IGNORED_SURV_MODIFY,
                      FAN_MODIFY, AT_FDCWD, dir) == 0);
  SETUP(fanotify_mark(fd, FAN_MARK_ADD | FAN_MARK_MOUNT, FAN_CLOSE_NOWRITE, AT_FDCWD, "/") == 0);
  SETUP(dup2(fd, 77) == 77 && close(fd) == 0);
  fd = 77;
  char info[4096], line[512];
  snprintf(line, sizeof line, "/proc/self/fdinfo/%d", fd);
  FILE* f = fopen(line, "r");
  SETUP(f != NULL);
  size_t n = fread(info, 1, sizeof info - 1, f);
  info[n] = 0;
  fclose(f);
  /* What the kernel reports, minus nothing: the lines must be the same after the restore. */
  char before[4096];
  snprintf(before, sizeof before, "%s", strstr(info, "fanotify") ? strstr(info, "fanotify") : "");
  char buf[4096];
  while (read(fd, buf, sizeof buf) > 0) {
  }
  ready_and_wait();
  f = fopen(line, "r");
  CHECK(f != NULL, "fdinfo");
  n = fread(info, 1, sizeof info - 1, f);
  info[n] = 0;
  fclose(f);
  CHECK(strstr(info, "fanotify") && !strcmp(strstr(info, "fanotify"), before),
        "fdinfo now:\n%s\nbefore:\n%s", info, before);
  CHECK(fcntl(fd, F_GETFL) & O_NONBLOCK, "non-blocking");
  while (read(fd, buf, sizeof buf) > 0) {
  }
  int t = open(path_in("watched"), O_WRONLY | O_CREAT, 0600);
  CHECK(t >= 0, "create");
  close(t);
  ssize_t r = read(fd, buf, sizeof buf);
  CHECK(r >= (ssize_t)sizeof(struct fanotify_event_metadata), "no event (%zd)", r);
  struct fanotify_event_metadata* md = (struct fanotify_event_metadata*)buf;
  unsigned long long seen = 0;
  for (; FAN_EVENT_OK(md, r); md = FAN_EVENT_NEXT(md, r)) {
    seen |= md->mask;
    if (md->fd >= 0) close(md->fd);
  }
  CHECK(seen & FAN_OPEN, "events %#llx", seen);
  return 0;
}
static int m_packet(void) {
  int fd = socket(AF_PACKET, SOCK_RAW, htons(ETH_P_ALL));
  SETUP(fd >= 0 && dup2(fd, 77) == 77 && close(fd) == 0);
  fd = 77;
  ready_and_wait();
  CHECK(fcntl(fd, F_GETFD) >= 0, "fd");
  return 0;
}

/* tty00: a child leads a session whose controlling terminal is a pty slave; when the parent
 * closes the master after restore, the kernel hangs the terminal up and the child gets SIGHUP. */
static int m_tty00(void) {
  char name[64];
  int master = open_pty(name, sizeof name);
  int sync[2];
  SETUP(pipe(sync) == 0);
  pid_t c = zfork();
  if (c == 0) {
    close(sync[0]);
    close(master);
    ctty_leader_until_hup(name, 1, sync[1]);
  }
  close(sync[1]);
  char x;
  SETUP(read(sync[0], &x, 1) == 0);
  ready_and_wait();
  CHECK(close(master) == 0, "close master");
  int r = reap(c);
  CHECK(r == 0, "the session leader got no SIGHUP (exit %d)", r);
  return 0;
}

/* sk-unix01 (CRIU's): unix sockets whose names were unlinked and whose directories were removed:
 * dgram sockets connected to a bound one whose file is gone (the name then bound again by
 * another), a dgram pair both bound to one unlinked name, accepted stream connections of a
 * listener whose file and directory are gone. */
static int m_sk_unix01(void) {
  char dg[512], st[512];
  snprintf(dg, sizeof dg, "%s/dg", dir);
  snprintf(st, sizeof st, "%s/st", dir);
  SETUP(mkdir(dg, 0755) == 0 && mkdir(st, 0755) == 0);
  struct sockaddr_un a;
  char p[600];
  snprintf(p, sizeof p, "%s/sk-dt", dg);
  socklen_t al = un_addr(&a, p);
  int d0 = socket(AF_UNIX, SOCK_DGRAM, 0);
  SETUP(bind(d0, (void*)&a, al) == 0);
  int d1 = socket(AF_UNIX, SOCK_DGRAM, 0);
  SETUP(connect(d1, (void*)&a, al) == 0 && unlink(p) == 0);
  int d2 = socket(AF_UNIX, SOCK_DGRAM, 0);
  SETUP(bind(d2, (void*)&a, al) == 0);
  int d3 = socket(AF_UNIX, SOCK_DGRAM, 0);
  SETUP(connect(d3, (void*)&a, al) == 0 && unlink(p) == 0);
  int dp[2];
  SETUP(socketpair(AF_UNIX, SOCK_DGRAM, 0, dp) == 0);
  snprintf(p, sizeof p, "%s/sk-dtp", dg);
  al = un_addr(&a, p);
  SETUP(bind(dp[0], (void*)&a, al) == 0 && unlink(p) == 0);
  SETUP(bind(dp[1], (void*)&a, al) == 0 && unlink(p) == 0);
  SETUP(rmdir(dg) == 0);
  snprintf(p, sizeof p, "%s/sk-st", st);
  al = un_addr(&a, p);
  int l = socket(AF_UNIX, SOCK_STREAM, 0);
  SETUP(bind(l, (void*)&a, al) == 0 && listen(l, 16) == 0);
  int c1 = socket(AF_UNIX, SOCK_STREAM, 0);
  SETUP(connect(c1, (void*)&a, al) == 0);
  int s1 = accept(l, NULL, NULL);
  int c2 = socket(AF_UNIX, SOCK_STREAM, 0);
  SETUP(s1 >= 0 && connect(c2, (void*)&a, al) == 0);
  int s2 = accept(l, NULL, NULL);
  SETUP(s2 >= 0 && unlink(p) == 0 && rmdir(st) == 0);
  ready_and_wait();
  int v = 0;
  CHECK(write(d1, "\1", 1) == 1 && read(d0, &v, 1) == 1 && v == 1, "dgram to the first unlinked");
  CHECK(write(d3, "\3", 1) == 1 && read(d2, &v, 1) == 1 && v == 3, "dgram to the second");
  CHECK(write(dp[1], "\10", 1) == 1 && read(dp[0], &v, 1) == 1 && v == 8, "dgram pair");
  CHECK(write(s1, "\5", 1) == 1 && read(c1, &v, 1) == 1 && v == 5, "stream 1");
  CHECK(write(s2, "\7", 1) == 1 && read(c2, &v, 1) == 1 && v == 7, "stream 2");
  CHECK(access(dg, F_OK) < 0 && errno == ENOENT, "directory %s came back", dg);
  CHECK(access(st, F_OK) < 0 && errno == ENOENT, "directory %s came back", st);
  return 0;
}

/* file_leases00 / file_locks05: a read lease on one description; a flock held by a description
 * parent and child share (fork), which the child's unlock drops for both. */
static int m_file_leases(void) {
  int fd = open(path_in("leased"), O_RDONLY | O_CREAT, 0600);
  SETUP(fd >= 0 && fcntl(fd, F_SETLEASE, F_RDLCK) == 0);
  int sh = open(path_in("flocked"), O_RDWR | O_CREAT, 0600);
  SETUP(sh >= 0 && flock(sh, LOCK_EX) == 0);
  go_init();
  pid_t c = zfork();
  if (c == 0) {
    child_wait_go();
    if (flock(sh, LOCK_UN) != 0) _exit(2);
    _exit(0);
  }
  ready_and_wait();
  CHECK(fcntl(fd, F_GETLEASE) == F_RDLCK, "lease %d", fcntl(fd, F_GETLEASE));
  int probe = open(path_in("flocked"), O_RDWR);
  CHECK(probe >= 0 && flock(probe, LOCK_EX | LOCK_NB) < 0 && errno == EWOULDBLOCK, "flock held");
  go_children();
  CHECK(reap(c) == 0, "child unlocked");
  CHECK(flock(probe, LOCK_EX | LOCK_NB) == 0, "the shared description's lock is gone for both");
  return 0;
}

int main(int argc, char** argv) {
  if (argc < 4) return 119;
  g_argc = argc;
  g_argv = argv;
  const char* mode = argv[1];
  ready_fd = atoi(argv[2]);
  dir = argv[3];
  sigemptyset(&usr2_set);
  sigaddset(&usr2_set, SIGUSR2);
  SETUP(sigprocmask(SIG_BLOCK, &usr2_set, NULL) == 0);
  struct {
    const char* name;
    int (*fn)(void);
  } modes[] = {
      {"pipe00", m_pipe00}, {"pipe01", m_pipe01}, {"pipe02", m_pipe02},
      {"pipe_direct", m_pipe_direct}, {"fifo-rowo-pair", m_fifo_rowo_pair},
      {"fifo_wronly", m_fifo_wronly}, {"unlink_fifo", m_unlink_fifo},
      {"sk-unix-rel", m_sk_unix_rel}, {"sk-unix-states", m_sk_unix_states},
      {"socket_queues", m_socket_queues}, {"sockets00", m_sockets00}, {"sockets01", m_sockets01},
      {"sockets02", m_sockets02}, {"sock_opts", m_sock_opts},
      {"deleted_unix_sock", m_deleted_unix_sock}, {"tcp_halfclosed", m_tcp_halfclosed},
      {"udp_corked", m_udp_corked}, {"file_fown", m_file_fown}, {"fd", m_fd},
      {"fdt_shared", m_fdt_shared}, {"file_locks", m_file_locks}, {"signalfd00", m_signalfd00},
      {"epoll01", m_epoll01}, {"inotify_irmap", m_inotify_irmap}, {"pty", m_pty},
      {"unlink_largefile", m_unlink_largefile}, {"file_append", m_file_append},
      {"file_attr", m_file_attr}, {"write_read", m_write_read}, {"cmdlinenv00", m_cmdlinenv00},
      {"vfork00", m_vfork00}, {"tty00", m_tty00}, {"file_leases", m_file_leases}, {"sk-unix01", m_sk_unix01}, {"fanotify", m_fanotify}, {"packet", m_packet},
  };
  if (!strcmp(mode, "sk-unix-pending-data")) return pending_data = 1, m_sk_unix_states();
  for (size_t i = 0; i < sizeof modes / sizeof modes[0]; ++i)
    if (!strcmp(mode, modes[i].name)) return modes[i].fn();
  fprintf(stderr, "z_files: unknown mode %s\n", mode);
  return 118;
}
