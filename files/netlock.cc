// The dropping network lock (netlock.h), in nftables: one table per lock, in each namespace it
// locks, with base chains at priority -300 (before conntrack and everything else) and one drop
// rule per connection and direction on its exact 4-tuple, so nothing else of the namespace's
// traffic is touched. Also the dump side's use of it: FdDumpContext::LockProcessTcp.
#include "files/netlock.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <map>

#include "common/log.h"
#include "common/netns.h"
#include "common/pidfd.h"
#include "files/kind.h"

namespace godwit::files {
namespace {

std::string Ip(const sockaddr_storage& ss) {
  char buf[INET6_ADDRSTRLEN] = "";
  if (ss.ss_family == AF_INET)
    inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in*>(&ss)->sin_addr, buf, sizeof(buf));
  else
    inet_ntop(AF_INET6, &reinterpret_cast<const sockaddr_in6*>(&ss)->sin6_addr, buf, sizeof(buf));
  return buf;
}
int Port(const sockaddr_storage& ss) {
  return ntohs(reinterpret_cast<const sockaddr_in*>(&ss)->sin_port);
}

}  // namespace

bool UnmapV4(sockaddr_storage* ss) {
  if (ss->ss_family != AF_INET6) return false;
  const auto* s6 = reinterpret_cast<const sockaddr_in6*>(ss);
  if (!IN6_IS_ADDR_V4MAPPED(&s6->sin6_addr)) return false;
  sockaddr_in s4{};
  s4.sin_family = AF_INET;
  s4.sin_port = s6->sin6_port;
  memcpy(&s4.sin_addr, &s6->sin6_addr.s6_addr[12], 4);
  *ss = sockaddr_storage{};
  memcpy(ss, &s4, sizeof(s4));
  return true;
}

TcpConn AsTravels(const TcpConn& c) {
  TcpConn t = c;
  sockaddr_storage l = c.local, p = c.peer;
  if (UnmapV4(&l) && UnmapV4(&p)) {
    t.local = l;
    t.peer = p;
  }
  return t;
}

namespace {

// The rules on one connection: "in" drops what the peer sends, "out" what the local end sends.
std::string ConnRules(const std::string& table, const TcpConn& conn, bool out_too) {
  const TcpConn c = AsTravels(conn);  // v4-mapped addresses on a v6 socket travel as IPv4
  const char* ipk = c.local.ss_family == AF_INET ? "ip" : "ip6";
  std::string sip = Ip(c.local), dip = Ip(c.peer);
  std::string r = StrFormat(
      "add rule inet %s in %s saddr %s %s daddr %s tcp sport %d tcp dport %d meta mark != 0x%x "
      "drop\n",
      table.c_str(), ipk, dip.c_str(), ipk, sip.c_str(), Port(c.peer), Port(c.local),
      kNetLockPassMark);
  if (out_too)
    r += StrFormat("add rule inet %s out %s saddr %s %s daddr %s tcp sport %d tcp dport %d "
                   "meta mark != 0x%x drop\n",
                   table.c_str(), ipk, sip.c_str(), ipk, dip.c_str(), Port(c.local),
                   Port(c.peer), kNetLockPassMark);
  return r;
}

std::string TableScript(const std::string& t, NetLock::Where where) {
  if (where == NetLock::Where::kInside)
    return StrFormat(
        "add table inet %s\n"
        "add chain inet %s in { type filter hook input priority -300; policy accept; }\n"
        "add chain inet %s out { type filter hook output priority -300; policy accept; }\n",
        t.c_str(), t.c_str(), t.c_str());
  // Routed: the rules go into regular chains that the output and forward hooks jump to ("out"
  // stays empty: the connections' own packets do not pass here while they are not live).
  return StrFormat(
      "add table inet %s\n"
      "add chain inet %s in\n"
      "add chain inet %s out\n"
      "add chain inet %s host_out { type filter hook output priority -300; policy accept; }\n"
      "add chain inet %s host_fwd { type filter hook forward priority -300; policy accept; }\n"
      "add rule inet %s host_out jump in\n"
      "add rule inet %s host_fwd jump in\n",
      t.c_str(), t.c_str(), t.c_str(), t.c_str(), t.c_str(), t.c_str(), t.c_str());
}

}  // namespace

