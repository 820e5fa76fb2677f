// The container drivers bound to godwit's engine (dump/, restore/): the one binding the CLI and
// the migration daemon share. container/checkpoint.h and container/restore.h take the engine as
// a function (TreeDumper, TreeRestorer) so that their own tests can stand in for it; this file
// gives the real ones, and the engine-only parts of a checkpoint: pre-copy rounds while the
// container runs (ContainerPreCopy), and the engine's switches.
//
// A pre-copied checkpoint, in order:
//   ContainerPreCopy::Start(root, id, tree_sink)   dirty tracking in every process of the tree
//   precopy->Round() ...                           the container runs; each round copies what was
//                                                  written since the last one into tree_sink
//   Checkpoint({.precopy = precopy.get(), ...})    freeze; the tree's final dump stores only the
//                                                  pages written since the last round
#pragma once

#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include "container/checkpoint.h"
#include "container/mnt.h"
#include "container/restore.h"
#include "dump/precopy.h"
#include "dump/tuning.h"
#include "images/image.h"

namespace godwit::container {

// Pre-copy of a running container's process tree (dump::PreCopy on its init's tree). The
// container is not frozen: it runs through the rounds, which write into tree_sink; the final
// Checkpoint (CheckpointOptions::precopy) dumps the tree into that same sink.
class ContainerPreCopy {
 public:
  // The container must be running (not paused: a frozen tree cannot run the injected call that
  // starts the tracking).
  static Result<std::unique_ptr<ContainerPreCopy>> Start(const std::string& root,
                                                         const std::string& id,
                                                         images::Sink& tree_sink,
                                                         const dump::PreCopyOptions& o = {});
  Result<dump::RoundStats> Round() { return engine_->Round(); }
  const std::vector<dump::RoundStats>& rounds() const { return engine_->rounds(); }
  const std::string& id() const { return id_; }
  pid_t pid() const { return engine_->pid(); }  // the container's init, host pid
  images::Sink& tree_sink() const { return engine_->sink(); }
  dump::PreCopy& engine() { return *engine_; }
  // Copies the container's tmpfs contents and its writable layer's files into container_sink
  // while it runs (mnt::PrecopyTmpfs, mnt::PrecopyLayer): the final checkpoint then reads only
  // the files changed since. Again: a fresh copy.
  Result<void> CopyFilesAhead(images::Sink& container_sink, images::Compression compression);
  // What CopyFilesAhead copied (null before it, or after it failed).
  const mnt::Precopied* files() const { return files_.get(); }

 private:
  ContainerPreCopy() = default;
  std::string id_;
  std::unique_ptr<dump::PreCopy> engine_;
  std::unique_ptr<mnt::Precopied> files_;
  std::string rootfs_, upper_;  // the container's rootfs and overlay upper dir (if any)
  bool own_mnt_ = false;        // a mount namespace of its own (else no layer of its own)
};

// The engine's dump of a container's tree (the cgroup hooks, TCP kept locked to be killed or
// held, the init's stdio from outside). precopy: rounds already run on this tree (not owned).
TreeDumper EngineDumper(const dump::DumpTuning& tuning, dump::PreCopy* precopy = nullptr);
// The engine's restore of a container's tree: its root cloned into the container's fresh
// namespaces (pid 1 of a new pid namespace), the tree detached once restored.
TreeRestorer EngineRestorer();

// Checkpoint (container/checkpoint.h) through the engine, with pre-copy: opts.precopy (rounds the
// caller ran) or opts.pre_copy_rounds (run here first, into the tree's sink).
Result<CheckpointResult> Checkpoint(const CheckpointOptions& opts);
// Restore (container/restore.h) through the engine.
Result<RestoreResult> Restore(const RestoreOptions& opts);

}  // namespace godwit::container
