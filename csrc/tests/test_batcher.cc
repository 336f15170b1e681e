// Batcher tests. A stress test against a sequential oracle: several
// submitter threads push a seeded log of requests (rows of known values,
// random sizes, some cancelled, some with deadlines already past); every
// request must get exactly one completion, and every successful output must
// equal the model applied to that request alone. The policy tests (idle-aware
// batching, deadlines, failure isolation, shutdown) run on a ManualClock.
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <functional>
#include <random>
#include <thread>
#include <unordered_map>
#include <vector>

#include "aiarch/batcher.h"
#include "check.h"

namespace aiarch {
namespace {

constexpr int kFeatures = 4;

// out = 3 * in + 1, per element: the sequential oracle is the same formula.
class AffineExecutor final : public Executor {
 public:
  std::atomic<int64_t> rows_seen{0};
  Status Execute(const Batch& batch, std::vector<ExecutorOutput>* outputs,
                 std::shared_ptr<ErrorDetail>*) override {
    rows_seen.fetch_add(batch.rows, std::memory_order_relaxed);  // a tally
    ExecutorOutput out;
    out.spec.dtype = DType::kFp32;
    out.spec.shape = {kFeatures};
    const size_t n = static_cast<size_t>(batch.padded_rows) * kFeatures;
    out.data = Buffer::Allocate(n * sizeof(float));
    const float* in = reinterpret_cast<const float*>(batch.inputs[0]->data());
    float* o = reinterpret_cast<float*>(out.data->data());
    for (size_t i = 0; i < n; ++i) o[i] = 3 * in[i] + 1;
    outputs->push_back(std::move(out));
    return Status::Ok();
  }
};

// Collects completions from all batcher threads.
class Collector final : public CompletionSink {
 public:
  void Deliver(std::vector<Completion>&& cs) override {
    std::lock_guard<std::mutex> lock(mu);
    for (auto& c : cs) done.push_back(std::move(c));
    cv.notify_all();
  }
  // Waits until n completions arrived. The bound only keeps a broken batcher
  // from hanging the test; no correct run comes near it.
  bool WaitFor(size_t n) {
    std::unique_lock<std::mutex> lock(mu);
    return cv.wait_for(lock, std::chrono::seconds(30), [&] { return done.size() >= n; });
  }
  size_t Count() {
    std::lock_guard<std::mutex> lock(mu);
    return done.size();
  }
  const Completion* Find(uint64_t id) {
    std::lock_guard<std::mutex> lock(mu);
    for (const auto& c : done) {
      if (c.request_id == id) return &c;
    }
    return nullptr;
  }
  std::mutex mu;
  std::condition_variable cv;
  std::vector<Completion> done;
};

// The affine model, but each execution waits at a gate until the test opens
// it: the test decides how long a batch "runs", without sleeping. Records the
// rows of every batch.
class GatedExecutor final : public Executor {
 public:
  Status Execute(const Batch& batch, std::vector<ExecutorOutput>* outputs,
                 std::shared_ptr<ErrorDetail>* detail) override {
    std::unique_lock<std::mutex> lock(mu);
    batch_rows.push_back(batch.rows);
    ++started;
    cv.notify_all();
    cv.wait(lock, [&] { return open; });
    lock.unlock();
    const Status s = model.Execute(batch, outputs, detail);
    if (on_finish) on_finish();
    return s;
  }
  void WaitStarted(int n) {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return started >= n; });
  }
  void Open() {
    std::lock_guard<std::mutex> lock(mu);
    open = true;
    cv.notify_all();
  }
  std::vector<int64_t> BatchRows() {
    std::lock_guard<std::mutex> lock(mu);
    return batch_rows;
  }
  AffineExecutor model;
  std::function<void()> on_finish;  // runs after each batch's compute
  std::mutex mu;
  std::condition_variable cv;
  int started = 0;
  bool open = false;
  std::vector<int64_t> batch_rows;
};

