/* zdtm-style helpers for the fd kinds of issue 11 (own code; CRIU's zdtm static tests symlink,
 * symlink01, pidfd_self, pidfd_child, pidfd_kill, pidfd_dead, pidfd_diffdead, pidfd_of_thread,
 * socket_udplite and socket_icmp say what state to set up): z_kinds MODE READY_FD DIR, the
 * protocol of zdtm_helper.h. Kinds godwit refuses keep the refused fd at 77. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <netinet/in.h>
#include <netinet/ip.h>
#include <netinet/ip_icmp.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "zdtm_helper.h"

static int pidfd_open(pid_t pid, unsigned flags) {
  return (int)syscall(SYS_pidfd_open, pid, flags);
}
static int pidfd_send_signal(int fd, int sig) {
  return (int)syscall(SYS_pidfd_send_signal, fd, sig, NULL, 0);
}
/* fd moved to number n. */
static int at(int fd, int n) {
  SETUP(fd >= 0 && dup2(fd, n) == n && close(fd) == 0);
  return n;
}
/* The "Pid:" line of /proc/self/fdinfo/fd, or -2. */
static int fdinfo_pid(int fd) {
  char p[64], line[256];
  snprintf(p, sizeof p, "/proc/self/fdinfo/%d", fd);
  FILE* f = fopen(p, "re");
  int pid = -2;
  if (!f) return -2;
  while (fgets(line, sizeof line, f)) sscanf(line, "Pid: %d", &pid);
  fclose(f);
  return pid;
}
static ino_t ino_of(int fd) {
  struct stat st;
  return fstat(fd, &st) == 0 ? st.st_ino : 0;
}
/* Children wait for the parent's word over a pipe (the parent gets SIGUSR2). */
static int go_pipe[2];
static void go_init(void) { SETUP(pipe(go_pipe) == 0); }
static void child_wait_go(void) {
  char c;
  close(go_pipe[1]);
  SETUP(read(go_pipe[0], &c, 1) == 0);
}
static void go_children(void) { close(go_pipe[1]); }

/* symlink / symlink01: a symlink held O_PATH|O_NOFOLLOW, its name kept or unlinked. */
static int symlink_mode(int unlink_it) {
  char file[512];
  snprintf(file, sizeof file, "%s", path_in("test_file"));
  const char* ln = path_in("test_symlink");
  int f = open(file, O_CREAT | O_WRONLY, 0644);
  SETUP(f >= 0 && close(f) == 0 && symlink(file, ln) == 0);
  int fd = at(open(ln, O_PATH | O_NOFOLLOW), 50);
  struct stat before;
  SETUP(fstat(fd, &before) == 0 && S_ISLNK(before.st_mode));
  if (unlink_it) SETUP(unlink(ln) == 0);
  ready_and_wait();
  struct stat st;
  CHECK(fstat(fd, &st) == 0 && S_ISLNK(st.st_mode), "fd 50 is no symlink (mode %o)", st.st_mode);
  CHECK(fcntl(fd, F_GETFL) & O_PATH, "O_PATH lost");
  char buf[512];
  ssize_t n = readlinkat(fd, "", buf, sizeof buf - 1);
  CHECK(n > 0, "readlinkat");
  buf[n] = 0;
  CHECK(!strcmp(buf, file), "points to %s, want %s", buf, file);
  if (unlink_it) {
    CHECK(st.st_nlink == 0, "the symlink has %d links, want 0", (int)st.st_nlink);
    CHECK(access(ln, F_OK) < 0 && errno == ENOENT, "the unlinked name came back");
  } else {
    struct stat now;
    CHECK(lstat(ln, &now) == 0 && now.st_ino == st.st_ino, "another symlink");
  }
  return 0;
}
static int m_symlink(void) { return symlink_mode(0); }
static int m_symlink01(void) { return symlink_mode(1); }

/* O_PATH on a FIFO, a stale socket file, /dev/null, a directory and a regular file. */
static int m_opath_misc(void) {
  const char* fifo = path_in("fifo");
  const char* sock = path_in("sock");
  const char* reg = path_in("reg");
  SETUP(mkfifo(fifo, 0600) == 0);
  int s = socket(AF_UNIX, SOCK_STREAM, 0);
  struct sockaddr_un a = {.sun_family = AF_UNIX};
  snprintf(a.sun_path, sizeof a.sun_path, "%s", sock);
  SETUP(bind(s, (void*)&a, sizeof a) == 0 && close(s) == 0); /* the file stays, the socket not */
  int r = open(reg, O_CREAT | O_WRONLY, 0600);
  SETUP(r >= 0 && write(r, "data", 4) == 4 && close(r) == 0);
  int fds[5] = {at(open(fifo, O_PATH), 51), at(open(sock, O_PATH), 52),
                at(open("/dev/null", O_PATH), 53), at(open(dir, O_PATH | O_DIRECTORY), 54),
                at(open(reg, O_PATH), 55)};
  const char* paths[5] = {fifo, sock, "/dev/null", dir, reg};
  ready_and_wait();
  for (int i = 0; i < 5; i++) {
    struct stat st, want;
    CHECK(fstat(fds[i], &st) == 0 && stat(paths[i], &want) == 0, "stat %s", paths[i]);
    CHECK(st.st_ino == want.st_ino && st.st_dev == want.st_dev, "fd %d is not %s", fds[i],
          paths[i]);
    CHECK(fcntl(fds[i], F_GETFL) & O_PATH, "fd %d lost O_PATH", fds[i]);
  }
  char buf[8] = {};
  int f = openat(fds[3], "reg", O_RDONLY);
  CHECK(f >= 0 && read(f, buf, 8) == 4 && !memcmp(buf, "data", 4), "openat the O_PATH directory");
  return 0;
}

