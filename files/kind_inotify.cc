// inotify: the watches (wd, mask) from fdinfo. The watched inode's path is recovered from the
// file handle in fdinfo with open_by_handle_at on the mount that holds it. Restore adds the
// watches again in wd order; the kernel hands out wds cyclically, so a watch that got a lower
// wd than recorded is removed and added again until it lands on its number. Events that were
// queued but not read are not restored (the queue is drained of the IN_IGNORED this causes).
// fanotify (same file): the group's init flags and every mark from fdinfo (an inode by its file
// handle, a mount by its id, a filesystem by its device), marked again at restore; queued
// events and pending permission requests are not kept.
#include <fcntl.h>
#include <sys/fanotify.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>

#include "common/fs.h"
#include "files/kind.h"

namespace godwit::files {

namespace {
// The mount point (as the process sees it) of the device sdev (kernel dev_t: major << 20).
Result<std::string> MountOf(pid_t pid, unsigned long sdev) {
  unsigned maj = sdev >> 20, min = sdev & 0xfffff;
  ASSIGN_OR_RETURN(std::string mi, fs::ReadFile(StrFormat("/proc/%d/mountinfo", pid)));
  for (const std::string& line : fs::Split(mi, '\n')) {
    unsigned a, b;
    char root[4096], mp[4096];
    int id, parent;
    if (sscanf(line.c_str(), "%d %d %u:%u %4095s %4095s", &id, &parent, &a, &b, root, mp) != 6)
      continue;
    if (a == maj && b == min) return std::string(mp);
  }
  return MakeError(ErrorKind::kNotFound, 0, "no mount of device %u:%u in pid %d", maj, min, pid);
}

Result<std::string> PathFromHandle(pid_t pid, unsigned long sdev, int type, const std::string& hex) {
  ASSIGN_OR_RETURN(std::string mp, MountOf(pid, sdev));
  std::string mpath = StrFormat("/proc/%d/root%s", pid, mp.c_str());
  UniqueFd mfd(open(mpath.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));  // not O_PATH: EBADF
  if (!mfd) return Errno("open %s", mpath.c_str());
  std::vector<char> buf(sizeof(struct file_handle) + hex.size() / 2);
  auto* fh = reinterpret_cast<struct file_handle*>(buf.data());
  fh->handle_bytes = hex.size() / 2;
  fh->handle_type = type;
  for (size_t i = 0; i < hex.size() / 2; i++)
    fh->f_handle[i] = static_cast<unsigned char>(strtoul(hex.substr(2 * i, 2).c_str(), nullptr, 16));
  UniqueFd f(open_by_handle_at(mfd.get(), fh, O_PATH | O_CLOEXEC));
  if (!f) return Errno("open_by_handle_at on %s", mpath.c_str());
  char link[4096];
  ssize_t n = readlink(StrFormat("/proc/self/fd/%d", f.get()).c_str(), link, sizeof(link) - 1);
  if (n < 0) return Errno("readlink handle");
  std::string path(link, n);
  // Our path goes through /proc/PID/root; the process sees it from its own root.
  std::string root;
  char rl[4096];
  ssize_t rn = readlink(StrFormat("/proc/%d/root", pid).c_str(), rl, sizeof(rl) - 1);
  if (rn > 0) root.assign(rl, rn);
  if (!root.empty() && root != "/" && path.rfind(root, 0) == 0) path = path.substr(root.size());
  return path;
}

constexpr char kDeleted[] = " (deleted)";
bool IsDeleted(const std::string& path) {
  return path.size() > 10 && path.compare(path.size() - 10, 10, kDeleted) == 0;
}

// Whether pid holds an fd on the inode (ino, kernel-encoded sdev): a watch on an unlinked inode
// is restored on the restored deleted file, so one must be dumped.
bool HoldsInode(pid_t pid, unsigned long ino, unsigned long sdev) {
  dev_t dev = makedev(sdev >> 20, sdev & 0xfffff);
  std::string dir = StrFormat("/proc/%d/fd", pid);
  auto names = fs::ListDir(dir);
  if (!names.ok()) return false;
  for (const std::string& n : *names) {
    struct stat st;
    if (stat((dir + "/" + n).c_str(), &st) == 0 && st.st_ino == ino && st.st_dev == dev)
      return true;
  }
  return false;
}
// The mount point (as the process sees it) of mount id mnt_id in pid's mount namespace.
Result<std::string> MountPointOf(pid_t pid, int mnt_id) {
  ASSIGN_OR_RETURN(std::string mi, fs::ReadFile(StrFormat("/proc/%d/mountinfo", pid)));
  for (const std::string& line : fs::Split(mi, '\n')) {
    int id;
    char root[4096], mp[4096];
    if (sscanf(line.c_str(), "%d %*d %*u:%*u %4095s %4095s", &id, root, mp) == 3 && id == mnt_id)
      return std::string(mp);
  }
  return MakeError(ErrorKind::kNotFound, 0, "no mount %d in pid %d", mnt_id, pid);
}
}  // namespace

Result<void> DumpFanotify(FdDumpContext& ctx, const Probe& p, img::FileEntry& e) {
  img::FanotifyFile* f = e.mutable_fanotify();
  // "fanotify flags:10 event-flags:0"; the fdinfo parser splits at the first ':'.
  unsigned flags = 0, ev = 0;
  std::string head = "flags:" + p.info.Get("fanotify flags");
  if (sscanf(head.c_str(), "flags:%x event-flags:%x", &flags, &ev) != 2)
    return MakeError(ErrorKind::kUnsupported, 0, "fanotify: cannot parse 'fanotify %s'",
                     head.c_str());
  f->set_flags(flags);
  f->set_event_flags(ev);
  for (const std::string& rest : p.info.All("fanotify ino")) {
    std::string v = "ino:" + rest;
    unsigned long ino, sdev;
    unsigned mflags, mask, ign, bytes;
    int type;
    char hex[300];
    if (sscanf(v.c_str(), "ino:%lx sdev:%lx mflags:%x mask:%x ignored_mask:%x fhandle-bytes:%x "
               "fhandle-type:%x f_handle:%299s",
               &ino, &sdev, &mflags, &mask, &ign, &bytes, &type, hex) != 8)
      return MakeError(ErrorKind::kUnsupported, 0, "fanotify: cannot parse 'fanotify %s'",
                       v.c_str());
    img::FanotifyMark* m = f->add_marks();
    m->set_type(img::FanotifyMark::INODE);
    m->set_mflags(mflags);
    m->set_mask(mask);
    m->set_ignored_mask(ign);
    ASSIGN_OR_RETURN(std::string path, PathFromHandle(p.pid, sdev, type, hex));
    if (IsDeleted(path))
      return MakeError(ErrorKind::kUnsupported, 0, "fanotify mark on deleted %s", path.c_str());
    m->set_path(path);
  }
  for (const std::string& rest : p.info.All("fanotify mnt_id")) {
    std::string v = "mnt_id:" + rest;
    unsigned id, mflags, mask, ign;
    if (sscanf(v.c_str(), "mnt_id:%x mflags:%x mask:%x ignored_mask:%x", &id, &mflags, &mask,
               &ign) != 4)
      return MakeError(ErrorKind::kUnsupported, 0, "fanotify: cannot parse 'fanotify %s'",
                       v.c_str());
    img::FanotifyMark* m = f->add_marks();
    m->set_type(img::FanotifyMark::MOUNT);
    m->set_mflags(mflags);
    m->set_mask(mask);
    m->set_ignored_mask(ign);
    ASSIGN_OR_RETURN(std::string path, MountPointOf(p.pid, static_cast<int>(id)));
    m->set_path(path);
  }
  for (const std::string& rest : p.info.All("fanotify sdev")) {
    std::string v = "sdev:" + rest;
    unsigned long sdev;
    unsigned mflags, mask, ign;
    if (sscanf(v.c_str(), "sdev:%lx mflags:%x mask:%x ignored_mask:%x", &sdev, &mflags, &mask,
               &ign) != 4)
      return MakeError(ErrorKind::kUnsupported, 0, "fanotify: cannot parse 'fanotify %s'",
                       v.c_str());
    img::FanotifyMark* m = f->add_marks();
    m->set_type(img::FanotifyMark::FILESYSTEM);
    m->set_mflags(mflags);
    m->set_mask(mask);
    m->set_ignored_mask(ign);
    ASSIGN_OR_RETURN(std::string path, MountOf(p.pid, sdev));
    m->set_path(path);
  }
  return Ok();
}

Result<UniqueFd> OpenFanotify(FdRestoreContext& ctx, const img::FileEntry& e) {
  const img::FanotifyFile& f = e.fanotify();
  // The group keeps its init flags, FAN_CLOEXEC included (fdinfo shows them): the same ones, and
  // our copy made close-on-exec apart (the fd's own flag is set by Install).
  UniqueFd fd(fanotify_init(f.flags(), f.event_flags()));
  if (!fd) return Errno("fanotify_init flags %#x event flags %#x", f.flags(), f.event_flags());
  fcntl(fd.get(), F_SETFD, FD_CLOEXEC);
  for (const auto& m : f.marks()) {
    unsigned base = FAN_MARK_ADD | (m.type() == img::FanotifyMark::MOUNT        ? FAN_MARK_MOUNT
                                    : m.type() == img::FanotifyMark::FILESYSTEM ? FAN_MARK_FILESYSTEM
                                                                                : 0);
    if (m.mask() && fanotify_mark(fd.get(), base, m.mask(), AT_FDCWD, m.path().c_str()) < 0)
      return Errno("fanotify_mark %s mask %#llx", m.path().c_str(),
                   static_cast<unsigned long long>(m.mask()));
    unsigned ign = base | FAN_MARK_IGNORED_MASK | (m.mflags() & FAN_MARK_IGNORED_SURV_MODIFY);
    if (m.ignored_mask() &&
        fanotify_mark(fd.get(), ign, m.ignored_mask(), AT_FDCWD, m.path().c_str()) < 0)
      return Errno("fanotify_mark %s ignored mask %#llx", m.path().c_str(),
                   static_cast<unsigned long long>(m.ignored_mask()));
  }
  return fd;
}

Result<void> DumpInotify(FdDumpContext& ctx, const Probe& p, img::FileEntry& e) {
  img::InotifyFile* in = e.mutable_inotify();
  // "wd:1 ino:1a2b sdev:800001 mask:800afce ignored_mask:0 fhandle-bytes:8 fhandle-type:1
  //  f_handle:d2b5010000000000"
  // The fdinfo parser splits at the first ':', so the key is "inotify wd".
  for (const std::string& rest : p.info.All("inotify wd")) {
    std::string v = "wd:" + rest;
    unsigned wd, mask, ign, bytes;
    int type;
    unsigned long ino, sdev;
    char hex[300];
    if (sscanf(v.c_str(), "wd:%x ino:%lx sdev:%lx mask:%x ignored_mask:%x fhandle-bytes:%x "
               "fhandle-type:%x f_handle:%299s",
               &wd, &ino, &sdev, &mask, &ign, &bytes, &type, hex) != 8)
      return MakeError(ErrorKind::kUnsupported, 0, "inotify: cannot parse 'inotify %s'", v.c_str());
    img::InotifyWatch* w = in->add_watches();
    w->set_wd(wd);
    w->set_mask(mask);
    w->set_ignored_mask(ign);
    w->set_ino(ino);
    w->set_sdev(sdev);
    ASSIGN_OR_RETURN(std::string path, PathFromHandle(p.pid, sdev, type, hex));
    if (IsDeleted(path)) {
      // Unlinked: restorable when the process holds the inode open (its deleted file is dumped
      // with its data and made again at restore); otherwise nothing names the inode any more.
      if (!HoldsInode(p.pid, ino, sdev))
        return MakeError(ErrorKind::kUnsupported, 0,
                         "inotify watch on deleted %s, which no fd of pid %d holds open",
                         path.c_str(), p.pid);
      path.resize(path.size() - strlen(kDeleted));
      w->set_deleted(true);
    }
    w->set_path(path);
  }
  return Ok();
}

namespace {
// The restored deleted file a watch on an unlinked inode goes on: the RegFile of the same inode.
Result<int> DeletedWatchTarget(FdRestoreContext& ctx, const img::InotifyWatch& w) {
  dev_t dev = makedev(w.sdev() >> 20, w.sdev() & 0xfffff);
  for (const auto& [id, e] : ctx.entries())
    if (e.kind() == img::FILE_KIND_REG && e.reg().deleted() && e.reg().ino() == w.ino() &&
        e.reg().dev() == dev)
      return ctx.Ensure(id);
  return MakeError(ErrorKind::kBadImage, 0,
                   "files.img: inotify watch on deleted %s: no deleted file of inode %llu",
                   w.path().c_str(), static_cast<unsigned long long>(w.ino()));
}
}  // namespace

Result<UniqueFd> OpenInotify(FdRestoreContext& ctx, const img::FileEntry& e) {
  UniqueFd fd(inotify_init1(IN_CLOEXEC | IN_NONBLOCK));
  if (!fd) return Errno("inotify_init1");
  std::vector<img::InotifyWatch> ws(e.inotify().watches().begin(), e.inotify().watches().end());
  std::sort(ws.begin(), ws.end(), [](const auto& a, const auto& b) { return a.wd() < b.wd(); });
  bool removed = false;
  for (const auto& w : ws) {
    uint32_t mask = w.mask() & ~IN_MASK_ADD;
    std::string target = w.path();
    if (w.deleted()) {
      ASSIGN_OR_RETURN(int gfd, DeletedWatchTarget(ctx, w));
      target = StrFormat("/proc/self/fd/%d", gfd);
    }
    for (int tries = 0;; tries++) {
      int wd = inotify_add_watch(fd.get(), target.c_str(), mask);
      if (wd < 0) return Errno("inotify_add_watch %s", w.path().c_str());
      if (wd == w.wd()) break;
      if (wd > w.wd() || tries > (1 << 16))
        return MakeError(ErrorKind::kGeneric, 0, "inotify: %s got wd %d, wanted %d",
                         w.path().c_str(), wd, w.wd());
      inotify_rm_watch(fd.get(), wd);
      removed = true;
    }
  }
  if (removed) {
    char buf[4096];
    while (read(fd.get(), buf, sizeof(buf)) > 0) {
    }
  }
  return fd;
}

}  // namespace godwit::files
