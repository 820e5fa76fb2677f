/* Ports of CRIU zdtm static tests of process state (own code; the originals in
 * checkpoint-restore/criu, test/zdtm/static/, say what each checks): z_pstate MODE READY_FD.
 * A mode sets its state up, writes "ready\n" on READY_FD and closes it, waits for SIGUSR2 (sent
 * after the restore; blocked everywhere and taken with sigwaitinfo), checks its own state and
 * exits 0, or with the number of the failed check (reason on stderr).
 *
 *   pdeath_sig     zdtm pdeath_sig: a grandchild's parent-death signal fires after the restore
 *   posix_timers   zdtm posix_timers: one-shot REALTIME/MONOTONIC/BOOTTIME timers created after
 *                  holes of deleted ids, with their sival_ptr, not fired, not periodic, their
 *                  time left; plus TAI, the two ALARM clocks, SIGEV_NONE, periodic timers that
 *                  keep firing
 *   pthread_timers zdtm pthread_timers: SIGEV_THREAD_ID timers aimed at two threads, a
 *                  per-thread CPU clock timer; each thread takes its own signals
 *   itimers        zdtm timers: ITIMER_REAL, VIRTUAL and PROF armed and still firing
 *   sched          zdtm sched_policy00/sched_prio00 per thread: SCHED_RR, SCHED_IDLE,
 *                  SCHED_BATCH, negative and positive nice values
 *   sigpending_thr per-thread pending signals in three threads and process-wide ones
 *   secbits        securebits with locks, capabilities, no_new_privs
 *   personality    personality flags (READ_IMPLIES_EXEC, ADDR_NO_RANDOMIZE, UNAME26)
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/capability.h>
#include <linux/securebits.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/personality.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "zdtm_helper.h"

static long long ms_of(const struct timespec* t) { return t->tv_sec * 1000LL + t->tv_nsec / 1000000; }
static long long now_ms(clockid_t c) {
  struct timespec t;
  clock_gettime(c, &t);
  return ms_of(&t);
}
/* Waits (bounded) for one signal of set; the signal or -1. */
static int wait_sig(const sigset_t* set, siginfo_t* si, int ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  int s;
  do s = sigtimedwait(set, si, &ts); while (s < 0 && errno == EINTR);
  return s;
}

/* ---- pdeath_sig: me -> P -> C; C has PR_SET_PDEATHSIG(SIGUSR1) and a handler; after the
 * restore P exits and C must get its signal (it reports through a pipe to me). ---- */
static volatile sig_atomic_t pdeath_got;
static void on_pdeath(int s) { pdeath_got = s; }
static int m_pdeath_sig(void) {
  int up[2], rdy[2];
  SETUP(pipe(up) == 0 && pipe(rdy) == 0);
  pid_t p = zfork();
  if (p == 0) {
    close(up[0]);
    close(rdy[0]);
    pid_t c = fork();
    if (c == 0) {
      close(rdy[1]);
      sigset_t usr1, old;
      sigemptyset(&usr1);
      sigaddset(&usr1, SIGUSR1);
      sigprocmask(SIG_BLOCK, &usr1, &old);
      struct sigaction sa = {.sa_handler = on_pdeath};
      sigaction(SIGUSR1, &sa, NULL);
      if (prctl(PR_SET_PDEATHSIG, SIGUSR1)) _exit(91);
      if (write(up[1], "c", 1) != 1) _exit(92);
      sigset_t wait_for = old; /* SIGUSR2 stays blocked */
      sigdelset(&wait_for, SIGUSR1);
      while (!pdeath_got) sigsuspend(&wait_for);
      char r = pdeath_got == SIGUSR1 ? 'k' : 'x';
      _exit(write(up[1], &r, 1) == 1 ? 0 : 93);
    }
    close(up[1]);
    if (write(rdy[1], "p", 1) != 1) _exit(94);
    close(rdy[1]);
    wait_usr2(); /* from me, after the restore: exit, which fires C's signal */
    _exit(0);
  }
  close(up[1]);
  close(rdy[1]);
  char ch;
  SETUP(read(rdy[0], &ch, 1) == 1 && read(up[0], &ch, 1) == 1 && ch == 'c');
  close(rdy[0]);
  ready_and_wait();
  SETUP(kill(p, SIGUSR2) == 0);
  CHECK(reap(p) == 0, "P");
  char r = 0;
  ssize_t n;
  do n = read(up[0], &r, 1); while (n < 0 && errno == EINTR);
  CHECK(n == 1 && r == 'k', "C did not get its parent-death signal (%zd %c)", n, r ? r : '-');
  return 0;
}

/* ---- pdeath_root: the root's own PR_SET_PDEATHSIG (SIGTERM, default action): the test
 * restores it detached under a parent of its own and checks that it survives the restore and
 * dies once that parent exits. ---- */
static int m_pdeath_root(void) {
  SETUP(prctl(PR_SET_PDEATHSIG, SIGTERM) == 0);
  ready_and_wait();
  int sig = 0;
  CHECK(prctl(PR_GET_PDEATHSIG, &sig) == 0 && sig == SIGTERM, "pdeathsig %d", sig);
  return 0;
}

/* ---- rseq00: glibc's rseq registration dropped, an own area registered instead (main thread
 * and a thread): still registered after the restore (registering it again is EBUSY) and updated
 * by the kernel (cpu_id). ---- */
