// The per-process restore steps, in order. They run from outside, in the coordinator, on a
// restored process that is ptrace-stopped and still holds a copy of the coordinator's memory
// until "mm" replaces it. Each kind of state is one step in its own file; a new kind adds one line
// to the table in restore/steps.cc.
#pragma once

#include <vector>

#include "restore/context.h"

namespace godwit::restore {

struct RestoreStep {
  const char* name;
  Result<void> (*fn)(RestoreContext& ctx, ProcessRestore& p);
  // The last step that opens image files inside the process (through RestoreContext::images_fd,
  // a restored container's view of the images directory): the fd is closed there after it.
  bool last_image_reader = false;
};

const std::vector<RestoreStep>& ProcessSteps();
// Runs the steps, in order, for every live process of ctx (seized, with a remote channel).
Result<void> RunProcessSteps(RestoreContext& ctx);

Result<void> RestoreMm(RestoreContext& ctx, ProcessRestore& p);       // mm.cc
Result<void> RestoreThreads(RestoreContext& ctx, ProcessRestore& p);  // threads.cc
// Process state (pstate*.cc).
Result<void> RestoreSeccomp(RestoreContext& ctx, ProcessRestore& p);      // filters
// Before "creds": the filters of threads whose dumped creds could not install them (neither
// no_new_privs nor CAP_SYS_ADMIN), when the seize suspended seccomp (restore/pstate_seccomp.cc).
Result<void> RestoreSeccompEarly(RestoreContext& ctx, ProcessRestore& p);
Result<void> RestoreSigactions(RestoreContext& ctx, ProcessRestore& p);
Result<void> RestoreSigaltstack(RestoreContext& ctx, ProcessRestore& p);
Result<void> RestoreRlimits(RestoreContext& ctx, ProcessRestore& p);
Result<void> RestoreFs(RestoreContext& ctx, ProcessRestore& p);          // cwd, root, umask
Result<void> RestorePersonality(RestoreContext& ctx, ProcessRestore& p);
Result<void> RestoreComm(RestoreContext& ctx, ProcessRestore& p);
Result<void> RestoreSched(RestoreContext& ctx, ProcessRestore& p);       // timer slack
// Policy, nice, priority, affinity: set from outside once nothing is injected any more (just
// before the tree resumes), so that the injections run at the priority the tree inherited from
// the restore (a migration's blackout runs at nice -20), not at the tree's own.
Result<void> ApplySchedAttrs(RestoreContext& ctx, ProcessRestore& p);
Result<void> RestoreProcFlags(RestoreContext& ctx, ProcessRestore& p);   // subreaper, THP
Result<void> RestorePosixTimers(RestoreContext& ctx, ProcessRestore& p);  // create, disarmed
Result<void> RestoreCreds(RestoreContext& ctx, ProcessRestore& p);
Result<void> RestoreAfterCreds(RestoreContext& ctx, ProcessRestore& p);  // pdeathsig, dumpable
Result<void> RestoreTimers(RestoreContext& ctx, ProcessRestore& p);      // arm all timers
Result<void> RestoreSignals(RestoreContext& ctx, ProcessRestore& p);  // core.cc: pending signals
Result<void> RestoreCore(RestoreContext& ctx, ProcessRestore& p);     // core.cc: regs, last

}  // namespace godwit::restore
