// One round trip per fd kind through FdDumper/FdRestorer (real processes, real kernel objects).
#include <poll.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/file.h>
#include <sys/inotify.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <termios.h>

#include "tests/files_harness_test.h"

namespace godwit::files::testing {
namespace {

class FilesKinds : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = TempDir("kinds"); }
  void TearDown() override { (void)fs::RemoveAll(dir_); }
  std::string dir_;
};

TEST_F(FilesKinds, RegularFileOffsetFlagsCloexecDup) {
  std::string path = dir_ + "/data";
  ASSERT_TRUE(fs::WriteFile(path, "0123456789abcdef").ok());
  std::string res = RoundTrip(
      [&] {
        int fd = open(path.c_str(), O_RDWR);
        if (dup2(fd, 7) < 0) return 10;
        close(fd);
        lseek(7, 5, SEEK_SET);
        if (dup2(7, 9) < 0) return 11;  // a dup: same description
        fcntl(9, F_SETFD, FD_CLOEXEC);
        int a = open(path.c_str(), O_WRONLY | O_APPEND | O_CLOEXEC);
        dup2(a, 12);
        close(a);
        return 0;
      },
      [&]() -> std::string {
        CHECK_OR(lseek(7, 0, SEEK_CUR) == 5, "offset %ld", (long)lseek(7, 0, SEEK_CUR));
        CHECK_OR(!IsCloexec(7) && IsCloexec(9), "cloexec flags wrong");
        CHECK_OR(ReadN(7, 3) == "567", "read wrong");
        CHECK_OR(lseek(9, 0, SEEK_CUR) == 8, "dup does not share the offset");
        int fl = fcntl(12, F_GETFL);
        CHECK_OR((fl & O_ACCMODE) == O_WRONLY && (fl & O_APPEND), "fd 12 flags %#o", fl);
        CHECK_OR(fcntl(3, F_GETFD) < 0 && fcntl(8, F_GETFD) < 0, "extra fds open");
        struct stat a, b;
        fstat(7, &a);
        stat(path.c_str(), &b);
        CHECK_OR(a.st_ino == b.st_ino, "different file");
        return "";
      });
  EXPECT_EQ(res, "");
}

TEST_F(FilesKinds, DeletedFileContents) {
  std::string path = dir_ + "/gone";
  std::string res = RoundTrip(
      [&] {
        int fd = open(path.c_str(), O_RDWR | O_CREAT, 0640);
        dup2(fd, 5);
        close(fd);
        std::string big(100000, 'x');
        big += "tail";
        if (write(5, big.data(), big.size()) != (ssize_t)big.size()) return 10;
        lseek(5, 99998, SEEK_SET);
        unlink(path.c_str());
        return 0;
      },
      [&]() -> std::string {
        struct stat st;
        CHECK_OR(fstat(5, &st) == 0 && st.st_nlink == 0, "not deleted (nlink %lu)", st.st_nlink);
        CHECK_OR(st.st_size == 100004, "size %ld", (long)st.st_size);
        CHECK_OR((st.st_mode & 0777) == 0640, "mode %o", st.st_mode);
        CHECK_OR(ReadN(5, 6) == "xxtail", "contents wrong");
        CHECK_OR(access(path.c_str(), F_OK) != 0, "ghost left on disk");
        return "";
      });
  EXPECT_EQ(res, "");
}

TEST_F(FilesKinds, DevNullAndDirectory) {
  std::string res = RoundTrip(
      [&] {
        int d = open(dir_.c_str(), O_RDONLY | O_DIRECTORY);
        dup2(d, 4);
        close(d);
        int z = open("/dev/zero", O_RDONLY);
        dup2(z, 6);
        close(z);
        return 0;
      },
      [&]() -> std::string {
        struct stat a, b;
        fstat(4, &a);
        stat(dir_.c_str(), &b);
        CHECK_OR(S_ISDIR(a.st_mode) && a.st_ino == b.st_ino, "fd 4 not the directory");
        char c = 1;
        CHECK_OR(read(6, &c, 1) == 1 && c == 0, "fd 6 not /dev/zero");
        CHECK_OR(write(1, "x", 1) == 1, "stdout not /dev/null");
        return "";
      });
  EXPECT_EQ(res, "");
}

