// AF_NETLINK sockets (rtnetlink monitors, uevent listeners, ...): protocol, port id, multicast
// groups, peer and socket options. The port id is taken again if free (it is usually the
// process's pid, which restore keeps); otherwise the kernel picks one (logged). Notifications
// queued at dump time are dropped: they describe the kernel state of that moment.
#include <linux/netlink.h>
#include <sys/ioctl.h>
#include <sys/socket.h>

#include "common/log.h"
#include "files/kind.h"

namespace godwit::files {

Result<void> DumpNetlink(FdDumpContext& ctx, const Probe& p, img::FileEntry& e) {
  img::NetlinkSocket* n = e.mutable_netlink();
  int v = 0;
  socklen_t len = sizeof(v);
  getsockopt(p.local, SOL_SOCKET, SO_TYPE, &v, &len);
  n->set_type(v);
  len = sizeof(v);
  getsockopt(p.local, SOL_SOCKET, SO_PROTOCOL, &v, &len);
  n->set_protocol(v);
  struct sockaddr_nl sa {};
  len = sizeof(sa);
  if (getsockname(p.local, reinterpret_cast<sockaddr*>(&sa), &len) == 0) {
    n->set_portid(sa.nl_pid);
    n->set_groups(sa.nl_groups);
  }
  sa = {};
  len = sizeof(sa);
  if (getpeername(p.local, reinterpret_cast<sockaddr*>(&sa), &len) == 0) {
    n->set_dst_portid(sa.nl_pid);
    n->set_dst_groups(sa.nl_groups);
  }
  DumpSockOpts(p.local, n->mutable_opts());
  int inq = 0;
  if (ioctl(p.local, FIONREAD, &inq) == 0 && inq > 0)
    LOG_INFO("pid %d fd %d: netlink socket: %d queued bytes of notifications not kept", p.pid,
             p.fd, inq);
  return Ok();
}

Result<UniqueFd> OpenNetlink(FdRestoreContext& ctx, const img::FileEntry& e) {
  const img::NetlinkSocket& n = e.netlink();
  UniqueFd s(socket(AF_NETLINK, n.type() | SOCK_CLOEXEC, n.protocol()));
  if (!s) return Errno("socket AF_NETLINK protocol %d", n.protocol());
  TRY(RestoreSockOpts(s.get(), n.opts()));
  if (n.portid() || n.groups()) {
    struct sockaddr_nl sa {};
    sa.nl_family = AF_NETLINK;
    sa.nl_pid = n.portid();
    sa.nl_groups = n.groups();
    if (bind(s.get(), reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) < 0) {
      if (errno != EADDRINUSE) return Errno("bind netlink port %u groups %#x", n.portid(), n.groups());
      LOG_WARN("netlink port id %u is taken: the kernel picks another", n.portid());
      sa.nl_pid = 0;
      if (bind(s.get(), reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) < 0)
        return Errno("bind netlink groups %#x", n.groups());
    }
  }
  if (n.dst_portid() || n.dst_groups()) {
    struct sockaddr_nl sa {};
    sa.nl_family = AF_NETLINK;
    sa.nl_pid = n.dst_portid();
    sa.nl_groups = n.dst_groups();
    if (connect(s.get(), reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) < 0)
      return Errno("connect netlink");
  }
  return s;
}

}  // namespace godwit::files
