#include "aiarch/clock.h"

#include <algorithm>
#include <chrono>

namespace aiarch {

int64_t SteadyClock::NowNs() const {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

std::shared_ptr<Clock> SteadyClock::Instance() {
  static std::shared_ptr<Clock> clock = std::make_shared<SteadyClock>();
  return clock;
}

void ManualClock::Advance(int64_t delta_ns) {
  // Holding mu_ for the whole settle serialises concurrent Advance() calls, so
  // each subscriber settles on each step in order.
  std::lock_guard<std::mutex> lock(mu_);
  // Pairs with the acquire load in NowNs().
  now_ns_.fetch_add(std::max<int64_t>(delta_ns, 0), std::memory_order_release);
  for (auto& entry : subscribers_) entry.second();
}

uint64_t ManualClock::Subscribe(std::function<void()> settle) {
  std::lock_guard<std::mutex> lock(mu_);
  const uint64_t id = next_id_++;
  subscribers_.emplace_back(id, std::move(settle));
  return id;
}

void ManualClock::Unsubscribe(uint64_t id) {
  std::lock_guard<std::mutex> lock(mu_);
  subscribers_.erase(std::remove_if(subscribers_.begin(), subscribers_.end(),
                                    [id](const auto& e) { return e.first == id; }),
                     subscribers_.end());
}

}  // namespace aiarch
