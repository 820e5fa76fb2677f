// Namespace files (nsfs: an fd on /proc/PID/ns/TYPE, read "net:[4026531840]"), plain or O_PATH.
// godwit restores namespaces only as a container's (or not at all, for a plain tree), so an fd
// can come back only on a namespace restore can name again: the holder's own namespace of that
// type (the restored tree's, opened from /proc/self/ns by whoever prepares the files: the
// coordinator, or a container's root task inside the container) or the dumper's, i.e. the
// host's. Any other namespace (a child's private one, a namespace kept alive only by the fd) is
// refused at dump naming pid, fd and namespace.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "files/kind.h"

namespace godwit::files {

namespace {
// The /proc/PID/ns entries an fd of type could be (pid_for_children reads "pid:[...]").
std::vector<std::string> ProcNames(const std::string& type) {
  if (type == "pid" || type == "time") return {type, type + "_for_children"};
  return {type};
}

bool SameNs(const std::string& path, const struct stat& st) {
  struct stat ns;
  return stat(path.c_str(), &ns) == 0 && ns.st_ino == st.st_ino && ns.st_dev == st.st_dev;
}
}  // namespace

Result<void> DumpNsfs(FdDumpContext& ctx, const Probe& p, img::FileEntry& e) {
  img::NsFile* n = e.mutable_ns();
  size_t colon = p.link.find(":[");
  if (colon == std::string::npos)
    return MakeError(ErrorKind::kUnsupported, 0, "pid %d fd %d: namespace fd %s: unknown type",
                     p.pid, p.fd, p.link.c_str());
  std::string type = p.link.substr(0, colon);
  n->set_type(type);
  n->set_ino(p.st.st_ino);
  for (const auto& name : ProcNames(type))
    if (SameNs(StrFormat("/proc/%d/ns/%s", p.pid, name.c_str()), p.st)) {
      n->set_whose(img::NsFile::WHOSE_OWN);
      n->set_proc_name(name);
      return Ok();
    }
  for (const auto& name : ProcNames(type))
    if (SameNs("/proc/self/ns/" + name, p.st)) {
      n->set_whose(img::NsFile::WHOSE_HOST);
      n->set_proc_name(name);
      return Ok();
    }
  return MakeError(ErrorKind::kUnsupported, 0,
                   "pid %d fd %d: namespace fd %s is neither pid %d's own %s namespace nor the "
                   "host's: other namespaces are not restored",
                   p.pid, p.fd, p.link.c_str(), p.pid, type.c_str());
}

Result<UniqueFd> OpenNsfs(FdRestoreContext& ctx, const img::FileEntry& e) {
  const img::NsFile& n = e.ns();
  if (n.whose() == img::NsFile::WHOSE_UNSPECIFIED || n.proc_name().empty() ||
      n.proc_name().find('/') != std::string::npos || n.proc_name()[0] == '.')
    return MakeError(ErrorKind::kBadImage, 0, "files.img: namespace fd %llu: bad entry %s",
                     static_cast<unsigned long long>(e.id()), n.proc_name().c_str());
  std::string path = "/proc/self/ns/" + n.proc_name();
  UniqueFd fd(open(path.c_str(), ((e.flags() & O_PATH) ? O_PATH : O_RDONLY) | O_CLOEXEC));
  if (!fd) return Errno("open %s (%s namespace fd)", path.c_str(), n.type().c_str());
  return fd;
}

}  // namespace godwit::files
