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

#include <string>
#include <vector>

#include "common/result.h"
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
};

// What BuildRoot does, prepared before the clone (no allocation after it).
struct RootPlan {
  std::string rootfs;  // host path of the rootfs
  bool readonly = false;
  int64_t disk_quota = 0;   // > 0: overlay with upper/work in a tmpfs of this size
  std::string storage_dir;  // host directory for that tmpfs (exists, stays empty on the host)
  std::vector<MountStep> mounts;
  // Prepared strings, so the child builds none.
  std::string overlay_opts, upper, work, merged, quota_opts;
};

// Plans the root from the image's mount table, the container's spec (for host bind sources) and
// the tmpfs images (for bind sources inside a tmpfs). kUnsupported names a mount that cannot be
// rebuilt.
Result<RootPlan> PlanRoot(const img::MountTable& table, const runtime::Spec& spec, bool has_layer,
                          const std::string& storage_dir, const images::ImageSet* images);

// Runs in the cloned root task (new mount ns). Returns 0, or an errno with *what naming the step.
int BuildRoot(const RootPlan& plan, const char** what);

// From outside, once BuildRoot is done in root_pid: uts, ipc, net, tmpfs contents, layer.
// net: the network to build (the image's, possibly readdressed); null: none.
Result<void> FillEnvironment(const images::ImageSet& images, const img::ContainerCheckpoint& rec,
                             const img::MountTable& table, const img::NetNs* net, pid_t root_pid);

// Converts the image's limits back into runtime resources.
runtime::Resources LimitsToResources(const img::CgroupLimits& l);

}  // namespace godwit::container
