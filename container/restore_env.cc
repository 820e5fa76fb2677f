#include "container/restore_env.h"

#include <fcntl.h>
#include <linux/mount.h>
#include <limits.h>
#include <linux/securebits.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <map>

#include "common/fs.h"
#include "common/idmap.h"
#include "common/log.h"
#include "container/ipc.h"
#include "container/mnt.h"
#include "container/net.h"
#include "container/ns.h"
#include "container/uts.h"

namespace godwit::container {
namespace {

unsigned long ParseFlags(const std::string& opts) {
  static const std::map<std::string, unsigned long> kFlags = {
      {"ro", MS_RDONLY},         {"nosuid", MS_NOSUID},          {"nodev", MS_NODEV},
      {"noexec", MS_NOEXEC},     {"noatime", MS_NOATIME},        {"nodiratime", MS_NODIRATIME},
      {"relatime", MS_RELATIME}, {"strictatime", MS_STRICTATIME}};
  unsigned long f = 0;
  for (const auto& o : fs::Split(opts, ',')) {
    auto it = kFlags.find(o);
    if (it != kFlags.end()) f |= it->second;
  }
  // mountinfo shows no atime option for strictatime; mount(2) would default to relatime.
  if (!(f & (MS_RELATIME | MS_NOATIME))) f |= MS_STRICTATIME;
  return f;
}

// Superblock options to pass back to mount(2): everything but the rw/ro state.
std::string FsData(const std::string& super_opts) {
  std::string out;
  for (const auto& o : fs::Split(super_opts, ',')) {
    if (o.empty() || o == "rw" || o == "ro") continue;
    if (!out.empty()) out += ',';
    out += o;
  }
  return out;
}

bool PrefixPath(const std::string& prefix, const std::string& path) {
  if (prefix == "/") return true;
  return path == prefix || (path.rfind(prefix, 0) == 0 && path[prefix.size()] == '/');
}

std::string JoinPath(const std::string& a, const std::string& b) {
  if (b.empty() || b == "/") return a.empty() ? "/" : a;
  std::string out = a;
  while (!out.empty() && out.back() == '/') out.pop_back();
  return out + (b[0] == '/' ? b : "/" + b);
}

// The host id of the container's id 0 (or of its first mapped id).
uint32_t ContainerRootId(const google::protobuf::RepeatedPtrField<img::IdMapEntry>& map) {
  std::vector<idmap::Range> r;
  for (const auto& e : map) r.push_back({e.inside(), e.outside(), e.count()});
  return idmap::ToOutside(r, 0).value_or(r.empty() ? 0 : r[0].outside);
}

// Looks up path (relative to the tmpfs root) in the dumped contents of tmpfs mnt_id.
Result<bool> FindTmpfsEntry(const images::ImageSet& images, uint32_t mnt_id, const std::string& rel,
                            img::TmpfsEntry* out) {
  if (!images.Has(mnt::TmpfsImage(mnt_id))) return false;
  ASSIGN_OR_RETURN(images::ImageReader r, images.OpenImage(mnt::TmpfsImage(mnt_id)));
  for (;;) {
    ASSIGN_OR_RETURN(bool more, r.Next(out));
    if (!more) return false;
    if (out->path() == rel) return true;
  }
}

}  // namespace

runtime::Resources LimitsToResources(const img::CgroupLimits& l) {
  runtime::Resources r;
  if (l.has_memory_limit()) r.memory_limit = l.memory_limit();
  if (l.has_cpu_shares()) r.cpu_shares = l.cpu_shares();
  if (l.has_cpu_quota()) r.cpu_quota = l.cpu_quota();
  if (l.has_cpu_period()) r.cpu_period = l.cpu_period();
  if (l.has_pids_limit()) r.pids_limit = l.pids_limit();
  return r;
}

Result<RootPlan> PlanRoot(const img::MountTable& table, const runtime::Spec& spec, bool has_layer,
                          const std::string& storage_dir, const images::ImageSet* images) {
  RootPlan plan;
  plan.rootfs = spec.root_path;
  const img::MountEntry* root = nullptr;
  for (const auto& m : table.mounts())
    if (m.mountpoint() == "/" && !root) root = &m;
  if (!root) return MakeError(ErrorKind::kBadImage, 0, "%s: no root mount", mnt::kImage);
  plan.readonly = ParseFlags(root->mount_opts()) & MS_RDONLY;
  std::string newroot;
  if (has_layer) {
    if (storage_dir.empty())
      return MakeError(ErrorKind::kUsage, 0, "a writable layer needs a storage directory");
    plan.disk_quota = spec.disk_quota;
    plan.storage_dir = storage_dir;
    plan.quota_opts = spec.disk_quota > 0
                          ? StrFormat("size=%lld,mode=755", static_cast<long long>(spec.disk_quota))
                          : "mode=755";
    plan.upper = storage_dir + "/upper";
    plan.work = storage_dir + "/work";
    plan.merged = storage_dir + "/merged";
    plan.overlay_opts =
        "lowerdir=" + spec.root_path + ",upperdir=" + plan.upper + ",workdir=" + plan.work;
    newroot = plan.merged;
  } else {
    newroot = spec.root_path;
  }

  // mountinfo lists mounts by id; a mount made ahead and attached later (the user namespace's
  // fsmount) has a smaller id than its parent. Parents first, the listed order otherwise.
  std::vector<const img::MountEntry*> order;
  {
    std::map<uint32_t, bool> placed;
    for (const auto& m : table.mounts()) placed[m.mnt_id()] = false;
    placed[root->mnt_id()] = true;
    for (bool progress = true; progress;) {
      progress = false;
      for (const auto& m : table.mounts()) {
        if (placed[m.mnt_id()]) continue;
        auto parent = placed.find(m.parent_id());
        if (parent != placed.end() && !parent->second && m.parent_id() != m.mnt_id()) continue;
        placed[m.mnt_id()] = true;
        order.push_back(&m);
        progress = true;
      }
    }
    for (const auto& m : table.mounts())
      if (!placed[m.mnt_id()]) order.push_back(&m);  // a parent loop: keep them, listed order
  }
  // Mounts beneath the rootfs directory on the host (host /usr bound into it before `run`): the
  // recursive bind of the rootfs brought them into the container, and brings them again here.
  std::vector<img::MountEntry> under_rootfs;
  std::string base = spec.root_path;
  if (!has_layer) {
    char real[PATH_MAX];
    if (::realpath(spec.root_path.c_str(), real)) base = real;
    auto text = fs::ReadFile("/proc/self/mountinfo");
    auto host = text.ok() ? mnt::ParseMountInfo(*text) : Result<img::MountTable>(text.error());
    if (host.ok())
      for (const auto& h : host->mounts())
        if (h.mountpoint().size() > base.size() && PrefixPath(base, h.mountpoint()))
          under_rootfs.push_back(h);
  }
  auto brought_by_rootfs_bind = [&](const img::MountEntry& m) {
    for (const auto& h : under_rootfs)
      if (h.mountpoint() == JoinPath(base, m.mountpoint()) &&
          h.dev_major() == m.dev_major() && h.dev_minor() == m.dev_minor() && h.root() == m.root())
        return true;
    return false;
  };
  std::vector<const img::MountEntry*> done = {root};
  for (const img::MountEntry* mp : order) {
    const img::MountEntry& m = *mp;
    if (&m == root) continue;
    if (m.mountpoint() == "/")
      return MakeError(ErrorKind::kUnsupported, 0, "a second mount on / (mount %u)", m.mnt_id());
    if (brought_by_rootfs_bind(m)) {
      done.push_back(&m);
      continue;
    }
    MountStep s;
    s.target = JoinPath(newroot, m.mountpoint());
    s.fstype = m.fstype();
    s.flags = ParseFlags(m.mount_opts());
    if (m.shared_group())
      s.propagation = MS_SHARED;
    else if (m.master_group())
      s.propagation = MS_SLAVE;
    else if (m.unbindable())
      s.propagation = MS_UNBINDABLE;
    // A mount of part of a filesystem already mounted in the container is a bind from there.
    const img::MountEntry* src = nullptr;
    for (const img::MountEntry* d : done) {
      if (d->dev_major() == m.dev_major() && d->dev_minor() == m.dev_minor() &&
          PrefixPath(d->root(), m.root()) && (!src || d->root().size() < src->root().size()))
        src = d;
    }
    if (src && (src != root || has_layer || m.root() != "/")) {
      std::string rel = src->root() == "/" ? m.root() : m.root().substr(src->root().size());
      std::string inside = JoinPath(src->mountpoint(), rel);
      s.bind = true;
      s.bind_from_root = true;
      s.source = JoinPath(newroot, inside);
      // The source may be a file of a tmpfs that is filled only later, from outside: make the
      // same kind of inode now so that the bind has something to hold.
      if (images && src->fstype() == "tmpfs" && src->contents_dumped() && rel != "/") {
        img::TmpfsEntry e;
        ASSIGN_OR_RETURN(bool found, FindTmpfsEntry(*images, src->mnt_id(), rel.substr(1), &e));
        if (found && e.type() != img::TMPFS_DIR) {
          s.file = true;
          s.prep_mode = e.mode() & 07777;
          if (e.type() == img::TMPFS_CHR) s.prep_mode |= S_IFCHR;
          if (e.type() == img::TMPFS_BLK) s.prep_mode |= S_IFBLK;
          s.prep_rdev = e.rdev();
        }
      }
    } else if (m.fstype() == "proc" || m.fstype() == "sysfs" || m.fstype() == "tmpfs" ||
               m.fstype() == "devpts" || m.fstype() == "mqueue" || m.fstype() == "cgroup2") {
      s.source = m.source();
      s.data = FsData(m.super_opts());
      // A read-only tmpfs is filled from outside first; FillEnvironment makes it read-only.
      if (m.fstype() == "tmpfs" && m.contents_dumped()) s.flags &= ~MS_RDONLY;
    } else if (m.fstype() == "devtmpfs" && m.root() != "/") {
      // A host device node bound in (the runtime's /dev in a user namespace, where mknod is
      // not allowed, and masked paths bound to /dev/null).
      s.bind = true;
      s.source = "/dev" + m.root();
      struct stat st;
      if (::stat(s.source.c_str(), &st) < 0 || !(S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode)))
        return MakeError(ErrorKind::kNotFound, errno, "mount %u: host device %s for %s", m.mnt_id(),
                         s.source.c_str(), m.mountpoint().c_str());
      s.file = true;
    } else {
      const runtime::Mount* sm = nullptr;
      for (const auto& x : spec.mounts)
        if (x.destination == m.mountpoint() && x.bind) sm = &x;
      if (!sm)
        return MakeError(ErrorKind::kUnsupported, 0,
                         "mount %u (%s on %s) cannot be rebuilt: not in config.json", m.mnt_id(),
                         m.fstype().c_str(), m.mountpoint().c_str());
      s.bind = true;
      s.source = sm->source;
      struct stat st;
      if (::stat(sm->source.c_str(), &st) < 0)
        return MakeError(ErrorKind::kNotFound, errno, "bind source %s", sm->source.c_str());
      s.file = !S_ISDIR(st.st_mode);
    }
    plan.mounts.push_back(std::move(s));
    done.push_back(&m);
  }
  return plan;
}

