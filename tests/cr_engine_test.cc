// Checkpoint/restore of real processes, zdtm style: a helper sets up state and reports ready, the
// test dumps it (killing it), reaps the original, restores it, lets it finish (GO file), and the
// helper's exit code says whether its state survived.
#include <signal.h>
#include <sys/ptrace.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "common/remote.h"
#include "cr_util.h"

namespace godwit::crtest {
namespace {

class CrTest : public ::testing::Test {
 protected:
  void TearDown() override {
    for (pid_t p : pids_) KillAndReap(p);
  }
  // Dumps pid (killing it), reaps it, creates GO, restores and waits; returns restore's status.
  int DumpKillRestore(pid_t pid, const std::vector<std::string>& dump_extra = {}) {
    std::vector<std::string> args = {"dump", "--pid", std::to_string(pid), "--images-dir", dir_.path() + "/img"};
    args.insert(args.end(), dump_extra.begin(), dump_extra.end());
    auto d = Godwit(args);
    EXPECT_EQ(d.status, 0) << d.err;
    if (d.status != 0) return -1;
    EXPECT_EQ(Wait(pid), 128 + SIGKILL);
    // The rest of the killed tree was reparented to us (subreaper): reap it so its pids are free.
    while (waitpid(-1, nullptr, 0) > 0 || errno == EINTR) {
    }
    Touch(dir_ / "go");
    auto r = Godwit({"restore", "--images-dir", dir_.path() + "/img"});
    EXPECT_EQ(r.err, "");
    return r.status;
  }
  pid_t Start(const std::string& helper, std::vector<std::string> args) {
    pid_t p = StartHelper(helper, std::move(args));
    if (p > 0) pids_.push_back(p);
    return p;
  }
  TempDir dir_;
  std::vector<pid_t> pids_;
};

TEST_F(CrTest, SingleProcessHeapRegistersRoundTrip) {
  pid_t pid = Start("cr_loop", {"{READY}", dir_ / "go", "16"});
  ASSERT_GT(pid, 0);
  EXPECT_EQ(DumpKillRestore(pid), 0);
}

TEST_F(CrTest, ThreadsKeepComputing) {
  pid_t pid = Start("cr_loop", {"{READY}", dir_ / "go", "8", "4"});
  ASSERT_GT(pid, 0);
  EXPECT_EQ(DumpKillRestore(pid), 0);
}

TEST_F(CrTest, TreeSessionsGroupsZombie) {
  pid_t pid = Start("cr_tree", {"{READY}", dir_ / "go"});
  ASSERT_GT(pid, 0);
  EXPECT_EQ(DumpKillRestore(pid), 0);
}

TEST_F(CrTest, MemoryKindsVdsoBrkMmFields) {
  pid_t pid = Start("cr_state", {"{READY}", dir_ / "go", "mem", dir_ / "data"});
  ASSERT_GT(pid, 0);
  EXPECT_EQ(DumpKillRestore(pid), 0);
}

TEST_F(CrTest, BlockedAndPendingSignals) {
  pid_t pid = Start("cr_state", {"{READY}", dir_ / "go", "signals"});
  ASSERT_GT(pid, 0);
  EXPECT_EQ(DumpKillRestore(pid), 0);
}

bool InRead(pid_t pid) { return BlockedSyscall(pid) == SYS_read; }
bool InSleep(pid_t pid) {
  long s = BlockedSyscall(pid);
  return s == SYS_nanosleep || s == SYS_clock_nanosleep;
}

TEST_F(CrTest, RestartsReadAfterRestore) {
  pid_t pid = Start("cr_state", {"{READY}", dir_ / "go", "read"});
  ASSERT_GT(pid, 0);
  ASSERT_TRUE(WaitFor(5000, InRead, pid));
  EXPECT_EQ(DumpKillRestore(pid), 0);
}

TEST_F(CrTest, NanosleepCompletesAfterRestore) {
  pid_t pid = Start("cr_state", {"{READY}", dir_ / "go", "nanosleep"});
  ASSERT_GT(pid, 0);
  ASSERT_TRUE(WaitFor(5000, InSleep, pid));
  EXPECT_EQ(DumpKillRestore(pid), 0);
}

TEST_F(CrTest, RemoteSyscallInjection) {
  pid_t pid = Start("cr_loop", {"{READY}", dir_ / "go", "1"});
  ASSERT_GT(pid, 0);
  ASSERT_TRUE(remote::SeizeAndInterrupt(pid, PTRACE_O_TRACESYSGOOD).ok());
  {
    auto r = remote::Remote::Create(pid, pid, {});
    ASSERT_TRUE(r.ok()) << r.error().to_string();
    auto got = (*r)->Syscall(SYS_getpid);
    ASSERT_TRUE(got.ok());
    EXPECT_EQ(*got, pid);
    // Arguments through scratch memory: uname() into scratch, read back.
    ASSERT_TRUE((*r)->Syscall(SYS_uname, (*r)->scratch()).ok());
    char sys[65] = {};
    ASSERT_TRUE((*r)->Read((*r)->scratch(), sys, 64).ok());
    EXPECT_STREQ(sys, "Linux");
    // A failing call is an error with its errno.
    auto bad = (*r)->Syscall(SYS_close, 12345);
    ASSERT_FALSE(bad.ok());
    EXPECT_EQ(bad.error().sys_errno(), EBADF);
    ASSERT_TRUE((*r)->Release().ok());
  }
  ASSERT_EQ(ptrace(PTRACE_DETACH, pid, nullptr, nullptr), 0);
  // The helper carries on untouched and finishes its checks.
  Touch(dir_ / "go");
  EXPECT_EQ(Wait(pid), 0);
  pids_.clear();
}

}  // namespace
}  // namespace godwit::crtest
