// The engine's A/B switches from the environment (GODWIT_NO_RESERVE, GODWIT_COMPRESS_FROZEN,
// GODWIT_NO_TARGET_WRITE, set to anything): the CLI is the only reader of GODWIT_* variables;
// the libraries take them as option fields (dump/tuning.h).
#pragma once

#include <cstdlib>

#include "dump/tuning.h"

namespace godwit::cli {

// base with what the environment turns off or on.
inline dump::DumpTuning DumpTuningFromEnv(dump::DumpTuning base = {}) {
  if (getenv("GODWIT_NO_RESERVE")) base.reserve_pages = false;
  if (getenv("GODWIT_COMPRESS_FROZEN")) base.compress_frozen = true;
  if (getenv("GODWIT_NO_TARGET_WRITE")) base.target_write = false;
  return base;
}

}  // namespace godwit::cli
