// Parsers for /proc/PID files the checkpoint engine reads: maps, stat, task lists, children.
// Generic (no image types), shared by dump/ and restore/.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <vector>

#include "common/result.h"

namespace godwit::proc {

// One line of /proc/PID/maps.
struct MapsEntry {
  uint64_t start = 0, end = 0;
  int prot = 0;         // PROT_READ|PROT_WRITE|PROT_EXEC
  bool shared = false;  // 's' in the perms column
  uint64_t pgoff = 0;
  uint32_t dev_major = 0, dev_minor = 0;
  uint64_t inode = 0;
  std::string path;  // may be empty, "[heap]", "/x/y (deleted)", ...
};

Result<std::vector<MapsEntry>> ReadMaps(pid_t pid);
Result<std::vector<MapsEntry>> ParseMaps(const std::string& text);

// The fields of /proc/PID/stat the engine needs (numbering from proc(5)).
struct Stat {
  pid_t pid = 0;
  std::string comm;
  char state = '?';
  pid_t ppid = 0, pgrp = 0, session = 0;
  uint64_t start_code = 0, end_code = 0, start_stack = 0;
  uint64_t start_data = 0, end_data = 0, start_brk = 0;
  uint64_t arg_start = 0, arg_end = 0, env_start = 0, env_end = 0;
  uint64_t start_time = 0;  // field 22: clock ticks after boot (with the pid: this process)
  int exit_code = 0;
};

// kNotFound when the process does not exist.
Result<Stat> ReadStat(pid_t pid);
Result<Stat> ReadTaskStat(pid_t pid, pid_t tid);
// Thread ids of pid (/proc/PID/task), sorted, the main thread first.
Result<std::vector<pid_t>> ListTasks(pid_t pid);
// Children of one thread (/proc/PID/task/TID/children).
Result<std::vector<pid_t>> ListChildren(pid_t pid, pid_t tid);

// root and every process below it (the children of each of their threads), root first: a walk
// of a running tree, so it may be outdated as soon as it returns. A process whose threads cannot
// be listed (gone, or a zombie) is included, its children (none) not.
std::vector<pid_t> Descendants(pid_t root);

// The NSpid line of /proc/PID/task/TID/status: the id in each pid namespace, outermost first.
Result<std::vector<pid_t>> ReadNsPids(pid_t pid, pid_t tid);

}  // namespace godwit::proc
