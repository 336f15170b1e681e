// Dynamic batcher: one per model.
//
// Concurrency contract
// - Submit(), Cancel(), Stats(), Shutdown(): thread-safe; Submit and Cancel
//   take the batcher mutex for a few hundred nanoseconds (blocking, not
//   lock-free). Submit never waits for execution: it enqueues, or fails at
//   once (queue full => ResourceExhausted with a retry-after estimate).
// - `instances` worker threads form and execute batches; up to `instances`
//   batches are in flight at once. With inline_execution, a batch that a
//   submit makes closable runs on the submitting thread instead: inside
//   Submit() for blocking callers, or in the caller's next RunReady() when it
//   set caller_flushes (an event loop). Batches closed by time (max_delay,
//   deadlines) always run on workers. The executor is called with no batcher
//   lock held.
// - Ordering promised: within one priority level, requests enter batches in
//   submit order; a higher-priority level is always drained first. Every
//   request receives exactly one Completion. Ordering NOT promised:
//   completion order across batches when instances > 1.
// - Expiry: a request whose deadline has passed — or, with
//   drop_unreachable, whose deadline cannot be met given the measured
//   execution time — is completed with DeadlineExceeded when a batch is
//   formed, and is never executed.
// - Allocation: Submit allocates the request record; each batch allocates its
//   input and output buffers.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "aiarch/cache.h"
#include "aiarch/clock.h"
#include "aiarch/completion.h"
#include "aiarch/histogram.h"
#include "aiarch/status.h"
#include "aiarch/tensor.h"

namespace aiarch {

struct BatchConfig {
  int64_t max_batch_size = 64;                 // rows per batch
  int64_t max_delay_ns = 500'000;              // longest the oldest request waits for company
  std::vector<int64_t> preferred_batch_sizes;  // pad a batch up to the smallest size >= its rows
  int64_t max_queue_rows = 4096;               // admission bound; beyond it Submit fails at once
  int instances = 1;                           // batches in flight (worker threads)
  int priority_levels = 1;                     // levels 1..N, 1 is served first
  int default_priority_level = 0;              // level for priority 0; 0 = the lowest (N)
  bool drop_unreachable = true;  // expire requests the measured exec time cannot serve
  // When a Submit closes a batch (it filled it, or max_delay is 0) and an
  // instance is free, run that batch on the submitting thread: no thread
  // hand-off in either direction. Best for executors that hold the GIL;
  // executors that release it overlap better on worker threads.
  bool inline_execution = true;

