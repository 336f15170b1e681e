#include "aiarch/loadgen.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <limits>
#include <mutex>
#include <random>
#include <thread>

namespace aiarch {
namespace {

constexpr int64_t kNever = std::numeric_limits<int64_t>::max();
// Upper bound of one epoll wait, so Stop() is noticed promptly even when
// nothing else wakes a worker.
constexpr int64_t kMaxWaitNs = 20'000'000;
// A connection that could not be re-opened is retried after this long.
constexpr int64_t kReconnectDelayNs = 50'000'000;

// One writer per counter: a plain load + store publishes the tally without a
// locked read-modify-write; readers only display it.
void Bump(std::atomic<uint64_t>& counter) {
  counter.store(counter.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
}

int64_t NowNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}

std::string ErrnoText(const char* what, int err) {
  return std::string(what) + ": " + std::strerror(err);
}

// A non-blocking TCP socket with connect() issued; *in_progress when the
// handshake has not finished yet. Returns -1 and sets *err on failure.
int StartConnect(const sockaddr_in& addr, bool* in_progress, int* err) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    *err = errno;
    return -1;
  }
  const int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  if (connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) == 0) {
    *in_progress = false;
    return fd;
  }
  if (errno == EINPROGRESS) {
    *in_progress = true;
    return fd;
  }
  *err = errno;
  close(fd);
  return -1;
}

// Connects with a timeout; the returned socket is non-blocking.
int ConnectBlocking(const sockaddr_in& addr, int64_t timeout_ns, std::string* error) {
  bool in_progress = false;
  int err = 0;
  const int fd = StartConnect(addr, &in_progress, &err);
  if (fd < 0) {
    *error = std::strerror(err);
    return -1;
  }
  if (in_progress) {
    pollfd p{fd, POLLOUT, 0};
    const int ms = static_cast<int>(std::max<int64_t>(1, timeout_ns / 1'000'000));
    const int n = poll(&p, 1, ms);
    if (n <= 0) {
      *error = n == 0 ? "connect timed out" : std::strerror(errno);
      close(fd);
      return -1;
    }
    socklen_t len = sizeof(err);
    getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err != 0) {
      *error = std::strerror(err);
      close(fd);
      return -1;
    }
  }
  return fd;
}

}  // namespace

Status LoadgenConfig::Validate() const {
  if (port <= 0 || port > 65535) {
    return Status::InvalidArgument("port must be in 1..65535, got " + std::to_string(port));
  }
  in_addr probe{};
  if (inet_pton(AF_INET, host.c_str(), &probe) != 1) {
    return Status::InvalidArgument("host must be an IPv4 address, got '" + host + "'");
  }
  if (requests.empty()) return Status::InvalidArgument("at least one request is needed");
  for (const auto& r : requests) {
    if (r.find("\r\n\r\n") == std::string::npos) {
      return Status::InvalidArgument("a request lacks the blank line that ends its headers");
    }
  }
  if (threads < 1) return Status::InvalidArgument("threads must be >= 1");
  if (connections < threads) {
    return Status::InvalidArgument("connections (" + std::to_string(connections) +
                                   ") must be >= threads (" + std::to_string(threads) + ")");
  }
  if (pipeline < 1) return Status::InvalidArgument("pipeline must be >= 1");
  if (mode != LoadMode::kClosed && !(rate_per_s > 0 && std::isfinite(rate_per_s))) {
    return Status::InvalidArgument("open loop needs a rate > 0 requests/s");
  }
  if (warmup_ns < 0 || duration_ns < 0 || drain_timeout_ns < 0 || connect_timeout_ns <= 0) {
    return Status::InvalidArgument("durations must be >= 0 (connect timeout > 0)");
  }
  if (duration_ns == 0 && max_requests == 0) {
    return Status::InvalidArgument("set a duration or a request count (or both)");
  }
  if (highest_latency_ns < 1'000'000) {
    return Status::InvalidArgument("highest_latency_ns must be >= 1 ms");
  }
  return Status::Ok();
}

// ---------------------------------------------------------------- workers

