// containerd's runc shim (containerd-shim-runc-v2, Debian's containerd 1.6) driving godwit as its
// runc binary: `ctr run --runc-binary godwit`, the path Kubernetes takes through the CRI. A
// busybox rootfs given with `ctr run --rootfs` (no snapshotter, no registry). The flows: a
// foreground task's output and exit code; a detached task's ps, exec, pause/resume, kill and
// delete; `ctr task checkpoint`, which containerd's client runs on a paused task and godwit
// refuses (exit 6, docs/podman.md).
//
// Everything is private to the test process: containerd's root, state and sockets (its own
// config file), the shim's runc root (--runc-root), IO fifos (--fifo-dir), the cgroup
// (--cgroup), a containerd namespace; containerd is started here and stopped by pid at the end,
// every shim it left killed by pid (shim.pid), the shims' sockets in /run/containerd/s (a path
// containerd 1.6 hard-codes) removed, the cgroup parent removed. Skipped only when containerd
// is not installed (scripts/setup installs it).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <functional>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "common/fs.h"
#include "run_cmd.h"
#include "runtime/runtime.h"

namespace godwit {
namespace {

using cmdtest::CmdResult;
using cmdtest::RunCmd;

using cmdtest::Eventually;

std::string ReadOr(const std::string& path) {
  auto r = fs::ReadFile(path);
  return r.ok() ? *r : "";
}

bool HaveContainerd() {
  for (const char* p : {"/usr/bin/containerd", "/usr/bin/ctr", "/usr/bin/containerd-shim-runc-v2"})
    if (access(p, X_OK) != 0) return false;
  return true;
}

// containerd 1.6 puts every shim's socket here whatever its --state says.
constexpr const char kShimSockets[] = "/run/containerd/s";

std::set<std::string> Entries(const std::string& dir) {
  auto l = fs::ListDir(dir);
  return l.ok() ? std::set<std::string>(l->begin(), l->end()) : std::set<std::string>{};
}

class ContainerdTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!HaveContainerd()) return;
    dir_ = StrFormat("/tmp/godwit-ctd-%d", getpid());
    ns_ = StrFormat("gwctd%d", getpid());
    cgroup_ = StrFormat("gwctd-%d", getpid());
    sockets_before_ = Entries(kShimSockets);
    run_dir_existed_ = fs::Exists("/run/containerd");
    ASSERT_TRUE(fs::MkdirAll(dir_ + "/bin").ok());
    ASSERT_TRUE(fs::MkdirAll(dir_ + "/fifo").ok());
    // The shim runs `<runc-binary> --root R --log L --log-format json VERB ...`: a wrapper
    // records each call (the list in docs/podman.md), then runs godwit.
    ASSERT_TRUE(fs::WriteFile(dir_ + "/bin/godwit",
                              StrFormat("#!/bin/sh\necho \"$*\" >> %s/calls.log\nexec %s \"$@\"\n",
                                        dir_.c_str(), GODWIT_BIN))
                    .ok());
    ASSERT_EQ(chmod((dir_ + "/bin/godwit").c_str(), 0755), 0);
    // No CRI (it would set up CNI and a sandbox image) and no snapshotters needing a special
    // filesystem: the tasks use --rootfs.
    std::string config = StrFormat(
        "version = 2\n"
        "root = \"%1$s/root\"\n"
        "state = \"%1$s/state\"\n"
        "disabled_plugins = [\"io.containerd.grpc.v1.cri\", \"io.containerd.snapshotter.v1.btrfs\","
        " \"io.containerd.snapshotter.v1.zfs\", \"io.containerd.snapshotter.v1.devmapper\","
        " \"io.containerd.snapshotter.v1.aufs\"]\n"
        "[grpc]\n  address = \"%1$s/containerd.sock\"\n"
        "[ttrpc]\n  address = \"%1$s/containerd.sock.ttrpc\"\n"
        "[plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"%1$s/opt\"\n",
        dir_.c_str());
    ASSERT_TRUE(fs::WriteFile(dir_ + "/config.toml", config).ok());
    auto r = runtime::MakeBusyboxRootfs(dir_ + "/rootfs");
    ASSERT_TRUE(r.ok()) << r.error().to_string();

