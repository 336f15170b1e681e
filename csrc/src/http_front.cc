// HttpFront (declared in aiarch/http_connection.h with the connection it
// serves): native reads, models and canary routes, submits to the batchers,
// and completions encoded into their connections.
#include <sys/socket.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/epoll.h>
#endif

#include <array>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <random>
#include <string>

#include "aiarch/http_connection.h"

namespace aiarch {
namespace {

// One element of a little-endian tensor as a double; half-precision floats
// (rare as scores) read as NaN, which the feedback join skips.
double ElementAsDouble(DType dtype, const uint8_t* p) {
  auto as = [p](auto v) {
    std::memcpy(&v, p, sizeof(v));
    return static_cast<double>(v);
  };
  switch (dtype) {
    case DType::kBool:
    case DType::kUint8: return as(uint8_t{});
    case DType::kUint16: return as(uint16_t{});
    case DType::kUint32: return as(uint32_t{});
    case DType::kUint64: return as(uint64_t{});
    case DType::kInt8: return as(int8_t{});
    case DType::kInt16: return as(int16_t{});
    case DType::kInt32: return as(int32_t{});
    case DType::kInt64: return as(int64_t{});
    case DType::kFp32: return as(float{});
    case DType::kFp64: return as(double{});
    case DType::kFp16:
    case DType::kBf16: break;
  }
  return std::nan("");
}

// The response of a v2 infer or a /predict request.
bool AppendResponse(const V2Model& model, const V2ResponsePlan& plan,
                    const std::vector<TensorSpec>& outputs, const std::vector<const uint8_t*>& data,
                    int64_t rows, bool keep_alive, std::string* out, std::string* error) {
  if (plan.predict)
    return AppendPredictResponse(model, outputs, data, rows, keep_alive, out, error);
  return AppendV2InferResponse(model, plan, outputs, data, rows, keep_alive, out, error);
}

// The W3C trace-flags of a traceparent ("00-<32 hex>-<16 hex>-<2 hex>") ask
// for sampling. Only the flag is read here; the Python path validates the rest
// and starts a new trace for a malformed value.
bool TraceparentSampled(std::string_view v) {
  if (v.size() < 55 || v[2] != '-' || v[35] != '-' || v[52] != '-') return false;
  const char flags = v[54];
  return flags == '1' || flags == '3' || flags == '5' || flags == '7' || flags == '9' ||
         flags == 'b' || flags == 'd' || flags == 'f' || flags == 'B' || flags == 'D' ||
         flags == 'F';
}

// `s` read as lowercase hex digits; false when a character is not one.
bool LowerHex(std::string_view s, uint64_t* value) {
  uint64_t v = 0;
  for (char c : s) {
    int d;
    if (c >= '0' && c <= '9') {
      d = c - '0';
    } else if (c >= 'a' && c <= 'f') {
      d = c - 'a' + 10;
    } else {
      return false;
    }
    v = (v << 4) | static_cast<uint64_t>(d);
  }
  *value = v;
  return true;
}

// A W3C traceparent the Python path's propagator accepts as a parent:
// "vv-<32 hex>-<16 hex>-ff" in lowercase hex, version not ff, nothing after
// the flags for version 00 (a later version may add "-..."), trace and
// parent ids not zero. Returns its trace id.
bool ValidTraceparent(std::string_view v, uint64_t* high, uint64_t* low) {
  if (v.size() < 55 || v[2] != '-' || v[35] != '-' || v[52] != '-') return false;
  if (v.size() > 55 && v[55] != '-') return false;
  uint64_t version = 0, parent = 0, flags = 0;
  if (!LowerHex(v.substr(0, 2), &version) || version == 0xff) return false;
  if (version == 0 && v.size() != 55) return false;
  if (!LowerHex(v.substr(3, 16), high) || !LowerHex(v.substr(19, 16), low) ||
      !LowerHex(v.substr(36, 16), &parent) || !LowerHex(v.substr(53, 2), &flags)) {
    return false;
  }
  return (*high != 0 || *low != 0) && parent != 0;
}

// Random span and trace ids, as the OpenTelemetry SDK's (never zero).
uint64_t RandomId() {
  thread_local std::mt19937_64 engine{std::random_device{}()};
  uint64_t id = 0;
  while (id == 0) id = engine();
  return id;
}

int64_t SteadyNowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// The status code of a response's status line ("HTTP/1.1 200 OK").
int ResponseStatus(std::string_view bytes) {
  if (bytes.size() < 12 || bytes[8] != ' ') return 0;
  int status = 0;
  for (size_t i = 9; i < 12; ++i) {
    if (bytes[i] < '0' || bytes[i] > '9') return 0;
    status = status * 10 + (bytes[i] - '0');
  }
  return status;
}

// CRC-32 (IEEE 802.3, as zlib.crc32): the Python router's key hash, so a
// key gets the same arm whichever front end answers it.
uint32_t Crc32(std::string_view bytes) {
  static const std::array<uint32_t, 256> table = [] {
    std::array<uint32_t, 256> t{};
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      t[i] = c;
    }
    return t;
  }();
  uint32_t crc = 0xFFFFFFFFu;
  for (const char ch : bytes) crc = table[(crc ^ static_cast<uint8_t>(ch)) & 0xFF] ^ (crc >> 8);
  return crc ^ 0xFFFFFFFFu;
}

// SplitMix64 of a counter: a uniform 64-bit draw, cheap and state-free.
uint64_t SplitMix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

}  // namespace

