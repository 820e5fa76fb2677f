// `godwit --cgroup-parent P` (issue 10, hosts on one machine): two godwit instances with their own
// --root and cgroup parent hold one container id at once (the two ends of a migration on one
// machine). The parent is recorded in the container's state: the later verbs (state, ps, pause,
// resume, kill, delete) find the cgroup without the flag. Nothing is left once both are deleted.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "runtime/cgroup.h"
#include "runtime/runtime.h"
#include "tests/container_test_util.h"

namespace godwit {
namespace {

using container::testing::CliRun;
using container::testing::Godwit;
using container::testing::Sh;
using container::testing::TempDir;

class CgroupParent : public ::testing::Test {
 protected:
  void SetUp() override {
    id_ = StrFormat("gwcgp%d", getpid());
    ra_ = tmp_.path() + "/root-a";
    rb_ = tmp_.path() + "/root-b";
    pa_ = StrFormat("godwit-cgpa%d", getpid());
    pb_ = StrFormat("godwit-cgpb%d/host-b", getpid());  // two levels
    rootfs_ = tmp_.path() + "/rootfs";
    auto r = runtime::MakeBusyboxRootfs(rootfs_);
    ASSERT_TRUE(r.ok()) << r.error().to_string();
  }
  void TearDown() override {
    (void)runtime::Delete(ra_, id_, true);
    (void)runtime::Delete(rb_, id_, true);
    for (pid_t p : {pid_a_, pid_b_})
      if (p > 0) ::waitpid(p, nullptr, WNOHANG);
  }
  CliRun Run(const std::string& root, const std::string& parent) {
    std::vector<std::string> a = {"--root", root};
    if (!parent.empty()) a.insert(a.end(), {"--cgroup-parent", parent});
    a.insert(a.end(), {"run", "--rootfs", rootfs_, "--name", id_, "--detach", "--memory", "32M",
                       "--", "sleep", "1000"});
    return Godwit(a);
  }
  nlohmann::json State(const std::string& root) {
    CliRun s = Godwit({"--root", root, "state", id_});
    if (s.code != 0) return nullptr;
    return nlohmann::json::parse(s.out, nullptr, false);
  }
  // The cgroup lines of /proc/PID/cgroup that end in "/<id>": each must be under parent.
  void ExpectUnder(pid_t pid, const std::string& parent) {
    auto cg = fs::ReadFile(StrFormat("/proc/%d/cgroup", pid));
    ASSERT_TRUE(cg.ok());
    int lines = 0;
    for (const auto& l : fs::Split(*cg, '\n')) {
      if (l.size() < id_.size() || l.substr(l.size() - id_.size()) != id_) continue;
      lines++;
      EXPECT_NE(l.find(":/" + parent + "/" + id_), std::string::npos) << l;
    }
    EXPECT_GE(lines, 2) << *cg;  // memory (v1) and the unified tree at least, on this machine
  }
  // Any cgroup directory named like the id, or the parents, anywhere in the hierarchies.
  std::string Leftovers() {
    auto out =
        Sh(StrFormat("find /sys/fs/cgroup -maxdepth 4 -type d \\( -name %s -o -name "
                     "godwit-cgpa%d -o -name godwit-cgpb%d \\)",
                     id_.c_str(), getpid(), getpid()));
    return out.ok() ? *out : out.error().to_string();
  }

