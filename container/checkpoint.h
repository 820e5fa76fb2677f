// `godwit checkpoint ID --image-path DIR`: a whole container to images.
//
// Layout of DIR: DIR/container/ is this module's image set (container.img with the config, the
// runtime state, the rootfs identity and the limits; uts, ipc, netns, mnt, tmpfs-*, layer), and
// DIR/tree/ is the process tree's image set, written by the engine. The checkpoint is complete
// when DIR/container/inventory.img exists: it is written last, after the tree's. A caller may
// give both sinks instead of DIR (a migration streaming them to a peer).
//
// Steps (Checkpoint, in this order):
//   load the container record (must be running) -> freeze its cgroup (every task, bounded wait)
//   -> uts, ipc, net (when the container owns them), mount table + tmpfs contents, writable
//   layer: all while frozen, from outside (setns threads, /proc/PID/root) -> the process tree
//   (TreeDumper; it leaves the tree alive, frozen or still ptrace-stopped: TreeStats::release)
//   -> rootfs identity, limits, config -> container.img -> inventory -> the tree refrozen and
//   let go (release) -> the end (EndMode): kill and delete the container, thaw it
//   (--leave-running), or hold it frozen for the caller (HeldCheckpoint) -> optional export.
// On failure before the inventory the sinks are aborted and the container thawed, untouched.
// Pre-copy rounds (container/engine.h, ContainerPreCopy) run before all this, the container
// running: the freeze here is the final round's.
#pragma once

#include <sys/types.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "common/result.h"
#include "dump/tuning.h"
#include "images/image.h"
#include "proto/container.pb.h"

namespace godwit::runtime {
class Cgroup;
}

