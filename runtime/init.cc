// Runs in the cloned child (see init.h): mounts, /dev, pivot_root, credentials, then waits on
// exec.fifo and execs. Order matters and is commented where the kernel forces it.
#include "runtime/init.h"

#include <fcntl.h>
#include <grp.h>
#include <linux/capability.h>
#include <net/if.h>
#include <sched.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <linux/close_range.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <cstdarg>
#include <cstring>

#include "common/result.h"
#include "runtime/console.h"
#include "runtime/storage.h"

extern char** environ;

namespace godwit::runtime::init {
namespace {

const Plan* g_plan = nullptr;

[[noreturn]] void Fail(ErrorKind kind, int err, const char* fmt, ...)
    __attribute__((format(printf, 3, 4)));
[[noreturn]] void Fail(ErrorKind kind, int err, const char* fmt, ...) {
  Reply r;
  r.ok = 0;
  r.kind = static_cast<int>(kind);
  r.err = err;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(r.msg, sizeof(r.msg), fmt, ap);
  va_end(ap);
  if (g_plan) (void)!::write(g_plan->sync_fd, &r, sizeof(r));
  _exit(1);
}

#define FAIL_ERRNO(...) Fail(ErrorKind::kGeneric, errno, __VA_ARGS__)

Result<void> MkdirAll(const std::string& path, mode_t mode) {
  std::string cur;
  size_t pos = 0;
  while (pos != std::string::npos) {
    pos = path.find('/', pos + 1);
    cur = path.substr(0, pos);
    if (cur.empty()) continue;
    if (::mkdir(cur.c_str(), mode) < 0 && errno != EEXIST) return Errno("mkdir %s", cur.c_str());
  }
  return Ok();
}

// Mount flags that a bind remount must keep: in a user namespace the kernel locks them.
unsigned long LockedFlags(const char* path) {
  struct statvfs sv;
  unsigned long f = 0;
  if (::statvfs(path, &sv) != 0) return 0;
  if (sv.f_flag & ST_NOSUID) f |= MS_NOSUID;
  if (sv.f_flag & ST_NODEV) f |= MS_NODEV;
  if (sv.f_flag & ST_NOEXEC) f |= MS_NOEXEC;
  if (sv.f_flag & ST_NOATIME) f |= MS_NOATIME;
  if (sv.f_flag & ST_NODIRATIME) f |= MS_NODIRATIME;
  if (sv.f_flag & ST_RELATIME) f |= MS_RELATIME;
  return f;
}

// Creates the mount point for m under newroot: a directory, or an empty file for a bind mount
// of a non-directory.
Result<void> MakeMountPoint(const Mount& m, const std::string& target) {
  struct stat st;
  if (::lstat(target.c_str(), &st) == 0) {
    if (S_ISLNK(st.st_mode))
      return MakeError(ErrorKind::kBadConfig, 0, "mount destination %s is a symlink in the rootfs",
                       m.destination.c_str());
    return Ok();
  }
  bool file = false;
  if (m.bind) {
    struct stat src;
    if (::stat(m.source.c_str(), &src) < 0)
      return MakeError(ErrorKind::kBadConfig, errno, "bind mount source %s", m.source.c_str());
    file = !S_ISDIR(src.st_mode);
  }
  if (file) {
    TRY(MkdirAll(target.substr(0, target.rfind('/')), 0755));
    int fd = ::open(target.c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
    if (fd < 0) return Errno("create mount point %s", target.c_str());
    ::close(fd);
  } else {
    TRY(MkdirAll(target, 0755));
  }
  return Ok();
}

// A "cgroup" mount: a fresh cgroup2 mount where the host has a cgroup2 hierarchy (pure v2, or a
// hybrid's unified tree), read-only as the options say, as runc mounts it. With a cgroup
// namespace it shows the container's own cgroup as its root (the init unshares it later, so the
// mount's root is fixed at that point by the kernel's view); without one, the host's tree,
// read-only. In a user namespace the kernel refuses a fresh cgroup2 mount without a cgroup
// namespace: the container's own cgroup2 directory is bound instead. A v1-only host gets an
// empty read-only tmpfs: the v1 hierarchies are not shown (a tree of per-controller binds could
// not be rebuilt by a restore).
Result<void> MountCgroups(const Mount& m, const std::string& target) {
  unsigned long flags = m.flags & (MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RELATIME);
  auto unified = m.cgroup_dirs.find("unified");
  if (unified == m.cgroup_dirs.end()) {
    if (::mount("tmpfs", target.c_str(), "tmpfs", flags, "mode=755,size=0") < 0)
      return Errno("mount an empty tmpfs on %s (no cgroup2 on this host)", m.destination.c_str());
    return Ok();
  }
  if (::mount("cgroup2", target.c_str(), "cgroup2", flags, nullptr) == 0) return Ok();
  if (errno != EPERM) return Errno("mount cgroup2 on %s", m.destination.c_str());
  if (::mount(unified->second.c_str(), target.c_str(), nullptr, MS_BIND, nullptr) < 0)
    return Errno("bind %s on %s", unified->second.c_str(), m.destination.c_str());
  if (::mount(nullptr, target.c_str(), nullptr,
              MS_BIND | MS_REMOUNT | flags | LockedFlags(target.c_str()), nullptr) < 0)
    return Errno("remount %s with its options", m.destination.c_str());
  return Ok();
}

Result<void> DoMount(const Mount& m, const std::string& newroot) {
  std::string target = newroot + m.destination;
  TRY(MakeMountPoint(m, target));
  if (m.type == "cgroup") {
    TRY(MountCgroups(m, target));
  } else if (m.bind) {
    unsigned long f = MS_BIND | (m.recursive ? MS_REC : 0);
    if (::mount(m.source.c_str(), target.c_str(), nullptr, f, nullptr) < 0)
      return Errno("bind mount %s on %s", m.source.c_str(), m.destination.c_str());
    // Bind mounts ignore flags on the first call: apply them with a remount.
    unsigned long extra = m.flags & ~MS_REC;
    if (extra) {
      extra |= LockedFlags(target.c_str());
      if (::mount(nullptr, target.c_str(), nullptr, MS_BIND | MS_REMOUNT | extra, nullptr) < 0)
        return Errno("remount %s with its options", m.destination.c_str());
    }
  } else {
    const char* src = m.source.empty() ? m.type.c_str() : m.source.c_str();
    if (::mount(src, target.c_str(), m.type.c_str(), m.flags,
                m.data.empty() ? nullptr : m.data.c_str()) < 0)
      return Errno("mount %s (%s, options %s) on %s", src, m.type.c_str(), m.data.c_str(),
                   m.destination.c_str());
  }
  if (m.propagation && ::mount(nullptr, target.c_str(), nullptr, m.propagation, nullptr) < 0)
    return Errno("set propagation of %s", m.destination.c_str());
  return Ok();
}

bool HasMount(const Spec& s, const char* dest) {
  for (const auto& m : s.mounts)
    if (m.destination == dest) return true;
  return false;
}

bool IsTmpfsDev(const Spec& s) {
  for (const auto& m : s.mounts)
    if (m.destination == "/dev") return m.type == "tmpfs";
  return true;  // we mount our own
}

// The minimal /dev: device nodes (bind mounts of the host's nodes in a user namespace, where
// mknod is not allowed), pts, shm and the usual symlinks.
Result<void> SetupDev(const Spec& s, const std::string& newroot) {
  struct Dev {
    const char* name;
    unsigned maj, min;
  };
  static const Dev kDevs[] = {{"null", 1, 3},   {"zero", 1, 5},    {"full", 1, 7},
                              {"random", 1, 8}, {"urandom", 1, 9}, {"tty", 5, 0}};
  std::string dev = newroot + "/dev";
  for (const auto& d : kDevs) {
    std::string p = dev + "/" + d.name;
    if (s.ns.user) {
      int fd = ::open(p.c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0666);
      if (fd < 0) return Errno("create %s", p.c_str());
      ::close(fd);
      std::string host = std::string("/dev/") + d.name;
      if (::mount(host.c_str(), p.c_str(), nullptr, MS_BIND, nullptr) < 0)
        return Errno("bind %s", host.c_str());
    } else if (::mknod(p.c_str(), S_IFCHR | 0666, makedev(d.maj, d.min)) < 0 && errno != EEXIST) {
      return Errno("mknod %s", p.c_str());
    }
  }
  if (!HasMount(s, "/dev/pts")) {
    Mount m;
    m.destination = "/dev/pts";
    m.type = "devpts";
    m.source = "devpts";
    m.flags = MS_NOSUID | MS_NOEXEC;
    m.data = "newinstance,ptmxmode=0666,mode=0620";
    TRY(DoMount(m, newroot));
  }
  if (!HasMount(s, "/dev/shm")) {
    Mount m;
    m.destination = "/dev/shm";
    m.type = "tmpfs";
    m.source = "shm";
    m.flags = MS_NOSUID | MS_NODEV | MS_NOEXEC;
    m.data = "mode=1777,size=65536k";
    TRY(DoMount(m, newroot));
  }
  static const char* kLinks[][2] = {{"pts/ptmx", "ptmx"},
                                    {"/proc/self/fd", "fd"},
                                    {"/proc/self/fd/0", "stdin"},
                                    {"/proc/self/fd/1", "stdout"},
                                    {"/proc/self/fd/2", "stderr"}};
  for (const auto& l : kLinks) {
    std::string p = dev + "/" + l[1];
    if (::symlink(l[0], p.c_str()) < 0 && errno != EEXIST) return Errno("symlink %s", p.c_str());
  }
  return Ok();
}

Result<void> WriteFile(const std::string& path, const std::string& value) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) return Errno("open %s", path.c_str());
  if (::write(fd, value.data(), value.size()) != static_cast<ssize_t>(value.size()))
    return MakeError(ErrorKind::kBadConfig, errno, "write '%s' to %s", value.c_str(), path.c_str());
  ::close(fd);
  return Ok();
}

Result<void> LoopbackUp() {
  int s = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (s < 0) return Errno("socket");
  ifreq ifr{};
  strcpy(ifr.ifr_name, "lo");
  if (::ioctl(s, SIOCGIFFLAGS, &ifr) < 0) return Errno("SIOCGIFFLAGS lo");
  ifr.ifr_flags |= IFF_UP;
  if (::ioctl(s, SIOCSIFFLAGS, &ifr) < 0) return Errno("SIOCSIFFLAGS lo");
  ::close(s);
  return Ok();
}

}  // namespace

