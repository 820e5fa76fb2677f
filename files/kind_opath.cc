// O_PATH descriptions of what is not a regular file or directory (those stay kind_reg.cc, which
// opens them again with the recorded flags, O_PATH included): a symlink opened
// O_PATH|O_NOFOLLOW, a FIFO, a socket file, a device node. An O_PATH fd does no I/O, so its
// path (and type) is its whole state; restore opens the path again with O_PATH, O_NOFOLLOW for
// a symlink. One unlinked while held (zdtm symlink01) is made again beside its old name (the
// symlink with its target, a FIFO, a device node), opened and unlinked again, like kind_reg.cc's
// ghosts. An unlinked socket file cannot be made without binding a socket: refused.
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <cstring>

#include "common/log.h"
#include "files/kind.h"

namespace godwit::files {

namespace {
constexpr const char kDeleted[] = " (deleted)";

const char* TypeName(mode_t m) {
  switch (m & S_IFMT) {
    case S_IFLNK:
      return "symlink";
    case S_IFIFO:
      return "FIFO";
    case S_IFSOCK:
      return "socket file";
    case S_IFCHR:
      return "character device";
    case S_IFBLK:
      return "block device";
    case S_IFDIR:
      return "directory";
    case S_IFREG:
      return "regular file";
  }
  return "file";
}

// Makes the node of o at name (EEXIST when the name is taken).
int MakeNode(const img::OpathFile& o, const std::string& name) {
  mode_t m = o.mode();
  if (S_ISLNK(m)) return symlink(o.target().c_str(), name.c_str());
  if (S_ISFIFO(m)) return mkfifo(name.c_str(), m & 07777);
  return mknod(name.c_str(), m, static_cast<dev_t>(o.rdev()));
}
}  // namespace

Result<void> DumpOpath(FdDumpContext& ctx, const Probe& p, img::FileEntry& e) {
  img::OpathFile* o = e.mutable_opath();
  std::string path = p.link;
  if (path.empty() || path[0] != '/')
    return MakeError(ErrorKind::kUnsupported, 0, "pid %d fd %d: O_PATH fd on %s has no path", p.pid,
                     p.fd, path.c_str());
  size_t dl = strlen(kDeleted);
  if (p.st.st_nlink == 0 && path.size() > dl && path.compare(path.size() - dl, dl, kDeleted) == 0) {
    path.resize(path.size() - dl);
    if (S_ISSOCK(p.st.st_mode))
      return MakeError(ErrorKind::kUnsupported, 0,
                       "pid %d fd %d: O_PATH fd on the unlinked socket file %s", p.pid, p.fd,
                       path.c_str());
    o->set_deleted(true);
  }
  if (S_ISLNK(p.st.st_mode)) {
    char buf[4096];
    ssize_t n = readlinkat(p.local, "", buf, sizeof(buf));
    if (n < 0) return Errno("pid %d fd %d: readlink of the symlink %s", p.pid, p.fd, path.c_str());
    if (n == static_cast<ssize_t>(sizeof(buf)))
      return MakeError(ErrorKind::kUnsupported, 0, "pid %d fd %d: symlink %s: target too long",
                       p.pid, p.fd, path.c_str());
    o->set_target(std::string(buf, n));
  }
  o->set_path(path);
  o->set_mode(p.st.st_mode);
  o->set_dev(p.st.st_dev);
  o->set_ino(p.st.st_ino);
  o->set_rdev(p.st.st_rdev);
  o->set_uid(p.st.st_uid);
  o->set_gid(p.st.st_gid);
  return Ok();
}

Result<UniqueFd> OpenOpath(FdRestoreContext& ctx, const img::FileEntry& e) {
  const img::OpathFile& o = e.opath();
  int flags = O_PATH | O_CLOEXEC | (e.flags() & (O_NOFOLLOW | O_DIRECTORY));
  if (S_ISLNK(o.mode())) flags |= O_NOFOLLOW;
  UniqueFd fd;
  if (o.deleted()) {
    std::string name;
    for (int i = 0; i < 1000 && name.empty(); i++) {
      std::string n = i == 0 ? o.path() : StrFormat("%s.godwit-ghost.%d", o.path().c_str(), i);
      if (MakeNode(o, n) == 0)
        name = n;
      else if (errno != EEXIST)
        return Errno("make the unlinked %s %s again", TypeName(o.mode()), n.c_str());
    }
    if (name.empty())
      return MakeError(ErrorKind::kExists, EEXIST, "no free name for the unlinked %s %s",
                       TypeName(o.mode()), o.path().c_str());
    if (lchown(name.c_str(), o.uid(), o.gid()) < 0) PLOG_WARN("lchown %s", name.c_str());
    fd.reset(open(name.c_str(), flags));
    int err = errno;
    unlink(name.c_str());
    errno = err;
    if (!fd) return Errno("open the unlinked %s %s again", TypeName(o.mode()), name.c_str());
  } else {
    fd.reset(open(o.path().c_str(), flags));
    if (!fd) return Errno("open %s O_PATH", o.path().c_str());
  }
  struct stat st;
  if (fstat(fd.get(), &st) < 0) return Errno("fstat %s", o.path().c_str());
  if ((st.st_mode & S_IFMT) != (o.mode() & S_IFMT))
    return MakeError(ErrorKind::kGeneric, 0, "%s is a %s now, was a %s", o.path().c_str(),
                     TypeName(st.st_mode), TypeName(o.mode()));
  if ((S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode)) && st.st_rdev != o.rdev())
    return MakeError(ErrorKind::kGeneric, 0, "%s is device %u:%u now, was %u:%u", o.path().c_str(),
                     major(st.st_rdev), minor(st.st_rdev), major(o.rdev()), minor(o.rdev()));
  if (S_ISLNK(st.st_mode)) {
    char buf[4096];
    ssize_t n = readlinkat(fd.get(), "", buf, sizeof(buf));
    if (n >= 0 && std::string(buf, n) != o.target())
      LOG_WARN("symlink %s points to %.*s now, was %s", o.path().c_str(), static_cast<int>(n), buf,
               o.target().c_str());
  }
  return fd;
}

}  // namespace godwit::files
