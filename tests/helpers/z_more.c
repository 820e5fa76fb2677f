/* zdtm-style helpers for the process state issue 11 found wrong after a restore (own code;
 * CRIU's zdtm static tests sigtrap, sigtrap01, seccomp_filter_tsync, membarrier and loginuid say
 * what state to set up): z_more MODE READY_FD DIR, the protocol of zdtm_helper.h. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/membarrier.h>
#include <linux/seccomp.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <netinet/udp.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/ioctl.h>
#include <sys/ptrace.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/sysmacros.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "zdtm_helper.h"

/* sigtrap: a SIGTRAP handler, and a SIGTRAP pending while blocked, read back by signalfd; an
 * ignored SIGTRAP in a child. Restore's (and dump's) ptrace traps must touch neither. */
static volatile sig_atomic_t traps;
static void on_trap(int sig) {
  (void)sig;
  traps++;
}
static int m_sigtrap(void) {
  struct sigaction sa = {.sa_handler = on_trap};
  SETUP(sigaction(SIGTRAP, &sa, NULL) == 0);
  sigset_t m;
  sigemptyset(&m);
  sigaddset(&m, SIGTRAP);
  int sfd = signalfd(-1, &m, SFD_NONBLOCK);
  SETUP(sfd >= 0);
  SETUP(sigprocmask(SIG_BLOCK, &m, NULL) == 0);
  SETUP(kill(getpid(), SIGTRAP) == 0);
  int p[2];
  SETUP(pipe(p) == 0);
  pid_t c = zfork();
  if (c == 0) {
    close(p[1]);
    signal(SIGTRAP, SIG_IGN);
    sigprocmask(SIG_UNBLOCK, &m, NULL);
    char b;
    if (read(p[0], &b, 1) != 1) _exit(2);
    struct sigaction now;
    if (sigaction(SIGTRAP, NULL, &now) || now.sa_handler != SIG_IGN) _exit(3);
    raise(SIGTRAP); /* ignored: nothing happens */
    _exit(0);
  }
  close(p[0]);
  ready_and_wait();
  struct sigaction now;
  CHECK(sigaction(SIGTRAP, NULL, &now) == 0 && now.sa_handler == on_trap, "handler %p",
        (void*)now.sa_handler);
  struct signalfd_siginfo si;
  CHECK(read(sfd, &si, sizeof si) == sizeof si && si.ssi_signo == SIGTRAP, "pending SIGTRAP");
  CHECK(sigprocmask(SIG_UNBLOCK, &m, NULL) == 0, "unblock");
  raise(SIGTRAP);
  CHECK(traps == 1, "the handler ran %d times", (int)traps);
  CHECK(write(p[1], "x", 1) == 1, "go");
  int st = reap(c);
  CHECK(st == 0, "child with SIGTRAP ignored ended with %d", st);
  return 0;
}

/* seccomp_filter_tsync: a filter installed before threads were made (the chain the threads
 * share); after the restore a TSYNC filter reaches every thread (it fails, returning the tid of a
 * thread whose chain is not an ancestor, if the restore gave each thread its own copy). */
static int seccomp_deny(int nr, unsigned flags) {
  struct sock_filter f[] = {
      BPF_STMT(BPF_LD + BPF_W + BPF_ABS, offsetof(struct seccomp_data, nr)),
      BPF_JUMP(BPF_JMP + BPF_JEQ + BPF_K, (unsigned)nr, 0, 1),
      BPF_STMT(BPF_RET + BPF_K, SECCOMP_RET_ERRNO | 77),
      BPF_STMT(BPF_RET + BPF_K, SECCOMP_RET_ALLOW),
  };
  struct sock_fprog prog = {.len = sizeof f / sizeof f[0], .filter = f};
  return (int)syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, flags, &prog);
}
static pthread_mutex_t tsync_go = PTHREAD_MUTEX_INITIALIZER;
static void* tsync_thread(void* arg) {
  (void)arg;
  pthread_mutex_lock(&tsync_go);
  pthread_mutex_unlock(&tsync_go);
  /* Denied by the TSYNC filter installed after the restore: EPERM would mean it missed us. */
  long r = syscall(SYS_getppid);
  long getpgid_r = syscall(SYS_getpgid, 0);
  return (void*)(intptr_t)((r == -1 && errno == 77 ? 1 : 0) + (getpgid_r == -1 ? 2 : 0));
}
static int m_seccomp_tsync(void) {
  SETUP(prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0);
  SETUP(seccomp_deny(SYS_getpgid, 0) == 0);
  pthread_t th[3];
  pthread_mutex_lock(&tsync_go);
  for (int i = 0; i < 3; i++) SETUP(pthread_create(&th[i], NULL, tsync_thread, NULL) == 0);
  ready_and_wait();
  int r = seccomp_deny(SYS_getppid, SECCOMP_FILTER_FLAG_TSYNC);
  CHECK(r == 0, "TSYNC filter: %d (the tid of a thread with another chain)", r);
  pthread_mutex_unlock(&tsync_go);
  for (int i = 0; i < 3; i++) {
    void* v = NULL;
    CHECK(pthread_join(th[i], &v) == 0, "join");
    CHECK((intptr_t)v == 3, "thread %d: filters seen %ld (1: getppid denied, 2: getpgid denied)",
          i, (long)(intptr_t)v);
  }
  errno = 0;
  CHECK(syscall(SYS_getppid) == -1 && errno == 77, "the main thread has the TSYNC filter");
  return 0;
}

/* membarrier: the process's registrations (private expedited, its sync-core and rseq variants,
 * global expedited) come back: the expedited commands work and GET_REGISTRATIONS agrees. */
static int membarrier(int cmd, unsigned flags) {
  return (int)syscall(SYS_membarrier, cmd, flags, 0);
}
static int m_membarrier(void) {
  int have = membarrier(MEMBARRIER_CMD_QUERY, 0);
  SETUP(have > 0);
  const int regs[] = {MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED,
                      MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED,
                      MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_SYNC_CORE,
                      MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_RSEQ};
  int want = 0;
  for (size_t i = 0; i < sizeof regs / sizeof regs[0]; i++) {
    if (!(have & regs[i])) continue;
    SETUP(membarrier(regs[i], 0) == 0);
    want |= regs[i];
  }
  int before = membarrier(1 << 9 /* GET_REGISTRATIONS */, 0);
  ready_and_wait();
  if (want & MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED)
    CHECK(membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0) == 0, "private expedited");
  if (want & MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_SYNC_CORE)
    CHECK(membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE, 0) == 0, "sync core");
  if (want & MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_RSEQ)
    CHECK(membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ, 0) == 0, "rseq");
  if (before >= 0) {
    int after = membarrier(1 << 9, 0);
    CHECK(after == before, "registrations %#x, were %#x", after, before);
  }
  return 0;
}