  Status Validate() const;
};

// A formed batch as an executor sees it. Inputs are contiguous, padded to
// padded_rows (pad rows are zero).
struct Batch {
  uint64_t seq = 0;
  int64_t rows = 0;
  int64_t padded_rows = 0;
  std::vector<std::shared_ptr<Buffer>> inputs;  // one per input spec
};

struct ExecutorOutput {
  TensorSpec spec;               // dtype and trailing shape (name may be empty)
  std::shared_ptr<Buffer> data;  // padded_rows * spec.RowBytes() bytes
};

class Executor {
 public:
  virtual ~Executor() = default;
  // Runs one batch. Called on a batcher worker thread, once per batch, with
  // no batcher lock held; concurrently from several workers when
  // instances > 1. On failure, `detail` may carry extra information to every
  // request of the batch.
  virtual Status Execute(const Batch& batch, std::vector<ExecutorOutput>* outputs,
                         std::shared_ptr<ErrorDetail>* detail) = 0;
};

struct SubmitArgs {
  struct Input {
    const uint8_t* data;  // caller-owned; must stay valid until the completion
    size_t bytes;
    DType dtype;
    std::vector<int64_t> shape;  // full shape, rows first
    bool contiguous;
  };
  std::vector<Input> inputs;  // in the model's input order
  int64_t timeout_ns = 0;     // <= 0: no deadline
  uint32_t priority = 0;      // 0 = default level
  std::shared_ptr<CompletionSink> sink;
  // The caller promises to call RunReady() soon (an event loop does it once
  // per iteration): a batch this submit makes closable is left for that call
  // instead of waking a worker, so requests submitted in the same iteration
  // share a batch with no thread hand-off.
  bool caller_flushes = false;
};

// A cache hit answered at submit time: outputs for the request's rows,
// packed one after another in output order inside `data`.
struct CachedResponse {
  std::shared_ptr<Buffer> data;
  std::shared_ptr<const std::vector<TensorSpec>> specs;
  std::vector<size_t> offsets;
  int64_t rows = 0;
};

struct BatcherStats {
  // `success` counts requests answered from the cache as well as executed ones.
  uint64_t success = 0, failed = 0, expired = 0, rejected = 0, cancelled = 0;
  uint64_t cache_hits = 0;
  int64_t last_inference_ms = 0;  // wall clock (ms since the epoch) of the last answer; 0 = none
  uint64_t batches = 0, rows = 0;
  int64_t queue_rows = 0;
  int64_t in_flight_batches = 0;
  uint64_t queue_ns_total = 0, execution_ns_total = 0, end_to_end_ns_total = 0;
  double service_rate_rows_per_s = 0;  // 0 until measured
};

class Batcher {
 public:
  // Validates the config and specs and starts the workers. `outputs` may be
  // empty: they are learned from the first successful batch. `cache` may be
  // null. On success *out owns the batcher; on failure *out is untouched.
  static Status Create(std::string name, BatchConfig config, std::vector<TensorSpec> inputs,
                       std::vector<TensorSpec> outputs, std::shared_ptr<Executor> executor,
                       std::shared_ptr<Clock> clock, std::shared_ptr<ResponseCache> cache,
                       std::unique_ptr<Batcher>* out);
  ~Batcher();  // Shutdown(drain=false) if not already shut down.

  // Validates and enqueues. On a cache hit fills *hit (when non-null) and
  // enqueues nothing; otherwise sets *request_id. The caller must keep the
  // input bytes valid until the request's completion arrives. Thread-safe.
  Status Submit(const SubmitArgs& args, uint64_t* request_id, CachedResponse* hit);
  // Executes, on the calling thread, every batch that may close now while an
  // instance is free. Returns the number of batches run. Thread-safe.
  int RunReady();
  // Cancels a queued request: it completes with Cancelled at once. Returns
  // false when it is already executing or finished. Thread-safe.
  bool Cancel(uint64_t request_id);
  // Stops admission; with drain, executes what is queued, otherwise fails it
  // with Unavailable; joins the workers. Blocks. Thread-safe, idempotent.
  void Shutdown(bool drain);

  BatcherStats Stats() const;  // Thread-safe.
  const std::string& name() const { return name_; }
  const BatchConfig& config() const { return config_; }
  std::vector<TensorSpec> input_specs() const;   // Thread-safe.
  std::vector<TensorSpec> output_specs() const;  // Thread-safe; empty until known.
  const Histogram& queue_histogram() const { return queue_ns_; }
  const Histogram& execution_histogram() const { return execution_ns_; }
  const Histogram& end_to_end_histogram() const { return end_to_end_ns_; }
  const Histogram& batch_size_histogram() const { return batch_rows_; }
  ResponseCache* cache() const { return cache_.get(); }

 private:
  struct Request;
  Batcher(std::string name, BatchConfig config, std::vector<TensorSpec> inputs,
          std::vector<TensorSpec> outputs, std::shared_ptr<Executor> executor,
          std::shared_ptr<Clock> clock, std::shared_ptr<ResponseCache> cache);

