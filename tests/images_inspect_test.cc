// `godwit inspect` on an image directory made here: the human summary, the full JSON (every
// record decoded through the type named in the image header), and a damaged directory (shown
// as far as readable, non-zero exit).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "common/fs.h"
#include "images/format.h"
#include "images/image.h"

namespace godwit::images {
namespace {

struct CmdResult {
  int status = -1;
  std::string out, err;
};

// Runs godwit with args, capturing stdout and stderr through files (no pipes to drain).
CmdResult Godwit(const std::vector<std::string>& args, const std::string& tmp) {
  CmdResult r;
  std::string out = tmp + ".out", err = tmp + ".err";
  pid_t pid = fork();
  if (pid == 0) {
    int o = open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    int e = open(err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    dup2(o, 1);
    dup2(e, 2);
    std::vector<char*> argv{const_cast<char*>(GODWIT_BIN)};
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    execv(GODWIT_BIN, argv.data());
    _exit(127);
  }
  int st;
  waitpid(pid, &st, 0);
  r.status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
  r.out = fs::ReadFile(out).ok() ? *fs::ReadFile(out) : "";
  r.err = fs::ReadFile(err).ok() ? *fs::ReadFile(err) : "";
  unlink(out.c_str());
  unlink(err.c_str());
  return r;
}

class ImagesInspect : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = StrFormat("/dev/shm/godwit-inspect-%d", getpid());
    (void)fs::RemoveAll(dir_);
    auto sink = OpenDirSink(dir_);
    ASSERT_TRUE(sink.ok());
    auto w = ImageWriter::Create(**sink, "files-7.img");
    ASSERT_TRUE(w.ok());
    for (int i = 0; i < 3; i++) {
      img::ImageFile f;
      f.set_name("entry" + std::to_string(i));
      f.set_size(100 + i);
      ASSERT_TRUE(w->Write(f).ok());
    }
    ASSERT_TRUE(w->Close().ok());
    auto e = ImageWriter::Create(**sink, "empty.img");
    ASSERT_TRUE(e.ok());
    ASSERT_TRUE(e->Close().ok());
    auto b = BlobWriter::Create(**sink, "pages-7.img", Compression::kZstd);
    ASSERT_TRUE(b.ok());
    std::string zeros(5 << 20, '\0');
    ASSERT_TRUE(b->Append(zeros.data(), zeros.size()).ok());
    ASSERT_TRUE(b->Close().ok());
    ASSERT_TRUE((*sink)->Finish(NewInventory()).ok());
  }
  void TearDown() override { (void)fs::RemoveAll(dir_); }
  std::string dir_;
};

TEST_F(ImagesInspect, HumanSummary) {
  CmdResult r = Godwit({"inspect", dir_}, dir_);
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("complete, all checksums match"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("files-7.img"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("3 records of godwit.img.ImageFile"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("0 records of (none)"), std::string::npos) << r.out;
  // Types without a registered summary get one from reflection.
  EXPECT_NE(r.out.find("name=\"entry2\" size=102"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("blob: 2 chunks (2 zstd), 5.0 MiB logical"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("cpu features: fpu"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("total: 3 files"), std::string::npos) << r.out;
}

TEST_F(ImagesInspect, JsonDecodesEveryRecord) {
  CmdResult r = Godwit({"inspect", dir_, "--json"}, dir_);
  ASSERT_EQ(r.status, 0) << r.err;
  auto j = nlohmann::json::parse(r.out, nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << r.out;
  EXPECT_TRUE(j["complete"].get<bool>());
  EXPECT_TRUE(j["verified"].get<bool>());
  EXPECT_EQ(j["inventory"]["format_version"], kFormatVersion);
  EXPECT_FALSE(j["inventory"]["kernel_release"].get<std::string>().empty());
  ASSERT_EQ(j["files"].size(), 3u);
  const auto& f = j["files"][0];
  EXPECT_EQ(f["name"], "files-7.img");
  EXPECT_EQ(f["type"], "godwit.img.ImageFile");
  ASSERT_EQ(f["records_json"].size(), 3u);
  EXPECT_EQ(f["records_json"][2]["name"], "entry2");
  EXPECT_EQ(f["records_json"][2]["size"], "102");  // proto3 JSON: 64-bit ints are strings
  const auto& b = j["files"][2];
  EXPECT_EQ(b["kind"], "blob");
  EXPECT_EQ(b["logical_bytes"], 5u << 20);
  EXPECT_GT(b["ratio"].get<double>(), 100.0);
  EXPECT_TRUE(j["damage"].empty());
}

TEST_F(ImagesInspect, OnlyNamedImages) {
  CmdResult r = Godwit({"inspect", "--json", dir_, "files-7.img"}, dir_);
  ASSERT_EQ(r.status, 0) << r.err;
  auto j = nlohmann::json::parse(r.out, nullptr, false);
  ASSERT_FALSE(j.is_discarded());
  ASSERT_EQ(j["files"].size(), 1u);
  EXPECT_EQ(j["files"][0]["name"], "files-7.img");
  CmdResult missing = Godwit({"inspect", dir_, "nope.img"}, dir_);
  EXPECT_EQ(missing.status, 3) << missing.err;
  EXPECT_NE(missing.err.find("nope.img"), std::string::npos);
}

TEST_F(ImagesInspect, DamagedDirectory) {
  // A flipped byte in a record, a missing blob and a stray file.
  int fd = open((dir_ + "/files-7.img").c_str(), O_RDWR);
  ASSERT_GE(fd, 0);
  uint32_t huge = 0xffffff00;
  ASSERT_EQ(pwrite(fd, &huge, 4, 16 + strlen("godwit.img.ImageFile")), 4);
  close(fd);
  ASSERT_EQ(unlink((dir_ + "/pages-7.img").c_str()), 0);
  ASSERT_TRUE(fs::WriteFile(dir_ + "/stray.txt", "hello").ok());
  CmdResult r = Godwit({"inspect", dir_}, dir_);
  EXPECT_EQ(r.status, 5) << r.out << r.err;  // kBadImage
  EXPECT_NE(r.out.find("DAMAGED"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("empty.img"), std::string::npos) << r.out;  // the intact part is shown
  EXPECT_NE(r.out.find("exceeds the limit"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("pages-7.img"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("[not in inventory]"), std::string::npos) << r.out;
  EXPECT_NE(r.err.find("files-7.img"), std::string::npos) << r.err;

  CmdResult j = Godwit({"inspect", "--json", dir_}, dir_);
  EXPECT_EQ(j.status, 5);
  auto out = nlohmann::json::parse(j.out, nullptr, false);
  ASSERT_FALSE(out.is_discarded()) << j.out;
  EXPECT_FALSE(out["verified"].get<bool>());
  EXPECT_GE(out["damage"].size(), 2u);

  // Without an inventory: incomplete, still lists the files.
  ASSERT_EQ(unlink((dir_ + "/inventory.img").c_str()), 0);
  CmdResult i = Godwit({"inspect", dir_}, dir_);
  EXPECT_EQ(i.status, 5);
  EXPECT_NE(i.out.find("INCOMPLETE"), std::string::npos) << i.out;
  EXPECT_NE(i.out.find("empty.img"), std::string::npos) << i.out;
}

TEST_F(ImagesInspect, FlippedBlobByteIsLocated) {
  auto set = ImageSet::Open(dir_);
  ASSERT_TRUE(set.ok());
  auto b = set->OpenBlob("pages-7.img");
  ASSERT_TRUE(b.ok());
  ASSERT_EQ((*b)->stats().chunks, 2u);
  // Damage the last chunk's payload (the file's last bytes).
  int fd = open((dir_ + "/pages-7.img").c_str(), O_RDWR);
  ASSERT_GE(fd, 0);
  struct stat st;
  ASSERT_EQ(fstat(fd, &st), 0);
  char c;
  ASSERT_EQ(pread(fd, &c, 1, st.st_size - 5), 1);
  c ^= 1;
  ASSERT_EQ(pwrite(fd, &c, 1, st.st_size - 5), 1);
  close(fd);
  CmdResult r = Godwit({"inspect", dir_}, dir_);
  EXPECT_EQ(r.status, 5);
  EXPECT_NE(r.out.find("pages-7.img: checksum mismatch"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("chunk checksum mismatch (chunk of logical [4194304,"), std::string::npos)
      << r.out;
}

// A checkpoint of several image sets (a container's: DIR/container written last, DIR/tree) is
// inspected as a whole: complete when every part is, damage named by its part.
TEST(ImagesInspectCli, ContainerCheckpointAsAWhole) {
  std::string dir = StrFormat("/dev/shm/godwit-inspect-parts-%d", getpid());
  (void)fs::RemoveAll(dir);
  for (const char* part : {"tree", "container"}) {
    auto sink = OpenDirSink(dir + "/" + part);
    ASSERT_TRUE(sink.ok());
    img::ImageFile f;
    f.set_name(part);
    ASSERT_TRUE(WriteImage(**sink, std::string(part) + ".img", f).ok());
    ASSERT_TRUE((*sink)->Finish(NewInventory()).ok());
  }
  CmdResult r = Godwit({"inspect", "--json", dir}, dir);
  EXPECT_EQ(r.status, 0) << r.out << r.err;
  auto j = nlohmann::json::parse(r.out, nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << r.out;
  EXPECT_TRUE(j["complete"].get<bool>());
  EXPECT_TRUE(j["verified"].get<bool>());
  ASSERT_EQ(j["parts"].size(), 2u);
  EXPECT_EQ(j["parts"][0]["name"], "container");
  EXPECT_EQ(j["parts"][1]["name"], "tree");
  EXPECT_EQ(j["parts"][1]["files"][0]["name"], "tree.img");
  // The human form names both sets; one image of one part.
  r = Godwit({"inspect", dir, "tree/tree.img"}, dir);
  EXPECT_EQ(r.status, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("2 image sets (container, tree): complete"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("tree.img"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("container.img"), std::string::npos) << r.out;
  // Without the container's inventory (a checkpoint that did not finish): incomplete, exit 5.
  ASSERT_EQ(unlink((dir + "/container/inventory.img").c_str()), 0);
  r = Godwit({"inspect", dir}, dir);
  EXPECT_EQ(r.status, 5) << r.out << r.err;
  EXPECT_NE(r.out.find("INCOMPLETE"), std::string::npos) << r.out;
  EXPECT_NE(r.err.find("container: "), std::string::npos) << r.err;
  (void)fs::RemoveAll(dir);
}

// Every message type of proto/*.proto is known to the godwit binary: an image of any type is
// decoded, not shown as "type not known".
TEST(ImagesInspectCli, DecodesEveryImageType) {
  std::string dir = StrFormat("/dev/shm/godwit-inspect-types-%d", getpid());
  (void)fs::RemoveAll(dir);
  ASSERT_TRUE(fs::MkdirAll(dir).ok());
  auto protos = fs::ListDir(std::string(GODWIT_SOURCE_DIR) + "/proto");
  ASSERT_TRUE(protos.ok());
  int n = 0;
  for (const auto& p : *protos) {
    if (p.size() < 6 || p.substr(p.size() - 6) != ".proto") continue;
    auto text = fs::ReadFile(std::string(GODWIT_SOURCE_DIR) + "/proto/" + p);
    ASSERT_TRUE(text.ok());
    // Image types only: proto/ also holds the migration wire protocol (package godwit.mig).
    if (text->find("\npackage godwit.img;") == std::string::npos) continue;
    for (const auto& line : fs::Split(*text, '\n')) {
      if (line.rfind("message ", 0) != 0) continue;  // top-level messages only
      std::string name = fs::Trim(line.substr(8, line.find('{') - 8));
      // One zero-length record: a valid encoding of any proto3 message.
      std::string img = format::ImageHeader("godwit.img." + name, kFormatVersion);
      img.append(4, '\0');
      ASSERT_TRUE(fs::WriteFile(dir + "/" + name + ".img", img).ok());
      n++;
    }
  }
  ASSERT_GT(n, 1);
  CmdResult r = Godwit({"inspect", "--json", dir}, dir);
  (void)fs::RemoveAll(dir);
  auto j = nlohmann::json::parse(r.out, nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << r.out << r.err;
  ASSERT_EQ(j["files"].size(), static_cast<size_t>(n));
  for (const auto& f : j["files"]) {
    EXPECT_FALSE(f.contains("note")) << f["type"] << ": " << f["note"];
    EXPECT_EQ(f["records"], 1) << f["type"];
    EXPECT_EQ(f["records_json"].size(), 1u) << f["type"];
  }
}

TEST(ImagesInspectCli, MissingDirAndUsage) {
  CmdResult r =
      Godwit({"inspect", "/nonexistent/godwit-images"}, StrFormat("/tmp/godwit-insp-%d", getpid()));
  EXPECT_EQ(r.status, 3) << r.err;  // not found
  CmdResult u = Godwit({"inspect"}, StrFormat("/tmp/godwit-insp-%d", getpid()));
  EXPECT_EQ(u.status, 2) << u.err;
}

}  // namespace
}  // namespace godwit::images
