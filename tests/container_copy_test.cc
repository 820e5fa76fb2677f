// A container's processes get back their pids inside its pid namespace, not necessarily their
// host pids: a checkpoint taken with --leave-running restores as a copy under another id and
// address while the original runs on (both count, the pids inside are the same in both, the host
// pids differ), and a restore succeeds while a host process holds a dumped host pid. Through the
// binary, as an operator would (docs/container.md, "A copy").
#include <fcntl.h>
#include <linux/sched.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <map>
#include <optional>
#include <nlohmann/json.hpp>

#include "runtime/network.h"
#include "runtime/runtime.h"
#include "tests/container_test_util.h"

namespace godwit::container {
namespace {

using testing::Sh;
using testing::ReadInt;
using testing::WaitAbove;
using testing::CliRun;
using testing::Godwit;
using testing::TempDir;

std::string StatusField(pid_t pid, const std::string& key) {
  auto f = fs::ReadFile(StrFormat("/proc/%d/status", pid));
  if (!f.ok()) return "";
  std::optional<std::string> t = "\n" + *f;  // Name is the first line
  size_t at = t->find("\n" + key + ":");
  if (at == std::string::npos) return "";
  size_t b = at + key.size() + 2, e = t->find('\n', b);
  return fs::Trim(t->substr(b, e - b));
}

// NSpid as numbers, outermost (host) first.
std::vector<pid_t> NsPids(pid_t pid) {
  std::vector<pid_t> out;
  for (const auto& s : fs::Split(StatusField(pid, "NSpid"), '\t'))
    if (!s.empty()) out.push_back(atoi(s.c_str()));
  return out;
}

class ContainerCopy : public ::testing::Test {
 protected:
  void SetUp() override {
    id_ = StrFormat("gwcp%d", getpid());
    ip_ = StrFormat("198.19.%d.70", getpid() % 100);
    ip2_ = StrFormat("198.19.%d.71", getpid() % 100);
    root_ = tmp_.path() + "/state";
    rootfs_ = tmp_.path() + "/rootfs";
    ASSERT_OK(runtime::MakeBusyboxRootfs(rootfs_));
  }
  void TearDown() override {
    for (const auto& id : {id_, id_ + "b"}) (void)runtime::Delete(root_, id, true);
    for (pid_t p : reap_) ::waitpid(p, nullptr, 0);
    for (pid_t p : placeholders_) {
      ::kill(p, SIGKILL);
      ::waitpid(p, nullptr, 0);
    }
  }
  pid_t StatePid(const std::string& id) {
    CliRun s = Godwit({"--root", root_, "state", id});
    auto j = nlohmann::json::parse(s.out, nullptr, false);
    if (s.code != 0 || j.is_discarded()) return 0;
    return j.value("pid", 0);
  }
  // The long-lived processes of a container (its init and its two sleeps, not the counter's
  // short-lived usleeps): pid inside -> host pid.
  std::map<pid_t, pid_t> Stable(const std::string& id) {
    std::map<pid_t, pid_t> out;
    CliRun r = Godwit({"--root", root_, "ps", "--format", "json", id});
    auto j = nlohmann::json::parse(r.out, nullptr, false);
    if (r.code != 0 || !j.is_array()) return out;
    pid_t init = StatePid(id);
    for (pid_t p : j.get<std::vector<pid_t>>()) {
      auto ns = NsPids(p);
      if (ns.size() != 2) continue;
      if (p == init || StatusField(p, "Name") == "sleep") out[ns[1]] = p;
    }
    return out;
  }

  void Run() {
    std::vector<std::string> args = {"--root", root_, "run", "--rootfs", rootfs_, "--name", id_,
                                     "--detach", "--hostname", "cp-" + id_, "--memory", "48M",
                                     "--ip", ip_ + "/24"};
    if (userns_) args.push_back("--userns");
    for (const char* a : {"--", "sh", "-c",
                          "sleep 1000 & sleep 1000 & i=0; while true; do i=$((i+1)); "
                          "echo $i > /dev/shm/count; usleep 20000; done"})
      args.push_back(a);
    CliRun r = Godwit(args, false);
    ASSERT_EQ(r.code, 0) << r.out;
    init_ = StatePid(id_);
    ASSERT_GT(init_, 0);
    reap_.push_back(init_);
    ASSERT_GT(WaitAbove(StrFormat("/proc/%d/root/dev/shm/count", init_), 2), 2);
    // Both sleeps forked (the counter runs after them) and exec'd (named sleep): bounded poll.
    auto end = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (Stable(id_).size() < 3 && std::chrono::steady_clock::now() < end) ::usleep(10000);
    ASSERT_EQ(Stable(id_).size(), 3u);
  }