/* loginuid: /proc/self/loginuid set (once unset) comes back. */
static int rw_loginuid(const char* v, char* out) {
  int fd = open("/proc/self/loginuid", v ? O_RDWR : O_RDONLY);
  if (fd < 0) return -1;
  int r;
  if (v) {
    r = write(fd, v, strlen(v)) == (ssize_t)strlen(v) ? 0 : -1;
  } else {
    ssize_t n = read(fd, out, 15);
    r = n > 0 ? 0 : -1;
    out[n > 0 ? n : 0] = 0;
  }
  close(fd);
  return r;
}
static int m_loginuid(void) {
  char buf[16];
  if (rw_loginuid("4294967295", NULL) != 0) return 121; /* no audit loginuid here: skipped */
  SETUP(rw_loginuid("7", NULL) == 0);
  ready_and_wait();
  CHECK(rw_loginuid(NULL, buf) == 0 && strtoul(buf, NULL, 10) == 7, "loginuid %s", buf);
  return 0;
}

/* sock_filter: a classic BPF filter attached to sockets (SO_ATTACH_FILTER), one of them locked
 * (SO_LOCK_FILTER): the program and the lock come back, and the filter still filters. */
static int attach_len_filter(int s, unsigned keep) {
  /* Accept at most `keep` bytes of each packet (a packet filter's return value truncates). */
  struct sock_filter f[] = {BPF_STMT(BPF_RET + BPF_K, keep)};
  struct sock_fprog prog = {.len = 1, .filter = f};
  return setsockopt(s, SOL_SOCKET, SO_ATTACH_FILTER, &prog, sizeof prog);
}
static int filter_len(int s) {
  socklen_t n = 0;
  if (getsockopt(s, SOL_SOCKET, SO_GET_FILTER, NULL, &n) < 0) return -1;
  return (int)n;
}
static int m_sock_filter(void) {
  int u[2], d[2];
  SETUP(socketpair(AF_UNIX, SOCK_DGRAM, 0, u) == 0 && socketpair(AF_UNIX, SOCK_DGRAM, 0, d) == 0);
  SETUP(attach_len_filter(u[0], 3) == 0);
  SETUP(attach_len_filter(d[0], 5) == 0);
  int on = 1;
  SETUP(setsockopt(d[0], SOL_SOCKET, SO_LOCK_FILTER, &on, sizeof on) == 0);
  ready_and_wait();
  CHECK(filter_len(u[0]) == 1 && filter_len(d[0]) == 1, "filters %d %d", filter_len(u[0]),
        filter_len(d[0]));
  CHECK(filter_len(u[1]) == 0, "the peer has no filter: %d", filter_len(u[1]));
  int lock = 0;
  socklen_t ll = sizeof lock;
  CHECK(getsockopt(d[0], SOL_SOCKET, SO_LOCK_FILTER, &lock, &ll) == 0 && lock == 1, "locked");
  CHECK(getsockopt(u[0], SOL_SOCKET, SO_LOCK_FILTER, &lock, &ll) == 0 && lock == 0, "unlocked");
  char b[16];
  CHECK(write(u[1], "abcdefgh", 8) == 8 && read(u[0], b, sizeof b) == 3, "cut to 3");
  CHECK(write(d[1], "abcdefgh", 8) == 8 && read(d[0], b, sizeof b) == 5, "cut to 5");
  CHECK(setsockopt(d[0], SOL_SOCKET, SO_DETACH_FILTER, NULL, 0) < 0, "the lock holds");
  return 0;
}

/* socket_udp_shutdown: connected UDP sockets, one shut for writing, the other for reading. */
static int m_udp_shutdown(void) {
  struct sockaddr_in a1 = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(0x7f00000b)};
  struct sockaddr_in a2 = a1;
  socklen_t len = sizeof a1;
  int s1 = socket(AF_INET, SOCK_DGRAM, 0), s2 = socket(AF_INET, SOCK_DGRAM, 0);
  SETUP(s1 >= 0 && s2 >= 0);
  SETUP(bind(s1, (struct sockaddr*)&a1, len) == 0 && bind(s2, (struct sockaddr*)&a2, len) == 0);
  SETUP(getsockname(s1, (struct sockaddr*)&a1, &len) == 0);
  SETUP(getsockname(s2, (struct sockaddr*)&a2, &len) == 0);
  SETUP(connect(s1, (struct sockaddr*)&a2, len) == 0);
  SETUP(connect(s2, (struct sockaddr*)&a1, len) == 0);
  SETUP(shutdown(s1, SHUT_WR) == 0 && shutdown(s2, SHUT_RD) == 0);
  char b[16];
  SETUP(send(s2, "m1", 2, 0) == 2 && recv(s1, b, sizeof b, 0) == 2);
  ready_and_wait();
  CHECK(send(s2, "m2", 2, 0) == 2, "send on the read-shut socket");
  CHECK(recv(s1, b, sizeof b, 0) == 2 && !memcmp(b, "m2", 2), "receive on the write-shut one");
  CHECK(send(s1, "no", 2, MSG_NOSIGNAL) < 0 && errno == EPIPE, "the write-shut socket sends");
  struct pollfd pf = {.fd = s2, .events = POLLRDHUP};
  CHECK(poll(&pf, 1, 0) == 1 && (pf.revents & POLLRDHUP), "the read-shut socket polls RDHUP");
  pf.fd = s1;
  CHECK(poll(&pf, 1, 0) == 0, "the other is not read-shut");
  return 0;
}

/* zombie01: a zombie in a process group whose leader is gone (its parent made it with
 * CLONE_PARENT, so it is our child, then exited and was reaped); zombie_leader: a zombie that is
 * a session leader with a live child of its own session. */