    containerd_ = fork();
    ASSERT_GE(containerd_, 0);
    if (containerd_ == 0) {
      int log = open((dir_ + "/containerd.log").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      int n = open("/dev/null", O_RDONLY);
      dup2(n, 0);
      dup2(log, 1);
      dup2(log, 2);
      execl("/usr/bin/containerd", "containerd", "--config", (dir_ + "/config.toml").c_str(),
            nullptr);
      _exit(127);
    }
    ASSERT_TRUE(Eventually([] { return Ctr({"version"}).code == 0; }))
        << ReadOr(dir_ + "/containerd.log");
  }

  static void TearDownTestSuite() {
    if (dir_.empty()) return;
    // Tasks a failed test left: killed through their shims, then the shims themselves by the
    // pid containerd recorded.
    std::string tasks = dir_ + "/state/io.containerd.runtime.v2.task/" + ns_;
    for (const auto& id : Entries(tasks)) {
      Ctr({"task", "kill", "-a", "-s", "KILL", id});
      Ctr({"task", "delete", "--force", id});
      Ctr({"container", "delete", id});
      auto pid = fs::ReadFile(tasks + "/" + id + "/shim.pid");
      if (pid.ok() && atoi(pid->c_str()) > 0) kill(atoi(pid->c_str()), SIGKILL);
    }
    for (const auto& id : Entries(dir_ + "/gwroot/" + ns_))
      (void)runtime::Delete(dir_ + "/gwroot/" + ns_, id, /*force=*/true);
    if (containerd_ > 0) {
      kill(containerd_, SIGTERM);
      waitpid(containerd_, nullptr, 0);
    }
    // The shims were re-parented to this process (a subreaper, test_main.cc): reap them.
    while (waitpid(-1, nullptr, WNOHANG) > 0) {
    }
    for (const auto& s : Entries(kShimSockets))
      if (!sockets_before_.count(s)) unlink((std::string(kShimSockets) + "/" + s).c_str());
    // The directories containerd made there, when it was the first (rmdir: only if empty).
    if (!run_dir_existed_) {
      for (const char* d : {"/run/containerd/s", "/run/containerd/fifo", "/run/containerd"})
        rmdir(d);
    }
    if (auto mi = fs::ReadFile("/proc/self/mountinfo"); mi.ok()) {
      std::vector<std::string> left;
      for (const auto& line : fs::Split(*mi, '\n')) {
        auto f = fs::Split(line, ' ');
        if (f.size() > 4 && f[4].rfind(dir_, 0) == 0) left.push_back(f[4]);
      }
      for (auto it = left.rbegin(); it != left.rend(); ++it) umount2(it->c_str(), MNT_DETACH);
    }
    (void)fs::RemoveAll(dir_);
    RemoveCgroupParent();
  }

  static void RemoveCgroupParent() {
    std::vector<std::string> bases = {"/sys/fs/cgroup"};
    for (const auto& r : Entries("/sys/fs/cgroup")) bases.push_back("/sys/fs/cgroup/" + r);
    for (const auto& b : bases) {
      std::string top = b + "/" + cgroup_;
      if (!fs::Exists(top)) continue;
      for (const auto& s : Entries(top)) rmdir((top + "/" + s).c_str());
      rmdir(top.c_str());
    }
  }

  void SetUp() override {
    if (!HaveContainerd())
      GTEST_SKIP() << "containerd is not installed (scripts/setup installs Debian's containerd)";
  }

  static CmdResult Ctr(std::vector<std::string> args) {
    std::vector<std::string> a = {"ctr", "--address", dir_ + "/containerd.sock", "--namespace",
                                  ns_};
    a.insert(a.end(), args.begin(), args.end());
    return RunCmd(a);
  }