namespace godwit::container {

class ContainerPreCopy;
namespace mnt {
struct Precopied;
}

inline constexpr char kContainerImage[] = "container.img";
inline constexpr char kContainerDir[] = "container";  // under the image path
inline constexpr char kTreeDir[] = "tree";

struct TreeStats {
  // Set when the tree's TCP connections were left in repair mode and locked (!leave_running): if
  // the tree is thawed instead of killed after all, call it first to give them back.
  std::function<Result<void>()> resume_tcp;
  // Set with resume_tcp: right before the container is deleted, the connections back in repair
  // mode (closing them sends nothing) and, with lock_host, the same lock in the caller's net
  // namespace, so the peers' packets are dropped there, not routed elsewhere, once the
  // container's net namespace and veth are gone, until a restore unlocks. resume_tcp removes
  // that lock too.
  std::function<Result<void>(bool lock_host)> before_kill;
  // Set when the tree's pages were stored raw to be compressed once the tree runs again or is
  // gone (no frozen time): returns the bytes saved; the raw set stays complete if it fails.
  std::function<Result<uint64_t>()> compress;
  // Set when the dumper left the tree ptrace-stopped for the caller to let go (refreeze, then
  // detach into the frozen cgroup): called once, on this thread, as soon as the container's own
  // images are complete, and on every error path.
  std::function<Result<void>()> release;
  int processes = 0;
  int threads = 0;
  uint64_t bytes = 0;
  // The engine's own times (ms), for the phase report; 0 when the dumper does not say.
  double seize_ms = 0;   // ptrace-seizing every thread
  double memory_ms = 0;  // reading and writing pages
  double frozen_ms = 0;  // from the seize until the tree is let go (detached or killed)
  uint64_t remote_calls = 0;  // syscalls injected into the tree (~12 us each here)
  std::vector<std::pair<std::string, double>> steps;  // the engine's frozen time by step (ms)
  // Pre-copy rounds before the freeze (CheckpointOptions::precopy or pre_copy_rounds).
  std::vector<uint64_t> round_bytes;  // per round
  uint64_t pre_bytes = 0;
  uint64_t pre_reserved_bytes = 0;  // room for the final delta made before the freeze
  double pre_ms = 0;
};

// Where a checkpoint's time goes (ms, steady clock), in order. As CRIU's stats: freezing, then
// frozen until the container is killed or thawed: frozen_ms = collect + tree + write + release up
// to the microseconds between the steps. downtime_ms, the checkpoint's share of live migration's
// downtime, ends when the images are complete (freeze + collect + tree + write): a migration
// source kills only once the destination runs. With --leave-running the container runs again as
// soon as the engine lets the tree go (inside tree: before its deferred compression): frozen and
// downtime end there.
struct CheckpointPhases {
  double prepare_ms = 0;  // before the freeze: record, config, namespaces, rootfs identity
  double freeze_ms = 0;   // cgroup freezer until every task is frozen
  // Collect: the container's own state, read from outside while frozen.
  double userns_ms = 0;  // user namespace maps and checks
  double uts_ms = 0;
  double ipc_ms = 0;
  double net_ms = 0;     // links, addresses, routes, sysctls, nftables
  double mnt_ms = 0;     // mount table and tmpfs contents
  double layer_ms = 0;   // writable-layer changes (in line: --leave-running, a caller's sinks)
  double rootfs_ms = 0;  // rootfs identity when taken while frozen (no overlay)
  double collect_ms = 0;  // the seven above
  // Kill and hold modes into directories: the writable layer's walk on a thread alongside the
  // tree (its length; a wait for it after the tree counts in tree_ms). 0 when in line.
  double layer_alongside_ms = 0;
  // The process tree (engine), call to return.
  double tree_ms = 0;
  double tree_setup_ms = 0;  // before the seize (page blob reservation, images)
  double seize_ms = 0;       // ptrace-seizing every thread
  double memory_ms = 0;      // pages
  double tree_rest_ms = 0;   // core, process state, fds (and the TCP network lock), images
  // Thaw after the seize, + refreeze before detaching when the engine does it (not when it
  // leaves that to TreeStats::release: then it is in release_ms).
  double cgroup_hooks_ms = 0;
  double write_ms = 0;         // container.img and the inventory
  // The tree let go (refreeze and detach: TreeStats::release), then killed and the container
  // deleted, held, or thawed (--leave-running).
  double release_ms = 0;
  double frozen_ms = 0;        // every task frozen until killed or thawed (kHold: until returned)
  double downtime_ms = 0;      // the freeze's start until the images are complete
  double compress_ms = 0;      // --compress zstd of the tree's pages, after kill or thaw
  double export_ms = 0;        // --export
  double total_ms = 0;
  std::vector<std::pair<std::string, double>> tree_steps;  // TreeStats::steps
};

// What the engine is asked to do: dump the tree rooted at pid into sink (and finish it) and
// return with the tree alive. The tree arrives frozen by its cgroup. A cgroup-frozen task does
// stop under ptrace, but it cannot run an injected syscall; so once every thread of the tree is
// seized (ptrace-stopped: nothing can fork), the engine calls thaw(), and before it detaches it
// calls refreeze() (itself, or through TreeStats::release once the caller's images are out), so
// the tree never runs between the namespace dumps and the kill or thaw that ends the checkpoint.
struct TreeDumpRequest {
  pid_t pid = 0;
  images::Sink* sink = nullptr;
  images::Compression compression = images::Compression::kNone;
  std::function<Result<void>()> thaw;
  std::function<Result<void>()> refreeze;
  // false: the caller kills the tree next, or holds it (checkpoint without --leave-running): the
  // engine keeps its TCP connections locked, so a kill sends the peers nothing, and returns
  // TreeStats::resume_tcp and before_kill.
  bool leave_running = false;
  // (phase, done, total) from the engine (dump::DumpOptions::progress); may be empty.
  std::function<void(const char*, uint64_t, uint64_t)> progress;
};
using TreeDumper = std::function<Result<TreeStats>(const TreeDumpRequest& req)>;

// How a checkpoint ends once its images are complete.
enum class EndMode {
  kDelete,  // the container is killed while frozen and deleted (the id is free for a restore)
  kThaw,    // it runs on (--leave-running)
  kHold,    // it stays frozen, its TCP connections locked: CheckpointResult::held
};

struct CheckpointOptions {
  std::string root = "/run/godwit";  // runtime state root (--root)
  std::string id;
  // The tree's dump progress (bytes), for a terminal meter (cli); may be empty.
  std::function<void(const char*, uint64_t, uint64_t)> progress;
  // Where the images go as directories (DIR/container, DIR/tree); needed unless both sinks are
  // given, and for export_file.
  std::string image_path;
  // Deprecated spelling of end = kThaw (kept for callers of the older API).
  bool leave_running = false;
  EndMode end = EndMode::kDelete;
  images::Compression compression = images::Compression::kNone;
  std::string export_file;  // non-empty: also write the whole checkpoint as one file
  // The image sets' destinations, not owned; null: directory sinks under image_path. Written and
  // finished by Checkpoint, aborted on failure. With compression and a sink that can compress
  // after Finish, the tree's pages are stored raw and compressed after the release (with kHold:
  // left to the caller, CheckpointResult::tree.compress, which needs tree_sink alive).
  images::Sink* container_sink = nullptr;
  images::Sink* tree_sink = nullptr;
  // The engine-bound Checkpoint (container/engine.h) only:
  // Pre-copy already running on this container, not owned: the tree dump stores only what was
  // written since its last round, into its tree sink (tree_sink must be null or that same sink).
  ContainerPreCopy* precopy = nullptr;
  // Tmpfs contents and writable-layer files copied ahead into container_sink
  // (ContainerPreCopy::CopyFilesAhead), not owned: files unchanged since are referred to, not
  // read again.
  const mnt::Precopied* precopy_files = nullptr;
  // Called once the container's namespaces, mounts and writable layer are dumped and the engine
  // holds every thread of the tree (ptrace-stopped, the cgroup thawed: TreeDumpRequest::thaw),
  // before the tree's state is read, with the record as known then (what container.img will repeat, less
  // the rootfs identity and the times): a migration sends it (container::kEarlyImage) so that the
  // destination makes the environment while the tree is dumped. An error fails the checkpoint.
  std::function<Result<void>(const img::ContainerCheckpoint& early)> namespaces_dumped;
  // Without precopy: run this many pre-copy rounds first (--pre-copy=N), into the tree sink;
  // dump::kPreCopyAuto (-1): until they converge (dump::PreCopy::Converged).
  int pre_copy_rounds = 0;
  // The engine's A/B switches (the CLI fills them from GODWIT_*). No page-space reservation: the
  // cgroup is frozen before the engine runs, so it would only add frozen time (the 1 GiB
  // checkpoint's downtime is ~25% lower without it here, bench 50-container).
  dump::DumpTuning tuning = {.reserve_pages = false};

