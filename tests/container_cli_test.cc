// `godwit checkpoint` end to end through the binary: a busybox container (runtime) is frozen,
// its namespaces and its process tree (engine) dumped, then deleted or left running; the export
// file unpacks to the same image sets. `godwit restore ID` refuses an existing id and a damaged
// export with the documented exit codes and leaves nothing behind.
#include <fcntl.h>
#include <signal.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>

#include <nlohmann/json.hpp>

#include "container/archive.h"
#include "container/checkpoint.h"
#include "container/mnt.h"
#include "container/ns.h"
#include "proto/container.pb.h"
#include "runtime/network.h"
#include "runtime/runtime.h"
#include "runtime/storage.h"
#include "tests/container_test_util.h"

#ifndef CLOSE_RANGE_UNSHARE
#define CLOSE_RANGE_UNSHARE 2
#endif

namespace godwit::container {
namespace {

using testing::CliRun;
using testing::Godwit;
using testing::TempDir;

class ContainerCli : public ::testing::Test {
 protected:
  void SetUp() override {
    id_ = StrFormat("gwcli%d", getpid());
    root_ = tmp_.path() + "/state";
    rootfs_ = tmp_.path() + "/rootfs";
    ASSERT_OK(runtime::MakeBusyboxRootfs(rootfs_));
  }
  void TearDown() override { (void)runtime::Delete(root_, id_, true); }

  void RunContainer() {
    CliRun r = Godwit({"--root", root_, "run", "--rootfs", rootfs_, "--name", id_, "--detach",
                       "--hostname", "cli-" + id_, "--memory", "64M", "--disk", "16M", "--ip",
                       StrFormat("198.19.%d.20/24", 100 + getpid() % 100), "--", "sleep", "1000"});
    ASSERT_EQ(r.code, 0) << r;
  }

