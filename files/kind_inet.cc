// TCP, UDP and UDP-Lite over IPv4 and IPv6; ping sockets (SOCK_DGRAM, IPPROTO_ICMP/ICMPV6) and
// raw sockets (SOCK_RAW, any protocol) by family, type, protocol, binding (a raw socket's
// "port" is its protocol, a ping socket's its echo id), peer and options (IP_HDRINCL,
// ICMP_FILTER, IPV6_CHECKSUM); their receive queues are dropped (logged): no socket can send a
// datagram back into them. UDP-Lite's queue is sent again through a UDP-Lite socket, with its
// checksum coverage options.
//
// TCP established (with DumpOptions::tcp_established): the connections of a process are locked
// in nftables first (netlock.cc: nothing moves, the peer never sees a RST), then each socket is
// put in repair mode (TCP_REPAIR) through our pidfd_getfd copy: sequence numbers
// (TCP_QUEUE_SEQ per queue), both queues (peeked in repair mode; SIOCOUTQNSD tells the unsent
// tail), MSS, window scale, SACK, timestamps (TCP_INFO/TCP_MAXSEG/TCP_TIMESTAMP: on this kernel
// getsockopt(TCP_REPAIR_OPTIONS) is ENOPROTOOPT), and the window (TCP_REPAIR_WINDOW). The socket
// stays in repair mode, so killing the tree sends nothing; FdDumper::Resume turns repair off.
//
// Restore, in the working order measured on this kernel: repair on -> sequence numbers ->
// bind/connect (no SYN in repair mode) -> options, timestamp -> SO_*BUFFORCE -> receive queue
// -> sent part of the send queue (in repair mode) -> window; and in Finalize (the tree is about
// to resume): network unlock, repair off (sends a window probe), the unsent part, FINs of
// half-closed states. Half-closed: a FIN we sent (FIN_WAIT*, CLOSING, LAST_ACK) is sent again
// after repair off; a FIN we received (CLOSE_WAIT, LAST_ACK, CLOSING) is made up as the peer's
// and given to the socket (InjectFromPeer: a raw segment, marked to pass the network lock), in
// the order that leads to the dumped state (CLOSING: our FIN first); TCP_REPAIR itself only
// makes ESTABLISHED sockets. A closed socket that had a connection (CLOSE, its peer still in
// SO_PEERNAME) is connected again in repair mode and closed by a made-up FIN and reset (it had
// both FINs) or a reset (SO_ERROR said reset), its unread data queued first.
#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/sockios.h>
#include <netinet/in.h>
#include <netinet/ip.h>
#include <netinet/ip6.h>
#include <netinet/tcp.h>
#include <netinet/udp.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <map>
#include <optional>

#include "common/fs.h"
#include "common/inet_checksum.h"
#include "common/log.h"
#include "common/netns.h"
#include "files/kind.h"
#include "files/netlock.h"

