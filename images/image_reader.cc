// Reading images. Everything here parses untrusted bytes: every length is bounded (by a fixed
// limit and by the file's end) before it is used, and every error is kBadImage naming the file
// and the offset. The fuzz target (fuzz/images_fuzz.cc) drives these parsers from raw bytes.
#include <fcntl.h>
#include <google/protobuf/message.h>
#include <google/protobuf/stubs/logging.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zstd.h>

#include <algorithm>
#include <cstring>
#include <typeinfo>
#include <cstdlib>
#include <mutex>
#include <set>
#include <thread>

#include "common/fs.h"
#include "common/log.h"
#include "images/crc32c.h"
#include "images/format.h"
#include "images/image.h"
#include "images/precheck.h"

namespace godwit::images {
namespace {

Error Bad(const std::string& file, uint64_t off, const char* fmt, ...)
    __attribute__((format(printf, 3, 4)));
Error Bad(const std::string& file, uint64_t off, const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  std::string s = VStrFormat(fmt, ap);
  va_end(ap);
  return MakeError(ErrorKind::kBadImage, 0, "%s: offset %llu: %s", file.c_str(),
                   static_cast<unsigned long long>(off), s.c_str());
}

// Whether msg is of the proto type `type` ("godwit.img.ProcessCore"), told from its C++ type
// ("godwit::img::ProcessCore") without GetTypeName(): that builds the descriptors of the message's
// whole .proto file on first use (the full runtime keeps them encoded until asked), ~1 ms of a
// restore's CPU for the ~10 files it reads. A nested message's C++ name (Outer_Inner) differs
// from its proto name (Outer.Inner): false here, and the caller asks GetTypeName().
bool IsTypeFast(const google::protobuf::Message& msg, const std::string& type) {
  const char* m = typeid(msg).name();  // Itanium ABI: N6godwit3img11ProcessCoreE
  if (*m++ != 'N') return false;
  size_t at = 0;
  while (*m != 'E') {
    if (!isdigit(static_cast<unsigned char>(*m))) return false;
    size_t len = 0;
    while (isdigit(static_cast<unsigned char>(*m))) len = len * 10 + (*m++ - '0');
    if (at != 0) {
      if (at >= type.size() || type[at] != '.') return false;
      at++;
    }
    if (strnlen(m, len) != len || type.compare(at, len, m, len) != 0) return false;
    at += len;
    m += len;
  }
  return at == type.size();
}

bool ValidTypeName(const std::string& t) {
  for (char c : t)
    if (!isalnum(static_cast<unsigned char>(c)) && c != '_' && c != '.') return false;
  return true;
}

// Opens an image file for reading: a regular file (not a FIFO that would block, not a device),
// errors as kBadImage naming the image.
Result<UniqueFd> OpenRegular(const std::string& path, const std::string& name, uint64_t* size) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK));
  if (!fd) {
    int err = errno;
    return MakeError(ErrorKind::kBadImage, err, "%s: %s", name.c_str(),
                     err == ENOENT ? "missing (listed in the inventory)" : "open");
  }
  struct stat st;
  if (::fstat(fd.get(), &st) < 0)
    return MakeError(ErrorKind::kBadImage, errno, "%s: stat", name.c_str());
  if (!S_ISREG(st.st_mode))
    return MakeError(ErrorKind::kBadImage, 0, "%s: not a regular file", name.c_str());
  *size = st.st_size;
  return fd;
}

// Object images are metadata; anything larger than this is not one of ours.
constexpr uint64_t kMaxObjectImage = 1ull << 30;

Result<std::string> ReadWholeFile(const std::string& path, const std::string& name) {
  uint64_t size;
  ASSIGN_OR_RETURN(UniqueFd fd, OpenRegular(path, name, &size));
  if (size > kMaxObjectImage)
    return MakeError(ErrorKind::kBadImage, 0, "%s: %llu bytes, too large for an object image",
                     name.c_str(), static_cast<unsigned long long>(size));
  std::string data(size, '\0');
  size_t got = 0;
  while (got < size) {
    ssize_t n = ::pread(fd.get(), data.data() + got, size - got, got);
    if (n < 0) {
      if (errno == EINTR) continue;
      return MakeError(ErrorKind::kBadImage, errno, "%s: read at offset %zu", name.c_str(), got);
    }
    if (n == 0) break;  // shrank meanwhile: parse what is there (the parser reports truncation)
    got += n;
  }
  data.resize(got);
  return data;
}

