// Mount namespace: a helper in its own mount ns holds a tmpfs with files (sparse, xattrs,
// setuid, owners, times), directories, symlinks, a FIFO, a device node, hard links and a nested
// mount; the dump reads it through /proc/PID/root and the restore recreates it into a fresh
// tmpfs, compared entry by entry. Crafted images cannot write outside the restore directory.
#include <dirent.h>
#include <fcntl.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <functional>
#include <map>

#include "common/scope_exit.h"
#include "container/mnt.h"
#include "tests/container_test_util.h"

namespace godwit::container {
namespace {

using testing::NsHolder;
using testing::TempDir;

int WriteAt(const std::string& path, const std::string& data, off_t off) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT, 0644);
  if (fd < 0) return 1;
  int r = ::pwrite(fd, data.data(), data.size(), off) == static_cast<ssize_t>(data.size()) ? 0 : 1;
  ::close(fd);
  return r;
}

// Runs in the helper child after unshare(CLONE_NEWNS): raw calls only, status != 0 on failure.
int Populate(const std::string& m) {
  if (::mount("tmpfs", m.c_str(), "tmpfs", 0, "size=16m,mode=0751") < 0) return 10;
  std::string big(5000, 'x');
  for (size_t i = 0; i < big.size(); i++) big[i] = static_cast<char>('a' + i % 26);
  if (::mkdir((m + "/d").c_str(), 0750) || ::mkdir((m + "/d/e").c_str(), 0700)) return 11;
  if (WriteAt(m + "/d/file", "hello tmpfs\n", 0)) return 12;
  if (WriteAt(m + "/d/e/big", big, 0)) return 13;
  // Sparse: data at 0 and at 3 MiB, a hole between, size 4 MiB.
  if (WriteAt(m + "/sparse", "head", 0) || WriteAt(m + "/sparse", "tail", 3 << 20) ||
      ::truncate((m + "/sparse").c_str(), 4 << 20))
    return 14;
  if (::symlink("d/file", (m + "/link").c_str())) return 15;
  if (::symlink("/nonexistent/abs", (m + "/dangling").c_str())) return 16;
  if (::mkfifo((m + "/fifo").c_str(), 0620)) return 17;
  if (::mknod((m + "/null").c_str(), S_IFCHR | 0666, makedev(1, 3))) return 18;
  if (::link((m + "/d/file").c_str(), (m + "/hard").c_str())) return 19;
  if (::chown((m + "/d/file").c_str(), 1000, 1000) || ::lchown((m + "/link").c_str(), 1001, 1001))
    return 20;
  if (WriteAt(m + "/suid", "#!/bin/sh\n", 0) || ::chmod((m + "/suid").c_str(), 04755)) return 21;
  if (::setxattr((m + "/d/file").c_str(), "user.godwit", "value", 5, 0)) return 22;
  if (::setxattr((m + "/d").c_str(), "trusted.godwit", "t", 1, 0)) return 23;
  // A nested mount: recorded as a mountpoint, its contents belong to it.
  if (::mkdir((m + "/sub").c_str(), 0755) ||
      ::mount("tmpfs", (m + "/sub").c_str(), "tmpfs", 0, "size=1m"))
    return 24;
  if (WriteAt(m + "/sub/inner", "inner", 0)) return 25;
  // Fixed times everywhere, children first (creating entries touches the parent's mtime).
  struct timespec ts[2] = {{1000000000, 123456789}, {1100000000, 987654321}};
  for (const char* p :
       {"/d/e/big", "/d/e", "/d/file", "/d", "/sparse", "/fifo", "/null", "/suid", ""}) {
    if (::utimensat(AT_FDCWD, (m + p).c_str(), ts, 0)) return 26;
  }
  if (::utimensat(AT_FDCWD, (m + "/link").c_str(), ts, AT_SYMLINK_NOFOLLOW)) return 27;
  // Like a container: the tmpfs is the root, so mountinfo lists only what is beneath it.
  if (::chroot(m.c_str()) || ::chdir("/")) return 28;
  return 0;
}