// Fails any batch that holds a row whose first feature is negative (a
// "poisoned" request), as a model raising on one bad input would.
class PoisonExecutor final : public Executor {
 public:
  std::atomic<int> calls{0};
  Status Execute(const Batch& batch, std::vector<ExecutorOutput>* outputs,
                 std::shared_ptr<ErrorDetail>* detail) override {
    calls.fetch_add(1);
    const float* in = reinterpret_cast<const float*>(batch.inputs[0]->data());
    for (int64_t r = 0; r < batch.rows; ++r) {
      if (in[r * kFeatures] < 0) return Status::ExecutionFailed("poisoned row");
    }
    return model.Execute(batch, outputs, detail);
  }
  AffineExecutor model;
};

// One row of kFeatures copies of `value`, owned by the caller.
SubmitArgs RowArgs(const std::vector<float>& row, std::shared_ptr<CompletionSink> sink,
                   int64_t timeout_ns = 0) {
  SubmitArgs args;
  args.inputs.push_back({reinterpret_cast<const uint8_t*>(row.data()),
                         row.size() * sizeof(float),
                         DType::kFp32,
                         {1, kFeatures},
                         true});
  args.sink = std::move(sink);
  args.timeout_ns = timeout_ns;
  return args;
}

std::unique_ptr<Batcher> MakeBatcher(const std::string& name, const BatchConfig& config,
                                     std::shared_ptr<Executor> executor,
                                     std::shared_ptr<Clock> clock) {
  std::unique_ptr<Batcher> batcher;
  CHECK(Batcher::Create(name, config, {{"x", DType::kFp32, {kFeatures}}}, {}, std::move(executor),
                        std::move(clock), nullptr, &batcher)
            .ok());
  return batcher;
}

struct Submitted {
  std::vector<float> data;
  bool expect_expired = false;
};

void StressAgainstOracle(uint64_t seed, bool inline_execution, int instances) {
  test::SetContext("seed=" + std::to_string(seed) + " inline=" + std::to_string(inline_execution) +
                   " instances=" + std::to_string(instances));
  BatchConfig config;
  config.max_batch_size = 16;
  config.max_delay_ns = 50'000;
  config.max_queue_rows = 1 << 20;
  config.instances = instances;
  config.preferred_batch_sizes = {8, 16};
  config.inline_execution = inline_execution;
  TensorSpec spec{"x", DType::kFp32, {kFeatures}};
  auto executor = std::make_shared<AffineExecutor>();
  std::unique_ptr<Batcher> batcher;
  CHECK(Batcher::Create("stress", config, {spec}, {}, executor, nullptr, nullptr, &batcher).ok());

  constexpr int kThreads = 4;
  constexpr int kPerThread = 2000;
  auto sink = std::make_shared<Collector>();
  std::vector<std::unordered_map<uint64_t, Submitted>> logs(kThreads);
  std::atomic<int> cancelled{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937_64 rng(seed * 31 + t);
      for (int i = 0; i < kPerThread; ++i) {
        Submitted s;
        const int rows = 1 + static_cast<int>(rng() % 4);
        s.data.resize(static_cast<size_t>(rows) * kFeatures);
        for (auto& v : s.data) v = static_cast<float>(rng() % 1000);
        SubmitArgs args;
        args.inputs.push_back({reinterpret_cast<const uint8_t*>(s.data.data()),
                               s.data.size() * sizeof(float),
                               DType::kFp32,
                               {rows, kFeatures},
                               true});
        args.sink = sink;
        // 1 in 50: a deadline of 1 ns, which has always passed by the time a
        // batch forms.
        if (rng() % 50 == 0) {
          args.timeout_ns = 1;
          s.expect_expired = true;
        }
        uint64_t id = 0;
        CHECK(batcher->Submit(args, &id, nullptr).ok());
        auto& entry = logs[t][id];
        entry = std::move(s);
        // The executor may still read the bytes: they live in logs[t], whose
        // entry was moved but whose heap buffer is the same one.
        if (rng() % 20 == 0 && batcher->Cancel(id)) cancelled.fetch_add(1);
      }
    });
  }
  for (auto& th : threads) th.join();
  batcher->Shutdown(/*drain=*/true);

  std::unordered_map<uint64_t, const Submitted*> all;
  for (auto& log : logs) {
    for (auto& kv : log) all[kv.first] = &kv.second;
  }
  CHECK_EQ(sink->done.size(), all.size());
  std::unordered_map<uint64_t, int> seen;
  int ok = 0, expired = 0, cancelled_seen = 0;
  for (const auto& c : sink->done) {
    seen[c.request_id]++;
    auto it = all.find(c.request_id);
    if (!CHECK(it != all.end())) continue;
    const Submitted& s = *it->second;
    if (c.status.ok()) {
      ++ok;
      CHECK(!s.expect_expired);
      const float* out =
          reinterpret_cast<const float*>(c.result->outputs[0]->data()) + c.row_offset * kFeatures;
      CHECK_EQ(static_cast<size_t>(c.rows) * kFeatures, s.data.size());
      bool equal = true;
      for (size_t i = 0; i < s.data.size(); ++i) equal &= out[i] == 3 * s.data[i] + 1;
      CHECK(equal);
    } else if (c.status.code() == StatusCode::kDeadlineExceeded) {
      ++expired;
      CHECK(s.expect_expired);
    } else if (c.status.code() == StatusCode::kCancelled) {
      ++cancelled_seen;
    } else {
      CHECK(false && "unexpected status");
    }
  }
  for (const auto& kv : seen) CHECK_EQ(kv.second, 1);
  CHECK_EQ(cancelled_seen, cancelled.load());
  const BatcherStats st = batcher->Stats();
  CHECK_EQ(st.success, static_cast<uint64_t>(ok));
  CHECK_EQ(st.expired, static_cast<uint64_t>(expired));
  CHECK_EQ(st.queue_rows, 0);
}

