#include "common/proc.h"

#include <dirent.h>
#include <sys/mman.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <set>

#include "common/fs.h"

namespace godwit::proc {
namespace {

Result<std::string> ReadProc(const std::string& path, pid_t pid) {
  auto r = fs::ReadFile(path);
  if (!r.ok() && (r.error().sys_errno() == ENOENT || r.error().sys_errno() == ESRCH))
    return MakeError(ErrorKind::kNotFound, ESRCH, "process %d does not exist", pid);
  return r;
}

Result<Stat> ParseStat(const std::string& text, const std::string& path) {
  Stat s;
  size_t lp = text.find('(');
  size_t rp = text.rfind(')');
  if (lp == std::string::npos || rp == std::string::npos || rp + 2 >= text.size())
    return Err("%s: malformed", path.c_str());
  s.pid = atoi(text.c_str());
  s.comm = text.substr(lp + 1, rp - lp - 1);
  s.state = text[rp + 2];
  // Fields after the state, numbered from 4 (ppid).
  std::vector<std::string> f = fs::Split(text.substr(rp + 4), ' ');
  auto field = [&](int n) -> uint64_t {
    size_t i = n - 4;
    return i < f.size() ? strtoull(f[i].c_str(), nullptr, 10) : 0;
  };
  if (f.size() < 49) return Err("%s: only %zu fields", path.c_str(), f.size() + 3);
  s.ppid = field(4);
  s.pgrp = field(5);
  s.session = field(6);
  s.start_time = field(22);
  s.start_code = field(26);
  s.end_code = field(27);
  s.start_stack = field(28);
  s.start_data = field(45);
  s.end_data = field(46);
  s.start_brk = field(47);
  s.arg_start = field(48);
  s.arg_end = field(49);
  s.env_start = field(50);
  s.env_end = field(51);
  s.exit_code = static_cast<int>(field(52));
  return s;
}

}  // namespace

Result<std::vector<MapsEntry>> ParseMaps(const std::string& text) {
  std::vector<MapsEntry> out;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t nl = text.find('\n', pos);
    if (nl == std::string::npos) nl = text.size();
    std::string line = text.substr(pos, nl - pos);
    pos = nl + 1;
    if (line.empty()) continue;
    MapsEntry e;
    char perms[8] = {};
    unsigned long long start, end, off, ino;
    unsigned maj, min;
    int path_off = 0;
    if (sscanf(line.c_str(), "%llx-%llx %7s %llx %x:%x %llu %n", &start, &end, perms, &off, &maj,
               &min, &ino, &path_off) < 7)
      return Err("malformed maps line: %s", line.c_str());
    e.start = start;
    e.end = end;
    e.pgoff = off;
    e.dev_major = maj;
    e.dev_minor = min;
    e.inode = ino;
    if (perms[0] == 'r') e.prot |= PROT_READ;
    if (perms[1] == 'w') e.prot |= PROT_WRITE;
    if (perms[2] == 'x') e.prot |= PROT_EXEC;
    e.shared = perms[3] == 's';
    if (path_off > 0 && path_off <= static_cast<int>(line.size())) e.path = line.substr(path_off);
    out.push_back(std::move(e));
  }
  return out;
}

Result<std::vector<MapsEntry>> ReadMaps(pid_t pid) {
  ASSIGN_OR_RETURN(std::string text, ReadProc(StrFormat("/proc/%d/maps", pid), pid));
  return ParseMaps(text);
}

Result<Stat> ReadStat(pid_t pid) {
  std::string path = StrFormat("/proc/%d/stat", pid);
  ASSIGN_OR_RETURN(std::string text, ReadProc(path, pid));
  return ParseStat(text, path);
}

Result<Stat> ReadTaskStat(pid_t pid, pid_t tid) {
  std::string path = StrFormat("/proc/%d/task/%d/stat", pid, tid);
  ASSIGN_OR_RETURN(std::string text, ReadProc(path, tid));
  return ParseStat(text, path);
}

Result<std::vector<pid_t>> ListTasks(pid_t pid) {
  std::string path = StrFormat("/proc/%d/task", pid);
  DIR* d = opendir(path.c_str());
  if (d == nullptr) {
    if (errno == ENOENT)
      return MakeError(ErrorKind::kNotFound, ESRCH, "process %d does not exist", pid);
    return Errno("opendir %s", path.c_str());
  }
  std::vector<pid_t> out;
  while (dirent* e = readdir(d)) {
    if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
    out.push_back(atoi(e->d_name));
  }
  closedir(d);
  std::sort(out.begin(), out.end(), [pid](pid_t a, pid_t b) {
    if ((a == pid) != (b == pid)) return a == pid;
    return a < b;
  });
  return out;
}

Result<std::vector<pid_t>> ListChildren(pid_t pid, pid_t tid) {
  ASSIGN_OR_RETURN(std::string text,
                   ReadProc(StrFormat("/proc/%d/task/%d/children", pid, tid), tid));
  std::vector<pid_t> out;
  for (const auto& s : fs::Split(fs::Trim(text), ' '))
    if (!s.empty()) out.push_back(atoi(s.c_str()));
  return out;
}

std::vector<pid_t> Descendants(pid_t root) {
  std::vector<pid_t> out;
  std::vector<pid_t> todo{root};
  std::set<pid_t> seen;
  while (!todo.empty()) {
    pid_t pid = todo.back();
    todo.pop_back();
    if (!seen.insert(pid).second) continue;
    out.push_back(pid);
    auto tasks = ListTasks(pid);
    if (!tasks.ok()) continue;
    for (pid_t t : *tasks)
      if (auto kids = ListChildren(pid, t); kids.ok())
        todo.insert(todo.end(), kids->begin(), kids->end());
  }
  return out;
}

Result<std::vector<pid_t>> ReadNsPids(pid_t pid, pid_t tid) {
  ASSIGN_OR_RETURN(std::string text, ReadProc(StrFormat("/proc/%d/task/%d/status", pid, tid), tid));
  size_t at = text.find("\nNSpid:");
  std::vector<pid_t> out;
  if (at == std::string::npos) return out;
  size_t end = text.find('\n', at + 1);
  for (const auto& s : fs::Split(text.substr(at + 7, end - at - 7), '\t'))
    for (const auto& t : fs::Split(s, ' '))
      if (!fs::Trim(t).empty()) out.push_back(atoi(t.c_str()));
  return out;
}

}  // namespace godwit::proc