static int m_zombie_pgid(void) {
  int p[2];
  SETUP(pipe(p) == 0);
  pid_t c = zfork();
  if (c == 0) {
    if (setpgid(0, 0)) _exit(1);
    pid_t z = (pid_t)syscall(SYS_clone, CLONE_PARENT | SIGCHLD, 0, 0, 0, 0);
    if (z == 0) _exit(0);
    if (z < 0 || write(p[1], &z, sizeof z) != sizeof z) _exit(2);
    _exit(0);
  }
  close(p[1]);
  pid_t z = 0;
  SETUP(read(p[0], &z, sizeof z) == sizeof z);
  SETUP(reap(c) == 0);
  siginfo_t si;
  SETUP(waitid(P_PID, z, &si, WEXITED | WNOWAIT) == 0);
  ready_and_wait();
  memset(&si, 0, sizeof si);
  CHECK(waitid(P_PID, z, &si, WEXITED | WNOWAIT) == 0 && si.si_pid == z, "zombie %d", z);
  CHECK(getpgid(z) == c, "pgid of the zombie %d: %d, want %d", z, getpgid(z), c);
  CHECK(reap(z) == 0, "reap");
  return 0;
}
static int m_zombie_leader(void) {
  int p[2];
  SETUP(pipe(p) == 0);
  /* The leader's child is reparented to us when the leader exits (the tree keeps it). */
  SETUP(prctl(PR_SET_CHILD_SUBREAPER, 1) == 0);
  pid_t l = zfork();
  if (l == 0) {
    setsid();
    pid_t k = fork();
    if (k == 0) {
      for (;;) pause();
    }
    if (write(p[1], &k, sizeof k) != sizeof k) _exit(2);
    _exit(0);
  }
  close(p[1]);
  pid_t k = 0;
  SETUP(read(p[0], &k, sizeof k) == sizeof k);
  siginfo_t si;
  SETUP(waitid(P_PID, l, &si, WEXITED | WNOWAIT) == 0);
  ready_and_wait();
  CHECK(getsid(k) == l, "session of the leader's child: %d, want %d", getsid(k), l);
  CHECK(waitid(P_PID, l, &si, WEXITED | WNOWAIT) == 0, "the zombie leader");
  CHECK(reap(l) == 0, "reap leader");
  kill(k, SIGKILL);
  return 0;
}

/* tcp_pair: an established loopback connection, both ends ours (the failed-restore test). */
static int m_tcp_pair(void) {
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t len = sizeof a;
  int l = socket(AF_INET, SOCK_STREAM, 0), c = socket(AF_INET, SOCK_STREAM, 0);
  SETUP(l >= 0 && c >= 0 && bind(l, (struct sockaddr*)&a, len) == 0 && listen(l, 1) == 0);
  SETUP(getsockname(l, (struct sockaddr*)&a, &len) == 0);
  SETUP(connect(c, (struct sockaddr*)&a, len) == 0);
  int s = accept(l, NULL, NULL);
  SETUP(s >= 0 && write(c, "hi", 2) == 2);
  ready_and_wait();
  char b[4];
  CHECK(read(s, b, sizeof b) == 2 && write(s, "yo", 2) == 2 && read(c, b, sizeof b) == 2,
        "the connection");
  return 0;
}

/* pty01/pty03: a pty pair after grantpt (the slave owned by a user, group tty, mode 0620): two
 * slave descriptions; owner, group and mode of /dev/pts/N come back with the same number. */
static int m_pty_owner(void) {
  int m = posix_openpt(O_RDWR | O_NOCTTY);
  SETUP(m >= 0 && grantpt(m) == 0 && unlockpt(m) == 0);
  char name[64];
  SETUP(ptsname_r(m, name, sizeof name) == 0);
  SETUP(chown(name, 4321, 5) == 0 && chmod(name, 0620) == 0);
  int s1 = open(name, O_RDWR | O_NOCTTY), s2 = open(name, O_RDWR | O_NOCTTY);
  SETUP(s1 >= 0 && s2 >= 0);
  struct stat before;
  SETUP(stat(name, &before) == 0);
  ready_and_wait();
  char now[64];
  CHECK(ptsname_r(m, now, sizeof now) == 0 && !strcmp(now, name), "%s, was %s", now, name);
  struct stat after;
  CHECK(fstat(s1, &after) == 0, "fstat");
  CHECK(after.st_uid == before.st_uid && after.st_gid == before.st_gid &&
            after.st_mode == before.st_mode,
        "%u:%u %o, was %u:%u %o", after.st_uid, after.st_gid, after.st_mode, before.st_uid,
        before.st_gid, before.st_mode);
  char b[8];
  CHECK(write(m, "ping\n", 5) == 5 && read(s1, b, 5) == 5 && !memcmp(b, "ping\n", 5), "s1");
  CHECK(write(m, "pong\n", 5) == 5 && read(s2, b, 5) == 5 && !memcmp(b, "pong\n", 5), "s2");
  return 0;
}

/* socket-tcp-fin-wait1 (v4, v6, v4-mapped v6): the tree's end of a connection with a full send
 * queue and a FIN queued behind it (FIN-WAIT-1); the peer is outside the tree (a grandchild
 * that its parent left: reparented to the test, a subreaper). After the restore the peer reads
 * everything, sends the rest of its message and its FIN, and says how much it got. */
static int tcp_connect_to(int family, int port) {
  int c = socket(family, SOCK_STREAM, 0);
  if (c < 0) return -1;
  int r;
  if (family == AF_INET) {
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    r = connect(c, (struct sockaddr*)&a, sizeof a);
  } else {
    struct sockaddr_in6 a = {.sin6_family = AF_INET6, .sin6_port = htons(port)};
    inet_pton(AF_INET6, "::1", &a.sin6_addr);
    r = connect(c, (struct sockaddr*)&a, sizeof a);
  }
  return r == 0 ? c : -1;
}
static int fin_wait1(int srv_family, int cli_family) {
  int l = socket(srv_family, SOCK_STREAM, 0);
  SETUP(l >= 0);
  int port;
  if (srv_family == AF_INET) {
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    SETUP(bind(l, (struct sockaddr*)&a, len) == 0);
    SETUP(getsockname(l, (struct sockaddr*)&a, &len) == 0);
    port = ntohs(a.sin_port);
  } else {
    struct sockaddr_in6 a = {.sin6_family = AF_INET6, .sin6_addr = in6addr_any};
    socklen_t len = sizeof a;
    int off = 0;
    SETUP(setsockopt(l, IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof off) == 0);
    SETUP(bind(l, (struct sockaddr*)&a, len) == 0);
    SETUP(getsockname(l, (struct sockaddr*)&a, &len) == 0);
    port = ntohs(a.sin6_port);
  }
  SETUP(listen(l, 2) == 0);
  static const char msg[] = "Hello World!";
  pid_t mid = zfork();
  if (mid == 0) {
    if (fork() != 0) _exit(0);
    /* The peer, outside the tree (it holds nothing of the tree's). */
    close(l);
    int fd = tcp_connect_to(cli_family, port);
    if (fd < 0 || write(fd, msg, 2) != 2) _exit(1);
    int ctl = tcp_connect_to(cli_family, port);
    char c;
    if (ctl < 0 || read(ctl, &c, 1) != 0) _exit(2);
    if (write(fd, msg + 2, sizeof msg - 2) != sizeof msg - 2 || shutdown(fd, SHUT_WR)) _exit(3);
    int got = 0;
    char buf[4096];
    for (ssize_t n; (n = read(fd, buf, sizeof buf)) != 0; got += (int)n)
      if (n < 0) _exit(4);
    if (write(ctl, &got, sizeof got) != sizeof got) _exit(5);
    _exit(0);
  }
  SETUP(reap(mid) == 0);
  int fd = accept(l, NULL, NULL);
  int ctl = accept(l, NULL, NULL);
  SETUP(fd >= 0 && ctl >= 0);
  int sent = fill_send(fd);
  SETUP(sent > 0 && shutdown(fd, SHUT_WR) == 0);
  ready_and_wait();
  CHECK(shutdown(ctl, SHUT_WR) == 0, "shutdown ctl");
  char buf[64];
  ssize_t n = recv(fd, buf, sizeof buf, MSG_WAITALL);
  CHECK(n == sizeof msg && !memcmp(buf, msg, sizeof msg), "the peer's message: %zd bytes", n);
  int got = 0;
  CHECK(read(ctl, &got, sizeof got) == sizeof got, "the peer's count");
  CHECK(got == sent, "the peer got %d of %d bytes", got, sent);
  return 0;
}
static int m_fin_wait1(void) { return fin_wait1(AF_INET, AF_INET); }
static int m_fin_wait1_v6(void) { return fin_wait1(AF_INET6, AF_INET6); }
static int m_fin_wait1_4v6(void) { return fin_wait1(AF_INET6, AF_INET); }

