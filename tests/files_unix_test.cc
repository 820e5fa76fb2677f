// Unix sockets round trip through FdDumper/FdRestorer: pairs, listeners, pending connections,
// queues with message boundaries, shutdown, outside peers, addresses taken at restore.
#include <sys/socket.h>
#include <sys/un.h>

#include "tests/files_harness_test.h"

namespace godwit::files::testing {
namespace {

socklen_t Addr(const std::string& name, struct sockaddr_un* sa) {
  memset(sa, 0, sizeof(*sa));
  sa->sun_family = AF_UNIX;
  memcpy(sa->sun_path, name.data(), name.size());
  return offsetof(struct sockaddr_un, sun_path) + name.size();
}

class FilesUnix : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = TempDir("unix"); }
  void TearDown() override { (void)fs::RemoveAll(dir_); }
  std::string dir_;
};

TEST_F(FilesUnix, StreamPairQueuesBothWaysAndShutdown) {
  std::string res = RoundTrip(
      [] {
        int sv[2];
        socketpair(AF_UNIX, SOCK_STREAM, 0, sv);
        dup2(sv[0], 10);
        dup2(sv[1], 11);
        close(sv[0]);
        close(sv[1]);
        write(10, "to-eleven", 9);
        write(11, "to-ten", 6);
        shutdown(11, SHUT_WR);
        return 0;
      },
      []() -> std::string {
        CHECK_OR(ReadN(11, 9) == "to-eleven", "queue of 11");
        CHECK_OR(ReadN(10, 6) == "to-ten", "queue of 10");
        char c;
        CHECK_OR(read(10, &c, 1) == 0, "no EOF after peer's shutdown");
        CHECK_OR(write(10, "more", 4) == 4 && ReadN(11, 4) == "more", "10 -> 11 broken");
        return "";
      });
  EXPECT_EQ(res, "");
}

TEST_F(FilesUnix, DgramAndSeqpacketKeepBoundaries) {
  std::string res = RoundTrip(
      [] {
        int sv[2];
        socketpair(AF_UNIX, SOCK_DGRAM, 0, sv);
        dup2(sv[0], 10);
        dup2(sv[1], 11);
        send(11, "a", 1, 0);
        send(11, "bb", 2, 0);
        send(11, "ccc", 3, 0);
        socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sv);
        dup2(sv[0], 12);
        dup2(sv[1], 13);
        send(13, "one", 3, 0);
        send(13, "three", 5, 0);
        return 0;
      },
      []() -> std::string {
        char b[16];
        CHECK_OR(recv(10, b, 16, 0) == 1 && recv(10, b, 16, 0) == 2 && recv(10, b, 16, 0) == 3 &&
                     b[0] == 'c',
                 "dgram boundaries");
        CHECK_OR(recv(12, b, 16, 0) == 3 && recv(12, b, 16, 0) == 5 && !memcmp(b, "three", 5),
                 "seqpacket boundaries");
        return "";
      });
  EXPECT_EQ(res, "");
}

TEST_F(FilesUnix, ListenerAcceptedAndPendingConnections) {
  std::string path = dir_ + "/sock";
  std::string abs = StrFormat(std::string("\0godwit-test-%d", 15).c_str(), getpid());
  abs = std::string("\0", 1) + StrFormat("godwit-test-%d", getpid());
  std::string res = RoundTrip(
      [&] {
        struct sockaddr_un sa;
        int l = socket(AF_UNIX, SOCK_STREAM, 0);
        if (bind(l, (sockaddr*)&sa, Addr(path, &sa)) < 0) return 10;
        listen(l, 7);
        dup2(l, 3);
        int c = socket(AF_UNIX, SOCK_STREAM, 0);
        connect(c, (sockaddr*)&sa, Addr(path, &sa));
        dup2(c, 4);
        int a = accept(l, nullptr, nullptr);
        dup2(a, 5);
        write(4, "from-client", 11);
        // An abstract listener with a connection not yet accepted.
        int l2 = socket(AF_UNIX, SOCK_STREAM, 0);
        if (bind(l2, (sockaddr*)&sa, Addr(abs, &sa)) < 0) return 11;
        listen(l2, 3);
        dup2(l2, 6);
        int c2 = socket(AF_UNIX, SOCK_STREAM, 0);
        if (connect(c2, (sockaddr*)&sa, Addr(abs, &sa)) < 0) return 12;
        dup2(c2, 7);
        for (int fd : {l, c, a, l2, c2})
          if (fd > 7) close(fd);
        return 0;
      },
      [&]() -> std::string {
        CHECK_OR(ReadN(5, 11) == "from-client", "accepted socket's queue");
        CHECK_OR(write(5, "back", 4) == 4 && ReadN(4, 4) == "back", "pair broken");
        // The listener still works on its path.
        struct sockaddr_un sa;
        int n = socket(AF_UNIX, SOCK_STREAM, 0);
        CHECK_OR(connect(n, (sockaddr*)&sa, Addr(path, &sa)) == 0, "connect to restored listener");
        int a = accept(3, nullptr, nullptr);
        CHECK_OR(a >= 0, "accept");
        // The pending connection is there to accept.
        int a2 = accept4(6, nullptr, nullptr, SOCK_NONBLOCK);
        CHECK_OR(a2 >= 0, "pending connection lost");
        CHECK_OR(write(7, "late", 4) == 4, "write pending client");
        fcntl(a2, F_SETFL, 0);
        CHECK_OR(ReadN(a2, 4) == "late", "pending connection not connected to its client");
        int one = 0;
        socklen_t len = sizeof(one);
        getsockopt(3, SOL_SOCKET, SO_ACCEPTCONN, &one, &len);
        CHECK_OR(one == 1, "not listening");
        return "";
      });
  EXPECT_EQ(res, "");
}

