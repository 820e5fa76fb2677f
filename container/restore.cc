#include "container/restore.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <future>
#include <optional>

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
#include "files/netlock.h"
#include "common/netns.h"
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

// Everything a restore holds between PrepareRestore and FinishRestore; dropped before the
// restore completed (ok), it undoes what it made, the last made first.
class PreparedRestore {
 public:
  explicit PreparedRestore(const RestoreOptions& o) : opts(o), t0(Clock::now()), laps(t0) {}
  ~PreparedRestore() {
    if (!imported.empty()) (void)fs::RemoveAll(imported);  // restored or not
    if (ok) return;
    if (root_pid > 0) {
      ::kill(root_pid, SIGKILL);
      (void)::waitpid(root_pid, nullptr, 0);
    }
    if (holder) holder->Stop();
    if (userns) userns->Stop();
    if (!host_veth.empty()) (void)net::DeleteLink(-1, host_veth);
    if (warm) warm->Stop();
    if (storage_on_host) (void)runtime::UnmountStorage(storage);
    if (cg) (void)cg->Destroy();
    if (!state_dir.empty()) (void)fs::RemoveAll(state_dir);
  }

  RestoreOptions opts;
  // The state dir a checkpoint of the id left to remove (runtime::Delete, deferred): its
  // removal is mostly waiting for discards, done alongside (joined when this goes).
  std::future<void> remove_deferred;
  Clock::time_point t0;
  RestorePhases ph;
  timing::PhaseTimer laps;  // the driver's phases, one after the other
  bool ok = false;
  std::string state_dir;  // claimed (removed on failure)
  std::unique_ptr<runtime::Cgroup> cg;
  // The root joins its cgroups itself (born into the cgroup2 one, runtime::Cgroup::EnterSelf
  // for the rest): nothing joins from outside, nothing needs warming.
  bool self_join = false;
  std::unique_ptr<CgroupJoinWarmer> warm;
  std::string host_veth;  // made here: deleted on failure
  pid_t root_pid = 0;
  std::string dir, imported;
  std::optional<images::ImageSet> images;
  img::ContainerCheckpoint rec;
  img::MountTable table;
  runtime::Container orig;
  runtime::Spec spec;
  std::string bundle;
  std::future<Result<img::RootfsIdentity>> identity;
  img::NetNs netns;
  bool has_net = false;
  std::string veth_name, address, storage;
  // Veths of the previous container of this id (or of the image's name, their namespace dead)
  // the kernel is still taking down: waited for (or deleted) before the new veth is made.
  std::vector<std::string> leftover;
  bool storage_on_host = false;  // the layer's tmpfs mounted here (unmounted on failure)
  RootPlan plan;
  std::unique_ptr<UsernsHolder> userns;
  // Made ahead (PrepareRestore's `ahead`): the environment, in the holder's namespaces.
  bool early = false;  // prepared from the early record and a partial set
  std::optional<AheadPlan> ahead;
  std::unique_ptr<EnvHolder> holder;
  std::optional<netns::NftContext> ahead_quiet;  // kept: closing it can wait a grace period
  double env_ms = 0;

  Result<void> CheckRootfs() {
    auto here = identity.get();
    if (opts.trust_rootfs) return Ok();
    if (!here.ok()) {
      return MakeError(ErrorKind::kNotFound, here.error().sys_errno(), "rootfs %s: %s",
                       spec.root_path.c_str(), here.error().message().c_str());
    }
    return mnt::CheckRootfs(rec.rootfs(), *here, spec.root_path);
  }
  Result<void> BuildAhead();
};

void PreparedRestoreDeleter::operator()(PreparedRestore* p) const { delete p; }

