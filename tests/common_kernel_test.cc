// The shared kernel plumbing of common/ against the real kernel: pidfds, taking a userfaultfd out
// of a stopped process, nft and setns in another network namespace, the kernel features value
// and its cache.
#include <fcntl.h>
#include <netinet/in.h>
#include <linux/userfaultfd.h>
#include <sched.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/ptrace.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <string>
#include <thread>

#include <gtest/gtest.h>

#include "common/fs.h"
#include "common/kernel_features.h"
#include "common/netns.h"
#include "common/pidfd.h"
#include "common/remote.h"
#include "common/scope_exit.h"
#include "common/timing.h"
#include "common/uffd.h"

namespace godwit {
namespace {

ino_t Inode(int fd) {
  struct stat st {};
  fstat(fd, &st);
  return st.st_ino;
}

ino_t InodeOf(const std::string& path) {
  struct stat st {};
  stat(path.c_str(), &st);
  return st.st_ino;
}

int CountFds(pid_t pid) {
  auto l = fs::ListDir(StrFormat("/proc/%d/fd", pid));
  return l.ok() ? static_cast<int>(l->size()) : -1;
}

// A child that waits to be killed; killed and reaped at scope exit.
struct Child {
  Child() {
    pid = fork();
    if (pid == 0) {
      for (;;) pause();
    }
  }
  ~Child() {
    if (pid > 0) {
      kill(pid, SIGKILL);
      while (waitpid(pid, nullptr, __WALL) < 0 && errno == EINTR) {
      }
    }
  }
  pid_t pid;
};

// A fresh network namespace, held by an fd (gone when it is closed): made by a thread that
// unshares, so this thread's namespace does not change.
UniqueFd NewNetns() {
  UniqueFd out;
  std::thread t([&] {
    if (unshare(CLONE_NEWNET) == 0)
      out.reset(open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC));
  });
  t.join();
  return out;
}

TEST(Pidfd, TakesAnotherProcessFd) {
  Child c;
  ASSERT_GT(c.pid, 0);
  // fd 0 of the child is ours too (inherited): the same open file description.
  auto got = pidfd::TakeFd(c.pid, 0);
  ASSERT_TRUE(got.ok()) << got.error().to_string();
  struct stat a {}, b {};
  fstat(got->get(), &a);
  fstat(0, &b);
  EXPECT_EQ(a.st_ino, b.st_ino);
  EXPECT_TRUE(fcntl(got->get(), F_GETFD) & FD_CLOEXEC);
  auto none = pidfd::TakeFd(c.pid, 999);
  ASSERT_FALSE(none.ok());
  EXPECT_EQ(none.error().sys_errno(), EBADF);
  EXPECT_NE(none.error().message().find(StrFormat("pid %d fd 999", c.pid)), std::string::npos);
}

TEST(Uffd, TakenFromAStoppedProcessLeavesItsFdTableAsItWas) {
  Child c;
  ASSERT_GT(c.pid, 0);
  ASSERT_TRUE(remote::SeizeAndInterrupt(c.pid, PTRACE_O_TRACESYSGOOD).ok());
  auto r = remote::Remote::Create(c.pid, c.pid, {});
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  int before = CountFds(c.pid);
  auto fd = uffd::TakeFromTarget(**r, O_CLOEXEC | O_NONBLOCK);
  ASSERT_TRUE(fd.ok()) << fd.error().to_string();
  EXPECT_EQ(CountFds(c.pid), before);
  // Ours works on the child's memory: the API handshake succeeds and registering the child's
  // scratch area (an anonymous mapping there, not here) is accepted.
  uffdio_api api{};
  api.api = UFFD_API;
  ASSERT_EQ(ioctl(fd->get(), UFFDIO_API, &api), 0) << strerror(errno);
  uffdio_register reg{};
  reg.range.start = (*r)->area_start();
  reg.range.len = (*r)->area_end() - (*r)->area_start();
  reg.mode = UFFDIO_REGISTER_MODE_MISSING;
  EXPECT_EQ(ioctl(fd->get(), UFFDIO_REGISTER, &reg), 0) << strerror(errno);
}

TEST(Netns, NftRunsInAnotherNamespaceOnly) {
  UniqueFd ns = NewNetns();
  ASSERT_TRUE(ns.valid());
  const std::string table = StrFormat("godwit_common_test_%d", getpid());
  ASSERT_TRUE(netns::NftRunIn(ns.get(), "add table inet " + table + "\n").ok());
  // What nft prints comes back: the table is listed there, not here.
  auto listed = netns::NftRunIn(ns.get(), "list tables\n");
  ASSERT_TRUE(listed.ok()) << listed.error().to_string();
  EXPECT_NE(listed->find(table), std::string::npos) << *listed;
  auto ours = netns::NftRunIn(-1, "list tables\n");
  ASSERT_TRUE(ours.ok()) << ours.error().to_string();
  EXPECT_EQ(ours->find(table), std::string::npos) << *ours;
  // Not in ours: deleting it here fails, there it succeeds (so it was there).
  auto here = netns::NftRunIn(-1, "delete table inet " + table + "\n");
  EXPECT_FALSE(here.ok());
  auto there = netns::NftRunIn(ns.get(), "delete table inet " + table + "\n");
  EXPECT_TRUE(there.ok()) << there.error().to_string();
  auto bad = netns::NftRunIn(ns.get(), "this is not nft\n");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.error().message().find("nft failed"), std::string::npos) << bad.error().message();
}