void ManualClockClosesOnDelayOnly() {
  test::SetContext("manual clock");
  auto clock = std::make_shared<ManualClock>();
  BatchConfig config;
  config.max_batch_size = 8;
  config.max_delay_ns = 1000;
  config.inline_execution = false;
  auto executor = std::make_shared<AffineExecutor>();
  std::unique_ptr<Batcher> batcher;
  CHECK(Batcher::Create("clocked", config, {{"x", DType::kFp32, {kFeatures}}}, {}, executor, clock,
                        nullptr, &batcher)
            .ok());
  auto sink = std::make_shared<Collector>();
  std::vector<float> data(kFeatures, 1.0f);
  for (int i = 0; i < 3; ++i) {
    SubmitArgs args;
    args.inputs.push_back({reinterpret_cast<const uint8_t*>(data.data()),
                           data.size() * sizeof(float),
                           DType::kFp32,
                           {1, kFeatures},
                           true});
    args.sink = sink;
    uint64_t id;
    CHECK(batcher->Submit(args, &id, nullptr).ok());
  }
  clock->Advance(999);
  CHECK_EQ(executor->rows_seen.load(), 0);
  clock->Advance(1);
  CHECK_EQ(executor->rows_seen.load(), 3);
  CHECK_EQ(batcher->Stats().batches, 1u);
  batcher->Shutdown(false);
}

