// Driver of the checkpoint/restore benchmark (scripts/bench.d/20-cr.sh):
//   cr_bench GODWIT[:GODWIT2...] CR_HOLD DIR MIB COMPRESS(raw|zstd) REPS [DATA(random|low)]
// For each rep: start cr_hold with MIB MiB of random data, `godwit dump` it into DIR (killing
// it), then `godwit restore` it and kill the restored copy once it runs, then the same with
// `restore --lazy`. Several godwit binaries (an old build and a new one): each rep runs them one
// after the other (paired runs on a shared machine). Prints per binary one line of key=value
// (medians over reps): dump, restore and lazy restore wall seconds (restores: until the tree
// runs), frozen ms, image bytes, and peak_extra: the dump's peak memory beyond what the tree
// held before it (a memory cgroup holding the tree and godwit; -1 without one). dump_cpu and
// restore_cpu: CPU seconds (user + system) the dump and the full restore (until the tree runs)
// cost, godwit's own and the tree's (injected calls run in the tree's processes; the restored
// tree is a single process here): unlike the wall times, they
// hardly move with what else the shared machine runs; on two otherwise idle cores a command
// cannot take less than half of it.
// It is a child subreaper so the killed originals are reaped here (pid 1 of this VM does not).
#define _GNU_SOURCE
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec / 1e9;
}

static double num(const char* json, const char* key) {
  char k[64];
  snprintf(k, sizeof(k), "\"%s\":", key);
  const char* p = strstr(json, k);
  return p ? atof(p + strlen(k)) : -1;
}

// Runs argv with stdout to a pipe; returns the pid, *fd = read end.
static pid_t spawn(char** argv, int* fd) {
  int p[2];
  if (pipe(p)) exit(1);
  pid_t pid = fork();
  if (pid == 0) {
    dup2(p[1], 1);
    close(p[0]);
    close(p[1]);
    execv(argv[0], argv);
    _exit(127);
  }
  close(p[1]);
  *fd = p[0];
  return pid;
}

static int readline(int fd, char* buf, size_t len) {
  size_t n = 0;
  char c;
  while (n + 1 < len && read(fd, &c, 1) == 1) {
    if (c == '\n') break;
    buf[n++] = c;
  }
  buf[n] = 0;
  return (int)n;
}

static double ru_s(const struct rusage* ru) {
  return ru->ru_utime.tv_sec + ru->ru_utime.tv_usec / 1e6 + ru->ru_stime.tv_sec +
         ru->ru_stime.tv_usec / 1e6;
}

// CPU seconds pid has used so far (utime + stime of /proc/PID/stat), -1 if unreadable.
static double proc_cpu_s(pid_t pid) {
  char path[64], buf[1024];
  snprintf(path, sizeof(path), "/proc/%d/stat", pid);
  FILE* f = fopen(path, "r");
  if (!f) return -1;
  size_t n = fread(buf, 1, sizeof(buf) - 1, f);
  fclose(f);
  buf[n] = 0;
  char* p = strrchr(buf, ')');
  unsigned long long ut = 0, st = 0;
  // After the comm: state ppid pgrp session tty_nr tpgid flags minflt cminflt majflt cmajflt
  // utime stime.
  if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
    return -1;
  return (double)(ut + st) / sysconf(_SC_CLK_TCK);
}

static int cmp(const void* a, const void* b) {
  double x = *(const double*)a, y = *(const double*)b;
  return x < y ? -1 : x > y;
}

static double median(double* v, int n) {
  qsort(v, n, sizeof(double), cmp);
  return v[n / 2];
}

static long long dir_bytes(const char* dir) {
  DIR* d = opendir(dir);
  long long s = 0;
  struct dirent* e;
  char path[4096];
  struct stat st;
  while (d && (e = readdir(d))) {
    snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
    if (stat(path, &st) == 0 && S_ISREG(st.st_mode)) s += st.st_size;
  }
  if (d) closedir(d);
  return s;
}

// A memory cgroup this process joins (v1 or v2), so what it starts is charged there.
static char cg_path[512], cg_parent[512];
static int cg_v2;

static int write_file(const char* path, const char* v) {
  FILE* f = fopen(path, "w");
  if (!f) return -1;
  int ok = fputs(v, f) >= 0;
  return fclose(f) == 0 && ok ? 0 : -1;
}

