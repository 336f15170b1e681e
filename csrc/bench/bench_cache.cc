// Response-cache micro-benchmark.
//
//   bench_cache [--smoke] [--json PATH]
//
// Measures, in one process on one machine:
//   1. the hit path, single-threaded: LookupWith on a 64-byte key and 64-byte
//      value (hash precomputed), plus the same with the key hashed per call
//      and through the std::function Lookup;
//   2. read scaling: total hit throughput with 1 and 2 reader threads;
//   3. hit ratio against an exact LRU (std::list + unordered_map) of the same
//      byte capacity holding the same entries, on a Zipf(0.99) trace and on
//      the same trace interleaved with one-time scans. Both caches fill on
//      a miss (demand fill).
// Timings are medians of repeated runs. --smoke shrinks everything to about
// a second so the program can run in CI without rotting.

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <list>
#include <random>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "aiarch/cache.h"
#include "aiarch/hash.h"
#include "bench_util.h"

namespace aiarch {
namespace {

using bench::Clock;
using bench::KeepAlive;
using bench::Median;
using bench::Options;
using bench::Row;
using bench::SecondsSince;

// ---------------------------------------------------------------- hit path

struct KeySet {
  std::vector<std::string> keys;
  std::vector<Hash128> hashes;
  std::vector<uint8_t> value;
};

KeySet MakeKeys(size_t n, size_t key_size, size_t value_size, uint64_t seed) {
  KeySet ks;
  std::mt19937_64 rng(seed);
  ks.keys.resize(n);
  ks.hashes.resize(n);
  for (size_t i = 0; i < n; ++i) {
    std::string k(key_size, '\0');
    for (char& c : k) c = static_cast<char>('a' + rng() % 26);
    std::memcpy(&k[0], &i, sizeof i);  // unique
    Hasher h;
    h.Update(k.data(), k.size());
    ks.hashes[i] = h.Digest();
    ks.keys[i] = std::move(k);
  }
  ks.value.assign(value_size, 0x5a);
  return ks;
}

void Fill(ResponseCache& cache, const KeySet& ks) {
  for (size_t i = 0; i < ks.keys.size(); ++i) {
    cache.Insert(ks.hashes[i], reinterpret_cast<const uint8_t*>(ks.keys[i].data()),
                 ks.keys[i].size(), ks.value.data(), ks.value.size(), 0);
  }
}

std::vector<uint32_t> ShuffledOrder(size_t n, size_t len, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<uint32_t> order(len);
  for (uint32_t& o : order) o = static_cast<uint32_t>(rng() % n);
  return order;
}

enum class HitMode { kPrehashed, kHashed, kStdFunction };

// ns per hit over `ops` lookups following `order`.
double HitNs(ResponseCache& cache, const KeySet& ks, const std::vector<uint32_t>& order, size_t ops,
             HitMode mode) {
  uint64_t sum = 0;
  size_t misses = 0;
  const ResponseCache::Visitor fn = [&sum](const uint8_t* v, size_t n) { sum += v[n - 1]; };
  const auto t0 = Clock::now();
  for (size_t i = 0; i < ops; ++i) {
    const uint32_t k = order[i & (order.size() - 1)];  // size is a power of two
    const std::string& key = ks.keys[k];
    const uint8_t* kb = reinterpret_cast<const uint8_t*>(key.data());
    bool hit;
    if (mode == HitMode::kStdFunction) {
      hit = cache.Lookup(ks.hashes[k], kb, key.size(), 0, fn);
    } else {
      Hash128 h = ks.hashes[k];
      if (mode == HitMode::kHashed) {
        Hasher hasher;
        hasher.Update(kb, key.size());
        h = hasher.Digest();
      }
      hit = cache.LookupWith(h, kb, key.size(), 0,
                             [&sum](const uint8_t* v, size_t n) { sum += v[n - 1]; });
    }
    misses += !hit;
  }
  const double s = SecondsSince(t0);
  KeepAlive(sum);
  if (misses != 0) std::fprintf(stderr, "warning: %zu misses in the hit benchmark\n", misses);
  return s * 1e9 / static_cast<double>(ops);
}

// Total hits per second with `threads` readers running for `seconds`.
double ReadThroughput(ResponseCache& cache, const KeySet& ks, int threads, double seconds) {
  std::atomic<bool> go{false}, stop{false};
  std::vector<uint64_t> counts(static_cast<size_t>(threads) * 16, 0);  // one line per thread
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      const std::vector<uint32_t> order = ShuffledOrder(ks.keys.size(), 1 << 16, 100 + t);
      uint64_t sum = 0, done = 0;
      // Acquire/relaxed flags only start and stop the loop; they guard no data.
      while (!go.load(std::memory_order_acquire)) {
      }
      while (!stop.load(std::memory_order_relaxed)) {
        for (int j = 0; j < 256; ++j, ++done) {
          const uint32_t k = order[done & 0xffff];
          const std::string& key = ks.keys[k];
          cache.LookupWith(ks.hashes[k], reinterpret_cast<const uint8_t*>(key.data()), key.size(),
                           0, [&sum](const uint8_t* v, size_t n) { sum += v[n - 1]; });
        }
      }
      KeepAlive(sum);
      counts[static_cast<size_t>(t) * 16] = done;
    });
  }
  const auto t0 = Clock::now();
  go.store(true, std::memory_order_release);  // pairs with the readers' acquire spin
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
  stop.store(true, std::memory_order_relaxed);
  for (std::thread& th : pool) th.join();
  const double elapsed = SecondsSince(t0);
  uint64_t total = 0;
  for (int t = 0; t < threads; ++t) total += counts[static_cast<size_t>(t) * 16];
  return static_cast<double>(total) / elapsed;
}