// The default policy: a request that finds an instance idle runs at once (no
// time passes on the clock), and requests that arrive while the only instance
// is busy wait for it and then run together as the next batch.
void IdleInstanceStartsAtOnceAndBusyOnesBatch() {
  test::SetContext("idle-aware batching");
  auto clock = std::make_shared<ManualClock>();
  BatchConfig config;  // defaults: max_delay_ns = 0
  CHECK_EQ(config.max_delay_ns, 0);
  config.max_batch_size = 8;
  config.inline_execution = false;
  auto executor = std::make_shared<GatedExecutor>();
  auto batcher = MakeBatcher("idle", config, executor, clock);
  auto sink = std::make_shared<Collector>();
  std::vector<float> row(kFeatures, 1.0f);
  uint64_t id;
  CHECK(batcher->Submit(RowArgs(row, sink), &id, nullptr).ok());
  executor->WaitStarted(1);  // started with the clock never moved
  for (int i = 0; i < 5; ++i) CHECK(batcher->Submit(RowArgs(row, sink), &id, nullptr).ok());
  CHECK_EQ(batcher->Stats().queue_rows, 5);  // the instance is busy: they queue
  executor->Open();
  CHECK(sink->WaitFor(6));
  const std::vector<int64_t> rows = executor->BatchRows();
  CHECK_EQ(rows.size(), 2u);
  if (rows.size() == 2) {
    CHECK_EQ(rows[0], 1);
    CHECK_EQ(rows[1], 5);
  }
  batcher->Shutdown(false);
}

// A queued request expires at its deadline while the only instance is busy
// with a batch that has not finished: the deadline thread does not wait for it.
// Also on an event loop's path (caller_flushes): there the submit leaves the
// request to the caller's RunReady() and wakes no thread, so the RunReady()
// that finds the instance busy must hand the deadline to the deadline thread.
void DeadlineFiresWhileInstanceBusy() {
  for (bool caller_flushes : {false, true}) {
    test::SetContext("deadline while busy, caller_flushes=" + std::to_string(caller_flushes));
    auto clock = std::make_shared<ManualClock>();
    BatchConfig config;
    config.max_batch_size = 8;
    config.inline_execution = caller_flushes;
    auto executor = std::make_shared<GatedExecutor>();
    auto batcher = MakeBatcher("deadline", config, executor, clock);
    auto sink = std::make_shared<Collector>();
    std::vector<float> row(kFeatures, 1.0f);
    auto submit = [&](int64_t timeout_ns, uint64_t* id) {
      SubmitArgs args = RowArgs(row, sink, timeout_ns);
      args.caller_flushes = caller_flushes;
      CHECK(batcher->Submit(args, id, nullptr).ok());
      if (caller_flushes) batcher->RunReady();
    };
    uint64_t running = 0, waiting = 0, patient = 0;
    // On the loop's path the first batch runs inline in RunReady(): give it
    // a thread of its own, as a long batch holds the loop thread.
    std::thread loop;
    if (caller_flushes) {
      loop = std::thread([&] { submit(0, &running); });
    } else {
      submit(0, &running);
    }
    executor->WaitStarted(1);
    submit(/*timeout_ns=*/1000, &waiting);
    submit(/*timeout_ns=*/5000, &patient);
    clock->Advance(999);
    CHECK_EQ(sink->Count(), 0u);
    clock->Advance(1);  // Advance returns once the deadline thread acted on it
    CHECK_EQ(sink->Count(), 1u);
    const Completion* c = sink->Find(waiting);
    CHECK(c != nullptr);
    if (c != nullptr) CHECK(c->status.code() == StatusCode::kDeadlineExceeded);
    CHECK_EQ(batcher->Stats().expired, 1u);
    CHECK_EQ(batcher->Stats().queue_rows, 1);
    executor->Open();
    if (loop.joinable()) loop.join();
    if (caller_flushes) batcher->RunReady();  // the loop's next iteration
    CHECK(sink->WaitFor(3));
    const Completion* p = sink->Find(patient);
    CHECK(p != nullptr && p->status.ok());
    CHECK_EQ(executor->BatchRows().size(), 2u);
    batcher->Shutdown(false);
  }
}