// What `godwit subreaper -- sh -c 'cat /proc/$PPID/maps'` prints: the maps of a running godwit
// command that never used nftables.
std::string MapsOfAGodwitCommand() {
  int out[2];
  if (pipe2(out, O_CLOEXEC) < 0) return "pipe failed";
  pid_t pid = fork();
  if (pid == 0) {
    dup2(out[1], 1);
    execl(GODWIT_BIN, GODWIT_BIN, "subreaper", "--", "/bin/sh", "-c", "cat /proc/$PPID/maps",
          static_cast<char*>(nullptr));
    _exit(127);
  }
  close(out[1]);
  std::string maps;
  char buf[4096];
  for (;;) {
    ssize_t n = read(out[0], buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    maps.append(buf, static_cast<size_t>(n));
  }
  close(out[0]);
  int st = 0;
  while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
  }
  return WIFEXITED(st) && WEXITSTATUS(st) == 0 ? maps : "godwit subreaper failed";
}

// libnftables (and the five libraries it needs) is loaded at its first use, not at a godwit
// command's start (~1 ms of every command's start-up, netns.h); a library that cannot be loaded
// is named in the error.
TEST(Netns, NftablesIsLoadedAtItsFirstUseOnly) {
  auto missing = netns::LoadNft("libgodwit-test-no-such-nftables.so.1");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.error().kind(), ErrorKind::kNotFound);
  EXPECT_NE(missing.error().message().find("libgodwit-test-no-such-nftables.so.1"),
            std::string::npos)
      << missing.error().message();
  auto real = netns::LoadNft(netns::kNftLibrary);
  ASSERT_TRUE(real.ok()) << real.error().to_string();
  EXPECT_NE(real->ctx_new, nullptr);
  EXPECT_NE(real->run_cmd_from_buffer, nullptr);
  EXPECT_NE(real->ctx_get_error_buffer, nullptr);
  // This process used it: its maps show the library (what the check below looks for).
  ASSERT_TRUE(netns::PreloadNft().ok());
  auto ours = fs::ReadFile("/proc/self/maps");
  ASSERT_TRUE(ours.ok());
  EXPECT_NE(ours->find("libnftables"), std::string::npos);
  // A godwit command that needs no nft has none of it mapped.
  std::string maps = MapsOfAGodwitCommand();
  ASSERT_NE(maps.find("godwit"), std::string::npos) << maps;
  EXPECT_EQ(maps.find("libnftables"), std::string::npos) << maps;
  EXPECT_EQ(maps.find("libxtables"), std::string::npos) << maps;
}

