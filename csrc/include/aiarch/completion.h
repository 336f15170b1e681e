// Completions: how a finished request gets back to whoever submitted it.
//
// Every submitted request receives exactly one Completion (success, failure,
// expiry, cancellation or shutdown), delivered through the CompletionSink
// given at submit. The batcher delivers a whole batch's completions with one
// Deliver() call per sink, so an event loop is woken once per batch.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "aiarch/status.h"
#include "aiarch/tensor.h"

namespace aiarch {

// Opaque extra detail for a failure (the Python binding stores the original
// exception here). Destroyed on whichever thread drops the last reference.
class ErrorDetail {
 public:
  virtual ~ErrorDetail() = default;
};

// The outputs of one executed batch. Immutable once published; each
// Completion of the batch shares it and addresses its own rows.
struct BatchResult {
  std::shared_ptr<const std::vector<TensorSpec>> specs;
  std::vector<std::shared_ptr<Buffer>> outputs;  // one per spec, >= rows * RowBytes
};

struct Completion {
  uint64_t request_id = 0;
  Status status;
  std::shared_ptr<const BatchResult> result;  // set on success
  int64_t row_offset = 0;
  int64_t rows = 0;
  std::shared_ptr<ErrorDetail> error_detail;  // optional, on failure
  // Timing, in the batcher's clock (ns): when the request was queued, and when
  // the batch that answered it began and ended executing, with that batch's
  // rows; what a traced request's queue and execution spans are made of.
  // exec_* and batch_rows stay 0 for a request that never ran.
  int64_t enqueue_ns = 0;
  int64_t exec_start_ns = 0;
  int64_t exec_end_ns = 0;
  int64_t batch_rows = 0;
};

class CompletionSink {
 public:
  virtual ~CompletionSink() = default;
  // Called by batcher threads, once per batch per sink. Thread-safe.
  virtual void Deliver(std::vector<Completion>&& completions) = 0;
};

// A queue drained by one event loop. Deliver() appends and, when the queue
// goes from empty to non-empty, makes fd() readable (eventfd on Linux, a
// pipe elsewhere); Drain() takes everything and clears the fd.
// Blocking (a short mutex) on both sides; at most one wake-up per Deliver.
//
// Inline drains: the loop's own thread runs inline batches (RunReady) and
// drains right after, inside an InlineDrain scope. Deliveries made by that
// thread inside the scope skip the wake-up — the scope's Drain() takes them
// with no system call and no extra loop iteration; other threads' deliveries
// signal as usual.
class CompletionQueue final : public CompletionSink {
 public:
  static Status Create(std::shared_ptr<CompletionQueue>* out);
  ~CompletionQueue() override;

  int fd() const { return read_fd_; }
  void Deliver(std::vector<Completion>&& completions) override;  // Thread-safe.
  // Returns all queued completions in delivery order. Thread-safe.
  std::vector<Completion> Drain();

  // Marks the constructing thread as the one that drains this queue before
  // the scope ends. On leaving, anything still queued without a wake-up is
  // signalled, so no completion is ever stranded. One scope per queue at a time.
  class InlineDrain {
   public:
    explicit InlineDrain(CompletionQueue& queue);
    ~InlineDrain();
    InlineDrain(const InlineDrain&) = delete;
    InlineDrain& operator=(const InlineDrain&) = delete;

   private:
    CompletionQueue& queue_;
  };

 private:
  CompletionQueue(int read_fd, int write_fd) : read_fd_(read_fd), write_fd_(write_fd) {}
  void Wake();  // with mu_ held
  void ClearWake();

  const int read_fd_;
  const int write_fd_;  // == read_fd_ for an eventfd
  // The thread inside an InlineDrain scope (default id: none).
  std::atomic<std::thread::id> inline_drainer_{};
  std::mutex mu_;
  std::vector<Completion> items_;  // guarded by mu_
  bool signalled_ = false;         // guarded by mu_: the fd is readable for items_
};

// A single completion awaited by a blocking caller (Runtime.infer_sync).
class SyncCompletion final : public CompletionSink {
 public:
  void Deliver(std::vector<Completion>&& completions) override;  // Thread-safe.
  // Waits up to timeout_ns (< 0 = forever). Returns true when the completion
  // arrived. Thread-safe.
  bool Wait(int64_t timeout_ns);
  Completion Take();  // after Wait() returned true. Not thread-safe.

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;  // guarded by mu_
  Completion completion_;
};

}  // namespace aiarch