// On the real clock the deadline thread sleeps until the earliest deadline it
// knows of. An event loop's submit (caller_flushes) does not wake it; when the
// loop's RunReady() finds the only instance busy (a long inline batch on
// another loop, here a thread), it must hand the request's deadline over, or
// the request would wait for the batch however late that finishes.
void LoopRequestExpiresBehindLongBatch() {
  test::SetContext("loop request expires behind a long batch");
  BatchConfig config;
  config.max_batch_size = 8;
  config.inline_execution = true;
  auto executor = std::make_shared<GatedExecutor>();
  auto batcher = MakeBatcher("loop-deadline", config, executor, std::make_shared<SteadyClock>());
  auto sink = std::make_shared<Collector>();
  std::vector<float> row(kFeatures, 1.0f);
  auto submit = [&](int64_t timeout_ns, uint64_t* id) {
    SubmitArgs args = RowArgs(row, sink, timeout_ns);
    args.caller_flushes = true;
    CHECK(batcher->Submit(args, id, nullptr).ok());
    batcher->RunReady();
  };
  uint64_t running = 0, waiting = 0;
  std::thread other_loop([&] { submit(0, &running); });
  executor->WaitStarted(1);
  submit(/*timeout_ns=*/20'000'000, &waiting);
  CHECK(sink->WaitFor(1));  // while the batch is still held (30 s bound: a hang fails)
  const Completion* c = sink->Find(waiting);
  CHECK(c != nullptr);
  if (c != nullptr) CHECK(c->status.code() == StatusCode::kDeadlineExceeded);
  executor->Open();
  other_loop.join();
  CHECK(sink->WaitFor(2));
  batcher->Shutdown(false);
}

// A request left for its caller's RunReady() (an event loop's submit) runs
// there, even when a worker wakes before it (at start-up, or any wake-up: here
// the manual clock's settling wakes every participant): the loop answers its
// iteration's requests inline, and they share one batch.
void CallerLeftRequestsAreNotTakenByAWorker() {
  test::SetContext("caller-left requests");
  auto clock = std::make_shared<ManualClock>();
  BatchConfig config;
  config.max_batch_size = 8;
  config.inline_execution = true;
  struct ThreadRecorder final : public Executor {
    AffineExecutor model;
    std::mutex mu;
    std::vector<std::thread::id> threads;
    std::vector<int64_t> rows;
    Status Execute(const Batch& batch, std::vector<ExecutorOutput>* outputs,
                   std::shared_ptr<ErrorDetail>* detail) override {
      {
        std::lock_guard<std::mutex> lock(mu);
        threads.push_back(std::this_thread::get_id());
        rows.push_back(batch.rows);
      }
      return model.Execute(batch, outputs, detail);
    }
  };
  auto executor = std::make_shared<ThreadRecorder>();
  auto batcher = MakeBatcher("caller-left", config, executor, clock);
  auto sink = std::make_shared<Collector>();
  std::vector<float> row(kFeatures, 1.0f);
  for (int i = 0; i < 3; ++i) {
    SubmitArgs args = RowArgs(row, sink);
    args.caller_flushes = true;
    uint64_t id;
    CHECK(batcher->Submit(args, &id, nullptr).ok());
    clock->Advance(0);  // every worker wakes and looks at the queue
  }
  CHECK_EQ(sink->Count(), 0u);
  CHECK_EQ(batcher->RunReady(), 1);
  CHECK(sink->WaitFor(3));
  std::lock_guard<std::mutex> lock(executor->mu);
  if (CHECK_EQ(executor->threads.size(), size_t{1})) {
    CHECK(executor->threads[0] == std::this_thread::get_id());
    CHECK_EQ(executor->rows[0], int64_t{3});
  }
  batcher->Shutdown(false);
}

