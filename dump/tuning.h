// Engine switches for A/B measurements, not for users: the defaults are what godwit does. They
// are options, not process-wide state, so one process (a migration daemon) may run two dumps
// with different settings at once. The CLI fills them from GODWIT_* environment variables
// (cli/tuning_env.h); nothing under dump/ reads the environment.
#pragma once

namespace godwit::dump {

struct DumpTuning {
  // Before the freeze, create each process's page file and reserve the space its anonymous
  // memory will take (allocating tmpfs pages is most of the cost of writing them): a shorter
  // freeze. GODWIT_NO_RESERVE turns it off. A container checkpoint turns it off too: its cgroup
  // is frozen before the engine runs, so the reservation would only add frozen time.
  bool reserve_pages = true;
  // zstd without pre-copy: compress while frozen instead of after the tree is let go
  // (GODWIT_COMPRESS_FROZEN).
  bool compress_frozen = false;
  // A frozen process writes its own pages into the page file with an injected pwritev (one
  // copy); off: the coordinator reads them with process_vm_readv (GODWIT_NO_TARGET_WRITE).
  bool target_write = true;
  // Kill mode (not leave_running): each process's memory is released as its pages go into the
  // image (PageWriter::SetRelease), so the image's pages come from memory just freed and a dump
  // needs little free memory beyond the tree's own. Its page files are then not reserved before
  // the freeze (that would take the tree's size again). GODWIT_NO_RELEASE turns it off.
  bool release_memory = true;
  // Kill mode with release_memory, where the image has room for the pages: frozen, each process
  // only vmsplices its pages into pipes (references, no copy); once the whole tree is captured
  // its memory is released and the pages are copied into the page files on two threads
  // (dump/capture.h). The frozen time no longer grows with the copy. GODWIT_NO_CAPTURE turns it
  // off (the pages are then copied while frozen, released batch by batch as above).
  bool capture_pages = true;
  // The frozen copy on both cores: a raw page file in a directory is split in two, the second
  // written by a coordinator thread while the process writes the first (dump/mm.cc); before
  // the freeze both are reserved, each by its own thread. Off: in paired runs here (1 GiB,
  // leave-running, 7 each, load 3.6) it froze longer (860 vs 773 ms median) with the same total:
  // the coordinator's copy (process_vm_readv, then a write) costs two copies on the core the
  // process's own pwritev and the checksums already share. GODWIT_SPLIT_PAGES turns it on.
  bool split_pages = false;
};

}  // namespace godwit::dump
