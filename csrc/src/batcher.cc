#include "aiarch/batcher.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <limits>
#include <utility>

#include "aiarch/hash.h"

namespace aiarch {

namespace {
constexpr int64_t kNoDeadline = std::numeric_limits<int64_t>::max();
// Weight of the newest sample in the execution-time and service-rate moving
// averages: reacts within a few batches, smooths single outliers.
constexpr double kEwmaAlpha = 0.2;
}  // namespace

struct Batcher::Request {
  uint64_t id = 0;
  int64_t rows = 0;
  int64_t enqueue_ns = 0;
  int64_t deadline_ns = kNoDeadline;
  int level = 0;
  std::vector<const uint8_t*> data;  // caller-owned, one per input
  std::shared_ptr<CompletionSink> sink;
  bool cacheable = false;
  // Left for the submitting caller's RunReady() (caller_flushes): workers do
  // not take it until RunReady() hands over what it could not run.
  bool caller_owned = false;
  uint64_t caller_epoch = 0;  // the RunReady() epoch it was left for (see caller_rows_)
  Hash128 key;
};

Status BatchConfig::Validate() const {
  if (max_batch_size < 1) return Status::InvalidArgument("max_batch_size must be >= 1");
  if (max_delay_ns < 0) return Status::InvalidArgument("max_delay must be >= 0");
  if (max_queue_rows < max_batch_size) {
    return Status::InvalidArgument("max_queue_rows (" + std::to_string(max_queue_rows) +
                                   ") must be >= max_batch_size (" +
                                   std::to_string(max_batch_size) + ")");
  }
  if (inline_max_exec_ns < 0) return Status::InvalidArgument("inline_max_exec must be >= 0");
  if (instances < 1 || instances > 64)
    return Status::InvalidArgument("instances must be in [1, 64]");
  if (priority_levels < 1 || priority_levels > 1024) {
    return Status::InvalidArgument("priority_levels must be in [1, 1024]");
  }
  if (default_priority_level < 0 || default_priority_level > priority_levels) {
    return Status::InvalidArgument("default_priority_level must be in [0, priority_levels]");
  }
  for (int64_t s : preferred_batch_sizes) {
    if (s < 1 || s > max_batch_size) {
      return Status::InvalidArgument(
          "preferred batch size " + std::to_string(s) +
          " must be in [1, max_batch_size=" + std::to_string(max_batch_size) + "]");
    }
  }
  return Status::Ok();
}

Status Batcher::Create(std::string name, BatchConfig config, std::vector<TensorSpec> inputs,
                       std::vector<TensorSpec> outputs, std::shared_ptr<Executor> executor,
                       std::shared_ptr<Clock> clock, std::shared_ptr<ResponseCache> cache,
                       std::unique_ptr<Batcher>* out) {
  AIARCH_RETURN_IF_ERROR(config.Validate());
  if (!executor) return Status::InvalidArgument("model '" + name + "' has no executor");
  if (inputs.empty()) return Status::InvalidArgument("model '" + name + "' declares no inputs");
  for (const auto& spec : inputs) {
    for (int64_t d : spec.shape) {
      if (d < 0) {
        return Status::InvalidArgument("input '" + spec.name + "' of model '" + name +
                                       "': trailing dims must be fixed (>= 0) to batch rows, got " +
                                       ShapeText(spec.shape));
      }
    }
  }
  std::sort(config.preferred_batch_sizes.begin(), config.preferred_batch_sizes.end());
  if (!clock) clock = SteadyClock::Instance();
  std::unique_ptr<Batcher> b(new Batcher(std::move(name), std::move(config), std::move(inputs),
                                         std::move(outputs), std::move(executor), std::move(clock),
                                         std::move(cache)));
  if (b->clock_->IsManual()) {
    Batcher* raw = b.get();
    b->clock_subscription_ =
        static_cast<ManualClock*>(b->clock_.get())->Subscribe([raw] { raw->SettleFromClock(); });
  }
  for (int w = 0; w < b->config_.instances; ++w) {
    b->workers_.emplace_back([raw = b.get(), w] { raw->WorkerLoop(w); });
  }
  b->deadline_thread_ = std::thread([raw = b.get()] { raw->DeadlineLoop(); });
  *out = std::move(b);
  return Status::Ok();
}

Batcher::Batcher(std::string name, BatchConfig config, std::vector<TensorSpec> inputs,
                 std::vector<TensorSpec> outputs, std::shared_ptr<Executor> executor,
                 std::shared_ptr<Clock> clock, std::shared_ptr<ResponseCache> cache)
    : name_(std::move(name)),
      config_(std::move(config)),
      executor_(std::move(executor)),
      clock_(std::move(clock)),
      cache_(std::move(cache)),
      inputs_(std::move(inputs)),
      outputs_(std::make_shared<const std::vector<TensorSpec>>(std::move(outputs))),
      levels_(config_.priority_levels),
      deadline_wake_ns_(kNoDeadline),
      caller_deadline_ns_(kNoDeadline),
      settled_epoch_(config_.instances + 1, 0),
      participant_alive_(config_.instances + 1, true),
      busy_since_epoch_(config_.instances + 1, -1),
      isolation_credit_(2 * config_.max_batch_size),
      exec_estimate_ns_(config_.max_batch_size + 1, 0),
      queue_ns_(),
      execution_ns_(),
      end_to_end_ns_(),
      batch_rows_(int64_t{1} << 24) {}

Batcher::~Batcher() { Shutdown(/*drain=*/false); }

std::vector<TensorSpec> Batcher::input_specs() const { return inputs_; }

std::vector<TensorSpec> Batcher::output_specs() const { return *std::atomic_load(&outputs_); }

Status Batcher::Validate(const SubmitArgs& args, int64_t* rows_out) const {
  // inputs_ never changes after Create, so validation needs no lock.
  if (args.inputs.size() != inputs_.size()) {
    std::string expected;
    for (const auto& s : inputs_) expected += (expected.empty() ? "" : ", ") + s.ToString();
    return Status::InvalidArgument("model '" + name_ + "' expects " +
                                   std::to_string(inputs_.size()) + " input(s) (" + expected +
                                   "), got " + std::to_string(args.inputs.size()));
  }
  int64_t rows = -1;
  for (size_t i = 0; i < inputs_.size(); ++i) {
    const auto& spec = inputs_[i];
    const auto& in = args.inputs[i];
    // Built only on an error path: a successful submit allocates no message.
    const auto what = [&] { return "input '" + spec.name + "' of model '" + name_ + "'"; };
    if (in.dtype != spec.dtype) {
      return Status::InvalidArgument(what() + ": expected dtype " + DTypeName(spec.dtype) +
                                     ", got " + DTypeName(in.dtype));
    }
    bool shape_ok = in.shape.size() == spec.shape.size() + 1;
    for (size_t d = 0; shape_ok && d < spec.shape.size(); ++d) {
      shape_ok = in.shape[d + 1] == spec.shape[d];
    }
    if (!shape_ok) {
      std::vector<int64_t> expected{-1};
      expected.insert(expected.end(), spec.shape.begin(), spec.shape.end());
      return Status::InvalidArgument(what() + ": expected shape " + ShapeText(expected) +
                                     " (rows first), got " + ShapeText(in.shape));
    }
    if (!in.contiguous) {
      return Status::InvalidArgument(what() +
                                     ": expected a C-contiguous array, got a strided view");
    }
    if (in.shape[0] < 1)
      return Status::InvalidArgument(what() + ": expected at least one row, got 0");
    if (rows >= 0 && in.shape[0] != rows) {
      return Status::InvalidArgument("model '" + name_ +
                                     "': every input must have the same number of rows, got " +
                                     std::to_string(rows) + " and " + std::to_string(in.shape[0]));
    }
    rows = in.shape[0];
    if (in.bytes != static_cast<size_t>(rows) * spec.RowBytes()) {
      return Status::InvalidArgument(what() + ": byte size does not match its shape and dtype");
    }
  }
  if (rows > config_.max_batch_size) {
    return Status::InvalidArgument(
        "model '" + name_ + "': request has " + std::to_string(rows) +
        " rows; at most max_batch_size=" + std::to_string(config_.max_batch_size) + " per request");
  }
  *rows_out = rows;
  return Status::Ok();
}

bool Batcher::CacheKeyBytes(const SubmitArgs& args, std::vector<uint8_t>* scratch,
                            const uint8_t** key, size_t* size) const {
  if (args.inputs.size() == 1) {
    *key = args.inputs[0].data;
    *size = args.inputs[0].bytes;
    return true;
  }
  scratch->clear();
  for (const auto& in : args.inputs) scratch->insert(scratch->end(), in.data, in.data + in.bytes);
  *key = scratch->data();
  *size = scratch->size();
  return true;
}

namespace {
// Wall-clock milliseconds since the epoch, for the `last_inference` statistic.
int64_t WallClockMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// Relaxed: the id only needs to be unique, it orders nothing.
std::atomic<uint64_t> g_next_request_id{1};
uint64_t NextRequestId() { return g_next_request_id.fetch_add(1, std::memory_order_relaxed); }
}  // namespace

Status Batcher::Submit(const SubmitArgs& args, uint64_t* request_id, CachedResponse* hit) {
  int64_t rows = 0;
  AIARCH_RETURN_IF_ERROR(Validate(args, &rows));
  const int priority_levels = config_.priority_levels;
  if (args.priority > static_cast<uint32_t>(priority_levels)) {
    return Status::InvalidArgument("priority " + std::to_string(args.priority) + " for model '" +
                                   name_ + "' is out of range; expected 0 (default) to " +
                                   std::to_string(priority_levels));
  }
  const int64_t now = clock_->NowNs();

  auto req = std::make_unique<Request>();
  if (cache_ && hit != nullptr) {
    thread_local std::vector<uint8_t> scratch;
    const uint8_t* key_bytes = nullptr;
    size_t key_size = 0;
    CacheKeyBytes(args, &scratch, &key_bytes, &key_size);
    Hasher hasher;
    hasher.UpdateU64(static_cast<uint64_t>(rows));
    hasher.Update(key_bytes, key_size);
    req->key = hasher.Digest();
    req->cacheable = true;
    std::shared_ptr<const std::vector<TensorSpec>> specs = std::atomic_load(&outputs_);
    size_t expected = 0;
    std::vector<size_t> offsets;
    for (const auto& s : *specs) {
      offsets.push_back(expected);
      expected += static_cast<size_t>(rows) * s.RowBytes();
    }
    std::shared_ptr<Buffer> copy;
    const bool found =
        !specs->empty() && cache_->LookupWith(req->key, key_bytes, key_size, now,
                                              [&](const uint8_t* value, size_t size) {
                                                if (size != expected) return;
                                                copy = Buffer::Allocate(size);
                                                if (copy) std::memcpy(copy->data(), value, size);
                                              });
    if (found && copy) {
      hit->data = std::move(copy);
      hit->specs = std::move(specs);
      hit->offsets = std::move(offsets);
      hit->rows = rows;
      *request_id = 0;
      success_.fetch_add(1, std::memory_order_relaxed);
      cache_hits_.fetch_add(1, std::memory_order_relaxed);
      last_inference_ms_.store(WallClockMs(), std::memory_order_relaxed);
      return Status::Ok();
    }
  }

  req->rows = rows;
  req->enqueue_ns = now;
  req->deadline_ns = args.timeout_ns > 0 ? now + args.timeout_ns : kNoDeadline;
  req->level =
      (args.priority == 0 ? (config_.default_priority_level == 0 ? priority_levels
                                                                 : config_.default_priority_level)
                          : static_cast<int>(args.priority)) -
      1;
  req->data.reserve(args.inputs.size());
  for (const auto& in : args.inputs) req->data.push_back(in.data);
  req->sink = args.sink;

  bool wake = false;
  bool wake_deadline_thread = false;
  int64_t inline_now = 0;
  Requests inline_batch, inline_expired;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) {
      return Status::Unavailable("model '" + name_ + "' is shutting down");
    }
    if (queued_rows_ + rows > config_.max_queue_rows) {
      rejected_.fetch_add(1, std::memory_order_relaxed);
      const double retry = RetryAfterSecondsLocked(rows);
      return Status::ResourceExhausted("model '" + name_ + "' queue is full (" +
                                       std::to_string(queued_rows_) + " of " +
                                       std::to_string(config_.max_queue_rows) + " rows queued)")
          .WithRetryAfter(retry);
    }
    const bool was_empty = queued_rows_ == 0;
    // Ids are unique across every model of the process: one event loop's completion queue
    // (and its table of pending requests) serves all the models that loop submits to.
    req->id = NextRequestId();
    *request_id = req->id;
    levels_[req->level].push_back(req.get());
    queued_rows_ += rows;
    if (req->deadline_ns != kNoDeadline) ++deadline_requests_;
    // Wake an idle worker only when its plan changes: the queue was empty
    // (it waits without a timeout), a batch just filled, or a deadline may
    // pull the close time earlier. Otherwise the worker's timed wait already
    // ends at the right moment, and a wake-up would be a wasted syscall.
    wake = idle_workers_ > 0 &&
           (was_empty || queued_rows_ >= config_.max_batch_size || req->deadline_ns != kNoDeadline);
    const int64_t deadline_ns = req->deadline_ns;
    Request* const queued = req.get();
    queued_.emplace(req->id, std::move(req));
    bool left_for_caller = false;
    if (config_.inline_execution) {
      // A fresh reading when a batch may form here: time has passed since
      // `now` set the deadline, and a request whose deadline passed meanwhile
      // must expire, not run. A caller that flushes forms it in RunReady(),
      // which reads the clock itself.
      inline_now = args.caller_flushes ? now : clock_->NowNs();
      if (CloseTimeLocked(inline_now) <= inline_now) {
        if (!InlineAllowedLocked()) {
          // Too slow (or not yet measured) to hold this thread: a worker runs it.
          wake = idle_workers_ > 0;
        } else if (args.caller_flushes) {
          // RunReady() takes it: no worker or deadline-thread wake-up (a futex
          // call and a context switch per request at low load) unless it is
          // still queued when RunReady() returns.
          left_for_caller = true;
          queued->caller_owned = true;
          queued->caller_epoch = caller_epoch_;
          caller_rows_ += rows;
          wake = false;
          caller_deadline_ns_ = std::min(caller_deadline_ns_, deadline_ns);
        } else if (in_flight_ < config_.instances) {
          FormBatchLocked(inline_now, &inline_batch, &inline_expired);
          ++in_flight_;
          wake = false;
        }
      }
    }
    if (!left_for_caller && deadline_ns < deadline_wake_ns_) {
      deadline_wake_ns_ = deadline_ns;
      wake_deadline_thread = true;
    }
  }
  if (wake) work_cv_.notify_one();
  if (wake_deadline_thread) deadline_cv_.notify_one();
  if (!inline_batch.empty() || !inline_expired.empty()) {
    RunFormed(inline_batch, inline_expired, inline_now);
    std::lock_guard<std::mutex> lock(mu_);
    FinishInFlightLocked();
    // Work queued meanwhile is picked up by a worker.
    if (queued_rows_ > 0 && idle_workers_ > 0) work_cv_.notify_one();
  }
  return Status::Ok();
}

