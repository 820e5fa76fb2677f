// Code that runs in the restored processes right after their clone3, until the coordinator seizes
// them (restore/fork.cc forks the root; each process here forks its own children).
//
// Rules for everything in this file:
//  - It runs in a copy of the coordinator made by a raw clone3: no fork() wrapper ran, so no
//    atfork handlers, and glibc's cached tid and thread state are still the coordinator's. No
//    pthread calls, no threads, nothing that asks glibc for the current thread (pthread_self,
//    owner-checked mutexes, fork(), system()).
//  - The coordinator is single-threaded whenever it clones (every helper thread: page filling,
//    read-ahead, network unlock, is joined before), so the copy's heap and libc locks are free:
//    allocation is safe, but is kept to what the files' Install needs and the small bookkeeping
//    below.
//  - Process-level work uses raw syscalls (clone3, setsid, setns, close_range, waitid).
//  - Nothing returns to a caller: every path ends in _exit (ChildFail reports the failure on the
//    report pipe first), never exit() (atexit handlers and stdio buffers are the coordinator's),
//    or in pause() until the coordinator seizes the process and replaces its memory.
//  - Errors travel as a Report (after_clone.h) on the report pipe: one atomic write.
#include "restore/after_clone.h"

#include <fcntl.h>
#include <linux/sched.h>
#include <sched.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>

#include "common/clone3.h"
#include "files/files.h"

