// IPC namespace: SysV shm (contents, owner, mode, same id), semaphores, message queues (types
// and order, read without dequeuing), POSIX message queues and IPC sysctls survive dump ->
// destroy -> restore into a fresh IPC namespace. The dump leaves the source untouched.
#include <fcntl.h>
#include <mqueue.h>
#include <sched.h>
#include <sys/msg.h>
#include <sys/sem.h>
#include <sys/shm.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <vector>

#include "container/ipc.h"
#include "tests/container_test_util.h"

namespace godwit::container {
namespace {

using testing::NsHolder;
using testing::TempDir;

union semun {
  int val;
  struct semid_ds* buf;
  unsigned short* array;
};

constexpr size_t kShmSize = 5 * 4096 + 100;  // not a page multiple; page 2 stays zero

char Pattern(size_t i) { return static_cast<char>((i * 131 + 7) % 251 + 1); }

struct Ids {
  int shm_key = -1, shm_priv = -1, sem = -1, msg = -1;
};

struct Msg {
  long mtype;
  char text[64];
};

// Creates the state inside the current thread's IPC namespace.
Result<Ids> Populate(key_t base) {
  Ids ids;
  // Burn a few ids so that the restored ones are not the first a fresh ns would hand out.
  for (int i = 0; i < 3; i++) {
    int t = ::shmget(IPC_PRIVATE, 4096, 0600);
    if (t < 0 || ::shmctl(t, IPC_RMID, nullptr) < 0) return Errno("burn shm id");
  }
  ids.shm_key = ::shmget(base, kShmSize, 0640 | IPC_CREAT | IPC_EXCL);
  if (ids.shm_key < 0) return Errno("shmget");
  char* p = static_cast<char*>(::shmat(ids.shm_key, nullptr, 0));
  if (p == reinterpret_cast<char*>(-1)) return Errno("shmat");
  for (size_t i = 0; i < kShmSize; i++) p[i] = (i / 4096 == 2) ? 0 : Pattern(i);
  ::shmdt(p);
  ids.shm_priv = ::shmget(IPC_PRIVATE, 8192, 0600);
  if (ids.shm_priv < 0) return Errno("shmget private");
  struct shmid_ds ds = {};
  ds.shm_perm.uid = 1000;
  ds.shm_perm.gid = 1001;
  ds.shm_perm.mode = 0604;
  if (::shmctl(ids.shm_priv, IPC_SET, &ds) < 0) return Errno("shmctl IPC_SET");

  ids.sem = ::semget(base + 1, 3, 0660 | IPC_CREAT | IPC_EXCL);
  if (ids.sem < 0) return Errno("semget");
  unsigned short vals[3] = {1, 5, 32767};
  semun arg;
  arg.array = vals;
  if (::semctl(ids.sem, 0, SETALL, arg) < 0) return Errno("semctl SETALL");

  if (WriteSysctl("kernel/msgmnb", "32768").ok() == false) return Errno("msgmnb");
  ids.msg = ::msgget(base + 2, 0620 | IPC_CREAT | IPC_EXCL);
  if (ids.msg < 0) return Errno("msgget");
  const Msg msgs[] = {{1, "first"}, {7, "second, type 7"}, {1, "third"}};
  for (const Msg& m : msgs) {
    if (::msgsnd(ids.msg, &m, strlen(m.text) + 1, IPC_NOWAIT) < 0) return Errno("msgsnd");
  }

  struct mq_attr attr = {};
  attr.mq_maxmsg = 8;
  attr.mq_msgsize = 128;
  mqd_t q = ::mq_open("/godwit-test", O_CREAT | O_EXCL | O_RDWR, 0640, &attr);
  if (q < 0) return Errno("mq_open");
  const std::pair<const char*, unsigned> mq[] = {{"low-a", 1}, {"high", 9}, {"low-b", 1}};
  for (auto [text, prio] : mq) {
    if (::mq_send(q, text, strlen(text), prio) < 0) return Errno("mq_send");
  }
  ::mq_close(q);
  return ids;
}

// Checks the state inside the current thread's IPC namespace; returns a description of the
// first difference, or "" when everything matches. Leaves the state as it was, except for the
// POSIX queue when drain is set.
std::string Verify(const Ids& ids, key_t base, bool drain) {
  struct shmid_ds ds;
  if (::shmctl(ids.shm_key, IPC_STAT, &ds) < 0)
    return "shm id missing: " + std::to_string(ids.shm_key);
  if (ds.shm_perm.__key != base || ds.shm_segsz != kShmSize || (ds.shm_perm.mode & 0777) != 0640)
    return "shm attributes differ";
  char* p = static_cast<char*>(::shmat(ids.shm_key, nullptr, SHM_RDONLY));
  if (p == reinterpret_cast<char*>(-1)) return "shmat failed";
  for (size_t i = 0; i < kShmSize; i++) {
    char want = (i / 4096 == 2) ? 0 : Pattern(i);
    if (p[i] != want) {
      ::shmdt(p);
      return "shm byte " + std::to_string(i) + " differs";
    }
  }
  ::shmdt(p);
  if (::shmctl(ids.shm_priv, IPC_STAT, &ds) < 0) return "private shm missing";
  if (ds.shm_perm.uid != 1000 || ds.shm_perm.gid != 1001 || (ds.shm_perm.mode & 0777) != 0604 ||
      ds.shm_segsz != 8192 || ds.shm_perm.cuid != 0)
    return "private shm attributes differ";

  unsigned short vals[3] = {};
  semun arg;
  arg.array = vals;
  if (::semctl(ids.sem, 0, GETALL, arg) < 0) return "sem missing";
  if (vals[0] != 1 || vals[1] != 5 || vals[2] != 32767) return "sem values differ";

  struct msqid_ds mds;
  if (::msgctl(ids.msg, IPC_STAT, &mds) < 0) return "msg queue missing";
  if (mds.msg_qnum != 3 || mds.msg_qbytes != 32768 || (mds.msg_perm.mode & 0777) != 0620)
    return "msg queue attributes differ (qnum " + std::to_string(mds.msg_qnum) + ")";
  const Msg want[] = {{1, "first"}, {7, "second, type 7"}, {1, "third"}};
  for (int i = 0; i < 3; i++) {
    Msg m = {};
    ssize_t n = ::msgrcv(ids.msg, &m, sizeof(m.text), i, IPC_NOWAIT | MSG_COPY);
    if (n < 0 || m.mtype != want[i].mtype || strcmp(m.text, want[i].text) != 0)
      return "message " + std::to_string(i) + " differs";
  }

  mqd_t q = ::mq_open("/godwit-test", O_RDWR | O_NONBLOCK);
  if (q < 0) return "mqueue missing";
  struct mq_attr attr;
  ::mq_getattr(q, &attr);
  std::string res;
  if (attr.mq_maxmsg != 8 || attr.mq_msgsize != 128 || attr.mq_curmsgs != 3)
    res = "mqueue attributes differ";
  if (res.empty() && drain) {
    const std::pair<const char*, unsigned> order[] = {{"high", 9}, {"low-a", 1}, {"low-b", 1}};
    for (auto [text, prio] : order) {
      char buf[128];
      unsigned pr;
      ssize_t n = ::mq_receive(q, buf, sizeof(buf), &pr);
      if (n < 0 || std::string(buf, n) != text || pr != prio) {
        res = std::string("mqueue message differs, wanted ") + text;
        break;
      }
    }
  }
  ::mq_close(q);
  return res;
}

TEST(ContainerIpc, RoundTripSameIds) {
  key_t base = 0x60000000 + (getpid() & 0xffff) * 4;
  NsHolder a;
  ASSERT_OK(a.Start(CLONE_NEWIPC));
  auto afd = a.Ns("ipc");
  ASSERT_OK(afd);
  Ids ids;
  ASSERT_OK(RunInNamespace(afd->get(), CLONE_NEWIPC, [&]() -> Result<void> {
    ASSIGN_OR_RETURN(ids, Populate(base));
    return Ok();
  }));

  TempDir dir("ipc");
  auto set = testing::DumpToDir(dir.path(), [&](images::Sink& s) {
    return ipc::Dump(afd->get(), s, images::Compression::kZstd);
  });
  ASSERT_OK(set);

  // The dump read without dequeuing: the source still has everything, in order.
  std::string src;
  ASSERT_OK(RunInNamespace(afd->get(), CLONE_NEWIPC, [&]() -> Result<void> {
    src = Verify(ids, base, true);
    return Ok();
  }));
  EXPECT_EQ(src, "");
  afd->reset();
  a.Stop();

  NsHolder b;
  ASSERT_OK(b.Start(CLONE_NEWIPC));
  auto bfd = b.Ns("ipc");
  ASSERT_OK(bfd);
  ASSERT_OK(ipc::Restore(*set, bfd->get()));
  std::string got;
  std::string msgmnb;
  ASSERT_OK(RunInNamespace(bfd->get(), CLONE_NEWIPC, [&]() -> Result<void> {
    got = Verify(ids, base, true);
    ASSIGN_OR_RETURN(msgmnb, ReadSysctl("kernel/msgmnb"));
    return Ok();
  }));
  EXPECT_EQ(got, "");
  EXPECT_EQ(msgmnb, "32768");

  // A second restore into the same namespace collides on ids and keys: kExists, not a mess.
  auto again = ipc::Restore(*set, bfd->get());
  ASSERT_FALSE(again.ok());
  EXPECT_EQ(again.error().kind(), ErrorKind::kExists) << again.error().to_string();
}

TEST(ContainerIpc, MqNotifyIsRefused) {
  NsHolder a;
  ASSERT_OK(a.Start(CLONE_NEWIPC));
  auto afd = a.Ns("ipc");
  ASSERT_OK(afd);
  mqd_t keep = -1;
  ASSERT_OK(RunInNamespace(afd->get(), CLONE_NEWIPC, [&]() -> Result<void> {
    struct mq_attr attr = {};
    attr.mq_maxmsg = 4;
    attr.mq_msgsize = 16;
    keep = ::mq_open("/godwit-notify", O_CREAT | O_RDWR, 0600, &attr);
    if (keep < 0) return Errno("mq_open");
    struct sigevent sev = {};
    sev.sigev_notify = SIGEV_NONE;
    if (::mq_notify(keep, &sev) < 0) return Errno("mq_notify");
    return Ok();
  }));
  TempDir dir("ipc-notify");
  auto set =
      testing::DumpToDir(dir.path(), [&](images::Sink& s) { return ipc::Dump(afd->get(), s); });
  ::mq_close(keep);
  ASSERT_FALSE(set.ok());
  EXPECT_EQ(set.error().kind(), ErrorKind::kUnsupported) << set.error().to_string();
  EXPECT_NE(set.error().message().find("godwit-notify"), std::string::npos);
}

}  // namespace
}  // namespace godwit::container
