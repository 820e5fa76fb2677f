#include "container/net.h"

#include <dirent.h>
#include <fcntl.h>
#include <linux/fib_rules.h>
#include <linux/netfilter/nf_tables.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netlink.h>
#include <linux/if_addr.h>
#include <linux/neighbour.h>
#include <linux/rtnetlink.h>
#include <net/if.h>
#include <netlink/route/link/veth.h>
#include <sched.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include "common/fs.h"
#include "common/log.h"
#include "common/timing.h"
#include "common/scope_exit.h"
#include "container/ns.h"
#include "runtime/nl.h"

namespace godwit::container::net {
namespace {

using nl::Addr;
using nl::Cache;
using nl::IsExists;
using nl::Link;
using nl::Neigh;
using nl::NlError;
using nl::Route;
using nl::Rule;
using nl::RtAddr;
using nl::Sock;

Result<Cache> LinkCache(nl_sock* sock) {
  nl_cache* c = nullptr;
  if (int err = rtnl_link_alloc_cache(sock, AF_UNSPEC, &c); err < 0)
    return NlError(err, "dump links");
  return Cache(c);
}

template <typename T>
std::vector<T*> Objects(nl_cache* cache) {
  std::vector<T*> out;
  for (nl_object* o = nl_cache_get_first(cache); o; o = nl_cache_get_next(o))
    out.push_back(reinterpret_cast<T*>(o));
  return out;
}

std::string IfName(nl_cache* links, int ifindex) {
  char buf[IFNAMSIZ + 1] = {};
  if (ifindex <= 0 || !rtnl_link_i2name(links, ifindex, buf, sizeof(buf))) return "";
  return buf;
}

std::string Bytes(nl_addr* a) {
  if (!a) return "";
  return std::string(static_cast<const char*>(nl_addr_get_binary_addr(a)), nl_addr_get_len(a));
}

void FillPrefix(nl_addr* a, img::NetPrefix* out) {
  out->set_family(nl_addr_get_family(a));
  out->set_addr(Bytes(a));
  out->set_prefixlen(nl_addr_get_prefixlen(a));
}

Result<Addr> BuildAddr(int family, const std::string& bytes, int prefixlen = -1) {
  nl_addr* a = nl_addr_build(family, bytes.data(), bytes.size());
  if (!a) return MakeError(ErrorKind::kGeneric, ENOMEM, "nl_addr_build");
  if (prefixlen >= 0) nl_addr_set_prefixlen(a, prefixlen);
  return Addr(a);
}

Result<Addr> BuildPrefix(const img::NetPrefix& p) {
  size_t want = p.family() == AF_INET ? 4 : p.family() == AF_INET6 ? 16 : 0;
  if (want == 0 || (!p.addr().empty() && p.addr().size() != want) || p.prefixlen() > want * 8) {
    return MakeError(ErrorKind::kBadImage, 0, "%s: bad address (family %u, %zu bytes, /%u)", kImage,
                     p.family(), p.addr().size(), p.prefixlen());
  }
  return BuildAddr(p.family(), p.addr(), p.prefixlen());
}

// ---- sysctls ------------------------------------------------------------------------------

constexpr const char* kFixedSysctls[] = {
    "ipv4/ip_forward",  // first: writing it resets conf/*/forwarding
    "ipv4/ip_local_port_range",
    "ipv4/ip_local_reserved_ports",
    "ipv4/ip_unprivileged_port_start",
    "ipv4/ping_group_range",
    "ipv4/ip_nonlocal_bind",
    "ipv4/ip_default_ttl",
    "ipv4/ip_no_pmtu_disc",
    "ipv4/icmp_echo_ignore_all",
    "ipv4/icmp_echo_ignore_broadcasts",
    "ipv6/ip_nonlocal_bind",
    "core/somaxconn",
    "unix/max_dgram_qlen",
};
constexpr const char* kConf4[] = {"forwarding",     "rp_filter",      "accept_redirects",
                                  "send_redirects", "proxy_arp",      "arp_ignore",
                                  "arp_announce",   "route_localnet", "accept_local"};
constexpr const char* kConf6[] = {"disable_ipv6", "forwarding", "accept_ra",
                                  "accept_dad",   "autoconf",   "accept_redirects"};

// /proc/sys/net, open: the ~160 sysctls a dump reads (and a restore compares) are opened below
// it, each read with one read() into a stack buffer. They are read while the container is frozen
// (dump) or not yet running (restore): 4 us each instead of 12.
class SysctlDir {
 public:
  SysctlDir() : fd_(::open("/proc/sys/net", O_RDONLY | O_DIRECTORY | O_CLOEXEC)) {}
  // name below net/ ("ipv4/tcp_rmem").
  Result<std::string> Read(const std::string& name) const {
    if (!fd_.valid()) return ReadSysctl("net/" + name);
    int fd = ::openat(fd_.get(), name.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return Errno("open /proc/sys/net/%s", name.c_str());
    UniqueFd owned(fd);
    char buf[4096];
    std::string v;
    for (;;) {
      ssize_t n = ::read(fd, buf, sizeof(buf));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return Errno("read /proc/sys/net/%s", name.c_str());
      if (n == 0) break;
      v.append(buf, n);
      // A sysctl's read formats the value from the offset on, as much as fits: a short read
      // ending in a newline is all of it (no second read for the end: ~150 calls fewer per
      // namespace, in a frozen container's dump).
      if (static_cast<size_t>(n) < sizeof(buf) && buf[n - 1] == '\n') break;
    }
    while (!v.empty() && v.back() == '\n') v.pop_back();
    return v;
  }
  bool Writable(const std::string& name) const {
    struct stat st;
    int dfd = fd_.valid() ? fd_.get() : AT_FDCWD;
    std::string p = fd_.valid() ? name : "/proc/sys/net/" + name;
    return ::fstatat(dfd, p.c_str(), &st, 0) == 0 && (st.st_mode & S_IWUSR);
  }

 private:
  UniqueFd fd_;
};

void AddSysctl(const SysctlDir& dir, img::NetNs& ns, const std::string& name) {
  auto v = dir.Read(name);
  if (!v.ok()) {
    LOG_DEBUG("net sysctl %s: %s", name.c_str(), v.error().to_string().c_str());
    return;
  }
  img::NetSysctl* s = ns.add_sysctls();
  s->set_name(name);
  s->set_value(*v);
}

// The writable ipv4/tcp_* sysctls of a net namespace, by its inode: the same for every dump of
// it, so a migration's rehearsal of the collect (RehearseCollect, while the container runs)
// leaves the final dump, frozen, ~90 stat calls fewer. Guarded: the collect runs on a thread.
std::vector<std::string> WritableTcpSysctls(const SysctlDir& dir) {
  static std::mutex mu;
  static std::map<std::pair<dev_t, ino_t>, std::vector<std::string>> known;
  struct stat self;
  const bool keyed = ::stat("/proc/thread-self/ns/net", &self) == 0;
  if (keyed) {
    std::lock_guard<std::mutex> l(mu);
    if (auto it = known.find({self.st_dev, self.st_ino}); it != known.end()) return it->second;
  }
  std::vector<std::string> names;
  auto tcp = fs::ListDir("/proc/sys/net/ipv4");
  if (tcp.ok()) {
    std::sort(tcp->begin(), tcp->end());
    for (const std::string& f : *tcp)
      if (f.rfind("tcp_", 0) == 0 && dir.Writable("ipv4/" + f)) names.push_back("ipv4/" + f);
  }
  if (keyed && tcp.ok()) {
    std::lock_guard<std::mutex> l(mu);
    known[{self.st_dev, self.st_ino}] = names;
  }
  return names;
}

// Runs on a thread inside the netns: /proc/sys/net resolves to the opener's netns.
Result<void> CollectSysctls(img::NetNs& ns) {
  SysctlDir dir;
  for (const char* name : kFixedSysctls) AddSysctl(dir, ns, name);
  for (const std::string& name : WritableTcpSysctls(dir)) AddSysctl(dir, ns, name);
  for (const char* fam : {"ipv4", "ipv6"}) {
    auto ifs = fs::ListDir(StrFormat("/proc/sys/net/%s/conf", fam));
    if (!ifs.ok()) continue;  // IPv6 disabled on the kernel command line
    // "all" and "default" first: they propagate to the interfaces when written.
    std::vector<std::string> order = {"all", "default"};
    std::sort(ifs->begin(), ifs->end());
    for (const auto& i : *ifs)
      if (i != "all" && i != "default") order.push_back(i);
    bool v4 = std::string(fam) == "ipv4";
    for (const std::string& i : order) {
      if (v4) {
        for (const char* k : kConf4)
          AddSysctl(dir, ns, StrFormat("%s/conf/%s/%s", fam, i.c_str(), k));
      } else {
        for (const char* k : kConf6)
          AddSysctl(dir, ns, StrFormat("%s/conf/%s/%s", fam, i.c_str(), k));
      }
    }
  }
  return Ok();
}

bool PerInterface(const std::string& name) {
  auto parts = fs::Split(name, '/');
  return parts.size() == 4 && parts[1] == "conf" && parts[2] != "all" && parts[2] != "default";
}

Result<void> ApplySysctls(const img::NetNs& ns, bool per_interface) {
  SysctlDir dir;
  for (const img::NetSysctl& s : ns.sysctls()) {
    if (PerInterface(s.name()) != per_interface) continue;
    if (s.name().find("..") != std::string::npos)
      return MakeError(ErrorKind::kBadImage, 0, "%s: bad sysctl name '%s'", kImage,
                       s.name().c_str());
    std::string name = "net/" + s.name();
    auto cur = dir.Read(s.name());
    if (cur.ok() && *cur == s.value()) continue;
    if (!cur.ok()) {
      // A knob this kernel lacks, or an interface the image did not bring back.
      LOG_WARN("net sysctl %s not restored: %s", s.name().c_str(), cur.error().to_string().c_str());
      continue;
    }
    TRY_CTX(WriteSysctl(name, s.value()), "restore net sysctl");
  }
  return Ok();
}

// ---- links --------------------------------------------------------------------------------

// Created by the kernel in every new netns when the tunnel modules are loaded.
const std::set<std::string> kFallbackTunnels = {
    "tunl0", "sit0", "ip6tnl0", "gre0", "gretap0", "erspan0", "ip6gre0", "ip_vti0", "ip6_vti0"};

void FillLinkAttrs(rtnl_link* l, nl_cache* links, img::NetLink* out) {
  out->set_ifindex(rtnl_link_get_ifindex(l));
  out->set_name(rtnl_link_get_name(l) ? rtnl_link_get_name(l) : "");
  out->set_kind(rtnl_link_get_type(l) ? rtnl_link_get_type(l) : "");
  out->set_mtu(rtnl_link_get_mtu(l));
  out->set_mac(Bytes(rtnl_link_get_addr(l)));
  out->set_flags(rtnl_link_get_flags(l));
  out->set_txqlen(rtnl_link_get_txqlen(l));
  out->set_master(IfName(links, rtnl_link_get_master(l)));
  if (rtnl_link_get_ifalias(l)) out->set_alias(rtnl_link_get_ifalias(l));
  out->set_loopback(rtnl_link_get_flags(l) & IFF_LOOPBACK);
}

Result<void> CollectHostEnd(nl_sock* host_sock, const img::NetLink& ct, int peer_ifindex,
                            img::VethHostEnd* out) {
  ASSIGN_OR_RETURN(Cache host_links, LinkCache(host_sock));
  rtnl_link* h = rtnl_link_get(host_links.get(), peer_ifindex);
  if (!h) {
    return MakeError(ErrorKind::kUnsupported, 0,
                     "veth %s: its peer (ifindex %d) is not in the dumper's netns",
                     ct.name().c_str(), peer_ifindex);
  }
  Link hold(h);
  const char* kind = rtnl_link_get_type(h);
  if (!kind || std::string(kind) != "veth" || rtnl_link_get_link(h) != ct.ifindex()) {
    return MakeError(ErrorKind::kUnsupported, 0,
                     "veth %s: ifindex %d in the dumper's netns is not its peer", ct.name().c_str(),
                     peer_ifindex);
  }
  out->set_name(rtnl_link_get_name(h));
  out->set_mac(Bytes(rtnl_link_get_addr(h)));
  out->set_mtu(rtnl_link_get_mtu(h));
  out->set_flags(rtnl_link_get_flags(h));
  out->set_master(IfName(host_links.get(), rtnl_link_get_master(h)));
  nl_cache* ac = nullptr;
  if (int err = rtnl_addr_alloc_cache(host_sock, &ac); err < 0)
    return NlError(err, "dump host addresses");
  Cache addrs(ac);
  for (rtnl_addr* a : Objects<rtnl_addr>(addrs.get())) {
    if (rtnl_addr_get_ifindex(a) != peer_ifindex) continue;
    img::NetAddr* na = out->add_addrs();
    na->set_ifname(out->name());
    FillPrefix(rtnl_addr_get_local(a), na->mutable_local());
    if (rtnl_addr_get_peer(a)) FillPrefix(rtnl_addr_get_peer(a), na->mutable_peer());
    if (rtnl_addr_get_broadcast(a)) FillPrefix(rtnl_addr_get_broadcast(a), na->mutable_broadcast());
    na->set_scope(rtnl_addr_get_scope(a));
    na->set_flags(rtnl_addr_get_flags(a));
    if (rtnl_addr_get_label(a)) na->set_label(rtnl_addr_get_label(a));
  }
  return Ok();
}

Result<void> CollectLinks(nl_sock* sock, nl_sock* host_sock, img::NetNs& ns) {
  ASSIGN_OR_RETURN(Cache links, LinkCache(sock));
  for (rtnl_link* l : Objects<rtnl_link>(links.get())) {
    img::NetLink* out = ns.add_links();
    FillLinkAttrs(l, links.get(), out);
    const std::string& kind = out->kind();
    if (out->loopback()) continue;
    if (kind == "veth") {
      int peer = rtnl_link_get_link(l);
      int32_t nsid = -1;
      bool elsewhere = rtnl_link_get_link_netnsid(l, &nsid) == 0 && nsid >= 0;
      if (!elsewhere) {
        out->set_peer_name(IfName(links.get(), peer));
        if (out->peer_name().empty())
          return MakeError(ErrorKind::kUnsupported, 0, "veth %s: peer ifindex %d not found",
                           out->name().c_str(), peer);
      } else {
        TRY(CollectHostEnd(host_sock, *out, peer, out->mutable_host_end()));
      }
      continue;
    }
    if (kind == "dummy" || kind == "bridge") continue;
    if (kFallbackTunnels.count(out->name())) {
      out->set_kernel_created(true);
      continue;
    }
    return MakeError(ErrorKind::kUnsupported, 0,
                     "link %s (ifindex %d) of kind '%s' is not supported", out->name().c_str(),
                     out->ifindex(), kind.c_str());
  }
  return Ok();
}

Result<void> CollectAddrs(nl_sock* sock, img::NetNs& ns) {
  ASSIGN_OR_RETURN(Cache links, LinkCache(sock));
  nl_cache* ac = nullptr;
  if (int err = rtnl_addr_alloc_cache(sock, &ac); err < 0) return NlError(err, "dump addresses");
  Cache addrs(ac);
  for (rtnl_addr* a : Objects<rtnl_addr>(addrs.get())) {
    img::NetAddr* na = ns.add_addrs();
    na->set_ifname(IfName(links.get(), rtnl_addr_get_ifindex(a)));
    FillPrefix(rtnl_addr_get_local(a), na->mutable_local());
    if (rtnl_addr_get_peer(a)) FillPrefix(rtnl_addr_get_peer(a), na->mutable_peer());
    if (rtnl_addr_get_broadcast(a)) FillPrefix(rtnl_addr_get_broadcast(a), na->mutable_broadcast());
    na->set_scope(rtnl_addr_get_scope(a));
    na->set_flags(rtnl_addr_get_flags(a));
    if (rtnl_addr_get_label(a)) na->set_label(rtnl_addr_get_label(a));
  }
  return Ok();
}

Result<void> CollectRoutes(nl_sock* sock, img::NetNs& ns) {
  ASSIGN_OR_RETURN(Cache links, LinkCache(sock));
  nl_cache* rc = nullptr;
  if (int err = rtnl_route_alloc_cache(sock, AF_UNSPEC, 0, &rc); err < 0)
    return NlError(err, "dump routes");
  Cache routes(rc);
  for (rtnl_route* r : Objects<rtnl_route>(routes.get())) {
    // The kernel makes these itself (connected, local, broadcast, multicast, link-local)
    // when addresses are added and links go up.
    if (rtnl_route_get_protocol(r) == RTPROT_KERNEL) continue;
    if (rtnl_route_get_flags(r) & RTM_F_CLONED) continue;
    img::NetRoute* o = ns.add_routes();
    o->set_family(rtnl_route_get_family(r));
    o->set_table(rtnl_route_get_table(r));
    if (rtnl_route_get_dst(r)) FillPrefix(rtnl_route_get_dst(r), o->mutable_dst());
    if (rtnl_route_get_src(r)) FillPrefix(rtnl_route_get_src(r), o->mutable_src());
    o->set_tos(rtnl_route_get_tos(r));
    o->set_type(rtnl_route_get_type(r));
    o->set_protocol(rtnl_route_get_protocol(r));
    o->set_scope(rtnl_route_get_scope(r));
    o->set_priority(rtnl_route_get_priority(r));
    o->set_pref_src(Bytes(rtnl_route_get_pref_src(r)));
    o->set_flags(rtnl_route_get_flags(r));
    for (int i = 0; i < rtnl_route_get_nnexthops(r); i++) {
      rtnl_nexthop* nh = rtnl_route_nexthop_n(r, i);
      img::NetNextHop* h = o->add_nexthops();
      h->set_gateway(Bytes(rtnl_route_nh_get_gateway(nh)));
      h->set_ifname(IfName(links.get(), rtnl_route_nh_get_ifindex(nh)));
      h->set_flags(rtnl_route_nh_get_flags(nh));
      h->set_weight(rtnl_route_nh_get_weight(nh));
    }
    for (int m = 1; m <= RTAX_MAX; m++) {
      uint32_t v = 0;
      if (rtnl_route_get_metric(r, m, &v) == 0) {
        img::NetRouteMetric* met = o->add_metrics();
        met->set_id(m);
        met->set_value(v);
      }
    }
  }
  return Ok();
}

// libnl reports an absent fwmark as 0 (and the kernel reports mask 0xffffffff for a bare mark).
bool HasMark(rtnl_rule* r) {
  uint32_t mark = rtnl_rule_get_mark(r), mask = rtnl_rule_get_mask(r);
  return (mark != 0 && mark != UINT32_MAX) || (mask != 0 && mask != UINT32_MAX) ||
         (mark == 0 && mask == UINT32_MAX);
}

bool DefaultRule(rtnl_rule* r) {
  uint32_t prio = rtnl_rule_get_prio(r), table = rtnl_rule_get_table(r);
  bool selectors = rtnl_rule_get_src(r) || rtnl_rule_get_dst(r) || rtnl_rule_get_iif(r) ||
                   rtnl_rule_get_oif(r) || HasMark(r);
  if (selectors || rtnl_rule_get_action(r) != FR_ACT_TO_TBL) return false;
  return (prio == 0 && table == RT_TABLE_LOCAL) || (prio == 32766 && table == RT_TABLE_MAIN) ||
         (prio == 32767 && table == RT_TABLE_DEFAULT);
}

Result<void> CollectRules(nl_sock* sock, img::NetNs& ns) {
  nl_cache* c = nullptr;
  if (int err = rtnl_rule_alloc_cache(sock, AF_UNSPEC, &c); err < 0)
    return NlError(err, "dump rules");
  Cache rules(c);
  for (rtnl_rule* r : Objects<rtnl_rule>(rules.get())) {
    // Multicast routing rules (RTNL_FAMILY_IPMR/IP6MR) are the kernel's.
    int fam = rtnl_rule_get_family(r);
    if ((fam != AF_INET && fam != AF_INET6) || DefaultRule(r)) continue;
    img::NetRule* o = ns.add_rules();
    o->set_family(rtnl_rule_get_family(r));
    o->set_priority(rtnl_rule_get_prio(r));
    o->set_table(rtnl_rule_get_table(r));
    o->set_action(rtnl_rule_get_action(r));
    if (rtnl_rule_get_src(r)) FillPrefix(rtnl_rule_get_src(r), o->mutable_src());
    if (rtnl_rule_get_dst(r)) FillPrefix(rtnl_rule_get_dst(r), o->mutable_dst());
    if (HasMark(r)) {
      o->set_has_mark(true);
      o->set_mark(rtnl_rule_get_mark(r));
      o->set_mask(rtnl_rule_get_mask(r));
    }
    if (rtnl_rule_get_iif(r)) o->set_iif(rtnl_rule_get_iif(r));
    if (rtnl_rule_get_oif(r)) o->set_oif(rtnl_rule_get_oif(r));
    o->set_dsfield(rtnl_rule_get_dsfield(r));
  }
  return Ok();
}

Result<void> CollectNeighs(nl_sock* sock, img::NetNs& ns) {
  ASSIGN_OR_RETURN(Cache links, LinkCache(sock));
  nl_cache* c = nullptr;
  if (int err = rtnl_neigh_alloc_cache(sock, &c); err < 0) return NlError(err, "dump neighbours");
  Cache neighs(c);
  for (rtnl_neigh* n : Objects<rtnl_neigh>(neighs.get())) {
    // Learned entries come back by themselves; only what someone configured matters.
    if (!(rtnl_neigh_get_state(n) & NUD_PERMANENT)) continue;
    img::NetNeigh* o = ns.add_neighs();
    o->set_ifname(IfName(links.get(), rtnl_neigh_get_ifindex(n)));
    o->set_family(rtnl_neigh_get_family(n));
    o->set_dst(Bytes(rtnl_neigh_get_dst(n)));
    o->set_lladdr(Bytes(rtnl_neigh_get_lladdr(n)));
    o->set_state(rtnl_neigh_get_state(n));
    o->set_flags(rtnl_neigh_get_flags(n));
  }
  return Ok();
}

// Whether the calling thread's netns has any nftables table: one NFT_MSG_GETTABLE dump over
// nfnetlink, tens of microseconds, where starting nft costs milliseconds of frozen time. No table
// means `nft list ruleset` prints nothing.
Result<bool> HasNftTables() {
  int fd = ::socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_NETFILTER);
  if (fd < 0) return Errno("socket(NETLINK_NETFILTER)");
  UniqueFd owned(fd);
  struct {
    nlmsghdr nh;
    nfgenmsg nf;
  } req{};
  req.nh.nlmsg_len = sizeof(req);
  req.nh.nlmsg_type = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETTABLE;
  req.nh.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
  req.nh.nlmsg_seq = 1;
  req.nf.nfgen_family = AF_UNSPEC;
  req.nf.version = NFNETLINK_V0;
  if (::send(fd, &req, sizeof(req), 0) != static_cast<ssize_t>(sizeof(req)))
    return Errno("send NFT_MSG_GETTABLE");
  bool found = false;
  alignas(nlmsghdr) char buf[16384];
  for (;;) {
    ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      return Errno("recv NFT_MSG_GETTABLE");
    }
    if (n == 0) return MakeError(ErrorKind::kGeneric, 0, "nfnetlink: end of stream");
    int len = static_cast<int>(n);
    for (auto* h = reinterpret_cast<nlmsghdr*>(buf); NLMSG_OK(h, len); h = NLMSG_NEXT(h, len)) {
      if (h->nlmsg_type == NLMSG_DONE) return found;
      if (h->nlmsg_type == NLMSG_ERROR) {
        auto* e = static_cast<nlmsgerr*>(NLMSG_DATA(h));
        if (e->error == 0) continue;
        return MakeError(ErrorKind::kGeneric, -e->error, "NFT_MSG_GETTABLE");
      }
      if ((h->nlmsg_type & 0xff) == NFT_MSG_NEWTABLE) found = true;
    }
  }
}

// The ruleset of the calling thread's net namespace, as `nft list ruleset` prints it, without
// godwit's own tables (godwit_*: a dump's network lock, a migration's silence or deafness, a
// restore's quiet): they hold the namespace still for the checkpoint and are no part of it (a
// deaf table restored would cut the container off for good). `nft list ruleset` prints each
// table as a block from "table FAMILY NAME {" to a "}" line, both at column 0.
Result<std::string> CollectNft() {
  auto r = netns::NftRunIn(-1, "list ruleset\n");
  if (!r.ok()) return std::move(r.error().wrap("nft list ruleset"));
  std::string out;
  bool skip = false;
  size_t at = 0;
  while (at < r->size()) {
    size_t nl = r->find('\n', at);
    size_t end = nl == std::string::npos ? r->size() : nl + 1;
    std::string_view line(r->data() + at, end - at);
    if (line.rfind("table ", 0) == 0) {
      size_t name = line.find(' ', 6);  // after the family
      skip = name != std::string_view::npos && line.substr(name + 1).rfind("godwit_", 0) == 0;
    }
    if (!skip) out.append(line);
    if (skip && line.rfind("}", 0) == 0) skip = false;
    at = end;
  }
  return out;
}

// ---- restore ------------------------------------------------------------------------------

Result<void> SetLinkAttrs(rtnl_link* l, const std::string& name, const std::string& mac,
                          uint32_t mtu) {
  rtnl_link_set_name(l, name.c_str());
  if (mtu) rtnl_link_set_mtu(l, mtu);
  if (mac.size() == 6) {
    ASSIGN_OR_RETURN(Addr a, BuildAddr(AF_LLC, mac));
    rtnl_link_set_addr(l, a.get());
  }
  return Ok();
}

Result<Link> GetLink(nl_sock* sock, const std::string& name) {
  rtnl_link* l = nullptr;
  if (int err = rtnl_link_get_kernel(sock, 0, name.c_str(), &l); err < 0)
    return NlError(err, "link %s", name.c_str());
  return Link(l);
}

Result<int> IfIndex(nl_sock* sock, const std::string& name) {
  ASSIGN_OR_RETURN(Link l, GetLink(sock, name));
  return rtnl_link_get_ifindex(l.get());
}

// Applies mtu/txqlen/alias/master/flags (flags other than IFF_UP when up=false).
Result<void> ChangeLink(nl_sock* sock, const std::string& name, uint32_t mtu, uint32_t txqlen,
                        const std::string& alias, const std::string& master, uint32_t flags,
                        bool up) {
  ASSIGN_OR_RETURN(Link orig, GetLink(sock, name));
  Link ch(rtnl_link_alloc());
  bool any = false;
  if (mtu && rtnl_link_get_mtu(orig.get()) != mtu) {
    rtnl_link_set_mtu(ch.get(), mtu);
    any = true;
  }
  if (txqlen && rtnl_link_get_txqlen(orig.get()) != txqlen) {
    rtnl_link_set_txqlen(ch.get(), txqlen);
    any = true;
  }
  if (!alias.empty()) {
    rtnl_link_set_ifalias(ch.get(), alias.c_str());
    any = true;
  }
  if (!master.empty()) {
    ASSIGN_OR_RETURN(int m, IfIndex(sock, master));
    rtnl_link_set_master(ch.get(), m);
    any = true;
  }
  const uint32_t kManaged = IFF_NOARP | IFF_PROMISC | IFF_ALLMULTI | IFF_MULTICAST;
  uint32_t want = flags & (kManaged | (up ? IFF_UP : 0));
  uint32_t have = rtnl_link_get_flags(orig.get()) & (kManaged | (up ? IFF_UP : 0));
  if (want != have) {
    if (want & ~have) rtnl_link_set_flags(ch.get(), want & ~have);
    if (have & ~want) rtnl_link_unset_flags(ch.get(), have & ~want);
    any = true;
  }
  if (!any) return Ok();
  if (int err = rtnl_link_change(sock, orig.get(), ch.get(), 0); err < 0)
    return NlError(err, "change link %s", name.c_str());
  return Ok();
}

Result<void> AddAddr(nl_sock* sock, const img::NetAddr& na) {
  ASSIGN_OR_RETURN(int ifindex, IfIndex(sock, na.ifname()));
  RtAddr a(rtnl_addr_alloc());
  rtnl_addr_set_ifindex(a.get(), ifindex);
  rtnl_addr_set_family(a.get(), na.local().family());
  ASSIGN_OR_RETURN(Addr local, BuildPrefix(na.local()));
  if (int err = rtnl_addr_set_local(a.get(), local.get()); err < 0)
    return NlError(err, "address on %s", na.ifname().c_str());
  if (na.has_peer() && !na.peer().addr().empty()) {
    ASSIGN_OR_RETURN(Addr peer, BuildPrefix(na.peer()));
    rtnl_addr_set_peer(a.get(), peer.get());
  }
  if (na.has_broadcast() && !na.broadcast().addr().empty()) {
    ASSIGN_OR_RETURN(Addr brd, BuildPrefix(na.broadcast()));
    rtnl_addr_set_broadcast(a.get(), brd.get());
  }
  rtnl_addr_set_prefixlen(a.get(), na.local().prefixlen());
  rtnl_addr_set_scope(a.get(), na.scope());
  // State flags are the kernel's; NODAD so a restored IPv6 address is usable at once.
  uint32_t keep = IFA_F_HOMEADDRESS | IFA_F_NODAD | IFA_F_NOPREFIXROUTE | IFA_F_MANAGETEMPADDR |
                  IFA_F_MCAUTOJOIN;
  uint32_t flags = na.flags() & keep;
  if (na.local().family() == AF_INET6) flags |= IFA_F_NODAD;
  if (flags) rtnl_addr_set_flags(a.get(), flags);
  if (!na.label().empty() && na.local().family() == AF_INET)
    rtnl_addr_set_label(a.get(), na.label().c_str());
  int err = rtnl_addr_add(sock, a.get(), NLM_F_REPLACE);
  if (err < 0 && !IsExists(err)) {
    char buf[INET6_ADDRSTRLEN + 8] = {};
    nl_addr2str(local.get(), buf, sizeof(buf));
    return NlError(err, "add address %s to %s", buf, na.ifname().c_str());
  }
  return Ok();
}

Result<void> CreateVethToHost(nl_sock* host_sock, const img::NetLink& l, int netns_fd) {
  const img::VethHostEnd& h = l.host_end();
  Link veth(rtnl_link_veth_alloc());
  if (!veth) return MakeError(ErrorKind::kGeneric, ENOMEM, "rtnl_link_veth_alloc");
  rtnl_link* peer = rtnl_link_veth_get_peer(veth.get());
  Link peer_ref(peer);  // get_peer took a reference
  TRY(SetLinkAttrs(veth.get(), h.name(), h.mac(), h.mtu()));
  TRY(SetLinkAttrs(peer, l.name(), l.mac(), l.mtu()));
  // The container end is created straight into the target netns.
  rtnl_link_set_ns_fd(peer, netns_fd);
  if (int err = rtnl_link_add(host_sock, veth.get(), NLM_F_CREATE | NLM_F_EXCL); err < 0)
    return NlError(err, "create veth %s (host) <-> %s", h.name().c_str(), l.name().c_str());
  return Ok();
}

Result<void> CreateVethPair(nl_sock* sock, const img::NetLink& a, const img::NetLink& b) {
  Link veth(rtnl_link_veth_alloc());
  if (!veth) return MakeError(ErrorKind::kGeneric, ENOMEM, "rtnl_link_veth_alloc");
  rtnl_link* peer = rtnl_link_veth_get_peer(veth.get());
  Link peer_ref(peer);
  TRY(SetLinkAttrs(veth.get(), a.name(), a.mac(), a.mtu()));
  TRY(SetLinkAttrs(peer, b.name(), b.mac(), b.mtu()));
  if (int err = rtnl_link_add(sock, veth.get(), NLM_F_CREATE | NLM_F_EXCL); err < 0)
    return NlError(err, "create veth %s <-> %s", a.name().c_str(), b.name().c_str());
  return Ok();
}

Result<void> CreateSimple(nl_sock* sock, const img::NetLink& l) {
  Link link(rtnl_link_alloc());
  if (int err = rtnl_link_set_type(link.get(), l.kind().c_str()); err < 0)
    return NlError(err, "link kind %s", l.kind().c_str());
  TRY(SetLinkAttrs(link.get(), l.name(), l.mac(), l.mtu()));
  if (int err = rtnl_link_add(sock, link.get(), NLM_F_CREATE | NLM_F_EXCL); err < 0)
    return NlError(err, "create %s link %s", l.kind().c_str(), l.name().c_str());
  return Ok();
}

Result<void> AddRoute(nl_sock* sock, const img::NetRoute& nr) {
  Route r(rtnl_route_alloc());
  rtnl_route_set_family(r.get(), nr.family());
  rtnl_route_set_table(r.get(), nr.table());
  img::NetPrefix dst = nr.dst();
  if (!nr.has_dst()) dst.set_family(nr.family());  // default route: zero-length address
  ASSIGN_OR_RETURN(Addr d, BuildPrefix(dst));
  if (int err = rtnl_route_set_dst(r.get(), d.get()); err < 0) return NlError(err, "route dst");
  if (nr.has_src() && !nr.src().addr().empty()) {
    ASSIGN_OR_RETURN(Addr s, BuildPrefix(nr.src()));
    rtnl_route_set_src(r.get(), s.get());
  }
  rtnl_route_set_tos(r.get(), nr.tos());
  rtnl_route_set_type(r.get(), nr.type());
  rtnl_route_set_protocol(r.get(), nr.protocol());
  rtnl_route_set_scope(r.get(), nr.scope());
  rtnl_route_set_priority(r.get(), nr.priority());
  if (!nr.pref_src().empty()) {
    ASSIGN_OR_RETURN(Addr ps, BuildAddr(nr.family(), nr.pref_src()));
    rtnl_route_set_pref_src(r.get(), ps.get());
  }
  for (const img::NetRouteMetric& m : nr.metrics())
    rtnl_route_set_metric(r.get(), m.id(), m.value());
  for (const img::NetNextHop& h : nr.nexthops()) {
    rtnl_nexthop* nh = rtnl_route_nh_alloc();
    if (!h.ifname().empty()) {
      auto idx = IfIndex(sock, h.ifname());
      if (!idx.ok()) {
        rtnl_route_nh_free(nh);
        return std::move(idx).error();
      }
      rtnl_route_nh_set_ifindex(nh, *idx);
    }
    if (!h.gateway().empty()) {
      auto gw = BuildAddr(nr.family(), h.gateway());
      if (!gw.ok()) {
        rtnl_route_nh_free(nh);
        return std::move(gw).error();
      }
      rtnl_route_nh_set_gateway(nh, gw->get());
    }
    rtnl_route_nh_set_flags(nh, h.flags() & RTNH_F_ONLINK);
    if (h.weight()) rtnl_route_nh_set_weight(nh, h.weight());
    rtnl_route_add_nexthop(r.get(), nh);  // the route owns nh now
  }
  int err = rtnl_route_add(sock, r.get(), NLM_F_EXCL);
  if (err < 0 && !IsExists(err)) {
    char buf[64] = {};
    nl_addr2str(d.get(), buf, sizeof(buf));
    return NlError(err, "add route %s table %u", buf, nr.table());
  }
  return Ok();
}

Result<void> AddRule(nl_sock* sock, const img::NetRule& nr) {
  Rule r(rtnl_rule_alloc());
  rtnl_rule_set_family(r.get(), nr.family());
  rtnl_rule_set_prio(r.get(), nr.priority());
  rtnl_rule_set_table(r.get(), nr.table());
  rtnl_rule_set_action(r.get(), nr.action());
  if (nr.has_src() && nr.src().prefixlen() > 0) {
    ASSIGN_OR_RETURN(Addr s, BuildPrefix(nr.src()));
    rtnl_rule_set_src(r.get(), s.get());
  }
  if (nr.has_dst() && nr.dst().prefixlen() > 0) {
    ASSIGN_OR_RETURN(Addr d, BuildPrefix(nr.dst()));
    rtnl_rule_set_dst(r.get(), d.get());
  }
  if (nr.has_mark()) {
    rtnl_rule_set_mark(r.get(), nr.mark());
    rtnl_rule_set_mask(r.get(), nr.mask());
  }
  if (!nr.iif().empty()) rtnl_rule_set_iif(r.get(), nr.iif().c_str());
  if (!nr.oif().empty()) rtnl_rule_set_oif(r.get(), nr.oif().c_str());
  if (nr.dsfield()) rtnl_rule_set_dsfield(r.get(), nr.dsfield());
  int err = rtnl_rule_add(sock, r.get(), NLM_F_EXCL);
  if (err < 0 && !IsExists(err)) return NlError(err, "add rule priority %u", nr.priority());
  return Ok();
}

Result<void> AddNeigh(nl_sock* sock, const img::NetNeigh& nn) {
  ASSIGN_OR_RETURN(int ifindex, IfIndex(sock, nn.ifname()));
  Neigh n(rtnl_neigh_alloc());
  rtnl_neigh_set_ifindex(n.get(), ifindex);
  rtnl_neigh_set_family(n.get(), nn.family());
  ASSIGN_OR_RETURN(Addr dst, BuildAddr(nn.family(), nn.dst()));
  rtnl_neigh_set_dst(n.get(), dst.get());
  if (!nn.lladdr().empty()) {
    ASSIGN_OR_RETURN(Addr ll, BuildAddr(AF_LLC, nn.lladdr()));
    rtnl_neigh_set_lladdr(n.get(), ll.get());
  }
  rtnl_neigh_set_state(n.get(), nn.state());
  if (nn.flags()) rtnl_neigh_set_flags(n.get(), nn.flags());
  if (int err = rtnl_neigh_add(sock, n.get(), NLM_F_CREATE | NLM_F_REPLACE); err < 0)
    return NlError(err, "add neighbour on %s", nn.ifname().c_str());
  return Ok();
}

}  // namespace

