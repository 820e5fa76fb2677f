// The network lock: while a tree's TCP connections are not live (frozen and dumped, or not yet
// restored), packets of those connections must not reach a kernel that has no socket for them: it
// would answer with a RST and the peer would drop the connection. The lock keeps them away until
// the restored sockets are live, and the peer retransmits.
//
// Callers (files/: the dump of an inet socket, FdRestorer::LockNetwork/Finalize, LockOutside and
// ResumeTcp) use this interface only, so a lock that holds packets and releases them once the
// sockets are live (migration: no retransmission timeout on the peer) can replace the dropping one
// without touching them.
//
// A lock has a name, recorded in the images (files-netlock.img): the process that takes it (the
// dumper) is often not the one that releases it (the restore, or ResumeTcp after a failed
// container checkpoint), which opens it again by that name.
#pragma once

#include <sys/socket.h>

#include <memory>
#include <string>
#include <vector>

#include "common/result.h"
#include "proto/fd.pb.h"

namespace godwit::files {

// Packets carrying this mark (SO_MARK) pass the lock: the segments the restore makes up as the
// peer's (kind_inet.cc: a FIN or reset a restored socket had received) while the lock holds.
constexpr uint32_t kNetLockPassMark = 0x67647769;

// One TCP connection, as the local socket sees it.
struct TcpConn {
  sockaddr_storage local{};
  sockaddr_storage peer{};
};
// The connection of a dumped inet socket (FileEntry.inet src and dst).
Result<TcpConn> ConnOf(const img::FileEntry& e);
// A v4-mapped IPv6 address (::ffff:a.b.c.d) as the IPv4 address it stands for, port kept; false
// (unchanged) for any other address.
bool UnmapV4(sockaddr_storage* ss);
// The connection as its packets travel: both ends v4-mapped (an IPv4 connection of an IPv6
// socket) become IPv4; anything else stays.
TcpConn AsTravels(const TcpConn& c);

class NetLock {
 public:
  // Where a namespace stands relative to the connections.
  enum class Where {
    kInside,  // the connections' own namespace: their packets in and out are held
    kRouted,  // a namespace their packets are routed through (the host, for a container whose
              // namespace is gone): packets towards the connections' local ends, which the host
              // sends itself (a local peer) or forwards (a remote one)
  };
  virtual ~NetLock() = default;
  // Recorded in files-netlock.img; OpenNetLock(name) releases the same lock from elsewhere.
  virtual const std::string& name() const = 0;
  // Locks conns in the net namespace netns_fd (-1: the caller's). Repeatable: more connections in
  // a namespace already locked, or another namespace.
  virtual Result<void> Lock(int netns_fd, const std::vector<TcpConn>& conns,
                            Where where = Where::kInside) = 0;
  // Until Open: nothing at all leaves the namespace netns_fd (IPv4 and IPv6 output but on
  // loopback, and ARP, are dropped there by this lock's tables). A migration's destination must say nothing before the
  // commit: the IPv6 router solicitation and MLD report its link sends when it comes up would
  // teach the segment's bridges the container's MAC at the destination, and the peers' frames
  // would go there (dropped by the lock, held by nobody) instead of to the source's hold.
  virtual Result<void> Quiet(int netns_fd) = 0;
  // Namespaces where another process may have taken this lock (by name): Unlock releases it
  // there too. Nothing to release in one is fine.
  virtual Result<void> Adopt(int netns_fd) = 0;
  // Releases the lock in every namespace it locked or adopted. Every namespace is tried; the
  // first error is returned.
  virtual Result<void> Unlock() = 0;
  // Lets the connections' packets through at once, in every namespace, without Unlock's wait:
  // the rules go, the table and its (accepting) chains stay. Removing a table unregisters its
  // hooks, which waits for an RCU grace period (10-60 ms on this VM); a migration's switch calls
  // Open inside the blackout and Unlock after it.
  virtual Result<void> Open() = 0;
};

// The lock that drops (nftables): one table named "godwit_lock_<pid>_<time>_<n>" per lock, with
// a rule per connection and direction on its 4-tuple, in each locked namespace.
std::unique_ptr<NetLock> NewDropLock();
// A lock taken by someone else, by its recorded name (to release it, or to lock more with it).
std::unique_ptr<NetLock> OpenNetLock(const std::string& name);
// The lock a migration's destination restore (FdRestoreOptions::keep_netlock) takes when the
// images carry none (no TCP connection was locked): Quiet only, so that the restored namespace
// says nothing before the commit either. The name is the same for every such restore: the
// namespace is the container's own, new one, and the destination adopts it by this name.
inline constexpr char kQuietLockName[] = "godwit_quiet";

// The table of a container environment made ahead (container::PrepareRestore): quiet before its
// links exist. For a caller that unlocks after its commit (keep_netlock: a migration's
// destination) it is deaf too (DeafRules) and is the tree's whole lock: the restore adds only the
// connections over loopback to it (FdRestoreOptions::netns_locked), and the caller opens it at
// the commit; otherwise it is emptied (its chains stay, accepting) once the tree's own lock is in
// place. Deleted by the caller after the commit (deleting hooks waits for an RCU grace period:
// not while the container is down).
inline constexpr char kAheadQuietName[] = "godwit_ahead";

// The rules that make a namespace quiet in table t (inet and arp; the inet table must exist):
// NetLock::Quiet's, for a caller that keeps its own nftables context (a container's environment
// made ahead, quiet before its links exist, until the tree's own lock takes over).
std::string QuietRules(const std::string& t);
// Rules that drop everything arriving in the namespace but on loopback, in table t (inet; the
// table must exist). With QuietRules, a lock on every connection of a namespace that has none
// live yet: a migration's environment made ahead locks its whole namespace so, until the commit
// (the tree's own lock is then not needed: container::RestoreResult::netlock_table).
std::string DeafRules(const std::string& t);

}  // namespace godwit::files
