// Checkpoint/restore of real processes, zdtm style: a helper sets up state and reports ready, the
// test dumps it (killing it), reaps the original, restores it, lets it finish (GO file), and the
// helper's exit code says whether its state survived.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/ptrace.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
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
    std::vector<std::string> args = {"dump", "--pid", std::to_string(pid), "--images-dir",
                                     dir_.path() + "/img"};
    args.insert(args.end(), dump_extra.begin(), dump_extra.end());
    auto d = Godwit(args);
    EXPECT_EQ(d.status, 0) << d.err;
    if (d.status != 0) return -1;
    if (getenv("CR_DEBUG"))
      (void)!system(
          ("" GODWIT_BIN " inspect --json " + dir_.path() + "/img > /tmp/cr_inspect.json").c_str());
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

TEST_F(CrTest, NestedPidNamespace) {
  // init (pid 1) and its child (pid 2) of a pid namespace the tree created come back with the
  // same pids inside and outside.
  pid_t pid = Start("cr_pidns", {"{READY}", dir_ / "go"});
  ASSERT_GT(pid, 0);
  EXPECT_EQ(DumpKillRestore(pid), 0);
}

TEST_F(CrTest, MemoryKindsVdsoBrkMmFields) {
  pid_t pid = Start("cr_state", {"{READY}", dir_ / "go", "mem", dir_ / "data"});
  ASSERT_GT(pid, 0);
  EXPECT_EQ(DumpKillRestore(pid), 0);
}

TEST_F(CrTest, SysvShmReattached) {
  pid_t pid = Start("cr_state", {"{READY}", dir_ / "go", "sysv"});
  ASSERT_GT(pid, 0);
  EXPECT_EQ(DumpKillRestore(pid), 0);
}

TEST_F(CrTest, StoppedProcessStaysStopped) {
  pid_t pid = Start("cr_state", {"{READY}", dir_ / "go", "stopped"});
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

TEST_F(CrTest, LeaveRunningWhileBlockedInReadAndSleep) {
  // The dump injects syscalls into a thread blocked in read(): afterwards the original must
  // resume its read (restart) as if nothing happened.
  pid_t pid = Start("cr_state", {"{READY}", dir_ / "go", "read"});
  ASSERT_GT(pid, 0);
  ASSERT_TRUE(WaitFor(5000, InRead, pid));
  auto d = Godwit(
      {"dump", "--pid", std::to_string(pid), "--images-dir", dir_ / "img", "--leave-running"});
  ASSERT_EQ(d.status, 0) << d.err;
  // After the detach the thread re-enters read() on its own: wait for it to be back in the call
  // (it may still be on its way in when the dump returns).
  EXPECT_TRUE(WaitFor(5000, InRead, pid));
  Touch(dir_ / "go");
  EXPECT_EQ(Wait(pid), 0);
  pids_.clear();
  // The same in nanosleep (a restart-block syscall).
  pid = Start("cr_state", {"{READY}", dir_ / "go2", "nanosleep"});
  ASSERT_GT(pid, 0);
  pids_.push_back(pid);
  ASSERT_TRUE(WaitFor(5000, InSleep, pid));
  d = Godwit(
      {"dump", "--pid", std::to_string(pid), "--images-dir", dir_ / "img2", "--leave-running"});
  ASSERT_EQ(d.status, 0) << d.err;
  EXPECT_EQ(Wait(pid), 0);
  pids_.clear();
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
  // Compressible memory (the tree's workers fill theirs with arithmetic sequences).
  pid_t pid = Start("cr_tree", {"{READY}", dir_ / "go"});
  ASSERT_GT(pid, 0);
  auto d = Godwit({"dump", "--pid", std::to_string(pid), "--images-dir", dir_.path() + "/img",
                   "--compress", "zstd:1", "--json"});
  ASSERT_EQ(d.status, 0) << d.err;
  auto j = nlohmann::json::parse(d.out);
  EXPECT_LT(j["bytes_stored"].get<uint64_t>() * 2, j["bytes"].get<uint64_t>());
  EXPECT_EQ(Wait(pid), 128 + SIGKILL);
  while (waitpid(-1, nullptr, 0) > 0 || errno == EINTR) {
  }
  Touch(dir_ / "go");
  auto r = Godwit({"restore", "--images-dir", dir_.path() + "/img"});
  EXPECT_EQ(r.status, 0) << r.err;
}

TEST_F(CrTest, IncompressibleStoredRaw) {
  // Random data with --compress zstd: a sample says it does not compress, so it is stored raw.
  pid_t pid = Start("cr_bigmem", {"{READY}", dir_ / "go", "64"});
  ASSERT_GT(pid, 0);
  auto d = Godwit({"dump", "--pid", std::to_string(pid), "--images-dir", dir_.path() + "/img",
                   "--compress", "zstd", "--json"});
  ASSERT_EQ(d.status, 0) << d.err;
  auto j = nlohmann::json::parse(d.out);
  EXPECT_EQ(j["stored_raw_incompressible"].size(), 1u);
  EXPECT_EQ(Wait(pid), 128 + SIGKILL);
  Touch(dir_ / "go");
  auto r = Godwit({"restore", "--images-dir", dir_.path() + "/img"});
  EXPECT_EQ(r.status, 0) << r.err;
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
      "    if d[n % 20000] != str(n % 20000) * 3 or l[n % 100000] != (n % 100000) ** 2: "
      "sys.exit(2)\n"
      "    if n % 1000 == 0 and os.path.exists(sys.argv[1]): sys.exit(0 if sum(l) == "
      "333328333350000 else 3)\n";
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
    if (getenv("CR_DEBUG"))
      (void)!system(("ls -l /proc/" + std::to_string(pid) + "/fd; cat /proc/" +
                     std::to_string(pid) + "/status | grep -i sig")
                        .c_str());
  }
  Touch(dir_ / "go");
  EXPECT_EQ(Wait(pid), 0);
  pids_.clear();
}

