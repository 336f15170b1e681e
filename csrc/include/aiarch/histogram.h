// Log-linear latency histogram in the HdrHistogram layout.
//
// Concurrency contract
// - Record*(): wait-free (one relaxed fetch_add on one counter; no CAS loop).
//   Any number of threads may record concurrently.
// - Snapshot(): lock-free, may run concurrently with Record(). A snapshot is
//   NOT an atomic cut: a value recorded during the snapshot may or may not be
//   in it, and counters are read one by one. Every value recorded before
//   Snapshot() was called is in it.
// - Reset(): not atomic with respect to concurrent Record(); values recorded
//   during a Reset() may be lost.
// - Allocation: the constructor allocates the whole counter array
//   (about 8 bytes x 1024 x (log2(highest/2048) + 2)); Record never allocates.
//
// Precision: values are kept with `significant_digits` decimal digits
// (3 => relative bucket width <= 1/1024). Percentiles report the midpoint of
// the bucket holding the requested rank, so their relative error against the
// exact order statistic is <= 1/2048 for values >= 2048 units.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>

namespace aiarch {

class HistogramSnapshot;

class Histogram {
 public:
  // highest_trackable: values above it are clamped to it (and counted in
  // Snapshot().clamped()). significant_digits in [1, 5].
  explicit Histogram(int64_t highest_trackable = int64_t{1} << 36, int significant_digits = 3);
  Histogram(const Histogram&) = delete;
  Histogram& operator=(const Histogram&) = delete;

  // Records one value (negative values count as 0). Thread-safe. Wait-free.
  // Never allocates.
  void Record(int64_t value) { RecordN(value, 1); }
  // Records `count` occurrences of value. Thread-safe. Wait-free. Never allocates.
  void RecordN(int64_t value, uint64_t count);
  // Coordinated-omission correction for load generators: records `value`
  // and, when value > expected_interval > 0, the values a generator that had
  // kept its schedule would have seen while it was stalled:
  // value - k * expected_interval for k = 1, 2, ... while >= expected_interval
  // (HdrHistogram's recordCorrectedValue). Thread-safe. Never allocates.
  void RecordCorrected(int64_t value, int64_t expected_interval);

  // Copies the counters. Thread-safe (see contract above). Allocates.
  HistogramSnapshot Snapshot() const;
  // Zeroes every counter. Thread-safe but not atomic (see contract).
  void Reset();

  int64_t highest_trackable() const { return highest_; }
  int significant_digits() const { return digits_; }
  size_t counts_length() const { return counts_len_; }

  // Layout helpers, shared with HistogramSnapshot. Never allocate.
  size_t IndexOf(int64_t value) const;
  int64_t LowestEquivalent(size_t index) const;
  int64_t HighestEquivalent(size_t index) const;

 private:
  int64_t highest_;
  int digits_;
  int sub_bucket_half_magnitude_;  // log2(sub_bucket_count) - 1
  int64_t sub_bucket_mask_;
  size_t counts_len_;
  std::unique_ptr<std::atomic<uint64_t>[]> counts_;
  std::atomic<uint64_t> clamped_{0};
};

// An immutable copy of a Histogram's counters, with the statistics computed
// from it. Snapshots of histograms with the same (highest, digits) merge.
// Not thread-safe for concurrent Merge(); const methods are thread-safe.
class HistogramSnapshot {
 public:
  HistogramSnapshot() = default;
  HistogramSnapshot(int64_t highest_trackable, int significant_digits, std::vector<uint64_t> counts,
                    uint64_t clamped);

  uint64_t total_count() const { return total_; }
  uint64_t clamped() const { return clamped_; }
  // 0 when empty. p in [0, 100]; rank = ceil(p/100 * total), at least 1.
  int64_t ValueAtPercentile(double p) const;
  // Midpoints of the lowest / highest non-empty bucket, so Min() equals
  // ValueAtPercentile(0) and Max() equals ValueAtPercentile(100).
  int64_t Min() const;
  int64_t Max() const;
  double Mean() const;  // from bucket midpoints
  // Adds other's counts. Returns false (and changes nothing) when the layouts differ.
  bool Merge(const HistogramSnapshot& other);

  int64_t highest_trackable() const { return highest_; }
  int significant_digits() const { return digits_; }
  const std::vector<uint64_t>& counts() const { return counts_; }
  // Midpoint value of counter index i (used to export buckets).
  int64_t MidpointOf(size_t index) const;
  int64_t HighestEquivalentOf(size_t index) const;

 private:
  int64_t highest_ = 0;
  int digits_ = 0;
  int sub_bucket_half_magnitude_ = 0;
  std::vector<uint64_t> counts_;
  uint64_t total_ = 0;
  uint64_t clamped_ = 0;
};

}  // namespace aiarch
