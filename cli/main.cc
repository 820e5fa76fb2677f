// godwit: one binary, many verbs.
// `godwit [--root DIR] [--cgroup-parent NAME] [--json] [--log-level L] [--log FILE]
//  [--log-format text|json] [--systemd-cgroup] [--cgroup-manager cgroupfs|systemd] VERB ...`
#include <algorithm>
#include <cstdio>
#include <ctime>
#include <cstring>
#include <unistd.h>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "cli/command.h"
#include "dump/precopy.h"
#include "common/log.h"

namespace godwit::cli {
namespace {

std::map<std::string, Command>& Registry() {
  static std::map<std::string, Command> r;
  return r;
}

void PrintHelp() {
  printf("godwit %s: checkpoint/restore and live migration of Linux containers\n\n", GODWIT_VERSION);
  printf("usage: godwit [--root DIR] [--cgroup-parent NAME] [--json] "
         "[--log-level error|warn|info|debug]\n"
         "              [--log FILE] [--log-format text|json] [--systemd-cgroup] "
         "[--cgroup-manager cgroupfs|systemd] VERB ...\n\n");
  for (const auto& [name, cmd] : Registry()) printf("  %-10s %s\n", name.c_str(), cmd.summary);
  printf("\n`godwit help VERB` shows a verb's usage. Exit codes: 0 ok, 1 error, 2 usage,\n"
         "3 not found, 4 already exists, 5 bad image, 6 unsupported, 7 bad config, 8 peer failed.\n");
}

}  // namespace

bool Register(const Command& cmd) {
  Registry()[cmd.name] = cmd;
  return true;
}

void PrintVerbHelp(const Command& c) {
  printf("usage: godwit %s\n\n%s\n", c.usage, c.summary);
  if (c.help) printf("\n%s", c.help);
}

namespace {
int progress_fd = STDERR_FILENO;
}  // namespace

void SetProgressFd(int fd) { progress_fd = fd; }

void TerminalProgress(const char* phase, uint64_t done, uint64_t total) {
  static std::string last_phase;
  static double phase_start = 0, last_draw = 0;
  static bool open_line = false;
  timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  double now = t.tv_sec + t.tv_nsec / 1e9;
  bool new_phase = last_phase != phase;
  if (new_phase) {
    if (open_line) dprintf(progress_fd, "\n");
    last_phase = phase;
    phase_start = now;
    last_draw = 0;
  }
  bool finished = total > 0 && done >= total;
  // Redrawn at most 10 times a second: a terminal over ssh should not be the bottleneck.
  if (!new_phase && !finished && now - last_draw < 0.1) return;
  last_draw = now;
  double secs = now - phase_start;
  double mib = done / 1048576.0;
  int pct = total ? static_cast<int>(done * 100 / total) : 100;
  // Phases count bytes, but for the pre-copy rounds ("pre-dump round": N of M).
  size_t len = strlen(phase);
  if (len >= 5 && strcmp(phase + len - 5, "round") == 0)
    dprintf(progress_fd, "\r%s %llu of %llu\033[K", phase, static_cast<unsigned long long>(done),
            static_cast<unsigned long long>(total));
  else
    dprintf(progress_fd, "\r%s: %3d%%  %.1f/%.1f MiB  %.0f MiB/s\033[K", phase, pct, mib,
            total / 1048576.0, secs > 0 ? mib / secs : 0.0);
  open_line = !finished;
  if (finished) {
    dprintf(progress_fd, "\n");
    last_phase.clear();
  }
}

ProgressFn ProgressFor(const Global& global) {
  return isatty(STDERR_FILENO) && !global.json ? TerminalProgress : nullptr;
}

namespace {

// --log FILE: the error appended as runc would log it (conmon and Podman read it back).
void LogToFile(const Global& global, const char* verb, const Error& err) {
  if (global.log_file.empty()) return;
  FILE* f = fopen(global.log_file.c_str(), "ae");
  if (!f) return;
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  tm t;
  gmtime_r(&ts.tv_sec, &t);
  char when[64];
  strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &t);
  std::string msg = std::string(verb) + ": " + err.to_string();
  if (global.log_format == "json")
    fprintf(f, "%s\n",
            nlohmann::json({{"level", "error"}, {"msg", msg}, {"time", when}}).dump().c_str());
  else
    fprintf(f, "time=\"%s\" level=error msg=%s\n", when, nlohmann::json(msg).dump().c_str());
  fclose(f);
}

}  // namespace

Result<int> ParsePreCopy(const std::string& value) {
  if (value == "auto") return dump::kPreCopyAuto;
  char* end = nullptr;
  long n = strtol(value.c_str(), &end, 10);
  if (value.empty() || *end || n < 1 || n > 1000)
    return MakeError(ErrorKind::kUsage, 0, "--pre-copy=%s: a count of rounds >= 1, or auto",
                     value.c_str());
  return static_cast<int>(n);
}

