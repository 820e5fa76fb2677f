// cgroups behind one interface, one backend per file:
//   cgroup_v1.cc      v1 controllers mounted under /sys/fs/cgroup/<controller>
//   cgroup_v2.cc      the unified hierarchy at /sys/fs/cgroup (most distributions)
//   cgroup_hybrid.cc  v1 controllers for limits + the cgroup2 tree (/sys/fs/cgroup/unified) for
//                     membership and freezing: a cgroup2-frozen task stops at once, a v1-frozen
//                     one sits in D state and only takes ptrace stops after the thaw.
// Every container's cgroup is "<parent>/<id>" under each hierarchy's root. The parent is
// "godwit" unless the caller names another (`godwit --cgroup-parent P`): two godwit instances with
// different parents (two --root on one machine, e.g. the two ends of a migration) can hold the
// same container id at once. A parent may have several levels ("godwit/host-a"); the levels are
// made on Create and the empty ones removed on Destroy. The container's state record keeps its
// parent, so later verbs find the cgroup without the flag. The backends do the kernel I/O;
// nothing here prints.
#pragma once

#include <sys/types.h>

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common/result.h"
#include "runtime/spec.h"

namespace godwit::runtime {

enum class CgroupLayout { kV1, kV2, kHybrid };

// CFS bandwidth: quota_us of CPU time per period_us (over all CPUs); quota_us < 0 = unlimited.
struct CpuBandwidth {
  int64_t quota_us = -1;
  uint64_t period_us = 100000;
  bool operator==(const CpuBandwidth&) const = default;
};
const char* CgroupLayoutName(CgroupLayout l);

// Where the hierarchies live. Tests and callers normally use DetectCgroupLayout().
struct CgroupRoots {
  CgroupLayout layout = CgroupLayout::kV1;
  std::map<std::string, std::string>
      v1;               // controller -> mount dir ("memory" -> /sys/fs/cgroup/memory)
  std::string unified;  // the cgroup2 mount, empty if none
};

// Reads /proc/self/mountinfo once per process (cached): which layout this machine has.
Result<CgroupRoots> DetectCgroupLayout();

class Cgroup {
 public:
  virtual ~Cgroup() = default;
  virtual CgroupLayout layout() const = 0;
  // The relative name under each root, "<parent>/<id>".
  const std::string& name() const { return name_; }

  // mkdir the cgroup in every hierarchy the backend uses (and its parent levels). EEXIST on the
  // leaf is an error (kExists): two containers never share a cgroup.
  virtual Result<void> Create() = 0;
  // Writes the limits. A value the kernel refuses fails naming the file and value.
  virtual Result<void> Apply(const Resources& res) = 0;
  // Moves pid (all its threads) into the cgroup in every hierarchy. skip_clone_into: leave out
  // the hierarchy of CloneIntoPath() (the process was born there with CLONE_INTO_CGROUP).
  // Note the first migration after an idle period costs one RCU grace period (~5-15 ms here,
  // the cgroup_threadgroup_rwsem write side); CLONE_INTO_CGROUP avoids it for cgroup2.
  virtual Result<void> AddProcess(pid_t pid, bool skip_clone_into = false) = 0;
  // Moves the calling thread (the caller must be single-threaded) into the cgroup. Much cheaper
  // than AddProcess from outside: v1 "tasks" with "0" (the calling thread) skips the global
  // threadgroup lock and its RCU grace period (0.16 ms instead of 5-13 ms here). The container
  // init and exec use it.
  virtual Result<void> EnterSelf(bool skip_clone_into = false) = 0;
  // A cgroup2 directory a child can be born into with clone3(CLONE_INTO_CGROUP); "" if none (v1).
  virtual std::string CloneIntoPath() const = 0;
  // Every pid (host view) in the cgroup.
  virtual Result<std::vector<pid_t>> Pids() const = 0;
  // Freezes every task and waits (bounded) until the kernel reports the cgroup frozen.
  virtual Result<void> Freeze() = 0;
  virtual Result<void> Thaw() = 0;
  virtual Result<bool> IsFrozen() const = 0;
  // rmdir in every hierarchy; waits (bounded) for exiting tasks to leave. Missing dirs are fine,
  // so Destroy is idempotent and safe in rollback paths.
  virtual Result<void> Destroy() = 0;
  // Paths of the cgroup directories, by controller name ("memory", "pids", "unified", ...).
  virtual std::map<std::string, std::string> Paths() const = 0;
  // Counters for tests and reports: "oom_kill" (memory), "pids_max_hit" (pids events).
  virtual Result<std::map<std::string, int64_t>> Events() const = 0;
  // The CPU bandwidth as the kernel has it now, and setting it (both values, in the order the
  // kernel accepts). The migration's auto-converge throttles a container whose memory is
  // written faster than it can be sent, and writes the values it read back (migrate/source.cc);
  // the container's configured limits (its state record) are not touched.
  virtual Result<CpuBandwidth> CpuLimit() const = 0;
  virtual Result<void> SetCpuLimit(const CpuBandwidth& b) = 0;
  // CPU time used by the cgroup's tasks since it was made, in ns.
  virtual Result<uint64_t> CpuUsageNs() const = 0;