namespace {

struct InFlight {
  int64_t intended_ns;
  int64_t sent_ns;
  bool measured;
};

struct Due {
  int64_t intended_ns;
  bool measured;
};

struct Conn {
  int fd = -1;
  bool connecting = false;
  bool want_write = false;  // EPOLLOUT registered
  bool available = false;   // listed in Worker::available_
  int64_t retry_at_ns = 0;  // when down: reconnect no earlier than this
  std::string out;          // bytes not yet written
  size_t out_off = 0;
  std::deque<InFlight> in_flight;
  ResponseParser parser;
};

// What one worker tallies for the measured part; merged into the result once,
// when the worker exits.
struct Tally {
  uint64_t scheduled = 0, sent = 0, completed = 0, succeeded = 0, io_errors = 0, timeouts = 0,
           unsent = 0, waited = 0, succeeded_in_window = 0;
  std::array<uint64_t, 600> status{};
  uint64_t status_other = 0;
  int64_t first_ns = kNever, last_reply_ns = 0;
  bool stopped = false;
  std::string first_error;
};

}  // namespace

// Progress counters of one worker, on their own cache line.
struct alignas(64) WorkerProgress {
  std::atomic<uint64_t> sent{0}, completed{0}, errors{0};
};

struct LoadGenerator::Shared {
  explicit Shared(LoadgenConfig c)
      : config(std::move(c)),
        latency(config.highest_latency_ns, 3),
        service(config.highest_latency_ns, 3),
        send_lag(config.highest_latency_ns, 3),
        progress(std::make_unique<WorkerProgress[]>(static_cast<size_t>(config.threads))) {}

  LoadgenConfig config;
  sockaddr_in addr{};
  Histogram latency, service, send_lag;
  std::atomic<bool> stop{false};
  // One per worker; relaxed: tallies read for display, they order nothing.
  std::unique_ptr<WorkerProgress[]> progress;
  // The schedule's start and measured window; written by Start() before
  // `launched` is set.
  int64_t t0_ns = 0;
  int64_t measure_start_ns = 0;
  int64_t measure_end_ns = kNever;
  // Closed loop with a request count: measured sends claimed so far.
  std::atomic<uint64_t> closed_claimed{0};
  // Release-stored by Start() after the times above; Progress() acquires it.
  std::atomic<bool> launched{false};

  mutable std::mutex mu;
  std::condition_variable done_cv;
  int running = 0;       // workers still running; guarded by mu
  bool started = false;  // guarded by mu
  Tally total;           // guarded by mu
  std::vector<std::thread> threads;
  std::vector<std::vector<int>> fds;  // per worker, handed over at Start()
};

namespace {

class Worker {
 public:
  Worker(LoadGenerator::Shared* s, int index, std::vector<int> fds)
      : s_(s), progress_(&s->progress[static_cast<size_t>(index)]) {
    const LoadgenConfig& c = s->config;
    conns_.resize(fds.size());
    for (size_t i = 0; i < fds.size(); ++i) conns_[i].fd = fds[i];
    const int threads = c.threads;
    if (c.mode != LoadMode::kClosed) {
      const double per_thread = c.rate_per_s / threads;
      interval_ns_ = 1e9 / per_thread;
      // Interleave the threads' constant schedules.
      next_intended_ns_ = static_cast<double>(s->t0_ns) + index * (1e9 / c.rate_per_s);
    }
    if (c.max_requests > 0) {
      budget_ = c.max_requests / threads +
                (static_cast<uint64_t>(index) < c.max_requests % threads ? 1 : 0);
    }
    rng_.seed(c.seed + static_cast<uint64_t>(index));
  }

  void Run() {
    // Timer expiries within a few µs of the schedule: the default 50 µs slack
    // would show up as send lag.
    prctl(PR_SET_TIMERSLACK, 5000UL, 0, 0, 0);
    epoll_ = epoll_create1(EPOLL_CLOEXEC);
    if (epoll_ < 0) {
      Fail(ErrnoText("epoll_create1", errno));
    } else {
      for (size_t i = 0; i < conns_.size(); ++i) {
        Register(i);
        MakeAvailable(i);
      }
      Loop();
    }
    Finish();
  }

 private:
  bool closed_loop() const { return s_->config.mode == LoadMode::kClosed; }

  void Fail(const std::string& text) {
    if (tally_.first_error.empty()) tally_.first_error = text;
  }

