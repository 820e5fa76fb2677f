// The PAGEMAP_SCAN ioctl on /proc/PID/pagemap (Linux 6.7; PAGE_IS_GUARD 6.14), declared by hand:
// this machine's headers are 6.1. Used by the guard-region walk (mm.cc) and dirty tracking
// (dirty.cc).
//
// Stop a scan loop when fewer than vec_len regions came back, and continue a full one from the
// last region's end: walk_end can be stale after the kernel restarts a walk internally.
#pragma once

#include <sys/ioctl.h>

#include <cstdint>
#include <vector>

#include "common/result.h"
#include "dump/pages.h"

namespace godwit::dump::pagemap_scan {

struct Arg {
  uint64_t size, flags, start, end, walk_end, vec, vec_len, max_pages, category_inverted,
      category_mask, category_anyof_mask, return_mask;
};
struct Region {
  uint64_t start, end, categories;
};

inline constexpr unsigned long kIoctl = _IOWR('f', 16, Arg);

// Flags.
inline constexpr uint64_t kWpMatching = 1ULL << 0;  // write-protect the reported pages (get+clear)
// Categories.
inline constexpr uint64_t kWpAllowed = 1ULL << 0;  // in a VMA registered for async uffd-wp
inline constexpr uint64_t kWritten = 1ULL << 1;    // written since write-protected
inline constexpr uint64_t kGuard = 1ULL << 8;      // a guard region (MADV_GUARD_INSTALL)

struct Query {
  uint64_t flags = 0, category_mask = 0, category_anyof_mask = 0, return_mask = 0;
};

// Appends the pages of [start, end) that match q to out, sorted, adjacent ones merged. An
// ioctl failure is an error with its errno (EINVAL or ENOTTY: this kernel lacks the query).
Result<void> Scan(int pagemap_fd, uint64_t start, uint64_t end, const Query& q,
                  std::vector<PageRange>* out);

}  // namespace godwit::dump::pagemap_scan