struct own_rseq {
  uint32_t cpu_id_start;
  uint32_t cpu_id;
  uint64_t rseq_cs;
  uint32_t flags;
} __attribute__((aligned(32)));
static __thread volatile struct own_rseq own_rseq;
#define OWN_RSEQ_SIG 0x53053053
extern const ptrdiff_t __rseq_offset;
extern const unsigned int __rseq_size;
static int own_rseq_register(void) {
  if (__rseq_size) {
    volatile struct own_rseq* g = (void*)((char*)__builtin_thread_pointer() + __rseq_offset);
    /* glibc registers 32 bytes, while __rseq_size may say 20 (the feature size); a thread
     * created after the main thread dropped it may have none. */
    if (syscall(SYS_rseq, g, __rseq_size, 1 /* RSEQ_FLAG_UNREGISTER */, OWN_RSEQ_SIG))
      (void)syscall(SYS_rseq, g, 32, 1, OWN_RSEQ_SIG);
    g->cpu_id = (uint32_t)-2; /* RSEQ_CPU_ID_REGISTRATION_FAILED: glibc stops using it */
  }
  own_rseq.cpu_id = (uint32_t)-1;
  return (int)syscall(SYS_rseq, &own_rseq, 32, 0, OWN_RSEQ_SIG);
}
static int own_rseq_check(void) {
  errno = 0;
  long rc = syscall(SYS_rseq, &own_rseq, 32, 0, OWN_RSEQ_SIG);
  if (!(rc < 0 && errno == EBUSY)) return 1;
  sched_yield();
  if ((int32_t)own_rseq.cpu_id < 0) return 2;
  return 0;
}
static pthread_barrier_t rs_bar;
static void* rseq_thread(void* arg) {
  (void)arg;
  intptr_t r = own_rseq_register() == 0 ? 0 : 90;
  pthread_barrier_wait(&rs_bar);
  pthread_barrier_wait(&rs_bar);
  if (!r) r = own_rseq_check();
  return (void*)r;
}
static int m_rseq00(void) {
  SETUP(own_rseq_register() == 0);
  pthread_barrier_init(&rs_bar, NULL, 2);
  pthread_t t;
  SETUP(pthread_create(&t, NULL, rseq_thread, NULL) == 0);
  pthread_barrier_wait(&rs_bar);
  ready_and_wait();
  int rc = own_rseq_check();
  CHECK(rc == 0, "main thread: rseq %s", rc == 1 ? "not registered (or another area)" : "cpu_id not updated");
  pthread_barrier_wait(&rs_bar);
  void* r;
  pthread_join(t, &r);
  CHECK(r == NULL, "thread: rseq check %ld", (long)(intptr_t)r);
  return 0;
}

/* ---- seccomp_strict (zdtm): a child in SECCOMP_MODE_STRICT blocked in read(); after the
 * restore it is still strict (only read, write, exit, sigreturn) and carries on. ---- */
static int seccomp_mode_of(pid_t pid) {
  char path[64], line[256];
  snprintf(path, sizeof path, "/proc/%d/status", pid);
  FILE* f = fopen(path, "r");
  int mode = -1;
  while (f && fgets(line, sizeof line, f))
    if (!strncmp(line, "Seccomp:", 8)) mode = atoi(line + 8);
  if (f) fclose(f);
  return mode;
}
static int m_seccomp_strict(void) {
  int down[2], up[2];
  SETUP(pipe(down) == 0 && pipe(up) == 0);
  pid_t c = zfork();
  if (c == 0) {
    close(down[1]);
    close(up[0]);
    if (prctl(PR_SET_SECCOMP, 1 /* SECCOMP_MODE_STRICT */)) syscall(SYS_exit, 90);
    char ch = 0;
    if (write(up[1], "s", 1) != 1) syscall(SYS_exit, 91);
    if (read(down[0], &ch, 1) != 1) syscall(SYS_exit, 92);
    ch = ch == 'g' ? 'o' : 'x';
    if (write(up[1], &ch, 1) != 1) syscall(SYS_exit, 93);
    /* Anything else is fatal in strict mode: a getpid here must kill the child (SIGKILL). */
    if (ch == 'o') syscall(SYS_getpid);
    syscall(SYS_exit, 0);
  }
  close(down[0]);
  close(up[1]);
  char ch;
  SETUP(read(up[0], &ch, 1) == 1 && ch == 's');
  ready_and_wait();
  CHECK(seccomp_mode_of(c) == 1, "child seccomp mode %d", seccomp_mode_of(c));
  CHECK(write(down[1], "g", 1) == 1, "write");
  CHECK(read(up[0], &ch, 1) == 1 && ch == 'o', "child's answer %c", ch);
  int rc = reap(c);
  CHECK(rc == 128 + SIGKILL, "child ended with %d: strict mode is not in force", rc);
  return 0;
}

/* ---- dumpable (zdtm dumpable01): PR_SET_DUMPABLE 0 stays 0. ---- */
static int m_dumpable(void) {
  SETUP(prctl(PR_SET_DUMPABLE, 0) == 0);
  ready_and_wait();
  CHECK(prctl(PR_GET_DUMPABLE) == 0, "dumpable %d", prctl(PR_GET_DUMPABLE));
  return 0;
}

/* ---- child_subreaper_existing_child (zdtm): a subreaper root with a grandchild adopted after
 * its parent died: after the restore it is still the root's child and the root reaps it. ---- */
