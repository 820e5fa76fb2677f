// Where a migration's images are staged on either end.
//
// Memory-backed (tmpfs) by default: the staged files are created, written and read inside the
// blackout (the final dump's few dozen files on the source, the same files and the restore's
// reads on the destination), and on a disk file system each creation costs far more than the
// data it holds: ext4 measured 0.3-0.5 ms of CPU per file here when many files were deleted
// recently (its inode allocator checks every recently freed inode: `recently_deleted`), ~20 ms
// of each end's blackout.
//
// The images go first into a tmpfs of the process's own with transparent huge pages
// (huge=within_size: folios as large as the writes, up to 2 MiB), mounted detached
// (fsopen/fsmount: attached to no mount namespace) and reached through /proc/PID/fd/N
// (HugeStaging). Writing a staged page file in 256 KiB pieces into such folios costs a quarter
// of the CPU of 4 KiB pages (512 MiB of pwrite: 0.05 against 0.21 s here), reading it back
// half; the system's /dev/shm has no huge pages (shmem_enabled "never") and is not ours to
// remount. The mount lives while its process or an open file in it does, so no exit leaves it
// behind, SIGKILL included. A destination session's record (the directory named after it, with
// its `committed` mark), which a restarted daemon must find, stays where ChooseStaging puts it:
// the state root when it is a tmpfs, else /dev/shm; the root when neither has room for what it
// holds (the memory is checked in the handshake anyway: the images are as big as the memory
// they hold).
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

// PrivateTmpfs()/LEAF when this process has its huge-page tmpfs and it has room for need_bytes
// and a margin; else empty. Its files go with the process that mounted it.
std::string HugeStaging(const char* leaf, uint64_t need_bytes);

// This process's huge-page tmpfs ("/proc/PID/fd/N"), mounted at the first call (by the first
// caller: a child forked later shares its parent's); empty when the kernel refuses it (no
// fsopen, no CAP_SYS_ADMIN: the reason is logged once) or GODWIT_NO_HUGE_STAGING is set (A/B
// runs). The descriptor is close-on-exec and never closed; other processes reach the mount
// through the path while this one lives. Thread-safe.
const std::string& PrivateTmpfs();

// What kind of place the staging directory dir is, for the report: "huge-tmpfs" (below
// PrivateTmpfs()), "tmpfs" or "disk".
std::string StagingKind(const std::string& dir);

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
