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
};

const std::vector<RestoreStep>& ProcessSteps();

Result<void> RestoreMm(RestoreContext& ctx, ProcessRestore& p);       // mm.cc
// mm.cc: an empty object of the dumped shared memory object's kind and size, before the tree is
// forked (shared anonymous memory is a real one again: "/dev/zero (deleted)" in the maps).
Result<UniqueFd> NewShmemObject(const img::ShmemObject& o, const char* memfd_name);
Result<void> RestoreThreads(RestoreContext& ctx, ProcessRestore& p);  // threads.cc
// Process state (pstate*.cc).
Result<void> RestoreSeccomp(RestoreContext& ctx, ProcessRestore& p);      // filters
Result<void> RestoreSigactions(RestoreContext& ctx, ProcessRestore& p);
Result<void> RestoreSigaltstack(RestoreContext& ctx, ProcessRestore& p);
Result<void> RestoreRlimits(RestoreContext& ctx, ProcessRestore& p);
Result<void> RestoreFs(RestoreContext& ctx, ProcessRestore& p);          // cwd, root, umask
Result<void> RestorePersonality(RestoreContext& ctx, ProcessRestore& p);
Result<void> RestoreComm(RestoreContext& ctx, ProcessRestore& p);
Result<void> RestoreSched(RestoreContext& ctx, ProcessRestore& p);       // + timer slack
Result<void> RestoreProcFlags(RestoreContext& ctx, ProcessRestore& p);   // subreaper, THP
Result<void> RestorePosixTimers(RestoreContext& ctx, ProcessRestore& p);  // create, disarmed
Result<void> RestoreCreds(RestoreContext& ctx, ProcessRestore& p);
Result<void> RestoreAfterCreds(RestoreContext& ctx, ProcessRestore& p);  // pdeathsig, dumpable
Result<void> RestoreTimers(RestoreContext& ctx, ProcessRestore& p);      // arm all timers
Result<void> RestoreSignals(RestoreContext& ctx, ProcessRestore& p);  // core.cc: pending signals
Result<void> RestoreCore(RestoreContext& ctx, ProcessRestore& p);     // core.cc: regs, last

}  // namespace godwit::restore
