// cgroup v2: one directory in the unified hierarchy; controllers enabled top-down through
// cgroup.subtree_control of the root and of each parent level ("godwit", or --cgroup-parent's).
#include <fcntl.h>
#include <poll.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <set>

#include "common/fs.h"
#include "common/log.h"
#include "runtime/cgroup.h"

namespace godwit::runtime {
namespace {

using namespace cgroup_internal;

// cpu.shares (2..262144) -> cpu.weight (1..10000), the conversion runc and crun use.
uint64_t SharesToWeight(uint64_t shares) {
  if (shares == 0) return 100;
  return 1 + ((shares - 2) * 9999) / 262142;
}

class CgroupV2 : public Cgroup {
 public:
  // with_controllers=false: the unified tree of a hybrid machine, used for membership and
  // freezing only.
  CgroupV2(const std::string& root, const std::string& name, bool with_controllers)
      : Cgroup(name), root_(root), dir_(root + "/" + name), controllers_(with_controllers) {}

  CgroupLayout layout() const override { return CgroupLayout::kV2; }

  Result<void> Create() override {
    if (controllers_) TRY(EnableControllers(root_));
    return MakeCgroupDirs(root_, name_, [this](const std::string& level) -> Result<void> {
      if (controllers_) return EnableControllers(level);
      return Ok();
    });
  }

  Result<void> Apply(const Resources& res) override {
    if (res.memory_limit) {
      TRY(Need("memory", "linux.resources.memory"));
      TRY(WriteKnob(dir_, "memory.max",
                    *res.memory_limit < 0 ? "max" : std::to_string(*res.memory_limit)));
    }
    // OCI's swap is limit + swap; cgroup2 has swap alone. Absent without swap accounting.
    if (res.memory_swap && fs::Exists(dir_ + "/memory.swap.max")) {
      std::string v = "max";
      if (*res.memory_swap >= 0 && res.memory_limit && *res.memory_limit >= 0)
        v = std::to_string(std::max<int64_t>(0, *res.memory_swap - *res.memory_limit));
      TRY(WriteKnob(dir_, "memory.swap.max", v));
    }
    if (res.cpu_shares || res.cpu_quota || res.cpu_period) TRY(Need("cpu", "linux.resources.cpu"));
    if (res.cpu_shares)
      TRY(WriteKnob(dir_, "cpu.weight", std::to_string(SharesToWeight(*res.cpu_shares))));
    if (res.cpu_quota || res.cpu_period) {
      CpuBandwidth b;  // unlimited, the default period, unless given
      if (res.cpu_quota) b.quota_us = *res.cpu_quota;
      if (res.cpu_period) b.period_us = *res.cpu_period;
      TRY(SetCpuLimit(b));
    }
    if (res.pids_limit) {
      TRY(Need("pids", "linux.resources.pids"));
      TRY(WriteKnob(dir_, "pids.max",
                    *res.pids_limit > 0 ? std::to_string(*res.pids_limit) : "max"));
    }
    if (!res.devices.empty()) {
      // v2 device control is a BPF program; godwit does not load one yet.
      bool deny_all_only = true;
      for (const auto& r : res.devices) deny_all_only = deny_all_only && !r.allow && r.type == 'a';
      if (!deny_all_only)
        return MakeError(ErrorKind::kBadConfig, 0,
                         "linux.resources.devices: not supported on cgroup v2 (needs BPF)");
    }
    return Ok();
  }

  Result<void> AddProcess(pid_t pid, bool skip_clone_into) override {
    if (skip_clone_into) return Ok();
    return WriteKnob(dir_, "cgroup.procs", std::to_string(pid));
  }
  std::string CloneIntoPath() const override { return dir_; }
  Result<void> EnterSelf(bool skip_clone_into) override {
    if (skip_clone_into) return Ok();
    return WriteKnob(dir_, "cgroup.procs", "0");
  }

  Result<std::vector<pid_t>> Pids() const override { return ReadPids(dir_); }

  Result<void> Freeze() override { return SetFrozen(true); }
  Result<void> Thaw() override { return SetFrozen(false); }

  Result<bool> IsFrozen() const override {
    ASSIGN_OR_RETURN(std::string s, ReadKnob(dir_, "cgroup.events"));
    return ParseKeyValues(s)["frozen"] == 1;
  }

  Result<void> Destroy() override {
    TRY(RemoveDir(dir_));
    RemoveEmptyParents(root_, name_);  // only succeeds once the last container under it is gone
    return Ok();
  }

  std::map<std::string, std::string> Paths() const override { return {{"unified", dir_}}; }

