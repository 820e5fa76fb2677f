#include "container/mnt.h"

#include <dirent.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <vector>

#include "common/fs.h"
#include "common/proc.h"
#include "common/log.h"
#include "common/scope_exit.h"

namespace godwit::container::mnt {

std::string TmpfsImage(uint32_t mnt_id) { return StrFormat("tmpfs-%u.img", mnt_id); }
std::string TmpfsBlob(uint32_t mnt_id) { return StrFormat("tmpfs-%u-data.img", mnt_id); }

namespace {

// The entries of the directory dirfd (not . and ..) with their d_type (DT_UNKNOWN where the file
// system does not tell), sorted by name; dirfd stays open. Read from the start: the dup shares
// dirfd's offset, which an earlier listing (the layer's walk of the same directory) left at the
// end.
Result<std::vector<std::pair<std::string, unsigned char>>> SortedEntries(int dirfd,
                                                                         const std::string& what) {
  int dup = ::fcntl(dirfd, F_DUPFD_CLOEXEC, 0);
  if (dup < 0) return Errno("dup");
  DIR* d = ::fdopendir(dup);
  if (!d) {
    ::close(dup);
    return Errno("fdopendir %s", what.c_str());
  }
  ::rewinddir(d);
  std::vector<std::pair<std::string, unsigned char>> out;
  errno = 0;
  while (struct dirent* de = ::readdir(d)) {
    if (strcmp(de->d_name, ".") && strcmp(de->d_name, ".."))
      out.emplace_back(de->d_name, de->d_type);
  }
  int e = errno;
  ::closedir(d);
  if (e) return MakeError(ErrorKind::kGeneric, e, "readdir %s", what.c_str());
  std::sort(out.begin(), out.end());
  return out;
}

// The entry names of the directory dirfd (not . and ..), sorted; dirfd stays open.
Result<std::vector<std::string>> SortedNames(int dirfd, const std::string& what) {
  ASSIGN_OR_RETURN(auto entries, SortedEntries(dirfd, what));
  std::vector<std::string> names;
  names.reserve(entries.size());
  for (auto& [name, type] : entries) names.push_back(std::move(name));
  return names;
}

// mountinfo escapes space, tab, newline and backslash as \ooo.
std::string Unescape(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); i++) {
    if (s[i] == '\\' && i + 3 < s.size() && isdigit(s[i + 1]) && isdigit(s[i + 2]) &&
        isdigit(s[i + 3])) {
      out += static_cast<char>((s[i + 1] - '0') * 64 + (s[i + 2] - '0') * 8 + (s[i + 3] - '0'));
      i += 3;
    } else {
      out += s[i];
    }
  }
  return out;
}

int64_t Ns(const struct statx_timestamp& t) {
  return static_cast<int64_t>(t.tv_sec) * 1000000000LL + t.tv_nsec;
}

img::TmpfsFileType TypeOf(mode_t m) {
  switch (m & S_IFMT) {
    case S_IFREG:
      return img::TMPFS_REG;
    case S_IFDIR:
      return img::TMPFS_DIR;
    case S_IFLNK:
      return img::TMPFS_SYMLINK;
    case S_IFCHR:
      return img::TMPFS_CHR;
    case S_IFBLK:
      return img::TMPFS_BLK;
    case S_IFIFO:
      return img::TMPFS_FIFO;
    case S_IFSOCK:
      return img::TMPFS_SOCK;
    default:
      return img::TMPFS_UNKNOWN;
  }
}

Result<void> ReadXattrs(int fd, img::TmpfsEntry* e) {
  char names[65536];
  ssize_t n = ::flistxattr(fd, names, sizeof(names));
  if (n < 0) {
    if (errno == ENOTSUP) return Ok();
    return Errno("flistxattr %s", e->path().c_str());
  }
  for (ssize_t off = 0; off < n; off += strlen(names + off) + 1) {
    const char* name = names + off;
    std::string value(65536, '\0');
    ssize_t len = ::fgetxattr(fd, name, value.data(), value.size());
    if (len < 0) return Errno("fgetxattr %s %s", e->path().c_str(), name);
    value.resize(len);
    img::TmpfsXattr* x = e->add_xattrs();
    x->set_name(name);
    x->set_value(value);
  }
  return Ok();
}

}  // namespace

bool StillPrecopied(const PrecopiedFile& was, const struct statx& now, int64_t taken_ns) {
  // Inode times come from a coarse clock (a tick: 1-10 ms): a write in the same tick as the
  // copy, after it, leaves them as they were. Only a file unchanged well before the copy began
  // is trusted.
  constexpr int64_t kTickMarginNs = 50'000'000;
  return makedev(now.stx_dev_major, now.stx_dev_minor) == was.dev && now.stx_ino == was.ino &&
         now.stx_size == was.size &&
         Ns(now.stx_mtime) == was.mtime_ns && Ns(now.stx_ctime) == was.ctime_ns &&
         was.ctime_ns < taken_ns - kTickMarginNs;
}

namespace {

// Decides whether an entry goes into the image (the writable-layer diff keeps only what differs
// from the rootfs); directories are descended either way.
using KeepFn = std::function<Result<bool>(const std::string& path, const struct statx& stx)>;

// Whether a directory that is not kept itself can have anything kept below it (no: the walk
// skips it).
using DescendFn = std::function<bool(const std::string& path)>;

class Walker {
 public:
  Walker(images::ImageWriter& w, images::BlobWriter& blob, uint64_t mnt_id, KeepFn keep = nullptr,
         DescendFn descend = nullptr)
      : w_(w), blob_(blob), mnt_id_(mnt_id), keep_(std::move(keep)), descend_(std::move(descend)) {}

  Result<void> Root(int fd) {
    struct statx stx;
    if (::statx(fd, "", AT_EMPTY_PATH, STATX_BASIC_STATS | STATX_MNT_ID, &stx) < 0)
      return Errno("statx tmpfs root");
    img::TmpfsEntry e;
    Fill(stx, "", &e);
    TRY(ReadXattrs(fd, &e));
    bool keep = true;
    if (keep_) {
      ASSIGN_OR_RETURN(keep, keep_("", stx));
    }
    if (keep) TRY(w_.Write(e));
    return Dir(fd, "");
  }

  uint64_t files() const { return files_; }
  // The final dump: files unchanged since `base` was copied are referred to, not read.
  void UseBase(const PrecopiedTree* base) { base_ = base; }
  // A copy ahead (the container runs): what identifies each file copied goes into *record; a
  // file that changes kind, vanishes or shrinks while read is left out (the final dump reads it).
  void Record(PrecopiedTree* record) { record_ = record; }
  uint64_t reused() const { return reused_; }
  // A copy ahead (Record) from fd: a failure ends the walk with a warning naming `what`; what was
  // recorded before it stays valid (each file's bytes are whole in the blob), the rest is read by
  // the final dump.
  void CopyAhead(int fd, const std::string& what) {
    auto walked = Root(fd);
    if (!walked.ok())
      LOG_WARN("copying %s ahead stopped at %zu files: %s", what.c_str(), record_->files.size(),
               walked.error().to_string().c_str());
  }