// crc32c of [off, off + len) of a file, read in L2-sized pieces so the checksum reads from cache.
Result<uint32_t> RangeCrc(int fd, const std::string& name, uint64_t off, uint64_t len,
                          uint64_t size, bool map) {
  // Read into a small buffer that stays in the cache. Mapping the file instead (no copy) was
  // slower here: on this PVM guest every page-table entry set up and torn down costs more than
  // copying the page (2 GiB: 0.25-0.3 s read vs 0.5-0.8 s mapped, on 4 KiB and huge tmpfs
  // pages alike). map (ReadOptions::map_checksums) maps, for measuring.
  constexpr uint64_t kMapPiece = 64 << 20;
  if (len >= (4 << 20) && map) {
    struct stat st;
    if (::fstat(fd, &st) == 0 && static_cast<uint64_t>(st.st_size) >= off + len) {
      uint32_t crc = 0;
      uint64_t pos = off, end = off + len;
      bool ok = true;
      while (pos < end) {
        uint64_t base = pos & ~static_cast<uint64_t>(4095);
        uint64_t n = std::min<uint64_t>(kMapPiece, end - pos);
        size_t maplen = n + (pos - base);
        void* m = ::mmap(nullptr, maplen, PROT_READ, MAP_SHARED | MAP_POPULATE, fd,
                         static_cast<off_t>(base));
        if (m == MAP_FAILED) {
          ok = false;
          break;
        }
        crc = Crc32c(crc, static_cast<char*>(m) + (pos - base), n);
        ::munmap(m, maplen);
        pos += n;
      }
      if (ok) return crc;
    }
  }
  constexpr size_t kPiece = 1 << 20;
  std::unique_ptr<char[]> buf(new char[kPiece]);
  uint32_t crc = 0;
  uint64_t end = off + len;
  while (off < end) {
    ssize_t n = ::pread(fd, buf.get(), std::min<uint64_t>(kPiece, end - off), off);
    if (n < 0) {
      if (errno == EINTR) continue;
      return MakeError(ErrorKind::kBadImage, errno, "%s: read at offset %llu", name.c_str(),
                       static_cast<unsigned long long>(off));
    }
    if (n == 0)
      return Bad(name, off, "file shorter than its listed size %llu",
                 static_cast<unsigned long long>(size));
    crc = Crc32c(crc, buf.get(), n);
    off += n;
  }
  return crc;
}

// crc32c of a whole file. Large files (page blobs) are checksummed by two threads, each over
// one half, joined with Crc32cCombine: verification is on the restore's critical path.
Result<uint32_t> FileCrc(int fd, const std::string& name, uint64_t size, const ReadOptions& opts,
                         bool parallel = true) {
  posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
  constexpr uint64_t kParallelMin = 64 << 20;
  if (!parallel || size < kParallelMin || std::thread::hardware_concurrency() < 2)
    return RangeCrc(fd, name, 0, size, size, opts.map_checksums);
  uint64_t half = size / 2;
  Result<uint32_t> second = 0u;
  std::thread t([&] { second = RangeCrc(fd, name, half, size - half, size, opts.map_checksums); });
  auto first = RangeCrc(fd, name, 0, half, size, opts.map_checksums);
  t.join();
  if (!first.ok()) return first;
  if (!second.ok()) return second;
  return Crc32cCombine(*first, *second, size - half);
}

// libprotobuf prints parse complaints (invalid UTF-8 in a string field of a damaged image) to
// stderr; route them to the debug log: the reader reports the failure itself.
void QuietProtobufLogs() {
  static std::once_flag once;
  std::call_once(once, [] {
    google::protobuf::SetLogHandler(
        [](google::protobuf::LogLevel level, const char* file, int line, const std::string& msg) {
          LOG_DEBUG("protobuf %s:%d: %s", file, line, msg.c_str());
        });
  });
}

}  // namespace

FileKind ProbeKind(std::string_view head) {
  if (head.size() >= 8 && memcmp(head.data(), format::kImageMagic, 8) == 0)
    return FileKind::kObject;
  if (head.size() >= 8 && memcmp(head.data(), format::kBlobMagic, 8) == 0) return FileKind::kBlob;
  return FileKind::kUnknown;
}

// ---- ImageReader

Result<ImageReader> ImageReader::FromBuffer(std::string name, std::string data) {
  QuietProtobufLogs();
  ImageReader r;
  r.name_ = std::move(name);
  r.data_ = std::move(data);
  const std::string& d = r.data_;
  if (d.size() < format::kImageHeaderFixed)
    return Bad(r.name_, d.size(), "truncated header (%zu bytes)", d.size());
  if (memcmp(d.data(), format::kImageMagic, 8) != 0)
    return Bad(r.name_, 0, "not an object image (bad magic)");
  uint32_t version = format::GetU32(&d[8]);
  if (version != kFormatVersion)
    return Bad(r.name_, 8, "format version %u, this godwit reads version %u", version,
               kFormatVersion);
  uint32_t tlen = format::GetU32(&d[12]);
  if (tlen > format::kMaxTypeName) return Bad(r.name_, 12, "type name length %u too large", tlen);
  if (tlen > d.size() - format::kImageHeaderFixed)
    return Bad(r.name_, format::kImageHeaderFixed, "truncated type name (%u bytes)", tlen);
  r.type_.assign(d, format::kImageHeaderFixed, tlen);
  if (!ValidTypeName(r.type_)) return Bad(r.name_, format::kImageHeaderFixed, "invalid type name");
  r.off_ = format::kImageHeaderFixed + tlen;
  return r;
}

