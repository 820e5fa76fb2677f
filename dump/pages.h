// Copying pages out of a frozen (or, for pre-copy rounds, running) process into a blob.
//
// Which pages: a PageSource yields runs of pages per VMA. PresentPages reads /proc/PID/pagemap
// (present, not the zero page, for private file mappings only the COWed ones); pre-copy rounds
// take the written ones from a DirtyTracker (dump/dirty.h).
//
// How: PageWriter batches runs (up to 32 MiB, in address order). With a Remote into the stopped
// process and a raw page file, the process writes its own pages: an injected pwritev (up to 1024
// iovecs per call, straight from its memory into the page file: one copy, no buffer, no page
// pinning) into file space handed out by BlobWriter::AppendExternal, while a writer thread
// reads the previous batch back to checksum it (CommitExternal); unreadable ranges of a batch
// are read (/proc/PID/mem) and written by the coordinator between those calls. Otherwise
// (compressed blobs, a running process, a seccomp-filtered one, one with a file size limit, a
// file it cannot open, no Remote given: DumpTuning::target_write off) batches are read with
// process_vm_readv (up to 1024 iovecs per call; pread from /proc/PID/mem or a shmem fd for
// unreadable VMAs) into buffers, and the writer thread appends the previous buffer to the
// BlobWriter (compressing if the blob does): reading and writing overlap on two cores.
#pragma once

#include <sys/types.h>

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "common/proc.h"
#include "common/remote.h"
#include "common/result.h"
#include "common/unique_fd.h"
#include "images/image.h"
#include "proto/mm.pb.h"

namespace godwit::dump {

struct PageRange {
  uint64_t addr;
  uint64_t npages;
};

struct PageCounts {
  uint64_t present = 0, zero = 0, file = 0;
};

class PageSource {
 public:
  virtual ~PageSource() = default;
  // Appends the runs of [start, end) worth storing to out.
  virtual Result<void> Collect(uint64_t start, uint64_t end, bool private_file,
                               std::vector<PageRange>* out, PageCounts* counts) = 0;
};

// All present pages (pagemap), skipping the zero page and unwritten private file pages.
class PresentPages : public PageSource {
 public:
  static Result<std::unique_ptr<PresentPages>> Open(pid_t pid, uint64_t zero_pfn);
  Result<void> Collect(uint64_t start, uint64_t end, bool private_file, std::vector<PageRange>* out,
                       PageCounts* counts) override;

 private:
  UniqueFd pagemap_;
  uint64_t zero_pfn_ = 0;
  std::vector<uint64_t> buf_;
};

// maps with [a, b) (the remote scratch area) carved out.
std::vector<proc::MapsEntry> WithoutRange(const std::vector<proc::MapsEntry>& maps, uint64_t a,
                                          uint64_t b);
// Concatenates and sorts non-overlapping range lists.
std::vector<PageRange> MergeRanges(std::vector<PageRange> a, const std::vector<PageRange>& b);

// True for a /proc/PID/pagemap entry that holds only a userfaultfd write-protect marker: no page
// at all (the kernel leaves one where a protected page of a file mapping was zapped, and on
// every page left untouched in a file mapping when tracking starts), though the entry says
// "swapped". Its swap type (the low 5 bits, shown to CAP_SYS_ADMIN only) is SWP_PTE_MARKER, 31;
// real swap types are below it. Without the capability the type reads 0: not recognized.
inline bool IsPteMarker(uint64_t pagemap_entry) {
  return (pagemap_entry & (1ULL << 62)) && !(pagemap_entry & (1ULL << 63)) &&
         (pagemap_entry & 31) == 31;
}

// The pfn of the kernel's zero page (a read fault on fresh anonymous memory maps it).
Result<uint64_t> ZeroPagePfn();

// Ranges released by a PageWriter that has no Remote (one running on another thread than the
// coordinator, which alone injects): queued here for the coordinator's writer to release.
class ReleaseQueue {
 public:
  void Push(const std::vector<std::pair<uint64_t, uint64_t>>& ranges);
  std::vector<std::pair<uint64_t, uint64_t>> Take();

 private:
  std::mutex mu_;
  std::vector<std::pair<uint64_t, uint64_t>> ranges_;
};

// madvise(MADV_DONTNEED) of [start, end) ranges in r's process, skipping r's own area; a range
// the kernel refuses stays (see PageWriter::SetRelease).
void ReleaseRanges(remote::Remote* r, const std::vector<std::pair<uint64_t, uint64_t>>& ranges);

class PageWriter {
 public:
  // pid: read with process_vm_readv from it; fd >= 0: pread from that fd (shmem objects,
  // /proc/PID/mem) for ranges added with use_fd.
  // total_bytes: what will be added (sizes the buffers).
  // target: a Remote into pid (stopped): its readable pages are written by pid itself when the
  // blob allows (see the top of this file).
  PageWriter(images::BlobWriter* blob, pid_t pid, int fd, uint64_t total_bytes,
             remote::Remote* target = nullptr);
  ~PageWriter();
  PageWriter(const PageWriter&) = delete;
  PageWriter& operator=(const PageWriter&) = delete;