TEST_F(FilesKinds, PipeWithDataNotConsumed) {
  std::string res = RoundTrip(
      [&] {
        int p[2];
        if (pipe2(p, O_NONBLOCK) < 0) return 10;
        dup2(p[0], 3);
        dup2(p[1], 4);
        if (p[0] != 3) close(p[0]);
        if (p[1] != 4) close(p[1]);
        fcntl(3, F_SETFL, 0);  // read end blocking, write end non-blocking
        fcntl(4, F_SETPIPE_SZ, 256 * 1024);
        std::string d(150000, 'p');
        d += "END";
        if (write(4, d.data(), d.size()) != (ssize_t)d.size()) return 11;
        return 0;
      },
      [&]() -> std::string {
        CHECK_OR(!(fcntl(3, F_GETFL) & O_NONBLOCK) && (fcntl(4, F_GETFL) & O_NONBLOCK), "flags");
        CHECK_OR(fcntl(4, F_GETPIPE_SZ) == 256 * 1024, "capacity %d", fcntl(4, F_GETPIPE_SZ));
        std::string got;
        while (got.size() < 150003) {
          std::string s = ReadN(3, 150003 - got.size());
          if (s.empty()) break;
          got += s;
        }
        CHECK_OR(got.size() == 150003 && got.substr(got.size() - 3) == "END", "data %zu", got.size());
        // Still connected: what goes in fd 4 comes out of fd 3.
        CHECK_OR(write(4, "z", 1) == 1 && ReadN(3, 1) == "z", "ends not connected");
        return "";
      });
  EXPECT_EQ(res, "");
}

TEST_F(FilesKinds, PipeTooLargeFailsCleanly) {
  // Only possible where pipe-max-size allows it (root with CAP_SYS_RESOURCE): skip otherwise.
  pid_t pid = SpawnStopped([] {
    int p[2];
    pipe(p);
    return fcntl(p[1], F_SETPIPE_SZ, 4 << 20) < 0 ? 0 : 0;
  });
  ASSERT_GT(pid, 0);
  auto r = DumpPids({pid}, dir_);
  KillAll({pid});
  EXPECT_TRUE(r.ok()) << r.error().to_string();  // 1 MiB pipes are fine
}

TEST_F(FilesKinds, PipeSharedByTwoProcesses) {
  std::string dir = TempDir("share");
  pid_t parent = SpawnStopped([] {
    int p[2];
    pipe(p);
    dup2(p[0], 5);
    dup2(p[1], 6);
    close(p[0]);
    close(p[1]);
    write(6, "hello", 5);
    pid_t c = fork();
    if (c == 0) {
      close(5);
      StopHere();
      _exit(0);
    }
    int st;
    waitpid(c, &st, WUNTRACED);
    return 0;
  });
  ASSERT_GT(parent, 0);
  auto kids = ChildrenOf(parent);
  ASSERT_EQ(kids.size(), 1u);
  pid_t child = kids[0];
  auto r = DumpPids({parent, child}, dir);
  KillAll({child, parent});
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  std::string res = Restore(
      dir, {{child,
             []() -> std::string {
               CHECK_OR(fcntl(5, F_GETFD) < 0, "fd 5 open in child");
               CHECK_OR(write(6, "!", 1) == 1, "write");
               return "";
             }},
            {parent, []() -> std::string {
               CHECK_OR(ReadN(5, 6) == "hello!", "pipe not shared between the processes");
               return "";
             }}});
  EXPECT_EQ(res, "");
  (void)fs::RemoveAll(dir);
}

