// Writing object images and blobs. Object images are small (metadata); blobs carry the bulk
// (pages), so the blob path avoids copies: a raw chunk goes from the caller's buffer to the file
// in one writev with its header, and its checksum is computed once and reused for the file's.
#include <google/protobuf/message_lite.h>
#include <zstd.h>

#include <algorithm>

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

void BlobWriter::CctxFree::operator()(void* p) const { ZSTD_freeCCtx(static_cast<ZSTD_CCtx*>(p)); }

Result<BlobWriter> BlobWriter::Create(Sink& sink, const std::string& name, Compression c,
                                      int zstd_level) {
  BlobWriter w;
  w.name_ = name;
  w.comp_ = c;
  w.level_ = zstd_level;
  if (c == Compression::kZstd) {
    if (zstd_level < ZSTD_minCLevel() || zstd_level > ZSTD_maxCLevel())
      return MakeError(ErrorKind::kUsage, 0, "zstd level %d out of range [%d, %d]", zstd_level,
                       ZSTD_minCLevel(), ZSTD_maxCLevel());
    w.cctx_.reset(ZSTD_createCCtx());
    if (!w.cctx_) return MakeError(ErrorKind::kGeneric, ENOMEM, "blob %s: ZSTD_createCCtx", name.c_str());
    w.scratch_.resize(ZSTD_compressBound(format::kMaxChunk));
  }
  ASSIGN_OR_RETURN(w.out_, sink.Create(name));
  char h[format::kBlobHeaderSize];
  memcpy(h, format::kBlobMagic, 8);
  format::PutU32(h + 8, kFormatVersion);
  format::PutU32(h + 12, 0);
  TRY_CTX(w.out_->Write(h, sizeof(h)), "blob %s", name.c_str());
  w.stored_ = sizeof(h);
  return w;
}

BlobWriter::~BlobWriter() = default;

Result<void> BlobWriter::PutChunk(uint32_t kind, const void* stored, uint32_t stored_len,
                                  uint32_t logical_len) {
  format::ChunkHeader h;
  h.kind = kind;
  h.logical_len = logical_len;
  h.logical_off = logical_;
  h.stored_len = stored_len;
  h.crc32c = Crc32c(0, stored, stored_len);
  TRY_CTX(out_->Write(&h, sizeof(h)), "blob %s", name_.c_str());
  TRY_CTX(out_->WriteChecked(stored, stored_len, h.crc32c), "blob %s", name_.c_str());
  logical_ += logical_len;
  stored_ += sizeof(h) + stored_len;
  return Ok();
}

Result<uint64_t> BlobWriter::Append(const void* data, size_t len) {
  if (!out_) return MakeError(ErrorKind::kGeneric, 0, "blob %s: append after close", name_.c_str());
  uint64_t start = logical_;
  const char* p = static_cast<const char*>(data);
  while (len > 0) {
    uint32_t n = static_cast<uint32_t>(std::min<size_t>(len, format::kMaxChunk));
    if (comp_ == Compression::kZstd) {
      size_t z = ZSTD_compressCCtx(static_cast<ZSTD_CCtx*>(cctx_.get()), scratch_.data(),
                                   scratch_.size(), p, n, level_);
      if (ZSTD_isError(z))
        return MakeError(ErrorKind::kGeneric, 0, "blob %s: zstd: %s", name_.c_str(),
                         ZSTD_getErrorName(z));
      // Incompressible data (already compressed, random) is stored raw: smaller and faster to
      // restore.
      if (z < n)
        TRY(PutChunk(format::kChunkZstd, scratch_.data(), static_cast<uint32_t>(z), n));
      else
        TRY(PutChunk(format::kChunkRaw, p, n, n));
    } else {
      TRY(PutChunk(format::kChunkRaw, p, n, n));
    }
    p += n;
    len -= n;
  }
  return start;
}

Result<void> BlobWriter::Close() {
  if (!out_) return MakeError(ErrorKind::kGeneric, 0, "blob %s: closed twice", name_.c_str());
  auto r = out_->Close();
  out_.reset();
  cctx_.reset();
  scratch_ = {};
  TRY_CTX(std::move(r), "blob %s", name_.c_str());
  return Ok();
}

}  // namespace godwit::images