Result<img::NetNs> Collect(int netns_fd) {
  img::NetNs ns;
  // Collected while the container is frozen, so the work is spread over two threads. This
  // thread opens an rtnetlink socket in the netns and reads links, addresses, routes, rules and
  // neighbours over it, while a second one, inside the netns, reads the sysctls into a message of
  // its own and lists the nftables ruleset (only when nfnetlink shows a table: most containers
  // have none).
  ASSIGN_OR_RETURN(Sock sock, nl::ConnectRoute(netns_fd));
  img::NetNs sysctls;
  Result<std::string> nft = std::string();
  Result<void> in_ns = Ok();
  std::thread ns_thread([&] {
    in_ns = RunHere(netns_fd, CLONE_NEWNET, [&]() -> Result<void> {
      TRY(CollectSysctls(sysctls));
      auto tables = HasNftTables();
      if (!tables.ok())
        LOG_DEBUG("nftables tables unknown, listing: %s", tables.error().to_string().c_str());
      if (!tables.ok() || *tables) nft = CollectNft();
      return Ok();
    });
  });
  ScopeExit join([&] { ns_thread.join(); });
  ASSIGN_OR_RETURN(Sock host, nl::ConnectRoute(-1));
  TRY_CTX(CollectLinks(sock.get(), host.get(), ns), "dump netns links");
  TRY_CTX(CollectAddrs(sock.get(), ns), "dump netns addresses");
  TRY_CTX(CollectRoutes(sock.get(), ns), "dump netns routes");
  TRY_CTX(CollectRules(sock.get(), ns), "dump netns rules");
  TRY_CTX(CollectNeighs(sock.get(), ns), "dump netns neighbours");
  join.dismiss();
  ns_thread.join();
  TRY_CTX(in_ns, "dump netns");
  ns.mutable_sysctls()->Swap(sysctls.mutable_sysctls());
  TRY_CTX(nft, "dump nftables ruleset");
  ns.set_nft_ruleset(*nft);
  LOG_DEBUG("netns: %d links, %d addresses, %d routes, %d rules, %d neighbours, %d sysctls",
            ns.links_size(), ns.addrs_size(), ns.routes_size(), ns.rules_size(), ns.neighs_size(),
            ns.sysctls_size());
  return ns;
}