static long long read_ll(const char* path) {
  FILE* f = fopen(path, "r");
  long long v = -1;
  if (!f) return -1;
  if (fscanf(f, "%lld", &v) != 1) v = -1;
  fclose(f);
  return v;
}

static void cg_join(void) {
  const char* base = NULL;
  const char* key = NULL;
  if (access("/sys/fs/cgroup/cgroup.controllers", F_OK) == 0) {
    cg_v2 = 1;
    base = "/sys/fs/cgroup";
    key = "0::";
  } else if (access("/sys/fs/cgroup/memory/cgroup.procs", F_OK) == 0) {
    base = "/sys/fs/cgroup/memory";
    key = ":memory:";
  } else {
    return;
  }
  FILE* f = fopen("/proc/self/cgroup", "r");
  char line[1024];
  strcpy(cg_parent, base);
  while (f && fgets(line, sizeof(line), f)) {
    char* at = strstr(line, key);
    if (!at) continue;
    line[strcspn(line, "\n")] = 0;
    snprintf(cg_parent, sizeof(cg_parent), "%s%s", base, at + strlen(key));
    break;
  }
  if (f) fclose(f);
  snprintf(cg_path, sizeof(cg_path), "%s/godwit-bench-cr-%d", base, getpid());
  char procs[600], me[32];
  snprintf(procs, sizeof(procs), "%s/cgroup.procs", cg_path);
  snprintf(me, sizeof(me), "%d", getpid());
  if (mkdir(cg_path, 0755) != 0 || write_file(procs, me) != 0) {
    rmdir(cg_path);
    cg_path[0] = 0;
  }
}

static void cg_leave(void) {
  if (!cg_path[0]) return;
  char procs[600], me[32];
  snprintf(procs, sizeof(procs), "%s/cgroup.procs", cg_parent);
  snprintf(me, sizeof(me), "%d", getpid());
  write_file(procs, me);
  for (int i = 0; i < 100 && rmdir(cg_path) != 0; ++i) usleep(10000);
}

static long long cg_read(const char* v1, const char* v2) {
  if (!cg_path[0]) return -1;
  char p[600];
  snprintf(p, sizeof(p), "%s/%s", cg_path, cg_v2 ? v2 : v1);
  return read_ll(p);
}

static void cg_reset_peak(void) {
  if (!cg_path[0]) return;
  char p[600];
  snprintf(p, sizeof(p), "%s/%s", cg_path, cg_v2 ? "memory.peak" : "memory.max_usage_in_bytes");
  write_file(p, "0");
}

