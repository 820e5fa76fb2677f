/* Ports of CRIU zdtm "static" tests (own code; the originals in checkpoint-restore/criu,
 * test/zdtm/static/, say what each checks): z_static MODE READY_FD DIR.
 * A mode sets its state up, writes "ready\n" on READY_FD and closes it, waits for SIGUSR2 (sent
 * after the restore; blocked everywhere and taken with sigwaitinfo, so it cannot be lost), checks
 * its own state and exits 0, or with the number of the failed check (reason on stderr). */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/resource.h>
#include <sys/shm.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/timerfd.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <time.h>
#include <unistd.h>

#include "zdtm_helper.h"

/* Threads wait for their own signal (sent with pthread_kill), never taking the process's
 * SIGUSR2. */
#define THREAD_GO (SIGRTMIN + 10)
static void wait_thread_go(void) {
  sigset_t s;
  sigemptyset(&s);
  sigaddset(&s, THREAD_GO);
  while (sigwaitinfo(&s, NULL) != THREAD_GO) {
  }
}
/* The VmFlags of the smaps entry that starts at addr ("" if none). */
static const char* vmflags(void* addr) {
  static char flags[512];
  char line[512];
  FILE* f = fopen("/proc/self/smaps", "r");
  int in = 0;
  flags[0] = 0;
  while (f && fgets(line, sizeof line, f)) {
    unsigned long s, e;
    if (sscanf(line, "%lx-%lx ", &s, &e) == 2) in = (s == (unsigned long)addr);
    if (in && !strncmp(line, "VmFlags:", 8)) {
      snprintf(flags, sizeof flags, "%s", line + 8);
      break;
    }
  }
  if (f) fclose(f);
  return flags;
}
/* The permissions ("rw-p") of the maps entry that starts at addr. */
static const char* perms(void* addr) {
  static char p[8];
  char line[512];
  FILE* f = fopen("/proc/self/maps", "r");
  p[0] = 0;
  while (f && fgets(line, sizeof line, f)) {
    unsigned long s, e;
    char pr[8];
    if (sscanf(line, "%lx-%lx %7s", &s, &e, pr) == 3 && s == (unsigned long)addr) {
      snprintf(p, sizeof p, "%s", pr);
      break;
    }
  }
  if (f) fclose(f);
  return p;
}
static long status_field(const char* name) {
  char line[256];
  long v = -1;
  FILE* f = fopen("/proc/self/status", "r");
  while (f && fgets(line, sizeof line, f))
    if (!strncmp(line, name, strlen(name)) && line[strlen(name)] == ':') v = atol(line + strlen(name) + 1);
  if (f) fclose(f);
  return v;
}
static char proc_state(pid_t pid) {
  char p[64], buf[512];
  snprintf(p, sizeof p, "/proc/%d/stat", pid);
  int fd = open(p, O_RDONLY);
  if (fd < 0) return 0;
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return 0;
  buf[n] = 0;
  char* rp = strrchr(buf, ')');
  return rp ? rp[2] : 0;
}
/* A child that waits for SIGUSR2 (inherited blocked mask) then exits with code. */
static pid_t child_waiting(int code) {
  pid_t p = zfork();
  SETUP(p >= 0);
  if (p == 0) {
    wait_usr2();
    _exit(code);
  }
  return p;
}

/* ---- environment and memory ---- */

static int m_env00(void) {
  SETUP(setenv("ZDTM_ENV_TEST", "godwit-env-value-0123456789", 1) == 0);
  ready_and_wait();
  const char* v = getenv("ZDTM_ENV_TEST");
  CHECK(v && !strcmp(v, "godwit-env-value-0123456789"), "env: %s", v ? v : "(null)");
  return 0;
}

static int m_maps00(void) {
  const size_t pg = 4096, n = 16 * pg;
  char* ap = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  char* as = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  int fd = open(path_in("maps00.data"), O_RDWR | O_CREAT | O_TRUNC, 0644);
  SETUP(fd >= 0 && ftruncate(fd, 2 * n) == 0);
  char* fp = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
  char* fs = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_SHARED, fd, n);
  char* ro = mmap(NULL, n, PROT_READ, MAP_PRIVATE, fd, 0);
  char* ex = mmap(NULL, n, PROT_READ | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  SETUP(ap != MAP_FAILED && as != MAP_FAILED && fp != MAP_FAILED && fs != MAP_FAILED &&
        ro != MAP_FAILED && ex != MAP_FAILED);
  close(fd);
  fill(ap, n, 1);
  fill(as, n, 2);
  fill(fp, n, 3);
  fill(fs, n, 4);
  pid_t kid = zfork();  /* the shared anon region is shared with a child too */
  if (kid == 0) {
    wait_usr2();
    _exit(same(as, n, 5) ? 0 : 1);
  }
  ready_and_wait();
  CHECK(same(ap, n, 1), "private anon");
  CHECK(same(as, n, 2), "shared anon");
  CHECK(same(fp, n, 3), "private file");
  CHECK(same(fs, n, 4), "shared file");
  CHECK(ro[0] == 0 && ro[n - 1] == 0, "private file read-only (page cache)");
  CHECK(!strcmp(perms(ap), "rw-p") && !strcmp(perms(as), "rw-s") && !strcmp(perms(fp), "rw-p") &&
            !strcmp(perms(fs), "rw-s") && !strcmp(perms(ro), "r--p") && !strcmp(perms(ex), "r-xp"),
        "perms %s", perms(ex));
  char buf[64];
  fd = open(path_in("maps00.data"), O_RDONLY);
  CHECK(pread(fd, buf, 64, n) == 64 && same(buf, 64, 4), "shared file written through");
  close(fd);
  fill(as, n, 5);
  kill(kid, SIGUSR2);
  CHECK(reap(kid) == 0, "child saw the shared anon region change");
  return 0;
}