namespace {

// The fields of the record the environment was made from, against the final record's.
Result<void> SameEnvironment(const img::ContainerCheckpoint& early,
                             const img::ContainerCheckpoint& rec) {
  auto differs = [&](const char* what) {
    return MakeError(ErrorKind::kBadImage, 0, "%s: %s differs from %s's, which the environment "
                     "was made from", kContainerImage, what, kEarlyImage);
  };
  if (early.id() != rec.id()) return differs("id");
  if (early.config_json() != rec.config_json()) return differs("config");
  if (early.state_json() != rec.state_json()) return differs("state");
  if (early.host_veth() != rec.host_veth()) return differs("host veth");
  if (early.has_layer() != rec.has_layer()) return differs("writable layer");
  if (early.has_userns() != rec.has_userns()) return differs("user namespace");
  if (early.limits().SerializeAsString() != rec.limits().SerializeAsString())
    return differs("limits");
  if (std::vector<std::string>(early.namespaces().begin(), early.namespaces().end()) !=
      std::vector<std::string>(rec.namespaces().begin(), rec.namespaces().end()))
    return differs("namespaces");
  return Ok();
}

// The namespaces (of those the root's clone makes: net, ipc, uts) that the container did not own
// but shared with the host (a spec without them: the host's network, as `--net=host`): the
// restored root stays in the restorer's, where its sockets and addresses are.
int SharedNamespaceFlags(const img::ContainerCheckpoint& rec) {
  auto owns = [&](const char* ns) {
    return std::find(rec.namespaces().begin(), rec.namespaces().end(), ns) !=
           rec.namespaces().end();
  };
  return (owns("net") ? 0 : CLONE_NEWNET) | (owns("ipc") ? 0 : CLONE_NEWIPC) |
         (owns("uts") ? 0 : CLONE_NEWUTS);
}

}  // namespace

