#include "container/restore.h"

#include <arpa/inet.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <future>

#include "common/fs.h"
#include "common/log.h"
#include "common/scope_exit.h"
#include "common/timing.h"
#include "container/archive.h"
#include "container/cgroup_warm.h"
#include "container/checkpoint.h"
#include "container/ipc.h"
#include "container/mnt.h"
#include "container/net.h"
#include "container/ns.h"
#include "container/restore_env.h"
#include "runtime/cgroup.h"
#include "runtime/network.h"
#include "runtime/runtime.h"
#include "runtime/storage.h"

namespace godwit::container {
namespace {

using timing::Clock;

std::string NowRfc3339() {
  struct timespec ts;
  ::clock_gettime(CLOCK_REALTIME, &ts);
  struct tm tm;
  ::gmtime_r(&ts.tv_sec, &tm);
  char buf[64];
  ::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%S", &tm);
  return StrFormat("%s.%09ldZ", buf, ts.tv_nsec);
}

// Replaces the container's IPv4 address `from` by `to` ("A.B.C.D[/PREFIX]") on its own links and
// as the point-to-point peer of the veth's host end.
Result<void> Readdress(img::NetNs* ns, const std::string& from, const std::string& to,
                       int* prefix) {
  auto parts = fs::Split(to, '/');
  struct in_addr old_a, new_a;
  if (::inet_pton(AF_INET, from.c_str(), &old_a) != 1)
    return MakeError(ErrorKind::kBadImage, 0, "container address %s is not IPv4", from.c_str());
  if (parts.size() > 2 || ::inet_pton(AF_INET, parts[0].c_str(), &new_a) != 1)
    return MakeError(ErrorKind::kUsage, 0, "--ip %s: want A.B.C.D[/PREFIX]", to.c_str());
  int new_prefix = -1;
  if (parts.size() == 2) {
    new_prefix = atoi(parts[1].c_str());
    if (new_prefix < 1 || new_prefix > 32)
      return MakeError(ErrorKind::kUsage, 0, "--ip %s: bad prefix", to.c_str());
    *prefix = new_prefix;
  }
  std::string ob(reinterpret_cast<char*>(&old_a), 4), nb(reinterpret_cast<char*>(&new_a), 4);
  int changed = 0;
  for (auto& a : *ns->mutable_addrs()) {
    if (a.local().family() != AF_INET || a.local().addr() != ob) continue;
    a.mutable_local()->set_addr(nb);
    if (a.has_peer() && a.peer().addr() == ob) a.mutable_peer()->set_addr(nb);
    if (new_prefix > 0) {
      a.mutable_local()->set_prefixlen(new_prefix);
      a.clear_broadcast();
    }
    changed++;
  }
  for (auto& l : *ns->mutable_links())
    for (auto& a : *l.mutable_host_end()->mutable_addrs())
      if (a.has_peer() && a.peer().addr() == ob) a.mutable_peer()->set_addr(nb);
  if (changed == 0)
    return MakeError(ErrorKind::kBadImage, 0, "address %s not found in %s", from.c_str(),
                     net::kImage);
  return Ok();
}

}  // namespace

Result<RestoreResult> Restore(const RestoreOptions& opts, const TreeRestorer& restore_tree) {
  auto t0 = Clock::now();
  TRY(runtime::ValidateId(opts.id));
  if (opts.image_path.empty() && opts.import_file.empty())
    return MakeError(ErrorKind::kUsage, 0, "restore needs --image-path DIR or --import FILE");
  if (!restore_tree)
    return MakeError(ErrorKind::kUnsupported, 0, "no process-tree restorer linked");

  // Claim the id first: an existing container of that id is never touched.
  TRY(fs::MkdirAll(opts.root, 0711));
  std::string state_dir = opts.root + "/" + opts.id;
  if (::mkdir(state_dir.c_str(), 0700) < 0) {
    if (errno == EEXIST)
      return MakeError(ErrorKind::kExists, EEXIST, "container %s already exists", opts.id.c_str());
    return Errno("mkdir %s", state_dir.c_str());
  }
  // The state dir a checkpoint of the id left to remove (runtime::Delete, deferred): its
  // removal is mostly waiting for discards, done alongside (joined when Restore returns).
  auto remove_deferred = std::async(std::launch::async, [&opts] {
    auto r = runtime::RemoveDeferred(opts.root, opts.id);
    if (!r.ok()) LOG_WARN("%s", r.error().to_string().c_str());
  });
  bool ok = false;
  std::unique_ptr<runtime::Cgroup> cg;
  std::string host_veth;
  pid_t root_pid = 0;
  ScopeExit rollback([&] {
    if (ok) return;
    if (root_pid > 0) {
      ::kill(root_pid, SIGKILL);
      (void)::waitpid(root_pid, nullptr, 0);
    }
    if (!host_veth.empty()) (void)net::DeleteLink(-1, host_veth);
    if (cg) (void)cg->Destroy();
    (void)fs::RemoveAll(state_dir);
  });

  // The images: a checkpoint directory, or an export file unpacked next to the state.
  std::string dir = opts.image_path;
  std::string imported;
  ScopeExit drop_import([&] {
    if (!imported.empty()) (void)fs::RemoveAll(imported);
  });
  RestorePhases ph;
  timing::PhaseTimer laps(t0);  // the driver's phases, one after the other
  laps.LapInto(&ph.prepare_ms);
  if (!opts.import_file.empty()) {
    std::string target = dir.empty() ? state_dir + "/import" : dir;
    TRY_CTX(archive::Import(opts.import_file, target), "import %s", opts.import_file.c_str());
    if (dir.empty()) imported = target;
    dir = target;
    laps.LapInto(&ph.import_ms);
  }
  ASSIGN_OR_RETURN(images::ImageSet images, images::ImageSet::Open(dir + "/" + kContainerDir));
  img::ContainerCheckpoint rec;
  TRY(images.ReadOne(kContainerImage, &rec));
  const bool has_userns =
      std::find(rec.namespaces().begin(), rec.namespaces().end(), "user") != rec.namespaces().end();
  if (has_userns) {
    if (!rec.has_userns())
      return MakeError(ErrorKind::kBadImage, 0, "%s: a user namespace without its maps",
                       kContainerImage);
    TRY_CTX(CheckUserNamespace(rec.userns()), "%s", kContainerImage);
  }
  img::MountTable table;
  if (images.Has(mnt::kImage)) {
    ASSIGN_OR_RETURN(table, mnt::ReadMounts(images));
  }
  nlohmann::json state_json = nlohmann::json::parse(rec.state_json(), nullptr, false);
  if (state_json.is_discarded())
    return MakeError(ErrorKind::kBadImage, 0, "%s: state record is not JSON", kContainerImage);
  ASSIGN_OR_RETURN(runtime::Container orig, runtime::Container::FromJson(state_json));

  // The config and rootfs: the original bundle's, or the one given.
  runtime::Spec spec;
  std::string bundle = opts.bundle.empty() ? orig.bundle : opts.bundle;
  if (opts.bundle.empty()) {
    ASSIGN_OR_RETURN(spec, runtime::ParseSpec(rec.config_json(), bundle));
  } else {
    ASSIGN_OR_RETURN(spec, runtime::LoadSpec(bundle));
  }
  // The identity walks the whole rootfs: it runs alongside the checks, the cgroup and the root
  // task's creation below, and its verdict is taken before the environment is filled.
  auto identity = std::async(std::launch::async,
                             [path = spec.root_path] { return mnt::IdentifyRootfs(path); });
  auto check_rootfs = [&]() -> Result<void> {
    auto here = identity.get();
    if (opts.trust_rootfs) return Ok();
    if (!here.ok()) {
      return MakeError(ErrorKind::kNotFound, here.error().sys_errno(), "rootfs %s: %s",
                       spec.root_path.c_str(), here.error().message().c_str());
    }
    return mnt::CheckRootfs(rec.rootfs(), *here, spec.root_path);
  };
  // The network, readdressed and renamed when asked to.
  img::NetNs netns;
  bool has_net = images.Has(net::kImage);
  if (has_net) TRY(images.ReadOne(net::kImage, &netns));
  std::string veth_name = rec.host_veth();
  std::string address = orig.net.address;
  if (!opts.bridge.empty()) {
    if (orig.net.bridge.empty() || veth_name.empty())
      return MakeError(ErrorKind::kUsage, 0,
                       "--bridge %s: the container was not attached to a bridge (its veth's host "
                       "end is routed)",
                       opts.bridge.c_str());
    TRY(runtime::ValidateBridgeName(opts.bridge));
    for (auto& l : *netns.mutable_links())
      if (l.host_end().name() == veth_name) l.mutable_host_end()->set_master(opts.bridge);
    orig.net.bridge = opts.bridge;
  }
  // A bridged container's port: the bridge must be there before anything is made.
  if (!orig.net.bridge.empty()) TRY(runtime::CheckBridge(orig.net.bridge));
  if (!opts.ip.empty()) {
    if (!has_net || veth_name.empty() || address.empty())
      return MakeError(ErrorKind::kUsage, 0, "--ip: the container had no veth address");
    TRY(Readdress(&netns, address, opts.ip, &orig.net.prefix));
    address = fs::Split(opts.ip, '/')[0];
    orig.net.address = address;
  }
  if (!veth_name.empty() && (opts.id != rec.id() || opts.root != orig.root)) {
    veth_name = runtime::HostVethName(opts.root, opts.id);
    for (auto& l : *netns.mutable_links()) {
      if (l.host_end().name() != rec.host_veth()) continue;
      l.mutable_host_end()->set_name(veth_name);
      for (auto& a : *l.mutable_host_end()->mutable_addrs()) a.set_ifname(veth_name);
    }
  }
  // Names and addresses on the host must be free before anything is created. The id is ours
  // (the state dir above): a veth of its name is the previous container's of this id,
  // checkpointed and killed just before, whose namespace the kernel is still taking down (the
  // checkpoint leaves that to it); so is one of the image's name whose peer namespace is dead.
  // Their names and addresses count as free: the environment waits for them to go (or deletes
  // them after 500 ms) before making the new veth, alongside the restore's start-up.
  std::vector<std::string> leftover;
  if (!veth_name.empty() && runtime::LinkExists(veth_name)) leftover.push_back(veth_name);
  if (!rec.host_veth().empty() && rec.host_veth() != veth_name) {
    ASSIGN_OR_RETURN(runtime::HostEnd st, runtime::HostEndState(rec.host_veth()));
    if (st == runtime::HostEnd::kDying) leftover.push_back(rec.host_veth());
  }
  if (!address.empty()) {
    ASSIGN_OR_RETURN(bool used, runtime::AddressInUse(address, leftover));
    const std::string& old_veth = rec.host_veth();
    if (used && !old_veth.empty() && old_veth != veth_name &&
        std::find(leftover.begin(), leftover.end(), old_veth) == leftover.end() &&
        runtime::LinkExists(old_veth)) {
      // The image's own veth, under another id: the original container still running (a copy:
      // the address is taken), or killed by its checkpoint a moment ago, its namespace not yet
      // dead (an RCU grace period or two). Long enough for the latter.
      ASSIGN_OR_RETURN(runtime::HostEnd st, runtime::WaitHostEnd(old_veth, 100));
      if (st != runtime::HostEnd::kAlive) {
        if (st == runtime::HostEnd::kDying) leftover.push_back(old_veth);
        ASSIGN_OR_RETURN(used, runtime::AddressInUse(address, leftover));
      }
    }
    if (used)
      return MakeError(ErrorKind::kExists, EADDRINUSE, "address %s is already in use on the host",
                       address.c_str());
  }

  laps.LapInto(&ph.prepare_ms);
  // cgroups with the limits.
  ASSIGN_OR_RETURN(cg, runtime::OpenCgroup(opts.id, opts.cgroup_parent));
  TRY_CTX(cg->Create(), "cgroup of %s", opts.id.c_str());
  // From here (not before: the warm-up's first write holds cgroup_mutex, which mkdir needs, for
  // its grace period) the grace period of the join below is paid alongside the restore.
  CgroupJoinWarmer warm;
  runtime::Resources res = LimitsToResources(rec.limits());
  TRY_CTX(cg->Apply(res), "limits of %s", opts.id.c_str());
  laps.LapInto(&ph.cgroup_ms);

  std::string storage = rec.has_layer() ? state_dir + "/storage" : "";
  if (!storage.empty()) TRY(fs::MkdirAll(storage, 0700));
  ASSIGN_OR_RETURN(RootPlan plan, PlanRoot(table, spec, rec.has_layer(), storage, &images));
  // The layer's tmpfs mounted here, on the host, as `godwit run` does (runtime::MountStorage),
  // rather than by BuildRoot in the container's mount namespace only: a later checkpoint then
  // reaches the overlay's upper dir and walks only what changed (mnt::DumpLayer), not every
  // entry of the root (~3 ms of CPU for a busybox). With a user namespace (the tmpfs made as
  // the container's root, inside) or no size, BuildRoot mounts it as before.
  bool storage_on_host = !storage.empty() && !has_userns && plan.disk_quota > 0;
  if (storage_on_host) {
    TRY_CTX(runtime::MountStorage(storage, plan.disk_quota, 0, 0), "storage of %s",
            opts.id.c_str());
    plan.storage_mounted = true;
  }
  ScopeExit unmount_storage([&] {
    if (!ok && storage_on_host) (void)runtime::UnmountStorage(storage);
  });

  TreeRestoreRequest req;
  req.tree_dir = dir + "/" + kTreeDir;
  req.clone_flags = kRootCloneFlags;
  req.tcp_close = !opts.ip.empty();
  req.keep_netlock = opts.keep_netlock;
  req.lazy = opts.lazy;
  req.progress = opts.progress;
  // A user namespace: its maps, and the namespaces it owns, come from a holder (restore_env.h).
  std::unique_ptr<UsernsHolder> userns;
  if (has_userns) {
    // The holder joins the container's cgroup before it makes the cgroup namespace (rooted
    // there); it is stopped as soon as the root has joined its namespaces (its pid must not
    // count against the container's pids limit while the tree is forked).
    ASSIGN_OR_RETURN(userns,
                     UsernsHolder::Start(rec.userns(), [&](pid_t h) { return cg->AddProcess(h); }));
    plan.join = userns->Joins();
    plan.userns_fd = userns->user_fd();
    TRY(PlanUsernsMounts(&plan, rec.userns()));
    req.clone_flags = 0;  // pid ns from the image; the others joined in BuildRoot
    req.userns_fd = userns->user_fd();
  }
  req.inside = [&plan](const char** what) { return BuildRoot(plan, what); };
  auto t_env = Clock::now();
  double env_ms = 0;
  laps.LapInto(&ph.plan_ms);
  req.outside = [&](pid_t pid) -> Result<void> {
    root_pid = pid;
    if (userns) userns->Stop();
    laps.LapInto(&ph.root_ms);
    TRY(check_rootfs());
    laps.LapInto(&ph.rootfs_wait_ms);
    host_veth = veth_name;  // from here on the rollback deletes it
    // The cgroup join runs alongside: it is mostly waiting (a v1 cpuset attach alone takes
    // 7-15 ms here) and independent of the namespaces' contents.
    auto join = std::async(std::launch::async, [&] { return cg->AddProcess(pid); });
    for (const auto& name : leftover)
      TRY_CTX(runtime::TeardownNetworkOfDeadNetns(name), "the previous container's veth");
    auto filled = FillEnvironment(images, rec, table, has_net ? &netns : nullptr, pid);
    laps.LapInto(&ph.env_ms);
    auto joined = join.get();
    warm.Stop();
    laps.LapInto(&ph.cgroup_join_ms);  // what the join adds after the environment
    TRY(std::move(filled));
    TRY_CTX(std::move(joined), "join cgroup of %s", opts.id.c_str());
    env_ms = timing::MsBetween(t_env, Clock::now());
    return Ok();
  };
  auto restored = restore_tree(req);
  if (identity.valid()) TRY(check_rootfs());  // the engine failed before the hook ran
  ASSIGN_OR_RETURN(TreeRestoreResult tree, std::move(restored));
  laps.LapInto(&ph.tree_ms);
  ph.running_ms = timing::MsBetween(t0, laps.last());
  ph.memory_ms = tree.memory_ms;
  ph.tree_rest_ms = std::max(0.0, ph.tree_ms - ph.memory_ms);
  root_pid = tree.root_host_pid;
  if (images.Has(ipc::kImage)) {
    ASSIGN_OR_RETURN(UniqueFd ipcfd, OpenNamespace(root_pid, "ipc"));
    TRY(ipc::RemoveDestroyed(images, ipcfd.get()));
  }

  // The runtime's record: from now on it is an ordinary container.
  runtime::Container c = orig;
  c.root = opts.root;
  c.id = opts.id;
  c.bundle = bundle;
  c.rootfs = spec.root_path;
  c.pid = root_pid;
  c.pid_start_time = runtime::ProcessStartTime(root_pid);
  c.created = NowRfc3339();
  c.cgroup_paths = cg->Paths();
  c.cgroup_layout = runtime::CgroupLayoutName(cg->layout());
  c.cgroup_parent = opts.cgroup_parent;
  c.cgroup_leaf.clear();  // the restored cgroup is <cgroup_parent>/<id>, whatever the original's
  c.host_veth = veth_name;
  c.storage_dir = storage;
  TRY(fs::WriteFile(c.config_path(), rec.config_json()));
  TRY(c.Save());
  ok = true;
  if (opts.announce && !c.net.bridge.empty() && !c.net.address.empty()) {
    auto a = runtime::AnnounceAddress(root_pid, "eth0", c.net.address);
    if (!a.ok())
      LOG_WARN("container %s: announce %s: %s", c.id.c_str(), c.net.address.c_str(),
               a.error().to_string().c_str());
  }

  RestoreResult out;
  out.container = c;
  out.processes = tree.processes;
  out.lazy_bytes = tree.lazy_bytes;
  out.hot_bytes = tree.hot_bytes;
  out.pager = tree.pager;
  out.environment_ms = env_ms;
  laps.LapInto(&ph.finish_ms);
  out.total_ms = timing::MsBetween(t0, laps.last());
  ph.total_ms = out.total_ms;
  out.phases = ph;
  return out;
}

}  // namespace godwit::container
