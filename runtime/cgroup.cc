#include "runtime/cgroup.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <mutex>

#include "common/fs.h"
#include "common/log.h"
#include "runtime/container.h"

namespace godwit::runtime {

const char* CgroupLayoutName(CgroupLayout l) {
  switch (l) {
    case CgroupLayout::kV1:
      return "v1";
    case CgroupLayout::kV2:
      return "v2";
    case CgroupLayout::kHybrid:
      return "hybrid";
  }
  return "?";
}

Result<CgroupRoots> DetectCgroupLayout() {
  static std::once_flag once;
  static Result<CgroupRoots> cached = MakeError(ErrorKind::kGeneric, 0, "not probed");
  std::call_once(once, [] {
    auto text = fs::ReadFile("/proc/self/mountinfo");
    if (!text.ok()) {
      cached = std::move(text).error();
      return;
    }
    CgroupRoots roots;
    for (const auto& line : fs::Split(*text, '\n')) {
      // "36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices"
      size_t dash = line.find(" - ");
      if (dash == std::string::npos) continue;
      auto pre = fs::Split(line.substr(0, dash), ' ');
      auto post = fs::Split(line.substr(dash + 3), ' ');
      if (pre.size() < 5 || post.size() < 3) continue;
      const std::string& mnt = pre[4];
      if (post[0] == "cgroup2") {
        if (roots.unified.empty()) roots.unified = mnt;
      } else if (post[0] == "cgroup") {
        for (const auto& opt : fs::Split(post[2], ',')) {
          if (opt == "rw" || opt == "ro" || opt.find('=') != std::string::npos) continue;
          if (!roots.v1.count(opt)) roots.v1[opt] = mnt;
        }
      }
    }
    bool has_v1 = roots.v1.count("memory") || roots.v1.count("pids") || roots.v1.count("cpu");
    if (has_v1 && !roots.unified.empty()) {
      roots.layout = CgroupLayout::kHybrid;
    } else if (has_v1) {
      roots.layout = CgroupLayout::kV1;
    } else if (!roots.unified.empty()) {
      roots.layout = CgroupLayout::kV2;
    } else {
      cached = MakeError(ErrorKind::kUnsupported, 0, "no cgroup hierarchy mounted");
      return;
    }
    cached = roots;
  });
  return cached;
}

Result<void> ValidateCgroupParent(const std::string& parent) {
  bool ok = !parent.empty() && parent.size() <= 128;
  for (const auto& level : fs::Split(parent, '/')) {
    ok = ok && !level.empty() && level != "." && level != "..";
    for (char ch : level)
      ok = ok && (isalnum(static_cast<unsigned char>(ch)) || ch == '_' || ch == '-' || ch == '.');
  }
  if (!ok)
    return MakeError(ErrorKind::kUsage, 0,
                     "bad cgroup parent '%s': 1-128 characters, '/'-separated levels of "
                     "[A-Za-z0-9_.-], none '.' or '..'",
                     parent.c_str());
  return Ok();
}

std::unique_ptr<Cgroup> OpenCgroup(const CgroupRoots& roots, const std::string& id,
                                   const std::string& parent) {
  // "/": the hierarchy's root itself (a one-level linux.cgroupsPath).
  std::string name = parent == "/" || parent.empty() ? id : parent + "/" + id;
  switch (roots.layout) {
    case CgroupLayout::kV1:
      return NewCgroupV1(roots.v1, name);
    case CgroupLayout::kV2:
      return NewCgroupV2(roots.unified, name);
    case CgroupLayout::kHybrid:
      return NewCgroupHybrid(roots.v1, roots.unified, name);
  }
  return nullptr;
}

Result<std::unique_ptr<Cgroup>> OpenCgroup(const std::string& id, const std::string& parent) {
  if (parent != "/") TRY(ValidateCgroupParent(parent));
  ASSIGN_OR_RETURN(CgroupRoots roots, DetectCgroupLayout());
  return OpenCgroup(roots, id, parent);
}

Result<std::unique_ptr<Cgroup>> OpenCgroup(const Container& c) {
  return OpenCgroup(c.cgroup_leaf.empty() ? c.id : c.cgroup_leaf,
                    c.cgroup_parent.empty() ? kDefaultCgroupParent : c.cgroup_parent);
}

namespace cgroup_internal {

Result<void> WriteKnob(const std::string& dir, const char* file, const std::string& value) {
  std::string path = dir + "/" + file;
  int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) return Errno("open %s", path.c_str());
  ssize_t n = ::write(fd, value.data(), value.size());
  int err = errno;
  ::close(fd);
  if (n != static_cast<ssize_t>(value.size())) {
    errno = n < 0 ? err : EIO;
    // The kernel refusing a value is a config problem (a limit out of range), not a crash.
    Error e = Errno("write '%s' to %s", value.c_str(), path.c_str());
    if (errno == EINVAL || errno == ERANGE || errno == EBUSY)
      return Error(ErrorKind::kBadConfig, errno, e.message() + " (the kernel refused the limit)");
    return e;
  }
  return Ok();
}

Result<std::string> ReadKnob(const std::string& dir, const char* file) {
  return fs::ReadFile(dir + "/" + file);
}

Result<void> MakeDir(const std::string& parent, const std::string& leaf) {
  std::string path = parent + "/" + leaf;
  if (::mkdir(path.c_str(), 0755) < 0) {
    if (errno == EEXIST)
      return MakeError(ErrorKind::kExists, EEXIST, "cgroup %s exists", path.c_str());
    return Errno("mkdir %s", path.c_str());
  }
  return Ok();
}

std::vector<std::string> ParentLevels(const std::string& name) {
  std::vector<std::string> out;
  for (size_t slash = name.find('/'); slash != std::string::npos; slash = name.find('/', slash + 1))
    out.push_back(name.substr(0, slash));
  return out;
}

Result<void> MakeCgroupDirs(const std::string& base, const std::string& name,
                            const std::function<Result<void>(const std::string&)>& on_level) {
  std::string leaf = base + "/" + name;
  for (int attempt = 0;; ++attempt) {
    for (const auto& level : ParentLevels(name)) {
      std::string dir = base + "/" + level;
      if (::mkdir(dir.c_str(), 0755) < 0 && errno != EEXIST) return Errno("mkdir %s", dir.c_str());
      if (on_level) TRY(on_level(dir));
    }
    if (::mkdir(leaf.c_str(), 0755) == 0) return Ok();
    if (errno == ENOENT && attempt < 3) continue;
    if (errno == EEXIST)
      return MakeError(ErrorKind::kExists, EEXIST, "cgroup %s exists", leaf.c_str());
    return Errno("mkdir %s", leaf.c_str());
  }
}

void RemoveEmptyParents(const std::string& base, const std::string& name) {
  auto levels = ParentLevels(name);
  for (auto it = levels.rbegin(); it != levels.rend(); ++it)
    if (::rmdir((base + "/" + *it).c_str()) < 0) return;
}

Result<void> RemoveDir(const std::string& dir) {
  // Children first: the container may have made its own sub-cgroups.
  if (DIR* d = ::opendir(dir.c_str())) {
    std::vector<std::string> subs;
    while (dirent* e = ::readdir(d)) {
      if (e->d_type == DT_DIR && strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
        subs.push_back(dir + "/" + e->d_name);
    }
    ::closedir(d);
    for (const auto& s : subs) TRY(RemoveDir(s));
  }
  // Exiting tasks leave the cgroup asynchronously: retry EBUSY for a bounded time.
  timespec start;
  clock_gettime(CLOCK_MONOTONIC, &start);
  for (int i = 0;; ++i) {
    if (::rmdir(dir.c_str()) == 0 || errno == ENOENT) return Ok();
    if (errno != EBUSY) return Errno("rmdir %s", dir.c_str());
    timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    if (now.tv_sec - start.tv_sec >= 5) return Errno("rmdir %s (tasks still inside)", dir.c_str());
    usleep(i < 10 ? 200 : 2000);
  }
}

Result<std::vector<pid_t>> ReadPids(const std::string& dir) {
  std::vector<pid_t> out;
  ASSIGN_OR_RETURN(std::string text, fs::ReadFile(dir + "/cgroup.procs"));
  for (const auto& l : fs::Split(text, '\n')) {
    if (!l.empty()) out.push_back(atoi(l.c_str()));
  }
  if (DIR* d = ::opendir(dir.c_str())) {
    std::vector<std::string> subs;
    while (dirent* e = ::readdir(d)) {
      if (e->d_type == DT_DIR && strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
        subs.push_back(dir + "/" + e->d_name);
    }
    ::closedir(d);
    for (const auto& s : subs) {
      ASSIGN_OR_RETURN(auto more, ReadPids(s));
      out.insert(out.end(), more.begin(), more.end());
    }
  }
  return out;
}

std::map<std::string, int64_t> ParseKeyValues(const std::string& text) {
  std::map<std::string, int64_t> out;
  for (const auto& l : fs::Split(text, '\n')) {
    size_t sp = l.find(' ');
    if (sp == std::string::npos) continue;
    out[l.substr(0, sp)] = strtoll(l.c_str() + sp + 1, nullptr, 10);
  }
  return out;
}

}  // namespace cgroup_internal
}  // namespace godwit::runtime
