// `godwit restore ID --image-path DIR | --import FILE`: a checkpointed container back as an
// ordinary runtime container (state, exec, ps, kill, delete and a second checkpoint work on it).
//
// Steps (Restore, in this order; any failure undoes everything done so far and leaves an
// existing container of that id untouched):
//   claim the id (mkdir of the state dir; kExists if taken) -> import the export file if given
//   -> open and verify DIR/container -> rootfs identity (kBadImage if the rootfs differs) ->
//   host veth name and address free (kExists) -> cgroup with the limits -> plan the root ->
//   the engine clones the root task (pid 1 of a new pid ns, fresh mnt/uts/ipc/net/cgroup ns):
//   inside it BuildRoot; outside FillEnvironment + cgroup membership; then the engine restores
//   the tree -> shm segments destroyed at dump time removed -> the runtime's state record.
#pragma once

#include <sys/types.h>

#include <functional>
#include <memory>
#include <string>

#include "common/result.h"
#include "runtime/container.h"

namespace godwit::restore {
class LazyPager;  // restore/lazy.h
}

namespace godwit::container {

// What the engine is asked to do: restore the tree of tree_dir with its root task cloned with
// clone_flags (pid 1 of its new pid ns: set_tid {1, ...}), calling `inside` in the root task
// right after the clone (raw syscalls only; non-zero = errno, *what names the step: fail the
// restore) and then `outside` in the caller with the root task's host pid, before any process
// state is restored. The tree must see the mount namespace `inside` built (its images are read
// through fds or paths opened before).
struct TreeRestoreRequest {
  std::string tree_dir;
  int clone_flags = 0;
  int userns_fd = -1;  // >= 0: every process joins this user namespace (RestoreOptions::userns_fd)
  std::function<int(const char** what)> inside;
  std::function<Result<void>(pid_t root_host_pid)> outside;
  // With the root's host pid right after its clone (restore::RestoreOptions::root_forked).
  std::function<void(pid_t root_host_pid)> forked;
  // The root joins its cgroups itself: born in cgroup_fd's cgroup2 directory when >= 0, then
  // enter_cgroup in the root before `inside` (restore::RestoreOptions::root_cgroup_fd,
  // root_enter_cgroup).
  int cgroup_fd = -1;
  std::function<int(bool born_into, const char** what)> enter_cgroup;
  // The root's net namespace is a fresh one `inside` joins (restore::RestoreOptions::
  // root_fresh_netns): its connections are locked as for CLONE_NEWNET.
  bool fresh_netns = false;
  // With fresh_netns: locked whole by the caller already (restore::RestoreOptions::
  // root_netns_locked).
  bool netns_locked = false;
  // Established TCP connections come back closed (their address is gone: --ip).
  bool tcp_close = false;
  bool keep_netlock = false;  // RestoreOptions::keep_netlock
  bool lazy = false;          // restore::RestoreOptions::lazy
  bool lazy_pace = true;      // restore::RestoreOptions::lazy_pace
  bool lazy_discard = false;  // restore::RestoreOptions::lazy_discard
  // (phase, done, total) from the engine (restore::RestoreOptions::progress); may be empty.
  std::function<void(const char*, uint64_t, uint64_t)> progress;
};

struct TreeRestoreResult {
  pid_t root_host_pid = 0;
  int processes = 0;
  double memory_ms = 0;  // the engine's time filling memory (0: not reported)
  // Lazy: pages still owed when the tree started to run, and who installs them.
  uint64_t lazy_bytes = 0;
  uint64_t hot_bytes = 0;  // restore::RestoreStats::hot_bytes
  uint64_t lazy_prepared_bytes = 0;  // restore::RestoreStats::lazy_prepared_bytes
  std::shared_ptr<restore::LazyPager> pager;
};

// Where a restore's time goes (ms, steady clock), in order. running_ms is the restore's share of
// live migration's downtime: from the start until the tree is detached and runs again.
struct RestorePhases {
  double import_ms = 0;    // --import: unpacking the export file
  double prepare_ms = 0;   // images read, rootfs identity checked, host names and address free
  double cgroup_ms = 0;    // cgroups created with the limits
  double plan_ms = 0;      // the root's mount plan
  double root_ms = 0;      // engine setup and the root task's clone with its root built inside
  double rootfs_wait_ms = 0;  // the rootfs identity check (it runs alongside): its wait after root
  double env_ms = 0;       // netns links/addresses/routes, mount contents, ipc (from outside)
  double cgroup_join_ms = 0;  // the cgroup join (alongside env): its wait after env
  double tree_ms = 0;      // processes, memory, fds, threads, TCP finalize, detach (engine)
  double memory_ms = 0;    // of tree_ms: filling memory
  double tree_rest_ms = 0; // of tree_ms: the rest (forks, fds, state, TCP finalize/unlock, detach)
  double running_ms = 0;   // start until the container runs again
  double finish_ms = 0;    // destroyed shm removed, the runtime's state record written
  double pager_detach_ms = 0;  // the caller handing the lazy pager to its own process (--detach)
  // Prepared ahead (PrepareRestore's `ahead`): the record, checks, cgroup and environment made
  // before the tree's images were there; the other phases count from FinishRestore.
  double ahead_ms = 0;
  double total_ms = 0;
};

using TreeRestorer = std::function<Result<TreeRestoreResult>(const TreeRestoreRequest&)>;

struct RestoreOptions {
  std::string root = "/run/godwit";
  std::string id;
  // The tree's restore progress (bytes), for a terminal meter (cli); may be empty.
  std::function<void(const char*, uint64_t, uint64_t)> progress;
  std::string image_path;   // a checkpoint directory, or where --import unpacks (optional)
  std::string import_file;  // an export file
  std::string bundle;       // another bundle (config.json + rootfs) than the original's
  // Another IPv4 address for the container ("198.18.0.20" or with "/PREFIX"), e.g. to restore
  // a copy next to the running original. What changes: the container's address on its veth
  // (and the host end's point-to-point peer), the host end's name (derived from --root and the
  // id, as the runtime names it); established TCP connections are restored closed (reads see
  // EOF, writes fail: their address is gone), listeners on the wildcard address keep listening.
  std::string ip;
  // The cgroup parent on this host (runtime/cgroup.h): the restored container's cgroup is
  // <cgroup_parent>/<id>, recorded in its state. Another parent than the checkpointed
  // container's lets one id live under two roots at once (the two ends of a migration).
  std::string cgroup_parent = "godwit";
  // A bridged container (NetworkSpec::bridge) comes back attached to this bridge of the
  // restoring host's netns instead of the one it was checkpointed on (another host's name).
  // kUsage for a routed container. Either way eth0 keeps its MAC address.
  std::string bridge;
  // Bridged: announce its addresses (gratuitous ARP, unsolicited NA: runtime::Announcement) once
  // the container runs, so the segment's bridges and peers find it at this port at once. A
  // failure is logged, not fatal.
  bool announce = true;
  // The TCP connections come back live but still locked (their packets dropped, nothing sent):
  // the caller unlocks them later (files::NetUnlockIn with the table files-netlock.img names).
  // A migration's destination keeps them so until the source has committed.
  bool keep_netlock = false;
  // Anonymous memory is paged in after the container runs (restore --lazy, restore/lazy.h):
  // RestoreResult::pager installs it; the caller waits for it or detaches it.
  bool lazy = false;
  bool lazy_pace = true;  // restore::RestoreOptions::lazy_pace (A/B runs: GODWIT_NO_PACE)
  // With lazy: the image directory's page files are freed as their pages go in
  // (restore::RestoreOptions::lazy_discard): it cannot be restored again (`--discard-pages`;
  // a migration's destination, whose staging is deleted after).
  bool lazy_discard = false;
  // The caller vouches for the rootfs (an engine such as Podman that restores the rootfs changes
  // itself and whose runtime made mount points in it): no identity check against the image.
  bool trust_rootfs = false;
};

struct RestoreResult {
  runtime::Container container;
  int processes = 0;
  double environment_ms = 0;  // cgroup, namespaces, mounts, contents
  bool environment_ahead = false;  // made by PrepareRestore before the tree's images came
  // With keep_netlock: the nftables table (inet, and arp where quiet) in the container's net
  // namespace that holds it locked and quiet, for the caller to open and remove: the environment
  // made ahead's (files::kAheadQuietName), or empty: the tree's (the table files-netlock.img
  // names, files::kQuietLockName without one).
  std::string netlock_table;
  double total_ms = 0;
  RestorePhases phases;
  uint64_t lazy_bytes = 0;
  uint64_t hot_bytes = 0;  // restore::RestoreStats::hot_bytes
  uint64_t lazy_prepared_bytes = 0;  // restore::RestoreStats::lazy_prepared_bytes
  std::shared_ptr<restore::LazyPager> pager;  // with lazy, while pages are owed
  // What the restore held until it ran (a PreparedRestore: the holder's namespace fds, the
  // environment's nftables context, helper threads): closing some of it waits (an RCU grace
  // period for a netlink socket whose table was just changed), so the caller drops it once it
  // has reported the container running.
  std::shared_ptr<void> leftovers;
};

Result<RestoreResult> Restore(const RestoreOptions& opts, const TreeRestorer& restore_tree);

// A restore in two steps, for a migration's destination: PrepareRestore does everything that
// needs only the container's own images (the record, checks, the cgroup with its limits) and,
// `ahead`, its whole environment (restore_env.h EnvHolder: namespaces, root and mounts, network,
// tmpfs contents, layer), from the early record (kEarlyImage) and the container images already
// there; FinishRestore, once the tree's images and the final record are in, verifies the set,
// checks that the final record says what the early one said, and restores the tree into that
// environment. Where the environment cannot be made ahead (a user namespace, a host mount under
// /proc) FinishRestore makes it as Restore does. Dropping a prepared restore undoes it.
class PreparedRestore;
struct PreparedRestoreDeleter {
  void operator()(PreparedRestore* p) const;  // undoes what it made, unless it finished
};
using PreparedRestorePtr = std::unique_ptr<PreparedRestore, PreparedRestoreDeleter>;
// The record as the source knew it once the namespaces were dumped (a migration writes it
// before the tree's dump; container.img, written last, must repeat it).
inline constexpr char kEarlyImage[] = "container-early.img";
Result<PreparedRestorePtr> PrepareRestore(const RestoreOptions& opts, bool ahead);
Result<RestoreResult> FinishRestore(PreparedRestorePtr p,
                                    const TreeRestorer& restore_tree);
// With the engine (container/engine.cc).
Result<RestoreResult> FinishRestore(PreparedRestorePtr p);

}  // namespace godwit::container