int main(int argc, char** argv) {
  if (argc < 7) return 100;
  const char *hold = argv[2], *dir = argv[3], *mib = argv[4], *comp = argv[5];
  char* bins[4];
  int nbins = 0;
  for (char* b = strtok(argv[1], ":"); b && nbins < 4; b = strtok(NULL, ":")) bins[nbins++] = b;
  int reps = atoi(argv[6]);
  char* data = argc > 7 ? argv[7] : "random";
  prctl(PR_SET_CHILD_SUBREAPER, 1);
  // Seconds to wait before each dump and each restore: memory freed by the previous step is
  // returned to the host by then (free page reporting, ~2 s), so every run pays for new memory.
  const char* settle_env = getenv("CR_SETTLE");
  int settle = settle_env ? atoi(settle_env) : 3;
  double dump_s[4][16], frozen[4][16], freeze[4][16], memdump[4][16], restore_s[4][16],
      restore_mem[4][16], lazy_s[4][16], peak[4][16], dump_cpu[4][16], restore_cpu[4][16],
      bytes = 0, image = 0;
  cg_join();
  for (int rb = 0; rb < reps * nbins && rb < 16 * nbins; ++rb) {
    int r = rb / nbins, bi = rb % nbins;
    const char* godwit = bins[bi];
    int p[2];
    if (pipe(p)) { cg_leave(); return 1; }
    pid_t holder = fork();
    if (holder == 0) {
      int null = open("/dev/null", O_RDWR);
      dup2(null, 0);
      dup2(null, 1);
      dup2(null, 2);
      close(p[0]);
      dup2(p[1], 3);
      char* a[] = {(char*)hold, "3", (char*)mib, data, NULL};
      execv(hold, a);
      _exit(127);
    }
    close(p[1]);
    char c;
    while (read(p[0], &c, 1) == 1) {
    }
    close(p[0]);
    char pid_s[32];
    snprintf(pid_s, sizeof(pid_s), "%d", holder);
    char* da[12] = {(char*)godwit, "dump", "--pid", pid_s, "--images-dir", (char*)dir, "--json"};
    if (!strcmp(comp, "zstd")) {
      da[7] = "--compress";
      da[8] = "zstd:1";
    }
    int fd;
    char line[4096];
    sleep(settle);
    long long before = cg_read("memory.usage_in_bytes", "memory.current");
    cg_reset_peak();
    double hold_cpu = proc_cpu_s(holder);
    double t0 = now();
    pid_t g = spawn(da, &fd);
    readline(fd, line, sizeof(line));
    int st;
    struct rusage ru;
    wait4(g, &st, 0, &ru);
    dump_s[bi][r] = now() - t0;
    dump_cpu[bi][r] = ru_s(&ru);
    long long pk = cg_read("memory.max_usage_in_bytes", "memory.peak");
    peak[bi][r] = before >= 0 && pk >= 0 ? (double)(pk - before) : -1;
    close(fd);
    if (!WIFEXITED(st) || WEXITSTATUS(st)) {
      fprintf(stderr, "dump failed (%s, wait status %#x): %s\n", godwit, st, line);
      kill(holder, SIGKILL);  // not killed by the dump: reaped here, not left to pid 1
      waitpid(holder, NULL, 0);
      { cg_leave(); return 1; }
    }
    frozen[bi][r] = num(line, "frozen_ms");
    freeze[bi][r] = num(line, "freeze_ms");
    memdump[bi][r] = num(line, "memdump_ms");
    bytes = num(line, "bytes");
    struct rusage hru;
    wait4(holder, &st, 0, &hru);
    if (hold_cpu >= 0) dump_cpu[bi][r] += ru_s(&hru) - hold_cpu;
    image = dir_bytes(dir);
    char* ra[] = {(char*)godwit, "restore", "--images-dir", (char*)dir, "--json", NULL};
    sleep(settle);
    t0 = now();
    g = spawn(ra, &fd);
    readline(fd, line, sizeof(line));  // printed once the tree runs
    restore_s[bi][r] = now() - t0;
    close(fd);
    restore_mem[bi][r] = num(line, "memory_ms");
    int root = (int)num(line, "root_pid");
    // Read now, not from wait4 after the kill: the killed root's exit (freeing its memory) is
    // not part of the restore.
    restore_cpu[bi][r] = proc_cpu_s(g) + (root > 0 ? proc_cpu_s(root) : 0);
    if (root <= 0) {
      fprintf(stderr, "restore failed: %s\n", line);
      { cg_leave(); return 1; }
    }
    kill(root, SIGKILL);
    waitpid(g, &st, 0);
    // The same images restored with --lazy: until the tree runs (its memory paged in after).
    char* la[] = {(char*)godwit, "restore", "--images-dir", (char*)dir, "--lazy", "--json", NULL};
    sleep(settle);
    t0 = now();
    g = spawn(la, &fd);
    readline(fd, line, sizeof(line));
    lazy_s[bi][r] = now() - t0;
    close(fd);
    root = (int)num(line, "root_pid");
    if (root <= 0) {
      fprintf(stderr, "lazy restore failed: %s\n", line);
      { cg_leave(); return 1; }
    }
    kill(root, SIGKILL);
    waitpid(g, &st, 0);
    char cmd[4200];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    if (system(cmd)) { cg_leave(); return 1; }
  }
  cg_leave();
  int n = reps < 16 ? reps : 16;
  for (int bi = 0; bi < nbins; ++bi)
    printf("bin=%d bytes=%.0f image=%.0f dump_s=%.3f frozen_ms=%.1f freeze_ms=%.1f memdump_ms=%.1f "
           "restore_s=%.3f restore_memory_ms=%.1f lazy_s=%.4f peak_extra=%.0f dump_cpu=%.3f "
           "restore_cpu=%.3f\n",
           bi, bytes, image, median(dump_s[bi], n), median(frozen[bi], n), median(freeze[bi], n),
           median(memdump[bi], n), median(restore_s[bi], n), median(restore_mem[bi], n),
           median(lazy_s[bi], n), median(peak[bi], n), median(dump_cpu[bi], n),
           median(restore_cpu[bi], n));
  return 0;
}
