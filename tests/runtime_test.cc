// Real containers through the `godwit` binary (a second invocation must find what the first
// made) and the runtime library. Root required. Every test uses its own ids, state root, rootfs
// and 198.18.0.0/15 subnet derived from the test process's pid, and deletes what it made even
// when it fails.
#include "runtime/runtime.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "common/fs.h"
#include "common/scope_exit.h"
#include "runtime/cgroup.h"
#include "runtime/network.h"
#include "run_cmd.h"

namespace godwit::runtime {
namespace {

using nlohmann::json;

using cmdtest::CmdResult;

// Runs godwit with args; stdout/stderr go to files (a detached container inherits them, so a
// pipe would never reach EOF).
CmdResult Godwit(const std::string& root, std::vector<std::string> args) {
  args.insert(args.begin(), {GODWIT_BIN, "--root", root});
  return cmdtest::RunCmd(args);
}

std::string Trim(const std::string& s) { return fs::Trim(s); }

std::string ReadOr(const std::string& path) {
  auto r = fs::ReadFile(path);
  return r.ok() ? *r : "";
}

class RuntimeTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = StrFormat("/tmp/godwit-rt-test-%d", getpid());
    ASSERT_TRUE(fs::MkdirAll(dir_).ok());
    auto r = MakeBusyboxRootfs(dir_ + "/rootfs");
    ASSERT_TRUE(r.ok()) << r.error().to_string();
  }
  static void TearDownTestSuite() { (void)fs::RemoveAll(dir_); }

  void SetUp() override { root_ = dir_ + "/root"; }

  void TearDown() override {
    // Whatever a test left: force-delete and reap (we are the subreaper of detached inits).
    for (const auto& id : ids_) {
      auto c = Container::Load(root_, id);
      pid_t pid = c.ok() ? c->pid : 0;
      (void)Delete(root_, id, true);
      if (pid > 0) waitpid(pid, nullptr, WNOHANG);
    }
    while (waitpid(-1, nullptr, WNOHANG) > 0) {
    }
  }

  // A unique id for this test process; registered for cleanup.
  std::string Id(const std::string& name) {
    std::string id = StrFormat("t%d-%s", getpid(), name.c_str());
    ids_.push_back(id);
    return id;
  }

  // 198.18.0.0/15 split into /24s; each test process takes 4 of them by pid (below
  // 198.19.200.0, which the demo uses).
  static std::string Subnet(int k) {
    int x = (getpid() % 100) * 4 + k;
    return StrFormat("198.%d.%d", 18 + x / 256, x % 256);
  }

  CmdResult Run(std::vector<std::string> args) { return Godwit(root_, std::move(args)); }

  // `run --detach` with the busybox rootfs; returns the container.
  Container RunDetached(const std::string& id, std::vector<std::string> opts,
                        std::vector<std::string> cmd) {
    std::vector<std::string> a = {"run", "--rootfs", dir_ + "/rootfs", "--name", id, "--detach"};
    a.insert(a.end(), opts.begin(), opts.end());
    a.push_back("--");
    a.insert(a.end(), cmd.begin(), cmd.end());
    CmdResult r = Run(a);
    EXPECT_EQ(r.code, 0) << r.err;
    auto c = Container::Load(root_, id);
    EXPECT_TRUE(c.ok());
    return c.ok() ? *c : Container{};
  }

  CmdResult RunFg(const std::string& id, std::vector<std::string> opts,
                  std::vector<std::string> cmd) {
    std::vector<std::string> a = {"run", "--rootfs", dir_ + "/rootfs", "--name", id};
    a.insert(a.end(), opts.begin(), opts.end());
    a.push_back("--");
    a.insert(a.end(), cmd.begin(), cmd.end());
    return Run(a);
  }

  // Waits for a detached container's init to exit (we are its subreaper).
  static void Reap(pid_t pid) {
    int st;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
    }
  }

  static inline std::string dir_;
  std::string root_;
  std::vector<std::string> ids_;
};

TEST_F(RuntimeTest, PidOneAndIsolatedProcessList) {
  CmdResult r = RunFg(Id("pid1"), {}, {"sh", "-c", "echo $$; ls /proc | grep -c '^[0-9]'"});
  ASSERT_EQ(r.code, 0) << r.err;
  auto lines = fs::Split(Trim(r.out), '\n');
  ASSERT_EQ(lines.size(), 2u) << r.out;
  EXPECT_EQ(lines[0], "1");
  // sh, ls and grep: nothing of the host is visible.
  EXPECT_LE(atoi(lines[1].c_str()), 3) << r.out;
}

