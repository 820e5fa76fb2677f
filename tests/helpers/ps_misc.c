/* Per-process and per-thread odds and ends across dump and restore:
 *   ps_misc rlimits READY_FD         lowered soft and hard limits
 *   ps_misc fs READY_FD DIR          chroot DIR, cwd DIR/sub, umask 027, personality, comm of
 *                                    the main thread and a second thread
 *   ps_misc sched READY_FD           SCHED_BATCH nice 5 + timer slack (main), SCHED_FIFO 7 (thread)
 *   ps_misc prctl READY_FD           pdeathsig, child subreaper, THP disable
 *   ps_misc seccomp READY_FD         no_new_privs + two stacked filters (uname -> errno 77,
 *                                    getpgid -> 78, the second with SECCOMP_FILTER_FLAG_LOG),
 *                                    in the main thread and a thread created after them */
#include "ps_common.h"

#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <sys/personality.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/utsname.h>

struct lim {
  int res;
  rlim_t cur, max;
};
static const struct lim kLimits[] = {
    {RLIMIT_NOFILE, 100, 200},       {RLIMIT_CORE, 0, 1 << 20},
    {RLIMIT_STACK, 4 << 20, RLIM_INFINITY}, {RLIMIT_MSGQUEUE, 4096, 8192},
    {RLIMIT_NICE, 0, 0},             {RLIMIT_CPU, 3600, 7200},
    {RLIMIT_FSIZE, 1 << 30, RLIM_INFINITY},
};

static int rlimits(const char* ready) {
  for (size_t i = 0; i < sizeof(kLimits) / sizeof(kLimits[0]); ++i) {
    struct rlimit rl = {kLimits[i].cur, kLimits[i].max};
    SETUP(setrlimit(kLimits[i].res, &rl) == 0);
  }
  struct rlimit np;
  SETUP(getrlimit(RLIMIT_NPROC, &np) == 0);
  ps_ready_and_wait(ready);
  for (size_t i = 0; i < sizeof(kLimits) / sizeof(kLimits[0]); ++i) {
    struct rlimit rl;
    CHECK(getrlimit(kLimits[i].res, &rl) == 0, "getrlimit %d", kLimits[i].res);
    CHECK(rl.rlim_cur == kLimits[i].cur && rl.rlim_max == kLimits[i].max,
          "limit %d: %llu/%llu, want %llu/%llu", kLimits[i].res, (unsigned long long)rl.rlim_cur,
          (unsigned long long)rl.rlim_max, (unsigned long long)kLimits[i].cur,
          (unsigned long long)kLimits[i].max);
  }
  struct rlimit np2;
  CHECK(getrlimit(RLIMIT_NPROC, &np2) == 0 && np2.rlim_cur == np.rlim_cur &&
            np2.rlim_max == np.rlim_max,
        "RLIMIT_NPROC changed");
  return 0;
}

static volatile int thread_go;
static volatile int thread_ok = -1;
static pthread_barrier_t barrier;

static void* comm_thread(void* arg) {
  (void)arg;
  SETUP(prctl(PR_SET_NAME, "ps-worker-2", 0, 0, 0) == 0);
  pthread_barrier_wait(&barrier);
  while (!thread_go) syscall(SYS_futex, &thread_go, 0, 0, NULL, NULL, 0);
  char name[17] = {0};
  prctl(PR_GET_NAME, name, 0, 0, 0);
  thread_ok = strcmp(name, "ps-worker-2") == 0 ? 1 : 2;
  return NULL;
}

