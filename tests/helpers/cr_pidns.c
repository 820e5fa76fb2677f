// zdtm-style helper: cr_pidns READY_FD GO_FILE
// root (the test's pid namespace) -> init (pid 1 of a new pid namespace) -> worker (pid 2 there).
// Each checks its pid and parent pid as seen from inside until GO_FILE exists; exit 0 = the
// namespace and both pids inside it survived.
#define _GNU_SOURCE
#include <sched.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static const char* go;

static int watch(pid_t pid, pid_t ppid) {
  for (;;) {
    if (getpid() != pid) return 1;
    if (getppid() != ppid) return 2;
    if (access(go, F_OK) == 0) return 0;
  }
}

int main(int argc, char** argv) {
  if (argc < 3) return 100;
  int ready_fd = atoi(argv[1]);
  go = argv[2];
  int p[2];
  if (pipe(p)) return 101;
  if (unshare(CLONE_NEWPID)) return 102;
  pid_t init = fork();
  if (init == 0) {
    close(ready_fd);
    close(p[0]);
    pid_t w = fork();
    if (w == 0) {
      if (write(p[1], "w", 1) != 1) _exit(90);
      close(p[1]);
      _exit(watch(2, 1));
    }
    if (write(p[1], "i", 1) != 1) _exit(91);
    close(p[1]);
    int r = watch(1, 0);
    int st;
    if (waitpid(w, &st, 0) != w || !WIFEXITED(st)) _exit(20);
    _exit(r ? 10 + r : WEXITSTATUS(st) ? 30 + WEXITSTATUS(st) : 0);
  }
  close(p[1]);
  char c;
  for (int i = 0; i < 2; ++i)
    if (read(p[0], &c, 1) != 1) return 103;
  close(p[0]);
  if (write(ready_fd, "ready\n", 6) != 6) return 104;
  close(ready_fd);
  while (access(go, F_OK) != 0) {
  }
  int st;
  if (waitpid(init, &st, 0) != init) return 105;
  return WIFEXITED(st) ? WEXITSTATUS(st) : 60 + WTERMSIG(st);
}
