// AIO rings (io_setup) of a dumped process: their VMA ("/[aio] (deleted)") is recorded with the
// ring's contents and the io_setup size that makes the same ring, not as shared memory.
#pragma once

#include "common/proc.h"
#include "common/remote.h"
#include "common/result.h"
#include "proto/mm.pb.h"

namespace godwit::dump {

bool IsAioRing(const proc::MapsEntry& m);
// Fills v (kind VMA_AIO_RING) from the ring at m in pid, read through r.
Result<void> DumpAioRing(pid_t pid, remote::Remote* r, const proc::MapsEntry& m, img::Vma* v);

}  // namespace godwit::dump
