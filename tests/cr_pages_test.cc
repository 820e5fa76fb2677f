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


// A memory cgroup (v1 here, v2 where mounted so) that the test process joins for the duration,
// so that what it starts (a helper, godwit) is charged there; left and removed at destruction.
class MemCgroup {
 public:
  MemCgroup() {
    std::string name = "godwit-test-peak-" + std::to_string(getpid());
    if (access("/sys/fs/cgroup/cgroup.controllers", F_OK) == 0) {
      v2_ = true;
      parent_ = ReadSelf("0::");
      base_ = "/sys/fs/cgroup";
    } else if (access("/sys/fs/cgroup/memory/cgroup.procs", F_OK) == 0) {
      parent_ = ReadSelf(":memory:");
      base_ = "/sys/fs/cgroup/memory";
    } else {
      return;
    }
    path_ = base_ + "/" + name;
    if (mkdir(path_.c_str(), 0755) != 0) {
      path_.clear();
      return;
    }
    if (!Write(path_ + "/cgroup.procs", std::to_string(getpid()))) {
      rmdir(path_.c_str());
      path_.clear();
    }
  }
  ~MemCgroup() {
    if (path_.empty()) return;
    Write(base_ + parent_ + "/cgroup.procs", std::to_string(getpid()));
    // Charges left (page cache of removed files) go to the parent; removing may take a moment
    // while the kernel drains the group.
    for (int i = 0; i < 100 && rmdir(path_.c_str()) != 0 && errno == EBUSY; ++i) usleep(10000);
  }
  bool ok() const { return !path_.empty(); }
  long long Usage() const {
    return Read(path_ + (v2_ ? "/memory.current" : "/memory.usage_in_bytes"));
  }
  // Resets the peak to the current usage.
  bool ResetPeak() const {
    return Write(path_ + (v2_ ? "/memory.peak" : "/memory.max_usage_in_bytes"), "0");
  }
  long long Peak() const {
    return Read(path_ + (v2_ ? "/memory.peak" : "/memory.max_usage_in_bytes"));
  }

 private:
  static std::string ReadSelf(const std::string& key) {
    std::ifstream f("/proc/self/cgroup");
    std::string line;
    while (std::getline(f, line)) {
      size_t at = line.find(key);
      if (at != std::string::npos && (at == 0 || line[at - 1] != ','))
        return line.substr(at + key.size());
    }
    return "/";
  }
  static bool Write(const std::string& path, const std::string& v) {
    std::ofstream f(path);
    f << v;
    f.flush();
    return static_cast<bool>(f);
  }
  static long long Read(const std::string& path) {
    std::ifstream f(path);
    long long v = -1;
    f >> v;
    return v;
  }
  bool v2_ = false;
  std::string base_, parent_, path_;
};

// Kill mode releases each batch of the tree's memory once it is in the page file: the dump needs
// little memory beyond the tree's own (before, the page file's pages were reserved whole before
// the freeze: ~100% of the tree on top of it). Measured as the peak of a memory cgroup holding
// the tree and godwit, minus its usage before the dump; the image restores byte for byte.
TEST_F(CrPages, KillModeReusesTheTreesMemory) {
  constexpr long long kMib = 256;
  MemCgroup cg;
  if (!cg.ok()) GTEST_SKIP() << "no memory cgroup to measure in";
  char tmpl[] = "/dev/shm/godwit-peak-XXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  std::string img = tmpl;
  struct Remove {
    std::string path;
    ~Remove() { (void)!system(("rm -rf '" + path + "'").c_str()); }
  } remove{img};
  // Each dump into a new directory, the one before removed first: removing images (charged
  // here) during a dump would lower its peak.
  std::string out;
  auto peak_extra = [&](bool release, std::string* err) -> long long {
    if (!out.empty()) (void)!system(("rm -rf '" + out + "'").c_str());
    out = img + (release ? "/released" : "/kept");
    pid_t pid = StartHelper("cr_bigmem", {"{READY}", dir_ / "go", std::to_string(kMib)});
    if (pid <= 0) return -1;
    pids_.push_back(pid);
    long long before = cg.Usage();
    if (!cg.ResetPeak()) return -1;
    if (!release) setenv("GODWIT_NO_RELEASE", "1", 1);
    auto d = Godwit({"dump", "--pid", std::to_string(pid), "--images-dir", out, "--json"});
    unsetenv("GODWIT_NO_RELEASE");
    *err = d.err;
    if (d.status != 0) return -1;
    long long peak = cg.Peak();
    EXPECT_EQ(Wait(pid), 128 + SIGKILL);  // killed by the dump
    auto j = nlohmann::json::parse(d.out);
    if (release)
      EXPECT_GE(j["released_bytes"].get<uint64_t>(), static_cast<uint64_t>(kMib) << 20);
    return peak - before;
  };
  std::string err;
  long long kept = peak_extra(false, &err);
  ASSERT_GE(kept, 0) << err;
  long long released = peak_extra(true, &err);
  ASSERT_GE(released, 0) << err;
  RecordProperty("peak_extra_kept_mib", static_cast<int>(kept >> 20));
  RecordProperty("peak_extra_released_mib", static_cast<int>(released >> 20));
  // Before: the page file reserved whole on top of the tree.
  EXPECT_GT(kept, (kMib << 20) * 8 / 10) << "kept " << (kept >> 20) << " MiB";
  EXPECT_LE(released, (kMib << 20) * 3 / 10) << "released " << (released >> 20) << " MiB";
  // The last image (dumped with release) restores byte for byte.
  auto r = Godwit({"restore", "--images-dir", out, "--detach", "--json"});
  ASSERT_EQ(r.status, 0) << r.err;
  pid_t root = nlohmann::json::parse(r.out)["root_pid"].get<int>();
  pids_.push_back(root);
  Touch(dir_ / "go");
  EXPECT_EQ(Wait(root), 0);
}

