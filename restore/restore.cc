#include "restore/restore.h"

#include <fcntl.h>
#include <linux/sched.h>
#include <poll.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/statfs.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <map>
#include <cstring>
#include <set>

#include "common/fs.h"
#include "common/log.h"
#include "common/proc.h"
#include "common/scope_exit.h"
#include "files/files.h"
#include "restore/pstate.h"
#include "restore/steps.h"

namespace godwit::restore {
namespace {

using Clock = std::chrono::steady_clock;
constexpr uint64_t kPage = 4096;

double Ms(Clock::time_point a) {
  return std::chrono::duration<double, std::milli>(Clock::now() - a).count();
}

// What a restored process tells the coordinator through the report pipe (< PIPE_BUF: atomic).
struct Report {
  int32_t pid;
  int32_t err;  // 0: ready
  char msg[120];
};

template <typename M>
Result<void> ReadOne(const images::ImageSet& set, const std::string& name, M* msg) {
  TRY_CTX(set.ReadOne(name, msg), "read %s", name.c_str());
  return Ok();
}

// Forks e with its pid in every pid namespace from level `skip` in (innermost first in set_tid;
// the outer levels get what the kernel gives); the first process of a nested namespace (pid 1
// there) creates it. parent_levels: how many namespaces the parent (or the coordinator) is in.
pid_t Clone3(const img::ProcessEntry& e, int parent_levels, int skip, uint64_t extra_flags = 0) {
  struct clone_args args;
  memset(&args, 0, sizeof(args));
  args.exit_signal = SIGCHLD;
  args.flags = extra_flags;
  pid_t tids[32];  // the kernel reads an array of pid_t
  int n = 0;
  if (e.ns_pids_size() > 1) {
    for (int i = e.ns_pids_size() - 1; i >= skip && n < 32; --i) tids[n++] = e.ns_pids(i);
    if (e.ns_pids_size() > parent_levels) args.flags |= CLONE_NEWPID;
  } else {
    tids[n++] = e.pid();
  }
  args.set_tid = reinterpret_cast<uint64_t>(tids);
  args.set_tid_size = n;
  return static_cast<pid_t>(syscall(SYS_clone3, &args, sizeof(args)));
}

int Levels(const img::ProcessEntry& e) { return e.ns_pids_size() > 1 ? e.ns_pids_size() : 1; }

// In a tree with its own pid namespace (inner_level > 0) the host pids are kept when free (a
// restore after the original is gone) and left to the kernel when taken (a copy next to its
// running original, a migration's destination, a host process on one of them): only the pids
// inside the namespace must be the dumped ones.
pid_t Clone3Tree(const img::ProcessEntry& e, int parent_levels, int inner_level,
                 uint64_t extra_flags = 0) {
  pid_t got = Clone3(e, parent_levels, 0, extra_flags);
  if (got < 0 && errno == EEXIST && inner_level > 0)
    got = Clone3(e, parent_levels, inner_level, extra_flags);
  return got;
}

// ---- Code that runs in the forked restored processes (a copy of the coordinator). ----
// Single-threaded copies of a single-threaded coordinator: libc is usable, but no pthread calls
// (glibc's cached tid is the coordinator's after a raw clone3).

struct ChildEnv {
  RestoreContext* ctx;
  int report_fd;
  std::vector<int> foreign_fds;  // the coordinator's own fds above report_fd (not prepared)
  std::map<pid_t, std::vector<int>> children;  // pid -> indices of its children in the tree
};

[[noreturn]] void ChildFail(const ChildEnv& env, pid_t pid, int err, const std::string& msg) {
  Report rep{};
  rep.pid = pid;
  rep.err = err ? err : EINVAL;
  snprintf(rep.msg, sizeof(rep.msg), "%s", msg.c_str());
  ssize_t unused = write(env.report_fd, &rep, sizeof(rep));
  (void)unused;
  _exit(120);
}

[[noreturn]] void ZombieMain(const img::ProcessEntry& e) {
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

[[noreturn]] void ChildMain(ChildEnv& env, int idx) {
  const img::ProcessEntry& e = env.ctx->tree.processes(idx);
  // Nothing of the coordinator's leaks into the restored process: keep stdio (replaced by the
  // files' Install if there are fd images), the report pipe and the prepared fds above it.
  // The user namespace to join sits just below the report pipe (see Restore).
  const int userns_fd = env.ctx->opts.userns_fd >= 0 ? env.report_fd - 1 : -1;
  syscall(SYS_close_range, 3, env.report_fd - (userns_fd >= 0 ? 2 : 1), 0);
  if (env.ctx->fds == nullptr)
    syscall(SYS_close_range, env.report_fd + (env.ctx->images_fd >= 0 ? 2 : 1), ~0U, 0);
  for (int fd : env.foreign_fds) close(fd);
  if (e.zombie()) ZombieMain(e);
  std::vector<pid_t> zombies;
  auto fork_child = [&](int k) {
    const auto& c = env.ctx->tree.processes(k);
    pid_t got = Clone3Tree(c, Levels(e), env.ctx->inner_level);
    if (got < 0) ChildFail(env, e.pid(), errno, StrFormat("clone3 pid %d", c.pid()));
    if (got == 0) ChildMain(env, k);
    if (c.zombie()) zombies.push_back(got);
  };
  // A child in neither its own session nor ours was forked before we called setsid: it is in the
  // session we inherited (CheckTree allows only that). Fork those first, then setsid.
  bool lead = e.sid() == e.pid() && getsid(0) != e.pid();
  std::vector<bool> forked(env.children[e.pid()].size(), false);
  if (lead) {
    for (size_t i = 0; i < forked.size(); ++i) {
      const auto& c = env.ctx->tree.processes(env.children[e.pid()][i]);
      if (c.sid() != e.sid() && c.sid() != c.pid()) {
        fork_child(env.children[e.pid()][i]);
        forked[i] = true;
      }
    }
    if (setsid() < 0) ChildFail(env, e.pid(), errno, "setsid");
  }
  for (size_t i = 0; i < forked.size(); ++i)
    if (!forked[i]) fork_child(env.children[e.pid()][i]);
  // Zombies exit on their own; wait (without reaping) until they have, so their SIGCHLD is
  // discarded now (default disposition) and not delivered after the restore.
  for (pid_t z : zombies) {
    siginfo_t si;
    while (waitid(P_PID, z, &si, WEXITED | WNOWAIT) < 0 && errno == EINTR) {
    }
  }
  if (env.ctx->fds) {
    auto r = env.ctx->fds->Install(e.pid());
    if (!r.ok()) ChildFail(env, e.pid(), r.error().sys_errno(), r.error().to_string());
  }
  if (userns_fd >= 0) {
    if (setns(userns_fd, CLONE_NEWUSER) < 0) ChildFail(env, e.pid(), errno, "join user namespace");
    close(userns_fd);
  }
  Report rep{};
  rep.pid = e.pid();
  if (write(env.report_fd, &rep, sizeof(rep)) != sizeof(rep)) _exit(121);
  close(env.report_fd);
  // Wait to be seized; the coordinator replaces everything from here on.
  for (;;) pause();
}

// The root task's side of the container hooks (RestoreOptions::root_*). The root, not the
// coordinator, prepares the files: it is in the container's mount and net namespaces (paths and
// sockets are the container's) and its children inherit them with the restorer's state.
// up: root -> coordinator (Report: inside done, then files prepared); down: the go byte.
void RootHandshake(RestoreContext& ctx, pid_t pid, int up, int down, int base_fd) {
  const RestoreOptions& o = ctx.opts;
  Report rep{};
  rep.pid = pid;
  const char* what = "root_inside";
  if (o.root_inside) rep.err = o.root_inside(&what);
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

// ---- Coordinator. ----

Result<void> ReadHandshake(int fd, pid_t root) {
  auto deadline = Clock::now() + std::chrono::seconds(60);
  for (;;) {
    pollfd pf{fd, POLLIN, 0};
    int n = poll(&pf, 1, 100);
    if (n > 0) break;
    if (n < 0 && errno != EINTR) return Errno("poll");
    siginfo_t si{};
    if (waitid(P_PID, root, &si, WEXITED | WNOHANG | WNOWAIT) == 0 && si.si_pid == root)
      return Err("restore: root %d died in its namespaces hooks", root);
    if (Clock::now() > deadline)
      return Err("restore: root %d did not answer (its namespaces hooks)", root);
  }
  Report rep{};
  ssize_t r = read(fd, &rep, sizeof(rep));
  if (r != sizeof(rep)) return Err("restore: root %d died in its namespaces hooks", root);
  rep.msg[sizeof(rep.msg) - 1] = 0;
  if (rep.err)
    return MakeError(ErrorKind::kGeneric, rep.err, "restore root %d: %s: %s", root, rep.msg,
                     strerror(rep.err));
  return Ok();
}


Result<void> LoadImages(RestoreContext& ctx) {
  const auto& set = *ctx.images;
  TRY(ReadOne(set, "pstree.img", &ctx.tree));
  if (ctx.tree.processes_size() == 0)
    return MakeError(ErrorKind::kBadImage, 0, "pstree.img: no processes");
  std::set<pid_t> pids;
  for (const auto& e : ctx.tree.processes()) {
    if (e.pid() <= 0 || !pids.insert(e.pid()).second)
      return MakeError(ErrorKind::kBadImage, 0, "pstree.img: bad or duplicate pid %d", e.pid());
    if (e.zombie()) {
      ctx.stats.zombies++;
      continue;
    }
    auto p = std::make_unique<ProcessRestore>();
    p->entry = &e;
    p->pid = e.pid();
    TRY(ReadOne(set, StrFormat("core-%d.img", e.pid()), &p->core));
    TRY(ReadOne(set, StrFormat("mm-%d.img", e.pid()), &p->mm));
    {
      std::string pmname = StrFormat("pagemap-%d.img", e.pid());
      auto rd = set.OpenImage(pmname);
      if (!rd.ok()) return std::move(rd.error().wrap("read " + pmname));
      for (;;) {
        img::PageMap pm;
        ASSIGN_OR_RETURN(bool more, rd->Next(&pm));
        if (!more) break;
        p->pagemaps.push_back(std::move(pm));
      }
    }
    if (p->core.threads_size() == 0 || p->core.threads(0).tid() != e.pid())
      return MakeError(ErrorKind::kBadImage, 0, "core-%d.img: main thread missing", e.pid());
    for (const auto& t : p->core.threads())
      if (t.tid() <= 0 || (t.tid() != e.pid() && !pids.insert(t.tid()).second))
        return MakeError(ErrorKind::kBadImage, 0, "core-%d.img: bad tid %d", e.pid(), t.tid());
    uint64_t prev_end = 0;
    for (const auto& v : p->mm.vmas()) {
      if (v.start() >= v.end() || v.start() % kPage || v.end() % kPage || v.start() < prev_end)
        return MakeError(ErrorKind::kBadImage, 0, "mm-%d.img: bad vma %#lx-%#lx", e.pid(),
                         static_cast<unsigned long>(v.start()),
                         static_cast<unsigned long>(v.end()));
      prev_end = v.end();
    }
    for (const auto& pm : p->pagemaps) {
      prev_end = 0;
      for (const auto& r : pm.runs()) {
        if (r.vaddr() % kPage || r.vaddr() < prev_end || r.npages() == 0 ||
            r.npages() > (1ULL << 36))
          return MakeError(ErrorKind::kBadImage, 0, "pagemap-%d.img: bad run at %#lx", e.pid(),
                           static_cast<unsigned long>(r.vaddr()));
        prev_end = r.vaddr() + r.npages() * kPage;
      }
    }
    ctx.stats.threads += 1;
    ctx.by_pid[e.pid()] = p.get();
    ctx.procs.push_back(std::move(p));
  }
  ctx.stats.processes = ctx.tree.processes_size();
  if (set.Has("shmem.img")) {
    ASSIGN_OR_RETURN(images::ImageReader rd, set.OpenImage("shmem.img"));
    for (;;) {
      img::ShmemObject o;
      ASSIGN_OR_RETURN(bool more, rd.Next(&o));
      if (!more) break;
      ctx.shmem.push_back(std::move(o));
    }
  }
  return Ok();
}

// Sessions and groups we can rebuild: a process leads its session, or inherits its parent's.
Result<void> CheckTree(const RestoreContext& ctx) {
  std::map<pid_t, const img::ProcessEntry*> by;
  for (const auto& e : ctx.tree.processes()) by[e.pid()] = &e;
  for (const auto& e : ctx.tree.processes()) {
    if (e.pid() == ctx.tree.root_pid()) continue;
    auto it = by.find(e.ppid());
    if (it == by.end())
      return MakeError(ErrorKind::kBadImage, 0, "pstree.img: parent %d of %d is not in the tree",
                       e.ppid(), e.pid());
    // Also allowed: the session the parent was in before it called setsid (the child was forked
    // before it): the grandparent's, or for a child of the root, the one outside the tree (then
    // restored as the coordinator's, like the root's own).
    const img::ProcessEntry& parent = *it->second;
    bool inherited_before_setsid = false;
    if (parent.sid() == parent.pid() && e.sid() != parent.sid()) {
      if (parent.pid() == ctx.tree.root_pid()) {
        inherited_before_setsid = by.find(e.sid()) == by.end();
      } else if (auto gp = by.find(parent.ppid()); gp != by.end()) {
        inherited_before_setsid = gp->second->sid() == e.sid();
      }
    }
    if (e.sid() != e.pid() && e.sid() != parent.sid() && !inherited_before_setsid)
      return MakeError(ErrorKind::kUnsupported, 0,
                       "pid %d: session %d is neither its own, its parent's nor the one its "
                       "parent %d left with setsid",
                       e.pid(), e.sid(), parent.pid());
  }
  for (const auto& e : ctx.tree.processes()) {
    if (e.ns_pids_size() < 2) continue;
    int parent_levels = 1;
    if (e.pid() != ctx.tree.root_pid()) parent_levels = Levels(*by[e.ppid()]);
    if (e.ns_pids_size() > parent_levels + 1 ||
        (e.ns_pids_size() > parent_levels && e.ns_pids(e.ns_pids_size() - 1) != 1))
      return MakeError(ErrorKind::kUnsupported, 0,
                       "pid %d: its pid namespace was not created inside the tree", e.pid());
  }
  if (ctx.tree.processes(0).pid() != ctx.tree.root_pid())
    return MakeError(ErrorKind::kBadImage, 0, "pstree.img: root is not first");
  return Ok();
}

Result<void> CheckPidsFree(const RestoreContext& ctx) {
  if (ctx.inner_level > 0) return Ok();  // a fresh pid namespace: its pids are all free
  for (const auto& e : ctx.tree.processes()) {
    if (fs::Exists(StrFormat("/proc/%d", e.pid())))
      return MakeError(ErrorKind::kExists, EEXIST,
                       "pid %d is in use (the original still running, or an unreaped zombie)",
                       e.pid());
  }
  return Ok();
}

bool IsMemfd(const img::ShmemObject& o) { return o.name().rfind("/memfd:", 0) == 0; }

Result<void> PrepareShmem(RestoreContext& ctx) {
  for (const auto& o : ctx.shmem) {
    // A memfd keeps its name ("/memfd:NAME (deleted)" in the maps): an fd on it shows the same.
    std::string name = "godwit-shmem";
    if (IsMemfd(o)) {
      name = o.name().substr(7);
      if (name.size() >= 10 && name.compare(name.size() - 10, 10, " (deleted)") == 0)
        name.resize(name.size() - 10);
      if (name.size() > 249) name.resize(249);
    }
    ASSIGN_OR_RETURN(UniqueFd ufd, NewShmemObject(o, name.c_str()));
    int fd = ufd.get();
    // hugetlbfs has no write(): a hugetlb object is filled through a mapping of it.
    char* hmap = nullptr;
    ScopeExit unmap_h([&] {
      if (hmap) munmap(hmap, o.size());
    });
    struct statfs sfs;
    bool hugefs = fstatfs(fd, &sfs) == 0 && sfs.f_type == 0x958458f6 /* HUGETLBFS_MAGIC */;
    if (hugefs && !o.runs().empty()) {
      void* m = mmap(nullptr, o.size(), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
      if (m == MAP_FAILED)
        return Errno("mmap hugetlb shmem %lu", static_cast<unsigned long>(o.id()));
      hmap = static_cast<char*>(m);
    }
    if (!hugefs && ftruncate(fd, static_cast<off_t>(o.size())) < 0)
      return Errno("ftruncate shmem %lu", static_cast<unsigned long>(o.id()));
    if (!o.runs().empty()) {
      ASSIGN_OR_RETURN(auto blob, ctx.images->OpenBlob(o.blob()));
      std::vector<char> buf;
      for (const auto& r : o.runs()) {
        uint64_t len = r.npages() * kPage;
        if (r.vaddr() + len > ((o.size() + kPage - 1) & ~(kPage - 1)) + kPage)
          return MakeError(ErrorKind::kBadImage, 0, "%s: run past the object's end",
                           o.blob().c_str());
        buf.resize(len);
        TRY(blob->Read(r.blob_off(), buf.data(), len));
        uint64_t n = std::min<uint64_t>(len, o.size() > r.vaddr() ? o.size() - r.vaddr() : 0);
        if (hmap)
          memcpy(hmap + r.vaddr(), buf.data(), n);
        else if (pwrite(fd, buf.data(), n, static_cast<off_t>(r.vaddr())) !=
                 static_cast<ssize_t>(n))
          return Errno("fill shmem %lu", static_cast<unsigned long>(o.id()));
      }
    }
    ctx.shmem_fds[o.id()] = std::move(ufd);
  }
  return Ok();
}

// An address range free in both the current layout of the process and its dumped one.
Result<uint64_t> FindArea(pid_t pid, const img::MmEntry& mm, size_t size) {
  ASSIGN_OR_RETURN(auto cur, proc::ReadMaps(pid));
  std::vector<std::pair<uint64_t, uint64_t>> used;
  for (const auto& m : cur) used.push_back({m.start, m.end});
  for (const auto& v : mm.vmas()) used.push_back({v.start(), v.end()});
  std::sort(used.begin(), used.end());
  const uint64_t guard = 1ULL << 20;
  uint64_t cand = 1ULL << 32;
  for (const auto& [s, e] : used) {
    if (e + guard <= cand) continue;
    if (cand + size + guard <= s) break;
    cand = std::max<uint64_t>(cand, (e + guard + (1ULL << 20) - 1) & ~((1ULL << 20) - 1));
  }
  if (cand + size >= (1ULL << 47)) return Err("pid %d: no free room for the scratch area", pid);
  return cand;
}

void KillAll(const std::vector<pid_t>& pids, pid_t root) {
  for (pid_t p : pids) kill(p, SIGKILL);
  // Our tracees first: a traced zombie in the root's pid namespace holds the dying root (pid 1
  // there) in zap_pid_ns_processes until its tracer reaps it.
  for (pid_t p : pids)
    if (p != root)
      while (waitpid(p, nullptr, __WALL) < 0 && errno == EINTR) {
      }
  if (root > 0) {
    int st;
    while (waitpid(root, &st, __WALL) < 0 && errno == EINTR) {
    }
  }
  // Orphans of the killed tree come to us (subreaper) or to whoever reaps above us.
  for (pid_t p : pids) waitpid(p, nullptr, __WALL | WNOHANG);
}

// Where the engine's own fds go: the report pipe at base-2, the images dir at base-1, the files'
// prepared fds from base up. They need numbers no restored process uses (Install puts the
// restored fds in place while they are open) below RLIMIT_NOFILE, whose hard limit we cannot
// raise here (no CAP_SYS_RESOURCE). First choice: above every restored fd (MaxFd()+64, room for
// the coordinator's own fds in between). When that does not fit under the limit (a process with
// an fd near its hard limit), the highest gap between restored fd numbers that holds them all:
// like CRIU's service fds, which sit just below the rlimit and move down when taken. Our soft
// limit goes up to the hard one (the restored processes get theirs back in "rlimits").
Result<int> ServiceFdBase(const RestoreContext& ctx) {
  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) < 0) return Errno("getrlimit RLIMIT_NOFILE");
  if (rl.rlim_cur < rl.rlim_max) {
    rlimit up{rl.rlim_max, rl.rlim_max};
    if (setrlimit(RLIMIT_NOFILE, &up) == 0) rl = up;
  }
  const long limit = static_cast<long>(std::min<rlim_t>(rl.rlim_cur, 1 << 30));
  const int max_fd = ctx.fds ? ctx.fds->MaxFd() : 2;
  const int need = 2 + (ctx.fds ? ctx.fds->FileCount() : 0) + 16;  // + coordinator fds in the way
  const int above = std::max(100, max_fd + 64);
  if (above - 2 + need <= limit || !ctx.fds) return above;
  std::set<int> used = ctx.fds->UsedFds();
  long end = limit;  // exclusive end of the free run being looked at
  for (auto it = used.rbegin(); it != used.rend(); ++it) {
    if (*it >= end) continue;
    if (end - *it - 1 >= need) return static_cast<int>(end - need + 2);
    end = *it;
  }
  if (end - 3 >= need) return static_cast<int>(end - need + 2);
  return MakeError(ErrorKind::kUnsupported, EMFILE,
                   "restore: no %d free fd numbers below RLIMIT_NOFILE (%ld) for the restore's "
                   "own fds: the restored processes use %zu numbers up to fd %d",
                   need, limit, used.size(), max_fd);
}

// Stand-in leaders (CRIU forks "helper" tasks for this): for every group of a live process whose
// leader is not in the tree and that no longer exists, a child of ours with the group's id that
// makes the group and waits to be killed. Only in our own session (setpgid joins a group of the caller's session) and our
// pid namespace; other cases keep failing at setpgid, naming the group.
Result<void> StartGroupStandIns(const RestoreContext& ctx, std::vector<pid_t>* out) {
  std::set<pid_t> pids, groups;
  for (const auto& e : ctx.tree.processes()) pids.insert(e.pid());
  for (const auto& e : ctx.tree.processes())
    if (!e.zombie() && e.pid() != ctx.tree.root_pid() && e.pgid() != e.pid() &&
        !pids.count(e.pgid()) && e.sid() == getsid(0) && e.ns_pids_size() < 2)
      groups.insert(e.pgid());
  for (pid_t g : groups) {
    // Only a group that is gone: one that exists (ours, the caller's) is joined as it is.
    if (kill(-g, 0) == 0 || errno != ESRCH || kill(g, 0) == 0 || errno != ESRCH) continue;
    int sync[2];
    if (pipe2(sync, O_CLOEXEC) < 0) return Errno("pipe");
    UniqueFd rd(sync[0]), wr(sync[1]);
    struct clone_args args;
    memset(&args, 0, sizeof(args));
    args.exit_signal = SIGCHLD;
    pid_t tid = g;
    args.set_tid = reinterpret_cast<uint64_t>(&tid);
    args.set_tid_size = 1;
    pid_t h = static_cast<pid_t>(syscall(SYS_clone3, &args, sizeof(args)));
    if (h < 0) return Errno("group %d: clone3 a stand-in leader with pid %d", g, g);
    if (h == 0) {
      if (syscall(SYS_setpgid, 0, 0) == 0) (void)!write(sync[1], "g", 1);
      for (;;) pause();
    }
    out->push_back(h);
    wr.reset();
    char c;
    if (read(rd.get(), &c, 1) != 1) return Err("group %d: its stand-in leader failed", g);
  }
  return Ok();
}

// The signal that stops p again: the one it was stopped with, unless p now handles, ignores or
// blocks it (then it would not stop p): SIGSTOP, which cannot be caught.
int StopSignal(const RestoreContext& ctx, const ProcessRestore& p) {
  int sig = p.entry->stop_signo();
  if (sig <= 0 || sig == SIGSTOP || sig > 31) return SIGSTOP;
  if (p.core.threads(0).blocked() & (1ULL << (sig - 1))) return SIGSTOP;
  auto ps = LoadPstate(ctx, p);
  if (!ps.ok()) return SIGSTOP;
  for (const auto& a : ps->handlers().actions())
    if (a.signo() == sig && a.handler() != 0) return SIGSTOP;  // SIG_DFL is 0
  return sig;
}

// Every thread of each pid in a group stop ('T'); a stop is asynchronous to our detach, so this
// polls with a bounded deadline. A process that does not stop in time is reported, not failed:
// the tree runs already.
void WaitGroupStopped(const std::vector<pid_t>& pids) {
  auto deadline = Clock::now() + std::chrono::seconds(10);
  for (pid_t pid : pids) {
    for (;;) {
      bool all = true;
      auto tasks = proc::ListTasks(pid);
      if (!tasks.ok()) break;  // gone: nothing to wait for
      for (pid_t t : *tasks) {
        auto st = proc::ReadTaskStat(pid, t);
        if (st.ok() && st->state != 'T' && st->state != 'Z' && st->state != 'X') all = false;
      }
      if (all) break;
      if (Clock::now() > deadline) {
        LOG_WARN("restore: pid %d was restored stopped but has not stopped yet", pid);
        break;
      }
      usleep(200);
    }
  }
}

// A tree restored in its own pid namespace (ctx.inner_level > 0): the host pid of each live
// process, found among the root's descendants by its id at inner_level (their NSpid). Run once
// every process has reported (all are forked and none has exited).
Result<void> MapHostPids(RestoreContext& ctx, pid_t root) {
  std::map<pid_t, pid_t> host_of;  // id at inner_level -> host pid
  std::vector<pid_t> todo{root};
  std::set<pid_t> seen;
  while (!todo.empty()) {
    pid_t h = todo.back();
    todo.pop_back();
    if (!seen.insert(h).second) continue;
    auto ns = proc::ReadNsPids(h, h);
    if (ns.ok() && static_cast<int>(ns->size()) > ctx.inner_level)
      host_of[(*ns)[ctx.inner_level]] = h;
    auto tasks = proc::ListTasks(h);
    if (!tasks.ok()) continue;  // a zombie of the tree
    for (pid_t t : *tasks)
      if (auto kids = proc::ListChildren(h, t); kids.ok())
        todo.insert(todo.end(), kids->begin(), kids->end());
  }
  for (auto& p : ctx.procs) {
    const img::ProcessEntry& e = *p->entry;
    if (e.ns_pids_size() <= ctx.inner_level)
      return MakeError(ErrorKind::kBadImage, 0, "pstree.img: pid %d is outside the root's pid "
                       "namespace", e.pid());
    auto it = host_of.find(e.ns_pids(ctx.inner_level));
    if (it == host_of.end())
      return Err("restore: pid %d (%d in the tree's pid namespace) not found under root %d",
                 e.pid(), e.ns_pids(ctx.inner_level), root);
    p->pid = it->second;
    if (p->pid != e.pid()) LOG_DEBUG("restore: pid %d is host pid %d", e.pid(), p->pid);
  }
  return Ok();
}

}  // namespace

pid_t PidAtLevel(const RestoreContext& ctx, pid_t pid, int level) {
  for (const auto& e : ctx.tree.processes()) {
    if (e.pid() != pid) continue;
    if (e.ns_pids_size() < 2) return level == 0 ? pid : 0;
    return level < e.ns_pids_size() ? e.ns_pids(level) : 0;
  }
  return level == 0 ? pid : 0;
}

Result<RestoreStats> Restore(const RestoreOptions& opts) {
  auto t_start = Clock::now();
  RestoreContext ctx;
  ctx.opts = opts;
  ASSIGN_OR_RETURN(images::ImageSet set, images::ImageSet::Open(opts.images_dir, opts.read));
  ctx.images = &set;
  TRY(images::CheckCpuFeatures(set.inventory()));
  TRY(LoadImages(ctx));
  TRY(CheckTree(ctx));
  // A root that is the init of its own pid namespace (a container): only the pids inside that
  // namespace are restored, the host ones are new.
  if (const auto& re = ctx.tree.processes(0);
      re.ns_pids_size() > 1 && re.ns_pids(re.ns_pids_size() - 1) == 1)
    ctx.inner_level = re.ns_pids_size() - 1;
  TRY(PrepareShmem(ctx));

  files::RestoreOptions fo;
  fo.tcp_close = opts.tcp_close;
  fo.shell_job = opts.shell_job;
  fo.inherit_fds = opts.inherit_fds;
  // A memfd both mapped and open as an fd stays one object: files/ reopens the engine's memfd.
  for (const auto& o : ctx.shmem)
    if (IsMemfd(o) && ctx.shmem_fds.count(o.id())) fo.memfds[o.inode()] = ctx.shmem_fds[o.id()].get();
  ASSIGN_OR_RETURN(std::unique_ptr<files::FdRestorer> fds, files::FdRestorer::Load(set, fo));
  ctx.fds = fds.get();
  ASSIGN_OR_RETURN(int base_fd, ServiceFdBase(ctx));
  // The report pipe sits just below the files' fds, on a number no restored process uses.
  int pfd[2];
  if (pipe2(pfd, O_CLOEXEC) < 0) return Errno("pipe");
  UniqueFd rd(pfd[0]), wr0(pfd[1]);
  int report_fd = fcntl(wr0.get(), F_DUPFD_CLOEXEC, base_fd - 2);
  if (report_fd < 0) return Errno("dup report pipe to fd %d", base_fd - 2);
  UniqueFd wr(report_fd);
  wr0.reset();
  if (ctx.fds) {
    if (report_fd != base_fd - 2 && base_fd <= ctx.fds->MaxFd())
      return MakeError(ErrorKind::kGeneric, EBUSY, "restore: fd %d (for the report pipe) is taken",
                       base_fd - 2);
    ctx.fds->KeepThroughInstall({report_fd, report_fd + 1});
  }
  // Whatever the coordinator has open above the report pipe now (inherited from its caller) must
  // not leak into the restored processes; the files' prepared fds come after this snapshot.
  std::vector<int> foreign;
  if (auto l = fs::ListDir("/proc/self/fd"); l.ok())
    for (const auto& n : *l)
      if (atoi(n.c_str()) > report_fd) foreign.push_back(atoi(n.c_str()));
  // With container hooks the files are prepared only once the root's namespaces are built.
  const bool hooked = opts.root_clone_flags || opts.root_inside || opts.root_outside;
  UniqueFd images_fd;  // at report_fd + 1 (below base_fd), after the snapshot of foreign fds
  if (hooked) {
    UniqueFd d(open(opts.images_dir.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
    if (!d.valid()) return Errno("open %s", opts.images_dir.c_str());
    if (dup3(d.get(), report_fd + 1, O_CLOEXEC) < 0) return Errno("dup images dir");
    images_fd.reset(report_fd + 1);
    ctx.images_fd = report_fd + 1;
  }
  UniqueFd userns_fd;  // at report_fd - 1, kept by ChildMain until the process joins it
  if (opts.userns_fd >= 0) {
    const int below = report_fd - 1;
    if (fcntl(below, F_GETFD) >= 0 || below <= std::max(2, ctx.fds ? ctx.fds->MaxFd() : 2))
      return Err("restore: fd %d (below the report pipe) is in use", report_fd - 1);
    if (dup3(opts.userns_fd, report_fd - 1, O_CLOEXEC) < 0) return Errno("dup user namespace fd");
    userns_fd.reset(report_fd - 1);
  }
  if (ctx.fds && !hooked) TRY_CTX(ctx.fds->Prepare(base_fd), "prepare files");
  TRY(CheckPidsFree(ctx));
  int up[2] = {-1, -1}, down[2] = {-1, -1};
  if (hooked && (pipe2(up, O_CLOEXEC) < 0 || pipe2(down, O_CLOEXEC) < 0)) return Errno("pipe");
  UniqueFd up_rd(up[0]), up_wr(up[1]), down_rd(down[0]), down_wr(down[1]);
  // Detached without container hooks (the container verb waits for its init as our child): the
  // root gets its final parent at once (see the fork below).
  const bool reparent_root = opts.detach && !hooked;

  ChildEnv env;
  env.ctx = &ctx;
  env.report_fd = wr.get();
  env.foreign_fds = foreign;
  for (int i = 0; i < ctx.tree.processes_size(); ++i) {
    const auto& e = ctx.tree.processes(i);
    if (e.pid() != ctx.tree.root_pid()) {
      int parent = -1;
      for (int k = 0; k < ctx.tree.processes_size(); ++k)
        if (ctx.tree.processes(k).pid() == e.ppid()) parent = k;
      env.children[ctx.tree.processes(parent).pid()].push_back(i);
    }
  }
  std::vector<pid_t> created;
  // Host pids to kill on failure (with a fresh pid namespace: known once forked).
  if (ctx.inner_level == 0)
    for (const auto& e : ctx.tree.processes()) created.push_back(e.pid());
  pid_t root = ctx.tree.root_pid();
  bool ok = false;
  bool forked = false;
  ScopeExit on_error([&] {
    if (!ok && forked) KillAll(created, root);
  });

  auto t_fork = Clock::now();
  fflush(nullptr);
  uint64_t root_flags = opts.root_clone_flags & ~(CLONE_NEWCGROUP | CLONE_NEWPID);
  pid_t got;
  if (reparent_root) {
    // The root's parent-death signal (the rule, see RestoreAfterCreds in restore/pstate.cc): it
    // may fire only when the parent the root keeps dies. Detached, that parent is not us but our
    // reaper (the nearest child subreaper above us, or init), which adopts the root when we exit;
    // that reparenting would send the signal (the kernel's forget_original_parent). So the root
    // is forked by a short-lived intermediate: once that exits, the root already has its final
    // parent, and its signal is restored relative to it. Not yet a subreaper ourselves, or the
    // root would come to us.
    // The intermediate tells the root's host pid through a pipe.
    int hp[2];
    if (pipe2(hp, O_CLOEXEC) < 0) return Errno("pipe");
    UniqueFd hp_rd(hp[0]), hp_wr(hp[1]);
    pid_t mid = fork();
    if (mid < 0) return Errno("fork");
    if (mid == 0) {
      pid_t r = Clone3Tree(ctx.tree.processes(0), 1, ctx.inner_level, root_flags);
      if (r == 0) {
        close(rd.get());
        ChildMain(env, 0);
      }
      if (r > 0 && write(hp[1], &r, sizeof(r)) != sizeof(r)) _exit(1);
      _exit(r > 0 ? 0 : errno == EEXIST ? 17 : 1);
    }
    hp_wr.reset();
    int st = 0;
    while (waitpid(mid, &st, 0) < 0 && errno == EINTR) {
    }
    pid_t host_root = 0;
    if (read(hp_rd.get(), &host_root, sizeof(host_root)) == sizeof(host_root) && host_root > 0)
      root = host_root;
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
      if (WIFEXITED(st) && WEXITSTATUS(st) == 17)
        return MakeError(ErrorKind::kExists, EEXIST, "pid %d is in use", root);
      return Err("clone3 root pid %d failed (intermediate status %#x)", root, st);
    }
    got = root;
  } else {
    got = Clone3Tree(ctx.tree.processes(0), 1, ctx.inner_level, root_flags);
    if (got < 0) {
      if (errno == EEXIST) return MakeError(ErrorKind::kExists, EEXIST, "pid %d is in use", root);
      return Errno("clone3 root pid %d", root);
    }
    if (got == 0) {
      if (hooked) RootHandshake(ctx, root, up[1], down[0], base_fd);
      // The child's report fd number is the same; close the read end (not CLOEXEC-relevant).
      close(rd.get());
      ChildMain(env, 0);
    }
  }
  if (ctx.inner_level > 0) {
    root = got;
    created.push_back(got);
  }
  ctx.root_host_pid = root;
  forked = true;
  // Orphans of a failed restore come to us (KillAll reaps them).
  prctl(PR_SET_CHILD_SUBREAPER, 1);
  if (hooked) {
    up_wr.reset();
    down_rd.reset();
    TRY(ReadHandshake(up_rd.get(), got));
    // A fresh net namespace: its TCP connections are locked before the outside hook brings its
    // addresses up (a peer's retransmission would get a RST); Finalize unlocks.
    if (ctx.fds && (opts.root_clone_flags & CLONE_NEWNET))
      TRY_CTX(ctx.fds->LockNetwork(got), "restore root %d: network lock", got);
    if (opts.root_outside) TRY_CTX(opts.root_outside(got), "restore root %d: outside", got);
    char go = 1;
    if (write(down_wr.get(), &go, 1) != 1) return Errno("restore: wake root %d", got);
    TRY(ReadHandshake(up_rd.get(), got));  // files prepared in the root
    up_rd.reset();
    down_wr.reset();
  }
  wr.reset();
  // Wait for a report from every live process.
  size_t want = ctx.procs.size();
  std::set<pid_t> ready;
  auto deadline = Clock::now() + std::chrono::seconds(60);
  while (ready.size() < want) {
    pollfd pf{rd.get(), POLLIN, 0};
    int left = static_cast<int>(
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count());
    if (left <= 0) return Err("restore: timed out waiting for the tree to be forked");
    int n = poll(&pf, 1, left);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Errno("poll");
    if (n == 0) continue;
    Report rep;
    ssize_t r = read(rd.get(), &rep, sizeof(rep));
    if (r == 0) return Err("restore: the tree died while being forked");
    if (r != sizeof(rep)) return Errno("read report");
    rep.msg[sizeof(rep.msg) - 1] = 0;
    if (rep.err != 0)
      return MakeError(rep.err == EEXIST ? ErrorKind::kExists : ErrorKind::kGeneric, rep.err,
                       "restore pid %d: %s", rep.pid, rep.msg);
    ready.insert(rep.pid);
  }
  if (ctx.fds) ctx.fds->ClosePrepared();
  if (ctx.inner_level > 0) {
    TRY(MapHostPids(ctx, got));
    for (auto& p : ctx.procs)
      if (p->pid != got) created.push_back(p->pid);
  }
  ctx.stats.fork_ms = Ms(t_fork);

  // Seize every process (one thread each for now).
  for (auto& p : ctx.procs) {
    // PTRACE_O_SUSPEND_SECCOMP: the restored filters must not see the calls injected after the
    // "seccomp" step (it needs CAP_SYS_ADMIN: without it, seize without and hope).
    const unsigned long opts = PTRACE_O_TRACECLONE | PTRACE_O_TRACESYSGOOD | PTRACE_O_EXITKILL;
    auto seized = remote::SeizeAndInterrupt(p->pid, opts | PTRACE_O_SUSPEND_SECCOMP);
    if (!seized.ok() && seized.error().sys_errno() == EPERM)
      seized = remote::SeizeAndInterrupt(p->pid, opts);
    TRY_CTX(std::move(seized), "seize restored pid %d", p->pid);
    p->attached.push_back(p->pid);
    ASSIGN_OR_RETURN(uint64_t at, FindArea(p->pid, p->mm, 256 * 1024));
    remote::Remote::Options ro;
    ro.at = at;
    auto rr = remote::Remote::Create(p->pid, p->pid, ro);
    if (!rr.ok()) return std::move(rr.error().wrap(StrFormat("pid %d", p->pid)));
    p->remote = std::move(*rr);
    // The process may have been seized between its report and its close of the pipe.
    uint64_t args[6] = {static_cast<uint64_t>(report_fd), 0, 0, 0, 0, 0};
    TRY(p->remote->RawSyscallIn(p->pid, SYS_close, args));
  }
  // A group whose leader is gone (it exited; its members stay in the group): a stand-in leader
  // with the group's id, in our session, holds the group while its members join, then dies.
  std::vector<pid_t> stand_ins;
  ScopeExit end_stand_ins([&] {
    for (pid_t h : stand_ins) {
      kill(h, SIGKILL);
      while (waitpid(h, nullptr, __WALL) < 0 && errno == EINTR) {
      }
    }
  });
  TRY(StartGroupStandIns(ctx, &stand_ins));
  // Process groups: leaders first, then members (the group must exist). A session leader
  // already leads its group.
  for (int pass = 0; pass < 2; ++pass) {
    for (auto& p : ctx.procs) {
      const auto& e = *p->entry;
      bool leader = e.pgid() == e.pid();
      if (leader != (pass == 0) || e.sid() == e.pid()) continue;
      // Already in it (a group outside the tree keeps its host id; one inside has the host pid
      // of its leader).
      pid_t host_pgid = e.pgid();
      if (auto it = ctx.by_pid.find(e.pgid()); it != ctx.by_pid.end()) host_pgid = it->second->pid;
      if (getpgid(p->pid) == host_pgid) continue;
      pid_t inner_pgid = leader ? 0 : PidAtLevel(ctx, e.pgid(), Levels(e) - 1);
      if (!leader && inner_pgid == 0 && ctx.inner_level > 0) {
        // A group outside the container's pid namespace (its runtime's): invisible inside, so
        // the one inherited from the restorer stands in for it.
        LOG_INFO("restore: pid %d stays in group %d (group %d is outside its pid namespace)",
                 p->pid, getpgid(p->pid), e.pgid());
        continue;
      }
      if (!leader && inner_pgid == 0)
        return MakeError(ErrorKind::kUnsupported, 0, "pid %d: group %d is in another pid namespace",
                         e.pid(), e.pgid());
      auto r = p->remote->Syscall(SYS_setpgid, 0, static_cast<uint64_t>(inner_pgid));
      if (!r.ok()) {
        if (e.pid() == ctx.tree.root_pid()) {
          LOG_WARN("restore: root %d stays in group %d (group %d is outside the tree)", root,
                   getpgid(root), e.pgid());
          continue;
        }
        return std::move(r.error().wrap(StrFormat("pid %d: setpgid %d", e.pid(), e.pgid())));
      }
    }
  }
  for (auto& p : ctx.procs) {
    for (const auto& step : ProcessSteps()) {
      LOG_DEBUG("restore pid %d: %s", p->pid, step.name);
      TRY_CTX(step.fn(ctx, *p), "restore pid %d: %s", p->pid, step.name);
      if (ctx.images_fd >= 0 && strcmp(step.name, "mm") == 0)  // its last user
        TRY_CTX(p->remote->Syscall(SYS_close, static_cast<uint64_t>(ctx.images_fd)),
                "pid %d: close the images dir", p->pid);
    }
  }
  ctx.last_pid.reset();  // its helper leaves the tree's pid namespace before the tree runs
  if (ctx.fds) TRY_CTX(ctx.fds->Finalize(), "files finalize");
  if (!opts.pid_file.empty()) TRY(fs::WriteFile(opts.pid_file, StrFormat("%d", root), true));
  // Threads about to re-issue an interrupted call are stepped into its syscall-entry stop first,
  // so they are detached already inside the kernel (see remote::EnterReissuedSyscalls).
  std::map<pid_t, int> detach_sig;
  for (auto& p : ctx.procs)
    TRY_CTX(remote::EnterReissuedSyscalls(p->attached, &detach_sig), "pid %d", p->pid);
  // A process dumped in a group stop is stopped again, with its stop signal (CRIU's
  // finalize_restore): pending now, taken as soon as it is detached, so its parent gets the
  // CLD_STOPPED it may wait for (WIFSTOPPED, WSTOPSIG) and a later SIGCONT a CLD_CONTINUED.
  std::vector<pid_t> stopped;
  for (auto& p : ctx.procs) {
    if (!p->entry->stopped()) continue;
    int sig = StopSignal(ctx, *p);
    if (kill(p->pid, sig) < 0) return Errno("stop %d with signal %d", p->pid, sig);
    stopped.push_back(p->pid);
  }
  // Resume everything together.
  for (auto& p : ctx.procs)
    for (pid_t tid : p->attached) {
      long sig = detach_sig.count(tid) ? detach_sig[tid] : 0;
      if (ptrace(PTRACE_DETACH, tid, nullptr, reinterpret_cast<void*>(sig)) < 0)
        PLOG_WARN("detach %d", tid);
    }
  ok = true;
  // Return once they are stopped: whoever acts on the restored tree next sees them stopped.
  WaitGroupStopped(stopped);
  ctx.stats.root_pid = root;
  ctx.stats.total_ms = Ms(t_start);
  return ctx.stats;
}

Result<int> WaitRoot(pid_t root) {
  for (;;) {
    int st = 0;
    pid_t w = waitpid(-1, &st, 0);
    if (w < 0) {
      if (errno == EINTR) continue;
      return Errno("wait for restored root %d", root);
    }
    if (w != root) continue;
    if (WIFEXITED(st)) return WEXITSTATUS(st);
    if (WIFSIGNALED(st)) return 128 + WTERMSIG(st);
  }
}

}  // namespace godwit::restore
