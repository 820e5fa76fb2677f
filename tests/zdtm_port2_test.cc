// CRIU zdtm static tests that failed when CRIU's own binaries ran against godwit although their
// earlier ports passed (the ports kept an fd the real test closes, or a simpler process tree),
// ported again (tests/helpers/z_port2.c) through `godwit dump` and `godwit restore` (the zdtm
// cycle of zdtm_harness.h): the helper sets the test's state up, the test dumps (kills),
// restores, and the restored helper checks its own state.
#include <gtest/gtest.h>

#include <cstdlib>
#include <sstream>
#include <string>
#include <vector>

#include "zdtm_harness.h"

namespace godwit::crtest {
namespace {

class ZdtmPort2 : public ZdtmHarness {
 protected:
  ZdtmPort2() : ZdtmHarness("z_port2") {}
  // The nftables tables a mode made (DIR/nft), when its check did not get to delete them.
  void CleanUp() override {
    std::istringstream nft(ReadAll(dir_ / "nft"));
    for (std::string t; nft >> t;)
      (void)!system(("nft delete table inet " + t + " 2>/dev/null").c_str());
  }
};

#define ZDTM(Name, mode) \
  TEST_F(ZdtmPort2, Name) { RoundTrip(mode); }

// tty00: a session leader's terminal open on no fd of it (the parent holds the master): still
// its terminal, hung up (SIGHUP) when the master closes.
ZDTM(CttyHeldByNoFdOfTheLeader, "ctty_no_fd")
// pty03: the leader keeps the master only: /dev/tty opens and reads what the master writes.
ZDTM(CttyLeaderHoldsTheMasterOnly, "ctty_master_only")
// tty03: the leader holds nothing of its terminal, a child of it left for its own session.
ZDTM(CttyOfALeaderWithAChildInAnotherSession, "ctty_other_session")
// session00 (DOUBLE_CHANGESID), session01: a process in the session of a leader two setsid
// calls above it.
ZDTM(SessionKeptAcrossTwoSetsidCalls, "setsid_chain")
// socket-tcp-reseted: dumped before the server end learned that its peer is gone (its data
// unacked, retransmissions dropped): after the restore a probe brings the peer's reset at once.
TEST_F(ZdtmPort2, TcpPeerGoneLearnedRightAfterTheRestore) {
  RoundTrip("tcp_reset_unacked", {"--tcp-established"});
}

// pidfd_of_thread: a pidfd of a thread (PIDFD_THREAD) still names it: a signal through it with
// PIDFD_SIGNAL_THREAD reaches that thread.
ZDTM(PidfdOfAThread, "pidfd_thread")
// vdso02: a process without [vdso] and [vvar] (it unmapped them), this kernel's [vvar_vclock]
// kept: restored without them, the rest at its address.
ZDTM(VdsoUnmappedStaysUnmapped, "vdso_unmapped")
// packet_sock_mmap: a packet socket's rings mapped into memory: mapped again at their address
// from the restored socket, its live RX ring (was refused at dump).
ZDTM(PacketRingsMappedAgain, "packet_ring_mapped")
// socket-tcp6-syn-sent (its firewall rule is IPv4 only): a connection not accepted yet by a
// listener of the tree, v6 and v4-mapped: accepted after the restore, bytes both ways.
TEST_F(ZdtmPort2, TcpConnectionNotYetAcceptedComesBack) {
  RoundTrip("tcp_peer_unaccepted", {"--tcp-established"});
}

// poll (as the harness ran it): `godwit dump` kills the tree and returns only once every process
// of it is dead, a zombie or gone (children with threads and memory take a while to exit); a
// restore right after finds none of their pids still in use.
TEST_F(ZdtmPort2, KilledTreeIsDeadWhenTheDumpReturns) {
  pid_t pid = Start("slow_to_die");
  ASSERT_GT(pid, 0) << "helper setup failed";
  std::vector<pid_t> tree = Descendants(pid);
  ASSERT_EQ(tree.size(), 6u);
  tree.push_back(pid);
  auto d = Godwit({"dump", "--pid", std::to_string(pid), "--images-dir", dir_ / "img"});
  ASSERT_EQ(d.status, 0) << d.err;
  // Nothing reaped yet: each is our zombie (the root our child, the others reparented to us, the
  // subreaper) or gone.
  for (pid_t p : tree) {
    std::string st = ReadAll("/proc/" + std::to_string(p) + "/stat");
    char state = st.empty() ? 'X' : st[st.rfind(')') + 2];
    EXPECT_TRUE(state == 'Z' || state == 'X') << "pid " << p << " is '" << state
                                              << "' after the dump returned";
  }
  ASSERT_EQ(Wait(pid), 128 + SIGKILL);
  for (pid_t p : tree)
    if (p != pid) waitpid(p, nullptr, 0);
  auto r = Godwit({"restore", "--images-dir", dir_ / "img", "--detach"});
  ASSERT_EQ(r.status, 0) << r.err;
  ASSERT_EQ(kill(pid, SIGUSR2), 0);
  EXPECT_EQ(WaitBounded(pid, 30000), 0) << "the restored helper's check failed (-2: hung)";
  pids_.clear();
}

}  // namespace
}  // namespace godwit::crtest
