// A container with a user namespace (container ids 0-65535 are host ids 100000-165535) through the
// binary: its init (root inside), a process of user 1000 inside counting into a tmpfs (files each
// owns), an echo server with a TCP connection from the host, a SysV shm segment made inside, an IP
// behind a veth with an nftables ruleset. `checkpoint` (deleted), `restore`: the same maps and
// setgroups, every process keeps its pids inside and its uids/gids/groups/capabilities as seen
// inside and from the host (/proc/PID/status), the counters carry on, the files keep their
// owners, the connection carries on, the shm segment is there with its creator, every namespace
// but the pid one is owned by the new user namespace (its root remounts its tmpfs, administers
// its netns); ps/exec/kill/delete and a second cycle work on the restored container. Also: a
// --leave-running checkpoint exported, then imported under another id and address; a writable
// layer (disk quota); damaged maps and a taken id fail cleanly; threads and nested user
// namespaces are refused at checkpoint; a plain `godwit dump` of a tree in its own user namespace
// is refused; idmap parsing.
#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/nsfs.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <map>
#include <nlohmann/json.hpp>
#include <thread>

#include "common/idmap.h"
#include "container/checkpoint.h"
#include "images/image.h"
#include "proto/container.pb.h"
#include "runtime/network.h"
#include "runtime/runtime.h"
#include "runtime/spec.h"
#include "tests/container_test_util.h"

namespace godwit::container {
namespace {

using testing::Sh;
using testing::CliRun;
using testing::Godwit;
using testing::ReadInt;
using testing::WaitAbove;
using testing::TempDir;

constexpr uint32_t kHostBase = 100000;

// A TCP connection to ip:port (the container's echo server), retried until it listens (bounded).
int Connect(const std::string& ip, int port) {
  auto end = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (std::chrono::steady_clock::now() < end) {
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_port = htons(port);
    ::inet_pton(AF_INET, ip.c_str(), &sa.sin_addr);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) == 0) return fd;
    ::close(fd);
    ::usleep(20000);
  }
  return -1;
}

// Sends msg and reads back as many bytes (the echo), within 10 s.
std::string Echo(int fd, const std::string& msg) {
  if (::send(fd, msg.data(), msg.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(msg.size()))
    return "send failed";
  std::string got;
  auto end = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (got.size() < msg.size() && std::chrono::steady_clock::now() < end) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 100) <= 0) continue;
    char buf[256];
    ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
    if (n <= 0) return got + (n == 0 ? "<EOF>" : "<error>");
    got.append(buf, n);
  }
  return got;
}

// "Key:\tvalue" of /proc/PID/status.
std::string StatusField(pid_t pid, const std::string& key) {
  auto st = fs::ReadFile(StrFormat("/proc/%d/status", pid));
  if (!st.ok()) return "";
  std::string text = "\n" + *st;
  size_t at = text.find("\n" + key + ":");
  if (at == std::string::npos) return "";
  size_t b = at + key.size() + 2, e = text.find('\n', b);
  return fs::Trim(text.substr(b, e - b));
}

// What identifies a process's credentials: from the host (status as we read it) and inside
// (status read by a process in the container's user namespace: nsenter -U).
struct Creds {
  std::string uid, gid, groups, cap_eff, cap_prm, cap_bnd, nspid;
  bool operator==(const Creds&) const = default;
};
std::ostream& operator<<(std::ostream& o, const Creds& c) {
  return o << "uid[" << c.uid << "] gid[" << c.gid << "] groups[" << c.groups << "] eff["
           << c.cap_eff << "] prm[" << c.cap_prm << "] bnd[" << c.cap_bnd << "] nspid[" << c.nspid
           << "]";
}
Creds HostCreds(pid_t pid) {
  return {StatusField(pid, "Uid"),    StatusField(pid, "Gid"),    StatusField(pid, "Groups"),
          StatusField(pid, "CapEff"), StatusField(pid, "CapPrm"), StatusField(pid, "CapBnd"),
          StatusField(pid, "NSpid")};
}
Creds InsideCreds(pid_t init, pid_t inner) {
  // The container's /proc, read from inside its user (and pid, mount) namespaces.
  auto r = Sh(StrFormat("nsenter -t %d -U -m -p cat /proc/%d/status", init, inner));
  if (!r.ok()) return {};
  auto field = [&](const std::string& key) {
    size_t at = r->find("\n" + key + ":");
    if (at == std::string::npos) return std::string();
    size_t b = at + key.size() + 2, e = r->find('\n', b);
    return fs::Trim(r->substr(b, e - b));
  };
  return {field("Uid"),    field("Gid"),    field("Groups"), field("CapEff"),
          field("CapPrm"), field("CapBnd"), field("NSpid")};
}