TEST_F(FilesKinds, SharedDescriptionOffsetMovesForBoth) {
  std::string path = dir_ + "/shared";
  ASSERT_TRUE(fs::WriteFile(path, "abcdefghij").ok());
  std::string dir = TempDir("shoff");
  pid_t parent = SpawnStopped([&] {
    int fd = open(path.c_str(), O_RDONLY);
    dup2(fd, 3);
    if (fd != 3) close(fd);
    lseek(3, 2, SEEK_SET);
    pid_t c = fork();
    if (c == 0) {
      StopHere();
      _exit(0);
    }
    int st;
    waitpid(c, &st, WUNTRACED);
    return 0;
  });
  ASSERT_GT(parent, 0);
  pid_t child = ChildrenOf(parent).at(0);
  auto r = DumpPids({parent, child}, dir);
  KillAll({child, parent});
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  std::string res = Restore(dir, {{parent, []() -> std::string {
                                     CHECK_OR(ReadN(3, 3) == "cde", "parent read");
                                     return "";
                                   }},
                                  {child, []() -> std::string {
                                     CHECK_OR(ReadN(3, 2) == "fg", "offset not shared");
                                     return "";
                                   }}});
  EXPECT_EQ(res, "");
  (void)fs::RemoveAll(dir);
}

TEST_F(FilesKinds, FifoWithData) {
  std::string path = dir_ + "/fifo";
  ASSERT_EQ(mkfifo(path.c_str(), 0600), 0);
  std::string res = RoundTrip(
      [&] {
        int r = open(path.c_str(), O_RDONLY | O_NONBLOCK);
        int w = open(path.c_str(), O_WRONLY);
        dup2(r, 8);
        dup2(w, 9);
        close(r);
        close(w);
        fcntl(8, F_SETFL, 0);
        return write(9, "fifo-data", 9) == 9 ? 0 : 10;
      },
      [&]() -> std::string {
        CHECK_OR((fcntl(8, F_GETFL) & O_ACCMODE) == O_RDONLY, "read end mode");
        CHECK_OR((fcntl(9, F_GETFL) & O_ACCMODE) == O_WRONLY, "write end mode");
        CHECK_OR(!(fcntl(8, F_GETFL) & O_NONBLOCK), "nonblock leaked");
        CHECK_OR(ReadN(8, 9) == "fifo-data", "data");
        CHECK_OR(write(9, "x", 1) == 1 && ReadN(8, 1) == "x", "ends");
        struct stat st;
        fstat(8, &st);
        struct stat b;
        stat(path.c_str(), &b);
        CHECK_OR(st.st_ino == b.st_ino, "not the FIFO");
        return "";
      });
  EXPECT_EQ(res, "");
}

TEST_F(FilesKinds, Eventfd) {
  std::string res = RoundTrip(
      [] {
        dup2(eventfd(0, EFD_NONBLOCK), 3);
        uint64_t v = 42;
        write(3, &v, 8);
        dup2(eventfd(3, EFD_SEMAPHORE), 4);
        return 0;
      },
      []() -> std::string {
        uint64_t v = 0;
        CHECK_OR(read(3, &v, 8) == 8 && v == 42, "count %llu", (unsigned long long)v);
        CHECK_OR(fcntl(3, F_GETFL) & O_NONBLOCK, "nonblock");
        CHECK_OR(read(4, &v, 8) == 8 && v == 1, "semaphore read %llu", (unsigned long long)v);
        CHECK_OR(read(4, &v, 8) == 8 && v == 1, "semaphore count");
        return "";
      });
  EXPECT_EQ(res, "");
}

TEST_F(FilesKinds, SignalfdMask) {
  std::string res = RoundTrip(
      [] {
        sigset_t s;
        sigemptyset(&s);
        sigaddset(&s, SIGUSR1);
        sigaddset(&s, SIGRTMIN + 2);
        dup2(signalfd(-1, &s, SFD_NONBLOCK), 11);
        return 0;
      },
      []() -> std::string {
        sigset_t s;
        sigemptyset(&s);
        sigaddset(&s, SIGUSR1);
        sigprocmask(SIG_BLOCK, &s, nullptr);
        kill(getpid(), SIGUSR1);
        struct signalfd_siginfo si;
        CHECK_OR(read(11, &si, sizeof(si)) == sizeof(si) && si.ssi_signo == SIGUSR1, "no SIGUSR1");
        auto info = fs::ReadFile("/proc/self/fdinfo/11");
        uint64_t want = (1ull << (SIGUSR1 - 1)) | (1ull << (SIGRTMIN + 2 - 1));
        CHECK_OR(info.ok() && info->find(StrFormat("%016llx", (unsigned long long)want)) !=
                                  std::string::npos, "mask: %s", info.ok() ? info->c_str() : "");
        return "";
      });
  EXPECT_EQ(res, "");
}