 private:
  void Fill(const struct statx& stx, const std::string& path, img::TmpfsEntry* e) {
    e->set_path(path);
    e->set_type(TypeOf(stx.stx_mode));
    e->set_mode(stx.stx_mode & 07777);
    e->set_uid(stx.stx_uid);
    e->set_gid(stx.stx_gid);
    e->set_atime_ns(Ns(stx.stx_atime));
    e->set_mtime_ns(Ns(stx.stx_mtime));
    e->set_size(stx.stx_size);
    if (S_ISCHR(stx.stx_mode) || S_ISBLK(stx.stx_mode))
      e->set_rdev(makedev(stx.stx_rdev_major, stx.stx_rdev_minor));
  }

  Result<void> Dir(int dirfd, const std::string& rel) {
    ASSIGN_OR_RETURN(std::vector<std::string> names, SortedNames(dirfd, rel));
    for (const std::string& name : names) {
      std::string path = rel.empty() ? name : rel + "/" + name;
      TRY(Entry(dirfd, name, path));
    }
    return Ok();
  }

  Result<void> Entry(int dirfd, const std::string& name, const std::string& path) {
    struct statx stx;
    if (::statx(dirfd, name.c_str(), AT_SYMLINK_NOFOLLOW, STATX_BASIC_STATS | STATX_MNT_ID, &stx) <
        0) {
      if (record_ && errno == ENOENT) return Ok();  // removed since the directory was read
      return Errno("statx %s", path.c_str());
    }
    img::TmpfsEntry e;
    Fill(stx, path, &e);
    files_++;
    bool keep = true;
    if (keep_) {
      ASSIGN_OR_RETURN(keep, keep_(path, stx));
    }
    if (!keep) {
      if (!S_ISDIR(stx.stx_mode) || stx.stx_mnt_id != mnt_id_) return Ok();
      if (descend_ && !descend_(path)) return Ok();
      int fd = ::openat(dirfd, name.c_str(),
                        O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_NOATIME | O_CLOEXEC);
      if (fd < 0) return Errno("open dir %s", path.c_str());
      UniqueFd owned(fd);
      return Dir(fd, path);
    }
    if (stx.stx_mnt_id != mnt_id_) {
      // Another mount covers this directory; its contents belong to that mount. A file bind
      // (a host device node over an empty file, in a user namespace) covers an empty file.
      e.set_mountpoint(true);
      e.set_type(S_ISDIR(stx.stx_mode) ? img::TMPFS_DIR : img::TMPFS_REG);
      if (!S_ISDIR(stx.stx_mode)) e.set_size(0);
      return w_.Write(e);
    }
    if (!S_ISDIR(stx.stx_mode) && stx.stx_nlink > 1) {
      auto it = inodes_.find(stx.stx_ino);
      if (it != inodes_.end()) {
        e.set_type(img::TMPFS_HARDLINK);
        e.set_link_target(it->second);
        return w_.Write(e);
      }
      inodes_[stx.stx_ino] = path;
    }
    switch (stx.stx_mode & S_IFMT) {
      case S_IFDIR: {
        // O_NOATIME: reading a directory would touch its atime (readlink still touches a
        // symlink's; the image keeps the value from before).
        int fd = ::openat(dirfd, name.c_str(),
                          O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_NOATIME | O_CLOEXEC);
        if (fd < 0 && record_) return Ok();  // gone or replaced since its statx
        if (fd < 0) return Errno("open dir %s", path.c_str());
        UniqueFd owned(fd);
        TRY(ReadXattrs(fd, &e));
        TRY(w_.Write(e));
        return Dir(fd, path);
      }
      case S_IFREG: {
        int fd = ::openat(dirfd, name.c_str(), O_RDONLY | O_NOFOLLOW | O_NOATIME | O_CLOEXEC);
        if (fd < 0 && errno == EPERM)
          fd = ::openat(dirfd, name.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0 && record_) return Ok();  // gone or replaced since its statx
        if (fd < 0) return Errno("open %s", path.c_str());
        UniqueFd owned(fd);
        TRY(ReadXattrs(fd, &e));
        if (base_) {
          auto it = base_->files.find(path);
          if (it != base_->files.end() && StillPrecopied(it->second, stx, base_->taken_ns)) {
            for (const auto& x : it->second.extents) *e.add_extents() = x;
            e.set_data_blob(base_->blob);
            reused_ += stx.stx_size;
            return w_.Write(e);
          }
        }
        if (record_) {
          if (!Contents(fd, stx.stx_size, &e).ok()) return Ok();  // changing while read
          PrecopiedFile& f = record_->files[path];
          f.dev = makedev(stx.stx_dev_major, stx.stx_dev_minor);
          f.ino = stx.stx_ino;
          f.size = stx.stx_size;
          f.mtime_ns = Ns(stx.stx_mtime);
          f.ctime_ns = Ns(stx.stx_ctime);
          f.extents.assign(e.extents().begin(), e.extents().end());
          return w_.Write(e);
        }
        TRY_CTX(Contents(fd, stx.stx_size, &e), "%s", path.c_str());
        return w_.Write(e);
      }
      case S_IFLNK: {
        std::string target(stx.stx_size + 1, '\0');
        ssize_t n = ::readlinkat(dirfd, name.c_str(), target.data(), target.size());
        if (n < 0 && record_) return Ok();
        if (n < 0) return Errno("readlink %s", path.c_str());
        target.resize(n);
        e.set_link_target(target);
        return w_.Write(e);
      }
      default:
        return w_.Write(e);
    }
  }

  // Data regions only (SEEK_DATA/SEEK_HOLE): a sparse file stays sparse.
  Result<void> Contents(int fd, uint64_t size, img::TmpfsEntry* e) {
    std::vector<char> buf(1 << 20);
    off_t pos = 0;
    while (static_cast<uint64_t>(pos) < size) {
      off_t data = ::lseek(fd, pos, SEEK_DATA);
      if (data < 0) {
        if (errno == ENXIO) break;  // only a hole remains
        return Errno("lseek SEEK_DATA");
      }
      off_t hole = ::lseek(fd, data, SEEK_HOLE);
      if (hole < 0) return Errno("lseek SEEK_HOLE");
      if (static_cast<uint64_t>(hole) > size) hole = size;
      img::TmpfsExtent* x = e->add_extents();
      x->set_offset(data);
      x->set_length(hole - data);
      bool first = true;
      for (off_t off = data; off < hole;) {
        size_t want = std::min<off_t>(buf.size(), hole - off);
        ssize_t n = ::pread(fd, buf.data(), want, off);
        if (n < 0) {
          if (errno == EINTR) continue;
          return Errno("pread at %ld", static_cast<long>(off));
        }
        if (n == 0) return MakeError(ErrorKind::kGeneric, 0, "file shrank while dumped");
        ASSIGN_OR_RETURN(uint64_t boff, blob_.Append(buf.data(), n));
        // Appends are contiguous in the blob's logical stream.
        if (first) x->set_blob_offset(boff);
        first = false;
        off += n;
      }
      pos = hole;
    }
    return Ok();
  }

