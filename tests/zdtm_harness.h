// The zdtm cycle shared by the ported CRIU zdtm suites (zdtm_static_test, zdtm_files_test,
// zdtm_kinds_test): a helper program sets one kind of state up and reports ready; the test dumps
// it with `godwit dump` (which kills it), reaps the killed tree, restores it with
// `godwit restore --detach` (the restored root becomes our child: the test main is a subreaper),
// sends SIGUSR2, and the helper checks its own state and exits 0 (else the number of the failed
// check; its stderr, kept in the test's temp dir, is printed on failure).
#pragma once

#include <poll.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "cr_util.h"

namespace godwit::crtest {

inline std::string ReadAll(const std::string& path) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// waitpid with a bound (a lost wake-up or a hung check must fail the test, not hang it): exit
// code, 128+signal, or -2 on timeout (the process is then killed and reaped).
inline int WaitBounded(pid_t pid, int ms) {
  int pfd = static_cast<int>(syscall(SYS_pidfd_open, pid, 0));
  if (pfd >= 0) {
    pollfd p{pfd, POLLIN, 0};
    int n;
    while ((n = poll(&p, 1, ms)) < 0 && errno == EINTR) {
    }
    close(pfd);
    if (n == 0) {
      KillAndReap(pid);
      return -2;
    }
  }
  return Wait(pid);
}

class ZdtmHarness : public ::testing::Test {
 protected:
  explicit ZdtmHarness(std::string helper) : helper_(std::move(helper)) {}
  void SetUp() override { setenv("CR_HELPER_STDERR", (dir_ / "helper.err").c_str(), 1); }
  void TearDown() override {
    for (pid_t p : pids_) KillAndReap(p);
    // Orphans of a failed check (reparented to us, the subreaper) are ours too.
    std::ifstream kf("/proc/self/task/" + std::to_string(getpid()) + "/children");
    for (pid_t k; kf >> k;) KillAndReap(k);
    CleanUp();
    if (HasFailure()) {
      std::string e = ReadAll(dir_ / "helper.err");
      if (!e.empty()) ADD_FAILURE() << "helper stderr:\n" << e;
    }
  }
  // What a suite's helpers leave outside the temp dir (run after the processes are gone).
  virtual void CleanUp() {}
  // The cgroups a cgroups mode made, as it recorded them in DIR/cgroups ("mount PATH" and
  // "dir PATH", deepest first): the directories removed, then the mounts detached.
  void RemoveRecordedCgroups() {
    std::istringstream in(ReadAll(dir_ / "cgroups"));
    std::vector<std::string> mounts;
    for (std::string what, path; in >> what >> path;) {
      if (what == "mount") mounts.push_back(path);
      if (what == "dir") rmdir(path.c_str());
    }
    for (const auto& m : mounts) umount2(m.c_str(), MNT_DETACH);
  }

  pid_t Start(const std::string& mode) {
    pid_t p = StartHelper(helper_, {mode, "{READY}", dir_.path()});
    if (p > 0) pids_.push_back(p);
    return p;
  }
  // Dump (kills), reap, restore detached; returns "" or what went wrong.
  std::string DumpKillRestore(pid_t pid, const std::vector<std::string>& dump_extra = {}) {
    std::vector<std::string> args = {"dump", "--pid", std::to_string(pid), "--images-dir",
                                     dir_ / "img"};
    args.insert(args.end(), dump_extra.begin(), dump_extra.end());
    std::vector<pid_t> kids = Descendants(pid);
    auto d = Godwit(args);
    if (d.status != 0) return "dump failed (" + std::to_string(d.status) + "): " + d.err;
    int st = Wait(pid);
    if (st != 128 + SIGKILL) return "the dumped helper ended with " + std::to_string(st);
    for (pid_t k : kids) waitpid(k, nullptr, 0);
    auto r = Godwit({"restore", "--images-dir", dir_ / "img", "--detach"});
    if (r.status != 0) return "restore failed (" + std::to_string(r.status) + "): " + r.err;
    return "";
  }
  // The whole zdtm cycle for one mode: the restored helper must exit 0.
  void RoundTrip(const std::string& mode, const std::vector<std::string>& dump_extra = {}) {
    pid_t pid = Start(mode);
    ASSERT_GT(pid, 0) << "helper setup failed";
    std::string err = DumpKillRestore(pid, dump_extra);
    ASSERT_EQ(err, "");
    ASSERT_EQ(kill(pid, SIGUSR2), 0);
    EXPECT_EQ(WaitBounded(pid, 30000), 0) << "the restored helper's check failed (-2: hung)";
    pids_.clear();
  }
  // A state godwit refuses: the dump fails naming the pid and each of what; the tree runs on
  // unharmed.
  void Refused(const std::string& mode, const std::vector<std::string>& what) {
    pid_t pid = Start(mode);
    ASSERT_GT(pid, 0) << "helper setup failed";
    auto d = Godwit({"dump", "--pid", std::to_string(pid), "--images-dir", dir_ / "img"});
    EXPECT_NE(d.status, 0) << "the dump of an unsupported state succeeded";
    EXPECT_NE(d.err.find("pid " + std::to_string(pid)), std::string::npos) << d.err;
    for (const auto& w : what) EXPECT_NE(d.err.find(w), std::string::npos) << d.err;
    ASSERT_EQ(kill(pid, SIGUSR2), 0);
    EXPECT_EQ(WaitBounded(pid, 30000), 0) << "the refused dump damaged the tree";
    pids_.clear();
  }

  std::string helper_;
  TempDir dir_;
  std::vector<pid_t> pids_;
};

}  // namespace godwit::crtest
