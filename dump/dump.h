// `godwit dump`: freeze a process tree, write its state as images, then kill it or let it run.
//
// Order (dump.cc): check the pid -> open the sink -> freeze (seize every thread) -> pstree.img ->
// per process the steps of dump/steps.cc -> files.img, shmem.img -> release the remote channels ->
// inventory (the checkpoint is complete only now) -> kill the tree, or thaw it (--leave-running).
// On any failure the sink is aborted (no inventory) and the tree thawed untouched.
#pragma once

#include "dump/context.h"

namespace godwit::dump {

Result<DumpStats> Dump(const DumpOptions& opts);

}  // namespace godwit::dump