int Batcher::RunReady() {
  int ran = 0;
  std::unique_lock<std::mutex> lock(mu_);
  while (!stopping_ && in_flight_ < config_.instances) {
    const int64_t now = clock_->NowNs();
    if (CloseTimeLocked(now) > now || !InlineAllowedLocked()) break;
    Requests batch, expired;
    FormBatchLocked(now, &batch, &expired);
    ++in_flight_;
    lock.unlock();
    RunFormed(batch, expired, now);
    ++ran;
    lock.lock();
    FinishInFlightLocked();
  }
  // Whatever is left (a partial batch waiting for max_delay, or all
  // instances busy) belongs to the workers, and its deadlines to the deadline
  // thread.
  if (caller_rows_ > 0) {  // hand the rest over: requests of past epochs are the workers'
    ++caller_epoch_;
    caller_rows_ = 0;
  }
  if (queued_rows_ > 0 && idle_workers_ > 0) work_cv_.notify_one();
  const int64_t caller_deadline = caller_deadline_ns_;
  caller_deadline_ns_ = kNoDeadline;
  if (queued_rows_ > 0 && caller_deadline < deadline_wake_ns_) {
    deadline_wake_ns_ = caller_deadline;
    lock.unlock();
    deadline_cv_.notify_one();
  }
  return ran;
}

