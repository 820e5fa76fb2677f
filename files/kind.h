// The per-kind table behind FdDumper/FdRestorer (internal to files/).
//
// Every kind of open file description lives in one file kind_<name>.cc with its dump and its
// restore side by side, registered once in table.cc. The dispatcher (Classify, next to the table in
// table.cc) decides the kind of an fd from fstat, readlink(/proc/PID/fd/N) and fdinfo; the kind's
// dump fills one img::FileEntry. On restore, the kind's open creates the description in the
// coordinator (Prepare); optional hooks run per process (Install: epoll registrations) and before
// the tree resumes (Finalize: TCP repair off).
//
// The kinds share two contexts, FdDumpContext and FdRestoreContext (methods in fd_context.cc; the
// "Fd" prefix keeps them apart from the engine's dump::DumpContext and restore::RestoreContext),
// and the helpers in fd_helpers.cc.
#pragma once

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>

#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "common/result.h"
#include "common/unique_fd.h"
#include "files/files.h"
#include "files/netlock.h"
#include "images/image.h"
#include "proto/fd.pb.h"

namespace godwit::files {

// /proc/PID/fdinfo/N, parsed: the common fields plus every line kept for the kinds.
struct FdInfo {
  uint64_t pos = 0;
  uint32_t flags = 0;  // octal "flags:" (includes O_CLOEXEC)
  int mnt_id = -1;
  std::vector<std::pair<std::string, std::string>> lines;  // key (before ':'), rest (trimmed)
  std::string Get(const std::string& key) const;
  std::vector<std::string> All(const std::string& key) const;
};
Result<FdInfo> ReadFdInfo(pid_t pid, int fd);

// What the dispatcher learned about one fd of a frozen process.
struct Probe {
  pid_t pid = 0;
  int fd = -1;
  int local = -1;  // our copy of the description (pidfd_getfd)
  struct stat st {};
  std::string link;  // readlink /proc/PID/fd/N
  FdInfo info;
};

// One AF_UNIX socket as NETLINK_SOCK_DIAG reports it (sock_diag.cc).
struct UnixDiag {
  uint64_t ino = 0;
  int type = 0;
  int state = 0;
  std::string name;  // sun_path bytes (leading \0: abstract)
  uint64_t peer = 0;
  std::vector<uint64_t> icons;  // a listener's pending connections
  uint32_t rqueue = 0, wqueue = 0;
  int shutdown = -1;
  uint32_t vfs_ino = 0, vfs_dev = 0;  // the bound socket file's inode (0: not bound to a path)
};
using UnixDiagMap = std::map<uint64_t, UnixDiag>;
// Every unix socket of the net namespace nlsock lives in.
Result<UnixDiagMap> DumpUnixDiag(int nlsock);
// sk_shutdown (1 RCV_SHUTDOWN, 2 SEND_SHUTDOWN) of the inet socket with inode ino in pid's net
// namespace, from NETLINK_SOCK_DIAG (nothing else tells it for a datagram socket).
Result<int> InetShutdown(pid_t pid, int family, int protocol, uint64_t ino);

// The destination address (a sockaddr_in or sockaddr_in6) of the inet socket inode ino in pid's
// net namespace, from NETLINK_SOCK_DIAG: known while getpeername still says ENOTCONN (SYN_SENT).
Result<std::string> InetDestination(pid_t pid, int family, int protocol, uint64_t ino);
// A socket created in the net namespace of pid (a thread enters it: setns is per thread).
Result<UniqueFd> SocketInNetns(pid_t pid, int domain, int type, int protocol);

class FdDumpContext {
 public:
  FdDumpContext(images::Sink& sink, const DumpOptions& opts) : sink_(sink), opts_(opts) {}
  const DumpOptions& opts() const { return opts_; }
  // Appends bulk bytes to files-data.blob.
  Result<img::BlobRef> Blob(const void* data, size_t len);
  Result<void> CloseBlob();

  // Work to undo when the tree resumes (--leave-running, or a failed dump), in reverse order.
  void OnResume(std::function<void()> fn) { undo_.push_back(std::move(fn)); }
  // Keeps a copy of fd open for the undo work until the dumper goes away (then it is closed
  // without undoing: the tree was killed).
  int Keep(int fd) {
    kept_.emplace_back(fcntl(fd, F_DUPFD_CLOEXEC, 0));
    return kept_.back().get();
  }
  void RunResume();