TEST_F(FilesKinds, TimerfdRemainingIntervalTicks) {
  std::string res = RoundTrip(
      [] {
        int t = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
        struct itimerspec its {};
        its.it_value.tv_sec = 3600;
        its.it_interval.tv_sec = 7200;
        timerfd_settime(t, 0, &its, nullptr);
        dup2(t, 5);
        int e = timerfd_create(CLOCK_MONOTONIC, 0);  // expired, ticks pending
        its = {};
        its.it_value.tv_nsec = 1;
        timerfd_settime(e, 0, &its, nullptr);
        struct pollfd pfd {e, POLLIN, 0};
        poll(&pfd, 1, -1);  // wait for the expiry
        dup2(e, 6);
        return 0;
      },
      []() -> std::string {
        struct itimerspec its;
        timerfd_gettime(5, &its);
        CHECK_OR(its.it_value.tv_sec > 3500 && its.it_value.tv_sec <= 3600, "remaining %ld",
                 (long)its.it_value.tv_sec);
        CHECK_OR(its.it_interval.tv_sec == 7200, "interval %ld", (long)its.it_interval.tv_sec);
        uint64_t ticks = 0;
        CHECK_OR(read(6, &ticks, 8) == 8 && ticks == 1, "ticks %llu", (unsigned long long)ticks);
        return "";
      });
  EXPECT_EQ(res, "");
}

TEST_F(FilesKinds, EpollRegistrationsIncludingClosedAndDuped) {
  std::string res = RoundTrip(
      [] {
        int ep = epoll_create1(0);
        dup2(ep, 3);
        int p[2];
        pipe(p);
        dup2(p[0], 4);
        dup2(p[1], 5);
        int e = eventfd(1, 0);
        dup2(e, 6);
        struct epoll_event ev {};
        ev.events = EPOLLIN;
        ev.data.u64 = 0x1111;
        epoll_ctl(3, EPOLL_CTL_ADD, 4, &ev);
        ev.events = EPOLLIN | EPOLLET;
        ev.data.u64 = 0x2222;
        epoll_ctl(3, EPOLL_CTL_ADD, 6, &ev);
        // Registered as 6, then moved: 6 closed, the eventfd lives on as 9.
        dup2(6, 9);
        close(6);
        for (int fd : {p[0], p[1], e, ep})
          if (fd > 9) close(fd);
        write(5, "x", 1);
        return 0;
      },
      []() -> std::string {
        CHECK_OR(fcntl(6, F_GETFD) < 0, "fd 6 should be closed");
        struct epoll_event evs[4];
        int n = epoll_wait(3, evs, 4, 0);
        CHECK_OR(n == 2, "epoll_wait %d", n);
        bool a = false, b = false;
        for (int i = 0; i < n; i++) {
          if (evs[i].data.u64 == 0x1111) a = true;
          if (evs[i].data.u64 == 0x2222) b = true;
        }
        CHECK_OR(a && b, "registration data lost");
        auto info = fs::ReadFile("/proc/self/fdinfo/3");
        CHECK_OR(info.ok() && info->find("tfd:        6") != std::string::npos,
                 "registration number not kept: %s", info.ok() ? info->c_str() : "");
        return "";
      });
  EXPECT_EQ(res, "");
}

TEST_F(FilesKinds, InotifyWatches) {
  std::string watched = dir_ + "/w";
  ASSERT_TRUE(fs::MkdirAll(watched).ok());
  std::string res = RoundTrip(
      [&] {
        int in = inotify_init1(IN_NONBLOCK);
        dup2(in, 7);
        inotify_add_watch(7, dir_.c_str(), IN_DELETE);  // wd 1
        int w2 = inotify_add_watch(7, "/tmp", IN_ATTRIB);
        inotify_rm_watch(7, w2);  // wd 2 gone: the next is 3
        inotify_add_watch(7, watched.c_str(), IN_CREATE);  // wd 3
        char buf[4096];
        while (read(7, buf, sizeof(buf)) > 0) {
        }
        return 0;
      },
      [&]() -> std::string {
        int fd = open((watched + "/new").c_str(), O_CREAT | O_WRONLY, 0600);
        close(fd);
        char buf[4096];
        ssize_t n = read(7, buf, sizeof(buf));
        CHECK_OR(n >= (ssize_t)sizeof(struct inotify_event), "no event (%zd)", n);
        auto* ev = reinterpret_cast<struct inotify_event*>(buf);
        CHECK_OR(ev->wd == 3 && (ev->mask & IN_CREATE), "event wd %d mask %#x", ev->wd, ev->mask);
        return "";
      });
  EXPECT_EQ(res, "");
}

