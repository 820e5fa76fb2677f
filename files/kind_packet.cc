// AF_PACKET sockets (SOCK_RAW, SOCK_DGRAM, and the old SOCK_PACKET): type, protocol, the
// interface they are bound to (getsockname), options (PACKET_VERSION, _RESERVE, _AUXDATA,
// _ORIGDEV, _VNET_HDR, _LOSS, _TIMESTAMP, _COPY_THRESH), memberships and ring configurations
// (readable only through NETLINK_SOCK_DIAG's packet_diag), the fanout group, socket options.
// Restore in the order an application sets them up: socket, options, bind, version before
// rings, memberships, fanout, then the rings. Queued packets are dropped (logged): nothing can
// put them back. A ring mapped into the process's memory (packet_sock_mmap) is a VMA_PACKET_RING
// of the memory dump (dump/mm.cc): mapped again from this socket's fd once its rings are set up
// here (restore/mm.cc); the frames in the rings are not stored. Interfaces are kept by index, so
// the restore must see the same interfaces (the same net namespace, or a container's recreated
// one with the same order).
#include <linux/if_packet.h>
#include <linux/netlink.h>
#include <linux/packet_diag.h>
#include <linux/sock_diag.h>
#include <linux/sockios.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>

#include "common/log.h"
#include "files/kind.h"