std::unique_ptr<TracedRequest> HttpFront::StartTrace(const HttpRequest& req) {
  auto t = std::make_unique<TracedRequest>();
  t->start_ns = SteadyNowNs();
  t->path.assign(req.path);
  const std::string_view parent = req.Header("traceparent");
  if (ValidTraceparent(parent, &t->trace_id_high, &t->trace_id_low)) {
    t->traceparent.assign(parent);
    t->tracestate.assign(req.Header("tracestate"));
  } else {  // a new trace: a malformed parent is ignored, as W3C Trace Context asks
    t->trace_id_high = RandomId();
    t->trace_id_low = RandomId();
  }
  t->span_id = RandomId();
  return t;
}

void HttpFront::FinishTrace(std::unique_ptr<TracedRequest> trace, std::string* bytes) {
  trace->end_ns = SteadyNowNs();
  trace->status = ResponseStatus(*bytes);
  const size_t eol = bytes->find("\r\n");
  if (eol != std::string::npos) {
    char header[128];
    const int n =
        std::snprintf(header, sizeof(header), "traceparent: 00-%016llx%016llx-%016llx-01\r\n",
                      static_cast<unsigned long long>(trace->trace_id_high),
                      static_cast<unsigned long long>(trace->trace_id_low),
                      static_cast<unsigned long long>(trace->span_id));
    bytes->insert(eol + 2, header, static_cast<size_t>(n));
  }
  if (traces_.size() >= kMaxTraces) {
    ++traces_dropped_;
    return;
  }
  traces_.push_back(std::move(*trace));
}

std::vector<TracedRequest> HttpFront::TakeTraces() {
  std::vector<TracedRequest> out;
  out.swap(traces_);
  return out;
}

bool HttpFront::SampleTrace(const HttpRequest& req) {
  if (++trace_count_ >= trace_every_) {
    trace_count_ = 0;
    return true;
  }
  return TraceparentSampled(req.Header("traceparent"));
}

Status HttpFront::Create(HttpFrontConfig config, std::shared_ptr<HttpFront>* out) {
  std::shared_ptr<CompletionQueue> queue;
  AIARCH_RETURN_IF_ERROR(CompletionQueue::Create(&queue));
  int read_fd = -1;
#ifdef __linux__
  read_fd = epoll_create1(EPOLL_CLOEXEC);
  if (read_fd < 0)
    return Status::Internal(std::string("epoll_create1 failed: ") + std::strerror(errno));
#endif
  out->reset(new HttpFront(config, std::move(queue), read_fd));
  return Status::Ok();
}

HttpFront::~HttpFront() {
  if (read_fd_ >= 0) ::close(read_fd_);
}

