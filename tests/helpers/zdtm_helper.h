/* The zdtm helper protocol shared by z_static.c, z_files.c, z_kinds.c, z_more.c, z_kobj.c and
 * z_pstate.c (see tests/zdtm_harness.h for the test side): the program is started as NAME MODE
 * READY_FD [DIR]; a mode sets its state up, calls ready() (writes "ready\n" on READY_FD and closes
 * it), waits for SIGUSR2 with wait_usr2() (blocked everywhere from main on and taken with
 * sigwaitinfo, so it cannot be lost), checks its own state with CHECK and exits 0, or with the
 * number of the failed check (the reason on stderr). SETUP failures exit 120. */
#pragma once

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define ZDTM_UNUSED __attribute__((unused))

static int check_no;
static ZDTM_UNUSED const char* dir;
static int ready_fd;
static sigset_t usr2_set;

#define CHECK(cond, ...)                                                                \
  do {                                                                                  \
    ++check_no;                                                                         \
    if (!(cond)) {                                                                      \
      fprintf(stderr, "%s: check %d failed (%s:%d): %s: ", program_invocation_short_name, \
              check_no, __FILE__, __LINE__, #cond);                                     \
      fprintf(stderr, __VA_ARGS__);                                                     \
      fprintf(stderr, " (errno %d)\n", errno);                                          \
      exit(check_no > 100 ? 100 : check_no);                                            \
    }                                                                                   \
  } while (0)
#define SETUP(cond)                                                                        \
  do {                                                                                     \
    if (!(cond)) {                                                                         \
      fprintf(stderr, "%s: setup failed (%s:%d): %s (errno %d)\n",                         \
              program_invocation_short_name, __FILE__, __LINE__, #cond, errno);            \
      exit(120);                                                                           \
    }                                                                                      \
  } while (0)

/* Children never keep the ready pipe open (the test waits for its EOF). */
static ZDTM_UNUSED pid_t zfork(void) {
  pid_t p = fork();
  if (p == 0) close(ready_fd);
  return p;
}
static ZDTM_UNUSED void ready(void) {
  SETUP(write(ready_fd, "ready\n", 6) == 6);
  close(ready_fd);
}
static ZDTM_UNUSED void wait_usr2(void) {
  while (sigwaitinfo(&usr2_set, NULL) != SIGUSR2) {
  }
}
static ZDTM_UNUSED void ready_and_wait(void) {
  ready();
  wait_usr2();
}
/* Waits for child p (clone children too); its exit status, 128 + the signal, or -1. */
static ZDTM_UNUSED int reap(pid_t p) {
  int st = 0;
  while (waitpid(p, &st, __WALL) < 0)
    if (errno != EINTR) return -1;
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}
/* A pty pair's master (the slave unlocked); its slave's name in name. */
static ZDTM_UNUSED int open_pty(char* name, size_t n) {
  int m = open("/dev/ptmx", O_RDWR | O_NOCTTY);
  SETUP(m >= 0 && grantpt(m) == 0 && unlockpt(m) == 0 && ptsname_r(m, name, n) == 0);
  return m;
}
/* In a forked child: leads a session whose controlling terminal is the pty slave `name` (the
 * first tty a session leader opens), open on an fd of it or not (keep_slave), tells the parent by
 * closing sync_w, then exits 0 once the terminal's hang-up (SIGHUP, blocked and waited for)
 * arrives; 2-4 when a step fails. */
static ZDTM_UNUSED void ctty_leader_until_hup(const char* name, int keep_slave, int sync_w) {
  sigset_t hup;
  sigemptyset(&hup);
  sigaddset(&hup, SIGHUP);
  sigprocmask(SIG_BLOCK, &hup, NULL);
  if (setsid() < 0) _exit(2);
  int s = open(name, O_RDWR);
  if (s < 0) _exit(3);
  if (!keep_slave) close(s);
  close(sync_w);
  siginfo_t si;
  int got;
  while ((got = sigwaitinfo(&hup, &si)) < 0 && errno == EINTR) {
  }
  _exit(got == SIGHUP ? 0 : 4);
}
/* Writes to fd until it would block (its send buffer and the peer's window full); the bytes
 * written, -1 on another error. */
static ZDTM_UNUSED int fill_send(int fd) {
  int fl = fcntl(fd, F_GETFL), size = 0;
  fcntl(fd, F_SETFL, fl | O_NONBLOCK);
  for (;;) {
    ssize_t n = write(fd, "zdtm test packet", 16);
    if (n < 0) break;
    size += (int)n;
  }
  int e = errno;
  fcntl(fd, F_SETFL, fl);
  return e == EAGAIN ? size : -1;
}
/* DIR/name, in one of 8 rotating buffers (a check may use a few at once). */
static ZDTM_UNUSED char* path_in(const char* name) {
  static char buf[8][512];
  static int k;
  char* b = buf[k++ % 8];
  snprintf(b, 512, "%s/%s", dir, name);
  return b;
}
/* A byte pattern of n bytes from seed, and its check. */
static ZDTM_UNUSED void fill(char* p, size_t n, unsigned seed) {
  for (size_t i = 0; i < n; ++i) p[i] = (char)(seed * 31 + i * 7 + (i >> 12));
}
static ZDTM_UNUSED int same(const char* p, size_t n, unsigned seed) {
  for (size_t i = 0; i < n; ++i)
    if (p[i] != (char)(seed * 31 + i * 7 + (i >> 12))) return 0;
  return 1;
}

/* A helper's modes, by name. */
struct zdtm_mode {
  const char* name;
  int (*fn)(void);
};
/* main's start: NAME MODE READY_FD DIR taken, SIGUSR2 blocked. 0, or 119 for too few arguments. */
static ZDTM_UNUSED int zdtm_start(int argc, char** argv) {
  if (argc < 4) return 119;
  ready_fd = atoi(argv[2]);
  dir = argv[3];
  sigemptyset(&usr2_set);
  sigaddset(&usr2_set, SIGUSR2);
  SETUP(sigprocmask(SIG_BLOCK, &usr2_set, NULL) == 0);
  return 0;
}
/* Runs the mode named `mode` of modes[0, n); 118 for an unknown one. */
static ZDTM_UNUSED int zdtm_run(const char* mode, const struct zdtm_mode* modes, size_t n) {
  for (size_t i = 0; i < n; ++i)
    if (!strcmp(mode, modes[i].name)) return modes[i].fn();
  fprintf(stderr, "%s: unknown mode %s\n", program_invocation_short_name, mode);
  return 118;
}
