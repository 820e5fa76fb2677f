/* zdtm-style helpers for CRIU zdtm static tests issue 11 listed as "mechanism present,
 * unverified" (own code; each test's .c says what state to set up and what to check): z_port
 * MODE READY_FD DIR, the protocol of zdtm_helper.h. Run by tests/zdtm_port_test.cc. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <linux/capability.h>
#include <time.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "zdtm_helper.h"

/* ---- TCP states (socket-tcp{,6,4v6}-{fin-wait2,close-wait,last-ack,closing}) ----
 * The tree's end of a connection in the state, the peer a process outside the tree (a grandchild
 * its parent left: reparented to the test, a subreaper), which also holds a control connection.
 * Each mode runs the three families at once: v4 (server and client AF_INET), v6, and v4 clients
 * of a v6 server (4v6). */
static int tcp_state_of(int fd) {
  struct tcp_info ti;
  socklen_t len = sizeof ti;
  return getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) ? -1 : ti.tcpi_state;
}
/* A listener on the loopback (v4) or on [::] taking v4 too (v6); its port in *port. */
static int tcp_listener(int family, int* port) {
  int l = socket(family, SOCK_STREAM, 0), off = 0;
  if (l < 0) return -1;
  union {
    struct sockaddr sa;
    struct sockaddr_in v4;
    struct sockaddr_in6 v6;
  } a = {0};
  socklen_t len;
  if (family == AF_INET) {
    a.v4.sin_family = AF_INET;
    a.v4.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    len = sizeof a.v4;
  } else {
    a.v6.sin6_family = AF_INET6;
    a.v6.sin6_addr = in6addr_any;
    len = sizeof a.v6;
    if (setsockopt(l, IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof off)) return -1;
  }
  if (bind(l, &a.sa, len) || getsockname(l, &a.sa, &len) || listen(l, 4)) return -1;
  *port = ntohs(family == AF_INET ? a.v4.sin_port : a.v6.sin6_port);
  return l;
}
static int tcp_client(int family, int port) {
  int c = socket(family, SOCK_STREAM, 0);
  if (c < 0) return -1;
  int r;
  if (family == AF_INET) {
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    r = connect(c, (struct sockaddr*)&a, sizeof a);
  } else {
    struct sockaddr_in6 a = {.sin6_family = AF_INET6, .sin6_port = htons(port),
                             .sin6_addr = in6addr_loopback};
    r = connect(c, (struct sockaddr*)&a, sizeof a);
  }
  return r == 0 ? c : -1;
}
/* Reads to EOF; the bytes read, -1 on an error. */
static int drain(int fd) {
  char buf[4096];
  int size = 0;
  for (ssize_t n; (n = read(fd, buf, sizeof buf)) != 0; size += (int)n)
    if (n < 0) return -1;
  return size;
}
static int wait_state(int fd, int st) {
  for (int i = 0; i < 2000 && tcp_state_of(fd) != st; i++) usleep(1000);
  return tcp_state_of(fd) == st;
}
/* Forks a process outside the tree: 0 in it, 1 in the tree. It keeps none of the tree's fds
 * but `keep` (-1: none): a copy would keep the tree's sockets alive after the dump killed the
 * tree. It ends within two minutes whatever happens (a failed test must not wait for it). */
static int outside(int keep) {
  pid_t mid = zfork();
  if (mid == 0) {
    if (fork() != 0) _exit(0);
    if (keep < 0) {
      syscall(SYS_close_range, 3, ~0U, 0);
    } else {
      if (keep > 3) syscall(SYS_close_range, 3, keep - 1, 0);
      syscall(SYS_close_range, keep + 1, ~0U, 0);
    }
    alarm(120);
    return 0;
  }
  SETUP(reap(mid) == 0);
  return 1;
}

enum tcp_kind { FIN_WAIT2, CLOSE_WAIT, LAST_ACK, CLOSING };
static const char tcp_msg[] = "Hello World!";
static const int tcp_want_state[] = {TCP_FIN_WAIT2, TCP_CLOSE_WAIT, TCP_LAST_ACK, TCP_CLOSING};

/* The peer's part (outside the tree): mirrors CRIU's tests' external process. */
static void tcp_peer(enum tcp_kind k, int family, int port) {
  int fd = tcp_client(family, port);
  if (fd < 0) _exit(1);
  if (k == FIN_WAIT2 && write(fd, tcp_msg, 2) != 2) _exit(2);
  int ctl = tcp_client(family, port);
  if (ctl < 0) _exit(3);
  int size = 0;
  char c;
  if (k == CLOSE_WAIT || k == LAST_ACK) {
    if (read(ctl, &size, sizeof size) != sizeof size) _exit(4);
    if (shutdown(fd, SHUT_WR)) _exit(5);
    if (write(ctl, &size, sizeof size) != sizeof size) _exit(6);
  } else if (k == CLOSING) {
    size = fill_send(fd);
    if (size <= 0 || shutdown(fd, SHUT_WR)) _exit(7);
    if (write(ctl, &size, sizeof size) != sizeof size) _exit(8);
  }
  /* Checkpoint and restore happen here: the tree shuts ctl when it is back. */
  if (read(ctl, &c, 1) != 0) _exit(9);
  if (k == FIN_WAIT2) {
    if (write(fd, tcp_msg + 2, sizeof tcp_msg - 2) != sizeof tcp_msg - 2) _exit(10);
    if (shutdown(fd, SHUT_WR)) _exit(11);
    size = drain(fd);
  } else if (k == CLOSE_WAIT) {
    char buf[64];
    ssize_t n = recv(fd, buf, sizeof buf, MSG_WAITALL);
    if (n != sizeof tcp_msg || memcmp(buf, tcp_msg, sizeof tcp_msg)) _exit(12);
    size = 0;
  } else {
    size = drain(fd);
  }
  if (size < 0 || write(ctl, &size, sizeof size) != sizeof size) _exit(13);
  _exit(0);
}

struct tcp_conn {
  int fd, ctl, sent;
  const char* name;
};
static void tcp_setup(enum tcp_kind k, int srv_family, int cli_family, struct tcp_conn* c) {
  int port, l = tcp_listener(srv_family, &port);
  SETUP(l >= 0);
  if (!outside(-1)) {
    tcp_peer(k, cli_family, port);
  }
  c->fd = accept(l, NULL, NULL);
  c->ctl = accept(l, NULL, NULL);
  SETUP(c->fd >= 0 && c->ctl >= 0);
  close(l);
  c->sent = 0;
  int size = 0;
  if (k == FIN_WAIT2) {
    SETUP(shutdown(c->fd, SHUT_WR) == 0);
  } else if (k == CLOSE_WAIT || k == LAST_ACK) {
    if (k == LAST_ACK) SETUP((c->sent = fill_send(c->fd)) > 0);
    SETUP(write(c->ctl, &size, sizeof size) == sizeof size);
    SETUP(read(c->ctl, &size, sizeof size) == sizeof size);
    SETUP(wait_state(c->fd, TCP_CLOSE_WAIT));
    if (k == LAST_ACK) SETUP(shutdown(c->fd, SHUT_WR) == 0);
  } else {
    SETUP((c->sent = fill_send(c->fd)) > 0 && shutdown(c->fd, SHUT_WR) == 0);
    SETUP(read(c->ctl, &size, sizeof size) == sizeof size);
    SETUP(drain(c->fd) == size);
  }
  SETUP(wait_state(c->fd, tcp_want_state[k]));
}
static void tcp_check(enum tcp_kind k, struct tcp_conn* c) {
  int st = tcp_state_of(c->fd);
  CHECK(st == tcp_want_state[k], "%s: restored in state %d, want %d", c->name, st,
        tcp_want_state[k]);
  CHECK(shutdown(c->ctl, SHUT_WR) == 0, "%s: shutdown ctl", c->name);
  if (k == FIN_WAIT2) {
    char buf[64];
    ssize_t n = recv(c->fd, buf, sizeof buf, MSG_WAITALL);
    CHECK(n == sizeof tcp_msg && !memcmp(buf, tcp_msg, sizeof tcp_msg), "%s: the peer's message "
          "(%zd bytes)", c->name, n);
  } else if (k == CLOSE_WAIT) {
    CHECK(write(c->fd, tcp_msg, sizeof tcp_msg) == sizeof tcp_msg, "%s: write", c->name);
    CHECK(shutdown(c->fd, SHUT_WR) == 0, "%s: shutdown", c->name);
    int got = drain(c->fd);
    CHECK(got == 0, "%s: read %d bytes after the peer's FIN", c->name, got);
  } else {
    int got = drain(c->fd);
    CHECK(got == 0, "%s: read %d bytes after the peer's FIN", c->name, got);
  }
  int got = -1;
  CHECK(read(c->ctl, &got, sizeof got) == sizeof got, "%s: the peer's count", c->name);
  CHECK(got == c->sent, "%s: the peer got %d of %d bytes", c->name, got, c->sent);
}
static int tcp_states(enum tcp_kind k) {
  struct tcp_conn c[3] = {{.name = "v4"}, {.name = "v6"}, {.name = "4v6"}};
  tcp_setup(k, AF_INET, AF_INET, &c[0]);
  tcp_setup(k, AF_INET6, AF_INET6, &c[1]);
  tcp_setup(k, AF_INET6, AF_INET, &c[2]);
  ready_and_wait();
  for (int i = 0; i < 3; i++) tcp_check(k, &c[i]);
  return 0;
}
static int m_tcp_fin_wait2(void) { return tcp_states(FIN_WAIT2); }
static int m_tcp_close_wait(void) { return tcp_states(CLOSE_WAIT); }
static int m_tcp_last_ack(void) { return tcp_states(LAST_ACK); }
static int m_tcp_closing(void) { return tcp_states(CLOSING); }

/* socket-tcp-closed, socket-tcp-closed-last-ack: a loopback pair both ends of which shut their
 * writes: the client's socket closed (its peer's FIN received; TIME_WAIT is the kernel's), the
 * server's closed too, or (last_ack) in LAST_ACK: an nftables rule (table DIR/nft names) drops
 * the pure acks that come to the server's port (CRIU's test drops all: it also drops the FIN a
 * restore makes up as the client's), so its FIN is never acked until the check removes it.
 * Reads see EOF, writes fail, SO_PEERNAME and getsockname are as they were. */
static int nft(const char* fmt, int a, int b) {
  char cmd[512], c2[256];
  snprintf(c2, sizeof c2, fmt, a, b);
  snprintf(cmd, sizeof cmd, "nft '%s' >/dev/null 2>&1", c2);
  return system(cmd) == 0 ? 0 : -1;
}
static int tcp_closed(int last_ack) {
  int port, l = tcp_listener(AF_INET, &port);
  SETUP(l >= 0);
  int clt = tcp_client(AF_INET, port), fd = accept(l, NULL, NULL);
  SETUP(clt >= 0 && fd >= 0);
  close(l);
  SETUP(shutdown(clt, SHUT_WR) == 0 && wait_state(fd, TCP_CLOSE_WAIT));
  if (last_ack) {
    FILE* rec = fopen(path_in("nft"), "w");
    SETUP(rec != NULL);
    fprintf(rec, "gwzport%d\n", getpid());
    fclose(rec);
    SETUP(nft("add table inet gwzport%d", getpid(), 0) == 0);
    SETUP(nft("add chain inet gwzport%d in { type filter hook input priority 0; }", getpid(),
              0) == 0);
    char rule[160];
    snprintf(rule, sizeof rule,
             "add rule inet gwzport%%d in tcp dport %d tcp flags & (fin|syn|rst) == 0 drop", port);
    SETUP(nft(rule, getpid(), 0) == 0);
  }
  SETUP(shutdown(fd, SHUT_WR) == 0);
  SETUP(wait_state(fd, last_ack ? TCP_LAST_ACK : TCP_CLOSE) && wait_state(clt, TCP_CLOSE));
  struct sockaddr_in peer, self;
  socklen_t len = sizeof peer;
  SETUP(getsockopt(clt, SOL_SOCKET, SO_PEERNAME, &peer, &len) == 0);
  len = sizeof self;
  SETUP(getsockname(clt, (struct sockaddr*)&self, &len) == 0);
  ready_and_wait();
  if (last_ack) CHECK(nft("delete table inet gwzport%d", getpid(), 0) == 0, "remove the rule");
  char c = 5;
  CHECK(read(fd, &c, 1) == 0, "server read: not EOF");
  CHECK(read(clt, &c, 1) == 0, "client read: not EOF");
  signal(SIGPIPE, SIG_IGN);
  CHECK(write(clt, &c, 1) == -1, "client write succeeded");
  CHECK(write(fd, &c, 1) == -1, "server write succeeded");
  struct sockaddr_in a;
  len = sizeof a;
  CHECK(getsockopt(clt, SOL_SOCKET, SO_PEERNAME, &a, &len) == 0 && !memcmp(&a, &peer, sizeof a),
        "client SO_PEERNAME");
  len = sizeof a;
  CHECK(getsockname(clt, (struct sockaddr*)&a, &len) == 0 && !memcmp(&a, &self, sizeof a),
        "client address");
  return 0;
}
static int m_tcp_closed(void) { return tcp_closed(0); }
static int m_tcp_closed_last_ack(void) { return tcp_closed(1); }

