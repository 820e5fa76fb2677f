// Podman (with conmon) driving godwit as its OCI runtime (`podman --runtime godwit`), the way an
// operator would: a local image made from a busybox rootfs (`podman import`, no registry), a
// detached counter, exec, logs, top, pause/unpause, update, stop, rm, and a checkpoint exported
// to a file and restored from it with the counter carrying on.
//
// Everything is private to the test process: Podman's storage (--root/--runroot/--tmpdir, the vfs
// driver), godwit's state root (a wrapper script passes --root), the cgroup parent (--cgroup-parent, so
// conmon's cgroup is ours too), and it is all removed at the end. Skipped only when podman is not
// installed (scripts/setup installs it).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <net/if.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <functional>
#include <nlohmann/json.hpp>
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

bool HavePodman() {
  for (const char* d : {"/usr/bin/podman", "/usr/local/bin/podman", "/bin/podman"})
    if (access(d, X_OK) == 0) return true;
  return false;
}

class PodmanTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!HavePodman()) return;
    dir_ = StrFormat("/tmp/godwit-podman-%d", getpid());
    cgroup_parent_ = StrFormat("gwpodman-%d", getpid());
    // Podman's default network (netavark) adds iptables chains and turns on forwarding the
    // first time: whatever was not there before is removed again at the end.
    netavark_before_ = RunCmd({"iptables", "-t", "nat", "-S", "NETAVARK-HOSTPORT-DNAT"}).code == 0;
    // Where Podman's network is CNI (Debian 12's Podman 4.3), its firewall plugin's chains.
    cni_before_ = RunCmd({"iptables", "-S", "CNI-FORWARD"}).code == 0;
    // And the default network's bridge: cni-podman0 (CNI) or podman0 (netavark).
    for (const char* br : {"cni-podman0", "podman0"})
      if (if_nametoindex(br) != 0) bridges_before_.push_back(br);
    tables_before_ = RunCmd({"nft", "list", "tables"}).out;  // iptables-nft makes ip nat/filter
    auto fwd = fs::ReadFile("/proc/sys/net/ipv4/ip_forward");
    ip_forward_before_ = fwd.ok() ? fs::Trim(*fwd) : "";
    ASSERT_TRUE(fs::MkdirAll(dir_ + "/tmp").ok());
    ASSERT_TRUE(fs::MkdirAll(dir_ + "/bin").ok());
    // godwit's state root is ours through a wrapper named godwit: Podman 4.3.1 drops
    // --runtime-flag on `delete --force` (it would look in /run/godwit).
    ASSERT_TRUE(fs::WriteFile(dir_ + "/bin/godwit",
                              StrFormat("#!/bin/sh\nexec %s --root %s/godwit \"$@\"\n",
                                        GODWIT_BIN, dir_.c_str()))
                    .ok());
    ASSERT_EQ(chmod((dir_ + "/bin/godwit").c_str(), 0755), 0);
    auto r = runtime::MakeBusyboxRootfs(dir_ + "/rootfs");
    ASSERT_TRUE(r.ok()) << r.error().to_string();
    CmdResult tar = RunCmd({"tar", "-C", dir_ + "/rootfs", "-cf", dir_ + "/bb.tar", "."});
    ASSERT_EQ(tar.code, 0) << tar.err;
    CmdResult imp = Podman({"import", "--change", "CMD [\"/bin/sh\"]", dir_ + "/bb.tar",
                            "localhost/godwit-bb:latest"});
    ASSERT_EQ(imp.code, 0) << imp.err;
  }

  static void TearDownTestSuite() {
    if (dir_.empty()) return;
    Podman({"rm", "--all", "--force", "--time", "0"});
    Podman({"rmi", "--all", "--force"});
    // vfs leaves no mounts; the per-container shm tmpfs goes with `rm`. Anything left under our
    // dir (a failed run) is detached before the tree is removed.
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
    // Each command of undo through iptables, in order; a failing one (nothing to undo) is fine.
    auto iptables = [](const std::vector<std::vector<std::string>>& undo) {
      for (auto a : undo) {
        a.insert(a.begin(), "iptables");
        RunCmd(a);
      }
    };
    if (!netavark_before_) {
      const std::vector<std::vector<std::string>> undo = {
          {"-t", "nat", "-D", "PREROUTING", "-m", "addrtype", "--dst-type", "LOCAL", "-j",
           "NETAVARK-HOSTPORT-DNAT"},
          {"-t", "nat", "-D", "OUTPUT", "-m", "addrtype", "--dst-type", "LOCAL", "-j",
           "NETAVARK-HOSTPORT-DNAT"},
          {"-t", "nat", "-D", "POSTROUTING", "-j", "NETAVARK-HOSTPORT-MASQ"},
          {"-t", "nat", "-F", "NETAVARK-HOSTPORT-DNAT"}, {"-t", "nat", "-X", "NETAVARK-HOSTPORT-DNAT"},
          {"-t", "nat", "-F", "NETAVARK-HOSTPORT-MASQ"}, {"-t", "nat", "-X", "NETAVARK-HOSTPORT-MASQ"},
          {"-t", "nat", "-F", "NETAVARK-HOSTPORT-SETMARK"},
          {"-t", "nat", "-X", "NETAVARK-HOSTPORT-SETMARK"},
          {"-D", "FORWARD", "-m", "comment", "--comment", "netavark firewall plugin rules", "-j",
           "NETAVARK_FORWARD"},
          {"-F", "NETAVARK_FORWARD"}, {"-X", "NETAVARK_FORWARD"}};
      iptables(undo);
    }
    if (!cni_before_) {
      const std::vector<std::vector<std::string>> undo = {
          {"-D", "FORWARD", "-m", "comment", "--comment", "CNI firewall plugin rules", "-j",
           "CNI-FORWARD"},
          {"-F", "CNI-FORWARD"}, {"-X", "CNI-FORWARD"}, {"-F", "CNI-ADMIN"}, {"-X", "CNI-ADMIN"}};
      iptables(undo);
    }
    for (const char* br : {"cni-podman0", "podman0"})
      if (std::find(bridges_before_.begin(), bridges_before_.end(), br) == bridges_before_.end() &&
          if_nametoindex(br) != 0)
        RunCmd({"ip", "link", "delete", br});
    // The tables iptables-nft made for those chains, now empty, when they were not there before.
    for (const char* t : {"nat", "filter"})
      if (tables_before_.find(StrFormat("table ip %s\n", t)) == std::string::npos &&
          RunCmd({"iptables", "-t", t, "-S"}).out.find("-A ") == std::string::npos)
        RunCmd({"nft", "delete", "table", "ip", t});
    if (!ip_forward_before_.empty())
      (void)fs::WriteFile("/proc/sys/net/ipv4/ip_forward", ip_forward_before_ + "\n");
    while (waitpid(-1, nullptr, WNOHANG) > 0) {
    }
  }

  // conmon's cgroup is <cgroup-parent>/conmon (cgroupfs manager) and the containers' are
  // <cgroup-parent>/libpod-<id>: removed innermost first in every hierarchy once empty.
  static void RemoveCgroupParent() {
    auto roots = fs::ListDir("/sys/fs/cgroup");
    if (!roots.ok()) return;
    std::vector<std::string> bases = {"/sys/fs/cgroup"};
    for (const auto& r : *roots) bases.push_back("/sys/fs/cgroup/" + r);
    for (const auto& b : bases) {
      std::string top = b + "/" + cgroup_parent_;
      if (!fs::Exists(top)) continue;
      if (auto subs = fs::ListDir(top); subs.ok())
        for (const auto& s : *subs) rmdir((top + "/" + s).c_str());
      rmdir(top.c_str());
    }
  }

  void SetUp() override {
    if (!HavePodman())
      GTEST_SKIP() << "podman is not installed (scripts/setup installs podman, conmon and criu)";
  }

  static std::vector<std::string> Base() {
    return {"podman",
            "--root", dir_ + "/storage",
            "--runroot", dir_ + "/run",
            "--tmpdir", dir_ + "/tmp",
            "--storage-driver", "vfs",
            "--cgroup-manager", "cgroupfs",
            "--events-backend", "file",
            "--runtime", dir_ + "/bin/godwit"};
  }
  static CmdResult Podman(std::vector<std::string> args) {
    std::vector<std::string> a = Base();
    a.insert(a.end(), args.begin(), args.end());
    return RunCmd(a);
  }

  // `podman run -d` of a counter: every 0.1 s the next number to stdout and to /tmp/n.
  std::string RunCounter(const std::string& name) {
    CmdResult r = Podman({"run", "-d", "--name", name, "--network", "none",
                          "--cgroup-parent", "/" + cgroup_parent_,
                          // This VM forbids raising rlimits (no CAP_SYS_RESOURCE); Podman's
                          // defaults for root are above the hard limits here.
                          "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024",
                          "localhost/godwit-bb", "sh", "-c",
                          // /tmp/n replaced by a rename: never seen empty (a checkpoint or a
                          // read may fall between a truncate and a write).
                          "i=0; while :; do i=$((i+1)); echo $i; echo $i > /tmp/n.t; "
                          "mv /tmp/n.t /tmp/n; sleep 0.1; done"});
    EXPECT_EQ(r.code, 0) << r.out << r.err;
    return fs::Trim(r.out);
  }

  std::string Status(const std::string& name) {
    return fs::Trim(Podman({"inspect", "--format", "{{.State.Status}}", name}).out);
  }

  long Counter(const std::string& name) {
    // The shell rewrites /tmp/n in place (truncate, then write): a read in between sees it
    // empty, which is no value; read again.
    for (int i = 0; i < 50; ++i) {
      CmdResult r = Podman({"exec", name, "cat", "/tmp/n"});
      if (r.code != 0) return -1;
      if (!fs::Trim(r.out).empty()) return atol(r.out.c_str());
    }
    return -1;
  }

  long LastLogLine(const std::string& name) {
    CmdResult r = Podman({"logs", name});
    auto lines = fs::Split(fs::Trim(r.out), '\n');
    return lines.empty() ? -1 : atol(lines.back().c_str());
  }

  // The godwit side: the state Podman's runtime reports for the container.
  std::string GodwitStatus(const std::string& id) {
    CmdResult r = RunCmd({GODWIT_BIN, "--root", dir_ + "/godwit", "state", id});
    auto j = nlohmann::json::parse(r.out, nullptr, false);
    return j.is_object() ? j.value("status", "") : "";
  }

  static std::string dir_, cgroup_parent_, ip_forward_before_, tables_before_;
  static bool netavark_before_;
  static bool cni_before_;
  static std::vector<std::string> bridges_before_;
};