Result<void> PlanUsernsMounts(RootPlan* plan, const img::UserNamespace& u) {
  std::vector<idmap::Range> uids, gids;
  for (const auto& e : u.uid_map()) uids.push_back({e.inside(), e.outside(), e.count()});
  for (const auto& e : u.gid_map()) gids.push_back({e.inside(), e.outside(), e.count()});
  plan->userns_fsuid = ContainerRootId(u.uid_map());
  plan->userns_fsgid = ContainerRootId(u.gid_map());
  for (MountStep& s : plan->mounts) {
    if (s.bind || (s.fstype != "tmpfs" && s.fstype != "devpts")) continue;
    s.userns_mount = true;
    s.params.clear();
    for (const auto& o : fs::Split(s.data, ',')) {
      if (o.empty()) continue;
      size_t eq = o.find('=');
      std::string key = o.substr(0, eq), value = eq == std::string::npos ? "" : o.substr(eq + 1);
      if (key == "uid" || key == "gid") {
        auto in = idmap::ToInside(key == "uid" ? uids : gids,
                                  static_cast<uint32_t>(strtoul(value.c_str(), nullptr, 10)));
        if (!in)
          return MakeError(ErrorKind::kBadImage, 0,
                           "mount %s: %s=%s has no mapping in the user namespace", s.target.c_str(),
                           key.c_str(), value.c_str());
        value = std::to_string(*in);
      }
      s.params.emplace_back(key, value);
    }
    if (s.source.size()) s.params.emplace_back("source", s.source);
    s.attr = 0;
    if (s.flags & MS_RDONLY) s.attr |= MOUNT_ATTR_RDONLY;
    if (s.flags & MS_NOSUID) s.attr |= MOUNT_ATTR_NOSUID;
    if (s.flags & MS_NODEV) s.attr |= MOUNT_ATTR_NODEV;
    if (s.flags & MS_NOEXEC) s.attr |= MOUNT_ATTR_NOEXEC;
    if (s.flags & MS_NODIRATIME) s.attr |= MOUNT_ATTR_NODIRATIME;
    if (s.flags & MS_NOATIME)
      s.attr |= MOUNT_ATTR_NOATIME;
    else if (s.flags & MS_STRICTATIME)
      s.attr |= MOUNT_ATTR_STRICTATIME;
  }
  return Ok();
}

