// The thin command layer. Every cli/cmd_*.cc parses its arguments into options, calls a
// library, and prints; it registers its verbs with GODWIT_COMMAND at static-init time, so adding
// a verb touches no shared file.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/result.h"

namespace godwit::cli {

struct Global {
  std::string root = "/run/godwit";  // runc's --root: where container state lives
  bool json = false;                 // --json before the verb; verbs also accept it after
  // --cgroup-parent: where new containers' cgroups go (create, run, restore); later verbs read
  // a container's parent from its state record.
  std::string cgroup_parent = "godwit";
  // runc's global flags, as conmon and Podman pass them. --log FILE: errors are also appended
  // there (--log-format json: one {"level","msg","time"} object a line, which is what conmon
  // reads back); --systemd-cgroup (or --cgroup-manager systemd): linux.cgroupsPath is in
  // systemd's slice:prefix:name form, mapped onto cgroupfs (no systemd is asked).
  std::string log_file;
  std::string log_format = "text";
  bool systemd_cgroup = false;
};

using CommandFn = int (*)(Global& global, const std::vector<std::string>& args);

struct Command {
  const char* name;
  const char* usage;    // "create ID --bundle DIR [--pid-file F]"
  const char* summary;  // one line for `godwit help`
  CommandFn fn;
};

bool Register(const Command& cmd);

// Prints the error (human text or, with --json, {"error":...}) to stderr and returns its exit
// code. The only place errors reach the user.
int ReportError(const Global& global, const char* verb, const Error& err);

// A one-line "phase: NN%" progress meter on stderr, redrawn only when the percentage changes.
// Verbs install it only when stderr is a terminal and --json is off.
void TerminalProgress(const char* phase, uint64_t done, uint64_t total);

}  // namespace godwit::cli

#define GODWIT_COMMAND(ident, ...) \
  static const bool godwit_cmd_##ident = ::godwit::cli::Register(::godwit::cli::Command{__VA_ARGS__})
