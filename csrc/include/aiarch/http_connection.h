// The native request path of the HTTP server: socket bytes in, response
// bytes out, with the v2 infer requests of registered models answered
// without entering Python per request.
//
// Contract
// - HttpFront is one per event loop. It holds the models served natively
//   (name → batcher + v2 description), one completion queue for all their
//   requests (fd() turns readable when completions wait), and the table of
//   requests in flight. HttpConnection is one per socket. (HttpFront is
//   implemented in http_front.cc, HttpConnection in http_connection.cc.)
// - HttpConnection::Feed takes the bytes of one read and parses every
//   complete request in them. A v2 infer request (POST
//   /v2/models/{m}[/versions/{v}]/infer) for a registered model is decoded,
//   validated, probed in the cache and submitted to the batcher; its
//   response (or its error, with the same status codes and `{"error": ...}`
//   bodies as the Python server) is encoded into the connection's output
//   when it completes. Every other request — other routes, unregistered
//   models, compressed bodies or responses — is returned to the
//   caller whole (ForwardedRequest) and answered through Respond().
// - Order: responses leave in request order whichever path answers them
//   (keep-alive and pipelining). TakeOutput() returns the bytes that may be
//   written now, for the caller to write after a read or a drain that left
//   output (see direct writes).
// - Direct writes: a connection given its socket (AttachSocket, a plain TCP
//   socket) and allowed to (set_direct_writes: the caller's transport has
//   nothing buffered and wants no say in each write) has the responses Drain()
//   encodes sent straight to the socket, non-blocking, once per drain; only
//   what the kernel did not take (or a failed send) is left in the output and
//   the connection's id returned, so the caller's transport writes the rest
//   in order and reports the error. The socket is dup()ed: a send never
//   reaches another connection that reused the caller's descriptor number,
//   and the dup is closed by Close() or the destructor. Never while the front
//   drains or once the connection's last response is queued.
// - Native reads (Linux): a connection with an attached socket may also be
//   read here (StartReading). The front watches such sockets in one epoll
//   set (read_fd(): readable when any is) and ReadReady() reads each ready
//   one once, non-blocking, and feeds it, so a loop iteration costs the
//   caller one call however many connections it reads, and no bytes object
//   per read. ReadReady() reports only what needs the caller: forwarded
//   requests, output to write or a connection to close or pause (NeedsWrite),
//   and the end of the input (EOF or a read error; that socket is no longer
//   read). set_reading() pauses and resumes reading (back-pressure);
//   StopReading() ends it for good (the caller reads again, or closes); both
//   leave the caller's own reads of the socket to the caller. Requests
//   decoded by ReadReady() are submitted by the next RunReady()/Flush().
// - Protocol errors (400/413/417/431) are answered after the responses
//   already owed, then the connection closes: want_close() and linger().
//   Fail() does the same for an error the caller decides (a 408 when the
//   request being received is late).
// - Slow clients: phase() says whether a partial request is buffered, and
//   whether its head is complete; phase_since() is the time (the `now` given
//   to the Feed that began that phase) from which its deadline runs.
// - Deadlines: parameters.timeout (µs), X-Request-Timeout-Ms, then the
//   front's default; an expired request gets 504 and never runs. A full
//   queue gets 429 with Retry-After. Close() (the client went away) cancels
//   the connection's queued requests.
// - Tracing (off by default): with set_trace_every(n), every n-th request
//   parsed, and every request whose `traceparent` header carries the W3C
//   sampled flag, is chosen for tracing. A chosen request the native path
//   answers stays native: its server span's ids are made here (the caller's
//   trace when its traceparent is valid, else a new one), its response gets
//   the span's `traceparent` header, and what its spans need (times, status,
//   batch) is left in a TracedRequest that TakeTraces() empties once per
//   drain. A chosen request the native path does not answer is forwarded
//   with ForwardedRequest::traced, for the Python path to trace. Off costs
//   one branch per request.
// - Threading: every method runs on the event loop's thread, except that
//   batcher threads deliver completions into the front's queue. A request's
//   decoded inputs stay owned by the front until its completion arrives.
// - Canary routes: RegisterRoute() serves a public name over weighted arms,
//   each a version with its own batcher (every arm takes the same inputs and
//   gives the same outputs). A request goes to the arm its point falls in: the
//   CRC-32 of its route key (the v2 parameter `route_key`, else the
//   `x-route-key` header) modulo the total weight, so a key always gets the
//   same arm, or a uniform draw without a key — the Python router's rule. A
//   `route_key` that is not a string, integer or bool is forwarded (Python
//   spells other values). `/versions/N/infer` goes to the arm serving N.
//   TakeRoutePicks() gives the requests each arm got, for the route metrics.
//   A route may have a shadow arm: once a request was accepted by its arm, a
//   `fraction` of them is also submitted to the shadow (at most
//   `max_in_flight` at once, else counted as skipped), with no deadline; the
//   answer is counted by outcome (TakeShadowCounts) and never seen.
// - Prediction records: for a model registered with record_predictions, every
//   successful request that carried an `id` leaves the first row of the
//   model's first output (as float64) in a buffer that TakePredictions()
//   empties; the feedback join reads it once per drain. The buffer is
//   bounded (kMaxRecordedPredictions): beyond it records are dropped and
//   counted, never waited for.
#pragma once