namespace {

constexpr int kMaxUsernsMounts = 64;

// The helper of BuildRoot (a clone sharing the root task's fd table): joins the user namespace,
// makes each userns_mount step's detached mount and writes its fd number to out_fd, in order.
// Returns an errno (its exit status), *step naming the call.
int MakeUsernsMounts(const RootPlan& plan, int out_fd) {
  if (::setns(plan.userns_fd, CLONE_NEWUSER) < 0) return errno;
  if (::syscall(SYS_setresgid, 0, 0, 0) < 0 || ::syscall(SYS_setresuid, 0, 0, 0) < 0) return errno;
  for (const MountStep& s : plan.mounts) {
    if (!s.userns_mount) continue;
    int fsfd = static_cast<int>(::syscall(SYS_fsopen, s.fstype.c_str(), FSOPEN_CLOEXEC));
    if (fsfd < 0) return errno;
    for (const auto& [k, v] : s.params) {
      long r = v.empty()
                   ? ::syscall(SYS_fsconfig, fsfd, FSCONFIG_SET_FLAG, k.c_str(), nullptr, 0)
                   : ::syscall(SYS_fsconfig, fsfd, FSCONFIG_SET_STRING, k.c_str(), v.c_str(), 0);
      if (r < 0) return errno;
    }
    if (::syscall(SYS_fsconfig, fsfd, FSCONFIG_CMD_CREATE, nullptr, nullptr, 0) < 0) return errno;
    int mfd = static_cast<int>(::syscall(SYS_fsmount, fsfd, FSMOUNT_CLOEXEC, s.attr));
    if (mfd < 0) return errno;
    ::close(fsfd);
    if (::write(out_fd, &mfd, sizeof(mfd)) != sizeof(mfd)) return EPIPE;
  }
  return 0;
}

// A step of BuildRoot or MountOne: errno with *what naming it, when cond.
#define STEP(cond, name) \
  do {                   \
    if (cond) {          \
      *what = name;      \
      return errno;      \
    }                    \
  } while (0)

// One step of a plan, in its order (raw syscalls only): the mount point (and its parents) made,
// then the mount. mfd >= 0: a user namespace's detached mount (MakeUsernsMounts) moved there.
int MountOne(const MountStep& s, int mfd, const char** what) {
  const char* t = s.target.c_str();
  // The mount point's parents may be missing from a rootfs the original runtime made them in
  // (an engine's fresh rootfs: Podman's /run/.containerenv on an image without /run).
  {
    char dir[PATH_MAX];
    snprintf(dir, sizeof(dir), "%s", t);
    for (char* p = dir + 1; (p = strchr(p, '/')) != nullptr; ++p) {
      *p = 0;
      if (::mkdir(dir, 0755) < 0 && errno != EEXIST) break;
      *p = '/';
    }
  }
  if (s.bind && s.file) {
    if (s.bind_from_root && (S_ISCHR(s.prep_mode) || S_ISBLK(s.prep_mode))) {
      if (::mknod(s.source.c_str(), s.prep_mode, s.prep_rdev) < 0 && errno != EEXIST)
        STEP(true, "mknod a bind source");
    } else if (s.bind_from_root) {
      int fd = ::open(s.source.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
      if (fd >= 0) ::close(fd);
    }
    int fd = ::open(t, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    if (fd >= 0) ::close(fd);
  } else {
    if (::mkdir(t, 0755) < 0 && errno != EEXIST) STEP(true, "mkdir a mount point");
  }
  if (s.bind) {
    STEP(::mount(s.source.c_str(), t, nullptr, MS_BIND | MS_REC, nullptr) < 0, "bind mount");
    // The atime flags too: in a mount namespace owned by a user namespace they are locked.
    unsigned long keep = s.flags & (MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_NOATIME |
                                    MS_NODIRATIME | MS_RELATIME | MS_STRICTATIME);
    if (keep)
      STEP(::mount(nullptr, t, nullptr, MS_REMOUNT | MS_BIND | keep, nullptr) < 0,
           "remount bind with flags");
  } else if (mfd >= 0) {
    STEP(::syscall(SYS_move_mount, mfd, "", AT_FDCWD, t, MOVE_MOUNT_F_EMPTY_PATH) < 0,
         "move a user namespace mount into place");
    ::close(mfd);
  } else {
    STEP(::mount(s.source.c_str(), t, s.fstype.c_str(), s.flags,
                 s.data.empty() ? nullptr : s.data.c_str()) < 0,
         "mount");
  }
  if (s.propagation) STEP(::mount(nullptr, t, nullptr, s.propagation, nullptr) < 0, "propagation");
  return 0;
}

}  // namespace

int BuildRoot(const RootPlan& plan, const char** what) {
  for (const auto& [fd, type] : plan.join)
    STEP(::setns(fd, type) < 0, "join a namespace of the user namespace holder");
  STEP(::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) < 0, "make / rprivate");
  // Superblocks the user namespace must own, made by a helper inside it (pid 2 there for a
  // moment; gone before the tree is forked). The root itself stays outside (see restore_env.h).
  int userns_mounts[kMaxUsernsMounts];
  int n_userns = 0, next_userns = 0;
  if (plan.userns_fd >= 0) {
    int want = 0;
    for (const MountStep& s : plan.mounts) want += s.userns_mount;
    if (want > kMaxUsernsMounts) {
      errno = E2BIG;
      STEP(true, "too many mounts to make in the user namespace");
    }
    int p[2];
    STEP(::pipe2(p, O_CLOEXEC) < 0, "pipe");
    long pid = ::syscall(SYS_clone, CLONE_FILES | SIGCHLD, 0, 0, 0, 0);
    STEP(pid < 0, "clone the user namespace mount helper");
    if (pid == 0) ::_exit(MakeUsernsMounts(plan, p[1]));
    // The fd table is shared: the write end stays open until the helper is done (the pipe holds
    // every fd number it writes).
    int st = 0;
    while (::wait4(static_cast<pid_t>(pid), &st, 0, nullptr) < 0 && errno == EINTR) {
    }
    ::close(p[1]);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
      ::close(p[0]);
      errno = WIFEXITED(st) ? WEXITSTATUS(st) : EINTR;
      STEP(true, "fsopen/fsconfig/fsmount in the user namespace");
    }
    while (n_userns < want && ::read(p[0], &userns_mounts[n_userns], sizeof(int)) == sizeof(int))
      ++n_userns;
    ::close(p[0]);
    if (n_userns != want) {
      errno = EPIPE;
      STEP(true, "read the user namespace mounts");
    }
  }
  // Mount points are made as the container's root (capabilities kept across the fsuid change),
  // then the fs ids go back: the restored processes read the images as their owner.
  const int saved_bits = static_cast<int>(::prctl(PR_GET_SECUREBITS, 0, 0, 0, 0));
  const long saved_fsuid = ::syscall(SYS_setfsuid, -1), saved_fsgid = ::syscall(SYS_setfsgid, -1);
  if (plan.userns_fd >= 0) {
    STEP(::prctl(PR_SET_SECUREBITS, saved_bits | SECBIT_NO_SETUID_FIXUP, 0, 0, 0) < 0,
         "PR_SET_SECUREBITS");
    ::syscall(SYS_setfsgid, plan.userns_fsgid);
    ::syscall(SYS_setfsuid, plan.userns_fsuid);
  }
  const char* newroot;
  if (!plan.merged.empty()) {
    if (!plan.storage_mounted) {
      STEP(::mount("godwit-storage", plan.storage_dir.c_str(), "tmpfs", MS_NOSUID | MS_NODEV,
                   plan.quota_opts.c_str()) < 0,
           "mount storage tmpfs");
      STEP(::mkdir(plan.upper.c_str(), 0755) < 0 || ::mkdir(plan.work.c_str(), 0755) < 0 ||
               ::mkdir(plan.merged.c_str(), 0755) < 0,
           "mkdir upper/work/merged");
    }
    STEP(::mount("overlay", plan.merged.c_str(), "overlay", 0, plan.overlay_opts.c_str()) < 0,
         "mount overlay");
    newroot = plan.merged.c_str();
  } else {
    STEP(::mount(plan.rootfs.c_str(), plan.rootfs.c_str(), nullptr, MS_BIND | MS_REC, nullptr) < 0,
         "bind rootfs");
    newroot = plan.rootfs.c_str();
  }
  for (const MountStep& s : plan.mounts) {
    int mfd = s.userns_mount && plan.userns_fd >= 0 ? userns_mounts[next_userns++] : -1;
    if (int err = MountOne(s, mfd, what)) return err;
  }
  if (plan.userns_fd >= 0) {
    ::syscall(SYS_setfsgid, saved_fsgid);
    ::syscall(SYS_setfsuid, saved_fsuid);
    STEP(::prctl(PR_SET_SECUREBITS, saved_bits, 0, 0, 0) < 0, "PR_SET_SECUREBITS back");
  }
  if (plan.readonly)
    STEP(::mount(nullptr, newroot, nullptr, MS_REMOUNT | MS_BIND | MS_RDONLY, nullptr) < 0,
         "remount root read-only");
  // pivot_root(".", ".") stacks the old root on the new one; detaching it leaves only the new.
  STEP(::chdir(newroot) < 0, "chdir new root");
  STEP(::syscall(SYS_pivot_root, ".", ".") < 0, "pivot_root");
  STEP(::umount2(".", MNT_DETACH) < 0, "detach old root");
  STEP(::chdir("/") < 0, "chdir /");
#undef STEP
  *what = nullptr;
  return 0;
}

