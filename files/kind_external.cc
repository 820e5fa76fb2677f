// Descriptions from outside the tree (a shell job's terminal, pipes or sockets the user named):
// the dump records a key; restore takes the coordinator's --inherit-fd fd for that key, or for a
// shell job's terminal the coordinator's own terminal.
#include <fcntl.h>
#include <unistd.h>

#include "files/kind.h"

namespace godwit::files {

Result<void> DumpExternal(FdDumpContext& ctx, const Probe& p, img::FileEntry& e) {
  // Externals are decided once the whole tree is known (FdDumper::Finish), never by Classify.
  return MakeError(ErrorKind::kGeneric, 0, "external descriptions are not dumped directly");
}

Result<UniqueFd> OpenExternal(FdRestoreContext& ctx, const img::FileEntry& e) {
  const std::string& key = e.external().key();
  for (const auto& [fd, k] : ctx.opts().inherit_fds) {
    if (k != key) continue;
    int d = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (d < 0) return Errno("--inherit-fd fd[%d]:%s", fd, key.c_str());
    return UniqueFd(d);
  }
  if (key.rfind("stdio:", 0) == 0 && ctx.opts().shell_job) {
    // The root's stdio pipe from outside (FdDumper): the coordinator's fd of that number, the
    // same open description (a dup, so the peer, e.g. conmon, keeps reading it).
    int n = atoi(key.c_str() + 6);
    int d = n >= 0 && n <= 2 ? fcntl(n, F_DUPFD_CLOEXEC, 0) : -1;
    if (d < 0)
      return MakeError(ErrorKind::kNotFound, errno,
                       "shell job: the images hold %s (%s) but restore's fd %d is not open",
                       key.c_str(), e.external().link().c_str(), n);
    return UniqueFd(d);
  }
  if (key == "tty" && ctx.opts().shell_job) {
    for (int fd = 0; fd <= 2; fd++) {
      if (!isatty(fd)) continue;
      // The terminal's own description; flags are set by the caller.
      ASSIGN_OR_RETURN(UniqueFd t, Reopen(fd, e.flags() | O_NOCTTY));
      return t;
    }
    return MakeError(ErrorKind::kNotFound, 0, "shell job: the images hold a terminal (%s) but "
                     "restore has none on fds 0-2", e.external().link().c_str());
  }
  return MakeError(ErrorKind::kNotFound, 0, "external %s (%s): pass --inherit-fd fd[N]:%s%s",
                   key.c_str(), e.external().link().c_str(), key.c_str(),
                   key == "tty" ? " or --shell-job" : "");
}

}  // namespace godwit::files