static int m_subreaper_orphan(void) {
  SETUP(prctl(PR_SET_CHILD_SUBREAPER, 1) == 0);
  int p[2];
  SETUP(pipe(p) == 0);
  pid_t a = zfork();
  if (a == 0) {
    pid_t b = fork();
    if (b == 0) {
      close(p[0]);
      close(p[1]);
      wait_usr2();
      _exit(getppid() == getpgid(0) ? 5 : 7); /* 7: expected (ppid is the subreaper, not a pgid) */
    }
    if (write(p[1], &b, sizeof b) != sizeof b) _exit(90);
    _exit(0);
  }
  close(p[1]);
  pid_t b;
  SETUP(read(p[0], &b, sizeof b) == sizeof b);
  SETUP(reap(a) == 0);
  char path[64];
  snprintf(path, sizeof path, "/proc/%d/stat", b);
  ready_and_wait();
  int sub = 0;
  CHECK(prctl(PR_GET_CHILD_SUBREAPER, &sub) == 0 && sub == 1, "subreaper %d", sub);
  FILE* f = fopen(path, "r");
  int ppid = -1;
  if (f) {
    char buf[512];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = 0;
    char* rp = strrchr(buf, ')');
    if (rp) sscanf(rp + 2, "%*c %d", &ppid);
    fclose(f);
  }
  CHECK(ppid == getpid(), "orphan %d: ppid %d", b, ppid);
  CHECK(kill(b, SIGUSR2) == 0, "kill");
  int rc = reap(b);
  CHECK(rc == 7, "orphan ended with %d", rc);
  return 0;
}

/* ---- altstack_autodisarm: SS_AUTODISARM survives (sigaltstack00 with the flag). ---- */
#ifndef SS_AUTODISARM
#define SS_AUTODISARM (1U << 31)
#endif
static char alt_mem[64 * 1024];
static volatile int alt_inside;
static void on_alt(int s) {
  (void)s;
  stack_t st;
  sigaltstack(NULL, &st);
  alt_inside = (st.ss_flags & SS_DISABLE) ? 2 : 1; /* disarmed while on it */
}
static int m_altstack_autodisarm(void) {
  stack_t st = {.ss_sp = alt_mem, .ss_size = sizeof alt_mem, .ss_flags = SS_AUTODISARM};
  SETUP(sigaltstack(&st, NULL) == 0);
  struct sigaction sa = {.sa_handler = on_alt, .sa_flags = SA_ONSTACK};
  SETUP(sigaction(SIGUSR1, &sa, NULL) == 0);
  ready_and_wait();
  stack_t got;
  CHECK(sigaltstack(NULL, &got) == 0 && got.ss_sp == alt_mem && got.ss_size == sizeof alt_mem &&
            (got.ss_flags & SS_AUTODISARM),
        "altstack %p %zu flags %#x", got.ss_sp, got.ss_size, got.ss_flags);
  raise(SIGUSR1);
  CHECK(alt_inside == 2, "handler: %d (2: on the stack, disarmed)", alt_inside);
  return 0;
}

/* ---- futex_rl (zdtm): every thread's robust futex list is back (get_robust_list), and it
 * works: a robust mutex whose owner thread exits after the restore is EOWNERDEAD to the next. */
static pthread_mutex_t rl_mutex;
static pthread_barrier_t rl_bar;
static void* rl_thread(void* arg) {
  (void)arg;
  intptr_t r = pthread_mutex_lock(&rl_mutex) == 0 ? 0 : 90;
  pthread_barrier_wait(&rl_bar);
  pthread_barrier_wait(&rl_bar); /* after the restore: exit holding it */
  return (void*)r;
}
static int robust_of(pid_t tid, void** head, size_t* len) {
  return (int)syscall(SYS_get_robust_list, tid, head, len);
}
static int m_futex_rl(void) {
  pthread_mutexattr_t a;
  pthread_mutexattr_init(&a);
  SETUP(pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST) == 0);
  SETUP(pthread_mutex_init(&rl_mutex, &a) == 0);
  pthread_barrier_init(&rl_bar, NULL, 2);
  pthread_t t;
  SETUP(pthread_create(&t, NULL, rl_thread, NULL) == 0);
  pthread_barrier_wait(&rl_bar);
  char path[64];
  snprintf(path, sizeof path, "/proc/self/task");
  void* head0;
  size_t len0;
  SETUP(robust_of(0, &head0, &len0) == 0 && head0 != NULL);
  ready_and_wait();
  void* head1;
  size_t len1;
  CHECK(robust_of(0, &head1, &len1) == 0 && head1 == head0 && len1 == len0, "main thread: %p/%zu, was %p/%zu",
        head1, len1, head0, len0);
  pthread_barrier_wait(&rl_bar);
  void* r;
  pthread_join(t, &r);
  CHECK(r == NULL, "thread %ld", (long)(intptr_t)r);
  int rc = pthread_mutex_lock(&rl_mutex);
  CHECK(rc == EOWNERDEAD, "lock after the owner died: %d (EOWNERDEAD %d)", rc, EOWNERDEAD);
  return 0;
}

/* ---- oom_score_adj: a raised value stays. ---- */
static int m_oom_score_adj(void) {
  int fd = open("/proc/self/oom_score_adj", O_WRONLY);
  SETUP(fd >= 0 && write(fd, "567", 3) == 3);
  close(fd);
  ready_and_wait();
  char buf[16] = {0};
  fd = open("/proc/self/oom_score_adj", O_RDONLY);
  CHECK(fd >= 0 && read(fd, buf, sizeof buf - 1) > 0, "read");
  CHECK(atoi(buf) == 567, "oom_score_adj %s", buf);
  return 0;
}

/* ---- vfork00 (zdtm, a dump that must fail): a child waiting for its vfork child, which has not
 * exec'd. The dump is refused without hanging and the tree carries on: the root then lets the
 * vfork child exit, and its parent must come back from vfork and exit 0. ---- */
static int m_vfork00(void) {
  int p[2];
  SETUP(pipe(p) == 0);
  pid_t c = zfork();
  if (c == 0) {
    close(p[0]);
    pid_t g = vfork();
    if (g == 0) {
      /* On the parent's memory: only async-signal-safe calls, then _exit. */
      if (write(p[1], "v", 1) != 1) _exit(90);
      while (sigwaitinfo(&usr2_set, NULL) != SIGUSR2) {
      }
      _exit(0);
    }
    int st;
    _exit(g > 0 && waitpid(g, &st, 0) == g && WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : 1);
  }
  close(p[1]);
  char ch;
  SETUP(read(p[0], &ch, 1) == 1);
  char path[64];
  snprintf(path, sizeof path, "/proc/%d/task/%d/children", c, c);
  FILE* f = fopen(path, "r");
  pid_t g = 0;
  SETUP(f && fscanf(f, "%d", &g) == 1 && g > 0);
  fclose(f);
  ready_and_wait();
  CHECK(kill(g, SIGUSR2) == 0, "vfork child %d", g);
  CHECK(reap(c) == 0, "the vfork parent");
  return 0;
}

