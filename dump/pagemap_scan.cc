#include "dump/pagemap_scan.h"

#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <thread>

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

namespace {

// ContentAndWritten over one part, without threads.
Result<void> ContentAndWrittenPart(int pagemap_fd, uint64_t start, uint64_t end, bool private_file,
                                   std::vector<PageRange>* content,
                                   std::vector<PageRange>* written,
                                   std::vector<PageRange>* swapped) {
  const uint64_t skip = pagemap::kPageIsPfnZero | (private_file ? pagemap::kPageIsFile : 0);
  Query q;
  q.category_anyof_mask = pagemap::kPageIsPresent | pagemap::kPageIsSwapped;
  q.return_mask = q.category_anyof_mask | skip | pagemap::kPageIsWritten;
  return Walk(pagemap_fd, start, end, q, [&](const pagemap::PageRegion& g) {
    const uint64_t c = g.categories;
    if (!(c & pagemap::kPageIsSwapped) && (c & skip)) return;  // as ContentPagesCounted
    Append(g, content);
    if (c & pagemap::kPageIsWritten)
      Append(g, written);
    else if (private_file && swapped && (c & pagemap::kPageIsSwapped))
      Append(g, swapped);
  });
}

// Appends b to a (both sorted, b after a), merging where they touch.
void AppendAll(std::vector<PageRange>* a, const std::vector<PageRange>& b) {
  for (const PageRange& r : b)
    Append({r.addr, r.addr + r.npages * kPage, 0}, a);
}

}  // namespace

Result<void> ContentAndWritten(int pagemap_fd, uint64_t start, uint64_t end, bool private_file,
                               std::vector<PageRange>* content, std::vector<PageRange>* written,
                               std::vector<PageRange>* swapped) {
  // The walk costs ~4 ms per GiB of page tables: a large range is walked in two halves on two
  // threads (mmap_lock is taken shared by each), which halves it inside the freeze.
  constexpr uint64_t kSplitMin = 128ull << 20, kAlign = 2ull << 20;
  const uint64_t mid = (start + (end - start) / 2) & ~(kAlign - 1);
  if (end - start < kSplitMin || mid <= start || mid >= end || std::thread::hardware_concurrency() < 2)
    return ContentAndWrittenPart(pagemap_fd, start, end, private_file, content, written, swapped);
  std::vector<PageRange> c2, w2, s2;
  Result<void> second = Ok();
  std::thread t([&] {
    second = ContentAndWrittenPart(pagemap_fd, mid, end, private_file, &c2, &w2,
                                   swapped ? &s2 : nullptr);
  });
  Result<void> first =
      ContentAndWrittenPart(pagemap_fd, start, mid, private_file, content, written, swapped);
  t.join();
  TRY(std::move(first));
  TRY(std::move(second));
  AppendAll(content, c2);
  AppendAll(written, w2);
  if (swapped) AppendAll(swapped, s2);
  return Ok();
}

Result<std::vector<PageRange>> PteMarkers(int pagemap_fd, const std::vector<PageRange>& ranges) {
  std::vector<PageRange> out;
  std::vector<uint64_t> buf;
  for (const PageRange& r : ranges) {
    for (uint64_t done = 0; done < r.npages;) {
      const uint64_t n = std::min<uint64_t>(r.npages - done, 8192);
      const uint64_t addr = r.addr + done * kPage;
      buf.resize(n);
      ssize_t got = pread(pagemap_fd, buf.data(), n * 8, static_cast<off_t>(addr / kPage * 8));
      if (got != static_cast<ssize_t>(n * 8))
        return Errno("read pagemap at %#lx", static_cast<unsigned long>(addr));
      for (uint64_t i = 0; i < n; ++i) {
        if (!IsPteMarker(buf[i])) continue;
        Append({addr + i * kPage, addr + (i + 1) * kPage, 0}, &out);
      }
      done += n;
    }
  }
  return out;
}

}  // namespace godwit::dump::pagemap_scan
