// Whole-container checkpoint and restore of everything but the process tree: a real busybox
// container (runtime) with a hostname, an IP behind a veth, a firewall, limits, a disk quota
// (overlay writable layer), a tmpfs the container mounted, /dev/shm contents and a SysV shm
// segment is checkpointed (and deleted), then restored. The tree itself is the engine's: here
// a stand-in clones the root task exactly as the engine is asked to (pid 1 of a new pid ns,
// hooks inside and outside) and execs a fresh init in the restored environment, which must then
// be an ordinary runtime container (state, exec, delete).
#include <fcntl.h>
#include <linux/sched.h>
#include <sched.h>
#include <signal.h>
#include <sys/shm.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <set>

#include "common/scope_exit.h"
#include "container/checkpoint.h"
#include "container/mnt.h"
#include "container/restore.h"
#include "container/uts.h"
#include "runtime/cgroup.h"
#include "runtime/network.h"
#include "runtime/runtime.h"
#include "tests/container_test_util.h"

namespace godwit::container {
namespace {

using testing::Sh;
using testing::TempDir;

// Stands in for the engine's restore: the root task is cloned with the requested flags, builds
// its root, waits for the outside hook, then execs argv (inside the restored root).
TreeRestorer StubTree(std::vector<std::string> argv) {
  return [argv](const TreeRestoreRequest& req) -> Result<TreeRestoreResult> {
    int ready[2], go[2];
    if (::pipe2(ready, O_CLOEXEC) < 0 || ::pipe2(go, O_CLOEXEC) < 0) return Errno("pipe");
    std::vector<char*> cargv;
    for (const auto& a : argv) cargv.push_back(const_cast<char*>(a.c_str()));
    cargv.push_back(nullptr);
    struct clone_args args = {};
    args.flags = static_cast<uint64_t>(req.clone_flags);
    args.exit_signal = SIGCHLD;
    long pid = ::syscall(SYS_clone3, &args, sizeof(args));
    if (pid < 0) return Errno("clone3");
    if (pid == 0) {
      ::close(ready[0]);
      ::close(go[1]);
      const char* what = nullptr;
      int err = req.inside(&what);
      if (::write(ready[1], &err, sizeof(err)) != sizeof(err)) ::_exit(1);
      if (err) {
        if (what) (void)!::write(ready[1], what, strlen(what));
        ::_exit(1);
      }
      char c = 0;
      if (::read(go[0], &c, 1) != 1 || c != 'G') ::_exit(1);
      ::execv(cargv[0], cargv.data());
      ::_exit(127);
    }
    ::close(ready[1]);
    ::close(go[0]);
    UniqueFd r(ready[0]), g(go[1]);
    int err = -1;
    char what[256] = {};
    bool got = ::read(r.get(), &err, sizeof(err)) == sizeof(err);
    if (!got || err != 0) {
      (void)!::read(r.get(), what, sizeof(what) - 1);
      ::kill(pid, SIGKILL);
      ::waitpid(pid, nullptr, 0);
      return MakeError(ErrorKind::kGeneric, got ? err : 0, "root task: %s", what);
    }
    auto out = req.outside(pid);
    if (!out.ok()) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, nullptr, 0);
      return std::move(out).error();
    }
    if (::write(g.get(), "G", 1) != 1) return Errno("release root task");
    return TreeRestoreResult{static_cast<pid_t>(pid), 1};
  };
}

TreeDumper NoTree() {
  return [](const TreeDumpRequest& req) -> Result<TreeStats> {
    // The hooks must be callable in this order.
    TRY(req.thaw());
    TRY(req.refreeze());
    return TreeStats{};
  };
}

// Mounts as comparable lines (ids and order aside).
std::set<std::string> Mounts(pid_t pid) {
  std::set<std::string> out;
  auto t = fs::ReadFile(StrFormat("/proc/%d/mountinfo", pid));
  if (!t.ok()) return out;
  auto table = mnt::ParseMountInfo(*t);
  if (!table.ok()) return out;
  for (const auto& m : table->mounts())
    out.insert(m.mountpoint() + " " + m.fstype() + " " + m.root() + " " + m.mount_opts() + " " +
               m.super_opts());
  return out;
}

class ContainerRestore : public ::testing::Test {
 protected:
  void SetUp() override {
    x_ = 100 + getpid() % 100;
    id_ = StrFormat("gwcr%d", getpid());
    root_ = tmp_.path() + "/state";
    rootfs_ = tmp_.path() + "/rootfs";
    images_ = tmp_.path() + "/ckpt";
    ASSERT_OK(runtime::MakeBusyboxRootfs(rootfs_));
  }
  void TearDown() override {
    for (const auto& id : {id_, id_ + "b"}) (void)runtime::Delete(root_, id, true);
  }

