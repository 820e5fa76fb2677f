#include "common/pidfd.h"

#include <sys/syscall.h>
#include <unistd.h>

namespace godwit::pidfd {

Result<UniqueFd> Open(pid_t pid) {
  int fd = static_cast<int>(syscall(SYS_pidfd_open, pid, 0));
  if (fd < 0)
    return MakeError(errno == ESRCH ? ErrorKind::kNotFound : ErrorKind::kGeneric, errno,
                     "pidfd_open %d", pid);
  return UniqueFd(fd);
}

Result<UniqueFd> GetFd(int pidfd, int fd, pid_t pid) {
  int got = static_cast<int>(syscall(SYS_pidfd_getfd, pidfd, fd, 0));
  if (got < 0) return Errno("pidfd_getfd pid %d fd %d", pid, fd);
  return UniqueFd(got);
}

Result<UniqueFd> TakeFd(pid_t pid, int fd) {
  ASSIGN_OR_RETURN(UniqueFd pfd, Open(pid));
  return GetFd(pfd.get(), fd, pid);
}

}  // namespace godwit::pidfd