  // A process of ours holding host pid `pid` (clone3 set_tid), or 0 when it cannot be had.
  pid_t Occupy(pid_t pid) {
    struct clone_args args = {};
    args.exit_signal = SIGCHLD;
    args.set_tid = reinterpret_cast<uint64_t>(&pid);
    args.set_tid_size = 1;
    long got = ::syscall(SYS_clone3, &args, sizeof(args));
    if (got == 0) {
      for (;;) ::pause();
    }
    if (got < 0) return 0;
    placeholders_.push_back(static_cast<pid_t>(got));
    return static_cast<pid_t>(got);
  }

  bool NothingLeft(const std::string& id, const std::string& veth) {
    bool ok = true;
    if (runtime::LinkExists(veth)) {
      ADD_FAILURE() << "veth " << veth << " left";
      ok = false;
    }
    auto cgs = Sh("find /sys/fs/cgroup -maxdepth 3 -name " + id);
    if (!cgs.ok() || !cgs->empty()) {
      ADD_FAILURE() << "cgroups left: " << (cgs.ok() ? *cgs : cgs.error().to_string());
      ok = false;
    }
    if (fs::Exists(root_ + "/" + id)) {
      ADD_FAILURE() << "state of " << id << " left";
      ok = false;
    }
    return ok;
  }

  TempDir tmp_{"ccopy"};
  std::string id_, ip_, ip2_, root_, rootfs_;
  pid_t init_ = 0;
  bool userns_ = false;
  bool copy_userns_differs_ = false;
  std::vector<pid_t> reap_, placeholders_;

  void CopyNextToOriginal();
  void ThreadsCopy();

