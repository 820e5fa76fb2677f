// AF_UNIX sockets: stream, datagram, seqpacket; bound (path or abstract), listening,
// connected; receive queues (peeked, never consumed; datagrams one by one); shutdown state;
// pending (not yet accepted) connections whose client is in the tree. The peer of a socket comes
// from sock_diag (UNIX_DIAG_PEER); peers outside the tree are decided in FdDumper::Finish.
//
// Restore: a connected pair with both ends in the tree is one socketpair (an accepted socket thus
// loses the listener's name in getsockname: documented); a listener is bound and listens; a
// pending client connects to its restored listener; a datagram socket connected one-way binds
// and connects to its peer's name. Stale socket files of the dumped tree are removed before bind;
// an address in use by someone else is kExists.
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <climits>
#include <cstring>

#include "common/fs.h"
#include "common/log.h"
#include "common/scope_exit.h"
#include "files/kind.h"

namespace godwit::files {

namespace {
constexpr int kRcvShutdown = 1, kSendShutdown = 2;

socklen_t MakeAddr(const std::string& name, struct sockaddr_un* sa) {
  memset(sa, 0, sizeof(*sa));
  sa->sun_family = AF_UNIX;
  size_t n = std::min(name.size(), sizeof(sa->sun_path));
  memcpy(sa->sun_path, name.data(), n);
  return offsetof(struct sockaddr_un, sun_path) + n;
}

std::string Printable(const std::string& name) {
  if (name.empty()) return "(unnamed)";
  if (name[0] == '\0') return "@" + name.substr(1);
  return name.c_str();
}

const img::FileEntry* FindUnix(FdRestoreContext& ctx, uint64_t ino) {
  for (const auto& [id, e] : ctx.entries())
    if (e.kind() == img::FILE_KIND_UNIX && e.unix_sk().ino() == ino) return &e;
  return nullptr;
}

Result<void> BindHere(int fd, int type, const std::string& name);

// The address that reaches u's bound socket from the coordinator: a relative name through the
// directory it was dumped in (the coordinator's cwd is elsewhere).
std::string Reachable(const img::UnixSocket& u) {
  const std::string& n = u.name();
  if (u.name_dir().empty() || n.empty() || n[0] == '\0' || n[0] == '/' ||
      u.name_dir().size() + 1 + n.size() >= sizeof(sockaddr_un::sun_path))
    return n;
  return u.name_dir() + "/" + n;
}

// Binds to name; a relative name is bound from the directory it was dumped in (the coordinator's
// cwd is elsewhere), so the socket keeps its relative name and its file lands where it was.
Result<void> Bind(int fd, int type, const std::string& name, const std::string& dir) {
  if (dir.empty() || name.empty() || name[0] == '\0' || name[0] == '/') return BindHere(fd, type, name);
  UniqueFd saved(open(".", O_PATH | O_DIRECTORY | O_CLOEXEC));
  UniqueFd d(open(dir.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
  if (!saved) return Errno("open cwd");
  if (!d) return Errno("open %s (unix socket %s)", dir.c_str(), Printable(name).c_str());
  if (fchdir(d.get()) < 0) return Errno("fchdir %s", dir.c_str());
  ScopeExit back([&] { (void)!fchdir(saved.get()); });
  return BindHere(fd, type, name);
}

// Binds to name; a path left behind by the dumped (now dead) socket is removed first.
Result<void> BindHere(int fd, int type, const std::string& name) {
  struct sockaddr_un sa;
  socklen_t len = MakeAddr(name, &sa);
  if (bind(fd, reinterpret_cast<sockaddr*>(&sa), len) == 0) return Ok();
  if (errno != EADDRINUSE)
    return Errno("bind unix %s", Printable(name).c_str());
  if (name[0] != '\0') {
    struct stat st;
    if (lstat(name.c_str(), &st) == 0 && S_ISSOCK(st.st_mode)) {
      UniqueFd probe(socket(AF_UNIX, type | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
      if (connect(probe.get(), reinterpret_cast<sockaddr*>(&sa), len) < 0 && errno == ECONNREFUSED) {
        unlink(name.c_str());
        if (bind(fd, reinterpret_cast<sockaddr*>(&sa), len) == 0) return Ok();
      }
    }
  } else {
    // An abstract name of a dead socket that was in flight in a queue (its own, or a cycle's)
    // stays bound until the kernel's unix garbage collector frees it. The collector runs when a
    // unix socket is released while sockets are in flight, and a request made while it runs is
    // dropped: the dumped tree's last sockets may have closed during a collection that still
    // saw the cycle reachable, and then nothing collects it until some unix socket somewhere
    // closes. So each try releases one of ours (a fresh pair) to schedule a collection, then
    // waits a little for it: bounded (2 s).
    for (int i = 0; i < 400 && errno == EADDRINUSE; i++) {
      int pair[2];
      if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) == 0) {
        close(pair[0]);
        close(pair[1]);
      }
      struct timespec ts = {0, 5 * 1000 * 1000};
      nanosleep(&ts, nullptr);
      if (bind(fd, reinterpret_cast<sockaddr*>(&sa), len) == 0) return Ok();
    }
  }
  return MakeError(ErrorKind::kExists, EADDRINUSE, "unix address %s is already in use",
                   Printable(name).c_str());
}

Result<void> Connect(int fd, const std::string& name) {
  struct sockaddr_un sa;
  socklen_t len = MakeAddr(name, &sa);
  if (connect(fd, reinterpret_cast<sockaddr*>(&sa), len) < 0)
    return Errno("connect unix %s", Printable(name).c_str());
  return Ok();
}

// The directories of an unlinked socket's name that are gone too (sk-unix01 removes them): made
// for the bind, removed again in Finalize.
void MakeParents(FdRestoreContext& ctx, const img::UnixSocket& u) {
  if (!u.name_deleted()) return;
  std::string path = Reachable(u);
  if (path.empty() || path[0] != '/') return;
  std::vector<std::string> missing;
  for (size_t slash = path.rfind('/'); slash != std::string::npos && slash > 0;
       slash = path.rfind('/', slash - 1)) {
    std::string d = path.substr(0, slash);
    if (access(d.c_str(), F_OK) == 0) break;
    missing.push_back(d);
  }
  for (auto it = missing.rbegin(); it != missing.rend(); ++it)
    if (mkdir(it->c_str(), 0700) == 0) ctx.made_dirs.push_back(*it);
}

// Binds e's socket fd to its name. The path of an unlinked name may be taken by another file
// since (zdtm fifo_upon_unix_socket: a FIFO; del_standalone_un: another listener's file moved
// over it): that file is renamed aside for the bind and put back in Finalize, so the socket has
// its name and the path its file. A file at the name of a socket that was not unlinked, which is
// an unlinked name's file this restore bound, goes (that one was made for Prepare only).
Result<void> BindTaken(FdRestoreContext& ctx, const img::FileEntry& e, int fd) {
  const img::UnixSocket& u = e.unix_sk();
  auto b = Bind(fd, u.type(), u.name(), u.name_dir());
  std::string path = Reachable(u);
  struct stat st;
  if (!b.ok() && b.error().sys_errno() == EADDRINUSE && !path.empty() && path[0] == '/' &&
      lstat(path.c_str(), &st) == 0) {
    bool ours = false;
    for (const auto& [id, ino] : ctx.unix_bound_ino) ours |= ino == st.st_ino;
    if (ours) {
      unlink(path.c_str());
      b = Bind(fd, u.type(), u.name(), u.name_dir());
    } else if (u.name_deleted()) {
      for (int i = 0; i < 100; i++) {
        std::string aside = StrFormat("%s.godwit-aside.%d", path.c_str(), i);
        if (access(aside.c_str(), F_OK) == 0) continue;
        if (rename(path.c_str(), aside.c_str()) < 0)
          return Errno("move %s aside to bind unix socket %s", path.c_str(), path.c_str());
        ctx.moved_aside.push_back({aside, path});
        b = Bind(fd, u.type(), u.name(), u.name_dir());
        break;
      }
    }
  }
  if (!b.ok()) return b;
  if (u.name_deleted() && !path.empty() && path[0] == '/' && lstat(path.c_str(), &st) == 0)
    ctx.unix_bound_ino[e.id()] = st.st_ino;
  return Ok();
}

// An unlinked name: its file goes again (the name may be bound by another socket next).
void UnlinkName(const img::UnixSocket& u) {
  if (!u.name_deleted() || u.name().empty() || u.name()[0] == '\0') return;
  std::string path = Reachable(u);
  struct stat st;
  if (lstat(path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode)) unlink(path.c_str());
}

// The bound socket file as it was: its mode and owner (bind gives it 0777 & ~umask).
void FixNameFile(const img::UnixSocket& u) {
  if (u.name_deleted() || !u.name_mode()) return;
  std::string path = Reachable(u);
  if (chmod(path.c_str(), u.name_mode()) < 0)
    LOG_WARN("chmod unix socket file %s: %s", path.c_str(), strerror(errno));
  if (lchown(path.c_str(), u.name_uid(), u.name_gid()) < 0)
    LOG_WARN("chown unix socket file %s: %s", path.c_str(), strerror(errno));
}

// One queued message with the descriptions that were in flight on it (SCM_RIGHTS), prepared
// first (they are in no process's table, or are, and then shared again).
Result<void> SendWithFds(FdRestoreContext& ctx, const img::UnixSocket& u, int from,
                         const std::string& to, const std::string& data, const img::QueuedMsg& m) {
  if (m.fds_size() > 253)
    return MakeError(ErrorKind::kBadImage, 0, "unix socket %llu: %d fds on one message",
                     static_cast<unsigned long long>(u.ino()), m.fds_size());
  std::vector<int> fds;
  for (uint64_t id : m.fds()) {
    ASSIGN_OR_RETURN(int fd, ctx.Ensure(id));
    fds.push_back(fd);
  }
  std::vector<char> cbuf(CMSG_SPACE(sizeof(int) * fds.size()));
  struct iovec iov {const_cast<char*>(data.data()), data.size()};
  struct msghdr mh {};
  struct sockaddr_un sa;
  if (!to.empty()) {
    mh.msg_name = &sa;
    mh.msg_namelen = MakeAddr(to, &sa);
  }
  mh.msg_iov = &iov;
  mh.msg_iovlen = 1;
  mh.msg_control = cbuf.data();
  mh.msg_controllen = cbuf.size();
  struct cmsghdr* c = CMSG_FIRSTHDR(&mh);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
  memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
  if (sendmsg(from, &mh, MSG_NOSIGNAL) != static_cast<ssize_t>(data.size()))
    return Errno("requeue a %zu-byte message with %zu fds to unix socket %llu", data.size(),
                 fds.size(), static_cast<unsigned long long>(u.ino()));
  return Ok();
}

// A datagram's named sender (zdtm socket_snd_addr): recvmsg names the socket that sent it, even
// one closed since (the queued message keeps it). The message goes again from a socket bound to
// that name while the name is free (abstract, or an absolute path: its file is removed again
// after the send; the sender's address stays with the queued message), or from the restored
// socket that holds the name now. -1: neither (the message goes from `from`, unnamed).
int SenderFor(FdRestoreContext& ctx, int type, const std::string& sender, UniqueFd* tmp) {
  const size_t off = offsetof(struct sockaddr_un, sun_path);
  if (sender.size() <= off + 1) return -1;
  std::string name = sender.substr(off);
  if (name[0] != '\0') name = name.c_str();  // a path: up to its NUL
  if (name.empty() || (name[0] != '\0' && name[0] != '/')) return -1;
  UniqueFd s(socket(AF_UNIX, type | SOCK_CLOEXEC, 0));
  struct sockaddr_un sa;
  socklen_t len = MakeAddr(name, &sa);
  if (s && bind(s.get(), reinterpret_cast<sockaddr*>(&sa), len) == 0) {
    if (name[0] == '/') unlink(name.c_str());  // the bound socket keeps its name
    *tmp = std::move(s);
    return tmp->get();
  }
  for (const auto& [id, e] : ctx.entries()) {
    if (e.kind() != img::FILE_KIND_UNIX || e.unix_sk().name() != name) continue;
    int fd = ctx.Prepared(id);
    if (fd >= 0) return fd;
  }
  return -1;
}

// Writes the queue of `e` through `from` (the peer end, or a socket that can reach e).
Result<void> Requeue(FdRestoreContext& ctx, const img::UnixSocket& u, int from,
                     const std::string& to) {
  for (const auto& m : u.queue()) {
    ASSIGN_OR_RETURN(std::string data, ctx.ReadBlob(m.data()));
    if (m.fds_size()) {
      TRY(SendWithFds(ctx, u, from, to, data, m));
      continue;
    }
    if (u.type() == SOCK_STREAM) {
      TRY(fs::WriteAll(from, data.data(), data.size()));
      continue;
    }
    ssize_t n;
    if (to.empty()) {
      n = send(from, data.data(), data.size(), MSG_DONTWAIT);
    } else {
      struct sockaddr_un sa;
      socklen_t len = MakeAddr(to, &sa);
      UniqueFd named;
      int src = u.type() == SOCK_DGRAM ? SenderFor(ctx, u.type(), m.sender(), &named) : -1;
      n = src >= 0 ? sendto(src, data.data(), data.size(), MSG_DONTWAIT,
                            reinterpret_cast<sockaddr*>(&sa), len)
                   : -1;
      if (n < 0)  // no sender by that name, or it may not send here: an unnamed one
        n = sendto(from, data.data(), data.size(), MSG_DONTWAIT, reinterpret_cast<sockaddr*>(&sa),
                   len);
    }
    if (n != static_cast<ssize_t>(data.size()))
      return Errno("requeue %zu-byte message to unix socket %llu", data.size(),
                   static_cast<unsigned long long>(u.ino()));
  }
  return Ok();
}

bool CarriesFds(const img::UnixSocket& u) {
  for (const auto& m : u.queue())
    if (m.fds_size()) return true;
  return false;
}

Result<void> ApplyShutdown(int fd, uint32_t how) {
  if (how & kSendShutdown) {
    if (shutdown(fd, SHUT_WR) < 0) return Errno("shutdown SHUT_WR");
  }
  if (how & kRcvShutdown) {
    if (shutdown(fd, SHUT_RD) < 0) return Errno("shutdown SHUT_RD");
  }
  return Ok();
}
}  // namespace

Result<void> DumpUnix(FdDumpContext& ctx, const Probe& p, img::FileEntry& e) {
  img::UnixSocket* u = e.mutable_unix_sk();
  ASSIGN_OR_RETURN(const UnixDiagMap* all, ctx.UnixSockets(p.pid));
  auto it = all->find(p.st.st_ino);
  if (it == all->end())
    return MakeError(ErrorKind::kGeneric, 0, "unix socket %lu not in sock_diag", p.st.st_ino);
  const UnixDiag& d = it->second;
  u->set_ino(d.ino);
  u->set_type(d.type);
  u->set_state(d.state);
  u->set_name(d.name);
  if (!d.name.empty() && d.name[0] != '\0' && d.name[0] != '/') {
    // A relative name resolves against the binder's cwd then; the process's cwd now is the
    // best record of it (CRIU's name_dir).
    char cwd[PATH_MAX];
    std::string link = StrFormat("/proc/%d/cwd", p.pid);
    ssize_t n = readlink(link.c_str(), cwd, sizeof(cwd) - 1);
    if (n > 0) u->set_name_dir(std::string(cwd, n));
  }
  u->set_peer_ino(d.peer);
  if (d.shutdown > 0) u->set_shutdown(d.shutdown);
  if (d.vfs_ino && !d.name.empty() && d.name[0] != '\0') {
    // The socket file: its mode, or that it was unlinked (or replaced: another inode there).
    std::string abs = d.name[0] == '/' ? d.name : u->name_dir() + "/" + d.name;
    struct stat st;
    if (stat(StrFormat("/proc/%d/root%s", p.pid, abs.c_str()).c_str(), &st) == 0 &&
        st.st_ino == d.vfs_ino && S_ISSOCK(st.st_mode)) {
      u->set_name_mode(st.st_mode & 07777);
      u->set_name_uid(st.st_uid);
      u->set_name_gid(st.st_gid);
    } else {
      u->set_name_deleted(true);
    }
  }
  DumpSockOpts(p.local, u->mutable_opts());
  if (d.state == 10 /* TCP_LISTEN */) {
    u->set_backlog(d.wqueue);
    return Ok();
  }
  // A listener's icons are the clients of its pending connections (the embryo sockets have no
  // inode: such a client shows peer 0).
  for (const auto& [ino, x] : *all) {
    if (x.state != 10) continue;
    for (uint64_t c : x.icons)
      if (c == d.ino) u->set_listener_ino(ino);
    // An accepted socket reports the listener's name; it must not bind it again.
    if (!d.name.empty() && x.name == d.name && d.type != SOCK_DGRAM) u->set_accepted(true);
  }
  if (u->listener_ino() && d.wqueue > 0)
    return MakeError(ErrorKind::kUnsupported, 0,
                     "unix socket: %u bytes sent on a connection its listener has not accepted",
                     d.wqueue);
  if (d.peer) {
    auto peer = all->find(d.peer);
    if (peer != all->end()) u->set_peer_name(peer->second.name);
  }
  TRY(PeekQueue(ctx, p.local, d.type == SOCK_STREAM, u->mutable_queue()));
  // What restore could not rebuild is refused now, before the tree is killed.
  if (d.type == SOCK_DGRAM && d.peer) {
    auto peer = all->find(d.peer);
    bool mutual = peer != all->end() && peer->second.peer == d.ino;
    if (!mutual && peer != all->end() && peer->second.name.empty())
      return MakeError(ErrorKind::kUnsupported, 0,
                       "unix datagram socket connected to an unnamed socket (inode %llu)",
                       static_cast<unsigned long long>(d.peer));
  }
  bool pair = d.peer && all->count(d.peer) && all->at(d.peer).peer == d.ino;
  // Without a peer (it closed: socket_close_data) the queue is resent through a pair whose other
  // end then closes (OpenUnix), datagram sockets included.
  if (!u->queue().empty() && d.name.empty() && !pair && d.peer != 0)
    return MakeError(ErrorKind::kUnsupported, 0,
                     "unnamed unix socket with %d queued messages and no peer to resend them",
                     u->queue_size());
  return Ok();
}

// A socket that is not one end of a pair: bound, listening or connected by name, its queue
// resent through its name. connected_by_peer: the caller connects it (to an unlinked name).
Result<UniqueFd> OpenPlain(FdRestoreContext& ctx, const img::FileEntry& e, bool connected_by_peer) {
  const img::UnixSocket& u = e.unix_sk();
  int type = u.type();
  bool bind_name = !u.name().empty() && !u.accepted();
  const img::FileEntry* peer = u.peer_ino() ? FindUnix(ctx, u.peer_ino()) : nullptr;
  UniqueFd s(socket(AF_UNIX, type | SOCK_CLOEXEC, 0));
  if (!s) return Errno("socket AF_UNIX type %d", type);
  TRY(RestoreSockOpts(s.get(), u.opts()));
  if (bind_name) MakeParents(ctx, u);
  if (bind_name) TRY(BindTaken(ctx, e, s.get()));
  if (bind_name) FixNameFile(u);
  if (bind_name && u.name_deleted() && u.state() != 10) {
    // Datagram sockets connected to this unlinked name connect now, while the name is there
    // (made here and kept for their own open); then the name goes again.
    for (const auto& [cid, ce] : ctx.entries()) {
      const img::UnixSocket& cu = ce.unix_sk();
      if (ce.kind() != img::FILE_KIND_UNIX || cu.peer_ino() != u.ino() || cu.ino() == u.ino() ||
          u.peer_ino() == cu.ino())
        continue;
      std::string ckey = StrFormat("unix:%llu", static_cast<unsigned long long>(cu.ino()));
      if (ctx.named_fds.count(ckey)) continue;
      ASSIGN_OR_RETURN(UniqueFd c, OpenPlain(ctx, ce, true));
      TRY_CTX(Connect(c.get(), Reachable(u)), "connect to unlinked %s", Printable(u.name()).c_str());
      ASSIGN_OR_RETURN(int parked, ctx.Park(std::move(c)));
      ctx.KeepUntilPrepared(UniqueFd(parked));
      ctx.named_fds[ckey] = parked;
    }
    // A file moved aside for the bind (BindTaken) goes back now that its peers are connected: a
    // FIFO there is opened by its path next (zdtm fifo_upon_unix_socket). A listener's stays
    // aside until Finalize (connections to it are made by name).
    std::string path = Reachable(u);
    for (auto it = ctx.moved_aside.begin(); it != ctx.moved_aside.end(); ++it)
      if (it->second == path) {
        if (rename(it->first.c_str(), path.c_str()) < 0)
          return Errno("put %s back at %s", it->first.c_str(), path.c_str());
        ctx.moved_aside.erase(it);
        break;
      }
  }
  if (u.state() == 10 /* TCP_LISTEN */) {
    if (listen(s.get(), u.backlog()) < 0) return Errno("listen %s", Printable(u.name()).c_str());
    return s;
  }
  if (u.listener_ino()) {
    const img::FileEntry* l = FindUnix(ctx, u.listener_ino());
    if (!l) return MakeError(ErrorKind::kBadImage, 0, "pending unix connection: listener missing");
    auto lr = ctx.Ensure(l->id());
    if (!lr.ok()) return std::move(lr).error();
    TRY_CTX(Connect(s.get(), Reachable(l->unix_sk())), "pending connection");
  } else if (u.peer_ino() == u.ino()) {
    // Connected to itself: to its own name, bound above.
    if (u.name().empty())
      return MakeError(ErrorKind::kUnsupported, 0, "unnamed datagram socket connected to itself");
    TRY_CTX(Connect(s.get(), Reachable(u)), "connect to itself");
  } else if (peer && !connected_by_peer) {
    auto pr = ctx.Ensure(peer->id());
    if (!pr.ok()) return std::move(pr).error();
    // The peer's name was unlinked: its open connected us already (and dropped the name).
    auto made = ctx.named_fds.find(StrFormat("unix:%llu", static_cast<unsigned long long>(u.ino())));
    if (made != ctx.named_fds.end()) {
      int d = fcntl(made->second, F_DUPFD_CLOEXEC, 0);
      if (d < 0) return Errno("dup");
      return UniqueFd(d);
    }
    if (peer->unix_sk().name().empty())
      return MakeError(ErrorKind::kUnsupported, 0, "datagram socket connected to an unnamed one");
    TRY(Connect(s.get(), Reachable(peer->unix_sk())));
  } else if (u.peer_external()) {
    TRY_CTX(Connect(s.get(), u.peer_name()), "outside peer");
  }
  if (!u.queue().empty() && !u.name().empty() && CarriesFds(u)) {
    // Fds in flight (maybe this socket, or one connected to it): the queue, the shutdown and
    // the name's unlink wait until every description exists.
    uint64_t id = e.id();
    const img::UnixSocket* up = &u;  // entries() nodes stay put
    ctx.after_prepare.push_back([&ctx, id, up, bind_name]() -> Result<void> {
      int self = ctx.Prepared(id);
      if (up->peer_ino() == up->ino() && self >= 0) {
        // Connected to itself: only it may send to itself.
        TRY(Requeue(ctx, *up, self, ""));
      } else {
        UniqueFd tmp(socket(AF_UNIX, up->type() | SOCK_CLOEXEC, 0));
        if (!tmp) return Errno("socket AF_UNIX");
        TRY(Requeue(ctx, *up, tmp.get(), Reachable(*up)));
      }
      if (up->shutdown() && self >= 0) TRY(ApplyShutdown(self, up->shutdown()));
      if (bind_name) UnlinkName(*up);
      return Ok();
    });
    return s;
  }
  if (!u.queue().empty() && u.peer_ino() == u.ino()) {
    // Connected to itself: a datagram socket connected elsewhere refuses other senders (EPERM),
    // so it sends its queue to itself.
    TRY(Requeue(ctx, u, s.get(), ""));
  } else if (!u.queue().empty()) {
    if (u.name().empty())
      return MakeError(ErrorKind::kUnsupported, 0, "queued data on an unnamed unix socket");
    UniqueFd tmp(socket(AF_UNIX, type | SOCK_CLOEXEC, 0));
    TRY(Requeue(ctx, u, tmp.get(), Reachable(u)));
  }
  if (u.shutdown()) TRY(ApplyShutdown(s.get(), u.shutdown()));
  if (bind_name) UnlinkName(u);  // a listener's goes in Finalize (pending clients connect)
  return s;
}

Result<UniqueFd> OpenUnix(FdRestoreContext& ctx, const img::FileEntry& e) {
  const img::UnixSocket& u = e.unix_sk();
  std::string key = StrFormat("unix:%llu", static_cast<unsigned long long>(u.ino()));
  auto have = ctx.named_fds.find(key);
  if (have != ctx.named_fds.end()) {
    if (!ctx.used.insert(key).second)
      return MakeError(ErrorKind::kBadImage, 0, "unix socket %llu restored twice",
                       static_cast<unsigned long long>(u.ino()));
    int d = fcntl(have->second, F_DUPFD_CLOEXEC, 0);
    if (d < 0) return Errno("dup");
    return UniqueFd(d);
  }
  ctx.used.insert(key);
  int type = u.type();
  bool bind_name = !u.name().empty() && !u.accepted();
  const img::FileEntry* peer = u.peer_ino() ? FindUnix(ctx, u.peer_ino()) : nullptr;
  // A datagram socket connected to itself (zdtm sockets_dgram) is no pair: OpenPlain binds it
  // and connects it to its own name.
  bool mutual = peer && u.peer_ino() != u.ino() &&
                (type != SOCK_DGRAM || peer->unix_sk().peer_ino() == u.ino());
  bool peer_gone = u.peer_ino() == 0 && u.state() == 1 /* TCP_ESTABLISHED */ &&
                   type != SOCK_DGRAM && !u.listener_ino();
  // An unnamed datagram socket holding messages from a peer that is gone (zdtm
  // socket_close_data): they come back through a pair whose other end then closes; one that
  // was not connected (state TCP_CLOSE) is disconnected again (AF_UNSPEC).
  bool dgram_orphan = type == SOCK_DGRAM && u.peer_ino() == 0 && !bind_name && !u.queue().empty();
  peer_gone = peer_gone || dgram_orphan;

  if (mutual || peer_gone) {
    int sv[2];
    if (socketpair(AF_UNIX, type | SOCK_CLOEXEC, 0, sv) < 0) return Errno("socketpair");
    UniqueFd mine(sv[0]), other(sv[1]);
    if (bind_name) MakeParents(ctx, u);
    if (bind_name) TRY(Bind(mine.get(), type, u.name(), u.name_dir()));
    if (bind_name) FixNameFile(u);
    if (bind_name) UnlinkName(u);  // a pair needs no name to connect
    TRY(RestoreSockOpts(mine.get(), u.opts()));
    if (mutual) {
      const img::UnixSocket& pu = peer->unix_sk();
      if (!pu.name().empty() && !pu.accepted()) {
        MakeParents(ctx, pu);
        TRY(Bind(other.get(), type, pu.name(), pu.name_dir()));
        FixNameFile(pu);
        UnlinkName(pu);
      }
      TRY(RestoreSockOpts(other.get(), pu.opts()));
      auto requeue = [&ctx](const img::UnixSocket& u, const img::UnixSocket& pu, int mine,
                            int other) -> Result<void> {
        TRY_CTX(Requeue(ctx, u, other, ""), "unix %s", Printable(u.name()).c_str());
        TRY_CTX(Requeue(ctx, pu, mine, ""), "unix %s", Printable(pu.name()).c_str());
        TRY(ApplyShutdown(mine, u.shutdown()));
        return ApplyShutdown(other,
                             pu.shutdown() & ~(u.shutdown() & kSendShutdown ? kRcvShutdown : 0));
      };
      if (CarriesFds(u) || CarriesFds(pu)) {
        // Fds in flight (maybe these very sockets): sent once every description exists,
        // through the prepared ends.
        uint64_t mid = e.id(), oid = peer->id();
        const img::UnixSocket *up = &u, *pp = &pu;
        ctx.after_prepare.push_back([&ctx, requeue, mid, oid, up, pp]() -> Result<void> {
          int m = ctx.Prepared(mid), o = ctx.Prepared(oid);
          if (m < 0 || o < 0)
            return MakeError(ErrorKind::kBadImage, 0, "unix pair %llu/%llu was not prepared",
                             static_cast<unsigned long long>(mid),
                             static_cast<unsigned long long>(oid));
          return requeue(*up, *pp, m, o);
        });
      } else {
        TRY(requeue(u, pu, mine.get(), other.get()));
      }
      std::string pkey = StrFormat("unix:%llu", static_cast<unsigned long long>(pu.ino()));
      ASSIGN_OR_RETURN(int parked, ctx.Park(std::move(other)));
      ctx.KeepUntilPrepared(UniqueFd(parked));
      ctx.named_fds[pkey] = parked;
    } else if (CarriesFds(u)) {
      // The peer closed, fds in flight: the data once every description exists, then end of
      // file (the other end goes with the temporary fds, after that).
      ASSIGN_OR_RETURN(int o, ctx.Park(std::move(other)));
      ctx.KeepUntilPrepared(UniqueFd(o));
      uint64_t mid = e.id();
      const img::UnixSocket* up = &u;
      ctx.after_prepare.push_back([&ctx, mid, up, o]() -> Result<void> {
        TRY(Requeue(ctx, *up, o, ""));
        int m = ctx.Prepared(mid);
        if (m >= 0) TRY(ApplyShutdown(m, up->shutdown() & kSendShutdown));
        return Ok();
      });
    } else {
      // The peer closed: the data, then end of file.
      TRY(Requeue(ctx, u, other.get(), ""));
      other.reset();
      TRY(ApplyShutdown(mine.get(), u.shutdown() & kSendShutdown));
    }
    if (dgram_orphan && u.state() != 1) {
      sockaddr un{};
      un.sa_family = AF_UNSPEC;
      if (connect(mine.get(), &un, sizeof(un)) < 0) return Errno("disconnect unix datagram");
    }
    return mine;
  }

  return OpenPlain(ctx, e, false);
}

// A socket whose file was unlinked before the dump: bound again for Prepare (peers connect to
// it by name), its file unlinked again once the whole tree is restored.
Result<void> FinalizeUnix(FdRestoreContext& ctx, const img::FileEntry& e, int fd) {
  const img::UnixSocket& u = e.unix_sk();
  if (!u.name_deleted() || u.accepted() || u.name().empty() || u.name()[0] == '\0') return Ok();
  (void)fd;
  std::string path = Reachable(u);
  struct stat st;
  auto bound = ctx.unix_bound_ino.find(e.id());
  bool mine = bound == ctx.unix_bound_ino.end() || lstat(path.c_str(), &st) != 0 ||
              st.st_ino == bound->second;
  if (mine && lstat(path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode) && unlink(path.c_str()) < 0)
    return Errno("unlink restored socket file %s", path.c_str());
  for (auto it = ctx.made_dirs.rbegin(); it != ctx.made_dirs.rend(); ++it) rmdir(it->c_str());
  return Ok();
}

}  // namespace godwit::files