  TempDir tmp_{"cgparent"};
  std::string id_, ra_, rb_, pa_, pb_, rootfs_;
  pid_t pid_a_ = 0, pid_b_ = 0;
};

TEST_F(CgroupParent, OneIdUnderTwoRootsAndParents) {
  CliRun a = Run(ra_, pa_);
  ASSERT_EQ(a.code, 0) << a;
  CliRun b = Run(rb_, pb_);
  ASSERT_EQ(b.code, 0) << b;
  auto sa = State(ra_), sb = State(rb_);
  ASSERT_TRUE(sa.is_object() && sb.is_object());
  EXPECT_EQ(sa["status"], "running");
  EXPECT_EQ(sb["status"], "running");
  pid_a_ = sa["pid"].get<int>();
  pid_b_ = sb["pid"].get<int>();
  ASSERT_GT(pid_a_, 0);
  ASSERT_GT(pid_b_, 0);
  ASSERT_NE(pid_a_, pid_b_);
  ExpectUnder(pid_a_, pa_);
  ExpectUnder(pid_b_, pb_);
  // The record keeps the parent.
  auto rec = fs::ReadFile(ra_ + "/" + id_ + "/state.json");
  ASSERT_TRUE(rec.ok());
  EXPECT_EQ(nlohmann::json::parse(*rec)["cgroup"]["parent"], pa_);

  // Later verbs without the flag find each container's own cgroup.
  CliRun ps = Godwit({"--root", ra_, "ps", "--format", "json", id_});
  ASSERT_EQ(ps.code, 0) << ps;
  EXPECT_EQ(nlohmann::json::parse(ps.out), nlohmann::json::array({pid_a_}));
  ps = Godwit({"--root", rb_, "ps", "--format", "json", id_});
  ASSERT_EQ(ps.code, 0) << ps;
  EXPECT_EQ(nlohmann::json::parse(ps.out), nlohmann::json::array({pid_b_}));
  ASSERT_EQ(Godwit({"--root", ra_, "pause", id_}).code, 0);
  EXPECT_EQ(State(ra_)["status"], "paused");
  EXPECT_EQ(State(rb_)["status"], "running");
  ASSERT_EQ(Godwit({"--root", ra_, "resume", id_}).code, 0);
  EXPECT_EQ(State(ra_)["status"], "running");
  // kill --all reaches b's processes only.
  ASSERT_EQ(Godwit({"--root", rb_, "kill", "--all", id_, "KILL"}).code, 0);
  for (int i = 0; i < 500 && State(rb_)["status"] != "stopped"; ++i) ::usleep(10000);
  EXPECT_EQ(State(rb_)["status"], "stopped");
  EXPECT_EQ(State(ra_)["status"], "running");

  ASSERT_EQ(Godwit({"--root", ra_, "delete", "-f", id_}).code, 0);
  ASSERT_EQ(Godwit({"--root", rb_, "delete", id_}).code, 0);
  EXPECT_FALSE(fs::Exists(ra_ + "/" + id_));
  EXPECT_FALSE(fs::Exists(rb_ + "/" + id_));
  EXPECT_EQ(Leftovers(), "");
}

// Without separate parents, the second instance's create finds the cgroup taken: kExists (4),
// and leaves the first container and its own root as they were.
TEST_F(CgroupParent, SameParentRefusesTheSecondCopy) {
  CliRun a = Run(ra_, pa_);
  ASSERT_EQ(a.code, 0) << a;
  CliRun b = Run(rb_, pa_);
  EXPECT_EQ(b.code, 4) << b;
  EXPECT_NE(b.err.find("exists"), std::string::npos) << b;
  EXPECT_FALSE(fs::Exists(rb_ + "/" + id_));
  EXPECT_EQ(State(ra_)["status"], "running");
  ASSERT_EQ(Godwit({"--root", ra_, "delete", "-f", id_}).code, 0);
  EXPECT_EQ(Leftovers(), "");
}

TEST_F(CgroupParent, BadParentIsAUsageError) {
  for (const char* bad : {"../up", "/abs", "a//b", "a/", ".", "sp ace"}) {
    CliRun r = Run(ra_, bad);
    EXPECT_EQ(r.code, 2) << bad << ": " << r;
    EXPECT_FALSE(fs::Exists(ra_ + "/" + id_)) << bad;
  }
  EXPECT_EQ(Leftovers(), "");
}

TEST(CgroupParentNames, ValidateAndLevels) {
  EXPECT_TRUE(runtime::ValidateCgroupParent("godwit").ok());
  EXPECT_TRUE(runtime::ValidateCgroupParent("godwit/host-a.1_x").ok());
  EXPECT_FALSE(runtime::ValidateCgroupParent("").ok());
  EXPECT_FALSE(runtime::ValidateCgroupParent("a/../b").ok());
  EXPECT_FALSE(runtime::ValidateCgroupParent(std::string(129, 'a')).ok());
  EXPECT_EQ(runtime::cgroup_internal::ParentLevels("a/b/id"),
            (std::vector<std::string>{"a", "a/b"}));
  EXPECT_TRUE(runtime::cgroup_internal::ParentLevels("id").empty());
}

}  // namespace
}  // namespace godwit