  images::ImageWriter& w_;
  images::BlobWriter& blob_;
  uint64_t mnt_id_;
  KeepFn keep_;
  DescendFn descend_;
  std::map<uint64_t, std::string> inodes_;
  uint64_t files_ = 0;
  const PrecopiedTree* base_ = nullptr;
  PrecopiedTree* record_ = nullptr;
  uint64_t reused_ = 0;
};

// ---- restore ------------------------------------------------------------------------------

Result<void> CheckPath(const std::string& p) {
  if (p.empty()) return Ok();
  if (p[0] == '/' || p.back() == '/')
    return MakeError(ErrorKind::kBadImage, 0, "tmpfs entry path '%s' is not relative", p.c_str());
  for (const auto& c : fs::Split(p, '/')) {
    if (c.empty() || c == "." || c == "..")
      return MakeError(ErrorKind::kBadImage, 0, "tmpfs entry path '%s' is not canonical",
                       p.c_str());
  }
  return Ok();
}

// Opens rel beneath root without following any symlink.
Result<UniqueFd> OpenBeneath(int root, const std::string& rel, int flags) {
  if (rel.empty()) {
    int fd = ::fcntl(root, F_DUPFD_CLOEXEC, 0);
    if (fd < 0) return Errno("dup");
    return UniqueFd(fd);
  }
  struct open_how how = {};
  how.flags = flags | O_CLOEXEC;
  how.resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS;
  long fd = ::syscall(SYS_openat2, root, rel.c_str(), &how, sizeof(how));
  if (fd < 0) return Errno("open %s beneath the restore dir", rel.c_str());
  return UniqueFd(static_cast<int>(fd));
}

struct Split2 {
  std::string parent, name;
};
Split2 SplitPath(const std::string& p) {
  auto pos = p.rfind('/');
  if (pos == std::string::npos) return {"", p};
  return {p.substr(0, pos), p.substr(pos + 1)};
}

struct timespec Ts(int64_t ns) {
  struct timespec t;
  t.tv_sec = ns / 1000000000LL;
  t.tv_nsec = ns % 1000000000LL;
  if (t.tv_nsec < 0) {
    t.tv_sec -= 1;
    t.tv_nsec += 1000000000LL;
  }
  return t;
}

class Restorer {
 public:
  Restorer(int root, images::BlobReader* blob, const images::ImageSet* images = nullptr)
      : root_(root), blob_(blob), images_(images) {}

  Result<void> Entry(const img::TmpfsEntry& e) {
    TRY(CheckPath(e.path()));
    if (e.path().empty()) {
      if (e.type() != img::TMPFS_DIR)
        return MakeError(ErrorKind::kBadImage, 0, "tmpfs root is not a directory");
      TRY(Attrs(root_, e));
      times_.push_back(&e);
      return Ok();
    }
    Split2 sp = SplitPath(e.path());
    ASSIGN_OR_RETURN(UniqueFd parent, OpenBeneath(root_, sp.parent, O_PATH | O_DIRECTORY));
    int pfd = parent.get();
    const char* name = sp.name.c_str();
    mode_t perm = e.mode() & 07777;
    switch (e.type()) {
      case img::TMPFS_DIR: {
        if (::mkdirat(pfd, name, 0700) < 0 && errno != EEXIST)
          return Errno("mkdir %s", e.path().c_str());
        ASSIGN_OR_RETURN(UniqueFd fd, OpenBeneath(root_, e.path(), O_RDONLY | O_DIRECTORY));
        TRY(Attrs(fd.get(), e));
        break;
      }
      case img::TMPFS_REG: {
        int fd = ::openat(pfd, name, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
        if (fd < 0) return Errno("create %s", e.path().c_str());
        UniqueFd owned(fd);
        if (::ftruncate(fd, e.size()) < 0) return Errno("ftruncate %s", e.path().c_str());
        TRY_CTX(Contents(fd, e), "%s", e.path().c_str());
        TRY(Attrs(fd, e));
        break;
      }
      case img::TMPFS_SYMLINK:
        TRY(Replace(pfd, name, e, [&] { return ::symlinkat(e.link_target().c_str(), pfd, name); }));
        if (::fchownat(pfd, name, e.uid(), e.gid(), AT_SYMLINK_NOFOLLOW) < 0)
          return Errno("chown %s", e.path().c_str());
        break;
      case img::TMPFS_CHR:
      case img::TMPFS_BLK:
      case img::TMPFS_FIFO: {
        mode_t type = e.type() == img::TMPFS_CHR   ? S_IFCHR
                      : e.type() == img::TMPFS_BLK ? S_IFBLK
                                                   : S_IFIFO;
        // An identical node may be there already (a bind mount made at BuildRoot holds it):
        // keep that inode.
        struct stat cur;
        bool same = ::fstatat(pfd, name, &cur, AT_SYMLINK_NOFOLLOW) == 0 &&
                    (cur.st_mode & S_IFMT) == type && (type == S_IFIFO || cur.st_rdev == e.rdev());
        if (!same)
          TRY(Replace(pfd, name, e, [&] { return ::mknodat(pfd, name, type | 0600, e.rdev()); }));
        if (::fchownat(pfd, name, e.uid(), e.gid(), AT_SYMLINK_NOFOLLOW) < 0)
          return Errno("chown %s", e.path().c_str());
        if (::fchmodat(pfd, name, perm, 0) < 0) return Errno("chmod %s", e.path().c_str());
        break;
      }
      case img::TMPFS_HARDLINK: {
        TRY(CheckPath(e.link_target()));
        ASSIGN_OR_RETURN(UniqueFd target, OpenBeneath(root_, e.link_target(), O_PATH));
        TRY(Replace(pfd, name, e,
                    [&] { return ::linkat(target.get(), "", pfd, name, AT_EMPTY_PATH); }));
        return Ok();  // the inode's attributes come with its first name
      }
      case img::TMPFS_SOCK:
        return Ok();  // bind() of the restored socket makes it again
      case img::TMPFS_WHITEOUT: {
        ASSIGN_OR_RETURN(UniqueFd dfd, OpenBeneath(root_, sp.parent, O_RDONLY | O_DIRECTORY));
        TRY(RemoveTree(dfd.get(), name, e.path()));
        return Ok();
      }
      default:
        return MakeError(ErrorKind::kBadImage, 0, "tmpfs entry %s of unknown type %d",
                         e.path().c_str(), e.type());
    }
    times_.push_back(&e);
    return Ok();
  }

  // Times last, children before parents: creating entries changes a directory's mtime.
  Result<void> Times() {
    for (auto it = times_.rbegin(); it != times_.rend(); ++it) {
      const img::TmpfsEntry& e = **it;
      struct timespec ts[2] = {Ts(e.atime_ns()), Ts(e.mtime_ns())};
      if (e.path().empty()) {
        if (::futimens(root_, ts) < 0) return Errno("utimens tmpfs root");
        continue;
      }
      Split2 sp = SplitPath(e.path());
      ASSIGN_OR_RETURN(UniqueFd parent, OpenBeneath(root_, sp.parent, O_PATH | O_DIRECTORY));
      if (::utimensat(parent.get(), sp.name.c_str(), ts, AT_SYMLINK_NOFOLLOW) < 0)
        return Errno("utimens %s", e.path().c_str());
    }
    return Ok();
  }

 private:
  template <typename F>
  Result<void> Replace(int pfd, const char* name, const img::TmpfsEntry& e, F make) {
    if (make() == 0) return Ok();
    if (errno == EEXIST && ::unlinkat(pfd, name, 0) == 0 && make() == 0) return Ok();
    return Errno("create %s", e.path().c_str());
  }

  // Owner before mode: chown clears setuid/setgid.
  Result<void> Attrs(int fd, const img::TmpfsEntry& e) {
    if (::fchown(fd, e.uid(), e.gid()) < 0) return Errno("chown %s", e.path().c_str());
    if (::fchmod(fd, e.mode() & 07777) < 0) return Errno("chmod %s", e.path().c_str());
    for (const auto& x : e.xattrs()) {
      if (::fsetxattr(fd, x.name().c_str(), x.value().data(), x.value().size(), 0) < 0)
        return Errno("setxattr %s %s", e.path().c_str(), x.name().c_str());
    }
    return Ok();
  }

  // The blob an entry's bytes are in: the image's own, or the one it names (a pre-copy's).
  Result<images::BlobReader*> BlobOf(const img::TmpfsEntry& e) {
    if (e.data_blob().empty()) {
      if (!blob_) return MakeError(ErrorKind::kBadImage, 0, "tmpfs data blob missing");
      return blob_;
    }
    auto it = others_.find(e.data_blob());
    if (it != others_.end()) return it->second.get();
    if (!images_ || !images_->Has(e.data_blob()))
      return MakeError(ErrorKind::kBadImage, 0, "%s: its data blob %s is not in the image set",
                       e.path().c_str(), e.data_blob().c_str());
    ASSIGN_OR_RETURN(auto b, images_->OpenBlob(e.data_blob()));
    images::BlobReader* raw = b.get();
    others_[e.data_blob()] = std::move(b);
    return raw;
  }

  Result<void> Contents(int fd, const img::TmpfsEntry& e) {
    if (e.extents_size() == 0) return Ok();
    ASSIGN_OR_RETURN(images::BlobReader * blob, BlobOf(e));
    std::vector<char> buf(1 << 20);
    for (const auto& x : e.extents()) {
      if (x.offset() > e.size() || x.length() > e.size() - x.offset())
        return MakeError(ErrorKind::kBadImage, 0, "extent %lu+%lu past size %lu",
                         static_cast<unsigned long>(x.offset()),
                         static_cast<unsigned long>(x.length()),
                         static_cast<unsigned long>(e.size()));
      for (uint64_t done = 0; done < x.length();) {
        size_t n = std::min<uint64_t>(buf.size(), x.length() - done);
        TRY(blob->Read(x.blob_offset() + done, buf.data(), n));
        ssize_t w = ::pwrite(fd, buf.data(), n, x.offset() + done);
        if (w < 0) return Errno("pwrite");
        if (static_cast<size_t>(w) != n)
          return MakeError(ErrorKind::kGeneric, ENOSPC, "short write");
        done += n;
      }
    }
    return Ok();
  }

  // Removes name (a whole directory tree if it is one) below dirfd, never following symlinks.
  static Result<void> RemoveTree(int dirfd, const char* name, const std::string& path) {
    if (::unlinkat(dirfd, name, 0) == 0 || errno == ENOENT) return Ok();
    if (errno != EISDIR && errno != EPERM) return Errno("unlink %s", path.c_str());
    int fd = ::openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) return Errno("open %s", path.c_str());
    DIR* d = ::fdopendir(fd);
    if (!d) {
      ::close(fd);
      return Errno("fdopendir %s", path.c_str());
    }
    std::vector<std::string> names;
    while (struct dirent* de = ::readdir(d))
      if (strcmp(de->d_name, ".") && strcmp(de->d_name, "..")) names.push_back(de->d_name);
    Result<void> r = Ok();
    for (const auto& n : names) {
      r = RemoveTree(::dirfd(d), n.c_str(), path + "/" + n);
      if (!r.ok()) break;
    }
    ::closedir(d);
    TRY(r);
    if (::unlinkat(dirfd, name, AT_REMOVEDIR) < 0) return Errno("rmdir %s", path.c_str());
    return Ok();
  }

