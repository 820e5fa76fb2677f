// The page paths of dump and restore (dump/pages.h, restore/pages.h), each exercised with memory
// shaped to split batches, chunks and iovec lists (helpers/cr_pages.c checks it byte for byte):
// the dumped process writing its own pages and the coordinator copying them; UFFDIO_COPY and the
// target's preadv; raw and zstd. Which path ran is read from the kernel's per-process I/O counters
// (/proc/PID/io): a process that wrote its own pages has written as much as its memory; a
// restored process whose memory came through UFFDIO_COPY has read (almost) nothing itself.
#include <gtest/gtest.h>
#include <signal.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

#include "cr_util.h"

namespace godwit::crtest {
namespace {

constexpr uint64_t kData = 24ull << 20;  // at least this much is stored (regions A and B)

// A field of /proc/PID/io ("rchar", "wchar"); -1 if unreadable.
long long IoField(pid_t pid, const std::string& name) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/io");
  std::string k;
  long long v;
  while (f >> k >> v)
    if (k == name + ":") return v;
  return -1;
}

// Sets an environment variable for the godwit commands of one test.
class ScopedEnv {
 public:
  explicit ScopedEnv(const char* name) : name_(name) { setenv(name, "1", 1); }
  ~ScopedEnv() { unsetenv(name_); }

