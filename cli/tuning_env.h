// The GODWIT_* switches for A/B measurements (docs/engine.md): the CLI is the only reader of the
// environment; the libraries take the same switches as option fields, so one process (a daemon)
// can run two operations with different settings. Each variable, when set (to anything), turns
// the fast path off.
#pragma once

#include <cstdlib>

#include "images/image.h"
#include "restore/context.h"

namespace godwit::cli {

inline bool EnvSet(const char* name) { return getenv(name) != nullptr; }

// GODWIT_NO_UFFD, GODWIT_NO_SPLIT, GODWIT_NO_POPULATE (page filling), GODWIT_MAPCRC (checksums
// through mappings).
inline void RestoreTuningFromEnv(restore::RestoreOptions* o) {
  o->fill.uffd = !EnvSet("GODWIT_NO_UFFD");
  o->fill.split = !EnvSet("GODWIT_NO_SPLIT");
  o->fill.populate = !EnvSet("GODWIT_NO_POPULATE");
  o->read.map_checksums = EnvSet("GODWIT_MAPCRC");
}

// GODWIT_NO_TOUCH: reserved page-file space is only fallocated, not written once.
inline images::DirSinkOptions DirSinkTuningFromEnv(bool overwrite = true) {
  images::DirSinkOptions o;
  o.overwrite = overwrite;
  o.touch_reserved = !EnvSet("GODWIT_NO_TOUCH");
  return o;
}

}  // namespace godwit::cli