// --------------------------------------------------------------- hit ratio

// Exact LRU over the same byte accounting as the cache under test.
class LruCache {
 public:
  explicit LruCache(int64_t max_bytes) : max_bytes_(max_bytes) {}
  bool Lookup(uint64_t key) {
    auto it = map_.find(key);
    if (it == map_.end()) return false;
    order_.splice(order_.begin(), order_, it->second);
    return true;
  }
  void Insert(uint64_t key, int64_t charge) {
    while (bytes_ + charge > max_bytes_ && !order_.empty()) {
      map_.erase(order_.back().first);
      bytes_ -= order_.back().second;
      order_.pop_back();
    }
    order_.emplace_front(key, charge);
    map_[key] = order_.begin();
    bytes_ += charge;
  }

 private:
  int64_t max_bytes_;
  int64_t bytes_ = 0;
  std::list<std::pair<uint64_t, int64_t>> order_;
  std::unordered_map<uint64_t, std::list<std::pair<uint64_t, int64_t>>::iterator> map_;
};

// Zipf(s) over ranks 1..n by inverse CDF; ranks map to key ids through a
// fixed permutation so that popularity is not correlated with the id.
class Zipf {
 public:
  Zipf(size_t n, double s, uint64_t seed) : cdf_(n), perm_(n), rng_(seed) {
    double sum = 0;
    for (size_t i = 0; i < n; ++i) sum += 1.0 / std::pow(static_cast<double>(i + 1), s);
    double acc = 0;
    for (size_t i = 0; i < n; ++i) {
      acc += 1.0 / std::pow(static_cast<double>(i + 1), s) / sum;
      cdf_[i] = acc;
    }
    for (size_t i = 0; i < n; ++i) perm_[i] = i;
    std::shuffle(perm_.begin(), perm_.end(), rng_);
  }
  uint64_t Next() {
    const double u = std::uniform_real_distribution<double>(0, 1)(rng_);
    size_t r = static_cast<size_t>(std::lower_bound(cdf_.begin(), cdf_.end(), u) - cdf_.begin());
    return perm_[std::min(r, perm_.size() - 1)];
  }

 private:
  std::vector<double> cdf_;
  std::vector<uint64_t> perm_;
  std::mt19937_64 rng_;
};

// A trace of key ids. With scans, every `scan_every` requests a run of
// `scan_len` ids that never occur again is interleaved.
std::vector<uint64_t> MakeTrace(size_t keys, size_t length, bool scans, uint64_t seed) {
  Zipf zipf(keys, 0.99, seed);
  std::vector<uint64_t> trace;
  trace.reserve(length);
  uint64_t next_scan_id = keys;  // ids >= keys are one-time
  const size_t scan_every = 2000, scan_len = 1000;
  while (trace.size() < length) {
    if (scans && trace.size() % (scan_every + scan_len) == scan_every) {
      for (size_t i = 0; i < scan_len && trace.size() < length; ++i)
        trace.push_back(next_scan_id++);
    } else {
      trace.push_back(zipf.Next());
    }
  }
  return trace;
}

struct RatioResult {
  double cache_hit_ratio;
  double lru_hit_ratio;
};