/* maps01/maps04: a big region, sparsely and densely touched. */
static int m_maps_large(void) {
  const size_t big = 512ul << 20, pg = 4096;
  char* p = mmap(NULL, big, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  SETUP(p != MAP_FAILED);
  for (size_t off = 0; off < big; off += 1 << 20) *(uint64_t*)(p + off) = off ^ 0x5a5a5a5a;
  fill(p + (100ul << 20), 16ul << 20, 9);
  ready_and_wait();
  for (size_t off = 0; off < big; off += 1 << 20)
    if (off < (100ul << 20) || off >= (116ul << 20))
      CHECK(*(uint64_t*)(p + off) == (off ^ 0x5a5a5a5a), "at %zu", off);
  CHECK(same(p + (100ul << 20), 16ul << 20, 9), "dense part");
  CHECK(p[pg * 3 + 5] == 0, "untouched page reads zero");
  return 0;
}

/* maps02: madvise state (MADV_DONTFORK, MADV_DONTDUMP, MADV_WIPEONFORK) survives. */
static int m_maps02(void) {
  const size_t n = 8 * 4096;
  char* a = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  char* b = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  SETUP(a != MAP_FAILED && b != MAP_FAILED);
  fill(a, n, 1);
  fill(b, n, 2);
  SETUP(madvise(a, n, MADV_DONTFORK) == 0);
  SETUP(madvise(b, n, MADV_DONTDUMP) == 0);
  SETUP(strstr(vmflags(a), " dc") && strstr(vmflags(b), " dd"));
  ready_and_wait();
  CHECK(same(a, n, 1) && same(b, n, 2), "data");
  CHECK(strstr(vmflags(a), " dc"), "MADV_DONTFORK lost: VmFlags%s", vmflags(a));
  CHECK(strstr(vmflags(b), " dd"), "MADV_DONTDUMP lost: VmFlags%s", vmflags(b));
  return 0;
}

/* mprotect00: a region split into pieces with different protections, data in each. */
static int m_mprotect00(void) {
  const size_t pg = 4096;
  char* p = mmap(NULL, 8 * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  SETUP(p != MAP_FAILED);
  fill(p, 8 * pg, 3);
  int prots[8] = {PROT_READ, PROT_NONE, PROT_READ | PROT_WRITE, PROT_READ | PROT_EXEC, PROT_WRITE | PROT_READ,
                  PROT_NONE, PROT_READ, PROT_READ | PROT_WRITE | PROT_EXEC};
  for (int i = 0; i < 8; ++i) SETUP(mprotect(p + i * pg, pg, prots[i]) == 0);
  ready_and_wait();
  const char* want[8] = {"r--p", "---p", "rw-p", "r-xp", "rw-p", "---p", "r--p", "rwxp"};
  for (int i = 0; i < 8; ++i)
    if (i != 4) CHECK(!strcmp(perms(p + i * pg), want[i]), "page %d: %s", i, perms(p + i * pg));
  for (int i = 0; i < 8; ++i) SETUP(mprotect(p + i * pg, pg, PROT_READ) == 0);
  CHECK(same(p, 8 * pg, 3), "data");
  return 0;
}

static int m_brk(void) {
  char* start = sbrk(0);
  char* p = sbrk(3 * 4096 + 100);
  SETUP(p != (void*)-1);
  fill(p, 3 * 4096 + 100, 4);
  char* end = sbrk(0);
  ready_and_wait();
  CHECK(sbrk(0) == end, "brk moved: %p != %p", sbrk(0), end);
  CHECK(same(p, 3 * 4096 + 100, 4), "brk data");
  CHECK(sbrk(4096 * 10) == end && sbrk(0) == end + 40960, "brk grows");
  memset(end, 1, 40960);
  CHECK(brk(start) == 0 && sbrk(0) == start, "brk shrinks");
  return 0;
}

static int m_mlock(void) {
  const size_t n = 16 * 4096;
  char* p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  SETUP(p != MAP_FAILED);
  fill(p, n, 5);
  SETUP(mlock(p, n) == 0);
  long before = status_field("VmLck");
  ready_and_wait();
  CHECK(same(p, n, 5), "data");
  CHECK(strstr(vmflags(p), " lo"), "VM_LOCKED lost: VmFlags%s", vmflags(p));
  CHECK(status_field("VmLck") == before, "VmLck %ld kB, was %ld", status_field("VmLck"), before);
  return 0;
}

static int m_vdso01(void) {
  struct timespec a, b, c;
  clock_gettime(CLOCK_MONOTONIC, &a);
  clock_gettime(CLOCK_REALTIME, &c);
  ready_and_wait();
  CHECK(perms((void*)getauxval(AT_SYSINFO_EHDR))[0] == 'r', "AT_SYSINFO_EHDR is not the vdso");
  clock_gettime(CLOCK_MONOTONIC, &b);
  CHECK(b.tv_sec > a.tv_sec || (b.tv_sec == a.tv_sec && b.tv_nsec >= a.tv_nsec), "monotonic");
  struct timeval tv;
  CHECK(gettimeofday(&tv, NULL) == 0 && tv.tv_sec >= c.tv_sec, "gettimeofday");
  CHECK(time(NULL) >= c.tv_sec, "time");
  unsigned cpu;
  CHECK(getcpu(&cpu, NULL) == 0, "getcpu");
  return 0;
}

/* ---- threads ---- */

static __thread uint64_t tls_val;
static pthread_barrier_t bar;
static volatile int t_fail;

static void* pthread00_fn(void* arg) {
  uint64_t v = (uintptr_t)arg;
  tls_val = v * 0x1000193;
  char stack_data[2048];
  fill(stack_data, sizeof stack_data, (unsigned)v);
  pthread_barrier_wait(&bar);
  wait_thread_go();  /* each thread takes its own (directed with tgkill by main) */
  if (tls_val != v * 0x1000193 || !same(stack_data, sizeof stack_data, (unsigned)v)) t_fail = 1;
  if (gettid() == getpid()) t_fail = 2;
  return (void*)(uintptr_t)(v + 1);
}

static int m_pthread(int n) {
  pthread_t t[256];
  pthread_barrier_init(&bar, NULL, n + 1);
  for (int i = 0; i < n; ++i) SETUP(pthread_create(&t[i], NULL, pthread00_fn, (void*)(uintptr_t)(i + 1)) == 0);
  pthread_barrier_wait(&bar);
  tls_val = 77;
  ready_and_wait();
  for (int i = 0; i < n; ++i) pthread_kill(t[i], THREAD_GO);
  for (int i = 0; i < n; ++i) {
    void* r;
    CHECK(pthread_join(t[i], &r) == 0 && (uintptr_t)r == (uintptr_t)i + 2, "join %d", i);
  }
  CHECK(!t_fail, "thread state %d", t_fail);
  CHECK(tls_val == 77, "main tls");
  return 0;
}

/* pthread01: thread-specific keys and a thread blocked on a condition variable. */
static pthread_key_t key;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int cv_flag, cv_waiting;
static void* pthread01_fn(void* arg) {
  pthread_setspecific(key, arg);
  pthread_mutex_lock(&mu);
  cv_waiting = 1;
  pthread_cond_broadcast(&cv);
  while (!cv_flag) pthread_cond_wait(&cv, &mu);
  pthread_mutex_unlock(&mu);
  return pthread_getspecific(key) == arg ? (void*)1 : NULL;
}
static int m_pthread01(void) {
  pthread_key_create(&key, NULL);
  pthread_setspecific(key, (void*)0x1234);
  pthread_t t;
  SETUP(pthread_create(&t, NULL, pthread01_fn, (void*)0x5678) == 0);
  pthread_mutex_lock(&mu);
  while (!cv_waiting) pthread_cond_wait(&cv, &mu);
  pthread_mutex_unlock(&mu);
  ready_and_wait();
  pthread_mutex_lock(&mu);
  cv_flag = 1;
  pthread_cond_broadcast(&cv);
  pthread_mutex_unlock(&mu);
  void* r;
  CHECK(pthread_join(t, &r) == 0 && r == (void*)1, "thread key");
  CHECK(pthread_getspecific(key) == (void*)0x1234, "main key");
  return 0;
}

/* futex: threads blocked in FUTEX_WAIT (no timeout) are woken after restore. */
static volatile uint32_t fut;
static volatile int fut_woken;
static void* futex_fn(void* arg) {
  while (fut == 0) syscall(SYS_futex, &fut, FUTEX_WAIT, 0, NULL, NULL, 0);
  __sync_fetch_and_add(&fut_woken, 1);
  return NULL;
}
static int m_futex(void) {
  pthread_t t[4];
  for (int i = 0; i < 4; ++i) SETUP(pthread_create(&t[i], NULL, futex_fn, NULL) == 0);
  /* Every thread is asleep in futex_wait before ready (state S and the syscall). */
  for (int i = 0; i < 4; ++i) {
    char p[300], buf[64];
    for (;;) {
      DIR* d = opendir("/proc/self/task");
      int sleeping = 0, total = 0;
      struct dirent* e;
      while ((e = readdir(d))) {
        if (e->d_name[0] == '.' || atoi(e->d_name) == getpid()) continue;
        total++;
        snprintf(p, sizeof p, "/proc/self/task/%s/syscall", e->d_name);
        int fd = open(p, O_RDONLY);
        ssize_t n = fd >= 0 ? read(fd, buf, sizeof buf - 1) : -1;
        if (fd >= 0) close(fd);
        if (n > 0) {
          buf[n] = 0;
          if (atoi(buf) == SYS_futex) sleeping++;
        }
      }
      closedir(d);
      if (total == 4 && sleeping == 4) break;
      sched_yield();
    }
    break;
  }
  ready_and_wait();
  fut = 1;
  syscall(SYS_futex, &fut, FUTEX_WAKE, 100, NULL, NULL, 0);
  for (int i = 0; i < 4; ++i) pthread_join(t[i], NULL);
  CHECK(fut_woken == 4, "woken %d", fut_woken);
  return 0;
}

/* sigaltstack: main and a thread have their own alternate stacks; a handler runs on them. */
static volatile int on_alt;
static void alt_handler(int sig) {
  stack_t ss;
  sigaltstack(NULL, &ss);
  on_alt = (ss.ss_flags & SS_ONSTACK) ? 1 : -1;
}
static char alt_main[65536], alt_thr[65536];
static void* alt_fn(void* arg) {
  stack_t ss = {.ss_sp = alt_thr, .ss_size = sizeof alt_thr};
  if (sigaltstack(&ss, NULL)) return NULL;
  pthread_barrier_wait(&bar);
  wait_thread_go();
  stack_t got;
  sigaltstack(NULL, &got);
  return (got.ss_sp == alt_thr && got.ss_size == sizeof alt_thr) ? (void*)1 : NULL;
}
static int m_sigaltstack(void) {
  stack_t ss = {.ss_sp = alt_main, .ss_size = sizeof alt_main};
  SETUP(sigaltstack(&ss, NULL) == 0);
  struct sigaction sa = {.sa_handler = alt_handler, .sa_flags = SA_ONSTACK};
  SETUP(sigaction(SIGUSR1, &sa, NULL) == 0);
  pthread_barrier_init(&bar, NULL, 2);
  pthread_t t;
  SETUP(pthread_create(&t, NULL, alt_fn, NULL) == 0);
  pthread_barrier_wait(&bar);
  ready_and_wait();
  stack_t got;
  sigaltstack(NULL, &got);
  CHECK(got.ss_sp == alt_main && got.ss_size == sizeof alt_main && !(got.ss_flags & SS_DISABLE),
        "main altstack %p %zu %d", got.ss_sp, got.ss_size, got.ss_flags);
  raise(SIGUSR1);
  CHECK(on_alt == 1, "handler not on the alternate stack (%d)", on_alt);
  pthread_kill(t, THREAD_GO);
  void* r;
  pthread_join(t, &r);
  CHECK(r == (void*)1, "thread altstack");
  return 0;
}

/* sigpending: standard and RT signals pending (process- and thread-wide) with their payloads. */
static int m_sigpending(void) {
  sigset_t all;
  sigemptyset(&all);
  sigaddset(&all, SIGUSR1);
  sigaddset(&all, SIGRTMIN + 3);
  sigaddset(&all, SIGRTMIN + 5);
  sigaddset(&all, SIGHUP);
  SETUP(sigprocmask(SIG_BLOCK, &all, NULL) == 0);
  union sigval v;
  for (int i = 0; i < 3; ++i) {
    v.sival_int = 100 + i;
    SETUP(sigqueue(getpid(), SIGRTMIN + 3, v) == 0);
  }
  v.sival_int = 555;
  siginfo_t tsi;
  memset(&tsi, 0, sizeof tsi);
  tsi.si_signo = SIGRTMIN + 5;
  tsi.si_code = SI_QUEUE;
  tsi.si_pid = getpid();
  tsi.si_uid = getuid();
  tsi.si_value = v;
  SETUP(syscall(SYS_rt_tgsigqueueinfo, getpid(), gettid(), SIGRTMIN + 5, &tsi) == 0);
  kill(getpid(), SIGUSR1);
  raise(SIGHUP);
  ready_and_wait();
  sigset_t pend;
  sigpending(&pend);
  CHECK(sigismember(&pend, SIGUSR1) && sigismember(&pend, SIGHUP) && sigismember(&pend, SIGRTMIN + 3) &&
            sigismember(&pend, SIGRTMIN + 5), "pending set");
  siginfo_t si;
  struct timespec zero = {0, 0};
  for (int i = 0; i < 3; ++i) {
    sigset_t one;
    sigemptyset(&one);
    sigaddset(&one, SIGRTMIN + 3);
    CHECK(sigtimedwait(&one, &si, &zero) == SIGRTMIN + 3 && si.si_value.sival_int == 100 + i &&
              si.si_code == SI_QUEUE && si.si_pid == getpid(), "rt %d: value %d code %d", i,
          si.si_value.sival_int, si.si_code);
  }
  sigset_t one;
  sigemptyset(&one);
  sigaddset(&one, SIGRTMIN + 5);
  CHECK(sigtimedwait(&one, &si, &zero) == SIGRTMIN + 5 && si.si_value.sival_int == 555, "thread rt");
  sigemptyset(&one);
  sigaddset(&one, SIGUSR1);
  CHECK(sigtimedwait(&one, &si, &zero) == SIGUSR1 && si.si_code == SI_USER, "usr1");
  sigemptyset(&one);
  sigaddset(&one, SIGHUP);
  CHECK(sigtimedwait(&one, &si, &zero) == SIGHUP, "hup");
  CHECK(sigtimedwait(&all, &si, &zero) < 0 && errno == EAGAIN, "nothing else pending");
  return 0;
}

/* sched_prio00 / sched_policy00: nice values and scheduling policies of several processes. */
static int m_sched(void) {
  SETUP(setpriority(PRIO_PROCESS, 0, 5) == 0);
  pid_t kids[3];
  int pol[3] = {SCHED_BATCH, SCHED_IDLE, SCHED_OTHER}, nice_v[3] = {7, 0, 13};
  for (int i = 0; i < 3; ++i) {
    kids[i] = zfork();
    if (kids[i] == 0) {
      struct sched_param sp = {0};
      if (setpriority(PRIO_PROCESS, 0, nice_v[i]) || sched_setscheduler(0, pol[i], &sp)) _exit(99);
      wait_usr2();
      _exit(sched_getscheduler(0) == pol[i] && getpriority(PRIO_PROCESS, 0) == nice_v[i] ? 0 : 1);
    }
  }
  /* The kids are set up once they block; ask the kernel. */
  for (int i = 0; i < 3; ++i)
    while (sched_getscheduler(kids[i]) != pol[i] || getpriority(PRIO_PROCESS, kids[i]) != nice_v[i])
      sched_yield();
  ready_and_wait();
  CHECK(getpriority(PRIO_PROCESS, 0) == 5, "own nice %d", getpriority(PRIO_PROCESS, 0));
  for (int i = 0; i < 3; ++i) {
    CHECK(sched_getscheduler(kids[i]) == pol[i], "kid %d policy %d", i, sched_getscheduler(kids[i]));
    kill(kids[i], SIGUSR2);
    CHECK(reap(kids[i]) == 0, "kid %d", i);
  }
  return 0;
}

/* ---- process tree ---- */

/* session00: processes in their own sessions and groups, with children inheriting them. */
static int m_session00(void) {
  int p[2];
  SETUP(pipe(p) == 0);
  pid_t a = zfork();
  if (a == 0) {  /* new session, with a child in it and a grandchild in a new group */
    close(p[0]);
    setsid();
    pid_t b = zfork();
    if (b == 0) {
      setpgid(0, 0);
      if (write(p[1], "b", 1) != 1) _exit(98);
      wait_usr2();
      _exit(getsid(0) == getppid() && getpgid(0) == getpid() ? 0 : 1);
    }
    char c;
    (void)c;
    if (write(p[1], "a", 1) != 1) _exit(98);
    wait_usr2();
    kill(b, SIGUSR2);
    int rc = reap(b);
    _exit(rc == 0 && getsid(0) == getpid() && getpgid(0) == getpid() ? 0 : 2);
  }
  close(p[1]);
  char c[2];
  SETUP(read(p[0], c, 1) == 1 && read(p[0], c + 1, 1) == 1);
  pid_t mysid = getsid(0);
  ready_and_wait();
  CHECK(getsid(0) == mysid, "own sid");
  CHECK(getsid(a) == a && getpgid(a) == a, "child sid %d pgid %d", getsid(a), getpgid(a));
  kill(a, SIGUSR2);
  CHECK(reap(a) == 0, "child's view");
  return 0;
}

/* session01: a process in a session that is neither its own nor its parent's (a child of a
 * session leader moved out, then its own child stays in the grandparent's session). */
static int m_session01(void) {
  int p[2];
  SETUP(pipe(p) == 0);
  pid_t a = zfork();
  if (a == 0) {
    setsid();
    pid_t b = zfork();
    if (b == 0) {
      pid_t c = zfork();
      if (c == 0) {  /* stays in a's session while its parent b makes a new one */
        if (write(p[1], "c", 1) != 1) _exit(98);
        wait_usr2();
        _exit(0);
      }
      setsid();
      if (write(p[1], "b", 1) != 1) _exit(98);
      wait_usr2();
      kill(c, SIGUSR2);
      _exit(reap(c));
    }
    if (write(p[1], "a", 1) != 1) _exit(98);
    wait_usr2();
    kill(b, SIGUSR2);
    _exit(reap(b));
  }
  char c[3];
  SETUP(read(p[0], c, 1) == 1 && read(p[0], c + 1, 1) == 1 && read(p[0], c + 2, 1) == 1);
  close(p[0]);
  close(p[1]);
  ready_and_wait();
  CHECK(getsid(a) == a, "a's session");
  kill(a, SIGUSR2);
  CHECK(reap(a) == 0, "tree");
  return 0;
}

/* pgid: children in a group led by one of them (not the parent's group). */
static int m_pgid(void) {
  pid_t a = child_waiting(0);
  SETUP(setpgid(a, a) == 0);
  pid_t b = child_waiting(0);
  SETUP(setpgid(b, a) == 0);
  ready_and_wait();
  CHECK(getpgid(a) == a && getpgid(b) == a, "pgids %d %d (want %d)", getpgid(a), getpgid(b), a);
  CHECK(getpgid(0) != a, "own group");
  kill(a, SIGUSR2);
  kill(b, SIGUSR2);
  CHECK(reap(a) == 0 && reap(b) == 0, "children");
  return 0;
}

/* zombie00: children that exited (codes and signals) and are not reaped. */
static int m_zombie00(void) {
  pid_t z[4];
  for (int i = 0; i < 4; ++i) {
    z[i] = zfork();
    if (z[i] == 0) {
      if (i == 3) {
        sigset_t s;
        sigemptyset(&s);
        sigprocmask(SIG_SETMASK, &s, NULL);
        raise(SIGTERM);
      }
      _exit(10 + i);
    }
  }
  for (int i = 0; i < 4; ++i) {
    siginfo_t si;
    SETUP(waitid(P_PID, z[i], &si, WEXITED | WNOWAIT) == 0);
  }
  ready_and_wait();
  for (int i = 0; i < 4; ++i) {
    CHECK(proc_state(z[i]) == 'Z', "zombie %d state %c", i, proc_state(z[i]));
    int st;
    CHECK(waitpid(z[i], &st, 0) == z[i], "reap %d", i);
    if (i == 3)
      CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGTERM, "signal status %x", st);
    else
      CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 10 + i, "exit status %x", st);
  }
  return 0;
}