/* socket-tcp-syn-sent (v4, v6): a non-blocking connect still in SYN_SENT. The listener is outside
 * the tree (a grandchild left to the test, as in fin_wait1) with a backlog of 0 that one waiting
 * connection fills: it drops every SYN. The peer also holds a control connection to the tree.
 * After the restore the tree says "go" on it, the peer accepts the filler (room again), the next
 * SYN of the restored socket completes the handshake, and a byte goes each way. */
static int bind_loopback(int family, int fd, int* port) {
  if (family == AF_INET) {
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    if (bind(fd, (struct sockaddr*)&a, len) || getsockname(fd, (struct sockaddr*)&a, &len))
      return -1;
    *port = ntohs(a.sin_port);
  } else {
    struct sockaddr_in6 a = {.sin6_family = AF_INET6, .sin6_addr = in6addr_loopback};
    socklen_t len = sizeof a;
    if (bind(fd, (struct sockaddr*)&a, len) || getsockname(fd, (struct sockaddr*)&a, &len))
      return -1;
    *port = ntohs(a.sin6_port);
  }
  return 0;
}
static int tcp_state(int fd) {
  struct tcp_info ti;
  socklen_t len = sizeof ti;
  return getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) ? -1 : ti.tcpi_state;
}
static int syn_sent(int family) {
  int l = socket(family, SOCK_STREAM, 0), cl = socket(family, SOCK_STREAM, 0);
  int port, ctl_port;
  SETUP(l >= 0 && cl >= 0 && bind_loopback(family, l, &port) == 0 && listen(l, 0) == 0);
  SETUP(bind_loopback(family, cl, &ctl_port) == 0 && listen(cl, 1) == 0);
  pid_t mid = zfork();
  if (mid == 0) {
    if (fork() != 0) _exit(0);
    /* The peer, outside the tree. */
    close(cl);
    int filler = tcp_connect_to(family, port); /* waits in l's queue: it is full now */
    int ctl = tcp_connect_to(family, ctl_port);
    char c;
    if (filler < 0 || ctl < 0) _exit(1);
    if (read(ctl, &c, 1) != 1 || c != 'g') _exit(2);
    int a = accept(l, NULL, NULL); /* the filler: room for the restored SYN */
    int b = accept(l, NULL, NULL);
    if (a < 0 || b < 0) _exit(3);
    if (read(b, &c, 1) != 1) _exit(4);
    c++;
    if (write(b, &c, 1) != 1) _exit(5);
    if (read(b, &c, 1) != 0) _exit(6); /* until the tree closes */
    _exit(0);
  }
  SETUP(reap(mid) == 0);
  close(l);
  int ctl = accept(cl, NULL, NULL); /* after the filler */
  SETUP(ctl >= 0);
  close(cl);
  int sk = socket(family, SOCK_STREAM | SOCK_NONBLOCK, 0);
  SETUP(sk >= 0);
  int r;
  if (family == AF_INET) {
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    r = connect(sk, (struct sockaddr*)&a, sizeof a);
  } else {
    struct sockaddr_in6 a = {.sin6_family = AF_INET6, .sin6_port = htons(port),
                             .sin6_addr = in6addr_loopback};
    r = connect(sk, (struct sockaddr*)&a, sizeof a);
  }
  SETUP(r < 0 && errno == EINPROGRESS);
  SETUP(tcp_state(sk) == TCP_SYN_SENT);
  ready_and_wait();
  CHECK(tcp_state(sk) == TCP_SYN_SENT, "restored in state %d, not SYN_SENT", tcp_state(sk));
  CHECK(fcntl(sk, F_GETFL) & O_NONBLOCK, "O_NONBLOCK");
  CHECK(write(ctl, "g", 1) == 1, "go");
  struct pollfd pf = {.fd = sk, .events = POLLOUT};
  CHECK(poll(&pf, 1, 20000) == 1, "the handshake did not complete");
  int err = -1;
  socklen_t el = sizeof err;
  CHECK(getsockopt(sk, SOL_SOCKET, SO_ERROR, &err, &el) == 0 && err == 0, "SO_ERROR %d", err);
  CHECK(tcp_state(sk) == TCP_ESTABLISHED, "state %d", tcp_state(sk));
  fcntl(sk, F_SETFL, 0);
  char c = 5;
  CHECK(write(sk, &c, 1) == 1, "send");
  CHECK(read(sk, &c, 1) == 1 && c == 6, "the peer's answer %d", c);
  close(sk);
  close(ctl);
  return 0;
}
static int m_syn_sent(void) { return syn_sent(AF_INET); }
static int m_syn_sent_v6(void) { return syn_sent(AF_INET6); }

/* deleted_dev: a character device node (a copy of /dev/null's) opened and unlinked. */
static int m_deleted_dev(void) {
  struct stat null;
  SETUP(stat("/dev/null", &null) == 0);
  SETUP(mknod(path_in("dev"), S_IFCHR | 0640, null.st_rdev) == 0);
  int fd = open(path_in("dev"), O_RDWR);
  SETUP(fd >= 0 && unlink(path_in("dev")) == 0);
  ready_and_wait();
  struct stat st;
  CHECK(fstat(fd, &st) == 0 && S_ISCHR(st.st_mode) && st.st_rdev == null.st_rdev, "device");
  CHECK(st.st_nlink == 0, "still unlinked: %lu links", (unsigned long)st.st_nlink);
  CHECK((st.st_mode & 07777) == 0640, "mode %o", st.st_mode & 07777);
  CHECK(write(fd, "x", 1) == 1, "write to it");
  CHECK(access(path_in("dev"), F_OK) < 0, "nothing left at the path");
  return 0;
}