int ReportError(const Global& global, const char* verb, const Error& err) {
  LogToFile(global, verb, err);
  if (global.json) {
    nlohmann::json j = {{"error", err.message()},
                        {"verb", verb},
                        {"exit_code", err.exit_code()}};
    if (err.sys_errno() != 0) {
      j["errno"] = err.sys_errno();
      j["strerror"] = strerror(err.sys_errno());
    }
    fprintf(stderr, "%s\n", j.dump().c_str());
  } else {
    fprintf(stderr, "godwit %s: error: %s\n", verb, err.to_string().c_str());
  }
  return err.exit_code();
}

}  // namespace godwit::cli

int main(int argc, char** argv) {
  using namespace godwit;
  // GODWIT_LOG=debug|info|warn|error: the log level before any option changes it.
  log::SetLevel(log::LevelFromName(getenv("GODWIT_LOG")));
  cli::Global global;
  int i = 1;
  for (; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&](const char* name) -> const char* {
      std::string prefix = std::string("--") + name + "=";
      if (a.rfind(prefix, 0) == 0) return argv[i] + prefix.size();
      if (a == std::string("--") + name && i + 1 < argc) return argv[++i];
      return nullptr;
    };
    if (a == "--json") {
      global.json = true;
    } else if (a == "--debug") {
      log::SetLevel(log::kDebug);
    } else if (const char* v = value("root")) {
      global.root = v;
    } else if (const char* v = value("cgroup-parent")) {
      global.cgroup_parent = v;
    } else if (const char* v = value("log")) {
      global.log_file = v;
    } else if (const char* v = value("log-format")) {
      global.log_format = v;
      if (global.log_format != "text" && global.log_format != "json") {
        fprintf(stderr, "godwit: --log-format %s: expected text or json\n", v);
        return static_cast<int>(ErrorKind::kUsage);
      }
    } else if (a == "--systemd-cgroup") {
      global.systemd_cgroup = true;
    } else if (const char* v = value("cgroup-manager")) {
      std::string m = v;
      if (m != "cgroupfs" && m != "systemd" && m != "disabled") {
        fprintf(stderr, "godwit: --cgroup-manager %s: expected cgroupfs or systemd\n", v);
        return static_cast<int>(ErrorKind::kUsage);
      }
      global.systemd_cgroup = m == "systemd";
    } else if (const char* v = value("rootless")) {
      // runc's --rootless true|false|auto: godwit runs as root only; accepted for "false"/"auto".
      if (std::string(v) == "true") {
        fprintf(stderr, "godwit: --rootless true: rootless containers are not supported\n");
        return static_cast<int>(ErrorKind::kUnsupported);
      }
    } else if (value("criu")) {
      // runc's path to CRIU: godwit checkpoints itself and never runs criu.
    } else if (const char* v = value("log-level")) {
      std::string l = v;
      log::SetLevel(l == "debug" ? log::kDebug : l == "info" ? log::kInfo
                    : l == "error" ? log::kError : log::kWarn);
    } else if (a == "--help" || a == "-h") {
      cli::PrintHelp();
      return 0;
    } else if (a == "--version" || a == "-v") {
      printf("godwit version %s\n", GODWIT_VERSION);
      return 0;
    } else {
      break;
    }
  }
  if (i >= argc) {
    cli::PrintHelp();
    return static_cast<int>(ErrorKind::kUsage);
  }
  std::string verb = argv[i];
  auto& reg = cli::Registry();
  if (verb == "help") {
    if (i + 1 < argc && reg.count(argv[i + 1])) {
      cli::PrintVerbHelp(reg[argv[i + 1]]);
      return 0;
    }
    if (i + 1 < argc) {
      fprintf(stderr, "godwit help: unknown verb '%s'\n", argv[i + 1]);
      cli::PrintHelp();
      return static_cast<int>(ErrorKind::kUsage);
    }
    cli::PrintHelp();
    return 0;
  }
  auto it = reg.find(verb);
  if (it == reg.end()) {
    fprintf(stderr, "godwit: unknown verb '%s' (see `godwit help`)\n", verb.c_str());
    return static_cast<int>(ErrorKind::kUsage);
  }
  std::vector<std::string> args(argv + i + 1, argv + argc);
  // A verb-level --json is the same as the global one.
  auto j = std::find(args.begin(), args.end(), "--json");
  if (j != args.end() && std::find(args.begin(), j, "--") == j) {
    global.json = true;
    args.erase(j);
  }
  for (const auto& a : args) {
    if (a == "--") break;
    if (a == "--help" || a == "-h") {
      cli::PrintVerbHelp(it->second);
      return 0;
    }
  }
  return it->second.fn(global, args);
}
