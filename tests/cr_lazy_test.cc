// Lazy restore (restore --lazy, restore/lazy.h): the tree runs before its anonymous memory is in;
// the pager installs faulted pages and pushes the rest. helpers/lazy_mem.c checks the memory
// byte for byte with faults from several threads at once, a fork while pages are owed, the
// kernel reading an owed page (write(2) from it), and pages the program discards, moves or
// unmaps after the restore (they must not be filled with the image's old contents).
// GODWIT_LAZY_FAULTS_ONLY makes the pager install faulted pages only, so every page the helper
// checks goes through the fault path.
#include <dirent.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "common/proc.h"
#include "cr_util.h"
#include "dump/lazy_wait.h"

namespace godwit::crtest {
namespace {

// Waits up to ms for pid (a child of this test) to exit; its status (exit code or 128+signal), or
// -2 if it is still running then.
int WaitWithin(pid_t pid, int ms) {
  int pfd = static_cast<int>(syscall(SYS_pidfd_open, pid, 0));
  if (pfd < 0) return Wait(pid);  // already reaped or gone
  pollfd p{pfd, POLLIN, 0};
  int rc = poll(&p, 1, ms);
  close(pfd);
  if (rc <= 0) return -2;
  return Wait(pid);
}

class CrLazy : public ::testing::Test {
 protected:
  void TearDown() override {
    for (pid_t p : pids_) KillAndReap(p);
    unsetenv("GODWIT_LAZY_FAULTS_ONLY");
    unsetenv("CR_HELPER_STDERR");
  }
  // What lazy_mem said on stderr (which check failed, what a wrong page holds).
  std::string HelperSaid() {
    std::ifstream f(dir_ / "helper.err");
    return std::string(std::istreambuf_iterator<char>(f), {});
  }
  // Starts lazy_mem (or another helper taking READY_FD GO_FILE MIB) with mib MiB, dumps it
  // (killing it).
  void StartAndDump(int mib, const std::string& helper = "lazy_mem") {
    setenv("CR_HELPER_STDERR", (dir_ / "helper.err").c_str(), 1);
    pid_t p = StartHelper(helper, {"{READY}", dir_ / "go", std::to_string(mib)});
    ASSERT_GT(p, 0);
    pids_.push_back(p);
    auto d = Godwit({"dump", "--pid", std::to_string(p), "--images-dir", dir_ / "img"});
    ASSERT_EQ(d.status, 0) << d.err;
    KillAndReap(p);
  }
  // restore --lazy --detach [extra]: the root and the pager (both reparented to this test).
  nlohmann::json RestoreDetached(const std::vector<std::string>& extra = {}) {
    std::vector<std::string> args = {"restore", "--images-dir", dir_ / "img", "--lazy",
                                     "--detach", "--json"};
    args.insert(args.end(), extra.begin(), extra.end());
    auto r = Godwit(args);
    EXPECT_EQ(r.status, 0) << r.err;
    if (r.status != 0) return {};
    auto j = nlohmann::json::parse(r.out);
    root_ = j["root_pid"].get<int>();
    pager_ = j["lazy_pager_pid"].get<int>();
    pids_.push_back(root_);
    if (pager_ > 0) pids_.push_back(pager_);
    return j;
  }
  TempDir dir_;
  std::vector<pid_t> pids_;
  pid_t root_ = 0, pager_ = 0;
};

TEST_F(CrLazy, FaultedPagesOnlyEveryCheckHolds) {
  setenv("GODWIT_LAZY_FAULTS_ONLY", "1", 1);
  StartAndDump(64);
  auto j = RestoreDetached();
  ASSERT_FALSE(j.empty());
  // Nothing is pushed: the big region (64 MiB) is owed when the tree runs.
  EXPECT_GE(j["lazy_bytes"].get<uint64_t>(), 64ull << 20);
  ASSERT_GT(pager_, 0);
  Touch(dir_ / "go");
  EXPECT_EQ(WaitWithin(root_, 120000), 0) << "lazy_mem failed a check: " << HelperSaid();
  // The helper is gone: the pager notices and ends, with nothing left.
  EXPECT_EQ(WaitWithin(pager_, 30000), 0);
}

TEST_F(CrLazy, BackgroundFillEveryCheckHolds) {
  StartAndDump(128);
  auto j = RestoreDetached();
  ASSERT_FALSE(j.empty());
  Touch(dir_ / "go");
  EXPECT_EQ(WaitWithin(root_, 120000), 0) << "lazy_mem failed a check: " << HelperSaid();
  if (pager_ > 0) {
    EXPECT_EQ(WaitWithin(pager_, 30000), 0);
  }
}

// After pre-copy rounds, what was written since the last one (lazy_mem's stack, at least: it
// loops on nanosleep) is installed before the tree runs, within its bound; every check holds.
TEST_F(CrLazy, PreCopiedDumpInstallsTheLastRoundFirst) {
  setenv("CR_HELPER_STDERR", (dir_ / "helper.err").c_str(), 1);
  pid_t p = StartHelper("lazy_mem", {"{READY}", dir_ / "go", "32"});
  ASSERT_GT(p, 0);
  pids_.push_back(p);
  auto d = Godwit({"dump", "--pid", std::to_string(p), "--images-dir", dir_ / "img",
                   "--pre-copy=2"});
  ASSERT_EQ(d.status, 0) << d.err;
  KillAndReap(p);
  auto j = RestoreDetached();
  ASSERT_FALSE(j.empty());
  EXPECT_GE(j["hot_bytes"].get<uint64_t>(), 4096u) << j.dump();
  EXPECT_LE(j["hot_bytes"].get<uint64_t>(), 2u << 20) << j.dump();
  EXPECT_GE(j["lazy_bytes"].get<uint64_t>(), 32ull << 20) << j.dump();
  Touch(dir_ / "go");
  EXPECT_EQ(WaitWithin(root_, 120000), 0) << "lazy_mem failed a check: " << HelperSaid();
  if (pager_ > 0) {
    EXPECT_EQ(WaitWithin(pager_, 30000), 0);
  }
}

// A process that owes little (here busybox's sleep: its stack, heap and data) is filled whole
// before it runs: its wake-ups never wait for the pager (a migrated server's helpers answered
// 74 ms late when one of their faults waited behind a background copy). Nothing is owed, so no
// pager is left running either.
TEST_F(CrLazy, SmallProcessIsFilledBeforeItRuns) {
  setenv("GODWIT_LAZY_FAULTS_ONLY", "1", 1);
  pid_t p = StartProgram("/usr/bin/busybox",
                         {"sh", "-c", "echo ready >&3; exec 3>&-; exec sleep 1000"});
  ASSERT_GT(p, 0);
  pids_.push_back(p);
  auto d = Godwit({"dump", "--pid", std::to_string(p), "--images-dir", dir_ / "img"});
  ASSERT_EQ(d.status, 0) << d.err;
  KillAndReap(p);
  auto j = RestoreDetached();
  ASSERT_FALSE(j.empty());
  EXPECT_EQ(j["lazy_bytes"].get<uint64_t>(), 0u) << j.dump();
  EXPECT_GE(j["hot_bytes"].get<uint64_t>(), 4096u) << j.dump();
  EXPECT_LE(j["hot_bytes"].get<uint64_t>(), 1u << 20) << j.dump();
  EXPECT_EQ(pager_, 0) << j.dump();
  // It runs: a signal it does not handle ends it.
  ASSERT_EQ(kill(root_, SIGTERM), 0);
  EXPECT_EQ(WaitWithin(root_, 30000), 128 + SIGTERM);
}

TEST_F(CrLazy, ForegroundRestoreWaitsAndReturnsTheStatus) {
  StartAndDump(32);
  pid_t g = GodwitAsync({"restore", "--images-dir", dir_ / "img", "--lazy"});
  ASSERT_GT(g, 0);
  pids_.push_back(g);
  Touch(dir_ / "go");
  EXPECT_EQ(WaitWithin(g, 120000), 0) << "lazy_mem failed a check: " << HelperSaid();
}

// Regions moved (mremap) by the program while the pager's workers copy them: a copy that meets
// the moved range before the pager has read the move's event fails with ENOENT (the kernel looks
// the VMA up before it checks for an unread event); the rest of that piece, pages next to the
// moved region included, must stay owed, not be dropped (they read zero then). Foreground, the
// program moves its regions as soon as it runs; a few rounds, the race is not hit every time.
TEST_F(CrLazy, RegionsMovedWhileTheirPagesAreCopied) {
  for (int round = 0; round < 4; ++round) {
    TempDir d;
    setenv("CR_HELPER_STDERR", (d / "helper.err").c_str(), 1);
    pid_t p = StartHelper("lazy_churn", {"{READY}", d / "go", "512"});
    ASSERT_GT(p, 0);
    pids_.push_back(p);
    auto dump = Godwit({"dump", "--pid", std::to_string(p), "--images-dir", d / "img"});
    ASSERT_EQ(dump.status, 0) << dump.err;
    KillAndReap(p);
    Touch(d / "go");
    auto r = Godwit({"restore", "--images-dir", d / "img", "--lazy"});
    std::ifstream f(d / "helper.err");
    std::string said((std::istreambuf_iterator<char>(f)), {});
    ASSERT_EQ(r.status, 0) << "round " << round << ": " << said << r.err;
  }
}

// The page files' allocated bytes (st_blocks), summed over the image directory's pages-*.img.
uint64_t PageFileBytes(const std::string& dir) {
  uint64_t n = 0;
  DIR* d = opendir(dir.c_str());
  if (!d) return 0;
  while (dirent* e = readdir(d)) {
    std::string name = e->d_name;
    struct stat st;
    if (name.rfind("pages-", 0) == 0 && stat((dir + "/" + name).c_str(), &st) == 0)
      n += static_cast<uint64_t>(st.st_blocks) * 512;
  }
  closedir(d);
  return n;
}

// --discard-pages (a migration's destination does it with its staging): the page files are
// freed as the pager installs their pages, and every byte still comes back. Two workers fill the
// 4 MiB chunks in 2 MiB pieces: a chunk's second half is read after its first was freed, so it is
// not checked whole again (a mismatch would fail the pager, which kills the tree).
TEST_F(CrLazy, DiscardedPageFilesAreFreedAsTheirPagesGoIn) {
  StartAndDump(64, "cr_bigmem");
  const uint64_t before = PageFileBytes(dir_ / "img");
  ASSERT_GE(before, 64ull << 20);
  auto r = Godwit({"restore", "--images-dir", dir_ / "img", "--detach", "--discard-pages"});
  EXPECT_NE(r.status, 0) << "--discard-pages without --lazy";
  auto j = RestoreDetached({"--discard-pages"});
  ASSERT_FALSE(j.empty());
  ASSERT_GT(pager_, 0) << j.dump();
  ASSERT_EQ(WaitWithin(pager_, 120000), 0) << "the pager failed";
  const uint64_t after = PageFileBytes(dir_ / "img");
  EXPECT_LE(after, before / 8) << "page files: " << before << " bytes before, " << after
                               << " after the fill";
  Touch(dir_ / "go");
  EXPECT_EQ(WaitWithin(root_, 120000), 0) << "cr_bigmem's checksum differs: " << HelperSaid();
}

// The same with lazy_mem's checks: its fork while pages are owed (the child's record names the
// parent's page files: they are no longer freed), faults from four threads, pages moved,
// dropped and unmapped.
TEST_F(CrLazy, DiscardingPageFilesKeepsEveryCheck) {
  StartAndDump(128);
  auto j = RestoreDetached({"--discard-pages"});
  ASSERT_FALSE(j.empty());
  Touch(dir_ / "go");
  EXPECT_EQ(WaitWithin(root_, 120000), 0) << "lazy_mem failed a check: " << HelperSaid();
  if (pager_ > 0) {
    EXPECT_EQ(WaitWithin(pager_, 30000), 0);
  }
}

TEST_F(CrLazy, ProcessKilledMidFillLeavesNothingBehind) {
  setenv("GODWIT_LAZY_FAULTS_ONLY", "1", 1);
  StartAndDump(64);
  auto j = RestoreDetached();
  ASSERT_FALSE(j.empty());
  ASSERT_GT(pager_, 0);
  kill(root_, SIGKILL);
  EXPECT_EQ(WaitWithin(root_, 30000), 128 + SIGKILL);
  EXPECT_EQ(WaitWithin(pager_, 30000), 0) << "the pager outlived its only process";
}

TEST_F(CrLazy, DamagedPagesKillTheTreeInsteadOfRunningWrongMemory) {
  setenv("GODWIT_LAZY_FAULTS_ONLY", "1", 1);
  StartAndDump(16);
  // Flip bytes in the middle of the page blob (chunk data, not headers: 4 KiB-aligned page data
  // past the first chunk header).
  std::string blob = dir_ / ("img/pages-" + std::to_string(pids_[0]) + ".img");
  std::fstream f(blob, std::ios::in | std::ios::out | std::ios::binary);
  ASSERT_TRUE(f.good()) << blob;
  f.seekg(0, std::ios::end);
  std::streamoff size = f.tellg();
  ASSERT_GT(size, 8 << 20);
  f.seekp(size / 2);
  f.write("godwit-damage", 13);
  f.close();
  // Without --lazy the damaged chunk fails the restore while it fills the memory, before the
  // tree runs; the process it had made again is killed, and reaped here (this test is the
  // subreaper above it) so that its pid is free for the lazy restore.
  auto eager = Godwit({"restore", "--images-dir", dir_ / "img", "--detach", "--json"});
  EXPECT_NE(eager.status, 0);
  EXPECT_NE(eager.err.find("checksum"), std::string::npos) << eager.err;
  while (waitpid(pids_[0], nullptr, 0) < 0 && errno == EINTR) {
  }
  auto j = RestoreDetached();
  ASSERT_FALSE(j.empty());
  ASSERT_GT(pager_, 0);
  Touch(dir_ / "go");
  EXPECT_EQ(WaitWithin(root_, 60000), 128 + SIGKILL) << "a process ran on damaged memory";
  EXPECT_EQ(WaitWithin(pager_, 30000), 1);
}

}  // namespace
}  // namespace godwit::crtest