// Kill mode releasing memory as it goes, over memory shaped to split batches (runs of one page,
// unreadable and read-only ranges, COWed file pages): every page restores exactly. By default
// the pages are captured by reference while frozen (vmsplice, dump/capture.h) and copied after;
// GODWIT_NO_CAPTURE copies them while frozen.
TEST_F(CrPages, KillModeReleaseKeepsEveryPage) {
  for (bool capture : {true, false}) {
    SCOPED_TRACE(capture ? "captured" : "copied while frozen");
    unlink((dir_ / "go").c_str());
    std::string img = dir_ / (capture ? "img-captured" : "img-copied");
    pid_t pid = Start("random");
    ASSERT_GT(pid, 0);
    if (!capture) setenv("GODWIT_NO_CAPTURE", "1", 1);
    auto d = Godwit({"dump", "--pid", std::to_string(pid), "--images-dir", img, "--json"});
    unsetenv("GODWIT_NO_CAPTURE");
    ASSERT_EQ(d.status, 0) << d.err;
    EXPECT_EQ(Wait(pid), 128 + SIGKILL);
    pids_.clear();
    auto j = nlohmann::json::parse(d.out);
    EXPECT_GE(j["released_bytes"].get<uint64_t>(), kData);
    if (capture) {
      EXPECT_GE(j["captured_bytes"].get<uint64_t>(), kData);
      EXPECT_GT(j["drain_ms"].get<double>(), 0);
    } else {
      EXPECT_EQ(j["captured_bytes"].get<uint64_t>(), 0u);
    }
    auto r = Godwit({"restore", "--images-dir", img, "--detach", "--json"});
    ASSERT_EQ(r.status, 0) << r.err;
    pid_t root = nlohmann::json::parse(r.out)["root_pid"].get<int>();
    pids_.push_back(root);
    Touch(dir_ / "go");
    EXPECT_EQ(Wait(root), 0);
    pids_.clear();
  }
}

// Captured pages of a large process go into two page files (two drain threads, one pagemap
// record each); full and lazy restores put every byte back.
TEST_F(CrPages, CapturedPagesInTwoFilesRestoreExactly) {
  for (bool lazy : {false, true}) {
    SCOPED_TRACE(lazy ? "lazy" : "full");
    std::string img = dir_ / (lazy ? "img-lazy" : "img-full");
    unlink((dir_ / "go").c_str());
    pid_t pid = StartHelper("cr_bigmem", {"{READY}", dir_ / "go", "96"});
    ASSERT_GT(pid, 0);
    pids_.push_back(pid);
    auto d = Godwit({"dump", "--pid", std::to_string(pid), "--images-dir", img, "--json"});
    ASSERT_EQ(d.status, 0) << d.err;
    EXPECT_EQ(Wait(pid), 128 + SIGKILL);
    pids_.clear();
    auto j = nlohmann::json::parse(d.out);
    EXPECT_GE(j["captured_bytes"].get<uint64_t>(), 96ull << 20);
    struct stat st;
    ASSERT_EQ(stat((img + "/pages-" + std::to_string(pid) + ".2.img").c_str(), &st), 0);
    EXPECT_GT(st.st_size, 16 << 20);  // the second drain took its share
    std::vector<std::string> args = {"restore", "--images-dir", img, "--detach", "--json"};
    if (lazy) args.push_back("--lazy");
    auto r = Godwit(args);
    ASSERT_EQ(r.status, 0) << r.err;
    pid_t root = nlohmann::json::parse(r.out)["root_pid"].get<int>();
    pids_.push_back(root);
    Touch(dir_ / "go");
    EXPECT_EQ(Wait(root), 0);
    pids_.clear();
  }
}

long long RssAnonKb(pid_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/status");
  std::string k;
  while (f >> k) {
    long long v;
    if (k == "RssAnon:" && f >> v) return v;
  }
  return -1;
}

bool IsZombieOrGone(pid_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
  std::string s;
  if (!std::getline(f, s)) return true;
  size_t at = s.rfind(')');
  return at == std::string::npos || at + 2 >= s.size() || s[at + 2] == 'Z' || s[at + 2] == 'X';
}

