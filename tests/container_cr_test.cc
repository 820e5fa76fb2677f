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

#include <poll.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>

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
    CheckRestored(pid);
  }

  // After a restore of the container whose init was host pid `pid`.
  void CheckRestored(pid_t pid) {
    std::string count = StrFormat("/proc/%d/root/dev/shm/count", pid);
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

// A migration's destination makes the container's environment while the source still dumps the
// tree (restore --wait-fd: 'e', then the go byte): the same restore as Cycle's, with the
// environment made before the tree's images were there. Then the same, abandoned after 'e'
// (the migration failed): nothing of it is left.
class ContainerAhead : public ContainerCr {
 protected:
  // `godwit --debug --json restore ID --image-path IMG --detach --wait-fd 3`, its stderr read by a
  // thread (WaitFor a line), stdout to a file.
  void Start(const std::string& img) {
    int go[2], err[2];
    ASSERT_EQ(::pipe2(go, O_CLOEXEC), 0);
    ASSERT_EQ(::pipe2(err, O_CLOEXEC), 0);
    out_ = StrFormat("/tmp/godwit-test-ahead-%d", getpid());
    UniqueFd out(::open(out_.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
    ASSERT_TRUE(out.valid());
    std::vector<std::string> full = {GODWIT_BIN, "--debug", "--root", root_, "--json", "restore",
                                     id_, "--image-path", img, "--detach", "--wait-fd", "3"};
    std::vector<char*> argv;
    for (auto& a : full) argv.push_back(a.data());
    argv.push_back(nullptr);
    restore_ = ::fork();
    if (restore_ == 0) {
      int null = ::open("/dev/null", O_RDWR);
      ::dup2(null, 0);
      ::dup2(out.get(), 1);
      ::dup2(err[1], 2);
      ::dup2(go[0], 3);
      ::close_range(4, ~0U, 0);
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
    ::close(go[0]);
    ::close(err[1]);
    go_.reset(go[1]);
    err_rd_ = err[0];
    reader_ = std::thread([this] {
      char buf[4096];
      for (;;) {
        pollfd pf{err_rd_, POLLIN, 0};
        int n = ::poll(&pf, 1, 100);
        if (n == 0 && stop_) break;
        if (n <= 0) continue;
        ssize_t k = ::read(err_rd_, buf, sizeof(buf));
        std::lock_guard<std::mutex> l(mu_);
        if (k <= 0) {
          eof_ = true;
          cv_.notify_all();
          break;
        }
        err_text_.append(buf, k);
        cv_.notify_all();
      }
    });
  }
  // Until its stderr shows `what` (true) or ends (false).
  bool WaitFor(const std::string& what) {
    std::unique_lock<std::mutex> l(mu_);
    cv_.wait(l, [&] { return eof_ || err_text_.find(what) != std::string::npos; });
    return err_text_.find(what) != std::string::npos;
  }
  int Finish() {
    go_.reset();
    int st = 0;
    ::waitpid(restore_, &st, 0);
    restore_ = 0;
    stop_ = true;
    if (reader_.joinable()) reader_.join();
    ::close(err_rd_);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
  }
  void TearDown() override {
    if (restore_ > 0) Finish();
    if (!out_.empty()) ::unlink(out_.c_str());
    ContainerCr::TearDown();
  }
  // The holder: the restore's one child while the environment is made ahead.
  pid_t Holder() {
    auto kids = fs::ReadFile(StrFormat("/proc/%d/task/%d/children", restore_, restore_));
    return kids.ok() ? atoi(kids->c_str()) : 0;
  }
  // A checkpoint as a migration's destination has it when the source sends EnvReady: the
  // container's images and the early record, no tree and no container inventory yet.
  std::string CheckpointAway() {
    std::string img = tmp_.path() + "/ckpt";
    CliRun c = Godwit({"--root", root_, "checkpoint", id_, "--image-path", img});
    EXPECT_EQ(c.code, 0) << c;
    Reap();
    std::string cdir = img + "/container";
    EXPECT_OK(Sh("cp " + cdir + "/container.img " + cdir + "/container-early.img"));
    EXPECT_EQ(::rename((img + "/tree").c_str(), (img + "/tree.away").c_str()), 0);
    EXPECT_EQ(::rename((cdir + "/inventory.img").c_str(), (cdir + "/inventory.away").c_str()), 0);
    return img;
  }
  void BringBack(const std::string& img) {
    std::string cdir = img + "/container";
    ASSERT_EQ(::rename((img + "/tree.away").c_str(), (img + "/tree").c_str()), 0);
    ASSERT_EQ(::rename((cdir + "/inventory.away").c_str(), (cdir + "/inventory.img").c_str()), 0);
  }

  // A container run, checkpointed away, and its environment made ahead by a waiting restore.
  std::string RunThenAhead(pid_t* pid) {
    Run();
    if (HasFatalFailure()) return "";
    *pid = pid_;
    std::string img = CheckpointAway();
    if (HasFailure()) return "";
    Start(img);
    if (HasFatalFailure()) return "";
    EXPECT_EQ(::write(go_.get(), "e", 1), 1);
    EXPECT_TRUE(WaitFor("environment made ahead")) << err_text_;
    return img;
  }

  pid_t restore_ = 0;
  UniqueFd go_;
  int err_rd_ = -1;
  std::string out_;
  std::thread reader_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::string err_text_;
  bool eof_ = false;
  std::atomic<bool> stop_{false};
};

TEST_F(ContainerAhead, EnvironmentMadeBeforeTheTreeArrives) {
  pid_t pid = 0;
  std::string img = RunThenAhead(&pid);
  if (HasFailure()) return;
  std::string veth = runtime::HostVethName(root_, id_);
  // Made without the tree: the veth, the cgroup, and a holder whose namespaces hold its
  // address, hostname and tmpfs contents (outside the cgroup: no cgroup mount in this container
  // needs the cgroup namespace before the root makes it).
  EXPECT_TRUE(runtime::LinkExists(veth));
  auto cgs = Sh("find /sys/fs/cgroup -maxdepth 3 -name " + id_);
  ASSERT_OK(cgs);
  EXPECT_NE(*cgs, "");
  pid_t holder = Holder();
  ASSERT_GT(holder, 0);
  auto hcg = fs::ReadFile(StrFormat("/proc/%d/cgroup", holder));
  ASSERT_TRUE(hcg.ok());
  EXPECT_EQ(hcg->find(id_), std::string::npos) << *hcg;
  auto addr = Sh(StrFormat("nsenter -t %d -n ip -4 -o addr show dev eth0", holder));
  ASSERT_OK(addr);
  EXPECT_NE(addr->find(ip_ + "/24"), std::string::npos) << *addr;
  auto host = Sh(StrFormat("nsenter -t %d -u hostname", holder));
  ASSERT_OK(host);
  EXPECT_EQ(*host, "cr-" + id_ + "\n");
  EXPECT_EQ(*fs::ReadFile(StrFormat("/proc/%d/root/dev/shm/f", holder)), "before\n");
  // Quiet until the tree's own lock takes over: nothing leaves its links.
  auto rules = Sh(StrFormat("nsenter -t %d -n nft list tables", holder));
  ASSERT_OK(rules);
  EXPECT_NE(rules->find("godwit_ahead"), std::string::npos) << *rules;

  BringBack(img);
  ASSERT_EQ(::write(go_.get(), "\1", 1), 1);
  ASSERT_EQ(Finish(), 0) << err_text_;
  auto out = fs::ReadFile(out_);
  ASSERT_TRUE(out.ok());
  auto j = nlohmann::json::parse(*out, nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << *out;
  EXPECT_TRUE(j.value("environment_ahead", false)) << *out;
  EXPECT_GT(j["phases"].value("ahead_ms", 0.0), 0.0) << *out;
  EXPECT_FALSE(fs::Exists(StrFormat("/proc/%d", holder))) << "the holder is gone";
  CheckRestored(pid);
  if (HasFatalFailure()) return;
  // The environment's own quiet rules are gone (the ping in CheckRestored got its answer); its
  // emptied table is left to the caller (godwitd deletes it after the commit).
  for (const char* family : {"inet", "arp"}) {
    auto after = Sh(StrFormat("nsenter -t %d -n nft list table %s godwit_ahead", pid_, family));
    ASSERT_OK(after);
    EXPECT_EQ(after->find("drop"), std::string::npos) << *after;
  }
  // Its cgroup namespace is rooted at its cgroup (made by the root after its join).
  CliRun cg = Godwit({"--root", root_, "exec", id_, "--", "cat", "/proc/1/cgroup"});
  ASSERT_EQ(cg.code, 0) << cg;
  EXPECT_NE(cg.out.find(":/\n"), std::string::npos) << cg.out;
  for (const auto& line : fs::Split(cg.out, '\n'))
    if (!line.empty() && line.find("name=") == std::string::npos)
      EXPECT_EQ(line.substr(line.size() - 2), ":/") << cg.out;
  // proc is the container's.
  auto init = fs::ReadFile(StrFormat("/proc/%d/root/proc/1/status", pid_));
  ASSERT_TRUE(init.ok());
  EXPECT_NE(init->find(StrFormat("NSpid:\t1\n")), std::string::npos) << *init;
}

TEST_F(ContainerAhead, EnvironmentNotMadeAheadIsMadeTheUsualWay) {
  Run();
  if (HasFatalFailure()) return;
  pid_t pid = pid_;
  std::string img = CheckpointAway();
  if (HasFailure()) return;
  // No early record: making the environment ahead fails (and undoes itself).
  ASSERT_EQ(::unlink((img + "/container/container-early.img").c_str()), 0);
  Start(img);
  if (HasFatalFailure()) return;
  ASSERT_EQ(::write(go_.get(), "e", 1), 1);
  BringBack(img);
  ASSERT_EQ(::write(go_.get(), "\1", 1), 1);
  ASSERT_EQ(Finish(), 0) << err_text_;
  EXPECT_NE(err_text_.find("restoring the usual way"), std::string::npos) << err_text_;
  auto out = fs::ReadFile(out_);
  ASSERT_TRUE(out.ok());
  auto j = nlohmann::json::parse(*out, nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << *out;
  EXPECT_FALSE(j.value("environment_ahead", true)) << *out;
  CheckRestored(pid);
}

TEST_F(ContainerAhead, AbandonedAfterTheEnvironmentLeavesNothing) {
  pid_t pid = 0;
  std::string img = RunThenAhead(&pid);
  if (HasFailure()) return;
  std::string veth = runtime::HostVethName(root_, id_);
  pid_t holder = Holder();
  ASSERT_GT(holder, 0);
  EXPECT_TRUE(runtime::LinkExists(veth));
  // The migration ends otherwise: EOF on the wait fd.
  EXPECT_EQ(Finish(), 0) << err_text_;
  EXPECT_FALSE(fs::Exists(StrFormat("/proc/%d", holder)));
  EXPECT_FALSE(fs::Exists(root_ + "/" + id_));
  auto cgs = Sh("find /sys/fs/cgroup -maxdepth 3 -name " + id_);
  ASSERT_OK(cgs);
  EXPECT_EQ(*cgs, "");
  EXPECT_FALSE(runtime::LinkExists(veth)) << "deleted by the rollback";
}

}  // namespace
}  // namespace godwit::container
