#include "aiarch/histogram.h"

#include <algorithm>
#include <cmath>
#include <limits>

// Layout (unit magnitude 0): sub_bucket_count is the smallest power of two
// >= 2 * 10^digits and half = sub_bucket_count / 2. Bucket 0 holds the values
// [0, sub_bucket_count) one per counter; bucket b >= 1 holds
// [half * 2^b, 2 * half * 2^b) in `half` counters of width 2^b. A value's
// counter is b * half + (value >> b), so each bucket b >= 1 only uses the
// upper half of its sub-bucket range and the buckets tile the index space
// without gaps.

namespace aiarch {
namespace {

struct Layout {
  int half_magnitude;  // log2(half)
  size_t counts_len;
};

int ClampDigits(int digits) { return std::min(5, std::max(1, digits)); }

Layout ComputeLayout(int64_t highest, int digits) {
  int64_t largest_single_unit = 2;
  for (int i = 0; i < digits; ++i) largest_single_unit *= 10;
  int sub_bucket_magnitude = 0;
  while ((int64_t{1} << sub_bucket_magnitude) < largest_single_unit) ++sub_bucket_magnitude;
  Layout layout;
  layout.half_magnitude = sub_bucket_magnitude - 1;
  // Count the buckets needed for `highest`: bucket b ends just below
  // sub_bucket_count << b.
  int64_t smallest_untrackable = int64_t{1} << sub_bucket_magnitude;
  size_t buckets = 1;
  while (smallest_untrackable <= highest) {
    if (smallest_untrackable > std::numeric_limits<int64_t>::max() / 2) {
      ++buckets;
      break;
    }
    smallest_untrackable <<= 1;
    ++buckets;
  }
  layout.counts_len = (buckets + 1) << layout.half_magnitude;
  return layout;
}

inline int BucketOf(uint64_t value, int half_magnitude) {
  const uint64_t mask = (uint64_t{2} << half_magnitude) - 1;
  // Bit length of (value | mask) minus log2(sub_bucket_count): 0 for every
  // value below sub_bucket_count.
  return (64 - __builtin_clzll(value | mask)) - (half_magnitude + 1);
}

inline size_t IndexFor(int64_t value, int half_magnitude) {
  const uint64_t v = static_cast<uint64_t>(value);
  const int b = BucketOf(v, half_magnitude);
  return (static_cast<size_t>(b) << half_magnitude) + static_cast<size_t>(v >> b);
}

// Returns the first value of counter `index` and the bucket's shift.
inline int64_t LowestFor(size_t index, int half_magnitude, int* shift) {
  int b = static_cast<int>(index >> half_magnitude) - 1;
  int64_t sub = static_cast<int64_t>(index & ((size_t{1} << half_magnitude) - 1)) +
                (int64_t{1} << half_magnitude);
  if (b < 0) {
    sub -= int64_t{1} << half_magnitude;
    b = 0;
  }
  *shift = b;
  return sub << b;
}

inline int64_t HighestFor(size_t index, int half_magnitude) {
  int shift;
  const int64_t lowest = LowestFor(index, half_magnitude, &shift);
  return lowest + ((int64_t{1} << shift) - 1);
}

inline int64_t MidpointFor(size_t index, int half_magnitude) {
  int shift;
  const int64_t lowest = LowestFor(index, half_magnitude, &shift);
  // A width-1 counter's midpoint is its value.
  return lowest + ((int64_t{1} << shift) >> 1);
}

}  // namespace

Histogram::Histogram(int64_t highest_trackable, int significant_digits)
    : highest_(std::max<int64_t>(highest_trackable, 1)), digits_(ClampDigits(significant_digits)) {
  const Layout layout = ComputeLayout(highest_, digits_);
  sub_bucket_half_magnitude_ = layout.half_magnitude;
  sub_bucket_mask_ = (int64_t{2} << layout.half_magnitude) - 1;
  counts_len_ = layout.counts_len;
  counts_.reset(new std::atomic<uint64_t>[counts_len_]);
  for (size_t i = 0; i < counts_len_; ++i) counts_[i].store(0, std::memory_order_relaxed);
}

size_t Histogram::IndexOf(int64_t value) const {
  return IndexFor(std::min(std::max<int64_t>(value, 0), highest_), sub_bucket_half_magnitude_);
}

int64_t Histogram::LowestEquivalent(size_t index) const {
  int shift;
  return LowestFor(index, sub_bucket_half_magnitude_, &shift);
}

int64_t Histogram::HighestEquivalent(size_t index) const {
  return HighestFor(index, sub_bucket_half_magnitude_);
}

void Histogram::RecordN(int64_t value, uint64_t count) {
  if (value < 0) value = 0;
  if (value > highest_) {
    value = highest_;
    // Relaxed: like the counters, read one by one by Snapshot(), which
    // promises no atomic cut.
    clamped_.fetch_add(count, std::memory_order_relaxed);
  }
  // Relaxed: a counter publishes nothing but itself, and Snapshot() promises
  // no atomic cut. A Record that happens-before Snapshot() is still seen
  // (read-after-write coherence on the one counter).
  counts_[IndexFor(value, sub_bucket_half_magnitude_)].fetch_add(count, std::memory_order_relaxed);
}

// As HdrHistogram's recordCorrectedValue: the generator meant to send one
// request every expected_interval, so a reply that took `value` hid requests
// that would have been sent at expected_interval, 2 * expected_interval, ...
// into the stall and would have waited value - k * expected_interval. The
// last of them still waited a full interval, hence ">=" (value 100, interval
// 25 records 100, 75, 50, 25).
void Histogram::RecordCorrected(int64_t value, int64_t expected_interval) {
  Record(value);
  if (expected_interval <= 0 || value <= expected_interval) return;
  for (int64_t missing = value - expected_interval; missing >= expected_interval;
       missing -= expected_interval) {
    Record(missing);
  }
}

HistogramSnapshot Histogram::Snapshot() const {
  std::vector<uint64_t> counts(counts_len_);
  // Relaxed loads: pairs with nothing; see the contract (no atomic cut).
  for (size_t i = 0; i < counts_len_; ++i) counts[i] = counts_[i].load(std::memory_order_relaxed);
  return HistogramSnapshot(highest_, digits_, std::move(counts),
                           clamped_.load(std::memory_order_relaxed));
}

void Histogram::Reset() {
  // Relaxed: Reset is documented as not atomic with respect to Record.
  for (size_t i = 0; i < counts_len_; ++i) counts_[i].store(0, std::memory_order_relaxed);
  clamped_.store(0, std::memory_order_relaxed);
}

HistogramSnapshot::HistogramSnapshot(int64_t highest_trackable, int significant_digits,
                                     std::vector<uint64_t> counts, uint64_t clamped)
    : highest_(std::max<int64_t>(highest_trackable, 1)),
      digits_(ClampDigits(significant_digits)),
      counts_(std::move(counts)),
      clamped_(clamped) {
  const Layout layout = ComputeLayout(highest_, digits_);
  sub_bucket_half_magnitude_ = layout.half_magnitude;
  // A caller-built snapshot with the wrong length is padded or cut so that
  // every index is in the layout and merges stay index-for-index.
  counts_.resize(layout.counts_len, 0);
  for (uint64_t c : counts_) total_ += c;
}

int64_t HistogramSnapshot::MidpointOf(size_t index) const {
  return MidpointFor(index, sub_bucket_half_magnitude_);
}

int64_t HistogramSnapshot::HighestEquivalentOf(size_t index) const {
  return HighestFor(index, sub_bucket_half_magnitude_);
}

int64_t HistogramSnapshot::ValueAtPercentile(double p) const {
  if (total_ == 0) return 0;
  if (!(p > 0)) p = 0;  // also maps NaN to 0
  if (p > 100) p = 100;
  // p * total before the division keeps ranks such as 99.9% of 10^6 exact.
  uint64_t rank = static_cast<uint64_t>(std::ceil(p * static_cast<double>(total_) / 100.0));
  rank = std::min(std::max<uint64_t>(rank, 1), total_);
  uint64_t seen = 0;
  for (size_t i = 0; i < counts_.size(); ++i) {
    seen += counts_[i];
    if (seen >= rank) return MidpointOf(i);
  }
  return 0;  // unreachable: the counts sum to total_
}

// Min and Max report bucket midpoints, like the percentiles, so that
// Min() == ValueAtPercentile(0) and Max() == ValueAtPercentile(100): one
// estimator everywhere, each within half a bucket of the true extreme.
int64_t HistogramSnapshot::Min() const {
  for (size_t i = 0; i < counts_.size(); ++i) {
    if (counts_[i] != 0) return MidpointOf(i);
  }
  return 0;
}

int64_t HistogramSnapshot::Max() const {
  for (size_t i = counts_.size(); i-- > 0;) {
    if (counts_[i] != 0) return MidpointOf(i);
  }
  return 0;
}

double HistogramSnapshot::Mean() const {
  if (total_ == 0) return 0.0;
  double sum = 0.0;
  for (size_t i = 0; i < counts_.size(); ++i) {
    if (counts_[i] == 0) continue;
    sum += static_cast<double>(counts_[i]) * static_cast<double>(MidpointOf(i));
  }
  return sum / static_cast<double>(total_);
}

bool HistogramSnapshot::Merge(const HistogramSnapshot& other) {
  if (highest_ != other.highest_ || digits_ != other.digits_) return false;
  for (size_t i = 0; i < counts_.size(); ++i) counts_[i] += other.counts_[i];
  total_ += other.total_;
  clamped_ += other.clamped_;
  return true;
}

}  // namespace aiarch