/* socket-tcp-reseted: a connection the server end of which was reset while "asd" sat unread in
 * its receive queue (an nftables rule answered the client's packets with resets; removed before
 * the dump). Restored: the data reads back, a write fails. */
static int m_tcp_reseted(void) {
  int port, l = tcp_listener(AF_INET, &port);
  SETUP(l >= 0);
  int clt = tcp_client(AF_INET, port), fd = accept(l, NULL, NULL);
  SETUP(clt >= 0 && fd >= 0);
  SETUP(write(clt, "asd", 3) == 3);
  FILE* rec = fopen(path_in("nft"), "w");
  SETUP(rec != NULL);
  fprintf(rec, "gwzport%d\n", getpid());
  fclose(rec);
  SETUP(nft("add table inet gwzport%d", getpid(), 0) == 0);
  SETUP(nft("add chain inet gwzport%d in { type filter hook input priority 0; }", getpid(),
            0) == 0);
  char rule[160];
  snprintf(rule, sizeof rule, "add rule inet gwzport%%d in tcp dport %d reject with tcp reset",
           port);
  SETUP(nft(rule, getpid(), 0) == 0);
  SETUP(write(fd, "asdas", 5) == 5);
  SETUP(wait_state(clt, TCP_CLOSE));
  SETUP(nft("delete table inet gwzport%d", getpid(), 0) == 0);
  /* The server retransmits to a port nobody has now: a reset. */
  for (int i = 0; i < 10000 && tcp_state_of(fd) != TCP_CLOSE; i++) usleep(1000);
  SETUP(tcp_state_of(fd) == TCP_CLOSE);
  ready_and_wait();
  char buf[10];
  ssize_t n = read(fd, buf, sizeof buf);
  CHECK(n == 3 && !memcmp(buf, "asd", 3), "read %zd bytes", n);
  signal(SIGPIPE, SIG_IGN);
  CHECK(write(fd, buf, 3) == -1, "a write to the reset socket succeeded");
  return 0;
}

/* socket-tcp-reuseport: two listeners share a port (SO_REUSEPORT), one of them then without it;
 * an accepted connection. Restored: the options as they were, and three more connections are
 * accepted and carry data. */
static int reuse_listener(int* port) {
  int l = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(*port),
                          .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t len = sizeof a;
  if (l < 0 || setsockopt(l, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one)) return -1;
  if (bind(l, (struct sockaddr*)&a, len) || listen(l, 4) ||
      getsockname(l, (struct sockaddr*)&a, &len))
    return -1;
  *port = ntohs(a.sin_port);
  return l;
}
static int accept_either(int a, int b) {
  struct pollfd p[2] = {{a, POLLIN, 0}, {b, POLLIN, 0}};
  if (poll(p, 2, 10000) <= 0) return -1;
  return accept(p[0].revents ? a : b, NULL, NULL);
}
static int m_tcp_reuseport(void) {
  int port = 0, no = 0;
  int s1 = reuse_listener(&port), s2 = reuse_listener(&port);
  SETUP(s1 >= 0 && s2 >= 0);
  SETUP(setsockopt(s1, SOL_SOCKET, SO_REUSEPORT, &no, sizeof no) == 0);
  int clt = tcp_client(AF_INET, port), fd = accept_either(s1, s2);
  SETUP(clt >= 0 && fd >= 0);
  ready_and_wait();
  int v = -1;
  socklen_t len = sizeof v;
  CHECK(getsockopt(s1, SOL_SOCKET, SO_REUSEPORT, &v, &len) == 0 && v == 0, "s1 SO_REUSEPORT %d", v);
  CHECK(getsockopt(s2, SOL_SOCKET, SO_REUSEPORT, &v, &len) == 0 && v == 1, "s2 SO_REUSEPORT %d", v);
  for (int i = 0; i < 3; i++) {
    char out[4096], in[4096];
    fill(out, sizeof out, i);
    CHECK(write(fd, out, sizeof out) == sizeof out, "write %d", i);
    CHECK(recv(clt, in, sizeof in, MSG_WAITALL) == sizeof in && same(in, sizeof in, i), "read %d",
          i);
    close(clt);
    close(fd);
    clt = tcp_client(AF_INET, port);
    CHECK(clt >= 0, "connect %d", i);
    fd = accept_either(s1, s2);
    CHECK(fd >= 0, "accept %d", i);
    int fl = fcntl(fd, F_GETFL);
    fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
  }
  return 0;
}

/* ---- Sockets ---- */

/* sock_opts02 (SO_BUF_LOCK 0..3 on TCP sockets) and socket_udp-broadcast (SO_BROADCAST). */
#ifndef SO_BUF_LOCK
#define SO_BUF_LOCK 72
#endif
static int m_sock_opts02(void) {
  int sk[4];
  for (int i = 0; i < 4; i++) {
    sk[i] = socket(AF_INET, SOCK_STREAM, IPPROTO_TCP);
    SETUP(sk[i] >= 0 && setsockopt(sk[i], SOL_SOCKET, SO_BUF_LOCK, &i, sizeof i) == 0);
  }
  int u = socket(AF_INET, SOCK_DGRAM, 0), one = 1;
  SETUP(u >= 0 && setsockopt(u, SOL_SOCKET, SO_BROADCAST, &one, sizeof one) == 0);
  ready_and_wait();
  for (int i = 0; i < 4; i++) {
    int v = -1;
    socklen_t len = sizeof v;
    CHECK(getsockopt(sk[i], SOL_SOCKET, SO_BUF_LOCK, &v, &len) == 0 && v == i,
          "SO_BUF_LOCK %d, was %d", v, i);
  }
  int v = 0;
  socklen_t len = sizeof v;
  CHECK(getsockopt(u, SOL_SOCKET, SO_BROADCAST, &v, &len) == 0 && v == 1, "SO_BROADCAST %d", v);
  return 0;
}

/* UDP datagrams queued with their senders: a server reads each datagram's sender with
 * recvfrom and answers there, so the restored queue must keep them (a sender bound to another
 * local address, 127.0.0.9, and closed before the dump: its address is free again). */
static int m_udp_senders(void) {
  int srv = socket(AF_INET, SOCK_DGRAM, 0), c = socket(AF_INET, SOCK_DGRAM, 0);
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  SETUP(srv >= 0 && c >= 0 && bind(srv, (void*)&sa, sizeof sa) == 0);
  socklen_t l = sizeof sa;
  SETUP(getsockname(srv, (void*)&sa, &l) == 0);
  struct sockaddr_in from = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(0x7f000009)};
  SETUP(bind(c, (void*)&from, sizeof from) == 0);
  l = sizeof from;
  SETUP(getsockname(c, (void*)&from, &l) == 0);
  SETUP(sendto(c, "who", 3, 0, (void*)&sa, sizeof sa) == 3);
  SETUP(close(c) == 0);
  ready_and_wait();
  char buf[8];
  struct sockaddr_in got = {0};
  l = sizeof got;
  CHECK(recvfrom(srv, buf, sizeof buf, MSG_DONTWAIT, (void*)&got, &l) == 3 &&
            !memcmp(buf, "who", 3),
        "the queued datagram");
  CHECK(got.sin_addr.s_addr == from.sin_addr.s_addr && got.sin_port == from.sin_port,
        "its sender %#x:%d, was %#x:%d", ntohl(got.sin_addr.s_addr), ntohs(got.sin_port),
        ntohl(from.sin_addr.s_addr), ntohs(from.sin_port));
  return 0;
}

/* socket-ext: a datagram socket connected to a socket bound by a process outside the tree.
 * Restored: still connected to it (the name is unlinked first: the connection is to the
 * socket, not the name); the datagram reaches the outside process. */
static int m_socket_ext(void) {
  struct sockaddr_un a = {.sun_family = AF_UNIX};
  snprintf(a.sun_path, sizeof a.sun_path, "%s", path_in("ext.sock"));
  int p[2];
  SETUP(pipe(p) == 0);
  if (!outside(p[1])) {
    int sk = socket(AF_UNIX, SOCK_DGRAM, 0);
    if (sk < 0 || bind(sk, (struct sockaddr*)&a, sizeof a)) _exit(1);
    if (write(p[1], "r", 1) != 1) _exit(2);
    close(p[1]);
    char c;
    struct pollfd pf = {sk, POLLIN, 0};
    if (poll(&pf, 1, 60000) != 1 || recv(sk, &c, 1, 0) != 1 || c != 'H') _exit(3);
    _exit(0);
  }
  close(p[1]);
  char c;
  SETUP(read(p[0], &c, 1) == 1);
  close(p[0]);
  int sk = socket(AF_UNIX, SOCK_DGRAM, 0);
  SETUP(sk >= 0 && connect(sk, (struct sockaddr*)&a, sizeof a) == 0);
  ready_and_wait();
  unlink(a.sun_path);
  CHECK(send(sk, "H", 1, 0) == 1, "send to the outside socket");
  return 0;
}

/* socket_aio: a glibc aio_read (a helper thread blocked in read) on the client end of a
 * connection whose server is the parent; restored, the server writes and the read completes. */
#include <aio.h>
static int m_socket_aio(void) {
  int port, l = tcp_listener(AF_INET, &port);
  SETUP(l >= 0);
  int p[2];
  SETUP(pipe(p) == 0);
  pid_t c = zfork();
  if (c == 0) {
    close(l);
    int fd = tcp_client(AF_INET, port);
    if (fd < 0) _exit(1);
    static char buf[1024];
    struct aiocb cb = {.aio_fildes = fd, .aio_buf = buf, .aio_nbytes = sizeof buf};
    if (aio_read(&cb)) _exit(2);
    if (write(p[1], "r", 1) != 1) _exit(3);
    const struct aiocb* list[1] = {&cb};
    int e;
    while ((e = aio_error(&cb)) == EINPROGRESS) aio_suspend(list, 1, NULL);
    if (e != 0) _exit(4);
    if (aio_return(&cb) != sizeof buf || !same(buf, sizeof buf, 9)) _exit(5);
    _exit(0);
  }
  int fd = accept(l, NULL, NULL);
  SETUP(fd >= 0);
  close(l);
  char r;
  SETUP(read(p[0], &r, 1) == 1);
  ready_and_wait();
  char buf[1024];
  fill(buf, sizeof buf, 9);
  CHECK(write(fd, buf, sizeof buf) == sizeof buf, "write");
  int st = reap(c);
  CHECK(st == 0, "the child's aio_read ended with %d", st);
  return 0;
}

/* fifo_upon_unix_socket00/01: a datagram socket bound to a name, another connected to it, the
 * name then unlinked and a FIFO made at the same path and opened; (01) the name relative to the
 * cwd, which is then "/". Restored: both the socket pair and the FIFO work. */
