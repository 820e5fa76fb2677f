#include "migrate/dest.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include <signal.h>

#include <algorithm>
#include <nlohmann/json.hpp>
#include <optional>
#include <chrono>
#include <set>

#include "common/fs.h"
#include "common/log.h"
#include "common/priority.h"
#include "common/scope_exit.h"
#include "common/timing.h"
#include "images/image.h"
#include "migrate/image_stream.h"
#include "migrate/kernel.h"
#include "migrate/packet_hold.h"
#include "migrate/staging.h"
#include "common/netns.h"
#include "files/netlock.h"
#include "proto/fd.pb.h"
#include "runtime/container.h"
#include "runtime/network.h"
#include "runtime/runtime.h"

namespace godwit::migrate {
namespace {

using timing::Clock;
using timing::MsSince;

uint64_t MemAvailable() {
  auto mi = fs::ReadFile("/proc/meminfo");
  if (!mi.ok()) return 0;
  size_t at = mi->find("MemAvailable:");
  if (at == std::string::npos) return 0;
  return strtoull(mi->c_str() + at + 13, nullptr, 10) * 1024;
}

Result<void> SendAbort(Channel& ch, const std::string& reason) {
  mig::Frame f;
  f.mutable_abort()->set_reason(reason);
  return ch.Send(f);
}

Result<void> SendFailed(Channel& ch, const Error& e) {
  mig::Frame f;
  f.mutable_failed()->set_reason(e.to_string());
  f.mutable_failed()->set_exit_code(e.exit_code());
  return ch.Send(f);
}

// Where sessions stage their images: --staging, or memory-backed when there is room
// (migrate/staging.h).
std::vector<std::string> StagingBases(const DestOptions& o) {
  if (!o.staging.empty()) return {o.staging};
  return StagingCandidates(o.root, "incoming");
}

// Fault injection (DestOptions::fault): true when the caller must stop as if the connection
// broke (the "close" action); "kill" does not return.
bool Fault(const DestOptions& o, Channel& ch, const char* phase) {
  if (o.fault.empty()) return false;
  size_t colon = o.fault.find(':');
  if (o.fault.substr(0, colon) != phase) return false;
  std::string action = colon == std::string::npos ? "kill" : o.fault.substr(colon + 1);
  LOG_WARN("fault injection: %s at %s", action.c_str(), phase);
  if (action == "kill") raise(SIGKILL);
  if (action == "corrupt") {
    // Garbage where the next frame header belongs (inside TLS: the framing is what breaks).
    std::string junk(64, '\x5a');
    (void)ch.SendRaw(junk.data(), junk.size());
  }
  ch.Close();
  return true;
}

struct Restored {
  pid_t pid = 0;
  std::string host_veth;
  std::string netlock_table;  // container::RestoreResult::netlock_table
  double tree_ms = 0, memory_ms = 0, env_ms = 0;
  uint64_t lazy_bytes = 0;
  std::vector<std::pair<std::string, double>> steps;  // the restore command's phases, flattened
};

void Flatten(const nlohmann::json& j, const std::string& prefix,
             std::vector<std::pair<std::string, double>>* out) {
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (it->is_object())
      Flatten(*it, prefix + it.key() + ".", out);
    else if (it->is_number())
      out->emplace_back(prefix + it.key(), it->get<double>());
  }
}

// The restore left the namespace quiet and the connections locked (--keep-locked): the table
// it names (`netlock_table`: the environment made ahead's, locking the whole namespace), else
// the one files-netlock.img names, or kQuietLockName where no connection was locked, in the
// restored container's net namespace. Adopted before the commit, so that opening it after the
// commit is one nft call.
Result<std::unique_ptr<files::NetLock>> AdoptRestoredLock(const std::string& staging, pid_t pid,
                                                          const std::string& named) {
  std::string img_dir = staging + "/tree";
  std::string name = named.empty() ? files::kQuietLockName : named;
  if (named.empty() && fs::Exists(img_dir + "/files-netlock.img")) {
    ASSIGN_OR_RETURN(images::ImageSet set, images::ImageSet::OpenUnverified(img_dir));
    img::NetLock nl;
    TRY(set.ReadOne("files-netlock.img", &nl));
    name = nl.table();
  }
  ASSIGN_OR_RETURN(UniqueFd ns, fs::Open(StrFormat("/proc/%d/ns/net", pid), O_RDONLY | O_CLOEXEC));
  std::unique_ptr<files::NetLock> lock = files::OpenNetLock(name);
  // Also libnftables' set-up and the context the switch's Open uses, made now.
  TRY_CTX(lock->Adopt(ns.get()), "adopt the restored connections' lock");
  return lock;
}

std::string GodwitBin(const DestOptions& o) {
  if (!o.godwit_bin.empty()) return o.godwit_bin;
  char buf[4096];
  ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  if (n <= 0) return "godwit";
  std::string self(buf, n);
  return self.substr(0, self.rfind('/') + 1) + "godwit";
}

// `godwit --root R [--cgroup-parent P] --json restore ID --image-path DIR --detach [--bridge B]`
// `godwit restore` started ahead, during the pre-copy: its exec, dynamic linking and start-up
// (10-15 ms here) happen before the blackout. It waits on fd 3 (`--wait-fd 3`) for one byte;
// EOF instead (the migration ended otherwise) makes it exit at once, having done nothing.
class PendingRestore {
 public:
  static Result<std::unique_ptr<PendingRestore>> Spawn(const DestOptions& o, const std::string& id,
                                                       const std::string& staging);
  ~PendingRestore();
  // Raises it to the blackout's priority (common/priority.h): the tree it forks inherits that
  // until each process takes its own scheduling attributes from the images.
  void Boost() { (void)RaisePriority(pid_); }
  // After a round: it parses the page maps that arrived (restore/load.h PreloadPageMaps).
  void Preload() { Tell('p'); }
  // The container's own images are in: it makes the environment while the tree's arrive
  // (container::PrepareRestore).
  void Ahead() { Tell('e'); }
  // Lets it run; its result.
  Result<Restored> Go();
  Result<Restored> Parse(const std::string& json_line) const;

