// The image layer: round trips of object images, blobs and inventories through a directory sink,
// and every kind of bad input (truncation, corruption, wrong magic or version, missing files,
// absurd lengths) failing with kBadImage, the file name and the offset.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <random>

#include "common/fs.h"
#include "images/crc32c.h"
#include "images/format.h"
#include "images/image.h"

namespace godwit::images {
namespace {

class ImagesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    static int n = 0;
    dir_ = StrFormat("/dev/shm/godwit-images-%d-%d", getpid(), n++);
    (void)fs::RemoveAll(dir_);
  }
  void TearDown() override { (void)fs::RemoveAll(dir_); }
  std::string Path(const std::string& name) { return dir_ + "/" + name; }

  std::string dir_;
};

std::string RandomBytes(size_t n, uint32_t seed) {
  std::mt19937_64 rng(seed);
  std::string s(n, '\0');
  for (size_t i = 0; i + 8 <= n; i += 8) {
    uint64_t v = rng();
    memcpy(&s[i], &v, 8);
  }
  for (size_t i = n & ~size_t{7}; i < n; i++) s[i] = static_cast<char>(rng());
  return s;
}

img::ImageFile File(const std::string& name, uint64_t size) {
  img::ImageFile f;
  f.set_name(name);
  f.set_size(size);
  f.set_crc32c(static_cast<uint32_t>(size * 7));
  return f;
}

TEST(Crc32c, KnownVectorsAndPaths) {
  EXPECT_EQ(Crc32c(0, "123456789", 9), 0xe3069283u);
  EXPECT_EQ(Crc32cSoftware(0, "123456789", 9), 0xe3069283u);
  std::string data = RandomBytes(100000, 1);
  for (size_t len : {0ul, 1ul, 7ul, 8ul, 4095ul, 12288ul, 12289ul, 40000ul, 100000ul}) {
    for (size_t start : {0ul, 1ul, 3ul}) {
      if (start + len > data.size()) continue;
      uint32_t sw = Crc32cSoftware(0, data.data() + start, len);
      EXPECT_EQ(Crc32c(0, data.data() + start, len), sw) << len << " " << start;
      // Incremental == one shot, and Combine == concatenation.
      size_t half = len / 3;
      uint32_t a = Crc32c(0, data.data() + start, half);
      EXPECT_EQ(Crc32c(a, data.data() + start + half, len - half), sw);
      uint32_t b = Crc32c(0, data.data() + start + half, len - half);
      EXPECT_EQ(Crc32cCombine(a, b, len - half), sw);
    }
  }
}

TEST_F(ImagesTest, ObjectImageRoundTrip) {
  auto sink = OpenDirSink(dir_);
  ASSERT_TRUE(sink.ok()) << sink.error().to_string();
  {
    auto w = ImageWriter::Create(**sink, "files.img");
    ASSERT_TRUE(w.ok());
    for (int i = 0; i < 1000; i++) ASSERT_TRUE(w->Write(File("f" + std::to_string(i), i)).ok());
    ASSERT_TRUE(w->Close().ok());
  }
  {
    auto w = ImageWriter::Create(**sink, "empty.img");
    ASSERT_TRUE(w.ok());
    ASSERT_TRUE(w->Close().ok());
  }
  ASSERT_TRUE(WriteImage(**sink, "one.img", File("single", 42)).ok());
  ASSERT_TRUE((*sink)->Finish(NewInventory()).ok());

  auto set = ImageSet::Open(dir_);
  ASSERT_TRUE(set.ok()) << set.error().to_string();
  EXPECT_EQ(set->inventory().files_size(), 3);
  EXPECT_EQ(set->inventory().format_version(), kFormatVersion);
  EXPECT_TRUE(set->Has("files.img"));
  EXPECT_FALSE(set->Has("nope.img"));
  auto r = set->OpenImage("files.img");
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  EXPECT_EQ(r->type_name(), "godwit.img.ImageFile");
  img::ImageFile f;
  int n = 0;
  for (;;) {
    auto more = r->Next(&f);
    ASSERT_TRUE(more.ok()) << more.error().to_string();
    if (!*more) break;
    EXPECT_EQ(f.name(), "f" + std::to_string(n));
    EXPECT_EQ(f.size(), static_cast<uint64_t>(n));
    n++;
  }
  EXPECT_EQ(n, 1000);
  auto e = set->OpenImage("empty.img");
  ASSERT_TRUE(e.ok());
  EXPECT_EQ(e->type_name(), "");
  auto more = e->Next(&f);
  ASSERT_TRUE(more.ok());
  EXPECT_FALSE(*more);
  ASSERT_TRUE(set->ReadOne("one.img", &f).ok());
  EXPECT_EQ(f.name(), "single");
  // ReadOne of a many-record image, and reading records as the wrong type, are errors.
  auto many = set->ReadOne("files.img", &f);
  ASSERT_FALSE(many.ok());
  EXPECT_EQ(many.error().kind(), ErrorKind::kBadImage);
  img::Inventory inv;
  auto wrong = set->ReadOne("one.img", &inv);
  ASSERT_FALSE(wrong.ok());
  EXPECT_EQ(wrong.error().kind(), ErrorKind::kBadImage);
  auto missing = set->OpenImage("nope.img");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.error().kind(), ErrorKind::kBadImage);
}

