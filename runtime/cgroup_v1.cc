// cgroup v1: one directory per controller, each under its own mount.
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common/fs.h"
#include "common/log.h"
#include "runtime/cgroup.h"

namespace godwit::runtime {
namespace {

using namespace cgroup_internal;

// The controllers a container joins. cpuset is left out on purpose: a v1 cpuset cgroup starts
// with empty cpus/mems and would refuse tasks until copied from the parent.
constexpr const char* kControllers[] = {"memory", "cpu", "cpuacct", "pids", "freezer", "devices"};

std::string DeviceRule(const Resources::DeviceRule& r) {
  auto num = [](int64_t v) { return v < 0 ? std::string("*") : std::to_string(v); };
  if (r.type == 'a') return "a";
  return StrFormat("%c %s:%s %s", r.type, num(r.major).c_str(), num(r.minor).c_str(),
                   r.access.c_str());
}

class CgroupV1 : public Cgroup {
 public:
  CgroupV1(const std::map<std::string, std::string>& mounts, const std::string& name)
      : Cgroup(name) {
    for (const char* c : kControllers) {
      auto it = mounts.find(c);
      if (it == mounts.end()) continue;
      // cpu and cpuacct may share one mount ("cpu,cpuacct"): one directory serves both.
      std::string dir = it->second + "/" + name;
      bool dup = false;
      for (const auto& [k, v] : dirs_) dup = dup || v == dir;
      if (!dup) dirs_[c] = dir;
      parents_[c] = it->second;
      dirs_all_[c] = dir;
    }
  }

  CgroupLayout layout() const override { return CgroupLayout::kV1; }

  Result<void> Create() override {
    std::vector<std::string> made;  // controllers
    for (const auto& [ctrl, dir] : dirs_) {
      auto r = MakeCgroupDirs(parents_[ctrl], name_, nullptr);
      if (!r.ok()) {
        for (const auto& m : made) {
          ::rmdir(dirs_[m].c_str());
          RemoveEmptyParents(parents_[m], name_);
        }
        return r;
      }
      made.push_back(ctrl);
    }
    return Ok();
  }

  Result<void> Apply(const Resources& res) override {
    if (res.memory_limit || res.memory_swap) {
      TRY(Need("memory", "linux.resources.memory"));
      const std::string& dir = dirs_all_["memory"];
      // memsw (limit + swap) exists only where the kernel accounts swap; runc ignores swap
      // elsewhere too. The kernel keeps memsw >= limit: raising both needs memsw first,
      // lowering both the limit first. Try memsw first, and the other order if refused.
      bool memsw = res.memory_swap && fs::Exists(dir + "/memory.memsw.limit_in_bytes");
      bool swap_done = false;
      if (memsw)
        swap_done = WriteKnob(dir, "memory.memsw.limit_in_bytes",
                              std::to_string(*res.memory_swap)).ok();
      if (res.memory_limit)
        TRY(WriteKnob(dir, "memory.limit_in_bytes", std::to_string(*res.memory_limit)));
      if (memsw && !swap_done)
        TRY(WriteKnob(dir, "memory.memsw.limit_in_bytes", std::to_string(*res.memory_swap)));
    }
    if (res.cpu_shares || res.cpu_quota || res.cpu_period) TRY(Need("cpu", "linux.resources.cpu"));
    if (res.cpu_shares)
      TRY(WriteKnob(dirs_all_["cpu"], "cpu.shares", std::to_string(*res.cpu_shares)));
    // The period first: a quota is validated against the current period.
    if (res.cpu_period)
      TRY(WriteKnob(dirs_all_["cpu"], "cpu.cfs_period_us", std::to_string(*res.cpu_period)));
    if (res.cpu_quota)
      TRY(WriteKnob(dirs_all_["cpu"], "cpu.cfs_quota_us", std::to_string(*res.cpu_quota)));
    if (res.pids_limit) {
      TRY(Need("pids", "linux.resources.pids"));
      TRY(WriteKnob(dirs_all_["pids"], "pids.max",
                    *res.pids_limit > 0 ? std::to_string(*res.pids_limit) : "max"));
    }
    if (!res.devices.empty()) {
      TRY(Need("devices", "linux.resources.devices"));
      for (const auto& r : res.devices)
        TRY(WriteKnob(dirs_all_["devices"], r.allow ? "devices.allow" : "devices.deny",
                      DeviceRule(r)));
      // The OCI default devices stay usable whatever the rules say (as runc does): null, zero,
      // full, random, urandom, tty, console, ptmx and the pts slaves.
      for (const char* d : {"c 1:3 rwm", "c 1:5 rwm", "c 1:7 rwm", "c 1:8 rwm", "c 1:9 rwm",
                            "c 5:0 rwm", "c 5:1 rwm", "c 5:2 rwm", "c 136:* rwm"})
        TRY(WriteKnob(dirs_all_["devices"], "devices.allow", d));
    }
    return Ok();
  }

  std::string CloneIntoPath() const override { return ""; }

  Result<void> EnterSelf(bool) override {
    for (const auto& [ctrl, dir] : dirs_) TRY(WriteKnob(dir, "tasks", "0"));
    return Ok();
  }

  Result<void> AddProcess(pid_t pid, bool) override {
    std::string p = std::to_string(pid);
    for (const auto& [ctrl, dir] : dirs_) TRY(WriteKnob(dir, "cgroup.procs", p));
    return Ok();
  }

  Result<std::vector<pid_t>> Pids() const override {
    for (const char* c : {"pids", "freezer", "memory"}) {
      auto it = dirs_all_.find(c);
      if (it != dirs_all_.end()) return ReadPids(it->second);
    }
    if (dirs_.empty()) return MakeError(ErrorKind::kUnsupported, 0, "no v1 controller mounted");
    return ReadPids(dirs_.begin()->second);
  }