 private:
  PendingRestore() = default;
  void Tell(char c) {
    if (go_.valid()) (void)!write(go_.get(), &c, 1);
  }
  DestOptions o_;
  std::string id_;
  pid_t pid_ = -1;
  UniqueFd go_, out_, err_;
};

Result<std::unique_ptr<PendingRestore>> PendingRestore::Spawn(const DestOptions& o,
                                                              const std::string& id,
                                                              const std::string& staging) {
  std::vector<std::string> args = {GodwitBin(o), "--root", o.root, "--json"};
  // A daemon at debug level: the restore's debug lines too (its steps on the monotonic clock),
  // copied into the daemon's log once it ran (~100 lines: the pipe holds them meanwhile).
  if (log::GetLevel() >= log::kDebug) args.push_back("--debug");
  if (!o.cgroup_parent.empty()) {
    args.push_back("--cgroup-parent");
    args.push_back(o.cgroup_parent);
  }
  // Not announced yet: until the source commits, the segment must keep sending to the source
  // (frozen and locked there, its frames held); ServeMigration announces after the commit.
  for (const char* a : {"restore", id.c_str(), "--image-path", staging.c_str(), "--detach",
                        "--no-announce", "--keep-locked", "--wait-fd", "3"})
    args.push_back(a);
  if (o.lazy) args.push_back("--lazy");
  // The staging goes when the migration ends: its page files may be freed as the pager installs
  // them (the container's new pages then come from that memory, restore/lazy.h).
  if (o.lazy && o.discard_staging && !o.keep_staging) args.push_back("--discard-pages");
  if (!o.bridge.empty()) {
    args.push_back("--bridge");
    args.push_back(o.bridge);
  }
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  int out[2], err[2], go[2];
  if (pipe2(out, O_CLOEXEC) < 0) return Errno("pipe");
  if (pipe2(err, O_CLOEXEC) < 0) {
    close(out[0]);
    close(out[1]);
    return Errno("pipe");
  }
  if (pipe2(go, O_CLOEXEC) < 0) {
    for (int fd : {out[0], out[1], err[0], err[1]}) close(fd);
    return Errno("pipe");
  }
  std::unique_ptr<PendingRestore> p(new PendingRestore());
  p->o_ = o;
  p->id_ = id;
  p->out_ = UniqueFd(out[0]);
  p->err_ = UniqueFd(err[0]);
  p->go_ = UniqueFd(go[1]);
  pid_t pid = fork();
  if (pid < 0) {
    for (int fd : {out[1], err[1], go[0]}) close(fd);
    return Errno("fork");
  }
  if (pid == 0) {
    int null = open("/dev/null", O_RDONLY);
    dup2(null, 0);
    dup2(out[1], 1);
    dup2(err[1], 2);
    dup2(go[0], 3);
    close_range(4, ~0U, 0);
    signal(SIGPIPE, SIG_DFL);  // godwitd ignores it; a fresh program should not inherit that
    execv(argv[0], argv.data());
    _exit(127);
  }
  for (int fd : {out[1], err[1], go[0]}) close(fd);
  p->pid_ = pid;
  return p;
}

PendingRestore::~PendingRestore() {
  if (pid_ <= 0) return;
  if (log::GetLevel() >= log::kDebug && err_.valid()) {
    // What it wrote (its detached lazy pager keeps the pipe open: no end of file to wait for).
    (void)fcntl(err_.get(), F_SETFL, O_NONBLOCK);
    std::string text;
    char buf[4096];
    ssize_t n;
    while ((n = read(err_.get(), buf, sizeof(buf))) > 0) text.append(buf, n);
    for (const auto& line : fs::Split(text, '\n'))
      if (!line.empty()) LOG_DEBUG("restore of %s: %s", id_.c_str(), line.c_str());
  }
  go_.reset();  // EOF: it exits without restoring
  out_.reset();
  err_.reset();
  while (waitpid(pid_, nullptr, 0) < 0 && errno == EINTR) {
  }
}

Result<Restored> PendingRestore::Go() {
  if (pid_ <= 0) return MakeError(ErrorKind::kGeneric, 0, "restore of %s: already run", id_.c_str());
  char one = 1;
  if (write(go_.get(), &one, 1) != 1) return Errno("start the restore of %s", id_.c_str());
  go_.reset();
  std::string o_text, e_text;
  // On success it prints one JSON line once the container runs, then exits: its exit (freeing
  // its memory, a few ms) is not waited for inside the blackout; the destructor reaps it.
  {
    char buf[4096];
    ssize_t n;
    while (o_text.find('\n') == std::string::npos &&
           ((n = read(out_.get(), buf, sizeof(buf))) > 0 || (n < 0 && errno == EINTR)))
      if (n > 0) o_text.append(buf, n);
    if (o_text.find('\n') != std::string::npos) {
      auto r = Parse(o_text);
      if (r.ok()) return r;
    }
  }
  // stderr is small (one error); read stdout to the end first, then stderr.
  for (auto [fd, into] :
       {std::pair<int, std::string*>{out_.get(), &o_text}, {err_.get(), &e_text}}) {
    char buf[4096];
    ssize_t n;
    while ((n = read(fd, buf, sizeof(buf))) > 0 || (n < 0 && errno == EINTR))
      if (n > 0) into->append(buf, n);
  }
  out_.reset();
  err_.reset();
  int st = 0;
  while (waitpid(pid_, &st, 0) < 0 && errno == EINTR) {
  }
  pid_ = -1;
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
    ErrorKind kind = WIFEXITED(st) && WEXITSTATUS(st) >= 1 && WEXITSTATUS(st) <= 8
                         ? static_cast<ErrorKind>(WEXITSTATUS(st))
                         : ErrorKind::kGeneric;
    std::string msg = e_text;
    try {
      auto j = nlohmann::json::parse(e_text);
      if (j.contains("error")) msg = j["error"].get<std::string>();
    } catch (...) {
    }
    return MakeError(kind, 0, "%s", fs::Trim(msg).c_str());
  }
  return Parse(o_text);
}

