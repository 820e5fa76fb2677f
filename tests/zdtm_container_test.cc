// Never lose a workload (issue 11), through the binary as a new user would: a container started
// with `godwit run --detach ... > app.log` (its stdout a file of the host, outside the
// container's mount namespace) is checkpointed (deleted) and restored: the restored container
// writes on into the same host file, at the end, where it left off.
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "runtime/runtime.h"
#include "tests/container_test_util.h"

namespace godwit::container {
namespace {

using testing::CliRun;
using testing::Godwit;
using testing::TempDir;

class ZdtmContainer : public ::testing::Test {
 protected:
  void SetUp() override {
    id_ = StrFormat("gwzc%d", getpid());
    root_ = tmp_.path() + "/state";
    rootfs_ = tmp_.path() + "/rootfs";
    log_ = tmp_.path() + "/app.log";
    ASSERT_OK(runtime::MakeBusyboxRootfs(rootfs_));
  }
  void TearDown() override {
    (void)runtime::Delete(root_, id_, true);
    if (pid_ > 0) ::waitpid(pid_, nullptr, 0);
  }
  pid_t StatePid() {
    CliRun s = Godwit({"--root", root_, "state", id_});
    auto j = nlohmann::json::parse(s.out, nullptr, false);
    if (s.code != 0 || j.is_discarded()) return 0;
    return j.value("pid", 0);
  }
  // The "tick N" lines of the log, N counting up from 1 without a gap.
  int Lines(bool* ordered) {
    auto text = fs::ReadFile(log_);
    if (!text.ok()) return -1;
    int n = 0;
    *ordered = true;
    for (const auto& l : fs::Split(*text, '\n')) {
      if (l.rfind("tick ", 0) != 0) continue;  // godwit run prints the container's id there too
      if (l != StrFormat("tick %d", n + 1)) *ordered = false;
      n++;
    }
    return n;
  }
  int WaitLines(int above) {
    bool ordered;
    for (int i = 0; i < 1000; i++) {
      int n = Lines(&ordered);
      if (n > above) return n;
      ::usleep(10000);
    }
    return Lines(&ordered);
  }

  void CheckpointRestoreCycles(int cycles, bool check_order);

