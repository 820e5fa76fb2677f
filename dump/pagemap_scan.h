// The PAGEMAP_SCAN walk the dump does (the ABI is common/pagemap_scan.h): used by the
// guard-region walk (mm.cc) and dirty tracking (dirty.cc). The categories and flags of a Query are
// common/pagemap_scan.h's (pagemap::kPageIs*, pagemap::kScan*).
//
// Stop a scan loop when fewer than vec_len regions came back, and continue a full one from the
// last region's end: walk_end can be stale after the kernel restarts a walk internally.
#pragma once

#include <cstdint>
#include <vector>

#include "common/pagemap_scan.h"
#include "common/result.h"
#include "dump/pages.h"

namespace godwit::dump::pagemap_scan {

struct Query {
  uint64_t flags = 0, category_inverted = 0, category_mask = 0, category_anyof_mask = 0,
           return_mask = 0;
  uint64_t max_pages = 0;  // stop after this many matching pages (0: no limit)
};

// Appends the pages of [start, end) that match q to out, sorted, adjacent ones merged. An
// ioctl failure is an error with its errno (EINVAL or ENOTTY: this kernel lacks the query).
Result<void> Scan(int pagemap_fd, uint64_t start, uint64_t end, const Query& q,
                  std::vector<PageRange>* out);

// The pages of [start, end) with content of the process's own, as PresentPages::Collect decides
// (present or swapped, not the zero page; with private_file, not the file's page-cache page), in
// one walk that returns ranges with their categories instead of a pagemap entry per page (~ten
// times faster on big mappings), counting what it skips as PresentPages::Collect does: the final
// dump's source of pages where the kernel has PAGEMAP_SCAN.
Result<void> ContentPagesCounted(int pagemap_fd, uint64_t start, uint64_t end, bool private_file,
                                 std::vector<PageRange>* out, PageCounts* counts);

// For a VMA tracked since a pre-copy started (registered for write-protect, dump/dirty.h): in one
// walk, its pages with content of the process's own (as ContentPagesCounted, uncounted) to
// `content`, and those of them written since the last round (not write-protected again:
// PAGE_IS_WRITTEN) to `written`. Nothing is protected again: the final dump's walk, after which
// tracking ends. A range of 128 MiB or more is walked in two halves on two threads.
// With private_file, the "swapped" pages not written since also go to *swapped (sorted): among
// them the write-protect markers that stand for no page (PteMarkers tells them apart).
Result<void> ContentAndWritten(int pagemap_fd, uint64_t start, uint64_t end, bool private_file,
                               std::vector<PageRange>* content, std::vector<PageRange>* written,
                               std::vector<PageRange>* swapped = nullptr);

// The pages of ranges (sorted) whose /proc/PID/pagemap entry is a write-protect marker
// (dump/pages.h IsPteMarker), read from pagemap_fd.
Result<std::vector<PageRange>> PteMarkers(int pagemap_fd, const std::vector<PageRange>& ranges);

}  // namespace godwit::dump::pagemap_scan