 private:
  const char* name_;
};

class CrPages : public ::testing::Test {
 protected:
  void TearDown() override {
    for (pid_t p : pids_) KillAndReap(p);
  }
  pid_t Start(const std::string& mode, const std::string& extra = "") {
    std::vector<std::string> args = {"{READY}", dir_ / "go", dir_ / "data", mode};
    if (!extra.empty()) args.push_back(extra);
    pid_t p = StartHelper("cr_pages", args);
    if (p > 0) pids_.push_back(p);
    return p;
  }
  // Dumps pid with --leave-running; returns how much pid wrote during the dump (wchar), and the
  // dump's JSON in *j.
  long long DumpLeaveRunning(pid_t pid, const std::vector<std::string>& extra,
                             nlohmann::json* j) {
    long long w0 = IoField(pid, "wchar");
    std::vector<std::string> args = {"dump",         "--pid",         std::to_string(pid),
                                     "--images-dir", dir_ / "img",    "--leave-running",
                                     "--json"};
    args.insert(args.end(), extra.begin(), extra.end());
    auto d = Godwit(args);
    EXPECT_EQ(d.status, 0) << d.err;
    if (d.status != 0) return -1;
    *j = nlohmann::json::parse(d.out);
    return IoField(pid, "wchar") - w0;
  }
  // Kills the original, restores detached, returns what the restored process read while being
  // restored (rchar) in *rchar, lets it check itself and returns its exit status.
  int KillRestoreCheck(pid_t pid, long long* rchar) {
    KillAndReap(pid);
    auto r = Godwit({"restore", "--images-dir", dir_ / "img", "--detach", "--json"});
    EXPECT_EQ(r.status, 0) << r.err;
    if (r.status != 0) return -1;
    pid_t root = nlohmann::json::parse(r.out)["root_pid"].get<int>();
    pids_.push_back(root);
    *rchar = IoField(root, "rchar");
    Touch(dir_ / "go");
    return Wait(root);  // reparented to this test (child subreaper)
  }
  TempDir dir_;
  std::vector<pid_t> pids_;
};

TEST_F(CrPages, RawProcessWritesItsOwnPagesAndUffdFillsThem) {
  pid_t pid = Start("random");
  ASSERT_GT(pid, 0);
  nlohmann::json j;
  long long wrote = DumpLeaveRunning(pid, {}, &j);
  EXPECT_GE(j["bytes"].get<uint64_t>(), kData);
  EXPECT_GE(wrote, static_cast<long long>(kData));  // the process wrote its pages itself
  long long rchar = 0;
  EXPECT_EQ(KillRestoreCheck(pid, &rchar), 0);
  // Anonymous memory came through UFFDIO_COPY: the process read only its private file pages.
  EXPECT_GE(rchar, 0);
  EXPECT_LT(rchar, 1 << 20);
}

TEST_F(CrPages, RawThroughTheCoordinator) {
  ScopedEnv a("GODWIT_NO_TARGET_WRITE"), b("GODWIT_NO_UFFD");
  pid_t pid = Start("random");
  ASSERT_GT(pid, 0);
  nlohmann::json j;
  long long wrote = DumpLeaveRunning(pid, {}, &j);
  EXPECT_GE(j["bytes"].get<uint64_t>(), kData);
  EXPECT_GE(wrote, 0);
  EXPECT_LT(wrote, 1 << 20);
  long long rchar = 0;
  EXPECT_EQ(KillRestoreCheck(pid, &rchar), 0);
  // The fallback fill: the process preadv()s about half (a coordinator thread writes the rest
  // only above 64 MiB, so here all of it) from the page file.
  EXPECT_GE(rchar, static_cast<long long>(kData));
}

TEST_F(CrPages, FileSizeLimitKeepsTheCopyInTheCoordinator) {
  // RLIMIT_FSIZE of 1 MiB: a pwritev in the process would fail (and raise SIGXFSZ).
  pid_t pid = Start("random", "fsize");
  ASSERT_GT(pid, 0);
  nlohmann::json j;
  long long wrote = DumpLeaveRunning(pid, {}, &j);
  EXPECT_LT(wrote, 1 << 20);
  long long rchar = 0;
  EXPECT_EQ(KillRestoreCheck(pid, &rchar), 0);
}

TEST_F(CrPages, CompressedAfterTheFreezeWithUffd) {
  // zstd: the frozen process writes its pages raw, the dump compresses them afterwards
  // (Sink::CompressFinished); restore decompresses and fills with UFFDIO_COPY.
  pid_t pid = Start("pattern");
  ASSERT_GT(pid, 0);
  nlohmann::json j;
  long long wrote = DumpLeaveRunning(pid, {"--compress", "zstd:1"}, &j);
  EXPECT_LT(j["bytes_stored"].get<uint64_t>() * 4, j["bytes"].get<uint64_t>());
  EXPECT_GE(wrote, static_cast<long long>(kData));
  // Every page file is compressed now, and the inventory has their new sizes: restore checks.
  std::ifstream f(dir_ / ("img/pages-" + std::to_string(pid) + ".img"), std::ios::ate);
  EXPECT_LT(static_cast<uint64_t>(f.tellg()) * 4, j["bytes"].get<uint64_t>());
  long long rchar = 0;
  EXPECT_EQ(KillRestoreCheck(pid, &rchar), 0);
  EXPECT_LT(rchar, 1 << 20);
}

TEST_F(CrPages, CompressedWhileFrozen) {
  // GODWIT_COMPRESS_FROZEN: the coordinator reads and compresses while the process is frozen.
  ScopedEnv a("GODWIT_COMPRESS_FROZEN");
  pid_t pid = Start("pattern");
  ASSERT_GT(pid, 0);
  nlohmann::json j;
  long long wrote = DumpLeaveRunning(pid, {"--compress", "zstd:1"}, &j);
  EXPECT_LT(j["bytes_stored"].get<uint64_t>() * 4, j["bytes"].get<uint64_t>());
  EXPECT_LT(wrote, 1 << 20);
  long long rchar = 0;
  EXPECT_EQ(KillRestoreCheck(pid, &rchar), 0);
  EXPECT_LT(rchar, 1 << 20);
}

TEST_F(CrPages, CompressedWithoutUffd) {
  ScopedEnv a("GODWIT_NO_UFFD");
  pid_t pid = Start("pattern");
  ASSERT_GT(pid, 0);
  nlohmann::json j;
  DumpLeaveRunning(pid, {"--compress", "zstd:1"}, &j);
  EXPECT_LT(j["bytes_stored"].get<uint64_t>() * 4, j["bytes"].get<uint64_t>());
  long long rchar = 0;
  EXPECT_EQ(KillRestoreCheck(pid, &rchar), 0);
}

TEST_F(CrPages, PreDumpRoundsKeepUnreadablePages) {
  // Round 0 of a pre-dump must store the pages of unreadable (PROT_NONE) VMAs too: the final
  // round stores only what was written since. (Pages of an earlier round overwritten by a later
  // one: CrTest.PreDumpRoundsWhileWriting, UFFDIO_COPY's EEXIST case.)
  pid_t pid = Start("random");
  ASSERT_GT(pid, 0);
  nlohmann::json j;
  DumpLeaveRunning(pid, {"--pre-dump-rounds", "2"}, &j);
  long long rchar = 0;
  EXPECT_EQ(KillRestoreCheck(pid, &rchar), 0);
}

TEST_F(CrPages, FullImageFilesystemFailsCleanly) {
  // The process's own pwritev hits ENOSPC (an 8 MiB tmpfs for ~25 MiB of pages): the dump fails
  // naming the cause, leaves no inventory, and the process runs on with its memory intact.
  std::string mnt = dir_ / "small";
  ASSERT_EQ(mkdir(mnt.c_str(), 0700), 0);
  ASSERT_EQ(mount("godwit-test", mnt.c_str(), "tmpfs", 0, "size=8m"), 0) << strerror(errno);
  struct Unmount {
    std::string path;
    ~Unmount() { umount2(path.c_str(), MNT_DETACH); }
  } unmount{mnt};
  pid_t pid = Start("random");
  ASSERT_GT(pid, 0);
  auto d = Godwit({"dump", "--pid", std::to_string(pid), "--images-dir", mnt + "/img"});
  EXPECT_NE(d.status, 0);
  EXPECT_NE(d.err.find("No space left"), std::string::npos) << d.err;
  EXPECT_NE(access((mnt + "/img/inventory.img").c_str(), F_OK), 0);
  Touch(dir_ / "go");
  EXPECT_EQ(Wait(pid), 0);  // still running, memory intact
  pids_.clear();
}

}  // namespace
}  // namespace godwit::crtest
