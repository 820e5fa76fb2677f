#include "runtime/network.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/if_ether.h>
#include <linux/if_addr.h>
#include <linux/if_packet.h>
#include <linux/rtnetlink.h>
#include <net/if.h>
#include <net/if_arp.h>
#include <netinet/in.h>
#include <netlink/route/link/veth.h>
#include <poll.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>

#include "common/fs.h"
#include "common/log.h"
#include "common/netns.h"
#include "common/scope_exit.h"
#include "common/timing.h"
#include "common/unique_fd.h"
#include "runtime/nl.h"

namespace godwit::runtime {
namespace {

using nl::Addr;
using nl::Cache;
using nl::Link;
using nl::NlError;
using nl::Route;
using nl::RtAddr;
using nl::Sock;

Result<Sock> Connect() { return nl::ConnectRoute(-1); }

// A rtnetlink socket that lives in pid's network namespace.
Result<Sock> ConnectIn(pid_t pid) {
  ASSIGN_OR_RETURN(UniqueFd ns, netns::Open(pid));
  return nl::ConnectRoute(ns.get());
}

Result<Addr> ParseAddr(const std::string& s) {
  nl_addr* a = nullptr;
  int err = nl_addr_parse(s.c_str(), AF_INET, &a);
  if (err < 0) return NlError(err, "parse address %s", s.c_str());
  return Addr(a);
}

Result<int> IfIndex(nl_sock* sock, const char* name) {
  rtnl_link* l = nullptr;
  int err = rtnl_link_get_kernel(sock, 0, name, &l);
  if (err < 0) return NlError(err, "link %s", name);
  int idx = rtnl_link_get_ifindex(l);
  rtnl_link_put(l);
  return idx;
}

Result<void> SetUp(nl_sock* sock, const char* name) {
  rtnl_link* l = nullptr;
  int err = rtnl_link_get_kernel(sock, 0, name, &l);
  if (err < 0) return NlError(err, "link %s", name);
  Link orig(l);
  Link change(rtnl_link_alloc());
  rtnl_link_set_flags(change.get(), IFF_UP);
  err = rtnl_link_change(sock, orig.get(), change.get(), 0);
  if (err < 0) return NlError(err, "set %s up", name);
  return Ok();
}

Result<void> AddAddress(nl_sock* sock, int ifindex, const std::string& local,
                        const std::string& peer, const char* what) {
  RtAddr a(rtnl_addr_alloc());
  rtnl_addr_set_ifindex(a.get(), ifindex);
  ASSIGN_OR_RETURN(Addr l, ParseAddr(local));
  int err = rtnl_addr_set_local(a.get(), l.get());
  if (err < 0) return NlError(err, "%s: address %s", what, local.c_str());
  if (!peer.empty()) {
    ASSIGN_OR_RETURN(Addr p, ParseAddr(peer));
    err = rtnl_addr_set_peer(a.get(), p.get());
    if (err < 0) return NlError(err, "%s: peer %s", what, peer.c_str());
  }
  err = rtnl_addr_add(sock, a.get(), 0);
  if (err < 0) return NlError(err, "%s: add address %s", what, local.c_str());
  return Ok();
}

}  // namespace

std::string HostVethName(const std::string& root, const std::string& id) {
  // FNV-1a 64 over "root\0id"; 12 hex chars keep collisions negligible for a host's containers.
  uint64_t h = 1469598103934665603ULL;
  auto mix = [&](const std::string& s) {
    for (unsigned char c : s) {
      h ^= c;
      h *= 1099511628211ULL;
    }
    h ^= 0;
    h *= 1099511628211ULL;
  };
  mix(root);
  mix(id);
  return StrFormat("gw%012llx", static_cast<unsigned long long>(h & 0xffffffffffffULL));
}

bool LinkExists(const std::string& name) { return if_nametoindex(name.c_str()) != 0; }

Result<bool> AddressInUse(const std::string& addr, const std::vector<std::string>& except_links) {
  std::vector<int> except;
  for (const auto& name : except_links)
    if (unsigned idx = if_nametoindex(name.c_str())) except.push_back(static_cast<int>(idx));
  ASSIGN_OR_RETURN(Sock sock, Connect());
  nl_cache* c = nullptr;
  int err = rtnl_addr_alloc_cache(sock.get(), &c);
  if (err < 0) return NlError(err, "dump addresses");
  Cache cache(c);
  ASSIGN_OR_RETURN(Addr want, ParseAddr(addr));
  bool found = false;
  for (nl_object* o = nl_cache_get_first(c); o && !found; o = nl_cache_get_next(o)) {
    auto* a = reinterpret_cast<rtnl_addr*>(o);
    if (rtnl_addr_get_family(a) != AF_INET) continue;
    if (std::find(except.begin(), except.end(), rtnl_addr_get_ifindex(a)) != except.end())
      continue;
    for (nl_addr* x : {rtnl_addr_get_local(a), rtnl_addr_get_peer(a)}) {
      if (x && nl_addr_get_len(x) == 4 &&
          memcmp(nl_addr_get_binary_addr(x), nl_addr_get_binary_addr(want.get()), 4) == 0)
        found = true;
    }
  }
  return found;
}

Result<void> CheckBridge(const std::string& name) {
  ASSIGN_OR_RETURN(Sock sock, Connect());
  rtnl_link* l = nullptr;
  int err = rtnl_link_get_kernel(sock.get(), 0, name.c_str(), &l);
  if (err < 0) {
    if (nl::IsNotFound(err))
      return MakeError(ErrorKind::kNotFound, ENODEV,
                       "bridge %s: no such link in this network namespace", name.c_str());
    return NlError(err, "bridge %s", name.c_str());
  }
  Link hold(l);
  const char* kind = rtnl_link_get_type(l);
  if (!kind || std::string(kind) != "bridge")
    return MakeError(ErrorKind::kBadConfig, 0, "link %s is a %s, not a bridge", name.c_str(),
                     kind ? kind : "device without a kind");
  return Ok();
}

Result<void> SetupNetwork(pid_t pid, const NetworkSpec& net, const std::string& host_veth) {
  if (host_veth.size() > 15)
    return Err("veth name %s: longer than 15 characters", host_veth.c_str());
  const bool bridged = !net.bridge.empty();
  ASSIGN_OR_RETURN(Sock host, Connect());
  if (LinkExists(host_veth))
    return MakeError(ErrorKind::kExists, EEXIST, "veth %s exists", host_veth.c_str());
  ASSIGN_OR_RETURN(bool used, AddressInUse(net.address));
  if (used)
    return MakeError(ErrorKind::kExists, EADDRINUSE, "address %s is already in use on the host",
                     net.address.c_str());
  int bridge_idx = 0;
  if (bridged) {
    TRY(CheckBridge(net.bridge));
    ASSIGN_OR_RETURN(bridge_idx, IfIndex(host.get(), net.bridge.c_str()));
  }
  int err = rtnl_link_veth_add(host.get(), host_veth.c_str(), "eth0", pid);
  if (err < 0)
    return NlError(err, "create veth %s <-> eth0 in netns of pid %d", host_veth.c_str(), pid);
  ScopeExit rollback([&] { (void)TeardownNetwork(host_veth); });

  ASSIGN_OR_RETURN(int host_idx, IfIndex(host.get(), host_veth.c_str()));
  if (bridged) {
    // Enslaved and up in one change: a port comes up already in the bridge.
    rtnl_link* l = nullptr;
    err = rtnl_link_get_kernel(host.get(), host_idx, nullptr, &l);
    if (err < 0) return NlError(err, "link %s", host_veth.c_str());
    Link orig(l);
    Link change(rtnl_link_alloc());
    rtnl_link_set_master(change.get(), bridge_idx);
    rtnl_link_set_flags(change.get(), IFF_UP);
    err = rtnl_link_change(host.get(), orig.get(), change.get(), 0);
    if (err < 0)
      return NlError(err, "attach %s to bridge %s", host_veth.c_str(), net.bridge.c_str());
  } else {
    TRY(AddAddress(host.get(), host_idx, net.gateway + "/32", net.address + "/32",
                   host_veth.c_str()));
    TRY(SetUp(host.get(), host_veth.c_str()));
  }

  ASSIGN_OR_RETURN(Sock in, ConnectIn(pid));
  ASSIGN_OR_RETURN(int idx, IfIndex(in.get(), "eth0"));
  TRY(AddAddress(in.get(), idx, StrFormat("%s/%d", net.address.c_str(), net.prefix), "", "eth0"));
  TRY(SetUp(in.get(), "eth0"));
  TRY(SetUp(in.get(), "lo"));

  if (!net.gateway.empty()) {
    Route route(rtnl_route_alloc());
    rtnl_route_set_family(route.get(), AF_INET);
    rtnl_route_set_table(route.get(), RT_TABLE_MAIN);
    rtnl_route_set_protocol(route.get(), RTPROT_BOOT);
    rtnl_route_set_scope(route.get(), RT_SCOPE_UNIVERSE);
    rtnl_route_set_type(route.get(), RTN_UNICAST);
    ASSIGN_OR_RETURN(Addr dst, ParseAddr("0.0.0.0/0"));
    rtnl_route_set_dst(route.get(), dst.get());
    ASSIGN_OR_RETURN(Addr gw, ParseAddr(net.gateway));
    rtnl_nexthop* nh = rtnl_route_nh_alloc();
    rtnl_route_nh_set_gateway(nh, gw.get());
    rtnl_route_nh_set_ifindex(nh, idx);
    // Routed: the gateway is the host end's /32, reachable on the link even if outside the
    // prefix. Bridged: a router on the segment, normally inside the prefix; onlink is harmless.
    rtnl_route_nh_set_flags(nh, RTNH_F_ONLINK);
    rtnl_route_add_nexthop(route.get(), nh);  // the route owns nh now
    err = rtnl_route_add(in.get(), route.get(), NLM_F_CREATE | NLM_F_EXCL);
    if (err < 0) return NlError(err, "eth0: default route via %s", net.gateway.c_str());
  }
  rollback.dismiss();
  return Ok();
}

namespace {

// The ICMPv6 checksum (RFC 4443 2.3): the one's complement sum over the IPv6 pseudo-header
// (source, destination, upper-layer length, next header) and the message.
uint16_t Icmp6Checksum(const in6_addr& src, const in6_addr& dst, const uint8_t* msg, size_t len) {
  uint32_t sum = 0;
  auto add = [&](const uint8_t* p, size_t n) {
    for (size_t i = 0; i + 1 < n; i += 2) sum += (p[i] << 8) | p[i + 1];
    if (n & 1) sum += p[n - 1] << 8;
  };
  add(src.s6_addr, 16);
  add(dst.s6_addr, 16);
  const uint8_t tail[8] = {static_cast<uint8_t>(len >> 24), static_cast<uint8_t>(len >> 16),
                           static_cast<uint8_t>(len >> 8), static_cast<uint8_t>(len), 0, 0, 0,
                           IPPROTO_ICMPV6};
  add(tail, sizeof(tail));
  add(msg, len);
  while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
  return static_cast<uint16_t>(~sum);
}

// A gratuitous ARP request for ip (RFC 826 payload for Ethernet/IPv4; spa == tpa).
std::vector<uint8_t> GratuitousArpPayload(const in_addr& ip, const uint8_t mac[6]) {
  std::vector<uint8_t> b(28, 0);
  const uint16_t htype = htons(ARPHRD_ETHER), ptype = htons(ETH_P_IP), op = htons(ARPOP_REQUEST);
  memcpy(&b[0], &htype, 2);
  memcpy(&b[2], &ptype, 2);
  b[4] = 6;
  b[5] = 4;
  memcpy(&b[6], &op, 2);
  memcpy(&b[8], mac, 6);    // sha
  memcpy(&b[14], &ip, 4);   // spa
  memcpy(&b[24], &ip, 4);   // tpa (tha stays zero)
  return b;
}

// An unsolicited neighbour advertisement for ip: IPv6 header (from ip itself, to ff02::1, hop
// limit 255) and ICMPv6 type 136 with Override set and the target link-layer address option.
std::vector<uint8_t> UnsolicitedNaPacket(const in6_addr& ip, const uint8_t mac[6]) {
  constexpr size_t kIcmp = 24 + 8;  // NA, then one 8-byte option
  std::vector<uint8_t> b(40 + kIcmp, 0);
  in6_addr all_nodes{};
  all_nodes.s6_addr[0] = 0xff;
  all_nodes.s6_addr[1] = 0x02;
  all_nodes.s6_addr[15] = 0x01;
  b[0] = 0x60;  // version 6, traffic class and flow label 0
  b[4] = 0;
  b[5] = kIcmp;
  b[6] = IPPROTO_ICMPV6;
  b[7] = 255;  // receivers drop neighbour discovery with any other hop limit
  memcpy(&b[8], ip.s6_addr, 16);
  memcpy(&b[24], all_nodes.s6_addr, 16);
  uint8_t* m = &b[40];
  m[0] = 136;   // neighbour advertisement
  m[4] = 0x20;  // Override; not Router, not Solicited
  memcpy(&m[8], ip.s6_addr, 16);
  m[24] = 2;  // target link-layer address
  m[25] = 1;  // in units of 8 bytes
  memcpy(&m[26], mac, 6);
  const uint16_t ck = htons(Icmp6Checksum(ip, all_nodes, m, kIcmp));
  memcpy(&m[2], &ck, 2);
  return b;
}

}  // namespace

Result<Announcement> Announcement::Prepare(pid_t pid, const std::string& ifname) {
  Announcement g;
  g.what_ = StrFormat("%s in netns of pid %d", ifname.c_str(), pid);
  // Made in the container's namespace: a socket stays where it was created. Protocol 0: it
  // only sends (each frame's EtherType comes with its address).
  ASSIGN_OR_RETURN(UniqueFd ns, netns::Open(pid));
  TRY(netns::RunHere(ns.get(), CLONE_NEWNET, [&]() -> Result<void> {
    int s = ::socket(AF_PACKET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0) return Errno("socket(AF_PACKET)");
    g.fd_.reset(s);
    return Ok();
  }));
  ifreq ifr{};
  snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", ifname.c_str());
  if (::ioctl(g.fd_.get(), SIOCGIFINDEX, &ifr) < 0) return Errno("announce: %s", g.what_.c_str());
  const int ifindex = ifr.ifr_ifindex;
  if (::ioctl(g.fd_.get(), SIOCGIFHWADDR, &ifr) < 0)
    return Errno("announce: MAC of %s", g.what_.c_str());
  if (ifr.ifr_hwaddr.sa_family != ARPHRD_ETHER)
    return MakeError(ErrorKind::kUnsupported, 0, "announce: %s is not an Ethernet device",
                     g.what_.c_str());
  uint8_t mac[6];
  memcpy(mac, ifr.ifr_hwaddr.sa_data, 6);

  ASSIGN_OR_RETURN(Sock sock, ConnectIn(pid));
  nl_cache* c = nullptr;
  if (int err = rtnl_addr_alloc_cache(sock.get(), &c); err < 0)
    return NlError(err, "announce: addresses of %s", g.what_.c_str());
  Cache cache(c);
  for (nl_object* o = nl_cache_get_first(c); o; o = nl_cache_get_next(o)) {
    auto* a = reinterpret_cast<rtnl_addr*>(o);
    nl_addr* local = rtnl_addr_get_local(a);
    if (rtnl_addr_get_ifindex(a) != ifindex || !local) continue;
    const int fam = rtnl_addr_get_family(a);
    char name[INET6_ADDRSTRLEN] = {};
    Frame f;
    f.to.sll_family = AF_PACKET;
    f.to.sll_ifindex = ifindex;
    f.to.sll_halen = 6;
    if (fam == AF_INET && nl_addr_get_len(local) == 4) {
      in_addr ip;
      memcpy(&ip, nl_addr_get_binary_addr(local), 4);
      f.bytes = GratuitousArpPayload(ip, mac);
      f.to.sll_protocol = htons(ETH_P_ARP);
      memset(f.to.sll_addr, 0xff, 6);
      inet_ntop(AF_INET, &ip, name, sizeof(name));
    } else if (fam == AF_INET6 && nl_addr_get_len(local) == 16) {
      // A tentative address is not the interface's yet (DAD), and one that failed DAD is
      // someone else's: neither is announced (RFC 4862 5.4).
      if (rtnl_addr_get_flags(a) & (IFA_F_TENTATIVE | IFA_F_DADFAILED)) continue;
      in6_addr ip;
      memcpy(&ip, nl_addr_get_binary_addr(local), 16);
      f.bytes = UnsolicitedNaPacket(ip, mac);
      f.to.sll_protocol = htons(ETH_P_IPV6);
      const uint8_t all_nodes_mac[6] = {0x33, 0x33, 0, 0, 0, 1};
      memcpy(f.to.sll_addr, all_nodes_mac, 6);
      inet_ntop(AF_INET6, &ip, name, sizeof(name));
    } else {
      continue;
    }
    f.addr = name;
    g.frames_.push_back(std::move(f));
  }
  // IPv4 first, each family in the kernel's order.
  std::stable_partition(g.frames_.begin(), g.frames_.end(),
                        [](const Frame& f) { return f.to.sll_protocol == htons(ETH_P_ARP); });
  return g;
}

std::vector<std::string> Announcement::addresses() const {
  std::vector<std::string> out;
  for (const Frame& f : frames_) out.push_back(f.addr);
  return out;
}

Result<void> Announcement::Send(int count) const { return SendRange(0, frames_.size(), count); }

Result<void> Announcement::SendRange(size_t from, size_t to, int count) const {
  to = std::min(to, frames_.size());
  for (int i = 0; i < count; ++i) {
    for (size_t k = from; k < to; ++k) {
      const Frame& f = frames_[k];
      if (::sendto(fd_.get(), f.bytes.data(), f.bytes.size(), 0,
                   reinterpret_cast<const sockaddr*>(&f.to),
                   sizeof(f.to)) != static_cast<ssize_t>(f.bytes.size()))
        return Errno("announce %s on %s: send", f.addr.c_str(), what_.c_str());
    }
  }
  return Ok();
}

Result<Announcement> AnnounceAddresses(pid_t pid, const std::string& ifname, int count) {
  ASSIGN_OR_RETURN(Announcement a, Announcement::Prepare(pid, ifname));
  TRY(a.Send(count));
  return a;
}

Result<void> TeardownNetwork(const std::string& host_veth) {
  ASSIGN_OR_RETURN(Sock s, Connect());
  Link l(rtnl_link_alloc());
  rtnl_link_set_name(l.get(), host_veth.c_str());
  int err = rtnl_link_delete(s.get(), l.get());
  if (err < 0 && !nl::IsNotFound(err))
    return NlError(err, "delete veth %s", host_veth.c_str());
  return Ok();
}

namespace {

Result<HostEnd> HostEndStateOn(nl_sock* s, const std::string& host_veth) {
  rtnl_link* l = nullptr;
  int err = rtnl_link_get_kernel(s, 0, host_veth.c_str(), &l);
  if (err < 0) {
    if (nl::IsNotFound(err)) return HostEnd::kGone;
    return NlError(err, "link %s", host_veth.c_str());
  }
  Link hold(l);
  // The kernel reports the peer's namespace by its id here (allocated on demand while the
  // namespace lives); cleanup_net() unhashes a dead namespace's ids first thing, so from then
  // on the link says "not assigned" (-1) until its unregistration, further down the same
  // cleanup.
  int32_t nsid = 0;
  if (rtnl_link_get_link_netnsid(l, &nsid) == 0 && nsid < 0) return HostEnd::kDying;
  return HostEnd::kAlive;
}

}  // namespace

Result<HostEnd> HostEndState(const std::string& host_veth) {
  ASSIGN_OR_RETURN(Sock s, Connect());
  return HostEndStateOn(s.get(), host_veth);
}

Result<HostEnd> WaitHostEnd(const std::string& host_veth, int wait_ms) {
  auto start = timing::Clock::now();
  // Woken by the kernel rather than polling: every link change (the unregistration among them)
  // and namespace-id change (a dead namespace's id going: RTM_DELNSID) in this namespace is a
  // message on this socket; each wakes a fresh look at the link. Other containers' changes
  // wake it too (harmless), and a bounded poll covers messages lost to a full socket buffer.
  int ev = ::socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC | SOCK_NONBLOCK, NETLINK_ROUTE);
  if (ev < 0) return Errno("socket(NETLINK_ROUTE)");
  UniqueFd events(ev);
  sockaddr_nl sa{};
  sa.nl_family = AF_NETLINK;
  if (::bind(ev, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) < 0)
    return Errno("bind rtnetlink events");
  for (int group : {RTNLGRP_LINK, RTNLGRP_NSID}) {
    if (::setsockopt(ev, SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, &group, sizeof(group)) < 0)
      return Errno("rtnetlink group %d", group);
  }
  ASSIGN_OR_RETURN(Sock s, Connect());
  double dying_ms = -1;
  for (;;) {
    ASSIGN_OR_RETURN(HostEnd st, HostEndStateOn(s.get(), host_veth));
    if (st == HostEnd::kDying && dying_ms < 0) dying_ms = timing::MsSince(start);
    double waited = timing::MsSince(start);
    if (st == HostEnd::kGone || waited >= wait_ms) {
      LOG_DEBUG("veth %s: %s after %.2f ms (its peer namespace dead after %.2f ms)",
                host_veth.c_str(), st == HostEnd::kGone ? "gone" : "still there", waited,
                dying_ms);
      return st;
    }
    pollfd p{ev, POLLIN, 0};
    int timeout = std::max(1, std::min(20, static_cast<int>(wait_ms - waited)));
    if (::poll(&p, 1, timeout) < 0 && errno != EINTR) return Errno("poll rtnetlink events");
    char buf[8192];
    while (::recv(ev, buf, sizeof(buf), 0) > 0 || errno == ENOBUFS) {
    }
  }
}

