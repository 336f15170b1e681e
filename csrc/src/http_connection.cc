#include "aiarch/http_connection.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/epoll.h>
#endif

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

namespace aiarch {
namespace {

// Headers the Python application reads (http.py `_WANTED`); the others are
// dropped when a request is forwarded.
constexpr std::string_view kForwardedHeaders[] = {
    "content-length",
    "content-type",
    "content-encoding",
    "accept-encoding",
    "expect",
    "authorization",
    "origin",
    "inference-header-content-length",
    "x-request-timeout-ms",
    "x-route-key",
    "traceparent",
    "tracestate",
};

bool AllDigits(std::string_view s) {
  if (s.empty() || s.size() > 18) return false;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
  }
  return true;
}

// Longest deadline a request may ask for: one day, as the Python application.
constexpr double kMaxTimeoutMs = 86'400'000;

// `text` as a plain decimal number (digits, optional fraction, optional
// exponent) of milliseconds in (0, kMaxTimeoutMs]. Every other spelling —
// out of range, nan, inf, hex, underscores — is left to the general path,
// which words the 400 (or accepts what Python's float() reads).
bool ParseTimeoutMs(std::string_view text, double* ms) {
  size_t i = 0, digits = 0;
  const auto run = [&] {
    const size_t from = i;
    while (i < text.size() && text[i] >= '0' && text[i] <= '9') ++i;
    return i - from;
  };
  digits += run();
  if (i < text.size() && text[i] == '.') {
    ++i;
    digits += run();
  }
  if (digits == 0) return false;
  if (i < text.size() && (text[i] == 'e' || text[i] == 'E')) {
    ++i;
    if (i < text.size() && (text[i] == '+' || text[i] == '-')) ++i;
    if (run() == 0) return false;
  }
  if (i != text.size() || text.size() > 64) return false;
  const std::string copy(text);
  *ms = std::strtod(copy.c_str(), nullptr);
  return *ms > 0 && *ms <= kMaxTimeoutMs;
}

// The body is declared as JSON (or not declared), or as the binary tensor
// extension's application/octet-stream framed by
// Inference-Header-Content-Length. Anything else is the general path's 415.
bool AcceptedContentType(const HttpRequest& req, bool has_header_length) {
  bool found = false;
  std::string_view media = req.Header("content-type", &found);
  if (!found) return true;
  media = media.substr(0, media.find(';'));
  while (!media.empty() && (media.back() == ' ' || media.back() == '\t')) media.remove_suffix(1);
  if (EqualsNoCase(media, "application/json")) return true;
  return has_header_length && EqualsNoCase(media, "application/octet-stream");
}

int HttpStatusOf(StatusCode code) {
  switch (code) {
    case StatusCode::kInvalidArgument:
    case StatusCode::kAlreadyExists:
    case StatusCode::kCancelled: return 400;
    case StatusCode::kNotFound: return 404;
    case StatusCode::kResourceExhausted: return 429;
    case StatusCode::kDeadlineExceeded: return 504;
    case StatusCode::kUnavailable: return 503;
    default: return 500;
  }
}

// Splits "/v2/models/{m}[/versions/{v}]/infer"; false for any other path or
// for a percent-encoded one (model names never need encoding).
bool MatchInferPath(std::string_view path, std::string_view* model, std::string_view* version) {
  constexpr std::string_view kPrefix = "/v2/models/";
  constexpr std::string_view kSuffix = "/infer";
  if (path.size() <= kPrefix.size() + kSuffix.size() || path.substr(0, kPrefix.size()) != kPrefix ||
      path.substr(path.size() - kSuffix.size()) != kSuffix ||
      path.find('%') != std::string_view::npos) {
    return false;
  }
  std::string_view rest =
      path.substr(kPrefix.size(), path.size() - kPrefix.size() - kSuffix.size());
  const size_t slash = rest.find('/');
  *version = {};
  if (slash == std::string_view::npos) {
    *model = rest;
    return !rest.empty();
  }
  *model = rest.substr(0, slash);
  std::string_view tail = rest.substr(slash + 1);
  constexpr std::string_view kVersions = "versions/";
  if (tail.substr(0, kVersions.size()) != kVersions) return false;
  *version = tail.substr(kVersions.size());
  return !model->empty() && !version->empty() && version->find('/') == std::string_view::npos;
}

// "/predict/{m}"; false for any other path or a percent-encoded one.
bool MatchPredictPath(std::string_view path, std::string_view* model) {
  constexpr std::string_view kPrefix = "/predict/";
  if (path.size() <= kPrefix.size() || path.substr(0, kPrefix.size()) != kPrefix) return false;
  *model = path.substr(kPrefix.size());
  return model->find('/') == std::string_view::npos && model->find('%') == std::string_view::npos;
}

}  // namespace

