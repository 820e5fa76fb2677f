// Step "pstate": everything about a process besides its tree, registers, memory and fds, written
// to pstate-<pid>.img (proto/pstate.proto). Each kind of state has its own collector below, run
// in the order of the kinds table; /proc gives what it can, injected syscalls (in the thread the
// state belongs to) give the rest.
//
// One table step for all kinds: the image is one message per process and a step has nowhere to
// leave partial state for a later one. The kinds are independent reads, so their order is free;
// on the restore side each kind is its own step because there the order matters.
#include <linux/filter.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <unistd.h>

#include <cstring>
#include <map>

#include "common/fs.h"
#include "common/idmap.h"
#include "common/log.h"
#include "common/timing.h"
#include "common/sched_attr.h"
#include "dump/steps.h"
#include "images/inspect.h"
#include "proto/pstate.pb.h"

namespace godwit::dump {
namespace {

constexpr int kMaxSig = 64;

// "Key:\tvalue" lines of /proc/.../status.
Result<std::map<std::string, std::string>> ReadStatus(const std::string& path) {
  ASSIGN_OR_RETURN(std::string text, fs::ReadFile(path));
  std::map<std::string, std::string> out;
  for (const auto& line : fs::Split(text, '\n')) {
    size_t colon = line.find(':');
    if (colon == std::string::npos) continue;
    out[line.substr(0, colon)] = fs::Trim(line.substr(colon + 1));
  }
  return out;
}

Result<std::string> Field(const std::map<std::string, std::string>& st, const char* key,
                          const std::string& path) {
  auto it = st.find(key);
  if (it == st.end()) return Err("%s: no %s line", path.c_str(), key);
  return it->second;
}

Result<std::vector<uint64_t>> Numbers(const std::string& s, int base) {
  std::vector<uint64_t> out;
  for (const auto& w : fs::Split(s, ' ')) {
    for (const auto& v : fs::Split(w, '\t')) {
      if (v.empty()) continue;
      char* end = nullptr;
      errno = 0;
      uint64_t n = strtoull(v.c_str(), &end, base);
      if (errno != 0 || *end != 0) return Err("not a number: '%s'", v.c_str());
      out.push_back(n);
    }
  }
  return out;
}

// Every signal, defaults included: a SIG_DFL entry keeps its flags and mask (sigaction() reads
// them back, and SIGCHLD's SA_NOCLDWAIT acts with SIG_DFL). 62 injected calls, ~0.75 ms.
// x86-64 code that queries every signal's action in one injection (64 rt_sigaction calls cost
// ~2.5 ms one by one, in frozen time, per process):
//   for (sig = 1; sig <= 64; sig++) rc[sig-1] = rt_sigaction(sig, NULL, &out[sig-1], 8); int3
std::vector<uint8_t> SigactionBatch(uint64_t out, uint64_t rc) {
  std::vector<uint8_t> c = {0x49, 0xBD};  // mov r13, out
  for (int i = 0; i < 8; ++i) c.push_back(static_cast<uint8_t>(out >> (8 * i)));
  c.insert(c.end(), {0x49, 0xBE});  // mov r14, rc
  for (int i = 0; i < 8; ++i) c.push_back(static_cast<uint8_t>(rc >> (8 * i)));
  c.insert(c.end(), {0x41, 0xBC, 0x01, 0x00, 0x00, 0x00});  // mov r12d, 1
  const std::vector<uint8_t> loop = {
      0x44, 0x89, 0xE7,                    // mov edi, r12d
      0x31, 0xF6,                          // xor esi, esi
      0x4C, 0x89, 0xEA,                    // mov rdx, r13
      0x41, 0xBA, 0x08, 0x00, 0x00, 0x00,  // mov r10d, 8
      0xB8, SYS_rt_sigaction, 0x00, 0x00, 0x00,  // mov eax, SYS_rt_sigaction
      0x0F, 0x05,                          // syscall
      0x49, 0x89, 0x06,                    // mov [r14], rax
      0x49, 0x83, 0xC5, 0x20,              // add r13, 32
      0x49, 0x83, 0xC6, 0x08,              // add r14, 8
      0x41, 0xFF, 0xC4,                    // inc r12d
      0x41, 0x83, 0xFC, kMaxSig + 1,       // cmp r12d, 65
  };
  c.insert(c.end(), loop.begin(), loop.end());
  c.push_back(0x75);  // jne loop
  c.push_back(static_cast<uint8_t>(-(static_cast<int>(loop.size()) + 2)));
  c.push_back(0xCC);  // int3
  return c;
}

Result<void> DumpHandlers(DumpContext& ctx, ProcessDump& p, img::ProcessState* ps) {
  ASSIGN_OR_RETURN(remote::Remote * r, ctx.RemoteFor(p));
  // The kernel's x86-64 sigaction per signal: handler, flags, restorer, mask.
  uint64_t ka[kMaxSig][4] = {};
  int64_t rc[kMaxSig] = {};
  const uint64_t code = r->scratch(), out = code + 256, rcs = out + sizeof(ka);
  static_assert(sizeof(ka) + sizeof(rc) + 256 < 64 * 1024);
  std::vector<uint8_t> stub = SigactionBatch(out, rcs);
  TRY(r->Write(code, stub.data(), stub.size()));
  ASSIGN_OR_RETURN(bool batched, r->RunCode(code));
  if (batched) {
    TRY(r->Read(out, ka, sizeof(ka)));
    TRY(r->Read(rcs, rc, sizeof(rc)));
  }
  for (int sig = 1; sig <= kMaxSig; ++sig) {
    if (sig == SIGKILL || sig == SIGSTOP) continue;
    uint64_t* k = ka[sig - 1];
    if (!batched) {
      TRY_CTX(r->Syscall(SYS_rt_sigaction, sig, 0, r->scratch(), 8), "rt_sigaction %d", sig);
      TRY(r->Read(r->scratch(), k, 4 * sizeof(uint64_t)));
    } else if (rc[sig - 1] != 0) {
      return MakeError(ErrorKind::kGeneric, static_cast<int>(-rc[sig - 1]),
                       "rt_sigaction %d in %d", sig, p.pid);
    }
    auto* a = ps->mutable_handlers()->add_actions();
    a->set_signo(sig);
    a->set_handler(k[0]);
    a->set_flags(k[1]);
    a->set_restorer(k[2]);
    a->set_mask(k[3]);
  }
  return Ok();
}

struct RlimitName {
  int res;
  const char* name;
};
constexpr RlimitName kRlimits[] = {
    {RLIMIT_CPU, "RLIMIT_CPU"},           {RLIMIT_FSIZE, "RLIMIT_FSIZE"},
    {RLIMIT_DATA, "RLIMIT_DATA"},         {RLIMIT_STACK, "RLIMIT_STACK"},
    {RLIMIT_CORE, "RLIMIT_CORE"},         {RLIMIT_RSS, "RLIMIT_RSS"},
    {RLIMIT_NPROC, "RLIMIT_NPROC"},       {RLIMIT_NOFILE, "RLIMIT_NOFILE"},
    {RLIMIT_MEMLOCK, "RLIMIT_MEMLOCK"},   {RLIMIT_AS, "RLIMIT_AS"},
    {RLIMIT_LOCKS, "RLIMIT_LOCKS"},       {RLIMIT_SIGPENDING, "RLIMIT_SIGPENDING"},
    {RLIMIT_MSGQUEUE, "RLIMIT_MSGQUEUE"}, {RLIMIT_NICE, "RLIMIT_NICE"},
    {RLIMIT_RTPRIO, "RLIMIT_RTPRIO"},     {RLIMIT_RTTIME, "RLIMIT_RTTIME"},
};

// /proc/PID/limits, no injection (prlimit on another uid would need CAP_SYS_RESOURCE): one line
// per resource in RLIMIT_* order, "%-25s %-20s %-20s %-10s" (name, soft, hard, units).
Result<void> DumpRlimits(DumpContext&, ProcessDump& p, img::ProcessState* ps) {
  std::string path = StrFormat("/proc/%d/limits", p.pid);
  ASSIGN_OR_RETURN(std::string text, fs::ReadFile(path));
  std::vector<std::string> lines = fs::Split(text, '\n');
  size_t want = sizeof(kRlimits) / sizeof(kRlimits[0]);
  if (lines.size() < want + 1) return Err("%s: %zu lines", path.c_str(), lines.size());
  auto value = [&](const std::string& line, size_t at, uint64_t* out) -> Result<void> {
    if (line.size() < at + 1) return Err("%s: short line '%s'", path.c_str(), line.c_str());
    std::string v = fs::Trim(line.substr(at, 21));
    if (v == "unlimited") {
      *out = RLIM_INFINITY;
      return Ok();
    }
    char* end = nullptr;
    errno = 0;
    *out = strtoull(v.c_str(), &end, 10);
    if (v.empty() || errno != 0 || *end != 0)
      return Err("%s: bad value '%s'", path.c_str(), v.c_str());
    return Ok();
  };
  for (size_t i = 0; i < want; ++i) {
    const std::string& line = lines[i + 1];
    auto* o = ps->mutable_rlimits()->add_limits();
    o->set_resource(kRlimits[i].res);
    o->set_name(kRlimits[i].name);
    uint64_t cur = 0, max = 0;
    TRY_CTX(value(line, 26, &cur), "%s soft", kRlimits[i].name);
    TRY_CTX(value(line, 47, &max), "%s hard", kRlimits[i].name);
    o->set_cur(cur);
    o->set_max(max);
  }
  return Ok();
}

Result<std::string> ReadLink(const std::string& path) {
  char buf[PATH_MAX + 1];
  ssize_t n = readlink(path.c_str(), buf, PATH_MAX);
  if (n < 0) return Errno("readlink %s", path.c_str());
  return std::string(buf, n);
}

// A path from a /proc/PID/{cwd,root} link without its " (deleted)" mark; *deleted: it had one.
std::string Undeleted(std::string link, bool* deleted) {
  *deleted = link.size() > 10 && link.compare(link.size() - 10, 10, " (deleted)") == 0;
  if (*deleted) link.resize(link.size() - 10);
  return link;
}

// Permission bits of the directory a /proc/PID/{cwd,root} link points at (also when removed).
Result<uint32_t> DirMode(const std::string& link) {
  struct stat st;
  if (stat(link.c_str(), &st) < 0) return Errno("stat %s", link.c_str());
  return static_cast<uint32_t>(st.st_mode & 07777);
}

// cwd through an injected getcwd: the path as the process itself sees it (under its own root,
// in its own mount namespace), which is what an injected chdir after chroot resolves on restore.
// root through /proc/PID/root, as the dumper sees it ("/" unless chrooted). A removed cwd
// (getcwd says ENOENT) or root: where it was, from the link, and its mode (cwd01/cwd02).
Result<void> DumpFs(DumpContext& ctx, ProcessDump& p, img::ProcessState* ps) {
  auto* fs = ps->mutable_fs();
  std::string root_link = StrFormat("/proc/%d/root", p.pid);
  ASSIGN_OR_RETURN(std::string root_raw, ReadLink(root_link));
  bool root_deleted = false;
  std::string root = Undeleted(root_raw, &root_deleted);
  if (root_deleted) {
    fs->set_root_deleted(true);
    ASSIGN_OR_RETURN(uint32_t mode, DirMode(root_link));
    fs->set_root_mode(mode);
  }
  ASSIGN_OR_RETURN(remote::Remote * r, ctx.RemoteFor(p));
  size_t cap = std::min<size_t>(r->scratch_size(), PATH_MAX + 1);
  uint64_t args[6] = {r->scratch(), cap, 0, 0, 0, 0};
  ASSIGN_OR_RETURN(long n, r->RawSyscallIn(p.pid, SYS_getcwd, args));
  std::string cwd;
  if (n == -ENOENT) {
    // Removed. The link is in our view: under a chroot, take the root's part off.
    std::string cwd_link = StrFormat("/proc/%d/cwd", p.pid);
    ASSIGN_OR_RETURN(std::string raw, ReadLink(cwd_link));
    bool deleted = false;
    cwd = Undeleted(raw, &deleted);
    if (!deleted)
      return MakeError(ErrorKind::kUnsupported, ENOENT, "pid %d: getcwd says ENOENT for %s",
                       p.pid, raw.c_str());
    if (root != "/") {
      if (cwd == root) {
        cwd = "/";
      } else if (cwd.compare(0, root.size() + 1, root + "/") == 0) {
        cwd = cwd.substr(root.size());
      } else {
        return MakeError(ErrorKind::kUnsupported, 0, "pid %d: removed cwd %s is outside its root %s",
                         p.pid, cwd.c_str(), root.c_str());
      }
    }
    // A removed root can only be the cwd itself (a removed directory is empty).
    if (!root_deleted) {
      fs->set_cwd_deleted(true);
      ASSIGN_OR_RETURN(uint32_t mode, DirMode(cwd_link));
      fs->set_cwd_mode(mode);
      struct stat cst;
      if (stat(cwd_link.c_str(), &cst) == 0) {
        fs->set_cwd_dev(cst.st_dev);
        fs->set_cwd_ino(cst.st_ino);
      }
    } else if (cwd != "/") {
      return MakeError(ErrorKind::kUnsupported, 0, "pid %d: cwd %s inside a removed root %s",
                       p.pid, cwd.c_str(), root.c_str());
    }
  } else {
    if (n <= 0 || static_cast<size_t>(n) > cap) {
      errno = n < 0 ? static_cast<int>(-n) : EINVAL;
      return Errno("pid %d: getcwd", p.pid);
    }
    cwd.assign(static_cast<size_t>(n), '\0');
    TRY(r->Read(r->scratch(), cwd.data(), cwd.size()));
    cwd.resize(strnlen(cwd.c_str(), cwd.size()));
    if (cwd.empty() || cwd[0] != '/') {
      // "(unreachable)/...": outside its root (chroot without a chdir). Kept in our view, from
      // the link, and entered before the chroot at restore.
      std::string cwd_link = StrFormat("/proc/%d/cwd", p.pid);
      ASSIGN_OR_RETURN(std::string raw, ReadLink(cwd_link));
      bool deleted = false;
      std::string outside = Undeleted(raw, &deleted);
      if (deleted || outside.empty() || outside[0] != '/')
        return MakeError(ErrorKind::kUnsupported, 0, "pid %d: cwd %s is outside its root %s%s",
                         p.pid, raw.c_str(), root.c_str(), deleted ? " and removed" : "");
      cwd = outside;
      fs->set_cwd_outside_root(true);
    }
  }
  fs->set_cwd(cwd);
  fs->set_root(root);
  std::string path = StrFormat("/proc/%d/status", p.pid);
  ASSIGN_OR_RETURN(auto st, ReadStatus(path));
  ASSIGN_OR_RETURN(std::string um, Field(st, "Umask", path));
  fs->set_umask(static_cast<uint32_t>(strtoul(um.c_str(), nullptr, 8)));
  return Ok();
}

constexpr uint64_t kMembarrierGetRegistrations = 1 << 9;  // MEMBARRIER_CMD_GET_REGISTRATIONS

// personality, dumpable, child subreaper, THP disable, oom_score_adj, loginuid, membarrier
// registrations: per-process flags.
Result<void> DumpProcFlags(DumpContext& ctx, ProcessDump& p, img::ProcessState* ps) {
  ASSIGN_OR_RETURN(std::string pers, fs::ReadFile(StrFormat("/proc/%d/personality", p.pid)));
  ps->set_personality(static_cast<uint32_t>(strtoul(fs::Trim(pers).c_str(), nullptr, 16)));
  ASSIGN_OR_RETURN(remote::Remote * r, ctx.RemoteFor(p));
  ASSIGN_OR_RETURN(long d, r->Syscall(SYS_prctl, PR_GET_DUMPABLE));
  ps->set_dumpable(static_cast<uint32_t>(d));
  TRY(r->Syscall(SYS_prctl, PR_GET_CHILD_SUBREAPER, r->scratch()));
  int sub = 0;
  TRY(r->Read(r->scratch(), &sub, sizeof(sub)));
  ps->set_child_subreaper(sub != 0);
  ASSIGN_OR_RETURN(long thp, r->Syscall(SYS_prctl, PR_GET_THP_DISABLE, 0, 0, 0, 0));
  ps->set_thp_disable(static_cast<uint32_t>(thp));
  ASSIGN_OR_RETURN(std::string oom, fs::ReadFile(StrFormat("/proc/%d/oom_score_adj", p.pid)));
  ps->set_oom_score_adj(atoi(fs::Trim(oom).c_str()));
  auto login = fs::ReadFile(StrFormat("/proc/%d/loginuid", p.pid));
  if (login.ok()) {
    ps->set_has_loginuid(true);
    ps->set_loginuid(static_cast<uint32_t>(strtoul(fs::Trim(*login).c_str(), nullptr, 10)));
  }
  // Registrations are per mm; a kernel without GET_REGISTRATIONS (< 6.3) says EINVAL: none known.
  uint64_t q[6] = {kMembarrierGetRegistrations, 0, 0, 0, 0, 0};
  ASSIGN_OR_RETURN(long mb, r->RawSyscallIn(p.pid, SYS_membarrier, q));
  if (mb > 0) ps->set_membarrier_registrations(static_cast<uint32_t>(mb));
  return Ok();
}

uint64_t Us(const timeval& tv) {
  return static_cast<uint64_t>(tv.tv_sec) * 1000000 + static_cast<uint64_t>(tv.tv_usec);
}
uint64_t Ns(const timespec& ts) {
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ULL + static_cast<uint64_t>(ts.tv_nsec);
}

Result<void> DumpITimers(DumpContext& ctx, ProcessDump& p, img::ProcessState* ps) {
  ASSIGN_OR_RETURN(remote::Remote * r, ctx.RemoteFor(p));
  auto* it = ps->mutable_itimers();
  const std::pair<int, img::ITimer*> which[] = {{ITIMER_REAL, it->mutable_real()},
                                                {ITIMER_VIRTUAL, it->mutable_virt()},
                                                {ITIMER_PROF, it->mutable_prof()}};
  for (const auto& [w, out] : which) {
    itimerval v{};
    TRY_CTX(r->Syscall(SYS_getitimer, w, r->scratch()), "getitimer %d", w);
    TRY(r->Read(r->scratch(), &v, sizeof(v)));
    out->set_interval_us(Us(v.it_interval));
    out->set_value_us(Us(v.it_value));
  }
  return Ok();
}

// /proc/PID/timers: "ID: n", "signal: signo/sigev_value(hex)", "notify: kind/pid|tid.N",
// "ClockID: n" per timer; value and overrun come from injected timer_gettime/getoverrun.
Result<void> DumpPosixTimers(DumpContext& ctx, ProcessDump& p, img::ProcessState* ps) {
  std::string path = StrFormat("/proc/%d/timers", p.pid);
  ASSIGN_OR_RETURN(std::string text, fs::ReadFile(path));
  img::PosixTimer* t = nullptr;
  for (const auto& line : fs::Split(text, '\n')) {
    if (line.empty()) continue;
    size_t colon = line.find(':');
    if (colon == std::string::npos)
      return MakeError(ErrorKind::kGeneric, 0, "%s: bad line '%s'", path.c_str(), line.c_str());
    std::string key = line.substr(0, colon), val = fs::Trim(line.substr(colon + 1));
    if (key == "ID") {
      t = ps->add_timers();
      t->set_id(atoi(val.c_str()));
    } else if (t == nullptr) {
      return Err("%s: '%s' before ID", path.c_str(), line.c_str());
    } else if (key == "signal") {
      size_t slash = val.find('/');
      t->set_signo(atoi(val.c_str()));
      if (slash != std::string::npos)
        t->set_sigev_value(strtoull(val.c_str() + slash + 1, nullptr, 16));
    } else if (key == "notify") {
      char kind[16] = {}, who[8] = {};
      int n = 0;
      if (sscanf(val.c_str(), "%15[a-z]/%7[a-z].%d", kind, who, &n) != 3)
        return Err("%s: bad notify '%s'", path.c_str(), val.c_str());
      int notify = strcmp(kind, "none") == 0     ? SIGEV_NONE
                   : strcmp(kind, "thread") == 0 ? SIGEV_THREAD
                                                 : SIGEV_SIGNAL;
      if (strcmp(who, "tid") == 0) {
        notify |= SIGEV_THREAD_ID;
        t->set_notify_tid(n);
        // Aimed at a thread that has exited (zdtm dead_thread_posix_timer): it can never
        // deliver, and timer_create refuses a tid that is not a thread of the process; kept as
        // an inert timer (SIGEV_NONE), as the kernel keeps it.
        struct stat st;
        if (stat(StrFormat("/proc/%d/task/%d", p.pid, n).c_str(), &st) < 0) {
          notify = SIGEV_NONE;
          t->clear_notify_tid();
        }
      }
      t->set_notify(notify);
    } else if (key == "ClockID") {
      t->set_clock(atoi(val.c_str()));
    }
  }
  if (ps->timers_size() == 0) return Ok();
  ASSIGN_OR_RETURN(remote::Remote * r, ctx.RemoteFor(p));
  for (auto& pt : *ps->mutable_timers()) {
    itimerspec v{};
    TRY_CTX(r->Syscall(SYS_timer_gettime, pt.id(), r->scratch()), "timer_gettime %d", pt.id());
    TRY(r->Read(r->scratch(), &v, sizeof(v)));
    pt.set_value_ns(Ns(v.it_value));
    pt.set_interval_ns(Ns(v.it_interval));
    ASSIGN_OR_RETURN(long ov, r->Syscall(SYS_timer_getoverrun, pt.id()));
    pt.set_overrun(static_cast<int32_t>(ov));
  }
  return Ok();
}

// The process's uid and gid maps as the dumper reads them (identity: the dumper's namespace).
struct UsernsMaps {
  std::vector<idmap::Range> uid, gid;
};

// Translates ids seen from the dumper's user namespace into pid's own.
Result<void> ToOwnUserns(pid_t pid, const std::vector<idmap::Range>& map, const char* which,
                         std::vector<uint64_t>* ids) {
  if (idmap::IsIdentity(map)) return Ok();
  for (auto& id : *ids) {
    auto in = idmap::ToInside(map, static_cast<uint32_t>(id));
    if (!in)
      return MakeError(ErrorKind::kUnsupported, 0, "pid %d: id %llu has no mapping in its %s", pid,
                       static_cast<unsigned long long>(id), which);
    id = *in;
  }
  return Ok();
}

Result<void> DumpCreds(pid_t pid, pid_t tid, remote::Remote* r, const UsernsMaps& maps,
                       img::Creds* c) {
  std::string path = StrFormat("/proc/%d/task/%d/status", pid, tid);
  ASSIGN_OR_RETURN(auto st, ReadStatus(path));
  ASSIGN_OR_RETURN(std::string s, Field(st, "Uid", path));
  ASSIGN_OR_RETURN(auto uids, Numbers(s, 10));
  ASSIGN_OR_RETURN(s, Field(st, "Gid", path));
  ASSIGN_OR_RETURN(auto gids, Numbers(s, 10));
  if (uids.size() != 4 || gids.size() != 4) return Err("%s: bad Uid/Gid lines", path.c_str());
  ASSIGN_OR_RETURN(s, Field(st, "Groups", path));
  ASSIGN_OR_RETURN(auto groups, Numbers(s, 10));
  // Ids are stored as the task's own user namespace sees them (what an injected setresuid in the
  // restored task takes); status shows them as the dumper's namespace does.
  TRY(ToOwnUserns(pid, maps.uid, "uid_map", &uids));
  TRY(ToOwnUserns(pid, maps.gid, "gid_map", &gids));
  TRY(ToOwnUserns(pid, maps.gid, "gid_map", &groups));
  c->set_uid(uids[0]);
  c->set_euid(uids[1]);
  c->set_suid(uids[2]);
  c->set_fsuid(uids[3]);
  c->set_gid(gids[0]);
  c->set_egid(gids[1]);
  c->set_sgid(gids[2]);
  c->set_fsgid(gids[3]);
  for (uint64_t g : groups) c->add_groups(static_cast<uint32_t>(g));
  const std::pair<const char*, void (img::Creds::*)(uint64_t)> caps[] = {
      {"CapInh", &img::Creds::set_cap_inheritable},
      {"CapPrm", &img::Creds::set_cap_permitted},
      {"CapEff", &img::Creds::set_cap_effective},
      {"CapBnd", &img::Creds::set_cap_bounding},
      {"CapAmb", &img::Creds::set_cap_ambient}};
  for (const auto& [key, set] : caps) {
    ASSIGN_OR_RETURN(s, Field(st, key, path));
    ASSIGN_OR_RETURN(auto v, Numbers(s, 16));
    if (v.size() != 1) return Err("%s: bad %s line", path.c_str(), key);
    (c->*set)(v[0]);
  }
  ASSIGN_OR_RETURN(s, Field(st, "NoNewPrivs", path));
  c->set_no_new_privs(s == "1");
  ASSIGN_OR_RETURN(long bits, r->SyscallIn(tid, SYS_prctl, PR_GET_SECUREBITS));
  c->set_securebits(static_cast<uint32_t>(bits));
  return Ok();
}

Result<void> DumpSeccomp(pid_t pid, pid_t tid, img::Seccomp* sc) {
  std::string path = StrFormat("/proc/%d/task/%d/status", pid, tid);
  ASSIGN_OR_RETURN(auto st, ReadStatus(path));
  ASSIGN_OR_RETURN(std::string s, Field(st, "Seccomp", path));
  sc->set_mode(static_cast<uint32_t>(atoi(s.c_str())));
  if (sc->mode() != 2 /* SECCOMP_MODE_FILTER */) return Ok();
  for (unsigned long i = 0;; ++i) {
    long n = ptrace(static_cast<__ptrace_request>(0x420c /* PTRACE_SECCOMP_GET_FILTER */), tid,
                    reinterpret_cast<void*>(i), nullptr);
    if (n < 0 && errno == ENOENT) break;
    if (n < 0) return Errno("PTRACE_SECCOMP_GET_FILTER %d #%lu", tid, i);
    std::string insns(static_cast<size_t>(n) * sizeof(sock_filter), '\0');
    if (ptrace(static_cast<__ptrace_request>(0x420c), tid, reinterpret_cast<void*>(i),
               insns.data()) < 0)
      return Errno("PTRACE_SECCOMP_GET_FILTER %d #%lu", tid, i);
    struct {
      uint64_t filter_off;
      uint64_t flags;
    } meta = {i, 0};
    if (ptrace(static_cast<__ptrace_request>(0x420d /* PTRACE_SECCOMP_GET_METADATA */), tid,
               reinterpret_cast<void*>(sizeof(meta)), &meta) < 0)
      return Errno("PTRACE_SECCOMP_GET_METADATA %d #%lu", tid, i);
    auto* f = sc->add_filters();
    f->set_insns(std::move(insns));
    f->set_flags(meta.flags);
  }
  return Ok();
}

// Ids are stored as the tree's user namespace sees them (ToOwnUserns) and a restore puts the
// whole tree in one: a process in another one than the tree's root cannot be restored.
Result<void> CheckSameUserns(pid_t root, pid_t pid) {
  ASSIGN_OR_RETURN(bool same, SameUserns(root, pid));
  if (!same)
    return MakeError(ErrorKind::kUnsupported, 0,
                     "pid %d is in another user namespace than the tree's root %d: not supported",
                     pid, root);
  return Ok();
}

Result<void> DumpThreads(DumpContext& ctx, ProcessDump& p, img::ProcessState* ps) {
  ASSIGN_OR_RETURN(remote::Remote * r, ctx.RemoteFor(p));
  TRY(CheckSameUserns(ctx.opts.pid, p.pid));
  UsernsMaps maps;
  ASSIGN_OR_RETURN(maps.uid, idmap::Read(p.pid, "uid_map"));
  ASSIGN_OR_RETURN(maps.gid, idmap::Read(p.pid, "gid_map"));
  for (pid_t tid : p.entry->threads()) {
    auto* t = ps->add_threads();
    t->set_tid(tid);
    // sigaltstack: stack_t {void* ss_sp; int ss_flags; size_t ss_size;}
    stack_t ss{};
    TRY_CTX(r->SyscallIn(tid, SYS_sigaltstack, 0, r->scratch()), "sigaltstack in %d", tid);
    TRY(r->Read(r->scratch(), &ss, sizeof(ss)));
    t->mutable_altstack()->set_sp(reinterpret_cast<uint64_t>(ss.ss_sp));
    t->mutable_altstack()->set_size(ss.ss_size);
    t->mutable_altstack()->set_flags(ss.ss_flags & ~SS_ONSTACK);
    TRY_CTX(DumpCreds(p.pid, tid, r, maps, t->mutable_creds()), "creds of %d", tid);
    SchedAttr sa{};
    if (syscall(SYS_sched_getattr, tid, &sa, sizeof(sa), 0) < 0)
      return Errno("sched_getattr %d", tid);
    auto* s = t->mutable_sched();
    s->set_policy(sa.sched_policy);
    s->set_flags(sa.sched_flags);
    s->set_nice(sa.sched_nice);
    s->set_priority(sa.sched_priority);
    s->set_runtime(sa.sched_runtime);
    s->set_deadline(sa.sched_deadline);
    s->set_period(sa.sched_period);
    s->set_util_min(sa.sched_util_min);
    s->set_util_max(sa.sched_util_max);
    cpu_set_t cpus;
    CPU_ZERO(&cpus);
    if (sched_getaffinity(tid, sizeof(cpus), &cpus) == 0)
      t->set_cpu_affinity(std::string(reinterpret_cast<const char*>(&cpus), sizeof(cpus)));
    TRY_CTX(r->SyscallIn(tid, SYS_prctl, PR_GET_PDEATHSIG, r->scratch()), "pdeathsig in %d", tid);
    int sig = 0;
    TRY(r->Read(r->scratch(), &sig, sizeof(sig)));
    t->set_pdeathsig(sig);
    ASSIGN_OR_RETURN(long slack, r->SyscallIn(tid, SYS_prctl, PR_GET_TIMERSLACK));
    t->set_timer_slack_ns(static_cast<uint64_t>(slack));
    TRY_CTX(DumpSeccomp(p.pid, tid, t->mutable_seccomp()), "seccomp of %d", tid);
  }
  return Ok();
}

struct Kind {
  const char* name;
  Result<void> (*fn)(DumpContext&, ProcessDump&, img::ProcessState*);
};

// Collectors, one per kind (restore/pstate_*.cc has the matching restore steps).
constexpr Kind kKinds[] = {
    {"handlers", DumpHandlers}, {"rlimits", DumpRlimits}, {"fs", DumpFs},
    {"flags", DumpProcFlags},   {"itimers", DumpITimers}, {"posix-timers", DumpPosixTimers},
    {"threads", DumpThreads},  // sigaltstack, creds, sched, pdeathsig, timer slack, seccomp
};

// One line for `godwit inspect`: "uid 2000/2001 gid 1000 caps 0x420 | 3 handlers, 2 ignored |
// cwd /srv root / umask 022 | 4 POSIX timers, itimer real | seccomp 2 filters".
std::string Summarize(const google::protobuf::Message& m) {
  const auto* ps = dynamic_cast<const img::ProcessState*>(&m);
  if (ps == nullptr || ps->threads_size() == 0) return "";
  const auto& c = ps->threads(0).creds();
  int caught = 0, ignored = 0;
  for (const auto& a : ps->handlers().actions()) {
    if (a.handler() == 1)
      ignored++;
    else if (a.handler() != 0)
      caught++;
  }
  std::string s = StrFormat(
      "pid %d: uid %u/%u gid %u/%u caps %#llx | %d handlers, %d ignored | "
      "cwd %s root %s umask %03o",
      ps->pid(), c.uid(), c.euid(), c.gid(), c.egid(),
      static_cast<unsigned long long>(c.cap_effective()), caught, ignored, ps->fs().cwd().c_str(),
      ps->fs().root().c_str(), ps->fs().umask());
  if (ps->timers_size() > 0) s += StrFormat(" | %d POSIX timers", ps->timers_size());
  if (ps->itimers().real().value_us() || ps->itimers().virt().value_us() ||
      ps->itimers().prof().value_us())
    s += " | itimers armed";
  if (ps->threads(0).seccomp().mode() != 0)
    s += StrFormat(" | seccomp mode %u (%d filters)", ps->threads(0).seccomp().mode(),
                   ps->threads(0).seccomp().filters_size());
  return s;
}

[[maybe_unused]] const bool kSummaryRegistered =
    images::RegisterSummary("godwit.img.ProcessState", &Summarize);

}  // namespace

Result<void> DumpPstate(DumpContext& ctx, ProcessDump& p) {
  img::ProcessState ps;
  ps.set_pid(p.pid);
  timing::PhaseTimer t;
  for (const auto& k : kKinds) {
    TRY_CTX(k.fn(ctx, p, &ps), "%s", k.name);
    t.Lap(k.name);
  }
  std::string laps;
  for (const auto& [k, ms] : t.phases()) laps += StrFormat(" %s %.2f", k.c_str(), ms);
  LOG_DEBUG("pid %d: pstate (ms):%s", p.pid, laps.c_str());
  return images::WriteImage(*ctx.sink, StrFormat("pstate-%d.img", p.pid), ps);
}

Result<bool> SameUserns(pid_t a, pid_t b) {
  auto path = [](pid_t p) {
    return StrFormat("/proc/%s/ns/user", p ? std::to_string(p).c_str() : "self");
  };
  struct stat x, y;
  if (::stat(path(a).c_str(), &x) < 0) return Errno("stat %s", path(a).c_str());
  if (::stat(path(b).c_str(), &y) < 0) return Errno("stat %s", path(b).c_str());
  return x.st_ino == y.st_ino && x.st_dev == y.st_dev;
}

}  // namespace godwit::dump