void Batcher::FinishInFlightLocked() {
  --in_flight_;
  if (stopping_ && in_flight_ == 0) idle_cv_.notify_all();
}

void Batcher::RunFormed(Requests& batch, Requests& expired, int64_t now) {
  CompleteExpired(expired);
  if (!batch.empty()) ExecuteBatch(batch, now);
}

void Batcher::CompleteExpired(Requests& expired) {
  if (expired.empty()) return;
  expired_.fetch_add(expired.size(), std::memory_order_relaxed);
  CompleteWithStatus(
      expired, 0, expired.size(),
      Status::DeadlineExceeded("request to model '" + name_ + "' expired before it could run"),
      nullptr);
}

bool Batcher::Cancel(uint64_t request_id) {
  std::unique_ptr<Request> req;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = queued_.find(request_id);
    if (it == queued_.end()) return false;
    Request* r = it->second.get();
    auto& level = levels_[r->level];
    level.erase(std::find(level.begin(), level.end(), r));
    req = UnqueueLocked(r);
  }
  cancelled_.fetch_add(1, std::memory_order_relaxed);
  std::vector<Completion> done(1);
  done[0].request_id = req->id;
  done[0].status = Status::Cancelled("request cancelled by the caller");
  req->sink->Deliver(std::move(done));
  return true;
}

