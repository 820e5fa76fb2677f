#include "cli/criu_opts.h"

#include <limits.h>
#include <stdlib.h>

#include <cstring>
#include <map>
#include <set>

#include "common/log.h"

namespace godwit::cli {
namespace {

// CRIU's/runc's long names of godwit's own options, per verb.
const std::map<std::string, std::string>& LongAliases(CriuVerb verb) {
  static const std::map<std::string, std::string> dump = {
      {"tree", "pid"},                            // criu dump -t/--tree
      {"image-path", "images-dir"},               // runc checkpoint --image-path
      {"work-path", "work-dir"},                  // runc --work-path, criu -W/--work-dir
      {"manage-cgroups-mode", "manage-cgroups"},  // runc
  };
  static const std::map<std::string, std::string> restore = {
      {"restore-detached", "detach"},  // criu restore -d/--restore-detached
      {"pidfile", "pid-file"},         // criu restore --pidfile
      {"work-path", "work-dir"},
      {"manage-cgroups-mode", "manage-cgroups"},
  };
  return verb == CriuVerb::kDump ? dump : restore;
}

// Short options taking a value, as getopt lets them be glued ("-t123", "-D/img").
const std::map<char, std::string>& ShortValued(CriuVerb verb) {
  static const std::map<char, std::string> dump = {
      {'t', "pid"}, {'D', "images-dir"}, {'W', "work-dir"}, {'o', "log-file"}, {'r', "root"}};
  static const std::map<char, std::string> restore = {
      {'D', "images-dir"}, {'W', "work-dir"}, {'o', "log-file"}, {'r', "root"}};
  return verb == CriuVerb::kDump ? dump : restore;
}

// Options whose value is optional in CRIU (getopt optional_argument: only "--opt=V" carries one).
const std::set<std::string> kOptionalValue = {"manage-cgroups", "ext-unix-sk"};

bool AllDigits(const char* s) {
  if (!*s) return false;
  for (; *s; ++s)
    if (*s < '0' || *s > '9') return false;
  return true;
}

}  // namespace

std::vector<std::string> NormalizeCriuArgs(const std::vector<std::string>& args, CriuVerb verb) {
  std::vector<std::string> out;
  const auto& longs = LongAliases(verb);
  const auto& shorts = ShortValued(verb);
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--") {
      out.insert(out.end(), args.begin() + i, args.end());
      break;
    }
    if (a.rfind("--", 0) == 0) {
      std::string name = a.substr(2), value;
      size_t eq = name.find('=');
      bool has_value = eq != std::string::npos;
      if (has_value) {
        value = name.substr(eq + 1);
        name.resize(eq);
      }
      auto al = longs.find(name);
      if (al != longs.end()) name = al->second;
      if (name == "verbosity" && !has_value) {  // --verbosity: one level up from warnings
        out.push_back("--verbosity=3");
        continue;
      }
      if (kOptionalValue.count(name) && !has_value) has_value = true;  // bare: empty value
      out.push_back("--" + name + (has_value ? "=" + value : ""));
      continue;
    }
    if (a.size() >= 2 && a[0] == '-' && a[1] == 'v') {
      // -v, -vv, -vvv: up from CRIU's default level 2; -vN: level N.
      const char* rest = a.c_str() + 2;
      if (AllDigits(rest)) {
        out.push_back(std::string("--verbosity=") + rest);
        continue;
      }
      if (strspn(rest, "v") == strlen(rest)) {
        out.push_back("--verbosity=" + std::to_string(3 + strlen(rest)));
        continue;
      }
    }
    if (a == "-x" || a.rfind("-x", 0) == 0) {  // -x[INO]: --ext-unix-sk, value glued or none
      out.push_back("--ext-unix-sk=" + a.substr(2));
      continue;
    }
    if (a.size() > 2 && a[0] == '-') {
      auto sv = shorts.find(a[1]);
      if (sv != shorts.end()) {  // "-t123" -> "--pid=123"
        out.push_back("--" + sv->second + "=" + a.substr(2));
        continue;
      }
    }
    out.push_back(a);
  }
  return out;
}

