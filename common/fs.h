// Small file helpers with errors as values.
#pragma once

#include <string>
#include <vector>

#include "common/result.h"
#include "common/unique_fd.h"

namespace godwit::fs {

Result<std::string> ReadFile(const std::string& path);
// Writes the whole buffer; with atomic=true through a temp file + rename.
Result<void> WriteFile(const std::string& path, const std::string& data, bool atomic = false);
Result<UniqueFd> Open(const std::string& path, int flags, int mode = 0644);
Result<void> WriteAll(int fd, const void* buf, size_t len);
// Reads exactly len bytes; a short read is an error (kBadImage: truncated).
Result<void> ReadAll(int fd, void* buf, size_t len);
Result<void> MkdirAll(const std::string& path, int mode = 0755);
Result<void> RemoveAll(const std::string& path);
bool Exists(const std::string& path);
Result<std::vector<std::string>> ListDir(const std::string& path);
std::vector<std::string> Split(const std::string& s, char sep);
std::string Trim(const std::string& s);

}  // namespace godwit::fs