/* sk-freebind: sockets bound with IP_FREEBIND / IPV6_FREEBIND to addresses this host does not
 * have (the option has to be set again before the bind). */
static int m_freebind(void) {
  int on = 1;
  int u = socket(AF_INET, SOCK_DGRAM, 0), t = socket(AF_INET6, SOCK_STREAM, 0);
  SETUP(u >= 0 && t >= 0);
  SETUP(setsockopt(u, SOL_IP, IP_FREEBIND, &on, sizeof on) == 0);
  SETUP(setsockopt(t, SOL_IPV6, IPV6_FREEBIND, &on, sizeof on) == 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(34567)};
  inet_pton(AF_INET, "192.0.2.77", &a.sin_addr);
  SETUP(bind(u, (struct sockaddr*)&a, sizeof a) == 0);
  struct sockaddr_in6 b = {.sin6_family = AF_INET6, .sin6_port = htons(34568)};
  inet_pton(AF_INET6, "2001:db8::77", &b.sin6_addr);
  SETUP(bind(t, (struct sockaddr*)&b, sizeof b) == 0);
  ready_and_wait();
  int v = 0;
  socklen_t vl = sizeof v;
  CHECK(getsockopt(u, SOL_IP, IP_FREEBIND, &v, &vl) == 0 && v == 1, "IP_FREEBIND");
  CHECK(getsockopt(t, SOL_IPV6, IPV6_FREEBIND, &v, &vl) == 0 && v == 1, "IPV6_FREEBIND");
  struct sockaddr_in a2;
  socklen_t l = sizeof a2;
  CHECK(getsockname(u, (struct sockaddr*)&a2, &l) == 0 && a2.sin_addr.s_addr == a.sin_addr.s_addr &&
            a2.sin_port == a.sin_port, "v4 address");
  struct sockaddr_in6 b2;
  l = sizeof b2;
  CHECK(getsockname(t, (struct sockaddr*)&b2, &l) == 0 &&
            !memcmp(&b2.sin6_addr, &b.sin6_addr, 16) && b2.sin6_port == b.sin6_port,
        "v6 address");
  return 0;
}

/* cgroup00/cgroup04-like: a named cgroup v1 hierarchy mounted in DIR/cg with the root process
 * in "s<pid>" and a grandchild in "s<pid>/subsub", and (where cgroup2 is mounted) a cgroup2 group of
 * our own: after the restore each process is in the cgroups it was in. The test unmounts and
 * removes them afterwards (paths in DIR/cgroups). */
static char v2dir[512];
static int cg_join(const char* dir) {
  char p[600];
  mkdir(dir, 0755);
  snprintf(p, sizeof p, "%s/cgroup.procs", dir);
  int fd = open(p, O_WRONLY);
  if (fd < 0) return -1;
  int r = write(fd, "0", 1) == 1 ? 0 : -1;
  close(fd);
  return r;
}
static int cg_has(const char* line) {
  FILE* f = fopen("/proc/self/cgroup", "r");
  char buf[512];
  int found = 0;
  while (f && fgets(buf, sizeof buf, f)) {
    char* rest = strchr(buf, ':');
    if (rest && !strcmp(rest + 1, line)) found = 1;
  }
  if (f) fclose(f);
  return found;
}
static int m_cgroups(void) {
  /* One named hierarchy for every run (each run's own groups in it): a v1 hierarchy outlives
   * its last mount (the kernel keeps it for the next mount of that name), so a name per run
   * left one more behind each time. */
  char name[64], opts[96], mnt[512], sub[600], subsub[700], leaf[32];
  snprintf(name, sizeof name, "gwzdtm");
  snprintf(leaf, sizeof leaf, "s%d", getpid());
  snprintf(opts, sizeof opts, "none,name=%s", name);
  snprintf(mnt, sizeof mnt, "%s", path_in("cg"));
  SETUP(mkdir(mnt, 0700) == 0);
  FILE* rec = fopen(path_in("cgroups"), "w");
  SETUP(rec != NULL);
  SETUP(mount("none", mnt, "cgroup", 0, opts) == 0);
  fprintf(rec, "mount %s\n", mnt);
  snprintf(sub, sizeof sub, "%s/%s", mnt, leaf);
  snprintf(subsub, sizeof subsub, "%s/%s/subsub", mnt, leaf);
  fprintf(rec, "dir %s\ndir %s\n", subsub, sub);
  /* cgroup2, when mounted here (hybrid: /sys/fs/cgroup/unified): a group beside ours. */
  FILE* mi = fopen("/proc/self/mountinfo", "r");
  char line[1024];
  while (mi && fgets(line, sizeof line, mi)) {
    char* dash = strstr(line, " - cgroup2 ");
    char root[256], at[256];
    if (dash && sscanf(line, "%*s %*s %*s %255s %255s", root, at) == 2 && !strcmp(root, "/")) {
      snprintf(v2dir, sizeof v2dir, "%s/%s%s", at, name, leaf);
      break;
    }
  }
  if (mi) fclose(mi);
  if (v2dir[0]) fprintf(rec, "dir %s\n", v2dir);
  fclose(rec);
  SETUP(cg_join(sub) == 0);
  if (v2dir[0]) SETUP(cg_join(v2dir) == 0);
  int p[2], q[2];
  SETUP(pipe(p) == 0 && pipe(q) == 0);
  pid_t c = zfork();
  if (c == 0) {
    pid_t g = fork();
    if (g == 0) {
      if (cg_join(subsub)) _exit(1);
      char b = 1;
      if (write(q[1], &b, 1) != 1) _exit(2);
      if (read(p[0], &b, 1) != 1) _exit(3);
      char want[128];
      snprintf(want, sizeof want, "name=%s:/%s/subsub\n", name, leaf);
      _exit(cg_has(want) ? 0 : 4);
    }
    char b;
    if (read(p[0], &b, 1) != 1) _exit(5);
    char want[128];
    snprintf(want, sizeof want, "name=%s:/%s\n", name, leaf);
    if (!cg_has(want)) _exit(6);
    _exit(reap(g));
  }
  char b;
  SETUP(read(q[0], &b, 1) == 1);
  ready_and_wait();
  char want[128];
  snprintf(want, sizeof want, "name=%s:/%s\n", name, leaf);
  CHECK(cg_has(want), "the root is not in %s", want);
  if (v2dir[0]) {
    snprintf(want, sizeof want, ":/%s%s\n", name, leaf);
    CHECK(cg_has(want), "the root is not in cgroup2 %s", want);
  }
  CHECK(write(p[1], "gg", 2) == 2, "go");
  int st = reap(c);
  CHECK(st == 0, "child or grandchild in the wrong cgroup: %d", st);
  return 0;
}

