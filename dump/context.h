// The dump driver's shared state, passed to every step: options, the sink, the frozen tree, and
// per-process handles (a remote-syscall channel created on first use).
//
// A step is `Result<void> Fn(DumpContext&, ProcessDump&)`, run once per live process of the tree
// while everything is frozen (see dump/steps.cc for the table and its ordering).
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common/remote.h"
#include "common/result.h"
#include "common/unique_fd.h"
#include "dump/tuning.h"
#include "dump/vmflags.h"
#include "images/image.h"
#include "proto/mm.pb.h"
#include "proto/pagemap.pb.h"
#include "proto/pstree.pb.h"

namespace godwit::files {
class FdDumper;
}

namespace godwit::dump {

class PageCapture;
class PreCopy;
class TcpHold;

struct DumpOptions {
  pid_t pid = 0;
  bool leave_running = false;
  images::Compression compression = images::Compression::kNone;
  int zstd_level = 3;
  bool shell_job = false;  // stdio connected to a terminal/pipes outside the tree is fine
  std::vector<std::string> external;
  bool tcp_established = false;
  // The caller saves the tree's user namespace itself (a container checkpoint): a tree in
  // another user namespace than the caller's may be dumped. Otherwise that is refused: a plain
  // dump saves no namespace, and the tree would come back in ours, its ids meaning other users.
  bool userns_saved_by_caller = false;
  // With leave_running, when the caller kills the tree right after or holds it stopped (a
  // container checkpoint that deletes or holds the container): TCP connections stay locked, so
  // the peer's packets are dropped until the restore unlocks and nothing reaches the peer;
  // DumpStats::tcp puts them back in repair mode before the kill (closing sends nothing), or
  // gives them back if the tree runs on after all.
  bool keep_tcp_locked = false;
  // zstd without pre-copy, into a sink that can compress after Finish, stores the pages raw and
  // compresses them after the tree is let go. Set by a caller that holds the tree frozen itself
  // after the engine returns (a container checkpoint kills its still-frozen cgroup later): that
  // compression is then left to DumpStats::compress, to run once the tree is gone, instead of
  // inside Dump.
  bool compress_later = false;
  // Pre-copy already running on this tree (dump/precopy.h), not owned: the dump stores only the
  // pages written since its last round, plus the rounds' page maps. It must write into the same
  // sink as the rounds did.
  PreCopy* precopy = nullptr;
  // Pre-copy as one call (the CLI's --pre-dump-rounds): Dump runs a PreCopy with this many
  // rounds itself before the final dump. 0: none; kPreCopyAuto: until they converge
  // (PreCopy::Converged). Ignored with precopy set.
  int pre_rounds = 0;
  DumpTuning tuning;
  // Called with (phase, done, total) for progress output; may be empty.
  std::function<void(const char*, uint64_t, uint64_t)> progress;
  // Container hooks (optional). on_seized runs once every thread of the tree is under ptrace
  // (stopped by it), before anything is injected; before_detach runs when the tree is let go,
  // on success and on failure, iff on_seized ran: right after the threads are detached when the
  // tree resumes (detaching steps them into re-issued syscalls, which a frozen cgroup would
  // block), right before the kill otherwise. The container
  // checkpoint thaws its cgroup-v1 freezer in the first (a frozen task takes the ptrace stop
  // but cannot run an injected syscall; the tree stays stopped by ptrace) and refreezes in the
  // second. A failing on_seized fails the dump; before_detach's error is returned if the dump
  // itself succeeded.
  std::function<Result<void>()> on_seized;
  std::function<Result<void>()> before_detach;
  // With leave_running and before_detach, when before_detach freezes the tree's cgroup and the
  // caller kills or holds the tree next (a container checkpoint that deletes or holds it): on
  // success before_detach runs while every thread is still ptrace-stopped, and the threads are
  // detached into the frozen cgroup without being stepped into their re-issued calls
  // (DetachFrozen): nothing of the tree runs after its state was taken, not one syscall (issue
  // 11: detached first, a shell appended the next line to its file before the refreeze, and
  // its restored copy appended it again). The price, only if the held tree is resumed after
  // all: a signal that arrives while it is held runs its handler before the interrupted call
  // is re-entered, which then does not return EINTR.
  bool freeze_before_detach = false;
  // With freeze_before_detach (and leave_running, on_seized and before_detach set: else it is
  // ignored and Dump lets go itself): Dump returns with every thread still ptrace-stopped and hands
  // the rest (before_detach, then DetachFrozen; ThawTree if the hook fails) to the caller as
  // DumpStats::release, which must call it on this thread (the tracer), on success and on every
  // error path. A container checkpoint writes its own record first: a migration's destination
  // starts restoring before the cgroup freeze, which can wait milliseconds for the cgroup lock
  // (held across an RCU grace period by another task's cgroup move).
  bool defer_release = false;
};

struct DumpStats {
  int processes = 0;
  int zombies = 0;
  int threads = 0;
  uint64_t vmas = 0;
  uint64_t pages_dumped = 0;   // private pages stored
  uint64_t pages_zero = 0;     // present but the zero page: not stored
  uint64_t pages_file = 0;     // private file pages never written: not stored
  uint64_t shmem_pages = 0;    // pages of shared memory objects stored
  uint64_t bytes_logical = 0;  // page bytes before compression
  uint64_t bytes_stored = 0;   // page bytes in the image
  uint64_t remote_calls = 0;
  uint64_t released_bytes = 0;  // kill mode: memory released in the tree as it was dumped
  uint64_t captured_bytes = 0;  // kill mode: pages held by reference while frozen, copied after
  double freeze_ms = 0;   // seizing the whole tree
  // From the first thread stopped until the tree resumed or died; with captured pages (kill
  // mode, dump/capture.h) until its state was wholly captured (it could have been killed then:
  // it never ran again, and nothing read from it after that point).
  double frozen_ms = 0;
  double drain_ms = 0;    // kill mode with captured pages: copying them into the image after
  double memdump_ms = 0;  // reading pages
  double total_ms = 0;
  uint64_t pre_bytes = 0;  // copied by pre-copy rounds while the tree ran
  // Room for the final deltas made before the freeze (PreCopy::PrepareFinal).
  uint64_t pre_reserved_bytes = 0;
  double pre_ms = 0;       // their time
  std::vector<uint64_t> round_bytes;  // per pre-copy round
  std::vector<pid_t> incompressible;  // --compress zstd, but a sample did not compress: raw
  std::vector<std::pair<std::string, int>> fd_counts;
  // Where the frozen time went inside the engine (ms): each per-process step summed over the
  // tree ("core", "pstate", "fds", "mm"), then "fds_finish", "images", "release", "detach".
  std::vector<std::pair<std::string, double>> step_ms;
  // With DumpOptions::compress_later and deferred zstd: compresses the raw page images in place
  // (the image set stays complete and raw if it fails); returns the bytes saved.
  std::function<Result<uint64_t>()> compress;
  // With DumpOptions::keep_tcp_locked: the tree's connections, still in repair mode and locked.
  std::shared_ptr<TcpHold> tcp;
  // With DumpOptions::defer_release: lets the tree go (once; the tree stays ptrace-stopped until
  // then). Its error is before_detach's.
  std::function<Result<void>()> release;
};

// Per-process handle during the dump.
struct ProcessDump {
  pid_t pid = 0;
  const img::ProcessEntry* entry = nullptr;
  // Created by the first step that needs it; released (area unmapped, registers restored) after
  // the last step. Memory steps skip its area.
  std::unique_ptr<remote::Remote> remote;
  // Facts a step leaves for later ones.
  uint64_t brk = 0;
};

struct DumpContext {
  DumpOptions opts;
  images::Sink* sink = nullptr;
  img::ProcessTree tree;
  files::FdDumper* fds = nullptr;
  DumpStats stats;
  uint64_t zero_pfn = 0;  // the kernel's zero page, as pagemap shows it
  // Shared memory objects seen so far, by (dev, inode) -> id.
  std::map<std::pair<uint64_t, uint64_t>, uint64_t> shmem_ids;
  uint64_t next_shmem_id = 1;
  std::vector<img::ShmemObject> shmem;  // written to shmem.img after every process
  // Page blobs created (and their space reserved) before the freeze, by pid.
  std::map<pid_t, std::unique_ptr<images::BlobWriter>> page_blobs;
  // Their second files (DumpTuning::split_pages), and every second file written (for compressing
  // after the dump).
  std::map<pid_t, std::unique_ptr<images::BlobWriter>> page_blobs2;
  std::vector<std::pair<pid_t, std::string>> second_page_blobs;
  // Kill mode with DumpTuning::release_memory: memory is released as it is dumped. Once it has
  // begun (released), a failure kills the tree instead of thawing it: it cannot run on.
  bool release = false;
  bool released = false;
  // Every seized thread (FreezeTree's list).
  const std::vector<pid_t>* seized = nullptr;
  // Before the first release: from then on the tree cannot run on, so a dumper that dies (killed
  // mid-way) must take it along (PTRACE_O_EXITKILL on every thread) rather than let it resume
  // without its memory. Sets released.
  void MarkReleased();
  // Kill mode with DumpTuning::capture_pages (dump/capture.h): each process's pages are held by
  // reference while frozen and copied into its page files once the whole tree is captured
  // (FinishCapturedPages). capture_fds: holder pipes this process may still open.
  bool capture = false;
  int64_t capture_fds = 0;
  struct Captured {
    pid_t pid = 0;
    std::unique_ptr<images::BlobWriter> blob, blob2;
    img::PageMap pm, pm2;
    UniqueFd mem;
    std::unique_ptr<PageCapture> capture;  // after the blobs: its drains stop before they go
    ~Captured();
    Captured();
    Captured(Captured&&);
  };
  std::vector<Captured> captured;
  // VMA flags read before the freeze (big processes, no pre-copy), reused frozen if unchanged.
  std::map<pid_t, VmFlagsSnapshot> vmflags;
  // Every process handle (so a failure can release all remotes).
  std::vector<std::unique_ptr<ProcessDump>> procs;

  // The remote-syscall channel of a process (created once; the main thread injects).
  Result<remote::Remote*> RemoteFor(ProcessDump& p);
  ~DumpContext();
};

}  // namespace godwit::dump