namespace godwit::files {

namespace {

// Not in the UAPI headers this builds against without conflicts: include/net/udplite.h,
// linux/icmp.h and linux/icmpv6.h.
constexpr int UDPLITE_SEND_CSCOV = 10;
constexpr int UDPLITE_RECV_CSCOV = 11;
constexpr int kIcmpFilter = 1;    // SOL_RAW ICMP_FILTER
constexpr int kIcmpv6Filter = 1;  // SOL_ICMPV6 ICMPV6_FILTER

bool SentFin(int st) {
  return st == TCP_FIN_WAIT1 || st == TCP_FIN_WAIT2 || st == TCP_CLOSING || st == TCP_LAST_ACK;
}
bool GotFin(int st) { return st == TCP_CLOSE_WAIT || st == TCP_CLOSING || st == TCP_LAST_ACK; }
bool Connected(int st) { return st == TCP_ESTABLISHED || SentFin(st) || GotFin(st); }

std::string AddrStr(const std::string& sa) {
  char buf[INET6_ADDRSTRLEN + 16] = "?";
  if (sa.size() >= sizeof(sockaddr_in) && reinterpret_cast<const sockaddr*>(sa.data())->sa_family == AF_INET) {
    auto* s = reinterpret_cast<const sockaddr_in*>(sa.data());
    char ip[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &s->sin_addr, ip, sizeof(ip));
    snprintf(buf, sizeof(buf), "%s:%d", ip, ntohs(s->sin_port));
  } else if (sa.size() >= sizeof(sockaddr_in6)) {
    auto* s = reinterpret_cast<const sockaddr_in6*>(sa.data());
    char ip[INET6_ADDRSTRLEN];
    inet_ntop(AF_INET6, &s->sin6_addr, ip, sizeof(ip));
    snprintf(buf, sizeof(buf), "[%s]:%d", ip, ntohs(s->sin6_port));
  }
  return buf;
}

int GetInt(int fd, int level, int opt) {
  int v = 0;
  socklen_t len = sizeof(v);
  getsockopt(fd, level, opt, &v, &len);
  return v;
}

int TcpState(int fd) {
  struct tcp_info ti {};
  socklen_t len = sizeof(ti);
  return getsockopt(fd, SOL_TCP, TCP_INFO, &ti, &len) < 0 ? -1 : ti.tcpi_state;
}

Result<void> SetInt(int fd, int level, int opt, int v, const char* what) {
  if (setsockopt(fd, level, opt, &v, sizeof(v)) < 0) return Errno("setsockopt %s=%d", what, v);
  return Ok();
}

// The peer's window as its segments carry it (scaled).
uint16_t PeerWindow(const img::TcpRepair& r) {
  uint32_t w = r.wscale_ok() ? r.snd_wnd() >> r.snd_wscale() : r.snd_wnd();
  return static_cast<uint16_t>(std::min<uint32_t>(w, 0xffff));
}

// A TCP segment from the connection's peer to the socket fd (sk's addresses), made here: a raw
// IPPROTO_RAW socket of fd's network namespace writes the IP header itself (the peer's address
// as source), with kNetLockPassMark so that the restore's network lock lets it through. This is
// how a restored socket gets a FIN or a reset it had received: TCP_REPAIR makes ESTABLISHED
// sockets only, and only the peer's segments move one on from there. No TCP options: Linux takes
// a segment without a timestamp on a connection that has them (no PAWS check without one).
Result<void> InjectFromPeer(int fd, const img::InetSocket& sk, uint32_t seq, uint32_t ack,
                            uint8_t flags, uint16_t window) {
  TcpConn conn;
  memcpy(&conn.local, sk.src().data(), std::min(sk.src().size(), sizeof(conn.local)));
  memcpy(&conn.peer, sk.dst().data(), std::min(sk.dst().size(), sizeof(conn.peer)));
  // A v4 connection of a v6 socket travels as IPv4.
  const TcpConn t = AsTravels(conn);
  sockaddr_storage local = t.local, peer = t.peer;
  bool v4 = local.ss_family == AF_INET;
  in_addr l4{}, p4{};
  in6_addr l6{}, p6{};
  uint16_t lport, pport;
  if (v4) {
    l4 = reinterpret_cast<sockaddr_in*>(&local)->sin_addr;
    p4 = reinterpret_cast<sockaddr_in*>(&peer)->sin_addr;
    lport = reinterpret_cast<sockaddr_in*>(&local)->sin_port;
    pport = reinterpret_cast<sockaddr_in*>(&peer)->sin_port;
  } else {
    auto* l = reinterpret_cast<sockaddr_in6*>(&local);
    auto* r = reinterpret_cast<sockaddr_in6*>(&peer);
    lport = l->sin6_port;
    pport = r->sin6_port;
    l6 = l->sin6_addr;
    p6 = r->sin6_addr;
  }
  UniqueFd ns(ioctl(fd, SIOCGSKNS));
  std::optional<netns::ScopedNetns> in;
  if (ns) {
    ASSIGN_OR_RETURN(netns::ScopedNetns s, netns::ScopedNetns::Enter(ns.get()));
    in.emplace(std::move(s));
  }
  UniqueFd raw(socket(v4 ? AF_INET : AF_INET6, SOCK_RAW | SOCK_CLOEXEC, IPPROTO_RAW));
  if (!raw) return Errno("raw socket to give %s its peer's segment", AddrStr(sk.src()).c_str());
  int mark = static_cast<int>(kNetLockPassMark);
  if (setsockopt(raw.get(), SOL_SOCKET, SO_MARK, &mark, sizeof(mark)) < 0)
    return Errno("SO_MARK on the raw socket");
  tcphdr th{};
  th.source = pport;
  th.dest = lport;
  th.seq = htonl(seq);
  th.ack_seq = htonl(ack);
  th.doff = sizeof(th) / 4;
  th.fin = (flags & TH_FIN) != 0;
  th.rst = (flags & TH_RST) != 0;
  th.ack = (flags & TH_ACK) != 0;
  th.window = htons(window);
  // The checksum covers the pseudo-header: both addresses, the protocol and the TCP length.
  uint32_t sum = v4 ? inet::SumWords(inet::SumWords(0, &p4, 4), &l4, 4)
                    : inet::SumWords(inet::SumWords(0, &p6, 16), &l6, 16);
  sum += IPPROTO_TCP + sizeof(th);
  th.check = htons(inet::Fold(inet::SumWords(sum, &th, sizeof(th))));
  char pkt[sizeof(ip6_hdr) + sizeof(tcphdr)];
  size_t hlen;
  sockaddr_storage to{};
  socklen_t tl;
  if (v4) {
    iphdr ip{};
    ip.version = 4;
    ip.ihl = sizeof(ip) / 4;
    ip.tot_len = htons(sizeof(ip) + sizeof(th));
    ip.frag_off = htons(IP_DF);
    ip.ttl = 64;
    ip.protocol = IPPROTO_TCP;
    ip.saddr = p4.s_addr;
    ip.daddr = l4.s_addr;
    hlen = sizeof(ip);
    memcpy(pkt, &ip, hlen);
    auto* a = reinterpret_cast<sockaddr_in*>(&to);
    a->sin_family = AF_INET;
    a->sin_addr = l4;
    tl = sizeof(*a);
  } else {
    ip6_hdr ip{};
    ip.ip6_flow = htonl(6u << 28);
    ip.ip6_plen = htons(sizeof(th));
    ip.ip6_nxt = IPPROTO_TCP;
    ip.ip6_hlim = 64;
    ip.ip6_src = p6;
    ip.ip6_dst = l6;
    hlen = sizeof(ip);
    memcpy(pkt, &ip, hlen);
    auto* a = reinterpret_cast<sockaddr_in6*>(&to);
    a->sin6_family = AF_INET6;
    a->sin6_addr = l6;
    tl = sizeof(*a);
  }
  memcpy(pkt + hlen, &th, sizeof(th));
  const size_t len = hlen + sizeof(th);
  if (sendto(raw.get(), pkt, len, 0, reinterpret_cast<sockaddr*>(&to), tl) !=
      static_cast<ssize_t>(len))
    return Errno("send %s the peer's segment", AddrStr(sk.src()).c_str());
  if (in) TRY(in->Leave());
  return Ok();
}

// Reads a TCP queue in repair mode without consuming it.
Result<std::string> PeekTcpQueue(int fd, int queue, size_t len) {
  TRY(SetInt(fd, SOL_TCP, TCP_REPAIR_QUEUE, queue, "TCP_REPAIR_QUEUE"));
  std::string out(len, '\0');
  if (len == 0) return out;
  ssize_t n = recv(fd, out.data(), len, MSG_PEEK | MSG_DONTWAIT);
  if (n < 0) return Errno("peek TCP %s queue (%zu bytes)", queue == TCP_SEND_QUEUE ? "send" : "receive", len);
  out.resize(n);
  return out;
}

uint32_t QueueSeq(int fd, int queue) {
  setsockopt(fd, SOL_TCP, TCP_REPAIR_QUEUE, &queue, sizeof(queue));
  uint32_t seq = 0;
  socklen_t len = sizeof(seq);
  getsockopt(fd, SOL_TCP, TCP_QUEUE_SEQ, &seq, &len);
  return seq;
}

Result<void> DumpTcpEstablished(FdDumpContext& ctx, const Probe& p, img::InetSocket* sk,
                                const struct tcp_info& ti) {
  int fd = p.local;
  TRY(ctx.LockProcessTcp(p.pid));
  // Repair on and off again leaves sk_reuse at "no reuse": a resumed socket gets its
  // SO_REUSEADDR back (read before repair forces the reuse).
  int reuse = 0;
  socklen_t rl = sizeof(reuse);
  getsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &reuse, &rl);
  TRY_CTX(SetInt(fd, SOL_TCP, TCP_REPAIR, TCP_REPAIR_ON, "TCP_REPAIR"),
          "%s -> %s", AddrStr(sk->src()).c_str(), AddrStr(sk->dst()).c_str());
  int keep = ctx.Keep(fd);
  ctx.repaired_tcp.push_back({keep, reuse});
  ctx.OnResume([keep, reuse] {
    int off = TCP_REPAIR_OFF;
    setsockopt(keep, SOL_TCP, TCP_REPAIR, &off, sizeof(off));
    if (reuse) setsockopt(keep, SOL_SOCKET, SO_REUSEADDR, &reuse, sizeof(reuse));
  });
  img::TcpRepair* r = sk->mutable_repair();
  int outq = 0, unsent = 0, inq = 0;
  ioctl(fd, SIOCOUTQ, &outq);
  ioctl(fd, SIOCOUTQNSD, &unsent);
  ioctl(fd, SIOCINQ, &inq);
  uint32_t snd = QueueSeq(fd, TCP_SEND_QUEUE);
  uint32_t rcv = QueueSeq(fd, TCP_RECV_QUEUE);
  int st = sk->state();
  // The queues' FINs take a sequence number but no byte.
  if (SentFin(st) && outq > 0) outq--;
  // SIOCOUTQNSD counts from snd_nxt to write_seq: a FIN not sent yet (a closed window) is its
  // last unit, not a byte of data. Counting it as one made the restored socket's sent part a
  // byte short of what the peer had acked: the peer's acks then lay beyond the restored snd_nxt
  // and were dropped, forever when the window was closed (SocketTcpClosing hung 1 run in 5).
  if (SentFin(st) && unsent > 0) unsent--;
  ASSIGN_OR_RETURN(std::string sendq, PeekTcpQueue(fd, TCP_SEND_QUEUE, outq));
  ASSIGN_OR_RETURN(std::string recvq, PeekTcpQueue(fd, TCP_RECV_QUEUE, inq));
  if (static_cast<int>(sendq.size()) != outq || static_cast<int>(recvq.size()) != inq)
    return MakeError(ErrorKind::kGeneric, 0, "TCP queues changed while locked (%zu/%d, %zu/%d)",
                     sendq.size(), outq, recvq.size(), inq);
  r->set_snd_seq(snd - (SentFin(st) ? 1 : 0));
  r->set_rcv_seq(rcv - (GotFin(st) ? 1 : 0));
  r->set_unsent(unsent);
  ASSIGN_OR_RETURN(*r->mutable_send_queue(), ctx.Blob(sendq.data(), sendq.size()));
  ASSIGN_OR_RETURN(*r->mutable_recv_queue(), ctx.Blob(recvq.data(), recvq.size()));
  r->set_mss(GetInt(fd, SOL_TCP, TCP_MAXSEG));
  r->set_sack(ti.tcpi_options & TCPI_OPT_SACK);
  r->set_timestamps(ti.tcpi_options & TCPI_OPT_TIMESTAMPS);
  r->set_wscale_ok(ti.tcpi_options & TCPI_OPT_WSCALE);
  r->set_snd_wscale(ti.tcpi_snd_wscale);
  r->set_rcv_wscale(ti.tcpi_rcv_wscale);
  r->set_timestamp(GetInt(fd, SOL_TCP, TCP_TIMESTAMP));
  struct tcp_repair_window w {};
  socklen_t wl = sizeof(w);
  if (getsockopt(fd, SOL_TCP, TCP_REPAIR_WINDOW, &w, &wl) < 0) return Errno("TCP_REPAIR_WINDOW");
  r->set_snd_wl1(w.snd_wl1);
  r->set_snd_wnd(w.snd_wnd);
  r->set_max_window(w.max_window);
  r->set_rcv_wnd(w.rcv_wnd);
  r->set_rcv_wup(w.rcv_wup);
  // Its peer not accepted yet (InetSocket.peer_unaccepted): nothing sent either way, so a new
  // handshake from the same address to the restored listener is the same connection.
  if (st == TCP_ESTABLISHED && outq == 0 && inq == 0) {
    auto un = ctx.PeerUnaccepted(p.pid, sk->src(), sk->dst());
    if (un.ok() && *un) {
      sk->set_peer_unaccepted(true);
      LOG_INFO("pid %d fd %d: TCP %s -> %s: its peer is not accepted yet", p.pid, p.fd,
               AddrStr(sk->src()).c_str(), AddrStr(sk->dst()).c_str());
    }
  }
  return Ok();
}

// A connect in progress (SYN_SENT): where to, and the sequence number of its SYN. Its
// destination is known to sock_diag only (getpeername: ENOTCONN). The ISN is one below the
// socket's write_seq, read in repair mode, switched off again at once (outside ESTABLISHED that
// sends nothing); the SYN retransmissions go on meanwhile. No lock: a SYN-ACK that reaches the
// killed socket is answered with a reset, and the restored socket's SYN starts the handshake
// again with the same ISN.
Result<void> DumpTcpSynSent(const Probe& p, img::InetSocket* sk) {
  int fd = p.local;
  ASSIGN_OR_RETURN(std::string dst, InetDestination(p.pid, sk->family(), IPPROTO_TCP, p.st.st_ino));
  if (dst.empty())
    return MakeError(ErrorKind::kGeneric, 0, "TCP socket %s in SYN_SENT: sock_diag has no "
                     "destination", AddrStr(sk->src()).c_str());
  sk->set_dst(dst);
  int reuse = 0;
  socklen_t rl = sizeof(reuse);
  getsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &reuse, &rl);
  TRY_CTX(SetInt(fd, SOL_TCP, TCP_REPAIR, TCP_REPAIR_ON, "TCP_REPAIR"),
          "TCP socket %s -> %s in SYN_SENT: read its ISN", AddrStr(sk->src()).c_str(),
          AddrStr(dst).c_str());
  uint32_t write_seq = QueueSeq(fd, TCP_SEND_QUEUE);
  int off = TCP_REPAIR_OFF;
  setsockopt(fd, SOL_TCP, TCP_REPAIR, &off, sizeof(off));
  // Repair off leaves sk_reuse at "no reuse": give SO_REUSEADDR back.
  if (reuse) setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &reuse, sizeof(reuse));
  sk->set_syn_isn(write_seq - 1);  // the SYN takes one sequence number
  return Ok();
}

