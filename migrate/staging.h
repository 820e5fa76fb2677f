// Where a migration's images are staged on either end.
//
// Memory-backed (tmpfs) by default: the staged files are created, written and read inside the
// blackout (the final dump's few dozen files on the source, the same files and the restore's
// reads on the destination), and on a disk file system each creation costs far more than the
// data it holds: ext4 measured 0.3-0.5 ms of CPU per file here when many files were deleted
// recently (its inode allocator checks every recently freed inode: `recently_deleted`), ~20 ms
// of each end's blackout. The state root itself is used when it already is a tmpfs, or when
// /dev/shm is not a tmpfs or lacks room for the staged bytes (the memory is checked in the
// handshake anyway: the images are as big as the memory they hold).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/result.h"

namespace godwit::migrate {

// The staging base for `leaf` ("incoming", "outgoing") of the state root `root`, given the
// bytes it will hold: ROOT/LEAF on a tmpfs root; else /dev/shm/godwit-HASH/LEAF (HASH: of the
// root's path, so the hosts of one machine, each with its own root, never share a directory)
// when /dev/shm is a tmpfs with room for need_bytes and a margin; else ROOT/LEAF.
std::string ChooseStaging(const std::string& root, const char* leaf, uint64_t need_bytes);

// Every base ChooseStaging may return for root and leaf (the cleanup of dead sessions looks in
// each).
std::vector<std::string> StagingCandidates(const std::string& root, const char* leaf);

// Makes a session's staging directory (mode 0700, parents included), retrying once when a
// concurrent RemoveStagingIfEmpty removed a parent in between.
Result<void> MakeStaging(const std::string& dir);

// Removes base (a ChooseStaging result) and, for a /dev/shm one, its godwit-HASH parent, when
// they are empty: nothing stays in /dev/shm after the last session of a root.
void RemoveStagingIfEmpty(const std::string& base);

}  // namespace godwit::migrate
