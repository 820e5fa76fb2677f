// Taking hold of the forked tree and letting it go: every process seized (ptrace) with a
// remote-syscall channel into it, and at the end every thread detached at once, so the tree
// resumes together.
#pragma once

#include <sys/types.h>

#include <vector>

#include "restore/context.h"

namespace godwit::restore {

// Seizes every live process (it waits in pause() after its report), gives each a scratch area
// and a remote::Remote, and closes its copy of the report pipe (report_fd).
Result<void> SeizeTree(RestoreContext& ctx, int report_fd);

// Detaches every thread of every process. Threads about to re-issue an interrupted call are first
// stepped into it; a process dumped in a group stop gets its stop signal queued first. Returns
// the pids of those (to WaitGroupStopped for once they run). An error means nothing was detached.
Result<std::vector<pid_t>> ResumeTree(RestoreContext& ctx);

// Every thread of each pid in a group stop ('T'), polled with a bounded deadline; a process that
// does not stop in time is logged, not failed (the tree runs already).
void WaitGroupStopped(const std::vector<pid_t>& pids);

}  // namespace godwit::restore