int64_t Batcher::PaddedRows(int64_t rows) const {
  for (int64_t s : config_.preferred_batch_sizes) {
    if (s >= rows) return s;
  }
  return rows;
}

int64_t Batcher::EstimateExecNsLocked(int64_t rows) const {
  rows = std::min<int64_t>(std::max<int64_t>(rows, 1), config_.max_batch_size);
  if (exec_estimate_ns_[rows] > 0) return exec_estimate_ns_[rows];
  // Nearest measured larger batch bounds it from above; else scale the
  // nearest smaller one linearly (execution time grows at most linearly).
  for (int64_t r = rows + 1; r <= config_.max_batch_size; ++r) {
    if (exec_estimate_ns_[r] > 0) return exec_estimate_ns_[r];
  }
  for (int64_t r = rows - 1; r >= 1; --r) {
    if (exec_estimate_ns_[r] > 0) return exec_estimate_ns_[r] * rows / r;
  }
  return 0;
}

bool Batcher::InlineAllowedLocked() const {
  if (config_.inline_max_exec_ns <= 0) return true;
  // The batch a close now would form: the queue's first max_batch_size rows.
  const int64_t rows = std::min(queued_rows_, config_.max_batch_size);
  const int64_t estimate = EstimateExecNsLocked(PaddedRows(rows));
  return estimate > 0 && estimate <= config_.inline_max_exec_ns;
}

double Batcher::RetryAfterSecondsLocked(int64_t extra_rows) const {
  if (service_rate_ <= 0) return 1.0;
  const double s = static_cast<double>(queued_rows_ + extra_rows) / service_rate_;
  return std::min(60.0, std::max(0.001, s));
}

