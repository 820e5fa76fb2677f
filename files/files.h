// File descriptors of a checkpointed tree: the contract between the process engine (dump/,
// restore/) and the per-kind code in files/.
//
// Dump: the engine freezes the tree, then calls FdDumper::DumpProcess for every process. The
// dumper takes a copy of each fd with pidfd_getfd (the same open file description), asks the
// per-kind table which kind it is, and records one FileEntry per open file description (shared
// descriptions, after fork or dup, get one id: kcmp KCMP_FILE) plus, per process, the fd numbers
// with their flags. An fd kind godwit cannot restore faithfully is an error naming pid, fd and
// kind, returned before anything is killed.
//
// Restore: the coordinator loads the images and, before forking the tree, calls
// FdRestorer::Prepare, which opens every open file description at high fd numbers (>= base), in
// the coordinator. The restored processes inherit them through fork (so sharing survives). Each
// restored process, once it has forked its own children and before its memory is replaced,
// calls Install(old_pid): dup to the recorded numbers, set flags, per-process work (epoll
// registrations by fd number, POSIX locks), close the high fds. After the whole tree is rebuilt
// and just before it resumes, the coordinator calls Finalize (TCP repair off, network unlock).
#pragma once

#include <sys/types.h>

#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "common/result.h"
#include "images/image.h"