// Time passes between the clock reading that sets a deadline and the one a
// batch forms with, as it does on a real clock: a 1 ns deadline has always
// passed by then, on the inline path as on the workers.
void OneNanosecondDeadlineNeverRuns() {
  for (bool caller_flushes : {false, true}) {
    test::SetContext("1 ns deadline, caller_flushes=" + std::to_string(caller_flushes));
    auto clock = std::make_shared<ManualClock>();
    clock->SetAdvancePerRead(1);
    BatchConfig config;
    config.max_batch_size = 8;
    config.drop_unreachable = false;
    config.inline_execution = true;
    auto executor = std::make_shared<AffineExecutor>();
    auto batcher = MakeBatcher("one-ns", config, executor, clock);
    auto sink = std::make_shared<Collector>();
    std::vector<float> row(kFeatures, 1.0f);
    constexpr int kRequests = 1000;
    for (int i = 0; i < kRequests; ++i) {
      SubmitArgs args = RowArgs(row, sink, /*timeout_ns=*/1);
      args.caller_flushes = caller_flushes;
      uint64_t id;
      CHECK(batcher->Submit(args, &id, nullptr).ok());
      if (caller_flushes) batcher->RunReady();
    }
    CHECK(sink->WaitFor(kRequests));
    CHECK_EQ(executor->rows_seen.load(), 0);
    CHECK_EQ(batcher->Stats().expired, static_cast<uint64_t>(kRequests));
    batcher->Shutdown(false);
  }
}

// Splits of a failed range until every part is clean or a single request: the
// executions that bisection needs, counted independently of the batcher.
int SplitExecutions(const std::vector<bool>& poisoned, size_t begin, size_t end) {
  bool any = false;
  for (size_t i = begin; i < end; ++i) any = any || poisoned[i];
  if (!any || end - begin == 1) return 0;
  const size_t mid = begin + (end - begin) / 2;
  return 2 + SplitExecutions(poisoned, begin, mid) + SplitExecutions(poisoned, mid, end);
}

// One request in 8 makes the model fail: only those get the error, every good
// request gets its own correct output.
void FailureIsolatedToFailingRequests() {
  test::SetContext("failure isolation");
  auto clock = std::make_shared<ManualClock>();
  BatchConfig config;
  config.max_batch_size = 64;
  config.max_delay_ns = 1000;  // fill one full batch, then run it
  config.inline_execution = false;
  auto executor = std::make_shared<PoisonExecutor>();
  auto batcher = MakeBatcher("isolate", config, executor, clock);
  auto sink = std::make_shared<Collector>();
  constexpr int kRequests = 64;
  std::vector<std::vector<float>> rows(kRequests);
  std::vector<bool> poisoned(kRequests);
  std::unordered_map<uint64_t, int> index;
  for (int i = 0; i < kRequests; ++i) {
    poisoned[i] = i % 8 == 5;
    rows[i].assign(kFeatures, poisoned[i] ? -1.0f : static_cast<float>(i));
    uint64_t id;
    CHECK(batcher->Submit(RowArgs(rows[i], sink), &id, nullptr).ok());
    index[id] = i;
  }
  CHECK(sink->WaitFor(kRequests));
  int ok = 0, failed = 0;
  for (const auto& c : sink->done) {
    const int i = index[c.request_id];
    if (poisoned[i]) {
      ++failed;
      CHECK(c.status.code() == StatusCode::kExecutionFailed);
      continue;
    }
    if (!CHECK(c.status.ok())) continue;
    ++ok;
    const float* out =
        reinterpret_cast<const float*>(c.result->outputs[0]->data()) + c.row_offset * kFeatures;
    CHECK_EQ(out[0], 3 * static_cast<float>(i) + 1);
  }
  CHECK_EQ(ok, 56);
  CHECK_EQ(failed, 8);
  const BatcherStats st = batcher->Stats();
  const int expected_extra = SplitExecutions(poisoned, 0, kRequests);
  CHECK_EQ(st.isolation_executions, static_cast<uint64_t>(expected_extra));
  CHECK_EQ(st.isolated_batches, 1u);
  CHECK_EQ(st.batches, static_cast<uint64_t>(1 + expected_extra));
  CHECK_EQ(st.success, 56u);
  CHECK_EQ(st.failed, 8u);
  batcher->Shutdown(false);
}

