#include "dump/dump.h"

#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include <chrono>

#include "common/log.h"
#include "common/proc.h"
#include "common/scope_exit.h"
#include "dump/dirty.h"
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

// Pre-copy rounds while the tree runs. Round 0 copies every present page; later rounds copy what
// was written since the previous round. Processes that appear later are dumped whole at the end.
Result<void> PreRounds(DumpContext& ctx) {
  auto t0 = Clock::now();
  FrozenTree f;
  auto frozen = FreezeTree(ctx.opts.pid, &f);
  Result<void> res = frozen;
  if (res.ok()) {
    res = [&]() -> Result<void> {
      for (const auto& e : f.tree.processes()) {
        if (e.zombie()) continue;
        ASSIGN_OR_RETURN(auto r, remote::Remote::Create(e.pid(), e.pid(), {}));
        ASSIGN_OR_RETURN(auto maps, proc::ReadMaps(e.pid()));
        maps = WithoutRange(maps, r->area_start(), r->area_end());
        auto t = DirtyTracker::Start(e.pid(), r.get(), maps);
        TRY(r->Release());
        if (!t.ok()) return std::move(t.error().wrap(StrFormat("pid %d: dirty tracking", e.pid())));
        ctx.trackers[e.pid()] = std::move(*t);
      }
      return Ok();
    }();
  }
  ThawTree(f);
  TRY_CTX(res, "pre-dump");
  for (int round = 0; round < ctx.opts.pre_rounds; ++round) {
    uint64_t round_bytes = 0;
    for (auto& [pid, tracker] : ctx.trackers) {
      std::vector<PageRange> runs;
      if (round == 0) {
        ASSIGN_OR_RETURN(auto maps, proc::ReadMaps(pid));
        ASSIGN_OR_RETURN(auto src, PresentPages::Open(pid, ctx.zero_pfn));
        PageCounts counts;
        for (const auto& m : maps) {
          if (m.shared || !(m.prot & PROT_READ) || !tracker->Covers(m.start, m.end)) continue;
          bool file = m.inode != 0 && !m.path.empty() && m.path[0] == '/';
          TRY(src->Collect(m.start, m.end, file, &runs, &counts));
        }
      } else {
        TRY_CTX(tracker->CollectDirty(&runs), "pre-dump round %d pid %d", round, pid);
      }
      uint64_t total = 0;
      for (const auto& x : runs) total += x.npages * 4096;
      img::PageMap pm;
      pm.set_pid(pid);
      pm.set_blob(StrFormat("pages-%d-pre%d.img", pid, round));
      ASSIGN_OR_RETURN(images::BlobWriter blob,
                       images::BlobWriter::Create(*ctx.sink, pm.blob(), ctx.opts.compression,
                                                  ctx.opts.zstd_level));
      {
        PageWriter w(&blob, pid, -1, total);
        for (const auto& x : runs) TRY(w.Add(x.addr, x.addr, x.npages, false));
        TRY_CTX(w.Finish(), "pre-dump round %d pid %d", round, pid);
        for (const auto& run : w.runs()) *pm.add_runs() = run;
      }
      TRY(blob.Close());
      round_bytes += blob.logical_size();
      ctx.stats.bytes_stored += blob.stored_size();
      ctx.pre_maps[pid].push_back(std::move(pm));
    }
    ctx.stats.round_bytes.push_back(round_bytes);
    ctx.stats.pre_bytes += round_bytes;
    if (ctx.opts.progress) ctx.opts.progress("pre-dump round", round + 1, ctx.opts.pre_rounds);
  }
  ctx.stats.pre_ms = Ms(t0, Clock::now());
  return Ok();
}

}  // namespace

DumpContext::~DumpContext() = default;

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
  if (opts.pre_rounds > 0) {
    auto r = PreRounds(ctx);
    if (!r.ok()) {
      sink->Abort();
      return std::move(r).error();
    }
  }
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