class ContainerUserns : public ::testing::Test {
 protected:
  void SetUp() override {
    id_ = StrFormat("gwcun%d", getpid());
    ip_ = StrFormat("198.19.%d.60", 150 + getpid() % 50);
    root_ = tmp_.path() + "/state";
    bundle_ = tmp_.path() + "/bundle";
    std::string rootfs = bundle_ + "/rootfs";
    ASSERT_OK(runtime::MakeBusyboxRootfs(rootfs));
    // A second user for the non-root process (the rootfs itself stays host root's).
    ASSERT_OK(fs::WriteFile(rootfs + "/etc/passwd",
                            "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/:/bin/sh\n"
                            "nobody:x:65534:65534:nobody:/:/bin/false\n"));
    ASSERT_OK(fs::WriteFile(rootfs + "/etc/group",
                            "root:x:0:\napp:x:1000:\nextra:x:2000:app\nnogroup:x:65534:\n"));
    runtime::RunOptions o;
    o.rootfs = "rootfs";
    o.hostname = "un-" + id_;
    o.memory = 48 << 20;
    o.ip = ip_ + "/24";
    o.allow_ports = {"8080"};  // an nftables ruleset in the netns the user namespace owns
    o.args = {"sh", "-c",
              "nc -ll -p 8080 -e cat & "
              "echo before > /dev/shm/f; mkdir /dev/shm/app; chown 1000:1000 /dev/shm/app; "
              "su -s /bin/sh app -c 'echo mine > /dev/shm/app/own; i=0; while true; do "
              "i=$((i+1)); echo $i > /dev/shm/app/count; usleep 20000; done' & "
              "i=0; while true; do i=$((i+1)); echo $i > /dev/shm/count; usleep 20000; done"};
    nlohmann::json cfg = runtime::MakeConfig(o);
    cfg["linux"]["namespaces"].push_back({{"type", "user"}});
    cfg["linux"]["uidMappings"] = {{{"containerID", 0}, {"hostID", kHostBase}, {"size", 65536}}};
    cfg["linux"]["gidMappings"] = {{{"containerID", 0}, {"hostID", kHostBase}, {"size", 65536}}};
    ASSERT_OK(fs::WriteFile(bundle_ + "/config.json", cfg.dump()));
  }
  void TearDown() override {
    for (const auto& id : ids_) (void)runtime::Delete(root_, id, true);
    for (pid_t p : reap_) ::waitpid(p, nullptr, 0);
  }
  pid_t StatePid(const std::string& id) {
    CliRun s = Godwit({"--root", root_, "state", id});
    auto j = nlohmann::json::parse(s.out, nullptr, false);
    if (s.code != 0 || j.is_discarded()) return 0;
    return j.value("pid", 0);
  }
  // The container's processes: host pid -> pid inside.
  std::map<pid_t, pid_t> Processes(const std::string& id) {
    std::map<pid_t, pid_t> out;
    CliRun r = Godwit({"--root", root_, "ps", "--format", "json", id});
    auto j = nlohmann::json::parse(r.out, nullptr, false);
    if (r.code != 0 || !j.is_array()) return out;
    pid_t init = StatePid(id);
    for (pid_t p : j.get<std::vector<pid_t>>()) {
      // The two long-lived shells (the init, and its child of user 1000), not their short-lived
      // usleep children (named sh until they exec).
      auto ns = fs::Split(StatusField(p, "NSpid"), '\t');
      if (ns.size() != 2) continue;
      bool app = atoi(StatusField(p, "PPid").c_str()) == init &&
                 StatusField(p, "Uid").rfind(std::to_string(kHostBase + 1000), 0) == 0;
      if (p == init || app) out[p] = atoi(ns[1].c_str());
    }
    return out;
  }