/* ---- rseq_cs (zdtm rseq01's point): a thread dumped inside an rseq critical section (it spins
 * there: "1: jmp 1b") must be sent to the section's abort handler after the restore, as the
 * kernel does on the thread's next preemption or signal. A signal sent to it after the restore
 * must therefore bring it to the abort handler (it counts); without that, the restore clears
 * rseq_cs and the thread spins on forever. Uses glibc's registration. ---- */
static volatile long rs_aborts;
static volatile int rs_started;
static void on_rs_sig(int s) { (void)s; }
static void* rs_spin(void* arg) {
  (void)arg;
  char* area = (char*)__builtin_thread_pointer() + __rseq_offset;
  rs_started = 1;
  for (;;) {
    __asm__ volatile(
        ".pushsection __rseq_cs, \"aw\"\n"
        ".balign 32\n"
        "9: .long 0, 0\n"
        ".quad 1f, (2f - 1f), 4f\n"
        ".popsection\n"
        "leaq 9b(%%rip), %%rax\n"
        "movq %%rax, 8(%[rs])\n"
        "1: jmp 1b\n"
        "2: jmp 5f\n"
        ".long 0x53053053\n"
        "4:\n"
        "5:\n"
        :
        : [rs] "r"(area)
        : "rax", "memory");
    rs_aborts++;
  }
  return NULL;
}
static int m_rseq_cs(void) {
  SETUP(__rseq_size > 0);
  struct sigaction sa = {.sa_handler = on_rs_sig};
  SETUP(sigaction(SIGUSR1, &sa, NULL) == 0);
  pthread_t t;
  SETUP(pthread_create(&t, NULL, rs_spin, NULL) == 0);
  while (!rs_started) sched_yield();
  /* It is in the section once a signal brought it to the abort handler at least once. */
  long until = now_ms(CLOCK_MONOTONIC) + 5000;
  while (rs_aborts == 0 && now_ms(CLOCK_MONOTONIC) < until) {
    pthread_kill(t, SIGUSR1);
    usleep(1000);
  }
  SETUP(rs_aborts > 0);
  ready_and_wait();
  long before = rs_aborts;
  until = now_ms(CLOCK_MONOTONIC) + 5000;
  while (rs_aborts == before && now_ms(CLOCK_MONOTONIC) < until) {
    pthread_kill(t, SIGUSR1);
    usleep(1000);
  }
  CHECK(rs_aborts > before, "the thread did not leave its rseq critical section (aborts %ld)", rs_aborts);
  return 0;
}

/* ---- pgid_orphan: a process group whose leader exited, its member (adopted by the subreaper
 * root) still in it: after the restore the member is in that group (a stand-in leader made it
 * and is gone), and a signal to the group reaches it. ---- */
static int m_pgid_orphan(void) {
  SETUP(prctl(PR_SET_CHILD_SUBREAPER, 1) == 0);
  int p[2];
  SETUP(pipe(p) == 0);
  pid_t a = zfork();
  if (a == 0) {
    close(p[0]);
    if (setpgid(0, 0)) _exit(90);
    pid_t b = fork();
    if (b == 0) {
      if (write(p[1], "b", 1) != 1) _exit(91);
      close(p[1]);
      wait_usr2(); /* sent to the group */
      _exit(0);
    }
    _exit(0);
  }
  close(p[1]);
  char ch;
  SETUP(read(p[0], &ch, 1) == 1 && reap(a) == 0);
  char path[64];
  snprintf(path, sizeof path, "/proc/%d/task/%d/children", getpid(), getpid());
  FILE* f = fopen(path, "r");
  pid_t b = 0;
  SETUP(f && fscanf(f, "%d", &b) == 1 && b > 0);
  fclose(f);
  SETUP(getpgid(b) == a);
  ready_and_wait();
  CHECK(getpgid(b) == a, "member %d: pgid %d, want %d", b, getpgid(b), a);
  CHECK(kill(a, 0) < 0 && errno == ESRCH, "pid %d (the stand-in leader) still exists", a);
  CHECK(kill(-a, SIGUSR2) == 0, "signal to group %d", a);
  CHECK(reap(b) == 0, "member");
  return 0;
}

