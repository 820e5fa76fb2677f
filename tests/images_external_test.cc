// The blob writer's paths added for the page dump: external appends (the data written into the
// file by someone else, checksummed at commit) and compressing a finished image set
// (Sink::CompressFinished), including its failure, which must leave the raw set complete.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <random>

#include "common/fs.h"
#include "images/crc32c.h"
#include "images/format.h"
#include "images/image.h"

namespace godwit::images {
namespace {

class ImagesExternal : public ::testing::Test {
 protected:
  void SetUp() override {
    static int n = 0;
    dir_ = StrFormat("/dev/shm/godwit-imgext-%d-%d", getpid(), n++);
    (void)fs::RemoveAll(dir_);
  }
  void TearDown() override { (void)fs::RemoveAll(dir_); }
  std::string dir_;
};

// Half compressible, half random; odd length.
std::string Data(size_t n) {
  std::mt19937_64 rng(7);
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) s[i] = i < n / 2 ? static_cast<char>('a' + i % 13) : rng();
  return s;
}

// Writes "blob.img": an external append of data[0, ext) written with pwrite at the offsets
// handed out, then an Append of the rest (gathered: no external append until it is written).
void WriteMixed(Sink& sink, const std::string& data, size_t ext_len, bool short_tail = false) {
  auto w = BlobWriter::Create(sink, "blob.img", Compression::kNone);
  ASSERT_TRUE(w.ok());
  BlobWriter::External e;
  auto ok = w->AppendExternal(ext_len, &e);
  ASSERT_TRUE(ok.ok() && *ok);
  EXPECT_EQ(e.logical_off, 0u);
  EXPECT_EQ(e.chunks.size(), (ext_len + format::kMaxChunk - 1) / format::kMaxChunk);
  size_t at = 0;
  for (const auto& c : e.chunks) {
    ASSERT_EQ(pwrite(w->fd(), data.data() + at, c.len, c.header_off + sizeof(format::ChunkHeader)),
              static_cast<ssize_t>(c.len));
    at += c.len;
  }
  ASSERT_TRUE(w->CommitExternal(e).ok());
  auto off = w->Append(data.data() + at, data.size() - at);
  ASSERT_TRUE(off.ok());
  EXPECT_EQ(*off, at);
  if (short_tail) {
    ok = w->AppendExternal(4096, &e);
    ASSERT_TRUE(ok.ok());
    EXPECT_FALSE(*ok);  // a short tail is gathered
  }
  ASSERT_TRUE(w->Close().ok());
}

TEST_F(ImagesExternal, ExternalAppendsRoundTrip) {
  std::string data = Data((9u << 20) + 4096 * 3 + 100);  // the tail: 100 bytes
  auto sink = OpenDirSink(dir_);
  ASSERT_TRUE(sink.ok());
  WriteMixed(**sink, data, (9u << 20) + 4096 * 3, true);  // three chunks, the last one short
  ASSERT_TRUE((*sink)->Finish(NewInventory()).ok());
  auto set = ImageSet::Open(dir_);  // checks the inventory's size and checksum of the file
  ASSERT_TRUE(set.ok()) << set.error().to_string();
  auto b = set->OpenBlob("blob.img");
  ASSERT_TRUE(b.ok());
  std::string back(data.size(), '\0');
  ASSERT_TRUE((*b)->Read(0, back.data(), back.size()).ok());
  EXPECT_TRUE(back == data);
}

TEST_F(ImagesExternal, NoExternalAppendForCompressedBlobs) {
  auto sink = OpenDirSink(dir_);
  ASSERT_TRUE(sink.ok());
  auto w = BlobWriter::Create(**sink, "z.img", Compression::kZstd, 1);
  ASSERT_TRUE(w.ok());
  BlobWriter::External e;
  auto ok = w->AppendExternal(4096, &e);
  ASSERT_TRUE(ok.ok());
  EXPECT_FALSE(*ok);
  ASSERT_TRUE(w->Close().ok());
}

TEST_F(ImagesExternal, CompressFinishedShrinksAndStaysValid) {
  std::string data = Data((6u << 20) + 12345);
  auto sink = OpenDirSink(dir_);
  ASSERT_TRUE(sink.ok());
  WriteMixed(**sink, data, 5u << 20);
  ASSERT_TRUE((*sink)->Finish(NewInventory()).ok());
  uint64_t before = 0, after = 0;
  auto c = (*sink)->CompressFinished({"blob.img"}, 1, 2, &before, &after);
  ASSERT_TRUE(c.ok()) << c.error().to_string();
  EXPECT_GT(before, data.size());
  EXPECT_LT(after, before * 3 / 4);  // the compressible half shrank
  EXPECT_FALSE(fs::Exists(dir_ + "/blob.img.zst.tmp"));
  auto set = ImageSet::Open(dir_);
  ASSERT_TRUE(set.ok()) << set.error().to_string();
  auto b = set->OpenBlob("blob.img");
  ASSERT_TRUE(b.ok());
  std::string back(data.size(), '\0');
  ASSERT_TRUE((*b)->Read(0, back.data(), back.size()).ok());
  EXPECT_TRUE(back == data);
}

TEST_F(ImagesExternal, CompressFinishedRefusesDamageAndKeepsTheRawSet) {
  std::string data = Data(3u << 20);
  auto sink = OpenDirSink(dir_);
  ASSERT_TRUE(sink.ok());
  WriteMixed(**sink, data, 2u << 20);
  ASSERT_TRUE((*sink)->Finish(NewInventory()).ok());
  // Damage one byte of the stored data: the re-encoding checks every chunk's checksum.
  auto flip = [&] {
    int fd = open((dir_ + "/blob.img").c_str(), O_RDWR);
    ASSERT_GE(fd, 0);
    char x;
    ASSERT_EQ(pread(fd, &x, 1, 5000), 1);
    x ^= 1;
    ASSERT_EQ(pwrite(fd, &x, 1, 5000), 1);
    close(fd);
  };
  flip();
  uint64_t before = 0, after = 0;
  auto c = (*sink)->CompressFinished({"blob.img"}, 1, 1, &before, &after);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.error().kind(), ErrorKind::kBadImage);
  EXPECT_NE(c.error().to_string().find("blob.img"), std::string::npos);
  EXPECT_FALSE(fs::Exists(dir_ + "/blob.img.zst.tmp"));
  // Not an image of the set: refused.
  EXPECT_FALSE((*sink)->CompressFinished({"nope.img"}, 1, 1, &before, &after).ok());
  // Undo the damage: the raw file and the inventory were left as they were.
  flip();
  auto set = ImageSet::Open(dir_);
  ASSERT_TRUE(set.ok()) << set.error().to_string();
  auto b = set->OpenBlob("blob.img");
  ASSERT_TRUE(b.ok());
  std::string back(data.size(), '\0');
  ASSERT_TRUE((*b)->Read(0, back.data(), back.size()).ok());
  EXPECT_TRUE(back == data);
}

