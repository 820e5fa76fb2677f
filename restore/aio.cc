// AIO rings (zdtm aio00, aio01): see restore/mm.h RestoreAioRing.
#include <fcntl.h>
#include <linux/aio_abi.h>
#include <sys/mman.h>
#include <sys/syscall.h>

#include <algorithm>
#include <cstring>

#include "common/log.h"
#include "proto/mm.pb.h"
#include "restore/mm.h"

namespace godwit::restore {
namespace {

struct AioRingHeader {
  uint32_t id, nr, head, tail, magic, compat_features, incompat_features, header_length;
};
constexpr uint64_t kHeadOffset = offsetof(AioRingHeader, head);

}  // namespace

Result<void> RestoreAioRing(remote::Remote* r, const img::Vma& v) {
  const uint64_t len = v.end() - v.start();
  const std::string& want = v.aio_ring();
  AioRingHeader old;
  if (want.size() != len || len < sizeof(old))
    return MakeError(ErrorKind::kBadImage, 0, "AIO ring %#lx: %zu bytes stored for %lu",
                     static_cast<unsigned long>(v.start()), want.size(),
                     static_cast<unsigned long>(len));
  memcpy(&old, want.data(), sizeof(old));
  if (old.nr == 0 || old.head >= old.nr || old.tail >= old.nr)
    return MakeError(ErrorKind::kBadImage, 0, "AIO ring %#lx: head %u tail %u nr %u",
                     static_cast<unsigned long>(v.start()), old.head, old.tail, old.nr);
  // The ring's range stays taken while io_setup picks a place, so the new ring cannot land on
  // part of it (mremap cannot move a range onto itself); the move replaces this placeholder.
  ASSIGN_OR_RETURN(long hold, r->Syscall(SYS_mmap, v.start(), len, PROT_NONE,
                                         MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE,
                                         static_cast<uint64_t>(-1), 0));
  if (static_cast<uint64_t>(hold) != v.start())
    return Err("AIO ring %#lx: its range is taken", static_cast<unsigned long>(v.start()));
  // Scratch layout: [0] the context id io_setup writes, [64] one iocb, [128] its 1-byte buffer,
  // [256...] the array of iocb pointers io_submit takes.
  const uint64_t s = r->scratch();
  const uint64_t zero = 0;
  TRY(r->Write(s, &zero, sizeof(zero)));
  TRY_CTX(r->Syscall(SYS_io_setup, v.aio_nr_req(), s), "io_setup(%u)", v.aio_nr_req());
  uint64_t ring = 0;
  TRY(r->Read(s, &ring, sizeof(ring)));
  AioRingHeader now;
  TRY(r->Read(ring, &now, sizeof(now)));
  if (now.nr != old.nr)
    return Err("AIO ring %#lx: io_setup(%u) made a ring of %u events, %u dumped (another number "
               "of possible CPUs?)",
               static_cast<unsigned long>(v.start()), v.aio_nr_req(), now.nr, old.nr);
  if (old.head != 0 || old.tail != 0) {
    // The kernel's own tail (where the next completion goes) is not in the ring: move it by
    // completing requests. If tail < head, a whole turn first (the kernel counts completed
    // events from the turn it saw). Each round submits at most what is free, then consumes up
    // to head by writing it (as io_getevents would).
    const uint32_t count = old.tail < old.head ? old.nr + old.tail : old.tail;
    ASSIGN_OR_RETURN(long null_fd, OpenInTarget(r, "/dev/null", O_WRONLY));
    iocb cb{};
    cb.aio_fildes = static_cast<uint32_t>(null_fd);
    cb.aio_lio_opcode = IOCB_CMD_PWRITE;
    cb.aio_buf = s + 128;
    cb.aio_nbytes = 1;
    TRY(r->Write(s + 64, &cb, sizeof(cb)));
    const uint32_t room = static_cast<uint32_t>((r->scratch_size() - 256) / sizeof(uint64_t));
    const uint32_t maxr = std::min({count, old.nr - 1, room});
    std::vector<uint64_t> ptrs(maxr, s + 64);
    TRY(r->Write(s + 256, ptrs.data(), ptrs.size() * sizeof(uint64_t)));
    uint32_t done = 0;
    while (done < count) {
      uint64_t n = std::min(count - done, maxr);
      ASSIGN_OR_RETURN(long got, r->Syscall(SYS_io_submit, ring, n, s + 256));
      if (got <= 0)
        return Err("AIO ring %#lx: io_submit moved the tail %u of %u",
                   static_cast<unsigned long>(v.start()), done, count);
      done += static_cast<uint32_t>(got);
      uint32_t head = std::min(done, old.head);
      TRY(r->Write(ring + kHeadOffset, &head, sizeof(head)));
    }
    TRY(r->Syscall(SYS_close, static_cast<uint64_t>(null_fd)));
    TRY(r->Read(ring, &now, sizeof(now)));
    if (now.tail != old.tail || now.head != old.head)
      return Err("AIO ring %#lx: tail %u head %u after the moves, %u %u wanted",
                 static_cast<unsigned long>(v.start()), now.tail, now.head, old.tail, old.head);
  }
  // The events as they were (the completed, not yet reaped ones among them).
  TRY(r->Write(ring + sizeof(AioRingHeader), want.data() + sizeof(AioRingHeader),
               len - sizeof(AioRingHeader)));
  ASSIGN_OR_RETURN(long moved, r->Syscall(SYS_mremap, ring, len, len,
                                          MREMAP_MAYMOVE | MREMAP_FIXED, v.start()));
  if (static_cast<uint64_t>(moved) != v.start())
    return Err("AIO ring: mremap to %#lx gave %#lx", static_cast<unsigned long>(v.start()), moved);
  return Ok();
}

}  // namespace godwit::restore