/* Namespace files of the process's own namespaces, plain and O_PATH. */
static int m_nsfs(void) {
  int net = at(open("/proc/self/ns/net", O_RDONLY), 56);
  int uts = at(open("/proc/self/ns/uts", O_PATH), 57);
  int pfc = at(open("/proc/self/ns/pid_for_children", O_RDONLY), 58);
  ready_and_wait();
  struct stat st;
  CHECK(stat("/proc/self/ns/net", &st) == 0 && ino_of(net) == st.st_ino, "net");
  CHECK(stat("/proc/self/ns/uts", &st) == 0 && ino_of(uts) == st.st_ino, "uts");
  CHECK(fcntl(uts, F_GETFL) & O_PATH, "uts lost O_PATH");
  CHECK(stat("/proc/self/ns/pid_for_children", &st) == 0 && ino_of(pfc) == st.st_ino, "pid4c");
  CHECK(setns(net, CLONE_NEWNET) == 0, "setns on the restored net namespace fd");
  return 0;
}

/* A net namespace kept only by an fd (its creator is gone): refused. */
static int m_nsfs_other(void) {
  int sync[2];
  SETUP(pipe(sync) == 0);
  pid_t c = zfork();
  if (c == 0) {
    close(sync[0]);
    if (unshare(CLONE_NEWNET) < 0) _exit(2);
    close(sync[1]);
    pause();
    _exit(0);
  }
  close(sync[1]);
  char x;
  SETUP(read(sync[0], &x, 1) == 0);
  char p[64];
  snprintf(p, sizeof p, "/proc/%d/ns/net", c);
  int fd = at(open(p, O_RDONLY), 77);
  SETUP(kill(c, SIGKILL) == 0 && reap(c) == 128 + SIGKILL);
  ready_and_wait();
  CHECK(fcntl(fd, F_GETFD) >= 0, "fd");
  return 0;
}

/* pidfd_self: a pidfd of the process itself, one of them non-blocking. */
static int m_pidfd_self(void) {
  int fd = at(pidfd_open(getpid(), 0), 60);
  int nb = at(pidfd_open(getpid(), O_NONBLOCK), 61);
  ready_and_wait();
  CHECK(fdinfo_pid(fd) == getpid(), "Pid: %d, want %d", fdinfo_pid(fd), getpid());
  CHECK(fdinfo_pid(nb) == getpid(), "non-blocking: Pid: %d", fdinfo_pid(nb));
  CHECK(fcntl(nb, F_GETFL) & O_NONBLOCK, "PIDFD_NONBLOCK lost");
  CHECK(!(fcntl(fd, F_GETFL) & O_NONBLOCK), "O_NONBLOCK appeared");
  CHECK(pidfd_send_signal(fd, 0) == 0, "pidfd_send_signal");
  CHECK(ino_of(fd) == ino_of(nb), "two pidfds of one process, two inodes");
  return 0;
}

/* pidfd_child / pidfd_kill: the root holds pidfds of its child and grandchild, the child of
 * its own child and of its parent. After restore the child kills the grandchild through its
 * pidfd and reaps it; the root sees both ends through its pidfds. */
static int m_pidfd_tree(void) {
  int p[2];
  SETUP(pipe(p) == 0);
  go_init();
  pid_t c = zfork();
  if (c == 0) {
    pid_t g = fork();
    if (g == 0) {
      close(go_pipe[1]); /* the child's end-of-file comes from the root alone */
      for (;;) pause();
    }
    int gfd = at(pidfd_open(g, 0), 62);
    int pfd = at(pidfd_open(getppid(), 0), 63);
    SETUP(write(p[1], &g, sizeof g) == sizeof g);
    close(p[1]);
    child_wait_go();
    if (fdinfo_pid(pfd) != getppid()) _exit(2);
    if (fdinfo_pid(gfd) != g) _exit(3);
    if (pidfd_send_signal(gfd, SIGKILL) != 0) _exit(4);
    if (reap(g) != 128 + SIGKILL) _exit(5);
    _exit(0);
  }
  close(p[1]);
  pid_t g;
  SETUP(read(p[0], &g, sizeof g) == sizeof g);
  int cfd = at(pidfd_open(c, 0), 64);
  int gfd = at(pidfd_open(g, 0), 65);
  ready_and_wait();
  CHECK(fdinfo_pid(cfd) == c, "child: Pid: %d, want %d", fdinfo_pid(cfd), c);
  CHECK(fdinfo_pid(gfd) == g, "grandchild: Pid: %d, want %d", fdinfo_pid(gfd), g);
  struct pollfd pf = {cfd, POLLIN, 0};
  CHECK(poll(&pf, 1, 0) == 0, "the child's pidfd is readable while it lives");
  go_children();
  pf.fd = gfd;
  CHECK(poll(&pf, 1, 30000) == 1, "the grandchild's pidfd never saw it end");
  pf.fd = cfd;
  CHECK(poll(&pf, 1, 30000) == 1, "the child's pidfd never saw it end");
  CHECK(reap(c) == 0, "child");
  return 0;
}

/* PIDFD_GET_INFO's first layout (Linux 6.13); its last field is the exit status. */
struct pidfd_info64 {
  uint64_t mask, cgroupid;
  uint32_t pid, tgid, ppid, ruid, rgid, euid, egid, suid, sgid, fsuid, fsgid;
  int32_t exit_code;
};
static int exit_info(int fd, int* code) {
  struct pidfd_info64 i = {.mask = 1ull << 3};
  if (ioctl(fd, _IOWR(0xFF, 11, struct pidfd_info64), &i) < 0) return -1;
  if (!(i.mask & (1ull << 3))) return 0;
  *code = i.exit_code;
  return 1;
}