TEST_F(RuntimeTest, Hostname) {
  std::string h = StrFormat("box-%d", getpid());
  CmdResult r = RunFg(Id("host"), {"--hostname", h}, {"hostname"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(Trim(r.out), h);
  char mine[256];
  gethostname(mine, sizeof(mine));
  EXPECT_NE(std::string(mine), h);
}

// Read-only root, masked and read-only /proc paths, capabilities, the process user: each one
// observed from inside.
TEST_F(RuntimeTest, ReadonlyRootMaskedPathsCapabilitiesUser) {
  std::string id = Id("harden");
  std::string bundle = dir_ + "/bundle-" + id;
  ASSERT_TRUE(fs::MkdirAll(bundle).ok());
  RunOptions o;
  o.rootfs = dir_ + "/rootfs";
  o.readonly = true;
  o.args = {"sh", "-c",
            "touch /x 2>&1 | grep -c 'Read-only'; "
            "wc -c < /proc/keys; "
            "grep -c ' /proc/sys ro,' /proc/self/mountinfo; "
            "grep CapEff /proc/self/status; id -u; id -g"};
  json cfg = MakeConfig(o);
  // CAP_KILL (5) and CAP_NET_BIND_SERVICE (10) only, as uid/gid 1000.
  cfg["process"]["user"] = {{"uid", 1000}, {"gid", 1000}};
  for (const char* set : {"bounding", "effective", "permitted"})
    cfg["process"]["capabilities"][set] = {"CAP_KILL", "CAP_NET_BIND_SERVICE"};
  cfg["process"]["capabilities"]["ambient"] = {"CAP_KILL", "CAP_NET_BIND_SERVICE"};
  cfg["process"]["capabilities"]["inheritable"] = {"CAP_KILL", "CAP_NET_BIND_SERVICE"};
  ASSERT_TRUE(fs::WriteFile(bundle + "/config.json", cfg.dump()).ok());
  CmdResult r = Run({"run", id, "--bundle", bundle});
  ASSERT_EQ(r.code, 0) << r.err;
  auto lines = fs::Split(Trim(r.out), '\n');
  ASSERT_EQ(lines.size(), 6u) << r.out << r.err;
  EXPECT_EQ(lines[0], "1");        // / is read-only
  EXPECT_EQ(Trim(lines[1]), "0");  // /proc/keys masked by /dev/null
  EXPECT_EQ(lines[2], "1");        // /proc/sys read-only
  EXPECT_EQ(Trim(lines[3].substr(lines[3].find(':') + 1)), "0000000000000420");  // KILL, NET_BIND
  EXPECT_EQ(lines[4], "1000");
  EXPECT_EQ(lines[5], "1000");
}

// linux.resources.devices: deny all but the default devices. The host's /dev/net/tun (10:200),
// bind-mounted in, cannot be opened, nor a node made; without rules both work.
TEST_F(RuntimeTest, DevicesCgroupAllowList) {
  auto roots = DetectCgroupLayout();
  ASSERT_TRUE(roots.ok());
  std::string script =
      "(exec 3</dev/tun) 2>/dev/null && echo tun-open || echo tun-denied; "
      "mknod /dev/t c 10 200 2>/dev/null && echo mknod-ok || echo mknod-denied; "
      "head -c 1 /dev/zero | wc -c";
  for (bool rules : {true, false}) {
    std::string id = Id(rules ? "dev-rules" : "dev-none");
    std::string bundle = dir_ + "/bundle-" + id;
    ASSERT_TRUE(fs::MkdirAll(bundle).ok());
    RunOptions o;
    o.rootfs = dir_ + "/rootfs";
    o.args = {"sh", "-c", script};
    json cfg = MakeConfig(o);
    cfg["mounts"].push_back({{"destination", "/dev/tun"},
                             {"type", "bind"},
                             {"source", "/dev/net/tun"},
                             {"options", {"bind"}}});
    if (rules) cfg["linux"]["resources"]["devices"] = {{{"allow", false}, {"access", "rwm"}}};
    ASSERT_TRUE(fs::WriteFile(bundle + "/config.json", cfg.dump()).ok());
    CmdResult r = Run({"run", id, "--bundle", bundle});
    if (rules && roots->v1.count("devices") == 0) {
      EXPECT_EQ(r.code, 7) << r.err;  // v2 needs a BPF program: refused, not ignored
      continue;
    }
    ASSERT_EQ(r.code, 0) << r.err;
    auto lines = fs::Split(Trim(r.out), '\n');
    ASSERT_EQ(lines.size(), 3u) << r.out << r.err;
    EXPECT_EQ(lines[0], rules ? "tun-denied" : "tun-open");
    EXPECT_EQ(lines[1], rules ? "mknod-denied" : "mknod-ok");
    EXPECT_EQ(Trim(lines[2]), "1");  // /dev/zero stays usable
  }
}

TEST_F(RuntimeTest, RunUsernsBaseShiftsTheIdsAndRefusesABadBase) {
  std::string id = Id("unbase");
  // The container's root is host uid 100000: it must be able to reach the rootfs.
  ASSERT_EQ(::chmod(dir_.c_str(), 0755), 0);
  CmdResult r = RunFg(id, {"--userns-base", "100000"},
                      {"sh", "-c", "cat /proc/self/uid_map /proc/self/gid_map; id -u"});
  ASSERT_EQ(r.code, 0) << r.err;
  auto lines = fs::Split(Trim(r.out), '\n');
  ASSERT_EQ(lines.size(), 3u) << r.out;
  auto norm = [](std::string s) {
    std::string out;
    for (const auto& w : fs::Split(s, ' '))
      if (!w.empty()) out += (out.empty() ? "" : " ") + w;
    return out;
  };
  EXPECT_EQ(norm(lines[0]), "0 100000 65536");
  EXPECT_EQ(norm(lines[1]), "0 100000 65536");
  EXPECT_EQ(lines[2], "0");
  for (const char* bad : {"0", "x", "4294967295"}) {
    CmdResult b = RunFg(Id("unbad"), {"--userns-base", bad}, {"true"});
    EXPECT_EQ(b.code, static_cast<int>(ErrorKind::kUsage)) << bad << ": " << b.err;
    EXPECT_NE(b.err.find("--userns-base"), std::string::npos) << b.err;
  }
}

TEST_F(RuntimeTest, UserNamespaceWithMappings) {
  std::string id = Id("userns");
  std::string bundle = dir_ + "/bundle-" + id;
  ASSERT_TRUE(fs::MkdirAll(bundle).ok());
  RunOptions o;
  o.rootfs = dir_ + "/rootfs";
  o.args = {"sh", "-c",
            "cat /proc/self/uid_map /proc/self/gid_map; readlink /proc/self/ns/user; id -u"};
  o.disk = 8 << 20;
  json cfg = MakeConfig(o);
  cfg["linux"]["namespaces"].push_back({{"type", "user"}});
  // The rootfs belongs to host root: map container 0 to host 0 so it stays writable, and a
  // second range so the mapping is not the identity of the whole space.
  cfg["linux"]["uidMappings"] = {{{"containerID", 0}, {"hostID", 0}, {"size", 1}},
                                 {{"containerID", 1000}, {"hostID", 201000}, {"size", 1000}}};
  cfg["linux"]["gidMappings"] = {{{"containerID", 0}, {"hostID", 0}, {"size", 1}}};
  ASSERT_TRUE(fs::WriteFile(bundle + "/config.json", cfg.dump()).ok());
  CmdResult r = Run({"run", id, "--bundle", bundle});
  ASSERT_EQ(r.code, 0) << r.err;
  auto lines = fs::Split(Trim(r.out), '\n');
  ASSERT_EQ(lines.size(), 5u) << r.out;
  auto norm = [](std::string s) {
    std::string out;
    for (const auto& w : fs::Split(s, ' '))
      if (!w.empty()) out += (out.empty() ? "" : " ") + w;
    return out;
  };
  EXPECT_EQ(norm(lines[0]), "0 0 1");
  EXPECT_EQ(norm(lines[1]), "1000 201000 1000");
  EXPECT_EQ(norm(lines[2]), "0 0 1");
  char host_ns[128] = {0};
  ASSERT_GT(readlink("/proc/self/ns/user", host_ns, sizeof(host_ns)), 0);
  EXPECT_NE(lines[3], host_ns);
  EXPECT_EQ(lines[4], "0");
}

// Connects to ip:port within timeout_ms; returns the fd or -1 (errno ETIMEDOUT/ECONNREFUSED).
int ConnectTimeout(const std::string& ip, int port, int timeout_ms) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(port);
  inet_pton(AF_INET, ip.c_str(), &sa.sin_addr);
  if (connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) < 0 && errno != EINPROGRESS) {
    close(fd);
    return -1;
  }
  pollfd p{fd, POLLOUT, 0};
  if (poll(&p, 1, timeout_ms) != 1) {
    close(fd);
    errno = ETIMEDOUT;
    return -1;
  }
  int err = 0;
  socklen_t len = sizeof(err);
  getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
  if (err) {
    close(fd);
    errno = err;
    return -1;
  }
  return fd;
}