static int fs(const char* ready, const char* dir) {
  char sub[4096];
  snprintf(sub, sizeof(sub), "%s/sub", dir);
  SETUP(chdir(sub) == 0);
  SETUP(chroot(dir) == 0);
  umask(027);
  SETUP(personality(PER_LINUX | ADDR_NO_RANDOMIZE | ADDR_COMPAT_LAYOUT) != -1);
  SETUP(prctl(PR_SET_NAME, "ps-main-comm", 0, 0, 0) == 0);
  pthread_barrier_init(&barrier, NULL, 2);
  pthread_t th;
  SETUP(pthread_create(&th, NULL, comm_thread, NULL) == 0);
  pthread_barrier_wait(&barrier);

  ps_ready_and_wait(ready);

  char cwd[4096];
  CHECK(getcwd(cwd, sizeof(cwd)) != NULL && strcmp(cwd, "/sub") == 0, "cwd %s", cwd);
  struct stat st;
  CHECK(stat("/marker", &st) == 0, "/marker not visible: root not restored");
  CHECK(stat("here", &st) == 0, "sub/here not visible from cwd");
  mode_t m = umask(0);
  CHECK(m == 027, "umask %o", m);
  int pers = personality(0xffffffff);
  CHECK(pers == (PER_LINUX | ADDR_NO_RANDOMIZE | ADDR_COMPAT_LAYOUT), "personality %#x", pers);
  char name[17] = {0};
  prctl(PR_GET_NAME, name, 0, 0, 0);
  CHECK(strcmp(name, "ps-main-comm") == 0, "comm %s", name);
  thread_go = 1;
  syscall(SYS_futex, &thread_go, 1, 1, NULL, NULL, 0);
  CHECK(pthread_join(th, NULL) == 0, "join");
  CHECK(thread_ok == 1, "thread comm check %d", thread_ok);
  return 0;
}

struct sched_attr_ {
  uint32_t size, policy;
  uint64_t flags;
  int32_t nice;
  uint32_t priority;
  uint64_t runtime, deadline, period;
  uint32_t util_min, util_max;
};

static int get_attr(pid_t tid, struct sched_attr_* a) {
  memset(a, 0, sizeof(*a));
  return (int)syscall(SYS_sched_getattr, tid, a, sizeof(*a), 0);
}

static volatile pid_t fifo_tid;

static void* fifo_thread(void* arg) {
  (void)arg;
  fifo_tid = (pid_t)syscall(SYS_gettid);
  struct sched_param sp = {.sched_priority = 7};
  SETUP(sched_setscheduler(0, SCHED_FIFO | SCHED_RESET_ON_FORK, &sp) == 0);
  pthread_barrier_wait(&barrier);
  while (!thread_go) syscall(SYS_futex, &thread_go, 0, 0, NULL, NULL, 0);
  struct sched_attr_ a;
  thread_ok = get_attr(0, &a) == 0 && a.policy == SCHED_FIFO && a.priority == 7 &&
                      (a.flags & 1 /* SCHED_FLAG_RESET_ON_FORK */)
                  ? 1
                  : 2;
  return NULL;
}

static int sched(const char* ready) {
  struct sched_param sp = {.sched_priority = 0};
  SETUP(sched_setscheduler(0, SCHED_BATCH, &sp) == 0);
  SETUP(setpriority(PRIO_PROCESS, 0, 5) == 0);
  SETUP(prctl(PR_SET_TIMERSLACK, 123456, 0, 0, 0) == 0);
  pthread_barrier_init(&barrier, NULL, 2);
  pthread_t th;
  SETUP(pthread_create(&th, NULL, fifo_thread, NULL) == 0);
  pthread_barrier_wait(&barrier);

  ps_ready_and_wait(ready);

  struct sched_attr_ a;
  CHECK(get_attr(0, &a) == 0, "sched_getattr");
  CHECK(a.policy == SCHED_BATCH, "policy %u", a.policy);
  CHECK(a.nice == 5, "nice %d", a.nice);
  CHECK(getpriority(PRIO_PROCESS, 0) == 5, "getpriority %d", getpriority(PRIO_PROCESS, 0));
  CHECK(prctl(PR_GET_TIMERSLACK, 0, 0, 0, 0) == 123456, "timer slack %d",
        prctl(PR_GET_TIMERSLACK, 0, 0, 0, 0));
  thread_go = 1;
  syscall(SYS_futex, &thread_go, 1, 1, NULL, NULL, 0);
  CHECK(pthread_join(th, NULL) == 0, "join");
  CHECK(thread_ok == 1, "FIFO thread check %d", thread_ok);
  return 0;
}

static volatile sig_atomic_t pdeath_count;
static void on_pdeath(int sig) {
  (void)sig;
  pdeath_count++;
}