#include <array>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <tuple>
#include <unordered_map>
#include <utility>
#include <vector>

#include "aiarch/batcher.h"
#include "aiarch/completion.h"
#include "aiarch/http_parser.h"
#include "aiarch/status.h"
#include "aiarch/v2_codec.h"

namespace aiarch {

struct HttpFrontConfig {
  HttpParserLimits limits;
  int64_t default_timeout_ns = 0;  // <= 0: none
};

// A request the native path does not answer, with what the Python
// application reads: lowercase names of the headers it uses, and the body.
struct ForwardedRequest {
  uint64_t slot = 0;  // pass back to Respond()
  std::string method;
  std::string path;
  std::string query;
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;
  bool keep_alive = true;
  bool traced = false;  // chosen for tracing (HttpFront::set_trace_every)
};

class HttpConnection;

// What the spans of one traced request answered natively are made of. Times
// are in the batcher's clock (steady_clock ns); the exec_* ones stay 0 for a
// request that never ran.
struct TracedRequest {
  std::string path;         // the request's path: the server span is "POST <path>"
  std::string model;        // the model run (its runtime name); empty: none found
  std::string traceparent;  // the caller's, when valid (the span's parent); else empty
  std::string tracestate;   // the caller's, with a valid traceparent
  uint64_t trace_id_high = 0, trace_id_low = 0;  // the span's trace id
  uint64_t span_id = 0;                          // the server span's id
  int64_t start_ns = 0;                          // request parsed
  int64_t submit_ns = 0;                         // submitted to the batcher (0: never)
  int64_t enqueue_ns = 0, exec_start_ns = 0, exec_end_ns = 0, batch_rows = 0;
  int64_t encode_start_ns = 0, encode_end_ns = 0;  // encode of a successful batch
  int64_t end_ns = 0;                              // response ready
  int status = 0;                                  // HTTP status answered
  bool cache_hit = false;
  std::string error;  // the batch's error, when it failed
};

// The predictions of one model's requests that carried an id, since the last
// TakePredictions(): ids[i] answered values[i * width, (i + 1) * width).
struct RecordedPredictions {
  std::string model;
  std::string version;
  std::vector<std::string> ids;
  std::vector<double> values;
  size_t width = 0;
};

class HttpFront : public std::enable_shared_from_this<HttpFront> {
 public:
  static Status Create(HttpFrontConfig config, std::shared_ptr<HttpFront>* out);

  ~HttpFront();
  HttpFront(const HttpFront&) = delete;
  HttpFront& operator=(const HttpFront&) = delete;

