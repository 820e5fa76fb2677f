// Filling a restored process's memory with its dumped pages (FillPages, called by the "mm" step
// once the VMAs exist) and its tools: the userfaultfd filler and the read-ahead thread.
#include "restore/pages.h"

#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>

#include "common/log.h"
#include "common/page.h"
#include "common/scope_exit.h"
#include "common/uffd.h"
#include "restore/lazy.h"
#include "restore/mm.h"

namespace godwit::restore {
namespace {

constexpr size_t kMaxIov = 1024;
#ifndef UFFD_USER_MODE_ONLY
constexpr int kUserModeOnly = 1;
#else
constexpr int kUserModeOnly = UFFD_USER_MODE_ONLY;
#endif

}  // namespace

Result<std::unique_ptr<UffdFiller>> UffdFiller::Open(
    remote::Remote* r, const std::vector<std::pair<uint64_t, uint64_t>>& ranges) {
  if (ranges.empty()) return std::unique_ptr<UffdFiller>();
  auto taken = uffd::TakeFromTarget(*r, O_CLOEXEC | O_NONBLOCK | kUserModeOnly);
  if (!taken.ok() && taken.error().kind() == ErrorKind::kUnsupported) {
    LOG_DEBUG("pid %d: %s: pages are filled without it", r->pid(),
              taken.error().to_string().c_str());
    return std::unique_ptr<UffdFiller>();
  }
  ASSIGN_OR_RETURN(UniqueFd ufd, std::move(taken));
  int fd = ufd.get();
  std::unique_ptr<UffdFiller> f(new UffdFiller());
  f->pid_ = r->pid();
  f->uffd_ = std::move(ufd);
  uffdio_api api{};
  api.api = UFFD_API;
  if (ioctl(fd, UFFDIO_API, &api) < 0) {
    LOG_DEBUG("pid %d: UFFDIO_API: %s", r->pid(), strerror(errno));
    return std::unique_ptr<UffdFiller>();
  }
  for (const auto& [s, e] : ranges) {
    uffdio_register reg{};
    reg.range.start = s;
    reg.range.len = e - s;
    reg.mode = UFFDIO_REGISTER_MODE_MISSING;
    if (ioctl(fd, UFFDIO_REGISTER, &reg) < 0 || !(reg.ioctls & (1ULL << _UFFDIO_COPY))) {
      LOG_DEBUG("pid %d: uffd register %#lx-%#lx: %s", r->pid(), static_cast<unsigned long>(s),
                static_cast<unsigned long>(e), strerror(errno));
      continue;
    }
    f->ranges_.push_back({s, e});
  }
  if (f->ranges_.empty()) return std::unique_ptr<UffdFiller>();
  return f;
}

void UffdFiller::Split(uint64_t va, uint64_t len,
                       const std::function<void(uint64_t, uint64_t, bool)>& fn) const {
  uint64_t end = va + len;
  // The first range that ends after va.
  auto it = std::upper_bound(ranges_.begin(), ranges_.end(), va,
                             [](uint64_t x, const std::pair<uint64_t, uint64_t>& r) {
                               return x < r.second;
                             });
  while (va < end) {
    if (it == ranges_.end() || it->first >= end) {
      fn(va, end - va, false);
      return;
    }
    if (va < it->first) {
      fn(va, it->first - va, false);
      va = it->first;
    }
    uint64_t e = std::min(end, it->second);
    fn(va, e - va, true);
    va = e;
    ++it;
  }
}

Result<void> UffdFiller::Copy(uint64_t va, const void* src, uint64_t len) {
  const char* s = static_cast<const char*>(src);
  while (len > 0) {
    uffdio_copy cp{};
    cp.dst = va;
    cp.src = reinterpret_cast<uint64_t>(s);
    cp.len = len;
    cp.mode = 0;
    int rc = ioctl(uffd_.get(), UFFDIO_COPY, &cp);
    int err = errno;
    uint64_t done = rc == 0 ? len : (cp.copy > 0 ? static_cast<uint64_t>(cp.copy) : 0);
    va += done;
    s += done;
    len -= done;
    bytes_ += done;
    if (rc == 0 || len == 0) continue;
    if (err == EAGAIN || err == EINTR) continue;
    if (err == EEXIST) {
      // Present already (filled by an earlier round): overwrite this page the ordinary way.
      iovec l{const_cast<char*>(s), kPage}, rv{reinterpret_cast<void*>(va), kPage};
      if (process_vm_writev(pid_, &l, 1, &rv, 1, 0) != static_cast<ssize_t>(kPage))
        return Errno("process_vm_writev pid %d at %#lx", pid_, static_cast<unsigned long>(va));
      va += kPage;
      s += kPage;
      len -= kPage;
      present_++;
      continue;
    }
    errno = err;
    return Errno("UFFDIO_COPY pid %d at %#lx", pid_, static_cast<unsigned long>(va));
  }
  return Ok();
}

ReadAhead::ReadAhead(images::BlobReader* blob, std::vector<Piece> pieces, uint64_t max_len)
    : blob_(blob), pieces_(std::move(pieces)) {
  if (pieces_.empty()) return;
  // One piece (a small process's few compressed pages): read by Next on the caller's thread.
  // A thread would overlap nothing, and on a busy machine its start waits for a core.
  if (pieces_.size() == 1) {
    buf_[0].reset(new char[pieces_[0].len]);
    return;
  }
  for (auto& b : buf_) b.reset(new char[max_len]);
  thread_ = std::thread([this] { Run(); });
}

ReadAhead::~ReadAhead() {
  {
    std::lock_guard<std::mutex> l(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void ReadAhead::Run() {
  for (size_t i = 0; i < pieces_.size(); ++i) {
    {
      // Buffer i % 2 is free once the consumer released piece i - 2.
      std::unique_lock<std::mutex> l(mu_);
      cv_.wait(l, [&] { return stop_ || i < consumed_ + 2; });
      if (stop_) return;
    }
    const Piece& p = pieces_[i];
    auto r = blob_->Read(p.blob_off, buf_[i % 2].get(), p.len);
    std::lock_guard<std::mutex> l(mu_);
    if (!r.ok()) {
      failed_ = true;
      error_ = std::move(r.error());
      cv_.notify_all();
      return;
    }
    produced_ = i + 1;
    cv_.notify_all();
  }
}

Result<bool> ReadAhead::Next(Piece* piece, const char** data) {
  std::unique_lock<std::mutex> l(mu_);
  if (next_called_) consumed_++;  // the previous piece is done with
  next_called_ = true;
  cv_.notify_all();
  size_t i = consumed_;
  if (i >= pieces_.size()) return false;
  if (!thread_.joinable()) {  // inline (the constructor)
    l.unlock();
    TRY(blob_->Read(pieces_[0].blob_off, buf_[0].get(), pieces_[0].len));
    *piece = pieces_[0];
    *data = buf_[0].get();
    return true;
  }
  cv_.wait(l, [&] { return produced_ > i || failed_; });
  if (produced_ <= i) return error_;
  *piece = pieces_[i];
  *data = buf_[i % 2].get();
  return true;
}

// Fills the dumped private pages. Anonymous private VMAs: UFFDIO_COPY from the coordinator
// (restore/pages.h), from buffers a second thread reads the page file into (decompressing zstd
// chunks) ahead of the copy; no page fault, no zeroing. The rest (private file mappings, or
// without userfaultfd): raw chunks are preadv()'d by the target itself, straight from the page
// file into place (one call for up to 1024 runs contiguous in the file), after one
// MADV_POPULATE_WRITE per big run (no fault per page). With much raw data, the coordinator copies
// the second half at the same time on a second thread (process_vm_writev from a mapping of the
// page file: one copy too). The thread is joined before FillPages returns (the coordinator forks
// nothing while it runs). Compressed chunks: the coordinator decompresses and
// process_vm_writev()s them.
std::vector<img::PageMap> NewestOnly(const std::vector<img::PageMap>& maps) {
  using Interval = std::pair<uint64_t, uint64_t>;
  std::vector<img::PageMap> out(maps.size());
  std::vector<Interval> covered, mine, merged;  // what the later maps hold (sorted, merged)
  for (size_t k = maps.size(); k-- > 0;) {
    const img::PageMap& pm = maps[k];
    img::PageMap& o = out[k];
    o = pm;
    o.clear_runs();
    mine.clear();
    size_t h = 0;  // the first later interval that ends after the current run's start
    for (const auto& run : pm.runs()) {
      const uint64_t s = run.vaddr(), e = s + run.npages() * kPage;
      if (!mine.empty() && mine.back().second == s)
        mine.back().second = e;
      else
        mine.push_back({s, e});
      while (h < covered.size() && covered[h].second <= s) ++h;
      uint64_t cur = s;
      for (size_t j = h; cur < e;) {
        if (j < covered.size() && covered[j].first <= cur) {  // inside a later map's pages
          cur = std::max(cur, covered[j].second);
          ++j;
          continue;
        }
        const uint64_t stop = j < covered.size() ? std::min(e, covered[j].first) : e;
        img::PageRun* r = o.add_runs();
        r->set_vaddr(cur);
        r->set_npages((stop - cur) / kPage);
        r->set_blob_off(run.blob_off() + (cur - s));
        cur = stop;
      }
    }
    // covered |= this map's pages.
    merged.clear();
    size_t a = 0, b = 0;
    while (a < covered.size() || b < mine.size()) {
      const Interval& iv = (b >= mine.size() || (a < covered.size() && covered[a] < mine[b]))
                               ? covered[a++]
                               : mine[b++];
      if (!merged.empty() && iv.first <= merged.back().second)
        merged.back().second = std::max(merged.back().second, iv.second);
      else
        merged.push_back(iv);
    }
    covered.swap(merged);
  }
  return out;
}

Result<void> FillPages(RestoreContext& ctx, ProcessRestore& p, const img::PageMap& pagemap) {
  remote::Remote* r = p.remote.get();
  const auto& runs = pagemap.runs();
  if (runs.empty()) return Ok();
  ASSIGN_OR_RETURN(std::unique_ptr<images::BlobReader> blob, ctx.images->OpenBlob(pagemap.blob()));
  uint64_t total = 0;
  for (const auto& run : runs) total += run.npages() * kPage;
  // The anonymous private VMAs this pagemap writes to: filled with UFFDIO_COPY.
  std::vector<std::pair<uint64_t, uint64_t>> anon;
  for (const auto& v : p.mm.vmas()) {
    if (v.kind() != img::VMA_ANON_PRIVATE) continue;
    // UFFDIO_COPY installs small pages only: a VMA advised MADV_HUGEPAGE is filled through
    // faults instead, so its pages come back as transparent huge pages as they were.
    if (v.madv() & (uint64_t{1} << MADV_HUGEPAGE)) continue;
    bool hit = std::any_of(runs.begin(), runs.end(), [&](const img::PageRun& run) {
      return run.vaddr() < v.end() && run.vaddr() + run.npages() * kPage > v.start();
    });
    if (hit) anon.push_back({v.start(), v.end()});
  }
  std::sort(anon.begin(), anon.end());
  // Lazy (restore/lazy.h): the registered parts are recorded for the pager, not copied.
  LazyPager* lazy = nullptr;
  std::vector<std::pair<uint64_t, uint64_t>> lazy_ranges;
  std::vector<LazyPager::Run> lazy_runs;
  if (ctx.lazy) {
    lazy_ranges = ctx.lazy->Ranges(p.pid);
    if (!lazy_ranges.empty()) lazy = ctx.lazy.get();
  }
  // A few pages (a small process's whole memory is often 30-60 KiB) are written by the
  // coordinator below (kCoordinatorRaw): a userfaultfd for them costs more injected calls (its
  // creation and handing over) and ioctls than it saves.
  constexpr uint64_t kCoordinatorRaw = 256 << 10;
  std::unique_ptr<UffdFiller> uffd;
  if (ctx.opts.fill.uffd && lazy == nullptr && total > kCoordinatorRaw) {
    ASSIGN_OR_RETURN(uffd, UffdFiller::Open(r, anon));
  }
  struct Piece {
    uint64_t va, off, len;
  };
  std::vector<Piece> raw;  // for the target's preadv (below)
  // The same as logical ranges of the blob: their chunks' checksums are checked while the target
  // reads them (a set that left blobs to their chunk checksums, restore.cc).
  std::vector<std::pair<uint64_t, uint64_t>> raw_logical;
  uint64_t raw_total = 0, done = 0, lazy_bytes = 0;
  constexpr uint64_t kBatch = 8ULL << 20;
  // What goes through the coordinator: compressed runs, and with a uffd the raw parts it covers.
  // A second thread reads them (pread into a buffer that stays in the cache, or decompresses)
  // ahead of this one, which copies them into place. Copying straight from a mapping of the page
  // file was slower: mapping and unmapping 2 GiB of file pages costs more here than the copy.
  std::vector<ReadAhead::Piece> pieces;
  // Pieces of up to kBatch end at chunk ends where they can (cuts: the chunk ends inside the
  // run, for a raw one): a chunk split between two pieces (read by two threads) would be read and
  // checked twice, each time whole.
  std::vector<uint64_t> cuts;
  auto add_pieces = [&](uint64_t va, uint64_t blob_off, uint64_t len) {
    for (uint64_t o = 0; o < len;) {
      uint64_t start = blob_off + o, limit = blob_off + std::min(len, o + kBatch);
      auto it = std::upper_bound(cuts.begin(), cuts.end(), limit);  // first cut past limit
      uint64_t end = it != cuts.begin() && *(it - 1) > start ? *(it - 1) : limit;
      pieces.push_back({va + o, start, end - start});
      o = end - blob_off;
    }
  };
  for (const auto& run : runs) {
    uint64_t len = run.npages() * kPage;
    if (lazy != nullptr) {
      // Most runs lie wholly inside a registered range: recorded as they are, no extents needed.
      auto in = std::upper_bound(lazy_ranges.begin(), lazy_ranges.end(), run.vaddr(),
                                 [](uint64_t x, const std::pair<uint64_t, uint64_t>& r) {
                                   return x < r.second;
                                 });
      if (in != lazy_ranges.end() && in->first <= run.vaddr() && run.vaddr() + len <= in->second) {
        lazy_runs.push_back({run.vaddr(), len, run.blob_off()});
        lazy_bytes += len;
        continue;
      }
    }
    auto ext = blob->RawExtents(run.blob_off(), len);
    cuts.clear();
    if (ext.ok()) {
      uint64_t at = run.blob_off();
      for (const auto& e : *ext) cuts.push_back(at += e.len);
    }
    // The parts of [va, va + n) as file extents, for the target's preadv (a raw run only).
    auto add_raw = [&](uint64_t va, uint64_t n) {
      uint64_t eva = run.vaddr();
      for (const auto& e : *ext) {
        uint64_t s0 = std::max(va, eva), e0 = std::min(va + n, eva + e.len);
        if (s0 < e0) {
          raw.push_back({s0, e.file_off + (s0 - eva), e0 - s0});
          raw_total += e0 - s0;
          uint64_t lo = run.blob_off() + (s0 - run.vaddr());
          if (!raw_logical.empty() && raw_logical.back().first + raw_logical.back().second == lo)
            raw_logical.back().second += e0 - s0;
          else
            raw_logical.push_back({lo, e0 - s0});
        }
        eva += e.len;
      }
    };
    if (lazy != nullptr) {
      LazyPager::Split(lazy_ranges, run.vaddr(), len,
                       [&](uint64_t va, uint64_t n, bool registered) {
        uint64_t off = run.blob_off() + (va - run.vaddr());
        if (registered) {
          lazy_runs.push_back({va, n, off});
          lazy_bytes += n;
        } else if (ext.ok()) {
          add_raw(va, n);
        } else {
          add_pieces(va, off, n);
        }
      });
      continue;
    }
    if (!ext.ok()) {
      add_pieces(run.vaddr(), run.blob_off(), len);
      continue;
    }
    if (!uffd) {
      add_raw(run.vaddr(), len);
      continue;
    }
    uffd->Split(run.vaddr(), len, [&](uint64_t va, uint64_t n, bool registered) {
      if (registered)
        add_pieces(va, run.blob_off() + (va - run.vaddr()), n);
      else
        add_raw(va, n);
    });
  }
  if (lazy != nullptr && !lazy_runs.empty()) {
    // Recorded with the other rounds' once every pagemap was seen (RestoreMm).
    p.lazy_sources.push_back({ctx.images->dir() + "/" + pagemap.blob(), pagemap.blob(),
                              ctx.images->Verified(pagemap.blob()), std::move(lazy_runs)});
  }
  if (lazy != nullptr)
    LOG_DEBUG("pid %d: %s: %lu bytes left to the lazy pager", p.pid, pagemap.blob().c_str(),
              static_cast<unsigned long>(lazy_bytes));
  // Copies one piece's data into place (UFFDIO_COPY where registered). Called from two threads
  // at once for a large fill: UFFDIO_COPY on one uffd from several threads is fine (each takes
  // the mm's lock shared); Remote::Write is not thread-safe (it may open /proc/PID/mem once).
  std::mutex write_mu, progress_mu;
  auto copy_piece = [&](const ReadAhead::Piece& pc, const char* data) -> Result<void> {
    Result<void> copied;
    auto put = [&](uint64_t sva, uint64_t slen, bool registered) {
      if (!copied.ok()) return;
      const char* src = data + (sva - pc.va);
      if (registered) {
        copied = uffd->Copy(sva, src, slen);
      } else {
        std::lock_guard<std::mutex> l(write_mu);
        copied = r->Write(sva, src, slen);
      }
    };
    if (uffd)
      uffd->Split(pc.va, pc.len, put);
    else
      put(pc.va, pc.len, false);
    TRY(std::move(copied));
    std::lock_guard<std::mutex> l(progress_mu);
    done += pc.len;
    if (ctx.opts.progress) ctx.opts.progress("memory", done, total);
    return Ok();
  };
  uint64_t pieces_total = 0;
  for (const auto& pc : pieces) pieces_total += pc.len;
  constexpr uint64_t kTwoMin = 64ULL << 20;
  if (pieces_total >= kTwoMin && std::thread::hardware_concurrency() >= 2 && ctx.opts.fill.split) {
    // Two workers, each reading its pieces (pread into a buffer that stays in the cache; chunk
    // checksums checked there when the set left them to the chunks, zstd decompressed) and
    // copying them into place: page creation (UFFDIO_COPY allocates the pages) is the bound
    // here, and it scales with a second core. Each worker has its own reader (a BlobReader is
    // not thread-safe).
    ASSIGN_OR_RETURN(std::unique_ptr<images::BlobReader> blob2,
                     ctx.images->OpenBlob(pagemap.blob()));
    std::atomic<size_t> next{0};
    std::atomic<bool> stop{false};
    // Each piece through a small buffer that stays in the cache: read from the page file,
    // checksummed and copied into place from there (BlobReader::ReadPieces; through an 8 MiB
    // buffer each byte crossed memory three more times). A chunk whose checksum fails after some
    // of it was copied fails the restore, which kills the tree: it never runs on it.
    constexpr size_t kSmall = 256 << 10;
    auto work = [&](images::BlobReader* b) -> Result<void> {
      std::unique_ptr<char[]> buf(new char[kSmall]);
      for (;;) {
        size_t i = next.fetch_add(1);
        if (i >= pieces.size() || stop.load()) return Ok();
        const ReadAhead::Piece& pc = pieces[i];
        Result<void> r1 = b->ReadPieces(
            pc.blob_off, pc.len, buf.get(), kSmall,
            [&](uint64_t lo, const char* d, size_t k) -> Result<void> {
              return copy_piece({pc.va + (lo - pc.blob_off), lo, k}, d);
            });
        if (!r1.ok()) {
          stop = true;
          return r1;
        }
      }
    };
    Result<void> second;
    std::thread t([&] { second = work(blob2.get()); });
    Result<void> first = work(blob.get());
    t.join();
    TRY(std::move(first));
    TRY(std::move(second));
  } else {
    ReadAhead ahead(blob.get(), std::move(pieces), kBatch);
    // Copy what the second thread has read.
    while (true) {
      ReadAhead::Piece pc;
      const char* data = nullptr;
      ASSIGN_OR_RETURN(bool more, ahead.Next(&pc, &data));
      if (!more) break;
      TRY(copy_piece(pc, data));
    }
  }
  if (uffd)
    LOG_DEBUG("pid %d: %s: %lu bytes by UFFDIO_COPY, %lu pages present already", p.pid,
              pagemap.blob().c_str(), static_cast<unsigned long>(uffd->bytes()),
              static_cast<unsigned long>(uffd->present_pages()));
  // Unregisters everything: the pieces left are filled the ordinary way.
  uffd.reset();
  if (raw.empty()) {
    ctx.stats.pages += total / kPage;
    ctx.stats.bytes += total;
    return Ok();
  }

  // A little raw data (a program's written .data pages, a pre-copy round's few pages outside
  // the lazy ranges): read and written by the coordinator (pread, process_vm_writev), checked
  // first. The target's preadv costs an open, the call and a close injected into it, plus a
  // checking thread here: ~1-3 ms a page map, per process and per round, for a few pages.
  if (raw_total <= kCoordinatorRaw) {
    if (!ctx.images->Verified(pagemap.blob()))
      for (const auto& [off, len] : raw_logical) TRY(blob->VerifyRange(off, len));
    std::vector<char> buf;
    for (const auto& pc : raw) {
      buf.resize(pc.len);
      for (uint64_t got = 0; got < pc.len;) {
        ssize_t n = pread(blob->fd(), buf.data() + got, pc.len - got,
                          static_cast<off_t>(pc.off + got));
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0)
          return MakeError(ErrorKind::kBadImage, n < 0 ? errno : 0, "%s: read at file offset %lu",
                           pagemap.blob().c_str(), static_cast<unsigned long>(pc.off + got));
        got += n;
      }
      TRY_CTX(r->Write(pc.va, buf.data(), pc.len), "pid %d: pages at %#lx", p.pid,
              static_cast<unsigned long>(pc.va));
    }
    ctx.stats.pages += total / kPage;
    ctx.stats.bytes += total;
    return Ok();
  }

  // The second thread's share: the pieces after split.
  constexpr uint64_t kSplitMin = 64ULL << 20;
  size_t split = raw.size();
  char* map = nullptr;
  size_t map_len = 0;
  if (raw_total >= kSplitMin && std::thread::hardware_concurrency() >= 2 && ctx.opts.fill.split) {
    struct stat st;
    if (fstat(blob->fd(), &st) == 0 && st.st_size > 0) {
      void* m = mmap(nullptr, st.st_size, PROT_READ, MAP_SHARED, blob->fd(), 0);
      if (m != MAP_FAILED) {
        map = static_cast<char*>(m);
        map_len = st.st_size;
        uint64_t acc = 0;
        split = 0;
        while (split < raw.size() && acc < raw_total / 2) acc += raw[split++].len;
      }
    }
  }
  ScopeExit unmap([&] {
    if (map) munmap(map, map_len);
  });
  // The raw pieces' chunks are checked on another thread while they are filled (the coordinator
  // mostly waits for the target's preadv meanwhile): the tree does not run before this is done.
  Result<void> verify_result;
  std::thread verifier;
  if (!ctx.images->Verified(pagemap.blob())) {
    verifier = std::thread([&, b = blob.get()] {
      for (const auto& [off, len] : raw_logical) {
        verify_result = b->VerifyRange(off, len);
        if (!verify_result.ok()) return;
      }
    });
  }
  ScopeExit join_verifier([&] {
    if (verifier.joinable()) verifier.join();
  });
  Result<void> helper_result;
  std::thread helper;
  if (split < raw.size()) {
    helper = std::thread([&, pid = r->pid()] {
      iovec local[kMaxIov], remote[kMaxIov];
      for (size_t i = split; i < raw.size();) {
        size_t k = 0;
        uint64_t want = 0;
        for (; i < raw.size() && k < kMaxIov; ++i, ++k) {
          if (raw[i].off + raw[i].len > map_len) {
            helper_result = MakeError(ErrorKind::kBadImage, 0, "%s: extent beyond the file",
                                      pagemap.blob().c_str());
            return;
          }
          local[k] = {map + raw[i].off, raw[i].len};
          remote[k] = {reinterpret_cast<void*>(raw[i].va), raw[i].len};
          want += raw[i].len;
        }
        ssize_t n = process_vm_writev(pid, local, k, remote, k, 0);
        if (n < 0 || static_cast<uint64_t>(n) != want) {
          helper_result = n < 0 ? Errno("process_vm_writev pid %d", pid)
                                : MakeError(ErrorKind::kGeneric, 0,
                                            "process_vm_writev pid %d: short write", pid);
          return;
        }
      }
    });
  }

  // This thread: the target preadv()s the pieces before split.
  auto fill = [&]() -> Result<void> {
    // In a container the images are not in the tree's mount ns: open through the inherited fd.
    ASSIGN_OR_RETURN(long fd,
                     ctx.images_fd >= 0
                         ? OpenInTarget(r, pagemap.blob(), O_RDONLY, ctx.images_fd)
                         : OpenInTarget(r, ctx.images->dir() + "/" + pagemap.blob(), O_RDONLY));
    uint64_t iov_base = r->scratch() + 8192;
    size_t max_iov = std::min(kMaxIov, (r->scratch_size() - 8192) / sizeof(iovec));
    std::vector<iovec> iov;
    uint64_t batch_off = 0, next_off = 0;
    auto flush = [&]() -> Result<void> {
      if (iov.empty()) return Ok();
      uint64_t want = 0;
      for (auto& x : iov) want += x.iov_len;
      TRY(r->Write(iov_base, iov.data(), iov.size() * sizeof(iovec)));
      ASSIGN_OR_RETURN(long n, r->Syscall(SYS_preadv, static_cast<uint64_t>(fd), iov_base,
                                          iov.size(), batch_off, 0));
      if (static_cast<uint64_t>(n) != want)
        return MakeError(ErrorKind::kBadImage, 0, "%s: short read at file offset %lu",
                         pagemap.blob().c_str(), static_cast<unsigned long>(batch_off));
      done += want;
      if (ctx.opts.progress) ctx.opts.progress("memory", done, total);
      iov.clear();
      return Ok();
    };
    constexpr uint64_t kPopulateMin = 256 * 1024;
    bool populate = ctx.opts.fill.populate;
    for (size_t i = 0; i < split; ++i) {
      // Fault the destination in with one call per contiguous stretch of pieces instead of a
      // page fault per 4 KiB inside preadv.
      if (populate && (i == 0 || raw[i - 1].va + raw[i - 1].len != raw[i].va)) {
        uint64_t end = raw[i].va + raw[i].len;
        for (size_t j = i + 1; j < split && raw[j].va == end; ++j) end += raw[j].len;
        if (end - raw[i].va >= kPopulateMin) {
          auto pr = r->Syscall(SYS_madvise, raw[i].va, end - raw[i].va,
                               23 /* MADV_POPULATE_WRITE */);
          if (!pr.ok()) populate = false;  // older kernel: fall back to faulting
        }
      }
      if (iov.empty() || raw[i].off != next_off || iov.size() >= max_iov) {
        TRY(flush());
        batch_off = raw[i].off;
      }
      iov.push_back({reinterpret_cast<void*>(raw[i].va), raw[i].len});
      next_off = raw[i].off + raw[i].len;
    }
    TRY(flush());
    TRY(r->Syscall(SYS_close, static_cast<uint64_t>(fd)));
    return Ok();
  };
  Result<void> res = split > 0 ? fill() : Result<void>();
  if (helper.joinable()) helper.join();
  if (verifier.joinable()) verifier.join();
  TRY(std::move(res));
  TRY(std::move(helper_result));
  TRY(std::move(verify_result));
  ctx.stats.pages += total / kPage;
  ctx.stats.bytes += total;
  return Ok();
}

}  // namespace godwit::restore
