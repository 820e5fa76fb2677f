// The restore driver: named steps in order, each in its own file (see restore.h for the whole
// sequence). Nothing else happens here.
#include "restore/restore.h"

#include <sys/wait.h>

#include "common/fs.h"
#include "common/log.h"
#include "common/scope_exit.h"
#include "common/timing.h"
#include "files/files.h"
#include "restore/attach.h"
#include "restore/cgroups.h"
#include "restore/cow.h"
#include "restore/fork.h"
#include "restore/lazy.h"
#include "restore/load.h"
#include "restore/sessions.h"
#include "restore/shmem.h"
#include "restore/steps.h"

namespace godwit::restore {

Result<RestoreStats> Restore(const RestoreOptions& opts) {
  timing::PhaseTimer timer;
  RestoreContext ctx;
  ctx.opts = opts;
  images::ReadOptions read = opts.read;
  // Page data is checked chunk by chunk as it is filled (restore/pages.cc), not in a whole-file
  // pass before: that pass was a tenth of a full restore, on one core.
  read.chunk_checked_blobs = true;
  if (opts.lazy) {
    ctx.lazy = std::make_shared<LazyPager>(opts.lazy_background, opts.lazy_pace);
    ctx.lazy->DiscardConsumed(opts.lazy_discard);
  }
  ASSIGN_OR_RETURN(images::ImageSet set, images::ImageSet::Open(opts.images_dir, read));
  ctx.images = &set;
  TRY(images::CheckCpuFeatures(set.inventory()));
  TRY(LoadImages(ctx));    // load.cc
  LOG_DEBUG("restore: images loaded");
  TRY(CheckTree(ctx));     // load.cc, sessions.cc
  TRY(PrepareShmem(ctx));  // shmem.cc: every shared memory object made again and filled
  LOG_DEBUG("restore: tree checked, %zu shared memory object(s)", ctx.shmem.size());
  ASSIGN_OR_RETURN(std::unique_ptr<files::FdRestorer> fds, LoadFiles(ctx));
  ctx.fds = fds.get();
  LOG_DEBUG("restore: files loaded");

  // Declared after fds and set: on failure it kills the tree before they go away.
  TreeFork fork(ctx);  // fork.cc, after_clone.cc
  TRY(fork.Prepare());
  // Private memory parents share with their children, mapped here to be inherited (cow.h).
  ScopeExit drop_premaps([&] { DropPremaps(ctx); });
  TRY(PremapInherited(ctx));
  timer.Skip();
  TRY(fork.Run());
  DropPremaps(ctx);
  ctx.stats.fork_ms = timer.Lap("fork");
  LOG_DEBUG("restore: tree forked");

  TRY(SeizeTree(ctx, fork.report_fd()));  // attach.cc
  GroupStandIns stand_ins;                 // until the tree runs
  TRY(JoinProcessGroups(ctx, &stand_ins));  // sessions.cc
  TRY(JoinCgroups(ctx));                    // cgroups.cc: before memory is charged
  LOG_DEBUG("restore: seized, groups and cgroups joined");
  TRY(RunProcessSteps(ctx));                // steps.cc: mm, threads, process state, core
  TRY(JoinThreadCgroups(ctx));              // cgroups.cc: threads that were moved alone
  ctx.last_pid.reset();  // its helper leaves the tree's pid namespace before the tree runs
  if (ctx.fds) TRY_CTX(ctx.fds->Finalize(), "files finalize");
  LOG_DEBUG("restore: files finalized");
  for (auto& p : ctx.procs) TRY_CTX(ApplySchedAttrs(ctx, *p), "restore pid %d: sched", p->pid);
  if (!opts.pid_file.empty())
    TRY(fs::WriteFile(opts.pid_file, StrFormat("%d", ctx.root_host_pid), true));
  ASSIGN_OR_RETURN(std::vector<pid_t> stopped, ResumeTree(ctx));  // attach.cc: all at once
  fork.Release();
  LOG_DEBUG("restore: tree resumed");
  // Return once they are stopped: whoever acts on the restored tree next sees them stopped.
  WaitGroupStopped(stopped);
  ctx.stats.root_pid = ctx.root_host_pid;
  if (ctx.lazy && ctx.lazy->active()) {
    ctx.stats.lazy_bytes = ctx.lazy->owed_bytes();
    ctx.stats.pager = ctx.lazy;
    ctx.lazy->Go();  // the tree runs: the rest of its pages now
  }
  ctx.stats.total_ms = timer.TotalMs();
  return ctx.stats;
}

Result<int> WaitRoot(pid_t root) {
  for (;;) {
    int st = 0;
    pid_t w = waitpid(-1, &st, 0);
    if (w < 0) {
      if (errno == EINTR) continue;
      return Errno("wait for restored root %d", root);
    }
    if (w != root) continue;
    if (WIFEXITED(st)) return WEXITSTATUS(st);
    if (WIFSIGNALED(st)) return 128 + WTERMSIG(st);
  }
}

}  // namespace godwit::restore
