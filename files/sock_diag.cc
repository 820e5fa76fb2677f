// NETLINK_SOCK_DIAG for unix sockets (peer inode, pending connections, queue lengths,
// shutdown state: nothing else tells a socket's peer), and sockets made in a process's netns.
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/sock_diag.h>
#include <linux/inet_diag.h>
#include <linux/unix_diag.h>
#include <sched.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <fcntl.h>
#include <unistd.h>

#include <cstring>
#include <functional>
#include <thread>

#include "files/kind.h"

namespace godwit::files {

Result<UnixDiagMap> DumpUnixDiag(int nl) {
  struct {
    struct nlmsghdr nlh;
    struct unix_diag_req req;
  } msg {};
  msg.nlh.nlmsg_len = sizeof(msg);
  msg.nlh.nlmsg_type = SOCK_DIAG_BY_FAMILY;
  msg.nlh.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
  msg.nlh.nlmsg_seq = 1;
  msg.req.sdiag_family = AF_UNIX;
  msg.req.udiag_states = ~0u;
  msg.req.udiag_show = UDIAG_SHOW_NAME | UDIAG_SHOW_PEER | UDIAG_SHOW_ICONS | UDIAG_SHOW_RQLEN |
                         UDIAG_SHOW_VFS;
  struct sockaddr_nl sa {};
  sa.nl_family = AF_NETLINK;
  if (sendto(nl, &msg, sizeof(msg), 0, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) < 0)
    return Errno("sock_diag: send");
  UnixDiagMap out;
  std::vector<char> buf(1 << 16);
  for (;;) {
    ssize_t n = recv(nl, buf.data(), buf.size(), 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      return Errno("sock_diag: recv");
    }
    for (auto* h = reinterpret_cast<struct nlmsghdr*>(buf.data()); NLMSG_OK(h, n); h = NLMSG_NEXT(h, n)) {
      if (h->nlmsg_type == NLMSG_DONE) return out;
      if (h->nlmsg_type == NLMSG_ERROR) {
        auto* e = reinterpret_cast<struct nlmsgerr*>(NLMSG_DATA(h));
        errno = -e->error;
        return Errno("sock_diag: unix dump");
      }
      auto* m = reinterpret_cast<struct unix_diag_msg*>(NLMSG_DATA(h));
      UnixDiag d;
      d.ino = m->udiag_ino;
      d.type = m->udiag_type;
      d.state = m->udiag_state;
      int len = h->nlmsg_len - NLMSG_LENGTH(sizeof(*m));
      for (auto* a = reinterpret_cast<struct rtattr*>(m + 1); RTA_OK(a, len); a = RTA_NEXT(a, len)) {
        char* p = static_cast<char*>(RTA_DATA(a));
        size_t plen = RTA_PAYLOAD(a);
        switch (a->rta_type) {
          case UNIX_DIAG_NAME:
            d.name.assign(p, plen);
            // A path name may carry its terminating NUL; an abstract one starts with NUL.
            if (!d.name.empty() && d.name[0] != '\0') d.name = d.name.c_str();
            break;
          case UNIX_DIAG_PEER: d.peer = *reinterpret_cast<uint32_t*>(p); break;
          case UNIX_DIAG_ICONS:
            for (size_t i = 0; i + 4 <= plen; i += 4) d.icons.push_back(*reinterpret_cast<uint32_t*>(p + i));
            break;
          case UNIX_DIAG_RQLEN: {
            auto* r = reinterpret_cast<struct unix_diag_rqlen*>(p);
            d.rqueue = r->udiag_rqueue;
            d.wqueue = r->udiag_wqueue;
            break;
          }
          case UNIX_DIAG_SHUTDOWN: d.shutdown = *reinterpret_cast<uint8_t*>(p); break;
          case UNIX_DIAG_VFS: {
            auto* v = reinterpret_cast<struct unix_diag_vfs*>(p);
            d.vfs_ino = v->udiag_vfs_ino;
            d.vfs_dev = v->udiag_vfs_dev;
            break;
          }
        }
      }
      out[d.ino] = std::move(d);
    }
  }
}

namespace {

// The sock_diag record of inet socket ino in pid's net namespace: its shutdown bits and its
// destination (sockaddr bytes, empty when it has no port).
struct InetDiag {
  int shutdown = 0;
  std::string dst;
};

// One inet_diag dump (family, protocol, states) over nl: each record to fn, whose false ends the
// walk early (the rest of the dump is drained: the socket stays usable).
Result<void> WalkInetDiag(int nl, int family, int protocol, uint32_t states,
                          const std::function<bool(const nlmsghdr*, const inet_diag_msg*)>& fn) {
  struct {
    struct nlmsghdr nlh;
    struct inet_diag_req_v2 req;
  } msg{};
  msg.nlh.nlmsg_len = sizeof(msg);
  msg.nlh.nlmsg_type = SOCK_DIAG_BY_FAMILY;
  msg.nlh.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
  msg.nlh.nlmsg_seq = 1;
  msg.req.sdiag_family = static_cast<uint8_t>(family);
  msg.req.sdiag_protocol = static_cast<uint8_t>(protocol);
  msg.req.idiag_states = states;
  struct sockaddr_nl sa {};
  sa.nl_family = AF_NETLINK;
  if (sendto(nl, &msg, sizeof(msg), 0, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) < 0)
    return Errno("sock_diag: send");
  bool more = true;
  std::vector<char> buf(1 << 16);
  for (;;) {
    ssize_t n = recv(nl, buf.data(), buf.size(), 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      return Errno("sock_diag: recv");
    }
    for (auto* h = reinterpret_cast<struct nlmsghdr*>(buf.data()); NLMSG_OK(h, n);
         h = NLMSG_NEXT(h, n)) {
      if (h->nlmsg_type == NLMSG_DONE) return Ok();
      if (h->nlmsg_type == NLMSG_ERROR) {
        errno = -reinterpret_cast<struct nlmsgerr*>(NLMSG_DATA(h))->error;
        return Errno("sock_diag: inet dump (family %d protocol %d)", family, protocol);
      }
      if (more) more = fn(h, reinterpret_cast<struct inet_diag_msg*>(NLMSG_DATA(h)));
    }
  }
}

Result<InetDiag> InetDiagOf(pid_t pid, int family, int protocol, uint64_t ino) {
  ASSIGN_OR_RETURN(UniqueFd nl, SocketInNetns(pid, AF_NETLINK, SOCK_RAW, NETLINK_SOCK_DIAG));
  bool found = false;
  InetDiag out;
  TRY(WalkInetDiag(nl.get(), family, protocol, ~0u,
                   [&](const nlmsghdr* h, const inet_diag_msg* m) {
    if (m->idiag_inode != ino) return true;
    found = true;
    if (m->id.idiag_dport != 0) {
      if (m->idiag_family == AF_INET) {
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_port = m->id.idiag_dport;
        memcpy(&a.sin_addr, m->id.idiag_dst, sizeof(a.sin_addr));
        out.dst.assign(reinterpret_cast<char*>(&a), sizeof(a));
      } else if (m->idiag_family == AF_INET6) {
        sockaddr_in6 a{};
        a.sin6_family = AF_INET6;
        a.sin6_port = m->id.idiag_dport;
        memcpy(&a.sin6_addr, m->id.idiag_dst, sizeof(a.sin6_addr));
        out.dst.assign(reinterpret_cast<char*>(&a), sizeof(a));
      }
    }
    int len = h->nlmsg_len - NLMSG_LENGTH(sizeof(*m));
    for (auto* a = reinterpret_cast<const struct rtattr*>(m + 1); RTA_OK(a, len);
         a = RTA_NEXT(a, len))
      if (a->rta_type == INET_DIAG_SHUTDOWN)
        out.shutdown = *static_cast<const uint8_t*>(RTA_DATA(a));
    return false;
  }));
  if (!found)
    return MakeError(ErrorKind::kNotFound, 0, "sock_diag: no socket inode %llu (family %d "
                     "protocol %d)", static_cast<unsigned long long>(ino), family, protocol);
  return out;
}

}  // namespace

namespace {

// An address as 16 bytes, IPv4 as v4-mapped IPv6 (a v4 client of a v6 listener: the accepted
// side is AF_INET6 with mapped addresses), and its port (network order).
bool Addr16(const std::string& sa, uint8_t out[16], uint16_t* port) {
  memset(out, 0, 16);
  if (sa.size() >= sizeof(sockaddr_in6) &&
      reinterpret_cast<const sockaddr*>(sa.data())->sa_family == AF_INET6) {
    sockaddr_in6 a;
    memcpy(&a, sa.data(), sizeof(a));
    memcpy(out, &a.sin6_addr, 16);
    *port = a.sin6_port;
    return true;
  }
  if (sa.size() >= sizeof(sockaddr_in) &&
      reinterpret_cast<const sockaddr*>(sa.data())->sa_family == AF_INET) {
    sockaddr_in a;
    memcpy(&a, sa.data(), sizeof(a));
    out[10] = out[11] = 0xff;
    memcpy(out + 12, &a.sin_addr, 4);
    *port = a.sin_port;
    return true;
  }
  return false;
}

void Diag16(int family, const __be32 addr[4], uint8_t out[16]) {
  memset(out, 0, 16);
  if (family == AF_INET6) {
    memcpy(out, addr, 16);
  } else {
    out[10] = out[11] = 0xff;
    memcpy(out + 12, addr, 4);
  }
}

// A connection's key: both ends' addresses (16 bytes each) and ports; empty for other families.
std::string ConnKey(const uint8_t local[16], uint16_t lport, const uint8_t remote[16],
                    uint16_t rport) {
  std::string k(reinterpret_cast<const char*>(local), 16);
  k.append(reinterpret_cast<const char*>(&lport), 2);
  k.append(reinterpret_cast<const char*>(remote), 16);
  k.append(reinterpret_cast<const char*>(&rport), 2);
  return k;
}

// The established TCP sockets of pid's net namespace that no process holds (inode 0: in a
// listener's accept queue) and that have nothing queued, by ConnKey (local = the socket's).
Result<std::set<std::string>> UnacceptedTcp(pid_t pid) {
  ASSIGN_OR_RETURN(UniqueFd nl, SocketInNetns(pid, AF_NETLINK, SOCK_RAW, NETLINK_SOCK_DIAG));
  std::set<std::string> out;
  for (int family : {AF_INET, AF_INET6}) {
    TRY(WalkInetDiag(nl.get(), family, IPPROTO_TCP, 1u << TCP_ESTABLISHED,
                     [&](const nlmsghdr*, const inet_diag_msg* m) {
      if (m->idiag_inode != 0 || m->idiag_rqueue != 0 || m->idiag_wqueue != 0) return true;
      uint8_t a[16], b[16];
      Diag16(m->idiag_family, m->id.idiag_src, a);
      Diag16(m->idiag_family, m->id.idiag_dst, b);
      out.insert(ConnKey(a, m->id.idiag_sport, b, m->id.idiag_dport));
      return true;
    }));
  }
  return out;
}

}  // namespace

Result<bool> FdDumpContext::PeerUnaccepted(pid_t pid, const std::string& src,
                                           const std::string& dst) {
  uint8_t s16[16], d16[16];
  uint16_t sport = 0, dport = 0;
  if (!Addr16(src, s16, &sport) || !Addr16(dst, d16, &dport)) return false;
  struct stat st;
  std::string path = StrFormat("/proc/%d/ns/net", pid);
  if (stat(path.c_str(), &st) < 0) return Errno("stat %s", path.c_str());
  auto it = unaccepted_.find(st.st_ino);
  if (it == unaccepted_.end()) {
    ASSIGN_OR_RETURN(std::set<std::string> set, UnacceptedTcp(pid));
    it = unaccepted_.emplace(st.st_ino, std::move(set)).first;
  }
  // The peer's local end is our destination.
  return it->second.count(ConnKey(d16, dport, s16, sport)) > 0;
}

Result<int> InetShutdown(pid_t pid, int family, int protocol, uint64_t ino) {
  ASSIGN_OR_RETURN(InetDiag d, InetDiagOf(pid, family, protocol, ino));
  return d.shutdown;
}

Result<std::string> InetDestination(pid_t pid, int family, int protocol, uint64_t ino) {
  ASSIGN_OR_RETURN(InetDiag d, InetDiagOf(pid, family, protocol, ino));
  return d.dst;
}

Result<UniqueFd> SocketInNetns(pid_t pid, int domain, int type, int protocol) {
  struct stat mine, theirs;
  if (stat("/proc/self/ns/net", &mine) < 0) return Errno("stat /proc/self/ns/net");
  std::string path = StrFormat("/proc/%d/ns/net", pid);
  if (stat(path.c_str(), &theirs) < 0) return Errno("stat %s", path.c_str());
  if (mine.st_ino == theirs.st_ino) {
    int s = socket(domain, type | SOCK_CLOEXEC, protocol);
    if (s < 0) return Errno("socket %d", domain);
    return UniqueFd(s);
  }
  UniqueFd ns(open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!ns) return Errno("open %s", path.c_str());
  int s = -1, err = 0;
  std::thread t([&] {
    if (setns(ns.get(), CLONE_NEWNET) < 0) {
      err = errno;
      return;
    }
    s = socket(domain, type | SOCK_CLOEXEC, protocol);
    if (s < 0) err = errno;
  });
  t.join();
  if (s < 0) {
    errno = err;
    return Errno("socket in net namespace of pid %d", pid);
  }
  return UniqueFd(s);
}

Result<const UnixDiagMap*> FdDumpContext::UnixSockets(pid_t pid) {
  struct stat st;
  std::string path = StrFormat("/proc/%d/ns/net", pid);
  if (stat(path.c_str(), &st) < 0) return Errno("stat %s", path.c_str());
  auto it = unix_diag_.find(st.st_ino);
  if (it != unix_diag_.end()) return &it->second;
  ASSIGN_OR_RETURN(UniqueFd nl, SocketInNetns(pid, AF_NETLINK, SOCK_RAW, NETLINK_SOCK_DIAG));
  ASSIGN_OR_RETURN(UnixDiagMap m, DumpUnixDiag(nl.get()));
  return &(unix_diag_[st.st_ino] = std::move(m));
}

}  // namespace godwit::files
