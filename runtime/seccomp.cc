#include "runtime/seccomp.h"

#include <linux/seccomp.h>
#include <seccomp.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cctype>
#include <map>

#include "common/fs.h"
#include "common/scope_exit.h"
#include "common/unique_fd.h"

namespace godwit::runtime {
namespace {

Error Bad(const std::string& msg) {
  return Error(ErrorKind::kBadConfig, 0, "config.json: linux.seccomp" + msg);
}

Result<uint32_t> Action(const std::string& name, std::optional<uint32_t> errno_ret,
                        const std::string& where) {
  if (name == "SCMP_ACT_ALLOW") return SCMP_ACT_ALLOW;
  if (name == "SCMP_ACT_KILL" || name == "SCMP_ACT_KILL_THREAD") return SCMP_ACT_KILL_THREAD;
  if (name == "SCMP_ACT_KILL_PROCESS") return SCMP_ACT_KILL_PROCESS;
  if (name == "SCMP_ACT_TRAP") return SCMP_ACT_TRAP;
  if (name == "SCMP_ACT_LOG") return SCMP_ACT_LOG;
  if (name == "SCMP_ACT_ERRNO") return SCMP_ACT_ERRNO(errno_ret.value_or(EPERM));
  if (name == "SCMP_ACT_TRACE") return SCMP_ACT_TRACE(errno_ret.value_or(EPERM));
  if (name == "SCMP_ACT_NOTIFY")
    return Bad(where + ": SCMP_ACT_NOTIFY needs a seccomp agent (not supported)");
  return Bad(where + ": unknown action " + name);
}

Result<scmp_compare> Op(const std::string& op, const std::string& where) {
  static const std::map<std::string, scmp_compare> kOps = {
      {"SCMP_CMP_NE", SCMP_CMP_NE}, {"SCMP_CMP_LT", SCMP_CMP_LT},
      {"SCMP_CMP_LE", SCMP_CMP_LE}, {"SCMP_CMP_EQ", SCMP_CMP_EQ},
      {"SCMP_CMP_GE", SCMP_CMP_GE}, {"SCMP_CMP_GT", SCMP_CMP_GT},
      {"SCMP_CMP_MASKED_EQ", SCMP_CMP_MASKED_EQ}};
  auto it = kOps.find(op);
  if (it == kOps.end()) return Bad(where + ": unknown operator " + op);
  return it->second;
}

Result<uint32_t> Arch(const std::string& name) {
  // SCMP_ARCH_X86_64 -> "x86_64", SCMP_ARCH_AARCH64 -> "aarch64".
  std::string n = name.rfind("SCMP_ARCH_", 0) == 0 ? name.substr(10) : name;
  for (auto& ch : n) ch = static_cast<char>(tolower(static_cast<unsigned char>(ch)));
  uint32_t a = seccomp_arch_resolve_name(n.c_str());
  if (a == 0) return Bad(".architectures: unknown architecture " + name);
  return a;
}

}  // namespace

Result<SeccompProgram> CompileSeccomp(const Seccomp& sc) {
  SeccompProgram prog;
  if (!sc.present) return prog;
  ASSIGN_OR_RETURN(uint32_t def, Action(sc.default_action, sc.default_errno, ".defaultAction"));
  scmp_filter_ctx ctx = seccomp_init(def);
  if (!ctx) return Bad(": seccomp_init failed");
  ScopeExit release([&] { seccomp_release(ctx); });
  // We install the program ourselves; no_new_privs is the config's business.
  seccomp_attr_set(ctx, SCMP_FLTATR_CTL_NNP, 0);
  for (const auto& a : sc.architectures) {
    ASSIGN_OR_RETURN(uint32_t arch, Arch(a));
    int rc = seccomp_arch_add(ctx, arch);
    if (rc < 0 && rc != -EEXIST) return Bad(".architectures: cannot add " + a);
  }
  for (const auto& f : sc.flags) {
    if (f == "SECCOMP_FILTER_FLAG_TSYNC") {
      prog.flags |= SECCOMP_FILTER_FLAG_TSYNC;
    } else if (f == "SECCOMP_FILTER_FLAG_LOG") {
      prog.flags |= SECCOMP_FILTER_FLAG_LOG;
    } else if (f == "SECCOMP_FILTER_FLAG_SPEC_ALLOW") {
      prog.flags |= SECCOMP_FILTER_FLAG_SPEC_ALLOW;
    } else {
      return Bad(".flags: " + f + " not supported");
    }
  }
  for (size_t i = 0; i < sc.syscalls.size(); ++i) {
    const auto& rule = sc.syscalls[i];
    std::string where = StrFormat(".syscalls[%zu]", i);
    ASSIGN_OR_RETURN(uint32_t act, Action(rule.action, rule.errno_ret, where));
    if (act == def) continue;  // libseccomp refuses rules that do what the default does
    std::vector<scmp_arg_cmp> conds;
    bool repeated = false;
    for (const auto& a : rule.args) {
      if (a.index > 5) return Bad(where + ".args: index > 5");
      ASSIGN_OR_RETURN(scmp_compare op, Op(a.op, where));
      for (const auto& c : conds) repeated = repeated || c.arg == a.index;
      conds.push_back({a.index, op, a.value, a.value_two});
    }
    for (const auto& name : rule.names) {
      int nr = seccomp_syscall_resolve_name(name.c_str());
      if (nr == __NR_SCMP_ERROR) continue;  // unknown here: skipped, as runc
      auto add = [&](const scmp_arg_cmp* c, unsigned n) -> Result<void> {
        int rc = seccomp_rule_add_array(ctx, act, nr, n, c);
        if (rc < 0)
          return Error(ErrorKind::kBadConfig, -rc,
                       StrFormat("config.json: linux.seccomp%s: rule for %s", where.c_str(),
                                 name.c_str()));
        return Ok();
      };
      if (!repeated) {
        TRY(add(conds.data(), static_cast<unsigned>(conds.size())));
      } else {
        for (const auto& c : conds) TRY(add(&c, 1));
      }
    }
  }
  // Export the BPF through a memfd (seccomp_export_bpf_mem is newer than Debian's libseccomp).
  int fd = static_cast<int>(::syscall(SYS_memfd_create, "godwit-seccomp", MFD_CLOEXEC));
  if (fd < 0) return Errno("memfd_create");
  UniqueFd guard(fd);
  if (int rc = seccomp_export_bpf(ctx, fd); rc < 0)
    return Error(ErrorKind::kBadConfig, -rc, "config.json: linux.seccomp: export the filter");
  struct stat st;
  if (::fstat(fd, &st) < 0) return Errno("fstat seccomp memfd");
  if (st.st_size == 0 || st.st_size % sizeof(sock_filter) != 0)
    return MakeError(ErrorKind::kGeneric, 0, "seccomp: exported %lld bytes",
                     static_cast<long long>(st.st_size));
  prog.insns.resize(st.st_size / sizeof(sock_filter));
  if (::pread(fd, prog.insns.data(), st.st_size, 0) != st.st_size)
    return Errno("read seccomp memfd");
  return prog;
}

int LoadSeccomp(const SeccompProgram& prog) {
  if (prog.empty()) return 0;
  sock_fprog fp{static_cast<unsigned short>(prog.insns.size()),
                const_cast<sock_filter*>(prog.insns.data())};
  if (::syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, prog.flags, &fp) < 0) return -errno;
  return 0;
}

}  // namespace godwit::runtime
