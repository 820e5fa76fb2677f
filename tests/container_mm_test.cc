// Shared memory inside a restored container: a static init (helpers/c_shmem.c) shares anonymous
// memory and a SysV segment with its child. After `godwit checkpoint` + `restore`, both
// processes map the same objects again (same inode in map_files, the segment attached twice in
// the container's IPC namespace) and the child keeps seeing the parent's writes.
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <sstream>

#include "runtime/runtime.h"
#include "tests/container_test_util.h"

namespace godwit::container {
namespace {

using testing::Sh;
using testing::CliRun;
using testing::Godwit;
using testing::TempDir;

struct ChildView {
  unsigned long anon = 0, sysv = 0;
  int ok = -1;
};

class ContainerMm : public ::testing::Test {
 protected:
  void SetUp() override {
    id_ = StrFormat("gwcmm%d", getpid());
    root_ = tmp_.path() + "/state";
    rootfs_ = tmp_.path() + "/rootfs";
    ASSERT_OK(runtime::MakeBusyboxRootfs(rootfs_));
    auto bin = fs::ReadFile(std::string(GODWIT_HELPERS) + "/c_shmem");
    ASSERT_TRUE(bin.ok());
    ASSERT_OK(fs::WriteFile(rootfs_ + "/bin/c_shmem", *bin));
    ASSERT_EQ(::chmod((rootfs_ + "/bin/c_shmem").c_str(), 0755), 0);
  }
  void TearDown() override {
    (void)Godwit({"--root", root_, "delete", "-f", id_});
    if (pid_ > 0) ::waitpid(pid_, nullptr, 0);
  }
  pid_t StatePid() {
    CliRun s = Godwit({"--root", root_, "state", id_});
    auto j = nlohmann::json::parse(s.out, nullptr, false);
    if (s.code != 0 || j.is_discarded()) return 0;
    return j.value("pid", 0);
  }
  pid_t Child(pid_t pid) {
    auto t = fs::ReadFile(StrFormat("/proc/%d/task/%d/children", pid, pid));
    return t.ok() ? atoi(t->c_str()) : 0;
  }
  ChildView Read() {
    ChildView v;
    auto t = fs::ReadFile(StrFormat("/proc/%d/root/dev/shm/child", pid_));
    if (t.ok()) sscanf(t->c_str(), "anon=%lu sysv=%lu ok=%d", &v.anon, &v.sysv, &v.ok);
    return v;
  }
  // Polls the child's view (it is written every 10 ms) until both counters pass `above`.
  ChildView WaitAbove(unsigned long above) {
    auto end = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    ChildView v;
    while (std::chrono::steady_clock::now() < end) {
      v = Read();
      if (v.ok == 0 || (v.anon > above && v.sysv > above)) return v;
      ::usleep(10000);
    }
    return v;
  }
  // The inode behind the 1 MiB shared anonymous mapping of pid ("/dev/zero (deleted)").
  ino_t SharedAnonInode(pid_t pid) {
    auto maps = fs::ReadFile(StrFormat("/proc/%d/maps", pid));
    if (!maps.ok()) return 0;
    std::istringstream in(*maps);
    for (std::string line; std::getline(in, line);) {
      unsigned long s, e;
      if (line.find("/dev/zero") == std::string::npos || line.find(" rw-s ") == std::string::npos)
        continue;
      if (sscanf(line.c_str(), "%lx-%lx", &s, &e) != 2 || e - s != (1UL << 20)) continue;
      struct stat st;
      if (::stat(StrFormat("/proc/%d/map_files/%lx-%lx", pid, s, e).c_str(), &st) != 0) return 0;
      return st.st_ino;
    }
    return 0;
  }

  TempDir tmp_{"cmm"};
  std::string id_, root_, rootfs_;
  pid_t pid_ = 0;
};

TEST_F(ContainerMm, SharedAnonAndSysvStaySharedAcrossCheckpointRestore) {
  CliRun r = Godwit({"--root", root_, "run", "--rootfs", rootfs_, "--name", id_, "--detach", "--",
                     "/bin/c_shmem"},
                    false);
  ASSERT_EQ(r.code, 0) << r.out;
  pid_ = StatePid();
  ASSERT_GT(pid_, 0);
  ChildView v = WaitAbove(3);
  ASSERT_EQ(v.ok, 1) << "the container's processes do not share memory even before the dump";
  ASSERT_GT(v.anon, 3u);
  pid_t child = Child(pid_);
  ASSERT_GT(child, 0);
  ino_t ino = SharedAnonInode(pid_);
  ASSERT_NE(ino, 0u);
  ASSERT_EQ(SharedAnonInode(child), ino);

  std::string img = tmp_.path() + "/ckpt";
  CliRun c = Godwit({"--root", root_, "checkpoint", id_, "--image-path", img});
  ASSERT_EQ(c.code, 0) << c.out;
  ::waitpid(pid_, nullptr, 0);
  pid_t old = pid_;
  pid_ = 0;
  CliRun rs = Godwit({"--root", root_, "restore", id_, "--image-path", img, "--detach"});
  ASSERT_EQ(rs.code, 0) << rs.out;
  pid_ = StatePid();
  ASSERT_EQ(pid_, old);
  ASSERT_EQ(Child(pid_), child);

  ino_t p_ino = SharedAnonInode(pid_);
  ASSERT_NE(p_ino, 0u) << "no shared anonymous mapping in the restored init";
  EXPECT_EQ(SharedAnonInode(child), p_ino) << "parent and child map different objects";
  ChildView at = Read();
  ChildView later = WaitAbove(std::max(at.anon, at.sysv) + 5);
  EXPECT_EQ(later.ok, 1) << "the shared anonymous contents changed";
  EXPECT_GT(later.anon, at.anon + 5) << "the child no longer sees the parent's writes (anon)";
  EXPECT_GT(later.sysv, at.sysv + 5) << "the child no longer sees the parent's writes (SysV)";
  // The segment is attached by both, in the container's IPC namespace.
  auto shmid = fs::ReadFile(StrFormat("/proc/%d/root/dev/shm/shmid", pid_));
  ASSERT_TRUE(shmid.ok());
  auto table = Sh(StrFormat("nsenter -t %d -i cat /proc/sysvipc/shm", pid_));
  ASSERT_OK(table);
  std::istringstream in(*table);
  std::string line;
  std::getline(in, line);  // header
  int nattch = -1;
  for (; std::getline(in, line);) {
    long key, id, perms, size, cpid, lpid, n;
    if (sscanf(line.c_str(), "%ld %ld %lo %ld %ld %ld %ld", &key, &id, &perms, &size, &cpid, &lpid,
               &n) == 7 &&
        id == atol(shmid->c_str()))
      nattch = static_cast<int>(n);
  }
  EXPECT_EQ(nattch, 2) << *table;
}

}  // namespace
}  // namespace godwit::container