std::string QuietRules(const std::string& t) {
  return StrFormat(
      "add chain inet %s quiet { type filter hook output priority -400; policy accept; }\n"
      "add rule inet %s quiet oifname != \"lo\" drop\n"
      "add table arp %s\n"
      "add chain arp %s quiet { type filter hook output priority -400; policy accept; }\n"
      "add rule arp %s quiet drop\n",
      t.c_str(), t.c_str(), t.c_str(), t.c_str(), t.c_str());
}

std::string DeafRules(const std::string& t) {
  // Not loopback: segments the restore gives a socket from its peer (InjectFromPeer) are routed
  // there, and so are the datagrams it requeues on UDP sockets.
  return StrFormat(
      "add chain inet %s deaf { type filter hook input priority -400; policy accept; }\n"
      "add rule inet %s deaf iifname != \"lo\" drop\n",
      t.c_str(), t.c_str());
}

namespace {

class NftDropLock : public NetLock {
 public:
  explicit NftDropLock(std::string name) : name_(std::move(name)) {}
  const std::string& name() const override { return name_; }

  Result<void> Lock(int netns_fd, const std::vector<TcpConn>& conns, Where where) override {
    if (conns.empty()) return Ok();
    ASSIGN_OR_RETURN(Ns * ns, Remember(netns_fd));
    std::string script;
    if (!ns->has_table) script = TableScript(name_, where);
    for (const auto& c : conns) script += ConnRules(name_, c, where == Where::kInside);
    TRY_CTX(ns->nft.Run(script), "network lock %s", name_.c_str());
    ns->has_table = true;
    return Ok();
  }

  Result<void> Quiet(int netns_fd) override {
    ASSIGN_OR_RETURN(Ns * ns, Remember(netns_fd));
    std::string script;
    if (!ns->has_table) script = TableScript(name_, Where::kInside);
    // Rules, not chain policies: Open's flush removes them and leaves accepting chains. Not on
    // loopback, which leaves nothing: the restore requeues the datagrams a UDP socket had queued
    // by sending them to it (EPERM here made the restore of such a socket fail).
    script += QuietRules(name_);
    TRY_CTX(ns->nft.Run(script), "network lock %s: quiet", name_.c_str());
    ns->has_table = true;
    return Ok();
  }

  Result<void> Adopt(int netns_fd) override {
    ASSIGN_OR_RETURN(Ns * ns, Remember(netns_fd));
    // libnftables' one-time set-up (its caches), done now rather than in a caller's switch.
    (void)ns->nft.Run(StrFormat("list table inet %s\n", name_.c_str()));
    return Ok();
  }

  Result<void> Open() override {
    Result<void> first = Ok();
    for (auto& [ino, ns] : ns_) {
      // Both families in one transaction where Quiet made the arp table: opened one after the
      // other, the first reply could need its peer's address resolved while ARP was still
      // dropped, and the neighbour's next try is a second later (retrans_time): the connection
      // stalled 1 s after 1 in 4 migrations.
      auto r = ns.nft.Run(StrFormat("flush table arp %s\nflush table inet %s\n", name_.c_str(),
                                    name_.c_str()));
      if (!r.ok() && r.error().message().find("No such file or directory") != std::string::npos)
        r = ns.nft.Run(StrFormat("flush table inet %s\n", name_.c_str()));  // not quiet
      if (!r.ok() && r.error().message().find("No such file or directory") != std::string::npos)
        continue;
      if (!r.ok() && first.ok()) first = std::move(r.error().wrap("network lock open " + name_));
    }
    return first;
  }

  Result<void> Unlock() override {
    // One after the other: an nft run in process takes a fraction of a millisecond, and
    // libnftables runs one call at a time anyway (common/netns.h).
    Result<void> first = Ok();
    for (auto& [ino, ns] : ns_) {
      auto r = UnlockIn(ns);
      if (!r.ok() && first.ok()) first = std::move(r);
    }
    ns_.clear();  // closes the contexts: this may wait for a grace period (netns.h)
    return first;
  }

 private:
  struct Ns {
    UniqueFd fd;
    netns::NftContext nft;   // one per namespace, kept: closing one can wait (netns.h)
    bool has_table = false;  // made by this object
  };

  // By inode: each namespace once, through our own fd on it (the caller's may go away).
  Result<Ns*> Remember(int netns_fd) {
    UniqueFd fd(netns_fd >= 0 ? fcntl(netns_fd, F_DUPFD_CLOEXEC, 0)
                              : open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC));
    if (!fd) return Errno("network lock %s: net namespace fd %d", name_.c_str(), netns_fd);
    struct stat st;
    if (fstat(fd.get(), &st) < 0) return Errno("network lock %s: stat netns", name_.c_str());
    auto it = ns_.find(st.st_ino);
    if (it == ns_.end()) {
      ASSIGN_OR_RETURN(netns::NftContext nft, netns::NftContext::Open(fd.get()));
      it = ns_.emplace(st.st_ino, Ns{std::move(fd), std::move(nft), false}).first;
    }
    return &it->second;
  }

