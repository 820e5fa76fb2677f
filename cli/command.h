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
  // `godwit help VERB`: what the verb does, each flag described, and examples (runc's
  // `help checkpoint` is the model). Printed after the usage line.
  const char* help = nullptr;
};

// Prints a verb's usage, summary and help text to stdout (`godwit help VERB`, `VERB --help`).
void PrintVerbHelp(const Command& cmd);

bool Register(const Command& cmd);

// Prints the error (human text or, with --json, {"error":...}) to stderr and returns its exit
// code. The only place errors reach the user.
int ReportError(const Global& global, const char* verb, const Error& err);

// --pre-copy's value (dump, checkpoint): N >= 1 rounds, or "auto" (dump::kPreCopyAuto: until
// they converge). kUsage otherwise.
Result<int> ParsePreCopy(const std::string& value);

// A one-line progress meter on stderr: "phase: NN%  DONE/TOTAL MiB  RATE MiB/s", redrawn at
// most 10 times a second (and when a phase starts or ends); the line is closed when a phase
// reaches its total. done/total are bytes. Verbs install it only when stderr is a terminal and
// --json is off (ProgressFor), so pipes, logs and engines see nothing.
void TerminalProgress(const char* phase, uint64_t done, uint64_t total);
// TerminalProgress when stderr is a terminal and --json is off, else null.
using ProgressFn = void (*)(const char*, uint64_t, uint64_t);
ProgressFn ProgressFor(const Global& global);
// Where TerminalProgress draws (default stderr): a detached container's output takes over fd 2
// while it is created (detached_output.h), the meter stays on the terminal.
void SetProgressFd(int fd);

}  // namespace godwit::cli

#define GODWIT_COMMAND(ident, ...) \
  static const bool godwit_cmd_##ident = ::godwit::cli::Register(::godwit::cli::Command{__VA_ARGS__})