RatioResult HitRatio(const std::vector<uint64_t>& trace, size_t capacity_entries, int shards) {
  // Fixed-size keys (id as 16 bytes) and values (64 bytes): every entry is
  // charged the same in both caches.
  const uint8_t value[64] = {};
  auto key_bytes = [](uint64_t id, uint8_t* out) {
    std::memcpy(out, &id, 8);
    std::memcpy(out + 8, &id, 8);
  };
  auto hash_of = [](const uint8_t* kb) {
    Hasher h(7);
    h.Update(kb, 16);
    return h.Digest();
  };
  CacheConfig probe_config;
  ResponseCache probe(probe_config);
  uint8_t kb[16];
  key_bytes(0, kb);
  probe.Insert(hash_of(kb), kb, 16, value, 64, 0);
  const int64_t charge = probe.Counters().bytes;

  CacheConfig config;
  config.max_bytes = charge * static_cast<int64_t>(capacity_entries);
  config.shards = shards;
  config.buckets = static_cast<int64_t>(capacity_entries) * 2;
  ResponseCache cache(config);
  LruCache lru(config.max_bytes);
  uint64_t cache_hits = 0, lru_hits = 0;
  for (uint64_t id : trace) {
    key_bytes(id, kb);
    const Hash128 h = hash_of(kb);
    if (cache.LookupWith(h, kb, 16, 0, [](const uint8_t*, size_t) {})) {
      ++cache_hits;
    } else {
      cache.Insert(h, kb, 16, value, 64, 0);
    }
    if (lru.Lookup(id)) {
      ++lru_hits;
    } else {
      lru.Insert(id, charge);
    }
  }
  const double n = static_cast<double>(trace.size());
  return {static_cast<double>(cache_hits) / n, static_cast<double>(lru_hits) / n};
}

// ------------------------------------------------------------------ output

int Run(const Options& opt) {
  std::vector<Row> rows;
  const size_t hot_keys = 8192;
  const size_t hit_ops = opt.smoke ? 200000 : 4000000;
  const int reps = opt.smoke ? 3 : 7;
  const double scale_seconds = opt.smoke ? 0.1 : 0.5;

  // 1. Hit path.
  const KeySet ks = MakeKeys(hot_keys, 64, 64, 1);
  ResponseCache cache(CacheConfig{});
  Fill(cache, ks);
  const std::vector<uint32_t> order = ShuffledOrder(hot_keys, 1 << 16, 2);
  HitNs(cache, ks, order, hit_ops / 4, HitMode::kPrehashed);  // warm up
  for (auto [mode, name] : {std::pair{HitMode::kPrehashed, "hit ns/op (64B key+value, prehashed)"},
                            std::pair{HitMode::kHashed, "hit ns/op (hash per call)"},
                            std::pair{HitMode::kStdFunction, "hit ns/op (std::function Lookup)"}}) {
    std::vector<double> runs;
    for (int r = 0; r < reps; ++r) runs.push_back(HitNs(cache, ks, order, hit_ops, mode));
    rows.push_back({name, Median(runs), "ns", mode == HitMode::kPrehashed ? "<= 100" : ""});
  }

  // 2. Scaling with reader threads.
  std::vector<double> one, two;
  for (int r = 0; r < (opt.smoke ? 1 : 3); ++r) {
    one.push_back(ReadThroughput(cache, ks, 1, scale_seconds));
    two.push_back(ReadThroughput(cache, ks, 2, scale_seconds));
  }
  const double t1 = Median(one), t2 = Median(two);
  rows.push_back({"hits/s, 1 reader", t1 / 1e6, "M/s", ""});
  rows.push_back({"hits/s, 2 readers", t2 / 1e6, "M/s", ""});
  rows.push_back({"2-reader speedup", t2 / t1, "x", ">= 1.8"});

  // 3. Hit ratio vs exact LRU, same bytes, same entries.
  const size_t keys = opt.smoke ? 20000 : 100000;
  const size_t length = opt.smoke ? 200000 : 2000000;
  const size_t capacity = keys / 10;
  for (bool scans : {false, true}) {
    const std::vector<uint64_t> trace = MakeTrace(keys, length, scans, 3);
    const std::string label = scans ? "zipf0.99+scans" : "zipf0.99";
    for (int shards : {16, 1}) {
      const RatioResult rr = HitRatio(trace, capacity, shards);
      const std::string suffix =
          " (" + std::to_string(shards) + " shard" + (shards == 1 ? "" : "s") + ")";
      rows.push_back({"hit ratio " + label + suffix, rr.cache_hit_ratio, "ratio", ""});
      if (shards == 16) {
        rows.push_back({"hit ratio " + label + " LRU", rr.lru_hit_ratio, "ratio", ""});
      }
      rows.push_back({"hit ratio " + label + suffix + " / LRU",
                      rr.cache_hit_ratio / rr.lru_hit_ratio, "x", ">= 1"});
    }
  }

  std::printf("bench_cache%s: %s, %u hardware threads\n", opt.smoke ? " (smoke)" : "",
              bench::CpuModel().c_str(), std::thread::hardware_concurrency());
  bench::PrintTable(rows);
  return bench::WriteJson(opt, "bench_cache", rows) ? 0 : 1;
}

}  // namespace
}  // namespace aiarch

int main(int argc, char** argv) {
  aiarch::bench::Options opt;
  if (!aiarch::bench::ParseOptions(argc, argv, &opt)) return 2;
  return aiarch::Run(opt);
}
