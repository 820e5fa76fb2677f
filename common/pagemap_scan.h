// The PAGEMAP_SCAN ioctl on /proc/PID/pagemap (Linux 6.7, include/uapi/linux/fs.h) and the
// userfaultfd features pre-copy needs, defined by hand: the headers here are 6.1's. Only the ABI;
// the callers (dump/dirty.cc: written pages; dump/mm.cc: guard regions; `godwit check`) decide
// what to scan for.
//
// Scanning: fill a PmScanArg (size = sizeof, [start, end), vec/vec_len, the category masks), call
// ioctl(pagemap_fd, kPagemapScan, &arg): it returns how many PageRegion entries it wrote. Stop a
// loop on n < vec_len, not on walk_end alone: walk_end was seen stale here after the kernel
// restarted a walk internally.
#pragma once

#include <sys/ioctl.h>

#include <cstdint>

namespace godwit::pagemap {

struct PmScanArg {  // struct pm_scan_arg
  uint64_t size, flags, start, end, walk_end, vec, vec_len, max_pages, category_inverted,
      category_mask, category_anyof_mask, return_mask;
};
struct PageRegion {  // struct page_region
  uint64_t start, end, categories;
};

inline constexpr unsigned long kPagemapScan = _IOWR('f', 16, PmScanArg);

// PmScanArg::flags.
inline constexpr uint64_t kScanWpMatching = 1ULL << 0;    // PM_SCAN_WP_MATCHING: get and clear
inline constexpr uint64_t kScanCheckWpAsync = 1ULL << 1;  // PM_SCAN_CHECK_WPASYNC
// Page categories (PAGE_IS_*), for the masks and PageRegion::categories.
inline constexpr uint64_t kPageIsWpAsync = 1ULL << 0;
inline constexpr uint64_t kPageIsWritten = 1ULL << 1;
inline constexpr uint64_t kPageIsFile = 1ULL << 2;
inline constexpr uint64_t kPageIsPresent = 1ULL << 3;
inline constexpr uint64_t kPageIsSwapped = 1ULL << 4;
inline constexpr uint64_t kPageIsPfnZero = 1ULL << 5;
inline constexpr uint64_t kPageIsHuge = 1ULL << 6;
inline constexpr uint64_t kPageIsSoftDirty = 1ULL << 7;
inline constexpr uint64_t kPageIsGuard = 1ULL << 8;  // Linux 6.14

// userfaultfd API features newer than these headers (UFFDIO_API features).
inline constexpr uint64_t kUffdFeatureWpUnpopulated = 1ULL << 13;
inline constexpr uint64_t kUffdFeatureWpAsync = 1ULL << 15;

}  // namespace godwit::pagemap
