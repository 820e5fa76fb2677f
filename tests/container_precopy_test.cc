// Pre-copy of a container (container/engine.h): a busybox container whose init is
// helpers/c_precopy.c (two processes sharing 64 MiB copy-on-write, each writing a small working
// set and replacing a 1 MiB mapping all the time) is pre-copied round by round while it runs (its
// cgroup not frozen), then checkpointed: the final dump stores only what was written since the
// last round. After the restore each process checks every word of its memory itself and writes
// its verdict into the container's /tmp (a tmpfs, checkpointed with it). Through the library
// (ContainerPreCopy driven by the test) and through `godwit checkpoint --pre-copy=N`.
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <nlohmann/json.hpp>

#include "container/engine.h"
#include "proto/pagemap.pb.h"
#include "runtime/cgroup.h"
#include "runtime/runtime.h"
#include "tests/container_test_util.h"

namespace godwit::container {
namespace {

using testing::CliRun;
using testing::Godwit;
using testing::TempDir;
using Clock = std::chrono::steady_clock;

constexpr uint64_t kMiB = 1 << 20;

// Page counts of a tree image set: the final dump's own pages and the first round's, over every
// process (pagemap-PID.img lists the rounds' maps, then the final one).
struct Pages {
  uint64_t final_pages = 0, round0_pages = 0;
  int processes = 0;
  int referenced = 0;  // earlier rounds' records referred to, not repeated (dump/precopy.h)
};
Result<Pages> CountPages(const std::string& tree_dir) {
  ASSIGN_OR_RETURN(images::ImageSet set, images::ImageSet::Open(tree_dir));
  Pages out;
  for (const auto& f : set.inventory().files()) {
    // A process's pagemap-PID.img; a round's own pagemap-PID-preN.img is read through the
    // reference to it (runs_image), as the restore does.
    if (f.name().rfind("pagemap-", 0) != 0 || f.name().find("-pre") != std::string::npos) continue;
    out.processes++;
    ASSIGN_OR_RETURN(images::ImageReader rd, set.OpenImage(f.name()));
    for (;;) {
      img::PageMap pm;
      ASSIGN_OR_RETURN(bool more, rd.Next(&pm));
      if (!more) break;
      if (!pm.runs_image().empty()) {
        std::string blob = pm.blob();
        TRY(set.ReadOne(pm.runs_image(), &pm));
        if (pm.blob() != blob) return MakeError(ErrorKind::kBadImage, 0, "bad runs_image");
        out.referenced++;
      }
      uint64_t n = 0;
      for (const auto& run : pm.runs()) n += run.npages();
      if (pm.blob().find("-pre0.img") != std::string::npos) out.round0_pages += n;
      if (pm.blob().find("-pre") == std::string::npos) out.final_pages += n;
    }
  }
  return out;
}

class ContainerPreCopyTest : public ::testing::Test {
 public:
  void SetUp() override {
    id_ = StrFormat("gwpc%d", getpid());
    root_ = tmp_.path() + "/state";
    rootfs_ = tmp_.path() + "/rootfs";
    img_ = tmp_.path() + "/ckpt";
    ASSERT_OK(runtime::MakeBusyboxRootfs(rootfs_));
    auto bin = fs::ReadFile(std::string(GODWIT_HELPERS) + "/c_precopy");
    ASSERT_OK(bin);
    ASSERT_OK(fs::WriteFile(rootfs_ + "/bin/c_precopy", *bin));
    ASSERT_EQ(::chmod((rootfs_ + "/bin/c_precopy").c_str(), 0755), 0);
  }
  void TearDown() override {
    (void)runtime::Delete(root_, id_, true);
    Reap();
  }
  void Reap() {
    if (pid_ > 0) ::waitpid(pid_, nullptr, 0);
    pid_ = 0;
  }
  pid_t StatePid() {
    CliRun s = Godwit({"--root", root_, "state", id_});
    auto j = nlohmann::json::parse(s.out, nullptr, false);
    if (s.code != 0 || j.is_discarded()) return 0;
    return j.value("pid", 0);
  }
  // Polls a file of the container (it runs on its own: nothing else to wait on), bounded.
  std::string WaitFile(const std::string& name) {
    std::string path = StrFormat("/proc/%d/root/tmp/%s", pid_, name.c_str());
    auto end = Clock::now() + std::chrono::seconds(20);
    while (Clock::now() < end) {
      auto t = fs::ReadFile(path);
      if (t.ok()) return *t;
      ::usleep(10000);
    }
    return "";
  }
  void Start() {
    std::vector<std::string> args = {"--root", root_, "run", "--rootfs", rootfs_, "--name", id_,
                                     "--detach"};
    if (userns_) args.push_back("--userns");
    for (const char* a : {"--", "sh", "-c",
                          "mount -t tmpfs -o size=8m tmpfs /tmp || exit 1; "
                          "exec /bin/c_precopy - 64 256 2 /tmp stay"})
      args.push_back(a);
    CliRun r = Godwit(args, false);
    ASSERT_EQ(r.code, 0) << r.err;
    pid_ = StatePid();
    ASSERT_GT(pid_, 0);
    ASSERT_EQ(WaitFile("ready"), "ready\n");
  }
  // Restores the checkpoint, lets the processes check their memory: both say ok.
  void RestoreAndCheck() {
    Reap();
    CliRun r = Godwit({"--root", root_, "restore", id_, "--image-path", img_, "--detach"});
    ASSERT_EQ(r.code, 0) << r.err;
    pid_ = StatePid();
    ASSERT_GT(pid_, 0);
    ASSERT_OK(fs::WriteFile(StrFormat("/proc/%d/root/tmp/go", pid_), "go\n"));
    for (const char* f : {"result-0", "result-1"}) {
      std::string v = WaitFile(f);
      EXPECT_EQ(v.rfind("ok ", 0), 0u) << f << ": " << v;
    }
  }

