// The source half of a live migration (`godwit migrate ID --to HOST:PORT`).
//
// Order (Migrate):
//   load the container (running) -> connect + handshake (Hello/Welcome: refused = nothing done)
//   -> pre-copy while the container runs: round 0 all its memory, then what was written since,
//   each round's page files streamed as they close (ForwardingSink) and acknowledged
//   -> after each round, predict the blackout and decide (Convergence): switch over, go on, or
//   (--strict) abort -> switchover: checkpoint in hold mode (frozen, TCP in repair and locked),
//   the final delta and the container state streamed as written -> Final -> the destination
//   restores -> Restored: commit point -> delete the held copy here -> the frames that came for
//   the container meanwhile (PacketHold) -> Commit -> Done (announced).
// Rollback: any failure before Restored (refusal, restore failure, a cut or corrupt stream,
// a timeout, --strict over budget) resumes the held copy here exactly as it was (TCP back from
// repair, unlocked, thawed) and tells the destination to remove what it made (Abort).
// After Restored the source never resumes (no split brain).
#pragma once

#include <functional>
#include <mutex>
#include <string>
#include <vector>

#include "common/result.h"
#include "migrate/wire.h"

namespace godwit::migrate {

enum class Compress { kAuto, kZstd, kNone };

class Channel;

// Stops a migration from another thread (the CLI's signal watcher). Before the switchover it
// cuts the stream and the migration rolls back: the container runs here as before, the
// destination removes what it made (it sees the connection end). From the switchover on it only
// records the request: the switchover ends, committed or rolled back, within its timeouts (a
// migration stopped in its blackout would leave the container frozen here).
class Cancel {
 public:
  void Request(const std::string& why);
  bool requested() const;
  std::string reason() const;
  // Migrate's side: the stream to cut (false when already requested), gone again at its end;
  // the switchover's start (false when requested before it: roll back instead).
  bool Attach(Channel* ch);
  void Detach();
  bool EnterSwitchover();