  // Per-kind state that spans descriptions (e.g. pipes whose data is stored already).
  std::set<uint64_t> pipes_with_data;
  std::set<int> ptys_with_data;  // pty indexes whose queued input was saved
  // The unix sockets of pid's net namespace (one sock_diag dump per namespace: the tree is
  // frozen, nothing changes).
  Result<const UnixDiagMap*> UnixSockets(pid_t pid);
  // Whether the TCP connection src -> dst (sockaddr bytes) of pid has a peer in its net
  // namespace that no process holds yet (in a listener's accept queue), nothing queued in it
  // (one sock_diag dump per namespace).
  Result<bool> PeerUnaccepted(pid_t pid, const std::string& src, const std::string& dst);
  // Whether mount mnt_id is in pid's mount namespace (/proc/PID/mountinfo, read once per
  // namespace). A file on a mount that is not (a host file a container was started with, e.g. its
  // stdout redirected) cannot be opened again by its path where that tree is restored.
  Result<bool> MountVisible(pid_t pid, int mnt_id);
  // External keys the user allowed (DumpOptions::external, "fd:KEY" or "KEY").
  bool ExternalAllowed(const std::string& key) const;
  // Locks every TCP connection of pid (netlock.h: one lock per dump, in pid's net namespace, on
  // the connections only), once per process; undone by Resume (netlock.cc).
  Result<void> LockProcessTcp(pid_t pid);
  std::unique_ptr<NetLock> netlock;  // null when nothing was locked
  // The connections put in repair mode: a kept copy of each and its SO_REUSEADDR to give back
  // (FdDumper::SetTcpRepair).
  std::vector<std::pair<int, int>> repaired_tcp;
  // readlink of every fd of the process being dumped (the lock scans only its sockets).
  std::map<int, std::string> links;
  std::set<pid_t> tcp_locked_pids;
  // A description in flight (SCM_RIGHTS) met while peeking a unix socket queue, fd the dumper's
  // copy: its file id, recording it first if it is new (set by FdDumper).
  std::function<Result<uint64_t>(int fd)> in_flight;

 private:
  images::Sink& sink_;
  const DumpOptions& opts_;
  std::unique_ptr<images::BlobWriter> blob_;
  std::vector<std::function<void()>> undo_;
  std::vector<UniqueFd> kept_;
  std::map<uint64_t, UnixDiagMap> unix_diag_;  // netns inode -> sockets
  std::map<uint64_t, std::set<std::string>> unaccepted_;  // netns inode -> PeerUnaccepted keys
  std::map<uint64_t, std::set<int>> mounts_;    // mntns inode -> mount ids
};

class FdRestoreContext {
 public:
  FdRestoreContext(const FdRestoreOptions& opts, std::unique_ptr<images::BlobReader> blob)
      : opts_(opts), blob_(std::move(blob)) {}
  const FdRestoreOptions& opts() const { return opts_; }
  Result<std::string> ReadBlob(const img::BlobRef& ref);

  // The prepared fd of a description, opening it (and what it depends on) first if needed.
  Result<int> Ensure(uint64_t file_id);
  const img::FileEntry* Entry(uint64_t file_id) const;
  const std::map<uint64_t, img::FileEntry>& entries() const { return entries_; }
  // Prepared fd or -1.
  int Prepared(uint64_t file_id) const;

  // Fds the coordinator keeps only during Prepare (the other end of a pipe nobody holds, the
  // O_RDWR helper of a FIFO): closed at the end of Prepare.
  void KeepUntilPrepared(UniqueFd fd) { temp_.push_back(std::move(fd)); }
  // Fds the coordinator keeps until Finalize (TCP sockets: repair off, unsent data).
  void KeepUntilFinalize(uint64_t file_id, int fd);
  // Per-kind state across descriptions.
  std::map<uint64_t, std::pair<int, int>> pipes;  // pipe id -> (read, write) prepared fds
  std::map<int, std::pair<int, int>> ptys;        // pty index -> (master, slave)
  std::set<std::string> used;                     // per-kind markers ("pipe:ID:r")
  std::map<std::string, int> named_fds;           // per-kind fds by key ("unix:INO", "memfd:INO")
  std::vector<std::string> made_dirs;             // made for unlinked unix socket names; removed
                                                  // again (deepest first) in Finalize
  // Unlinked unix socket names bound again for Prepare: file id -> the inode of the file the
  // bind made (Finalize unlinks that file only, not what took the path since).
  std::map<uint64_t, ino_t> unix_bound_ino;
  // Files found at the path of an unlinked socket name (zdtm fifo_upon_unix_socket,
  // del_standalone_un: a FIFO or another socket's file took it): renamed aside for the bind,
  // (aside, path), put back over the bound file in Finalize, or by a failed restore.
  std::vector<std::pair<std::string, std::string>> moved_aside;
  // Reaped pidfd targets: pidfs inode at dump -> (stand-in pid, its go pipe's write end)
  // (kind_pidfd.cc).
  std::map<uint64_t, std::pair<pid_t, int>> pidfd_standins;
  // Run in order at the end of Prepare, once every description exists (kind_unix.cc: queues
  // carrying fds in flight, which may be the socket itself or its peer, are sent then).
  std::vector<std::function<Result<void>()>> after_prepare;
  // Descriptions whose flock a process of the tree takes again in its Install (not in Prepare),
  // file id -> that process's old pid: the process that took it when it still holds the
  // description, else the first holder (a parent that took the lock, forked and closed its fd
  // leaves the child the only holder): /proc/locks then names a process of the tree, not the
  // restorer.
  std::map<uint64_t, pid_t> flock_takers;
  // The processes of the restored tree (those with an fd image).
  std::set<pid_t> tree_pids;
  // Host files (RegFile.host_file), opened by the restorer in its own mount namespace when the
  // images are loaded: file id -> fd; -1 if none.
  std::map<uint64_t, UniqueFd> host_files;
  int HostFile(uint64_t id) const {
    auto it = host_files.find(id);
    return it == host_files.end() ? -1 : it->second.get();
  }
  // The fds of the process Install runs for (null outside Install).
  const img::ProcessFds* installing = nullptr;
  // Whether that process has an fd on file_id.
  bool InstallingHolds(uint64_t file_id) const;