/* pidfd_dead / pidfd_diffdead: two pidfds on a child that exited 3, two on a grandchild that
 * was killed, and one more on the grandchild in another child of the root, alive. */
static int m_pidfd_dead(void) {
  int p[2], q[2], sync[2];
  SETUP(pipe(p) == 0);
  pid_t c = zfork();
  if (c == 0) {
    pid_t g = fork();
    if (g == 0) {
      for (;;) pause();
    }
    if (write(p[1], &g, sizeof g) != sizeof g) _exit(2);
    if (reap(g) != 128 + SIGKILL) _exit(4);
    _exit(3);
  }
  close(p[1]);
  pid_t g;
  SETUP(read(p[0], &g, sizeof g) == sizeof g);
  int c1 = at(pidfd_open(c, 0), 66), c2 = at(pidfd_open(c, 0), 67);
  int g1 = at(pidfd_open(g, 0), 68), g2 = at(pidfd_open(g, 0), 69);
  SETUP(pipe(q) == 0 && pipe(sync) == 0); /* only the root and h hold them */
  pid_t h = zfork();
  if (h == 0) {
    int hg = at(pidfd_open(g, 0), 70);
    close(sync[1]);
    close(q[1]);
    ino_t want;
    if (read(q[0], &want, sizeof want) != sizeof want) _exit(2);
    if (fdinfo_pid(hg) != -1) _exit(3);
    if (ino_of(hg) != want) _exit(4);
    _exit(0);
  }
  close(sync[1]);
  char x;
  SETUP(read(sync[0], &x, 1) == 0);
  SETUP(pidfd_send_signal(g1, SIGKILL) == 0);
  SETUP(reap(c) == 3);
  int code = 0;
  int has = exit_info(c1, &code) > 0;
  SETUP(!has || (WIFEXITED(code) && WEXITSTATUS(code) == 3));
  ready_and_wait();
  CHECK(fdinfo_pid(c1) == -1 && fdinfo_pid(c2) == -1, "child pidfds: Pid %d %d", fdinfo_pid(c1),
        fdinfo_pid(c2));
  CHECK(fdinfo_pid(g1) == -1 && fdinfo_pid(g2) == -1, "grandchild pidfds");
  CHECK(ino_of(c1) == ino_of(c2) && ino_of(g1) == ino_of(g2), "one dead process, two inodes");
  CHECK(ino_of(c1) != ino_of(g1), "two dead processes, one inode");
  if (has) {
    CHECK(exit_info(c2, &code) > 0 && WIFEXITED(code) && WEXITSTATUS(code) == 3,
          "child exit status %#x", code);
    CHECK(exit_info(g2, &code) > 0 && WIFSIGNALED(code) && WTERMSIG(code) == SIGKILL,
          "grandchild exit status %#x", code);
  }
  struct pollfd pf = {c1, POLLIN, 0};
  CHECK(poll(&pf, 1, 0) == 1, "a dead process's pidfd is readable");
  CHECK(pidfd_send_signal(c1, 0) < 0 && errno == ESRCH, "signal to a dead pidfd");
  ino_t gi = ino_of(g1);
  CHECK(write(q[1], &gi, sizeof gi) == sizeof gi, "tell the other child");
  int hr = reap(h);
  CHECK(hr == 0, "the other child's pidfd on the dead grandchild (exit %d)", hr);
  return 0;
}

/* pidfd_of_thread: a PIDFD_THREAD pidfd of a thread other than the leader, at its number and
 * naming the thread (a signal 0 through it with PIDFD_SIGNAL_THREAD). */
static int tid_pipe[2];
static void* thread_main(void* arg) {
  (void)arg;
  pid_t tid = gettid();
  if (write(tid_pipe[1], &tid, sizeof tid) != sizeof tid) abort();
  for (;;) pause();
  return NULL;
}
static int m_pidfd_thread(void) {
  pthread_t t;
  SETUP(pipe(tid_pipe) == 0 && pthread_create(&t, NULL, thread_main, NULL) == 0);
  pid_t tid;
  SETUP(read(tid_pipe[0], &tid, sizeof tid) == sizeof tid);
  int fd = at(pidfd_open(tid, O_EXCL /* PIDFD_THREAD */), 77);
  ready_and_wait();
  CHECK(fcntl(fd, F_GETFD) >= 0, "fd");
  CHECK(syscall(SYS_pidfd_send_signal, fd, 0, NULL, 1 /* PIDFD_SIGNAL_THREAD */) == 0,
        "the pidfd at 77 does not name thread %d", tid);
  return 0;
}

/* socket_udplite: bound, connected and shut UDP-Lite sockets, a datagram queued, the checksum
 * coverage set. */
