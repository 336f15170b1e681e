// Drift sketches: per-feature binned counts of served values against a
// reference profile's bins, updated once per batch.
//
// Bin layout of one feature (index within the feature's block):
//   numeric with k edges e0 < e1 < ... < e(k-1):
//     0 = null (NaN, +/-inf), 1 = underflow (v < e0),
//     1 + i = [e(i-1), e(i)) for i in 1..k-1, k + 1 = overflow (v >= e(k-1))
//     => k + 2 bins.
//   categorical with m codes c0 < c1 < ... < c(m-1):
//     0 = null, 1 + i = value equal to ci, m + 1 = unknown => m + 2 bins.
// The layout is fixed at construction (from the reference profile) and never
// changes, so counts from any number of processes with the same layout merge
// by addition.
//
// Concurrency contract
// - Count(): bins the batch straight into one of several counter shards
//   (plain, non-atomic counters) under that shard's mutex. A thread tries its
//   own shard first and then the others with try_lock, so it blocks only when
//   every shard is held: more threads counting at once than there are shards,
//   or a TakeWindow() draining them. No atomic read-modify-write per bin.
//   Any number of threads may count concurrently.
// - TakeWindow(): drains the shards one at a time under their mutexes. Every
//   batch is counted whole in exactly one window (a batch never straddles two):
//   no value is lost or counted twice. Concurrent TakeWindow() calls are
//   serialized (they are rare: once per window).
// - Totals(): the sum of every window taken so far. Thread-safe.
// - Large batches (millions of values: a reference or a retraining window,
//   never a served batch) are binned by several threads, each over its own
//   feature columns, started and joined within Count(); the shard is held
//   throughout, so the contract above is unchanged.
// - Allocation: the constructor allocates every shard; Count() never
//   allocates below that size (above it, only the threads' start-up does);
//   TakeWindow()/PeekWindow()/Totals() allocate the result.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "aiarch/status.h"

namespace aiarch {

enum class FeatureKind : uint8_t { kNumeric = 0, kCategorical = 1 };

struct FeatureBins {
  FeatureKind kind = FeatureKind::kNumeric;
  // Numeric: strictly increasing finite bin edges. Categorical: strictly
  // increasing finite value codes.
  std::vector<double> points;
};

// The element type of a batch handed to Count().
enum class DriftDType : uint8_t { kFloat32 = 0, kFloat64 = 1 };

// A read-only 2-D view (rows x features) of a batch. Strides are in
// elements, so row-major, column-major and sliced arrays all fit.
struct DriftBatch {
  const void* data = nullptr;
  DriftDType dtype = DriftDType::kFloat64;
  int64_t rows = 0;
  int64_t features = 0;
  int64_t row_stride = 0;
  int64_t feature_stride = 1;
};

class DriftSketch {
 public:
  // Validates the bins (finite, strictly increasing, at most 65535 points a
  // feature) and builds the sketch. On success *out owns the new sketch; on
  // failure *out is untouched. Thread-safe.
  static Status Create(std::vector<FeatureBins> features, std::unique_ptr<DriftSketch>* out);
  DriftSketch(const DriftSketch&) = delete;
  DriftSketch& operator=(const DriftSketch&) = delete;

  // Counts every value of the batch into its feature's bins. The batch must
  // have exactly num_features() columns. Thread-safe. Never allocates for a
  // batch binned on the calling thread alone (see the contract above).
  Status Count(const DriftBatch& batch);
  // Bins one value of `feature` (exposed for tests and the profile builder).
  // Thread-safe. Never allocates.
  uint32_t BinOf(size_t feature, double value) const;

  // Returns the counts since the previous TakeWindow() and starts a new
  // window; the returned counts are added to Totals(). Thread-safe.
  std::vector<uint64_t> TakeWindow();
  // Counts of the current (not yet taken) window, read without resetting.
  // Thread-safe.
  std::vector<uint64_t> PeekWindow() const;
  // Sum of all windows taken so far. Thread-safe.
  std::vector<uint64_t> Totals() const;