  void Run() {
    ids_.push_back(id_);
    CliRun r = Godwit({"--root", root_, "run", id_, "--bundle", bundle_, "--detach"}, false);
    ASSERT_EQ(r.code, 0) << r;
    init_ = StatePid(id_);
    ASSERT_GT(init_, 0);
    reap_.push_back(init_);
    std::string shm = StrFormat("/proc/%d/root/dev/shm", init_);
    ASSERT_GT(WaitAbove(shm + "/count", 2), 2);
    ASSERT_GT(WaitAbove(shm + "/app/count", 2), 2);
    // A SysV segment made by the container's root (nsenter -U: uid 0 inside).
    auto mk = Sh(StrFormat("nsenter -t %d -U -i ipcmk -M 8192", init_));
    ASSERT_OK(mk);
    shm_before_ = IpcsInside(init_);
    ASSERT_NE(shm_before_.find("8192"), std::string::npos) << shm_before_;
  }
  // Key, id, owner and size of the segments, as the container sees them.
  std::string IpcsInside(pid_t init) {
    auto r =
        Sh(StrFormat("nsenter -t %d -U -i ipcs -m | grep '^0x' | awk '{print $1,$2,$3,$4,$5}'"
                     "; nsenter -t %d -U -i ipcs -m -c | awk 'NR > 3 {print}'",
                     init, init));
    return r.ok() ? *r : r.error().to_string();
  }

  struct Snapshot {
    std::map<pid_t, Creds> host, inside;  // by pid inside
    std::string uid_map, gid_map, setgroups;
  };
  Snapshot Take(const std::string& id) {
    Snapshot s;
    pid_t init = StatePid(id);
    for (auto [host, inner] : Processes(id)) {
      Creds h = HostCreds(host);
      h.nspid.clear();  // host pids of a copy differ
      s.host[inner] = h;
      s.inside[inner] = InsideCreds(init, inner);
    }
    s.uid_map = ReadOr(StrFormat("/proc/%d/uid_map", init));
    s.gid_map = ReadOr(StrFormat("/proc/%d/gid_map", init));
    s.setgroups = ReadOr(StrFormat("/proc/%d/setgroups", init));
    return s;
  }
  static std::string ReadOr(const std::string& p) {
    auto r = fs::ReadFile(p);
    return r.ok() ? *r : "";
  }
  void ExpectSame(const Snapshot& a, const Snapshot& b) {
    EXPECT_EQ(a.uid_map, b.uid_map);
    EXPECT_EQ(a.gid_map, b.gid_map);
    EXPECT_EQ(a.setgroups, b.setgroups);
    EXPECT_EQ(a.host.size(), b.host.size());
    for (const auto& [inner, c] : a.host) {
      ASSERT_TRUE(b.host.count(inner)) << "pid " << inner << " inside is gone";
      EXPECT_EQ(c, b.host.at(inner)) << "pid " << inner << " from the host";
      EXPECT_EQ(a.inside.at(inner), b.inside.at(inner)) << "pid " << inner << " inside";
    }
  }

  TempDir tmp_{"cun"};
  std::string id_, ip_, root_, bundle_;
  pid_t init_ = 0;
  std::string shm_before_;
  std::vector<std::string> ids_;
  std::vector<pid_t> reap_;
};

