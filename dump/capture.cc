#include "dump/capture.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "common/fs.h"
#include "common/log.h"
#include "common/page.h"
#include "common/pidfd.h"
#include "images/crc32c.h"
#include "images/format.h"

namespace godwit::dump {
namespace {

constexpr size_t kMaxIov = 1024;  // IOV_MAX: iovecs per vmsplice
constexpr size_t kBatchMin = 8ULL << 20;

size_t ProbePipeBytes() {
  int p[2];
  if (pipe2(p, O_CLOEXEC) < 0) return 64 * 1024;
  UniqueFd a(p[0]), b(p[1]);
  int big = fcntl(p[0], F_SETPIPE_SZ, 16 << 20);
  if (big >= (16 << 20)) return static_cast<size_t>(big);
  size_t max = 1 << 20;
  if (auto s = fs::ReadFile("/proc/sys/fs/pipe-max-size"); s.ok() && atoll(s->c_str()) > 0)
    max = static_cast<size_t>(atoll(s->c_str()));
  int got = fcntl(p[0], F_SETPIPE_SZ, static_cast<int>(std::min<size_t>(max, 1 << 30)));
  if (got > 0) return static_cast<size_t>(got);
  got = fcntl(p[0], F_GETPIPE_SZ);
  return got > 0 ? static_cast<size_t>(got) : 64 * 1024;
}

// madvise(MADV_DONTNEED) of [s, e) in r's process; false if refused.
bool Advise(remote::Remote* r, uint64_t s, uint64_t e) {
  auto x = r->Syscall(SYS_madvise, s, e - s, MADV_DONTNEED);
  return x.ok() && *x == 0;
}

}  // namespace

size_t PageCapture::PipeBytes() {
  static const size_t bytes = ProbePipeBytes();
  return bytes;
}

uint64_t PageCapture::FdsFor(uint64_t bytes) {
  size_t pb = PipeBytes();
  return bytes / pb + bytes / std::max(kBatchMin, pb) + 16;
}

Result<std::unique_ptr<PageCapture>> PageCapture::Start(remote::Remote* r, int mem_fd,
                                                        std::vector<images::BlobWriter*> blobs,
                                                        uint64_t total) {
  if (blobs.empty() || blobs.size() > 2)
    return MakeError(ErrorKind::kGeneric, EINVAL, "page capture: %zu blobs", blobs.size());
  std::unique_ptr<PageCapture> c(new PageCapture());
  c->total_ = total;
  c->r_ = r;
  c->mem_fd_ = mem_fd;
  c->pipe_bytes_ = PipeBytes();
  // The process's own pipe: made there (whatever its namespaces), its read end taken by us.
  ASSIGN_OR_RETURN(long x, r->Syscall(SYS_pipe2, r->scratch(), O_CLOEXEC));
  (void)x;
  int fds[2];
  TRY(r->Read(r->scratch(), fds, sizeof(fds)));
  c->target_fd_ = fds[1];
  auto rd = pidfd::TakeFd(r->pid(), fds[0]);
  auto closed = r->Syscall(SYS_close, static_cast<uint64_t>(fds[0]));
  if (!rd.ok()) return std::move(rd.error());
  TRY(std::move(closed));
  c->pipe_rd_ = std::move(*rd);
  // Our capabilities decide how big it may be.
  if (fcntl(c->pipe_rd_.get(), F_SETPIPE_SZ, static_cast<int>(c->pipe_bytes_)) <
      static_cast<int>(c->pipe_bytes_))
    return Errno("pid %d: F_SETPIPE_SZ %zu on its pipe", r->pid(), c->pipe_bytes_);
  for (auto* b : blobs) {
    auto d = std::make_unique<Drain>();
    d->blob = b;
    c->drains_.push_back(std::move(d));
  }
  for (auto& d : c->drains_) {
    Drain* dp = d.get();
    d->thread = std::thread([p = c.get(), dp] { p->DrainLoop(dp); });
  }
  return c;
}

PageCapture::~PageCapture() {
  if (target_fd_ >= 0) {
    auto x = r_->Syscall(SYS_close, static_cast<uint64_t>(target_fd_));
    if (!x.ok()) LOG_WARN("pid %d: close its capture pipe: %s", r_->pid(), x.error().to_string().c_str());
    target_fd_ = -1;
  }
  Stop();
}

void PageCapture::Stop() {
  {
    std::lock_guard<std::mutex> l(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  for (auto& d : drains_)
    if (d->thread.joinable()) d->thread.join();
}

Result<void> PageCapture::ReadUnreadable(uint64_t src, uint64_t len) {
  if (!cur_->parts.empty() && cur_->parts.back().holder.get() < 0) {
    // appended to the previous bytes part
  } else {
    cur_->parts.emplace_back();
  }
  Part& p = cur_->parts.back();
  size_t at = p.bytes.size();
  p.bytes.resize(at + len);
  for (uint64_t done = 0; done < len;) {
    ssize_t n = mem_fd_ >= 0 ? pread(mem_fd_, p.bytes.data() + at + done, len - done,
                                     static_cast<off_t>(src + done))
                             : -1;
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0)
      return Errno("read %lu bytes at %#lx of pid %d", static_cast<unsigned long>(len - done),
                   static_cast<unsigned long>(src + done), r_->pid());
    done += n;
  }
  p.len = p.bytes.size();
  return Ok();
}

Result<void> PageCapture::Splice() {
  size_t i = 0;
  uint64_t off = 0;  // into pending_[i]
  uint64_t iov_addr = r_->scratch();
  while (i < pending_.size()) {
    std::vector<iovec> iov;
    for (size_t k = i; k < pending_.size() && iov.size() < kMaxIov; ++k) {
      uint64_t o = k == i ? off : 0;
      iov.push_back({reinterpret_cast<void*>(pending_[k].src + o), pending_[k].len - o});
    }
    TRY(r_->Write(iov_addr, iov.data(), iov.size() * sizeof(iovec)));
    const uint64_t args[6] = {static_cast<uint64_t>(target_fd_), iov_addr, iov.size(),
                              SPLICE_F_NONBLOCK, 0, 0};
    ASSIGN_OR_RETURN(long n, r_->RawSyscallIn(r_->tid(), SYS_vmsplice, args));
    if (n > 0) {
      // Its buffers (page references) into a holder of ours: moved, not copied.
      int hp[2];
      if (pipe2(hp, O_CLOEXEC) < 0) return Errno("pipe for captured pages");
      UniqueFd hr(hp[0]), hw(hp[1]);
      if (fcntl(hw.get(), F_SETPIPE_SZ, static_cast<int>(pipe_bytes_)) < 0)
        return Errno("F_SETPIPE_SZ %zu", pipe_bytes_);
      for (long moved = 0; moved < n;) {
        ssize_t m = splice(pipe_rd_.get(), nullptr, hw.get(), nullptr, static_cast<size_t>(n - moved),
                           SPLICE_F_NONBLOCK);
        if (m < 0 && errno == EINTR) continue;
        if (m <= 0) return Errno("pid %d: splice captured pages", r_->pid());
        moved += m;
      }
      Part p;
      p.holder = std::move(hr);
      p.len = static_cast<size_t>(n);
      cur_->parts.push_back(std::move(p));
      captured_ += static_cast<uint64_t>(n);
      for (uint64_t left = static_cast<uint64_t>(n); left > 0;) {
        uint64_t take = std::min(left, pending_[i].len - off);
        off += take;
        left -= take;
        if (off == pending_[i].len) {
          ++i;
          off = 0;
        }
      }
      continue;
    }
    if (n == 0 || n == -EAGAIN || n == -EINTR)
      return MakeError(ErrorKind::kGeneric, static_cast<int>(-n),
                       "pid %d: vmsplice of its pages took nothing (%ld)", r_->pid(), n);
    // Refused at the first page (not readable this way: a VM_IO/PFNMAP range): read it.
    TRY(ReadUnreadable(pending_[i].src + off, kPage));
    off += kPage;
    if (off == pending_[i].len) {
      ++i;
      off = 0;
    }
  }
  pending_.clear();
  pending_len_ = 0;
  return Ok();
}

void PageCapture::CloseBatch() {
  if (!cur_ || cur_->len == 0) return;
  // The first half of the bytes to the first drain, the rest to the second: each page file
  // holds one contiguous part of the address space (a lazy restore records one run per file
  // and VMA instead of one per batch).
  size_t k = drains_.size() > 1 && batched_ >= total_ / 2 ? 1 : 0;
  batched_ += cur_->len;
  Drain* d = drains_[k].get();
  order_[k].push_back(cur_.get());
  {
    std::lock_guard<std::mutex> l(mu_);
    d->queue.push_back(std::move(cur_));
  }
  cur_.reset();
}

Result<void> PageCapture::Add(uint64_t addr, uint64_t npages, bool use_fd) {
  const uint64_t batch = std::max(kBatchMin, pipe_bytes_);
  uint64_t len = npages * kPage;
  while (len > 0) {
    if (!cur_) cur_ = std::make_unique<Batch>();
    uint64_t n = std::min(len, batch - cur_->len);
    if (use_fd) {
      TRY(Splice());  // what came before goes first
      TRY(ReadUnreadable(addr, n));
    } else {
      for (uint64_t a = addr, left = n; left > 0;) {
        uint64_t k = std::min<uint64_t>(left, pipe_bytes_ - pending_len_);
        if (!pending_.empty() && pending_.back().src + pending_.back().len == a)
          pending_.back().len += k;
        else
          pending_.push_back({a, k});
        pending_len_ += k;
        a += k;
        left -= k;
        if (pending_len_ == pipe_bytes_ || pending_.size() >= kMaxIov) TRY(Splice());
      }
    }
    auto& es = cur_->entries;
    if (!es.empty() && es.back().src + es.back().len == addr)
      es.back().len += n;
    else
      es.push_back({addr, n});
    cur_->len += n;
    pages_ += n / kPage;
    addr += n;
    len -= n;
    if (cur_->len == batch) {
      TRY(Splice());
      CloseBatch();
    }
  }
  return Ok();
}

Result<void> PageCapture::EndCapture() {
  if (cur_) TRY(Splice());
  CloseBatch();
  pipe_rd_.reset();
  if (target_fd_ >= 0) {
    long fd = target_fd_;
    target_fd_ = -1;
    TRY(r_->Syscall(SYS_close, static_cast<uint64_t>(fd)));
  }
  return Ok();
}

void PageCapture::Release() {
  uint64_t a = r_->area_start(), b = r_->area_end();
  // In the order the drains take them: one of each in turn, so both start at once.
  std::vector<Batch*> order;
  for (size_t i = 0; i < std::max(order_[0].size(), order_[1].size()); ++i)
    for (auto& o : order_)
      if (i < o.size()) order.push_back(o[i]);
  for (Batch* bt : order) {
    // One call for the batch's hull (the gaps are pages not dumped: the process never runs
    // again), around the Remote's own area; per entry if the kernel refuses (a locked or
    // hugetlb VMA in it stops the walk there).
    uint64_t lo = bt->entries.front().src;
    uint64_t hi = bt->entries.back().src + bt->entries.back().len;
    bool done = true;
    if (hi <= a || lo >= b) {
      done = Advise(r_, lo, hi);
    } else {
      if (lo < a) done = Advise(r_, lo, a) && done;
      if (hi > b) done = Advise(r_, b, hi) && done;
    }
    if (!done)
      for (const auto& e : bt->entries)
        if (e.src + e.len <= a || e.src >= b) Advise(r_, e.src, e.src + e.len);
    released_ += bt->len;
    {
      std::lock_guard<std::mutex> l(mu_);
      bt->released = true;  // the drain owns it from here
    }
    cv_.notify_all();
  }
  order_[0].clear();
  order_[1].clear();
}

void PageCapture::DrainLoop(Drain* d) {
  std::vector<char> buf;
  for (;;) {
    std::unique_ptr<Batch> b;
    {
      std::unique_lock<std::mutex> l(mu_);
      cv_.wait(l, [&] {
        return stop_ || failed_ || (!d->queue.empty() && d->queue.front()->released);
      });
      if (stop_ || failed_) return;
      b = std::move(d->queue.front());
      d->queue.pop_front();
      ++busy_;
    }
    auto r = DrainOne(d, *b, &buf);
    b.reset();  // its holders: the last references to those pages
    {
      std::lock_guard<std::mutex> l(mu_);
      --busy_;
      if (!r.ok() && !failed_) {
        error_ = std::move(r.error());
        failed_ = true;
      }
    }
    cv_.notify_all();
    if (!r.ok()) return;
  }
}

Result<void> PageCapture::DrainOne(Drain* d, Batch& b, std::vector<char>* buf) {
  // The batch's bytes in order, from its parts; each holder closed once read (the last
  // reference to those pages: they are free for the page file's next ones).
  size_t pi = 0, poff = 0;
  auto fill = [&](char* dst, size_t n) -> Result<void> {
    while (n > 0) {
      if (pi >= b.parts.size())
        return MakeError(ErrorKind::kGeneric, 0, "pid %d: captured less than a batch of %lu",
                         r_->pid(), static_cast<unsigned long>(b.len));
      Part& part = b.parts[pi];
      size_t k = std::min(n, part.len - poff);
      if (part.holder.get() < 0) {
        memcpy(dst, part.bytes.data() + poff, k);
      } else {
        for (size_t got = 0; got < k;) {
          ssize_t x = read(part.holder.get(), dst + got, k - got);
          if (x < 0 && errno == EINTR) continue;
          if (x <= 0) return Errno("read captured pages of pid %d", r_->pid());
          got += x;
        }
      }
      dst += k;
      n -= k;
      poff += k;
      if (poff == part.len) {
        part.holder.reset();
        part.bytes = std::string();
        ++pi;
        poff = 0;
      }
    }
    return Ok();
  };
  uint64_t off = 0;
  images::BlobWriter::External ext;
  ASSIGN_OR_RETURN(bool external, d->blob->AppendExternal(b.len, &ext));
  if (external) {
    // Raw into a file: through a small buffer that stays in the cache, checksummed there on its
    // way into the file (one read of the captured pages, one write of the new ones; a batch
    // buffer would be read twice more from memory, a read-back once more).
    constexpr size_t kPiece = 256 << 10;
    if (buf->size() < kPiece) buf->resize(kPiece);
    std::vector<uint32_t> crcs;
    int fd = d->blob->fd();
    for (const auto& c : ext.chunks) {
      uint32_t crc = 0;
      uint64_t at = c.header_off + sizeof(images::format::ChunkHeader);
      for (uint32_t done = 0; done < c.len;) {
        size_t k = std::min<size_t>(kPiece, c.len - done);
        TRY(fill(buf->data(), k));
        crc = images::Crc32c(crc, buf->data(), k);
        for (size_t w = 0; w < k;) {
          ssize_t x = pwrite(fd, buf->data() + w, k - w, static_cast<off_t>(at + done + w));
          if (x < 0 && errno == EINTR) continue;
          if (x <= 0) return Errno("write pages of pid %d", r_->pid());
          w += x;
        }
        done += k;
      }
      crcs.push_back(crc);
    }
    TRY(d->blob->CommitExternal(ext, crcs));
    off = ext.logical_off;
  } else {
    // Compressed (or no file): the whole batch, appended (compressed on the blob's threads).
    if (buf->size() < b.len) buf->resize(b.len);
    TRY(fill(buf->data(), b.len));
    ASSIGN_OR_RETURN(off, d->blob->Append(buf->data(), b.len));
  }
  for (const auto& e : b.entries) {
    uint64_t np = e.len / kPage;
    if (!d->runs.empty()) {
      auto& last = d->runs.back();
      if (last.vaddr() + last.npages() * kPage == e.src &&
          last.blob_off() + last.npages() * kPage == off) {
        last.set_npages(last.npages() + np);
        off += e.len;
        continue;
      }
    }
    img::PageRun r;
    r.set_vaddr(e.src);
    r.set_npages(np);
    r.set_blob_off(off);
    d->runs.push_back(std::move(r));
    off += e.len;
  }
  return Ok();
}

Result<void> PageCapture::Finish() {
  // Every batch was released: each drain ends when its queue is empty.
  for (;;) {
    std::unique_lock<std::mutex> l(mu_);
    bool empty = true;
    for (auto& d : drains_) empty = empty && d->queue.empty();
    if ((empty && busy_ == 0) || failed_) break;
    cv_.wait(l);
  }
  Stop();
  std::lock_guard<std::mutex> l(mu_);
  if (failed_) return error_;
  return Ok();
}

}  // namespace godwit::dump
