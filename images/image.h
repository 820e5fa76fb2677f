// The image layer: where checkpoint state goes and how it is read back.
//
// An image directory holds one file per object kind ("pstree.img", "core-42.img", "files.img",
// "pages-42.img", ...) and, written last, "inventory.img". A directory without a valid inventory
// is not a complete checkpoint: readers refuse it. Every object image starts with a header
// (magic "GODWITIM", format version, the image's kind tag) followed by records, each a u32 length
// and a protobuf message. Bulk data (pages, pipe/socket queues, file contents) goes to raw files
// in chunks, each chunk zstd-compressed or raw and checksummed (crc32c), never inside protobuf.
//
// Writers go through a Sink, so the same dump path writes to a directory today and to a peer
// socket for live migration later. Readers go through an ImageSet, which verifies the inventory
// (format version, every file's size and checksum) before anything is decoded.
//
// Every reader bounds-checks every length and reports file and offset on error (kBadImage).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
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
  // Flushes and seals the file; its size and checksum go into the inventory.
  virtual Result<void> Close() = 0;
};

// Where a dump writes. Thread-compatible: one writer per Output, Create/Finish from one thread.
class Sink {
 public:
  virtual ~Sink() = default;
  virtual Result<std::unique_ptr<Output>> Create(const std::string& name) = 0;
  // Writes the inventory (adding the list of files written with sizes and checksums): from now
  // on the image set is complete. Nothing may be created after Finish.
  virtual Result<void> Finish(img::Inventory inventory) = 0;
  // Drops everything written (a failed dump leaves no image that claims to be complete).
  virtual void Abort() = 0;
};

// A directory sink. Creates dir if needed; refuses a dir that already holds an inventory unless
// overwrite is set (then the old images are removed first).
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
};

// Writes one message as a whole image.
Result<void> WriteImage(Sink& sink, const std::string& name, const google::protobuf::MessageLite& msg);

// Bulk data file, chunked: each Append becomes one or more chunks (zstd frame or raw bytes, with
// crc32c). Returns the logical offset of the data in the stream, which the caller records in its
// metadata proto; the reader gets it back with BlobReader::Read(offset, len).
class BlobWriter {
 public:
  static Result<BlobWriter> Create(Sink& sink, const std::string& name, Compression c,
                                   int zstd_level = 3);
  Result<uint64_t> Append(const void* data, size_t len);
  Result<void> Close();
  uint64_t logical_size() const { return logical_; }
  uint64_t stored_size() const { return stored_; }
  BlobWriter(BlobWriter&&) = default;
  BlobWriter& operator=(BlobWriter&&) = default;
  ~BlobWriter();

 private:
  BlobWriter() = default;
  std::unique_ptr<Output> out_;
  std::string name_;
  Compression comp_ = Compression::kNone;
  int level_ = 3;
  uint64_t logical_ = 0;
  uint64_t stored_ = 0;
  std::vector<char> scratch_;
  void* cctx_ = nullptr;  // ZSTD_CCtx*
};

class ImageSet;

// Reads records of one object image.
class ImageReader {
 public:
  // Next record into msg; false at a clean end. A truncated or corrupt record is an error naming
  // the file and the offset.
  Result<bool> Next(google::protobuf::Message* msg);
  const std::string& name() const { return name_; }

 private:
  friend class ImageSet;
  std::string name_;
  std::string data_;  // whole file (images are small; pages are not read through here)
  size_t off_ = 0;
};

// Random access to a blob file written by BlobWriter.
class BlobReader {
 public:
  // Reads logical [offset, offset+len) into dst, verifying chunk checksums.
  Result<void> Read(uint64_t offset, void* dst, size_t len);
  uint64_t logical_size() const;
  // For raw (uncompressed) blobs: the file offset where logical offset lies contiguously for len
  // bytes, so a restorer may preadv() straight into place; an error if compressed or split.
  Result<uint64_t> RawFileOffset(uint64_t offset, size_t len) const;
  int fd() const { return fd_.get(); }
  const std::string& name() const { return name_; }

 private:
  friend class ImageSet;
  struct Chunk {
    uint64_t logical_off, logical_len, file_off, stored_len;
    uint32_t crc;
    bool zstd;
  };
  std::string name_;
  UniqueFd fd_;
  std::vector<Chunk> chunks_;
  void* dctx_ = nullptr;
  std::vector<char> scratch_;
};

class ImageSet {
 public:
  // Opens dir and verifies the inventory: format version, presence, size and checksum of every
  // listed file. A missing or damaged inventory means an incomplete checkpoint (kBadImage).
  static Result<ImageSet> Open(const std::string& dir);
  // Opens dir without verifying checksums (for `inspect` on damaged images).
  static Result<ImageSet> OpenUnverified(const std::string& dir);

  const img::Inventory& inventory() const { return inventory_; }
  const std::string& dir() const { return dir_; }
  bool Has(const std::string& name) const;
  Result<ImageReader> Open(const std::string& name) const;
  Result<std::unique_ptr<BlobReader>> OpenBlob(const std::string& name) const;

  // Reads an image that holds exactly one message.
  Result<void> ReadOne(const std::string& name, google::protobuf::Message* msg) const;

 private:
  std::string dir_;
  img::Inventory inventory_;
};

// The CPU features this machine offers (from cpuid/xgetbv: "avx", "avx2", "avx512f", "xsave",...).
std::vector<std::string> CpuFeatures();
// Checks that every feature an inventory needs is present here; names the missing ones.
Result<void> CheckCpuFeatures(const img::Inventory& inv);
// Fills format/godwit/kernel version, CPU features and time.
img::Inventory NewInventory();

}  // namespace godwit::images
