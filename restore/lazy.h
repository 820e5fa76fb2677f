// Lazy restore (restore --lazy): the tree runs as soon as its non-memory state is back; the
// pages of its anonymous private memory are installed afterwards by userfaultfd, faulted pages
// first, the rest pushed in the background from two threads.
//
// How. The "mm" step (restore/pages.cc) registers each process's anonymous private VMAs with a
// userfaultfd taken from it (MISSING mode, NOT user-mode-only: a read(2) into a page not yet
// there must wait for it, not fail with EFAULT) and records, per page, which blob and offset
// hold it (later pre-copy rounds override earlier ones). Nothing is copied then. From the first
// registration on, the pager's threads run, because the rest of the restore (the coordinator's
// writes of a signal frame, mlock) may touch those pages too.
//
// Threads. One event thread polls every userfaultfd: page faults are served at once (the 64 KiB
// around the fault, or a zero page where the image has none); the non-cooperative events keep the
// record true: FORK (a child made while pages are missing gets its own userfaultfd: it is owed
// the same pages), REMAP (mremap moves what is owed), REMOVE and UNMAP (MADV_DONTNEED/munmap: a
// page dropped by the program must stay zero, never be filled later). Two workers copy what is
// left in 2 MiB pieces. A worker's UFFDIO_COPY runs under a shared gate; the event thread reads
// events under the exclusive gate, so no copy that was decided before a REMOVE lands after the
// kernel zapped the range (the kernel itself refuses copies with EAGAIN while an event is
// unread). A page already present (written by the program) is newer than the image: EEXIST is
// skipped.
//
// Life. Wait() returns once every page is in (or every owing process is gone); Detach() hands
// the work to a forked process (a restore that returns at once, --detach) and returns its pid.
// The destructor waits: a pager dropped early would leave pages that read back as zeros. If the
// pages cannot be read (a damaged chunk), the processes it knows are killed (SIGKILL, by pid)
// rather than left running with wrong memory; if the pager itself is killed, the pages not yet
// in read as zeros: documented in docs/engine.md.
#pragma once

#include <sys/types.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "common/remote.h"
#include "common/result.h"
#include "common/unique_fd.h"

namespace godwit::restore {

class LazyPager {
 public:
  struct Stats {
    uint64_t processes = 0;   // registered (forks included)
    uint64_t bytes = 0;       // installed by UFFDIO_COPY
    uint64_t faults = 0;      // page faults served
    uint64_t zero_faults = 0;  // of them: pages the image does not hold
    uint64_t forks = 0;
    uint64_t dropped_bytes = 0;  // owed pages the program unmapped or discarded first
    uint64_t lent = 0;  // faults that found their page in a worker's copy: it got their priority
    uint64_t discarded_bytes = 0;  // page-file bytes freed once installed (DiscardConsumed)
  };

  // background: workers push the pages nobody faulted (false: faulted pages only).
  // pace: the workers nap briefly and often (RestoreOptions::lazy_pace).
  explicit LazyPager(bool background = true, bool pace = true);
  // The page files are the caller's to give up (a migration's staging, deleted after): each
  // background piece's bytes are freed from its file (FALLOC_FL_PUNCH_HOLE) once installed. The
  // pages freed so are the ones the next installs get: on this VM a page that was in use
  // moments ago costs ~3x less to make than one the host took back (docs/engine.md), and the
  // files' memory goes as the container's comes. Not for a blob a forked child also owes (its
  // record shares the parent's), nor compressed chunks. Before any AddPages: the files are
  // opened for writing then.
  void DiscardConsumed(bool on) { discard_ = on; }
  ~LazyPager();  // Wait()s
  LazyPager(const LazyPager&) = delete;
  LazyPager& operator=(const LazyPager&) = delete;

