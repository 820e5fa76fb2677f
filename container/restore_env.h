// The environment of a restored container: everything but its processes.
//
// The restored init is pid 1 of a new pid namespace, so the mounts that depend on it (proc) and
// the pivot_root must be done by that task itself, right after it was cloned with
// kRootCloneFlags and before it restores its own state. The rest is done from outside while it
// waits, through its /proc/PID/ns/* and /proc/PID/root. So a restore is:
//
//   PlanRoot (allocates; before clone) -> clone the root task with kRootCloneFlags
//   -> inside it: BuildRoot (raw syscalls only): root (overlay with a quota tmpfs for the
//      writable layer, or a bind of the rootfs), every mount of the image in order (proc, sysfs,
//      tmpfs, devpts, mqueue, binds), pivot_root, propagation
//   -> outside: FillEnvironment: uts, ipc (same ids), net (veth host end included), tmpfs
//      contents, writable-layer diff; JoinCgroup
//   -> the engine restores the tree in it.
#pragma once

#include <sched.h>
#include <sys/types.h>

#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "common/result.h"
#include "common/unique_fd.h"
#include "images/image.h"
#include "proto/container.pb.h"
#include "proto/mnt.pb.h"
#include "proto/netns.pb.h"
#include "runtime/spec.h"

namespace godwit::container {

inline constexpr int kRootCloneFlags =
    CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWNET | CLONE_NEWCGROUP;

struct MountStep {
  std::string target;  // absolute in the container ("/dev/shm")
  std::string fstype;
  std::string source;  // device name, or for binds the source path
  bool bind = false;
  bool bind_from_root = false;  // bind source is inside the new root (else a host path)
  unsigned long flags = 0;      // MS_RDONLY, MS_NOSUID, ... (applied by remount for binds)
  unsigned long propagation = 0;
  std::string data;   // filesystem options ("size=65536k,mode=755")
  bool file = false;  // bind of a file onto a file
  // For a bind whose source is a device node of a tmpfs filled only later: made first.
  mode_t prep_mode = 0;
  dev_t prep_rdev = 0;
  // Made in the user namespace (PlanUsernsMounts): fsopen/fsconfig/fsmount by a helper that
  // joined it, so that the superblock belongs to it; moved onto target by the root task.
  bool userns_mount = false;
  std::vector<std::pair<std::string, std::string>> params;  // fsconfig key, value ("": flag)
  unsigned int attr = 0;                                    // MOUNT_ATTR_*
};

// What BuildRoot does, prepared before the clone (no allocation after it).
struct RootPlan {
  // Namespaces the root task joins first (fd inherited from the caller, CLONE_NEW* type): those
  // of a UsernsHolder, when the container has a user namespace.
  std::vector<std::pair<int, int>> join;
  int userns_fd = -1;  // the user namespace the userns_mount steps are made in
  // Host ids of the container's root: the root task's fsuid/fsgid while it makes mount points
  // (a superblock owned by the user namespace takes no inode of an unmapped id).
  uint32_t userns_fsuid = 0, userns_fsgid = 0;
  std::string rootfs;  // host path of the rootfs
  bool readonly = false;
  int64_t disk_quota = 0;   // > 0: overlay with upper/work in a tmpfs of this size
  std::string storage_dir;  // host directory for that tmpfs (exists, stays empty on the host)
  // The caller mounted that tmpfs (with upper, work, merged) on the host already (Restore: a
  // later checkpoint then reaches the upper dir); BuildRoot mounts only the overlay.
  bool storage_mounted = false;
  std::vector<MountStep> mounts;
  // Prepared strings, so the child builds none.
  std::string overlay_opts, upper, work, merged, quota_opts;
};

// Plans the root from the image's mount table, the container's spec (for host bind sources) and
// the tmpfs images (for bind sources inside a tmpfs). kUnsupported names a mount that cannot be
// rebuilt.
Result<RootPlan> PlanRoot(const img::MountTable& table, const runtime::Spec& spec, bool has_layer,
                          const std::string& storage_dir, const images::ImageSet* images);

// With a user namespace: the tmpfs and devpts mounts of the plan are made inside it (their
// superblocks belong to it, as the container's own did), ids in their options translated from
// host ids (mountinfo as host root read it) through the maps. kBadImage: an id with no mapping.
Result<void> PlanUsernsMounts(RootPlan* plan, const img::UserNamespace& u);

// Runs in the cloned root task (new mount ns). Returns 0, or an errno with *what naming the step.
int BuildRoot(const RootPlan& plan, const char** what);

// From outside, once BuildRoot is done in root_pid: uts, ipc, net, tmpfs contents, layer.
// net: the network to build (the image's, possibly readdressed); null: none.
// part: all of it, or for an environment made ahead (AheadPlan) what the holder's mounts take
// (everything but the contents of mounts under proc), then those once the root mounted proc; or
// in two halves: the namespaces' contents (uts, ipc, net: they need no mount, so they are filled
// while the root builds its mounts), then the mounts' (layer, tmpfs contents).
// before_links: net::Apply's (the network's links are made after it returns).
enum class FillPart { kAll, kAhead, kUnderProc, kNamespaces, kMounts };
Result<void> FillEnvironment(const images::ImageSet& images, const img::ContainerCheckpoint& rec,
                             const img::MountTable& table, const img::NetNs* net, pid_t root_pid,
                             FillPart part = FillPart::kAll,
                             const std::function<Result<void>()>& before_links = nullptr);

// A container with a user namespace is restored into namespaces made by a holder process:
// it unshares a user namespace, we write the image's maps (setgroups, uid_map, gid_map), then it
// unshares the mount, UTS, IPC and network namespaces, which that user namespace thus owns. The
// root task (forked outside the user namespace, so that every pid of the tree can be chosen at
// the host level too) joins those namespaces in BuildRoot, and every restored process joins the
// user namespace once its children are forked (restore::RestoreOptions::userns_fd). The holder
// is killed and reaped when this object goes.
// A process holding namespaces made for a restore (UsernsHolder, EnvHolder): it waits on a pipe
// until Stop (or this object's end) kills and reaps it; the namespaces live on in whoever joined
// them, and in the fds kept here.
class NamespaceHolder {
 public:
  virtual ~NamespaceHolder() { Stop(); }
  NamespaceHolder(const NamespaceHolder&) = delete;
  NamespaceHolder& operator=(const NamespaceHolder&) = delete;
  void Stop();  // kills (unless Kill did) and reaps it
  // Kills it, reaped by Stop (or this object's end): its exit tears down its copy of our
  // address space, which nothing needs to wait for while it is not in the container's cgroup.
  void Kill();
  pid_t pid() const { return pid_; }
  // (fd, CLONE_NEW*) of the mount, UTS, IPC, network and cgroup namespaces, for RootPlan::join.
  std::vector<std::pair<int, int>> Joins() const;

