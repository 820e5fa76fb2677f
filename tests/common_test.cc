#include <fcntl.h>
#include <sys/resource.h>

#include <gtest/gtest.h>

#include "common/args.h"
#include "common/fs.h"
#include "common/priority.h"
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

// The CPU time of the calling thread, and how often it gave the CPU up of its own accord.
struct ThreadUse {
  int64_t cpu_ns;
  long voluntary;
};
ThreadUse Use() {
  timespec t;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  rusage ru{};
  getrusage(RUSAGE_THREAD, &ru);
  return {static_cast<int64_t>(t.tv_sec) * 1'000'000'000 + t.tv_nsec, ru.ru_nvcsw};
}

// Burns `cpu_ns` of this thread's CPU in pieces of ~50 us, ticking the pacer between them; the
// voluntary context switches it took meanwhile.
long BurnTicking(godwit::Pacer& p, int64_t cpu_ns) {
  ThreadUse start = Use();
  volatile uint64_t x = 0;
  for (;;) {
    ThreadUse now = Use();
    if (now.cpu_ns - start.cpu_ns >= cpu_ns) return now.voluntary - start.voluntary;
    int64_t piece_end = now.cpu_ns + 50'000;
    while (Use().cpu_ns < piece_end) x = x + 1;
    p.Tick();
  }
}

TEST(Pacer, NapsAfterEveryRunOfCpuAndNotWhenOff) {
  // 40 ms of CPU: a nap after each 2 ms of it (the first Tick only starts counting).
  godwit::Pacer on;
  long naps = BurnTicking(on, 40'000'000);
  EXPECT_GE(naps, 40 / 2 - 2);
  EXPECT_LE(naps, 40 / 2 + 10);  // plus whatever else made this thread wait (a page fault's I/O)
  godwit::Pacer off(false);
  EXPECT_LE(BurnTicking(off, 40'000'000), 5);
}
