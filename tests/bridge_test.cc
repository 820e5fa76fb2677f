// Bridged containers on two hosts of one segment (issue 10, "hosts on one machine"): the
// namespaces of scripts/netns-hosts (tests/netns_hosts.h), a busybox container whose veth is a
// port of its host's bridge (`godwit run --bridge br0`, OpenVZ's veth mode).
//   - The client reaches the container's own address through the bridges; the host end has no
//     address, the container no default route (none given); delete removes the port.
//   - Checkpointed on host a and restored on host b (another --root and --cgroup-parent,
//     `--bridge br0`), then back to a (the bridge's name from the image): the client's TCP
//     connection (a `godwit probe` streaming echoes through it) survives with every byte intact,
//     eth0 keeps its MAC (the client never re-resolves it), the segment's bridge learns the new
//     port, new connections reach it; a restore onto a bridge that does not exist fails before
//     making anything. Nothing is left on either host afterwards.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sched.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <nlohmann/json.hpp>
#include <thread>

#include "common/netns.h"
#include "runtime/network.h"
#include "runtime/runtime.h"
#include "tests/container_test_util.h"
#include "tests/netns_hosts.h"
#include "tests/probe_client.h"

namespace godwit {
namespace {

using container::testing::CliRun;
using container::testing::Godwit;
using container::testing::Sh;
using container::testing::TempDir;
using testing::NetnsHosts;
using testing::ProbeClient;

constexpr int kPort = 7000;

// One line echoed by a new connection made in netns_fd.
Result<void> EchoFrom(int netns_fd, const std::string& ip, int port) {
  int fd = -1;
  std::thread t([&] {
    if (::setns(netns_fd, CLONE_NEWNET) == 0) fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  });
  t.join();
  if (fd < 0) return Errno("socket in the client's netns");
  UniqueFd s(fd);
  timeval tv{10, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  ::inet_pton(AF_INET, ip.c_str(), &a.sin_addr);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) < 0)
    return Errno("connect %s:%d", ip.c_str(), port);
  if (::send(fd, "ping\n", 5, MSG_NOSIGNAL) != 5) return Errno("send");
  char buf[8] = {};
  size_t got = 0;
  while (got < 5) {
    ssize_t n = ::read(fd, buf + got, 5 - got);
    if (n <= 0) return Errno("read echo (%zu bytes so far)", got);
    got += n;
  }
  if (std::string(buf, 5) != "ping\n") return Err("bad echo '%s'", buf);
  return Ok();
}

// The word after `key` in text ("link/ether 02:..", "lladdr 02:.."), or "".
std::string WordAfter(const std::string& text, const std::string& key) {
  size_t at = text.find(key + " ");
  if (at == std::string::npos) return "";
  at += key.size() + 1;
  return text.substr(at, text.find_first_of(" \n", at) - at);
}

class Bridge : public ::testing::Test {
 protected:
  void SetUp() override {
    id_ = StrFormat("gwbr%d", getpid());
    ip_ = NetnsHosts::ContainerIp(10);
    ra_ = tmp_.path() + "/root-a";
    rb_ = tmp_.path() + "/root-b";
    pa_ = StrFormat("godwit-bra%d", getpid());
    pb_ = StrFormat("godwit-brb%d", getpid());
    rootfs_ = tmp_.path() + "/rootfs";
    ASSERT_OK(runtime::MakeBusyboxRootfs(rootfs_));
    ASSERT_OK(hosts_.Up());
  }
  void TearDown() override {
    probe_.reset();
    (void)Gw('a', {"delete", "-f", id_});
    (void)Gw('b', {"delete", "-f", id_});
    while (::waitpid(-1, nullptr, WNOHANG) > 0) {
    }
    ASSERT_OK(hosts_.Down());
  }
  // godwit in host h ('a' or 'b') with that host's root and cgroup parent.
  CliRun Gw(char h, std::vector<std::string> args) {
    std::vector<std::string> a = {"--root", h == 'a' ? ra_ : rb_, "--cgroup-parent",
                                  h == 'a' ? pa_ : pb_};
    a.insert(a.end(), args.begin(), args.end());
    return Godwit(a, true, hosts_.Fd(std::string(1, h)));
  }
  pid_t StatePid(char h) {
    CliRun s = Gw(h, {"state", id_});
    auto j = nlohmann::json::parse(s.out, nullptr, false);
    if (s.code != 0 || j.is_discarded()) return 0;
    return j.value("pid", 0);
  }
  // The container's echo server on host a, bridged, no gateway.
  void StartOnA() {
    CliRun r = Gw('a', {"run", "--rootfs", rootfs_, "--name", id_, "--detach", "--ip", ip_ + "/15",
                        "--bridge", NetnsHosts::kBridge, "--", "nc", "-ll", "-p",
                        std::to_string(kPort), "-e", "cat"});
    ASSERT_EQ(r.code, 0) << r;
    pid_ = StatePid('a');
    ASSERT_GT(pid_, 0);
  }
  std::string Ip(const std::string& ns, const std::string& args) {
    auto r = Sh("ip -n " + hosts_.Name(ns) + " " + args);
    return r.ok() ? *r : "";
  }
  // Whether veth leaves host `ns`: with the container's dead network namespace, which the
  // kernel takes down shortly after a checkpoint (which does not wait for that). Woken by the
  // kernel's notifications in that host's namespace, bounded.
  bool PortGoes(const std::string& ns, const std::string& veth) {
    runtime::HostEnd st = runtime::HostEnd::kAlive;
    auto r = netns::RunHere(hosts_.Fd(ns), CLONE_NEWNET, [&]() -> Result<void> {
      ASSIGN_OR_RETURN(st, runtime::WaitHostEnd(veth, 5000));
      return Ok();
    });
    return r.ok() && st == runtime::HostEnd::kGone;
  }
  std::string ContainerMac() {
    auto r = Sh(StrFormat("nsenter -t %d -n ip -o link show eth0", pid_));
    return r.ok() ? WordAfter(*r, "link/ether") : "";
  }
  std::string ClientNeighMac() { return WordAfter(Ip("c", "neigh show " + ip_), "lladdr"); }
  // The segment's bridge has the MAC on the port of host h (bounded wait: the restore's
  // gratuitous ARP, or the container's first packets, teach it).
  bool FdbOn(const std::string& mac, char h) {
    std::string want = mac + " dev to-" + std::string(1, h);
    for (int i = 0; i < 200; ++i) {
      auto f = Sh("bridge -n " + hosts_.Name("br") + " fdb show br br0");
      if (f.ok() && f->find(want) != std::string::npos) return true;
      ::usleep(10000);
    }
    return false;
  }
  // A kill-mode checkpoint leaves its network-lock table in the source host's netns (the
  // restore unlocks where it runs, files/netlock); with br_netfilter its rules would drop the
  // connection's packets bridged through that host again. The migration removes it on the
  // source once the destination confirms; here the test does. Returns how many it removed.
  int DropLockTables(char h) {
    auto tables = Sh(hosts_.Nsenter(std::string(1, h)) + "nft list tables");
    if (!tables.ok()) return -1;
    int n = 0;
    for (const auto& line : fs::Split(*tables, '\n')) {
      auto w = fs::Split(line, ' ');
      if (w.size() == 3 && w[2].rfind("godwit_lock_", 0) == 0 &&
          Sh(hosts_.Nsenter(std::string(1, h)) + "nft delete table inet " + w[2]).ok())
        n++;
    }
    return n;
  }
  // No trace of the container on either host: links, cgroups, state.
  void ExpectNothingLeft(const std::string& veth_a, const std::string& veth_b) {
    EXPECT_EQ(Ip("a", "-o link").find(veth_a), std::string::npos);
    EXPECT_EQ(Ip("b", "-o link").find(veth_b), std::string::npos);
    EXPECT_FALSE(fs::Exists(ra_ + "/" + id_));
    EXPECT_FALSE(fs::Exists(rb_ + "/" + id_));
    auto cgs =
        Sh(StrFormat("find /sys/fs/cgroup -maxdepth 3 -type d \\( -name %s -o -name %s "
                     "-o -name %s \\)",
                     id_.c_str(), pa_.c_str(), pb_.c_str()));
    ASSERT_OK(cgs);
    EXPECT_EQ(*cgs, "");
  }