TEST_F(ContainerUserns, CheckpointDeleteRestoreKeepsMapsAndCreds) {
  Run();
  if (HasFatalFailure()) return;
  Snapshot before = Take(id_);
  // What the test is about: a root and a non-root process, as seen inside and from the host.
  ASSERT_EQ(before.host.size(), 2u);
  bool saw_app = false;
  for (const auto& [inner, c] : before.inside) {
    if (c.uid == "1000\t1000\t1000\t1000") {
      saw_app = true;
      EXPECT_EQ(before.host[inner].uid, "101000\t101000\t101000\t101000");
      EXPECT_EQ(before.host[inner].gid, "101000\t101000\t101000\t101000");
      EXPECT_EQ(c.groups, "1000 2000");
    } else {
      EXPECT_EQ(c.uid, "0\t0\t0\t0");
      EXPECT_EQ(before.host[inner].uid, "100000\t100000\t100000\t100000");
    }
  }
  EXPECT_TRUE(saw_app);
  EXPECT_EQ(before.uid_map.empty(), false);

  // A connection from the host to the container's echo server, kept open across the cycle.
  int conn = Connect(ip_, 8080);
  ASSERT_GE(conn, 0);
  UniqueFd conn_fd(conn);
  ASSERT_EQ(Echo(conn, "before\n"), "before\n");
  std::string img = tmp_.path() + "/ckpt";
  CliRun c = Godwit({"--root", root_, "checkpoint", id_, "--image-path", img});
  ASSERT_EQ(c.code, 0) << c.out;
  ::waitpid(init_, nullptr, 0);
  reap_.clear();
  ASSERT_NE(Godwit({"--root", root_, "state", id_}).code, 0);
  // The maps are in the image, as host root read them.
  {
    auto set = images::ImageSet::Open(img + "/" + kContainerDir);
    ASSERT_OK(set);
    img::ContainerCheckpoint rec;
    ASSERT_OK(set->ReadOne(kContainerImage, &rec));
    ASSERT_EQ(rec.userns().uid_map_size(), 1);
    EXPECT_EQ(rec.userns().uid_map(0).inside(), 0u);
    EXPECT_EQ(rec.userns().uid_map(0).outside(), kHostBase);
    EXPECT_EQ(rec.userns().uid_map(0).count(), 65536u);
    EXPECT_FALSE(rec.userns().setgroups_deny());
  }

  CliRun r = Godwit({"--root", root_, "restore", id_, "--image-path", img, "--detach"});
  ASSERT_EQ(r.code, 0) << r.out;
  pid_t pid = StatePid(id_);
  ASSERT_EQ(pid, init_) << "the init keeps its host pid";
  reap_.push_back(pid);
  Snapshot after = Take(id_);
  ExpectSame(before, after);
  // The user namespace is a new one, not the host's; the others are owned by it.
  auto user = Sh(StrFormat("readlink /proc/%d/ns/user /proc/self/ns/user", pid));
  ASSERT_OK(user);
  auto two = fs::Split(fs::Trim(*user), '\n');
  ASSERT_EQ(two.size(), 2u);
  EXPECT_NE(two[0], two[1]);
  // Which user namespace owns each namespace of the init (NS_GET_USERNS).
  auto owner_ino = [](const std::string& path) -> ino_t {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    int owner = ::ioctl(fd, NS_GET_USERNS);
    ::close(fd);
    if (owner < 0) return 0;
    struct stat st;
    int r = ::fstat(owner, &st);
    ::close(owner);
    return r == 0 ? st.st_ino : 0;
  };
  struct stat userns_st, host_st;
  ASSERT_EQ(::stat(StrFormat("/proc/%d/ns/user", pid).c_str(), &userns_st), 0);
  ASSERT_EQ(::stat("/proc/self/ns/user", &host_st), 0);
  for (const char* ns : {"mnt", "uts", "ipc", "net", "cgroup"})
    EXPECT_EQ(owner_ino(StrFormat("/proc/%d/ns/%s", pid, ns)), userns_st.st_ino) << ns;
  // The pid namespace is the host's user namespace's (docs/container.md, user namespaces).
  EXPECT_EQ(owner_ino(StrFormat("/proc/%d/ns/pid", pid)), host_st.st_ino);
  // Its cgroup namespace is rooted at the container's cgroup.
  auto cgroup = Sh(StrFormat("nsenter -t %d -U -C -m -p cat /proc/1/cgroup", pid));
  ASSERT_OK(cgroup);
  EXPECT_NE(cgroup->find(":/\n"), std::string::npos) << *cgroup;
  auto owner = Sh(StrFormat("nsenter -t %d -U -n ip link set lo mtu 1500 && echo net-admin", pid));
  EXPECT_OK(owner);  // the container's root administers its netns: the user ns owns it
  // Its tmpfs belong to its user namespace, as before: its root may remount them.
  EXPECT_OK(
      Sh(StrFormat("nsenter -t %d -U -m -p mount -t tmpfs -o remount,size=32m shm /dev/shm", pid)));
  auto rules = Sh(StrFormat("nsenter -t %d -n nft list ruleset", pid));
  ASSERT_OK(rules);
  EXPECT_NE(rules->find("8080"), std::string::npos) << *rules;
  auto host = Sh(StrFormat("nsenter -t %d -U -u hostname", pid));
  ASSERT_OK(host);
  EXPECT_EQ(*host, "un-" + id_ + "\n");

  // The counters carry on, in files each process owns.
  std::string shm = StrFormat("/proc/%d/root/dev/shm", pid);
  int v = ReadInt(shm + "/count"), w = ReadInt(shm + "/app/count");
  ASSERT_GT(v, 2);
  ASSERT_GT(w, 2);
  EXPECT_GT(WaitAbove(shm + "/count", v), v);
  EXPECT_GT(WaitAbove(shm + "/app/count", w), w);
  struct stat st;
  ASSERT_EQ(::stat((shm + "/app/own").c_str(), &st), 0);
  EXPECT_EQ(st.st_uid, kHostBase + 1000);
  EXPECT_EQ(st.st_gid, kHostBase + 1000);
  ASSERT_EQ(::stat((shm + "/count").c_str(), &st), 0);
  EXPECT_EQ(st.st_uid, kHostBase);
  EXPECT_EQ(*fs::ReadFile(shm + "/f"), "before\n");
  EXPECT_EQ(IpcsInside(pid), shm_before_);
  EXPECT_OK(Sh("busybox ping -c 1 -W 2 " + ip_));
  EXPECT_EQ(Echo(conn, "after the restore\n"), "after the restore\n");

  // An ordinary container: ps, exec (as the container's root, inside its user ns), kill, delete.
  EXPECT_EQ(Processes(id_).size(), 2u);
  CliRun e = Godwit({"--root", root_, "exec", id_, "--", "sh", "-c", "id -u; cat /dev/shm/f"});
  EXPECT_EQ(e.code, 0) << e.out;
  EXPECT_EQ(e.out, "0\nbefore\n");
  // A second cycle, from the restored container (its pid namespace is the host's user
  // namespace's now: nothing in the checkpoint depends on that).
  std::string img2 = tmp_.path() + "/ckpt-again";
  CliRun c2 = Godwit({"--root", root_, "checkpoint", id_, "--image-path", img2});
  ASSERT_EQ(c2.code, 0) << c2.out;
  ::waitpid(pid, nullptr, 0);
  reap_.clear();
  // --lazy: inside a user namespace the processes cannot get a userfaultfd that waits for the
  // kernel's accesses, so their memory is filled before they run (restore/lazy.h); the same
  // container must come back either way.
  CliRun r2 =
      Godwit({"--root", root_, "restore", id_, "--image-path", img2, "--detach", "--lazy"});
  ASSERT_EQ(r2.code, 0) << r2.out;
  ASSERT_EQ(StatePid(id_), pid);
  reap_.push_back(pid);
  ExpectSame(before, Take(id_));
  v = ReadInt(shm + "/app/count");
  EXPECT_GT(WaitAbove(shm + "/app/count", v), v);
  EXPECT_EQ(Godwit({"--root", root_, "kill", id_, "KILL"}).code, 0);
  int wst = 0;
  ASSERT_EQ(::waitpid(pid, &wst, 0), pid);
  reap_.clear();
  EXPECT_TRUE(WIFSIGNALED(wst) && WTERMSIG(wst) == SIGKILL);
  EXPECT_EQ(Godwit({"--root", root_, "delete", id_}).code, 0);
}