static int m_udplite(void) {
  int port = 20000 + getpid() % 20000;
  struct sockaddr_in a1 = {.sin_family = AF_INET, .sin_port = htons(port)};
  struct sockaddr_in a2 = {.sin_family = AF_INET, .sin_port = htons(port + 1)};
  a1.sin_addr.s_addr = a2.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  int s1 = at(socket(AF_INET, SOCK_DGRAM, IPPROTO_UDPLITE), 70);
  int s2 = at(socket(AF_INET, SOCK_DGRAM, IPPROTO_UDPLITE), 71);
  SETUP(bind(s1, (void*)&a1, sizeof a1) == 0 && bind(s2, (void*)&a2, sizeof a2) == 0);
  SETUP(connect(s2, (void*)&a1, sizeof a1) == 0);
  int cov = 20;
  SETUP(setsockopt(s2, IPPROTO_UDPLITE, 10 /* UDPLITE_SEND_CSCOV */, &cov, sizeof cov) == 0);
  SETUP(send(s2, "queued", 6, 0) == 6);
  ready_and_wait();
  int proto = 0;
  socklen_t l = sizeof proto;
  CHECK(getsockopt(s1, SOL_SOCKET, SO_PROTOCOL, &proto, &l) == 0 && proto == IPPROTO_UDPLITE,
        "protocol %d", proto);
  l = sizeof cov;
  CHECK(getsockopt(s2, IPPROTO_UDPLITE, 10, &cov, &l) == 0 && cov == 20, "SEND_CSCOV %d", cov);
  char buf[16] = {};
  struct sockaddr_in from;
  socklen_t fl = sizeof from;
  CHECK(recvfrom(s1, buf, sizeof buf, MSG_DONTWAIT, (void*)&from, &fl) == 6 &&
            !memcmp(buf, "queued", 6),
        "queued datagram");
  CHECK(sendto(s1, "msg1", 4, 0, (void*)&a2, sizeof a2) == 4, "send");
  CHECK(send(s2, "msg_2", 5, 0) == 5, "send connected");
  CHECK(recvfrom(s1, buf, sizeof buf, 0, (void*)&from, &fl) == 5 && !memcmp(buf, "msg_2", 5) &&
            from.sin_port == a2.sin_port,
        "recv from the connected one");
  CHECK(recv(s2, buf, sizeof buf, 0) == 4 && !memcmp(buf, "msg1", 4), "recv");
  return 0;
}

/* socket_icmp: a ping socket (its echo id bound by a first ping), then a ping after restore. */
static int ping(int s, int seq) {
  struct sockaddr_in to = {.sin_family = AF_INET};
  to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  struct icmphdr h = {.type = ICMP_ECHO};
  h.un.echo.sequence = htons(seq);
  char pkt[64];
  memset(pkt, 0xa5, sizeof pkt);
  memcpy(pkt, &h, sizeof h);
  if (sendto(s, pkt, sizeof pkt, 0, (void*)&to, sizeof to) != sizeof pkt) return -1;
  char got[128];
  ssize_t n = recv(s, got, sizeof got, 0);
  if (n < (ssize_t)sizeof h) return -2;
  struct icmphdr* r = (struct icmphdr*)got;
  return r->type == ICMP_ECHOREPLY && ntohs(r->un.echo.sequence) == seq ? 0 : -3;
}
static int m_icmp(void) {
  int s = at(socket(AF_INET, SOCK_DGRAM, IPPROTO_ICMP), 72);
  struct timeval tv = {5, 0};
  SETUP(setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) == 0);
  SETUP(ping(s, 1) == 0);
  struct sockaddr_in before, after;
  socklen_t l = sizeof before;
  SETUP(getsockname(s, (void*)&before, &l) == 0 && before.sin_port != 0);
  ready_and_wait();
  l = sizeof after;
  CHECK(getsockname(s, (void*)&after, &l) == 0 && after.sin_port == before.sin_port,
        "echo id %d, was %d", ntohs(after.sin_port), ntohs(before.sin_port));
  int r = ping(s, 2);
  CHECK(r == 0, "ping after restore: %d", r);
  return 0;
}

/* Raw sockets: one of an unassigned protocol bound to 127.0.0.1, an ICMP one with a filter,
 * an IPv6 one with IPV6_CHECKSUM. */