Result<PreparedRestorePtr> PrepareRestore(const RestoreOptions& opts, bool ahead) {
  PreparedRestorePtr p(new PreparedRestore(opts));
  TRY(runtime::ValidateId(opts.id));
  if (opts.image_path.empty() && opts.import_file.empty())
    return MakeError(ErrorKind::kUsage, 0, "restore needs --image-path DIR or --import FILE");
  if (ahead && opts.image_path.empty())
    return MakeError(ErrorKind::kUsage, 0, "a restore prepared ahead needs --image-path DIR");

  // Claim the id first: an existing container of that id is never touched.
  TRY(fs::MkdirAll(opts.root, 0711));
  std::string state_dir = opts.root + "/" + opts.id;
  if (::mkdir(state_dir.c_str(), 0700) < 0) {
    if (errno == EEXIST)
      return MakeError(ErrorKind::kExists, EEXIST, "container %s already exists", opts.id.c_str());
    return Errno("mkdir %s", state_dir.c_str());
  }
  p->state_dir = state_dir;
  p->remove_deferred = std::async(std::launch::async, [o = &p->opts] {
    auto r = runtime::RemoveDeferred(o->root, o->id);
    if (!r.ok()) LOG_WARN("%s", r.error().to_string().c_str());
  });
  RestorePhases& ph = p->ph;
  auto& laps = p->laps;
  // The cgroup, first. A join from outside (a holder's, and the root's when made ahead: see
  // self_join below) takes the threadgroup lock for writing, whose first writer after a quiet
  // spell waits for an RCU grace period (7-15 ms here): the warm-up pays it from here (not
  // before: its first write holds cgroup_mutex, which mkdir needs, for its grace period),
  // alongside the restore. The join comes as soon as the root is cloned, ~5 ms from here on an
  // idle machine: started after the checks below, the warm-up was often not warm yet when the
  // join came (0.4-8 ms of waiting for it).
  ASSIGN_OR_RETURN(p->cg, runtime::OpenCgroup(opts.id, opts.cgroup_parent));
  TRY_CTX(p->cg->Create(), "cgroup of %s", opts.id.c_str());
  if (ahead) p->warm = std::make_unique<CgroupJoinWarmer>();
  laps.LapInto(&ph.cgroup_ms);

  // The images: a checkpoint directory, or an export file unpacked next to the state.
  p->dir = opts.image_path;
  laps.LapInto(&ph.prepare_ms);
  if (!opts.import_file.empty()) {
    std::string target = p->dir.empty() ? state_dir + "/import" : p->dir;
    TRY_CTX(archive::Import(opts.import_file, target), "import %s", opts.import_file.c_str());
    if (p->dir.empty()) p->imported = target;
    p->dir = target;
    laps.LapInto(&ph.import_ms);
  }
  // Ahead: the container's images are there but for its final record and inventory (the
  // source writes the early record once its namespaces are dumped); the whole set is verified
  // by FinishRestore.
  const std::string cdir = p->dir + "/" + kContainerDir;
  if (ahead) {
    ASSIGN_OR_RETURN(images::ImageSet s, images::ImageSet::OpenPartial(cdir));
    p->images.emplace(std::move(s));
    TRY(p->images->ReadOne(kEarlyImage, &p->rec));
    p->early = true;
  } else {
    ASSIGN_OR_RETURN(images::ImageSet s, images::ImageSet::Open(cdir));
    p->images.emplace(std::move(s));
    TRY(p->images->ReadOne(kContainerImage, &p->rec));
  }
  const images::ImageSet& images = *p->images;
  img::ContainerCheckpoint& rec = p->rec;
  const bool has_userns =
      std::find(rec.namespaces().begin(), rec.namespaces().end(), "user") != rec.namespaces().end();
  if (has_userns) {
    if (!rec.has_userns())
      return MakeError(ErrorKind::kBadImage, 0, "%s: a user namespace without its maps",
                       kContainerImage);
    TRY_CTX(CheckUserNamespace(rec.userns()), "%s", kContainerImage);
  }
  // Without a user namespace (its holder is moved in from outside, which the warm-up is for)
  // and not made ahead, the root joins its cgroups itself: born into the cgroup2 one, a v1
  // "tasks" write of its own thread for the others, neither of which takes the threadgroup lock
  // (restore::RestoreOptions::root_cgroup_fd): no grace period to wait for.
  p->self_join = !ahead && !has_userns;
  if (!p->self_join && !p->warm) p->warm = std::make_unique<CgroupJoinWarmer>();
  if (images.Has(mnt::kImage)) {
    ASSIGN_OR_RETURN(p->table, mnt::ReadMounts(images));
  }
  nlohmann::json state_json = nlohmann::json::parse(rec.state_json(), nullptr, false);
  if (state_json.is_discarded())
    return MakeError(ErrorKind::kBadImage, 0, "%s: state record is not JSON", kContainerImage);
  ASSIGN_OR_RETURN(p->orig, runtime::Container::FromJson(state_json));
  runtime::Container& orig = p->orig;

  // The config and rootfs: the original bundle's, or the one given.
  p->bundle = opts.bundle.empty() ? orig.bundle : opts.bundle;
  if (opts.bundle.empty()) {
    ASSIGN_OR_RETURN(p->spec, runtime::ParseSpec(rec.config_json(), p->bundle));
  } else {
    ASSIGN_OR_RETURN(p->spec, runtime::LoadSpec(p->bundle));
  }
  // The identity walks the whole rootfs: it runs alongside the checks, the cgroup and the root
  // task's creation below, and its verdict is taken before the environment is filled.
  p->identity = std::async(std::launch::async,
                           [path = p->spec.root_path] { return mnt::IdentifyRootfs(path); });
  // The network, readdressed and renamed when asked to.
  p->has_net = images.Has(net::kImage);
  img::NetNs& netns = p->netns;
  if (p->has_net) TRY(images.ReadOne(net::kImage, &netns));
  p->veth_name = rec.host_veth();
  p->address = orig.net.address;
  std::string& veth_name = p->veth_name;
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
    if (!p->has_net || veth_name.empty() || p->address.empty())
      return MakeError(ErrorKind::kUsage, 0, "--ip: the container had no veth address");
    TRY(Readdress(&netns, p->address, opts.ip, &orig.net.prefix));
    p->address = fs::Split(opts.ip, '/')[0];
    orig.net.address = p->address;
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
  std::vector<std::string>& leftover = p->leftover;
  if (!veth_name.empty() && runtime::LinkExists(veth_name)) leftover.push_back(veth_name);
  if (!rec.host_veth().empty() && rec.host_veth() != veth_name) {
    ASSIGN_OR_RETURN(runtime::HostEnd st, runtime::HostEndState(rec.host_veth()));
    if (st == runtime::HostEnd::kDying) leftover.push_back(rec.host_veth());
  }
  if (!p->address.empty()) {
    ASSIGN_OR_RETURN(bool used, runtime::AddressInUse(p->address, leftover));
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
        ASSIGN_OR_RETURN(used, runtime::AddressInUse(p->address, leftover));
      }
    }
    if (used)
      return MakeError(ErrorKind::kExists, EADDRINUSE, "address %s is already in use on the host",
                       p->address.c_str());
  }

  laps.LapInto(&ph.prepare_ms);
  LOG_DEBUG("restore of %s: images read, names and addresses free", opts.id.c_str());
  // The cgroup's limits (made at the start).
  runtime::Resources res = LimitsToResources(rec.limits());
  TRY_CTX(p->cg->Apply(res), "limits of %s", opts.id.c_str());
  laps.LapInto(&ph.cgroup_ms);
  LOG_DEBUG("restore of %s: cgroup made", opts.id.c_str());

  p->storage = rec.has_layer() ? state_dir + "/storage" : "";
  if (!p->storage.empty()) TRY(fs::MkdirAll(p->storage, 0700));
  ASSIGN_OR_RETURN(p->plan, PlanRoot(p->table, p->spec, rec.has_layer(), p->storage, &images));
  // The layer's tmpfs mounted here, on the host, as `godwit run` does (runtime::MountStorage),
  // rather than by BuildRoot in the container's mount namespace only: a later checkpoint then
  // reaches the overlay's upper dir and walks only what changed (mnt::DumpLayer), not every
  // entry of the root (~3 ms of CPU for a busybox). With a user namespace (the tmpfs made as
  // the container's root, inside) or no size, BuildRoot mounts it as before.
  if (!p->storage.empty() && !has_userns && p->plan.disk_quota > 0) {
    TRY_CTX(runtime::MountStorage(p->storage, p->plan.disk_quota, 0, 0), "storage of %s",
            opts.id.c_str());
    p->storage_on_host = true;
    p->plan.storage_mounted = true;
  }
  if (ahead && has_userns) {
    // Its holder (and so the root's namespaces) is made only once the record is whole (Run).
    LOG_DEBUG("restore of %s: environment not made ahead: a user namespace", opts.id.c_str());
  } else if (ahead) {
    auto a = PlanAhead(p->plan);
    if (a.ok()) {
      p->ahead = std::move(*a);
    } else {
      LOG_DEBUG("restore of %s: environment not made ahead: %s", opts.id.c_str(),
                a.error().to_string().c_str());
    }
  }
  laps.LapInto(&ph.plan_ms);
  if (p->ahead) TRY(p->BuildAhead());
  return p;
}