int64_t Batcher::CloseTimeLocked(int64_t now) const {
  if (queued_rows_ == 0) return kNoDeadline;
  // Without a fill wait a queued request can always go now (its own enqueue
  // time, and any deadline's latest start, are at or before now): callers only
  // compare the close time with now, so the scan below would change nothing.
  // It runs on every submit, walking up to a batch of requests each time.
  if (stopping_ || config_.max_delay_ns == 0) return now;
  int64_t rows = 0;
  int64_t oldest = kNoDeadline;
  int64_t earliest_deadline = kNoDeadline;
  bool full = false;
  for (const auto& level : levels_) {
    for (const Request* r : level) {
      if (rows + r->rows > config_.max_batch_size) {
        full = true;
        break;
      }
      rows += r->rows;
      oldest = std::min(oldest, r->enqueue_ns);
      earliest_deadline = std::min(earliest_deadline, r->deadline_ns);
    }
    if (full) break;
  }
  if (full || rows >= config_.max_batch_size) return now;
  int64_t close = oldest + config_.max_delay_ns;
  if (earliest_deadline != kNoDeadline) {
    // Waiting past this point would leave the earliest deadline unreachable.
    close = std::min(close, earliest_deadline - EstimateExecNsLocked(PaddedRows(rows)));
  }
  return close;
}

std::unique_ptr<Batcher::Request> Batcher::UnqueueLocked(Request* r) {
  queued_rows_ -= r->rows;
  if (r->caller_owned && r->caller_epoch == caller_epoch_) caller_rows_ -= r->rows;
  if (r->deadline_ns != kNoDeadline) --deadline_requests_;
  auto q = queued_.find(r->id);
  std::unique_ptr<Request> owned = std::move(q->second);
  queued_.erase(q);
  return owned;
}

void Batcher::ExpireLocked(int64_t now, Requests* expired) {
  // Without deadlines in the queue there is nothing to expire: skip the scan.
  if (deadline_requests_ == 0) return;
  const int64_t estimate =
      config_.drop_unreachable
          ? EstimateExecNsLocked(PaddedRows(std::min(queued_rows_, config_.max_batch_size)))
          : 0;
  for (auto& level : levels_) {
    if (deadline_requests_ == 0) break;
    for (auto it = level.begin(); it != level.end();) {
      Request* r = *it;
      const bool dead = r->deadline_ns <= now || (estimate > 0 && r->deadline_ns != kNoDeadline &&
                                                  now + estimate > r->deadline_ns);
      if (!dead) {
        ++it;
        continue;
      }
      it = level.erase(it);
      expired->push_back(UnqueueLocked(r));
    }
  }
}

int64_t Batcher::EarliestDeadlineLocked() const {
  int64_t earliest = kNoDeadline;
  if (deadline_requests_ == 0) return earliest;
  for (const auto& level : levels_) {
    for (const Request* r : level) earliest = std::min(earliest, r->deadline_ns);
  }
  return earliest;
}

void Batcher::FormBatchLocked(int64_t now, Requests* batch, Requests* expired) {
  // Expire first, over the whole queue, so that a request that can no longer
  // make its deadline fails now rather than when it reaches the front.
  ExpireLocked(now, expired);
  // The survivors may not be due yet: an expired request may have been what
  // made the batch closable (its deadline), not theirs.
  if (!expired->empty() && CloseTimeLocked(now) > now) return;
  int64_t rows = 0;
  for (auto& level : levels_) {
    while (!level.empty()) {
      Request* r = level.front();
      if (rows + r->rows > config_.max_batch_size) return;
      level.pop_front();
      rows += r->rows;
      batch->push_back(UnqueueLocked(r));
    }
  }
}

void Batcher::WaitLocked(std::unique_lock<std::mutex>& lock, int participant, int64_t until_ns,
                         std::condition_variable& cv) {
  const bool worker = participant < config_.instances;
  if (worker) ++idle_workers_;
  if (clock_->IsManual()) {
    // Time moves only through ManualClock::Advance, which waits on
    // settled_cv_ until every live participant has reached this point again.
    settled_epoch_[participant] = settle_epoch_;
    settled_cv_.notify_all();
    cv.wait(lock);
  } else if (until_ns == kNoDeadline) {
    cv.wait(lock);
  } else {
    cv.wait_until(lock, std::chrono::steady_clock::time_point(std::chrono::nanoseconds(until_ns)));
  }
  if (worker) --idle_workers_;
}

void Batcher::MarkBusyLocked(int participant, bool busy) {
  busy_since_epoch_[participant] = busy ? static_cast<int64_t>(settle_epoch_) : -1;
}

void Batcher::SettleFromClock() {
  std::unique_lock<std::mutex> lock(mu_);
  const uint64_t epoch = ++settle_epoch_;
  work_cv_.notify_all();
  deadline_cv_.notify_all();
  settled_cv_.wait(lock, [&] {
    for (size_t p = 0; p < settled_epoch_.size(); ++p) {
      const bool busy_from_before =
          busy_since_epoch_[p] >= 0 && static_cast<uint64_t>(busy_since_epoch_[p]) < epoch;
      if (participant_alive_[p] && !busy_from_before && settled_epoch_[p] < epoch) return false;
    }
    return true;
  });
}

