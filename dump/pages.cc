#include "dump/pages.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "common/fs.h"
#include "common/log.h"
#include "common/page.h"
#include "images/format.h"

namespace godwit::dump {
namespace {

constexpr uint64_t kPresent = 1ULL << 63;
constexpr uint64_t kSwapped = 1ULL << 62;
constexpr uint64_t kFileShared = 1ULL << 61;
constexpr uint64_t kPfnMask = (1ULL << 55) - 1;
constexpr size_t kMaxIov = 1024;
// The target's scratch area (remote.h) while it writes its pages: the page file's path (at open)
// then zeros for chunk headers at kZeroArea, the pwritev iovecs at kIovArea.
constexpr size_t kZeroArea = 0;
constexpr size_t kIovArea = 4096;

}  // namespace

std::vector<proc::MapsEntry> WithoutRange(const std::vector<proc::MapsEntry>& maps, uint64_t a,
                                          uint64_t b) {
  std::vector<proc::MapsEntry> out;
  for (const auto& m : maps) {
    if (m.end <= a || m.start >= b) {
      out.push_back(m);
      continue;
    }
    if (m.start < a) {
      proc::MapsEntry l = m;
      l.end = a;
      out.push_back(l);
    }
    if (m.end > b) {
      proc::MapsEntry r = m;
      r.pgoff += b - m.start;
      r.start = b;
      out.push_back(r);
    }
  }
  return out;
}

std::vector<PageRange> MergeRanges(std::vector<PageRange> a, const std::vector<PageRange>& b) {
  a.insert(a.end(), b.begin(), b.end());
  std::sort(a.begin(), a.end(),
            [](const PageRange& x, const PageRange& y) { return x.addr < y.addr; });
  return a;
}

Result<uint64_t> ZeroPagePfn() {
  void* p = mmap(nullptr, kPage, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return Errno("mmap");
  volatile char c = *static_cast<volatile char*>(p);
  (void)c;
  ASSIGN_OR_RETURN(UniqueFd fd, fs::Open("/proc/self/pagemap", O_RDONLY));
  uint64_t e = 0;
  ssize_t n = pread(fd.get(), &e, sizeof(e), reinterpret_cast<uint64_t>(p) / kPage * 8);
  munmap(p, kPage);
  if (n != sizeof(e)) return Errno("read /proc/self/pagemap");
  return e & kPfnMask;
}

Result<std::unique_ptr<PresentPages>> PresentPages::Open(pid_t pid, uint64_t zero_pfn) {
  std::unique_ptr<PresentPages> s(new PresentPages());
  ASSIGN_OR_RETURN(s->pagemap_, fs::Open(StrFormat("/proc/%d/pagemap", pid), O_RDONLY));
  s->zero_pfn_ = zero_pfn;
  return s;
}

Result<void> PresentPages::Collect(uint64_t start, uint64_t end, bool private_file,
                                   std::vector<PageRange>* out, PageCounts* counts) {
  constexpr uint64_t kSlice = 64 * 1024;  // pagemap entries read at once (512 KiB)
  buf_.resize(kSlice);
  for (uint64_t addr = start; addr < end;) {
    uint64_t n = std::min<uint64_t>((end - addr) / kPage, kSlice);
    size_t want = n * 8;
    ssize_t got = pread(pagemap_.get(), buf_.data(), want, addr / kPage * 8);
    if (got != static_cast<ssize_t>(want))
      return Errno("read pagemap at %#lx", static_cast<unsigned long>(addr));
    for (uint64_t i = 0; i < n; ++i) {
      uint64_t e = buf_[i];
      bool take = false;
      if (e & kSwapped) {
        take = !IsPteMarker(e);  // a marker is no page (a tracked file mapping's untouched ones)
      } else if (e & kPresent) {
        counts->present++;
        if (private_file && (e & kFileShared)) {
          counts->file++;  // still the page cache's page: never written
        } else if (zero_pfn_ != 0 && (e & kPfnMask) == zero_pfn_) {
          counts->zero++;
        } else {
          take = true;
        }
      }
      if (!take) continue;
      uint64_t a = addr + i * kPage;
      if (!out->empty() && out->back().addr + out->back().npages * kPage == a)
        out->back().npages++;
      else
        out->push_back({a, 1});
    }
    addr += n * kPage;
  }
  return Ok();
}

PageWriter::PageWriter(images::BlobWriter* blob, pid_t pid, int fd, uint64_t total_bytes,
                       remote::Remote* target)
    : blob_(blob), pid_(pid), fd_(fd), target_(target), total_bytes_(total_bytes) {
  buf_size_ = std::max<uint64_t>(kPage, std::min<uint64_t>(total_bytes, 32ULL << 20));
  int nbufs = total_bytes > buf_size_ ? 3 : 1;
  // Untouched until used (the target-write path never touches them): only address space.
  for (int i = 0; i < nbufs; ++i) {
    bufs_.emplace_back(new char[buf_size_]);
    free_.push_back(bufs_.back().get());
  }
  // One buffer: the next batch waits for the writer anyway, so a writer thread overlaps nothing
  // and costs a thread and a hand-off per batch (on a busy machine each wake-up of the other
  // thread waits for a core: an idle busybox's 50 KiB took 7-8 ms that way). Written inline.
  inline_ = nbufs == 1;
  if (!inline_) writer_ = std::thread([this] { WriterLoop(); });
}

PageWriter::~PageWriter() {
  {
    std::lock_guard<std::mutex> l(mu_);
    done_ = true;
  }
  cv_.notify_all();
  if (writer_.joinable()) writer_.join();
  CloseTargetFd();
}

void PageWriter::CloseTargetFd() {
  if (target_fd_ < 0) return;
  auto r = target_->Syscall(SYS_close, static_cast<uint64_t>(target_fd_));
  if (!r.ok()) LOG_WARN("pid %d: close page file: %s", pid_, r.error().to_string().c_str());
  target_fd_ = -1;
}

void PageWriter::WriterLoop() {
  for (;;) {
    Batch b;
    {
      std::unique_lock<std::mutex> l(mu_);
      cv_.wait(l, [&] { return !queue_.empty() || done_; });
      if (queue_.empty()) return;
      b = std::move(queue_.front());
      queue_.pop_front();
    }
    Write(b);
  }
}

void PageWriter::Write(Batch& b) {
  bool failed;
  {
    std::lock_guard<std::mutex> l(mu_);
    failed = failed_;
  }
  if (!failed) {
    Result<uint64_t> off = b.ext.logical_off;
    if (b.external) {
      auto c = blob_->CommitExternal(b.ext);
      if (!c.ok()) off = std::move(c.error());
    } else {
      off = blob_->Append(b.buf, b.len);
    }
    std::lock_guard<std::mutex> l(mu_);
    if (!off.ok()) {
      failed_ = true;
      error_ = std::move(off.error());
    } else {
      for (const auto& e : b.entries) {
        uint64_t boff = *off + e.buf_off;
        uint64_t np = e.len / kPage;
        if (!runs_.empty()) {
          auto& last = runs_.back();
          if (last.vaddr() + last.npages() * kPage == e.key &&
              last.blob_off() + last.npages() * kPage == boff) {
            last.set_npages(last.npages() + np);
            continue;
          }
        }
        img::PageRun r;
        r.set_vaddr(e.key);
        r.set_npages(np);
        r.set_blob_off(boff);
        runs_.push_back(std::move(r));
      }
    }
  }
  {
    std::lock_guard<std::mutex> l(mu_);
    free_.push_back(b.buf);
  }
  cv_.notify_all();
}

Result<void> PageWriter::Add(uint64_t src, uint64_t key, uint64_t npages, bool use_fd) {
  uint64_t len = npages * kPage;
  while (len > 0) {
    if (cur_ == nullptr) {
      std::unique_lock<std::mutex> l(mu_);
      cv_.wait(l, [&] { return !free_.empty() || failed_; });
      if (failed_) return error_;
      cur_ = free_.front();
      free_.pop_front();
      cur_len_ = 0;
    }
    uint64_t n = std::min<uint64_t>(len, buf_size_ - cur_len_);
    cur_entries_.push_back({src, key, n, cur_len_, use_fd});
    cur_len_ += n;
    src += n;
    key += n;
    len -= n;
    pages_ += n / kPage;
    if (cur_len_ == buf_size_ || cur_entries_.size() >= 4 * kMaxIov) TRY(Flush());
  }
  return Ok();
}

namespace {

// Advances an iovec array past n bytes.
void Advance(iovec** iov, size_t* cnt, size_t n) {
  while (*cnt > 0 && n >= (*iov)->iov_len) {
    n -= (*iov)->iov_len;
    ++*iov;
    --*cnt;
  }
  if (n > 0 && *cnt > 0) {
    (*iov)->iov_base = static_cast<char*>((*iov)->iov_base) + n;
    (*iov)->iov_len -= n;
  }
}

// The "Seccomp:" mode of pid's main thread (0: none); -1 if unknown.
int SeccompMode(pid_t pid) {
  auto st = fs::ReadFile(StrFormat("/proc/%d/status", pid));
  if (!st.ok()) return -1;
  size_t at = st->find("\nSeccomp:");
  if (at == std::string::npos) return -1;
  return atoi(st->c_str() + at + 9);
}

}  // namespace

Result<bool> PageWriter::SetUpTarget() {
  target_tried_ = true;
  if (target_ == nullptr || blob_->compressed() || blob_->fd() < 0) return false;
  // The injected calls must not be refused by a filter (or kill the process), nor raise SIGXFSZ.
  if (int m = SeccompMode(pid_); m != 0) {
    LOG_DEBUG("pid %d: seccomp mode %d: pages go through the coordinator", pid_, m);
    return false;
  }
  rlimit fsize{};
  if (prlimit(pid_, RLIMIT_FSIZE, nullptr, &fsize) < 0 || fsize.rlim_cur != RLIM_INFINITY) {
    LOG_DEBUG("pid %d: file size limit: pages go through the coordinator", pid_);
    return false;
  }
  // The page file, reopened by the process through our /proc/PID/fd (fails where it cannot see
  // us or may not open it: another pid namespace, other credentials; then the coordinator copies).
  // First with O_PATH (no side effect whatever the path names) and checked: in another pid
  // namespace /proc/COORD may name some other process, and the file must be the page file itself
  // (same device and inode, seen through pidfd_getfd). Then reopened for writing through the
  // process's own /proc/self/fd.
  std::string path = StrFormat("/proc/%d/fd/%d", getpid(), blob_->fd());
  ASSIGN_OR_RETURN(uint64_t a, target_->WriteString(kZeroArea, path));
  const uint64_t args[6] = {static_cast<uint64_t>(AT_FDCWD), a, O_PATH | O_CLOEXEC, 0, 0, 0};
  ASSIGN_OR_RETURN(long pfd, target_->RawSyscallIn(target_->tid(), SYS_openat, args));
  if (pfd < 0) {
    LOG_DEBUG("pid %d: open %s in it: %s: pages go through the coordinator", pid_, path.c_str(),
              strerror(static_cast<int>(-pfd)));
    return false;
  }
  bool same = false;
  int pidfd = static_cast<int>(syscall(SYS_pidfd_open, pid_, 0));
  if (pidfd >= 0) {
    UniqueFd upidfd(pidfd);
    int copy = static_cast<int>(syscall(SYS_pidfd_getfd, pidfd, static_cast<int>(pfd), 0));
    if (copy >= 0) {
      UniqueFd ucopy(copy);
      struct stat x, y;
      same = fstat(copy, &x) == 0 && fstat(blob_->fd(), &y) == 0 && x.st_dev == y.st_dev &&
             x.st_ino == y.st_ino && S_ISREG(x.st_mode);
    }
  }
  long fd = -1;
  if (same) {
    ASSIGN_OR_RETURN(uint64_t a2, target_->WriteString(kZeroArea, StrFormat("/proc/self/fd/%ld", pfd)));
    const uint64_t args2[6] = {static_cast<uint64_t>(AT_FDCWD), a2, O_WRONLY | O_CLOEXEC, 0, 0, 0};
    ASSIGN_OR_RETURN(fd, target_->RawSyscallIn(target_->tid(), SYS_openat, args2));
  }
  TRY(target_->Syscall(SYS_close, static_cast<uint64_t>(pfd)));
  if (fd < 0) {
    LOG_DEBUG("pid %d: %s: %s: pages go through the coordinator", pid_, path.c_str(),
              same ? strerror(static_cast<int>(-fd)) : "not the page file there");
    return false;
  }
  target_fd_ = fd;
  // Zeros for the chunk headers' places (the headers are written at commit, with checksums).
  char zeros[sizeof(images::format::ChunkHeader)] = {};
  TRY(target_->Write(target_->scratch() + kZeroArea, zeros, sizeof(zeros)));
  return true;
}

Result<void> PageWriter::TargetWrite(const Batch& b) {
  // The batch's file space: per chunk, the header's place (zeros: the header is written at
  // commit) then its data; contiguous. Readable ranges go into the process's pwritev calls;
  // unreadable ones (use_fd) are read and written by the coordinator in between.
  uint64_t zeros = target_->scratch() + kZeroArea;
  uint64_t iov_addr = target_->scratch() + kIovArea;
  size_t max_iov = std::min(kMaxIov, (target_->scratch_size() - kIovArea) / sizeof(iovec));
  std::vector<iovec> iov;
  uint64_t start = 0, pos = 0;  // pending pwritev: file bytes [start, pos)
  auto flush = [&]() -> Result<void> {
    iovec* v = iov.data();
    size_t left = iov.size();
    uint64_t off = start;
    while (left > 0) {
      size_t k = std::min(left, max_iov);
      TRY(target_->Write(iov_addr, v, k * sizeof(iovec)));
      auto n = target_->Syscall(SYS_pwritev, static_cast<uint64_t>(target_fd_), iov_addr, k, off, 0);
      if (!n.ok())
        return std::move(n.error().wrap(StrFormat("pid %d: pwritev of its pages at file offset %lu",
                                                  pid_, static_cast<unsigned long>(off))));
      if (*n == 0)
        return MakeError(ErrorKind::kGeneric, 0, "pid %d: pwritev of its pages wrote nothing", pid_);
      off += *n;
      Advance(&v, &left, static_cast<size_t>(*n));
    }
    iov.clear();
    start = pos;
    return Ok();
  };
  size_t e = 0;
  uint64_t e_off = 0;  // bytes of entry e already placed
  for (const auto& c : b.ext.chunks) {
    if (iov.empty()) start = pos = c.header_off;
    iov.push_back({reinterpret_cast<void*>(zeros), sizeof(images::format::ChunkHeader)});
    pos += sizeof(images::format::ChunkHeader);
    if (iov.size() >= max_iov) TRY(flush());
    uint64_t want = c.len;
    while (want > 0) {
      const Entry& x = b.entries[e];
      uint64_t n = std::min(want, x.len - e_off);
      if (x.use_fd) {
        TRY(flush());
        char* tmp = b.buf + x.buf_off + e_off;
        for (uint64_t done = 0; done < n;) {
          ssize_t r = pread(fd_, tmp + done, n - done, static_cast<off_t>(x.src + e_off + done));
          if (r <= 0)
            return Errno("read %lu bytes at %#lx of pid %d", static_cast<unsigned long>(n),
                         static_cast<unsigned long>(x.src + e_off + done), pid_);
          done += r;
        }
        for (uint64_t done = 0; done < n;) {
          ssize_t w = pwrite(blob_->fd(), tmp + done, n - done, static_cast<off_t>(pos + done));
          if (w < 0 && errno == EINTR) continue;
          if (w <= 0) return Errno("write pages of pid %d", pid_);
          done += w;
        }
        pos += n;
        start = pos;
      } else {
        iov.push_back({reinterpret_cast<void*>(x.src + e_off), n});
        pos += n;
        target_pages_ += n / kPage;
        if (iov.size() >= max_iov) TRY(flush());
      }
      want -= n;
      e_off += n;
      if (e_off == x.len) {
        ++e;
        e_off = 0;
      }
    }
  }
  return flush();
}

void PageWriter::ReadVanishing(char* dst, uint64_t src, uint64_t len) {
  uint64_t done = 0;
  while (done < len) {
    ssize_t n = fd_ >= 0 ? pread(fd_, dst + done, len - done, static_cast<off_t>(src + done)) : -1;
    if (n > 0) {
      done += n;
      continue;
    }
    // Not readable at all (unmapped meanwhile, or the process is gone): a page of zeros.
    uint64_t page = std::min(kPage - (src + done) % kPage, len - done);
    memset(dst + done, 0, page);
    done += page;
    vanished_ += 1;
  }
}

Result<void> PageWriter::ReadIntoBuffer() {
  size_t i = 0;
  while (i < cur_entries_.size()) {
    const Entry& e = cur_entries_[i];
    if (e.use_fd) {
      uint64_t done = 0;
      while (done < e.len) {
        ssize_t n = pread(fd_, cur_ + e.buf_off + done, e.len - done,
                          static_cast<off_t>(e.src + done));
        if (n <= 0 && running_) {
          ReadVanishing(cur_ + e.buf_off + done, e.src + done, e.len - done);
          break;
        }
        if (n <= 0)
          return Errno("read %lu bytes at %#lx of pid %d", static_cast<unsigned long>(e.len),
                       static_cast<unsigned long>(e.src + done), pid_);
        done += n;
      }
      ++i;
      continue;
    }
    // A run of process_vm_readv entries: one call each (entries are contiguous in the buffer).
    iovec remote[kMaxIov];
    size_t k = 0;
    uint64_t first_off = e.buf_off, total = 0;
    while (i < cur_entries_.size() && !cur_entries_[i].use_fd && k < kMaxIov) {
      remote[k].iov_base = reinterpret_cast<void*>(cur_entries_[i].src);
      remote[k].iov_len = cur_entries_[i].len;
      total += cur_entries_[i].len;
      ++k;
      ++i;
    }
    iovec local{cur_ + first_off, total};
    iovec* l = &local;
    size_t lc = 1;
    iovec* rv = remote;
    size_t rc = k;
    uint64_t done = 0;
    // process_vm_readv stops at the first failing remote iovec; retry from there.
    while (done < total) {
      ssize_t n = process_vm_readv(pid_, l, lc, rv, rc, 0);
      if (n <= 0 && running_) {
        // The first remote iovec failed: read it through fd_, page by page where needed.
        n = static_cast<ssize_t>(rv->iov_len);
        ReadVanishing(static_cast<char*>(l->iov_base), reinterpret_cast<uint64_t>(rv->iov_base),
                      rv->iov_len);
      }
      if (n <= 0)
        return Errno("process_vm_readv pid %d at %#lx", pid_,
                     reinterpret_cast<unsigned long>(rv->iov_base));
      done += n;
      Advance(&l, &lc, n);
      Advance(&rv, &rc, n);
    }
  }
  return Ok();
}

void ReleaseQueue::Push(const std::vector<std::pair<uint64_t, uint64_t>>& ranges) {
  std::lock_guard<std::mutex> l(mu_);
  ranges_.insert(ranges_.end(), ranges.begin(), ranges.end());
}

std::vector<std::pair<uint64_t, uint64_t>> ReleaseQueue::Take() {
  std::vector<std::pair<uint64_t, uint64_t>> out;
  std::lock_guard<std::mutex> l(mu_);
  out.swap(ranges_);
  return out;
}

namespace {

// madvise(MADV_DONTNEED) of [s, e) in r's process; false if refused.
bool Advise(remote::Remote* r, uint64_t s, uint64_t e) {
  auto x = r->Syscall(SYS_madvise, s, e - s, MADV_DONTNEED);
  return x.ok() && *x == 0;
}

}  // namespace

void ReleaseRanges(remote::Remote* r, const std::vector<std::pair<uint64_t, uint64_t>>& ranges) {
  uint64_t a = r->area_start(), b = r->area_end();
  for (const auto& [s, e] : ranges) {
    if (s < b && e > a) continue;  // never inside the area (not dumped anyway)
    Advise(r, s, e);
  }
}

void PageWriter::SetRelease(remote::Remote* r, ReleaseQueue* queue, bool hull) {
  release_ = r;
  release_queue_ = queue;
  release_hull_ = hull;
  if (r != nullptr || queue != nullptr) {
    uint64_t want = std::max<uint64_t>(total_bytes_ / 32 / kPage * kPage, 8ULL << 20);
    buf_size_ = std::min<size_t>(buf_size_, want);
  }
}

void PageWriter::Release(const std::vector<Entry>& entries) {
  if (entries.empty()) return;
  std::vector<std::pair<uint64_t, uint64_t>> runs;  // the entries, contiguous ones merged
  for (const auto& x : entries) {
    released_ += x.len;
    if (!runs.empty() && runs.back().second == x.src)
      runs.back().second += x.len;
    else
      runs.push_back({x.src, x.src + x.len});
  }
  if (release_ == nullptr) {
    if (release_queue_) release_queue_->Push(runs);
    return;
  }
  bool done = false;
  if (release_hull_) {
    // One call for the batch's hull (the gaps are pages not dumped: the process never runs
    // again), around the Remote's own area (its code and scratch are still used); per run if
    // the kernel refuses the hull (a locked or hugetlb VMA in it stops the walk there).
    uint64_t lo = runs.front().first, hi = runs.back().second;
    uint64_t a = release_->area_start(), b = release_->area_end();
    done = true;
    if (hi <= a || lo >= b) {
      done = Advise(release_, lo, hi);
    } else {
      if (lo < a) done = Advise(release_, lo, a) && done;
      if (hi > b) done = Advise(release_, b, hi) && done;
    }
  }
  if (!done) ReleaseRanges(release_, runs);
  if (release_queue_) ReleaseRanges(release_, release_queue_->Take());
}

Result<void> PageWriter::Flush() {
  if (cur_ == nullptr) return Ok();
  if (!target_tried_) {
    ASSIGN_OR_RETURN(bool ok, SetUpTarget());
    external_ = ok;  // the coordinator alone: Append from the writer thread
  }
  Batch batch{cur_, cur_len_, {}};
  batch.entries = std::move(cur_entries_);
  cur_entries_.clear();
  if (external_) {
    ASSIGN_OR_RETURN(bool ok, blob_->AppendExternal(cur_len_, &batch.ext));
    if (ok)
      batch.external = true;
    else
      external_ = false;  // the writer thread Appends from now on: never external again
  }
  if (batch.external) {
    TRY(TargetWrite(batch));
  } else {
    cur_entries_ = std::move(batch.entries);
    TRY(ReadIntoBuffer());
    batch.entries = std::move(cur_entries_);
    cur_entries_.clear();
  }
  if (release_ || release_queue_) Release(batch.entries);
  cur_ = nullptr;
  cur_len_ = 0;
  if (inline_) {
    Write(batch);
    std::lock_guard<std::mutex> l(mu_);
    if (failed_) return error_;
    return Ok();
  }
  {
    std::lock_guard<std::mutex> l(mu_);
    queue_.push_back(std::move(batch));
  }
  cv_.notify_all();
  return Ok();
}

Result<void> PageWriter::Finish() {
  TRY(Flush());
  {
    std::lock_guard<std::mutex> l(mu_);
    done_ = true;
  }
  cv_.notify_all();
  if (writer_.joinable()) writer_.join();
  CloseTargetFd();
  if (failed_) return error_;
  return Ok();
}

}  // namespace godwit::dump