Result<void> CheckUserNamespace(const img::UserNamespace& u) {
  for (const auto* map : {&u.uid_map(), &u.gid_map()}) {
    const char* what = map == &u.uid_map() ? "uid map" : "gid map";
    if (map->empty() || map->size() > 340)
      return MakeError(ErrorKind::kBadImage, 0, "user namespace %s: %d ranges", what, map->size());
    std::vector<idmap::Range> ranges;
    for (const auto& e : *map) ranges.push_back({e.inside(), e.outside(), e.count()});
    TRY(idmap::Parse(idmap::Format(ranges), what));
  }
  return Ok();
}

void NamespaceHolder::Kill() {
  if (pid_ <= 0 || killed_) return;
  hold_.reset();
  ::kill(pid_, SIGKILL);
  killed_ = true;
}

void NamespaceHolder::Stop() {
  if (pid_ <= 0) return;
  Kill();
  while (::waitpid(pid_, nullptr, 0) < 0 && errno == EINTR) {
  }
  pid_ = -1;
}

std::vector<std::pair<int, int>> NamespaceHolder::Joins() const {
  return {{mnt_.get(), CLONE_NEWNS},
          {uts_.get(), CLONE_NEWUTS},
          {ipc_.get(), CLONE_NEWIPC},
          {net_.get(), CLONE_NEWNET},
          {cgroup_.get(), CLONE_NEWCGROUP}};
}