static int prctls(const char* ready) {
  /* A handler: the restorer that was our parent after the restore may exit and fire it. */
  SETUP(signal(SIGUSR1, on_pdeath) != SIG_ERR);
  SETUP(prctl(PR_SET_PDEATHSIG, SIGUSR1, 0, 0, 0) == 0);
  SETUP(prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0);
  SETUP(prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0) == 0);
  ps_ready_and_wait(ready);
  int sig = 0;
  CHECK(prctl(PR_GET_PDEATHSIG, &sig, 0, 0, 0) == 0 && sig == SIGUSR1, "pdeathsig %d", sig);
  int sub = 0;
  CHECK(prctl(PR_GET_CHILD_SUBREAPER, &sub, 0, 0, 0) == 0 && sub == 1, "subreaper %d", sub);
  CHECK(prctl(PR_GET_THP_DISABLE, 0, 0, 0, 0) == 1, "THP disable %d",
        prctl(PR_GET_THP_DISABLE, 0, 0, 0, 0));
  return 0;
}

/* nr -> SECCOMP_RET_ERRNO | err, everything else allowed (x86-64 only, as godwit). */
static int deny(int nr, int err, unsigned flags) {
  struct sock_filter f[] = {
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (unsigned)nr, 0, 1),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (unsigned)err),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
  };
  struct sock_fprog prog = {sizeof(f) / sizeof(f[0]), f};
  return (int)syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, flags, &prog);
}

static int status_field(const char* key) {
  FILE* f = fopen("/proc/self/status", "r");
  if (!f) return -1;
  char line[256];
  int v = -1;
  size_t n = strlen(key);
  while (fgets(line, sizeof(line), f))
    if (strncmp(line, key, n) == 0 && line[n] == ':') v = atoi(line + n + 1);
  fclose(f);
  return v;
}

static int filtered(void) {
  struct utsname u;
  errno = 0;
  if (syscall(SYS_uname, &u) != -1 || errno != 77) return 0;
  errno = 0;
  if (syscall(SYS_getpgid, 0) != -1 || errno != 78) return 0;
  return getpid() > 0;
}

static void* seccomp_thread(void* arg) {
  (void)arg;
  pthread_barrier_wait(&barrier);
  while (!thread_go) syscall(SYS_futex, &thread_go, 0, 0, NULL, NULL, 0);
  thread_ok = filtered() ? 1 : 2;
  return NULL;
}

static int seccomp(const char* ready) {
  SETUP(prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0);
  SETUP(deny(SYS_uname, 77, 0) == 0);
  SETUP(deny(SYS_getpgid, 78, SECCOMP_FILTER_FLAG_LOG) == 0);
  SETUP(filtered());
  pthread_barrier_init(&barrier, NULL, 2);
  pthread_t th;
  SETUP(pthread_create(&th, NULL, seccomp_thread, NULL) == 0);
  pthread_barrier_wait(&barrier);
  ps_ready_and_wait(ready);
  CHECK(status_field("Seccomp") == 2, "Seccomp %d", status_field("Seccomp"));
  CHECK(status_field("Seccomp_filters") == 2, "Seccomp_filters %d",
        status_field("Seccomp_filters"));
  CHECK(filtered(), "main thread not filtered");
  thread_go = 1;
  syscall(SYS_futex, &thread_go, 1, 1, NULL, NULL, 0);
  CHECK(pthread_join(th, NULL) == 0, "join");
  CHECK(thread_ok == 1, "thread not filtered (%d)", thread_ok);
  return 0;
}

int main(int argc, char** argv) {
  if (argc < 3) return 122;
  ps_init();
  if (strcmp(argv[1], "rlimits") == 0) return rlimits(argv[2]);
  if (strcmp(argv[1], "fs") == 0 && argc > 3) return fs(argv[2], argv[3]);
  if (strcmp(argv[1], "sched") == 0) return sched(argv[2]);
  if (strcmp(argv[1], "prctl") == 0) return prctls(argv[2]);
  if (strcmp(argv[1], "seccomp") == 0) return seccomp(argv[2]);
  return 123;
}