 protected:
  explicit Cgroup(std::string name) : name_(std::move(name)) {}
  std::string name_;
};

inline constexpr const char* kDefaultCgroupParent = "godwit";

// A cgroup parent: 1-128 characters, '/'-separated levels of [A-Za-z0-9_.-], none "." or "..",
// no leading, trailing or double '/'. kUsage otherwise.
Result<void> ValidateCgroupParent(const std::string& parent);

// The cgroup of a container id on this machine's layout (does not touch the kernel).
Result<std::unique_ptr<Cgroup>> OpenCgroup(const std::string& container_id,
                                           const std::string& parent = kDefaultCgroupParent);
// The cgroup of a container from its state record (its id and the parent it was created with).
struct Container;
Result<std::unique_ptr<Cgroup>> OpenCgroup(const Container& c);
// Same with explicit roots (tests, or a v2 machine mounted elsewhere).
std::unique_ptr<Cgroup> OpenCgroup(const CgroupRoots& roots, const std::string& container_id,
                                   const std::string& parent = kDefaultCgroupParent);

// Backend factories (one per file).
// v1: one directory per controller godwit uses (memory, cpu, cpuacct, pids, freezer, devices).
std::unique_ptr<Cgroup> NewCgroupV1(const std::map<std::string, std::string>& mounts,
                                    const std::string& name);
std::unique_ptr<Cgroup> NewCgroupV2(const std::string& root, const std::string& name);
std::unique_ptr<Cgroup> NewCgroupHybrid(const std::map<std::string, std::string>& v1_mounts,
                                        const std::string& unified, const std::string& name);

// Shared helpers for the backends.
namespace cgroup_internal {
Result<void> WriteKnob(const std::string& dir, const char* file, const std::string& value);
Result<std::string> ReadKnob(const std::string& dir, const char* file);
Result<void> MakeDir(const std::string& parent, const std::string& leaf_name);
// The parent levels of a cgroup name, outermost first: "a/b/id" -> {"a", "a/b"}.
std::vector<std::string> ParentLevels(const std::string& name);
// mkdir every parent level of name under base (existing ones are fine), then the leaf. A
// concurrent Destroy may remove an empty level between two mkdirs (ENOENT): the levels are made
// again, a bounded number of times. on_level runs for each level once it exists (v2 enables the
// controllers there). kExists if the leaf exists.
Result<void> MakeCgroupDirs(const std::string& base, const std::string& name,
                            const std::function<Result<void>(const std::string&)>& on_level);
// rmdir the parent levels of name under base, innermost first; stops at the first that is not
// empty (another container, or another godwit's) or gone.
void RemoveEmptyParents(const std::string& base, const std::string& name);
// rmdir with a bounded retry on EBUSY (tasks still exiting); ENOENT is success.
Result<void> RemoveDir(const std::string& dir);
Result<std::vector<pid_t>> ReadPids(const std::string& dir);
// Parses "key value" lines (memory.events, pids.events, cgroup.events).
std::map<std::string, int64_t> ParseKeyValues(const std::string& text);
}  // namespace cgroup_internal

}  // namespace godwit::runtime