  Result<void> UnlockIn(Ns& ns) {
    // The tables are absent where nobody locked (a namespace adopted just in case), the arp one
    // where nobody made it quiet.
    for (const char* family : {"inet", "arp"}) {
      auto r = ns.nft.Run(StrFormat("delete table %s %s\n", family, name_.c_str()));
      if (!r.ok() && r.error().message().find("No such file or directory") != std::string::npos)
        continue;
      if (!r.ok()) return std::move(r.error().wrap("network unlock " + name_));
    }
    return Ok();
  }

  std::string name_;
  std::map<ino_t, Ns> ns_;
};

}  // namespace

Result<TcpConn> ConnOf(const img::FileEntry& e) {
  TcpConn c;
  if (e.inet().src().size() > sizeof(c.local) || e.inet().dst().size() > sizeof(c.peer))
    return MakeError(ErrorKind::kBadImage, 0, "files.img: file id %llu: bad socket address",
                     static_cast<unsigned long long>(e.id()));
  memcpy(&c.local, e.inet().src().data(), e.inet().src().size());
  memcpy(&c.peer, e.inet().dst().data(), e.inet().dst().size());
  return c;
}

std::unique_ptr<NetLock> NewDropLock() {
  // Unique per lock, also for several dumps by one process in one second (a daemon): a table
  // may also go into the host's namespace (LockOutside), which all containers share.
  static std::atomic<int> seq{0};
  return std::make_unique<NftDropLock>(StrFormat(
      "godwit_lock_%d_%ld_%d", getpid(), static_cast<long>(time(nullptr)), seq++));
}

std::unique_ptr<NetLock> OpenNetLock(const std::string& name) {
  return std::make_unique<NftDropLock>(name);
}

Result<void> FdDumpContext::LockProcessTcp(pid_t pid) {
  if (!tcp_locked_pids.insert(pid).second) return Ok();
  ASSIGN_OR_RETURN(UniqueFd pidfd, pidfd::Open(pid));
  std::vector<TcpConn> conns;
  for (const auto& [fd, link] : links) {
    if (link.rfind("socket:", 0) != 0) continue;
    auto taken = pidfd::GetFd(pidfd.get(), fd, pid);
    if (!taken.ok()) continue;
    int s = taken->get();
    struct stat st;
    if (fstat(s, &st) < 0 || !S_ISSOCK(st.st_mode)) continue;
    int dom = 0, proto = 0;
    socklen_t l = sizeof(int);
    getsockopt(s, SOL_SOCKET, SO_DOMAIN, &dom, &l);
    l = sizeof(int);
    getsockopt(s, SOL_SOCKET, SO_PROTOCOL, &proto, &l);
    if ((dom != AF_INET && dom != AF_INET6) || proto != IPPROTO_TCP) continue;
    struct tcp_info ti {};
    l = sizeof(ti);
    if (getsockopt(s, SOL_TCP, TCP_INFO, &ti, &l) < 0) continue;
    if (ti.tcpi_state == TCP_LISTEN || ti.tcpi_state == TCP_CLOSE) continue;
    TcpConn c;
    socklen_t sl = sizeof(c.local), dl = sizeof(c.peer);
    if (getsockname(s, reinterpret_cast<sockaddr*>(&c.local), &sl) < 0 ||
        getpeername(s, reinterpret_cast<sockaddr*>(&c.peer), &dl) < 0)
      continue;
    conns.push_back(c);
  }
  if (conns.empty()) return Ok();
  if (!netlock) {
    netlock = NewDropLock();
    // Undone by Resume (a failed dump, --leave-running); after a dump that kills the tree, the
    // restore's Finalize releases it by the name in files-netlock.img.
    OnResume([lock = netlock.get()] {
      auto r = lock->Unlock();
      if (!r.ok()) LOG_WARN("network unlock: %s", r.error().to_string().c_str());
    });
  }
  ASSIGN_OR_RETURN(UniqueFd ns, netns::Open(pid));
  TRY_CTX(netlock->Lock(ns.get(), conns), "network lock of pid %d", pid);
  return Ok();
}

}  // namespace godwit::files
