// Freezing a process tree with ptrace and collecting its shape (pids, parents, groups, sessions,
// threads, zombies).
#pragma once

#include <sys/types.h>

#include <chrono>

#include <vector>

#include "common/result.h"
#include "proto/pstree.pb.h"

namespace godwit::dump {

struct FrozenTree {
  img::ProcessTree tree;
  std::vector<pid_t> seized;  // every thread we seized, in seize order
};

// Seizes every thread of every process of the tree rooted at root (walking /proc/PID/task and
// .../children until nothing new appears) and records the tree. On error, whatever was seized is
// in out->seized (the caller thaws it). A zombie cannot be seized: its state comes from /proc.
Result<void> FreezeTree(pid_t root, FrozenTree* out);

// Detaches every seized thread: the tree resumes where it was.
void ThawTree(const FrozenTree& t);
// Detaches every seized thread where it stopped, without stepping any into its re-issued call:
// for a tree whose cgroup the caller froze while every thread was still ptrace-stopped (a
// ptrace stop counts as frozen). Each detached thread goes from its stop (in the kernel's signal
// path) straight into the freezer's trap: it executes neither an instruction nor a syscall
// until the cgroup is thawed. Then it runs its interrupted call again from the syscall
// instruction (Remote::Release set that up).
void DetachFrozen(const FrozenTree& t);
// SIGKILLs every live process of the tree, then detaches, and returns once each is dead (a
// zombie or gone; at most 10 s): whoever restores the same pids next finds none still exiting.
// killed (optional): when the kill was sent and the threads let go, before that wait (which is
// the kernel freeing the tree's memory: ~75 ms a GiB here).
void KillTree(const FrozenTree& t,
              std::chrono::steady_clock::time_point* killed = nullptr);

}  // namespace godwit::dump