// A closed socket that had a connection (socket-tcp-closed, socket-tcp-reseted): its peer from
// SO_PEERNAME (getpeername says ENOTCONN once closed), how it ended from SO_ERROR (a reset
// leaves ECONNRESET or EPIPE; reading it clears it, as a read by the process would), and in
// repair mode (switched off again at once: outside ESTABLISHED that sends nothing) its sequence
// numbers and what it had not read. Nothing to lock: the connection is over.
Result<void> DumpTcpClosed(FdDumpContext& ctx, const Probe& p, img::InetSocket* sk,
                           const struct tcp_info& ti) {
  int fd = p.local;
  struct sockaddr_storage ss {};
  // SO_PEERNAME wants the exact size of the family's address (EINVAL for more).
  socklen_t len = sk->family() == AF_INET ? sizeof(sockaddr_in) : sizeof(sockaddr_in6);
  if (getsockopt(fd, SOL_SOCKET, SO_PEERNAME, &ss, &len) < 0 || len < sizeof(sockaddr_in) ||
      reinterpret_cast<sockaddr_in*>(&ss)->sin_port == 0)
    return Ok();  // never connected: options and binding only
  sk->set_dst(std::string(reinterpret_cast<char*>(&ss), len));
  int err = GetInt(fd, SOL_SOCKET, SO_ERROR);
  sk->set_closed(err ? 2 : 1);
  int reuse = GetInt(fd, SOL_SOCKET, SO_REUSEADDR);
  TRY_CTX(SetInt(fd, SOL_TCP, TCP_REPAIR, TCP_REPAIR_ON, "TCP_REPAIR"),
          "closed TCP socket %s (was %s)", AddrStr(sk->src()).c_str(), AddrStr(sk->dst()).c_str());
  img::TcpRepair* r = sk->mutable_repair();
  int inq = 0;
  ioctl(fd, SIOCINQ, &inq);
  uint32_t snd = QueueSeq(fd, TCP_SEND_QUEUE);
  uint32_t rcv = QueueSeq(fd, TCP_RECV_QUEUE);
  auto recvq = PeekTcpQueue(fd, TCP_RECV_QUEUE, inq);
  int off = TCP_REPAIR_OFF;
  setsockopt(fd, SOL_TCP, TCP_REPAIR, &off, sizeof(off));
  if (reuse) setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &reuse, sizeof(reuse));
  if (!recvq.ok()) return std::move(recvq).error();
  // After FINs both ways both sequences count a FIN; the restore gives the peer's again.
  r->set_snd_seq(snd - (err ? 0 : 1));
  r->set_rcv_seq(rcv - (err ? 0 : 1));
  ASSIGN_OR_RETURN(*r->mutable_send_queue(), ctx.Blob("", 0));
  ASSIGN_OR_RETURN(*r->mutable_recv_queue(), ctx.Blob(recvq->data(), recvq->size()));
  r->set_mss(GetInt(fd, SOL_TCP, TCP_MAXSEG));
  r->set_sack(ti.tcpi_options & TCPI_OPT_SACK);
  r->set_timestamps(ti.tcpi_options & TCPI_OPT_TIMESTAMPS);
  r->set_wscale_ok(ti.tcpi_options & TCPI_OPT_WSCALE);
  r->set_snd_wscale(ti.tcpi_snd_wscale);
  r->set_rcv_wscale(ti.tcpi_rcv_wscale);
  r->set_snd_wnd(65535);
  r->set_max_window(65535);
  r->set_rcv_wnd(65535);
  r->set_snd_wl1(r->rcv_seq());
  r->set_rcv_wup(r->rcv_seq());
  return Ok();
}

// The options only raw and ping sockets have.
Result<void> DumpRawOpts(int fd, img::InetSocket* sk) {
  bool v6 = sk->family() == AF_INET6;
  if (sk->type() != SOCK_RAW) return Ok();
  if (!v6) sk->set_hdrincl(GetInt(fd, SOL_IP, IP_HDRINCL));
  if ((!v6 && sk->protocol() == IPPROTO_ICMP) || (v6 && sk->protocol() == IPPROTO_ICMPV6)) {
    char f[32] = {};  // struct icmp_filter (4 bytes) or icmp6_filter (32)
    socklen_t len = v6 ? 32 : 4;
    if (getsockopt(fd, v6 ? SOL_ICMPV6 : SOL_RAW, v6 ? kIcmpv6Filter : kIcmpFilter, f, &len) == 0)
      sk->set_icmp_filter(std::string(f, len));
  }
  if (v6 && sk->protocol() != IPPROTO_ICMPV6) {
    int off = -1;
    socklen_t len = sizeof(off);
    if (getsockopt(fd, SOL_IPV6, IPV6_CHECKSUM, &off, &len) == 0) sk->set_v6_checksum(off + 1);
  }
  return Ok();
}

