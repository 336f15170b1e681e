// Dynamic batcher: one per model.
//
// Batch policy
// - Idle-aware by default (max_delay_ns = 0): a request that arrives while an
//   execution instance is free starts at once; requests that arrive while
//   every instance is busy queue and form the next batch, which starts as soon
//   as an instance frees. Batches grow with load and nothing waits at low load.
// - max_delay_ns > 0 (opt-in) adds a fixed fill wait: a batch closes when it
//   is full, when its oldest request has waited max_delay_ns, or when the
//   earliest deadline in it would otherwise become unreachable. It pays when
//   fuller batches are worth latency (a GPU whose cost per batch barely grows
//   with rows) and load is steady enough that company arrives within the wait.
//
// Concurrency contract
// - Submit(), Cancel(), Stats(), Shutdown(): thread-safe; Submit and Cancel
//   take the batcher mutex for a few hundred nanoseconds (blocking, not
//   lock-free). Submit never waits for execution: it enqueues, or fails at
//   once (queue full => ResourceExhausted with a retry-after estimate).
// - `instances` worker threads form and execute batches; at most `instances`
//   batches are in flight at once, inline ones included. With
//   inline_execution, a batch that a submit makes closable runs on the
//   submitting thread instead: inside Submit() for blocking callers, or in the
//   caller's next RunReady() when it set caller_flushes (an event loop).
//   Batches closed by time (max_delay, deadlines) always run on workers, and
//   so do batches expected to run longer than inline_max_exec_ns. The
//   executor is called with no batcher lock held.
// - Ordering promised: within one priority level, requests enter batches in
//   submit order; a higher-priority level is always drained first. Every
//   request receives exactly one Completion. Ordering NOT promised:
//   completion order across batches when instances > 1.
// - Expiry: a request whose deadline has passed — or, with
//   drop_unreachable, whose deadline cannot be met given the measured
//   execution time — is completed with DeadlineExceeded and is never
//   executed. A deadline thread completes queued requests at their deadline
//   even while every instance is busy; batch formation checks again with a
//   fresh clock reading.
// - Failure isolation: when a batch of several requests fails, it is split in
//   halves that run again, recursively, so that only the requests whose rows
//   make the model fail get its error. Each extra execution spends one credit
//   of a per-batcher allowance that starts at 2 * max_batch_size, is capped
//   there, and earns 2 credits per request served successfully; with no
//   credit left a failed part fails whole. A model that fails on every batch
//   therefore costs at most 2 * max_batch_size extra executions in all, and
//   isolation never does more than two extra executions per good request.
// - Shutdown returns only once no batch is executing, on any thread.
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
  int64_t max_batch_size = 64;  // rows per batch
  // Fixed fill wait: longest the oldest request waits for company even when an
  // instance is free. 0 (default): idle-aware, a free instance starts at once.
  int64_t max_delay_ns = 0;
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
  // With inline_execution: run inline only a batch whose measured execution
  // time (the moving average for its size, see EstimateExecNsLocked) is at
  // most this; a worker runs slower ones, and every batch until one has been
  // measured. Bounds how long an inline batch holds the submitting thread (an
  // event loop). 0: no bound.
  int64_t inline_max_exec_ns = 0;

  Status Validate() const;
};

// A formed batch as an executor sees it. Inputs are contiguous, padded to
// padded_rows (pad rows are zero).
struct Batch {
  uint64_t seq = 0;
  int64_t rows = 0;
  int64_t padded_rows = 0;
  std::vector<std::shared_ptr<Buffer>> inputs;  // one per input spec
  int64_t exec_start_ns = 0, exec_end_ns = 0;   // the executor call, in the batcher's clock
};

struct ExecutorOutput {
  TensorSpec spec;               // dtype and trailing shape (name may be empty)
  std::shared_ptr<Buffer> data;  // padded_rows * spec.RowBytes() bytes
};

class Executor {
 public:
  virtual ~Executor() = default;
  // Runs one batch. Called on a batcher worker thread (or a submitting thread
  // with inline_execution), with no batcher lock held; concurrently when
  // instances > 1. On failure, `detail` may carry extra information to every
  // request of the batch; the batcher may then call again on parts of the
  // failed batch to isolate the failing requests.
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
  // Failure isolation: failed batches that were split, and the extra
  // executions run to split them (also counted in batches and rows).
  uint64_t isolated_batches = 0, isolation_executions = 0;
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
  // with Unavailable; joins the workers and waits until no batch is executing
  // on any thread (inline executions included). Blocks. Thread-safe,
  // idempotent. Must not be called from inside the executor.
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

  using Requests = std::vector<std::unique_ptr<Request>>;