  // `ctr run` with godwit as the shim's runc binary; everything it makes is ours.
  static CmdResult CtrRun(const std::vector<std::string>& flags, const std::string& id,
                          const std::vector<std::string>& cmd) {
    std::vector<std::string> a = {"run",
                                  "--runc-binary", dir_ + "/bin/godwit",
                                  // the shim adds the namespace: godwit's root is gwroot/NS
                                  "--runc-root", dir_ + "/gwroot",
                                  "--fifo-dir", dir_ + "/fifo",
                                  "--cgroup", "/" + cgroup_ + "/" + id};
    a.insert(a.end(), flags.begin(), flags.end());
    a.insert(a.end(), {"--rootfs", dir_ + "/rootfs", id});
    a.insert(a.end(), cmd.begin(), cmd.end());
    return Ctr(a);
  }

  // godwit's view of the container the shim made.
  static std::string GodwitStatus(const std::string& id) {
    CmdResult r = RunCmd({GODWIT_BIN, "--root", dir_ + "/gwroot/" + ns_, "state", id});
    auto j = nlohmann::json::parse(r.out, nullptr, false);
    return j.is_object() ? j.value("status", "") : "";
  }

  // containerd's view: the STATUS column of `ctr task ls` for id.
  static std::string TaskStatus(const std::string& id) {
    for (const auto& line : fs::Split(Ctr({"task", "ls"}).out, '\n')) {
      std::vector<std::string> f;
      for (const auto& x : fs::Split(line, ' '))
        if (!x.empty()) f.push_back(x);
      if (f.size() >= 3 && f[0] == id) return f[2];
    }
    return "";
  }

  static std::string Calls() { return ReadOr(dir_ + "/calls.log"); }

  static std::string dir_, ns_, cgroup_;
  static pid_t containerd_;
  static std::set<std::string> sockets_before_;
  static bool run_dir_existed_;
};

std::string ContainerdTest::dir_;
std::string ContainerdTest::ns_;
std::string ContainerdTest::cgroup_;
pid_t ContainerdTest::containerd_ = -1;
std::set<std::string> ContainerdTest::sockets_before_;
bool ContainerdTest::run_dir_existed_ = true;

TEST_F(ContainerdTest, ForegroundTaskOutputAndExitCode) {
  CmdResult r = CtrRun({"--rm"}, "fg", {"sh", "-c", "echo hello-$((6*7)) from $(cat /proc/1/comm); exit 3"});
  EXPECT_EQ(r.code, 3) << r;
  EXPECT_NE(r.out.find("hello-42 from sh"), std::string::npos) << r;
  // --rm: the task and the container are gone, in containerd and in godwit.
  EXPECT_EQ(TaskStatus("fg"), "");
  EXPECT_FALSE(fs::Exists(dir_ + "/gwroot/" + ns_ + "/fg"));
  std::string calls = Calls();
  EXPECT_NE(calls.find("create --bundle"), std::string::npos) << calls;
  EXPECT_NE(calls.find("start fg"), std::string::npos) << calls;
  EXPECT_NE(calls.find("delete fg"), std::string::npos) << calls;
}

