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
  // A state godwit refuses: the dump fails naming the pid and each of what; the tree runs on.
  void Refused(const std::string& mode, const std::vector<std::string>& what) {
    pid_t pid = Start(mode);
    ASSERT_GT(pid, 0) << "helper setup failed";
    auto d = Godwit({"dump", "--pid", std::to_string(pid), "--images-dir", dir_ / "img"});
    EXPECT_NE(d.status, 0) << "the dump of an unsupported state succeeded";
    EXPECT_NE(d.err.find("pid " + std::to_string(pid)), std::string::npos) << d.err;
    for (const auto& w : what) EXPECT_NE(d.err.find(w), std::string::npos) << d.err;
    ASSERT_EQ(kill(pid, SIGUSR2), 0);
    EXPECT_EQ(WaitBounded(pid, 30000), 0) << "the refused dump damaged the tree";
    pids_.clear();
  }
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
