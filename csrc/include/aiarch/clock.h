// Clock: the single source of time for time-based logic in the core (batch
// delays, deadlines, cache TTLs). Production code uses SteadyClock; tests use
// ManualClock so that delays and expiries are driven explicitly, never by sleeps.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <vector>

namespace aiarch {

class Clock {
 public:
  virtual ~Clock() = default;
  // Monotonic nanoseconds. Thread-safe. Never allocates.
  virtual int64_t NowNs() const = 0;
  // True for a clock that only moves when told to; waiters then must not use
  // wall-clock timeouts. Thread-safe.
  virtual bool IsManual() const { return false; }
};

// std::chrono::steady_clock. Thread-safe.
class SteadyClock final : public Clock {
 public:
  int64_t NowNs() const override;
  static std::shared_ptr<Clock> Instance();
};

// A clock that moves only on Advance(). Components that wait on time register
// a settle hook: Advance() wakes every hook and returns once each has re-read
// the clock, so a test observes the state that follows the new time without
// sleeping.
class ManualClock final : public Clock {
 public:
  explicit ManualClock(int64_t start_ns = 0) : now_ns_(start_ns) {}

  int64_t NowNs() const override {
    const int64_t step = advance_per_read_.load(std::memory_order_relaxed);
    if (step == 0) return now_ns_.load(std::memory_order_acquire);
    return now_ns_.fetch_add(step, std::memory_order_acq_rel) + step;
  }
  bool IsManual() const override { return true; }

  // Moves time forward by delta_ns (>= 0) and settles every subscriber.
  // Thread-safe; blocks until the subscribers have settled.
  void Advance(int64_t delta_ns);

  // Makes every NowNs() move time forward by step_ns first (0: off), so that
  // two reads inside one call differ, as they do on a real clock. Time moved
  // this way settles no subscriber. Thread-safe.
  void SetAdvancePerRead(int64_t step_ns) {
    advance_per_read_.store(step_ns < 0 ? 0 : step_ns, std::memory_order_relaxed);
  }

  // A subscriber's hook wakes it and blocks until it has acted on the new
  // time. Returns an id for Unsubscribe. Thread-safe.
  uint64_t Subscribe(std::function<void()> settle);
  void Unsubscribe(uint64_t id);

 private:
  // Pairs with the acquire load in NowNs(): a subscriber woken by Advance
  // sees the advanced time.
  mutable std::atomic<int64_t> now_ns_;
  std::atomic<int64_t> advance_per_read_{0};
  std::mutex mu_;  // guards subscribers_ and serialises Advance()
  std::vector<std::pair<uint64_t, std::function<void()>>> subscribers_;
  uint64_t next_id_ = 1;
};

}  // namespace aiarch
