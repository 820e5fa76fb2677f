// Writing object images and blobs. Object images are small (metadata); blobs carry the bulk
// (pages), so the blob path avoids copies: a raw chunk goes from the caller's buffer to the file
// in one writev with its header, and its checksum is computed once and reused for the file's.
#include <google/protobuf/message_lite.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zstd.h>

#include <algorithm>
#include <condition_variable>
#include <cstddef>
#include <cstring>
#include <mutex>
#include <thread>

#include "common/log.h"
#include "images/crc32c.h"
#include "images/format.h"
#include "images/image.h"

namespace godwit::images {

// ---- ImageWriter

Result<ImageWriter> ImageWriter::Create(Sink& sink, const std::string& name) {
  ImageWriter w;
  ASSIGN_OR_RETURN(w.out_, sink.Create(name));
  w.name_ = name;
  return w;
}

ImageWriter::~ImageWriter() = default;

Result<void> ImageWriter::Write(const google::protobuf::MessageLite& msg) {
  if (!out_) return MakeError(ErrorKind::kGeneric, 0, "image %s: write after close", name_.c_str());
  size_t size = msg.ByteSizeLong();
  if (size > format::kMaxRecord)
    return MakeError(ErrorKind::kGeneric, 0, "image %s: record of %zu bytes exceeds the limit",
                     name_.c_str(), size);
  if (!header_) {
    // First record: the header names its type, so inspect can decode the image generically.
    std::string h = format::ImageHeader(msg.GetTypeName(), kFormatVersion);
    TRY_CTX(out_->Write(h.data(), h.size()), "image %s", name_.c_str());
    type_ = msg.GetTypeName();
    header_ = true;
  } else if (msg.GetTypeName() != type_) {
    return MakeError(ErrorKind::kGeneric, 0, "image %s holds %s records, not %s", name_.c_str(),
                     type_.c_str(), msg.GetTypeName().c_str());
  }
  buf_.resize(4 + size);
  format::PutU32(&buf_[0], static_cast<uint32_t>(size));
  if (!msg.SerializeToArray(&buf_[4], static_cast<int>(size)))
    return MakeError(ErrorKind::kGeneric, 0, "image %s: serialize %s", name_.c_str(),
                     msg.GetTypeName().c_str());
  TRY_CTX(out_->Write(buf_.data(), 4 + size), "image %s", name_.c_str());
  return Ok();
}

Result<void> ImageWriter::Close() {
  if (!out_) return MakeError(ErrorKind::kGeneric, 0, "image %s: closed twice", name_.c_str());
  if (!header_) {
    // No records: still a valid image, with an empty type name.
    std::string h = format::ImageHeader("", kFormatVersion);
    TRY_CTX(out_->Write(h.data(), h.size()), "image %s", name_.c_str());
  }
  auto r = out_->Close();
  out_.reset();
  buf_.clear();
  buf_.shrink_to_fit();
  TRY_CTX(std::move(r), "image %s", name_.c_str());
  return Ok();
}

Result<void> WriteImage(Sink& sink, const std::string& name,
                        const google::protobuf::MessageLite& msg) {
  ASSIGN_OR_RETURN(ImageWriter w, ImageWriter::Create(sink, name));
  TRY(w.Write(msg));
  return w.Close();
}

// ---- BlobWriter

namespace {
// An append at least this large (with nothing gathered) is written from the caller's buffer.
constexpr size_t kDirectMin = 256 << 10;
}  // namespace

// Worker threads compressing the chunks of one Emit in parallel; the caller compresses too and
// writes the results in order as they complete. Piece j uses slot j % slots.size(), so at most
// that many compressed chunks wait for the writer.
struct BlobWriter::Pool {
  struct Slot {
    std::vector<char> out;
    size_t zlen = 0;
    bool done = false;
    std::string err;
  };
  BlobWriter* owner = nullptr;  // for CompressOne (level, name); set per Emit
  std::mutex mu;
  std::condition_variable work_cv, done_cv;
  std::vector<Slot> slots;
  const std::vector<Piece>* pieces = nullptr;
  size_t total = 0, next = 0, written = 0;
  bool stop = false;
  std::vector<std::thread> threads;

  bool CanTake() const { return next < total && next < written + slots.size(); }

