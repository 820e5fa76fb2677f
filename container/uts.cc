#include "container/uts.h"

#include <sched.h>
#include <sys/utsname.h>
#include <unistd.h>

#include "container/ns.h"

namespace godwit::container::uts {

Result<img::UtsNs> Collect(int uts_ns_fd) {
  img::UtsNs out;
  TRY_CTX(RunHere(uts_ns_fd, CLONE_NEWUTS,
                         [&]() -> Result<void> {
                           struct utsname u;
                           if (::uname(&u) < 0) return Errno("uname");
                           out.set_hostname(u.nodename);
                           out.set_domainname(u.domainname);
                           return Ok();
                         }),
          "dump uts namespace");
  return out;
}

Result<void> Apply(const img::UtsNs& uts, int uts_ns_fd) {
  TRY_CTX(
      RunHere(uts_ns_fd, CLONE_NEWUTS,
                     [&]() -> Result<void> {
                       if (::sethostname(uts.hostname().data(), uts.hostname().size()) < 0)
                         return Errno("sethostname '%s'", uts.hostname().c_str());
                       if (::setdomainname(uts.domainname().data(), uts.domainname().size()) < 0)
                         return Errno("setdomainname '%s'", uts.domainname().c_str());
                       return Ok();
                     }),
      "restore uts namespace");
  return Ok();
}

Result<void> Dump(int uts_ns_fd, images::Sink& sink) {
  ASSIGN_OR_RETURN(img::UtsNs uts, Collect(uts_ns_fd));
  return images::WriteImage(sink, kImage, uts);
}

Result<void> Restore(const images::ImageSet& images, int uts_ns_fd) {
  img::UtsNs uts;
  TRY(images.ReadOne(kImage, &uts));
  return Apply(uts, uts_ns_fd);
}

}  // namespace godwit::container::uts
