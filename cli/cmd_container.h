// Container checkpoint/restore verbs (cmd_container.cc). `restore` is shared with the engine's
// process-tree restore (cmd_restore.cc): a positional ID or --image-path/--import selects the
// container form, which cmd_restore.cc hands over to ContainerRestoreCmd.
#pragma once

#include <string>
#include <vector>

#include "cli/command.h"

namespace godwit::cli {

// True when restore's arguments name a container (`restore ID --image-path DIR | --import F`).
bool IsContainerRestore(const std::vector<std::string>& args);

// `restore ID --image-path DIR | --import FILE [--bundle DIR] [--detach] [--pid-file F]`.
int ContainerRestoreCmd(Global& g, const std::vector<std::string>& args);

}  // namespace godwit::cli