Result<void> NamespaceHolder::OpenNamespaces() {
  ASSIGN_OR_RETURN(mnt_, OpenNamespace(pid_, "mnt"));
  ASSIGN_OR_RETURN(uts_, OpenNamespace(pid_, "uts"));
  ASSIGN_OR_RETURN(ipc_, OpenNamespace(pid_, "ipc"));
  ASSIGN_OR_RETURN(net_, OpenNamespace(pid_, "net"));
  ASSIGN_OR_RETURN(cgroup_, OpenNamespace(pid_, "cgroup"));
  return Ok();
}

Result<std::unique_ptr<UsernsHolder>> UsernsHolder::Start(
    const img::UserNamespace& u, const std::function<Result<void>(pid_t)>& before_namespaces) {
  TRY(CheckUserNamespace(u));
  std::vector<idmap::Range> uids, gids;
  for (const auto& e : u.uid_map()) uids.push_back({e.inside(), e.outside(), e.count()});
  for (const auto& e : u.gid_map()) gids.push_back({e.inside(), e.outside(), e.count()});
  int up[2], down[2];
  if (::pipe2(up, O_CLOEXEC) < 0) return Errno("pipe");
  UniqueFd up_rd(up[0]), up_wr(up[1]);
  if (::pipe2(down, O_CLOEXEC) < 0) return Errno("pipe");
  UniqueFd down_rd(down[0]), down_wr(down[1]);
  std::unique_ptr<UsernsHolder> h(new UsernsHolder());
  pid_t pid = ::fork();
  if (pid < 0) return Errno("fork user namespace holder");
  if (pid == 0) {
    // Raw calls only. Status bytes: 'u' user ns made, 'n' the rest; an errno byte on failure.
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    up_rd.reset();
    down_wr.reset();
    char c = 'u';
    if (::unshare(CLONE_NEWUSER) < 0) c = static_cast<char>(errno);
    if (::write(up_wr.get(), &c, 1) != 1 || c != 'u') ::_exit(1);
    if (::read(down_rd.get(), &c, 1) != 1) ::_exit(1);  // maps written
    c = 'n';
    if (::unshare(CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWNET | CLONE_NEWCGROUP) < 0)
      c = static_cast<char>(errno);
    if (::write(up_wr.get(), &c, 1) != 1 || c != 'n') ::_exit(1);
    while (::read(down_rd.get(), &c, 1) < 0 && errno == EINTR) {
    }
    ::_exit(0);
  }
  h->pid_ = pid;
  up_wr.reset();
  down_rd.reset();
  auto status = [&](char want, const char* step) -> Result<void> {
    char c = 0;
    ssize_t n;
    do {
      n = ::read(up_rd.get(), &c, 1);
    } while (n < 0 && errno == EINTR);
    if (n != 1) return Err("user namespace holder %d died (%s)", pid, step);
    if (c != want) return MakeError(ErrorKind::kGeneric, c, "user namespace holder: %s", step);
    return Ok();
  };
  TRY(status('u', "unshare(CLONE_NEWUSER)"));
  // setgroups first: it can only be set to "deny" before the gid map is written.
  std::string base = StrFormat("/proc/%d/", pid);
  if (u.setgroups_deny()) TRY(fs::WriteFile(base + "setgroups", "deny"));
  for (auto [file, map] : {std::pair{"uid_map", &uids}, std::pair{"gid_map", &gids}}) {
    std::string text = idmap::Format(*map);
    ASSIGN_OR_RETURN(UniqueFd fd, fs::Open(base + file, O_WRONLY));
    if (::write(fd.get(), text.data(), text.size()) != static_cast<ssize_t>(text.size()))
      return MakeError(ErrorKind::kBadImage, errno, "user namespace %s from the image: write %s%s",
                       file, base.c_str(), file);
  }
  if (before_namespaces) TRY(before_namespaces(pid));
  char go = 'g';
  if (::write(down_wr.get(), &go, 1) != 1) return Errno("wake user namespace holder %d", pid);
  TRY(status('n', "unshare(CLONE_NEWNS|NEWUTS|NEWIPC|NEWNET|NEWCGROUP)"));
  h->hold_ = std::move(down_wr);
  ASSIGN_OR_RETURN(h->user_, OpenNamespace(pid, "user"));
  TRY(h->OpenNamespaces());
  return h;
}

