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
  auto p = Parse(args, {{"bundle", "pid-file", "bridge"}, {}, {{"-b", "bundle"}}});
  if (!p.ok()) return ReportError(g, "create", p.error());
  if (p->positionals.size() != 1) return ReportError(g, "create", Usage("expected exactly one ID"));
  rt::CreateOptions o;
  o.root = g.root;
  o.id = p->positionals[0];
  o.bundle = p->get("bundle", ".");
  o.pid_file = p->get("pid-file");
  o.cgroup_parent = g.cgroup_parent;
  o.bridge = p->get("bridge");
  auto c = rt::Create(o);
  if (!c.ok()) return ReportError(g, "create", c.error());
  if (g.json) PrintState(g, *c);
  return 0;
}
GODWIT_COMMAND(create, "create", "create ID [--bundle DIR] [--pid-file FILE] [--bridge BR]",
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
                 "userns-base", "bridge"};
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
  auto p = Parse(args, {{"env", "cwd"}, {}, {{"-e", "env"}}});
  if (!p.ok()) return ReportError(g, "exec", p.error());
  if (p->positionals.empty()) return ReportError(g, "exec", Usage("expected ID -- CMD..."));
  rt::ExecOptions o;
  o.args = p->rest;
  o.args.insert(o.args.begin(), p->positionals.begin() + 1, p->positionals.end());
  o.env = p->all("env");
  o.cwd = p->get("cwd");
  fflush(stdout);
  auto code = rt::Exec(g.root, p->positionals[0], o);
  if (!code.ok()) return ReportError(g, "exec", code.error());
  return *code;
}
GODWIT_COMMAND(exec, "exec", "exec ID [--env K=V] [--cwd DIR] -- CMD...",
               "run a process inside a running container (all its namespaces and cgroups)",
               CmdExec);

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
