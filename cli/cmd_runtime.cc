// The runtime verbs: create, start, run, state, kill, delete, list, ps, exec. Flag names follow
// runc (--root is global, --bundle/-b, --pid-file, --detach/-d, --force/-f, --all/-a).
#include <fcntl.h>
#include <poll.h>
#include <sys/inotify.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <random>
#include <set>

#include "cli/command.h"
#include "cli/detached_output.h"
#include "cli/terminal_relay.h"
#include "common/args.h"
#include "common/fs.h"
#include "common/log.h"
#include "runtime/cgroup.h"
#include "runtime/runtime.h"

namespace godwit::cli {
namespace {

using nlohmann::json;
namespace rt = godwit::runtime;

Result<ParsedArgs> Parse(const std::vector<std::string>& args, ArgSpec spec) {
  return ParseArgs(args, spec);
}

Error Usage(const char* fmt, const char* arg = "") {
  return MakeError(ErrorKind::kUsage, 0, fmt, arg);
}

void PrintState(const Global& g, const rt::Container& c) {
  if (g.json) {
    printf("%s\n", c.OciState().dump().c_str());
  } else {
    printf("%s\n", c.OciState().dump(2).c_str());
  }
}

// --json: every verb prints one object on stdout. Those that change a container's state print
// its OCI state after the change (as `state` would); if it cannot be read any more, its id.
void PrintStateIfJson(const Global& g, const std::string& id) {
  if (!g.json) return;
  auto c = rt::Container::Load(g.root, id);
  if (c.ok())
    PrintState(g, *c);
  else
    printf("%s\n", json({{"id", id}}).dump().c_str());
}

// --- create ---------------------------------------------------------------------------------

int CmdCreate(Global& g, const std::vector<std::string>& args) {
  // runc's --no-pivot and --no-new-keyring are accepted: godwit always pivots and never makes a
  // session keyring, which is the stricter choice either way.
  auto p = Parse(args, {{"bundle", "pid-file", "bridge", "console-socket", "preserve-fds"},
                        {"no-pivot", "no-new-keyring"},
                        {{"-b", "bundle"}}});
  if (!p.ok()) return ReportError(g, "create", p.error());
  if (p->positionals.size() != 1) return ReportError(g, "create", Usage("expected exactly one ID"));
  if (p->has("preserve-fds") && p->get("preserve-fds") != "0")
    return ReportError(g, "create", MakeError(ErrorKind::kUnsupported, 0,
                                              "--preserve-fds %s: not supported",
                                              p->get("preserve-fds").c_str()));
  rt::CreateOptions o;
  o.root = g.root;
  o.id = p->positionals[0];
  o.bundle = p->get("bundle", ".");
  o.pid_file = p->get("pid-file");
  o.cgroup_parent = g.cgroup_parent;
  o.bridge = p->get("bridge");
  o.console_socket = p->get("console-socket");
  o.systemd_cgroup = g.systemd_cgroup;
  auto c = rt::Create(o);
  if (!c.ok()) return ReportError(g, "create", c.error());
  if (g.json) PrintState(g, *c);
  return 0;
}
GODWIT_COMMAND(create, "create",
               "create ID [--bundle DIR] [--pid-file FILE] [--console-socket SOCK] [--bridge BR]",
               "create a container from an OCI bundle (stopped before its process runs)",
               CmdCreate,
               "Creates a container from an OCI bundle: its init is cloned into new namespaces,\n"
               "joins its cgroups (linux.cgroupsPath, else <cgroup-parent>/<ID>), gets its network\n"
               "and root filesystem, and waits before execve until `start`. Its stdio are\n"
               "godwit's own (an engine passes its pipes; containerd's shim, conmon).\n"
               "\n"
               "options:\n"
               "  --bundle DIR, -b DIR     the bundle holding config.json (default .)\n"
               "  --pid-file FILE          write the init's host pid to FILE\n"
               "  --console-socket SOCK    process.terminal: the pty master goes to this unix socket\n"
               "                           (SCM_RIGHTS), as runc\n"
               "  --bridge BR              attach the container's veth to bridge BR\n"
               "  --no-pivot, --no-new-keyring   accepted (runc's)\n"
               "  --preserve-fds N         refused for N > 0 (exit 6)\n"
               "\n"
               "examples:\n"
               "  godwit create web1 --bundle /srv/web1 --pid-file /run/web1.pid\n"
               "  godwit start web1\n");

// --- start ----------------------------------------------------------------------------------

int CmdStart(Global& g, const std::vector<std::string>& args) {
  auto p = Parse(args, {});
  if (!p.ok()) return ReportError(g, "start", p.error());
  if (p->positionals.size() != 1) return ReportError(g, "start", Usage("expected exactly one ID"));
  auto r = rt::Start(g.root, p->positionals[0]);
  if (!r.ok()) return ReportError(g, "start", r.error());
  PrintStateIfJson(g, p->positionals[0]);
  return 0;
}
GODWIT_COMMAND(start, "start", "start ID", "run the process of a created container", CmdStart,
               "Lets the init of a created container exec its process. Exit 3 for an unknown\n"
               "id, 1 when the container is not in the created state.\n"
               "\n"
               "options:\n"
               "  --json (global)   the OCI state after the start\n"
               "\n"
               "examples:\n"
               "  godwit create web1 -b /srv/web1 && godwit start web1\n");

// --- run ------------------------------------------------------------------------------------


std::string RandomId() {
  std::random_device rd;
  char buf[32];
  snprintf(buf, sizeof(buf), "gw-%08x", rd());
  return buf;
}

int CmdRun(Global& g, const std::vector<std::string>& args) {
  ArgSpec spec;
  spec.values = {"bundle",     "pid-file", "rootfs", "name", "hostname", "memory",     "cpus",
                 "cpu-shares", "pids",     "disk",   "ip",   "gateway",  "allow-port", "env",
                 "userns-base", "bridge", "console-socket"};
  spec.flags = {"detach", "readonly", "userns"};
  spec.aliases = {{"-b", "bundle"}, {"-d", "detach"}, {"-e", "env"}};
  auto p = Parse(args, spec);
  if (!p.ok()) return ReportError(g, "run", p.error());
  // Foreground: a signal arriving while the container is created must be forwarded, not kill us.
  if (!p->has("detach")) rt::BlockForwardedSignals();
  // Detached without a terminal for the container, godwit's stdout a terminal or a pipe: the
  // container's stdout/stderr go to <root>/.logs/<id>.log (`godwit logs ID`), its stdin is
  // /dev/null (detached_output.h). The id is needed before Create for that.
  std::string id = p->has("rootfs") ? p->get("name") : "";
  if (p->has("rootfs") && id.empty()) id = RandomId();
  if (!p->has("rootfs") && p->positionals.size() == 1) id = p->positionals[0];
  std::unique_ptr<DetachedOutput> output;
  if (p->has("detach") && p->get("console-socket").empty() && !id.empty() &&
      DetachedOutput::Wanted()) {
    if (auto v = rt::ValidateId(id); !v.ok()) return ReportError(g, "run", v.error());
    auto o = DetachedOutput::Open(g.root, id, /*fresh=*/true);
    if (!o.ok()) return ReportError(g, "run", o.error());
    output = std::move(*o);
  }
  Result<rt::Container> c = MakeError(ErrorKind::kGeneric, 0, "unreachable");
  if (p->has("rootfs")) {
    rt::RunOptions o;
    o.rootfs = p->get("rootfs");
    o.args = p->rest;
    if (o.args.empty()) o.args = p->positionals;
    o.hostname = p->get("hostname");
    o.ip = p->get("ip");
    o.gateway = p->get("gateway");
    o.bridge = p->get("bridge");
    for (const auto& a : p->all("allow-port"))
      for (const auto& x : fs::Split(a, ','))
        if (!x.empty()) o.allow_ports.push_back(x);
    o.env = p->all("env");
    o.readonly = p->has("readonly");
    o.user_ns = p->has("userns") || p->has("userns-base");
    if (p->has("userns-base")) {
      char* end = nullptr;
      unsigned long base = strtoul(p->get("userns-base").c_str(), &end, 10);
      if (!end || *end || base == 0 || base > 0xffffffffUL - 65536)
        return ReportError(g, "run", MakeError(ErrorKind::kUsage, 0,
                                               "--userns-base wants a host uid > 0, got '%s'",
                                               p->get("userns-base").c_str()));
      o.user_ns_base = static_cast<uint32_t>(base);
    }
    auto size = [&](const char* name, int64_t* out) -> Result<void> {
      if (!p->has(name)) return Ok();
      ASSIGN_OR_RETURN(long long v, ParseSize(p->get(name)));
      if (v <= 0) return MakeError(ErrorKind::kUsage, 0, "--%s must be > 0", name);
      *out = v;
      return Ok();
    };
    if (auto r = size("memory", &o.memory); !r.ok()) return ReportError(g, "run", r.error());
    if (auto r = size("disk", &o.disk); !r.ok()) return ReportError(g, "run", r.error());
    if (p->has("pids")) {
      char* end;
      o.pids = strtoll(p->get("pids").c_str(), &end, 10);
      if (*end || o.pids <= 0)
        return ReportError(g, "run", Usage("bad --pids %s", p->get("pids").c_str()));
    }
    if (p->has("cpus")) {
      char* end;
      o.cpus = strtod(p->get("cpus").c_str(), &end);
      if (*end || o.cpus <= 0)
        return ReportError(g, "run", Usage("bad --cpus %s", p->get("cpus").c_str()));
    }
    if (p->has("cpu-shares")) {
      char* end;
      o.cpu_shares = strtoull(p->get("cpu-shares").c_str(), &end, 10);
      if (*end || o.cpu_shares < 2)
        return ReportError(g, "run", Usage("bad --cpu-shares %s", p->get("cpu-shares").c_str()));
    }
    rt::CreateOptions co;
    co.root = g.root;
    co.id = id;
    co.pid_file = p->get("pid-file");
    co.start = true;
    co.cgroup_parent = g.cgroup_parent;
    c = rt::CreateFromRunOptions(co, o);
  } else {
    if (p->positionals.size() != 1)
      return ReportError(g, "run", Usage("expected ID --bundle DIR, or --rootfs DIR -- CMD..."));
    rt::CreateOptions o;
    o.root = g.root;
    o.id = p->positionals[0];
    o.bundle = p->get("bundle", ".");
    o.pid_file = p->get("pid-file");
    o.start = true;
    o.cgroup_parent = g.cgroup_parent;
    o.bridge = p->get("bridge");
    o.console_socket = p->get("console-socket");
    o.systemd_cgroup = g.systemd_cgroup;
    c = rt::Create(o);
  }
  if (output) {
    output->Restore();
    if (c.ok()) output->Keep();
  }
  if (!c.ok()) return ReportError(g, "run", c.error());
  if (p->has("detach")) {
    if (g.json)
      PrintState(g, *c);
    else
      printf("%s\n", c->id.c_str());
    return 0;
  }
  auto ms = [] {
    timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
  };
  double t0 = ms();
  auto code = rt::Wait(*c, /*forward_signals=*/true);
  double t1 = ms();
  auto d = rt::Delete(c->root, c->id, true, g.cgroup_parent);
  LOG_DEBUG("run %s: wait=%.2fms delete=%.2fms", c->id.c_str(), t1 - t0, ms() - t1);
  if (!code.ok()) return ReportError(g, "run", code.error());
  if (!d.ok()) return ReportError(g, "run", d.error());
  return *code;
}
GODWIT_COMMAND(run, "run",
               "run ID [--bundle DIR] [--detach] [--pid-file F] [--bridge BR]  |  run --rootfs DIR "
               "[--name ID] [--detach] [--hostname H] [--memory 256M] [--cpus 0.5] "
               "[--cpu-shares N] [--pids 64] [--disk 512M] [--ip 198.18.0.10/24] [--gateway IP] "
               "[--bridge BR] "
               "[--allow-port 80[/tcp],53/udp] [--env K=V] [--readonly] [--userns | --userns-base HOSTUID] -- CMD...",
               "create and start a container; without --detach wait for it and delete it", CmdRun,
               "Creates and starts a container. From a bundle (runc's form), or from a root\n"
               "filesystem with the config generated from flags (--rootfs). Without --detach\n"
               "godwit waits, forwards INT/TERM/HUP to the container, deletes it when it exits\n"
               "and exits with its status. With --detach it prints the id and returns; when\n"
               "godwit's stdout is a terminal or a pipe, the container's stdout and stderr go\n"
               "to <root>/.logs/<ID>.log (`godwit logs ID`) and its stdin is /dev/null (not\n"
               "with --console-socket). A stdout redirected to a file or /dev/null stays the\n"
               "container's, as with runc (`godwit run -d ... > app.log`).\n"
               "\n"
               "options (both forms):\n"
               "  --detach, -d             return once it runs; output to the container's log\n"
               "  --pid-file F             write the init's host pid to F\n"
               "  --bridge BR              attach its veth to bridge BR\n"
               "options (bundle form):\n"
               "  --bundle DIR, -b DIR     the bundle holding config.json (default .)\n"
               "  --console-socket SOCK    process.terminal: where the pty master goes\n"
               "options (--rootfs form):\n"
               "  --rootfs DIR             the root filesystem (e.g. from `godwit mkrootfs`)\n"
               "  --name ID                the container id (default a random gw-XXXXXXXX)\n"
               "  --hostname H             its hostname (own uts namespace)\n"
               "  --memory 256M, --cpus 0.5, --cpu-shares N, --pids 64\n"
               "                           cgroup limits\n"
               "  --disk 512M              a writable overlay layer of that size over a read-only rootfs\n"
               "  --ip A.B.C.D/N, --gateway IP\n"
               "                           an own network namespace with a veth and this address\n"
               "  --allow-port 80[/tcp],53/udp\n"
               "                           open only these inbound ports (nftables, in the container)\n"
               "  --env K=V, -e K=V        environment (repeatable)\n"
               "  --readonly               a read-only root filesystem\n"
               "  --userns, --userns-base HOSTUID\n"
               "                           a user namespace mapping 65536 ids from HOSTUID\n"
               "  -- CMD...                the process to run\n"
               "\n"
               "examples:\n"
               "  godwit run --rootfs /srv/bb --name t1 -- sh -c 'echo hi'\n"
               "  godwit run --rootfs /srv/bb --name web1 --detach --ip 198.18.0.10/24 --memory 64M -- httpd -f\n"
               "  godwit run web2 --bundle /srv/web2 --detach --pid-file /run/web2.pid\n");

// --- state ----------------------------------------------------------------------------------

int CmdState(Global& g, const std::vector<std::string>& args) {
  auto p = Parse(args, {});
  if (!p.ok()) return ReportError(g, "state", p.error());
  if (p->positionals.size() != 1) return ReportError(g, "state", Usage("expected exactly one ID"));
  auto c = rt::Container::Load(g.root, p->positionals[0]);
  if (!c.ok()) return ReportError(g, "state", c.error());
  PrintState(g, *c);
  return 0;
}
GODWIT_COMMAND(state, "state", "state ID", "print the OCI state of a container (JSON)", CmdState,
               "Prints the OCI state of a container as JSON: ociVersion, id, status (created,\n"
               "running, paused, stopped), pid, bundle, rootfs, created, annotations. Exit 3 for\n"
               "an unknown id.\n"
               "\n"
               "examples:\n"
               "  godwit state web1\n"
               "  godwit --json state web1\n");

// --- logs -----------------------------------------------------------------------------------

// Copies what fd has from its offset on to stdout.
Result<void> CopyOut(int fd) {
  char buf[65536];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Errno("read log");
    if (n == 0) return Ok();
    for (ssize_t off = 0; off < n;) {
      ssize_t w = ::write(STDOUT_FILENO, buf + off, n - off);
      if (w < 0 && errno == EINTR) continue;
      if (w < 0) return Errno("write stdout");
      off += w;
    }
  }
}

// --follow: the log's new bytes as they are written (inotify), until the container's init exits
// (its pidfd polls readable) or stdout goes away.
Result<void> Follow(int log, const std::string& path, const rt::Container& c) {
  UniqueFd pidfd(static_cast<int>(::syscall(SYS_pidfd_open, c.pid, 0)));
  if (!pidfd) return errno == ESRCH ? Ok() : Errno("pidfd_open %d", c.pid);
  // The pid may have been reused between Load and pidfd_open: its status says.
  if (c.CurrentStatus() == rt::Status::kStopped) return CopyOut(log);
  UniqueFd in(::inotify_init1(IN_CLOEXEC | IN_NONBLOCK));
  if (!in) return Errno("inotify_init1");
  if (::inotify_add_watch(in.get(), path.c_str(), IN_MODIFY | IN_DELETE_SELF) < 0)
    return Errno("inotify_add_watch %s", path.c_str());
  TRY(CopyOut(log));  // what came between the first copy and the watch
  for (;;) {
    pollfd fds[2] = {{in.get(), POLLIN, 0}, {pidfd.get(), POLLIN, 0}};
    int n = ::poll(fds, 2, -1);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Errno("poll");
    if (fds[0].revents) {
      char ev[4096];
      while (::read(in.get(), ev, sizeof(ev)) > 0) {
      }
    }
    TRY(CopyOut(log));
    if (fds[1].revents) return Ok();  // the init is gone: nothing more will be written
  }
}

int CmdLogs(Global& g, const std::vector<std::string>& args) {
  auto p = Parse(args, {{}, {"follow"}, {{"-f", "follow"}}});
  if (!p.ok()) return ReportError(g, "logs", p.error());
  if (p->positionals.size() != 1) return ReportError(g, "logs", Usage("expected exactly one ID"));
  // A checkpointed (so deleted) container's log is still there: printed without the container.
  auto c = rt::Container::Load(g.root, p->positionals[0]);
  std::string path = rt::LogPath(g.root, p->positionals[0]);
  UniqueFd log(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!log && errno != ENOENT) return ReportError(g, "logs", Errno("open %s", path.c_str()));
  if (!c.ok() && !log) return ReportError(g, "logs", c.error());
  if (!log) {
    return ReportError(
        g, "logs",
        MakeError(ErrorKind::kNotFound, ENOENT,
                  "container %s has no log (%s): only `run --detach` and a detached container "
                  "restore run from a terminal or a pipe write one; with stdout redirected to a "
                  "file the output is there, and a container made with create/start writes to "
                  "its creator's stdio (an engine such as conmon or containerd's shim keeps it)",
                  c->id.c_str(), path.c_str()));
  }
  fflush(stdout);
  bool live = c.ok() && c->pid > 0 && c->CurrentStatus() != rt::Status::kStopped;
  auto r = p->has("follow") && live ? Follow(log.get(), path, *c) : CopyOut(log.get());
  if (!r.ok()) return ReportError(g, "logs", r.error());
  return 0;
}
GODWIT_COMMAND(logs, "logs", "logs ID [--follow]",
               "print a detached container's output (stdout and stderr, as written)", CmdLogs,
               "`godwit run --detach` (and a container `restore --detach` not driven by an\n"
               "engine), run from a terminal or a pipe, sends the container's stdout and\n"
               "stderr to <root>/.logs/<ID>.log;\n"
               "logs prints it. A checkpoint keeps it (the images name it; the restore appends\n"
               "to it); it goes with `godwit delete`. Containers made with\n"
               "create/start write to their creator's stdio instead (conmon, containerd's shim).\n"
               "\n"
               "options:\n"
               "  --follow, -f   keep printing what is written until the container's init exits\n"
               "\n"
               "examples:\n"
               "  godwit run --rootfs /srv/bb --name web1 --detach -- httpd -f -p 80\n"
               "  godwit logs web1\n"
               "  godwit logs -f web1\n");

// --- pause / resume -------------------------------------------------------------------------

int CmdPause(Global& g, const std::vector<std::string>& args) {
  auto p = Parse(args, {});
  if (!p.ok()) return ReportError(g, "pause", p.error());
  if (p->positionals.size() != 1) return ReportError(g, "pause", Usage("expected exactly one ID"));
  auto r = rt::Pause(g.root, p->positionals[0]);
  if (!r.ok()) return ReportError(g, "pause", r.error());
  PrintStateIfJson(g, p->positionals[0]);
  return 0;
}
GODWIT_COMMAND(pause, "pause", "pause ID", "freeze every process of a container (cgroup freezer)",
               CmdPause,
               "Freezes every process of a running container through its cgroup freezer\n"
               "(status \"paused\"). A paused container cannot be checkpointed (exit 6): resume it.\n"
               "\n"
               "options:\n"
               "  --json (global)   the OCI state after the pause\n"
               "\n"
               "examples:\n"
               "  godwit pause web1 && godwit state web1\n");

int CmdResume(Global& g, const std::vector<std::string>& args) {
  auto p = Parse(args, {});
  if (!p.ok()) return ReportError(g, "resume", p.error());
  if (p->positionals.size() != 1) return ReportError(g, "resume", Usage("expected exactly one ID"));
  auto r = rt::Resume(g.root, p->positionals[0]);
  if (!r.ok()) return ReportError(g, "resume", r.error());
  PrintStateIfJson(g, p->positionals[0]);
  return 0;
}
GODWIT_COMMAND(resume, "resume", "resume ID", "thaw a paused container", CmdResume,
               "Thaws a paused container (status \"running\" again).\n"
               "\n"
               "options:\n"
               "  --json (global)   the OCI state after the resume\n"
               "\n"
               "examples:\n"
               "  godwit resume web1\n");

// --- kill -----------------------------------------------------------------------------------

int CmdKill(Global& g, const std::vector<std::string>& args) {
  auto p = Parse(args, {{}, {"all"}, {{"-a", "all"}}});
  if (!p.ok()) return ReportError(g, "kill", p.error());
  if (p->positionals.empty() || p->positionals.size() > 2)
    return ReportError(g, "kill", Usage("expected ID [SIGNAL]"));
  int sig = SIGTERM;
  if (p->positionals.size() == 2) {
    auto s = rt::ParseSignal(p->positionals[1]);
    if (!s.ok()) return ReportError(g, "kill", s.error());
    sig = *s;
  }
  auto r = rt::Kill(g.root, p->positionals[0], sig, p->has("all"));
  if (!r.ok()) return ReportError(g, "kill", r.error());
  if (g.json)
    printf("%s\n",
           json({{"id", p->positionals[0]}, {"signal", sig}, {"all", p->has("all")}}).dump().c_str());
  return 0;
}
GODWIT_COMMAND(kill, "kill", "kill ID [SIGNAL] [--all]",
               "send a signal (default TERM) to the container's init, or --all its processes",
               CmdKill,
               "Sends SIGNAL (a name, SIGNAME or number; default TERM) to the container's init,\n"
               "or with --all to every process in its cgroup. Signal 0 checks that the init is\n"
               "alive (exit 0) as kill(2) does.\n"
               "\n"
               "options:\n"
               "  --all, -a         every process of the container\n"
               "  --json (global)   one object: {\"id\",\"signal\",\"all\"}\n"
               "\n"
               "examples:\n"
               "  godwit kill web1\n"
               "  godwit kill web1 KILL --all\n"
               "  godwit kill web1 0 && echo alive\n");

// --- delete ---------------------------------------------------------------------------------

int CmdDelete(Global& g, const std::vector<std::string>& args) {
  auto p = Parse(args, {{}, {"force"}, {{"-f", "force"}}});
  if (!p.ok()) return ReportError(g, "delete", p.error());
  if (p->positionals.empty()) return ReportError(g, "delete", Usage("expected ID..."));
  json deleted = json::array();
  for (const auto& id : p->positionals) {
    auto r = rt::Delete(g.root, id, p->has("force"), g.cgroup_parent);
    // As runc: --force on a container that is already gone is success (Podman cleans up after
    // a checkpoint that removed it, or after a failed create).
    bool gone = !r.ok() && p->has("force") && r.error().kind() == ErrorKind::kNotFound;
    if (!r.ok() && !gone) return ReportError(g, "delete", r.error());
    // The log outlives the container (a checkpoint keeps it for the restore): it goes here.
    if (::unlink(rt::LogPath(g.root, id).c_str()) < 0 && errno != ENOENT)
      return ReportError(g, "delete", Errno("unlink %s", rt::LogPath(g.root, id).c_str()));
    if (!gone) deleted.push_back(id);
  }
  if (g.json) printf("%s\n", json({{"deleted", deleted}}).dump().c_str());
  return 0;
}
GODWIT_COMMAND(delete, "delete", "delete ID... [--force]",
               "remove a stopped container (--force: kill it first): cgroups, veth, state",
               CmdDelete,
               "Removes stopped (or created) containers: cgroups, veth, storage and the state\n"
               "dir with its log. A running or paused container is refused with exit 6\n"
               "(\"unsupported state\") unless --force: then its cgroup is frozen, every process\n"
               "killed, and it is removed. --force on an unknown id succeeds (as runc).\n"
               "\n"
               "options:\n"
               "  --force, -f       kill a running or paused container first\n"
               "  --json (global)   one object: {\"deleted\":[IDs]}\n"
               "\n"
               "examples:\n"
               "  godwit delete web1\n"
               "  godwit delete -f web1 web2\n");

// --- list -----------------------------------------------------------------------------------

int CmdList(Global& g, const std::vector<std::string>& args) {
  auto p = Parse(args, {{"format"}, {"quiet"}, {{"-q", "quiet"}, {"-f", "format"}}});
  if (!p.ok()) return ReportError(g, "list", p.error());
  std::string format = p->get("format", "table");
  if (format != "table" && format != "json")
    return ReportError(g, "list", Usage("--format %s: expected table or json", format.c_str()));
  auto l = rt::ListContainers(g.root);
  if (!l.ok()) return ReportError(g, "list", l.error());
  if (g.json || format == "json") {
    json arr = json::array();
    for (const auto& e : *l) {
      if (e.status == rt::Status::kCreating)
        arr.push_back({{"id", e.id}, {"status", "creating"}});
      else
        arr.push_back(e.container.OciState());
    }
    // --format json: runc's array; the global --json: one object, as every verb prints.
    if (format == "json")
      printf("%s\n", arr.dump().c_str());
    else
      printf("%s\n", json({{"containers", arr}}).dump().c_str());
    return 0;
  }
  if (p->has("quiet")) {
    for (const auto& e : *l) printf("%s\n", e.id.c_str());
    return 0;
  }
  printf("%-20s %-8s %-10s %-40s %s\n", "ID", "PID", "STATUS", "BUNDLE", "CREATED");
  for (const auto& e : *l) {
    bool live = e.status == rt::Status::kCreated || e.status == rt::Status::kRunning ||
                e.status == rt::Status::kPaused;
    printf("%-20s %-8d %-10s %-40s %s\n", e.id.c_str(), live ? e.container.pid : 0,
           rt::StatusName(e.status), e.container.bundle.c_str(), e.container.created.c_str());
  }
  return 0;
}
GODWIT_COMMAND(list, "list", "list [--quiet] [--format table|json]",
               "list the containers under --root", CmdList,
               "One line per container: id, init pid, status, bundle, creation time.\n"
               "\n"
               "options:\n"
               "  --quiet, -q               only the ids\n"
               "  --format table|json, -f   json: an array of OCI state objects (runc's form)\n"
               "  --json (global)           one object: {\"containers\":[OCI state...]}\n"
               "\n"
               "examples:\n"
               "  godwit list\n"
               "  godwit --root /tmp/gw list -q\n"
               "  godwit list --format json\n");

// --- ps -------------------------------------------------------------------------------------

std::string JoinArgs(const std::vector<std::string>& v) {
  std::string out;
  for (const auto& a : v) out += (out.empty() ? "" : " ") + a;
  return out;
}

// Runs ps(1) with args and returns its stdout, as runc's ps does.
Result<std::string> RunPs(const std::vector<std::string>& args) {
  int pfd[2];
  if (pipe2(pfd, O_CLOEXEC) < 0) return Errno("pipe");
  UniqueFd rd(pfd[0]), wr(pfd[1]);
  pid_t child = fork();
  if (child < 0) return Errno("fork");
  if (child == 0) {
    dup2(wr.get(), 1);
    std::vector<char*> argv = {const_cast<char*>("ps")};
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    execvp("ps", argv.data());
    _exit(127);
  }
  wr.reset();
  std::string out;
  char buf[4096];
  for (;;) {
    ssize_t n = read(rd.get(), buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    out.append(buf, n);
  }
  int st = 0;
  while (waitpid(child, &st, 0) < 0 && errno == EINTR) {
  }
  if (WIFEXITED(st) && WEXITSTATUS(st) == 127)
    return MakeError(ErrorKind::kNotFound, 0, "ps(1) is not installed (procps)");
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
    return MakeError(ErrorKind::kUsage, 0, "ps %s: ps(1) refused its options (status %#x)",
                     JoinArgs(args).c_str(), st);
  return out;
}

// runc's form: `ps [--format table|json] ID [PS_OPTIONS...]`. Everything after the id goes to
// ps(1) (default -ef); the header is kept and the lines whose PID column is one of the
// container's processes. --format json (runc, Podman, containerd's shim) prints the pid array;
// the global --json one object {"id", "pids"}.
int CmdPs(Global& g, const std::vector<std::string>& args) {
  std::string format = "table", id;
  std::vector<std::string> ps_args;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (!id.empty()) {
      if (a == "--" && ps_args.empty()) continue;
      ps_args.push_back(a);
    } else if (a == "--format" || a == "-f") {
      if (i + 1 >= args.size()) return ReportError(g, "ps", Usage("--format needs table|json"));
      format = args[++i];
    } else if (a.rfind("--format=", 0) == 0) {
      format = a.substr(9);
    } else if (!a.empty() && a[0] == '-') {
      return ReportError(g, "ps", Usage("unknown option %s before the ID", a.c_str()));
    } else {
      id = a;
    }
  }
  if (id.empty()) return ReportError(g, "ps", Usage("expected ID [PS_OPTIONS...]"));
  if (format != "table" && format != "json")
    return ReportError(g, "ps", Usage("--format %s: expected table or json", format.c_str()));
  auto pids = rt::Ps(g.root, id);
  if (!pids.ok()) return ReportError(g, "ps", pids.error());
  if (format == "json") {
    printf("%s\n", json(*pids).dump().c_str());
    return 0;
  }
  if (g.json) {
    printf("%s\n", json({{"id", id}, {"pids", *pids}}).dump().c_str());
    return 0;
  }
  if (ps_args.empty()) ps_args = {"-ef"};
  auto out = RunPs(ps_args);
  if (!out.ok()) return ReportError(g, "ps", out.error());
  auto lines = fs::Split(*out, '\n');
  auto fields = [](const std::string& line) {
    std::vector<std::string> f;
    for (const auto& x : fs::Split(line, ' '))
      if (!x.empty()) f.push_back(x);
    return f;
  };
  std::vector<std::string> header = lines.empty() ? std::vector<std::string>{} : fields(lines[0]);
  auto col = std::find(header.begin(), header.end(), "PID");
  if (col == header.end())
    return ReportError(g, "ps", Usage("ps %s: no PID column in its output (add -o pid,...)",
                                      JoinArgs(ps_args).c_str()));
  size_t idx = col - header.begin();
  std::set<pid_t> in(pids->begin(), pids->end());
  printf("%s\n", lines[0].c_str());
  for (size_t i = 1; i < lines.size(); ++i) {
    auto f = fields(lines[i]);
    if (f.size() > idx && in.count(static_cast<pid_t>(atol(f[idx].c_str()))))
      printf("%s\n", lines[i].c_str());
  }
  return 0;
}
GODWIT_COMMAND(ps, "ps", "ps [--format table|json] ID [PS_OPTIONS...]",
               "show the processes of a container (ps(1) output filtered to its pids)", CmdPs,
               "Runs ps(1) with PS_OPTIONS (default -ef) and prints its header and the lines\n"
               "whose PID column is a process in the container's cgroup, as runc ps does.\n"
               "\n"
               "options:\n"
               "  --format table|json, -f   table: ps(1)'s output (default); json: the host pids\n"
               "                            as a JSON array (runc's form, what engines read)\n"
               "  --json (global)           one object: {\"id\":ID,\"pids\":[...]}\n"
               "  PS_OPTIONS                everything after the ID goes to ps(1); its output\n"
               "                            must have a PID column\n"
               "\n"
               "examples:\n"
               "  godwit ps web1\n"
               "  godwit ps web1 -o pid,user,rss,args\n"
               "  godwit ps --format json web1\n");

// --- exec -----------------------------------------------------------------------------------

int CmdExec(Global& g, const std::vector<std::string>& args) {
  auto p = Parse(args, {{"env", "cwd", "process", "pid-file", "console-socket", "user",
                         "preserve-fds"},
                        {"detach", "tty", "no-new-privs", "ignore-paused"},
                        {{"-e", "env"}, {"-d", "detach"}, {"-t", "tty"}, {"-u", "user"},
                         {"-p", "process"}}});
  if (!p.ok()) return ReportError(g, "exec", p.error());
  if (p->positionals.empty()) return ReportError(g, "exec", Usage("expected ID -- CMD..."));
  if (p->has("preserve-fds") && p->get("preserve-fds") != "0")
    return ReportError(g, "exec", MakeError(ErrorKind::kUnsupported, 0,
                                            "--preserve-fds: not supported"));
  rt::ExecOptions o;
  o.args = p->rest;
  o.args.insert(o.args.begin(), p->positionals.begin() + 1, p->positionals.end());
  o.env = p->all("env");
  o.cwd = p->get("cwd");
  o.pid_file = p->get("pid-file");
  o.detach = p->has("detach");
  o.tty = p->has("tty");
  o.console_socket = p->get("console-socket");
  if (p->has("process")) {
    auto text = fs::ReadFile(p->get("process"));
    if (!text.ok()) return ReportError(g, "exec", text.error());
    auto proc = rt::ParseProcessJson(*text);
    if (!proc.ok()) return ReportError(g, "exec", proc.error());
    o.process = std::move(*proc);
    if (p->has("no-new-privs")) o.process->no_new_privileges = true;
  } else if (o.args.empty()) {
    return ReportError(g, "exec", Usage("expected ID -- CMD... or --process FILE"));
  }
  if (p->has("user")) {
    unsigned uid = 0, gid = 0;
    std::string u = p->get("user");
    int n = sscanf(u.c_str(), "%u:%u", &uid, &gid);
    if (n < 1 || u.find_first_not_of("0123456789:") != std::string::npos)
      return ReportError(g, "exec", Usage("--user %s: expected UID[:GID]", u.c_str()));
    o.uid = uid;
    if (n == 2) o.gid = gid;
  }
  // -t without a console socket: godwit relays the process's pty to its own terminal.
  std::unique_ptr<TerminalRelay> relay;
  if (o.tty && o.console_socket.empty()) {
    if (o.detach)
      return ReportError(g, "exec", Usage("--tty --detach needs --console-socket SOCK"));
    auto r = TerminalRelay::Start();
    if (!r.ok()) return ReportError(g, "exec", r.error());
    relay = std::move(*r);
    o.console_socket = relay->SocketPath();
  }
  fflush(stdout);
  auto code = rt::Exec(g.root, p->positionals[0], o);
  if (relay) relay->Stop();
  if (!code.ok()) return ReportError(g, "exec", code.error());
  if (o.detach && g.json)
    printf("%s\n", json({{"id", p->positionals[0]}, {"pid", *code}}).dump().c_str());
  return o.detach ? 0 : *code;
}
GODWIT_COMMAND(exec, "exec",
               "exec ID [--env K=V] [--cwd DIR] [--user UID[:GID]] [--tty [--console-socket S]] "
               "[--detach] [--pid-file F] [--process F.json | -- CMD...]",
               "run a process inside a running container (all its namespaces and cgroups)",
               CmdExec,
               "Runs a process inside a running container: all its namespaces, its cgroup, its\n"
               "seccomp filter and (unless --process says otherwise) its process.* settings\n"
               "(env, user, capabilities, rlimits). Waits and exits with the process's status\n"
               "(128+signal if killed), or with --detach returns once it has exec'd.\n"
               "\n"
               "options:\n"
               "  --env K=V, -e K=V        added to the container's environment (repeatable)\n"
               "  --cwd DIR                the working directory (default the container's process.cwd)\n"
               "  --user UID[:GID], -u     run as this uid (and gid)\n"
               "  --tty, -t                give the process a terminal: with --console-socket the pty\n"
               "                           master goes there (engines); without, godwit connects it to\n"
               "                           its own terminal (stdin must be a tty)\n"
               "  --console-socket SOCK    where the pty master goes (SCM_RIGHTS)\n"
               "  --detach, -d             return once it has exec'd; its parent is then the nearest\n"
               "                           subreaper (an engine's conmon or shim), else pid 1\n"
               "  --pid-file F             write the process's host pid to F\n"
               "  --process F.json, -p     the whole OCI process object (runc's; engines use it)\n"
               "  --no-new-privs, --ignore-paused   accepted (runc's)\n"
               "  -- CMD...                the command (unless --process)\n"
               "\n"
               "examples:\n"
               "  godwit exec web1 -- cat /etc/hostname\n"
               "  godwit exec --user 1000:1000 --env DEBUG=1 --cwd /tmp web1 -- sh -c 'id; pwd'\n"
               "  godwit exec -t web1 -- sh\n"
               "  godwit exec --detach --pid-file /run/job.pid web1 -- sleep 100\n");

// --- update ---------------------------------------------------------------------------------

int CmdUpdate(Global& g, const std::vector<std::string>& args) {
  auto p = Parse(args, {{"resources", "memory", "memory-swap", "cpu-quota", "cpu-period",
                         "cpu-share", "pids-limit"},
                        {},
                        {{"-r", "resources"}}});
  if (!p.ok()) return ReportError(g, "update", p.error());
  if (p->positionals.size() != 1) return ReportError(g, "update", Usage("expected exactly one ID"));
  rt::Resources res;
  if (p->has("resources")) {
    std::string f = p->get("resources");
    auto text = fs::ReadFile(f == "-" ? "/dev/stdin" : f);
    if (!text.ok()) return ReportError(g, "update", text.error());
    auto r = rt::ParseResourcesJson(*text);
    if (!r.ok()) return ReportError(g, "update", r.error());
    res = *r;
  }
  auto num = [&](const char* name, auto* out, bool size) -> Result<void> {
    if (!p->has(name)) return Ok();
    std::string v = p->get(name);
    long long n = 0;
    if (v == "-1") {
      n = -1;
    } else if (size) {
      ASSIGN_OR_RETURN(n, ParseSize(v));
    } else {
      char* end = nullptr;
      n = strtoll(v.c_str(), &end, 10);
      if (v.empty() || *end) return MakeError(ErrorKind::kUsage, 0, "--%s %s", name, v.c_str());
    }
    *out = n;
    return Ok();
  };
  auto flags = [&]() -> Result<void> {
    TRY(num("memory", &res.memory_limit, true));
    TRY(num("memory-swap", &res.memory_swap, true));
    TRY(num("cpu-quota", &res.cpu_quota, false));
    TRY(num("cpu-period", &res.cpu_period, false));
    TRY(num("cpu-share", &res.cpu_shares, false));
    return num("pids-limit", &res.pids_limit, false);
  };
  if (auto r = flags(); !r.ok()) return ReportError(g, "update", r.error());
  auto r = rt::Update(g.root, p->positionals[0], res);
  if (!r.ok()) return ReportError(g, "update", r.error());
  PrintStateIfJson(g, p->positionals[0]);
  return 0;
}
GODWIT_COMMAND(update, "update",
               "update ID [--resources FILE|-] [--memory 64M] [--memory-swap 128M] "
               "[--cpu-quota US] [--cpu-period US] [--cpu-share N] [--pids-limit N]",
               "change a running container's limits (OCI linux.resources JSON, or flags)",
               CmdUpdate,
               "Changes a running container's cgroup limits and records them in its state.\n"
               "Fields not given stay as they are; -1 removes a limit.\n"
               "\n"
               "options:\n"
               "  --resources FILE|-, -r   an OCI linux.resources JSON object (Podman's form)\n"
               "  --memory 64M             memory limit\n"
               "  --memory-swap 128M       memory+swap limit (where swap is accounted)\n"
               "  --cpu-quota US, --cpu-period US\n"
               "                           CFS bandwidth\n"
               "  --cpu-share N            cpu.shares / cpu.weight\n"
               "  --pids-limit N           most processes\n"
               "  --json (global)          the OCI state after the update\n"
               "\n"
               "examples:\n"
               "  godwit update web1 --memory 128M --pids-limit 100\n"
               "  echo '{\"memory\":{\"limit\":67108864}}' | godwit update web1 --resources -\n");

}  // namespace
}  // namespace godwit::cli

