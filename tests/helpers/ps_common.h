/* Shared by the ps_* helpers (zdtm pattern): argv[1] is the mode, argv[2] the ready pipe's fd.
 * A helper sets up its state, writes "ready\n" (and closes the pipe: nothing outside the tree
 * stays connected), then waits for SIGUSR2 (sent after the restore), checks its own state and
 * exits 0, or with the number of the failed check after printing it on stderr. */
#pragma once
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static volatile sig_atomic_t ps_go;
static int ps_check_no;

static void ps_on_usr2(int sig) { (void)sig; ps_go = 1; }

#define CHECK(cond, ...)                                                   \
  do {                                                                     \
    ++ps_check_no;                                                         \
    if (!(cond)) {                                                         \
      fprintf(stderr, "check %d failed (%s:%d): %s: ", ps_check_no,        \
              __FILE__, __LINE__, #cond);                                  \
      fprintf(stderr, __VA_ARGS__);                                        \
      fprintf(stderr, " (errno %d)\n", errno);                             \
      exit(ps_check_no > 100 ? 100 : ps_check_no);                        \
    }                                                                      \
  } while (0)

#define SETUP(cond)                                                        \
  do {                                                                     \
    if (!(cond)) {                                                         \
      fprintf(stderr, "setup failed (%s:%d): %s (errno %d)\n", __FILE__,   \
              __LINE__, #cond, errno);                                     \
      exit(120);                                                           \
    }                                                                      \
  } while (0)

/* Installs the SIGUSR2 "check now" handler. Call before any other setup (and any thread). */
static void ps_init(void) {
  struct sigaction sa;
  memset(&sa, 0, sizeof(sa));
  sa.sa_handler = ps_on_usr2;
  SETUP(sigaction(SIGUSR2, &sa, NULL) == 0);
  /* Blocked in every thread (they inherit the mask): only ps_ready_and_wait takes it. */
  sigset_t usr2;
  sigemptyset(&usr2);
  sigaddset(&usr2, SIGUSR2);
  SETUP(sigprocmask(SIG_BLOCK, &usr2, NULL) == 0);
}

/* Reports ready and waits for SIGUSR2, kept blocked and taken with sigwaitinfo: a signal that
 * arrives before the restored process re-issues its interrupted wait stays pending instead of
 * running a handler just before the wait starts (and being lost). */
static void ps_ready_and_wait(const char* fd_arg) {
  int fd = atoi(fd_arg);
  sigset_t usr2;
  sigemptyset(&usr2);
  sigaddset(&usr2, SIGUSR2);
  SETUP(write(fd, "ready\n", 6) == 6);
  close(fd);
  while (sigwaitinfo(&usr2, NULL) != SIGUSR2) {
  }
  ps_go = 1;
}
