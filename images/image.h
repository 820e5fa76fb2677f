// The image layer: where checkpoint state goes and how it is read back.
//
// An image directory holds one file per object kind ("pstree.img", "core-42.img", "files.img",
// "pages-42.img", ...) and, written last, "inventory.img". A directory without a valid inventory
// is not a complete checkpoint: readers refuse it. Every object image starts with a header
// (magic "GODWITIM", format version, the protobuf type name of its records) followed by records,
// each a u32 length and a protobuf message (layout: images/format.h, docs/images.md). Bulk data (pages, pipe/socket queues, file contents) goes to raw files
// in chunks, each chunk zstd-compressed or raw and checksummed (crc32c), never inside protobuf.
//
// Writers go through a Sink, so the same dump path writes to a directory today and to a peer
// socket for live migration later. Readers go through an ImageSet, which verifies the inventory
// (format version, every file's size and checksum) before anything is decoded.
//
// Every reader bounds-checks every length and reports file and offset on error (kBadImage).
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"
#include "common/unique_fd.h"
#include "proto/inventory.pb.h"

namespace google::protobuf {
class Message;
class MessageLite;
}  // namespace google::protobuf

namespace godwit::images {

inline constexpr uint32_t kFormatVersion = 1;

enum class Compression { kNone, kZstd };

// One output stream of a sink (an image file being written).
class Output {
 public:
  virtual ~Output() = default;
  virtual Result<void> Write(const void* data, size_t len) = 0;
  // Same as Write, for bytes whose crc32c the caller already has (a blob chunk): the output
  // folds it into the file checksum without reading the bytes again. Large writes go straight
  // from the caller's buffer to the file (no copy into an output buffer).
  virtual Result<void> WriteChecked(const void* data, size_t len, uint32_t crc32c) {
    return Write(data, len);
  }
  // Flushes and seals the file; its size and checksum go into the inventory.
  virtual Result<void> Close() = 0;
  // Makes room for about bytes more of output ahead of time. On tmpfs, allocating pages costs
  // most of a write (~3 us per 4 KiB page on this VM, see docs/engine.md), so a dumper that
  // reserves before it freezes the tree shortens the frozen time. What is not used is released
  // at Close. A no-op where it does not apply (a socket).
  virtual Result<void> Reserve(uint64_t bytes) { return Ok(); }
  // External writes (a file output): the next len bytes of the file are written by someone else
  // through fd() (or a reopened copy of it: the dumped process itself, with an injected
  // pwritev) at the returned file offset. They count as written now; their checksums must be
  // given with AddChecksum, in file order, before Close (possibly from another thread, while
  // this thread extends further). -1 when the output cannot (no file): use Write.
  virtual Result<int64_t> ExtendExternal(size_t len) { return static_cast<int64_t>(-1); }
  // The file's fd for external writes and reading them back; -1 without one.
  virtual int fd() const { return -1; }
  // Overwrites bytes already extended (chunk headers of external writes, whose checksums are
  // known once the data is written). The bytes' checksum is still given with AddChecksum.
  virtual Result<void> WriteAt(uint64_t off, const void* data, size_t len) {
    return MakeError(ErrorKind::kGeneric, 0, "output: WriteAt not supported");
  }
  virtual void AddChecksum(uint32_t crc32c, size_t len) {}
  // Bytes that can still be written (the file system's free space); -1 when unknown (a stream).
  virtual int64_t Available() const { return -1; }
};

// Where a dump writes. Thread-compatible: one writer per Output, Create/Finish from one thread.
class Sink {
 public:
  virtual ~Sink() = default;
  virtual Result<std::unique_ptr<Output>> Create(const std::string& name) = 0;
  // Writes the inventory (adding the list of files written with sizes and checksums): from now
  // on the image set is complete. Nothing may be created after Finish.
  virtual Result<void> Finish(img::Inventory inventory) = 0;
  // After Finish: re-encodes the finished raw blobs `names` with zstd (level, threads; each
  // into a new file renamed over the old one, every chunk's checksum verified on the way) and
  // writes the inventory again with their new sizes and checksums: a dump compresses after the
  // tree runs again (or is gone) instead of while it is frozen. On error, the raw blobs and the
  // old inventory stay: still a complete image set. *before/*after: their total sizes.
  virtual Result<void> CompressFinished(const std::vector<std::string>& names, int level,
                                        int threads, uint64_t* before, uint64_t* after) {
    return MakeError(ErrorKind::kUnsupported, 0, "this sink cannot compress after Finish");
  }
  // Whether CompressFinished works here (a directory: its files can be rewritten). A dump that
  // wants zstd into a sink that cannot (a stream to a peer) compresses while writing instead.
  virtual bool CanCompressFinished() const { return false; }
  // Drops everything written (a failed dump leaves no image that claims to be complete). A
  // directory sink destroyed without Finish aborts.
  virtual void Abort() = 0;
};

// A directory sink. Creates dir if needed; refuses a dir that already holds an inventory unless
// overwrite is set (then the old images are removed first: the inventory, the files it lists and
// any file starting with an image magic; other files stay). Files of an unfinished earlier dump
// (no inventory) are removed in both cases.
struct DirSinkOptions {
  bool overwrite = true;
  // Output::Reserve on tmpfs writes the reserved pages once (zeros), so they exist before a frozen
  // tree's pages are copied into them. false: only fallocate (for measuring the difference; the
  // CLI sets it from GODWIT_NO_TOUCH).
  bool touch_reserved = true;
};
Result<std::unique_ptr<Sink>> OpenDirSink(const std::string& dir, const DirSinkOptions& opts);
Result<std::unique_ptr<Sink>> OpenDirSink(const std::string& dir, bool overwrite = true);

// An object image being written: header, then length-delimited messages.
class ImageWriter {
 public:
  static Result<ImageWriter> Create(Sink& sink, const std::string& name);
  Result<void> Write(const google::protobuf::MessageLite& msg);
  Result<void> Close();
  ImageWriter(ImageWriter&&) = default;
  ImageWriter& operator=(ImageWriter&&) = default;
  ~ImageWriter();

