// The fd kinds of issue 11 through `godwit dump`/`godwit restore` (tests/helpers/z_kinds.c,
// the zdtm cycle of zdtm_harness.h): O_PATH fds (symlinks, also unlinked; FIFOs, socket files,
// devices), namespace files, pidfds (self, child, grandchild, reaped), UDP-Lite, ping and raw
// sockets; the refusals name pid, fd and kind and leave the tree running. And CRIU's option
// names on both verbs, the way runc, Podman and CRIU users spell them.
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <fstream>
#include <string>

#include "zdtm_harness.h"

namespace godwit::crtest {
namespace {

class ZdtmKinds : public ZdtmHarness {
 protected:
  ZdtmKinds() : ZdtmHarness("z_kinds") {}
};

#define ZDTM(Name, mode) \
  TEST_F(ZdtmKinds, Name) { RoundTrip(mode); }

// symlink, symlink01: a symlink held O_PATH|O_NOFOLLOW, by its name or unlinked.
ZDTM(OpathSymlink, "symlink")
ZDTM(OpathSymlinkUnlinked, "symlink01")
ZDTM(OpathFifoSocketFileDeviceDirRegular, "opath_misc")
ZDTM(NsfsOwnNamespacesPlainAndOpath, "nsfs")
TEST_F(ZdtmKinds, NsfsOfAnotherNamespaceRefusedCleanly) {
  Refused("nsfs_other", {"fd 77", "namespace", "neither"});
}
// pidfd_self, pidfd_child, pidfd_kill, pidfd_dead, pidfd_diffdead.
ZDTM(PidfdSelfBlockingAndNonBlocking, "pidfd_self")
ZDTM(PidfdChildGrandchildAndParentKilledThroughThem, "pidfd_tree")
ZDTM(PidfdReapedProcessesExitStatusAndInodes, "pidfd_dead")
// pidfd_of_thread: a thread's pidfd, opened again once the threads exist (tests/zdtm_port2_test.cc
// sends a signal through one).
ZDTM(PidfdOfThreadAtItsNumber, "pidfd_thread")
ZDTM(SocketUdpLite, "udplite")
ZDTM(SocketRawV4V6IcmpFilter, "raw")
// packet_sock; packet_sock_mmap (tests/zdtm_port2_test.cc): a ring mapped into memory whose socket
// no fd holds any more is refused.
ZDTM(PacketSockOptionsMembershipsRingsFanout, "packet_sock")
TEST_F(ZdtmKinds, PacketRingMappedWithoutItsSocketRefusedCleanly) {
  Refused("packet_mmap", {"packet ring", "no fd of the process holds"});
}

// file_locks01/02: each flock and POSIX lock is held by the process that took it again.
ZDTM(FileLocksHeldByTheirTakers, "file_locks_pid")

// scm00..scm04: pipes and files in flight in datagram, seqpacket and stream queues.
ZDTM(ScmRightsInFlightPipesAndFiles, "scm")
ZDTM(ScmRightsEpollInFlightWatchingItsSocket, "scm_epoll")
// scm06: unix sockets in flight in their own queues, and a pair's end only in flight.
ZDTM(ScmRightsUnixSocketsInFlightLooped, "scm_unix")

// sk-unix-unconn: never-connected unix sockets have no queue to peek.
ZDTM(SkUnixUnconnected, "sk_unix_unconn")

// Zero-length seqpacket and datagram messages; a seqpacket socket whose peer closed.
ZDTM(SkUnixZeroLengthMessagesAndEndOfFile, "zero_len")

// child_opened_proc: files under /proc/PID of processes of the tree follow the restored pids.
ZDTM(ProcFilesOfTreeProcesses, "proc_files")

// socket_icmp: ping sockets need the group in net.ipv4.ping_group_range (off by default);
// the test allows group 0 for its run, as CRIU's does, and puts the range back.
TEST_F(ZdtmKinds, SocketIcmpPing) {
  const char* knob = "/proc/sys/net/ipv4/ping_group_range";
  std::string old = ReadAll(knob);
  ASSERT_FALSE(old.empty());
  { std::ofstream(knob) << "0 0"; }
  RoundTrip("icmp");
  std::ofstream(knob) << old;
}

// CRIU's and runc's option names, on both verbs, as scripts pass them (and the zdtm harness:
// --tcp-established to dump and restore).
TEST_F(ZdtmKinds, CriuOptionNamesOnDumpAndRestore) {
  pid_t pid = Start("symlink");
  ASSERT_GT(pid, 0);
  std::string img = dir_ / "img";
  auto d = Godwit({"dump",
                   "-t" + std::to_string(pid),
                   "-D",
                   img,
                   "--tcp-established",
                   "--file-locks",
                   "-l",
                   "--link-remap",
                   "--ghost-limit",
                   "1M",
                   "--manage-cgroups",
                   "--ext-unix-sk",
                   "-j",
                   "--skip-in-flight",
                   "--evasive-devices",
                   "--timeout",
                   "10",
                   "--root",
                   "/",
                   "-v4",
                   "-o",
                   "dump.log",
                   "--log-pid",
                   "--network-lock",
                   "nftables"});
  ASSERT_EQ(d.status, 0) << d.err;
  ASSERT_EQ(Wait(pid), 128 + SIGKILL);
  std::string pidfile = dir_ / "restored.pid";
  auto r = Godwit({"restore", "--images-dir=" + img, "--restore-detached", "--tcp-established",
                   "--pidfile", pidfile, "--shell-job", "--file-locks", "--manage-cgroups=soft",
                   "--link-remap", "-vvv", "--log-file=restore.log", "--work-dir", dir_.path(),
                   "--ext-unix-sk", "--skip-in-flight"});
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(atoi(ReadAll(pidfile).c_str()), pid);
  ASSERT_EQ(kill(pid, SIGUSR2), 0);
  EXPECT_EQ(WaitBounded(pid, 30000), 0);
  pids_.clear();
}

TEST_F(ZdtmKinds, CriuOptionValuesGodwitCannotHonourAreRefused) {
  auto bad_mode = Godwit({"restore", "-D", dir_.path(), "--manage-cgroups=sometimes"});
  EXPECT_EQ(bad_mode.status, 2) << bad_mode.err;
  EXPECT_NE(bad_mode.err.find("--manage-cgroups"), std::string::npos) << bad_mode.err;
  auto other_root = Godwit({"restore", "-D", dir_.path(), "--root", dir_.path()});
  EXPECT_EQ(other_root.status, 6) << other_root.err;
  EXPECT_NE(other_root.err.find("--root"), std::string::npos) << other_root.err;
  auto unknown = Godwit({"dump", "-t", "1", "-D", dir_.path(), "--no-such-criu-option"});
  EXPECT_EQ(unknown.status, 2) << unknown.err;
}

TEST_F(ZdtmKinds, HelpDescribesEveryCriuOptionWithExamples) {
  for (const char* verb : {"dump", "restore"}) {
    auto h = Godwit({"help", verb});
    ASSERT_EQ(h.status, 0);
    for (const char* opt :
         {"--tcp-established", "--tcp-close", "--shell-job", "--file-locks", "--ext-unix-sk",
          "--manage-cgroups", "--link-remap", "--skip-in-flight", "--images-dir", "-v",
          "--log-file", "--evasive-devices", "--ghost-limit", "--timeout", "--root", "examples:"})
      EXPECT_NE(h.out.find(opt), std::string::npos) << verb << " help lacks " << opt;
  }
  EXPECT_NE(Godwit({"help", "dump"}).out.find("--tree"), std::string::npos);
  auto rh = Godwit({"help", "restore"}).out;
  EXPECT_NE(rh.find("--restore-detached"), std::string::npos);
  EXPECT_NE(rh.find("--pidfile"), std::string::npos);
}

}  // namespace
}  // namespace godwit::crtest