namespace godwit::files {

struct DumpOptions {
  bool leave_running = false;    // the tree resumes after the dump: give back what was taken
  bool tcp_established = false;  // dump established TCP connections (TCP_REPAIR)
  bool shell_job = false;        // a tty/pipes from outside are allowed on stdio
  // "fd:KEY" style external resources the user allowed, CRIU --external / --inherit-fd style
  std::vector<std::string> external;
};

struct FdRestoreOptions {
  bool tcp_close = false;  // restore established TCP sockets closed instead of live
  bool shell_job = false;  // an outside terminal in the images is the coordinator's own (fd 0)
  // Finalize leaves the network lock in place (the TCP connections are live but their packets
  // still dropped): the caller removes it later (a migration's destination, at the commit).
  bool keep_netlock = false;
  // With keep_netlock: the restored tree's fresh net namespace is locked whole by the caller
  // already (kAheadQuietName's table: nothing in or out but on loopback; a migration's
  // environment made ahead), so LockNetwork locks there, in that table, only the connections
  // whose both ends are in the namespace (over loopback), and makes it no quieter.
  bool netns_locked = false;
  // --inherit-fd fd[N]:KEY: the coordinator's fd N stands for the external resource KEY
  std::vector<std::pair<int, std::string>> inherit_fds;
  // Memfds the engine already recreated because they are mapped (shmem.img), by the dumped
  // inode: an fd on the same memfd opens that one again, so the fd and the mapping stay one
  // object. Fds of the coordinator, valid during Prepare.
  std::map<uint64_t, int> memfds;
};

class FdDumper {
 public:
  static Result<std::unique_ptr<FdDumper>> Create(images::Sink& sink, const DumpOptions& opts);
  virtual ~FdDumper() = default;
  // The tree is frozen (ptrace-seized or cgroup-frozen). Writes fds-<pid>.img.
  virtual Result<void> DumpProcess(pid_t pid) = 0;
  // After every process: whether the tree's descriptions can be restored at all (peers outside
  // the tree, pidfd targets), writing nothing. A kill-mode dump asks before it releases any
  // memory: a refusal must leave the tree running. Finish checks the same again.
  virtual Result<void> Check() = 0;
  // After every process: writes files.img and the data blobs.
  virtual Result<void> Finish() = 0;
  // The dump failed or --leave-running: undo side effects (e.g. TCP repair mode off).
  virtual void Resume() = 0;
  // After Finish, with the tree's TCP connections kept in repair mode and locked (no Resume):
  // the same lock in the caller's net namespace, as LockOutside below does from the images;
  // Resume removes it too.
  virtual Result<void> LockOutside(pid_t tree_pid) = 0;
  // The same connections in repair mode (on) or out of it (off, no window probe), the lock
  // staying. Off before the tree may run again while it is meant to stay silent (a held
  // checkpoint): a socket in repair mode fails the tree's reads and takes its writes into the
  // queue last selected for repair. On again before the tree is killed: closing a socket in
  // repair mode sends nothing and leaves no orphan behind.
  virtual void SetTcpRepair(bool on) = 0;
  // Statistics for the report: number of fds and files by kind.
  virtual std::vector<std::pair<std::string, int>> Counts() const = 0;
};

// After a dump that kept the tree's TCP connections in repair mode and locked (the caller meant to
// kill the tree) when the tree runs on after all: repair off on each connection, found in the
// still-frozen tree by the images' fd numbers, then the lock table removed from their net
// namespaces (tcp_after_dump.cc). images: the dump's image set.
Result<void> ResumeTcp(const images::ImageSet& images);
// With the same images, before the tree (and its net namespace) is killed: the same lock in the
// caller's net namespace (the host's), so the peers' packets are dropped there, not routed
// elsewhere, while the tree is gone; the restore's Finalize removes it (tcp_after_dump.cc).
// Nothing to do when tree_pid's net namespace is the caller's.
Result<void> LockOutside(const images::ImageSet& images, pid_t tree_pid);

class FdRestorer {
 public:
  static Result<std::unique_ptr<FdRestorer>> Load(const images::ImageSet& images,
                                                  const FdRestoreOptions& opts);
  virtual ~FdRestorer() = default;
  // In the coordinator, before the first fork: opens every open file description at fd numbers
  // >= base_fd.
  virtual Result<void> Prepare(int base_fd) = 0;
  // In the restored process old_pid (single-threaded, a fork of the coordinator or of a restored
  // parent, after it has forked its children): installs its fds and closes the prepared ones.
  virtual Result<void> Install(pid_t old_pid) = 0;
  // In the coordinator, after Install ran in every process: close the coordinator's copies.
  virtual void ClosePrepared() = 0;
  // In the coordinator, just before the tree resumes.
  virtual Result<void> Finalize() = 0;
  // The host pid of each dumped pid, when they differ (a tree restored next to its still
  // existing original, e.g. a migration's source held frozen: its processes keep the dumped
  // host pids). Finalize takes fds from the restored processes by these, never by the dumped
  // pids, which may name the original's processes.
  virtual void SetHostPids(std::map<pid_t, pid_t> dumped_to_host) = 0;
  // Highest fd number any restored process uses (the engine keeps its own fds above it when
  // RLIMIT_NOFILE leaves room there).
  virtual int MaxFd() const = 0;
  // Every fd number a restored process uses (its fds, epoll registration numbers). When there is
  // no room above MaxFd() below RLIMIT_NOFILE, the engine puts its fds and base_fd in a gap of
  // these; Prepare fails if a prepared fd lands on one of them.
  virtual std::set<int> UsedFds() const = 0;
  // How many fds Prepare keeps open in the coordinator (one per open file description).
  virtual int FileCount() const = 0;
  // The engine's own fds (report pipe, images dir) that every restored process keeps through
  // Install, which closes every other number up to MaxFd() it does not restore.
  virtual void KeepThroughInstall(std::vector<int> fds) = 0;
  // Optional, for a restore into a fresh network namespace (migration, a container's new netns):
  // call before its addresses come up, in that namespace or naming it by a pid in it
  // (netns_pid; 0: ours). Drops the restored TCP connections' packets (the same nftables table
  // the dump made, so Finalize removes it there once the sockets are live): a peer's
  // retransmission arriving before the restore would otherwise get a RST.
  virtual Result<void> LockNetwork(pid_t netns_pid = 0) = 0;
  // The fd number at which dumped process `pid` holds a removed directory with inode dev:ino
  // (restored as a removed directory too), or -1: a removed cwd that is also open (zdtm cwd02)
  // is entered through it, so cwd and fd stay one directory.
  virtual int RemovedDirFd(pid_t pid, uint64_t dev, uint64_t ino) const = 0;
  // The pidfds of threads (PIDFD_THREAD, a thread other than a leader) that dumped process `pid`
  // holds: Install leaves a placeholder at each fd number, and the restore opens the real pidfd
  // once the threads exist (restore/threads.cc).
  struct ThreadPidfd {
    int fd;
    pid_t tid;     // as the holder names it (its pid namespace)
    int flags;     // pidfd_open flags (PIDFD_THREAD, PIDFD_NONBLOCK)
    bool cloexec;
  };
  virtual std::vector<ThreadPidfd> ThreadPidfds(pid_t pid) const = 0;
};

}  // namespace godwit::files
