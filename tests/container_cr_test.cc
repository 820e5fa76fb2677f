// A whole busybox container through the binary: `godwit run --detach` (hostname, memory, pids and
// CPU limits, IP behind a veth, a counter writing to a tmpfs, a tmpfs the container mounted on
// /tmp), `checkpoint` (deleted), `restore ID`: the same pids (init is pid 1 inside), hostname,
// address, tmpfs contents (/dev/shm and /tmp), limit values, the counter carries on, and
// state/exec/kill/delete work on the restored container. Five cycles leave nothing behind (no
// veth, cgroup, process, mount). TCP connections: container_tcp_test.cc.
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <nlohmann/json.hpp>

#include "runtime/network.h"
#include "runtime/runtime.h"
#include "tests/container_test_util.h"

namespace godwit::container {
namespace {

using testing::Sh;
using testing::CliRun;
using testing::Godwit;
using testing::ReadInt;
using testing::WaitAbove;
using testing::Knob;
using testing::TempDir;

class ContainerCr : public ::testing::Test {
 protected:
  void SetUp() override {
    id_ = StrFormat("gwccr%d", getpid());
    ip_ = StrFormat("198.19.%d.50", getpid() % 100);
    root_ = tmp_.path() + "/state";
    rootfs_ = tmp_.path() + "/rootfs";
    ASSERT_OK(runtime::MakeBusyboxRootfs(rootfs_));
  }
  void TearDown() override {
    (void)runtime::Delete(root_, id_, true);
    Reap();
  }
  // The inits are reparented to us (the test main is a subreaper): reap them by pid.
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

  void Run() {
    CliRun r = Godwit({"--root", root_, "run", "--rootfs", rootfs_, "--name", id_, "--detach",
                       "--hostname", "cr-" + id_, "--memory", "48M", "--pids", "40", "--cpus",
                       "0.5", "--cpu-shares", "512", "--ip", ip_ + "/24", "--", "sh", "-c",
                       "mount -t tmpfs -o size=4m tmpfs /tmp && echo in-tmp > /tmp/t || exit 1; "
                       "echo before > /dev/shm/f; i=0; while true; do i=$((i+1)); "
                       "echo $i > /dev/shm/count; usleep 20000; done"},
                      false);
    ASSERT_EQ(r.code, 0) << r.out;
    pid_ = StatePid();
    ASSERT_GT(pid_, 0);
    ASSERT_GT(WaitAbove(StrFormat("/proc/%d/root/dev/shm/count", pid_), 2), 2);
  }