namespace godwit::files {

namespace {

int GetInt(int fd, int opt) {
  int v = 0;
  socklen_t len = sizeof(v);
  if (getsockopt(fd, SOL_PACKET, opt, &v, &len) < 0) return 0;
  return v;
}

Result<void> SetInt(int fd, int opt, int v, const char* name) {
  if (setsockopt(fd, SOL_PACKET, opt, &v, sizeof(v)) < 0) return Errno("setsockopt %s=%d", name, v);
  return Ok();
}

void SetRing(img::PacketRing* r, const packet_diag_ring& d) {
  r->set_block_size(d.pdr_block_size);
  r->set_block_nr(d.pdr_block_nr);
  r->set_frame_size(d.pdr_frame_size);
  r->set_frame_nr(d.pdr_frame_nr);
  r->set_retire_tmo(d.pdr_retire_tmo);
  r->set_sizeof_priv(d.pdr_sizeof_priv);
  r->set_features(d.pdr_features);
}

// packet_diag of socket ino in pid's net namespace: info, memberships, rings, fanout into pk.
Result<void> PacketDiag(pid_t pid, uint64_t ino, img::PacketSocket* pk) {
  ASSIGN_OR_RETURN(UniqueFd nl, SocketInNetns(pid, AF_NETLINK, SOCK_RAW, NETLINK_SOCK_DIAG));
  struct {
    nlmsghdr h;
    packet_diag_req r;
  } req{};
  req.h.nlmsg_len = sizeof(req);
  req.h.nlmsg_type = SOCK_DIAG_BY_FAMILY;
  req.h.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;  // packet_diag answers dumps only
  req.r.sdiag_family = AF_PACKET;
  req.r.pdiag_show =
      PACKET_SHOW_INFO | PACKET_SHOW_MCLIST | PACKET_SHOW_RING_CFG | PACKET_SHOW_FANOUT;
  if (send(nl.get(), &req, sizeof(req), 0) < 0) return Errno("packet_diag request");
  std::vector<char> buf(1 << 16);
  bool found = false;
  for (;;) {
    ssize_t n = recv(nl.get(), buf.data(), buf.size(), 0);
    if (n < 0) return Errno("packet_diag");
    for (auto* h = reinterpret_cast<nlmsghdr*>(buf.data()); NLMSG_OK(h, n); h = NLMSG_NEXT(h, n)) {
      if (h->nlmsg_type == NLMSG_DONE) {
        if (!found)
          return MakeError(ErrorKind::kGeneric, 0, "packet socket %llu not in packet_diag",
                           static_cast<unsigned long long>(ino));
        return Ok();
      }
      if (h->nlmsg_type == NLMSG_ERROR)
        return MakeError(ErrorKind::kGeneric, 0, "packet_diag error");
      auto* m = reinterpret_cast<packet_diag_msg*>(NLMSG_DATA(h));
      if (m->pdiag_ino != ino) continue;
      found = true;
      int len = static_cast<int>(h->nlmsg_len - NLMSG_LENGTH(sizeof(*m)));
      for (auto* a = reinterpret_cast<nlattr*>(m + 1);
           len >= static_cast<int>(sizeof(nlattr)) && a->nla_len >= sizeof(nlattr) &&
           a->nla_len <= len;
           len -= NLA_ALIGN(a->nla_len), a = reinterpret_cast<nlattr*>(reinterpret_cast<char*>(a) +
                                                                       NLA_ALIGN(a->nla_len))) {
        const char* data = reinterpret_cast<const char*>(a) + NLA_HDRLEN;
        size_t dl = a->nla_len - NLA_HDRLEN;
        switch (a->nla_type) {
          case PACKET_DIAG_INFO: {
            packet_diag_info i{};
            memcpy(&i, data, std::min(dl, sizeof(i)));
            pk->set_copy_thresh(static_cast<int32_t>(i.pdi_copy_thresh));
            break;
          }
          case PACKET_DIAG_MCLIST:
            for (size_t off = 0; off + sizeof(packet_diag_mclist) <= dl;
                 off += sizeof(packet_diag_mclist)) {
              packet_diag_mclist mc;
              memcpy(&mc, data + off, sizeof(mc));
              img::PacketMembership* pm = pk->add_mclist();
              pm->set_ifindex(mc.pdmc_index);
              pm->set_count(mc.pdmc_count);
              pm->set_type(mc.pdmc_type);
              pm->set_addr(std::string(reinterpret_cast<char*>(mc.pdmc_addr),
                                       std::min<size_t>(mc.pdmc_alen, sizeof(mc.pdmc_addr))));
            }
            break;
          case PACKET_DIAG_RX_RING:
          case PACKET_DIAG_TX_RING: {
            packet_diag_ring r{};
            memcpy(&r, data, std::min(dl, sizeof(r)));
            SetRing(
                a->nla_type == PACKET_DIAG_RX_RING ? pk->mutable_rx_ring() : pk->mutable_tx_ring(),
                r);
            break;
          }
          case PACKET_DIAG_FANOUT: {
            uint32_t f = 0;
            memcpy(&f, data, std::min(dl, sizeof(f)));
            pk->set_has_fanout(true);
            pk->set_fanout(f);
            break;
          }
        }
      }
    }
  }
}

Result<void> SetRingOpt(int fd, int opt, const img::PacketRing& r, int version) {
  if (r.block_nr() == 0) return Ok();
  tpacket_req3 req{};
  req.tp_block_size = r.block_size();
  req.tp_block_nr = r.block_nr();
  req.tp_frame_size = r.frame_size();
  req.tp_frame_nr = r.frame_nr();
  req.tp_retire_blk_tov = r.retire_tmo();
  req.tp_sizeof_priv = r.sizeof_priv();
  req.tp_feature_req_word = r.features();
  socklen_t len = version == TPACKET_V3 ? sizeof(tpacket_req3) : sizeof(tpacket_req);
  if (setsockopt(fd, SOL_PACKET, opt, &req, len) < 0)
    return Errno("setsockopt %s (%u blocks of %u)",
                 opt == PACKET_RX_RING ? "PACKET_RX_RING" : "PACKET_TX_RING", r.block_nr(),
                 r.block_size());
  return Ok();
}

// PACKET_ADD_MEMBERSHIP takes up to MAX_ADDR_LEN address bytes (struct packet_mreq_max).
struct MreqMax {
  int mr_ifindex;
  unsigned short mr_type;
  unsigned short mr_alen;
  unsigned char mr_address[32];
};

}  // namespace

Result<void> DumpPacket(FdDumpContext& ctx, const Probe& p, img::FileEntry& e) {
  img::PacketSocket* pk = e.mutable_packet();
  int fd = p.local;
  pk->set_ino(p.st.st_ino);
  int type = 0;
  socklen_t len = sizeof(type);
  getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len);
  pk->set_type(type);
  sockaddr_storage ss{};
  len = sizeof(ss);
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) < 0)
    return Errno("pid %d fd %d: getsockname", p.pid, p.fd);
  pk->set_name(std::string(reinterpret_cast<char*>(&ss), len));
  if (type == SOCK_PACKET) {
    auto* a = reinterpret_cast<sockaddr_pkt*>(&ss);
    pk->set_protocol(a->spkt_protocol);
    pk->set_bound(a->spkt_device[0] != 0);
  } else {
    auto* a = reinterpret_cast<sockaddr_ll*>(&ss);
    pk->set_protocol(a->sll_protocol);
    pk->set_bound(a->sll_ifindex != 0);
  }
  if (type != SOCK_PACKET) {
    pk->set_version(GetInt(fd, PACKET_VERSION));
    pk->set_reserve(GetInt(fd, PACKET_RESERVE));
    pk->set_auxdata(GetInt(fd, PACKET_AUXDATA));
    pk->set_origdev(GetInt(fd, PACKET_ORIGDEV));
    pk->set_vnet_hdr(GetInt(fd, PACKET_VNET_HDR));
    pk->set_loss(GetInt(fd, PACKET_LOSS));
    pk->set_timestamp(GetInt(fd, PACKET_TIMESTAMP));
  }
  TRY_CTX(PacketDiag(p.pid, p.st.st_ino, pk), "pid %d fd %d", p.pid, p.fd);
  DumpSockOpts(fd, pk->mutable_opts());
  int queued = 0;
  if (ioctl(fd, SIOCINQ, &queued) == 0 && queued > 0)
    LOG_WARN("pid %d fd %d: packet socket: %d queued bytes are not restored", p.pid, p.fd, queued);
  return Ok();
}

