/* zdtm-style helpers for CRIU zdtm static tests that failed as CRIU's own binaries although
 * their earlier ports passed (own code; each test's .c says what state to set up and what to
 * check): z_port2 MODE READY_FD DIR, the protocol of zdtm_helper.h. Run by
 * tests/zdtm_port2_test.cc. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <net/if.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#include "zdtm_helper.h"

/* ---- tty00 (CRIU's): a session leader whose controlling terminal is open on no fd of it (it
 * opened the slave, which made it its terminal, and closed it); the parent holds the master.
 * After the restore the pty is still its terminal: closing the master hangs it up and the leader
 * gets SIGHUP. */
static int m_ctty_no_fd(void) {
  char name[64];
  int master = open_pty(name, sizeof name);
  int sync[2];
  SETUP(pipe(sync) == 0);
  pid_t c = zfork();
  if (c == 0) {
    close(sync[0]);
    close(master);
    ctty_leader_until_hup(name, 0, sync[1]);
  }
  close(sync[1]);
  char x;
  SETUP(read(sync[0], &x, 1) == 0);
  pid_t sid = 0;
  SETUP(ioctl(master, TIOCGSID, &sid) == 0 && sid == c);
  ready_and_wait();
  CHECK(ioctl(master, TIOCGSID, &sid) == 0, "the pty is nobody's terminal after the restore");
  CHECK(sid == c, "the pty is the terminal of session %d, not of %d", sid, c);
  CHECK(close(master) == 0, "close master");
  int r = reap(c);
  CHECK(r == 0, "the session leader got no SIGHUP (exit %d)", r);
  return 0;
}

/* ---- pty03 (CRIU's): a session leader that made the pty its terminal (TIOCSCTTY on the slave)
 * and closed the slave, keeping the master only. After the restore /dev/tty opens its terminal,
 * and what the master writes is read there. */
static int m_ctty_master_only(void) {
  int go[2], res[2];
  SETUP(pipe(go) == 0 && pipe(res) == 0);
  int sync[2];
  SETUP(pipe(sync) == 0);
  pid_t c = zfork();
  if (c == 0) {
    close(go[1]);
    close(res[0]);
    close(sync[0]);
    if (setsid() < 0) _exit(2);
    char name[64];
    int master = open_pty(name, sizeof name);
    int s = open(name, O_RDWR | O_NOCTTY);
    if (s < 0 || ioctl(s, TIOCSCTTY, 1) < 0) _exit(3);
    close(s);
    close(sync[1]);
    char x;
    if (read(go[0], &x, 1) != 0) _exit(4);
    int code = 0;
    int t = open("/dev/tty", O_RDWR);
    if (t < 0) code = 5;
    signal(SIGHUP, SIG_IGN);
    char buf[8] = {0};
    if (!code && write(master, "ping\n", 5) != 5) code = 6;
    if (!code && read(t, buf, 5) != 5) code = 7;
    if (!code && memcmp(buf, "ping\n", 5)) code = 8;
    if (write(res[1], &code, sizeof code) != sizeof code) _exit(9);
    _exit(0);
  }
  close(go[0]);
  close(res[1]);
  close(sync[1]);
  char x;
  SETUP(read(sync[0], &x, 1) == 0);
  ready_and_wait();
  close(go[1]);
  int code = -1;
  CHECK(read(res[0], &code, sizeof code) == sizeof code, "no result from the session leader");
  CHECK(code == 0, "the leader's terminal after the restore: step %d failed (5: /dev/tty, 7: read)",
        code);
  CHECK(reap(c) == 0, "the session leader failed");
  return 0;
}

/* ---- tty03 (CRIU's): the terminal of a session leader that holds no fd of it, while the master
 * is its parent's and the slave was opened by nobody else; a child of the leader left for a
 * session of its own. After the restore the pty is still the leader's terminal. */