/* rmdir_open: a directory held open (and one O_PATH) after rmdir. */
static int m_rmdir_open(void) {
  SETUP(mkdir(path_in("gone"), 0750) == 0);
  int fd = open(path_in("gone"), O_DIRECTORY | O_RDONLY);
  int op = open(path_in("gone"), O_PATH | O_DIRECTORY);
  SETUP(fd >= 0 && op >= 0 && rmdir(path_in("gone")) == 0);
  ready_and_wait();
  struct stat st, so;
  CHECK(fstat(fd, &st) == 0 && S_ISDIR(st.st_mode) && st.st_nlink == 0, "removed directory");
  CHECK((st.st_mode & 07777) == 0750, "mode %o", st.st_mode & 07777);
  CHECK(fstat(op, &so) == 0 && S_ISDIR(so.st_mode) && so.st_nlink == 0, "removed (O_PATH)");
  CHECK(openat(fd, "x", O_CREAT | O_WRONLY, 0600) < 0 && errno == ENOENT, "creating in it");
  CHECK(access(path_in("gone"), F_OK) < 0, "nothing left at the path");
  return 0;
}

/* tty03-like: a session leader whose controlling terminal is a pty of the tree holds /dev/tty
 * open: after the restore it is still its controlling terminal's /dev/tty. */
static int m_dev_tty(void) {
  int m = posix_openpt(O_RDWR | O_NOCTTY);
  SETUP(m >= 0 && grantpt(m) == 0 && unlockpt(m) == 0);
  char name[64];
  SETUP(ptsname_r(m, name, sizeof name) == 0);
  int p[2];
  SETUP(pipe(p) == 0);
  pid_t c = zfork();
  if (c == 0) {
    close(p[0]);
    if (setsid() < 0) _exit(1);
    int s = open(name, O_RDWR);
    if (s < 0 || ioctl(s, TIOCSCTTY, 0) < 0) _exit(2);
    int t = open("/dev/tty", O_RDWR);
    if (t < 0 || write(p[1], "r", 1) != 1) _exit(3);
    wait_usr2();
    if (write(t, "hi", 2) != 2) _exit(4);
    struct stat st;
    if (fstat(t, &st) < 0 || major(st.st_rdev) != 5 || minor(st.st_rdev) != 0) _exit(5);
    _exit(0);
  }
  close(p[1]);
  char b[8];
  SETUP(read(p[0], b, 1) == 1);
  ready_and_wait();
  kill(c, SIGUSR2);
  int st = reap(c);
  CHECK(st == 0, "the child's /dev/tty: %d", st);
  struct pollfd pf = {.fd = m, .events = POLLIN};
  CHECK(poll(&pf, 1, 5000) == 1 && read(m, b, sizeof b) == 2 && !memcmp(b, "hi", 2),
        "what it wrote to /dev/tty reaches the master");
  return 0;
}

/* unlink_fstat03: a file opened, linked under a second name, the first name unlinked, then
 * grown: the fd is the same inode (the second name's) after the restore, with its size. */
static int m_unlink_linked(void) {
  int fd = open(path_in("f"), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  SETUP(fd >= 0 && link(path_in("f"), path_in("f.link")) == 0 && unlink(path_in("f")) == 0);
  char buf[1000];
  memset(buf, '0', sizeof buf);
  SETUP(write(fd, buf, sizeof buf) == sizeof buf);
  struct stat before;
  SETUP(fstat(fd, &before) == 0);
  ready_and_wait();
  struct stat after, other;
  CHECK(fstat(fd, &after) == 0 && stat(path_in("f.link"), &other) == 0, "stat");
  CHECK(after.st_ino == before.st_ino && after.st_dev == before.st_dev, "another inode");
  CHECK(other.st_ino == after.st_ino, "the fd is not the linked name's file");
  CHECK(after.st_size == 1000 && lseek(fd, 0, SEEK_CUR) == 1000, "size %lld",
        (long long)after.st_size);
  CHECK(after.st_nlink == 1, "links %lu (a remap left behind)", (unsigned long)after.st_nlink);
  CHECK(write(fd, "x", 1) == 1 && stat(path_in("f.link"), &other) == 0 && other.st_size == 1001,
        "writes reach the linked name");
  return 0;
}

/* vdso unmapped (zdtm vdso02-like): the process removed its [vdso] and [vvar]: dumped and
 * restored without them, its own code still runs and the clock works by syscalls. */
static int unmap_named(const char* name) {
  FILE* f = fopen("/proc/self/maps", "r");
  char line[512];
  int n = 0;
  while (f && fgets(line, sizeof line, f)) {
    unsigned long a, b;
    if (strstr(line, name) && sscanf(line, "%lx-%lx", &a, &b) == 2 && munmap((void*)a, b - a) == 0)
      n++;
  }
  if (f) fclose(f);
  return n;
}
static int has_named(const char* name) {
  FILE* f = fopen("/proc/self/maps", "r");
  char line[512];
  int n = 0;
  while (f && fgets(line, sizeof line, f))
    if (strstr(line, name)) n++;
  if (f) fclose(f);
  return n;
}
static int m_vdso_unmapped(void) {
  SETUP(unmap_named("[vdso]") == 1);
  unmap_named("[vvar");
  SETUP(!has_named("[vdso]"));
  ready_and_wait();
  CHECK(!has_named("[vdso]"), "a [vdso] came back");
  struct timespec ts;
  CHECK(syscall(SYS_clock_gettime, CLOCK_MONOTONIC, &ts) == 0 && ts.tv_sec > 0, "clock");
  return 0;
}

/* chroot / chroot-file: a process chrooted into a directory, holding a file inside its root
 * (opened after the chroot) and one outside it (opened before). */
static int m_chroot(void) {
  SETUP(mkdir(path_in("root"), 0755) == 0 && mkdir(path_in("root/d"), 0755) == 0);
  int out = open(path_in("outside"), O_RDWR | O_CREAT, 0600);
  SETUP(out >= 0 && write(out, "out", 3) == 3);
  SETUP(chroot(path_in("root")) == 0 && chdir("/d") == 0);
  int in = open("/d/inside", O_RDWR | O_CREAT, 0600);
  SETUP(in >= 0 && write(in, "in", 2) == 2);
  ready_and_wait();
  char buf[8];
  CHECK(pread(in, buf, 2, 0) == 2 && !memcmp(buf, "in", 2), "inside");
  CHECK(pread(out, buf, 3, 0) == 3 && !memcmp(buf, "out", 3), "outside");
  CHECK(access("/d/inside", F_OK) == 0, "the root");
  CHECK(getcwd(buf, sizeof buf) && !strcmp(buf, "/d"), "cwd %s", buf);
  return 0;
}

/* socket_close_data(01): one end of a socketpair closed after sending, the data still queued at
 * the other end (datagram and stream). */
static int m_close_data(void) {
  int d[2], t[2];
  SETUP(socketpair(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK, 0, d) == 0);
  SETUP(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, t) == 0);
  SETUP(write(d[1], "hello", 6) == 6 && write(t[1], "world", 6) == 6);
  close(d[1]);
  close(t[1]);
  ready_and_wait();
  char buf[16];
  CHECK(read(d[0], buf, sizeof buf) == 6 && !strcmp(buf, "hello"), "datagram");
  CHECK(read(t[0], buf, sizeof buf) == 6 && !strcmp(buf, "world"), "stream");
  CHECK(read(t[0], buf, sizeof buf) == 0, "then end of file");
  return 0;
}

