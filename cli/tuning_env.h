// The GODWIT_* switches for A/B measurements (docs/engine.md): the CLI is the only reader of the
// environment; the libraries take the same switches as option fields (dump/tuning.h,
// restore::RestoreOptions, images::DirSinkOptions), so one process (a daemon) can run two
// operations with different settings. Each variable takes effect when set (to anything).
#pragma once

#include <cstdlib>

#include "dump/tuning.h"
#include "images/image.h"
#include "restore/context.h"

namespace godwit::cli {

inline bool EnvSet(const char* name) { return getenv(name) != nullptr; }

// base with what the environment turns off or on: GODWIT_NO_RESERVE (no page-file reservation
// before the freeze), GODWIT_COMPRESS_FROZEN (compress while frozen), GODWIT_NO_TARGET_WRITE
// (the coordinator reads the pages with process_vm_readv), GODWIT_NO_RELEASE (kill mode keeps the
// tree's memory until it is killed), GODWIT_NO_CAPTURE (kill mode copies the pages while
// frozen instead of capturing them by reference), GODWIT_SPLIT_PAGES (two page files per
// process, two writers).
inline dump::DumpTuning DumpTuningFromEnv(dump::DumpTuning base = {}) {
  if (EnvSet("GODWIT_NO_RESERVE")) base.reserve_pages = false;
  if (EnvSet("GODWIT_COMPRESS_FROZEN")) base.compress_frozen = true;
  if (EnvSet("GODWIT_NO_TARGET_WRITE")) base.target_write = false;
  if (EnvSet("GODWIT_NO_RELEASE")) base.release_memory = false;
  if (EnvSet("GODWIT_NO_CAPTURE")) base.capture_pages = false;
  if (EnvSet("GODWIT_SPLIT_PAGES")) base.split_pages = true;
  return base;
}

// GODWIT_NO_UFFD, GODWIT_NO_SPLIT, GODWIT_NO_POPULATE (page filling), GODWIT_MAPCRC (checksums
// through mappings), GODWIT_LAZY_FAULTS_ONLY (restore --lazy installs faulted pages only: tests
// of the fault path, measuring), GODWIT_NO_PACE (its pushes never nap: common/priority.h Pacer).
inline void RestoreTuningFromEnv(restore::RestoreOptions* o) {
  o->fill.uffd = !EnvSet("GODWIT_NO_UFFD");
  o->fill.split = !EnvSet("GODWIT_NO_SPLIT");
  o->fill.populate = !EnvSet("GODWIT_NO_POPULATE");
  o->lazy_pace = !EnvSet("GODWIT_NO_PACE");
  o->read.map_checksums = EnvSet("GODWIT_MAPCRC");
  o->lazy_background = !EnvSet("GODWIT_LAZY_FAULTS_ONLY");
}

// GODWIT_NO_TOUCH: reserved page-file space is only fallocated, not written once.
inline images::DirSinkOptions DirSinkTuningFromEnv(bool overwrite = true) {
  images::DirSinkOptions o;
  o.overwrite = overwrite;
  o.touch_reserved = !EnvSet("GODWIT_NO_TOUCH");
  return o;
}

}  // namespace godwit::cli