Result<Restored> PendingRestore::Parse(const std::string& o_text) const {
  Restored r;
  try {
    auto j = nlohmann::json::parse(o_text);
    r.pid = j.value("pid", 0);
    r.netlock_table = j.value("netlock_table", std::string());
    r.lazy_bytes = j.value("lazy_bytes", uint64_t{0});
    r.steps.emplace_back("restore.hot_bytes",
                         static_cast<double>(j.value("hot_bytes", uint64_t{0})));
    r.steps.emplace_back("restore.lazy_prepared_bytes",
                         static_cast<double>(j.value("lazy_prepared_bytes", uint64_t{0})));
    r.steps.emplace_back("restore.preloaded_pagemaps",
                         static_cast<double>(j.value("preloaded_pagemaps", uint64_t{0})));
    r.steps.emplace_back("restore.prechecked_chunks",
                         static_cast<double>(j.value("prechecked_chunks", uint64_t{0})));
    if (j.contains("phases")) {
      r.tree_ms = j["phases"].value("tree_ms", 0.0);
      r.memory_ms = j["phases"]["tree"].value("memory_ms", 0.0);
      r.env_ms = j["phases"].value("env_ms", 0.0);
      Flatten(j["phases"], "restore.", &r.steps);
    }
  } catch (...) {
    return MakeError(ErrorKind::kGeneric, 0, "godwit restore printed no JSON: %s", o_text.c_str());
  }
  if (r.pid <= 0)
    return MakeError(ErrorKind::kGeneric, 0, "godwit restore printed no pid: %s", o_text.c_str());
  auto c = runtime::Container::Load(o_.root, id_);
  if (c.ok()) r.host_veth = c->host_veth;
  return r;
}

}  // namespace

