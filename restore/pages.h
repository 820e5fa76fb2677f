// Filling a restored process's private memory with its dumped pages (restore/pages.cc).
//
// FillPages, per pagemap (pre-dump rounds first): anonymous private VMAs by UFFDIO_COPY from the
// coordinator (from two threads for 64 MiB and more: page creation scales with the second core),
// the rest by the process's own preadv straight from the page file (or process_vm_writev from
// the coordinator for compressed chunks). Page data of a set that leaves blobs to their chunk
// checksums (every restore now, restore.cc) is checked while it is filled: chunks the
// coordinator reads as it reads them, those the process reads on a thread alongside; the tree
// never runs on a bad chunk. RestoreOptions::fill switches the fast paths off for measuring.
//
// UffdFiller. A page fault on fresh anonymous memory allocates a page, zeroes it and maps it; a
// preadv or process_vm_writev into it then copies over the zeros. UFFDIO_COPY allocates the page,
// copies the data into it and maps it, with no zeroing and no fault: on this VM (PVM guest, where
// every fault and page-table update is expensive) 1.7x faster than the target's own preadv
// into populated memory (measured: 4.2 vs 2.5 GB/s with recycled memory, docs/engine.md).
//
// How: a userfaultfd is created in the stopped target (common/uffd.h: the uffd belongs to the mm
// of the process that creates it), taken over with pidfd_getfd and closed there. The
// coordinator registers the ranges (MISSING mode, anonymous VMAs only) and copies from its own
// memory (a mapping of the page file, or a decompression buffer). Closing the uffd unregisters
// everything. UFFD_USER_MODE_ONLY: a kernel access to a missing page of a registered range
// (process_vm_writev, a preadv in the target) fails with EFAULT instead of waiting for a
// fault handler that nobody runs: such a bug cannot hang the restore.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>
#include <memory>
#include <utility>
#include <vector>

#include "common/remote.h"
#include "common/result.h"
#include "common/unique_fd.h"
#include "images/image.h"
#include "restore/context.h"

namespace godwit::restore {

// Fills p's memory with the pages of one pagemap (ctx.images); the VMAs exist and are writable.
// Threads it starts are joined before it returns (the coordinator forks nothing meanwhile).
Result<void> FillPages(RestoreContext& ctx, ProcessRestore& p, const img::PageMap& pagemap);

// A pre-copied process's page maps (rounds, then the final dump's), each cut down to the pages no
// later one holds: filled in any order they give what filling them all in order gives (later
// maps win), each page written once. A full restore of a 2 GiB process after 6 rounds of a
// 1%/100 ms writer wrote 2.9 GB before.
std::vector<img::PageMap> NewestOnly(const std::vector<img::PageMap>& maps);

class UffdFiller {
 public:
  // ranges: [start, end) candidates, sorted, page aligned (the anonymous private VMAs that get
  // pages). Those the kernel refuses to register are left out (filled the usual way). nullptr
  // (not an error) when the process cannot get a userfaultfd.
  static Result<std::unique_ptr<UffdFiller>> Open(
      remote::Remote* r, const std::vector<std::pair<uint64_t, uint64_t>>& ranges);

  // Calls fn(va, len, registered) for the pieces of [va, va + len) in order.
  void Split(uint64_t va, uint64_t len,
             const std::function<void(uint64_t, uint64_t, bool)>& fn) const;
  // Copies len bytes from src (coordinator memory, any alignment) to va, inside a registered
  // range; page aligned va and len. Pages already present (an earlier pre-dump round's) are
  // overwritten with process_vm_writev.
  Result<void> Copy(uint64_t va, const void* src, uint64_t len);
  uint64_t bytes() const { return bytes_.load(); }
  // Pages Copy found present and overwrote with process_vm_writev.
  uint64_t present_pages() const { return present_.load(); }

 private:
  UffdFiller() = default;
  pid_t pid_ = 0;
  UniqueFd uffd_;
  std::vector<std::pair<uint64_t, uint64_t>> ranges_;  // registered, sorted
  // Copy may run on several threads at once.
  std::atomic<uint64_t> bytes_{0};
  std::atomic<uint64_t> present_{0};
};

// Reads pieces of a blob (BlobReader::Read: decompressing and checking zstd chunks) on a second
// thread, up to two pieces ahead of the consumer: decompression overlaps the copy into the
// process. The blob must not be Read by anyone else meanwhile (pread of its fd is fine).
class ReadAhead {
 public:
  struct Piece {
    uint64_t va, blob_off, len;
  };
  ReadAhead(images::BlobReader* blob, std::vector<Piece> pieces, uint64_t max_len);
  ~ReadAhead();  // stops the thread and joins it
  ReadAhead(const ReadAhead&) = delete;
  ReadAhead& operator=(const ReadAhead&) = delete;
  // The next piece and its data (valid until the next call); false at the end.
  Result<bool> Next(Piece* piece, const char** data);

 private:
  void Run();
  images::BlobReader* blob_;
  std::vector<Piece> pieces_;
  std::unique_ptr<char[]> buf_[2];
  std::mutex mu_;
  std::condition_variable cv_;
  size_t produced_ = 0, consumed_ = 0;  // pieces read; pieces released by the consumer
  bool next_called_ = false, stop_ = false, failed_ = false;
  Error error_{ErrorKind::kGeneric, 0, ""};
  std::thread thread_;
};

}  // namespace godwit::restore