// The holder, quiet before its links exist, filled from outside; the rootfs check is left to
// the finish (the final record names the rootfs).
Result<void> PreparedRestore::BuildAhead() {
  auto t_env = Clock::now();
  std::function<Result<void>(pid_t)> join_cgroup;
  if (ahead->cgroup_ns_in_holder) join_cgroup = [&](pid_t h) { return cg->AddProcess(h); };
  ASSIGN_OR_RETURN(holder,
                   EnvHolder::Start(ahead->holder, ahead->cgroup_ns_in_holder, join_cgroup,
                                    SharedNamespaceFlags(rec)));
  ahead->join = holder->Joins();
  laps.LapInto(&ph.root_ms);
  LOG_DEBUG("restore of %s: holder %d built the root", opts.id.c_str(), holder->pid());
  if (has_net) {
    ASSIGN_OR_RETURN(UniqueFd ns, OpenNamespace(holder->pid(), "net"));
    ASSIGN_OR_RETURN(netns::NftContext nft, netns::NftContext::Open(ns.get()));
    // Deaf too for a caller that unlocks after its commit (a migration's destination): the
    // whole namespace stays locked so until then, and the tree takes no lock of its own (two
    // libnftables calls and a context in the blackout, ~2-3 ms here).
    TRY_CTX(nft.Run(StrFormat("add table inet %s\n", files::kAheadQuietName) +
                    files::QuietRules(files::kAheadQuietName) +
                    (opts.keep_netlock ? files::DeafRules(files::kAheadQuietName) : "")),
            "make the environment quiet");
    ahead_quiet.emplace(std::move(nft));
  }
  for (const auto& name : leftover)
    TRY_CTX(runtime::TeardownNetworkOfDeadNetns(name), "the previous container's veth");
  host_veth = veth_name;  // from here on the rollback deletes it
  TRY(FillEnvironment(*images, rec, table, has_net ? &netns : nullptr, holder->pid(),
                      FillPart::kAhead));
  laps.LapInto(&ph.env_ms);
  env_ms = timing::MsBetween(t_env, Clock::now());
  LOG_DEBUG("restore of %s: environment made ahead in %.1f ms", opts.id.c_str(), env_ms);
  return Ok();
}