void Batcher::WorkerLoop(int worker) {
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    if (stopping_ && (!drain_ || queued_rows_ == 0)) break;
    const int64_t now = clock_->NowNs();
    const int64_t close = CloseTimeLocked(now);
    if (in_flight_ >= config_.instances) {
      // Inline executions hold every instance; the last to finish wakes us.
      WaitLocked(lock, worker, kNoDeadline, work_cv_);
      continue;
    }
    if (!stopping_ && queued_rows_ > 0 && caller_rows_ == queued_rows_) {
      // Everything queued waits for its caller's RunReady(), which runs it
      // on the caller's thread or hands it over with a wake-up.
      WaitLocked(lock, worker, kNoDeadline, work_cv_);
      continue;
    }
    if (close > now) {
      WaitLocked(lock, worker, close, work_cv_);
      continue;
    }
    Requests batch, expired;
    FormBatchLocked(now, &batch, &expired);
    ++in_flight_;
    MarkBusyLocked(worker, true);
    lock.unlock();
    RunFormed(batch, expired, now);
    lock.lock();
    MarkBusyLocked(worker, false);
    FinishInFlightLocked();
  }
  participant_alive_[worker] = false;
  settled_cv_.notify_all();
}

void Batcher::DeadlineLoop() {
  // Completes queued requests at their deadline, whatever the instances are
  // doing: a caller hears DeadlineExceeded on time even behind a long batch.
  const int me = config_.instances;
  std::unique_lock<std::mutex> lock(mu_);
  while (!deadline_thread_stop_) {
    Requests expired;
    ExpireLocked(clock_->NowNs(), &expired);
    if (!expired.empty()) {
      lock.unlock();
      CompleteExpired(expired);
      lock.lock();
      continue;
    }
    deadline_wake_ns_ = EarliestDeadlineLocked();
    WaitLocked(lock, me, deadline_wake_ns_, deadline_cv_);
  }
  participant_alive_[me] = false;
  settled_cv_.notify_all();
}

template <typename Fill>
void Batcher::DeliverGrouped(Requests& requests, size_t begin, size_t end, Fill&& fill) {
  std::vector<std::pair<CompletionSink*, std::vector<Completion>>> groups;
  for (size_t i = begin; i < end; ++i) {
    Request& r = *requests[i];
    Completion c;
    c.request_id = r.id;
    fill(r, &c);
    auto it = std::find_if(groups.begin(), groups.end(),
                           [&](const auto& g) { return g.first == r.sink.get(); });
    if (it == groups.end()) {
      groups.emplace_back(r.sink.get(), std::vector<Completion>{});
      it = groups.end() - 1;
      // Usually one sink takes the whole batch: one allocation, no regrowth
      // moving completions around.
      it->second.reserve(end - i);
    }
    it->second.push_back(std::move(c));
  }
  for (auto& g : groups) g.first->Deliver(std::move(g.second));
}

void Batcher::CompleteWithStatus(Requests& requests, size_t begin, size_t end, const Status& status,
                                 const std::shared_ptr<ErrorDetail>& detail) {
  DeliverGrouped(requests, begin, end, [&](const Request& r, Completion* c) {
    c->enqueue_ns = r.enqueue_ns;
    c->status = status;
    c->error_detail = detail;
  });
}

void Batcher::ExecuteBatch(Requests& requests, int64_t start_ns) {
  for (const auto& r : requests) {
    const int64_t q = std::max<int64_t>(0, start_ns - r->enqueue_ns);
    queue_ns_.Record(q);
    queue_ns_total_.fetch_add(static_cast<uint64_t>(q), std::memory_order_relaxed);
  }
  ExecuteIsolating(requests, 0, requests.size());
}

bool Batcher::TakeIsolationCredit() {
  std::lock_guard<std::mutex> lock(mu_);
  if (isolation_credit_ < 2) return false;
  isolation_credit_ -= 2;  // one split = two executions
  return true;
}

void Batcher::ExecuteIsolating(Requests& requests, size_t begin, size_t end) {
  Batch batch;
  std::shared_ptr<BatchResult> result;
  std::shared_ptr<ErrorDetail> detail;
  const Status status = ExecuteOnce(requests, begin, end, &batch, &result, &detail);
  if (status.ok()) {
    DeliverSuccess(requests, begin, end, batch, result);
    return;
  }
  // Several requests failed together: the fault may lie in some of them only.
  if (end - begin > 1 && TakeIsolationCredit()) {
    // Counted before any completion is delivered, like every counter.
    if (begin == 0 && end == requests.size()) {
      isolated_batches_.fetch_add(1, std::memory_order_relaxed);
    }
    isolation_executions_.fetch_add(2, std::memory_order_relaxed);
    const size_t mid = begin + (end - begin) / 2;
    ExecuteIsolating(requests, begin, mid);
    ExecuteIsolating(requests, mid, end);
    return;
  }
  failed_.fetch_add(end - begin, std::memory_order_relaxed);
  CompleteWithStatus(requests, begin, end, status, detail);
}

