// The OCI lifecycle (runtime.h). The create path is the hot path of `godwit run`: no shelling
// out (nft runs only for a firewall), no fsync, one clone.
#include <fcntl.h>
#include <limits.h>
#include <sched.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <linux/close_range.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <optional>

#include "common/fs.h"
#include "common/log.h"
#include "common/scope_exit.h"
#include "runtime/cgroup.h"
#include "runtime/console.h"
#include "runtime/init.h"
#include "runtime/network.h"
#include "runtime/runtime.h"
#include "runtime/seccomp.h"
#include "runtime/storage.h"

namespace godwit::runtime {
namespace {

// Phase times of the create path, logged at debug level (GODWIT_LOG=debug): where start-up
// time goes.
class PhaseTimer {
 public:
  PhaseTimer() { clock_gettime(CLOCK_MONOTONIC, &last_); }
  void Mark(const char* phase) {
    if (log::GetLevel() < log::kDebug) return;
    timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    double ms = (now.tv_sec - last_.tv_sec) * 1e3 + (now.tv_nsec - last_.tv_nsec) / 1e6;
    text_ += StrFormat(" %s=%.2fms", phase, ms);
    last_ = now;
  }
  const std::string& text() const { return text_; }

 private:
  timespec last_;
  std::string text_;
};

// Where a deferred Delete leaves the id's state dir (runtime.h).
std::string DeferredDir(const std::string& root, const std::string& id) {
  return root + "/." + id + ".removed";
}

std::string NowRfc3339() {
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  tm t;
  gmtime_r(&ts.tv_sec, &t);
  char buf[64];
  size_t n = strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%S", &t);
  snprintf(buf + n, sizeof(buf) - n, ".%09ldZ", ts.tv_nsec);
  return buf;
}

int CapLastCap() {
  static int v = [] {
    auto s = fs::ReadFile("/proc/sys/kernel/cap_last_cap");
    return s.ok() ? atoi(s->c_str()) : 40;
  }();
  return v;
}

Result<void> WriteIdMap(pid_t pid, const char* file, const std::vector<IdMap>& maps) {
  std::string text;
  for (const auto& m : maps) text += StrFormat("%u %u %u\n", m.container_id, m.host_id, m.size);
  std::string path = StrFormat("/proc/%d/%s", pid, file);
  ASSIGN_OR_RETURN(UniqueFd fd, fs::Open(path, O_WRONLY));
  if (::write(fd.get(), text.data(), text.size()) != static_cast<ssize_t>(text.size()))
    return Error(ErrorKind::kBadConfig, errno,
                 StrFormat("write %s (linux.%s)", path.c_str(),
                           file[0] == 'u' ? "uidMappings" : "gidMappings"));
  return Ok();
}

Result<std::string> AbsPath(const std::string& p) {
  char buf[PATH_MAX];
  if (!::realpath(p.c_str(), buf)) return Errno("%s", p.c_str());
  return std::string(buf);
}

// Waits (bounded) until pid is gone or a zombie: used for inits that are not our children.
void WaitGone(pid_t pid, uint64_t start_time) {
  for (int i = 0; i < 5000; ++i) {
    char st = ProcessState(pid);
    if (st == 0 || st == 'Z' || st == 'X' || ProcessStartTime(pid) != start_time) return;
    // Reap it if it is ours (foreground run, or we are its subreaper).
    if (::waitpid(pid, nullptr, WNOHANG) == pid) return;
    usleep(i < 50 ? 100 : 1000);
  }
}

Result<void> KillAll(Cgroup& cg, pid_t init, uint64_t start_time) {
  // Freeze so that nothing forks between reading the pid list and the SIGKILLs.
  bool frozen = cg.Freeze().ok();
  auto pids = cg.Pids();
  if (pids.ok()) {
    for (pid_t p : *pids) ::kill(p, SIGKILL);
  }
  if (init > 0 && ProcessStartTime(init) == start_time) ::kill(init, SIGKILL);
  if (frozen) TRY(cg.Thaw());
  return Ok();
}

// clone3 with CLONE_INTO_CGROUP when a cgroup2 dir is given (the child is born in it, no
// migration), else plain clone. Returns the pid (0 in the child); *born_into tells which.
pid_t CloneInit(unsigned long flags, int cgroup_fd, bool* born_into) {
  *born_into = false;
  if (cgroup_fd >= 0) {
    struct {
      uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls, set_tid,
          set_tid_size, cgroup;
    } args{};
    constexpr uint64_t kCloneIntoCgroup = 0x200000000ULL;
    args.flags = (flags & ~0xffUL) | kCloneIntoCgroup;
    args.exit_signal = SIGCHLD;
    args.cgroup = static_cast<uint64_t>(cgroup_fd);
    long pid = ::syscall(SYS_clone3, &args, sizeof(args));
    if (pid >= 0) {
      *born_into = true;
      return static_cast<pid_t>(pid);
    }
    if (errno != ENOSYS && errno != E2BIG && errno != EINVAL && errno != EOPNOTSUPP) return -1;
  }
  return static_cast<pid_t>(::syscall(SYS_clone, flags, nullptr, nullptr, nullptr, nullptr));
}

std::atomic<pid_t> g_forward_pid{0};
void ForwardSignal(int sig) {
  pid_t p = g_forward_pid.load();
  if (p > 0) ::kill(p, sig);
}

}  // namespace

Result<Container> Create(const CreateOptions& opts) {
  PhaseTimer timer;
  TRY(ValidateId(opts.id));
  if (opts.bundle.empty()) return MakeError(ErrorKind::kUsage, 0, "no bundle given (--bundle DIR)");
  auto bundle_abs = AbsPath(opts.bundle);
  if (!bundle_abs.ok())
    return MakeError(ErrorKind::kNotFound, bundle_abs.error().sys_errno(), "bundle %s",
                     opts.bundle.c_str());
  std::string bundle = *bundle_abs;
  ASSIGN_OR_RETURN(Spec spec, LoadSpec(bundle));
  struct stat st;
  if (::stat(spec.root_path.c_str(), &st) < 0 || !S_ISDIR(st.st_mode))
    return MakeError(ErrorKind::kNotFound, errno ? errno : ENOTDIR,
                     "root.path %s: the rootfs does not exist or is not a directory",
                     spec.root_path.c_str());
  ASSIGN_OR_RETURN(spec.root_path, AbsPath(spec.root_path));
  if (!opts.bridge.empty()) {
    TRY(ValidateBridgeName(opts.bridge));
    if (spec.net.address.empty())
      return MakeError(ErrorKind::kUsage, 0,
                       "--bridge %s: the container has no address (annotation %s)",
                       opts.bridge.c_str(), kAnnoIp);
    // The subnet's first host is a routed container's gateway by default, not a bridged one's.
    if (spec.net.bridge.empty() && !spec.annotations.count(kAnnoGateway)) spec.net.gateway.clear();
    spec.net.bridge = opts.bridge;
  }

  TRY(fs::MkdirAll(opts.root, 0711));
  ASSIGN_OR_RETURN(std::string root, AbsPath(opts.root));
  Container c;
  c.root = root;
  c.id = opts.id;
  c.bundle = bundle;
  c.rootfs = spec.root_path;
  c.created = NowRfc3339();
  c.resources = spec.resources;
  c.hostname = spec.hostname;
  c.ns = spec.ns;
  c.annotations = spec.annotations;
  c.net = spec.net;
  c.disk_quota = spec.disk_quota;
  c.cgroup_parent = opts.cgroup_parent;
  TRY(ValidateCgroupParent(opts.cgroup_parent));
  std::string cgroup_leaf = opts.id;
  if (!spec.cgroups_path.empty()) {
    ASSIGN_OR_RETURN(CgroupPlacement place,
                     ParseCgroupsPath(spec.cgroups_path, opts.systemd_cgroup));
    c.cgroup_parent = place.parent.empty() ? "/" : place.parent;
    c.cgroup_leaf = cgroup_leaf = place.leaf;
  }
  ASSIGN_OR_RETURN(SeccompProgram seccomp, CompileSeccomp(spec.seccomp));
  UniqueFd console;
  if (spec.process.terminal) {
    if (opts.console_socket.empty())
      return MakeError(ErrorKind::kUsage, 0,
                       "process.terminal is true: --console-socket PATH is required");
    ASSIGN_OR_RETURN(console, ConnectConsoleSocket(opts.console_socket));
  }

  // The state dir is the container's lock: mkdir is atomic, a second create of the id fails.
  // The bundle may be the state dir itself (CreateFromRunOptions made it already).
  bool bundle_is_dir = bundle == c.dir();
  // 0711: the init of a user-namespaced container (not host root) must traverse it to its
  // storage dir.
  if (!bundle_is_dir && ::mkdir(c.dir().c_str(), 0711) < 0) {
    if (errno == EEXIST)
      return MakeError(ErrorKind::kExists, EEXIST, "container %s already exists in %s",
                       opts.id.c_str(), root.c_str());
    return Errno("mkdir %s", c.dir().c_str());
  }
  ScopeExit remove_dir([&] { (void)fs::RemoveAll(c.dir()); });
  // What a checkpoint of the id left to remove (Delete, deferred): the id is ours now.
  TRY(RemoveDeferred(root, opts.id));
  if (!bundle_is_dir) {
    // Keep the config as created: exec and checkpoint read it later even if the bundle changes.
    ASSIGN_OR_RETURN(std::string text, fs::ReadFile(bundle + "/config.json"));
    TRY(fs::WriteFile(c.config_path(), text));
  }
  ScopeExit unmount_storage([&] {
    if (!c.storage_dir.empty()) (void)UnmountStorage(c.storage_dir);
  });
  if (c.disk_quota > 0) {
    // Owned by the container's root, who mounts the overlay on it.
    uid_t uid = 0;
    gid_t gid = 0;
    for (const auto& m : spec.uid_mappings)
      if (m.container_id == 0) uid = m.host_id;
    for (const auto& m : spec.gid_mappings)
      if (m.container_id == 0) gid = m.host_id;
    TRY_CTX(MountStorage(c.dir() + "/storage", c.disk_quota, uid, gid), "container %s: storage",
            opts.id.c_str());
    c.storage_dir = c.dir() + "/storage";
  }

  timer.Mark("config");
  ASSIGN_OR_RETURN(std::unique_ptr<Cgroup> cg, OpenCgroup(cgroup_leaf, c.cgroup_parent));
  TRY_CTX(cg->Create(), "container %s", opts.id.c_str());
  ScopeExit remove_cgroup([&] { (void)cg->Destroy(); });
  TRY_CTX(cg->Apply(spec.resources), "container %s: linux.resources", opts.id.c_str());
  c.cgroup_layout = CgroupLayoutName(cg->layout());
  c.cgroup_paths = cg->Paths();
  for (auto& m : spec.mounts)
    if (m.type == "cgroup") m.cgroup_dirs = c.cgroup_paths;
  timer.Mark("cgroup-create");

  UniqueFd fifo;
  if (!opts.start) {
    if (::mkfifo(c.fifo_path().c_str(), 0600) < 0) return Errno("mkfifo %s", c.fifo_path().c_str());
    // O_RDWR: never blocks, and the init keeps a reader open so `start` can open O_WRONLY.
    ASSIGN_OR_RETURN(fifo, fs::Open(c.fifo_path(), O_RDWR));
  }
  int sp[2];
  if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sp) < 0) return Errno("socketpair");
  UniqueFd parent_sock(sp[0]), child_sock(sp[1]);

  unsigned long flags = CLONE_NEWNS | SIGCHLD;
  if (spec.ns.pid) flags |= CLONE_NEWPID;
  if (spec.ns.uts) flags |= CLONE_NEWUTS;
  if (spec.ns.ipc) flags |= CLONE_NEWIPC;
  if (spec.ns.network) flags |= CLONE_NEWNET;
  if (spec.ns.user) flags |= CLONE_NEWUSER;
  // CLONE_NEWCGROUP is left to the child: it unshares after joining its cgroups.

  // Namespaces joined by path: opened here (a bad path fails the create, naming it), joined by
  // the init first thing.
  std::vector<UniqueFd> join_fds;
  std::vector<std::pair<int, int>> join;
  for (const auto& [type, path] : spec.ns.paths) {
    int nstype = type == "network" ? CLONE_NEWNET : type == "ipc" ? CLONE_NEWIPC : CLONE_NEWUTS;
    ASSIGN_OR_RETURN(UniqueFd fd, fs::Open(path, O_RDONLY | O_CLOEXEC));
    join.emplace_back(fd.get(), nstype);
    join_fds.push_back(std::move(fd));
  }

  init::Plan plan;
  plan.spec = &spec;
  plan.join = join;
  plan.storage_dir = c.storage_dir;
  plan.sync_fd = child_sock.get();
  plan.fifo_fd = fifo.get();
  plan.start_now = opts.start;
  plan.cap_last_cap = CapLastCap();
  plan.seccomp = seccomp.empty() ? nullptr : &seccomp;
  plan.console_fd = console.get();

  UniqueFd cgroup_fd;
  if (std::string into = cg->CloneIntoPath(); !into.empty())
    cgroup_fd.reset(::open(into.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  // Without a user namespace the init joins its cgroups itself (cheap, see EnterSelf); in one
  // it has no rights on the host's cgroupfs, so we move it from outside.
  bool self_join = !spec.ns.user;
  if (self_join) plan.cgroup = cg.get();
  bool born_into = false;
  pid_t pid = CloneInit(flags, cgroup_fd.get(), &born_into);
  if (pid < 0) return Errno("clone container init (flags %#lx)", flags);
  if (pid == 0) {
    plan.born_into = born_into;
    init::Run(plan);  // never returns
  }
  child_sock.reset();
  console.reset();
  c.pid = pid;
  timer.Mark("clone");
  ScopeExit kill_init([&] {
    ::kill(pid, SIGKILL);
    while (::waitpid(pid, nullptr, 0) < 0 && errno == EINTR) {
    }
  });

  cgroup_fd.reset();
  if (!self_join) TRY_CTX(cg->AddProcess(pid, born_into), "container %s", opts.id.c_str());
  timer.Mark("cgroup-join");
  if (spec.ns.user) {
    TRY(WriteIdMap(pid, "uid_map", spec.uid_mappings));
    TRY(WriteIdMap(pid, "gid_map", spec.gid_mappings));
  }
  ScopeExit remove_veth([&] {
    if (!c.host_veth.empty()) (void)TeardownNetwork(c.host_veth);
  });
  if (!spec.net.address.empty()) {
    std::string veth = HostVethName(root, opts.id);
    // The id's state dir is ours (mkdir above): a veth of its name is an earlier container's of
    // this id whose namespace the kernel is still taking down (a checkpoint leaves that to it).
    if (LinkExists(veth))
      TRY_CTX(TeardownNetworkOfDeadNetns(veth), "container %s: the veth of its previous run",
              opts.id.c_str());
    TRY_CTX(SetupNetwork(pid, spec.net, veth), "container %s", opts.id.c_str());
    c.host_veth = veth;
  }
  if (spec.net.firewall())
    TRY_CTX(ApplyFirewall(pid, spec.net.allow_ports), "container %s", opts.id.c_str());
  timer.Mark("network");

  // The init may have failed already (its reply is queued): no SIGPIPE, read the reply.
  char go = 'G';
  (void)::send(parent_sock.get(), &go, 1, MSG_NOSIGNAL);
  init::Reply reply;
  ssize_t n;
  // ECONNRESET: the init failed and exited with our unread 'G' in its queue; the kernel reports
  // that once, then hands out its queued reply.
  do {
    n = ::read(parent_sock.get(), &reply, sizeof(reply));
  } while (n < 0 && (errno == EINTR || errno == ECONNRESET));
  bool execed = opts.start && n == 0;  // the close-on-exec socket closed: execve succeeded
  if (!execed && n != sizeof(reply))
    return MakeError(ErrorKind::kGeneric, 0, "container %s: init %d exited during setup",
                     opts.id.c_str(), pid);
  if (!execed && !reply.ok) {
    reply.msg[sizeof(reply.msg) - 1] = 0;
    return Error(static_cast<ErrorKind>(reply.kind), reply.err,
                 StrFormat("container %s: init: %s", opts.id.c_str(), reply.msg));
  }
  timer.Mark("init-setup");
  c.pid_start_time = ProcessStartTime(pid);
  TRY(c.Save());
  if (!opts.pid_file.empty()) TRY(fs::WriteFile(opts.pid_file, std::to_string(pid)));
  timer.Mark("save");
  LOG_DEBUG("create %s:%s", opts.id.c_str(), timer.text().c_str());
  kill_init.dismiss();
  unmount_storage.dismiss();
  remove_veth.dismiss();
  remove_cgroup.dismiss();
  remove_dir.dismiss();
  return c;
}

Result<Container> CreateFromRunOptions(const std::string& root, const std::string& id,
                                       const RunOptions& run, const std::string& pid_file,
                                       bool start) {
  CreateOptions co;
  co.root = root;
  co.id = id;
  co.pid_file = pid_file;
  co.start = start;
  return CreateFromRunOptions(co, run);
}

Result<Container> CreateFromRunOptions(const CreateOptions& base, const RunOptions& run) {
  const std::string& root_in = base.root;
  const std::string& id = base.id;
  TRY(ValidateId(id));
  if (run.args.empty()) return MakeError(ErrorKind::kUsage, 0, "no command given (-- CMD...)");
  if (run.rootfs.empty()) return MakeError(ErrorKind::kUsage, 0, "no --rootfs given");
  auto rootfs = AbsPath(run.rootfs);
  if (!rootfs.ok())
    return MakeError(ErrorKind::kNotFound, rootfs.error().sys_errno(), "rootfs %s",
                     run.rootfs.c_str());
  TRY(fs::MkdirAll(root_in, 0711));
  ASSIGN_OR_RETURN(std::string root, AbsPath(root_in));
  std::string dir = root + "/" + id;
  if (::mkdir(dir.c_str(), 0711) < 0) {
    if (errno == EEXIST)
      return MakeError(ErrorKind::kExists, EEXIST, "container %s already exists in %s", id.c_str(),
                       root.c_str());
    return Errno("mkdir %s", dir.c_str());
  }
  ScopeExit remove_dir([&] { (void)fs::RemoveAll(dir); });
  RunOptions o = run;
  o.rootfs = *rootfs;
  TRY(fs::WriteFile(dir + "/config.json", MakeConfig(o).dump(2) + "\n"));
  CreateOptions co = base;
  co.root = root;
  co.bundle = dir;
  auto c = Create(co);
  if (c.ok()) remove_dir.dismiss();
  return c;
}

Result<Container> Register(Container c, const std::string& config_json) {
  TRY(ValidateId(c.id));
  TRY(fs::MkdirAll(c.root, 0711));
  ASSIGN_OR_RETURN(c.root, AbsPath(c.root));
  if (::mkdir(c.dir().c_str(), 0711) < 0) {
    if (errno == EEXIST)
      return MakeError(ErrorKind::kExists, EEXIST, "container %s already exists in %s",
                       c.id.c_str(), c.root.c_str());
    return Errno("mkdir %s", c.dir().c_str());
  }
  ScopeExit remove_dir([&] { (void)fs::RemoveAll(c.dir()); });
  TRY(ParseSpec(config_json, c.bundle.empty() ? c.dir() : c.bundle));
  if (c.bundle.empty()) c.bundle = c.dir();
  TRY(fs::WriteFile(c.config_path(), config_json));
  if (c.created.empty()) c.created = NowRfc3339();
  if (c.pid_start_time == 0 && c.pid > 0) c.pid_start_time = ProcessStartTime(c.pid);
  TRY(c.Save());
  remove_dir.dismiss();
  return c;
}

Result<void> Start(const std::string& root, const std::string& id) {
  ASSIGN_OR_RETURN(Container c, Container::Load(root, id));
  Status s = c.CurrentStatus();
  if (s != Status::kCreated)
    return MakeError(ErrorKind::kGeneric, 0, "container %s is %s, not created", id.c_str(),
                     StatusName(s));
  int fd = ::open(c.fifo_path().c_str(), O_WRONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) return Errno("container %s: open %s", id.c_str(), c.fifo_path().c_str());
  // Unlink first: once the byte is read the container is running, and the status reads the
  // fifo's existence.
  ::unlink(c.fifo_path().c_str());
  char b = 'S';
  ssize_t n = ::write(fd, &b, 1);
  int err = errno;
  ::close(fd);
  if (n != 1) {
    errno = err;
    return Errno("container %s: write exec.fifo", id.c_str());
  }
  return Ok();
}

void BlockForwardedSignals() {
  sigset_t set;
  sigemptyset(&set);
  for (int s : {SIGINT, SIGTERM, SIGHUP}) sigaddset(&set, s);
  ::sigprocmask(SIG_BLOCK, &set, nullptr);
}

Result<int> Wait(const Container& c, bool forward_signals) {
  struct sigaction old[3], sa{};
  const int sigs[3] = {SIGINT, SIGTERM, SIGHUP};
  if (forward_signals) {
    g_forward_pid = c.pid;
    sa.sa_handler = ForwardSignal;
    sa.sa_flags = SA_RESTART;
    for (int i = 0; i < 3; ++i) sigaction(sigs[i], &sa, &old[i]);
    // Whatever arrived while blocked (BlockForwardedSignals) is delivered now, to the handler.
    sigset_t set;
    sigemptyset(&set);
    for (int s : sigs) sigaddset(&set, s);
    ::sigprocmask(SIG_UNBLOCK, &set, nullptr);
  }
  int status = 0;
  pid_t r;
  do {
    r = ::waitpid(c.pid, &status, 0);
  } while (r < 0 && errno == EINTR);
  int err = errno;
  if (forward_signals) {
    for (int i = 0; i < 3; ++i) sigaction(sigs[i], &old[i], nullptr);
    g_forward_pid = 0;
  }
  if (r < 0) {
    errno = err;
    return Errno("wait for container %s (pid %d)", c.id.c_str(), c.pid);
  }
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return 1;
}

Result<void> Pause(const std::string& root, const std::string& id) {
  ASSIGN_OR_RETURN(Container c, Container::Load(root, id));
  Status s = c.CurrentStatus();
  if (s != Status::kRunning)
    return MakeError(ErrorKind::kGeneric, 0, "container %s is %s, not running", id.c_str(),
                     StatusName(s));
  ASSIGN_OR_RETURN(std::unique_ptr<Cgroup> cg, OpenCgroup(c));
  return cg->Freeze();
}

Result<void> Resume(const std::string& root, const std::string& id) {
  ASSIGN_OR_RETURN(Container c, Container::Load(root, id));
  Status s = c.CurrentStatus();
  if (s != Status::kPaused)
    return MakeError(ErrorKind::kGeneric, 0, "container %s is %s, not paused", id.c_str(),
                     StatusName(s));
  ASSIGN_OR_RETURN(std::unique_ptr<Cgroup> cg, OpenCgroup(c));
  return cg->Thaw();
}

Result<void> Kill(const std::string& root, const std::string& id, int sig, bool all) {
  ASSIGN_OR_RETURN(Container c, Container::Load(root, id));
  Status s = c.CurrentStatus();
  if (s == Status::kStopped)
    return MakeError(ErrorKind::kGeneric, 0, "container %s is not running", id.c_str());
  if (all) {
    ASSIGN_OR_RETURN(std::unique_ptr<Cgroup> cg, OpenCgroup(c));
    ASSIGN_OR_RETURN(auto pids, cg->Pids());
    for (pid_t p : pids) ::kill(p, sig);
    return Ok();
  }
  // pidfd: the check that the pid is still our init and the kill cannot race a pid reuse.
  int pidfd = static_cast<int>(::syscall(SYS_pidfd_open, c.pid, 0));
  if (pidfd < 0) return Errno("container %s: pidfd_open %d", id.c_str(), c.pid);
  UniqueFd guard(pidfd);
  if (ProcessStartTime(c.pid) != c.pid_start_time)
    return MakeError(ErrorKind::kGeneric, 0, "container %s is not running", id.c_str());
  if (::syscall(SYS_pidfd_send_signal, pidfd, sig, nullptr, 0) < 0)
    return Errno("container %s: signal %d to pid %d", id.c_str(), sig, c.pid);
  return Ok();
}

Result<void> Delete(const std::string& root, const std::string& id, bool force,
                    const std::string& cgroup_parent, Deferral deferred) {
  TRY(ValidateId(id));
  auto loaded = Container::Load(root, id);
  std::string dir = root + "/" + id;
  if (force && !deferred.state_dir) TRY(RemoveDeferred(root, id));  // `delete -f ID`: a leftover
  if (!loaded.ok()) {
    // A half-created container (no state.json): with --force, remove what its id implies.
    if (!force || !fs::Exists(dir)) return std::move(loaded).error();
    ASSIGN_OR_RETURN(std::unique_ptr<Cgroup> cg, OpenCgroup(id, cgroup_parent));
    (void)KillAll(*cg, 0, 0);
    TRY(cg->Destroy());
    TRY(TeardownNetwork(HostVethName(root, id)));
    TRY(UnmountStorage(dir + "/storage"));
    return fs::RemoveAll(dir);
  }
  PhaseTimer timer;
  Container& c = *loaded;
  Status s = c.CurrentStatus();
  ASSIGN_OR_RETURN(std::unique_ptr<Cgroup> cg, OpenCgroup(c));
  if (s != Status::kStopped) {
    // A created container never ran its program: delete it without --force, as runc does.
    // kUnsupported (exit 6, "unsupported state"): the id is right, its state is not.
    if (!force && s != Status::kCreated)
      return MakeError(ErrorKind::kUnsupported, 0,
                       "container %s is %s: stop it first or use delete --force", id.c_str(),
                       StatusName(s));
    TRY(KillAll(*cg, c.pid, c.pid_start_time));
    timer.Mark("kill");
    WaitGone(c.pid, c.pid_start_time);
    timer.Mark("wait");
  } else {
    // The init is gone; its pid namespace took every other process with it, but with a shared
    // pid namespace stragglers may remain in the cgroup.
    auto pids = cg->Pids();
    if (pids.ok() && !pids->empty()) (void)KillAll(*cg, 0, 0);
    if (c.pid > 0) (void)::waitpid(c.pid, nullptr, WNOHANG);
  }
  // The lazy pager a restore left ends by itself once the tree is gone: waited for, so that
  // nothing of the container outlives its delete; one still there then is ours to end.
  if (c.pager_pid > 0 && ProcessStartTime(c.pager_pid) == c.pager_start_time) {
    WaitGone(c.pager_pid, c.pager_start_time);
    if (ProcessStartTime(c.pager_pid) == c.pager_start_time) {
      ::kill(c.pager_pid, SIGKILL);
      WaitGone(c.pager_pid, c.pager_start_time);
    }
    timer.Mark("pager");
  }
  TRY_CTX(cg->Destroy(), "delete %s", id.c_str());
  timer.Mark("cgroups");
  // The init is gone (killed and waited for above, or stopped): its netns is dying.
  if (!c.host_veth.empty() && !deferred.veth)
    TRY_CTX(TeardownNetworkOfDeadNetns(c.host_veth), "delete %s", id.c_str());
  timer.Mark("veth");
  if (!c.storage_dir.empty()) TRY_CTX(UnmountStorage(c.storage_dir), "delete %s", id.c_str());
  timer.Mark("storage");
  // A rename frees no block: the id is free all the same. An earlier deferred removal not yet
  // done (the target exists): this one is done here.
  std::string removed = DeferredDir(root, id);
  if (!deferred.state_dir || ::rename(dir.c_str(), removed.c_str()) < 0) TRY(fs::RemoveAll(dir));
  timer.Mark("state");
  LOG_DEBUG("delete %s:%s", id.c_str(), timer.text().c_str());
  return Ok();
}

Result<void> RemoveDeferred(const std::string& root, const std::string& id) {
  std::string removed = DeferredDir(root, id);
  struct stat st;
  if (::lstat(removed.c_str(), &st) < 0) return Ok();
  return fs::RemoveAll(removed);
}

Result<std::vector<pid_t>> Ps(const std::string& root, const std::string& id) {
  ASSIGN_OR_RETURN(Container c, Container::Load(root, id));
  ASSIGN_OR_RETURN(std::unique_ptr<Cgroup> cg, OpenCgroup(c));
  return cg->Pids();
}

Result<int> Exec(const std::string& root, const std::string& id, const ExecOptions& opts) {
  ASSIGN_OR_RETURN(Container c, Container::Load(root, id));
  if (c.CurrentStatus() != Status::kRunning)
    return MakeError(ErrorKind::kGeneric, 0, "container %s is %s, not running", id.c_str(),
                     StatusName(c.CurrentStatus()));
  ASSIGN_OR_RETURN(Spec spec, c.LoadSpec());
  ASSIGN_OR_RETURN(std::unique_ptr<Cgroup> cg, OpenCgroup(c));

  Process proc = opts.process ? *opts.process : spec.process;
  if (!opts.args.empty()) proc.args = opts.args;
  if (proc.args.empty()) return MakeError(ErrorKind::kUsage, 0, "exec: no command given");
  for (const auto& e : opts.env) {
    std::string key = e.substr(0, e.find('='));
    std::erase_if(proc.env, [&](const std::string& x) { return x.substr(0, x.find('=')) == key; });
    proc.env.push_back(e);
  }
  if (!opts.cwd.empty()) proc.cwd = opts.cwd;
  if (opts.uid) proc.uid = *opts.uid;
  if (opts.gid) proc.gid = *opts.gid;
  if (opts.tty) proc.terminal = true;
  if (!opts.process) proc.terminal = opts.tty;  // the container's own terminal is not ours
  UniqueFd console;
  if (proc.terminal) {
    if (opts.console_socket.empty())
      return MakeError(ErrorKind::kUsage, 0, "exec with a terminal: --console-socket is required");
    ASSIGN_OR_RETURN(console, ConnectConsoleSocket(opts.console_socket));
  }
  // The container's filter applies to every process in it, as runc does.
  ASSIGN_OR_RETURN(SeccompProgram seccomp, CompileSeccomp(spec.seccomp));

  int pidfd = static_cast<int>(::syscall(SYS_pidfd_open, c.pid, 0));
  if (pidfd < 0) return Errno("container %s: pidfd_open %d", id.c_str(), c.pid);
  UniqueFd guard(pidfd);
  if (ProcessStartTime(c.pid) != c.pid_start_time)
    return MakeError(ErrorKind::kGeneric, 0, "container %s is not running", id.c_str());

  int ns_flags = CLONE_NEWNS;
  if (c.ns.pid) ns_flags |= CLONE_NEWPID;
  if (c.ns.uts) ns_flags |= CLONE_NEWUTS;
  if (c.ns.ipc) ns_flags |= CLONE_NEWIPC;
  if (c.ns.network) ns_flags |= CLONE_NEWNET;
  if (c.ns.cgroup) ns_flags |= CLONE_NEWCGROUP;
  if (c.ns.user) ns_flags |= CLONE_NEWUSER;
  int last_cap = CapLastCap();
  const bool detach = opts.detach;

  // An intermediate child joins the cgroups and namespaces (so the caller's own namespaces stay
  // untouched), then forks the real process: a pid namespace applies only to children. The
  // socket carries, in order: the real process's host pid (an int32), then either an error
  // Reply or EOF (the process's execve closed the last copy; close-on-exec).
  int sp[2];
  if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sp) < 0) return Errno("socketpair");
  UniqueFd rd(sp[0]), wr(sp[1]);
  UniqueFd cgroup_fd;
  if (std::string into = cg->CloneIntoPath(); !into.empty())
    cgroup_fd.reset(::open(into.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  bool born_into = false;
  pid_t mid = CloneInit(SIGCHLD, cgroup_fd.get(), &born_into);
  if (mid < 0) return Errno("fork");
  if (mid == 0) {
    rd.reset();
    auto fail = [&](int err, const std::string& msg) {
      init::Reply r;
      r.err = err;
      snprintf(r.msg, sizeof(r.msg), "%s", msg.c_str());
      (void)!::write(wr.get(), &r, sizeof(r));
      _exit(126);
    };
    if (auto r = cg->EnterSelf(born_into); !r.ok())
      fail(r.error().sys_errno(), r.error().to_string());
    if (::setns(pidfd, ns_flags) < 0) fail(errno, StrFormat("setns into pid %d", c.pid));
    pid_t child = ::fork();
    if (child < 0) fail(errno, "fork");
    if (child == 0) {
      sigset_t none;
      sigemptyset(&none);
      ::sigprocmask(SIG_SETMASK, &none, nullptr);
      if (console.valid()) {
        const char* what = "";
        if (int rc = SetupConsole(console.get(), proc.console_height, proc.console_width,
                                  proc.uid, proc.gid, &what);
            rc < 0)
          fail(-rc, std::string("terminal: ") + what);
      }
      if (::chdir(proc.cwd.c_str()) < 0) fail(errno, "chdir " + proc.cwd);
      std::string exe = init::FindExecutable(proc.args[0], proc.env);
      if (exe.empty()) fail(ENOENT, proc.args[0] + ": not found in the container");
      if (proc.oom_score_adj) {
        int fd = ::open("/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC);
        std::string v = std::to_string(*proc.oom_score_adj);
        if (fd >= 0) (void)!::write(fd, v.data(), v.size());
        if (fd >= 0) ::close(fd);
      }
      std::vector<char*> argv, envp;
      for (auto& a : proc.args) argv.push_back(a.data());
      argv.push_back(nullptr);
      for (auto& e : proc.env) envp.push_back(e.data());
      envp.push_back(nullptr);
      ::umask(proc.umask ? *proc.umask : 022);
      ::syscall(SYS_close_range, 3U, ~0U, CLOSE_RANGE_CLOEXEC);  // only stdio passes in
      const char* what = "";
      if (int rc = init::ApplySeccompAndCredentials(proc, seccomp.empty() ? nullptr : &seccomp,
                                                    last_cap, &what);
          rc < 0)
        fail(-rc, what);
      ::execve(exe.c_str(), argv.data(), envp.data());  // success closes wr (CLOEXEC)
      fail(errno, "execve " + exe);
    }
    int32_t host_pid = child;
    (void)!::write(wr.get(), &host_pid, sizeof(host_pid));
    wr.reset();
    // Detached: the process is reparented to our caller's subreaper (or pid 1) when we exit.
    if (detach) _exit(0);
    int status = 0;
    while (::waitpid(child, &status, 0) < 0 && errno == EINTR) {
    }
    _exit(WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
  }
  wr.reset();
  console.reset();
  pid_t host_pid = 0;
  std::optional<Error> failed;
  for (;;) {
    init::Reply reply;
    ssize_t n = ::read(rd.get(), &reply, sizeof(reply));
    if (n < 0 && errno == EINTR) continue;
    if (n == sizeof(int32_t)) {
      int32_t p;
      memcpy(&p, &reply, sizeof(p));
      host_pid = p;
      continue;
    }
    if (n == sizeof(reply)) {
      reply.msg[sizeof(reply.msg) - 1] = 0;
      failed = Error(ErrorKind::kGeneric, reply.err,
                     StrFormat("exec in container %s: %s", id.c_str(), reply.msg));
    }
    break;  // EOF: exec'd
  }
  if (!failed && host_pid > 0 && !opts.pid_file.empty()) {
    auto w = fs::WriteFile(opts.pid_file, std::to_string(host_pid));
    if (!w.ok()) failed = std::move(w).error();
  }
  if (detach) {
    while (::waitpid(mid, nullptr, 0) < 0 && errno == EINTR) {
    }
    if (failed) return std::move(*failed);
    if (host_pid <= 0)
      return MakeError(ErrorKind::kGeneric, 0, "exec in container %s: no process", id.c_str());
    return static_cast<int>(host_pid);
  }
  int status = 0;
  while (::waitpid(mid, &status, 0) < 0 && errno == EINTR) {
  }
  if (failed) return std::move(*failed);
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  return 128 + WTERMSIG(status);
}

Result<void> Update(const std::string& root, const std::string& id, const Resources& res) {
  ASSIGN_OR_RETURN(Container c, Container::Load(root, id));
  if (c.CurrentStatus() == Status::kStopped)
    return MakeError(ErrorKind::kGeneric, 0, "container %s is not running", id.c_str());
  if (!res.devices.empty())
    return MakeError(ErrorKind::kUnsupported, 0,
                     "update %s: device rules are set at create only", id.c_str());
  ASSIGN_OR_RETURN(std::unique_ptr<Cgroup> cg, OpenCgroup(c));
  TRY_CTX(cg->Apply(res), "update %s", id.c_str());
  auto merge = [](auto& into, const auto& from) {
    if (from) into = from;
  };
  merge(c.resources.memory_limit, res.memory_limit);
  merge(c.resources.memory_swap, res.memory_swap);
  merge(c.resources.cpu_shares, res.cpu_shares);
  merge(c.resources.cpu_quota, res.cpu_quota);
  merge(c.resources.cpu_period, res.cpu_period);
  merge(c.resources.pids_limit, res.pids_limit);
  return c.Save();
}

Result<int> ParseSignal(const std::string& s_in) {
  std::string s = s_in;
  if (s.empty()) return MakeError(ErrorKind::kUsage, 0, "empty signal");
  if (isdigit(static_cast<unsigned char>(s[0]))) {
    char* end;
    long v = strtol(s.c_str(), &end, 10);
    if (*end || v < 0 || v >= 65)
      return MakeError(ErrorKind::kUsage, 0, "bad signal %s", s_in.c_str());
    return static_cast<int>(v);
  }
  for (auto& ch : s) ch = toupper(static_cast<unsigned char>(ch));
  if (s.rfind("SIG", 0) == 0) s = s.substr(3);
  for (int i = 1; i < NSIG; ++i) {
    const char* abbrev = sigabbrev_np(i);
    if (abbrev && s == abbrev) return i;
  }
  return MakeError(ErrorKind::kUsage, 0, "unknown signal %s", s_in.c_str());
}

}  // namespace godwit::runtime
