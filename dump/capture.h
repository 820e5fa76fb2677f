// Kill mode: the frozen tree's pages captured by reference, copied into the image after.
//
// A tree dumped without --leave-running never runs again, so the freeze only has to last until
// its pages are *held*, not until they are copied. PageCapture has the stopped process vmsplice
// its own pages (an injected call, no copy: the pipe takes a reference on each page, as CRIU's
// parasite does) into a pipe of its own, whose buffers the coordinator moves (splice between
// pipes, no copy either) into holder pipes it keeps, one per pipe's worth. Once every process of
// the tree is captured the dump's frozen part is over (DumpStats::frozen_ms ends there): the
// memory is then released in each process batch by batch (an injected MADV_DONTNEED; the pages
// live on in the holders), and each released batch is drained by one of two threads (read from
// its holders into a buffer, appended to the page blob: checksummed, compressed if the blob is)
// into its own page file, so the image's new pages come from the pages the drain just freed and
// the dump's peak extra memory stays about two batches per thread.
//
// Until Release, nothing in the process is changed (its pipe is closed again by EndCapture): a
// failure leaves it resumable, and destroying the PageCapture drops every reference.
// Unreadable ranges (PROT_NONE, a range vmsplice refuses) are read through /proc/PID/mem at
// capture time (a copy while frozen; rare and small).
#pragma once

#include <sys/types.h>

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "common/remote.h"
#include "common/result.h"
#include "common/unique_fd.h"
#include "images/image.h"
#include "proto/mm.pb.h"

namespace godwit::dump {

class PageCapture {
 public:
  // Bytes one pipe holds here: 16 MiB where F_SETPIPE_SZ may exceed fs.pipe-max-size
  // (CAP_SYS_RESOURCE), else fs.pipe-max-size (1 MiB by default: 256 pages). Probed once.
  static size_t PipeBytes();
  // Holder pipes (one fd each, kept until drained) capturing `bytes` takes.
  static uint64_t FdsFor(uint64_t bytes);

  // r: a Remote into the (stopped) process; mem_fd: its /proc/PID/mem. blobs: 1 or 2 page blobs,
  // each drained by its own thread: the first gets the first half of the total bytes that will
  // be added, the second the rest (each in address order).
  static Result<std::unique_ptr<PageCapture>> Start(remote::Remote* r, int mem_fd,
                                                    std::vector<images::BlobWriter*> blobs,
                                                    uint64_t total);
  ~PageCapture();
  PageCapture(const PageCapture&) = delete;
  PageCapture& operator=(const PageCapture&) = delete;

  // Captures [addr, addr + npages pages), after everything added before (address order).
  // use_fd: unreadable, read through mem_fd now.
  Result<void> Add(uint64_t addr, uint64_t npages, bool use_fd);
  // After the last Add: closes the process's pipe.
  Result<void> EndCapture();
  // Kill mode, after every process is captured: releases the captured ranges in the process
  // (injected MADV_DONTNEED of each batch's hull, around the Remote's own area; a range the
  // kernel refuses stays), letting each batch's drain start once it is released.
  void Release();
  // Waits for the drains; the runs per blob are complete afterwards.
  Result<void> Finish();
  const std::vector<img::PageRun>& runs(size_t blob) const { return drains_[blob]->runs; }
  uint64_t pages() const { return pages_; }
  uint64_t captured_bytes() const { return captured_; }
  uint64_t released_bytes() const { return released_; }

 private:
  // A batch's data in order: the contents of holder pipes, or bytes read at capture time.
  struct Part {
    UniqueFd holder;  // read end; -1 for bytes
    size_t len = 0;
    std::string bytes;
  };
  struct Entry {
    uint64_t src, len;
  };
  struct Batch {
    std::vector<Entry> entries;
    std::vector<Part> parts;
    uint64_t len = 0;
    bool released = false;
  };
  struct Drain {
    images::BlobWriter* blob;
    std::deque<std::unique_ptr<Batch>> queue;
    std::vector<img::PageRun> runs;
    std::thread thread;
  };

  PageCapture() = default;
  // Captures the pending pieces with one injected vmsplice, then moves them into holders.
  Result<void> Splice();
  Result<void> ReadUnreadable(uint64_t src, uint64_t len);
  void CloseBatch();
  void DrainLoop(Drain* d);
  Result<void> DrainOne(Drain* d, Batch& b, std::vector<char>* buf);
  void Stop();

  remote::Remote* r_ = nullptr;
  int mem_fd_ = -1;
  size_t pipe_bytes_ = 0;
  long target_fd_ = -1;  // the write end of the process's pipe, in the process
  UniqueFd pipe_rd_;     // its read end, ours
  std::vector<Entry> pending_;  // readable pieces not spliced yet
  uint64_t pending_len_ = 0;
  std::unique_ptr<Batch> cur_;
  // Each drain's batches in address order (owned by the drains' queues), until released.
  std::vector<Batch*> order_[2];
  uint64_t total_ = 0, batched_ = 0;
  uint64_t pages_ = 0, captured_ = 0, released_ = 0;

  std::vector<std::unique_ptr<Drain>> drains_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  bool failed_ = false;
  int busy_ = 0;  // batches being drained
  Error error_{ErrorKind::kGeneric, 0, ""};
};

}  // namespace godwit::dump