 protected:
  NamespaceHolder() = default;
  Result<void> OpenNamespaces();  // of pid_
  pid_t pid_ = -1;
  bool killed_ = false;
  UniqueFd hold_;  // its read end's peer: EOF releases it
  UniqueFd mnt_, uts_, ipc_, net_, cgroup_;
};

class UsernsHolder : public NamespaceHolder {
 public:
  // before_namespaces(pid) runs once the maps are written, before the holder unshares the
  // other namespaces: the restore moves it into the container's cgroup there, so that the cgroup
  // namespace it makes too is rooted at the container's cgroup.
  static Result<std::unique_ptr<UsernsHolder>> Start(
      const img::UserNamespace& u, const std::function<Result<void>(pid_t)>& before_namespaces);

  int user_fd() const { return user_.get(); }

 private:
  UsernsHolder() = default;
  UniqueFd user_;
};

// The environment made ahead of the tree (a migration's destination makes it while the source
// still dumps the tree): a holder process, in the container's cgroup, unshares the mount, UTS,
// IPC, net and cgroup namespaces and builds the root in its mount namespace (BuildRoot with every
// step but those of the pid namespace); FillEnvironment then fills it through the holder's pid.
// The root task, cloned later as pid 1 of a new pid namespace (as the image says), joins the
// holder's namespaces and mounts what only a process of that pid namespace can: proc (its pidns=
// option takes no namespace below the caller's, and an empty pid namespace cannot be entered) and
// everything mounted under it (JoinAheadRoot).
struct AheadPlan {
  RootPlan holder;                    // BuildRoot in the holder: every step but root_steps
  std::vector<MountStep> root_steps;  // proc and what is under it: container paths, in order
  std::vector<std::pair<int, int>> join;  // (fd, CLONE_NEW*): EnvHolder::Joins
  // A cgroup mount in the container: its cgroup namespace must exist when the holder mounts it,
  // so the holder joins the container's cgroup and makes it. Else (the usual case) the root
  // makes it once it has joined the cgroup (CLONE_NEWCGROUP after root_outside), and the holder
  // stays out of the cgroup: its join would pay the first cgroup.procs write's grace period
  // (7-15 ms here) during the source's dump.
  bool cgroup_ns_in_holder = false;
};

// Splits a plan for a holder and the root. kUnsupported names what cannot be built ahead (a user
// namespace; a mount under proc bound from the host): the caller makes the environment the
// usual way then.
Result<AheadPlan> PlanAhead(const RootPlan& plan);

// Runs in the root task (raw syscalls only): joins a.join, then mounts a.root_steps. 0 or an
// errno, *what naming the step.
int JoinAheadRoot(const AheadPlan& a, const char** what);

class EnvHolder : public NamespaceHolder {
 public:
  // before_namespaces(pid) (may be empty): the cgroup join, before the holder unshares its
  // namespaces; with_cgroup_ns: it makes a cgroup namespace too (rooted where it is then).
  // Fails with the step BuildRoot failed at.
  // shared_flags: the CLONE_NEW* namespaces the container shares with the host (not made).
  static Result<std::unique_ptr<EnvHolder>> Start(
      const RootPlan& plan, bool with_cgroup_ns,
      const std::function<Result<void>(pid_t)>& before_namespaces, int shared_flags = 0);

 private:
  EnvHolder() = default;
};

// Checks the image's maps the way the kernel will (kBadImage names the flaw).
Result<void> CheckUserNamespace(const img::UserNamespace& u);

// Converts the image's limits back into runtime resources.
runtime::Resources LimitsToResources(const img::CgroupLimits& l);

}  // namespace godwit::container
