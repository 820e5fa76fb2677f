// Kernel objects of issue 11 through `godwit dump`/`godwit restore` (tests/helpers/z_kobj.c, the
// zdtm cycle of zdtm_harness.h): BPF maps (zdtm bpf_hash, bpf_array), AIO rings (aio00, aio01),
// and copy-on-write anonymous memory shared by a parent and its child (cow00, cow01).
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <string>

#include "zdtm_harness.h"

namespace godwit::crtest {
namespace {

class ZdtmKobj : public ZdtmHarness {
 protected:
  ZdtmKobj() : ZdtmHarness("z_kobj") {}
};

#define ZDTM(Name, mode) \
  TEST_F(ZdtmKobj, Name) { RoundTrip(mode); }

// bpf_hash, bpf_array: frozen maps with their attributes, fdinfo (frozen, memlock) and elements;
// a second description of one map stays one map; a per-CPU array; an LRU hash left writable.
ZDTM(BpfMapsHashArrayPercpuLru, "bpf")
// A queue map (no keys to walk) is refused naming pid, fd and the map.
TEST_F(ZdtmKobj, BpfQueueMapRefusedCleanly) { Refused("bpf_queue", {"fd ", "bpf map", "type 22"}); }

// aio00: a context with nothing submitted is still a context (io_getevents, io_destroy).
ZDTM(Aio00PlainContext, "aio00")
// aio01: head, tail and nr as they were, tail both before and after a wrap; completed events not
// yet reaped read back with their data; the next submission completes at tail + 1.
ZDTM(Aio01HeadTailAndUnreapedEvents, "aio01")
// cow00, cow01: pages a parent and its child both still have from before their fork are one
// physical page in both after the restore (anonymous and file-private), pages either wrote
// since are each's own, untouched ones zeros or the file's; a later write copies again.
ZDTM(Cow00Cow01SharedPagesStayShared, "cow")

}  // namespace
}  // namespace godwit::crtest