TEST_F(ContainerUserns, LeaveRunningExportThenImportUnderAnotherId) {
  Run();
  if (HasFatalFailure()) return;
  Snapshot before = Take(id_);
  std::string img = tmp_.path() + "/ckpt2";
  std::string exported = tmp_.path() + "/userns.export";
  CliRun c = Godwit({"--root", root_, "checkpoint", id_, "--image-path", img, "--leave-running",
                     "--export", exported});
  ASSERT_EQ(c.code, 0) << c.out;
  // The original runs on, its processes unchanged.
  std::string count = StrFormat("/proc/%d/root/dev/shm/count", init_);
  int v = ReadInt(count);
  EXPECT_GT(WaitAbove(count, v), v);
  ExpectSame(before, Take(id_));
  // Restoring into the id that exists fails and leaves it alone.
  CliRun taken = Godwit({"--root", root_, "restore", id_, "--image-path", img, "--detach"});
  EXPECT_EQ(taken.code, static_cast<int>(ErrorKind::kExists)) << taken.out;
  EXPECT_EQ(StatePid(id_), init_);
  // The engine gives every process its host pid back: the copy comes up once the original is
  // gone, under another id and address, from the export file.
  ASSERT_EQ(Godwit({"--root", root_, "delete", "-f", id_}).code, 0);
  ::waitpid(init_, nullptr, 0);
  reap_.clear();
  std::string copy = id_ + "c";
  ids_.push_back(copy);
  std::string ip2 = StrFormat("198.19.%d.61", 150 + getpid() % 50);
  // From the export file (one file: what another host would get).
  CliRun r = Godwit(
      {"--root", root_, "restore", copy, "--import", exported, "--detach", "--ip", ip2 + "/24"});
  ASSERT_EQ(r.code, 0) << r.out;
  pid_t cp = StatePid(copy);
  ASSERT_EQ(cp, init_);
  reap_.push_back(cp);
  ExpectSame(before, Take(copy));
  std::string count2 = StrFormat("/proc/%d/root/dev/shm/app/count", cp);
  int w = ReadInt(count2);
  EXPECT_GT(WaitAbove(count2, w), w);
  EXPECT_OK(Sh("busybox ping -c 1 -W 2 " + ip2));
  EXPECT_EQ(Godwit({"--root", root_, "delete", "-f", copy}).code, 0);
}