Status Batcher::ExecuteOnce(const Requests& requests, size_t begin, size_t end, Batch* batch,
                            std::shared_ptr<BatchResult>* result_out,
                            std::shared_ptr<ErrorDetail>* detail) {
  for (size_t i = begin; i < end; ++i) batch->rows += requests[i]->rows;
  batch->padded_rows = PaddedRows(batch->rows);
  batch->seq = next_batch_seq_.fetch_add(1, std::memory_order_relaxed);  // a label; orders nothing

  // Gather: the only copy of the request bytes, into one buffer per input.
  Status status;
  batch->inputs.reserve(inputs_.size());
  for (size_t i = 0; i < inputs_.size() && status.ok(); ++i) {
    const size_t row_bytes = inputs_[i].RowBytes();
    auto buf = Buffer::Allocate(static_cast<size_t>(batch->padded_rows) * row_bytes);
    if (!buf) {
      status = Status::Internal("out of memory allocating a batch for model '" + name_ + "'");
      break;
    }
    size_t offset = 0;
    for (size_t r = begin; r < end; ++r) {
      const size_t n = static_cast<size_t>(requests[r]->rows) * row_bytes;
      std::memcpy(buf->data() + offset, requests[r]->data[i], n);
      offset += n;
    }
    std::memset(buf->data() + offset, 0, buf->size() - offset);
    batch->inputs.push_back(std::move(buf));
  }

  std::vector<ExecutorOutput> outs;
  const int64_t exec_start = clock_->NowNs();
  if (status.ok()) status = executor_->Execute(*batch, &outs, detail);
  const int64_t exec_end = clock_->NowNs();
  batch->exec_start_ns = exec_start;
  batch->exec_end_ns = exec_end;
  const int64_t exec_ns = std::max<int64_t>(0, exec_end - exec_start);
  execution_ns_.Record(exec_ns);
  execution_ns_total_.fetch_add(static_cast<uint64_t>(exec_ns), std::memory_order_relaxed);
  batch_rows_.Record(batch->rows);
  batches_.fetch_add(1, std::memory_order_relaxed);
  rows_.fetch_add(static_cast<uint64_t>(batch->rows), std::memory_order_relaxed);
  last_inference_ms_.store(WallClockMs(), std::memory_order_relaxed);
  if (!status.ok()) return status;

  // Check the outputs against the declared (or first learned) specs.
  auto result = std::make_shared<BatchResult>();
  std::lock_guard<std::mutex> lock(mu_);
  if (outputs_->empty()) {
    auto learned = std::make_shared<std::vector<TensorSpec>>();
    for (size_t i = 0; i < outs.size(); ++i) {
      TensorSpec spec = outs[i].spec;
      if (spec.name.empty()) spec.name = "output" + std::to_string(i);
      learned->push_back(std::move(spec));
    }
    std::atomic_store(&outputs_, std::shared_ptr<const std::vector<TensorSpec>>(learned));
  }
  const std::vector<TensorSpec>& expected_outputs = *outputs_;
  if (outs.size() != expected_outputs.size()) {
    return Status::ExecutionFailed("model '" + name_ + "' returned " + std::to_string(outs.size()) +
                                   " output(s); expected " +
                                   std::to_string(expected_outputs.size()));
  }
  for (size_t i = 0; i < outs.size(); ++i) {
    const TensorSpec& want = expected_outputs[i];
    const TensorSpec& got = outs[i].spec;
    if (got.dtype != want.dtype || got.shape != want.shape) {
      return Status::ExecutionFailed("model '" + name_ + "' output " + std::to_string(i) + " ('" +
                                     want.name + "') is " + DTypeName(got.dtype) +
                                     ShapeText(got.shape) + " per row; expected " +
                                     DTypeName(want.dtype) + ShapeText(want.shape));
    }
    if (!outs[i].data ||
        outs[i].data->size() < static_cast<size_t>(batch->rows) * want.RowBytes()) {
      return Status::ExecutionFailed("model '" + name_ + "' output '" + want.name +
                                     "' has fewer rows than the batch");
    }
  }
  result->specs = outputs_;  // shared, not copied
  for (auto& o : outs) result->outputs.push_back(std::move(o.data));
  // Moving averages for close-time planning and Retry-After.
  if (exec_ns > 0) {
    int64_t& est = exec_estimate_ns_[std::min(batch->padded_rows, config_.max_batch_size)];
    est = est == 0 ? exec_ns : static_cast<int64_t>(kEwmaAlpha * exec_ns + (1 - kEwmaAlpha) * est);
    const double rate = static_cast<double>(batch->rows) * 1e9 / exec_ns * config_.instances;
    service_rate_ =
        service_rate_ == 0 ? rate : kEwmaAlpha * rate + (1 - kEwmaAlpha) * service_rate_;
  }
  // Requests served earn failure-isolation credit (see the header).
  isolation_credit_ = std::min<int64_t>(2 * config_.max_batch_size,
                                        isolation_credit_ + 2 * static_cast<int64_t>(end - begin));
  *result_out = std::move(result);
  return Status::Ok();
}

