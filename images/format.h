// The on-disk layout of image files (see docs/images.md). Everything is little-endian.
//
// Object image ("core-42.img", "inventory.img", ...):
//   "GODWITIM" | u32 format version | u32 type name length | type name (the protobuf message's
//   full name, "godwit.img.Inventory"; empty for an image with no records)
//   then records: u32 length | serialized message
//
// Blob file ("pages-42.img", ...):
//   "GODWITBL" | u32 format version | u32 flags (0)
//   then chunks: ChunkHeader | stored bytes
// A chunk's crc32c covers its stored bytes (the zstd frame for compressed chunks, so a reader
// checks integrity before it decompresses), chunks are contiguous in logical offsets starting at
// 0, and a raw chunk's stored length equals its logical length.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

namespace godwit::images::format {

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "the image format is little-endian");

inline constexpr char kImageMagic[8] = {'G', 'O', 'D', 'W', 'I', 'T', 'I', 'M'};
inline constexpr char kBlobMagic[8] = {'G', 'O', 'D', 'W', 'I', 'T', 'B', 'L'};
inline constexpr size_t kImageHeaderFixed = 16;  // magic, version, type name length
inline constexpr size_t kBlobHeaderSize = 16;    // magic, version, flags
inline constexpr uint32_t kMaxTypeName = 1024;
inline constexpr uint32_t kMaxRecord = 64u << 20;  // also the writer's limit
inline constexpr uint32_t kMaxChunk = 4u << 20;    // logical bytes per chunk

// Chunk kinds: the first word of every chunk header, so a damaged chunk stream is caught early.
inline constexpr uint32_t kChunkRaw = 0x57415243;   // "CRAW"
inline constexpr uint32_t kChunkZstd = 0x54535a43;  // "CZST"

struct ChunkHeader {
  uint32_t kind;
  uint32_t logical_len;
  uint64_t logical_off;
  uint32_t stored_len;
  uint32_t crc32c;  // of the stored bytes
};
static_assert(sizeof(ChunkHeader) == 24);

inline void PutU32(char* p, uint32_t v) { memcpy(p, &v, 4); }
inline uint32_t GetU32(const char* p) {
  uint32_t v;
  memcpy(&v, p, 4);
  return v;
}

inline std::string ImageHeader(std::string_view type_name, uint32_t version) {
  std::string h(kImageMagic, 8);
  h.resize(kImageHeaderFixed);
  PutU32(&h[8], version);
  PutU32(&h[12], static_cast<uint32_t>(type_name.size()));
  h.append(type_name);
  return h;
}

// The name of the inventory image: written last, its presence marks a complete image set.
inline constexpr char kInventoryName[] = "inventory.img";

}  // namespace godwit::images::format