void HttpFront::ReadReady(double now, size_t max_owed, std::vector<ReadEvent>* events) {
#ifdef __linux__
  // Level-triggered and one read per socket per call: a socket with more to
  // read keeps the set readable, so the next loop iteration comes back to it
  // after every other connection had its turn.
  constexpr size_t kReadBytes = 256 * 1024;
  std::array<epoll_event, 256> ready;
  const int n = epoll_wait(read_fd_, ready.data(), static_cast<int>(ready.size()), 0);
  if (n <= 0) return;
  if (read_buffer_.size() < kReadBytes) read_buffer_.resize(kReadBytes);
  std::vector<ForwardedRequest> forwarded;
  for (int i = 0; i < n; ++i) {
    const auto it = readers_.find(ready[i].data.u64);
    if (it == readers_.end()) continue;
    HttpConnection& conn = *it->second;
    ssize_t got;
    do {
      got = ::recv(conn.socket_, read_buffer_.data(), read_buffer_.size(), MSG_DONTWAIT);
    } while (got < 0 && errno == EINTR);
    if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) continue;
    if (got <= 0) {
      const int ended = got == 0 ? kEndOfInput : errno;
      conn.StopReading();
      events->push_back(ReadEvent{conn.id(), {}, ended});
      continue;
    }
    conn.Feed(read_buffer_.data(), static_cast<size_t>(got), &forwarded, now);
    if (!forwarded.empty() || draining_ || conn.NeedsWrite(max_owed)) {
      events->push_back(ReadEvent{conn.id(), std::move(forwarded), 0});
      forwarded.clear();
    }
  }
#else
  (void)now;
  (void)max_owed;
  (void)events;
#endif
}

void HttpFront::RegisterModel(V2Model model, Batcher* batcher, std::shared_ptr<void> owner,
                              bool record_predictions) {
  auto m = std::make_shared<Model>();
  m->v2 = std::move(model);
  m->batcher = batcher;
  m->owner = std::move(owner);
  m->record = record_predictions;
  const std::string name = m->v2.name;
  models_[name] = std::move(m);
}

bool HttpFront::UnregisterModel(const std::string& name) { return models_.erase(name) > 0; }

std::shared_ptr<HttpFront::Model> HttpFront::MakeModel(RouteArm& a) {
  auto m = std::make_shared<Model>();
  m->v2 = std::move(a.model);
  m->batcher = a.batcher;
  m->owner = std::move(a.owner);
  m->record = a.record_predictions;
  return m;
}

void HttpFront::RegisterRoute(const std::string& name, std::vector<RouteArm> arms,
                              const Shadow* shadow) {
  auto route = std::make_unique<Route>();
  for (RouteArm& a : arms) {
    route->total += a.weight;
    route->bounds.push_back(route->total);
    route->arms.push_back(MakeModel(a));
  }
  route->picks.assign(route->arms.size(), 0);
  if (shadow != nullptr && shadow->fraction > 0) {
    RouteArm arm = shadow->arm;
    arm.record_predictions = false;  // a mirrored answer is never a prediction served
    route->shadow = MakeModel(arm);
    route->shadow_fraction = shadow->fraction;
    route->shadow_max_in_flight = shadow->max_in_flight;
    std::shared_ptr<ShadowStats>& stats = shadow_stats_[name];
    if (!stats) stats = std::make_shared<ShadowStats>();
    route->shadow_stats = stats;
  }
  if (route->total == 0) {  // no arm takes traffic: nothing to serve here
    routes_.erase(name);
    return;
  }
  routes_[name] = std::move(route);
}

bool HttpFront::UnregisterRoute(const std::string& name) { return routes_.erase(name) > 0; }

std::vector<std::string> HttpFront::registered_routes() const {
  std::vector<std::string> names;
  for (const auto& kv : routes_) names.push_back(kv.first);
  return names;
}

std::vector<uint64_t> HttpFront::TakeRoutePicks(const std::string& name) {
  auto it = routes_.find(name);
  if (it == routes_.end()) return {};
  std::vector<uint64_t> picks(it->second->picks.size(), 0);
  picks.swap(it->second->picks);
  return picks;
}

