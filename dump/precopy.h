// Pre-copy driven by a caller: a running tree's memory copied round by round into a sink, then a
// final dump (dump::Dump with DumpOptions::precopy, into the same sink) that stores only what was
// written since the last round.
//
// Start seizes the tree briefly (every thread, as the dump does) to take a userfaultfd of each
// live process, lets it run, then starts dirty tracking from outside (dump/dirty.h: write-protect,
// async). Round 0 copies
// every present page of the tracked mappings; each later round copies the pages written since the
// previous round's scan (the scan write-protects them again). Round N of process PID goes to the
// blob "pages-PID-preN.img" (none when nothing was written); its page map is kept here, and the
// final dump writes the rounds' maps into pagemap-PID.img before its own (restore applies them in
// order: later pages win). What is not tracked (a process born after Start, a mapping made,
// moved or replaced since, a process that exec'd) is stored whole by the final dump; a process
// gone since Start is forgotten.
//
// A round that fails leaves the PreCopy unusable (a scan already re-protected pages that were
// then not copied): further rounds and the final dump refuse it. Destroying a PreCopy stops the
// tracking (closing each userfaultfd unregisters it and drops the write protection): after the
// final dump, or instead of it.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <map>
#include <memory>
#include <optional>
#include <vector>

#include "common/result.h"
#include "dump/lazy_wait.h"
#include "dump/pages.h"
#include "dump/vmflags.h"
#include "images/image.h"
#include "proto/pagemap.pb.h"

namespace godwit::dump {

class DirtyTracker;

// The files of round N of process PID: its page blob and the page map image written after it.
std::string RoundBlobName(pid_t pid, int round);     // pages-PID-preN.img
std::string RoundPageMapName(pid_t pid, int round);  // pagemap-PID-preN.img
// Whether name is a round's page blob (not the final dump's pages-PID.img); the name of the page
// map image that follows it (a reader of a set still arriving: the blob is whole once it is there).
bool IsRoundBlob(const std::string& name);
std::string RoundPageMapOf(const std::string& blob);

// A count of pre-copy rounds meaning "until they converge" (PreCopy::Converged).
inline constexpr int kPreCopyAuto = -1;

struct PreCopyOptions {
  images::Compression compression = images::Compression::kNone;
  int zstd_level = 3;
  // A lazily restored tree's pager (its container's record), waited for by its exit before
  // tracking starts (dump/lazy_wait.h).
  LazyPagerRef lazy_pager;
};

struct RoundStats {
  int round = 0;
  uint64_t pages = 0;         // pages copied
  uint64_t bytes = 0;         // their bytes
  uint64_t stored_bytes = 0;  // what they took in the sink (compressed, chunk headers)
  double ms = 0;              // the round's duration
  // This round's bytes over the time from the previous round's start to this one's: the pages
  // were written between the two rounds' scans (each at its round's start), not during this
  // round's own copy. How fast the tree writes memory: what the next round (or the frozen one)
  // will have to copy per second of delay. 0 for round 0.
  double dirty_bytes_per_s = 0;
};

class PreCopy {
 public:
  // Starts dirty tracking on every live process of the running tree rooted at pid. The tree
  // must not be stopped (a cgroup-frozen tree cannot run the injected userfaultfd()).
  static Result<std::unique_ptr<PreCopy>> Start(pid_t pid, images::Sink& sink,
                                                const PreCopyOptions& o = {});
  ~PreCopy();
  PreCopy(const PreCopy&) = delete;
  PreCopy& operator=(const PreCopy&) = delete;

  // Round 0: every present page of the tracked mappings; then the pages written since the last
  // round.
  Result<RoundStats> Round();
  const std::vector<RoundStats>& rounds() const { return rounds_; }
  pid_t pid() const { return pid_; }
  images::Sink& sink() const { return *sink_; }
  // Start's stop of the tree, measured: every thread seized, a call injected into each process
  // (its dirty tracking), let go. What a final dump's seize and per-process work costs on this
  // very tree scales with it (a migration's prediction of its blackout).
  double start_ms() const { return start_ms_; }
  // How long Start waited for a lazy restore's pager still filling the tree (0: none).
  double lazy_wait_ms() const { return lazy_wait_ms_; }
  size_t processes() const { return procs_.size(); }
  // Bytes the rounds stored in the sink, all together.
  uint64_t stored_bytes() const;
  // Usable by a final dump: at least one round done, none failed.
  Result<void> CheckUsable() const;

