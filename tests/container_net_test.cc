// Network namespace: a container-like netns (veth to the host with addresses v4/v6, a veth pair
// and a bridge inside, routes in two tables incl. default and blackhole, a policy rule, a
// permanent neighbour, an nftables ruleset, changed sysctls) is set up with the standard tools,
// dumped, destroyed (host end deleted, netns dropped), restored into a fresh netns, and compared
// with the same tools. The host reaches the restored container over the recreated veth.
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <nlohmann/json.hpp>
#include <set>

#include "common/fs.h"
#include "container/net.h"
#include "tests/container_test_util.h"

namespace godwit::container {
namespace {

using testing::NsHolder;
using testing::Sh;
using testing::TempDir;

class ContainerNet : public ::testing::Test {
 protected:
  void SetUp() override {
    x_ = 100 + getpid() % 100;
    host_ = StrFormat("gwn%dh", getpid());
  }
  void TearDown() override {
    // Deleting the host end removes the pair; the netns go with their holders.
    (void)net::DeleteLink(-1, host_);
  }

  std::string In(const NsHolder& h, const std::string& cmd) {
    return StrFormat("nsenter -t %d -n %s", h.pid(), cmd.c_str());
  }

  Result<void> Setup(const NsHolder& h) {
    int p = h.pid();
    std::string X = std::to_string(x_);
    const std::vector<std::string> host_cmds = {
        StrFormat("ip link add %s type veth peer name eth0 netns %d", host_.c_str(), p),
        StrFormat("ip link set %s address 02:00:c6:12:%02x:01 mtu 1400 up", host_.c_str(), x_),
        StrFormat("ip addr add 198.18.%d.1/24 dev %s", x_, host_.c_str()),
    };
    for (const auto& c : host_cmds) TRY(Sh(c));
    const std::vector<std::string> ns_cmds = {
        "ip link set lo up",
        StrFormat("ip link set eth0 address 02:00:c6:12:%02x:02 mtu 1400 up", x_),
        "ip addr add 198.18." + X + ".2/24 dev eth0",
        "ip addr add 198.18." + X + ".3/24 dev eth0",
        "ip -6 addr add 2001:2::" + X + ":2/64 dev eth0 nodad",
        "ip link add in0 type veth peer name in1",
        "ip link set in0 mtu 1300 address 02:00:00:00:01:00 up",
        "ip link add br0 type bridge",
        "ip link set in1 master br0 up",
        "ip link set br0 up",
        "ip addr add 198.19." + X + ".1/24 dev br0",
        "ip route add default via 198.18." + X + ".1",
        "ip route add 198.19.200.0/24 via 198.18." + X + ".1 table 100",
        "ip route add blackhole 198.19.201.0/24",
        "ip route add 198.19.202.0/24 dev br0 metric 50",
        "ip -6 route add 2001:2:0:1::/64 via 2001:2::" + X + ":1 dev eth0",
        "ip rule add from 198.18." + X + ".3 lookup 100 priority 1000",
        "ip rule add fwmark 0x10 lookup 100 priority 1001",
        "ip neigh add 198.18." + X + ".9 lladdr 02:00:00:00:00:09 dev eth0 nud permanent",
        "nft add table inet gw",
        "nft add chain inet gw input '{ type filter hook input priority 0; policy accept; }'",
        "nft add rule inet gw input tcp dport 8080 counter accept",
        "nft add set inet gw allowed '{ type ipv4_addr; elements = { 198.18.0.7, 198.18.0.8 } }'",
        "sh -c 'echo 1 > /proc/sys/net/ipv4/ip_forward'",
        "sh -c 'echo 20000 30000 > /proc/sys/net/ipv4/ip_local_port_range'",
        "sh -c 'echo 600 > /proc/sys/net/ipv4/tcp_keepalive_time'",
        "sh -c 'echo 1 > /proc/sys/net/ipv6/conf/br0/disable_ipv6'",
        "sh -c 'echo 0 > /proc/sys/net/ipv4/conf/eth0/forwarding'",
    };
    for (const auto& c : ns_cmds) TRY(Sh(In(h, c)));
    return Ok();
  }

