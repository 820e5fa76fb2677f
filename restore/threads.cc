// Step "threads": the other threads of a process, created by an injected clone3 in the main
// thread with set_tid = the dumped tid. PTRACE_O_TRACECLONE hands each new thread to us stopped.
// In a tree restored in its own pid namespace (ctx.inner_level) a taken host tid is left to the
// kernel (only the tids inside are set); the host tid is found by the inner one (NSpid) and
// recorded in p.host_tids.
//
// With a user namespace (RestoreOptions::userns_fd) the process has joined it before this step,
// and the tree's pid namespace is the host user namespace's: set_tid needs
// CAP_CHECKPOINT_RESTORE there, which a task inside the user namespace lacks. The tid inside is
// then chosen the way CRIU did before clone3: ns_last_pid of that pid namespace is set to tid - 1
// just before a clone3 without set_tid. The sysctl acts on the writer's own pid namespace, so a
// helper task of ours lives in it (with the host's privileges) while the threads are made, and
// writes it on request; nothing else forks in the tree meanwhile (every process is stopped).
#include <fcntl.h>
#include <linux/sched.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <set>
#include <vector>

#include "common/clone3.h"
#include "common/fs.h"
#include "files/files.h"
#include "common/proc.h"
#include "common/unique_fd.h"
#include "restore/steps.h"

