#include "container/ipc.h"

#include <dirent.h>
#include <fcntl.h>
#include <mqueue.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/msg.h>
#include <sys/sem.h>
#include <sys/shm.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstring>
#include <vector>

#include "common/fs.h"
#include "common/log.h"
#include "common/page.h"
#include "common/scope_exit.h"
#include "container/ns.h"

namespace godwit::container::ipc {
namespace {

union semun {
  int val;
  struct semid_ds* buf;
  unsigned short* array;
  struct seminfo* __buf;
};

// Sysctls of the IPC namespace, in the order they are restored (limits before objects).
constexpr const char* kSysctls[] = {
    "kernel/shmmax",
    "kernel/shmall",
    "kernel/shmmni",
    "kernel/shm_rmid_forced",
    "kernel/msgmax",
    "kernel/msgmni",
    "kernel/msgmnb",
    "kernel/sem",
    "fs/mqueue/queues_max",
    "fs/mqueue/msg_max",
    "fs/mqueue/msgsize_max",
    "fs/mqueue/msg_default",
    "fs/mqueue/msgsize_default",
};

void FillPerm(const struct ipc_perm& p, img::IpcPerm* out) {
  out->set_key(p.__key);
  out->set_uid(p.uid);
  out->set_gid(p.gid);
  out->set_cuid(p.cuid);
  out->set_cgid(p.cgid);
  out->set_mode(p.mode);
}

bool AllZero(const char* p, size_t n) {
  static const char zeros[kPage] = {};
  return std::memcmp(p, zeros, n) == 0;
}

Result<void> DumpShm(img::IpcNs& ns, images::BlobWriter& blob) {
  struct shm_info info;
  int max = ::shmctl(0, SHM_INFO, reinterpret_cast<struct shmid_ds*>(&info));
  if (max < 0) return Errno("shmctl(SHM_INFO)");
  for (int idx = 0; idx <= max; idx++) {
    struct shmid_ds ds;
    int id = ::shmctl(idx, SHM_STAT, &ds);
    if (id < 0) {
      if (errno == EINVAL || errno == EIDRM) continue;  // unused slot
      return Errno("shmctl(%d, SHM_STAT)", idx);
    }
    img::ShmSegment* seg = ns.add_shm();
    seg->set_id(id);
    FillPerm(ds.shm_perm, seg->mutable_perm());
    seg->mutable_perm()->set_mode(ds.shm_perm.mode & 07777);
    seg->set_size(ds.shm_segsz);
    seg->set_locked(ds.shm_perm.mode & SHM_LOCKED);
    seg->set_destroyed(ds.shm_perm.mode & SHM_DEST);
    if (ds.shm_segsz == 0) continue;
    void* addr = ::shmat(id, nullptr, SHM_RDONLY);
    if (addr == reinterpret_cast<void*>(-1)) return Errno("shmat shm id %d", id);
    ScopeExit detach([addr] { ::shmdt(addr); });
    const char* p = static_cast<const char*>(addr);
    // Runs of non-zero pages go to the blob; zero pages are not stored.
    uint64_t run_start = 0, run_len = 0;
    auto flush = [&]() -> Result<void> {
      if (run_len == 0) return Ok();
      ASSIGN_OR_RETURN(uint64_t off, blob.Append(p + run_start, run_len));
      img::IpcDataRange* r = seg->add_data();
      r->set_offset(run_start);
      r->set_length(run_len);
      r->set_blob_offset(off);
      run_len = 0;
      return Ok();
    };
    for (uint64_t off = 0; off < ds.shm_segsz; off += kPage) {
      size_t n = std::min<uint64_t>(kPage, ds.shm_segsz - off);
      if (AllZero(p + off, n)) {
        TRY(flush());
        continue;
      }
      if (run_len == 0) run_start = off;
      run_len += n;
    }
    TRY_CTX(flush(), "shm id %d contents", id);
  }
  return Ok();
}

Result<void> DumpSem(img::IpcNs& ns) {
  struct seminfo info;
  semun arg;
  arg.__buf = &info;
  int max = ::semctl(0, 0, SEM_INFO, arg);
  if (max < 0) return Errno("semctl(SEM_INFO)");
  for (int idx = 0; idx <= max; idx++) {
    struct semid_ds ds;
    arg.buf = &ds;
    int id = ::semctl(idx, 0, SEM_STAT, arg);
    if (id < 0) {
      if (errno == EINVAL || errno == EIDRM) continue;
      return Errno("semctl(%d, SEM_STAT)", idx);
    }
    img::SemSet* set = ns.add_sem();
    set->set_id(id);
    FillPerm(ds.sem_perm, set->mutable_perm());
    set->mutable_perm()->set_mode(ds.sem_perm.mode & 0777);
    std::vector<unsigned short> vals(ds.sem_nsems);
    arg.array = vals.data();
    if (::semctl(id, 0, GETALL, arg) < 0) return Errno("semctl(%d, GETALL)", id);
    for (unsigned short v : vals) set->add_values(v);
  }
  return Ok();
}

Result<void> DumpMsg(img::IpcNs& ns, images::BlobWriter& blob) {
  struct msginfo info;
  int max = ::msgctl(0, MSG_INFO, reinterpret_cast<struct msqid_ds*>(&info));
  if (max < 0) return Errno("msgctl(MSG_INFO)");
  ASSIGN_OR_RETURN(std::string msgmax_s, ReadSysctl("kernel/msgmax"));
  size_t msgmax = std::stoul(msgmax_s);
  std::vector<char> buf(sizeof(long) + msgmax);
  for (int idx = 0; idx <= max; idx++) {
    struct msqid_ds ds;
    int id = ::msgctl(idx, MSG_STAT, &ds);
    if (id < 0) {
      if (errno == EINVAL || errno == EIDRM) continue;
      return Errno("msgctl(%d, MSG_STAT)", idx);
    }
    img::MsgQueue* q = ns.add_msg();
    q->set_id(id);
    FillPerm(ds.msg_perm, q->mutable_perm());
    q->mutable_perm()->set_mode(ds.msg_perm.mode & 0777);
    q->set_qbytes(ds.msg_qbytes);
    for (msgqnum_t n = 0; n < ds.msg_qnum; n++) {
      // MSG_COPY: the n-th message, left in the queue.
      ssize_t len = ::msgrcv(id, buf.data(), msgmax, n, IPC_NOWAIT | MSG_COPY);
      if (len < 0) return Errno("msgrcv(%d, MSG_COPY #%lu)", id, static_cast<unsigned long>(n));
      long mtype;
      std::memcpy(&mtype, buf.data(), sizeof(long));
      img::SysvMessage* m = q->add_messages();
      m->set_mtype(mtype);
      m->set_length(len);
      ASSIGN_OR_RETURN(uint64_t off, blob.Append(buf.data() + sizeof(long), len));
      m->set_blob_offset(off);
    }
  }
  return Ok();
}

// Parses NOTIFY_PID from a mqueue file ("QSIZE:0 NOTIFY:0 SIGNO:0 NOTIFY_PID:0").
int NotifyPid(const std::string& text) {
  auto pos = text.find("NOTIFY_PID:");
  if (pos == std::string::npos) return 0;
  return std::atoi(text.c_str() + pos + 11);
}

Result<void> DumpMqueues(img::IpcNs& ns, images::BlobWriter& blob, const std::string& given) {
  char tmp[] = "/tmp/godwit-mq-XXXXXX";
  std::string dir = given;
  bool mounted = false;
  ScopeExit cleanup([&] {
    if (mounted) ::umount2(tmp, MNT_DETACH);
    if (given.empty()) ::rmdir(tmp);
  });
  if (dir.empty()) {
    if (::mkdtemp(tmp) == nullptr) return Errno("mkdtemp %s", tmp);
    // The mqueue fs of the thread's IPC namespace, mounted in the thread's private mount ns.
    if (::mount("mqueue", tmp, "mqueue", 0, nullptr) < 0) return Errno("mount mqueue on %s", tmp);
    mounted = true;
    dir = tmp;
  }
  ASSIGN_OR_RETURN(std::vector<std::string> names, fs::ListDir(dir));
  for (const std::string& name : names) {
    std::string path = std::string(dir) + "/" + name;
    struct stat st;
    if (::stat(path.c_str(), &st) < 0) return Errno("stat %s", path.c_str());
    ASSIGN_OR_RETURN(std::string info, fs::ReadFile(path));
    if (int np = NotifyPid(info); np != 0) {
      return MakeError(ErrorKind::kUnsupported, 0,
                       "POSIX mqueue /%s has an mq_notify registration (pid %d)", name.c_str(), np);
    }
    std::string qname = "/" + name;
    mqd_t q = ::mq_open(qname.c_str(), O_RDWR | O_NONBLOCK | O_CLOEXEC);
    if (q < 0) return Errno("mq_open %s", qname.c_str());
    ScopeExit closeq([q] { ::mq_close(q); });
    struct mq_attr attr;
    if (::mq_getattr(q, &attr) < 0) return Errno("mq_getattr %s", qname.c_str());
    img::PosixMqueue* pq = ns.add_mqueues();
    pq->set_name(name);
    pq->set_mode(st.st_mode & 0777);
    pq->set_uid(st.st_uid);
    pq->set_gid(st.st_gid);
    pq->set_maxmsg(attr.mq_maxmsg);
    pq->set_msgsize(attr.mq_msgsize);
    // No peek: drain in receive order, then put every message back in the same order.
    std::vector<std::pair<unsigned, std::string>> msgs;
    std::vector<char> buf(attr.mq_msgsize);
    for (;;) {
      unsigned prio = 0;
      ssize_t n = ::mq_receive(q, buf.data(), buf.size(), &prio);
      if (n < 0) {
        if (errno == EAGAIN) break;
        return Errno("mq_receive %s", qname.c_str());
      }
      msgs.emplace_back(prio, std::string(buf.data(), n));
    }
    Result<void> refill = Ok();
    for (const auto& [prio, data] : msgs) {
      if (::mq_send(q, data.data(), data.size(), prio) < 0 && refill.ok()) {
        refill = Errno("mq_send %s while putting back %zu messages", qname.c_str(), msgs.size());
        LOG_ERROR("POSIX mqueue %s lost messages: %s", qname.c_str(),
                  refill.error().to_string().c_str());
      }
    }
    TRY(refill);
    for (const auto& [prio, data] : msgs) {
      img::PosixMessage* m = pq->add_messages();
      m->set_priority(prio);
      m->set_length(data.size());
      ASSIGN_OR_RETURN(uint64_t off, blob.Append(data.data(), data.size()));
      m->set_blob_offset(off);
    }
  }
  return Ok();
}

// Runs fn with the calling thread's effective ids set to uid/gid (raw syscalls: glibc's
// setresuid would switch every thread of the process).
Result<void> AsCreator(uint32_t uid, uint32_t gid, const std::function<Result<void>()>& fn) {
  if (uid == 0 && gid == 0) return fn();
  if (::syscall(SYS_setresgid, -1, gid, -1) < 0) return Errno("setresgid(-1, %u, -1)", gid);
  if (::syscall(SYS_setresuid, -1, uid, -1) < 0) {
    int e = errno;
    ::syscall(SYS_setresgid, -1, 0, -1);
    errno = e;
    return Errno("setresuid(-1, %u, -1)", uid);
  }
  Result<void> r = fn();
  // Back to euid 0: the effective capabilities return from the permitted set.
  if (::syscall(SYS_setresuid, -1, 0, -1) < 0 || ::syscall(SYS_setresgid, -1, 0, -1) < 0) {
    return Errno("restore euid/egid 0");
  }
  return r;
}

Result<void> SetNextId(const char* kind, int id) {
  return WriteSysctl(StrFormat("kernel/%s_next_id", kind), std::to_string(id));
}

Result<void> CheckId(const char* kind, int want, int got) {
  if (got == want) return Ok();
  return MakeError(ErrorKind::kExists, 0, "%s id %d was restored as %d", kind, want, got);
}

Result<int> Create(const char* kind, const img::IpcPerm& perm, int id,
                   const std::function<int()>& get) {
  int got = -1;
  TRY(SetNextId(kind, id));
  TRY(AsCreator(perm.cuid(), perm.cgid(), [&]() -> Result<void> {
    got = get();
    if (got < 0) {
      return MakeError(errno == EEXIST ? ErrorKind::kExists : ErrorKind::kGeneric, errno,
                       "create %s id %d (key 0x%x)", kind, id, perm.key());
    }
    return Ok();
  }));
  TRY(CheckId(kind, id, got));
  return got;
}

template <typename Ds>
void SetPerm(Ds& ds, const img::IpcPerm& perm, struct ipc_perm Ds::*field) {
  (ds.*field).uid = perm.uid();
  (ds.*field).gid = perm.gid();
  (ds.*field).mode = perm.mode() & 0777;
}

Result<void> RestoreShm(const img::ShmSegment& seg, images::BlobReader* blob) {
  const img::IpcPerm& perm = seg.perm();
  ASSIGN_OR_RETURN(int id, Create("shm", perm, seg.id(), [&] {
                     return ::shmget(perm.key(), seg.size(),
                                     (perm.mode() & 0777) | IPC_CREAT | IPC_EXCL);
                   }));
  if (seg.data_size() > 0) {
    void* addr = ::shmat(id, nullptr, 0);
    if (addr == reinterpret_cast<void*>(-1)) return Errno("shmat shm id %d", id);
    ScopeExit detach([addr] { ::shmdt(addr); });
    char* p = static_cast<char*>(addr);
    for (const img::IpcDataRange& r : seg.data()) {
      if (r.offset() > seg.size() || r.length() > seg.size() - r.offset()) {
        return MakeError(ErrorKind::kBadImage, 0, "%s: shm id %d range %lu+%lu past size %lu",
                         kImage, seg.id(), static_cast<unsigned long>(r.offset()),
                         static_cast<unsigned long>(r.length()),
                         static_cast<unsigned long>(seg.size()));
      }
      TRY_CTX(blob->Read(r.blob_offset(), p + r.offset(), r.length()), "shm id %d contents",
              seg.id());
    }
  }
  struct shmid_ds ds = {};
  SetPerm(ds, perm, &shmid_ds::shm_perm);
  if (::shmctl(id, IPC_SET, &ds) < 0) return Errno("shmctl(%d, IPC_SET)", id);
  if (seg.locked() && ::shmctl(id, SHM_LOCK, nullptr) < 0) return Errno("shmctl(%d, SHM_LOCK)", id);
  return Ok();
}

Result<void> RestoreSem(const img::SemSet& set) {
  const img::IpcPerm& perm = set.perm();
  int nsems = set.values_size();
  ASSIGN_OR_RETURN(int id, Create("sem", perm, set.id(), [&] {
                     return ::semget(perm.key(), nsems,
                                     (perm.mode() & 0777) | IPC_CREAT | IPC_EXCL);
                   }));
  std::vector<unsigned short> vals(set.values().begin(), set.values().end());
  semun arg;
  arg.array = vals.data();
  if (nsems > 0 && ::semctl(id, 0, SETALL, arg) < 0) return Errno("semctl(%d, SETALL)", id);
  struct semid_ds ds = {};
  SetPerm(ds, perm, &semid_ds::sem_perm);
  arg.buf = &ds;
  if (::semctl(id, 0, IPC_SET, arg) < 0) return Errno("semctl(%d, IPC_SET)", id);
  return Ok();
}

Result<void> RestoreMsg(const img::MsgQueue& q, images::BlobReader* blob) {
  const img::IpcPerm& perm = q.perm();
  ASSIGN_OR_RETURN(int id, Create("msg", perm, q.id(), [&] {
                     return ::msgget(perm.key(), (perm.mode() & 0777) | IPC_CREAT | IPC_EXCL);
                   }));
  // The queue size first, so that every message fits as before.
  struct msqid_ds ds = {};
  SetPerm(ds, perm, &msqid_ds::msg_perm);
  ds.msg_qbytes = q.qbytes();
  if (::msgctl(id, IPC_SET, &ds) < 0) {
    return Errno("msgctl(%d, IPC_SET qbytes %lu) (above kernel/msgmnb needs CAP_SYS_RESOURCE)", id,
                 static_cast<unsigned long>(q.qbytes()));
  }
  std::vector<char> buf;
  for (const img::SysvMessage& m : q.messages()) {
    if (m.length() > q.qbytes()) {
      return MakeError(ErrorKind::kBadImage, 0, "%s: msg id %d message of %lu bytes > qbytes",
                       kImage, q.id(), static_cast<unsigned long>(m.length()));
    }
    buf.resize(sizeof(long) + m.length());
    long mtype = m.mtype();
    std::memcpy(buf.data(), &mtype, sizeof(long));
    TRY_CTX(blob->Read(m.blob_offset(), buf.data() + sizeof(long), m.length()), "msg id %d message",
            q.id());
    if (::msgsnd(id, buf.data(), m.length(), IPC_NOWAIT) < 0)
      return Errno("msgsnd(%d, type %ld, %lu bytes)", id, mtype,
                   static_cast<unsigned long>(m.length()));
  }
  return Ok();
}

Result<void> RestoreMqueue(const img::PosixMqueue& pq, images::BlobReader* blob) {
  if (pq.name().empty() || pq.name().find('/') != std::string::npos)
    return MakeError(ErrorKind::kBadImage, 0, "%s: bad mqueue name '%s'", kImage,
                     pq.name().c_str());
  std::string qname = "/" + pq.name();
  struct mq_attr attr = {};
  attr.mq_maxmsg = pq.maxmsg();
  attr.mq_msgsize = pq.msgsize();
  mqd_t q = ::mq_open(qname.c_str(), O_RDWR | O_NONBLOCK | O_CREAT | O_EXCL | O_CLOEXEC,
                      pq.mode() & 0777, &attr);
  if (q < 0) {
    return MakeError(errno == EEXIST ? ErrorKind::kExists : ErrorKind::kGeneric, errno,
                     "mq_open %s (maxmsg %ld, msgsize %ld)", qname.c_str(),
                     static_cast<long>(pq.maxmsg()), static_cast<long>(pq.msgsize()));
  }
  ScopeExit closeq([q] { ::mq_close(q); });
  // An mqd_t is an fd on the mqueue fs: the umask-free mode and the owner go through it.
  if (::fchmod(q, pq.mode() & 0777) < 0) return Errno("fchmod %s", qname.c_str());
  if (::fchown(q, pq.uid(), pq.gid()) < 0) return Errno("fchown %s", qname.c_str());
  std::vector<char> buf;
  for (const img::PosixMessage& m : pq.messages()) {
    if (m.length() > static_cast<uint64_t>(pq.msgsize()))
      return MakeError(ErrorKind::kBadImage, 0, "%s: mqueue %s message larger than msgsize", kImage,
                       qname.c_str());
    buf.resize(m.length());
    TRY_CTX(blob->Read(m.blob_offset(), buf.data(), m.length()), "mqueue %s", qname.c_str());
    if (::mq_send(q, buf.data(), buf.size(), m.priority()) < 0)
      return Errno("mq_send %s", qname.c_str());
  }
  return Ok();
}

}  // namespace

Result<void> Dump(int ipc_ns_fd, images::Sink& sink, images::Compression compression,
                  const std::string& mqueue_dir) {
  img::IpcNs ns;
  ASSIGN_OR_RETURN(images::BlobWriter blob,
                   images::BlobWriter::Create(sink, kDataBlob, compression));
  auto collect = [&]() -> Result<void> {
    for (const char* name : kSysctls) {
      auto v = ReadSysctl(name);
      if (!v.ok()) {
        LOG_DEBUG("ipc sysctl %s: %s", name, v.error().to_string().c_str());
        continue;
      }
      img::IpcSysctl* s = ns.add_sysctls();
      s->set_name(name);
      s->set_value(*v);
    }
    TRY_CTX(DumpShm(ns, blob), "SysV shm");
    TRY_CTX(DumpSem(ns), "SysV semaphores");
    TRY_CTX(DumpMsg(ns, blob), "SysV message queues");
    TRY_CTX(DumpMqueues(ns, blob, mqueue_dir), "POSIX message queues");
    return Ok();
  };
  // Listing the POSIX queues needs a mount of the namespace's mqueue fs: the container's own,
  // or one mounted in a thread's private mount namespace (which needs that thread).
  Result<void> r = mqueue_dir.empty() ? RunInNamespace(ipc_ns_fd, CLONE_NEWIPC, collect,
                                                       NsThreadOptions{.private_mounts = true})
                                      : RunHere(ipc_ns_fd, CLONE_NEWIPC, collect);
  TRY_CTX(std::move(r), "dump ipc namespace");
  TRY(blob.Close());
  TRY(images::WriteImage(sink, kImage, ns));
  LOG_DEBUG("ipc: %d shm, %d sem, %d msg, %d mqueues, %lu data bytes", ns.shm_size(), ns.sem_size(),
            ns.msg_size(), ns.mqueues_size(), static_cast<unsigned long>(blob.logical_size()));
  return Ok();
}

Result<void> Restore(const images::ImageSet& images, int ipc_ns_fd) {
  img::IpcNs ns;
  TRY(images.ReadOne(kImage, &ns));
  std::unique_ptr<images::BlobReader> blob;
  if (images.Has(kDataBlob)) {
    ASSIGN_OR_RETURN(blob, images.OpenBlob(kDataBlob));
  }
  bool needs_blob = false;
  for (const auto& s : ns.shm()) needs_blob |= s.data_size() > 0;
  for (const auto& q : ns.msg()) needs_blob |= q.messages_size() > 0;
  for (const auto& q : ns.mqueues()) needs_blob |= q.messages_size() > 0;
  if (needs_blob && !blob)
    return MakeError(ErrorKind::kBadImage, 0, "%s missing from %s", kDataBlob,
                     images.dir().c_str());
  return RunHere(ipc_ns_fd, CLONE_NEWIPC, [&]() -> Result<void> {
    for (const img::IpcSysctl& s : ns.sysctls()) {
      bool known = false;
      for (const char* k : kSysctls) known |= s.name() == k;
      if (!known)
        return MakeError(ErrorKind::kBadImage, 0, "%s: unknown sysctl '%s'", kImage,
                         s.name().c_str());
      auto cur = ReadSysctl(s.name());
      if (cur.ok() && *cur == s.value()) continue;
      TRY_CTX(WriteSysctl(s.name(), s.value()), "restore ipc sysctl");
    }
    for (const auto& seg : ns.shm())
      TRY_CTX(RestoreShm(seg, blob.get()), "restore shm id %d", seg.id());
    for (const auto& set : ns.sem()) TRY_CTX(RestoreSem(set), "restore sem id %d", set.id());
    for (const auto& q : ns.msg()) TRY_CTX(RestoreMsg(q, blob.get()), "restore msg id %d", q.id());
    for (const auto& q : ns.mqueues())
      TRY_CTX(RestoreMqueue(q, blob.get()), "restore mqueue /%s", q.name().c_str());
    return Ok();
  });
}

Result<void> RemoveDestroyed(const images::ImageSet& images, int ipc_ns_fd) {
  img::IpcNs ns;
  TRY(images.ReadOne(kImage, &ns));
  return RunHere(ipc_ns_fd, CLONE_NEWIPC, [&]() -> Result<void> {
    for (const auto& seg : ns.shm()) {
      if (seg.destroyed() && ::shmctl(seg.id(), IPC_RMID, nullptr) < 0)
        return Errno("shmctl(%d, IPC_RMID)", seg.id());
    }
    return Ok();
  });
}

}  // namespace godwit::container::ipc