/* pid00: a few children; pids and parents stay the same. */
static int m_pid00(void) {
  pid_t me = getpid(), kids[5];
  for (int i = 0; i < 5; ++i) {
    kids[i] = zfork();
    if (kids[i] == 0) {
      pid_t self = getpid(), parent = getppid();
      wait_usr2();
      _exit(getpid() == self && syscall(SYS_getpid) == self && getppid() == parent ? 0 : 1);
    }
  }
  ready_and_wait();
  CHECK(syscall(SYS_getpid) == me && gettid() == me, "own pid");
  for (int i = 0; i < 5; ++i) {
    kill(kids[i], SIGUSR2);
    CHECK(reap(kids[i]) == 0, "kid %d", i);
  }
  return 0;
}

/* A child that exec'd another program (this helper again, a different mode). */
static int m_exec(const char* self) {
  int p[2];
  SETUP(pipe(p) == 0);
  pid_t c = zfork();
  if (c == 0) {
    close(p[0]);
    char fd[16];
    snprintf(fd, sizeof fd, "%d", p[1]);
    execl(self, "z_static_execd", "execd", fd, dir, NULL);
    _exit(97);
  }
  close(p[1]);
  char buf[8];
  SETUP(read(p[0], buf, 6) == 6);
  close(p[0]);
  ready_and_wait();
  char exe[256] = {0}, want[256] = {0};
  char pp[64];
  snprintf(pp, sizeof pp, "/proc/%d/exe", c);
  CHECK(readlink(pp, exe, sizeof exe - 1) > 0 && realpath(self, want) && !strcmp(exe, want), "exe %s", exe);
  kill(c, SIGUSR2);
  CHECK(reap(c) == 0, "exec'd child");
  return 0;
}
static int m_execd(void) {
  char comm[32] = {0};
  prctl(PR_GET_NAME, comm);
  ready_and_wait();
  char now[32] = {0};
  prctl(PR_GET_NAME, now);
  CHECK(!strcmp(comm, now), "comm %s", now);
  return 0;
}

/* stopped, stopped01, stopped02, stopped12 (zdtm): a child stopped by SIGSTOP, its parent having
 * seen the stop with WNOWAIT, then (01) another SIGSTOP by kill, (02) by tkill, (12) both. It
 * must come back stopped: the parent's waitpid(WUNTRACED | WCONTINUED) reports the stop with
 * its signal, SIGCONT then reports WIFCONTINUED, and the child reads the byte queued in its pipe
 * before the dump and exits 0. Variants: "stopped_tstp" (SIGTSTP), "stopped_threads" (a
 * 4-thread child: every thread stopped), "stopped_pgrp" (two children of a process group
 * stopped by kill(-pgid)). */
