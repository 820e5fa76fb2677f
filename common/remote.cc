#include "common/remote.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "common/fs.h"
#include "common/log.h"
#include "common/proc.h"
#include "common/scope_exit.h"

namespace godwit::remote {
namespace {

// Kernel-internal restart codes (include/linux/errno.h), visible in rax at a ptrace stop.
constexpr long kERestartSys = 512;
constexpr long kERestartNoIntr = 513;
constexpr long kERestartNoHand = 514;
constexpr long kERestartRestartBlock = 516;
constexpr uint64_t kSyscallInsnLen = 2;

Error ThreadGone(pid_t tid, int status) {
  if (WIFEXITED(status))
    return MakeError(ErrorKind::kNotFound, ESRCH, "thread %d exited with status %d", tid,
                     WEXITSTATUS(status));
  return MakeError(ErrorKind::kNotFound, ESRCH, "thread %d was killed by signal %d", tid,
                   WTERMSIG(status));
}

// The first `syscall` instruction in [start, end) of pid, read in chunks; 0 if none.
uint64_t FindSyscallIn(pid_t pid, uint64_t start, uint64_t end) {
  std::vector<unsigned char> buf(64 * 1024 + 1);
  for (uint64_t at = start; at < end; at += buf.size() - 1) {
    size_t len = std::min<uint64_t>(buf.size(), end - at);
    iovec local{buf.data(), len}, remote{reinterpret_cast<void*>(at), len};
    ssize_t n = process_vm_readv(pid, &local, 1, &remote, 1, 0);
    if (n <= 1) return 0;
    for (ssize_t i = 0; i + 1 < n; ++i)
      if (buf[i] == 0x0f && buf[i + 1] == 0x05) return at + i;
  }
  return 0;
}

// A `syscall` instruction in pid: in its [vdso], or, for a process that unmapped it (zdtm
// vdso02), in any other executable mapping (its libc has many).
Result<uint64_t> FindSyscallInVdso(pid_t pid) {
  ASSIGN_OR_RETURN(auto maps, proc::ReadMaps(pid));
  for (const auto& m : maps)
    if (m.path == "[vdso]")
      if (uint64_t at = FindSyscallIn(pid, m.start, m.end)) return at;
  for (const auto& m : maps)
    if ((m.prot & PROT_EXEC) && m.path != "[vdso]" && m.path != "[vsyscall]")
      if (uint64_t at = FindSyscallIn(pid, m.start, m.end)) return at;
  return MakeError(ErrorKind::kUnsupported, 0,
                   "process %d has no syscall instruction in an executable mapping", pid);
}

}  // namespace

Result<int> WaitStop(pid_t tid) {
  for (;;) {
    int status = 0;
    pid_t r = waitpid(tid, &status, __WALL);
    if (r < 0) {
      if (errno == EINTR) continue;
      if (errno == ECHILD)
        return MakeError(ErrorKind::kNotFound, ESRCH, "waitpid %d: no such traced thread", tid);
      return Errno("waitpid %d", tid);
    }
    if (WIFSTOPPED(status)) return status;
    return ThreadGone(tid, status);
  }
}

Result<void> SeizeAndInterrupt(pid_t tid, unsigned long options) {
  if (ptrace(PTRACE_SEIZE, tid, nullptr, options) < 0) {
    if (errno == ESRCH) return MakeError(ErrorKind::kNotFound, ESRCH, "seize %d: gone", tid);
    return Errno("PTRACE_SEIZE %d", tid);
  }
  if (ptrace(PTRACE_INTERRUPT, tid, nullptr, nullptr) < 0) return Errno("PTRACE_INTERRUPT %d", tid);
  // The first stop is the interrupt (PTRACE_EVENT_STOP) or a signal-delivery stop that raced with
  // it; for the latter keep the signal pending by not continuing: it shows up in PEEKSIGINFO only
  // if we re-queue it, so resume with it and wait for the interrupt stop.
  for (;;) {
    ASSIGN_OR_RETURN(int status, WaitStop(tid));
    if ((status >> 16) == PTRACE_EVENT_STOP) return Ok();
    int sig = WSTOPSIG(status);
    if (ptrace(PTRACE_CONT, tid, nullptr, reinterpret_cast<void*>(static_cast<long>(sig))) < 0)
      return Errno("PTRACE_CONT %d", tid);
  }
}

Result<user_regs_struct> GetRegs(pid_t tid) {
  user_regs_struct regs;
  if (ptrace(PTRACE_GETREGS, tid, nullptr, &regs) < 0) return Errno("PTRACE_GETREGS %d", tid);
  return regs;
}

Result<void> SetRegs(pid_t tid, const user_regs_struct& regs) {
  if (ptrace(PTRACE_SETREGS, tid, nullptr, &regs) < 0) return Errno("PTRACE_SETREGS %d", tid);
  return Ok();
}

void PrepareSyscallRestart(user_regs_struct* r, bool live) {
  long nr = static_cast<long>(r->orig_rax);
  long ret = static_cast<long>(r->rax);
  if (nr >= 0) {
    switch (-ret) {
      case kERestartSys:
      case kERestartNoIntr:
      case kERestartNoHand:
        r->rax = r->orig_rax;
        r->rip -= kSyscallInsnLen;
        break;
      case kERestartRestartBlock:
        if (live) {
          r->rax = SYS_restart_syscall;
          r->rip -= kSyscallInsnLen;
        } else if (nr == SYS_nanosleep) {
          // nanosleep(req=rdi, rem=rsi): the kernel wrote the remaining time to *rem when it was
          // interrupted; sleep that long. Without rem, sleep the whole request again.
          if (r->rsi != 0) r->rdi = r->rsi;
          r->rax = nr;
          r->rip -= kSyscallInsnLen;
        } else if (nr == SYS_clock_nanosleep) {
          // clock_nanosleep(clock=rdi, flags=rsi, req=rdx, rem=r10); TIMER_ABSTIME needs nothing.
          if (!(r->rsi & 1) && r->r10 != 0) r->rdx = r->r10;
          r->rax = nr;
          r->rip -= kSyscallInsnLen;
        } else if (nr == SYS_poll && static_cast<int>(r->rdx) < 0) {
          // poll(fds=rdi, nfds=rsi, timeout=rdx) always interrupts with a restart block; without
          // a timeout there is nothing to lose: wait again.
          r->rax = nr;
          r->rip -= kSyscallInsnLen;
        } else {
          r->rax = static_cast<uint64_t>(-EINTR);
        }
        break;
      default:
        break;
    }
  }
  r->orig_rax = static_cast<uint64_t>(-1);
}

Result<void> EnterReissuedSyscalls(const std::vector<pid_t>& tids,
                                   std::map<pid_t, int>* detach_sig) {
  std::vector<pid_t> stepping;
  for (pid_t tid : tids) {
    auto regs = GetRegs(tid);
    if (!regs.ok()) continue;  // gone: nothing to step
    errno = 0;
    long word = ptrace(PTRACE_PEEKTEXT, tid, reinterpret_cast<void*>(regs->rip), nullptr);
    if (errno != 0) continue;                 // unreadable: it faults either way
    if ((word & 0xffff) != 0x050f) continue;  // not at a `syscall` instruction
    if (ptrace(PTRACE_SYSCALL, tid, nullptr, nullptr) < 0) return Errno("PTRACE_SYSCALL %d", tid);
    stepping.push_back(tid);
  }
  for (pid_t tid : stepping) {
    ASSIGN_OR_RETURN(int st, WaitStop(tid));
    int sig = WSTOPSIG(st);
    if (sig == (SIGTRAP | 0x80)) continue;  // syscall-entry stop: detach here
    if ((st >> 16) == 0 && sig != SIGTRAP) (*detach_sig)[tid] = sig;  // signal-delivery stop
  }
  return Ok();
}

Result<std::unique_ptr<Remote>> Remote::Create(pid_t pid, pid_t tid, const Options& opts) {
  std::unique_ptr<Remote> r(new Remote());
  r->pid_ = pid;
  r->tid_ = tid;
  r->size_ = (opts.size + 4095) & ~size_t{4095};
  uint64_t insn = opts.bootstrap_syscall;
  if (insn == 0) {
    ASSIGN_OR_RETURN(insn, FindSyscallInVdso(pid));
  }
  uint64_t args[6] = {
      opts.at,
      r->size_,
      PROT_READ | PROT_WRITE | PROT_EXEC,
      static_cast<uint64_t>(MAP_PRIVATE | MAP_ANONYMOUS | (opts.at ? MAP_FIXED_NOREPLACE : 0)),
      static_cast<uint64_t>(-1),
      0};
  ASSIGN_OR_RETURN(long addr, r->Inject(tid, SYS_mmap, args, insn, false));
  if (addr < 0 && addr > -4096)
    return MakeError(ErrorKind::kGeneric, static_cast<int>(-addr),
                     "injected mmap of the scratch area in %d at %#lx", pid,
                     static_cast<unsigned long>(opts.at));
  r->area_ = static_cast<uint64_t>(addr);
  r->mapped_ = true;
  // syscall; int3
  const unsigned char code[] = {0x0f, 0x05, 0xcc};
  TRY_CTX(r->Write(r->area_, code, sizeof(code)), "write the syscall trampoline in %d", pid);
  return r;
}

Remote::~Remote() = default;

Result<user_regs_struct> Remote::OriginalRegs(pid_t tid) {
  auto it = saved_.find(tid);
  if (it != saved_.end()) return it->second;
  ASSIGN_OR_RETURN(user_regs_struct regs, GetRegs(tid));
  saved_[tid] = regs;
  return regs;
}

Result<long> Remote::Inject(pid_t tid, long nr, const uint64_t args[6], uint64_t insn, bool int3) {
  ASSIGN_OR_RETURN(user_regs_struct regs, OriginalRegs(tid));
  regs.rip = insn;
  regs.rax = nr;
  regs.orig_rax = static_cast<uint64_t>(-1);
  regs.rdi = args[0];
  regs.rsi = args[1];
  regs.rdx = args[2];
  regs.r10 = args[3];
  regs.r8 = args[4];
  regs.r9 = args[5];
  TRY(SetRegs(tid, regs));
  // Block every signal while the injected syscall runs: one that arrives now (a SIGCHLD from a
  // child being killed, a signal from outside) stays pending with its siginfo, is dumped with
  // the pending signals or delivered after release, instead of being swallowed here.
  uint64_t mask = 0;
  if (ptrace(PTRACE_GETSIGMASK, tid, sizeof(mask), &mask) < 0)
    return Errno("PTRACE_GETSIGMASK %d", tid);
  // With int3 SIGTRAP stays open: the trap is forced (force_sig), and a forced signal that is
  // blocked or ignored has its disposition reset to SIG_DFL by the kernel: the process's own
  // SIGTRAP handler would be gone after the dump or the restore (zdtm sigtrap). RawSyscallIn
  // uses int3 only where no SIGTRAP is pending or ignored (TrapSafe).
  const uint64_t all = int3 ? ~(uint64_t{1} << (SIGTRAP - 1)) : ~uint64_t{0};
  if (ptrace(PTRACE_SETSIGMASK, tid, sizeof(all), &all) < 0)
    return Errno("PTRACE_SETSIGMASK %d", tid);
  ScopeExit unblock([&] { ptrace(PTRACE_SETSIGMASK, tid, sizeof(mask), &mask); });
  ++calls_;
  int syscall_stops = 0;
  long req = int3 ? PTRACE_CONT : PTRACE_SYSCALL;
  for (;;) {
    if (ptrace(static_cast<__ptrace_request>(req), tid, nullptr, nullptr) < 0)
      return Errno("resume %d for injected syscall %ld", tid, nr);
    ASSIGN_OR_RETURN(int status, WaitStop(tid));
    int sig = WSTOPSIG(status);
    int event = status >> 16;
    if (event != 0) continue;  // clone/exec events, group stops: keep going
    if (sig == (SIGTRAP | 0x80)) {
      if (!int3 && ++syscall_stops == 2) break;  // entry, then exit
      continue;
    }
    if (sig == SIGTRAP && int3) {
      siginfo_t si{};
      if (ptrace(PTRACE_GETSIGINFO, tid, nullptr, &si) == 0 && si.si_code != SI_KERNEL) {
        // A SIGTRAP sent from outside while the call ran (not our int3): it is taken (the
        // process never had a way to see it); later calls step by syscall stops.
        LOG_WARN("pid %d tid %d: SIGTRAP (code %d) from pid %d during an injected syscall",
                 pid_, tid, si.si_code, si.si_pid);
        trap_unsafe_ = true;
        continue;
      }
      break;
    }
    // Only SIGKILL, SIGSTOP and faults get through the full mask. A SIGKILL ends the wait with
    // an error in WaitStop. A SIGSTOP sent from outside during the dump cannot stay pending:
    // suppress it (the task is held by us anyway). Anything else is a kernel-generated
    // synchronous signal (a fault in the trampoline): report it, don't loop on it.
    if (sig == SIGSTOP) {
      LOG_WARN("pid %d tid %d: SIGSTOP arrived during an injected syscall; suppressed", pid_, tid);
      continue;
    }
    return MakeError(ErrorKind::kGeneric, 0,
                     "pid %d tid %d: signal %d while running injected syscall %ld", pid_, tid, sig,
                     nr);
  }
  ASSIGN_OR_RETURN(user_regs_struct out, GetRegs(tid));
  return static_cast<long>(out.rax);
}

// Whether a call sets SIGTRAP's disposition or queues a SIGTRAP: after it, the int3 of the next
// calls could reset that disposition (SIG_IGN) or meet that signal.
static bool TouchesSigtrap(long nr, const uint64_t a[6]) {
  switch (nr) {
    case SYS_rt_sigaction:
      return a[0] == SIGTRAP && a[1] != 0;
    case SYS_kill:
    case SYS_tkill:
    case SYS_rt_sigqueueinfo:
      return a[1] == SIGTRAP;
    case SYS_tgkill:
    case SYS_rt_tgsigqueueinfo:
      return a[2] == SIGTRAP;
    default:
      return false;
  }
}

// int3 (one stop per call) is safe in a thread where SIGTRAP is neither pending (the open
// SIGTRAP would deliver it to us instead of the trap) nor ignored (the forced trap would reset it
// to SIG_DFL); elsewhere calls step by syscall-entry and -exit stops, which raise no signal.
bool Remote::TrapSafe(pid_t tid) {
  if (trap_unsafe_) return false;
  auto it = trap_safe_.find(tid);
  if (it != trap_safe_.end()) return it->second;
  bool safe = false;
  auto text = fs::ReadFile(StrFormat("/proc/%d/task/%d/status", pid_, tid));
  if (text.ok()) {
    const uint64_t bit = uint64_t{1} << (SIGTRAP - 1);
    int seen = 0;
    safe = true;
    for (const auto& line : fs::Split(*text, '\n')) {
      for (const char* f : {"SigPnd:", "ShdPnd:", "SigIgn:"}) {
        if (line.rfind(f, 0) != 0) continue;
        ++seen;
        if (strtoull(line.c_str() + strlen(f), nullptr, 16) & bit) safe = false;
      }
    }
    if (seen != 3) safe = false;
  }
  trap_safe_[tid] = safe;
  return safe;
}

Result<long> Remote::RawSyscallIn(pid_t tid, long nr, const uint64_t args[6]) {
  if (!mapped_) return Err("remote %d: scratch area is gone", pid_);
  bool touches = TouchesSigtrap(nr, args);
  bool int3 = !touches && TrapSafe(tid);
  auto ret = Inject(tid, nr, args, area_, int3);
  if (touches) trap_unsafe_ = true;
  return ret;
}

Result<bool> Remote::RunCode(uint64_t addr) {
  if (!mapped_) return Err("remote %d: scratch area is gone", pid_);
  if (addr < scratch() || addr >= area_ + size_)
    return Err("remote %d: code at %#lx is outside the scratch area", pid_,
               static_cast<unsigned long>(addr));
  if (!TrapSafe(tid_)) return false;
  const uint64_t none[6] = {};
  TRY(Inject(tid_, 0, none, addr, /*int3=*/true));
  return true;
}

Result<long> Remote::SyscallIn(pid_t tid, long nr, uint64_t a0, uint64_t a1, uint64_t a2,
                               uint64_t a3, uint64_t a4, uint64_t a5) {
  uint64_t args[6] = {a0, a1, a2, a3, a4, a5};
  ASSIGN_OR_RETURN(long ret, RawSyscallIn(tid, nr, args));
  if (ret < 0 && ret > -4096)
    return MakeError(ret == -ENOENT ? ErrorKind::kNotFound : ErrorKind::kGeneric,
                     static_cast<int>(-ret), "injected syscall %ld in %d/%d", nr, pid_, tid);
  return ret;
}

Result<long> Remote::Syscall(long nr, uint64_t a0, uint64_t a1, uint64_t a2, uint64_t a3,
                             uint64_t a4, uint64_t a5) {
  return SyscallIn(tid_, nr, a0, a1, a2, a3, a4, a5);
}

Result<void> Remote::Read(uint64_t addr, void* buf, size_t len) {
  iovec local{buf, len}, remote{reinterpret_cast<void*>(addr), len};
  ssize_t n = process_vm_readv(pid_, &local, 1, &remote, 1, 0);
  if (n == static_cast<ssize_t>(len)) return Ok();
  if (!mem_) {
    ASSIGN_OR_RETURN(mem_, fs::Open(StrFormat("/proc/%d/mem", pid_), O_RDWR));
  }
  if (pread(mem_.get(), buf, len, static_cast<off_t>(addr)) != static_cast<ssize_t>(len))
    return Errno("read %zu bytes at %#lx in %d", len, static_cast<unsigned long>(addr), pid_);
  return Ok();
}

Result<void> Remote::Write(uint64_t addr, const void* buf, size_t len) {
  iovec local{const_cast<void*>(buf), len}, remote{reinterpret_cast<void*>(addr), len};
  ssize_t n = process_vm_writev(pid_, &local, 1, &remote, 1, 0);
  if (n == static_cast<ssize_t>(len)) return Ok();
  if (!mem_) {
    ASSIGN_OR_RETURN(mem_, fs::Open(StrFormat("/proc/%d/mem", pid_), O_RDWR));
  }
  if (pwrite(mem_.get(), buf, len, static_cast<off_t>(addr)) != static_cast<ssize_t>(len))
    return Errno("write %zu bytes at %#lx in %d", len, static_cast<unsigned long>(addr), pid_);
  return Ok();
}

Result<uint64_t> Remote::WriteString(size_t off, const std::string& s) {
  if (off + s.size() + 1 > scratch_size())
    return Err("remote %d: string of %zu bytes does not fit the scratch area", pid_, s.size());
  TRY(Write(scratch() + off, s.c_str(), s.size() + 1));
  return scratch() + off;
}

Result<void> Remote::Unmap(bool restore_regs) {
  if (!mapped_) return Ok();
  // The syscall instruction lies in the area being unmapped: step with PTRACE_SYSCALL so the
  // thread stops at syscall exit, before it would return into the hole.
  uint64_t args[6] = {area_, size_, 0, 0, 0, 0};
  ASSIGN_OR_RETURN(long ret, Inject(tid_, SYS_munmap, args, area_, false));
  if (ret != 0)
    return MakeError(ErrorKind::kGeneric, static_cast<int>(-ret), "munmap scratch in %d", pid_);
  mapped_ = false;
  if (restore_regs) {
    for (auto& [tid, regs] : saved_) {
      user_regs_struct r = regs;
      // Every touched thread now sits in a syscall-exit or trap stop, where the kernel no longer
      // applies its syscall-restart logic: do it ourselves.
      PrepareSyscallRestart(&r, /*live=*/true);
      TRY(SetRegs(tid, r));
    }
  }
  return Ok();
}

Result<void> Remote::Release() { return Unmap(true); }
Result<void> Remote::UnmapFinal() { return Unmap(false); }

}  // namespace godwit::remote