Result<bool> ImageReader::NextRaw(std::string_view* record) {
  size_t size = data_.size();
  if (off_ >= size) return false;
  if (size - off_ < 4)
    return Bad(name_, off_, "truncated record length (%zu bytes left)", size - off_);
  uint32_t len = format::GetU32(&data_[off_]);
  if (len > format::kMaxRecord)
    return Bad(name_, off_, "record length %u exceeds the limit of %u", len, format::kMaxRecord);
  if (len > size - off_ - 4)
    return Bad(name_, off_, "truncated record: length %u, %zu bytes left", len, size - off_ - 4);
  if (type_.empty()) return Bad(name_, off_, "record in an image without a type name");
  *record = std::string_view(data_.data() + off_ + 4, len);
  off_ += 4 + len;
  return true;
}

Result<bool> ImageReader::Next(google::protobuf::Message* msg) {
  if (!type_.empty() && !IsTypeFast(*msg, type_) && msg->GetTypeName() != type_)
    return MakeError(ErrorKind::kBadImage, 0, "%s holds %s records, expected %s", name_.c_str(),
                     type_.c_str(), msg->GetTypeName().c_str());
  size_t at = off_;
  std::string_view rec;
  ASSIGN_OR_RETURN(bool more, NextRaw(&rec));
  if (!more) return false;
  if (!msg->ParseFromArray(rec.data(), static_cast<int>(rec.size())))
    return Bad(name_, at, "record does not parse as %s", type_.c_str());
  return true;
}

Result<img::Inventory> ParseInventory(const std::string& name, std::string data) {
  ASSIGN_OR_RETURN(ImageReader r, ImageReader::FromBuffer(name, std::move(data)));
  img::Inventory inv;
  ASSIGN_OR_RETURN(bool got, r.Next(&inv));
  if (!got) return Bad(name, r.offset(), "no inventory record: incomplete checkpoint");
  size_t end = r.offset();
  img::Inventory extra;
  ASSIGN_OR_RETURN(bool more, r.Next(&extra));
  if (more) return Bad(name, end, "more than one inventory record");
  if (inv.format_version() != kFormatVersion)
    return Bad(name, format::kImageHeaderFixed, "inventory format version %u, this godwit reads %u",
               inv.format_version(), kFormatVersion);
  std::set<std::string> seen;
  for (const auto& f : inv.files()) {
    if (!ValidImageName(f.name()) || f.name() == format::kInventoryName)
      return Bad(name, format::kImageHeaderFixed, "invalid file name '%.64s' in inventory",
                 f.name().c_str());
    if (!seen.insert(f.name()).second)
      return Bad(name, format::kImageHeaderFixed, "file %s listed twice", f.name().c_str());
  }
  return inv;
}

// ---- BlobReader

BlobReader::~BlobReader() { ZSTD_freeDCtx(static_cast<ZSTD_DCtx*>(dctx_)); }

Result<std::unique_ptr<BlobReader>> BlobReader::OpenFile(const std::string& path,
                                                         const std::string& name, bool verified) {
  auto b = std::make_unique<BlobReader>();
  b->name_ = name;
  b->verified_ = verified;
  ASSIGN_OR_RETURN(b->fd_, OpenRegular(path, name, &b->file_size_));
  TRY(b->BuildIndex());
  if (!verified) {
    // Chunks checked ahead by a helper while this file was the same (images/precheck.h).
    std::set<uint64_t> ahead = PrecheckedChunks(path, b->fd_.get());
    for (Chunk& c : b->chunks_) c.ahead = ahead.count(c.file_off) > 0;
  }
  return b;
}

Result<std::unique_ptr<BlobReader>> BlobReader::FromBuffer(std::string name, std::string data,
                                                           bool verified) {
  auto b = std::make_unique<BlobReader>();
  b->verified_ = verified;
  b->name_ = std::move(name);
  b->mem_ = std::move(data);
  b->in_mem_ = true;
  b->file_size_ = b->mem_.size();
  TRY(b->BuildIndex());
  return b;
}