// With a disk quota the rootfs is under an overlay whose upper layer is a quota tmpfs: what the
// container wrote into its rootfs comes back with its owners, and the layer stays writable.
TEST_F(ContainerUserns, WritableLayerKeepsItsOwners) {
  auto text = fs::ReadFile(bundle_ + "/config.json");
  ASSERT_OK(text);
  auto cfg = nlohmann::json::parse(*text);
  cfg["annotations"][runtime::kAnnoDisk] = std::to_string(16 << 20);
  ASSERT_OK(fs::WriteFile(bundle_ + "/config.json", cfg.dump()));
  // A directory of the rootfs the container's root owns (the rest is host root's: read-only to
  // it, user namespace or not).
  std::string data = bundle_ + "/rootfs/data";
  ASSERT_OK(fs::MkdirAll(data, 0755));
  ASSERT_OK(fs::WriteFile(data + "/old", "old\n"));
  ASSERT_EQ(::chown(data.c_str(), kHostBase, kHostBase), 0);
  ASSERT_EQ(::chown((data + "/old").c_str(), kHostBase, kHostBase), 0);
  Run();
  if (HasFatalFailure()) return;
  CliRun w = Godwit({"--root", root_, "exec", id_, "--", "sh", "-c",
                     "echo layer > /data/layer && chown 1000:1000 /data/layer && rm /data/old"});
  ASSERT_EQ(w.code, 0) << w.out;
  Snapshot before = Take(id_);
  std::string img = tmp_.path() + "/ckpt-layer";
  CliRun c = Godwit({"--root", root_, "checkpoint", id_, "--image-path", img});
  ASSERT_EQ(c.code, 0) << c.out;
  ::waitpid(init_, nullptr, 0);
  reap_.clear();
  CliRun r = Godwit({"--root", root_, "restore", id_, "--image-path", img, "--detach"});
  ASSERT_EQ(r.code, 0) << r.out;
  pid_t pid = StatePid(id_);
  ASSERT_EQ(pid, init_);
  reap_.push_back(pid);
  ExpectSame(before, Take(id_));
  std::string root = StrFormat("/proc/%d/root", pid);
  EXPECT_EQ(*fs::ReadFile(root + "/data/layer"), "layer\n");
  struct stat st;
  ASSERT_EQ(::stat((root + "/data/layer").c_str(), &st), 0);
  EXPECT_EQ(st.st_uid, kHostBase + 1000);
  EXPECT_FALSE(fs::Exists(root + "/data/old"));  // the whiteout
  EXPECT_TRUE(fs::Exists(data + "/old"));        // the rootfs itself untouched
  EXPECT_FALSE(fs::Exists(data + "/layer"));
  CliRun w2 = Godwit({"--root", root_, "exec", id_, "--", "sh", "-c",
                      "echo again > /data/again && cat /data/again"});
  EXPECT_EQ(w2.code, 0) << w2.out;
  EXPECT_EQ(w2.out, "again\n");
  int v = ReadInt(root + "/dev/shm/count");
  EXPECT_GT(WaitAbove(root + "/dev/shm/count", v), v);
}

