// The image layer: round trips of object images, blobs and inventories through a directory sink,
// and every kind of bad input (truncation, corruption, wrong magic or version, missing files,
// absurd lengths) failing with kBadImage, the file name and the offset.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <signal.h>

#include <map>
#include <random>

#include "common/fs.h"
#include "images/crc32c.h"
#include "images/format.h"
#include "images/image.h"
#include "images/precheck.h"

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

TEST(ImagesCrc32c, KnownVectorsAndPaths) {
  EXPECT_EQ(Crc32c(0, "123456789", 9), 0xe3069283u);
  EXPECT_EQ(Crc32cSoftware(0, "123456789", 9), 0xe3069283u);
  std::string data = RandomBytes(100000, 1);
  // Around the folding path's threshold and round (256 bytes) too.
  for (size_t len : {0ul, 1ul, 7ul, 8ul, 255ul, 256ul, 257ul, 263ul, 511ul, 512ul, 767ul, 4095ul,
                     12288ul, 12289ul, 40000ul, 100000ul}) {
    for (size_t start : {0ul, 1ul, 3ul, 13ul}) {
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
TEST_F(ImagesTest, BlobLarge) {
  BlobRoundTrip(dir_, Compression::kNone, (64 << 20) + 12345, false);
}

// Small appends are gathered into whole chunks, any thread count gives the same file, and
// offsets returned by Append are right whatever the mix of sizes.
TEST_F(ImagesTest, BlobGatherAndThreads) {
  std::string data = RandomBytes(11 << 20, 5);
  for (size_t i = 0; i < data.size(); i += 2) data[i] = 0;  // compressible
  std::vector<size_t> sizes = {4096, 4096, 100, 5 << 20, 4096, 300 << 10, 1, 9 << 20};
  std::string files[3];
  int variant = 0;
  for (auto [c, threads] : {std::pair{Compression::kZstd, 1}, std::pair{Compression::kZstd, 3},
                            std::pair{Compression::kNone, 1}}) {
    SCOPED_TRACE(threads);
    auto sink = OpenDirSink(dir_);
    ASSERT_TRUE(sink.ok());
    auto w = BlobWriter::Create(**sink, "pages.img", c, 1);
    ASSERT_TRUE(w.ok());
    ASSERT_TRUE(w->SetThreads(threads).ok());
    size_t off = 0;
    for (size_t i = 0; off < data.size(); i++) {
      size_t n = std::min(sizes[i % sizes.size()], data.size() - off);
      auto at = w->Append(data.data() + off, n);
      ASSERT_TRUE(at.ok());
      ASSERT_EQ(*at, off);
      off += n;
      ASSERT_EQ(w->logical_size(), off);
    }
    ASSERT_TRUE(w->Close().ok());
    ASSERT_TRUE((*sink)->Finish(NewInventory()).ok());
    files[variant++] = *fs::ReadFile(Path("pages.img"));
    auto set = ImageSet::Open(dir_);
    ASSERT_TRUE(set.ok());
    auto b = set->OpenBlob("pages.img");
    ASSERT_TRUE(b.ok());
    auto st = (*b)->stats();
    // 4 KiB appends did not become 4 KiB chunks.
    EXPECT_LE(st.chunks, data.size() / format::kMaxChunk + 8);
    std::string back(data.size(), '\0');
    ASSERT_TRUE((*b)->Read(0, back.data(), back.size()).ok());
    EXPECT_TRUE(back == data);
    // Page-sized reads, as a restorer of scattered pages does.
    for (size_t o = 0; o < data.size(); o += 4096 * 37) {
      char page[4096];
      size_t n = std::min<size_t>(4096, data.size() - o);
      ASSERT_TRUE((*b)->Read(o, page, n).ok());
      ASSERT_EQ(memcmp(page, data.data() + o, n), 0);
    }
  }
  EXPECT_TRUE(files[0] == files[1]) << "thread count changed the file";
  EXPECT_LT(files[0].size(), files[2].size());
}

TEST_F(ImagesTest, EdgeCases) {
  EXPECT_EQ(Crc32cCombine(0x12345678, 0, 0), 0x12345678u);
  auto sink = OpenDirSink(dir_);
  ASSERT_TRUE(sink.ok());
  auto w = BlobWriter::Create(**sink, "empty-blob.img", Compression::kZstd);
  ASSERT_TRUE(w.ok());
  auto at = w->Append("", 0);
  ASSERT_TRUE(at.ok());
  EXPECT_EQ(*at, 0u);
  ASSERT_TRUE(w->Close().ok());
  EXPECT_FALSE(w->Close().ok());
  EXPECT_FALSE(w->Append("x", 1).ok());
  EXPECT_FALSE(BlobWriter::Create(**sink, "bad-level.img", Compression::kZstd, 99).ok());
  auto iw = ImageWriter::Create(**sink, "x.img");
  ASSERT_TRUE(iw.ok());
  ASSERT_TRUE(iw->Close().ok());
  EXPECT_FALSE(iw->Close().ok());
  EXPECT_FALSE(iw->Write(File("a", 1)).ok());
  ASSERT_TRUE((*sink)->Finish(NewInventory()).ok());
  EXPECT_FALSE((*sink)->Finish(NewInventory()).ok());
  auto set = ImageSet::Open(dir_);
  ASSERT_TRUE(set.ok());
  auto b = set->OpenBlob("empty-blob.img");
  ASSERT_TRUE(b.ok());
  EXPECT_EQ((*b)->logical_size(), 0u);
  EXPECT_TRUE((*b)->Read(0, nullptr, 0).ok());
  char c;
  EXPECT_FALSE((*b)->Read(0, &c, 1).ok());
  // An object image is not a blob and vice versa.
  auto wrong = set->OpenBlob("x.img");
  ASSERT_FALSE(wrong.ok());
  EXPECT_EQ(wrong.error().kind(), ErrorKind::kBadImage);
  auto wrong2 = set->OpenImage("empty-blob.img");
  ASSERT_FALSE(wrong2.ok());
  EXPECT_EQ(wrong2.error().kind(), ErrorKind::kBadImage);
  // The user's directory argument that does not exist is "not found", not a bad image.
  auto none = ImageSet::Open(dir_ + "/nope");
  ASSERT_FALSE(none.ok());
  EXPECT_EQ(none.error().kind(), ErrorKind::kNotFound);
}

// Writers only stream through Output (no seeking, no knowledge of files): any Sink works, as a
// socket sink for live migration will. This one keeps every output in memory.
class MemorySink : public Sink {
 public:
  struct Out : Output {
    std::string* dst;
    bool closed = false;
    Result<void> Write(const void* d, size_t n) override {
      dst->append(static_cast<const char*>(d), n);
      return Ok();
    }
    Result<void> Close() override {
      closed = true;
      return Ok();
    }
  };
  Result<std::unique_ptr<Output>> Create(const std::string& name) override {
    auto o = std::make_unique<Out>();
    o->dst = &files[name];
    return std::unique_ptr<Output>(std::move(o));
  }
  Result<void> Finish(img::Inventory inv) override { return Ok(); }
  void Abort() override { files.clear(); }
  std::map<std::string, std::string> files;
};

TEST(Images, AnySinkWorks) {
  MemorySink sink;
  ASSERT_TRUE(WriteImage(sink, "one.img", File("x", 5)).ok());
  auto b = BlobWriter::Create(sink, "blob.img", Compression::kZstd);
  ASSERT_TRUE(b.ok());
  std::string data = RandomBytes(6 << 20, 4);
  ASSERT_TRUE(b->Append(data.data(), data.size()).ok());
  ASSERT_TRUE(b->Close().ok());
  auto r = ImageReader::FromBuffer("one.img", sink.files["one.img"]);
  ASSERT_TRUE(r.ok());
  img::ImageFile f;
  auto more = r->Next(&f);
  ASSERT_TRUE(more.ok() && *more);
  EXPECT_EQ(f.name(), "x");
  auto br = BlobReader::FromBuffer("blob.img", sink.files["blob.img"]);
  ASSERT_TRUE(br.ok());
  std::string back(data.size(), '\0');
  ASSERT_TRUE((*br)->Read(0, back.data(), back.size()).ok());
  EXPECT_TRUE(back == data);
}

TEST_F(ImagesTest, ReserveReleasesTheUnused) {
  auto sink = OpenDirSink(dir_);
  ASSERT_TRUE(sink.ok());
  auto w = BlobWriter::Create(**sink, "pages.img", Compression::kNone);
  ASSERT_TRUE(w.ok());
  ASSERT_TRUE(w->Reserve(64 << 20).ok());
  struct stat st;
  ASSERT_EQ(stat(Path("pages.img").c_str(), &st), 0);
  EXPECT_GE(st.st_blocks * 512, 64 << 20);  // allocated ahead (tmpfs supports fallocate)
  std::string data = RandomBytes(3 << 20, 2);
  ASSERT_TRUE(w->Append(data.data(), data.size()).ok());
  ASSERT_TRUE(w->Close().ok());
  ASSERT_TRUE((*sink)->Finish(NewInventory()).ok());
  ASSERT_EQ(stat(Path("pages.img").c_str(), &st), 0);
  EXPECT_LT(st.st_blocks * 512, 4 << 20);  // the rest was released
  auto set = ImageSet::Open(dir_);
  ASSERT_TRUE(set.ok()) << set.error().to_string();
  auto b = set->OpenBlob("pages.img");
  ASSERT_TRUE(b.ok());
  std::string back(data.size(), '\0');
  ASSERT_TRUE((*b)->Read(0, back.data(), back.size()).ok());
  EXPECT_TRUE(back == data);
}

// DirSinkOptions::touch_reserved: on tmpfs the reserved pages are written once (they exist), or
// only fallocated. Either way the reservation is allocated; touching writes zeros into it, which
// leaves the file's size at what was written once the output closes.
TEST_F(ImagesTest, ReserveWithoutTouchingOnlyAllocates) {
  for (bool touch : {true, false}) {
    DirSinkOptions o;
    o.touch_reserved = touch;
    std::string dir = dir_ + (touch ? "-touch" : "-notouch");
    auto sink = OpenDirSink(dir, o);
    ASSERT_TRUE(sink.ok());
    auto w = BlobWriter::Create(**sink, "pages.img", Compression::kNone);
    ASSERT_TRUE(w.ok());
    ASSERT_TRUE(w->Reserve(8 << 20).ok());
    struct stat st;
    ASSERT_EQ(stat((dir + "/pages.img").c_str(), &st), 0);
    EXPECT_GE(st.st_blocks * 512, 8 << 20) << "touch " << touch;
    // Touching writes zeros past the end: the file grows meanwhile; only fallocate keeps it.
    if (touch)
      EXPECT_GE(st.st_size, 8 << 20);
    else
      EXPECT_LT(st.st_size, 1 << 20);
    std::string data = RandomBytes(1 << 20, 3);
    ASSERT_TRUE(w->Append(data.data(), data.size()).ok());
    ASSERT_TRUE(w->Close().ok());
    ASSERT_TRUE((*sink)->Finish(NewInventory()).ok());
    // Both read back the same, checked through reads or through mappings.
    for (bool map : {false, true}) {
      ReadOptions ro;
      ro.map_checksums = map;
      auto set = ImageSet::Open(dir, ro);
      ASSERT_TRUE(set.ok()) << set.error().to_string();
      auto b = set->OpenBlob("pages.img");
      ASSERT_TRUE(b.ok());
      std::string back(data.size(), '\0');
      ASSERT_TRUE((*b)->Read(0, back.data(), back.size()).ok());
      EXPECT_TRUE(back == data);
    }
    (void)fs::RemoveAll(dir);
  }
}

// ReadOptions::map_checksums finds the same damage as reading (files of 4 MiB and more are
// checksummed through mappings then).
TEST_F(ImagesTest, MappedChecksumsFindDamage) {
  auto sink = OpenDirSink(dir_);
  ASSERT_TRUE(sink.ok());
  auto w = BlobWriter::Create(**sink, "big.img", Compression::kNone);
  ASSERT_TRUE(w.ok());
  std::string data = RandomBytes(9 << 20, 5);
  ASSERT_TRUE(w->Append(data.data(), data.size()).ok());
  ASSERT_TRUE(w->Close().ok());
  ASSERT_TRUE((*sink)->Finish(NewInventory()).ok());
  ReadOptions ro;
  ro.map_checksums = true;
  ASSERT_TRUE(ImageSet::Open(dir_, ro).ok());
  int fd = open(Path("big.img").c_str(), O_RDWR);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(pwrite(fd, "X", 1, 7 << 20), 1);
  close(fd);
  for (bool map : {false, true}) {
    ro.map_checksums = map;
    auto set = ImageSet::Open(dir_, ro);
    ASSERT_FALSE(set.ok()) << "map " << map;
    EXPECT_NE(set.error().message().find("big.img: checksum mismatch"), std::string::npos)
        << set.error().message();
  }
}

// ---- sinks

TEST_F(ImagesTest, AbortRemovesEverything) {
  {
    auto sink = OpenDirSink(dir_);
    ASSERT_TRUE(sink.ok());
    ASSERT_TRUE(WriteImage(**sink, "a.img", File("a", 1)).ok());
    auto w = BlobWriter::Create(**sink, "pages.img", Compression::kNone);
    ASSERT_TRUE(w.ok());
    ASSERT_TRUE(w->Append("xyz", 3).ok());
    (*sink)->Abort();
    auto after = (*sink)->Create("b.img");
    EXPECT_FALSE(after.ok());
  }
  EXPECT_FALSE(fs::Exists(Path("a.img")));
  EXPECT_FALSE(fs::Exists(Path("pages.img")));
  EXPECT_FALSE(fs::Exists(Path("inventory.img")));
  // A sink dropped without Finish aborts too.
  {
    auto sink = OpenDirSink(dir_);
    ASSERT_TRUE(sink.ok());
    ASSERT_TRUE(WriteImage(**sink, "a.img", File("a", 1)).ok());
    EXPECT_TRUE(fs::Exists(Path("a.img")));
  }
  EXPECT_FALSE(fs::Exists(Path("a.img")));
}

TEST_F(ImagesTest, OverwriteAndRefuse) {
  auto sink = OpenDirSink(dir_);
  ASSERT_TRUE(sink.ok());
  ASSERT_TRUE(WriteImage(**sink, "old.img", File("a", 1)).ok());
  ASSERT_TRUE((*sink)->Finish(NewInventory()).ok());
  ASSERT_TRUE(fs::WriteFile(Path("notes.txt"), "not ours").ok());
  auto refused = OpenDirSink(dir_, /*overwrite=*/false);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.error().kind(), ErrorKind::kExists);
  EXPECT_TRUE(fs::Exists(Path("old.img")));
  auto again = OpenDirSink(dir_, /*overwrite=*/true);
  ASSERT_TRUE(again.ok());
  EXPECT_FALSE(fs::Exists(Path("old.img")));
  EXPECT_FALSE(fs::Exists(Path("inventory.img")));
  EXPECT_TRUE(fs::Exists(Path("notes.txt")));  // not an image: left alone
  ASSERT_TRUE(WriteImage(**again, "new.img", File("b", 2)).ok());
  ASSERT_TRUE((*again)->Finish(NewInventory()).ok());
  auto set = ImageSet::Open(dir_);
  ASSERT_TRUE(set.ok());
  EXPECT_TRUE(set->Has("new.img"));
  EXPECT_FALSE(set->Has("old.img"));
}

TEST_F(ImagesTest, FinishChecksOutputs) {
  auto sink = OpenDirSink(dir_);
  ASSERT_TRUE(sink.ok());
  auto w = ImageWriter::Create(**sink, "open.img");
  ASSERT_TRUE(w.ok());
  ASSERT_TRUE(w->Write(File("a", 1)).ok());
  EXPECT_FALSE(ImageWriter::Create(**sink, "open.img").ok());  // twice
  EXPECT_FALSE(ImageWriter::Create(**sink, "../escape.img").ok());
  EXPECT_FALSE(ImageWriter::Create(**sink, "inventory.img").ok());
  auto early = (*sink)->Finish(NewInventory());
  ASSERT_FALSE(early.ok());
  EXPECT_NE(early.error().message().find("open.img"), std::string::npos);
  EXPECT_FALSE(fs::Exists(Path("inventory.img")));
  img::Inventory inv;
  EXPECT_FALSE(w->Write(inv).ok());  // one type per image
  ASSERT_TRUE(w->Close().ok());
  ASSERT_TRUE((*sink)->Finish(NewInventory()).ok());
  EXPECT_FALSE((*sink)->Create("late.img").ok());
}

// ---- bad input

class ImagesBadInput : public ImagesTest {
 protected:
  // A complete set: an object image with 3 records, a raw blob, a zstd blob.
  void SetUp() override {
    ImagesTest::SetUp();
    auto sink = OpenDirSink(dir_);
    ASSERT_TRUE(sink.ok());
    auto w = ImageWriter::Create(**sink, "core-1.img");
    ASSERT_TRUE(w.ok());
    for (int i = 0; i < 3; i++) ASSERT_TRUE(w->Write(File("record" + std::to_string(i), i)).ok());
    ASSERT_TRUE(w->Close().ok());
    for (auto [name, c] : {std::pair{"pages-1.img", Compression::kNone},
                           std::pair{"pages-2.img", Compression::kZstd}}) {
      auto b = BlobWriter::Create(**sink, name, c);
      ASSERT_TRUE(b.ok());
      std::string data(3 * format::kMaxChunk / 2, 'x');
      for (size_t i = 0; i < data.size(); i += 4096) data[i] = static_cast<char>(i >> 12);
      ASSERT_TRUE(b->Append(data.data(), data.size()).ok());
      ASSERT_TRUE(b->Close().ok());
    }
    ASSERT_TRUE((*sink)->Finish(NewInventory()).ok());
    ASSERT_TRUE(ImageSet::Open(dir_).ok());
  }

  void Truncate(const std::string& name, off_t size) {
    ASSERT_EQ(truncate(Path(name).c_str(), size), 0);
  }
  void Poke(const std::string& name, off_t off, const void* bytes, size_t n) {
    int fd = open(Path(name).c_str(), O_WRONLY);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(pwrite(fd, bytes, n, off), static_cast<ssize_t>(n));
    close(fd);
  }
  void Flip(const std::string& name, off_t off) {
    char c;
    int fd = open(Path(name).c_str(), O_RDWR);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(pread(fd, &c, 1, off), 1);
    c ^= 0x20;
    ASSERT_EQ(pwrite(fd, &c, 1, off), 1);
    close(fd);
  }
  off_t Size(const std::string& name) {
    struct stat st;
    return stat(Path(name).c_str(), &st) == 0 ? st.st_size : -1;
  }

  // Reads the whole set through the unverified path; returns the first error.
  Result<void> ReadAllUnverified() {
    ASSIGN_OR_RETURN(ImageSet set, ImageSet::OpenUnverified(dir_));
    ASSIGN_OR_RETURN(ImageReader r, set.OpenImage("core-1.img"));
    img::ImageFile f;
    for (;;) {
      ASSIGN_OR_RETURN(bool more, r.Next(&f));
      if (!more) break;
    }
    for (const char* name : {"pages-1.img", "pages-2.img"}) {
      ASSIGN_OR_RETURN(auto b, set.OpenBlob(name));
      std::string buf(b->logical_size(), '\0');
      TRY(b->Read(0, buf.data(), buf.size()));
    }
    return Ok();
  }
};

// The error is kBadImage and names the file and (where it applies) the offset.
void ExpectBad(const Result<void>& r, const std::string& file, bool offset = true) {
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().kind(), ErrorKind::kBadImage) << r.error().message();
  EXPECT_NE(r.error().message().find(file), std::string::npos) << r.error().message();
  if (offset) {
    EXPECT_NE(r.error().message().find("offset"), std::string::npos) << r.error().message();
  }
}

Result<void> OpenVerified(const std::string& dir) {
  auto s = ImageSet::Open(dir);
  if (!s.ok()) return std::move(s).error();
  return Ok();
}

TEST_F(ImagesBadInput, TruncatedAtHeader) {
  Truncate("core-1.img", 10);
  ExpectBad(OpenVerified(dir_), "core-1.img");
  auto r = ReadAllUnverified();
  ExpectBad(r, "core-1.img");
  EXPECT_NE(r.error().message().find("truncated header"), std::string::npos);
}

TEST_F(ImagesBadInput, TruncatedMidRecord) {
  Truncate("core-1.img", Size("core-1.img") - 3);
  ExpectBad(OpenVerified(dir_), "core-1.img");
  auto r = ReadAllUnverified();
  ExpectBad(r, "core-1.img");
  EXPECT_NE(r.error().message().find("truncated record"), std::string::npos);
}

TEST_F(ImagesBadInput, TruncatedMidChunk) {
  for (const char* name : {"pages-1.img", "pages-2.img"}) {
    SCOPED_TRACE(name);
    std::string orig = *fs::ReadFile(Path(name));
    Truncate(name, Size(name) - 1000);
    ExpectBad(OpenVerified(dir_), name);
    auto r = ReadAllUnverified();
    ExpectBad(r, name);
    EXPECT_NE(r.error().message().find("truncated chunk"), std::string::npos);
    ASSERT_TRUE(fs::WriteFile(Path(name), orig).ok());
  }
}

TEST_F(ImagesBadInput, TruncatedChunkHeader) {
  Truncate("pages-1.img", format::kBlobHeaderSize + 10);
  ExpectBad(ReadAllUnverified(), "pages-1.img");
}

TEST_F(ImagesBadInput, FlippedByteNamesFile) {
  Flip("pages-1.img", Size("pages-1.img") / 2);
  auto r = OpenVerified(dir_);
  ExpectBad(r, "pages-1.img", /*offset=*/false);
  EXPECT_NE(r.error().message().find("checksum"), std::string::npos);
  // Without the inventory's check, the chunk checksum catches it.
  auto u = ReadAllUnverified();
  ExpectBad(u, "pages-1.img");
  EXPECT_NE(u.error().message().find("checksum"), std::string::npos);
}

TEST_F(ImagesTest, DeferredVerification) {
  auto sink = OpenDirSink(dir_);
  ASSERT_TRUE(sink.ok());
  ASSERT_TRUE(WriteImage(**sink, "small.img", File("a", 1)).ok());
  auto w = BlobWriter::Create(**sink, "big.img", Compression::kNone);
  ASSERT_TRUE(w.ok());
  std::string data = RandomBytes(65 << 20, 9);
  ASSERT_TRUE(w->Append(data.data(), data.size()).ok());
  ASSERT_TRUE(w->Close().ok());
  ASSERT_TRUE((*sink)->Finish(NewInventory()).ok());
  {
    auto set = ImageSet::OpenDeferred(dir_);
    ASSERT_TRUE(set.ok()) << set.error().to_string();
    auto b = set->OpenBlob("big.img");
    ASSERT_TRUE(b.ok());
    EXPECT_TRUE(set->WaitVerified().ok());
    EXPECT_TRUE(set->WaitVerified().ok());  // twice is fine
  }
  auto unverified = ImageSet::OpenUnverified(dir_);
  ASSERT_TRUE(unverified.ok());
  EXPECT_FALSE(unverified->WaitVerified().ok());
  // Damage in the big file shows at WaitVerified, naming it.
  int fd = open(Path("big.img").c_str(), O_RDWR);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(pwrite(fd, "X", 1, 40 << 20), 1);
  close(fd);
  {
    auto set = ImageSet::OpenDeferred(dir_);
    ASSERT_TRUE(set.ok());
    auto r = set->WaitVerified();
    ExpectBad(r, "big.img", false);
  }
  // Damage in a small file fails at once.
  fd = open(Path("small.img").c_str(), O_RDWR);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(pwrite(fd, "X", 1, 20), 1);
  close(fd);
  auto set = ImageSet::OpenDeferred(dir_);
  ExpectBad(set.ok() ? Result<void>() : Result<void>(set.error()), "small.img", false);
}

TEST_F(ImagesBadInput, FlippedByteInZstdChunk) {
  Flip("pages-2.img", format::kBlobHeaderSize + sizeof(format::ChunkHeader) + 20);
  ExpectBad(OpenVerified(dir_), "pages-2.img", false);
  ExpectBad(ReadAllUnverified(), "pages-2.img");
}

TEST_F(ImagesBadInput, FlippedByteInRecord) {
  Flip("core-1.img", Size("core-1.img") - 2);
  ExpectBad(OpenVerified(dir_), "core-1.img", false);
}

TEST_F(ImagesBadInput, WrongMagic) {
  Poke("core-1.img", 0, "XODWITIM", 8);
  Poke("pages-1.img", 0, "GODWITXX", 8);
  ExpectBad(OpenVerified(dir_), "core-1.img", false);
  auto r = ReadAllUnverified();
  ExpectBad(r, "core-1.img");
  EXPECT_NE(r.error().message().find("magic"), std::string::npos);
  Poke("core-1.img", 0, "GODWITIM", 8);
  auto b = ReadAllUnverified();
  ExpectBad(b, "pages-1.img");
  EXPECT_NE(b.error().message().find("magic"), std::string::npos);
}

TEST_F(ImagesBadInput, WrongFormatVersion) {
  uint32_t v = kFormatVersion + 1;
  Poke("core-1.img", 8, &v, 4);
  Poke("pages-2.img", 8, &v, 4);
  auto r = ReadAllUnverified();
  ExpectBad(r, "core-1.img");
  EXPECT_NE(r.error().message().find("version"), std::string::npos);
  uint32_t ok = kFormatVersion;
  Poke("core-1.img", 8, &ok, 4);
  ExpectBad(ReadAllUnverified(), "pages-2.img");
  // The inventory's header version, then its format_version field.
  Poke("inventory.img", 8, &v, 4);
  auto inv = OpenVerified(dir_);
  ExpectBad(inv, "inventory.img");
  EXPECT_NE(inv.error().message().find("version"), std::string::npos);
}

TEST_F(ImagesBadInput, InventoryFormatVersionField) {
  auto data = fs::ReadFile(Path("inventory.img"));
  ASSERT_TRUE(data.ok());
  auto inv = ParseInventory("inventory.img", *data);
  ASSERT_TRUE(inv.ok());
  inv->set_format_version(kFormatVersion + 7);
  std::string body = inv->SerializeAsString();
  std::string img = format::ImageHeader(inv->GetTypeName(), kFormatVersion);
  char len[4];
  format::PutU32(len, body.size());
  img.append(len, 4);
  img += body;
  ASSERT_TRUE(fs::WriteFile(Path("inventory.img"), img).ok());
  auto r = OpenVerified(dir_);
  ExpectBad(r, "inventory.img");
  EXPECT_NE(r.error().message().find("version 8"), std::string::npos) << r.error().message();
}

TEST_F(ImagesBadInput, MissingInventory) {
  ASSERT_EQ(unlink(Path("inventory.img").c_str()), 0);
  auto r = OpenVerified(dir_);
  ExpectBad(r, "inventory.img", false);
  EXPECT_NE(r.error().message().find("not a complete checkpoint"), std::string::npos);
  auto u = ImageSet::OpenUnverified(dir_);
  ASSERT_FALSE(u.ok());
  EXPECT_EQ(u.error().kind(), ErrorKind::kBadImage);
}

TEST_F(ImagesBadInput, MissingListedFile) {
  ASSERT_EQ(unlink(Path("pages-2.img").c_str()), 0);
  auto r = OpenVerified(dir_);
  ExpectBad(r, "pages-2.img", false);
  auto set = ImageSet::OpenUnverified(dir_);
  ASSERT_TRUE(set.ok());
  auto errs = set->Verify();
  ASSERT_EQ(errs.size(), 1u);
  EXPECT_NE(errs[0].message().find("pages-2.img"), std::string::npos);
  auto b = set->OpenBlob("pages-2.img");
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(b.error().kind(), ErrorKind::kBadImage);
}

TEST_F(ImagesBadInput, NotARegularFile) {
  // A FIFO in place of an image must not block the reader.
  ASSERT_EQ(unlink(Path("core-1.img").c_str()), 0);
  ASSERT_EQ(mkfifo(Path("core-1.img").c_str(), 0600), 0);
  auto r = OpenVerified(dir_);
  ExpectBad(r, "core-1.img", false);
  EXPECT_NE(r.error().message().find("not a regular file"), std::string::npos);
  ExpectBad(ReadAllUnverified(), "core-1.img", false);
}

TEST_F(ImagesBadInput, AbsurdRecordLength) {
  std::string data = *fs::ReadFile(Path("core-1.img"));
  auto r0 = ImageReader::FromBuffer("core-1.img", data);
  ASSERT_TRUE(r0.ok());
  size_t first = r0->offset();
  uint32_t huge = 0xfffffff0;
  Poke("core-1.img", first, &huge, 4);
  auto r = ReadAllUnverified();
  ExpectBad(r, "core-1.img");
  EXPECT_NE(r.error().message().find(StrFormat("offset %zu", first)), std::string::npos)
      << r.error().message();
  uint32_t past_end = 1000;  // below the limit, beyond the file's end
  Poke("core-1.img", first, &past_end, 4);
  ExpectBad(ReadAllUnverified(), "core-1.img");
  uint32_t long_type = 0x7fffffff;
  Poke("core-1.img", 12, &long_type, 4);
  ExpectBad(ReadAllUnverified(), "core-1.img");
}

TEST_F(ImagesBadInput, AbsurdChunkFields) {
  const off_t h = format::kBlobHeaderSize;
  uint32_t huge = 0xffffffff;
  // stored length, logical length, logical offset, kind: each caught by the index builder.
  for (off_t field : {off_t{16}, off_t{4}, off_t{8}, off_t{0}}) {
    SCOPED_TRACE(field);
    std::string orig = *fs::ReadFile(Path("pages-2.img"));
    Poke("pages-2.img", h + field, &huge, 4);
    auto r = ReadAllUnverified();
    ExpectBad(r, "pages-2.img");
    EXPECT_NE(r.error().message().find(StrFormat("offset %lld", static_cast<long long>(h))),
              std::string::npos)
        << r.error().message();
    ASSERT_TRUE(fs::WriteFile(Path("pages-2.img"), orig).ok());
  }
  ASSERT_TRUE(ReadAllUnverified().ok());
}

TEST_F(ImagesBadInput, BadNamesInInventory) {
  auto data = fs::ReadFile(Path("inventory.img"));
  auto inv = ParseInventory("inventory.img", *data);
  ASSERT_TRUE(inv.ok());
  inv->mutable_files(0)->set_name("../../etc/passwd");
  std::string body = inv->SerializeAsString();
  std::string img = format::ImageHeader(inv->GetTypeName(), kFormatVersion);
  char len[4];
  format::PutU32(len, body.size());
  img.append(len, 4);
  img += body;
  ASSERT_TRUE(fs::WriteFile(Path("inventory.img"), img).ok());
  ExpectBad(OpenVerified(dir_), "inventory.img");
}

// Page file chunks checked ahead by a helper process (images/precheck.h): trusted while the file
// is the one checked, checked again once it changed, never past a bad chunk.
class ImagesPrecheck : public ImagesTest {
 protected:
  void SetUp() override {
    ImagesTest::SetUp();
    ForgetPrechecked();
    auto sink = OpenDirSink(dir_, true);
    ASSERT_TRUE(sink.ok());
    data_ = RandomBytes(7 * format::kMaxChunk / 2, 11);  // 4 raw chunks
    auto b = BlobWriter::Create(**sink, "pages-1-pre0.img", Compression::kNone);
    ASSERT_TRUE(b.ok());
    ASSERT_TRUE(b->Append(data_.data(), data_.size()).ok());
    ASSERT_TRUE(b->Close().ok());
    ASSERT_TRUE((*sink)->Finish(NewInventory()).ok());
  }
  void TearDown() override {
    ForgetPrechecked();
    ImagesTest::TearDown();
  }
  // Runs a helper over the blob; the chunks it registered.
  size_t Precheck() {
    auto p = Prechecker::Start();
    EXPECT_TRUE(p.ok());
    if (!p.ok()) return 0;
    pid_t pid = (*p)->pid();
    (*p)->Add(Path("pages-1-pre0.img"));
    (*p)->Add(Path("pages-1-pre0.img"));  // once per path
    (*p)->Add(Path("no-such-file.img"));
    size_t n = (*p)->Finish(/*wait_all=*/true);
    p->reset();
    EXPECT_EQ(kill(pid, 0), -1);  // reaped
    EXPECT_EQ(errno, ESRCH);
    return n;
  }
  Result<void> ReadBack() {
    ReadOptions o;
    o.chunk_checked_blobs = true;
    ASSIGN_OR_RETURN(ImageSet set, ImageSet::Open(dir_, o));
    if (set.Verified("pages-1-pre0.img"))
      return MakeError(ErrorKind::kGeneric, 0, "the blob counts as checked whole");
    ASSIGN_OR_RETURN(auto b, set.OpenBlob("pages-1-pre0.img"));
    std::string back(data_.size(), '\0');
    TRY(b->Read(0, back.data(), back.size()));
    if (back != data_) return MakeError(ErrorKind::kGeneric, 0, "read back differs");
    // VerifyRange (the restore's check of pieces read straight into place) too.
    TRY(b->VerifyRange(0, data_.size()));
    return Ok();
  }
  // Flips a byte of the blob's file where logical offset `at` is stored.
  void FlipLogical(uint64_t at) {
    auto b = BlobReader::OpenFile(Path("pages-1-pre0.img"), "pages-1-pre0.img", true);
    ASSERT_TRUE(b.ok());
    auto ext = (*b)->RawExtents(at, 1);
    ASSERT_TRUE(ext.ok());
    ASSERT_EQ(ext->size(), 1u);
    off_t off = static_cast<off_t>((*ext)[0].file_off);
    b->reset();
    int fd = open(Path("pages-1-pre0.img").c_str(), O_RDWR | O_CLOEXEC);
    ASSERT_GE(fd, 0);
    char c;
    ASSERT_EQ(pread(fd, &c, 1, off), 1);
    c ^= 0x20;
    ASSERT_EQ(pwrite(fd, &c, 1, off), 1);
    // And a modification time of its own: the write's could fall in the same clock tick as the
    // file's creation (the identity would not show the change).
    struct stat st;
    ASSERT_EQ(fstat(fd, &st), 0);
    timespec ts[2] = {{0, UTIME_OMIT}, {st.st_mtim.tv_sec + 1, st.st_mtim.tv_nsec}};
    ASSERT_EQ(futimens(fd, ts), 0);
    close(fd);
  }
  std::string data_;
};

TEST_F(ImagesPrecheck, ChunksCheckedAheadAreTrustedWhileTheFileIsTheSame) {
  EXPECT_EQ(Precheck(), 4u);
  EXPECT_EQ(PrecheckHits(), 0u);
  ASSERT_TRUE(ReadBack().ok());
  EXPECT_EQ(PrecheckHits(), 4u);
  int fd = open(Path("pages-1-pre0.img").c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  EXPECT_EQ(PrecheckedChunks(Path("pages-1-pre0.img"), fd).size(), 4u);
  // Another path to the same file is not the registered one.
  EXPECT_TRUE(PrecheckedChunks(dir_ + "//pages-1-pre0.img", fd).empty());
  close(fd);
  // A registered chunk's checksum is really not checked again: damage made after the check and
  // registered as the file's state (only the helper registers, and only while the file is the
  // one it read) goes unseen in that chunk, and is found in the others.
  FlipLogical(100);
  FlipLogical(format::kMaxChunk + 100);
  struct stat st;
  ASSERT_EQ(stat(Path("pages-1-pre0.img").c_str(), &st), 0);
  ForgetPrechecked();
  auto b = BlobReader::OpenFile(Path("pages-1-pre0.img"), "pages-1-pre0.img", false);
  ASSERT_TRUE(b.ok());
  auto first = (*b)->RawExtents(0, 1);
  ASSERT_TRUE(first.ok());
  NotePrechecked(Path("pages-1-pre0.img"), st, (*first)[0].file_off);
  b = BlobReader::OpenFile(Path("pages-1-pre0.img"), "pages-1-pre0.img", false);
  ASSERT_TRUE(b.ok());
  std::string part(4096, '\0');
  ASSERT_TRUE((*b)->Read(0, part.data(), part.size()).ok());
  EXPECT_NE(memcmp(part.data(), data_.data(), part.size()), 0);
  EXPECT_TRUE((*b)->VerifyRange(0, 4096).ok());
  ExpectBad((*b)->Read(format::kMaxChunk, part.data(), part.size()), "pages-1-pre0.img");
}

TEST_F(ImagesPrecheck, AFileChangedAfterItsCheckIsCheckedAgain) {
  ASSERT_EQ(Precheck(), 4u);
  // The third chunk damaged afterwards: its checksum is checked again, and fails.
  FlipLogical(data_.size() - 100);
  int fd = open(Path("pages-1-pre0.img").c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  EXPECT_TRUE(PrecheckedChunks(Path("pages-1-pre0.img"), fd).empty());
  close(fd);
  auto b = BlobReader::OpenFile(Path("pages-1-pre0.img"), "pages-1-pre0.img", false);
  ASSERT_TRUE(b.ok());
  std::string back(data_.size(), '\0');
  ExpectBad((*b)->Read(0, back.data(), back.size()), "pages-1-pre0.img");
  EXPECT_EQ(PrecheckHits(), 0u);
}

TEST_F(ImagesPrecheck, TheHelperStopsAtABadChunk) {
  // The second chunk is bad before the check: only the first is registered.
  FlipLogical(format::kMaxChunk + 4096);
  EXPECT_EQ(Precheck(), 1u);
  auto b = BlobReader::OpenFile(Path("pages-1-pre0.img"), "pages-1-pre0.img", false);
  ASSERT_TRUE(b.ok());
  std::string part(4096, '\0');
  ASSERT_TRUE((*b)->Read(0, part.data(), part.size()).ok());
  EXPECT_EQ(memcmp(part.data(), data_.data(), part.size()), 0);
  ExpectBad((*b)->Read(format::kMaxChunk, part.data(), part.size()), "pages-1-pre0.img");
  ExpectBad((*b)->VerifyRange(format::kMaxChunk, 4096), "pages-1-pre0.img");
}

}  // namespace
}  // namespace godwit::images