TEST_F(RuntimeTest, ContainerIpAnswersFromHostAndFirewallDropsOtherPorts) {
  std::string id = Id("net");
  std::string ip = Subnet(0) + ".10";
  Container c = RunDetached(
      id, {"--ip", ip + "/24", "--allow-port", "7777"},
      {"sh", "-c", "nc -ll -p 7778 -e echo blocked & exec nc -ll -p 7777 -e echo pong"});
  ASSERT_GT(c.pid, 0);
  EXPECT_TRUE(LinkExists(c.host_veth)) << c.host_veth;
  // The listener starts asynchronously inside another pid namespace: retry the connect for a
  // bounded time (connection refused until it listens).
  int fd = -1;
  timespec t0, t;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  do {
    fd = ConnectTimeout(ip, 7777, 1000);
    if (fd >= 0) break;
    usleep(20000);
    clock_gettime(CLOCK_MONOTONIC, &t);
  } while (t.tv_sec - t0.tv_sec < 10);
  ASSERT_GE(fd, 0) << "connect " << ip << ":7777: " << strerror(errno);
  fcntl(fd, F_SETFL, 0);
  char buf[64] = {0};
  pollfd p{fd, POLLIN, 0};
  ASSERT_EQ(poll(&p, 1, 5000), 1);
  ssize_t n = read(fd, buf, sizeof(buf) - 1);
  close(fd);
  ASSERT_GT(n, 0);
  EXPECT_EQ(Trim(buf), "pong");
  // Port 7778 listens too (the ps below shows it) but the firewall drops the SYN: a timeout,
  // not a refusal.
  CmdResult ps;
  for (int i = 0; i < 100; ++i) {  // the 7778 listener binds asynchronously too
    ps = Run({"exec", id, "--", "netstat", "-ltn"});
    if (ps.out.find(":7778") != std::string::npos) break;
    usleep(20000);
  }
  EXPECT_NE(ps.out.find(":7778"), std::string::npos) << ps.out;
  int blocked = ConnectTimeout(ip, 7778, 300);
  EXPECT_LT(blocked, 0);
  EXPECT_EQ(errno, ETIMEDOUT);
  if (blocked >= 0) close(blocked);
}

TEST_F(RuntimeTest, MemoryLimitOomKillsHog) {
  // dd's 64 MiB buffer cannot fit under 24 MiB: the OOM killer SIGKILLs it (status 137).
  CmdResult r = RunFg(Id("oom"), {"--memory", "24M"},
                      {"sh", "-c", "dd if=/dev/zero of=/dev/null bs=64M count=1; echo rc=$?"});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("rc=137"), std::string::npos) << r.out << r.err;
  // The same without a limit succeeds: the limit, not the machine, stopped it.
  CmdResult ok = RunFg(Id("nooom"), {},
                       {"sh", "-c", "dd if=/dev/zero of=/dev/null bs=64M count=1; echo rc=$?"});
  EXPECT_NE(ok.out.find("rc=0"), std::string::npos) << ok.out << ok.err;
}

TEST_F(RuntimeTest, PidsLimitStopsForkBomb) {
  std::string id = Id("pids");
  Container c = RunDetached(
      id, {"--pids", "8"},
      // The bomb runs in a subshell: ash gives up on "can't fork"; then pid 1 becomes sleep.
      {"sh", "-c",
       "(i=0; while [ $i -lt 40 ]; do sleep 1000 & i=$((i+1)); done); exec sleep 1000"});
  ASSERT_GT(c.pid, 0);
  auto cg = OpenCgroup(id);
  ASSERT_TRUE(cg.ok());
  // The bomb's loop runs asynchronously: wait (bounded) until the kernel has refused a fork.
  std::map<std::string, int64_t> ev;
  for (int i = 0; i < 500; ++i) {
    auto e = (*cg)->Events();
    ASSERT_TRUE(e.ok()) << e.error().to_string();
    ev = *e;
    if (ev["pids_max_hit"] > 0 && ProcessState(c.pid) == 'S' &&
        ReadOr(StrFormat("/proc/%d/cmdline", c.pid)).rfind("sleep", 0) == 0)
      break;
    usleep(10000);
  }
  EXPECT_GT(ev["pids_max_hit"], 0);
  auto pids = Ps(root_, id);
  ASSERT_TRUE(pids.ok());
  EXPECT_LE(pids->size(), 8u);
  EXPECT_GE(pids->size(), 2u);
}

TEST_F(RuntimeTest, DiskQuotaGivesEnospcAndLeavesRootfsAlone) {
  std::string name = StrFormat("big-%d", getpid());
  CmdResult r = RunFg(Id("disk"), {"--disk", "8M"},
                      {"sh", "-c",
                       "dd if=/dev/zero of=/" + name +
                           " bs=1M count=16; echo rc=$?; "
                           "rm /" +
                           name + "; echo small > /etc/small && cat /etc/small"});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("No space left on device"), std::string::npos) << r.err;
  EXPECT_NE(r.out.find("rc=1"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("small"), std::string::npos) << r.out;  // writable again after rm
  EXPECT_FALSE(fs::Exists(dir_ + "/rootfs/" + name));
  EXPECT_FALSE(fs::Exists(dir_ + "/rootfs/etc/small"));
}