Result<void> TeardownNetworkOfDeadNetns(const std::string& host_veth, int wait_ms) {
  ASSIGN_OR_RETURN(HostEnd st, WaitHostEnd(host_veth, wait_ms));
  if (st == HostEnd::kGone) return Ok();
  return TeardownNetwork(host_veth);
}

Result<void> LoopbackUp(pid_t pid) {
  ASSIGN_OR_RETURN(Sock in, ConnectIn(pid));
  return SetUp(in.get(), "lo");
}

std::string FirewallRuleset(const std::vector<NetworkSpec::Port>& ports) {
  std::string tcp, udp;
  for (const auto& p : ports) {
    std::string& s = p.proto == "udp" ? udp : tcp;
    s += (s.empty() ? "" : ", ") + std::to_string(p.port);
  }
  std::string r =
      "table inet godwit {\n"
      "  chain input {\n"
      "    type filter hook input priority 0; policy drop;\n"
      "    ct state established,related accept\n"
      "    iifname \"lo\" accept\n"
      "    icmp type echo-request accept\n";
  if (!tcp.empty()) r += "    tcp dport { " + tcp + " } accept\n";
  if (!udp.empty()) r += "    udp dport { " + udp + " } accept\n";
  r += "  }\n}\n";
  return r;
}

Result<void> ApplyFirewall(pid_t pid, const std::vector<NetworkSpec::Port>& ports) {
  TRY_CTX(netns::NftRun(pid, FirewallRuleset(ports)), "firewall in netns of pid %d", pid);
  return Ok();
}

}  // namespace godwit::runtime
