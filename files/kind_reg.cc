// Regular files, directories (by path, flags, position) and character devices (by path).
// A file deleted while open ("/path (deleted)") has its contents saved in the blob and is
// recreated at restore: a "ghost" created at the original path (or beside it when that name is
// taken again), opened, and unlinked again, so the process holds an unlinked file as before.
#include <fcntl.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>

#include <cstring>
#include <vector>

#include "common/fs.h"
#include "common/pid_standin.h"
#include "common/log.h"
#include "files/kind.h"

namespace godwit::files {

namespace {
constexpr const char kDeleted[] = " (deleted)";
constexpr size_t kMaxGhost = 1ull << 32;  // refuse to store more than 4 GiB of a deleted file

bool EndsWith(const std::string& s, const std::string& suf) {
  return s.size() >= suf.size() && s.compare(s.size() - suf.size(), suf.size(), suf) == 0;
}

// Open flags for restore: never create or truncate what exists (the file is there already).
// O_TMPFILE (which carries O_DIRECTORY) stays in the flags of a file made by it (zdtm fd01's
// tmpfile()): opening its ghost, a regular file, by name with it would fail (ENOTDIR).
int OpenFlags(uint32_t flags) {
  return (flags & ~(O_CREAT | O_TRUNC | O_EXCL | O_CLOEXEC | O_TMPFILE)) | O_CLOEXEC;
}

Result<void> ReadAt(int fd, uint64_t off, uint64_t size, std::string* out) {
  size_t base = out->size();
  out->resize(base + size);
  size_t done = 0;
  while (done < size) {
    ssize_t n = pread(fd, out->data() + base + done, size - done, off + done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return Errno("pread");
    }
    if (n == 0) break;
    done += n;
  }
  out->resize(base + done);
  return Ok();
}

// The data extents of fd (a sparse file keeps only them), in order; the whole file when the
// filesystem cannot tell.
std::vector<std::pair<uint64_t, uint64_t>> Extents(int fd, uint64_t size) {
  std::vector<std::pair<uint64_t, uint64_t>> out;
  off_t pos = 0;
  while (static_cast<uint64_t>(pos) < size) {
    off_t data = lseek(fd, pos, SEEK_DATA);
    if (data < 0) {
      if (errno == ENXIO) break;  // only a hole up to the end
      return {{0, size}};
    }
    off_t hole = lseek(fd, data, SEEK_HOLE);
    if (hole < 0) return {{0, size}};
    if (static_cast<uint64_t>(hole) > size) hole = static_cast<off_t>(size);
    out.emplace_back(data, hole - data);
    pos = hole;
  }
  return out;
}
}  // namespace

// The open name of a file was unlinked, but the inode lives on under other names: a hard link to
// it beside its old name keeps it reachable by a path (the same inode for restore, not a copy).
// Only where the holder sees the dumper's paths (its mount namespace is ours). Removed again
// when the tree keeps running; otherwise by the restore's Finalize.
static Result<std::string> LinkRemap(FdDumpContext& ctx, const Probe& p, const std::string& path) {
  struct stat mine, theirs;
  if (stat("/proc/self/ns/mnt", &mine) < 0 ||
      stat(StrFormat("/proc/%d/ns/mnt", p.pid).c_str(), &theirs) < 0 ||
      mine.st_ino != theirs.st_ino)
    return MakeError(ErrorKind::kUnsupported, 0,
                     "pid %d fd %d: %s was unlinked but has other links, in another mount "
                     "namespace: cannot be linked again",
                     p.pid, p.fd, path.c_str());
  // Beside the old name; its directory removed too (zdtm unlink_regular00): in the nearest
  // directory above it that is still there, on the same filesystem (else link fails, EXDEV).
  std::string dir = path.substr(0, path.rfind('/'));
  struct stat ds;
  while (!dir.empty() && stat(dir.c_str(), &ds) < 0 && errno == ENOENT)
    dir = dir.substr(0, dir.rfind('/'));
  if (dir.empty()) dir = "/";
  std::string src = StrFormat("/proc/%d/fd/%d", p.pid, p.fd);
  for (int i = 0; i < 1000; i++) {
    std::string name = StrFormat("%s/.godwit-link-remap.%llu.%d", dir.c_str(),
                                 static_cast<unsigned long long>(p.st.st_ino), i);
    if (linkat(AT_FDCWD, src.c_str(), AT_FDCWD, name.c_str(), AT_SYMLINK_FOLLOW) == 0) {
      ctx.OnResume([name] { unlink(name.c_str()); });
      return name;
    }
    if (errno != EEXIST)
      return Errno("pid %d fd %d: link the unlinked %s (other links remain) as %s", p.pid, p.fd,
                   path.c_str(), name.c_str());
    struct stat there;  // a remap of the same inode (a second description): share it
    if (stat(name.c_str(), &there) == 0 && there.st_ino == p.st.st_ino &&
        there.st_dev == p.st.st_dev)
      return name;
  }
  return MakeError(ErrorKind::kExists, EEXIST, "pid %d fd %d: no free link remap name for %s",
                   p.pid, p.fd, path.c_str());
}

Result<void> DumpReg(FdDumpContext& ctx, const Probe& p, img::FileEntry& e) {
  img::RegFile* r = e.mutable_reg();
  std::string path = p.link;
  // A file on a mount outside the process's mount namespace (issue 11: a container's stdout
  // redirected to a host file): the restore inside the container could not open its path, and a
  // kill-mode checkpoint would lose the workload. Reopened by path (flags, position) by the
  // restorer in its own namespace (FdRestorer::Load); it must be reachable from ours now.
  ASSIGN_OR_RETURN(bool visible, ctx.MountVisible(p.pid, p.info.mnt_id));
  if (!visible && !(p.st.st_nlink == 0 && EndsWith(path, kDeleted))) {
    struct stat here;
    if (stat(path.c_str(), &here) < 0 || here.st_ino != p.st.st_ino || here.st_dev != p.st.st_dev)
      return MakeError(ErrorKind::kUnsupported, 0,
                       "pid %d fd %d: %s is on a mount outside the process's mount namespace and "
                       "not the same file at that path here: a restore could not open it again",
                       p.pid, p.fd, path.c_str());
    r->set_host_file(true);
  }
  // /proc/PID of a process that is gone (zdtm remap_dead_pid_root): procfs says "(deleted)"
  // of its directory; it is that process's entry, opened again through a stand-in with its pid.
  if (path.rfind("/proc/", 0) == 0 && EndsWith(path, kDeleted) && S_ISDIR(p.st.st_mode))
    path.resize(path.size() - strlen(kDeleted));
  if (p.st.st_nlink > 0 && S_ISREG(p.st.st_mode) && EndsWith(path, kDeleted) &&
      !(e.flags() & O_PATH)) {
    path.resize(path.size() - strlen(kDeleted));
    ASSIGN_OR_RETURN(std::string remap, LinkRemap(ctx, p, path));
    r->set_link_remap(remap);
  }
  if (p.st.st_nlink == 0 && EndsWith(path, kDeleted)) {
    path.resize(path.size() - strlen(kDeleted));
    r->set_deleted(true);
    if (!S_ISREG(p.st.st_mode) && !S_ISDIR(p.st.st_mode))
      return MakeError(ErrorKind::kUnsupported, 0, "pid %d fd %d: deleted file %s of mode %o",
                       p.pid, p.fd, path.c_str(), p.st.st_mode);
  }
  if (r->deleted() && S_ISREG(p.st.st_mode)) {
    // Our copy shares the position with the process: pread leaves it alone. An O_WRONLY
    // description cannot be read: go through /proc/PID/fd, which opens the inode afresh (and
    // has its own position for SEEK_DATA/SEEK_HOLE).
    UniqueFd rd(open(StrFormat("/proc/%d/fd/%d", p.pid, p.fd).c_str(), O_RDONLY | O_CLOEXEC));
    if (!rd) return Errno("pid %d fd %d: open deleted file %s", p.pid, p.fd, path.c_str());
    auto extents = Extents(rd.get(), p.st.st_size);
    uint64_t bytes = 0;
    for (const auto& [off, len] : extents) bytes += len;
    if (bytes > kMaxGhost)
      return MakeError(ErrorKind::kUnsupported, 0,
                       "pid %d fd %d: deleted file %s too large (%llu bytes of data)", p.pid, p.fd,
                       path.c_str(), static_cast<unsigned long long>(bytes));
    std::string data;
    for (const auto& [off, len] : extents) {
      TRY_CTX(ReadAt(rd.get(), off, len, &data), "pid %d fd %d: %s", p.pid, p.fd, path.c_str());
      r->add_extent_offsets(off);
      r->add_extent_lengths(len);
    }
    ASSIGN_OR_RETURN(*r->mutable_data(), ctx.Blob(data.data(), data.size()));
    r->set_atime_ns(p.st.st_atim.tv_sec * 1000000000ll + p.st.st_atim.tv_nsec);
    r->set_mtime_ns(p.st.st_mtim.tv_sec * 1000000000ll + p.st.st_mtim.tv_nsec);
  }
  r->set_path(path);
  // "/proc/PID" or "/proc/PID/...": a process's file, which restore opens once PID exists.
  if (!r->deleted() && path.rfind("/proc/", 0) == 0) {
    size_t end = 6;
    while (end < path.size() && path[end] >= '0' && path[end] <= '9') end++;
    if (end > 6 && end - 6 < 10 && (end == path.size() || path[end] == '/'))
      r->set_proc_pid(atoi(path.c_str() + 6));
  }
  r->set_mode(p.st.st_mode);
  r->set_size(p.st.st_size);
  r->set_dev(p.st.st_dev);
  r->set_ino(p.st.st_ino);
  r->set_uid(p.st.st_uid);
  r->set_gid(p.st.st_gid);
  return Ok();
}

static Result<UniqueFd> OpenGhost(FdRestoreContext& ctx, const img::FileEntry& e) {
  const img::RegFile& r = e.reg();
  ASSIGN_OR_RETURN(std::string data, ctx.ReadBlob(r.data()));
  std::string path = r.path();
  UniqueFd fd;
  for (int i = 0; i < 1000 && !fd; i++) {
    std::string p = i == 0 ? path : StrFormat("%s.godwit-ghost.%d", path.c_str(), i);
    int f = open(p.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, r.mode() & 07777);
    if (f >= 0) {
      fd.reset(f);
      path = p;
    } else if (errno != EEXIST) {
      return Errno("create ghost of deleted file %s", p.c_str());
    }
  }
  if (!fd) return MakeError(ErrorKind::kExists, EEXIST, "no free name for ghost of %s", path.c_str());
  auto unlink_ghost = [&] { unlink(path.c_str()); };
  if (r.extent_offsets_size()) {
    if (r.extent_offsets_size() != r.extent_lengths_size())
      return MakeError(ErrorKind::kBadImage, 0, "ghost %s: extents without lengths", path.c_str());
    size_t at = 0;
    for (int i = 0; i < r.extent_offsets_size(); i++) {
      uint64_t len = r.extent_lengths(i), off = r.extent_offsets(i);
      if (at + len > data.size()) {
        unlink_ghost();
        return MakeError(ErrorKind::kBadImage, 0, "ghost %s: extents exceed data", path.c_str());
      }
      for (uint64_t done = 0; done < len;) {
        ssize_t n = pwrite(fd.get(), data.data() + at + done, len - done, off + done);
        if (n <= 0) {
          unlink_ghost();
          return Errno("write ghost %s at %llu", path.c_str(), static_cast<unsigned long long>(off));
        }
        done += n;
      }
      at += len;
    }
  } else {
    auto w = fs::WriteAll(fd.get(), data.data(), data.size());
    if (!w.ok()) unlink_ghost();
    TRY_CTX(w, "write ghost %s", path.c_str());
  }
  if (ftruncate(fd.get(), r.size()) < 0) {
    unlink_ghost();
    return Errno("ftruncate ghost %s", path.c_str());
  }
  fchown(fd.get(), r.uid(), r.gid());
  fchmod(fd.get(), r.mode() & 07777);
  if (r.mtime_ns()) {
    struct timespec ts[2] = {{static_cast<time_t>(r.atime_ns() / 1000000000), static_cast<long>(r.atime_ns() % 1000000000)},
                             {static_cast<time_t>(r.mtime_ns() / 1000000000), static_cast<long>(r.mtime_ns() % 1000000000)}};
    futimens(fd.get(), ts);  // last: writes would move mtime again
  }
  UniqueFd out(open(path.c_str(), OpenFlags(e.flags())));
  int err = errno;
  unlink_ghost();
  if (!out) {
    errno = err;
    return Errno("open ghost %s", path.c_str());
  }
  return out;
}

// A directory removed while open (zdtm rmdir_open, cwd02): an empty directory made again at its
// path (or beside it when the name is taken; missing parents made too), opened with the
// description's flags and removed again with what was made for it.
static Result<UniqueFd> OpenRemovedDir(const img::FileEntry& e) {
  const img::RegFile& r = e.reg();
  std::vector<std::string> made;
  auto remove_made = [&] {
    for (auto it = made.rbegin(); it != made.rend(); ++it) rmdir(it->c_str());
  };
  std::string parent = r.path().substr(0, r.path().rfind('/'));
  std::vector<std::string> missing;
  for (std::string d = parent; !d.empty() && access(d.c_str(), F_OK) < 0;
       d = d.substr(0, d.rfind('/')))
    missing.push_back(d);
  for (auto it = missing.rbegin(); it != missing.rend(); ++it) {
    if (mkdir(it->c_str(), 0700) < 0) {
      remove_made();
      return Errno("mkdir %s (parent of the removed directory %s)", it->c_str(),
                   r.path().c_str());
    }
    made.push_back(*it);
  }
  for (int i = 0; i < 1000; i++) {
    std::string p = i == 0 ? r.path() : StrFormat("%s.godwit-ghost.%d", r.path().c_str(), i);
    if (mkdir(p.c_str(), r.mode() & 07777) < 0) {
      if (errno == EEXIST) continue;
      int err = errno;
      remove_made();
      errno = err;
      return Errno("mkdir the removed directory %s", p.c_str());
    }
    (void)!chown(p.c_str(), r.uid(), r.gid());
    (void)!chmod(p.c_str(), r.mode() & 07777);
    UniqueFd fd(open(p.c_str(), OpenFlags(e.flags()) | O_DIRECTORY));
    int err = errno;
    rmdir(p.c_str());
    remove_made();
    if (!fd) {
      errno = err;
      return Errno("open the removed directory %s", p.c_str());
    }
    return fd;
  }
  remove_made();
  return MakeError(ErrorKind::kExists, EEXIST, "%s: no free name for the removed directory",
                   r.path().c_str());
}

Result<UniqueFd> OpenReg(FdRestoreContext& ctx, const img::FileEntry& e) {
  const img::RegFile& r = e.reg();
  if (r.proc_pid() > 0 && ctx.tree_pids.count(r.proc_pid())) {
    // /proc/PID of a process of the tree, which does not exist yet: a placeholder, replaced
    // by InstallReg in the holder.
    UniqueFd ph(eventfd(0, EFD_CLOEXEC));
    if (!ph) return Errno("eventfd (placeholder for %s)", r.path().c_str());
    return ph;
  }
  UniqueFd fd;
  if (r.host_file()) {
    int pre = ctx.HostFile(e.id());
    if (pre < 0)
      return MakeError(ErrorKind::kNotFound, ENOENT, "host file %s was not opened",
                       r.path().c_str());
    fd.reset(fcntl(pre, F_DUPFD_CLOEXEC, 0));
    if (!fd) return Errno("dup host file %s", r.path().c_str());
  } else if (r.deleted() && S_ISDIR(r.mode())) {
    ASSIGN_OR_RETURN(fd, OpenRemovedDir(e));
  } else if (r.deleted()) {
    // Descriptions of one deleted inode (opened by two names, both unlinked since: zdtm link10)
    // share one ghost: the first makes it, the others open it again through /proc/self/fd.
    std::string key = StrFormat("ghost:%llu:%llu", static_cast<unsigned long long>(r.dev()),
                                static_cast<unsigned long long>(r.ino()));
    auto have = ctx.named_fds.find(key);
    if (have != ctx.named_fds.end()) {
      fd.reset(open(StrFormat("/proc/self/fd/%d", have->second).c_str(), OpenFlags(e.flags())));
      if (!fd)
        return Errno("open the ghost of deleted %s again flags %#o", r.path().c_str(), e.flags());
    } else {
      ASSIGN_OR_RETURN(fd, OpenGhost(ctx, e));
      int keep = fcntl(fd.get(), F_DUPFD_CLOEXEC, 0);
      if (keep < 0) return Errno("dup ghost of %s", r.path().c_str());
      ASSIGN_OR_RETURN(int parked, ctx.Park(UniqueFd(keep)));
      ctx.KeepUntilPrepared(UniqueFd(parked));
      ctx.named_fds[key] = parked;
    }
  } else if (!r.link_remap().empty()) {
    fd.reset(open(r.link_remap().c_str(), OpenFlags(e.flags())));
    if (!fd)
      return Errno("open %s (link to the unlinked %s) flags %#o", r.link_remap().c_str(),
                   r.path().c_str(), e.flags());
  } else {
    fd.reset(open(r.path().c_str(), OpenFlags(e.flags())));
    if (!fd && errno == ENOENT && r.proc_pid() > 0 && !ctx.tree_pids.count(r.proc_pid())) {
      // /proc/PID of a process that died before the dump (zdtm remap_dead_pid): opened through a
      // stand-in with that pid, which then goes: the fd is on a dead process's entry again.
      ASSIGN_OR_RETURN(PidStandIn standin, PidStandIn::Make(r.proc_pid()));
      fd.reset(open(r.path().c_str(), OpenFlags(e.flags())));
    }
    if (!fd) return Errno("open %s flags %#o", r.path().c_str(), e.flags());
    struct stat st;
    if (fstat(fd.get(), &st) == 0 && S_ISREG(st.st_mode) && S_ISREG(r.mode()) &&
        static_cast<uint64_t>(st.st_size) < r.size() && e.pos() > static_cast<uint64_t>(st.st_size))
      LOG_WARN("%s shrank since the dump (%lld < %llu bytes)", r.path().c_str(),
               static_cast<long long>(st.st_size), static_cast<unsigned long long>(r.size()));
  }
  if (!(e.flags() & O_PATH) && S_ISREG(r.mode()) &&
      lseek(fd.get(), static_cast<off_t>(e.pos()), SEEK_SET) < 0)
    return Errno("lseek %s to %llu", r.path().c_str(), static_cast<unsigned long long>(e.pos()));
  if (!(e.flags() & O_PATH) && S_ISDIR(r.mode()) && e.pos() != 0) {
    // Directory positions are opaque cookies; seeking a fresh stream there is what glibc's
    // seekdir does too.
    lseek(fd.get(), static_cast<off_t>(e.pos()), SEEK_SET);
  }
  return fd;
}

// /proc/PID/fd/N or /proc/PID/fdinfo/N of the installing process pid itself (zdtm fanotify00
// keeps /proc/self/fdinfo/N open): fd N exists only once the fds are at their numbers.
static bool OwnFdTableFile(const img::RegFile& r, pid_t pid) {
  if (r.proc_pid() != pid) return false;
  std::string own = StrFormat("/proc/%d/fd", pid);
  const std::string& path = r.path();
  return path.rfind(own + "/", 0) == 0 || path.rfind(own + "info/", 0) == 0;
}

Result<void> InstallReg(FdRestoreContext& ctx, const img::FileEntry& e, pid_t pid) {
  const img::RegFile& r = e.reg();
  if (r.proc_pid() <= 0 || !ctx.tree_pids.count(r.proc_pid()) || !ctx.InstallingHolds(e.id()) ||
      OwnFdTableFile(r, pid))
    return Ok();
  int slot = ctx.Prepared(e.id());
  if (slot < 0) return MakeError(ErrorKind::kBadImage, 0, "%s was not prepared", r.path().c_str());
  // Every process forks its children before its own Install: PID appears without waiting on
  // any Install (another branch of the tree may still be forking: bounded).
  std::string dir = StrFormat("/proc/%d", r.proc_pid());
  for (int i = 0; access(dir.c_str(), F_OK) < 0; i++) {
    if (i >= 30000)
      return MakeError(ErrorKind::kGeneric, ESRCH, "%s: pid %d was not restored within 30 s",
                       r.path().c_str(), r.proc_pid());
    struct timespec ts = {0, 1000000};
    nanosleep(&ts, nullptr);
  }
  UniqueFd fd(open(r.path().c_str(), OpenFlags(e.flags())));
  if (!fd) return Errno("open %s flags %#o", r.path().c_str(), e.flags());
  if (!(e.flags() & O_PATH) && e.pos() &&
      lseek(fd.get(), static_cast<off_t>(e.pos()), SEEK_SET) < 0)
    return Errno("lseek %s to %llu", r.path().c_str(), static_cast<unsigned long long>(e.pos()));
  if (dup3(fd.get(), slot, O_CLOEXEC) < 0) return Errno("dup3 %s", r.path().c_str());
  return Ok();
}

Result<void> InstallRegLate(FdRestoreContext& ctx, const img::FileEntry& e, pid_t pid) {
  const img::RegFile& r = e.reg();
  if (!ctx.installing || !ctx.tree_pids.count(r.proc_pid()) || !ctx.InstallingHolds(e.id()) ||
      !OwnFdTableFile(r, pid))
    return Ok();
  UniqueFd fd(open(r.path().c_str(), OpenFlags(e.flags())));
  if (!fd) return Errno("open %s flags %#o (a file of its own fd table)", r.path().c_str(), e.flags());
  if (!(e.flags() & O_PATH) && e.pos() &&
      lseek(fd.get(), static_cast<off_t>(e.pos()), SEEK_SET) < 0)
    return Errno("lseek %s to %llu", r.path().c_str(), static_cast<unsigned long long>(e.pos()));
  // In place of the placeholder on each number it holds.
  for (const auto& fe : ctx.installing->fds())
    if (fe.file_id() == e.id() && dup3(fd.get(), fe.fd(), fe.cloexec() ? O_CLOEXEC : 0) < 0)
      return Errno("dup3 %s -> %d", r.path().c_str(), fe.fd());
  return Ok();
}

Result<void> DumpChr(FdDumpContext& ctx, const Probe& p, img::FileEntry& e) {
  img::RegFile* r = e.mutable_reg();
  if (p.link.empty() || p.link[0] != '/')
    return MakeError(ErrorKind::kUnsupported, 0, "pid %d fd %d: character device without a path: %s",
                     p.pid, p.fd, p.link.c_str());
  r->set_path(p.link);
  // A device node unlinked while open (zdtm deleted_dev): made again by mknod, opened and
  // unlinked at restore.
  if (p.st.st_nlink == 0 && EndsWith(p.link, kDeleted)) {
    r->set_path(p.link.substr(0, p.link.size() - strlen(kDeleted)));
    r->set_deleted(true);
  }
  r->set_mode(p.st.st_mode);
  r->set_rdev(p.st.st_rdev);
  r->set_uid(p.st.st_uid);
  r->set_gid(p.st.st_gid);
  return Ok();
}

// The node of a deleted device, at its path or beside it when the name is taken again.
static Result<UniqueFd> OpenDeletedDevice(const img::FileEntry& e) {
  const img::RegFile& r = e.reg();
  for (int i = 0; i < 1000; i++) {
    std::string p = i == 0 ? r.path() : StrFormat("%s.godwit-ghost.%d", r.path().c_str(), i);
    if (mknod(p.c_str(), (r.mode() & S_IFMT) | (r.mode() & 07777), r.rdev()) < 0) {
      if (errno == EEXIST) continue;
      return Errno("mknod the deleted device %s (%u:%u)", p.c_str(), major(r.rdev()),
                   minor(r.rdev()));
    }
    (void)!chown(p.c_str(), r.uid(), r.gid());
    (void)!chmod(p.c_str(), r.mode() & 07777);
    UniqueFd fd(open(p.c_str(), OpenFlags(e.flags()) | O_NOCTTY));
    int err = errno;
    unlink(p.c_str());
    if (!fd) {
      errno = err;
      return Errno("open the deleted device %s", p.c_str());
    }
    return fd;
  }
  return MakeError(ErrorKind::kExists, EEXIST, "%s: no free name for the deleted device",
                   r.path().c_str());
}

Result<UniqueFd> OpenChr(FdRestoreContext& ctx, const img::FileEntry& e) {
  const img::RegFile& r = e.reg();
  UniqueFd fd;
  if (r.rdev() == makedev(5, 0)) {
    // /dev/tty is the opener's controlling terminal: the holder opens it in its Install, once
    // its own is set (OpenDevTtys); a placeholder sits on the prepared number until then.
    fd.reset(eventfd(0, EFD_CLOEXEC));
    if (!fd) return Errno("eventfd (placeholder for /dev/tty)");
    return fd;
  }
  if (r.deleted()) {
    ASSIGN_OR_RETURN(fd, OpenDeletedDevice(e));
  } else {
    fd.reset(open(r.path().c_str(), OpenFlags(e.flags()) | O_NOCTTY));
  }
  if (!fd) return Errno("open %s", r.path().c_str());
  struct stat st;
  if (fstat(fd.get(), &st) == 0 && st.st_rdev != r.rdev())
    return MakeError(ErrorKind::kBadImage, 0, "%s is device %#lx now, was %#x", r.path().c_str(),
                     static_cast<unsigned long>(st.st_rdev), r.rdev());
  if (e.pos()) lseek(fd.get(), static_cast<off_t>(e.pos()), SEEK_SET);
  return fd;
}

Result<void> OpenDevTtys(FdRestoreContext& ctx, const img::ProcessFds& pf, pid_t old_pid) {
  for (const auto& fe : pf.fds()) {
    const img::FileEntry* e = ctx.Entry(fe.file_id());
    if (!e || e->kind() != img::FILE_KIND_CHR || e->reg().rdev() != makedev(5, 0)) continue;
    UniqueFd t(open("/dev/tty", OpenFlags(e->flags()) | O_NOCTTY));
    if (!t)
      return Errno("pid %d fd %d: /dev/tty (only a session leader's controlling terminal is "
                   "restored)", old_pid, fe.fd());
    if (dup3(t.get(), fe.fd(), fe.cloexec() ? O_CLOEXEC : 0) < 0)
      return Errno("pid %d: dup3 /dev/tty -> %d", old_pid, fe.fd());
  }
  return Ok();
}

}  // namespace godwit::files