namespace godwit::restore {
namespace {

pid_t Clone3(const img::ProcessEntry& e, int parent_levels, int skip, uint64_t extra_flags,
             int cgroup_fd) {
  uint64_t flags = extra_flags;
  pid_t tids[32];  // the kernel reads an array of pid_t
  int n = 0;
  if (e.ns_pids_size() > 1) {
    for (int i = e.ns_pids_size() - 1; i >= skip && n < 32; --i) tids[n++] = e.ns_pids(i);
    if (e.ns_pids_size() > parent_levels) flags |= CLONE_NEWPID;
  } else {
    tids[n++] = e.pid();
  }
  return Clone3WithPids(flags, tids, n, cgroup_fd);
}

[[noreturn]] void ChildFail(const ChildEnv& env, pid_t pid, int err, const char* msg) {
  Report rep{};
  rep.pid = pid;
  rep.err = err ? err : EINVAL;
  snprintf(rep.msg, sizeof(rep.msg), "%s", msg);
  ssize_t unused = write(env.report_fd, &rep, sizeof(rep));
  (void)unused;
  _exit(120);
}

// A zombie stays in its process group until it is reaped, so it has to join that group before
// it exits (the coordinator joins the live processes to theirs only later): its own group
// (it led one), or one whose leader is gone (zdtm zombie01): a stand-in child with the group's
// id makes the group, the zombie joins it, the stand-in exits and is reaped. A group of a live
// process of the tree does not exist yet: the zombie stays in its parent's group. Not in a
// nested pid namespace (the ids would be another level's).
void ZombieJoinGroup(const ChildEnv& env, const img::ProcessEntry& e) {
  pid_t want = e.pgid();
  if (want <= 0 || syscall(SYS_getpgid, 0) == want || e.ns_pids_size() > 1) return;
  if (want == e.pid()) {
    syscall(SYS_setpgid, 0, 0);
    return;
  }
  for (const auto& o : env.ctx->tree.processes())
    if (o.pid() == want) return;  // its leader is restored (alive or a zombie): not made yet
  if (syscall(SYS_setpgid, 0, want) == 0) return;  // the group exists (outside the tree)
  int made[2], go[2];
  if (syscall(SYS_pipe2, made, O_CLOEXEC) < 0) return;
  if (syscall(SYS_pipe2, go, O_CLOEXEC) < 0) return;
  pid_t s = Clone3WithPids(0, &want, 1);
  if (s == 0) {
    close(go[1]);
    close(made[0]);
    char c = syscall(SYS_setpgid, 0, 0) == 0 ? 'g' : 'x';
    (void)!write(made[1], &c, 1);
    (void)!read(go[0], &c, 1);  // until the zombie has joined
    _exit(0);
  }
  close(made[1]);
  close(go[0]);
  if (s > 0) {
    char c = 0;
    if (read(made[0], &c, 1) == 1 && c == 'g') syscall(SYS_setpgid, 0, want);
    close(go[1]);
    siginfo_t si;
    while (syscall(SYS_waitid, P_PID, s, &si, WEXITED, nullptr) < 0 && errno == EINTR) {
    }
  }
  close(made[0]);
}

// A dumped zombie: joins its group, exits again the way it did, so its parent finds the same
// status.
[[noreturn]] void ZombieMain(const ChildEnv& env, const img::ProcessEntry& e) {
  ZombieJoinGroup(env, e);
  int status = e.exit_status();
  if (WIFSIGNALED(status)) {
    signal(WTERMSIG(status), SIG_DFL);
    sigset_t all;
    sigfillset(&all);
    sigprocmask(SIG_UNBLOCK, &all, nullptr);
    syscall(SYS_kill, syscall(SYS_getpid), WTERMSIG(status));
  }
  _exit(WEXITSTATUS(status));
}

}  // namespace

pid_t Clone3Tree(const img::ProcessEntry& e, int parent_levels, int inner_level,
                 uint64_t extra_flags, int cgroup_fd) {
  pid_t got = Clone3(e, parent_levels, 0, extra_flags, cgroup_fd);
  if (got < 0 && errno == EEXIST && inner_level > 0)
    got = Clone3(e, parent_levels, inner_level, extra_flags, cgroup_fd);
  return got;
}

[[noreturn]] void ChildMain(ChildEnv& env, int idx) {
  const img::ProcessEntry& e = env.ctx->tree.processes(idx);
  // Nothing of the coordinator's leaks into the restored process: keep stdio (replaced by the
  // files' Install if there are fd images), the report pipe and the prepared fds above it.
  // The user namespace to join sits just below the report pipe (restore/fork.cc).
  const int userns_fd = env.ctx->opts.userns_fd >= 0 ? env.report_fd - 1 : -1;
  // A child sharing its parent's fd table (CLONE_FILES) leaves the table to the parent: the
  // parent cleaned it before the clone and installs it once (after files_sync), and closing
  // anything here (the report pipe, the user namespace fd) would close it for the parent too.
  const bool shared_table = e.shares_parent_files();
  const int files_sync = shared_table ? env.files_sync : -1;
  env.files_sync = -1;
  if (!shared_table) {
    syscall(SYS_close_range, 3, env.report_fd - (userns_fd >= 0 ? 2 : 1), 0);
    if (env.ctx->fds == nullptr)
      syscall(SYS_close_range, env.report_fd + (env.ctx->images_fd >= 0 ? 2 : 1), ~0U, 0);
    for (int fd : env.foreign_fds) close(fd);
  }
  if (e.zombie()) ZombieMain(env, e);
  const ChildOrder& order = env.forks[idx];
  std::vector<pid_t> zombies;
  // The children that share this table and say when they have forked theirs (files_sync).
  int sync[2] = {-1, -1};
  int sharing = 0;
  auto fork_child = [&](int k) {
    const auto& c = env.ctx->tree.processes(k);
    uint64_t flags = 0;
    if (c.shares_parent_files()) {
      flags = CLONE_FILES;
      if (env.ctx->fds && !c.zombie()) {
        if (sync[1] < 0 && syscall(SYS_pipe2, sync, O_CLOEXEC) < 0)
          ChildFail(env, e.pid(), errno, "pipe for CLONE_FILES children");
        env.files_sync = sync[1];
        sharing++;
      }
    }
    pid_t got = Clone3Tree(c, Levels(e), env.ctx->inner_level, flags);
    if (got == 0) ChildMain(env, k);  // reads env.files_sync
    env.files_sync = -1;
    if (got < 0) {
      char msg[64];
      snprintf(msg, sizeof(msg), "clone3 pid %d", c.pid());
      ChildFail(env, e.pid(), errno, msg);
    }
    if (c.zombie()) zombies.push_back(got);
  };
  // A session leader forks the children that stay in the session it inherited first, then calls
  // setsid (restore/sessions.h).
  bool lead = e.sid() == e.pid() && getsid(0) != e.pid();
  for (size_t i = 0; i < order.children.size(); ++i)
    if (!lead || order.before_setsid[i]) fork_child(order.children[i]);
  if (lead) {
    if (setsid() < 0) ChildFail(env, e.pid(), errno, "setsid");
    for (size_t i = 0; i < order.children.size(); ++i)
      if (!order.before_setsid[i]) fork_child(order.children[i]);
  }
  // Zombies exit on their own; wait (without reaping) until they have, so their SIGCHLD is
  // discarded now (default disposition) and not delivered after the restore.
  for (pid_t z : zombies) {
    siginfo_t si;
    while (waitid(P_PID, z, &si, WEXITED | WNOWAIT) < 0 && errno == EINTR) {
    }
  }
  // Children on this table have forked theirs: the prepared fds may go.
  for (int i = 0; i < sharing; ++i) {
    char c;
    ssize_t n;
    while ((n = read(sync[0], &c, 1)) < 0 && errno == EINTR) {
    }
    if (n != 1) ChildFail(env, e.pid(), EPIPE, "a CLONE_FILES child died before its forks");
  }
  if (sync[0] >= 0) {
    close(sync[0]);
    close(sync[1]);
  }
  if (shared_table) {
    // Joins the user namespace before the parent may close that fd (after files_sync).
    if (userns_fd >= 0 && setns(userns_fd, CLONE_NEWUSER) < 0)
      ChildFail(env, e.pid(), errno, "join user namespace");
    // Its report before the parent may go on and close the report pipe (in this table).
    Report rep{};
    rep.pid = e.pid();
    if (write(env.report_fd, &rep, sizeof(rep)) != sizeof(rep)) _exit(121);
    if (files_sync >= 0 && write(files_sync, "f", 1) != 1) _exit(121);
    for (;;) pause();
  } else {
    if (env.ctx->fds) {
      auto r = env.ctx->fds->Install(e.pid());
      if (!r.ok()) ChildFail(env, e.pid(), r.error().sys_errno(), r.error().to_string().c_str());
    }
    if (userns_fd >= 0) {
      if (setns(userns_fd, CLONE_NEWUSER) < 0)
        ChildFail(env, e.pid(), errno, "join user namespace");
      close(userns_fd);
    }
  }
  Report rep{};
  rep.pid = e.pid();
  if (write(env.report_fd, &rep, sizeof(rep)) != sizeof(rep)) _exit(121);
  close(env.report_fd);
  // Wait to be seized; the coordinator replaces everything from here on.
  for (;;) pause();
}

// The root, not the coordinator, prepares the files of a container: it is in the container's
// mount and net namespaces (paths and sockets are the container's) and its children inherit them
// with the restorer's state.
void RootHandshake(RestoreContext& ctx, pid_t pid, int up, int down, int base_fd) {
  const RestoreOptions& o = ctx.opts;
  Report rep{};
  rep.pid = pid;
  const char* what = "root_enter_cgroup";
  if (o.root_enter_cgroup) rep.err = o.root_enter_cgroup(ctx.root_born_into_cgroup, &what);
  if (!rep.err && o.root_inside) {
    what = "root_inside";
    rep.err = o.root_inside(&what);
  }
  if (rep.err) snprintf(rep.msg, sizeof(rep.msg), "%s", what ? what : "root_inside");
  if (write(up, &rep, sizeof(rep)) != sizeof(rep) || rep.err) _exit(120);
  char go;
  if (read(down, &go, 1) != 1) _exit(120);  // the coordinator failed
  rep = Report{};
  rep.pid = pid;
  if ((o.root_clone_flags & CLONE_NEWCGROUP) && unshare(CLONE_NEWCGROUP) < 0) {
    rep.err = errno;
    snprintf(rep.msg, sizeof(rep.msg), "unshare cgroup ns");
  } else if (ctx.fds) {
    auto r = ctx.fds->Prepare(base_fd);
    if (!r.ok()) {
      rep.err = r.error().sys_errno() ? r.error().sys_errno() : EINVAL;
      snprintf(rep.msg, sizeof(rep.msg), "prepare files: %s", r.error().to_string().c_str());
    }
  }
  if (write(up, &rep, sizeof(rep)) != sizeof(rep) || rep.err) _exit(120);
}

}  // namespace godwit::restore
