// Taking a userfaultfd for another process's address space.
//
// A userfaultfd belongs to the mm of the process that creates it, so it must be created inside
// the target: one injected userfaultfd() call (common/remote.h). The coordinator then takes the
// fd over with pidfd_getfd and closes the target's copy, so the target's fd table is as it was,
// whatever happens. From then on everything is done from outside: UFFDIO_API, REGISTER, COPY,
// WRITEPROTECT on our fd act on the target's memory (dump/dirty.cc: write-protect tracking for
// pre-copy; restore/pages.cc: filling memory with UFFDIO_COPY).
#pragma once

#include "common/remote.h"
#include "common/result.h"
#include "common/unique_fd.h"

namespace godwit::uffd {

// userfaultfd(flags) in r's process (its main thread), taken over. The call refused inside the
// target (ENOSYS, EPERM from vm.unprivileged_userfaultfd or a seccomp filter) is kUnsupported with
// that errno: the callers fall back or report it.
Result<UniqueFd> TakeFromTarget(remote::Remote& r, int flags);

}  // namespace godwit::uffd
