// Throughput of the image layer's write and read paths against single-core memcpy bandwidth
// measured in the same run: BlobWriter raw and zstd to a tmpfs directory, crc32c, ImageSet
// verification and BlobReader reads. `images_bench [MiB] [dir]` (default 1024 MiB, /dev/shm).
#include <sys/mman.h>
#include <sys/uio.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <deque>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "common/fs.h"
#include "images/crc32c.h"
#include "images/image.h"

using namespace godwit;
using namespace godwit::images;

namespace {

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

char* Alloc(size_t n, bool touch) {
  void* p = mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {
    perror("mmap");
    exit(1);
  }
  if (touch) memset(p, 1, n);
  return static_cast<char*>(p);
}

template <typename F>
double Best(int reps, F f) {
  double best = 1e9;
  for (int i = 0; i < reps; i++) {
    double t0 = Now();
    f();
    best = std::min(best, Now() - t0);
  }
  return best;
}

void Check(const Result<void>& r, const char* what) {
  if (!r.ok()) {
    fprintf(stderr, "%s: %s\n", what, r.error().to_string().c_str());
    exit(1);
  }
}

}  // namespace

int main(int argc, char** argv) {
  size_t mib = argc > 1 ? strtoul(argv[1], nullptr, 10) : 1024;
  std::string base = argc > 2 ? argv[2] : "/dev/shm";
  std::string dir = base + "/godwit-images-bench-" + std::to_string(getpid());
  size_t n = mib << 20;

  // Source: memory-like data, half random pages (incompressible) and half pages with structure
  // (compressible), like a heap.
  char* src = Alloc(n, false);
  std::mt19937_64 rng(1);
  for (size_t off = 0; off < n; off += 4096) {
    uint64_t* p = reinterpret_cast<uint64_t*>(src + off);
    if ((off / 4096) % 2)
      for (int i = 0; i < 512; i++) p[i] = rng();
    else
      for (int i = 0; i < 512; i++) p[i] = (off + i) / 16;
  }
  char* dst = Alloc(n, true);

  double t_memcpy = Best(3, [&] { memcpy(dst, src, n); });
  double memcpy_gbs = n / t_memcpy / 1e9;
  munmap(dst, n);
  char* fresh = Alloc(n, false);
  double t_fresh = Best(1, [&] { memcpy(fresh, src, n); });
  munmap(fresh, n);
  double fresh_gbs = n / t_fresh / 1e9;
  printf("memcpy (single core, %zu MiB): %.2f GB/s; into fresh memory: %.2f GB/s\n", mib,
         memcpy_gbs, fresh_gbs);

  volatile uint32_t sink_crc = 0;
  double t_crc = Best(3, [&] { sink_crc = Crc32c(0, src, n); });
  size_t sw_n = std::min<size_t>(n, 64 << 20);
  double t_sw = Best(1, [&] { sink_crc = Crc32cSoftware(0, src, sw_n); });
  // The same over a cache-resident 256 KiB buffer: the instruction's own speed.
  double t_hot = Best(3, [&] {
    uint32_t c = 0;
    for (size_t off = 0; off < n; off += 256 << 10) c = Crc32c(c, src, 256 << 10);
    sink_crc = c;
  });
  printf(
      "crc32c %s: %.2f GB/s from memory = %.2fx memcpy, %.2f GB/s from cache (table "
      "fallback %.2f GB/s)\n",
      Crc32cHardware() ? "hardware" : "table", n / t_crc / 1e9, (n / t_crc / 1e9) / memcpy_gbs,
      n / t_hot / 1e9, sw_n / t_sw / 1e9);

  struct Mode {
    const char* name;
    Compression c;
    int level;
    int threads;
  } modes[] = {{"raw", Compression::kNone, 0, 1},
               {"zstd:1", Compression::kZstd, 1, 1},
               {"zstd:1 x2", Compression::kZstd, 1, 2},
               {"zstd:3", Compression::kZstd, 3, 1},
               {"zstd:3 x2", Compression::kZstd, 3, 2}};
  for (const Mode& m : modes) {
    (void)fs::RemoveAll(dir);
    uint64_t stored = 0;
    // Appends of 64 MiB, like a dumper's process_vm_readv buffer.
    double t = Best(1, [&] {
      auto sink = OpenDirSink(dir);
      Check(sink.ok() ? Ok() : Result<void>(sink.error()), "sink");
      auto w = BlobWriter::Create(**sink, "pages-1.img", m.c, m.level ? m.level : 3);
      Check(w.ok() ? Ok() : Result<void>(w.error()), "blob");
      Check(w->SetThreads(m.threads), "threads");
      for (size_t off = 0; off < n; off += 64 << 20) {
        auto r = w->Append(src + off, std::min<size_t>(64 << 20, n - off));
        Check(r.ok() ? Ok() : Result<void>(r.error()), "append");
      }
      Check(w->Close(), "close");
      stored = w->stored_size();
      Check((*sink)->Finish(NewInventory()), "finish");
    });
    double gbs = n / t / 1e9;
    printf(
        "BlobWriter %-9s to %s: %.2f GB/s = %.2fx memcpy, %.2fx memcpy to fresh memory "
        "(stored %.1f%%)\n",
        m.name, base.c_str(), gbs, gbs / memcpy_gbs, gbs / fresh_gbs, 100.0 * stored / n);
    double tv = Best(1, [&] {
      auto s = ImageSet::Open(dir);
      Check(s.ok() ? Ok() : Result<void>(s.error()), "verify");
    });
    printf("  ImageSet::Open (checksum every file): %.2f GB/s = %.2fx memcpy\n", stored / tv / 1e9,
           (stored / tv / 1e9) / memcpy_gbs);
    char* back = Alloc(n, true);
    double tr = Best(1, [&] {
      auto s = ImageSet::OpenUnverified(dir);
      auto b = s->OpenBlob("pages-1.img");
      Check(b.ok() ? Ok() : Result<void>(b.error()), "open blob");
      for (size_t off = 0; off < n; off += 64 << 20)
        Check((*b)->Read(off, back + off, std::min<size_t>(64 << 20, n - off)), "read");
    });
    if (memcmp(back, src, n) != 0) {
      fprintf(stderr, "read back differs\n");
      return 1;
    }
    munmap(back, n);
    printf("  BlobReader::Read (chunk checksums checked): %.2f GB/s = %.2fx memcpy\n", n / tr / 1e9,
           (n / tr / 1e9) / memcpy_gbs);
  }
  // Raw with the space reserved first (as a dumper can do before it freezes the tree): the
  // write itself is then what the frozen time pays.
  {
    (void)fs::RemoveAll(dir);
    auto sink = OpenDirSink(dir);
    Check(sink.ok() ? Ok() : Result<void>(sink.error()), "sink");
    auto w = BlobWriter::Create(**sink, "pages-1.img", Compression::kNone);
    Check(w.ok() ? Ok() : Result<void>(w.error()), "blob");
    double t0 = Now();
    Check(w->Reserve(n), "reserve");
    double t1 = Now();
    for (size_t off = 0; off < n; off += 64 << 20) {
      auto r = w->Append(src + off, std::min<size_t>(64 << 20, n - off));
      Check(r.ok() ? Ok() : Result<void>(r.error()), "append");
    }
    Check(w->Close(), "close");
    double t2 = Now();
    Check((*sink)->Finish(NewInventory()), "finish");
    double gbs = n / (t2 - t1) / 1e9;
    printf(
        "BlobWriter raw after Reserve: %.2f GB/s = %.2fx memcpy (the reserve took %.3f s, "
        "%.2f GB/s)\n",
        gbs, gbs / memcpy_gbs, t1 - t0, n / (t1 - t0) / 1e9);
  }
  // A dumper's pipeline: one thread reads "process memory" with process_vm_readv (from this
  // process) into 16 MiB buffers, another appends them to the blob; with and without Reserve.
  for (bool reserve : {false, true}) {
    (void)fs::RemoveAll(dir);
    auto sink = OpenDirSink(dir);
    Check(sink.ok() ? Ok() : Result<void>(sink.error()), "sink");
    auto w = BlobWriter::Create(**sink, "pages-1.img", Compression::kNone);
    Check(w.ok() ? Ok() : Result<void>(w.error()), "blob");
    if (reserve) Check(w->Reserve(n), "reserve");
    constexpr size_t kBuf = 16 << 20;
    char* bufs[2] = {Alloc(kBuf, true), Alloc(kBuf, true)};
    std::mutex mu;
    std::condition_variable cv;
    std::deque<std::pair<int, size_t>> full;
    bool busy[2] = {false, false};
    double t0 = Now();
    std::thread reader([&] {
      int b = 0;
      for (size_t off = 0; off < n; off += kBuf) {
        {
          std::unique_lock<std::mutex> l(mu);
          cv.wait(l, [&] { return !busy[b]; });
          busy[b] = true;
        }
        size_t len = std::min(kBuf, n - off);
        struct iovec local = {bufs[b], len}, remote = {src + off, len};
        if (process_vm_readv(getpid(), &local, 1, &remote, 1, 0) != static_cast<ssize_t>(len)) {
          perror("process_vm_readv");
          exit(1);
        }
        {
          std::lock_guard<std::mutex> l(mu);
          full.push_back({b, len});
        }
        cv.notify_all();
        b ^= 1;
      }
    });
    for (size_t done = 0; done < n;) {
      std::pair<int, size_t> item;
      {
        std::unique_lock<std::mutex> l(mu);
        cv.wait(l, [&] { return !full.empty(); });
        item = full.front();
        full.pop_front();
      }
      auto r = w->Append(bufs[item.first], item.second);
      Check(r.ok() ? Ok() : Result<void>(r.error()), "append");
      done += item.second;
      {
        std::lock_guard<std::mutex> l(mu);
        busy[item.first] = false;
      }
      cv.notify_all();
    }
    reader.join();
    Check(w->Close(), "close");
    double t = Now() - t0;
    Check((*sink)->Finish(NewInventory()), "finish");
    munmap(bufs[0], kBuf);
    munmap(bufs[1], kBuf);
    printf("pipeline process_vm_readv -> BlobWriter raw%s: %.2f GB/s = %.2fx memcpy\n",
           reserve ? " (reserved ahead)" : "", n / t / 1e9, n / t / 1e9 / memcpy_gbs);
  }
  (void)fs::RemoveAll(dir);
  return sink_crc == 12345 ? 1 : 0;
}
