// Response cache tests: a seeded operation log checked against a sequential
// oracle, readers racing a writer with self-verifying values, SIEVE and byte
// budget, TTL with explicit times, key-byte verification, epoch reclamation,
// and the hasher the cache keys come from.

#include <atomic>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <random>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "aiarch/cache.h"
#include "aiarch/hash.h"
#include "check.h"
#include "epoch.h"

namespace aiarch {
namespace {

constexpr uint64_t kSeed = 0xCAC4E0001;
constexpr uint64_t kHashSeed = 0x1234567;

std::string KeyBytes(int id) {
  // Varying lengths, so sizes take part in the comparison.
  return "model:v1:" + std::to_string(id) + std::string(static_cast<size_t>(id % 29), '#');
}

Hash128 HashOf(const std::string& key) {
  Hasher h(kHashSeed);
  h.Update(key.data(), key.size());
  return h.Digest();
}

// A value that names its key, the cache generation and a version, followed by
// a pattern derived from them: a torn, misdirected or stale read fails Parse.
struct ValueHeader {
  uint64_t id;
  uint64_t generation;
  uint64_t version;
  uint64_t length;  // pattern bytes after the header
};

uint8_t PatternByte(const ValueHeader& h, size_t j) {
  return static_cast<uint8_t>(h.id * 131 + h.version * 17 + h.generation * 7 + j);
}

std::vector<uint8_t> MakeValue(uint64_t id, uint64_t generation, uint64_t version, size_t length) {
  const ValueHeader h{id, generation, version, length};
  std::vector<uint8_t> v(sizeof h + length);
  std::memcpy(v.data(), &h, sizeof h);
  for (size_t j = 0; j < length; ++j) v[sizeof h + j] = PatternByte(h, j);
  return v;
}

bool Parse(const uint8_t* data, size_t size, ValueHeader* out) {
  if (size < sizeof(ValueHeader)) return false;
  std::memcpy(out, data, sizeof *out);
  if (size != sizeof(ValueHeader) + out->length) return false;
  for (size_t j = 0; j < out->length; ++j) {
    if (data[sizeof(ValueHeader) + j] != PatternByte(*out, j)) return false;
  }
  return true;
}

bool InsertKey(ResponseCache& c, int id, const std::vector<uint8_t>& value, int64_t now = 0) {
  const std::string k = KeyBytes(id);
  return c.Insert(HashOf(k), reinterpret_cast<const uint8_t*>(k.data()), k.size(), value.data(),
                  value.size(), now);
}

// Returns true on a hit and stores the value in *out.
bool LookupKey(ResponseCache& c, int id, std::vector<uint8_t>* out, int64_t now = 0) {
  const std::string k = KeyBytes(id);
  return c.LookupWith(HashOf(k), reinterpret_cast<const uint8_t*>(k.data()), k.size(), now,
                      [out](const uint8_t* v, size_t n) { out->assign(v, v + n); });
}

bool EraseKey(ResponseCache& c, int id) {
  const std::string k = KeyBytes(id);
  return c.Erase(HashOf(k), reinterpret_cast<const uint8_t*>(k.data()), k.size());
}

void TestHasher() {
  const uint64_t seed = kSeed;
  test::SetContext("seed=" + std::to_string(seed));
  std::mt19937_64 rng(seed);
  std::vector<uint8_t> buf(300);
  for (uint8_t& b : buf) b = static_cast<uint8_t>(rng());
  // Every split of every length gives the one-shot digest.
  size_t split_mismatches = 0;
  for (size_t n = 0; n <= 100; ++n) {
    Hasher whole(kHashSeed);
    whole.Update(buf.data(), n);
    const Hash128 want = whole.Digest();
    for (size_t cut1 = 0; cut1 <= n; ++cut1) {
      const size_t cut2 = cut1 + (n - cut1) / 2;
      Hasher h(kHashSeed);
      h.Update(buf.data(), cut1);
      h.Update(buf.data() + cut1, cut2 - cut1);
      h.Update(buf.data() + cut2, n - cut2);
      if (!(h.Digest() == want)) ++split_mismatches;
    }
    Hasher bytewise(kHashSeed);
    for (size_t i = 0; i < n; ++i) bytewise.Update(buf.data() + i, 1);
    if (!(bytewise.Digest() == want)) ++split_mismatches;
  }
  CHECK_EQ(split_mismatches, size_t{0});

  // Length and trailing zeros matter; seeds matter; the process seed is stable.
  const uint8_t zeros[32] = {};
  std::set<std::pair<uint64_t, uint64_t>> seen;
  for (size_t n = 0; n <= 32; ++n) {
    Hasher h(kHashSeed);
    h.Update(zeros, n);
    const Hash128 d = h.Digest();
    seen.insert({d.lo, d.hi});
  }
  CHECK_EQ(seen.size(), size_t{33});
  Hasher s1(1), s2(2);
  s1.UpdateU64(42);
  s2.UpdateU64(42);
  CHECK(!(s1.Digest() == s2.Digest()));
  CHECK_EQ(ProcessHashSeed(), ProcessHashSeed());

  // No collisions among many short, similar keys; each output bit is set
  // about half the time; a one-bit input change flips about half the bits.
  seen.clear();
  uint64_t ones[128] = {};
  const int kKeys = 100000;
  double flipped = 0;
  for (int i = 0; i < kKeys; ++i) {
    const Hash128 d = HashOf(KeyBytes(i));
    seen.insert({d.lo, d.hi});
    for (int b = 0; b < 64; ++b) {
      ones[b] += (d.lo >> b) & 1;
      ones[64 + b] += (d.hi >> b) & 1;
    }
    Hasher a(kHashSeed), b(kHashSeed);
    uint64_t x = rng();
    a.UpdateU64(x);
    b.UpdateU64(x ^ (uint64_t{1} << (i % 64)));
    const Hash128 da = a.Digest(), db = b.Digest();
    flipped += __builtin_popcountll(da.lo ^ db.lo) + __builtin_popcountll(da.hi ^ db.hi);
  }
  CHECK_EQ(seen.size(), size_t{kKeys});
  size_t biased = 0;
  for (uint64_t c : ones) biased += (c < kKeys * 0.48 || c > kKeys * 0.52);
  CHECK_EQ(biased, size_t{0});
  CHECK_NEAR(flipped / kKeys, 64.0, 1.0);
  test::SetContext("");
}

// The seeded log applied to the cache and to a map; nothing is evicted.
void TestSequentialOracle(uint64_t seed) {
  test::SetContext("seed=" + std::to_string(seed));
  CacheConfig config;
  config.max_bytes = int64_t{1} << 30;
  config.shards = 4;
  config.buckets = 256;  // long chains: exercise chain walks and mid-chain unlinks
  ResponseCache cache(config);
  std::unordered_map<int, std::vector<uint8_t>> oracle;
  std::mt19937_64 rng(seed);
  uint64_t generation = 0, version = 0, hits = 0, misses = 0, inserts = 0;
  size_t mismatches = 0;
  for (int op = 0; op < 200000; ++op) {
    const int id = static_cast<int>(rng() % 3000);
    const int dice = static_cast<int>(rng() % 1000);
    if (dice < 450) {
      std::vector<uint8_t> got;
      const bool hit = LookupKey(cache, id, &got);
      auto it = oracle.find(id);
      if (hit != (it != oracle.end()) || (hit && got != it->second)) ++mismatches;
      (hit ? hits : misses) += 1;
    } else if (dice < 800) {
      std::vector<uint8_t> v = MakeValue(id, generation, ++version, rng() % 200);
      if (!InsertKey(cache, id, v)) ++mismatches;
      oracle[id] = std::move(v);
      ++inserts;
    } else if (dice < 995) {
      if (EraseKey(cache, id) != (oracle.erase(id) == 1)) ++mismatches;
    } else if (dice < 999) {
      cache.Invalidate();
      ++generation;
      oracle.clear();
    } else {
      cache.Clear();
      oracle.clear();
    }
    if (mismatches != 0) {
      CHECK_EQ(op, -1);  // report the first divergent operation
      break;
    }
  }
  CHECK_EQ(mismatches, size_t{0});
  CHECK_EQ(cache.generation(), generation);
  const CacheCounters c = cache.Counters();
  CHECK_EQ(c.hits, hits);
  CHECK_EQ(c.misses, misses);
  CHECK_EQ(c.inserts, inserts);
  CHECK_EQ(c.evictions, uint64_t{0});
  CHECK_EQ(c.rejected, uint64_t{0});
  // Entries of older generations stay charged until evicted or cleared.
  CHECK(c.entries >= static_cast<int64_t>(oracle.size()));
  cache.Clear();
  CHECK_EQ(cache.Counters().entries, int64_t{0});
  CHECK_EQ(cache.Counters().bytes, int64_t{0});
  test::SetContext("");
}

// Readers hammer lookups while one writer inserts, erases, invalidates and
// clears. Every hit must be an intact value of the key looked up, of a
// generation no older than the one current when the lookup started.
void TestConcurrentReaders(uint64_t seed, int64_t max_bytes, int writer_ops) {
  test::SetContext("seed=" + std::to_string(seed) + " max_bytes=" + std::to_string(max_bytes));
  CacheConfig config;
  config.max_bytes = max_bytes;
  config.shards = 4;
  config.buckets = 64;
  ResponseCache cache(config);
  constexpr int kKeys = 256;
  constexpr int kReaders = 2;
  std::atomic<bool> done{false};
  std::atomic<uint64_t> bad{0}, hits{0}, lookups{0};

  std::vector<std::thread> readers;
  for (int r = 0; r < kReaders; ++r) {
    readers.emplace_back([&, r] {
      std::mt19937_64 rng(seed * 31 + static_cast<uint64_t>(r));
      uint64_t local_bad = 0, local_hits = 0, local_lookups = 0;
      // Acquire: pairs with the writer's release store of done; nothing else
      // depends on it, so this is only for a clean stop.
      while (!done.load(std::memory_order_acquire)) {
        const int id = static_cast<int>(rng() % kKeys);
        const std::string k = KeyBytes(id);
        const uint64_t gen_before = cache.generation();
        auto check = [&](const uint8_t* v, size_t n) {
          ValueHeader h;
          if (!Parse(v, n, &h) || h.id != static_cast<uint64_t>(id) || h.generation < gen_before) {
            ++local_bad;
          }
        };
        bool hit;
        if (local_lookups % 2 == 0) {
          hit = cache.LookupWith(HashOf(k), reinterpret_cast<const uint8_t*>(k.data()), k.size(), 0,
                                 check);
        } else {
          hit = cache.Lookup(HashOf(k), reinterpret_cast<const uint8_t*>(k.data()), k.size(), 0,
                             check);
        }
        local_hits += hit;
        ++local_lookups;
      }
      // Relaxed: tallies read after join(), which orders them.
      bad.fetch_add(local_bad, std::memory_order_relaxed);
      hits.fetch_add(local_hits, std::memory_order_relaxed);
      lookups.fetch_add(local_lookups, std::memory_order_relaxed);
    });
  }

  std::mt19937_64 rng(seed);
  uint64_t generation = 0;
  uint64_t over_budget = 0;
  for (int op = 0; op < writer_ops; ++op) {
    const int id = static_cast<int>(rng() % kKeys);
    const int dice = static_cast<int>(rng() % 1000);
    if (dice < 700) {
      InsertKey(cache, id, MakeValue(id, generation, static_cast<uint64_t>(op), rng() % 300));
      if (cache.Counters().bytes > max_bytes) ++over_budget;
    } else if (dice < 980) {
      EraseKey(cache, id);
    } else if (dice < 998) {
      cache.Invalidate();
      ++generation;
    } else {
      cache.Clear();
    }
  }
  // Release: pairs with the readers' acquire loads of done.
  done.store(true, std::memory_order_release);
  for (std::thread& t : readers) t.join();

  CHECK_EQ(bad.load(), uint64_t{0});
  CHECK_EQ(over_budget, uint64_t{0});
  CHECK(lookups.load() > 0);
  const CacheCounters c = cache.Counters();
  CHECK_EQ(c.hits + c.misses, lookups.load());
  CHECK_EQ(c.hits, hits.load());
  CHECK(c.bytes <= max_bytes);
  test::SetContext("");
}

// Fixed-length keys for the golden eviction tests, so every entry costs the same.
bool Put(ResponseCache& c, const std::string& k, int64_t now = 0) {
  const std::vector<uint8_t> v(40, static_cast<uint8_t>(k[0]));
  return c.Insert(HashOf(k), reinterpret_cast<const uint8_t*>(k.data()), k.size(), v.data(),
                  v.size(), now);
}

bool Has(ResponseCache& c, const std::string& k, int64_t now = 0) {
  return c.LookupWith(HashOf(k), reinterpret_cast<const uint8_t*>(k.data()), k.size(), now,
                      [](const uint8_t*, size_t) {});
}

// A one-shard cache that holds exactly four such entries.
CacheConfig FourEntries(int64_t ttl_ns) {
  ResponseCache probe(CacheConfig{});
  Put(probe, "A");
  CacheConfig config;
  config.shards = 1;
  config.ttl_ns = ttl_ns;
  config.max_bytes = 4 * probe.Counters().bytes;
  return config;
}

void TestSieveGolden() {
  ResponseCache cache(FourEntries(0));
  for (const char* k : {"A", "B", "C", "D"}) CHECK(Put(cache, k));
  CHECK_EQ(cache.Counters().evictions, uint64_t{0});
  CHECK(Has(cache, "A"));  // visited: survives the first pass
  CHECK(Put(cache, "E"));  // hand from the oldest: A (clear its bit) -> B (unvisited): evict B
  CHECK_EQ(cache.Counters().evictions, uint64_t{1});
  CHECK(!Has(cache, "B"));
  for (const char* k : {"A", "C", "D", "E"}) CHECK(Has(cache, k));
  // All visited; the hand (now at C) clears C, D, E, wraps to A, clears it,
  // and evicts C on the second turn.
  CHECK(Put(cache, "F"));
  CHECK_EQ(cache.Counters().evictions, uint64_t{2});
  CHECK(!Has(cache, "C"));
  for (const char* k : {"A", "D", "E", "F"}) CHECK(Has(cache, k));
  // Newly inserted entries start unvisited; the hand is at D, which was
  // just visited again, so: D, E, F cleared, A cleared, D evicted.
  CHECK(Put(cache, "G"));
  CHECK(!Has(cache, "D"));
  CHECK_EQ(cache.Counters().entries, int64_t{4});
  CHECK(cache.Counters().bytes <= cache.config().max_bytes);
}

void TestStaleAndExpiredEvictedFirst() {
  ResponseCache cache(FourEntries(1000));
  CHECK(Put(cache, "A", 0));
  for (const char* k : {"B", "C", "D"}) CHECK(Put(cache, k, 500));
  CHECK(Has(cache, "A", 100));   // visited, but expires at 1000
  CHECK(Put(cache, "E", 1200));  // the hand meets A first: expired, evicted although visited
  CHECK_EQ(cache.Counters().evictions, uint64_t{1});
  CHECK(Has(cache, "B", 1200));  // B..D expire at 1500
  CHECK(!Has(cache, "A", 1200));
  CHECK_EQ(cache.Counters().expirations, uint64_t{0});  // A was evicted, never found expired

  // After Invalidate every old entry is stale and goes first, visited or not.
  ResponseCache g(FourEntries(0));
  for (const char* k : {"A", "B", "C", "D"}) CHECK(Put(g, k));
  CHECK(Put(g, "P"));  // evicts A (nothing visited yet)
  for (const char* k : {"B", "C", "D", "P"}) CHECK(Has(g, k));
  g.Invalidate();
  for (const char* k : {"B", "C", "D", "P"}) CHECK(!Has(g, k));
  CHECK(Put(g, "Q"));
  CHECK(Put(g, "R"));
  CHECK(Has(g, "Q"));
  CHECK(Has(g, "R"));
  CHECK_EQ(g.Counters().evictions, uint64_t{3});
  CHECK_EQ(g.Counters().entries, int64_t{4});
}

void TestBudgetUnderChurn(uint64_t seed) {
  test::SetContext("seed=" + std::to_string(seed));
  CacheConfig config;
  config.max_bytes = 200 << 10;
  config.shards = 4;
  config.buckets = 512;
  ResponseCache cache(config);
  std::mt19937_64 rng(seed);
  uint64_t over = 0, wrong = 0;
  for (int i = 0; i < 30000; ++i) {
    const int id = static_cast<int>(rng() % 5000);
    InsertKey(cache, id, MakeValue(id, 0, i, rng() % 2000));
    if (cache.Counters().bytes > config.max_bytes) ++over;
    std::vector<uint8_t> got;
    const int probe = static_cast<int>(rng() % 5000);
    ValueHeader h;
    if (LookupKey(cache, probe, &got) &&
        (!Parse(got.data(), got.size(), &h) || h.id != static_cast<uint64_t>(probe))) {
      ++wrong;
    }
  }
  const CacheCounters c = cache.Counters();
  CHECK_EQ(over, uint64_t{0});
  CHECK_EQ(wrong, uint64_t{0});
  CHECK(c.evictions > 0);
  CHECK(c.entries > 0);
  CHECK(c.inserts >= c.evictions + static_cast<uint64_t>(c.entries));
  test::SetContext("");
}

void TestTtl() {
  CacheConfig config;
  config.ttl_ns = 100;
  ResponseCache cache(config);
  const std::vector<uint8_t> v = MakeValue(5, 0, 1, 10);
  std::vector<uint8_t> got;
  CHECK(InsertKey(cache, 5, v, 1000));
  CHECK(LookupKey(cache, 5, &got, 1000));
  CHECK(LookupKey(cache, 5, &got, 1099));
  CHECK(got == v);
  CHECK(!LookupKey(cache, 5, &got, 1100));  // expiry is exclusive: 1000 + 100
  CHECK(!LookupKey(cache, 5, &got, 5000));
  CacheCounters c = cache.Counters();
  CHECK_EQ(c.expirations, uint64_t{2});
  CHECK_EQ(c.hits, uint64_t{2});
  CHECK_EQ(c.misses, uint64_t{2});
  CHECK(InsertKey(cache, 5, v, 1100));  // re-insert restarts the clock
  CHECK(LookupKey(cache, 5, &got, 1150));
  CHECK(!LookupKey(cache, 5, &got, 1200));

  CacheConfig forever;
  ResponseCache never(forever);
  CHECK(InsertKey(never, 5, v, 0));
  CHECK(LookupKey(never, 5, &got, int64_t{1} << 62));
}

void TestKeyBytesVerified() {
  ResponseCache cache(CacheConfig{});
  const Hash128 fixed{0x0123456789abcdefull, 0xfedcba9876543210ull};
  const uint8_t k1[] = {'a', 'b', 'c'};
  const uint8_t k2[] = {'a', 'b', 'd'};
  const uint8_t k3[] = {'a', 'b'};
  const uint8_t v1[] = {1, 1, 1};
  const uint8_t v2[] = {2, 2};
  std::vector<uint8_t> got;
  auto collect = [&got](const uint8_t* v, size_t n) { got.assign(v, v + n); };
  CHECK(cache.Insert(fixed, k1, 3, v1, 3, 0));
  CHECK(!cache.LookupWith(fixed, k2, 3, 0, collect));  // same hash, other bytes
  CHECK(!cache.LookupWith(fixed, k3, 2, 0, collect));  // same hash, a prefix
  CHECK(cache.LookupWith(fixed, k1, 3, 0, collect));
  CHECK(got == std::vector<uint8_t>(v1, v1 + 3));
  // A colliding key is a separate entry, not a replacement.
  CHECK(cache.Insert(fixed, k2, 3, v2, 2, 0));
  CHECK(cache.LookupWith(fixed, k1, 3, 0, collect));
  CHECK(got == std::vector<uint8_t>(v1, v1 + 3));
  CHECK(cache.LookupWith(fixed, k2, 3, 0, collect));
  CHECK(got == std::vector<uint8_t>(v2, v2 + 2));
  CHECK(cache.Erase(fixed, k1, 3));
  CHECK(!cache.LookupWith(fixed, k1, 3, 0, collect));
  CHECK(cache.LookupWith(fixed, k2, 3, 0, collect));
  // Empty keys and values are valid.
  CHECK(cache.Insert(fixed, nullptr, 0, nullptr, 0, 0));
  CHECK(cache.LookupWith(fixed, nullptr, 0, 0, collect));
  CHECK(got.empty());
}

void TestInvalidateEraseClearReject() {
  CacheConfig config;
  config.max_bytes = 16 << 10;
  config.shards = 2;
  ResponseCache cache(config);
  std::vector<uint8_t> got;
  const std::vector<uint8_t> v = MakeValue(3, 0, 1, 50);
  CHECK(InsertKey(cache, 3, v));
  CHECK_EQ(cache.generation(), uint64_t{0});
  cache.Invalidate();
  CHECK_EQ(cache.generation(), uint64_t{1});
  CHECK(!LookupKey(cache, 3, &got));
  CHECK(!EraseKey(cache, 3));  // stale: removed, but was not present
  CHECK_EQ(cache.Counters().entries, int64_t{0});
  CHECK(InsertKey(cache, 3, v));
  CHECK(LookupKey(cache, 3, &got));
  CHECK(EraseKey(cache, 3));
  CHECK(!EraseKey(cache, 3));

  // Larger than a shard's budget (8 KiB): rejected, and the older value for
  // the key is dropped rather than left behind.
  CHECK(InsertKey(cache, 4, v));
  CHECK(!InsertKey(cache, 4, std::vector<uint8_t>(9 << 10, 0)));
  CHECK_EQ(cache.Counters().rejected, uint64_t{1});
  CHECK(!LookupKey(cache, 4, &got));

  for (int id = 0; id < 20; ++id) InsertKey(cache, id, MakeValue(id, 1, 1, 10));
  CHECK(cache.Counters().entries > 0);
  cache.Clear();
  CHECK_EQ(cache.Counters().entries, int64_t{0});
  CHECK_EQ(cache.Counters().bytes, int64_t{0});
  for (int id = 0; id < 20; ++id) CHECK(!LookupKey(cache, id, &got));
  CHECK(InsertKey(cache, 7, v));
  CHECK(LookupKey(cache, 7, &got));

  // Normalised configuration.
  CacheConfig odd;
  odd.shards = 3;
  odd.buckets = 5;
  ResponseCache normalised(odd);
  CHECK_EQ(normalised.config().shards, 4);
  CHECK_EQ(normalised.config().buckets, int64_t{8});
}

void TestThrowingVisitorLeavesReadSection() {
  ResponseCache cache(CacheConfig{});
  const std::vector<uint8_t> v = MakeValue(9, 0, 1, 10);
  CHECK(InsertKey(cache, 9, v));
  const std::string k = KeyBytes(9);
  bool caught = false;
  try {
    cache.LookupWith(HashOf(k), reinterpret_cast<const uint8_t*>(k.data()), k.size(), 0,
                     [](const uint8_t*, size_t) { throw std::runtime_error("visitor"); });
  } catch (const std::runtime_error&) {
    caught = true;
  }
  CHECK(caught);
  CHECK(!epoch::InReadSection());
  // Reclamation is not stalled by the aborted section: an overwrite frees the old entry.
  CHECK(InsertKey(cache, 9, v));
  CHECK_EQ(epoch::MinAnnouncedEpoch(), epoch::kIdle);
}

// A node retired while a reader is inside a read section is freed only after
// that reader leaves. Hand-offs use a condition variable, not sleeps.
void TestEpochReclamation() {
  static std::atomic<int> freed{0};
  freed.store(0);
  epoch::RetireList list;
  std::mutex mu;
  std::condition_variable cv;
  int stage = 0;  // 1: reader inside; 2: reader may leave; 3: reader left
  uint32_t reader_index = 0;
  std::thread reader([&] {
    reader_index = epoch::ThreadIndex();
    epoch::EnterRead();
    {
      std::lock_guard<std::mutex> lock(mu);
      stage = 1;
    }
    cv.notify_all();
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return stage == 2; });
    epoch::ExitRead();
    stage = 3;
    cv.notify_all();
  });
  {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return stage == 1; });
  }
  int* node = new int(5);
  list.Retire(node, [](void* p) {
    delete static_cast<int*>(p);
    freed.fetch_add(1);
  });
  CHECK_EQ(list.Reclaim(), size_t{0});  // the reader may hold it
  CHECK_EQ(list.Reclaim(), size_t{0});
  CHECK_EQ(freed.load(), 0);
  {
    std::lock_guard<std::mutex> lock(mu);
    stage = 2;
  }
  cv.notify_all();
  {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return stage == 3; });
  }
  CHECK_EQ(list.Reclaim(), size_t{1});
  CHECK_EQ(freed.load(), 1);
  CHECK_EQ(list.pending(), size_t{0});
  reader.join();

  // A reader that enters after the retirement does not hold it back.
  int* late = new int(6);
  list.Retire(late, [](void* p) {
    delete static_cast<int*>(p);
    freed.fetch_add(1);
  });
  CHECK_EQ(list.Reclaim(), size_t{1});
  // The exited reader's slot is the newest free one, so the next thread reuses it.
  uint32_t next_index = 0;
  std::thread([&] { next_index = epoch::ThreadIndex(); }).join();
  CHECK_EQ(next_index, reader_index);
}

}  // namespace
}  // namespace aiarch

int main() {
  using namespace aiarch;
  TestHasher();
  TestSequentialOracle(kSeed + 1);
  TestSequentialOracle(kSeed + 2);
  TestSieveGolden();
  TestStaleAndExpiredEvictedFirst();
  TestBudgetUnderChurn(kSeed + 3);
  TestTtl();
  TestKeyBytesVerified();
  TestInvalidateEraseClearReject();
  TestThrowingVisitorLeavesReadSection();
  TestEpochReclamation();
  TestConcurrentReaders(kSeed + 4, int64_t{1} << 28, 60000);  // no eviction
  TestConcurrentReaders(kSeed + 5, 24 << 10, 60000);          // constant eviction
  return test::Finish("test_cache");
}