Result<void> BlobReader::ReadAt(uint64_t off, void* dst, size_t len) const {
  if (off > file_size_ || len > file_size_ - off)
    return Bad(name_, off, "read of %zu bytes beyond the end of the file", len);
  if (in_mem_) {
    memcpy(dst, mem_.data() + off, len);
    return Ok();
  }
  char* p = static_cast<char*>(dst);
  while (len > 0) {
    ssize_t n = ::pread(fd_.get(), p, len, off);
    if (n < 0) {
      if (errno == EINTR) continue;
      return MakeError(ErrorKind::kBadImage, errno, "%s: read at offset %llu", name_.c_str(),
                       static_cast<unsigned long long>(off));
    }
    if (n == 0) return Bad(name_, off, "file truncated while reading");
    p += n;
    off += n;
    len -= n;
  }
  return Ok();
}

Result<void> BlobReader::BuildIndex() {
  char h[format::kBlobHeaderSize];
  if (file_size_ < sizeof(h)) return Bad(name_, file_size_, "truncated blob header");
  TRY(ReadAt(0, h, sizeof(h)));
  if (memcmp(h, format::kBlobMagic, 8) != 0) return Bad(name_, 0, "not a blob file (bad magic)");
  uint32_t version = format::GetU32(h + 8);
  if (version != kFormatVersion)
    return Bad(name_, 8, "format version %u, this godwit reads version %u", version,
               kFormatVersion);
  if (format::GetU32(h + 12) != 0) return Bad(name_, 12, "unknown blob flags");
  const uint64_t max_zstd = ZSTD_compressBound(format::kMaxChunk);
  uint64_t off = sizeof(h), logical = 0;
  while (off < file_size_) {
    format::ChunkHeader c;
    if (file_size_ - off < sizeof(c)) return Bad(name_, off, "truncated chunk header");
    TRY(ReadAt(off, &c, sizeof(c)));
    bool zstd = c.kind == format::kChunkZstd;
    if (!zstd && c.kind != format::kChunkRaw)
      return Bad(name_, off, "bad chunk magic 0x%08x", c.kind);
    if (c.logical_off != logical)
      return Bad(name_, off, "chunk at logical offset %llu, expected %llu",
                 static_cast<unsigned long long>(c.logical_off),
                 static_cast<unsigned long long>(logical));
    if (c.logical_len == 0 || c.logical_len > format::kMaxChunk)
      return Bad(name_, off, "chunk length %u out of range", c.logical_len);
    if (zstd ? (c.stored_len == 0 || c.stored_len > max_zstd) : c.stored_len != c.logical_len)
      return Bad(name_, off, "chunk stored length %u invalid", c.stored_len);
    if (c.stored_len > file_size_ - off - sizeof(c))
      return Bad(name_, off, "truncated chunk: %u stored bytes, %llu left", c.stored_len,
                 static_cast<unsigned long long>(file_size_ - off - sizeof(c)));
    chunks_.push_back(
        Chunk{c.logical_off, c.logical_len, off + sizeof(c), c.stored_len, c.crc32c, zstd});
    logical += c.logical_len;
    off += sizeof(c) + c.stored_len;
  }
  return Ok();
}

uint64_t BlobReader::logical_size() const {
  return chunks_.empty() ? 0 : chunks_.back().logical_off + chunks_.back().logical_len;
}

BlobReader::Stats BlobReader::stats() const {
  Stats s;
  s.chunks = chunks_.size();
  for (const auto& c : chunks_) {
    s.zstd_chunks += c.zstd;
    s.stored_bytes += c.stored_len;
  }
  s.logical_bytes = logical_size();
  s.file_bytes = file_size_;
  return s;
}

Result<void> BlobReader::VerifyChunks() const {
  std::vector<char> buf;
  for (const Chunk& c : chunks_) TRY(CheckChunk(c, &buf));
  return Ok();
}

Result<void> BlobReader::CheckEachChunk(const std::function<bool(uint64_t)>& ok) const {
  std::vector<char> buf;
  for (const Chunk& c : chunks_) {
    TRY(CheckChunk(c, &buf));
    if (!ok(c.file_off)) break;
  }
  return Ok();
}

Result<void> BlobReader::VerifyRange(uint64_t offset, uint64_t len) const {
  uint64_t size = logical_size();
  if (offset > size || len > size - offset)
    return MakeError(ErrorKind::kBadImage, 0, "%s: range [%llu, +%llu) beyond logical size %llu",
                     name_.c_str(), static_cast<unsigned long long>(offset),
                     static_cast<unsigned long long>(len), static_cast<unsigned long long>(size));
  if (len == 0) return Ok();
  std::vector<char> buf;
  for (size_t i = FindChunk(offset); i < chunks_.size() && chunks_[i].logical_off < offset + len;
       ++i)
    if (!chunks_[i].ahead) TRY(CheckChunk(chunks_[i], &buf));
  return Ok();
}