static int fifo_upon_unix(int relative) {
  struct sockaddr_un a = {.sun_family = AF_UNIX};
  if (relative) {
    SETUP(chdir(dir) == 0);
    snprintf(a.sun_path, sizeof a.sun_path, "fifo.sock");
  } else {
    snprintf(a.sun_path, sizeof a.sun_path, "%s", path_in("fifo.sock"));
  }
  int s1 = socket(AF_UNIX, SOCK_DGRAM, 0), s2 = socket(AF_UNIX, SOCK_DGRAM, 0);
  SETUP(s1 >= 0 && s2 >= 0 && bind(s1, (struct sockaddr*)&a, sizeof a) == 0);
  SETUP(connect(s2, (struct sockaddr*)&a, sizeof a) == 0);
  SETUP(unlink(a.sun_path) == 0 && mkfifo(a.sun_path, 0666) == 0);
  int f = open(a.sun_path, O_RDWR);
  SETUP(f >= 0);
  if (relative) SETUP(chdir("/") == 0);
  ready_and_wait();
  char c = 7;
  CHECK(write(s2, &c, 1) == 1 && read(s1, &c, 1) == 1 && c == 7, "the socket pair");
  CHECK(write(f, &c, 1) == 1 && read(f, &c, 1) == 1 && c == 7, "the FIFO");
  return 0;
}
static int m_fifo_upon_unix00(void) { return fifo_upon_unix(0); }
static int m_fifo_upon_unix01(void) { return fifo_upon_unix(1); }

/* packet_sock_spkt: SOCK_PACKET sockets, one bound to "lo", one not bound. */
#include <linux/if_ether.h>
static int spkt_bound_to(int sk, const char* dev) {
  struct sockaddr a = {0};
  socklen_t l = sizeof a;
  return getsockname(sk, &a, &l) == 0 && a.sa_family == AF_PACKET && !strcmp(a.sa_data, dev);
}
static int m_packet_spkt(void) {
  int s1 = socket(AF_PACKET, SOCK_PACKET, htons(ETH_P_ALL));
  int s2 = socket(AF_PACKET, SOCK_PACKET, htons(ETH_P_ALL));
  SETUP(s1 >= 0 && s2 >= 0);
  struct sockaddr a = {.sa_family = AF_PACKET};
  strcpy(a.sa_data, "lo");
  SETUP(bind(s1, &a, sizeof a) == 0);
  ready_and_wait();
  CHECK(spkt_bound_to(s1, "lo"), "socket 1 not bound to lo");
  CHECK(spkt_bound_to(s2, ""), "socket 2 bound");
  int t = -1;
  socklen_t tl = sizeof t;
  CHECK(getsockopt(s1, SOL_SOCKET, SO_TYPE, &t, &tl) == 0 && t == SOCK_PACKET, "type %d", t);
  return 0;
}

/* ---- Ghost (deleted) files ---- */

/* ghost_holes_large00/01: an unlinked file of two data blocks around a 1 GiB hole (4 KiB blocks;
 * 01: 1 MiB blocks, over CRIU's default ghost limit: CRIU refuses it, godwit restores it). */
static int ghost_large(size_t blk) {
  const off_t hole = 1LL << 30;
  int fd = open(path_in("ghost_large"), O_RDWR | O_CREAT | O_TRUNC, 0644);
  SETUP(fd >= 0 && unlink(path_in("ghost_large")) == 0);
  char* b = malloc(blk);
  SETUP(b != NULL);
  fill(b, blk, 1);
  SETUP(pwrite(fd, b, blk, 0) == (ssize_t)blk);
  fill(b, blk, 2);
  SETUP(pwrite(fd, b, blk, blk + hole) == (ssize_t)blk);
  SETUP(ftruncate(fd, 2 * blk + hole) == 0);
  int holes = lseek(fd, 0, SEEK_HOLE) == (off_t)blk;
  ready_and_wait();
  struct stat st;
  CHECK(fstat(fd, &st) == 0 && st.st_size == (off_t)(2 * blk + hole), "size %lld",
        (long long)st.st_size);
  CHECK(st.st_blocks * 512 == (blkcnt_t)(2 * blk), "%lld bytes allocated",
        (long long)st.st_blocks * 512);
  CHECK(pread(fd, b, blk, 0) == (ssize_t)blk && same(b, blk, 1), "first block");
  CHECK(pread(fd, b, blk, blk + hole) == (ssize_t)blk && same(b, blk, 2), "second block");
  if (holes) {
    CHECK(lseek(fd, 0, SEEK_HOLE) == (off_t)blk, "the hole's start");
    CHECK(lseek(fd, blk, SEEK_DATA) == (off_t)(blk + hole), "the hole's end");
  }
  return 0;
}
static int m_ghost_holes_large00(void) { return ghost_large(4096); }
static int m_ghost_holes_large01(void) { return ghost_large(1 << 20); }

/* ghost_multi_hole00/01: an unlinked 8 MiB file, every 8 KiB 4 KiB of data then a punched
 * 4 KiB hole (01: the same file, 4 KiB data at odd offsets too: 1024 extents either way). */
static int m_ghost_multi_hole(void) {
  const int size = 8 << 20, step = 8 << 10, blk = 4096;
  int fd = open(path_in("ghost_multi"), O_RDWR | O_CREAT | O_TRUNC, 0644);
  SETUP(fd >= 0 && unlink(path_in("ghost_multi")) == 0);
  char b[4096];
  for (int off = 0; off < size; off += step) {
    fill(b, blk, off / step);
    SETUP(pwrite(fd, b, blk, off) == blk);
    SETUP(fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off + blk, blk) == 0);
  }
  SETUP(ftruncate(fd, size) == 0);
  ready_and_wait();
  struct stat st;
  CHECK(fstat(fd, &st) == 0 && st.st_size == size, "size %lld", (long long)st.st_size);
  for (int off = 0; off < size; off += step) {
    CHECK(pread(fd, b, blk, off) == blk && same(b, blk, off / step), "data at %d", off);
    CHECK(lseek(fd, off, SEEK_HOLE) == off + blk, "no hole at %d", off + blk);
  }
  return 0;
}

/* unlink_fstat04: a file with a name of quotes, backslash, newline and percent in a directory
 * made read-only afterwards, unlinked, written, chmod'ed and chown'ed. Restored: size, mode,
 * owner and data. */
static int m_unlink_fstat04(void) {
  char d[512], f[600];
  snprintf(d, sizeof d, "%s", path_in("ro_dir"));
  snprintf(f, sizeof f, "%s/test\\file'\n\"un%%linkfstat00", d);
  SETUP(mkdir(d, 0700) == 0);
  int fd = open(f, O_RDWR | O_CREAT | O_TRUNC, 0644);
  SETUP(fd >= 0 && chmod(d, 0500) == 0 && unlink(f) == 0);
  char buf[1000];
  fill(buf, sizeof buf, 4);
  SETUP(write(fd, buf, sizeof buf) == sizeof buf);
  SETUP(fchmod(fd, 0645) == 0 && fchown(fd, 1234, 4321) == 0 && lseek(fd, 0, SEEK_SET) == 0);
  ready_and_wait();
  struct stat st;
  CHECK(fstat(fd, &st) == 0 && st.st_size == 1000, "size %lld", (long long)st.st_size);
  CHECK((st.st_mode & 07777) == 0645, "mode %o", st.st_mode);
  CHECK(st.st_uid == 1234 && st.st_gid == 4321, "owner %u:%u", st.st_uid, st.st_gid);
  CHECK(st.st_nlink == 0, "links %lu", (unsigned long)st.st_nlink);
  CHECK(lseek(fd, 0, SEEK_CUR) == 0, "offset");
  CHECK(read(fd, buf, sizeof buf) == sizeof buf && same(buf, sizeof buf, 4), "data");
  chmod(d, 0700);
  return 0;
}

/* unlink_regular00: a file whose open name's directory was removed, the file still linked
 * elsewhere (tmpfs mounted on DIR/mnt; the test unmounts it). Restored: the same file. */
static int m_unlink_regular00(void) {
  char mnt[512], sub[600], fname[700], lname[700];
  snprintf(mnt, sizeof mnt, "%s", path_in("mnt"));
  SETUP(mkdir(mnt, 0777) == 0);
  FILE* rec = fopen(path_in("mounts"), "w");
  SETUP(rec != NULL);
  fprintf(rec, "%s\n", mnt);
  fclose(rec);
  SETUP(mount("none", mnt, "tmpfs", 0, "") == 0);
  snprintf(sub, sizeof sub, "%s/subdir", mnt);
  snprintf(fname, sizeof fname, "%s/testfile", sub);
  snprintf(lname, sizeof lname, "%s/testfile", mnt);
  SETUP(mkdir(sub, 0777) == 0);
  int fd = open(fname, O_RDWR | O_CREAT, 0644);
  SETUP(fd >= 0 && link(fname, lname) == 0 && unlink(fname) == 0 && rmdir(sub) == 0);
  SETUP(write(fd, "Hello!!!111", 12) == 12);
  struct stat was;
  SETUP(stat(lname, &was) == 0);
  ready_and_wait();
  char buf[16] = {0};
  CHECK(pread(fd, buf, 12, 0) == 12 && !strcmp(buf, "Hello!!!111"), "content");
  struct stat now;
  CHECK(fstat(fd, &now) == 0 && now.st_ino == was.st_ino && now.st_dev == was.st_dev,
        "another file (ino %lu, was %lu)", (unsigned long)now.st_ino, (unsigned long)was.st_ino);
  CHECK(stat(lname, &now) == 0 && now.st_nlink == 1, "the other link: %lu links",
        (unsigned long)now.st_nlink);
  close(fd);
  unlink(lname);
  return 0;
}

/* del_standalone_un, del_standalone_un_seqpacket, deleted_standalone_unix: two listeners bound
 * at one path in turn: the first's name moved away, the second bound, the first's name moved
 * back over the second's (so the second's name is a deleted one). Restored: both listeners
 * work, and the path is the first's. */
static int del_standalone(int type) {
  struct sockaddr_un a = {.sun_family = AF_UNIX};
  snprintf(a.sun_path, sizeof a.sun_path, "%s", path_in("sock"));
  int s1 = socket(AF_UNIX, type, 0), s2 = socket(AF_UNIX, type, 0);
  SETUP(s1 >= 0 && s2 >= 0);
  SETUP(bind(s1, (struct sockaddr*)&a, sizeof a) == 0 && listen(s1, 1) == 0);
  SETUP(rename(a.sun_path, path_in("temp")) == 0);
  SETUP(bind(s2, (struct sockaddr*)&a, sizeof a) == 0 && listen(s2, 1) == 0);
  SETUP(rename(path_in("temp"), a.sun_path) == 0);
  struct stat was;
  SETUP(stat(a.sun_path, &was) == 0);
  ready_and_wait();
  int v;
  socklen_t l = sizeof v;
  CHECK(getsockopt(s1, SOL_SOCKET, SO_ACCEPTCONN, &v, &l) == 0 && v == 1, "s1 listens");
  CHECK(getsockopt(s2, SOL_SOCKET, SO_ACCEPTCONN, &v, &l) == 0 && v == 1, "s2 listens");
  struct stat st;
  CHECK(stat(a.sun_path, &st) == 0 && S_ISSOCK(st.st_mode), "%s is gone", a.sun_path);
  /* The name reaches the first listener. */
  int c = socket(AF_UNIX, type, 0);
  CHECK(connect(c, (struct sockaddr*)&a, sizeof a) == 0, "connect");
  struct pollfd pf[2] = {{s1, POLLIN, 0}, {s2, POLLIN, 0}};
  CHECK(poll(pf, 2, 5000) == 1 && pf[0].revents == POLLIN, "the connection went to %s",
        pf[1].revents ? "the second listener" : "none");
  return 0;
}
static int m_del_standalone_un(void) { return del_standalone(SOCK_STREAM); }
static int m_del_standalone_un_seqpacket(void) { return del_standalone(SOCK_SEQPACKET); }

/* mtime_mmap: a file written through a shared mapping (its mtime moved); restored, the mtime is
 * the same. */
