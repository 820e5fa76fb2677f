#include "dump/precopy.h"

#include <fcntl.h>
#include <signal.h>

#include <algorithm>

#include "common/fs.h"
#include "common/log.h"
#include "common/page.h"
#include "common/proc.h"
#include "common/timing.h"
#include "dump/dirty.h"
#include "dump/lazy_wait.h"
#include "dump/tree.h"
#include "dump/vmflags.h"

namespace godwit::dump {
namespace {

using timing::Clock;

bool Gone(pid_t pid) {
  auto st = proc::ReadStat(pid);
  return !st.ok() || st->state == 'Z' || st->state == 'X';
}

}  // namespace

std::string RoundBlobName(pid_t pid, int round) {
  return StrFormat("pages-%d-pre%d.img", pid, round);
}

std::string RoundPageMapName(pid_t pid, int round) {
  return StrFormat("pagemap-%d-pre%d.img", pid, round);
}

bool IsRoundBlob(const std::string& name) {
  return name.rfind("pages-", 0) == 0 && name.find("-pre") != std::string::npos;
}

std::string RoundPageMapOf(const std::string& blob) { return "pagemap-" + blob.substr(6); }

PreCopy::~PreCopy() = default;

Result<std::unique_ptr<PreCopy>> PreCopy::Start(pid_t pid, images::Sink& sink,
                                                const PreCopyOptions& o) {
  std::unique_ptr<PreCopy> pc(new PreCopy());
  pc->pid_ = pid;
  pc->sink_ = &sink;
  pc->opts_ = o;
  ASSIGN_OR_RETURN(pc->zero_pfn_, ZeroPagePfn());
  LazyWaitStats lw;
  TRY(WaitLazyPages(pid, kLazyWaitMs, nullptr, o.lazy_pager, &lw));
  pc->lazy_wait_ms_ = lw.waited_ms;
  FrozenTree f;
  const auto t_start = Clock::now();
  // The tree runs: a short-lived child (a shell's `sleep`) may exit while the tree is walked and
  // seized (gone: ESRCH; half-way: its main thread a zombie). Walk it again; only the root's own
  // exit is an error.
  Result<void> res = FreezeTree(pid, &f);
  auto exiting = [](const Error& e) {
    return e.sys_errno() == ESRCH || e.message().find("exited") != std::string::npos;
  };
  for (int attempt = 0; attempt < 10 && !res.ok() && exiting(res.error()) && kill(pid, 0) == 0;
       ++attempt) {
    ThawTree(f);
    f = FrozenTree();
    res = FreezeTree(pid, &f);
  }
  // Each process's maps as seized (without the scratch area), armed once the tree runs again.
  std::map<pid_t, std::vector<proc::MapsEntry>> maps_of;
  if (res.ok()) {
    res = [&]() -> Result<void> {
      for (const auto& e : f.tree.processes()) {
        if (e.zombie()) continue;
        ASSIGN_OR_RETURN(auto r, remote::Remote::Create(e.pid(), e.pid(), {}));
        ASSIGN_OR_RETURN(auto maps, proc::ReadMaps(e.pid()));
        maps_of[e.pid()] = WithoutRange(maps, r->area_start(), r->area_end());
        auto t = DirtyTracker::Take(e.pid(), r.get());
        TRY(r->Release());
        if (!t.ok()) return std::move(t.error().wrap(StrFormat("pid %d: dirty tracking", e.pid())));
        pc->procs_[e.pid()].tracker = std::move(*t);
      }
      return Ok();
    }();
  }
  ThawTree(f);
  TRY_CTX(res, "pre-copy of the tree of %d", pid);
  pc->start_ms_ = timing::MsBetween(t_start, Clock::now());
  // Registration and write protection from outside, the tree running (dump/dirty.h): round 0
  // starts after it, so a page written before its protection is read then.
  for (auto it = pc->procs_.begin(); it != pc->procs_.end();) {
    auto a = it->second.tracker->Arm(maps_of[it->first]);
    if (!a.ok() && a.error().kind() == ErrorKind::kNotFound) {  // exited since: not dumped
      it = pc->procs_.erase(it);
      continue;
    }
    TRY_CTX(std::move(a), "pre-copy of the tree of %d: pid %d: dirty tracking", pid, it->first);
    ++it;
  }
  return pc;
}

Result<RoundStats> PreCopy::Round() {
  if (failed_)
    return MakeError(ErrorKind::kGeneric, 0, "pre-copy of %d: an earlier round failed", pid_);
  auto t0 = Clock::now();
  RoundStats rs;
  rs.round = static_cast<int>(rounds_.size());
  for (auto it = procs_.begin(); it != procs_.end();) {
    auto r = RoundOf(it->first, it->second, rs.round, &rs);
    // Exited meanwhile (a zombie, reaped, or still exiting: its mm already gone shows as ESRCH):
    // not part of the final dump either.
    if (Gone(it->first) ||
        (!r.ok() && (r.error().sys_errno() == ESRCH || r.error().kind() == ErrorKind::kNotFound))) {
      it = procs_.erase(it);
      continue;
    }
    if (!r.ok()) {
      failed_ = true;
      return std::move(r.error().wrap(StrFormat("pre-copy round %d pid %d", rs.round, it->first)));
    }
    ++it;
  }
  auto t1 = Clock::now();
  rs.ms = timing::MsBetween(t0, t1);
  if (!rounds_.empty()) {
    double s = timing::MsBetween(last_start_, t0) / 1000;
    rs.dirty_bytes_per_s = s > 0 ? rs.bytes / s : 0;
  }
  last_start_ = t0;
  rounds_.push_back(rs);
  return rs;
}

Result<void> PreCopy::RoundOf(pid_t pid, Process& p, int round, RoundStats* rs) {
  // The VMA flags as of this round, for the final dump to reuse when nothing changed since
  // (dump/vmflags.h): smaps costs it a page-table walk of the whole tree while frozen.
  p.vmflags = TakeVmFlagsSnapshot(pid);
  // Round 0 copies everything: not a delta, no measure of what the final dump will hold (a room
  // that large was truncated inside the freeze again: 250 MiB, ~31 ms).
  p.before_bytes = round >= 2 ? p.last_bytes : 0;
  p.last_bytes = 0;
  std::vector<PageRange> runs;
  if (round == 0) {
    ASSIGN_OR_RETURN(auto maps, proc::ReadMaps(pid));
    ASSIGN_OR_RETURN(std::vector<PageRange> tracked, p.tracker->Tracked(maps));
    ASSIGN_OR_RETURN(auto src, PresentPages::Open(pid, zero_pfn_));
    PageCounts counts;
    for (const auto& m : maps) {
      if (m.shared || !Contains(tracked, m.start, m.end)) continue;
      bool file = m.inode != 0 && !m.path.empty() && m.path[0] == '/';
      TRY(src->Collect(m.start, m.end, file, &runs, &counts));
    }
  } else {
    TRY(p.tracker->CollectDirty(&runs));
  }
  if (runs.empty()) return Ok();
  uint64_t total = 0;
  for (const auto& x : runs) total += x.npages * kPage;
  img::PageMap pm;
  pm.set_pid(pid);
  pm.set_blob(RoundBlobName(pid, round));
  // Pages of mappings made unreadable meanwhile are read through it (PageWriter::SetRunning).
  ASSIGN_OR_RETURN(UniqueFd mem, fs::Open(StrFormat("/proc/%d/mem", pid), O_RDONLY));
  ASSIGN_OR_RETURN(images::BlobWriter blob, images::BlobWriter::Create(*sink_, pm.blob(),
                                                                       opts_.compression,
                                                                       opts_.zstd_level));
  {
    PageWriter w(&blob, pid, mem.get(), total);
    w.SetRunning();
    for (const auto& x : runs) TRY(w.Add(x.addr, x.addr, x.npages, false));
    TRY(w.Finish());
    for (const auto& run : w.runs()) *pm.add_runs() = run;
    rs->pages += w.pages();
  }
  TRY(blob.Close());
  p.last_bytes = blob.logical_size();
  rs->bytes += blob.logical_size();
  rs->stored_bytes += blob.stored_size();
  // The round's page map as an image of its own, out at once (a migration sends it with the
  // round's pages): the final dump refers to it instead of writing its runs while frozen.
  std::string image = RoundPageMapName(pid, round);
  TRY(images::WriteImage(*sink_, image, pm));
  p.maps.push_back(std::move(pm));
  p.map_images.push_back(std::move(image));
  return Ok();
}

void PreCopy::PrepareFinal() {
  if (prepared_ || failed_ || rounds_.empty()) return;
  prepared_ = true;
  if (opts_.compression != images::Compression::kNone) return;
  for (const auto& [pid, p] : procs_) {
    const uint64_t estimate = std::max(p.last_bytes, p.before_bytes);
    if (estimate < kPrepareMin) continue;
    auto b = images::BlobWriter::Create(*sink_, StrFormat("pages-%d.img", pid),
                                        images::Compression::kNone, opts_.zstd_level);
    if (!b.ok()) {
      LOG_DEBUG("pid %d: final page blob: %s", pid, b.error().to_string().c_str());
      continue;
    }
    auto blob = std::make_unique<images::BlobWriter>(std::move(*b));
    const uint64_t room = estimate + estimate / 64;
    if (auto r = blob->Reserve(room); !r.ok()) {
      LOG_DEBUG("pid %d: reserving the final pages: %s", pid, r.error().to_string().c_str());
    } else {
      prepared_bytes_ += room;
    }
    final_blobs_[pid] = std::move(blob);
  }
}

std::map<pid_t, std::unique_ptr<images::BlobWriter>> PreCopy::TakeFinalBlobs() {
  auto out = std::move(final_blobs_);
  final_blobs_.clear();
  return out;
}

bool PreCopy::Converged() const {
  const size_t n = rounds_.size();
  if (n < 2) return false;
  if (n >= static_cast<size_t>(kMaxAutoRounds)) return true;
  const uint64_t last = rounds_[n - 1].bytes, before = rounds_[n - 2].bytes;
  return last <= kConvergedBytes || static_cast<double>(last) > 0.8 * static_cast<double>(before);
}

uint64_t PreCopy::stored_bytes() const {
  uint64_t n = 0;
  for (const auto& r : rounds_) n += r.stored_bytes;
  return n;
}

Result<void> PreCopy::CheckUsable() const {
  if (failed_)
    return MakeError(ErrorKind::kGeneric, 0, "pre-copy of %d: a round failed, its tracking is lost",
                     pid_);
  return Ok();
}

const VmFlagsSnapshot* PreCopy::VmFlagsOf(pid_t pid) const {
  if (failed_ || rounds_.empty()) return nullptr;
  auto it = procs_.find(pid);
  if (it == procs_.end() || !it->second.vmflags) return nullptr;
  return &*it->second.vmflags;
}

DirtyTracker* PreCopy::Tracker(pid_t pid) const {
  if (failed_ || rounds_.empty()) return nullptr;
  auto it = procs_.find(pid);
  return it == procs_.end() ? nullptr : it->second.tracker.get();
}

namespace {

// Whether every run of m lies inside present (both sorted by address).
bool AllPresent(const img::PageMap& m, const std::vector<PageRange>& present) {
  size_t k = 0;
  for (const auto& run : m.runs()) {
    const uint64_t s = run.vaddr(), e = s + run.npages() * kPage;
    while (k < present.size() && present[k].addr + present[k].npages * kPage <= s) ++k;
    if (k == present.size() || present[k].addr > s ||
        present[k].addr + present[k].npages * kPage < e) {
      LOG_DEBUG("pid %d: %s: pages %#lx-%#lx are gone since: the round is written cut down",
                m.pid(), m.blob().c_str(), static_cast<unsigned long>(s),
                static_cast<unsigned long>(e));
      return false;
    }
  }
  return true;
}

}  // namespace

std::vector<img::PageMap> PreCopy::EarlierMaps(pid_t pid,
                                               const std::vector<PageRange>& present) const {
  std::vector<img::PageMap> out;
  auto it = procs_.find(pid);
  if (it == procs_.end()) return out;
  const Process& proc = it->second;
  for (size_t i = 0; i < proc.maps.size(); ++i) {
    const img::PageMap& old = proc.maps[i];
    if (i < proc.map_images.size() && AllPresent(old, present)) {
      img::PageMap ref;
      ref.set_pid(old.pid());
      ref.set_blob(old.blob());
      ref.set_runs_image(proc.map_images[i]);
      out.push_back(std::move(ref));
      continue;
    }
    img::PageMap f = old;
    f.clear_runs();
    std::vector<PageRange> runs;
    for (const auto& run : old.runs()) runs.push_back({run.vaddr(), run.npages()});
    // Intersect keeps order; map each kept piece back to its blob offset.
    int k = 0;
    for (const auto& piece : Intersect(runs, present)) {
      while (old.runs(k).vaddr() + old.runs(k).npages() * kPage <= piece.addr) ++k;
      const auto& src = old.runs(k);
      img::PageRun* nr = f.add_runs();
      nr->set_vaddr(piece.addr);
      nr->set_npages(piece.npages);
      nr->set_blob_off(src.blob_off() + (piece.addr - src.vaddr()));
    }
    out.push_back(std::move(f));
  }
  return out;
}

}  // namespace godwit::dump
