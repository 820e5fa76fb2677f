// The restore driver's shared state, passed to every step: options, the image set, the tree, the
// file restorer, and per-process handles (a remote-syscall channel into each stopped process).
//
// A step is `Result<void> Fn(RestoreContext&, ProcessRestore&)`, run for each live process once
// the whole tree has been forked and stopped (see restore/steps.cc for the table and ordering).
#pragma once

#include <sys/types.h>

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common/remote.h"
#include "common/result.h"
#include "common/unique_fd.h"
#include "images/image.h"
#include "proto/core.pb.h"
#include "proto/mm.pb.h"
#include "proto/pagemap.pb.h"
#include "proto/pstree.pb.h"

namespace godwit::files {
class FdRestorer;
}

namespace godwit::restore {

struct RestoreOptions {
  std::string images_dir;
  bool detach = false;
  std::string pid_file;
  bool tcp_close = false;
  bool shell_job = false;
  std::vector<std::pair<int, std::string>> inherit_fds;
  std::function<void(const char*, uint64_t, uint64_t)> progress;
};

struct RestoreStats {
  int processes = 0;
  int zombies = 0;
  int threads = 0;
  uint64_t vmas = 0;
  uint64_t pages = 0;
  uint64_t bytes = 0;
  uint64_t remote_calls = 0;
  double fork_ms = 0;
  double memory_ms = 0;
  double total_ms = 0;
  pid_t root_pid = 0;
};

struct ProcessRestore {
  const img::ProcessEntry* entry = nullptr;
  pid_t pid = 0;
  img::ProcessCore core;
  img::MmEntry mm;
  std::vector<img::PageMap> pagemaps;  // pre-dump rounds first, applied in order
  std::unique_ptr<remote::Remote> remote;
  std::vector<pid_t> attached;  // threads under our ptrace, the main thread first
};

struct RestoreContext {
  RestoreOptions opts;
  const images::ImageSet* images = nullptr;
  img::ProcessTree tree;
  std::vector<img::ShmemObject> shmem;
  std::map<uint64_t, UniqueFd> shmem_fds;  // memfds in the coordinator, by object id
  files::FdRestorer* fds = nullptr;
  RestoreStats stats;
  std::vector<std::unique_ptr<ProcessRestore>> procs;  // live processes, tree order
  std::map<pid_t, ProcessRestore*> by_pid;
};

}  // namespace godwit::restore