HttpConnection::HttpConnection(std::shared_ptr<HttpFront> front, uint64_t id)
    : front_(std::move(front)), id_(id), parser_(front_->config_.limits) {}

HttpConnection::~HttpConnection() {
  StopReading();
  if (socket_ >= 0) ::close(socket_);
}

HttpConnection::Slot& HttpConnection::NewSlot() {
  slots_.emplace_back();
  slots_.back().seq = next_seq_++;
  return slots_.back();
}

HttpConnection::Slot* HttpConnection::FindSlot(uint64_t seq) {
  if (slots_.empty() || seq < slots_.front().seq) return nullptr;
  const uint64_t index = seq - slots_.front().seq;
  return index < slots_.size() ? &slots_[index] : nullptr;
}

void HttpConnection::Fill(Slot& slot, bool keep_alive) {
  slot.ready = true;
  slot.close = !keep_alive;
}

void HttpConnection::Error(Slot& slot, int status, std::string_view message, bool keep_alive,
                           const std::vector<std::pair<std::string, std::string>>& headers) {
  AppendErrorResponse(status, message, headers, keep_alive, &slot.bytes);
  Fill(slot, keep_alive);
}

void HttpConnection::ErrorFromStatus(Slot& slot, const Status& status, bool keep_alive) {
  const int http = HttpStatusOf(status.code());
  std::vector<std::pair<std::string, std::string>> headers;
  if (http == 429) {
    const double retry = status.retry_after_s();
    const double seconds = retry > 0 ? std::max(1.0, std::ceil(retry)) : 1.0;
    headers.emplace_back("retry-after", std::to_string(static_cast<int64_t>(seconds)));
  }
  std::string message = status.message();
  if (message.empty()) message = StatusCodeName(status.code());
  Error(slot, http, message, keep_alive, headers);
}

void HttpConnection::Flush() {
  while (!slots_.empty() && slots_.front().ready) {
    Slot& s = slots_.front();
    out_.append(s.bytes);
    if (s.close) {
      closing_ = true;
      slots_.pop_front();
      // Nothing after a closing response is ever written.
      for (Slot& rest : slots_) {
        if (rest.request_id != 0) rest.batcher->Cancel(rest.request_id);
      }
      slots_.clear();
      return;
    }
    slots_.pop_front();
  }
}

void HttpConnection::FlushTouching(std::vector<std::shared_ptr<HttpConnection>>* touched) {
  const bool had_output = !out_.empty();
  Flush();
  if (!had_output && !out_.empty()) touched->push_back(shared_from_this());
}

bool HttpConnection::AttachSocket(int fd) {
  StopReading();
  if (socket_ >= 0) ::close(socket_);
  socket_ = fd >= 0 ? ::fcntl(fd, F_DUPFD_CLOEXEC, 0) : -1;
  return socket_ >= 0;
}

bool HttpConnection::StartReading() {
  if (socket_ < 0 || closed_ || front_->read_fd_ < 0) return false;
  reader_ = true;
  front_->readers_[id_] = this;
  if (!set_reading(true)) {
    StopReading();
    return false;
  }
  return true;
}

bool HttpConnection::set_reading(bool on) {
#ifdef __linux__
  if (!reader_ || on == watched_) return watched_ == on;
  // Paused means out of the set: a paused socket the peer reset would
  // otherwise be reported (EPOLLERR/EPOLLHUP) on every call.
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = id_;
  if (on) {
    watched_ = epoll_ctl(front_->read_fd_, EPOLL_CTL_ADD, socket_, &ev) == 0;
  } else {
    epoll_ctl(front_->read_fd_, EPOLL_CTL_DEL, socket_, &ev);
    watched_ = false;
  }
  return watched_ == on;
#else
  (void)on;
  return false;
#endif
}

void HttpConnection::StopReading() {
  if (!reader_) return;
  set_reading(false);
  reader_ = false;
  front_->readers_.erase(id_);
}