  // src: address in pid (or offset in fd); key: the address recorded in the run.
  Result<void> Add(uint64_t src, uint64_t key, uint64_t npages, bool use_fd);
  // Flushes and waits for the writer; runs() is complete afterwards.
  Result<void> Finish();
  const std::vector<img::PageRun>& runs() const { return runs_; }
  uint64_t pages() const { return pages_; }
  // Pages the process wrote itself (the rest went through the coordinator).
  uint64_t target_pages() const { return target_pages_; }
  // The process runs (a pre-copy round): its memory may change under the reads. A range that
  // process_vm_readv cannot read (made PROT_NONE meanwhile) is read through fd (its
  // /proc/PID/mem, which reads any mapped page); a page that cannot be read at all (unmapped
  // meanwhile, or the process died) is stored as zeros and counted in vanished(). Harmless: an
  // unmapped range is never tracked again, so whatever is mapped there later is copied whole.
  void SetRunning() { running_ = true; }
  uint64_t vanished() const { return vanished_; }
  // Kill mode: the process never runs again. Once a batch's pages are copied out of it (into the
  // page file, or a buffer), their ranges are released in it (an injected madvise(MADV_DONTNEED)
  // through the Remote, which must be given; its own area is never touched): the page file's
  // new pages come from the memory just freed, and the dump never needs the tree's size again in
  // free memory. Gaps between a batch's runs (pages not dumped) are released too. A range the
  // kernel refuses (mlocked, hugetlb not aligned) stays. r: a Remote into pid (stopped).
  // Batches are smaller then (down to 8 MiB, a 32nd of the pages): a batch is what the dump
  // holds at once beyond the tree. Before the first Add.
  // queue: with r, the writer also releases what other writers queued there (after each of its
  // batches); without r (a writer on another thread), its ranges are queued there instead.
  // hull false: only the runs themselves, not the gaps between them (another writer takes
  // pages from the same process in those gaps).
  void SetRelease(remote::Remote* r, ReleaseQueue* queue = nullptr, bool hull = true);
  uint64_t released_bytes() const { return released_; }

 private:
  struct Entry {
    uint64_t src, key, len, buf_off;
    bool use_fd;
  };
  struct Batch {
    char* buf;
    size_t len;
    std::vector<Entry> entries;
    bool external = false;  // written into file space of AppendExternal: commit, not Append
    images::BlobWriter::External ext;
  };
  Result<void> Flush();
  // Opens the page file in the target; false if this process cannot write its own pages.
  Result<bool> SetUpTarget();
  Result<void> TargetWrite(const Batch& b);
  Result<void> ReadIntoBuffer();
  void ReadVanishing(char* dst, uint64_t src, uint64_t len);
  void CloseTargetFd();
  void WriterLoop();
  // Appends (or commits) a batch and records its runs; returns its buffer to free_.
  void Write(Batch& b);
  // SetRelease: frees the source ranges of entries in the process.
  void Release(const std::vector<Entry>& entries);

  images::BlobWriter* blob_;
  pid_t pid_;
  int fd_;
  remote::Remote* target_;
  long target_fd_ = -1;  // the page file, open in the target
  bool target_tried_ = false;
  size_t buf_size_;
  uint64_t total_bytes_;
  std::vector<std::unique_ptr<char[]>> bufs_;
  char* cur_ = nullptr;
  size_t cur_len_ = 0;
  std::vector<Entry> cur_entries_;
  bool external_ = true;  // until the blob cannot take an external append (then never again)
  std::vector<img::PageRun> runs_;
  uint64_t pages_ = 0, target_pages_ = 0;
  bool running_ = false;
  uint64_t vanished_ = 0;
  remote::Remote* release_ = nullptr;
  ReleaseQueue* release_queue_ = nullptr;
  bool release_hull_ = true;
  uint64_t released_ = 0;

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Batch> queue_;
  std::deque<char*> free_;
  bool done_ = false;
  bool failed_ = false;
  bool inline_ = false;  // batches written on the caller's thread: no writer thread

  Error error_{ErrorKind::kGeneric, 0, ""};
  std::thread writer_;
};

}  // namespace godwit::dump
