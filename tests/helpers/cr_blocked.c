// zdtm-style helper: cr_blocked READY_FD MODE
// Installs a SIGUSR2 handler, reports "ready" on READY_FD and blocks in an interruptible call
// (MODE: sigsuspend, poll, read) until SIGUSR2 arrives. MODE seccomp: sigsuspend under a seccomp
// filter that kills the process (SECCOMP_RET_KILL_PROCESS) on the calls a dump or restore injects
// (prctl, brk, rt_sigaction, sigaltstack, getcwd, mmap-free ones); once woken it calls getcwd and
// must die of SIGSYS (the filter survived). MODE comm: sigsuspend named "wake  ". Exit codes: 0 the handler ran and the call
// returned with EINTR (as a signal must interrupt it); 2 the call returned EINTR without the handler (5: another error, 6: 0, 7: > 0);
// 3 it returned something other than EINTR. A lost wake-up leaves it blocked forever.
#define _GNU_SOURCE
#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static volatile sig_atomic_t got;

#define DENY(nr) BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (nr), 0, 1), \
                 BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS)

static int install_filter(void) {
  struct sock_filter f[] = {
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
      DENY(SYS_prctl), DENY(SYS_brk), DENY(SYS_rt_sigaction), DENY(SYS_sigaltstack),
      DENY(SYS_getcwd), DENY(SYS_getrlimit), DENY(SYS_prlimit64), DENY(SYS_getitimer),
      DENY(SYS_timer_gettime), DENY(SYS_personality), DENY(SYS_sched_getattr),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
  };
  struct sock_fprog prog = {sizeof(f) / sizeof(f[0]), f};
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) return -1;
  return (int)syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog);
}

static void on_usr2(int sig) {
  (void)sig;
  got = 1;
}

int main(int argc, char** argv) {
  if (argc < 3) return 100;
  int ready = atoi(argv[1]);
  const char* mode = argv[2];
  struct sigaction sa;
  memset(&sa, 0, sizeof(sa));
  sa.sa_handler = on_usr2;  // no SA_RESTART: read() must come back with EINTR
  sigaction(SIGUSR2, &sa, NULL);
  sigset_t usr2, none;
  sigemptyset(&usr2);
  sigaddset(&usr2, SIGUSR2);
  sigemptyset(&none);
  int p[2];
  if (pipe(p) < 0) return 101;
  if (strcmp(mode, "comm") == 0) {  // a thread name with trailing spaces
    prctl(PR_SET_NAME, "wake  ", 0, 0, 0);
    mode = "sigsuspend";
  }
  int sec = strcmp(mode, "seccomp") == 0;
  if (sec) mode = "sigsuspend";
  if (strcmp(mode, "sigsuspend") == 0) sigprocmask(SIG_BLOCK, &usr2, NULL);
  if (sec && install_filter() < 0) return 104;
  if (write(ready, "ready\n", 6) != 6) return 102;
  close(ready);
  long r;
  if (strcmp(mode, "sigsuspend") == 0) {
    r = sigsuspend(&none);
  } else if (strcmp(mode, "poll") == 0) {
    struct pollfd pf = {p[0], POLLIN, 0};
    r = poll(&pf, 1, -1);
  } else {
    char c;
    r = read(p[0], &c, 1);
  }
  int e = errno;
  if (!got) return r == -1 ? (e == EINTR ? 2 : 5) : (r == 0 ? 6 : 7);
  if (r != -1 || e != EINTR) return 3;
  if (sec) {
    syscall(SYS_getcwd, NULL, 0);  // killed here by the restored filter
    return 4;
  }
  return 0;
}