// Checksums computed by the writer as it wrote the data (the kill-mode drain, dump/capture.cc):
// nothing read back, and the set is as valid as with the read-back commit.
TEST_F(ImagesExternal, CommitWithKnownChecksums) {
  std::string data = Data((9u << 20) + 4096 * 5);
  auto sink = OpenDirSink(dir_);
  ASSERT_TRUE(sink.ok());
  {
    auto w = BlobWriter::Create(**sink, "blob.img", Compression::kNone);
    ASSERT_TRUE(w.ok());
    BlobWriter::External e;
    auto ok = w->AppendExternal(data.size(), &e);
    ASSERT_TRUE(ok.ok() && *ok);
    std::vector<uint32_t> crcs;
    size_t at = 0;
    for (const auto& c : e.chunks) {
      ASSERT_EQ(pwrite(w->fd(), data.data() + at, c.len,
                       c.header_off + sizeof(format::ChunkHeader)),
                static_cast<ssize_t>(c.len));
      crcs.push_back(Crc32c(0, data.data() + at, c.len));
      at += c.len;
    }
    std::vector<uint32_t> short_list(crcs.begin(), crcs.end() - 1);
    EXPECT_FALSE(w->CommitExternal(e, short_list).ok());  // one per chunk
    ASSERT_TRUE(w->CommitExternal(e, crcs).ok());
    ASSERT_TRUE(w->Close().ok());
  }
  ASSERT_TRUE((*sink)->Finish(NewInventory()).ok());
  auto set = ImageSet::Open(dir_);
  ASSERT_TRUE(set.ok()) << set.error().to_string();
  auto b = BlobReader::OpenFile(dir_ + "/blob.img", "blob.img", false);
  ASSERT_TRUE(b.ok());
  EXPECT_TRUE((*b)->VerifyChunks().ok());
  std::string back(data.size(), '\0');
  ASSERT_TRUE((*b)->Read(0, back.data(), back.size()).ok());
  EXPECT_TRUE(back == data);
}