  // What the standard tools show, minus what the kernel does asynchronously (carrier, link-local
  // IPv6, operstate) or numbers that legitimately change (ifindex).
  Result<std::string> Snapshot(const NsHolder& h) {
    std::string out;
    ASSIGN_OR_RETURN(std::string links, Sh(In(h, "ip -j -d link show")));
    auto lj = nlohmann::json::parse(links);
    std::vector<std::string> lines;
    for (auto& l : lj) {
      std::vector<std::string> flags;
      for (auto& f : l["flags"])
        if (f != "LOWER_UP" && f != "NO-CARRIER" && f != "M-DOWN") flags.push_back(f);
      std::string kind = l.contains("linkinfo") ? l["linkinfo"].value("info_kind", "") : "";
      std::string line =
          StrFormat("link %s mtu %d mac %s kind %s master %s flags", l.value("ifname", "").c_str(),
                    l.value("mtu", 0), l.value("address", "").c_str(), kind.c_str(),
                    l.value("master", "").c_str());
      for (auto& f : flags) line += " " + f;
      lines.push_back(line);
    }
    ASSIGN_OR_RETURN(std::string addrs, Sh(In(h, "ip -j addr show")));
    for (auto& l : nlohmann::json::parse(addrs)) {
      for (auto& a : l["addr_info"]) {
        std::string local = a.value("local", "");
        if (local.rfind("fe80", 0) == 0) continue;
        lines.push_back(StrFormat("addr %s %s/%d scope %s secondary %d",
                                  l.value("ifname", "").c_str(), local.c_str(),
                                  a.value("prefixlen", 0), a.value("scope", "").c_str(),
                                  a.value("secondary", false) ? 1 : 0));
      }
    }
    std::sort(lines.begin(), lines.end());
    for (auto& l : lines) out += l + "\n";
    for (const char* cmd : {"ip route show table all", "ip -6 route show table all", "ip rule",
                            "ip -6 rule", "ip neigh show nud permanent", "nft list ruleset"}) {
      ASSIGN_OR_RETURN(std::string t, Sh(In(h, cmd)));
      for (const auto& line : fs::Split(t, '\n')) {
        if (line.find("proto kernel") != std::string::npos || line.find("fe80") == 0 ||
            line.find("ff00") != std::string::npos || line.find("fe80::/64") != std::string::npos)
          continue;
        std::string s = line;
        auto p = s.find(" linkdown");
        if (p != std::string::npos) s.erase(p, 9);
        out += s + "\n";
      }
    }
    for (const char* s :
         {"ipv4/ip_forward", "ipv4/ip_local_port_range", "ipv4/tcp_keepalive_time",
          "ipv6/conf/br0/disable_ipv6", "ipv4/conf/eth0/forwarding", "ipv4/conf/br0/forwarding"}) {
      ASSIGN_OR_RETURN(std::string v, Sh(In(h, StrFormat("cat /proc/sys/net/%s", s))));
      out += StrFormat("%s = %s", s, v.c_str());
    }
    return out;
  }