  TempDir tmp_{"ccli"};
  std::string id_, root_, rootfs_;
};

TEST_F(ContainerCli, CheckpointDeletesThenLeaveRunningKeepsRunning) {
  RunContainer();
  std::string img = tmp_.path() + "/img", exp = tmp_.path() + "/c.gwx";
  CliRun r = Godwit({"--root", root_, "--json", "checkpoint", id_, "--image-path", img, "--export",
                     exp, "--compress", "zstd"});
  ASSERT_EQ(r.code, 0) << r;
  auto j = nlohmann::json::parse(r.out, nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << r.out;
  EXPECT_EQ(j["processes"], 1);
  EXPECT_TRUE(j["writable_layer"].get<bool>());
  EXPECT_GT(j["frozen_ms"].get<double>(), 0);
  EXPECT_GT(j["export_bytes"].get<uint64_t>(), 0u);
  // Deleted: the id is free, its veth gone.
  EXPECT_FALSE(runtime::Container::Load(root_, id_).ok());
  // Both image sets are complete, and the export unpacks to the same.
  auto cset = images::ImageSet::Open(img + "/container");
  ASSERT_OK(cset);
  ASSERT_OK(images::ImageSet::Open(img + "/tree"));
  // `godwit inspect` takes the checkpoint directory as a whole.
  CliRun ins = Godwit({"inspect", img});
  EXPECT_EQ(ins.code, 0) << ins;
  EXPECT_NE(ins.out.find("2 image sets (container, tree): complete"), std::string::npos) << ins;
  // zstd ran after the kill (its own phase, outside the frozen time), and the tree's page image
  // holds compressed chunks: the raw pages written while frozen were compressed afterwards.
  EXPECT_GT(j["phases"]["compress_ms"].get<double>(), 0);
  EXPECT_LE(j["frozen_ms"].get<double>() + j["phases"]["compress_ms"].get<double>(),
            j["total_ms"].get<double>() + 0.01);
  {
    uint64_t zstd_chunks = 0;
    for (const auto& e : std::filesystem::directory_iterator(img + "/tree")) {
      std::string name = e.path().filename();
      if (name.rfind("pages-", 0) != 0) continue;
      auto pages = images::BlobReader::OpenFile(e.path(), name, /*verified=*/false);
      ASSERT_OK(pages);
      ASSERT_OK((*pages)->VerifyChunks());
      zstd_chunks += (*pages)->stats().zstd_chunks;
    }
    EXPECT_GT(zstd_chunks, 0u);
  }
  img::ContainerCheckpoint rec;
  ASSERT_OK(cset->ReadOne(kContainerImage, &rec));
  EXPECT_EQ(rec.id(), id_);
  // The veth goes with the dead network namespace: the kernel removes it shortly after the
  // checkpoint (which does not wait for that); nothing is left once it has. Woken by the
  // kernel's notifications, bounded.
  auto veth = runtime::WaitHostEnd(rec.host_veth(), 5000);
  ASSERT_OK(veth);
  EXPECT_EQ(*veth, runtime::HostEnd::kGone) << rec.host_veth();
  std::string unpacked = tmp_.path() + "/unpacked";
  ASSERT_OK(archive::Import(exp, unpacked));
  ASSERT_OK(images::ImageSet::Open(unpacked + "/container"));
  ASSERT_OK(images::ImageSet::Open(unpacked + "/tree"));

  // --leave-running: a second container of the same id is checkpointed twice and runs on.
  RunContainer();
  for (int i = 0; i < 2; i++) {
    CliRun lr = Godwit({"--root", root_, "checkpoint", id_, "--image-path",
                        tmp_.path() + "/img-lr" + std::to_string(i), "--leave-running"});
    ASSERT_EQ(lr.code, 0) << lr;
    auto c = runtime::Container::Load(root_, id_);
    ASSERT_OK(c);
    EXPECT_EQ(c->CurrentStatus(), runtime::Status::kRunning);
  }

  // restore ID: an existing id is refused (exit 4) and the running container untouched.
  auto before = runtime::Container::Load(root_, id_);
  ASSERT_OK(before);
  CliRun dup = Godwit({"--root", root_, "restore", id_, "--image-path", img});
  EXPECT_EQ(dup.code, 4) << dup;
  EXPECT_EQ(runtime::Container::Load(root_, id_)->pid, before->pid);
  EXPECT_EQ(runtime::Container::Load(root_, id_)->CurrentStatus(), runtime::Status::kRunning);
  // A damaged export: exit 5, nothing created.
  auto data = fs::ReadFile(exp);
  ASSERT_OK(data);
  std::string d = *data;
  d[d.size() / 3] ^= 0x10;
  ASSERT_OK(fs::WriteFile(exp + ".bad", d));
  CliRun bad = Godwit({"--root", root_, "restore", id_ + "x", "--import", exp + ".bad"});
  EXPECT_EQ(bad.code, 5) << bad;
  EXPECT_FALSE(fs::Exists(root_ + "/" + id_ + "x"));
}

// The phase report of a real checkpoint and restore: every phase is there, none is negative,
// the phases add up to no more than their whole, and the frozen part is within the total.
double Sum(const nlohmann::json& j) {
  double s = 0;
  for (const auto& [k, v] : j.items())
    if (v.is_number()) s += v.get<double>();
  return s;
}

void ExpectPhases(const nlohmann::json& ph, const std::vector<std::string>& keys) {
  for (const auto& k : keys) {
    ASSERT_TRUE(ph.contains(k) && ph[k].is_number()) << k << " in " << ph.dump();
    EXPECT_GE(ph[k].get<double>(), 0) << k;
  }
}

TEST_F(ContainerCli, CheckpointAndRestoreReportConsistentPhases) {
  RunContainer();
  auto before = runtime::Container::Load(root_, id_);
  ASSERT_OK(before);
  std::string img = tmp_.path() + "/img";
  CliRun r = Godwit({"--root", root_, "--json", "checkpoint", id_, "--image-path", img});
  ASSERT_EQ(r.code, 0) << r;
  // The killed init was ours to reap (the test process is a subreaper): its pid is free again.
  ::waitpid(before->pid, nullptr, 0);
  auto j = nlohmann::json::parse(r.out, nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << r.out;
  const double eps = 0.01;  // ms: rounding between separately taken clock readings
  const auto& cp = j["phases"];
  ExpectPhases(cp, {"prepare_ms", "freeze_ms", "collect_ms", "tree_ms", "write_ms", "release_ms",
                    "frozen_ms", "downtime_ms", "export_ms", "total_ms"});
  ExpectPhases(cp["collect"],
               {"userns_ms", "uts_ms", "ipc_ms", "net_ms", "mnt_ms", "layer_ms", "rootfs_ms"});
  ExpectPhases(cp["tree"], {"setup_ms", "seize_ms", "memory_ms", "rest_ms", "cgroup_hooks_ms"});
  const double total = cp["total_ms"], frozen = cp["frozen_ms"];
  EXPECT_GT(frozen, 0);
  EXPECT_LE(frozen, total);
  // Downtime: from the freeze until the images are complete (before the kill).
  const double downtime = cp["downtime_ms"];
  EXPECT_LE(downtime, cp["freeze_ms"].get<double>() + frozen + eps);
  EXPECT_LE(cp["freeze_ms"].get<double>() + cp["collect_ms"].get<double>() +
                cp["tree_ms"].get<double>() + cp["write_ms"].get<double>(),
            downtime + eps);
  EXPECT_EQ(j["frozen_ms"].get<double>(), frozen);
  EXPECT_EQ(j["total_ms"].get<double>(), total);
  // The container had its own uts, ipc, net and mount namespaces: each was collected.
  for (const char* k : {"uts_ms", "ipc_ms", "net_ms", "mnt_ms"})
    EXPECT_GT(cp["collect"][k].get<double>(), 0) << k;
  EXPECT_LE(Sum(cp["collect"]), cp["collect_ms"].get<double>() + eps);
  EXPECT_LE(Sum(cp["tree"]), cp["tree_ms"].get<double>() + eps);
  EXPECT_GT(cp["tree_ms"].get<double>(), 0);
  // frozen = collect + tree + write + release; with prepare, freeze and export: the total.
  double frozen_parts = cp["collect_ms"].get<double>() + cp["tree_ms"].get<double>() +
                        cp["write_ms"].get<double>() + cp["release_ms"].get<double>();
  EXPECT_LE(frozen_parts, frozen + eps);
  EXPECT_GE(frozen_parts, frozen * 0.9);  // no large unaccounted gap
  EXPECT_LE(frozen_parts + cp["prepare_ms"].get<double>() + cp["freeze_ms"].get<double>() +
                cp["export_ms"].get<double>(),
            total + eps);

  CliRun rr = Godwit({"--root", root_, "--json", "restore", id_, "--image-path", img, "--detach"});
  ASSERT_EQ(rr.code, 0) << rr;
  auto rj = nlohmann::json::parse(rr.out, nullptr, false);
  ASSERT_FALSE(rj.is_discarded()) << rr.out;
  const auto& rp = rj["phases"];
  ExpectPhases(rp, {"import_ms", "prepare_ms", "cgroup_ms", "plan_ms", "root_ms", "rootfs_wait_ms",
                    "env_ms", "cgroup_join_ms", "tree_ms", "running_ms", "finish_ms", "total_ms"});
  ExpectPhases(rp["tree"], {"memory_ms", "rest_ms"});
  const double rtotal = rp["total_ms"], running = rp["running_ms"];
  EXPECT_EQ(rj["total_ms"].get<double>(), rtotal);
  EXPECT_GT(running, 0);
  EXPECT_LE(running, rtotal);
  EXPECT_GT(rp["tree_ms"].get<double>(), 0);
  EXPECT_GT(rp["env_ms"].get<double>(), 0);
  EXPECT_LE(Sum(rp["tree"]), rp["tree_ms"].get<double>() + eps);
  double until_running = 0;
  for (const char* k : {"import_ms", "prepare_ms", "cgroup_ms", "plan_ms", "root_ms",
                        "rootfs_wait_ms", "env_ms", "cgroup_join_ms", "tree_ms"})
    until_running += rp[k].get<double>();
  EXPECT_LE(until_running, running + eps);
  EXPECT_GE(until_running, running * 0.9);
  EXPECT_LE(until_running + rp["finish_ms"].get<double>(), rtotal + eps);
  // And it runs again: an ordinary container under the same id.
  auto after = runtime::Container::Load(root_, id_);
  ASSERT_OK(after);
  EXPECT_EQ(after->CurrentStatus(), runtime::Status::kRunning);
  ASSERT_OK(runtime::Delete(root_, id_, true));
  ::waitpid(after->pid, nullptr, 0);
}

// The writable-layer walk guided by the overlay's upper dir (what checkpoint does with the
// runtime's storage) finds exactly what the walk of the whole merged tree finds: new files deep in
// new directories, a changed directory mode, a new symlink, removed files and directories.
std::vector<std::string> LayerRecords(const images::ImageSet& set) {
  std::vector<std::string> out;
  auto r = set.OpenImage(mnt::kLayerImage);
  if (!r.ok()) return {"error: " + r.error().to_string()};
  img::TmpfsEntry e;
  for (;;) {
    auto more = r->Next(&e);
    if (!more.ok()) return {"error: " + more.error().to_string()};
    if (!*more) break;
    e.clear_atime_ns();
    out.push_back(e.ShortDebugString());
  }
  return out;
}

TEST_F(ContainerCli, LayerWalkGuidedByTheUpperDirFindsWhatTheFullWalkFinds) {
  RunContainer();
  CliRun x = Godwit({"--root", root_, "exec", id_, "--", "sh", "-c",
                     "echo new > /etc/hostname-new && rm /bin/ls && mkdir -p /usr/deep/x && "
                     "echo data > /usr/deep/x/f && chmod 700 /sbin && rm -rf /root && "
                     "ln -s /x /etc/lnk"});
  ASSERT_EQ(x.code, 0) << x;
  auto c = runtime::Container::Load(root_, id_);
  ASSERT_OK(c);
  ASSERT_FALSE(c->storage_dir.empty());
  // The guided walk applies: the storage's upper is the container's root overlay's upperdir.
  auto mi = fs::ReadFile(StrFormat("/proc/%d/mountinfo", c->pid));
  ASSERT_OK(mi);
  EXPECT_NE(mi->find("upperdir=" + runtime::StorageUpper(c->storage_dir) + ","), std::string::npos)
      << *mi;
  std::vector<std::string> runs[2];
  for (int guided = 0; guided < 2; guided++) {
    std::string dir = tmp_.path() + StrFormat("/layer%d", guided);
    auto set = testing::DumpToDir(dir, [&](images::Sink& s) -> Result<void> {
      std::string upper = guided ? runtime::StorageUpper(c->storage_dir) : "";
      ASSIGN_OR_RETURN(bool has, mnt::DumpLayer(c->pid, c->rootfs, s,
                                                images::Compression::kNone, upper));
      if (!has) return Err("no layer");
      return Ok();
    });
    ASSERT_OK(set);
    runs[guided] = LayerRecords(*set);
  }
  EXPECT_EQ(runs[0], runs[1]);
  std::string all;
  for (const auto& r : runs[1]) all += r + "\n";
  for (const char* p : {"etc/hostname-new", "usr/deep/x/f", "bin/ls", "etc/lnk", "\"sbin\"",
                        "\"root\""})
    EXPECT_NE(all.find(p), std::string::npos) << p << " in\n" << all;
}

// RunHere (what the uts, ipc and net dumps and restores use instead of a thread per call) runs
// its function inside the other namespace on the calling thread and brings the thread back, also
// when the function fails.
TEST(ContainerNsHere, RunsInTheNamespaceAndComesBack) {
  testing::NsHolder other;
  ASSERT_OK(other.Start(CLONE_NEWUTS, [] { return ::sethostname("gw-here", 7) < 0 ? 1 : 0; }));
  auto fd = OpenNamespace(other.pid(), "uts");
  ASSERT_OK(fd);
  struct utsname before, inside, after;
  ASSERT_EQ(::uname(&before), 0);
  ASSERT_OK(RunHere(fd->get(), CLONE_NEWUTS, [&]() -> Result<void> {
    if (::uname(&inside) < 0) return Errno("uname");
    return Ok();
  }));
  EXPECT_STREQ(inside.nodename, "gw-here");
  ASSERT_EQ(::uname(&after), 0);
  EXPECT_STREQ(after.nodename, before.nodename);
  auto failed = RunHere(fd->get(), CLONE_NEWUTS, [] { return Err("fails inside"); });
  EXPECT_FALSE(failed.ok());
  ASSERT_EQ(::uname(&after), 0);
  EXPECT_STREQ(after.nodename, before.nodename);
  EXPECT_FALSE(RunHere(fd->get(), CLONE_NEWNS, [] { return Ok(); }).ok());
}

TEST_F(ContainerCli, CheckpointOfUnknownIdIsNotFound) {
  CliRun r = Godwit({"--root", root_, "checkpoint", "nosuch", "--image-path", tmp_.path() + "/x"});
  EXPECT_EQ(r.code, 3) << r;
  CliRun u = Godwit({"--root", root_, "checkpoint", "nosuch"});
  EXPECT_EQ(u.code, 2) << u;
}

}  // namespace
}  // namespace godwit::container
