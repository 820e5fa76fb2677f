// Writes the fuzz target's seed corpus into DIR: valid object images (with records, empty),
// raw and zstd blobs, and an inventory, each prefixed with the selector byte images_fuzz.cc uses.
#include <cstdio>
#include <string>

#include "common/fs.h"
#include "images/image.h"

using namespace godwit;
using namespace godwit::images;

int main(int argc, char** argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s DIR\n", argv[0]);
    return 2;
  }
  std::string out = argv[1];
  std::string dir = out + "/.images";
  auto fail = [](const Error& e) {
    fprintf(stderr, "seeds: %s\n", e.to_string().c_str());
    return 1;
  };
  auto sink = OpenDirSink(dir);
  if (!sink.ok()) return fail(sink.error());
  {
    auto w = ImageWriter::Create(**sink, "files.img");
    if (!w.ok()) return fail(w.error());
    for (int i = 0; i < 4; i++) {
      img::ImageFile f;
      f.set_name("file" + std::to_string(i));
      f.set_size(i * 1000);
      f.set_crc32c(i);
      if (auto r = w->Write(f); !r.ok()) return fail(r.error());
    }
    if (auto r = w->Close(); !r.ok()) return fail(r.error());
    auto e = ImageWriter::Create(**sink, "empty.img");
    if (!e.ok()) return fail(e.error());
    if (auto r = e->Close(); !r.ok()) return fail(r.error());
  }
  std::string data(9000, 'a');
  for (size_t i = 0; i < data.size(); i++) data[i] = static_cast<char>(i * i % 251);
  for (auto [name, c] :
       {std::pair{"raw.img", Compression::kNone}, std::pair{"zstd.img", Compression::kZstd}}) {
    auto b = BlobWriter::Create(**sink, name, c);
    if (!b.ok()) return fail(b.error());
    // Three appends: three chunks.
    for (int i = 0; i < 3; i++)
      if (auto r = b->Append(data.data(), 1000 + 3000 * i); !r.ok()) return fail(r.error());
    if (auto r = b->Close(); !r.ok()) return fail(r.error());
  }
  if (auto r = (*sink)->Finish(NewInventory()); !r.ok()) return fail(r.error());
  struct Seed {
    const char* file;
    char selector;
  } seeds[] = {{"files.img", 0},     {"empty.img", 0},     {"raw.img", 1}, {"zstd.img", 1},
               {"inventory.img", 2}, {"inventory.img", 0}, {"raw.img", 3}, {"zstd.img", 3}};
  int n = 0;
  for (const auto& s : seeds) {
    auto body = fs::ReadFile(dir + "/" + s.file);
    if (!body.ok()) return fail(body.error());
    std::string seed = std::string(1, s.selector) + *body;
    if (auto r = fs::WriteFile(out + "/seed-" + std::to_string(n++), seed); !r.ok())
      return fail(r.error());
  }
  (void)fs::RemoveAll(dir);
  return 0;
}