  int x_ = 0;
  std::string host_;
};

TEST_F(ContainerNet, RoundTripIntoFreshNetns) {
  NsHolder a;
  ASSERT_OK(a.Start(CLONE_NEWNET));
  ASSERT_OK(Setup(a));
  auto before = Snapshot(a);
  ASSERT_OK(before);
  ASSERT_NE(before->find("198.19.200.0/24 via"), std::string::npos) << *before;
  ASSERT_NE(before->find("tcp dport 8080"), std::string::npos) << *before;
  // godwit's own tables (a migration's deafness, a lock) hold the namespace still for the dump
  // and are no part of it: not in the image, not restored (the snapshot above has none).
  ASSERT_OK(Sh(In(a, "nft add table inet godwit_deaf_1")));
  ASSERT_OK(Sh(In(a, "nft add chain inet godwit_deaf_1 in "
                     "'{ type filter hook prerouting priority -400; policy drop; }'")));

  TempDir dir("net");
  auto afd = a.Ns("net");
  ASSERT_OK(afd);
  auto set =
      testing::DumpToDir(dir.path(), [&](images::Sink& s) { return net::Dump(afd->get(), s); });
  ASSERT_OK(set);
  img::NetNs image;
  ASSERT_OK(set->ReadOne(net::kImage, &image));
  EXPECT_EQ(image.nft_ruleset().find("godwit_"), std::string::npos) << image.nft_ruleset();
  EXPECT_NE(image.nft_ruleset().find("table inet gw"), std::string::npos) << image.nft_ruleset();
  bool found_host = false;
  for (const auto& l : image.links()) found_host |= l.host_end().name() == host_;
  EXPECT_TRUE(found_host) << image.DebugString();

  // Destroy: the host end (synchronously, with its peer), then the netns.
  ASSERT_OK(net::DeleteLink(-1, host_));
  afd->reset();
  a.Stop();

  NsHolder b;
  ASSERT_OK(b.Start(CLONE_NEWNET));
  auto bfd = b.Ns("net");
  ASSERT_OK(bfd);
  ASSERT_OK(net::Restore(*set, bfd->get()));
  auto after = Snapshot(b);
  ASSERT_OK(after);
  EXPECT_EQ(*before, *after);

  // The host end is back with its address, and the container answers through it.
  auto host_addr = Sh("ip -o addr show dev " + host_);
  ASSERT_OK(host_addr);
  EXPECT_NE(host_addr->find(StrFormat("198.18.%d.1/24", x_)), std::string::npos) << *host_addr;
  EXPECT_OK(Sh(StrFormat("busybox ping -c 1 -W 5 198.18.%d.2", x_)));
}

TEST_F(ContainerNet, TakenHostNameIsExistsAndLeavesNothing) {
  NsHolder a;
  ASSERT_OK(a.Start(CLONE_NEWNET));
  ASSERT_OK(Setup(a));
  TempDir dir("net-taken");
  auto afd = a.Ns("net");
  ASSERT_OK(afd);
  auto set =
      testing::DumpToDir(dir.path(), [&](images::Sink& s) { return net::Dump(afd->get(), s); });
  ASSERT_OK(set);
  // The original still holds the host name: restoring must fail cleanly.
  NsHolder b;
  ASSERT_OK(b.Start(CLONE_NEWNET));
  auto bfd = b.Ns("net");
  ASSERT_OK(bfd);
  auto r = net::Restore(*set, bfd->get());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().kind(), ErrorKind::kExists) << r.error().to_string();
  auto links = Sh(In(b, "ip -o link show"));
  ASSERT_OK(links);
  EXPECT_EQ(links->find("eth0"), std::string::npos) << *links;
}

TEST_F(ContainerNet, UnsupportedLinkKindFailsTheDump) {
  NsHolder a;
  ASSERT_OK(a.Start(CLONE_NEWNET));
  ASSERT_OK(Sh(In(a, "ip link add vx0 type vxlan id 5 dstport 4789")));
  TempDir dir("net-unsup");
  auto afd = a.Ns("net");
  ASSERT_OK(afd);
  auto set =
      testing::DumpToDir(dir.path(), [&](images::Sink& s) { return net::Dump(afd->get(), s); });
  ASSERT_FALSE(set.ok());
  EXPECT_EQ(set.error().kind(), ErrorKind::kUnsupported);
  EXPECT_NE(set.error().message().find("vx0"), std::string::npos) << set.error().to_string();
  // A failed dump leaves no complete image.
  EXPECT_FALSE(images::ImageSet::Open(dir.path()).ok());
}

}  // namespace
}  // namespace godwit::container
