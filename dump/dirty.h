// Dirty-page tracking for pre-copy without soft-dirty (CONFIG_MEM_SOFT_DIRTY is off here):
// userfaultfd in write-protect async mode + the PAGEMAP_SCAN ioctl.
//
// Take (the process is seized): userfaultfd(UFFD_USER_MODE_ONLY) is injected into the target (the
// one call that must run inside it; user-mode only needs no privilege), the fd is taken with
// pidfd_getfd and closed in the target, and UFFDIO_API (WP_ASYNC | WP_UNPOPULATED) set up.
// Arm (the process may run again: the ioctls work on its address space from outside):
// UFFDIO_REGISTER(MODE_WP) on every private VMA and UFFDIO_WRITEPROTECT over them. Write-
// protecting 1 GiB took ~25 ms, a pause every client of the tree saw while it was seized. A page
// written before Arm protected it is read by round 0, which starts after Arm; a mapping changed
// in between registers as it is now, or not at all (then it is stored whole). The process runs
// on; a write to a protected page is resolved by the kernel itself (async) and the page is
// marked written.
// CollectDirty: PAGEMAP_SCAN "written" pages with PM_SCAN_WP_MATCHING (get and clear: reported
// pages are protected again), so each call returns what was written since the previous one.
//
// What stays tracked: a VMA registered at Start keeps its registration through mprotect splits,
// but loses it when it is unmapped, moved (mremap: no UFFD_FEATURE_EVENT_REMAP) or replaced
// (mmap MAP_FIXED), or when the process execs; a VMA made since was never registered. Tracked()
// says which ranges are still registered now (each call reads the current address space through
// a fresh /proc/PID/pagemap, one page per VMA: registration is the VMA's), and only those are
// scanned: pages elsewhere must be copied whole.
// Destroying the tracker closes the uffd, which unregisters everything and drops the protection.
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

#include <functional>

namespace godwit::dump {

class DirtyTracker {
 public:
  // The process seized (r): its userfaultfd.
  static Result<std::unique_ptr<DirtyTracker>> Take(pid_t pid, remote::Remote* r);
  // vmas: the process's maps (without the remote scratch area). Private VMAs are tracked.
  // kNotFound when the process is gone.
  Result<void> Arm(const std::vector<proc::MapsEntry>& vmas);
  // The ranges registered by Arm that are still registered now, sorted, as parts of the VMAs in
  // maps (the process's maps now, sorted; exact when it is stopped). kNotFound when the process
  // is gone.
  Result<std::vector<PageRange>> Tracked(const std::vector<proc::MapsEntry>& maps) const;
  // Pages of tracked ranges written since Start or the previous call, sorted; they are
  // write-protected again. kNotFound when the process is gone.
  Result<void> CollectDirty(std::vector<PageRange>* out);
  // Tests only: called by Arm right after it registered [start, end) of pid, before it
  // write-protects it (the process runs meanwhile: what it maps anew there is not registered).
  static void SetRegisteredHookForTest(std::function<void(pid_t, uint64_t, uint64_t)> hook);

 private:
  Result<UniqueFd> OpenPagemap() const;
  pid_t pid_ = 0;
  UniqueFd uffd_;
  std::vector<std::pair<uint64_t, uint64_t>> ranges_;  // registered by Arm
};

// a ∩ b for sorted, non-overlapping page-range lists.
std::vector<PageRange> Intersect(const std::vector<PageRange>& a, const std::vector<PageRange>& b);
// True if [start, end) lies inside one range of the sorted list.
bool Contains(const std::vector<PageRange>& ranges, uint64_t start, uint64_t end);

}  // namespace godwit::dump
