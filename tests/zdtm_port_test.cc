// CRIU zdtm static tests issue 11 had as "mechanism present, unverified", ported
// (tests/helpers/z_port.c) through `godwit dump` and `godwit restore` (the zdtm cycle of
// zdtm_harness.h): the helper sets the test's state up, the test dumps (kills), restores, and the
// restored helper checks its own state.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/mount.h>
#include <unistd.h>

#include <fstream>
#include <sstream>
#include <vector>
#include <string>

#include "zdtm_harness.h"

namespace godwit::crtest {
namespace {

class ZdtmPort : public ZdtmHarness {
 protected:
  ZdtmPort() : ZdtmHarness("z_port") {}
  // Processes outside the tree (the TCP peers, reparented to us) first: the harness's reaping
  // waits for every child.
  void TearDown() override {
    std::ifstream kf("/proc/self/task/" + std::to_string(getpid()) + "/children");
    for (pid_t k; kf >> k;) kill(k, SIGKILL);
    ZdtmHarness::TearDown();
  }
  // What the modes leave outside the temp dir: cgroups ("dir PATH" deepest first, "mount PATH"),
  // nftables tables (DIR/nft) and tmpfs mounts (DIR/mounts).
  void CleanUp() override {
    RemoveRecordedCgroups();
    std::istringstream nft(ReadAll(dir_ / "nft"));
    for (std::string t; nft >> t;)
      (void)!system(("nft delete table inet " + t + " 2>/dev/null").c_str());
    std::istringstream tm(ReadAll(dir_ / "mounts"));
    for (std::string m; tm >> m;) umount2(m.c_str(), MNT_DETACH);
  }
};

#define ZDTM(Name, mode) \
  TEST_F(ZdtmPort, Name) { RoundTrip(mode); }
#define ZDTM_TCP(Name, mode) \
  TEST_F(ZdtmPort, Name) { RoundTrip(mode, {"--tcp-established"}); }

// socket-tcp{,6,4v6}-fin-wait2: the tree's FIN sent and acked, the peer (outside the tree) still
// sending; each mode runs v4, v6 and v4-on-v6 connections at once.
ZDTM_TCP(SocketTcpFinWait2, "tcp_fin_wait2")
// socket-tcp{,6,4v6}-close-wait: the peer's FIN received; the tree still sends, then closes.
ZDTM_TCP(SocketTcpCloseWait, "tcp_close_wait")
// socket-tcp{,6,4v6}-last-ack: the peer's FIN received, then the tree's FIN behind a full send
// queue.
ZDTM_TCP(SocketTcpLastAck, "tcp_last_ack")
// socket-tcp{,6,4v6}-closing: both FINs sent at once behind full queues; the tree read the
// peer's data, its own FIN not yet acked.
ZDTM_TCP(SocketTcpClosing, "tcp_closing")

// socket-tcp-closed, socket-tcp-closed-last-ack: both ends shut; closed sockets read EOF, fail
// writes and keep their addresses; the server's FIN unacked (an nftables drop) in the second.
ZDTM_TCP(SocketTcpClosed, "tcp_closed")
ZDTM_TCP(SocketTcpClosedLastAck, "tcp_closed_last_ack")
// socket-tcp-reseted: a reset connection with unread data.
ZDTM_TCP(SocketTcpReseted, "tcp_reseted")
// socket-tcp-reuseport: two SO_REUSEPORT listeners on one port, one without it since.
ZDTM_TCP(SocketTcpReuseport, "tcp_reuseport")

// sock_opts02 (SO_BUF_LOCK), socket_udp-broadcast (SO_BROADCAST).
ZDTM(SockOpts02BufLockAndBroadcast, "sock_opts02")
// Queued UDP datagrams keep their senders (recvfrom's address: where a server answers).
ZDTM(UdpQueuedDatagramsKeepTheirSenders, "udp_senders")
// socket-ext: a datagram socket connected to one of a process outside the tree: allowed with
// --ext-unix-sk (CRIU's option; reconnected by name at restore). Without it the dump refuses,
// naming the socket and its peer's name.
TEST_F(ZdtmPort, SocketExtConnectedOutside) { RoundTrip("socket_ext", {"--ext-unix-sk"}); }
// Without the flag: refused before the kill-mode dump releases any memory (the check needs the
// whole tree's files, so it runs between the other steps and the memory): the tree runs on.
TEST_F(ZdtmPort, SocketExtRefusedWithoutTheFlagTreeRunsOn) {
  Refused("socket_ext", {"connected to a peer outside the tree"});
}
// socket_aio: a glibc aio_read blocked in a thread on a connection inside the tree.
ZDTM_TCP(SocketAio, "socket_aio")
// fifo_upon_unix_socket00/01: a FIFO made at the path of a bound (unlinked) socket.
ZDTM(FifoUponUnixSocket00, "fifo_upon_unix00")
ZDTM(FifoUponUnixSocket01RelativeName, "fifo_upon_unix01")
// packet_sock_spkt: SOCK_PACKET sockets, bound to lo and not bound.
ZDTM(PacketSockSpkt, "packet_spkt")

// ghost_holes_large00/01: a deleted file with a 1 GiB hole between two data blocks (4 KiB; 1 MiB:
// over CRIU's ghost limit, which CRIU refuses).
ZDTM(GhostHolesLarge00, "ghost_holes_large00")
ZDTM(GhostHolesLarge01, "ghost_holes_large01")
// ghost_multi_hole00/01: a deleted 8 MiB file of 1024 data blocks and holes.
ZDTM(GhostMultiHole, "ghost_multi_hole")
ZDTM(UnlinkFstat04OddNameReadOnlyDir, "unlink_fstat04")
ZDTM(UnlinkRegular00FileInRemovedDir, "unlink_regular00")
// del_standalone_un{,_seqpacket}, deleted_standalone_unix: a listener whose name was replaced.
ZDTM(DelStandaloneUn, "del_standalone_un")
ZDTM(DelStandaloneUnSeqpacket, "del_standalone_un_seqpacket")
ZDTM(MtimeMmap, "mtime_mmap")

// proc-self, remap_dead_pid{,_root}, unhashed_proc, fd_from_pidfd and fd_offset.
ZDTM(ProcSelfNsNet, "proc_self")
ZDTM(RemapDeadPid, "remap_dead_pid")
ZDTM(UnhashedProcCwd, "unhashed_proc")
ZDTM(FdFromPidfdAndFdOffset, "fd_from_pidfd")

// clone_fs, cpu-affinity0, different_creds + thread_different_uid_gid, caps01.
ZDTM(CloneFsSharedByThreads, "clone_fs")
ZDTM(CpuAffinity0, "cpu_affinity")
ZDTM(ThreadsWithOtherCapsAndIds, "thread_creds")
ZDTM(Caps01Ambient, "caps01")
ZDTM(FileLease05Breaking, "file_lease05")
ZDTM(Inotify04NothingQueued, "inotify04")
ZDTM(Timers01OneShot, "timers01")
ZDTM(UffdEventsMappings, "uffd_events")
ZDTM(UptimeGrow, "uptime_grow")
ZDTM(VdsoProxy, "vdso_proxy")

// maps03 (10 GiB), maps11 (MAP_DROPPABLE, MADV_WIPEONFORK), maps12 (guard pages).
ZDTM(Maps03Huge, "maps03")
ZDTM(Maps11DroppableWipeOnFork, "maps11")
ZDTM(Maps12GuardPages, "maps12")

// cgroup01, 02, 03, 05, cgroup_stray: v1 named hierarchies.
ZDTM(CgroupsV1, "cgroups_v1")
// cgroup_threads, cgroupv2_01: threads in groups of their own (v1, and threaded cgroup2).
ZDTM(CgroupThreads, "cgroup_threads")
ZDTM(Cgroupv2_00Threaded, "cgroupv2_00")
ZDTM(CgroupIfpriomap, "cgroup_ifpriomap")

// Found failing when CRIU's own zdtm binaries were run against godwit (docs/zdtm.md):
// file_locks03/04: a flock whose taker closed its fd after forking.
ZDTM(FlockHeldByTheChildAlone, "flock_inherited")
// link10, unlink_fstat02, write_read10: one deleted inode behind several descriptions.
ZDTM(GhostSharedByDescriptionsAndProcesses, "ghost_shared")
// file_lease02/03/04: write leases being broken, to UNLCK (by a writer) and to READ.
ZDTM(WriteLeasesBreaking, "lease_write_breaking")
// inotify00: a watch on an unlinked file the process holds open.
ZDTM(InotifyWatchOnDeletedOpenFile, "inotify_deleted")
// fd01: tmpfile() (O_TMPFILE) descriptions.
ZDTM(OTmpfileFile, "tmpfile")
// sockets_dgram: a datagram socket connected to itself.
ZDTM(DgramSocketConnectedToItself, "dgram_self")
// dead_thread_posix_timer: a SIGEV_THREAD_ID timer whose thread exited.
ZDTM(PosixTimerOfDeadThread, "timer_dead_thread")
// sk-freebind-false: bound to a foreign address with FREEBIND, which was turned off since.
ZDTM(BoundWithFreebindTurnedOff, "freebind_off")
// maps06: 15000 VMAs (the dump's VMA iterator went round without end).
ZDTM(FifteenThousandVmas, "many_vmas")
// chroot: chrooted without a chdir, the cwd outside the root (the dump refused it).
ZDTM(ChrootCwdOutsideRoot, "chroot_cwd_outside")
// fanotify00: /proc/self/fdinfo/N of its own fd N held open (restore opened it before fd N).
ZDTM(OwnFdinfoFileHeldOpen, "own_fdinfo")
// pthread02 in a child: a thread group whose leader called pthread_exit. Refused (it was dumped
// as a zombie, its live thread lost), naming the live thread; the tree runs on.
// The refusal comes while the tree is frozen, naming the child, not the root (Refused's check).
TEST_F(ZdtmPort, ThreadGroupWithoutLeaderRefused) {
  pid_t pid = Start("zombie_leader_threads");
  ASSERT_GT(pid, 0) << "helper setup failed";
  auto d = Godwit({"dump", "--pid", std::to_string(pid), "--images-dir", dir_ / "img"});
  EXPECT_NE(d.status, 0) << "the dump of a thread group without its leader succeeded";
  EXPECT_NE(d.err.find("freeze tree of " + std::to_string(pid)), std::string::npos) << d.err;
  EXPECT_NE(d.err.find("thread group leader exited (pthread_exit) while thread"),
            std::string::npos) << d.err;
  ASSERT_EQ(kill(pid, SIGUSR2), 0);
  EXPECT_EQ(WaitBounded(pid, 30000), 0) << "the refused dump damaged the tree";
  pids_.clear();
}


}  // namespace
}  // namespace godwit::crtest
