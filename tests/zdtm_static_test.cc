// CRIU zdtm static tests, ported (tests/helpers/z_static.c): the helper sets one kind of state up
// and reports ready; the test dumps it with `godwit dump` (which kills it), reaps the killed tree,
// restores it with `godwit restore --detach` (the restored root becomes our child: we are a
// subreaper), sends SIGUSR2, and the helper checks its own state and exits 0 (else the number of
// the failed check; its stderr, kept in the test's temp dir, is printed on failure).
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/shm.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <sstream>

#include <gtest/gtest.h>

#include "zdtm_harness.h"

namespace godwit::crtest {
namespace {

class Zdtm : public ZdtmHarness {
 protected:
  Zdtm() : ZdtmHarness("z_static") {}
  void CleanUp() override {
    std::string id = ReadAll(dir_ / "shmid");
    if (!id.empty()) (void)!system(("ipcrm -m " + id + " 2>/dev/null").c_str());
  }
};

#define ZDTM(Name, mode) \
  TEST_F(Zdtm, Name) { RoundTrip(mode); }

ZDTM(Env00, "env00")
ZDTM(Maps00AnonFileSharedPrivate, "maps00")
ZDTM(Maps01Large512MiBSparse, "maps_large")
// madvise state (VmFlags dc = MADV_DONTFORK, dd = MADV_DONTDUMP) comes back.
ZDTM(Maps02MadviseFlags, "maps02")
// maps02 as CRIU checks it: every advice and mmap flag (locked, noreserve, growsdown, droppable,
// mseal) equal after the restore; wipe-on-fork still wipes, the sealed VMA still refuses munmap.
ZDTM(Maps02AllAdviceAndFlags, "mm_madv")
ZDTM(Mprotect00, "mprotect00")
ZDTM(Brk, "brk")
// mlock: VM_LOCKED (VmFlags "lo") and VmLck come back.
ZDTM(Mlock, "mlock")
// mlock, MAP_LOCKED, mlock2(MLOCK_ONFAULT) (not populated), a read-only locked VMA, and
// mlockall(MCL_FUTURE|MCL_ONFAULT) (new mappings locked after the restore).
ZDTM(MlockOnfaultMlockall, "mm_mlock")
// mlock_setuid: locked as root, then setuid to an unprivileged user before the dump.
ZDTM(MlockSetuid, "mm_mlock_setuid")
ZDTM(Vdso01, "vdso01")
ZDTM(Pthread00Tls, "pthread00")
ZDTM(Pthread01KeysCondvar, "pthread01")
ZDTM(FutexWaiters, "futex")
ZDTM(Sigaltstack, "sigaltstack")
ZDTM(SigpendingRtPayloads, "sigpending")
ZDTM(SchedPrioPolicy, "sched")
ZDTM(Session00, "session00")
// A child left in the session its parent quit with setsid (forked before the parent's setsid).
ZDTM(Session01ForeignSession, "session01")
ZDTM(Pgid, "pgid")
ZDTM(Zombie00, "zombie00")
ZDTM(Pid00, "pid00")
ZDTM(ChildThatExeced, "exec")
// Group-stopped children come back stopped with their stop signal (dump/tree.cc records it from
// the seize; restore/restore.cc stops them again): stopped, stopped01/02/12 of zdtm, SIGTSTP, a
// multi-threaded child, a stopped process group.
ZDTM(StoppedChild, "stopped")
ZDTM(Stopped01StopPendingByKill, "stopped01")
ZDTM(Stopped02StopPendingByTkill, "stopped02")
ZDTM(Stopped12, "stopped12")
ZDTM(StoppedBySigtstp, "stopped_tstp")
ZDTM(StoppedMultiThreaded, "stopped_threads")
ZDTM(StoppedProcessGroup, "stopped_pgrp")
ZDTM(ThreadBomb100, "thread_bomb")
ZDTM(WriteRead00, "write_read00")
ZDTM(Pipe00Pipe01, "pipe")
ZDTM(UnlinkFstat00, "unlink_fstat00")
ZDTM(Cwd00, "cwd00")
// A removed cwd (cwd01) or root is recreated, entered and removed again (restore/pstate.cc).
ZDTM(CwdDeleted, "cwd_deleted")
// cwd02: the removed cwd is also open: files/ makes the removed directory again for the fd and
// the cwd is entered through it (one directory, as before).
ZDTM(Cwd02DeletedCwdAlsoOpen, "cwd02")
ZDTM(RootDeleted, "root_deleted")
ZDTM(Umask00, "umask00")
ZDTM(FileShared, "file_shared")
ZDTM(Fifo, "fifo")
ZDTM(LargeFdNumbers, "bigfd")
ZDTM(Memfd00, "memfd00")
ZDTM(SocketListen, "socket_listen")
// sk-unix-rel: a unix socket bound to a relative path is bound again from the directory it was
// dumped in (files/kind_unix.cc; it used to land in the restoring coordinator's cwd: the
// restored process's sendto("rel.sock") got ECONNREFUSED).
ZDTM(SkUnixRel, "unix")
ZDTM(Sockets00UnixPathAbstractPairDgram, "unix_abs")
ZDTM(Eventfs00, "eventfd")
ZDTM(Epoll, "epoll")
ZDTM(Inotify00, "inotify00")
ZDTM(Timerfd, "timerfd")
ZDTM(PosixTimers, "posix_timers")
ZDTM(Itimer, "itimer")
ZDTM(Fpu00Fpu01Xstate, "fpu")
ZDTM(Rseq, "rseq")
// A SysV shm attachment is the segment itself after the restore (shmat of the same shmid).
ZDTM(ShmAttached, "shm")
// IPC_RMID'd segment (gone with the dumped process): created again with the same id and contents,
// shared by parent and child, removed again (SHM_DEST); unaligned size.
ZDTM(ShmRmidRecreated, "mm_shm_rmid")
// A segment mapped in part: the part is the segment again (not a copy), nattch 1, shmdt works.
ZDTM(ShmPartlyMapped, "mm_shm_partial")
ZDTM(ManyVmas2000, "many_vmas")
// MAP_GROWSDOWN from smaps VmFlags "gd" (not only [stack]).
ZDTM(MapGrowsdown, "growsdown")
// grow_map, grow_map02, grow_map03: growsdown VMAs split by mprotect, one page apart, and growing
// after the restore.
ZDTM(GrowMap, "mm_grow")
ZDTM(GrowMapCriu, "mm_grow_map")
// MADV_HUGEPAGE / MADV_NOHUGEPAGE advice (VmFlags hg/nh) is kept.
ZDTM(TransparentHugePageAdvice, "thp")
// thp: advice and contents of a THP-backed region; huge pages again after the restore.
ZDTM(TransparentHugePageBacked, "mm_thp")
// memfd mappings with F_SEAL_* (write, future write, none), the fd closed.
ZDTM(MemfdSealsMapped, "mm_memfd_seals")
// Private file pages partly written, MAP_NORESERVE, PROT_NONE guards, mremap, MADV_DONTNEED
// holes, mprotect-split file mapping, shared anonymous memory with a child.
ZDTM(MemoryShapes, "mm_shapes")

ZDTM(SocketUdpQueued, "udp")
ZDTM(PrctlNamePdeathsigSubreaperNnp, "prctl")
ZDTM(Rlimits, "rlimits")
ZDTM(BlockedInPollAndEpollWait, "poll_block")
// An fd at the hard RLIMIT_NOFILE - 1: the restore's own fds (report pipe, prepared files) go in
// the highest gap of restored fd numbers below the limit (restore/restore.cc ServiceFdBase).
ZDTM(FdNearHardNofileLimit, "fd_near_limit")
// The root's PR_SET_PDEATHSIG survives `restore --detach` (it used to fire when the coordinator
// exited): detached, the root gets its final parent before its state is restored.
ZDTM(PdeathsigOnTheRootKillsItAfterDetach, "pdeathsig_root")

// A shared mapping of an unlinked file (unlink_mmap00): restored, or refused cleanly with the
// tree left running (docs/engine.md: kUnsupported).
TEST_F(Zdtm, DeletedFileMappingRestoredOrRefused) {
  pid_t pid = Start("deleted_map");
  ASSERT_GT(pid, 0);
  auto d = Godwit({"dump", "--pid", std::to_string(pid), "--images-dir", dir_ / "img"});
  if (d.status != 0) {
    EXPECT_NE(d.err.find("deleted"), std::string::npos) << d.err;
    ASSERT_EQ(kill(pid, SIGUSR2), 0);
    EXPECT_EQ(WaitBounded(pid, 30000), 0) << "the refused dump damaged the tree";
    pids_.clear();
    return;
  }
  ASSERT_EQ(Wait(pid), 128 + SIGKILL);
  auto r = Godwit({"restore", "--images-dir", dir_ / "img", "--detach"});
  ASSERT_EQ(r.status, 0) << r.err;
  ASSERT_EQ(kill(pid, SIGUSR2), 0);
  EXPECT_EQ(WaitBounded(pid, 30000), 0);
  pids_.clear();
}

// --leave-running: the original carries on and passes its own checks (the dump's side effects,
// such as TCP repair mode and the network lock, are undone).
#define ZDTM_LEAVE_RUNNING(Name, mode, ...)                                                     \
  TEST_F(Zdtm, Name) {                                                                          \
    pid_t pid = Start(mode);                                                                    \
    ASSERT_GT(pid, 0);                                                                          \
    std::vector<std::string> args = {"dump", "--leave-running", "--pid", std::to_string(pid),   \
                                     "--images-dir", dir_ / "img", ##__VA_ARGS__};              \
    auto d = Godwit(args);                                                                      \
    ASSERT_EQ(d.status, 0) << d.err;                                                            \
    ASSERT_EQ(kill(pid, SIGUSR2), 0);                                                           \
    EXPECT_EQ(WaitBounded(pid, 30000), 0) << "the original's check failed after the dump";      \
    pids_.clear();                                                                              \
  }
// Repair mode off reset SO_REUSEADDR of the original's sockets (fixed in files/kind_inet.cc).
ZDTM_LEAVE_RUNNING(LeaveRunningSocketTcp, "socket_tcp", "--tcp-established")
ZDTM_LEAVE_RUNNING(LeaveRunningThreadsFpu, "fpu")
ZDTM_LEAVE_RUNNING(LeaveRunningPollBlock, "poll_block")
ZDTM_LEAVE_RUNNING(LeaveRunningZombiesSessions, "zombie00")
ZDTM_LEAVE_RUNNING(LeaveRunningStoppedStaysStopped, "stopped")
ZDTM_LEAVE_RUNNING(LeaveRunningStoppedThreads, "stopped_threads")
ZDTM_LEAVE_RUNNING(LeaveRunningStoppedWithSigstopPending, "stopped12")

// unlink_mmap02: a deleted file both mapped (privately) and open: the mapping maps the ghost file
// files/ restored for the fd, so writes through the fd show in unwritten mapped pages.
ZDTM(UnlinkMmap02DeletedFileMappedAndOpen, "mm_unlink_mmap02")

// A SysV segment with a key, removed (ipcrm) between dump and restore: created again with the
// same id, key, mode and contents, and the mapping is the segment.
TEST_F(Zdtm, ShmRemovedBeforeRestoreRecreated) {
  pid_t pid = Start("mm_shm_key");
  ASSERT_GT(pid, 0);
  auto d = Godwit({"dump", "--pid", std::to_string(pid), "--images-dir", dir_ / "img"});
  ASSERT_EQ(d.status, 0) << d.err;
  ASSERT_EQ(Wait(pid), 128 + SIGKILL);
  int id = atoi(ReadAll(dir_ / "shmid").c_str());
  ASSERT_GT(id, 0);
  ASSERT_EQ(shmctl(id, IPC_RMID, nullptr), 0) << "the segment outlived its process";
  auto r = Godwit({"restore", "--images-dir", dir_ / "img", "--detach"});
  ASSERT_EQ(r.status, 0) << r.err;
  ASSERT_EQ(kill(pid, SIGUSR2), 0);
  EXPECT_EQ(WaitBounded(pid, 30000), 0);
  pids_.clear();
}

TEST_F(Zdtm, SocketTcpEstablished) { RoundTrip("socket_tcp", {"--tcp-established"}); }

// Guard regions (MADV_GUARD_INSTALL) inside a VMA: not read at dump (they fault), installed
// again at restore.
TEST_F(Zdtm, GuardRegionsMadvGuardInstall) {
  pid_t pid = StartHelper("z_static", {"mm_guard", "{READY}", dir_.path()});
  if (pid <= 0) GTEST_SKIP() << "no MADV_GUARD_INSTALL (Linux < 6.13)";
  pids_.push_back(pid);
  ASSERT_EQ(DumpKillRestore(pid), "");
  ASSERT_EQ(kill(pid, SIGUSR2), 0);
  EXPECT_EQ(WaitBounded(pid, 30000), 0);
  pids_.clear();
}

TEST_F(Zdtm, HugetlbIfReserved) {
  pid_t pid = StartHelper("z_static", {"hugetlb", "{READY}", dir_.path()});
  if (pid <= 0) GTEST_SKIP() << "no huge pages reserved (vm.nr_hugepages)";
  pids_.push_back(pid);
  std::string err = DumpKillRestore(pid);
  ASSERT_EQ(err, "");
  ASSERT_EQ(kill(pid, SIGUSR2), 0);
  EXPECT_EQ(WaitBounded(pid, 30000), 0);
  pids_.clear();
}

// maps09/maps10: shared and private hugetlb memory, the shared one shared with a child.
TEST_F(Zdtm, HugetlbSharedIfReserved) {
  pid_t pid = StartHelper("z_static", {"mm_hugetlb_shared", "{READY}", dir_.path()});
  if (pid <= 0) GTEST_SKIP() << "no huge pages reserved (vm.nr_hugepages)";
  pids_.push_back(pid);
  ASSERT_EQ(DumpKillRestore(pid), "");
  ASSERT_EQ(kill(pid, SIGUSR2), 0);
  EXPECT_EQ(WaitBounded(pid, 30000), 0);
  pids_.clear();
}

// shm-hugetlb: SHM_HUGETLB segments (unaligned size), one kept, one IPC_RMID'd and created again.
TEST_F(Zdtm, ShmHugetlbIfReserved) {
  pid_t pid = StartHelper("z_static", {"mm_shm_hugetlb", "{READY}", dir_.path()});
  if (pid <= 0) GTEST_SKIP() << "no huge pages reserved (vm.nr_hugepages)";
  pids_.push_back(pid);
  ASSERT_EQ(DumpKillRestore(pid), "");
  ASSERT_EQ(kill(pid, SIGUSR2), 0);
  EXPECT_EQ(WaitBounded(pid, 30000), 0);
  pids_.clear();
}

// A child traced by another process of the tree: godwit must refuse cleanly and leave the tree
// running untouched (the helper then finishes its own checks).
TEST_F(Zdtm, PtraceTracedChildRefusedCleanly) {
  pid_t pid = Start("traced");
  ASSERT_GT(pid, 0);
  auto d = Godwit({"dump", "--pid", std::to_string(pid), "--images-dir", dir_ / "img"});
  EXPECT_NE(d.status, 0) << "dumping a traced process must fail";
  EXPECT_NE(d.err, "");
  ASSERT_EQ(kill(pid, SIGUSR2), 0);
  EXPECT_EQ(WaitBounded(pid, 30000), 0) << "the tree was damaged by the refused dump";
  pids_.clear();
}

}  // namespace
}  // namespace godwit::crtest
