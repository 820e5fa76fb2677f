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
    if (getenv("CR_DEBUG"))
      (void)!system(("" GODWIT_BIN " inspect --json " + dir_.path() + "/img > /tmp/cr_inspect.json").c_str());
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

TEST_F(CrTest, ProcessesWithThreadsKeepComputing) {
  pid_t pid = Start("cr_loop", {"{READY}", dir_ / "go", "4", "3", "3"});
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

TEST_F(CrTest, OneGiBRandomDataByteForByte) {
  pid_t pid = Start("cr_bigmem", {"{READY}", dir_ / "go", "1024"});
  ASSERT_GT(pid, 0);
  EXPECT_EQ(DumpKillRestore(pid), 0);
}

TEST_F(CrTest, CompressedImagesRoundTrip) {
  pid_t pid = Start("cr_loop", {"{READY}", dir_ / "go", "32", "2"});
  ASSERT_GT(pid, 0);
  EXPECT_EQ(DumpKillRestore(pid, {"--compress", "zstd:1"}), 0);
}

TEST_F(CrTest, Python3MidLoop) {
  // The interpreter counts and checks a dict and a list in a loop; it exits 0 after restore only
  // if its state is intact.
  std::string prog =
      "import os, sys\n"
      "d = {i: str(i) * 3 for i in range(20000)}\n"
      "l = [i * i for i in range(100000)]\n"
      "os.write(3, b'ready\\n'); os.close(3)\n"
      "n = 0\n"
      "while True:\n"
      "    n += 1\n"
      "    if d[n % 20000] != str(n % 20000) * 3 or l[n % 100000] != (n % 100000) ** 2: sys.exit(2)\n"
      "    if n % 1000 == 0 and os.path.exists(sys.argv[1]): sys.exit(0 if sum(l) == 333328333350000 else 3)\n";
  std::string path = dir_ / "loop.py";
  FILE* f = fopen(path.c_str(), "w");
  fputs(prog.c_str(), f);
  fclose(f);
  pid_t pid = StartProgram("/usr/bin/python3", {path, dir_ / "go"});
  ASSERT_GT(pid, 0);
  pids_.push_back(pid);
  EXPECT_EQ(DumpKillRestore(pid), 0);
}

TEST_F(CrTest, TwentyCycles) {
  pid_t pid = Start("cr_loop", {"{READY}", dir_ / "go", "4", "3"});
  ASSERT_GT(pid, 0);
  for (int i = 0; i < 20; ++i) {
    std::string img = dir_.path() + "/img" + std::to_string(i);
    auto d = Godwit({"dump", "--pid", std::to_string(pid), "--images-dir", img});
    ASSERT_EQ(d.status, 0) << "cycle " << i << ": " << d.err;
    // The original is our child (first cycle) or was reparented to us (restored with --detach).
    ASSERT_EQ(Wait(pid), 128 + SIGKILL) << "cycle " << i;
    auto r = Godwit({"restore", "--images-dir", img, "--detach"});
    ASSERT_EQ(r.status, 0) << "cycle " << i << ": " << r.err;
    if (getenv("CR_DEBUG")) (void)!system(("ls -l /proc/" + std::to_string(pid) + "/fd; cat /proc/" + std::to_string(pid) + "/status | grep -i sig").c_str());
  }
  Touch(dir_ / "go");
  EXPECT_EQ(Wait(pid), 0);
  pids_.clear();
}

TEST_F(CrTest, LeaveRunningThenRestoreCopy) {
  pid_t pid = Start("cr_loop", {"{READY}", dir_ / "go", "8", "2"});
  ASSERT_GT(pid, 0);
  auto d = Godwit({"dump", "--pid", std::to_string(pid), "--images-dir", dir_ / "img", "--leave-running", "--json"});
  ASSERT_EQ(d.status, 0) << d.err;
  auto j = nlohmann::json::parse(d.out);
  EXPECT_EQ(j["processes"], 1);
  EXPECT_EQ(j["threads"], 2);
  EXPECT_GT(j["pages_dumped"].get<uint64_t>(), 4096u);
  // Restoring while the original holds the pid: refused, nothing created.
  auto busy = Godwit({"restore", "--images-dir", dir_ / "img"});
  EXPECT_EQ(busy.status, 4) << busy.err;
  // The original carries on correctly...
  Touch(dir_ / "go");
  EXPECT_EQ(Wait(pid), 0);
  pids_.clear();
  // ...and so does the copy.
  auto r = Godwit({"restore", "--images-dir", dir_ / "img"});
  EXPECT_EQ(r.status, 0) << r.err;
}

TEST_F(CrTest, BadInput) {
  // Unknown pid.
  auto d = Godwit({"dump", "--pid", "999999999", "--images-dir", dir_ / "none"});
  EXPECT_EQ(d.status, 3) << d.err;
  // Incomplete image directory.
  auto r = Godwit({"restore", "--images-dir", dir_ / "none"});
  EXPECT_NE(r.status, 0);
  pid_t pid = Start("cr_state", {"{READY}", dir_ / "go", "mem", dir_ / "data"});
  ASSERT_GT(pid, 0);
  d = Godwit({"dump", "--pid", std::to_string(pid), "--images-dir", dir_ / "img"});
  ASSERT_EQ(d.status, 0) << d.err;
  Wait(pid);
  while (waitpid(-1, nullptr, 0) > 0 || errno == EINTR) {
  }
  pids_.clear();
  // A file the tree maps is gone: the restore fails after forking; nothing is left behind.
  ASSERT_EQ(rename((dir_ / "data").c_str(), (dir_ / "data2").c_str()), 0);
  r = Godwit({"restore", "--images-dir", dir_ / "img"});
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.err.find("data"), std::string::npos) << r.err;
  EXPECT_NE(kill(pid, 0), 0) << "half-restored process " << pid << " left";
  // Without the inventory the directory is not a checkpoint.
  ASSERT_EQ(rename((dir_ / "data2").c_str(), (dir_ / "data").c_str()), 0);
  ASSERT_EQ(unlink((dir_ / "img/inventory.img").c_str()), 0);
  r = Godwit({"restore", "--images-dir", dir_ / "img"});
  EXPECT_EQ(r.status, 5) << r.err;
  EXPECT_NE(kill(pid, 0), 0);
}

TEST_F(CrTest, PreDumpRoundsWhileWriting) {
  pid_t pid = Start("cr_state", {"{READY}", dir_ / "go", "dirty"});
  ASSERT_GT(pid, 0);
  auto d = Godwit({"dump", "--pid", std::to_string(pid), "--images-dir", dir_ / "img",
                   "--pre-dump-rounds", "3", "--json"});
  ASSERT_EQ(d.status, 0) << d.err;
  auto j = nlohmann::json::parse(d.out);
  auto rounds = j["pre_dump_round_bytes"];
  ASSERT_EQ(rounds.size(), 3u);
  // Round 0 copies everything (128 MiB of arrays), later rounds only what was written since, and
  // the frozen round less than the whole.
  EXPECT_GT(rounds[0].get<uint64_t>(), 128ull << 20);
  EXPECT_LT(rounds[2].get<uint64_t>(), rounds[0].get<uint64_t>());
  EXPECT_LT(j["bytes"].get<uint64_t>(), 128ull << 20);
  EXPECT_EQ(Wait(pid), 128 + SIGKILL);
  Touch(dir_ / "go");
  auto r = Godwit({"restore", "--images-dir", dir_ / "img"});
  EXPECT_EQ(r.status, 0) << r.err;
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
