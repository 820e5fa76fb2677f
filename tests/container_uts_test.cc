// UTS namespace: hostname and domain name survive dump -> destroy -> restore into a fresh ns.
#include <sched.h>
#include <sys/utsname.h>
#include <unistd.h>

#include "container/uts.h"
#include "tests/container_test_util.h"

namespace godwit::container {
namespace {

using testing::NsHolder;
using testing::TempDir;

Result<img::UtsNs> Read(int fd) { return uts::Collect(fd); }

TEST(ContainerUts, RoundTrip) {
  std::string host = StrFormat("gw-uts-%d", getpid());
  NsHolder a;
  ASSERT_OK(a.Start(CLONE_NEWUTS, [&] {
    return ::sethostname(host.data(), host.size()) || ::setdomainname("example.test", 12);
  }));
  TempDir dir("uts");
  auto afd = a.Ns("uts");
  ASSERT_OK(afd);
  auto set =
      testing::DumpToDir(dir.path(), [&](images::Sink& s) { return uts::Dump(afd->get(), s); });
  ASSERT_OK(set);
  afd->reset();
  a.Stop();

  NsHolder b;
  ASSERT_OK(b.Start(CLONE_NEWUTS));
  auto fd = b.Ns("uts");
  ASSERT_OK(fd);
  ASSERT_OK(uts::Restore(*set, fd->get()));
  auto got = Read(fd->get());
  ASSERT_OK(got);
  EXPECT_EQ(got->hostname(), host);
  EXPECT_EQ(got->domainname(), "example.test");
  // The test's own namespace is untouched.
  struct utsname u;
  ::uname(&u);
  EXPECT_NE(std::string(u.nodename), host);
}

TEST(ContainerUts, MissingImageIsBadImage) {
  TempDir dir("uts-empty");
  auto set = testing::DumpToDir(dir.path(), [](images::Sink&) { return Ok(); });
  ASSERT_OK(set);
  NsHolder b;
  ASSERT_OK(b.Start(CLONE_NEWUTS));
  auto fd = b.Ns("uts");
  ASSERT_OK(fd);
  auto r = uts::Restore(*set, fd->get());
  ASSERT_FALSE(r.ok());
}

}  // namespace
}  // namespace godwit::container