TEST_F(ContainerUserns, DamagedMapFailsCleanly) {
  Run();
  if (HasFatalFailure()) return;
  std::string img = tmp_.path() + "/ckpt3";
  ASSERT_EQ(
      Godwit({"--root", root_, "checkpoint", id_, "--image-path", img, "--leave-running"}).code, 0);
  // A copy whose container.img has overlapping uid ranges (the set is sealed by its inventory:
  // the copy is written as a whole new set, the other images byte for byte).
  std::string bad = tmp_.path() + "/ckpt3-bad";
  ASSERT_OK(Sh(StrFormat("mkdir -p %s && cp -a %s/%s %s/", bad.c_str(), img.c_str(), kTreeDir,
                         bad.c_str())));
  {
    auto set = images::ImageSet::Open(img + "/" + kContainerDir);
    ASSERT_OK(set);
    img::ContainerCheckpoint rec;
    ASSERT_OK(set->ReadOne(kContainerImage, &rec));
    auto* extra = rec.mutable_userns()->add_uid_map();
    extra->set_inside(100);
    extra->set_outside(300000);
    extra->set_count(10);
    auto sink = images::OpenDirSink(bad + "/" + kContainerDir);
    ASSERT_OK(sink);
    for (const auto& f : set->inventory().files()) {
      if (f.name() == kContainerImage) {
        ASSERT_OK(images::WriteImage(**sink, kContainerImage, rec));
        continue;
      }
      auto data = fs::ReadFile(img + "/" + kContainerDir + "/" + f.name());
      ASSERT_OK(data);
      auto out = (*sink)->Create(f.name());
      ASSERT_OK(out);
      ASSERT_OK((*out)->Write(data->data(), data->size()));
      ASSERT_OK((*out)->Close());
    }
    ASSERT_OK((*sink)->Finish(images::NewInventory()));
  }
  std::string copy = id_ + "d";
  ids_.push_back(copy);
  CliRun r = Godwit({"--root", root_, "restore", copy, "--image-path", bad, "--detach"});
  EXPECT_EQ(r.code, static_cast<int>(ErrorKind::kBadImage)) << r.out;
  EXPECT_NE(r.err.find("uid map"), std::string::npos) << r;
  EXPECT_FALSE(fs::Exists(root_ + "/" + copy));
  EXPECT_EQ(StatePid(id_), init_);
}

