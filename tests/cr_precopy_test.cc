// Driven pre-copy of a process tree (dump/precopy.h): the test starts tracking on a running tree
// (helpers/c_precopy.c: two processes sharing 64 MiB copy-on-write, each writing a small working
// set and replacing a 1 MiB mapping all the time), asks for rounds one at a time, then dumps it
// with the pre-copy into the same sink. The rounds report their bytes and dirty rate, the final
// dump stores a small part of the memory, and after the restore every word is checked by the
// helper itself (exit code and result files).
#include <linux/userfaultfd.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "cr_util.h"
#include "common/unique_fd.h"
#include "common/fs.h"
#include "common/scope_exit.h"
#include "dump/dirty.h"
#include "common/pagemap_scan.h"
#include "dump/pagemap_scan.h"
#include "dump/dump.h"
#include "dump/precopy.h"
#include "dump/vma_iter.h"
#include "dump/vmflags.h"
#include "images/image.h"
#include "proto/mm.pb.h"
#include "restore/context.h"
#include "restore/lazy.h"
#include "restore/load.h"
#include "restore/pages.h"

namespace godwit::crtest {
namespace {

constexpr uint64_t kMiB = 1 << 20;

std::string Slurp(const std::string& path) {
  std::ifstream f(path);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

// utime + stime of pid and its descendants (clock ticks), from /proc/PID/stat.
long long TreeCpuTicks(pid_t pid) {
  std::vector<pid_t> all = Descendants(pid);
  all.push_back(pid);
  long long sum = 0;
  for (pid_t p : all) {
    std::string st = Slurp("/proc/" + std::to_string(p) + "/stat");
    size_t rp = st.rfind(')');
    if (rp == std::string::npos) continue;
    std::istringstream in(st.substr(rp + 2));
    std::string field;
    // Fields after the comm: state is field 3; utime and stime are fields 14 and 15.
    for (int i = 3; i <= 15 && in >> field; ++i)
      if (i == 14 || i == 15) sum += std::stoll(field);
  }
  return sum;
}

// Waits (up to 10 s) until the tree has run since `since` ticks: a round then has something to
// find even on a loaded machine (the writer may otherwise not get a CPU between two rounds).
void WaitTreeRan(pid_t pid, long long since) {
  for (int i = 0; i < 10000 && TreeCpuTicks(pid) <= since; ++i) usleep(1000);
}

// Whether the lazy pager's record m holds exactly the segments want (blob = the round's index),
// node by node; *bytes: what it covers.
::testing::AssertionResult SameRecord(const restore::LazyPager::Map& m,
                                      const std::vector<restore::LazyPager::Segment>& want,
                                      uint64_t* bytes = nullptr) {
  if (m.size() != want.size())
    return ::testing::AssertionFailure() << m.size() << " segments, want " << want.size();
  size_t i = 0;
  uint64_t n = 0;
  for (const auto& [va, seg] : m) {
    const auto& w = want[i++];
    if (va != w.va || seg.end != w.end || seg.blob != w.source || seg.off != w.off)
      return ::testing::AssertionFailure()
             << "segment " << i - 1 << ": " << std::hex << va << "-" << seg.end << " blob "
             << std::dec << seg.blob << " off " << seg.off << ", want " << std::hex << w.va
             << "-" << w.end << " blob " << std::dec << w.source << " off " << w.off;
    n += seg.end - va;
  }
  if (bytes) *bytes = n;
  return ::testing::AssertionSuccess();
}

class CrPreCopy : public ::testing::Test {
 protected:
  void TearDown() override {
    for (pid_t p : pids_) KillAndReap(p);
  }
  // The helper: MIB MiB in 2 processes, a WORKSET_KIB working set.
  pid_t Start(int mib, int workset_kib, int nproc) {
    pid_t p = StartHelper("c_precopy", {"{READY}", std::to_string(mib),
                                        std::to_string(workset_kib), std::to_string(nproc),
                                        dir_.path()});
    if (p > 0) pids_.push_back(p);
    return p;
  }
  // `godwit dump --pid PID --images-dir DIR/img FLAG --json` (kill mode): its JSON.
  void DumpWith(pid_t pid, const std::string& flag, nlohmann::json* j) {
    auto d = Godwit({"dump", "--pid", std::to_string(pid), "--images-dir", dir_ / "img", flag,
                     "--json"});
    ASSERT_EQ(d.status, 0) << d.err;
    *j = nlohmann::json::parse(d.out);
  }
  // Reaps the killed tree, lets the restored one check itself; restore's status.
  int RestoreAndCheck(pid_t pid, int nproc) {
    EXPECT_EQ(Wait(pid), 128 + SIGKILL);
    while (waitpid(-1, nullptr, 0) > 0 || errno == EINTR) {
    }
    pids_.clear();
    Touch(dir_ / "go");
    auto r = Godwit({"restore", "--images-dir", dir_ / "img"});
    EXPECT_EQ(r.err, "");
    for (int i = 0; i < nproc; ++i)
      EXPECT_EQ(Slurp(dir_ / ("result-" + std::to_string(i))).rfind("ok ", 0), 0u)
          << "process " << i << ": " << Slurp(dir_ / ("result-" + std::to_string(i)));
    return r.status;
  }
  TempDir dir_;
  std::vector<pid_t> pids_;
};

TEST_F(CrPreCopy, RoundsThenAFinalDumpOfWhatChanged) {
  pid_t pid = Start(64, 256, 2);
  ASSERT_GT(pid, 0);
  auto sink = images::OpenDirSink(dir_ / "img");
  ASSERT_TRUE(sink.ok()) << sink.error().to_string();
  auto pc = dump::PreCopy::Start(pid, **sink);
  ASSERT_TRUE(pc.ok()) << pc.error().to_string();
  std::vector<dump::RoundStats> rounds;
  long long ticks = 0;
  for (int i = 0; i < 3; ++i) {
    if (i > 0) WaitTreeRan(pid, ticks);
    auto r = (*pc)->Round();
    ticks = TreeCpuTicks(pid);
    ASSERT_TRUE(r.ok()) << r.error().to_string();
    EXPECT_EQ(r->round, i);
    EXPECT_EQ(r->bytes, r->pages * 4096);
    rounds.push_back(*r);
  }
  EXPECT_EQ((*pc)->rounds().size(), 3u);
  // Round 0: everything present in both processes (their arrays, shared copy-on-write, count in
  // each); then what they wrote since: their working sets and replaced regions, far less.
  EXPECT_GE(rounds[0].bytes, 2 * 64 * kMiB);
  EXPECT_EQ(rounds[0].dirty_bytes_per_s, 0);
  for (int i = 1; i < 3; ++i) {
    EXPECT_GT(rounds[i].bytes, 0u) << "round " << i;
    EXPECT_LT(rounds[i].bytes, rounds[0].bytes / 8) << "round " << i;
    EXPECT_GT(rounds[i].dirty_bytes_per_s, 0) << "round " << i;
  }
  dump::DumpOptions o;
  o.pid = pid;
  o.precopy = pc->get();
  auto st = dump::Dump(o, **sink);
  ASSERT_TRUE(st.ok()) << st.error().to_string();
  EXPECT_EQ(st->processes, 2);
  EXPECT_EQ(st->round_bytes.size(), 3u);
  // The frozen round stores what was written since round 2: a few MiB of 128.
  EXPECT_LT(st->pages_dumped * 4096, 2 * 64 * kMiB / 8) << st->pages_dumped << " pages";
  printf("rounds: %.1f / %.1f / %.1f MiB (%.0f / %.0f MiB/s dirtied); final %.1f MiB\n",
         rounds[0].bytes / 1048576.0, rounds[1].bytes / 1048576.0, rounds[2].bytes / 1048576.0,
         rounds[1].dirty_bytes_per_s / 1048576.0, rounds[2].dirty_bytes_per_s / 1048576.0,
         st->pages_dumped * 4096 / 1048576.0);
  pc->reset();  // stops tracking (the tree is gone already)
  EXPECT_EQ(RestoreAndCheck(pid, 2), 0);
}

// Each round writes its page map as an image of its own; the final dump refers to those instead
// of repeating their runs while frozen (dump/precopy.h). A restore that parsed them ahead
// (restore/load.h PreloadPageMaps, what a migration's waiting restore does after each round)
// takes the parsed records, only when the bytes are the listed ones; a half-written file is
// left for the load to read.
TEST_F(CrPreCopy, RoundPageMapsAreReferencedAndPreloaded) {
  pid_t pid = Start(16, 64, 2);
  ASSERT_GT(pid, 0);
  auto sink = images::OpenDirSink(dir_ / "img");
  ASSERT_TRUE(sink.ok()) << sink.error().to_string();
  auto pc = dump::PreCopy::Start(pid, **sink);
  ASSERT_TRUE(pc.ok()) << pc.error().to_string();
  long long ticks = 0;
  for (int i = 0; i < 2; ++i) {
    if (i > 0) WaitTreeRan(pid, ticks);
    auto r = (*pc)->Round();
    ticks = TreeCpuTicks(pid);
    ASSERT_TRUE(r.ok()) << r.error().to_string();
  }
  dump::DumpOptions o;
  o.pid = pid;
  o.precopy = pc->get();
  auto st = dump::Dump(o, **sink);
  ASSERT_TRUE(st.ok()) << st.error().to_string();
  pc->reset();
  // A copy of one round's image cut in half, in a directory of its own: not preloaded.
  auto set = images::ImageSet::Open(dir_ / "img");
  ASSERT_TRUE(set.ok()) << set.error().to_string();
  std::string some_round;
  for (const auto& f : set->inventory().files())
    if (f.name().rfind("pagemap-", 0) == 0 && f.name().find("-pre") != std::string::npos)
      some_round = f.name();
  ASSERT_FALSE(some_round.empty()) << "no round page map image";
  std::string bytes = Slurp(dir_ / ("img/" + some_round));
  ASSERT_GT(bytes.size(), 64u);
  ASSERT_EQ(mkdir((dir_ / "half").c_str(), 0700), 0);
  {
    std::ofstream half(dir_ / ("half/" + some_round));
    half << bytes.substr(0, bytes.size() / 2);
  }
  restore::ForgetPreloaded();
  restore::PreloadPageMaps(dir_ / "half");
  EXPECT_EQ(restore::PreloadedPageMaps(), 0u);
  // Loaded without and with the preload: the same runs; with it, every reference was a hit.
  std::vector<std::pair<pid_t, std::vector<img::PageMap>>> loaded;  // the last load's
  auto load = [&](std::vector<size_t>* runs) -> int {
    restore::RestoreContext ctx;
    ctx.images = &*set;
    size_t before = restore::PreloadHits();
    auto l = restore::LoadImages(ctx);
    EXPECT_TRUE(l.ok()) << l.error().to_string();
    loaded.clear();
    for (const auto& p : ctx.procs) {
      for (const auto& pm : p->pagemaps) {
        EXPECT_TRUE(pm.runs_image().empty());
        runs->push_back(pm.runs_size());
      }
      loaded.emplace_back(p->entry->pid(), p->pagemaps);
    }
    return static_cast<int>(restore::PreloadHits() - before);
  };
  // The references the final dump made (a round whose pages are partly gone since, e.g. the
  // helper's replaced mapping, is written cut down instead).
  int refs = 0;
  for (const auto& f : set->inventory().files()) {
    if (f.name().rfind("pagemap-", 0) != 0 || f.name().find("-pre") != std::string::npos) continue;
    auto rd = set->OpenImage(f.name());
    ASSERT_TRUE(rd.ok());
    img::PageMap pm;
    while (*rd->Next(&pm)) refs += pm.runs_image().empty() ? 0 : 1;
  }
  EXPECT_GE(refs, 1);
  std::vector<size_t> plain, preloaded;
  EXPECT_EQ(load(&plain), 0);
  restore::PreloadPageMaps(dir_ / "img");
  size_t held = restore::PreloadedPageMaps();
  EXPECT_EQ(held, 4u) << "two rounds of two processes";
  EXPECT_EQ(load(&preloaded), refs);
  EXPECT_EQ(restore::PreloadedPageMaps(), held - refs) << "each hit taken, not kept";
  EXPECT_EQ(plain, preloaded);
  EXPECT_EQ(plain.size(), 6u) << "two rounds and the final dump, two processes";
  // The lazy pager's record of the rounds, built by the preload round by round: taken for a
  // process only when its final page map refers to every preloaded round (the helper's replaced
  // mapping makes the final dump write a round cut down instead: its pages there are gone), and
  // then the same segments as resolving the rounds all at once (the restore's own way).
  std::map<pid_t, int> refs_of;
  for (const auto& f : set->inventory().files()) {
    int pid = 0;
    if (sscanf(f.name().c_str(), "pagemap-%d.img", &pid) != 1) continue;
    auto rd = set->OpenImage(f.name());
    ASSERT_TRUE(rd.ok());
    img::PageMap pm;
    while (*rd->Next(&pm)) refs_of[pid] += pm.runs_image().empty() ? 0 : 1;
  }
  for (const auto& [pid, maps] : loaded) {
    // A round written cut down (not referenced) is the preloaded one minus its gone pages.
    auto ahead = restore::TakeLazyAhead(pid, maps);
    ASSERT_TRUE(ahead.has_value()) << "pid " << pid << ": " << refs_of[pid] << " of "
                                   << maps.size() - 1 << " rounds referenced";
    std::vector<std::vector<restore::LazyPager::Run>> rounds(maps.size() - 1);
    uint64_t bytes = 0;
    for (size_t i = 0; i + 1 < maps.size(); ++i) {
      for (const auto& r : maps[i].runs())
        rounds[i].push_back({r.vaddr(), r.npages() * 4096, r.blob_off()});
    }
    std::vector<const std::vector<restore::LazyPager::Run>*> ptrs;
    for (const auto& r : rounds) ptrs.push_back(&r);
    EXPECT_TRUE(SameRecord(ahead->pending, restore::LazyPager::Resolve(ptrs), &bytes))
        << "pid " << pid;
    EXPECT_EQ(ahead->bytes, bytes);
    std::vector<std::pair<uint64_t, uint64_t>> cov;
    for (const auto& [va, seg] : ahead->pending) {
      if (!cov.empty() && cov.back().second == va)
        cov.back().second = seg.end;
      else
        cov.push_back({va, seg.end});
    }
    EXPECT_EQ(ahead->covered, cov) << "covered is the union of the rounds' pages";
    EXPECT_FALSE(restore::TakeLazyAhead(pid, maps).has_value()) << "taken once";
  }
  // The restored tree's memory is right with the referenced rounds (the helper checks it).
  EXPECT_EQ(RestoreAndCheck(pid, 2), 0);
}

// A small pseudo-random generator for the randomized tests below (xorshift64).
struct XorShift {
  uint64_t seed;
  uint64_t operator()(uint64_t n) {
    seed ^= seed << 13;
    seed ^= seed >> 7;
    seed ^= seed << 17;
    return seed % n;
  }
};

// A full restore of pre-copied images fills each page once, from the newest page map holding it
// (restore::NewestOnly): random rounds against a page model; the cut-down maps never overlap,
// keep their blob offsets right, and stay sorted.
TEST(NewestOnly, EachPageOnceFromTheNewestMapThatHoldsIt) {
  XorShift rnd{0x2545F4914F6CDD1DULL};
  constexpr uint64_t kPages = 2048, kPg = 4096, kBase = 0x7f0000000000ULL;
  for (int trial = 0; trial < 200; ++trial) {
    const int nmaps = 1 + static_cast<int>(rnd(6));
    std::vector<img::PageMap> maps(nmaps);
    std::vector<std::pair<int, uint64_t>> model(kPages, {-1, 0});  // page -> (map, blob offset)
    for (int k = 0; k < nmaps; ++k) {
      maps[k].set_blob("pages-" + std::to_string(k));
      uint64_t page = rnd(8), off = rnd(100) * kPg;
      while (page < kPages) {
        uint64_t len = std::min<uint64_t>(1 + rnd(trial % 3 == 0 ? 64 : 6), kPages - page);
        img::PageRun* r = maps[k].add_runs();
        r->set_vaddr(kBase + page * kPg);
        r->set_npages(len);
        r->set_blob_off(off);
        for (uint64_t i = 0; i < len; ++i) model[page + i] = {k, off + i * kPg};
        off += len * kPg + rnd(3) * kPg;
        page += len + rnd(trial % 2 ? 2 : 40);  // adjacent runs too (gap 0)
      }
    }
    auto out = restore::NewestOnly(maps);
    ASSERT_EQ(out.size(), maps.size());
    std::vector<std::pair<int, uint64_t>> got(kPages, {-1, 0});
    for (int k = 0; k < nmaps; ++k) {
      EXPECT_EQ(out[k].blob(), maps[k].blob());
      uint64_t prev_end = 0;
      for (const auto& r : out[k].runs()) {
        ASSERT_GT(r.npages(), 0u) << "trial " << trial;
        ASSERT_GE(r.vaddr(), prev_end) << "trial " << trial << ": map " << k << " not sorted";
        prev_end = r.vaddr() + r.npages() * kPg;
        for (uint64_t i = 0; i < r.npages(); ++i) {
          uint64_t page = (r.vaddr() - kBase) / kPg + i;
          ASSERT_EQ(got[page].first, -1) << "trial " << trial << ": page " << page << " twice";
          got[page] = {k, r.blob_off() + i * kPg};
        }
      }
    }
    ASSERT_EQ(got, model) << "trial " << trial;
  }
}

// The lazy pager's record of pre-copy rounds, built one round at a time as they arrive
// (LazyPager::InsertSorted over a map, a migration's waiting restore) or all at once (Resolve,
// the restore itself): both give, for every page, the newest round that holds it and that round's offset,
// checked page by page against a plain model on random rounds (runs inside, across and beside
// earlier ones, adjacent runs, holes).
TEST(LazyRecord, RoundByRoundEqualsAllAtOnceAndThePageModel) {
  using restore::LazyPager;
  XorShift rnd{0x9E3779B97F4A7C15ULL};
  constexpr uint64_t kPages = 2048, kPg = 4096, kBase = 0x7f0000000000ULL;
  for (int trial = 0; trial < 200; ++trial) {
    int nrounds = 1 + static_cast<int>(rnd(6));
    std::vector<std::vector<LazyPager::Run>> rounds(nrounds);
    // model[page] = (round, off) of the newest round holding it; round -1: none.
    std::vector<std::pair<int, uint64_t>> model(kPages, {-1, 0});
    for (int k = 0; k < nrounds; ++k) {
      uint64_t page = rnd(8), off = rnd(100) * kPg;
      while (page < kPages) {
        uint64_t len = 1 + rnd(trial % 3 == 0 ? 64 : 6);
        len = std::min(len, kPages - page);
        rounds[k].push_back({kBase + page * kPg, len * kPg, off});
        for (uint64_t i = 0; i < len; ++i) model[page + i] = {k, off + i * kPg};
        off += len * kPg + rnd(3) * kPg;
        page += len + rnd(trial % 2 ? 2 : 40);  // adjacent runs too (gap 0)
      }
    }
    std::vector<const std::vector<LazyPager::Run>*> ptrs;
    for (const auto& r : rounds) ptrs.push_back(&r);
    auto all = LazyPager::Resolve(ptrs);
    // Round by round, as the waiting restore does (load.cc AddAhead): each round's runs laid
    // over the map of the earlier ones.
    LazyPager::Map step;
    for (int k = 0; k < nrounds; ++k) {
      std::vector<LazyPager::Segment> segs;
      for (const auto& r : rounds[k]) segs.push_back({r.va, r.va + r.len, 0, r.off});
      LazyPager::InsertSorted(step, segs, {static_cast<uint32_t>(k)});
    }
    ASSERT_TRUE(SameRecord(step, all)) << "trial " << trial;
    std::vector<std::pair<int, uint64_t>> got(kPages, {-1, 0});
    uint64_t prev_end = 0;
    for (const auto& g : all) {
      ASSERT_GE(g.va, prev_end) << "trial " << trial << ": unsorted or overlapping";
      ASSERT_LT(g.va, g.end);
      prev_end = g.end;
      for (uint64_t va = g.va; va < g.end; va += kPg)
        got[(va - kBase) / kPg] = {static_cast<int>(g.source), g.off + (va - g.va)};
    }
    for (uint64_t i = 0; i < kPages; ++i)
      ASSERT_EQ(got[i], model[i]) << "trial " << trial << " page " << i;
  }
}

// A round the final dump wrote cut down (pages gone since) is taken as the preloaded round minus
// those pages; a copy that is not a cut of the preloaded one (a run at another blob offset, or
// outside the round's runs) makes the restore resolve the rounds itself.
TEST(LazyRecord, RoundCutDownByTheFinalDumpLosesItsGonePages) {
  restore::ForgetPreloaded();
  TempDir dir;
  auto sink = images::OpenDirSink(dir.path());
  ASSERT_TRUE(sink.ok()) << sink.error().to_string();
  constexpr uint64_t kPg = 4096, kA = 0x10000000;
  auto map = [](const std::string& blob, std::vector<std::array<uint64_t, 3>> runs) {
    img::PageMap m;
    m.set_pid(4242);
    m.set_blob(blob);
    for (const auto& [va, n, off] : runs) {
      auto* r = m.add_runs();
      r->set_vaddr(va);
      r->set_npages(n);
      r->set_blob_off(off);
    }
    return m;
  };
  // Round 0: 16 pages at kA and 4 more; round 1 rewrote pages 2-3.
  img::PageMap r0 = map("pages-4242-pre0.img", {{kA, 16, 0}, {kA + 32 * kPg, 4, 16 * kPg}});
  img::PageMap r1 = map("pages-4242-pre1.img", {{kA + 2 * kPg, 2, 0}});
  ASSERT_TRUE(images::WriteImage(**sink, "pagemap-4242-pre0.img", r0).ok());
  ASSERT_TRUE(images::WriteImage(**sink, "pagemap-4242-pre1.img", r1).ok());
  restore::PreloadPageMaps(dir.path());
  // The final dump: pages 8-11 and the 4 at 32 are gone; round 0 comes cut down, round 1 whole
  // (as LoadImages hands them over; round 1 was not referenced here either: a cut copy of it
  // equal to the original is fine too).
  img::PageMap cut0 = map("pages-4242-pre0.img", {{kA, 8, 0}, {kA + 12 * kPg, 4, 12 * kPg}});
  img::PageMap fin = map("pages-4242.img", {{kA + 5 * kPg, 1, 0}});
  auto ahead = restore::TakeLazyAhead(4242, {cut0, r1, fin});
  ASSERT_TRUE(ahead.has_value());
  std::vector<restore::LazyPager::Run> a0 = {{kA, 8 * kPg, 0}, {kA + 12 * kPg, 4 * kPg, 12 * kPg}},
                                       a1 = {{kA + 2 * kPg, 2 * kPg, 0}};
  uint64_t bytes = 0;
  EXPECT_TRUE(SameRecord(ahead->pending, restore::LazyPager::Resolve({&a0, &a1}), &bytes));
  EXPECT_EQ(ahead->bytes, bytes);
  EXPECT_EQ(bytes, 12 * kPg);
  using Iv = std::pair<uint64_t, uint64_t>;
  EXPECT_EQ(ahead->covered, (std::vector<Iv>{{kA, kA + 8 * kPg}, {kA + 12 * kPg, kA + 16 * kPg}}));

  // The same rounds again (pid 4343), the final dump's copy of round 0 at another offset.
  TempDir dir2;
  auto sink2 = images::OpenDirSink(dir2.path());
  ASSERT_TRUE(sink2.ok());
  r0.set_pid(4343);
  ASSERT_TRUE(images::WriteImage(**sink2, "pagemap-4343-pre0.img", r0).ok());
  restore::PreloadPageMaps(dir2.path());
  img::PageMap moved = map("pages-4242-pre0.img", {{kA, 8, kPg}});
  EXPECT_FALSE(restore::TakeLazyAhead(4343, {moved, fin}).has_value());
  // A "cut" holding a run the preloaded round does not have.
  TempDir dir3;
  auto sink3 = images::OpenDirSink(dir3.path());
  ASSERT_TRUE(sink3.ok());
  ASSERT_TRUE(images::WriteImage(**sink3, "pagemap-4444-pre0.img", r0).ok());
  restore::PreloadPageMaps(dir3.path());
  img::PageMap outside = map("pages-4242-pre0.img", {{kA, 8, 0}, {kA + 20 * kPg, 1, 0}});
  EXPECT_FALSE(restore::TakeLazyAhead(4444, {outside, fin}).has_value());
  // Two final page maps (a large delta's halves) after the rounds: taken.
  TempDir dir4;
  auto sink4 = images::OpenDirSink(dir4.path());
  ASSERT_TRUE(sink4.ok());
  ASSERT_TRUE(images::WriteImage(**sink4, "pagemap-4545-pre0.img", r0).ok());
  restore::PreloadPageMaps(dir4.path());
  img::PageMap cut_all = map("pages-4242-pre0.img", {{kA, 16, 0}, {kA + 32 * kPg, 4, 16 * kPg}});
  img::PageMap fin2 = map("pages-4242-2.img", {{kA + 40 * kPg, 1, 0}});
  auto two = restore::TakeLazyAhead(4545, {cut_all, fin, fin2});
  ASSERT_TRUE(two.has_value());
  EXPECT_EQ(two->bytes, 20 * kPg);
  restore::ForgetPreloaded();
}

// After pre-copy the final dump takes the VMA flags from the last round's smaps read when a BPF
// iterator shows no VMA changed since (dump/vmflags.h). A flag set before the round comes through
// that way; one set on a whole mapping after the round (madvise splits nothing there, the VMA
// keeps its bounds) must be seen all the same: the raw flags differ, smaps is read again.
TEST_F(CrPreCopy, VmaFlagsChangedAfterTheLastRoundReachTheImage) {
  if (dump::VmaIter::Shared() == nullptr) GTEST_SKIP() << "no BPF task_vma iterator here";
  int go[2], ack[2];
  ASSERT_EQ(pipe(go), 0);
  ASSERT_EQ(pipe(ack), 0);
  constexpr size_t kLen = 64 * 4096;
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    // Two mappings kept apart by a PROT_NONE page so they never merge.
    char* m = static_cast<char*>(
        mmap(nullptr, 3 * kLen, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    if (m == MAP_FAILED) _exit(1);
    char* before = m;
    char* after = m + 2 * kLen;
    mprotect(m + kLen, kLen, PROT_NONE);
    memset(before, 1, kLen);
    memset(after, 2, kLen);
    madvise(before, kLen, MADV_DONTDUMP);
    uint64_t addrs[2] = {reinterpret_cast<uint64_t>(before), reinterpret_cast<uint64_t>(after)};
    if (write(ack[1], addrs, sizeof(addrs)) != sizeof(addrs)) _exit(1);
    char c;
    if (read(go[0], &c, 1) != 1) _exit(1);
    madvise(after, kLen, MADV_DONTFORK);
    if (write(ack[1], "d", 1) != 1) _exit(1);
    close_range(0, ~0U, 0);  // nothing connected outside the tree for the dump to refuse
    for (;;) pause();
  }
  pids_.push_back(pid);
  close(go[0]);
  close(ack[1]);
  uint64_t addrs[2];
  ASSERT_EQ(read(ack[0], addrs, sizeof(addrs)), static_cast<ssize_t>(sizeof(addrs)));
  // The iterator sees the process's VMAs as maps does.
  auto raw = dump::VmaIter::Shared()->Read(pid);
  ASSERT_TRUE(raw.ok()) << raw.error().to_string();
  int seen = 0;
  for (const auto& v : *raw) seen += (v.start == addrs[0] || v.start == addrs[1]) ? 1 : 0;
  EXPECT_EQ(seen, 2);
  auto flags = dump::ReadVmFlags(pid);
  ASSERT_TRUE(flags.ok());
  size_t listed = 0;
  for (const auto& [start, f] : *flags) listed += start < (1ULL << 63) ? 1 : 0;
  EXPECT_EQ(raw->size(), listed);

  auto sink = images::OpenDirSink(dir_ / "img");
  ASSERT_TRUE(sink.ok()) << sink.error().to_string();
  auto pc = dump::PreCopy::Start(pid, **sink);
  ASSERT_TRUE(pc.ok()) << pc.error().to_string();
  ASSERT_TRUE((*pc)->Round().ok());
  ASSERT_NE((*pc)->VmFlagsOf(pid), nullptr) << "the round took no snapshot of the VMA flags";
  ASSERT_EQ(write(go[1], "g", 1), 1);
  char c;
  ASSERT_EQ(read(ack[0], &c, 1), 1);
  ASSERT_EQ(read(ack[0], &c, 1), 0);  // EOF: the child closed its fds
  close(go[1]);
  close(ack[0]);
  dump::DumpOptions o;
  o.pid = pid;
  o.precopy = pc->get();
  auto st = dump::Dump(o, **sink);
  ASSERT_TRUE(st.ok()) << st.error().to_string();
  pc->reset();
  EXPECT_EQ(Wait(pid), 128 + SIGKILL);
  pids_.clear();
  auto set = images::ImageSet::Open(dir_ / "img");
  ASSERT_TRUE(set.ok()) << set.error().to_string();
  img::MmEntry mm;
  ASSERT_TRUE(set->ReadOne("mm-" + std::to_string(pid) + ".img", &mm).ok());
  int found = 0;
  for (const auto& v : mm.vmas()) {
    if (v.start() == addrs[0]) {
      found++;
      EXPECT_TRUE(v.madv() & (1ULL << MADV_DONTDUMP)) << "set before the round: lost";
      EXPECT_FALSE(v.madv() & (1ULL << MADV_DONTFORK));
    } else if (v.start() == addrs[1]) {
      found++;
      EXPECT_TRUE(v.madv() & (1ULL << MADV_DONTFORK)) << "set after the round: not seen";
    }
  }
  EXPECT_EQ(found, 2);
}

// A tree that has run no round yet: the final dump stores everything (nothing was copied before).
// A process that maps part of a VMA anew between the tracking's registration of it and its
// write protection (it runs meanwhile: an allocator's mmap MAP_FIXED or munmap): the rest of the
// VMA is tracked and copied by round 0; the new part, not registered, is left to the final dump.
// Before, the write protection's ENOENT dropped the whole process from pre-copy (all its memory
// then went frozen).
TEST_F(CrPreCopy, AMappingReplacedWhileTrackingIsArmedLeavesTheRestTracked) {
  constexpr size_t kLen = 3 << 20;
  char* m = static_cast<char*>(
      mmap(nullptr, kLen, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  ASSERT_NE(m, MAP_FAILED);
  memset(m, 1, kLen);
  int cmd[2], ack[2];
  ASSERT_EQ(pipe(cmd), 0);
  ASSERT_EQ(pipe(ack), 0);
  pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    close(cmd[1]);
    close(ack[0]);
    char c;
    while (read(cmd[0], &c, 1) == 1) {
      void* n = mmap(m + (1 << 20), 1 << 20, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
      if (n == MAP_FAILED) _exit(2);
      m[1 << 20] = 2;
      if (write(ack[1], "k", 1) != 1) _exit(3);
    }
    _exit(0);
  }
  close(cmd[0]);
  close(ack[1]);
  munmap(m, kLen);
  pids_.push_back(child);
  int replaced = 0;
  dump::DirtyTracker::SetRegisteredHookForTest([&](pid_t pid, uint64_t s, uint64_t e) {
    const auto a = reinterpret_cast<uint64_t>(m);
    if (pid != child || replaced || s > a || e < a + kLen) return;
    char c = 'r';
    if (write(cmd[1], &c, 1) == 1 && read(ack[0], &c, 1) == 1) replaced = 1;
  });
  ScopeExit unhook([] { dump::DirtyTracker::SetRegisteredHookForTest(nullptr); });
  auto sink = images::OpenDirSink(dir_ / "img");
  ASSERT_TRUE(sink.ok()) << sink.error().to_string();
  auto pc = dump::PreCopy::Start(child, **sink);
  ASSERT_TRUE(pc.ok()) << pc.error().to_string();
  EXPECT_EQ(replaced, 1) << "the hook did not run for the mapping";
  auto r = (*pc)->Round();
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  // The first and last MiB of the mapping (and the process's other pages): still tracked.
  EXPECT_GE(r->bytes, 2u << 20) << "the process was dropped from pre-copy";
  pc->reset();
  close(cmd[1]);
  close(ack[0]);
  EXPECT_EQ(Wait(child), 0);
  pids_.clear();
}

TEST_F(CrPreCopy, NoRoundIsAPlainDump) {
  pid_t pid = Start(16, 64, 1);
  ASSERT_GT(pid, 0);
  auto sink = images::OpenDirSink(dir_ / "img");
  ASSERT_TRUE(sink.ok());
  auto pc = dump::PreCopy::Start(pid, **sink);
  ASSERT_TRUE(pc.ok()) << pc.error().to_string();
  dump::DumpOptions o;
  o.pid = pid;
  o.precopy = pc->get();
  auto st = dump::Dump(o, **sink);
  ASSERT_TRUE(st.ok()) << st.error().to_string();
  EXPECT_GE(st->pages_dumped * 4096, 16 * kMiB);
  EXPECT_EQ(RestoreAndCheck(pid, 1), 0);
}

// Stopping a pre-copy without a final dump leaves the tree as it was: it runs on, unprotected.
TEST_F(CrPreCopy, DroppedWithoutADumpTheTreeRunsOn) {
  pid_t pid = Start(16, 64, 2);
  ASSERT_GT(pid, 0);
  {
    auto sink = images::OpenDirSink(dir_ / "img");
    ASSERT_TRUE(sink.ok());
    auto pc = dump::PreCopy::Start(pid, **sink);
    ASSERT_TRUE(pc.ok()) << pc.error().to_string();
    ASSERT_TRUE((*pc)->Round().ok());
    ASSERT_TRUE((*pc)->Round().ok());
    (*sink)->Abort();
  }
  // No userfaultfd was left in the processes (the one made in each was taken and closed there).
  std::vector<pid_t> all = Descendants(pid);
  all.push_back(pid);
  ASSERT_EQ(all.size(), 2u);
  for (pid_t p : all) {
    std::string fd_dir = "/proc/" + std::to_string(p) + "/fd";
    for (int fd = 0; fd < 64; ++fd) {
      char link[256] = {};
      if (readlink((fd_dir + "/" + std::to_string(fd)).c_str(), link, sizeof(link) - 1) > 0) {
        EXPECT_EQ(std::string(link).find("userfaultfd"), std::string::npos) << p << " fd " << fd;
      }
    }
  }
  Touch(dir_ / "go");
  EXPECT_EQ(Wait(pid), 0);
  pids_.clear();
  for (int i = 0; i < 2; ++i)
    EXPECT_EQ(Slurp(dir_ / ("result-" + std::to_string(i))).rfind("ok ", 0), 0u);
}

// A sink that cannot rewrite its files after Finish (as a stream to a peer): forwards to a
// directory sink but says so.
class NoLateCompressionSink : public images::Sink {
 public:
  explicit NoLateCompressionSink(images::Sink& inner) : inner_(inner) {}
  Result<std::unique_ptr<images::Output>> Create(const std::string& name) override {
    return inner_.Create(name);
  }
  Result<void> Finish(img::Inventory inv) override { return inner_.Finish(std::move(inv)); }
  void Abort() override { inner_.Abort(); }

 private:
  images::Sink& inner_;
};

// zstd into such a sink: the pages are compressed while written (nothing left for after).
TEST_F(CrPreCopy, ZstdIntoASinkThatCannotCompressLater) {
  pid_t pid = Start(16, 64, 1);
  ASSERT_GT(pid, 0);
  auto dir = images::OpenDirSink(dir_ / "img");
  ASSERT_TRUE(dir.ok());
  NoLateCompressionSink sink(**dir);
  dump::DumpOptions o;
  o.pid = pid;
  o.compression = images::Compression::kZstd;
  o.compress_later = true;
  auto st = dump::Dump(o, sink);
  ASSERT_TRUE(st.ok()) << st.error().to_string();
  EXPECT_FALSE(st->compress) << "nothing to compress after";
  EXPECT_LT(st->bytes_stored * 2, st->bytes_logical);
  auto set = images::ImageSet::Open(dir_ / "img");
  ASSERT_TRUE(set.ok()) << set.error().to_string();
  auto blob = set->OpenBlob("pages-" + std::to_string(pid) + ".img");
  ASSERT_TRUE(blob.ok()) << blob.error().to_string();
  EXPECT_GT((*blob)->stats().zstd_chunks, 0u);
  EXPECT_EQ(RestoreAndCheck(pid, 1), 0);
}

// The CLI's --pre-copy[=N]: without a value, rounds until one is small (a 128 KiB working set:
// the second round already is), at most 8.
TEST_F(CrPreCopy, DumpFlag) {
  pid_t pid = Start(32, 128, 1);
  ASSERT_GT(pid, 0);
  nlohmann::json j;
  ASSERT_NO_FATAL_FAILURE(DumpWith(pid, "--pre-copy", &j));
  ASSERT_EQ(j["pre_dump_round_bytes"].size(), 2u) << j;
  EXPECT_EQ(j["pre_dump_rounds"].get<int>(), 2);
  EXPECT_GE(j["pre_dump_round_bytes"][0].get<uint64_t>(), 32 * kMiB);
  EXPECT_LT(j["pages_dumped"].get<uint64_t>() * 4096, 32 * kMiB / 4);
  EXPECT_EQ(RestoreAndCheck(pid, 1), 0);
  for (const char* v : {"--pre-copy=0", "--pre-copy=x", "--pre-copy=2x"}) {
    auto bad = Godwit({"dump", "--pid", "1", "--images-dir", dir_ / "img2", v});
    EXPECT_EQ(bad.status, 2) << v << ": " << bad.err;
  }
}

// --pre-copy=N runs exactly N rounds; each process whose last rounds held at least 256 KiB gets
// its final page file made and its room reserved before the freeze (PreCopy::PrepareFinal), so
// the frozen copy writes into pages that exist; two processes each writing a 2 MiB working set
// in both arrays, restored and checked word for word.
TEST_F(CrPreCopy, FinalDeltaRoomIsReservedBeforeTheFreeze) {
  pid_t pid = Start(64, 2048, 2);
  ASSERT_GT(pid, 0);
  nlohmann::json j;
  ASSERT_NO_FATAL_FAILURE(DumpWith(pid, "--pre-copy=3", &j));
  EXPECT_EQ(j["pre_dump_rounds"].get<int>(), 3) << j;
  ASSERT_EQ(j["pre_dump_round_bytes"].size(), 3u) << j;
  // The rounds after the first hold both working sets of both processes (4 MiB each).
  EXPECT_GE(j["pre_dump_round_bytes"][2].get<uint64_t>(), 2 * kMiB) << j;
  EXPECT_GE(j["pre_reserved_bytes"].get<uint64_t>(), 2 * kMiB) << j;
  EXPECT_GT(j["pages_dumped"].get<uint64_t>(), 0u) << j;
  EXPECT_EQ(RestoreAndCheck(pid, 2), 0);
}

}  // namespace
}  // namespace godwit::crtest

// The final dump's walk of a tracked VMA (dump/pagemap_scan.h ContentAndWritten): one walk gives
// the pages with content and, among them, the ones written since they were protected; a VMA of
// 128 MiB or more is walked in two halves on two threads, which must give the same ranges as
// walking it in pieces one after the other. Here: this process's own 256 MiB, tracked like a
// pre-copied one (userfaultfd, async write-protect), written in both halves and across the middle,
// with a hole (MADV_DONTNEED) and pages that hold the zero page (read only).
TEST(PagemapScan, ContentAndWrittenInOneWalkSplitOrNot) {
  constexpr size_t kLen = 256 << 20, kPg = 4096;
  // 2 MiB aligned, so that the halves' border is the middle.
  char* raw = static_cast<char*>(
      mmap(nullptr, kLen + (2 << 20), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  ASSERT_NE(raw, MAP_FAILED);
  char* p = reinterpret_cast<char*>((reinterpret_cast<uintptr_t>(raw) + (2 << 20) - 1) &
                                    ~uintptr_t((2 << 20) - 1));
  ASSERT_EQ(madvise(p, kLen, MADV_NOHUGEPAGE), 0);
  for (size_t i = 0; i < kLen; i += kPg) p[i] = 1;
  godwit::UniqueFd uffd(static_cast<int>(syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK)));
  ASSERT_TRUE(uffd.valid()) << strerror(errno);
  uffdio_api api{};
  api.api = UFFD_API;
  api.features = godwit::pagemap::kUffdFeatureWpAsync | godwit::pagemap::kUffdFeatureWpUnpopulated;
  if (ioctl(uffd.get(), UFFDIO_API, &api) < 0) GTEST_SKIP() << "no userfaultfd WP_ASYNC here";
  uffdio_register reg{};
  reg.range = {reinterpret_cast<uint64_t>(p), kLen};
  reg.mode = UFFDIO_REGISTER_MODE_WP;
  ASSERT_EQ(ioctl(uffd.get(), UFFDIO_REGISTER, &reg), 0) << strerror(errno);
  uffdio_writeprotect wp{};
  wp.range = reg.range;
  wp.mode = UFFDIO_WRITEPROTECT_MODE_WP;
  ASSERT_EQ(ioctl(uffd.get(), UFFDIO_WRITEPROTECT, &wp), 0) << strerror(errno);
  // A hole made since (anonymous: the zap leaves no marker), written since: a page near the
  // start, a run across the middle, the last page.
  ASSERT_EQ(madvise(p + 8 * kPg, 4 * kPg, MADV_DONTNEED), 0);
  const size_t mid = kLen / 2;
  p[3 * kPg] = 2;
  for (size_t i = mid - 2 * kPg; i < mid + 3 * kPg; i += kPg) p[i] = 2;
  p[kLen - kPg] = 2;
  volatile char sink = p[9 * kPg];  // read from the hole: the zero page, no content
  (void)sink;
  auto pm = godwit::fs::Open("/proc/self/pagemap", O_RDONLY);
  ASSERT_TRUE(pm.ok()) << pm.error().to_string();
  const uint64_t a = reinterpret_cast<uint64_t>(p);
  std::vector<godwit::dump::PageRange> content, written;
  auto r = godwit::dump::pagemap_scan::ContentAndWritten(pm->get(), a, a + kLen, false, &content, &written);
  if (!r.ok() && (r.error().sys_errno() == EINVAL || r.error().sys_errno() == ENOTTY))
    GTEST_SKIP() << "no PAGEMAP_SCAN here";
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  auto ranges = [](const std::vector<godwit::dump::PageRange>& v) {
    std::vector<std::pair<uint64_t, uint64_t>> out;
    for (const auto& x : v) out.push_back({x.addr, x.npages});
    return out;
  };
  using R = std::vector<std::pair<uint64_t, uint64_t>>;
  EXPECT_EQ(ranges(content), (R{{a, 8}, {a + 12 * kPg, kLen / kPg - 12}}));
  EXPECT_EQ(ranges(written), (R{{a + 3 * kPg, 1}, {a + mid - 2 * kPg, 5}, {a + kLen - kPg, 1}}));
  // The same from pieces under the split size, walked one after the other.
  std::vector<godwit::dump::PageRange> c2, w2;
  for (uint64_t at = a; at < a + kLen; at += 32 << 20) {
    std::vector<godwit::dump::PageRange> c, w;
    ASSERT_TRUE(godwit::dump::pagemap_scan::ContentAndWritten(pm->get(), at, at + (32 << 20), false, &c, &w).ok());
    for (auto pair : {std::make_pair(&c, &c2), std::make_pair(&w, &w2)})
      for (const auto& x : *pair.first) {
        auto& dst = *pair.second;
        if (!dst.empty() && dst.back().addr + dst.back().npages * kPg == x.addr)
          dst.back().npages += x.npages;
        else
          dst.push_back(x);
      }
  }
  EXPECT_EQ(ranges(c2), ranges(content));
  EXPECT_EQ(ranges(w2), ranges(written));
  munmap(raw, kLen + (2 << 20));
}
