/* Timers across dump and restore:
 *   ps_timers itimers READY_FD   ITIMER_REAL (1.5 s, interval 0.25 s) must fire after the restore
 *                                with no more time left than at the dump; VIRTUAL and PROF keep
 *                                their values and intervals.
 *   ps_timers posix READY_FD     POSIX timers with ids 0, 2, 3, 4 (1 deleted): signal, none,
 *                                thread-directed and CPU-clock timers; the armed one fires after
 *                                the restore with its sigev_value and timer id. */
#include "ps_common.h"

#include <stdint.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <time.h>

static const uint64_t kTickSlackUs = 20000;
static volatile sig_atomic_t alarm_count;
static void on_alarm(int sig) {
  (void)sig;
  alarm_count++;
}

static uint64_t us(struct timeval tv) { return (uint64_t)tv.tv_sec * 1000000 + tv.tv_usec; }
static uint64_t ns(struct timespec ts) { return (uint64_t)ts.tv_sec * 1000000000ULL + ts.tv_nsec; }

/* Waits (sigsuspend) until *flag reaches want; returns the number of sigsuspend calls. The
 * test's own timeout bounds a timer that never fires. */
static void wait_for(volatile sig_atomic_t* flag, int want, int sig) {
  sigset_t block, old;
  sigemptyset(&block);
  sigaddset(&block, sig);
  sigprocmask(SIG_BLOCK, &block, &old);
  while (*flag < want) sigsuspend(&old);
  sigprocmask(SIG_SETMASK, &old, NULL);
}

static int itimers(const char* ready) {
  SETUP(signal(SIGALRM, on_alarm) != SIG_ERR);
  struct itimerval real = {{0, 250000}, {1, 500000}};
  struct itimerval virt = {{7, 0}, {30, 0}};
  struct itimerval prof = {{0, 500000}, {40, 0}};
  SETUP(setitimer(ITIMER_REAL, &real, NULL) == 0);
  SETUP(setitimer(ITIMER_VIRTUAL, &virt, NULL) == 0);
  SETUP(setitimer(ITIMER_PROF, &prof, NULL) == 0);
  ps_ready_and_wait(ready);
  struct itimerval got;
  CHECK(getitimer(ITIMER_REAL, &got) == 0, "getitimer");
  /* It either has not fired yet (some time left, at most the 1.5 s set) or it fired and runs
   * with its interval. */
  CHECK(us(got.it_interval) == 250000, "real interval %llu us", (unsigned long long)us(got.it_interval));
  CHECK(us(got.it_value) > 0 && us(got.it_value) <= 1500000, "real value %llu us",
        (unsigned long long)us(got.it_value));
  int before = alarm_count;
  wait_for(&alarm_count, before + 2, SIGALRM); /* fires, and again on its interval */
  /* CPU-time timers are kept in ticks: reading one rounds up to the next tick (4 ms here), so
   * each set/get cycle may add a tick. */
  CHECK(getitimer(ITIMER_VIRTUAL, &got) == 0 && us(got.it_interval) == 7000000 &&
            us(got.it_value) > 29000000 && us(got.it_value) <= 30000000 + kTickSlackUs,
        "virtual %llu/%llu", (unsigned long long)us(got.it_value),
        (unsigned long long)us(got.it_interval));
  CHECK(getitimer(ITIMER_PROF, &got) == 0 && us(got.it_interval) == 500000 &&
            us(got.it_value) > 39000000 && us(got.it_value) <= 40000000 + kTickSlackUs,
        "prof %llu/%llu", (unsigned long long)us(got.it_value),
        (unsigned long long)us(got.it_interval));
  return 0;
}

static volatile sig_atomic_t rt1_count, rt1_value, rt1_timer, rt2_count;
static void on_rt1(int sig, siginfo_t* si, void* uc) {
  (void)sig;
  (void)uc;
  rt1_value = si->si_value.sival_int;
  rt1_timer = si->si_timerid;
  rt1_count++;
}
static void on_rt2(int sig) {
  (void)sig;
  rt2_count++;
}