  Result<CpuBandwidth> CpuLimit() const override {
    ASSIGN_OR_RETURN(std::string s, ReadKnob(dir_, "cpu.max"));
    auto f = fs::Split(fs::Trim(s), ' ');
    if (f.size() != 2)
      return MakeError(ErrorKind::kGeneric, 0, "%s/cpu.max: unexpected \"%s\"", dir_.c_str(),
                       fs::Trim(s).c_str());
    CpuBandwidth b;
    b.quota_us = f[0] == "max" ? -1 : strtoll(f[0].c_str(), nullptr, 10);
    b.period_us = strtoull(f[1].c_str(), nullptr, 10);
    return b;
  }

  Result<void> SetCpuLimit(const CpuBandwidth& b) override {
    std::string quota = b.quota_us < 0 ? "max" : std::to_string(b.quota_us);
    return WriteKnob(dir_, "cpu.max", quota + " " + std::to_string(b.period_us));
  }

  Result<uint64_t> CpuUsageNs() const override {
    ASSIGN_OR_RETURN(std::string s, ReadKnob(dir_, "cpu.stat"));
    return static_cast<uint64_t>(ParseKeyValues(s)["usage_usec"]) * 1000;
  }

  Result<std::map<std::string, int64_t>> Events() const override {
    std::map<std::string, int64_t> out;
    if (auto s = ReadKnob(dir_, "memory.events"); s.ok())
      out["oom_kill"] = ParseKeyValues(*s)["oom_kill"];
    if (auto s = ReadKnob(dir_, "pids.events"); s.ok())
      out["pids_max_hit"] = ParseKeyValues(*s)["max"];
    if (auto s = ReadKnob(dir_, "pids.current"); s.ok())
      out["pids_current"] = strtoll(s->c_str(), nullptr, 10);
    return out;
  }

 private:
  Result<void> EnableControllers(const std::string& dir) {
    ASSIGN_OR_RETURN(std::string avail, ReadKnob(dir, "cgroup.controllers"));
    ASSIGN_OR_RETURN(std::string enabled, ReadKnob(dir, "cgroup.subtree_control"));
    std::set<std::string> have;
    for (const auto& c : fs::Split(fs::Trim(enabled), ' ')) have.insert(c);
    std::string want;
    for (const auto& c : fs::Split(fs::Trim(avail), ' ')) {
      if ((c == "memory" || c == "cpu" || c == "pids") && !have.count(c)) want += " +" + c;
    }
    if (want.empty()) return Ok();
    return WriteKnob(dir, "cgroup.subtree_control", want.substr(1));
  }

  Result<void> Need(const char* ctrl, const char* field) const {
    auto s = ReadKnob(dir_, "cgroup.controllers");
    if (s.ok()) {
      for (const auto& c : fs::Split(fs::Trim(*s), ' '))
        if (c == ctrl) return Ok();
    }
    return MakeError(ErrorKind::kUnsupported, 0, "%s: the %s controller is not available in %s",
                     field, ctrl, dir_.c_str());
  }

  Result<void> SetFrozen(bool frozen) {
    TRY(WriteKnob(dir_, "cgroup.freeze", frozen ? "1" : "0"));
    // cgroup.events changes "frozen" asynchronously and notifies pollers with POLLPRI.
    std::string events = dir_ + "/cgroup.events";
    int fd = ::open(events.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return Errno("open %s", events.c_str());
    timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    Result<void> result;
    for (;;) {
      char buf[256];
      ssize_t n = ::pread(fd, buf, sizeof(buf) - 1, 0);
      if (n < 0) {
        result = Errno("read %s", events.c_str());
        break;
      }
      buf[n] = 0;
      if ((ParseKeyValues(buf)["frozen"] == 1) == frozen) break;
      clock_gettime(CLOCK_MONOTONIC, &now);
      if (now.tv_sec - start.tv_sec >= 10) {
        result = MakeError(ErrorKind::kGeneric, 0, "%s: not %s after 10 s", dir_.c_str(),
                           frozen ? "frozen" : "thawed");
        break;
      }
      pollfd p{fd, POLLPRI, 0};
      ::poll(&p, 1, 100);
    }
    ::close(fd);
    return result;
  }

  std::string root_, dir_;
  bool controllers_;
};

}  // namespace

std::unique_ptr<Cgroup> NewCgroupV2(const std::string& root, const std::string& name) {
  return std::make_unique<CgroupV2>(root, name, true);
}

namespace cgroup_internal {
std::unique_ptr<Cgroup> NewCgroupV2MembershipOnly(const std::string& root,
                                                  const std::string& name) {
  return std::make_unique<CgroupV2>(root, name, false);
}
}  // namespace cgroup_internal

}  // namespace godwit::runtime
