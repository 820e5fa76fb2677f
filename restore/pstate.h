// Restore of process state besides tree, registers, memory and fds (proto/pstate.proto). Each
// kind is its own restore step (declared in restore/steps.h, ordered in restore/steps.cc); they
// all read pstate-<pid>.img through LoadPstate.
#pragma once

#include "proto/pstate.pb.h"
#include "restore/context.h"

namespace godwit::restore {

// pstate-<pid>.img of a restored process (the image is small: read again by every step).
Result<img::ProcessState> LoadPstate(const RestoreContext& ctx, const ProcessRestore& p);

// The dumped state of thread tid (an image error if missing).
Result<const img::ThreadState*> FindThread(const img::ProcessState& ps, pid_t tid);

}  // namespace godwit::restore
