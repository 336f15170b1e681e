// The native connection against a real batcher: pipelined requests answered
// in order across the native and forwarded paths, cache hits, 429, 504,
// cancellation on close, direct writes to a socket that takes only part of
// the output, and a fuzz loop of mutated requests with valid ones
// interleaved (every valid one must be answered correctly).
#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "aiarch/cache.h"
#include "aiarch/http_connection.h"
#include "check.h"

namespace aiarch {
namespace {

constexpr int kWidth = 8;

// y = 2 * x, row by row.
class DoubleExecutor final : public Executor {
 public:
  std::atomic<int64_t> rows{0};
  Status Execute(const Batch& batch, std::vector<ExecutorOutput>* outputs,
                 std::shared_ptr<ErrorDetail>*) override {
    rows.fetch_add(batch.rows, std::memory_order_relaxed);  // a tally
    ExecutorOutput out;
    out.spec.dtype = DType::kFp32;
    out.spec.shape = {kWidth};
    const size_t n = static_cast<size_t>(batch.padded_rows) * kWidth;
    out.data = Buffer::Allocate(n * sizeof(float));
    const float* in = reinterpret_cast<const float*>(batch.inputs[0]->data());
    float* o = reinterpret_cast<float*>(out.data->data());
    for (size_t i = 0; i < n; ++i) o[i] = 2 * in[i];
    outputs->push_back(std::move(out));
    return Status::Ok();
  }
};

// Holds every batch until released; says when one has started.
class GateExecutor final : public Executor {
 public:
  std::atomic<bool> started{false}, released{false};
  std::atomic<int64_t> rows{0};
  Status Execute(const Batch& batch, std::vector<ExecutorOutput>* outputs,
                 std::shared_ptr<ErrorDetail>*) override {
    started.store(true);
    while (!released.load()) std::this_thread::sleep_for(std::chrono::microseconds(100));
    rows.fetch_add(batch.rows, std::memory_order_relaxed);  // a tally
    ExecutorOutput out;
    out.spec.dtype = DType::kFp32;
    out.spec.shape = {kWidth};
    out.data = Buffer::Allocate(static_cast<size_t>(batch.padded_rows) * kWidth * sizeof(float));
    std::memset(out.data->data(), 0, out.data->size());
    outputs->push_back(std::move(out));
    return Status::Ok();
  }
};

struct Served {
  std::shared_ptr<DoubleExecutor> executor = std::make_shared<DoubleExecutor>();
  std::unique_ptr<Batcher> batcher;
};

V2Model LinModel(const std::string& name) {
  V2Model m;
  m.name = name;
  m.version = "1";
  m.inputs = {TensorSpec{"x", DType::kFp32, {kWidth}}};
  m.output_names = {"y"};
  return m;
}

void Serve(HttpFront& front, Served& s, const std::string& name, BatchConfig config,
           std::shared_ptr<ResponseCache> cache = nullptr, bool record_predictions = false) {
  const Status st = Batcher::Create(name, config, {TensorSpec{"x", DType::kFp32, {kWidth}}}, {},
                                    s.executor, nullptr, std::move(cache), &s.batcher);
  if (!CHECK(st.ok())) {
    std::fprintf(stderr, "%s\n", st.ToString().c_str());
    std::abort();
  }
  front.RegisterModel(LinModel(name), s.batcher.get(), nullptr, record_predictions);
}

BatchConfig Immediate() {
  BatchConfig c;
  c.max_delay_ns = 0;
  c.max_batch_size = 16;
  return c;
}

std::string Http(const std::string& method, const std::string& path, const std::string& body,
                 const std::string& extra = "") {
  return method + " " + path +
         " HTTP/1.1\r\nHost: t\r\nContent-Length: " + std::to_string(body.size()) + "\r\n" + extra +
         "\r\n" + body;
}

std::string InferJson(const std::string& input, int rows, int width, float base) {
  std::string data = "[";
  for (int i = 0; i < rows * width; ++i) {
    if (i) data += ",";
    data += std::to_string(base + static_cast<float>(i));
  }
  data += "]";
  return R"({"inputs":[{"name":")" + input + R"(","shape":[)" + std::to_string(rows) + "," +
         std::to_string(width) + R"(],"datatype":"FP32","data":)" + data + "}]}";
}

struct Response {
  int status = 0;
  std::string head, body;
};

// Splits concatenated responses (content-length framed).
std::vector<Response> SplitResponses(const std::string& wire, bool* ok) {
  std::vector<Response> out;
  size_t pos = 0;
  *ok = true;
  while (pos < wire.size()) {
    const size_t end = wire.find("\r\n\r\n", pos);
    if (end == std::string::npos) {
      *ok = false;
      break;
    }
    Response r;
    r.head = wire.substr(pos, end + 4 - pos);
    r.status = std::atoi(r.head.c_str() + 9);
    const size_t cl = r.head.find("content-length: ");
    if (cl == std::string::npos) {  // 100 Continue
      pos = end + 4;
      continue;
    }
    const size_t n = std::stoul(r.head.substr(cl + 16));
    r.body = wire.substr(end + 4, n);
    pos = end + 4 + n;
    out.push_back(std::move(r));
  }
  return out;
}

// Feeds `wire`, answers forwarded requests with 404 `{"error":"forwarded <path>"}`, runs and
// drains batches until nothing is in flight, and returns the connection's output.
std::string Exchange(HttpFront& front, HttpConnection& conn, const std::string& wire,
                     std::vector<ForwardedRequest>* seen = nullptr) {
  std::vector<ForwardedRequest> forwarded;
  conn.Feed(wire.data(), wire.size(), &forwarded);
  for (const auto& f : forwarded) {
    std::string bytes;
    AppendErrorResponse(404, "forwarded " + f.path, {}, f.keep_alive, &bytes);
    conn.Respond(f.slot, bytes, f.keep_alive);
  }
  if (seen) *seen = forwarded;
  std::string out = conn.TakeOutput();
  front.RunReady();
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (true) {
    front.Drain();
    out += conn.TakeOutput();
    if (front.in_flight() == 0 || std::chrono::steady_clock::now() > deadline) break;
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  return out;
}

void TestPipelinedOrder() {
  std::shared_ptr<HttpFront> front;
  CHECK(HttpFront::Create({}, &front).ok());
  Served lin;
  Serve(*front, lin, "lin", Immediate());
  auto conn = front->Connect(1);
  std::string wire = Http("POST", "/v2/models/lin/infer", InferJson("x", 2, kWidth, 1)) +
                     Http("GET", "/v2/health/live", "") +
                     Http("POST", "/v2/models/lin/infer", InferJson("x", 1, 7, 0)) +
                     Http("POST", "/v2/models/nope/infer", "{}") +
                     Http("POST", "/v2/models/lin/versions/1/infer",
                          InferJson("x", 1, kWidth, 10).insert(1, R"("id":"q7",)"));
  std::vector<ForwardedRequest> forwarded;
  const std::string out = Exchange(*front, *conn, wire, &forwarded);
  CHECK_EQ(forwarded.size(), size_t{2});
  bool ok;
  auto rs = SplitResponses(out, &ok);
  CHECK(ok);
  if (!CHECK_EQ(rs.size(), size_t{5})) return;
  CHECK_EQ(rs[0].status, 200);
  CHECK(rs[0].body.find(R"("data":[2.0,4.0,6.0,8.0,10.0,12.0,14.0,16.0,18.0,20.0)") !=
        std::string::npos);
  CHECK(rs[0].body.find(R"("shape":[2,8])") != std::string::npos);
  CHECK_EQ(rs[1].status, 404);
  CHECK(rs[1].body.find("forwarded /v2/health/live") != std::string::npos);
  CHECK_EQ(rs[2].status, 400);
  CHECK(rs[2].body.find("unexpected shape") != std::string::npos);
  CHECK_EQ(rs[3].status, 404);
  CHECK_EQ(rs[4].status, 200);
  CHECK(rs[4].body.find(R"("id":"q7")") != std::string::npos);
  CHECK(!conn->want_close());
  CHECK_EQ(conn->owed(), size_t{0});
}

// y = 2 * x, noting the thread that ran the last batch.
class ThreadNotingExecutor final : public Executor {
 public:
  std::atomic<std::thread::id> last{};
  Status Execute(const Batch& batch, std::vector<ExecutorOutput>* outputs,
                 std::shared_ptr<ErrorDetail>* detail) override {
    last.store(std::this_thread::get_id());
    return double_.Execute(batch, outputs, detail);
  }

 private:
  DoubleExecutor double_;
};

bool Readable(int fd) {
  pollfd p{fd, POLLIN, 0};
  return poll(&p, 1, 0) == 1;
}

void TestFlushAnswersAnInlineBatchWithoutAWakeup() {
  std::shared_ptr<HttpFront> front;
  CHECK(HttpFront::Create({}, &front).ok());
  auto executor = std::make_shared<ThreadNotingExecutor>();
  std::unique_ptr<Batcher> batcher;
  CHECK(Batcher::Create("lin", Immediate(), {TensorSpec{"x", DType::kFp32, {kWidth}}}, {}, executor,
                        nullptr, nullptr, &batcher)
            .ok());
  front->RegisterModel(LinModel("lin"), batcher.get(), nullptr);
  auto conn = front->Connect(3);
  const std::string wire = Http("POST", "/v2/models/lin/infer", InferJson("x", 1, kWidth, 1));
  // A worker that is awake (just started) may take a batch left for the flush; the claim is
  // about a batch the flush ran itself, so repeat until one did.
  for (int attempt = 0; attempt < 100; ++attempt) {
    std::vector<ForwardedRequest> forwarded;
    conn->Feed(wire.data(), wire.size(), &forwarded);
    const std::vector<uint64_t> touched = front->Flush();
    if (executor->last.load() != std::this_thread::get_id()) {
      Exchange(*front, *conn, "");  // answered by a worker: collect it and try again
      continue;
    }
    CHECK(touched == std::vector<uint64_t>{3});  // answered within this one call
    CHECK(!Readable(front->fd()));               // and no wake-up left for the loop
    bool ok;
    const auto rs = SplitResponses(conn->TakeOutput(), &ok);
    CHECK(ok);
    if (CHECK_EQ(rs.size(), size_t{1})) CHECK_EQ(rs[0].status, 200);
    return;
  }
  CHECK(false);  // no batch ever ran inline
}

void TestCacheHitAndClose() {
  std::shared_ptr<HttpFront> front;
  CHECK(HttpFront::Create({}, &front).ok());
  Served lin;
  Serve(*front, lin, "cached", Immediate(), std::make_shared<ResponseCache>(CacheConfig{}));
  auto conn = front->Connect(1);
  const std::string req = Http("POST", "/v2/models/cached/infer", InferJson("x", 1, kWidth, 3));
  bool ok;
  auto first = SplitResponses(Exchange(*front, *conn, req), &ok);
  auto second = SplitResponses(Exchange(*front, *conn, req), &ok);
  CHECK_EQ(lin.executor->rows.load(), int64_t{1});
  if (CHECK_EQ(first.size(), size_t{1}) && CHECK_EQ(second.size(), size_t{1})) {
    CHECK_EQ(first[0].body, second[0].body);
  }
  // Connection: close is honoured: the request after it is never read.
  const std::string out = Exchange(*front, *conn,
                                   Http("POST", "/v2/models/cached/infer",
                                        InferJson("x", 1, kWidth, 3), "Connection: close\r\n") +
                                       req);
  auto rs = SplitResponses(out, &ok);
  CHECK_EQ(rs.size(), size_t{1});
  CHECK(rs[0].head.find("connection: close") != std::string::npos);
  CHECK(conn->want_close());
}

// With an id in the body, a request's first output row is recorded for TakePredictions (also
// when it is answered from the cache); without one, or for a model registered without
// record_predictions, nothing is.
void TestRecordedPredictions() {
  std::shared_ptr<HttpFront> front;
  CHECK(HttpFront::Create({}, &front).ok());
  Served rec, plain;
  Serve(*front, rec, "rec", Immediate(), std::make_shared<ResponseCache>(CacheConfig{}), true);
  Serve(*front, plain, "plain", Immediate());
  auto conn = front->Connect(1);
  const auto with_id = [](const std::string& id, float base) {
    std::string body = InferJson("x", 1, kWidth, base);
    return R"({"id":")" + id + R"(",)" + body.substr(1);
  };
  const std::string wire = Http("POST", "/v2/models/rec/infer", with_id("a", 1)) +
                           Http("POST", "/v2/models/rec/infer", InferJson("x", 1, kWidth, 5)) +
                           Http("POST", "/v2/models/plain/infer", with_id("p", 1));
  bool ok;
  auto rs = SplitResponses(Exchange(*front, *conn, wire), &ok);
  CHECK_EQ(rs.size(), size_t{3});
  // The same body again, after the first was cached: answered at submit, from the cache.
  rs = SplitResponses(
      Exchange(*front, *conn, Http("POST", "/v2/models/rec/infer", with_id("b", 1))), &ok);
  CHECK_EQ(rs.size(), size_t{1});
  CHECK_EQ(rec.executor->rows.load(), int64_t{2});
  std::vector<RecordedPredictions> taken = front->TakePredictions();
  if (CHECK_EQ(taken.size(), size_t{1})) {
    const RecordedPredictions& r = taken[0];
    CHECK_EQ(r.model, std::string("rec"));
    CHECK_EQ(r.version, std::string("1"));
    CHECK_EQ(r.width, size_t{kWidth});
    if (CHECK_EQ(r.ids.size(), size_t{2})) {
      CHECK_EQ(r.ids[0], std::string("a"));
      CHECK_EQ(r.ids[1], std::string("b"));
    }
    if (CHECK_EQ(r.values.size(), size_t{2 * kWidth})) {
      for (size_t i = 0; i < kWidth; ++i) {  // y = 2x, x = 1, 2, ...
        CHECK_EQ(r.values[i], 2.0 * (1.0 + static_cast<double>(i)));
        CHECK_EQ(r.values[kWidth + i], r.values[i]);
      }
    }
  }
  CHECK(front->TakePredictions().empty());  // taken once
  CHECK_EQ(front->predictions_dropped(), uint64_t{0});
}

void TestOverloadDeadlineCancel() {
  std::shared_ptr<HttpFront> front;
  CHECK(HttpFront::Create({}, &front).ok());
  auto gate = std::make_shared<GateExecutor>();
  BatchConfig c;
  c.max_delay_ns = 0;
  c.max_batch_size = 1;
  c.max_queue_rows = 1;
  c.inline_execution = false;
  std::unique_ptr<Batcher> batcher;
  CHECK(Batcher::Create("gated", c, {TensorSpec{"x", DType::kFp32, {kWidth}}}, {}, gate, nullptr,
                        nullptr, &batcher)
            .ok());
  front->RegisterModel(LinModel("gated"), batcher.get(), nullptr);
  const std::string one = Http("POST", "/v2/models/gated/infer", InferJson("x", 1, kWidth, 0));
  auto conn = front->Connect(7);
  std::vector<ForwardedRequest> fw;
  conn->Feed(one.data(), one.size(), &fw);
  CHECK_EQ(gate->started.load(), false);  // decoded only: the iteration's RunReady() submits
  front->RunReady();
  while (!gate->started.load()) std::this_thread::sleep_for(std::chrono::microseconds(100));
  conn->Feed(one.data(), one.size(), &fw);  // queued behind the running one
  front->RunReady();
  CHECK_EQ(front->in_flight(), size_t{2});
  // The queue is full: refused at the door, with a Retry-After.
  auto other = front->Connect(8);
  other->Feed(one.data(), one.size(), &fw);
  CHECK_EQ(other->TakeOutput(), std::string());
  front->RunReady();
  CHECK(front->Drain() == std::vector<uint64_t>{8});  // refused at submit: output to write
  bool ok;
  auto rs = SplitResponses(other->TakeOutput(), &ok);
  if (CHECK_EQ(rs.size(), size_t{1})) {
    CHECK_EQ(rs[0].status, 429);
    CHECK(rs[0].head.find("retry-after: ") != std::string::npos);
    CHECK(rs[0].body.find("error") != std::string::npos);
  }
  // Nothing is written before the first response, which is still running.
  CHECK_EQ(conn->TakeOutput(), std::string());
  // The client goes away: the queued request is cancelled, never run.
  conn->Close();
  gate->released.store(true);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (front->in_flight() > 0 && std::chrono::steady_clock::now() < deadline) {
    CHECK(front->Drain().empty());
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  CHECK_EQ(front->in_flight(), size_t{0});
  CHECK_EQ(batcher->Stats().cancelled, uint64_t{1});
  CHECK_EQ(gate->rows.load(), int64_t{1});

  // A deadline that passes while queued: 504, never executed.
  Served late;
  BatchConfig d;
  d.max_delay_ns = 20'000'000;
  d.inline_execution = false;
  Serve(*front, late, "late", d);
  auto b = front->Connect(10);
  const std::string timed =
      Http("POST", "/v2/models/late/infer",
           InferJson("x", 1, kWidth, 0).insert(1, R"("parameters":{"timeout":1000},)"));
  const std::string header_timed = Http(
      "POST", "/v2/models/late/infer", InferJson("x", 1, kWidth, 0), "X-Request-Timeout-Ms: 1\r\n");
  const std::string late_out = Exchange(*front, *b, timed + header_timed);
  rs = SplitResponses(late_out, &ok);
  if (CHECK_EQ(rs.size(), size_t{2}) || (std::fprintf(stderr, "%s\n", late_out.c_str()), false)) {
    CHECK_EQ(rs[0].status, 504);
    CHECK_EQ(rs[1].status, 504);
  }
  CHECK_EQ(late.executor->rows.load(), int64_t{0});
}

void TestProtocolErrors() {
  HttpFrontConfig config;
  config.limits.max_body_bytes = 1000;
  std::shared_ptr<HttpFront> front;
  CHECK(HttpFront::Create(config, &front).ok());
  Served lin;
  Serve(*front, lin, "lin", Immediate());
  auto conn = front->Connect(1);
  const std::string good = Http("POST", "/v2/models/lin/infer", InferJson("x", 1, kWidth, 0));
  // A good request, then an oversized one: the first is answered, then 413 and close.
  bool ok;
  auto rs = SplitResponses(
      Exchange(*front, *conn,
               good + "POST /v2/models/lin/infer HTTP/1.1\r\nContent-Length: 1001\r\n\r\n"),
      &ok);
  if (CHECK_EQ(rs.size(), size_t{2})) {
    CHECK_EQ(rs[0].status, 200);
    CHECK_EQ(rs[1].status, 413);
    CHECK(rs[1].head.find("connection: close") != std::string::npos);
  }
  CHECK(conn->want_close());
  CHECK(conn->linger());
  // Expect: 100-continue, body sent later.
  auto c2 = front->Connect(2);
  const std::string body = InferJson("x", 1, kWidth, 0);
  std::string head =
      "POST /v2/models/lin/infer HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: " +
      std::to_string(body.size()) + "\r\n\r\n";
  std::string out = Exchange(*front, *c2, head);
  CHECK_EQ(out, std::string("HTTP/1.1 100 Continue\r\n\r\n"));
  rs = SplitResponses(Exchange(*front, *c2, body), &ok);
  if (CHECK_EQ(rs.size(), size_t{1})) CHECK_EQ(rs[0].status, 200);
}

// What the native path leaves to the general one so that both answer alike:
// a body declared as anything but JSON (415 there), a timeout header out of
// range or not a plain number (400 there), JSON nested deeper than the native
// reader descends. The Origin header travels with a forwarded request.
void TestForwardsWhatThePythonPathWords() {
  std::shared_ptr<HttpFront> front;
  CHECK(HttpFront::Create({}, &front).ok());
  Served lin;
  Serve(*front, lin, "lin", Immediate());
  auto conn = front->Connect(1);
  const std::string body = InferJson("x", 1, kWidth, 0);
  const auto status_of = [&](const std::string& extra, const std::string& b) {
    bool ok;
    const std::string wire = Http("POST", "/v2/models/lin/infer", b, extra);
    auto rs = SplitResponses(Exchange(*front, *conn, wire), &ok);
    return rs.size() == 1 ? rs[0].status : -1;
  };
  for (const char* ctype : {"text/plain", "application/x-www-form-urlencoded",
                            "multipart/form-data; boundary=x", "application/octet-stream", ""}) {
    CHECK_EQ(status_of(std::string("Content-Type: ") + ctype + "\r\n", body), 404);
  }
  for (const char* ctype : {"application/json", "Application/JSON; charset=utf-8"}) {
    CHECK_EQ(status_of(std::string("Content-Type: ") + ctype + "\r\n", body), 200);
  }
  CHECK_EQ(status_of("Content-Type: application/octet-stream\r\n"
                     "Inference-Header-Content-Length: 0\r\n",
                     std::string(kWidth * sizeof(float), '\0')),
           200);
  for (const char* ms :
       {"1e20", "1e308", "inf", "nan", "-1", "0", "abc", "0x10", "86400001", "1_0", ".", "1e"}) {
    CHECK_EQ(status_of(std::string("X-Request-Timeout-Ms: ") + ms + "\r\n", body), 404);
  }
  for (const char* ms : {"86400000", "1000", "2.5", "1e3", ".5"}) {
    CHECK_EQ(status_of(std::string("X-Request-Timeout-Ms: ") + ms + "\r\n", body), 200);
  }
  const std::string deep = R"({"inputs":[{"name":"x","shape":[1,8],"datatype":"FP32","data":)" +
                           std::string(100, '[') + "0,0,0,0,0,0,0,0" + std::string(100, ']') +
                           "}]}";
  CHECK_EQ(status_of("", deep), 404);
  std::vector<ForwardedRequest> seen;
  Exchange(*front, *conn, Http("GET", "/v2", "", "Origin: https://a.example\r\n"), &seen);
  bool origin = false;
  if (CHECK_EQ(seen.size(), size_t{1})) {
    for (const auto& [name, value] : seen[0].headers) {
      origin = origin || (name == "origin" && value == "https://a.example");
    }
  }
  CHECK(origin);
}

// The traceparent header of a response head, or "" when it has none.
std::string TraceparentOf(const Response& r) {
  const size_t at = r.head.find("\r\ntraceparent: ");
  if (at == std::string::npos) return "";
  const size_t from = at + 15;
  return r.head.substr(from, r.head.find("\r\n", from) - from);
}

std::string Hex(uint64_t high, uint64_t low) {
  char buf[33];
  std::snprintf(buf, sizeof(buf), "%016llx%016llx", static_cast<unsigned long long>(high),
                static_cast<unsigned long long>(low));
  return buf;
}

// set_trace_every(n): every n-th request, and each whose traceparent has the
// sampled flag, is traced. A native one is answered natively with its span's
// traceparent and leaves a TracedRequest (the caller's trace id when its
// traceparent is valid, a new one otherwise); one the native path does not
// answer is forwarded with traced = true. 0 traces none.
void TestTracedRequests() {
  std::shared_ptr<HttpFront> front;
  CHECK(HttpFront::Create({}, &front).ok());
  Served lin;
  Serve(*front, lin, "lin", Immediate());
  auto conn = front->Connect(1);
  const std::string infer = Http("POST", "/v2/models/lin/infer", InferJson("x", 1, kWidth, 0));
  const std::string trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
  const std::string parent = "00-" + trace_id + "-00f067aa0ba902b7-";
  const auto with_parent = [&](const std::string& value) {
    return Http("POST", "/v2/models/lin/infer", InferJson("x", 1, kWidth, 0),
                "traceparent: " + value + "\r\ntracestate: k=v\r\n");
  };
  std::vector<ForwardedRequest> seen;
  bool ok;
  // Off: a sampled traceparent stays native and untraced.
  auto rs = SplitResponses(Exchange(*front, *conn, infer + with_parent(parent + "01"), &seen), &ok);
  CHECK_EQ(seen.size(), size_t{0});
  CHECK(front->TakeTraces().empty());
  for (const auto& r : rs) CHECK_EQ(TraceparentOf(r), std::string());

  front->set_trace_every(3);
  std::string wire;
  for (int i = 0; i < 7; ++i) wire += infer;
  rs = SplitResponses(Exchange(*front, *conn, wire, &seen), &ok);
  CHECK_EQ(seen.size(), size_t{0});  // answered natively
  std::vector<TracedRequest> traces = front->TakeTraces();
  if (CHECK_EQ(rs.size(), size_t{7}) && CHECK_EQ(traces.size(), size_t{2})) {  // 3rd and 6th
    for (int i = 0; i < 7; ++i) {
      const std::string tp = TraceparentOf(rs[i]);
      CHECK_EQ(rs[i].status, 200);
      if (i != 2 && i != 5) {
        CHECK_EQ(tp, std::string());
        continue;
      }
      const TracedRequest& t = traces[i == 2 ? 0 : 1];
      char span[17];
      std::snprintf(span, sizeof(span), "%016llx", static_cast<unsigned long long>(t.span_id));
      CHECK_EQ(tp, "00-" + Hex(t.trace_id_high, t.trace_id_low) + "-" + span + "-01");
      CHECK(t.traceparent.empty() && t.span_id != 0 && (t.trace_id_high | t.trace_id_low) != 0);
      CHECK_EQ(t.path, std::string("/v2/models/lin/infer"));
      CHECK_EQ(t.model, std::string("lin"));
      CHECK_EQ(t.status, 200);
      CHECK(t.start_ns <= t.submit_ns && t.submit_ns <= t.enqueue_ns + 1);
      CHECK(t.enqueue_ns <= t.exec_start_ns && t.exec_start_ns <= t.exec_end_ns);
      CHECK(t.exec_end_ns <= t.encode_start_ns && t.encode_start_ns <= t.encode_end_ns);
      CHECK(t.encode_end_ns <= t.end_ns);
      CHECK(t.batch_rows >= 1 && !t.cache_hit && t.error.empty());
    }
    CHECK(traces[0].span_id != traces[1].span_id);
  }
  // A long period (and a fresh count): the sampled parents are traced in the
  // caller's trace (a malformed one starts a new trace), the unsampled one is not.
  front->set_trace_every(100);
  const std::string bad = "00-" + trace_id + "-0000000000000000-01";  // zero parent id
  rs = SplitResponses(Exchange(*front, *conn,
                               with_parent(parent + "01") + with_parent(parent + "00") +
                                   with_parent(parent + "03") + with_parent(bad),
                               &seen),
                      &ok);
  CHECK_EQ(seen.size(), size_t{0});
  traces = front->TakeTraces();
  if (CHECK_EQ(rs.size(), size_t{4}) && CHECK_EQ(traces.size(), size_t{3})) {
    CHECK_EQ(traces[0].traceparent, parent + "01");
    CHECK_EQ(traces[0].tracestate, std::string("k=v"));
    CHECK_EQ(Hex(traces[0].trace_id_high, traces[0].trace_id_low), trace_id);
    CHECK_EQ(TraceparentOf(rs[0]).substr(0, 36), "00-" + trace_id + "-");
    CHECK_EQ(TraceparentOf(rs[1]), std::string());
    CHECK_EQ(traces[1].traceparent, parent + "03");
    CHECK(traces[2].traceparent.empty() && traces[2].tracestate.empty());
    CHECK(Hex(traces[2].trace_id_high, traces[2].trace_id_low) != trace_id);
    CHECK_EQ(TraceparentOf(rs[3]).substr(3, 32),
             Hex(traces[2].trace_id_high, traces[2].trace_id_low));
  }
  // A bad body is answered natively with 400, traced; an unknown model is forwarded traced.
  front->set_trace_every(1);
  rs = SplitResponses(
      Exchange(*front, *conn,
               Http("POST", "/v2/models/lin/infer", "{\"inputs\": 3}") +
                   Http("POST", "/v2/models/nope/infer", InferJson("x", 1, kWidth, 0)),
               &seen),
      &ok);
  traces = front->TakeTraces();
  if (CHECK_EQ(rs.size(), size_t{2}) && CHECK_EQ(traces.size(), size_t{1}) &&
      CHECK_EQ(seen.size(), size_t{1})) {
    CHECK_EQ(rs[0].status, 400);
    CHECK_EQ(traces[0].status, 400);
    CHECK_EQ(traces[0].submit_ns, int64_t{0});
    CHECK(!TraceparentOf(rs[0]).empty());
    CHECK(seen[0].traced);
    CHECK_EQ(seen[0].path, std::string("/v2/models/nope/infer"));
  }
  // Not native: every traced request is forwarded, with its headers.
  front->set_trace_native(false);
  rs = SplitResponses(Exchange(*front, *conn, infer + with_parent(parent + "01"), &seen), &ok);
  CHECK(front->TakeTraces().empty());
  if (CHECK_EQ(seen.size(), size_t{2})) {
    CHECK(seen[0].traced && seen[1].traced);
    bool forwarded_header = false;
    for (const auto& [name, value] : seen[1].headers) {
      forwarded_header = forwarded_header || (name == "traceparent" && value == parent + "01");
    }
    CHECK(forwarded_header);
  }
  front->set_trace_native(true);
  front->set_trace_every(0);
  Exchange(*front, *conn, infer + with_parent(parent + "01"), &seen);
  CHECK_EQ(seen.size(), size_t{0});
  CHECK(front->TakeTraces().empty());
  CHECK_EQ(front->traces_dropped(), uint64_t{0});
}

// phase()/phase_since(): the time a partial request's head, then its body,
// began to arrive; Fail() answers after what is owed and closes.
void TestPhaseAndFail() {
  std::shared_ptr<HttpFront> front;
  CHECK(HttpFront::Create({}, &front).ok());
  Served lin;
  Serve(*front, lin, "lin", Immediate());
  auto conn = front->Connect(1);
  std::vector<ForwardedRequest> fw;
  const std::string req = Http("POST", "/v2/models/lin/infer", InferJson("x", 1, kWidth, 0));
  CHECK(conn->phase() == HttpConnection::Phase::kNone);
  conn->Feed(req.data(), 10, &fw, 1.0);
  CHECK(conn->phase() == HttpConnection::Phase::kHead);
  CHECK_EQ(conn->phase_since(), 1.0);
  conn->Feed(req.data() + 10, 5, &fw, 2.0);  // same head: its deadline does not move
  CHECK_EQ(conn->phase_since(), 1.0);
  const size_t head_end = req.find("\r\n\r\n") + 4;
  conn->Feed(req.data() + 15, head_end - 15 + 3, &fw, 3.0);
  CHECK(conn->phase() == HttpConnection::Phase::kBody);
  CHECK_EQ(conn->phase_since(), 3.0);
  // The rest of this request and half of the next head in one read: the next
  // request began in this read.
  std::string rest = req.substr(head_end + 3) + req.substr(0, 20);
  conn->Feed(rest.data(), rest.size(), &fw, 4.0);
  CHECK(conn->phase() == HttpConnection::Phase::kHead);
  CHECK_EQ(conn->phase_since(), 4.0);
  front->RunReady();
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (front->in_flight() > 0 && std::chrono::steady_clock::now() < deadline) {
    front->Drain();
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  conn->Fail(408, "request headers not received within 0.3 s");
  CHECK(conn->phase() == HttpConnection::Phase::kNone);
  bool ok;
  auto rs = SplitResponses(conn->TakeOutput(), &ok);
  if (CHECK_EQ(rs.size(), size_t{2})) {
    CHECK_EQ(rs[0].status, 200);
    CHECK_EQ(rs[1].status, 408);
    CHECK(rs[1].body.find("request headers not received") != std::string::npos);
    CHECK(rs[1].head.find("connection: close") != std::string::npos);
  }
  CHECK(conn->want_close());
  CHECK(conn->linger());
  conn->Fail(408, "again");  // closing: nothing more is answered
  CHECK(conn->TakeOutput().empty());
  // A complete request leaves no phase.
  auto c2 = front->Connect(2);
  c2->Feed(req.data(), req.size(), &fw, 5.0);
  CHECK(c2->phase() == HttpConnection::Phase::kNone);
  front->RunReady();
}

// Mutations of valid requests; after each, a fresh valid request on the same
// connection must be answered correctly unless the mutation left the
// connection mid-request or closing.
void TestFuzz() {
  std::shared_ptr<HttpFront> front;
  HttpFrontConfig config;
  config.limits.max_body_bytes = 4096;
  config.limits.max_header_bytes = 1024;
  config.limits.max_headers = 20;
  CHECK(HttpFront::Create(config, &front).ok());
  Served lin;
  Serve(*front, lin, "lin", Immediate());
  const std::string valid = Http("POST", "/v2/models/lin/infer", InferJson("x", 1, kWidth, 1));
  std::string binary_header =
      R"({"inputs":[{"name":"x","shape":[1,8],"datatype":"FP32","parameters":{"binary_data_size":32}}],)"
      R"("outputs":[{"name":"y","parameters":{"binary_data":true}}]})";
  float row[kWidth] = {1, 2, 3, 4, 5, 6, 7, 8};
  std::string binary_body = binary_header + std::string(reinterpret_cast<char*>(row), sizeof(row));
  const std::vector<std::string> seeds = {
      valid,
      Http("POST", "/v2/models/lin/infer", binary_body,
           "Inference-Header-Content-Length: " + std::to_string(binary_header.size()) + "\r\n"),
      Http("POST", "/v2/models/lin/infer",
           InferJson("x", 2, kWidth, -3)
               .insert(1, R"("id":"z","parameters":{"priority":1,"timeout":100000},)")),
      "POST /v2/models/lin/infer HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n" +
          std::string(R"({"inputs":[{"na)") + "\r\n0\r\n\r\n",
      Http("GET", "/v2/models/lin", ""),
      Http("POST", "/predict/lin", R"({"inputs": [[1,2,3,4,5,6,7,8],[0,0,0,0,0,0,0,0.5]]})"),
      Http(
          "POST", "/v2/models/lin/infer",
          R"({"inputs":[{"name":"x","shape":[1,8],"datatype":"BOOL","data":[true,false,true,false,true,false,true,false]}]})"),
  };
  const char kAlphabet[] = "{}[],:\"0123456789.-eE \r\ntrufalsnx%/?\\";
  std::mt19937_64 rng(20261206);
  constexpr int kCases = 120000;
  int checked_valid = 0;
  for (int n = 0; n < kCases; ++n) {
    std::string wire = seeds[rng() % seeds.size()];
    const int edits = 1 + static_cast<int>(rng() % 4);
    for (int e = 0; e < edits && !wire.empty(); ++e) {
      const size_t at = rng() % wire.size();
      switch (rng() % 6) {
        case 0: wire[at] = static_cast<char>(rng()); break;
        case 1: wire[at] = kAlphabet[rng() % (sizeof(kAlphabet) - 1)]; break;
        case 2: wire.erase(at, 1 + rng() % 8); break;
        case 3: wire.insert(at, 1, kAlphabet[rng() % (sizeof(kAlphabet) - 1)]); break;
        case 4: wire.insert(at, wire.substr(rng() % wire.size(), rng() % 16)); break;
        case 5: wire.resize(at); break;
      }
    }
    test::SetContext("case=" + std::to_string(n));
    auto conn = front->Connect(static_cast<uint64_t>(n));
    // Split into up to three reads.
    std::vector<ForwardedRequest> fw;
    size_t from = 0;
    const int pieces = 1 + static_cast<int>(rng() % 3);
    std::string out;
    for (int p = 0; p < pieces; ++p) {
      const size_t to = p + 1 == pieces ? wire.size() : from + rng() % (wire.size() - from + 1);
      out += Exchange(*front, *conn, wire.substr(from, to - from));
      from = to;
    }
    bool ok;
    auto rs = SplitResponses(out, &ok);
    CHECK(ok);
    for (const auto& r : rs) {
      const int s = r.status;
      if (!(s == 200 || s == 400 || s == 404 || s == 413 || s == 417 || s == 431)) {
        CHECK_EQ(s, 200);
        break;
      }
      if (s != 200) CHECK(r.body.rfind("{\"error\":", 0) == 0);
    }
    if (conn->want_close() || conn->in_request()) continue;
    auto after = SplitResponses(Exchange(*front, *conn, valid), &ok);
    ++checked_valid;
    if (!CHECK_EQ(after.size(), size_t{1})) break;
    if (!CHECK_EQ(after[0].status, 200)) break;
    CHECK(after[0].body.find(R"("data":[2.0,4.0,6.0,8.0,10.0,12.0,14.0,16.0])") !=
          std::string::npos);
  }
  test::SetContext("");
  CHECK(checked_valid > kCases / 10);
  CHECK_EQ(front->in_flight(), size_t{0});
  std::printf("fuzz: %d cases, %d followed by a valid request\n", kCases, checked_valid);
}

// Everything readable on `fd` now (non-blocking).
std::string ReadAvailable(int fd) {
  std::string got;
  char buf[65536];
  while (true) {
    const ssize_t n = ::recv(fd, buf, sizeof buf, MSG_DONTWAIT);
    if (n <= 0) break;
    got.append(buf, static_cast<size_t>(n));
  }
  return got;
}

// Direct writes: the socket's small buffer takes only part of a pipelined burst's responses;
// the rest stays in the output for the caller (whose transport then holds bytes, so it turns
// direct writes off), and the two together are every response, in order. Off, nothing is sent;
// closed, the connection's dup of the socket is closed with it.
void TestDirectWrites() {
  std::shared_ptr<HttpFront> front;
  CHECK(HttpFront::Create({}, &front).ok());
  Served lin;
  Serve(*front, lin, "lin", Immediate());
  int sv[2];
  if (!CHECK_EQ(::socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0)) return;
  const int small = 4096;
  ::setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof small);

  auto conn = front->Connect(1);
  CHECK(!conn->direct_writes());  // no socket yet
  CHECK(conn->AttachSocket(sv[0]));
  conn->set_direct_writes(true);
  constexpr int kRequests = 300;  // ~100 KB of responses, far over the socket's buffer
  std::string wire;
  for (int i = 0; i < kRequests; ++i) {
    wire += Http("POST", "/v2/models/lin/infer", InferJson("x", 1, kWidth, float(i)));
  }
  std::vector<ForwardedRequest> forwarded;
  conn->Feed(wire.data(), wire.size(), &forwarded);
  CHECK(forwarded.empty());
  front->RunReady();
  std::string by_caller;  // what the caller's transport writes after the socket was full
  int returned = 0;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (front->in_flight() > 0 && std::chrono::steady_clock::now() < deadline) {
    for (uint64_t id : front->Drain()) {
      CHECK_EQ(id, uint64_t{1});
      ++returned;
      by_caller += conn->TakeOutput();
      conn->set_direct_writes(false);  // its transport now holds bytes
    }
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  for (uint64_t id : front->Drain()) CHECK_EQ(id, uint64_t{1});
  by_caller += conn->TakeOutput();
  CHECK(returned >= 1);
  const std::string sent = ReadAvailable(sv[1]);
  CHECK(!sent.empty());
  CHECK(sent.size() < 100 * 1000);  // the socket took a part only
  bool ok;
  const auto rs = SplitResponses(sent + by_caller, &ok);
  CHECK(ok);
  if (CHECK_EQ(rs.size(), size_t{kRequests})) {
    for (int i = 0; i < kRequests; ++i) {
      CHECK_EQ(rs[i].status, 200);
      const std::string first = "\"data\":[" + std::to_string(2 * i) + ".0,";
      if (!CHECK(rs[i].body.find(first) != std::string::npos)) break;
    }
  }

  // Off: the drain leaves the response for the caller and sends nothing.
  wire = Http("POST", "/v2/models/lin/infer", InferJson("x", 1, kWidth, 1));
  const std::string out = Exchange(*front, *conn, wire);
  CHECK(SplitResponses(out, &ok).size() == 1 && ok);
  CHECK(ReadAvailable(sv[1]).empty());

  // Closed: the dup goes with the connection, so the peer sees the end once ours is closed too.
  conn->Close();
  CHECK(!conn->direct_writes());
  ::close(sv[0]);
  char byte;
  CHECK_EQ(::recv(sv[1], &byte, 1, 0), ssize_t{0});
  ::close(sv[1]);
}

}  // namespace
}  // namespace aiarch

int main() {
  aiarch::TestPipelinedOrder();
  aiarch::TestFlushAnswersAnInlineBatchWithoutAWakeup();
  aiarch::TestCacheHitAndClose();
  aiarch::TestRecordedPredictions();
  aiarch::TestOverloadDeadlineCancel();
  aiarch::TestProtocolErrors();
  aiarch::TestForwardsWhatThePythonPathWords();
  aiarch::TestTracedRequests();
  aiarch::TestPhaseAndFail();
  aiarch::TestDirectWrites();
  aiarch::TestFuzz();
  return aiarch::test::Finish("test_http_connection");
}