  // A checkpoint of this test's container into images_.
  CheckpointOptions Opts() const {
    CheckpointOptions co;
    co.root = root_;
    co.id = id_;
    co.image_path = images_;
    return co;
  }

  Result<runtime::Container> StartContainer() {
    runtime::RunOptions run;
    run.rootfs = rootfs_;
    run.args = {"sleep", "1000"};
    run.hostname = "ckpt-" + std::to_string(getpid());
    run.memory = 64 << 20;
    run.pids = 32;
    run.disk = 16 << 20;
    run.ip = StrFormat("198.19.%d.10/24", x_);
    run.allow_ports = {"8080"};
    ASSIGN_OR_RETURN(runtime::Container c, runtime::CreateFromRunOptions(root_, id_, run));
    TRY(runtime::Start(root_, id_));
    return c;
  }

  // State the container holds, made from outside (deterministic: no script to wait for).
  Result<void> Populate(pid_t pid) {
    TRY(Sh(StrFormat("nsenter -t %d -m mount -t tmpfs -o size=1m,mode=1777 none /tmp", pid)));
    std::string r = StrFormat("/proc/%d/root", pid);
    TRY(fs::WriteFile(r + "/tmp/f", "tmpfs data\n"));
    TRY(fs::WriteFile(r + "/dev/shm/s", "posix shm data\n"));
    TRY(fs::WriteFile(r + "/etc/changed", "in the writable layer\n"));
    if (::unlink((r + "/etc/hosts").c_str()) < 0) return Errno("unlink hosts");
    ASSIGN_OR_RETURN(UniqueFd ipc, OpenNamespace(pid, "ipc"));
    return RunInNamespace(ipc.get(), CLONE_NEWIPC, [&]() -> Result<void> {
      shm_id_ = ::shmget(0x5151, 8192, 0600 | IPC_CREAT);
      if (shm_id_ < 0) return Errno("shmget");
      char* p = static_cast<char*>(::shmat(shm_id_, nullptr, 0));
      if (p == reinterpret_cast<char*>(-1)) return Errno("shmat");
      for (int i = 0; i < 8192; i++) p[i] = static_cast<char>(i * 7);
      ::shmdt(p);
      return Ok();
    });
  }

  std::string ShmCheck(pid_t pid) {
    auto ipc = OpenNamespace(pid, "ipc");
    if (!ipc.ok()) return "no ipc ns";
    std::string res;
    auto r = RunInNamespace(ipc->get(), CLONE_NEWIPC, [&]() -> Result<void> {
      char* p = static_cast<char*>(::shmat(shm_id_, nullptr, SHM_RDONLY));
      if (p == reinterpret_cast<char*>(-1)) return Errno("shmat %d", shm_id_);
      for (int i = 0; i < 8192; i++)
        if (p[i] != static_cast<char>(i * 7)) res = "shm differs at " + std::to_string(i);
      ::shmdt(p);
      return Ok();
    });
    return r.ok() ? res : r.error().to_string();
  }

  TempDir tmp_{"crestore"};
  int x_ = 0;
  int shm_id_ = -1;
  std::string id_, root_, rootfs_, images_;
};