// Whether a namespace has TCP sockets (so that a dump will lock connections with nftables):
// none in a fresh one, one listening socket is enough.
TEST(Netns, HasTcpSocketsSeesTheNamespaceOfThePid) {
  int go[2], ready[2];
  ASSERT_EQ(pipe2(go, O_CLOEXEC), 0);
  ASSERT_EQ(pipe2(ready, O_CLOEXEC), 0);
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    char c = 0;
    if (unshare(CLONE_NEWNET) < 0) _exit(1);
    if (write(ready[1], "a", 1) != 1) _exit(1);
    if (read(go[0], &c, 1) != 1) _exit(1);
    int s = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    if (s < 0 || bind(s, reinterpret_cast<sockaddr*>(&a), sizeof(a)) < 0 || listen(s, 1) < 0)
      _exit(1);
    if (write(ready[1], "b", 1) != 1) _exit(1);
    for (;;) pause();
  }
  ScopeExit reap([pid] {
    kill(pid, SIGKILL);
    while (waitpid(pid, nullptr, 0) < 0 && errno == EINTR) {
    }
  });
  char c = 0;
  ASSERT_EQ(read(ready[0], &c, 1), 1);
  auto none = netns::HasTcpSockets(pid);
  ASSERT_TRUE(none.ok()) << none.error().to_string();
  EXPECT_FALSE(*none);
  ASSERT_EQ(write(go[1], "g", 1), 1);
  ASSERT_EQ(read(ready[0], &c, 1), 1);
  auto one = netns::HasTcpSockets(pid);
  ASSERT_TRUE(one.ok()) << one.error().to_string();
  EXPECT_TRUE(*one);
  for (int fd : {go[0], go[1], ready[0], ready[1]}) close(fd);
  auto gone = netns::HasTcpSockets(999999999);
  EXPECT_FALSE(gone.ok());
}

// A kept context acts in its namespace on every run, whichever namespace the calling thread is
// in, survives a failed run, and leaves the thread where it was.
TEST(Netns, NftContextKeepsItsNamespace) {
  UniqueFd ns = NewNetns();
  ASSERT_TRUE(ns.valid());
  struct stat before;
  ASSERT_EQ(stat("/proc/thread-self/ns/net", &before), 0);
  auto ctx = netns::NftContext::Open(ns.get());
  ASSERT_TRUE(ctx.ok()) << ctx.error().to_string();
  ns.reset();  // the context holds its own reference to the namespace
  const std::string table = StrFormat("godwit_ctx_test_%d", getpid());
  ASSERT_TRUE(ctx->Run("add table inet " + table + "\n").ok());
  EXPECT_FALSE(ctx->Run("this is not nft\n").ok());
  auto listed = ctx->Run("list tables\n");
  ASSERT_TRUE(listed.ok()) << listed.error().to_string();
  EXPECT_NE(listed->find(table), std::string::npos) << *listed;
  auto ours = netns::NftRunIn(-1, "list tables\n");
  ASSERT_TRUE(ours.ok());
  EXPECT_EQ(ours->find(table), std::string::npos) << *ours;
  netns::NftContext moved = std::move(*ctx);
  EXPECT_TRUE(moved.Run("flush table inet " + table + "\n").ok());
  EXPECT_TRUE(moved.Run("delete table inet " + table + "\n").ok());
  EXPECT_FALSE(moved.Run("delete table inet " + table + "\n").ok());  // it was there, now gone
  struct stat after;
  ASSERT_EQ(stat("/proc/thread-self/ns/net", &after), 0);
  EXPECT_EQ(before.st_ino, after.st_ino);
}