static int m_raw(void) {
  const int proto = 253; /* RFC 3692 experimentation */
  int r = at(socket(AF_INET, SOCK_RAW, proto), 73);
  struct sockaddr_in lo = {.sin_family = AF_INET};
  lo.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  SETUP(bind(r, (void*)&lo, sizeof lo) == 0);
  int ic = at(socket(AF_INET, SOCK_RAW, IPPROTO_ICMP), 74);
  uint32_t filt = ~(1u << ICMP_ECHOREPLY), got_filt = 0;
  SETUP(setsockopt(ic, SOL_RAW, 1 /* ICMP_FILTER */, &filt, sizeof filt) == 0);
  int r6 = at(socket(AF_INET6, SOCK_RAW, proto), 75);
  int off = 2, got_off = -1;
  SETUP(setsockopt(r6, SOL_IPV6, IPV6_CHECKSUM, &off, sizeof off) == 0);
  ready_and_wait();
  socklen_t l = sizeof got_filt;
  CHECK(getsockopt(ic, SOL_RAW, 1, &got_filt, &l) == 0 && got_filt == filt, "ICMP_FILTER %#x",
        got_filt);
  l = sizeof got_off;
  CHECK(getsockopt(r6, SOL_IPV6, IPV6_CHECKSUM, &got_off, &l) == 0 && got_off == 2,
        "IPV6_CHECKSUM %d", got_off);
  struct sockaddr_in name;
  l = sizeof name;
  CHECK(getsockname(r, (void*)&name, &l) == 0 && name.sin_addr.s_addr == lo.sin_addr.s_addr,
        "raw socket bound to %#x", ntohl(name.sin_addr.s_addr));
  int snd = socket(AF_INET, SOCK_RAW, proto);
  CHECK(snd >= 0 && sendto(snd, "rawdata", 7, 0, (void*)&lo, sizeof lo) == 7, "send raw");
  char buf[128];
  struct timeval tv = {5, 0};
  setsockopt(r, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  ssize_t n = recv(r, buf, sizeof buf, 0);
  struct iphdr* ip = (struct iphdr*)buf;
  CHECK(n == (ssize_t)(ip->ihl * 4 + 7) && !memcmp(buf + ip->ihl * 4, "rawdata", 7) &&
            ip->protocol == proto,
        "raw receive (%zd bytes)", n);
  return 0;
}

/* file_locks01/02 (what CRIU checks): /proc/locks names the process that took each lock. The
 * root flocks A (exclusive) and B (shared), its child flocks C and takes a POSIX lock on D; the
 * child shares A's description. */
static pid_t lock_pid(int fd, const char* kind) {
  struct stat st;
  if (fstat(fd, &st) < 0) return -3;
  FILE* f = fopen("/proc/locks", "re");
  char line[256], k[16];
  pid_t pid = -2;
  unsigned maj, min;
  unsigned long ino;
  int id;
  while (f && fgets(line, sizeof line, f))
    if (sscanf(line, "%d: %15s %*s %*s %d %x:%x:%lu", &id, k, &pid, &maj, &min, &ino) == 6 &&
        ino == st.st_ino && !strcmp(k, kind))
      break;
    else
      pid = -2;
  if (f) fclose(f);
  return pid;
}
static int m_file_locks_pid(void) {
  int a = open(path_in("A"), O_CREAT | O_RDWR, 0600),
      b = open(path_in("B"), O_CREAT | O_RDWR, 0600);
  SETUP(a >= 0 && b >= 0 && flock(a, LOCK_EX) == 0 && flock(b, LOCK_SH) == 0);
  go_init();
  int sync[2];
  SETUP(pipe(sync) == 0);
  pid_t c = zfork();
  if (c == 0) {
    close(sync[0]);
    int cc = open(path_in("C"), O_CREAT | O_RDWR, 0600),
        d = open(path_in("D"), O_CREAT | O_RDWR, 0600);
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET};
    if (cc < 0 || d < 0 || flock(cc, LOCK_EX) < 0 || fcntl(d, F_SETLK, &fl) < 0) _exit(2);
    close(sync[1]);
    child_wait_go();
    if (lock_pid(cc, "FLOCK") != getpid()) _exit(3);
    if (lock_pid(d, "POSIX") != getpid()) _exit(4);
    if (lock_pid(a, "FLOCK") != getppid()) _exit(5);
    _exit(0);
  }
  close(sync[1]);
  char x;
  SETUP(read(sync[0], &x, 1) == 0);
  ready_and_wait();
  CHECK(lock_pid(a, "FLOCK") == getpid(), "A locked by %d, want %d", lock_pid(a, "FLOCK"),
        getpid());
  CHECK(lock_pid(b, "FLOCK") == getpid(), "B locked by %d", lock_pid(b, "FLOCK"));
  int probe = open(path_in("A"), O_RDWR);
  CHECK(probe >= 0 && flock(probe, LOCK_SH | LOCK_NB) < 0 && errno == EWOULDBLOCK, "A held");
  go_children();
  int r = reap(c);
  CHECK(r == 0, "the child's locks (exit %d)", r);
  return 0;
}

/* scm00..scm04: descriptions in flight in unix socket queues (SCM_RIGHTS): a pipe's read end
 * only in flight over a datagram pair (its write end held), both ends of another in flight on
 * one seqpacket message, a held file in flight too, and a stream carrying bytes before, with
 * and after an fd. */
static int send_fds(int via, const int* fds, int n, const char* data, size_t len) {
  char cbuf[CMSG_SPACE(sizeof(int) * 4)] = {0};
  struct iovec iov = {(void*)data, len};
  struct msghdr h = {.msg_iov = &iov,
                     .msg_iovlen = 1,
                     .msg_control = cbuf,
                     .msg_controllen = CMSG_SPACE(sizeof(int) * n)};
  struct cmsghdr* c = CMSG_FIRSTHDR(&h);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(int) * n);
  memcpy(CMSG_DATA(c), fds, sizeof(int) * n);
  return sendmsg(via, &h, 0) == (ssize_t)len ? 0 : -1;
}
/* Receives up to 4 fds into fds; returns the byte count, the fd count in *n. */
static ssize_t recv_fds(int via, int* fds, int* n, char* data, size_t len) {
  char cbuf[CMSG_SPACE(sizeof(int) * 4)];
  struct iovec iov = {data, len};
  struct msghdr h = {
      .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof cbuf};
  ssize_t r = recvmsg(via, &h, MSG_DONTWAIT);
  *n = 0;
  for (struct cmsghdr* c = CMSG_FIRSTHDR(&h); r >= 0 && c; c = CMSG_NXTHDR(&h, c))
    if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
      int k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      memcpy(fds + *n, CMSG_DATA(c), sizeof(int) * k);
      *n += k;
    }
  return r;
}
static int pipe_works(int r, int w) {
  char buf[8] = {0};
  return write(w, "HELLO", 6) == 6 && read(r, buf, sizeof buf) == 6 && !strcmp(buf, "HELLO");
}
static int m_scm(void) {
  int dg[2], sp[2], st[2], p[2], q[2];
  SETUP(socketpair(AF_UNIX, SOCK_DGRAM, 0, dg) == 0 &&
        socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sp) == 0);
  SETUP(socketpair(AF_UNIX, SOCK_STREAM, 0, st) == 0 && pipe(p) == 0 && pipe(q) == 0);
  int held = open(path_in("held"), O_CREAT | O_RDWR, 0600);
  SETUP(held >= 0 && write(held, "xyz", 3) == 3);
  /* scm00: the read end only in flight; its write end kept at another number. */
  SETUP(send_fds(dg[0], &p[0], 1, "", 1) == 0 && close(p[0]) == 0);
  /* scm03: both ends of q in flight on one message; closed here. */
  SETUP(send_fds(sp[0], q, 2, "two", 3) == 0 && close(q[0]) == 0 && close(q[1]) == 0);
  /* A stream: bytes, bytes with the held file, bytes. */
  SETUP(write(st[0], "ab", 2) == 2 && send_fds(st[0], &held, 1, "c", 1) == 0 &&
        write(st[0], "de", 2) == 2);
  ready_and_wait();
  int fds[4], n;
  char buf[16] = {0};
  CHECK(recv_fds(dg[1], fds, &n, buf, sizeof buf) == 1 && n == 1, "dgram message (%d fds)", n);
  CHECK(pipe_works(fds[0], p[1]), "the pipe in flight is the pipe whose write end is held");
  CHECK(recv_fds(sp[1], fds, &n, buf, sizeof buf) == 3 && n == 2 && !memcmp(buf, "two", 3),
        "seqpacket message (%d fds)", n);
  CHECK(pipe_works(fds[0], fds[1]), "both ends in flight are one pipe");
  ssize_t r = recv_fds(st[1], fds, &n, buf, sizeof buf);
  CHECK(r >= 2 && !memcmp(buf, "ab", 2), "stream bytes before (%zd)", r);
  if (r == 2)
    r = recv_fds(st[1], fds, &n, buf, sizeof buf);
  else
    memmove(buf, buf + 2, r -= 2);
  CHECK(n == 1 && r >= 1 && buf[0] == 'c', "stream segment with the fd (%d fds)", n);
  struct stat a, b;
  CHECK(fstat(fds[0], &a) == 0 && fstat(held, &b) == 0 && a.st_ino == b.st_ino, "the held file");
  CHECK(lseek(fds[0], 0, SEEK_CUR) == 3 && lseek(held, 0, SEEK_SET) == 0 &&
            lseek(fds[0], 0, SEEK_CUR) == 0,
        "one description: the offset is shared");
  int m;
  CHECK(recv_fds(st[1], fds, &m, buf, sizeof buf) >= 1, "stream bytes after");
  return 0;
}
/* scm05: an epoll watching a socket, in flight twice in that socket's queue. */
static int m_scm_epoll(void) {
  int sk[2];
  SETUP(socketpair(AF_UNIX, SOCK_DGRAM, 0, sk) == 0);
  int ep = epoll_create1(0);
  struct epoll_event ev = {.events = EPOLLIN, .data.u64 = 0x1234};
  SETUP(ep >= 0 && epoll_ctl(ep, EPOLL_CTL_ADD, sk[1], &ev) == 0);
  SETUP(send_fds(sk[0], &ep, 1, "", 1) == 0 && send_fds(sk[0], &ep, 1, "", 1) == 0);
  SETUP(close(ep) == 0);
  ready_and_wait();
  int fds[4], n;
  char c;
  CHECK(recv_fds(sk[1], fds, &n, &c, 1) == 1 && n == 1, "the epoll back (%d fds)", n);
  struct epoll_event got = {0};
  CHECK(epoll_wait(fds[0], &got, 1, 0) == 1 && got.data.u64 == 0x1234 && (got.events & EPOLLIN),
        "the epoll in flight still watches the socket");
  return 0;
}