TEST_F(ContainerRestore, EnvironmentRoundTrip) {
  auto c = StartContainer();
  ASSERT_OK(c);
  ASSERT_OK(Populate(c->pid));
  std::set<std::string> mounts_before = Mounts(c->pid);
  ASSERT_FALSE(mounts_before.empty());

  CheckpointOptions co = Opts();
  auto ck = Checkpoint(co, NoTree());
  ASSERT_OK(ck);
  EXPECT_TRUE(ck->record.has_layer());
  EXPECT_GE(ck->record.times().freeze_ms(), 0);
  // Without --leave-running the container is gone: id and cgroup free again. Its veth goes with
  // its network namespace, which the kernel takes down on its own a moment later: the restore
  // right after must not mind it (and the veth it makes is the only one left, below).
  EXPECT_FALSE(runtime::Container::Load(root_, id_).ok());

  RestoreOptions ro;
  ro.root = root_;
  ro.id = id_;
  ro.image_path = images_;
  auto rs = Restore(ro, StubTree({"/bin/sleep", "1000"}));
  ASSERT_OK(rs);
  pid_t pid = rs->container.pid;
  auto loaded = runtime::Container::Load(root_, id_);
  ASSERT_OK(loaded);
  EXPECT_EQ(loaded->pid, pid);
  EXPECT_EQ(loaded->CurrentStatus(), runtime::Status::kRunning);

  // Hostname, mounts, tmpfs and /dev/shm contents, the writable layer, SysV shm.
  auto utsfd = OpenNamespace(pid, "uts");
  ASSERT_OK(utsfd);
  auto u = uts::Collect(utsfd->get());
  ASSERT_OK(u);
  EXPECT_EQ(u->hostname(), "ckpt-" + std::to_string(getpid()));
  EXPECT_EQ(Mounts(pid), mounts_before);
  std::string r = StrFormat("/proc/%d/root", pid);
  EXPECT_EQ(*fs::ReadFile(r + "/tmp/f"), "tmpfs data\n");
  EXPECT_EQ(*fs::ReadFile(r + "/dev/shm/s"), "posix shm data\n");
  EXPECT_EQ(*fs::ReadFile(r + "/etc/changed"), "in the writable layer\n");
  EXPECT_FALSE(fs::Exists(r + "/etc/hosts"));
  EXPECT_TRUE(fs::Exists(r + "/etc/passwd"));
  EXPECT_EQ(ShmCheck(pid), "");
  // Limits.
  auto mem = loaded->cgroup_paths.find("memory");
  ASSERT_NE(mem, loaded->cgroup_paths.end());
  auto limit = fs::ReadFile(mem->second + "/memory.limit_in_bytes");
  if (!limit.ok()) limit = fs::ReadFile(mem->second + "/memory.max");
  ASSERT_OK(limit);
  EXPECT_EQ(fs::Trim(*limit), std::to_string(64 << 20));
  // Network: the host reaches the container's address through the recreated veth; the
  // firewall is back.
  EXPECT_OK(Sh(StrFormat("busybox ping -c 1 -W 5 198.19.%d.10", x_)));
  auto nft = Sh(StrFormat("nsenter -t %d -n nft list ruleset", pid));
  ASSERT_OK(nft);
  EXPECT_NE(nft->find("8080"), std::string::npos) << *nft;
  // An ordinary container: exec in all its namespaces, then delete leaves nothing.
  runtime::ExecOptions eo;
  eo.args = {"cat", "/tmp/f"};
  auto ex = runtime::Exec(root_, id_, eo);
  ASSERT_OK(ex);
  EXPECT_EQ(*ex, 0);
  std::string veth = loaded->host_veth;
  ASSERT_OK(runtime::Delete(root_, id_, true));
  EXPECT_FALSE(runtime::LinkExists(veth));
  for (const auto& [ctrl, path] : loaded->cgroup_paths) EXPECT_FALSE(fs::Exists(path)) << path;
}

TEST_F(ContainerRestore, BadInputLeavesNothingAndExistingUntouched) {
  auto c = StartContainer();
  ASSERT_OK(c);
  CheckpointOptions co = Opts();
  co.leave_running = true;
  co.export_file = tmp_.path() + "/export.gwx";
  auto ck = Checkpoint(co, NoTree());
  ASSERT_OK(ck);
  EXPECT_GT(ck->export_size, 0u);
  // --leave-running: still running, thawed.
  auto still = runtime::Container::Load(root_, id_);
  ASSERT_OK(still);
  EXPECT_EQ(still->CurrentStatus(), runtime::Status::kRunning);

  RestoreOptions ro;
  ro.root = root_;
  ro.id = id_;
  ro.image_path = images_;
  // Same id: kExists, the running one untouched.
  auto dup = Restore(ro, StubTree({"/bin/sleep", "1000"}));
  ASSERT_FALSE(dup.ok());
  EXPECT_EQ(dup.error().kind(), ErrorKind::kExists) << dup.error().to_string();
  EXPECT_EQ(runtime::Container::Load(root_, id_)->pid, c->pid);
  // Another id while the original holds the veth name and the address: kExists, nothing left.
  ro.id = id_ + "b";
  auto taken = Restore(ro, StubTree({"/bin/sleep", "1000"}));
  ASSERT_FALSE(taken.ok());
  EXPECT_EQ(taken.error().kind(), ErrorKind::kExists) << taken.error().to_string();
  EXPECT_FALSE(fs::Exists(root_ + "/" + ro.id));
  // A different rootfs: kBadImage.
  ASSERT_OK(runtime::Delete(root_, id_, true));
  ASSERT_OK(fs::WriteFile(rootfs_ + "/etc/extra", "x"));
  ro.id = id_;
  auto other = Restore(ro, StubTree({"/bin/sleep", "1000"}));
  ASSERT_FALSE(other.ok());
  EXPECT_EQ(other.error().kind(), ErrorKind::kBadImage) << other.error().to_string();
  EXPECT_FALSE(fs::Exists(root_ + "/" + id_));
  ::unlink((rootfs_ + "/etc/extra").c_str());
  // A damaged export: kBadImage, nothing created.
  auto data = fs::ReadFile(co.export_file);
  ASSERT_OK(data);
  std::string d = *data;
  d[d.size() / 2] ^= 1;
  ASSERT_OK(fs::WriteFile(co.export_file + ".bad", d));
  RestoreOptions imp;
  imp.root = root_;
  imp.id = id_;
  imp.import_file = co.export_file + ".bad";
  auto bad = Restore(imp, StubTree({"/bin/sleep", "1000"}));
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.error().kind(), ErrorKind::kBadImage) << bad.error().to_string();
  EXPECT_FALSE(fs::Exists(root_ + "/" + id_));
  // The intact export restores.
  imp.import_file = co.export_file;
  auto good = Restore(imp, StubTree({"/bin/sleep", "1000"}));
  ASSERT_OK(good);
  EXPECT_EQ(good->container.CurrentStatus(), runtime::Status::kRunning);
  EXPECT_FALSE(fs::Exists(root_ + "/" + id_ + "/import"));
}

}  // namespace
}  // namespace godwit::container

