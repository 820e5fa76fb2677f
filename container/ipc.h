// IPC namespace: SysV shared memory (with contents), semaphores (values), message queues
// (messages with types, in order), POSIX message queues (attributes and messages) and the
// namespace's IPC sysctls. Image: "ipc.img" (img::IpcNs) + blob "ipc-data.img".
//
// Dump runs on a thread inside the target IPC namespace. SysV messages are read without
// dequeuing (msgrcv MSG_COPY). POSIX queues have no peek: each queue is drained and refilled in
// receive order (priority order, FIFO within a priority), which leaves it as it was; a queue
// with an mq_notify registration is refused (the refill would fire it). The tree must be frozen
// while it runs: a task blocked in mq_receive would take a refilled message.
//
// Restore creates every object with its old id by writing kernel/{shm,sem,msg}_next_id, and
// under its creator's euid/egid (per-thread raw setresuid) so cuid/cgid match. A shm segment
// that was IPC_RMID'ed while attached is recreated alive; the caller removes it (RemoveDestroyed)
// once the restored processes have attached it.
#pragma once

#include "common/result.h"
#include "images/image.h"
#include "proto/ipc.pb.h"

namespace godwit::container::ipc {

inline constexpr char kImage[] = "ipc.img";
inline constexpr char kDataBlob[] = "ipc-data.img";

// mqueue_dir: a mount of this namespace's mqueue fs (e.g. /proc/PID/root/dev/mqueue) to list
// POSIX queues from; empty: mount one in a private mount namespace of the dumping thread
// (costs a copy of the caller's mount tree).
Result<void> Dump(int ipc_ns_fd, images::Sink& sink,
                  images::Compression compression = images::Compression::kNone,
                  const std::string& mqueue_dir = "");
Result<void> Restore(const images::ImageSet& images, int ipc_ns_fd);
// IPC_RMID of the shm segments the image marks destroyed.
Result<void> RemoveDestroyed(const images::ImageSet& images, int ipc_ns_fd);

}  // namespace godwit::container::ipc
