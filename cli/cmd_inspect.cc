// `godwit inspect DIR [IMAGE...] [--json]`: what an image directory holds, like CRIU's crit. The
// human form is a summary; --json gives every record of every object image decoded. A damaged
// directory still shows what can be read, and the damage makes the exit code non-zero. A
// container checkpoint (DIR/container, DIR/tree) is shown as one checkpoint of two image sets.
#include <time.h>

#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "cli/command.h"
#include "common/args.h"
#include "images/inspect.h"

namespace godwit::cli {
namespace {

std::string Bytes(uint64_t n) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(n);
  int u = 0;
  while (v >= 1024 && u < 4) {
    v /= 1024;
    u++;
  }
  return u == 0 ? StrFormat("%llu B", static_cast<unsigned long long>(n))
                : StrFormat("%.1f %s", v, units[u]);
}

// proto3 JSON writes 64-bit integers as strings.
uint64_t U64(const nlohmann::json& j) {
  if (j.is_number_unsigned()) return j.get<uint64_t>();
  if (j.is_string()) return strtoull(j.get<std::string>().c_str(), nullptr, 10);
  return 0;
}

std::string Str(const nlohmann::json& j, const char* key) {
  return j.contains(key) && j[key].is_string() ? j[key].get<std::string>() : "";
}

void PrintHuman(const nlohmann::json& out) {
  if (out.contains("parts")) {
    // A checkpoint of several image sets (a container's): each shown as one.
    std::string names;
    for (const auto& p : out["parts"]) names += (names.empty() ? "" : ", ") + Str(p, "name");
    printf("checkpoint %s: %zu image sets (%s): %s\n", out["dir"].get<std::string>().c_str(),
           out["parts"].size(), names.c_str(),
           !out["complete"].get<bool>()  ? "INCOMPLETE"
           : out["verified"].get<bool>() ? "complete, all checksums match"
                                         : "DAMAGED");
    for (const auto& p : out["parts"]) {
      printf("\n");
      PrintHuman(p);
    }
    if (!out["damage"].empty()) {
      printf("damage:\n");
      for (const auto& d : out["damage"]) printf("  %s\n", d.get<std::string>().c_str());
    }
    return;
  }
  printf("image directory %s: %s\n", out["dir"].get<std::string>().c_str(),
         !out["complete"].get<bool>()  ? "INCOMPLETE (no valid inventory)"
         : out["verified"].get<bool>() ? "complete, all checksums match"
                                       : "DAMAGED");
  if (out.contains("inventory")) {
    const auto& inv = out["inventory"];
    uint64_t ns = U64(inv["created_unix_ns"]);
    time_t t = static_cast<time_t>(ns / 1000000000ull);
    char when[64] = "?";
    struct tm tm;
    if (gmtime_r(&t, &tm)) strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S UTC", &tm);
    printf("  format %llu, godwit %s, created %s\n",
           static_cast<unsigned long long>(U64(inv["format_version"])),
           Str(inv, "godwit_version").c_str(), when);
    printf("  kernel %s %s, host %s\n", Str(inv, "kernel_release").c_str(),
           Str(inv, "machine").c_str(), Str(inv, "hostname").c_str());
    std::string line = "  cpu features:";
    for (const auto& f : inv["cpu_features"]) {
      std::string name = f.get<std::string>();
      if (line.size() + 1 + name.size() > 100) {
        printf("%s\n", line.c_str());
        line = "   ";
      }
      line += " " + name;
    }
    printf("%s\n  xsave mask (xcr0): 0x%llx\n", line.c_str(),
           static_cast<unsigned long long>(U64(inv["xcr0"])));
  }
  printf("files:\n");
  for (const auto& f : out["files"]) {
    std::string kind = f["kind"].get<std::string>();
    std::string name = f["name"].get<std::string>();
    std::string size = f.contains("size") ? Bytes(U64(f["size"])) : "-";
    std::string what;
    if (kind == "object" && f.contains("records")) {
      std::string type = Str(f, "type");
      what = StrFormat("%llu record%s of %s", static_cast<unsigned long long>(U64(f["records"])),
                       U64(f["records"]) == 1 ? "" : "s", type.empty() ? "(none)" : type.c_str());
    } else if (kind == "blob" && f.contains("chunks")) {
      what = StrFormat("blob: %llu chunks (%llu zstd), %s logical, %s stored, ratio %.2f",
                       static_cast<unsigned long long>(U64(f["chunks"])),
                       static_cast<unsigned long long>(U64(f["zstd_chunks"])),
                       Bytes(U64(f["logical_bytes"])).c_str(),
                       Bytes(U64(f["stored_bytes"])).c_str(), f["ratio"].get<double>());
    } else {
      what = kind;
    }
    printf("  %-24s %10s  %s%s\n", name.c_str(), size.c_str(), what.c_str(),
           f["listed"].get<bool>() ? "" : "  [not in inventory]");
    if (f.contains("summaries")) {
      for (const auto& s : f["summaries"]) printf("      %s\n", s.get<std::string>().c_str());
      uint64_t more = U64(f["records"]) - f["summaries"].size();
      if (more) printf("      ... %llu more\n", static_cast<unsigned long long>(more));
    }
    if (f.contains("error")) printf("      error: %s\n", f["error"].get<std::string>().c_str());
  }
  uint64_t files = 0, bytes = 0, logical = 0, stored = 0;
  for (const auto& f : out["files"]) {
    files++;
    if (f.contains("size")) bytes += U64(f["size"]);
    if (f.contains("logical_bytes")) logical += U64(f["logical_bytes"]);
    if (f.contains("stored_bytes")) stored += U64(f["stored_bytes"]);
  }
  printf("total: %llu files, %s", static_cast<unsigned long long>(files), Bytes(bytes).c_str());
  if (stored)
    printf("; blobs %s logical in %s (ratio %.2f)", Bytes(logical).c_str(), Bytes(stored).c_str(),
           static_cast<double>(logical) / stored);
  printf("\n");
  if (!out["damage"].empty() && !out.contains("name")) {  // a part's: shown by the whole
    printf("damage:\n");
    for (const auto& d : out["damage"]) printf("  %s\n", d.get<std::string>().c_str());
  }
}

int Inspect(Global& global, const std::vector<std::string>& args) {
  ArgSpec spec;
  auto parsed = ParseArgs(args, spec);
  if (!parsed.ok()) return ReportError(global, "inspect", parsed.error());
  if (parsed->positionals.empty())
    return ReportError(
        global, "inspect",
        MakeError(ErrorKind::kUsage, 0, "usage: godwit inspect DIR [IMAGE...] [--json]"));
  const std::string& dir = parsed->positionals[0];
  images::InspectOptions opts;
  opts.only.assign(parsed->positionals.begin() + 1, parsed->positionals.end());
  opts.decode_records = global.json;
  opts.summaries = !global.json;
  std::vector<Error> damage;
  auto out = images::InspectDir(dir, opts, &damage);
  if (!out.ok()) return ReportError(global, "inspect", out.error());
  if (global.json)
    printf("%s\n", out->dump(2, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
  else
    PrintHuman(*out);
  if (damage.empty()) return 0;
  Error first = damage.front();
  if (damage.size() > 1) first.wrap(StrFormat("%zu problems, the first", damage.size()));
  return ReportError(global, "inspect", first);
}

}  // namespace

// With IMAGE names, only those files are shown (the inventory and its verification still are).
GODWIT_COMMAND(inspect, "inspect", "inspect DIR [IMAGE...] [--json]",
               "show what an image directory holds (every record decoded with --json)", Inspect,
               "Lists the images in DIR (an image directory of `dump` or `checkpoint`): each\n"
               "file's kind, records and size; IMAGE... limits it to those files.\n"
               "\n"
               "options:\n"
               "  --json   every record decoded, as one object\n"
               "\n"
               "examples:\n"
               "  godwit inspect /tmp/ck\n"
               "  godwit inspect /tmp/ck/tree core-1234.img --json\n");

}  // namespace godwit::cli
