// The tree's cgroups (ProcessEntry.cgroups): each restored process goes back into the cgroup it
// was in, in every hierarchy mounted here (CRIU's default, --manage-cgroups=soft: a missing
// cgroup directory is made). A container's restore leaves cgroups to its runtime.
#pragma once

#include "common/result.h"
#include "restore/context.h"

namespace godwit::restore {

// Before the memory steps: pages are charged to the cgroup the process is in when they are
// made. Processes must exist (forked, seized); threads come later and follow their process.
Result<void> JoinCgroups(RestoreContext& ctx);
// Once the threads exist (they start in their process's cgroups): each thread recorded in
// cgroups of its own (ProcessEntry.thread_cgroups) goes there, through the hierarchy's tasks
// file (v1) or cgroup.threads (cgroup2, a threaded group).
Result<void> JoinThreadCgroups(RestoreContext& ctx);

}  // namespace godwit::restore
