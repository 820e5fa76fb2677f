// Restore step "creds": uids, gids, groups, capabilities (effective, permitted, inheritable,
// bounding, ambient), securebits and no_new_privs, per thread (the kernel keeps credentials per
// thread; glibc's setuid() only looks process-wide because it signals every thread).
//
// The order matters because each change can take away the privilege the next one needs. In each
// thread, injected (the restored process starts with the coordinator's full root credentials):
//   1. setgroups                                       (CAP_SETGID)
//   2. securebits = KEEP_CAPS | NO_SETUID_FIXUP        (CAP_SETPCAP): a uid change keeps caps
//   3. setresgid, setfsgid, setresuid, setfsuid        (CAP_SETGID/CAP_SETUID, kept by 2)
//   4. capset(E|SETPCAP, P|SETPCAP, I)                 (I set while P is still full)
//   5. drop the bounding set                           (CAP_SETPCAP)
//   6. ambient: clear, raise each                      (needs P and I; before the securebits,
//                                                       which may forbid raising)
//   7. securebits = dumped                             (CAP_SETPCAP)
//   8. capset(E, P, I) as dumped                       (only lowers)
//   9. no_new_privs
// The step runs after every other step that needs privilege (chroot, scheduling, rlimits). A
// thread whose dumped credentials equal the restorer's (root restoring root) needs none of it.
#include <grp.h>
#include <linux/capability.h>
#include <linux/securebits.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "common/fs.h"
#include "restore/pstate.h"
#include "restore/steps.h"