/* scm06: unix sockets in flight in their own queues: a pair bound to two abstract names, each
 * end sent over each end; and an end of another pair only in flight, with data queued. */
static int m_scm_unix(void) {
  int ska[2], other[2];
  SETUP(socketpair(AF_UNIX, SOCK_DGRAM, 0, ska) == 0 &&
        socketpair(AF_UNIX, SOCK_STREAM, 0, other) == 0);
  /* Abstract names with the whole pid in them: two runs at once on one host never collide. */
  char names[2][32];
  int len = 0;
  for (int i = 0; i < 2; i++) {
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    len = snprintf(names[i], sizeof names[i], "gw-scm06-%d-%d", (int)getpid(), i);
    memcpy(a.sun_path + 1, names[i], len);
    SETUP(bind(ska[i], (void*)&a, sizeof(sa_family_t) + 1 + len) == 0);
  }
  for (int i = 0; i < 2; i++)
    for (int j = 0; j < 2; j++) SETUP(send_fds(ska[i], &ska[j], 1, "", 1) == 0);
  SETUP(write(other[1], "inner", 5) == 5 && send_fds(ska[0], &other[1], 1, "o", 1) == 0);
  SETUP(close(other[1]) == 0);
  ready_and_wait();
  int skc = ska[0], fds[4], n;
  char c;
  for (int i = 0; i < 3; i++) {
    CHECK(recv_fds(skc, fds, &n, &c, 1) == 1 && n == 1, "round %d: the socket back", i);
    skc = fds[0];
    struct sockaddr_un a;
    socklen_t l = sizeof a;
    CHECK(getsockname(skc, (void*)&a, &l) == 0 && l == sizeof(sa_family_t) + 1 + len &&
              !memcmp(a.sun_path + 1, names[i % 2], len),
          "round %d: wrong socket", i);
  }
  /* ska[1]'s queue: ska[0] (taken above), ska[1], then the other pair's end. */
  CHECK(recv_fds(ska[1], fds, &n, &c, 1) == 1 && n == 1, "ska[1] in ska[1]");
  CHECK(recv_fds(ska[1], fds, &n, &c, 1) == 1 && n == 1 && c == 'o', "the other pair's end");
  char buf[8] = {0};
  CHECK(read(other[0], buf, sizeof buf) == 5 && !memcmp(buf, "inner", 5),
        "what the end in flight had sent");
  CHECK(write(fds[0], "x", 1) == 1 && read(other[0], buf, 1) == 1 && buf[0] == 'x',
        "the end in flight is still connected");
  return 0;
}

/* Zero-length messages in seqpacket and datagram queues, and a seqpacket socket whose peer is
 * gone (end of file after the queue). */
