// libFuzzer target for the image readers: every parser that reads untrusted image bytes. The
// first input byte picks the parser, the rest is the file:
//   0: object image (ImageReader::FromBuffer, then every record, decoded as the header's type
//      when this binary knows it)
//   1: blob file (BlobReader::FromBuffer: chunk index, then every chunk read and checked)
//   2: inventory (ParseInventory)
//   3: blob file as from a verified image set: chunk checksums are not checked, so arbitrary
//      bytes reach the zstd decoder and the raw copy paths
// Any crash, sanitizer report or leak is a bug; errors are the expected outcome.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "images/image.h"
#include "proto/inventory.pb.h"

using godwit::images::BlobReader;
using godwit::images::ImageReader;

namespace {

void FuzzObject(std::string data) {
  auto r = ImageReader::FromBuffer("fuzz.img", std::move(data));
  if (!r.ok()) return;
  godwit::img::Inventory inv;
  godwit::img::ImageFile file;
  for (int i = 0; i < 100000; i++) {
    // Alternate typed and raw reads: both must bound every length.
    google::protobuf::Message* msg =
        r->type_name() == inv.GetTypeName() ? static_cast<google::protobuf::Message*>(&inv) : &file;
    auto more = r->Next(msg);
    if (!more.ok() || !*more) return;
    std::string_view raw;
    auto m2 = r->NextRaw(&raw);
    if (!m2.ok() || !*m2) return;
  }
}

void FuzzBlob(std::string data, bool verified) {
  auto b = BlobReader::FromBuffer("fuzz-pages.img", std::move(data), verified);
  if (!b.ok()) return;
  uint64_t size = (*b)->logical_size();
  auto st = (*b)->stats();
  (void)st;
  // Read piecewise (chunk-sized and odd-sized) so a small input claiming gigabytes of logical
  // data cannot make the fuzzer allocate them.
  std::vector<char> buf(1 << 20);
  uint64_t off = 0;
  for (int i = 0; off < size && i < 64; i++) {
    size_t n = static_cast<size_t>(std::min<uint64_t>(buf.size() - (i % 7), size - off));
    if (!(*b)->Read(off, buf.data(), n).ok()) break;
    off += n;
  }
  (void)(*b)->RawExtents(size / 3, size / 3);
  (void)(*b)->RawFileOffset(size / 2, 1);
  (void)(*b)->Read(size, buf.data(), 1);  // beyond the end: an error, not a crash
}

void FuzzInventory(std::string data) {
  auto inv = godwit::images::ParseInventory("inventory.img", std::move(data));
  if (inv.ok()) (void)godwit::images::CheckCpuFeatures(*inv);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  std::string body(reinterpret_cast<const char*>(data) + 1, size - 1);
  switch (data[0] % 4) {
    case 0:
      FuzzObject(std::move(body));
      break;
    case 1:
      FuzzBlob(std::move(body), false);
      break;
    case 2:
      FuzzInventory(std::move(body));
      break;
    case 3:
      FuzzBlob(std::move(body), true);
      break;
  }
  return 0;
}
