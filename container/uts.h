// UTS namespace: hostname and domain name. Image: "uts.img" (img::UtsNs).
#pragma once

#include "common/result.h"
#include "images/image.h"
#include "proto/uts.pb.h"

namespace godwit::container::uts {

inline constexpr char kImage[] = "uts.img";

Result<img::UtsNs> Collect(int uts_ns_fd);
Result<void> Apply(const img::UtsNs& uts, int uts_ns_fd);

// Dumps the UTS namespace ns_fd into sink.
Result<void> Dump(int uts_ns_fd, images::Sink& sink);
// Sets the hostname and domain name of the namespace uts_ns_fd from the image.
Result<void> Restore(const images::ImageSet& images, int uts_ns_fd);

}  // namespace godwit::container::uts
