// Histogram tests: layout and percentile golden values pinned to literals,
// accuracy against exact order statistics, merge, and concurrent recording
// against a single-threaded oracle.

#include <algorithm>
#include <cinttypes>
#include <cmath>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "aiarch/histogram.h"
#include "check.h"

namespace aiarch {
namespace {

constexpr uint64_t kSeed = 0x5EED0001;

void TestLayoutGolden() {
  Histogram h;  // highest 2^36, 3 digits: sub-buckets of 2048, half 1024
  CHECK_EQ(h.counts_length(), size_t{28672});
  CHECK_EQ(h.IndexOf(0), size_t{0});
  CHECK_EQ(h.IndexOf(1), size_t{1});
  CHECK_EQ(h.IndexOf(2047), size_t{2047});
  CHECK_EQ(h.IndexOf(2048), size_t{2048});
  CHECK_EQ(h.IndexOf(2049), size_t{2048});
  CHECK_EQ(h.IndexOf(2050), size_t{2049});
  CHECK_EQ(h.IndexOf(4095), size_t{3071});
  CHECK_EQ(h.IndexOf(4096), size_t{3072});
  CHECK_EQ(h.IndexOf(10000), size_t{4322});
  CHECK_EQ(h.IndexOf(1000000), size_t{11169});
  CHECK_EQ(h.IndexOf(int64_t{1} << 36), size_t{27648});
  CHECK_EQ(h.IndexOf(-5), size_t{0});                    // negatives count as 0
  CHECK_EQ(h.IndexOf(int64_t{1} << 40), size_t{27648});  // clamped to highest
  CHECK_EQ(h.LowestEquivalent(2048), int64_t{2048});
  CHECK_EQ(h.HighestEquivalent(2048), int64_t{2049});
  CHECK_EQ(h.LowestEquivalent(3071), int64_t{4094});
  CHECK_EQ(h.LowestEquivalent(3072), int64_t{4096});
  CHECK_EQ(h.HighestEquivalent(3072), int64_t{4099});
  CHECK_EQ(h.LowestEquivalent(11169), int64_t{999936});
  CHECK_EQ(h.HighestEquivalent(11169), int64_t{999936 + 511});
  CHECK_EQ(h.HighestEquivalent(h.counts_length() - 1), (int64_t{1} << 37) - 1);

  // Every counter round-trips through both of its edges, and the counters
  // tile the values without gaps.
  size_t bad = 0;
  for (size_t i = 0; i < h.counts_length(); ++i) {
    const int64_t lo = h.LowestEquivalent(i);
    const int64_t hi = h.HighestEquivalent(i);
    if (lo > (int64_t{1} << 36)) break;  // past highest: IndexOf clamps
    if (h.IndexOf(lo) != i || h.IndexOf(std::min(hi, int64_t{1} << 36)) != i) ++bad;
    if (i > 0 && h.HighestEquivalent(i - 1) + 1 != lo) ++bad;
  }
  CHECK_EQ(bad, size_t{0});

  Histogram small(1000, 2);  // 2 digits: sub-buckets of 256, highest below them
  CHECK_EQ(small.counts_length(), size_t{512});
  CHECK_EQ(small.IndexOf(1000), size_t{506});  // bucket 2: 2 * 128 + 1000 / 4

  HistogramSnapshot s = h.Snapshot();
  CHECK_EQ(s.MidpointOf(2048), int64_t{2049});
  CHECK_EQ(s.MidpointOf(3072), int64_t{4098});
  CHECK_EQ(s.MidpointOf(4322), int64_t{10004});
  CHECK_EQ(s.MidpointOf(11169), int64_t{1000192});
  CHECK_EQ(s.MidpointOf(17), int64_t{17});  // width 1: the value itself
  CHECK_EQ(s.HighestEquivalentOf(4322), int64_t{10007});
}

void TestPercentilesGolden() {
  Histogram h;
  HistogramSnapshot empty = h.Snapshot();
  CHECK_EQ(empty.total_count(), uint64_t{0});
  CHECK_EQ(empty.ValueAtPercentile(50), int64_t{0});
  CHECK_EQ(empty.Min(), int64_t{0});
  CHECK_EQ(empty.Max(), int64_t{0});
  CHECK_EQ(empty.Mean(), 0.0);

  for (int64_t v = 1; v <= 100; ++v) h.Record(v);
  HistogramSnapshot s = h.Snapshot();
  CHECK_EQ(s.total_count(), uint64_t{100});
  CHECK_EQ(s.ValueAtPercentile(0), int64_t{1});
  CHECK_EQ(s.ValueAtPercentile(1), int64_t{1});
  CHECK_EQ(s.ValueAtPercentile(50), int64_t{50});
  CHECK_EQ(s.ValueAtPercentile(50.5), int64_t{51});
  CHECK_EQ(s.ValueAtPercentile(99), int64_t{99});
  CHECK_EQ(s.ValueAtPercentile(99.9), int64_t{100});
  CHECK_EQ(s.ValueAtPercentile(100), int64_t{100});
  CHECK_EQ(s.ValueAtPercentile(250), int64_t{100});
  CHECK_EQ(s.Min(), int64_t{1});
  CHECK_EQ(s.Max(), int64_t{100});
  CHECK_NEAR(s.Mean(), 50.5, 1e-12);

  // Wide buckets report their midpoints.
  Histogram w;
  w.Record(10000);        // [10000, 10007] -> 10004
  w.RecordN(1000000, 3);  // [999936, 1000447] -> 1000192
  HistogramSnapshot ws = w.Snapshot();
  CHECK_EQ(ws.ValueAtPercentile(25), int64_t{10004});
  CHECK_EQ(ws.ValueAtPercentile(25.1), int64_t{1000192});
  CHECK_EQ(ws.ValueAtPercentile(100), int64_t{1000192});
  CHECK_EQ(ws.Min(), int64_t{10004});
  CHECK_EQ(ws.Max(), int64_t{1000192});
  CHECK_NEAR(ws.Mean(), (10004.0 + 3 * 1000192.0) / 4, 1e-6);

  // Clamping and negatives.
  Histogram c(100000);
  c.Record(-3);
  c.Record(5000000);
  HistogramSnapshot cs = c.Snapshot();
  CHECK_EQ(cs.clamped(), uint64_t{1});
  CHECK_EQ(cs.total_count(), uint64_t{2});
  CHECK_EQ(cs.Min(), int64_t{0});
  CHECK_EQ(cs.Max(), int64_t{100000});  // clamped to 100000, in [99968, 100031]

  c.Reset();
  CHECK_EQ(c.Snapshot().total_count(), uint64_t{0});
  CHECK_EQ(c.Snapshot().clamped(), uint64_t{0});
}

void TestRecordCorrected() {
  Histogram h;
  h.RecordCorrected(100, 25);  // 100 plus the stalled 75, 50, 25
  h.RecordCorrected(10, 25);   // faster than the interval: itself only
  h.RecordCorrected(60, 0);    // no interval: itself only
  h.RecordCorrected(49, 25);   // 49 - 25 = 24 is under one interval: itself only
  HistogramSnapshot s = h.Snapshot();
  CHECK_EQ(s.total_count(), uint64_t{7});
  const std::vector<uint64_t>& counts = s.counts();
  CHECK_EQ(counts[100], uint64_t{1});
  CHECK_EQ(counts[75], uint64_t{1});
  CHECK_EQ(counts[50], uint64_t{1});
  CHECK_EQ(counts[25], uint64_t{1});
  CHECK_EQ(counts[10], uint64_t{1});
  CHECK_EQ(counts[60], uint64_t{1});
  CHECK_EQ(counts[49], uint64_t{1});
  CHECK_EQ(counts[24], uint64_t{0});

  Histogram g;
  g.RecordCorrected(1000, 100);  // 1000, 900, ..., 100: ten values
  CHECK_EQ(g.Snapshot().total_count(), uint64_t{10});
  CHECK_EQ(g.Snapshot().ValueAtPercentile(50), int64_t{500});
}

std::vector<int64_t> LognormalValues(uint64_t seed, size_t n) {
  std::mt19937_64 rng(seed);
  // Median 1 ms in ns, heavy right tail; essentially all values >= 2048.
  std::lognormal_distribution<double> dist(std::log(1e6), 1.0);
  std::vector<int64_t> values(n);
  for (int64_t& v : values) v = std::max<int64_t>(1, static_cast<int64_t>(dist(rng)));
  return values;
}

void TestAccuracyAgainstExact() {
  const uint64_t seed = kSeed + 1;
  test::SetContext("seed=" + std::to_string(seed));
  std::vector<int64_t> values = LognormalValues(seed, 1000000);
  Histogram h;
  for (int64_t v : values) h.Record(v);
  const HistogramSnapshot s = h.Snapshot();
  CHECK_EQ(s.total_count(), uint64_t{values.size()});
  CHECK_EQ(s.clamped(), uint64_t{0});
  const double n = static_cast<double>(values.size());
  for (double p : {0.0, 1.0, 10.0, 25.0, 50.0, 75.0, 90.0, 99.0, 99.9, 99.99, 100.0}) {
    uint64_t rank = static_cast<uint64_t>(std::ceil(p * n / 100.0));
    rank = std::max<uint64_t>(rank, 1);
    std::nth_element(values.begin(), values.begin() + (rank - 1), values.end());
    const int64_t exact = values[rank - 1];
    const int64_t got = s.ValueAtPercentile(p);
    // Relative error <= 1/2048 for values >= 2048 (half a bucket of width <= v/1024).
    if (exact >= 2048) {
      CHECK_NEAR(static_cast<double>(got), static_cast<double>(exact), exact / 2048.0);
    } else {
      CHECK_NEAR(static_cast<double>(got), static_cast<double>(exact), 1.0);
    }
  }
  double sum = 0;
  for (int64_t v : values) sum += static_cast<double>(v);
  CHECK_NEAR(s.Mean(), sum / n, sum / n / 2048.0);
  test::SetContext("");
}

void TestMerge() {
  const uint64_t seed = kSeed + 2;
  test::SetContext("seed=" + std::to_string(seed));
  const std::vector<int64_t> a = LognormalValues(seed, 200000);
  const std::vector<int64_t> b = LognormalValues(seed + 1, 150000);
  Histogram ha, hb, both;
  for (int64_t v : a) ha.Record(v), both.Record(v);
  for (int64_t v : b) hb.Record(v), both.Record(v);
  hb.Record(int64_t{1} << 50);  // one clamped value travels through the merge
  both.Record(int64_t{1} << 50);
  HistogramSnapshot merged = ha.Snapshot();
  CHECK(merged.Merge(hb.Snapshot()));
  const HistogramSnapshot expected = both.Snapshot();
  CHECK(merged.counts() == expected.counts());
  CHECK_EQ(merged.total_count(), expected.total_count());
  CHECK_EQ(merged.clamped(), uint64_t{1});
  CHECK_EQ(merged.ValueAtPercentile(99.9), expected.ValueAtPercentile(99.9));

  // Layouts that differ do not merge and leave the target unchanged.
  Histogram other_digits(int64_t{1} << 36, 2);
  Histogram other_highest(int64_t{1} << 30, 3);
  other_digits.Record(5);
  other_highest.Record(5);
  CHECK(!merged.Merge(other_digits.Snapshot()));
  CHECK(!merged.Merge(other_highest.Snapshot()));
  CHECK(merged.counts() == expected.counts());
  CHECK_EQ(merged.total_count(), expected.total_count());
  test::SetContext("");
}

void TestConcurrentRecordMatchesSequential() {
  const uint64_t seed = kSeed + 3;
  test::SetContext("seed=" + std::to_string(seed));
  std::mt19937_64 rng(seed);
  std::lognormal_distribution<double> dist(std::log(5e4), 2.0);
  std::vector<int64_t> log(400000);
  for (int64_t& v : log)
    v = static_cast<int64_t>(dist(rng)) - 50;  // a few negatives, a few clamped
  const int64_t highest = int64_t{1} << 24;

  Histogram sequential(highest);
  for (int64_t v : log) sequential.Record(v);

  Histogram concurrent(highest);
  constexpr int kThreads = 4;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      // Interleaved slices so that the threads hit the same counters.
      for (size_t i = t; i < log.size(); i += kThreads) {
        if (i % 7 == 0) {
          concurrent.RecordN(log[i], 1);
        } else {
          concurrent.Record(log[i]);
        }
      }
    });
  }
  // A snapshot taken while recording is in flight must never hold more than
  // was recorded in total.
  const HistogramSnapshot during = concurrent.Snapshot();
  CHECK(during.total_count() <= log.size());
  for (std::thread& th : threads) th.join();

  const HistogramSnapshot want = sequential.Snapshot();
  const HistogramSnapshot got = concurrent.Snapshot();
  CHECK(got.counts() == want.counts());
  CHECK_EQ(got.total_count(), want.total_count());
  CHECK_EQ(got.clamped(), want.clamped());
  CHECK(want.clamped() > 0);
  test::SetContext("");
}

}  // namespace
}  // namespace aiarch

int main() {
  aiarch::TestLayoutGolden();
  aiarch::TestPercentilesGolden();
  aiarch::TestRecordCorrected();
  aiarch::TestAccuracyAgainstExact();
  aiarch::TestMerge();
  aiarch::TestConcurrentRecordMatchesSequential();
  return aiarch::test::Finish("test_histogram");
}
