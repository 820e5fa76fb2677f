// Generic inspection of an image directory (what `godwit inspect` shows): every object image is
// decoded through the protobuf type named in its header, so image kinds added later need no
// change here; blobs are summarised. Works on damaged directories: it reports what it could
// read and lists every problem found.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/result.h"

namespace google::protobuf {
class Message;
}  // namespace google::protobuf

namespace godwit::images {

// An optional one-line description of a record for the human summary ("pid 42 comm sleep
// threads 3"). Register at static-init time from the library that owns the type:
//   static const bool r = images::RegisterSummary("godwit.img.Core", &SummarizeCore);
// (the registering object file must be linked into the binary: put it next to code the binary
// calls, not in a file nothing references).
using RecordSummaryFn = std::string (*)(const google::protobuf::Message& record);
bool RegisterSummary(const std::string& type_name, RecordSummaryFn fn);
RecordSummaryFn FindSummary(const std::string& type_name);

struct InspectOptions {
  bool decode_records = true;     // put every record as JSON into "records"
  bool summaries = false;         // put one-line summaries into "summaries" (registered ones, or
                                  // the set fields of the record)
  size_t max_summaries = 5;       // per file
  std::vector<std::string> only;  // if not empty: show only these files (all are still verified)
};

// Returns
// {"dir", "complete": inventory present and parsed, "verified": every listed file intact,
//  "inventory": {...} (the Inventory message as JSON, if readable),
//  "files": [{"name", "size", "listed", "kind": "object"|"blob"|"unknown"|"missing",
//             object: "type", "records", "records_json": [...], "summaries": [...]
//             blob: "chunks", "zstd_chunks", "logical_bytes", "stored_bytes", "ratio"
//             "error": "..." if this file is damaged}],
//  "damage": ["...", ...]}
// Every problem found is also appended to *damage (kBadImage errors, first one first).
// Fails only if dir cannot be listed.
//
// A checkpoint made of several image sets, one per subdirectory (a container checkpoint:
// DIR/container and DIR/tree), is inspected as a whole: DIR without an inventory or image files
// of its own, with subdirectories that hold images. Then
// {"dir", "complete": every part complete, "verified": every part intact,
//  "parts": [{"name": "container", ...the above for DIR/container...}, ...], "damage": [...]}
// and each part's problems are prefixed with its name. opts.only takes "PART/NAME", or a NAME
// looked for in every part.
Result<nlohmann::json> InspectDir(const std::string& dir, const InspectOptions& opts,
                                  std::vector<Error>* damage);

}  // namespace godwit::images
