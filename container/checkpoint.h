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
  int processes = 0;
  int threads = 0;
  uint64_t bytes = 0;
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