// One line per entry, sorted: metadata first for all, then contents (reading touches atime).
std::string Snapshot(const std::string& root) {
  std::vector<std::string> meta, data, files;
  struct stat rst;
  if (::lstat(root.c_str(), &rst) < 0) return "cannot stat " + root;
  std::function<void(const std::string&)> walk = [&](const std::string& rel) {
    std::string path = root + rel;
    struct stat st;
    if (::lstat(path.c_str(), &st) < 0) {
      meta.push_back("lstat failed " + rel);
      return;
    }
    // A symlink's atime: readlink (the dump's too) touches it, so it is not compared.
    std::string atime = S_ISLNK(st.st_mode)
                            ? std::string("-")
                            : StrFormat("%ld.%09ld", st.st_atim.tv_sec, st.st_atim.tv_nsec);
    std::string line = StrFormat("%s mode %o uid %u gid %u atime %s mtime %ld.%09ld",
                                 rel.empty() ? "/" : rel.c_str(), st.st_mode, st.st_uid, st.st_gid,
                                 atime.c_str(), st.st_mtim.tv_sec, st.st_mtim.tv_nsec);
    bool mountpoint = st.st_dev != rst.st_dev;
    if (S_ISREG(st.st_mode))
      line += StrFormat(" size %ld nlink %lu blocks %ld", st.st_size, st.st_nlink, st.st_blocks);
    if (S_ISCHR(st.st_mode)) line += StrFormat(" rdev %u:%u", major(st.st_rdev), minor(st.st_rdev));
    if (S_ISLNK(st.st_mode)) {
      char buf[256] = {};
      ssize_t n = ::readlink(path.c_str(), buf, sizeof(buf) - 1);
      line += " -> " + std::string(buf, n > 0 ? n : 0);
    }
    if (!S_ISLNK(st.st_mode) && !mountpoint) {
      char names[1024];
      ssize_t n = ::llistxattr(path.c_str(), names, sizeof(names));
      for (ssize_t off = 0; n > 0 && off < n; off += strlen(names + off) + 1) {
        char v[256];
        ssize_t vn = ::lgetxattr(path.c_str(), names + off, v, sizeof(v));
        line += StrFormat(" xattr %s=%s", names + off, std::string(v, vn > 0 ? vn : 0).c_str());
      }
    }
    if (mountpoint) {
      meta.push_back((rel.empty() ? "/" : rel) + " is a mountpoint");
      return;
    }
    meta.push_back(line);
    if (S_ISREG(st.st_mode)) files.push_back(rel);
    if (S_ISDIR(st.st_mode)) {
      int dfd = ::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_NOATIME);
      DIR* d = dfd >= 0 ? ::fdopendir(dfd) : nullptr;
      std::vector<std::string> names;
      while (struct dirent* de = d ? ::readdir(d) : nullptr)
        if (strcmp(de->d_name, ".") && strcmp(de->d_name, "..")) names.push_back(de->d_name);
      if (d) ::closedir(d);
      std::sort(names.begin(), names.end());
      for (const auto& n : names) walk(rel + "/" + n);
    }
  };
  walk("");
  // Contents after all metadata: reading touches atime (of every name of the inode).
  for (const auto& rel : files) {
    auto c = fs::ReadFile(root + rel);
    data.push_back(rel + " content " +
                   (c.ok() ? std::to_string(std::hash<std::string>()(*c)) : "?"));
  }
  std::string out;
  for (auto& l : meta) out += l + "\n";
  for (auto& l : data) out += l + "\n";
  return out;
}

