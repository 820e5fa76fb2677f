// pidfds: a handle on a process that cannot be recycled under us, and pidfd_getfd, the way godwit
// takes a copy of another process's fd (the same open file description) without its help. Errors
// name the pid and the fd.
#pragma once

#include <sys/types.h>

#include "common/result.h"
#include "common/unique_fd.h"

namespace godwit::pidfd {

// pidfd_open(pid, 0).
Result<UniqueFd> Open(pid_t pid);
// pidfd_getfd(pidfd, fd, 0): our copy of fd of the process pidfd refers to (close-on-exec).
// pid is only for the error message.
Result<UniqueFd> GetFd(int pidfd, int fd, pid_t pid);
// Both in one: our copy of fd of pid.
Result<UniqueFd> TakeFd(pid_t pid, int fd);

}  // namespace godwit::pidfd
