// Image files across the migration stream.
//
// Source: the dump writes into a local staging directory through a ForwardingSink, which sends
// each image file to the peer the moment the dump closes it, and a pre-copy round's page blob
// in pieces while it is written (each piece freed on the source once sent), so a round crosses
// while it is dumped; the final dump's files cross while the rest of the final state is still
// being collected. The inventory goes last: the destination's set is complete exactly when the
// source's is.
//
// Destination: a FileReceiver writes every FileData frame at its offset into its own staging
// directory (names checked: one path component, no "..") after checking the payload's crc32c.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>

#include "common/result.h"
#include "common/unique_fd.h"
#include "images/image.h"
#include "migrate/wire.h"

namespace godwit::migrate {

// Sends whole files of one local directory as FileData frames.
class FileSender {
 public:
  // adaptive: zstd is tried on a 64 KiB sample of each 4 MiB region of a file first, and on the
  // region's chunks only when the sample shrank by 1/16 (random or compressed memory costs 1.5%
  // of a try, not a whole one).
  FileSender(Channel* ch, mig::Dir dir, std::string local_dir, bool zstd, bool adaptive = false)
      : ch_(ch), dir_(dir), local_(std::move(local_dir)), zstd_(zstd), adaptive_(adaptive) {}
  // Sends local_dir/name (chunks of up to 256 KiB, zstd when enabled and it shrinks the chunk).
  Result<void> Send(const std::string& name);
  // Sends [from, to) of local_dir/name, a file still being written (the peer keeps it open);
  // last: from `from` to its end, which closes it at the peer. punch: the range sent is freed
  // here (FALLOC_FL_PUNCH_HOLE): a round's page file then never holds more than what is on
  // its way, instead of the container's whole memory on the source's staging.
  Result<void> SendRange(const std::string& name, uint64_t from, uint64_t to, bool last,
                         bool punch);
  uint64_t file_bytes() const { return file_bytes_; }  // bytes of the files sent
  uint64_t wire_bytes() const { return wire_bytes_; }  // payload bytes sent (after zstd)
  double send_ms() const { return send_ms_; }           // time spent sending
  int files() const { return files_; }

 private:
  struct Chunk {
    uint64_t off = 0;
    size_t len = 0;  // logical
    bool zstd = false;
    uint32_t crc = 0;
    std::unique_ptr<char[]> raw, z;  // kChunk and its zstd bound, reused chunk after chunk
    bool region_try = true;          // adaptive: zstd's sample of this 4 MiB region shrank
    const char* payload = nullptr;   // what goes on the wire: raw or z
    size_t plen = 0;
  };
  // Reads chunk [off, off + len) of fd (path for errors) and prepares its payload.
  Result<void> Prepare(int fd, const std::string& path, Chunk* c);
  std::unique_ptr<Chunk> chunk_;  // its buffers stay warm from file to file

  Channel* ch_;
  mig::Dir dir_;
  std::string local_;
  bool zstd_;
  bool adaptive_;
  uint64_t file_bytes_ = 0;
  uint64_t wire_bytes_ = 0;
  double send_ms_ = 0;
  int files_ = 0;
};

// A sink that writes through `inner` (a directory sink on local_dir) and calls on_closed(name)
// after each output is closed and after Finish (with "inventory.img"). A failing callback fails
// that Close/Finish (and so the dump). It cannot compress after Finish: the files are gone.
// Files `streams` names (a pre-copy round's page blobs) also go in pieces while written:
// on_piece(name, from, to, false) each time kStreamPiece more bytes are in the file, and at
// Close on_piece(name, from, 0, true) for the rest instead of on_closed. Until the first
// external write (Output::ExtendExternal): what follows it goes at Close.
using PieceFn = std::function<Result<void>(const std::string& name, uint64_t from, uint64_t to,
                                           bool last)>;
inline constexpr uint64_t kStreamPiece = 8 << 20;
std::unique_ptr<images::Sink> ForwardingSink(
    std::unique_ptr<images::Sink> inner, std::function<Result<void>(const std::string&)> on_closed,
    PieceFn on_piece = {}, std::function<bool(const std::string&)> streams = {});

// Writes received files under a staging directory (dir/tree, dir/container).
class FileReceiver {
 public:
  explicit FileReceiver(std::string staging);
  ~FileReceiver();
  Result<void> Apply(const mig::FileData& f, const std::string& payload);
  // The same on a writer thread: the caller goes on receiving (TLS, checksums) while the
  // previous pieces are written (creating a page costs as much as receiving it here), up to a
  // few pieces ahead. An error of an earlier piece is returned by a later call or by Drain.
  Result<void> ApplyAsync(const mig::FileData& f, std::string payload);
  // The same, taking *payload's bytes and leaving in *payload a buffer the writer is done with
  // (its size kept: Channel::Recv into it neither allocates nor zero-fills: a fresh
  // buffer per piece cost its page faults and a memset, ~5% of the stream's profile).
  Result<void> ApplyAsync(const mig::FileData& f, std::string* payload);
  // Waits until every piece given to ApplyAsync is written; the first error if any.
  Result<void> Drain();
  // Files still open (a FileData without `last` seen): the set is incomplete.
  size_t open_files() const { return open_.size(); }
  uint64_t bytes() const { return bytes_; }
  const std::string& staging() const { return staging_; }
  // The writer thread of ApplyAsync (0 before the first call or before it started).
  pid_t writer_tid() const;

 private:
  struct Async;
  std::unique_ptr<Async> async_;
  std::string staging_;
  std::map<std::string, UniqueFd> open_;
  uint64_t bytes_ = 0;
  std::string zbuf_;
};

const char* DirName(mig::Dir d);

}  // namespace godwit::migrate