/* pty04: two slave descriptions of a pty whose master was closed (hung up), one the
 * controlling terminal of a session leader that ignores SIGHUP. Restored hung up: reads end
 * of file, writes fail with EIO, still a pty slave, and no controlling terminal. */
static int m_pty_no_master(void) {
  int p[2];
  SETUP(pipe(p) == 0);
  pid_t c = zfork();
  if (c == 0) {
    close(p[0]);
    signal(SIGHUP, SIG_IGN);
    if (setsid() < 0) _exit(1);
    int m = posix_openpt(O_RDWR | O_NOCTTY);
    char name[64];
    if (m < 0 || grantpt(m) || unlockpt(m) || ptsname_r(m, name, sizeof name)) _exit(2);
    int s1 = open(name, O_RDWR), s2 = open(name, O_RDWR | O_NOCTTY);
    if (s1 < 0 || s2 < 0 || ioctl(s1, TIOCSCTTY, 0) < 0) _exit(3);
    close(m);
    if (write(p[1], "r", 1) != 1) _exit(4);
    wait_usr2();
    char b;
    if (read(s1, &b, 1) != 0 || read(s2, &b, 1) != 0) _exit(6); /* hung up: end of file */
    if (write(s1, "x", 1) != -1 || errno != EIO) _exit(8);       /* and writes fail */
    struct stat st;
    if (fstat(s2, &st) || !S_ISCHR(st.st_mode) || major(st.st_rdev) < 136 ||
        major(st.st_rdev) > 143)
      _exit(9); /* still a pty slave */
    if (open("/dev/tty", O_RDWR) >= 0) _exit(10); /* no controlling terminal any more */
    if (close(s1) || close(s2)) _exit(7);
    _exit(0);
  }
  close(p[1]);
  char b;
  SETUP(read(p[0], &b, 1) == 1);
  ready_and_wait();
  kill(c, SIGUSR2);
  int st = reap(c);
  CHECK(st == 0, "the session leader's hung-up pty: %d", st);
  return 0;
}

/* fifo_ro: a FIFO held only by a reader (non-blocking); unlink_fifo_wronly: an unlinked FIFO
 * held by a writer (opened while a reader existed, which then closed). */
static int m_fifo_ro(void) {
  signal(SIGPIPE, SIG_IGN);
  SETUP(mkfifo(path_in("ro"), 0600) == 0 && mkfifo(path_in("wo"), 0600) == 0);
  int r = open(path_in("ro"), O_RDONLY | O_NONBLOCK);
  int tmp = open(path_in("wo"), O_RDONLY | O_NONBLOCK);
  int w = open(path_in("wo"), O_WRONLY | O_NONBLOCK);
  SETUP(r >= 0 && tmp >= 0 && w >= 0 && write(w, "abc", 3) == 3);
  close(tmp);
  SETUP(unlink(path_in("wo")) == 0);
  ready_and_wait();
  char b[8];
  CHECK(read(r, b, sizeof b) == 0, "no writer: end of file");
  CHECK((fcntl(r, F_GETFL) & O_ACCMODE) == O_RDONLY, "read-only");
  CHECK((fcntl(w, F_GETFL) & O_ACCMODE) == O_WRONLY, "write-only");
  struct stat st;
  CHECK(fstat(w, &st) == 0 && S_ISFIFO(st.st_mode) && st.st_nlink == 0, "unlinked FIFO");
  CHECK(write(w, "d", 1) < 0 && errno == EPIPE, "no reader: EPIPE");
  return 0;
}

/* sock_ip_opts00/01, sock_tcp_opts00/01: IP- and TCP-level options on unconnected sockets (UDP
 * and raw, v4 and v6; TCP v4 and v6), set to 1 on one socket of each kind and to 0 on another
 * (where 0 is not a fresh socket's value: TCP_QUICKACK, IP_MULTICAST_LOOP), and a few more
 * (IP_RECVERR, IP_MTU_DISCOVER, TCP_USER_TIMEOUT, UDP_SEGMENT), all read back the same. */
