#include "container/engine.h"

#include <algorithm>

#include "dump/dump.h"
#include "restore/restore.h"
#include "runtime/container.h"
#include "runtime/runtime.h"
#include "runtime/storage.h"

namespace godwit::container {

Result<std::unique_ptr<ContainerPreCopy>> ContainerPreCopy::Start(const std::string& root,
                                                                  const std::string& id,
                                                                  images::Sink& tree_sink,
                                                                  const dump::PreCopyOptions& o) {
  TRY(runtime::ValidateId(id));
  ASSIGN_OR_RETURN(runtime::Container c, runtime::Container::Load(root, id));
  if (c.CurrentStatus() != runtime::Status::kRunning)
    return MakeError(ErrorKind::kGeneric, 0, "container %s is %s, not running", id.c_str(),
                     runtime::StatusName(c.CurrentStatus()));
  std::unique_ptr<ContainerPreCopy> pc(new ContainerPreCopy());
  pc->id_ = id;
  pc->rootfs_ = c.rootfs;
  pc->upper_ = c.disk_quota > 0 ? runtime::StorageUpper(c.storage_dir) : "";
  if (auto own = OwnNamespaces(c.pid); own.ok())
    pc->own_mnt_ = std::find(own->begin(), own->end(), "mnt") != own->end();
  dump::PreCopyOptions po = o;
  if (c.pager_pid > 0) po.lazy_pager = {c.pager_pid, c.pager_start_time};
  auto engine = dump::PreCopy::Start(c.pid, tree_sink, po);
  if (!engine.ok()) return std::move(engine.error().wrap(StrFormat("container %s", id.c_str())));
  pc->engine_ = std::move(*engine);
  return pc;
}

Result<void> ContainerPreCopy::CopyFilesAhead(images::Sink& container_sink,
                                              images::Compression compression) {
  files_.reset();
  auto f = std::make_unique<mnt::Precopied>();
  TRY_CTX(mnt::PrecopyTmpfs(pid(), container_sink, compression, f.get()), "container %s",
          id_.c_str());
  if (own_mnt_) {
    TRY_CTX(mnt::PrecopyLayer(pid(), rootfs_, container_sink, compression, upper_, f.get()),
            "container %s", id_.c_str());
  }
  files_ = std::move(f);
  return Ok();
}

// The engine dumps the tree and leaves it alive. The cgroup stays frozen from the namespace dumps
// until the engine has seized every thread (the tree is then held by ptrace) and is refrozen
// while the engine still holds every thread, before it lets go: the tree never runs in between
// (TreeDumpRequest).
TreeDumper EngineDumper(const dump::DumpTuning& tuning, dump::PreCopy* precopy) {
  return [tuning, precopy](const TreeDumpRequest& req) -> Result<TreeStats> {
    if (req.sink == nullptr) return MakeError(ErrorKind::kUsage, 0, "tree dump: no sink");
    dump::DumpOptions o;
    o.pid = req.pid;
    o.leave_running = true;
    o.compression = req.compression;
    o.shell_job = true;               // the init's stdio comes from outside the container
    o.tcp_established = true;         // the container owns its netns
    o.userns_saved_by_caller = true;  // container.img holds the container's user namespace
    // Killed or held next: its connections must stay silent.
    o.keep_tcp_locked = !req.leave_running;
    o.compress_later = true;  // the cgroup stays frozen after the engine: compress after the kill
    o.on_seized = req.thaw;
    o.before_detach = req.refreeze;
    // Killed or held next: frozen before the detach, so that not one syscall runs after the dump.
    o.freeze_before_detach = !req.leave_running;
    // ... and let go after the container's record is out (TreeStats::release).
    o.defer_release = !req.leave_running;
    o.precopy = precopy;
    o.tuning = tuning;
    o.progress = req.progress;
    ASSIGN_OR_RETURN(dump::DumpStats s, dump::Dump(o, *req.sink));
    TreeStats t;
    t.processes = s.processes;
    if (s.tcp) {
      // The dump's own record of what it locked (no image is read back: the sink may be a
      // stream). The container's netns and veth go away with it: LockOutside holds its peers'
      // packets on the host meanwhile.
      std::shared_ptr<dump::TcpHold> hold = s.tcp;
      t.resume_tcp = [hold]() -> Result<void> {
        hold->Resume();
        return Ok();
      };
      t.before_kill = [hold, pid = req.pid](bool lock_host) -> Result<void> {
        hold->BeforeKill();
        if (lock_host) TRY_CTX(hold->LockOutside(pid), "network lock on the host");
        hold->Drop();
        return Ok();
      };
    }
    t.compress = s.compress;
    t.release = s.release;
    t.threads = s.threads;
    t.bytes = s.bytes_stored;
    t.seize_ms = s.freeze_ms;
    t.memory_ms = s.memdump_ms;
    t.frozen_ms = s.frozen_ms;
    t.remote_calls = s.remote_calls;
    t.steps = s.step_ms;
    t.round_bytes = s.round_bytes;
    t.pre_bytes = s.pre_bytes;
    t.pre_ms = s.pre_ms;
    t.pre_reserved_bytes = s.pre_reserved_bytes;
    return t;
  };
}

// The engine restores the tree with its root cloned into the container's fresh namespaces (pid 1
// of a new pid ns, as the image says): BuildRoot inside it, the environment from outside, then the
// files inside its mount and net namespaces.
TreeRestorer EngineRestorer() {
  return [](const TreeRestoreRequest& req) -> Result<TreeRestoreResult> {
    restore::RestoreOptions o;
    o.images_dir = req.tree_dir;
    o.detach = true;     // the container verb waits (or not) for the init itself
    o.shell_job = true;  // the init's stdio comes from outside the container
    o.root_clone_flags = req.clone_flags;
    o.userns_fd = req.userns_fd;
    o.root_inside = req.inside;
    o.root_outside = req.outside;
    o.root_fresh_netns = req.fresh_netns;
    o.root_netns_locked = req.netns_locked;
    o.root_forked = req.forked;
    o.root_cgroup_fd = req.cgroup_fd;
    o.root_enter_cgroup = req.enter_cgroup;
    o.tcp_close = req.tcp_close;
    o.keep_netlock = req.keep_netlock;
    o.lazy = req.lazy;
    o.lazy_pace = req.lazy_pace;
    o.lazy_discard = req.lazy_discard;
    o.progress = req.progress;
    ASSIGN_OR_RETURN(restore::RestoreStats s, restore::Restore(o));
    TreeRestoreResult t;
    t.root_host_pid = s.root_pid;
    t.processes = s.processes;
    t.memory_ms = s.memory_ms;
    t.lazy_bytes = s.lazy_bytes;
    t.hot_bytes = s.hot_bytes;
    t.lazy_prepared_bytes = s.lazy_prepared_bytes;
    t.pager = s.pager;
    return t;
  };
}

Result<CheckpointResult> Checkpoint(const CheckpointOptions& opts) {
  CheckpointOptions o = opts;
  std::shared_ptr<images::Sink> own_tree;
  std::unique_ptr<ContainerPreCopy> own_precopy;
  ContainerPreCopy* precopy = o.precopy;
  if (precopy == nullptr && (o.pre_copy_rounds > 0 || o.pre_copy_rounds == dump::kPreCopyAuto)) {
    images::Sink* tree = o.tree_sink;
    if (tree == nullptr) {
      ASSIGN_OR_RETURN(std::unique_ptr<images::Sink> t, OpenTreeDirSink(o.image_path));
      own_tree = std::move(t);
      tree = own_tree.get();
    }
    dump::PreCopyOptions po;
    po.compression = o.compression;
    auto pc = ContainerPreCopy::Start(o.root, o.id, *tree, po);
    if (!pc.ok()) {
      tree->Abort();
      return std::move(pc).error();
    }
    own_precopy = std::move(*pc);
    const bool until_converged = o.pre_copy_rounds == dump::kPreCopyAuto;
    const int most = until_converged ? dump::PreCopy::kMaxAutoRounds : o.pre_copy_rounds;
    for (int i = 0; i < most; ++i) {
      auto r = own_precopy->Round();
      if (!r.ok()) {
        tree->Abort();
        return std::move(r.error().wrap(StrFormat("container %s", o.id.c_str())));
      }
      if (until_converged && own_precopy->engine().Converged()) break;
    }
    precopy = own_precopy.get();
  }
  // The final delta's page files made and reserved while the container runs: the cgroup is
  // frozen before the engine (a migration's source did this before its packet hold already).
  if (precopy != nullptr) precopy->engine().PrepareFinal();
  if (precopy != nullptr) {
    if (precopy->id() != o.id)
      return MakeError(ErrorKind::kUsage, 0, "the pre-copy is of container %s, not %s",
                       precopy->id().c_str(), o.id.c_str());
    if (o.tree_sink != nullptr && o.tree_sink != &precopy->tree_sink())
      return MakeError(ErrorKind::kUsage, 0,
                       "container %s: the tree sink is not the one the pre-copy rounds wrote to",
                       o.id.c_str());
    o.tree_sink = &precopy->tree_sink();
  }
  auto res = Checkpoint(o, EngineDumper(o.tuning, precopy ? &precopy->engine() : nullptr));
  // Held: a compression left to the caller needs the tree's sink, which is ours.
  if (res.ok() && res->held && res->tree.compress && own_tree)
    res->tree.compress = [own_tree, f = res->tree.compress] { return f(); };
  return res;
}

Result<RestoreResult> Restore(const RestoreOptions& opts) { return Restore(opts, EngineRestorer()); }

Result<RestoreResult> FinishRestore(PreparedRestorePtr p) {
  return FinishRestore(std::move(p), EngineRestorer());
}

}  // namespace godwit::container
