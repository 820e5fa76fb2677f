// Mount namespace: the mount list of a container (from /proc/PID/mountinfo) and the contents of
// its tmpfs mounts. Images: "mnt.img" (img::MountTable); per tmpfs superblock
// "tmpfs-<mnt_id>.img" (img::TmpfsEntry records, parents before children) and the blob
// "tmpfs-<mnt_id>-data.img" with the file bytes (holes are not stored).
//
// Contents are read through /proc/PID/root/<mountpoint>, so the dumper needs no setns; the walk
// stays on the tmpfs's own mount (statx mount id) and records directories other mounts cover
// without descending. Each tmpfs superblock is dumped once, through a mount of its root when
// there is one; its other (bind) mounts point at it by device number.
//
// RestoreTmpfs recreates a dumped tmpfs's files, directories, symlinks, device nodes, FIFOs,
// hard links, modes, owners, xattrs and atime/mtime into a directory (normally a fresh tmpfs).
// Every path is resolved beneath that directory without following symlinks (openat2), so an
// image cannot write outside it.
#pragma once

#include <sys/stat.h>
#include <sys/types.h>

#include <atomic>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "common/result.h"
#include "images/image.h"
#include "proto/container.pb.h"
#include "proto/mnt.pb.h"

namespace godwit::container::mnt {

inline constexpr char kImage[] = "mnt.img";
inline constexpr char kLayerImage[] = "layer.img";
inline constexpr char kLayerBlob[] = "layer-data.img";
std::string TmpfsImage(uint32_t mnt_id);
std::string TmpfsBlob(uint32_t mnt_id);

// Parses the text of a mountinfo file (octal escapes decoded).
Result<img::MountTable> ParseMountInfo(const std::string& text);

// The regular files of a tree of files (a tmpfs) copied ahead of a final dump, while the
// container ran: a migration's rounds copy the tmpfs contents once, and the final dump (frozen)
// refers to that copy for every file unchanged since, instead of reading it again.
struct PrecopiedFile {
  uint64_t dev = 0, ino = 0, size = 0;
  int64_t mtime_ns = 0, ctime_ns = 0;  // as statx gave them before the contents were read
  std::vector<img::TmpfsExtent> extents;  // offsets into the tree's blob
};
struct PrecopiedTree {
  std::string blob;  // the blob holding the files' bytes
  uint64_t bytes = 0;  // its size
  int64_t taken_ns = 0;  // CLOCK_REALTIME when the walk began
  std::map<std::string, PrecopiedFile> files;  // by path relative to the tree's root
};
struct Precopied {
  std::map<uint32_t, PrecopiedTree> tmpfs;  // by tmpfs mount id
  std::optional<PrecopiedTree> layer;  // the writable layer's files (PrecopyLayer)
  uint64_t bytes = 0;  // copied ahead
  mutable std::atomic<uint64_t> reused_bytes{0};  // referred to by final dumps since
};
// Whether a file whose statx is `now` still holds what was copied as `was`: the same device and
// inode, size, mtime and change time, the change time older than the copy by more than the kernel's
// clock granularity (a write in the same tick as the copy would leave it unchanged).
bool StillPrecopied(const PrecopiedFile& was, const struct statx& now, int64_t taken_ns);
// Copies the contents of pid's tmpfs mounts (as Dump would find them) into sink, while the
// container runs: per mount a blob "tmpfs-<mnt_id>-data-pre.img" (and its entries,
// "tmpfs-<mnt_id>-pre.img"), and what identifies each copied file into *out.
Result<void> PrecopyTmpfs(pid_t pid, images::Sink& sink, images::Compression compression,
                          Precopied* out);

// Dumps the mount list of pid's mount namespace and the contents of its tmpfs mounts. With
// `pre`, a file unchanged since pre's copy (StillPrecopied) is not read: its entry refers to
// pre's blob (TmpfsEntry.data_blob).
Result<void> Dump(pid_t pid, images::Sink& sink,
                  images::Compression compression = images::Compression::kNone,
                  const Precopied* pre = nullptr);
Result<img::MountTable> ReadMounts(const images::ImageSet& images);
// Recreates the contents of the tmpfs dumped from mount mnt_id into dir.
Result<void> RestoreTmpfs(const images::ImageSet& images, uint32_t mnt_id, const std::string& dir);

// The identity of a root filesystem: a digest over every entry's path, type, mode, owner, size,
// mtime and symlink target (contents are not read), staying on one filesystem.
Result<img::RootfsIdentity> IdentifyRootfs(const std::string& path);
// Adds to id the regular files of the rootfs at `path` that pids (frozen) hold open or map: an fd
// or mapping whose file is the rootfs entry at the same path (same device and inode). Sets
// has_held. Files elsewhere (tmpfs, host files, deleted ones) are not the rootfs's.
Result<void> IdentifyHeldFiles(const std::string& path, const std::vector<pid_t>& pids,
                               img::RootfsIdentity* id);
// Whether the rootfs at `path` (identity `here`) is the one a checkpoint recorded (`was`): the
// same digest, or, with held files recorded, each of them unchanged (size, mtime, mode). The
// error names the first changed file.
Result<void> CheckRootfs(const img::RootfsIdentity& was, const img::RootfsIdentity& here,
                         const std::string& path);

// The writable layer of a container whose root is an overlay (or any other view) over `rootfs`:
// every entry of /proc/PID/root that is new or differs from rootfs (kind, mode, owner, size,
// mtime, target), and a whiteout for every rootfs entry that is gone. Returns false and writes
// nothing when the container's root is the rootfs directory itself (its writes went there).
// `upper`: the overlay's upper directory as seen from here, when known (the runtime's storage).
// If it is the upperdir of the container's root mount, only the directories it has are walked:
// every change below a directory copies that directory up, so the rest equals the rootfs (the
// walk then costs what changed, not the size of the rootfs).
// With `pre`, a file unchanged since pre's copy of the layer is referred to, not read.
Result<bool> DumpLayer(pid_t pid, const std::string& rootfs, images::Sink& sink,
                       images::Compression compression = images::Compression::kNone,
                       const std::string& upper = "", const Precopied* pre = nullptr);
// The writable layer's files copied ahead, while the container runs ("layer-pre.img",
// "layer-data-pre.img"): what DumpLayer would keep, recorded into out->layer (left empty when
// the container has no layer).
Result<void> PrecopyLayer(pid_t pid, const std::string& rootfs, images::Sink& sink,
                          images::Compression compression, const std::string& upper,
                          Precopied* out);
// Applies the diff to dir, normally the restored container's root (/proc/PID/root).
Result<void> RestoreLayer(const images::ImageSet& images, const std::string& dir);

}  // namespace godwit::container::mnt