std::string PodmanTest::dir_;
std::string PodmanTest::cgroup_parent_;
std::string PodmanTest::ip_forward_before_;
std::string PodmanTest::tables_before_;
bool PodmanTest::netavark_before_ = false;
bool PodmanTest::cni_before_ = false;
std::vector<std::string> PodmanTest::bridges_before_;

TEST_F(PodmanTest, RunExecLogsTopPauseUpdateStopRm) {
  std::string id = RunCounter("life");
  ASSERT_EQ(id.size(), 64u) << id;
  ASSERT_TRUE(Eventually([&] { return LastLogLine("life") >= 3; })) << Podman({"logs", "life"}).out;
  EXPECT_EQ(Status("life"), "running");
  EXPECT_EQ(GodwitStatus(id), "running");

  // exec: Podman's `exec --detach --pid-file --process F.json` through conmon.
  CmdResult ex = Podman({"exec", "life", "sh", "-c", "echo in-$(hostname) && exit 7"});
  EXPECT_EQ(ex.code, 7) << ex.err;
  EXPECT_EQ(fs::Trim(ex.out), "in-" + id.substr(0, 12)) << ex.err;
  // With a terminal: the pty master goes to conmon through --console-socket.
  CmdResult tty = Podman({"exec", "-t", "life", "sh", "-c", "tty"});
  EXPECT_EQ(tty.code, 0) << tty.err;
  EXPECT_NE(tty.out.find("/dev/pts/"), std::string::npos) << tty.out << tty.err;

  CmdResult top = Podman({"top", "life"});
  EXPECT_EQ(top.code, 0) << top.err;
  EXPECT_NE(top.out.find("i=0; while"), std::string::npos) << top.out;

  ASSERT_EQ(Podman({"pause", "life"}).code, 0);
  EXPECT_EQ(Status("life"), "paused");
  EXPECT_EQ(GodwitStatus(id), "paused");
  long frozen_at = LastLogLine("life");
  ASSERT_EQ(Podman({"unpause", "life"}).code, 0);
  EXPECT_EQ(GodwitStatus(id), "running");
  EXPECT_TRUE(Eventually([&] { return LastLogLine("life") > frozen_at; }));

  // update: Podman writes linux.resources JSON and calls `update --resources FILE`.
  CmdResult up = Podman({"update", "--memory", "64m", "life"});
  EXPECT_EQ(up.code, 0) << up.err;
  // Read back on the host, in the cgroup godwit recorded for the container (linux.cgroupsPath).
  auto state = fs::ReadFile(dir_ + "/godwit/" + id + "/state.json");
  ASSERT_TRUE(state.ok());
  auto paths = nlohmann::json::parse(*state, nullptr, false)["cgroup"]["paths"];
  ASSERT_TRUE(paths.is_object()) << *state;
  EXPECT_NE(paths.dump().find(cgroup_parent_ + "/libpod-" + id), std::string::npos) << *state;
  std::string limit =
      paths.contains("memory")
          ? fs::ReadFile(paths["memory"].get<std::string>() + "/memory.limit_in_bytes").value()
          : fs::ReadFile(paths["unified"].get<std::string>() + "/memory.max").value();
  EXPECT_EQ(fs::Trim(limit), "67108864");
  // The container sees a read-only cgroup2 mount on /sys/fs/cgroup.
  CmdResult ro = Podman({"exec", "life", "sh", "-c", "touch /sys/fs/cgroup/x || echo refused"});
  EXPECT_NE(ro.out.find("refused"), std::string::npos) << ro.out << ro.err;

  // stop: kill 15, then (sh ignores TERM as pid 1) kill 9 after the timeout, then delete.
  CmdResult stop = Podman({"stop", "--time", "1", "life"});
  EXPECT_EQ(stop.code, 0) << stop.err;
  EXPECT_EQ(Status("life"), "exited");
  CmdResult rm = Podman({"rm", "life"});
  EXPECT_EQ(rm.code, 0) << rm.err;
  EXPECT_FALSE(fs::Exists(dir_ + "/godwit/" + id));
}