static int m_mtime_mmap(void) {
  int fd = open(path_in("mtime"), O_RDWR | O_CREAT, 0666);
  char buf[16384];
  memset(buf, 1, sizeof buf);
  SETUP(fd >= 0 && write(fd, buf, sizeof buf) == sizeof buf);
  struct timespec old[2] = {{.tv_sec = 1000000000}, {.tv_sec = 1000000000}};
  SETUP(futimens(fd, old) == 0);
  char* p = mmap(NULL, sizeof buf, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  SETUP(p != MAP_FAILED);
  for (size_t i = 0; i < sizeof buf; i++) p[i]++;
  SETUP(msync(p, sizeof buf, MS_SYNC) == 0);
  struct stat was;
  SETUP(fstat(fd, &was) == 0 && was.st_mtime > 1000000000);
  ready_and_wait();
  struct stat now;
  CHECK(fstat(fd, &now) == 0 && now.st_mtim.tv_sec == was.st_mtim.tv_sec &&
            now.st_mtim.tv_nsec == was.st_mtim.tv_nsec,
        "mtime %ld.%09ld, was %ld.%09ld", now.st_mtim.tv_sec, now.st_mtim.tv_nsec,
        was.st_mtim.tv_sec, was.st_mtim.tv_nsec);
  CHECK(p[0] == 2 && p[sizeof buf - 1] == 2, "mapped data");
  return 0;
}

/* ---- /proc ---- */

/* proc-self: /proc/self/ns/net opened; restored, its link is the same as a fresh open's. */
static int read_link_fd(int fd, char* buf, size_t n) {
  char t[64];
  snprintf(t, sizeof t, "/proc/self/fd/%d", fd);
  ssize_t r = readlink(t, buf, n - 1);
  if (r < 0) return -1;
  buf[r] = 0;
  return 0;
}
static int m_proc_self(void) {
  int fd = open("/proc/self/ns/net", O_RDONLY);
  SETUP(fd >= 0);
  ready_and_wait();
  char a[64], b[64];
  int fd2 = open("/proc/self/ns/net", O_RDONLY);
  CHECK(read_link_fd(fd, a, sizeof a) == 0 && read_link_fd(fd2, b, sizeof b) == 0, "readlink");
  CHECK(!strcmp(a, b), "%s vs %s", a, b);
  return 0;
}

/* remap_dead_pid, remap_dead_pid_root: /proc/PID/mountinfo and /proc/PID of a child killed and
 * reaped since. Restored: the descriptors are there (open). */
static int m_remap_dead_pid(void) {
  pid_t c = zfork();
  if (c == 0) {
    for (;;) pause();
  }
  char path[64];
  snprintf(path, sizeof path, "/proc/%d/mountinfo", c);
  int fd = open(path, O_RDONLY);
  snprintf(path, sizeof path, "/proc/%d", c);
  int dfd = open(path, O_RDONLY | O_DIRECTORY);
  SETUP(fd >= 0 && dfd >= 0);
  kill(c, SIGKILL);
  SETUP(reap(c) == 128 + SIGKILL);
  ready_and_wait();
  CHECK(fcntl(fd, F_GETFD) == 0, "mountinfo fd");
  CHECK(fcntl(dfd, F_GETFD) == 0, "/proc/PID fd");
  return 0;
}

/* unhashed_proc: the cwd is /proc/PID of a child killed and reaped since. Restored: getcwd
 * still fails with ENOENT. */
static int m_unhashed_proc(void) {
  pid_t c = zfork();
  if (c == 0) {
    for (;;) pause();
  }
  char path[64];
  snprintf(path, sizeof path, "/proc/%d", c);
  SETUP(chdir(path) == 0);
  kill(c, SIGKILL);
  SETUP(reap(c) == 128 + SIGKILL);
  char cwd[256];
  SETUP(getcwd(cwd, sizeof cwd) == NULL && errno == ENOENT);
  ready_and_wait();
  errno = 0;
  CHECK(getcwd(cwd, sizeof cwd) == NULL && errno == ENOENT, "getcwd: %s",
        errno ? strerror(errno) : cwd);
  return 0;
}

/* ---- Creds, threads, misc ---- */

/* clone_fs: threads share one fs_struct (kcmp KCMP_FS says equal). */
static pthread_mutex_t fs_exit = PTHREAD_MUTEX_INITIALIZER;
static volatile pid_t fs_tid;
static void* fs_thread(void* a) {
  (void)a;
  fs_tid = (pid_t)syscall(SYS_gettid);
  pthread_mutex_lock(&fs_exit);
  pthread_mutex_unlock(&fs_exit);
  return NULL;
}
static int m_clone_fs(void) {
  pthread_t th;
  pthread_mutex_lock(&fs_exit);
  SETUP(pthread_create(&th, NULL, fs_thread, NULL) == 0);
  while (!fs_tid) usleep(1000);
  pid_t me = (pid_t)syscall(SYS_gettid);
  SETUP(syscall(SYS_kcmp, me, fs_tid, 3 /* KCMP_FS */, 0, 0) == 0);
  ready_and_wait();
  long r = syscall(SYS_kcmp, me, fs_tid, 3, 0, 0);
  CHECK(r == 0, "the threads' fs_struct differ (kcmp %ld)", r);
  /* A chdir in one is seen by the other. */
  SETUP(chdir("/") == 0);
  char buf[64], link[64];
  snprintf(buf, sizeof buf, "/proc/self/task/%d/cwd", fs_tid);
  ssize_t n = readlink(buf, link, sizeof link - 1);
  CHECK(n == 1 && link[0] == '/', "the thread's cwd did not follow");
  pthread_mutex_unlock(&fs_exit);
  pthread_join(th, NULL);
  return 0;
}

/* cpu-affinity0: the process bound to CPU 0; a thread of it to the last CPU. */
static int m_cpu_affinity(void) {
  cpu_set_t one, now;
  CPU_ZERO(&one);
  CPU_SET(0, &one);
  SETUP(sched_setaffinity(0, sizeof one, &one) == 0);
  ready_and_wait();
  CPU_ZERO(&now);
  CHECK(sched_getaffinity(0, sizeof now, &now) == 0 && CPU_EQUAL(&one, &now),
        "affinity: %d CPUs, CPU0 %d", CPU_COUNT(&now), CPU_ISSET(0, &now));
  return 0;
}

/* different_creds, thread_different_uid_gid: a thread whose capabilities differ from the main
 * thread's (capset is per thread); another thread whose uids and gids differ (raw setresuid and
 * setresgid: glibc's change every thread). */
struct cap_hdr {
  unsigned version;
  int pid;
};
struct cap_data {
  unsigned eff, prm, inh;
};
static int capget_(struct cap_data d[2]) {
  struct cap_hdr h = {0x20080522, 0};
  return (int)syscall(SYS_capget, &h, d);
}
static int capset_(struct cap_data d[2]) {
  struct cap_hdr h = {0x20080522, 0};
  return (int)syscall(SYS_capset, &h, d);
}
static int creds_go[2], creds_back[2];
static void* caps_thread(void* a) {
  (void)a;
  struct cap_data d[2];
  if (capget_(d)) return (void*)1;
  d[0].eff &= ~(1u << 0);  /* CAP_CHOWN off */
  d[0].inh &= ~(1u << 8);  /* CAP_SETPCAP off the inheritable set */
  d[0].inh |= 1u << 10;    /* CAP_NET_BIND_SERVICE into it */
  if (capset_(d)) return (void*)2;
  struct cap_data want[2];
  memcpy(want, d, sizeof want);
  char c = 1;
  if (write(creds_back[1], &c, 1) != 1 || read(creds_go[0], &c, 1) != 1) return (void*)3;
  if (capget_(d) || memcmp(d, want, sizeof want)) return (void*)4;
  return NULL;
}
static void* ids_thread(void* a) {
  (void)a;
  if (syscall(SYS_setresgid, 99, 99, 99) || syscall(SYS_setresuid, 99, 99, 99)) return (void*)1;
  char c = 1;
  if (write(creds_back[1], &c, 1) != 1 || read(creds_go[0], &c, 1) != 1) return (void*)2;
  uid_t r, e, sv;
  gid_t gr, ge, gs;
  if (syscall(SYS_getresuid, &r, &e, &sv) || r != 99 || e != 99 || sv != 99) return (void*)3;
  if (syscall(SYS_getresgid, &gr, &ge, &gs) || gr != 99 || ge != 99 || gs != 99) return (void*)4;
  return NULL;
}
static int m_thread_creds(void) {
  SETUP(pipe(creds_go) == 0 && pipe(creds_back) == 0);
  pthread_t t1, t2;
  char c;
  SETUP(pthread_create(&t1, NULL, caps_thread, NULL) == 0 && read(creds_back[0], &c, 1) == 1);
  SETUP(pthread_create(&t2, NULL, ids_thread, NULL) == 0 && read(creds_back[0], &c, 1) == 1);
  /* The main thread: other ids again, keeping its capabilities' permitted set. */
  SETUP(prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) == 0);
  SETUP(syscall(SYS_setresgid, 8, 8, 8) == 0 && syscall(SYS_setresuid, 12, 12, 12) == 0);
  struct cap_data main_caps[2];
  SETUP(capget_(main_caps) == 0);
  ready_and_wait();
  CHECK(getuid() == 12 && getgid() == 8, "main thread %u:%u", getuid(), getgid());
  struct cap_data now[2];
  CHECK(capget_(now) == 0 && !memcmp(now, main_caps, sizeof now), "main thread capabilities");
  CHECK(write(creds_go[1], "xx", 2) == 2, "go");
  void *r1, *r2;
  CHECK(pthread_join(t1, &r1) == 0 && r1 == NULL, "capabilities thread: %ld", (long)r1);
  CHECK(pthread_join(t2, &r2) == 0 && r2 == NULL, "ids thread: %ld", (long)r2);
  return 0;
}

/* caps01: a child's ambient capabilities (all of its permitted ones, CAP_DAC_OVERRIDE dropped). */
static int m_caps01(void) {
  int res[2], go[2];
  SETUP(pipe(res) == 0 && pipe(go) == 0);
  pid_t c = zfork();
  if (c == 0) {
    struct cap_data d[2];
    if (capget_(d)) _exit(1);
    d[0].eff &= ~((1u << 0) | (1u << 1));
    d[0].prm &= ~(1u << 1);
    d[0].inh = d[0].prm;
    d[1].inh = d[1].prm;
    if (capset_(d)) _exit(2);
    int last = 40;
    FILE* f = fopen("/proc/sys/kernel/cap_last_cap", "r");
    if (f) {
      if (fscanf(f, "%d", &last) != 1) last = 40;
      fclose(f);
    }
    unsigned amb[2] = {d[0].prm, d[1].prm};
    for (int i = 0; i <= last; i++)
      if (prctl(PR_CAP_AMBIENT, (amb[i / 32] >> (i % 32)) & 1 ? PR_CAP_AMBIENT_RAISE
                                                               : PR_CAP_AMBIENT_LOWER,
                i, 0, 0))
        _exit(3);
    char b = 0;
    if (write(res[1], &b, 1) != 1 || read(go[0], &b, 1) != 1) _exit(4);
    for (int i = 0; i <= last; i++) {
      int set = prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_IS_SET, i, 0, 0);
      if (set != (int)((amb[i / 32] >> (i % 32)) & 1)) _exit(10 + i);
    }
    _exit(0);
  }
  char b;
  SETUP(read(res[0], &b, 1) == 1);
  ready_and_wait();
  CHECK(write(go[1], "g", 1) == 1, "go");
  int st = reap(c);
  CHECK(st == 0, "child: %d (10+N: ambient capability N differs)", st);
  return 0;
}

/* file_lease05: a read lease another open (for writing, non-blocking) has started to break.
 * Restored: still breaking: a reader opens it, a writer is refused (EWOULDBLOCK). */
static void on_lease(int s) { (void)s; }
static int m_file_lease05(void) {
  struct sigaction sa = {.sa_handler = on_lease, .sa_flags = SA_RESTART};
  SETUP(sigaction(SIGIO, &sa, NULL) == 0);
  char path[512];
  snprintf(path, sizeof path, "%s", path_in("lease"));
  int fd = open(path, O_RDONLY | O_CREAT, 0666);
  SETUP(fd >= 0 && fcntl(fd, F_SETLEASE, F_RDLCK) == 0 && fcntl(fd, F_SETSIG, SIGIO) == 0);
  int w = open(path, O_WRONLY | O_NONBLOCK);
  SETUP(w < 0 && errno == EWOULDBLOCK);
  ready_and_wait();
  int r = open(path, O_RDONLY | O_NONBLOCK);
  CHECK(r >= 0, "a reader is refused: a lease that is not breaking");
  close(r);
  w = open(path, O_WRONLY | O_NONBLOCK);
  CHECK(w < 0 && errno == EWOULDBLOCK, "a writer opened it: no lease");
  return 0;
}