static int m_zero_len(void) {
  int sp[2], dg[2];
  SETUP(socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sp) == 0 &&
        socketpair(AF_UNIX, SOCK_DGRAM, 0, dg) == 0);
  SETUP(send(sp[1], "a", 1, 0) == 1 && send(sp[1], "", 0, 0) == 0 && send(sp[1], "b", 1, 0) == 1);
  SETUP(close(sp[1]) == 0);
  SETUP(send(dg[1], "", 0, 0) == 0 && send(dg[1], "c", 1, 0) == 1);
  ready_and_wait();
  char buf[8];
  CHECK(recv(sp[0], buf, sizeof buf, MSG_DONTWAIT) == 1 && buf[0] == 'a', "seqpacket a");
  CHECK(recv(sp[0], buf, sizeof buf, MSG_DONTWAIT) == 0, "seqpacket empty message");
  CHECK(recv(sp[0], buf, sizeof buf, MSG_DONTWAIT) == 1 && buf[0] == 'b', "seqpacket b");
  CHECK(recv(sp[0], buf, sizeof buf, MSG_DONTWAIT) == 0, "seqpacket end of file");
  CHECK(recv(dg[0], buf, sizeof buf, MSG_DONTWAIT) == 0, "datagram empty message");
  CHECK(recv(dg[0], buf, sizeof buf, MSG_DONTWAIT) == 1 && buf[0] == 'c', "datagram c");
  CHECK(recv(dg[0], buf, sizeof buf, MSG_DONTWAIT) < 0 && errno == EAGAIN, "nothing more");
  return 0;
}

/* child_opened_proc: files under /proc/PID of the tree: the parent's /proc/CHILD/stat, the
 * child's /proc/PARENT/status and its own /proc/SELF directory. */
static int m_proc_files(void) {
  go_init();
  int sync[2];
  SETUP(pipe(sync) == 0);
  pid_t parent = getpid();
  pid_t c = zfork();
  if (c == 0) {
    close(sync[0]);
    char p[64];
    snprintf(p, sizeof p, "/proc/%d/status", parent);
    int ps = at(open(p, O_RDONLY), 45);
    snprintf(p, sizeof p, "/proc/%d", getpid());
    int self = at(open(p, O_RDONLY | O_DIRECTORY), 46);
    close(sync[1]);
    child_wait_go();
    char buf[4096] = {0};
    if (read(ps, buf, sizeof buf - 1) <= 0) _exit(2);
    char want[64];
    snprintf(want, sizeof want, "\nPid:\t%d\n", parent);
    if (!strstr(buf, want)) _exit(3);
    int st = openat(self, "stat", O_RDONLY);
    if (st < 0 || read(st, buf, sizeof buf - 1) <= 0 || atoi(buf) != getpid()) _exit(4);
    _exit(0);
  }
  close(sync[1]);
  char x;
  SETUP(read(sync[0], &x, 1) == 0);
  char p[64];
  snprintf(p, sizeof p, "/proc/%d/stat", c);
  int cs = at(open(p, O_RDONLY), 47);
  ready_and_wait();
  char buf[512] = {0};
  CHECK(read(cs, buf, sizeof buf - 1) > 0 && atoi(buf) == c, "/proc/%d/stat reads %.20s", c, buf);
  go_children();
  int r = reap(c);
  CHECK(r == 0, "the child's /proc files (exit %d)", r);
  return 0;
}

/* sk-unix-unconn: unix sockets never connected (stream, seqpacket, a bound stream socket not
 * yet listening) have no queue to peek. */
static int m_sk_unix_unconn(void) {
  int st = at(socket(AF_UNIX, SOCK_STREAM, 0), 42), sp = at(socket(AF_UNIX, SOCK_SEQPACKET, 0), 43);
  int bd = at(socket(AF_UNIX, SOCK_STREAM, 0), 44);
  struct sockaddr_un a = {.sun_family = AF_UNIX};
  snprintf(a.sun_path, sizeof a.sun_path, "%s", path_in("unconn.sock"));
  SETUP(bind(bd, (void*)&a, sizeof a) == 0);
  ready_and_wait();
  int t = 0;
  socklen_t l = sizeof t;
  CHECK(getsockopt(st, SOL_SOCKET, SO_TYPE, &t, &l) == 0 && t == SOCK_STREAM, "stream");
  CHECK(getsockopt(sp, SOL_SOCKET, SO_TYPE, &t, &l) == 0 && t == SOCK_SEQPACKET, "seqpacket");
  struct sockaddr_un got;
  l = sizeof got;
  CHECK(getsockname(bd, (void*)&got, &l) == 0 && !strcmp(got.sun_path, a.sun_path), "bound name");
  CHECK(listen(bd, 1) == 0, "listen after restore");
  int c = socket(AF_UNIX, SOCK_STREAM, 0);
  CHECK(connect(c, (void*)&a, sizeof a) == 0, "connect to the bound socket");
  CHECK(connect(st, (void*)&a, sizeof a) == 0, "the unconnected socket connects");
  return 0;
}

/* packet_sock: packet sockets with a version, aux data, rings, a reserve, origdev, a fanout
 * group and memberships; packet_mmap: a mapped ring whose socket is closed (refused). */
