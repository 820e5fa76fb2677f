#include "runtime/network.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <linux/rtnetlink.h>
#include <net/if.h>
#include <net/if_arp.h>
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

Result<GratuitousArp> GratuitousArp::Prepare(pid_t pid, const std::string& ifname,
                                             const std::string& addr) {
  in_addr ip{};
  if (::inet_pton(AF_INET, addr.c_str(), &ip) != 1)
    return MakeError(ErrorKind::kUsage, EINVAL, "announce: %s is not an IPv4 address",
                     addr.c_str());
  GratuitousArp g;
  g.what_ = StrFormat("%s on %s", addr.c_str(), ifname.c_str());
  // Made in the container's namespace: a socket stays where it was created.
  ASSIGN_OR_RETURN(UniqueFd ns, netns::Open(pid));
  TRY(netns::RunHere(ns.get(), CLONE_NEWNET, [&]() -> Result<void> {
    int s = ::socket(AF_PACKET, SOCK_DGRAM | SOCK_CLOEXEC, htons(ETH_P_ARP));
    if (s < 0) return Errno("socket(AF_PACKET)");
    g.fd_.reset(s);
    return Ok();
  }));
  ifreq ifr{};
  snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", ifname.c_str());
  if (::ioctl(g.fd_.get(), SIOCGIFINDEX, &ifr) < 0)
    return Errno("announce %s: interface %s in netns of pid %d", addr.c_str(), ifname.c_str(), pid);
  int ifindex = ifr.ifr_ifindex;
  if (::ioctl(g.fd_.get(), SIOCGIFHWADDR, &ifr) < 0)
    return Errno("announce %s: MAC of %s", addr.c_str(), ifname.c_str());
  if (ifr.ifr_hwaddr.sa_family != ARPHRD_ETHER)
    return MakeError(ErrorKind::kUnsupported, 0, "announce %s: %s is not an Ethernet device",
                     addr.c_str(), ifname.c_str());
  // The ARP payload for Ethernet/IPv4 (RFC 826); a gratuitous request has spa == tpa.
  struct __attribute__((packed)) {
    uint16_t htype, ptype;
    uint8_t hlen, plen;
    uint16_t op;
    uint8_t sha[6], spa[4], tha[6], tpa[4];
  } arp{};
  static_assert(sizeof(arp) == sizeof(g.arp_));
  arp.htype = htons(ARPHRD_ETHER);
  arp.ptype = htons(ETH_P_IP);
  arp.hlen = 6;
  arp.plen = 4;
  arp.op = htons(ARPOP_REQUEST);
  memcpy(arp.sha, ifr.ifr_hwaddr.sa_data, 6);
  memcpy(arp.spa, &ip, 4);
  memcpy(arp.tpa, &ip, 4);
  memcpy(g.arp_.data(), &arp, sizeof(arp));
  g.to_ = {};
  g.to_.sll_family = AF_PACKET;
  g.to_.sll_protocol = htons(ETH_P_ARP);
  g.to_.sll_ifindex = ifindex;
  g.to_.sll_halen = 6;
  memset(g.to_.sll_addr, 0xff, 6);
  return g;
}

Result<void> GratuitousArp::Send(int count) const {
  for (int i = 0; i < count; ++i) {
    if (::sendto(fd_.get(), arp_.data(), arp_.size(), 0, reinterpret_cast<const sockaddr*>(&to_),
                 sizeof(to_)) != static_cast<ssize_t>(arp_.size()))
      return Errno("announce %s: send", what_.c_str());
  }
  return Ok();
}

Result<void> AnnounceAddress(pid_t pid, const std::string& ifname, const std::string& addr,
                             int count) {
  ASSIGN_OR_RETURN(GratuitousArp g, GratuitousArp::Prepare(pid, ifname, addr));
  return g.Send(count);
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