namespace godwit::restore {

struct LastPidSetter {
  pid_t helper = -1;  // our child H; its child G (in the tree's pid namespace) writes the sysctl
  UniqueFd req, ack;
  ~LastPidSetter() {
    req.reset();  // G exits on EOF, then H
    if (helper > 0)
      while (waitpid(helper, nullptr, 0) < 0 && errno == EINTR) {
      }
  }
  Result<void> Set(pid_t last) {
    int v = last, err = 0;
    if (write(req.get(), &v, sizeof(v)) != sizeof(v)) return Errno("ns_last_pid helper: request");
    if (read(ack.get(), &err, sizeof(err)) != sizeof(err))
      return Err("ns_last_pid helper: died");
    if (err) return MakeError(ErrorKind::kGeneric, err, "write ns_last_pid %d: %s", last,
                              strerror(err));
    return Ok();
  }
};

namespace {

// G's own id inside the tree's pid namespace: one no dumped process or thread uses (it must
// not take a tid the threads step is about to give).
pid_t SpareInnerPid(const RestoreContext& ctx) {
  std::set<pid_t> used;
  for (const auto& e : ctx.tree.processes()) used.insert(InnerPid(e));
  for (const auto& p : ctx.procs)
    for (const auto& t : p->core.threads()) used.insert(InnerTid(t));
  int max = 32768;
  if (auto t = fs::ReadFile("/proc/sys/kernel/pid_max"); t.ok()) max = atoi(t->c_str());
  pid_t cand = max - 1;
  while (cand > 1 && used.count(cand)) --cand;
  return cand;
}

Result<std::shared_ptr<LastPidSetter>> StartLastPidSetter(const RestoreContext& ctx) {
  UniqueFd ns(open(StrFormat("/proc/%d/ns/pid", ctx.root_host_pid).c_str(), O_RDONLY | O_CLOEXEC));
  if (!ns.valid()) return Errno("open the pid namespace of %d", ctx.root_host_pid);
  int a[2], b[2];
  if (pipe2(a, O_CLOEXEC) < 0) return Errno("pipe");
  UniqueFd a0(a[0]), a1(a[1]);
  if (pipe2(b, O_CLOEXEC) < 0) return Errno("pipe");
  UniqueFd b0(b[0]), b1(b[1]);
  pid_t spare = SpareInnerPid(ctx);
  fflush(nullptr);
  pid_t h = fork();
  if (h < 0) return Errno("fork");
  if (h == 0) {
    // H: into the pid namespace (for its children), then G at a spare id there.
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (setns(ns.get(), CLONE_NEWPID) < 0) _exit(1);
    // Only the request's read end and the answer's write end stay open (G must see EOF when the
    // coordinator lets go; the tree must not see the report pipe kept open by us).
    const int k1 = std::min(a[0], b[1]), k2 = std::max(a[0], b[1]);
    if (k1 > 3) syscall(SYS_close_range, 3, k1 - 1, 0);
    if (k2 > k1 + 1) syscall(SYS_close_range, k1 + 1, k2 - 1, 0);
    syscall(SYS_close_range, k2 + 1, ~0U, 0);
    pid_t g = Clone3WithPids(0, &spare, 1);
    // Taken after all: any id (only a restored tid could collide).
    if (g < 0) g = Clone3WithPids(0, nullptr, 0);
    if (g < 0) _exit(2);
    if (g == 0) {
      // G: the sysctl is its own pid namespace's.
      int fd = open("/proc/sys/kernel/ns_last_pid", O_WRONLY | O_CLOEXEC);
      int v;
      while (read(a[0], &v, sizeof(v)) == sizeof(v)) {
        char s[16];  // no allocation in a fork of a possibly multi-threaded coordinator
        int len = snprintf(s, sizeof(s), "%d", v);
        int err = 0;
        if (fd < 0 || pwrite(fd, s, len, 0) != len)
          err = fd < 0 ? EACCES : errno;
        if (write(b[1], &err, sizeof(err)) != sizeof(err)) _exit(3);
      }
      _exit(0);
    }
    close(a[0]);
    close(b[1]);
    while (waitpid(static_cast<pid_t>(g), nullptr, 0) < 0 && errno == EINTR) {
    }
    _exit(0);
  }
  auto s = std::make_shared<LastPidSetter>();
  s->helper = h;
  s->req = std::move(a1);
  s->ack = std::move(b0);
  return s;
}

}  // namespace

Result<void> RestoreThreads(RestoreContext& ctx, ProcessRestore& p) {
  remote::Remote* r = p.remote.get();
  // Inside a user namespace set_tid cannot work (see the top); ns_last_pid does for the threads
  // of processes in the tree's own pid namespace.
  const bool by_last_pid = ctx.opts.userns_fd >= 0 && ctx.inner_level > 0;
  for (int i = 1; i < p.core.threads_size(); ++i) {
    const img::ThreadCore& tc = p.core.threads(i);
    pid_t tid = tc.tid();
    struct clone_args args;
    memset(&args, 0, sizeof(args));
    args.flags = CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD | CLONE_SYSVSEM;
    // Its id in every pid namespace, innermost first.
    uint64_t tid_at = r->scratch() + 512;
    std::vector<pid_t> want;  // the kernel reads an array of pid_t
    if (tc.ns_tids_size() > 1)
      for (int k = tc.ns_tids_size() - 1; k >= 0; --k) want.push_back(tc.ns_tids(k));
    else
      want.push_back(tid);
    if (by_last_pid) {
      if (tc.ns_tids_size() != ctx.inner_level + 1)
        return MakeError(ErrorKind::kUnsupported, 0,
                         "pid %d: thread %d is in a pid namespace nested in the container's "
                         "(with a user namespace, only the container's own can be set)",
                         p.pid, tid);
      if (!ctx.last_pid) {
        ASSIGN_OR_RETURN(ctx.last_pid, StartLastPidSetter(ctx));
      }
      TRY_CTX(ctx.last_pid->Set(InnerTid(tc) - 1), "pid %d: thread %d", p.pid, tid);
      want.clear();
    }
    TRY(r->Write(tid_at, want.data(), want.size() * sizeof(pid_t)));
    args.set_tid = want.empty() ? 0 : tid_at;
    args.set_tid_size = want.size();
    TRY(r->Write(r->scratch(), &args, sizeof(args)));
    auto got = r->Syscall(SYS_clone3, r->scratch(), sizeof(args));
    if (!got.ok() && got.error().sys_errno() == EEXIST && ctx.inner_level > 0 &&
        tc.ns_tids_size() > ctx.inner_level) {
      // Its host tid is taken (see Clone3Tree in restore.cc): the ids inside only.
      want.resize(tc.ns_tids_size() - ctx.inner_level);
      TRY(r->Write(tid_at, want.data(), want.size() * sizeof(pid_t)));
      args.set_tid_size = want.size();
      TRY(r->Write(r->scratch(), &args, sizeof(args)));
      got = r->Syscall(SYS_clone3, r->scratch(), sizeof(args));
    }
    if (!got.ok()) {
      if (got.error().sys_errno() == EEXIST)
        return MakeError(ErrorKind::kExists, EEXIST, "pid %d: thread id %d is in use", p.pid, tid);
      return std::move(got.error().wrap(StrFormat("pid %d: clone3 thread %d", p.pid, tid)));
    }
    if (*got != InnerTid(tc))
      return Err("pid %d: clone3 gave tid %ld, not %d", p.pid, *got, InnerTid(tc));
    pid_t host = tid;
    if (ctx.inner_level > 0) {
      host = 0;
      ASSIGN_OR_RETURN(auto tasks, proc::ListTasks(p.pid));
      for (pid_t t : tasks) {
        auto ns = proc::ReadNsPids(p.pid, t);
        if (ns.ok() && !ns->empty() && ns->back() == InnerTid(tc)) host = t;
      }
      if (host == 0)
        return Err("pid %d: new thread %d (%d inside) not found", p.pid, tid, InnerTid(tc));
      p.host_tids[tid] = host;
    }
    // The new thread starts in a PTRACE_EVENT_STOP.
    TRY_CTX(remote::WaitStop(host), "pid %d: new thread %d", p.pid, host);
    p.attached.push_back(host);
    ctx.stats.threads++;
  }
  // Pidfds of threads (pidfd_of_thread): their targets exist now. Each replaces the placeholder
  // Install left at its number.
  if (ctx.fds)
    for (const auto& t : ctx.fds->ThreadPidfds(p.entry->pid())) {
      auto opened = r->Syscall(SYS_pidfd_open, static_cast<uint64_t>(t.tid),
                               static_cast<uint64_t>(t.flags));
      if (!opened.ok())
        return std::move(opened.error().wrap(
            StrFormat("pid %d fd %d: pidfd_open thread %d", p.pid, t.fd, t.tid)));
      long got = *opened;
      auto dup = r->Syscall(SYS_dup3, static_cast<uint64_t>(got), static_cast<uint64_t>(t.fd),
                            static_cast<uint64_t>(t.cloexec ? O_CLOEXEC : 0));
      TRY(r->Syscall(SYS_close, static_cast<uint64_t>(got)));
      if (!dup.ok())
        return std::move(dup.error().wrap(StrFormat("pid %d fd %d: dup3 the pidfd of thread %d",
                                                    p.pid, t.fd, t.tid)));
    }
  return Ok();
}

}  // namespace godwit::restore
