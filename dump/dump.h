// `godwit dump`: freeze a process tree, write its state as images into a sink, then kill it or
// let it run.
//
// Order (dump.cc): check the pid -> pre-copy rounds if asked (DumpOptions::pre_rounds; or rounds
// the caller ran, DumpOptions::precopy) -> freeze (seize every thread) -> pstree.img -> per
// process the steps of dump/steps.cc -> files.img, shmem.img -> release the remote channels ->
// inventory (Sink::Finish: the checkpoint is complete only now) -> kill the tree, or thaw it
// (leave_running). On any failure the sink is aborted (no inventory) and the tree thawed
// untouched. Except in kill mode with DumpTuning::release_memory: every process's other steps
// run first, then the memory of each, released batch by batch as it goes into the image (where
// the image's file system has room for all of it); a failure after the first release kills the
// tree (it cannot run on without the memory).
#pragma once

#include <memory>

#include "dump/context.h"
#include "images/image.h"

namespace godwit::dump {

// Dumps the tree of opts.pid into sink (written and finished here; aborted on failure). zstd
// without pre-copy into a sink that can compress after Finish stores the pages raw while frozen
// and compresses them after (or leaves that to DumpStats::compress with compress_later, which
// then needs the sink alive when it runs); any other sink gets them compressed while written.
Result<DumpStats> Dump(const DumpOptions& opts, images::Sink& sink);
// The checks Dump makes before it writes anything: the pid exists and is not the caller; a tree
// in another user namespace only with userns_saved_by_caller. For a caller that prepares the
// sink first (a directory sink removes the old images there).
Result<void> Check(const DumpOptions& opts);

// After a dump with DumpOptions::keep_tcp_locked: the tree's TCP connections stay locked (the
// peers' packets and theirs are dropped), out of repair mode while the tree may run (a socket in
// repair mode would fail its reads and queue its writes wrongly). Holds the dump's fd dumper,
// which has what undoing needs (no image is read back: the sink may be a stream). Destroyed
// without Resume, it leaves them locked: the caller kills the tree (after BeforeKill).
class TcpHold {
 public:
  explicit TcpHold(std::unique_ptr<files::FdDumper> fds);
  ~TcpHold();
  TcpHold(const TcpHold&) = delete;
  TcpHold& operator=(const TcpHold&) = delete;
  // The same lock in the caller's net namespace (the host's), for when the tree's own namespace
  // goes away with it (a container deleted): its peers' packets are dropped there until a
  // restore's Finalize removes it. Nothing when the tree shares the caller's namespace.
  Result<void> LockOutside(pid_t tree_pid);
  // Right before the tree is killed: the connections back in repair mode, so that closing them
  // sends nothing and leaves no orphan lingering in the tree's namespace.
  void BeforeKill();
  // After BeforeKill (and LockOutside, if wanted): closes the connections this hold kept open.
  // In repair mode that sends nothing; it lets the tree's net namespace die with the tree (an
  // open socket keeps it alive: a container's delete then waits ~500 ms for its veth).
  void Drop();
  // The tree runs on after all: repair off, every lock table removed (in the tree's namespaces
  // and the one LockOutside added), whatever else the dump took (pty queues) given back. Once.
  void Resume();

 private:
  std::unique_ptr<files::FdDumper> fds_;
};

}  // namespace godwit::dump
