#include "common/idmap.h"

#include <cstdlib>

#include "common/fs.h"

namespace godwit::idmap {

Result<std::vector<Range>> Parse(const std::string& text, const char* what) {
  std::vector<Range> out;
  int line = 0;
  for (const auto& l : fs::Split(text, '\n')) {
    ++line;
    std::string t = fs::Trim(l);
    if (t.empty()) continue;
    unsigned long long v[3];
    const char* p = t.c_str();
    for (int i = 0; i < 3; ++i) {
      char* end = nullptr;
      while (*p == ' ' || *p == '\t') ++p;
      if (*p < '0' || *p > '9')
        return MakeError(ErrorKind::kBadImage, 0, "%s line %d: want 'INSIDE OUTSIDE COUNT': '%s'",
                         what, line, t.c_str());
      v[i] = strtoull(p, &end, 10);
      p = end;
    }
    while (*p == ' ' || *p == '\t') ++p;
    if (*p != 0)
      return MakeError(ErrorKind::kBadImage, 0, "%s line %d: trailing text: '%s'", what, line,
                       t.c_str());
    if (v[2] == 0 || v[0] + v[2] > (1ULL << 32) || v[1] + v[2] > (1ULL << 32))
      return MakeError(ErrorKind::kBadImage, 0, "%s line %d: bad range '%s'", what, line,
                       t.c_str());
    out.push_back(
        {static_cast<uint32_t>(v[0]), static_cast<uint32_t>(v[1]), static_cast<uint32_t>(v[2])});
  }
  for (size_t i = 0; i < out.size(); ++i)
    for (size_t j = i + 1; j < out.size(); ++j) {
      auto overlap = [](uint64_t a, uint64_t b, uint64_t n, uint64_t m) {
        return a < b + m && b < a + n;
      };
      if (overlap(out[i].inside, out[j].inside, out[i].count, out[j].count) ||
          overlap(out[i].outside, out[j].outside, out[i].count, out[j].count))
        return MakeError(ErrorKind::kBadImage, 0, "%s: ranges %zu and %zu overlap", what, i + 1,
                         j + 1);
    }
  return out;
}

std::string Format(const std::vector<Range>& map) {
  std::string s;
  for (const auto& r : map) s += StrFormat("%u %u %u\n", r.inside, r.outside, r.count);
  return s;
}

Result<std::vector<Range>> Read(pid_t pid, const char* which) {
  std::string path = StrFormat("/proc/%d/%s", pid, which);
  ASSIGN_OR_RETURN(std::string text, fs::ReadFile(path));
  return Parse(text, path.c_str());
}

bool IsIdentity(const std::vector<Range>& map) {
  return map.size() == 1 && map[0].inside == 0 && map[0].outside == 0 &&
         map[0].count == 4294967295U;
}

std::optional<uint32_t> ToInside(const std::vector<Range>& map, uint32_t outside) {
  for (const auto& r : map)
    if (outside >= r.outside && static_cast<uint64_t>(outside) < uint64_t{r.outside} + r.count)
      return r.inside + (outside - r.outside);
  return std::nullopt;
}

std::optional<uint32_t> ToOutside(const std::vector<Range>& map, uint32_t inside) {
  for (const auto& r : map)
    if (inside >= r.inside && static_cast<uint64_t>(inside) < uint64_t{r.inside} + r.count)
      return r.outside + (inside - r.inside);
  return std::nullopt;
}

}  // namespace godwit::idmap