namespace godwit::container {
namespace {

// Cgroup directories of an id in every hierarchy this machine has.
std::vector<std::string> CgroupDirs(const std::string& id) {
  std::vector<std::string> out;
  auto ctrls = fs::ListDir("/sys/fs/cgroup");
  if (!ctrls.ok()) return out;
  for (const auto& c : *ctrls) {
    std::string d = "/sys/fs/cgroup/" + c + "/godwit/" + id;
    if (fs::Exists(d)) out.push_back(d);
  }
  return out;
}

TEST_F(ContainerRestore, TwentyCyclesLeaveNothingBehind) {
  auto c = StartContainer();
  ASSERT_OK(c);
  ASSERT_OK(Populate(c->pid));
  std::string veth = c->host_veth;
  pid_t prev = 0;  // the stand-in's init is our child: reap it once the checkpoint killed it
  for (int i = 0; i < 20; i++) {
    SCOPED_TRACE("cycle " + std::to_string(i));
    CheckpointOptions co = Opts();
    auto ck = Checkpoint(co, NoTree());
    ASSERT_OK(ck);
    if (prev > 0) (void)::waitpid(prev, nullptr, 0);  // unless Delete reaped it already
    // The veth may still be going (the kernel's, with the dead namespace): the restore right
    // after waits for it where it must.
    EXPECT_TRUE(CgroupDirs(id_).empty());
    RestoreOptions ro;
    ro.root = root_;
    ro.id = id_;
    ro.image_path = images_;
    auto rs = Restore(ro, StubTree({"/bin/sleep", "1000"}));
    ASSERT_OK(rs);
    pid_t pid = rs->container.pid;
    prev = pid;
    ASSERT_EQ(*fs::ReadFile(StrFormat("/proc/%d/root/tmp/f", pid)), "tmpfs data\n");
    ASSERT_EQ(ShmCheck(pid), "");
  }
  auto last = runtime::Container::Load(root_, id_);
  ASSERT_OK(last);
  pid_t pid = last->pid;
  ASSERT_OK(runtime::Delete(root_, id_, true));
  (void)::waitpid(pid, nullptr, 0);
  EXPECT_FALSE(runtime::LinkExists(veth));
  EXPECT_TRUE(CgroupDirs(id_).empty());
  EXPECT_FALSE(fs::Exists(StrFormat("/proc/%d", pid)));
  EXPECT_FALSE(fs::Exists(root_ + "/" + id_));
  // No mount of ours is left in this (the host's) mount namespace.
  auto mi = fs::ReadFile("/proc/self/mountinfo");
  ASSERT_OK(mi);
  EXPECT_EQ(mi->find(tmp_.path()), std::string::npos);
}

}  // namespace
}  // namespace godwit::container