TEST(Netns, ScopedNetnsEntersAndComesBack) {
  UniqueFd ns = NewNetns();
  ASSERT_TRUE(ns.valid());
  // In a thread of its own: setns is per thread, and a failed test must not leave the main
  // thread elsewhere.
  ino_t own = 0, inside = 0, after = 0, after_scope = 0;
  bool left = false;
  std::thread t([&] {
    own = InodeOf("/proc/thread-self/ns/net");
    {
      auto s = netns::ScopedNetns::Enter(ns.get());
      if (!s.ok()) return;
      inside = InodeOf("/proc/thread-self/ns/net");
      left = s->Leave().ok();
      after = InodeOf("/proc/thread-self/ns/net");
    }
    {
      auto s = netns::ScopedNetns::Enter(ns.get());
      if (!s.ok()) return;
    }  // the destructor goes back
    after_scope = InodeOf("/proc/thread-self/ns/net");
  });
  t.join();
  EXPECT_EQ(inside, Inode(ns.get()));
  EXPECT_NE(inside, own);
  EXPECT_TRUE(left);
  EXPECT_EQ(after, own);
  EXPECT_EQ(after_scope, own);
}

TEST(KernelFeatures, ProbeJsonRoundTripAndCompare) {
  auto f = ProbeKernelFeatures();
  ASSERT_TRUE(f.ok()) << f.error().to_string();
  // What godwit needs is here (the tests run on such a kernel).
  EXPECT_TRUE(Compare(RequiredKernelFeatures(), *f).empty());
  EXPECT_FALSE(f->kernel_release.empty());
  EXPECT_GT(f->xsave_size, 512u);
  auto back = KernelFeaturesFromJson(KernelFeaturesToJson(*f));
  ASSERT_TRUE(back.ok()) << back.error().to_string();
  EXPECT_EQ(KernelFeaturesToJson(*back), KernelFeaturesToJson(*f));
  // A host without TCP_REPAIR and with a smaller XSAVE area lacks exactly those.
  KernelFeatures poorer = *f;
  poorer.tcp_repair = false;
  poorer.xsave_size = 512;
  KernelFeatures needed;
  needed.tcp_repair = true;
  needed.clone3_set_tid = true;
  needed.xsave_size = f->xsave_size;
  EXPECT_EQ(Compare(needed, poorer), (std::vector<std::string>{"tcp_repair", "xsave_size"}));
  EXPECT_FALSE(KernelFeaturesFromJson(nlohmann::json::parse("{\"features\": 3}")).ok());
}

TEST(KernelFeatures, CachedOnceAndProbedAgainForAnotherKernel) {
  std::string dir = StrFormat("/tmp/godwit-kf-%d", getpid());
  std::string path = dir + "/sub/kernel-features.json";
  auto first = CachedKernelFeatures(path);
  ASSERT_TRUE(first.ok()) << first.error().to_string();
  EXPECT_FALSE(first->cached);
  auto second = CachedKernelFeatures(path);
  ASSERT_TRUE(second.ok());
  EXPECT_TRUE(second->cached);
  EXPECT_EQ(KernelFeaturesToJson(*second), KernelFeaturesToJson(*first));
  // A cache written under another kernel release is not trusted: probed again and rewritten.
  auto j = nlohmann::json::parse(*fs::ReadFile(path));
  j["kernel_release"] = "0.0.0-other";
  ASSERT_TRUE(fs::WriteFile(path, j.dump()).ok());
  auto third = CachedKernelFeatures(path);
  ASSERT_TRUE(third.ok());
  EXPECT_FALSE(third->cached);
  EXPECT_EQ(nlohmann::json::parse(*fs::ReadFile(path))["kernel_release"], first->kernel_release);
  EXPECT_FALSE(CachedKernelFeatures(path, /*force=*/true)->cached);
  ASSERT_TRUE(fs::RemoveAll(dir).ok());
}

TEST(Timing, PhaseTimerRecordsPhasesInOrder) {
  timing::PhaseTimer t;
  usleep(2000);
  double a = t.Lap("first");
  double b = t.Lap("second");
  EXPECT_GE(a, 2.0);
  EXPECT_GE(b, 0.0);
  ASSERT_EQ(t.phases().size(), 2u);
  EXPECT_EQ(t.phases()[0].first, "first");
  EXPECT_EQ(t.phases()[1].first, "second");
  EXPECT_GE(t.TotalMs(), a + b);
}

}  // namespace
}  // namespace godwit