  EndMode end_mode() const { return leave_running ? EndMode::kThaw : end; }
};

// A checkpoint ended with EndMode::kHold: its images are complete; the container is frozen (its
// cgroup), its TCP connections locked. Kill or Resume ends the hold; destroyed
// without either having been called, it resumes.
class HeldCheckpoint {
 public:
  ~HeldCheckpoint();
  HeldCheckpoint(const HeldCheckpoint&) = delete;
  HeldCheckpoint& operator=(const HeldCheckpoint&) = delete;
  // What a checkpoint without --leave-running does at its end: the connections back in repair
  // mode, the peers' packets held in the caller's net namespace (the lock a restore here
  // removes), then the container killed while frozen and deleted (cgroups, veth, state: the id
  // is free). release_host_lock: no lock is
  // left in the caller's namespace (none is put there): the container runs elsewhere now, as a
  // migration source's does once the destination confirmed. On failure the container may be
  // half gone; the hold stays for Resume or another Kill. The veth is left to the kernel
  // (runtime::Deferral); defer_state_dir: the state dir too, for the next restore of the id here
  // (a checkpoint's own end; a migration's source removes it).
  Result<void> Kill(bool release_host_lock, bool defer_state_dir = false);
  // TCP repair off and unlocked (the tree's and the caller's namespaces), cgroup thawed: the
  // workload continues exactly as before the checkpoint. Not after a successful Kill.
  // thaw=false: the cgroup stays frozen (the container was paused by its owner before).
  Result<void> Resume(bool thaw = true);
  const std::string& id() const { return id_; }

  // Made by Checkpoint: the container (state root, id) with its frozen cgroup, and the tree's
  // TreeStats::resume_tcp and before_kill (empty when nothing is locked).
  HeldCheckpoint(std::string root, std::string id, std::unique_ptr<runtime::Cgroup> cg,
                 std::function<Result<void>()> resume_tcp,
                 std::function<Result<void>(bool)> before_kill);

 private:
  std::string root_, id_;
  std::unique_ptr<runtime::Cgroup> cg_;
  std::function<Result<void>()> resume_tcp_;
  std::function<Result<void>(bool)> before_kill_;
  bool called_ = false;  // Kill or Resume was called: the destructor leaves it
  bool over_ = false;    // killed or resumed: nothing more to do
};

struct CheckpointResult {
  img::ContainerCheckpoint record;  // what container.img holds (times included)
  TreeStats tree;
  CheckpointPhases phases;
  uint64_t export_size = 0;
  std::unique_ptr<HeldCheckpoint> held;  // set with EndMode::kHold
};

// A checkpoint's directory DIR prepared for new images: created, a previous checkpoint there
// made incomplete (DIR/container/inventory.img removed) before anything new is written, and the
// tree's directory sink DIR/tree opened.
Result<std::unique_ptr<images::Sink>> OpenTreeDirSink(const std::string& image_path);

Result<CheckpointResult> Checkpoint(const CheckpointOptions& opts, const TreeDumper& dump_tree);

// The container's own namespaces: those of pid that differ from the caller's.
Result<std::vector<std::string>> OwnNamespaces(pid_t pid);

// The container's own state that a checkpoint reads while it is frozen (uts, ipc, net, the mount
// table and tmpfs contents), read once now while it runs, into sink (a throwaway copy: the
// container may change it meanwhile), timed in ms: what that part of the frozen time costs for
// this container (a migration's prediction of its blackout, migrate/source.cc).
Result<double> RehearseCollect(const std::string& root, const std::string& id, images::Sink& sink,
                               const mnt::Precopied* files = nullptr);

// The user namespace of a container whose init is `init` (its uid/gid maps as host root reads
// them, and setgroups). pids: every process of the container; kUnsupported for a process in a
// nested user namespace or with more than one thread (see docs/container.md, user namespaces).
Result<void> DumpUserNamespace(pid_t init, const std::vector<pid_t>& pids, img::UserNamespace* out);

}  // namespace godwit::container