std::string FindExecutable(const std::string& file, const std::vector<std::string>& env) {
  if (file.find('/') != std::string::npos) return ::access(file.c_str(), X_OK) == 0 ? file : "";
  std::string path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
  for (const auto& e : env)
    if (e.rfind("PATH=", 0) == 0) path = e.substr(5);
  size_t start = 0;
  while (start <= path.size()) {
    size_t end = path.find(':', start);
    if (end == std::string::npos) end = path.size();
    std::string dir = path.substr(start, end - start);
    if (dir.empty()) dir = ".";
    std::string cand = dir + "/" + file;
    struct stat st;
    if (::stat(cand.c_str(), &st) == 0 && S_ISREG(st.st_mode) && ::access(cand.c_str(), X_OK) == 0)
      return cand;
    start = end + 1;
  }
  return "";
}

int ApplySeccompAndCredentials(const Process& p, const SeccompProgram* seccomp, int cap_last_cap,
                               const char** what) {
  bool early = seccomp && !p.no_new_privileges;
  if (early)
    if (int rc = LoadSeccomp(*seccomp); rc < 0) return *what = "load the seccomp filter", rc;
  if (int rc = ApplyCredentials(p, cap_last_cap, what); rc < 0) return rc;
  if (seccomp && !early)
    if (int rc = LoadSeccomp(*seccomp); rc < 0) return *what = "load the seccomp filter", rc;
  return 0;
}