// Integer options kept when they differ from a fresh socket's (InetSocket.extra_opts). Those
// with fields of their own (TOS, TTL, FREEBIND, TRANSPARENT, HDRINCL, NODELAY, keepalive
// parameters) are not here; neither are those the repair or the bind set (TCP_MAXSEG,
// TCP_WINDOW_CLAMP, IP_BIND_ADDRESS_NO_PORT is: it must be set before the bind, and is).
struct IntOpt {
  int level, opt;
};
std::vector<IntOpt> ExtraOptList(int family, int type, int protocol) {
  std::vector<IntOpt> l;
  // Multicast, fragment-size and raw-only options: datagram and raw sockets only (a stream
  // socket refuses the multicast ones, EINVAL).
  const bool dgram = type != SOCK_STREAM;
  if (family == AF_INET) {
    for (int o : {IP_PKTINFO, IP_RECVTTL, IP_RECVTOS, IP_RECVOPTS, IP_RETOPTS, IP_RECVERR,
                  IP_MTU_DISCOVER, IP_RECVORIGDSTADDR, IP_BIND_ADDRESS_NO_PORT, IP_MINTTL,
                  IP_PASSSEC})
      l.push_back({SOL_IP, o});
    if (dgram)
      for (int o : {IP_MULTICAST_TTL, IP_MULTICAST_LOOP, IP_MULTICAST_ALL, IP_NODEFRAG,
                    IP_CHECKSUM, IP_RECVFRAGSIZE})
        l.push_back({SOL_IP, o});
  } else {
    for (int o : {IPV6_RECVPKTINFO, IPV6_RECVHOPLIMIT, IPV6_RECVTCLASS, IPV6_RECVERR,
                  IPV6_MTU_DISCOVER, IPV6_RECVORIGDSTADDR, IPV6_RECVPATHMTU, IPV6_DONTFRAG,
                  IPV6_AUTOFLOWLABEL, IPV6_MINHOPCOUNT, IPV6_RECVRTHDR, IPV6_RECVHOPOPTS,
                  IPV6_RECVDSTOPTS})
      l.push_back({SOL_IPV6, o});
    if (dgram)
      for (int o : {IPV6_MULTICAST_HOPS, IPV6_MULTICAST_LOOP, IPV6_MULTICAST_ALL,
                    IPV6_RECVFRAGSIZE})
        l.push_back({SOL_IPV6, o});
  }
  if (type == SOCK_STREAM) {
    for (int o : {TCP_CORK, TCP_USER_TIMEOUT, TCP_SYNCNT, TCP_LINGER2, TCP_DEFER_ACCEPT,
                  TCP_NOTSENT_LOWAT, TCP_THIN_LINEAR_TIMEOUTS, TCP_FASTOPEN,
                  TCP_FASTOPEN_CONNECT, TCP_QUICKACK})
      l.push_back({SOL_TCP, o});
  } else if (type == SOCK_DGRAM && protocol == IPPROTO_UDP) {
    for (int o : {UDP_CORK, UDP_SEGMENT, UDP_GRO, UDP_NO_CHECK6_TX, UDP_NO_CHECK6_RX})
      l.push_back({SOL_UDP, o});
  }
  return l;
}

void DumpExtraOpts(int fd, img::InetSocket* sk) {
  UniqueFd fresh(socket(sk->family(), sk->type() | SOCK_CLOEXEC, sk->protocol()));
  for (const IntOpt& o : ExtraOptList(sk->family(), sk->type(), sk->protocol())) {
    int v = 0, f = 0;
    socklen_t vl = sizeof(v), fl = sizeof(f);
    if (getsockopt(fd, o.level, o.opt, &v, &vl) < 0 || vl != sizeof(v)) continue;
    if (fresh && getsockopt(fresh.get(), o.level, o.opt, &f, &fl) == 0 && f == v) continue;
    // Only what a socket takes back: tried on the fresh one (a value the kernel reports but
    // refuses, or an option of another state, would fail the restore for nothing).
    if (fresh && setsockopt(fresh.get(), o.level, o.opt, &v, sizeof(v)) < 0) continue;
    img::IntSockOpt* x = sk->add_extra_opts();
    x->set_level(o.level);
    x->set_opt(o.opt);
    x->set_value(v);
  }
}

// TCP_QUICKACK last: other settings may leave the quick-ack (pingpong) mode again.
Result<void> RestoreExtraOpts(int fd, const img::InetSocket& sk) {
  for (int pass = 0; pass < 2; ++pass)
    for (const auto& o : sk.extra_opts()) {
      bool quickack = o.level() == SOL_TCP && o.opt() == TCP_QUICKACK;
      if (quickack != (pass == 1)) continue;
      int v = o.value();
      if (setsockopt(fd, o.level(), o.opt(), &v, sizeof(v)) < 0)
        return Errno("setsockopt level %d option %d = %d on %s", o.level(), o.opt(), v,
                     AddrStr(sk.src()).c_str());
    }
  return Ok();
}

}  // namespace

Result<void> DumpInet(FdDumpContext& ctx, const Probe& p, img::FileEntry& e) {
  img::InetSocket* sk = e.mutable_inet();
  int fd = p.local;
  sk->set_ino(p.st.st_ino);
  sk->set_family(GetInt(fd, SOL_SOCKET, SO_DOMAIN));
  sk->set_type(GetInt(fd, SOL_SOCKET, SO_TYPE));
  sk->set_protocol(GetInt(fd, SOL_SOCKET, SO_PROTOCOL));
  struct sockaddr_storage ss {};
  socklen_t len = sizeof(ss);
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) == 0) sk->set_src(std::string(reinterpret_cast<char*>(&ss), len));
  len = sizeof(ss);
  if (getpeername(fd, reinterpret_cast<sockaddr*>(&ss), &len) == 0) sk->set_dst(std::string(reinterpret_cast<char*>(&ss), len));
  auto port = [](const std::string& sa) -> int {
    if (sa.size() < sizeof(sockaddr_in)) return 0;
    return ntohs(reinterpret_cast<const sockaddr_in*>(sa.data())->sin_port);  // same offset in v6
  };
  sk->set_bound(port(sk->src()) != 0);
  DumpSockOpts(fd, sk->mutable_opts());
  DumpExtraOpts(fd, sk);
  bool v6 = sk->family() == AF_INET6;
  sk->set_tos(GetInt(fd, v6 ? SOL_IPV6 : SOL_IP, v6 ? IPV6_TCLASS : IP_TOS));
  sk->set_ttl(GetInt(fd, v6 ? SOL_IPV6 : SOL_IP, v6 ? IPV6_UNICAST_HOPS : IP_TTL));
  if (v6) sk->set_v6only(GetInt(fd, SOL_IPV6, IPV6_V6ONLY));
  sk->set_freebind(GetInt(fd, v6 ? SOL_IPV6 : SOL_IP, v6 ? IPV6_FREEBIND : IP_FREEBIND) != 0);
  sk->set_transparent(GetInt(fd, v6 ? SOL_IPV6 : SOL_IP, v6 ? IPV6_TRANSPARENT : IP_TRANSPARENT) !=
                      0);
  if (sk->type() == SOCK_RAW || sk->protocol() == IPPROTO_ICMP ||
      sk->protocol() == IPPROTO_ICMPV6) {
    TRY(DumpRawOpts(fd, sk));
    int queued = 0;
    if (ioctl(fd, SIOCINQ, &queued) == 0 && queued > 0)
      LOG_WARN("pid %d fd %d: %s socket %s: %d queued bytes are not restored", p.pid, p.fd,
               sk->type() == SOCK_RAW ? "raw" : "ping", AddrStr(sk->src()).c_str(), queued);
    sk->set_state(sk->dst().empty() ? TCP_CLOSE : TCP_ESTABLISHED);
    return Ok();
  }
  if (sk->protocol() == IPPROTO_UDPLITE) {
    sk->set_udplite_send_cscov(GetInt(fd, IPPROTO_UDPLITE, UDPLITE_SEND_CSCOV));
    sk->set_udplite_recv_cscov(GetInt(fd, IPPROTO_UDPLITE, UDPLITE_RECV_CSCOV));
  }
  if (sk->type() == SOCK_DGRAM) {
    // Datagrams held back by UDP_CORK are not in any queue godwit can read (CRIU refuses too).
    int held = 0;
    if (sk->protocol() == IPPROTO_UDP && GetInt(fd, SOL_UDP, UDP_CORK) &&
        ioctl(fd, SIOCOUTQ, &held) == 0 && held > 0)
      return MakeError(ErrorKind::kUnsupported, 0, "corked UDP socket %s -> %s holds %d bytes "
                       "(UDP_CORK)", AddrStr(sk->src()).c_str(), AddrStr(sk->dst()).c_str(), held);
    sk->set_state(sk->dst().empty() ? TCP_CLOSE : TCP_ESTABLISHED);
    // shutdown() of a datagram socket (zdtm socket_udp_shutdown): a write-shut one must keep
    // failing with EPIPE, a read-shut one keep reading EOF.
    // A socket never bound nor connected is in no table sock_diag walks (zdtm sock_ip_opts: UDP
    // sockets with options only); a shutdown of one is kept by nothing a restore could tell.
    auto how = InetShutdown(p.pid, sk->family(), sk->protocol(), p.st.st_ino);
    if (!how.ok() && !(how.error().kind() == ErrorKind::kNotFound && !sk->bound() &&
                       sk->dst().empty()))
      return std::move(how).error();
    sk->set_shutdown(how.ok() ? static_cast<uint32_t>(*how) : 0);
    return PeekQueue(ctx, fd, false, sk->mutable_queue());
  }
  struct tcp_info ti {};
  len = sizeof(ti);
  if (getsockopt(fd, SOL_TCP, TCP_INFO, &ti, &len) < 0) return Errno("TCP_INFO");
  sk->set_state(ti.tcpi_state);
  sk->set_nodelay(GetInt(fd, SOL_TCP, TCP_NODELAY));
  sk->set_cork(GetInt(fd, SOL_TCP, TCP_CORK));
  sk->set_keepidle(GetInt(fd, SOL_TCP, TCP_KEEPIDLE));
  sk->set_keepintvl(GetInt(fd, SOL_TCP, TCP_KEEPINTVL));
  sk->set_keepcnt(GetInt(fd, SOL_TCP, TCP_KEEPCNT));
  sk->set_user_mss(0);
  int st = ti.tcpi_state;
  if (st == TCP_LISTEN) {
    sk->set_backlog(ti.tcpi_sacked);  // a listener's tcpi_sacked is its backlog
    if (ti.tcpi_unacked)
      LOG_WARN(
          "pid %d fd %d: listener %s has %u connections not yet accepted: only those "
          "whose client is dumped too come back (it connects again)",
          p.pid, p.fd, AddrStr(sk->src()).c_str(), ti.tcpi_unacked);
    return Ok();
  }
  if (st == TCP_CLOSE) return DumpTcpClosed(ctx, p, sk, ti);
  if (st == TCP_SYN_SENT) return DumpTcpSynSent(p, sk);
  if (!Connected(st))
    return MakeError(ErrorKind::kUnsupported, 0, "TCP socket %s -> %s in state %d",
                     AddrStr(sk->src()).c_str(), AddrStr(sk->dst()).c_str(), st);
  if (!ctx.opts().tcp_established)
    return MakeError(ErrorKind::kUnsupported, 0,
                     "established TCP connection %s -> %s (use --tcp-established)",
                     AddrStr(sk->src()).c_str(), AddrStr(sk->dst()).c_str());
  return DumpTcpEstablished(ctx, p, sk, ti);
}

