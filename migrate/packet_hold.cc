#include "migrate/packet_hold.h"

#include <arpa/inet.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <net/if.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <fcntl.h>
#include <unistd.h>

#include <cstring>

#include "common/fs.h"
#include "common/inet_checksum.h"
#include "common/log.h"
#include "common/netns.h"
#include "runtime/network.h"

namespace godwit::migrate {

Result<PacketHold> PacketHold::Start(const std::string& host_veth, int rcvbuf) {
  unsigned idx = if_nametoindex(host_veth.c_str());
  if (idx == 0) return Errno("packet hold: link %s", host_veth.c_str());
  // Protocol 0 here, ETH_P_ALL at bind: a socket created with a protocol is hooked at once, and
  // binding it to a device re-hooks it, which waits for an RCU grace period (10-60 ms here).
  int fd = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return Errno("packet hold: socket(AF_PACKET)");
  PacketHold h;
  h.fd_.reset(fd);
  // SO_RCVBUFFORCE needs CAP_NET_ADMIN (root has it); the plain one is capped by rmem_max.
  if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf, sizeof(rcvbuf)) < 0)
    (void)setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
  // Only frames going into the container: on the host end those are outgoing. Receiving our own
  // injected frames is impossible here (the source never injects).
  sockaddr_ll ll{};
  ll.sll_family = AF_PACKET;
  ll.sll_protocol = htons(ETH_P_ALL);
  ll.sll_ifindex = static_cast<int>(idx);
  if (bind(fd, reinterpret_cast<sockaddr*>(&ll), sizeof(ll)) < 0)
    return Errno("packet hold: bind to %s", host_veth.c_str());
  return h;
}

// A frame a local sender handed to a veth with checksum offload carries a partial TCP/UDP
// checksum (the pseudo-header's only: CHECKSUM_PARTIAL, completed by nobody on a virtual path).
// Sent again through a packet socket it is an ordinary frame, checked and dropped by the
// receiver: every held segment was lost that way and the client had to send it again.
void FixChecksums(char* frame, size_t len) {
  auto* f = reinterpret_cast<uint8_t*>(frame);
  size_t off = ETH_HLEN;
  if (len < off) return;
  uint16_t type = static_cast<uint16_t>((f[12] << 8) | f[13]);
  if (type == ETH_P_8021Q && len >= off + 4) {
    type = static_cast<uint16_t>((f[16] << 8) | f[17]);
    off += 4;
  }
  uint8_t proto;
  size_t l4, l4len;
  uint32_t sum = 0;
  if (type == ETH_P_IP) {
    if (len < off + 20) return;
    const uint8_t* ip = f + off;
    size_t ihl = (ip[0] & 0xf) * 4u, total = (size_t{ip[2]} << 8) | ip[3];
    if ((ip[0] >> 4) != 4 || ihl < 20 || total < ihl || off + total > len) return;
    if (((ip[6] << 8) | ip[7]) & 0x3fff) return;  // a fragment: the checksum spans them all
    proto = ip[9];
    l4 = off + ihl;
    l4len = total - ihl;
    sum = inet::SumWords(0, ip + 12, 8);  // source and destination
  } else if (type == ETH_P_IPV6) {
    if (len < off + 40) return;
    const uint8_t* ip = f + off;
    size_t plen = (size_t{ip[4]} << 8) | ip[5];
    if ((ip[0] >> 4) != 6 || off + 40 + plen > len) return;
    proto = ip[6];  // extension headers are left alone
    l4 = off + 40;
    l4len = plen;
    sum = inet::SumWords(0, ip + 8, 32);
  } else {
    return;
  }
  size_t at;
  if (proto == IPPROTO_TCP && l4len >= 20) {
    at = 16;
  } else if (proto == IPPROTO_UDP && l4len >= 8) {
    at = 6;
  } else {
    return;
  }
  sum += proto;
  sum += static_cast<uint32_t>(l4len & 0xffff) + static_cast<uint32_t>(l4len >> 16);
  uint8_t* seg = f + l4;
  seg[at] = seg[at + 1] = 0;
  uint16_t c = inet::Fold(inet::SumWords(sum, seg, l4len));
  if (proto == IPPROTO_UDP && c == 0) c = 0xffff;
  seg[at] = static_cast<uint8_t>(c >> 8);
  seg[at + 1] = static_cast<uint8_t>(c & 0xff);
}

Result<int> PacketHold::Drain(std::string* out) {
  int n = 0;
  char buf[65536 + 64];
  for (;;) {
    sockaddr_ll from{};
    socklen_t fl = sizeof(from);
    ssize_t r = recvfrom(fd_.get(), buf, sizeof(buf), MSG_TRUNC,
                         reinterpret_cast<sockaddr*>(&from), &fl);
    if (r < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) break;
      return Errno("packet hold: recv");
    }
    if (from.sll_pkttype != PACKET_OUTGOING) continue;  // the container's own replies
    if (static_cast<size_t>(r) > sizeof(buf)) {
      dropped_++;  // larger than any frame a veth carries without offloads: skip
      continue;
    }
    uint32_t len = static_cast<uint32_t>(r);
    FixChecksums(buf, len);
    out->append(reinterpret_cast<const char*>(&len), 4);
    out->append(buf, len);
    n++;
  }
  return n;
}