// A dumper killed once the tree's memory is being released (kill mode: after the capture, while
// the pages are copied) takes the tree with it (PTRACE_O_EXITKILL): nothing is left running on
// memory that is gone, and the checkpoint has no inventory (it is not a checkpoint).
TEST_F(CrPages, DumperKilledAfterReleaseLeavesNothingRunning) {
  pid_t pid = StartHelper("cr_bigmem", {"{READY}", dir_ / "go", "384"});
  ASSERT_GT(pid, 0);
  pids_.push_back(pid);
  ASSERT_GT(RssAnonKb(pid), 300 << 10);
  pid_t g = GodwitAsync({"dump", "--pid", std::to_string(pid), "--images-dir", dir_ / "img"});
  ASSERT_GT(g, 0);
  // Released: its resident memory drops (the copy into the image takes longer than that).
  bool releasing = WaitFor(60000, [](pid_t p) {
    long long kb = RssAnonKb(p);
    return kb >= 0 && kb < (192 << 10);
  }, pid);
  if (!IsZombieOrGone(g)) kill(g, SIGKILL);
  int gs = Wait(g);
  ASSERT_TRUE(releasing);
  if (gs == 0) GTEST_SKIP() << "the dump finished before it could be killed";
  EXPECT_EQ(gs, 128 + SIGKILL);
  EXPECT_TRUE(WaitFor(10000, IsZombieOrGone, pid)) << "the tree runs on without its memory";
  EXPECT_EQ(Wait(pid), 128 + SIGKILL);
  pids_.clear();
  struct stat st;
  EXPECT_NE(stat((dir_ / "img/inventory.img").c_str(), &st), 0);
}

// GODWIT_SPLIT_PAGES: the pages of a large process go into two files (two writers, one pagemap
// record each; the second written by the coordinator while the process writes the first), with
// its memory released as it goes; full and lazy restores put every byte back.
TEST_F(CrPages, SplitPagesIntoTwoFilesRestoreExactly) {
  ScopedEnv split("GODWIT_SPLIT_PAGES");
  for (bool lazy : {false, true}) {
    SCOPED_TRACE(lazy ? "lazy" : "full");
    std::string img = dir_ / (lazy ? "img-lazy" : "img-full");
    unlink((dir_ / "go").c_str());
    pid_t pid = StartHelper("cr_bigmem", {"{READY}", dir_ / "go", "96"});
    ASSERT_GT(pid, 0);
    pids_.push_back(pid);
    auto d = Godwit({"dump", "--pid", std::to_string(pid), "--images-dir", img, "--json"});
    ASSERT_EQ(d.status, 0) << d.err;
    EXPECT_EQ(Wait(pid), 128 + SIGKILL);
    struct stat st;
    ASSERT_EQ(stat((img + "/pages-" + std::to_string(pid) + ".2.img").c_str(), &st), 0);
    EXPECT_GT(st.st_size, 1 << 20);  // the second writer took a share
    std::vector<std::string> args = {"restore", "--images-dir", img, "--detach", "--json"};
    if (lazy) args.push_back("--lazy");
    auto r = Godwit(args);
    ASSERT_EQ(r.status, 0) << r.err;
    pid_t root = nlohmann::json::parse(r.out)["root_pid"].get<int>();
    pids_.push_back(root);
    Touch(dir_ / "go");
    EXPECT_EQ(Wait(root), 0);
  }
}

// A full restore checks page data chunk by chunk as it fills (not in a pass over the file
// before): a damaged chunk fails the restore, and nothing of the tree is left running.
TEST_F(CrPages, DamagedPageChunkFailsTheFullRestore) {
  pid_t pid = Start("random");
  ASSERT_GT(pid, 0);
  nlohmann::json j;
  ASSERT_GE(DumpLeaveRunning(pid, {}, &j), 0);
  KillAndReap(pid);
  pids_.clear();
  // A byte in the middle of the page file (inside some chunk's data).
  std::string blob = dir_ / ("img/pages-" + std::to_string(pid) + ".img");
  struct stat st;
  ASSERT_EQ(stat(blob.c_str(), &st), 0);
  {
    std::fstream f(blob, std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(st.st_size / 2);
    char c = 0;
    f.read(&c, 1);
    c ^= 0x5a;
    f.seekp(st.st_size / 2);
    f.write(&c, 1);
  }
  auto r = Godwit({"restore", "--images-dir", dir_ / "img", "--detach", "--json"});
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.err.find("checksum"), std::string::npos) << r.err;
  // Nothing restored is left: the restore kills what it forked on failure, and this test (a
  // subreaper) has no child left.
  pid_t w;
  while ((w = waitpid(-1, nullptr, WNOHANG)) > 0) {
  }
  EXPECT_EQ(w, -1) << "a restored process is still running";
  for (pid_t p : Descendants(getpid())) KillAndReap(p);
}

}  // namespace
}  // namespace godwit::crtest