namespace godwit::cli {
namespace {

int CmdMkrootfs(Global& g, const std::vector<std::string>& args) {
  auto p = ParseArgs(args, {{"busybox"}, {}, {}});
  if (!p.ok()) return ReportError(g, "mkrootfs", p.error());
  if (p->positionals.size() != 1)
    return ReportError(g, "mkrootfs", MakeError(ErrorKind::kUsage, 0, "expected DIR"));
  auto r = runtime::MakeBusyboxRootfs(p->positionals[0], p->get("busybox", "/bin/busybox"));
  if (!r.ok()) return ReportError(g, "mkrootfs", r.error());
  return 0;
}
GODWIT_COMMAND(mkrootfs, "mkrootfs", "mkrootfs DIR [--busybox /bin/busybox]",
               "build a busybox root filesystem in DIR (for tests, the demo, the benchmark)",
               CmdMkrootfs,
               "Builds a small root filesystem in DIR: busybox (copied from --busybox) with\n"
               "its applet links, /etc/passwd, group and hosts, and empty mount points. For tests,\n"
               "the demo and the benchmarks; idempotent.\n"
               "\n"
               "options:\n"
               "  --busybox PATH   a static busybox (default /bin/busybox)\n"
               "\n"
               "examples:\n"
               "  godwit mkrootfs /srv/bb\n"
               "  godwit mkrootfs /tmp/rootfs --busybox /usr/bin/busybox\n");

}  // namespace
}  // namespace godwit::cli
