#include "restore/cgroups.h"

#include <sys/stat.h>
#include <unistd.h>

#include <set>
#include <string>
#include <vector>

#include "common/fs.h"
#include "common/log.h"

namespace godwit::restore {
namespace {

struct CgroupMount {
  std::string dir;               // where it is mounted here
  std::string root;              // the cgroup it shows at dir (mountinfo's root field)
  bool v2 = false;
  std::set<std::string> opts;    // super options: controllers and name=X (v1)
};

std::vector<CgroupMount> CgroupMounts() {
  std::vector<CgroupMount> out;
  auto text = fs::ReadFile("/proc/self/mountinfo");
  if (!text.ok()) return out;
  for (const auto& line : fs::Split(*text, '\n')) {
    auto sep = line.find(" - ");
    if (sep == std::string::npos) continue;
    auto f = fs::Split(line.substr(0, sep), ' ');
    auto g = fs::Split(line.substr(sep + 3), ' ');
    if (f.size() < 5 || g.size() < 3 || (g[0] != "cgroup" && g[0] != "cgroup2")) continue;
    CgroupMount m;
    m.root = f[3];
    m.dir = f[4];
    m.v2 = g[0] == "cgroup2";
    for (const auto& o : fs::Split(g[2], ',')) m.opts.insert(o);
    out.push_back(std::move(m));
  }
  return out;
}

// The directory here of cgroup `path` in the hierarchy of `controllers` ("" for cgroup2), or "".
std::string CgroupDir(const std::vector<CgroupMount>& mounts, const std::string& controllers,
                      const std::string& path) {
  for (const auto& m : mounts) {
    if (m.v2 != controllers.empty()) continue;
    bool all = true;
    for (const auto& c : fs::Split(controllers, ','))
      if (!c.empty() && !m.opts.count(c)) all = false;
    if (!all) continue;
    if (m.root == "/") return path == "/" ? m.dir : m.dir + path;
    if (path == m.root) return m.dir;
    if (path.rfind(m.root + "/", 0) == 0) return m.dir + path.substr(m.root.size());
  }
  return "";
}

Result<void> MkdirAll(const std::string& dir) {
  if (::access(dir.c_str(), F_OK) == 0) return Ok();
  auto slash = dir.rfind('/');
  if (slash != std::string::npos && slash > 0) TRY(MkdirAll(dir.substr(0, slash)));
  if (::mkdir(dir.c_str(), 0755) < 0 && errno != EEXIST) return Errno("mkdir %s", dir.c_str());
  return Ok();
}

// Splits "ID:CONTROLLERS:PATH"; false for a malformed line.
bool SplitCgroupLine(const std::string& line, std::string* controllers, std::string* path) {
  auto c1 = line.find(':');
  auto c2 = c1 == std::string::npos ? c1 : line.find(':', c1 + 1);
  if (c2 == std::string::npos) return false;
  *controllers = line.substr(c1 + 1, c2 - c1 - 1);
  *path = line.substr(c2 + 1);
  return true;
}

}  // namespace

Result<void> JoinThreadCgroups(RestoreContext& ctx) {
  if (ctx.opts.root_inside || ctx.opts.root_clone_flags) return Ok();
  std::vector<CgroupMount> mounts;
  for (auto& p : ctx.procs) {
    for (const auto& tc : p->entry->thread_cgroups()) {
      if (mounts.empty()) mounts = CgroupMounts();
      pid_t tid = p->HostTid(tc.tid());
      auto now = fs::ReadFile(StrFormat("/proc/%d/task/%d/cgroup", p->pid, tid));
      std::set<std::string> have;
      if (now.ok())
        for (const auto& l : fs::Split(*now, '\n')) have.insert(l);
      for (const auto& line : tc.cgroups()) {
        if (have.count(line)) continue;
        std::string controllers, path;
        if (!SplitCgroupLine(line, &controllers, &path))
          return MakeError(ErrorKind::kBadImage, 0, "pstree.img: pid %d thread %d: bad cgroup "
                           "line %s", p->entry->pid(), tc.tid(), line.c_str());
        std::string dir = CgroupDir(mounts, controllers, path);
        if (dir.empty()) {
          LOG_WARN("restore: thread %d of pid %d stays out of cgroup %s (hierarchy %s is not "
                   "mounted)", tc.tid(), p->entry->pid(), path.c_str(), controllers.c_str());
          continue;
        }
        TRY_CTX(MkdirAll(dir), "thread %d: cgroup %s", tc.tid(), line.c_str());
        const char* file = controllers.empty() ? "/cgroup.threads" : "/tasks";
        TRY_CTX(fs::WriteFile(dir + file, StrFormat("%d", tid)), "thread %d of pid %d: join "
                "cgroup %s (%s)", tc.tid(), p->entry->pid(), line.c_str(), dir.c_str());
      }
    }
  }
  return Ok();
}

Result<void> JoinCgroups(RestoreContext& ctx) {
  if (ctx.opts.root_inside || ctx.opts.root_clone_flags) return Ok();
  std::vector<CgroupMount> mounts;
  for (auto& p : ctx.procs) {
    const auto& want = p->entry->cgroups();
    if (want.empty()) continue;
    if (mounts.empty()) mounts = CgroupMounts();
    auto now = fs::ReadFile(StrFormat("/proc/%d/cgroup", p->pid));
    std::set<std::string> have;
    if (now.ok())
      for (const auto& l : fs::Split(*now, '\n')) have.insert(l);
    for (const auto& line : want) {
      if (have.count(line)) continue;  // inherited from its parent or the restorer
      auto c1 = line.find(':');
      auto c2 = c1 == std::string::npos ? c1 : line.find(':', c1 + 1);
      if (c2 == std::string::npos)
        return MakeError(ErrorKind::kBadImage, 0, "pstree.img: pid %d: bad cgroup line %s",
                         p->entry->pid(), line.c_str());
      std::string controllers = line.substr(c1 + 1, c2 - c1 - 1);
      std::string path = line.substr(c2 + 1);
      std::string dir = CgroupDir(mounts, controllers, path);
      if (dir.empty()) {
        // A hierarchy mounted nowhere here (a named v1 hierarchy that was unmounted): nothing
        // can put the process there.
        LOG_WARN("restore: pid %d stays out of cgroup %s (hierarchy %s is not mounted)",
                 p->entry->pid(), path.c_str(), controllers.c_str());
        continue;
      }
      TRY_CTX(MkdirAll(dir), "pid %d: cgroup %s", p->entry->pid(), line.c_str());
      TRY_CTX(fs::WriteFile(dir + "/cgroup.procs", StrFormat("%d", p->pid)),
              "pid %d: join cgroup %s (%s)", p->entry->pid(), line.c_str(), dir.c_str());
    }
  }
  return Ok();
}

}  // namespace godwit::restore
