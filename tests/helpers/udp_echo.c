// udp_echo PORT: sends every datagram it receives on PORT (IPv4 and IPv6, any address) back to
// its sender, unchanged, until killed. Static, so it runs inside a busybox container (whose nc
// has no UDP mode): the echo server for `godwit probe --udp`.
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char** argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: udp_echo PORT\n");
    return 2;
  }
  int port = atoi(argv[1]);
  int fd = socket(AF_INET6, SOCK_DGRAM, 0);
  if (fd < 0) {
    perror("socket");
    return 1;
  }
  int off = 0;
  setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof(off));  // v4-mapped too
  struct sockaddr_in6 a;
  memset(&a, 0, sizeof(a));
  a.sin6_family = AF_INET6;
  a.sin6_port = htons(port);
  a.sin6_addr = in6addr_any;
  if (bind(fd, (struct sockaddr*)&a, sizeof(a)) < 0) {
    perror("bind");
    return 1;
  }
  char buf[65536];
  for (;;) {
    struct sockaddr_in6 from;
    socklen_t fl = sizeof(from);
    ssize_t n = recvfrom(fd, buf, sizeof(buf), 0, (struct sockaddr*)&from, &fl);
    if (n < 0) {
      if (errno == EINTR) continue;
      perror("recvfrom");
      return 1;
    }
    // A full socket buffer drops this echo (the prober counts it lost); never block on it.
    (void)sendto(fd, buf, n, MSG_DONTWAIT, (struct sockaddr*)&from, fl);
  }
}
