// CRIU's and runc's option names on `godwit dump` and `godwit restore` (process trees).
//
// Scripts, runc/Podman wrappers and CRIU users pass CRIU's spellings to both verbs. Where godwit
// means the same thing the name is accepted: as an alias of godwit's own option (--tree, -j,
// --restore-detached, --pidfile, --image-path), or as a flag for what godwit always does (file
// locks, unlinked-but-open files, in-flight connections), so no flag is needed for correctness.
// CRIU's getopt spellings that godwit's parser does not take ("-t123", "-vvvv", "-v4", bare
// "--manage-cgroups", "--tree=123") are rewritten first.
#pragma once

#include <string>
#include <vector>

#include "common/args.h"
#include "common/result.h"

namespace godwit::cli {

enum class CriuVerb { kDump, kRestore };

// Rewrites CRIU's getopt spellings into ones ParseArgs takes (see the file comment), and CRIU's
// and runc's long names of godwit's own options into godwit's (--tree=5 -> --pid=5).
std::vector<std::string> NormalizeCriuArgs(const std::vector<std::string>& args, CriuVerb verb);

// Adds the CRIU/runc names of verb to spec: aliases of godwit's options and accepted flags.
void AddCriuOptions(ArgSpec& spec, CriuVerb verb);

// What the CRIU names of a parsed command line ask for, beyond the aliases.
struct CriuSettings {
  // --ext-unix-sk[=INO] on dump: outside unix peers allowed (DumpOptions::external keys).
  std::vector<std::string> external;
};

// Checks the values of the accepted CRIU options (--manage-cgroups modes, --root, --ghost-limit,
// --timeout, --network-lock) and applies the verbosity (-v..., --log-level). kUsage on a value
// godwit cannot honour, naming the option.
Result<CriuSettings> ApplyCriuOptions(const ParsedArgs& pa, CriuVerb verb);

}  // namespace godwit::cli