  int root_;
  images::BlobReader* blob_;
  const images::ImageSet* images_;
  std::map<std::string, std::unique_ptr<images::BlobReader>> others_;
  std::vector<const img::TmpfsEntry*> times_;
};

// ---- rootfs identity and the writable layer --------------------------------------------------

// FNV-1a, 64 bit: identity, not security (the rootfs is the operator's own).
struct Fnv {
  uint64_t h = 1469598103934665603ULL;
  void Add(const void* p, size_t n) {
    const unsigned char* c = static_cast<const unsigned char*>(p);
    for (size_t i = 0; i < n; i++) h = (h ^ c[i]) * 1099511628211ULL;
  }
  void Add(const std::string& s) {
    uint64_t n = s.size();
    Add(&n, sizeof(n));
    Add(s.data(), s.size());
  }
  void Add(uint64_t v) { Add(&v, sizeof(v)); }
};

// The mount a directory fd is on (statx mount id).
Result<uint64_t> MountIdOf(int fd, const std::string& path) {
  struct statx stx;
  if (::statx(fd, "", AT_EMPTY_PATH, STATX_MNT_ID, &stx) < 0)
    return Errno("statx %s", path.c_str());
  return static_cast<uint64_t>(stx.stx_mnt_id);
}

// Walks a host directory tree (one mount), parents before children, names sorted. A directory
// with another mount on it is reported but not entered, also when that mount is a bind of the
// same filesystem (host /usr bound under a rootfs): its entries are that mount's, not the tree's.
Result<void> WalkHost(int dirfd, const std::string& rel, dev_t dev, uint64_t mnt_id,
                      const std::function<Result<bool>(int, const std::string&, const std::string&,
                                                       const struct stat&)>& fn) {
  ASSIGN_OR_RETURN(std::vector<std::string> names, SortedNames(dirfd, rel));
  for (const auto& name : names) {
    std::string path = rel.empty() ? name : rel + "/" + name;
    struct stat st;
    if (::fstatat(dirfd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) < 0)
      return Errno("stat %s", path.c_str());
    ASSIGN_OR_RETURN(bool descend, fn(dirfd, name, path, st));
    if (descend && S_ISDIR(st.st_mode) && st.st_dev == dev) {
      int fd = ::openat(dirfd, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
      if (fd < 0) return Errno("open %s", path.c_str());
      UniqueFd owned(fd);
      ASSIGN_OR_RETURN(uint64_t here, MountIdOf(fd, path));
      if (here == mnt_id) TRY(WalkHost(fd, path, dev, mnt_id, fn));
    }
  }
  return Ok();
}

}  // namespace

Result<img::MountTable> ParseMountInfo(const std::string& text) {
  img::MountTable t;
  int lineno = 0;
  for (const std::string& line : fs::Split(text, '\n')) {
    lineno++;
    if (line.empty()) continue;
    std::vector<std::string> f = fs::Split(line, ' ');
    auto dash = std::find(f.begin(), f.end(), "-");
    if (f.size() < 10 || dash == f.end() || dash - f.begin() < 6 || f.end() - dash < 4)
      return MakeError(ErrorKind::kGeneric, 0, "mountinfo line %d malformed: %s", lineno,
                       line.c_str());
    img::MountEntry* m = t.add_mounts();
    m->set_mnt_id(std::stoul(f[0]));
    m->set_parent_id(std::stoul(f[1]));
    unsigned maj = 0, min = 0;
    if (sscanf(f[2].c_str(), "%u:%u", &maj, &min) != 2)
      return MakeError(ErrorKind::kGeneric, 0, "mountinfo line %d: bad device %s", lineno,
                       f[2].c_str());
    m->set_dev_major(maj);
    m->set_dev_minor(min);
    m->set_root(Unescape(f[3]));
    m->set_mountpoint(Unescape(f[4]));
    m->set_mount_opts(f[5]);
    for (auto it = f.begin() + 6; it != dash; ++it) {
      if (it->rfind("shared:", 0) == 0) m->set_shared_group(std::stoul(it->substr(7)));
      if (it->rfind("master:", 0) == 0) m->set_master_group(std::stoul(it->substr(7)));
      if (*it == "unbindable") m->set_unbindable(true);
    }
    m->set_fstype(Unescape(dash[1]));
    m->set_source(Unescape(dash[2]));
    m->set_super_opts(dash[3]);
  }
  return t;
}

namespace {

struct OpenTmpfs {
  img::MountEntry* mount;
  UniqueFd root;
};

// A copy ahead about to be taken into blob: its clock starts now.
PrecopiedTree NewCopy(std::string blob) {
  PrecopiedTree t;
  t.blob = std::move(blob);
  struct timespec now;
  clock_gettime(CLOCK_REALTIME, &now);
  t.taken_ns = static_cast<int64_t>(now.tv_sec) * 1000000000LL + now.tv_nsec;
  return t;
}

// The mount table of pid's mount namespace.
Result<img::MountTable> ReadTable(pid_t pid) {
  auto text = fs::ReadFile(StrFormat("/proc/%d/mountinfo", pid));
  if (!text.ok()) {
    if (text.error().sys_errno() == ENOENT || text.error().sys_errno() == ESRCH)
      return MakeError(ErrorKind::kNotFound, ESRCH, "pid %d: no such process", pid);
    return std::move(text).error();
  }
  return ParseMountInfo(*text);
}

// The tmpfs superblocks of table whose contents are dumped, each opened through a mount of its
// root when there is one.
Result<std::vector<OpenTmpfs>> OpenTmpfsMounts(pid_t pid, img::MountTable& table) {
  std::string proc = StrFormat("/proc/%d", pid);
  std::map<std::pair<uint32_t, uint32_t>, img::MountEntry*> chosen;
  for (auto& m : *table.mutable_mounts()) {
    if (m.fstype() != "tmpfs") continue;
    auto dev = std::make_pair(m.dev_major(), m.dev_minor());
    auto it = chosen.find(dev);
    if (it == chosen.end() || (it->second->root() != "/" && m.root() == "/")) chosen[dev] = &m;
  }
  std::vector<OpenTmpfs> out;
  for (auto& [dev, m] : chosen) {
    // A tmpfs hidden under another mount on the same path cannot be reached by path; nothing in
    // the container can reach it that way either. Its contents are not dumped (said in mnt.img).
    bool covered = false;
    for (const auto& o : table.mounts()) {
      if (o.parent_id() == m->mnt_id() && o.mountpoint() == m->mountpoint()) {
        LOG_WARN("pid %d: tmpfs %s (mount %u) is covered by mount %u: contents not dumped", pid,
                 m->mountpoint().c_str(), m->mnt_id(), o.mnt_id());
        covered = true;
      }
    }
    if (covered) continue;
    std::string path = proc + "/root" + m->mountpoint();
    int fd = ::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_NOATIME | O_CLOEXEC);
    if (fd < 0) return Errno("open tmpfs %s", path.c_str());
    UniqueFd root(fd);
    struct statx stx;
    if (::statx(fd, "", AT_EMPTY_PATH, STATX_MNT_ID, &stx) < 0)
      return Errno("statx %s", path.c_str());
    if (stx.stx_mnt_id != m->mnt_id()) {
      return MakeError(
          ErrorKind::kUnsupported, 0, "pid %d: %s reaches mount %llu, not tmpfs mount %u", pid,
          m->mountpoint().c_str(), static_cast<unsigned long long>(stx.stx_mnt_id), m->mnt_id());
    }
    out.push_back({m, std::move(root)});
  }
  return out;
}

}  // namespace

