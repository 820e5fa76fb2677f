// zdtm-style helper: cr_state READY_FD GO_FILE MODE [DATA_FILE]
// Sets up one kind of state, reports ready, and after restore (GO_FILE exists) checks it; the
// exit code says what broke (0 = everything survived).
//   mem:       private file mapping with written pages, shared file mapping, shared anonymous
//              memory shared with a child, memfd mapping, a PROT_NONE region holding data, brk,
//              vdso clock_gettime, cmdline/environ/auxv/exe (mm fields).
//   signals:   blocked mask, process- and thread-pending signals, an RT signal's payload.
//   read:      blocked in read() on a pipe that a child writes to after GO.
//   nanosleep: blocked in a 1.5 s nanosleep(), which must complete, not fail with EINTR.
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static const char* go_file;
static int ready_fd;

static void ready(void) {
  if (write(ready_fd, "ready\n", 6) != 6) exit(99);
  close(ready_fd);
}

static void wait_go(void) {
  while (access(go_file, F_OK) != 0) {
  }
}

static char* read_self(const char* what, size_t* len) {
  static char buf[3][8192];
  static int k;
  char* b = buf[k++ % 3];
  int fd = open(what, O_RDONLY);
  ssize_t n = read(fd, b, 8192);
  close(fd);
  *len = n < 0 ? 0 : (size_t)n;
  return b;
}