  void Register(size_t i) {
    epoll_event ev{};
    ev.events =
        EPOLLIN | EPOLLRDHUP | (conns_[i].connecting ? static_cast<uint32_t>(EPOLLOUT) : 0u);
    ev.data.u64 = i;
    conns_[i].want_write = conns_[i].connecting;
    epoll_ctl(epoll_, EPOLL_CTL_ADD, conns_[i].fd, &ev);
  }

  void SetWantWrite(size_t i, bool on) {
    Conn& c = conns_[i];
    if (c.want_write == on) return;
    c.want_write = on;
    epoll_event ev{};
    ev.events = EPOLLIN | EPOLLRDHUP | (on ? static_cast<uint32_t>(EPOLLOUT) : 0u);
    ev.data.u64 = i;
    epoll_ctl(epoll_, EPOLL_CTL_MOD, c.fd, &ev);
  }

  void MakeAvailable(size_t i) {
    Conn& c = conns_[i];
    if (!c.available && c.fd >= 0 && !c.connecting &&
        static_cast<int>(c.in_flight.size()) < s_->config.pipeline) {
      c.available = true;
      available_.push_back(static_cast<int>(i));
    }
  }

  // A connection that can take a request now, or -1.
  int TakeAvailable() {
    while (!available_.empty()) {
      const int i = available_.back();
      Conn& c = conns_[i];
      if (c.fd >= 0 && !c.connecting &&
          static_cast<int>(c.in_flight.size()) < s_->config.pipeline) {
        return i;
      }
      c.available = false;
      available_.pop_back();
    }
    return -1;
  }

  const std::string& NextRequest() {
    const auto& reqs = s_->config.requests;
    const std::string& r = reqs[next_request_];
    if (++next_request_ == reqs.size()) next_request_ = 0;
    return r;
  }

  void Send(int i, int64_t intended_ns, bool measured, int64_t now) {
    Conn& c = conns_[i];
    c.in_flight.push_back({intended_ns, now, measured});
    Bump(progress_->sent);
    if (measured) {
      ++tally_.sent;
      if (!closed_loop()) s_->send_lag.Record(now - intended_ns);
      tally_.first_ns = std::min(tally_.first_ns, intended_ns);
    }
    const std::string& req = NextRequest();
    if (c.out_off < c.out.size()) {
      c.out.append(req);
      return;
    }
    c.out.clear();
    c.out_off = 0;
    const ssize_t n = send(c.fd, req.data(), req.size(), MSG_NOSIGNAL);
    if (n == static_cast<ssize_t>(req.size())) return;
    if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
      Drop(static_cast<size_t>(i), ErrnoText("send", errno));
      return;
    }
    c.out.assign(req, n < 0 ? 0 : static_cast<size_t>(n), std::string::npos);
    SetWantWrite(static_cast<size_t>(i), true);
  }

