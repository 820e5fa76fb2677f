// `godwit restore`: recreate a dumped process tree with the same pids.
//
// Order (restore.cc): open and verify the images (inventory, CPU features) -> load pstree, core,
// mm, pagemap of every process -> shared memory objects into memfds -> files: Prepare -> check
// every pid is free -> fork the tree: the coordinator clone3s the root with set_tid, each restored
// process calls setsid if it led a session, clone3s its own children (and zombies, which exit with
// their status), installs its fds, reports ready and waits -> the coordinator seizes every process,
// sets process groups by injection, and runs the steps of restore/steps.cc per process ->
// files: Finalize -> detach every thread of every process at once: the tree resumes together.
// Any failure kills every process created so far.
#pragma once

#include "restore/context.h"

namespace godwit::restore {

// Restores the tree; returns when it runs (detached from ptrace). stats->root_pid is its root, a
// child of the calling process; with opts.detach (and no container hooks) a child of the caller's
// reaper instead (its nearest child subreaper, or init), so the root's parent-death signal is not
// fired by the caller's exit.
Result<RestoreStats> Restore(const RestoreOptions& opts);

// Waits for the restored root (reaping any other child meanwhile); returns an exit code: its exit
// status, or 128 + the signal that killed it.
Result<int> WaitRoot(pid_t root);

}  // namespace godwit::restore
