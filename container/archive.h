// One-file export of a checkpoint directory (`godwit checkpoint --export FILE`, `godwit restore
// --import FILE`): an operator copies one file to another host.
//
// Format (little endian): "GODWITEX", u32 version (1), u32 0; then one record per file:
// u32 kind (1), u32 name length, u64 size, u32 crc32c of the data, u32 crc32c of the header so far
// plus the name, the name (a relative path, components as image names), the data; and last an
// end record: kind 2, name length 0, size = number of files, crc 0, its header crc. Nothing may
// follow it. Files inside are already compressed where the checkpoint asked for zstd.
//
// Import checks every length against the file size, every checksum and every name (no absolute
// path, no "..", no duplicates) before it writes a byte outside its temporary directory, and
// removes what it wrote on any error.
#pragma once

#include <string>

#include "common/result.h"

namespace godwit::container::archive {

struct Stats {
  uint64_t files = 0;
  uint64_t bytes = 0;  // payload bytes
  uint64_t size = 0;   // archive file size
};

// Writes every regular file below dir into file (through file.tmp + rename).
Result<Stats> Export(const std::string& dir, const std::string& file);
// Unpacks file into dir, which must not exist; dir appears only when everything checked out.
Result<Stats> Import(const std::string& file, const std::string& dir);

}  // namespace godwit::container::archive
