#include "dump/dump.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <zstd.h>

#include <algorithm>
#include <chrono>
#include <set>

#include "common/fs.h"
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
      // Round 0: which runs are in unreadable VMAs (read through /proc/PID/mem). The final round
      // stores only the dirty pages of tracked VMAs, so round 0 must have all the others.
      std::vector<bool> unreadable;
      UniqueFd mem;
      if (round == 0) {
        ASSIGN_OR_RETURN(auto maps, proc::ReadMaps(pid));
        ASSIGN_OR_RETURN(auto src, PresentPages::Open(pid, ctx.zero_pfn));
        PageCounts counts;
        for (const auto& m : maps) {
          if (m.shared || !tracker->Covers(m.start, m.end)) continue;
          bool file = m.inode != 0 && !m.path.empty() && m.path[0] == '/';
          size_t before = runs.size();
          TRY(src->Collect(m.start, m.end, file, &runs, &counts));
          // Collect may have extended the previous VMA's last run into this one: split it.
          if (before > 0 && runs.size() >= before && runs[before - 1].addr < m.start &&
              runs[before - 1].addr + runs[before - 1].npages * 4096 > m.start) {
            PageRange& last = runs[before - 1];
            uint64_t keep = (m.start - last.addr) / 4096;
            runs.insert(runs.begin() + before, {m.start, last.npages - keep});
            last.npages = keep;
          }
          unreadable.resize(runs.size(), !(m.prot & PROT_READ));
        }
        if (std::find(unreadable.begin(), unreadable.end(), true) != unreadable.end()) {
          ASSIGN_OR_RETURN(mem, fs::Open(StrFormat("/proc/%d/mem", pid), O_RDONLY));
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
        PageWriter w(&blob, pid, mem.get(), total);
        for (size_t i = 0; i < runs.size(); ++i) {
          bool use_fd = i < unreadable.size() && unreadable[i];
          TRY(w.Add(runs[i].addr, runs[i].addr, runs[i].npages, use_fd));
        }
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

// Would zstd shrink pid's memory? Compresses up to 64 present pages (pagemap-guided, so nothing
// is faulted in) spread over its largest private writable mappings. Random or already compressed
// data is then stored raw: compressing it costs frozen time and saves nothing.
bool SampleCompresses(pid_t pid) {
  auto maps = proc::ReadMaps(pid);
  if (!maps.ok()) return true;
  auto pm = fs::Open(StrFormat("/proc/%d/pagemap", pid), O_RDONLY);
  if (!pm.ok()) return true;
  std::vector<char> sample;
  std::vector<char> page(4096);
  auto eligible = [](const proc::MapsEntry& m) {
    return !m.shared && (m.prot & PROT_WRITE) && (m.prot & PROT_READ);
  };
  uint64_t total = 0;
  for (const auto& m : *maps)
    if (eligible(m)) total += (m.end - m.start) / 4096;
  if (total == 0) return true;
  // Samples in proportion to each mapping's size: the big ones decide.
  for (const auto& m : *maps) {
    if (!eligible(m)) continue;
    uint64_t npages = (m.end - m.start) / 4096;
    uint64_t want = 64 * npages / total;
    if (want == 0) continue;
    uint64_t step = std::max<uint64_t>(1, npages / want);
    for (uint64_t i = 0; i < npages; i += step) {
      uint64_t a = m.start + i * 4096, e = 0;
      if (pread(pm->get(), &e, 8, a / 4096 * 8) != 8 || !(e & (1ULL << 63))) continue;
      iovec l{page.data(), 4096}, r{reinterpret_cast<void*>(a), 4096};
      if (process_vm_readv(pid, &l, 1, &r, 1, 0) != 4096) continue;
      sample.insert(sample.end(), page.begin(), page.end());
    }
  }
  if (sample.size() < 8 * 4096) return true;  // too little to judge: let zstd decide per chunk
  std::vector<char> out(ZSTD_compressBound(sample.size()));
  size_t z = ZSTD_compress(out.data(), out.size(), sample.data(), sample.size(), 1);
  if (ZSTD_isError(z)) return true;
  return z < sample.size() * 9 / 10;
}

// Before the freeze: create each process's page blob and reserve the space its anonymous memory
// will take (allocating tmpfs pages is most of the cost of writing them). A racy walk of the tree
// is fine: this is only an estimate.
void ReservePageBlobs(DumpContext& ctx, bool sample) {
  std::vector<pid_t> todo{ctx.opts.pid};
  std::set<pid_t> seen;
  while (!todo.empty()) {
    pid_t pid = todo.back();
    todo.pop_back();
    if (!seen.insert(pid).second) continue;
    auto tasks = proc::ListTasks(pid);
    if (!tasks.ok()) continue;
    for (pid_t t : *tasks) {
      auto kids = proc::ListChildren(pid, t);
      if (kids.ok()) todo.insert(todo.end(), kids->begin(), kids->end());
    }
    auto status = fs::ReadFile(StrFormat("/proc/%d/status", pid));
    if (!status.ok()) continue;
    size_t at = status->find("RssAnon:");
    if (at == std::string::npos) continue;  // a zombie
    uint64_t kb = strtoull(status->c_str() + at + 8, nullptr, 10);
    bool raw = sample && !SampleCompresses(pid);
    if (raw) ctx.stats.incompressible.push_back(pid);
    auto blob = OpenPageBlob(ctx, pid, raw);
    if (!blob.ok()) continue;
    auto r = blob->Reserve(kb * 1024 + (kb * 1024) / 64);
    if (!r.ok()) LOG_DEBUG("reserve pages of %d: %s", pid, r.error().to_string().c_str());
    ctx.page_blobs[pid] = std::make_unique<images::BlobWriter>(std::move(*blob));
  }
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
  // zstd without pre-dump rounds: the frozen tree's pages are stored raw (written by the
  // processes themselves), and compressed once the tree runs again or is gone
  // (Sink::CompressFinished): compression costs no frozen time. GODWIT_COMPRESS_FROZEN=1
  // compresses while frozen instead (the pre-dump rounds' way).
  bool deferred = opts.compression == images::Compression::kZstd && opts.pre_rounds == 0 &&
                  getenv("GODWIT_COMPRESS_FROZEN") == nullptr;
  if (deferred) ctx.opts.compression = images::Compression::kNone;
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
  bool seized_hook = false;  // on_seized ran: before_detach is owed
  ScopeExit on_error([&] {
    if (finished) return;
    for (auto& p : ctx.procs)
      if (p->remote) {
        auto r = p->remote->Release();
        if (!r.ok()) LOG_WARN("release pid %d: %s", p->pid, r.error().to_string().c_str());
      }
    if (fds) fds->Resume();
    ThawTree(frozen);  // before the hook: see the end of Dump
    if (seized_hook && opts.before_detach) {
      auto r = opts.before_detach();
      if (!r.ok()) LOG_WARN("dump: before_detach: %s", r.error().to_string().c_str());
    }
    sink->Abort();
  });

  if (opts.pre_rounds == 0 && !getenv("GODWIT_NO_RESERVE"))
    ReservePageBlobs(ctx, opts.compression == images::Compression::kZstd);
  auto t_freeze = Clock::now();
  TRY_CTX(FreezeTree(opts.pid, &frozen), "freeze tree of %d", opts.pid);
  auto t_frozen = Clock::now();
  ctx.stats.freeze_ms = Ms(t_freeze, t_frozen);
  if (opts.on_seized) {
    seized_hook = true;
    TRY_CTX(opts.on_seized(), "dump: on_seized");
  }
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
      auto r = step.fn(ctx, *p);
      if (!r.ok()) {
        // A member that died meanwhile shows up as ESRCH somewhere inside a step: say so.
        auto st = proc::ReadStat(p->pid);
        if (!st.ok() || st->state == 'Z' || st->state == 'X')
          return MakeError(ErrorKind::kNotFound, ESRCH,
                           "process %d exited during the dump (in step %s: %s)", p->pid, step.name,
                           r.error().to_string().c_str());
        return std::move(r.error().wrap(StrFormat("dump pid %d: %s", p->pid, step.name)));
      }
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
  // Blobs reserved for processes that turned out not to be live members of the tree.
  for (auto& [pid, b] : ctx.page_blobs) TRY(b->Close());
  ctx.page_blobs.clear();
  for (auto& p : ctx.procs) {
    if (!p->remote) continue;
    ctx.stats.remote_calls += p->remote->calls();
    TRY_CTX(p->remote->Release(), "pid %d: release remote", p->pid);
    p->remote.reset();
  }
  img::Inventory inv = images::NewInventory();
  TRY_CTX(sink->Finish(std::move(inv)), "write inventory");
  finished = true;
  // ThawTree steps threads into their re-issued syscalls, so it must run before a before_detach
  // hook that freezes the tree's cgroup again (a frozen task never reaches the syscall entry).
  Result<void> hook = Ok();
  if (opts.leave_running) {
    if (fds && !opts.keep_tcp_locked) fds->Resume();
    ThawTree(frozen);
    if (seized_hook && opts.before_detach) hook = opts.before_detach();
  } else {
    if (seized_hook && opts.before_detach) hook = opts.before_detach();
    KillTree(frozen);
  }
  auto t_end = Clock::now();
  ctx.stats.frozen_ms = Ms(t_freeze, t_end);
  if (deferred) {
    std::vector<std::string> names;
    for (const auto& p : ctx.procs) {
      auto& inc = ctx.stats.incompressible;
      if (std::find(inc.begin(), inc.end(), p->pid) == inc.end())
        names.push_back(StrFormat("pages-%d.img", p->pid));
    }
    for (const auto& o : ctx.shmem) names.push_back(o.blob());
    std::shared_ptr<images::Sink> done(std::move(sink));
    auto compress = [done, names, level = opts.zstd_level]() -> Result<uint64_t> {
      uint64_t before = 0, after = 0;
      TRY(done->CompressFinished(names, level, 2, &before, &after));
      return before - after;
    };
    if (opts.compress_later) {
      ctx.stats.compress = compress;
    } else {
      auto c = compress();
      if (c.ok()) {
        ctx.stats.bytes_stored -= *c;
      } else {
        // The raw images are complete and valid: keep them.
        LOG_WARN("dump: compressing the images after the dump failed, they stay raw: %s",
                 c.error().to_string().c_str());
      }
      t_end = Clock::now();
    }
  }
  ctx.stats.total_ms = Ms(t_start, t_end);
  if (!hook.ok()) return std::move(hook.error().wrap("dump: before_detach"));
  return ctx.stats;
}

}  // namespace godwit::dump