Result<void> PrecopyTmpfs(pid_t pid, images::Sink& sink, images::Compression compression,
                          Precopied* out) {
  ASSIGN_OR_RETURN(img::MountTable table, ReadTable(pid));
  ASSIGN_OR_RETURN(std::vector<OpenTmpfs> mounts, OpenTmpfsMounts(pid, table));
  for (auto& [m, root] : mounts) {
    PrecopiedTree& t = out->tmpfs[m->mnt_id()];
    t = NewCopy(StrFormat("tmpfs-%u-data-pre.img", m->mnt_id()));
    ASSIGN_OR_RETURN(images::ImageWriter w,
                     images::ImageWriter::Create(sink, StrFormat("tmpfs-%u-pre.img", m->mnt_id())));
    ASSIGN_OR_RETURN(images::BlobWriter blob, images::BlobWriter::Create(sink, t.blob, compression));
    Walker walker(w, blob, m->mnt_id());
    walker.Record(&t);
    // The files are closed even after a failed walk: an image set cannot be finished with one
    // still open.
    walker.CopyAhead(root.get(), StrFormat("tmpfs %s of pid %d", m->mountpoint().c_str(), pid));
    TRY(w.Close());
    TRY(blob.Close());
    t.bytes = blob.logical_size();
    out->bytes += t.bytes;
    LOG_DEBUG("tmpfs %s copied ahead: %zu files, %lu bytes", m->mountpoint().c_str(),
              t.files.size(), static_cast<unsigned long>(t.bytes));
  }
  return Ok();
}

Result<void> Dump(pid_t pid, images::Sink& sink, images::Compression compression,
                  const Precopied* pre) {
  ASSIGN_OR_RETURN(img::MountTable table, ReadTable(pid));
  ASSIGN_OR_RETURN(std::vector<OpenTmpfs> mounts, OpenTmpfsMounts(pid, table));
  for (auto& [m, root] : mounts) {
    ASSIGN_OR_RETURN(images::ImageWriter w,
                     images::ImageWriter::Create(sink, TmpfsImage(m->mnt_id())));
    ASSIGN_OR_RETURN(images::BlobWriter blob,
                     images::BlobWriter::Create(sink, TmpfsBlob(m->mnt_id()), compression));
    Walker walker(w, blob, m->mnt_id());
    if (pre) {
      auto it = pre->tmpfs.find(m->mnt_id());
      if (it != pre->tmpfs.end()) walker.UseBase(&it->second);
    }
    TRY_CTX(walker.Root(root.get()), "dump tmpfs %s of pid %d", m->mountpoint().c_str(), pid);
    TRY(w.Close());
    TRY(blob.Close());
    if (pre) pre->reused_bytes += walker.reused();
    m->set_contents_dumped(true);
    LOG_DEBUG("tmpfs %s: %lu entries, %lu bytes, %lu referred to the copy ahead",
              m->mountpoint().c_str(), static_cast<unsigned long>(walker.files()),
              static_cast<unsigned long>(blob.logical_size()),
              static_cast<unsigned long>(walker.reused()));
  }
  return images::WriteImage(sink, kImage, table);
}