  // Registers r's process's ranges [start, end) (sorted, page aligned, anonymous private) for
  // missing faults with a userfaultfd taken from it. The ranges the kernel refuses are left out.
  // false (not an error): this process cannot be paged lazily (no userfaultfd for it, e.g. inside
  // a user namespace): the caller fills it.
  Result<bool> AddProcess(remote::Remote& r, const std::vector<std::pair<uint64_t, uint64_t>>& ranges);
  // The ranges registered for pid (empty: none, it is filled eagerly).
  std::vector<std::pair<uint64_t, uint64_t>> Ranges(pid_t pid) const;
  // The registered parts of [va, va + len) (ranges sorted), in order: fn(va, len, registered).
  template <typename Fn>
  static void Split(const std::vector<std::pair<uint64_t, uint64_t>>& ranges, uint64_t va,
                    uint64_t len, Fn fn);
  // Pages of pid (inside its registered ranges) held by blob `path` (opened here, so it may be
  // unlinked afterwards; verified: its whole-file checksum was checked, chunks are not again):
  // each run's [va, va + len) holds the blob's logical bytes from off. Later calls win over
  // earlier ones for the same page (pre-copy rounds, then the final dump).
  struct Run {
    uint64_t va, len, off;
  };
  Result<void> AddPages(pid_t pid, const std::string& path, const std::string& name,
                        bool verified, const std::vector<Run>& runs);
  // Several blobs' pages of pid at once (every pre-copy round and the final dump), oldest first:
  // where they overlap the later wins. Resolved here in one sweep (newest first, against what
  // newer ones cover) and recorded in address order, instead of carving the record run by run:
  // ~100k runs of a 1 GiB tree after pre-copy cost 40-90 ms that way.
  struct Source {
    std::string path, name;
    bool verified = false;
    std::vector<Run> runs;  // sorted, non-overlapping
  };
  Result<void> AddPagesBatch(pid_t pid, const std::vector<Source>& sources);

  // Where each page of several rounds comes from once later rounds win: disjoint segments in
  // address order, `source` the index of the round (oldest first) that holds the page.
  struct Segment {
    uint64_t va, end;
    uint32_t source;
    uint64_t off;
  };
  static std::vector<Segment> Resolve(const std::vector<const std::vector<Run>*>& rounds);
  // *covered (sorted, merged intervals) |= runs (sorted); next is scratch space.
  static void Unite(std::vector<std::pair<uint64_t, uint64_t>>* covered,
                    const std::vector<Run>& runs,
                    std::vector<std::pair<uint64_t, uint64_t>>* next);
  // fn(s, e) for each part of the intervals `from` (sorted, disjoint) outside `holes` (sorted by
  // start; they may overlap), in order.
  template <typename Fn>
  static void Outside(const std::vector<std::pair<uint64_t, uint64_t>>& from,
                      const std::vector<std::pair<uint64_t, uint64_t>>& holes, Fn fn);

  struct Seg {
    uint64_t end;
    uint32_t blob;
    uint64_t off;
    pid_t worker = 0;  // in flight: the background worker copying it (0: a fault or FillNow)
  };
  using Map = std::map<uint64_t, Seg>;  // start -> segment; never overlapping
  // A process's owed pages of earlier pre-copy rounds resolved ahead, while a migration's
  // restore waits for the final state (restore/load.h PreloadPageMaps): recording ~200k segments
  // of a 1 GiB tree cost 20-46 ms inside the blackout. `pending.blob` indexes `blobs`.
  struct Prepared {
    std::vector<std::string> blobs;  // names in the image directory, oldest round first
    std::vector<std::pair<uint64_t, uint64_t>> covered;  // the union of the rounds' runs
    uint64_t bytes = 0;
    Map pending;
  };
  // Lays segs (sorted, disjoint; source indexes blob_of) over m: they win where they overlap.
  // A round resolved ahead is laid over the record of the earlier ones this way (load.cc).
  static void InsertSorted(Map& m, const std::vector<Segment>& segs,
                           const std::vector<uint32_t>& blob_of);
  // Takes [s, e) out of m: what it held there, in address order (source: the segment's blob).
  static std::vector<Segment> Take(Map& m, uint64_t s, uint64_t e);
  // Takes *prepared as pid's owed pages (before its later rounds' AddPages/AddPagesBatch, which
  // win over it): the map is moved in whole, its blob indices renumbered only if this pager's
  // differ. verified(name): the blob's whole-file checksum was checked.
  template <typename Verified>
  Result<void> AdoptPrepared(pid_t pid, const std::string& dir, Prepared* prepared,
                             Verified verified);
  // Installs now, on the calling thread, what pid is owed inside runs (in order, up to
  // max_bytes): the pages a migration's last round found written, the program's working set, go
  // in before it runs instead of each costing it a fault right after the switch. Returns the bytes
  // installed.
  Result<uint64_t> FillNow(pid_t pid, const std::vector<Run>& runs, uint64_t max_bytes);