static void* stopped_thread(void* arg) {
  for (;;) pause();
  return arg;
}
/* A child that reads one byte from rd and exits 0; returns once it runs (and has its threads). */
static pid_t stopped_child(int rd, int wr, int threads, pid_t pgid) {
  int sync[2];
  SETUP(pipe(sync) == 0);
  pid_t c = zfork();
  SETUP(c >= 0);
  if (c == 0) {
    close(wr);
    close(sync[0]);
    if (pgid >= 0 && setpgid(0, pgid) < 0) _exit(97);
    for (int i = 1; i < threads; ++i) {
      pthread_t t;
      if (pthread_create(&t, NULL, stopped_thread, NULL)) _exit(98);
    }
    if (write(sync[1], "s", 1) != 1) _exit(96);
    close(sync[1]);
    /* '0' was queued before the dump; the parent writes '1' once it has seen it continue. */
    char ch[2];
    for (int i = 0; i < 2; ++i) {
      ssize_t n;
      do n = read(rd, &ch[i], 1); while (n < 0 && errno == EINTR);
      if (n != 1 || ch[i] != '0' + i) _exit(1);
    }
    _exit(0);
  }
  close(sync[1]);
  char ch;
  SETUP(read(sync[0], &ch, 1) == 1);
  close(sync[0]);
  if (pgid >= 0) setpgid(c, pgid); /* also from here: no race with the kill below */
  return c;
}
static int task_states_all(pid_t pid, char want) {
  char path[64];
  snprintf(path, sizeof path, "/proc/%d/task", pid);
  DIR* d = opendir(path);
  if (!d) return 0;
  int ok = 1, n = 0;
  struct dirent* e;
  while ((e = readdir(d))) {
    if (e->d_name[0] == '.') continue;
    char p[320], buf[512];
    snprintf(p, sizeof p, "/proc/%d/task/%.32s/stat", pid, e->d_name);
    int fd = open(p, O_RDONLY);
    ssize_t r = fd >= 0 ? read(fd, buf, sizeof buf - 1) : -1;
    if (fd >= 0) close(fd);
    if (r <= 0) continue;
    buf[r] = 0;
    char* rp = strrchr(buf, ')');
    n++;
    if (!rp || rp[2] != want) ok = 0;
  }
  closedir(d);
  return ok && n > 0;
}
static int check_stopped_then_continue(pid_t c, int sig) {
  int st = 0;
  pid_t w;
  do w = waitpid(c, &st, WUNTRACED | WCONTINUED); while (w < 0 && errno == EINTR);
  CHECK(w == c && WIFSTOPPED(st), "child %d: waitpid %d status %#x: not reported stopped", c, w, st);
  CHECK(WSTOPSIG(st) == sig, "child %d stopped by %d, want %d", c, WSTOPSIG(st), sig);
  CHECK(task_states_all(c, 'T'), "child %d: a thread is not stopped (state %c)", c, proc_state(c));
  return 0;
}
static int check_continued_and_exits(pid_t c, int wr) {
  int st = 0;
  pid_t w;
  do w = waitpid(c, &st, WCONTINUED); while (w < 0 && errno == EINTR);
  CHECK(w == c && WIFCONTINUED(st), "child %d: waitpid %d status %#x: not continued", c, w, st);
  CHECK(write(wr, "1", 1) == 1, "write");
  do w = waitpid(c, &st, 0); while (w < 0 && errno == EINTR);
  CHECK(w == c && WIFEXITED(st) && WEXITSTATUS(st) == 0, "child %d after SIGCONT: %#x", c, st);
  return 0;
}
static int stopped_extra;  /* 1: kill SIGSTOP again, 2: tkill, 3: both */
static int stopped_sig = SIGSTOP;
static int stopped_threads = 1;
static int m_stopped(void) {
  int p[2];
  SETUP(pipe(p) == 0);
  if (stopped_sig != SIGSTOP) SETUP(setpgid(0, 0) == 0); /* SIGTSTP stops only a non-orphaned group */
  pid_t c = stopped_child(p[0], p[1], stopped_threads, -1);
  close(p[0]);
  SETUP(kill(c, stopped_sig) == 0);
  siginfo_t si;
  SETUP(waitid(P_PID, c, &si, WNOWAIT | WSTOPPED) == 0);
  if (stopped_extra & 1) SETUP(kill(c, SIGSTOP) == 0);
  if (stopped_extra & 2) SETUP(syscall(SYS_tkill, c, SIGSTOP) == 0);
  SETUP(write(p[1], "0", 1) == 1);
  ready_and_wait();
  if (check_stopped_then_continue(c, stopped_sig)) return check_no;
  CHECK(kill(c, SIGCONT) == 0, "SIGCONT");
  return check_continued_and_exits(c, p[1]);
}
static int m_stopped_pgrp(void) {
  int p[2], q[2];
  SETUP(pipe(p) == 0 && pipe(q) == 0);
  pid_t a = stopped_child(p[0], p[1], 1, 0);
  pid_t b = stopped_child(q[0], q[1], 1, a);
  close(p[0]);
  close(q[0]);
  SETUP(kill(-a, SIGSTOP) == 0);
  siginfo_t si;
  SETUP(waitid(P_PID, a, &si, WNOWAIT | WSTOPPED) == 0 && waitid(P_PID, b, &si, WNOWAIT | WSTOPPED) == 0);
  SETUP(write(p[1], "0", 1) == 1 && write(q[1], "0", 1) == 1);
  ready_and_wait();
  CHECK(getpgid(b) == a, "pgid of %d: %d", b, getpgid(b));
  if (check_stopped_then_continue(a, SIGSTOP) || check_stopped_then_continue(b, SIGSTOP)) return check_no;
  CHECK(kill(-a, SIGCONT) == 0, "SIGCONT to the group");
  if (check_continued_and_exits(a, p[1]) || check_continued_and_exits(b, q[1])) return check_no;
  return 0;
}

/* ptrace: a child traced by this process (godwit must refuse cleanly; the tree goes on). */
static int m_traced(void) {
  pid_t c = child_waiting(0);
  SETUP(ptrace(PTRACE_SEIZE, c, 0, 0) == 0);
  ready_and_wait();
  CHECK(ptrace(PTRACE_DETACH, c, 0, 0) == 0 || errno == ESRCH, "detach");
  kill(c, SIGUSR2);
  int st;
  for (;;) {
    pid_t w = waitpid(c, &st, 0);
    CHECK(w == c, "wait");
    if (WIFEXITED(st)) break;
  }
  CHECK(WEXITSTATUS(st) == 0, "child");
  return 0;
}

/* thread-bomb (small): many threads, each parked. */
static void* bomb_fn(void* arg) {
  wait_thread_go();
  return arg;
}
static int m_thread_bomb(void) {
  enum { N = 100 };
  pthread_t t[N];
  for (int i = 0; i < N; ++i) SETUP(pthread_create(&t[i], NULL, bomb_fn, (void*)(uintptr_t)i) == 0);
  ready_and_wait();
  for (int i = 0; i < N; ++i) pthread_kill(t[i], THREAD_GO);
  for (int i = 0; i < N; ++i) {
    void* r;
    CHECK(pthread_join(t[i], &r) == 0 && r == (void*)(uintptr_t)i, "thread %d", i);
  }
  return 0;
}

/* ---- files ---- */

static int m_write_read00(void) {
  int fd = open(path_in("wr.data"), O_RDWR | O_CREAT | O_TRUNC, 0600);
  char buf[10000];
  fill(buf, sizeof buf, 6);
  SETUP(fd >= 0 && write(fd, buf, 6000) == 6000);
  int ap = open(path_in("wr.data"), O_WRONLY | O_APPEND);
  int ro = open(path_in("wr.data"), O_RDONLY | O_CLOEXEC);
  SETUP(ap >= 0 && ro >= 0 && lseek(ro, 1234, SEEK_SET) == 1234);
  ready_and_wait();
  CHECK(lseek(fd, 0, SEEK_CUR) == 6000, "offset");
  CHECK(write(fd, buf + 6000, 4000) == 4000, "write rest");
  CHECK(fcntl(ro, F_GETFD) == FD_CLOEXEC && (fcntl(ap, F_GETFL) & O_APPEND), "flags");
  char got[10000];
  CHECK(pread(fd, got, 10000, 0) == 10000 && !memcmp(got, buf, 10000), "content");
  CHECK(read(ro, got, 100) == 100 && !memcmp(got, buf + 1234, 100), "read offset");
  return 0;
}

/* pipe00/pipe01: data in flight in pipes, one shared with a child. */
static int m_pipe(void) {
  int a[2], b[2];
  SETUP(pipe(a) == 0 && pipe2(b, O_NONBLOCK) == 0);
  char buf[4096];
  fill(buf, sizeof buf, 7);
  SETUP(write(a[1], buf, 3000) == 3000 && write(b[1], buf, 4096) == 4096);
  SETUP(fcntl(a[1], F_SETPIPE_SZ, 1 << 20) >= 0);
  pid_t c = zfork();
  if (c == 0) {  /* reads the shared pipe after the restore */
    close(a[1]);
    wait_usr2();
    char got[3000];
    _exit(read(a[0], got, 3000) == 3000 && same(got, 3000, 7) ? 0 : 1);
  }
  close(a[0]);
  ready_and_wait();
  CHECK(fcntl(a[1], F_GETPIPE_SZ) >= 1 << 20, "pipe size %d", fcntl(a[1], F_GETPIPE_SZ));
  kill(c, SIGUSR2);
  CHECK(reap(c) == 0, "child read the queued data");
  char got[4096];
  CHECK(read(b[0], got, 4096) == 4096 && same(got, 4096, 7), "own pipe data");
  CHECK(read(b[0], got, 1) < 0 && errno == EAGAIN, "nonblocking and empty");
  return 0;
}

static int m_unlink_fstat00(void) {
  int fd = open(path_in("unlinked"), O_RDWR | O_CREAT | O_TRUNC, 0640);
  char buf[5000];
  fill(buf, sizeof buf, 8);
  SETUP(fd >= 0 && write(fd, buf, sizeof buf) == sizeof buf && unlink(path_in("unlinked")) == 0);
  ready_and_wait();
  struct stat st;
  CHECK(fstat(fd, &st) == 0 && st.st_nlink == 0 && st.st_size == 5000 && (st.st_mode & 0777) == 0640,
        "stat nlink %lu size %ld", (unsigned long)st.st_nlink, (long)st.st_size);
  CHECK(lseek(fd, 0, SEEK_CUR) == 5000, "offset");
  char got[5000];
  CHECK(pread(fd, got, 5000, 0) == 5000 && same(got, 5000, 8), "content");
  CHECK(access(path_in("unlinked"), F_OK) != 0, "the file came back");
  return 0;
}

static int m_cwd00(void) {
  SETUP(mkdir(path_in("cwd dir"), 0755) == 0 && chdir(path_in("cwd dir")) == 0);
  char want[512];
  SETUP(getcwd(want, sizeof want));
  ready_and_wait();
  char got[512];
  CHECK(getcwd(got, sizeof got) && !strcmp(got, want), "cwd %s", got);
  return 0;
}

/* cwd01: the working directory was removed (by a child, as in zdtm): it comes back removed, at
 * the same place (/proc/self/cwd reads the same), still with its mode. "cwd02": also open as an
 * fd, the same directory as the cwd. "root_deleted": chrooted into a removed directory. */