static int m_ctty_other_session(void) {
  char name[64];
  int master = open_pty(name, sizeof name);
  int sync[2];
  SETUP(pipe(sync) == 0);
  pid_t c = zfork();
  if (c == 0) {
    close(sync[0]);
    close(master);
    if (setsid() < 0) _exit(2);
    int s = open(name, O_RDWR | O_NOCTTY);
    if (s < 0 || ioctl(s, TIOCSCTTY, 1) < 0) _exit(3);
    pid_t g = fork();
    if (g == 0) {
      close(s);
      if (setsid() < 0) _exit(2);
      close(sync[1]);
      pause();
      _exit(0);
    }
    close(s);
    close(sync[1]);
    pause();
    _exit(0);
  }
  close(sync[1]);
  char x;
  SETUP(read(sync[0], &x, 1) == 0);
  pid_t sid = 0;
  SETUP(ioctl(master, TIOCGSID, &sid) == 0 && sid == c);
  ready_and_wait();
  CHECK(ioctl(master, TIOCGSID, &sid) == 0, "the pty is nobody's terminal after the restore");
  CHECK(sid == c, "the pty is the terminal of session %d, not of %d", sid, c);
  kill(c, SIGKILL);
  reap(c);
  return 0;
}

/* ---- session00 DOUBLE_CHANGESID, session01 (CRIU's): a process in the session of a leader two
 * setsid calls above it: X leads a session and forks A; A forks B, then calls setsid; B forks C,
 * then calls setsid. C stays in X's session, B in B's, A in A's. */
static int m_setsid_chain(void) {
  int sync[2];
  SETUP(pipe(sync) == 0);
  pid_t* pids = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  SETUP(pids != MAP_FAILED);
  pid_t x = zfork();
  if (x == 0) {
    close(sync[0]);
    if (setsid() < 0) _exit(2);
    pids[0] = getpid();
    pid_t a = fork();
    if (a == 0) {
      pids[1] = getpid();
      pid_t b = fork();
      if (b == 0) {
        pids[2] = getpid();
        pid_t c = fork();
        if (c == 0) {
          pids[3] = getpid();
          close(sync[1]);
          pause();
          _exit(0);
        }
        if (setsid() < 0) _exit(2);
        close(sync[1]);
        pause();
        _exit(0);
      }
      if (setsid() < 0) _exit(2);
      close(sync[1]);
      pause();
      _exit(0);
    }
    close(sync[1]);
    pause();
    _exit(0);
  }
  close(sync[1]);
  char c;
  SETUP(read(sync[0], &c, 1) == 0);
  /* The chain as set up: C in X's session, A and B lead their own. */
  SETUP(getsid(pids[3]) == pids[0] && getsid(pids[2]) == pids[2] && getsid(pids[1]) == pids[1]);
  ready_and_wait();
  CHECK(getsid(pids[0]) == pids[0], "X leads no session");
  CHECK(getsid(pids[1]) == pids[1], "A: session %d", getsid(pids[1]));
  CHECK(getsid(pids[2]) == pids[2], "B: session %d", getsid(pids[2]));
  CHECK(getsid(pids[3]) == pids[0], "C: session %d, not X's %d", getsid(pids[3]), pids[0]);
  for (int i = 3; i >= 0; --i) kill(pids[i], SIGKILL);
  reap(x);
  return 0;
}

/* ---- socket-tcp-reseted (CRIU's): the dump comes before the server end learns that its peer
 * is gone. The client was reset (an nftables rule answered its ack of "asdas" with a reset) while
 * the server's "asdas" is unacked; the server's retransmissions are dropped (a rule on data
 * segments from its port) so that only a probe without data can reach the client's port. After
 * the restore the peer's reset must come at once: "asd" reads back and a write fails. */