TEST_F(FilesKinds, MemfdContentsAndSeals) {
  std::string res = RoundTrip(
      [] {
        int m = memfd_create("godwit-test", MFD_ALLOW_SEALING);
        std::string d(8192, 'm');
        d += "memfd-end";
        write(m, d.data(), d.size());
        ftruncate(m, 3 * 4096);
        fcntl(m, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW);
        lseek(m, 8192, SEEK_SET);
        dup2(m, 4);
        return 0;
      },
      []() -> std::string {
        CHECK_OR(fcntl(4, F_GET_SEALS) == (F_SEAL_SHRINK | F_SEAL_GROW), "seals %#x",
                 fcntl(4, F_GET_SEALS));
        struct stat st;
        fstat(4, &st);
        CHECK_OR(st.st_size == 3 * 4096, "size %ld", (long)st.st_size);
        CHECK_OR(ReadN(4, 9) == "memfd-end", "contents/offset");
        char link[256] = {};
        readlink("/proc/self/fd/4", link, sizeof(link) - 1);
        CHECK_OR(std::string(link).find("memfd:godwit-test") != std::string::npos, "name %s", link);
        return "";
      });
  EXPECT_EQ(res, "");
}

TEST_F(FilesKinds, PtyMasterSlaveTermiosWinsize) {
  std::string res = RoundTrip(
      [] {
        int m = posix_openpt(O_RDWR | O_NOCTTY);
        grantpt(m);
        unlockpt(m);
        int s = open(ptsname(m), O_RDWR | O_NOCTTY);
        dup2(m, 5);
        dup2(s, 6);
        struct winsize ws {};
        ws.ws_row = 33;
        ws.ws_col = 111;
        ioctl(6, TIOCSWINSZ, &ws);
        struct termios t;
        tcgetattr(6, &t);
        t.c_lflag &= ~ECHO;
        tcsetattr(6, TCSANOW, &t);
        return 0;
      },
      []() -> std::string {
        struct winsize ws {};
        ioctl(6, TIOCGWINSZ, &ws);
        CHECK_OR(ws.ws_row == 33 && ws.ws_col == 111, "winsize %dx%d", ws.ws_row, ws.ws_col);
        struct termios t;
        tcgetattr(6, &t);
        CHECK_OR(!(t.c_lflag & ECHO), "termios lost");
        CHECK_OR(write(5, "hi\n", 3) == 3, "master write");
        CHECK_OR(ReadN(6, 3) == "hi\n", "slave does not see master");
        return "";
      });
  EXPECT_EQ(res, "");
}

