#include <fcntl.h>

#include <gtest/gtest.h>

#include "common/args.h"
#include "common/fs.h"
#include "common/result.h"

namespace godwit {
namespace {

Result<int> Half(int x) {
  if (x % 2) return MakeError(ErrorKind::kUsage, 0, "%d is odd", x);
  return x / 2;
}

Result<int> Quarter(int x) {
  ASSIGN_OR_RETURN(int h, Half(x));
  TRY_CTX(Half(h), "halving %d", h);
  return h / 2;
}

TEST(Result, PropagatesWithContext) {
  EXPECT_EQ(*Quarter(8), 2);
  auto r = Quarter(6);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().message(), "halving 3: 3 is odd");
  EXPECT_EQ(r.error().exit_code(), 2);
}

TEST(Result, ErrnoNamesCause) {
  auto r = fs::Open("/nonexistent/godwit-x", O_RDONLY);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().sys_errno(), ENOENT);
  EXPECT_EQ(r.error().kind(), ErrorKind::kNotFound);
  EXPECT_NE(r.error().to_string().find("/nonexistent/godwit-x"), std::string::npos);
}

TEST(Args, ParsesOptionsFlagsAndRest) {
  ArgSpec spec{{"bundle", "memory"}, {"detach"}, {{"-d", "detach"}, {"-b", "bundle"}}};
  auto r = ParseArgs({"id1", "-b", "/x", "--memory=256M", "-d", "--", "sh", "-c", "true"}, spec);
  ASSERT_TRUE(r.ok()) << r.error().message();
  EXPECT_EQ(r->positionals, std::vector<std::string>{"id1"});
  EXPECT_EQ(r->get("bundle"), "/x");
  EXPECT_EQ(r->get("memory"), "256M");
  EXPECT_TRUE(r->has("detach"));
  EXPECT_EQ(r->rest, (std::vector<std::string>{"sh", "-c", "true"}));
  EXPECT_FALSE(ParseArgs({"--bogus"}, spec).ok());
  EXPECT_FALSE(ParseArgs({"--bundle"}, spec).ok());
  EXPECT_EQ(*ParseSize("256M"), 256LL << 20);
  EXPECT_EQ(*ParseSize("1.5G"), 3LL << 29);
  EXPECT_FALSE(ParseSize("12Q").ok());
}

}  // namespace
}  // namespace godwit