Result<void> FillEnvironment(const images::ImageSet& images, const img::ContainerCheckpoint& rec,
                             const img::MountTable& table, const img::NetNs* netns, pid_t root_pid,
                             FillPart part, const std::function<Result<void>()>& before_links) {
  // Mounts under a proc mount are the root's (AheadPlan::root_steps).
  std::vector<std::string> procs;
  for (const auto& m : table.mounts())
    if (m.fstype() == "proc") procs.push_back(m.mountpoint());
  auto wanted = [&](const img::MountEntry& m) {
    if (part == FillPart::kAll || part == FillPart::kMounts) return true;
    if (part == FillPart::kNamespaces) return false;
    bool under = false;
    for (const auto& p : procs) under |= PrefixPath(p, m.mountpoint());
    return under == (part == FillPart::kUnderProc);
  };
  const bool namespaces = part != FillPart::kUnderProc && part != FillPart::kMounts;
  if (!namespaces) netns = nullptr;
  if (namespaces && images.Has(uts::kImage)) {
    ASSIGN_OR_RETURN(UniqueFd fd, OpenNamespace(root_pid, "uts"));
    TRY(uts::Restore(images, fd.get()));
  }
  if (namespaces && images.Has(ipc::kImage)) {
    ASSIGN_OR_RETURN(UniqueFd fd, OpenNamespace(root_pid, "ipc"));
    if (!rec.has_userns()) {
      TRY(ipc::Restore(images, fd.get()));
    } else {
      // As the container's root (effective and fs ids only, capabilities kept): the objects'
      // creator is then the container's root, as when it made them, and POSIX queues are files
      // of an mqueue the user namespace owns (no inode of an unmapped id).
      uint32_t uid = ContainerRootId(rec.userns().uid_map()),
               gid = ContainerRootId(rec.userns().gid_map());
      TRY(RunInNamespace(-1, 0, [&]() -> Result<void> {
        if (::prctl(PR_SET_SECUREBITS, SECBIT_NO_SETUID_FIXUP | SECBIT_KEEP_CAPS) < 0)
          return Errno("PR_SET_SECUREBITS");
        if (::syscall(SYS_setresgid, -1, gid, -1) < 0) return Errno("setresgid -1 %u -1", gid);
        if (::syscall(SYS_setresuid, -1, uid, -1) < 0) return Errno("setresuid -1 %u -1", uid);
        return ipc::Restore(images, fd.get());
      }));
    }
  }
  LOG_DEBUG("environment: uts and ipc filled");
  if (netns) {
    ASSIGN_OR_RETURN(UniqueFd fd, OpenNamespace(root_pid, "net"));
    TRY_CTX(net::Apply(*netns, fd.get(), before_links), "restore network namespace");
    LOG_DEBUG("environment: network filled");
  }
  std::string root = StrFormat("/proc/%d/root", root_pid);
  if (part != FillPart::kUnderProc && part != FillPart::kNamespaces && rec.has_layer())
    TRY_CTX(mnt::RestoreLayer(images, root + "/."), "writable layer");
  std::vector<const img::MountEntry*> readonly;
  // Each into a clone of that mount alone: what is mounted over its entries (the host's device
  // nodes bound onto /dev/null and co. in a user namespace) must not be written through. The
  // clones are made at once, from one thread in the container's mount namespace (a thread each
  // cost 0.2-12 ms under load).
  std::vector<const img::MountEntry*> dumped;
  for (const auto& m : table.mounts())
    if (m.contents_dumped() && wanted(m)) dumped.push_back(&m);
  std::vector<UniqueFd> views;
  if (!dumped.empty()) {
    ASSIGN_OR_RETURN(UniqueFd mntns, OpenNamespace(root_pid, "mnt"));
    TRY(RunInNamespace(
        mntns.get(), CLONE_NEWNS,
        [&]() -> Result<void> {
          for (const img::MountEntry* m : dumped) {
            long fd = ::syscall(SYS_open_tree, AT_FDCWD, m->mountpoint().c_str(),
                                OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC);
            if (fd < 0) return Errno("open_tree %s", m->mountpoint().c_str());
            views.emplace_back(static_cast<int>(fd));
          }
          return Ok();
        },
        NsThreadOptions{.unshare_fs = true}));
  }
  auto fill_all = [&]() -> Result<void> {
    for (size_t i = 0; i < dumped.size(); ++i) {
      const img::MountEntry& m = *dumped[i];
      TRY_CTX(mnt::RestoreTmpfs(images, m.mnt_id(), StrFormat("/proc/self/fd/%d", views[i].get())),
              "tmpfs %s", m.mountpoint().c_str());
      if (ParseFlags(m.mount_opts()) & MS_RDONLY) readonly.push_back(&m);
      LOG_DEBUG("environment: tmpfs %s filled", m.mountpoint().c_str());
    }
    return Ok();
  };
  if (!rec.has_userns()) {
    TRY(fill_all());
  } else if (!dumped.empty()) {
    // A tmpfs the user namespace owns takes only inodes of ids mapped in it: create them as the
    // container's root (fsuid/fsgid on a thread of our own, keeping our capabilities to chown
    // them to their owners next).
    uint32_t fsuid = ContainerRootId(rec.userns().uid_map()),
             fsgid = ContainerRootId(rec.userns().gid_map());
    TRY(RunInNamespace(-1, 0, [&]() -> Result<void> {
      if (::prctl(PR_SET_SECUREBITS, SECBIT_NO_SETUID_FIXUP) < 0)
        return Errno("PR_SET_SECUREBITS");
      ::syscall(SYS_setfsgid, fsgid);
      ::syscall(SYS_setfsuid, fsuid);
      return fill_all();
    }));
  }
  if (!readonly.empty()) {
    // From a thread inside the container's mount namespace (its root is the container's).
    ASSIGN_OR_RETURN(UniqueFd mntfd, OpenNamespace(root_pid, "mnt"));
    TRY(RunInNamespace(
        mntfd.get(), CLONE_NEWNS,
        [&]() -> Result<void> {
          for (const img::MountEntry* m : readonly) {
            unsigned long f = ParseFlags(m->mount_opts());
            if (::mount(nullptr, m->mountpoint().c_str(), nullptr, MS_REMOUNT | f, nullptr) < 0)
              return Errno("remount %s read-only", m->mountpoint().c_str());
          }
          return Ok();
        },
        NsThreadOptions{.unshare_fs = true}));
  }
  return Ok();
}

}  // namespace godwit::container