TEST_F(ImagesTest, InventoryDescribesMachineAndFiles) {
  auto sink = OpenDirSink(dir_);
  ASSERT_TRUE(sink.ok());
  ASSERT_TRUE(WriteImage(**sink, "a.img", File("a", 1)).ok());
  ASSERT_TRUE((*sink)->Finish(NewInventory()).ok());
  auto set = ImageSet::Open(dir_);
  ASSERT_TRUE(set.ok());
  const auto& inv = set->inventory();
  EXPECT_FALSE(inv.kernel_release().empty());
  EXPECT_EQ(inv.godwit_version(), GODWIT_VERSION);
  EXPECT_GT(inv.created_unix_ns(), 1600000000ull * 1000000000ull);
  auto feats = CpuFeatures();
  EXPECT_NE(std::find(feats.begin(), feats.end(), "sse2"), feats.end());
  EXPECT_EQ(inv.cpu_features_size(), static_cast<int>(feats.size()));
  EXPECT_EQ(inv.xcr0(), Xcr0());
  EXPECT_NE(inv.xcr0() & 3, 0u);  // x87 and SSE state on any x86-64 with OSXSAVE
  ASSERT_EQ(inv.files_size(), 1);
  std::string data = *fs::ReadFile(Path("a.img"));
  EXPECT_EQ(inv.files(0).size(), data.size());
  EXPECT_EQ(inv.files(0).crc32c(), Crc32c(0, data.data(), data.size()));
  EXPECT_TRUE(CheckCpuFeatures(inv).ok());
  img::Inventory alien = inv;
  alien.add_cpu_features("quantum_tunneling");
  alien.set_xcr0(inv.xcr0() | (1ull << 62));
  auto r = CheckCpuFeatures(alien);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().kind(), ErrorKind::kUnsupported);
  EXPECT_NE(r.error().message().find("quantum_tunneling"), std::string::npos);
  EXPECT_NE(r.error().message().find("xsave"), std::string::npos);
}

