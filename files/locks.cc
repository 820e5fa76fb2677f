// File locks. fdinfo lists, per fd, the locks taken through that open file description: flock
// and OFD locks belong to the description (taken again in Prepare on the new description; a
// flock by the process that took it, in its Install, when it holds the description, so
// /proc/locks names the same pid, else by the first process of the tree that holds it),
// POSIX locks to the process that took them (taken again by that process in Install).
#include <fcntl.h>
#include <sys/file.h>

#include <cstdio>
#include <cstring>

#include "files/kind.h"

namespace godwit::files {

std::vector<img::FileLock> ParseLocks(const FdInfo& info) {
  std::vector<img::FileLock> out;
  // "lock:\t1: POSIX  ADVISORY  WRITE 1234 00:1f:5678 0 EOF"
  for (const std::string& v : info.All("lock")) {
    char type[16], mand[16], rw[16], end[32];
    int id, pid;
    unsigned long long start;
    char dev[64];
    if (sscanf(v.c_str(), "%d: %15s %15s %15s %d %63s %llu %31s", &id, type, mand, rw, &pid, dev,
               &start, end) != 8)
      continue;
    img::FileLock l;
    if (!strcmp(type, "FLOCK")) l.set_type(img::LOCK_TYPE_FLOCK);
    else if (!strcmp(type, "POSIX")) l.set_type(img::LOCK_TYPE_POSIX);
    else if (!strcmp(type, "OFDLCK")) l.set_type(img::LOCK_TYPE_OFD);
    else continue;  // leases, "DELEG": not restorable; leases are rare
    l.set_write(!strcmp(rw, "WRITE"));
    l.set_pid(pid);
    l.set_start(start);
    l.set_end(!strcmp(end, "EOF") ? -1 : strtoll(end, nullptr, 10));
    out.push_back(l);
  }
  return out;
}

Result<void> ApplyLock(int fd, const img::FileLock& l) {
  if (l.type() == img::LOCK_TYPE_FLOCK) {
    if (flock(fd, (l.write() ? LOCK_EX : LOCK_SH) | LOCK_NB) < 0)
      return Errno("flock %s", l.write() ? "LOCK_EX" : "LOCK_SH");
    return Ok();
  }
  struct flock fl {};
  fl.l_type = l.write() ? F_WRLCK : F_RDLCK;
  fl.l_whence = SEEK_SET;
  fl.l_start = static_cast<off_t>(l.start());
  fl.l_len = l.end() < 0 ? 0 : static_cast<off_t>(l.end() - static_cast<int64_t>(l.start()) + 1);
  int cmd = l.type() == img::LOCK_TYPE_OFD ? F_OFD_SETLK : F_SETLK;
  if (fcntl(fd, cmd, &fl) < 0)
    return Errno("fcntl %s %s %llu-%lld", cmd == F_OFD_SETLK ? "F_OFD_SETLK" : "F_SETLK",
                 l.write() ? "write" : "read", static_cast<unsigned long long>(l.start()),
                 static_cast<long long>(l.end()));
  return Ok();
}

}  // namespace godwit::files
