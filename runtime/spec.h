// The OCI runtime config (config.json) subset godwit runs, parsed into plain structs.
//
// Parsing is strict: a field godwit does not implement and whose absence would change the
// container's isolation or limits (seccomp, apparmor, devices on cgroup v2, time namespace,
// joining an existing namespace by path, a terminal, ...) is a kBadConfig error naming the field,
// never silently dropped. Harmless metadata (annotations, hooks-free fields like ociVersion) is
// accepted. godwit-specific settings that OCI has no field for (the container's IP, its allowed
// ports, the disk quota) travel as annotations, see kAnno* below.
#pragma once

#include <sys/types.h>

#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "common/result.h"

namespace godwit::runtime {

// Annotations that carry godwit settings through a standard OCI bundle.
inline constexpr const char* kAnnoIp = "org.godwit.net.ip";                   // "198.18.0.10/24"
inline constexpr const char* kAnnoGateway = "org.godwit.net.gateway";         // "198.18.0.1"
inline constexpr const char* kAnnoAllowPorts = "org.godwit.net.allow-ports";  // "80,443/tcp,53/udp"
inline constexpr const char* kAnnoDisk = "org.godwit.storage.size";           // "512M"
inline constexpr const char* kAnnoBridge = "org.godwit.net.bridge";           // "br0"

struct IdMap {
  uint32_t container_id = 0;
  uint32_t host_id = 0;
  uint32_t size = 0;
};

struct Mount {
  std::string destination;
  std::string type;  // proc, sysfs, tmpfs, devpts, mqueue, bind
  std::string source;
  std::vector<std::string> options;
  // Derived from options by ParseSpec.
  unsigned long flags = 0;        // MS_* applied at mount time
  unsigned long propagation = 0;  // MS_PRIVATE/MS_SLAVE/MS_SHARED(|MS_REC) or 0
  std::string data;               // filesystem-specific options ("mode=755,size=65536k")
  bool bind = false;
  bool recursive = false;
  // type "cgroup": the container's own cgroup directories on the host, by hierarchy ("memory",
  // "unified", ...), filled by Create before the init builds its root. init.cc mounts cgroup2
  // there (read-only as the options say) when the host has a cgroup2 hierarchy, else an empty
  // read-only tmpfs.
  std::map<std::string, std::string> cgroup_dirs;
};

struct Rlimit {
  int resource = 0;
  uint64_t soft = 0;
  uint64_t hard = 0;
};

struct Capabilities {
  bool present = false;  // absent in config: the process keeps the runtime's full set
  std::vector<int> bounding, effective, inheritable, permitted, ambient;
};

struct Process {
  std::vector<std::string> args;
  std::vector<std::string> env;
  std::string cwd = "/";
  uint32_t uid = 0;
  uint32_t gid = 0;
  std::vector<uint32_t> additional_gids;
  bool no_new_privileges = false;
  std::optional<uint32_t> umask;  // default 022
  std::optional<int> oom_score_adj;
  Capabilities caps;
  std::vector<Rlimit> rlimits;
  // process.terminal: the process gets a new pty (made inside the container's devpts) as its
  // stdio and controlling terminal; the master goes to the caller's --console-socket.
  bool terminal = false;
  uint16_t console_height = 0, console_width = 0;  // process.consoleSize, 0 = not given
};

// linux.seccomp, kept as the config says; runtime/seccomp.cc compiles it with libseccomp.
struct Seccomp {
  bool present = false;
  std::string default_action = "SCMP_ACT_ALLOW";
  std::optional<uint32_t> default_errno;  // defaultErrnoRet
  std::vector<std::string> architectures;  // SCMP_ARCH_*
  std::vector<std::string> flags;          // SECCOMP_FILTER_FLAG_*
  struct Arg {
    uint32_t index = 0;
    uint64_t value = 0, value_two = 0;
    std::string op;  // SCMP_CMP_*
  };
  struct Rule {
    std::vector<std::string> names;
    std::string action;
    std::optional<uint32_t> errno_ret;
    std::vector<Arg> args;
  };
  std::vector<Rule> syscalls;
};

// Resource limits (linux.resources). Unset values are not written.
struct Resources {
  std::optional<int64_t> memory_limit;  // bytes; -1 = unlimited
  std::optional<uint64_t> cpu_shares;   // v1 cpu.shares (v2: converted to cpu.weight)
  std::optional<int64_t> cpu_quota;     // us per period; -1 = unlimited
  std::optional<uint64_t> cpu_period;   // us
  std::optional<int64_t> pids_limit;    // -1 or 0 = unlimited
  // memory.swap (limit + swap, as OCI says): v1 memory.memsw.limit_in_bytes where the kernel
  // accounts swap, v2 memory.swap.max (swap - limit); ignored where neither exists, as runc.
  std::optional<int64_t> memory_swap;
  struct DeviceRule {
    bool allow = false;
    char type = 'a';                 // a, c, b
    int64_t major = -1, minor = -1;  // -1 = wildcard
    std::string access = "rwm";
  };
  std::vector<DeviceRule> devices;  // v1 devices controller only
  bool empty() const {
    return !memory_limit && !memory_swap && !cpu_shares && !cpu_quota && !cpu_period && !pids_limit &&
           devices.empty();
  }
};

// Network settings of the container's network namespace (from annotations).
//
// Two modes for the veth's host end. Routed (the default): the host end holds the gateway
// address with the container's address as its point-to-point peer (a /32 route per container).
// Bridged (`bridge` set, OpenVZ's veth mode): the host end is a port of an existing bridge in the
// host's netns and has no address; the container is on the bridge's L2 segment with its own
// address, so it keeps that address and its MAC wherever a host attaches it to the same segment
// (the two ends of a migration). The default route exists only if a gateway is given.
struct NetworkSpec {
  std::string address;  // container address, "198.18.0.10"; empty: only loopback
  int prefix = 24;
  // Routed: host end address and the container's default route (defaults to the subnet's first
  // host). Bridged: the container's default route if set, else none.
  std::string gateway;
  std::string bridge;  // bridged mode: the bridge's name in the host's netns
  struct Port {
    int port = 0;
    std::string proto = "tcp";  // tcp | udp
  };
  std::vector<Port> allow_ports;  // non-empty: firewall drops other inbound traffic
  bool firewall() const { return !allow_ports.empty(); }
};

struct Namespaces {
  bool pid = false, mount = false, uts = false, ipc = false, network = false, cgroup = false,
       user = false;
  // linux.namespaces[].path: joined (setns) instead of created, e.g. the network namespace
  // Podman's netavark made for a container or a pod. network, ipc and uts only; the flag of a
  // joined type stays false (no new namespace is made). type -> path.
  std::map<std::string, std::string> paths;
};

struct Spec {
  std::string oci_version = "1.0.2";
  Process process;
  std::string root_path;  // absolute after ParseSpec (relative paths are bundle-relative)
  bool root_readonly = false;
  std::string hostname;
  std::string domainname;
  std::vector<Mount> mounts;
  Namespaces ns;
  std::vector<IdMap> uid_mappings, gid_mappings;
  Resources resources;
  std::vector<std::string> masked_paths, readonly_paths;
  std::string rootfs_propagation;  // "", private, rprivate, slave, rslave
  std::map<std::string, std::string> annotations;
  NetworkSpec net;         // from annotations
  int64_t disk_quota = 0;  // bytes, from annotations; 0 = no quota, writes go to the rootfs
  std::map<std::string, std::string> sysctl;  // linux.sysctl (applied inside the namespaces)
  Seccomp seccomp;                            // linux.seccomp
  // linux.cgroupsPath as given: "/a/b/leaf" or "a/b/leaf" (cgroupfs) or "slice:prefix:name"
  // (systemd); see CgroupPlacement. Empty: <--cgroup-parent>/<id>.
  std::string cgroups_path;
};

// Where a container's cgroup goes: "<parent>/<leaf>" under every hierarchy's root.
struct CgroupPlacement {
  std::string parent;  // may be empty (the leaf sits at the hierarchy's root)
  std::string leaf;
};
// Maps linux.cgroupsPath onto cgroupfs: "/a/b/c" and "a/b/c" -> {"a/b", "c"}; the systemd form
// "slice:prefix:name" (with or without --systemd-cgroup) -> the path systemd would give the
// scope, {"machine.slice" or "a.slice/a-b.slice", "prefix-name.scope"} (no systemd is asked:
// godwit writes the cgroupfs directly). kBadConfig on "..", empty levels or bad characters.
Result<CgroupPlacement> ParseCgroupsPath(const std::string& path, bool systemd);

// A network interface name the kernel accepts (1-15 characters, no '/', ':' or space): kBadConfig.
Result<void> ValidateBridgeName(const std::string& name);

// Parses config.json text. bundle is the directory holding it (root.path is relative to it).
// Errors: kBadConfig naming the field ("linux.seccomp: not supported").
Result<Spec> ParseSpec(const std::string& json_text, const std::string& bundle);
Result<Spec> LoadSpec(const std::string& bundle);  // bundle/config.json
// An OCI process object alone (`exec --process F.json`), parsed as config.json's "process".
Result<Process> ParseProcessJson(const std::string& json_text);
// An OCI linux.resources object alone (`update --resources F.json`).
Result<Resources> ParseResourcesJson(const std::string& json_text);

// The convenience form of `godwit run --rootfs DIR ...`: options that become a config.json.
struct RunOptions {
  std::string rootfs;
  std::vector<std::string> args;
  std::string hostname;
  int64_t memory = 0;  // bytes, 0 = no limit
  double cpus = 0;     // 0.5 = half a CPU (quota/period)
  uint64_t cpu_shares = 0;
  int64_t pids = 0;
  int64_t disk = 0;  // bytes
  std::string ip;    // "198.18.0.10/24"
  std::string gateway;
  std::string bridge;  // attach the veth's host end to this bridge (NetworkSpec::bridge)
  std::vector<std::string> allow_ports;  // "80", "53/udp"
  std::vector<std::string> env;
  // A user namespace mapping ids 0-65535 to host ids user_ns_base.. (0: the same host ids). The
  // rootfs is not shifted: with a base, its files are those of an unmapped owner inside (readable
  // and executable as "other", as a busybox rootfs is).
  bool user_ns = false;
  uint32_t user_ns_base = 0;
  bool readonly = false;
};

// Builds a config.json document (with the default mounts, all namespaces, a minimal /dev).
nlohmann::json MakeConfig(const RunOptions& opts);

// The default OCI mounts godwit's generated configs use (proc, /dev tmpfs, devpts, shm, mqueue,
// sysfs). Exposed for tests and the benchmark's runc bundle.
nlohmann::json DefaultMounts();

}  // namespace godwit::runtime