  int fd() const { return queue_->fd(); }

  // Native reads (see the contract): readable while a connection reading
  // here has input (-1 where there are no native reads).
  int read_fd() const { return read_fd_; }
  // What a native read left for the caller.
  struct ReadEvent {
    uint64_t connection = 0;
    std::vector<ForwardedRequest> forwarded;
    int ended = 0;  // 0: still open; kEndOfInput: the peer shut its side; else the read's errno
  };
  static constexpr int kEndOfInput = -1;
  // Reads every connection whose socket is ready (once each), received at
  // `now` (as Feed's); appends to `events` those that need the caller:
  // forwarded requests, NeedsWrite(max_owed), the front draining, the end.
  void ReadReady(double now, size_t max_owed, std::vector<ReadEvent>* events);

  // Serves `model` natively through `batcher`. `owner` keeps the batcher
  // alive while registered and while its requests are in flight. Replaces a
  // registration of the same name.
  // With `record_predictions`, its answered requests that carry an id are
  // recorded for TakePredictions().
  void RegisterModel(V2Model model, Batcher* batcher, std::shared_ptr<void> owner,
                     bool record_predictions = false);
  bool UnregisterModel(const std::string& name);
  std::vector<std::string> registered() const;

  // One arm of a canary route: a version of the public model (`model.name`
  // is the public name, `model.version` the arm's) and its batcher.
  struct RouteArm {
    V2Model model;
    Batcher* batcher = nullptr;
    std::shared_ptr<void> owner;  // keeps the batcher alive while registered
    uint64_t weight = 0;
    bool record_predictions = false;
  };
  struct Shadow {
    RouteArm arm;  // its weight is unused
    double fraction = 0;
    size_t max_in_flight = 0;
  };
  // Serves `name` natively over `arms` (replacing a route of that name), with
  // `shadow` when given; the arms' picks so far are dropped with the old
  // registration (shadow counts are kept: mirrored requests may still run).
  void RegisterRoute(const std::string& name, std::vector<RouteArm> arms,
                     const Shadow* shadow = nullptr);
  bool UnregisterRoute(const std::string& name);
  std::vector<std::string> registered_routes() const;
  // The requests each arm of route `name` got since the last call (in arm
  // order), then zero; empty when `name` is not a registered route.
  std::vector<uint64_t> TakeRoutePicks(const std::string& name);
  // Mirrored requests of route `name` by (shadow version, outcome: "ok",
  // "failed", "cancelled", "skipped") since the last call, then zero.
  std::vector<std::tuple<std::string, std::string, uint64_t>> TakeShadowCounts(
      const std::string& name);

  // While draining, every response says `connection: close`.
  void set_draining(bool draining) { draining_ = draining; }
  bool draining() const { return draining_; }

  // Trace every `every`-th request, and every request with a sampled
  // traceparent; 0 turns tracing off.
  void set_trace_every(uint64_t every) {
    trace_every_ = every;
    trace_count_ = 0;
  }
  uint64_t trace_every() const { return trace_every_; }
  // Off: every traced request is forwarded, native or not (for a caller that
  // cannot make spans with the ids chosen here).
  void set_trace_native(bool native) { trace_native_ = native; }
  bool trace_native() const { return trace_native_; }

  std::shared_ptr<HttpConnection> Connect(uint64_t id);

  // Submits the native requests this loop iteration's reads decoded, then
  // runs the batches those submits made ready (inline execution); returns how
  // many ran. Submitting once per iteration instead of once per read lets the
  // iteration's requests share a batch and wake a worker once.
  int RunReady();
  // Encodes every completion waiting in the queue into its connection;
  // returns the ids of connections that have output to write (including
  // those RunReady() answered at submit: cache hits, refusals).
  std::vector<uint64_t> Drain();
  // RunReady() then Drain(), with the batches run here delivering into the
  // queue without a wake-up: an inline batch is answered in the same loop
  // iteration, with no eventfd write and read.
  std::vector<uint64_t> Flush();

