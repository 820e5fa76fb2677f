// Every fd kind through the real `godwit dump` / `godwit restore` (same pids, zdtm pattern:
// tests/helpers/fd_kinds.c sets up the state, is dumped and killed, restored, and checks its own
// state after GO). The TCP tests stream a checksummed pattern between a process in the dumped
// tree and a peer in another network namespace across dump and restore.
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>

#include <gtest/gtest.h>

#include "common/fs.h"
#include "common/result.h"
#include "common/scope_exit.h"
#include "files/files.h"
#include "images/image.h"
#include "cr_util.h"

namespace godwit::crtest {
namespace {

int RunCmd(const std::vector<std::string>& args, std::string* err = nullptr) {
  std::string errf = StrFormat("/tmp/godwit-files-run-%d.err", getpid());
  pid_t pid = fork();
  if (pid == 0) {
    int null = open("/dev/null", O_RDWR);
    int e = open(errf.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(null, 0);
    dup2(null, 1);
    dup2(e, 2);
    for (int fd = 3; fd < 1024; fd++) close(fd);
    std::vector<char*> av;
    for (const auto& a : args) av.push_back(const_cast<char*>(a.c_str()));
    av.push_back(nullptr);
    execvp(av[0], av.data());
    _exit(127);
  }
  int st = Wait(pid);
  auto e = fs::ReadFile(errf);
  if (err) *err = e.ok() ? *e : "";
  unlink(errf.c_str());
  return st;
}

class FilesZdtm : public ::testing::Test {
 protected:
  void TearDown() override {
    for (pid_t p : pids_) KillAndReap(p);
    auto fail = fs::ReadFile(dir_ / "fail.txt");
    if (fail.ok()) ADD_FAILURE() << *fail;
  }
  int DumpKillRestore(pid_t pid, const std::vector<std::string>& dump_extra = {},
                      const std::vector<std::string>& restore_prefix = {}) {
    std::vector<std::string> args = {"dump", "--pid", std::to_string(pid), "--images-dir", dir_ / "img"};
    args.insert(args.end(), dump_extra.begin(), dump_extra.end());
    // The helper's children die with it and are reparented to us (subreaper): reap exactly them
    // (other children of the test, like a TCP peer, keep running).
    std::vector<pid_t> kids;
    std::ifstream kf(StrFormat("/proc/%d/task/%d/children", pid, pid));
    for (pid_t k; kf >> k;) kids.push_back(k);
    auto d = Godwit(args);
    EXPECT_EQ(d.status, 0) << d.err;
    if (d.status != 0) return -1;
    EXPECT_EQ(Wait(pid), 128 + SIGKILL);
    for (pid_t k : kids) waitpid(k, nullptr, 0);
    Touch(dir_ / "go");
    std::vector<std::string> r = restore_prefix;
    r.insert(r.end(), {GODWIT_BIN, "restore", "--images-dir", dir_ / "img"});
    std::string err;
    int st = RunCmd(r, &err);
    EXPECT_EQ(st, 0) << err;
    return st;
  }
  pid_t Start(std::vector<std::string> args) {
    pid_t p = StartHelper("fd_kinds", std::move(args));
    if (p > 0) pids_.push_back(p);
    return p;
  }
  TempDir dir_;
  std::vector<pid_t> pids_;
};

#define KIND_TEST(Name, mode)                                    \
  TEST_F(FilesZdtm, Name) {                                      \
    pid_t pid = Start({"{READY}", dir_ / "go", mode, dir_.path()}); \
    ASSERT_GT(pid, 0);                                           \
    EXPECT_EQ(DumpKillRestore(pid), 0);                          \
  }
KIND_TEST(FilesDeletedDupSharedOffset, "files")
KIND_TEST(PipesFifosSharedByProcesses, "pipes")
KIND_TEST(UnixSockets, "unix")
KIND_TEST(EventfdEpollSignalfdTimerfdInotifyMemfd, "anon")
KIND_TEST(Pty, "pty")
KIND_TEST(Locks, "locks")

// Two network namespaces joined by a veth pair, 198.18.X.1 (A) and 198.18.X.2 (B).
class Netns {
 public:
  Netns() {
    int x = getpid() % 250;
    a_ = StrFormat("gwfa%d", getpid());
    b_ = StrFormat("gwfb%d", getpid());
    ip_a_ = StrFormat("198.18.%d.1", x);
    ip_b_ = StrFormat("198.18.%d.2", x);
    Sh(StrFormat("ip netns add %s && ip netns add %s", a_.c_str(), b_.c_str()));
    ok_ = Link(a_);
  }
  ~Netns() {
    Sh(StrFormat("ip netns del %s 2>/dev/null; ip netns del %s", a_.c_str(), b_.c_str()));
  }
  // (Re)creates the veth pair between ns and B with the same addresses.
  bool Link(const std::string& ns) {
    // Fresh names each time: a deleted namespace's veths go away asynchronously.
    std::string va = StrFormat("gva%d%d", getpid(), links_), vb = StrFormat("gvb%d%d", getpid(), links_);
    links_++;
    return Sh(StrFormat(
               "ip link add %s type veth peer name %s && ip link set %s netns %s && "
               "ip link set %s netns %s && ip -n %s addr add %s/24 dev %s && "
               "ip -n %s link set %s up && ip -n %s link set lo up && "
               "ip -n %s addr add %s/24 dev %s && ip -n %s link set %s up && ip -n %s link set lo up",
               va.c_str(), vb.c_str(), va.c_str(), ns.c_str(), vb.c_str(), b_.c_str(), ns.c_str(),
               ip_a_.c_str(), va.c_str(), ns.c_str(), va.c_str(), ns.c_str(), b_.c_str(),
               ip_b_.c_str(), vb.c_str(), b_.c_str(), vb.c_str(), b_.c_str())) == 0;
  }
  static int Sh(const std::string& cmd) { return system((cmd + " >/dev/null 2>&1").c_str()); }
  bool ok_ = false;
  int links_ = 0;
  std::string a_, b_, ip_a_, ip_b_;
};

bool ServerAccepted(pid_t pid) {
  // The listener closes after accept: one socket, the connection.
  auto names = fs::ListDir(StrFormat("/proc/%d/fd", pid));
  int socks = 0;
  if (names.ok())
    for (const auto& n : *names) {
      char l[64] = {};
      if (readlink(StrFormat("/proc/%d/fd/%s", pid, n.c_str()).c_str(), l, sizeof(l) - 1) > 0 &&
          !strncmp(l, "socket:", 7))
        socks++;
    }
  return socks == 1 && BlockedSyscall(pid) == SYS_read;
}

TEST_F(FilesZdtm, TcpServerInTreeClientOutsideStreamsAcrossDumpRestore) {
  Netns n;
  ASSERT_TRUE(n.ok_);
  pid_t server = Start({"{READY}", dir_ / "go", "tcp-server", dir_.path(), n.a_, n.ip_a_, "7001"});
  ASSERT_GT(server, 0);
  pid_t client = Start({"{READY}", dir_ / "go", "tcp-client", dir_.path(), n.b_, n.ip_a_, "7001"});
  ASSERT_GT(client, 0);
  ASSERT_TRUE(WaitFor(5000, ServerAccepted, server));
  EXPECT_EQ(DumpKillRestore(server, {"--tcp-established"},
                            {"nsenter", "--net=/run/netns/" + n.a_}), 0);
  EXPECT_EQ(Wait(client), 0) << "the client saw an error or a wrong byte";
}

TEST_F(FilesZdtm, TcpClientInTreeServerOutside) {
  Netns n;
  ASSERT_TRUE(n.ok_);
  pid_t server = Start({"{READY}", dir_ / "go", "tcp-server", dir_.path(), n.b_, n.ip_b_, "7002"});
  ASSERT_GT(server, 0);
  pid_t client = Start({"{READY}", dir_ / "go", "tcp-client", dir_.path(), n.a_, n.ip_b_, "7002"});
  ASSERT_GT(client, 0);
  ASSERT_TRUE(WaitFor(5000, ServerAccepted, server));
  EXPECT_EQ(DumpKillRestore(client, {"--tcp-established"},
                            {"nsenter", "--net=/run/netns/" + n.a_}), 0);
  EXPECT_EQ(Wait(server), 0) << "the server saw an error or a wrong byte";
}

TEST_F(FilesZdtm, TcpLeaveRunningGivesTheConnectionBack) {
  Netns n;
  ASSERT_TRUE(n.ok_);
  pid_t server = Start({"{READY}", dir_ / "go", "tcp-server", dir_.path(), n.a_, n.ip_a_, "7004"});
  ASSERT_GT(server, 0);
  pid_t client = Start({"{READY}", dir_ / "go", "tcp-client", dir_.path(), n.b_, n.ip_a_, "7004"});
  ASSERT_GT(client, 0);
  ASSERT_TRUE(WaitFor(5000, ServerAccepted, server));
  auto d = Godwit({"dump", "--pid", std::to_string(server), "--images-dir", dir_ / "img",
                   "--tcp-established", "--leave-running"});
  ASSERT_EQ(d.status, 0) << d.err;
  // Repair mode is off again and the lock is gone: the stream goes on and ends cleanly.
  std::string err;
  std::string tables = StrFormat("/tmp/godwit-files-tables-%d", getpid());
  RunCmd({"sh", "-c", "ip netns exec " + n.a_ + " nft list tables > " + tables});
  auto t = fs::ReadFile(tables);
  unlink(tables.c_str());
  EXPECT_TRUE(t.ok() && t->find("godwit_lock") == std::string::npos) << (t.ok() ? *t : "");
  Touch(dir_ / "go");
  EXPECT_EQ(Wait(server), 0);
  EXPECT_EQ(Wait(client), 0);
}

TEST_F(FilesZdtm, TcpServerRestoredIntoFreshNetnsWithSameAddress) {
  Netns n;
  ASSERT_TRUE(n.ok_);
  pid_t server = Start({"{READY}", dir_ / "go", "tcp-server", dir_.path(), n.a_, n.ip_a_, "7003"});
  ASSERT_GT(server, 0);
  pid_t client = Start({"{READY}", dir_ / "go", "tcp-client", dir_.path(), n.b_, n.ip_a_, "7003"});
  ASSERT_GT(client, 0);
  ASSERT_TRUE(WaitFor(5000, ServerAccepted, server));
  auto d = Godwit({"dump", "--pid", std::to_string(server), "--images-dir", dir_ / "img",
                   "--tcp-established"});
  ASSERT_EQ(d.status, 0) << d.err;
  EXPECT_EQ(Wait(server), 128 + SIGKILL);
  // What migration does: the old namespace goes away, a new one carries the same address.
  std::string fresh = n.a_ + "n";
  // The link goes first, synchronously: a namespace's teardown is asynchronous and flushes its
  // nftables tables before its devices go, so a peer's retransmission could meet the dying
  // namespace without socket and without lock, and get a RST. (Migration must do the same.)
  ASSERT_EQ(Netns::Sh(StrFormat("ip -n %s link del gva%d0", n.a_.c_str(), getpid())), 0);
  Netns::Sh("ip netns del " + n.a_);
  ASSERT_EQ(Netns::Sh("ip netns add " + fresh), 0);
  ScopeExit del([&] { Netns::Sh("ip netns del " + fresh); });
  // As migration does: lock the connections in the new namespace before its address comes up,
  // or the peer's next retransmission meets a kernel without the socket and gets a RST.
  pid_t locker = fork();
  if (locker == 0) {
    int ns = open(("/run/netns/" + fresh).c_str(), O_RDONLY);
    if (ns < 0 || setns(ns, CLONE_NEWNET) < 0) _exit(10);
    auto set = images::ImageSet::Open(dir_ / "img");
    if (!set.ok()) _exit(11);
    auto rest = files::FdRestorer::Load(*set, {});
    if (!rest.ok()) _exit(12);
    _exit((*rest)->LockNetwork().ok() ? 0 : 13);
  }
  ASSERT_EQ(Wait(locker), 0);
  if (getenv("GODWIT_FILES_DEBUG")) (void)!system(("ip netns exec " + fresh + " nft list ruleset >&2").c_str());
  ASSERT_TRUE(n.Link(fresh));
  Touch(dir_ / "go");
  std::string err;
  EXPECT_EQ(RunCmd({"nsenter", "--net=/run/netns/" + fresh, GODWIT_BIN, "restore", "--images-dir",
                 dir_ / "img"}, &err), 0) << err;
  EXPECT_EQ(Wait(client), 0) << "the client saw an error or a wrong byte";
}

}  // namespace
}  // namespace godwit::crtest