TEST(IdMap, ParsesTranslatesAndRefusesBadMaps) {
  auto m = idmap::Parse("         0     100000      65536\n  70000 300000 10\n", "uid_map");
  ASSERT_OK(m);
  ASSERT_EQ(m->size(), 2u);
  EXPECT_EQ(idmap::ToInside(*m, 100005), 5u);
  EXPECT_EQ(idmap::ToInside(*m, 300009), 70009u);
  EXPECT_FALSE(idmap::ToInside(*m, 99999).has_value());
  EXPECT_FALSE(idmap::ToInside(*m, 165536).has_value());
  EXPECT_EQ(idmap::ToOutside(*m, 65535), 165535u);
  EXPECT_FALSE(idmap::ToOutside(*m, 65536).has_value());
  EXPECT_FALSE(idmap::IsIdentity(*m));
  EXPECT_EQ(idmap::Format(*m), "0 100000 65536\n70000 300000 10\n");
  auto id = idmap::Parse("0 0 4294967295\n", "uid_map");
  ASSERT_OK(id);
  EXPECT_TRUE(idmap::IsIdentity(*id));
  for (const char* bad :
       {"0 100000\n", "0 100000 0\n", "x 1 2\n", "0 1 2 3\n", "0 100000 10\n5 200000 10\n",
        "0 100 10\n20 105 10\n", "4294967295 0 2\n"}) {
    auto r = idmap::Parse(bad, "uid_map");
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_EQ(r.error().kind(), ErrorKind::kBadImage) << bad;
  }
}

// What the restore cannot rebuild is refused at checkpoint: a thread (its host id cannot be chosen
// from inside the user namespace) and a nested user namespace.
TEST(UsernsCheckpoint, AcceptsThreadsRefusesNestedUserNamespaces) {
  // Threads are fine (restored through ns_last_pid inside the container's pid namespace).
  std::atomic<bool> stop{false};
  std::thread t([&] {
    while (!stop) ::usleep(1000);
  });
  img::UserNamespace out;
  auto r = DumpUserNamespace(getpid(), {getpid()}, &out);
  stop = true;
  t.join();
  ASSERT_OK(r);

  testing::NsHolder nested;
  ASSERT_OK(nested.Start(CLONE_NEWUSER));
  auto n = DumpUserNamespace(getpid(), {nested.pid()}, &out);
  ASSERT_FALSE(n.ok());
  EXPECT_EQ(n.error().kind(), ErrorKind::kUnsupported);
  EXPECT_NE(n.error().message().find("nested user namespace"), std::string::npos)
      << n.error().to_string();
}

// A plain tree whose root is in its own user namespace: `godwit dump` refuses it by name.
TEST(PlainTreeUserns, DumpRefusesClearly) {
  int ready[2], hold[2];
  ASSERT_EQ(::pipe2(ready, O_CLOEXEC), 0);
  ASSERT_EQ(::pipe2(hold, O_CLOEXEC), 0);
  pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    char c = ::unshare(CLONE_NEWUSER) == 0 ? 'y' : 'n';
    (void)!::write(ready[1], &c, 1);
    ::close(hold[1]);
    while (::read(hold[0], &c, 1) < 0 && errno == EINTR) {
    }
    ::_exit(0);
  }
  ::close(ready[1]);
  ::close(hold[0]);
  char c = 0;
  ASSERT_EQ(::read(ready[0], &c, 1), 1);
  ::close(ready[0]);
  ASSERT_EQ(c, 'y');
  TempDir dir("cun-plain");
  CliRun r = Godwit({"dump", "--pid", std::to_string(pid), "--images-dir", dir.path() + "/img",
                     "--leave-running"});
  ::close(hold[1]);
  ::waitpid(pid, nullptr, 0);
  EXPECT_EQ(r.code, static_cast<int>(ErrorKind::kUnsupported)) << r.out;
  EXPECT_NE(r.err.find("user namespace"), std::string::npos) << r;
}

}  // namespace
}  // namespace godwit::container
