// Each cgroup backend on its own against the real hierarchies this machine has: v1 (the v1
// controllers), v2 (the cgroup2 mount: on a hybrid machine without controllers, so only
// membership and freezing), hybrid. A plain child process stands in for a container.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/fs.h"
#include "common/scope_exit.h"
#include "runtime/cgroup.h"

namespace godwit::runtime {
namespace {

pid_t SpawnSleeper() {
  pid_t pid = fork();
  if (pid == 0) {
    for (;;) pause();
  }
  return pid;
}

char State(pid_t pid) {
  auto s = fs::ReadFile(StrFormat("/proc/%d/stat", pid));
  if (!s.ok()) return 0;
  size_t p = s->rfind(')');
  return p == std::string::npos ? 0 : (*s)[p + 2];
}

void Exercise(Cgroup& cg, bool limits) {
  ASSERT_TRUE(cg.Create().ok());
  ScopeExit destroy([&] { (void)cg.Destroy(); });
  // Creating it again is "exists", never a shared cgroup.
  auto again = cg.Create();
  ASSERT_FALSE(again.ok());
  EXPECT_EQ(again.error().kind(), ErrorKind::kExists);

  pid_t pid = SpawnSleeper();
  ASSERT_GT(pid, 0);
  ScopeExit reap([&] {
    kill(pid, SIGKILL);
    waitpid(pid, nullptr, 0);
  });
  auto add = cg.AddProcess(pid);
  ASSERT_TRUE(add.ok()) << add.error().to_string();
  auto pids = cg.Pids();
  ASSERT_TRUE(pids.ok());
  EXPECT_EQ(*pids, std::vector<pid_t>{pid});

  if (limits) {
    Resources r;
    r.memory_limit = 64 << 20;
    r.pids_limit = 16;
    r.cpu_quota = 20000;
    r.cpu_period = 100000;
    r.cpu_shares = 512;
    auto a = cg.Apply(r);
    EXPECT_TRUE(a.ok()) << a.error().to_string();
    Resources bad;
    bad.cpu_quota = 10;  // below the kernel's 1 ms minimum
    auto b = cg.Apply(bad);
    ASSERT_FALSE(b.ok());
    EXPECT_EQ(b.error().kind(), ErrorKind::kBadConfig);
  } else {
    Resources r;
    r.memory_limit = 64 << 20;
    auto a = cg.Apply(r);
    ASSERT_FALSE(a.ok());  // no memory controller in this hierarchy: said so, not ignored
    EXPECT_EQ(a.error().kind(), ErrorKind::kUnsupported);
  }

  auto f = cg.Freeze();
  ASSERT_TRUE(f.ok()) << f.error().to_string();
  auto frozen = cg.IsFrozen();
  ASSERT_TRUE(frozen.ok());
  EXPECT_TRUE(*frozen);
  // A frozen task is not runnable (v1: D, cgroup2: S/T while frozen).
  char st = State(pid);
  EXPECT_TRUE(st == 'S' || st == 'D' || st == 'T') << st;
  ASSERT_TRUE(cg.Thaw().ok());
  frozen = cg.IsFrozen();
  ASSERT_TRUE(frozen.ok());
  EXPECT_FALSE(*frozen);

  kill(pid, SIGKILL);
  waitpid(pid, nullptr, 0);
  reap.dismiss();

  // EnterSelf: a child moves itself in (what the container init and exec do).
  int p[2];
  ASSERT_EQ(pipe(p), 0);
  pid_t self = fork();
  if (self == 0) {
    char ok = cg.EnterSelf(false).ok() ? 'y' : 'n';
    (void)!write(p[1], &ok, 1);
    for (;;) pause();
  }
  char ok = 0;
  ASSERT_EQ(read(p[0], &ok, 1), 1);
  close(p[0]);
  close(p[1]);
  EXPECT_EQ(ok, 'y');
  pids = cg.Pids();
  ASSERT_TRUE(pids.ok());
  EXPECT_EQ(*pids, std::vector<pid_t>{self});
  for (const auto& [k, path] : cg.Paths()) {
    auto procs = fs::ReadFile(path + "/cgroup.procs");
    ASSERT_TRUE(procs.ok());
    EXPECT_EQ(fs::Trim(*procs), std::to_string(self)) << path;
  }
  kill(self, SIGKILL);
  waitpid(self, nullptr, 0);

  auto d = cg.Destroy();
  ASSERT_TRUE(d.ok()) << d.error().to_string();
  for (const auto& [k, p] : cg.Paths()) EXPECT_FALSE(fs::Exists(p)) << p;
  destroy.dismiss();
}

std::string Name(const char* what) { return StrFormat("cgtest-%d-%s", getpid(), what); }

TEST(RuntimeCgroupTest, V1Backend) {
  auto roots = DetectCgroupLayout();
  ASSERT_TRUE(roots.ok());
  if (roots->v1.empty()) GTEST_SKIP() << "no cgroup v1 hierarchies here";
  CgroupRoots r = *roots;
  r.layout = CgroupLayout::kV1;
  auto cg = OpenCgroup(r, Name("v1"));
  EXPECT_EQ(cg->layout(), CgroupLayout::kV1);
  Exercise(*cg, true);
}

TEST(RuntimeCgroupTest, V2Backend) {
  auto roots = DetectCgroupLayout();
  ASSERT_TRUE(roots.ok());
  if (roots->unified.empty()) GTEST_SKIP() << "no cgroup2 mount here";
  CgroupRoots r = *roots;
  r.layout = CgroupLayout::kV2;
  auto cg = OpenCgroup(r, Name("v2"));
  EXPECT_EQ(cg->layout(), CgroupLayout::kV2);
  // Pure v2 machines have the controllers; a hybrid one's cgroup2 tree has none.
  auto ctrls = fs::ReadFile(roots->unified + "/cgroup.controllers");
  bool has_memory = ctrls.ok() && ctrls->find("memory") != std::string::npos &&
                    ctrls->find("pids") != std::string::npos &&
                    ctrls->find("cpu") != std::string::npos;
  Exercise(*cg, has_memory);
}

TEST(RuntimeCgroupTest, MachineLayout) {
  auto cg = OpenCgroup(Name("auto"));
  ASSERT_TRUE(cg.ok());
  Exercise(**cg, true);
}

}  // namespace
}  // namespace godwit::runtime