Result<void> BlobReader::CheckChunk(const Chunk& c, std::vector<char>* buf) const {
  // Through a small buffer that stays in the cache: a chunk-sized one (up to 4 MiB) was fresh
  // memory for every check, its page faults costing more than the checksum itself (3.8 ms for
  // one chunk here, to check a 20 KiB piece of it in a restore).
  constexpr size_t kStep = 256 << 10;
  uint32_t crc = 0;
  if (in_mem_) {
    if (c.file_off > file_size_ || c.stored_len > file_size_ - c.file_off)
      return Bad(name_, c.file_off, "read of %llu bytes beyond the end of the file",
                 static_cast<unsigned long long>(c.stored_len));
    crc = Crc32c(0, mem_.data() + c.file_off, c.stored_len);
  } else {
    buf->resize(std::min<size_t>(kStep, c.stored_len));
    for (uint64_t done = 0; done < c.stored_len;) {
      size_t n = std::min<uint64_t>(kStep, c.stored_len - done);
      TRY(ReadAt(c.file_off + done, buf->data(), n));
      crc = Crc32c(crc, buf->data(), n);
      done += n;
    }
  }
  if (crc != c.crc)
    return Bad(name_, c.file_off - sizeof(format::ChunkHeader),
               "chunk checksum mismatch (chunk of logical [%llu, +%llu))",
               static_cast<unsigned long long>(c.logical_off),
               static_cast<unsigned long long>(c.logical_len));
  return Ok();
}

size_t BlobReader::FindChunk(uint64_t offset) const {
  auto it = std::upper_bound(chunks_.begin(), chunks_.end(), offset,
                             [](uint64_t o, const Chunk& c) { return o < c.logical_off; });
  return static_cast<size_t>(it - chunks_.begin()) - 1;  // callers checked offset < size
}

Result<void> BlobReader::ReadChunk(size_t i, uint64_t skip, char* dst, size_t len) {
  const Chunk& c = chunks_[i];
  bool whole = skip == 0 && len == c.logical_len;
  if (static_cast<int64_t>(i) == plain_chunk_) {
    memcpy(dst, plain_.data() + skip, len);
    return Ok();
  }
  if (!c.zstd) {
    if (Trusted(c)) return ReadAt(c.file_off + skip, dst, len);
    // A mismatch on a chunk that another reader sharing the marks found intact meanwhile is
    // that reader's caller freeing what it consumed (ShareChunkMarks): this part is read again.
    if (whole) {
      TRY(ReadAt(c.file_off, dst, len));
      if (Crc32c(0, dst, len) != c.crc) {
        if (Trusted(c)) return ReadAt(c.file_off, dst, len);
        return Bad(name_, c.file_off - sizeof(format::ChunkHeader), "chunk checksum mismatch");
      }
      Mark(c);
      return Ok();
    }
    plain_.resize(c.logical_len);
    plain_chunk_ = -1;
    TRY(ReadAt(c.file_off, plain_.data(), c.logical_len));
    if (Crc32c(0, plain_.data(), c.logical_len) != c.crc) {
      if (Trusted(c)) return ReadAt(c.file_off + skip, dst, len);
      return Bad(name_, c.file_off - sizeof(format::ChunkHeader), "chunk checksum mismatch");
    }
    Mark(c);
    plain_chunk_ = i;
    memcpy(dst, plain_.data() + skip, len);
    return Ok();
  }
  scratch_.resize(c.stored_len);
  TRY(ReadAt(c.file_off, scratch_.data(), c.stored_len));
  uint64_t hdr = c.file_off - sizeof(format::ChunkHeader);
  if (!Trusted(c) && Crc32c(0, scratch_.data(), c.stored_len) != c.crc)
    return Bad(name_, hdr, "chunk checksum mismatch");
  Mark(c);
  if (!dctx_) {
    dctx_ = ZSTD_createDCtx();
    if (!dctx_) return MakeError(ErrorKind::kGeneric, ENOMEM, "ZSTD_createDCtx");
  }
  char* out = dst;
  if (!whole) {
    plain_.resize(c.logical_len);
    plain_chunk_ = -1;
    out = plain_.data();
  }
  size_t n = ZSTD_decompressDCtx(static_cast<ZSTD_DCtx*>(dctx_), out, c.logical_len,
                                 scratch_.data(), c.stored_len);
  if (ZSTD_isError(n)) return Bad(name_, hdr, "zstd: %s", ZSTD_getErrorName(n));
  if (n != c.logical_len)
    return Bad(name_, hdr, "chunk decompressed to %zu bytes, expected %llu", n,
               static_cast<unsigned long long>(c.logical_len));
  if (!whole) {
    plain_chunk_ = i;
    memcpy(dst, plain_.data() + skip, len);
  }
  return Ok();
}