  // For the final dump (dump/mm.cc), the tree frozen. The tracker of pid; null when pid was not
  // tracked or no round ran (then every page is stored).
  DirtyTracker* Tracker(pid_t pid) const;
  // The rounds' page maps of pid in order, each cut down to the pages in present (sorted): a page
  // gone since (unmapped, or the zero page now) must not come back from an old round.
  // A round whose runs all lie in present (the usual case: nothing of it unmapped or dropped
  // since) comes as a reference to the page map image that round wrote
  // (pagemap-PID-preN.img: `runs_image`, no runs): rebuilding and serializing every earlier run
  // inside the freeze cost ~30 ms at 1 GiB after 8 rounds (~200k runs), and a migration has
  // sent those images before the freeze.
  std::vector<img::PageMap> EarlierMaps(pid_t pid, const std::vector<PageRange>& present) const;
  // pid's VMA flags as the last round saw them (null: not taken, see dump/vmflags.h).
  const VmFlagsSnapshot* VmFlagsOf(pid_t pid) const;

  // Before the final dump's freeze, the tree still running: each process whose last two rounds
  // (round 0, a copy of everything, not counted) stored at least kPrepareMin gets its final
  // page blob (pages-PID.img, uncompressed rounds only) made in the sink now, with room reserved
  // for as much as the larger of them held (the final delta is what was written since: usually
  // less; a writer in bursts, e.g. 1% every 100 ms, leaves rounds that caught one burst or
  // none). The frozen copy then writes into pages that exist: creating them costs 0.4-3.3 GB/s
  // on this VM, and inside the freeze that was most of a pre-copied dump's frozen time (2 GiB,
  // 1%/100 ms: 15-45 MiB deltas frozen 30-146 ms). Only an estimate: a delta larger than its
  // room takes the rest as before; the room left over is truncated when the blob is closed,
  // frozen (~8 GB/s here: far cheaper than creating the same pages). Once; failures only
  // logged (nothing prepared for that process).
  void PrepareFinal();
  // The final dump takes them (dump/dump.cc: into DumpContext::page_blobs).
  std::map<pid_t, std::unique_ptr<images::BlobWriter>> TakeFinalBlobs();
  uint64_t prepared_bytes() const { return prepared_bytes_; }  // room reserved by PrepareFinal
  static constexpr uint64_t kPrepareMin = 256 << 10;

  // Whether a caller running rounds until they converge (--pre-copy without a count) stops
  // after the rounds so far: the last one is small enough to copy frozen (kConvergedBytes), it
  // did not shrink (a round over 80% of the one before: more rounds would not help), or
  // kMaxAutoRounds ran. Never before two rounds.
  bool Converged() const;
  static constexpr uint64_t kConvergedBytes = 8 << 20;
  static constexpr int kMaxAutoRounds = 8;

 private:
  PreCopy() = default;
  struct Process {
    std::unique_ptr<DirtyTracker> tracker;
    std::vector<img::PageMap> maps;  // one per round that stored something
    std::vector<std::string> map_images;  // maps[i]'s own image (pagemap-PID-preN.img)
    std::optional<VmFlagsSnapshot> vmflags;  // as of the last round
    uint64_t last_bytes = 0;  // what the last round stored of it
    uint64_t before_bytes = 0;  // and the round before, from round 1 on (a writer in bursts)
  };
  Result<void> RoundOf(pid_t pid, Process& p, int round, RoundStats* rs);

  pid_t pid_ = 0;
  images::Sink* sink_ = nullptr;
  PreCopyOptions opts_;
  uint64_t zero_pfn_ = 0;
  std::map<pid_t, Process> procs_;
  std::vector<RoundStats> rounds_;
  std::chrono::steady_clock::time_point last_start_;
  bool failed_ = false;
  double start_ms_ = 0;
  double lazy_wait_ms_ = 0;
  bool prepared_ = false;
  uint64_t prepared_bytes_ = 0;
  std::map<pid_t, std::unique_ptr<images::BlobWriter>> final_blobs_;
};

}  // namespace godwit::dump
