// libnl (route) handles as owning pointers, its errors as Result errors, and a rtnetlink socket
// in a chosen network namespace: the one home of this plumbing for the runtime's veth setup
// (network.cc) and the container's network dump and restore (container/net.cc).
#pragma once

#include <netlink/addr.h>
#include <netlink/cache.h>
#include <netlink/netlink.h>
#include <netlink/route/addr.h>
#include <netlink/route/link.h>
#include <netlink/route/neighbour.h>
#include <netlink/route/route.h>
#include <netlink/route/rule.h>
#include <netlink/socket.h>

#include <memory>

#include "common/result.h"

namespace godwit::nl {

// One deleter per libnl release function.
template <auto kFree>
struct Free {
  template <typename T>
  void operator()(T* p) const {
    kFree(p);
  }
};
using Sock = std::unique_ptr<nl_sock, Free<nl_socket_free>>;
using Cache = std::unique_ptr<nl_cache, Free<nl_cache_free>>;
using Addr = std::unique_ptr<nl_addr, Free<nl_addr_put>>;
using Link = std::unique_ptr<rtnl_link, Free<rtnl_link_put>>;
using RtAddr = std::unique_ptr<rtnl_addr, Free<rtnl_addr_put>>;
using Route = std::unique_ptr<rtnl_route, Free<rtnl_route_put>>;
using Rule = std::unique_ptr<rtnl_rule, Free<rtnl_rule_put>>;
using Neigh = std::unique_ptr<rtnl_neigh, Free<rtnl_neigh_put>>;

// A libnl error code (negative or not) as an Error: "<context>: <nl_geterror>", kind kExists
// for NLE_EXIST, kNotFound for NLE_OBJ_NOTFOUND and NLE_NODEV.
Error NlError(int err, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
inline bool IsExists(int err) { return err == -NLE_EXIST || err == NLE_EXIST; }
inline bool IsNotFound(int err) {
  return err == -NLE_OBJ_NOTFOUND || err == -NLE_NODEV || err == NLE_OBJ_NOTFOUND ||
         err == NLE_NODEV;
}

// A connected NETLINK_ROUTE socket in the net namespace netns_fd (-1: the calling thread's). The
// socket stays in that namespace whichever thread uses it later.
Result<Sock> ConnectRoute(int netns_fd = -1);

}  // namespace godwit::nl