  void WorkerLoop(int worker);
  // Everything below with "Locked" runs with mu_ held.
  int64_t CloseTimeLocked(int64_t now) const;
  std::unique_ptr<Request> UnqueueLocked(Request* r);
  void FormBatchLocked(int64_t now, std::vector<std::unique_ptr<Request>>* batch,
                       std::vector<std::unique_ptr<Request>>* expired);
  void WaitLocked(std::unique_lock<std::mutex>& lock, int worker, int64_t until_ns);
  int64_t EstimateExecNsLocked(int64_t rows) const;
  int64_t PaddedRows(int64_t rows) const;
  double RetryAfterSecondsLocked(int64_t extra_rows) const;
  void RunFormed(std::vector<std::unique_ptr<Request>>& batch,
                 std::vector<std::unique_ptr<Request>>& expired, int64_t now);
  void ExecuteBatch(std::vector<std::unique_ptr<Request>>& requests, int64_t start_ns);
  // Delivers one Completion per request, grouped by sink so that each event
  // loop is woken once per call; fill(request, completion) sets the payload.
  template <typename Fill>
  void DeliverGrouped(std::vector<std::unique_ptr<Request>>& requests, Fill&& fill);
  void CompleteWithStatus(std::vector<std::unique_ptr<Request>>& requests, const Status& status,
                          const std::shared_ptr<ErrorDetail>& detail);
  Status Validate(const SubmitArgs& args, int64_t* rows) const;
  bool CacheKeyBytes(const SubmitArgs& args, std::vector<uint8_t>* scratch, const uint8_t** key,
                     size_t* size) const;
  void SettleFromClock();

  const std::string name_;
  const BatchConfig config_;
  const std::shared_ptr<Executor> executor_;
  const std::shared_ptr<Clock> clock_;
  const std::shared_ptr<ResponseCache> cache_;
  uint64_t clock_subscription_ = 0;

  mutable std::mutex mu_;
  std::condition_variable work_cv_;       // workers wait here for requests / time
  std::condition_variable settled_cv_;    // ManualClock::Advance waits here
  const std::vector<TensorSpec> inputs_;  // immutable after Create: read without mu_
  // Learned once, then immutable: published with std::atomic_store so that
  // Submit's cache probe and every batch share it without copying specs.
  std::shared_ptr<const std::vector<TensorSpec>> outputs_;
  std::vector<std::deque<Request*>> levels_;                       // guarded by mu_
  std::unordered_map<uint64_t, std::unique_ptr<Request>> queued_;  // guarded by mu_
  int64_t queued_rows_ = 0;                                        // guarded by mu_
  int idle_workers_ = 0;                                           // guarded by mu_
  int64_t in_flight_ = 0;                                          // guarded by mu_
  bool stopping_ = false;                                          // guarded by mu_
  bool drain_ = false;                                             // guarded by mu_
  uint64_t settle_epoch_ = 0;                                      // guarded by mu_
  std::vector<uint64_t> worker_settled_;                           // guarded by mu_
  std::vector<bool> worker_alive_;                                 // guarded by mu_
  std::vector<int64_t> exec_estimate_ns_;  // EWMA per padded batch size; guarded by mu_
  double service_rate_ = 0;                // rows/s EWMA over all instances; guarded by mu_
  std::vector<std::thread> workers_;
  std::mutex shutdown_mu_;  // serialises Shutdown()

  // Counters are written by workers and read by Stats() without mu_.
  std::atomic<uint64_t> success_{0}, failed_{0}, expired_{0}, rejected_{0}, cancelled_{0};
  std::atomic<uint64_t> batches_{0}, rows_{0}, cache_hits_{0};
  // Stored once per executed batch and once per cache hit; orders nothing (relaxed).
  std::atomic<int64_t> last_inference_ms_{0};
  std::atomic<uint64_t> next_batch_seq_{1};
  int64_t deadline_requests_ = 0;  // queued requests with a deadline; guarded by mu_
  std::atomic<uint64_t> queue_ns_total_{0}, execution_ns_total_{0}, end_to_end_ns_total_{0};
  Histogram queue_ns_;
  Histogram execution_ns_;
  Histogram end_to_end_ns_;
  Histogram batch_rows_;
};

}  // namespace aiarch