Result<UniqueFd> OpenPacket(FdRestoreContext& ctx, const img::FileEntry& e) {
  const img::PacketSocket& pk = e.packet();
  UniqueFd s(socket(AF_PACKET, pk.type() | SOCK_CLOEXEC, static_cast<int>(pk.protocol())));
  if (!s) return Errno("socket AF_PACKET type %d protocol %#x", pk.type(), pk.protocol());
  int fd = s.get();
  TRY(RestoreSockOpts(fd, pk.opts()));
  if (pk.bound()) {
    // getsockname's length stops after the hardware address; bind wants a whole sockaddr_ll.
    sockaddr_storage ss{};
    memcpy(&ss, pk.name().data(), std::min(pk.name().size(), sizeof(ss)));
    socklen_t len = pk.type() == SOCK_PACKET ? pk.name().size() : sizeof(sockaddr_ll);
    if (bind(fd, reinterpret_cast<const sockaddr*>(&ss), len) < 0)
      return Errno("bind packet socket");
  }
  if (pk.type() != SOCK_PACKET) {
    if (pk.version() != TPACKET_V1) TRY(SetInt(fd, PACKET_VERSION, pk.version(), "VERSION"));
    if (pk.reserve()) TRY(SetInt(fd, PACKET_RESERVE, pk.reserve(), "RESERVE"));
    if (pk.auxdata()) TRY(SetInt(fd, PACKET_AUXDATA, 1, "AUXDATA"));
    if (pk.origdev()) TRY(SetInt(fd, PACKET_ORIGDEV, 1, "ORIGDEV"));
    if (pk.vnet_hdr()) TRY(SetInt(fd, PACKET_VNET_HDR, 1, "VNET_HDR"));
    if (pk.loss()) TRY(SetInt(fd, PACKET_LOSS, 1, "LOSS"));
    if (pk.timestamp()) TRY(SetInt(fd, PACKET_TIMESTAMP, pk.timestamp(), "TIMESTAMP"));
    if (pk.copy_thresh()) TRY(SetInt(fd, PACKET_COPY_THRESH, pk.copy_thresh(), "COPY_THRESH"));
  }
  for (const auto& m : pk.mclist()) {
    MreqMax mr{};
    mr.mr_ifindex = static_cast<int>(m.ifindex());
    mr.mr_type = static_cast<unsigned short>(m.type());
    mr.mr_alen = static_cast<unsigned short>(std::min<size_t>(m.addr().size(), 32));
    memcpy(mr.mr_address, m.addr().data(), mr.mr_alen);
    for (uint32_t i = 0; i < std::max(1u, m.count()); i++)
      if (setsockopt(fd, SOL_PACKET, PACKET_ADD_MEMBERSHIP, &mr, sizeof(mr)) < 0)
        return Errno("PACKET_ADD_MEMBERSHIP ifindex %u type %u", m.ifindex(), m.type());
  }
  if (pk.has_fanout()) TRY(SetInt(fd, PACKET_FANOUT, static_cast<int>(pk.fanout()), "FANOUT"));
  TRY(SetRingOpt(fd, PACKET_RX_RING, pk.rx_ring(), pk.version()));
  TRY(SetRingOpt(fd, PACKET_TX_RING, pk.tx_ring(), pk.version()));
  return s;
}

}  // namespace godwit::files