  // Moves fd to the first free number >= base_ (close-on-exec in the coordinator).
  Result<int> Park(UniqueFd fd);

 private:
  friend class FdRestorerImpl;
  const FdRestoreOptions& opts_;
  std::unique_ptr<images::BlobReader> blob_;
  std::map<uint64_t, img::FileEntry> entries_;
  std::map<uint64_t, int> prepared_;
  std::set<uint64_t> opening_;
  std::vector<UniqueFd> temp_;
  std::map<uint64_t, int> finalize_fds_;
  int base_ = 0;
};

struct KindOps {
  img::FileKind kind;
  const char* name;
  Result<void> (*dump)(FdDumpContext& ctx, const Probe& p, img::FileEntry& e);
  // Creates the description in the coordinator; flags and position are the kind's business.
  Result<UniqueFd> (*open)(FdRestoreContext& ctx, const img::FileEntry& e);
  // Optional: in restored process pid, before its fds are at their numbers.
  Result<void> (*install)(FdRestoreContext& ctx, const img::FileEntry& e, pid_t pid) = nullptr;
  // Optional: in the coordinator just before the tree resumes; fd is the coordinator's copy.
  Result<void> (*finalize)(FdRestoreContext& ctx, const img::FileEntry& e, int fd) = nullptr;
  // The install hook makes the process's own description (pidfd) and puts it on the prepared
  // number: it runs before every other kind's (epoll registers what is there then).
  bool install_first = false;
  // Optional: in restored process pid once its fds are at their numbers (a file of its own fd
  // table, /proc/PID/fdinfo/N, opens only once fd N is there).
  Result<void> (*install_late)(FdRestoreContext& ctx, const img::FileEntry& e, pid_t pid) = nullptr;
};

const std::vector<KindOps>& KindTable();
const KindOps* FindKind(img::FileKind kind);
// The dispatcher: which kind is this fd. kUnsupported naming pid, fd and what it is.
Result<img::FileKind> Classify(const Probe& p);

// Shared helpers for the kinds.
// Reopens fd through /proc/self/fd with flags (access mode change, FIFO ends).
Result<UniqueFd> Reopen(int fd, int flags);
// Sets O_APPEND/O_NONBLOCK/O_ASYNC/O_DIRECT/O_NOATIME from flags with F_SETFL.
Result<void> SetStatusFlags(int fd, uint32_t flags);
std::string KindName(img::FileKind k);
// Every process's fd table of an image set: the fds-<pid>.img files its inventory lists, by name.
Result<std::vector<std::pair<std::string, img::ProcessFds>>> ReadProcessFds(
    const images::ImageSet& images);
// The description's F_SETOWN_EX owner and F_SETSIG signal (proto FileOwner), and its lease.
// Restore sets signal and lease when the file is opened (set_pid false), the owner in Install
// (true).
Result<void> DumpOwner(const Probe& p, img::FileEntry& e);
Result<void> RestoreOwner(int fd, const img::FileEntry& e, bool set_pid);
// A lease that was being broken (FileEntry.lease_breaking), set by RestoreOwner: broken again.
Result<void> BreakLease(int fd, const img::FileEntry& e);

// Per-kind entry points, defined in kind_<name>.cc.
#define GODWIT_KIND_DECL(n)                                               \
  Result<void> Dump##n(FdDumpContext& ctx, const Probe& p, img::FileEntry& e); \
  Result<UniqueFd> Open##n(FdRestoreContext& ctx, const img::FileEntry& e);
GODWIT_KIND_DECL(Reg)
GODWIT_KIND_DECL(Chr)
GODWIT_KIND_DECL(Pipe)
GODWIT_KIND_DECL(Fifo)
GODWIT_KIND_DECL(Unix)
GODWIT_KIND_DECL(Inet)
GODWIT_KIND_DECL(Eventfd)
GODWIT_KIND_DECL(Epoll)
GODWIT_KIND_DECL(Signalfd)
GODWIT_KIND_DECL(Timerfd)
GODWIT_KIND_DECL(Inotify)
GODWIT_KIND_DECL(Fanotify)
GODWIT_KIND_DECL(Memfd)
GODWIT_KIND_DECL(Tty)
GODWIT_KIND_DECL(External)
GODWIT_KIND_DECL(Netlink)
GODWIT_KIND_DECL(Opath)
GODWIT_KIND_DECL(Nsfs)
GODWIT_KIND_DECL(Pidfd)
GODWIT_KIND_DECL(Packet)
GODWIT_KIND_DECL(BpfMap)
#undef GODWIT_KIND_DECL
// In the holder: a file under /proc/PID of a process of the tree, opened once PID exists.
Result<void> InstallReg(FdRestoreContext& ctx, const img::FileEntry& e, pid_t pid);
Result<void> InstallRegLate(FdRestoreContext& ctx, const img::FileEntry& e, pid_t pid);
// In the holder: its pidfd on a live target of the tree, opened once the target exists.
Result<void> InstallPidfd(FdRestoreContext& ctx, const img::FileEntry& e, pid_t pid);
// At the end of the dump: every live pidfd target is a process of the tree (pids: the dumped
// processes; a zombie counts when its parent is one); holders: file id -> first (pid, fd).
Result<void> CheckPidfdTargets(const std::vector<img::FileEntry>& files,
                               const std::vector<pid_t>& pids,
                               const std::map<uint64_t, std::pair<pid_t, int>>& holders);
Result<void> InstallEpoll(FdRestoreContext& ctx, const img::FileEntry& e, pid_t pid);
Result<void> FinalizeInet(FdRestoreContext& ctx, const img::FileEntry& e, int fd);
// The pidfd_open flags of a pidfd's description (PIDFD_NONBLOCK, PIDFD_THREAD).
int PidfdOpenFlags(const img::FileEntry& e);
// An established TCP connection that had sent bytes its peer had not acked yet.
bool HasUnackedData(const img::FileEntry& e);
// After the network unlock: a window probe (repair on and off) so that the peer answers now,
// not at the retransmission timeout. Failures are logged: the retransmission does it later.
void ProbePeer(const img::FileEntry& e, int fd);
// Called by FdRestorer::Finalize for each unix socket the coordinator prepared (fd unused).
Result<void> FinalizeUnix(FdRestoreContext& ctx, const img::FileEntry& e, int fd);
// Install: a session leader's controlling pty (ProcessFds.ctty_pty), in the restored process.
Result<void> SetCtty(FdRestoreContext& ctx, const img::ProcessFds& pf, pid_t old_pid);
// Opens /dev/tty again on each fd of the process that held it (after SetCtty).
Result<void> OpenDevTtys(FdRestoreContext& ctx, const img::ProcessFds& pf, pid_t old_pid);

// Locks (locks.cc): flock/OFD belong to the description, POSIX locks to the process.
std::vector<img::FileLock> ParseLocks(const FdInfo& info);
Result<void> ApplyLock(int fd, const img::FileLock& l);

// Socket options shared by unix and inet sockets (sockopts.cc).
void DumpSockOpts(int fd, img::SockOpts* o);
Result<void> RestoreSockOpts(int fd, const img::SockOpts& o);
// SO_BUF_LOCK as dumped (SockOpts.buf_lock_plus1): after any SO_*BUFFORCE, which locks both.
Result<void> RestoreBufLock(int fd, const img::SockOpts& o);

// Copies a socket's receive queue without consuming it (MSG_PEEK with SO_PEEK_OFF), one
// QueuedMsg per datagram, or one for a stream (split where fds ride on it). Fds in flight
// (SCM_RIGHTS) are recorded through FdDumpContext::in_flight, their file ids on the message.
Result<void> PeekQueue(FdDumpContext& ctx, int fd, bool stream,
                       google::protobuf::RepeatedPtrField<img::QueuedMsg>* out);

// The lock of the repaired connections socks in the caller's net namespace (the host's), as
// NetLock::Where::kRouted, unless tree_pid's namespace is the caller's: false when nothing was
// added (tcp_after_dump.cc; LockOutside and FdDumper::LockOutside).
Result<bool> LockOutsideOf(NetLock& lock, const std::vector<const img::FileEntry*>& socks,
                           pid_t tree_pid);

}  // namespace godwit::files