static int tcp_state_of(int fd) {
  struct tcp_info ti;
  socklen_t len = sizeof ti;
  return getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) ? -1 : ti.tcpi_state;
}
static int nft(const char* fmt, int a, int b) {
  char cmd[512], c2[256];
  snprintf(c2, sizeof c2, fmt, a, b);
  snprintf(cmd, sizeof cmd, "nft '%s' >/dev/null 2>&1", c2);
  return system(cmd) == 0 ? 0 : -1;
}
static int m_tcp_reset_unacked(void) {
  int l = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t al = sizeof a;
  SETUP(l >= 0 && bind(l, (void*)&a, al) == 0 && listen(l, 4) == 0 &&
        getsockname(l, (void*)&a, &al) == 0);
  int port = ntohs(a.sin_port);
  int clt = socket(AF_INET, SOCK_STREAM, 0);
  SETUP(clt >= 0 && connect(clt, (void*)&a, sizeof a) == 0);
  int fd = accept(l, NULL, NULL);
  SETUP(fd >= 0 && write(clt, "asd", 3) == 3);
  FILE* rec = fopen(path_in("nft"), "w");
  SETUP(rec != NULL);
  fprintf(rec, "gwzport2%d\n", getpid());
  fclose(rec);
  SETUP(nft("add table inet gwzport2%d", getpid(), 0) == 0);
  SETUP(nft("add chain inet gwzport2%d in { type filter hook input priority 0; }", getpid(), 0) ==
        0);
  SETUP(nft("add chain inet gwzport2%d out { type filter hook output priority 0; }", getpid(),
            0) == 0);
  SETUP(nft("add rule inet gwzport2%d in tcp dport %d reject with tcp reset", getpid(), port) ==
        0);
  SETUP(write(fd, "asdas", 5) == 5);
  for (int i = 0; i < 2000 && tcp_state_of(clt) != TCP_CLOSE; i++) usleep(1000);
  SETUP(tcp_state_of(clt) == TCP_CLOSE);
  SETUP(nft("add rule inet gwzport2%d out tcp sport %d tcp flags & psh == psh drop", getpid(),
            port) == 0);
  SETUP(nft("flush chain inet gwzport2%d in", getpid(), 0) == 0);
  SETUP(tcp_state_of(fd) == TCP_ESTABLISHED);
  ready_and_wait();
  char buf[10];
  ssize_t n = read(fd, buf, sizeof buf);
  CHECK(n == 3 && !memcmp(buf, "asd", 3), "read %zd bytes", n);
  signal(SIGPIPE, SIG_IGN);
  n = write(fd, buf, 3);
  int e = errno;
  nft("delete table inet gwzport2%d", getpid(), 0);
  errno = e;
  CHECK(n == -1, "a write to the connection whose peer is gone succeeded (state %d)",
        tcp_state_of(fd));
  return 0;
}

/* ---- pidfd_of_thread (CRIU's): a pidfd of a thread other than the leader (PIDFD_THREAD). After
 * the restore it still names that thread: a signal sent through it with PIDFD_SIGNAL_THREAD
 * reaches the thread, which takes it with sigwaitinfo and ends. */
static pid_t pidfd_thread_tid;
static int pidfd_thread_got;
static void* pidfd_thread(void* arg) {
  sigset_t one;
  sigemptyset(&one);
  sigaddset(&one, SIGUSR1);
  pidfd_thread_tid = (pid_t)syscall(SYS_gettid);
  __atomic_store_n((int*)arg, 1, __ATOMIC_SEQ_CST);
  syscall(SYS_futex, arg, 1 /* FUTEX_WAKE */, 1, NULL, NULL, 0);
  int s;
  while ((s = sigwaitinfo(&one, NULL)) < 0 && errno == EINTR) {
  }
  pidfd_thread_got = s;
  return NULL;
}
static int m_pidfd_thread(void) {
  sigset_t one;
  sigemptyset(&one);
  sigaddset(&one, SIGUSR1);
  SETUP(sigprocmask(SIG_BLOCK, &one, NULL) == 0);
  static int started;
  pthread_t th;
  SETUP(pthread_create(&th, NULL, pidfd_thread, &started) == 0);
  while (!__atomic_load_n(&started, __ATOMIC_SEQ_CST))
    syscall(SYS_futex, &started, 0 /* FUTEX_WAIT */, 0, NULL, NULL, 0);
  int pidfd = (int)syscall(SYS_pidfd_open, pidfd_thread_tid, O_EXCL /* PIDFD_THREAD */);
  SETUP(pidfd >= 0);
  ready_and_wait();
  CHECK(syscall(SYS_pidfd_send_signal, pidfd, SIGUSR1, NULL, 1 /* PIDFD_SIGNAL_THREAD */) == 0,
        "pidfd_send_signal to thread %d", pidfd_thread_tid);
  CHECK(pthread_join(th, NULL) == 0, "join");
  CHECK(pidfd_thread_got == SIGUSR1, "the thread took %d", pidfd_thread_got);
  return 0;
}

