#include "dump/pages.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/uio.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "common/fs.h"
#include "common/log.h"

namespace godwit::dump {
namespace {

constexpr uint64_t kPage = 4096;
constexpr uint64_t kPresent = 1ULL << 63;
constexpr uint64_t kSwapped = 1ULL << 62;
constexpr uint64_t kFileShared = 1ULL << 61;
constexpr uint64_t kPfnMask = (1ULL << 55) - 1;
constexpr size_t kMaxIov = 1024;

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
        take = true;
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

PageWriter::PageWriter(images::BlobWriter* blob, pid_t pid, int fd, uint64_t total_bytes)
    : blob_(blob), pid_(pid), fd_(fd) {
  two_readers_ = std::thread::hardware_concurrency() >= 2 && !getenv("GODWIT_ONE_READER");
  buf_size_ = std::max<uint64_t>(kPage, std::min<uint64_t>(total_bytes, 32ULL << 20));
  int nbufs = total_bytes > buf_size_ ? 3 : 1;
  for (int i = 0; i < nbufs; ++i) {
    bufs_.emplace_back(new char[buf_size_]);
    free_.push_back(bufs_.back().get());
  }
  writer_ = std::thread([this] { WriterLoop(); });
}

PageWriter::~PageWriter() {
  {
    std::lock_guard<std::mutex> l(mu_);
    done_ = true;
  }
  cv_.notify_all();
  if (writer_.joinable()) writer_.join();
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
    bool failed;
    {
      std::lock_guard<std::mutex> l(mu_);
      failed = failed_;
    }
    if (!failed) {
      Result<uint64_t> off = b.ip.logical_off;
      if (b.in_place) {
        auto c = blob_->CommitInPlace(b.ip);
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

}  // namespace

Result<void> PageWriter::Flush() {
  if (cur_ == nullptr) return Ok();
  Batch batch{cur_, cur_len_, {}};
  if (in_place_) {
    ASSIGN_OR_RETURN(bool ok, blob_->AppendInPlace(cur_len_, &batch.ip));
    if (ok)
      batch.in_place = true;
    else
      in_place_ = false;  // the writer thread Appends from now on: never in place again
  }
  // Where batch bytes [off, off + len) go: the buffer, or the chunks' data in the page file.
  std::vector<iovec> local;
  auto dest = [&](uint64_t off, uint64_t len) {
    local.clear();
    if (!batch.in_place) {
      local.push_back({cur_ + off, len});
      return;
    }
    uint64_t base = 0;
    for (const auto& [data, clen] : batch.ip.chunks) {
      if (len == 0) break;
      if (off < base + clen) {
        uint64_t skip = off - base, n = std::min<uint64_t>(len, clen - skip);
        local.push_back({data + skip, n});
        off += n;
        len -= n;
      }
      base += clen;
    }
  };
  // Read every entry into place: runs of process_vm_readv entries go in one call each.
  size_t i = 0;
  while (i < cur_entries_.size()) {
    const Entry& e = cur_entries_[i];
    if (e.use_fd) {
      dest(e.buf_off, e.len);
      uint64_t done = 0;
      iovec* l = local.data();
      size_t lc = local.size();
      while (done < e.len) {
        ssize_t n = preadv(fd_, l, static_cast<int>(lc), static_cast<off_t>(e.src + done));
        if (n <= 0)
          return Errno("read %lu bytes at %#lx of pid %d", static_cast<unsigned long>(e.len),
                       static_cast<unsigned long>(e.src + done), pid_);
        done += n;
        Advance(&l, &lc, n);
      }
      ++i;
      continue;
    }
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
    // Copies remote bytes [from, to) of this group into place.
    auto read_range = [this, &remote, k](std::vector<iovec> lv, uint64_t from,
                                         uint64_t to) -> Result<void> {
      std::vector<iovec> rv_store;
      uint64_t pos = 0;
      for (size_t x = 0; x < k && pos < to; ++x) {
        uint64_t a = pos, b = pos + remote[x].iov_len;
        pos = b;
        if (b <= from) continue;
        uint64_t s0 = std::max(a, from), e0 = std::min(b, to);
        rv_store.push_back({static_cast<char*>(remote[x].iov_base) + (s0 - a), e0 - s0});
      }
      iovec* l = lv.data();
      size_t lc = lv.size();
      iovec* rv = rv_store.data();
      size_t rc = rv_store.size();
      uint64_t done = 0, want = to - from;
      // process_vm_readv stops at the first failing remote iovec; retry from there.
      while (done < want) {
        ssize_t n = process_vm_readv(pid_, l, std::min(lc, kMaxIov), rv, std::min(rc, kMaxIov), 0);
        if (n <= 0)
          return Errno("process_vm_readv pid %d at %#lx", pid_,
                       reinterpret_cast<unsigned long>(rv->iov_base));
        done += n;
        Advance(&l, &lc, n);
        Advance(&rv, &rc, n);
      }
      return Ok();
    };
    // In place, a big group is copied by two threads (process_vm_readv is bound by pinning
    // pages, ~4-5 GB/s per core here; two cores read different halves).
    uint64_t half = total;
    if (batch.in_place && total >= (8ULL << 20) && two_readers_) half = (total / 2) & ~(kPage - 1);
    Result<void> second;
    std::thread helper;
    if (half < total) {
      dest(first_off + half, total - half);
      helper = std::thread([&, lv = local] { second = read_range(lv, half, total); });
    }
    dest(first_off, half);
    Result<void> first = read_range(local, 0, half);
    if (helper.joinable()) helper.join();
    TRY(std::move(first));
    TRY(std::move(second));
  }
  batch.entries = std::move(cur_entries_);
  {
    std::lock_guard<std::mutex> l(mu_);
    queue_.push_back(std::move(batch));
  }
  cv_.notify_all();
  cur_ = nullptr;
  cur_len_ = 0;
  cur_entries_.clear();
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
  if (failed_) return error_;
  return Ok();
}

}  // namespace godwit::dump