int ApplyCredentials(const Process& p, int cap_last_cap, const char** what) {
  for (const auto& r : p.rlimits) {
    rlimit rl{static_cast<rlim_t>(r.soft), static_cast<rlim_t>(r.hard)};
    if (::setrlimit(r.resource, &rl) < 0) return *what = "setrlimit", -errno;
  }
  const auto& caps = p.caps;
  if (caps.present) {
    for (int c = 0; c <= cap_last_cap; ++c) {
      bool keep = false;
      for (int b : caps.bounding) keep = keep || b == c;
      if (!keep && ::prctl(PR_CAPBSET_DROP, c, 0, 0, 0) < 0 && errno != EINVAL)
        return *what = "drop capability from the bounding set", -errno;
    }
    // Keep the permitted set across the uid change; capset below trims it.
    if (::prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) < 0) return *what = "PR_SET_KEEPCAPS", -errno;
  }
  if (::setgroups(p.additional_gids.size(),
                  reinterpret_cast<const gid_t*>(p.additional_gids.data())) < 0 &&
      !(errno == EPERM && p.additional_gids.empty()))
    return *what = "setgroups", -errno;
  if (::setresgid(p.gid, p.gid, p.gid) < 0) return *what = "setresgid", -errno;
  if (::setresuid(p.uid, p.uid, p.uid) < 0) return *what = "setresuid", -errno;
  if (caps.present) {
    __user_cap_header_struct hdr{_LINUX_CAPABILITY_VERSION_3, 0};
    __user_cap_data_struct data[2]{};
    auto set = [&](const std::vector<int>& v, __u32 __user_cap_data_struct::*field) {
      for (int c : v) data[c / 32].*field |= 1u << (c % 32);
    };
    set(caps.effective, &__user_cap_data_struct::effective);
    set(caps.permitted, &__user_cap_data_struct::permitted);
    set(caps.inheritable, &__user_cap_data_struct::inheritable);
    if (::syscall(SYS_capset, &hdr, data) < 0) return *what = "capset", -errno;
    ::prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
    for (int c : caps.ambient)
      if (::prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, c, 0, 0) < 0)
        return *what = "raise ambient capability", -errno;
  }
  if (p.no_new_privileges && ::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
    return *what = "PR_SET_NO_NEW_PRIVS", -errno;
  return 0;
}

