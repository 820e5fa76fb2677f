// Pipes and FIFOs. The unread data is peeked with tee() into a temporary pipe (the process's
// pipe keeps it) and stored once per pipe. At restore a pipe is created once, both ends at
// once, the data written back, then every description takes its end; a FIFO is opened O_RDWR
// first (which never blocks), refilled, and each description reopened through /proc/self/fd
// with its own flags. Pipes above 1 MiB capacity cannot be recreated without CAP_SYS_RESOURCE.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <vector>

#include "common/fs.h"
#include "files/kind.h"

namespace godwit::files {

namespace {
constexpr int kMaxPipe = 1 << 20;  // /proc/sys/fs/pipe-max-size without CAP_SYS_RESOURCE

// Copies the unread bytes of the pipe behind fd without consuming them. tee() keeps the
// buffers' packet marks (O_DIRECT writers), and a read never crosses one: each read's length is
// one packet, kept in packets.
Result<std::string> PeekPipe(int fd, int capacity, std::vector<uint32_t>* packets) {
  int tmp[2];
  if (pipe2(tmp, O_CLOEXEC | O_NONBLOCK) < 0) return Errno("pipe2");
  UniqueFd r(tmp[0]), w(tmp[1]);
  if (fcntl(w.get(), F_SETPIPE_SZ, capacity) < 0) return Errno("F_SETPIPE_SZ %d", capacity);
  std::string out;
  ssize_t n = tee(fd, w.get(), capacity, SPLICE_F_NONBLOCK);
  if (n < 0) {
    if (errno == EAGAIN) return out;  // empty
    return Errno("tee");
  }
  out.resize(n);
  for (ssize_t got = 0; got < n;) {
    ssize_t k = read(r.get(), out.data() + got, n - got);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) return Errno("read peeked pipe data");
    packets->push_back(static_cast<uint32_t>(k));
    got += k;
  }
  return out;
}

Result<void> DumpPipeCommon(FdDumpContext& ctx, const Probe& p, img::FileEntry& e) {
  img::PipeFile* pf = e.mutable_pipe();
  pf->set_pipe_id(p.st.st_ino);
  int cap = fcntl(p.local, F_GETPIPE_SZ);
  if (cap < 0) return Errno("pid %d fd %d: F_GETPIPE_SZ", p.pid, p.fd);
  if (cap > kMaxPipe)
    return MakeError(ErrorKind::kUnsupported, 0,
                     "pid %d fd %d: %s has capacity %d > %d (needs CAP_SYS_RESOURCE to restore)",
                     p.pid, p.fd, p.link.c_str(), cap, kMaxPipe);
  pf->set_capacity(cap);
  if (ctx.pipes_with_data.insert(p.st.st_ino).second) {
    // tee() needs a readable description: a write end is reopened for reading through /proc
    // (the same pipe; O_NONBLOCK so a FIFO never waits for a writer).
    UniqueFd rd;
    if ((p.info.flags & O_ACCMODE) != O_RDONLY) {
      rd.reset(open(StrFormat("/proc/%d/fd/%d", p.pid, p.fd).c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC));
      if (!rd) return Errno("pid %d fd %d: reopen %s for reading", p.pid, p.fd, p.link.c_str());
    }
    std::vector<uint32_t> packets;
    ASSIGN_OR_RETURN(std::string data, PeekPipe(rd ? rd.get() : p.local, cap, &packets));
    // More than one read: packet boundaries (only packet-mode writes make them; the read end
    // itself never has O_DIRECT).
    if (packets.size() > 1)
      for (uint32_t k : packets) pf->add_packets(k);
    pf->set_data_owner(true);
    ASSIGN_OR_RETURN(*pf->mutable_data(), ctx.Blob(data.data(), data.size()));
  }
  return Ok();
}

Result<void> Refill(FdRestoreContext& ctx, const img::FileEntry& e, int wfd) {
  const img::PipeFile& pf = e.pipe();
  if (pf.capacity() && fcntl(wfd, F_SETPIPE_SZ, pf.capacity()) < 0)
    return Errno("F_SETPIPE_SZ %u", pf.capacity());
  return Ok();
}

// The data may sit in any end's entry: find it.
const img::FileEntry* DataHolder(FdRestoreContext& ctx, uint64_t pipe_id, img::FileKind kind) {
  for (const auto& [id, e] : ctx.entries())
    if (e.kind() == kind && e.pipe().pipe_id() == pipe_id && e.pipe().data_owner()) return &e;
  return nullptr;
}

Result<void> WriteData(FdRestoreContext& ctx, uint64_t pipe_id, img::FileKind kind, int wfd) {
  const img::FileEntry* holder = DataHolder(ctx, pipe_id, kind);
  if (!holder) return Ok();
  ASSIGN_OR_RETURN(std::string data, ctx.ReadBlob(holder->pipe().data()));
  if (data.empty()) return Ok();
  int fl = fcntl(wfd, F_GETFL);
  fcntl(wfd, F_SETFL, fl | O_NONBLOCK);  // never block the coordinator: it all fits or fails
  Result<void> r = Ok();
  if (holder->pipe().packets_size()) {
    // One write per packet: the restored pipe is in packet mode (O_DIRECT) too.
    size_t off = 0;
    for (uint32_t k : holder->pipe().packets()) {
      if (off + k > data.size()) return MakeError(ErrorKind::kBadImage, 0, "pipe packets exceed data");
      if (write(wfd, data.data() + off, k) != static_cast<ssize_t>(k)) {
        r = Errno("write packet of %u bytes", k);
        break;
      }
      off += k;
    }
  } else {
    r = fs::WriteAll(wfd, data.data(), data.size());
  }
  fcntl(wfd, F_SETFL, fl);
  TRY_CTX(r, "refill pipe %llu with %zu bytes", static_cast<unsigned long long>(pipe_id), data.size());
  return Ok();
}
}  // namespace

