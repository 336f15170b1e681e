#include "aiarch/drift.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <thread>
#include <utility>

namespace aiarch {
namespace {

constexpr size_t kMaxPoints = 65535;
// Count tiles: 64 features' search tables (8 KiB at 10 bins) plus 64 rows of
// their values stay in L1.
constexpr int64_t kRowTile = 64;
constexpr int64_t kFeatureTile = 64;
// Counter shards: enough for the batcher's executor threads plus a few
// embedding threads to count without waiting on each other.
constexpr size_t kShards = 8;
// Batches of at least this many values per thread are split by feature
// columns over threads (a thread's start costs tens of microseconds; this is
// milliseconds of binning). Each column is still read in row order by one
// thread, so every sum comes out bit for bit as in one thread.
constexpr int64_t kValuesPerThread = int64_t{1} << 21;
constexpr unsigned kMaxThreads = 8;

size_t SearchLength(size_t points) {
  // A power of two with at least one +inf pad, so the branch-free search
  // below never needs a bounds check.
  size_t n = 1;
  while (n <= points) n <<= 1;
  return n;
}

// Number of points <= v among the first `len` (a power of two) entries of s,
// whose last entry is +inf. Branch-free: log2(len) compares and selects.
inline size_t CountAtOrBelow(const double* s, size_t len, double v) {
  size_t pos = 0;
  for (size_t step = len >> 1; step > 0; step >>= 1) {
    pos += (s[pos + step - 1] <= v) ? step : 0;
  }
  return pos;
}

// True for finite v (false for NaN and +/-inf) without a branch.
inline bool IsFinite(double v) { return (v - v) == 0.0; }

// Calls fn(begin, end) on contiguous ranges of [0, features) that together
// cover it once: on the calling thread alone for small batches, else on up to
// one thread per core (the caller's included), returning when all are done.
// fn must touch only state of its own columns.
template <typename Fn>
void ForColumnRanges(int64_t rows, int64_t features, const Fn& fn) {
  const int64_t by_size = rows * features / kValuesPerThread;
  const int64_t cores = std::max(1u, std::min(kMaxThreads, std::thread::hardware_concurrency()));
  const int64_t parts = std::max<int64_t>(1, std::min({by_size, cores, features}));
  if (parts == 1) {
    fn(int64_t{0}, features);
    return;
  }
  std::vector<std::thread> helpers;
  helpers.reserve(static_cast<size_t>(parts - 1));
  for (int64_t i = 1; i < parts; ++i) {
    helpers.emplace_back(fn, features * i / parts, features * (i + 1) / parts);
  }
  fn(int64_t{0}, features / parts);
  for (auto& t : helpers) t.join();
}

}  // namespace

Status DriftSketch::Create(std::vector<FeatureBins> features, std::unique_ptr<DriftSketch>* out) {
  for (size_t f = 0; f < features.size(); ++f) {
    const auto& p = features[f].points;
    const char* what = features[f].kind == FeatureKind::kNumeric ? "edges" : "codes";
    if (p.size() > kMaxPoints) {
      return Status::InvalidArgument("feature " + std::to_string(f) + " has " +
                                     std::to_string(p.size()) + " " + what + "; at most " +
                                     std::to_string(kMaxPoints) + " are supported");
    }
    for (size_t i = 0; i < p.size(); ++i) {
      if (!std::isfinite(p[i])) {
        return Status::InvalidArgument("feature " + std::to_string(f) + ": " + what +
                                       " must be finite; entry " + std::to_string(i) + " is " +
                                       std::to_string(p[i]));
      }
      if (i > 0 && !(p[i - 1] < p[i])) {
        return Status::InvalidArgument("feature " + std::to_string(f) + ": " + what +
                                       " must be strictly increasing; entry " + std::to_string(i) +
                                       " (" + std::to_string(p[i]) + ") follows " +
                                       std::to_string(p[i - 1]));
      }
    }
  }
  out->reset(new DriftSketch(std::move(features)));
  return Status::Ok();
}

DriftSketch::DriftSketch(std::vector<FeatureBins> features) : features_(std::move(features)) {
  layout_.resize(features_.size());
  size_t search_total = 0;
  for (size_t f = 0; f < features_.size(); ++f) {
    Layout& l = layout_[f];
    l.kind = features_[f].kind;
    l.offset = total_bins_;
    l.bins = features_[f].points.size() + 2;
    l.search_len = SearchLength(features_[f].points.size());
    l.search_at = search_total;
    total_bins_ += l.bins;
    search_total += l.search_len;
  }
  search_.assign(search_total, std::numeric_limits<double>::infinity());
  for (size_t f = 0; f < features_.size(); ++f) {
    std::copy(features_[f].points.begin(), features_[f].points.end(),
              search_.begin() + static_cast<std::ptrdiff_t>(layout_[f].search_at));
  }
  num_shards_ = kShards;
  shards_.reset(new Shard[num_shards_]);
  for (size_t i = 0; i < num_shards_; ++i) shards_[i].counts.reset(new uint64_t[total_bins_]());
  totals_.assign(total_bins_, 0);
  uniform_numeric_len_ = layout_.empty() ? 0 : layout_[0].search_len;
  for (const Layout& l : layout_) {
    if (l.kind != FeatureKind::kNumeric || l.search_len != layout_[0].search_len)
      uniform_numeric_len_ = 0;
  }
}

uint32_t DriftSketch::BinOf(size_t feature, double v) const {
  const Layout& l = layout_[feature];
  const double* s = search_.data() + l.search_at;
  const size_t pos = CountAtOrBelow(s, l.search_len, v);
  if (!IsFinite(v)) return 0;
  if (l.kind == FeatureKind::kNumeric) return static_cast<uint32_t>(pos + 1);
  const bool match = pos > 0 && s[pos - 1] == v;
  return static_cast<uint32_t>(match ? pos : l.bins - 1);
}

template <typename T>
void DriftSketch::CountInto(const DriftBatch& batch, uint64_t* counts) const {
  // Columns on different threads have disjoint counters (each feature's bins
  // are one block of `counts`).
  ForColumnRanges(batch.rows, batch.features, [&](int64_t begin, int64_t end) {
    switch (uniform_numeric_len_) {
      case 4: CountRows<T, 4>(batch, begin, end, counts); break;
      case 8: CountRows<T, 8>(batch, begin, end, counts); break;
      case 16: CountRows<T, 16>(batch, begin, end, counts); break;
      case 32: CountRows<T, 32>(batch, begin, end, counts); break;
      default: CountRows<T, 0>(batch, begin, end, counts);
    }
  });
}

// Rows outermost, features innermost: a row-major batch is read sequentially,
// and consecutive increments hit different features' counters, so they do not
// wait on each other through memory. kLen > 0: every feature is numeric with
// that search length, and the search is fully unrolled. Counts the columns
// [first, last) only.
template <typename T, int kLen>
void DriftSketch::CountRows(const DriftBatch& batch, int64_t first, int64_t last,
                            uint64_t* counts) const {
  const T* base = static_cast<const T*>(batch.data);
  const Layout* layout = layout_.data();
  const double* search = search_.data();
  // Locals, not reads through `batch`: the compiler cannot tell the counter
  // stores from writes to the batch's fields, and would reload them per value.
  const int64_t rows = batch.rows;
  const int64_t row_stride = batch.row_stride;
  const int64_t feature_stride = batch.feature_stride;
  // Tiles of rows x features keep one tile's search tables, counters and
  // values in L1 however many features the profile has.
  for (int64_t r0 = 0; r0 < rows; r0 += kRowTile) {
    const int64_t r1 = std::min(rows, r0 + kRowTile);
    for (int64_t f0 = first; f0 < last; f0 += kFeatureTile) {
      const int64_t f1 = std::min(last, f0 + kFeatureTile);
      for (int64_t r = r0; r < r1; ++r) {
        const T* value = base + r * row_stride + f0 * feature_stride;
        for (int64_t f = f0; f < f1; ++f, value += feature_stride) {
          const Layout& l = layout[f];
          const double* s = search + l.search_at;
          const double v = static_cast<double>(*value);
          uint32_t bin;
          if (kLen > 0) {
            size_t pos = 0;
            for (int step = kLen >> 1; step > 0; step >>= 1) {
              pos += (s[pos + step - 1] <= v) ? step : 0;
            }
            bin = IsFinite(v) ? static_cast<uint32_t>(pos + 1) : 0;
          } else {
            const size_t pos = CountAtOrBelow(s, l.search_len, v);
            if (l.kind == FeatureKind::kNumeric) {
              bin = static_cast<uint32_t>(pos + 1);
            } else {
              const bool match = pos > 0 && s[pos - 1] == v;
              bin = match ? static_cast<uint32_t>(pos) : static_cast<uint32_t>(l.bins - 1);
            }
            bin = IsFinite(v) ? bin : 0;
          }
          ++counts[l.offset + bin];
        }
      }
    }
  }
}

Status DriftSketch::Count(const DriftBatch& batch) {
  if (batch.features != static_cast<int64_t>(features_.size())) {
    return Status::InvalidArgument("batch has " + std::to_string(batch.features) +
                                   " feature columns; the profile has " +
                                   std::to_string(features_.size()));
  }
  if (batch.rows < 0) return Status::InvalidArgument("batch has a negative row count");
  if (batch.rows == 0 || batch.features == 0) return Status::Ok();
  if (batch.data == nullptr) return Status::InvalidArgument("batch has no data");

  // Each thread starts at its own shard, so steady counting threads rarely meet.
  static std::atomic<size_t> next_hint{0};
  // Relaxed: only spreads threads over shards; no data is published through it.
  thread_local const size_t hint = next_hint.fetch_add(1, std::memory_order_relaxed);
  Shard* shard = nullptr;
  for (size_t i = 0; i < num_shards_; ++i) {
    Shard& s = shards_[(hint + i) % num_shards_];
    if (s.mu.try_lock()) {
      shard = &s;
      break;
    }
  }
  if (shard == nullptr) {  // every shard busy: wait for our own
    shard = &shards_[hint % num_shards_];
    shard->mu.lock();
  }
  if (batch.dtype == DriftDType::kFloat32) {
    CountInto<float>(batch, shard->counts.get());
  } else {
    CountInto<double>(batch, shard->counts.get());
  }
  shard->mu.unlock();
  // Relaxed: an informational total, not used to order other data.
  values_.fetch_add(static_cast<uint64_t>(batch.rows * batch.features), std::memory_order_relaxed);
  return Status::Ok();
}

std::vector<uint64_t> DriftSketch::TakeWindow() {
  std::lock_guard<std::mutex> window_lock(window_mu_);
  std::vector<uint64_t> window(total_bins_, 0);
  for (size_t s = 0; s < num_shards_; ++s) {
    std::lock_guard<std::mutex> lock(shards_[s].mu);
    uint64_t* counts = shards_[s].counts.get();
    for (size_t i = 0; i < total_bins_; ++i) window[i] += counts[i];
    std::fill(counts, counts + total_bins_, uint64_t{0});
  }
  std::lock_guard<std::mutex> totals_lock(totals_mu_);
  for (size_t i = 0; i < total_bins_; ++i) totals_[i] += window[i];
  return window;
}

std::vector<uint64_t> DriftSketch::PeekWindow() const {
  std::vector<uint64_t> window(total_bins_, 0);
  for (size_t s = 0; s < num_shards_; ++s) {
    std::lock_guard<std::mutex> lock(shards_[s].mu);
    const uint64_t* counts = shards_[s].counts.get();
    for (size_t i = 0; i < total_bins_; ++i) window[i] += counts[i];
  }
  return window;
}

std::vector<uint64_t> DriftSketch::Totals() const {
  std::lock_guard<std::mutex> lock(totals_mu_);
  return totals_;
}

namespace {

// Every feature's state in the binning pass: feature f's search table is
// search[f * len, (f + 1) * len) (its candidate edges, padded with +inf to the
// common power-of-two length `len`), its counters counts[f * (len + 1) ...]
// (null bin first), its per-bin sums sums[f * len ...] and its scalar
// accumulators acc[f] (one cache line, not one line in each of six arrays).
struct alignas(64) FeatureMoments {
  double lo = std::numeric_limits<double>::infinity();
  double hi = -std::numeric_limits<double>::infinity();
  double shift = 0.0;  // moments are taken around it (near the mean) for precision
  double s1 = 0.0;
  double s2 = 0.0;
  uint64_t finite = 0;
};

struct NumericPass {
  size_t len = 1;
  std::vector<size_t> edges;  // candidate edges per feature
  std::vector<double> search, sums;
  std::vector<uint64_t> counts;
  std::vector<FeatureMoments> acc;
};

void Prepare(const std::vector<std::vector<double>>& candidates, NumericPass* pass) {
  const size_t features = candidates.size();
  size_t most = 0;
  for (const auto& c : candidates) most = std::max(most, c.size());
  const size_t len = SearchLength(most);
  pass->len = len;
  pass->edges.resize(features);
  pass->search.assign(features * len, std::numeric_limits<double>::infinity());
  pass->counts.assign(features * (len + 1), 0);
  pass->sums.assign(features * len, 0.0);
  pass->acc.assign(features, FeatureMoments{});
  for (size_t f = 0; f < features; ++f) {
    const auto& c = candidates[f];
    pass->edges[f] = c.size();
    std::copy(c.begin(), c.end(), pass->search.begin() + static_cast<std::ptrdiff_t>(f * len));
    pass->acc[f].shift = c.empty() ? 0.0 : c[c.size() / 2];
  }
}

// One pass over the columns [first, last): rows outermost so a row-major batch
// is read in order, and each feature's values are added in row order. kLen > 0:
// the search length, fully unrolled. The pointers are restrict: the tables,
// counters, sums and accumulators are distinct arrays, which lets the compiler
// keep a search table in registers across the stores.
template <typename T, int kLen>
void Accumulate(const DriftBatch& b, int64_t first, int64_t last, NumericPass* pass) {
  const size_t len = kLen > 0 ? static_cast<size_t>(kLen) : pass->len;
  const T* __restrict base = static_cast<const T*>(b.data);
  const double* __restrict search = pass->search.data();
  uint64_t* __restrict counts = pass->counts.data();
  double* __restrict sums = pass->sums.data();
  FeatureMoments* __restrict acc = pass->acc.data();
  // Locals, not reads through `b`: the compiler cannot tell the counter
  // stores from writes to the batch's fields, and would reload them per value.
  const int64_t rows = b.rows;
  const int64_t row_stride = b.row_stride;
  const int64_t feature_stride = b.feature_stride;
  for (int64_t r0 = 0; r0 < rows; r0 += kRowTile) {
    const int64_t r1 = std::min(rows, r0 + kRowTile);
    for (int64_t f0 = first; f0 < last; f0 += kFeatureTile) {
      const int64_t f1 = std::min(last, f0 + kFeatureTile);
      const auto tile = static_cast<size_t>(f0);
      for (int64_t r = r0; r < r1; ++r) {
        // One cursor per array, stepped feature by feature.
        const T* value = base + r * row_stride + f0 * feature_stride;
        const double* s = search + tile * len;
        uint64_t* count = counts + tile * (len + 1);
        double* sum = sums + tile * len;
        FeatureMoments* m = acc + tile;
        for (int64_t fi = f0; fi < f1;
             ++fi, value += feature_stride, s += len, count += len + 1, sum += len, ++m) {
          const double v = static_cast<double>(*value);
          if (!IsFinite(v)) {
            ++count[0];
            continue;
          }
          size_t pos = 0;
          for (size_t step = len >> 1; step > 0; step >>= 1) {
            pos += (s[pos + step - 1] <= v) ? step : 0;
          }
          ++count[pos + 1];
          sum[pos] += v;
          m->lo = std::min(m->lo, v);
          m->hi = std::max(m->hi, v);
          const double d = v - m->shift;
          m->s1 += d;
          m->s2 += d * d;
          ++m->finite;
        }
      }
    }
  }
}

template <typename T>
void AccumulateAny(const DriftBatch& b, NumericPass* pass) {
  // Columns on different threads touch disjoint slices of every array.
  ForColumnRanges(b.rows, b.features, [&](int64_t first, int64_t last) {
    switch (pass->len) {
      case 1: Accumulate<T, 1>(b, first, last, pass); break;
      case 2: Accumulate<T, 2>(b, first, last, pass); break;
      case 4: Accumulate<T, 4>(b, first, last, pass); break;
      case 8: Accumulate<T, 8>(b, first, last, pass); break;
      case 16: Accumulate<T, 16>(b, first, last, pass); break;
      case 32: Accumulate<T, 32>(b, first, last, pass); break;
      default: Accumulate<T, 0>(b, first, last, pass);
    }
  });
}

// Drops the leading candidate edges at or below the minimum; the bins below
// them are empty, so they merge into the next bin unchanged (0 + x == x).
NumericSummary Finish(const NumericPass& pass, size_t f) {
  const size_t len = pass.len;
  const double* search = pass.search.data() + f * len;
  const uint64_t* counts = pass.counts.data() + f * (len + 1);
  const double* sums = pass.sums.data() + f * len;
  const size_t edges = pass.edges[f];
  NumericSummary s;
  size_t drop = 0;
  const FeatureMoments& m = pass.acc[f];
  while (drop < edges && m.finite > 0 && search[drop] <= m.lo) ++drop;
  s.edges.assign(search + drop, search + edges);
  s.counts.assign(s.edges.size() + 2, 0);
  s.sums.assign(s.edges.size() + 1, 0.0);
  s.counts[0] = counts[0];
  for (size_t i = 0; i <= edges; ++i) {
    const size_t to = i <= drop ? 0 : i - drop;
    s.counts[to + 1] += counts[i + 1];
    s.sums[to] += sums[i];
  }
  s.finite = m.finite;
  if (s.finite > 0) {
    const auto n = static_cast<double>(s.finite);
    s.min = m.lo;
    s.max = m.hi;
    s.stddev = std::sqrt(std::max(0.0, (m.s2 - m.s1 * m.s1 / n) / n));
  }
  return s;
}

}  // namespace

Status SummarizeNumeric(const DriftBatch& batch, const std::vector<std::vector<double>>& edges,
                        std::vector<NumericSummary>* out) {
  if (batch.rows < 0 || batch.features < 0) {
    return Status::InvalidArgument("batch has a negative shape");
  }
  if (batch.data == nullptr && batch.rows > 0 && batch.features > 0) {
    return Status::InvalidArgument("batch has no data");
  }
  if (edges.size() != static_cast<size_t>(batch.features)) {
    return Status::InvalidArgument("batch has " + std::to_string(batch.features) +
                                   " feature columns but " + std::to_string(edges.size()) +
                                   " lists of edges were given");
  }
  for (size_t f = 0; f < edges.size(); ++f) {
    const auto& p = edges[f];
    if (p.size() > kMaxPoints) {
      return Status::InvalidArgument("feature " + std::to_string(f) + " has " +
                                     std::to_string(p.size()) + " edges; at most " +
                                     std::to_string(kMaxPoints) + " are supported");
    }
    for (size_t i = 0; i < p.size(); ++i) {
      if (!std::isfinite(p[i]) || (i > 0 && !(p[i - 1] < p[i]))) {
        return Status::InvalidArgument("feature " + std::to_string(f) +
                                       ": edges must be finite and strictly increasing; entry " +
                                       std::to_string(i) + " is " + std::to_string(p[i]));
      }
    }
  }
  NumericPass pass;
  Prepare(edges, &pass);
  if (batch.dtype == DriftDType::kFloat32) {
    AccumulateAny<float>(batch, &pass);
  } else {
    AccumulateAny<double>(batch, &pass);
  }
  std::vector<NumericSummary> result;
  result.reserve(edges.size());
  for (size_t f = 0; f < edges.size(); ++f) result.push_back(Finish(pass, f));
  *out = std::move(result);
  return Status::Ok();
}

namespace {

// Quantile edges (QuantileEdges). Columns are copied a tile at a time: one
// sweep over the chosen rows reads each row's tile (one cache line of a
// row-major float64 batch) once. Tiles are narrower when the rows are so many
// that kEdgeTile columns would take more than kEdgeBufferValues (4 MiB, the
// default 65,536-row edge sample) per thread.
constexpr int64_t kEdgeTile = 8;
constexpr int64_t kEdgeBufferValues = kEdgeTile * 65536;
// Rows fetched ahead of the one being copied.
constexpr int64_t kGatherAhead = 32;
// Ranges up to this size are finished by std::nth_element; larger ones take
// one more radix level (a 64 Ki-entry histogram costs about as much to clear
// and scan as nth_element over this many values).
constexpr size_t kSelectDirect = 4096;
constexpr int kRadixBits = 16;
constexpr size_t kRadixBuckets = size_t{1} << kRadixBits;
constexpr uint8_t kNoSlot = 0xFF;

// Maps a double onto an unsigned key with the same order (for the finite
// values this is used on; -0.0 never occurs: Gather stores it as +0.0).
inline uint64_t OrderedKey(double v) {
  uint64_t u;
  std::memcpy(&u, &v, sizeof u);
  const uint64_t negative = u >> 63;
  return u ^ ((uint64_t{0} - negative) | (uint64_t{1} << 63));
}

// Per-thread scratch of the selection: a histogram and the bucket -> slot
// table (kept all kNoSlot between uses).
struct SelectScratch {
  std::vector<uint32_t> histogram = std::vector<uint32_t>(kRadixBuckets);
  std::vector<uint8_t> slot = std::vector<uint8_t>(kRadixBuckets, kNoSlot);
};

// Writes into values[i] the ranks[i]-th smallest (0-based) of v[0, n), for
// ranks strictly increasing and < n; reorders v. MSD radix selection on the
// ordered keys, kRadixBits a level starting at bit `shift`: one pass builds
// the histogram of the level's digit, a second copies out only the buckets
// holding a wanted rank, and each of those is selected from recursively.
// Small ranges (and equal keys, below bit 0) go to std::nth_element.
void SelectRanks(double* v, size_t n, const size_t* ranks, size_t num_ranks, int shift,
                 double* values, SelectScratch* scratch) {
  if (n <= kSelectDirect || shift < 0) {
    size_t from = 0;
    for (size_t i = 0; i < num_ranks; ++i) {
      std::nth_element(v + from, v + ranks[i], v + n);
      values[i] = v[ranks[i]];
      from = ranks[i] + 1;
    }
    return;
  }
  const auto digit = [shift](double x) {
    return static_cast<size_t>((OrderedKey(x) >> shift) & (kRadixBuckets - 1));
  };
  uint32_t* histogram = scratch->histogram.data();
  std::fill(histogram, histogram + kRadixBuckets, 0u);
  for (size_t i = 0; i < n; ++i) ++histogram[digit(v[i])];
  // The wanted buckets in increasing order, each with its first rank and the
  // number of values below it.
  struct Wanted {
    size_t bucket, size, below, first_rank, num_ranks, at = 0;
  };
  std::vector<Wanted> wanted;
  size_t below = 0, bucket = 0;
  for (size_t i = 0; i < num_ranks; ++i) {
    while (below + histogram[bucket] <= ranks[i]) below += histogram[bucket++];
    if (!wanted.empty() && wanted.back().bucket == bucket) {
      ++wanted.back().num_ranks;
    } else {
      wanted.push_back({bucket, histogram[bucket], below, i, 1});
    }
  }
  const int next = shift - kRadixBits;
  if (wanted.size() == 1 && wanted[0].size == n) {  // one digit for all: go one level down
    SelectRanks(v, n, ranks, num_ranks, next, values, scratch);
    return;
  }
  size_t total = 0;
  for (Wanted& w : wanted) {
    w.at = total;
    total += w.size;
  }
  std::vector<double> kept(total);
  // Copies out at most kNoSlot buckets per pass (one pass for up to 127 quantiles).
  for (size_t from = 0; from < wanted.size(); from += kNoSlot) {
    const size_t to = std::min(wanted.size(), from + kNoSlot);
    double* fill[kNoSlot];
    for (size_t w = from; w < to; ++w) {
      scratch->slot[wanted[w].bucket] = static_cast<uint8_t>(w - from);
      fill[w - from] = kept.data() + wanted[w].at;
    }
    for (size_t i = 0; i < n; ++i) {
      const uint8_t s = scratch->slot[digit(v[i])];
      if (s != kNoSlot) *fill[s]++ = v[i];
    }
    for (size_t w = from; w < to; ++w) scratch->slot[wanted[w].bucket] = kNoSlot;
  }
  std::vector<size_t> inner;
  for (const Wanted& w : wanted) {
    inner.assign(ranks + w.first_rank, ranks + w.first_rank + w.num_ranks);
    for (size_t& r : inner) r -= w.below;
    SelectRanks(kept.data() + w.at, w.size, inner.data(), inner.size(), next, values + w.first_rank,
                scratch);
  }
}

// numpy's "linear" interpolation between the order statistics a <= b at
// fraction gamma (numpy.lib._function_base_impl._lerp): the two-sided form
// keeps the result within [a, b]. Kept as separate roundings (no fused
// multiply-add), as numpy computes it.
#if defined(__GNUC__) && !defined(__clang__)
__attribute__((optimize("fp-contract=off")))
#endif
double Lerp(double a, double b, double gamma) {
#if defined(__clang__)
#pragma clang fp contract(off)
#endif
  const double diff = b - a;
  if (gamma >= 0.5) return b - diff * (1.0 - gamma);
  return a + diff * gamma;
}

// The edges of one column from its n finite values (reordered).
std::vector<double> EdgesOf(double* v, size_t n, const std::vector<double>& quantiles,
                            SelectScratch* scratch) {
  if (n == 0 || quantiles.empty()) return {};
  // numpy's virtual index (n - 1) * q and the two order statistics around it
  // (both the last one from there on).
  const size_t last = n - 1;
  struct Point {
    size_t prev, next;
    double gamma;
  };
  std::vector<Point> points;
  std::vector<size_t> ranks;
  for (double q : quantiles) {
    const double virtual_index = static_cast<double>(last) * q;
    const double prev = std::floor(virtual_index);
    Point p{0, 0, virtual_index - prev};
    if (virtual_index >= static_cast<double>(last)) {
      p.prev = p.next = last;
    } else {
      p.prev = static_cast<size_t>(std::max(0.0, prev));
      p.next = std::min(p.prev + 1, last);
    }
    points.push_back(p);
    ranks.push_back(p.prev);
    ranks.push_back(p.next);
  }
  std::sort(ranks.begin(), ranks.end());
  ranks.erase(std::unique(ranks.begin(), ranks.end()), ranks.end());
  std::vector<double> at(ranks.size());
  SelectRanks(v, n, ranks.data(), ranks.size(), 64 - kRadixBits, at.data(), scratch);
  const auto value_at = [&](size_t rank) {
    return at[static_cast<size_t>(std::lower_bound(ranks.begin(), ranks.end(), rank) -
                                  ranks.begin())];
  };
  std::vector<double> edges;
  edges.reserve(points.size());
  for (const Point& p : points) edges.push_back(Lerp(value_at(p.prev), value_at(p.next), p.gamma));
  std::sort(edges.begin(), edges.end());
  edges.erase(std::unique(edges.begin(), edges.end()), edges.end());
  for (double& e : edges) e += 0.0;  // -0.0 -> +0.0
  return edges;
}

// Copies the finite values of columns [f0, f1) at the chosen rows into
// columns[k * stride ...], counts into finite[k]; -0.0 is stored as +0.0.
template <typename T>
void Gather(const DriftBatch& b, const int64_t* rows, int64_t num_rows, int64_t f0, int64_t f1,
            double* columns, size_t stride, size_t* finite) {
  const T* base = static_cast<const T*>(b.data);
  const int64_t width = f1 - f0;
  for (int64_t k = 0; k < width; ++k) finite[k] = 0;
  const auto row_at = [&](int64_t i) {
    return base + (rows != nullptr ? rows[i] : i) * b.row_stride + f0 * b.feature_stride;
  };
  for (int64_t i = 0; i < num_rows; ++i) {
    // The rows are far apart (a row-major batch's rows hold every feature): a
    // tile is one or two cache lines that the hardware would not fetch ahead.
    if (i + kGatherAhead < num_rows) {
      const T* ahead = row_at(i + kGatherAhead);
      __builtin_prefetch(ahead);
      __builtin_prefetch(ahead + (width - 1) * b.feature_stride);
    }
    const T* row = row_at(i) - f0 * b.feature_stride;
    for (int64_t k = 0; k < width; ++k) {
      const double v = static_cast<double>(row[(f0 + k) * b.feature_stride]);
      columns[static_cast<size_t>(k) * stride + finite[k]] = v + 0.0;
      finite[k] += IsFinite(v) ? 1 : 0;
    }
  }
}

}  // namespace

Status QuantileEdges(const DriftBatch& batch, const int64_t* rows, int64_t num_rows,
                     const std::vector<double>& quantiles, std::vector<std::vector<double>>* out) {
  if (batch.rows < 0 || batch.features < 0 || num_rows < 0) {
    return Status::InvalidArgument("batch has a negative shape");
  }
  if (batch.data == nullptr && batch.rows > 0 && batch.features > 0) {
    return Status::InvalidArgument("batch has no data");
  }
  for (size_t i = 0; i < quantiles.size(); ++i) {
    if (!(quantiles[i] >= 0.0 && quantiles[i] <= 1.0)) {
      return Status::InvalidArgument("quantiles must be in [0, 1]; entry " + std::to_string(i) +
                                     " is " + std::to_string(quantiles[i]));
    }
  }
  if (rows == nullptr) {
    num_rows = batch.rows;
  } else {
    for (int64_t i = 0; i < num_rows; ++i) {
      if (rows[i] < 0 || rows[i] >= batch.rows) {
        return Status::InvalidArgument("row " + std::to_string(rows[i]) + " (entry " +
                                       std::to_string(i) + ") is outside the batch's " +
                                       std::to_string(batch.rows) + " rows");
      }
    }
  }
  std::vector<std::vector<double>> result(static_cast<size_t>(batch.features));
  ForColumnRanges(num_rows, batch.features, [&](int64_t first, int64_t last) {
    if (first == last) return;  // no columns at all
    const auto stride = static_cast<size_t>(num_rows);
    const int64_t tile = std::clamp<int64_t>(kEdgeBufferValues / std::max<int64_t>(num_rows, 1), 1,
                                             std::min(kEdgeTile, last - first));
    std::vector<double> columns(stride * static_cast<size_t>(tile));
    size_t finite[kEdgeTile];
    SelectScratch scratch;
    for (int64_t f0 = first; f0 < last; f0 += tile) {
      const int64_t f1 = std::min(last, f0 + tile);
      if (batch.dtype == DriftDType::kFloat32) {
        Gather<float>(batch, rows, num_rows, f0, f1, columns.data(), stride, finite);
      } else {
        Gather<double>(batch, rows, num_rows, f0, f1, columns.data(), stride, finite);
      }
      for (int64_t f = f0; f < f1; ++f) {
        const auto k = static_cast<size_t>(f - f0);
        result[static_cast<size_t>(f)] =
            EdgesOf(columns.data() + k * stride, finite[k], quantiles, &scratch);
      }
    }
  });
  *out = std::move(result);
  return Status::Ok();
}

}  // namespace aiarch
