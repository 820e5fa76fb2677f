#include "container/ns_here.h"

#include <sched.h>

#include "common/log.h"
#include "container/ns.h"

namespace godwit::container {

Result<void> RunHere(int ns_fd, int nstype, const std::function<Result<void>()>& fn) {
  const char* name = nstype == CLONE_NEWUTS   ? "uts"
                     : nstype == CLONE_NEWIPC ? "ipc"
                     : nstype == CLONE_NEWNET ? "net"
                                              : nullptr;
  if (!name) return MakeError(ErrorKind::kUsage, EINVAL, "RunHere: namespace type 0x%x", nstype);
  ASSIGN_OR_RETURN(UniqueFd own, OpenNamespace(0, name));
  if (::setns(ns_fd, nstype) < 0) return Errno("setns(fd %d, %s)", ns_fd, name);
  Result<void> r = fn();
  if (::setns(own.get(), nstype) < 0) {
    PLOG_ERROR("back to our own %s namespace", name);
    return Errno("setns back to our own %s namespace (this thread stays in the container's)",
                 name);
  }
  return r;
}

}  // namespace godwit::container