static int cwd_with_fd;
static int m_cwd_deleted(void) {
  SETUP(mkdir(path_in("gone"), 0751) == 0 && chdir(path_in("gone")) == 0);
  int fd = cwd_with_fd ? open(".", O_DIRECTORY | O_RDONLY) : -1;
  SETUP(!cwd_with_fd || fd >= 0);
  pid_t c = zfork();
  if (c == 0) _exit(rmdir(path_in("gone")) ? 1 : 0);
  SETUP(reap(c) == 0);
  char before[512], after[512];
  ssize_t n = readlink("/proc/self/cwd", before, sizeof before - 1);
  SETUP(n > 0);
  before[n] = 0;
  ready_and_wait();
  struct stat st, sf;
  CHECK(stat(".", &st) == 0 && st.st_nlink == 0, "cwd nlink %lu", (unsigned long)st.st_nlink);
  CHECK((st.st_mode & 07777) == 0751, "cwd mode %o", st.st_mode & 07777);
  CHECK(open("x", O_CREAT | O_WRONLY, 0600) < 0 && errno == ENOENT, "creating in a deleted dir");
  n = readlink("/proc/self/cwd", after, sizeof after - 1);
  CHECK(n > 0, "readlink cwd");
  after[n] = 0;
  CHECK(!strcmp(before, after), "cwd %s, was %s", after, before);
  char buf[64];
  CHECK(getcwd(buf, sizeof buf) == NULL && errno == ENOENT, "getcwd");
  if (cwd_with_fd) {
    CHECK(fstat(fd, &sf) == 0 && stat("/proc/self/cwd", &st) == 0, "stat fd / cwd");
    CHECK(sf.st_ino == st.st_ino && sf.st_dev == st.st_dev, "the fd and the cwd differ");
  }
  return 0;
}
static int m_root_deleted(void) {
  SETUP(mkdir(path_in("gone-root"), 0705) == 0 && chdir(path_in("gone-root")) == 0);
  SETUP(rmdir(path_in("gone-root")) == 0 && chroot(".") == 0);
  ready_and_wait();
  struct stat st;
  CHECK(stat("/", &st) == 0 && st.st_nlink == 0, "root nlink %lu", (unsigned long)st.st_nlink);
  CHECK((st.st_mode & 07777) == 0705, "root mode %o", st.st_mode & 07777);
  struct stat here;
  CHECK(stat(".", &here) == 0 && here.st_ino == st.st_ino && here.st_dev == st.st_dev, "cwd is not the root");
  CHECK(open("/x", O_CREAT | O_WRONLY, 0600) < 0 && errno == ENOENT, "creating in a deleted root");
  return 0;
}

static int m_umask00(void) {
  umask(027);
  pid_t c = zfork();
  if (c == 0) {
    umask(0111);
    wait_usr2();
    _exit(umask(0) == 0111 ? 0 : 1);
  }
  ready_and_wait();
  CHECK(umask(0) == 027, "umask");
  kill(c, SIGUSR2);
  CHECK(reap(c) == 0, "child umask");
  return 0;
}

/* file_shared: one open file description shared by dup and fork; the offset is shared. */
static int m_file_shared(void) {
  int fd = open(path_in("shared.data"), O_RDWR | O_CREAT | O_TRUNC, 0600);
  SETUP(fd >= 0 && write(fd, "0123456789", 10) == 10);
  int d = dup(fd);
  int other = open(path_in("shared.data"), O_RDONLY);
  pid_t c = zfork();
  if (c == 0) {
    wait_usr2();
    _exit(lseek(fd, 0, SEEK_CUR) == 4 && write(fd, "c", 1) == 1 ? 0 : 1);
  }
  ready_and_wait();
  CHECK(lseek(d, 4, SEEK_SET) == 4 && lseek(fd, 0, SEEK_CUR) == 4, "dup shares the offset");
  CHECK(lseek(other, 0, SEEK_CUR) == 0, "separate open");
  kill(c, SIGUSR2);
  CHECK(reap(c) == 0, "child sees the shared offset");
  CHECK(lseek(fd, 0, SEEK_CUR) == 5, "child moved our offset");
  char b[10];
  CHECK(pread(other, b, 10, 0) == 10 && !memcmp(b, "0123c56789", 10), "content");
  return 0;
}

static int m_fifo(void) {
  SETUP(mkfifo(path_in("fifo"), 0600) == 0);
  int rw = open(path_in("fifo"), O_RDWR);
  int w = open(path_in("fifo"), O_WRONLY);
  SETUP(rw >= 0 && w >= 0 && write(w, "fifo-data", 9) == 9);
  ready_and_wait();
  char b[16];
  CHECK(read(rw, b, 9) == 9 && !memcmp(b, "fifo-data", 9), "fifo data");
  CHECK(write(w, "x", 1) == 1 && read(rw, b, 1) == 1 && b[0] == 'x', "fifo works");
  return 0;
}

/* fd numbers far apart (and above 1000), the table size with them. */
static int m_bigfd(void) {
  struct rlimit rl;
  getrlimit(RLIMIT_NOFILE, &rl);
  rl.rlim_cur = rl.rlim_max;
  setrlimit(RLIMIT_NOFILE, &rl);
  int high = rl.rlim_cur > 10100 ? 10000 : (int)rl.rlim_cur - 100;
  int fd = open(path_in("big"), O_RDWR | O_CREAT, 0600);
  SETUP(fd >= 0 && write(fd, "big", 3) == 3);
  SETUP(dup2(fd, 1000) == 1000 && dup2(fd, 4321) == 4321 && fcntl(fd, F_DUPFD_CLOEXEC, high) == high);
  close(fd);
  ready_and_wait();
  char b[3];
  CHECK(pread(1000, b, 3, 0) == 3 && !memcmp(b, "big", 3), "fd 1000");
  CHECK(lseek(4321, 0, SEEK_CUR) == 3, "fd 4321 shares the offset");
  CHECK(fcntl(high, F_GETFD) == FD_CLOEXEC, "fd %d cloexec", high);
  CHECK(fcntl(fd, F_GETFD) < 0 && errno == EBADF, "closed fd");
  return 0;
}

static int m_memfd00(void) {
  int fd = memfd_create("z_memfd", MFD_ALLOW_SEALING | MFD_CLOEXEC);
  char buf[20000];
  fill(buf, sizeof buf, 9);
  SETUP(fd >= 0 && write(fd, buf, sizeof buf) == sizeof buf && lseek(fd, 77, SEEK_SET) == 77);
  SETUP(fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) == 0);
  ready_and_wait();
  char l[64] = {0}, p[64];
  snprintf(p, sizeof p, "/proc/self/fd/%d", fd);
  CHECK(readlink(p, l, sizeof l - 1) > 0 && !strncmp(l, "/memfd:z_memfd", 14), "name %s", l);
  CHECK(lseek(fd, 0, SEEK_CUR) == 77, "offset");
  char got[20000];
  CHECK(pread(fd, got, sizeof got, 0) == sizeof got && same(got, sizeof got, 9), "content");
  CHECK(fcntl(fd, F_GET_SEALS) == (F_SEAL_SHRINK | F_SEAL_GROW), "seals %d", fcntl(fd, F_GET_SEALS));
  CHECK(fcntl(fd, F_GETFD) == FD_CLOEXEC, "cloexec");
  return 0;
}

/* ---- sockets ---- */

static int listen_tcp(int* port) {
  int s = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  int one = 1;
  setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  SETUP(bind(s, (void*)&a, sizeof a) == 0 && listen(s, 16) == 0);
  socklen_t l = sizeof a;
  getsockname(s, (void*)&a, &l);
  *port = ntohs(a.sin_port);
  return s;
}
static int connect_tcp(int port) {
  int c = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  if (connect(c, (void*)&a, sizeof a)) return -1;
  return c;
}

static int m_socket_listen(void) {
  int port, port6 = 0;
  int s = listen_tcp(&port);
  int s6 = socket(AF_INET6, SOCK_STREAM, 0);
  struct sockaddr_in6 a6 = {.sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT};
  if (s6 >= 0 && bind(s6, (void*)&a6, sizeof a6) == 0 && listen(s6, 4) == 0) {
    socklen_t l = sizeof a6;
    getsockname(s6, (void*)&a6, &l);
    port6 = ntohs(a6.sin6_port);
  }
  ready_and_wait();
  int c = connect_tcp(port);
  CHECK(c >= 0, "connect to the restored listener on %d", port);
  int a = accept(s, NULL, NULL);
  CHECK(a >= 0 && write(c, "hi", 2) == 2, "accept");
  char b[2];
  CHECK(read(a, b, 2) == 2 && !memcmp(b, "hi", 2), "data");
  if (port6) {
    int c6 = socket(AF_INET6, SOCK_STREAM, 0);
    a6.sin6_port = htons(port6);
    CHECK(connect(c6, (void*)&a6, sizeof a6) == 0, "v6 connect");
  }
  return 0;
}

/* socket-tcp: an established loopback connection inside the process, data queued both ways
 * (needs --tcp-established). */
static int m_socket_tcp(void) {
  int port;
  int l = listen_tcp(&port);
  int c = connect_tcp(port);
  int a = accept(l, NULL, NULL);
  SETUP(c >= 0 && a >= 0);
  int one = 1;
  setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  char buf[100000];
  fill(buf, sizeof buf, 10);
  SETUP(write(c, buf, 50000) == 50000 && write(a, buf + 50000, 30000) == 30000);
  ready_and_wait();
  char got[100000];
  size_t n = 0;
  while (n < 50000) {
    ssize_t r = read(a, got + n, 50000 - n);
    CHECK(r > 0, "read a at %zu", n);
    n += r;
  }
  while (n < 80000) {
    ssize_t r = read(c, got + n, 80000 - n);
    CHECK(r > 0, "read c at %zu", n);
    n += r;
  }
  CHECK(!memcmp(got, buf, 80000), "stream content");
  CHECK(write(c, "more", 4) == 4 && read(a, got, 4) == 4 && !memcmp(got, "more", 4), "still connected");
  int nd;
  socklen_t sl = sizeof nd;
  CHECK(getsockopt(c, IPPROTO_TCP, TCP_NODELAY, &nd, &sl) == 0 && nd, "TCP_NODELAY");
  sl = sizeof nd;
  CHECK(getsockopt(a, SOL_SOCKET, SO_REUSEADDR, &nd, &sl) == 0 && nd, "SO_REUSEADDR (from the listener)");
  return 0;
}

/* sockets00 / sk-unix-rel: unix stream and dgram sockets, bound (absolute and relative path,
 * abstract), with queued data. */