TEST_F(RuntimeTest, ExecRunsInAllNamespacesAndCgroups) {
  std::string id = Id("exec");
  Container c =
      RunDetached(id, {"--hostname", "exechost", "--ip", Subnet(1) + ".10/24"}, {"sleep", "1000"});
  ASSERT_GT(c.pid, 0);
  CmdResult r = Run({"exec", id, "--", "sh", "-c",
                     "for n in pid mnt uts ipc net cgroup; do readlink /proc/self/ns/$n; done; "
                     "hostname; echo $$; grep memory /proc/self/cgroup"});
  ASSERT_EQ(r.code, 0) << r.err;
  auto lines = fs::Split(Trim(r.out), '\n');
  ASSERT_EQ(lines.size(), 9u) << r.out;
  const char* ns[] = {"pid", "mnt", "uts", "ipc", "net", "cgroup"};
  for (int i = 0; i < 6; ++i) {
    char buf[128] = {0};
    ASSERT_GT(readlink(StrFormat("/proc/%d/ns/%s", c.pid, ns[i]).c_str(), buf, sizeof(buf)), 0);
    EXPECT_EQ(lines[i], buf) << ns[i];
  }
  EXPECT_EQ(lines[6], "exechost");
  EXPECT_GT(atoi(lines[7].c_str()), 1);  // a pid inside the container's pid namespace
  EXPECT_LT(atoi(lines[7].c_str()), 100);
  EXPECT_EQ(lines[8], "4:memory:/");  // the root of its cgroup namespace: the container's cgroup
  // The exit code comes back.
  EXPECT_EQ(Run({"exec", id, "--", "sh", "-c", "exit 42"}).code, 42);
  CmdResult e =
      Run({"exec", id, "--env", "FOO=bar", "--cwd", "/etc", "--", "sh", "-c", "echo $FOO $(pwd)"});
  ASSERT_EQ(e.code, 0) << e.err;
  EXPECT_EQ(Trim(e.out), "bar /etc");
  CmdResult missing = Run({"exec", id, "--", "no-such-program"});
  EXPECT_NE(missing.code, 0);
  EXPECT_NE(missing.err.find("no-such-program"), std::string::npos) << missing.err;
}

TEST_F(RuntimeTest, KillAndDeleteLeaveNothingBehind) {
  std::string id = Id("clean");
  Container c = RunDetached(id,
                            {"--ip", Subnet(2) + ".10/24", "--memory", "64M", "--pids", "32",
                             "--cpus", "0.5", "--cpu-shares", "512", "--disk", "8M",
                             "--allow-port", "80"},
                            {"sleep", "1000"});
  ASSERT_GT(c.pid, 0);
  ASSERT_FALSE(c.cgroup_paths.empty());
  for (const auto& [k, p] : c.cgroup_paths) EXPECT_TRUE(fs::Exists(p)) << p;
  // The limits as the kernel holds them (v1 files, or cgroup v2 ones).
  auto knob = [&](const char* ctrl, const char* file) {
    auto it = c.cgroup_paths.find(ctrl);
    return it == c.cgroup_paths.end() ? std::string() : Trim(ReadOr(it->second + "/" + file));
  };
  if (c.cgroup_paths.count("memory")) {
    EXPECT_EQ(knob("memory", "memory.limit_in_bytes"), std::to_string(64 << 20));
    EXPECT_EQ(knob("pids", "pids.max"), "32");
    EXPECT_EQ(knob("cpu", "cpu.cfs_quota_us"), "50000");
    EXPECT_EQ(knob("cpu", "cpu.cfs_period_us"), "100000");
    EXPECT_EQ(knob("cpu", "cpu.shares"), "512");
  } else {
    EXPECT_EQ(knob("unified", "memory.max"), std::to_string(64 << 20));
    EXPECT_EQ(knob("unified", "pids.max"), "32");
    EXPECT_EQ(knob("unified", "cpu.max"), "50000 100000");
  }
  EXPECT_TRUE(LinkExists(c.host_veth));
  CmdResult st = Run({"state", id});
  ASSERT_EQ(st.code, 0);
  json j = json::parse(st.out);
  EXPECT_EQ(j["status"], "running");
  EXPECT_EQ(j["pid"], c.pid);

  // The writable layer's changes are visible on the host in the storage's upper dir (what a
  // checkpoint copies), not in the rootfs.
  ASSERT_EQ(Run({"exec", id, "--", "sh", "-c", "echo hi > /written"}).code, 0);
  EXPECT_EQ(Trim(ReadOr(c.storage_dir + "/upper/written")), "hi");
  EXPECT_FALSE(fs::Exists(dir_ + "/rootfs/written"));

  EXPECT_EQ(Run({"kill", id, "KILL"}).code, 0);
  Reap(c.pid);
  st = Run({"state", id});
  EXPECT_EQ(json::parse(st.out)["status"], "stopped");
  CmdResult d = Run({"delete", id});
  ASSERT_EQ(d.code, 0) << d.err;

  for (const auto& [k, p] : c.cgroup_paths) EXPECT_FALSE(fs::Exists(p)) << p;
  EXPECT_FALSE(LinkExists(c.host_veth));
  EXPECT_FALSE(fs::Exists(c.dir()));
  auto mi = fs::ReadFile("/proc/self/mountinfo");
  ASSERT_TRUE(mi.ok());
  EXPECT_EQ(mi->find(dir_), std::string::npos) << *mi;
  EXPECT_EQ(Run({"state", id}).code, 3);
}

TEST_F(RuntimeTest, ForegroundRunForwardsSignalsAndReturnsTheStatus) {
  std::string id = Id("fg");
  std::string ready = StrFormat("tmp/ready-%d", getpid());
  std::string ready_host = dir_ + "/rootfs/" + ready;
  unlink(ready_host.c_str());
  ScopeExit rm([&] { unlink(ready_host.c_str()); });
  pid_t g = fork();
  if (g == 0) {
    int n = open("/dev/null", O_RDWR);
    dup2(n, 0);
    dup2(n, 1);
    execl(GODWIT_BIN, GODWIT_BIN, "--root", root_.c_str(), "run", "--rootfs",
          (dir_ + "/rootfs").c_str(), "--name", id.c_str(), "--", "sh", "-c",
          ("trap 'exit 7' TERM; touch /" + ready + "; sleep 1000 & wait").c_str(), nullptr);
    _exit(127);
  }
  // The trap is in place once the file exists (written by another process: poll, bounded).
  for (int i = 0; i < 1000 && !fs::Exists(ready_host); ++i) usleep(5000);
  ASSERT_TRUE(fs::Exists(ready_host));
  kill(g, SIGTERM);  // to godwit, which forwards it to the container's pid 1
  int st = 0;
  ASSERT_EQ(waitpid(g, &st, 0), g);
  ASSERT_TRUE(WIFEXITED(st));
  EXPECT_EQ(WEXITSTATUS(st), 7);
  EXPECT_FALSE(fs::Exists(root_ + "/" + id));  // foreground run deleted it
}

