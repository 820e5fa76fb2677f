// Process and file state issue 11 found wrong after a restore, through `godwit dump` and
// `godwit restore` (tests/helpers/z_more.c, the zdtm cycle of zdtm_harness.h).
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <regex>
#include <set>
#include <sstream>
#include <string>

#include "common/clone3.h"

#include "zdtm_harness.h"

namespace godwit::crtest {
namespace {

class ZdtmMore : public ZdtmHarness {
 protected:
  ZdtmMore() : ZdtmHarness("z_more") {}
  void CleanUp() override { RemoveRecordedCgroups(); }
};

#define ZDTM(Name, mode) \
  TEST_F(ZdtmMore, Name) { RoundTrip(mode); }

// sigtrap: the int3 of an injected call resets a blocked or ignored SIGTRAP to SIG_DFL (forced
// signal); the handler, a pending SIGTRAP and an ignored one must all survive dump and restore.
ZDTM(SigtrapHandlerPendingAndIgnored, "sigtrap")
// seccomp_filter_tsync: threads share the filters they were made with; a TSYNC filter installed
// after the restore reaches them all (it hung: the TSYNC failed).
ZDTM(SeccompFilterTsyncAfterRestore, "seccomp_tsync")
// membarrier: registrations of the mm come back.
ZDTM(MembarrierRegistrations, "membarrier")

TEST_F(ZdtmMore, Loginuid) {
  pid_t pid = Start("loginuid");
  if (pid <= 0) GTEST_SKIP() << "no writable /proc/self/loginuid";
  ASSERT_EQ(DumpKillRestore(pid), "");
  ASSERT_EQ(kill(pid, SIGUSR2), 0);
  EXPECT_EQ(WaitBounded(pid, 30000), 0);
  pids_.clear();
}

// pty01/pty03: the slave's owner, group and mode (grantpt's) come back with its number.
ZDTM(PtySlaveOwnerGroupAndMode, "pty_owner")
// cgroup00/cgroup04: each process of the tree back in its cgroups (a named v1 hierarchy, two
// levels, and cgroup2), with no flag.
ZDTM(CgroupsOfTheTreeWithoutAFlag, "cgroups")
// sock_filter: SO_ATTACH_FILTER programs and SO_LOCK_FILTER.
ZDTM(SockFilterAttachedAndLocked, "sock_filter")
// socket_udp_shutdown: connected UDP sockets shut for writing / for reading.
ZDTM(SocketUdpShutdown, "udp_shutdown")

// socket-tcp{,6,4v6}-fin-wait1: the tree's end in FIN-WAIT-1 behind a full send queue, the peer
// outside the tree; restored, the queue and the FIN reach the peer, and its data comes in.
TEST_F(ZdtmMore, SocketTcpFinWait1) { RoundTrip("fin_wait1", {"--tcp-established"}); }
// socket-tcp{,6}-syn-sent: a connect in progress (its SYNs dropped by a full listener outside
// the tree) comes back connecting from the same address with the same ISN; once the listener
// has room, the handshake completes and data flows (the control connection is established:
// --tcp-established).
TEST_F(ZdtmMore, SocketTcpSynSent) { RoundTrip("syn_sent", {"--tcp-established"}); }
TEST_F(ZdtmMore, SocketTcp6SynSent) { RoundTrip("syn_sent_v6", {"--tcp-established"}); }
TEST_F(ZdtmMore, SocketTcp6FinWait1) { RoundTrip("fin_wait1_v6", {"--tcp-established"}); }
TEST_F(ZdtmMore, SocketTcp4v6FinWait1) { RoundTrip("fin_wait1_4v6", {"--tcp-established"}); }

// sock_ip_opts00/01, sock_tcp_opts00/01: IP_PKTINFO, IPV6_RECVPKTINFO, FREEBIND, IP_RECVERR,
// MTU discovery, multicast loop off, TCP_CORK, TCP_NODELAY, TCP_QUICKACK (1 and 0),
// TCP_USER_TIMEOUT, UDP_SEGMENT on UDP, raw and TCP sockets, v4 and v6 (InetSocket.extra_opts).
ZDTM(SockIpAndTcpOptions, "sock_ip_tcp_opts")
// socket_snd_addr: queued datagrams name their senders again (abstract and path, closed since
// the send or still open).
ZDTM(SocketSndAddr, "snd_addr")
// tty03: a session leader holding /dev/tty, its controlling terminal a pty of the tree.
ZDTM(DevTtyOfASessionLeader, "dev_tty")
// unlink_fstat03: an unlinked name of a file with another link is that same file again.
ZDTM(UnlinkedNameOfAFileWithAnotherLink, "unlink_linked")
// --leave-running: the remap link is gone again (the helper checks its file has one link).
TEST_F(ZdtmMore, UnlinkedNameLeaveRunningRemovesTheRemap) {
  pid_t pid = Start("unlink_linked");
  ASSERT_GT(pid, 0);
  auto d = Godwit({"dump", "--leave-running", "--pid", std::to_string(pid), "--images-dir",
                   dir_ / "img"});
  ASSERT_EQ(d.status, 0) << d.err;
  ASSERT_EQ(kill(pid, SIGUSR2), 0);
  EXPECT_EQ(WaitBounded(pid, 30000), 0);
  pids_.clear();
}
// zombie01: a zombie in a process group whose leader is gone is in that group again.
ZDTM(ZombieInAGroupWhoseLeaderIsGone, "zombie_pgid")
// A process that unmapped its [vdso]: the injected calls start at a syscall instruction of
// another executable mapping; restored without a [vdso].
ZDTM(VdsoUnmapped, "vdso_unmapped")
// socket_close_data: a socketpair end whose peer closed after sending (datagram and stream).
ZDTM(SocketCloseDataDatagramAndStream, "close_data")
// chroot, chroot-file: files inside and outside the root of a chrooted process.
ZDTM(ChrootWithFilesInsideAndOutside, "chroot")
// pty04: pty slaves whose master was closed (hung up; one was the session's controlling
// terminal) come back hung up.
ZDTM(PtySlaveWhoseMasterClosedHungUp, "pty_no_master")
// fifo_ro, unlink_fifo_wronly: a FIFO held by a reader only; an unlinked one by a writer only.
ZDTM(FifoReaderOnlyAndUnlinkedWriterOnly, "fifo_ro")
// rmdir_open: directories removed while open (plainly and O_PATH) are removed directories again.
ZDTM(RmdirOpen, "rmdir_open")
// deleted_dev: a device node unlinked while open is made again, opened and unlinked.
ZDTM(DeletedDeviceNode, "deleted_dev")
// sk-freebind: IP_FREEBIND / IPV6_FREEBIND sockets bound to addresses this host lacks.
ZDTM(SkFreebindV4AndV6, "freebind")

std::set<std::string> LockTables() {
  std::set<std::string> out;
  FILE* f = popen("nft list tables 2>/dev/null", "r");
  if (!f) return out;
  char line[256];
  while (fgets(line, sizeof(line), f)) {
    char name[200];
    if (sscanf(line, "table inet %199s", name) == 1 && strncmp(name, "godwit_lock_", 12) == 0)
      out.insert(name);
  }
  pclose(f);
  return out;
}

// A restore that fails after loading the files (here: the root's pid is taken) removes the
// dump's network lock: nothing else ever would, and the connection's packets would be dropped
// forever. The lock's name is the one the dump recorded (files-netlock.img).
TEST_F(ZdtmMore, FailedRestoreRemovesTheNetworkLock) {
  pid_t pid = Start("tcp_pair");
  ASSERT_GT(pid, 0);
  auto d = Godwit({"dump", "--pid", std::to_string(pid), "--images-dir", dir_ / "img",
                   "--tcp-established"});
  ASSERT_EQ(d.status, 0) << d.err;
  ASSERT_EQ(Wait(pid), 128 + SIGKILL);
  pids_.clear();
  std::smatch m;
  std::string img = ReadAll(dir_ / "img/files-netlock.img");
  ASSERT_TRUE(std::regex_search(img, m, std::regex("godwit_lock_[0-9_]+"))) << "no lock recorded";
  std::string table = m.str();
  EXPECT_TRUE(LockTables().count(table)) << table << ": the dump's lock holds until the restore";
  // The pid taken by a process of ours.
  int go[2];
  ASSERT_EQ(pipe(go), 0);
  pid_t squatter = Clone3WithPids(0, &pid, 1);
  if (squatter == 0) {
    close(go[1]);
    char c;
    (void)!read(go[0], &c, 1);
    _exit(0);
  }
  ASSERT_EQ(squatter, pid) << "could not take pid " << pid;
  auto r = Godwit({"restore", "--images-dir", dir_ / "img", "--detach", "--tcp-established"});
  close(go[1]);
  close(go[0]);
  waitpid(squatter, nullptr, 0);
  EXPECT_NE(r.status, 0) << "the restore succeeded with its pid taken";
  EXPECT_NE(r.err.find("in use"), std::string::npos) << r.err;
  EXPECT_FALSE(LockTables().count(table)) << table << " left behind by the failed restore";
}

}  // namespace
}  // namespace godwit::crtest
