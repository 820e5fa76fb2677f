// Sessions and process groups of a restored tree.
//
// Sessions are made while forking: a process that led its session calls setsid in itself
// (after_clone.cc), after forking the children that stayed in the session it had before (the
// fork order is planned here, before anything is forked). Process groups are joined afterwards,
// from outside, by injected setpgid: leaders first, then members; a group whose leader is gone
// gets a stand-in leader for the time its members join.
#pragma once

#include <sys/types.h>

#include <vector>

#include "restore/context.h"

namespace godwit::restore {

// The sessions can be rebuilt: each process leads its own, shares its parent's, or kept one its
// parent left with setsid (forked before it; the parent itself may have kept it from its own
// parent the same way). kUnsupported names the process otherwise.
Result<void> CheckSessions(const img::ProcessTree& tree);

// Per process of the tree (by index): its children (indices, in tree order), and for each whether
// it is forked before the parent's setsid (it stays in the session the parent inherited).
struct ChildOrder {
  std::vector<int> children;
  std::vector<char> before_setsid;
};
std::vector<ChildOrder> PlanForks(const img::ProcessTree& tree);

// Stand-in group leaders (our children), killed and reaped when this goes away.
class GroupStandIns {
 public:
  GroupStandIns() = default;
  GroupStandIns(const GroupStandIns&) = delete;
  GroupStandIns& operator=(const GroupStandIns&) = delete;
  ~GroupStandIns();
  std::vector<pid_t> pids;
};

// Puts every seized process in its dumped process group (injected setpgid). Stand-in leaders
// for groups whose leader is gone go into *stand_ins: the caller keeps them until the tree runs.
Result<void> JoinProcessGroups(RestoreContext& ctx, GroupStandIns* stand_ins);

}  // namespace godwit::restore