struct mreq_max {
  int ifindex;
  unsigned short type, alen;
  unsigned char addr[32];
};
static int m_packet_sock(void) {
  int sk1 = at(socket(AF_PACKET, SOCK_RAW, 0), 40);
  int sk2 = at(socket(AF_PACKET, SOCK_DGRAM, htons(ETH_P_IP)), 41);
  struct sockaddr_ll a = {.sll_family = AF_PACKET, .sll_ifindex = 1}, n1, n2, got;
  SETUP(bind(sk2, (void*)&a, sizeof a) == 0);
  socklen_t l = sizeof n1;
  SETUP(getsockname(sk1, (void*)&n1, &l) == 0);
  l = sizeof n2;
  SETUP(getsockname(sk2, (void*)&n2, &l) == 0);
  int v = TPACKET_V2, yes = 1, rsv = 8, fanout = 13 + getpid() % 1000;
  SETUP(setsockopt(sk1, SOL_PACKET, PACKET_VERSION, &v, sizeof v) == 0);
  SETUP(setsockopt(sk1, SOL_PACKET, PACKET_AUXDATA, &yes, sizeof yes) == 0);
  struct tpacket_req ring = {
      .tp_block_size = 4096, .tp_block_nr = 1, .tp_frame_size = 1024, .tp_frame_nr = 4};
  SETUP(setsockopt(sk1, SOL_PACKET, PACKET_RX_RING, &ring, sizeof ring) == 0);
  SETUP(setsockopt(sk2, SOL_PACKET, PACKET_RESERVE, &rsv, sizeof rsv) == 0);
  SETUP(setsockopt(sk2, SOL_PACKET, PACKET_ORIGDEV, &yes, sizeof yes) == 0);
  SETUP(setsockopt(sk2, SOL_PACKET, PACKET_FANOUT, &fanout, sizeof fanout) == 0);
  struct mreq_max mr = {.ifindex = 1, .type = PACKET_MR_PROMISC};
  SETUP(setsockopt(sk1, SOL_PACKET, PACKET_ADD_MEMBERSHIP, &mr, sizeof mr) == 0);
  struct mreq_max mu = {.ifindex = 1, .type = PACKET_MR_UNICAST, .alen = 6};
  SETUP(setsockopt(sk2, SOL_PACKET, PACKET_ADD_MEMBERSHIP, &mu, sizeof mu) == 0);
  SETUP(setsockopt(sk2, SOL_PACKET, PACKET_TX_RING, &ring, sizeof ring) == 0);
  ready_and_wait();
  l = sizeof got;
  CHECK(getsockname(sk1, (void*)&got, &l) == 0 && got.sll_protocol == n1.sll_protocol &&
            got.sll_ifindex == n1.sll_ifindex,
        "sk1 name");
  l = sizeof got;
  CHECK(getsockname(sk2, (void*)&got, &l) == 0 && got.sll_protocol == n2.sll_protocol &&
            got.sll_ifindex == n2.sll_ifindex,
        "sk2 name (ifindex %d)", got.sll_ifindex);
  int x = 0;
  l = sizeof x;
  CHECK(getsockopt(sk1, SOL_PACKET, PACKET_VERSION, &x, &l) == 0 && x == TPACKET_V2, "version");
  CHECK(getsockopt(sk1, SOL_PACKET, PACKET_AUXDATA, &x, &l) == 0 && x == 1, "auxdata");
  CHECK(setsockopt(sk1, SOL_PACKET, PACKET_DROP_MEMBERSHIP, &mr, sizeof mr) == 0, "promisc kept");
  CHECK(getsockopt(sk1, SOL_PACKET, PACKET_FANOUT, &x, &l) == 0 && x == 0, "sk1 fanout %x", x);
  CHECK(getsockopt(sk2, SOL_PACKET, PACKET_RESERVE, &x, &l) == 0 && x == 8, "reserve %d", x);
  CHECK(getsockopt(sk2, SOL_PACKET, PACKET_ORIGDEV, &x, &l) == 0 && x == 1, "origdev");
  CHECK(setsockopt(sk2, SOL_PACKET, PACKET_DROP_MEMBERSHIP, &mu, sizeof mu) == 0, "ucast kept");
  CHECK(getsockopt(sk2, SOL_PACKET, PACKET_FANOUT, &x, &l) == 0 && x == fanout, "fanout %x", x);
  /* The ring is there: a second one is refused (EBUSY), as before. */
  CHECK(setsockopt(sk1, SOL_PACKET, PACKET_RX_RING, &ring, sizeof ring) < 0 && errno == EBUSY,
        "rx ring lost");
  return 0;
}
/* The mapped ring of a socket the process no longer holds (it closed the fd after mmap): there is
 * no socket to map again, refused (a ring still held is mapped again: zdtm_port2_test). */
static int m_packet_mmap(void) {
  int s = at(socket(AF_PACKET, SOCK_RAW, 0), 77);
  struct tpacket_req ring = {
      .tp_block_size = 4096, .tp_block_nr = 1, .tp_frame_size = 1024, .tp_frame_nr = 4};
  SETUP(setsockopt(s, SOL_PACKET, PACKET_RX_RING, &ring, sizeof ring) == 0);
  void* m = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, s, 0);
  SETUP(m != MAP_FAILED);
  SETUP(close(s) == 0);
  ready_and_wait();
  CHECK(((volatile char*)m)[0] == 0, "ring");
  return 0;
}

int main(int argc, char** argv) {
  int bad = zdtm_start(argc, argv);
  if (bad) return bad;
  static const struct zdtm_mode modes[] = {
      {"symlink", m_symlink},
      {"symlink01", m_symlink01},
      {"opath_misc", m_opath_misc},
      {"nsfs", m_nsfs},
      {"nsfs_other", m_nsfs_other},
      {"pidfd_self", m_pidfd_self},
      {"pidfd_tree", m_pidfd_tree},
      {"pidfd_dead", m_pidfd_dead},
      {"pidfd_thread", m_pidfd_thread},
      {"udplite", m_udplite},
      {"icmp", m_icmp},
      {"raw", m_raw},
      {"packet_sock", m_packet_sock},
      {"packet_mmap", m_packet_mmap},
      {"file_locks_pid", m_file_locks_pid},
      {"scm", m_scm},
      {"scm_unix", m_scm_unix},
      {"scm_epoll", m_scm_epoll},
      {"sk_unix_unconn", m_sk_unix_unconn},
      {"zero_len", m_zero_len},
      {"proc_files", m_proc_files},
  };
  return zdtm_run(argv[1], modes, sizeof modes / sizeof modes[0]);
}