void AddCriuOptions(ArgSpec& spec, CriuVerb verb) {
  // Same meaning as godwit's own options.
  spec.aliases["-j"] = "shell-job";
  spec.aliases["-D"] = "images-dir";
  spec.flags.insert({"shell-job", "tcp-established", "tcp-close"});
  if (verb == CriuVerb::kDump) {
    spec.aliases["-t"] = "pid";
    spec.aliases["-R"] = "leave-running";
  } else {
    spec.aliases["-d"] = "detach";
  }
  // What godwit always does: accepted, nothing to switch on.
  spec.aliases["-l"] = "file-locks";
  spec.flags.insert({"file-locks", "link-remap", "skip-in-flight", "evasive-devices", "log-pid",
                     "display-stats"});
  // Checked (ApplyCriuOptions) or informational.
  spec.aliases["-W"] = "work-dir";
  spec.aliases["-o"] = "log-file";
  spec.aliases["-r"] = "root";
  spec.values.insert({"ext-unix-sk", "manage-cgroups", "ghost-limit", "timeout", "verbosity",
                      "log-file", "work-dir", "root", "network-lock"});
}

Result<CriuSettings> ApplyCriuOptions(const ParsedArgs& pa, CriuVerb verb) {
  CriuSettings s;
  if (pa.has("verbosity")) {
    std::string v = pa.get("verbosity");
    if (!AllDigits(v.c_str()))
      return MakeError(ErrorKind::kUsage, 0, "--verbosity/-v: want a level 0-4, got '%s'",
                       v.c_str());
    int n = atoi(v.c_str());
    log::SetLevel(n <= 1 ? log::kError : n == 2 ? log::kWarn : n == 3 ? log::kInfo : log::kDebug);
  }
  for (const auto& m : pa.all("manage-cgroups")) {
    static const std::set<std::string> kModes = {"",     "none",   "props", "soft",
                                                 "full", "strict", "ignore"};
    if (!kModes.count(m))
      return MakeError(ErrorKind::kUsage, 0,
                       "--manage-cgroups=%s: want none, props, soft, full, strict or ignore",
                       m.c_str());
  }
  if (pa.has("root")) {
    std::string r = pa.get("root");
    char real[PATH_MAX];
    if (!realpath(r.c_str(), real) || strcmp(real, "/") != 0)
      return MakeError(ErrorKind::kUnsupported, 0,
                       "--root %s: a process tree is dumped and restored under godwit's own root "
                       "(/); a tree in another root filesystem is a container (godwit "
                       "checkpoint/restore)",
                       r.c_str());
  }
  if (pa.has("ghost-limit")) {
    auto n = ParseSize(pa.get("ghost-limit"));
    if (!n.ok())
      return MakeError(ErrorKind::kUsage, 0, "--ghost-limit: %s", n.error().message().c_str());
  }
  if (pa.has("timeout")) {
    std::string t = pa.get("timeout");
    if (!AllDigits(t.c_str()))
      return MakeError(ErrorKind::kUsage, 0, "--timeout: want seconds, got '%s'", t.c_str());
  }
  if (pa.has("network-lock")) {
    std::string m = pa.get("network-lock");
    if (m != "nftables" && m != "iptables" && m != "skip")
      return MakeError(ErrorKind::kUsage, 0, "--network-lock %s: want nftables, iptables or skip",
                       m.c_str());
  }
  for (const auto& x : pa.all("ext-unix-sk")) {
    if (verb != CriuVerb::kDump) continue;  // restore reconnects what the images allow
    if (x.empty()) {
      s.external.push_back("unix:*");
    } else if (AllDigits(x.c_str())) {
      s.external.push_back("unix:[" + x + "]");
    } else {
      return MakeError(ErrorKind::kUsage, 0,
                       "--ext-unix-sk=%s: want a socket inode number (or none: every named peer)",
                       x.c_str());
    }
  }
  return s;
}

}  // namespace godwit::cli