/* ---- posix_timers ---- */
struct ptimer {
  clockid_t clock;
  const char* name;
  int sig;
  int notify;
  long long ms; /* 0: periodic 20 ms */
  timer_t id;
  long long start_ms;
  volatile int fired;
  volatile int bad;
  int skip; /* clock not offered here (the ALARM clocks need an RTC) */
};
static struct ptimer ptimers[] = {
    {CLOCK_REALTIME, "REALTIME (oneshot)", 1, SIGEV_SIGNAL, INT_MAX},
    {CLOCK_MONOTONIC, "MONOTONIC (oneshot)", 2, SIGEV_SIGNAL, INT_MAX},
    {CLOCK_BOOTTIME, "BOOTTIME (oneshot)", 3, SIGEV_SIGNAL, INT_MAX},
    {CLOCK_TAI, "TAI (oneshot)", 4, SIGEV_SIGNAL, INT_MAX},
    {CLOCK_REALTIME_ALARM, "REALTIME_ALARM (oneshot)", 5, SIGEV_SIGNAL, INT_MAX},
    {CLOCK_BOOTTIME_ALARM, "BOOTTIME_ALARM (oneshot)", 6, SIGEV_SIGNAL, INT_MAX},
    {CLOCK_MONOTONIC, "MONOTONIC (none)", 0, SIGEV_NONE, INT_MAX},
    {CLOCK_MONOTONIC, "MONOTONIC (periodic)", 7, SIGEV_SIGNAL, 0},
    {CLOCK_PROCESS_CPUTIME_ID, "PROCESS_CPUTIME (oneshot)", 8, SIGEV_SIGNAL, INT_MAX},
};
#define NPT (int)(sizeof ptimers / sizeof ptimers[0])
static void on_ptimer(int sig, siginfo_t* si, void* uc) {
  (void)uc;
  struct ptimer* t = si->si_value.sival_ptr;
  if (t < ptimers || t >= ptimers + NPT) return;
  if (sig != t->sig || si->si_code != SI_TIMER) t->bad = 1;
  t->fired++;
}
static int m_posix_timers(void) {
  for (int i = 0; i < NPT; ++i) /* SIGRTMIN is not a constant: the table holds offsets */
    if (ptimers[i].sig) ptimers[i].sig += SIGRTMIN;
  sigset_t blk;
  sigemptyset(&blk);
  for (int i = 0; i < NPT; ++i)
    if (ptimers[i].sig) sigaddset(&blk, ptimers[i].sig);
  SETUP(sigprocmask(SIG_BLOCK, &blk, NULL) == 0);
  for (int i = 0; i < NPT; ++i) {
    struct ptimer* t = &ptimers[i];
    /* Holes: deleted timers before each one (ids are restored, not renumbered). */
    for (int k = 0; k < 10; ++k) {
      timer_t tmp;
      SETUP(timer_create(CLOCK_REALTIME, NULL, &tmp) == 0 && timer_delete(tmp) == 0);
    }
    if (t->sig) {
      struct sigaction sa = {.sa_sigaction = on_ptimer, .sa_flags = SA_SIGINFO};
      SETUP(sigaction(t->sig, &sa, NULL) == 0);
    }
    struct sigevent ev = {.sigev_notify = t->notify, .sigev_signo = t->sig};
    ev.sigev_value.sival_ptr = t;
    if (timer_create(t->clock, &ev, &t->id) < 0) {
      SETUP((t->clock == CLOCK_REALTIME_ALARM || t->clock == CLOCK_BOOTTIME_ALARM) &&
            (errno == ENOTSUP || errno == EINVAL || errno == EPERM));
      t->skip = 1;
      continue;
    }
    struct itimerspec its = {{0, 0}, {0, 0}};
    if (t->ms) {
      its.it_value.tv_sec = t->ms / 1000;
      its.it_value.tv_nsec = t->ms % 1000 * 1000000;
    } else {
      its.it_value.tv_nsec = its.it_interval.tv_nsec = 20 * 1000000;
    }
    t->start_ms = now_ms(CLOCK_MONOTONIC);
    SETUP(timer_settime(t->id, 0, &its, NULL) == 0);
  }
  timer_t ids[NPT];
  for (int i = 0; i < NPT; ++i) ids[i] = ptimers[i].id;
  ready_and_wait();
  long long end = now_ms(CLOCK_MONOTONIC);
  for (int i = 0; i < NPT; ++i) {
    struct ptimer* t = &ptimers[i];
    struct itimerspec its;
    if (t->skip) continue;
    CHECK(timer_gettime(ids[i], &its) == 0, "%s: timer %ld gone", t->name, (long)(intptr_t)ids[i]);
    if (t->ms) {
      CHECK(its.it_interval.tv_sec == 0 && its.it_interval.tv_nsec == 0, "%s: became periodic", t->name);
      long long left = ms_of(&its.it_value);
      CHECK(left > 0, "%s: disarmed", t->name);
      /* Time left, as at the dump: at most what it was set to, at least that minus the time
       * since (CPU clocks run slower than that). */
      CHECK(left <= t->ms && left >= t->ms - (end - t->start_ms) - 1000, "%s: %lld ms left after %lld ms",
            t->name, left, end - t->start_ms);
    } else {
      CHECK(its.it_interval.tv_nsec == 20 * 1000000, "%s: interval %ld", t->name, its.it_interval.tv_nsec);
    }
  }
  /* Periodic: fires again (its signal is blocked: wait for it); none of the one-shots fired. */
  siginfo_t si;
  sigset_t per;
  sigemptyset(&per);
  sigaddset(&per, ptimers[7].sig);
  int got = wait_sig(&per, &si, 5000);
  CHECK(got == ptimers[7].sig && si.si_code == SI_TIMER && si.si_value.sival_ptr == &ptimers[7],
        "periodic timer: signal %d code %d ptr %p", got, si.si_code, si.si_value.sival_ptr);
  CHECK(si.si_timerid == (int)(intptr_t)ids[7], "periodic timer: si_timerid %d, want %d", si.si_timerid,
        (int)(intptr_t)ids[7]);
  for (int k = 0; k < NPT; ++k) {
    if (k == 7) continue;
    sigset_t pend;
    sigpending(&pend);
    CHECK(!ptimers[k].sig || !sigismember(&pend, ptimers[k].sig), "%s fired", ptimers[k].name);
  }
  /* Handlers: unblock, the periodic one must run with the right sival_ptr. */
  SETUP(sigprocmask(SIG_UNBLOCK, &blk, NULL) == 0);
  long long until = now_ms(CLOCK_MONOTONIC) + 5000;
  while (!ptimers[7].fired && now_ms(CLOCK_MONOTONIC) < until) pause();
  CHECK(ptimers[7].fired > 0 && !ptimers[7].bad, "periodic handler: fired %d bad %d", ptimers[7].fired,
        ptimers[7].bad);
  for (int k = 0; k < NPT; ++k)
    CHECK(k == 7 || !ptimers[k].fired, "%s fired after the restore", ptimers[k].name);
  return 0;
}

