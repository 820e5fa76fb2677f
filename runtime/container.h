// The container state record: everything a later `godwit` invocation (or the checkpoint code)
// needs to find, inspect, signal, freeze, rebuild or delete a container. It lives in
// <root>/<id>/state.json next to config.json (the bundle's config as created) and, while the
// container is "created", exec.fifo.
#pragma once

#include <sys/types.h>

#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/result.h"
#include "runtime/spec.h"

namespace godwit::runtime {

// kPaused: running but frozen by its cgroup (runc's "paused", beyond the OCI four).
enum class Status { kCreating, kCreated, kRunning, kPaused, kStopped };
const char* StatusName(Status s);

struct Container {
  std::string root;  // the state root (--root)
  std::string id;
  std::string bundle;           // absolute bundle dir (holds config.json)
  std::string rootfs;           // absolute root.path
  pid_t pid = 0;                // host pid of the container's init (pid 1 inside)
  uint64_t pid_start_time = 0;  // /proc/<pid>/stat field 22: tells a reused pid apart
  // The lazy pager a restore left filling its memory (restore --lazy --detach), if any: it
  // ends by itself once the tree is gone, and delete waits for it.
  pid_t pager_pid = 0;
  uint64_t pager_start_time = 0;
  std::string created;          // RFC 3339, UTC
  // cgroups: layout ("v1", "v2", "hybrid"), the parent its cgroup is under ("godwit", or the
  // --cgroup-parent it was created or restored with) and the directory per controller.
  std::string cgroup_layout;
  std::string cgroup_parent = "godwit";
  // The cgroup's own name under the parent: the id, unless linux.cgroupsPath named another
  // ("libpod-<id>", "libpod-<id>.scope"); then cgroup_parent is that path's parent ("/" for the
  // hierarchy's root).
  std::string cgroup_leaf;
  std::map<std::string, std::string> cgroup_paths;
  Resources resources;
  // network: empty host_veth = no veth (only loopback in its own netns, or the host's netns).
  std::string host_veth;
  NetworkSpec net;
  // writable storage: with a quota, a tmpfs of that size (in the container's mount namespace,
  // mounted on storage_dir) holds the overlay upper/work dirs over the read-only rootfs.
  int64_t disk_quota = 0;
  std::string storage_dir;
  std::string hostname;
  Namespaces ns;
  std::map<std::string, std::string> annotations;

  std::string dir() const { return root + "/" + id; }
  std::string state_path() const { return dir() + "/state.json"; }
  std::string fifo_path() const { return dir() + "/exec.fifo"; }
  std::string config_path() const { return dir() + "/config.json"; }

  // Live status: stopped if the init is gone, a zombie or a different process with its pid;
  // created while exec.fifo exists; paused while its cgroup is frozen; running otherwise.
  Status CurrentStatus() const;
  // The OCI state document (ociVersion, id, status, pid, bundle, rootfs, created, annotations).
  nlohmann::json OciState() const;

  nlohmann::json ToJson() const;
  static Result<Container> FromJson(const nlohmann::json& j);
  // state.json, written through a temp file + rename (readers never see half a record).
  Result<void> Save() const;
  static Result<Container> Load(const std::string& root, const std::string& id);
  // The spec the container was created from (<dir>/config.json).
  Result<Spec> LoadSpec() const;
};

// Every container under root, sorted by id. Directories without a readable state.json show up
// with status kCreating and pid 0.
struct ListEntry {
  std::string id;
  Status status = Status::kCreating;
  Container container;  // valid when status != kCreating
};
Result<std::vector<ListEntry>> ListContainers(const std::string& root);

// Container ids: 1-64 chars of [A-Za-z0-9_.-], not starting with '.' or '-'.
Result<void> ValidateId(const std::string& id);

// A detached container's stdout and stderr (`run --detach`, a container `restore --detach`):
// <root>/.logs/<id>.log, read by `godwit logs`. Outside the state dir: a checkpoint deletes the
// container but its images name the log (a host file the restore opens again); `godwit delete`
// removes it (cli/detached_output.h). Ids never start with '.', so no id collides with it.
inline constexpr const char* kLogDir = ".logs";
inline std::string LogPath(const std::string& root, const std::string& id) {
  return root + "/" + kLogDir + "/" + id + ".log";
}

// Field 22 (starttime, clock ticks since boot) of /proc/<pid>/stat; 0 if the pid is gone.
uint64_t ProcessStartTime(pid_t pid);
// The state letter of /proc/<pid>/stat ('R', 'S', 'Z', ...); 0 if gone.
char ProcessState(pid_t pid);

}  // namespace godwit::runtime
