#include "restore/sessions.h"

#include <fcntl.h>
#include <linux/sched.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <set>

#include "common/clone3.h"
#include "common/log.h"

namespace godwit::restore {

namespace {

// For each process, whether it is forked before its parent's setsid. A child in neither its
// parent's session nor its own (nor leading one) was forked before the parent called setsid:
// the parent was in that session then, so the parent was itself forked in it, after its own
// parent's setsid when that parent is in it now, or before it, and so on up the tree (session00's
// DOUBLE_CHANGESID, session01: a grandchild keeps the session two setsid calls above it). The
// session each process needs at its fork goes up from the deepest processes; a leader whose
// children need two different sessions, or a need its parent cannot meet, is refused.
Result<std::map<pid_t, bool>> PlanSessions(const img::ProcessTree& tree) {
  std::map<pid_t, const img::ProcessEntry*> by;
  for (const auto& e : tree.processes()) by[e.pid()] = &e;
  std::map<pid_t, int> depth;
  for (const auto& e : tree.processes()) {
    int d = 0;
    for (pid_t p = e.pid(); p != tree.root_pid() && d <= tree.processes_size(); ++d) {
      auto it = by.find(by.at(p)->ppid());
      if (it == by.end())
        return MakeError(ErrorKind::kBadImage, 0, "pstree.img: parent %d of %d is not in the tree",
                         by.at(p)->ppid(), p);
      p = it->first;
    }
    depth[e.pid()] = d;
  }
  std::vector<const img::ProcessEntry*> order;
  for (const auto& e : tree.processes()) order.push_back(&e);
  std::stable_sort(order.begin(), order.end(),
                   [&](auto* a, auto* b) { return depth[a->pid()] > depth[b->pid()]; });
  // need: the session a process is in when it is forked (a leader's, before its setsid). A
  // process that leads no session never called setsid: it was forked in the one it is in.
  std::map<pid_t, pid_t> need;
  for (const auto& e : tree.processes())
    if (e.sid() != e.pid()) need[e.pid()] = e.sid();
  std::map<pid_t, bool> before;
  for (const img::ProcessEntry* e : order) {
    before[e->pid()] = false;
    auto n = need.find(e->pid());
    if (e->pid() == tree.root_pid() || n == need.end()) continue;
    const img::ProcessEntry& parent = *by.at(e->ppid());
    if (n->second == parent.sid()) continue;  // forked after the parent's setsid, or no setsid
    bool ok = parent.sid() == parent.pid();
    if (ok && parent.pid() == tree.root_pid()) {
      // The root's session before its setsid is the one outside the tree (restored as the
      // coordinator's, like the root's own).
      ok = by.find(n->second) == by.end();
    } else if (ok) {
      auto pn = need.find(parent.pid());
      ok = pn == need.end() || pn->second == n->second;
      if (ok) need[parent.pid()] = n->second;
    }
    if (!ok)
      return MakeError(ErrorKind::kUnsupported, 0,
                       "pid %d: session %d is neither its own, its parent's nor one its parent %d "
                       "left with setsid",
                       e->pid(), n->second, parent.pid());
    before[e->pid()] = true;
  }
  return before;
}

}  // namespace

Result<void> CheckSessions(const img::ProcessTree& tree) {
  TRY(PlanSessions(tree));
  return Ok();
}

std::vector<ChildOrder> PlanForks(const img::ProcessTree& tree) {
  std::map<pid_t, int> index;
  for (int i = 0; i < tree.processes_size(); ++i) index[tree.processes(i).pid()] = i;
  auto before = PlanSessions(tree);  // CheckSessions refused the tree already when it fails
  std::vector<ChildOrder> plan(tree.processes_size());
  for (int i = 0; i < tree.processes_size(); ++i) {
    const auto& c = tree.processes(i);
    if (c.pid() == tree.root_pid()) continue;
    auto it = index.find(c.ppid());
    if (it == index.end()) continue;
    plan[it->second].children.push_back(i);
    plan[it->second].before_setsid.push_back(before.ok() && before->at(c.pid()));
  }
  return plan;
}

GroupStandIns::~GroupStandIns() {
  for (pid_t h : pids) {
    kill(h, SIGKILL);
    while (waitpid(h, nullptr, __WALL) < 0 && errno == EINTR) {
    }
  }
}

namespace {

// Stand-in leaders (CRIU forks "helper" tasks for this): for every group of a live process whose
// leader is not in the tree and that no longer exists, a child of ours with the group's id that
// makes the group and waits to be killed. Only in our own session (setpgid joins a group of the
// caller's session) and our pid namespace; other cases keep failing at setpgid, naming the group.
Result<void> StartGroupStandIns(const RestoreContext& ctx, GroupStandIns* out) {
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
    pid_t h = Clone3WithPids(0, &g, 1);
    if (h < 0) return Errno("group %d: clone3 a stand-in leader with pid %d", g, g);
    if (h == 0) {
      // After clone: raw calls only.
      if (syscall(SYS_setpgid, 0, 0) == 0) (void)!write(sync[1], "g", 1);
      for (;;) pause();
    }
    out->pids.push_back(h);
    wr.reset();
    char c;
    if (read(rd.get(), &c, 1) != 1) return Err("group %d: its stand-in leader failed", g);
  }
  return Ok();
}

}  // namespace

Result<void> JoinProcessGroups(RestoreContext& ctx, GroupStandIns* stand_ins) {
  // A group whose leader is gone (it exited; its members stay in the group): a stand-in leader
  // with the group's id, in our session, holds the group while its members join.
  TRY(StartGroupStandIns(ctx, stand_ins));
  // Leaders first, then members (the group must exist). A session leader already leads its
  // group.
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
          LOG_WARN("restore: root %d stays in group %d (group %d is outside the tree)",
                   ctx.root_host_pid, getpgid(ctx.root_host_pid), e.pgid());
          continue;
        }
        return std::move(r.error().wrap(StrFormat("pid %d: setpgid %d", e.pid(), e.pgid())));
      }
    }
  }
  return Ok();
}

}  // namespace godwit::restore
