// Running an external program from a test (podman, ctr, iptables): its exit code and output.
// stdout/stderr go to files, not pipes (conmon, shims and containers outlive the command and keep
// inherited pipes open), stdin is /dev/null.
#pragma once

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <time.h>

#include <cerrno>
#include <functional>
#include <ostream>
#include <string>
#include <vector>

#include "common/fs.h"
#include "common/result.h"

namespace godwit::cmdtest {

struct CmdResult {
  int code = -1;
  std::string out, err;
};

inline CmdResult RunCmd(const std::vector<std::string>& args) {
  static int seq = 0;
  std::string base = StrFormat("/tmp/godwit-cmd-out-%d-%d", getpid(), seq++);
  std::string out = base + ".out", err = base + ".err";
  pid_t pid = fork();
  if (pid == 0) {
    int o = open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    int e = open(err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    int n = open("/dev/null", O_RDONLY);
    dup2(n, 0);
    dup2(o, 1);
    dup2(e, 2);
    std::vector<char*> argv;
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    execvp(argv[0], argv.data());
    _exit(127);
  }
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  CmdResult r;
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  auto o = fs::ReadFile(out), e = fs::ReadFile(err);
  r.out = o.ok() ? *o : "";
  r.err = e.ok() ? *e : "";
  unlink(out.c_str());
  unlink(err.c_str());
  return r;
}

inline double NowSeconds() {
  timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec / 1e9;
}

// Polls pred until it holds or the deadline passes (no sleep stands in for synchronization:
// each probe is a real query of the state).
inline bool Eventually(const std::function<bool()>& pred, double seconds = 20) {
  double end = NowSeconds() + seconds;
  while (NowSeconds() < end) {
    if (pred()) return true;
    usleep(20 * 1000);
  }
  return pred();
}

// For test messages: `EXPECT_EQ(r.code, 0) << r;`
inline std::ostream& operator<<(std::ostream& os, const CmdResult& r) {
  return os << "exit " << r.code << "\nstdout: " << r.out << "\nstderr: " << r.err;
}

}  // namespace godwit::cmdtest