  void Flush(size_t i) {
    Conn& c = conns_[i];
    while (c.out_off < c.out.size()) {
      const ssize_t n =
          send(c.fd, c.out.data() + c.out_off, c.out.size() - c.out_off, MSG_NOSIGNAL);
      if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK) return;
        Drop(i, ErrnoText("send", errno));
        return;
      }
      c.out_off += static_cast<size_t>(n);
    }
    c.out.clear();
    c.out_off = 0;
    SetWantWrite(i, false);
  }

  // Closes connection i: its requests in flight fail; reconnects at once.
  void Drop(size_t i, const std::string& why) {
    Conn& c = conns_[i];
    Fail(why);
    for (const InFlight& f : c.in_flight) {
      Bump(progress_->errors);
      if (f.measured) ++tally_.io_errors;
    }
    CloseConn(i);
    Reconnect(i);
  }

  void CloseConn(size_t i) {
    Conn& c = conns_[i];
    c.in_flight.clear();
    if (c.fd >= 0) {
      epoll_ctl(epoll_, EPOLL_CTL_DEL, c.fd, nullptr);
      close(c.fd);
    }
    c.fd = -1;
    c.connecting = false;
    c.want_write = false;
    c.out.clear();
    c.out_off = 0;
    c.parser.Reset();
  }

  void Reconnect(size_t i) {
    Conn& c = conns_[i];
    if (schedule_done_ || s_->stop.load(std::memory_order_relaxed)) return;
    int err = 0;
    bool in_progress = false;
    const int fd = StartConnect(s_->addr, &in_progress, &err);
    if (fd < 0) {
      Fail(ErrnoText("connect", err));
      c.retry_at_ns = NowNs() + kReconnectDelayNs;
      down_.push_back(static_cast<int>(i));
      return;
    }
    c.fd = fd;
    c.connecting = in_progress;
    Register(i);
    if (!in_progress) {
      MakeAvailable(i);
      if (closed_loop()) SendClosed(static_cast<int>(i), NowNs());
    }
  }

  void RetryDown(int64_t now) {
    if (down_.empty()) return;
    std::vector<int> due;
    for (auto it = down_.begin(); it != down_.end();) {
      if (conns_[*it].retry_at_ns <= now) {
        due.push_back(*it);
        it = down_.erase(it);
      } else {
        ++it;
      }
    }
    for (int i : due) Reconnect(static_cast<size_t>(i));
  }

  void OnWritable(size_t i) {
    Conn& c = conns_[i];
    if (c.connecting) {
      int err = 0;
      socklen_t len = sizeof(err);
      getsockopt(c.fd, SOL_SOCKET, SO_ERROR, &err, &len);
      if (err != 0) {
        Fail(ErrnoText("connect", err));
        CloseConn(i);
        c.retry_at_ns = NowNs() + kReconnectDelayNs;
        down_.push_back(static_cast<int>(i));
        return;
      }
      c.connecting = false;
      SetWantWrite(i, false);
      MakeAvailable(i);
      if (closed_loop()) SendClosed(static_cast<int>(i), NowNs());
      return;
    }
    Flush(i);
  }

  void OnReadable(size_t i) {
    Conn& c = conns_[i];
    while (c.fd >= 0) {
      const ssize_t n = recv(c.fd, buf_.data(), buf_.size(), 0);
      if (n == 0) {
        // Peer closed: a close-delimited body ends here.
        if (!c.in_flight.empty() && c.parser.FinishOnClose()) {
          Complete(i);  // a close-delimited reply: Complete() also reconnects
          return;
        }
        if (c.in_flight.empty()) {
          CloseConn(i);
          Reconnect(i);
        } else {
          Drop(i, "connection closed by the server with requests in flight");
        }
        return;
      }
      if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK) return;
        Drop(i, ErrnoText("recv", errno));
        return;
      }
      size_t off = 0;
      const size_t len = static_cast<size_t>(n);
      while (off < len && c.fd >= 0) {
        if (c.in_flight.empty()) {
          Drop(i, "reply bytes with no request in flight");
          return;
        }
        size_t used = 0;
        const auto r = c.parser.Feed(buf_.data() + off, len - off, &used);
        off += used;
        if (r == ResponseParser::Result::kError) {
          Drop(i, "bad reply: " + c.parser.error());
          return;
        }
        if (r == ResponseParser::Result::kNeedMore) break;
        Complete(i);
      }
      if (static_cast<size_t>(n) < buf_.size()) return;  // drained the socket
    }
  }

  // The reply at the head of connection i's queue is complete.
  void Complete(size_t i) {
    Conn& c = conns_[i];
    const InFlight f = c.in_flight.front();
    c.in_flight.pop_front();
    const int status = c.parser.status();
    const bool close_after = c.parser.close_after();
    c.parser.Reset();
    const int64_t now = NowNs();
    Bump(progress_->completed);
    const bool ok = status >= 200 && status < 300;
    if (!ok) Bump(progress_->errors);
    if (ok && now >= s_->measure_start_ns && now < s_->measure_end_ns) {
      ++tally_.succeeded_in_window;
    }
    if (f.measured) {
      ++tally_.completed;
      if (ok) ++tally_.succeeded;
      if (status >= 0 && status < 600) {
        ++tally_.status[static_cast<size_t>(status)];
      } else {
        ++tally_.status_other;
      }
      s_->latency.Record(now - f.intended_ns);
      // Closed loop: intended == sent, so latency already is the service time.
      if (!closed_loop()) s_->service.Record(now - f.sent_ns);
      tally_.last_reply_ns = std::max(tally_.last_reply_ns, now);
    }
    if (close_after) {
      if (c.in_flight.empty()) {
        CloseConn(i);
        Reconnect(i);
      } else {
        Drop(i, "server closed a connection with pipelined requests in flight");
      }
      return;
    }
    MakeAvailable(i);
    if (closed_loop()) SendClosed(static_cast<int>(i), now);
  }

  // Closed loop: connection i sends its next request, if the run goes on.
  void SendClosed(int i, int64_t now) {
    if (schedule_done_) return;
    if (now >= s_->measure_end_ns || s_->stop.load(std::memory_order_relaxed)) {
      schedule_done_ = true;
      return;
    }
    bool measured = now >= s_->measure_start_ns;
    if (measured && s_->config.max_requests > 0) {
      // Relaxed: a ticket counter; each value is claimed by exactly one send.
      const uint64_t ticket = s_->closed_claimed.fetch_add(1, std::memory_order_relaxed);
      if (ticket >= s_->config.max_requests) {
        schedule_done_ = true;
        return;
      }
    }
    if (measured) ++tally_.scheduled;
    Send(i, now, measured, now);
  }

  // Open loop: moves every request whose intended time has come onto the
  // backlog, then hands the backlog to free connections in order.
  void Schedule(int64_t now) {
    DispatchBacklog();
    while (!schedule_done_ && static_cast<int64_t>(next_intended_ns_) <= now) {
      const int64_t intended = static_cast<int64_t>(next_intended_ns_);
      if (intended >= s_->measure_end_ns) {
        schedule_done_ = true;
        break;
      }
      const bool measured = intended >= s_->measure_start_ns;
      if (measured && budget_ > 0) {
        if (measured_scheduled_ == budget_) {
          schedule_done_ = true;
          break;
        }
        ++measured_scheduled_;
      }
      if (measured) ++tally_.scheduled;
      next_intended_ns_ += NextGap();
      // Sent in intended-time order: straight away while a connection is free,
      // else behind the requests already waiting for one.
      const int i = backlog_.empty() ? TakeAvailable() : -1;
      if (i >= 0) {
        Send(i, intended, measured, NowNs());
      } else {
        if (measured) ++tally_.waited;
        backlog_.push_back({intended, measured});
      }
    }
  }

  void DispatchBacklog() {
    while (!backlog_.empty()) {
      const int i = TakeAvailable();
      if (i < 0) break;
      const Due d = backlog_.front();
      backlog_.pop_front();
      Send(i, d.intended_ns, d.measured, NowNs());
    }
  }

  double NextGap() {
    if (s_->config.mode == LoadMode::kPoisson) {
      return -std::log(1.0 - uniform_(rng_)) * interval_ns_;
    }
    return interval_ns_;
  }

  size_t InFlightCount() const {
    size_t n = 0;
    for (const Conn& c : conns_) n += c.in_flight.size();
    return n;
  }

  // Waits for socket events until deadline_ns at the latest (nanosecond
  // precision where epoll_pwait2 exists: one syscall per wake-up, where a
  // timerfd would cost three).
  int WaitEvents(epoll_event* events, int max_events, int64_t now, int64_t deadline_ns) {
    const int64_t wait_ns = std::max<int64_t>(0, std::min(deadline_ns - now, kMaxWaitNs));
    if (have_pwait2_) {
      timespec ts{static_cast<time_t>(wait_ns / 1'000'000'000),
                  static_cast<long>(wait_ns % 1'000'000'000)};
      const int n = epoll_pwait2(epoll_, events, max_events, &ts, nullptr);
      if (n >= 0 || errno != ENOSYS) return n;
      have_pwait2_ = false;
    }
    return epoll_wait(epoll_, events, max_events,
                      static_cast<int>((wait_ns + 999'999) / 1'000'000));
  }

  void Loop() {
    if (closed_loop()) {
      for (size_t i = 0; i < conns_.size(); ++i) SendClosed(static_cast<int>(i), NowNs());
    }
    int64_t drain_deadline = kNever;
    std::vector<epoll_event> events(256);
    while (true) {
      const int64_t now = NowNs();
      if (s_->stop.load(std::memory_order_relaxed)) {
        stopped_ = true;
        break;
      }
      RetryDown(now);
      if (!closed_loop()) {
        Schedule(now);
      } else if (now >= s_->measure_end_ns) {
        schedule_done_ = true;
      }
      if (schedule_done_) {
        if (drain_deadline == kNever) drain_deadline = now + s_->config.drain_timeout_ns;
        if (backlog_.empty() && InFlightCount() == 0) break;
        if (now >= drain_deadline) break;
      }
      int64_t deadline = now + kMaxWaitNs;
      if (schedule_done_) {
        deadline = drain_deadline;
      } else if (!closed_loop()) {
        deadline = static_cast<int64_t>(next_intended_ns_);
      }
      const int n = WaitEvents(events.data(), static_cast<int>(events.size()), now, deadline);
      for (int k = 0; k < n; ++k) {
        const uint64_t tag = events[k].data.u64;
        const size_t i = static_cast<size_t>(tag);
        if (i >= conns_.size() || conns_[i].fd < 0) continue;
        const uint32_t e = events[k].events;
        if (e & EPOLLOUT) OnWritable(i);
        if (conns_[i].fd >= 0 && (e & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))) {
          OnReadable(i);
        }
      }
    }
    // Whatever is left: requests never written, replies never received.
    for (const Due& d : backlog_) {
      if (d.measured) ++tally_.unsent;
    }
    for (Conn& c : conns_) {
      for (const InFlight& f : c.in_flight) {
        Bump(progress_->errors);
        if (f.measured) ++tally_.timeouts;
      }
    }
  }

  void Finish() {
    for (size_t i = 0; i < conns_.size(); ++i) {
      conns_[i].in_flight.clear();
      CloseConn(i);
    }
    if (epoll_ >= 0) close(epoll_);
    std::lock_guard<std::mutex> lock(s_->mu);
    Tally& t = s_->total;
    t.scheduled += tally_.scheduled;
    t.sent += tally_.sent;
    t.completed += tally_.completed;
    t.succeeded += tally_.succeeded;
    t.io_errors += tally_.io_errors;
    t.timeouts += tally_.timeouts;
    t.unsent += tally_.unsent;
    t.waited += tally_.waited;
    t.succeeded_in_window += tally_.succeeded_in_window;
    for (size_t k = 0; k < t.status.size(); ++k) t.status[k] += tally_.status[k];
    t.status_other += tally_.status_other;
    t.first_ns = std::min(t.first_ns, tally_.first_ns);
    t.last_reply_ns = std::max(t.last_reply_ns, tally_.last_reply_ns);
    if (t.first_error.empty()) t.first_error = tally_.first_error;
    t.stopped = t.stopped || stopped_;
    if (--s_->running == 0) s_->done_cv.notify_all();
  }

  LoadGenerator::Shared* s_;
  WorkerProgress* progress_;
  std::vector<Conn> conns_;
  std::vector<int> available_;
  std::vector<int> down_;
  std::deque<Due> backlog_;
  std::array<char, 65536> buf_{};
  double interval_ns_ = 0;
  double next_intended_ns_ = 0;
  uint64_t budget_ = 0;
  uint64_t measured_scheduled_ = 0;
  size_t next_request_ = 0;
  bool schedule_done_ = false;
  bool stopped_ = false;
  int epoll_ = -1;
  bool have_pwait2_ = true;
  Tally tally_;
  std::mt19937_64 rng_;
  std::uniform_real_distribution<double> uniform_{0.0, 1.0};
};

}  // namespace

LoadGenerator::LoadGenerator(LoadgenConfig config)
    : shared_(std::make_unique<Shared>(std::move(config))) {}

LoadGenerator::~LoadGenerator() {
  Stop();
  for (auto& t : shared_->threads) {
    if (t.joinable()) t.join();
  }
  for (auto& list : shared_->fds) {
    for (int fd : list) {
      if (fd >= 0) close(fd);
    }
  }
}

Status LoadGenerator::Create(LoadgenConfig config, std::unique_ptr<LoadGenerator>* out) {
  AIARCH_RETURN_IF_ERROR(config.Validate());
  out->reset(new LoadGenerator(std::move(config)));
  return Status::Ok();
}

Status LoadGenerator::Start() {
  Shared& s = *shared_;
  {
    std::lock_guard<std::mutex> lock(s.mu);
    if (s.started) return Status::InvalidArgument("Start() was already called");
    s.started = true;
  }
  const LoadgenConfig& c = s.config;
  s.addr.sin_family = AF_INET;
  s.addr.sin_port = htons(static_cast<uint16_t>(c.port));
  inet_pton(AF_INET, c.host.c_str(), &s.addr.sin_addr);
  // Every connection is open before the schedule starts, so the first
  // requests do not pay for handshakes.
  s.fds.assign(static_cast<size_t>(c.threads), {});
  for (int k = 0; k < c.connections; ++k) {
    std::string error;
    const int fd = ConnectBlocking(s.addr, c.connect_timeout_ns, &error);
    if (fd < 0) {
      for (auto& list : s.fds) {
        for (int f : list) close(f);
        list.clear();
      }
      return Status::Unavailable("cannot connect to " + c.host + ":" + std::to_string(c.port) +
                                 ": " + error);
    }
    s.fds[static_cast<size_t>(k % c.threads)].push_back(fd);
  }
  // A little lead so every worker is waiting before the first intended time.
  s.t0_ns = NowNs() + 1'000'000;
  s.measure_start_ns = s.t0_ns + c.warmup_ns;
  s.measure_end_ns = c.duration_ns > 0 ? s.measure_start_ns + c.duration_ns : kNever;
  {
    std::lock_guard<std::mutex> lock(s.mu);
    s.running = c.threads;
  }
  // Pairs with the acquire load in Progress(): t0 and the window are set.
  s.launched.store(true, std::memory_order_release);
  for (int k = 0; k < c.threads; ++k) {
    std::vector<int> fds;
    fds.swap(s.fds[static_cast<size_t>(k)]);
    s.threads.emplace_back([&s, k, fds = std::move(fds)]() mutable {
      Worker w(&s, k, std::move(fds));
      w.Run();
    });
  }
  return Status::Ok();
}

bool LoadGenerator::Wait(int64_t timeout_ns) {
  Shared& s = *shared_;
  std::unique_lock<std::mutex> lock(s.mu);
  if (!s.started) return true;
  if (timeout_ns < 0) {
    s.done_cv.wait(lock, [&] { return s.running == 0; });
    return true;
  }
  return s.done_cv.wait_for(lock, std::chrono::nanoseconds(timeout_ns),
                            [&] { return s.running == 0; });
}

void LoadGenerator::Stop() {
  // Relaxed: a request to finish, polled by each worker at least every
  // kMaxWaitNs; it publishes no data.
  shared_->stop.store(true, std::memory_order_relaxed);
}

LoadgenProgress LoadGenerator::Progress() const {
  const Shared& s = *shared_;
  LoadgenProgress p;
  {
    for (size_t k = 0; k < static_cast<size_t>(s.config.threads); ++k) {
      p.sent += s.progress[k].sent.load(std::memory_order_relaxed);
      p.completed += s.progress[k].completed.load(std::memory_order_relaxed);
      p.errors += s.progress[k].errors.load(std::memory_order_relaxed);
    }
  }
  if (s.launched.load(std::memory_order_acquire)) {  // pairs with the store in Start()
    const int64_t now = NowNs();
    p.measuring = now >= s.measure_start_ns;
    p.elapsed_s = std::max<int64_t>(0, now - s.t0_ns) / 1e9;
  }
  {
    std::lock_guard<std::mutex> lock(s.mu);
    p.done = s.started && s.running == 0;
  }
  return p;
}

Status LoadGenerator::Result(LoadgenResult* out) const {
  Shared& s = *shared_;
  std::lock_guard<std::mutex> lock(s.mu);
  if (!s.started || s.running != 0) {
    return Status::Unavailable("the run has not finished; call Wait() first");
  }
  const Tally& t = s.total;
  out->latency = s.latency.Snapshot();
  out->service = s.config.mode == LoadMode::kClosed ? out->latency : s.service.Snapshot();
  out->send_lag = s.send_lag.Snapshot();
  out->scheduled = t.scheduled;
  out->sent = t.sent;
  out->completed = t.completed;
  out->succeeded = t.succeeded;
  out->io_errors = t.io_errors;
  out->timeouts = t.timeouts;
  out->unsent = t.unsent;
  out->waited_for_connection = t.waited;
  out->succeeded_in_window = t.succeeded_in_window;
  out->status_counts.clear();
  for (size_t k = 0; k < t.status.size(); ++k) {
    if (t.status[k] != 0) out->status_counts.emplace_back(static_cast<int>(k), t.status[k]);
  }
  if (t.status_other != 0) out->status_counts.emplace_back(-1, t.status_other);
  out->window_ns = t.first_ns == kNever ? 0 : std::max<int64_t>(0, t.last_reply_ns - t.first_ns);
  out->stopped = t.stopped;
  out->first_error = t.first_error;
  return Status::Ok();
}

}  // namespace aiarch
