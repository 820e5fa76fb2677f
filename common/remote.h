// Remote syscall injection through ptrace: run system calls inside a seized, stopped process.
//
// The checkpoint engine needs state that only the process itself can read or set (brk, the
// clear-child-tid address, signal handlers, timers, a userfaultfd, the whole address space on
// restore). Instead of CRIU's parasite blob, godwit sets a stopped thread's registers to
// "syscall nr(a0..a5)" at a `syscall` instruction, resumes it until the call returns and reads
// rax: ~12 us per call here.
//
// Bootstrap: the first call (an mmap of the scratch area) runs at a `syscall` instruction found in
// the target's [vdso], stepping with PTRACE_SYSCALL (entry stop, exit stop). The scratch area then
// holds `syscall; int3` so later calls need one stop only (the int3's SIGTRAP, suppressed; where
// SIGTRAP is pending or ignored, calls step by syscall stops instead: see TrapSafe). The
// rest of the area is scratch memory for syscall arguments (paths, structs, iovecs).
//
// Usage (dump side, a tree frozen with Seize):
//   ASSIGN_OR_RETURN(auto r, remote::Remote::Create(pid, pid, {}));
//   ASSIGN_OR_RETURN(long brk, r->Syscall(SYS_brk, 0));
//   TRY(r->Write(r->scratch(), &act, sizeof act));               // arguments go to scratch
//   ASSIGN_OR_RETURN(long ret, r->SyscallIn(tid, SYS_sigaltstack, 0, r->scratch()));
//   TRY(r->Release());   // unmaps the area, puts every touched thread's registers back
// The caller owns the ptrace attachment (Seize/Detach); Remote never detaches.
//
// Errors: a syscall that returns -errno is an Error with that errno (Syscall); RawSyscall returns
// the kernel's value as is. A thread that dies while injecting is kNotFound.
#pragma once

#include <sys/types.h>
#include <sys/user.h>

#include <cstdint>
#include <map>
#include <memory>
#include <vector>

#include "common/result.h"
#include "common/unique_fd.h"

namespace godwit::remote {

// PTRACE_SEIZE + PTRACE_INTERRUPT and wait for the stop. options: PTRACE_O_*.
Result<void> SeizeAndInterrupt(pid_t tid, unsigned long options);
// Waits until tid reports a ptrace stop; returns the wait status. Exits are kNotFound.
Result<int> WaitStop(pid_t tid);
Result<user_regs_struct> GetRegs(pid_t tid);
Result<void> SetRegs(pid_t tid, const user_regs_struct& regs);

// Turns the registers of a thread stopped inside an interrupted syscall into registers that re-run
// it (as the kernel does on signal return without a handler): rax=-ERESTARTSYS & co -> re-issue
// the same call. -ERESTART_RESTARTBLOCK: live=true re-issues restart_syscall (the kernel's restart
// block is intact); live=false (a restored task, whose restart block is gone) re-issues
// nanosleep/clock_nanosleep with the remaining time the kernel wrote to *rem, else returns -EINTR.
// Always sets orig_rax = -1 so the kernel applies no restart logic of its own.
void PrepareSyscallRestart(user_regs_struct* regs, bool live);

// Threads about to re-issue an interrupted call (rip at a `syscall` instruction, as
// PrepareSyscallRestart leaves them) are stepped with PTRACE_SYSCALL into the call's syscall-entry
// stop, to be detached there: detached before the instruction, a signal arriving in between would
// run its handler first and the call would then sleep again (a lost wake-up). A thread that
// reports a signal-delivery stop instead gets the signal in (*detach_sig)[tid]: pass it to
// PTRACE_DETACH. Threads must be ptrace-stopped; other threads are left as they are.
Result<void> EnterReissuedSyscalls(const std::vector<pid_t>& tids, std::map<pid_t, int>* detach_sig);

class Remote {
 public:
  struct Options {
    uint64_t at = 0;                 // address of the area (MAP_FIXED_NOREPLACE); 0: kernel chooses
    size_t size = 256 * 1024;        // whole area, code included
    uint64_t bootstrap_syscall = 0;  // a `syscall` instruction in the target; 0: search [vdso]
  };
  // pid's thread tid must be ptrace-stopped by the caller.
  static Result<std::unique_ptr<Remote>> Create(pid_t pid, pid_t tid, const Options& opts);
  ~Remote();

  // Runs syscall nr in the main thread (tid given to Create) or in another stopped thread.
  Result<long> Syscall(long nr, uint64_t a0 = 0, uint64_t a1 = 0, uint64_t a2 = 0, uint64_t a3 = 0,
                       uint64_t a4 = 0, uint64_t a5 = 0);
  Result<long> SyscallIn(pid_t tid, long nr, uint64_t a0 = 0, uint64_t a1 = 0, uint64_t a2 = 0,
                         uint64_t a3 = 0, uint64_t a4 = 0, uint64_t a5 = 0);
  // The kernel's return value as is (-errno on failure); Error only if ptrace failed.
  Result<long> RawSyscallIn(pid_t tid, long nr, const uint64_t args[6]);
  // Runs code the caller wrote at addr (in the scratch area) in the main thread until its int3:
  // a batch of calls for one stop instead of one each (~12 us). The code may clobber any
  // register (each injection sets them all; Release puts the originals back). Only where the int3
  // is safe (see TrapSafe): false (nothing ran) otherwise; the caller then makes single calls.
  Result<bool> RunCode(uint64_t addr);

  // Scratch memory in the target for arguments: [scratch(), scratch()+scratch_size()).
  uint64_t scratch() const { return area_ + kCodeSize; }
  size_t scratch_size() const { return size_ - kCodeSize; }
  uint64_t area_start() const { return area_; }
  uint64_t area_end() const { return area_ + size_; }
  pid_t pid() const { return pid_; }
  pid_t tid() const { return tid_; }

  // Target memory. Write falls back to /proc/PID/mem (which ignores page protection).
  Result<void> Read(uint64_t addr, void* buf, size_t len);
  Result<void> Write(uint64_t addr, const void* buf, size_t len);
  // Writes a NUL-terminated string at scratch()+off; returns its address.
  Result<uint64_t> WriteString(size_t off, const std::string& s);

  // The registers the thread had before the first injected call (cached).
  Result<user_regs_struct> OriginalRegs(pid_t tid);

  // Dump side: unmaps the area and puts back every touched thread's original registers (an
  // interrupted syscall is set up to restart). The process looks untouched afterwards.
  Result<void> Release();
  // Restore side: unmaps the area with the last call; the thread is left in its syscall-exit stop
  // with whatever registers the caller sets next. Nothing is put back.
  Result<void> UnmapFinal();

  // Calls made so far (for statistics).
  uint64_t calls() const { return calls_; }

 private:
  static constexpr size_t kCodeSize = 64;
  Remote() = default;
  Result<long> Inject(pid_t tid, long nr, const uint64_t args[6], uint64_t insn, bool int3);
  Result<void> Unmap(bool restore_regs);
  bool TrapSafe(pid_t tid);

  pid_t pid_ = 0, tid_ = 0;
  uint64_t area_ = 0;
  size_t size_ = 0;
  bool mapped_ = false;
  std::map<pid_t, user_regs_struct> saved_;
  UniqueFd mem_;
  uint64_t calls_ = 0;
  // SIGTRAP state per thread (TrapSafe); trap_unsafe_: a call touched SIGTRAP, no more int3.
  std::map<pid_t, bool> trap_safe_;
  bool trap_unsafe_ = false;
};

}  // namespace godwit::remote