static int unix_rel = 1;
static int m_unix(void) {
  SETUP(chdir(dir) == 0);
  const char* dname = unix_rel ? "rel.sock" : path_in("dgram.sock");
  int sp[2];
  SETUP(socketpair(AF_UNIX, SOCK_STREAM, 0, sp) == 0 && write(sp[0], "pair", 4) == 4);
  int d = socket(AF_UNIX, SOCK_DGRAM, 0);
  struct sockaddr_un rel = {.sun_family = AF_UNIX};
  snprintf(rel.sun_path, sizeof rel.sun_path, "%s", dname);
  SETUP(bind(d, (void*)&rel, sizeof rel) == 0);
  int dc = socket(AF_UNIX, SOCK_DGRAM, 0);
  SETUP(connect(dc, (void*)&rel, sizeof rel) == 0);
  int ds = socket(AF_UNIX, SOCK_DGRAM, 0);
  SETUP(sendto(ds, "dgram1", 6, 0, (void*)&rel, sizeof rel) == 6 &&
        sendto(ds, "dgram22", 7, 0, (void*)&rel, sizeof rel) == 7);
  int ls = socket(AF_UNIX, SOCK_STREAM, 0);
  struct sockaddr_un abs = {.sun_family = AF_UNIX};
  snprintf(abs.sun_path, sizeof abs.sun_path, "%s/listen.sock", dir);
  SETUP(bind(ls, (void*)&abs, sizeof abs) == 0 && listen(ls, 4) == 0);
  struct sockaddr_un ab = {.sun_family = AF_UNIX};
  snprintf(ab.sun_path + 1, sizeof ab.sun_path - 1, "z_static_abs_%d", getpid());
  socklen_t ablen = offsetof(struct sockaddr_un, sun_path) + 1 + strlen(ab.sun_path + 1);
  int as = socket(AF_UNIX, SOCK_STREAM, 0);
  SETUP(bind(as, (void*)&ab, ablen) == 0 && listen(as, 4) == 0);
  ready_and_wait();
  char b[16];
  CHECK(read(sp[1], b, 4) == 4 && !memcmp(b, "pair", 4), "socketpair data");
  CHECK(recv(d, b, 16, 0) == 6 && !memcmp(b, "dgram1", 6), "dgram 1");
  CHECK(recv(d, b, 16, 0) == 7 && !memcmp(b, "dgram22", 7), "dgram 2 (boundaries)");
  struct sockaddr_un got;
  socklen_t gl = sizeof got;
  CHECK(getsockname(d, (void*)&got, &gl) == 0 && !strcmp(got.sun_path, dname), "name %s", got.sun_path);
  int c = socket(AF_UNIX, SOCK_STREAM, 0);
  CHECK(connect(c, (void*)&abs, sizeof abs) == 0, "connect to the path listener");
  int c2 = socket(AF_UNIX, SOCK_STREAM, 0);
  CHECK(connect(c2, (void*)&ab, ablen) == 0, "connect to the abstract listener");
  CHECK(sendto(ds, "x", 1, 0, (void*)&rel, sizeof rel) == 1 && recv(d, b, 16, 0) == 1, "dgram by relative path");
  CHECK(send(dc, "yz", 2, 0) == 2 && recv(d, b, 16, 0) == 2, "connected dgram peer");
  return 0;
}

/* ---- event objects ---- */

static int m_eventfd(void) {
  int e = eventfd(5, EFD_NONBLOCK);
  int s = eventfd(0, EFD_SEMAPHORE);
  uint64_t v = 3;
  SETUP(write(e, &v, 8) == 8 && write(s, &v, 8) == 8);
  ready_and_wait();
  CHECK(read(s, &v, 8) == 8 && v == 1, "semaphore read %lu", (unsigned long)v);
  CHECK(read(e, &v, 8) == 8 && v == 8, "counter %lu", (unsigned long)v);
  CHECK(read(e, &v, 8) < 0 && errno == EAGAIN, "nonblocking");
  return 0;
}

static int m_epoll(void) {
  int p[2], q[2];
  SETUP(pipe(p) == 0 && pipe(q) == 0);
  int ep = epoll_create1(EPOLL_CLOEXEC);
  struct epoll_event ev = {.events = EPOLLIN, .data.u64 = 0x1111};
  SETUP(epoll_ctl(ep, EPOLL_CTL_ADD, p[0], &ev) == 0);
  ev.events = EPOLLIN | EPOLLET;
  ev.data.u64 = 0x2222;
  SETUP(epoll_ctl(ep, EPOLL_CTL_ADD, q[0], &ev) == 0);
  ev.events = EPOLLOUT;
  ev.data.u64 = 0x3333;
  SETUP(epoll_ctl(ep, EPOLL_CTL_ADD, q[1], &ev) == 0);
  SETUP(write(p[1], "x", 1) == 1);
  ready_and_wait();
  struct epoll_event out[4];
  int n = epoll_wait(ep, out, 4, 0);
  int seen1 = 0, seen3 = 0;
  for (int i = 0; i < n; ++i) {
    seen1 |= out[i].data.u64 == 0x1111 && (out[i].events & EPOLLIN);
    seen3 |= out[i].data.u64 == 0x3333 && (out[i].events & EPOLLOUT);
    CHECK(out[i].data.u64 != 0x2222, "q not readable yet");
  }
  CHECK(n == 2 && seen1 && seen3, "ready set (n %d)", n);
  SETUP(write(q[1], "y", 1) == 1);
  n = epoll_wait(ep, out, 4, 0);
  int seen2 = 0;
  for (int i = 0; i < n; ++i) seen2 |= out[i].data.u64 == 0x2222;
  CHECK(seen2, "edge-triggered entry fires");
  return 0;
}

static int m_inotify00(void) {
  SETUP(mkdir(path_in("watched"), 0755) == 0);
  int in = inotify_init1(IN_NONBLOCK);
  int wd = inotify_add_watch(in, path_in("watched"), IN_CREATE | IN_DELETE);
  SETUP(in >= 0 && wd >= 0);
  ready_and_wait();
  close(open(path_in("watched/newfile"), O_CREAT | O_WRONLY, 0600));
  char buf[4096] __attribute__((aligned(8)));
  ssize_t n = read(in, buf, sizeof buf);
  CHECK(n >= (ssize_t)sizeof(struct inotify_event), "no event (%zd)", n);
  struct inotify_event* e = (void*)buf;
  CHECK(e->wd == wd && (e->mask & IN_CREATE) && !strcmp(e->name, "newfile"), "event wd %d mask %x", e->wd, e->mask);
  return 0;
}

static int m_timerfd(void) {
  int t1 = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
  int t2 = timerfd_create(CLOCK_REALTIME, 0);
  struct itimerspec a = {.it_interval = {1000, 0}, .it_value = {2000, 0}};
  struct itimerspec b = {.it_interval = {0, 0}, .it_value = {0, 1}};
  SETUP(timerfd_settime(t1, 0, &a, NULL) == 0 && timerfd_settime(t2, 0, &b, NULL) == 0);
  uint64_t x;
  SETUP(read(t2, &x, 8) == 8);  /* t2 fired once and is disarmed now */
  ready_and_wait();
  struct itimerspec g;
  CHECK(timerfd_gettime(t1, &g) == 0 && g.it_interval.tv_sec == 1000 && g.it_value.tv_sec > 1900 &&
            g.it_value.tv_sec <= 2000, "armed timer %ld/%ld", (long)g.it_value.tv_sec, (long)g.it_interval.tv_sec);
  CHECK(timerfd_gettime(t2, &g) == 0 && g.it_value.tv_sec == 0 && g.it_value.tv_nsec == 0, "disarmed timer");
  CHECK(read(t1, &x, 8) < 0 && errno == EAGAIN, "no expiration");
  return 0;
}

static int m_posix_timers(void) {
  timer_t t1, t2;
  struct sigevent se = {.sigev_notify = SIGEV_SIGNAL, .sigev_signo = SIGRTMIN + 1};
  se.sigev_value.sival_int = 42;
  SETUP(timer_create(CLOCK_MONOTONIC, &se, &t1) == 0);
  se.sigev_notify = SIGEV_NONE;
  SETUP(timer_create(CLOCK_REALTIME, &se, &t2) == 0);
  struct itimerspec a = {.it_interval = {500, 0}, .it_value = {1000, 0}};
  SETUP(timer_settime(t1, 0, &a, NULL) == 0 && timer_settime(t2, 0, &a, NULL) == 0);
  ready_and_wait();
  struct itimerspec g;
  CHECK(timer_gettime(t1, &g) == 0 && g.it_interval.tv_sec == 500 && g.it_value.tv_sec > 900, "t1 %ld",
        (long)g.it_value.tv_sec);
  CHECK(timer_gettime(t2, &g) == 0 && g.it_interval.tv_sec == 500 && g.it_value.tv_sec > 900, "t2");
  /* The signal timer still delivers its signal with its value. */
  sigset_t s;
  sigemptyset(&s);
  sigaddset(&s, SIGRTMIN + 1);
  sigprocmask(SIG_BLOCK, &s, NULL);
  struct itimerspec now = {.it_value = {0, 1000}};
  CHECK(timer_settime(t1, 0, &now, NULL) == 0, "rearm");
  siginfo_t si;
  CHECK(sigwaitinfo(&s, &si) == SIGRTMIN + 1 && si.si_code == SI_TIMER && si.si_value.sival_int == 42,
        "timer signal value %d", si.si_value.sival_int);
  return 0;
}

static int m_itimer(void) {
  struct itimerval r = {.it_interval = {100, 0}, .it_value = {300, 0}};
  struct itimerval v = {.it_interval = {0, 500000}, .it_value = {200, 0}};
  SETUP(setitimer(ITIMER_REAL, &r, NULL) == 0 && setitimer(ITIMER_VIRTUAL, &v, NULL) == 0);
  ready_and_wait();
  struct itimerval g;
  CHECK(getitimer(ITIMER_REAL, &g) == 0 && g.it_interval.tv_sec == 100 && g.it_value.tv_sec > 250 &&
            g.it_value.tv_sec <= 300, "real %ld", (long)g.it_value.tv_sec);
  CHECK(getitimer(ITIMER_VIRTUAL, &g) == 0 && g.it_interval.tv_usec == 500000 && g.it_value.tv_sec >= 190,
        "virtual %ld", (long)g.it_value.tv_sec);
  return 0;
}

/* ---- CPU state ---- */

/* fpu00/fpu01 (xstate): x87, MXCSR and all 16 vector registers (ymm with AVX) hold values across
 * a raw rt_sigtimedwait that is interrupted by the dump and restarted by the restore. */
