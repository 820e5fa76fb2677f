#include "container/restore_env.h"

#include <fcntl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <map>

#include "common/fs.h"
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

  std::vector<const img::MountEntry*> done = {root};
  for (const auto& m : table.mounts()) {
    if (&m == root) continue;
    if (m.mountpoint() == "/")
      return MakeError(ErrorKind::kUnsupported, 0, "a second mount on / (mount %u)", m.mnt_id());
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

int BuildRoot(const RootPlan& plan, const char** what) {
#define STEP(cond, name) \
  do {                   \
    if (cond) {          \
      *what = name;      \
      return errno;      \
    }                    \
  } while (0)
  STEP(::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) < 0, "make / rprivate");
  const char* newroot;
  if (!plan.merged.empty()) {
    STEP(::mount("godwit-storage", plan.storage_dir.c_str(), "tmpfs", MS_NOSUID | MS_NODEV,
                 plan.quota_opts.c_str()) < 0,
         "mount storage tmpfs");
    STEP(::mkdir(plan.upper.c_str(), 0755) < 0 || ::mkdir(plan.work.c_str(), 0755) < 0 ||
             ::mkdir(plan.merged.c_str(), 0755) < 0,
         "mkdir upper/work/merged");
    STEP(::mount("overlay", plan.merged.c_str(), "overlay", 0, plan.overlay_opts.c_str()) < 0,
         "mount overlay");
    newroot = plan.merged.c_str();
  } else {
    STEP(::mount(plan.rootfs.c_str(), plan.rootfs.c_str(), nullptr, MS_BIND | MS_REC, nullptr) < 0,
         "bind rootfs");
    newroot = plan.rootfs.c_str();
  }
  for (const MountStep& s : plan.mounts) {
    const char* t = s.target.c_str();
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
      unsigned long keep = s.flags & (MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC);
      if (keep)
        STEP(::mount(nullptr, t, nullptr, MS_REMOUNT | MS_BIND | keep, nullptr) < 0,
             "remount bind with flags");
    } else {
      STEP(::mount(s.source.c_str(), t, s.fstype.c_str(), s.flags,
                   s.data.empty() ? nullptr : s.data.c_str()) < 0,
           "mount");
    }
    if (s.propagation)
      STEP(::mount(nullptr, t, nullptr, s.propagation, nullptr) < 0, "propagation");
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

Result<void> FillEnvironment(const images::ImageSet& images, const img::ContainerCheckpoint& rec,
                             const img::MountTable& table, const img::NetNs* netns,
                             pid_t root_pid) {
  if (images.Has(uts::kImage)) {
    ASSIGN_OR_RETURN(UniqueFd fd, OpenNamespace(root_pid, "uts"));
    TRY(uts::Restore(images, fd.get()));
  }
  if (images.Has(ipc::kImage)) {
    ASSIGN_OR_RETURN(UniqueFd fd, OpenNamespace(root_pid, "ipc"));
    TRY(ipc::Restore(images, fd.get()));
  }
  if (netns) {
    ASSIGN_OR_RETURN(UniqueFd fd, OpenNamespace(root_pid, "net"));
    TRY_CTX(net::Apply(*netns, fd.get()), "restore network namespace");
  }
  std::string root = StrFormat("/proc/%d/root", root_pid);
  if (rec.has_layer()) TRY_CTX(mnt::RestoreLayer(images, root + "/."), "writable layer");
  std::vector<const img::MountEntry*> readonly;
  for (const auto& m : table.mounts()) {
    if (!m.contents_dumped()) continue;
    TRY_CTX(mnt::RestoreTmpfs(images, m.mnt_id(), JoinPath(root, m.mountpoint())), "tmpfs %s",
            m.mountpoint().c_str());
    if (ParseFlags(m.mount_opts()) & MS_RDONLY) readonly.push_back(&m);
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