TEST(ContainerMnt, ParseMountInfoDecodesFields) {
  auto t = mnt::ParseMountInfo(
      "36 35 98:0 /mnt1 /mnt\\040two rw,noatime shared:1 master:2 - ext3 /dev/root "
      "rw,errors=continue\n"
      "40 36 0:50 / /dev rw,nosuid - tmpfs tmpfs rw,size=65536k,mode=755\n");
  ASSERT_OK(t);
  ASSERT_EQ(t->mounts_size(), 2);
  const auto& m = t->mounts(0);
  EXPECT_EQ(m.mnt_id(), 36u);
  EXPECT_EQ(m.parent_id(), 35u);
  EXPECT_EQ(m.dev_major(), 98u);
  EXPECT_EQ(m.root(), "/mnt1");
  EXPECT_EQ(m.mountpoint(), "/mnt two");
  EXPECT_EQ(m.shared_group(), 1u);
  EXPECT_EQ(m.master_group(), 2u);
  EXPECT_EQ(m.fstype(), "ext3");
  EXPECT_EQ(m.super_opts(), "rw,errors=continue");
  EXPECT_EQ(t->mounts(1).fstype(), "tmpfs");
  EXPECT_FALSE(mnt::ParseMountInfo("1 2 3\n").ok());
}

TEST(ContainerMnt, TmpfsRoundTrip) {
  TempDir src("mnt-src");
  NsHolder a;
  ASSERT_OK(a.Start(CLONE_NEWNS, [&] { return Populate(src.path()); }));
  TempDir dir("mnt-img");
  auto set = testing::DumpToDir(dir.path(), [&](images::Sink& s) {
    return mnt::Dump(a.pid(), s, images::Compression::kZstd);
  });
  ASSERT_OK(set);
  auto table = mnt::ReadMounts(*set);
  ASSERT_OK(table);
  const img::MountEntry* ours = nullptr;
  const img::MountEntry* nested = nullptr;
  for (const auto& m : table->mounts()) {
    if (m.mountpoint() == "/") ours = &m;
    if (m.mountpoint() == "/sub") nested = &m;
  }
  ASSERT_NE(ours, nullptr) << table->DebugString();
  ASSERT_NE(nested, nullptr);
  EXPECT_EQ(ours->fstype(), "tmpfs");
  EXPECT_TRUE(ours->contents_dumped());
  EXPECT_TRUE(nested->contents_dumped());
  EXPECT_NE(ours->super_opts().find("mode=751"), std::string::npos) << ours->super_opts();

  EXPECT_EQ(table->mounts_size(), 2) << table->DebugString();
  std::string proc_view = StrFormat("/proc/%d/root/.", a.pid());
  std::string before = Snapshot(proc_view);
  std::string nested_before = Snapshot(proc_view + "/sub");
  ASSERT_NE(before.find("/sparse"), std::string::npos) << before;
  a.Stop();

  TempDir dst("mnt-dst");
  ASSERT_EQ(::mount("tmpfs", dst.path().c_str(), "tmpfs", 0, "size=16m"), 0);
  ASSERT_OK(mnt::RestoreTmpfs(*set, ours->mnt_id(), dst.path()));
  std::string after = Snapshot(dst.path());
  // The nested mount's directory comes back empty (a plain dir); its contents are its own.
  before.replace(before.find("/sub is a mountpoint"), 20,
                 after.substr(after.find("/sub mode"),
                              after.find('\n', after.find("/sub mode")) - after.find("/sub mode")));
  EXPECT_EQ(before, after);
  // Sparse stays sparse: 4 MiB size, at most a few pages allocated.
  struct stat st;
  ASSERT_EQ(::stat((dst.path() + "/sparse").c_str(), &st), 0);
  EXPECT_EQ(st.st_size, 4 << 20);
  EXPECT_LE(st.st_blocks * 512, 64 * 1024);

  ASSERT_EQ(::mount("tmpfs", (dst.path() + "/sub").c_str(), "tmpfs", 0, "size=1m"), 0);
  ASSERT_OK(mnt::RestoreTmpfs(*set, nested->mnt_id(), dst.path() + "/sub"));
  std::string nested_after = Snapshot(dst.path() + "/sub");
  // The nested root's times and mode are restored too.
  EXPECT_EQ(nested_before, nested_after);
}