TEST_F(RuntimeTest, DeleteForceStopsARunningContainer) {
  std::string id = Id("force");
  Container c = RunDetached(id, {}, {"sh", "-c", "sleep 1000 & sleep 1000 & exec sleep 1000"});
  ASSERT_GT(c.pid, 0);
  CmdResult d = Run({"delete", id});
  EXPECT_EQ(d.code, 6);  // unsupported state: running, no --force
  EXPECT_NE(d.err.find("running"), std::string::npos);
  // The shell forks its two sleeps after `run -d` returned: wait (bounded) for all three.
  for (int i = 0; i < 500; ++i) {
    auto pids = Ps(root_, id);
    if (pids.ok() && pids->size() == 3 &&
        ReadOr(StrFormat("/proc/%d/cmdline", c.pid)).rfind("sleep", 0) == 0)
      break;
    usleep(10000);
  }
  CmdResult ps = Run({"ps", "--format", "json", id});
  ASSERT_EQ(ps.code, 0);
  EXPECT_EQ(json::parse(ps.out).size(), 3u) << ps.out;
  CmdResult l = Run({"list", "--json"});
  ASSERT_EQ(l.code, 0);
  bool listed = false;
  json listing = json::parse(l.out);
  for (const auto& e : listing["containers"])
    listed = listed || (e["id"] == id && e["status"] == "running" && e["pid"] == c.pid);
  EXPECT_TRUE(listed) << l.out;
  d = Run({"delete", "--force", id});
  ASSERT_EQ(d.code, 0) << d.err;
  Reap(c.pid);
  for (const auto& [k, p] : c.cgroup_paths) EXPECT_FALSE(fs::Exists(p)) << p;
  EXPECT_FALSE(fs::Exists(c.dir()));
}

TEST_F(RuntimeTest, CreateStartStateFromBundle) {
  std::string id = Id("bundle");
  std::string bundle = dir_ + "/bundle-" + id;
  ASSERT_TRUE(fs::MkdirAll(bundle).ok());
  RunOptions o;
  o.rootfs = dir_ + "/rootfs";
  o.args = {"sleep", "1000"};
  o.hostname = "bundled";
  ASSERT_TRUE(fs::WriteFile(bundle + "/config.json", MakeConfig(o).dump()).ok());
  std::string pidfile = bundle + "/pid";
  CmdResult r = Run({"create", id, "--bundle", bundle, "--pid-file", pidfile});
  ASSERT_EQ(r.code, 0) << r.err;
  json st = json::parse(Run({"state", id}).out);
  EXPECT_EQ(st["status"], "created");
  EXPECT_EQ(st["bundle"], bundle);
  pid_t pid = st["pid"].get<int>();
  EXPECT_EQ(Trim(*fs::ReadFile(pidfile)), std::to_string(pid));
  // Before start the init waits in godwit's code, not in the container's program.
  EXPECT_EQ(Trim(ReadOr(StrFormat("/proc/%d/comm", pid))), "godwit");
  CmdResult l = Run({"list"});
  EXPECT_NE(l.out.find(id), std::string::npos);
  EXPECT_NE(l.out.find("created"), std::string::npos);

  ASSERT_EQ(Run({"start", id}).code, 0);
  EXPECT_EQ(json::parse(Run({"state", id}).out)["status"], "running");
  EXPECT_NE(Run({"start", id}).code, 0);  // only once
  CmdResult ps = Run({"ps", "--format", "json", id});
  ASSERT_EQ(ps.code, 0);
  EXPECT_EQ(json::parse(ps.out), json::array({pid}));
  // pid 1 of a pid namespace ignores default-action signals like TERM: KILL it.
  ASSERT_EQ(Run({"kill", id, "KILL"}).code, 0);
  Reap(pid);
  EXPECT_EQ(json::parse(Run({"state", id}).out)["status"], "stopped");
  EXPECT_EQ(Run({"delete", id}).code, 0);
}

// linux.namespaces[].path (Podman's netavark hands the network namespace it made this way): the
// container joins that namespace instead of making one; a path for a kind godwit cannot join is
// refused naming it; a checkpoint of such a container is refused (exit 6), it runs on.
TEST_F(RuntimeTest, JoinsANetworkNamespaceByPath) {
  // A network namespace kept alive by an fd of ours, reachable as /proc/OURPID/fd/N.
  int ready[2];
  ASSERT_EQ(pipe2(ready, O_CLOEXEC), 0);
  pid_t holder = fork();
  ASSERT_GE(holder, 0);
  if (holder == 0) {
    if (unshare(CLONE_NEWNET) < 0) _exit(1);
    char c = 'r';
    if (write(ready[1], &c, 1) != 1) _exit(1);
    pause();
    _exit(0);
  }
  close(ready[1]);
  char c;
  ASSERT_EQ(read(ready[0], &c, 1), 1);
  close(ready[0]);
  int nsfd = open(StrFormat("/proc/%d/ns/net", holder).c_str(), O_RDONLY | O_CLOEXEC);
  kill(holder, SIGKILL);
  Reap(holder);
  ASSERT_GE(nsfd, 0);
  struct stat want;
  ASSERT_EQ(fstat(nsfd, &want), 0);
  std::string path = StrFormat("/proc/%d/fd/%d", getpid(), nsfd);

  std::string id = Id("netpath");
  std::string bundle = dir_ + "/bundle-" + id;
  ASSERT_TRUE(fs::MkdirAll(bundle).ok());
  RunOptions o;
  o.rootfs = dir_ + "/rootfs";
  o.args = {"sleep", "1000"};
  json cfg = MakeConfig(o);
  for (auto& n : cfg["linux"]["namespaces"])
    if (n["type"] == "network") n["path"] = path;
  ASSERT_TRUE(fs::WriteFile(bundle + "/config.json", cfg.dump()).ok());
  CmdResult r = Run({"create", id, "--bundle", bundle});
  ASSERT_EQ(r.code, 0) << r.err;
  ASSERT_EQ(Run({"start", id}).code, 0);
  pid_t pid = json::parse(Run({"state", id}).out)["pid"].get<int>();
  struct stat got;
  ASSERT_EQ(stat(StrFormat("/proc/%d/ns/net", pid).c_str(), &got), 0);
  EXPECT_EQ(got.st_ino, want.st_ino);
  EXPECT_EQ(got.st_dev, want.st_dev);
  CmdResult ck = Run({"checkpoint", id, "--image-path", dir_ + "/img-" + id});
  EXPECT_EQ(ck.code, 6) << ck.err;
  EXPECT_NE(ck.err.find("linux.namespaces"), std::string::npos) << ck.err;
  EXPECT_EQ(json::parse(Run({"state", id}).out)["status"], "running");
  EXPECT_EQ(Run({"delete", "--force", id}).code, 0);
  Reap(pid);
  close(nsfd);

  // pid namespaces are not joined by path: refused, naming the field.
  std::string id2 = Id("pidpath");
  std::string bundle2 = dir_ + "/bundle-" + id2;
  ASSERT_TRUE(fs::MkdirAll(bundle2).ok());
  json cfg2 = MakeConfig(o);
  for (auto& n : cfg2["linux"]["namespaces"])
    if (n["type"] == "pid") n["path"] = "/proc/1/ns/pid";
  ASSERT_TRUE(fs::WriteFile(bundle2 + "/config.json", cfg2.dump()).ok());
  CmdResult r2 = Run({"create", id2, "--bundle", bundle2});
  EXPECT_EQ(r2.code, 7) << r2.err;
  EXPECT_NE(r2.err.find("linux.namespaces[pid].path"), std::string::npos) << r2.err;
}

