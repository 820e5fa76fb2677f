// Network namespaces: opening one, running nft inside one, and moving the calling thread into one
// and back.
//
// Two ways to act in another namespace, chosen by what must happen there:
//  - a short program (nft): NftRunIn forks a child that enters the namespace and execs; the
//    caller's threads never move (safe from any thread, also while others run).
//  - a socket or a netlink handle the caller keeps: ScopedNetns moves the calling thread for the
//    scope (a socket stays in the namespace it was created in) and back at its end. setns is per
//    thread: other threads are not affected.
#pragma once

#include <sched.h>
#include <sys/types.h>

#include <string>

#include "common/result.h"
#include "common/unique_fd.h"

namespace godwit::netns {

// /proc/PID/ns/net, or with pid 0 the calling thread's own (/proc/thread-self/ns/net).
Result<UniqueFd> Open(pid_t pid);

// Runs `nft -f -` with script on its stdin, in the net namespace netns_fd (-1: the caller's). A
// failure carries nft's output.
Result<void> NftRunIn(int netns_fd, const std::string& script);
// The same in the net namespace of netns_pid (0: the caller's).
Result<void> NftRun(pid_t netns_pid, const std::string& script);

// The calling thread in the namespace ns_fd (of type nstype: CLONE_NEWNET by default; also
// CLONE_NEWUTS, CLONE_NEWIPC) until Leave() or the end of the scope, then back in the one it was
// in. Leave() reports a failure to go back; the destructor cannot, and aborts instead: a thread
// left in a container's namespace would act there silently (cannot happen short of a kernel bug,
// we hold an fd on our own namespace).
class ScopedNetns {
 public:
  static Result<ScopedNetns> Enter(int ns_fd, int nstype = CLONE_NEWNET);
  ScopedNetns(ScopedNetns&& o) noexcept = default;
  ScopedNetns& operator=(ScopedNetns&&) = delete;
  ScopedNetns(const ScopedNetns&) = delete;
  ~ScopedNetns();
  Result<void> Leave();

 private:
  ScopedNetns(UniqueFd own, int nstype) : own_(std::move(own)), nstype_(nstype) {}
  UniqueFd own_;  // our namespace; invalid once left
  int nstype_;
};

}  // namespace godwit::netns