/* ---- vdso02 (CRIU's): a process that unmapped its [vdso] and [vvar] (a kernel booted without
 * vdso, in short); this kernel's other data pages ([vvar_vclock]) stay. After the restore it has
 * neither again, and what it kept is where it was. */
static int find_map(pid_t pid, const char* name, unsigned long* start) {
  char path[64], line[512];
  snprintf(path, sizeof path, "/proc/%d/maps", pid);
  FILE* f = fopen(path, "re");
  if (!f) return -1;
  int found = 0;
  while (fgets(line, sizeof line, f))
    if (strstr(line, name) && sscanf(line, "%lx-", start) == 1) found = 1;
  fclose(f);
  return found;
}
static int m_vdso_unmapped(void) {
  int sync[2];
  SETUP(pipe(sync) == 0);
  unsigned long vd = 0, vv = 0, vc = 0;
  SETUP(find_map(getpid(), "[vdso]", &vd) == 1 && find_map(getpid(), "[vvar]", &vv) == 1);
  int had_vclock = find_map(getpid(), "[vvar_vclock]", &vc) == 1;
  pid_t c = zfork();
  if (c == 0) {
    close(sync[0]);
    char path[64], line[512];
    snprintf(path, sizeof path, "/proc/%d/maps", getpid());
    FILE* f = fopen(path, "re");
    unsigned long a[2][2];
    int n = 0;
    while (f && n < 2 && fgets(line, sizeof line, f))
      if ((strstr(line, "[vdso]") || strstr(line, "[vvar]\n")) &&
          sscanf(line, "%lx-%lx", &a[n][0], &a[n][1]) == 2)
        n++;
    if (f) fclose(f);
    for (int i = 0; i < n; ++i) syscall(SYS_munmap, a[i][0], a[i][1] - a[i][0]);
    syscall(SYS_close, sync[1]);
    for (;;) syscall(SYS_pause);
  }
  close(sync[1]);
  char x;
  SETUP(read(sync[0], &x, 1) == 0);
  unsigned long at = 0;
  SETUP(find_map(c, "[vdso]", &at) == 0 && find_map(c, "[vvar]", &at) == 0);
  ready_and_wait();
  CHECK(find_map(c, "[vdso]", &at) == 0, "the restored child has a [vdso] at %lx", at);
  CHECK(find_map(c, "[vvar]", &at) == 0, "the restored child has a [vvar] at %lx", at);
  if (had_vclock)
    CHECK(find_map(c, "[vvar_vclock]", &at) == 1 && at == vc, "[vvar_vclock] at %lx, not %lx",
          at, vc);
  kill(c, SIGKILL);
  reap(c);
  return 0;
}

/* ---- packet_sock_mmap (CRIU's): a packet socket's RX and TX rings mapped into memory (one
 * private mapping of both, as the test does). After the restore the mapping is at its address,
 * maps the socket, and is its live RX ring: a datagram looped back lands in a mapped frame. */