TEST_F(FilesKinds, FileLocksFlockPosixOfd) {
  std::string f1 = dir_ + "/l1", f2 = dir_ + "/l2", f3 = dir_ + "/l3";
  for (auto& f : {f1, f2, f3}) ASSERT_TRUE(fs::WriteFile(f, "0123456789").ok());
  std::string res = RoundTrip(
      [&] {
        dup2(open(f1.c_str(), O_RDWR), 3);
        if (flock(3, LOCK_EX) < 0) return 10;
        dup2(open(f2.c_str(), O_RDWR), 4);
        struct flock fl {};
        fl.l_type = F_WRLCK;
        fl.l_start = 2;
        fl.l_len = 3;
        if (fcntl(4, F_SETLK, &fl) < 0) return 11;
        dup2(open(f3.c_str(), O_RDWR), 5);
        fl = {};
        fl.l_type = F_RDLCK;
        if (fcntl(5, F_OFD_SETLK, &fl) < 0) return 12;
        return 0;
      },
      [&]() -> std::string {
        // Another description must conflict with each lock.
        int a = open(f1.c_str(), O_RDWR);
        CHECK_OR(flock(a, LOCK_EX | LOCK_NB) < 0 && errno == EWOULDBLOCK, "flock lost");
        int b = open(f2.c_str(), O_RDWR);
        struct flock fl {};
        fl.l_type = F_WRLCK;
        fl.l_start = 3;
        fl.l_len = 1;
        CHECK_OR(fcntl(b, F_OFD_GETLK, &fl) == 0 && fl.l_type == F_WRLCK && fl.l_start == 2 &&
                     fl.l_len == 3 && fl.l_pid == getpid(),
                 "POSIX lock lost (type %d start %ld len %ld pid %d)", fl.l_type, (long)fl.l_start,
                 (long)fl.l_len, fl.l_pid);
        int c = open(f3.c_str(), O_RDWR);
        fl = {};
        fl.l_type = F_WRLCK;
        CHECK_OR(fcntl(c, F_OFD_GETLK, &fl) == 0 && fl.l_type == F_RDLCK, "OFD lock lost");
        return "";
      });
  EXPECT_EQ(res, "");
}

TEST_F(FilesKinds, UnsupportedKindNamesPidFdKind) {
  pid_t pid = SpawnStopped([] {
    // A family godwit does not dump (packet sockets are dumped since issue 11).
    int s = socket(AF_VSOCK, SOCK_STREAM, 0);
    if (dup2(s, 13) != 13) return 10;
    close(s);
    return 0;
  });
  ASSERT_GT(pid, 0);
  auto r = DumpPids({pid}, dir_ + "/img");
  // Nothing was killed: the process is still there, stopped.
  EXPECT_EQ(kill(pid, 0), 0);
  KillAll({pid});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().kind(), ErrorKind::kUnsupported);
  std::string msg = r.error().to_string();
  EXPECT_NE(msg.find(StrFormat("pid %d fd 13", pid)), std::string::npos) << msg;
  EXPECT_NE(msg.find(StrFormat("socket family %d", AF_VSOCK)), std::string::npos) << msg;
  EXPECT_FALSE(fs::Exists(dir_ + "/img/inventory.img"));
}

TEST_F(FilesKinds, NetlinkBoundToGroups) {
  std::string res = RoundTrip(
      [] {
        int s = socket(AF_NETLINK, SOCK_RAW, NETLINK_ROUTE);
        struct sockaddr_nl sa {};
        sa.nl_family = AF_NETLINK;
        sa.nl_groups = RTMGRP_LINK;
        if (bind(s, (sockaddr*)&sa, sizeof(sa)) < 0) return 10;
        return dup2(s, 8) == 8 ? 0 : 11;
      },
      []() -> std::string {
        struct sockaddr_nl sa {};
        socklen_t len = sizeof(sa);
        CHECK_OR(getsockname(8, (sockaddr*)&sa, &len) == 0 && sa.nl_family == AF_NETLINK,
                 "not a netlink socket");
        CHECK_OR(sa.nl_groups == RTMGRP_LINK, "groups %#x", sa.nl_groups);
        CHECK_OR(sa.nl_pid != 0, "not bound");  // the dumped port id (the old pid here)
        int proto = 0;
        len = sizeof(proto);
        getsockopt(8, SOL_SOCKET, SO_PROTOCOL, &proto, &len);
        CHECK_OR(proto == NETLINK_ROUTE, "protocol %d", proto);
        return "";
      });
  EXPECT_EQ(res, "");
}

