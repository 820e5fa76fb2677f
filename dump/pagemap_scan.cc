#include "dump/pagemap_scan.h"

#include <sys/ioctl.h>

#include <cerrno>

#include "common/page.h"

namespace godwit::dump::pagemap_scan {

namespace {

// Every region PAGEMAP_SCAN returns for q over [start, end), in address order, to fn.
template <typename Fn>
Result<void> Walk(int pagemap_fd, uint64_t start, uint64_t end, const Query& q, Fn fn) {
  constexpr size_t kVec = 1024;
  pagemap::PageRegion vec[kVec];
  for (uint64_t at = start; at < end;) {
    pagemap::PmScanArg a{};
    a.size = sizeof(a);
    a.flags = q.flags;
    a.start = at;
    a.end = end;
    a.vec = reinterpret_cast<uint64_t>(vec);
    a.vec_len = kVec;
    a.category_inverted = q.category_inverted;
    a.category_mask = q.category_mask;
    a.category_anyof_mask = q.category_anyof_mask;
    a.return_mask = q.return_mask;
    a.max_pages = q.max_pages;
    long n = ioctl(pagemap_fd, pagemap::kPagemapScan, &a);
    if (n < 0) return Errno("PAGEMAP_SCAN %#lx-%#lx", static_cast<unsigned long>(at),
                            static_cast<unsigned long>(end));
    for (long i = 0; i < n; ++i) fn(vec[i]);
    if (n < static_cast<long>(kVec) || q.max_pages) break;  // walked, or enough pages
    at = vec[n - 1].end;
  }
  return Ok();
}

// Appends [start, end), merged with the last range when they touch.
void Append(const pagemap::PageRegion& g, std::vector<PageRange>* out) {
  PageRange r{g.start, (g.end - g.start) / kPage};
  if (!out->empty() && out->back().addr + out->back().npages * kPage == r.addr)
    out->back().npages += r.npages;
  else
    out->push_back(r);
}

}  // namespace

Result<void> Scan(int pagemap_fd, uint64_t start, uint64_t end, const Query& q,
                  std::vector<PageRange>* out) {
  return Walk(pagemap_fd, start, end, q, [&](const pagemap::PageRegion& g) { Append(g, out); });
}

Result<void> ContentPages(int pagemap_fd, uint64_t start, uint64_t end, bool private_file,
                          std::vector<PageRange>* out) {
  Query q;
  uint64_t not_these = pagemap::kPageIsPfnZero | (private_file ? pagemap::kPageIsFile : 0);
  q.category_inverted = not_these;  // inverted, then required: none of them
  q.category_mask = not_these;
  q.category_anyof_mask = pagemap::kPageIsPresent | pagemap::kPageIsSwapped;
  q.return_mask = q.category_anyof_mask;
  return Scan(pagemap_fd, start, end, q, out);
}

Result<void> ContentPagesCounted(int pagemap_fd, uint64_t start, uint64_t end, bool private_file,
                                 std::vector<PageRange>* out, PageCounts* counts) {
  const uint64_t skip = pagemap::kPageIsPfnZero | (private_file ? pagemap::kPageIsFile : 0);
  Query q;
  q.category_anyof_mask = pagemap::kPageIsPresent | pagemap::kPageIsSwapped;
  q.return_mask = q.category_anyof_mask | skip;
  return Walk(pagemap_fd, start, end, q, [&](const pagemap::PageRegion& g) {
    uint64_t c = g.categories;
    uint64_t np = (g.end - g.start) / kPage;
    if (c & pagemap::kPageIsPresent) counts->present += np;
    if (!(c & pagemap::kPageIsSwapped) && (c & skip)) {
      if (c & pagemap::kPageIsPfnZero)
        counts->zero += np;
      else
        counts->file += np;  // still the page cache's page: never written
      return;
    }
    Append(g, out);
  });
}

}  // namespace godwit::dump::pagemap_scan
