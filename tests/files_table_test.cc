// Every kind in the image format has a dumper and a restorer in the one table.
#include <gtest/gtest.h>

#include <stdlib.h>

#include "files/kind.h"
#include "images/image.h"
#include "proto/fd.pb.h"

namespace godwit::files {
namespace {

TEST(FilesTable, EveryProtoKindHasDumperAndRestorer) {
  const auto* desc = img::FileKind_descriptor();
  for (int i = 0; i < desc->value_count(); i++) {
    auto kind = static_cast<img::FileKind>(desc->value(i)->number());
    if (kind == img::FILE_KIND_UNSPECIFIED) continue;
    const KindOps* ops = FindKind(kind);
    ASSERT_NE(ops, nullptr) << desc->value(i)->name() << " has no entry in the kind table";
    EXPECT_NE(ops->dump, nullptr) << desc->value(i)->name();
    EXPECT_NE(ops->open, nullptr) << desc->value(i)->name();
    EXPECT_NE(ops->name, nullptr);
  }
  EXPECT_EQ(KindTable().size(), static_cast<size_t>(desc->value_count() - 1));
}

TEST(FilesTable, ParsesLockLines) {
  FdInfo info;
  info.lines = {{"lock", "1: POSIX  ADVISORY  WRITE 1234 00:1f:5678 2 4"},
                {"lock", "2: FLOCK  ADVISORY  READ 1234 00:1f:5678 0 EOF"},
                {"lock", "3: OFDLCK ADVISORY  READ -1 00:1f:5678 0 EOF"}};
  auto locks = ParseLocks(info);
  ASSERT_EQ(locks.size(), 3u);
  EXPECT_EQ(locks[0].type(), img::LOCK_TYPE_POSIX);
  EXPECT_TRUE(locks[0].write());
  EXPECT_EQ(locks[0].start(), 2u);
  EXPECT_EQ(locks[0].end(), 4);
  EXPECT_EQ(locks[1].type(), img::LOCK_TYPE_FLOCK);
  EXPECT_EQ(locks[1].end(), -1);
  EXPECT_EQ(locks[2].type(), img::LOCK_TYPE_OFD);
}

}  // namespace
}  // namespace godwit::files

namespace godwit::files {
namespace {

// Writes files.img with entries and fds-1.img with fds, returns the loader's result.
Result<std::unique_ptr<FdRestorer>> LoadCrafted(const std::string& dir,
                                                const std::vector<img::FileEntry>& entries,
                                                const img::ProcessFds& pf) {
  auto sink = images::OpenDirSink(dir, true);
  if (!sink.ok()) return sink.error();
  auto w = images::ImageWriter::Create(**sink, "files.img");
  if (!w.ok()) return w.error();
  for (const auto& e : entries) TRY(w->Write(e));
  TRY(w->Close());
  TRY(images::WriteImage(**sink, "fds-1.img", pf));
  TRY((*sink)->Finish(images::NewInventory()));
  auto set = images::ImageSet::Open(dir);
  if (!set.ok()) return set.error();
  return FdRestorer::Load(*set, {});
}

TEST(FilesTable, BadImagesAreRefusedWithContext) {
  char tmpl[] = "/tmp/godwit-files-bad-XXXXXX";
  std::string dir = mkdtemp(tmpl);
  img::FileEntry e;
  e.set_id(1);
  e.set_kind(img::FILE_KIND_EVENTFD);
  img::ProcessFds pf;
  pf.set_pid(1);
  auto* fe = pf.add_fds();
  fe->set_fd(3);
  fe->set_file_id(2);  // no such file
  auto r = LoadCrafted(dir, {e}, pf);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().kind(), ErrorKind::kBadImage);
  EXPECT_NE(r.error().to_string().find("fds-1.img: fd 3 refers to unknown file id 2"),
            std::string::npos) << r.error().to_string();

  fe->set_file_id(1);
  fe->set_fd(-5);
  r = LoadCrafted(dir, {e}, pf);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().to_string().find("bad fd number -5"), std::string::npos);

  fe->set_fd(3);
  img::FileEntry dup = e;
  r = LoadCrafted(dir, {e, dup}, pf);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().to_string().find("duplicate file id 1"), std::string::npos);

  img::FileEntry unknown = e;
  unknown.set_kind(static_cast<img::FileKind>(77));
  r = LoadCrafted(dir, {unknown}, pf);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().to_string().find("unknown kind 77"), std::string::npos);

  // A blob range beyond the data: a clean error from Prepare, nothing left open.
  img::FileEntry m;
  m.set_id(1);
  m.set_kind(img::FILE_KIND_MEMFD);
  m.mutable_memfd()->set_name("x");
  m.mutable_memfd()->mutable_data()->set_offset(1 << 20);
  m.mutable_memfd()->mutable_data()->set_length(10);
  r = LoadCrafted(dir, {m}, pf);
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  auto pr = (*r)->Prepare(64);
  ASSERT_FALSE(pr.ok());
  EXPECT_EQ(pr.error().kind(), ErrorKind::kBadImage) << pr.error().to_string();
  (void)!system(("rm -rf " + dir).c_str());
}

}  // namespace
}  // namespace godwit::files