Result<void> BlobReader::Read(uint64_t offset, void* dst, size_t len) {
  uint64_t size = logical_size();
  if (offset > size || len > size - offset)
    return MakeError(ErrorKind::kBadImage, 0, "%s: read of [%llu, +%zu) beyond logical size %llu",
                     name_.c_str(), static_cast<unsigned long long>(offset), len,
                     static_cast<unsigned long long>(size));
  char* p = static_cast<char*>(dst);
  if (len == 0) return Ok();
  for (size_t i = FindChunk(offset); len > 0; i++) {
    const Chunk& c = chunks_[i];
    uint64_t skip = offset - c.logical_off;
    size_t n = std::min<uint64_t>(len, c.logical_len - skip);
    TRY(ReadChunk(i, skip, p, n));
    p += n;
    offset += n;
    len -= n;
  }
  return Ok();
}

Result<void> BlobReader::ReadPieces(
    uint64_t offset, uint64_t len, char* buf, size_t piece,
    const std::function<Result<void>(uint64_t, const char*, size_t)>& fn) {
  uint64_t size = logical_size();
  if (offset > size || len > size - offset)
    return MakeError(ErrorKind::kBadImage, 0, "%s: read of [%llu, +%llu) beyond logical size %llu",
                     name_.c_str(), static_cast<unsigned long long>(offset),
                     static_cast<unsigned long long>(len), static_cast<unsigned long long>(size));
  if (piece == 0) return MakeError(ErrorKind::kGeneric, EINVAL, "%s: pieces of 0 bytes", name_.c_str());
  for (size_t i = len > 0 ? FindChunk(offset) : 0; len > 0; i++) {
    const Chunk& c = chunks_[i];
    uint64_t skip = offset - c.logical_off;
    uint64_t n = std::min<uint64_t>(len, c.logical_len - skip);
    bool whole = skip == 0 && n == c.logical_len;
    if (c.zstd || (!whole && !Trusted(c)) || static_cast<int64_t>(i) == plain_chunk_) {
      for (uint64_t done = 0; done < n;) {
        size_t k = static_cast<size_t>(std::min<uint64_t>(piece, n - done));
        TRY(ReadChunk(i, skip + done, buf, k));
        TRY(fn(offset + done, buf, k));
        done += k;
      }
    } else {
      uint32_t crc = 0;
      for (uint64_t done = 0; done < n;) {
        size_t k = static_cast<size_t>(std::min<uint64_t>(piece, n - done));
        TRY(ReadAt(c.file_off + skip + done, buf, k));
        if (!Trusted(c)) crc = Crc32c(crc, buf, k);
        TRY(fn(offset + done, buf, k));
        done += k;
      }
      if (!Trusted(c) && crc != c.crc)
        return Bad(name_, c.file_off - sizeof(format::ChunkHeader), "chunk checksum mismatch");
      Mark(c);
    }
    offset += n;
    len -= n;
  }
  return Ok();
}

bool BlobReader::Checked(uint64_t offset, uint64_t len) const {
  uint64_t size = logical_size();
  if (offset > size || len > size - offset) return false;
  for (size_t i = len > 0 ? FindChunk(offset) : 0; len > 0; i++) {
    const Chunk& c = chunks_[i];
    if (!Trusted(c)) return false;
    uint64_t n = std::min<uint64_t>(len, c.logical_len - (offset - c.logical_off));
    offset += n;
    len -= n;
  }
  return true;
}

Result<std::vector<BlobReader::Extent>> BlobReader::RawExtents(uint64_t offset,
                                                               uint64_t len) const {
  uint64_t size = logical_size();
  if (offset > size || len > size - offset)
    return MakeError(ErrorKind::kBadImage, 0, "%s: range [%llu, +%llu) beyond logical size %llu",
                     name_.c_str(), static_cast<unsigned long long>(offset),
                     static_cast<unsigned long long>(len), static_cast<unsigned long long>(size));
  std::vector<Extent> out;
  if (len == 0) return out;
  for (size_t i = FindChunk(offset); len > 0; i++) {
    const Chunk& c = chunks_[i];
    if (c.zstd)
      return MakeError(ErrorKind::kGeneric, 0, "%s: logical offset %llu is in a compressed chunk",
                       name_.c_str(), static_cast<unsigned long long>(offset));
    uint64_t skip = offset - c.logical_off;
    uint64_t n = std::min<uint64_t>(len, c.logical_len - skip);
    out.push_back({c.file_off + skip, n});
    offset += n;
    len -= n;
  }
  return out;
}

