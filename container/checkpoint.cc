#include "container/checkpoint.h"

#include <signal.h>
#include <sys/stat.h>

#include <chrono>
#include <future>
#include <nlohmann/json.hpp>
#include <optional>

#include "common/fs.h"
#include "common/idmap.h"
#include "common/log.h"
#include "common/netns.h"
#include "common/scope_exit.h"
#include "common/timing.h"
#include "container/archive.h"
#include "container/ipc.h"
#include "container/mnt.h"
#include "container/net.h"
#include "container/ns.h"
#include "container/uts.h"
#include "dump/lazy_wait.h"
#include "runtime/cgroup.h"
#include "runtime/container.h"
#include "runtime/runtime.h"
#include "runtime/storage.h"

namespace godwit::container {
namespace {

using timing::Clock;

void FillLimits(const runtime::Resources& r, img::CgroupLimits* l) {
  if (r.memory_limit) {
    l->set_has_memory_limit(true);
    l->set_memory_limit(*r.memory_limit);
  }
  if (r.cpu_shares) {
    l->set_has_cpu_shares(true);
    l->set_cpu_shares(*r.cpu_shares);
  }
  if (r.cpu_quota) {
    l->set_has_cpu_quota(true);
    l->set_cpu_quota(*r.cpu_quota);
  }
  if (r.cpu_period) {
    l->set_has_cpu_period(true);
    l->set_cpu_period(*r.cpu_period);
  }
  if (r.pids_limit) {
    l->set_has_pids_limit(true);
    l->set_pids_limit(*r.pids_limit);
  }
}

bool Has(const std::vector<std::string>& v, const char* s) {
  return std::find(v.begin(), v.end(), s) != v.end();
}

}  // namespace

Result<void> DumpUserNamespace(pid_t init, const std::vector<pid_t>& pids,
                               img::UserNamespace* out) {
  struct stat ns;
  std::string nsp = StrFormat("/proc/%d/ns/user", init);
  if (::stat(nsp.c_str(), &ns) < 0) return Errno("stat %s", nsp.c_str());
  // Every process must be in the container's own user namespace: a restored process joins that
  // namespace once its children are forked. Threads are cloned inside it and get their ids
  // inside through ns_last_pid (restore/threads.cc), their host ids are new.
  for (pid_t p : pids) {
    struct stat st;
    std::string path = StrFormat("/proc/%d/ns/user", p);
    if (::stat(path.c_str(), &st) < 0) {
      if (errno == ENOENT || errno == ESRCH) continue;  // a zombie's ns links are gone
      return Errno("stat %s", path.c_str());
    }
    if (st.st_ino != ns.st_ino || st.st_dev != ns.st_dev)
      return MakeError(ErrorKind::kUnsupported, 0,
                       "pid %d is in a nested user namespace: not supported by checkpoint", p);
  }
  ASSIGN_OR_RETURN(auto uid_map, idmap::Read(init, "uid_map"));
  ASSIGN_OR_RETURN(auto gid_map, idmap::Read(init, "gid_map"));
  if (uid_map.empty() || gid_map.empty())
    return MakeError(ErrorKind::kUnsupported, 0, "pid %d: its user namespace has no %s", init,
                     uid_map.empty() ? "uid_map" : "gid_map");
  for (const auto& r : uid_map) {
    auto* e = out->add_uid_map();
    e->set_inside(r.inside);
    e->set_outside(r.outside);
    e->set_count(r.count);
  }
  for (const auto& r : gid_map) {
    auto* e = out->add_gid_map();
    e->set_inside(r.inside);
    e->set_outside(r.outside);
    e->set_count(r.count);
  }
  ASSIGN_OR_RETURN(std::string sg, fs::ReadFile(StrFormat("/proc/%d/setgroups", init)));
  out->set_setgroups_deny(fs::Trim(sg) == "deny");
  // The restore sets every process's groups with setgroups, which "deny" forbids for good.
  if (out->setgroups_deny())
    return MakeError(ErrorKind::kUnsupported, 0,
                     "pid %d: its user namespace denies setgroups: the restored processes' "
                     "groups could not be set",
                     init);
  return Ok();
}

Result<std::vector<std::string>> OwnNamespaces(pid_t pid) {
  std::vector<std::string> own;
  for (const char* ns : {"pid", "mnt", "uts", "ipc", "net", "cgroup", "user", "time"}) {
    struct stat theirs, ours;
    std::string p = StrFormat("/proc/%d/ns/%s", pid, ns);
    if (::stat(p.c_str(), &theirs) < 0) {
      if (errno == ENOENT && std::string(ns) == "time") continue;
      return MakeError(ErrorKind::kNotFound, errno, "stat %s", p.c_str());
    }
    if (::stat(StrFormat("/proc/self/ns/%s", ns).c_str(), &ours) < 0) return Errno("stat own ns");
    if (theirs.st_ino != ours.st_ino || theirs.st_dev != ours.st_dev) own.push_back(ns);
  }
  return own;
}

namespace {

// The container's uts, ipc and net namespaces (those it owns) into sink, each lapped into ph.
Result<void> DumpUtsIpcNet(pid_t pid, const std::vector<std::string>& own, images::Sink& sink,
                           images::Compression compression, const std::string& id,
                           CheckpointPhases* ph, timing::PhaseTimer* laps) {
  if (Has(own, "uts")) {
    ASSIGN_OR_RETURN(UniqueFd fd, OpenNamespace(pid, "uts"));
    TRY_CTX(uts::Dump(fd.get(), sink), "container %s", id.c_str());
    laps->LapInto(&ph->uts_ms);
  }
  if (Has(own, "ipc")) {
    ASSIGN_OR_RETURN(UniqueFd fd, OpenNamespace(pid, "ipc"));
    // The container's own mqueue mount lists its queues without mounting one.
    std::string mq;
    if (Has(own, "mnt") && fs::Exists(StrFormat("/proc/%d/root/dev/mqueue", pid))) {
      auto mi = fs::ReadFile(StrFormat("/proc/%d/mountinfo", pid));
      auto table = mi.ok() ? mnt::ParseMountInfo(*mi) : Result<img::MountTable>(mi.error());
      if (table.ok()) {
        for (const auto& m : table->mounts())
          if (m.mountpoint() == "/dev/mqueue" && m.fstype() == "mqueue")
            mq = StrFormat("/proc/%d/root/dev/mqueue", pid);
      }
    }
    TRY_CTX(ipc::Dump(fd.get(), sink, compression, mq), "container %s", id.c_str());
    laps->LapInto(&ph->ipc_ms);
  }
  if (Has(own, "net")) {
    ASSIGN_OR_RETURN(UniqueFd fd, OpenNamespace(pid, "net"));
    TRY_CTX(net::Dump(fd.get(), sink), "container %s", id.c_str());
    laps->LapInto(&ph->net_ms);
  }
  return Ok();
}

}  // namespace

Result<double> RehearseCollect(const std::string& root, const std::string& id,
                               images::Sink& sink, const mnt::Precopied* files) {
  TRY(runtime::ValidateId(id));
  ASSIGN_OR_RETURN(runtime::Container c, runtime::Container::Load(root, id));
  ASSIGN_OR_RETURN(std::vector<std::string> own, OwnNamespaces(c.pid));
  auto t0 = Clock::now();
  CheckpointPhases ph;
  timing::PhaseTimer laps(t0);
  TRY(DumpUtsIpcNet(c.pid, own, sink, images::Compression::kNone, id, &ph, &laps));
  if (Has(own, "mnt"))
    TRY_CTX(mnt::Dump(c.pid, sink, images::Compression::kNone, files), "container %s",
            id.c_str());
  if (files) files->reused_bytes = 0;  // a rehearsal: only the final dump's count is reported
  return timing::MsBetween(t0, Clock::now());
}

HeldCheckpoint::HeldCheckpoint(std::string root, std::string id,
                               std::unique_ptr<runtime::Cgroup> cg,
                               std::function<Result<void>()> resume_tcp,
                               std::function<Result<void>(bool)> before_kill)
    : root_(std::move(root)),
      id_(std::move(id)),
      cg_(std::move(cg)),
      resume_tcp_(std::move(resume_tcp)),
      before_kill_(std::move(before_kill)) {}

HeldCheckpoint::~HeldCheckpoint() {
  if (called_) return;
  auto r = Resume();
  if (!r.ok()) LOG_ERROR("container %s: resuming a held checkpoint: %s", id_.c_str(),
                         r.error().to_string().c_str());
}

Result<void> HeldCheckpoint::Kill(bool release_host_lock, bool defer_state_dir) {
  if (over_) return MakeError(ErrorKind::kGeneric, 0, "container %s: no longer held", id_.c_str());
  called_ = true;
  // Before the delete: the container's veth and net namespace (with its own lock) go with it.
  if (before_kill_) TRY_CTX(before_kill_(!release_host_lock), "container %s", id_.c_str());
  // Killed while still frozen: it never runs past the checkpoint. Delete kills the whole cgroup,
  // thaws, and removes cgroups and state (the id is free for the restore). What only waits is
  // left to others (runtime::Deferral). The veth goes with the dead network namespace, which
  // the kernel takes down asynchronously (1-30 ms after the kill here: what the checkpoint
  // opened in the namespace is freed after an RCU grace period, then cleanup_net() unregisters
  // the pair): waiting for it was a third of an idle container's checkpoint; a restore (or run)
  // of the id that still finds the veth waits for the rest, or deletes it after 500 ms,
  // alongside its own start-up (container/restore.cc). The state dir, asked: renamed away, its
  // removal (a synchronous discard per freed block on this VM's file system) left to that
  // restore too.
  TRY(runtime::Delete(root_, id_, /*force=*/true, "godwit",
                      {.veth = true, .state_dir = defer_state_dir}));
  over_ = true;
  return Ok();
}

Result<void> HeldCheckpoint::Resume(bool thaw) {
  if (over_) return MakeError(ErrorKind::kGeneric, 0, "container %s: no longer held", id_.c_str());
  called_ = over_ = true;
  Result<void> res = Ok();
  // Connections out of repair mode and unlocked before the tree runs: it finds them as it left
  // them.
  if (resume_tcp_) {
    auto r = resume_tcp_();
    if (!r.ok()) res = std::move(r.error().wrap(StrFormat("container %s: TCP back from repair",
                                                           id_.c_str())));
  }
  auto t = thaw ? cg_->Thaw() : cg_->Freeze();
  if (!t.ok() && res.ok()) res = std::move(t.error().wrap(StrFormat("%s container %s",
                                                                    thaw ? "thaw" : "freeze",
                                                                    id_.c_str())));
  return res;
}

Result<std::unique_ptr<images::Sink>> OpenTreeDirSink(const std::string& image_path) {
  if (image_path.empty()) return MakeError(ErrorKind::kUsage, 0, "--image-path is required");
  TRY(fs::MkdirAll(image_path, 0700));
  // A previous checkpoint here stops being complete before anything new is written.
  (void)::unlink((image_path + "/" + kContainerDir + "/inventory.img").c_str());
  return images::OpenDirSink(image_path + "/" + kTreeDir, true);
}

Result<CheckpointResult> Checkpoint(const CheckpointOptions& opts, const TreeDumper& dump_tree) {
  auto t_start = Clock::now();
  TRY(runtime::ValidateId(opts.id));
  const EndMode end = opts.end_mode();
  const bool leave_running = end == EndMode::kThaw;
  if ((!opts.container_sink || !opts.tree_sink || !opts.export_file.empty()) &&
      opts.image_path.empty())
    return MakeError(ErrorKind::kUsage, 0, "--image-path is required");
  ASSIGN_OR_RETURN(runtime::Container c, runtime::Container::Load(opts.root, opts.id));
  // A paused container (frozen by its owner: containerd pauses a task before checkpointing it,
  // as runc allows) is checkpointed the same way and left paused with --leave-running.
  const bool paused = c.CurrentStatus() == runtime::Status::kPaused;
  if (c.CurrentStatus() != runtime::Status::kRunning && !paused) {
    return MakeError(ErrorKind::kGeneric, 0, "container %s is %s, not running", opts.id.c_str(),
                     runtime::StatusName(c.CurrentStatus()));
  }
  if (paused && end == EndMode::kHold)
    return MakeError(ErrorKind::kUnsupported, 0,
                     "container %s is paused: resume it before migrating it", opts.id.c_str());
  const pid_t pid = c.pid;
  ASSIGN_OR_RETURN(std::string config, fs::ReadFile(c.config_path()));
  {
    // A namespace joined by path belongs to someone else (Podman's network): not the
    // container's to dump or to make again at restore.
    auto j = nlohmann::json::parse(config, nullptr, false);
    if (j.is_object() && j.contains("linux") && j["linux"].is_object() &&
        j["linux"].contains("namespaces") && j["linux"]["namespaces"].is_array())
      for (const auto& n : j["linux"]["namespaces"])
        if (n.is_object() && n.contains("path") && n.contains("type") && n["type"].is_string())
          return MakeError(ErrorKind::kUnsupported, 0,
                           "container %s joined an existing %s namespace "
                           "(linux.namespaces[].path, e.g. Podman's network): checkpointing it "
                           "is not supported",
                           opts.id.c_str(), n["type"].get<std::string>().c_str());
  }
  ASSIGN_OR_RETURN(std::vector<std::string> own, OwnNamespaces(pid));

  // The sinks: the caller's, or directories under the image path.
  std::shared_ptr<images::Sink> own_tree, own_container;
  images::Sink* tree_sink = opts.tree_sink;
  images::Sink* sink = opts.container_sink;
  if (!tree_sink) {
    ASSIGN_OR_RETURN(std::unique_ptr<images::Sink> t, OpenTreeDirSink(opts.image_path));
    own_tree = std::move(t);
    tree_sink = own_tree.get();
  }
  if (!sink) {
    if (!own_tree) {  // as OpenTreeDirSink does
      TRY(fs::MkdirAll(opts.image_path, 0700));
      (void)::unlink((opts.image_path + "/" + kContainerDir + "/inventory.img").c_str());
    }
    ASSIGN_OR_RETURN(std::unique_ptr<images::Sink> cs,
                     images::OpenDirSink(opts.image_path + "/" + kContainerDir, true));
    own_container = std::move(cs);
    sink = own_container.get();
  }
  bool finished = false;
  bool tree_asked = false;  // the engine finishes or aborts the tree's sink from then on
  ScopeExit abort_sink([&] {
    if (finished) return;
    sink->Abort();
    if (!tree_asked) tree_sink->Abort();
  });

  CheckpointResult res;
  img::ContainerCheckpoint& rec = res.record;
  rec.set_id(opts.id);
  rec.set_config_json(config);
  rec.set_state_json(c.ToJson().dump());
  rec.set_init_pid(pid);
  rec.set_host_veth(c.host_veth);
  for (const auto& n : own) rec.add_namespaces(n);
  FillLimits(c.resources, rec.mutable_limits());

  // With a writable layer (disk quota: an overlay) the rootfs never changes, so its identity is
  // taken before freezing: walking a big rootfs should not count against the frozen time.
  // Without one, the container writes into the rootfs itself: identify it while frozen.
  // It only reads the rootfs, which nothing writes: it runs on a thread of its own alongside the
  // freeze and the collection (a busybox rootfs: ~300 entries, 2-10 ms here), and is taken before
  // the record is written.
  const bool overlay = c.disk_quota > 0;
  std::future<Result<img::RootfsIdentity>> overlay_identity;
  if (overlay) {
    overlay_identity = std::async(std::launch::async,
                                  [path = c.rootfs] { return mnt::IdentifyRootfs(path); });
  }

  // Restored lazily and still being paged in: its pager is waited for while the container runs
  // (by the pager's exit: no CPU taken from either), not by the tree dump inside the freeze.
  // With pre-copy, its start waited already (a migration holds packets from here on).
  if (opts.precopy == nullptr && opts.pre_copy_rounds == 0 && c.pager_pid > 0 &&
      c.pager_start_time != 0 && runtime::ProcessStartTime(c.pager_pid) == c.pager_start_time)
    TRY_CTX(dump::WaitLazyPages(pid, dump::kLazyWaitMs, nullptr,
                                {c.pager_pid, c.pager_start_time}),
            "container %s", opts.id.c_str());

  // Connections are locked with libnftables inside the freeze: the library is loaded before it
  // when the container's namespace has a TCP socket (common/netns.h).
  netns::PreloadNftIfTcp(pid);

  // Freeze: nothing in the container runs (or forks) from here until kill or thaw.
  ASSIGN_OR_RETURN(std::unique_ptr<runtime::Cgroup> cg, runtime::OpenCgroup(c));
  auto t_freeze = Clock::now();
  TRY_CTX(cg->Freeze(), "freeze container %s", opts.id.c_str());
  auto t_frozen = Clock::now();
  CheckpointPhases& ph = res.phases;
  ph.prepare_ms = timing::MsBetween(t_start, t_freeze);
  ph.freeze_ms = timing::MsBetween(t_freeze, t_frozen);
  timing::PhaseTimer laps(t_frozen);  // the namespaces' phases, one after the other
  bool thaw_on_exit = true;
  ScopeExit thaw([&] {
    if (!thaw_on_exit) return;
    if (res.tree.resume_tcp) {  // the tree was dumped to be killed: its connections come back
      auto r = res.tree.resume_tcp();
      if (!r.ok()) LOG_ERROR("container %s: TCP back from repair: %s", opts.id.c_str(),
                             r.error().to_string().c_str());
    }
    auto r = paused ? cg->Freeze() : cg->Thaw();  // as it was before the checkpoint
    if (!r.ok()) LOG_ERROR("thaw container %s: %s", opts.id.c_str(), r.error().to_string().c_str());
  });
  rec.mutable_times()->set_freeze_ms(timing::MsBetween(t_freeze, t_frozen));

  // Namespaces, mounts and the writable layer, read from outside while frozen.
  if (Has(own, "user")) {
    ASSIGN_OR_RETURN(std::vector<pid_t> pids, cg->Pids());
    TRY_CTX(DumpUserNamespace(pid, pids, rec.mutable_userns()), "container %s", opts.id.c_str());
    laps.LapInto(&ph.userns_ms);
  }
  TRY(DumpUtsIpcNet(pid, own, *sink, opts.compression, opts.id, &ph, &laps));
  // The writable layer's walk compares every entry of the container's root with the rootfs
  // (5-12 ms for a busybox rootfs whose overlay upper is out of reach, as after a restore: its
  // tmpfs is mounted in the container's mount namespace only). Unless the tree runs on after the
  // engine (--leave-running: the engine lets it go before returning), the tree cannot change a
  // file until the end: frozen, ptrace-stopped, frozen again before the engine lets go. The walk
  // writes only into the container's sink, so with both sinks ours (directories: nothing shared
  // between them) it runs alongside the tree's dump and is joined before the record is written.
  // A caller's sinks (a migration's streams) keep it in line.
  std::future<Result<bool>> layer_job;  // destroyed (joined) before the sinks and their abort
  double layer_walk_ms = 0;
  if (Has(own, "mnt")) {
    TRY_CTX(mnt::Dump(pid, *sink, opts.compression, opts.precopy_files), "container %s",
            opts.id.c_str());
    laps.LapInto(&ph.mnt_ms);
    std::string upper = overlay ? runtime::StorageUpper(c.storage_dir) : "";
    if (own_tree && own_container && !leave_running) {
      layer_job = std::async(std::launch::async, [&, upper]() -> Result<bool> {
        auto t = Clock::now();
        auto r = mnt::DumpLayer(pid, c.rootfs, *sink, opts.compression, upper, opts.precopy_files);
        layer_walk_ms = timing::MsBetween(t, Clock::now());
        return r;
      });
    } else {
      ASSIGN_OR_RETURN(bool layer, mnt::DumpLayer(pid, c.rootfs, *sink, opts.compression, upper,
                                                  opts.precopy_files));
      rec.set_has_layer(layer);
      laps.LapInto(&ph.layer_ms);
    }
  }
  // A rootfs the container writes into: besides the digest, the files the tree holds open or
  // maps, which the restore checks one by one (other changes of the rootfs break nothing).
  auto identify_writable = [&]() -> Result<void> {
    ASSIGN_OR_RETURN(*rec.mutable_rootfs(), mnt::IdentifyRootfs(c.rootfs));
    ASSIGN_OR_RETURN(std::vector<pid_t> pids, cg->Pids());
    TRY_CTX(mnt::IdentifyHeldFiles(c.rootfs, pids, rec.mutable_rootfs()), "container %s",
            opts.id.c_str());
    return Ok();
  };
  if (!overlay && leave_running) {  // the tree runs on after the engine: identify it frozen now
    TRY(identify_writable());
    laps.LapInto(&ph.rootfs_ms);
  }
  if (opts.namespaces_dumped && layer_job.valid())  // the record says whether there is a layer
    return MakeError(ErrorKind::kUsage, 0, "an early record needs the layer dumped in line");
  auto t_ns = Clock::now();
  ph.collect_ms = timing::MsBetween(t_frozen, t_ns);
  rec.mutable_times()->set_namespaces_ms(timing::MsBetween(t_frozen, t_ns));

  // The process tree, through the engine; it leaves the (cgroup-frozen) tree alive.
  if (!dump_tree) {
    return MakeError(ErrorKind::kUnsupported, 0, "no process-tree dumper linked");
  }
  TreeDumpRequest req;
  req.pid = pid;
  req.leave_running = leave_running;
  req.progress = opts.progress;
  req.sink = tree_sink;
  req.compression = opts.compression;
  auto t_seized = t_ns;
  req.thaw = [&]() -> Result<void> {
    t_seized = Clock::now();
    auto r = cg->Thaw();
    const double ms = timing::MsBetween(t_seized, Clock::now());
    ph.cgroup_hooks_ms += ms;
    LOG_DEBUG("container %s: thawed under ptrace in %.2f ms", opts.id.c_str(), ms);
    TRY(r);
    // The early record goes out only now: a migration's destination then makes the environment
    // (its cgroup moves hold the cgroup lock across RCU grace periods), and the thaw above, a
    // cgroup.freeze write, waited for that lock up to ~16 ms when it came after.
    if (opts.namespaces_dumped)
      TRY_CTX(opts.namespaces_dumped(rec), "container %s", opts.id.c_str());
    return Ok();
  };
  // --leave-running: the engine has let the tree run (detached it) right before this hook, and
  // what is left (its deferred zstd compression of the pages, container.img) does not depend on
  // the tree: the container stays thawed from here, so that work is no frozen time.
  std::optional<Clock::time_point> t_released;
  bool tree_returned = false;
  req.refreeze = [&]() -> Result<void> {
    if (leave_running) {
      t_released = Clock::now();
      if (paused) return cg->Freeze();  // paused it was, paused it stays
      return Ok();
    }
    auto t = Clock::now();
    auto r = cg->Freeze();
    const double ms = timing::MsBetween(t, Clock::now());
    // Inside the engine, or after the record (TreeStats::release): part of release_ms then.
    if (!tree_returned) ph.cgroup_hooks_ms += ms;
    LOG_DEBUG("container %s: frozen again in %.2f ms", opts.id.c_str(), ms);
    return r;
  };
  tree_asked = true;
  ASSIGN_OR_RETURN(res.tree, dump_tree(req));
  tree_returned = true;
  // The tree may still be ptrace-stopped (TreeStats::release): let go on every error path,
  // before the thaw above runs.
  ScopeExit release_on_error([&] {
    if (!res.tree.release) return;
    auto r = res.tree.release();
    if (!r.ok()) LOG_WARN("container %s: letting the tree go: %s", opts.id.c_str(),
                          r.error().to_string().c_str());
  });
  if (layer_job.valid()) {
    Result<bool> layer = layer_job.get();
    ph.layer_alongside_ms = layer_walk_ms;
    if (!layer.ok())
      return std::move(layer.error().wrap(StrFormat("container %s", opts.id.c_str())));
    rec.set_has_layer(*layer);
  }
  // A rootfs the container writes into is identified once the tree is dumped and stopped for
  // good (killed or held next):
  // the cgroup is thawed while the engine holds the tree (req.thaw), and a write that landed
  // between an earlier identity and the engine's seize made the restore refuse the rootfs
  // (issue 11: 2 of 3 tries with a container appending every millisecond). The tree is still
  // ptrace-stopped here (TreeStats::release comes after the record); a process of the cgroup
  // outside the tree (a `godwit exec`) is not, so then the cgroup is frozen again first.
  if (!overlay && !leave_running) {
    if (res.tree.release) {
      auto pids = cg->Pids();
      if (!pids.ok() || static_cast<int>(pids->size()) != res.tree.processes) {
        auto release = std::move(res.tree.release);
        res.tree.release = nullptr;
        TRY_CTX(release(), "container %s: frozen again", opts.id.c_str());
      }
    }
    auto t_id = Clock::now();
    TRY(identify_writable());
    ph.rootfs_ms += timing::MsBetween(t_id, Clock::now());
  }
  auto t_tree = Clock::now();
  ph.tree_ms = timing::MsBetween(t_ns, t_tree);
  ph.seize_ms = res.tree.seize_ms;
  ph.memory_ms = res.tree.memory_ms;
  ph.tree_steps = res.tree.steps;
  // The engine seizes right before the thaw hook runs.
  ph.tree_setup_ms = std::max(0.0, timing::MsBetween(t_ns, t_seized) - ph.seize_ms);
  ph.tree_rest_ms = std::max(0.0, ph.tree_ms - ph.tree_setup_ms - ph.seize_ms - ph.memory_ms -
                                      ph.cgroup_hooks_ms);
  rec.mutable_times()->set_tree_ms(timing::MsBetween(t_ns, t_tree));

  if (overlay_identity.valid()) {
    ASSIGN_OR_RETURN(*rec.mutable_rootfs(), overlay_identity.get());
  }
  rec.set_created_unix_ns(std::chrono::duration_cast<std::chrono::nanoseconds>(
                              std::chrono::system_clock::now().time_since_epoch())
                              .count());
  // Times known so far; the frozen and total times are completed below (reported, not stored
  // again: the inventory seals the image first).
  TRY(images::WriteImage(*sink, kContainerImage, rec));
  TRY(sink->Finish(images::NewInventory()));
  finished = true;
  auto t_written = Clock::now();
  // The images are out (a migration's destination restores from here): now the refreeze and
  // the detach.
  if (res.tree.release) {
    auto release = std::move(res.tree.release);
    res.tree.release = nullptr;
    // Failed: the tree was let go running (as an engine failure leaves it), thawed below.
    TRY_CTX(release(), "container %s: the images are complete, but the refreeze failed and it "
            "runs on", opts.id.c_str());
  }
  ph.write_ms = timing::MsBetween(t_tree, t_written);
  ph.downtime_ms = timing::MsBetween(t_freeze, t_released ? std::min(*t_released, t_written) : t_written);

  // A hold returns the container frozen by its cgroup: the refreeze came while the tree was
  // still ptrace-stopped, and the detach that followed wakes its threads, which enter the
  // freezer again on their own (none runs its code meanwhile; a v1 freezer reads FREEZING until
  // the last one is in). Writing FROZEN again waits for that (runtime::Cgroup::Freeze).
  if (end == EndMode::kHold)
    TRY_CTX(cg->Freeze(), "container %s: frozen again after the detach", opts.id.c_str());
  // The end. The hold owns the cgroup and the tree's TCP hold from here.
  thaw_on_exit = false;
  auto held = std::make_unique<HeldCheckpoint>(opts.root, opts.id, std::move(cg),
                                               res.tree.resume_tcp, res.tree.before_kill);
  switch (end) {
    case EndMode::kThaw:
      TRY(held->Resume(/*thaw=*/!paused));
      break;
    case EndMode::kDelete:
      if (auto k = held->Kill(/*release_host_lock=*/false, /*defer_state_dir=*/true); !k.ok()) {
        (void)held->Resume();
        return std::move(k.error().wrap(StrFormat("checkpoint of %s is complete, but",
                                                  opts.id.c_str())));
      }
      break;
    case EndMode::kHold:
      res.held = std::move(held);
      break;
  }
  auto t_end = Clock::now();
  rec.mutable_times()->set_frozen_ms(timing::MsBetween(t_frozen, t_released ? *t_released : t_end));
  ph.release_ms = timing::MsBetween(t_written, t_end);
  ph.frozen_ms = rec.times().frozen_ms();

  if (res.tree.compress && end == EndMode::kHold) {
    // Still frozen: compressing is the caller's, after Kill or Resume (the sink stays with it).
    if (own_tree) res.tree.compress = [own_tree, f = res.tree.compress] { return f(); };
  } else if (res.tree.compress) {
    // The tree is gone or running again: zstd now costs no downtime.
    auto saved = res.tree.compress();
    if (saved.ok()) {
      res.tree.bytes -= std::min(res.tree.bytes, *saved);
    } else {
      LOG_WARN("container %s: compressing the tree's pages failed, they stay raw: %s",
               opts.id.c_str(), saved.error().to_string().c_str());
    }
  }
  auto t_compressed = Clock::now();
  ph.compress_ms = timing::MsBetween(t_end, t_compressed);

  if (!opts.export_file.empty()) {
    ASSIGN_OR_RETURN(archive::Stats st, archive::Export(opts.image_path, opts.export_file));
    res.export_size = st.size;
  }
  auto t_done = Clock::now();
  rec.mutable_times()->set_total_ms(timing::MsBetween(t_start, t_done));
  ph.export_ms = timing::MsBetween(t_compressed, t_done);
  ph.total_ms = rec.times().total_ms();
  return res;
}

}  // namespace godwit::container