  TempDir tmp_{"bridge"};
  NetnsHosts hosts_{StrFormat("gwbr%d", getpid())};
  std::string id_, ip_, ra_, rb_, pa_, pb_, rootfs_;
  pid_t pid_ = 0;
  std::unique_ptr<ProbeClient> probe_;
};

TEST_F(Bridge, ContainerIsOnTheSegment) {
  StartOnA();
  if (HasFatalFailure()) return;
  std::string veth = runtime::HostVethName(ra_, id_);
  // The host end is a port of br0 without an address; eth0 has the address and no default route.
  std::string link = Ip("a", "-o link show " + veth);
  EXPECT_NE(link.find("master br0"), std::string::npos) << link;
  EXPECT_NE(link.find("state UP"), std::string::npos) << link;
  EXPECT_EQ(Ip("a", "-o -4 addr show dev " + veth), "");
  auto addr = Sh(StrFormat("nsenter -t %d -n ip -o -4 addr show eth0", pid_));
  ASSERT_OK(addr);
  EXPECT_NE(addr->find(ip_ + "/15"), std::string::npos) << *addr;
  auto routes = Sh(StrFormat("nsenter -t %d -n ip -4 route", pid_));
  ASSERT_OK(routes);
  EXPECT_EQ(routes->find("default"), std::string::npos) << *routes;
  auto st = fs::ReadFile(ra_ + "/" + id_ + "/state.json");
  ASSERT_TRUE(st.ok());
  EXPECT_EQ(nlohmann::json::parse(*st)["network"]["bridge"], "br0");

  // The client, on the segment, reaches the container's own address; its neighbour entry is
  // the container's MAC (no proxy on the way).
  ASSERT_OK(EchoFrom(hosts_.Fd("c"), ip_, kPort));
  std::string mac = ContainerMac();
  ASSERT_FALSE(mac.empty());
  EXPECT_EQ(ClientNeighMac(), mac);
  // Host b (same segment) too.
  ASSERT_OK(EchoFrom(hosts_.Fd("b"), ip_, kPort));

  CliRun d = Gw('a', {"delete", "-f", id_});
  ASSERT_EQ(d.code, 0) << d;
  ExpectNothingLeft(veth, veth);
}

TEST_F(Bridge, NoSuchBridgeLeavesNothing) {
  CliRun r = Gw('a', {"run", "--rootfs", rootfs_, "--name", id_, "--detach", "--ip", ip_ + "/15",
                      "--bridge", "nosuchbr", "--", "sleep", "100"});
  EXPECT_EQ(r.code, 3) << r;  // kNotFound
  EXPECT_NE(r.err.find("nosuchbr"), std::string::npos) << r;
  // A link that is not a bridge: kBadConfig.
  r = Gw('a', {"run", "--rootfs", rootfs_, "--name", id_, "--detach", "--ip", ip_ + "/15",
               "--bridge", "uplink", "--", "sleep", "100"});
  EXPECT_EQ(r.code, 7) << r;
  // No address: a usage error.
  r = Gw('a', {"run", "--rootfs", rootfs_, "--name", id_, "--detach", "--bridge", "br0", "--",
               "sleep", "100"});
  EXPECT_NE(r.code, 0) << r;
  ExpectNothingLeft(runtime::HostVethName(ra_, id_), runtime::HostVethName(rb_, id_));
}

// There (a -> b, --bridge naming b's bridge) and back (b -> a, the bridge from the image).
TEST_F(Bridge, CheckpointOnARestoreOnBAndBackKeepsTheClientsConnection) {
  StartOnA();
  if (HasFatalFailure()) return;
  // The client's connection: numbered echoes every 2 ms through both moves.
  probe_ = std::make_unique<ProbeClient>();
  ASSERT_OK(probe_->Start(
      {"--tcp", StrFormat("%s:%d", ip_.c_str(), kPort), "--interval", "2ms", "--drain", "30s"},
      hosts_.Fd("c")));
  std::string mac = ContainerMac();
  ASSERT_FALSE(mac.empty());
  std::string veth_a = runtime::HostVethName(ra_, id_);
  std::string veth_b = runtime::HostVethName(rb_, id_);
  ASSERT_NE(veth_a, veth_b);

  std::string img = tmp_.path() + "/ckpt";
  CliRun c = Gw('a', {"checkpoint", id_, "--image-path", img});
  ASSERT_EQ(c.code, 0) << c;
  EXPECT_EQ(StatePid('a'), 0);
  ::waitpid(pid_, nullptr, 0);
  EXPECT_TRUE(PortGoes("a", veth_a)) << "the port leaves host a";

  // Onto a bridge host b does not have: refused before anything is made.
  CliRun bad = Gw('b', {"restore", id_, "--image-path", img, "--bridge", "nosuchbr", "--detach"});
  EXPECT_EQ(bad.code, 3) << bad;
  EXPECT_FALSE(fs::Exists(rb_ + "/" + id_));
  EXPECT_EQ(Ip("b", "-o link").find(veth_b), std::string::npos);

  CliRun r = Gw('b', {"restore", id_, "--image-path", img, "--bridge", "br0", "--detach"});
  ASSERT_EQ(r.code, 0) << r;
  EXPECT_EQ(r.err.find("announce"), std::string::npos) << r.err;
  pid_ = StatePid('b');
  ASSERT_GT(pid_, 0);
  EXPECT_EQ(ContainerMac(), mac);
  std::string link = Ip("b", "-o link show " + veth_b);
  EXPECT_NE(link.find("master br0"), std::string::npos) << link;
  auto cg = fs::ReadFile(StrFormat("/proc/%d/cgroup", pid_));
  ASSERT_TRUE(cg.ok());
  EXPECT_NE(cg->find("/" + pb_ + "/" + id_), std::string::npos) << *cg;
  auto st = fs::ReadFile(rb_ + "/" + id_ + "/state.json");
  ASSERT_TRUE(st.ok());
  auto sj = nlohmann::json::parse(*st);
  EXPECT_EQ(sj["network"]["bridge"], "br0");
  EXPECT_EQ(sj["cgroup"]["parent"], pb_);
  EXPECT_TRUE(FdbOn(mac, 'b'));
  // A new connection reaches it on host b, through the same address.
  ASSERT_OK(EchoFrom(hosts_.Fd("c"), ip_, kPort));
  EXPECT_EQ(DropLockTables('a'), 1);

  // And back to host a, the bridge's name taken from the image.
  std::string img2 = tmp_.path() + "/ckpt2";
  c = Gw('b', {"checkpoint", id_, "--image-path", img2});
  ASSERT_EQ(c.code, 0) << c;
  ::waitpid(pid_, nullptr, 0);
  EXPECT_TRUE(PortGoes("b", veth_b)) << "the port leaves host b";
  r = Gw('a', {"restore", id_, "--image-path", img2, "--detach"});
  ASSERT_EQ(r.code, 0) << r;
  pid_ = StatePid('a');
  ASSERT_GT(pid_, 0);
  EXPECT_EQ(ContainerMac(), mac);
  link = Ip("a", "-o link show " + veth_a);
  EXPECT_NE(link.find("master br0"), std::string::npos) << link;
  EXPECT_TRUE(FdbOn(mac, 'a'));
  ASSERT_OK(EchoFrom(hosts_.Fd("c"), ip_, kPort));
  EXPECT_EQ(DropLockTables('b'), 1);

  // The old connection carried on: every message sent, also while the container was away, came
  // back exactly, in order, on the same connection.
  ASSERT_OK(probe_->Stop());
  const auto& rep = probe_->report();
  EXPECT_EQ(probe_->code(), 0) << probe_->out() << probe_->err();
  EXPECT_TRUE(rep["ok"].get<bool>()) << rep.dump(2);
  const auto& tcp = rep["tcp"];
  EXPECT_GT(tcp["sent"].get<uint64_t>(), 0u);
  EXPECT_EQ(tcp["echoed"], tcp["sent"]);
  EXPECT_FALSE(tcp["corrupt"].get<bool>());
  EXPECT_FALSE(tcp["broken"].get<bool>());
  // The container was away for a while: long gaps.
  EXPECT_GT(tcp["max_gap_ms"].get<double>(), 10.0) << tcp.dump(2);
  // Same MAC: the client's neighbour entry still points at the container.
  EXPECT_EQ(ClientNeighMac(), mac);
  printf("a -> b -> a: client's longest gap %.1f ms, %llu messages, %u segments retransmitted\n",
         tcp["max_gap_ms"].get<double>(), tcp["sent"].get<unsigned long long>(),
         tcp["tcp_info"]["total_retrans"].get<unsigned>());

  CliRun d = Gw('a', {"delete", "-f", id_});
  ASSERT_EQ(d.code, 0) << d;
  ExpectNothingLeft(veth_a, veth_b);
  EXPECT_EQ(DropLockTables('a'), 0);
  EXPECT_EQ(DropLockTables('b'), 0);
}

}  // namespace
}  // namespace godwit