  TempDir tmp_{"zdc"};
  std::string id_, root_, rootfs_, log_;
  pid_t pid_ = 0;
};

TEST_F(ZdtmContainer, StdoutToAHostFileSurvivesKillModeCheckpoint) {
  // `godwit run --detach ... > app.log`: the shell opens app.log on the host.
  std::string cmd = StrFormat(
      "%s --root %s run --rootfs %s --name %s --detach -- sh -c "
      "'i=0; while true; do i=$((i+1)); echo tick $i; usleep 10000; done' > %s 2>/dev/null "
      "</dev/null",
      GODWIT_BIN, root_.c_str(), rootfs_.c_str(), id_.c_str(), log_.c_str());
  ASSERT_OK(testing::Sh(cmd));
  pid_ = StatePid();
  ASSERT_GT(pid_, 0);
  ASSERT_GT(WaitLines(3), 3);
  std::string img = tmp_.path() + "/ckpt";
  CliRun c = Godwit({"--root", root_, "checkpoint", id_, "--image-path", img});
  ASSERT_EQ(c.code, 0) << c;
  ::waitpid(pid_, nullptr, 0);
  pid_ = 0;
  bool ordered = false;
  int at_checkpoint = Lines(&ordered);
  EXPECT_TRUE(ordered) << *fs::ReadFile(log_);
  CliRun r = Godwit({"--root", root_, "restore", id_, "--image-path", img, "--detach"});
  ASSERT_EQ(r.code, 0) << r;
  pid_ = StatePid();
  ASSERT_GT(pid_, 0);
  EXPECT_GT(WaitLines(at_checkpoint + 3), at_checkpoint + 3) << "the restored container writes on";
  int n = Lines(&ordered);
  EXPECT_TRUE(ordered) << "each line once, at the end of the host file (" << n << " lines)";
  // The same file: the restored container's stdout is the host's app.log.
  struct stat a, b;
  ASSERT_EQ(::stat(log_.c_str(), &a), 0);
  ASSERT_EQ(::stat(StrFormat("/proc/%d/fd/1", pid_).c_str(), &b), 0);
  EXPECT_EQ(a.st_ino, b.st_ino);
  EXPECT_EQ(a.st_dev, b.st_dev);
}

// A container appending a counter to a file of its (bind) rootfs every millisecond, checkpointed
// (killed) and restored `cycles` times: every restore finds the rootfs as the checkpoint recorded
// it (it refuses a changed one), nothing is written between a checkpoint and its restore, and the
// restored loop appends on. check_order: the file holds each number once, in order.
void ZdtmContainer::CheckpointRestoreCycles(int cycles, bool check_order) {
  CliRun run = Godwit({"--root", root_, "run", "--rootfs", rootfs_, "--name", id_, "--detach",
                       "--", "sh", "-c",
                       "i=0; while true; do i=$((i+1)); echo $i >> /appended; usleep 1000; done"},
                      false);
  ASSERT_EQ(run.code, 0) << run;
  pid_ = StatePid();
  ASSERT_GT(pid_, 0);
  std::string file = rootfs_ + "/appended";
  auto last_line = [&]() -> long {
    auto t = fs::ReadFile(file);
    if (!t.ok() || t->empty()) return 0;
    auto lines = fs::Split(*t, '\n');
    for (auto it = lines.rbegin(); it != lines.rend(); ++it)
      if (!it->empty()) return atol(it->c_str());
    return 0;
  };
  std::string img = tmp_.path() + "/ckpt";
  std::vector<long> ats;  // the last number at each checkpoint
  for (int i = 0; i < cycles; i++) {
    long before = last_line();
    for (int k = 0; k < 500 && last_line() < before + 5; k++) ::usleep(2000);
    (void)fs::RemoveAll(img);
    CliRun c = Godwit({"--root", root_, "checkpoint", id_, "--image-path", img}, false);
    ASSERT_EQ(c.code, 0) << "cycle " << i << ": " << c;
    ::waitpid(pid_, nullptr, 0);
    pid_ = 0;
    long at = last_line();
    ats.push_back(at);
    ::usleep(20000);
    ASSERT_EQ(last_line(), at) << "cycle " << i << ": the container wrote after its checkpoint";
    CliRun r = Godwit({"--root", root_, "restore", id_, "--image-path", img, "--detach"}, false);
    ASSERT_EQ(r.code, 0) << "cycle " << i << ": " << r;
    pid_ = StatePid();
    ASSERT_GT(pid_, 0);
  }
  long end = last_line();
  for (int k = 0; k < 500 && last_line() < end + 5; k++) ::usleep(2000);
  EXPECT_GT(last_line(), end) << "the restored loop appends on";
  auto t = fs::ReadFile(file);
  ASSERT_TRUE(t.ok());
  long n = 0;
  bool ordered = true;
  std::string where;
  for (const auto& l : fs::Split(*t, '\n'))
    if (!l.empty() && atol(l.c_str()) != ++n && ordered) {
      ordered = false;
      where = StrFormat("line %ld is %s", n, l.c_str());
    }
  std::string cuts;
  for (long a : ats) cuts += StrFormat(" %ld", a);
  if (check_order) {
    EXPECT_TRUE(ordered) << "each number once, in order: nothing was written twice or lost: "
                         << where << "; last numbers at the checkpoints:" << cuts;
  }
}

// Nothing in the container runs after a kill-mode checkpoint, 20 times (issue 11: the rootfs
// identity was taken before the engine thawed the cgroup around its seize, and 2 of 3 restores
// refused the rootfs).
TEST_F(ZdtmContainer, NothingRunsAfterKillModeCheckpointTwentyTimes) {
  CheckpointRestoreCycles(20, false);
}

// The restored shell never writes its last number before the checkpoint again (issue 11: 1 in
// ~10 cycles did). The engine detached the tree before the cgroup was frozen again: the shell's
// usleep finished, the original appended N+1 and was then killed, and its copy, dumped in wait4
// before that, appended N+1 again. The checkpoint now freezes the cgroup while the engine still
// holds every thread and detaches them into it (dump::DumpOptions::freeze_before_detach).
TEST_F(ZdtmContainer, RestoredLoopNeverRepeatsItsLastWrite) {
  CheckpointRestoreCycles(20, true);
}

// Rootfs identity (issue 11): a restore refuses a rootfs only where it would break the tree, a
// file the tree holds open or maps that changed, and names it; a change elsewhere in the rootfs
// (a new file, another file rewritten: a second container on the same rootfs) is allowed.
TEST_F(ZdtmContainer, RootfsChangeRefusedOnlyForAFileTheTreeHolds) {
  CliRun run = Godwit({"--root", root_, "run", "--rootfs", rootfs_, "--name", id_, "--detach",
                       "--", "sh", "-c",
                       "exec 3>>/held.log; i=0; while true; do i=$((i+1)); echo $i >&3; "
                       "usleep 5000; done"},
                      false);
  ASSERT_EQ(run.code, 0) << run;
  pid_ = StatePid();
  ASSERT_GT(pid_, 0);
  std::string held = rootfs_ + "/held.log", img = tmp_.path() + "/ckpt";
  auto size_of = [](const std::string& p) -> long {
    struct stat st;
    return ::stat(p.c_str(), &st) == 0 ? st.st_size : -1;
  };
  for (int k = 0; k < 500 && size_of(held) < 8; k++) ::usleep(2000);
  ASSERT_GE(size_of(held), 8);
  auto checkpoint = [&]() {
    (void)fs::RemoveAll(img);
    CliRun c = Godwit({"--root", root_, "checkpoint", id_, "--image-path", img}, false);
    ASSERT_EQ(c.code, 0) << c;
    ::waitpid(pid_, nullptr, 0);
    pid_ = 0;
  };
  auto restore = [&]() {
    return Godwit({"--root", root_, "restore", id_, "--image-path", img, "--detach"}, false);
  };
  ASSERT_NO_FATAL_FAILURE(checkpoint());
  // Elsewhere: a new file and another file rewritten. The restore goes on.
  ASSERT_OK(fs::WriteFile(rootfs_ + "/new-file", "x"));
  ASSERT_OK(fs::WriteFile(rootfs_ + "/etc/hostname", "changed\n"));
  CliRun r = restore();
  ASSERT_EQ(r.code, 0) << "a change the tree does not see: " << r;
  pid_ = StatePid();
  ASSERT_GT(pid_, 0);
  long before = size_of(held);
  for (int k = 0; k < 500 && size_of(held) <= before; k++) ::usleep(2000);
  ASSERT_GT(size_of(held), before) << "the restored loop writes on";
  ASSERT_NO_FATAL_FAILURE(checkpoint());
  // The file it holds open, appended to: refused, naming it; the container stays restorable.
  struct stat st;
  ASSERT_EQ(::stat(held.c_str(), &st), 0);
  auto text = fs::ReadFile(held);
  ASSERT_TRUE(text.ok());
  ASSERT_OK(fs::WriteFile(held, *text + "extra\n"));
  r = restore();
  EXPECT_NE(r.code, 0) << r;
  EXPECT_NE(r.err.find("/held.log"), std::string::npos) << r;
  EXPECT_EQ(StatePid(), 0) << "a refused restore leaves no container";
  // Put back as it was (contents and mtime): the same checkpoint restores.
  ASSERT_OK(fs::WriteFile(held, *text));
  struct timespec times[2] = {st.st_atim, st.st_mtim};
  ASSERT_EQ(::utimensat(AT_FDCWD, held.c_str(), times, 0), 0);
  r = restore();
  ASSERT_EQ(r.code, 0) << r;
  pid_ = StatePid();
  ASSERT_GT(pid_, 0);
}

}  // namespace
}  // namespace godwit::container
