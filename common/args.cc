#include "common/args.h"

#include <cstdlib>

namespace godwit {

Result<ParsedArgs> ParseArgs(const std::vector<std::string>& args, const ArgSpec& spec) {
  ParsedArgs out;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--") {
      out.dashdash = true;
      out.rest.assign(args.begin() + i + 1, args.end());
      break;
    }
    if (a.size() < 2 || a[0] != '-') {
      out.positionals.push_back(a);
      continue;
    }
    std::string name, value;
    bool has_value = false;
    auto al = spec.aliases.find(a);
    if (al != spec.aliases.end()) {
      name = al->second;
    } else if (a.rfind("--", 0) == 0) {
      name = a.substr(2);
      size_t eq = name.find('=');
      if (eq != std::string::npos) {
        value = name.substr(eq + 1);
        name = name.substr(0, eq);
        has_value = true;
      }
    } else {
      return MakeError(ErrorKind::kUsage, 0, "unknown option %s", a.c_str());
    }
    if (spec.flags.count(name)) {
      if (has_value) return MakeError(ErrorKind::kUsage, 0, "option --%s takes no value", name.c_str());
      out.flags.insert(name);
    } else if (spec.values.count(name)) {
      if (!has_value) {
        if (i + 1 >= args.size())
          return MakeError(ErrorKind::kUsage, 0, "option --%s needs a value", name.c_str());
        value = args[++i];
      }
      out.values[name].push_back(value);
    } else {
      return MakeError(ErrorKind::kUsage, 0, "unknown option %s", a.c_str());
    }
  }
  return out;
}

Result<std::pair<std::string, std::string>> SplitHostPort(const std::string& s) {
  std::string host, port;
  if (!s.empty() && s[0] == '[') {
    size_t close = s.find(']');
    if (close == std::string::npos || close + 1 >= s.size() || s[close + 1] != ':')
      return MakeError(ErrorKind::kUsage, 0, "bad address %s: want [V6]:PORT", s.c_str());
    host = s.substr(1, close - 1);
    port = s.substr(close + 2);
  } else {
    size_t colon = s.rfind(':');
    if (colon == std::string::npos || colon == 0)
      return MakeError(ErrorKind::kUsage, 0, "bad address %s: want HOST:PORT", s.c_str());
    host = s.substr(0, colon);
    port = s.substr(colon + 1);
  }
  if (host.empty() || port.empty())
    return MakeError(ErrorKind::kUsage, 0, "bad address %s: want HOST:PORT", s.c_str());
  return std::make_pair(host, port);
}

Result<long long> ParseSize(const std::string& s) {
  if (s.empty()) return MakeError(ErrorKind::kUsage, 0, "empty size");
  char* end = nullptr;
  double v = strtod(s.c_str(), &end);
  if (end == s.c_str() || v < 0) return MakeError(ErrorKind::kUsage, 0, "bad size '%s'", s.c_str());
  long long mult = 1;
  std::string suffix(end);
  if (suffix == "" || suffix == "B" || suffix == "b") mult = 1;
  else if (suffix == "K" || suffix == "k" || suffix == "KiB") mult = 1LL << 10;
  else if (suffix == "M" || suffix == "m" || suffix == "MiB") mult = 1LL << 20;
  else if (suffix == "G" || suffix == "g" || suffix == "GiB") mult = 1LL << 30;
  else return MakeError(ErrorKind::kUsage, 0, "bad size suffix in '%s'", s.c_str());
  return static_cast<long long>(v * mult);
}

}  // namespace godwit