  // Compresses piece j (called without the lock held).
  void Compress(void* cctx, size_t j) {
    Slot& s = slots[j % slots.size()];
    auto r = cctx ? owner->CompressOne(cctx, (*pieces)[j], &s.out, &s.zlen)
                  : Result<void>(MakeError(ErrorKind::kGeneric, ENOMEM, "ZSTD_createCCtx"));
    std::lock_guard<std::mutex> l(mu);
    if (!r.ok()) s.err = r.error().message();
    s.done = true;
    done_cv.notify_all();
  }

  void Run() {
    ZSTD_CCtx* cctx = ZSTD_createCCtx();
    std::unique_lock<std::mutex> l(mu);
    for (;;) {
      work_cv.wait(l, [&] { return stop || CanTake(); });
      if (stop) break;
      size_t j = next++;
      l.unlock();
      Compress(cctx, j);
      l.lock();
    }
    ZSTD_freeCCtx(cctx);
  }

  ~Pool() {
    {
      std::lock_guard<std::mutex> l(mu);
      stop = true;
    }
    work_cv.notify_all();
    for (auto& t : threads) t.join();
  }
};

void BlobWriter::PoolFree::operator()(Pool* p) const { delete p; }
void BlobWriter::CctxFree::operator()(void* p) const { ZSTD_freeCCtx(static_cast<ZSTD_CCtx*>(p)); }

Result<BlobWriter> BlobWriter::Create(Sink& sink, const std::string& name, Compression c,
                                      int zstd_level) {
  // Checked before the file exists: a refused level leaves no open image behind.
  if (c == Compression::kZstd && (zstd_level < ZSTD_minCLevel() || zstd_level > ZSTD_maxCLevel()))
    return MakeError(ErrorKind::kUsage, 0, "zstd level %d out of range [%d, %d]", zstd_level,
                     ZSTD_minCLevel(), ZSTD_maxCLevel());
  ASSIGN_OR_RETURN(std::unique_ptr<Output> out, sink.Create(name));
  return ForOutput(std::move(out), name, c, zstd_level);
}

Result<BlobWriter> BlobWriter::ForOutput(std::unique_ptr<Output> out, const std::string& name,
                                         Compression c, int zstd_level) {
  BlobWriter w;
  w.name_ = name;
  w.comp_ = c;
  w.level_ = zstd_level;
  if (c == Compression::kZstd) {
    if (zstd_level < ZSTD_minCLevel() || zstd_level > ZSTD_maxCLevel())
      return MakeError(ErrorKind::kUsage, 0, "zstd level %d out of range [%d, %d]", zstd_level,
                       ZSTD_minCLevel(), ZSTD_maxCLevel());
    w.cctx_.reset(ZSTD_createCCtx());
    if (!w.cctx_)
      return MakeError(ErrorKind::kGeneric, ENOMEM, "blob %s: ZSTD_createCCtx", name.c_str());
  }
  w.out_ = std::move(out);
  char h[format::kBlobHeaderSize];
  memcpy(h, format::kBlobMagic, 8);
  format::PutU32(h + 8, kFormatVersion);
  format::PutU32(h + 12, 0);
  TRY_CTX(w.out_->Write(h, sizeof(h)), "blob %s", name.c_str());
  w.stored_ = sizeof(h);
  return w;
}

namespace {

Result<void> PreadAll(int fd, void* buf, size_t len, uint64_t off, const std::string& what) {
  char* p = static_cast<char*>(buf);
  while (len > 0) {
    ssize_t n = pread(fd, p, len, static_cast<off_t>(off));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Errno("read %s at offset %lu", what.c_str(), static_cast<unsigned long>(off));
    if (n == 0)
      return MakeError(ErrorKind::kBadImage, 0, "%s: truncated at offset %lu", what.c_str(),
                       static_cast<unsigned long>(off));
    p += n;
    off += n;
    len -= n;
  }
  return Ok();
}

}  // namespace

Result<void> BlobWriter::AppendRawBlobFile(int fd, const std::string& what) {
  char h[format::kBlobHeaderSize];
  TRY(PreadAll(fd, h, sizeof(h), 0, what));
  if (memcmp(h, format::kBlobMagic, 8) != 0 || format::GetU32(h + 8) != kFormatVersion)
    return MakeError(ErrorKind::kBadImage, 0, "%s: not a blob of format %u", what.c_str(),
                     kFormatVersion);
  struct stat st;
  if (fstat(fd, &st) < 0) return Errno("stat %s", what.c_str());
  uint64_t size = st.st_size, off = sizeof(h), logical = 0;
  // Several chunks per Append: the compressing threads work on them in parallel.
  constexpr size_t kBatchChunks = 8;
  std::vector<char> buf(kBatchChunks * format::kMaxChunk);
  size_t used = 0;
  while (off < size) {
    format::ChunkHeader c;
    TRY(PreadAll(fd, &c, sizeof(c), off, what));
    if (c.kind != format::kChunkRaw || c.stored_len != c.logical_len ||
        c.logical_len > format::kMaxChunk || c.logical_off != logical ||
        off + sizeof(c) + c.stored_len > size)
      return MakeError(ErrorKind::kBadImage, 0, "%s: bad raw chunk at offset %lu", what.c_str(),
                       static_cast<unsigned long>(off));
    if (used + c.logical_len > buf.size()) {
      TRY(Append(buf.data(), used));
      used = 0;
    }
    TRY(PreadAll(fd, buf.data() + used, c.logical_len, off + sizeof(c), what));
    if (Crc32c(0, buf.data() + used, c.logical_len) != c.crc32c)
      return MakeError(ErrorKind::kBadImage, 0, "%s: chunk at offset %lu: checksum mismatch",
                       what.c_str(), static_cast<unsigned long>(off));
    used += c.logical_len;
    logical += c.logical_len;
    off += sizeof(c) + c.stored_len;
  }
  if (used > 0) TRY(Append(buf.data(), used));
  return Ok();
}

BlobWriter::~BlobWriter() = default;

Result<void> BlobWriter::SetThreads(int n) {
  if (n < 1 || n > 64)
    return MakeError(ErrorKind::kUsage, 0, "blob %s: %d threads", name_.c_str(), n);
  pool_.reset();
  if (n == 1 || comp_ != Compression::kZstd) return Ok();
  pool_.reset(new Pool);
  pool_->owner = this;
  // Two slots per thread: workers keep compressing while the caller writes finished chunks.
  pool_->slots.resize(2 * n);
  for (int i = 0; i < n - 1; i++) pool_->threads.emplace_back([p = pool_.get()] { p->Run(); });
  return Ok();
}

Result<void> BlobWriter::PutChunk(uint32_t kind, const void* stored, uint32_t stored_len,
                                  uint32_t logical_len) {
  format::ChunkHeader h;
  h.kind = kind;
  h.logical_len = logical_len;
  h.logical_off = emitted_;
  h.stored_len = stored_len;
  h.crc32c = Crc32c(0, stored, stored_len);
  TRY_CTX(out_->Write(&h, sizeof(h)), "blob %s", name_.c_str());
  TRY_CTX(out_->WriteChecked(stored, stored_len, h.crc32c), "blob %s", name_.c_str());
  emitted_ += logical_len;
  stored_ += sizeof(h) + stored_len;
  return Ok();
}

Result<void> BlobWriter::CompressOne(void* cctx, const Piece& p, std::vector<char>* out,
                                     size_t* zlen) {
  size_t bound = ZSTD_compressBound(p.len);
  if (out->size() < bound) out->resize(bound);
  size_t z = ZSTD_compressCCtx(static_cast<ZSTD_CCtx*>(cctx), out->data(), out->size(), p.data,
                               p.len, level_);
  if (ZSTD_isError(z))
    return MakeError(ErrorKind::kGeneric, 0, "blob %s: zstd: %s", name_.c_str(),
                     ZSTD_getErrorName(z));
  *zlen = z;
  return Ok();
}

// Writes pieces (each at most one chunk) as chunks, in order.
Result<void> BlobWriter::Emit(const std::vector<Piece>& pieces) {
  // Incompressible data (already compressed, random) is stored raw: smaller and faster to
  // restore.
  auto put = [&](const Piece& p, const char* z, size_t zlen) -> Result<void> {
    if (z && zlen < p.len)
      return PutChunk(format::kChunkZstd, z, static_cast<uint32_t>(zlen), p.len);
    return PutChunk(format::kChunkRaw, p.data, p.len, p.len);
  };
  if (comp_ != Compression::kZstd) {
    for (const Piece& p : pieces) TRY(put(p, nullptr, 0));
    return Ok();
  }
  if (!pool_ || pieces.size() < 2) {
    for (const Piece& p : pieces) {
      size_t zlen;
      TRY(CompressOne(cctx_.get(), p, &scratch_, &zlen));
      TRY(put(p, scratch_.data(), zlen));
    }
    return Ok();
  }
  Pool& pool = *pool_;
  {
    std::lock_guard<std::mutex> l(pool.mu);
    pool.owner = this;  // the writer may have moved since SetThreads
    pool.pieces = &pieces;
    pool.total = pieces.size();
    pool.next = pool.written = 0;
    for (auto& slot : pool.slots) slot.done = false;
  }
  pool.work_cv.notify_all();
  Result<void> failed;
  std::unique_lock<std::mutex> l(pool.mu);
  while (pool.written < pool.total) {
    Pool::Slot& s = pool.slots[pool.written % pool.slots.size()];
    if (s.done) {
      // Write it (after a failure, only drain: workers may still use the caller's data).
      l.unlock();
      if (failed.ok()) {
        if (!s.err.empty())
          failed = MakeError(ErrorKind::kGeneric, 0, "%s", s.err.c_str());
        else
          failed = put(pieces[pool.written], s.out.data(), s.zlen);
      }
      l.lock();
      s.done = false;
      s.err.clear();
      pool.written++;
      pool.work_cv.notify_all();  // a slot is free
    } else if (pool.CanTake()) {
      size_t j = pool.next++;
      l.unlock();
      pool.Compress(cctx_.get(), j);
      l.lock();
    } else {
      pool.done_cv.wait(l, [&] { return s.done; });
    }
  }
  // Every piece is written or drained: no worker touches the caller's data any more.
  pool.total = pool.next = pool.written = 0;
  pool.pieces = nullptr;
  return failed;
}

Result<uint64_t> BlobWriter::Append(const void* data, size_t len) {
  if (!out_) return MakeError(ErrorKind::kGeneric, 0, "blob %s: append after close", name_.c_str());
  uint64_t start = logical_;
  const char* p = static_cast<const char*>(data);
  std::vector<Piece> pieces;
  // Top up what is gathered first; a full gather buffer becomes the first chunk.
  if (!gather_.empty()) {
    size_t n = std::min(len, format::kMaxChunk - gather_.size());
    gather_.insert(gather_.end(), p, p + n);
    p += n;
    len -= n;
    if (gather_.size() == format::kMaxChunk) pieces.push_back({gather_.data(), format::kMaxChunk});
  }
  // Whole chunks straight from the caller's buffer; a large tail too when raw (no copy).
  if (gather_.empty() || gather_.size() == format::kMaxChunk) {
    while (len >= format::kMaxChunk || (len >= kDirectMin && comp_ == Compression::kNone)) {
      uint32_t n = static_cast<uint32_t>(std::min<size_t>(len, format::kMaxChunk));
      pieces.push_back({p, n});
      p += n;
      len -= n;
    }
  }
  logical_ += (p - static_cast<const char*>(data));
  TRY(Emit(pieces));
  if (!gather_.empty() && gather_.size() == format::kMaxChunk) gather_.clear();
  if (len > 0) {
    if (gather_.capacity() < format::kMaxChunk) gather_.reserve(format::kMaxChunk);
    gather_.insert(gather_.end(), p, p + len);
    logical_ += len;
  }
  return start;
}

Result<void> BlobWriter::Reserve(uint64_t logical_bytes) {
  if (!out_)
    return MakeError(ErrorKind::kGeneric, 0, "blob %s: reserve after close", name_.c_str());
  uint64_t chunks = logical_bytes / format::kMaxChunk + 2;
  uint64_t bytes = logical_bytes + chunks * sizeof(format::ChunkHeader);
  TRY_CTX(out_->Reserve(bytes), "blob %s", name_.c_str());
  return Ok();
}

Result<bool> BlobWriter::AppendExternal(size_t len, External* ext) {
  if (!out_) return MakeError(ErrorKind::kGeneric, 0, "blob %s: append after close", name_.c_str());
  if (comp_ != Compression::kNone || !gather_.empty() || len == 0 || out_->fd() < 0) return false;
  size_t n = (len + format::kMaxChunk - 1) / format::kMaxChunk;
  ASSIGN_OR_RETURN(int64_t off, out_->ExtendExternal(len + n * sizeof(format::ChunkHeader)));
  if (off < 0) return false;
  ext->logical_off = logical_;
  ext->chunks.clear();
  uint64_t pos = static_cast<uint64_t>(off);
  while (len > 0) {
    uint32_t c = static_cast<uint32_t>(std::min<size_t>(len, format::kMaxChunk));
    ext->chunks.push_back({pos, c, emitted_});
    pos += sizeof(format::ChunkHeader) + c;
    len -= c;
    emitted_ += c;
    logical_ += c;
    stored_ += sizeof(format::ChunkHeader) + c;
  }
  return true;
}

Result<void> BlobWriter::CommitExternal(const External& ext) {
  if (!out_) return MakeError(ErrorKind::kGeneric, 0, "blob %s: commit after close", name_.c_str());
  int fd = out_->fd();
  if (readback_.size() < format::kMaxChunk) readback_.resize(format::kMaxChunk);
  for (const auto& c : ext.chunks) {
    // The data was written by another process: read it back (hot in the page cache) to
    // checksum what the file holds. (Through a mapping of the batch instead: no faster in the
    // dump here, measured in paired runs, issue 13.)
    uint64_t data_off = c.header_off + sizeof(format::ChunkHeader);
    for (uint32_t got = 0; got < c.len;) {
      ssize_t n = pread(fd, readback_.data() + got, c.len - got, static_cast<off_t>(data_off + got));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return Errno("blob %s: read back at %lu", name_.c_str(), (unsigned long)data_off);
      if (n == 0)
        return MakeError(ErrorKind::kGeneric, 0, "blob %s: external data missing at offset %lu",
                         name_.c_str(), static_cast<unsigned long>(data_off + got));
      got += static_cast<uint32_t>(n);
    }
    format::ChunkHeader h;
    h.kind = format::kChunkRaw;
    h.logical_len = c.len;
    h.logical_off = c.logical_off;
    h.stored_len = c.len;
    h.crc32c = Crc32c(0, readback_.data(), c.len);
    TRY_CTX(out_->WriteAt(c.header_off, &h, sizeof(h)), "blob %s", name_.c_str());
    out_->AddChecksum(Crc32c(0, &h, sizeof(h)), sizeof(h));
    out_->AddChecksum(h.crc32c, c.len);
  }
  return Ok();
}

Result<void> BlobWriter::CommitExternal(const External& ext, const std::vector<uint32_t>& crcs) {
  if (!out_) return MakeError(ErrorKind::kGeneric, 0, "blob %s: commit after close", name_.c_str());
  if (crcs.size() != ext.chunks.size())
    return MakeError(ErrorKind::kGeneric, 0, "blob %s: %zu checksums for %zu chunks", name_.c_str(),
                     crcs.size(), ext.chunks.size());
  for (size_t i = 0; i < ext.chunks.size(); ++i) {
    const auto& c = ext.chunks[i];
    format::ChunkHeader h;
    h.kind = format::kChunkRaw;
    h.logical_len = c.len;
    h.logical_off = c.logical_off;
    h.stored_len = c.len;
    h.crc32c = crcs[i];
    TRY_CTX(out_->WriteAt(c.header_off, &h, sizeof(h)), "blob %s", name_.c_str());
    out_->AddChecksum(Crc32c(0, &h, sizeof(h)), sizeof(h));
    out_->AddChecksum(h.crc32c, c.len);
  }
  return Ok();
}

Result<void> BlobWriter::Close() {
  if (!out_) return MakeError(ErrorKind::kGeneric, 0, "blob %s: closed twice", name_.c_str());
  Result<void> r;
  if (!gather_.empty()) r = Emit({{gather_.data(), static_cast<uint32_t>(gather_.size())}});
  gather_.clear();
  if (r.ok()) r = out_->Close();
  out_.reset();
  pool_.reset();
  cctx_.reset();
  scratch_ = {};
  gather_ = {};
  TRY_CTX(std::move(r), "blob %s", name_.c_str());
  return Ok();
}

}  // namespace godwit::images