static int mode_mem(const char* data_file) {
  const size_t pg = 4096;
  // Private file mapping: page 1 written (COW), pages 0 and 2 untouched.
  int fd = open(data_file, O_RDWR | O_CREAT | O_TRUNC, 0644);
  char page[4096];
  for (int i = 0; i < 4; ++i) {
    memset(page, 'a' + i, pg);
    if (write(fd, page, pg) != (ssize_t)pg) return 90;
  }
  char* priv = mmap(NULL, 3 * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
  memset(priv + pg, 'X', pg);
  // Shared file mapping of the last page: written through to the file.
  char* shf = mmap(NULL, pg, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 3 * pg);
  memset(shf, 'S', 100);
  close(fd);
  // Shared anonymous memory, shared with a child.
  volatile uint64_t* sh = mmap(NULL, 64 * pg, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  for (int i = 0; i < 64 * 512; i += 512) sh[i] = i * 3;
  // memfd mapping.
  int mfd = memfd_create("crstate", 0);
  if (ftruncate(mfd, 8 * pg)) return 91;
  char* mf = mmap(NULL, 8 * pg, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
  close(mfd);
  memcpy(mf + 5 * pg, "memfd-data", 11);
  // Data behind PROT_NONE.
  char* hidden = mmap(NULL, 2 * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  memset(hidden, 'H', 2 * pg);
  mprotect(hidden, 2 * pg, PROT_NONE);
  // Read-only anonymous data.
  char* ro = mmap(NULL, pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  memset(ro, 'R', pg);
  mprotect(ro, pg, PROT_READ);
  // brk
  char* b = sbrk(3 * pg);
  memset(b, 'B', 3 * pg);
  void* brk_end = sbrk(0);
  // mm fields
  size_t cl_len, env_len, aux_len;
  char cmdline[8192], environ_[8192], auxv[8192];
  memcpy(cmdline, read_self("/proc/self/cmdline", &cl_len), 8192);
  memcpy(environ_, read_self("/proc/self/environ", &env_len), 8192);
  memcpy(auxv, read_self("/proc/self/auxv", &aux_len), 8192);
  char exe[4096];
  ssize_t exe_len = readlink("/proc/self/exe", exe, sizeof(exe));
  unsigned long at_random = getauxval(AT_RANDOM);
  struct timespec t0;
  clock_gettime(CLOCK_MONOTONIC, &t0);

  int p[2];
  if (pipe(p)) return 92;
  pid_t child = fork();
  if (child == 0) {
    close(ready_fd);
    close(p[0]);
    // The child adds to the shared memory after GO; the parent must see it.
    if (write(p[1], "c", 1) != 1) _exit(1);
    close(p[1]);
    wait_go();
    sh[1] = 4242;
    _exit(sh[512] == 512 * 3 ? 0 : 2);
  }
  close(p[1]);
  char c;
  if (read(p[0], &c, 1) != 1) return 93;
  close(p[0]);
  ready();
  wait_go();
  int st;
  if (waitpid(child, &st, 0) != child || !WIFEXITED(st) || WEXITSTATUS(st) != 0) return 10;
  if (sh[1] != 4242) return 11;  // still shared with the child after restore
  for (int i = 0; i < 64 * 512; i += 512)
    if (sh[i] != (uint64_t)i * 3) return 12;
  for (size_t i = 0; i < pg; ++i)
    if (priv[i] != 'a' || priv[pg + i] != 'X' || priv[2 * pg + i] != 'c') return 13;
  if (shf[0] != 'S' || shf[200] != 'd') return 14;
  if (memcmp(mf + 5 * pg, "memfd-data", 11)) return 15;
  mprotect(hidden, 2 * pg, PROT_READ);
  for (size_t i = 0; i < 2 * pg; ++i)
    if (hidden[i] != 'H') return 16;
  for (size_t i = 0; i < pg; ++i)
    if (ro[i] != 'R') return 17;
  for (size_t i = 0; i < 3 * pg; ++i)
    if (b[i] != 'B') return 18;
  if (sbrk(0) != brk_end) return 19;
  char* more = sbrk(pg);  // brk keeps working from the restored value
  if (more != brk_end) return 20;
  memset(more, 1, pg);
  size_t l2;
  char* now = read_self("/proc/self/cmdline", &l2);
  if (l2 != cl_len || memcmp(now, cmdline, l2)) return 21;
  now = read_self("/proc/self/environ", &l2);
  if (l2 != env_len || memcmp(now, environ_, l2)) return 22;
  now = read_self("/proc/self/auxv", &l2);
  if (l2 != aux_len || memcmp(now, auxv, l2)) return 23;
  char exe2[4096];
  ssize_t e2 = readlink("/proc/self/exe", exe2, sizeof(exe2));
  if (e2 != exe_len || memcmp(exe, exe2, e2)) return 24;
  if (getauxval(AT_RANDOM) != at_random) return 25;
  struct timespec t1;
  clock_gettime(CLOCK_MONOTONIC, &t1);  // through the vdso
  if (t1.tv_sec < t0.tv_sec) return 26;
  return 0;
}

static int mode_signals(void) {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGUSR1);
  sigaddset(&set, SIGUSR2);
  sigaddset(&set, SIGRTMIN + 3);
  sigprocmask(SIG_BLOCK, &set, NULL);
  kill(getpid(), SIGUSR1);                          // process-wide pending
  syscall(SYS_tgkill, getpid(), gettid(), SIGUSR2);  // thread pending
  union sigval v = {.sival_int = 31337};
  sigqueue(getpid(), SIGRTMIN + 3, v);
  ready();
  wait_go();
  sigset_t cur, pend;
  sigprocmask(SIG_BLOCK, NULL, &cur);
  if (!sigismember(&cur, SIGUSR1) || !sigismember(&cur, SIGUSR2) || !sigismember(&cur, SIGRTMIN + 3)) return 10;
  if (sigismember(&cur, SIGTERM)) return 11;
  sigpending(&pend);
  if (!sigismember(&pend, SIGUSR1) || !sigismember(&pend, SIGUSR2) || !sigismember(&pend, SIGRTMIN + 3)) return 12;
  siginfo_t si;
  sigset_t one;
  sigemptyset(&one);
  sigaddset(&one, SIGRTMIN + 3);
  if (sigwaitinfo(&one, &si) != SIGRTMIN + 3) return 13;
  if (si.si_value.sival_int != 31337 || si.si_pid != getpid()) return 14;
  sigemptyset(&one);
  sigaddset(&one, SIGUSR2);
  int got = sigwaitinfo(&one, &si);
  // (sigwaitinfo reports a tgkill as SI_USER or SI_TKILL depending on the kernel.)
  if (got != SIGUSR2 || si.si_pid != getpid() || (si.si_code != SI_TKILL && si.si_code != SI_USER)) {
    fprintf(stderr, "SIGUSR2: got %d si_code %d pid %d\n", got, si.si_code, si.si_pid);
    return 15;
  }
  sigemptyset(&one);
  sigaddset(&one, SIGUSR1);
  if (sigwaitinfo(&one, &si) != SIGUSR1 || si.si_code != SI_USER) return 16;
  return 0;
}

static int mode_read(void) {
  int p[2];
  if (pipe(p)) return 90;
  pid_t child = fork();
  if (child == 0) {
    close(ready_fd);
    close(p[0]);
    wait_go();
    if (write(p[1], "after-restore", 13) != 13) _exit(1);
    _exit(0);
  }
  close(p[1]);
  ready();
  char buf[64] = {0};
  ssize_t n = read(p[0], buf, sizeof(buf));  // blocked here during the dump
  if (n != 13 || memcmp(buf, "after-restore", 13)) return 10;
  int st;
  if (waitpid(child, &st, 0) != child || !WIFEXITED(st) || WEXITSTATUS(st)) return 11;
  return 0;
}

static int mode_nanosleep(void) {
  struct timespec t0, t1, req = {1, 500000000}, rem = {0, 0};
  clock_gettime(CLOCK_MONOTONIC, &t0);
  ready();
  int r = nanosleep(&req, &rem);  // blocked here during the dump
  clock_gettime(CLOCK_MONOTONIC, &t1);
  if (r != 0) return 10;
  double el = (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9;
  if (el < 1.5) return 11;
  return 0;
}

// Keeps writing while pre-dump rounds copy its memory: A[i] and B[i] (different pages) move in
// lockstep, so a page restored from a stale round breaks A == B.
static int mode_dirty(void) {
  size_t n = (64u << 20) / 8;
  uint64_t* a = mmap(NULL, n * 8, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  uint64_t* b = mmap(NULL, n * 8, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  for (size_t j = 0; j < n; ++j) a[j] = b[j] = j;
  ready();
  for (uint64_t it = 1;; ++it) {
    size_t idx = (it * 7919) % (n / 16);  // a 4 MiB working set in each array
    if (a[idx] != b[idx]) return 10;
    a[idx]++;
    b[idx]++;
    if ((it & 4095) == 0 && access(go_file, F_OK) == 0) {
      uint64_t sa = 0, s0 = 0;
      for (size_t j = 0; j < n; ++j) {
        if (a[j] != b[j]) return 11;
        sa += a[j];
        s0 += j;
      }
      return sa - s0 == it ? 0 : 12;
    }
  }
}

int main(int argc, char** argv) {
  if (argc < 4) return 100;
  ready_fd = atoi(argv[1]);
  go_file = argv[2];
  const char* mode = argv[3];
  if (!strcmp(mode, "mem")) return mode_mem(argc > 4 ? argv[4] : "/tmp/cr_state.data");
  if (!strcmp(mode, "signals")) return mode_signals();
  if (!strcmp(mode, "read")) return mode_read();
  if (!strcmp(mode, "nanosleep")) return mode_nanosleep();
  if (!strcmp(mode, "dirty")) return mode_dirty();
  return 101;
}
