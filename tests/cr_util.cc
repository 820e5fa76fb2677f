#include "cr_util.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

namespace godwit::crtest {
namespace {

std::string Slurp(int fd) {
  std::string s;
  char buf[4096];
  ssize_t n;
  while ((n = read(fd, buf, sizeof(buf))) > 0) s.append(buf, n);
  return s;
}

[[noreturn]] void Exec(const std::string& bin, const std::vector<std::string>& args) {
  std::vector<char*> argv;
  argv.push_back(const_cast<char*>(bin.c_str()));
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  execv(bin.c_str(), argv.data());
  _exit(127);
}

}  // namespace

int Wait(pid_t pid) {
  int st;
  for (;;) {
    pid_t r = waitpid(pid, &st, 0);
    if (r == pid) break;
    if (r < 0 && errno != EINTR) return -1;
  }
  if (WIFEXITED(st)) return WEXITSTATUS(st);
  if (WIFSIGNALED(st)) return 128 + WTERMSIG(st);
  return -1;
}

RunResult Godwit(const std::vector<std::string>& args) {
  char out_path[] = "/tmp/godwit-out-XXXXXX";
  char err_path[] = "/tmp/godwit-err-XXXXXX";
  int out = mkstemp(out_path), err = mkstemp(err_path);
  pid_t pid = fork();
  if (pid == 0) {
    int null = open("/dev/null", O_RDONLY);
    dup2(null, 0);
    dup2(out, 1);
    dup2(err, 2);
    Exec(GODWIT_BIN, args);
  }
  RunResult r;
  r.status = Wait(pid);
  lseek(out, 0, SEEK_SET);
  lseek(err, 0, SEEK_SET);
  r.out = Slurp(out);
  r.err = Slurp(err);
  close(out);
  close(err);
  unlink(out_path);
  unlink(err_path);
  return r;
}

pid_t GodwitAsync(const std::vector<std::string>& args) {
  pid_t pid = fork();
  if (pid == 0) {
    int null = open("/dev/null", O_RDWR);
    dup2(null, 0);
    dup2(null, 1);
    if (getenv("CR_STRACE")) {
      std::vector<std::string> a = {"-f", "-o", getenv("CR_STRACE"), GODWIT_BIN};
      a.insert(a.end(), args.begin(), args.end());
      Exec("/usr/bin/strace", a);
    }
    Exec(GODWIT_BIN, args);
  }
  return pid;
}

pid_t StartHelper(const std::string& name, std::vector<std::string> args, std::string* line) {
  return StartProgram(std::string(GODWIT_HELPERS) + "/" + name, std::move(args), line);
}

pid_t StartProgram(const std::string& path, std::vector<std::string> args, std::string* line) {
  int p[2];
  if (pipe(p) < 0) return -1;
  // The helper's end at a fixed number, so images do not depend on the test's fd table.
  pid_t pid = fork();
  if (pid == 0) {
    int null = open("/dev/null", O_RDWR);
    dup2(null, 0);
    dup2(null, 1);
    // Debugging: CR_HELPER_STDERR=FILE appends the helpers' stderr to FILE.
    const char* errf = getenv("CR_HELPER_STDERR");
    int errfd = errf ? open(errf, O_WRONLY | O_CREAT | O_APPEND, 0644) : -1;
    dup2(errfd >= 0 ? errfd : null, 2);
    close(p[0]);
    if (p[1] != 3) {
      dup2(p[1], 3);
      close(p[1]);
    }
    for (int fd = 4; fd < 1024; ++fd) close(fd);
    for (auto& a : args)
      if (a == "{READY}") a = "3";
    Exec(path, args);
  }
  close(p[1]);
  std::string got;
  char c;
  // Until EOF, not just the line: the helper closes its end after writing, and the dump must not
  // catch it in between (the pipe would then be part of the dumped state).
  bool eol = false;
  while (read(p[0], &c, 1) == 1) {
    if (c == '\n') eol = true;
    if (!eol) got += c;
  }
  close(p[0]);
  if (line) *line = got;
  if (got.empty()) {
    Wait(pid);
    return -1;
  }
  return pid;
}

TempDir::TempDir() {
  char t[] = "/tmp/godwit-cr-XXXXXX";
  path_ = mkdtemp(t);
}

TempDir::~TempDir() {
  std::string cmd = "rm -rf '" + path_ + "'";
  (void)!system(cmd.c_str());
}

void Touch(const std::string& path) {
  int fd = open(path.c_str(), O_CREAT | O_WRONLY, 0644);
  close(fd);
}

std::vector<pid_t> Descendants(pid_t pid) {
  std::vector<pid_t> out, todo = {pid};
  while (!todo.empty()) {
    pid_t p = todo.back();
    todo.pop_back();
    std::ifstream kids("/proc/" + std::to_string(p) + "/task/" + std::to_string(p) + "/children");
    for (pid_t k; kids >> k;) {
      out.push_back(k);
      todo.push_back(k);
    }
  }
  return out;
}

void KillAndReap(pid_t pid) {
  if (pid <= 0) return;
  // The whole tree: a failed test must not leave helpers spinning.
  std::vector<pid_t> all = Descendants(pid);
  all.insert(all.begin(), pid);
  for (pid_t p : all) kill(p, SIGKILL);
  // The killed descendants are reparented to us (subreaper); reap everything.
  while (waitpid(-1, nullptr, 0) > 0 || errno == EINTR) {
  }
}

bool WaitFor(int ms, bool (*cond)(pid_t), pid_t pid) {
  for (int i = 0; i < ms; ++i) {
    if (cond(pid)) return true;
    struct timespec ts = {0, 1000000};
    nanosleep(&ts, nullptr);
  }
  return cond(pid);
}

long BlockedSyscall(pid_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/syscall");
  std::string s;
  if (!(f >> s)) return -1;
  if (s == "running") return -1;
  return strtol(s.c_str(), nullptr, 10);
}

}  // namespace godwit::crtest
