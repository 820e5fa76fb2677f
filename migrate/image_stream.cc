#include "migrate/image_stream.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zstd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "common/fs.h"
#include "common/timing.h"
#include "images/crc32c.h"

namespace godwit::migrate {
namespace {

// 256 KiB: a chunk stays in the L2 cache between its checksum, its compression and its
// encryption (sender), and its decryption, checksum and write (receiver); and the receiver's
// writer starts after 256 KiB instead of 4 MiB. 4 MiB chunks measured ~1.5-2x slower here.
constexpr size_t kChunk = 256 << 10;
// Adaptive zstd decides once per region of this many bytes, on a sample of its first chunk.
constexpr size_t kRegion = 4 << 20;
constexpr size_t kQueue = 16;  // pieces waiting for the receiver's writer thread (4 MiB)
constexpr size_t kSpare = kQueue + 2;
constexpr size_t kSample = 64 << 10;  // adaptive zstd: tried on this much of a region first

using timing::MsSince;

bool SafeName(const std::string& n) {
  return !n.empty() && n.size() < 256 && n.find('/') == std::string::npos && n != "." &&
         n != ".." && n.find('\0') == std::string::npos;
}

// Forwards every call to the inner output; Close also tells the sink's listener. piece: this
// file goes in pieces while written (ForwardingSink).
class ForwardingOutput : public images::Output {
 public:
  ForwardingOutput(std::unique_ptr<images::Output> in, std::string name,
                   std::function<Result<void>(const std::string&)>* cb, const PieceFn* piece)
      : in_(std::move(in)), name_(std::move(name)), cb_(cb), piece_(piece) {}
  Result<void> Write(const void* d, size_t n) override {
    TRY(in_->Write(d, n));
    return Progress();
  }
  Result<void> WriteChecked(const void* d, size_t n, uint32_t c) override {
    TRY(in_->WriteChecked(d, n, c));
    return Progress();
  }
  Result<void> Close() override {
    TRY(in_->Close());
    if (piece_ && streamed_ > 0) return (*piece_)(name_, streamed_, 0, true);
    return (*cb_)(name_);
  }
  Result<void> Reserve(uint64_t b) override { return in_->Reserve(b); }
  Result<int64_t> ExtendExternal(size_t n) override {
    external_ = true;  // written later at offsets: the file position no longer says what is in
    return in_->ExtendExternal(n);
  }
  int fd() const override { return in_->fd(); }
  Result<void> WriteAt(uint64_t off, const void* d, size_t n) override {
    return in_->WriteAt(off, d, n);
  }
  void AddChecksum(uint32_t c, size_t n) override { in_->AddChecksum(c, n); }

 private:
  // The inner file output writes in order at its file position (what it buffers is not there
  // yet): everything before the position is in the file for good.
  // Pieces end on kRegion boundaries: the sender's adaptive zstd decides per region, at its
  // first chunk, and a freed range then ends on a whole huge-page folio of the staging.
  Result<void> Progress() {
    if (!piece_ || external_ || in_->fd() < 0) return Ok();
    off_t pos = ::lseek(in_->fd(), 0, SEEK_CUR);
    if (pos < 0) return Ok();
    const uint64_t to = static_cast<uint64_t>(pos) & ~(uint64_t{kRegion} - 1);
    if (to < streamed_ + kStreamPiece) return Ok();
    TRY((*piece_)(name_, streamed_, to, false));
    streamed_ = to;
    return Ok();
  }
  std::unique_ptr<images::Output> in_;
  std::string name_;
  std::function<Result<void>(const std::string&)>* cb_;
  const PieceFn* piece_;
  uint64_t streamed_ = 0;  // bytes handed to piece_
  bool external_ = false;
};

class Forwarding : public images::Sink {
 public:
  Forwarding(std::unique_ptr<images::Sink> in, std::function<Result<void>(const std::string&)> cb,
             PieceFn piece, std::function<bool(const std::string&)> streams)
      : in_(std::move(in)), cb_(std::move(cb)), piece_(std::move(piece)),
        streams_(std::move(streams)) {}
  Result<std::unique_ptr<images::Output>> Create(const std::string& name) override {
    ASSIGN_OR_RETURN(auto out, in_->Create(name));
    const bool pieces = piece_ && streams_ && streams_(name);
    return std::unique_ptr<images::Output>(
        new ForwardingOutput(std::move(out), name, &cb_, pieces ? &piece_ : nullptr));
  }
  Result<void> Finish(img::Inventory inv) override {
    TRY(in_->Finish(std::move(inv)));
    return cb_("inventory.img");
  }
  void Abort() override { in_->Abort(); }