bool HttpConnection::WriteDirect() {
  if (closed_) return true;  // the caller has nothing to write for it either
  if (!direct_writes() || closing_ || front_->draining_) return false;
  size_t sent = 0;
  while (sent < out_.size()) {
    const ssize_t n =
        ::send(socket_, out_.data() + sent, out_.size() - sent, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      sent += static_cast<size_t>(n);
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else {
      break;  // the kernel's buffer is full, or the send failed: the caller's transport
              // writes the rest (it waits for the socket, or reports the error)
    }
  }
  out_.erase(0, sent);
  return out_.empty();
}

void HttpConnection::Respond(uint64_t slot, std::string_view bytes, bool keep_alive) {
  if (closed_) return;
  Slot* s = FindSlot(slot);
  if (s == nullptr || s->ready) return;
  s->bytes.assign(bytes);
  Fill(*s, keep_alive);
  Flush();
}

std::string HttpConnection::TakeOutput() {
  std::string out;
  out.swap(out_);
  return out;
}

void HttpConnection::Close() {
  if (closed_) return;
  closed_ = true;
  closing_ = true;
  stop_parsing_ = true;
  StopReading();
  if (socket_ >= 0) {
    ::close(socket_);
    socket_ = -1;
  }
  for (Slot& s : slots_) {
    if (s.request_id != 0) s.batcher->Cancel(s.request_id);
  }
  slots_.clear();
  out_.clear();
}

void HttpConnection::Feed(const char* data, size_t size, std::vector<ForwardedRequest>* forwarded,
                          double now) {
  last_active_ = now;
  if (stop_parsing_ || closed_) return;  // a request that closes: the rest is dropped
  parser_.Feed(data, size);
  HttpRequest& req = request_;  // reused: its header list keeps its capacity across reads
  bool completed_some = false;
  while (!stop_parsing_) {
    const auto r = parser_.Next(&req);
    if (r == HttpRequestParser::Result::kNeedMore) {
      if (parser_.TakeContinue() && slots_.empty()) out_.append("HTTP/1.1 100 Continue\r\n\r\n");
      break;
    }
    if (r == HttpRequestParser::Result::kError) {
      // Parser state is lost: answer after what is owed, then close.
      Fail(parser_.error_status(), parser_.error_message());
      return;
    }
    completed_some = true;
    const bool keep = req.keep_alive && !front_->draining();
    Slot& slot = NewSlot();
    if (!keep) stop_parsing_ = true;  // the rest of the input is not read
    const bool traced = front_->trace_every_ != 0 && front_->SampleTrace(req);
    std::unique_ptr<TracedRequest> trace;
    if (traced && front_->trace_native_) trace = front_->StartTrace(req);
    if ((!traced || trace) && HandleNative(req, slot, keep, trace ? &trace : nullptr)) continue;
    ForwardedRequest f;
    f.slot = slot.seq;
    f.method.assign(req.method);
    f.path.assign(req.path);
    f.query.assign(req.query);
    for (const auto& h : req.headers) {
      for (std::string_view wanted : kForwardedHeaders) {
        if (EqualsNoCase(h.name, wanted)) {
          f.headers.emplace_back(std::string(wanted), std::string(h.value));
          break;
        }
      }
    }
    f.body.assign(req.body);
    f.keep_alive = keep;
    f.traced = traced;
    forwarded->push_back(std::move(f));
  }
  UpdatePhase(now, completed_some);
  Flush();
}

void HttpConnection::UpdatePhase(double now, bool completed_some) {
  if (stop_parsing_ || !parser_.in_request()) {
    phase_ = Phase::kNone;
    return;
  }
  // A request completed in this read: what is buffered now began in it.
  if (phase_ == Phase::kNone || completed_some) {
    phase_ = Phase::kHead;
    phase_since_ = now;
  }
  if (phase_ == Phase::kHead && parser_.in_body()) {
    phase_ = Phase::kBody;
    phase_since_ = now;
  }
}

void HttpConnection::Fail(int status, std::string_view message) {
  if (closed_ || stop_parsing_) return;  // already closing: nothing more is answered
  Slot& slot = NewSlot();
  Error(slot, status, message, false);
  linger_ = true;
  stop_parsing_ = true;
  phase_ = Phase::kNone;
  Flush();
}

bool HttpConnection::HandleNative(const HttpRequest& req, Slot& slot, bool keep_alive,
                                  std::unique_ptr<TracedRequest>* trace) {
  if (req.method != "POST") return false;
  std::string_view model_name, version;
  bool predict = false;
  if (!MatchInferPath(req.path, &model_name, &version)) {
    if (!MatchPredictPath(req.path, &model_name)) return false;
    predict = true;
  }
  std::shared_ptr<HttpFront::Model> model = front_->Find(model_name);
  HttpFront::Route* route = nullptr;
  if (model) {
    if (!version.empty() && version != model->v2.version) return false;
  } else {
    route = front_->FindRoute(model_name);
    if (route == nullptr) return false;
    if (!version.empty()) {  // a version asked for by name is not a pick
      model = route->ArmServing(version);
      if (!model) return false;  // the general path words the 404
      route = nullptr;
    } else {
      model = route->arms.front();  // decodes for every arm: they share inputs and outputs
    }
  }
  bool found = false;
  if (!req.Header("content-encoding", &found).empty() || found) return false;
  const std::string_view accept = req.Header("accept-encoding");
  if (accept.find("gzip") != std::string_view::npos ||
      accept.find("deflate") != std::string_view::npos) {
    return false;  // compressed responses are the general path's
  }
  int64_t header_length = -1;
  if (!predict) {  // (/predict bodies are JSON only)
    const std::string_view hlen = req.Header("inference-header-content-length", &found);
    if (found) {
      if (!AllDigits(hlen)) return false;  // the general path words this 400
      header_length = std::strtoll(std::string(hlen).c_str(), nullptr, 10);
    }
  }
  if (!AcceptedContentType(req, header_length >= 0)) return false;  // the general path's 415
  double header_timeout_ms = 0;
  const std::string_view hto = req.Header("x-request-timeout-ms", &found);
  if (found && !ParseTimeoutMs(hto, &header_timeout_ms)) {
    return false;  // out of range or not a plain number: the general path words the 400
  }

  std::unique_ptr<HttpFront::Pending> pending = front_->NewPending();
  V2InferRequest decoded;  // decoded into the record's recycled lists
  decoded.inputs = std::move(pending->inputs);
  decoded.plan = std::move(pending->plan);
  std::string error;
  if (predict) {
    if (DecodePredict(req.body, model->v2, &decoded.inputs) != V2DecodeResult::kOk) return false;
    decoded.plan.predict = true;
  } else {
    switch (DecodeV2Infer(req.body, header_length, model->v2, &decoded, &error)) {
      case V2DecodeResult::kNotHandled: return false;
      case V2DecodeResult::kBadRequest:
        Error(slot, 400, error, keep_alive);
        if (trace != nullptr) {
          (*trace)->model = model->batcher->name();
          front_->FinishTrace(std::move(*trace), &slot.bytes);
        }
        return true;
      case V2DecodeResult::kOk: break;
    }
  }
  if (route != nullptr) {
    std::string_view key;
    const std::string_view* keyed = nullptr;
    if (decoded.route_key_kind == V2InferRequest::RouteKey::kOther) return false;
    if (decoded.route_key_kind == V2InferRequest::RouteKey::kText) {
      key = decoded.route_key;
      keyed = &key;
    } else {
      key = req.Header("x-route-key", &found);
      if (found) keyed = &key;
    }
    model = front_->PickArm(*route, keyed);
    if (route->shadow) {
      pending->shadow = route->shadow;
      pending->shadow_fraction = route->shadow_fraction;
      pending->shadow_max_in_flight = route->shadow_max_in_flight;
      pending->shadow_stats = route->shadow_stats;
    }
  }
  int64_t timeout_ns = front_->config_.default_timeout_ns;
  if (decoded.timeout_us > 0) {
    timeout_ns = decoded.timeout_us * 1000;
  } else if (header_timeout_ms > 0) {
    timeout_ns = std::max<int64_t>(1, static_cast<int64_t>(header_timeout_ms * 1e6));
  }
  pending->inputs = std::move(decoded.inputs);
  pending->plan = std::move(decoded.plan);
  pending->timeout_ns = timeout_ns;
  pending->priority = decoded.priority;
  pending->conn = shared_from_this();
  pending->model = std::move(model);
  pending->slot = slot.seq;
  pending->keep_alive = keep_alive;
  if (trace != nullptr) {
    (*trace)->model = pending->model->batcher->name();
    pending->trace = std::move(*trace);
  }
  front_->decoded_.push_back(std::move(pending));  // submitted by the iteration's RunReady()
  return true;
}

}  // namespace aiarch
