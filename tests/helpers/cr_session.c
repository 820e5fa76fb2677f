// zdtm-style helper: cr_session READY_FD
// A session that is neither a process's own nor its parent's: R calls setsid and forks A; A forks
// B and then calls setsid itself, so B stays in R's session while its parent A leads another one.
// R writes "A B" on READY_FD; everyone then pauses (the test checks the sessions and kills them).
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

int main(int argc, char** argv) {
  if (argc < 2) return 100;
  int ready = atoi(argv[1]);
  if (setsid() < 0) return 101;
  int p[2];
  if (pipe(p) < 0) return 102;
  pid_t a = fork();
  if (a == 0) {
    close(p[0]);
    close(ready);  // the test reads the ready pipe until EOF
    pid_t b = fork();
    if (b == 0) {
      close(p[1]);
      for (;;) pause();
    }
    if (setsid() < 0) _exit(103);
    if (write(p[1], &b, sizeof(b)) != sizeof(b)) _exit(104);
    close(p[1]);
    for (;;) pause();
  }
  close(p[1]);
  pid_t b;
  if (read(p[0], &b, sizeof(b)) != sizeof(b)) return 105;
  close(p[0]);
  dprintf(ready, "%d %d\n", a, b);
  close(ready);
  for (;;) pause();
}
