// The destination half of a live migration: one connection, one container (run by godwitd in a
// process of its own per connection, so migrations are isolated from each other and from the
// daemon).
//
// Order (ServeMigration):
//   Hello -> checks (protocol and image format version, machine, CPU features and xsave states,
//   kernel features, rootfs present, id free under --root, room: MemAvailable) -> Welcome
//   (refused: the reason, nothing made) -> staging directory -> files of each pre-copy round
//   written as they arrive, a RoundAck per round -> Final -> restore from the staging directory
//   -> Restored -> HeldPackets (replayed into the container) -> Commit (the source deleted its
//   copy) -> announce the container's addresses
//   (gratuitous ARP, unsolicited NA on its links) -> Done.
// Any failure, an Abort, a closed connection or a timeout before Commit removes everything made
// here (the restored container included); the staging directory is always removed.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "common/result.h"
#include "migrate/wire.h"

namespace godwit::migrate {

struct DestOptions {
  std::string root = "/run/godwit";  // runtime state root of this host
  std::string cgroup_parent;         // cgroup parent of this host's containers ("" = default)
  std::string bridge;                // attach restored veths to this bridge ("" = as dumped)
  std::string staging;               // where images land (default ROOT/incoming)
  double timeout_s = 30;             // per network operation
  // Fault injection for tests and failover drills (godwitd --fault PHASE:ACTION): at PHASE
  // ("welcome", "round", "final", "restored") the session ACTION: "kill" (SIGKILL itself, as a
  // crashed host would), "close" (drops the connection) or "corrupt" (sends garbage instead of
  // its next frame). Empty: none.
  std::string fault;
  bool keep_staging = false;
  // Restore with --lazy: the container runs once its non-memory state is back; its memory is
  // paged in afterwards (restore/lazy.h), out of the blackout. false (godwitd --no-lazy): filled
  // before it runs, for measuring.
  bool lazy = true;
  // With lazy: the staging's page files are freed as the pager installs their pages (restore
  // --discard-pages): the destination holds the container's memory once, not twice, while it
  // fills. Off by default (godwitd --discard-staging): on this one-VM bench it did not shorten
  // the client's gaps after the switch (docs/migration.md, session 18).
  bool discard_staging = false;
  std::string godwit_bin;  // the godwit binary that restores ("" = the one beside this program)  // leave the received images in place (debugging)
};

struct DestResult {
  std::string id;
  bool committed = false;
  int rounds = 0;
  uint64_t bytes = 0;
  double restore_ms = 0;
  double announce_ms = 0;
  int held_packets = 0;  // frames replayed into the container
};

// Serves one migration on an accepted, authenticated channel. Returns the outcome; an error
// means the migration did not complete here (and nothing of it is left).
Result<DestResult> ServeMigration(Channel& ch, const DestOptions& o);

// The checks a Hello must pass here (empty = accepted). Exposed for tests.
std::string CheckHello(const mig::Hello& h, const DestOptions& o);

// Removes what sessions that died without cleaning up left under o's staging directory: for
// each "<id>.<pid>" whose pid is not in `live`, the restored container <id> unless the session
// had committed it, then the directory. Returns how many were cleaned. godwitd runs it when a
// session ends by a signal and at start.
int CleanupDeadSessions(const DestOptions& o, const std::vector<pid_t>& live);

// This host's kernel features by name (`godwit check`'s probes, cached).
std::vector<std::string> LocalKernelFeatures(const DestOptions& o);

// Announces the addresses of container `id` under `root` (from its eth0, twice each: gratuitous
// ARP for IPv4, unsolicited neighbour advertisements for IPv6, runtime::Announcement): the
// segment's bridges and neighbours find it where it runs now. Returns how many addresses were
// announced (0: none, a container without a network of godwit's).
Result<int> AnnounceAddresses(const std::string& root, const std::string& id);

}  // namespace godwit::migrate