namespace {

std::string SilenceTable() { return StrFormat("godwit_silence_%d", getpid()); }

Result<UniqueFd> NetnsOf(pid_t pid) {
  return fs::Open(StrFormat("/proc/%d/ns/net", pid), O_RDONLY | O_CLOEXEC);
}

std::string DeafTable() { return StrFormat("godwit_deaf_%d", getpid()); }

// Deletes the inet and arp tables named t in pid's network namespace (what Silence and Deafen
// made); `what` names the step in the error.
Result<void> DeleteTables(pid_t pid, const std::string& t, const char* what) {
  ASSIGN_OR_RETURN(UniqueFd ns, NetnsOf(pid));
  TRY_CTX(netns::NftRunIn(ns.get(), StrFormat("delete table inet %s\ndelete table arp %s\n",
                                              t.c_str(), t.c_str())),
          "%s the network of pid %d", what, pid);
  return Ok();
}

}  // namespace

Result<void> Silence(pid_t pid) {
  ASSIGN_OR_RETURN(UniqueFd ns, NetnsOf(pid));
  std::string t = SilenceTable();
  std::string script = StrFormat(
      "add table inet %s\n"
      "add chain inet %s out { type filter hook output priority -400; policy drop; }\n"
      "add table arp %s\n"
      "add chain arp %s out { type filter hook output priority -400; policy drop; }\n",
      t.c_str(), t.c_str(), t.c_str(), t.c_str());
  TRY_CTX(netns::NftRunIn(ns.get(), script), "silence the network of pid %d", pid);
  return Ok();
}

Result<void> Unsilence(pid_t pid) { return DeleteTables(pid, SilenceTable(), "unsilence"); }

Result<void> Deafen(pid_t pid) {
  ASSIGN_OR_RETURN(UniqueFd ns, NetnsOf(pid));
  std::string t = DeafTable();
  std::string script = StrFormat(
      "add table inet %s\n"
      "add chain inet %s in { type filter hook prerouting priority -400; policy accept; }\n"
      "add rule inet %s in iifname != \"lo\" drop\n"
      "add table arp %s\n"
      "add chain arp %s in { type filter hook input priority -400; policy drop; }\n",
      t.c_str(), t.c_str(), t.c_str(), t.c_str(), t.c_str());
  TRY_CTX(netns::NftRunIn(ns.get(), script), "deafen the network of pid %d", pid);
  return Ok();
}

Result<void> Undeafen(pid_t pid) { return DeleteTables(pid, DeafTable(), "undeafen"); }

Result<void> Unplug(const std::string& host_veth) {
  if (host_veth.empty()) return Ok();
  TRY_CTX(runtime::TeardownNetwork(host_veth), "take %s off the segment", host_veth.c_str());
  return Ok();
}

Result<FrameInjector> FrameInjector::Open(const std::string& host_veth) {
  unsigned idx = if_nametoindex(host_veth.c_str());
  if (idx == 0) return Errno("inject: link %s", host_veth.c_str());
  FrameInjector in;
  in.fd_.reset(socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, 0));  // send only: no protocol hook
  if (!in.fd_) return Errno("inject: socket(AF_PACKET)");
  in.ifindex_ = static_cast<int>(idx);
  in.veth_ = host_veth;
  return in;
}

Result<int> FrameInjector::Send(const std::string& frames) {
  sockaddr_ll ll{};
  ll.sll_family = AF_PACKET;
  ll.sll_ifindex = ifindex_;
  ll.sll_halen = ETH_ALEN;
  int sent = 0, failed = 0, first_errno = 0;
  size_t off = 0;
  while (off + 4 <= frames.size()) {
    uint32_t len;
    memcpy(&len, frames.data() + off, 4);
    off += 4;
    if (len < ETH_HLEN || len > frames.size() - off)
      return MakeError(ErrorKind::kPeer, 0, "inject: bad held frame of %u bytes at %zu", len, off);
    const char* f = frames.data() + off;
    memcpy(ll.sll_addr, f, ETH_ALEN);  // the frame's own destination MAC
    ll.sll_protocol = *reinterpret_cast<const uint16_t*>(f + 12);  // its EtherType, as sent
    if (sendto(fd_.get(), f, len, 0, reinterpret_cast<sockaddr*>(&ll), sizeof(ll)) ==
        static_cast<ssize_t>(len)) {
      sent++;
    } else {
      if (failed++ == 0) first_errno = errno;
    }
    off += len;
  }
  if (failed > 0)
    LOG_WARN("inject into %s: %d of %d frames not sent (first: %s)", veth_.c_str(), failed,
             sent + failed, strerror(first_errno));
  return sent;
}

Result<int> InjectFrames(const std::string& host_veth, const std::string& frames) {
  if (frames.empty()) return 0;
  ASSIGN_OR_RETURN(FrameInjector in, FrameInjector::Open(host_veth));
  return in.Send(frames);
}

}  // namespace godwit::migrate