  size_t num_features() const { return features_.size(); }
  size_t num_bins() const { return total_bins_; }
  // Index of the feature's first bin in the flat count arrays.
  size_t offset(size_t feature) const { return layout_[feature].offset; }
  size_t bins(size_t feature) const { return layout_[feature].bins; }
  // Values counted so far (all windows plus the current one). Thread-safe.
  uint64_t values_counted() const { return values_.load(std::memory_order_relaxed); }

 private:
  struct Layout {
    size_t offset = 0;      // first bin in counts_
    size_t bins = 0;        // points + 2
    size_t search_len = 0;  // power of two > points, padded with +inf
    size_t search_at = 0;   // first padded point in search_
    FeatureKind kind = FeatureKind::kNumeric;
  };

  explicit DriftSketch(std::vector<FeatureBins> features);
  // One block of counters; counting threads spread over several to avoid
  // waiting on each other. Aligned so shards share no cache line.
  struct alignas(64) Shard {
    std::mutex mu;
    std::unique_ptr<uint64_t[]> counts;  // total_bins_ entries, guarded by mu
  };

  template <typename T>
  void CountInto(const DriftBatch& batch, uint64_t* counts) const;
  template <typename T, int kLen>
  void CountRows(const DriftBatch& batch, int64_t first, int64_t last, uint64_t* counts) const;

  std::vector<FeatureBins> features_;
  std::vector<Layout> layout_;
  std::vector<double> search_;  // every feature's points, padded, back to back
  size_t total_bins_ = 0;
  // The search length shared by every feature when all are numeric (0 otherwise): selects
  // a fully unrolled search.
  size_t uniform_numeric_len_ = 0;
  std::unique_ptr<Shard[]> shards_;
  size_t num_shards_ = 0;
  std::atomic<uint64_t> values_{0};
  std::mutex window_mu_;          // serializes TakeWindow(); taken before any shard mutex
  mutable std::mutex totals_mu_;  // guards totals_
  std::vector<uint64_t> totals_;
};

// Reference statistics of one numeric feature (the profile builder's native
// half, see SummarizeNumeric).
struct NumericSummary {
  // The candidate edges less any at or below the minimum of the finite values
  // (such an edge would leave the underflow bin empty by construction).
  std::vector<double> edges;
  // Values of every row per bin, in the sketch layout: null, underflow,
  // [e0, e1), ..., overflow (edges.size() + 2 entries).
  std::vector<uint64_t> counts;
  // Sum of the finite values in each non-null bin (edges.size() + 1 entries),
  // added in row order (as numpy.bincount with weights).
  std::vector<double> sums;
  uint64_t finite = 0;  // finite values over all rows
  double min = 0.0;     // of the finite values; 0 when there are none
  double max = 0.0;
  double stddev = 0.0;  // population standard deviation of the finite values
};

// Summarizes every column of `batch` as a numeric feature binned by its
// candidate `edges` (one list per column, finite and strictly increasing), in
// one pass over every value: counts, per-bin sums, min, max and standard
// deviation. Large batches are split by columns over threads (as Count()),
// so every column's values are still added in row order. On success *out
// holds one summary per column; on failure it is untouched. Thread-safe
// (touches nothing shared). Allocates the result and per-feature accumulators.
Status SummarizeNumeric(const DriftBatch& batch, const std::vector<std::vector<double>>& edges,
                        std::vector<NumericSummary>* out);

// Candidate edges of every column of `batch` (the profile builder's other
// native half, see SummarizeNumeric): per column, the distinct values, in
// increasing order, of numpy.quantile's default ("linear") method over the
// column's finite values at each of `quantiles` (each in [0, 1]). The values
// are those of the rows listed in `rows` (`num_rows` indices, each in
// [0, batch.rows)), or of every row when `rows` is null. A column without
// finite values gets no edges. Equal to numpy's result bit for bit, except
// that a zero edge is always +0.0.
//
// The order statistics come from a radix selection over a copy of at most a
// few columns per thread at a time (no sort, no copy of the whole batch);
// large inputs are split by columns over threads (as Count()). On success
// *out holds one list per column; on failure it is untouched. Thread-safe
// (touches nothing shared). Allocates the result and per-thread buffers.
Status QuantileEdges(const DriftBatch& batch, const int64_t* rows, int64_t num_rows,
                     const std::vector<double>& quantiles, std::vector<std::vector<double>>* out);

}  // namespace aiarch
