#include "dump/dump.h"

#include <signal.h>
#include <sys/stat.h>

#include <chrono>

#include "common/log.h"
#include "common/proc.h"
#include "common/scope_exit.h"
#include "dump/pages.h"
#include "dump/steps.h"
#include "dump/tree.h"
#include "files/files.h"

namespace godwit::dump {
namespace {

using Clock = std::chrono::steady_clock;
double Ms(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

}  // namespace

Result<remote::Remote*> DumpContext::RemoteFor(ProcessDump& p) {
  if (!p.remote) {
    ASSIGN_OR_RETURN(p.remote, remote::Remote::Create(p.pid, p.pid, {}));
  }
  return p.remote.get();
}

Result<DumpStats> Dump(const DumpOptions& opts) {
  auto t_start = Clock::now();
  if (opts.pid <= 0) return MakeError(ErrorKind::kUsage, 0, "dump: no --pid");
  if (opts.pid == getpid()) return MakeError(ErrorKind::kUsage, 0, "dump: cannot dump myself");
  {
    auto st = proc::ReadStat(opts.pid);
    if (!st.ok()) return MakeError(ErrorKind::kNotFound, ESRCH, "no process %d", opts.pid);
  }
  DumpContext ctx;
  ctx.opts = opts;
  ASSIGN_OR_RETURN(ctx.zero_pfn, ZeroPagePfn());
  ASSIGN_OR_RETURN(std::unique_ptr<images::Sink> sink, images::OpenDirSink(opts.images_dir, true));
  ctx.sink = sink.get();

  FrozenTree frozen;
  bool finished = false;
  std::unique_ptr<files::FdDumper> fds;
  ScopeExit on_error([&] {
    if (finished) return;
    for (auto& p : ctx.procs)
      if (p->remote) {
        auto r = p->remote->Release();
        if (!r.ok()) LOG_WARN("release pid %d: %s", p->pid, r.error().to_string().c_str());
      }
    if (fds) fds->Resume();
    ThawTree(frozen);
    sink->Abort();
  });

  auto t_freeze = Clock::now();
  TRY_CTX(FreezeTree(opts.pid, &frozen), "freeze tree of %d", opts.pid);
  auto t_frozen = Clock::now();
  ctx.stats.freeze_ms = Ms(t_freeze, t_frozen);
  ctx.tree = frozen.tree;
  TRY(images::WriteImage(*sink, "pstree.img", ctx.tree));

  files::DumpOptions fo;
  fo.leave_running = opts.leave_running;
  fo.tcp_established = opts.tcp_established;
  fo.shell_job = opts.shell_job;
  fo.external = opts.external;
  ASSIGN_OR_RETURN(fds, files::FdDumper::Create(*sink, fo));
  ctx.fds = fds.get();

  for (const auto& e : ctx.tree.processes()) {
    ctx.stats.processes++;
    if (e.zombie()) {
      ctx.stats.zombies++;
      continue;
    }
    auto p = std::make_unique<ProcessDump>();
    p->pid = e.pid();
    p->entry = &e;
    ctx.procs.push_back(std::move(p));
  }
  for (auto& p : ctx.procs) {
    for (const auto& step : ProcessSteps()) {
      LOG_DEBUG("dump pid %d: %s", p->pid, step.name);
      TRY_CTX(step.fn(ctx, *p), "dump pid %d: %s", p->pid, step.name);
    }
  }
  if (ctx.fds) {
    TRY_CTX(ctx.fds->Finish(), "dump files");
    ctx.stats.fd_counts = ctx.fds->Counts();
  }
  {
    ASSIGN_OR_RETURN(images::ImageWriter w, images::ImageWriter::Create(*sink, "shmem.img"));
    for (const auto& o : ctx.shmem) TRY(w.Write(o));
    TRY(w.Close());
  }
  for (auto& p : ctx.procs) {
    if (!p->remote) continue;
    ctx.stats.remote_calls += p->remote->calls();
    TRY_CTX(p->remote->Release(), "pid %d: release remote", p->pid);
    p->remote.reset();
  }
  img::Inventory inv = images::NewInventory();
  TRY_CTX(sink->Finish(std::move(inv)), "write inventory");
  finished = true;
  if (opts.leave_running) {
    if (fds) fds->Resume();
    ThawTree(frozen);
  } else {
    KillTree(frozen);
  }
  auto t_end = Clock::now();
  ctx.stats.frozen_ms = Ms(t_freeze, t_end);
  ctx.stats.total_ms = Ms(t_start, t_end);
  return ctx.stats;
}

}  // namespace godwit::dump
