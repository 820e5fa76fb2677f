// The runtime's public API: the OCI lifecycle on a state root. The CLI verbs (cli/cmd_runtime.cc)
// are thin wrappers over these; the checkpoint/restore code reuses Container (container.h), the
// cgroup interface (cgroup.h) and the network setup (network.h) directly.
//
// Lifecycle: Create() clones the container's init into new namespaces, joins its cgroups, sets up
// its network, builds its root (mounts, /dev, pivot_root) and leaves it blocked on exec.fifo
// before execve; Start() releases it. Delete() removes cgroups, the veth and the state dir; the
// container's mounts live only in its own mount namespace, so they vanish with it.
#pragma once

#include <signal.h>
#include <sys/types.h>

#include <optional>
#include <string>
#include <vector>

#include "common/result.h"
#include "runtime/container.h"
#include "runtime/spec.h"

namespace godwit::runtime {

inline constexpr const char* kDefaultRoot = "/run/godwit";

struct CreateOptions {
  std::string root = kDefaultRoot;
  std::string id;
  std::string bundle;    // holds config.json
  std::string pid_file;  // optional: written with the init's host pid
  // Create and start in one step (`run`): the init execs as soon as it is set up, without
  // stopping on exec.fifo; the container is "running" when Create returns.
  bool start = false;
  // The cgroup parent (cgroup.h); recorded in the state, so later verbs need not repeat it.
  std::string cgroup_parent = "godwit";
  // Attach the veth's host end to this bridge (NetworkSpec::bridge), whatever the bundle says;
  // the bundle must give the container an address. Without a gateway annotation, no default
  // route.
  std::string bridge;
  // process.terminal: the unix socket that receives the pty master (console.h). Required then.
  std::string console_socket;
  // --systemd-cgroup: linux.cgroupsPath is in systemd's slice:prefix:name form. godwit never
  // asks systemd: the path is mapped onto cgroupfs (ParseCgroupsPath).
  bool systemd_cgroup = false;
};

// Creates the container (status "created"). Errors: kUsage (bad id), kNotFound (bundle or rootfs
// missing), kBadConfig (config.json malformed/unsupported, or a limit the kernel refused),
// kExists (id, veth or address taken). On error nothing is left behind.
Result<Container> Create(const CreateOptions& opts);

// Writes a generated config.json (MakeConfig) into <root>/<id>/ and creates from there: the
// convenience `godwit run --rootfs DIR`. The bundle is the state dir itself.
Result<Container> CreateFromRunOptions(const std::string& root, const std::string& id,
                                       const RunOptions& run, const std::string& pid_file = "",
                                       bool start = false);
// Same with every create option (root, id, pid_file, start, cgroup_parent; bundle is ignored).
Result<Container> CreateFromRunOptions(const CreateOptions& opts, const RunOptions& run);

// Releases a created container's init into execve. kNotFound / kGeneric if not "created".
Result<void> Start(const std::string& root, const std::string& id);

// Waits for the init of a container this process created (it must be our child, or we must be
// its subreaper). Returns the exit code (128+signal if killed). Signals SIGINT/SIGTERM/SIGHUP
// sent to us meanwhile are forwarded when forward_signals is set; block them (BlockForwarded)
// before Create so that none arriving in between is lost or kills us.
Result<int> Wait(const Container& c, bool forward_signals);
void BlockForwardedSignals();

// Freezes every process of a running container through its cgroup (status "paused"), and back.
Result<void> Pause(const std::string& root, const std::string& id);
Result<void> Resume(const std::string& root, const std::string& id);

// Sends sig to the init, or with all=true to every process in its cgroup.
Result<void> Kill(const std::string& root, const std::string& id, int sig, bool all);

// Removes a stopped (or created) container; a running or paused one without force is
// kUnsupported (exit 6). force: kills a created/running one first (SIGKILL to the whole
// cgroup, frozen meanwhile so nothing forks past it). The cgroup is found through the state
// record; cgroup_parent only serves a half-created container that has none (--force).
// What a checkpoint's delete leaves to others rather than wait for (Deferral). veth: the veth
// goes with the container's network namespace, which the kernel tears down asynchronously
// (network.h: 1-30 ms); otherwise Delete waits for that (500 ms at most, then deletes it); a
// create or restore of the id that still finds it waits for it then, bounded the same way.
// state_dir: removing the state dir frees its blocks, which on a file system mounted with
// discard and without a journal (this VM's /run and /tmp) is a synchronous discard per block,
// 3-4 ms each; deferred, it is renamed to <root>/.<id>.removed (no id starts with '.': list
// skips it) for the next create or restore of the id to remove, alongside its own work
// (RemoveDeferred); `delete -f ID` removes it too.
struct Deferral {
  bool veth = false;
  bool state_dir = false;
};
Result<void> Delete(const std::string& root, const std::string& id, bool force,
                    const std::string& cgroup_parent = "godwit", Deferral deferred = {});

// Removes the state dir a deferred Delete of the id left (nothing if there is none).
Result<void> RemoveDeferred(const std::string& root, const std::string& id);

struct ExecOptions {
  std::vector<std::string> args;
  std::vector<std::string> env;  // added to the container's process env
  std::string cwd;               // default: the container's process.cwd
  // The whole process (`exec --process F.json`): replaces the container's process.* (args, env,
  // cwd, user, capabilities, rlimits, terminal); args/env/cwd above still apply on top.
  std::optional<Process> process;
  std::optional<uint32_t> uid, gid;  // --user UID[:GID]
  bool tty = false;                  // process.terminal (needs console_socket)
  std::string console_socket;
  std::string pid_file;  // written with the process's host pid once it has exec'd
  // Return once the process has exec'd (its exit is then its new parent's business: the
  // nearest subreaper, e.g. conmon); the result is its host pid instead of an exit code.
  bool detach = false;
};
// Runs a process in all the container's namespaces and cgroups, under the container's seccomp
// filter; waits and returns its exit code (128+signal if killed), or with detach its pid.
Result<int> Exec(const std::string& root, const std::string& id, const ExecOptions& opts);

// `update`: writes new limits into the container's cgroups and records them in its state.
// Fields not given are left as they are.
Result<void> Update(const std::string& root, const std::string& id, const Resources& res);

// Host pids of every process in the container's cgroup.
Result<std::vector<pid_t>> Ps(const std::string& root, const std::string& id);

// Registers a container whose processes, cgroups, network and storage someone else built (the
// restore of a checkpoint): makes <c.root>/<c.id>/ (kExists if the id is taken), writes
// config_json as its config.json and c as state.json (pid_start_time read now when 0). From then
// on state/exec/ps/kill/delete/checkpoint work on it like on a created one. The building blocks
// for the rest: OpenCgroup()->Create/Apply/AddProcess (cgroup.h), SetupNetwork/ApplyFirewall
// (network.h), MountStorage (storage.h), HostVethName.
Result<Container> Register(Container c, const std::string& config_json);

// Parses "KILL", "SIGKILL", "9" -> 9; "0" -> 0 (a liveness check, as kill(2)).
Result<int> ParseSignal(const std::string& s);

// Builds a busybox root filesystem in dir (bin/busybox copied from /bin/busybox, applet
// symlinks, /etc/passwd, group, hosts, and empty mount points). Idempotent.
Result<void> MakeBusyboxRootfs(const std::string& dir, const std::string& busybox = "/bin/busybox");

}  // namespace godwit::runtime