namespace godwit::restore {
namespace {

Result<int> LastCap() {
  ASSIGN_OR_RETURN(std::string s, fs::ReadFile("/proc/sys/kernel/cap_last_cap"));
  return atoi(s.c_str());
}

Result<void> Capset(remote::Remote* r, pid_t tid, uint64_t eff, uint64_t prm, uint64_t inh) {
  struct {
    __user_cap_header_struct hdr;
    __user_cap_data_struct data[2];
  } c{};
  c.hdr.version = _LINUX_CAPABILITY_VERSION_3;
  c.hdr.pid = 0;
  c.data[0] = {static_cast<uint32_t>(eff), static_cast<uint32_t>(prm), static_cast<uint32_t>(inh)};
  c.data[1] = {static_cast<uint32_t>(eff >> 32), static_cast<uint32_t>(prm >> 32),
               static_cast<uint32_t>(inh >> 32)};
  TRY(r->Write(r->scratch(), &c, sizeof(c)));
  TRY_CTX(r->SyscallIn(tid, SYS_capset, r->scratch(), r->scratch() + sizeof(c.hdr)),
          "capset eff %#llx prm %#llx inh %#llx", (unsigned long long)eff, (unsigned long long)prm,
          (unsigned long long)inh);
  return Ok();
}

Result<void> RestoreThreadCreds(remote::Remote* r, pid_t tid, const img::Creds& c, int last_cap) {
  std::vector<uint32_t> groups(c.groups().begin(), c.groups().end());
  if (groups.size() * sizeof(uint32_t) > r->scratch_size())
    return MakeError(ErrorKind::kUnsupported, 0, "%zu supplementary groups", groups.size());
  if (!groups.empty()) TRY(r->Write(r->scratch(), groups.data(), groups.size() * 4));
  TRY_CTX(r->SyscallIn(tid, SYS_setgroups, groups.size(), r->scratch()), "setgroups (%zu)",
          groups.size());
  TRY_CTX(
      r->SyscallIn(tid, SYS_prctl, PR_SET_SECUREBITS, SECBIT_KEEP_CAPS | SECBIT_NO_SETUID_FIXUP),
      "PR_SET_SECUREBITS (keep caps)");
  TRY_CTX(r->SyscallIn(tid, SYS_setresgid, c.gid(), c.egid(), c.sgid()), "setresgid %u %u %u",
          c.gid(), c.egid(), c.sgid());
  TRY(r->SyscallIn(tid, SYS_setfsgid, c.fsgid()));  // returns the old fsgid, never an error
  TRY_CTX(r->SyscallIn(tid, SYS_setresuid, c.uid(), c.euid(), c.suid()), "setresuid %u %u %u",
          c.uid(), c.euid(), c.suid());
  TRY(r->SyscallIn(tid, SYS_setfsuid, c.fsuid()));
  const uint64_t setpcap = 1ULL << CAP_SETPCAP;
  TRY(Capset(r, tid, c.cap_effective() | setpcap, c.cap_permitted() | setpcap,
             c.cap_inheritable()));
  for (int cap = 0; cap <= last_cap && cap < 64; ++cap) {
    if (c.cap_bounding() & (1ULL << cap)) continue;
    TRY_CTX(r->SyscallIn(tid, SYS_prctl, PR_CAPBSET_DROP, cap), "PR_CAPBSET_DROP %d", cap);
  }
  TRY_CTX(r->SyscallIn(tid, SYS_prctl, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0),
          "PR_CAP_AMBIENT_CLEAR_ALL");
  for (int cap = 0; cap <= last_cap && cap < 64; ++cap) {
    if (!(c.cap_ambient() & (1ULL << cap))) continue;
    TRY_CTX(r->SyscallIn(tid, SYS_prctl, PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0),
            "PR_CAP_AMBIENT_RAISE %d", cap);
  }
  TRY_CTX(r->SyscallIn(tid, SYS_prctl, PR_SET_SECUREBITS, c.securebits()), "PR_SET_SECUREBITS %#x",
          c.securebits());
  TRY(Capset(r, tid, c.cap_effective(), c.cap_permitted(), c.cap_inheritable()));
  if (c.no_new_privs())
    TRY_CTX(r->SyscallIn(tid, SYS_prctl, PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "PR_SET_NO_NEW_PRIVS");
  return Ok();
}

// The coordinator's own credentials: every restored thread still has them when this step starts
// (forked from the coordinator, threads cloned from that copy, nothing in between changes them).
Result<img::Creds> OwnCreds(int last_cap) {
  img::Creds c;
  uid_t u[3];
  gid_t g[3];
  if (getresuid(&u[0], &u[1], &u[2]) < 0 || getresgid(&g[0], &g[1], &g[2]) < 0)
    return Errno("getresuid");
  c.set_uid(u[0]);
  c.set_euid(u[1]);
  c.set_suid(u[2]);
  c.set_gid(g[0]);
  c.set_egid(g[1]);
  c.set_sgid(g[2]);
  c.set_fsuid(static_cast<uint32_t>(syscall(SYS_setfsuid, -1)));  // -1 fails, returns the current
  c.set_fsgid(static_cast<uint32_t>(syscall(SYS_setfsgid, -1)));
  int n = getgroups(0, nullptr);
  if (n < 0) return Errno("getgroups");
  std::vector<gid_t> groups(static_cast<size_t>(n));
  if (n > 0 && getgroups(n, groups.data()) != n) return Errno("getgroups");
  for (gid_t x : groups) c.add_groups(x);
  __user_cap_header_struct hdr{_LINUX_CAPABILITY_VERSION_3, 0};
  __user_cap_data_struct d[2] = {};
  if (syscall(SYS_capget, &hdr, d) < 0) return Errno("capget");
  c.set_cap_effective(d[0].effective | (static_cast<uint64_t>(d[1].effective) << 32));
  c.set_cap_permitted(d[0].permitted | (static_cast<uint64_t>(d[1].permitted) << 32));
  c.set_cap_inheritable(d[0].inheritable | (static_cast<uint64_t>(d[1].inheritable) << 32));
  uint64_t bnd = 0, amb = 0;
  for (int cap = 0; cap <= last_cap && cap < 64; ++cap) {
    if (prctl(PR_CAPBSET_READ, cap, 0, 0, 0) == 1) bnd |= 1ULL << cap;
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_IS_SET, cap, 0, 0) == 1) amb |= 1ULL << cap;
  }
  c.set_cap_bounding(bnd);
  c.set_cap_ambient(amb);
  c.set_securebits(static_cast<uint32_t>(prctl(PR_GET_SECUREBITS, 0, 0, 0, 0)));
  c.set_no_new_privs(prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) == 1);
  return c;
}

bool SameCreds(const img::Creds& a, const img::Creds& b) {
  return a.SerializeAsString() == b.SerializeAsString();
}

}  // namespace

Result<void> RestoreCreds(RestoreContext& ctx, ProcessRestore& p) {
  ASSIGN_OR_RETURN(const img::ProcessState* pstate, LoadPstate(ctx, p));
  const img::ProcessState& ps = *pstate;
  ASSIGN_OR_RETURN(int last_cap, LastCap());
  ASSIGN_OR_RETURN(img::Creds own, OwnCreds(last_cap));
  for (const auto& t : ps.threads()) {
    for (int cap = last_cap + 1; cap < 64; ++cap) {
      uint64_t bit = 1ULL << cap;
      if ((t.creds().cap_permitted() | t.creds().cap_effective()) & bit)
        return MakeError(ErrorKind::kUnsupported, 0,
                         "thread %d holds capability %d, unknown to this kernel (last %d)", t.tid(),
                         cap, last_cap);
    }
    // A root process restored by root: nothing to do (unless it joined another user namespace,
    // where the coordinator's ids mean nothing).
    if (SameCreds(t.creds(), own) && ctx.opts.userns_fd < 0) continue;
    TRY_CTX(RestoreThreadCreds(p.remote.get(), p.HostTid(t.tid()), t.creds(), last_cap), "creds of thread %d",
            t.tid());
  }
  return Ok();
}

}  // namespace godwit::restore