Result<void> DumpPipe(FdDumpContext& ctx, const Probe& p, img::FileEntry& e) {
  return DumpPipeCommon(ctx, p, e);
}

Result<UniqueFd> OpenPipe(FdRestoreContext& ctx, const img::FileEntry& e) {
  uint64_t id = e.pipe().pipe_id();
  bool reader = (e.flags() & O_ACCMODE) == O_RDONLY;
  auto it = ctx.pipes.find(id);
  if (it == ctx.pipes.end()) {
    // A packet-mode pipe: O_DIRECT cannot be set later with F_SETFL (EINVAL on pipes), only
    // cleared; so the pipe is made with it (pipe2 gives it to the write end) when a
    // description had it or queued packets must stay packets.
    int direct = 0;
    for (const auto& [oid, oe] : ctx.entries())
      if (oe.kind() == img::FILE_KIND_PIPE && oe.pipe().pipe_id() == id &&
          ((oe.flags() & O_DIRECT) || oe.pipe().packets_size()))
        direct = O_DIRECT;
    int fds[2];
    if (pipe2(fds, O_CLOEXEC | direct) < 0) return Errno("pipe2");
    UniqueFd r(fds[0]), w(fds[1]);
    TRY(Refill(ctx, e, w.get()));
    TRY(WriteData(ctx, id, img::FILE_KIND_PIPE, w.get()));
    ASSIGN_OR_RETURN(int pr, ctx.Park(std::move(r)));
    ASSIGN_OR_RETURN(int pw, ctx.Park(std::move(w)));
    // Both ends are held until Prepare ends; the descriptions the tree holds are dups of them.
    ctx.KeepUntilPrepared(UniqueFd(pr));
    ctx.KeepUntilPrepared(UniqueFd(pw));
    it = ctx.pipes.emplace(id, std::make_pair(pr, pw)).first;
  }
  int end = reader ? it->second.first : it->second.second;
  std::string mark = StrFormat("pipe:%llu:%c", static_cast<unsigned long long>(id), reader ? 'r' : 'w');
  if (ctx.used.insert(mark).second) {
    int d = fcntl(end, F_DUPFD_CLOEXEC, 0);
    if (d < 0) return Errno("dup pipe end");
    return UniqueFd(d);
  }
  // A second description of the same end (reopened through /proc/PID/fd).
  return Reopen(end, e.flags());
}

Result<void> DumpFifo(FdDumpContext& ctx, const Probe& p, img::FileEntry& e) {
  TRY(DumpPipeCommon(ctx, p, e));
  e.mutable_pipe()->set_path(p.link);
  return Ok();
}

Result<UniqueFd> OpenFifo(FdRestoreContext& ctx, const img::FileEntry& e) {
  uint64_t id = e.pipe().pipe_id();
  auto it = ctx.pipes.find(id);
  if (it == ctx.pipes.end()) {
    std::string path = e.pipe().path();
    UniqueFd rw;
    constexpr const char kDeleted[] = " (deleted)";
    size_t dl = strlen(kDeleted);
    if (path.size() > dl && path.compare(path.size() - dl, dl, kDeleted) == 0) {
      // An unlinked FIFO (unlink_fifo): made again under a free name beside the old one, opened
      // and unlinked; the descriptions reopen it through /proc/self/fd.
      path.resize(path.size() - dl);
      for (int i = 0; i < 1000 && !rw; i++) {
        std::string p = StrFormat("%s.godwit-ghost.%d", path.c_str(), i);
        if (mkfifo(p.c_str(), 0600) < 0) {
          if (errno == EEXIST) continue;
          return Errno("mkfifo ghost of deleted FIFO %s", p.c_str());
        }
        rw.reset(open(p.c_str(), O_RDWR | O_NONBLOCK | O_CLOEXEC));
        int err = errno;
        unlink(p.c_str());
        if (!rw) {
          errno = err;
          return Errno("open ghost FIFO %s", p.c_str());
        }
      }
      if (!rw) return MakeError(ErrorKind::kExists, EEXIST, "no free name for ghost of %s", path.c_str());
    } else {
      struct stat st;
      if (stat(path.c_str(), &st) < 0) return Errno("stat FIFO %s", path.c_str());
      if (!S_ISFIFO(st.st_mode))
        return MakeError(ErrorKind::kBadImage, 0, "%s is not a FIFO any more", path.c_str());
      rw.reset(open(path.c_str(), O_RDWR | O_NONBLOCK | O_CLOEXEC));
      if (!rw) return Errno("open FIFO %s O_RDWR", path.c_str());
    }
    TRY(Refill(ctx, e, rw.get()));
    TRY(WriteData(ctx, id, img::FILE_KIND_FIFO, rw.get()));
    ASSIGN_OR_RETURN(int prw, ctx.Park(std::move(rw)));
    ctx.KeepUntilPrepared(UniqueFd(prw));
    it = ctx.pipes.emplace(id, std::make_pair(prw, prw)).first;
  }
  // The O_RDWR helper is a reader and a writer: reopening either end never blocks.
  return Reopen(it->second.first, e.flags() | O_NONBLOCK);
}

}  // namespace godwit::files
