// The code that runs in the restored processes between their clone3 and the moment the
// coordinator seizes them (after_clone.cc; its rules are stated there), and the clone3 that
// creates them with their pids.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <vector>

#include "restore/context.h"
#include "restore/sessions.h"

namespace godwit::restore {

// What a restored process tells the coordinator through the report pipe: one write each, smaller
// than PIPE_BUF, so reports of processes writing at once never interleave.
struct Report {
  int32_t pid;
  int32_t err;  // 0: ready; else an errno and msg names the step
  char msg[120];
};

// Everything the forked processes need, prepared by the coordinator before the first clone3.
struct ChildEnv {
  RestoreContext* ctx;
  int report_fd;                  // the report pipe's write end (userns fd at report_fd - 1)
  std::vector<int> foreign_fds;   // the coordinator's own fds above report_fd (not prepared)
  std::vector<ChildOrder> forks;  // per tree index (restore/sessions.h)
  // Set by a parent right before it clones a child that shares its fd table (CLONE_FILES): the
  // write end of a pipe on which the child says it has forked its own children (they copy the
  // table while the prepared fds are still in it), so the parent installs the table only then.
  int files_sync = -1;
};

// Forks e with its pid in every pid namespace from level `skip` in (innermost first in set_tid;
// the outer levels get what the kernel gives); the first process of a nested namespace (pid 1
// there) creates it. In a tree with its own pid namespace (inner_level > 0) a taken host pid is
// left to the kernel (a copy next to its running original): only the pids inside must be the
// dumped ones. parent_levels: how many pid namespaces the parent (or the coordinator) is in.
// Returns what clone3 returns (0 in the child). cgroup_fd >= 0: born in that cgroup2 directory
// (Clone3WithPids).
pid_t Clone3Tree(const img::ProcessEntry& e, int parent_levels, int inner_level,
                 uint64_t extra_flags = 0, int cgroup_fd = -1);

// The restored process at tree index idx, right after its clone3: forks its children (and
// zombies), leads its session, installs its fds, joins the user namespace, reports ready and
// waits to be seized. Never returns.
[[noreturn]] void ChildMain(ChildEnv& env, int idx);

// The root task's side of the container hooks (RestoreOptions::root_*), before ChildMain: runs
// root_enter_cgroup and root_inside, waits for the coordinator's go (root_outside done),
// unshares its cgroup namespace and prepares the files inside the container's namespaces. up:
// root -> coordinator (two Reports: inside done, files prepared); down: the go byte. Exits on
// failure.
void RootHandshake(RestoreContext& ctx, pid_t pid, int up, int down, int base_fd);

}  // namespace godwit::restore