Result<uint64_t> BlobReader::RawFileOffset(uint64_t offset, size_t len) const {
  ASSIGN_OR_RETURN(auto ext, RawExtents(offset, len));
  if (ext.size() > 1)
    return MakeError(ErrorKind::kGeneric, 0, "%s: [%llu, +%zu) spans %zu chunks", name_.c_str(),
                     static_cast<unsigned long long>(offset), len, ext.size());
  if (ext.empty()) return MakeError(ErrorKind::kGeneric, 0, "%s: empty range", name_.c_str());
  return ext[0].file_off;
}

// ---- ImageSet

Result<ImageSet> ImageSet::Load(const std::string& dir) {
  ImageSet s;
  s.dir_ = dir;
  std::string path = dir + "/" + format::kInventoryName;
  struct stat st;
  if (::stat(dir.c_str(), &st) < 0) return Errno("image directory %s", dir.c_str());
  if (::stat(path.c_str(), &st) < 0) {
    if (errno == ENOENT)
      return MakeError(ErrorKind::kBadImage, ENOENT,
                       "%s: no %s: not a complete checkpoint (the dump did not finish)",
                       dir.c_str(), format::kInventoryName);
    return Errno("stat %s", path.c_str());
  }
  ASSIGN_OR_RETURN(std::string data, ReadWholeFile(path, format::kInventoryName));
  auto inv = ParseInventory(format::kInventoryName, std::move(data));
  if (!inv.ok()) return std::move(inv.error().wrap(dir));
  s.inventory_ = std::move(*inv);
  return s;
}

Result<ImageSet> ImageSet::OpenUnverified(const std::string& dir) { return Load(dir); }

Result<ImageSet> ImageSet::OpenPartial(const std::string& dir) {
  ImageSet s;
  s.dir_ = dir;
  ASSIGN_OR_RETURN(std::vector<std::string> names, fs::ListDir(dir));
  std::sort(names.begin(), names.end());
  for (const auto& n : names) {
    if (n == format::kInventoryName || n.empty() || n[0] == '.') continue;
    struct stat st;
    if (::stat((dir + "/" + n).c_str(), &st) < 0 || !S_ISREG(st.st_mode)) continue;
    img::ImageFile* f = s.inventory_.add_files();
    f->set_name(n);
    f->set_size(static_cast<uint64_t>(st.st_size));
  }
  return s;
}

struct ImageSet::Pending {
  std::mutex mu;
  std::thread thread;
  Result<void> result;
  ~Pending() {
    if (thread.joinable()) thread.join();
  }
};

namespace {
constexpr uint64_t kDeferMin = 64 << 20;

// parallel: split a large file over two threads (not for the background check, which is meant
// to leave one core to the caller).
Result<void> CheckCrc(const std::string& dir, int fd, const img::ImageFile& f,
                      const ReadOptions& opts, bool parallel) {
  auto crc = FileCrc(fd, f.name(), f.size(), opts, parallel);
  if (!crc.ok()) return std::move(crc.error().wrap(dir));
  if (*crc != f.crc32c())
    return MakeError(ErrorKind::kBadImage, 0,
                     "%s: %s: checksum mismatch (crc32c 0x%08x, inventory says 0x%08x; offset "
                     "unknown: the whole file is checksummed)",
                     dir.c_str(), f.name().c_str(), *crc, f.crc32c());
  return Ok();
}
}  // namespace

Result<ImageSet> ImageSet::OpenChecked(const std::string& dir, bool defer,
                                       const ReadOptions& opts) {
  ASSIGN_OR_RETURN(ImageSet s, Load(dir));
  s.opts_ = opts;
  std::vector<std::pair<UniqueFd, img::ImageFile>> later;
  for (const auto& f : s.inventory_.files()) {
    std::string path = dir + "/" + f.name();
    uint64_t size;
    auto fd = OpenRegular(path, f.name(), &size);
    if (!fd.ok()) return std::move(fd.error().wrap(dir));
    if (size != f.size())
      return MakeError(ErrorKind::kBadImage, 0,
                       "%s: %s: size %llu, inventory says %llu (offset %llu)", dir.c_str(),
                       f.name().c_str(), static_cast<unsigned long long>(size),
                       static_cast<unsigned long long>(f.size()),
                       static_cast<unsigned long long>(std::min<uint64_t>(size, f.size())));
    char head[8] = {};
    if (opts.chunk_checked_blobs && size >= sizeof(head) &&
        pread(fd->get(), head, sizeof(head), 0) == static_cast<ssize_t>(sizeof(head)) &&
        ProbeKind(std::string_view(head, sizeof(head))) == FileKind::kBlob) {
      s.chunk_checked_.push_back(f.name());
      continue;
    }
    if (defer && size >= kDeferMin)
      later.emplace_back(std::move(*fd), f);
    else
      TRY(CheckCrc(dir, fd->get(), f, opts, true));
  }
  s.verified_ = true;
  if (!later.empty()) {
    s.pending_ = std::make_shared<Pending>();
    Pending* p = s.pending_.get();
    p->thread = std::thread([p, dir, opts, later = std::move(later)] {
      Result<void> r;
      for (const auto& [fd, f] : later) {
        r = CheckCrc(dir, fd.get(), f, opts, false);
        if (!r.ok()) break;
      }
      p->result = std::move(r);  // read only after join
    });
  }
  return s;
}