Result<void> Apply(const img::NetNs& ns, int netns_fd,
                   const std::function<Result<void>()>& before_links) {
  timing::PhaseTimer pt;
  ASSIGN_OR_RETURN(Sock sock, nl::ConnectRoute(netns_fd));
  ASSIGN_OR_RETURN(Sock host, nl::ConnectRoute(-1));
  std::vector<std::string> host_created;
  ScopeExit rollback([&] {
    for (const auto& name : host_created) {
      auto r = DeleteLink(-1, name);
      if (!r.ok()) LOG_WARN("rollback: %s", r.error().to_string().c_str());
    }
  });

  pt.Lap("sockets");
  TRY(RunHere(netns_fd, CLONE_NEWNET, [&] { return ApplySysctls(ns, false); }));
  pt.Lap("sysctls");
  if (before_links) TRY(before_links());
  pt.Lap("before_links");

  std::map<std::string, const img::NetLink*> by_name;
  for (const auto& l : ns.links()) by_name[l.name()] = &l;
  std::set<std::string> done;
  // Bridges first so that ports can be enslaved later; the order is otherwise the dump's.
  std::vector<const img::NetLink*> order;
  for (const auto& l : ns.links())
    if (l.kind() == "bridge") order.push_back(&l);
  for (const auto& l : ns.links())
    if (l.kind() != "bridge") order.push_back(&l);
  for (const img::NetLink* l : order) {
    if (done.count(l->name())) continue;
    done.insert(l->name());
    if (l->loopback() || l->kernel_created()) {
      if (!IfIndex(sock.get(), l->name()).ok())
        LOG_WARN("link %s (made by the kernel) is missing in the new netns", l->name().c_str());
      continue;
    }
    if (l->kind() == "veth" && !l->host_end().name().empty()) {
      TRY(CreateVethToHost(host.get(), *l, netns_fd));
      host_created.push_back(l->host_end().name());
    } else if (l->kind() == "veth") {
      auto it = by_name.find(l->peer_name());
      if (it == by_name.end())
        return MakeError(ErrorKind::kBadImage, 0, "%s: veth %s: peer %s not in the image", kImage,
                         l->name().c_str(), l->peer_name().c_str());
      TRY(CreateVethPair(sock.get(), *l, *it->second));
      done.insert(l->peer_name());
    } else if (l->kind() == "dummy" || l->kind() == "bridge") {
      TRY(CreateSimple(sock.get(), *l));
    } else {
      return MakeError(ErrorKind::kUnsupported, 0, "%s: link %s of kind '%s' cannot be restored",
                       kImage, l->name().c_str(), l->kind().c_str());
    }
  }

  pt.Lap("links");
  TRY(RunHere(netns_fd, CLONE_NEWNET, [&] { return ApplySysctls(ns, true); }));
  pt.Lap("if_sysctls");

  for (const auto& l : ns.links()) {
    TRY_CTX(ChangeLink(sock.get(), l.name(), l.mtu(), l.txqlen(), l.alias(), l.master(), l.flags(),
                       false),
            "restore link %s", l.name().c_str());
    if (!l.host_end().name().empty()) {
      const auto& h = l.host_end();
      TRY_CTX(ChangeLink(host.get(), h.name(), h.mtu(), 0, "", h.master(), h.flags(), false),
              "restore host end %s", h.name().c_str());
      for (const auto& a : h.addrs())
        TRY_CTX(AddAddr(host.get(), a), "host end %s", h.name().c_str());
    }
  }
  pt.Lap("attrs");
  for (const auto& a : ns.addrs()) TRY(AddAddr(sock.get(), a));
  pt.Lap("addrs");
  for (const auto& l : ns.links()) {
    TRY_CTX(ChangeLink(sock.get(), l.name(), 0, 0, "", "", l.flags(), true), "set %s up",
            l.name().c_str());
    if (!l.host_end().name().empty()) {
      TRY_CTX(ChangeLink(host.get(), l.host_end().name(), 0, 0, "", "", l.host_end().flags(), true),
              "set host end %s up", l.host_end().name().c_str());
    }
  }
  // Routes through a gateway need the connected route to it: direct routes first.
  std::vector<const img::NetRoute*> routes;
  for (const auto& r : ns.routes()) routes.push_back(&r);
  auto has_gw = [](const img::NetRoute* r) {
    for (const auto& h : r->nexthops())
      if (!h.gateway().empty()) return true;
    return false;
  };
  pt.Lap("up");
  std::stable_sort(routes.begin(), routes.end(),
                   [&](auto* a, auto* b) { return !has_gw(a) && has_gw(b); });
  for (const img::NetRoute* r : routes) TRY(AddRoute(sock.get(), *r));
  for (const auto& r : ns.rules()) TRY(AddRule(sock.get(), r));
  for (const auto& n : ns.neighs()) TRY(AddNeigh(sock.get(), n));
  // No "flush ruleset": the namespace is fresh, and the restore's network lock (a table holding
  // the TCP connections' packets until their sockets are live, files/netlock.cc) is already in
  // it and must stay.
  pt.Lap("routes");
  if (!ns.nft_ruleset().empty())
    TRY_CTX(netns::NftRunIn(netns_fd, ns.nft_ruleset()), "restore the nftables ruleset");
  pt.Lap("nft");
  rollback.dismiss();
  std::string laps;
  for (const auto& [k, ms] : pt.phases()) laps += StrFormat(" %s %.2f", k.c_str(), ms);
  LOG_DEBUG("netns restored (ms):%s", laps.c_str());
  return Ok();
}

Result<void> Dump(int netns_fd, images::Sink& sink) {
  ASSIGN_OR_RETURN(img::NetNs ns, Collect(netns_fd));
  return images::WriteImage(sink, kImage, ns);
}

Result<void> Restore(const images::ImageSet& images, int netns_fd) {
  img::NetNs ns;
  TRY(images.ReadOne(kImage, &ns));
  return Apply(ns, netns_fd);
}

Result<void> DeleteLink(int netns_fd, const std::string& name) {
  ASSIGN_OR_RETURN(Sock sock, nl::ConnectRoute(netns_fd));
  Link l(rtnl_link_alloc());
  rtnl_link_set_name(l.get(), name.c_str());
  if (int err = rtnl_link_delete(sock.get(), l.get()); err < 0)
    return NlError(err, "delete link %s", name.c_str());
  return Ok();
}

}  // namespace godwit::container::net
