#include "runtime/spec.h"

#include <arpa/inet.h>
#include <linux/capability.h>
#include <sys/mount.h>
#include <sys/resource.h>

#include <cmath>
#include <set>

#include "common/args.h"
#include "common/fs.h"

namespace godwit::runtime {
namespace {

using nlohmann::json;

Error Bad(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
Error Bad(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  std::string s = VStrFormat(fmt, ap);
  va_end(ap);
  return Error(ErrorKind::kBadConfig, 0, "config.json: " + s);
}

// Rejects keys of an object that are not in `known`: unknown fields might change isolation.
Result<void> OnlyKeys(const json& obj, const std::string& where, const std::set<std::string>& known,
                      const std::set<std::string>& ignored = {}) {
  if (!obj.is_object()) return Bad("%s: expected an object", where.c_str());
  for (auto it = obj.begin(); it != obj.end(); ++it) {
    if (known.count(it.key()) || ignored.count(it.key())) continue;
    return Bad("%s%s%s: not supported by godwit", where.c_str(), where.empty() ? "" : ".",
               it.key().c_str());
  }
  return Ok();
}

Result<std::string> GetString(const json& obj, const char* key, const std::string& where,
                              bool required, const std::string& def = "") {
  if (!obj.contains(key)) {
    if (required) return Bad("%s.%s: missing", where.c_str(), key);
    return def;
  }
  const json& v = obj[key];
  if (!v.is_string()) return Bad("%s.%s: expected a string", where.c_str(), key);
  return v.get<std::string>();
}

Result<bool> GetBool(const json& obj, const char* key, const std::string& where, bool def) {
  if (!obj.contains(key)) return def;
  if (!obj[key].is_boolean()) return Bad("%s.%s: expected a boolean", where.c_str(), key);
  return obj[key].get<bool>();
}

Result<int64_t> GetInt(const json& v, const std::string& where) {
  if (!v.is_number_integer()) return Bad("%s: expected an integer", where.c_str());
  return v.get<int64_t>();
}

Result<std::vector<std::string>> GetStrings(const json& obj, const char* key,
                                            const std::string& where) {
  std::vector<std::string> out;
  if (!obj.contains(key) || obj[key].is_null()) return out;
  const json& v = obj[key];
  if (!v.is_array()) return Bad("%s.%s: expected an array", where.c_str(), key);
  for (const auto& e : v) {
    if (!e.is_string()) return Bad("%s.%s: expected strings", where.c_str(), key);
    out.push_back(e.get<std::string>());
  }
  return out;
}

const std::map<std::string, int>& CapNames() {
  static const std::map<std::string, int> m = {{"CAP_CHOWN", 0},
                                               {"CAP_DAC_OVERRIDE", 1},
                                               {"CAP_DAC_READ_SEARCH", 2},
                                               {"CAP_FOWNER", 3},
                                               {"CAP_FSETID", 4},
                                               {"CAP_KILL", 5},
                                               {"CAP_SETGID", 6},
                                               {"CAP_SETUID", 7},
                                               {"CAP_SETPCAP", 8},
                                               {"CAP_LINUX_IMMUTABLE", 9},
                                               {"CAP_NET_BIND_SERVICE", 10},
                                               {"CAP_NET_BROADCAST", 11},
                                               {"CAP_NET_ADMIN", 12},
                                               {"CAP_NET_RAW", 13},
                                               {"CAP_IPC_LOCK", 14},
                                               {"CAP_IPC_OWNER", 15},
                                               {"CAP_SYS_MODULE", 16},
                                               {"CAP_SYS_RAWIO", 17},
                                               {"CAP_SYS_CHROOT", 18},
                                               {"CAP_SYS_PTRACE", 19},
                                               {"CAP_SYS_PACCT", 20},
                                               {"CAP_SYS_ADMIN", 21},
                                               {"CAP_SYS_BOOT", 22},
                                               {"CAP_SYS_NICE", 23},
                                               {"CAP_SYS_RESOURCE", 24},
                                               {"CAP_SYS_TIME", 25},
                                               {"CAP_SYS_TTY_CONFIG", 26},
                                               {"CAP_MKNOD", 27},
                                               {"CAP_LEASE", 28},
                                               {"CAP_AUDIT_WRITE", 29},
                                               {"CAP_AUDIT_CONTROL", 30},
                                               {"CAP_SETFCAP", 31},
                                               {"CAP_MAC_OVERRIDE", 32},
                                               {"CAP_MAC_ADMIN", 33},
                                               {"CAP_SYSLOG", 34},
                                               {"CAP_WAKE_ALARM", 35},
                                               {"CAP_BLOCK_SUSPEND", 36},
                                               {"CAP_AUDIT_READ", 37},
                                               {"CAP_PERFMON", 38},
                                               {"CAP_BPF", 39},
                                               {"CAP_CHECKPOINT_RESTORE", 40}};
  return m;
}

const std::map<std::string, int>& RlimitNames() {
  static const std::map<std::string, int> m = {
      {"RLIMIT_CPU", RLIMIT_CPU},           {"RLIMIT_FSIZE", RLIMIT_FSIZE},
      {"RLIMIT_DATA", RLIMIT_DATA},         {"RLIMIT_STACK", RLIMIT_STACK},
      {"RLIMIT_CORE", RLIMIT_CORE},         {"RLIMIT_RSS", RLIMIT_RSS},
      {"RLIMIT_NPROC", RLIMIT_NPROC},       {"RLIMIT_NOFILE", RLIMIT_NOFILE},
      {"RLIMIT_MEMLOCK", RLIMIT_MEMLOCK},   {"RLIMIT_AS", RLIMIT_AS},
      {"RLIMIT_LOCKS", RLIMIT_LOCKS},       {"RLIMIT_SIGPENDING", RLIMIT_SIGPENDING},
      {"RLIMIT_MSGQUEUE", RLIMIT_MSGQUEUE}, {"RLIMIT_NICE", RLIMIT_NICE},
      {"RLIMIT_RTPRIO", RLIMIT_RTPRIO},     {"RLIMIT_RTTIME", RLIMIT_RTTIME}};
  return m;
}

Result<std::vector<int>> ParseCapList(const json& caps, const char* key) {
  ASSIGN_OR_RETURN(auto names, GetStrings(caps, key, "process.capabilities"));
  std::vector<int> out;
  for (const auto& n : names) {
    auto it = CapNames().find(n);
    if (it == CapNames().end())
      return Bad("process.capabilities.%s: unknown capability %s", key, n.c_str());
    out.push_back(it->second);
  }
  return out;
}

Result<void> ParseSeccomp(const json& j, Seccomp& sc);  // below, with the cgroups path

Result<std::vector<IdMap>> ParseIdMaps(const json& linux, const char* key) {
  std::vector<IdMap> out;
  if (!linux.contains(key)) return out;
  const json& arr = linux[key];
  if (!arr.is_array()) return Bad("linux.%s: expected an array", key);
  for (const auto& m : arr) {
    std::string where = std::string("linux.") + key + "[]";
    TRY(OnlyKeys(m, where, {"containerID", "hostID", "size"}));
    IdMap im;
    for (const char* f : {"containerID", "hostID", "size"}) {
      if (!m.contains(f)) return Bad("%s.%s: missing", where.c_str(), f);
      ASSIGN_OR_RETURN(int64_t v, GetInt(m[f], where + "." + f));
      if (v < 0 || v > 0xffffffffLL) return Bad("%s.%s: out of range", where.c_str(), f);
      if (f[0] == 'c')
        im.container_id = v;
      else if (f[0] == 'h')
        im.host_id = v;
      else
        im.size = v;
    }
    if (im.size == 0) return Bad("%s.size: must be > 0", where.c_str());
    out.push_back(im);
  }
  return out;
}

Result<void> ParseMountOptions(Mount& m, const std::string& where) {
  struct Flag {
    unsigned long set, clear;
  };
  static const std::map<std::string, Flag> kFlags = {{"ro", {MS_RDONLY, 0}},
                                                     {"rw", {0, MS_RDONLY}},
                                                     {"nosuid", {MS_NOSUID, 0}},
                                                     {"suid", {0, MS_NOSUID}},
                                                     {"nodev", {MS_NODEV, 0}},
                                                     {"dev", {0, MS_NODEV}},
                                                     {"noexec", {MS_NOEXEC, 0}},
                                                     {"exec", {0, MS_NOEXEC}},
                                                     {"sync", {MS_SYNCHRONOUS, 0}},
                                                     {"async", {0, MS_SYNCHRONOUS}},
                                                     {"relatime", {MS_RELATIME, 0}},
                                                     {"norelatime", {0, MS_RELATIME}},
                                                     {"noatime", {MS_NOATIME, 0}},
                                                     {"atime", {0, MS_NOATIME}},
                                                     {"strictatime", {MS_STRICTATIME, 0}},
                                                     {"nodiratime", {MS_NODIRATIME, 0}},
                                                     {"diratime", {0, MS_NODIRATIME}},
                                                     {"dirsync", {MS_DIRSYNC, 0}},
                                                     {"mand", {MS_MANDLOCK, 0}},
                                                     {"nomand", {0, MS_MANDLOCK}},
                                                     {"defaults", {0, 0}}};
  static const std::map<std::string, unsigned long> kProp = {
      {"private", MS_PRIVATE},       {"rprivate", MS_PRIVATE | MS_REC},
      {"slave", MS_SLAVE},           {"rslave", MS_SLAVE | MS_REC},
      {"shared", MS_SHARED},         {"rshared", MS_SHARED | MS_REC},
      {"unbindable", MS_UNBINDABLE}, {"runbindable", MS_UNBINDABLE | MS_REC}};
  for (const auto& o : m.options) {
    if (o == "bind" || o == "rbind") {
      m.bind = true;
      m.recursive = m.recursive || o == "rbind";
      continue;
    }
    if (auto f = kFlags.find(o); f != kFlags.end()) {
      m.flags = (m.flags | f->second.set) & ~f->second.clear;
      continue;
    }
    if (auto p = kProp.find(o); p != kProp.end()) {
      m.propagation = p->second;
      continue;
    }
    if (o.rfind("idmap", 0) == 0 || o.rfind("ridmap", 0) == 0 || o == "tmpcopyup")
      return Bad("%s.options: %s not supported", where.c_str(), o.c_str());
    if (!m.data.empty()) m.data += ",";
    m.data += o;
  }
  return Ok();
}

Result<void> ParseMounts(const json& root, Spec& spec) {
  if (!root.contains("mounts")) return Ok();
  const json& arr = root["mounts"];
  if (!arr.is_array()) return Bad("mounts: expected an array");
  static const std::set<std::string> kTypes = {"proc", "sysfs", "tmpfs",   "devpts", "mqueue",
                                               "bind", "none",  "cgroup", "cgroup2", ""};
  for (size_t i = 0; i < arr.size(); ++i) {
    std::string where = StrFormat("mounts[%zu]", i);
    const json& j = arr[i];
    TRY(OnlyKeys(j, where, {"destination", "type", "source", "options"}));
    Mount m;
    ASSIGN_OR_RETURN(m.destination, GetString(j, "destination", where, true));
    ASSIGN_OR_RETURN(m.type, GetString(j, "type", where, false));
    ASSIGN_OR_RETURN(m.source, GetString(j, "source", where, false));
    ASSIGN_OR_RETURN(m.options, GetStrings(j, "options", where));
    if (m.destination.empty() || m.destination[0] != '/')
      return Bad("%s.destination %s: must be an absolute path", where.c_str(),
                 m.destination.c_str());
    if (m.destination.find("/../") != std::string::npos ||
        (m.destination.size() >= 3 &&
         m.destination.compare(m.destination.size() - 3, 3, "/..") == 0))
      return Bad("%s.destination %s: must not contain ..", where.c_str(), m.destination.c_str());
    if (!kTypes.count(m.type))
      return Bad(
          "%s.type %s (%s): mount type not supported (supported: proc, sysfs, tmpfs, "
          "devpts, mqueue, cgroup, bind)",
          where.c_str(), m.type.c_str(), m.destination.c_str());
    TRY(ParseMountOptions(m, where));
    if (m.type == "bind") m.bind = true;
    if (m.type == "cgroup2") m.type = "cgroup";  // one kind: the container's own cgroups
    if (m.type == "cgroup" && m.bind)
      return Bad("%s: a cgroup mount cannot be a bind mount", where.c_str());
    if ((m.type == "none" || m.type.empty()) && !m.bind)
      return Bad("%s: type %s without bind option", where.c_str(), m.type.c_str());
    if (m.bind) {
      if (m.source.empty()) return Bad("%s.source: missing for a bind mount", where.c_str());
      if (m.source[0] != '/') m.source = spec.root_path + "/../" + m.source;  // bundle-relative
    }
    spec.mounts.push_back(std::move(m));
  }
  return Ok();
}

Result<void> ParseProcess(const json& root, Spec& spec) {
  if (!root.contains("process")) return Bad("process: missing");
  const json& p = root["process"];
  TRY(OnlyKeys(p, "process",
               {"terminal", "args", "env", "cwd", "user", "capabilities", "noNewPrivileges",
                "rlimits", "consoleSize", "oomScoreAdj"}));
  if (p.contains("oomScoreAdj")) {
    ASSIGN_OR_RETURN(int64_t v, GetInt(p["oomScoreAdj"], "process.oomScoreAdj"));
    if (v < -1000 || v > 1000) return Bad("process.oomScoreAdj %lld: out of range", (long long)v);
    spec.process.oom_score_adj = static_cast<int>(v);
  }
  ASSIGN_OR_RETURN(spec.process.terminal, GetBool(p, "terminal", "process", false));
  if (p.contains("consoleSize")) {
    const json& cs = p["consoleSize"];
    TRY(OnlyKeys(cs, "process.consoleSize", {"height", "width"}));
    for (const char* k : {"height", "width"}) {
      if (!cs.contains(k)) continue;
      ASSIGN_OR_RETURN(int64_t v, GetInt(cs[k], std::string("process.consoleSize.") + k));
      if (v < 0 || v > 65535) return Bad("process.consoleSize.%s: out of range", k);
      (k[0] == 'h' ? spec.process.console_height : spec.process.console_width) =
          static_cast<uint16_t>(v);
    }
  }
  ASSIGN_OR_RETURN(spec.process.args, GetStrings(p, "args", "process"));
  if (spec.process.args.empty()) return Bad("process.args: must not be empty");
  ASSIGN_OR_RETURN(spec.process.env, GetStrings(p, "env", "process"));
  ASSIGN_OR_RETURN(spec.process.cwd, GetString(p, "cwd", "process", false, "/"));
  if (spec.process.cwd.empty() || spec.process.cwd[0] != '/')
    return Bad("process.cwd %s: must be an absolute path", spec.process.cwd.c_str());
  if (p.contains("user")) {
    const json& u = p["user"];
    TRY(OnlyKeys(u, "process.user", {"uid", "gid", "additionalGids", "umask"}));
    if (u.contains("uid")) {
      ASSIGN_OR_RETURN(int64_t v, GetInt(u["uid"], "process.user.uid"));
      spec.process.uid = v;
    }
    if (u.contains("gid")) {
      ASSIGN_OR_RETURN(int64_t v, GetInt(u["gid"], "process.user.gid"));
      spec.process.gid = v;
    }
    if (u.contains("umask")) {
      ASSIGN_OR_RETURN(int64_t v, GetInt(u["umask"], "process.user.umask"));
      if (v < 0 || v > 0777) return Bad("process.user.umask: out of range");
      spec.process.umask = static_cast<uint32_t>(v);
    }
    if (u.contains("additionalGids")) {
      if (!u["additionalGids"].is_array())
        return Bad("process.user.additionalGids: expected array");
      for (const auto& g : u["additionalGids"]) {
        ASSIGN_OR_RETURN(int64_t v, GetInt(g, "process.user.additionalGids[]"));
        spec.process.additional_gids.push_back(v);
      }
    }
  }
  ASSIGN_OR_RETURN(spec.process.no_new_privileges, GetBool(p, "noNewPrivileges", "process", false));
  if (p.contains("capabilities")) {
    const json& c = p["capabilities"];
    TRY(OnlyKeys(c, "process.capabilities",
                 {"bounding", "effective", "inheritable", "permitted", "ambient"}));
    auto& caps = spec.process.caps;
    caps.present = true;
    ASSIGN_OR_RETURN(caps.bounding, ParseCapList(c, "bounding"));
    ASSIGN_OR_RETURN(caps.effective, ParseCapList(c, "effective"));
    ASSIGN_OR_RETURN(caps.inheritable, ParseCapList(c, "inheritable"));
    ASSIGN_OR_RETURN(caps.permitted, ParseCapList(c, "permitted"));
    ASSIGN_OR_RETURN(caps.ambient, ParseCapList(c, "ambient"));
  }
  if (p.contains("rlimits")) {
    if (!p["rlimits"].is_array()) return Bad("process.rlimits: expected an array");
    for (const auto& r : p["rlimits"]) {
      TRY(OnlyKeys(r, "process.rlimits[]", {"type", "soft", "hard"}));
      ASSIGN_OR_RETURN(std::string type, GetString(r, "type", "process.rlimits[]", true));
      auto it = RlimitNames().find(type);
      if (it == RlimitNames().end()) return Bad("process.rlimits: unknown type %s", type.c_str());
      if (!r.contains("soft") || !r.contains("hard") || !r["soft"].is_number_unsigned() ||
          !r["hard"].is_number_unsigned())
        return Bad("process.rlimits %s: soft and hard must be unsigned integers", type.c_str());
      spec.process.rlimits.push_back(
          {it->second, r["soft"].get<uint64_t>(), r["hard"].get<uint64_t>()});
    }
  }
  return Ok();
}

Result<void> ParseResources(const json& r, Spec& spec) {
  TRY(OnlyKeys(r, "linux.resources", {"memory", "cpu", "pids", "devices"}));
  auto& res = spec.resources;
  if (r.contains("memory")) {
    const json& m = r["memory"];
    TRY(OnlyKeys(m, "linux.resources.memory", {"limit", "swap"},
                 {"disableOOMKiller", "swappiness"}));
    if (m.contains("swap")) {
      ASSIGN_OR_RETURN(int64_t v, GetInt(m["swap"], "linux.resources.memory.swap"));
      if (v == 0 || v < -1)
        return Bad("linux.resources.memory.swap %lld: must be > 0 or -1", (long long)v);
      res.memory_swap = v;
    }
    if (m.contains("disableOOMKiller") && m["disableOOMKiller"].is_boolean() &&
        m["disableOOMKiller"].get<bool>())
      return Bad("linux.resources.memory.disableOOMKiller: true is not supported");
    if (m.contains("limit")) {
      ASSIGN_OR_RETURN(int64_t v, GetInt(m["limit"], "linux.resources.memory.limit"));
      if (v == 0 || v < -1)
        return Bad("linux.resources.memory.limit %lld: must be > 0 or -1",
                   static_cast<long long>(v));
      res.memory_limit = v;
    }
  }
  if (r.contains("cpu")) {
    const json& c = r["cpu"];
    TRY(OnlyKeys(c, "linux.resources.cpu", {"shares", "quota", "period"}));
    if (c.contains("shares")) {
      ASSIGN_OR_RETURN(int64_t v, GetInt(c["shares"], "linux.resources.cpu.shares"));
      if (v < 2) return Bad("linux.resources.cpu.shares %lld: must be >= 2", (long long)v);
      res.cpu_shares = v;
    }
    if (c.contains("quota")) {
      ASSIGN_OR_RETURN(int64_t v, GetInt(c["quota"], "linux.resources.cpu.quota"));
      if (v == 0 || v < -1)
        return Bad("linux.resources.cpu.quota %lld: must be > 0 or -1", (long long)v);
      res.cpu_quota = v;
    }
    if (c.contains("period")) {
      ASSIGN_OR_RETURN(int64_t v, GetInt(c["period"], "linux.resources.cpu.period"));
      if (v <= 0) return Bad("linux.resources.cpu.period %lld: must be > 0", (long long)v);
      res.cpu_period = v;
    }
  }
  if (r.contains("pids")) {
    const json& p = r["pids"];
    TRY(OnlyKeys(p, "linux.resources.pids", {"limit"}));
    if (p.contains("limit")) {
      ASSIGN_OR_RETURN(int64_t v, GetInt(p["limit"], "linux.resources.pids.limit"));
      res.pids_limit = v;
    }
  }
  if (r.contains("devices")) {
    if (!r["devices"].is_array()) return Bad("linux.resources.devices: expected an array");
    for (const auto& d : r["devices"]) {
      TRY(OnlyKeys(d, "linux.resources.devices[]", {"allow", "type", "major", "minor", "access"}));
      Resources::DeviceRule rule;
      ASSIGN_OR_RETURN(rule.allow, GetBool(d, "allow", "linux.resources.devices[]", false));
      ASSIGN_OR_RETURN(std::string t,
                       GetString(d, "type", "linux.resources.devices[]", false, "a"));
      if (t != "a" && t != "c" && t != "b")
        return Bad("linux.resources.devices[].type %s: expected a, b or c", t.c_str());
      rule.type = t[0];
      if (d.contains("major")) {
        ASSIGN_OR_RETURN(rule.major, GetInt(d["major"], "linux.resources.devices[].major"));
      }
      if (d.contains("minor")) {
        ASSIGN_OR_RETURN(rule.minor, GetInt(d["minor"], "linux.resources.devices[].minor"));
      }
      ASSIGN_OR_RETURN(rule.access,
                       GetString(d, "access", "linux.resources.devices[]", false, "rwm"));
      if (rule.access.find_first_not_of("rwm") != std::string::npos || rule.access.empty())
        return Bad("linux.resources.devices[].access %s: expected r, w, m", rule.access.c_str());
      res.devices.push_back(rule);
    }
  }
  return Ok();
}

Result<void> ParseLinux(const json& root, Spec& spec) {
  if (!root.contains("linux")) return Ok();
  const json& l = root["linux"];
  TRY(OnlyKeys(l, "linux",
               {"namespaces", "uidMappings", "gidMappings", "resources", "maskedPaths",
                "readonlyPaths", "rootfsPropagation", "sysctl", "cgroupsPath", "seccomp"}));
  if (l.contains("cgroupsPath")) {
    ASSIGN_OR_RETURN(spec.cgroups_path, GetString(l, "cgroupsPath", "linux", false));
    if (!spec.cgroups_path.empty())
      TRY(ParseCgroupsPath(spec.cgroups_path, spec.cgroups_path.find(':') != std::string::npos));
  }
  if (l.contains("seccomp")) TRY(ParseSeccomp(l["seccomp"], spec.seccomp));
  if (l.contains("namespaces")) {
    if (!l["namespaces"].is_array()) return Bad("linux.namespaces: expected an array");
    for (const auto& n : l["namespaces"]) {
      TRY(OnlyKeys(n, "linux.namespaces[]", {"type", "path"}));
      ASSIGN_OR_RETURN(std::string type, GetString(n, "type", "linux.namespaces[]", true));
      if (n.contains("path")) {
        ASSIGN_OR_RETURN(std::string path, GetString(n, "path", "linux.namespaces[]", true));
        if (type != "network" && type != "ipc" && type != "uts")
          return Bad("linux.namespaces[%s].path: joining an existing %s namespace is not "
                     "supported (network, ipc and uts are)",
                     type.c_str(), type.c_str());
        if (path.empty() || path[0] != '/')
          return Bad("linux.namespaces[%s].path: %s is not an absolute path", type.c_str(),
                     path.c_str());
        if (!spec.ns.paths.emplace(type, path).second)
          return Bad("linux.namespaces: type %s listed twice", type.c_str());
        continue;
      }
      bool* flag = type == "pid"       ? &spec.ns.pid
                   : type == "mount"   ? &spec.ns.mount
                   : type == "uts"     ? &spec.ns.uts
                   : type == "ipc"     ? &spec.ns.ipc
                   : type == "network" ? &spec.ns.network
                   : type == "cgroup"  ? &spec.ns.cgroup
                   : type == "user"    ? &spec.ns.user
                                       : nullptr;
      if (!flag) return Bad("linux.namespaces: type %s not supported", type.c_str());
      if (*flag || spec.ns.paths.count(type))
        return Bad("linux.namespaces: type %s listed twice", type.c_str());
      *flag = true;
    }
  }
  ASSIGN_OR_RETURN(spec.uid_mappings, ParseIdMaps(l, "uidMappings"));
  ASSIGN_OR_RETURN(spec.gid_mappings, ParseIdMaps(l, "gidMappings"));
  if (l.contains("resources")) TRY(ParseResources(l["resources"], spec));
  ASSIGN_OR_RETURN(spec.masked_paths, GetStrings(l, "maskedPaths", "linux"));
  ASSIGN_OR_RETURN(spec.readonly_paths, GetStrings(l, "readonlyPaths", "linux"));
  ASSIGN_OR_RETURN(spec.rootfs_propagation, GetString(l, "rootfsPropagation", "linux", false));
  if (!spec.rootfs_propagation.empty() && spec.rootfs_propagation != "private" &&
      spec.rootfs_propagation != "rprivate" && spec.rootfs_propagation != "slave" &&
      spec.rootfs_propagation != "rslave")
    return Bad("linux.rootfsPropagation %s: not supported", spec.rootfs_propagation.c_str());
  if (l.contains("sysctl")) {
    const json& s = l["sysctl"];
    if (!s.is_object()) return Bad("linux.sysctl: expected an object");
    for (auto it = s.begin(); it != s.end(); ++it) {
      if (!it.value().is_string())
        return Bad("linux.sysctl.%s: expected a string", it.key().c_str());
      const std::string& k = it.key();
      // Only namespaced sysctls: net.* needs a network namespace, kernel.msg*/shm*/sem and
      // fs.mqueue.* an ipc namespace; anything else would change the host.
      bool net = k.rfind("net.", 0) == 0;
      bool ipc = k.rfind("kernel.msg", 0) == 0 || k.rfind("kernel.shm", 0) == 0 ||
                 k == "kernel.sem" || k.rfind("fs.mqueue.", 0) == 0;
      bool own_net = spec.ns.network || spec.ns.paths.count("network");
      bool own_ipc = spec.ns.ipc || spec.ns.paths.count("ipc");
      if (!(net && own_net) && !(ipc && own_ipc))
        return Bad("linux.sysctl.%s: not a sysctl of the container's namespaces", k.c_str());
      spec.sysctl[k] = it.value().get<std::string>();
    }
  }
  return Ok();
}

Result<NetworkSpec::Port> ParsePort(const std::string& s) {
  NetworkSpec::Port p;
  std::string num = s;
  size_t slash = s.find('/');
  if (slash != std::string::npos) {
    num = s.substr(0, slash);
    p.proto = s.substr(slash + 1);
  }
  char* end = nullptr;
  long v = strtol(num.c_str(), &end, 10);
  if (num.empty() || *end || v <= 0 || v > 65535 || (p.proto != "tcp" && p.proto != "udp"))
    return Bad("allowed port '%s': expected PORT or PORT/tcp or PORT/udp", s.c_str());
  p.port = v;
  return p;
}

Result<void> ParseAnnotations(const json& root, Spec& spec) {
  if (!root.contains("annotations")) return Ok();
  const json& a = root["annotations"];
  if (!a.is_object()) return Bad("annotations: expected an object");
  for (auto it = a.begin(); it != a.end(); ++it) {
    if (!it.value().is_string()) return Bad("annotations.%s: expected a string", it.key().c_str());
    spec.annotations[it.key()] = it.value().get<std::string>();
  }
  auto get = [&](const char* k) -> std::string {
    auto it = spec.annotations.find(k);
    return it == spec.annotations.end() ? "" : it->second;
  };
  if (std::string ip = get(kAnnoIp); !ip.empty()) {
    if (!spec.ns.network) return Bad("annotations.%s: needs a network namespace", kAnnoIp);
    size_t slash = ip.find('/');
    spec.net.address = ip.substr(0, slash);
    if (slash != std::string::npos) {
      char* end = nullptr;
      long p = strtol(ip.c_str() + slash + 1, &end, 10);
      if (*end || p < 1 || p > 30) return Bad("annotations.%s %s: bad prefix", kAnnoIp, ip.c_str());
      spec.net.prefix = p;
    }
    in_addr a4;
    if (inet_pton(AF_INET, spec.net.address.c_str(), &a4) != 1)
      return Bad("annotations.%s %s: not an IPv4 address", kAnnoIp, ip.c_str());
    spec.net.gateway = get(kAnnoGateway);
    spec.net.bridge = get(kAnnoBridge);
    if (!spec.net.bridge.empty()) TRY(ValidateBridgeName(spec.net.bridge));
    if (spec.net.gateway.empty() && !spec.net.bridge.empty()) {
      // Bridged: no default route unless one is given.
    } else if (spec.net.gateway.empty()) {
      // Default gateway: the first host of the subnet, or the second if that is the container.
      uint32_t h = ntohl(a4.s_addr);
      uint32_t mask = spec.net.prefix == 0 ? 0 : ~0u << (32 - spec.net.prefix);
      uint32_t gw = (h & mask) + 1;
      if (gw == h) gw++;
      in_addr g{htonl(gw)};
      char buf[INET_ADDRSTRLEN];
      spec.net.gateway = inet_ntop(AF_INET, &g, buf, sizeof(buf));
    } else if (inet_pton(AF_INET, spec.net.gateway.c_str(), &a4) != 1) {
      return Bad("annotations.%s %s: not an IPv4 address", kAnnoGateway, spec.net.gateway.c_str());
    }
  }
  if (!get(kAnnoBridge).empty() && get(kAnnoIp).empty())
    return Bad("annotations.%s: needs an address (%s)", kAnnoBridge, kAnnoIp);
  if (std::string ports = get(kAnnoAllowPorts); !ports.empty()) {
    if (!spec.ns.network) return Bad("annotations.%s: needs a network namespace", kAnnoAllowPorts);
    for (const auto& p : fs::Split(ports, ',')) {
      if (fs::Trim(p).empty()) continue;
      ASSIGN_OR_RETURN(auto port, ParsePort(fs::Trim(p)));
      spec.net.allow_ports.push_back(port);
    }
  }
  if (std::string disk = get(kAnnoDisk); !disk.empty()) {
    auto sz = ParseSize(disk);
    if (!sz.ok() || *sz <= 0) return Bad("annotations.%s %s: bad size", kAnnoDisk, disk.c_str());
    if (!spec.ns.mount) return Bad("annotations.%s: needs a mount namespace", kAnnoDisk);
    spec.disk_quota = *sz;
  }
  return Ok();
}

Result<void> ParseSeccomp(const json& j, Seccomp& sc) {
  const std::string w = "linux.seccomp";
  TRY(OnlyKeys(j, w,
               {"defaultAction", "defaultErrnoRet", "architectures", "flags", "syscalls"},
               // runc ignores these too when no listener is given.
               {"listenerPath", "listenerMetadata"}));
  if (j.contains("listenerPath") && !j["listenerPath"].is_null() &&
      !(j["listenerPath"].is_string() && j["listenerPath"].get<std::string>().empty()))
    return Bad("linux.seccomp.listenerPath: SCMP_ACT_NOTIFY listeners are not supported");
  sc.present = true;
  ASSIGN_OR_RETURN(sc.default_action, GetString(j, "defaultAction", w, true));
  if (j.contains("defaultErrnoRet")) {
    ASSIGN_OR_RETURN(int64_t v, GetInt(j["defaultErrnoRet"], w + ".defaultErrnoRet"));
    sc.default_errno = static_cast<uint32_t>(v);
  }
  ASSIGN_OR_RETURN(sc.architectures, GetStrings(j, "architectures", w));
  ASSIGN_OR_RETURN(sc.flags, GetStrings(j, "flags", w));
  if (!j.contains("syscalls") || j["syscalls"].is_null()) return Ok();
  if (!j["syscalls"].is_array()) return Bad("linux.seccomp.syscalls: expected an array");
  for (const auto& r : j["syscalls"]) {
    const std::string rw = w + ".syscalls[]";
    TRY(OnlyKeys(r, rw, {"names", "action", "errnoRet", "args"}, {"comment", "includes",
                                                                   "excludes"}));
    Seccomp::Rule rule;
    ASSIGN_OR_RETURN(rule.names, GetStrings(r, "names", rw));
    ASSIGN_OR_RETURN(rule.action, GetString(r, "action", rw, true));
    if (r.contains("errnoRet")) {
      ASSIGN_OR_RETURN(int64_t v, GetInt(r["errnoRet"], rw + ".errnoRet"));
      rule.errno_ret = static_cast<uint32_t>(v);
    }
    if (r.contains("args") && !r["args"].is_null()) {
      if (!r["args"].is_array()) return Bad("%s.args: expected an array", rw.c_str());
      for (const auto& a : r["args"]) {
        TRY(OnlyKeys(a, rw + ".args[]", {"index", "value", "valueTwo", "op"}));
        Seccomp::Arg arg;
        if (!a.contains("index") || !a["index"].is_number_unsigned())
          return Bad("%s.args[].index: expected an unsigned integer", rw.c_str());
        arg.index = a["index"].get<uint32_t>();
        if (a.contains("value")) arg.value = a["value"].get<uint64_t>();
        if (a.contains("valueTwo")) arg.value_two = a["valueTwo"].get<uint64_t>();
        ASSIGN_OR_RETURN(arg.op, GetString(a, "op", rw + ".args[]", true));
        rule.args.push_back(arg);
      }
    }
    sc.syscalls.push_back(std::move(rule));
  }
  return Ok();
}

bool CgroupLevelOk(const std::string& l) {
  if (l.empty() || l == "." || l == ".." || l.size() > 255) return false;
  for (char ch : l)
    if (!(isalnum(static_cast<unsigned char>(ch)) || ch == '_' || ch == '.' || ch == '-'))
      return false;
  return true;
}

}  // namespace

Result<CgroupPlacement> ParseCgroupsPath(const std::string& path, bool systemd) {
  CgroupPlacement p;
  if (systemd || (path.find(':') != std::string::npos && path[0] != '/')) {
    // slice:prefix:name. systemd nests "a-b-c.slice" as a.slice/a-b.slice/a-b-c.slice.
    auto parts = fs::Split(path, ':');
    if (parts.size() != 3 || parts[2].empty())
      return Bad("linux.cgroupsPath %s: expected slice:prefix:name (systemd form)", path.c_str());
    std::string slice = parts[0].empty() ? "system.slice" : parts[0];
    if (slice.size() < 7 || slice.compare(slice.size() - 6, 6, ".slice") != 0 ||
        slice.find('/') != std::string::npos)
      return Bad("linux.cgroupsPath %s: %s is not a slice name", path.c_str(), slice.c_str());
    if (slice != "-.slice") {
      std::string stem = slice.substr(0, slice.size() - 6);
      for (size_t dash = stem.find('-'); dash != std::string::npos;
           dash = stem.find('-', dash + 1)) {
        if (!p.parent.empty()) p.parent += "/";
        p.parent += stem.substr(0, dash) + ".slice";
      }
      if (!p.parent.empty()) p.parent += "/";
      p.parent += slice;
    }
    p.leaf = parts[1].empty() ? parts[2] : parts[1] + "-" + parts[2];
    if (p.leaf.find('.') == std::string::npos) p.leaf += ".scope";
  } else {
    std::string rel = path;
    while (!rel.empty() && rel[0] == '/') rel.erase(0, 1);
    size_t slash = rel.rfind('/');
    p.leaf = slash == std::string::npos ? rel : rel.substr(slash + 1);
    p.parent = slash == std::string::npos ? "" : rel.substr(0, slash);
  }
  for (const auto& l : fs::Split(p.parent, '/'))
    if (!p.parent.empty() && !CgroupLevelOk(l))
      return Bad("linux.cgroupsPath %s: bad level '%s'", path.c_str(), l.c_str());
  if (!CgroupLevelOk(p.leaf)) return Bad("linux.cgroupsPath %s: bad name", path.c_str());
  return p;
}

Result<Process> ParseProcessJson(const std::string& text) {
  json p = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (p.is_discarded() || !p.is_object()) return Bad("process: not a JSON object");
  json root = {{"process", p}};
  Spec spec;
  TRY(ParseProcess(root, spec));
  return spec.process;
}

Result<Resources> ParseResourcesJson(const std::string& text) {
  json r = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (r.is_discarded() || !r.is_object()) return Bad("linux.resources: not a JSON object");
  Spec spec;
  TRY(ParseResources(r, spec));
  return spec.resources;
}

Result<void> ValidateBridgeName(const std::string& name) {
  bool ok = !name.empty() && name.size() <= 15 && name != "." && name != "..";
  for (char ch : name)
    ok = ok && ch != '/' && ch != ':' && !isspace(static_cast<unsigned char>(ch)) && ch != 0;
  if (!ok)
    return MakeError(ErrorKind::kBadConfig, 0,
                     "bad bridge name '%s': 1-15 characters, no '/', ':' or white space",
                     name.c_str());
  return Ok();
}

Result<Spec> ParseSpec(const std::string& json_text, const std::string& bundle) {
  json root = json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded()) return Bad("not valid JSON");
  if (!root.is_object()) return Bad("expected a JSON object");
  Spec spec;
  TRY(OnlyKeys(root, "",
               {"ociVersion", "process", "root", "hostname", "domainname", "mounts", "linux",
                "annotations"}));
  ASSIGN_OR_RETURN(spec.domainname, GetString(root, "domainname", "", false));
  if (root.contains("hooks")) return Bad("hooks: not supported");
  ASSIGN_OR_RETURN(spec.oci_version, GetString(root, "ociVersion", "", false, "1.0.2"));
  if (!root.contains("root")) return Bad("root: missing");
  const json& r = root["root"];
  TRY(OnlyKeys(r, "root", {"path", "readonly"}));
  ASSIGN_OR_RETURN(spec.root_path, GetString(r, "path", "root", true));
  ASSIGN_OR_RETURN(spec.root_readonly, GetBool(r, "readonly", "root", false));
  if (spec.root_path.empty()) return Bad("root.path: empty");
  if (spec.root_path[0] != '/') spec.root_path = bundle + "/" + spec.root_path;
  ASSIGN_OR_RETURN(spec.hostname, GetString(root, "hostname", "", false));
  TRY(ParseProcess(root, spec));
  TRY(ParseLinux(root, spec));
  TRY(ParseMounts(root, spec));
  TRY(ParseAnnotations(root, spec));
  if (!spec.ns.mount) return Bad("linux.namespaces: a mount namespace is required (pivot_root)");
  if ((!spec.hostname.empty() || !spec.domainname.empty()) && !spec.ns.uts)
    return Bad("hostname/domainname: needs a uts namespace");
  if (spec.ns.user && !spec.ns.paths.empty())
    return Bad("linux.namespaces[].path: joining a namespace from a new user namespace is not "
               "supported");
  if (spec.ns.user && (spec.uid_mappings.empty() || spec.gid_mappings.empty()))
    return Bad("linux.uidMappings/gidMappings: required with a user namespace");
  if (!spec.ns.user && (!spec.uid_mappings.empty() || !spec.gid_mappings.empty()))
    return Bad("linux.uidMappings: given without a user namespace");
  return spec;
}

Result<Spec> LoadSpec(const std::string& bundle) {
  std::string path = bundle + "/config.json";
  auto text = fs::ReadFile(path);
  if (!text.ok()) {
    Error e = std::move(text).error();
    return e.wrap("bundle " + bundle);
  }
  auto spec = ParseSpec(*text, bundle);
  if (!spec.ok()) return std::move(spec.error().wrap(path));
  return spec;
}

nlohmann::json DefaultMounts() {
  return json::array({
      {{"destination", "/proc"},
       {"type", "proc"},
       {"source", "proc"},
       {"options", {"nosuid", "noexec", "nodev"}}},
      {{"destination", "/dev"},
       {"type", "tmpfs"},
       {"source", "tmpfs"},
       {"options", {"nosuid", "strictatime", "mode=755", "size=65536k"}}},
      {{"destination", "/dev/pts"},
       {"type", "devpts"},
       {"source", "devpts"},
       {"options", {"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"}}},
      {{"destination", "/dev/shm"},
       {"type", "tmpfs"},
       {"source", "shm"},
       {"options", {"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"}}},
      {{"destination", "/dev/mqueue"},
       {"type", "mqueue"},
       {"source", "mqueue"},
       {"options", {"nosuid", "noexec", "nodev"}}},
      {{"destination", "/sys"},
       {"type", "sysfs"},
       {"source", "sysfs"},
       {"options", {"nosuid", "noexec", "nodev", "ro"}}},
  });
}

nlohmann::json MakeConfig(const RunOptions& o) {
  json env = json::array({"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                          "HOME=/root", "TERM=xterm"});
  for (const auto& e : o.env) env.push_back(e);
  json cfg = {
      {"ociVersion", "1.0.2"},
      {"process",
       {{"terminal", false},
        {"user", {{"uid", 0}, {"gid", 0}}},
        {"args", o.args},
        {"env", env},
        {"cwd", "/"}}},
      {"root", {{"path", o.rootfs}, {"readonly", o.readonly}}},
      {"hostname", o.hostname.empty() ? "godwit" : o.hostname},
      {"mounts", DefaultMounts()},
      {"linux",
       {{"namespaces", json::array({{{"type", "pid"}},
                                    {{"type", "network"}},
                                    {{"type", "ipc"}},
                                    {{"type", "uts"}},
                                    {{"type", "mount"}},
                                    {{"type", "cgroup"}}})},
        {"maskedPaths",
         {"/proc/kcore", "/proc/keys", "/proc/timer_list", "/proc/sched_debug", "/sys/firmware",
          "/proc/scsi", "/proc/acpi"}},
        {"readonlyPaths",
         {"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"}}}},
  };
  json res = json::object();
  if (o.memory > 0) res["memory"] = {{"limit", o.memory}};
  if (o.cpus > 0 || o.cpu_shares > 0) {
    json cpu = json::object();
    if (o.cpus > 0) {
      cpu["period"] = 100000;
      cpu["quota"] = static_cast<int64_t>(std::llround(o.cpus * 100000));
    }
    if (o.cpu_shares > 0) cpu["shares"] = o.cpu_shares;
    res["cpu"] = cpu;
  }
  if (o.pids > 0) res["pids"] = {{"limit", o.pids}};
  if (!res.empty()) cfg["linux"]["resources"] = res;
  if (o.user_ns) {
    cfg["linux"]["namespaces"].push_back({{"type", "user"}});
    cfg["linux"]["uidMappings"] =
        json::array({{{"containerID", 0}, {"hostID", o.user_ns_base}, {"size", 65536}}});
    cfg["linux"]["gidMappings"] =
        json::array({{{"containerID", 0}, {"hostID", o.user_ns_base}, {"size", 65536}}});
  }
  json anno = json::object();
  if (!o.ip.empty()) anno[kAnnoIp] = o.ip;
  if (!o.gateway.empty()) anno[kAnnoGateway] = o.gateway;
  if (!o.bridge.empty()) anno[kAnnoBridge] = o.bridge;
  if (!o.allow_ports.empty()) {
    std::string s;
    for (const auto& p : o.allow_ports) s += (s.empty() ? "" : ",") + p;
    anno[kAnnoAllowPorts] = s;
  }
  if (o.disk > 0) anno[kAnnoDisk] = std::to_string(o.disk);
  if (!anno.empty()) cfg["annotations"] = anno;
  return cfg;
}

}  // namespace godwit::runtime
