// Batcher stress test against a sequential oracle: several submitter threads
// push a seeded log of requests (rows of known values, random sizes, some
// cancelled, some with deadlines already past); every request must get
// exactly one completion, and every successful output must equal the model
// applied to that request alone.
#include <atomic>
#include <cstring>
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
  }
  std::mutex mu;
  std::vector<Completion> done;
};

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

}  // namespace
}  // namespace aiarch

int main() {
  aiarch::ManualClockClosesOnDelayOnly();
  const uint64_t seed = std::random_device{}();
  for (bool inline_execution : {false, true}) {
    for (int instances : {1, 3}) aiarch::StressAgainstOracle(seed, inline_execution, instances);
  }
  return aiarch::test::Finish("test_batcher");
}