TEST_F(RuntimeTest, FreezeAndThawThroughTheCgroup) {
  std::string id = Id("freeze");
  Container c = RunDetached(id, {}, {"sleep", "1000"});
  ASSERT_GT(c.pid, 0);
  auto cg = OpenCgroup(id);
  ASSERT_TRUE(cg.ok());
  auto f = (*cg)->Freeze();
  ASSERT_TRUE(f.ok()) << f.error().to_string();
  auto frozen = (*cg)->IsFrozen();
  ASSERT_TRUE(frozen.ok());
  EXPECT_TRUE(*frozen);
  // A frozen init does not run: its state shows it stopped by the freezer.
  EXPECT_NE(ReadOr(StrFormat("/proc/%d/status", c.pid)).find("State:"), std::string::npos);
  auto t = (*cg)->Thaw();
  ASSERT_TRUE(t.ok()) << t.error().to_string();
  frozen = (*cg)->IsFrozen();
  ASSERT_TRUE(frozen.ok());
  EXPECT_FALSE(*frozen);
  // The same through the verbs, with the status a second invocation sees.
  ASSERT_EQ(Run({"pause", id}).code, 0);
  EXPECT_EQ(json::parse(Run({"state", id}).out)["status"], "paused");
  EXPECT_NE(Run({"exec", id, "--", "true"}).code, 0);
  EXPECT_NE(Run({"pause", id}).code, 0);
  ASSERT_EQ(Run({"resume", id}).code, 0);
  EXPECT_EQ(json::parse(Run({"state", id}).out)["status"], "running");
  EXPECT_EQ(Run({"exec", id, "--", "true"}).code, 0);
}

// What restore does: build the pieces with the library, then Register; the verbs take over.
TEST_F(RuntimeTest, RegisterAdoptsAContainerBuiltElsewhere) {
  std::string id = Id("adopt");
  auto cg = OpenCgroup(id);
  ASSERT_TRUE(cg.ok());
  ASSERT_TRUE((*cg)->Create().ok());
  ScopeExit destroy([&] { (void)(*cg)->Destroy(); });
  pid_t pid = fork();
  if (pid == 0) {
    for (;;) pause();
  }
  ScopeExit reap([&] {
    kill(pid, SIGKILL);
    waitpid(pid, nullptr, 0);
  });
  ASSERT_TRUE((*cg)->AddProcess(pid).ok());
  Container c;
  c.root = root_;
  c.id = id;
  c.rootfs = dir_ + "/rootfs";
  c.pid = pid;
  c.cgroup_layout = CgroupLayoutName((*cg)->layout());
  c.cgroup_paths = (*cg)->Paths();
  RunOptions o;
  o.rootfs = c.rootfs;
  o.args = {"sleep", "1000"};
  auto r = Register(c, MakeConfig(o).dump());
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  EXPECT_EQ(Register(c, MakeConfig(o).dump()).error().kind(), ErrorKind::kExists);
  EXPECT_EQ(json::parse(Run({"state", id}).out)["status"], "running");
  EXPECT_EQ(json::parse(Run({"ps", "--format", "json", id}).out), json::array({pid}));
  ASSERT_EQ(Run({"delete", "--force", id}).code, 0);
  int st = 0;
  ASSERT_EQ(waitpid(pid, &st, 0), pid);
  reap.dismiss();
  EXPECT_TRUE(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
  for (const auto& [k, p] : c.cgroup_paths) EXPECT_FALSE(fs::Exists(p)) << p;
  EXPECT_FALSE(fs::Exists(root_ + "/" + id));
}

// --- bad input: clear error, documented exit code, nothing left behind -----------------------

class RuntimeBadInputTest : public RuntimeTest {
 protected:
  void ExpectNothingLeft(const std::string& id) {
    EXPECT_FALSE(fs::Exists(root_ + "/" + id));
    auto roots = DetectCgroupLayout();
    ASSERT_TRUE(roots.ok());
    for (const auto& [ctrl, mnt] : roots->v1)
      EXPECT_FALSE(fs::Exists(mnt + "/godwit/" + id)) << ctrl;
    if (!roots->unified.empty()) {
      EXPECT_FALSE(fs::Exists(roots->unified + "/godwit/" + id));
    }
    EXPECT_FALSE(LinkExists(HostVethName(root_, id)));
  }
  std::string Bundle(const std::string& id, const std::string& config) {
    std::string b = dir_ + "/bundle-" + id;
    EXPECT_TRUE(fs::MkdirAll(b).ok());
    EXPECT_TRUE(fs::WriteFile(b + "/config.json", config).ok());
    return b;
  }
  std::string GoodConfig(const std::string& cmd = "true") {
    RunOptions o;
    o.rootfs = dir_ + "/rootfs";
    o.args = {cmd};
    return MakeConfig(o).dump();
  }
};

TEST_F(RuntimeBadInputTest, MissingRootfs) {
  std::string id = Id("norootfs");
  CmdResult r = RunFg(id, {}, {"true"});  // sanity: the good rootfs works
  ASSERT_EQ(r.code, 0) << r.err;
  r = Run({"run", "--rootfs", dir_ + "/does-not-exist", "--name", id, "--", "true"});
  EXPECT_EQ(r.code, 3);
  EXPECT_NE(r.err.find("does-not-exist"), std::string::npos) << r.err;
  ExpectNothingLeft(id);
  // Through a bundle whose root.path is missing.
  json cfg = json::parse(GoodConfig());
  cfg["root"]["path"] = "nope";
  r = Run({"create", id, "--bundle", Bundle(id, cfg.dump())});
  EXPECT_EQ(r.code, 3);
  EXPECT_NE(r.err.find("root.path"), std::string::npos) << r.err;
  ExpectNothingLeft(id);
}

TEST_F(RuntimeBadInputTest, MalformedAndUnsupportedConfig) {
  std::string id = Id("badcfg");
  CmdResult r = Run({"create", id, "--bundle", Bundle(id, "{\"ociVersion\": ")});
  EXPECT_EQ(r.code, 7);
  EXPECT_NE(r.err.find("not valid JSON"), std::string::npos) << r.err;
  ExpectNothingLeft(id);

  json cfg = json::parse(GoodConfig());
  cfg["linux"]["seccomp"] = {{"defaultAction", "SCMP_ACT_NOTIFY"}};
  r = Run({"create", id, "--bundle", Bundle(id, cfg.dump())});
  EXPECT_EQ(r.code, 7);
  EXPECT_NE(r.err.find("linux.seccomp"), std::string::npos) << r.err;
  ExpectNothingLeft(id);

  // A terminal needs somewhere to send the pty master.
  cfg = json::parse(GoodConfig());
  cfg["process"]["terminal"] = true;
  r = Run({"create", id, "--bundle", Bundle(id, cfg.dump())});
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("--console-socket"), std::string::npos) << r.err;
  ExpectNothingLeft(id);

  cfg = json::parse(GoodConfig("no-such-program"));
  r = Run({"create", id, "--bundle", Bundle(id, cfg.dump())});
  EXPECT_EQ(r.code, 7);
  EXPECT_NE(r.err.find("no-such-program"), std::string::npos) << r.err;
  ExpectNothingLeft(id);
}

