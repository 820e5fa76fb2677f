/* Signal dispositions and alternate signal stacks across dump and restore.
 *   ps_signals handlers READY_FD   handlers with flags and masks, an ignored and a default signal;
 *                                  after restore the handlers must actually run.
 *   ps_signals altstack READY_FD   sigaltstack in the main thread and in a second thread; a
 *                                  SA_ONSTACK handler must run on each thread's own stack. */
#include "ps_common.h"

#include <pthread.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/syscall.h>

static volatile sig_atomic_t usr1_count, rt_count, rt_code;
static volatile uintptr_t on_stack_addr;
static void* volatile usr1_info_addr;

static void on_usr1(int sig, siginfo_t* si, void* uc) {
  (void)uc;
  if (sig == SIGUSR1 && si->si_signo == SIGUSR1) usr1_count++;
  usr1_info_addr = si;
}
static void on_rt(int sig) {
  rt_count++;
  rt_code = sig;
}
static void on_stack_handler(int sig) {
  int local;
  (void)sig;
  on_stack_addr = (uintptr_t)&local;
}

static int handlers(const char* ready) {
  struct sigaction sa;
  memset(&sa, 0, sizeof(sa));
  sa.sa_sigaction = on_usr1;
  sa.sa_flags = SA_SIGINFO | SA_RESTART;
  sigemptyset(&sa.sa_mask);
  sigaddset(&sa.sa_mask, SIGINT);
  sigaddset(&sa.sa_mask, SIGRTMIN + 5);
  SETUP(sigaction(SIGUSR1, &sa, NULL) == 0);
  memset(&sa, 0, sizeof(sa));
  sa.sa_handler = on_rt;
  sa.sa_flags = SA_NODEFER | SA_RESETHAND;
  SETUP(sigaction(SIGRTMIN + 3, &sa, NULL) == 0);
  SETUP(signal(SIGHUP, SIG_IGN) != SIG_ERR);
  SETUP(signal(SIGPIPE, SIG_IGN) != SIG_ERR);
  memset(&sa, 0, sizeof(sa));
  sa.sa_handler = SIG_DFL;
  sa.sa_flags = SA_RESTART;
  SETUP(sigaction(SIGWINCH, &sa, NULL) == 0);

  ps_ready_and_wait(ready);

  struct sigaction got;
  CHECK(sigaction(SIGUSR1, NULL, &got) == 0, "sigaction USR1");
  CHECK(got.sa_sigaction == on_usr1, "handler %p", (void*)got.sa_sigaction);
  CHECK((got.sa_flags & (SA_SIGINFO | SA_RESTART)) == (SA_SIGINFO | SA_RESTART), "flags %#x",
        got.sa_flags);
  CHECK(sigismember(&got.sa_mask, SIGINT) == 1 && sigismember(&got.sa_mask, SIGRTMIN + 5) == 1 &&
            sigismember(&got.sa_mask, SIGTERM) == 0,
        "mask");
  CHECK(sigaction(SIGRTMIN + 3, NULL, &got) == 0 && got.sa_handler == on_rt &&
            (got.sa_flags & (SA_NODEFER | SA_RESETHAND)) == (SA_NODEFER | SA_RESETHAND),
        "rt handler");
  CHECK(sigaction(SIGHUP, NULL, &got) == 0 && got.sa_handler == SIG_IGN, "SIGHUP not ignored");
  CHECK(sigaction(SIGPIPE, NULL, &got) == 0 && got.sa_handler == SIG_IGN, "SIGPIPE not ignored");
  CHECK(sigaction(SIGWINCH, NULL, &got) == 0 && got.sa_handler == SIG_DFL &&
            (got.sa_flags & SA_RESTART),
        "SIGWINCH");
  CHECK(sigaction(SIGTERM, NULL, &got) == 0 && got.sa_handler == SIG_DFL, "SIGTERM");
  CHECK(sigaction(SIGUSR2, NULL, &got) == 0 && got.sa_handler == ps_on_usr2, "SIGUSR2");
  /* The handlers must run: the restorer trampoline (sa_restorer) must work too, or the return
   * from the handler crashes. */
  CHECK(raise(SIGUSR1) == 0 && usr1_count == 1, "SIGUSR1 handler ran %d times", usr1_count);
  CHECK(raise(SIGUSR1) == 0 && usr1_count == 2, "SIGUSR1 handler ran %d times", usr1_count);
  CHECK(raise(SIGRTMIN + 3) == 0 && rt_count == 1 && rt_code == SIGRTMIN + 3, "rt handler ran %d",
        rt_count);
  /* SA_RESETHAND: the disposition went back to default after one delivery. */
  CHECK(sigaction(SIGRTMIN + 3, NULL, &got) == 0 && got.sa_handler == SIG_DFL, "resethand");
  CHECK(raise(SIGHUP) == 0 && raise(SIGPIPE) == 0, "ignored signals");
  return 0;
}