void BlobRoundTrip(const std::string& dir, Compression c, size_t total, bool compressible) {
  auto sink = OpenDirSink(dir);
  ASSERT_TRUE(sink.ok());
  std::string data = RandomBytes(total, 7);
  if (compressible)
    for (size_t i = 0; i < total; i++)
      if ((i / 512) % 2) data[i] = static_cast<char>(i / 4096);
  auto w = BlobWriter::Create(**sink, "pages-1.img", c, 1);
  ASSERT_TRUE(w.ok()) << w.error().to_string();
  // Appends of odd sizes so that chunks and appends do not line up.
  std::vector<std::pair<uint64_t, size_t>> pieces;
  size_t off = 0, step = 3 * 1024 * 1024 + 17;
  while (off < total) {
    size_t n = std::min(step, total - off);
    auto at = w->Append(data.data() + off, n);
    ASSERT_TRUE(at.ok());
    EXPECT_EQ(*at, off);
    pieces.push_back({off, n});
    off += n;
    step = step * 7 / 5 % (9 << 20) + 1;
  }
  EXPECT_EQ(w->logical_size(), total);
  ASSERT_TRUE(w->Close().ok());
  ASSERT_TRUE((*sink)->Finish(NewInventory()).ok());

  for (bool verified : {true, false}) {
    auto set = verified ? ImageSet::Open(dir) : ImageSet::OpenUnverified(dir);
    ASSERT_TRUE(set.ok()) << set.error().to_string();
    auto b = set->OpenBlob("pages-1.img");
    ASSERT_TRUE(b.ok()) << b.error().to_string();
    EXPECT_EQ((*b)->logical_size(), total);
    auto st = (*b)->stats();
    EXPECT_EQ(st.logical_bytes, total);
    EXPECT_GE(st.chunks, total / format::kMaxChunk);
    if (c == Compression::kZstd && compressible) {
      EXPECT_EQ(st.zstd_chunks, st.chunks);
      EXPECT_LT(st.stored_bytes, total * 3 / 4);
    } else {
      EXPECT_EQ(st.zstd_chunks, 0u);  // random data is stored raw even when zstd was asked
    }
    std::string back(total, '\0');
    ASSERT_TRUE((*b)->Read(0, back.data(), total).ok());
    EXPECT_TRUE(back == data);
    // Reads crossing chunk boundaries and partial chunks.
    std::mt19937 rng(3);
    for (int i = 0; i < 50; i++) {
      uint64_t o = rng() % total;
      size_t n = std::min<size_t>(rng() % (6 << 20), total - o);
      std::string part(n, '\0');
      ASSERT_TRUE((*b)->Read(o, part.data(), n).ok());
      ASSERT_TRUE(memcmp(part.data(), data.data() + o, n) == 0) << o << " " << n;
    }
    auto beyond = (*b)->Read(total - 1, back.data(), 2);
    ASSERT_FALSE(beyond.ok());
    EXPECT_EQ(beyond.error().kind(), ErrorKind::kBadImage);
    if (c == Compression::kNone) {
      // Raw extents point at the bytes in the file.
      // Appends start new chunks: pieces[1] begins at a chunk boundary.
      uint64_t edge = pieces[1].first;
      auto ext = (*b)->RawExtents(edge - 100, 200);
      ASSERT_TRUE(ext.ok());
      ASSERT_EQ(ext->size(), 2u);
      char got[200];
      ASSERT_EQ(pread((*b)->fd(), got, 100, (*ext)[0].file_off), 100);
      ASSERT_EQ(pread((*b)->fd(), got + 100, 100, (*ext)[1].file_off), 100);
      EXPECT_EQ(memcmp(got, data.data() + edge - 100, 200), 0);
      auto fo = (*b)->RawFileOffset(5000, 4096);
      ASSERT_TRUE(fo.ok());
      ASSERT_EQ(pread((*b)->fd(), got, 100, *fo), 100);
      EXPECT_EQ(memcmp(got, data.data() + 5000, 100), 0);
      EXPECT_FALSE((*b)->RawFileOffset(edge - 100, 200).ok());
    }
  }
}

TEST_F(ImagesTest, BlobRawRoundTrip) { BlobRoundTrip(dir_, Compression::kNone, 20 << 20, false); }
TEST_F(ImagesTest, BlobZstdRoundTrip) { BlobRoundTrip(dir_, Compression::kZstd, 20 << 20, true); }
TEST_F(ImagesTest, BlobZstdIncompressibleStoredRaw) {
  BlobRoundTrip(dir_, Compression::kZstd, 9 << 20, false);
}
TEST_F(ImagesTest, BlobLarge) { BlobRoundTrip(dir_, Compression::kNone, (64 << 20) + 12345, false); }

}  // namespace
}  // namespace godwit::images