 private:
  mutable std::mutex mu_;
  Channel* ch_ = nullptr;
  bool switching_ = false, requested_ = false;
  std::string why_;
};

struct SourceOptions {
  std::string root = "/run/godwit";
  std::string id;
  std::string to;  // HOST:PORT
  TlsConfig tls;
  double max_downtime_ms = 50;
  int max_rounds = 8;
  double timeout_s = 30;  // per network operation (and the wait for each reply)
  double restore_timeout_s = 300;
  Compress compress = Compress::kAuto;
  bool strict = false;  // abort instead of switching over above max_downtime
  // Hold the frames sent to the container during the switchover and replay them at the
  // destination (migrate/packet_hold.h); off: they are dropped by the network lock and the
  // client retransmits (what CRIU does; for comparison).
  bool hold_packets = true;
  std::string staging;  // local image staging dir (default: migrate/staging.h)
  // Run the blackout's work at nice -20 on both ends (common/priority.h); off for A/B runs
  // (GODWIT_NO_BOOST). The destination boosts only when the source asks (Switchover frame).
  bool boost = true;
  // The destination makes the container's environment while the tree is dumped here (EnvReady);
  // off for A/B runs (GODWIT_NO_ENV_AHEAD): made inside the restore, after the final state.
  bool env_ahead = true;
  // The final dump's images go to the peer from a thread of their own while the dump goes on;
  // off for A/B runs (GODWIT_NO_ASYNC_SEND): sent by the dump's thread as each is closed.
  bool async_send = true;
  // Rounds' page blobs sent in pieces while they are written (migrate/image_stream.h); false:
  // each whole after its round's dump (GODWIT_NO_STREAM_ROUNDS: A/B runs only).
  bool stream_rounds = true;
  // Auto-converge (QEMU's name for it): while the container writes its memory faster than half
  // the stream's rate, its CPU is throttled harder each round through its cgroup's bandwidth
  // (RoundVerdict::throttle_pct), and given back before the freeze (and on every failure). A
  // container using under a tenth of a CPU is never throttled: no quota slows it.
  // Off: `godwit migrate --no-auto-converge`.
  bool auto_converge = true;
  Cancel* cancel = nullptr;  // optional
};

struct RoundReport {
  int round = 0;
  uint64_t pages = 0;
  uint64_t bytes = 0;       // page bytes dumped this round
  uint64_t wire_bytes = 0;  // payload bytes sent (all files of the round, after zstd)
  double ms = 0;            // dump + send of the round
  double dirty_bytes_per_s = 0;
  double throughput_bytes_per_s = 0;  // the stream's measured rate this round
  double predicted_downtime_ms = 0;   // if we switched over now
  std::string decision;               // "continue", "switch", "abort" with why
  // Auto-converge: the share of the container's CPU taken away for the next round (0: none),
  // and the CPU it may then use, in percent of one CPU (0 when not throttled).
  int cpu_throttle_pct = 0;
  double cpu_quota_pct = 0;
};

struct Blackout {
  double freeze_ms = 0;      // freezing the container
  double final_dump_ms = 0;  // collecting and writing the final state (sent while written)
  double transfer_ms = 0;    // the final state's tail on the wire until Final is sent
  double restore_ms = 0;     // the destination's restore (Final sent -> Restored)
  double release_ms = 0;     // Restored -> Commit sent (the held frames shipped first)
  // Commit -> Done: the destination announces the address, unlocks the connections and replays
  // the frames held here and at its own end meanwhile.
  double announce_ms = 0;
  double total_ms = 0;       // freeze start -> Done
  double start_unix_ms = 0;  // the freeze's start on the wall clock (ms since the epoch)
};

struct MigrationReport {
  std::string id, to, peer, peer_version, peer_hostname;
  bool secure = false;
  std::string cipher;  // the TLS suite agreed on (empty: --insecure)
  std::string staging;  // where the images were staged: "huge-tmpfs", "tmpfs" or "disk"
  // The container's tmpfs contents copied while it ran, and how much of it the final checkpoint
  // referred to instead of reading it again (container::ContainerPreCopy::CopyFilesAhead).
  uint64_t files_ahead_bytes = 0, files_ahead_reused_bytes = 0;
  // The time the pre-copy's start waited for a lazy restore's pager still filling the container
  // (an earlier migration's, into this host): its rounds need every page there.
  double lazy_wait_ms = 0;
  bool compressed = false;
  bool boosted = false;  // the blackout ran at a raised priority here (common/priority.h)
  // "migrated"; "not started" (e.g. the connection or handshake failed), "refused", "rolled back"
  // (the container runs here as before); "failed after commit" (it runs there, not here).
  std::string outcome;
  std::string reason;   // for everything but "migrated"
  std::vector<RoundReport> rounds;
  double fixed_cost_ms = 0;  // the fixed part of the prediction (non-memory state, restore)
  // Its parts (ms): collect and tree measured on this container before the first round (the
  // names say which: *_measured_ms are the measurements they come from), restore and switch
  // modelled (migrate/source.cc).
  std::vector<std::pair<std::string, double>> fixed_cost_parts;
  double predicted_downtime_ms = 0;
  Blackout blackout;
  // The final checkpoint's own phases (container::CheckpointPhases), for where final_dump goes.
  std::vector<std::pair<std::string, double>> final_dump_phases;
  // The destination's restore phases (Restored), for where restore goes.
  std::vector<std::pair<std::string, double>> restore_phases;
  // The destination's switch after the commit (Done): ARP, unlock, replay of held frames.
  std::vector<std::pair<std::string, double>> switch_phases;
  uint64_t final_bytes = 0;       // image bytes sent during the switchover (the final delta + state)
  int held_packets = 0;           // frames held during the switchover and replayed there
  int late_packets = 0;  // of them: arrived here after the commit, shipped after Done
  double source_delete_ms = 0;    // deleting the held copy here, after Done
  uint64_t total_wire_bytes = 0;  // everything sent
  double total_ms = 0;
};

// progress(report so far) after each round; may be empty.
Result<void> Migrate(const SourceOptions& o, MigrationReport* report,
                     const std::function<void(const RoundReport&)>& progress = {});

// The report as JSON text (the --report file and --json output).
std::string ReportJson(const MigrationReport& r);

// What to do after a pre-copy round (docs/migration.md, Convergence): switch when the predicted
// blackout fits; switch anyway (abort with strict) when the round is minimal, max_rounds is
// reached, or the rounds stopped shrinking (a round > 80% of the one before). A first such stall
// far above the target (over 4x) gets one more round: on a loaded host the stream's rate halves
// for a while, and switching then froze 1 GiB containers for 1-4 s with 80-200 MiB still dirty.
// Auto-converge (can_throttle): from round 1, while the container writes faster than half the
// stream's rate (QEMU's trigger) or a round did not shrink, the round does not end the pre-copy
// for having stalled; the container's CPU is throttled harder instead (kThrottleSteps), until
// the last step.
struct RoundInput {
  int round = 0;
  uint64_t bytes = 0, prev_bytes = 0;  // this round's and the one before's (round >= 1)
  double predicted_ms = 0, max_downtime_ms = 0;
  int max_rounds = 8;
  int stalls_before = 0;  // consecutive stalled rounds just before this one
  bool strict = false;
  double dirty_bytes_per_s = 0, throughput_bytes_per_s = 0;
  bool can_throttle = false;
  int throttle_pct = 0;  // in force during this round
};
struct RoundVerdict {
  enum Kind { kContinue, kSwitch, kAbort } kind = kContinue;
  std::string decision;  // the report's text, with the reason
  int stalls = 0;        // consecutive stalled rounds, this one included
  int throttle_pct = 0;  // for the next round
};
// The throttle's steps: each takes away half of the CPU the step before left.
inline constexpr int kThrottleSteps[] = {30, 65, 82, 91, 95};
RoundVerdict DecideRound(const RoundInput& in);

}  // namespace godwit::migrate