TEST_F(CrTest, LeaveRunningThenRestoreCopy) {
  pid_t pid = Start("cr_loop", {"{READY}", dir_ / "go", "8", "2"});
  ASSERT_GT(pid, 0);
  auto d = Godwit({"dump", "--pid", std::to_string(pid), "--images-dir", dir_ / "img",
                   "--leave-running", "--json"});
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

// A shared mapping of a deleted file used to be refused (the failed-dump trigger here); it is now
// dumped as a shared memory object and its contents come back (branch fixes). A failed dump that
// leaves the tree running is covered by CrProcess.TracedByAnotherTracerFailsCleanly.
TEST_F(CrTest, DeletedFileMappingRoundTrip) {
  pid_t pid = Start("cr_state", {"{READY}", dir_ / "go", "deleted", dir_ / "data"});
  ASSERT_GT(pid, 0);
  EXPECT_EQ(DumpKillRestore(pid), 0);
  pids_.clear();
}

bool Traced(pid_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("TracerPid:", 0) == 0) return atoi(line.c_str() + 10) != 0;
  return false;
}

TEST_F(CrTest, TreeMemberDiesDuringDump) {
  // Two processes of 512 MiB each; the second dies while the first one's memory is being dumped.
  pid_t pid = Start("cr_loop", {"{READY}", dir_ / "go", "512", "1", "2"});
  ASSERT_GT(pid, 0);
  std::ifstream kids("/proc/" + std::to_string(pid) + "/task/" + std::to_string(pid) + "/children");
  pid_t child = 0;
  kids >> child;
  ASSERT_GT(child, 0);
  pid_t g = GodwitAsync({"dump", "--pid", std::to_string(pid), "--images-dir", dir_ / "img"});
  ASSERT_TRUE(WaitFor(10000, Traced, child));
  kill(child, SIGKILL);
  EXPECT_EQ(Wait(g), 3);  // kNotFound: "process N exited during the dump"
  struct stat sb;
  EXPECT_NE(stat((dir_ / "img/inventory.img").c_str(), &sb), 0);
  // The root was thawed: it notices its child's death and reports it (exit 60 + SIGKILL).
  Touch(dir_ / "go");
  EXPECT_EQ(Wait(pid), 60 + SIGKILL);
  pids_.clear();
}

TEST_F(CrTest, CheckReportsKernelFeatures) {
  TempDir root;
  auto c = Godwit({"--root", root.path(), "check", "--json"});
  ASSERT_EQ(c.status, 0) << c.out << c.err;
  auto j = nlohmann::json::parse(c.out);
  EXPECT_FALSE(j["cached"].get<bool>());
  std::map<std::string, bool> ok;
  for (const auto& f : j["features"]) ok[f["name"]] = f["ok"];
  EXPECT_TRUE(ok["clone3_set_tid"]);
  EXPECT_TRUE(ok["ptrace_rseq_config"]);
  EXPECT_TRUE(ok["uffd_wp_async"]);
  EXPECT_TRUE(ok["pagemap_scan"]);
  EXPECT_GT(j["xsave_size"].get<int>(), 512);
  // The second run answers from the cache.
  auto c2 = Godwit({"--root", root.path(), "check", "--json"});
  EXPECT_TRUE(nlohmann::json::parse(c2.out)["cached"].get<bool>());
}

// Per-thread rseq registrations, as PTRACE_GET_RSEQ_CONFIGURATION reports them in a dump.
std::map<int, std::string> RseqOf(const std::string& img) {
  auto out = Godwit({"inspect", "--json", img});
  std::map<int, std::string> m;
  auto j = nlohmann::json::parse(out.out, nullptr, false);
  if (j.is_discarded()) return m;
  for (const auto& f : j["files"]) {
    if (f["name"].get<std::string>().rfind("core-", 0) != 0) continue;
    for (const auto& rec : f["records_json"])
      for (const auto& t : rec["threads"])
        m[t["tid"].get<int>()] = t.value("rseq", nlohmann::json()).dump();
  }
  return m;
}

TEST_F(CrTest, RseqRegistrationsSurvive) {
  pid_t pid = Start("cr_loop", {"{READY}", dir_ / "go", "2", "3"});
  ASSERT_GT(pid, 0);
  auto d = Godwit({"dump", "--pid", std::to_string(pid), "--images-dir", dir_ / "img1"});
  ASSERT_EQ(d.status, 0) << d.err;
  ASSERT_EQ(Wait(pid), 128 + SIGKILL);
  auto r = Godwit({"restore", "--images-dir", dir_ / "img1", "--detach"});
  ASSERT_EQ(r.status, 0) << r.err;
  d = Godwit(
      {"dump", "--pid", std::to_string(pid), "--images-dir", dir_ / "img2", "--leave-running"});
  ASSERT_EQ(d.status, 0) << d.err;
  auto a = RseqOf(dir_ / "img1"), b = RseqOf(dir_ / "img2");
  ASSERT_EQ(a.size(), 3u);
  EXPECT_EQ(a, b);
  for (const auto& [tid, conf] : a) EXPECT_NE(conf.find("addr"), std::string::npos) << tid << conf;
  Touch(dir_ / "go");
  EXPECT_EQ(Wait(pid), 0);
  pids_.clear();
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