/* inotify04: two inotify instances watching one file (IN_ALL_EVENTS): nothing queued after the
 * restore (the restore must not touch the watched file). */
#include <sys/inotify.h>
static int m_inotify04(void) {
  char f[512];
  snprintf(f, sizeof f, "%s", path_in("watched"));
  int fd = open(f, O_CREAT | O_RDWR, 0644);
  SETUP(fd >= 0);
  close(fd);
  int a = inotify_init1(IN_NONBLOCK), b = inotify_init1(IN_NONBLOCK);
  SETUP(a >= 0 && b >= 0 && inotify_add_watch(a, f, IN_ALL_EVENTS) >= 0 &&
        inotify_add_watch(b, f, IN_ALL_EVENTS) >= 0);
  ready_and_wait();
  char buf[4096];
  ssize_t n = read(a, buf, sizeof buf);
  CHECK(n < 0 && errno == EAGAIN, "instance 1: %zd bytes of events (mask %#x)", n,
        n > 0 ? ((struct inotify_event*)buf)->mask : 0);
  n = read(b, buf, sizeof buf);
  CHECK(n < 0 && errno == EAGAIN, "instance 2: %zd bytes of events (mask %#x)", n,
        n > 0 ? ((struct inotify_event*)buf)->mask : 0);
  /* Still watching. */
  CHECK(truncate(f, 1) == 0, "truncate");
  n = read(a, buf, sizeof buf);
  CHECK(n > 0 && (((struct inotify_event*)buf)->mask & IN_MODIFY), "no IN_MODIFY after restore");
  return 0;
}

/* timers01: one-shot (non-periodic) itimers of all three kinds, an hour out. */
#include <sys/time.h>
static int m_timers01(void) {
  struct itimerval tv = {.it_value = {.tv_sec = 3600}};
  const int kinds[] = {ITIMER_VIRTUAL, ITIMER_PROF, ITIMER_REAL};
  for (int i = 0; i < 3; i++) SETUP(setitimer(kinds[i], &tv, NULL) == 0);
  ready_and_wait();
  for (int i = 0; i < 3; i++) {
    struct itimerval now;
    CHECK(getitimer(kinds[i], &now) == 0, "getitimer %d", i);
    CHECK(now.it_value.tv_sec <= 3600 && now.it_value.tv_sec > 3600 - 300 &&
              now.it_interval.tv_sec == 0 && now.it_interval.tv_usec == 0,
          "timer %d: %ld s left, interval %ld", i, (long)now.it_value.tv_sec,
          (long)now.it_interval.tv_sec);
  }
  return 0;
}

/* uffd-events (its state without lazy pages): five private 1 MiB mappings with data; restored,
 * the data, then a fork, MADV_DONTNEED, a growing mremap and swapped mappings behave. */