  void WorkerLoop(int worker);
  void DeadlineLoop();
  // Everything below with "Locked" runs with mu_ held.
  int64_t CloseTimeLocked(int64_t now) const;
  std::unique_ptr<Request> UnqueueLocked(Request* r);
  void ExpireLocked(int64_t now, Requests* expired);
  int64_t EarliestDeadlineLocked() const;
  void FormBatchLocked(int64_t now, Requests* batch, Requests* expired);
  void WaitLocked(std::unique_lock<std::mutex>& lock, int participant, int64_t until_ns,
                  std::condition_variable& cv);
  void MarkBusyLocked(int participant, bool busy);
  void FinishInFlightLocked();
  int64_t EstimateExecNsLocked(int64_t rows) const;
  // A batch formed now may run on the calling thread (inline_max_exec_ns).
  bool InlineAllowedLocked() const;
  int64_t PaddedRows(int64_t rows) const;
  double RetryAfterSecondsLocked(int64_t extra_rows) const;
  void RunFormed(Requests& batch, Requests& expired, int64_t now);
  void CompleteExpired(Requests& expired);
  void ExecuteBatch(Requests& requests, int64_t start_ns);
  // Runs requests[begin, end) as one batch; on failure splits it (see
  // "Failure isolation" above). Delivers every completion of the range.
  void ExecuteIsolating(Requests& requests, size_t begin, size_t end);
  // One model call over requests[begin, end): gather, execute, check outputs.
  Status ExecuteOnce(const Requests& requests, size_t begin, size_t end, Batch* batch,
                     std::shared_ptr<BatchResult>* result, std::shared_ptr<ErrorDetail>* detail);
  void DeliverSuccess(Requests& requests, size_t begin, size_t end, const Batch& batch,
                      const std::shared_ptr<BatchResult>& result);
  bool TakeIsolationCredit();
  // Delivers one Completion per request of [begin, end), grouped by sink so
  // that each event loop is woken once per call; fill(request, completion)
  // sets the payload.
  template <typename Fill>
  void DeliverGrouped(Requests& requests, size_t begin, size_t end, Fill&& fill);
  void CompleteWithStatus(Requests& requests, size_t begin, size_t end, const Status& status,
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
  std::condition_variable deadline_cv_;   // the deadline thread waits here
  std::condition_variable idle_cv_;       // Shutdown waits here for in_flight_ == 0
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
  bool deadline_thread_stop_ = false;                              // guarded by mu_
  // What the deadline thread's wait ends at; a submit with an earlier
  // deadline wakes it. kNoDeadline while it waits for any deadline.
  int64_t deadline_wake_ns_;  // guarded by mu_
  // The earliest deadline among requests left for the caller's RunReady()
  // since its last call: RunReady() wakes the deadline thread for it only if
  // such a request is still queued when it returns. At low load every
  // request runs there, and no thread is woken for it.
  int64_t caller_deadline_ns_;  // guarded by mu_
  // Rows of queued requests left for their caller's RunReady() (caller_owned):
  // while they are all that is queued, workers wait for RunReady() instead of
  // racing it for the batch (a worker starting up would otherwise take it, and
  // the caller's iteration would lose its inline answer).
  int64_t caller_rows_ = 0;  // guarded by mu_
  // RunReady() hands over what it leaves by starting a new epoch: only
  // requests left in the current one count in caller_rows_ (no queue walk).
  uint64_t caller_epoch_ = 0;  // guarded by mu_
  // ManualClock settling. Participants are the workers (0..instances-1) and
  // the deadline thread (instances). A participant has settled on an epoch
  // once it waits again after it. One executing a batch it formed before the
  // epoch began reads the clock afresh when it returns, so Advance does not
  // wait for it; a batch formed on the new time is waited for.
  uint64_t settle_epoch_ = 0;              // guarded by mu_
  std::vector<uint64_t> settled_epoch_;    // guarded by mu_
  std::vector<bool> participant_alive_;    // guarded by mu_
  std::vector<int64_t> busy_since_epoch_;  // -1 while not executing; guarded by mu_
  int64_t isolation_credit_;               // guarded by mu_
  std::vector<int64_t> exec_estimate_ns_;  // EWMA per padded batch size; guarded by mu_
  double service_rate_ = 0;                // rows/s EWMA over all instances; guarded by mu_
  std::vector<std::thread> workers_;
  std::thread deadline_thread_;
  std::mutex shutdown_mu_;  // serialises Shutdown()

  // Counters are written by workers and read by Stats() without mu_.
  std::atomic<uint64_t> success_{0}, failed_{0}, expired_{0}, rejected_{0}, cancelled_{0};
  std::atomic<uint64_t> batches_{0}, rows_{0}, cache_hits_{0};
  std::atomic<uint64_t> isolated_batches_{0}, isolation_executions_{0};
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
