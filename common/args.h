// Command-line parsing for the verbs: --opt VALUE, --opt=VALUE, boolean --flag, short aliases,
// positionals, and everything after "--" kept verbatim.
#pragma once

#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "common/result.h"

namespace godwit {

struct ArgSpec {
  std::set<std::string> values;                // options that take a value ("bundle")
  std::set<std::string> flags;                 // boolean options ("detach")
  std::map<std::string, std::string> aliases;  // "-d" -> "detach", "-b" -> "bundle"
};

struct ParsedArgs {
  std::map<std::string, std::vector<std::string>> values;
  std::set<std::string> flags;
  std::vector<std::string> positionals;
  std::vector<std::string> rest;  // after "--"
  bool dashdash = false;

  bool has(const std::string& name) const { return flags.count(name) || values.count(name); }
  std::string get(const std::string& name, const std::string& def = "") const {
    auto it = values.find(name);
    return it == values.end() ? def : it->second.back();
  }
  std::vector<std::string> all(const std::string& name) const {
    auto it = values.find(name);
    return it == values.end() ? std::vector<std::string>{} : it->second;
  }
};

// args excludes the verb. Unknown options are a kUsage error naming the option.
Result<ParsedArgs> ParseArgs(const std::vector<std::string>& args, const ArgSpec& spec);

// "HOST:PORT" or "[V6]:PORT" -> (HOST, PORT), both non-empty and unchecked otherwise (a name or
// a number). kUsage naming s when it has neither form.
Result<std::pair<std::string, std::string>> SplitHostPort(const std::string& s);

// "256M", "1G", "4096" -> bytes.
Result<long long> ParseSize(const std::string& s);

}  // namespace godwit