static int m_uffd_events(void) {
  const size_t sz = 1 << 20;
  char* map[5];
  for (int i = 0; i < 5; i++) {
    map[i] = mmap(NULL, sz, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
    SETUP(map[i] != MAP_FAILED);
    fill(map[i], sz, i);
  }
  ready_and_wait();
  CHECK(same(map[0], sz, 0), "data");
  pid_t c = fork();
  CHECK(c >= 0, "fork");
  CHECK(madvise(map[1], sz, MADV_DONTNEED) == 0 && map[1][0] == 0 && map[1][sz - 1] == 0,
        "MADV_DONTNEED");
  char* g = mremap(map[2], sz, 2 * sz, MREMAP_MAYMOVE);
  CHECK(g != MAP_FAILED && same(g, sz, 2) && g[sz] == 0 && g[2 * sz - 1] == 0, "grown mremap");
  char* p = mremap(map[3], sz, sz, MREMAP_MAYMOVE | MREMAP_FIXED, map[0]);
  char* m1 = mremap(map[4], sz, sz, MREMAP_MAYMOVE | MREMAP_FIXED, map[3]);
  char* m2 = mremap(p, sz, sz, MREMAP_MAYMOVE | MREMAP_FIXED, map[4]);
  CHECK(p != MAP_FAILED && m1 != MAP_FAILED && m2 != MAP_FAILED, "mremap");
  CHECK(same(m2, sz, 3) && same(m1, sz, 4), "swapped mappings");
  if (c == 0) _exit(0);
  CHECK(reap(c) == 0, "child");
  return 0;
}

/* uptime_grow: CLOCK_MONOTONIC and CLOCK_BOOTTIME never go back across the restore. */
static int m_uptime_grow(void) {
  struct timespec m0, b0, m1, b1;
  SETUP(clock_gettime(CLOCK_MONOTONIC, &m0) == 0 && clock_gettime(CLOCK_BOOTTIME, &b0) == 0);
  ready_and_wait();
  CHECK(clock_gettime(CLOCK_MONOTONIC, &m1) == 0 && clock_gettime(CLOCK_BOOTTIME, &b1) == 0,
        "clock_gettime");
  CHECK(m1.tv_sec > m0.tv_sec || (m1.tv_sec == m0.tv_sec && m1.tv_nsec >= m0.tv_nsec),
        "monotonic went back");
  CHECK(b1.tv_sec > b0.tv_sec || (b1.tv_sec == b0.tv_sec && b1.tv_nsec >= b0.tv_nsec),
        "boottime went back");
  return 0;
}

/* vdso-proxy: the [vdso] and [vvar] mappings are as many as before (none added by the restore)
 * and the vDSO calls work. */
static int count_maps(const char* what) {
  FILE* f = fopen("/proc/self/maps", "r");
  char line[512];
  int n = 0;
  while (f && fgets(line, sizeof line, f))
    if (strstr(line, what)) n++;
  if (f) fclose(f);
  return n;
}
static int m_vdso_proxy(void) {
  int vdso = count_maps("[vdso]"), vvar = count_maps("[vvar");
  SETUP(vdso == 1);
  ready_and_wait();
  CHECK(count_maps("[vdso]") == vdso, "[vdso] mappings %d, were %d", count_maps("[vdso]"), vdso);
  CHECK(count_maps("[vvar") == vvar, "[vvar] mappings %d, were %d", count_maps("[vvar"), vvar);
  struct timespec ts;
  struct timeval tv;
  CHECK(clock_gettime(CLOCK_REALTIME, &ts) == 0 && gettimeofday(&tv, NULL) == 0 &&
            labs(ts.tv_sec - tv.tv_sec) < 5 && labs(time(NULL) - ts.tv_sec) < 5,
        "vDSO time calls");
  return 0;
}

/* fd_from_pidfd: a pipe's read end taken from a child with pidfd_getfd, the pidfd kept; restored,
 * the end reads the data and the pidfd signals the child. fd_offset: /proc/self/exe opened, its
 * offset 0. */
static int m_fd_from_pidfd(void) {
  int p[2];
  SETUP(pipe(p) == 0);
  pid_t c = zfork();
  if (c == 0) {
    close(p[1]);
    for (;;) pause();
  }
  int pidfd = (int)syscall(SYS_pidfd_open, c, 0);
  SETUP(pidfd >= 0);
  int data = 42;
  SETUP(write(p[1], &data, sizeof data) == sizeof data);
  close(p[1]);
  int r = (int)syscall(SYS_pidfd_getfd, pidfd, p[0], 0);
  SETUP(r >= 0);
  close(p[0]);
  int exe = open("/proc/self/exe", O_RDONLY);
  SETUP(exe >= 0);
  ready_and_wait();
  int got = 0;
  CHECK(read(r, &got, sizeof got) == sizeof got && got == 42, "read %d", got);
  CHECK(syscall(SYS_pidfd_send_signal, pidfd, SIGTERM, NULL, 0) == 0, "pidfd_send_signal");
  CHECK(reap(c) == 128 + SIGTERM, "the child");
  CHECK(lseek(exe, 0, SEEK_CUR) == 0, "exe offset %ld", (long)lseek(exe, 0, SEEK_CUR));
  return 0;
}

/* ---- Memory ---- */

/* maps03: a 10 GiB private anonymous mapping with two bytes written far apart. */
static int m_maps03(void) {
  unsigned char* m = mmap(NULL, 10L << 30, PROT_READ | PROT_WRITE,
                          MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  SETUP(m != MAP_FAILED);
  m[4L << 30] = 1;
  m[8L << 30] = 2;
  ready_and_wait();
  CHECK(m[4L << 30] == 1 && m[8L << 30] == 2, "data");
  CHECK(m[0] == 0 && m[(10L << 30) - 1] == 0, "untouched pages");
  return 0;
}

/* maps11: MAP_DROPPABLE memory (its content dropped by the restore: zeros) and a
 * MADV_WIPEONFORK mapping (its content kept; a child of before and one of after see zeros in
 * both). */
#ifndef MAP_DROPPABLE
#define MAP_DROPPABLE 0x08
#endif
static int zero(const char* p, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (p[i]) return 0;
  return 1;
}
static int m_maps11(void) {
  static const char data[] = "MADV_WIPEONFORK vma data";
  char* p1 = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_DROPPABLE | MAP_ANONYMOUS, -1, 0);
  if (p1 == MAP_FAILED && errno == EINVAL) return 121; /* no MAP_DROPPABLE here */
  char* p2 = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  SETUP(p1 != MAP_FAILED && p2 != MAP_FAILED && madvise(p2, 4096, MADV_WIPEONFORK) == 0);
  memcpy(p1, data, sizeof data);
  memcpy(p2, data, sizeof data);
  int go[2];
  SETUP(pipe(go) == 0);
  pid_t c = zfork();
  if (c == 0) {
    char b;
    if (read(go[0], &b, 1) != 1) _exit(1);
    _exit(zero(p1, sizeof data) && zero(p2, sizeof data) ? 0 : 2);
  }
  ready_and_wait();
  CHECK(write(go[1], "g", 1) == 1, "go");
  CHECK(reap(c) == 0, "the child of before sees data");
  CHECK(zero(p1, sizeof data), "MAP_DROPPABLE kept its data");
  CHECK(!memcmp(p2, data, sizeof data), "MADV_WIPEONFORK lost its data");
  memcpy(p1, data, sizeof data);
  pid_t c2 = fork();
  if (c2 == 0) _exit(zero(p1, sizeof data) && zero(p2, sizeof data) ? 0 : 2);
  CHECK(reap(c2) == 0, "a child of after sees data");
  return 0;
}

/* maps12: MADV_GUARD_INSTALL guard pages in five two-page mappings (one with wipe-on-fork too);
 * restored, writes to guards fault (in the process and in a child), the other pages keep data. */
#ifndef MADV_GUARD_INSTALL
#define MADV_GUARD_INSTALL 102
#endif
#include <setjmp.h>
static sigjmp_buf segv_jmp;
static volatile sig_atomic_t segv_armed;
static void on_segv(int s) {
  (void)s;
  if (segv_armed) siglongjmp(segv_jmp, 1);
  _exit(99);
}
static int writable(volatile char* p) {
  segv_armed = 1;
  int ok = sigsetjmp(segv_jmp, 1) == 0;
  if (ok) *p = 'x';
  segv_armed = 0;
  return ok;
}
static const int guarded[10] = {0, 1, 1, 0, 0, 1, 1, 0, 0, 0};
static int guards_hold(char* base, int in_child) {
  for (int i = 0; i < 10; i++) {
    if (!guarded[i] || (in_child && i == 5)) continue;
    if (writable(base + i * 4096)) return i + 1;
  }
  return 0;
}
static int m_maps12(void) {
  signal(SIGSEGV, on_segv);
  char* base = mmap(NULL, 10 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  SETUP(base != MAP_FAILED);
  for (int v = 0; v < 5; v++)
    SETUP(mmap(base + v * 8192, 8192, PROT_READ | PROT_WRITE,
               MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) == base + v * 8192);
  for (int i = 0; i < 10; i++)
    if (!guarded[i]) fill(base + i * 4096, 4096, i);
  for (int i = 0; i < 10; i++)
    if (guarded[i] && madvise(base + i * 4096, 4096, MADV_GUARD_INSTALL)) return 121;
  SETUP(madvise(base + 5 * 4096, 4096, MADV_WIPEONFORK) == 0);
  SETUP(guards_hold(base, 0) == 0);
  ready_and_wait();
  int g = guards_hold(base, 0);
  CHECK(g == 0, "page %d is writable: its guard is gone", g - 1);
  pid_t c = fork();
  if (c == 0) _exit(guards_hold(base, 1));
  int st = reap(c);
  CHECK(st == 0, "in a child, page %d is writable", st - 1);
  for (int i = 0; i < 10; i++)
    if (!guarded[i]) CHECK(same(base + i * 4096, 4096, i), "page %d's data", i);
  return 0;
}

/* ---- cgroups ----
 * Named v1 hierarchies "gwzport" and "gwzport2" (fixed names: a named hierarchy outlives its
 * mounts, one per run would pile up) mounted in DIR, and cgroup2 mounted in DIR too (the host's
 * one hierarchy); this run's groups under /pPID. DIR/cgroups lists for the test what to remove
 * ("dir PATH", deepest first) and unmount ("mount PATH"). */
#include <sys/xattr.h>
static FILE* cg_rec;
static void cg_note(const char* what, const char* path) {
  if (!cg_rec) cg_rec = fopen(path_in("cgroups"), "a");
  SETUP(cg_rec != NULL);
  fprintf(cg_rec, "%s %s\n", what, path);
  fflush(cg_rec);
}
/* Mounts hierarchy `opts` ("name=X", or NULL for cgroup2) at DIR/sub; the mount point. */
static const char* cg_mount(const char* sub, const char* opts) {
  static char at[4][512];
  static int k;
  char* m = at[k++ % 4];
  snprintf(m, 512, "%s", path_in(sub));
  SETUP(mkdir(m, 0700) == 0);
  SETUP(mount("none", m, opts ? "cgroup" : "cgroup2", 0, opts ? opts : NULL) == 0);
  cg_note("mount", m);
  return m;
}
static int write_str(const char* path, const char* v) {
  int fd = open(path, O_WRONLY);
  if (fd < 0) return -1;
  int r = write(fd, v, strlen(v)) == (ssize_t)strlen(v) ? 0 : -1;
  close(fd);
  return r;
}
/* Makes MNT/REL (parents too, each noted for removal after its children) and moves tid there
 * (0: the calling thread) through `file` (tasks, cgroup.procs, cgroup.threads). */
static char* cg_dir(const char* mnt, const char* rel) {
  static char b[8][700];
  static int k;
  char* d = b[k++ % 8];
  snprintf(d, 700, "%s/%s", mnt, rel);
  return d;
}
static void cg_mkdir(const char* mnt, const char* rel) {
  char* d = cg_dir(mnt, rel);
  SETUP(mkdir(d, 0755) == 0 || errno == EEXIST);
}
static int cg_move(const char* mnt, const char* rel, const char* file, pid_t tid) {
  char p[800], v[32];
  snprintf(p, sizeof p, "%s/%s/%s", mnt, rel, file);
  snprintf(v, sizeof v, "%d", tid);
  return write_str(p, v);
}
/* Whether /proc/self/task/TID/cgroup (0: the thread itself) has "CONTROLLERS:PATH". */
static int cg_in(pid_t tid, const char* ctl, const char* path) {
  char f[64], line[1024], want[512];
  if (tid)
    snprintf(f, sizeof f, "/proc/self/task/%d/cgroup", tid);
  else
    snprintf(f, sizeof f, "/proc/thread-self/cgroup");
  snprintf(want, sizeof want, "%s:%s\n", ctl, path);
  FILE* fp = fopen(f, "r");
  int found = 0;
  while (fp && fgets(line, sizeof line, fp)) {
    char* c = strchr(line, ':');
    if (c && !strcmp(c + 1, want)) found = 1;
  }
  if (fp) fclose(fp);
  return found;
}

/* cgroup01 (empty sub-cgroups stay), cgroup02 (in two named hierarchies; the --cgroup-root
 * remap of its .desc is not passed), cgroup03 (a group's and its files' owner and mode),
 * cgroup05 (an xattr on a group's tasks file: CRIU refuses; here the group is the host's and
 * stays as it was), cgroup_stray (parent and child in sibling groups). */
static int m_cgroups_v1(void) {
  const char* a = cg_mount("cga", "none,name=gwzport");
  const char* b = cg_mount("cgb", "none,name=gwzport2");
  char base[32], rel[96], e0[128], e1[128], bar[96], foo[96];
  snprintf(base, sizeof base, "p%d", getpid());
  snprintf(rel, sizeof rel, "%s/subcg01", base);
  snprintf(e0, sizeof e0, "%s/empty.0", rel);
  snprintf(e1, sizeof e1, "%s/empty.1", rel);
  snprintf(bar, sizeof bar, "%s/bar", base);
  snprintf(foo, sizeof foo, "%s/foo", base);
  const char* dirs_a[] = {e0, e1, rel, bar, foo, base};
  for (int i = 5; i >= 0; i--) cg_mkdir(a, dirs_a[i]);
  for (int i = 0; i < 6; i++) cg_note("dir", cg_dir(a, dirs_a[i]));
  cg_mkdir(b, base);
  cg_mkdir(b, rel);
  cg_note("dir", cg_dir(b, rel));
  cg_note("dir", cg_dir(b, base));
  SETUP(cg_move(a, rel, "tasks", getpid()) == 0 && cg_move(b, rel, "tasks", getpid()) == 0);
  /* cgroup03 */
  SETUP(chown(cg_dir(a, rel), 1000, 1000) == 0 && chmod(cg_dir(a, rel), 0777) == 0);
  char f1[800], f2[800], tasks[800];
  snprintf(f1, sizeof f1, "%s/notify_on_release", cg_dir(a, rel));
  snprintf(f2, sizeof f2, "%s/cgroup.procs", cg_dir(a, rel));
  snprintf(tasks, sizeof tasks, "%s/tasks", cg_dir(a, rel));
  SETUP(chown(f1, 1000, 1000) == 0 && chmod(f1, 0777) == 0);
  SETUP(chown(f2, 1000, 1000) == 0 && chmod(f2, 0777) == 0);
  /* cgroup05 */
  SETUP(setxattr(tasks, "trusted.zdtmtest", "zdtmtest", 9, 0) == 0);
  /* cgroup_stray: a child in foo, ourselves in bar of hierarchy a... after the child forked from
   * subcg01; the root goes to bar last. */
  int go[2], ok[2];
  SETUP(pipe(go) == 0 && pipe(ok) == 0);
  char want_foo[128], want_rel[128], want_bar[128];
  snprintf(want_foo, sizeof want_foo, "/%s", foo);
  snprintf(want_rel, sizeof want_rel, "/%s", rel);
  snprintf(want_bar, sizeof want_bar, "/%s", bar);
  pid_t c = zfork();
  if (c == 0) {
    if (cg_move(a, foo, "tasks", getpid())) _exit(1);
    char x = 1;
    if (write(ok[1], &x, 1) != 1 || read(go[0], &x, 1) != 1) _exit(2);
    if (!cg_in(0, "name=gwzport", want_foo)) _exit(3);
    if (!cg_in(0, "name=gwzport2", want_rel)) _exit(4);
    _exit(0);
  }
  char x;
  SETUP(read(ok[0], &x, 1) == 1);
  /* cgroup01's process stays in subcg01 of b; in a it goes to bar (stray: not its child's). */
  SETUP(cg_move(a, bar, "tasks", getpid()) == 0);
  ready_and_wait();
  CHECK(cg_in(0, "name=gwzport", want_bar), "not in name=gwzport:%s", want_bar);
  CHECK(cg_in(0, "name=gwzport2", want_rel), "not in name=gwzport2:%s", want_rel);
  struct stat st;
  CHECK(stat(cg_dir(a, e0), &st) == 0 && S_ISDIR(st.st_mode), "empty.0 gone");
  CHECK(stat(cg_dir(a, e1), &st) == 0 && S_ISDIR(st.st_mode), "empty.1 gone");
  const char* perm[] = {cg_dir(a, rel), f1, f2};
  for (int i = 0; i < 3; i++)
    CHECK(stat(perm[i], &st) == 0 && (st.st_mode & 0777) == 0777 && st.st_uid == 1000 &&
              st.st_gid == 1000,
          "%s: %o %u:%u", perm[i], st.st_mode & 0777, st.st_uid, st.st_gid);
  CHECK(removexattr(tasks, "trusted.zdtmtest") == 0, "the xattr is gone");
  CHECK(write(go[1], "g", 1) == 1, "go");
  int cs = reap(c);
  CHECK(cs == 0, "child: %d (3: not in foo, 4: not in subcg01 of gwzport2)", cs);
  return 0;
}

/* cgroup_threads (a thread in a v1 group of its own below the process's) and cgroupv2_01 (the
 * threads of a process in two threaded cgroup2 groups below its domain). */
static const char *thr_a, *thr_v2;
static char thr_rel[96], thr_sub[128], thr_v2rel[96], thr_t1[128], thr_t2[128];
static int thr_go[2], thr_back[2];
static void* cg_thread(void* arg) {
  (void)arg;
  pid_t tid = (pid_t)syscall(SYS_gettid);
  int r = cg_move(thr_a, thr_sub, "tasks", tid);
  if (!r && thr_v2) r = cg_move(thr_v2, thr_t2, "cgroup.threads", tid);
  char x = r ? 1 : 0;
  if (write(thr_back[1], &x, 1) != 1 || r) return (void*)1;
  if (read(thr_go[0], &x, 1) != 1) return (void*)2;
  char w[160];
  snprintf(w, sizeof w, "/%s", thr_sub);
  if (!cg_in(0, "name=gwzport", w)) return (void*)3;
  snprintf(w, sizeof w, "/%s", thr_t2);
  if (thr_v2 && !cg_in(0, "", w)) return (void*)4;
  return NULL;
}
static int m_cgroup_threads(void) {
  thr_a = cg_mount("cga", "none,name=gwzport");
  snprintf(thr_rel, sizeof thr_rel, "p%d", getpid());
  snprintf(thr_sub, sizeof thr_sub, "%s/subsubcg", thr_rel);
  cg_mkdir(thr_a, thr_rel);
  cg_mkdir(thr_a, thr_sub);
  cg_note("dir", cg_dir(thr_a, thr_sub));
  cg_note("dir", cg_dir(thr_a, thr_rel));
  SETUP(cg_move(thr_a, thr_rel, "tasks", getpid()) == 0);
  thr_v2 = cg_mount("cg2", NULL);
  snprintf(thr_v2rel, sizeof thr_v2rel, "p%d_v2", getpid());
  snprintf(thr_t1, sizeof thr_t1, "%s/thread1", thr_v2rel);
  snprintf(thr_t2, sizeof thr_t2, "%s/thread2", thr_v2rel);
  cg_mkdir(thr_v2, thr_v2rel);
  cg_mkdir(thr_v2, thr_t1);
  cg_mkdir(thr_v2, thr_t2);
  cg_note("dir", cg_dir(thr_v2, thr_t1));
  cg_note("dir", cg_dir(thr_v2, thr_t2));
  cg_note("dir", cg_dir(thr_v2, thr_v2rel));
  SETUP(cg_move(thr_v2, thr_v2rel, "cgroup.procs", getpid()) == 0);
  char p[800];
  snprintf(p, sizeof p, "%s/cgroup.type", cg_dir(thr_v2, thr_t1));
  SETUP(write_str(p, "threaded") == 0);
  snprintf(p, sizeof p, "%s/cgroup.type", cg_dir(thr_v2, thr_t2));
  SETUP(write_str(p, "threaded") == 0);
  SETUP(pipe(thr_go) == 0 && pipe(thr_back) == 0);
  pthread_t th;
  SETUP(pthread_create(&th, NULL, cg_thread, NULL) == 0);
  char x;
  SETUP(read(thr_back[0], &x, 1) == 1 && x == 0);
  SETUP(cg_move(thr_v2, thr_t1, "cgroup.threads", (pid_t)syscall(SYS_gettid)) == 0);
  ready_and_wait();
  char w[160];
  snprintf(w, sizeof w, "/%s", thr_rel);
  CHECK(cg_in(0, "name=gwzport", w), "main thread not in name=gwzport:%s", w);
  snprintf(w, sizeof w, "/%s", thr_t1);
  CHECK(cg_in(0, "", w), "main thread not in cgroup2 %s", w);
  CHECK(write(thr_go[1], "g", 1) == 1, "go");
  void* r;
  CHECK(pthread_join(th, &r) == 0 && r == NULL, "thread: %ld (3: v1 group, 4: v2 group)",
        (long)r);
  return 0;
}

/* cgroupv2_00: a threaded cgroup2 group holding the process, its subtree_control and type. */
static int m_cgroupv2_00(void) {
  const char* v2 = cg_mount("cg2", NULL);
  char rel[64], sub[96];
  snprintf(rel, sizeof rel, "p%d_v2", getpid());
  snprintf(sub, sizeof sub, "%s/subcg00", rel);
  cg_mkdir(v2, rel);
  cg_mkdir(v2, sub);
  cg_note("dir", cg_dir(v2, sub));
  cg_note("dir", cg_dir(v2, rel));
  char p[800];
  snprintf(p, sizeof p, "%s/cgroup.type", cg_dir(v2, sub));
  SETUP(write_str(p, "threaded") == 0);
  SETUP(cg_move(v2, sub, "cgroup.procs", getpid()) == 0);
  char want[128];
  snprintf(want, sizeof want, "/%s", sub);
  ready_and_wait();
  CHECK(cg_in(0, "", want), "not in cgroup2 %s", want);
  char buf[64] = {0};
  int fd = open(p, O_RDONLY);
  CHECK(fd >= 0 && read(fd, buf, sizeof buf - 1) > 0 && !strcmp(buf, "threaded\n"), "type %s",
        buf);
  return 0;
}

/* cgroup_ifpriomap: the process in a net_prio group whose ifpriomap was changed. */
static int m_cgroup_ifpriomap(void) {
  const char* np = cg_mount("np", "net_prio");
  char rel[64];
  snprintf(rel, sizeof rel, "p%d", getpid());
  cg_mkdir(np, rel);
  cg_note("dir", cg_dir(np, rel));
  SETUP(cg_move(np, rel, "tasks", getpid()) == 0);
  char p[800];
  snprintf(p, sizeof p, "%s/net_prio.ifpriomap", cg_dir(np, rel));
  SETUP(write_str(p, "lo 7") == 0);
  char want[128];
  snprintf(want, sizeof want, "/%s", rel);
  ready_and_wait();
  CHECK(cg_in(0, "net_prio", want) || cg_in(0, "net_cls,net_prio", want), "not in net_prio %s",
        want);
  FILE* f = fopen(p, "r");
  char line[128];
  int seen = 0;
  while (f && fgets(line, sizeof line, f))
    if (!strcmp(line, "lo 7\n")) seen = 1;
  if (f) fclose(f);
  CHECK(seen, "lo's priority lost");
  return 0;
}

/* ---- Measured against CRIU's own zdtm binaries (docs/zdtm.md, "The upstream binaries") ---- */

/* file_locks03/04: a flock taken by the parent, which forked and closed its fd: the child is
 * the only holder. Restored: the lock is held by a process of the tree (fdinfo names the child
 * or the parent, not the restorer) and still excludes another description. */
#include <sys/file.h>
static int lock_owner_in_fdinfo(pid_t pid, int fd) {
  char p[64], line[256];
  snprintf(p, sizeof p, "/proc/%d/fdinfo/%d", pid, fd);
  FILE* f = fopen(p, "r");
  if (!f) return -1;
  int owner = 0;
  while (fgets(line, sizeof line, f))
    if (!strncmp(line, "lock:", 5) && strstr(line, "FLOCK")) {
      char type[16], mand[16], rw[16];
      int id;
      if (sscanf(line, "lock:\t%d: %15s %15s %15s %d", &id, type, mand, rw, &owner) != 5) owner = -2;
    }
  fclose(f);
  return owner;
}
static int m_flock_inherited(void) {
  int fd = open(path_in("flocked"), O_CREAT | O_RDWR, 0600);
  SETUP(fd >= 0 && flock(fd, LOCK_EX) == 0);
  int hold[2];
  SETUP(pipe(hold) == 0);
  pid_t c = zfork();
  SETUP(c >= 0);
  if (c == 0) {
    close(hold[1]);
    char b;
    (void)!read(hold[0], &b, 1); /* until the parent goes */
    _exit(0);
  }
  close(hold[0]);
  close(fd); /* the child holds the description, and so the lock, alone */
  ready_and_wait();
  int owner = lock_owner_in_fdinfo(c, fd);
  CHECK(owner == c || owner == getpid(), "the lock names pid %d, not the child %d or us %d", owner,
        c, getpid());
  int other = open(path_in("flocked"), O_RDONLY);
  CHECK(other >= 0 && flock(other, LOCK_EX | LOCK_NB) < 0 && errno == EWOULDBLOCK,
        "another description took the lock: not held");
  close(hold[1]);
  CHECK(reap(c) == 0, "child");
  return 0;
}

/* link10, unlink_fstat02, write_read10: one deleted inode held by several descriptions (opened
 * by two names, both unlinked; one more in a child). Restored: one inode, what one writes the
 * others read. */
static int m_ghost_shared(void) {
  char a[512], b[512];
  snprintf(a, sizeof a, "%s", path_in("ghost_a"));
  snprintf(b, sizeof b, "%s", path_in("ghost_b"));
  int wr = open(a, O_WRONLY | O_CREAT | O_EXCL, 0644);
  SETUP(wr >= 0 && link(a, b) == 0);
  int rd = open(b, O_RDONLY);
  int rw = open(a, O_RDWR);
  SETUP(rd >= 0 && rw >= 0 && write(wr, "abc", 3) == 3 && unlink(a) == 0 && unlink(b) == 0);
  int go[2];
  SETUP(pipe(go) == 0);
  pid_t c = zfork();
  SETUP(c >= 0);
  if (c == 0) { /* its own description (rw), written after the restore */
    close(go[1]);
    close(wr);
    close(rd);
    char x;
    if (read(go[0], &x, 1) != 1) _exit(2);
    _exit(pwrite(rw, "xyz", 3, 3) == 3 ? 0 : 3);
  }
  close(go[0]);
  close(rw);
  ready_and_wait();
  struct stat s1, s2;
  CHECK(fstat(wr, &s1) == 0 && fstat(rd, &s2) == 0, "fstat");
  CHECK(s1.st_ino == s2.st_ino && s1.st_dev == s2.st_dev, "two inodes (%lu, %lu)",
        (unsigned long)s1.st_ino, (unsigned long)s2.st_ino);
  CHECK(s1.st_nlink == 0, "the ghost is linked (%lu)", (unsigned long)s1.st_nlink);
  CHECK(write(go[1], "g", 1) == 1, "wake the child");
  CHECK(reap(c) == 0, "the child's write");
  char buf[8] = {0};
  CHECK(pread(rd, buf, 6, 0) == 6 && !memcmp(buf, "abcxyz", 6), "read '%s'", buf);
  return 0;
}

/* file_lease02/03/04: write leases being broken: to READ by a reader, to UNLCK by a writer (on
 * a description open for writing, so it was a write lease). Restored: still breaking, towards
 * the same type. */
static int m_lease_write_breaking(void) {
  struct sigaction sa = {.sa_handler = on_lease, .sa_flags = SA_RESTART};
  SETUP(sigaction(SIGIO, &sa, NULL) == 0);
  char to_unlck[512], to_read[512];
  snprintf(to_unlck, sizeof to_unlck, "%s", path_in("lease_w_unlck"));
  snprintf(to_read, sizeof to_read, "%s", path_in("lease_w_read"));
  int u = open(to_unlck, O_WRONLY | O_CREAT, 0666);
  int r = open(to_read, O_RDWR | O_CREAT, 0666);
  SETUP(u >= 0 && r >= 0 && fcntl(u, F_SETLEASE, F_WRLCK) == 0 &&
        fcntl(r, F_SETLEASE, F_WRLCK) == 0);
  int w = open(to_unlck, O_WRONLY | O_NONBLOCK);
  SETUP(w < 0 && errno == EWOULDBLOCK);
  int rr = open(to_read, O_RDONLY | O_NONBLOCK);
  SETUP(rr < 0 && errno == EWOULDBLOCK);
  SETUP(fcntl(u, F_GETLEASE) == F_UNLCK && fcntl(r, F_GETLEASE) == F_RDLCK);
  ready_and_wait();
  CHECK(fcntl(u, F_GETLEASE) == F_UNLCK, "write lease broken by a writer: %d, not UNLCK",
        fcntl(u, F_GETLEASE));
  CHECK(fcntl(r, F_GETLEASE) == F_RDLCK, "write lease broken by a reader: %d, not RDLCK",
        fcntl(r, F_GETLEASE));
  int again = open(to_unlck, O_RDONLY | O_NONBLOCK);
  CHECK(again < 0 && errno == EWOULDBLOCK, "a reader opened it: the break is gone");
  return 0;
}

/* inotify00: a watch on a file that was unlinked while open. Restored: the watch is on the
 * restored deleted file (closing it after a write gives IN_CLOSE_WRITE). */
static int m_inotify_deleted(void) {
  char f[512];
  snprintf(f, sizeof f, "%s", path_in("watched_gone"));
  int fd = open(f, O_CREAT | O_RDWR, 0644);
  int in = inotify_init1(IN_NONBLOCK);
  SETUP(fd >= 0 && in >= 0);
  int wd = inotify_add_watch(in, f, IN_CLOSE_WRITE | IN_DELETE_SELF);
  SETUP(wd >= 0 && unlink(f) == 0);
  char buf[4096];
  SETUP(read(in, buf, sizeof buf) < 0 || 1); /* drain IN_ATTRIB etc. */
  ready_and_wait();
  CHECK(write(fd, "x", 1) == 1, "write");
  close(fd);
  ssize_t n = read(in, buf, sizeof buf);
  CHECK(n > 0, "no event after closing the deleted file");
  unsigned mask = 0;
  for (ssize_t off = 0; off < n;) {
    struct inotify_event* ev = (struct inotify_event*)(buf + off);
    if (ev->wd == wd) mask |= ev->mask;
    off += sizeof *ev + ev->len;
  }
  CHECK(mask & IN_CLOSE_WRITE, "events %#x on wd %d, no IN_CLOSE_WRITE", mask, wd);
  return 0;
}

/* fd01's tmpfile(): an O_TMPFILE file (its flags keep O_TMPFILE). Restored with its data. */
static int m_tmpfile(void) {
  int fd = open(dir, O_TMPFILE | O_RDWR, 0600);
  SETUP(fd >= 0 && write(fd, "tmpdata", 7) == 7);
  ready_and_wait();
  char buf[8] = {0};
  CHECK(pread(fd, buf, 7, 0) == 7 && !strcmp(buf, "tmpdata"), "data '%s'", buf);
  struct stat st;
  CHECK(fstat(fd, &st) == 0 && st.st_nlink == 0 && S_ISREG(st.st_mode), "not a deleted file");
  CHECK(write(fd, "!", 1) == 1, "not writable");
  return 0;
}

/* sockets_dgram: a named datagram socket connected to itself. Restored: still bound and
 * connected to its own name; what it sends it receives. */
static int m_dgram_self(void) {
  struct sockaddr_un a = {.sun_family = AF_UNIX};
  snprintf(a.sun_path, sizeof a.sun_path, "%s", path_in("self.sock"));
  int s = socket(AF_UNIX, SOCK_DGRAM, 0);
  SETUP(s >= 0 && bind(s, (struct sockaddr*)&a, sizeof a) == 0 &&
        connect(s, (struct sockaddr*)&a, sizeof a) == 0 && write(s, "q", 1) == 1);
  ready_and_wait();
  char b[8] = {0};
  CHECK(recv(s, b, sizeof b, MSG_DONTWAIT) == 1 && b[0] == 'q', "queued datagram lost");
  CHECK(write(s, "ping", 4) == 4, "send to itself");
  CHECK(recv(s, b, sizeof b, MSG_DONTWAIT) == 4 && !memcmp(b, "ping", 4), "no datagram back");
  struct sockaddr_un peer;
  socklen_t len = sizeof peer;
  CHECK(getpeername(s, (struct sockaddr*)&peer, &len) == 0 && !strcmp(peer.sun_path, a.sun_path),
        "peer is not itself");
  return 0;
}

/* dead_thread_posix_timer: a POSIX timer aimed (SIGEV_THREAD_ID) at a thread that has exited.
 * Restored: the timer exists (with its id). */
static timer_t dead_thread_timer;
static void* make_thread_timer(void* arg) {
  (void)arg;
  struct sigevent ev = {.sigev_notify = SIGEV_THREAD_ID, .sigev_signo = SIGRTMIN};
  ev._sigev_un._tid = (pid_t)syscall(SYS_gettid);
  return timer_create(CLOCK_MONOTONIC, &ev, &dead_thread_timer) ? (void*)1 : NULL;
}
static int m_timer_dead_thread(void) {
  pthread_t t;
  void* r;
  SETUP(pthread_create(&t, NULL, make_thread_timer, NULL) == 0 && pthread_join(t, &r) == 0 &&
        r == NULL);
  ready_and_wait();
  struct itimerspec v;
  CHECK(timer_gettime(dead_thread_timer, &v) == 0, "the timer is gone");
  CHECK(timer_delete(dead_thread_timer) == 0, "timer_delete");
  return 0;
}

/* sk-freebind-false: a UDP socket bound to an address this host does not have while
 * IP_FREEBIND was on, turned off since. Restored: the same address, FREEBIND off. */
static int m_freebind_off(void) {
  struct sockaddr_in6 a = {.sin6_family = AF_INET6, .sin6_port = 0};
  SETUP(inet_pton(AF_INET6, "2001:db8::42:1", &a.sin6_addr) == 1);
  int s = socket(AF_INET6, SOCK_DGRAM, 0), on = 1, off = 0;
  SETUP(s >= 0 && setsockopt(s, SOL_IP, IP_FREEBIND, &on, sizeof on) == 0 &&
        bind(s, (struct sockaddr*)&a, sizeof a) == 0 &&
        setsockopt(s, SOL_IP, IP_FREEBIND, &off, sizeof off) == 0);
  struct sockaddr_in6 before, after;
  socklen_t len = sizeof before;
  SETUP(getsockname(s, (struct sockaddr*)&before, &len) == 0);
  ready_and_wait();
  len = sizeof after;
  CHECK(getsockname(s, (struct sockaddr*)&after, &len) == 0 &&
            !memcmp(&after.sin6_addr, &before.sin6_addr, sizeof after.sin6_addr) &&
            after.sin6_port == before.sin6_port,
        "bound elsewhere");
  int v = -1;
  len = sizeof v;
  CHECK(getsockopt(s, SOL_IP, IP_FREEBIND, &v, &len) == 0 && v == 0, "FREEBIND is %d", v);
  return 0;
}

/* maps06: thousands of small VMAs (a private mapping of one file page between anonymous pages,
 * each written). The dump's BPF VMA iterator went round without end past a few thousand VMAs
 * (the dump died of bad_alloc); it must fall back to smaps. Restored: every page's value. */
static int m_many_vmas(void) {
  enum { kN = 5000 };
  long ps = sysconf(_SC_PAGESIZE);
  int fd = open(path_in("vmas"), O_RDWR | O_CREAT, 0644);
  SETUP(fd >= 0 && ftruncate(fd, ps) == 0);
  char* base = mmap(NULL, (size_t)ps * kN * 3, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  SETUP(base != MAP_FAILED);
  for (int i = 0; i < kN; i++) {
    int* f = mmap(base + (size_t)i * 3 * ps, ps, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_FIXED,
                  fd, 0);
    int* a = mmap(base + ((size_t)i * 3 + 1) * ps, ps, PROT_READ | PROT_WRITE,
                  MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
    SETUP(f != MAP_FAILED && a != MAP_FAILED);
    f[0] = 2 * i;
    a[0] = i;
  }
  close(fd);
  ready_and_wait();
  for (int i = 0; i < kN; i++) {
    int* f = (int*)(base + (size_t)i * 3 * ps);
    int* a = (int*)(base + ((size_t)i * 3 + 1) * ps);
    CHECK(f[0] == 2 * i && a[0] == i, "VMA pair %d: %d %d", i, f[0], a[0]);
  }
  return 0;
}

/* chroot: a process chrooted into a directory without a chdir: its cwd stays outside its root
 * (getcwd says "(unreachable)..."). Restored: the same root (a file made in it by "/" name) and
 * the same cwd outside it (a relative name still opens the file next to it). */
static int m_chroot_cwd_outside(void) {
  int outf = open(path_in("outside"), O_RDWR | O_CREAT, 0644);
  SETUP(outf >= 0 && write(outf, "out", 3) == 3 && mkdir(path_in("root"), 0755) == 0);
  SETUP(chdir(dir) == 0 && chroot(path_in("root")) == 0);
  int inf = open("/inside", O_RDWR | O_CREAT, 0644);
  SETUP(inf >= 0 && write(inf, "in", 2) == 2);
  char cwd[512];
  SETUP(syscall(SYS_getcwd, cwd, sizeof cwd) > 0 && cwd[0] != '/');
  ready_and_wait();
  char buf[8] = {0};
  int f = open("/inside", O_RDONLY);
  CHECK(f >= 0 && read(f, buf, sizeof buf) == 2 && !memcmp(buf, "in", 2), "root moved");
  CHECK(syscall(SYS_getcwd, cwd, sizeof cwd) > 0 && cwd[0] != '/', "cwd now %s", cwd);
  f = open("outside", O_RDONLY);
  memset(buf, 0, sizeof buf);
  CHECK(f >= 0 && read(f, buf, sizeof buf) == 3 && !memcmp(buf, "out", 3), "cwd moved");
  CHECK(open(path_in("outside"), O_RDONLY) < 0, "not chrooted");
  return 0;
}

/* fanotify00 keeps /proc/self/fdinfo/N of its own fanotify fd open (a FILE it never closes).
 * Restored: the fdinfo file is of fd N, opened once fd N is back (it failed with ENOENT). */
static int m_own_fdinfo(void) {
  int efd = eventfd(7, 0);
  char p[64];
  snprintf(p, sizeof p, "/proc/self/fdinfo/%d", efd);
  int info = open(p, O_RDONLY);
  SETUP(efd >= 0 && info >= 0);
  ready_and_wait();
  char buf[512] = {0};
  CHECK(pread(info, buf, sizeof buf - 1, 0) > 0, "read fdinfo");
  CHECK(strstr(buf, "eventfd-count:") != NULL, "not the eventfd's fdinfo: %s", buf);
  struct stat a, b;
  snprintf(p, sizeof p, "/proc/%d/fdinfo/%d", getpid(), efd);
  CHECK(fstat(info, &a) == 0 && stat(p, &b) == 0 && a.st_ino == b.st_ino, "another fdinfo file");
  return 0;
}

/* pthread02: a process whose main thread called pthread_exit while another thread runs on (the
 * leader a zombie, the group alive). Not supported: the dump refuses, naming the live thread,
 * before it stops anything (it recorded the leader as a zombie and lost the thread). */
static int zl_pipe[2];
static void* zl_thread(void* arg) {
  (void)arg;
  char c;
  (void)!read(zl_pipe[0], &c, 1); /* EOF once the parent closes its end */
  exit(0);
}
static int m_zombie_leader_threads(void) {
  SETUP(pipe(zl_pipe) == 0);
  pid_t child = zfork();
  SETUP(child >= 0);
  if (child == 0) {
    close(zl_pipe[1]);
    pthread_t t;
    if (pthread_create(&t, NULL, zl_thread, NULL)) _exit(2);
    pthread_exit(NULL);
  }
  close(zl_pipe[0]);
  /* The child's leader is a zombie once its pthread_exit is through (no event tells its parent:
   * its group lives on): bounded wait on its state. */
  char p[64], st[512];
  snprintf(p, sizeof p, "/proc/%d/stat", child);
  int zombie = 0;
  for (int i = 0; i < 10000 && !zombie; i++) {
    int f = open(p, O_RDONLY);
    ssize_t n = f >= 0 ? read(f, st, sizeof st - 1) : -1;
    if (f >= 0) close(f);
    if (n > 0) {
      st[n] = 0;
      char* r = strrchr(st, ')');
      zombie = r && r[1] == ' ' && r[2] == 'Z';
    }
    if (!zombie) {
      struct timespec ts = {0, 1000000};
      nanosleep(&ts, NULL);
    }
  }
  SETUP(zombie);
  ready_and_wait();
  close(zl_pipe[1]);
  CHECK(reap(child) == 0, "the child's thread did not exit 0");
  return 0;
}

int main(int argc, char** argv) {
  int bad = zdtm_start(argc, argv);
  if (bad) return bad;
  static const struct zdtm_mode modes[] = {
      {"tcp_fin_wait2", m_tcp_fin_wait2},
      {"tcp_close_wait", m_tcp_close_wait},
      {"tcp_last_ack", m_tcp_last_ack},
      {"tcp_closing", m_tcp_closing},
      {"tcp_closed", m_tcp_closed},
      {"tcp_closed_last_ack", m_tcp_closed_last_ack},
      {"tcp_reseted", m_tcp_reseted},
      {"tcp_reuseport", m_tcp_reuseport},
      {"sock_opts02", m_sock_opts02},
      {"udp_senders", m_udp_senders},
      {"socket_ext", m_socket_ext},
      {"socket_aio", m_socket_aio},
      {"fifo_upon_unix00", m_fifo_upon_unix00},
      {"fifo_upon_unix01", m_fifo_upon_unix01},
      {"packet_spkt", m_packet_spkt},
      {"ghost_holes_large00", m_ghost_holes_large00},
      {"ghost_holes_large01", m_ghost_holes_large01},
      {"ghost_multi_hole", m_ghost_multi_hole},
      {"unlink_fstat04", m_unlink_fstat04},
      {"unlink_regular00", m_unlink_regular00},
      {"del_standalone_un", m_del_standalone_un},
      {"del_standalone_un_seqpacket", m_del_standalone_un_seqpacket},
      {"mtime_mmap", m_mtime_mmap},
      {"proc_self", m_proc_self},
      {"remap_dead_pid", m_remap_dead_pid},
      {"unhashed_proc", m_unhashed_proc},
      {"clone_fs", m_clone_fs},
      {"cpu_affinity", m_cpu_affinity},
      {"thread_creds", m_thread_creds},
      {"caps01", m_caps01},
      {"file_lease05", m_file_lease05},
      {"inotify04", m_inotify04},
      {"timers01", m_timers01},
      {"uffd_events", m_uffd_events},
      {"uptime_grow", m_uptime_grow},
      {"vdso_proxy", m_vdso_proxy},
      {"fd_from_pidfd", m_fd_from_pidfd},
      {"maps03", m_maps03},
      {"maps11", m_maps11},
      {"maps12", m_maps12},
      {"cgroups_v1", m_cgroups_v1},
      {"cgroup_threads", m_cgroup_threads},
      {"cgroupv2_00", m_cgroupv2_00},
      {"cgroup_ifpriomap", m_cgroup_ifpriomap},
      {"flock_inherited", m_flock_inherited},
      {"ghost_shared", m_ghost_shared},
      {"lease_write_breaking", m_lease_write_breaking},
      {"inotify_deleted", m_inotify_deleted},
      {"tmpfile", m_tmpfile},
      {"dgram_self", m_dgram_self},
      {"timer_dead_thread", m_timer_dead_thread},
      {"freebind_off", m_freebind_off},
      {"many_vmas", m_many_vmas},
      {"chroot_cwd_outside", m_chroot_cwd_outside},
      {"own_fdinfo", m_own_fdinfo},
      {"zombie_leader_threads", m_zombie_leader_threads},
  };
  return zdtm_run(argv[1], modes, sizeof modes / sizeof modes[0]);
}
