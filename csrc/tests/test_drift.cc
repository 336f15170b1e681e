// Drift sketch tests: bin layout pinned to literals, nulls, strided and
// float32 batches, invalid profiles, and concurrent counting plus window
// rotation against a single-threaded oracle.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "aiarch/drift.h"
#include "check.h"

namespace aiarch {
namespace {

constexpr uint64_t kSeed = 0x5EED0007;
constexpr double kNan = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();

std::unique_ptr<DriftSketch> MakeSketch() {
  std::vector<FeatureBins> f(2);
  f[0].kind = FeatureKind::kNumeric;
  f[0].points = {0.0, 1.0, 2.0};  // bins: null, <0, [0,1), [1,2), >=2
  f[1].kind = FeatureKind::kCategorical;
  f[1].points = {3.0, 7.0};  // bins: null, 3, 7, unknown
  std::unique_ptr<DriftSketch> s;
  CHECK(DriftSketch::Create(std::move(f), &s).ok());
  return s;
}

void TestBinsGolden() {
  auto s = MakeSketch();
  CHECK_EQ(s->num_bins(), size_t{9});
  CHECK_EQ(s->offset(1), size_t{5});
  CHECK_EQ(s->BinOf(0, -5.0), 1u);
  CHECK_EQ(s->BinOf(0, 0.0), 2u);
  CHECK_EQ(s->BinOf(0, 0.5), 2u);
  CHECK_EQ(s->BinOf(0, 1.0), 3u);
  CHECK_EQ(s->BinOf(0, 1.999), 3u);
  CHECK_EQ(s->BinOf(0, 2.0), 4u);
  CHECK_EQ(s->BinOf(0, 1e300), 4u);
  CHECK_EQ(s->BinOf(0, kNan), 0u);
  CHECK_EQ(s->BinOf(0, kInf), 0u);
  CHECK_EQ(s->BinOf(0, -kInf), 0u);
  CHECK_EQ(s->BinOf(1, 3.0), 1u);
  CHECK_EQ(s->BinOf(1, 7.0), 2u);
  CHECK_EQ(s->BinOf(1, 5.0), 3u);
  CHECK_EQ(s->BinOf(1, 100.0), 3u);
  CHECK_EQ(s->BinOf(1, -1.0), 3u);
  CHECK_EQ(s->BinOf(1, kNan), 0u);
}

void TestCountRowMajorAndStrided() {
  auto s = MakeSketch();
  // 4 rows x 2 features, row-major.
  const double rows[] = {-1, 3, 0.5, 7, 2.5, 4, kNan, kInf};
  DriftBatch b{rows, DriftDType::kFloat64, 4, 2, 2, 1};
  CHECK(s->Count(b).ok());
  const std::vector<uint64_t> want = {1, 1, 1, 0, 1, 1, 1, 1, 1};
  CHECK(s->PeekWindow() == want);
  // The same batch column-major (feature stride = rows) as float32.
  const float cols[] = {-1, 0.5f, 2.5f, NAN, 3, 7, 4, INFINITY};
  DriftBatch c{cols, DriftDType::kFloat32, 4, 2, 1, 4};
  CHECK(s->Count(c).ok());
  std::vector<uint64_t> twice(want);
  for (auto& x : twice) x *= 2;
  CHECK(s->PeekWindow() == twice);
  CHECK_EQ(s->values_counted(), uint64_t{16});
  // Rotation: the window moves into the totals.
  CHECK(s->TakeWindow() == twice);
  CHECK(s->PeekWindow() == std::vector<uint64_t>(9, 0));
  CHECK(s->Totals() == twice);
}

void TestInvalid() {
  std::unique_ptr<DriftSketch> s;
  std::vector<FeatureBins> f(1);
  f[0].points = {1.0, 1.0};
  Status st = DriftSketch::Create(f, &s);
  CHECK(!st.ok());
  CHECK(st.message().find("strictly increasing") != std::string::npos);
  f[0].points = {0.0, kNan};
  CHECK(!DriftSketch::Create(f, &s).ok());
  CHECK(s == nullptr);
  auto ok = MakeSketch();
  const double v[3] = {1, 2, 3};
  Status wrong = ok->Count(DriftBatch{v, DriftDType::kFloat64, 1, 3, 3, 1});
  CHECK(!wrong.ok());
  CHECK(wrong.message().find("3 feature columns; the profile has 2") != std::string::npos);
}

void TestNoPointsFeature() {
  std::vector<FeatureBins> f(1);
  std::unique_ptr<DriftSketch> s;
  CHECK(DriftSketch::Create(f, &s).ok());
  CHECK_EQ(s->BinOf(0, 42.0), 1u);
  CHECK_EQ(s->BinOf(0, kNan), 0u);
}

// All-numeric profiles with one search length take the unrolled path; it must
// bin exactly like BinOf (the generic search) for every length it covers.
void TestUniformFastPathMatchesBinOf() {
  std::mt19937_64 rng(kSeed);
  std::normal_distribution<double> normal(0.0, 2.0);
  for (size_t edges : {size_t{2}, size_t{5}, size_t{9}, size_t{20}, size_t{40}}) {
    test::SetContext("edges=" + std::to_string(edges));
    std::vector<FeatureBins> f(3);
    for (size_t j = 0; j < f.size(); ++j) {
      for (size_t i = 0; i < edges; ++i) f[j].points.push_back(-3.0 + 6.0 * i / edges + 0.1 * j);
    }
    std::unique_ptr<DriftSketch> s;
    CHECK(DriftSketch::Create(f, &s).ok());
    constexpr int kRows = 500;
    std::vector<double> x(kRows * 3);
    std::vector<uint64_t> want(s->num_bins(), 0);
    for (int r = 0; r < kRows; ++r) {
      for (size_t j = 0; j < 3; ++j) {
        double v = normal(rng);
        if (r % 17 == 0) v = kNan;
        if (r % 23 == 0) v = f[j].points[static_cast<size_t>(r) % edges];  // exactly on an edge
        x[r * 3 + j] = v;
        ++want[s->offset(j) + s->BinOf(j, v)];
      }
    }
    CHECK(s->Count(DriftBatch{x.data(), DriftDType::kFloat64, kRows, 3, 3, 1}).ok());
    CHECK(s->PeekWindow() == want);
  }
  test::SetContext("");
}

// Many threads count seeded batches while another rotates windows; the sum of
// the windows plus the last partial window equals a sequential count.
void TestConcurrentCountMatchesSequential() {
  test::SetContext("seed=" + std::to_string(kSeed));
  // More threads than counter shards, so some wait for a busy shard.
  constexpr int kThreads = 12, kBatches = 100, kRows = 64, kFeatures = 2;
  std::vector<std::vector<double>> batches(kThreads * kBatches);
  std::mt19937_64 rng(kSeed);
  std::normal_distribution<double> normal(1.0, 1.5);
  std::uniform_int_distribution<int> cat(0, 9);
  for (auto& b : batches) {
    b.resize(kRows * kFeatures);
    for (int r = 0; r < kRows; ++r) {
      b[r * 2] = (rng() % 50 == 0) ? kNan : normal(rng);
      b[r * 2 + 1] = cat(rng);
    }
  }
  auto oracle = MakeSketch();
  for (const auto& b : batches) {
    CHECK(oracle->Count(DriftBatch{b.data(), DriftDType::kFloat64, kRows, kFeatures, 2, 1}).ok());
  }
  const auto want = oracle->PeekWindow();

  auto real = MakeSketch();
  std::vector<uint64_t> sum(real->num_bins(), 0);
  std::atomic<int> running{kThreads};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kBatches; ++i) {
        const auto& b = batches[t * kBatches + i];
        CHECK(real->Count(DriftBatch{b.data(), DriftDType::kFloat64, kRows, kFeatures, 2, 1}).ok());
      }
      // Release: pairs with the acquire load in the rotating loop below.
      running.fetch_sub(1, std::memory_order_release);
    });
  }
  while (running.load(std::memory_order_acquire) > 0) {
    const auto w = real->TakeWindow();
    for (size_t i = 0; i < sum.size(); ++i) sum[i] += w[i];
  }
  for (auto& th : threads) th.join();
  const auto last = real->TakeWindow();
  for (size_t i = 0; i < sum.size(); ++i) sum[i] += last[i];
  CHECK(sum == want);
  CHECK(real->Totals() == want);
  test::SetContext("");
}