static int m_packet_ring_mapped(void) {
  int s = socket(AF_PACKET, SOCK_RAW, htons(ETH_P_ALL));
  SETUP(s >= 0);
  struct tpacket_req ring = {
      .tp_block_size = 4096, .tp_block_nr = 1, .tp_frame_size = 2048, .tp_frame_nr = 2};
  SETUP(setsockopt(s, SOL_PACKET, PACKET_RX_RING, &ring, sizeof ring) == 0);
  SETUP(setsockopt(s, SOL_PACKET, PACKET_TX_RING, &ring, sizeof ring) == 0);
  struct sockaddr_ll a = {.sll_family = AF_PACKET,
                          .sll_protocol = htons(ETH_P_ALL),
                          .sll_ifindex = (int)if_nametoindex("lo")};
  SETUP(a.sll_ifindex > 0 && bind(s, (void*)&a, sizeof a) == 0);
  char* m = mmap(NULL, 2 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE, s, 0);
  SETUP(m != MAP_FAILED);
  ready_and_wait();
  struct stat st;
  CHECK(fstat(s, &st) == 0, "fstat");
  char line[512];
  unsigned long long ino = 0;
  int found = 0;
  FILE* f = fopen("/proc/self/maps", "re");
  while (f && fgets(line, sizeof line, f)) {
    unsigned long start = 0;
    if (sscanf(line, "%lx-%*x %*s %*s %*s %llu", &start, &ino) == 2 && start == (unsigned long)m) {
      found = 1;
      break;
    }
  }
  if (f) fclose(f);
  CHECK(found, "no mapping at %p after the restore", (void*)m);
  CHECK(ino == (unsigned long long)st.st_ino,
        "the mapping at %p is of inode %llu, not the socket's %llu", (void*)m, ino,
        (unsigned long long)st.st_ino);
  int u = socket(AF_INET, SOCK_DGRAM, 0);
  struct sockaddr_in to = {
      .sin_family = AF_INET, .sin_port = htons(9), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  CHECK(u >= 0 && sendto(u, "ring", 4, 0, (void*)&to, sizeof to) == 4, "send a datagram on lo");
  struct pollfd pf = {.fd = s, .events = POLLIN};
  CHECK(poll(&pf, 1, 5000) == 1, "no frame in the rx ring");
  int user = 0;
  for (int i = 0; i < 2; ++i)
    user |= (((volatile struct tpacket_hdr*)(m + i * 2048))->tp_status & TP_STATUS_USER) != 0;
  CHECK(user, "the mapped frames do not show the packet the ring took");
  close(u);
  return 0;
}

/* ---- socket-tcp6-syn-sent (CRIU's, where its IPv4 firewall rule missed the IPv6 handshake):
 * a connection established to a listener of the same process that has not accepted it yet. After
 * the restore the listener accepts it, and bytes go both ways; the v4 client of a v6 wildcard
 * listener (v4-mapped peer) the same. */
static int m_tcp_peer_unaccepted(void) {
  int l6 = socket(AF_INET6, SOCK_STREAM | SOCK_NONBLOCK, 0);
  struct sockaddr_in6 a6 = {.sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT};
  socklen_t al = sizeof a6;
  SETUP(l6 >= 0 && bind(l6, (void*)&a6, al) == 0 && listen(l6, 4) == 0 &&
        getsockname(l6, (void*)&a6, &al) == 0);
  int c6 = socket(AF_INET6, SOCK_STREAM, 0);
  SETUP(c6 >= 0 && connect(c6, (void*)&a6, sizeof a6) == 0);
  int l4 = socket(AF_INET6, SOCK_STREAM | SOCK_NONBLOCK, 0);
  struct sockaddr_in6 any = {.sin6_family = AF_INET6, .sin6_addr = IN6ADDR_ANY_INIT};
  al = sizeof any;
  SETUP(l4 >= 0 && bind(l4, (void*)&any, al) == 0 && listen(l4, 4) == 0 &&
        getsockname(l4, (void*)&any, &al) == 0);
  struct sockaddr_in a4 = {
      .sin_family = AF_INET, .sin_port = any.sin6_port, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  int c4 = socket(AF_INET, SOCK_STREAM, 0);
  SETUP(c4 >= 0 && connect(c4, (void*)&a4, sizeof a4) == 0);
  struct sockaddr_storage me6, me4;
  socklen_t m6 = sizeof me6, m4 = sizeof me4;
  SETUP(getsockname(c6, (void*)&me6, &m6) == 0 && getsockname(c4, (void*)&me4, &m4) == 0);
  ready_and_wait();
  int ls[2] = {l6, l4}, cs[2] = {c6, c4};
  for (int i = 0; i < 2; ++i) {
    struct pollfd pf = {.fd = ls[i], .events = POLLIN};
    CHECK(poll(&pf, 1, 10000) == 1, "listener %d: the connection did not come back", i);
    int fd = accept(ls[i], NULL, NULL);
    CHECK(fd >= 0, "accept %d", i);
    char c = 5;
    CHECK(write(cs[i], &c, 1) == 1 && read(fd, &c, 1) == 1 && c == 5, "client -> server %d", i);
    c = 6;
    CHECK(write(fd, &c, 1) == 1 && read(cs[i], &c, 1) == 1 && c == 6, "server -> client %d", i);
    close(fd);
  }
  struct sockaddr_storage now;
  socklen_t nl = sizeof now;
  CHECK(getsockname(c6, (void*)&now, &nl) == 0 && nl == m6 && !memcmp(&now, &me6, m6),
        "the v6 client's address changed");
  nl = sizeof now;
  CHECK(getsockname(c4, (void*)&now, &nl) == 0 && nl == m4 && !memcmp(&now, &me4, m4),
        "the v4 client's address changed");
  return 0;
}

/* ---- poll (CRIU's, as the harness ran it): the restore wanted a pid whose process was still
 * exiting after `godwit dump` returned (killed, not yet a zombie its new parent could reap).
 * Children with threads and touched memory take a while to die: `godwit dump` returns only once
 * all of them are dead (the test checks that), and the restored ones are whole. */
#define DYING_KIDS 6
#define DYING_THREADS 12
static void* dying_thread(void* arg) {
  (void)arg;
  for (;;) pause();
  return NULL;
}
static int threads_of(pid_t p) {
  char path[64], line[256];
  snprintf(path, sizeof path, "/proc/%d/status", p);
  FILE* f = fopen(path, "r");
  int n = -1;
  if (!f) return -1;
  while (fgets(line, sizeof line, f))
    if (sscanf(line, "Threads: %d", &n) == 1) break;
  fclose(f);
  return n;
}
static int m_slow_to_die(void) {
  pid_t kids[DYING_KIDS];
  int sync[2];
  SETUP(pipe(sync) == 0);
  for (int i = 0; i < DYING_KIDS; ++i) {
    kids[i] = zfork();
    SETUP(kids[i] >= 0);
    if (kids[i] == 0) {
      close(sync[0]);
      size_t len = 16u << 20;
      char* m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (m == MAP_FAILED) _exit(2);
      for (size_t o = 0; o < len; o += 4096) m[o] = (char)(o >> 12);
      for (int t = 0; t < DYING_THREADS; ++t) {
        pthread_t th;
        if (pthread_create(&th, NULL, dying_thread, NULL) != 0) _exit(3);
      }
      close(sync[1]);
      for (;;) pause();
    }
  }
  close(sync[1]);
  char x;
  SETUP(read(sync[0], &x, 1) == 0);
  for (int i = 0; i < DYING_KIDS; ++i) SETUP(threads_of(kids[i]) == DYING_THREADS + 1);
  ready_and_wait();
  for (int i = 0; i < DYING_KIDS; ++i) {
    int n = threads_of(kids[i]);
    CHECK(n == DYING_THREADS + 1, "child %d has %d threads after the restore", kids[i], n);
    CHECK(kill(kids[i], SIGKILL) == 0, "kill %d", kids[i]);
    CHECK(reap(kids[i]) == 128 + SIGKILL, "reap %d", kids[i]);
  }
  return 0;
}

int main(int argc, char** argv) {
  int bad = zdtm_start(argc, argv);
  if (bad) return bad;
  static const struct zdtm_mode modes[] = {
      {"ctty_no_fd", m_ctty_no_fd},
      {"ctty_master_only", m_ctty_master_only},
      {"ctty_other_session", m_ctty_other_session},
      {"setsid_chain", m_setsid_chain},
      {"tcp_reset_unacked", m_tcp_reset_unacked},
      {"pidfd_thread", m_pidfd_thread},
      {"vdso_unmapped", m_vdso_unmapped},
      {"packet_ring_mapped", m_packet_ring_mapped},
      {"tcp_peer_unaccepted", m_tcp_peer_unaccepted},
      {"slow_to_die", m_slow_to_die},
  };
  return zdtm_run(argv[1], modes, sizeof modes / sizeof modes[0]);
}
