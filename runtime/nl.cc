#include "runtime/nl.h"

#include <cstdarg>

#include "common/netns.h"

namespace godwit::nl {

Error NlError(int err, const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  std::string ctx = VStrFormat(fmt, ap);
  va_end(ap);
  int e = err < 0 ? -err : err;
  ErrorKind kind = ErrorKind::kGeneric;
  if (e == NLE_EXIST) kind = ErrorKind::kExists;
  if (e == NLE_OBJ_NOTFOUND || e == NLE_NODEV) kind = ErrorKind::kNotFound;
  return MakeError(kind, 0, "%s: %s", ctx.c_str(), nl_geterror(e));
}

Result<Sock> ConnectRoute(int netns_fd) {
  Sock sock;
  TRY(netns::RunHere(netns_fd, CLONE_NEWNET, [&]() -> Result<void> {
    sock.reset(nl_socket_alloc());
    if (!sock) return MakeError(ErrorKind::kGeneric, ENOMEM, "nl_socket_alloc");
    if (int err = nl_connect(sock.get(), NETLINK_ROUTE); err < 0)
      return NlError(err, "connect rtnetlink");
    return Ok();
  }));
  return sock;
}

}  // namespace godwit::nl