  TempDir tmp_{"cprecopy"};
  std::string id_, root_, rootfs_, img_;
  pid_t pid_ = 0;
  bool userns_ = false;
};

void RoundsThenCheckpoint(ContainerPreCopyTest& t);

TEST_F(ContainerPreCopyTest, RoundsWhileRunningThenACheckpointOfWhatChanged) {
  RoundsThenCheckpoint(*this);
}

// Its processes lack CAP_SYS_PTRACE outside their user namespace: the tracking's userfaultfd is
// for user-mode faults only, which needs none.
TEST_F(ContainerPreCopyTest, InAUserNamespace) {
  userns_ = true;
  RoundsThenCheckpoint(*this);
}

void RoundsThenCheckpoint(ContainerPreCopyTest& t) {
  t.Start();
  if (::testing::Test::HasFatalFailure()) return;
  auto sink = OpenTreeDirSink(t.img_);
  ASSERT_OK(sink);
  auto pc = ContainerPreCopy::Start(t.root_, t.id_, **sink);
  ASSERT_OK(pc);
  EXPECT_EQ((*pc)->pid(), t.pid_);
  auto cg = runtime::OpenCgroup(t.id_);
  ASSERT_OK(cg);
  std::vector<dump::RoundStats> rounds;
  for (int i = 0; i < 3; ++i) {
    auto frozen = (*cg)->IsFrozen();
    ASSERT_OK(frozen);
    EXPECT_FALSE(*frozen) << "the container runs through the rounds";
    auto r = (*pc)->Round();
    ASSERT_OK(r);
    rounds.push_back(*r);
  }
  // The container kept running and writing between the rounds.
  EXPECT_GE(rounds[0].bytes, 2 * 64 * kMiB);
  for (int i = 1; i < 3; ++i) {
    EXPECT_GT(rounds[i].bytes, 0u) << "round " << i;
    EXPECT_LT(rounds[i].bytes, rounds[0].bytes / 8) << "round " << i;
    EXPECT_GT(rounds[i].dirty_bytes_per_s, 0) << "round " << i;
  }
  CheckpointOptions o;
  o.root = t.root_;
  o.id = t.id_;
  o.image_path = t.img_;
  o.precopy = pc->get();
  auto ck = Checkpoint(o);
  ASSERT_OK(ck);
  EXPECT_EQ(ck->tree.round_bytes.size(), 3u);
  EXPECT_FALSE(runtime::Container::Load(t.root_, t.id_).ok()) << "deleted by the checkpoint";
  pc->reset();
  auto pages = CountPages(t.img_ + "/" + kTreeDir);
  ASSERT_OK(pages);
  EXPECT_EQ(pages->processes, 2);
  EXPECT_GE(pages->referenced, 3) << "the big process's three rounds at least";
  EXPECT_GE(pages->round0_pages * 4096, 2 * 64 * kMiB);
  EXPECT_LT(pages->final_pages * 8, pages->round0_pages)
      << pages->final_pages << " pages in the final dump";
  printf("container pre-copy: rounds %.1f / %.1f / %.1f MiB; final %.1f MiB; frozen %.1f ms\n",
         rounds[0].bytes / 1048576.0, rounds[1].bytes / 1048576.0, rounds[2].bytes / 1048576.0,
         pages->final_pages * 4096 / 1048576.0, ck->phases.frozen_ms);
  t.RestoreAndCheck();
}

TEST_F(ContainerPreCopyTest, CheckpointFlag) {
  Start();
  if (HasFatalFailure()) return;
  CliRun c = Godwit(
      {"--root", root_, "--json", "checkpoint", id_, "--image-path", img_, "--pre-copy=3"});
  ASSERT_EQ(c.code, 0) << c.err;
  auto j = nlohmann::json::parse(c.out, nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << c.out;
  EXPECT_EQ(j.value("pre_copy_rounds", 0), 3);
  ASSERT_EQ(j["pre_copy_round_bytes"].size(), 3u);
  EXPECT_GE(j["pre_copy_round_bytes"][0].get<uint64_t>(), 2 * 64 * kMiB);
  auto pages = CountPages(img_ + "/" + kTreeDir);
  ASSERT_OK(pages);
  EXPECT_LT(pages->final_pages * 8, pages->round0_pages);
  RestoreAndCheck();
}

// A migration source's sequence, with its own sinks (no image path): pre-copy rounds, a held
// checkpoint, then kill (the destination runs it: here, a restore of the images) or resume (it
// failed: the container carries on, every word intact).
void PreCopyThenHold(ContainerPreCopyTest& t, bool kill) {
  auto tree = images::OpenDirSink(t.img_ + "/" + kTreeDir);
  auto cont = images::OpenDirSink(t.img_ + "/" + kContainerDir);
  ASSERT_OK(tree);
  ASSERT_OK(cont);
  auto pc = ContainerPreCopy::Start(t.root_, t.id_, **tree);
  ASSERT_OK(pc);
  ASSERT_OK((*pc)->Round());
  ASSERT_OK((*pc)->Round());
  CheckpointOptions o;
  o.root = t.root_;
  o.id = t.id_;
  o.container_sink = cont->get();
  o.tree_sink = tree->get();
  o.precopy = pc->get();
  o.end = EndMode::kHold;
  auto ck = Checkpoint(o);
  ASSERT_OK(ck);
  ASSERT_TRUE(ck->held != nullptr);
  auto cg = runtime::OpenCgroup(t.id_);
  ASSERT_OK(cg);
  auto frozen = (*cg)->IsFrozen();
  ASSERT_OK(frozen);
  EXPECT_TRUE(*frozen);
  EXPECT_OK(images::ImageSet::Open(t.img_ + "/" + kContainerDir));
  EXPECT_OK(images::ImageSet::Open(t.img_ + "/" + kTreeDir));
  if (kill) {
    ASSERT_OK(ck->held->Kill(/*release_host_lock=*/false));
    pc->reset();
    t.RestoreAndCheck();
    return;
  }
  ASSERT_OK(ck->held->Resume());
  frozen = (*cg)->IsFrozen();
  ASSERT_OK(frozen);
  EXPECT_FALSE(*frozen);
  pc->reset();  // the tracking stops; the container runs on untracked
  EXPECT_EQ(t.StatePid(), t.pid_);
  ASSERT_OK(fs::WriteFile(StrFormat("/proc/%d/root/tmp/go", t.pid_), "go\n"));
  for (const char* f : {"result-0", "result-1"}) {
    std::string v = t.WaitFile(f);
    EXPECT_EQ(v.rfind("ok ", 0), 0u) << f << ": " << v;
  }
}

TEST_F(ContainerPreCopyTest, PreCopyHoldResume) {
  Start();
  if (HasFatalFailure()) return;
  PreCopyThenHold(*this, /*kill=*/false);
}

TEST_F(ContainerPreCopyTest, PreCopyHoldKillRestore) {
  Start();
  if (HasFatalFailure()) return;
  PreCopyThenHold(*this, /*kill=*/true);
}

// A lazily restored container (restore --lazy --detach) has a pager process filling its memory
// after it runs; the container's record names it, and a delete that comes before the pager is
// done waits for it to end (it does once the tree is gone): nothing of the container outlives
// its delete.
TEST_F(ContainerPreCopyTest, DeleteWaitsForTheLazyPager) {
  Start();
  if (HasFatalFailure()) return;
  ASSERT_EQ(Godwit({"--root", root_, "checkpoint", id_, "--image-path", img_}).code, 0);
  Reap();
  CliRun r = Godwit({"--root", root_, "--json", "restore", id_, "--image-path", img_, "--detach",
                     "--lazy"});
  ASSERT_EQ(r.code, 0) << r.err;
  auto j = nlohmann::json::parse(r.out, nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << r.out;
  pid_ = j.value("pid", 0);
  const pid_t pager = j.value("lazy_pager_pid", 0);
  ASSERT_GT(pager, 0) << r.out;  // 2 x 64 MiB owed: the pager is far from done
  auto state = nlohmann::json::parse(*fs::ReadFile(root_ + "/" + id_ + "/state.json"));
  EXPECT_EQ(state.value("lazyPagerPid", 0), pager);
  ASSERT_EQ(Godwit({"--root", root_, "delete", "--force", id_}).code, 0);
  char st = runtime::ProcessState(pager);
  EXPECT_TRUE(st == 0 || st == 'Z') << "pager " << pager << " still there after the delete: " << st;
  ::waitpid(pager, nullptr, 0);  // ours to reap when this test is its subreaper
  Reap();
}

// A container that is paused cannot be pre-copied (its processes cannot run the call that starts
// the tracking); nothing is left changed.
TEST_F(ContainerPreCopyTest, PausedIsRefused) {
  Start();
  if (HasFatalFailure()) return;
  ASSERT_EQ(Godwit({"--root", root_, "pause", id_}).code, 0);
  auto sink = OpenTreeDirSink(img_);
  ASSERT_OK(sink);
  auto pc = ContainerPreCopy::Start(root_, id_, **sink);
  EXPECT_FALSE(pc.ok());
  (*sink)->Abort();
  ASSERT_EQ(Godwit({"--root", root_, "resume", id_}).code, 0);
  ASSERT_OK(fs::WriteFile(StrFormat("/proc/%d/root/tmp/go", pid_), "go\n"));
  EXPECT_EQ(WaitFile("result-0").rfind("ok ", 0), 0u);
}

}  // namespace
}  // namespace godwit::container
