// Page file chunks checked ahead, out of a restore's way.
//
// A migration's destination has each pre-copy round's page file long before the final state
// arrives. Its waiting restore (`restore --wait-fd`) hands each round's page file to a helper
// process that checks the file's chunks (their crc32c, chunk by chunk in file order) on idle CPU
// only (SCHED_IDLE: it never slows the stream) and reports each good one. A BlobReader opened on
// that file later, while it is still the same file (device, inode, size, mtime and ctime
// unchanged), does not check those chunks again: neither the restore (inside the blackout, the
// pages outside the lazy pager's ranges are filled from the rounds, each piece's 4 MiB chunk
// checked first: ~1-2 ms a process) nor its lazy pager. Chunks the helper did not reach are
// checked as before; a file's chunks are reported only while it is unchanged.
#pragma once

#include <sys/stat.h>
#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <set>
#include <string>

#include "common/result.h"
#include "common/unique_fd.h"

namespace godwit::images {

class Prechecker {
 public:
  // Forks the helper (killed with its parent: PR_SET_PDEATHSIG). The caller must be
  // single-threaded.
  // paced: the helper naps briefly and often (common/priority.h Pacer); false for A/B runs.
  static Result<std::unique_ptr<Prechecker>> Start(bool paced = true);
  ~Prechecker();
  Prechecker(const Prechecker&) = delete;
  Prechecker& operator=(const Prechecker&) = delete;
  // Queues a file, once per path (the helper takes them in order).
  void Add(const std::string& path);
  // Takes the results the helper has written (without waiting for the rest, unless wait_all:
  // then until it has done every file queued), ends it and registers them (NotePrechecked).
  // Returns how many chunks were registered. The helper is reaped by the destructor (its exit
  // is not waited for here).
  size_t Finish(bool wait_all = false);
  pid_t pid() const { return pid_; }

 private:
  Prechecker() = default;
  pid_t pid_ = -1;
  UniqueFd to_, from_;
  std::set<std::string> queued_;
  bool finished_ = false;
};

// The registry BlobReader::OpenFile consults. path: as the file is opened; st: its identity when
// the chunk was checked; file_off: where the chunk's stored bytes start.
void NotePrechecked(const std::string& path, const struct stat& st, uint64_t file_off);
// The chunks (file offsets) of the file open at fd (as path) checked ahead while it was this
// same file; empty if none or if the file changed since.
std::set<uint64_t> PrecheckedChunks(const std::string& path, int fd);
void ForgetPrechecked();   // tests
size_t PrecheckHits();     // chunks of files a BlobReader opened unchanged (the report)

}  // namespace godwit::images
