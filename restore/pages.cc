#include "restore/pages.h"

#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "common/log.h"

namespace godwit::restore {
namespace {

constexpr uint64_t kPage = 4096;
#ifndef UFFD_USER_MODE_ONLY
constexpr int kUserModeOnly = 1;
#else
constexpr int kUserModeOnly = UFFD_USER_MODE_ONLY;
#endif

}  // namespace

Result<std::unique_ptr<UffdFiller>> UffdFiller::Open(
    remote::Remote* r, const std::vector<std::pair<uint64_t, uint64_t>>& ranges) {
  if (ranges.empty()) return std::unique_ptr<UffdFiller>();
  const uint64_t args[6] = {static_cast<uint64_t>(O_CLOEXEC | O_NONBLOCK | kUserModeOnly)};
  ASSIGN_OR_RETURN(long tfd, r->RawSyscallIn(r->tid(), SYS_userfaultfd, args));
  if (tfd < 0) {
    LOG_DEBUG("pid %d: userfaultfd: %s: pages are filled without it", r->pid(),
              strerror(static_cast<int>(-tfd)));
    return std::unique_ptr<UffdFiller>();
  }
  int pidfd = static_cast<int>(syscall(SYS_pidfd_open, r->pid(), 0));
  if (pidfd < 0) {
    int e = errno;
    TRY(r->Syscall(SYS_close, static_cast<uint64_t>(tfd)));
    errno = e;
    return Errno("pidfd_open %d", r->pid());
  }
  UniqueFd upidfd(pidfd);
  int fd = static_cast<int>(syscall(SYS_pidfd_getfd, pidfd, static_cast<int>(tfd), 0));
  int getfd_errno = errno;
  TRY(r->Syscall(SYS_close, static_cast<uint64_t>(tfd)));
  if (fd < 0) {
    errno = getfd_errno;
    return Errno("pidfd_getfd uffd of %d", r->pid());
  }
  std::unique_ptr<UffdFiller> f(new UffdFiller());
  f->pid_ = r->pid();
  f->uffd_.reset(fd);
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
  cv_.wait(l, [&] { return produced_ > i || failed_; });
  if (produced_ <= i) return error_;
  *piece = pieces_[i];
  *data = buf_[i % 2].get();
  return true;
}

}  // namespace godwit::restore