Result<img::MountTable> ReadMounts(const images::ImageSet& images) {
  img::MountTable t;
  TRY(images.ReadOne(kImage, &t));
  return t;
}

namespace {

Result<void> RestoreEntries(const images::ImageSet& images, const std::string& image,
                            const std::string& blob_name, const std::string& dir) {
  ASSIGN_OR_RETURN(images::ImageReader reader, images.OpenImage(image));
  std::unique_ptr<images::BlobReader> blob;
  if (images.Has(blob_name)) {
    ASSIGN_OR_RETURN(blob, images.OpenBlob(blob_name));
  }
  ASSIGN_OR_RETURN(UniqueFd root, fs::Open(dir, O_RDONLY | O_DIRECTORY));
  // Entries stay alive until the times pass at the end.
  std::vector<std::unique_ptr<img::TmpfsEntry>> entries;
  Restorer r(root.get(), blob.get(), &images);
  for (;;) {
    auto e = std::make_unique<img::TmpfsEntry>();
    ASSIGN_OR_RETURN(bool more, reader.Next(e.get()));
    if (!more) break;
    TRY_CTX(r.Entry(*e), "restore %s into %s", image.c_str(), dir.c_str());
    entries.push_back(std::move(e));
  }
  TRY_CTX(r.Times(), "restore %s into %s", image.c_str(), dir.c_str());
  return Ok();
}

// fstatat of rel inside root as the container sees it (symlinks resolve within root). The walk
// visits a directory's entries together: the last parent stays open.
class RootStat {
 public:
  explicit RootStat(int root) : root_(root) {}
  Result<bool> Stat(const std::string& rel, struct stat* st) {
    Split2 sp = SplitPath(rel);
    int pfd = root_;
    if (!sp.parent.empty()) {
      if (sp.parent != parent_path_ || !parent_) {
        parent_.reset();
        parent_path_ = sp.parent;
        struct open_how how = {};
        how.flags = O_PATH | O_DIRECTORY | O_CLOEXEC;
        how.resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS;
        long fd = ::syscall(SYS_openat2, root_, sp.parent.c_str(), &how, sizeof(how));
        if (fd < 0) {
          if (errno == ENOENT || errno == ENOTDIR) return false;
          return Errno("open %s in rootfs", sp.parent.c_str());
        }
        parent_.reset(static_cast<int>(fd));
      }
      pfd = parent_.get();
    }
    if (::fstatat(pfd, sp.name.c_str(), st, AT_SYMLINK_NOFOLLOW) < 0) {
      if (errno == ENOENT || errno == ENOTDIR) return false;
      return Errno("stat %s in rootfs", rel.c_str());
    }
    return true;
  }
  // The open parent of the last Stat (or the root).
  int parent_fd(const std::string& rel) const {
    return SplitPath(rel).parent.empty() || !parent_ ? root_ : parent_.get();
  }

