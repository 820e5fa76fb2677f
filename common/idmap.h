// User namespace id maps (/proc/PID/uid_map, gid_map): parsing, and translating an id between a
// process's user namespace and the reader's.
//
// The kernel shows each line of /proc/PID/uid_map relative to the reader: "INSIDE OUTSIDE COUNT"
// means ids INSIDE.. of PID's user namespace are ids OUTSIDE.. of the reader's (or, when the
// reader is inside PID's namespace, of the parent's). A process in the reader's own namespace
// shows the identity map "0 0 4294967295".
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "common/result.h"

namespace godwit::idmap {

struct Range {
  uint32_t inside = 0;
  uint32_t outside = 0;
  uint32_t count = 0;
};

// Parses the text of a uid_map/gid_map file. kBadImage names the line on malformed text, a zero
// count, a range past 2^32, or overlapping ranges (what the kernel itself refuses).
Result<std::vector<Range>> Parse(const std::string& text, const char* what);

// The map text to write into /proc/PID/uid_map (one write, as the kernel requires).
std::string Format(const std::vector<Range>& map);

// Reads /proc/PID/{uid_map,gid_map}: which is "uid_map" or "gid_map".
Result<std::vector<Range>> Read(pid_t pid, const char* which);

// True for the map of a process in the reader's own user namespace.
bool IsIdentity(const std::vector<Range>& map);

// The id inside the namespace of an id seen outside it (nullopt: not mapped).
std::optional<uint32_t> ToInside(const std::vector<Range>& map, uint32_t outside);
// The id seen outside of an id inside the namespace (nullopt: not mapped).
std::optional<uint32_t> ToOutside(const std::vector<Range>& map, uint32_t inside);

}  // namespace godwit::idmap
