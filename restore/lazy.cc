// The lazy pager (see lazy.h for the design and its rules).
#include "restore/lazy.h"

#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>

#include "common/log.h"
#include "common/priority.h"
#include "common/timing.h"
#include "common/page.h"
#include "common/uffd.h"
#include "images/image.h"

namespace godwit::restore {
namespace {

constexpr uint64_t kFaultWindow = 64 << 10;  // served around a fault
constexpr int kWorkerNice = 10;              // background copies yield (Worker)
constexpr int kLentNice = 0;                 // ...until a fault waits for one (Serve)
constexpr uint64_t kPiece = 2 << 20;          // a worker's copy
constexpr int kWorkers = 2;

constexpr uint64_t kFeatures = UFFD_FEATURE_EVENT_FORK | UFFD_FEATURE_EVENT_REMAP |
                               UFFD_FEATURE_EVENT_REMOVE | UFFD_FEATURE_EVENT_UNMAP;

}  // namespace

// Blob readers of one thread: a BlobReader keeps a decompression context and the last chunk, so
// threads do not share them. Each opens the pager's fd again through /proc/self/fd (its own file
// offset; works for a file unlinked since).
class LazyPager::Readers {
 public:
  explicit Readers(const LazyPager* pager) : pager_(pager) {}
  Result<void> Read(uint32_t blob, uint64_t off, void* dst, size_t len) {
    if (blob >= readers_.size()) readers_.resize(blob + 1);
    if (!readers_[blob]) {
      std::string path, name;
      bool verified;
      {
        std::lock_guard<std::mutex> l(pager_->mu_);
        const Blob& b = pager_->blobs_[blob];
        path = StrFormat("/proc/self/fd/%d", b.fd.get());
        name = b.name;
        verified = b.verified;
      }
      ASSIGN_OR_RETURN(readers_[blob], images::BlobReader::OpenFile(path, name, verified));
      std::lock_guard<std::mutex> l(pager_->mu_);
      auto& marks = pager_->blobs_[blob].marks;
      if (!marks) marks = readers_[blob]->MakeChunkMarks();
      readers_[blob]->ShareChunkMarks(marks);
    }
    return readers_[blob]->Read(off, dst, len);
  }
  // The file extents of logical [off, off + len) of a blob this thread has read, if every chunk
  // there is raw and found intact (so the rest of each reads without its whole-chunk check).
  Result<std::vector<images::BlobReader::Extent>> Extents(uint32_t blob, uint64_t off,
                                                          uint64_t len) {
    if (blob >= readers_.size() || !readers_[blob])
      return MakeError(ErrorKind::kGeneric, 0, "blob %u: not read by this thread", blob);
    if (!readers_[blob]->Checked(off, len))
      return MakeError(ErrorKind::kGeneric, 0, "blob %u: a chunk not checked yet", blob);
    return readers_[blob]->RawExtents(off, len);
  }