  // Thread ids of pid: inside (the innermost NSpid) -> host.
  static std::map<pid_t, pid_t> Tids(pid_t pid) {
    std::map<pid_t, pid_t> out;
    auto tasks = fs::ListDir(StrFormat("/proc/%d/task", pid));
    if (!tasks.ok()) return out;
    for (const auto& t : *tasks) {
      pid_t tid = atoi(t.c_str());
      auto st = fs::ReadFile(StrFormat("/proc/%d/task/%d/status", pid, tid));
      if (!st.ok()) continue;
      size_t at = st->find("\nNSpid:");
      if (at == std::string::npos) continue;
      auto ns = fs::Split(fs::Trim(st->substr(at + 8, st->find('\n', at + 1) - at - 8)), '\t');
      if (!ns.empty()) out[atoi(ns.back().c_str())] = tid;
    }
    return out;
  }
};

TEST_F(ContainerCopy, LeaveRunningCopyUnderAnotherIdAndAddress) { CopyNextToOriginal(); }

// With its own user namespace (single-threaded processes: docs/container.md): the processes
// are forked before they join it, so the same fallback applies.
TEST_F(ContainerCopy, UsernsLeaveRunningCopyUnderAnotherIdAndAddress) {
  userns_ = true;
  CopyNextToOriginal();
}

void ContainerCopy::CopyNextToOriginal() {
  Run();
  if (HasFatalFailure()) return;
  std::string img = tmp_.path() + "/ckpt";
  CliRun c = Godwit({"--root", root_, "checkpoint", id_, "--image-path", img, "--leave-running"});
  ASSERT_EQ(c.code, 0) << c.out;
  std::map<pid_t, pid_t> orig = Stable(id_);
  ASSERT_EQ(orig.size(), 3u);
  ASSERT_EQ(orig.count(1), 1u);
  std::string veth = runtime::HostVethName(root_, id_);

  std::string copy = id_ + "b";
  CliRun r = Godwit({"--root", root_, "--json", "restore", copy, "--image-path", img, "--detach",
                     "--ip", ip2_ + "/24"});
  ASSERT_EQ(r.code, 0) << r.out;
  pid_t cp = StatePid(copy);
  ASSERT_GT(cp, 0);
  reap_.push_back(cp);
  // The report names the copy's real host pid.
  auto rj = nlohmann::json::parse(r.out, nullptr, false);
  ASSERT_FALSE(rj.is_discarded()) << r.out;
  EXPECT_NE(r.out.find(std::to_string(cp)), std::string::npos) << r.out;
  // Both run; the host pids differ, the pids inside are the same.
  EXPECT_EQ(StatePid(id_), init_);
  EXPECT_NE(cp, init_);
  EXPECT_EQ(NsPids(cp), (std::vector<pid_t>{cp, 1}));
  std::map<pid_t, pid_t> dup = Stable(copy);
  ASSERT_EQ(dup.size(), orig.size());
  for (const auto& [inner, host] : orig) {
    ASSERT_EQ(dup.count(inner), 1u) << "pid " << inner << " inside is missing in the copy";
    EXPECT_NE(dup[inner], host) << "pid " << inner << " inside: the copy's host pid is new";
    EXPECT_EQ(StatusField(dup[inner], "Name"), StatusField(host, "Name"));
  }
  // Both counters carry on, each in its own /dev/shm.
  for (pid_t p : {init_, cp}) {
    std::string count = StrFormat("/proc/%d/root/dev/shm/count", p);
    int v = ReadInt(count);
    EXPECT_GT(v, 2) << p;
    EXPECT_GT(WaitAbove(count, v), v) << "the counter of " << p << " carries on";
  }
  // Each answers on its own address; the copy's host veth is its own.
  std::string veth2 = runtime::HostVethName(root_, copy);
  EXPECT_NE(veth2, veth);
  EXPECT_TRUE(runtime::LinkExists(veth2));
  EXPECT_OK(Sh("busybox ping -c 1 -W 5 " + ip_));
  EXPECT_OK(Sh("busybox ping -c 1 -W 5 " + ip2_));
  if (userns_) {
    struct stat a{}, b{}, h{};
    ASSERT_EQ(::stat(StrFormat("/proc/%d/ns/user", init_).c_str(), &a), 0);
    ASSERT_EQ(::stat(StrFormat("/proc/%d/ns/user", cp).c_str(), &b), 0);
    ASSERT_EQ(::stat("/proc/self/ns/user", &h), 0);
    copy_userns_differs_ = a.st_ino != b.st_ino && b.st_ino != h.st_ino;
    EXPECT_EQ(StatusField(cp, "Uid"), StatusField(init_, "Uid"));
  }
  // exec works in the copy (its state file names the real host pid).
  CliRun e = Godwit({"--root", root_, "exec", copy, "--", "cat", "/proc/self/stat"});
  EXPECT_EQ(e.code, 0) << e.out;

  // Both deletable, nothing left behind.
  ASSERT_EQ(Godwit({"--root", root_, "delete", "-f", copy}).code, 0);
  ::waitpid(cp, nullptr, 0);
  EXPECT_FALSE(fs::Exists(StrFormat("/proc/%d", cp)));
  EXPECT_EQ(StatePid(id_), init_) << "the original survives the copy's delete";
  EXPECT_GT(WaitAbove(StrFormat("/proc/%d/root/dev/shm/count", init_), 0), 0);
  ASSERT_EQ(Godwit({"--root", root_, "delete", "-f", id_}).code, 0);
  ::waitpid(init_, nullptr, 0);
  reap_.clear();
  EXPECT_FALSE(fs::Exists(StrFormat("/proc/%d", init_)));
  NothingLeft(copy, veth2);
  NothingLeft(id_, veth);
  auto mounts = fs::ReadFile("/proc/self/mountinfo");
  ASSERT_TRUE(mounts.ok());
  EXPECT_EQ(mounts->find(tmp_.path()), std::string::npos) << *mounts;
  if (userns_) {
    // The copy had a user namespace of its own (not the host's, not the original's).
    EXPECT_TRUE(copy_userns_differs_) << "the copy's user namespace";
  }
}

TEST_F(ContainerCopy, RestoreWhileAHostProcessHoldsADumpedHostPid) {
  Run();
  if (HasFatalFailure()) return;
  std::map<pid_t, pid_t> before = Stable(id_);
  ASSERT_EQ(before.size(), 3u);
  std::string img = tmp_.path() + "/ckpt";
  CliRun c = Godwit({"--root", root_, "checkpoint", id_, "--image-path", img});
  ASSERT_EQ(c.code, 0) << c.out;
  ::waitpid(init_, nullptr, 0);
  reap_.clear();
  // Hold the init's and a sleep's dumped host pids (free again now the container is gone).
  pid_t sleep_host = 0;
  for (const auto& [inner, host] : before)
    if (inner != 1) sleep_host = host;
  pid_t held_init = Occupy(init_), held_sleep = Occupy(sleep_host);
  if (held_init == 0 && held_sleep == 0)
    GTEST_SKIP() << "could not take host pids " << init_ << " and " << sleep_host
                 << " (taken again, or no CAP_CHECKPOINT_RESTORE)";

  CliRun r = Godwit({"--root", root_, "restore", id_, "--image-path", img, "--detach"});
  ASSERT_EQ(r.code, 0) << r.out;
  pid_t pid = StatePid(id_);
  ASSERT_GT(pid, 0);
  reap_.push_back(pid);
  if (held_init) {
    EXPECT_NE(pid, init_);
  }
  EXPECT_EQ(NsPids(pid).back(), 1);
  std::map<pid_t, pid_t> after = Stable(id_);
  ASSERT_EQ(after.size(), before.size());
  for (const auto& [inner, host] : before) {
    ASSERT_EQ(after.count(inner), 1u) << "pid " << inner << " inside is missing";
    if (host == held_init || host == held_sleep) {
      EXPECT_NE(after[inner], host);
    }
  }
  // The placeholders are untouched, the counter carries on.
  for (pid_t p : {held_init, held_sleep}) {
    if (p) {
      EXPECT_EQ(NsPids(p).size(), 1u) << p;
    }
  }
  std::string count = StrFormat("/proc/%d/root/dev/shm/count", pid);
  int v = ReadInt(count);
  EXPECT_GT(v, 2);
  EXPECT_GT(WaitAbove(count, v), v);
  std::string veth = runtime::HostVethName(root_, id_);
  ASSERT_EQ(Godwit({"--root", root_, "delete", "-f", id_}).code, 0);
  ::waitpid(pid, nullptr, 0);
  reap_.clear();
  NothingLeft(id_, veth);
}

// A multi-threaded init (helpers/c_threads.c, 1 + 3 threads) copied next to its original: the
// copy's threads have the same ids inside, new ones on the host, and all keep counting.
void ContainerCopy::ThreadsCopy() {
  auto bin = fs::ReadFile(std::string(GODWIT_HELPERS) + "/c_threads");
  ASSERT_OK(bin);
  ASSERT_OK(fs::WriteFile(rootfs_ + "/bin/c_threads", *bin));
  ASSERT_EQ(::chmod((rootfs_ + "/bin/c_threads").c_str(), 0755), 0);
  std::vector<std::string> args = {"--root", root_, "run", "--rootfs", rootfs_, "--name", id_,
                                   "--detach", "--ip", ip_ + "/24"};
  if (userns_) args.push_back("--userns");
  for (const char* a : {"--", "/bin/c_threads", "3"}) args.push_back(a);
  CliRun run = Godwit(args, false);
  ASSERT_EQ(run.code, 0) << run.out;
  init_ = StatePid(id_);
  ASSERT_GT(init_, 0);
  reap_.push_back(init_);
  ASSERT_GT(WaitAbove(StrFormat("/proc/%d/root/dev/shm/count", init_), 2), 2);
  std::map<pid_t, pid_t> orig = Tids(init_);
  ASSERT_EQ(orig.size(), 4u);

  std::string img = tmp_.path() + "/ckpt";
  CliRun c = Godwit({"--root", root_, "checkpoint", id_, "--image-path", img, "--leave-running"});
  ASSERT_EQ(c.code, 0) << c.out;
  std::string copy = id_ + "b";
  CliRun r = Godwit({"--root", root_, "restore", copy, "--image-path", img, "--detach", "--ip",
                     ip2_ + "/24"});
  ASSERT_EQ(r.code, 0) << r.out;
  pid_t cp = StatePid(copy);
  ASSERT_GT(cp, 0);
  reap_.push_back(cp);
  std::map<pid_t, pid_t> dup = Tids(cp);
  ASSERT_EQ(dup.size(), orig.size());
  for (const auto& [inner, host] : orig) {
    ASSERT_EQ(dup.count(inner), 1u) << "thread " << inner << " inside is missing in the copy";
    EXPECT_NE(dup[inner], host) << "thread " << inner << ": the copy's host tid is new";
  }
  for (pid_t p : {init_, cp}) {
    std::string count = StrFormat("/proc/%d/root/dev/shm/count", p);
    int v = ReadInt(count);
    EXPECT_GT(v, 2) << p;
    EXPECT_GT(WaitAbove(count, v), v) << "the threads of " << p << " carry on";
  }
  std::string veth = runtime::HostVethName(root_, id_), veth2 = runtime::HostVethName(root_, copy);
  ASSERT_EQ(Godwit({"--root", root_, "delete", "-f", copy}).code, 0);
  ASSERT_EQ(Godwit({"--root", root_, "delete", "-f", id_}).code, 0);
  for (pid_t p : reap_) ::waitpid(p, nullptr, 0);
  reap_.clear();
  NothingLeft(copy, veth2);
  NothingLeft(id_, veth);
}

TEST_F(ContainerCopy, ThreadsOfACopyKeepTheirIdsInside) { ThreadsCopy(); }

// With a user namespace the threads are cloned inside it, where set_tid cannot be used: their
// ids inside come from ns_last_pid (restore/threads.cc).
TEST_F(ContainerCopy, UsernsThreadsOfACopyKeepTheirIdsInside) {
  userns_ = true;
  ThreadsCopy();
}

}  // namespace
}  // namespace godwit::container
