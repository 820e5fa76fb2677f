// Single processes through `godwit dump` -> kill -> `godwit restore --detach`, each in a state that
// needs care: blocked in an interruptible call when dumped or restored, under a seccomp filter that
// kills on injected calls, mapping memfds and deleted files, named with trailing spaces, traced by
// someone else, or in a session its parent left with setsid. Helpers: tests/helpers/cr_blocked.c,
// cr_memfd_maps.c, cr_session.c.
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/ptrace.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <functional>
#include <iterator>

#include "zdtm_harness.h"

namespace godwit::crtest {
namespace {

class CrProcess : public ::testing::Test {
 protected:
  void TearDown() override {
    for (pid_t p : pids_) KillAndReap(p);
  }
  pid_t Start(const std::string& helper, std::vector<std::string> args) {
    pid_t p = StartHelper(helper, std::move(args));
    if (p > 0) pids_.push_back(p);
    return p;
  }
  // Dumps pid (killing it) into dir, reaps it, restores with --detach (the restored process is
  // reparented to us). Returns false (with a test failure) on any error.
  bool DumpKillRestoreDetached(pid_t pid, const std::string& dir,
                               const std::vector<std::string>& dump_extra = {}) {
    std::vector<std::string> args = {"dump", "--pid", std::to_string(pid), "--images-dir", dir};
    args.insert(args.end(), dump_extra.begin(), dump_extra.end());
    auto d = Godwit(args);
    EXPECT_EQ(d.status, 0) << d.err;
    if (d.status != 0) return false;
    EXPECT_EQ(Wait(pid), 128 + SIGKILL);
    auto r = Godwit({"restore", "--images-dir", dir, "--detach"});
    EXPECT_EQ(r.status, 0) << r.err;
    return r.status == 0;
  }
  TempDir dir_;
  std::vector<pid_t> pids_;
};

// A thread restored inside an interruptible call is detached with the call already
// entered, so a signal sent right after the restore interrupts it (was lost ~1 in 6).
void WakeUpRounds(CrProcess* t, const char* mode, long nr, int rounds,
                  std::function<bool(pid_t, const std::string&)> cycle, TempDir& dir,
                  std::vector<pid_t>& pids) {
  for (int i = 0; i < rounds; ++i) {
    pid_t pid = StartHelper("cr_blocked", {"{READY}", mode});
    ASSERT_GT(pid, 0);
    pids.push_back(pid);
    static long want;
    want = nr;
    ASSERT_TRUE(WaitFor(5000, [](pid_t p) { return BlockedSyscall(p) == want; }, pid))
        << mode << " round " << i;
    ASSERT_TRUE(cycle(pid, dir / ("img" + std::to_string(i)))) << mode << " round " << i;
    ASSERT_EQ(kill(pid, SIGUSR2), 0);
    EXPECT_EQ(WaitBounded(pid, 10000), 0) << mode << " round " << i;
    pids.pop_back();
  }
}

TEST_F(CrProcess, SignalRightAfterRestoreWakesSigsuspend) {
  WakeUpRounds(
      this, "sigsuspend", SYS_rt_sigsuspend, 12,
      [this](pid_t p, const std::string& d) { return DumpKillRestoreDetached(p, d); }, dir_,
      pids_);
}

TEST_F(CrProcess, SignalRightAfterRestoreInterruptsPoll) {
  WakeUpRounds(
      this, "poll", SYS_poll, 8,
      [this](pid_t p, const std::string& d) { return DumpKillRestoreDetached(p, d); }, dir_,
      pids_);
}

TEST_F(CrProcess, SignalRightAfterRestoreInterruptsRead) {
  WakeUpRounds(
      this, "read", SYS_read, 8,
      [this](pid_t p, const std::string& d) { return DumpKillRestoreDetached(p, d); }, dir_,
      pids_);
}

// The same on the dump side: --leave-running puts the call back the same way.
TEST_F(CrProcess, SignalRightAfterLeaveRunningDumpWakesSigsuspend) {
  WakeUpRounds(
      this, "sigsuspend", SYS_rt_sigsuspend, 8,
      [](pid_t p, const std::string& d) {
        auto r = Godwit({"dump", "--pid", std::to_string(p), "--images-dir", d, "--leave-running"});
        EXPECT_EQ(r.status, 0) << r.err;
        return r.status == 0;
      },
      dir_, pids_);
}

// The same, deterministically. The rounds above lose the wake-up only when the restored thread is
// not scheduled for the whole time between its detach and the test's kill() (after `godwit
// restore` has exited: milliseconds), which happened about 1 in 6 runs on a loaded machine and
// almost never on an idle one. Here the window is held open: the helper is dumped while stopped
// (SIGSTOP) inside its call, so it is restored stopped. A thread detached at the syscall
// instruction stops there before re-entering the call; the SIGUSR2 sent while it is stopped then
// runs the handler before the call, which blocks for good once SIGCONT resumes it (the bounded
// wait fails). Detached inside the re-entered call (remote::EnterReissuedSyscalls), it stops
// there, and SIGUSR2 interrupts that call with EINTR. poll and read would fail for sure;
// sigsuspend does not (SIGUSR2 stays blocked until the call is re-entered: its mask is the one
// the call saved), it is here for the stop/continue path through a re-issued call.
void WakeUpWhileStopped(const char* mode, long nr, bool leave_running, TempDir& dir,
                        std::vector<pid_t>& pids) {
  pid_t pid = StartHelper("cr_blocked", {"{READY}", mode});
  ASSERT_GT(pid, 0);
  pids.push_back(pid);
  static long want;
  want = nr;
  ASSERT_TRUE(WaitFor(5000, [](pid_t p) { return BlockedSyscall(p) == want; }, pid)) << mode;
  ASSERT_EQ(kill(pid, SIGSTOP), 0);
  int st = 0;
  ASSERT_EQ(waitpid(pid, &st, WUNTRACED), pid);
  ASSERT_TRUE(WIFSTOPPED(st));
  std::vector<std::string> args = {"dump", "--pid", std::to_string(pid), "--images-dir",
                                   dir / "img"};
  if (leave_running) args.push_back("--leave-running");
  auto d = Godwit(args);
  ASSERT_EQ(d.status, 0) << d.err;
  if (!leave_running) {
    ASSERT_EQ(Wait(pid), 128 + SIGKILL);
    auto r = Godwit({"restore", "--images-dir", dir / "img", "--detach"});
    ASSERT_EQ(r.status, 0) << r.err;
  }
  std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
  std::string stat((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  size_t rp = stat.rfind(')');
  ASSERT_NE(rp, std::string::npos);
  EXPECT_EQ(stat[rp + 2], 'T') << "not stopped after the " << (leave_running ? "dump" : "restore");
  ASSERT_EQ(kill(pid, SIGUSR2), 0);
  ASSERT_EQ(kill(pid, SIGCONT), 0);
  EXPECT_EQ(WaitBounded(pid, 10000), 0) << mode << ": the wake-up was lost (-2) or the call "
                                        << "did not return EINTR";
  pids.pop_back();
}

TEST_F(CrProcess, SignalWhileRestoredStoppedWakesSigsuspend) {
  WakeUpWhileStopped("sigsuspend", SYS_rt_sigsuspend, false, dir_, pids_);
}

TEST_F(CrProcess, SignalWhileRestoredStoppedInterruptsPoll) {
  WakeUpWhileStopped("poll", SYS_poll, false, dir_, pids_);
}

TEST_F(CrProcess, SignalWhileRestoredStoppedInterruptsRead) {
  WakeUpWhileStopped("read", SYS_read, false, dir_, pids_);
}

TEST_F(CrProcess, SignalWhileStoppedAfterLeaveRunningDumpInterruptsRead) {
  WakeUpWhileStopped("read", SYS_read, true, dir_, pids_);
}

// A seccomp filter that kills the process on the calls a dump/restore injects (prctl,
// brk, rt_sigaction, sigaltstack, getcwd...): seized with PTRACE_O_SUSPEND_SECCOMP, the process
// survives both, and the filter is still there afterwards (getcwd then kills it with SIGSYS).
TEST_F(CrProcess, SeccompKillFilterSurvivesDumpAndRestore) {
  pid_t pid = Start("cr_blocked", {"{READY}", "seccomp"});
  ASSERT_GT(pid, 0);
  ASSERT_TRUE(WaitFor(5000, [](pid_t p) { return BlockedSyscall(p) == SYS_rt_sigsuspend; }, pid));
  ASSERT_TRUE(DumpKillRestoreDetached(pid, dir_ / "img"));
  ASSERT_EQ(kill(pid, SIGUSR2), 0);
  EXPECT_EQ(WaitBounded(pid, 10000), 128 + SIGSYS);
  pids_.clear();
}

TEST_F(CrProcess, SeccompKillFilterSurvivesLeaveRunningDump) {
  pid_t pid = Start("cr_blocked", {"{READY}", "seccomp"});
  ASSERT_GT(pid, 0);
  ASSERT_TRUE(WaitFor(5000, [](pid_t p) { return BlockedSyscall(p) == SYS_rt_sigsuspend; }, pid));
  auto d = Godwit({"dump", "--pid", std::to_string(pid), "--images-dir", dir_ / "img",
                   "--leave-running"});
  ASSERT_EQ(d.status, 0) << d.err;
  ASSERT_EQ(kill(pid, SIGUSR2), 0);
  EXPECT_EQ(WaitBounded(pid, 10000), 128 + SIGSYS);
  pids_.clear();
}

// A memfd open and mapped stays one object; private memfd mappings and mappings of
// deleted files (shared and private) come back with their contents.
TEST_F(CrProcess, MemfdsAndDeletedFileMappings) {
  std::string files = dir_ / "files";
  ASSERT_EQ(mkdir(files.c_str(), 0700), 0);
  pid_t pid = Start("cr_memfd_maps", {"{READY}", files});
  ASSERT_GT(pid, 0);
  ASSERT_TRUE(WaitFor(5000, [](pid_t p) { return BlockedSyscall(p) == SYS_rt_sigsuspend; }, pid));
  ASSERT_TRUE(DumpKillRestoreDetached(pid, dir_ / "img"));
  ASSERT_EQ(kill(pid, SIGUSR2), 0);
  EXPECT_EQ(WaitBounded(pid, 10000), 0);
  pids_.clear();
}

// A thread name's trailing spaces survive.
TEST_F(CrProcess, CommKeepsTrailingSpaces) {
  pid_t pid = Start("cr_blocked", {"{READY}", "comm"});
  ASSERT_GT(pid, 0);
  ASSERT_TRUE(WaitFor(5000, [](pid_t p) { return BlockedSyscall(p) == SYS_rt_sigsuspend; }, pid));
  ASSERT_TRUE(DumpKillRestoreDetached(pid, dir_ / "img"));
  std::ifstream f("/proc/" + std::to_string(pid) + "/comm");
  std::string comm((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  EXPECT_EQ(comm, "wake  \n");
  ASSERT_EQ(kill(pid, SIGUSR2), 0);
  EXPECT_EQ(WaitBounded(pid, 10000), 0);
  pids_.clear();
}

// A process traced by someone else (here: this test) is refused cleanly, naming the pid
// and the tracer, and left untouched.
TEST_F(CrProcess, TracedByAnotherTracerFailsCleanly) {
  pid_t pid = Start("cr_blocked", {"{READY}", "sigsuspend"});
  ASSERT_GT(pid, 0);
  ASSERT_TRUE(WaitFor(5000, [](pid_t p) { return BlockedSyscall(p) == SYS_rt_sigsuspend; }, pid));
  ASSERT_EQ(ptrace(PTRACE_SEIZE, pid, nullptr, nullptr), 0);
  auto d = Godwit({"dump", "--pid", std::to_string(pid), "--images-dir", dir_ / "img"});
  EXPECT_EQ(d.status, 6) << d.err;
  EXPECT_NE(d.err.find("process " + std::to_string(pid)), std::string::npos) << d.err;
  EXPECT_NE(d.err.find("traced by pid " + std::to_string(getpid())), std::string::npos) << d.err;
  struct stat sb;
  EXPECT_NE(stat((dir_ / "img/inventory.img").c_str(), &sb), 0);  // no checkpoint
  // Detaching needs a stopped tracee.
  ASSERT_EQ(ptrace(PTRACE_INTERRUPT, pid, nullptr, nullptr), 0);
  int st = 0;
  ASSERT_EQ(waitpid(pid, &st, __WALL), pid);
  ASSERT_TRUE(WIFSTOPPED(st));
  ASSERT_EQ(ptrace(PTRACE_DETACH, pid, nullptr, nullptr), 0);
  ASSERT_EQ(kill(pid, SIGUSR2), 0);
  EXPECT_EQ(WaitBounded(pid, 10000), 0);
  pids_.clear();
}

// A session inherited before the parent's setsid (neither the process's own nor its
// parent's) comes back: the parent forks that child before calling setsid.
TEST_F(CrProcess, SessionLeftBehindByParentsSetsid) {
  std::string line;
  pid_t r = StartHelper("cr_session", {"{READY}"}, &line);
  ASSERT_GT(r, 0);
  pids_.push_back(r);
  pid_t a = 0, b = 0;
  ASSERT_EQ(sscanf(line.c_str(), "%d %d", &a, &b), 2) << line;
  pids_.push_back(a);
  pids_.push_back(b);
  ASSERT_EQ(getsid(b), r);
  ASSERT_EQ(getsid(a), a);
  auto d = Godwit({"dump", "--pid", std::to_string(r), "--images-dir", dir_ / "img"});
  ASSERT_EQ(d.status, 0) << d.err;
  EXPECT_EQ(Wait(r), 128 + SIGKILL);
  while (waitpid(-1, nullptr, 0) > 0 || errno == EINTR) {
  }
  auto res = Godwit({"restore", "--images-dir", dir_ / "img", "--detach"});
  ASSERT_EQ(res.status, 0) << res.err;
  EXPECT_EQ(getsid(r), r);
  EXPECT_EQ(getsid(a), a);
  EXPECT_EQ(getsid(b), r);
  EXPECT_EQ(getpgid(b), r);
  // B is A's child, A is R's.
  auto ppid = [](pid_t p) {
    std::ifstream f("/proc/" + std::to_string(p) + "/stat");
    std::string s((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    int pp = -1;
    size_t rp = s.rfind(')');
    if (rp != std::string::npos) sscanf(s.c_str() + rp + 2, "%*c %d", &pp);
    return pp;
  };
  EXPECT_EQ(ppid(b), a);
  EXPECT_EQ(ppid(a), r);
}

}  // namespace
}  // namespace godwit::crtest