  size_t in_flight() const { return pending_.size() + decoded_.size(); }

  // The prediction records since the last call, one entry per model; empties
  // the buffer. Not thread-safe (the loop thread only).
  std::vector<RecordedPredictions> TakePredictions();
  // Records dropped because the buffer was full, since creation.
  uint64_t predictions_dropped() const { return predictions_dropped_; }
  static constexpr size_t kMaxRecordedPredictions = 1 << 16;

  // The traced requests answered natively since the last call; empties the
  // buffer. Bounded (kMaxTraces): beyond it, records are dropped and counted.
  std::vector<TracedRequest> TakeTraces();
  uint64_t traces_dropped() const { return traces_dropped_; }
  static constexpr size_t kMaxTraces = 1 << 16;

 private:
  friend class HttpConnection;
  struct Model {
    V2Model v2;
    Batcher* batcher = nullptr;
    std::shared_ptr<void> owner;
    bool record = false;
  };
  // A route's mirrored requests: outcomes by shadow version, and how many run
  // now. Shared by the route's registrations and the requests in flight.
  struct ShadowStats {
    std::map<std::string, std::array<uint64_t, 4>> counts;  // ok, failed, cancelled, skipped
    size_t in_flight = 0;
  };
  struct Route {
    std::vector<std::shared_ptr<Model>> arms;
    std::vector<uint64_t> bounds;  // cumulative weights, in arm order
    std::vector<uint64_t> picks;   // requests per arm since TakeRoutePicks()
    uint64_t total = 0;
    std::shared_ptr<Model> shadow;  // null: none
    double shadow_fraction = 0;
    size_t shadow_max_in_flight = 0;
    std::shared_ptr<ShadowStats> shadow_stats;
    // The arm serving `version`, or null.
    std::shared_ptr<Model> ArmServing(std::string_view version) const;
  };
  struct Pending {
    std::shared_ptr<HttpConnection> conn;
    std::shared_ptr<Model> model;
    uint64_t slot = 0;
    bool keep_alive = true;
    V2ResponsePlan plan;
    std::vector<V2DecodedInput> inputs;  // the batcher reads these until completion
    int64_t timeout_ns = 0;
    uint32_t priority = 0;
    std::unique_ptr<TracedRequest> trace;  // set when chosen for tracing
    // A routed request whose route has a shadow: mirrored (maybe) once its
    // arm accepted it. A mirrored request itself has `mirror_of` set and no
    // connection.
    std::shared_ptr<Model> shadow;
    double shadow_fraction = 0;
    size_t shadow_max_in_flight = 0;
    std::shared_ptr<ShadowStats> shadow_stats;
    std::shared_ptr<ShadowStats> mirror_of;
  };

  HttpFront(HttpFrontConfig config, std::shared_ptr<CompletionQueue> queue, int read_fd)
      : config_(config), queue_(std::move(queue)), read_fd_(read_fd) {}
  void Submit(std::unique_ptr<Pending> p);
  // Encodes completion `c` of `p` into its connection (or counts a mirrored
  // one); `rows` is scratch.
  void Answer(Completion& c, Pending* p, std::vector<const uint8_t*>* rows,
              std::vector<std::shared_ptr<HttpConnection>>* touched);
  // A request's record: a recycled one when there is one (its input list and
  // response plan keep their capacity), else a new one.
  std::unique_ptr<Pending> NewPending();
  // `p` answered: releases what it refers to and keeps it for NewPending().
  void Recycle(std::unique_ptr<Pending> p);
  // `p`'s inputs into its model's batcher; lists the batcher for RunReady()
  // when the request is queued there for the caller.
  Status SubmitToBatcher(const Pending& p, uint64_t* request_id, CachedResponse* hit);
  // Submits a sample of `p`'s requests (accepted by its arm) to its route's shadow.
  void Mirror(const Pending& p);
  // Counts the outcome of a mirrored request that finished.
  static void CountMirrored(const Pending& p, const Status& status);
  static std::shared_ptr<Model> MakeModel(RouteArm& arm);
  // Lists `model` for this iteration's RunReady() (once per batcher).
  void MarkDirty(const std::shared_ptr<Model>& model);
  std::shared_ptr<Model> Find(std::string_view name) const;
  Route* FindRoute(std::string_view name) const;
  // The arm of `route` for a request with route key `key` (null: none); counts the pick.
  const std::shared_ptr<Model>& PickArm(Route& route, const std::string_view* key);
  bool SampleTrace(const HttpRequest& req);
  // A traced request's record, with the ids of its server span.
  std::unique_ptr<TracedRequest> StartTrace(const HttpRequest& req);
  // `bytes` (a whole response) answered `trace`: adds the span's traceparent
  // header to it, notes the status and the time, and keeps the record.
  void FinishTrace(std::unique_ptr<TracedRequest> trace, std::string* bytes);
  // Records `row` (the first output's row of a request with id `id`).
  void Record(const Model& model, const std::string& id, const TensorSpec& spec,
              const uint8_t* row);