  Result<void> Freeze() override { return SetFreezer("FROZEN"); }
  Result<void> Thaw() override { return SetFreezer("THAWED"); }

  Result<bool> IsFrozen() const override {
    auto it = dirs_all_.find("freezer");
    if (it == dirs_all_.end()) return MakeError(ErrorKind::kUnsupported, 0, "no v1 freezer");
    ASSIGN_OR_RETURN(std::string s, ReadKnob(it->second, "freezer.state"));
    return fs::Trim(s) == "FROZEN";
  }

  Result<void> Destroy() override {
    Result<void> first;
    for (const auto& [ctrl, dir] : dirs_) {
      auto r = RemoveDir(dir);
      if (!r.ok() && first.ok()) first = std::move(r).error();
      // The empty parent levels: only succeed once the last container under them is gone.
      if (r.ok()) RemoveEmptyParents(parents_[ctrl], name_);
    }
    return first;
  }

  std::map<std::string, std::string> Paths() const override { return dirs_all_; }

  Result<CpuBandwidth> CpuLimit() const override {
    TRY(Need("cpu", "cpu bandwidth"));
    const std::string& dir = dirs_all_.at("cpu");
    ASSIGN_OR_RETURN(std::string q, ReadKnob(dir, "cpu.cfs_quota_us"));
    ASSIGN_OR_RETURN(std::string p, ReadKnob(dir, "cpu.cfs_period_us"));
    CpuBandwidth b;
    b.quota_us = strtoll(q.c_str(), nullptr, 10);
    b.period_us = strtoull(p.c_str(), nullptr, 10);
    return b;
  }

  Result<void> SetCpuLimit(const CpuBandwidth& b) override {
    TRY(Need("cpu", "cpu bandwidth"));
    const std::string& dir = dirs_all_.at("cpu");
    // The kernel checks a quota against the current period (and the parents' limits): lift the
    // quota first, then set the period, then the quota.
    TRY(WriteKnob(dir, "cpu.cfs_quota_us", "-1"));
    TRY(WriteKnob(dir, "cpu.cfs_period_us", std::to_string(b.period_us)));
    if (b.quota_us >= 0) TRY(WriteKnob(dir, "cpu.cfs_quota_us", std::to_string(b.quota_us)));
    return Ok();
  }

  Result<uint64_t> CpuUsageNs() const override {
    TRY(Need("cpuacct", "cpu usage"));
    ASSIGN_OR_RETURN(std::string u, ReadKnob(dirs_all_.at("cpuacct"), "cpuacct.usage"));
    return strtoull(u.c_str(), nullptr, 10);
  }

  Result<std::map<std::string, int64_t>> Events() const override {
    std::map<std::string, int64_t> out;
    if (auto it = dirs_all_.find("memory"); it != dirs_all_.end()) {
      ASSIGN_OR_RETURN(std::string s, ReadKnob(it->second, "memory.oom_control"));
      auto kv = ParseKeyValues(s);
      out["oom_kill"] = kv["oom_kill"];
      ASSIGN_OR_RETURN(std::string f, ReadKnob(it->second, "memory.failcnt"));
      out["memory_failcnt"] = strtoll(f.c_str(), nullptr, 10);
    }
    if (auto it = dirs_all_.find("pids"); it != dirs_all_.end()) {
      ASSIGN_OR_RETURN(std::string s, ReadKnob(it->second, "pids.events"));
      out["pids_max_hit"] = ParseKeyValues(s)["max"];
      ASSIGN_OR_RETURN(std::string c, ReadKnob(it->second, "pids.current"));
      out["pids_current"] = strtoll(c.c_str(), nullptr, 10);
    }
    return out;
  }

 private:
  Result<void> Need(const char* ctrl, const char* field) const {
    if (dirs_all_.count(ctrl)) return Ok();
    return MakeError(ErrorKind::kUnsupported, 0, "%s: the %s cgroup controller is not mounted",
                     field, ctrl);
  }

  Result<void> SetFreezer(const char* state) {
    auto it = dirs_all_.find("freezer");
    if (it == dirs_all_.end()) return MakeError(ErrorKind::kUnsupported, 0, "no v1 freezer");
    TRY(WriteKnob(it->second, "freezer.state", state));
    // FREEZING -> FROZEN happens asynchronously; poll with a bounded deadline.
    timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (int i = 0;; ++i) {
      ASSIGN_OR_RETURN(std::string s, ReadKnob(it->second, "freezer.state"));
      if (fs::Trim(s) == state) return Ok();
      clock_gettime(CLOCK_MONOTONIC, &now);
      if (now.tv_sec - start.tv_sec >= 10)
        return MakeError(ErrorKind::kGeneric, 0, "%s: still %s after 10 s", it->second.c_str(),
                         fs::Trim(s).c_str());
      // Re-writing FROZEN retries tasks that were busy (what runc does too).
      if (i % 10 == 9) TRY(WriteKnob(it->second, "freezer.state", state));
      usleep(i < 20 ? 100 : 1000);
    }
  }

  std::map<std::string, std::string> dirs_;      // distinct directories
  std::map<std::string, std::string> dirs_all_;  // every controller -> directory
  std::map<std::string, std::string> parents_;   // controller -> its hierarchy's mount
};

}  // namespace

std::unique_ptr<Cgroup> NewCgroupV1(const std::map<std::string, std::string>& mounts,
                                    const std::string& name) {
  return std::make_unique<CgroupV1>(mounts, name);
}

}  // namespace godwit::runtime
