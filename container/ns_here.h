// Entering a container's uts, ipc or net namespace on the calling thread.
#pragma once

#include <functional>

#include "common/result.h"

namespace godwit::container {

// Runs fn on the calling thread inside the namespace ns_fd (nstype CLONE_NEWUTS, CLONE_NEWIPC or
// CLONE_NEWNET: namespaces one thread of a multi-threaded process may enter), then switches the
// thread back to the namespace it was in. RunInNamespace (ns.h) gives fn a fresh thread instead:
// its creation and, on a busy machine, milliseconds of waiting for a CPU, all of it while the
// container is frozen (checkpoint) or not yet running (restore). fn must not start threads that
// expect the caller's namespace. If switching back fails (it cannot without losing
// CAP_SYS_ADMIN meanwhile) the error says so: the thread is then still in the other namespace.
Result<void> RunHere(int ns_fd, int nstype, const std::function<Result<void>()>& fn);

}  // namespace godwit::container
