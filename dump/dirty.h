// Dirty-page tracking for pre-dump rounds without soft-dirty (CONFIG_MEM_SOFT_DIRTY is off here):
// userfaultfd in write-protect async mode + the PAGEMAP_SCAN ioctl.
//
// Start (the process is seized): userfaultfd() is injected into the target (the one call that must
// run inside it), the fd is taken with pidfd_getfd and closed in the target, then from outside:
// UFFDIO_API (WP_ASYNC | WP_UNPOPULATED), UFFDIO_REGISTER(MODE_WP) on every private VMA and
// UFFDIO_WRITEPROTECT over them. The process runs on; a write to a protected page is resolved by
// the kernel itself (async) and the page is marked written.
// CollectDirty: PAGEMAP_SCAN "written" pages with PM_SCAN_WP_MATCHING (get and clear: reported
// pages are protected again), so each call returns what was written since the previous one.
// Destroying the tracker closes the uffd, which unregisters everything.
#pragma once

#include <sys/types.h>

#include <memory>
#include <utility>
#include <vector>

#include "common/proc.h"
#include "common/remote.h"
#include "common/result.h"
#include "common/unique_fd.h"
#include "dump/pages.h"

namespace godwit::dump {

class DirtyTracker {
 public:
  // vmas: the process's maps (without the remote scratch area). Private VMAs are tracked.
  static Result<std::unique_ptr<DirtyTracker>> Start(pid_t pid, remote::Remote* r,
                                                     const std::vector<proc::MapsEntry>& vmas);
  // Pages written since Start or the previous call, sorted; they are write-protected again.
  Result<void> CollectDirty(std::vector<PageRange>* out);
  // True if [start, end) lies inside one tracked range.
  bool Covers(uint64_t start, uint64_t end) const;

 private:
  pid_t pid_ = 0;
  UniqueFd uffd_, pagemap_;
  std::vector<std::pair<uint64_t, uint64_t>> ranges_;
};

// a ∩ b for sorted, non-overlapping page-range lists.
std::vector<PageRange> Intersect(const std::vector<PageRange>& a, const std::vector<PageRange>& b);

}  // namespace godwit::dump