 private:
  ImageWriter() = default;
  std::unique_ptr<Output> out_;
  std::string name_;
  std::string buf_;
  std::string type_;  // the records' type, fixed by the first Write (header written then)
  bool header_ = false;
};

// Writes one message as a whole image.
Result<void> WriteImage(Sink& sink, const std::string& name,
                        const google::protobuf::MessageLite& msg);

// Bulk data file, chunked (up to 4 MiB per chunk; a zstd frame or raw bytes, with crc32c).
// Append returns the logical offset of the data in the stream, which the caller records in its
// metadata proto; the reader gets it back with BlobReader::Read(offset, len). Appends of any
// size may be mixed: small ones are gathered into whole chunks, large raw ones go from the
// caller's buffer to the output without a copy. The data is consumed when Append returns.
class BlobWriter {
 public:
  static Result<BlobWriter> Create(Sink& sink, const std::string& name, Compression c,
                                   int zstd_level = 3);
  // The same on an output the caller created (Sink::CompressFinished).
  static Result<BlobWriter> ForOutput(std::unique_ptr<Output> out, const std::string& name,
                                      Compression c, int zstd_level);
  // Appends the whole contents of a raw blob file (fd, named what), checking its header, the
  // chunks' order and every chunk's checksum.
  Result<void> AppendRawBlobFile(int fd, const std::string& what);
  // Compresses on n threads (the caller and n - 1 workers); 1, the default, compresses in the
  // caller. The file is the same whatever n is. No effect on raw blobs.
  Result<void> SetThreads(int n);
  Result<uint64_t> Append(const void* data, size_t len);
  // Reserves output space for logical_bytes more of raw data (chunk headers included); see
  // Output::Reserve. For zstd blobs, pass an estimate; the excess is released at Close.
  Result<void> Reserve(uint64_t logical_bytes);
  // External appends (raw blobs of a file output): the caller has the chunks' data written
  // into the file at the given offsets by someone else (the dumped process itself: one copy,
  // from its memory into the page file), then commits the appends in order, possibly from
  // another thread. CommitExternal reads the data back to checksum it and writes the chunk
  // headers. An Append must not run concurrently with AppendExternal.
  struct External {
    uint64_t logical_off = 0;
    struct Chunk {
      uint64_t header_off;  // file offset of the chunk header; its data follows it
      uint32_t len;
      uint64_t logical_off;
    };
    std::vector<Chunk> chunks;
  };
  // false (nothing done) when not possible: compressed, gathered data pending, or an output
  // without a file; use Append.
  Result<bool> AppendExternal(size_t len, External* out);
  Result<void> CommitExternal(const External& ext);
  // The same for data whose chunk checksums the caller computed as it wrote them (crcs: one per
  // chunk of ext, Crc32c of its data): nothing is read back.
  Result<void> CommitExternal(const External& ext, const std::vector<uint32_t>& crcs);
  // The file for external writes (-1 if none).
  int fd() const { return out_ ? out_->fd() : -1; }
  // Output::Available: -1 when unknown.
  int64_t available() const { return out_ ? out_->Available() : -1; }
  bool compressed() const { return comp_ != Compression::kNone; }
  // Writes what is gathered and closes the output.
  Result<void> Close();
  uint64_t logical_size() const { return logical_; }
  // Bytes written to the output so far (headers included; gathered data counts once written).
  uint64_t stored_size() const { return stored_; }
  BlobWriter(BlobWriter&&) = default;
  BlobWriter& operator=(BlobWriter&&) = default;
  ~BlobWriter();

