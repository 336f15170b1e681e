// Load generator tests: the response parser on golden byte streams split at
// every position, and whole runs against a tiny loopback HTTP server in this
// file (thread per connection; configurable delay, pause, error statuses,
// chunked replies and connection closes).
//
// No check depends on how fast the machine is: a pause is asserted through
// what it must do to the recorded distribution (every request due during it
// waits for it in open loop; closed loop can only hold one request per
// connection behind it).

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "aiarch/loadgen.h"
#include "check.h"

namespace aiarch {
namespace {

using Clock = std::chrono::steady_clock;

int64_t NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch())
      .count();
}

// ---------------------------------------------------------------- server

class TestServer {
 public:
  std::atomic<int64_t> delay_us{0};
  std::atomic<int64_t> pause_until_ns{0};
  std::atomic<int> fail_every{0};  // every Nth request gets 503
  std::atomic<bool> chunked{false};
  std::atomic<bool> close_each{false};
  std::atomic<bool> until_close{false};  // no length: the body ends with the connection
  std::atomic<uint64_t> requests{0};

  TestServer() {
    listen_fd_ = socket(AF_INET, SOCK_STREAM, 0);
    const int one = 1;
    setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
    listen(listen_fd_, 128);
    socklen_t len = sizeof(addr);
    getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
    acceptor_ = std::thread([this] { Accept(); });
  }

  ~TestServer() {
    stop_ = true;
    shutdown(listen_fd_, SHUT_RDWR);
    close(listen_fd_);
    acceptor_.join();
    std::lock_guard<std::mutex> lock(mu_);
    for (int fd : conn_fds_) shutdown(fd, SHUT_RDWR);
    for (auto& t : workers_) t.join();
  }

  int port() const { return port_; }

 private:
  void Accept() {
    while (!stop_) {
      const int fd = accept(listen_fd_, nullptr, nullptr);
      if (fd < 0) return;
      const int one = 1;
      setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
      std::lock_guard<std::mutex> lock(mu_);
      conn_fds_.push_back(fd);
      workers_.emplace_back([this, fd] { Serve(fd); });
    }
  }

  void Serve(int fd) {
    std::string in;
    char buf[4096];
    while (true) {
      const size_t head_end = in.find("\r\n\r\n");
      if (head_end == std::string::npos) {
        const ssize_t n = recv(fd, buf, sizeof(buf), 0);
        if (n <= 0) break;
        in.append(buf, static_cast<size_t>(n));
        continue;
      }
      size_t body = 0;
      const size_t cl = in.find("Content-Length: ");
      if (cl != std::string::npos && cl < head_end) body = std::stoul(in.substr(cl + 16));
      while (in.size() < head_end + 4 + body) {
        const ssize_t n = recv(fd, buf, sizeof(buf), 0);
        if (n <= 0) {
          close(fd);
          return;
        }
        in.append(buf, static_cast<size_t>(n));
      }
      in.erase(0, head_end + 4 + body);
      if (!Respond(fd)) break;
    }
    close(fd);
  }