// Waits until path's change time lies more than age_ns in the past (the clock, not another
// actor: there is no event to wait for); false if path cannot be read.
bool WaitChangeTimeOlder(const std::string& path, int64_t age_ns) {
  for (;;) {
    struct statx stx;
    if (::statx(AT_FDCWD, path.c_str(), 0, STATX_CTIME, &stx) < 0) return false;
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    if ((now.tv_sec - stx.stx_ctime.tv_sec) * 1000000000LL + now.tv_nsec - stx.stx_ctime.tv_nsec >
        age_ns)
      return true;
    struct timespec nap = {0, 10'000'000};
    nanosleep(&nap, nullptr);
  }
}

// The data blob each regular file of a tmpfs or layer image names ("" for the image's own).
Result<std::map<std::string, std::string>> DataBlobs(const images::ImageSet& set,
                                                     const std::string& image) {
  std::map<std::string, std::string> out;
  ASSIGN_OR_RETURN(images::ImageReader rd, set.OpenImage(image));
  for (;;) {
    img::TmpfsEntry e;
    ASSIGN_OR_RETURN(bool more, rd.Next(&e));
    if (!more) break;
    if (e.type() == img::TMPFS_REG) out[e.path()] = e.data_blob();
  }
  return out;
}

// A migration's copy ahead (mnt::PrecopyTmpfs) and the final dump that refers to it: a file
// unchanged since the copy is not read again (its entry names the copy's blob); one written,
// replaced, created or changed within the clock's granularity of the copy is; a removed one is
// gone. The restore from both is the tmpfs as it was at the final dump, entry by entry.
TEST(ContainerMnt, TmpfsCopiedAheadIsReferredToWhereUnchanged) {
  TempDir src("mnt-pre-src");
  NsHolder a;
  ASSERT_OK(a.Start(CLONE_NEWNS, [&] { return Populate(src.path()); }));
  const std::string v = StrFormat("/proc/%d/root", a.pid());
  std::string keep(1 << 20, '\0');
  for (size_t i = 0; i < keep.size(); i++) keep[i] = static_cast<char>(i * 7919 >> 3);
  ASSERT_EQ(WriteAt(v + "/keep", keep, 0), 0);
  ASSERT_EQ(WriteAt(v + "/edit", std::string(65536, 'e'), 0), 0);
  ASSERT_EQ(WriteAt(v + "/gone", "gone", 0), 0);
  ASSERT_EQ(WriteAt(v + "/renamed", "old inode", 0), 0);
  // Until every file's change time is well before the copy: a change time near the copy's start
  // is not trusted.
  ASSERT_TRUE(WaitChangeTimeOlder(v + "/renamed", 100'000'000));
  ASSERT_EQ(WriteAt(v + "/fresh", "written just before the copy", 0), 0);

  TempDir dir("mnt-pre-img");
  mnt::Precopied pre;
  auto set = testing::DumpToDir(dir.path(), [&](images::Sink& s) -> Result<void> {
    TRY(mnt::PrecopyTmpfs(a.pid(), s, images::Compression::kNone, &pre));
    // The container runs on: a file rewritten in place with its old size and mtime put back
    // (only the change time tells), one replaced by a rename, one removed, one made.
    struct stat old;
    if (::stat((v + "/edit").c_str(), &old) < 0) return Errno("stat edit");
    if (WriteAt(v + "/edit", "EDITED", 1000)) return Errno("edit");
    struct timespec ts[2] = {old.st_atim, old.st_mtim};
    if (::utimensat(AT_FDCWD, (v + "/edit").c_str(), ts, 0) < 0) return Errno("utimens");
    if (WriteAt(v + "/renamed.tmp", "new inode", 0) ||
        ::rename((v + "/renamed.tmp").c_str(), (v + "/renamed").c_str()) < 0)
      return Errno("rename");
    if (::unlink((v + "/gone").c_str()) < 0) return Errno("unlink");
    if (WriteAt(v + "/new", "made after the copy", 0)) return Errno("new");
    return mnt::Dump(a.pid(), s, images::Compression::kNone, &pre);
  });
  ASSERT_OK(set);
  ASSERT_EQ(pre.tmpfs.size(), 2u);  // the root tmpfs and /sub
  EXPECT_GE(pre.bytes, keep.size());

  auto table = mnt::ReadMounts(*set);
  ASSERT_OK(table);
  uint32_t root_id = 0;
  for (const auto& m : table->mounts())
    if (m.mountpoint() == "/") root_id = m.mnt_id();
  ASSERT_NE(root_id, 0u);
  auto blobs = DataBlobs(*set, mnt::TmpfsImage(root_id));
  ASSERT_OK(blobs);
  auto& blob_of = *blobs;
  const std::string pre_blob = StrFormat("tmpfs-%u-data-pre.img", root_id);
  EXPECT_EQ(blob_of["keep"], pre_blob);
  EXPECT_EQ(blob_of["d/e/big"], pre_blob);
  for (const char* changed : {"edit", "renamed", "new", "fresh"})
    EXPECT_EQ(blob_of[changed], "") << changed;
  EXPECT_EQ(blob_of.count("gone"), 0u);
  EXPECT_GE(pre.reused_bytes.load(), keep.size());

  std::string before = Snapshot(v + "/.");
  a.Stop();
  TempDir dst("mnt-pre-dst");
  ASSERT_EQ(::mount("tmpfs", dst.path().c_str(), "tmpfs", 0, "size=16m"), 0);
  ASSERT_OK(mnt::RestoreTmpfs(*set, root_id, dst.path()));
  std::string after = Snapshot(dst.path());
  before.replace(before.find("/sub is a mountpoint"), 20,
                 after.substr(after.find("/sub mode"),
                              after.find('\n', after.find("/sub mode")) - after.find("/sub mode")));
  EXPECT_EQ(before, after);
  ASSERT_EQ(::umount2(dst.path().c_str(), MNT_DETACH), 0);

  // Without the copy's blob the restore names what is missing.
  ASSERT_EQ(::unlink((dir.path() + "/" + pre_blob).c_str()), 0);
  auto partial = images::ImageSet::OpenPartial(dir.path());
  ASSERT_OK(partial);
  TempDir dst2("mnt-pre-dst2");
  auto r = mnt::RestoreTmpfs(*partial, root_id, dst2.path());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().kind(), ErrorKind::kBadImage);
  EXPECT_NE(r.error().to_string().find(pre_blob), std::string::npos) << r.error().to_string();
}