 private:
  BlobWriter() = default;
  struct Piece {
    const char* data;
    uint32_t len;
  };
  Result<void> PutChunk(uint32_t kind, const void* stored, uint32_t stored_len,
                        uint32_t logical_len);
  Result<void> Emit(const std::vector<Piece>& pieces);
  Result<void> CompressOne(void* cctx, const Piece& p, std::vector<char>* out, size_t* zlen);

  std::unique_ptr<Output> out_;
  std::string name_;
  Compression comp_ = Compression::kNone;
  int level_ = 3;
  uint64_t logical_ = 0;  // bytes appended
  uint64_t emitted_ = 0;  // bytes written as chunks (logical_ minus what is gathered)
  uint64_t stored_ = 0;
  std::vector<char> scratch_;  // compressed output of the calling thread
  std::vector<char> gather_;   // small appends, until a chunk is full
  std::vector<char> readback_;  // CommitExternal's buffer
  struct CctxFree {
    void operator()(void* p) const;
  };
  std::unique_ptr<void, CctxFree> cctx_;  // ZSTD_CCtx, reused for every chunk
  struct Pool;
  struct PoolFree {
    void operator()(Pool* p) const;
  };
  std::unique_ptr<Pool, PoolFree> pool_;  // worker threads for SetThreads(n > 1)
};

class ImageSet;

// Reads records of one object image.
class ImageReader {
 public:
  // Next record into msg; false at a clean end. A truncated or corrupt record is an error naming
  // the file and the offset.
  // A record whose message type differs from the image's type name is an error.
  Result<bool> Next(google::protobuf::Message* msg);
  // Next record's bytes (valid until the reader is destroyed); false at a clean end. For
  // generic decoding (inspect) through type_name().
  Result<bool> NextRaw(std::string_view* record);
  const std::string& name() const { return name_; }
  // The protobuf full name of the records ("godwit.img.Inventory"); empty if no records.
  const std::string& type_name() const { return type_; }
  // The file offset of the next record.
  size_t offset() const { return off_; }

  // Parses the header of an image held in memory (the fuzz target, inspect, tests). name is
  // only used in error messages.
  static Result<ImageReader> FromBuffer(std::string name, std::string data);

 private:
  friend class ImageSet;
  std::string name_;
  std::string data_;  // whole file (images are small; pages are not read through here)
  size_t off_ = 0;
  std::string type_;
};

// Random access to a blob file written by BlobWriter.
class BlobReader {
 public:
  // Reads logical [offset, offset+len) into dst, verifying chunk checksums (unless the blob comes
  // from a verified set, whose whole-file checksums cover them).
  Result<void> Read(uint64_t offset, void* dst, size_t len);
  // The same through a small buffer: logical [offset, offset+len) read into buf in pieces of at
  // most piece bytes, each handed to fn(logical offset, data, n) while it is still in the cache
  // (one pass over memory instead of three for a big read: into a big buffer, checksummed, copied
  // out). A raw chunk's checksum is known only after its last piece: fn may have been given
  // pieces of a chunk that then fails, so an error means everything fn received is suspect.
  // Compressed chunks, and raw ones only partly in the range, are read whole first (Read).
  Result<void> ReadPieces(uint64_t offset, uint64_t len, char* buf, size_t piece,
                          const std::function<Result<void>(uint64_t, const char*, size_t)>& fn);
  uint64_t logical_size() const;
  // For raw (uncompressed) blobs: the file offset where logical offset lies contiguously for len
  // bytes, so a restorer may preadv() straight into place; an error if compressed or split.
  Result<uint64_t> RawFileOffset(uint64_t offset, size_t len) const;
  // A logical range of a raw blob as file extents (one per chunk it touches), for a restorer
  // that reads straight into place; an error if any part is compressed.
  struct Extent {
    uint64_t file_off;
    uint64_t len;
  };
  Result<std::vector<Extent>> RawExtents(uint64_t offset, uint64_t len) const;
  int fd() const { return fd_.get(); }
  const std::string& name() const { return name_; }

