#include "dump/dirty.h"

#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "common/fs.h"
#include "common/log.h"
#include "common/page.h"
#include "common/pagemap_scan.h"
#include "common/uffd.h"
#include "dump/pagemap_scan.h"

namespace godwit::dump {
namespace {

bool Trackable(const proc::MapsEntry& m) {
  if (m.shared) return false;
  if (!m.path.empty() && m.path[0] == '[' && m.path != "[heap]" && m.path != "[stack]" &&
      m.path.rfind("[anon", 0) != 0)
    return false;  // [vdso], [vvar], [vsyscall]
  return true;
}

}  // namespace

Result<std::unique_ptr<DirtyTracker>> DirtyTracker::Take(pid_t pid, remote::Remote* r) {
  std::unique_ptr<DirtyTracker> t(new DirtyTracker());
  t->pid_ = pid;
  // User-mode faults only: allowed without CAP_SYS_PTRACE in the initial user namespace (a
  // container's processes, a daemon's unprivileged workers: vm.unprivileged_userfaultfd is 0
  // here), and enough: async write-protect faults, from user or kernel mode, are resolved by the
  // kernel without the uffd. EINVAL: a kernel before 5.11 without the flag.
  auto taken = uffd::TakeFromTarget(*r, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY);
  if (!taken.ok() && taken.error().kind() == ErrorKind::kUnsupported &&
      taken.error().sys_errno() == EINVAL)
    taken = uffd::TakeFromTarget(*r, O_CLOEXEC | O_NONBLOCK);
  if (!taken.ok()) return std::move(taken.error().wrap(StrFormat("pid %d", pid)));
  t->uffd_ = std::move(*taken);
  int fd = t->uffd_.get();
  uffdio_api api{};
  api.api = UFFD_API;
  api.features = pagemap::kUffdFeatureWpAsync | pagemap::kUffdFeatureWpUnpopulated;
  if (ioctl(fd, UFFDIO_API, &api) < 0)
    return MakeError(ErrorKind::kUnsupported, errno, "userfaultfd WP_ASYNC in %d", pid);
  return t;
}

namespace {
std::function<void(pid_t, uint64_t, uint64_t)>& RegisteredHook() {
  static std::function<void(pid_t, uint64_t, uint64_t)> hook;
  return hook;
}
}  // namespace

void DirtyTracker::SetRegisteredHookForTest(std::function<void(pid_t, uint64_t, uint64_t)> hook) {
  RegisteredHook() = std::move(hook);
}

Result<void> DirtyTracker::Arm(const std::vector<proc::MapsEntry>& vmas) {
  const pid_t pid = pid_;
  const int fd = uffd_.get();
  auto track = [&](uint64_t start, uint64_t end) {
    if (!ranges_.empty() && ranges_.back().second == start)
      ranges_.back().second = end;
    else
      ranges_.push_back({start, end});
  };
  // Write-protects [start, end): true; false when part of it is no longer registered (ENOENT:
  // mapped anew since); kNotFound when the process is gone.
  auto protect = [&](uint64_t start, uint64_t end) -> Result<bool> {
    uffdio_writeprotect wp{};
    wp.range.start = start;
    wp.range.len = end - start;
    wp.mode = UFFDIO_WRITEPROTECT_MODE_WP;
    if (ioctl(fd, UFFDIO_WRITEPROTECT, &wp) == 0) return true;
    const int err = errno;
    if (err == ENOENT) return false;
    if (err == ESRCH) return MakeError(ErrorKind::kNotFound, ESRCH, "process %d exited", pid);
    return MakeError(ErrorKind::kGeneric, err, "pid %d: UFFDIO_WRITEPROTECT %#lx: %s", pid,
                     static_cast<unsigned long>(start), strerror(err));
  };
  for (const auto& m : vmas) {
    if (!Trackable(m)) continue;
    uffdio_register reg{};
    reg.range.start = m.start;
    reg.range.len = m.end - m.start;
    reg.mode = UFFDIO_REGISTER_MODE_WP;
    if (ioctl(fd, UFFDIO_REGISTER, &reg) < 0) {
      // The address space is gone (the process exited since it was let go).
      if (errno == ESRCH) return MakeError(ErrorKind::kNotFound, ESRCH, "process %d exited", pid);
      // Not every mapping can be tracked (nor one unmapped since Take); those are dumped whole
      // in the final round.
      LOG_DEBUG("pid %d: uffd register %#lx-%#lx %s: %s", pid, static_cast<unsigned long>(m.start),
                static_cast<unsigned long>(m.end), m.path.c_str(), strerror(errno));
      continue;
    }
    if (RegisteredHook()) RegisteredHook()(pid, m.start, m.end);
    ASSIGN_OR_RETURN(bool whole, protect(m.start, m.end));
    if (!whole) {
      // The process runs: part of the range was mapped anew between the registration and now
      // (an mmap MAP_FIXED over it, a munmap). The mappings there now, each on its own; one not
      // registered is not tracked (dumped whole in the final round), the others are. Failing
      // here instead dropped the whole process from pre-copy.
      auto now = proc::ReadMaps(pid);
      if (!now.ok()) {
        if (now.error().sys_errno() == ENOENT || now.error().sys_errno() == ESRCH)
          return MakeError(ErrorKind::kNotFound, ESRCH, "process %d exited", pid);
        return std::move(now.error().wrap(StrFormat("pid %d: dirty tracking", pid)));
      }
      for (const auto& v : *now) {
        uint64_t s = std::max(v.start, m.start), e = std::min(v.end, m.end);
        if (s >= e) continue;
        ASSIGN_OR_RETURN(bool done, protect(s, e));
        if (done)
          track(s, e);
        else
          LOG_DEBUG("pid %d: %#lx-%#lx mapped anew since its registration: not tracked", pid,
                    static_cast<unsigned long>(s), static_cast<unsigned long>(e));
      }
      continue;
    }
    track(m.start, m.end);
  }
  return Ok();
}

Result<UniqueFd> DirtyTracker::OpenPagemap() const {
  auto fd = fs::Open(StrFormat("/proc/%d/pagemap", pid_), O_RDONLY);
  if (!fd.ok() && (fd.error().sys_errno() == ENOENT || fd.error().sys_errno() == ESRCH))
    return MakeError(ErrorKind::kNotFound, ESRCH, "process %d exited", pid_);
  return fd;
}

namespace {

// A scan's error, kNotFound when the process (its address space) is gone.
Error ScanError(Error e, pid_t pid) {
  if (e.sys_errno() == ESRCH) return MakeError(ErrorKind::kNotFound, ESRCH, "process %d exited", pid);
  return std::move(e.wrap(StrFormat("pid %d", pid)));
}

}  // namespace

Result<std::vector<PageRange>> DirtyTracker::Tracked(
    const std::vector<proc::MapsEntry>& maps) const {
  ASSIGN_OR_RETURN(UniqueFd pm, OpenPagemap());
  // Registration is a VMA's (userfaultfd_wp_async(vma)), so the first page of each VMA answers
  // for all of it: one page per VMA is asked for (max_pages), not a walk of every page table
  // entry (a whole walk cost ~4 ms per GiB, frozen, in the final dump). A VMA that is not
  // registered is skipped by the kernel without a walk.
  pagemap_scan::Query q;
  q.category_mask = pagemap::kPageIsWpAsync;
  q.return_mask = pagemap::kPageIsWpAsync;
  q.max_pages = 1;
  std::vector<PageRange> out;
  size_t k = 0;
  for (const auto& m : maps) {
    while (k < ranges_.size() && ranges_[k].second <= m.start) ++k;
    for (size_t j = k; j < ranges_.size() && ranges_[j].first < m.end; ++j) {
      const uint64_t s = std::max(m.start, ranges_[j].first), e = std::min(m.end, ranges_[j].second);
      std::vector<PageRange> one;
      auto r = pagemap_scan::Scan(pm.get(), s, e, q, &one);
      if (!r.ok()) return ScanError(std::move(r).error(), pid_);
      if (one.empty()) continue;
      PageRange piece{s, (e - s) / kPage};
      if (!out.empty() && out.back().addr + out.back().npages * kPage == s)
        out.back().npages += piece.npages;
      else
        out.push_back(piece);
    }
  }
  return out;
}

Result<void> DirtyTracker::CollectDirty(std::vector<PageRange>* out) {
  ASSIGN_OR_RETURN(UniqueFd pm, OpenPagemap());
  // Without PM_SCAN_CHECK_WPASYNC a VMA not registered (any more) is skipped, not an error.
  pagemap_scan::Query q;
  q.flags = pagemap::kScanWpMatching;
  q.category_mask = pagemap::kPageIsWritten;
  q.return_mask = pagemap::kPageIsWritten;
  for (const auto& [start, end] : ranges_) {
    auto r = pagemap_scan::Scan(pm.get(), start, end, q, out);
    if (!r.ok()) return ScanError(std::move(r).error(), pid_);
  }
  return Ok();
}

bool Contains(const std::vector<PageRange>& ranges, uint64_t start, uint64_t end) {
  auto it = std::upper_bound(ranges.begin(), ranges.end(), start,
                             [](uint64_t a, const PageRange& r) { return a < r.addr; });
  if (it == ranges.begin()) return false;
  --it;
  return start >= it->addr && end <= it->addr + it->npages * kPage;
}

std::vector<PageRange> Intersect(const std::vector<PageRange>& a, const std::vector<PageRange>& b) {
  std::vector<PageRange> out;
  size_t i = 0, j = 0;
  while (i < a.size() && j < b.size()) {
    uint64_t as = a[i].addr, ae = as + a[i].npages * kPage;
    uint64_t bs = b[j].addr, be = bs + b[j].npages * kPage;
    uint64_t s = std::max(as, bs), e = std::min(ae, be);
    if (s < e) out.push_back({s, (e - s) / kPage});
    if (ae < be)
      ++i;
    else
      ++j;
  }
  return out;
}

}  // namespace godwit::dump