namespace godwit::container {
namespace {

// path relative to root ("/a/b" under "/r" -> "/a/b"), or "" when it is not under it.
std::string UnderRoot(const std::string& root, const std::string& path) {
  if (path == root) return "/";
  if (path.rfind(root, 0) == 0 && path.size() > root.size() && path[root.size()] == '/')
    return path.substr(root.size());
  return "";
}

}  // namespace

Result<AheadPlan> PlanAhead(const RootPlan& plan) {
  if (plan.userns_fd >= 0 || !plan.join.empty())
    return MakeError(ErrorKind::kUnsupported, 0, "a user namespace's root is built by the root");
  const std::string& newroot = plan.merged.empty() ? plan.rootfs : plan.merged;
  AheadPlan a;
  a.holder = plan;
  a.holder.mounts.clear();
  std::vector<std::string> proc_targets;  // container paths of the proc mounts
  for (const MountStep& s : plan.mounts) {
    std::string target = UnderRoot(newroot, s.target);
    if (target.empty())
      return MakeError(ErrorKind::kUnsupported, 0, "mount target %s is outside the root",
                       s.target.c_str());
    if (!s.bind && (s.fstype == "cgroup" || s.fstype == "cgroup2")) a.cgroup_ns_in_holder = true;
    bool under_proc = !s.bind && s.fstype == "proc";
    for (const auto& p : proc_targets) under_proc |= PrefixPath(p, target);
    if (!under_proc) {
      // A bind whose source lies in a proc mount needs that proc first.
      if (s.bind && s.bind_from_root)
        for (const auto& p : proc_targets)
          if (PrefixPath(p, UnderRoot(newroot, s.source)))
            return MakeError(ErrorKind::kUnsupported, 0, "mount %s is bound from proc",
                             target.c_str());
      a.holder.mounts.push_back(s);
      continue;
    }
    if (!s.bind && s.fstype == "proc") proc_targets.push_back(target);
    MountStep r = s;
    r.target = target;
    if (s.bind) {
      // After the root joined the mount namespace, only the container's paths are in reach.
      std::string src = s.bind_from_root ? UnderRoot(newroot, s.source) : "";
      if (src.empty())
        return MakeError(ErrorKind::kUnsupported, 0, "mount %s under proc is bound from the host",
                         target.c_str());
      r.source = src;
    }
    a.root_steps.push_back(std::move(r));
  }
  return a;
}

int JoinAheadRoot(const AheadPlan& a, const char** what) {
  for (const auto& [fd, type] : a.join) {
    if (::setns(fd, type) < 0) {
      *what = "join a namespace made ahead";
      return errno;
    }
  }
  // The mount namespace's root is the container's (the holder pivoted into it).
  if (::chdir("/") < 0) {
    *what = "chdir /";
    return errno;
  }
  for (const MountStep& s : a.root_steps)
    if (int err = MountOne(s, -1, what)) return err;
  *what = nullptr;
  return 0;
}

Result<std::unique_ptr<EnvHolder>> EnvHolder::Start(
    const RootPlan& plan, bool with_cgroup_ns,
    const std::function<Result<void>(pid_t)>& before_namespaces, int shared_flags) {
  const int flags = (CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWNET |
                     (with_cgroup_ns ? CLONE_NEWCGROUP : 0)) &
                    ~(shared_flags & (CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWNET));
  struct Status {
    int err;
    char what[120];
  };
  int up[2], down[2];
  if (::pipe2(up, O_CLOEXEC) < 0) return Errno("pipe");
  UniqueFd up_rd(up[0]), up_wr(up[1]);
  if (::pipe2(down, O_CLOEXEC) < 0) return Errno("pipe");
  UniqueFd down_rd(down[0]), down_wr(down[1]);
  std::unique_ptr<EnvHolder> h(new EnvHolder());
  fflush(nullptr);
  pid_t pid = ::fork();
  if (pid < 0) return Errno("fork the environment holder");
  if (pid == 0) {
    // Raw calls only (BuildRoot's rules).
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    up_rd.reset();
    down_wr.reset();
    char c;
    if (::read(down_rd.get(), &c, 1) != 1) ::_exit(1);  // in the cgroup, when asked
    Status st{};
    const char* what = "unshare the namespaces";
    if (::unshare(flags) < 0)
      st.err = errno;
    else
      st.err = BuildRoot(plan, &what);
    if (st.err) snprintf(st.what, sizeof(st.what), "%s", what ? what : "build the root");
    if (::write(up_wr.get(), &st, sizeof(st)) != sizeof(st) || st.err) ::_exit(1);
    while (::read(down_rd.get(), &c, 1) < 0 && errno == EINTR) {
    }
    ::_exit(0);
  }
  h->pid_ = pid;
  up_wr.reset();
  down_rd.reset();
  if (before_namespaces) TRY(before_namespaces(pid));
  char go = 'g';
  if (::write(down_wr.get(), &go, 1) != 1) return Errno("wake the environment holder %d", pid);
  Status st{};
  ssize_t n;
  while ((n = ::read(up_rd.get(), &st, sizeof(st))) < 0 && errno == EINTR) {
  }
  if (n != sizeof(st)) return Err("environment holder %d died building the root", pid);
  st.what[sizeof(st.what) - 1] = 0;
  if (st.err)
    return MakeError(ErrorKind::kGeneric, st.err, "environment holder %d: %s: %s", pid, st.what,
                     strerror(st.err));
  h->hold_ = std::move(down_wr);
  TRY(h->OpenNamespaces());
  return h;
}

}  // namespace godwit::container
