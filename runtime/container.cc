#include "runtime/container.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>

#include "common/fs.h"

namespace godwit::runtime {

using nlohmann::json;

const char* StatusName(Status s) {
  switch (s) {
    case Status::kCreating:
      return "creating";
    case Status::kCreated:
      return "created";
    case Status::kRunning:
      return "running";
    case Status::kPaused:
      return "paused";
    case Status::kStopped:
      return "stopped";
  }
  return "unknown";
}

namespace {

// /proc/<pid>/stat: "pid (comm) S ..." where comm may hold spaces and parens: parse after the
// last ')'.
bool ReadStat(pid_t pid, char* state, uint64_t* start) {
  char path[64];
  snprintf(path, sizeof(path), "/proc/%d/stat", pid);
  int fd = ::open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  char buf[1024];
  ssize_t n = ::read(fd, buf, sizeof(buf) - 1);
  ::close(fd);
  if (n <= 0) return false;
  buf[n] = 0;
  char* p = strrchr(buf, ')');
  if (!p || p[1] != ' ') return false;
  p += 2;
  *state = *p;
  // Fields after comm start at field 3 (state); starttime is field 22.
  int field = 3;
  while (*p && field < 22) {
    if (*p == ' ') field++;
    p++;
  }
  *start = strtoull(p, nullptr, 10);
  return true;
}

json ResourcesToJson(const Resources& r) {
  json j = json::object();
  if (r.memory_limit) j["memory"] = *r.memory_limit;
  if (r.memory_swap) j["memorySwap"] = *r.memory_swap;
  if (r.cpu_shares) j["cpuShares"] = *r.cpu_shares;
  if (r.cpu_quota) j["cpuQuota"] = *r.cpu_quota;
  if (r.cpu_period) j["cpuPeriod"] = *r.cpu_period;
  if (r.pids_limit) j["pids"] = *r.pids_limit;
  return j;
}

Resources ResourcesFromJson(const json& j) {
  Resources r;
  if (!j.is_object()) return r;
  if (j.contains("memory") && j["memory"].is_number_integer())
    r.memory_limit = j["memory"].get<int64_t>();
  if (j.contains("memorySwap") && j["memorySwap"].is_number_integer())
    r.memory_swap = j["memorySwap"].get<int64_t>();
  if (j.contains("cpuShares") && j["cpuShares"].is_number_integer())
    r.cpu_shares = j["cpuShares"].get<uint64_t>();
  if (j.contains("cpuQuota") && j["cpuQuota"].is_number_integer())
    r.cpu_quota = j["cpuQuota"].get<int64_t>();
  if (j.contains("cpuPeriod") && j["cpuPeriod"].is_number_integer())
    r.cpu_period = j["cpuPeriod"].get<uint64_t>();
  if (j.contains("pids") && j["pids"].is_number_integer()) r.pids_limit = j["pids"].get<int64_t>();
  return r;
}

}  // namespace

uint64_t ProcessStartTime(pid_t pid) {
  char st;
  uint64_t start = 0;
  return ReadStat(pid, &st, &start) ? start : 0;
}

char ProcessState(pid_t pid) {
  char st = 0;
  uint64_t start;
  return ReadStat(pid, &st, &start) ? st : 0;
}

Status Container::CurrentStatus() const {
  if (pid <= 0) return Status::kStopped;
  char st = 0;
  uint64_t start = 0;
  if (!ReadStat(pid, &st, &start) || start != pid_start_time || st == 'Z' || st == 'X')
    return Status::kStopped;
  if (::access(fifo_path().c_str(), F_OK) == 0) return Status::kCreated;
  // Frozen? The cgroup2 part (v2, hybrid) or the v1 freezer, whichever froze it.
  if (auto it = cgroup_paths.find("unified"); it != cgroup_paths.end()) {
    auto ev = fs::ReadFile(it->second + "/cgroup.events");
    if (ev.ok() && ev->find("frozen 1") != std::string::npos) return Status::kPaused;
  }
  if (auto it = cgroup_paths.find("freezer"); it != cgroup_paths.end()) {
    auto st = fs::ReadFile(it->second + "/freezer.state");
    if (st.ok() && fs::Trim(*st) == "FROZEN") return Status::kPaused;
  }
  return Status::kRunning;
}

json Container::OciState() const {
  Status s = CurrentStatus();
  json j = {{"ociVersion", "1.0.2"},   {"id", id},
            {"status", StatusName(s)}, {"pid", s == Status::kStopped ? 0 : pid},
            {"bundle", bundle},        {"rootfs", rootfs},
            {"created", created},      {"owner", ""}};
  if (!annotations.empty()) j["annotations"] = annotations;
  return j;
}

json Container::ToJson() const {
  json ports = json::array();
  for (const auto& p : net.allow_ports) ports.push_back({{"port", p.port}, {"proto", p.proto}});
  return {
      {"version", 1},
      {"id", id},
      {"bundle", bundle},
      {"rootfs", rootfs},
      {"pid", pid},
      {"pidStartTime", pid_start_time},
      {"lazyPagerPid", pager_pid},
      {"lazyPagerStartTime", pager_start_time},
      {"created", created},
      {"cgroup",
       {{"layout", cgroup_layout},
        {"parent", cgroup_parent},
        {"leaf", cgroup_leaf},
        {"paths", cgroup_paths}}},
      {"resources", ResourcesToJson(resources)},
      {"network",
       {{"hostVeth", host_veth},
        {"address", net.address},
        {"prefix", net.prefix},
        {"gateway", net.gateway},
        {"bridge", net.bridge},
        {"allowPorts", ports}}},
      {"storage", {{"diskQuota", disk_quota}, {"dir", storage_dir}}},
      {"hostname", hostname},
      {"namespaces",
       {{"pid", ns.pid},
        {"mount", ns.mount},
        {"uts", ns.uts},
        {"ipc", ns.ipc},
        {"network", ns.network},
        {"cgroup", ns.cgroup},
        {"user", ns.user}}},
      {"annotations", annotations},
  };
}

Result<Container> Container::FromJson(const json& j) {
  auto bad = [](const char* what) {
    return MakeError(ErrorKind::kBadConfig, 0, "state.json: %s", what);
  };
  if (!j.is_object() || !j.contains("id") || !j["id"].is_string()) return bad("missing id");
  Container c;
  auto str = [&](const json& o, const char* k) {
    return o.is_object() && o.contains(k) && o[k].is_string() ? o[k].get<std::string>() : "";
  };
  auto num = [&](const json& o, const char* k) -> int64_t {
    return o.is_object() && o.contains(k) && o[k].is_number() ? o[k].get<int64_t>() : 0;
  };
  auto flag = [&](const json& o, const char* k) {
    return o.is_object() && o.contains(k) && o[k].is_boolean() && o[k].get<bool>();
  };
  c.id = str(j, "id");
  c.bundle = str(j, "bundle");
  c.rootfs = str(j, "rootfs");
  c.pid = num(j, "pid");
  c.pid_start_time = j.contains("pidStartTime") && j["pidStartTime"].is_number_unsigned()
                         ? j["pidStartTime"].get<uint64_t>()
                         : 0;
  c.pager_pid = num(j, "lazyPagerPid");
  c.pager_start_time =
      j.contains("lazyPagerStartTime") && j["lazyPagerStartTime"].is_number_unsigned()
          ? j["lazyPagerStartTime"].get<uint64_t>()
          : 0;
  c.created = str(j, "created");
  json cg = j.value("cgroup", json::object());
  c.cgroup_layout = str(cg, "layout");
  // Records written before --cgroup-parent existed: the fixed "godwit".
  c.cgroup_parent = str(cg, "parent");
  if (c.cgroup_parent.empty()) c.cgroup_parent = "godwit";
  c.cgroup_leaf = str(cg, "leaf");
  if (cg.contains("paths") && cg["paths"].is_object())
    for (auto it = cg["paths"].begin(); it != cg["paths"].end(); ++it)
      if (it.value().is_string()) c.cgroup_paths[it.key()] = it.value().get<std::string>();
  c.resources = ResourcesFromJson(j.value("resources", json::object()));
  json n = j.value("network", json::object());
  c.host_veth = str(n, "hostVeth");
  c.net.address = str(n, "address");
  c.net.prefix = num(n, "prefix");
  c.net.gateway = str(n, "gateway");
  c.net.bridge = str(n, "bridge");
  if (n.contains("allowPorts") && n["allowPorts"].is_array())
    for (const auto& p : n["allowPorts"])
      c.net.allow_ports.push_back({(int)num(p, "port"), str(p, "proto")});
  json s = j.value("storage", json::object());
  c.disk_quota = num(s, "diskQuota");
  c.storage_dir = str(s, "dir");
  c.hostname = str(j, "hostname");
  json ns = j.value("namespaces", json::object());
  c.ns = {flag(ns, "pid"),     flag(ns, "mount"),  flag(ns, "uts"), flag(ns, "ipc"),
          flag(ns, "network"), flag(ns, "cgroup"), flag(ns, "user")};
  if (j.contains("annotations") && j["annotations"].is_object())
    for (auto it = j["annotations"].begin(); it != j["annotations"].end(); ++it)
      if (it.value().is_string()) c.annotations[it.key()] = it.value().get<std::string>();
  return c;
}

Result<void> Container::Save() const {
  // tmp + rename without fsync: the record describes live kernel state that does not survive
  // a reboot either, and an fsync here would dominate container start time.
  std::string tmp = state_path() + ".tmp";
  TRY(fs::WriteFile(tmp, ToJson().dump(2) + "\n"));
  if (::rename(tmp.c_str(), state_path().c_str()) < 0) return Errno("rename %s", tmp.c_str());
  return Ok();
}

Result<Container> Container::Load(const std::string& root, const std::string& id) {
  TRY(ValidateId(id));
  std::string dir = root + "/" + id;
  struct stat st;
  if (::stat(dir.c_str(), &st) < 0)
    return MakeError(ErrorKind::kNotFound, errno, "container %s not found in %s", id.c_str(),
                     root.c_str());
  auto text = fs::ReadFile(dir + "/state.json");
  if (!text.ok())
    return MakeError(ErrorKind::kNotFound, text.error().sys_errno(),
                     "container %s: no state.json (still being created?)", id.c_str());
  json j = json::parse(*text, nullptr, false);
  if (j.is_discarded())
    return MakeError(ErrorKind::kBadConfig, 0, "%s/state.json: not valid JSON", dir.c_str());
  ASSIGN_OR_RETURN(Container c, FromJson(j));
  c.root = root;
  return c;
}

Result<Spec> Container::LoadSpec() const {
  ASSIGN_OR_RETURN(std::string text, fs::ReadFile(config_path()));
  return ParseSpec(text, bundle);
}

Result<std::vector<ListEntry>> ListContainers(const std::string& root) {
  std::vector<ListEntry> out;
  if (!fs::Exists(root)) return out;
  ASSIGN_OR_RETURN(auto names, fs::ListDir(root));
  std::sort(names.begin(), names.end());
  for (const auto& n : names) {
    if (!ValidateId(n).ok()) continue;
    struct stat st;
    if (::stat((root + "/" + n).c_str(), &st) < 0 || !S_ISDIR(st.st_mode)) continue;
    ListEntry e;
    e.id = n;
    auto c = Container::Load(root, n);
    if (c.ok()) {
      e.container = std::move(*c);
      e.status = e.container.CurrentStatus();
    }
    out.push_back(std::move(e));
  }
  return out;
}

Result<void> ValidateId(const std::string& id) {
  bool ok = !id.empty() && id.size() <= 64 && id[0] != '.' && id[0] != '-';
  for (char ch : id)
    ok = ok && (isalnum(static_cast<unsigned char>(ch)) || ch == '_' || ch == '-' || ch == '.');
  if (!ok)
    return MakeError(ErrorKind::kUsage, 0,
                     "bad container id '%s': 1-64 characters of [A-Za-z0-9_.-], not starting "
                     "with '.' or '-'",
                     id.c_str());
  return Ok();
}

}  // namespace godwit::runtime
