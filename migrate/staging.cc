#include "migrate/staging.h"

#include <linux/magic.h>
#include <linux/mount.h>
#include <stdlib.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>

#include "common/fs.h"
#include "common/log.h"
#include "common/result.h"
#include "common/unique_fd.h"

namespace godwit::migrate {
namespace {

constexpr const char* kShm = "/dev/shm";
constexpr uint64_t kMargin = 256ull << 20;  // left free in a tmpfs beyond the staged bytes

bool IsTmpfs(const std::string& path, uint64_t* free_bytes) {
  struct statfs s;
  if (statfs(path.c_str(), &s) < 0 || static_cast<uint64_t>(s.f_type) != TMPFS_MAGIC) return false;
  if (free_bytes) *free_bytes = static_cast<uint64_t>(s.f_bavail) * s.f_bsize;
  return true;
}

// FNV-1a of the root's absolute path: stable across runs, so a restarted daemon finds the
// directories its dead sessions left.
std::string ShmBase(const std::string& root) {
  char* abs = realpath(root.c_str(), nullptr);
  std::string path = abs ? abs : root;
  free(abs);
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : path) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return StrFormat("%s/godwit-%016llx", kShm, static_cast<unsigned long long>(h));
}

// A detached tmpfs: huge=within_size (folios as large as the writes, up to 2 MiB), half
// of the RAM at most (tmpfs's default, as /dev/shm), only root may enter.
Result<UniqueFd> MountPrivateTmpfs() {
  UniqueFd fs(static_cast<int>(::syscall(SYS_fsopen, "tmpfs", FSOPEN_CLOEXEC)));
  if (!fs) return Errno("fsopen tmpfs");
  for (auto [k, v] : {std::pair{"huge", "within_size"}, {"mode", "0700"}}) {
    if (::syscall(SYS_fsconfig, fs.get(), FSCONFIG_SET_STRING, k, v, 0) < 0)
      return Errno("fsconfig tmpfs %s=%s", k, v);
  }
  if (::syscall(SYS_fsconfig, fs.get(), FSCONFIG_CMD_CREATE, nullptr, nullptr, 0) < 0)
    return Errno("fsconfig tmpfs create");
  UniqueFd m(static_cast<int>(::syscall(SYS_fsmount, fs.get(), FSMOUNT_CLOEXEC,
                                        MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC)));
  if (!m) return Errno("fsmount tmpfs");
  return m;
}

}  // namespace

const std::string& PrivateTmpfs() {
  static const std::string path = [] {
    if (getenv("GODWIT_NO_HUGE_STAGING")) return std::string();  // A/B runs only
    auto m = MountPrivateTmpfs();
    if (!m.ok()) {
      LOG_INFO("no huge-page staging tmpfs (%s): staging in /dev/shm or the root",
               m.error().to_string().c_str());
      return std::string();
    }
    return StrFormat("/proc/%d/fd/%d", getpid(), m->release());
  }();
  return path;
}

std::string HugeStaging(const char* leaf, uint64_t need_bytes) {
  uint64_t free_bytes = 0;
  if (PrivateTmpfs().empty() || !IsTmpfs(PrivateTmpfs(), &free_bytes) ||
      free_bytes < need_bytes + kMargin)
    return "";
  return PrivateTmpfs() + "/" + leaf;
}

std::string ChooseStaging(const std::string& root, const char* leaf, uint64_t need_bytes) {
  std::string in_root = root + "/" + leaf;
  if (IsTmpfs(root, nullptr)) return in_root;
  uint64_t free_bytes = 0;
  if (!IsTmpfs(kShm, &free_bytes) || free_bytes < need_bytes + kMargin) return in_root;
  return ShmBase(root) + "/" + leaf;
}

std::string StagingKind(const std::string& dir) {
  const std::string& own = PrivateTmpfs();
  if (!own.empty() && dir.compare(0, own.size() + 1, own + "/") == 0) return "huge-tmpfs";
  return IsTmpfs(dir, nullptr) ? "tmpfs" : "disk";
}

std::vector<std::string> StagingCandidates(const std::string& root, const char* leaf) {
  return {root + "/" + leaf, ShmBase(root) + "/" + leaf};
}

Result<void> MakeStaging(const std::string& dir) {
  auto r = fs::MkdirAll(dir, 0700);
  if (!r.ok() && r.error().sys_errno() == ENOENT) r = fs::MkdirAll(dir, 0700);
  return r;
}

void RemoveStagingIfEmpty(const std::string& base) {
  // rmdir fails on a directory another session still uses: that is the check.
  if (::rmdir(base.c_str()) < 0) return;
  std::string parent = base.substr(0, base.rfind('/'));
  if (parent.rfind(std::string(kShm) + "/godwit-", 0) == 0) (void)::rmdir(parent.c_str());
}

}  // namespace godwit::migrate
