// Hybrid layout (this machine): the v1 controllers hold the limits; the cgroup2 tree at
// <base>/unified has no controllers but tracks membership and freezes through cgroup.freeze,
// which stops tasks at once (a v1-frozen task sits in D state and takes ptrace stops only after
// the thaw, which the dumper cannot use).
#include "runtime/cgroup.h"

namespace godwit::runtime {

namespace cgroup_internal {
std::unique_ptr<Cgroup> NewCgroupV2MembershipOnly(const std::string& root, const std::string& name);
}

namespace {

class CgroupHybrid : public Cgroup {
 public:
  CgroupHybrid(const std::map<std::string, std::string>& v1, const std::string& unified,
               const std::string& name)
      : Cgroup(name),
        v1_(NewCgroupV1(v1, name)),
        v2_(cgroup_internal::NewCgroupV2MembershipOnly(unified, name)) {}

  CgroupLayout layout() const override { return CgroupLayout::kHybrid; }

  Result<void> Create() override {
    TRY(v1_->Create());
    auto r = v2_->Create();
    if (!r.ok()) {
      (void)v1_->Destroy();
      return r;
    }
    return Ok();
  }
  Result<void> Apply(const Resources& res) override { return v1_->Apply(res); }
  Result<void> AddProcess(pid_t pid, bool skip_clone_into) override {
    TRY(v1_->AddProcess(pid));
    if (skip_clone_into) return Ok();
    return v2_->AddProcess(pid);
  }
  std::string CloneIntoPath() const override { return v2_->CloneIntoPath(); }
  Result<void> EnterSelf(bool skip_clone_into) override {
    TRY(v1_->EnterSelf(false));
    return v2_->EnterSelf(skip_clone_into);
  }
  Result<std::vector<pid_t>> Pids() const override { return v2_->Pids(); }
  Result<void> Freeze() override { return v2_->Freeze(); }
  Result<void> Thaw() override { return v2_->Thaw(); }
  Result<bool> IsFrozen() const override { return v2_->IsFrozen(); }
  Result<void> Destroy() override {
    auto a = v1_->Destroy();
    auto b = v2_->Destroy();
    if (!a.ok()) return a;
    return b;
  }
  std::map<std::string, std::string> Paths() const override {
    auto p = v1_->Paths();
    for (const auto& [k, v] : v2_->Paths()) p[k] = v;
    return p;
  }
  Result<std::map<std::string, int64_t>> Events() const override { return v1_->Events(); }
  Result<CpuBandwidth> CpuLimit() const override { return v1_->CpuLimit(); }
  Result<void> SetCpuLimit(const CpuBandwidth& b) override { return v1_->SetCpuLimit(b); }
  Result<uint64_t> CpuUsageNs() const override { return v1_->CpuUsageNs(); }

 private:
  std::unique_ptr<Cgroup> v1_, v2_;
};

}  // namespace

std::unique_ptr<Cgroup> NewCgroupHybrid(const std::map<std::string, std::string>& v1,
                                        const std::string& unified, const std::string& name) {
  return std::make_unique<CgroupHybrid>(v1, unified, name);
}

}  // namespace godwit::runtime
