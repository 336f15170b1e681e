/* The trivial endpoint for bench_loadgen.py: a single-threaded epoll HTTP/1.1
 * server that answers every request (keep-alive, pipelining allowed) with a
 * fixed 2-byte 200 reply. It does as little as a server can, so a load
 * generator's ceiling against it is the generator's own.
 *
 *   cc -O2 -o trivial_http_server trivial_http_server.c && ./trivial_http_server PORT
 *
 * Prints "ready PORT" on stdout once listening (PORT 0 picks a free one).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_CONNS 4096
#define BUF 65536

static const char kReply[] =
    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok";

struct conn {
  char in[BUF];
  size_t in_len;
};

static struct conn *conns[MAX_CONNS];

/* Length of the complete request at the start of buf, or 0 if incomplete. */
static size_t request_length(const char *buf, size_t len) {
  const char *end = memmem(buf, len, "\r\n\r\n", 4);
  if (end == NULL) return 0;
  size_t head = (size_t)(end - buf) + 4;
  size_t body = 0;
  for (const char *p = buf; p < end; ++p) {
    if ((p == buf || p[-1] == '\n') && strncasecmp(p, "content-length:", 15) == 0) {
      body = strtoul(p + 15, NULL, 10);
      break;
    }
  }
  return head + body <= len ? head + body : 0;
}

static void drop(int ep, int fd) {
  epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
  close(fd);
  free(conns[fd]);
  conns[fd] = NULL;
}

int main(int argc, char **argv) {
  int port = argc > 1 ? atoi(argv[1]) : 0;
  int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
  int one = 1;
  setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  struct sockaddr_in addr;
  memset(&addr, 0, sizeof(addr));
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons((unsigned short)port);
  if (bind(ls, (struct sockaddr *)&addr, sizeof(addr)) != 0 || listen(ls, 1024) != 0) {
    perror("bind/listen");
    return 1;
  }
  socklen_t alen = sizeof(addr);
  getsockname(ls, (struct sockaddr *)&addr, &alen);
  printf("ready %d\n", ntohs(addr.sin_port));
  fflush(stdout);
  int ep = epoll_create1(0);
  struct epoll_event ev = {.events = EPOLLIN, .data.fd = ls};
  epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);
  struct epoll_event events[256];
  static char out[BUF];
  for (;;) {
    int n = epoll_wait(ep, events, 256, -1);
    for (int k = 0; k < n; ++k) {
      int fd = events[k].data.fd;
      if (fd == ls) {
        int c;
        while ((c = accept4(ls, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
          if (c >= MAX_CONNS) {
            close(c);
            continue;
          }
          setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
          conns[c] = calloc(1, sizeof(struct conn));
          struct epoll_event cev = {.events = EPOLLIN, .data.fd = c};
          epoll_ctl(ep, EPOLL_CTL_ADD, c, &cev);
        }
        continue;
      }
      struct conn *cn = conns[fd];
      ssize_t r = recv(fd, cn->in + cn->in_len, BUF - cn->in_len, 0);
      if (r <= 0) {
        if (r < 0 && errno == EAGAIN) continue;
        drop(ep, fd);
        continue;
      }
      cn->in_len += (size_t)r;
      size_t off = 0, out_len = 0, len;
      while ((len = request_length(cn->in + off, cn->in_len - off)) > 0) {
        off += len;
        if (out_len + sizeof(kReply) - 1 > BUF) break;
        memcpy(out + out_len, kReply, sizeof(kReply) - 1);
        out_len += sizeof(kReply) - 1;
      }
      memmove(cn->in, cn->in + off, cn->in_len - off);
      cn->in_len -= off;
      if (cn->in_len == BUF) { /* a request larger than the buffer: refuse it */
        drop(ep, fd);
        continue;
      }
      /* Replies are tiny; a loopback socket buffer takes them whole. */
      if (out_len > 0 && send(fd, out, out_len, MSG_NOSIGNAL) != (ssize_t)out_len) drop(ep, fd);
    }
  }
}
