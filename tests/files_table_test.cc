// Every kind in the image format has a dumper and a restorer in the one table.
#include <gtest/gtest.h>

#include "files/kind.h"
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