  // Marks of the chunks found intact, shared by the readers of one blob (a lazy pager's threads):
  // a chunk one reader checked is not checked again by the others. A reader whose caller frees
  // the file's bytes it has consumed (FALLOC_FL_PUNCH_HOLE) needs this: a chunk's other part,
  // read later, must not be checked whole against its checksum (the freed part reads as zeros).
  // Sized by MakeChunkMarks; one blob's marks only.
  using ChunkMarks = std::vector<std::atomic<bool>>;
  std::shared_ptr<ChunkMarks> MakeChunkMarks() const {
    return std::make_shared<ChunkMarks>(chunks_.size());
  }
  void ShareChunkMarks(std::shared_ptr<ChunkMarks> marks) { marks_ = std::move(marks); }
  // Whether every chunk holding logical [offset, offset + len) is intact: trusted (a verified
  // set, checked ahead) or marked (ShareChunkMarks).
  bool Checked(uint64_t offset, uint64_t len) const;

  // Checks every chunk's checksum (reads the whole file); the error names the first bad chunk's
  // offset. For locating damage (inspect); Read checks the chunks it reads anyway.
  Result<void> VerifyChunks() const;
  // Checks the checksums of the chunks that hold logical [offset, offset + len): for a reader
  // that read those bytes some other way (straight from the file into place) from a blob left to
  // its chunk checksums. Thread-safe (no state of the reader is used but its index and fd).
  Result<void> VerifyRange(uint64_t offset, uint64_t len) const;
  // Checks the chunks in file order and calls ok(file offset of the chunk's stored bytes) after
  // each good one; stops when ok returns false, or with the error of a bad chunk
  // (images/precheck.h's helper).
  Result<void> CheckEachChunk(const std::function<bool(uint64_t file_off)>& ok) const;

  struct Stats {
    uint64_t chunks = 0, zstd_chunks = 0, logical_bytes = 0, stored_bytes = 0, file_bytes = 0;
  };
  Stats stats() const;

  // Opens a blob file and builds its chunk index (every chunk header bounds-checked).
  // verified: the whole file's checksum was already checked (ImageSet::Open), so chunk
  // checksums are not checked again on Read.
  static Result<std::unique_ptr<BlobReader>> OpenFile(const std::string& path,
                                                      const std::string& name, bool verified);
  // The same over a blob held in memory (the fuzz target and tests).
  static Result<std::unique_ptr<BlobReader>> FromBuffer(std::string name, std::string data,
                                                        bool verified = false);

  BlobReader() = default;
  ~BlobReader();
  BlobReader(const BlobReader&) = delete;
  BlobReader& operator=(const BlobReader&) = delete;