static int m_fpu(void) {
  static uint8_t in[16][32] __attribute__((aligned(32))), out[16][32] __attribute__((aligned(32)));
  int avx = __builtin_cpu_supports("avx");
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 32; ++j) in[i][j] = (uint8_t)(i * 37 + j * 11 + 1);
  unsigned mx = 0x1f80 | (3 << 13) /* round toward zero */, mx_out = 0;
  unsigned short cw = 0x037f & ~0x300 /* single precision */, cw_out = 0;
  long double pi_out = 0;
  asm volatile("ldmxcsr %0" ::"m"(mx));
  asm volatile("fldcw %0" ::"m"(cw));
  ready();
  register long r10 asm("r10") = 8;
  long ret;
  if (avx) {
#define L(n) "vmovdqu " #n "*32(%[i]), %%ymm" #n "\n"
#define S(n) "vmovdqu %%ymm" #n ", " #n "*32(%[o])\n"
    asm volatile(L(0) L(1) L(2) L(3) L(4) L(5) L(6) L(7) L(8) L(9) L(10) L(11) L(12) L(13) L(14) L(15)
                 "fldpi\n"
                 "1: mov %[nr], %%eax\n syscall\n cmp $12, %%eax\n jne 1b\n"
                 "fstpt %[pi]\n"
                 S(0) S(1) S(2) S(3) S(4) S(5) S(6) S(7) S(8) S(9) S(10) S(11) S(12) S(13) S(14) S(15)
                 : "=&a"(ret), [pi] "=m"(pi_out)
                 : [i] "r"(in), [o] "r"(out), [nr] "i"(SYS_rt_sigtimedwait), "D"(&usr2_set), "S"(0),
                   "d"(0), "r"(r10)
                 : "rcx", "r11", "memory", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7",
                   "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "st");
#undef L
#undef S
  } else {
#define L(n) "movdqu " #n "*32(%[i]), %%xmm" #n "\n"
#define S(n) "movdqu %%xmm" #n ", " #n "*32(%[o])\n"
    asm volatile(L(0) L(1) L(2) L(3) L(4) L(5) L(6) L(7) L(8) L(9) L(10) L(11) L(12) L(13) L(14) L(15)
                 "fldpi\n"
                 "1: mov %[nr], %%eax\n syscall\n cmp $12, %%eax\n jne 1b\n"
                 "fstpt %[pi]\n"
                 S(0) S(1) S(2) S(3) S(4) S(5) S(6) S(7) S(8) S(9) S(10) S(11) S(12) S(13) S(14) S(15)
                 : "=&a"(ret), [pi] "=m"(pi_out)
                 : [i] "r"(in), [o] "r"(out), [nr] "i"(SYS_rt_sigtimedwait), "D"(&usr2_set), "S"(0),
                   "d"(0), "r"(r10)
                 : "rcx", "r11", "memory", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7",
                   "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "st");
#undef L
#undef S
  }
  asm volatile("stmxcsr %0" : "=m"(mx_out));
  asm volatile("fnstcw %0" : "=m"(cw_out));
  mx = 0x1f80;
  asm volatile("ldmxcsr %0" ::"m"(mx));
  CHECK(ret == SIGUSR2, "syscall returned %ld", ret);
  CHECK((mx_out & 0xffc0) == ((0x1f80 | (3 << 13)) & 0xffc0), "mxcsr %x", mx_out);
  CHECK(cw_out == (0x037f & ~0x300), "x87 control word %x", cw_out);
  /* fldpi at single precision control still loads the full constant */
  CHECK(pi_out > 3.14159 && pi_out < 3.1416, "x87 stack");
  int width = avx ? 32 : 16;
  for (int i = 0; i < 16; ++i) CHECK(!memcmp(in[i], out[i], width), "vector register %d (avx %d)", i, avx);
  return 0;
}

/* rseq: glibc's registration of the main thread and of another thread is still in place. */

static int rseq_registered(void) {
  extern const ptrdiff_t __rseq_offset;
  extern const unsigned int __rseq_size;
  char* area = (char*)__builtin_thread_pointer() + __rseq_offset;
  if (__rseq_size == 0) return -1;
  /* Registering the same area again: EBUSY if registered (EINVAL for a different length). */
  long r = syscall(SYS_rseq, area, 32, 0, 0x53053053);
  if (r < 0 && errno == EBUSY) return 1;
  r = syscall(SYS_rseq, area, __rseq_size, 0, 0x53053053);
  if (r < 0 && errno == EBUSY) return 1;
  return 0;
}
static void* rseq_fn(void* arg) {
  pthread_barrier_wait(&bar);
  wait_thread_go();
  return (void*)(intptr_t)rseq_registered();
}
static int m_rseq(void) {
  SETUP(rseq_registered() == 1);
  pthread_barrier_init(&bar, NULL, 2);
  pthread_t t;
  SETUP(pthread_create(&t, NULL, rseq_fn, NULL) == 0);
  pthread_barrier_wait(&bar);
  ready_and_wait();
  CHECK(rseq_registered() == 1, "main thread's rseq registration lost");
  extern const ptrdiff_t __rseq_offset;
  volatile int32_t* cpu_id = (int32_t*)((char*)__builtin_thread_pointer() + __rseq_offset + 4);
  CHECK(*cpu_id >= 0, "rseq cpu_id %d", *cpu_id);
  pthread_kill(t, THREAD_GO);
  void* r;
  pthread_join(t, &r);
  CHECK(r == (void*)1, "thread's rseq registration lost (%ld)", (long)(intptr_t)r);
  return 0;
}

/* ---- memory objects and layouts ---- */

/* shm: a SysV segment attached in the process: after restore the mapping is still the segment. */
static int m_shm(void) {
  int id = shmget(IPC_PRIVATE, 65536, IPC_CREAT | 0600);
  SETUP(id >= 0);
  FILE* f = fopen(path_in("shmid"), "w");
  fprintf(f, "%d\n", id);
  fclose(f);
  char* p = shmat(id, NULL, 0);
  SETUP(p != (void*)-1);
  fill(p, 65536, 11);
  ready_and_wait();
  CHECK(same(p, 65536, 11), "data");
  struct shmid_ds ds;
  CHECK(shmctl(id, IPC_STAT, &ds) == 0 && ds.shm_nattch == 1, "nattch %lu", (unsigned long)ds.shm_nattch);
  char* q = shmat(id, NULL, 0);
  CHECK(q != (void*)-1, "attach again");
  p[100] = 'Z';
  CHECK(q[100] == 'Z', "the restored mapping is not the segment any more");
  shmctl(id, IPC_RMID, NULL);
  return 0;
}

/* Many VMAs (alternating protections so they cannot merge), each with its own data. */
static int m_many_vmas(void) {
  enum { N = 2000 };
  const size_t pg = 4096;
  char* base = mmap(NULL, N * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  SETUP(base != MAP_FAILED);
  for (int i = 0; i < N; ++i) *(uint32_t*)(base + i * pg) = i * 2654435761u;
  for (int i = 0; i < N; i += 2) SETUP(mprotect(base + i * pg, pg, PROT_READ) == 0);
  ready_and_wait();
  for (int i = 0; i < N; ++i) CHECK(*(uint32_t*)(base + i * pg) == i * 2654435761u, "vma %d", i);
  CHECK(!strcmp(perms(base), "r--p") && !strcmp(perms(base + pg), "rw-p") &&
            !strcmp(perms(base + (N - 1) * pg), "rw-p"), "perms");
  return 0;
}

/* MAP_GROWSDOWN stack. */
static int m_growsdown(void) {
  const size_t n = 16 * 4096;
  char* p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_GROWSDOWN, -1, 0);
  SETUP(p != MAP_FAILED);
  fill(p + n / 2, n / 2, 12);
  SETUP(strstr(vmflags(p), " gd"));
  ready_and_wait();
  CHECK(strstr(vmflags(p), " gd"), "VM_GROWSDOWN lost: %s", vmflags(p));
  CHECK(same(p + n / 2, n / 2, 12), "data");
  return 0;
}

/* Transparent huge page advice and a THP-backed region. */
static int m_thp(void) {
  const size_t huge = 2 << 20;
  char* raw = mmap(NULL, 4 * huge, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  SETUP(raw != MAP_FAILED);
  char* p = (char*)(((uintptr_t)raw + huge - 1) & ~(huge - 1));
  char* q = p + huge;
  SETUP(madvise(p, huge, MADV_HUGEPAGE) == 0 && madvise(q, huge, MADV_NOHUGEPAGE) == 0);
  fill(p, huge, 13);
  fill(q, huge, 14);
  ready_and_wait();
  CHECK(same(p, huge, 13) && same(q, huge, 14), "data");
  CHECK(strstr(vmflags(p), " hg"), "MADV_HUGEPAGE lost: %s", vmflags(p));
  CHECK(strstr(vmflags(q), " nh"), "MADV_NOHUGEPAGE lost: %s", vmflags(q));
  return 0;
}

static int m_hugetlb(void) {
  const size_t huge = 2 << 20;
  char* p = mmap(NULL, huge, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0);
  if (p == MAP_FAILED) exit(121); /* no huge pages reserved: the test skips */
  fill(p, huge, 15);
  ready_and_wait();
  CHECK(same(p, huge, 15), "data");
  CHECK(strstr(vmflags(p), " ht"), "not hugetlb any more: %s", vmflags(p));
  return 0;
}

/* ---- more ---- */

/* socket_udp: bound UDP sockets (v4) with queued datagrams, one connected. */
static int m_udp(void) {
  int a = socket(AF_INET, SOCK_DGRAM, 0), b = socket(AF_INET, SOCK_DGRAM, 0);
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  SETUP(bind(a, (void*)&sa, sizeof sa) == 0);
  socklen_t l = sizeof sa;
  getsockname(a, (void*)&sa, &l);
  SETUP(connect(b, (void*)&sa, sizeof sa) == 0);
  SETUP(send(b, "udp-1", 5, 0) == 5 && send(b, "udp-22", 6, 0) == 6);
  ready_and_wait();
  char buf[16];
  CHECK(recv(a, buf, 16, MSG_DONTWAIT) == 5 && !memcmp(buf, "udp-1", 5), "datagram 1");
  CHECK(recv(a, buf, 16, MSG_DONTWAIT) == 6 && !memcmp(buf, "udp-22", 6), "datagram 2");
  CHECK(send(b, "x", 1, 0) == 1 && recv(a, buf, 16, 0) == 1, "still connected to the bound port");
  return 0;
}

/* prctl state: name, pdeathsig, child subreaper, dumpable, no_new_privs. */
static int prctl_root_pdeathsig;
static int m_prctl(void) {
  /* pdeathsig on a child (its parent, this helper, is restored with it); on the root itself only
   * in the pdeathsig_root mode (its parent after restore is whoever restored it). */
  pid_t c = zfork();
  if (c == 0) {
    if (prctl(PR_SET_PDEATHSIG, SIGTERM)) _exit(99);
    wait_usr2();
    int sig = 0;
    _exit(prctl(PR_GET_PDEATHSIG, &sig) == 0 && sig == SIGTERM ? 0 : 1);
  }
  SETUP(prctl(PR_SET_NAME, "zdtm-name") == 0 && prctl(PR_SET_CHILD_SUBREAPER, 1) == 0 &&
        prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0);
  if (prctl_root_pdeathsig) SETUP(prctl(PR_SET_PDEATHSIG, SIGTERM) == 0);
  ready_and_wait();
  char name[32] = {0};
  int sig = 0, sub = 0;
  prctl(PR_GET_NAME, name);
  CHECK(!strcmp(name, "zdtm-name"), "name %s", name);
  CHECK(prctl(PR_GET_CHILD_SUBREAPER, &sub) == 0 && sub == 1, "subreaper %d", sub);
  CHECK(prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) == 1, "no_new_privs");
  if (prctl_root_pdeathsig) CHECK(prctl(PR_GET_PDEATHSIG, &sig) == 0 && sig == SIGTERM, "pdeathsig %d", sig);
  kill(c, SIGUSR2);
  CHECK(reap(c) == 0, "child's pdeathsig");
  return 0;
}

static int m_rlimits(void) {
  struct rlimit r = {200, 300}, c = {0, 4096}, st = {4 << 20, RLIM_INFINITY};
  SETUP(setrlimit(RLIMIT_NOFILE, &r) == 0 && setrlimit(RLIMIT_CORE, &c) == 0 && setrlimit(RLIMIT_STACK, &st) == 0);
  ready_and_wait();
  struct rlimit g;
  CHECK(getrlimit(RLIMIT_NOFILE, &g) == 0 && g.rlim_cur == 200 && g.rlim_max == 300, "nofile %lu/%lu",
        (unsigned long)g.rlim_cur, (unsigned long)g.rlim_max);
  CHECK(getrlimit(RLIMIT_CORE, &g) == 0 && g.rlim_cur == 0 && g.rlim_max == 4096, "core");
  CHECK(getrlimit(RLIMIT_STACK, &g) == 0 && g.rlim_cur == 4 << 20 && g.rlim_max == RLIM_INFINITY, "stack");
  return 0;
}

/* Blocked in poll() with no timeout (main) and epoll_wait(-1) (thread) when dumped: both calls
 * are restarted and see the data written after restore. */
static int pb_pipe[2], pb_pipe2[2], pb_ep;
static void* pb_thread(void* arg) {
  struct epoll_event ev;
  int n;
  /* epoll_wait is never restarted: the dump's ptrace interrupt makes it return EINTR (as with
   * CRIU, and as a debugger attaching would); real programs loop. */
  do n = epoll_wait(pb_ep, &ev, 1, -1); while (n < 0 && errno == EINTR);
  return (void*)(intptr_t)(n == 1 && ev.data.u64 == 0x77);
}
static void* pb_writer(void* arg) {
  wait_usr2();
  return (void*)(intptr_t)(write(pb_pipe[1], "p", 1) == 1 && write(pb_pipe2[1], "e", 1) == 1);
}
static int m_poll_block(void) {
  SETUP(pipe(pb_pipe) == 0 && pipe(pb_pipe2) == 0);
  pb_ep = epoll_create1(0);
  struct epoll_event ev = {.events = EPOLLIN, .data.u64 = 0x77};
  SETUP(epoll_ctl(pb_ep, EPOLL_CTL_ADD, pb_pipe2[0], &ev) == 0);
  pthread_t t;
  SETUP(pthread_create(&t, NULL, pb_thread, NULL) == 0);
  /* A third thread takes the SIGUSR2 and writes to both pipes. */
  pthread_t w;
  SETUP(pthread_create(&w, NULL, pb_writer, NULL) == 0);
  ready();
  struct pollfd p = {pb_pipe[0], POLLIN, 0};
  int n;
  do n = poll(&p, 1, -1); while (n < 0 && errno == EINTR);
  CHECK(n == 1 && (p.revents & POLLIN), "poll %d %x", n, p.revents);
  void* r;
  pthread_join(t, &r);
  CHECK(r == (void*)1, "epoll_wait in the thread");
  pthread_join(w, &r);
  CHECK(r == (void*)1, "writer");
  return 0;
}

/* An fd just below the hard RLIMIT_NOFILE. */
static int m_fd_near_limit(void) {
  struct rlimit rl;
  getrlimit(RLIMIT_NOFILE, &rl);
  rl.rlim_cur = rl.rlim_max;
  SETUP(setrlimit(RLIMIT_NOFILE, &rl) == 0);
  int top = (int)rl.rlim_max - 1;
  SETUP(dup2(0, top) == top);
  ready_and_wait();
  CHECK(fcntl(top, F_GETFD) >= 0, "fd %d", top);
  struct rlimit now;
  CHECK(getrlimit(RLIMIT_NOFILE, &now) == 0 && now.rlim_cur == rl.rlim_cur && now.rlim_max == rl.rlim_max,
        "RLIMIT_NOFILE %lu/%lu", (unsigned long)now.rlim_cur, (unsigned long)now.rlim_max);
  /* Nothing of the restore's own is left open: the lowest free fd is the first after stdio. */
  int fd = open("/dev/null", O_RDONLY);
  CHECK(fd == 3, "first free fd %d", fd);
  int n = 0;
  for (int i = 0; i < top; ++i) n += fcntl(i, F_GETFD) >= 0;
  CHECK(n == 4, "%d fds open below %d", n, top);
  return 0;
}

/* A mapping of a deleted file (maps04/unlink_mmap): must be refused cleanly or restored. */
static int m_deleted_map(void) {
  int fd = open(path_in("mapped"), O_RDWR | O_CREAT | O_TRUNC, 0600);
  SETUP(fd >= 0 && ftruncate(fd, 8192) == 0);
  char* p = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  SETUP(p != MAP_FAILED);
  close(fd);
  memcpy(p, "deleted-map", 11);
  SETUP(unlink(path_in("mapped")) == 0);
  ready_and_wait();
  CHECK(!memcmp(p, "deleted-map", 11), "data");
  return 0;
}

#include "z_static_mm.h"

int main(int argc, char** argv) {
  if (argc < 4) return 119;
  const char* mode = argv[1];
  ready_fd = atoi(argv[2]);
  dir = argv[3];
  sigemptyset(&usr2_set);
  sigaddset(&usr2_set, SIGUSR2);
  sigset_t both = usr2_set;
  sigaddset(&both, THREAD_GO);
  SETUP(sigprocmask(SIG_BLOCK, &both, NULL) == 0);
  struct {
    const char* name;
    int (*fn)(void);
  } modes[] = {
      {"env00", m_env00}, {"maps00", m_maps00}, {"maps_large", m_maps_large}, {"maps02", m_maps02},
      {"mprotect00", m_mprotect00}, {"brk", m_brk}, {"mlock", m_mlock}, {"vdso01", m_vdso01},
      {"pthread01", m_pthread01}, {"futex", m_futex}, {"sigaltstack", m_sigaltstack},
      {"sigpending", m_sigpending}, {"sched", m_sched}, {"session00", m_session00},
      {"session01", m_session01}, {"pgid", m_pgid}, {"zombie00", m_zombie00}, {"pid00", m_pid00},
      {"execd", m_execd}, {"stopped", m_stopped}, {"traced", m_traced}, {"thread_bomb", m_thread_bomb},
      {"write_read00", m_write_read00}, {"pipe", m_pipe}, {"unlink_fstat00", m_unlink_fstat00},
      {"cwd00", m_cwd00}, {"cwd_deleted", m_cwd_deleted}, {"umask00", m_umask00},
      {"file_shared", m_file_shared}, {"fifo", m_fifo}, {"bigfd", m_bigfd}, {"memfd00", m_memfd00},
      {"socket_listen", m_socket_listen}, {"socket_tcp", m_socket_tcp}, {"unix", m_unix},
      {"eventfd", m_eventfd}, {"epoll", m_epoll}, {"inotify00", m_inotify00}, {"timerfd", m_timerfd},
      {"posix_timers", m_posix_timers}, {"itimer", m_itimer}, {"fpu", m_fpu}, {"rseq", m_rseq},
      {"shm", m_shm}, {"many_vmas", m_many_vmas}, {"growsdown", m_growsdown}, {"thp", m_thp},
      {"hugetlb", m_hugetlb}, {"udp", m_udp}, {"prctl", m_prctl}, {"rlimits", m_rlimits},
      {"poll_block", m_poll_block}, {"fd_near_limit", m_fd_near_limit}, {"deleted_map", m_deleted_map},
  };
  int mm = mm_modes(mode); /* z_static_mm.h */
  if (mm != -1) return mm;
  if (!strcmp(mode, "pthread00")) return m_pthread(8);
  if (!strcmp(mode, "stopped01")) return stopped_extra = 1, m_stopped();
  if (!strcmp(mode, "stopped02")) return stopped_extra = 2, m_stopped();
  if (!strcmp(mode, "stopped12")) return stopped_extra = 3, m_stopped();
  if (!strcmp(mode, "stopped_tstp")) return stopped_sig = SIGTSTP, m_stopped();
  if (!strcmp(mode, "stopped_threads")) return stopped_threads = 4, m_stopped();
  if (!strcmp(mode, "stopped_pgrp")) return m_stopped_pgrp();
  if (!strcmp(mode, "cwd02")) return cwd_with_fd = 1, m_cwd_deleted();
  if (!strcmp(mode, "root_deleted")) return m_root_deleted();
  if (!strcmp(mode, "pdeathsig_root")) return prctl_root_pdeathsig = 1, m_prctl();
  if (!strcmp(mode, "unix_abs")) return unix_rel = 0, m_unix();
  if (!strcmp(mode, "exec")) return m_exec("/proc/self/exe");
  for (size_t i = 0; i < sizeof modes / sizeof modes[0]; ++i)
    if (!strcmp(mode, modes[i].name)) return modes[i].fn();
  fprintf(stderr, "z_static: unknown mode %s\n", mode);
  return 118;
}