std::vector<std::tuple<std::string, std::string, uint64_t>> HttpFront::TakeShadowCounts(
    const std::string& name) {
  std::vector<std::tuple<std::string, std::string, uint64_t>> out;
  auto it = shadow_stats_.find(name);
  if (it == shadow_stats_.end()) return out;
  static const char* const kOutcomes[4] = {"ok", "failed", "cancelled", "skipped"};
  for (auto& [version, counts] : it->second->counts) {
    for (size_t k = 0; k < counts.size(); ++k) {
      if (counts[k] != 0) out.emplace_back(version, kOutcomes[k], counts[k]);
      counts[k] = 0;
    }
  }
  return out;
}

HttpFront::Route* HttpFront::FindRoute(std::string_view name) const {
  if (routes_.empty()) return nullptr;
  auto it = routes_.find(std::string(name));
  return it == routes_.end() ? nullptr : it->second.get();
}

std::shared_ptr<HttpFront::Model> HttpFront::Route::ArmServing(std::string_view version) const {
  for (const auto& arm : arms) {
    if (arm->v2.version == version) return arm;
  }
  return nullptr;
}

const std::shared_ptr<HttpFront::Model>& HttpFront::PickArm(Route& route,
                                                            const std::string_view* key) {
  // As the Python router: the point is the key's CRC-32 modulo the total
  // weight, else a uniform draw; the first arm whose cumulative weight
  // exceeds it, else the last.
  const uint64_t point =
      key != nullptr ? Crc32(*key) % route.total
                     : static_cast<uint64_t>(static_cast<double>(SplitMix64(++route_draws_) >> 11) *
                                             0x1.0p-53 * static_cast<double>(route.total));
  size_t i = route.arms.size() - 1;
  for (size_t k = 0; k < route.bounds.size(); ++k) {
    if (point < route.bounds[k]) {
      i = k;
      break;
    }
  }
  ++route.picks[i];
  return route.arms[i];
}

std::vector<std::string> HttpFront::registered() const {
  std::vector<std::string> names;
  for (const auto& kv : models_) names.push_back(kv.first);
  return names;
}

std::shared_ptr<HttpFront::Model> HttpFront::Find(std::string_view name) const {
  auto it = models_.find(std::string(name));
  return it == models_.end() ? nullptr : it->second;
}

void HttpFront::Record(const Model& model, const std::string& id, const TensorSpec& spec,
                       const uint8_t* row) {
  if (recorded_count_ >= kMaxRecordedPredictions) {
    ++predictions_dropped_;
    return;
  }
  // By name and version: the arms of a route share their public name.
  RecordedPredictions& r = recorded_[model.v2.name + '\n' + model.v2.version];
  const size_t width = static_cast<size_t>(spec.RowElements());
  if (r.ids.empty()) {
    r.model = model.v2.name;
    r.version = model.v2.version;
    r.width = width;
  }
  r.ids.push_back(id);
  const size_t size = DTypeSize(spec.dtype);
  for (size_t i = 0; i < width; ++i)
    r.values.push_back(ElementAsDouble(spec.dtype, row + i * size));
  ++recorded_count_;
}

std::vector<RecordedPredictions> HttpFront::TakePredictions() {
  std::vector<RecordedPredictions> out;
  out.reserve(recorded_.size());
  for (auto& kv : recorded_) out.push_back(std::move(kv.second));
  recorded_.clear();
  recorded_count_ = 0;
  return out;
}

std::shared_ptr<HttpConnection> HttpFront::Connect(uint64_t id) {
  return std::make_shared<HttpConnection>(shared_from_this(), id);
}

void HttpFront::CountMirrored(const Pending& p, const Status& status) {
  ShadowStats& stats = *p.mirror_of;
  --stats.in_flight;
  const size_t outcome = status.ok() ? 0 : status.code() == StatusCode::kCancelled ? 2 : 1;
  ++stats.counts[p.model->v2.version][outcome];
}

void HttpFront::Mirror(const Pending& p) {
  // As the Python router's mirror: a uniform draw under the fraction, then
  // the in-flight cap; the mirrored request has no deadline and no priority.
  const double draw = static_cast<double>(SplitMix64(++route_draws_) >> 11) * 0x1.0p-53;
  if (draw >= p.shadow_fraction) return;
  ShadowStats& stats = *p.shadow_stats;
  if (stats.in_flight >= p.shadow_max_in_flight) {
    ++stats.counts[p.shadow->v2.version][3];
    return;
  }
  auto m = std::make_unique<Pending>();
  m->model = p.shadow;
  m->inputs = p.inputs;  // its own copy: the arm's request owns its buffers
  m->mirror_of = p.shadow_stats;
  ++stats.in_flight;
  Submit(std::move(m));
}