// Podman's default network: it makes the container's network namespace itself (netavark or
// CNI) and hands it to the runtime as linux.namespaces[network].path; the container joins it and
// finds Podman's interface and address there.
TEST_F(PodmanTest, DefaultNetworkNamespaceIsJoined) {
  CmdResult r = Podman({"run", "--rm", "--cgroup-parent", "/" + cgroup_parent_,
                        "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024",
                        "localhost/godwit-bb", "sh", "-c", "ip -4 addr show; cat /proc/net/route"});
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  // An address other than loopback's, and a default route: Podman's network, not an empty one.
  EXPECT_NE(r.out.find("inet "), std::string::npos) << r.out;
  bool other = false;
  for (const auto& line : fs::Split(r.out, '\n'))
    if (line.find("inet ") != std::string::npos && line.find("127.0.0.1") == std::string::npos)
      other = true;
  EXPECT_TRUE(other) << r.out;
  EXPECT_NE(r.out.find("00000000"), std::string::npos) << r.out;  // the default route
}

TEST_F(PodmanTest, CheckpointExportRestoreImportCarriesOn) {
  std::string id = RunCounter("ck");
  ASSERT_EQ(id.size(), 64u) << id;
  ASSERT_TRUE(Eventually([&] { return Counter("ck") >= 5; }));
  std::string exported = dir_ + "/ck.tar.gz";
  CmdResult ck = Podman({"container", "checkpoint", "--export", exported, "ck"});
  ASSERT_EQ(ck.code, 0) << ck.out << ck.err;
  EXPECT_EQ(Status("ck"), "exited");
  // The counter as checkpointed: the last value the stopped container wrote.
  CmdResult cp = Podman({"cp", "ck:/tmp/n", dir_ + "/n"});
  ASSERT_EQ(cp.code, 0) << cp.err;
  auto saved = fs::ReadFile(dir_ + "/n");
  long at_checkpoint = saved.ok() ? atol(saved->c_str()) : -1;
  ASSERT_GE(at_checkpoint, 5);
  CmdResult rm = Podman({"rm", "ck"});
  ASSERT_EQ(rm.code, 0) << rm.err;

  CmdResult rs = Podman({"container", "restore", "--import", exported});
  ASSERT_EQ(rs.code, 0) << rs.out << rs.err;
  EXPECT_EQ(Status("ck"), "running");
  EXPECT_EQ(GodwitStatus(id), "running");
  // It carries on from there: a fresh start would count from 1 again.
  long at_restore = Counter("ck");
  EXPECT_GE(at_restore, at_checkpoint);
  long later = -1;
  ASSERT_TRUE(Eventually([&] {
    later = Counter("ck");
    return later > at_checkpoint;
  })) << "counter at " << later << ", checkpointed at " << at_checkpoint;
  EXPECT_GE(Counter("ck"), later);

  CmdResult stop = Podman({"stop", "--time", "1", "ck"});
  EXPECT_EQ(stop.code, 0) << stop.err;
  EXPECT_EQ(Podman({"rm", "ck"}).code, 0);
  EXPECT_FALSE(fs::Exists(dir_ + "/godwit/" + id));
}

}  // namespace
}  // namespace godwit