// ReadPieces hands over the same bytes as Read, in pieces no larger than asked, for raw and zstd
// chunks and ranges that start and end inside chunks; a damaged raw chunk fails it.
TEST_F(ImagesExternal, ReadPiecesMatchesReadAndFindsDamage) {
  std::string data = Data((10u << 20) + 4096 * 7);
  for (Compression c : {Compression::kNone, Compression::kZstd}) {
    SCOPED_TRACE(c == Compression::kNone ? "raw" : "zstd");
    (void)fs::RemoveAll(dir_);
    auto sink = OpenDirSink(dir_);
    ASSERT_TRUE(sink.ok());
    auto w = BlobWriter::Create(**sink, "blob.img", c, 1);
    ASSERT_TRUE(w.ok());
    ASSERT_TRUE(w->Append(data.data(), data.size()).ok());
    ASSERT_TRUE(w->Close().ok());
    ASSERT_TRUE((*sink)->Finish(NewInventory()).ok());
    auto b = BlobReader::OpenFile(dir_ + "/blob.img", "blob.img", false);
    ASSERT_TRUE(b.ok());
    std::vector<char> buf(64 << 10);
    for (auto [off, len] : {std::pair<uint64_t, uint64_t>{0, data.size()},
                            {4096 * 3, (8u << 20) + 4096},
                            {(4u << 20) + 8192, 4096 * 9}}) {
      std::string got;
      uint64_t next = off;
      auto r = (*b)->ReadPieces(off, len, buf.data(), buf.size(),
                                [&](uint64_t lo, const char* d, size_t n) -> Result<void> {
                                  EXPECT_EQ(lo, next);
                                  EXPECT_LE(n, buf.size());
                                  next = lo + n;
                                  got.append(d, n);
                                  return Ok();
                                });
      ASSERT_TRUE(r.ok()) << r.error().to_string();
      EXPECT_TRUE(got == data.substr(off, len)) << off << " +" << len;
    }
    // A callback's error stops the read.
    int calls = 0;
    auto stop = (*b)->ReadPieces(0, data.size(), buf.data(), buf.size(),
                                 [&](uint64_t, const char*, size_t) -> Result<void> {
                                   ++calls;
                                   return MakeError(ErrorKind::kGeneric, 0, "stop");
                                 });
    EXPECT_FALSE(stop.ok());
    EXPECT_EQ(calls, 1);
  }
  // Damage in the middle of a raw chunk: found once the chunk's last piece was read.
  (void)fs::RemoveAll(dir_);
  {
    auto sink = OpenDirSink(dir_);
    ASSERT_TRUE(sink.ok());
    auto w = BlobWriter::Create(**sink, "blob.img", Compression::kNone);
    ASSERT_TRUE(w.ok());
    ASSERT_TRUE(w->Append(data.data(), data.size()).ok());
    ASSERT_TRUE(w->Close().ok());
    ASSERT_TRUE((*sink)->Finish(NewInventory()).ok());
  }
  int fd = open((dir_ + "/blob.img").c_str(), O_RDWR);
  ASSERT_GE(fd, 0);
  char x;
  ASSERT_EQ(pread(fd, &x, 1, 6u << 20), 1);
  x ^= 1;
  ASSERT_EQ(pwrite(fd, &x, 1, 6u << 20), 1);
  close(fd);
  auto b = BlobReader::OpenFile(dir_ + "/blob.img", "blob.img", false);
  ASSERT_TRUE(b.ok());
  std::vector<char> buf(64 << 10);
  auto r = (*b)->ReadPieces(0, data.size(), buf.data(), buf.size(),
                            [](uint64_t, const char*, size_t) -> Result<void> { return Ok(); });
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().to_string().find("checksum"), std::string::npos) << r.error().to_string();
}

}  // namespace
}  // namespace godwit::images