TEST_F(RuntimeBadInputTest, DuplicateAndUnknownIds) {
  std::string id = Id("dup");
  Container c = RunDetached(id, {}, {"sleep", "1000"});
  ASSERT_GT(c.pid, 0);
  CmdResult r = Run({"run", "--rootfs", dir_ + "/rootfs", "--name", id, "--detach", "--", "true"});
  EXPECT_EQ(r.code, 4);
  EXPECT_NE(r.err.find("already exists"), std::string::npos) << r.err;
  // The first one is untouched.
  EXPECT_EQ(json::parse(Run({"state", id}).out)["status"], "running");
  for (const auto& [k, p] : c.cgroup_paths) EXPECT_TRUE(fs::Exists(p)) << p;

  std::string unknown = StrFormat("t%d-nosuch", getpid());
  EXPECT_EQ(Run({"state", unknown}).code, 3);
  EXPECT_EQ(Run({"kill", unknown}).code, 3);
  EXPECT_EQ(Run({"delete", unknown}).code, 3);
  EXPECT_EQ(Run({"exec", unknown, "--", "true"}).code, 3);
  EXPECT_EQ(Run({"state", "../etc"}).code, 2);
}

TEST_F(RuntimeBadInputTest, LimitTheKernelRefuses) {
  std::string id = Id("badlimit");
  // A CFS quota under 1 ms is EINVAL for the kernel.
  CmdResult r =
      Run({"run", "--rootfs", dir_ + "/rootfs", "--name", id, "--cpus", "0.0001", "--", "true"});
  EXPECT_EQ(r.code, 7);
  EXPECT_NE(r.err.find("cfs_quota_us"), std::string::npos) << r.err;
  ExpectNothingLeft(id);
}

TEST_F(RuntimeBadInputTest, AddressAlreadyInUse) {
  std::string a = Id("ipa"), b = Id("ipb");
  std::string ip = Subnet(3) + ".10/24";
  Container c = RunDetached(a, {"--ip", ip}, {"sleep", "1000"});
  ASSERT_GT(c.pid, 0);
  CmdResult r = Run({"run", "--rootfs", dir_ + "/rootfs", "--name", b, "--ip", ip, "--", "true"});
  EXPECT_EQ(r.code, 4);
  EXPECT_NE(r.err.find("in use"), std::string::npos) << r.err;
  ExpectNothingLeft(b);
  EXPECT_TRUE(LinkExists(c.host_veth));
}

// What an engine (Podman, conmon) asks of an OCI runtime, on real containers: a seccomp profile
// that the kernel enforces (on exec'd processes too), linux.cgroupsPath honoured, a read-only
// cgroup mount, exec --detach --pid-file, kill 0, update, a terminal through --console-socket,
// delete --force of a gone id.
class RuntimeEngineTest : public RuntimeBadInputTest {};