namespace godwit::container {
namespace {

// A veth of the id's name still there at the restore (the previous container's: a checkpoint
// leaves it to the kernel, which removes it with the dead namespace; here its namespace is held
// by a stand-in, so it never goes by itself): the restore does not count its name or address as
// taken, waits for it (bounded), deletes it and makes its own.
TEST_F(ContainerRestore, LeftoverVethOfTheIdIsWaitedForAndReplaced) {
  auto c = StartContainer();
  ASSERT_OK(c);
  CheckpointOptions co = Opts();
  ASSERT_OK(Checkpoint(co, NoTree()));
  // The state dir went aside for the restore to remove.
  EXPECT_FALSE(fs::Exists(root_ + "/" + id_));
  auto gone = runtime::WaitHostEnd(c->host_veth, 5000);
  ASSERT_OK(gone);
  ASSERT_EQ(*gone, runtime::HostEnd::kGone);
  // The stand-in: a veth of the same name and addresses, its peer in a namespace we hold.
  int ready[2];
  ASSERT_EQ(::pipe2(ready, O_CLOEXEC), 0);
  pid_t holder = ::fork();
  ASSERT_GE(holder, 0);
  if (holder == 0) {
    char ok = ::unshare(CLONE_NEWNET) == 0 ? 'y' : 'n';
    (void)!::write(ready[1], &ok, 1);
    for (;;) ::pause();
  }
  ::close(ready[1]);
  char ok = 0;
  ASSERT_EQ(::read(ready[0], &ok, 1), 1);
  ::close(ready[0]);
  ScopeExit reap([&] {
    ::kill(holder, SIGKILL);
    ::waitpid(holder, nullptr, 0);
  });
  ASSERT_EQ(ok, 'y');
  std::string veth = c->host_veth;
  ASSERT_OK(Sh(StrFormat("ip link add %s type veth peer name eth0 netns %d && "
                         "ip addr add 198.19.%d.1/32 peer 198.19.%d.10/32 dev %s && "
                         "ip link set %s up",
                         veth.c_str(), holder, x_, x_, veth.c_str(), veth.c_str())));
  auto st = runtime::HostEndState(veth);
  ASSERT_OK(st);
  EXPECT_EQ(*st, runtime::HostEnd::kAlive);

  RestoreOptions ro;
  ro.root = root_;
  ro.id = id_;
  ro.image_path = images_;
  auto rs = Restore(ro, StubTree({"/bin/sleep", "1000"}));
  ASSERT_OK(rs);
  EXPECT_FALSE(fs::Exists(root_ + "/." + id_ + ".removed"));
  // The veth now is the restored container's: the host reaches it, and the stand-in's end is
  // gone from the holder's namespace with the old pair.
  EXPECT_EQ(rs->container.host_veth, veth);
  EXPECT_OK(Sh(StrFormat("busybox ping -c 1 -W 5 198.19.%d.10", x_)));
  auto in_holder = Sh(StrFormat("nsenter -t %d -n ip -o link show", holder));
  ASSERT_OK(in_holder);
  EXPECT_EQ(in_holder->find("eth0"), std::string::npos) << *in_holder;
  ASSERT_OK(runtime::Delete(root_, id_, true));
  EXPECT_FALSE(runtime::LinkExists(veth));
}

// A copy next to the running original: another id, another address; the host end gets the new
// id's name. Both answer on their own address.
TEST_F(ContainerRestore, CopyUnderAnotherIdAndAddress) {
  auto c = StartContainer();
  ASSERT_OK(c);
  ASSERT_OK(Populate(c->pid));
  CheckpointOptions co = Opts();
  co.leave_running = true;
  ASSERT_OK(Checkpoint(co, NoTree()));
  RestoreOptions ro;
  ro.root = root_;
  ro.id = id_ + "b";
  ro.image_path = images_;
  ro.ip = StrFormat("198.19.%d.11", x_);
  auto rs = Restore(ro, StubTree({"/bin/sleep", "1000"}));
  ASSERT_OK(rs);
  EXPECT_NE(rs->container.host_veth, c->host_veth);
  EXPECT_EQ(rs->container.net.address, ro.ip);
  EXPECT_TRUE(runtime::LinkExists(rs->container.host_veth));
  EXPECT_OK(Sh(StrFormat("busybox ping -c 1 -W 5 198.19.%d.10", x_)));
  EXPECT_OK(Sh(StrFormat("busybox ping -c 1 -W 5 198.19.%d.11", x_)));
  EXPECT_EQ(*fs::ReadFile(StrFormat("/proc/%d/root/tmp/f", rs->container.pid)), "tmpfs data\n");
  ASSERT_OK(runtime::Delete(root_, ro.id, true));
  EXPECT_FALSE(runtime::LinkExists(rs->container.host_veth));
  EXPECT_TRUE(runtime::LinkExists(c->host_veth));  // the original is untouched
}

}  // namespace
}  // namespace godwit::container
