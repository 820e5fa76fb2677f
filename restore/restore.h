// `godwit restore`: recreate a dumped process tree with the same pids.
//
// Order (restore.cc, one line per step, each in its own file):
//   open and verify the images (inventory, CPU features) -> load.cc: pstree, core, mm, pagemaps
//   of every process; the tree checked (sessions.cc, nested pid namespaces) -> shmem.cc: shared
//   memory objects made again -> load.cc: files (FdRestorer) -> fork.cc: the engine's fds, files
//   prepared, every pid checked free, the root clone3'd with set_tid; after_clone.cc: each
//   restored process calls setsid if it led a session, clone3s its own children (and zombies,
//   which exit with their status), installs its fds, reports ready and waits -> attach.cc: every
//   process seized -> sessions.cc: process groups by injection -> steps.cc: the per-process
//   steps (mm, threads, process state, core) -> files: Finalize -> attach.cc: every thread of
//   every process detached at once: the tree resumes together.
// Any failure kills every process created so far (TreeFork).
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