struct ip_opt {
  int level, opt, val;
};
static int set_all(int s, const struct ip_opt* o, int n) {
  for (int i = 0; i < n; ++i)
    if (setsockopt(s, o[i].level, o[i].opt, &o[i].val, sizeof(int)) < 0) return -1;
  return 0;
}
static int check_all(int s, const struct ip_opt* o, int n, const char* what) {
  for (int i = 0; i < n; ++i) {
    int v = -1;
    socklen_t l = sizeof v;
    CHECK(getsockopt(s, o[i].level, o[i].opt, &v, &l) == 0 && v == o[i].val,
          "%s: option %d/%d is %d, want %d", what, o[i].level, o[i].opt, v, o[i].val);
  }
  return 0;
}
static int m_sock_ip_tcp_opts(void) {
  const struct ip_opt v4[] = {{SOL_IP, IP_FREEBIND, 1}, {SOL_IP, IP_PKTINFO, 1},
                              {SOL_IP, IP_RECVERR, 1}, {SOL_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO},
                              {SOL_IP, IP_MULTICAST_LOOP, 0}, {SOL_IP, IP_RECVTOS, 1}};
  const struct ip_opt v6[] = {{SOL_IPV6, 78 /* IPV6_FREEBIND */, 1}, {SOL_IPV6, IPV6_RECVPKTINFO, 1},
                              {SOL_IPV6, IPV6_RECVERR, 1}, {SOL_IPV6, IPV6_MULTICAST_LOOP, 0},
                              {SOL_IPV6, IPV6_RECVHOPLIMIT, 1}};
  const struct ip_opt tcp1[] = {{SOL_TCP, TCP_CORK, 1}, {SOL_TCP, TCP_NODELAY, 1},
                                {SOL_TCP, TCP_QUICKACK, 1}, {SOL_TCP, TCP_USER_TIMEOUT, 4321}};
  const struct ip_opt tcp0[] = {{SOL_TCP, TCP_CORK, 0}, {SOL_TCP, TCP_NODELAY, 0},
                                {SOL_TCP, TCP_QUICKACK, 0}};
  const struct ip_opt udp[] = {{SOL_UDP, 103 /* UDP_SEGMENT */, 1000}};
  int u4 = socket(AF_INET, SOCK_DGRAM, IPPROTO_UDP), r4 = socket(AF_INET, SOCK_RAW, IPPROTO_UDP);
  int u6 = socket(AF_INET6, SOCK_DGRAM, IPPROTO_UDP), r6 = socket(AF_INET6, SOCK_RAW, IPPROTO_UDP);
  int t4 = socket(AF_INET, SOCK_STREAM, 0), t6 = socket(AF_INET6, SOCK_STREAM, 0);
  int z4 = socket(AF_INET, SOCK_STREAM, 0), z6 = socket(AF_INET6, SOCK_STREAM, 0);
  SETUP(u4 >= 0 && r4 >= 0 && u6 >= 0 && r6 >= 0 && t4 >= 0 && t6 >= 0 && z4 >= 0 && z6 >= 0);
  SETUP(set_all(u4, v4, 6) == 0 && set_all(r4, v4, 6) == 0 && set_all(u4, udp, 1) == 0);
  SETUP(set_all(u6, v6, 5) == 0 && set_all(r6, v6, 5) == 0);
  SETUP(set_all(t4, tcp1, 4) == 0 && set_all(t6, tcp1, 4) == 0);
  SETUP(set_all(z4, tcp0, 3) == 0 && set_all(z6, tcp0, 3) == 0);
  ready_and_wait();
  check_all(u4, v4, 6, "udp4");
  check_all(u4, udp, 1, "udp4 segment");
  check_all(r4, v4, 6, "raw4");
  check_all(u6, v6, 5, "udp6");
  check_all(r6, v6, 5, "raw6");
  check_all(t4, tcp1, 4, "tcp4");
  check_all(t6, tcp1, 4, "tcp6");
  check_all(z4, tcp0, 3, "tcp4 zero");
  check_all(z6, tcp0, 3, "tcp6 zero");
  return 0;
}

/* socket_snd_addr: datagrams queued on a named socket from named senders, one closed since the
 * send (abstract), one still open (abstract), one closed whose name was a path: recvmsg names
 * each sender after the restore. */
static socklen_t un_addr(struct sockaddr_un* a, const char* name, size_t len) {
  memset(a, 0, sizeof *a);
  a->sun_family = AF_UNIX;
  memcpy(a->sun_path, name, len);
  return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len);
}
static int m_snd_addr(void) {
  char srv_name[64], a_name[64], b_name[64];
  int n = snprintf(srv_name, sizeof srv_name, "%czsrv-%d", 0, getpid());
  snprintf(a_name, sizeof a_name, "%czA-%d", 0, getpid());
  snprintf(b_name, sizeof b_name, "%czB-%d", 0, getpid());
  const char* c_path = path_in("sender.sock");
  struct sockaddr_un sa;
  int srv = socket(AF_UNIX, SOCK_DGRAM, 0);
  SETUP(srv >= 0 && bind(srv, (struct sockaddr*)&sa, un_addr(&sa, srv_name, (size_t)n)) == 0);
  const char* names[3] = {a_name, b_name, c_path};
  size_t lens[3] = {(size_t)n - 1, (size_t)n - 1, strlen(c_path)};
  int keep = -1;
  for (int i = 0; i < 3; ++i) {
    int c = socket(AF_UNIX, SOCK_DGRAM, 0);
    SETUP(c >= 0 && bind(c, (struct sockaddr*)&sa, un_addr(&sa, names[i], lens[i])) == 0);
    SETUP(sendto(c, "hello", 6, 0, (struct sockaddr*)&sa, un_addr(&sa, srv_name, (size_t)n)) == 6);
    if (i == 1)
      keep = c;
    else
      close(c);
  }
  SETUP(unlink(c_path) == 0);
  ready_and_wait();
  for (int i = 0; i < 3; ++i) {
    char buf[16];
    struct sockaddr_un from;
    socklen_t fl = sizeof from;
    memset(&from, 0, sizeof from);
    ssize_t r = recvfrom(srv, buf, sizeof buf, MSG_DONTWAIT, (struct sockaddr*)&from, &fl);
    CHECK(r == 6 && !strcmp(buf, "hello"), "message %d: %zd", i, r);
    CHECK(fl == offsetof(struct sockaddr_un, sun_path) + lens[i] + (i == 2 ? 1 : 0) &&
              !memcmp(from.sun_path, names[i], lens[i]),
          "sender %d: %u bytes, %s", i, fl, from.sun_path[0] ? from.sun_path : from.sun_path + 1);
  }
  struct sockaddr_un own;
  socklen_t ol = sizeof own;
  CHECK(getsockname(keep, (struct sockaddr*)&own, &ol) == 0 && !memcmp(own.sun_path, b_name, lens[1]),
        "the live sender keeps its name");
  return 0;
}

int main(int argc, char** argv) {
  int bad = zdtm_start(argc, argv);
  if (bad) return bad;
  static const struct zdtm_mode modes[] = {
      {"sigtrap", m_sigtrap},
      {"seccomp_tsync", m_seccomp_tsync},
      {"membarrier", m_membarrier},
      {"loginuid", m_loginuid},
      {"sock_filter", m_sock_filter},
      {"udp_shutdown", m_udp_shutdown},
      {"zombie_pgid", m_zombie_pgid},
      {"zombie_leader", m_zombie_leader},
      {"tcp_pair", m_tcp_pair},
      {"pty_owner", m_pty_owner},
      {"fin_wait1", m_fin_wait1},
      {"deleted_dev", m_deleted_dev},
      {"freebind", m_freebind},
      {"cgroups", m_cgroups},
      {"rmdir_open", m_rmdir_open},
      {"dev_tty", m_dev_tty},
      {"unlink_linked", m_unlink_linked},
      {"vdso_unmapped", m_vdso_unmapped},
      {"chroot", m_chroot},
      {"close_data", m_close_data},
      {"pty_no_master", m_pty_no_master},
      {"fifo_ro", m_fifo_ro},
      {"fin_wait1_v6", m_fin_wait1_v6},
      {"fin_wait1_4v6", m_fin_wait1_4v6},
      {"syn_sent", m_syn_sent},
      {"syn_sent_v6", m_syn_sent_v6},
      {"sock_ip_tcp_opts", m_sock_ip_tcp_opts},
      {"snd_addr", m_snd_addr},
  };
  return zdtm_run(argv[1], modes, sizeof modes / sizeof modes[0]);
}
