// The restore driver's shared state, passed to every step: options, the image set, the tree, the
// file restorer, and per-process handles (a remote-syscall channel into each stopped process).
//
// A step is `Result<void> Fn(RestoreContext&, ProcessRestore&)`, run for each live process once
// the whole tree has been forked and stopped (see restore/steps.cc for the table and ordering).
#pragma once

#include <sys/types.h>

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common/remote.h"
#include "common/result.h"
#include "common/unique_fd.h"
#include "images/image.h"
#include "restore/lazy.h"
#include "proto/core.pb.h"
#include "proto/mm.pb.h"
#include "proto/pagemap.pb.h"
#include "proto/pstree.pb.h"

namespace godwit::files {
class FdRestorer;
}
namespace godwit::img {
class ProcessState;  // proto/pstate.pb.h
}

namespace godwit::restore {

struct RestoreOptions {
  std::string images_dir;
  bool detach = false;
  std::string pid_file;
  bool tcp_close = false;
  bool keep_netlock = false;  // files::FdRestoreOptions::keep_netlock
  bool shell_job = false;
  std::vector<std::pair<int, std::string>> inherit_fds;
  std::function<void(const char*, uint64_t, uint64_t)> progress;
  // How memory is filled (restore/pages.cc). The defaults are the fast paths; each switch exists
  // to measure against (the CLI sets them from GODWIT_NO_UFFD, GODWIT_NO_SPLIT,
  // GODWIT_NO_POPULATE for A/B benchmarks) and as a fallback to compare behaviour.
  struct PageFill {
    bool uffd = true;      // anonymous private memory by UFFDIO_COPY from the coordinator
    bool split = true;     // a coordinator thread writes half of a large raw fill
    bool populate = true;  // MADV_POPULATE_WRITE before the process's own preadv
    // Private memory a parent shares copy-on-write with its children comes back shared
    // (restore/cow.h): the coordinator maps and fills it before the tree forks.
    bool inherit_cow = true;
  } fill;
  images::ReadOptions read;  // how the image set is checked (ImageSet::Open)
  // Anonymous private memory is paged in after the tree runs (restore/lazy.h): the restore
  // returns with RestoreStats::pager still filling. Page blobs are then checked chunk by chunk
  // as they are read, not whole before (ReadOptions::chunk_checked_blobs).
  bool lazy = false;
  // false: the pager installs faulted pages only, never pushes the rest (tests, measuring).
  bool lazy_background = true;
  // The pushes nap briefly and often (common/priority.h Pacer); false: they do not (A/B runs:
  // GODWIT_NO_PACE).
  bool lazy_pace = true;
  // The page files are given up as their pages go in (LazyPager::DiscardConsumed): a
  // migration's staging, not an image kept for another restore.
  bool lazy_discard = false;
  // Hooks for restoring a tree inside a container's fresh namespaces (all optional).
  // root_clone_flags (CLONE_NEWNS|NEWUTS|NEWIPC|NEWNET|NEWCGROUP; NEWPID follows the image) are
  // added to the root's clone3. root_inside runs in the root task right after its clone (a
  // copy of the single-threaded coordinator); non-zero is an errno and *what names the step.
  // root_outside then runs in the coordinator with the root's host pid, before the root clones
  // its children and before any process state is restored (cgroup membership, veth, contents).
  // The files are then prepared inside the root's mount and net namespaces (paths and sockets
  // are the container's). CLONE_NEWCGROUP is unshared by the root only after root_outside, so
  // the cgroup namespace's root is the cgroup root_outside put it in.
  int root_clone_flags = 0;
  // >= 0: a user namespace every restored process joins (setns) once it has forked its children
  // and installed its files, before any state is restored in it. Outside it, the tree's pids and
  // tids can still be chosen at every level (set_tid needs CAP_CHECKPOINT_RESTORE over the host's
  // pid namespace); a thread can no longer join it, so multi-threaded processes are refused.
  int userns_fd = -1;
  std::function<int(const char** what)> root_inside;
  std::function<Result<void>(pid_t root_host_pid)> root_outside;
  // Called with the root's host pid right after its clone, while it runs root_inside: work
  // root_outside needs done, started early (a cgroup join is mostly waiting; the contents of
  // namespaces the clone made). A net namespace the clone made is locked before this runs.
  std::function<void(pid_t root_host_pid)> root_forked;
  // The root's net namespace is a fresh one joined by root_inside (made ahead by a holder, not
  // by root_clone_flags): its TCP connections are locked as for CLONE_NEWNET.
  bool root_fresh_netns = false;
  // With root_fresh_netns and keep_netlock: the caller has locked that namespace whole already
  // (a migration's environment made ahead: nothing in or out but loopback until its commit), so
  // the tree takes no lock of its own there: only its connections over loopback are added to
  // the caller's table (files::FdRestoreOptions::netns_locked).
  bool root_netns_locked = false;
  // The root's cgroups, joined from inside instead of by root_outside: >= 0, a cgroup2 directory
  // the root is cloned into (CLONE_INTO_CGROUP; without it where the kernel refuses), and
  // root_enter_cgroup runs in the root before root_inside, told whether it was born there, to
  // join the rest itself (a v1 "tasks" write of its own thread takes no global lock; a move from
  // outside takes cgroup_threadgroup_rwsem for writing, whose first writer after a quiet spell
  // waits for an RCU grace period: 5-15 ms here). Its children inherit them. Non-zero is an
  // errno and *what names the step.
  int root_cgroup_fd = -1;
  std::function<int(bool born_into, const char** what)> root_enter_cgroup;
};

struct RestoreStats {
  int processes = 0;
  int zombies = 0;
  int threads = 0;
  uint64_t vmas = 0;
  uint64_t pages = 0;
  uint64_t bytes = 0;
  uint64_t remote_calls = 0;
  double fork_ms = 0;
  double memory_ms = 0;
  double total_ms = 0;
  pid_t root_pid = 0;
  // With RestoreOptions::lazy, when pages are still owed: Wait() or Detach() it (its destructor
  // waits).
  std::shared_ptr<LazyPager> pager;
  uint64_t lazy_bytes = 0;  // owed when the tree started to run
  uint64_t hot_bytes = 0;   // of a lazy restore after pre-copy: the last round's, installed first
  // Earlier rounds' pages the restore found resolved ahead (restore/load.h TakeLazyAhead) and
  // handed to the pager as they were, not recorded inside the restore (the final dump may
  // replace some of them, a small process is filled whole before it runs).
  uint64_t lazy_prepared_bytes = 0;
};

struct ProcessRestore {
  const img::ProcessEntry* entry = nullptr;
  pid_t pid = 0;
  img::ProcessCore core;
  img::MmEntry mm;
  std::vector<img::PageMap> pagemaps;  // pre-dump rounds first, applied in order
  // Lazy: what FillPages left to the pager, per pagemap in order, recorded in one batch.
  std::vector<LazyPager::Source> lazy_sources;
  std::unique_ptr<remote::Remote> remote;
  std::vector<pid_t> attached;  // threads under our ptrace (host tids), the main thread first
  // pid is the host pid: entry->pid() when the tree keeps its host pids, else what the kernel
  // gave (see RestoreContext::inner_level). host_tids: dumped tid -> host tid of the other
  // threads, when they differ.
  std::map<pid_t, pid_t> host_tids;
  // pstate-<pid>.img, once loaded (restore/pstate.h LoadPstate).
  mutable std::shared_ptr<const img::ProcessState> pstate;
  pid_t HostTid(pid_t image_tid) const {
    if (image_tid == entry->pid()) return pid;
    auto it = host_tids.find(image_tid);
    return it == host_tids.end() ? image_tid : it->second;
  }
};

struct LastPidSetter;  // restore/threads.cc

struct RestoreContext {
  RestoreOptions opts;
  const images::ImageSet* images = nullptr;
  img::ProcessTree tree;
  std::vector<img::ShmemObject> shmem;
  std::map<uint64_t, UniqueFd> shmem_fds;  // memfds in the coordinator, by object id
  files::FdRestorer* fds = nullptr;
  RestoreStats stats;
  std::vector<std::unique_ptr<ProcessRestore>> procs;  // live processes, tree order
  std::map<pid_t, ProcessRestore*> by_pid;
  // With container hooks: the images directory, open at this fd number in every restored
  // process (their mount ns is the container's); -1: injected opens use the path.
  int images_fd = -1;
  // > 0: the tree's root is the init of a pid namespace this many levels below the dumper's (a
  // container). Only the ids at levels >= inner_level (inside the tree's own namespace) must come
  // back; the outer ones (host pids) are the dumped ones when free, else whatever the kernel
  // gives, so a copy can run next to its still-running original. 0: every level is restored (a
  // plain tree keeps its host pids).
  int inner_level = 0;
  pid_t root_host_pid = 0;  // once forked
  // The root was cloned into RestoreOptions::root_cgroup_fd (set before the clone it returns
  // from, so the root reads it too).
  bool root_born_into_cgroup = false;
  std::shared_ptr<LazyPager> lazy;  // RestoreOptions::lazy
  // Private VMAs the coordinator mapped and filled before the fork, inherited by every process
  // of the tree (restore/cow.h); each process keeps those it has and corrects their pages.
  struct CowRange {
    uint64_t start = 0, end = 0;
    const img::Vma* vma = nullptr;  // the owner's (the highest process of the tree that has it)
    pid_t owner = 0;
  };
  std::vector<CowRange> cow;
  bool cow_mapped = false;  // the coordinator's own mappings of cow are still there
  // With a user namespace: sets the next tid of the tree's pid namespace for the threads step
  // (made on first use; see restore/threads.cc).
  std::shared_ptr<LastPidSetter> last_pid;
};

// A process's / thread's id in its own (innermost) pid namespace: what injected syscalls inside
// it must use (the coordinator uses the outermost, pid()/tid()).
inline pid_t InnerPid(const img::ProcessEntry& e) {
  return e.ns_pids_size() > 1 ? e.ns_pids(e.ns_pids_size() - 1) : e.pid();
}
inline pid_t InnerTid(const img::ThreadCore& t) {
  return t.ns_tids_size() > 1 ? t.ns_tids(t.ns_tids_size() - 1) : t.tid();
}
// How many pid namespaces a process is in (1: the dumper's only).
inline int Levels(const img::ProcessEntry& e) {
  return e.ns_pids_size() > 1 ? e.ns_pids_size() : 1;
}
// The id of the process with outermost id pid, seen from pid namespace level `level` (0: the
// dumper's), or 0 when it has none there (restore/load.cc).
pid_t PidAtLevel(const RestoreContext& ctx, pid_t pid, int level);

}  // namespace godwit::restore