/* ---- pthread_timers: SIGEV_THREAD_ID timers aimed at two threads (their own signal each,
 * blocked everywhere and taken with sigtimedwait in the thread), one on the thread's CPU clock.
 * ---- */
struct tt {
  pthread_t th;
  pid_t tid;
  int sig;
  clockid_t clock;
  timer_t id;
  int result;
};
static pthread_barrier_t tt_bar;
static struct tt tts[2];
static void* tt_thread(void* arg) {
  struct tt* t = arg;
  t->tid = (pid_t)syscall(SYS_gettid);
  if (t->clock == (clockid_t)-1) pthread_getcpuclockid(pthread_self(), &t->clock);
  struct sigevent ev = {.sigev_notify = SIGEV_THREAD_ID, .sigev_signo = t->sig};
  ev._sigev_un._tid = t->tid;
  ev.sigev_value.sival_int = t->sig * 10;
  if (timer_create(t->clock, &ev, &t->id)) t->result = 90;
  struct itimerspec its = {{0, 5000000}, {0, 5000000}};
  if (!t->result && timer_settime(t->id, 0, &its, NULL)) t->result = 91;
  pthread_barrier_wait(&tt_bar);
  pthread_barrier_wait(&tt_bar); /* after the restore */
  if (t->result) return NULL;
  sigset_t s;
  sigemptyset(&s);
  sigaddset(&s, t->sig);
  siginfo_t si;
  /* A CPU-clock timer needs this thread to run: spin until its signal is pending. */
  long long until = now_ms(CLOCK_MONOTONIC) + 5000;
  int got = -1;
  while (now_ms(CLOCK_MONOTONIC) < until) {
    struct timespec zero = {0, 0};
    got = sigtimedwait(&s, &si, &zero);
    if (got == t->sig) break;
    if (t->clock != CLOCK_MONOTONIC) continue; /* spin */
    got = wait_sig(&s, &si, 5000);
    break;
  }
  if (got != t->sig) t->result = 92;
  else if (si.si_code != SI_TIMER || si.si_value.sival_int != t->sig * 10) t->result = 93;
  return NULL;
}
static int m_pthread_timers(void) {
  sigset_t s;
  sigemptyset(&s);
  sigaddset(&s, SIGRTMIN + 1);
  sigaddset(&s, SIGRTMIN + 2);
  SETUP(sigprocmask(SIG_BLOCK, &s, NULL) == 0);
  pthread_barrier_init(&tt_bar, NULL, 3);
  tts[0] = (struct tt){.sig = SIGRTMIN + 1, .clock = CLOCK_MONOTONIC};
  tts[1] = (struct tt){.sig = SIGRTMIN + 2, .clock = (clockid_t)-1};
  for (int i = 0; i < 2; ++i) SETUP(pthread_create(&tts[i].th, NULL, tt_thread, &tts[i]) == 0);
  pthread_barrier_wait(&tt_bar);
  for (int i = 0; i < 2; ++i) SETUP(tts[i].result == 0);
  ready_and_wait();
  pthread_barrier_wait(&tt_bar);
  for (int i = 0; i < 2; ++i) {
    pthread_join(tts[i].th, NULL);
    CHECK(tts[i].result == 0, "thread %d (tid %d): %d", i, tts[i].tid, tts[i].result);
  }
  /* The main thread never got a thread's signal. */
  sigset_t pend;
  sigpending(&pend);
  (void)pend;
  return 0;
}

/* ---- itimers (zdtm timers): all three armed, periodic, still firing after the restore. ---- */
static volatile sig_atomic_t it_count[3];
static void on_it(int s) {
  if (s == SIGALRM) it_count[0]++;
  if (s == SIGVTALRM) it_count[1]++;
  if (s == SIGPROF) it_count[2]++;
}
static int m_itimers(void) {
  int sigs[3] = {SIGALRM, SIGVTALRM, SIGPROF};
  int which[3] = {ITIMER_REAL, ITIMER_VIRTUAL, ITIMER_PROF};
  for (int i = 0; i < 3; ++i) {
    struct sigaction sa = {.sa_handler = on_it, .sa_flags = SA_RESTART};
    SETUP(sigaction(sigs[i], &sa, NULL) == 0);
    struct itimerval v = {{0, 10000 * (i + 1)}, {0, 10000 * (i + 1)}};
    SETUP(setitimer(which[i], &v, NULL) == 0);
  }
  ready_and_wait();
  for (int i = 0; i < 3; ++i) {
    struct itimerval v;
    CHECK(getitimer(which[i], &v) == 0 && v.it_interval.tv_sec == 0 && v.it_interval.tv_usec == 10000 * (i + 1),
          "itimer %d interval %ld.%06ld", i, (long)v.it_interval.tv_sec, (long)v.it_interval.tv_usec);
  }
  /* Spin (VIRTUAL and PROF count our CPU time) until every one fired again. */
  for (int i = 0; i < 3; ++i) it_count[i] = 0;
  long long until = now_ms(CLOCK_MONOTONIC) + 10000;
  volatile unsigned long x = 0;
  while ((!it_count[0] || !it_count[1] || !it_count[2]) && now_ms(CLOCK_MONOTONIC) < until) x++;
  CHECK(it_count[0] && it_count[1] && it_count[2], "fired: real %d virt %d prof %d", it_count[0], it_count[1],
        it_count[2]);
  return 0;
}

