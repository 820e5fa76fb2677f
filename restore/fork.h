// Forking the tree, from the coordinator's side: the engine's own fds (report pipe, images
// directory, user namespace) on numbers no restored process uses, the files prepared, the root
// cloned (by a short-lived intermediate when detached), the container hooks' handshake with the
// root, and a report from every process that it is forked and waits to be seized. Until
// Release(), destroying a TreeFork kills and reaps every process it created: a failed restore
// leaves nothing behind.
#pragma once

#include <sys/types.h>

#include <vector>

#include "common/unique_fd.h"
#include "restore/after_clone.h"
#include "restore/context.h"

namespace godwit::restore {

class TreeFork {
 public:
  // ctx: loaded images, shared memory prepared, ctx.fds loaded (or null).
  explicit TreeFork(RestoreContext& ctx) : ctx_(ctx) {}
  ~TreeFork();
  TreeFork(const TreeFork&) = delete;
  TreeFork& operator=(const TreeFork&) = delete;

  // Before the first fork: the engine's fds, the files prepared (without container hooks), the
  // plan of who forks whom, and every pid checked free.
  Result<void> Prepare();
  // Forks the tree; returns once every live process has reported ready (or the first failure).
  // Sets ctx.root_host_pid and, in a tree with its own pid namespace, each process's host pid.
  Result<void> Run();
  // The report pipe's fd number in every restored process (the coordinator closes it there once
  // the process is seized).
  int report_fd() const { return report_fd_; }
  // The tree runs on its own from now on: nothing is killed when this goes away.
  void Release() { released_ = true; }

 private:
  Result<void> ForkRoot();
  pid_t CloneRoot(uint64_t flags);
  Result<void> Handshake();
  Result<void> LockRootNetwork();
  Result<void> WaitReports();

  RestoreContext& ctx_;
  ChildEnv env_{};
  int base_fd_ = 0;
  int report_fd_ = -1;
  UniqueFd report_rd_, report_wr_;
  UniqueFd images_fd_;  // at report_fd + 1 with container hooks
  UniqueFd userns_fd_;  // at report_fd - 1 with a user namespace
  UniqueFd up_rd_, up_wr_, down_rd_, down_wr_;  // the container hooks' handshake
  bool hooked_ = false;
  std::vector<pid_t> created_;  // host pids to kill on failure
  bool forked_ = false, released_ = false;
};

}  // namespace godwit::restore
