// `godwit features` and `godwit spec`: the OCI runtime's self-description and a template
// bundle config, as runc's verbs of the same names (engines probe `features` to learn what
// the runtime can do).
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <nlohmann/json.hpp>

#include "cli/command.h"
#include "common/args.h"
#include "common/fs.h"
#include "runtime/spec.h"

namespace godwit::cli {
namespace {

using nlohmann::json;

int CmdFeatures(Global& g, const std::vector<std::string>& args) {
  auto p = ParseArgs(args, {});
  if (!p.ok()) return ReportError(g, "features", p.error());
  json caps = json::array();
  for (const char* c :
       {"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
        "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
        "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW",
        "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT",
        "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
        "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
        "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE",
        "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ",
        "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE"})
    caps.push_back(c);
  json f = {
      {"ociVersionMin", "1.0.0"},
      {"ociVersionMax", "1.0.2"},
      {"hooks", json::array()},  // hooks are refused (docs/runtime.md)
      {"mountOptions",
       {"async",   "atime",  "bind",      "defaults",    "dev",        "diratime", "dirsync",
        "exec",    "mand",   "noatime",   "nodev",       "nodiratime", "noexec",   "nomand",
        "norelatime", "nosuid", "private", "rbind",      "relatime",   "rprivate", "rshared",
        "rslave",  "runbindable", "ro",   "rw",          "shared",     "slave",    "strictatime",
        "suid",    "sync",   "unbindable"}},
      {"linux",
       {{"namespaces", {"cgroup", "ipc", "mount", "network", "pid", "user", "uts"}},
        {"capabilities", caps},
        {"cgroup",
         {{"v1", true}, {"v2", true}, {"systemd", false}, {"systemdUser", false}}},
        {"seccomp",
         {{"enabled", true},
          {"actions",
           {"SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS",
            "SCMP_ACT_KILL_THREAD", "SCMP_ACT_LOG", "SCMP_ACT_TRACE", "SCMP_ACT_TRAP"}},
          {"operators",
           {"SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT", "SCMP_CMP_LE", "SCMP_CMP_LT",
            "SCMP_CMP_MASKED_EQ", "SCMP_CMP_NE"}},
          {"archs",
           {"SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM", "SCMP_ARCH_X32", "SCMP_ARCH_X86",
            "SCMP_ARCH_X86_64"}}}},
        {"apparmor", {{"enabled", false}}},
        {"selinux", {{"enabled", false}}}}},
      {"annotations",
       {{"org.godwit.version", GODWIT_VERSION},
        {"org.godwit.checkpoint.enabled", "true"},
        {"org.godwit.cgroup.systemd", "mapped onto cgroupfs, systemd is not asked"}}},
  };
  printf("%s\n", f.dump(g.json ? -1 : 2).c_str());
  return 0;
}
GODWIT_COMMAND(features, "features", "features",
               "what this runtime supports, as the OCI runtime features JSON", CmdFeatures,
               "Prints the OCI runtime features document (runtime-spec features.md): the\n"
               "namespaces, capabilities, mount options, cgroup versions and seccomp actions godwit\n"
               "supports. Engines read it to learn what the runtime can do.\n"
               "\n"
               "options:\n"
               "  --json (global)   compact, on one line\n"
               "\n"
               "examples:\n"
               "  godwit features\n"
               "  godwit --json features | jq .linux.seccomp\n");

int CmdSpec(Global& g, const std::vector<std::string>& args) {
  auto p = ParseArgs(args, {{"bundle"}, {"rootless"}, {{"-b", "bundle"}}});
  if (!p.ok()) return ReportError(g, "spec", p.error());
  if (p->has("rootless"))
    return ReportError(g, "spec", MakeError(ErrorKind::kUnsupported, 0,
                                            "--rootless: rootless containers are not supported"));
  std::string dir = p->get("bundle", ".");
  std::string path = dir + "/config.json";
  struct stat st;
  if (::stat(path.c_str(), &st) == 0)
    return ReportError(g, "spec", MakeError(ErrorKind::kExists, EEXIST,
                                            "%s exists; remove it first", path.c_str()));
  runtime::RunOptions o;
  o.rootfs = "rootfs";
  o.args = {"sh"};
  auto w = fs::WriteFile(path, runtime::MakeConfig(o).dump(2) + "\n");
  if (!w.ok()) return ReportError(g, "spec", w.error());
  return 0;
}
GODWIT_COMMAND(spec, "spec", "spec [--bundle DIR]",
               "write a template config.json (busybox sh in ./rootfs) into the bundle", CmdSpec,
               "Writes a template config.json into the bundle directory: busybox `sh` in\n"
               "./rootfs, the usual namespaces, no network. Refuses to overwrite one.\n"
               "\n"
               "options:\n"
               "  --bundle DIR, -b DIR   the bundle directory (default .)\n"
               "  --rootless             refused: godwit runs rootful containers only\n"
               "\n"
               "examples:\n"
               "  mkdir b && godwit mkrootfs b/rootfs && godwit spec -b b\n"
               "  godwit spec --bundle /srv/web1\n");

}  // namespace
}  // namespace godwit::cli