struct alt {
  void* base;
  size_t size;
};
static struct alt thread_alt;
static volatile uintptr_t thread_on_stack;
static volatile int thread_ok = -1;
static volatile sig_atomic_t thread_go;
static pthread_barrier_t barrier;

static void* alloc_stack(size_t size) {
  void* p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  SETUP(p != MAP_FAILED);
  return p;
}

static void* thread_main(void* arg) {
  (void)arg;
  stack_t ss = {.ss_sp = thread_alt.base, .ss_size = thread_alt.size, .ss_flags = 0};
  SETUP(sigaltstack(&ss, NULL) == 0);
  pthread_barrier_wait(&barrier);
  while (!thread_go) syscall(SYS_futex, &thread_go, 0 /* FUTEX_WAIT */, 0, NULL, NULL, 0);
  stack_t got;
  thread_ok = 1;
  if (sigaltstack(NULL, &got) != 0 || got.ss_sp != thread_alt.base ||
      got.ss_size != thread_alt.size || (got.ss_flags & SS_DISABLE))
    thread_ok = 2;
  on_stack_addr = 0;
  if (thread_ok == 1) {
    syscall(SYS_tgkill, getpid(), syscall(SYS_gettid), SIGUSR1);
    uintptr_t a = on_stack_addr;
    if (a < (uintptr_t)thread_alt.base || a >= (uintptr_t)thread_alt.base + thread_alt.size)
      thread_ok = 3;
  }
  return NULL;
}

static int altstack(const char* ready) {
  size_t main_size = 64 * 1024;
  void* main_base = alloc_stack(main_size);
  thread_alt.size = 96 * 1024;
  thread_alt.base = alloc_stack(thread_alt.size);
  stack_t ss = {.ss_sp = main_base, .ss_size = main_size, .ss_flags = 0};
  SETUP(sigaltstack(&ss, NULL) == 0);
  struct sigaction sa;
  memset(&sa, 0, sizeof(sa));
  sa.sa_handler = on_stack_handler;
  sa.sa_flags = SA_ONSTACK;
  SETUP(sigaction(SIGUSR1, &sa, NULL) == 0);
  pthread_barrier_init(&barrier, NULL, 2);
  pthread_t th;
  SETUP(pthread_create(&th, NULL, thread_main, NULL) == 0);
  pthread_barrier_wait(&barrier);

  ps_ready_and_wait(ready);

  stack_t got;
  CHECK(sigaltstack(NULL, &got) == 0, "sigaltstack");
  CHECK(got.ss_sp == main_base && got.ss_size == main_size && !(got.ss_flags & SS_DISABLE),
        "main altstack %p+%zu flags %#x, want %p+%zu", got.ss_sp, got.ss_size, got.ss_flags,
        main_base, main_size);
  on_stack_addr = 0;
  CHECK(raise(SIGUSR1) == 0, "raise");
  CHECK(on_stack_addr >= (uintptr_t)main_base && on_stack_addr < (uintptr_t)main_base + main_size,
        "main handler ran at %#lx, not on its altstack", (unsigned long)on_stack_addr);
  thread_go = 1;
  syscall(SYS_futex, &thread_go, 1 /* FUTEX_WAKE */, 1, NULL, NULL, 0);
  CHECK(pthread_join(th, NULL) == 0, "join");
  CHECK(thread_ok == 1, "thread check %d", thread_ok);
  return 0;
}

int main(int argc, char** argv) {
  if (argc < 3) return 122;
  ps_init();
  if (strcmp(argv[1], "handlers") == 0) return handlers(argv[2]);
  if (strcmp(argv[1], "altstack") == 0) return altstack(argv[2]);
  return 123;
}