namespace {

int CleanupDeadSessionsIn(const DestOptions& o, const std::string& base,
                          const std::vector<pid_t>& live) {
  auto names = fs::ListDir(base);
  if (!names.ok()) return 0;
  int cleaned = 0;
  for (const auto& n : *names) {
    size_t dot = n.rfind('.');
    if (dot == std::string::npos || dot == 0) continue;
    pid_t pid = atoi(n.c_str() + dot + 1);
    if (pid <= 0) continue;
    if (std::find(live.begin(), live.end(), pid) != live.end()) continue;
    if (pid != getpid() && kill(pid, 0) == 0 && live.empty()) continue;  // at start: still alive
    std::string id = n.substr(0, dot);
    std::string dir = base + "/" + n;
    if (!fs::Exists(dir + "/committed") && runtime::ValidateId(id).ok() &&
        fs::Exists(o.root + "/" + id)) {
      auto c = runtime::Container::Load(o.root, id);
      if (c.ok() && c->pid > 0) (void)Silence(c->pid);  // its clients live on the source
      if (c.ok()) (void)Unplug(c->host_veth);
      auto r = runtime::Delete(o.root, id, /*force=*/true);
      if (r.ok())
        LOG_INFO("removed %s, restored by session %d which died before the commit", id.c_str(),
                 pid);
      else
        LOG_ERROR("remove %s left by session %d: %s", id.c_str(), pid,
                  r.error().to_string().c_str());
    }
    if (o.keep_staging) continue;  // kept for debugging (godwitd --keep-staging)
    (void)fs::RemoveAll(dir);
    cleaned++;
  }
  if (o.staging.empty()) RemoveStagingIfEmpty(base);
  return cleaned;
}

}  // namespace

int CleanupDeadSessions(const DestOptions& o, const std::vector<pid_t>& live) {
  int cleaned = 0;
  for (const auto& base : StagingBases(o)) cleaned += CleanupDeadSessionsIn(o, base, live);
  return cleaned;
}

std::vector<std::string> LocalKernelFeatures(const DestOptions& o) {
  return KernelFeatureNames(o.root);
}

// The announcement of a container's addresses, prepared (nullopt: nothing to announce, a
// container without a network of godwit's).
Result<std::optional<runtime::Announcement>> PrepareAnnounce(const std::string& root,
                                                             const std::string& id) {
  ASSIGN_OR_RETURN(runtime::Container c, runtime::Container::Load(root, id));
  if (c.net.address.empty() || c.pid <= 0) return std::optional<runtime::Announcement>();
  ASSIGN_OR_RETURN(runtime::Announcement a, runtime::Announcement::Prepare(c.pid, "eth0"));
  return std::optional<runtime::Announcement>(std::move(a));
}

Result<int> AnnounceAddresses(const std::string& root, const std::string& id) {
  ASSIGN_OR_RETURN(std::optional<runtime::Announcement> a, PrepareAnnounce(root, id));
  if (!a) return 0;
  TRY(a->Send(2));
  return static_cast<int>(a->addresses().size());
}

std::string CheckHello(const mig::Hello& h, const DestOptions& o) {
  if (h.protocol_version() != mig::VERSION_CURRENT)
    return StrFormat("protocol version %u, this host speaks %d (godwit %s)", h.protocol_version(),
                     mig::VERSION_CURRENT, GODWIT_VERSION);
  if (h.image_format_version() != images::kFormatVersion)
    return StrFormat("image format version %u, this host reads %u", h.image_format_version(),
                     images::kFormatVersion);
  struct utsname u;
  if (uname(&u) == 0 && !h.machine().empty() && h.machine() != u.machine)
    return StrFormat("machine %s, this host is %s", h.machine().c_str(), u.machine);
  {
    img::Inventory inv;
    for (const auto& f : h.cpu_features()) inv.add_cpu_features(f);
    inv.set_xcr0(h.xcr0());
    auto r = images::CheckCpuFeatures(inv);
    if (!r.ok()) return r.error().message();
  }
  {
    std::vector<std::string> have = LocalKernelFeatures(o);
    std::set<std::string> here(have.begin(), have.end());
    std::string missing;
    for (const auto& f : h.kernel_features())
      if (!here.count(f)) missing += (missing.empty() ? "" : ", ") + f;
    if (!missing.empty()) return "this kernel lacks features the container relies on: " + missing;
  }
  if (runtime::ValidateId(h.container_id()).ok() == false)
    return StrFormat("bad container id \"%s\"", h.container_id().c_str());
  if (fs::Exists(o.root + "/" + h.container_id()))
    return StrFormat("container %s already exists under %s", h.container_id().c_str(),
                     o.root.c_str());
  struct stat rst;
  if (h.rootfs().empty() || ::stat(h.rootfs().c_str(), &rst) < 0 || !S_ISDIR(rst.st_mode))
    return StrFormat("rootfs %s does not exist on this host", h.rootfs().c_str());
  uint64_t avail = MemAvailable();
  // The staging copy of the images and the restored memory: twice the resident size, plus slack.
  uint64_t need = 2 * h.memory_bytes() + (64ull << 20);
  if (avail < need)
    return StrFormat("no room: the container needs ~%llu MiB here, %llu MiB available",
                     static_cast<unsigned long long>(need >> 20),
                     static_cast<unsigned long long>(avail >> 20));
  return "";
}