 private:
  friend class ImageSet;
  struct Chunk {
    uint64_t logical_off, logical_len, file_off, stored_len;
    uint32_t crc;
    bool zstd;
    bool ahead = false;  // checked ahead (images/precheck.h): not again
  };
  bool Trusted(const Chunk& c) const {
    return verified_ || c.ahead || (marks_ && (*marks_)[&c - chunks_.data()].load());
  }
  void Mark(const Chunk& c) {
    if (marks_) (*marks_)[&c - chunks_.data()].store(true);
  }
  Result<void> BuildIndex();
  Result<void> ReadAt(uint64_t file_off, void* dst, size_t len) const;
  Result<void> ReadChunk(size_t i, uint64_t skip, char* dst, size_t len);
  size_t FindChunk(uint64_t offset) const;
  // Reads chunk c's stored bytes (into *buf) and checks them against its checksum.
  Result<void> CheckChunk(const Chunk& c, std::vector<char>* buf) const;
  std::string name_;
  UniqueFd fd_;
  std::string mem_;  // the whole blob when opened FromBuffer
  bool in_mem_ = false;
  bool verified_ = false;
  uint64_t file_size_ = 0;
  std::vector<Chunk> chunks_;
  void* dctx_ = nullptr;       // ZSTD_DCtx, reused
  std::vector<char> scratch_;  // stored bytes of a chunk
  std::vector<char> plain_;    // the last decompressed (or verified raw) chunk
  int64_t plain_chunk_ = -1;   // which chunk plain_ holds
  std::shared_ptr<ChunkMarks> marks_;  // ShareChunkMarks
};

// How an ImageSet checks its files.
struct ReadOptions {
  // Large files' checksums are computed from reads into a buffer that stays in the cache: on
  // this VM faster than mapping them (page-table costs). true: through mappings, for measuring
  // (the CLI sets it from GODWIT_MAPCRC).
  bool map_checksums = false;
  // Blob files (page data) are not checksummed whole when the set is opened: their chunks'
  // checksums are checked as they are read instead (a lazy restore reads them after the tree
  // runs; a whole-file pass first would put every page in the downtime).
  bool chunk_checked_blobs = false;
};

class ImageSet {
 public:
  // Opens dir and verifies the inventory: format version, presence, size and checksum of every
  // listed file. A missing or damaged inventory means an incomplete checkpoint (kBadImage).
  static Result<ImageSet> Open(const std::string& dir, const ReadOptions& opts = {});
  // Opens dir without verifying checksums (for `inspect` on damaged images).
  static Result<ImageSet> OpenUnverified(const std::string& dir);
  // The files in dir now, without an inventory (not written yet) and unverified: what a
  // migration's destination reads of a set while the rest is still coming. Open the whole set
  // again once it is complete (its inventory then verifies what was read).
  static Result<ImageSet> OpenPartial(const std::string& dir);
  // Like Open, but the checksums of large files (64 MiB and more: page blobs) are computed on a
  // background thread while the caller goes on (restoring memory on the other core); the
  // inventory, every file's presence and size and the small files' checksums are checked before
  // it returns. Call WaitVerified() before the point of no return (before the restored tree
  // runs): it returns the first bad file. Blobs read meanwhile are not re-checked per chunk.
  static Result<ImageSet> OpenDeferred(const std::string& dir, const ReadOptions& opts = {});
  // Ok for a set from Open; waits for OpenDeferred's check; an error for OpenUnverified.
  Result<void> WaitVerified() const;

  const img::Inventory& inventory() const { return inventory_; }
  const std::string& dir() const { return dir_; }
  bool Has(const std::string& name) const;
  // Whether a listed file's whole-file checksum was checked (OpenBlob's chunks are then not
  // checked again): false for blobs under ReadOptions::chunk_checked_blobs.
  bool Verified(const std::string& name) const;
  // (Named OpenImage, not Open: C++ cannot overload the static Open(dir) with a member of the
  // same parameter list.)
  Result<ImageReader> OpenImage(const std::string& name) const;
  Result<std::unique_ptr<BlobReader>> OpenBlob(const std::string& name) const;

  // Reads an image that holds exactly one message.
  Result<void> ReadOne(const std::string& name, google::protobuf::Message* msg) const;

  // Every problem with the listed files (missing, wrong size, wrong checksum, bad header), not
  // just the first: for inspect. Empty when the set is intact.
  std::vector<Error> Verify() const;

 private:
  static Result<ImageSet> Load(const std::string& dir);
  static Result<ImageSet> OpenChecked(const std::string& dir, bool defer, const ReadOptions& opts);
  struct Pending;
  std::string dir_;
  ReadOptions opts_;
  img::Inventory inventory_;
  bool verified_ = false;
  std::shared_ptr<Pending> pending_;  // OpenDeferred's background check
  std::vector<std::string> chunk_checked_;  // blobs left to their chunk checksums
};

// What a file in an image directory holds, from its magic.
enum class FileKind { kObject, kBlob, kUnknown };
FileKind ProbeKind(std::string_view head);

// Parses inventory.img's bytes (header, exactly one godwit.img.Inventory record, format
// version). name is used in error messages. ImageSet::Open and the fuzz target use it.
Result<img::Inventory> ParseInventory(const std::string& name, std::string data);

// A file name an image set may hold: no '/', not "." or "..", not empty, at most 255 bytes.
bool ValidImageName(const std::string& name);

// The CPU features this machine offers (from cpuid/xgetbv: "avx", "avx2", "avx512f", "xsave",...).
std::vector<std::string> CpuFeatures();
// The XSAVE feature mask XCR0 (which register states the kernel saves); 0 without OSXSAVE.
uint64_t Xcr0();
// Checks that every feature an inventory needs is present here; names the missing ones.
Result<void> CheckCpuFeatures(const img::Inventory& inv);
// Fills format/godwit/kernel version, CPU features and time.
img::Inventory NewInventory();

}  // namespace godwit::images