namespace {

Result<void> CommonOpts(int fd, const img::InetSocket& sk) {
  TRY(RestoreSockOpts(fd, sk.opts()));
  bool v6 = sk.family() == AF_INET6;
  // Set only when it differs: raw sockets refuse IPV6_V6ONLY altogether (EINVAL).
  if (v6 && GetInt(fd, SOL_IPV6, IPV6_V6ONLY) != static_cast<int>(sk.v6only()))
    TRY(SetInt(fd, SOL_IPV6, IPV6_V6ONLY, sk.v6only(), "IPV6_V6ONLY"));
  if (sk.tos()) TRY(SetInt(fd, v6 ? SOL_IPV6 : SOL_IP, v6 ? IPV6_TCLASS : IP_TOS, sk.tos(), "TOS"));
  // Before the bind, which needs them for an address this host does not have (zdtm sk-freebind).
  if (sk.freebind())
    TRY(SetInt(fd, v6 ? SOL_IPV6 : SOL_IP, v6 ? IPV6_FREEBIND : IP_FREEBIND, 1, "FREEBIND"));
  if (sk.transparent())
    TRY(SetInt(fd, v6 ? SOL_IPV6 : SOL_IP, v6 ? IPV6_TRANSPARENT : IP_TRANSPARENT, 1,
               "TRANSPARENT"));
  if (sk.type() == SOCK_STREAM) {
    if (sk.nodelay()) TRY(SetInt(fd, SOL_TCP, TCP_NODELAY, 1, "TCP_NODELAY"));
    if (sk.keepidle()) TRY(SetInt(fd, SOL_TCP, TCP_KEEPIDLE, sk.keepidle(), "TCP_KEEPIDLE"));
    if (sk.keepintvl()) TRY(SetInt(fd, SOL_TCP, TCP_KEEPINTVL, sk.keepintvl(), "TCP_KEEPINTVL"));
    if (sk.keepcnt()) TRY(SetInt(fd, SOL_TCP, TCP_KEEPCNT, sk.keepcnt(), "TCP_KEEPCNT"));
  }
  return Ok();
}

Result<void> RestoreRawOpts(int fd, const img::InetSocket& sk) {
  if (sk.protocol() == IPPROTO_UDPLITE) {
    if (sk.udplite_send_cscov())
      TRY(SetInt(fd, IPPROTO_UDPLITE, UDPLITE_SEND_CSCOV, sk.udplite_send_cscov(), "SEND_CSCOV"));
    if (sk.udplite_recv_cscov())
      TRY(SetInt(fd, IPPROTO_UDPLITE, UDPLITE_RECV_CSCOV, sk.udplite_recv_cscov(), "RECV_CSCOV"));
  }
  if (sk.type() != SOCK_RAW) return Ok();
  bool v6 = sk.family() == AF_INET6;
  if (sk.hdrincl()) TRY(SetInt(fd, SOL_IP, IP_HDRINCL, 1, "IP_HDRINCL"));
  if (!sk.icmp_filter().empty() &&
      setsockopt(fd, v6 ? SOL_ICMPV6 : SOL_RAW, v6 ? kIcmpv6Filter : kIcmpFilter,
                 sk.icmp_filter().data(), sk.icmp_filter().size()) < 0)
    return Errno("setsockopt ICMP_FILTER");
  if (sk.v6_checksum())
    TRY(SetInt(fd, SOL_IPV6, IPV6_CHECKSUM, sk.v6_checksum() - 1, "IPV6_CHECKSUM"));
  return Ok();
}

Result<void> Bind(int fd, const img::InetSocket& sk) {
  if (bind(fd, reinterpret_cast<const sockaddr*>(sk.src().data()), sk.src().size()) == 0) return Ok();
  if (errno == EADDRNOTAVAIL && !sk.freebind()) {
    // Bound to an address this host does not have while FREEBIND was on, which the process
    // turned off since (zdtm sk-freebind-false): bound the same way, then FREEBIND off again.
    bool v6 = sk.family() == AF_INET6;
    int level = v6 ? SOL_IPV6 : SOL_IP, opt = v6 ? IPV6_FREEBIND : IP_FREEBIND;
    TRY(SetInt(fd, level, opt, 1, "FREEBIND (for the bind)"));
    int r = bind(fd, reinterpret_cast<const sockaddr*>(sk.src().data()), sk.src().size());
    int err = errno;
    TRY(SetInt(fd, level, opt, 0, "FREEBIND off"));
    if (r == 0) return Ok();
    errno = err;
  }
  if (errno == EADDRINUSE)
    return MakeError(ErrorKind::kExists, EADDRINUSE, "%s address %s is already in use",
                     sk.type() == SOCK_STREAM ? "TCP" : "UDP", AddrStr(sk.src()).c_str());
  return Errno("bind %s", AddrStr(sk.src()).c_str());
}

Result<void> SendAll(int fd, const std::string& data, const char* what) {
  size_t off = 0;
  while (off < data.size()) {
    ssize_t n = send(fd, data.data() + off, data.size() - off, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n < 0) return Errno("refill TCP %s queue at %zu of %zu", what, off, data.size());
    off += n;
  }
  return Ok();
}

// SYN_SENT again: the dumped ISN goes in as write_seq (repair mode, on a closed socket), which
// connect() then uses instead of a new one; a non-blocking connect sends the SYN (the peer sees
// a retransmission) and leaves the socket connecting, as the process left it: its own
// connect() called again waits for the handshake (EALREADY when non-blocking), a poll for
// POLLOUT says when it is done. Bound before (Bind above): the same source port.
Result<void> ConnectSynSent(int fd, const img::InetSocket& sk) {
  if (sk.dst().empty())
    return MakeError(ErrorKind::kBadImage, 0, "TCP socket %s in SYN_SENT without a destination",
                     AddrStr(sk.src()).c_str());
  TRY(SetInt(fd, SOL_TCP, TCP_REPAIR, TCP_REPAIR_ON, "TCP_REPAIR"));
  TRY(SetInt(fd, SOL_TCP, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE, "TCP_REPAIR_QUEUE"));
  TRY(SetInt(fd, SOL_TCP, TCP_QUEUE_SEQ, static_cast<int>(sk.syn_isn()), "TCP_QUEUE_SEQ (ISN)"));
  TRY(SetInt(fd, SOL_TCP, TCP_REPAIR, TCP_REPAIR_OFF, "TCP_REPAIR off"));
  if (sk.opts().reuseaddr()) TRY(SetInt(fd, SOL_SOCKET, SO_REUSEADDR, 1, "SO_REUSEADDR"));
  int fl = fcntl(fd, F_GETFL);
  if (fl < 0) return Errno("F_GETFL");
  if (fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) return Errno("F_SETFL");
  int r = connect(fd, reinterpret_cast<const sockaddr*>(sk.dst().data()), sk.dst().size());
  int err = errno;
  fcntl(fd, F_SETFL, fl);
  if (r < 0 && err != EINPROGRESS) {
    errno = err;
    return Errno("connect %s -> %s again (SYN_SENT)", AddrStr(sk.src()).c_str(),
                 AddrStr(sk.dst()).c_str());
  }
  return Ok();
}

Result<UniqueFd> OpenTcpEstablished(FdRestoreContext& ctx, const img::FileEntry& e) {
  const img::InetSocket& sk = e.inet();
  const img::TcpRepair& r = sk.repair();
  // Listeners first: they bind their port without SO_REUSEADDR maybe; a repaired socket forces
  // its reuse of the port afterwards.
  for (const auto& [id, x] : ctx.entries())
    if (x.kind() == img::FILE_KIND_INET && x.inet().state() == TCP_LISTEN) {
      auto lr = ctx.Ensure(id);
      if (!lr.ok()) return std::move(lr).error();
    }
  UniqueFd s(socket(sk.family(), SOCK_STREAM | SOCK_CLOEXEC, IPPROTO_TCP));
  if (!s) return Errno("socket");
  int fd = s.get();
  TRY(SetInt(fd, SOL_TCP, TCP_REPAIR, TCP_REPAIR_ON, "TCP_REPAIR"));
  ASSIGN_OR_RETURN(std::string sendq, ctx.ReadBlob(r.send_queue()));
  ASSIGN_OR_RETURN(std::string recvq, ctx.ReadBlob(r.recv_queue()));
  if (r.unsent() > sendq.size()) return MakeError(ErrorKind::kBadImage, 0, "TCP unsent > queue");
  TRY(SetInt(fd, SOL_TCP, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE, "TCP_REPAIR_QUEUE"));
  // Sequence of the first byte in each queue: the dumped "next" minus what is queued.
  TRY(SetInt(fd, SOL_TCP, TCP_QUEUE_SEQ, r.snd_seq() - sendq.size(), "TCP_QUEUE_SEQ send"));
  TRY(SetInt(fd, SOL_TCP, TCP_REPAIR_QUEUE, TCP_RECV_QUEUE, "TCP_REPAIR_QUEUE"));
  TRY(SetInt(fd, SOL_TCP, TCP_QUEUE_SEQ, r.rcv_seq() - recvq.size(), "TCP_QUEUE_SEQ recv"));
  TRY(CommonOpts(fd, sk));
  // SO_REUSEADDR (restored just above) overwrites the forced port reuse TCP_REPAIR set: an
  // accepted socket next to its live listener (same port) could not bind. Arm it again.
  TRY(SetInt(fd, SOL_TCP, TCP_REPAIR, TCP_REPAIR_ON, "TCP_REPAIR"));
  TRY(Bind(fd, sk));
  if (connect(fd, reinterpret_cast<const sockaddr*>(sk.dst().data()), sk.dst().size()) < 0)
    return Errno("repair connect %s -> %s", AddrStr(sk.src()).c_str(), AddrStr(sk.dst()).c_str());
  struct tcp_repair_opt opts[4];
  int n = 0;
  opts[n++] = {TCPOPT_MAXSEG, r.mss()};
  if (r.wscale_ok()) opts[n++] = {TCPOPT_WINDOW, r.snd_wscale() | (r.rcv_wscale() << 16)};
  if (r.sack()) opts[n++] = {TCPOPT_SACK_PERMITTED, 0};
  if (r.timestamps()) opts[n++] = {TCPOPT_TIMESTAMP, 0};
  if (setsockopt(fd, SOL_TCP, TCP_REPAIR_OPTIONS, opts, n * sizeof(opts[0])) < 0)
    return Errno("TCP_REPAIR_OPTIONS");
  if (r.timestamps()) TRY(SetInt(fd, SOL_TCP, TCP_TIMESTAMP, r.timestamp(), "TCP_TIMESTAMP"));
  // Room for the queues before refilling them, or send() blocks.
  int need = static_cast<int>(std::max(sendq.size(), recvq.size())) * 2 + (64 << 10);
  int snd = std::max<int>(sk.opts().sndbuf() / 2, need), rcv = std::max<int>(sk.opts().rcvbuf() / 2, need);
  TRY(SetInt(fd, SOL_SOCKET, SO_SNDBUFFORCE, snd, "SO_SNDBUFFORCE"));
  TRY(SetInt(fd, SOL_SOCKET, SO_RCVBUFFORCE, rcv, "SO_RCVBUFFORCE"));
  TRY(RestoreBufLock(fd, sk.opts()));
  TRY(SetInt(fd, SOL_TCP, TCP_REPAIR_QUEUE, TCP_RECV_QUEUE, "TCP_REPAIR_QUEUE"));
  TRY(SendAll(fd, recvq, "receive"));
  TRY(SetInt(fd, SOL_TCP, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE, "TCP_REPAIR_QUEUE"));
  TRY(SendAll(fd, sendq.substr(0, sendq.size() - r.unsent()), "send"));
  struct tcp_repair_window w {r.snd_wl1(), r.snd_wnd(), r.max_window(), r.rcv_wnd(), r.rcv_wup()};
  // A received FIN is not in the restored sequence space (it becomes SHUT_RD): the window edges
  // recorded after it may lie one past rcv_nxt, which the kernel refuses.
  auto after = [](uint32_t a, uint32_t b) { return static_cast<int32_t>(a - b) > 0; };
  if (after(w.rcv_wup, r.rcv_seq())) w.rcv_wup = r.rcv_seq();
  if (after(w.snd_wl1, r.rcv_seq() + w.rcv_wnd)) w.snd_wl1 = r.rcv_seq();
  if (setsockopt(fd, SOL_TCP, TCP_REPAIR_WINDOW, &w, sizeof(w)) < 0) return Errno("TCP_REPAIR_WINDOW");
  return s;
}

// A listener of the images that dst (sockaddr bytes) reaches: the same port, its address dst's
// or the wildcard (IPv4 to an IPv6 wildcard listener unless it is v6only).
bool HasListenerFor(FdRestoreContext& ctx, const std::string& dst) {
  auto split = [](const std::string& sa, std::string* addr, uint16_t* port, int* fam) {
    if (sa.size() < sizeof(sockaddr)) return false;
    *fam = reinterpret_cast<const sockaddr*>(sa.data())->sa_family;
    if (*fam == AF_INET && sa.size() >= sizeof(sockaddr_in)) {
      sockaddr_in a;
      memcpy(&a, sa.data(), sizeof(a));
      *port = a.sin_port;
      addr->assign(reinterpret_cast<char*>(&a.sin_addr), 4);
      return true;
    }
    if (*fam == AF_INET6 && sa.size() >= sizeof(sockaddr_in6)) {
      sockaddr_in6 a;
      memcpy(&a, sa.data(), sizeof(a));
      *port = a.sin6_port;
      addr->assign(reinterpret_cast<char*>(&a.sin6_addr), 16);
      return true;
    }
    return false;
  };
  std::string da;
  uint16_t dp = 0;
  int df = 0;
  if (!split(dst, &da, &dp, &df)) return false;
  for (const auto& [id, x] : ctx.entries()) {
    if (x.kind() != img::FILE_KIND_INET || x.inet().state() != TCP_LISTEN) continue;
    std::string la;
    uint16_t lp = 0;
    int lf = 0;
    if (!split(x.inet().src(), &la, &lp, &lf) || lp != dp) continue;
    bool any = la.find_first_not_of('\0') == std::string::npos;
    if ((lf == df && (any || la == da)) ||
        (lf == AF_INET6 && df == AF_INET && any && !x.inet().v6only()))
      return true;
  }
  return false;
}

// InetSocket.peer_unaccepted: connected again for real (not in repair mode) from its address to
// the restored listener, without waiting (non-blocking; the process's own flags come back with
// its fd). The handshake may wait for the network lock to go (the peer's SYN-ACK), then the
// connection is in the listener's queue as it was.
Result<UniqueFd> OpenTcpReconnect(FdRestoreContext& ctx, const img::FileEntry& e) {
  const img::InetSocket& sk = e.inet();
  for (const auto& [id, x] : ctx.entries())
    if (x.kind() == img::FILE_KIND_INET && x.inet().state() == TCP_LISTEN) {
      auto lr = ctx.Ensure(id);
      if (!lr.ok()) return std::move(lr).error();
    }
  UniqueFd s(socket(sk.family(), SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, IPPROTO_TCP));
  if (!s) return Errno("socket");
  int fd = s.get();
  TRY(CommonOpts(fd, sk));
  TRY(RestoreExtraOpts(fd, sk));
  TRY(Bind(fd, sk));
  if (connect(fd, reinterpret_cast<const sockaddr*>(sk.dst().data()), sk.dst().size()) < 0 &&
      errno != EINPROGRESS)
    return Errno("connect %s -> %s again (its peer was not accepted yet)",
                 AddrStr(sk.src()).c_str(), AddrStr(sk.dst()).c_str());
  int fl = fcntl(fd, F_GETFL);
  if (fl < 0 || fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) < 0) return Errno("F_SETFL");
  return s;
}

