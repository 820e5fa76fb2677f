// Namespaces: opening one, running nft inside a network namespace, and moving the calling thread
// into a namespace and back. The one home of this plumbing (runtime/, files/, container/,
// migrate/ use it).
//
// Two ways to act in another namespace:
//  - nft: NftRunIn runs libnftables in process, on the calling thread moved into the namespace
//    for the call (the nft binary costs a fork, an exec and its startup: 15-25 ms here; the
//    library ~0.1-0.3 ms for a lock's table). Calls are serialized: libnftables has
//    process-wide state that its contexts share without locking. The library is loaded at the
//    first call (dlopen), not at the process's start: it and the five libraries it needs cost
//    every godwit command ~1 ms of start-up (0.85 ms of CPU, 109 page faults) where most never
//    use it. A command that will lock connections inside a freeze or a blackout loads it ahead
//    with PreloadNft.
//  - a socket or a netlink handle the caller keeps: ScopedNetns (or RunHere around a function)
//    moves the calling thread for the scope (a socket stays in the namespace it was created in)
//    and back at its end. setns is per thread for net, uts and ipc: other threads are not
//    affected.
#pragma once

#include <sched.h>
#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <string>

#include "common/result.h"
#include "common/unique_fd.h"

struct nft_ctx;  // libnftables

namespace godwit::netns {

// libnftables' entry points godwit uses, from the library loaded at run time.
struct NftApi {
  nft_ctx* (*ctx_new)(uint32_t flags) = nullptr;
  void (*ctx_free)(nft_ctx*) = nullptr;
  int (*ctx_buffer_output)(nft_ctx*) = nullptr;
  int (*ctx_buffer_error)(nft_ctx*) = nullptr;
  const char* (*ctx_get_output_buffer)(nft_ctx*) = nullptr;
  const char* (*ctx_get_error_buffer)(nft_ctx*) = nullptr;
  int (*run_cmd_from_buffer)(nft_ctx*, const char*) = nullptr;
};
inline constexpr char kNftLibrary[] = "libnftables.so.1";
// Loads soname and looks the entry points up: kNotFound names the library and dlerror's reason,
// kUnsupported the symbols it lacks. Each call loads anew; the nft calls below share one load.
Result<NftApi> LoadNft(const char* soname);
// Loads libnftables now if no call did yet (a command about to freeze a tree with connections,
// or a migration before its switch): the load then costs nothing inside the frozen window.
Result<void> PreloadNft();
// Whether pid's net namespace has any TCP socket (/proc/PID/net/tcp and tcp6), in any state:
// whether a dump of its tree may lock connections with nftables.
Result<bool> HasTcpSockets(pid_t pid);
// PreloadNft when pid's namespace has a TCP socket (or that cannot be read). Best effort: a
// failure is logged and left to the lock that needs the library, which reports it.
void PreloadNftIfTcp(pid_t pid);

// /proc/PID/ns/NAME (NAME: "net", "ipc", "uts", "mnt", ...), or with pid 0 the calling thread's
// own (/proc/thread-self/ns/NAME). A process that is gone is kNotFound.
Result<UniqueFd> OpenNamespace(pid_t pid, const char* name);
// The same for "net".
Result<UniqueFd> Open(pid_t pid);

// Runs script (what `nft -f -` reads: commands, a ruleset, "list ruleset") in the net namespace
// netns_fd (-1: the caller's), atomically as nft does. Returns what nft printed; a failure
// carries nft's error text.
Result<std::string> NftRunIn(int netns_fd, const std::string& script);
// The same in the net namespace of netns_pid (0: the caller's).
Result<std::string> NftRun(pid_t netns_pid, const std::string& script);

// A libnftables context kept for several runs in one net namespace. Closing nftables' netlink
// socket waits for nf_tables' pending object destruction (an RCU grace period, 5-20 ms here)
// whenever a deletion anywhere on the machine is still pending, and a flush or delete run through
// the socket leaves one pending: NftRunIn pays that at every call's end. A caller with a deadline
// (a lock opened inside a migration's switch) keeps one of these and lets it go later. Holds the
// namespace (its socket does) until destroyed.
class NftContext {
 public:
  static Result<NftContext> Open(int netns_fd);  // -1: the caller's namespace
  NftContext(NftContext&& o) noexcept;
  NftContext& operator=(NftContext&& o) noexcept;
  NftContext(const NftContext&) = delete;
  ~NftContext();
  // As NftRunIn, in this context's namespace.
  Result<std::string> Run(const std::string& script);

 private:
  NftContext() = default;
  void Free();
  UniqueFd ns_;            // the namespace (invalid: the caller's at Open, no switch)
  ::nft_ctx* ctx_ = nullptr;
};

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

// Runs fn on the calling thread inside ns_fd (a ScopedNetns for the call; ns_fd -1: where the
// thread is, no switch). Cheaper than a thread per call (container/ns.h RunInNamespace): no
// creation and, on a busy machine, no milliseconds of waiting for a CPU while a container is
// frozen. fn must not start threads that expect the caller's namespace.
Result<void> RunHere(int ns_fd, int nstype, const std::function<Result<void>()>& fn);

}  // namespace godwit::netns
