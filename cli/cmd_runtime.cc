// The runtime verbs: create, start, run, state, kill, delete, list, ps, exec. Flag names follow
// runc (--root is global, --bundle/-b, --pid-file, --detach/-d, --force/-f, --all/-a).
#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <nlohmann/json.hpp>
#include <random>

#include "cli/command.h"
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
               CmdCreate);

// --- start ----------------------------------------------------------------------------------

int CmdStart(Global& g, const std::vector<std::string>& args) {
  auto p = Parse(args, {});
  if (!p.ok()) return ReportError(g, "start", p.error());
  if (p->positionals.size() != 1) return ReportError(g, "start", Usage("expected exactly one ID"));
  auto r = rt::Start(g.root, p->positionals[0]);
  if (!r.ok()) return ReportError(g, "start", r.error());
  return 0;
}
GODWIT_COMMAND(start, "start", "start ID", "run the process of a created container", CmdStart);

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
    co.id = p->get("name");
    if (co.id.empty()) co.id = RandomId();
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
               "create and start a container; without --detach wait for it and delete it", CmdRun);

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
GODWIT_COMMAND(state, "state", "state ID", "print the OCI state of a container (JSON)", CmdState);

// --- pause / resume -------------------------------------------------------------------------

int CmdPause(Global& g, const std::vector<std::string>& args) {
  auto p = Parse(args, {});
  if (!p.ok()) return ReportError(g, "pause", p.error());
  if (p->positionals.size() != 1) return ReportError(g, "pause", Usage("expected exactly one ID"));
  auto r = rt::Pause(g.root, p->positionals[0]);
  if (!r.ok()) return ReportError(g, "pause", r.error());
  return 0;
}
GODWIT_COMMAND(pause, "pause", "pause ID", "freeze every process of a container (cgroup freezer)",
               CmdPause);

int CmdResume(Global& g, const std::vector<std::string>& args) {
  auto p = Parse(args, {});
  if (!p.ok()) return ReportError(g, "resume", p.error());
  if (p->positionals.size() != 1) return ReportError(g, "resume", Usage("expected exactly one ID"));
  auto r = rt::Resume(g.root, p->positionals[0]);
  if (!r.ok()) return ReportError(g, "resume", r.error());
  return 0;
}
GODWIT_COMMAND(resume, "resume", "resume ID", "thaw a paused container", CmdResume);

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
  return 0;
}
GODWIT_COMMAND(kill, "kill", "kill ID [SIGNAL] [--all]",
               "send a signal (default TERM) to the container's init, or --all its processes",
               CmdKill);

// --- delete ---------------------------------------------------------------------------------

int CmdDelete(Global& g, const std::vector<std::string>& args) {
  auto p = Parse(args, {{}, {"force"}, {{"-f", "force"}}});
  if (!p.ok()) return ReportError(g, "delete", p.error());
  if (p->positionals.empty()) return ReportError(g, "delete", Usage("expected ID..."));
  for (const auto& id : p->positionals) {
    auto r = rt::Delete(g.root, id, p->has("force"), g.cgroup_parent);
    // As runc: --force on a container that is already gone is success (Podman cleans up after
    // a checkpoint that removed it, or after a failed create).
    if (!r.ok() && p->has("force") && r.error().kind() == ErrorKind::kNotFound) continue;
    if (!r.ok()) return ReportError(g, "delete", r.error());
  }
  return 0;
}
GODWIT_COMMAND(delete, "delete", "delete ID... [--force]",
               "remove a stopped container (--force: kill it first): cgroups, veth, state",
               CmdDelete);

// --- list -----------------------------------------------------------------------------------

int CmdList(Global& g, const std::vector<std::string>& args) {
  auto p = Parse(args, {{}, {"quiet"}, {{"-q", "quiet"}}});
  if (!p.ok()) return ReportError(g, "list", p.error());
  auto l = rt::ListContainers(g.root);
  if (!l.ok()) return ReportError(g, "list", l.error());
  if (g.json) {
    json arr = json::array();
    for (const auto& e : *l) {
      if (e.status == rt::Status::kCreating)
        arr.push_back({{"id", e.id}, {"status", "creating"}});
      else
        arr.push_back(e.container.OciState());
    }
    printf("%s\n", arr.dump().c_str());
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
GODWIT_COMMAND(list, "list", "list [--quiet]", "list the containers under --root", CmdList);

// --- ps -------------------------------------------------------------------------------------

int CmdPs(Global& g, const std::vector<std::string>& args) {
  auto p = Parse(args, {});
  if (!p.ok()) return ReportError(g, "ps", p.error());
  if (p->positionals.size() != 1) return ReportError(g, "ps", Usage("expected exactly one ID"));
  auto pids = rt::Ps(g.root, p->positionals[0]);
  if (!pids.ok()) return ReportError(g, "ps", pids.error());
  if (g.json) {
    printf("%s\n", json(*pids).dump().c_str());
    return 0;
  }
  printf("%-8s %s\n", "PID", "CMD");
  for (pid_t pid : *pids) {
    auto cmd = fs::ReadFile(StrFormat("/proc/%d/cmdline", pid));
    std::string s = cmd.ok() ? *cmd : "";
    for (auto& ch : s)
      if (ch == 0) ch = ' ';
    printf("%-8d %s\n", pid, fs::Trim(s).c_str());
  }
  return 0;
}
GODWIT_COMMAND(ps, "ps", "ps ID", "list the processes of a container (host pids)", CmdPs);

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
  fflush(stdout);
  auto code = rt::Exec(g.root, p->positionals[0], o);
  if (!code.ok()) return ReportError(g, "exec", code.error());
  return o.detach ? 0 : *code;
}
GODWIT_COMMAND(exec, "exec",
               "exec ID [--env K=V] [--cwd DIR] [--user UID[:GID]] [--tty --console-socket S] "
               "[--detach] [--pid-file F] [--process F.json | -- CMD...]",
               "run a process inside a running container (all its namespaces and cgroups)",
               CmdExec);

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
  return 0;
}
GODWIT_COMMAND(update, "update",
               "update ID [--resources FILE|-] [--memory 64M] [--memory-swap 128M] "
               "[--cpu-quota US] [--cpu-period US] [--cpu-share N] [--pids-limit N]",
               "change a running container's limits (OCI linux.resources JSON, or flags)",
               CmdUpdate);

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
               CmdMkrootfs);

}  // namespace
}  // namespace godwit::cli