// Whether e, bound without SO_REUSEPORT now, shares its address with another socket of the images
// that has it: it was bound with the option, cleared after (binding again without it would fail).
bool SharesReuseport(FdRestoreContext& ctx, const img::FileEntry& e) {
  const img::InetSocket& sk = e.inet();
  if (!sk.bound() || sk.opts().reuseport() || sk.type() != SOCK_STREAM) return false;
  for (const auto& [id, x] : ctx.entries()) {
    if (id == e.id() || x.kind() != img::FILE_KIND_INET) continue;
    const img::InetSocket& o = x.inet();
    if (o.type() == sk.type() && o.opts().reuseport() && o.src() == sk.src()) return true;
  }
  return false;
}

// A closed socket that had a connection (DumpTcpClosed): connected again in repair mode with
// its unread data, then closed the way it was by the peer's made-up segments, still in repair
// mode (the socket sends nothing of its own): a FIN (reads end), then a reset (CLOSE, writes
// fail; sk_err EPIPE, which its first write reports where the original's said EPIPE without
// one), or the reset alone (ECONNRESET after the data). It keeps its addresses: getsockname and
// SO_PEERNAME say what they said.
Result<UniqueFd> OpenTcpClosed(FdRestoreContext& ctx, const img::FileEntry& e) {
  const img::InetSocket& sk = e.inet();
  const img::TcpRepair& r = sk.repair();
  ASSIGN_OR_RETURN(UniqueFd s, OpenTcpEstablished(ctx, e));
  int fd = s.get();
  uint32_t seq = r.rcv_seq();
  if (sk.closed() == 1) {
    TRY_CTX(InjectFromPeer(fd, sk, seq, r.snd_seq(), TH_FIN | TH_ACK, PeerWindow(r)),
            "the FIN of closed TCP socket %s", AddrStr(sk.src()).c_str());
    seq++;
  }
  TRY_CTX(InjectFromPeer(fd, sk, seq, r.snd_seq(), TH_RST | TH_ACK, 0),
          "the reset of closed TCP socket %s", AddrStr(sk.src()).c_str());
  if (TcpState(fd) != TCP_CLOSE)
    return MakeError(ErrorKind::kGeneric, 0, "closed TCP socket %s -> %s: state %d after its "
                     "peer's segments, not CLOSE", AddrStr(sk.src()).c_str(),
                     AddrStr(sk.dst()).c_str(), TcpState(fd));
  TRY(SetInt(fd, SOL_TCP, TCP_REPAIR, TCP_REPAIR_OFF, "TCP_REPAIR off"));
  if (sk.opts().reuseaddr()) TRY(SetInt(fd, SOL_SOCKET, SO_REUSEADDR, 1, "SO_REUSEADDR"));
  TRY(RestoreExtraOpts(fd, sk));
  return s;
}

}  // namespace