TEST(ContainerMnt, CraftedImageCannotEscape) {
  TempDir dir("mnt-evil");
  TempDir outside("mnt-outside");
  auto set = testing::DumpToDir(dir.path(), [&](images::Sink& s) -> Result<void> {
    ASSIGN_OR_RETURN(images::ImageWriter w, images::ImageWriter::Create(s, mnt::TmpfsImage(7)));
    img::TmpfsEntry e;
    e.set_path("lnk");
    e.set_type(img::TMPFS_SYMLINK);
    e.set_link_target(outside.path());
    TRY(w.Write(e));
    e.Clear();
    e.set_path("lnk/evil");
    e.set_type(img::TMPFS_REG);
    e.set_mode(0644);
    TRY(w.Write(e));
    return w.Close();
  });
  ASSERT_OK(set);
  TempDir dst("mnt-evil-dst");
  auto r = mnt::RestoreTmpfs(*set, 7, dst.path());
  ASSERT_FALSE(r.ok());
  EXPECT_FALSE(fs::Exists(outside.path() + "/evil"));

  TempDir dir2("mnt-evil2");
  auto set2 = testing::DumpToDir(dir2.path(), [&](images::Sink& s) -> Result<void> {
    ASSIGN_OR_RETURN(images::ImageWriter w, images::ImageWriter::Create(s, mnt::TmpfsImage(8)));
    img::TmpfsEntry e;
    e.set_path("../escape");
    e.set_type(img::TMPFS_DIR);
    TRY(w.Write(e));
    return w.Close();
  });
  ASSERT_OK(set2);
  auto r2 = mnt::RestoreTmpfs(*set2, 8, dst.path());
  ASSERT_FALSE(r2.ok());
  EXPECT_EQ(r2.error().kind(), ErrorKind::kBadImage) << r2.error().to_string();
}

}  // namespace
}  // namespace godwit::container