 private:
  int root_;
  std::string parent_path_;
  UniqueFd parent_;
};

std::string ReadLinkAt(int dirfd, const std::string& path) {
  char buf[PATH_MAX];
  ssize_t n = ::readlinkat(dirfd, path.c_str(), buf, sizeof(buf));
  return n < 0 ? std::string() : std::string(buf, n);
}

// The overlay upper dir's subdirectory `name` of ufd (-1: unknown, walk everything); -2 when the
// upper has no such directory: nothing below it changed.
int UpperSub(int ufd, const char* name) {
  if (ufd < 0) return -1;
  int fd = ::openat(ufd, name, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd >= 0) return fd;
  return errno == ENOENT || errno == ENOTDIR ? -2 : -1;
}

// Entries of rootfs (dirfd rfd) that the merged view (mfd) no longer has: whiteouts. ufd: the
// overlay's upper dir at the same place (-1: unknown), to skip directories it does not have.
Result<void> Whiteouts(int rfd, int mfd, int ufd, const std::string& rel, images::ImageWriter& w,
                       uint64_t* count) {
  // Both directories listed (two getdents) instead of a stat on each side per entry: an idle
  // busybox rootfs is ~300 entries, and its overlay upper is out of reach after a restore.
  ASSIGN_OR_RETURN(auto rents, SortedEntries(rfd, "rootfs " + rel));
  ASSIGN_OR_RETURN(auto ments, SortedEntries(mfd, rel.empty() ? "/" : rel));
  // Whether name (d_type t) is a directory under dirfd; a stat only where readdir does not tell.
  auto is_dir = [](int dirfd, const std::string& name, unsigned char t,
                   const std::string& what) -> Result<bool> {
    if (t != DT_UNKNOWN) return t == DT_DIR;
    struct stat st;
    if (::fstatat(dirfd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) < 0)
      return Errno("stat %s", what.c_str());
    return S_ISDIR(st.st_mode);
  };
  size_t j = 0;
  for (const auto& [name, rtype] : rents) {
    std::string path = rel.empty() ? name : rel + "/" + name;
    while (j < ments.size() && ments[j].first < name) ++j;
    if (j == ments.size() || ments[j].first != name) {
      img::TmpfsEntry e;
      e.set_path(path);
      e.set_type(img::TMPFS_WHITEOUT);
      TRY(w.Write(e));
      (*count)++;
      continue;
    }
    ASSIGN_OR_RETURN(bool rdir, is_dir(rfd, name, rtype, "rootfs " + path));
    if (!rdir) continue;
    ASSIGN_OR_RETURN(bool mdir, is_dir(mfd, name, ments[j].second, path + " in the container"));
    if (!mdir) continue;
    int u2 = UpperSub(ufd, name.c_str());
    if (u2 == -2) continue;
    UniqueFd uo(u2);
    int r2 = ::openat(rfd, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (r2 < 0) return Errno("open rootfs %s", path.c_str());
    UniqueFd ro(r2);
    int m2 =
        ::openat(mfd, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_NOATIME | O_CLOEXEC);
    if (m2 < 0) return Errno("open %s in the container", path.c_str());
    UniqueFd mo(m2);
    TRY(Whiteouts(r2, m2, u2, path, w, count));
  }
  return Ok();
}

}  // namespace

Result<void> RestoreTmpfs(const images::ImageSet& images, uint32_t mnt_id, const std::string& dir) {
  return RestoreEntries(images, TmpfsImage(mnt_id), TmpfsBlob(mnt_id), dir);
}

Result<img::RootfsIdentity> IdentifyRootfs(const std::string& path) {
  ASSIGN_OR_RETURN(UniqueFd root, fs::Open(path, O_RDONLY | O_DIRECTORY));
  struct stat rst;
  if (::fstat(root.get(), &rst) < 0) return Errno("stat %s", path.c_str());
  Fnv h;
  uint64_t entries = 0;
  ASSIGN_OR_RETURN(uint64_t root_mnt, MountIdOf(root.get(), path));
  TRY_CTX(WalkHost(root.get(), "", rst.st_dev, root_mnt,
                   [&](int dirfd, const std::string& name, const std::string& rel,
                       const struct stat& st) -> Result<bool> {
                     entries++;
                     h.Add(rel);
                     h.Add(static_cast<uint64_t>(st.st_mode));
                     h.Add((static_cast<uint64_t>(st.st_uid) << 32) | st.st_gid);
                     if (S_ISREG(st.st_mode)) {
                       h.Add(static_cast<uint64_t>(st.st_size));
                       h.Add(static_cast<uint64_t>(st.st_mtim.tv_sec));
                       h.Add(static_cast<uint64_t>(st.st_mtim.tv_nsec));
                     }
                     if (S_ISLNK(st.st_mode)) h.Add(ReadLinkAt(dirfd, name));
                     return true;
                   }),
          "identify rootfs %s", path.c_str());
  img::RootfsIdentity id;
  id.set_path(path);
  id.set_digest(StrFormat("%016llx", static_cast<unsigned long long>(h.h)));
  id.set_entries(entries);
  return id;
}

Result<void> IdentifyHeldFiles(const std::string& path, const std::vector<pid_t>& pids,
                               img::RootfsIdentity* id) {
  struct stat rst;
  if (::stat(path.c_str(), &rst) < 0) return Errno("stat %s", path.c_str());
  std::map<std::string, img::RootfsFile> held;
  // `inner` is the file's path in the tree's mount namespace; it is the rootfs's when the rootfs
  // has the same inode at that path.
  auto consider = [&](const std::string& inner, dev_t dev, ino_t ino) {
    if (inner.empty() || inner[0] != '/' || held.count(inner)) return;
    if (inner.size() > 10 && inner.compare(inner.size() - 10, 10, " (deleted)") == 0) return;
    if (dev != rst.st_dev) return;
    struct stat st;
    std::string here = path + inner;
    if (::lstat(here.c_str(), &st) < 0 || !S_ISREG(st.st_mode) || st.st_ino != ino ||
        st.st_dev != dev)
      return;
    img::RootfsFile f;
    f.set_path(inner);
    f.set_size(static_cast<uint64_t>(st.st_size));
    f.set_mtime_ns(static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec);
    f.set_mode(st.st_mode);
    held[inner] = std::move(f);
  };
  for (pid_t pid : pids) {
    std::string fddir = StrFormat("/proc/%d/fd", pid);
    if (DIR* d = ::opendir(fddir.c_str())) {
      while (struct dirent* de = ::readdir(d)) {
        if (de->d_name[0] == '.') continue;
        std::string link = fddir + "/" + de->d_name;
        struct stat st;
        if (::stat(link.c_str(), &st) < 0 || !S_ISREG(st.st_mode)) continue;
        consider(ReadLinkAt(AT_FDCWD, link), st.st_dev, st.st_ino);
      }
      ::closedir(d);
    }
    auto maps = proc::ReadMaps(pid);
    if (!maps.ok()) continue;  // a zombie, or gone
    for (const auto& m : *maps)
      if (m.inode != 0)
        consider(m.path, makedev(m.dev_major, m.dev_minor), static_cast<ino_t>(m.inode));
  }
  for (auto& [p, f] : held) *id->add_held() = std::move(f);
  id->set_has_held(true);
  return Ok();
}

Result<void> CheckRootfs(const img::RootfsIdentity& was, const img::RootfsIdentity& here,
                         const std::string& path) {
  if (here.digest() == was.digest()) return Ok();
  if (!was.has_held())
    return MakeError(ErrorKind::kBadImage, 0,
                     "the checkpoint was made from another rootfs (%s, digest %s, %lu entries); "
                     "%s has digest %s (%lu entries)",
                     was.path().c_str(), was.digest().c_str(),
                     static_cast<unsigned long>(was.entries()), path.c_str(),
                     here.digest().c_str(), static_cast<unsigned long>(here.entries()));
  for (const auto& f : was.held()) {
    std::string p = path + f.path();
    struct stat st;
    if (::lstat(p.c_str(), &st) < 0)
      return MakeError(ErrorKind::kBadImage, errno,
                       "rootfs %s: %s, which the checkpointed tree holds open or maps, is gone "
                       "(another rootfs, or changed since the checkpoint)",
                       path.c_str(), f.path().c_str());
    int64_t mtime = static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
    if (static_cast<uint64_t>(st.st_size) != f.size() || mtime != f.mtime_ns() ||
        st.st_mode != f.mode())
      return MakeError(ErrorKind::kBadImage, 0,
                       "rootfs %s: %s, which the checkpointed tree holds open or maps, changed "
                       "since the checkpoint (size %llu -> %llu, mtime %s, mode %o -> %o)",
                       path.c_str(), f.path().c_str(), static_cast<unsigned long long>(f.size()),
                       static_cast<unsigned long long>(st.st_size),
                       mtime == f.mtime_ns() ? "same" : "changed", f.mode(), st.st_mode);
  }
  LOG_INFO("rootfs %s changed since the checkpoint (%lu -> %lu entries), but none of the %d "
           "files the tree holds open or maps did",
           path.c_str(), static_cast<unsigned long>(was.entries()),
           static_cast<unsigned long>(here.entries()), was.held_size());
  return Ok();
}

// The overlay upper dir `upper`, open, iff it is the upperdir of pid's root mount and that
// overlay neither redirects directories nor copies up metadata only (then a renamed directory or
// a metacopy file would show lower contents the upper does not have); else -1.
UniqueFd OpenUpper(pid_t pid, const std::string& upper) {
  if (upper.empty()) return UniqueFd();
  auto mi = fs::ReadFile(StrFormat("/proc/%d/mountinfo", pid));
  if (!mi.ok()) return UniqueFd();
  auto table = ParseMountInfo(*mi);
  if (!table.ok()) return UniqueFd();
  const img::MountEntry* root = nullptr;
  for (const auto& m : table->mounts())
    if (m.mountpoint() == "/") root = &m;  // the last one is on top
  if (!root || root->fstype() != "overlay") return UniqueFd();
  bool ours = false;
  for (const auto& o : fs::Split(root->super_opts(), ',')) {
    if (o == "upperdir=" + upper) ours = true;
    if (o.rfind("redirect_dir=", 0) == 0 && o != "redirect_dir=off") return UniqueFd();
    if (o == "metacopy=on") return UniqueFd();
  }
  for (const char* p : {"redirect_dir", "metacopy"}) {
    auto v = fs::ReadFile(StrFormat("/sys/module/overlay/parameters/%s", p));
    if (!v.ok() || fs::Trim(*v) != "N") return UniqueFd();
  }
  if (!ours) return UniqueFd();
  return UniqueFd(::open(upper.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
}

namespace {

// DumpLayer into the named image and blob; with base, unchanged files refer to it; with record,
// a copy ahead (walk errors end the walk, what was recorded stays).
Result<bool> WalkLayer(pid_t pid, const std::string& rootfs, images::Sink& sink,
                       images::Compression compression, const std::string& upper,
                       const char* image, const PrecopiedTree* base, PrecopiedTree* record,
                       uint64_t* reused) {
  const std::string blob_name = record ? record->blob : kLayerBlob;
  std::string merged_path = StrFormat("/proc/%d/root/.", pid);
  int mfd = ::open(merged_path.c_str(), O_RDONLY | O_DIRECTORY | O_NOATIME | O_CLOEXEC);
  if (mfd < 0) return MakeError(ErrorKind::kNotFound, errno, "open %s", merged_path.c_str());
  UniqueFd merged(mfd);
  ASSIGN_OR_RETURN(UniqueFd rfs, fs::Open(rootfs, O_RDONLY | O_DIRECTORY));
  struct statx mstx;
  if (::statx(mfd, "", AT_EMPTY_PATH, STATX_BASIC_STATS | STATX_MNT_ID, &mstx) < 0)
    return Errno("statx %s", merged_path.c_str());
  struct stat rst;
  if (::fstat(rfs.get(), &rst) < 0) return Errno("stat %s", rootfs.c_str());
  // The container writes straight into the rootfs when its root is the rootfs itself: there is
  // no layer to tell apart.
  if (makedev(mstx.stx_dev_major, mstx.stx_dev_minor) == rst.st_dev && mstx.stx_ino == rst.st_ino)
    return false;
  ASSIGN_OR_RETURN(images::ImageWriter w, images::ImageWriter::Create(sink, image));
  ASSIGN_OR_RETURN(images::BlobWriter blob,
                   images::BlobWriter::Create(sink, blob_name, compression));
  int rfd = rfs.get();
  uint64_t kept = 0, whiteouts = 0;
  RootStat rootstat(rfd);
  KeepFn keep = [&](const std::string& path, const struct statx& stx) -> Result<bool> {
    struct stat st;
    bool exists;
    if (path.empty()) {
      st = rst;
      exists = true;
    } else {
      ASSIGN_OR_RETURN(exists, rootstat.Stat(path, &st));
    }
    if (stx.stx_mnt_id != mstx.stx_mnt_id) return !exists;  // a mount point: only if new
    bool changed = !exists;
    if (exists && (st.st_mode & S_IFMT) != (stx.stx_mode & S_IFMT)) {
      // A different kind of file now: remove the rootfs's one first.
      img::TmpfsEntry wo;
      wo.set_path(path);
      wo.set_type(img::TMPFS_WHITEOUT);
      TRY(w.Write(wo));
      changed = true;
    }
    if (!changed) {
      changed = (st.st_mode & 07777) != (stx.stx_mode & 07777) || st.st_uid != stx.stx_uid ||
                st.st_gid != stx.stx_gid || st.st_mtim.tv_sec != stx.stx_mtime.tv_sec ||
                st.st_mtim.tv_nsec != static_cast<long>(stx.stx_mtime.tv_nsec);
      if (S_ISREG(st.st_mode)) changed |= static_cast<uint64_t>(st.st_size) != stx.stx_size;
      if (S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode))
        changed |= st.st_rdev != makedev(stx.stx_rdev_major, stx.stx_rdev_minor);
      // The same inode (number and change time to the nanosecond, which no one can set) is
      // the rootfs's own link seen through the overlay: no need to read both targets. A copy-up
      // or a new link is another inode (an overlay that remaps inode numbers never matches).
      bool same_inode = st.st_ino == stx.stx_ino && st.st_ctim.tv_sec == stx.stx_ctime.tv_sec &&
                        st.st_ctim.tv_nsec == static_cast<long>(stx.stx_ctime.tv_nsec);
      if (S_ISLNK(st.st_mode) && !changed && !same_inode) {
        std::string a = ReadLinkAt(mfd, path);
        std::string b = ReadLinkAt(rootstat.parent_fd(path), SplitPath(path).name);
        changed |= a != b;
      }
    }
    if (changed) kept++;
    return changed;
  };
  UniqueFd ufd = OpenUpper(pid, upper);
  DescendFn descend;
  if (ufd.valid()) {
    descend = [&](const std::string& path) {
      struct stat st;
      if (::fstatat(ufd.get(), path.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0) return true;
      return !(errno == ENOENT || errno == ENOTDIR);
    };
  } else if (!upper.empty()) {
    LOG_DEBUG("writable layer of pid %d: %s is not its upper dir, walking everything", pid,
              upper.c_str());
  }
  Walker walker(w, blob, mstx.stx_mnt_id, keep, descend);
  walker.UseBase(base);
  walker.Record(record);
  if (record) {
    walker.CopyAhead(mfd, StrFormat("the writable layer of pid %d", pid));
  } else {
    TRY_CTX(walker.Root(mfd), "writable layer of pid %d", pid);
    TRY_CTX(Whiteouts(rfd, mfd, ufd.valid() ? ufd.get() : -1, "", w, &whiteouts),
            "writable layer of pid %d", pid);
  }
  TRY(w.Close());
  TRY(blob.Close());
  if (reused) *reused += walker.reused();
  LOG_DEBUG("writable layer of pid %d%s: %lu changed, %lu deleted, %lu bytes, %lu referred to "
            "the copy ahead",
            pid, record ? " (copied ahead)" : "", static_cast<unsigned long>(kept),
            static_cast<unsigned long>(whiteouts),
            static_cast<unsigned long>(blob.logical_size()),
            static_cast<unsigned long>(walker.reused()));
  if (record) record->bytes = blob.logical_size();
  return true;
}

}  // namespace

Result<bool> DumpLayer(pid_t pid, const std::string& rootfs, images::Sink& sink,
                       images::Compression compression, const std::string& upper,
                       const Precopied* pre) {
  uint64_t reused = 0;
  ASSIGN_OR_RETURN(bool layer, WalkLayer(pid, rootfs, sink, compression, upper, kLayerImage,
                                         pre && pre->layer ? &*pre->layer : nullptr, nullptr,
                                         &reused));
  if (pre) pre->reused_bytes += reused;
  return layer;
}

Result<void> PrecopyLayer(pid_t pid, const std::string& rootfs, images::Sink& sink,
                          images::Compression compression, const std::string& upper,
                          Precopied* out) {
  PrecopiedTree t = NewCopy("layer-data-pre.img");
  ASSIGN_OR_RETURN(bool layer, WalkLayer(pid, rootfs, sink, compression, upper, "layer-pre.img",
                                         nullptr, &t, nullptr));
  out->layer.reset();
  if (!layer) return Ok();
  out->bytes += t.bytes;
  out->layer = std::move(t);
  return Ok();
}

Result<void> RestoreLayer(const images::ImageSet& images, const std::string& dir) {
  return RestoreEntries(images, kLayerImage, kLayerBlob, dir);
}

}  // namespace godwit::container::mnt