Result<DestResult> ServeMigration(Channel& ch, const DestOptions& o) {
  DestResult res;
  ch.set_timeout(o.timeout_s);
  mig::Frame f;
  std::string payload;
  TRY_CTX(ch.Recv(&f, &payload), "handshake");
  if (!f.has_hello())
    return MakeError(ErrorKind::kPeer, 0, "peer %s: expected hello, got %s", ch.peer().c_str(),
                     FrameKind(f));
  const mig::Hello hello = f.hello();
  res.id = hello.container_id();
  {
    mig::Frame w;
    mig::Welcome* wl = w.mutable_welcome();
    std::string why = CheckHello(hello, o);
    wl->set_accepted(why.empty());
    wl->set_reason(why);
    wl->set_protocol_version(mig::VERSION_CURRENT);
    wl->set_godwit_version(GODWIT_VERSION);
    struct utsname u;
    if (uname(&u) == 0) wl->set_hostname(u.nodename);
    for (auto& k : LocalKernelFeatures(o)) wl->add_kernel_features(k);
    for (auto& c : images::CpuFeatures()) wl->add_cpu_features(c);
    wl->set_mem_available(MemAvailable());
    wl->set_takes_switchover(true);
    wl->set_takes_env_ahead(true);
    if (why.empty() && Fault(o, ch, "welcome"))
      return MakeError(ErrorKind::kPeer, 0, "fault injected at welcome");
    TRY_CTX(ch.Send(w), "handshake");
    if (!why.empty())
      return MakeError(ErrorKind::kPeer, 0, "refused migration of %s from %s: %s",
                       hello.container_id().c_str(), ch.peer().c_str(), why.c_str());
  }
  LOG_INFO("migration of %s from %s accepted", res.id.c_str(), ch.peer().c_str());

  // The session's record (its directory; `committed` in it once the copy here is the only one)
  // goes where a restarted daemon looks for the records of sessions that died (ChooseStaging).
  // The images go to this session's huge-page tmpfs when it has room (they go with the
  // session), else beside the record (migrate/staging.h).
  const std::string huge = o.staging.empty() && !o.keep_staging
                               ? HugeStaging("incoming", hello.memory_bytes())
                               : std::string();
  const std::string base =
      o.staging.empty()
          ? ChooseStaging(o.root, "incoming", huge.empty() ? hello.memory_bytes() : 0)
          : o.staging;
  const std::string record = StrFormat("%s/%s.%d", base.c_str(), res.id.c_str(), getpid());
  const std::string staging =
      huge.empty() ? record : StrFormat("%s/%s.%d", huge.c_str(), res.id.c_str(), getpid());
  TRY(MakeStaging(record));
  ScopeExit rm_staging([&] {
    if (o.keep_staging) {
      LOG_INFO("images kept in %s", staging.c_str());
      return;
    }
    for (const auto& d : {staging, record}) {
      auto r = fs::RemoveAll(d);
      if (!r.ok()) LOG_WARN("remove %s: %s", d.c_str(), r.error().to_string().c_str());
    }
    if (o.staging.empty()) RemoveStagingIfEmpty(base);
  });
  if (staging != record) TRY(MakeStaging(staging));
  FileReceiver rx(staging);
  bool restored = false;
  bool committed = false;
  pid_t restored_pid = 0;
  std::string restored_veth;
  std::unique_ptr<PendingRestore> pending;  // started at the first round, run at Final
  ScopeExit undo([&] {
    if (!restored || committed) return;
    // Restored but never committed: the source may still run it. Ours goes, silenced first so
    // that closing its connections sends the clients nothing (no RST: they live on the source),
    // and off the segment before it dies (Unplug).
    if (restored_pid > 0) (void)Silence(restored_pid);
    if (auto u = Unplug(restored_veth); !u.ok())
      LOG_WARN("migration of %s: %s", res.id.c_str(), u.error().to_string().c_str());
    auto r = runtime::Delete(o.root, res.id, /*force=*/true);
    if (!r.ok())
      LOG_ERROR("migration of %s: remove the uncommitted copy: %s", res.id.c_str(),
                r.error().to_string().c_str());
    else
      LOG_INFO("migration of %s: uncommitted copy removed", res.id.c_str());
  });
  auto round_start = Clock::now();
  uint64_t round_bytes0 = 0;
  PriorityBoost boost;  // from the Switchover (the freeze) until this session ends
  // The files of the frames so far are all written; else the source is told why.
  auto drained = [&]() -> Result<void> {
    if (auto d = rx.Drain(); !d.ok()) {
      (void)SendAbort(ch, d.error().to_string());
      return std::move(d.error().wrap(StrFormat("migration of %s", res.id.c_str())));
    }
    return Ok();
  };
  for (;;) {
    auto r = ch.Recv(&f, &payload);
    if (!r.ok()) return std::move(r.error().wrap(StrFormat("migration of %s", res.id.c_str())));
    switch (f.msg_case()) {
      case mig::Frame::kFile: {
        auto a = rx.ApplyAsync(f.file(), &payload);  // payload gets a written buffer back
        if (!a.ok()) {
          (void)SendAbort(ch, a.error().to_string());
          return std::move(a.error().wrap(StrFormat("migration of %s", res.id.c_str())));
        }
        break;
      }
      case mig::Frame::kRoundEnd: {
        TRY(drained());
        if (Fault(o, ch, "round")) return MakeError(ErrorKind::kPeer, 0, "fault injected at round");
        if (!pending) {
          auto sp = PendingRestore::Spawn(o, res.id, staging);
          if (sp.ok())
            pending = std::move(*sp);
          else
            LOG_WARN("migration of %s: starting the restore ahead: %s", res.id.c_str(),
                     sp.error().to_string().c_str());
        }
        if (pending) pending->Preload();  // the round's files are all written (Drain)
        mig::Frame ack;
        ack.mutable_round_ack()->set_round(f.round_end().round());
        ack.mutable_round_ack()->set_bytes_applied(rx.bytes() - round_bytes0);
        ack.mutable_round_ack()->set_apply_ms(MsSince(round_start));
        TRY(ch.Send(ack));
        res.rounds++;
        round_bytes0 = rx.bytes();
        round_start = Clock::now();
        break;
      }
      case mig::Frame::kSwitchover: {
        // The blackout starts: this thread, the receiver's writer and the restore waiting to
        // go do its work (common/priority.h). The boost ends with the session (after Done).
        boost.Add(0);
        if (pid_t w = rx.writer_tid(); w > 0) boost.Add(w);
        if (pending) pending->Boost();
        break;
      }
      case mig::Frame::kEnvReady: {
        TRY(drained());
        if (pending) pending->Ahead();
        break;
      }
      case mig::Frame::kFinal: {
        if (auto d = rx.Drain(); !d.ok()) {
          (void)SendFailed(ch, d.error());
          return std::move(d.error().wrap(StrFormat("migration of %s", res.id.c_str())));
        }
        if (rx.open_files() != 0 ||
            !fs::Exists(staging + "/container/inventory.img")) {
          Error e = MakeError(ErrorKind::kPeer, 0, "final state incomplete (%zu files open%s)",
                              rx.open_files(),
                              fs::Exists(staging + "/container/inventory.img")
                                  ? ""
                                  : ", no container inventory");
          (void)SendFailed(ch, e);
          return e;
        }
        if (Fault(o, ch, "final")) return MakeError(ErrorKind::kPeer, 0, "fault injected at final");
        auto t0 = Clock::now();
        // The restore runs in a godwit process of its own: a fresh process image (no
        // daemon state, fds or signal setup of the session leak into the restored tree).
        if (!pending) {
          auto sp = PendingRestore::Spawn(o, res.id, staging);
          if (!sp.ok()) {
            (void)SendFailed(ch, sp.error());
            return std::move(sp.error().wrap(StrFormat("migration of %s", res.id.c_str())));
          }
          pending = std::move(*sp);
          if (!boost.empty()) pending->Boost();
        }
        auto rr = pending->Go();
        res.restore_ms = MsSince(t0);
        auto t_prep = Clock::now();
        if (!rr.ok()) {
          LOG_ERROR("migration of %s: restore failed: %s", res.id.c_str(),
                    rr.error().to_string().c_str());
          (void)SendFailed(ch, rr.error());
          return std::move(rr.error().wrap(StrFormat("migration of %s: restore", res.id.c_str())));
        }
        restored = true;
        restored_pid = rr->pid;
        restored_veth = rr->host_veth;
        // From now on every frame the host sends into the restored container is kept too: after
        // the commit the address is announced before the connections are unlocked, and what
        // arrives in between (dropped by the lock) is replayed after the source's frames.
        // Both packet sockets live until this session ends: closing one waits for an RCU grace
        // period (packet_hold.h), which must not fall inside the switch.
        timing::PhaseTimer prep;
        std::optional<PacketHold> own_hold;
        std::optional<FrameInjector> injector;
        if (!rr->host_veth.empty()) {
          auto h = PacketHold::Start(rr->host_veth);
          if (h.ok())
            own_hold = std::move(*h);
          else
            LOG_WARN("migration of %s: holding frames at %s: %s", res.id.c_str(),
                     rr->host_veth.c_str(), h.error().to_string().c_str());
          auto in = FrameInjector::Open(rr->host_veth);
          if (in.ok())
            injector = std::move(*in);
          else
            LOG_WARN("migration of %s: %s", res.id.c_str(), in.error().to_string().c_str());
        }
        prep.Lap("dest.prep_hold_ms");
        // What the switch will do, prepared now: the announcement and the lock's release.
        std::optional<runtime::Announcement> arp;
        {
          auto a = PrepareAnnounce(o.root, res.id);
          if (a.ok())
            arp = std::move(*a);
          else
            LOG_WARN("migration of %s: announce: %s", res.id.c_str(),
                     a.error().to_string().c_str());
        }
        prep.Lap("dest.prep_arp_ms");
        std::unique_ptr<files::NetLock> restored_lock;
        const std::string restored_table = rr->netlock_table;
        {
          auto l = AdoptRestoredLock(staging, rr->pid, rr->netlock_table);
          if (l.ok())
            restored_lock = std::move(*l);
          else
            LOG_ERROR("migration of %s: %s", res.id.c_str(), l.error().to_string().c_str());
        }
        mig::Frame done;
        mig::Restored* rs = done.mutable_restored();
        rs->set_init_pid(rr->pid);
        rs->mutable_phases()->set_total_ms(res.restore_ms);
        rs->mutable_phases()->set_tree_ms(rr->tree_ms);
        rs->mutable_phases()->set_memory_ms(rr->memory_ms);
        rs->mutable_phases()->set_env_ms(rr->env_ms);
        rs->mutable_phases()->set_lazy_bytes(rr->lazy_bytes);
        auto& steps = *rs->mutable_phases()->mutable_steps();
        for (const auto& [k, v] : rr->steps) steps[k] = v;
        steps["dest.restore_process_ms"] = res.restore_ms;
        steps["dest.boosted"] = boost.empty() ? 0 : 1;  // common/priority.h
        steps["dest.huge_staging"] = huge.empty() ? 0 : 1;  // migrate/staging.h
        prep.Lap("dest.prep_lock_ms");
        for (const auto& [k, v] : prep.phases()) steps[k] = v;
        steps["dest.prepare_switch_ms"] = MsSince(t_prep);
        if (Fault(o, ch, "restored"))
          return MakeError(ErrorKind::kPeer, 0, "fault injected at restored");
        TRY(ch.Send(done));
        ch.set_timeout(o.timeout_s);
        auto c = ch.Recv(&f, &payload);
        if (!c.ok()) return std::move(c.error().wrap("waiting for the commit"));
        std::string held_frames;
        while (f.has_held()) {
          // Frames the source held while frozen: delivered once the connections are unlocked.
          held_frames += payload;
          c = ch.Recv(&f, &payload);
          if (!c.ok()) return std::move(c.error().wrap("waiting for the commit"));
        }
        if (!f.has_commit())
          return MakeError(ErrorKind::kPeer, 0, "migration of %s: expected commit, got %s%s%s",
                           res.id.c_str(), FrameKind(f), f.has_abort() ? ": " : "",
                           f.has_abort() ? f.abort().reason().c_str() : "");
        committed = true;
        res.committed = true;
        auto ta = Clock::now();
        // A session killed from here on leaves the container: it is the only copy now.
        (void)fs::WriteFile(record + "/committed", "");
        // Now the container may speak. First the address: the segment sends to this port from
        // now on (our hold keeps what arrives while the connections are still locked). Then the
        // connections unlocked, the frames the source held and ours replayed, in that order.
        if (arp) {
          // The first address only (one frame teaches the segment the port); the others go
          // after Done: 2-6 more frames, each crossing the bridge to every port inside sendto.
          auto an = arp->SendFirst(2);
          if (!an.ok())
            LOG_WARN("migration of %s: %s", res.id.c_str(), an.error().to_string().c_str());
        }
        double arp_ms = MsSince(ta);
        auto tu = Clock::now();
        Result<void> ul = Ok();
        if (restored_lock) ul = restored_lock->Open();  // the table goes after Done
        if (!restored_lock || !ul.ok()) {
          // Not adopted before the commit, or its rules would not go: the lock removed the slow
          // way now (its hooks unregistered: a grace period), rather than leave the only copy of
          // the container locked (with the environment made ahead, deaf and mute).
          if (!ul.ok())
            LOG_ERROR("migration of %s: unlock the restored connections: %s", res.id.c_str(),
                      ul.error().to_string().c_str());
          auto again = AdoptRestoredLock(staging, restored_pid, restored_table);
          ul = again.ok() ? (*again)->Unlock() : Result<void>(again.error());
          restored_lock.reset();
        }
        double unlock_ms = MsSince(tu);
        auto tr = Clock::now();
        int held_here = 0;
        if (!ul.ok())
          LOG_ERROR("migration of %s: remove the restored connections' lock: %s", res.id.c_str(),
                    ul.error().to_string().c_str());
        if (own_hold) {
          auto d = own_hold->Drain(&held_frames);
          if (!d.ok())
            LOG_WARN("migration of %s: frames held here: %s", res.id.c_str(),
                     d.error().to_string().c_str());
          else
            held_here = *d;
        }
        if (!held_frames.empty() && injector) {
          auto n = injector->Send(held_frames);
          if (!n.ok())
            LOG_WARN("migration of %s: held frames: %s", res.id.c_str(),
                     n.error().to_string().c_str());
          else
            res.held_packets += *n;
        }
        double replay_ms = MsSince(tr);
        res.announce_ms = MsSince(ta);
        mig::Frame d;
        d.mutable_done()->set_announce_ms(res.announce_ms);
        d.mutable_done()->set_arp_ms(arp_ms);
        d.mutable_done()->set_unlock_ms(unlock_ms);
        d.mutable_done()->set_replay_ms(replay_ms);
        d.mutable_done()->set_held_here(held_here);
        auto s = ch.Send(d);
        if (!s.ok()) LOG_WARN("migration of %s: done: %s", res.id.c_str(),
                              s.error().to_string().c_str());
        if (arp) {
          auto an = arp->SendRest(2);
          if (!an.ok())
            LOG_WARN("migration of %s: %s", res.id.c_str(), an.error().to_string().c_str());
        }
        if (restored_lock) {
          auto u = restored_lock->Unlock();
          if (!u.ok())
            LOG_WARN("migration of %s: %s", res.id.c_str(), u.error().to_string().c_str());
        }
        // The environment made ahead left its emptied quiet table (files::kAheadQuietName),
        // unless that was the lock just removed (a lock that found no table goes on quietly).
        if (auto ns = netns::Open(restored_pid);
            ns.ok() && restored_table != files::kAheadQuietName) {
          auto ahead = files::OpenNetLock(files::kAheadQuietName);
          if (ahead->Adopt(ns->get()).ok()) (void)ahead->Unlock();
        }
        // Frames that reached the source after the commit, before the segment learnt this port:
        // the source ships them after Done, then closes.
        ch.set_timeout(2);
        while (s.ok()) {
          auto late = ch.Recv(&f, &payload);
          if (!late.ok() || !f.has_held() || !injector) break;
          auto n = injector->Send(payload);
          if (n.ok()) res.held_packets += *n;
        }
        res.bytes = rx.bytes();
        LOG_INFO("migration of %s committed: %d rounds, %llu bytes, restore %.1f ms",
                 res.id.c_str(), res.rounds, static_cast<unsigned long long>(res.bytes),
                 res.restore_ms);
        return res;
      }
      case mig::Frame::kAbort:
        return MakeError(ErrorKind::kPeer, 0, "migration of %s aborted by the source: %s",
                         res.id.c_str(), f.abort().reason().c_str());
      default: {
        Error e = MakeError(ErrorKind::kPeer, 0, "migration of %s: unexpected %s frame",
                            res.id.c_str(), FrameKind(f));
        (void)SendAbort(ch, e.message());
        return e;
      }
    }
  }
}

}  // namespace godwit::migrate