Result<ImageSet> ImageSet::Open(const std::string& dir, const ReadOptions& opts) {
  return OpenChecked(dir, false, opts);
}
Result<ImageSet> ImageSet::OpenDeferred(const std::string& dir, const ReadOptions& opts) {
  return OpenChecked(dir, true, opts);
}

Result<void> ImageSet::WaitVerified() const {
  if (!verified_)
    return MakeError(ErrorKind::kGeneric, 0, "%s was opened without verification", dir_.c_str());
  if (!pending_) return Ok();
  // The result is final once the thread is joined; mu serialises concurrent waiters.
  std::lock_guard<std::mutex> l(pending_->mu);
  if (pending_->thread.joinable()) pending_->thread.join();
  return pending_->result;
}

std::vector<Error> ImageSet::Verify() const {
  std::vector<Error> errs;
  for (const auto& f : inventory_.files()) {
    std::string path = dir_ + "/" + f.name();
    uint64_t size;
    auto fd = OpenRegular(path, f.name(), &size);
    if (!fd.ok()) {
      errs.push_back(std::move(fd).error());
      continue;
    }
    if (size != f.size()) {
      errs.push_back(MakeError(ErrorKind::kBadImage, 0, "%s: size %llu, inventory says %llu",
                               f.name().c_str(), static_cast<unsigned long long>(size),
                               static_cast<unsigned long long>(f.size())));
      continue;
    }
    auto crc = FileCrc(fd->get(), f.name(), f.size(), opts_);
    if (!crc.ok()) {
      errs.push_back(std::move(crc).error());
    } else if (*crc != f.crc32c()) {
      errs.push_back(MakeError(ErrorKind::kBadImage, 0,
                               "%s: checksum mismatch (crc32c 0x%08x, inventory says 0x%08x)",
                               f.name().c_str(), *crc, f.crc32c()));
    }
  }
  return errs;
}

bool ImageSet::Verified(const std::string& name) const {
  return verified_ &&
         std::find(chunk_checked_.begin(), chunk_checked_.end(), name) == chunk_checked_.end();
}

bool ImageSet::Has(const std::string& name) const {
  for (const auto& f : inventory_.files())
    if (f.name() == name) return true;
  return false;
}

Result<ImageReader> ImageSet::OpenImage(const std::string& name) const {
  if (!Has(name))
    return MakeError(ErrorKind::kBadImage, 0, "%s: image %s is not in the inventory", dir_.c_str(),
                     name.c_str());
  ASSIGN_OR_RETURN(std::string data, ReadWholeFile(dir_ + "/" + name, name));
  auto r = ImageReader::FromBuffer(name, std::move(data));
  if (!r.ok()) return std::move(r.error().wrap(dir_));
  return r;
}

Result<std::unique_ptr<BlobReader>> ImageSet::OpenBlob(const std::string& name) const {
  if (!Has(name))
    return MakeError(ErrorKind::kBadImage, 0, "%s: blob %s is not in the inventory", dir_.c_str(),
                     name.c_str());
  auto b = BlobReader::OpenFile(dir_ + "/" + name, name, Verified(name));
  if (!b.ok()) return std::move(b.error().wrap(dir_));
  return b;
}

Result<void> ImageSet::ReadOne(const std::string& name, google::protobuf::Message* msg) const {
  ASSIGN_OR_RETURN(ImageReader r, OpenImage(name));
  ASSIGN_OR_RETURN(bool got, r.Next(msg));
  if (!got)
    return MakeError(ErrorKind::kBadImage, 0, "%s: %s: offset %zu: no record", dir_.c_str(),
                     name.c_str(), r.offset());
  size_t end = r.offset();
  std::string_view extra;
  ASSIGN_OR_RETURN(bool more, r.NextRaw(&extra));
  if (more)
    return MakeError(ErrorKind::kBadImage, 0, "%s: %s: offset %zu: more than one record",
                     dir_.c_str(), name.c_str(), end);
  return Ok();
}

}  // namespace godwit::images
