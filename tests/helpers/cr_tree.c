// zdtm-style helper: cr_tree READY_FD GO_FILE
// A tree with sessions, process groups and a zombie:
//   root (session leader)
//   +- A  (leads group A)
//   +- B  (member of group A)
//   +- C  (root's group) -- D (leads its own session)
//   +- Z  (exited with status 7, not reaped: a zombie)
// Every live process checks its heap, its parent, group and session in a loop until GO_FILE
// exists; the root then reaps everyone and checks their exit codes (Z: 7). Exit 0 = all good.
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static const char* go_file;
static int sync_w;

static uint64_t sum(const uint64_t* p, size_t n) {
  uint64_t s = 0;
  for (size_t i = 0; i < n; ++i) s = s * 31 + p[i];
  return s;
}

// Checks identity and memory until GO; returns an exit code.
static int ready_fd;
static int worker(uint64_t seed) {
  close(ready_fd);
  pid_t ppid = getppid(), pgid = getpgid(0), sid = getsid(0);
  size_t n = (4 << 20) / 8;
  uint64_t* m = malloc(n * 8);
  for (size_t i = 0; i < n; ++i) m[i] = seed * (i + 1);
  uint64_t want = sum(m, n);
  if (write(sync_w, "x", 1) != 1) return 90;
  close(sync_w);
  for (;;) {
    if (sum(m, n) != want) return 1;
    if (getppid() != ppid) return 2;
    if (getpgid(0) != pgid) return 3;
    if (getsid(0) != sid) return 4;
    if (access(go_file, F_OK) == 0) return 0;
  }
}

int main(int argc, char** argv) {
  if (argc < 3) return 100;
  ready_fd = atoi(argv[1]);
  go_file = argv[2];
  if (setsid() < 0) return 101;
  int p[2];
  if (pipe(p)) return 102;
  sync_w = p[1];
  pid_t a = fork();
  if (a == 0) {
    setpgid(0, 0);
    _exit(worker(11));
  }
  setpgid(a, a);
  pid_t b = fork();
  if (b == 0) {
    setpgid(0, a);
    _exit(worker(12));
  }
  setpgid(b, a);
  pid_t c = fork();
  if (c == 0) {
    pid_t d = fork();
    if (d == 0) {
      setsid();
      _exit(worker(14));
    }
    int r = worker(13);
    int st;
    if (waitpid(d, &st, 0) != d || !WIFEXITED(st) || WEXITSTATUS(st) != 0) _exit(50);
    _exit(r);
  }
  pid_t z = fork();
  if (z == 0) {
    close(ready_fd);
    _exit(7);
  }
  close(p[1]);
  // a, b, c, d report; wait for the zombie to be one.
  char buf[4];
  for (int i = 0; i < 4; ++i)
    if (read(p[0], buf, 1) != 1) return 103;
  close(p[0]);
  siginfo_t si;
  if (waitid(P_PID, z, &si, WEXITED | WNOWAIT)) return 104;
  pid_t pg_a = getpgid(a), pg_b = getpgid(b), pg_c = getpgid(c);
  pid_t sid = getsid(0);
  if (pg_a != a || pg_b != a || pg_c != getpid() || sid != getpid()) return 105;
  if (write(ready_fd, "ready\n", 6) != 6) return 106;
  close(ready_fd);
  while (access(go_file, F_OK) != 0) {
    if (getpgid(a) != pg_a || getpgid(b) != pg_b || getsid(0) != sid) return 107;
  }
  int st;
  if (waitpid(z, &st, 0) != z || !WIFEXITED(st) || WEXITSTATUS(st) != 7) return 108;
  pid_t kids[3] = {a, b, c};
  for (int i = 0; i < 3; ++i) {
    if (waitpid(kids[i], &st, 0) != kids[i]) return 110 + i;
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) return 20 + i * 10 + (WIFEXITED(st) ? WEXITSTATUS(st) : 9);
  }
  return 0;
}