// Quantiles at which (n - 1) * q is a whole number pick one order statistic
// each: the edges must equal a full sort's entries at those ranks. Columns
// cover the selection's paths (spread values, ties, a narrow range far from
// zero that needs several radix levels), with nulls; a batch large enough to
// be split over threads, and a subset of rows, give the per-column answer.
void TestQuantileEdgesAreOrderStatistics() {
  test::SetContext("quantile_edges");
  // Every 41st row is null: 40,001 finite values a column, (n - 1) divisible
  // by 4, 5, 8 and 10.
  constexpr int64_t kRows = 41001;
  constexpr int64_t kCols = 128;  // 5.2 M values: split over threads where there are cores
  std::mt19937_64 rng(kSeed);
  std::normal_distribution<double> normal;
  std::vector<double> x(static_cast<size_t>(kRows * kCols));
  for (int64_t r = 0; r < kRows; ++r) {
    for (int64_t f = 0; f < kCols; ++f) {
      double v = normal(rng) * static_cast<double>(f + 1);
      if (f % 4 == 1) v = std::floor(v / 8.0);                                 // ties
      if (f % 4 == 2) v = 1.7e9 + static_cast<double>(rng() % 100000) * 1e-5;  // narrow
      if (r % 41 == 40) v = (rng() % 2) ? kNan : -kInf;
      x[static_cast<size_t>(r * kCols + f)] = v;
    }
  }
  const DriftBatch whole{x.data(), DriftDType::kFloat64, kRows, kCols, kCols, 1};
  const std::vector<double> q = {0.1, 0.2, 0.25, 0.5, 0.75, 0.8, 0.9};
  std::vector<std::vector<double>> edges;
  CHECK(QuantileEdges(whole, nullptr, 0, q, &edges).ok());
  CHECK_EQ(edges.size(), static_cast<size_t>(kCols));
  for (int64_t f = 0; f < kCols; ++f) {
    std::vector<double> finite;
    for (int64_t r = 0; r < kRows; ++r) {
      const double v = x[static_cast<size_t>(r * kCols + f)];
      if (std::isfinite(v)) finite.push_back(v);
    }
    std::sort(finite.begin(), finite.end());
    // Every q lands on one order statistic only where (n - 1) * q is whole.
    std::vector<double> want;
    for (double qi : q) {
      const double at = static_cast<double>(finite.size() - 1) * qi;
      if (at == std::floor(at)) want.push_back(finite[static_cast<size_t>(at)]);
    }
    CHECK_EQ(finite.size(), size_t{40001});
    CHECK_EQ(want.size(), q.size());
    for (double w : want) {
      CHECK(std::find(edges[f].begin(), edges[f].end(), w) != edges[f].end());
    }
    CHECK(std::is_sorted(edges[f].begin(), edges[f].end()));
    CHECK(std::adjacent_find(edges[f].begin(), edges[f].end()) == edges[f].end());
    // The same column alone (one thread, a column-strided view) gives the same edges.
    std::vector<std::vector<double>> alone;
    const DriftBatch column{x.data() + f, DriftDType::kFloat64, kRows, 1, kCols, 1};
    CHECK(QuantileEdges(column, nullptr, 0, q, &alone).ok());
    CHECK(alone[0] == edges[f]);
  }
  // Listed rows: the edges of exactly those rows.
  std::vector<int64_t> rows;
  for (int64_t r = 0; r < kRows; r += 3) rows.push_back(r);
  std::vector<double> picked;
  for (int64_t r : rows) {
    picked.insert(picked.end(), x.begin() + r * kCols, x.begin() + (r + 1) * kCols);
  }
  std::vector<std::vector<double>> from_rows, from_copy;
  CHECK(QuantileEdges(whole, rows.data(), static_cast<int64_t>(rows.size()), q, &from_rows).ok());
  const auto n = static_cast<int64_t>(rows.size());
  CHECK(QuantileEdges(DriftBatch{picked.data(), DriftDType::kFloat64, n, kCols, kCols, 1}, nullptr,
                      0, q, &from_copy)
            .ok());
  CHECK(from_rows == from_copy);
  // Refusals leave the output untouched.
  const int64_t outside[] = {0, kRows};
  CHECK(!QuantileEdges(whole, outside, 2, q, &edges).ok());
  CHECK(!QuantileEdges(whole, nullptr, 0, {1.5}, &edges).ok());
  CHECK(!QuantileEdges(whole, nullptr, 0, {kNan}, &edges).ok());
  CHECK(edges.size() == static_cast<size_t>(kCols));
  test::SetContext("");
}

}  // namespace
}  // namespace aiarch

int main() {
  aiarch::TestBinsGolden();
  aiarch::TestCountRowMajorAndStrided();
  aiarch::TestInvalid();
  aiarch::TestNoPointsFeature();
  aiarch::TestUniformFastPathMatchesBinOf();
  aiarch::TestConcurrentCountMatchesSequential();
  aiarch::TestQuantileEdgesAreOrderStatistics();
  return aiarch::test::Finish("test_drift");
}