TEST_F(FilesUnix, DgramBoundReceiverWithQueueFromOneWaySender) {
  std::string path = dir_ + "/dg";
  std::string res = RoundTrip(
      [&] {
        struct sockaddr_un sa;
        int r = socket(AF_UNIX, SOCK_DGRAM, 0);
        if (bind(r, (sockaddr*)&sa, Addr(path, &sa)) < 0) return 10;
        dup2(r, 3);
        int s = socket(AF_UNIX, SOCK_DGRAM, 0);
        if (connect(s, (sockaddr*)&sa, Addr(path, &sa)) < 0) return 11;
        dup2(s, 4);
        send(4, "d1", 2, 0);
        send(4, "dgram2", 6, 0);
        return 0;
      },
      [&]() -> std::string {
        char b[16];
        CHECK_OR(recv(3, b, 16, 0) == 2 && recv(3, b, 16, 0) == 6 && !memcmp(b, "dgram2", 6),
                 "queued datagrams");
        CHECK_OR(send(4, "x", 1, 0) == 1 && recv(3, b, 16, 0) == 1, "sender not connected");
        return "";
      });
  EXPECT_EQ(res, "");
}

TEST_F(FilesUnix, PeerOutsideTreeIsNamedError) {
  int sv[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
  pid_t pid = SpawnStopped(
      [&] {
        if (dup2(sv[1], 5) != 5) return 10;
        if (sv[1] != 5) close(sv[1]);
        return 0;
      },
      {sv[1]});
  // SpawnStopped closes everything but what setup dup'ed: the child holds only fd 5.
  ASSERT_GT(pid, 0);
  auto r = DumpPids({pid}, dir_ + "/img");
  KillAll({pid});
  close(sv[0]);
  close(sv[1]);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().kind(), ErrorKind::kUnsupported);
  EXPECT_NE(r.error().to_string().find(StrFormat("pid %d fd 5", pid)), std::string::npos)
      << r.error().to_string();
  EXPECT_NE(r.error().to_string().find("outside the tree"), std::string::npos);
}

TEST_F(FilesUnix, AddressTakenAtRestoreIsExists) {
  std::string abs = std::string("\0", 1) + StrFormat("godwit-taken-%d", getpid());
  std::string dir = dir_ + "/img";
  pid_t pid = SpawnStopped([&] {
    struct sockaddr_un sa;
    int l = socket(AF_UNIX, SOCK_STREAM, 0);
    if (bind(l, (sockaddr*)&sa, Addr(abs, &sa)) < 0) return 10;
    listen(l, 1);
    return 0;
  });
  ASSERT_GT(pid, 0);
  auto r = DumpPids({pid}, dir);
  KillAll({pid});
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  struct sockaddr_un sa;
  int squat = socket(AF_UNIX, SOCK_STREAM, 0);
  ASSERT_EQ(bind(squat, (sockaddr*)&sa, Addr(abs, &sa)), 0);
  auto set = images::ImageSet::Open(dir);
  ASSERT_TRUE(set.ok());
  auto rest = FdRestorer::Load(*set, {});
  ASSERT_TRUE(rest.ok());
  auto pr = (*rest)->Prepare(std::max((*rest)->MaxFd() + 1, 64));
  ASSERT_FALSE(pr.ok());
  EXPECT_EQ(pr.error().kind(), ErrorKind::kExists) << pr.error().to_string();
  EXPECT_NE(pr.error().to_string().find("already in use"), std::string::npos);
  close(squat);
}

}  // namespace
}  // namespace godwit::files::testing