Result<UniqueFd> OpenInet(FdRestoreContext& ctx, const img::FileEntry& e) {
  const img::InetSocket& sk = e.inet();
  if (sk.type() == SOCK_STREAM && sk.state() == TCP_CLOSE && sk.closed() && sk.has_repair()) {
    auto c = OpenTcpClosed(ctx, e);
    if (c.ok()) return c;
    // Its addresses in use again (a new connection on the same ports): a plain closed socket,
    // which reads ENOTCONN instead of its end.
    LOG_WARN("closed TCP socket %s (was connected to %s) restored unconnected: %s",
             AddrStr(sk.src()).c_str(), AddrStr(sk.dst()).c_str(),
             c.error().to_string().c_str());
  }
  if (sk.type() == SOCK_STREAM && Connected(sk.state())) {
    if (!ctx.opts().tcp_close && sk.peer_unaccepted() && HasListenerFor(ctx, sk.dst()))
      return OpenTcpReconnect(ctx, e);
    if (!ctx.opts().tcp_close) return OpenTcpEstablished(ctx, e);
    // --tcp-close: a socket that reads EOF and fails writes, as after a reset.
    UniqueFd s(socket(sk.family(), SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!s) return Errno("socket");
    shutdown(s.get(), SHUT_RDWR);
    return s;
  }
  UniqueFd s(socket(sk.family(), sk.type() | SOCK_CLOEXEC, sk.protocol()));
  if (!s) {
    if (errno == EACCES && (sk.protocol() == IPPROTO_ICMP || sk.protocol() == IPPROTO_ICMPV6))
      return Errno("ping socket: this process's group is outside net.ipv4.ping_group_range");
    return Errno("socket family %d type %d protocol %d", sk.family(), sk.type(), sk.protocol());
  }
  TRY(CommonOpts(s.get(), sk));
  TRY(RestoreRawOpts(s.get(), sk));
  TRY(RestoreExtraOpts(s.get(), sk));
  // A port shared through SO_REUSEPORT by a socket that dropped the option since (zdtm
  // socket-tcp-reuseport): it binds with the option, and drops it in Finalize, once all are bound.
  if (SharesReuseport(ctx, e)) TRY(SetInt(s.get(), SOL_SOCKET, SO_REUSEPORT, 1, "SO_REUSEPORT"));
  // A closed connection holds no port (the kernel let it go when it closed).
  if (sk.bound() && !sk.closed()) TRY(Bind(s.get(), sk));
  if (sk.type() == SOCK_STREAM) {
    if (sk.state() == TCP_LISTEN && listen(s.get(), sk.backlog()) < 0)
      return Errno("listen %s", AddrStr(sk.src()).c_str());
    if (sk.state() == TCP_SYN_SENT) TRY(ConnectSynSent(s.get(), sk));
    return s;
  }
  // UDP: the queue goes back through a socket sending to ours, then the connect (a connected
  // UDP socket drops datagrams from other addresses).
  if (!sk.queue().empty()) {
    struct sockaddr_storage to {};
    socklen_t tl = sizeof(to);
    getsockname(s.get(), reinterpret_cast<sockaddr*>(&to), &tl);
    if (to.ss_family == AF_INET) {
      auto* a = reinterpret_cast<sockaddr_in*>(&to);
      if (a->sin_addr.s_addr == htonl(INADDR_ANY)) a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    } else {
      auto* a = reinterpret_cast<sockaddr_in6*>(&to);
      if (IN6_IS_ADDR_UNSPECIFIED(&a->sin6_addr)) a->sin6_addr = in6addr_loopback;
    }
    // The same protocol: a UDP datagram never reaches a UDP-Lite socket.
    UniqueFd tmp(socket(sk.family(), SOCK_DGRAM | SOCK_CLOEXEC, sk.protocol()));
    if (!tmp) return Errno("socket to requeue datagrams");
    // Each datagram from its own sender's address where a transparent socket can take it (a
    // server answers recvfrom's address: a client's, not ours; a migrated UDP server's queued
    // requests are answered to their clients), else from the plain one (an address a restored
    // socket holds again, no CAP_NET_ADMIN).
    std::map<std::string, UniqueFd> senders;
    auto from_sender = [&](const std::string& addr) -> int {
      if (addr.size() != (sk.family() == AF_INET ? sizeof(sockaddr_in) : sizeof(sockaddr_in6)) ||
          reinterpret_cast<const sockaddr*>(addr.data())->sa_family != sk.family())
        return tmp.get();
      auto it = senders.find(addr);
      if (it == senders.end()) {
        UniqueFd f(socket(sk.family(), SOCK_DGRAM | SOCK_CLOEXEC, sk.protocol()));
        int one = 1;
        bool ok = f.valid() &&
                  (sk.family() == AF_INET
                       ? setsockopt(f.get(), SOL_IP, IP_TRANSPARENT, &one, sizeof one) == 0
                       : setsockopt(f.get(), SOL_IPV6, IPV6_TRANSPARENT, &one, sizeof one) == 0) &&
                  setsockopt(f.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) == 0 &&
                  bind(f.get(), reinterpret_cast<const sockaddr*>(addr.data()), addr.size()) == 0;
        it = senders.emplace(addr, ok ? std::move(f) : UniqueFd()).first;
      }
      return it->second.valid() ? it->second.get() : tmp.get();
    };
    for (const auto& m : sk.queue()) {
      ASSIGN_OR_RETURN(std::string data, ctx.ReadBlob(m.data()));
      int via = from_sender(m.sender());
      ssize_t n = sendto(via, data.data(), data.size(), MSG_DONTWAIT,
                         reinterpret_cast<sockaddr*>(&to), tl);
      if (n < 0 && via != tmp.get())  // refused from there: from the plain socket after all
        n = sendto(tmp.get(), data.data(), data.size(), MSG_DONTWAIT,
                   reinterpret_cast<sockaddr*>(&to), tl);
      if (n != static_cast<ssize_t>(data.size()))
        return Errno("requeue UDP datagram to %s", AddrStr(sk.src()).c_str());
    }
  }
  if (!sk.dst().empty() &&
      connect(s.get(), reinterpret_cast<const sockaddr*>(sk.dst().data()), sk.dst().size()) < 0)
    return Errno("connect UDP %s", AddrStr(sk.dst()).c_str());
  // After the queue went back (a read-shut socket still holds what it had). On an unconnected
  // datagram socket the kernel records the shutdown and says ENOTCONN.
  for (auto [bit, how] : {std::pair{1u, SHUT_RD}, std::pair{2u, SHUT_WR}})
    if ((sk.shutdown() & bit) && shutdown(s.get(), how) < 0 && errno != ENOTCONN)
      return Errno("shutdown %d of UDP %s", how, AddrStr(sk.src()).c_str());
  return s;
}

bool HasUnackedData(const img::FileEntry& e) {
  if (e.kind() != img::FILE_KIND_INET || !e.has_inet()) return false;
  const img::InetSocket& sk = e.inet();
  return sk.type() == SOCK_STREAM && sk.state() == TCP_ESTABLISHED && !sk.tcp_close() &&
         sk.repair().send_queue().length() > sk.repair().unsent();
}

void ProbePeer(const img::FileEntry& e, int fd) {
  // Repair off sends a window probe (tcp_send_window_probe) on an established socket; it also
  // resets sk_reuse, which SO_REUSEADDR sets back (as in FinalizeInet).
  int on = TCP_REPAIR_ON, off = TCP_REPAIR_OFF;
  if (setsockopt(fd, SOL_TCP, TCP_REPAIR, &on, sizeof on) < 0 ||
      setsockopt(fd, SOL_TCP, TCP_REPAIR, &off, sizeof off) < 0) {
    LOG_WARN("TCP %s -> %s: no probe after the restore: %s", AddrStr(e.inet().src()).c_str(),
             AddrStr(e.inet().dst()).c_str(), strerror(errno));
    return;
  }
  if (e.inet().opts().reuseaddr()) {
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  }
}

Result<void> FinalizeInet(FdRestoreContext& ctx, const img::FileEntry& e, int fd) {
  const img::InetSocket& sk = e.inet();
  if (SharesReuseport(ctx, e)) TRY(SetInt(fd, SOL_SOCKET, SO_REUSEPORT, 0, "SO_REUSEPORT off"));
  if (sk.type() != SOCK_STREAM || !Connected(sk.state()) || ctx.opts().tcp_close) return Ok();
  // Connected again for real (OpenTcpReconnect): nothing to repair.
  if (sk.peer_unaccepted() && GetInt(fd, SOL_TCP, TCP_REPAIR) == 0) return Ok();
  // FIN_WAIT2, all acked: the FIN goes in while in repair mode, counted as sent and not sent
  // (the peer has it; and the lock, still on, would drop it: TCP keeps a segment the output
  // hook drops as unsent), and its ack is made up below.
  const bool fin_acked = sk.state() == TCP_FIN_WAIT2 && sk.repair().send_queue().length() == 0;
  if (fin_acked) {
    TRY(SetInt(fd, SOL_TCP, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE, "TCP_REPAIR_QUEUE"));
    if (shutdown(fd, SHUT_WR) < 0) return Errno("shutdown SHUT_WR (in repair mode)");
  }
  TRY(SetInt(fd, SOL_TCP, TCP_REPAIR, TCP_REPAIR_OFF, "TCP_REPAIR off"));
  // Repair off resets sk_reuse to "no reuse": the application's SO_REUSEADDR comes back here.
  if (sk.opts().reuseaddr()) TRY(SetInt(fd, SOL_SOCKET, SO_REUSEADDR, 1, "SO_REUSEADDR"));
  const img::TcpRepair& r = sk.repair();
  if (r.unsent()) {
    ASSIGN_OR_RETURN(std::string sendq, ctx.ReadBlob(r.send_queue()));
    TRY(SendAll(fd, sendq.substr(sendq.size() - r.unsent()), "unsent"));
  }
  // The FINs, in the order that leads to the dumped state: the peer's first for LAST_ACK
  // (CLOSE_WAIT, then ours), ours first for CLOSING (FIN_WAIT1, then the peer's, which does not
  // ack ours). The peer's is made up (InjectFromPeer): its sequence number is the restored
  // rcv_nxt, its ack the first byte not acked (acks nothing new).
  const uint32_t una = r.snd_seq() - static_cast<uint32_t>(r.send_queue().length());
  const int st = sk.state();
  auto peer_fin = [&]() -> Result<void> {
    int before = TcpState(fd);
    auto inj = InjectFromPeer(fd, sk, r.rcv_seq(), una, TH_FIN | TH_ACK, PeerWindow(r));
    // Loopback delivery is done by the time sendto returns, or soon after; a firewall rule of
    // the host may drop it.
    for (int i = 0; inj.ok() && i < 50 && TcpState(fd) == before; i++) usleep(1000);
    if (inj.ok() && TcpState(fd) == before)
      inj = MakeError(ErrorKind::kGeneric, 0, "the peer's FIN made up did not arrive (dropped?)");
    if (inj.ok()) return Ok();
    // Reads still end where the peer's FIN was (the state shows ESTABLISHED or FIN_WAIT*).
    LOG_WARN("TCP %s -> %s: %s; its received FIN becomes SHUT_RD", AddrStr(sk.src()).c_str(),
             AddrStr(sk.dst()).c_str(), inj.error().message().c_str());
    if (shutdown(fd, SHUT_RD) < 0) return Errno("shutdown SHUT_RD");
    return Ok();
  };
  if (st == TCP_LAST_ACK || st == TCP_CLOSE_WAIT) TRY(peer_fin());
  if (SentFin(st) && !fin_acked && shutdown(fd, SHUT_WR) < 0) return Errno("shutdown SHUT_WR");
  if (st == TCP_CLOSING) TRY(peer_fin());
  // FIN_WAIT2: the peer had acked our FIN; its ack again (made up: the real one comes only after
  // a retransmission) leaves the socket where it was.
  if (fin_acked) {
    auto inj = InjectFromPeer(fd, sk, r.rcv_seq(), r.snd_seq() + 1, TH_ACK, PeerWindow(r));
    if (!inj.ok())
      LOG_WARN("TCP %s: the ack of its FIN: %s (the peer's retransmission will do)",
               AddrStr(sk.src()).c_str(), inj.error().message().c_str());
  }
  // The other options once the connection is live again (TCP_CORK would hold the unsent data
  // sent just above).
  return RestoreExtraOpts(fd, sk);
}

}  // namespace godwit::files