TEST_F(RuntimeEngineTest, SeccompCgroupsPathExecUpdateKill0) {
  std::string id = Id("eng");
  std::string parent = StrFormat("gweng-%d", getpid());
  json cfg = json::parse(GoodConfig());
  cfg["process"]["args"] = {"sleep", "1000"};
  cfg["linux"]["cgroupsPath"] = "/" + parent + "/leaf-" + id;
  cfg["linux"]["seccomp"] = {
      {"defaultAction", "SCMP_ACT_ALLOW"},
      {"syscalls",
       {{{"names", {"mkdir", "mkdirat"}}, {"action", "SCMP_ACT_ERRNO"}, {"errnoRet", 1}}}}};
  cfg["mounts"].push_back({{"destination", "/sys/fs/cgroup"},
                           {"type", "cgroup"},
                           {"source", "cgroup"},
                           {"options", {"nosuid", "noexec", "nodev", "ro"}}});
  CmdResult r = Run({"run", id, "--bundle", Bundle(id, cfg.dump()), "--detach"});
  ASSERT_EQ(r.code, 0) << r.err;
  auto c = Container::Load(root_, id);
  ASSERT_TRUE(c.ok());
  ASSERT_FALSE(c->cgroup_paths.empty());
  for (const auto& [ctrl, path] : c->cgroup_paths) {
    EXPECT_NE(path.find(parent + "/leaf-" + id), std::string::npos) << ctrl << " " << path;
    EXPECT_TRUE(fs::Exists(path)) << path;
  }
  auto pids = Ps(root_, id);
  ASSERT_TRUE(pids.ok());
  EXPECT_EQ(pids->size(), 1u);

  // The filter holds for the init and for what exec starts.
  CmdResult st = Run({"exec", id, "--", "grep", "Seccomp:", "/proc/1/status"});
  EXPECT_NE(st.out.find("2"), std::string::npos) << st.out << st.err;
  CmdResult mk = Run({"exec", id, "--", "mkdir", "/tmp/blocked"});
  EXPECT_NE(mk.code, 0);
  EXPECT_NE(mk.err.find("Operation not permitted"), std::string::npos) << mk.err;
  CmdResult ro = Run({"exec", id, "--", "sh", "-c", "touch /sys/fs/cgroup/x 2>/dev/null || echo ro"});
  EXPECT_EQ(Trim(ro.out), "ro") << ro.err;

  // exec --detach --pid-file: returns once the process runs; we (the subreaper) reap it.
  std::string pidf = dir_ + "/exec-" + id + ".pid";
  CmdResult ex = Run({"exec", "--detach", "--pid-file", pidf, id, "--", "sleep", "1000"});
  ASSERT_EQ(ex.code, 0) << ex.err;
  pid_t p = atoi(ReadOr(pidf).c_str());
  ASSERT_GT(p, 0);
  EXPECT_NE(ReadOr(StrFormat("/proc/%d/cmdline", p)).find("sleep"), std::string::npos);
  pids = Ps(root_, id);
  ASSERT_TRUE(pids.ok());
  EXPECT_EQ(pids->size(), 2u);
  kill(p, SIGKILL);
  EXPECT_EQ(waitpid(p, nullptr, 0), p);

  EXPECT_EQ(Run({"kill", id, "0"}).code, 0);  // liveness, as conmon asks

  CmdResult up = Run({"update", "--memory", "64M", id});
  ASSERT_EQ(up.code, 0) << up.err;
  if (c->cgroup_paths.count("memory")) {
    EXPECT_EQ(Trim(ReadOr(c->cgroup_paths["memory"] + "/memory.limit_in_bytes")), "67108864");
  } else {
    EXPECT_EQ(Trim(ReadOr(c->cgroup_paths["unified"] + "/memory.max")), "67108864");
  }
  auto after = Container::Load(root_, id);
  ASSERT_TRUE(after.ok());
  EXPECT_EQ(after->resources.memory_limit.value_or(0), 67108864);

  EXPECT_EQ(Run({"delete", "--force", id}).code, 0);
  for (const auto& [ctrl, path] : c->cgroup_paths) EXPECT_FALSE(fs::Exists(path)) << path;
  auto roots = DetectCgroupLayout();
  ASSERT_TRUE(roots.ok());
  for (const auto& [ctrl, mnt] : roots->v1) EXPECT_FALSE(fs::Exists(mnt + "/" + parent)) << ctrl;
  // Gone already: --force says so with success, as runc (engines clean up twice).
  EXPECT_EQ(Run({"delete", "--force", id}).code, 0);
  EXPECT_EQ(Run({"delete", id}).code, 3);
}

TEST_F(RuntimeEngineTest, TerminalThroughConsoleSocket) {
  std::string id = Id("tty");
  std::string sock_path = dir_ + "/console-" + id + ".sock";
  int ls = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(ls, 0);
  ScopeExit close_ls([&] {
    close(ls);
    unlink(sock_path.c_str());
  });
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", sock_path.c_str());
  ASSERT_EQ(bind(ls, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(listen(ls, 4), 0);

  json cfg = json::parse(GoodConfig());
  cfg["process"]["terminal"] = true;
  cfg["process"]["consoleSize"] = {{"height", 33}, {"width", 101}};
  cfg["process"]["args"] = {"sh", "-c", "echo hello-$(tty); stty size; sleep 1000"};
  CmdResult r = Run({"run", id, "--bundle", Bundle(id, cfg.dump()), "--detach",
                     "--console-socket", sock_path});
  ASSERT_EQ(r.code, 0) << r.err;
  int conn = accept4(ls, nullptr, nullptr, SOCK_CLOEXEC);
  ASSERT_GE(conn, 0);
  char name[128] = {};
  alignas(cmsghdr) char cbuf[CMSG_SPACE(sizeof(int))];
  iovec iov{name, sizeof(name) - 1};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = cbuf;
  msg.msg_controllen = sizeof(cbuf);
  ASSERT_GT(recvmsg(conn, &msg, 0), 0);
  close(conn);
  cmsghdr* cm = CMSG_FIRSTHDR(&msg);
  ASSERT_NE(cm, nullptr);
  ASSERT_EQ(cm->cmsg_type, SCM_RIGHTS);
  int master;
  memcpy(&master, CMSG_DATA(cm), sizeof(int));
  ScopeExit close_master([&] { close(master); });
  EXPECT_EQ(std::string(name), "/dev/pts/0");
  // The program's output arrives on the master: its stdout is the pty, sized as configured.
  std::string out;
  double deadline = time(nullptr) + 20;
  while (time(nullptr) < deadline && out.find("33 101") == std::string::npos) {
    pollfd pfd{master, POLLIN, 0};
    if (poll(&pfd, 1, 1000) <= 0) continue;
    char buf[256];
    ssize_t n = read(master, buf, sizeof(buf));
    if (n <= 0) break;
    out.append(buf, n);
  }
  EXPECT_NE(out.find("hello-/dev/pts/0"), std::string::npos) << out;
  EXPECT_NE(out.find("33 101"), std::string::npos) << out;
  EXPECT_EQ(Run({"delete", "--force", id}).code, 0);
}

}  // namespace
}  // namespace godwit::runtime