static int create(clockid_t clock, int notify, int signo, int value, int tid) {
  struct sigevent ev;
  memset(&ev, 0, sizeof(ev));
  ev.sigev_notify = notify;
  ev.sigev_signo = signo;
  ev.sigev_value.sival_int = value;
  if (notify == SIGEV_THREAD_ID) ev._sigev_un._tid = tid;
  int id = -1;
  SETUP(syscall(SYS_timer_create, clock, &ev, &id) == 0);
  return id;
}

static void arm(int id, uint64_t value_ns, uint64_t interval_ns) {
  struct itimerspec v = {{interval_ns / 1000000000ULL, interval_ns % 1000000000ULL},
                         {value_ns / 1000000000ULL, value_ns % 1000000000ULL}};
  SETUP(syscall(SYS_timer_settime, id, 0, &v, NULL) == 0);
}

static int posix(const char* ready) {
  struct sigaction sa;
  memset(&sa, 0, sizeof(sa));
  sa.sa_sigaction = on_rt1;
  sa.sa_flags = SA_SIGINFO;
  SETUP(sigaction(SIGRTMIN + 1, &sa, NULL) == 0);
  SETUP(signal(SIGRTMIN + 2, on_rt2) != SIG_ERR);
  int tid = (int)syscall(SYS_gettid);
  int t0 = create(CLOCK_MONOTONIC, SIGEV_SIGNAL, SIGRTMIN + 1, 111, 0);
  int tdel = create(CLOCK_REALTIME, SIGEV_NONE, 0, 0, 0);
  int t2 = create(CLOCK_REALTIME, SIGEV_NONE, 0, 0, 0);
  int t3 = create(CLOCK_BOOTTIME, SIGEV_THREAD_ID, SIGRTMIN + 2, 333, tid);
  int t4 = create(CLOCK_PROCESS_CPUTIME_ID, SIGEV_SIGNAL, SIGRTMIN + 2, 444, 0);
  SETUP(syscall(SYS_timer_delete, tdel) == 0);
  arm(t0, 1200000000ULL, 0);            /* fires once, 1.2 s after arming */
  arm(t3, 100000000000ULL, 10000000000ULL);
  arm(t4, 50000000000ULL, 0);           /* 50 s of CPU: never fires here */
  ps_ready_and_wait(ready);
  struct itimerspec v;
  CHECK(syscall(SYS_timer_gettime, t0, &v) == 0, "timer %d gone", t0);
  CHECK(ns(v.it_value) <= 1200000000ULL && ns(v.it_interval) == 0, "t0 %llu",
        (unsigned long long)ns(v.it_value));
  CHECK(syscall(SYS_timer_gettime, tdel, &v) == -1 && errno == EINVAL, "deleted timer %d exists",
        tdel);
  CHECK(syscall(SYS_timer_gettime, t2, &v) == 0 && ns(v.it_value) == 0, "timer %d", t2);
  CHECK(syscall(SYS_timer_gettime, t3, &v) == 0 && ns(v.it_interval) == 10000000000ULL &&
            ns(v.it_value) > 90000000000ULL && ns(v.it_value) <= 100000000000ULL,
        "timer %d: %llu/%llu", t3, (unsigned long long)ns(v.it_value),
        (unsigned long long)ns(v.it_interval));
  CHECK(syscall(SYS_timer_gettime, t4, &v) == 0 && ns(v.it_value) > 49000000000ULL &&
            ns(v.it_value) <= 50000000000ULL,
        "timer %d: %llu", t4, (unsigned long long)ns(v.it_value));
  /* A new timer takes a free id, not one of the restored ones. */
  int t5 = create(CLOCK_MONOTONIC, SIGEV_NONE, 0, 0, 0);
  CHECK(t5 != t0 && t5 != t2 && t5 != t3 && t5 != t4, "new timer got id %d", t5);
  if (rt1_count == 0) wait_for(&rt1_count, 1, SIGRTMIN + 1);
  CHECK(rt1_count == 1 && rt1_value == 111 && rt1_timer == t0, "t0 fired %d value %d timer %d",
        rt1_count, rt1_value, rt1_timer);
  CHECK(rt2_count == 0, "t3/t4 fired early");
  return 0;
}

int main(int argc, char** argv) {
  if (argc < 3) return 122;
  ps_init();
  if (strcmp(argv[1], "itimers") == 0) return itimers(argv[2]);
  if (strcmp(argv[1], "posix") == 0) return posix(argv[2]);
  return 123;
}
