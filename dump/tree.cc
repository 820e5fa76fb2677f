#include "dump/tree.h"

#include <linux/kcmp.h>
#include <poll.h>
#include <signal.h>
#include <sys/ptrace.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/user.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <set>
#include <string>

#include "common/fs.h"
#include "common/log.h"
#include "common/proc.h"
#include "common/remote.h"
#include "common/scope_exit.h"
#include "common/unique_fd.h"

namespace godwit::dump {
namespace {

Error Vanished(pid_t pid) {
  return MakeError(ErrorKind::kNotFound, ESRCH, "process %d exited during the dump", pid);
}

// TracerPid of /proc/PID/task/TID/status, 0 if untraced or unreadable.
pid_t TracerOf(pid_t pid, pid_t tid) {
  auto st = fs::ReadFile(StrFormat("/proc/%d/task/%d/status", pid, tid));
  if (!st.ok()) return 0;
  size_t at = st->find("\nTracerPid:");
  if (at == std::string::npos) return 0;
  return static_cast<pid_t>(atoi(st->c_str() + at + 11));
}

std::string CommOf(pid_t pid) {
  auto c = fs::ReadFile(StrFormat("/proc/%d/comm", pid));
  if (!c.ok()) return "?";
  std::string s = *c;
  if (!s.empty() && s.back() == '\n') s.pop_back();
  return s;
}

bool IsStopSignal(int sig) {
  return sig == SIGSTOP || sig == SIGTSTP || sig == SIGTTIN || sig == SIGTTOU;
}

// A thread stopped inside an rseq critical section gets what the kernel gives one it preempts
// (rseq_ip_fixup): rseq->rseq_cs cleared and its rip moved to the section's abort_ip. The seize
// is such a preemption. Without it, the calls injected later clear rseq_cs (a return to user
// space outside the section) and the dump would record a thread in the middle of a section
// that nothing aborts any more: restored (or left running), it would carry on there as if it
// still had its CPU. Best effort: a thread we cannot read is left as it is.
void AbortRseqSection(pid_t tid) {
  struct {
    uint64_t abi;
    uint32_t size, sig, flags, pad;
  } rc{};
  if (ptrace(static_cast<__ptrace_request>(0x420f /* PTRACE_GET_RSEQ_CONFIGURATION */), tid,
             reinterpret_cast<void*>(sizeof(rc)), &rc) < 0 ||
      rc.abi == 0)
    return;
  auto read = [tid](uint64_t addr, void* buf, size_t len) {
    iovec l{buf, len}, r{reinterpret_cast<void*>(addr), len};
    return process_vm_readv(tid, &l, 1, &r, 1, 0) == static_cast<ssize_t>(len);
  };
  uint64_t cs = 0;
  if (!read(rc.abi + 8, &cs, sizeof(cs)) || cs == 0) return;
  struct {
    uint32_t version, flags;
    uint64_t start_ip, post_commit_offset, abort_ip;
  } d{};
  uint32_t sig = 0;
  user_regs_struct regs{};
  if (!read(cs, &d, sizeof(d)) || ptrace(PTRACE_GETREGS, tid, nullptr, &regs) < 0) return;
  if (regs.rip < d.start_ip || regs.rip - d.start_ip >= d.post_commit_offset) return;
  if (!read(d.abort_ip - 4, &sig, sizeof(sig)) || sig != rc.sig) return;
  uint64_t zero = 0;
  iovec l{&zero, sizeof(zero)}, r{reinterpret_cast<void*>(rc.abi + 8), sizeof(zero)};
  if (process_vm_writev(tid, &l, 1, &r, 1, 0) != sizeof(zero)) return;
  regs.rip = d.abort_ip;
  if (ptrace(PTRACE_SETREGS, tid, nullptr, &regs) < 0) PLOG_WARN("rseq abort of %d", tid);
}

// Whether SIGSTOP is pending for tid (its own queue or its process's).
bool SigstopPending(pid_t tid) {
  auto st = fs::ReadFile(StrFormat("/proc/%d/status", tid));
  if (!st.ok()) return false;
  for (const char* key : {"\nSigPnd:", "\nShdPnd:"}) {
    size_t at = st->find(key);
    if (at != std::string::npos &&
        (strtoull(st->c_str() + at + strlen(key), nullptr, 16) & (1ULL << (SIGSTOP - 1))))
      return true;
  }
  return false;
}

// A group-stopped thread with SIGSTOP pending again (sent while it was stopped: zdtm
// stopped01/02) would dequeue it in the first injected call (a signal-delivery stop there). It
// is taken now instead, before any user instruction runs, with every other signal blocked, and
// the thread stops again with it: still stopped, the pending SIGSTOP consumed (it would only have
// repeated the stop; SIGCONT discards pending stops anyway).
Result<void> TakePendingSigstop(pid_t tid) {
  for (int round = 0; round < 4 && SigstopPending(tid); ++round) {
    uint64_t mask = 0;
    const uint64_t all = ~uint64_t{0};
    if (ptrace(PTRACE_GETSIGMASK, tid, sizeof(mask), &mask) < 0 ||
        ptrace(PTRACE_SETSIGMASK, tid, sizeof(all), &all) < 0)
      return Errno("PTRACE_{GET,SET}SIGMASK %d", tid);
    ScopeExit unblock([&] { ptrace(PTRACE_SETSIGMASK, tid, sizeof(mask), &mask); });
    if (ptrace(PTRACE_CONT, tid, nullptr, nullptr) < 0) return Errno("PTRACE_CONT %d", tid);
    ASSIGN_OR_RETURN(int status, remote::WaitStop(tid));
    if ((status >> 16) == PTRACE_EVENT_STOP) continue;  // stopped again, nothing dequeued
    int sig = WSTOPSIG(status);
    if (ptrace(PTRACE_CONT, tid, nullptr, reinterpret_cast<void*>(static_cast<long>(sig))) < 0)
      return Errno("PTRACE_CONT %d", tid);
    ASSIGN_OR_RETURN(status, remote::WaitStop(tid));
    if ((status >> 16) != PTRACE_EVENT_STOP)
      return Err("thread %d: signal %d instead of stopping again", tid, WSTOPSIG(status));
  }
  return Ok();
}

// PTRACE_SEIZE + PTRACE_INTERRUPT, and the group stop the thread was in. A thread seized in a
// group stop (or entering one while we seize it) reports its first trap as PTRACE_EVENT_STOP
// with the stop signal; an interrupt reports SIGTRAP. *stop_sig: that signal, else 0. A
// signal-delivery stop racing with the interrupt is passed on (a SIGSTOP then stops it: the
// process was about to be stopped, and is dumped stopped).
Result<void> Seize(pid_t tid, unsigned long options, int* stop_sig) {
  *stop_sig = 0;
  if (ptrace(PTRACE_SEIZE, tid, nullptr, options) < 0) {
    if (errno == ESRCH) return MakeError(ErrorKind::kNotFound, ESRCH, "seize %d: gone", tid);
    return Errno("PTRACE_SEIZE %d", tid);
  }
  if (ptrace(PTRACE_INTERRUPT, tid, nullptr, nullptr) < 0) return Errno("PTRACE_INTERRUPT %d", tid);
  for (;;) {
    ASSIGN_OR_RETURN(int status, remote::WaitStop(tid));
    int sig = WSTOPSIG(status);
    if ((status >> 16) == PTRACE_EVENT_STOP) {
      if (IsStopSignal(sig)) {
        *stop_sig = sig;
        TRY(TakePendingSigstop(tid));
      }
      AbortRseqSection(tid);
      return Ok();
    }
    if (ptrace(PTRACE_CONT, tid, nullptr, reinterpret_cast<void*>(static_cast<long>(sig))) < 0)
      return Errno("PTRACE_CONT %d", tid);
  }
}

// Seizes every thread of pid until /proc/PID/task shows no new one (a running thread may create
// threads until it is stopped itself). Returns the tids, main thread first.
// A process whose memory another process shares (CLONE_VM without CLONE_THREAD): above all a
// vfork parent, which waits (killable, deaf to our interrupt: the seize would hang) until its child
// execs or exits, the child running on the parent's memory. Neither can be restored as it was
// (CRIU refuses too: zdtm vfork00), so the dump fails naming both, before anything is seized.
Result<void> CheckOwnMm(pid_t pid, pid_t parent) {
  auto shares = [](pid_t a, pid_t b) { return syscall(SYS_kcmp, a, b, KCMP_VM, 0, 0) == 0; };
  if (parent > 0 && shares(pid, parent))
    return MakeError(ErrorKind::kUnsupported, 0,
                     "process %d shares its memory with its parent %d (a vfork child that has not "
                     "exec'd yet, or CLONE_VM): cannot be dumped",
                     pid, parent);
  auto tasks = proc::ListTasks(pid);
  if (!tasks.ok()) return Ok();  // gone: the seize reports it
  for (pid_t t : *tasks) {
    auto kids = proc::ListChildren(pid, t);
    if (!kids.ok()) continue;
    for (pid_t k : *kids)
      if (shares(pid, k))
        return MakeError(ErrorKind::kUnsupported, 0,
                         "process %d shares its memory with its child %d (waiting for a vfork "
                         "child to exec or exit, or CLONE_VM): cannot be dumped",
                         pid, k);
  }
  return Ok();
}

// *stop_sig: the group stop the main thread was seized in (0: none).
Result<std::vector<pid_t>> SeizeThreads(pid_t pid, std::set<pid_t>* seized_set, FrozenTree* out,
                                        int* stop_sig) {
  for (int round = 0;; ++round) {
    auto tasks = proc::ListTasks(pid);
    if (!tasks.ok()) return Vanished(pid);
    bool added = false;
    for (pid_t tid : *tasks) {
      if (seized_set->count(tid)) continue;
      // PTRACE_O_SUSPEND_SECCOMP: a seccomp filter would see (and may kill the process for) the
      // calls we inject. It needs CAP_SYS_ADMIN and an unfiltered tracer; without them a filtered
      // process can still be dumped if its filter allows our calls.
      int sig = 0;
      auto r = Seize(tid, PTRACE_O_TRACESYSGOOD | PTRACE_O_SUSPEND_SECCOMP, &sig);
      if (!r.ok() && r.error().sys_errno() == EPERM) r = Seize(tid, PTRACE_O_TRACESYSGOOD, &sig);
      if (r.ok() && tid == pid) *stop_sig = sig;
      if (!r.ok()) {
        if (r.error().kind() == ErrorKind::kNotFound || r.error().sys_errno() == ESRCH) {
          if (tid == pid) return Vanished(pid);
          continue;  // a thread that exited meanwhile
        }
        // Traced by someone else (a debugger, strace, another dumper): ptrace allows one tracer.
        if (pid_t tracer = TracerOf(pid, tid); tracer > 0)
          return MakeError(ErrorKind::kUnsupported, EBUSY,
                           "process %d (thread %d) is traced by pid %d (%s); detach it first", pid,
                           tid, tracer, CommOf(tracer).c_str());
        // EPERM on a non-main thread: a zombie thread (exited, not yet reaped) cannot be seized.
        auto st = proc::ReadTaskStat(pid, tid);
        if (st.ok() && (st->state == 'Z' || st->state == 'X')) {
          if (tid == pid)
            return MakeError(ErrorKind::kUnsupported, 0,
                             "process %d: its main thread exited while other threads run", pid);
          continue;
        }
        return std::move(r.error().wrap(StrFormat("freeze pid %d", pid)));
      }
      seized_set->insert(tid);
      out->seized.push_back(tid);
      added = true;
    }
    if (!added) {
      std::vector<pid_t> tids;
      for (pid_t tid : *tasks)
        if (seized_set->count(tid)) tids.push_back(tid);
      return tids;
    }
    if (round > 1000) return Err("process %d keeps creating threads", pid);
  }
}

}  // namespace

namespace {
// The cgroups of pid, when its cgroup namespace is ours (ProcessEntry.cgroups).
Result<void> DumpCgroups(pid_t pid, img::ProcessEntry* e) {
  struct stat mine, theirs;
  if (stat("/proc/self/ns/cgroup", &mine) < 0 ||
      stat(StrFormat("/proc/%d/ns/cgroup", pid).c_str(), &theirs) < 0 ||
      mine.st_ino != theirs.st_ino)
    return Ok();
  std::string path = StrFormat("/proc/%d/cgroup", pid);
  ASSIGN_OR_RETURN(std::string text, fs::ReadFile(path));
  for (const auto& line : fs::Split(text, '\n'))
    if (!line.empty()) e->add_cgroups(line);
  // A thread in cgroups of its own (a v1 tasks file or cgroup2's cgroup.threads move one thread).
  for (pid_t tid : e->threads()) {
    if (tid == pid) continue;
    auto t = fs::ReadFile(StrFormat("/proc/%d/task/%d/cgroup", pid, tid));
    if (!t.ok() || *t == text) continue;
    img::ThreadCgroups* tc = e->add_thread_cgroups();
    tc->set_tid(tid);
    for (const auto& line : fs::Split(*t, '\n'))
      if (!line.empty()) tc->add_cgroups(line);
  }
  return Ok();
}
}  // namespace

Result<void> FreezeTree(pid_t root, FrozenTree* out) {
  std::set<pid_t> seized_set;
  std::deque<pid_t> queue{root};
  std::set<pid_t> seen{root};
  out->tree.set_root_pid(root);
  while (!queue.empty()) {
    pid_t pid = queue.front();
    queue.pop_front();
    auto st = proc::ReadStat(pid);
    if (!st.ok()) {
      if (pid == root) return MakeError(ErrorKind::kNotFound, ESRCH, "no process %d", root);
      return Vanished(pid);
    }
    img::ProcessEntry e;
    e.set_pid(pid);
    e.set_ppid(pid == root ? 0 : st->ppid);
    if (st->state == 'Z') {
      // A leader that called pthread_exit stays a zombie while its other threads run on (zdtm
      // pthread02): the group is alive, not a zombie to recreate. Its memory and files are
      // reachable only through the live threads; not supported: refused, naming a live thread.
      if (auto tasks = proc::ListTasks(pid); tasks.ok()) {
        for (pid_t tid : *tasks) {
          if (tid == pid) continue;
          auto ts = fs::ReadFile(StrFormat("/proc/%d/task/%d/stat", pid, tid));
          size_t paren = ts.ok() ? ts->rfind(')') : std::string::npos;
          if (paren == std::string::npos || paren + 2 >= ts->size() || (*ts)[paren + 2] == 'Z')
            continue;
          return MakeError(ErrorKind::kUnsupported, 0,
                           "pid %d: its thread group leader exited (pthread_exit) while thread %d "
                           "runs on: a thread group without its leader is not supported",
                           pid, tid);
        }
      }
      if (pid == root) return MakeError(ErrorKind::kNotFound, 0, "process %d is a zombie", root);
      e.set_zombie(true);
      e.set_exit_status(st->exit_code);
      e.set_pgid(st->pgrp);
      e.set_sid(st->session);
      e.set_comm(st->comm);
      e.add_threads(pid);
      if (auto ns = proc::ReadNsPids(pid, pid); ns.ok() && ns->size() > 1)
        for (pid_t n : *ns) e.add_ns_pids(n);
      *out->tree.add_processes() = std::move(e);
      continue;
    }
    // A group stop ('T' in /proc/PID/stat, 't' once seized): the seize reports it and its signal
    // (the kernel's do_jobctl_trap: SIGTRAP unless the group is stopping or stopped), so a
    // SIGCONT racing with the seize cannot make us record a stop that is over.
    int stop_sig = 0;
    TRY(CheckOwnMm(pid, pid == root ? st->ppid : 0));
    ASSIGN_OR_RETURN(std::vector<pid_t> tids, SeizeThreads(pid, &seized_set, out, &stop_sig));
    e.set_stopped(stop_sig != 0);
    e.set_stop_signo(stop_sig);
    // Stopped now: groups and session are stable.
    st = proc::ReadStat(pid);
    if (!st.ok()) return Vanished(pid);
    e.set_pgid(st->pgrp);
    e.set_sid(st->session);
    e.set_comm(st->comm);
    for (pid_t t : tids) e.add_threads(t);
    if (auto ns = proc::ReadNsPids(pid, pid); ns.ok() && ns->size() > 1)
      for (pid_t n : *ns) e.add_ns_pids(n);
    TRY(DumpCgroups(pid, &e));
    // Its parent's fd table (CLONE_FILES): one table, dumped and restored once, by the parent.
    if (pid != root && syscall(SYS_kcmp, pid, st->ppid, KCMP_FILES, 0, 0) == 0)
      e.set_shares_parent_files(true);
    for (pid_t t : tids) {
      auto kids = proc::ListChildren(pid, t);
      if (!kids.ok()) return Vanished(pid);
      for (pid_t k : *kids)
        if (seen.insert(k).second) queue.push_back(k);
    }
    *out->tree.add_processes() = std::move(e);
  }
  return Ok();
}

namespace {

// Detached threads of a group-stopped process stop again on their own (the kernel's
// __ptrace_unlink re-arms the group stop), asynchronously to our detach: wait (bounded) until
// each is back in 'T', so the tree is as it was when the dump returns.
void WaitStoppedAgain(const FrozenTree& t) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  for (const auto& p : t.tree.processes()) {
    if (!p.stopped() || p.zombie()) continue;
    for (;;) {
      auto tasks = proc::ListTasks(p.pid());
      if (!tasks.ok()) break;
      bool all = true;
      for (pid_t tid : *tasks) {
        auto st = proc::ReadTaskStat(p.pid(), tid);
        if (st.ok() && st->state != 'T' && st->state != 'Z' && st->state != 'X') all = false;
      }
      if (all) break;
      if (std::chrono::steady_clock::now() > deadline) {
        LOG_WARN("thaw: pid %d was stopped and has not stopped again yet", p.pid());
        break;
      }
      usleep(200);
    }
  }
}

// Returns once every process of a killed tree has died (a zombie or gone), or after 10 s. Like a
// tracer's dump waiting on its tracees: a caller that restores the same pids right after must not
// find one still exiting (a child still tearing its memory down becomes a zombie of the tree's
// parent only later, and its pid is in use until that parent reaps it). A thread the kill woke
// before its PTRACE_DETACH stays traced: once dead it waits for us, the tracer, to release it, and
// its process's exit waits for its threads; so the threads (and the main threads of processes that
// are not our children, handed on to their real parents) are waited for without WNOWAIT.
void WaitKilled(const FrozenTree& t, const std::set<pid_t>& leaders, std::vector<UniqueFd>* alive) {
  std::set<pid_t> pending;
  for (const auto& p : t.tree.processes()) {
    if (p.zombie()) continue;
    for (int tid : p.threads())
      if (tid != p.pid() || leaders.count(tid)) pending.insert(tid);
  }
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (!alive->empty()) {
    for (auto it = pending.begin(); it != pending.end();) {
      int status = 0;
      pid_t r = waitpid(*it, &status, __WALL | WNOHANG);
      bool gone =
          (r < 0 && errno == ECHILD) || (r == *it && (WIFEXITED(status) || WIFSIGNALED(status)));
      if (r == *it && WIFSTOPPED(status)) ptrace(PTRACE_DETACH, *it, nullptr, nullptr);
      it = gone ? pending.erase(it) : std::next(it);
    }
    std::vector<pollfd> fds;
    for (const auto& fd : *alive) fds.push_back({fd.get(), POLLIN, 0});
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                    deadline - std::chrono::steady_clock::now())
                    .count();
    if (left <= 0) {
      LOG_WARN("kill: %zu process(es) of the tree of %d not dead after 10 s", alive->size(),
               t.tree.root_pid());
      return;
    }
    // Short rounds while traced threads are left to release; otherwise until one exits.
    int n = poll(fds.data(), fds.size(), pending.empty() ? static_cast<int>(left) : 10);
    if (n < 0 && errno != EINTR) return;
    std::vector<UniqueFd> still;
    for (size_t i = 0; i < fds.size(); i++)
      if (!(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) still.push_back(std::move((*alive)[i]));
    *alive = std::move(still);
  }
}

}  // namespace

