// `godwit checkpoint ID --image-path DIR`: a whole container to images.
//
// Layout of DIR: DIR/container/ is this module's image set (container.img with the config, the
// runtime state, the rootfs identity and the limits; uts, ipc, netns, mnt, tmpfs-*, layer), and
// DIR/tree/ is the process tree's image set, written by the engine. The checkpoint is complete
// when DIR/container/inventory.img exists: it is written last, after the tree's.
//
// Steps (Checkpoint, in this order):
//   load the container record (must be running) -> freeze its cgroup (every task, bounded wait)
//   -> uts, ipc, net (when the container owns them), mount table + tmpfs contents, writable
//   layer: all while frozen, from outside (setns threads, /proc/PID/root) -> the process tree
//   (TreeDumper; it leaves the tree alive and frozen) -> rootfs identity, limits, config ->
//   container.img -> inventory -> kill and delete the container, or thaw it (--leave-running)
//   -> optional export to one file.
// On failure before the inventory the sink is aborted and the container thawed, untouched.
#pragma once

#include <sys/types.h>

#include <functional>
#include <string>

#include "common/result.h"
#include "images/image.h"
#include "proto/container.pb.h"

namespace godwit::container {

inline constexpr char kContainerImage[] = "container.img";
inline constexpr char kContainerDir[] = "container";  // under the image path
inline constexpr char kTreeDir[] = "tree";

struct TreeStats {
  // Set when the tree's TCP connections were left in repair mode and locked (!leave_running): if
  // the tree is thawed instead of killed after all, call it first to give them back.
  std::function<Result<void>()> resume_tcp;
  // Set when the tree's pages were stored raw to be compressed once the tree runs again or is
  // gone (no frozen time): returns the bytes saved; the raw set stays complete if it fails.
  std::function<Result<uint64_t>()> compress;
  int processes = 0;
  int threads = 0;
  uint64_t bytes = 0;
  // The engine's own times (ms), for the phase report; 0 when the dumper does not say.
  double seize_ms = 0;   // ptrace-seizing every thread
  double memory_ms = 0;  // reading and writing pages
  double frozen_ms = 0;  // from the seize until the tree is let go (detached or killed)
  uint64_t remote_calls = 0;  // syscalls injected into the tree (~12 us each here)
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
  double layer_ms = 0;   // writable-layer changes
  double rootfs_ms = 0;  // rootfs identity when taken while frozen (no overlay)
  double collect_ms = 0;  // the seven above
  // The process tree (engine), call to return.
  double tree_ms = 0;
  double tree_setup_ms = 0;  // before the seize (page blob reservation, images)
  double seize_ms = 0;       // ptrace-seizing every thread
  double memory_ms = 0;      // pages
  double tree_rest_ms = 0;   // core, process state, fds (and the TCP network lock), images
  double cgroup_hooks_ms = 0;  // thaw after the seize + refreeze before detaching
  double write_ms = 0;         // container.img and the inventory
  double release_ms = 0;       // kill and delete the container, or thaw it (--leave-running)
  double frozen_ms = 0;        // every task frozen until killed or thawed
  double downtime_ms = 0;      // the freeze's start until the images are complete
  double compress_ms = 0;      // --compress zstd of the tree's pages, after kill or thaw
  double export_ms = 0;        // --export
  double total_ms = 0;
};

// What the engine is asked to do: dump the tree rooted at pid into dir and return with the tree
// alive. The tree arrives frozen by its cgroup. A cgroup-frozen task does stop under ptrace, but
// it cannot run an injected syscall; so once every thread of the tree is seized (ptrace-stopped:
// nothing can fork), the engine calls thaw(), and before it detaches it calls refreeze(), so the
// tree never runs between the namespace dumps and the kill or thaw that ends the checkpoint.
struct TreeDumpRequest {
  pid_t pid = 0;
  std::string dir;
  images::Compression compression = images::Compression::kNone;
  std::function<Result<void>()> thaw;
  std::function<Result<void>()> refreeze;
  // false: the caller kills the tree next (checkpoint without --leave-running): the engine keeps
  // its TCP connections in repair mode and locked, so the kill sends the peers nothing.
  bool leave_running = false;
};
using TreeDumper = std::function<Result<TreeStats>(const TreeDumpRequest& req)>;

struct CheckpointOptions {
  std::string root = "/run/godwit";  // runtime state root (--root)
  std::string id;
  std::string image_path;
  bool leave_running = false;
  images::Compression compression = images::Compression::kNone;
  std::string export_file;  // non-empty: also write the whole checkpoint as one file
};

struct CheckpointResult {
  img::ContainerCheckpoint record;  // what container.img holds (times included)
  TreeStats tree;
  CheckpointPhases phases;
  uint64_t export_size = 0;
};

Result<CheckpointResult> Checkpoint(const CheckpointOptions& opts, const TreeDumper& dump_tree);

// The container's own namespaces: those of pid that differ from the caller's.
Result<std::vector<std::string>> OwnNamespaces(pid_t pid);

// The user namespace of a container whose init is `init` (its uid/gid maps as host root reads
// them, and setgroups). pids: every process of the container; kUnsupported for a process in a
// nested user namespace or with more than one thread (see docs/container.md, user namespaces).
Result<void> DumpUserNamespace(pid_t init, const std::vector<pid_t>& pids, img::UserNamespace* out);

}  // namespace godwit::container