// A model that fails on every batch: each request still gets the error, and
// isolation stops once its allowance (2 * max_batch_size executions, earned
// back only by successes) is spent.
void IsolationWorkIsBounded() {
  test::SetContext("isolation bound");
  auto clock = std::make_shared<ManualClock>();
  BatchConfig config;
  config.max_batch_size = 8;
  config.max_delay_ns = 1000;
  config.inline_execution = false;
  auto executor = std::make_shared<PoisonExecutor>();
  auto batcher = MakeBatcher("always-fails", config, executor, clock);
  auto sink = std::make_shared<Collector>();
  std::vector<float> row(kFeatures, -1.0f);
  constexpr int kBatches = 20;
  for (int b = 0; b < kBatches; ++b) {
    for (int i = 0; i < 8; ++i) {
      uint64_t id;
      CHECK(batcher->Submit(RowArgs(row, sink), &id, nullptr).ok());
    }
    CHECK(sink->WaitFor(static_cast<size_t>(8 * (b + 1))));
  }
  for (const auto& c : sink->done) CHECK(c.status.code() == StatusCode::kExecutionFailed);
  const BatcherStats st = batcher->Stats();
  CHECK(st.isolation_executions <= 2u * 8u);
  CHECK(executor->calls.load() <= kBatches + 2 * 8);
  CHECK_EQ(st.failed, static_cast<uint64_t>(8 * kBatches));
  batcher->Shutdown(false);
}

// Shutdown(drain) returns only after a batch executing inline on another
// thread has finished: what the executor uses may be freed right after.
void ShutdownWaitsForInlineExecution() {
  test::SetContext("shutdown waits for inline execution");
  BatchConfig config;
  config.max_batch_size = 8;
  config.inline_execution = true;
  auto executor = std::make_shared<GatedExecutor>();
  std::atomic<bool> finished{false};
  executor->on_finish = [&] { finished.store(true); };
  auto batcher = MakeBatcher("shutdown", config, executor, nullptr);
  auto sink = std::make_shared<Collector>();
  std::vector<float> row(kFeatures, 1.0f);
  std::thread submitter([&] {
    uint64_t id;
    CHECK(batcher->Submit(RowArgs(row, sink), &id, nullptr).ok());  // executes inline
  });
  executor->WaitStarted(1);
  std::mutex mu;
  std::condition_variable cv;
  bool returned = false;
  bool finished_at_return = false;
  std::thread stopper([&] {
    batcher->Shutdown(/*drain=*/true);
    std::lock_guard<std::mutex> lock(mu);
    finished_at_return = finished.load();
    returned = true;
    cv.notify_all();
  });
  {
    // Give a Shutdown that does not wait the chance to return while the batch
    // still runs. This bounds nothing: a correct Shutdown passes either way.
    std::unique_lock<std::mutex> lock(mu);
    cv.wait_for(lock, std::chrono::milliseconds(50), [&] { return returned; });
  }
  executor->Open();
  stopper.join();
  submitter.join();
  CHECK(returned);
  CHECK(finished_at_return);
  CHECK_EQ(sink->Count(), 1u);
}

}  // namespace
}  // namespace aiarch

int main() {
  aiarch::ManualClockClosesOnDelayOnly();
  aiarch::IdleInstanceStartsAtOnceAndBusyOnesBatch();
  aiarch::DeadlineFiresWhileInstanceBusy();
  aiarch::LoopRequestExpiresBehindLongBatch();
  aiarch::CallerLeftRequestsAreNotTakenByAWorker();
  aiarch::OneNanosecondDeadlineNeverRuns();
  aiarch::FailureIsolatedToFailingRequests();
  aiarch::IsolationWorkIsBounded();
  aiarch::ShutdownWaitsForInlineExecution();
  const uint64_t seed = std::random_device{}();
  for (bool inline_execution : {false, true}) {
    for (int instances : {1, 3}) aiarch::StressAgainstOracle(seed, inline_execution, instances);
  }
  return aiarch::test::Finish("test_batcher");
}