void ThawTree(const FrozenTree& t) {
  // Threads whose interrupted call Release() set up to be re-issued are detached inside it (no
  // lost wake-up for a signal arriving right after the thaw).
  std::map<pid_t, int> sig;
  if (auto r = remote::EnterReissuedSyscalls(t.seized, &sig); !r.ok())
    LOG_WARN("thaw: %s", r.error().to_string().c_str());
  for (pid_t tid : t.seized) {
    long s = sig.count(tid) ? sig[tid] : 0;
    if (ptrace(PTRACE_DETACH, tid, nullptr, reinterpret_cast<void*>(s)) < 0 && errno != ESRCH)
      PLOG_WARN("detach %d", tid);
  }
  WaitStoppedAgain(t);
}

void DetachFrozen(const FrozenTree& t) {
  for (pid_t tid : t.seized)
    if (ptrace(PTRACE_DETACH, tid, nullptr, nullptr) < 0 && errno != ESRCH)
      PLOG_WARN("detach %d", tid);
}

void KillTree(const FrozenTree& t, std::chrono::steady_clock::time_point* killed) {
  // A pidfd per process, taken before the kill (its pid cannot be reused under us): it is
  // readable once the whole thread group has exited.
  std::vector<UniqueFd> alive;
  // Main threads ours to wait on: every process's but the root's when it is our own child (its
  // exit status is our caller's to collect; a tracer waiting on its own child reaps it for good).
  // The other processes' parents are in the tree.
  std::set<pid_t> leaders;
  for (const auto& p : t.tree.processes()) {
    if (p.zombie()) continue;
    int fd = static_cast<int>(syscall(SYS_pidfd_open, p.pid(), 0));
    if (fd >= 0) alive.emplace_back(fd);
    if (p.pid() != t.tree.root_pid()) {
      leaders.insert(p.pid());
    } else if (auto st = proc::ReadStat(p.pid()); !st.ok() || st->ppid != getpid()) {
      leaders.insert(p.pid());
    }
  }
  for (const auto& p : t.tree.processes())
    if (!p.zombie()) kill(p.pid(), SIGKILL);
  for (pid_t tid : t.seized) ptrace(PTRACE_DETACH, tid, nullptr, nullptr);
  if (killed) *killed = std::chrono::steady_clock::now();
  WaitKilled(t, leaders, &alive);
}

}  // namespace godwit::dump