Result<RestoreResult> FinishRestore(PreparedRestorePtr p,
                                    const TreeRestorer& restore_tree) {
  if (!restore_tree)
    return MakeError(ErrorKind::kUnsupported, 0, "no process-tree restorer linked");
  const RestoreOptions& opts = p->opts;
  RestorePhases& ph = p->ph;
  auto& laps = p->laps;
  auto& cg = p->cg;
  if (p->early) {
    // The final record and the whole set, verified; the environment was made from the early
    // record, which must say the same.
    // From here the clock is the blackout's: what was made ahead is reported apart.
    RestorePhases fresh;
    fresh.ahead_ms = timing::MsBetween(p->t0, laps.last());
    ph = fresh;
    p->t0 = Clock::now();
    laps.Skip();
    ASSIGN_OR_RETURN(images::ImageSet s, images::ImageSet::Open(p->dir + "/" + kContainerDir));
    img::ContainerCheckpoint rec;
    TRY(s.ReadOne(kContainerImage, &rec));
    TRY(SameEnvironment(p->rec, rec));
    p->rec = std::move(rec);
    p->images.emplace(std::move(s));
    laps.LapInto(&ph.prepare_ms);
  }
  const images::ImageSet& images = *p->images;
  const img::ContainerCheckpoint& rec = p->rec;

  TreeRestoreRequest req;
  req.tree_dir = p->dir + "/" + kTreeDir;
  req.clone_flags = kRootCloneFlags & ~SharedNamespaceFlags(rec);
  req.tcp_close = !opts.ip.empty();
  req.keep_netlock = opts.keep_netlock;
  req.lazy = opts.lazy;
  req.lazy_pace = opts.lazy_pace;
  req.lazy_discard = opts.lazy_discard;
  req.progress = opts.progress;
  // A user namespace: its maps, and the namespaces it owns, come from a holder (restore_env.h).
  if (rec.has_userns() && !p->ahead) {
    // The holder joins the container's cgroup before it makes the cgroup namespace (rooted
    // there); it is stopped as soon as the root has joined its namespaces (its pid must not
    // count against the container's pids limit while the tree is forked).
    ASSIGN_OR_RETURN(p->userns, UsernsHolder::Start(rec.userns(), [&](pid_t h) {
                       return cg->AddProcess(h);
                     }));
    p->plan.join = p->userns->Joins();
    p->plan.userns_fd = p->userns->user_fd();
    TRY(PlanUsernsMounts(&p->plan, rec.userns()));
    req.clone_flags = 0;  // pid ns from the image; the others joined in BuildRoot
    req.userns_fd = p->userns->user_fd();
  }
  if (p->ahead) {
    // Pid 1 of a new pid namespace (the image says so), it joins the holder's others and
    // mounts proc (JoinAheadRoot); it makes its cgroup namespace once in the cgroup, unless the
    // holder made it for a cgroup mount.
    req.clone_flags = p->ahead->cgroup_ns_in_holder ? 0 : CLONE_NEWCGROUP;
    req.fresh_netns = p->has_net;
    req.netns_locked = p->has_net && p->ahead_quiet && opts.keep_netlock;
    req.inside = [a = &*p->ahead](const char** what) { return JoinAheadRoot(*a, what); };
  } else {
    req.inside = [plan = &p->plan](const char** what) { return BuildRoot(*plan, what); };
  }
  UniqueFd cgroup_fd;
  if (p->self_join) {
    if (std::string into = cg->CloneIntoPath(); !into.empty()) {
      cgroup_fd.reset(::open(into.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
      if (!cgroup_fd.valid()) return Errno("open %s", into.c_str());
    }
    req.cgroup_fd = cgroup_fd.get();
    // In the root, right after its clone (a copy of this process; before BuildRoot, while the
    // host's cgroupfs is in its mount namespace). Its children are forked after root_outside.
    req.enter_cgroup = [c = cg.get()](bool born_into, const char** what) {
      auto r = c->EnterSelf(born_into);
      if (r.ok()) return 0;
      *what = "join the container's cgroups";
      return r.error().sys_errno() ? r.error().sys_errno() : EINVAL;
    };
  }
  auto t_env = Clock::now();
  laps.LapInto(&ph.plan_ms);
  PreparedRestore* pr = p.get();
  // Ahead, the cgroup join is what is left to wait for: it starts as soon as the root exists,
  // alongside its joining the namespaces and mounting proc.
  std::future<Result<void>> early_join;
  auto start_join = [&](pid_t pid) {
    early_join = std::async(std::launch::async, [&cg, pid] { return cg->AddProcess(pid); });
  };
  // Not made ahead and without a user namespace, the root's namespaces are made by its clone:
  // their contents (uts, ipc, the network, mostly the veth's creation) are filled from here
  // while the root builds its mounts (BuildRoot), on the other core; the contents of the mounts
  // are left to the outside hook. The engine locked a fresh net namespace's connections first.
  std::optional<Result<void>> ns_filled;
  std::future<Result<std::string>> quiet_flushed;  // made ahead: the quiet table emptied
  auto fill_namespaces = [&, pr](pid_t pid) {
    laps.LapInto(&ph.root_ms);
    pr->host_veth = pr->veth_name;  // from here on the rollback deletes it
    if (!pr->self_join) start_join(pid);  // mostly waiting (a grace period: 7-15 ms here)
    // The previous container's veth (mostly waiting for the kernel to remove it: 1-30 ms after
    // its checkpoint's kill) is waited for on a thread while uts, ipc and the namespace's own
    // sysctls are filled, and joined before the links are made.
    std::future<Result<void>> gone;
    if (!pr->leftover.empty())
      gone = std::async(std::launch::async, [pr]() -> Result<void> {
        for (const auto& name : pr->leftover)
          TRY_CTX(runtime::TeardownNetworkOfDeadNetns(name), "the previous container's veth");
        return Ok();
      });
    auto wait_gone = [&]() -> Result<void> { return gone.valid() ? gone.get() : Ok(); };
    ns_filled = FillEnvironment(images, rec, pr->table, pr->has_net ? &pr->netns : nullptr, pid,
                                FillPart::kNamespaces, wait_gone);
    if (gone.valid()) {  // no network filled, or failed before its links
      Result<void> r = gone.get();
      if (ns_filled->ok() && !r.ok()) ns_filled = std::move(r);
    }
    laps.LapInto(&ph.env_ms);
    LOG_DEBUG("restore of %s: namespaces filled", opts.id.c_str());
  };
  if (p->ahead) {
    req.forked = start_join;
  } else if (!p->userns) {
    req.forked = fill_namespaces;
  }
  req.outside = [&, pr](pid_t pid) -> Result<void> {
    pr->root_pid = pid;
    if (pr->userns) pr->userns->Stop();
    laps.LapInto(&ph.root_ms);
    TRY(pr->CheckRootfs());
    laps.LapInto(&ph.rootfs_wait_ms);
    if (ns_filled) {
      // Started at the clone (fill_namespaces), with the cgroup join.
    } else if (pr->ahead) {
      // The holder's work is done (the root is in its namespaces); the tree's lock, quiet too,
      // has taken over from ours (restore::RestoreOptions::root_fresh_netns), or ours, deaf
      // too, is the whole lock until the caller's commit (req.netns_locked). Its cgroup join
      // started with the root (req.forked). Reaped with the leftovers, unless it is in the
      // container's cgroup (its pid would count against the limit while the tree is forked).
      if (pr->ahead->cgroup_ns_in_holder)
        pr->holder->Stop();
      else
        pr->holder->Kill();
      // Emptied, not deleted: a deletion unregisters hooks and waits for a grace period (1.5
      // ms here); the caller deletes the table after the commit (files::kAheadQuietName). On a
      // thread, alongside the rest of this hook (joined before it returns: the engine clones
      // only while it is single-threaded).
      if (pr->ahead_quiet && !req.netns_locked)
        quiet_flushed = std::async(std::launch::async, [q = &*pr->ahead_quiet] {
          return q->Run(StrFormat("flush table inet %s\nflush table arp %s\n",
                                  files::kAheadQuietName, files::kAheadQuietName));
        });
      LOG_DEBUG("restore of %s: holder gone", opts.id.c_str());
    } else {
      pr->host_veth = pr->veth_name;  // from here on the rollback deletes it
      // The cgroup join runs alongside: it is mostly waiting (a v1 cpuset attach alone takes
      // 7-15 ms here) and independent of the namespaces' contents.
      start_join(pid);
      for (const auto& name : pr->leftover)
        TRY_CTX(runtime::TeardownNetworkOfDeadNetns(name), "the previous container's veth");
    }
    // Made ahead, only the contents of the mounts under proc are left (the root mounted them).
    Result<void> filled =
        pr->ahead    ? FillEnvironment(images, rec, pr->table, nullptr, pid, FillPart::kUnderProc)
        : !ns_filled ? FillEnvironment(images, rec, pr->table, pr->has_net ? &pr->netns : nullptr,
                                       pid)
        : ns_filled->ok() ? FillEnvironment(images, rec, pr->table, nullptr, pid, FillPart::kMounts)
                          : std::move(*ns_filled);
    laps.LapInto(&ph.env_ms);
    Result<void> joined = early_join.valid() ? early_join.get()
                          : pr->self_join    ? Ok()  // the root joined them (enter_cgroup)
                                             : cg->AddProcess(pid);
    if (pr->warm) pr->warm->Stop();
    if (quiet_flushed.valid()) {
      auto flushed = quiet_flushed.get();
      if (filled.ok() && !flushed.ok())
        filled = std::move(flushed.error().wrap("the environment's own quiet rules"));
    }
    laps.LapInto(&ph.cgroup_join_ms);  // what the join adds after the environment
    TRY(std::move(filled));
    TRY_CTX(std::move(joined), "join cgroup of %s", opts.id.c_str());
    if (pr->ahead) return Ok();  // env_ms: the environment's time ahead (BuildAhead)
    pr->env_ms = timing::MsBetween(t_env, Clock::now());
    return Ok();
  };
  auto restored = restore_tree(req);
  if (p->identity.valid()) TRY(p->CheckRootfs());  // the engine failed before the hook ran
  ASSIGN_OR_RETURN(TreeRestoreResult tree, std::move(restored));
  laps.LapInto(&ph.tree_ms);
  ph.running_ms = timing::MsBetween(p->t0, laps.last());
  ph.memory_ms = tree.memory_ms;
  ph.tree_rest_ms = std::max(0.0, ph.tree_ms - ph.memory_ms);
  p->root_pid = tree.root_host_pid;
  pid_t root_pid = p->root_pid;
  if (images.Has(ipc::kImage)) {
    ASSIGN_OR_RETURN(UniqueFd ipcfd, OpenNamespace(root_pid, "ipc"));
    TRY(ipc::RemoveDestroyed(images, ipcfd.get()));
  }

  // The runtime's record: from now on it is an ordinary container.
  runtime::Container c = p->orig;
  c.root = opts.root;
  c.id = opts.id;
  c.bundle = p->bundle;
  c.rootfs = p->spec.root_path;
  c.pid = root_pid;
  c.pid_start_time = runtime::ProcessStartTime(root_pid);
  c.pager_pid = 0;  // the original's pager, if it had one, is not this one's (set on detach)
  c.pager_start_time = 0;
  c.created = NowRfc3339();
  c.cgroup_paths = cg->Paths();
  c.cgroup_layout = runtime::CgroupLayoutName(cg->layout());
  c.cgroup_parent = opts.cgroup_parent;
  c.cgroup_leaf.clear();  // the restored cgroup is <cgroup_parent>/<id>, whatever the original's
  c.host_veth = p->veth_name;
  c.storage_dir = p->storage;
  TRY(fs::WriteFile(c.config_path(), rec.config_json()));
  TRY(c.Save());
  p->ok = true;
  if (opts.announce && !c.net.bridge.empty() && !c.net.address.empty()) {
    auto a = runtime::AnnounceAddresses(root_pid, "eth0");
    if (!a.ok())
      LOG_WARN("container %s: announce: %s", c.id.c_str(), a.error().to_string().c_str());
  }

  RestoreResult out;
  out.container = c;
  out.processes = tree.processes;
  out.lazy_bytes = tree.lazy_bytes;
  out.hot_bytes = tree.hot_bytes;
  out.lazy_prepared_bytes = tree.lazy_prepared_bytes;
  out.pager = tree.pager;
  out.environment_ms = p->env_ms;
  out.environment_ahead = p->ahead.has_value();
  if (req.netns_locked) out.netlock_table = files::kAheadQuietName;
  laps.LapInto(&ph.finish_ms);
  out.total_ms = timing::MsBetween(p->t0, laps.last());
  ph.total_ms = out.total_ms;
  out.phases = ph;
  if (!p->imported.empty()) {  // the unpacked export: not the caller's to keep
    (void)fs::RemoveAll(p->imported);
    p->imported.clear();
  }
  out.leftovers = std::shared_ptr<void>(p.release(), [](void* x) {
    PreparedRestoreDeleter()(static_cast<PreparedRestore*>(x));
  });
  return out;
}

Result<RestoreResult> Restore(const RestoreOptions& opts, const TreeRestorer& restore_tree) {
  if (!restore_tree)
    return MakeError(ErrorKind::kUnsupported, 0, "no process-tree restorer linked");
  ASSIGN_OR_RETURN(PreparedRestorePtr p, PrepareRestore(opts, /*ahead=*/false));
  return FinishRestore(std::move(p), restore_tree);
}

}  // namespace godwit::container
