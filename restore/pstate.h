// Restore of process state besides tree, registers, memory and fds (proto/pstate.proto). Each
// kind is its own restore step (declared in restore/steps.h, ordered in restore/steps.cc); they
// all read pstate-<pid>.img through LoadPstate.
#pragma once

#include "proto/pstate.pb.h"
#include "restore/context.h"

namespace godwit::restore {

// pstate-<pid>.img of a restored process, checked against core-<pid>.img (same threads): read
// and checked by the first step that asks, kept in p for the others (~14 steps a process each
// opened, read and parsed it again).
Result<const img::ProcessState*> LoadPstate(const RestoreContext& ctx, const ProcessRestore& p);

}  // namespace godwit::restore
