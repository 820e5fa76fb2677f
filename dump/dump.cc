#include "dump/dump.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/ptrace.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <zstd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <optional>
#include <set>
#include <thread>

#include "common/fs.h"
#include "common/log.h"
#include "common/netns.h"
#include "common/page.h"
#include "common/proc.h"
#include "common/scope_exit.h"
#include "common/timing.h"
#include "dump/capture.h"
#include "dump/lazy_wait.h"
#include "dump/pages.h"
#include "dump/precopy.h"
#include "dump/steps.h"
#include "dump/tree.h"
#include "dump/vmflags.h"
#include "files/files.h"

namespace godwit::dump {
namespace {

using timing::Clock;

// Would zstd shrink pid's memory? Compresses up to 64 present pages (pagemap-guided, so nothing
// is faulted in) spread over its largest private writable mappings. Random or already compressed
// data is then stored raw: compressing it costs frozen time and saves nothing.
bool SampleCompresses(pid_t pid) {
  auto maps = proc::ReadMaps(pid);
  if (!maps.ok()) return true;
  auto pm = fs::Open(StrFormat("/proc/%d/pagemap", pid), O_RDONLY);
  if (!pm.ok()) return true;
  std::vector<char> sample;
  std::vector<char> page(kPage);
  auto eligible = [](const proc::MapsEntry& m) {
    return !m.shared && (m.prot & PROT_WRITE) && (m.prot & PROT_READ);
  };
  uint64_t total = 0;
  for (const auto& m : *maps)
    if (eligible(m)) total += (m.end - m.start) / kPage;
  if (total == 0) return true;
  // Samples in proportion to each mapping's size: the big ones decide.
  for (const auto& m : *maps) {
    if (!eligible(m)) continue;
    uint64_t npages = (m.end - m.start) / kPage;
    uint64_t want = 64 * npages / total;
    if (want == 0) continue;
    uint64_t step = std::max<uint64_t>(1, npages / want);
    for (uint64_t i = 0; i < npages; i += step) {
      uint64_t a = m.start + i * kPage, e = 0;
      if (pread(pm->get(), &e, 8, a / kPage * 8) != 8 || !(e & (1ULL << 63))) continue;
      iovec l{page.data(), kPage}, r{reinterpret_cast<void*>(a), kPage};
      if (process_vm_readv(pid, &l, 1, &r, 1, 0) != static_cast<ssize_t>(kPage)) continue;
      sample.insert(sample.end(), page.begin(), page.end());
    }
  }
  if (sample.size() < 8 * kPage) return true;  // too little to judge: let zstd decide per chunk
  std::vector<char> out(ZSTD_compressBound(sample.size()));
  size_t z = ZSTD_compress(out.data(), out.size(), sample.data(), sample.size(), 1);
  if (ZSTD_isError(z)) return true;
  return z < sample.size() * 9 / 10;
}

// smaps flags of the tree's big processes (RssAnon >= 32 MiB) into ctx.vmflags.
void TakeVmFlagsSnapshots(DumpContext& ctx) {
  std::vector<pid_t> pids = proc::Descendants(ctx.opts.pid);
  for (pid_t pid : pids) {
    auto status = fs::ReadFile(StrFormat("/proc/%d/status", pid));
    if (!status.ok()) continue;
    size_t at = status->find("RssAnon:");
    if (at == std::string::npos) continue;  // a zombie
    if (strtoull(status->c_str() + at + 8, nullptr, 10) < (32 << 10)) continue;
    if (auto snap = TakeVmFlagsSnapshot(pid)) ctx.vmflags[pid] = std::move(*snap);
  }
}

// Before the freeze: create each process's page blob and reserve the space its anonymous memory
// will take (allocating tmpfs pages is most of the cost of writing them). A racy walk of the tree
// is fine: this is only an estimate.
// reserve false (kill mode releasing the tree's memory): the blobs only, their pages come from
// the memory the tree gives back while frozen.
void ReservePageBlobs(DumpContext& ctx, bool sample, bool reserve_all) {
  for (pid_t pid : proc::Descendants(ctx.opts.pid)) {
    auto status = fs::ReadFile(StrFormat("/proc/%d/status", pid));
    if (!status.ok()) continue;
    size_t at = status->find("RssAnon:");
    if (at == std::string::npos) continue;  // a zombie
    uint64_t kb = strtoull(status->c_str() + at + 8, nullptr, 10);
    bool raw = sample && !SampleCompresses(pid);
    if (raw) ctx.stats.incompressible.push_back(pid);
    auto blob = OpenPageBlob(ctx, pid, raw);
    if (!blob.ok()) continue;
    bool reserve = reserve_all;
    uint64_t bytes = kb * 1024 + (kb * 1024) / 64;
    if (reserve && ctx.opts.tuning.split_pages && !blob->compressed() && blob->fd() >= 0 &&
        bytes >= kSplitPagesMin && std::thread::hardware_concurrency() >= 2) {
      // Two page files (dump/mm.cc), each reserved by its own thread: on one file the two
      // would serialize on its inode.
      auto b2 = images::BlobWriter::Create(*ctx.sink, SecondPageBlobName(pid),
                                           images::Compression::kNone, ctx.opts.zstd_level);
      if (b2.ok()) {
        auto blob2 = std::make_unique<images::BlobWriter>(std::move(*b2));
        Result<void> r2;
        std::thread t([&] { r2 = blob2->Reserve(bytes / 2); });
        auto r = blob->Reserve(bytes - bytes / 2);
        t.join();
        if (!r.ok()) LOG_DEBUG("reserve pages of %d: %s", pid, r.error().to_string().c_str());
        if (!r2.ok()) LOG_DEBUG("reserve pages of %d: %s", pid, r2.error().to_string().c_str());
        ctx.page_blobs2[pid] = std::move(blob2);
        reserve = false;  // done
      }
    }
    if (reserve) {
      auto r = blob->Reserve(bytes);
      if (!r.ok()) LOG_DEBUG("reserve pages of %d: %s", pid, r.error().to_string().c_str());
    }
    ctx.page_blobs[pid] = std::make_unique<images::BlobWriter>(std::move(*blob));
  }
}

}  // namespace

DumpContext::~DumpContext() = default;

void DumpContext::MarkReleased() {
  if (released) return;
  released = true;
  if (seized == nullptr) return;
  for (pid_t tid : *seized) {
    long opts = PTRACE_O_TRACESYSGOOD | PTRACE_O_EXITKILL;
    if (ptrace(PTRACE_SETOPTIONS, tid, nullptr, opts | PTRACE_O_SUSPEND_SECCOMP) == 0) continue;
    if (ptrace(PTRACE_SETOPTIONS, tid, nullptr, opts) != 0)
      LOG_WARN("thread %d: PTRACE_O_EXITKILL: %s", tid, strerror(errno));
  }
}

Result<remote::Remote*> DumpContext::RemoteFor(ProcessDump& p) {
  if (!p.remote) {
    ASSIGN_OR_RETURN(p.remote, remote::Remote::Create(p.pid, p.pid, {}));
  }
  return p.remote.get();
}

TcpHold::TcpHold(std::unique_ptr<files::FdDumper> fds) : fds_(std::move(fds)) {}
TcpHold::~TcpHold() = default;

Result<void> TcpHold::LockOutside(pid_t tree_pid) {
  if (!fds_) return MakeError(ErrorKind::kGeneric, 0, "TCP hold: already resumed");
  return fds_->LockOutside(tree_pid);
}

void TcpHold::BeforeKill() {
  if (fds_) fds_->SetTcpRepair(true);
}

void TcpHold::Drop() { fds_.reset(); }

void TcpHold::Resume() {
  if (!fds_) return;
  fds_->Resume();
  fds_.reset();
}

Result<void> Check(const DumpOptions& opts) {
  if (opts.pid <= 0) return MakeError(ErrorKind::kUsage, 0, "dump: no --pid");
  if (opts.pid == getpid()) return MakeError(ErrorKind::kUsage, 0, "dump: cannot dump myself");
  if (!proc::ReadStat(opts.pid).ok())
    return MakeError(ErrorKind::kNotFound, ESRCH, "no process %d", opts.pid);
  if (!opts.userns_saved_by_caller) {
    auto same = SameUserns(opts.pid, 0);
    if (same.ok() && !*same)
      return MakeError(ErrorKind::kUnsupported, 0,
                       "pid %d is in another user namespace than godwit's: a plain dump does not "
                       "save namespaces (checkpoint it as a container: godwit run with a user "
                       "namespace, then godwit checkpoint)",
                       opts.pid);
  }
  return Ok();
}

Result<DumpStats> Dump(const DumpOptions& opts, images::Sink& sink) {
  auto t_start = Clock::now();
  auto fail = [&sink](Error e) -> Result<DumpStats> {
    sink.Abort();
    return e;
  };
  if (auto c = Check(opts); !c.ok()) return fail(std::move(c).error());
  DumpContext ctx;
  ctx.opts = opts;
  ctx.sink = &sink;
  if (!opts.precopy) {
    // smaps walks every page table (45-85 ms per GiB): the big processes' flags are read now,
    // while the tree runs, once for both the lazy-pager check and the mm step, which reuses them
    // frozen if a BPF iterator shows the same VMAs then (dump/vmflags.h), as after pre-copy.
    // Small processes: smaps costs little either way. Not for a tree frozen already (a container
    // checkpoint, reserve_pages off): that would only add to its frozen time.
    if (opts.pre_rounds == 0 && opts.tuning.reserve_pages) TakeVmFlagsSnapshots(ctx);
    if (auto w = WaitLazyPages(opts.pid, kLazyWaitMs, &ctx.vmflags); !w.ok())
      return fail(std::move(w).error());
  }

  // Pre-copy: the caller's rounds, or pre_rounds of our own while the tree runs.
  std::unique_ptr<PreCopy> own_precopy;
  if (!opts.precopy && (opts.pre_rounds > 0 || opts.pre_rounds == kPreCopyAuto)) {
    auto t0 = Clock::now();
    PreCopyOptions po;
    po.compression = opts.compression;
    po.zstd_level = opts.zstd_level;
    auto pc = PreCopy::Start(opts.pid, sink, po);
    if (!pc.ok()) return fail(std::move(pc).error());
    own_precopy = std::move(*pc);
    const bool until_converged = opts.pre_rounds == kPreCopyAuto;
    const int most = until_converged ? PreCopy::kMaxAutoRounds : opts.pre_rounds;
    for (int i = 0; i < most; ++i) {
      auto r = own_precopy->Round();
      if (!r.ok()) return fail(std::move(r).error());
      if (opts.progress) opts.progress("pre-dump round", i + 1, most);
      if (until_converged && own_precopy->Converged()) break;
    }
    ctx.opts.precopy = own_precopy.get();
    ctx.stats.pre_ms = timing::MsBetween(t0, Clock::now());
  }
  PreCopy* precopy = ctx.opts.precopy;
  if (precopy) {
    if (&precopy->sink() != &sink)
      return fail(MakeError(ErrorKind::kUsage, 0,
                            "dump: the pre-copy rounds went into another sink than the dump"));
    if (precopy->pid() != opts.pid)
      return fail(MakeError(ErrorKind::kUsage, 0, "dump: the pre-copy is of pid %d, not %d",
                            precopy->pid(), opts.pid));
    if (auto u = precopy->CheckUsable(); !u.ok()) return fail(std::move(u).error());
    for (const auto& r : precopy->rounds()) {
      ctx.stats.round_bytes.push_back(r.bytes);
      ctx.stats.pre_bytes += r.bytes;
      if (!own_precopy) ctx.stats.pre_ms += r.ms;
    }
    ctx.stats.bytes_stored += precopy->stored_bytes();
  }
  // zstd without pre-copy: the frozen tree's pages are stored raw (written by the processes
  // themselves), and compressed once the tree runs again or is gone (Sink::CompressFinished):
  // compression costs no frozen time. Where the sink cannot do that, or tuning says so, they
  // are compressed while frozen (as with pre-copy, whose rounds were compressed as they went).
  bool deferred = opts.compression == images::Compression::kZstd && precopy == nullptr &&
                  !opts.tuning.compress_frozen && sink.CanCompressFinished();
  if (deferred) ctx.opts.compression = images::Compression::kNone;
  {
    auto z = ZeroPagePfn();
    if (!z.ok()) return fail(std::move(z).error());
    ctx.zero_pfn = *z;
  }

  FrozenTree frozen;
  bool finished = false;
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
    if (ctx.released) {
      // Some of its memory is gone already (kill mode): it cannot run on.
      LOG_WARN("dump of %d failed after its memory was being released: the tree is killed",
               opts.pid);
      KillTree(frozen);
    } else {
      ThawTree(frozen);  // before the hook: see the end of Dump
    }
    if (seized_hook && opts.before_detach) {
      auto r = opts.before_detach();
      if (!r.ok()) LOG_WARN("dump: before_detach: %s", r.error().to_string().c_str());
    }
    sink.Abort();
  });

  ctx.release = !opts.leave_running && opts.tuning.release_memory;
  if (ctx.release && opts.tuning.capture_pages && !precopy) {
    // Holder pipes are fds of ours (dump/capture.h): as many as the hard limit allows, minus
    // what is open and a margin for the rest of the dump.
    rlimit nofile{};
    if (getrlimit(RLIMIT_NOFILE, &nofile) == 0) {
      if (nofile.rlim_cur < nofile.rlim_max) {
        rlimit raised = nofile;
        raised.rlim_cur = nofile.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &raised) == 0) nofile = raised;
      }
      int64_t open_fds = 0;
      if (auto fds_open = fs::ListDir("/proc/self/fd"); fds_open.ok())
        open_fds = static_cast<int64_t>(fds_open->size());
      int64_t limit = nofile.rlim_cur == RLIM_INFINITY ? (1 << 20)
                                                       : static_cast<int64_t>(nofile.rlim_cur);
      ctx.capture_fds = limit - open_fds - 256;
      ctx.capture = ctx.capture_fds > 0;
    }
  }
  if (!precopy && opts.tuning.reserve_pages)
    ReservePageBlobs(ctx, opts.compression == images::Compression::kZstd, !ctx.release);
  // After pre-copy: the final deltas' page files made and their room reserved while the tree
  // still runs (a frozen tree's caller, e.g. a container checkpoint, did it before its freeze).
  if (precopy && opts.tuning.reserve_pages) precopy->PrepareFinal();
  // Connections are locked with libnftables while frozen: the library is loaded before, when the
  // tree's namespace has a TCP socket (common/netns.h). Not for a tree frozen already
  // (reserve_pages off, as above): its caller loads it before its own freeze.
  if (opts.tcp_established && opts.tuning.reserve_pages) netns::PreloadNftIfTcp(opts.pid);
  auto t_freeze = Clock::now();
  TRY_CTX(FreezeTree(opts.pid, &frozen), "freeze tree of %d", opts.pid);
  auto t_frozen = Clock::now();
  ctx.seized = &frozen.seized;
  ctx.stats.freeze_ms = timing::MsBetween(t_freeze, t_frozen);
  if (opts.on_seized) {
    seized_hook = true;
    TRY_CTX(opts.on_seized(), "dump: on_seized");
  }
  ctx.tree = frozen.tree;
  if (precopy) {
    ctx.stats.pre_reserved_bytes = precopy->prepared_bytes();
    for (auto& [pid, b] : precopy->TakeFinalBlobs()) ctx.page_blobs[pid] = std::move(b);
  }
  TRY(images::WriteImage(sink, "pstree.img", ctx.tree));

  files::DumpOptions fo;
  fo.leave_running = opts.leave_running;
  fo.tcp_established = opts.tcp_established;
  fo.shell_job = opts.shell_job;
  fo.external = opts.external;
  ASSIGN_OR_RETURN(fds, files::FdDumper::Create(sink, fo));
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
  const auto& steps = ProcessSteps();
  for (const auto& step : steps) ctx.stats.step_ms.emplace_back(step.name, 0.0);
  timing::PhaseTimer laps;
  auto lap = [&](const char* name) {
    double ms = 0;
    laps.LapInto(&ms);
    for (auto& [n, v] : ctx.stats.step_ms)
      if (n == name) {
        v += ms;
        return;
      }
    ctx.stats.step_ms.emplace_back(name, ms);
  };
  auto run_step = [&](ProcessDump& p, const DumpStep& step) -> Result<void> {
    LOG_DEBUG("dump pid %d: %s", p.pid, step.name);
    auto r = step.fn(ctx, p);
    lap(step.name);
    if (!r.ok()) {
      // A member that died meanwhile shows up as ESRCH somewhere inside a step: say so.
      auto st = proc::ReadStat(p.pid);
      if (!st.ok() || st->state == 'Z' || st->state == 'X')
        return MakeError(ErrorKind::kNotFound, ESRCH,
                         "process %d exited during the dump (in step %s: %s)", p.pid, step.name,
                         r.error().to_string().c_str());
      return std::move(r.error().wrap(StrFormat("dump pid %d: %s", p.pid, step.name)));
    }
    return Ok();
  };
  // Releasing memory (kill mode): every process's other steps first, so that whatever refuses
  // the tree (an fd kind, a pstate) does so before any memory is released and the tree can
  // still be thawed untouched; then the memory of each.
  for (auto& p : ctx.procs)
    for (const auto& step : steps)
      if (!ctx.release || step.fn != DumpMm) TRY(run_step(*p, step));
  // What only the whole tree's files tell (a unix peer outside it, a pidfd's target): refused
  // here too, before the first page is released.
  if (ctx.release && ctx.fds) TRY_CTX(ctx.fds->Check(), "dump files");
  if (ctx.release)
    for (auto& p : ctx.procs)
      for (const auto& step : steps)
        if (step.fn == DumpMm) TRY(run_step(*p, step));
  if (ctx.fds) {
    TRY_CTX(ctx.fds->Finish(), "dump files");
    ctx.stats.fd_counts = ctx.fds->Counts();
  }
  lap("fds_finish");
  {
    ASSIGN_OR_RETURN(images::ImageWriter w, images::ImageWriter::Create(sink, "shmem.img"));
    for (const auto& o : ctx.shmem) TRY(w.Write(o));
    TRY(w.Close());
  }
  // Blobs reserved for processes that turned out not to be live members of the tree.
  for (auto& [pid, b] : ctx.page_blobs) TRY(b->Close());
  ctx.page_blobs.clear();
  for (auto& [pid, b] : ctx.page_blobs2) TRY(b->Close());
  ctx.page_blobs2.clear();
  // Captured pages (kill mode): the tree's state is wholly taken; nothing more is read from it.
  // Its memory is released and the pages copied into the image now.
  std::optional<Clock::time_point> t_captured;
  if (!ctx.captured.empty()) {
    t_captured = Clock::now();
    lap("release");
    TRY(FinishCapturedPages(ctx));
    lap("drain");
  }
  for (auto& p : ctx.procs) {
    if (!p->remote) continue;
    ctx.stats.remote_calls += p->remote->calls();
    TRY_CTX(p->remote->Release(), "pid %d: release remote", p->pid);
    p->remote.reset();
  }
  lap("release");
  img::Inventory inv = images::NewInventory();
  TRY_CTX(sink.Finish(std::move(inv)), "write inventory");
  finished = true;
  lap("images");
  // ThawTree steps threads into their re-issued syscalls, so it must run before a before_detach
  // hook that freezes the tree's cgroup again (a frozen task never reaches the syscall entry),
  // unless the tree is not meant to run again (freeze_before_detach: no stepping at all).
  Result<void> hook = Ok();
  if (opts.leave_running) {
    if (fds && !opts.keep_tcp_locked) fds->Resume();
    if (fds && opts.keep_tcp_locked) {
      // Locked but out of repair mode: the detached threads re-enter their calls on them.
      fds->SetTcpRepair(false);
      ctx.stats.tcp = std::make_shared<TcpHold>(std::move(fds));
    }
    if (opts.freeze_before_detach && seized_hook && opts.before_detach && opts.defer_release) {
      // The caller lets go (DumpOptions::defer_release): the same steps as below, later.
      ctx.stats.release = [tree = std::make_shared<FrozenTree>(frozen),
                           hook_fn = opts.before_detach, done = false]() mutable -> Result<void> {
        if (done) return Ok();
        done = true;
        Result<void> h = hook_fn();
        if (h.ok()) {
          DetachFrozen(*tree);
        } else {
          ThawTree(*tree);
        }
        return h;
      };
    } else if (opts.freeze_before_detach && seized_hook && opts.before_detach) {
      // Frozen while still stopped by ptrace, then let go into the frozen cgroup.
      hook = opts.before_detach();
      if (hook.ok()) {
        DetachFrozen(frozen);
      } else {
        ThawTree(frozen);  // the caller thaws the tree on this error: resume it properly
      }
    } else {
      ThawTree(frozen);
      if (seized_hook && opts.before_detach) hook = opts.before_detach();
    }
  } else {
    if (seized_hook && opts.before_detach) hook = opts.before_detach();
    Clock::time_point killed;
    KillTree(frozen, &killed);
    // The state is whole and the tree will never run again once the kill is out: the wait for
    // its death (the kernel freeing its memory) is not frozen time, as in CRIU.
    if (!t_captured) t_captured = killed;
  }
  lap("detach");
  auto t_end = Clock::now();
  ctx.stats.frozen_ms = timing::MsBetween(t_freeze, t_captured ? *t_captured : t_end);
  if (deferred) {
    std::vector<std::string> names;
    auto& inc = ctx.stats.incompressible;
    for (const auto& p : ctx.procs) {
      if (std::find(inc.begin(), inc.end(), p->pid) == inc.end())
        names.push_back(StrFormat("pages-%d.img", p->pid));
    }
    for (const auto& [pid, name] : ctx.second_page_blobs)
      if (std::find(inc.begin(), inc.end(), pid) == inc.end()) names.push_back(name);
    for (const auto& o : ctx.shmem) names.push_back(o.blob());
    auto compress = [done = &sink, names, level = opts.zstd_level]() -> Result<uint64_t> {
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
  ctx.stats.total_ms = timing::MsBetween(t_start, t_end);
  if (!hook.ok()) return std::move(hook.error().wrap("dump: before_detach"));
  return ctx.stats;
}

}  // namespace godwit::dump