 private:
  const LazyPager* pager_;
  std::vector<std::unique_ptr<images::BlobReader>> readers_;
};

LazyPager::LazyPager(bool background, bool pace) : background_(background), pace_(pace) {}

LazyPager::~LazyPager() {
  auto r = Wait();
  if (!r.ok()) LOG_WARN("lazy pages: %s", r.error().to_string().c_str());
}

bool LazyPager::active() const {
  std::lock_guard<std::mutex> l(mu_);
  return !procs_.empty() && !done_;
}

LazyPager::Stats LazyPager::stats() const {
  std::lock_guard<std::mutex> l(mu_);
  return stats_;
}

uint64_t LazyPager::owed_bytes() const {
  std::lock_guard<std::mutex> l(mu_);
  uint64_t n = 0;
  for (const auto& p : procs_) {
    if (p->dead) continue;
    for (const auto& [s, seg] : p->pending) n += seg.end - s;
    for (const auto& [s, seg] : p->inflight) n += seg.end - s;
  }
  return n;
}

// Removes [s, e) from m; the removed parts (with their sources) go to out. A segment cut on
// its left keeps its node (only its end changes); one cut in the middle gains one node: the
// common case of a later pre-copy round's page inside an earlier round's run costs one insert.
void LazyPager::Carve(Map& m, uint64_t s, uint64_t e, std::vector<Piece>* out, Proc* p) {
  if (s >= e) return;
  auto it = m.upper_bound(s);
  if (it != m.begin()) {
    auto prev = std::prev(it);
    if (prev->second.end > s) it = prev;
  }
  CarveAt(m, it, s, e, out, p);
}

LazyPager::Map::iterator LazyPager::CarveAt(Map& m, Map::iterator it, uint64_t s, uint64_t e,
                                            std::vector<Piece>* out, Proc* p) {
  while (it != m.end() && it->first < e) {
    const uint64_t ss = it->first;
    const Seg seg = it->second;
    const uint64_t cs = std::max(ss, s), ce = std::min(seg.end, e);
    if (out) out->push_back({p, cs, ce - cs, seg.blob, seg.off + (cs - ss)});
    if (ss < cs) {
      it->second.end = cs;
      if (ce < seg.end)
        return m.emplace_hint(std::next(it), ce,
                              Seg{seg.end, seg.blob, seg.off + (ce - ss), seg.worker});
      ++it;
    } else {
      it = m.erase(it);
      if (ce < seg.end)
        return m.emplace_hint(it, ce, Seg{seg.end, seg.blob, seg.off + (ce - ss), seg.worker});
    }
  }
  return it;
}

void LazyPager::InsertSorted(Map& m, const std::vector<Segment>& segs,
                             const std::vector<uint32_t>& blob_of) {
  // One walk along m: the next segment is usually a few nodes on (a migration's final dump over
  // the rounds' record, ~200k nodes laid out in address order), where a lookup from the root
  // costs ~18 cold nodes; a far one is looked up.
  auto pos = m.begin();
  for (const Segment& g : segs) {
    int steps = 0;
    while (pos != m.end() && pos->second.end <= g.va && steps < 16) {
      ++pos;
      ++steps;
    }
    if (pos != m.end() && pos->second.end <= g.va) {
      pos = m.upper_bound(g.va);
      if (pos != m.begin() && std::prev(pos)->second.end > g.va) pos = std::prev(pos);
    }
    pos = CarveAt(m, pos, g.va, g.end, nullptr, nullptr);
    m.emplace_hint(pos, g.va, Seg{g.end, blob_of[g.source], g.off});
  }
}

void LazyPager::Insert(Map& m, uint64_t s, uint64_t e, uint32_t blob, uint64_t off) {
  Carve(m, s, e, nullptr, nullptr);
  m.emplace(s, Seg{e, blob, off});
}

Result<bool> LazyPager::AddProcess(remote::Remote& r,
                                   const std::vector<std::pair<uint64_t, uint64_t>>& ranges) {
  if (ranges.empty()) return false;
  auto taken = uffd::TakeFromTarget(r, O_CLOEXEC | O_NONBLOCK);
  if (!taken.ok()) {
    // Whatever the reason (EPERM inside a user namespace: a userfaultfd that waits for kernel
    // accesses needs CAP_SYS_PTRACE in the initial one), this process is filled now instead.
    LOG_INFO("pid %d: no userfaultfd for lazy pages (%s): its memory is filled now", r.pid(),
             taken.error().to_string().c_str());
    return false;
  }
  auto p = std::make_unique<Proc>();
  p->pid = r.pid();
  p->uffd = std::move(*taken);
  uffdio_api api{};
  api.api = UFFD_API;
  api.features = kFeatures;
  if (ioctl(p->uffd.get(), UFFDIO_API, &api) < 0) {
    LOG_INFO("pid %d: UFFDIO_API with fork/remap/remove/unmap events: %s: its memory is filled "
             "now",
             r.pid(), strerror(errno));
    return false;
  }
  for (const auto& [s, e] : ranges) {
    uffdio_register reg{};
    reg.range.start = s;
    reg.range.len = e - s;
    reg.mode = UFFDIO_REGISTER_MODE_MISSING;
    if (ioctl(p->uffd.get(), UFFDIO_REGISTER, &reg) < 0 ||
        !(reg.ioctls & (1ULL << _UFFDIO_COPY)) || !(reg.ioctls & (1ULL << _UFFDIO_ZEROPAGE))) {
      LOG_DEBUG("pid %d: lazy register %#lx-%#lx: %s", r.pid(), static_cast<unsigned long>(s),
                static_cast<unsigned long>(e), strerror(errno));
      continue;
    }
    p->ranges.push_back({s, e});
  }
  if (p->ranges.empty()) return false;
  {
    std::lock_guard<std::mutex> l(mu_);
    procs_.push_back(std::move(p));
    stats_.processes++;
    done_ = false;
  }
  Start();
  Wake();
  return true;
}

std::vector<std::pair<uint64_t, uint64_t>> LazyPager::Ranges(pid_t pid) const {
  std::lock_guard<std::mutex> l(mu_);
  for (const auto& p : procs_)
    if (p->pid == pid && !p->dead) return p->ranges;
  return {};
}

Result<void> LazyPager::AddPages(pid_t pid, const std::string& path, const std::string& name,
                                 bool verified, const std::vector<Run>& runs) {
  if (runs.empty()) return Ok();
  std::lock_guard<std::mutex> l(mu_);
  ASSIGN_OR_RETURN(Proc * p, LiveProc(pid));
  ASSIGN_OR_RETURN(uint32_t b, BlobIndex(path, name, verified));
  for (const auto& r : runs) Insert(p->pending, r.va, r.va + r.len, b, r.off);
  cv_.notify_all();
  return Ok();
}

Result<LazyPager::Proc*> LazyPager::LiveProc(pid_t pid) {
  for (auto& q : procs_)
    if (q->pid == pid && !q->dead) return q.get();
  return MakeError(ErrorKind::kGeneric, 0, "lazy pages: pid %d is not registered", pid);
}

Result<uint32_t> LazyPager::BlobIndex(const std::string& path, const std::string& name,
                                      bool verified) {
  auto it = blob_index_.find(path);
  if (it != blob_index_.end()) return it->second;
  // Writable only to free what was installed (DiscardConsumed: fallocate needs it); a file that
  // cannot be written (a read-only mount) is read and kept.
  bool keep = !discard_;
  int fd = keep ? -1 : open(path.c_str(), O_RDWR | O_CLOEXEC);
  if (fd < 0 && !keep && (errno == EROFS || errno == EACCES || errno == EPERM)) keep = true;
  if (keep) fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Errno("open %s", path.c_str());
  uint32_t b = static_cast<uint32_t>(blobs_.size());
  blobs_.push_back({UniqueFd(fd), name, verified});
  blobs_.back().shared = keep && discard_;  // never freed
  blob_index_[path] = b;
  return b;
}

std::vector<LazyPager::Segment> LazyPager::Resolve(
    const std::vector<const std::vector<Run>*>& rounds) {
  std::vector<Segment> out;
  std::vector<std::pair<uint64_t, uint64_t>> covered, next;  // sorted, merged
  size_t total = 0;
  for (const auto* runs : rounds) total += runs->size();
  out.reserve(total * 2);  // each newer run splits at most one older segment in two
  std::vector<size_t> blocks;  // where each round's (sorted) part of `out` starts
  // Newest first: each run minus what newer rounds cover.
  for (size_t k = rounds.size(); k-- > 0;) {
    const auto& runs = *rounds[k];
    if (runs.empty()) continue;
    blocks.push_back(out.size());
    size_t c = 0;
    for (const Run& r : runs) {
      uint64_t s = r.va, e = r.va + r.len;
      while (c < covered.size() && covered[c].second <= s) ++c;
      for (size_t j = c; j < covered.size() && covered[j].first < e && s < e; ++j) {
        if (covered[j].first > s)
          out.push_back({s, covered[j].first, static_cast<uint32_t>(k), r.off + (s - r.va)});
        s = std::max(s, covered[j].second);
      }
      if (s < e) out.push_back({s, e, static_cast<uint32_t>(k), r.off + (s - r.va)});
    }
    Unite(&covered, runs, &next);
  }
  // Each round's part is sorted already (its runs are): merged pairwise, not sorted again (a
  // 1 GiB process after pre-copy rounds has ~100k segments here).
  auto by_va = [](const Segment& x, const Segment& y) { return x.va < y.va; };
  blocks.push_back(out.size());
  while (blocks.size() > 2) {
    std::vector<size_t> merged;
    for (size_t i = 0; i + 1 < blocks.size(); i += 2) {
      merged.push_back(blocks[i]);
      if (i + 2 < blocks.size())
        std::inplace_merge(out.begin() + blocks[i], out.begin() + blocks[i + 1],
                           out.begin() + blocks[i + 2], by_va);
    }
    merged.push_back(blocks.back());
    blocks.swap(merged);
  }
  return out;
}

void LazyPager::Unite(std::vector<std::pair<uint64_t, uint64_t>>* covered,
                      const std::vector<Run>& runs,
                      std::vector<std::pair<uint64_t, uint64_t>>* next) {
  next->clear();
  next->reserve(covered->size() + runs.size());
  auto push = [&](uint64_t s, uint64_t e) {
    if (!next->empty() && s <= next->back().second)
      next->back().second = std::max(next->back().second, e);
    else
      next->push_back({s, e});
  };
  const auto& cov = *covered;
  size_t a = 0, b = 0;
  while (a < cov.size() || b < runs.size()) {
    if (b >= runs.size() || (a < cov.size() && cov[a].first < runs[b].va)) {
      push(cov[a].first, cov[a].second);
      ++a;
    } else {
      push(runs[b].va, runs[b].va + runs[b].len);
      ++b;
    }
  }
  covered->swap(*next);
}

std::vector<LazyPager::Segment> LazyPager::Take(Map& m, uint64_t s, uint64_t e) {
  std::vector<Piece> gone;
  Carve(m, s, e, &gone, nullptr);
  std::vector<Segment> out;
  out.reserve(gone.size());
  for (const auto& pc : gone) out.push_back({pc.va, pc.va + pc.len, pc.blob, pc.off});
  return out;
}

Result<void> LazyPager::Adopt(pid_t pid, Prepared* prepared, const std::vector<uint32_t>& remap) {
  if (prepared->pending.empty()) return Ok();
  std::lock_guard<std::mutex> l(mu_);
  ASSIGN_OR_RETURN(Proc * p, LiveProc(pid));
  bool same = true;
  for (size_t i = 0; i < remap.size(); ++i) same = same && remap[i] == i;
  Map& m = prepared->pending;
  if (!same)
    for (auto& [va, seg] : m) seg.blob = remap.at(seg.blob);
  if (p->pending.empty()) {
    p->pending.swap(m);
  } else {
    for (const auto& [va, seg] : m) Insert(p->pending, va, seg.end, seg.blob, seg.off);
  }
  cv_.notify_all();
  return Ok();
}

Result<void> LazyPager::AddPagesBatch(pid_t pid, const std::vector<Source>& sources) {
  auto started = timing::Clock::now();
  std::vector<uint32_t> index(sources.size());
  {
    std::lock_guard<std::mutex> l(mu_);
    for (size_t i = 0; i < sources.size(); ++i) {
      if (sources[i].runs.empty()) continue;
      ASSIGN_OR_RETURN(index[i], BlobIndex(sources[i].path, sources[i].name, sources[i].verified));
    }
  }
  std::vector<const std::vector<Run>*> rounds;
  for (const auto& src : sources) rounds.push_back(&src.runs);
  std::vector<Segment> out = Resolve(rounds);
  auto merged_at = timing::Clock::now();
  std::lock_guard<std::mutex> l(mu_);
  ASSIGN_OR_RETURN(Proc * p, LiveProc(pid));
  LOG_DEBUG("pid %d: lazy record: %zu segments merged in %.2f ms", pid, out.size(),
            timing::MsBetween(started, merged_at));
  if (p->pending.empty()) {
    for (const Segment& o : out)
      p->pending.emplace_hint(p->pending.end(), o.va, Seg{o.end, index[o.source], o.off});
  } else {
    InsertSorted(p->pending, out, index);
  }
  cv_.notify_all();
  return Ok();
}

Result<uint64_t> LazyPager::FillNow(pid_t pid, const std::vector<Run>& runs,
                                    uint64_t max_bytes) {
  Readers rd(this);
  std::vector<char> buf;
  uint64_t filled = 0;
  for (const Run& run : runs) {
    if (filled >= max_bytes) break;
    std::vector<Piece> pieces;
    {
      std::lock_guard<std::mutex> l(mu_);
      ASSIGN_OR_RETURN(Proc * p, LiveProc(pid));
      Carve(p->pending, run.va, run.va + std::min(run.len, max_bytes - filled), &pieces, p);
      for (const Piece& pc : pieces) p->inflight[pc.va] = {pc.va + pc.len, pc.blob, pc.off};
    }
    for (const Piece& pc : pieces) {
      buf.resize(pc.len);
      TRY_CTX(rd.Read(pc.blob, pc.off, buf.data(), pc.len), "lazy pages of pid %d at %#lx", pid,
              static_cast<unsigned long>(pc.va));
      if (!CopyAll(pc, buf.data())) return filled;
      filled += pc.len;
    }
  }
  return filled;
}

void LazyPager::Start() {
  std::lock_guard<std::mutex> l(mu_);
  if (running_) return;
  if (!wake_) wake_ = UniqueFd(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  running_ = true;
  stop_ = false;
  events_ = std::thread([this] { EventLoop(); });
  if (background_ && go_)
    for (int i = 0; i < kWorkers; ++i) workers_.emplace_back([this] { Worker(); });
}

void LazyPager::Go() {
  std::lock_guard<std::mutex> l(mu_);
  if (go_) return;
  go_ = true;
  if (running_ && background_)
    for (int i = 0; i < kWorkers; ++i) workers_.emplace_back([this] { Worker(); });
}

void LazyPager::Stop() {
  {
    std::lock_guard<std::mutex> l(mu_);
    if (!running_) return;
    stop_ = true;
  }
  Wake();
  cv_.notify_all();
  if (events_.joinable()) events_.join();
  for (auto& t : workers_) t.join();
  workers_.clear();
  std::lock_guard<std::mutex> l(mu_);
  running_ = false;
}

void LazyPager::Wake() {
  if (!wake_) return;
  uint64_t one = 1;
  ssize_t n = write(wake_.get(), &one, sizeof(one));
  (void)n;
}

bool LazyPager::AllDone() const {
  for (const auto& p : procs_)
    if (!p->dead && (!p->pending.empty() || !p->inflight.empty())) return false;
  return true;
}

void LazyPager::Fail(Error e) {
  std::vector<pid_t> kill_them;
  {
    std::lock_guard<std::mutex> l(mu_);
    if (!error_) error_ = std::make_unique<Error>(std::move(e));
    for (auto& p : procs_) {
      if (!p->dead && p->pid > 0) kill_them.push_back(p->pid);
      p->dead = true;
      p->pending.clear();
      p->inflight.clear();
    }
  }
  // Wrong memory must not run: the processes this restore made are killed (their pids are ours).
  for (pid_t pid : kill_them) kill(pid, SIGKILL);
  cv_.notify_all();
  Wake();
}

Result<void> LazyPager::Wait() {
  Go();
  {
    std::unique_lock<std::mutex> l(mu_);
    cv_.wait(l, [&] { return !running_ || AllDone(); });
  }
  Stop();
  std::lock_guard<std::mutex> l(mu_);
  if (!done_ && stats_.processes > 0)
    LOG_DEBUG("lazy pages done: %llu bytes installed, %llu faults (%llu zero, %llu waited for "
              "a worker), %llu forks, %llu bytes dropped by the program first",
              static_cast<unsigned long long>(stats_.bytes),
              static_cast<unsigned long long>(stats_.faults),
              static_cast<unsigned long long>(stats_.zero_faults),
              static_cast<unsigned long long>(stats_.lent),
              static_cast<unsigned long long>(stats_.forks),
              static_cast<unsigned long long>(stats_.dropped_bytes));
  done_ = true;
  // Closing the userfaultfds unregisters the ranges: every page is in (or its process is gone).
  for (auto& p : procs_) p->uffd.reset();
  if (error_) return *error_;
  return Ok();
}

Result<pid_t> LazyPager::Detach() {
  if (!active() || owed_bytes() == 0) {
    TRY(Wait());
    return 0;
  }
  // The threads do not survive fork: stop them (faults wait meanwhile), fork, start them again
  // in the child. The parent's copies of the userfaultfds are then closed: the child's keep the
  // ranges registered.
  Stop();
  pid_t child = fork();
  if (child < 0) {
    Start();
    return Errno("fork the lazy pager");
  }
  if (child == 0) {
    // Only what the pager needs stays open: not the caller's pipes, locks or namespaces (a
    // caller waiting for EOF on our stdout, or a lock on the container's state, would wait for
    // the whole fill).
    setsid();
    int null = open("/dev/null", O_RDWR);
    if (null >= 0) {
      dup2(null, 0);
      dup2(null, 1);
      dup2(null, 2);
    }
    std::vector<int> keep = {0, 1, 2, wake_.get()};
    for (const auto& p : procs_) keep.push_back(p->uffd.get());
    for (const auto& b : blobs_) keep.push_back(b.fd.get());
    std::sort(keep.begin(), keep.end());
    int from = 0;
    for (int k : keep) {
      if (k > from) syscall(SYS_close_range, from, k - 1, 0);
      from = std::max(from, k + 1);
    }
    syscall(SYS_close_range, from, ~0U, 0);
    Start();
    auto r = Wait();
    _exit(r.ok() ? 0 : 1);
  }
  std::lock_guard<std::mutex> l(mu_);
  for (auto& p : procs_) {
    p->uffd.reset();
    p->dead = true;
    // Not freed here: freeing ~100k nodes writes to heap pages the child shares copy-on-write,
    // a fault and a page copy each (40 ms at 1 GiB, in a migration's blackout). The caller exits
    // soon; the record is dropped with its address space.
    new Map(std::move(p->pending));
    new Map(std::move(p->inflight));
    p->pending = Map();
    p->inflight = Map();
  }
  done_ = true;
  return child;
}

// Reads every message of every userfaultfd (exclusive gate: no copy is running), keeps the record
// true and collects the faults. false when nothing was read.
bool LazyPager::HandleEvents(std::vector<std::pair<Proc*, uint64_t>>* faults) {
  std::unique_lock<std::shared_mutex> gate(gate_);
  std::lock_guard<std::mutex> l(mu_);
  bool any = false;
  std::vector<std::unique_ptr<Proc>> born;
  for (size_t i = 0; i < procs_.size(); ++i) {
    Proc* p = procs_[i].get();
    if (!p->uffd) continue;
    uffd_msg msgs[64];
    for (;;) {
      ssize_t n = read(p->uffd.get(), msgs, sizeof(msgs));
      if (n <= 0) break;
      any = true;
      for (size_t k = 0; k < static_cast<size_t>(n) / sizeof(uffd_msg); ++k) {
        const uffd_msg& m = msgs[k];
        switch (m.event) {
          case UFFD_EVENT_PAGEFAULT:
            faults->push_back({p, m.arg.pagefault.address & ~(kPage - 1)});
            break;
          case UFFD_EVENT_FORK: {
            // The child owes what the parent owed at the fork (nothing is being copied now).
            auto c = std::make_unique<Proc>();
            c->uffd = UniqueFd(static_cast<int>(m.arg.fork.ufd));
            fcntl(c->uffd.get(), F_SETFL, O_NONBLOCK);
            fcntl(c->uffd.get(), F_SETFD, FD_CLOEXEC);
            c->ranges = p->ranges;
            c->pending = p->pending;
            for (const auto& [s, seg] : p->inflight) Insert(c->pending, s, seg.end, seg.blob, seg.off);
            // Both now owe those bytes: no copy into one frees them (DiscardConsumed).
            if (discard_)
              for (const auto& [s, seg] : c->pending) blobs_[seg.blob].shared = true;
            stats_.forks++;
            stats_.processes++;
            born.push_back(std::move(c));
            break;
          }
          case UFFD_EVENT_REMAP: {
            uint64_t from = m.arg.remap.from, to = m.arg.remap.to, len = m.arg.remap.len;
            std::vector<Piece> moved;
            Carve(p->pending, from, from + len, &moved, p);
            Carve(p->inflight, from, from + len, &moved, p);
            for (const auto& pc : moved)
              Insert(p->pending, pc.va - from + to, pc.va - from + to + pc.len, pc.blob, pc.off);
            break;
          }
          case UFFD_EVENT_REMOVE:
          case UFFD_EVENT_UNMAP: {
            uint64_t s = m.arg.remove.start, e = m.arg.remove.end;
            std::vector<Piece> gone;
            Carve(p->pending, s, e, &gone, p);
            Carve(p->inflight, s, e, &gone, p);
            for (const auto& pc : gone) stats_.dropped_bytes += pc.len;
            break;
          }
          default:
            break;
        }
      }
    }
  }
  for (auto& c : born) procs_.push_back(std::move(c));
  if (any) {
    generation_++;
    cv_.notify_all();
  }
  return any;
}

LazyPager::CopyResult LazyPager::Copy(const Piece& pc, const char* data, bool drop_unmapped,
                                      std::vector<Consumed>* consumed) {
  // What is still owed of the piece (events may have taken parts of it).
  std::vector<Piece> parts;
  {
    std::lock_guard<std::mutex> l(mu_);
    if (pc.proc->dead) return CopyResult::kDone;
    auto it = pc.proc->inflight.upper_bound(pc.va);
    if (it != pc.proc->inflight.begin()) --it;
    for (; it != pc.proc->inflight.end() && it->first < pc.va + pc.len; ++it) {
      uint64_t s = std::max(it->first, pc.va), e = std::min(it->second.end, pc.va + pc.len);
      if (s < e) parts.push_back({pc.proc, s, e - s, it->second.blob, it->second.off + (s - it->first)});
    }
  }
  int fd = pc.proc->uffd.get();
  uint64_t copied = 0;
  for (const auto& part : parts) {
    // The data of a part: the same blob bytes the piece was read from (events only carve).
    uint64_t va = part.va, len = part.len;
    const char* src = data + (part.va - pc.va);
    bool page_at_a_time = false;
    while (len > 0) {
      uffdio_copy cp{};
      cp.dst = va;
      cp.src = reinterpret_cast<uint64_t>(src);
      cp.len = page_at_a_time ? kPage : len;
      int rc = ioctl(fd, UFFDIO_COPY, &cp);
      int err = errno;
      uint64_t done = rc == 0 ? cp.len : (cp.copy > 0 ? static_cast<uint64_t>(cp.copy) : 0);
      {
        std::lock_guard<std::mutex> l(mu_);
        Carve(pc.proc->inflight, va, va + done, nullptr, nullptr);
      }
      if (consumed && done > 0) consumed->push_back({part.blob, part.off + (va - part.va), done});
      copied += done;
      va += done;
      src += done;
      len -= done;
      if (rc == 0 || len == 0) continue;
      if (err == EEXIST) {
        // Present: the program wrote it (newer than the image). Skip the page.
        std::lock_guard<std::mutex> l(mu_);
        Carve(pc.proc->inflight, va, va + kPage, nullptr, nullptr);
        va += kPage;
        src += kPage;
        len -= kPage;
        continue;
      }
      if (err == ENOENT && !page_at_a_time && len > kPage) {
        // The range is not one registered VMA now. Either it crosses a VMA's end (a split by
        // mprotect, which sends no event): page by page from here; or part of it was just moved
        // or unmapped (mremap, munmap): the kernel looks the VMA up before it checks for an unread
        // event, so that is ENOENT too, not EAGAIN.
        page_at_a_time = true;
        continue;
      }
      if (err == ENOENT && !drop_unmapped) {
        // No registered VMA at va: an mremap or munmap whose event is not read yet (the page
        // must stay owed: the event moves it, or drops it) — wait for the events, then again.
        // Dropping the rest here once lost pages next to a moved region (zeros where the image
        // had data).
        std::lock_guard<std::mutex> l(mu_);
        stats_.bytes += copied;
        return CopyResult::kRetryUnmapped;
      }
      if (err == EAGAIN || err == EINTR) {
        std::lock_guard<std::mutex> l(mu_);
        stats_.bytes += copied;
        return CopyResult::kRetry;
      }
      std::lock_guard<std::mutex> l(mu_);
      if (err == ESRCH) {
        // The process is gone (exit, exec).
        pc.proc->dead = true;
        pc.proc->pending.clear();
        pc.proc->inflight.clear();
        break;
      }
      if (err == ENOENT) {
        // Still in no registered VMA after events came and went (drop_unmapped): nothing can
        // fault on it; this page is not owed any more.
        LOG_DEBUG("lazy pages: pid %d at %#lx: in no registered range, dropped", pc.proc->pid,
                  static_cast<unsigned long>(va));
        Carve(pc.proc->inflight, va, va + kPage, nullptr, nullptr);
        va += kPage;
        src += kPage;
        len -= kPage;
        continue;
      }
      LOG_WARN("lazy pages: UFFDIO_COPY pid %d at %#lx: %s", pc.proc->pid,
               static_cast<unsigned long>(va), strerror(err));
      Carve(pc.proc->inflight, va, va + len, nullptr, nullptr);
      break;
    }
  }
  std::lock_guard<std::mutex> l(mu_);
  stats_.bytes += copied;
  cv_.notify_all();
  return CopyResult::kDone;
}

void LazyPager::Discard(const std::vector<Consumed>& consumed, Readers& rd) {
  uint64_t freed = 0;
  for (const Consumed& c : consumed) {
    int fd;
    std::string name;
    {
      // A child forked before this check shares the blob (marked while its record was made,
      // under mu_ and the exclusive gate; a copy into the parent after its fork fails until that
      // event is read). One forked after it owes none of these bytes: they were installed first.
      std::lock_guard<std::mutex> l(mu_);
      if (blobs_[c.blob].shared) continue;
      fd = blobs_[c.blob].fd.get();
      name = blobs_[c.blob].name;
    }
    auto ext = rd.Extents(c.blob, c.off, c.len);
    if (!ext.ok()) continue;  // compressed, or not read here: kept
    for (const auto& e : *ext) {
      // Only file pages wholly inside: a page shared with bytes still owed stays.
      const uint64_t s = PageAlignUp(e.file_off), end = PageAlignDown(e.file_off + e.len);
      if (s >= end) continue;
      if (fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(s),
                    static_cast<off_t>(end - s)) < 0) {
        LOG_DEBUG("lazy pages: %s: freeing [%llu, +%llu): %s", name.c_str(),
                  static_cast<unsigned long long>(s), static_cast<unsigned long long>(end - s),
                  strerror(errno));
        return;  // a file system that cannot: nothing more to free
      }
      freed += end - s;
    }
  }
  std::lock_guard<std::mutex> l(mu_);
  stats_.discarded_bytes += freed;
}

// Takes the next background piece (moved to inflight); false when nothing is pending.
bool LazyPager::TakeBackground(Piece* pc) {
  for (size_t n = 0; n < procs_.size(); ++n) {
    Proc* p = procs_[(cursor_ + n) % procs_.size()].get();
    if (p->dead || p->pending.empty() || !p->uffd) continue;
    auto it = p->pending.begin();
    uint64_t s = it->first, e = std::min(it->second.end, s + kPiece);
    std::vector<Piece> out;
    Carve(p->pending, s, e, &out, p);
    *pc = out.front();
    p->inflight[s] = {e, pc->blob, pc->off, static_cast<pid_t>(gettid())};
    cursor_ = (cursor_ + n) % procs_.size();
    return true;
  }
  return false;
}

void LazyPager::Worker() {
  // Pushing pages nobody waits for yields to everything else on the machine: the restored
  // program, the faults it takes (the event thread is not niced), a migration's switchover.
  // Until a fault lands in the piece it copies: then the program waits for it, and the event
  // thread raises it to kLentNice (Serve) until the piece is in.
  const auto self = static_cast<id_t>(gettid());
  setpriority(PRIO_PROCESS, self, kWorkerNice);
  Readers rd(this);
  std::vector<char> buf(kPiece);
  std::vector<Consumed> consumed;
  Pacer pacer(pace_);  // and naps briefly and often (common/priority.h: nice is not enough)
  for (;;) {
    Piece pc{};
    {
      std::unique_lock<std::mutex> l(mu_);
      cv_.wait(l, [&] {
        if (stop_) return true;
        for (const auto& p : procs_)
          if (!p->dead && !p->pending.empty() && p->uffd) return true;
        return false;
      });
      if (stop_) return;
      if (!TakeBackground(&pc)) continue;
    }
    auto r = rd.Read(pc.blob, pc.off, buf.data(), pc.len);
    if (!r.ok()) {
      Fail(std::move(r.error().wrap(StrFormat("lazy pages of pid %d at %#lx", pc.proc->pid,
                                              static_cast<unsigned long>(pc.va)))));
      return;
    }
    consumed.clear();
    if (!CopyAll(pc, buf.data(), discard_ ? &consumed : nullptr)) return;
    if (!consumed.empty()) Discard(consumed, rd);
    pacer.Tick();
    if (lent_.load(std::memory_order_relaxed) && getpriority(PRIO_PROCESS, self) != kWorkerNice)
      setpriority(PRIO_PROCESS, self, kWorkerNice);
  }
}

bool LazyPager::CopyAll(const Piece& pc, const char* data, std::vector<Consumed>* consumed) {
  // ENOENT with no event read since, this many times (5 ms apart): the page is in no VMA and no
  // event will say so (a page lies in no registered range only through an event otherwise).
  constexpr int kUnmappedTries = 200;
  int unmapped_tries = 0;
  uint64_t last_gen = 0;
  for (;;) {
    uint64_t gen;
    CopyResult res;
    {
      std::shared_lock<std::shared_mutex> gate(gate_);
      {
        std::lock_guard<std::mutex> l(mu_);
        gen = generation_;
      }
      if (gen != last_gen) unmapped_tries = 0;
      last_gen = gen;
      res = Copy(pc, data, unmapped_tries >= kUnmappedTries, consumed);
    }
    if (res == CopyResult::kDone) return true;
    if (res == CopyResult::kRetryUnmapped) unmapped_tries++;
    // Events are unread: the event thread reads them (exclusive gate), then we go on.
    std::unique_lock<std::mutex> l(mu_);
    cv_.wait_for(l, std::chrono::milliseconds(5), [&] { return stop_ || generation_ != gen; });
    if (stop_) {
      // The rest goes back to pending for whoever runs next (Detach's child).
      std::vector<Piece> back;
      Carve(pc.proc->inflight, pc.va, pc.va + pc.len, &back, pc.proc);
      for (const auto& b : back) Insert(pc.proc->pending, b.va, b.va + b.len, b.blob, b.off);
      return false;
    }
  }
}

bool LazyPager::Serve(Proc* p, uint64_t addr, Readers& rd, bool quiet) {
  enum { kCopy, kWait, kZero } what = kZero;
  Piece pc{};
  {
    std::lock_guard<std::mutex> l(mu_);
    if (p->dead || !p->uffd) return true;
    auto in = [&](Map& m) {
      auto it = m.upper_bound(addr);
      if (it == m.begin()) return m.end();
      --it;
      return it->second.end > addr ? it : m.end();
    };
    auto it = in(p->pending);
    if (it != p->pending.end()) {
      uint64_t w = addr & ~(kFaultWindow - 1);
      uint64_t s = std::max(it->first, w), e = std::min(it->second.end, w + kFaultWindow);
      std::vector<Piece> out;
      Carve(p->pending, s, e, &out, p);
      pc = out.front();
      p->inflight[s] = {e, pc.blob, pc.off};
      what = kCopy;
    } else if (auto f = in(p->inflight); f != p->inflight.end()) {
      what = kWait;  // a worker's copy wakes it
      // The program now waits for a worker that yields to everything (nice 10: under load it
      // may wait tens of ms for a core, measured as a migrated server silent for 74 ms after
      // its restore). It gets a program's default priority (nice 0) until its piece is in: not
      // the event thread's (a migration's restore runs at nice -20), else a program that faults
      // all the time would keep the workers above its own other processes while they fill.
      // Only a live thread of ours (a worker that failed leaves its piece in flight: its tid
      // may be anyone's by now).
      if (f->second.worker != 0 && syscall(SYS_tgkill, getpid(), f->second.worker, 0) == 0 &&
          setpriority(PRIO_PROCESS, static_cast<id_t>(f->second.worker), kLentNice) == 0) {
        lent_.store(true, std::memory_order_relaxed);
        stats_.lent++;
      }
    }
    stats_.faults++;
    if (what == kZero) stats_.zero_faults++;
  }
  if (what == kWait) return true;
  std::shared_lock<std::shared_mutex> gate(gate_);
  if (what == kCopy) {
    char buf[kFaultWindow];
    auto r = rd.Read(pc.blob, pc.off, buf, pc.len);
    if (!r.ok()) {
      gate.unlock();
      Fail(std::move(r.error().wrap(StrFormat("lazy pages of pid %d at %#lx", p->pid,
                                              static_cast<unsigned long>(pc.va)))));
      return true;
    }
    if (Copy(pc, buf, quiet) == CopyResult::kDone) return true;
    // Back to pending: served after the events.
    std::lock_guard<std::mutex> l(mu_);
    std::vector<Piece> back;
    Carve(p->inflight, pc.va, pc.va + pc.len, &back, p);
    for (const auto& b : back) Insert(p->pending, b.va, b.va + b.len, b.blob, b.off);
    return false;
  }
  uffdio_zeropage z{};
  z.range.start = addr;
  z.range.len = kPage;
  if (ioctl(p->uffd.get(), UFFDIO_ZEROPAGE, &z) == 0) return true;
  if (errno == EAGAIN) return false;
  // EEXIST: the page is there; ENOENT: no registered VMA there any more (moved or unmapped by
  // another thread while this one faulted). Either way the faulting thread takes its fault again.
  uffdio_range w{addr, kPage};
  ioctl(p->uffd.get(), UFFDIO_WAKE, &w);
  return true;
}

void LazyPager::EventLoop() {
  Readers rd(this);
  std::vector<std::pair<Proc*, uint64_t>> retry;
  for (;;) {
    std::vector<pollfd> fds;
    {
      std::lock_guard<std::mutex> l(mu_);
      if (stop_) return;
      fds.push_back({wake_.get(), POLLIN, 0});
      for (const auto& p : procs_)
        if (p->uffd && !p->dead) fds.push_back({p->uffd.get(), POLLIN, 0});
    }
    int rc = poll(fds.data(), fds.size(), retry.empty() ? 100 : 1);
    if (rc < 0 && errno != EINTR) {
      Fail(Errno("lazy pages: poll"));
      return;
    }
    if (fds[0].revents & POLLIN) {
      uint64_t v;
      ssize_t n = read(wake_.get(), &v, sizeof(v));
      (void)n;
    }
    std::vector<std::pair<Proc*, uint64_t>> faults, quiet;
    HandleEvents(&faults);
    if (rc == 0 && retry.empty()) {
      // Quiet for a while: install the first owed page of each process. It is owed anyway, and
      // it is how a process that died is noticed (ESRCH) when no worker runs (faults only).
      std::lock_guard<std::mutex> l(mu_);
      for (const auto& p : procs_)
        if (!p->dead && p->uffd && !p->pending.empty())
          quiet.push_back({p.get(), p->pending.begin()->first});
    }
    faults.insert(faults.end(), retry.begin(), retry.end());
    retry.clear();
    for (const auto& [p, addr] : faults)
      if (!Serve(p, addr, rd, false)) retry.push_back({p, addr});
    // No event for 100 ms: a page still in no registered VMA is not owed any more.
    for (const auto& [p, addr] : quiet) Serve(p, addr, rd, true);
    std::lock_guard<std::mutex> l(mu_);
    if (retry.empty() && AllDone()) cv_.notify_all();
  }
}

}  // namespace godwit::restore
