#include "dump/dirty.h"

#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>

#include "common/fs.h"
#include "common/log.h"

namespace godwit::dump {
namespace {

// This machine's headers are 6.1: the 6.7 PAGEMAP_SCAN interface and 6.7 uffd features by hand.
constexpr uint64_t kFeatureWpUnpopulated = 1ULL << 13;
constexpr uint64_t kFeatureWpAsync = 1ULL << 15;
constexpr uint64_t kScanWpMatching = 1ULL << 0;
constexpr uint64_t kScanCheckWpAsync = 1ULL << 1;
constexpr uint64_t kPageIsWritten = 1ULL << 1;
constexpr uint64_t kPage = 4096;

struct PmScanArg {
  uint64_t size, flags, start, end, walk_end, vec, vec_len, max_pages, category_inverted,
      category_mask, category_anyof_mask, return_mask;
};
struct PageRegion {
  uint64_t start, end, categories;
};
#define GODWIT_PAGEMAP_SCAN _IOWR('f', 16, PmScanArg)

bool Trackable(const proc::MapsEntry& m) {
  if (m.shared) return false;
  if (!m.path.empty() && m.path[0] == '[' && m.path != "[heap]" && m.path != "[stack]" &&
      m.path.rfind("[anon", 0) != 0)
    return false;  // [vdso], [vvar], [vsyscall]
  return true;
}

}  // namespace

Result<std::unique_ptr<DirtyTracker>> DirtyTracker::Start(pid_t pid, remote::Remote* r,
                                                          const std::vector<proc::MapsEntry>& vmas) {
  std::unique_ptr<DirtyTracker> t(new DirtyTracker());
  t->pid_ = pid;
  ASSIGN_OR_RETURN(long tfd, r->Syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK));
  int pidfd = static_cast<int>(syscall(SYS_pidfd_open, pid, 0));
  if (pidfd < 0) return Errno("pidfd_open %d", pid);
  UniqueFd upidfd(pidfd);
  int fd = static_cast<int>(syscall(SYS_pidfd_getfd, pidfd, static_cast<int>(tfd), 0));
  int getfd_errno = errno;
  TRY(r->Syscall(SYS_close, static_cast<uint64_t>(tfd)));
  if (fd < 0) {
    errno = getfd_errno;
    return Errno("pidfd_getfd uffd of %d", pid);
  }
  t->uffd_.reset(fd);
  uffdio_api api{};
  api.api = UFFD_API;
  api.features = kFeatureWpAsync | kFeatureWpUnpopulated;
  if (ioctl(fd, UFFDIO_API, &api) < 0)
    return MakeError(ErrorKind::kUnsupported, errno, "userfaultfd WP_ASYNC in %d", pid);
  for (const auto& m : vmas) {
    if (!Trackable(m)) continue;
    uffdio_register reg{};
    reg.range.start = m.start;
    reg.range.len = m.end - m.start;
    reg.mode = UFFDIO_REGISTER_MODE_WP;
    if (ioctl(fd, UFFDIO_REGISTER, &reg) < 0) {
      // Not every mapping can be tracked; those are dumped whole in the final round.
      LOG_DEBUG("pid %d: uffd register %#lx-%#lx %s: %s", pid, static_cast<unsigned long>(m.start),
                static_cast<unsigned long>(m.end), m.path.c_str(), strerror(errno));
      continue;
    }
    uffdio_writeprotect wp{};
    wp.range = reg.range;
    wp.mode = UFFDIO_WRITEPROTECT_MODE_WP;
    if (ioctl(fd, UFFDIO_WRITEPROTECT, &wp) < 0)
      return Errno("pid %d: UFFDIO_WRITEPROTECT %#lx", pid, static_cast<unsigned long>(m.start));
    if (!t->ranges_.empty() && t->ranges_.back().second == m.start)
      t->ranges_.back().second = m.end;
    else
      t->ranges_.push_back({m.start, m.end});
  }
  ASSIGN_OR_RETURN(t->pagemap_, fs::Open(StrFormat("/proc/%d/pagemap", pid), O_RDONLY));
  return t;
}

Result<void> DirtyTracker::CollectDirty(std::vector<PageRange>* out) {
  std::vector<PageRegion> vec(4096);
  for (const auto& [start, end] : ranges_) {
    uint64_t at = start;
    while (at < end) {
      PmScanArg a{};
      a.size = sizeof(a);
      a.flags = kScanWpMatching | kScanCheckWpAsync;
      a.start = at;
      a.end = end;
      a.vec = reinterpret_cast<uint64_t>(vec.data());
      a.vec_len = vec.size();
      a.category_mask = kPageIsWritten;
      a.return_mask = kPageIsWritten;
      long n = ioctl(pagemap_.get(), GODWIT_PAGEMAP_SCAN, &a);
      if (n < 0) {
        if (errno == ESRCH) return MakeError(ErrorKind::kNotFound, ESRCH, "process %d exited", pid_);
        // A tracked range may have been unmapped or changed since Start: skip it.
        if (errno == EINVAL || errno == EFAULT || errno == ENOENT) break;
        return Errno("PAGEMAP_SCAN pid %d at %#lx", pid_, static_cast<unsigned long>(at));
      }
      for (long i = 0; i < n; ++i) {
        uint64_t s = vec[i].start, e = vec[i].end;
        if (!out->empty() && out->back().addr + out->back().npages * kPage == s)
          out->back().npages += (e - s) / kPage;
        else
          out->push_back({s, (e - s) / kPage});
      }
      // A full vector may mean more to come; walk_end says where the walk stopped.
      if (n < static_cast<long>(vec.size())) break;
      at = a.walk_end;
    }
  }
  std::sort(out->begin(), out->end(), [](const PageRange& x, const PageRange& y) { return x.addr < y.addr; });
  return Ok();
}

bool DirtyTracker::Covers(uint64_t start, uint64_t end) const {
  for (const auto& [s, e] : ranges_)
    if (start >= s && end <= e) return true;
  return false;
}

std::vector<PageRange> Intersect(const std::vector<PageRange>& a, const std::vector<PageRange>& b) {
  std::vector<PageRange> out;
  size_t i = 0, j = 0;
  while (i < a.size() && j < b.size()) {
    uint64_t as = a[i].addr, ae = as + a[i].npages * kPage;
    uint64_t bs = b[j].addr, be = bs + b[j].npages * kPage;
    uint64_t s = std::max(as, bs), e = std::min(ae, be);
    if (s < e) out.push_back({s, (e - s) / kPage});
    if (ae < be) ++i;
    else ++j;
  }
  return out;
}

}  // namespace godwit::dump
