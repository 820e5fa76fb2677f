// Driver of the fd benchmark (scripts/bench.d/30-fds.sh):
//   fds_bench GODWIT FDS_HOLD DIR GROUPS NCONN REPS
// Per rep: starts fds_hold (GROUPS*9 mixed fds), opens NCONN TCP connections to it and queues
// 4 KiB on each (unread by the holder), `godwit dump --tcp-established` (killing it), `godwit
// restore` (the connections come back live; the driver's ends stay open throughout), checks one
// connection still carries data, kills the restored holder. Prints key=value medians: fds, dump
// and restore wall seconds, frozen ms, the holder's own creation time of the non-TCP fds.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec / 1e9;
}
static double num(const char* s, const char* key) {
  char k[64];
  snprintf(k, sizeof(k), "\"%s\":", key);
  const char* p = strstr(s, k);
  return p ? atof(p + strlen(k)) : -1;
}
static pid_t spawn(char** argv, int* fd) {
  int p[2];
  if (pipe(p)) exit(1);
  pid_t pid = fork();
  if (pid == 0) {
    int null = open("/dev/null", O_RDWR);
    dup2(p[1], 1);
    dup2(null, 0);
    close(p[0]);
    close(p[1]);
    execv(argv[0], argv);
    _exit(127);
  }
  close(p[1]);
  *fd = p[0];
  return pid;
}
static void readline(int fd, char* buf, size_t len) {
  size_t n = 0;
  char c;
  while (n + 1 < len && read(fd, &c, 1) == 1 && c != '\n') buf[n++] = c;
  buf[n] = 0;
}
static int cmp(const void* a, const void* b) {
  double x = *(const double*)a, y = *(const double*)b;
  return x < y ? -1 : x > y;
}
static double median(double* v, int n) {
  qsort(v, n, sizeof(double), cmp);
  return v[n / 2];
}

int main(int argc, char** argv) {
  if (argc < 7) return 100;
  const char *godwit = argv[1], *hold = argv[2], *dir = argv[3];
  int groups = atoi(argv[4]), nconn = atoi(argv[5]), reps = atoi(argv[6]);
  prctl(PR_SET_CHILD_SUBREAPER, 1);
  double dump_s[16], frozen[16], restore_s[16], create_us[16];
  int nfds = 0;
  char img[4096], port_file[4096];
  snprintf(img, sizeof(img), "%s/img", dir);
  snprintf(port_file, sizeof(port_file), "%s/port", dir);
  for (int r = 0; r < reps && r < 16; ++r) {
    unlink(port_file);
    int p[2];
    if (pipe(p)) return 1;
    char g_s[16], n_s[16];
    snprintf(g_s, sizeof(g_s), "%d", groups);
    snprintf(n_s, sizeof(n_s), "%d", nconn);
    pid_t holder = fork();
    if (holder == 0) {
      int null = open("/dev/null", O_RDWR);
      dup2(null, 0);
      dup2(null, 1);
      dup2(null, 2);
      close(p[0]);
      dup2(p[1], 3);
      char* a[] = {(char*)hold, "3", (char*)dir, g_s, port_file, n_s, NULL};
      execv(hold, a);
      _exit(127);
    }
    close(p[1]);
    // The port appears once the listener is bound (a file the holder writes; bounded wait).
    int port = 0;
    for (int i = 0; i < 20000 && !port; i++) {
      FILE* f = fopen(port_file, "r");
      if (f) {
        if (fscanf(f, "%d", &port) != 1) port = 0;
        fclose(f);
      }
      if (!port) {
        struct timespec ts = {0, 500000};
        nanosleep(&ts, NULL);
      }
    }
    if (!port) return 2;
    int* conns = calloc(nconn, sizeof(int));
    char buf[4096];
    memset(buf, 'd', sizeof(buf));
    for (int i = 0; i < nconn; i++) {
      conns[i] = socket(AF_INET, SOCK_STREAM, 0);
      struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port),
                              .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
      if (connect(conns[i], (struct sockaddr*)&a, sizeof(a))) return 3;
      if (write(conns[i], buf, sizeof(buf)) != sizeof(buf)) return 4;
    }
    char line[4096];
    readline(p[0], line, sizeof(line));
    close(p[0]);
    create_us[r] = atof(strchr(line, '=') ? strchr(line, '=') + 1 : "0");
    char dirent_path[64];
    snprintf(dirent_path, sizeof(dirent_path), "/proc/%d/fd", holder);
    DIR* d = opendir(dirent_path);
    nfds = 0;
    while (d && readdir(d)) nfds++;
    if (d) closedir(d);
    nfds -= 2;
    char pid_s[32];
    snprintf(pid_s, sizeof(pid_s), "%d", holder);
    char* da[] = {(char*)godwit, "dump", "--pid", pid_s, "--images-dir", img, "--tcp-established",
                  "--json", NULL};
    int fd, st;
    double t0 = now();
    pid_t g = spawn(da, &fd);
    readline(fd, line, sizeof(line));
    waitpid(g, &st, 0);
    dump_s[r] = now() - t0;
    close(fd);
    if (!WIFEXITED(st) || WEXITSTATUS(st)) {
      fprintf(stderr, "dump failed: %s\n", line);
      return 1;
    }
    frozen[r] = num(line, "frozen_ms");
    waitpid(holder, &st, 0);
    char* ra[] = {(char*)godwit, "restore", "--images-dir", img, "--json", NULL};
    t0 = now();
    g = spawn(ra, &fd);
    readline(fd, line, sizeof(line));
    restore_s[r] = now() - t0;
    close(fd);
    int root = (int)num(line, "root_pid");
    if (root <= 0) {
      fprintf(stderr, "restore failed: %s\n", line);
      return 1;
    }
    // The connections are live: the holder's queued 1 KiB arrives on each, nothing errs.
    for (int i = 0; i < nconn; i++) {
      char b[1024];
      size_t got = 0;
      while (got < sizeof(b)) {
        ssize_t n = read(conns[i], b + got, sizeof(b) - got);
        if (n <= 0) {
          fprintf(stderr, "connection %d broken after restore\n", i);
          return 5;
        }
        got += n;
      }
      if (write(conns[i], "x", 1) != 1) return 6;
    }
    kill(root, SIGKILL);
    waitpid(g, &st, 0);
    for (int i = 0; i < nconn; i++) close(conns[i]);
    free(conns);
    char cmd[4200];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", img);
    if (system(cmd)) return 1;
  }
  int n = reps < 16 ? reps : 16;
  printf("fds=%d conns=%d dump_s=%.4f frozen_ms=%.2f restore_s=%.4f create_us=%.0f\n", nfds, nconn,
         median(dump_s, n), median(frozen, n), median(restore_s, n), median(create_us, n));
  return 0;
}