void Batcher::DeliverSuccess(Requests& requests, size_t begin, size_t end, const Batch& batch,
                             const std::shared_ptr<BatchResult>& result) {
  std::shared_ptr<const BatchResult> shared = result;
  const int64_t done_ns = clock_->NowNs();
  for (size_t i = begin; i < end; ++i) {
    const int64_t e2e = std::max<int64_t>(0, done_ns - requests[i]->enqueue_ns);
    end_to_end_ns_.Record(e2e);
    end_to_end_ns_total_.fetch_add(static_cast<uint64_t>(e2e), std::memory_order_relaxed);
  }
  success_.fetch_add(end - begin, std::memory_order_relaxed);
  // Fill the cache before delivery: a client that repeats a request as soon
  // as it has the answer must hit.
  if (cache_) {
    std::vector<uint8_t> key, value;
    int64_t row = 0;
    for (size_t i = begin; i < end; ++i) {
      const Request& r = *requests[i];
      if (r.cacheable) {
        key.clear();
        value.clear();
        for (size_t in = 0; in < inputs_.size(); ++in) {
          const size_t rb = inputs_[in].RowBytes();
          const uint8_t* p = batch.inputs[in]->data() + row * rb;
          key.insert(key.end(), p, p + r.rows * rb);
        }
        for (size_t o = 0; o < result->specs->size(); ++o) {
          const size_t rb = (*result->specs)[o].RowBytes();
          const uint8_t* p = result->outputs[o]->data() + row * rb;
          value.insert(value.end(), p, p + r.rows * rb);
        }
        cache_->Insert(r.key, key.data(), key.size(), value.data(), value.size(), done_ns);
      }
      row += r.rows;
    }
  }
  int64_t offset = 0;
  DeliverGrouped(requests, begin, end, [&](const Request& r, Completion* c) {
    c->result = shared;
    c->row_offset = offset;
    c->rows = r.rows;
    c->enqueue_ns = r.enqueue_ns;
    c->exec_start_ns = batch.exec_start_ns;
    c->exec_end_ns = batch.exec_end_ns;
    c->batch_rows = batch.rows;
    offset += r.rows;
  });
}

void Batcher::Shutdown(bool drain) {
  std::lock_guard<std::mutex> serial(shutdown_mu_);
  Requests dropped;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_ && workers_.empty()) return;
    stopping_ = true;
    drain_ = drain;
    if (!drain) {
      for (auto& level : levels_) level.clear();
      for (auto& kv : queued_) dropped.push_back(std::move(kv.second));
      queued_.clear();
      queued_rows_ = 0;
      deadline_requests_ = 0;
    }
  }
  work_cv_.notify_all();
  if (!dropped.empty()) {
    failed_.fetch_add(dropped.size(), std::memory_order_relaxed);
    CompleteWithStatus(dropped, 0, dropped.size(),
                       Status::Unavailable("model '" + name_ + "' was shut down"), nullptr);
  }
  for (auto& t : workers_) t.join();
  {
    std::unique_lock<std::mutex> lock(mu_);
    // Workers are gone, but a batch may still run inline on a caller's
    // thread: the executor (and what it uses) must outlive it.
    idle_cv_.wait(lock, [&] { return in_flight_ == 0; });
    deadline_thread_stop_ = true;
  }
  deadline_cv_.notify_all();
  deadline_thread_.join();
  workers_.clear();
  if (clock_subscription_ != 0) {
    static_cast<ManualClock*>(clock_.get())->Unsubscribe(clock_subscription_);
    clock_subscription_ = 0;
  }
}

BatcherStats Batcher::Stats() const {
  BatcherStats s;
  s.success = success_.load(std::memory_order_relaxed);
  s.failed = failed_.load(std::memory_order_relaxed);
  s.expired = expired_.load(std::memory_order_relaxed);
  s.rejected = rejected_.load(std::memory_order_relaxed);
  s.cancelled = cancelled_.load(std::memory_order_relaxed);
  s.batches = batches_.load(std::memory_order_relaxed);
  s.rows = rows_.load(std::memory_order_relaxed);
  s.cache_hits = cache_hits_.load(std::memory_order_relaxed);
  s.last_inference_ms = last_inference_ms_.load(std::memory_order_relaxed);
  s.queue_ns_total = queue_ns_total_.load(std::memory_order_relaxed);
  s.execution_ns_total = execution_ns_total_.load(std::memory_order_relaxed);
  s.end_to_end_ns_total = end_to_end_ns_total_.load(std::memory_order_relaxed);
  s.isolated_batches = isolated_batches_.load(std::memory_order_relaxed);
  s.isolation_executions = isolation_executions_.load(std::memory_order_relaxed);
  std::lock_guard<std::mutex> lock(mu_);
  s.queue_rows = queued_rows_;
  s.in_flight_batches = in_flight_;
  s.service_rate_rows_per_s = service_rate_;
  return s;
}

}  // namespace aiarch