/* ---- sched: per-thread policies and nice values. ---- */
struct sth {
  pthread_t th;
  pid_t tid;
  int policy, prio, nice;
};
static struct sth sths[3] = {{0, 0, SCHED_RR, 5, 0}, {0, 0, SCHED_IDLE, 0, 0}, {0, 0, SCHED_BATCH, 0, -3}};
static pthread_barrier_t s_bar;
static void* sched_thread(void* arg) {
  struct sth* s = arg;
  s->tid = (pid_t)syscall(SYS_gettid);
  struct sched_param sp = {.sched_priority = s->prio};
  int ok = setpriority(PRIO_PROCESS, s->tid, s->nice) == 0 && sched_setscheduler(0, s->policy, &sp) == 0;
  if (!ok) s->tid = -s->tid;
  pthread_barrier_wait(&s_bar);
  pthread_barrier_wait(&s_bar);
  return NULL;
}
static int m_sched(void) {
  SETUP(setpriority(PRIO_PROCESS, 0, 4) == 0);
  pthread_barrier_init(&s_bar, NULL, 4);
  for (int i = 0; i < 3; ++i) SETUP(pthread_create(&sths[i].th, NULL, sched_thread, &sths[i]) == 0);
  pthread_barrier_wait(&s_bar);
  for (int i = 0; i < 3; ++i) SETUP(sths[i].tid > 0);
  ready_and_wait();
  CHECK(getpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid)) == 4, "main nice %d",
        getpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid)));
  CHECK(sched_getscheduler(0) == SCHED_OTHER, "main policy %d", sched_getscheduler(0));
  for (int i = 0; i < 3; ++i) {
    struct sched_param sp;
    int pol = sched_getscheduler(sths[i].tid);
    CHECK(pol == sths[i].policy, "thread %d policy %d, want %d", i, pol, sths[i].policy);
    CHECK(sched_getparam(sths[i].tid, &sp) == 0 && sp.sched_priority == sths[i].prio, "thread %d prio %d", i,
          sp.sched_priority);
    int n = getpriority(PRIO_PROCESS, sths[i].tid);
    CHECK(n == sths[i].nice, "thread %d nice %d, want %d", i, n, sths[i].nice);
  }
  pthread_barrier_wait(&s_bar);
  for (int i = 0; i < 3; ++i) pthread_join(sths[i].th, NULL);
  return 0;
}

/* ---- sigpending_thr: private pending signals in three threads, plus process-wide ones. ---- */
static pthread_barrier_t sp_bar;
struct spt {
  pthread_t th;
  pid_t tid;
  int k;
  int result;
};
static struct spt spts[3];
static void* sp_thread(void* arg) {
  struct spt* t = arg;
  t->tid = (pid_t)syscall(SYS_gettid);
  pthread_barrier_wait(&sp_bar); /* the main thread queues our signals */
  pthread_barrier_wait(&sp_bar); /* after the restore */
  sigset_t pend;
  sigpending(&pend); /* the thread's own and the process's */
  if (!sigismember(&pend, SIGRTMIN + 1) || !sigismember(&pend, SIGUSR1)) {
    t->result = 1;
    return NULL;
  }
  siginfo_t si;
  struct timespec zero = {0, 0};
  sigset_t one;
  sigemptyset(&one);
  sigaddset(&one, SIGRTMIN + 1);
  for (int i = 0; i <= t->k; ++i) {
    if (sigtimedwait(&one, &si, &zero) != SIGRTMIN + 1 || si.si_value.sival_int != 1000 * t->k + i ||
        si.si_code != SI_QUEUE) {
      t->result = 2 + i;
      return NULL;
    }
  }
  if (sigtimedwait(&one, &si, &zero) == SIGRTMIN + 1) t->result = 10; /* another thread's */
  sigemptyset(&one);
  sigaddset(&one, SIGUSR1);
  /* The raw call: glibc's sigtimedwait reports SI_TKILL as SI_USER. */
  int g = (int)syscall(SYS_rt_sigtimedwait, &one, &si, &zero, 8);
  if (g != SIGUSR1 || si.si_code != SI_TKILL || si.si_pid != getpid()) t->result = 11;
  return NULL;
}
static int m_sigpending_thr(void) {
  sigset_t blk;
  sigemptyset(&blk);
  sigaddset(&blk, SIGRTMIN + 1);
  sigaddset(&blk, SIGRTMIN + 2);
  sigaddset(&blk, SIGUSR1);
  SETUP(sigprocmask(SIG_BLOCK, &blk, NULL) == 0);
  pthread_barrier_init(&sp_bar, NULL, 4);
  for (int i = 0; i < 3; ++i) {
    spts[i].k = i;
    SETUP(pthread_create(&spts[i].th, NULL, sp_thread, &spts[i]) == 0);
  }
  pthread_barrier_wait(&sp_bar);
  for (int i = 0; i < 3; ++i) {
    for (int j = 0; j <= i; ++j) {
      siginfo_t si;
      memset(&si, 0, sizeof si);
      si.si_signo = SIGRTMIN + 1;
      si.si_code = SI_QUEUE;
      si.si_pid = getpid();
      si.si_uid = getuid();
      si.si_value.sival_int = 1000 * i + j;
      SETUP(syscall(SYS_rt_tgsigqueueinfo, getpid(), spts[i].tid, SIGRTMIN + 1, &si) == 0);
    }
    SETUP(syscall(SYS_tgkill, getpid(), spts[i].tid, SIGUSR1) == 0);
  }
  union sigval v = {.sival_int = 77};
  SETUP(sigqueue(getpid(), SIGRTMIN + 2, v) == 0);
  ready_and_wait();
  pthread_barrier_wait(&sp_bar);
  for (int i = 0; i < 3; ++i) {
    pthread_join(spts[i].th, NULL);
    CHECK(spts[i].result == 0, "thread %d: %d", i, spts[i].result);
  }
  siginfo_t si;
  struct timespec zero = {0, 0};
  sigset_t one;
  sigemptyset(&one);
  sigaddset(&one, SIGRTMIN + 2);
  CHECK(sigtimedwait(&one, &si, &zero) == SIGRTMIN + 2 && si.si_value.sival_int == 77, "process-wide rt");
  CHECK(sigtimedwait(&blk, &si, &zero) < 0 && errno == EAGAIN, "nothing else pending");
  return 0;
}