namespace godwit::container {
namespace {

int Mk(const std::string& path, const std::string& data) { return WriteAt(path, data, 0); }

// A rootfs on the host; the helper mounts an overlay of it (upper in a tmpfs) in its own mount
// ns, chroots into it, and changes things the way a container would.
int OverlayChanges(const std::string& lower, const std::string& scratch) {
  if (::mount("tmpfs", scratch.c_str(), "tmpfs", 0, "size=8m")) return 30;
  std::string up = scratch + "/upper", work = scratch + "/work", merged = scratch + "/merged";
  if (::mkdir(up.c_str(), 0755) || ::mkdir(work.c_str(), 0755) || ::mkdir(merged.c_str(), 0755))
    return 31;
  std::string opts = "lowerdir=" + lower + ",upperdir=" + up + ",workdir=" + work;
  if (::mount("overlay", merged.c_str(), "overlay", 0, opts.c_str())) return 32;
  const std::string& m = merged;
  if (Mk(m + "/new-file", "created in the container")) return 33;
  if (::mkdir((m + "/newdir").c_str(), 0710) || Mk(m + "/newdir/inner", "x")) return 34;
  if (Mk(m + "/etc/hostname", "changed\n")) return 35;
  if (::unlink((m + "/etc/motd").c_str())) return 36;
  if (::unlink((m + "/var/tree/a").c_str()) || ::rmdir((m + "/var/tree").c_str())) return 37;
  if (::chmod((m + "/bin/tool").c_str(), 0700)) return 38;
  if (::unlink((m + "/link").c_str()) || ::symlink("etc/passwd", (m + "/link").c_str())) return 39;
  if (::rmdir((m + "/opt").c_str()) || Mk(m + "/opt", "now a file")) return 40;
  if (::chroot(m.c_str()) || ::chdir("/")) return 41;
  return 0;
}

// A fresh overlay over lower, its upper and work dirs in a tmpfs mounted at dir (TempDir
// unmounts it): the merged directory, or "" with errno set.
std::string FreshOverlay(const std::string& lower, const std::string& dir) {
  if (::mount("tmpfs", dir.c_str(), "tmpfs", 0, "size=8m") < 0) return "";
  std::string up = dir + "/upper", work = dir + "/work", merged = dir + "/merged";
  if (::mkdir(up.c_str(), 0755) || ::mkdir(work.c_str(), 0755) || ::mkdir(merged.c_str(), 0755))
    return "";
  std::string opts = "lowerdir=" + lower + ",upperdir=" + up + ",workdir=" + work;
  if (::mount("overlay", merged.c_str(), "overlay", 0, opts.c_str()) < 0) return "";
  return merged;
}

int MakeRootfs(const std::string& r) {
  for (const char* d : {"/etc", "/bin", "/var", "/var/tree", "/opt", "/proc"})
    if (::mkdir((r + d).c_str(), 0755)) return 1;
  if (Mk(r + "/etc/hostname", "orig\n") || Mk(r + "/etc/motd", "hello\n") ||
      Mk(r + "/etc/passwd", "root:x:0:0::/:/bin/sh\n") || Mk(r + "/bin/tool", "#!/bin/sh\n") ||
      Mk(r + "/var/tree/a", "a"))
    return 2;
  if (::chmod((r + "/bin/tool").c_str(), 0755)) return 3;
  if (::symlink("etc/hostname", (r + "/link").c_str())) return 4;
  return 0;
}

TEST(ContainerLayer, OverlayDiffRoundTrip) {
  TempDir rootfs("layer-rootfs");
  ASSERT_EQ(MakeRootfs(rootfs.path()), 0);
  auto id1 = mnt::IdentifyRootfs(rootfs.path());
  ASSERT_OK(id1);
  EXPECT_EQ(id1->entries(), 12u);

  TempDir scratch("layer-scratch");
  NsHolder a;
  ASSERT_OK(a.Start(CLONE_NEWNS, [&] { return OverlayChanges(rootfs.path(), scratch.path()); }));
  TempDir dir("layer-img");
  bool has_layer = false;
  auto set = testing::DumpToDir(dir.path(), [&](images::Sink& s) -> Result<void> {
    ASSIGN_OR_RETURN(has_layer, mnt::DumpLayer(a.pid(), rootfs.path(), s));
    return Ok();
  });
  ASSERT_OK(set);
  EXPECT_TRUE(has_layer);
  std::string before = Snapshot(StrFormat("/proc/%d/root/.", a.pid()));
  a.Stop();
  // The container's changes never touched the rootfs.
  auto id2 = mnt::IdentifyRootfs(rootfs.path());
  ASSERT_OK(id2);
  EXPECT_EQ(id1->digest(), id2->digest());

  // A fresh overlay over the same rootfs, then the diff applied through it.
  TempDir fresh("layer-fresh");
  std::string merged = FreshOverlay(rootfs.path(), fresh.path());
  ASSERT_FALSE(merged.empty()) << strerror(errno);
  ScopeExit um([&] { ::umount2(merged.c_str(), MNT_DETACH); });
  ASSERT_OK(mnt::RestoreLayer(*set, merged));
  std::string after = Snapshot(merged);
  EXPECT_EQ(before, after);
  EXPECT_EQ(after.find("/etc/motd"), std::string::npos);
  EXPECT_EQ(after.find("/var/tree"), std::string::npos);

  // Any change to the rootfs changes its identity.
  ASSERT_EQ(Mk(rootfs.path() + "/etc/extra", "x"), 0);
  auto id3 = mnt::IdentifyRootfs(rootfs.path());
  ASSERT_OK(id3);
  EXPECT_NE(id1->digest(), id3->digest());
}

// The writable layer copied ahead (mnt::PrecopyLayer) and the final diff that refers to it: the
// same rules as a tmpfs's copy ahead; the restore through a fresh overlay is the container's
// root as it was at the final dump.
TEST(ContainerLayer, LayerCopiedAheadIsReferredToWhereUnchanged) {
  TempDir rootfs("layer-pre-rootfs");
  ASSERT_EQ(MakeRootfs(rootfs.path()), 0);
  TempDir scratch("layer-pre-scratch");
  NsHolder a;
  ASSERT_OK(a.Start(CLONE_NEWNS, [&] { return OverlayChanges(rootfs.path(), scratch.path()); }));
  const std::string v = StrFormat("/proc/%d/root", a.pid());
  std::string big(1 << 20, '\0');
  for (size_t i = 0; i < big.size(); i++) big[i] = static_cast<char>(i * 131 >> 2);
  ASSERT_EQ(Mk(v + "/big", big), 0);
  ASSERT_EQ(Mk(v + "/edit", std::string(4096, 'e')), 0);
  ASSERT_EQ(Mk(v + "/gone", "gone"), 0);
  ASSERT_TRUE(WaitChangeTimeOlder(v + "/gone", 100'000'000));
  TempDir dir("layer-pre-img");
  mnt::Precopied pre;
  auto set = testing::DumpToDir(dir.path(), [&](images::Sink& s) -> Result<void> {
    TRY(mnt::PrecopyLayer(a.pid(), rootfs.path(), s, images::Compression::kNone, "", &pre));
    struct stat old;
    if (::stat((v + "/edit").c_str(), &old) < 0) return Errno("stat edit");
    if (WriteAt(v + "/edit", "EDITED", 100)) return Errno("edit");
    struct timespec ts[2] = {old.st_atim, old.st_mtim};
    if (::utimensat(AT_FDCWD, (v + "/edit").c_str(), ts, 0) < 0) return Errno("utimens");
    if (::unlink((v + "/gone").c_str()) < 0) return Errno("unlink");
    if (Mk(v + "/new", "made after the copy")) return Errno("new");
    ASSIGN_OR_RETURN(bool layer, mnt::DumpLayer(a.pid(), rootfs.path(), s,
                                                images::Compression::kNone, "", &pre));
    if (!layer) return MakeError(ErrorKind::kGeneric, 0, "no layer");
    return Ok();
  });
  ASSERT_OK(set);
  ASSERT_TRUE(pre.layer.has_value());
  EXPECT_GE(pre.bytes, big.size());
  EXPECT_GE(pre.reused_bytes.load(), big.size());
  auto blobs = DataBlobs(*set, mnt::kLayerImage);
  ASSERT_OK(blobs);
  auto& blob_of = *blobs;
  EXPECT_EQ(blob_of["big"], "layer-data-pre.img");
  EXPECT_EQ(blob_of["edit"], "");
  EXPECT_EQ(blob_of["new"], "");
  EXPECT_EQ(blob_of.count("gone"), 0u);

  std::string before = Snapshot(v + "/.");
  a.Stop();
  TempDir fresh("layer-pre-fresh");
  std::string merged = FreshOverlay(rootfs.path(), fresh.path());
  ASSERT_FALSE(merged.empty()) << strerror(errno);
  ScopeExit um([&] { ::umount2(merged.c_str(), MNT_DETACH); });
  ASSERT_OK(mnt::RestoreLayer(*set, merged));
  // A directory's atime is left out: reading a restored directory through the overlay (this
  // snapshot's walk) updates it where it is older than the mtime (relatime).
  auto no_dir_atime = [](std::string snap) {
    std::string out;
    for (const auto& l : fs::Split(snap, '\n')) {
      size_t a = l.find(" atime "), m = l.find(" mtime ");
      bool dir = l.find(" mode 4") != std::string::npos;
      out += (dir && a != std::string::npos && m != std::string::npos ? l.substr(0, a) + l.substr(m)
                                                                      : l) +
             "\n";
    }
    return out;
  };
  EXPECT_EQ(no_dir_atime(before), no_dir_atime(Snapshot(merged)));
}

TEST(ContainerLayer, RootIsTheRootfsMeansNoLayer) {
  TempDir rootfs("layer-plain");
  ASSERT_EQ(MakeRootfs(rootfs.path()), 0);
  NsHolder a;
  ASSERT_OK(a.Start(CLONE_NEWNS, [&] { return ::chroot(rootfs.path().c_str()) || ::chdir("/"); }));
  TempDir dir("layer-plain-img");
  bool has_layer = true;
  auto set = testing::DumpToDir(dir.path(), [&](images::Sink& s) -> Result<void> {
    ASSIGN_OR_RETURN(has_layer, mnt::DumpLayer(a.pid(), rootfs.path(), s));
    return Ok();
  });
  ASSERT_OK(set);
  EXPECT_FALSE(has_layer);
  EXPECT_FALSE(set->Has(mnt::kLayerImage));
}

}  // namespace
}  // namespace godwit::container
