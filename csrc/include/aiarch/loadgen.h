// HTTP/1.1 load generator: open loop (constant or Poisson arrivals) and closed
// loop (fixed concurrency) over keep-alive connections on epoll.
//
// Why native: a load tool must never be what limits a measurement. One worker
// thread drives many non-blocking connections with pre-serialized request
// bytes and a minimal response parser (status line, Content-Length, chunked),
// so a single thread keeps pace with a C tool such as wrk.
//
// Coordinated omission: in open loop every request has an intended send time
// fixed by the schedule before the run; its latency is measured from that time,
// so a stalled server (or a generator that had to wait for a free connection)
// shows up in the recorded tail instead of silently delaying later sends. The
// actual write time is kept too: `service` is what a closed-loop tool would
// record, and `send_lag` = write time − intended time is the generator's own
// lag, reported so that a point whose schedule was not kept can be refused.
//
// Concurrency contract
// - Start(), Result(): not thread-safe; call once each, from one thread.
// - Wait(), Stop(), Progress(): thread-safe; Stop() never blocks.
// - Worker threads share only the histograms (wait-free records) and relaxed
//   counters; each owns its connections, schedule and parser state.
// - Allocation: connection buffers grow to the largest response seen; the
//   open-loop backlog (requests due while every connection was busy) grows
//   without bound while the target is unreachable or stalled.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "aiarch/histogram.h"
#include "aiarch/status.h"

namespace aiarch {

enum class LoadMode : int {
  kConstant = 0,  // open loop, evenly spaced intended send times
  kPoisson = 1,   // open loop, exponential inter-arrival times
  kClosed = 2,    // closed loop: each connection sends its next request on a reply
};

struct LoadgenConfig {
  std::string host = "127.0.0.1";  // an IPv4 address (names are resolved by the caller)
  int port = 0;
  // Complete HTTP/1.1 requests (request line, headers, body), sent in turn.
  std::vector<std::string> requests;
  LoadMode mode = LoadMode::kConstant;
  double rate_per_s = 0;  // open loop: total offered rate over all threads
  int threads = 1;        // worker threads, each with its share of rate and connections
  int connections = 16;   // total; in closed loop this is the concurrency
  int pipeline = 1;       // open loop: most requests in flight on one connection
  int64_t warmup_ns = 0;  // sent but not recorded
  // The measured part: stops at whichever bound comes first; 0 = no bound
  // (one of the two must be set).
  int64_t duration_ns = 0;
  uint64_t max_requests = 0;
  // After the schedule ends, how long to wait for outstanding replies; those
  // still missing then count as timeouts.
  int64_t drain_timeout_ns = 10'000'000'000;
  int64_t connect_timeout_ns = 2'000'000'000;
  uint64_t seed = 1;                              // Poisson arrivals; thread i uses seed + i
  int64_t highest_latency_ns = int64_t{1} << 37;  // histogram range (~137 s)

  Status Validate() const;
};

// Counters readable while a run is in progress (all phases, warm-up included).
struct LoadgenProgress {
  uint64_t sent = 0;
  uint64_t completed = 0;
  uint64_t errors = 0;     // non-2xx replies, I/O errors and timeouts
  bool measuring = false;  // warm-up is over
  bool done = false;
  double elapsed_s = 0;  // since the schedule started
};

// What the measured part of a run recorded (warm-up excluded).
struct LoadgenResult {
  HistogramSnapshot latency;           // open loop: from the intended time; closed: from the write
  HistogramSnapshot service;           // from the actual write to the complete reply
  HistogramSnapshot send_lag;          // open loop: write time − intended time
  uint64_t scheduled = 0;              // measured requests the schedule called for
  uint64_t sent = 0;                   // of those, written to a connection
  uint64_t completed = 0;              // replies received, any status
  uint64_t succeeded = 0;              // 2xx replies
  uint64_t io_errors = 0;              // connection reset / closed with the request in flight
  uint64_t timeouts = 0;               // no reply within drain_timeout after the schedule ended
  uint64_t unsent = 0;                 // never written (stopped, or no connection could be made)
  uint64_t waited_for_connection = 0;  // due while every connection was busy
  // 2xx replies that arrived inside the measured window (whenever their
  // request was sent): the window's throughput when a duration is set.
  uint64_t succeeded_in_window = 0;
  std::vector<std::pair<int, uint64_t>> status_counts;  // HTTP status -> replies
  int64_t window_ns = 0;    // first measured intended/write time -> last measured reply
  bool stopped = false;     // Stop() ended the run early
  std::string first_error;  // first I/O error text, for the report
};

class LoadGenerator {
 public:
  // Validates `config`. On success *out owns a generator ready to Start().
  static Status Create(LoadgenConfig config, std::unique_ptr<LoadGenerator>* out);
  ~LoadGenerator();  // stops the run and joins the workers
  LoadGenerator(const LoadGenerator&) = delete;
  LoadGenerator& operator=(const LoadGenerator&) = delete;

  // Opens every connection (failing with Unavailable when none can be made
  // within connect_timeout), then starts the workers and returns. Not thread-safe.
  Status Start();
  // Blocks until the run finished or timeout_ns passed (< 0: no limit);
  // true when finished. Thread-safe.
  bool Wait(int64_t timeout_ns);
  // Asks the workers to finish now; replies in flight count as unsent/timeouts
  // only if they never arrive. Thread-safe. Never blocks.
  void Stop();
  // Thread-safe.
  LoadgenProgress Progress() const;
  // The measured results; call after Wait() returned true. Not thread-safe.
  Status Result(LoadgenResult* out) const;

  struct Shared;  // state the worker threads share (defined in loadgen.cc)

 private:
  explicit LoadGenerator(LoadgenConfig config);
  std::unique_ptr<Shared> shared_;
};

// Incremental parser of HTTP/1.1 responses: status line, Content-Length,
// chunked transfer coding, `Connection: close`; bodies are skipped, never
// stored. Exposed for tests. Not thread-safe.
class ResponseParser {
 public:
  enum class Result { kNeedMore, kComplete, kError };
  // Consumes bytes of [data, data + size) into the current response. Sets
  // *consumed to the bytes used; on kComplete the response ends there and the
  // rest belongs to the next one (call Reset() first).
  Result Feed(const char* data, size_t size, size_t* consumed);
  void Reset();
  // The connection ended: completes a response delimited by the close.
  bool FinishOnClose();
  int status() const { return status_; }
  bool close_after() const { return close_after_; }
  const std::string& error() const { return error_; }

 private:
  enum class State { kHead, kBody, kUntilClose, kChunkSize, kChunkData, kChunkCrlf, kTrailer };
  Result ParseHead(const char* data, size_t size, size_t* consumed);
  State state_ = State::kHead;
  std::string head_;  // header bytes gathered across reads (only while incomplete)
  int status_ = 0;
  bool close_after_ = false;
  uint64_t remaining_ = 0;
  std::string error_;
};

}  // namespace aiarch