  bool Respond(int fd) {
    const uint64_t n = requests.fetch_add(1) + 1;
    const int64_t pause_until = pause_until_ns.load();
    const int64_t now = NowNs();
    if (pause_until > now) std::this_thread::sleep_for(std::chrono::nanoseconds(pause_until - now));
    if (delay_us.load() > 0) std::this_thread::sleep_for(std::chrono::microseconds(delay_us));
    const int every = fail_every.load();
    const bool fail = every > 0 && n % static_cast<uint64_t>(every) == 0;
    const bool close_after = close_each.load();
    std::string out = fail ? "HTTP/1.1 503 Service Unavailable\r\n" : "HTTP/1.1 200 OK\r\n";
    out += "Content-Type: text/plain\r\n";
    if (close_after) out += "Connection: close\r\n";
    if (until_close.load()) {
      out += "Connection: close\r\n\r\nbody delimited by the close";
      send(fd, out.data(), out.size(), MSG_NOSIGNAL);
      shutdown(fd, SHUT_WR);
      return false;
    }
    if (chunked.load()) {
      out +=
          "Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n10;ext=1\r\n0123456789abcdef\r\n0\r\n\r\n";
    } else {
      out += "Content-Length: 5\r\n\r\nhello";
    }
    if (send(fd, out.data(), out.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(out.size())) {
      return false;
    }
    if (close_after) {
      shutdown(fd, SHUT_WR);
      return false;
    }
    return true;
  }

  int listen_fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stop_{false};
  std::thread acceptor_;
  std::mutex mu_;
  std::vector<std::thread> workers_;
  std::vector<int> conn_fds_;
};

const char kRequest[] =
    "POST /v2/models/m/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 4\r\n\r\nabcd";

LoadgenConfig BaseConfig(int port) {
  LoadgenConfig c;
  c.port = port;
  c.requests = {kRequest};
  c.connections = 4;
  return c;
}

bool RunToEnd(LoadgenConfig c, LoadgenResult* r, Status* start_status = nullptr) {
  std::unique_ptr<LoadGenerator> gen;
  Status s = LoadGenerator::Create(std::move(c), &gen);
  if (!CHECK(s.ok())) return false;
  s = gen->Start();
  if (start_status != nullptr) *start_status = s;
  if (!s.ok()) return false;
  if (!CHECK(gen->Wait(60'000'000'000))) return false;
  return CHECK(gen->Result(r).ok());
}

uint64_t StatusCount(const LoadgenResult& r, int status) {
  for (const auto& [code, count] : r.status_counts) {
    if (code == status) return count;
  }
  return 0;
}

// Count of recorded values >= threshold.
uint64_t CountAtLeast(const HistogramSnapshot& h, int64_t threshold) {
  uint64_t n = 0;
  for (size_t i = 0; i < h.counts().size(); ++i) {
    if (h.counts()[i] != 0 && h.MidpointOf(i) >= threshold) n += h.counts()[i];
  }
  return n;
}

// ---------------------------------------------------------------- parser

// Feeds `stream` split at `cut`; returns the statuses of complete responses.
std::vector<int> ParseSplit(const std::string& stream, size_t cut, bool* error) {
  ResponseParser p;
  std::vector<int> statuses;
  *error = false;
  const std::string parts[2] = {stream.substr(0, cut), stream.substr(cut)};
  for (const std::string& part : parts) {
    size_t off = 0;
    while (off < part.size()) {
      size_t used = 0;
      const auto r = p.Feed(part.data() + off, part.size() - off, &used);
      off += used;
      if (r == ResponseParser::Result::kError) {
        *error = true;
        return statuses;
      }
      if (r == ResponseParser::Result::kNeedMore) break;
      statuses.push_back(p.status());
      p.Reset();
    }
  }
  return statuses;
}

void TestParserGolden() {
  const std::string stream =
      "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello"
      "HTTP/1.1 204 No Content\r\n\r\n"
      "HTTP/1.1 503 Busy\r\nTransfer-Encoding: chunked\r\n\r\n"
      "4\r\nwiki\r\nA;x=y\r\n0123456789\r\n0\r\nX-Trailer: 1\r\n\r\n"
      "HTTP/1.1 429 Too Many\r\nCONTENT-LENGTH: 0\r\nRetry-After: 1\r\n\r\n";
  const std::vector<int> expected = {200, 204, 503, 429};
  size_t bad_cuts = 0;
  for (size_t cut = 0; cut <= stream.size(); ++cut) {
    bool error = false;
    if (ParseSplit(stream, cut, &error) != expected || error) ++bad_cuts;
  }
  CHECK_EQ(bad_cuts, size_t{0});

  ResponseParser p;
  size_t used = 0;
  const std::string close = "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nbody until close";
  CHECK(p.Feed(close.data(), close.size(), &used) == ResponseParser::Result::kNeedMore);
  CHECK(p.FinishOnClose());
  CHECK(p.close_after());
  p.Reset();
  const std::string http10 = "HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok";
  CHECK(p.Feed(http10.data(), http10.size(), &used) == ResponseParser::Result::kComplete);
  CHECK(p.close_after());
  for (const std::string bad :
       {std::string("SMTP 220 hello\r\n\r\n"), std::string("HTTP/1.1 2x0 OK\r\n\r\n"),
        std::string("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                    "zz\r\n")}) {
    p.Reset();
    CHECK(p.Feed(bad.data(), bad.size(), &used) == ResponseParser::Result::kError);
    CHECK(!p.error().empty());
  }
}

void TestValidate() {
  LoadgenConfig c = BaseConfig(80);
  c.duration_ns = 1;
  c.rate_per_s = 10;
  CHECK(c.Validate().ok());
  LoadgenConfig bad = c;
  bad.rate_per_s = 0;
  CHECK(bad.Validate().code() == StatusCode::kInvalidArgument);
  bad = c;
  bad.duration_ns = 0;
  CHECK(bad.Validate().code() == StatusCode::kInvalidArgument);
  bad = c;
  bad.host = "localhost";
  CHECK(bad.Validate().code() == StatusCode::kInvalidArgument);
  bad = c;
  bad.requests = {"GET / HTTP/1.1\r\n"};
  CHECK(bad.Validate().code() == StatusCode::kInvalidArgument);
  bad = c;
  bad.connections = 1;
  bad.threads = 2;
  CHECK(bad.Validate().code() == StatusCode::kInvalidArgument);
}

// ---------------------------------------------------------------- runs

void TestClosedLoopCount() {
  TestServer server;
  LoadgenConfig c = BaseConfig(server.port());
  c.mode = LoadMode::kClosed;
  c.max_requests = 600;
  c.warmup_ns = 0;
  LoadgenResult r;
  if (!RunToEnd(c, &r)) return;
  CHECK_EQ(r.scheduled, uint64_t{600});
  CHECK_EQ(r.completed, uint64_t{600});
  CHECK_EQ(r.succeeded, uint64_t{600});
  CHECK_EQ(StatusCount(r, 200), uint64_t{600});
  CHECK_EQ(r.latency.total_count(), uint64_t{600});
  CHECK_EQ(r.send_lag.total_count(), uint64_t{0});  // no schedule in closed loop
  CHECK(r.window_ns > 0);
  CHECK(server.requests.load() >= 600);
}

void TestOpenLoopScheduleAndStatuses() {
  TestServer server;
  server.fail_every = 4;
  LoadgenConfig c = BaseConfig(server.port());
  c.mode = LoadMode::kConstant;
  c.rate_per_s = 2000;
  c.threads = 2;
  c.warmup_ns = 100'000'000;
  c.duration_ns = 500'000'000;
  LoadgenResult r;
  if (!RunToEnd(c, &r)) return;
  // Intended times are fixed: 2000/s over 0.5 s, interleaved over 2 threads.
  CHECK_NEAR(static_cast<double>(r.scheduled), 1000.0, 2.0);
  CHECK_EQ(r.completed + r.io_errors + r.timeouts + r.unsent, r.scheduled);
  CHECK_EQ(StatusCount(r, 200) + StatusCount(r, 503), r.completed);
  // Every 4th request the server answers (warm-up included) fails.
  CHECK_NEAR(static_cast<double>(StatusCount(r, 503)), r.completed / 4.0, 3.0);
  CHECK_EQ(r.send_lag.total_count(), r.sent);
  CHECK_EQ(r.latency.total_count(), r.completed);
}

void TestPoissonCount() {
  TestServer server;
  LoadgenConfig c = BaseConfig(server.port());
  c.mode = LoadMode::kPoisson;
  c.rate_per_s = 3000;
  c.max_requests = 700;
  c.seed = 7;
  LoadgenResult r;
  if (!RunToEnd(c, &r)) return;
  CHECK_EQ(r.scheduled, uint64_t{700});
  CHECK_EQ(r.succeeded, uint64_t{700});
}

void TestChunkedAndConnectionClose() {
  TestServer server;
  server.chunked = true;
  server.close_each = true;
  LoadgenConfig c = BaseConfig(server.port());
  c.mode = LoadMode::kClosed;
  c.connections = 2;
  c.max_requests = 200;
  LoadgenResult r;
  if (!RunToEnd(c, &r)) return;
  CHECK_EQ(r.succeeded, uint64_t{200});
  CHECK_EQ(r.io_errors, uint64_t{0});

  TestServer close_delimited;
  close_delimited.until_close = true;
  c.port = close_delimited.port();
  c.max_requests = 100;
  if (!RunToEnd(c, &r)) return;
  CHECK_EQ(r.succeeded, uint64_t{100});
  CHECK_EQ(r.io_errors, uint64_t{0});
}

void TestPauseOpenVersusClosed() {
  constexpr int64_t kPauseNs = 300'000'000;
  constexpr int64_t kThresholdNs = kPauseNs / 2;
  // Open loop: every request due during the pause is recorded as waiting
  // for its end, measured from its intended time.
  {
    TestServer server;
    LoadgenConfig c = BaseConfig(server.port());
    c.mode = LoadMode::kConstant;
    c.rate_per_s = 1000;
    c.connections = 8;
    c.duration_ns = 1'000'000'000;
    std::unique_ptr<LoadGenerator> gen;
    if (!CHECK(LoadGenerator::Create(c, &gen).ok()) || !CHECK(gen->Start().ok())) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    server.pause_until_ns = NowNs() + kPauseNs;
    CHECK(gen->Wait(60'000'000'000));
    LoadgenResult r;
    if (!CHECK(gen->Result(&r).ok())) return;
    // Requests intended in the first half of the pause: ~150 at 1000/s.
    const uint64_t slow = CountAtLeast(r.latency, kThresholdNs);
    CHECK(slow >= 100);
    CHECK(r.latency.Max() >= kPauseNs * 9 / 10);
    CHECK(r.latency.ValueAtPercentile(99) >= kThresholdNs);
    // The generator ran out of connections during the pause and says so.
    CHECK(r.waited_for_connection > 0);
    CHECK(r.send_lag.Max() >= kThresholdNs);
  }
  // Closed loop: each connection holds one request behind the pause and
  // sends nothing meanwhile, so at most `connections` values see it.
  {
    TestServer server;
    LoadgenConfig c = BaseConfig(server.port());
    c.mode = LoadMode::kClosed;
    c.connections = 2;
    c.duration_ns = 1'000'000'000;
    std::unique_ptr<LoadGenerator> gen;
    if (!CHECK(LoadGenerator::Create(c, &gen).ok()) || !CHECK(gen->Start().ok())) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    server.pause_until_ns = NowNs() + kPauseNs;
    CHECK(gen->Wait(60'000'000'000));
    LoadgenResult r;
    if (!CHECK(gen->Result(&r).ok())) return;
    CHECK(CountAtLeast(r.latency, kThresholdNs) <= 2);
    CHECK(r.latency.Max() >= kPauseNs * 9 / 10);  // the pause is seen once...
    CHECK(r.completed > 200);                     // ...among many fast replies
  }
}

void TestFallsBehind() {
  TestServer server;
  server.delay_us = 20'000;  // 50 replies/s on one connection
  LoadgenConfig c = BaseConfig(server.port());
  c.mode = LoadMode::kConstant;
  c.rate_per_s = 200;
  c.connections = 1;
  c.duration_ns = 300'000'000;
  c.drain_timeout_ns = 5'000'000'000;
  LoadgenResult r;
  if (!RunToEnd(c, &r)) return;
  CHECK(r.waited_for_connection > r.scheduled / 2);
  // 60 requests due in 0.3 s, served one per 20 ms: the last ones are sent
  // about 0.9 s late.
  CHECK(r.send_lag.Max() >= 500'000'000);
  CHECK_EQ(r.succeeded, r.scheduled);
}

void TestStop() {
  TestServer server;
  LoadgenConfig c = BaseConfig(server.port());
  c.mode = LoadMode::kConstant;
  c.rate_per_s = 500;
  c.duration_ns = 60'000'000'000;
  std::unique_ptr<LoadGenerator> gen;
  if (!CHECK(LoadGenerator::Create(c, &gen).ok()) || !CHECK(gen->Start().ok())) return;
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  CHECK(gen->Progress().sent > 0);
  gen->Stop();
  CHECK(gen->Wait(5'000'000'000));
  LoadgenResult r;
  CHECK(gen->Result(&r).ok());
  CHECK(r.stopped);
  CHECK(gen->Progress().done);
}

void TestRefused() {
  int port = 0;
  {
    TestServer server;  // a port that was just free and is closed again
    port = server.port();
  }
  LoadgenConfig c = BaseConfig(port);
  c.mode = LoadMode::kClosed;
  c.max_requests = 10;
  std::unique_ptr<LoadGenerator> gen;
  if (!CHECK(LoadGenerator::Create(c, &gen).ok())) return;
  const Status s = gen->Start();
  CHECK(s.code() == StatusCode::kUnavailable);
  CHECK(s.message().find("cannot connect") != std::string::npos);
}

}  // namespace
}  // namespace aiarch

int main() {
  aiarch::TestParserGolden();
  aiarch::TestValidate();
  aiarch::TestClosedLoopCount();
  aiarch::TestOpenLoopScheduleAndStatuses();
  aiarch::TestPoissonCount();
  aiarch::TestChunkedAndConnectionClose();
  aiarch::TestPauseOpenVersusClosed();
  aiarch::TestFallsBehind();
  aiarch::TestStop();
  aiarch::TestRefused();
  return aiarch::test::Finish("test_loadgen");
}