std::unique_ptr<HttpFront::Pending> HttpFront::NewPending() {
  if (spare_.empty()) return std::make_unique<Pending>();
  std::unique_ptr<Pending> p = std::move(spare_.back());
  spare_.pop_back();
  return p;
}

void HttpFront::Recycle(std::unique_ptr<Pending> p) {
  if (spare_.size() >= kMaxSpare) return;
  std::vector<V2DecodedInput> inputs = std::move(p->inputs);
  V2ResponsePlan plan = std::move(p->plan);
  *p = Pending();  // drops every reference (connection, model, trace, shadow)
  inputs.clear();  // the tensors' bytes go; the list's capacity stays
  plan.Clear();
  p->inputs = std::move(inputs);
  p->plan = std::move(plan);
  spare_.push_back(std::move(p));
}

Status HttpFront::SubmitToBatcher(const Pending& p, uint64_t* request_id, CachedResponse* hit) {
  // The batcher copies what it keeps, and a submit never comes back here, so
  // one set of arguments serves every submit.
  SubmitArgs& args = submit_args_;
  const auto& specs = p.model->v2.inputs;
  args.inputs.resize(p.inputs.size());
  for (size_t i = 0; i < p.inputs.size(); ++i) {
    const V2DecodedInput& in = p.inputs[i];
    SubmitArgs::Input& arg = args.inputs[i];
    arg.data = in.data.data();
    arg.bytes = in.data.size();
    arg.dtype = specs[i].dtype;
    arg.shape.assign(in.shape.begin(), in.shape.end());
    arg.contiguous = true;
  }
  args.timeout_ns = p.timeout_ns;
  args.priority = p.priority;
  if (args.sink == nullptr) args.sink = queue_;
  Batcher& batcher = *p.model->batcher;
  args.caller_flushes = batcher.config().inline_execution;
  const Status st = batcher.Submit(args, request_id, hit);
  if (st.ok() && *request_id != 0 && args.caller_flushes) MarkDirty(p.model);
  return st;
}

void HttpFront::Submit(std::unique_ptr<Pending> p) {
  uint64_t request_id = 0;
  CachedResponse hit;
  if (p->conn == nullptr) {  // a mirrored request: counted, never answered
    const Status st = SubmitToBatcher(*p, &request_id, &hit);
    if (!st.ok() || request_id == 0) {
      CountMirrored(*p, st);
      return;
    }
    pending_.emplace(request_id, std::move(p));
    return;
  }
  HttpConnection& conn = *p->conn;
  if (conn.closed_) return;
  HttpConnection::Slot* slot = conn.FindSlot(p->slot);
  if (slot == nullptr) return;  // dropped behind a response that closed the connection
  const std::shared_ptr<Model>& model = p->model;
  if (p->trace) p->trace->submit_ns = SteadyNowNs();
  const Status st = SubmitToBatcher(*p, &request_id, &hit);
  if (!st.ok()) {
    conn.ErrorFromStatus(*slot, st, p->keep_alive);
    if (p->trace) {
      p->trace->error = st.message();
      FinishTrace(std::move(p->trace), &slot->bytes);
    }
    conn.FlushTouching(&touched_);
    return;
  }
  if (request_id == 0) {  // answered from the cache
    std::vector<const uint8_t*> rows;
    for (size_t off : hit.offsets) rows.push_back(hit.data->data() + off);
    std::string error;
    if (!AppendResponse(model->v2, p->plan, *hit.specs, rows, hit.rows, p->keep_alive, &slot->bytes,
                        &error)) {
      slot->bytes.clear();
      conn.Error(*slot, 500, error, p->keep_alive);
    } else {
      conn.Fill(*slot, p->keep_alive);
      if (model->record && p->plan.has_id && hit.rows > 0) {
        Record(*model, p->plan.id, (*hit.specs)[0], rows[0]);
      }
    }
    if (p->trace) {
      p->trace->cache_hit = true;
      FinishTrace(std::move(p->trace), &slot->bytes);
    }
    conn.FlushTouching(&touched_);
    if (p->shadow) Mirror(*p);
    return;
  }
  slot->request_id = request_id;
  slot->batcher = model->batcher;
  if (p->shadow) Mirror(*p);
  pending_.emplace(request_id, std::move(p));
}