Result<void> SetupUts(const Spec& s) {
  if (!s.hostname.empty() && ::sethostname(s.hostname.data(), s.hostname.size()) < 0)
    return Errno("sethostname %s", s.hostname.c_str());
  if (!s.domainname.empty() && ::setdomainname(s.domainname.data(), s.domainname.size()) < 0)
    return Errno("setdomainname %s", s.domainname.c_str());

  return Ok();
}

Result<void> BuildRoot(const Spec& s, const std::string& storage_dir) {
  ::umask(0);  // device nodes and mount points get exactly the modes asked for
  // Nothing we mount may propagate back to the host.
  unsigned long prop = MS_REC | MS_PRIVATE;
  if (s.rootfs_propagation == "slave" || s.rootfs_propagation == "rslave") prop = MS_REC | MS_SLAVE;
  if (::mount(nullptr, "/", nullptr, prop, nullptr) < 0) return Errno("make / private");

  std::string newroot;
  if (s.disk_quota > 0) {
    // The writable layer (storage.h): the parent mounted the quota-sized tmpfs on the host; the
    // overlay over the read-only rootfs exists only in our mount namespace.
    std::string upper = StorageUpper(storage_dir), work = StorageWork(storage_dir);
    newroot = StorageMerged(storage_dir);
    std::string opts = "lowerdir=" + s.root_path + ",upperdir=" + upper + ",workdir=" + work;
    if (::mount("overlay", newroot.c_str(), "overlay", 0, opts.c_str()) < 0)
      return Errno("mount overlay (%s)", opts.c_str());
  } else {
    newroot = s.root_path;
    // pivot_root needs the new root to be a mount point.
    if (::mount(newroot.c_str(), newroot.c_str(), nullptr, MS_BIND | MS_REC, nullptr) < 0)
      return Errno("bind mount rootfs %s", newroot.c_str());
  }

  if (!HasMount(s, "/dev")) {
    Mount m;
    m.destination = "/dev";
    m.type = "tmpfs";
    m.source = "tmpfs";
    m.flags = MS_NOSUID | MS_STRICTATIME;
    m.data = "mode=755,size=65536k";
    TRY(DoMount(m, newroot));
  }
  for (const auto& m : s.mounts) TRY(DoMount(m, newroot));
  if (IsTmpfsDev(s)) TRY(SetupDev(s, newroot));

  // pivot_root into the new root and detach the old one (the "pivot_root(".", ".")" trick:
  //    no directory for the old root needed).
  if (::chdir(newroot.c_str()) < 0) return Errno("chdir %s", newroot.c_str());
  if (::syscall(SYS_pivot_root, ".", ".") < 0) return Errno("pivot_root %s", newroot.c_str());
  if (::umount2(".", MNT_DETACH) < 0) return Errno("detach the old root");
  if (::chdir("/") < 0) return Errno("chdir /");

  // Sysctls before /proc/sys turns read-only.
  for (const auto& [k, v] : s.sysctl) {
    std::string path = "/proc/sys/" + k;
    for (auto& ch : path)
      if (ch == '.') ch = '/';
    TRY(WriteFile(path, v));
  }
  if (s.ns.network) TRY(LoopbackUp());  // a joined one is its owner's to configure

  for (const auto& p : s.masked_paths) {
    struct stat st;
    if (::stat(p.c_str(), &st) < 0) continue;  // nothing to mask
    int rc = S_ISDIR(st.st_mode) ? ::mount("tmpfs", p.c_str(), "tmpfs", MS_RDONLY, "size=0")
                                 : ::mount("/dev/null", p.c_str(), nullptr, MS_BIND, nullptr);
    if (rc < 0) return Errno("mask %s", p.c_str());
  }
  for (const auto& p : s.readonly_paths) {
    if (::access(p.c_str(), F_OK) < 0) continue;
    if (::mount(p.c_str(), p.c_str(), nullptr, MS_BIND | MS_REC, nullptr) < 0)
      return Errno("bind %s read-only", p.c_str());
    if (::mount(nullptr, p.c_str(), nullptr,
                MS_BIND | MS_REMOUNT | MS_RDONLY | LockedFlags(p.c_str()), nullptr) < 0)
      return Errno("remount %s read-only", p.c_str());
  }
  if (s.root_readonly && ::mount(nullptr, "/", nullptr,
                                 MS_BIND | MS_REMOUNT | MS_RDONLY | LockedFlags("/"), nullptr) < 0)
    return Errno("remount / read-only");

  return Ok();
}