  // Starts pushing the pages nobody faulted (two workers). Until then only faults are served: the
  // restore calls it once the tree runs, so the background copies do not take the CPU from the
  // restore itself (this machine has two cores).
  void Go();
  // Until every owed page is in or its process is gone; the first error (a page that could not
  // be read: its processes were killed). Idempotent. Calls Go().
  Result<void> Wait();
  // Forks a process that finishes the work (with stdio on /dev/null, in its own session) and
  // returns its pid; this object then owes nothing. 0 when nothing is owed.
  Result<pid_t> Detach();

  bool active() const;
  Stats stats() const;
  uint64_t owed_bytes() const;

 private:
  struct Proc {
    pid_t pid = 0;  // 0 for a forked child (the fork event does not say)
    UniqueFd uffd;
    std::vector<std::pair<uint64_t, uint64_t>> ranges;  // registered
    Map pending, inflight;
    bool dead = false;
  };
  struct Piece {
    Proc* proc;
    uint64_t va, len;
    uint32_t blob;
    uint64_t off;
  };
  struct Blob {
    UniqueFd fd;
    std::string name;
    bool verified;
    bool shared = false;  // never freed: a forked child's record names it, or it is read-only
    // Chunks found intact by any thread's reader (images::BlobReader::ShareChunkMarks): a chunk
    // part of which was discarded is not checked whole again.
    mutable std::shared_ptr<std::vector<std::atomic<bool>>> marks;  // set by a const Readers
  };
  // Parts of a piece a Copy installed, as a blob's logical bytes.
  struct Consumed {
    uint32_t blob;
    uint64_t off, len;
  };
  class Readers;  // per-thread blob readers (lazy.cc)

