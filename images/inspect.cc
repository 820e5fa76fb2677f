#include "images/inspect.h"

#include <fcntl.h>
#include <google/protobuf/descriptor.h>
#include <google/protobuf/message.h>
#include <google/protobuf/util/json_util.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <map>
#include <memory>
#include <mutex>
#include <set>

#include "common/fs.h"
#include "images/format.h"
#include "images/image.h"

namespace godwit::images {
namespace {

std::map<std::string, RecordSummaryFn>& Summaries() {
  static std::map<std::string, RecordSummaryFn> m;
  return m;
}

Result<nlohmann::json> MessageJson(const google::protobuf::Message& msg) {
  google::protobuf::util::JsonPrintOptions o;
  o.preserve_proto_field_names = true;
  o.always_print_primitive_fields = true;
  std::string out;
  auto st = google::protobuf::util::MessageToJsonString(msg, &out, o);
  if (!st.ok()) return Err("%s to JSON: %s", msg.GetTypeName().c_str(), st.ToString().c_str());
  auto j = nlohmann::json::parse(out, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return Err("%s to JSON: unparsable output", msg.GetTypeName().c_str());
  return j;
}

// A one-line description of any record through reflection, for types without a registered
// summary: the set scalar fields as name=value, repeated fields as name[count], messages as
// name{...}; at most ~100 columns.
std::string GenericSummary(const google::protobuf::Message& m) {
  using google::protobuf::FieldDescriptor;
  const auto* refl = m.GetReflection();
  std::vector<const FieldDescriptor*> fields;
  refl->ListFields(m, &fields);
  std::string out;
  for (const FieldDescriptor* f : fields) {
    std::string item;
    if (f->is_repeated()) {
      item = StrFormat("%s[%d]", f->name().c_str(), refl->FieldSize(m, f));
    } else {
      switch (f->cpp_type()) {
        case FieldDescriptor::CPPTYPE_INT32:
          item = std::to_string(refl->GetInt32(m, f));
          break;
        case FieldDescriptor::CPPTYPE_INT64:
          item = std::to_string(refl->GetInt64(m, f));
          break;
        case FieldDescriptor::CPPTYPE_UINT32:
          item = std::to_string(refl->GetUInt32(m, f));
          break;
        case FieldDescriptor::CPPTYPE_UINT64: {
          uint64_t v = refl->GetUInt64(m, f);
          // Addresses and masks read better in hex.
          item = v > 0xffffff ? StrFormat("0x%llx", static_cast<unsigned long long>(v))
                              : std::to_string(v);
          break;
        }
        case FieldDescriptor::CPPTYPE_DOUBLE:
          item = StrFormat("%g", refl->GetDouble(m, f));
          break;
        case FieldDescriptor::CPPTYPE_FLOAT:
          item = StrFormat("%g", refl->GetFloat(m, f));
          break;
        case FieldDescriptor::CPPTYPE_BOOL:
          item = refl->GetBool(m, f) ? "true" : "false";
          break;
        case FieldDescriptor::CPPTYPE_ENUM:
          item = refl->GetEnum(m, f)->name();
          break;
        case FieldDescriptor::CPPTYPE_STRING: {
          std::string v = refl->GetString(m, f);
          if (f->type() == FieldDescriptor::TYPE_BYTES) {
            item = StrFormat("<%zu bytes>", v.size());
          } else {
            if (v.size() > 40) v = v.substr(0, 37) + "...";
            item = "\"" + v + "\"";
          }
          break;
        }
        case FieldDescriptor::CPPTYPE_MESSAGE:
          item = "{...}";
          break;
      }
      item = f->name() + (f->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE ? "" : "=") + item;
    }
    if (out.size() + 1 + item.size() > 96) {
      out += " ...";
      break;
    }
    out += (out.empty() ? "" : " ") + item;
  }
  return out;
}

void InspectObject(const std::string& name, std::string data, const InspectOptions& opts,
                   nlohmann::json* f, std::vector<Error>* damage) {
  auto r = ImageReader::FromBuffer(name, std::move(data));
  if (!r.ok()) {
    (*f)["error"] = r.error().message();
    damage->push_back(std::move(r).error());
    return;
  }
  (*f)["type"] = r->type_name();
  const google::protobuf::Message* proto = nullptr;
  if (!r->type_name().empty()) {
    const auto* desc =
        google::protobuf::DescriptorPool::generated_pool()->FindMessageTypeByName(r->type_name());
    if (desc) proto = google::protobuf::MessageFactory::generated_factory()->GetPrototype(desc);
    if (!proto) (*f)["note"] = "type not known to this godwit: records not decoded";
  }
  RecordSummaryFn summary = nullptr;
  if (opts.summaries) {
    summary = FindSummary(r->type_name());
    if (!summary) summary = &GenericSummary;
  }
  uint64_t count = 0;
  nlohmann::json records = nlohmann::json::array(), sums = nlohmann::json::array();
  std::unique_ptr<google::protobuf::Message> msg(proto ? proto->New() : nullptr);
  for (;;) {
    size_t at = r->offset();
    std::string_view rec;
    auto more = r->NextRaw(&rec);
    if (!more.ok()) {
      (*f)["error"] = more.error().message();
      damage->push_back(std::move(more).error());
      break;
    }
    if (!*more) break;
    count++;
    if (!msg || (!opts.decode_records && !summary)) continue;
    if (!msg->ParseFromArray(rec.data(), static_cast<int>(rec.size()))) {
      Error e = MakeError(ErrorKind::kBadImage, 0, "%s: offset %zu: record does not parse as %s",
                          name.c_str(), at, r->type_name().c_str());
      (*f)["error"] = e.message();
      damage->push_back(e);
      break;
    }
    if (opts.decode_records) {
      auto j = MessageJson(*msg);
      records.push_back(j.ok() ? *j : nlohmann::json(j.error().message()));
    }
    if (summary && sums.size() < opts.max_summaries) sums.push_back(summary(*msg));
  }
  (*f)["records"] = count;
  if (opts.decode_records && msg) (*f)["records_json"] = std::move(records);
  if (summary) (*f)["summaries"] = std::move(sums);
}

// check_chunks: read every chunk to find where the damage is (the file's checksum is wrong or
// unknown).
void InspectBlob(const std::string& path, const std::string& name, bool check_chunks,
                 nlohmann::json* f, std::vector<Error>* damage) {
  auto b = BlobReader::OpenFile(path, name, /*verified=*/false);
  if (!b.ok()) {
    (*f)["error"] = b.error().message();
    damage->push_back(std::move(b).error());
    return;
  }
  auto st = (*b)->stats();
  if (check_chunks) {
    auto v = (*b)->VerifyChunks();
    if (!v.ok()) {
      (*f)["error"] = v.error().message();
      damage->push_back(std::move(v).error());
    }
  }
  (*f)["chunks"] = st.chunks;
  (*f)["zstd_chunks"] = st.zstd_chunks;
  (*f)["logical_bytes"] = st.logical_bytes;
  (*f)["stored_bytes"] = st.stored_bytes;
  (*f)["ratio"] = st.stored_bytes ? static_cast<double>(st.logical_bytes) / st.stored_bytes : 1.0;
}

}  // namespace

bool RegisterSummary(const std::string& type_name, RecordSummaryFn fn) {
  Summaries()[type_name] = fn;
  return true;
}

RecordSummaryFn FindSummary(const std::string& type_name) {
  auto it = Summaries().find(type_name);
  return it == Summaries().end() ? nullptr : it->second;
}

Result<nlohmann::json> InspectDir(const std::string& dir, const InspectOptions& opts,
                                  std::vector<Error>* damage) {
  ASSIGN_OR_RETURN(std::vector<std::string> names, fs::ListDir(dir));
  nlohmann::json out;
  out["dir"] = dir;
  std::vector<std::string> listed;
  std::set<std::string> bad_files;  // listed files whose size or checksum is wrong
  auto set = ImageSet::OpenUnverified(dir);
  out["complete"] = set.ok();
  if (set.ok()) {
    auto inv = MessageJson(set->inventory());
    if (inv.ok()) {
      (*inv).erase("files");  // shown per file below
      out["inventory"] = *inv;
    }
    for (const auto& f : set->inventory().files()) listed.push_back(f.name());
    auto errs = set->Verify();
    out["verified"] = errs.empty();
    for (auto& e : errs) {
      for (const auto& n : listed)
        if (e.message().rfind(n + ":", 0) == 0) bad_files.insert(n);
      damage->push_back(std::move(e));
    }
  } else {
    out["verified"] = false;
    damage->push_back(set.error());
  }
  // Listed files in inventory order, then files the inventory does not know.
  std::vector<std::string> order = listed;
  std::sort(names.begin(), names.end());
  for (const auto& n : names)
    if (n != format::kInventoryName && std::find(listed.begin(), listed.end(), n) == listed.end())
      order.push_back(n);
  nlohmann::json files = nlohmann::json::array();
  for (const auto& name : opts.only) {
    if (std::find(order.begin(), order.end(), name) == order.end()) {
      Error e = MakeError(ErrorKind::kNotFound, 0, "%s: no image %s", dir.c_str(), name.c_str());
      damage->push_back(e);
    }
  }
  for (const auto& name : order) {
    if (!opts.only.empty() &&
        std::find(opts.only.begin(), opts.only.end(), name) == opts.only.end())
      continue;
    nlohmann::json f;
    f["name"] = name;
    f["listed"] = std::find(listed.begin(), listed.end(), name) != listed.end();
    std::string path = dir + "/" + name;
    struct stat st;
    if (::stat(path.c_str(), &st) < 0) {
      f["kind"] = "missing";
      files.push_back(std::move(f));
      continue;
    }
    if (!S_ISREG(st.st_mode)) continue;
    f["size"] = static_cast<uint64_t>(st.st_size);
    char head[8] = {};
    {
      UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
      if (!fd || ::pread(fd.get(), head, 8, 0) != 8) {
        f["kind"] = "unknown";
        files.push_back(std::move(f));
        continue;
      }
    }
    switch (ProbeKind(std::string_view(head, 8))) {
      case FileKind::kObject: {
        f["kind"] = "object";
        auto data = fs::ReadFile(path);
        if (data.ok()) {
          InspectObject(name, std::move(*data), opts, &f, damage);
        } else {
          f["error"] = data.error().message();
          damage->push_back(std::move(data).error());
        }
        break;
      }
      case FileKind::kBlob:
        f["kind"] = "blob";
        InspectBlob(path, name, !f["listed"].get<bool>() || bad_files.count(name), &f, damage);
        break;
      case FileKind::kUnknown:
        f["kind"] = "unknown";
        if (f["listed"].get<bool>()) {
          Error e = MakeError(ErrorKind::kBadImage, 0, "%s: offset 0: not an image (bad magic)",
                              name.c_str());
          f["error"] = e.message();
          damage->push_back(e);
        }
        break;
    }
    files.push_back(std::move(f));
  }
  out["files"] = std::move(files);
  nlohmann::json dmg = nlohmann::json::array();
  for (const auto& e : *damage) dmg.push_back(e.message());
  out["damage"] = std::move(dmg);
  return out;
}

}  // namespace godwit::images