 private:
  std::unique_ptr<images::Sink> in_;
  std::function<Result<void>(const std::string&)> cb_;
  PieceFn piece_;
  std::function<bool(const std::string&)> streams_;
};

}  // namespace

const char* DirName(mig::Dir d) {
  switch (d) {
    case mig::DIR_TREE: return "tree";
    case mig::DIR_CONTAINER: return "container";
    default: return nullptr;
  }
}

std::unique_ptr<images::Sink> ForwardingSink(
    std::unique_ptr<images::Sink> inner, std::function<Result<void>(const std::string&)> cb,
    PieceFn piece, std::function<bool(const std::string&)> streams) {
  return std::make_unique<Forwarding>(std::move(inner), std::move(cb), std::move(piece),
                                      std::move(streams));
}

Result<void> FileSender::Prepare(int fd, const std::string& path, Chunk* c) {
  // Read, not mapped: mapping the file instead of copying it measured no gain (1.13 vs 1.15 CPU
  // seconds per 512 MiB: the faults and the unmap's rmap work cost what the copy did) and a
  // file that shrank would fault instead of failing.
  if (!c->raw) c->raw.reset(new char[kChunk]);
  size_t got = 0;
  while (got < c->len) {
    ssize_t r = pread(fd, c->raw.get() + got, c->len - got, static_cast<off_t>(c->off + got));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return Errno("read %s at %llu", path.c_str(), (unsigned long long)(c->off + got));
    if (r == 0) return MakeError(ErrorKind::kGeneric, 0, "%s shrank while being sent", path.c_str());
    got += r;
  }
  const char* data = c->raw.get();
  c->zstd = false;
  c->payload = data;
  c->plen = c->len;
  if (zstd_ && c->len >= 4096) {
    if (!c->z) c->z.reset(new char[ZSTD_compressBound(kChunk)]);
    if (!adaptive_) {
      c->region_try = true;
    } else if (c->off % kRegion == 0) {
      c->region_try = true;
      if (c->len > 2 * kSample) {
        size_t z = ZSTD_compress(c->z.get(), ZSTD_compressBound(kSample),
                                 data + c->len / 2 - kSample / 2, kSample, 1);
        c->region_try = !ZSTD_isError(z) && z < kSample - kSample / 16;
      }
    }
    if (c->region_try) {
      size_t z = ZSTD_compress(c->z.get(), ZSTD_compressBound(kChunk), data, c->len, 1);
      if (!ZSTD_isError(z) && z < c->len - c->len / 16) {
        c->zstd = true;
        c->payload = c->z.get();
        c->plen = z;
      }
    }
  }
  c->crc = images::Crc32c(0, c->payload, c->plen);
  return Ok();
}

Result<void> FileSender::Send(const std::string& name) {
  return SendRange(name, 0, 0, true, false);
}

Result<void> FileSender::SendRange(const std::string& name, uint64_t from, uint64_t to, bool last,
                                   bool punch) {
  auto t0 = std::chrono::steady_clock::now();
  std::string path = local_ + "/" + name;
  ASSIGN_OR_RETURN(UniqueFd fd, fs::Open(path, (punch ? O_RDWR : O_RDONLY) | O_CLOEXEC));
  uint64_t end = to;
  if (last) {
    struct stat st;
    if (fstat(fd.get(), &st) < 0) return Errno("stat %s", path.c_str());
    end = static_cast<uint64_t>(st.st_size);
  }
  if (end < from)
    return MakeError(ErrorKind::kGeneric, 0, "%s: %llu bytes, %llu of them sent already",
                     path.c_str(), static_cast<unsigned long long>(end),
                     static_cast<unsigned long long>(from));
  auto send = [&](const Chunk& c) -> Result<void> {
    mig::Frame f;
    mig::FileData* d = f.mutable_file();
    d->set_dir(dir_);
    d->set_name(name);
    d->set_offset(c.off);
    d->set_length(c.len);
    d->set_last(last && c.off + c.len == end);
    d->set_zstd(c.zstd);
    d->set_crc32c(c.crc);
    TRY_CTX(ch_->Send(f, c.payload, c.plen), "send %s/%s", DirName(dir_), name.c_str());
    wire_bytes_ += c.plen;
    return Ok();
  };
  // One reused buffer pair: a reader thread preparing chunks ahead of the send measured no gain
  // here (both ends share two cores in the benchmark: the CPU is the limit either way).
  if (!chunk_) chunk_ = std::make_unique<Chunk>();
  Chunk& c = *chunk_;
  uint64_t off = from;
  do {  // once at least: an empty last piece still closes the file at the peer
    c.off = off;
    c.len = static_cast<size_t>(std::min<uint64_t>(kChunk, end - off));
    TRY(Prepare(fd.get(), path, &c));
    TRY(send(c));
    off += c.len;
  } while (off < end);
  if (punch && end > from &&
      ::fallocate(fd.get(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                  static_cast<off_t>(from), static_cast<off_t>(end - from)) < 0 &&
      errno != EOPNOTSUPP)
    return Errno("free %s's %llu bytes sent at %llu", path.c_str(),
                 static_cast<unsigned long long>(end - from),
                 static_cast<unsigned long long>(from));
  file_bytes_ += end - from;
  if (last) files_++;
  send_ms_ += MsSince(t0);
  return Ok();
}

struct FileReceiver::Async {
  std::mutex mu;
  std::condition_variable cv;
  std::deque<std::pair<mig::FileData, std::string>> q;
  std::vector<std::string> spare;  // written pieces' buffers, for ApplyAsync(f, std::string*)
  bool busy = false;
  bool stop = false;
  std::optional<Error> err;
  std::atomic<pid_t> tid{0};
  std::thread worker;
};

FileReceiver::FileReceiver(std::string staging) : staging_(std::move(staging)) {}

pid_t FileReceiver::writer_tid() const { return async_ ? async_->tid.load() : 0; }

FileReceiver::~FileReceiver() {
  if (!async_) return;
  {
    std::lock_guard<std::mutex> l(async_->mu);
    async_->stop = true;
  }
  async_->cv.notify_all();
  async_->worker.join();
}

Result<void> FileReceiver::ApplyAsync(const mig::FileData& f, std::string payload) {
  if (!async_) {
    async_ = std::make_unique<Async>();
    async_->worker = std::thread([this] {
      Async& a = *async_;
      a.tid = gettid();
      std::unique_lock<std::mutex> l(a.mu);
      for (;;) {
        a.cv.wait(l, [&] { return a.stop || !a.q.empty(); });
        if (a.q.empty()) return;  // stop
        auto item = std::move(a.q.front());
        a.q.pop_front();
        a.busy = true;
        l.unlock();
        a.cv.notify_all();  // room in the queue
        Result<void> r = a.err ? Result<void>(Ok()) : Apply(item.first, item.second);
        l.lock();
        if (a.spare.size() < kSpare) a.spare.push_back(std::move(item.second));
        a.busy = false;
        if (!r.ok() && !a.err) a.err = std::move(r).error();
        a.cv.notify_all();
      }
    });
  }
  Async& a = *async_;
  std::unique_lock<std::mutex> l(a.mu);
  if (a.err) return *a.err;
  a.cv.wait(l, [&] { return a.q.size() < kQueue || a.err; });
  if (a.err) return *a.err;
  a.q.emplace_back(f, std::move(payload));
  l.unlock();
  a.cv.notify_all();
  return Ok();
}

Result<void> FileReceiver::ApplyAsync(const mig::FileData& f, std::string* payload) {
  std::string p = std::move(*payload);
  payload->clear();
  TRY(ApplyAsync(f, std::move(p)));
  std::lock_guard<std::mutex> l(async_->mu);
  if (!async_->spare.empty()) {
    *payload = std::move(async_->spare.back());
    async_->spare.pop_back();
  }
  return Ok();
}

Result<void> FileReceiver::Drain() {
  if (!async_) return Ok();
  Async& a = *async_;
  std::unique_lock<std::mutex> l(a.mu);
  a.cv.wait(l, [&] { return (a.q.empty() && !a.busy) || a.err; });
  if (a.err) return *a.err;
  return Ok();
}

Result<void> FileReceiver::Apply(const mig::FileData& f, const std::string& payload) {
  const char* dir = DirName(f.dir());
  if (!dir || !SafeName(f.name()))
    return MakeError(ErrorKind::kPeer, 0, "peer sent a file with a bad name (dir %d, \"%s\")",
                     static_cast<int>(f.dir()), f.name().c_str());
  if (images::Crc32c(0, payload.data(), payload.size()) != f.crc32c())
    return MakeError(ErrorKind::kPeer, 0, "%s/%s at offset %llu: payload checksum mismatch", dir,
                     f.name().c_str(), static_cast<unsigned long long>(f.offset()));
  const std::string* data = &payload;
  if (f.zstd()) {
    if (f.length() > kMaxPayload)
      return MakeError(ErrorKind::kPeer, 0, "%s/%s: chunk of %llu bytes", dir, f.name().c_str(),
                       static_cast<unsigned long long>(f.length()));
    zbuf_.resize(f.length());
    size_t n = ZSTD_decompress(zbuf_.data(), zbuf_.size(), payload.data(), payload.size());
    if (ZSTD_isError(n) || n != f.length())
      return MakeError(ErrorKind::kPeer, 0, "%s/%s at offset %llu: bad zstd frame", dir,
                       f.name().c_str(), static_cast<unsigned long long>(f.offset()));
    data = &zbuf_;
  } else if (payload.size() != f.length()) {
    return MakeError(ErrorKind::kPeer, 0, "%s/%s at offset %llu: %zu bytes, header says %llu", dir,
                     f.name().c_str(), static_cast<unsigned long long>(f.offset()),
                     payload.size(), static_cast<unsigned long long>(f.length()));
  }
  std::string key = std::string(dir) + "/" + f.name();
  auto it = open_.find(key);
  if (it == open_.end()) {
    if (f.offset() != 0)
      return MakeError(ErrorKind::kPeer, 0, "%s: first piece at offset %llu", key.c_str(),
                       static_cast<unsigned long long>(f.offset()));
    std::string d = staging_ + "/" + dir;
    TRY(fs::MkdirAll(d, 0700));
    ASSIGN_OR_RETURN(UniqueFd fd, fs::Open(d + "/" + f.name(),
                                           O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW,
                                           0600));
    it = open_.emplace(key, std::move(fd)).first;
  }
  const char* p = data->data();
  size_t len = data->size();
  uint64_t off = f.offset();
  while (len > 0) {
    ssize_t w = pwrite(it->second.get(), p, len, static_cast<off_t>(off));
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return Errno("write %s/%s at %llu", staging_.c_str(), key.c_str(),
                             static_cast<unsigned long long>(off));
    p += w;
    off += w;
    len -= w;
  }
  bytes_ += data->size();
  if (f.last()) open_.erase(it);
  return Ok();
}

}  // namespace godwit::migrate