  // Checkpoint (the container is deleted), then restore; checks what must be the same.
  void Cycle() {
    pid_t pid = pid_;
    std::string count = StrFormat("/proc/%d/root/dev/shm/count", pid);
    std::string img = tmp_.path() + "/ckpt";
    (void)fs::RemoveAll(img);
    CliRun c = Godwit({"--root", root_, "--json", "checkpoint", id_, "--image-path", img});
    ASSERT_EQ(c.code, 0) << c.out;
    auto cj = nlohmann::json::parse(c.out, nullptr, false);
    ASSERT_FALSE(cj.is_discarded()) << c.out;
    frozen_ms_.push_back(cj.value("frozen_ms", 0.0));
    Reap();
    ASSERT_NE(Godwit({"--root", root_, "state", id_}).code, 0);
    // The counter's last value is in the checkpoint's tmpfs image: read it after the restore.
    CliRun r = Godwit({"--root", root_, "restore", id_, "--image-path", img, "--detach"});
    ASSERT_EQ(r.code, 0) << r.out;
    pid_ = StatePid();
    ASSERT_EQ(pid_, pid) << "same host pid";
    auto st = fs::ReadFile(StrFormat("/proc/%d/status", pid));
    ASSERT_TRUE(st.ok());
    EXPECT_NE(st->find(StrFormat("NSpid:\t%d\t1\n", pid)), std::string::npos) << *st;
    int restored = ReadInt(count);
    ASSERT_GT(restored, 2);
    EXPECT_GT(WaitAbove(count, restored), restored) << "the counter carries on";
    EXPECT_EQ(*fs::ReadFile(StrFormat("/proc/%d/root/dev/shm/f", pid)), "before\n");
    EXPECT_EQ(*fs::ReadFile(StrFormat("/proc/%d/root/tmp/t", pid)), "in-tmp\n");
    auto mi = fs::ReadFile(StrFormat("/proc/%d/mountinfo", pid));
    ASSERT_TRUE(mi.ok());
    EXPECT_NE(mi->find(" /tmp rw,"), std::string::npos) << *mi;
    EXPECT_NE(mi->find("size=4096k"), std::string::npos) << *mi;
    // The limits, as the kernel holds them (v1 knobs here; cgroup2's where that is the layout).
    EXPECT_EQ(Knob(pid, "memory", "memory.limit_in_bytes", "memory.max"), std::to_string(48 << 20));
    EXPECT_EQ(Knob(pid, "pids", "pids.max", "pids.max"), "40");
    std::string quota = Knob(pid, "cpu", "cpu.cfs_quota_us", "cpu.max");
    EXPECT_TRUE(quota == "50000" || quota == "50000 100000") << quota;
    std::string shares = Knob(pid, "cpu", "cpu.shares", "cpu.weight");
    EXPECT_TRUE(shares == "512" || shares == "20") << shares;
    auto host = Sh(StrFormat("nsenter -t %d -u hostname", pid));
    ASSERT_OK(host);
    EXPECT_EQ(*host, "cr-" + id_ + "\n");
    auto addr = Sh(StrFormat("nsenter -t %d -n ip -4 -o addr show dev eth0", pid));
    ASSERT_OK(addr);
    EXPECT_NE(addr->find(ip_ + "/24"), std::string::npos) << *addr;
    EXPECT_OK(Sh("busybox ping -c 1 -W 2 " + ip_));
    auto cg = fs::ReadFile(StrFormat("/proc/%d/cgroup", pid));
    ASSERT_TRUE(cg.ok());
    EXPECT_NE(cg->find(id_), std::string::npos) << *cg;
  }

  TempDir tmp_{"ccr"};
  std::string id_, ip_, root_, rootfs_;
  pid_t pid_ = 0;
  std::vector<double> frozen_ms_;
};

TEST_F(ContainerCr, CheckpointDeleteRestoreThenOrdinaryContainer) {
  Run();
  Cycle();
  if (HasFatalFailure()) return;
  CliRun e = Godwit({"--root", root_, "exec", id_, "--", "cat", "/dev/shm/f"});
  EXPECT_EQ(e.code, 0);
  EXPECT_EQ(e.out, "before\n");
  EXPECT_EQ(Godwit({"--root", root_, "kill", id_, "KILL"}).code, 0);
  int st = 0;
  ASSERT_EQ(::waitpid(pid_, &st, 0), pid_);
  pid_ = 0;
  EXPECT_TRUE(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
  EXPECT_EQ(Godwit({"--root", root_, "delete", id_}).code, 0);
  RecordProperty("frozen_ms", StrFormat("%.1f", frozen_ms_.empty() ? 0 : frozen_ms_[0]));
}

TEST_F(ContainerCr, FiveCyclesLeaveNothingBehind) {
  Run();
  std::string veth = runtime::HostVethName(root_, id_);
  for (int i = 0; i < 5; i++) {
    Cycle();
    if (HasFatalFailure()) return;
  }
  pid_t pid = pid_;
  ASSERT_EQ(Godwit({"--root", root_, "delete", "-f", id_}).code, 0);
  Reap();
  EXPECT_FALSE(fs::Exists(StrFormat("/proc/%d", pid)));
  EXPECT_FALSE(runtime::LinkExists(veth));
  auto cgs = Sh("find /sys/fs/cgroup -maxdepth 3 -name " + id_);
  ASSERT_OK(cgs);
  EXPECT_EQ(*cgs, "");
  // Other tests mount in parallel: only this test's paths must be gone.
  auto mounts = fs::ReadFile("/proc/self/mountinfo");
  ASSERT_TRUE(mounts.ok());
  EXPECT_EQ(mounts->find(tmp_.path()), std::string::npos) << *mounts;
  EXPECT_EQ(mounts->find(id_), std::string::npos) << *mounts;
  std::string ms;
  for (double f : frozen_ms_) ms += StrFormat("%.1f ", f);
  RecordProperty("frozen_ms", ms);
  printf("frozen ms per checkpoint: %s\n", ms.c_str());
}

}  // namespace
}  // namespace godwit::container
