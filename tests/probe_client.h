// `godwit probe` as a test's client: started as a child (in a given network namespace), waited
// for until connected (its --ready-file), stopped by its --until-file (or a signal), its JSON
// report parsed. The child is killed and reaped if the test ends before Stop.
//
//   ProbeClient probe;
//   ASSERT_OK(probe.Start({"--tcp", ip + ":7000", "--interval", "2ms"}, hosts.Fd("c")));
//   ... migrate ...
//   ASSERT_OK(probe.Stop());
//   EXPECT_EQ(probe.code(), 0) << probe.err();
//   EXPECT_EQ(probe.report()["tcp"]["lost"], 0);
//
// Needs GODWIT_BIN.
#pragma once

#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/fs.h"
#include "common/result.h"
#include "common/unique_fd.h"

namespace godwit::testing {

class ProbeClient {
 public:
  ProbeClient() {
    static int n = 0;
    base_ = StrFormat("/tmp/godwit-probe-%d-%d", getpid(), n++);
  }
  ~ProbeClient() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
    for (const char* s : {".ready", ".until", ".out", ".err", ".ready.tmp"})
      ::unlink((base_ + s).c_str());
  }
  ProbeClient(const ProbeClient&) = delete;
  ProbeClient& operator=(const ProbeClient&) = delete;

  // Starts `godwit probe ARGS --json --ready-file F --until-file G` in netns_fd (-1: ours) and
  // waits (bounded) until it is connected. A probe that exits first fails Start with its stderr.
  Result<void> Start(const std::vector<std::string>& args, int netns_fd = -1,
                     int ready_timeout_s = 20) {
    std::vector<std::string> full = {GODWIT_BIN, "probe",        "--json", "--ready-file",
                                     ready(),    "--until-file", until()};
    full.insert(full.end(), args.begin(), args.end());
    TRY(Spawn(full, netns_fd));
    auto end = std::chrono::steady_clock::now() + std::chrono::seconds(ready_timeout_s);
    while (!fs::Exists(ready())) {
      int st = 0;
      if (::waitpid(pid_, &st, WNOHANG) == pid_) {
        pid_ = -1;
        Collect(st);
        return MakeError(ErrorKind::kGeneric, 0, "probe exited (%d) before connecting: %s", code_,
                         err_.c_str());
      }
      if (std::chrono::steady_clock::now() > end)
        return MakeError(ErrorKind::kGeneric, 0, "probe not connected after %d s", ready_timeout_s);
      ::usleep(5000);
    }
    return Ok();
  }

  // Ends the run: by the until-file, or with sig (SIGTERM, SIGINT) if given; waits for the
  // report (the probe drains its in-flight echoes first: bounded by its --drain).
  Result<void> Stop(int sig = 0) {
    if (pid_ <= 0) return MakeError(ErrorKind::kGeneric, 0, "probe not running");
    if (sig)
      ::kill(pid_, sig);
    else
      TRY(fs::WriteFile(until(), ""));
    int st = 0;
    while (::waitpid(pid_, &st, 0) < 0 && errno == EINTR) {
    }
    pid_ = -1;
    Collect(st);
    if (report_.is_discarded())
      return MakeError(ErrorKind::kGeneric, 0, "probe (exit %d) printed no JSON: %s%s", code_,
                       out_.c_str(), err_.c_str());
    return Ok();
  }

  // Runs a probe to its end (--duration given in args, or a failure) and parses its report.
  Result<void> RunToEnd(const std::vector<std::string>& args, int netns_fd = -1) {
    std::vector<std::string> full = {GODWIT_BIN, "probe", "--json"};
    full.insert(full.end(), args.begin(), args.end());
    TRY(Spawn(full, netns_fd));
    int st = 0;
    while (::waitpid(pid_, &st, 0) < 0 && errno == EINTR) {
    }
    pid_ = -1;
    Collect(st);
    return Ok();
  }

  pid_t pid() const { return pid_; }
  int code() const { return code_; }
  const std::string& out() const { return out_; }
  const std::string& err() const { return err_; }
  // The JSON report (is_discarded() if none was printed).
  const nlohmann::json& report() const { return report_; }

 private:
  std::string ready() const { return base_ + ".ready"; }
  std::string until() const { return base_ + ".until"; }

  Result<void> Spawn(std::vector<std::string> full, int netns_fd) {
    ::unlink(ready().c_str());
    ::unlink(until().c_str());
    UniqueFd out(::open((base_ + ".out").c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
    UniqueFd err(::open((base_ + ".err").c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
    if (!out || !err) return Errno("open %s.out/.err", base_.c_str());
    std::vector<char*> argv;
    for (auto& a : full) argv.push_back(a.data());
    argv.push_back(nullptr);
    pid_t pid = ::fork();
    if (pid < 0) return Errno("fork");
    if (pid == 0) {
      int null = ::open("/dev/null", O_RDWR);
      ::dup2(null, 0);
      ::dup2(out.get(), 1);
      ::dup2(err.get(), 2);
      if (netns_fd >= 0 && ::setns(netns_fd, CLONE_NEWNET) < 0) ::_exit(126);
      ::close_range(3, ~0U, 0);
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
    pid_ = pid;
    return Ok();
  }

  void Collect(int st) {
    code_ = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    auto o = fs::ReadFile(base_ + ".out");
    auto e = fs::ReadFile(base_ + ".err");
    out_ = o.ok() ? *o : "";
    err_ = e.ok() ? *e : "";
    report_ = nlohmann::json::parse(out_, nullptr, false);
  }

  std::string base_;
  pid_t pid_ = -1;
  int code_ = -1;
  std::string out_, err_;
  nlohmann::json report_ = nlohmann::json::value_t::discarded;
};

}  // namespace godwit::testing