void Run(const Plan& plan) {
  g_plan = &plan;
  const Spec& s = *plan.spec;
  // Die with the parent while it still sets us up (a killed `godwit create` leaves nothing).
  ::prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
  // The mask survives execve: the container's program starts with none blocked (`run` blocks
  // the signals it forwards while it creates).
  sigset_t none;
  sigemptyset(&none);
  ::sigprocmask(SIG_SETMASK, &none, nullptr);
  if (plan.cgroup) {
    auto r = plan.cgroup->EnterSelf(plan.born_into);
    if (!r.ok()) Fail(r.error().kind(), r.error().sys_errno(), "%s", r.error().message().c_str());
  }
  // Namespaces joined by path (before /sys is mounted: sysfs shows the mounter's network).
  for (const auto& [fd, type] : plan.join) {
    if (::setns(fd, type) < 0) FAIL_ERRNO("setns into linux.namespaces[].path (type %#x)", type);
    ::close(fd);
  }

  // 1. In a user namespace nothing privileged works before the parent wrote the id maps: wait
  //    for its go first. Otherwise build the root while the parent moves us into our cgroups
  //    (the first cgroup migration waits for an RCU grace period) and wires the network.
  auto wait_go = [&] {
    char go = 0;
    if (::read(plan.sync_fd, &go, 1) != 1 || go != 'G') _exit(1);
  };
  if (s.ns.user) wait_go();

  if (s.ns.user) {
    if (::setresgid(0, 0, 0) < 0) FAIL_ERRNO("setresgid 0 in the user namespace");
    if (::setresuid(0, 0, 0) < 0) FAIL_ERRNO("setresuid 0 in the user namespace");
  }
  if (s.process.oom_score_adj) {
    auto r = WriteFile("/proc/self/oom_score_adj", std::to_string(*s.process.oom_score_adj));
    if (!r.ok())
      Fail(ErrorKind::kBadConfig, r.error().sys_errno(), "%s", r.error().message().c_str());
  }
  // 2. Hostname, mounts, /dev, pivot_root, masked and read-only paths.
  for (auto r : {SetupUts(s), BuildRoot(s, plan.storage_dir)})
    if (!r.ok()) Fail(r.error().kind(), r.error().sys_errno(), "%s", r.error().message().c_str());

  // 3. The process: terminal, cwd, executable, credentials.
  if (plan.console_fd >= 0) {
    const char* what = "";
    if (int rc = SetupConsole(plan.console_fd, s.process.console_height, s.process.console_width,
                              s.process.uid, s.process.gid, &what);
        rc < 0)
      Fail(ErrorKind::kGeneric, -rc, "process.terminal: %s", what);
  }
  if (::chdir(s.process.cwd.c_str()) < 0)
    Fail(ErrorKind::kBadConfig, errno, "process.cwd %s", s.process.cwd.c_str());
  std::string exe = FindExecutable(s.process.args[0], s.process.env);
  if (exe.empty())
    Fail(ErrorKind::kBadConfig, ENOENT, "process.args[0] %s: not found in the container",
         s.process.args[0].c_str());
  if (!s.ns.user) wait_go();
  // The cgroup namespace only now: its root is the cgroup we are in at unshare time.
  if (s.ns.cgroup && ::unshare(CLONE_NEWCGROUP) < 0) FAIL_ERRNO("unshare(CLONE_NEWCGROUP)");

  const char* what = "";
  if (int rc = ApplySeccompAndCredentials(s.process, plan.seccomp, plan.cap_last_cap, &what);
      rc < 0)
    Fail(ErrorKind::kGeneric, -rc, "%s for uid %u gid %u", what, s.process.uid, s.process.gid);
  ::umask(s.process.umask ? *s.process.umask : 022);

  std::vector<char*> argv, envp;
  for (const auto& a : s.process.args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  for (const auto& e : s.process.env) envp.push_back(const_cast<char*>(e.c_str()));
  envp.push_back(nullptr);

  // 4. Ready. Block on exec.fifo until `start` writes a byte (`run` does it at once).
  // Detached containers outlive `godwit create`: stop dying with it before saying ready (the
  // parent may exit right after reading the reply).
  ::prctl(PR_SET_PDEATHSIG, 0, 0, 0, 0);
  if (plan.start_now) {
    // No stop before execve: one wake-up less on the start path. Success closes sync_fd.
    // Nothing of the caller's leaks into the container (a shell's fd 10, 255, ...): every fd
    // above stdio is closed by the exec (CLOEXEC, so a failure can still report on sync_fd).
    ::syscall(SYS_close_range, 3U, ~0U, CLOSE_RANGE_CLOEXEC);
    ::execve(exe.c_str(), argv.data(), envp.data());
    Fail(ErrorKind::kGeneric, errno, "execve %s", exe.c_str());
  }
  Reply ok;
  ok.ok = 1;
  if (::write(plan.sync_fd, &ok, sizeof(ok)) != sizeof(ok)) _exit(1);
  ::close(plan.sync_fd);
  g_plan = nullptr;
  char byte;
  ssize_t n;
  do {
    n = ::read(plan.fifo_fd, &byte, 1);
  } while (n < 0 && errno == EINTR);
  if (n != 1) _exit(1);
  ::close(plan.fifo_fd);
  ::syscall(SYS_close_range, 3U, ~0U, 0U);  // as runc: only stdio passes into the container
  ::execve(exe.c_str(), argv.data(), envp.data());
  dprintf(2, "godwit: exec %s: %s\n", exe.c_str(), strerror(errno));
  _exit(127);
}

}  // namespace godwit::runtime::init