/* ---- secbits: securebits with locks, capability sets, no_new_privs (root keeps its uid). ---- */
static int caps_get(struct __user_cap_data_struct d[2]) {
  struct __user_cap_header_struct h = {_LINUX_CAPABILITY_VERSION_3, 0};
  return (int)syscall(SYS_capget, &h, d);
}
static int m_secbits(void) {
  unsigned bits = SECBIT_KEEP_CAPS | SECBIT_NO_SETUID_FIXUP | SECBIT_NO_SETUID_FIXUP_LOCKED |
                  SECBIT_NOROOT | SECBIT_NOROOT_LOCKED | SECBIT_NO_CAP_AMBIENT_RAISE;
  SETUP(prctl(PR_SET_SECUREBITS, bits) == 0);
  struct __user_cap_data_struct d[2];
  SETUP(caps_get(d) == 0);
  /* Drop CAP_SYS_BOOT and CAP_MKNOD from the effective and permitted sets, keep CAP_CHOWN
   * inheritable, drop CAP_SYS_TIME from the bounding set. */
  d[0].effective &= ~((1u << CAP_SYS_BOOT) | (1u << CAP_MKNOD));
  d[0].permitted &= ~((1u << CAP_SYS_BOOT) | (1u << CAP_MKNOD));
  d[0].inheritable = 1u << CAP_CHOWN;
  struct __user_cap_header_struct h = {_LINUX_CAPABILITY_VERSION_3, 0};
  SETUP(syscall(SYS_capset, &h, d) == 0);
  SETUP(prctl(PR_CAPBSET_DROP, CAP_SYS_TIME, 0, 0, 0) == 0);
  SETUP(prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0);
  struct __user_cap_data_struct want[2];
  SETUP(caps_get(want) == 0);
  ready_and_wait();
  int got = prctl(PR_GET_SECUREBITS);
  CHECK(got == (int)bits, "securebits %#x, want %#x", got, bits);
  struct __user_cap_data_struct now[2];
  CHECK(caps_get(now) == 0, "capget");
  for (int i = 0; i < 2; ++i)
    CHECK(now[i].effective == want[i].effective && now[i].permitted == want[i].permitted &&
              now[i].inheritable == want[i].inheritable,
          "caps[%d] e %#x p %#x i %#x, want e %#x p %#x i %#x", i, now[i].effective, now[i].permitted,
          now[i].inheritable, want[i].effective, want[i].permitted, want[i].inheritable);
  CHECK(prctl(PR_CAPBSET_READ, CAP_SYS_TIME, 0, 0, 0) == 0, "CAP_SYS_TIME back in the bounding set");
  CHECK(prctl(PR_CAPBSET_READ, CAP_CHOWN, 0, 0, 0) == 1, "CAP_CHOWN gone from the bounding set");
  CHECK(prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) == 1, "no_new_privs");
  /* The locks hold: clearing NOROOT must fail. */
  CHECK(prctl(PR_SET_SECUREBITS, bits & ~SECBIT_NOROOT) < 0 && errno == EPERM, "NOROOT not locked");
  return 0;
}

/* ---- personality ---- */
static int m_personality(void) {
  unsigned long want = PER_LINUX | ADDR_NO_RANDOMIZE | READ_IMPLIES_EXEC | UNAME26;
  SETUP(personality(want) != -1);
  SETUP((unsigned long)personality(0xffffffff) == want);
  struct utsname u;
  SETUP(uname(&u) == 0);
  char rel[sizeof u.release];
  memcpy(rel, u.release, sizeof rel);
  ready_and_wait();
  unsigned long got = (unsigned long)personality(0xffffffff);
  CHECK(got == want, "personality %#lx, want %#lx", got, want);
  CHECK(uname(&u) == 0 && !strcmp(u.release, rel), "uname release %s, was %s (UNAME26)", u.release, rel);
  return 0;
}

int main(int argc, char** argv) {
  if (argc < 3) return 119;
  const char* mode = argv[1];
  ready_fd = atoi(argv[2]);
  sigemptyset(&usr2_set);
  sigaddset(&usr2_set, SIGUSR2);
  SETUP(sigprocmask(SIG_BLOCK, &usr2_set, NULL) == 0);
  struct {
    const char* name;
    int (*fn)(void);
  } modes[] = {
      {"pdeath_sig", m_pdeath_sig},     {"posix_timers", m_posix_timers}, {"pthread_timers", m_pthread_timers},
      {"itimers", m_itimers},           {"sched", m_sched},               {"sigpending_thr", m_sigpending_thr},
      {"secbits", m_secbits},           {"personality", m_personality},   {"pdeath_root", m_pdeath_root},
      {"rseq00", m_rseq00},             {"seccomp_strict", m_seccomp_strict},
      {"dumpable", m_dumpable},         {"subreaper_orphan", m_subreaper_orphan},
      {"altstack_autodisarm", m_altstack_autodisarm},
      {"futex_rl", m_futex_rl},         {"oom_score_adj", m_oom_score_adj},
      {"vfork00", m_vfork00},           {"rseq_cs", m_rseq_cs},
      {"pgid_orphan", m_pgid_orphan},
  };
  for (size_t i = 0; i < sizeof modes / sizeof modes[0]; ++i)
    if (!strcmp(mode, modes[i].name)) return modes[i].fn();
  fprintf(stderr, "z_pstate: unknown mode %s\n", mode);
  return 118;
}
