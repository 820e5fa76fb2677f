// One-file export/import of a checkpoint directory: a round trip byte for byte, and every kind
// of damage (flipped byte, truncation, trailing junk, bad magic, hostile names, existing target)
// failing cleanly with nothing left behind.
#include <fcntl.h>
#include <unistd.h>

#include <random>

#include "container/archive.h"
#include "images/crc32c.h"
#include "tests/container_test_util.h"

namespace godwit::container {
namespace {

using testing::TempDir;

std::string Random(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::string s(n, '\0');
  for (auto& c : s) c = static_cast<char>(rng());
  return s;
}

class ContainerArchive : public ::testing::Test {
 protected:
  void SetUp() override {
    src_ = tmp_.path() + "/ckpt";
    ASSERT_OK(fs::MkdirAll(src_ + "/container"));
    ASSERT_OK(fs::MkdirAll(src_ + "/tree"));
    ASSERT_OK(fs::WriteFile(src_ + "/container/container.img", Random(1000, 1)));
    ASSERT_OK(fs::WriteFile(src_ + "/container/inventory.img", Random(77, 2)));
    ASSERT_OK(fs::WriteFile(src_ + "/tree/pages-1.img", Random(3 << 20, 3)));
    ASSERT_OK(fs::WriteFile(src_ + "/tree/empty.img", ""));
    file_ = tmp_.path() + "/export.gwx";
    auto st = archive::Export(src_, file_);
    ASSERT_OK(st);
    EXPECT_EQ(st->files, 4u);
  }

  std::string Corrupt(const std::function<void(std::string&)>& fn) {
    auto data = fs::ReadFile(file_);
    EXPECT_TRUE(data.ok());
    std::string d = *data;
    fn(d);
    std::string bad = tmp_.path() + "/bad.gwx";
    EXPECT_TRUE(fs::WriteFile(bad, d).ok());
    return bad;
  }

  void ExpectBad(const std::string& file) {
    std::string out = tmp_.path() + "/out-bad";
    auto r = archive::Import(file, out);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.error().kind(), ErrorKind::kBadImage) << r.error().to_string();
    EXPECT_FALSE(fs::Exists(out));
    EXPECT_FALSE(fs::Exists(out + ".importing"));
  }

  TempDir tmp_{"archive"};
  std::string src_, file_;
};

TEST_F(ContainerArchive, RoundTrip) {
  std::string out = tmp_.path() + "/out";
  auto st = archive::Import(file_, out);
  ASSERT_OK(st);
  EXPECT_EQ(st->files, 4u);
  for (const char* f : {"container/container.img", "container/inventory.img", "tree/pages-1.img",
                        "tree/empty.img"}) {
    auto a = fs::ReadFile(src_ + "/" + f);
    auto b = fs::ReadFile(out + "/" + f);
    ASSERT_OK(a);
    ASSERT_OK(b);
    EXPECT_TRUE(*a == *b) << f;
  }
  // Importing over an existing directory is refused.
  auto again = archive::Import(file_, out);
  ASSERT_FALSE(again.ok());
  EXPECT_EQ(again.error().kind(), ErrorKind::kExists);
}

TEST_F(ContainerArchive, DamagedExportsFailCleanly) {
  ExpectBad(Corrupt([](std::string& d) { d[d.size() / 2] ^= 0x40; }));  // inside page data
  ExpectBad(Corrupt([](std::string& d) { d.resize(d.size() - 5); }));
  ExpectBad(Corrupt([](std::string& d) { d.resize(d.size() / 3); }));
  ExpectBad(Corrupt([](std::string& d) { d += "junk"; }));
  ExpectBad(Corrupt([](std::string& d) { d[0] = 'X'; }));
  ExpectBad(Corrupt([](std::string& d) { d[17] ^= 1; }));  // first record header
  ExpectBad(Corrupt([](std::string& d) { d.resize(10); }));
  auto missing = archive::Import(tmp_.path() + "/nope.gwx", tmp_.path() + "/o");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.error().kind(), ErrorKind::kNotFound);
}

TEST_F(ContainerArchive, HostileNamesAreRefused) {
  // A well-formed record (valid checksums) whose name climbs out of the target.
  for (std::string name : {"../escape.img", "/abs.img", "a//b", "a/./b"}) {
    std::string d(16, '\0');
    memcpy(d.data(), "GODWITEX", 8);
    uint32_t v = 1;
    memcpy(d.data() + 8, &v, 4);
    struct __attribute__((packed)) {
      uint32_t kind, name_len;
      uint64_t size;
      uint32_t data_crc, header_crc;
    } h = {1, static_cast<uint32_t>(name.size()), 1, images::Crc32c(0, "x", 1), 0};
    uint32_t c = images::Crc32c(0, &h, 20);
    h.header_crc = images::Crc32c(c, name.data(), name.size());
    d.append(reinterpret_cast<char*>(&h), sizeof(h));
    d += name + "x";
    decltype(h) end = {2, 0, 1, 0, 0};
    end.header_crc = images::Crc32c(0, &end, 20);
    d.append(reinterpret_cast<char*>(&end), sizeof(end));
    std::string f = tmp_.path() + "/hostile.gwx";
    ASSERT_OK(fs::WriteFile(f, d));
    ExpectBad(f);
    EXPECT_FALSE(fs::Exists(tmp_.path() + "/escape.img"));
  }
}

}  // namespace
}  // namespace godwit::container
