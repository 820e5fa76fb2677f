#include "dump/aio.h"

#include <cstring>
#include <string>

namespace godwit::dump {

namespace {
// The ring's header (fs/aio.c struct aio_ring), 32 bytes before the io_events.
struct AioRingHeader {
  uint32_t id, nr, head, tail, magic, compat_features, incompat_features, header_length;
};
constexpr uint32_t kAioRingMagic = 0xa10a10a1;
constexpr uint32_t kIoEventSize = 32;  // struct io_event
}  // namespace

bool IsAioRing(const proc::MapsEntry& m) { return m.shared && m.path.rfind("/[aio]", 0) == 0; }

Result<void> DumpAioRing(pid_t pid, remote::Remote* r, const proc::MapsEntry& m, img::Vma* v) {
  const uint64_t len = m.end - m.start;
  std::string ring(len, '\0');
  TRY_CTX(r->Read(m.start, ring.data(), len), "pid %d: read the AIO ring at %#lx", pid,
          static_cast<unsigned long>(m.start));
  AioRingHeader h;
  memcpy(&h, ring.data(), sizeof(h));
  // The kernel sizes a ring from io_setup's nr_events as: max(n, 4 * possible CPUs) * 2 + 2
  // events, rounded up to whole pages, nr = what those pages hold. (nr - 2) / 2 gives the same
  // pages again (at least 4 per CPU: the max above cannot grow it).
  const uint64_t fits = (len - sizeof(h)) / kIoEventSize;
  if (h.magic != kAioRingMagic || h.nr != fits || h.head >= h.nr || h.tail >= h.nr ||
      h.header_length != sizeof(h))
    return MakeError(ErrorKind::kUnsupported, 0,
                     "pid %d: AIO ring at %#lx (%lu bytes): unexpected header (magic %#x nr %u "
                     "head %u tail %u header %u)",
                     pid, static_cast<unsigned long>(m.start), static_cast<unsigned long>(len),
                     h.magic, h.nr, h.head, h.tail, h.header_length);
  v->set_kind(img::VMA_AIO_RING);
  v->set_aio_nr_req((h.nr - 2) / 2);
  v->set_aio_ring(std::move(ring));
  return Ok();
}

}  // namespace godwit::dump