namespace godwit::crtest {
namespace {

// A tree dumped again while its pager is still installing pages: the dump waits for the pager
// (the owed pages are not there yet and would be lost as zeros), and the second set restores
// byte for byte.
TEST_F(CrLazy, DumpOfAStillPagedTreeWaitsForThePager) {
  StartAndDump(128);
  auto j = RestoreDetached();
  ASSERT_FALSE(j.empty());
  auto d = Godwit({"dump", "--pid", std::to_string(root_), "--images-dir", dir_ / "img2"});
  ASSERT_EQ(d.status, 0) << d.err;
  EXPECT_EQ(WaitWithin(root_, 30000), 128 + SIGKILL);
  if (pager_ > 0) {
    EXPECT_EQ(WaitWithin(pager_, 30000), 0);
  }
  auto r = Godwit({"restore", "--images-dir", dir_ / "img2", "--detach", "--json"});
  ASSERT_EQ(r.status, 0) << r.err;
  pid_t again = nlohmann::json::parse(r.out)["root_pid"].get<int>();
  pids_.push_back(again);
  Touch(dir_ / "go");
  EXPECT_EQ(WaitWithin(again, 120000), 0) << "lazy_mem failed a check: " << HelperSaid();
}

double ThreadCpuMs() {
  timespec t;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

double WallMs() {
  timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

// Waiting for a pager (dump/lazy_wait.h) with its pid and start time, as a container's record
// names it: by the pager's exit, with next to no CPU (smaps polled at once took most of a CPU
// from the pager and the workload, ~40 ms a read for 1 GiB); until the time given, then an error
// naming the pid; without the reference (or with a stale one) by polling smaps, at most a fifth of
// the time. The pager serves faults only here: the pages stay owed until the program touches them.
TEST_F(CrLazy, WaitingForThePagerTakesNoCpuAndEndsWithIt) {
  setenv("GODWIT_LAZY_FAULTS_ONLY", "1", 1);
  StartAndDump(128);
  auto j = RestoreDetached();
  ASSERT_FALSE(j.empty());
  ASSERT_GT(pager_, 0);
  auto pst = proc::ReadStat(pager_);
  ASSERT_TRUE(pst.ok());
  const dump::LazyPagerRef ref{pager_, pst->start_time};  // as a container's record names it
  ASSERT_NE(ref.start_time, 0u);
  dump::LazyWaitStats st;
  double wall0 = WallMs(), cpu0 = ThreadCpuMs();
  auto w = dump::WaitLazyPages(root_, 600, nullptr, ref, &st);
  double wall = WallMs() - wall0, cpu = ThreadCpuMs() - cpu0;
  ASSERT_FALSE(w.ok()) << "pages owed, yet the wait ended";
  EXPECT_EQ(w.error().sys_errno(), EBUSY);
  EXPECT_NE(w.error().message().find(std::to_string(root_)), std::string::npos)
      << w.error().message();
  EXPECT_GE(wall, 590.0);
  EXPECT_GE(st.waited_ms, 590.0);
  EXPECT_FALSE(st.pager_exit);
  // smaps read once before the wait for the pager and once after it: not polled.
  EXPECT_LE(st.smaps_reads, 2) << "the wait polled smaps instead of waiting for the pager's exit";
  EXPECT_LT(cpu, wall / 10);
  // A stale reference (its start time another process's): polled, every 5 ms at the most here
  // (smaps of a process whose pages are not there reads fast).
  wall0 = WallMs();
  w = dump::WaitLazyPages(root_, 300, nullptr, {pager_, ref.start_time + 1}, &st);
  wall = WallMs() - wall0;
  EXPECT_FALSE(w.ok());
  EXPECT_GE(st.smaps_reads, 3);
  EXPECT_LE(st.smaps_reads, wall / 5 + 2);
  EXPECT_FALSE(st.pager_exit);
  // The program touches every page, checks them and exits; the pager ends with it: so does the
  // wait, started before.
  Result<void> done = Ok();
  dump::LazyWaitStats dst;
  std::atomic<pid_t> waiter_tid{0};
  std::thread waiter([&] {
    waiter_tid = static_cast<pid_t>(syscall(SYS_gettid));
    done = dump::WaitLazyPages(root_, 120000, nullptr, ref, &dst);
  });
  // The program goes on once the wait is in its poll of the pager's pidfd (x86-64 poll: 7).
  for (int i = 0; i < 10000; ++i) {
    std::ifstream sc("/proc/self/task/" + std::to_string(waiter_tid.load()) + "/syscall");
    std::string nr;
    if (waiter_tid.load() != 0 && (sc >> nr) && nr == "7") break;
    timespec ms{0, 1000000};
    nanosleep(&ms, nullptr);
  }
  Touch(dir_ / "go");
  EXPECT_EQ(WaitWithin(root_, 120000), 0) << "lazy_mem failed a check: " << HelperSaid();
  EXPECT_EQ(WaitWithin(pager_, 30000), 0);
  waiter.join();
  EXPECT_TRUE(done.ok()) << done.error().to_string();
  EXPECT_TRUE(dst.pager_exit);
  // Each of the tree's processes (the helper and the child it forks for a check) read once, the
  // root once more after the pager's exit: not polled through the seconds the checks take.
  EXPECT_LE(dst.smaps_reads, 4);
}

}  // namespace
}  // namespace godwit::crtest
