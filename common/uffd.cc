#include "common/uffd.h"

#include <sys/syscall.h>

#include <cstring>

#include "common/pidfd.h"

namespace godwit::uffd {

Result<UniqueFd> TakeFromTarget(remote::Remote& r, int flags) {
  const uint64_t args[6] = {static_cast<uint64_t>(flags)};
  ASSIGN_OR_RETURN(long tfd, r.RawSyscallIn(r.tid(), SYS_userfaultfd, args));
  if (tfd < 0)
    return MakeError(ErrorKind::kUnsupported, static_cast<int>(-tfd), "userfaultfd in pid %d",
                     r.pid());
  // The target's copy is closed whether or not ours could be taken.
  Result<UniqueFd> ours = pidfd::TakeFd(r.pid(), static_cast<int>(tfd));
  TRY_CTX(r.Syscall(SYS_close, static_cast<uint64_t>(tfd)), "close the userfaultfd in pid %d",
          r.pid());
  if (!ours.ok()) return std::move(ours.error().wrap("take the userfaultfd"));
  return std::move(*ours);
}

}  // namespace godwit::uffd