TEST_F(ContainerdTest, DetachedTaskPsExecPauseResumeCheckpointKillDelete) {
  const std::string id = "bg";
  CmdResult run = CtrRun({"-d"}, id,
                         {"sh", "-c",
                          "i=0; while :; do i=$((i+1)); echo $i > /tmp/n.t; mv /tmp/n.t /tmp/n; "
                          "sleep 0.05; done"});
  ASSERT_EQ(run.code, 0) << run;
  ASSERT_TRUE(Eventually([&] { return TaskStatus(id) == "RUNNING"; })) << Ctr({"task", "ls"});
  EXPECT_EQ(GodwitStatus(id), "running");
  // The container is in the cgroup containerd asked for (linux.cgroupsPath).
  auto state = fs::ReadFile(dir_ + "/gwroot/" + ns_ + "/" + id + "/state.json");
  ASSERT_TRUE(state.ok());
  EXPECT_NE(state->find(cgroup_ + "/" + id), std::string::npos) << *state;

  // exec through the shim: `exec --process F --detach --pid-file P`, its exit code relayed.
  auto counter = [&]() -> long {
    CmdResult r = Ctr({"task", "exec", "--fifo-dir", dir_ + "/fifo", "--exec-id",
                       StrFormat("e%d", rand()), id, "cat", "/tmp/n"});
    return r.code == 0 ? atol(r.out.c_str()) : -1;
  };
  CmdResult ex = Ctr({"task", "exec", "--fifo-dir", dir_ + "/fifo", "--exec-id", "e1", id, "sh",
                      "-c", "echo in-$$; exit 4"});
  EXPECT_EQ(ex.code, 4) << ex;
  EXPECT_NE(ex.out.find("in-"), std::string::npos) << ex;
  ASSERT_TRUE(Eventually([&] { return counter() >= 2; }));

  // ps: the shim asks `ps --format json ID` and shows the pids.
  CmdResult ps = Ctr({"task", "ps", id});
  EXPECT_EQ(ps.code, 0) << ps;
  CmdResult st = RunCmd({GODWIT_BIN, "--root", dir_ + "/gwroot/" + ns_, "state", id});
  int init = nlohmann::json::parse(st.out, nullptr, false).value("pid", 0);
  ASSERT_GT(init, 0) << st;
  EXPECT_NE(ps.out.find(std::to_string(init)), std::string::npos) << ps;

  ASSERT_EQ(Ctr({"task", "pause", id}).code, 0);
  EXPECT_EQ(TaskStatus(id), "PAUSED");
  EXPECT_EQ(GodwitStatus(id), "paused");
  ASSERT_EQ(Ctr({"task", "resume", id}).code, 0);
  EXPECT_EQ(GodwitStatus(id), "running");
  long after = counter();
  EXPECT_TRUE(Eventually([&] { return counter() > after; }));

  // containerd's client pauses the task, asks for the checkpoint (--leave-running: godwit
  // leaves it paused), resumes it: a checkpoint image in containerd's store, the task runs on.
  CmdResult ck = Ctr({"task", "checkpoint", id});
  EXPECT_EQ(ck.code, 0) << ck;
  EXPECT_NE(ck.out.find("checkpoint"), std::string::npos) << ck;
  EXPECT_TRUE(Eventually([&] { return TaskStatus(id) == "RUNNING"; })) << Ctr({"task", "ls"});
  long later = counter();
  EXPECT_TRUE(Eventually([&] { return counter() > later; }));

  // kill: sh as pid 1 ignores TERM; KILL to all (`kill --all ID 9`).
  ASSERT_EQ(Ctr({"task", "kill", "-a", "-s", "KILL", id}).code, 0);
  ASSERT_TRUE(Eventually([&] { return TaskStatus(id) == "STOPPED"; })) << Ctr({"task", "ls"});
  CmdResult del = Ctr({"task", "delete", id});
  EXPECT_EQ(del.code, 0) << del;
  EXPECT_EQ(Ctr({"container", "delete", id}).code, 0);
  EXPECT_FALSE(fs::Exists(dir_ + "/gwroot/" + ns_ + "/" + id));
  // godwit removed the container's cgroup.
  EXPECT_FALSE(fs::Exists("/sys/fs/cgroup/pids/" + cgroup_ + "/" + id) ||
               fs::Exists("/sys/fs/cgroup/" + cgroup_ + "/" + id));

  std::string calls = Calls();
  for (const char* want : {"ps --format json bg", "exec --process", "pause bg", "resume bg",
                           "checkpoint --image-path", "kill --all bg 9", "delete bg"})
    EXPECT_NE(calls.find(want), std::string::npos) << want << " not in\n" << calls;
}

}  // namespace
}  // namespace godwit