void HttpFront::MarkDirty(const std::shared_ptr<Model>& model) {
  for (const auto& m : dirty_) {
    if (m->batcher == model->batcher) return;
  }
  dirty_.push_back(model);
}

int HttpFront::RunReady() {
  std::vector<std::unique_ptr<Pending>> decoded;
  decoded.swap(decoded_);
  for (auto& p : decoded) Submit(std::move(p));
  std::vector<std::shared_ptr<Model>> dirty;
  dirty.swap(dirty_);
  int ran = 0;
  for (const auto& m : dirty) ran += m->batcher->RunReady();
  return ran;
}

std::vector<uint64_t> HttpFront::Flush() {
  CompletionQueue::InlineDrain scope(*queue_);
  RunReady();
  return Drain();
}

std::vector<uint64_t> HttpFront::Drain() {
  std::vector<std::shared_ptr<HttpConnection>> touched;
  touched.swap(touched_);
  std::vector<Completion> done = queue_->Drain();
  std::vector<const uint8_t*> rows;
  for (Completion& c : done) {
    auto it = pending_.find(c.request_id);
    if (it == pending_.end()) continue;
    std::unique_ptr<Pending> p = std::move(it->second);
    pending_.erase(it);
    Answer(c, p.get(), &rows, &touched);
    Recycle(std::move(p));
  }
  // One send per connection per drain; the caller writes what is left.
  std::vector<uint64_t> to_write;
  for (const auto& conn : touched) {
    if (!conn->WriteDirect()) to_write.push_back(conn->id());
  }
  return to_write;
}

void HttpFront::Answer(Completion& c, Pending* p, std::vector<const uint8_t*>* rows_scratch,
                       std::vector<std::shared_ptr<HttpConnection>>* touched) {
  if (p->mirror_of) {
    CountMirrored(*p, c.status);
    return;
  }
  HttpConnection& conn = *p->conn;
  if (conn.closed_) return;
  HttpConnection::Slot* slot = conn.FindSlot(p->slot);
  if (slot == nullptr) return;
  slot->request_id = 0;
  std::vector<const uint8_t*>& rows = *rows_scratch;
  const bool keep = p->keep_alive && !draining_;
  TracedRequest* trace = p->trace.get();
  if (trace != nullptr) {
    trace->enqueue_ns = c.enqueue_ns;
    trace->exec_start_ns = c.exec_start_ns;
    trace->exec_end_ns = c.exec_end_ns;
    trace->batch_rows = c.batch_rows;
    if (!c.status.ok()) trace->error = c.status.message();
  }
  if (c.status.ok()) {
    if (trace != nullptr) trace->encode_start_ns = SteadyNowNs();
    const auto& specs = *c.result->specs;
    rows.clear();
    for (size_t i = 0; i < specs.size(); ++i) {
      rows.push_back(c.result->outputs[i]->data() + c.row_offset * specs[i].RowBytes());
    }
    std::string error;
    if (!AppendResponse(p->model->v2, p->plan, specs, rows, c.rows, keep, &slot->bytes, &error)) {
      slot->bytes.clear();
      conn.Error(*slot, 500, error, keep);
    } else {
      conn.Fill(*slot, keep);
      if (p->model->record && p->plan.has_id && c.rows > 0) {
        Record(*p->model, p->plan.id, specs[0], rows[0]);
      }
    }
    if (trace != nullptr) trace->encode_end_ns = SteadyNowNs();
  } else {
    conn.ErrorFromStatus(*slot, c.status, keep);
  }
  if (trace != nullptr) FinishTrace(std::move(p->trace), &slot->bytes);
  conn.FlushTouching(touched);
}

}  // namespace aiarch