  const HttpFrontConfig config_;
  const std::shared_ptr<CompletionQueue> queue_;
  const int read_fd_;                                      // the epoll set of native reads
  std::unordered_map<uint64_t, HttpConnection*> readers_;  // reading natively, by id
  std::string read_buffer_;                                // one read's bytes
  std::unordered_map<std::string, std::shared_ptr<Model>> models_;
  std::unordered_map<std::string, std::unique_ptr<Route>> routes_;
  std::unordered_map<std::string, std::shared_ptr<ShadowStats>> shadow_stats_;  // by route
  uint64_t route_draws_ = 0;  // the uniform draws' counter (SplitMix64 over it)
  std::unordered_map<uint64_t, std::unique_ptr<Pending>> pending_;  // by request id
  std::vector<std::shared_ptr<Model>> dirty_;      // submitted to this iteration, inline execution
  std::vector<std::unique_ptr<Pending>> decoded_;  // decoded this iteration, not yet submitted
  std::vector<std::unique_ptr<Pending>> spare_;    // answered, for NewPending()
  static constexpr size_t kMaxSpare = 1024;
  SubmitArgs submit_args_;  // SubmitToBatcher's, reused (its vectors keep their capacity)
  // Connections RunReady() gave output, for Drain().
  std::vector<std::shared_ptr<HttpConnection>> touched_;
  bool draining_ = false;
  uint64_t trace_every_ = 0;  // 0: tracing off
  uint64_t trace_count_ = 0;  // requests since the last one counted in for tracing
  bool trace_native_ = true;  // traced requests answered natively (else forwarded)
  std::unordered_map<std::string, RecordedPredictions> recorded_;  // by model name
  size_t recorded_count_ = 0;
  uint64_t predictions_dropped_ = 0;
  std::vector<TracedRequest> traces_;
  uint64_t traces_dropped_ = 0;
};

class HttpConnection : public std::enable_shared_from_this<HttpConnection> {
 public:
  HttpConnection(std::shared_ptr<HttpFront> front, uint64_t id);
  ~HttpConnection();
  HttpConnection(const HttpConnection&) = delete;
  HttpConnection& operator=(const HttpConnection&) = delete;