TEST_F(FilesKinds, OutsideTerminalNeedsShellJob) {
  int m = posix_openpt(O_RDWR | O_NOCTTY);
  ASSERT_GE(m, 0);
  grantpt(m);
  unlockpt(m);
  std::string slave = ptsname(m);
  pid_t pid = SpawnStopped([&] { return dup2(open(slave.c_str(), O_RDWR | O_NOCTTY), 0) == 0 ? 0 : 9; });
  ASSERT_GT(pid, 0);
  auto r = DumpPids({pid}, dir_ + "/a");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().kind(), ErrorKind::kUnsupported);
  EXPECT_NE(r.error().to_string().find("--shell-job"), std::string::npos) << r.error().to_string();
  DumpOptions d;
  d.shell_job = true;
  auto r2 = DumpPids({pid}, dir_ + "/b", d);
  KillAll({pid});
  ASSERT_TRUE(r2.ok()) << r2.error().to_string();
  // Restore with the coordinator's terminal standing in: --inherit-fd fd[N]:tty.
  int s = open(slave.c_str(), O_RDWR | O_NOCTTY);
  FdRestoreOptions ro;
  ro.inherit_fds = {{s, "tty"}};
  std::string res = Restore(dir_ + "/b", {{pid, []() -> std::string {
                                             CHECK_OR(isatty(0), "fd 0 not a tty");
                                             CHECK_OR(write(0, "ok", 2) == 2, "write");
                                             return "";
                                           }}},
                            ro);
  EXPECT_EQ(res, "");
  EXPECT_EQ(ReadN(m, 2), "ok");
  close(s);
  close(m);
}

TEST_F(FilesKinds, MappedMemfdSharesTheEnginesObject) {
  pid_t pid = SpawnStopped([] {
    int m = memfd_create("mapped", 0);
    write(m, "dumped", 6);
    return dup2(m, 4) == 4 ? 0 : 9;
  });
  ASSERT_GT(pid, 0);
  struct stat st;
  ASSERT_EQ(stat(StrFormat("/proc/%d/fd/4", pid).c_str(), &st), 0);
  auto r = DumpPids({pid}, dir_ + "/img");
  KillAll({pid});
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  // The engine's copy of the object (it restored it for a mapping): the fd must open that one.
  int engine = memfd_create("engine", 0);
  ASSERT_EQ(write(engine, "engine", 6), 6);
  FdRestoreOptions ro;
  ro.memfds = {{st.st_ino, engine}};
  std::string res = Restore(dir_ + "/img", {{pid, []() -> std::string {
                                               char b[6];
                                               CHECK_OR(pread(4, b, 6, 0) == 6 && !memcmp(b, "engine", 6),
                                                        "a separate memfd, not the mapped one");
                                               CHECK_OR(pwrite(4, "E", 1, 0) == 1, "write");
                                               return "";
                                             }}},
                            ro);
  EXPECT_EQ(res, "");
  char b = 0;
  EXPECT_EQ(pread(engine, &b, 1, 0), 1);
  EXPECT_EQ(b, 'E') << "the restored fd and the engine's object differ";
  close(engine);
}

TEST_F(FilesKinds, ExternalPipeOnStdinWithInheritFd) {
  int p[2];
  ASSERT_EQ(pipe(p), 0);
  struct stat st;
  fstat(p[0], &st);
  std::string key = StrFormat("pipe:[%lu]", static_cast<unsigned long>(st.st_ino));
  pid_t pid = SpawnStopped([&] { return dup2(p[0], 0) == 0 ? 0 : 9; }, {p[0]});
  ASSERT_GT(pid, 0);
  DumpOptions d;
  d.external = {key};
  auto r = DumpPids({pid}, dir_ + "/img", d);
  KillAll({pid});
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  // Restore feeds stdin from another pipe the restore command holds.
  int q[2];
  ASSERT_EQ(pipe(q), 0);
  ASSERT_EQ(write(q[1], "fed", 3), 3);
  FdRestoreOptions ro;
  ro.inherit_fds = {{q[0], key}};
  std::string res = Restore(dir_ + "/img", {{pid, []() -> std::string {
                                               CHECK_OR(ReadN(0, 3) == "fed", "stdin not inherited");
                                               return "";
                                             }}},
                            ro);
  EXPECT_EQ(res, "");
  // Without --inherit-fd: a clear error naming the key.
  std::string res2 = Restore(dir_ + "/img", {{pid, []() -> std::string { return ""; }}});
  EXPECT_NE(res2.find("--inherit-fd fd[N]:" + key), std::string::npos) << res2;
  for (int fd : {p[0], p[1], q[0], q[1]}) close(fd);
}

}  // namespace
}  // namespace godwit::files::testing