  static void Carve(Map& m, uint64_t s, uint64_t e, std::vector<Piece>* out, Proc* p);
  static void Insert(Map& m, uint64_t s, uint64_t e, uint32_t blob, uint64_t off);
  // Carve from it (the first node whose end is past s, or m.end()); returns the first node
  // starting at or after e.
  static Map::iterator CarveAt(Map& m, Map::iterator it, uint64_t s, uint64_t e,
                               std::vector<Piece>* out, Proc* p);
  // Under mu_: the blob's index (opened on first use); the live registered process of pid.
  Result<uint32_t> BlobIndex(const std::string& path, const std::string& name, bool verified);
  Result<Proc*> LiveProc(pid_t pid);
  // AdoptPrepared's body, once the blobs are numbered (remap[i]: the pager's index of blob i).
  Result<void> Adopt(pid_t pid, Prepared* prepared, const std::vector<uint32_t>& remap);
  void Start();
  void Stop();
  void EventLoop();
  void Worker();
  bool HandleEvents(std::vector<std::pair<Proc*, uint64_t>>* faults);
  // Serves one fault; false when it must be retried after the next events. quiet: not a fault
  // but the first owed page after 100 ms without events (a page in no VMA then is dropped).
  bool Serve(Proc* p, uint64_t addr, Readers& rd, bool quiet);
  // Copies what is still in flight of a taken piece. kRetry: EAGAIN (events unread);
  // kRetryUnmapped: a page in no registered VMA (an mremap or munmap whose event is unread);
  // drop_unmapped: such a page is dropped instead (no event came for it).
  enum class CopyResult { kDone, kRetry, kRetryUnmapped };
  CopyResult Copy(const Piece& pc, const char* data, bool drop_unmapped,
                  std::vector<Consumed>* consumed = nullptr);
  // Copy until done, waiting for the event thread whenever events are unread; false if the
  // pager stops first (what is left of the piece goes back to pending).
  bool CopyAll(const Piece& pc, const char* data, std::vector<Consumed>* consumed = nullptr);
  // DiscardConsumed: frees the whole file pages inside what was installed (raw chunks, blobs no
  // child shares).
  void Discard(const std::vector<Consumed>& consumed, Readers& rd);
  bool TakeBackground(Piece* pc);
  bool AllDone() const;  // mu_ held
  void Fail(Error e);
  void Wake();

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::shared_mutex gate_;
  std::vector<std::unique_ptr<Proc>> procs_;
  std::vector<Blob> blobs_;
  std::map<std::string, uint32_t> blob_index_;
  UniqueFd wake_;  // eventfd: the event thread's poll set changed, or stop
  std::thread events_;
  std::vector<std::thread> workers_;
  bool background_ = true;
  bool pace_ = true;
  bool discard_ = false;
  bool go_ = false;  // Go() was called: workers run
  bool running_ = false, stop_ = false, done_ = false;
  uint64_t generation_ = 0;  // events handled (a worker's EAGAIN waits for the next)
  std::atomic<bool> lent_{false};  // a worker got the event thread's priority (Serve)
  size_t cursor_ = 0;        // the process the workers fill next
  Stats stats_;
  std::unique_ptr<Error> error_;
};

template <typename Verified>
Result<void> LazyPager::AdoptPrepared(pid_t pid, const std::string& dir, Prepared* prepared,
                                      Verified verified) {
  std::vector<uint32_t> remap(prepared->blobs.size());
  {
    std::lock_guard<std::mutex> l(mu_);
    for (size_t i = 0; i < remap.size(); ++i) {
      const std::string& name = prepared->blobs[i];
      ASSIGN_OR_RETURN(remap[i], BlobIndex(dir + "/" + name, name, verified(name)));
    }
  }
  return Adopt(pid, prepared, remap);
}

template <typename Fn>
void LazyPager::Outside(const std::vector<std::pair<uint64_t, uint64_t>>& from,
                        const std::vector<std::pair<uint64_t, uint64_t>>& holes, Fn fn) {
  size_t h = 0;  // the first hole that ends after the current interval's start
  for (auto [s, e] : from) {
    while (h < holes.size() && holes[h].second <= s) ++h;
    for (size_t k = h; k < holes.size() && holes[k].first < e; ++k) {
      if (holes[k].first > s) fn(s, holes[k].first);
      s = std::max(s, holes[k].second);
    }
    if (s < e) fn(s, e);
  }
}

template <typename Fn>
void LazyPager::Split(const std::vector<std::pair<uint64_t, uint64_t>>& ranges, uint64_t va,
                      uint64_t len, Fn fn) {
  uint64_t end = va + len;
  auto it = std::upper_bound(ranges.begin(), ranges.end(), va,
                             [](uint64_t x, const std::pair<uint64_t, uint64_t>& r) {
                               return x < r.second;
                             });
  for (; it != ranges.end() && va < end; ++it) {
    const auto& [s, e] = *it;
    if (s >= end) break;
    if (va < s) {
      fn(va, s - va, false);
      va = s;
    }
    uint64_t x = std::min(end, e);
    fn(va, x - va, true);
    va = x;
  }
  if (va < end) fn(va, end - va, false);
}

}  // namespace godwit::restore