  uint64_t id() const { return id_; }
  // Parses the bytes of one read, received at `now` (the caller's clock,
  // used only for phase_since()); appends the requests for the caller to
  // `forwarded`, in order.
  void Feed(const char* data, size_t size, std::vector<ForwardedRequest>* forwarded,
            double now = 0);
  // The response to a forwarded request.
  void Respond(uint64_t slot, std::string_view bytes, bool keep_alive);
  // Bytes to write now (possibly empty).
  std::string TakeOutput();
  // The output taken so far ends with this connection's last response.
  bool want_close() const { return closing_; }
  // The last response refused the request mid-body: half-close and drain a
  // moment before closing, or the client may never read the response.
  bool linger() const { return linger_; }
  // Responses owed (requests received and not yet answered on the wire).
  size_t owed() const { return slots_.size(); }
  // The caller has something to do after a read: output to write, the
  // connection to close, or `max_owed` responses owed (reading must pause).
  bool NeedsWrite(size_t max_owed) const {
    return !out_.empty() || closing_ || slots_.size() >= max_owed;
  }
  // Part of a request is buffered.
  bool in_request() const { return parser_.in_request(); }
  // What is buffered of the request being received.
  enum class Phase { kNone, kHead, kBody };
  Phase phase() const { return phase_; }
  double phase_since() const { return phase_since_; }
  // Answers `status` after the responses owed, reads nothing more, and
  // closes (with linger()): the request being received is abandoned.
  void Fail(int status, std::string_view message);
  // The client went away: cancel what is queued, drop what is owed.
  void Close();
  bool closed() const { return closed_; }
  // Direct writes (see the contract): the socket to send on (dup()ed here;
  // false when it cannot be), and whether sending is allowed now.
  bool AttachSocket(int fd);
  void set_direct_writes(bool allowed) { direct_writes_ = allowed; }
  bool direct_writes() const { return direct_writes_ && socket_ >= 0; }
  // Native reads (see the contract): false when there is no attached socket
  // or the front cannot watch it (the caller keeps reading).
  bool StartReading();
  // Pauses (false) or resumes reading natively; false when resuming failed.
  bool set_reading(bool on);
  bool reading() const { return watched_; }
  void StopReading();
  // The `now` of the last Feed (or as set): when the peer was last heard.
  double last_active() const { return last_active_; }
  void set_last_active(double now) { last_active_ = now; }

 private:
  friend class HttpFront;
  struct Slot {
    uint64_t seq = 0;
    bool ready = false;
    bool close = false;
    std::string bytes;
    uint64_t request_id = 0;  // native request in flight, for Cancel()
    Batcher* batcher = nullptr;
  };

  Slot& NewSlot();
  Slot* FindSlot(uint64_t seq);
  void Fill(Slot& slot, bool keep_alive);
  void Flush();
  void Error(Slot& slot, int status, std::string_view message, bool keep_alive,
             const std::vector<std::pair<std::string, std::string>>& headers = {});
  void ErrorFromStatus(Slot& slot, const Status& status, bool keep_alive);
  // True when answered (or queued) natively; false to forward.
  // `trace`, when set, is the request's tracing record (answered natively,
  // the record goes with it; forwarded, it is dropped).
  bool HandleNative(const HttpRequest& req, Slot& slot, bool keep_alive,
                    std::unique_ptr<TracedRequest>* trace);
  // Flush(), adding this connection to `touched` when the output was empty
  // before.
  void FlushTouching(std::vector<std::shared_ptr<HttpConnection>>* touched);
  // Sends the output to the socket when direct writes are allowed; true when
  // nothing is left for the caller to do.
  bool WriteDirect();
  void UpdatePhase(double now, bool completed_some);

  std::shared_ptr<HttpFront> front_;
  const uint64_t id_;
  HttpRequestParser parser_;
  HttpRequest request_;  // Feed()'s parse target; its views are valid during one Feed() only
  std::deque<Slot> slots_;
  uint64_t next_seq_ = 1;
  std::string out_;
  bool stop_parsing_ = false;  // a request closes the connection: the rest is not read
  bool closing_ = false;       // the output holds the connection's last response
  bool linger_ = false;
  bool closed_ = false;
  Phase phase_ = Phase::kNone;
  double phase_since_ = 0;
  int socket_ = -1;  // our dup of the connection's socket, for direct writes and reads
  bool direct_writes_ = false;
  bool reader_ = false;   // read natively (StartReading, until StopReading)
  bool watched_ = false;  // in the front's epoll set now (reading, not paused)
  double last_active_ = 0;
};

}  // namespace aiarch
