// Feature table tests: semantics (columns, defaults, TTL, newer-wins, key
// kinds, growth), plans over several tables, snapshots (round trip and
// corruption), and a stress test in which writers and readers race: every row
// a reader sees must be whole (its values all derive from one write), a
// reader never sees a key go back in time, and the final table equals a
// sequential oracle fed the same seeded operation log.

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <map>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "aiarch/feature_table.h"
#include "check.h"

namespace aiarch {
namespace {

constexpr uint64_t kSeed = 0xFEA70001;

std::unique_ptr<FeatureTable> MakeTable(int32_t width, FeatureKeyKind kind, int shards = 4,
                                        int64_t slots = 16) {
  FeatureTableConfig c;
  c.width = width;
  c.key_kind = kind;
  c.shards = shards;
  c.initial_slots = slots;
  std::unique_ptr<FeatureTable> t;
  CHECK(FeatureTable::Create(c, &t).ok());
  return t;
}

std::string TempPath(const char* name) {
  const char* dir = std::getenv("TMPDIR");
  return std::string(dir != nullptr ? dir : "/tmp") + "/aiarch_ft_" + name + "_" +
         std::to_string(static_cast<long>(std::random_device{}()));
}

// Values of one write, all derived from (key, event time): a row mixing two
// writes fails Consistent().
float ValueOf(uint64_t key, int64_t ts, int j) {
  return j == 0
             ? static_cast<float>(ts)
             : static_cast<float>(
                   (key * 31 + static_cast<uint64_t>(ts) * 7 + static_cast<uint64_t>(j)) % 1000003);
}

bool Consistent(uint64_t key, const float* row, int width, int64_t* ts) {
  *ts = static_cast<int64_t>(row[0]);
  for (int j = 0; j < width; ++j) {
    if (row[j] != ValueOf(key, *ts, j)) return false;
  }
  return true;
}

void TestConfigValidation() {
  std::unique_ptr<FeatureTable> t;
  FeatureTableConfig c;
  c.width = 0;
  CHECK_EQ(int(FeatureTable::Create(c, &t).code()), int(StatusCode::kInvalidArgument));
  c.width = 4;
  c.shards = 3;
  CHECK_EQ(int(FeatureTable::Create(c, &t).code()), int(StatusCode::kInvalidArgument));
  CHECK(t == nullptr);
  c.shards = 8;
  CHECK(FeatureTable::Create(c, &t).ok());
  CHECK(t != nullptr);
}

void TestColumnsDefaultsStatus() {
  auto t = MakeTable(4, FeatureKeyKind::kInt64);
  const int64_t keys[] = {10, 20};
  const float values[] = {1, 2, 3, 4, 5, 6, 7, 8};
  const int64_t ts[] = {100, 200};
  size_t applied = 0;
  CHECK(t->UpsertInt64(keys, 2, values, ts, &applied).ok());
  CHECK_EQ(applied, size_t{2});

  const int64_t want[] = {20, 99, 10};
  const int32_t cols[] = {3, 0};
  const float defaults[] = {-1, -2};
  float out[6];
  uint8_t status[3] = {0, 0, 0};
  GatherTarget g{cols, 2, defaults, out, 2, status, /*now_ns=*/1000, /*ttl_ns=*/0};
  CHECK(t->GatherInt64(want, 3, g).ok());
  CHECK_EQ(out[0], 8.0f);
  CHECK_EQ(out[1], 5.0f);
  CHECK_EQ(out[2], -1.0f);
  CHECK_EQ(out[3], -2.0f);
  CHECK_EQ(out[4], 4.0f);
  CHECK_EQ(out[5], 1.0f);
  CHECK_EQ(int{status[0]}, int(FeatureRowStatus::kPresent));
  CHECK_EQ(int{status[1]}, int(FeatureRowStatus::kMissing));
  CHECK_EQ(int{status[2]}, int(FeatureRowStatus::kPresent));

  const int32_t bad_cols[] = {4};
  GatherTarget bad{bad_cols, 1, defaults, out, 1, status, 0, 0};
  CHECK_EQ(int(t->GatherInt64(want, 1, bad).code()), int(StatusCode::kInvalidArgument));
  const FeatureKey skey{"x", 1};
  CHECK_EQ(int(t->GatherStrings(&skey, 1, g).code()), int(StatusCode::kInvalidArgument));
  CHECK_EQ(int(t->UpsertStrings(&skey, 1, values, ts, nullptr).code()),
           int(StatusCode::kInvalidArgument));
}

void TestTtl() {
  auto t = MakeTable(1, FeatureKeyKind::kInt64);
  const int64_t key = 7;
  const float v = 3.5f;
  const int64_t ts = 1'000;
  CHECK(t->UpsertInt64(&key, 1, &v, &ts, nullptr).ok());
  const int32_t col = 0;
  const float def = -9;
  float out = 0;
  for (int64_t now : {1'000, 1'500, 1'501, 9'000}) {
    uint8_t st = 0;
    GatherTarget g{&col, 1, &def, &out, 1, &st, now, /*ttl_ns=*/500};
    CHECK(t->GatherInt64(&key, 1, g).ok());
    const bool expired = now - ts > 500;
    CHECK_EQ(int{st}, int(expired ? FeatureRowStatus::kExpired : FeatureRowStatus::kPresent));
    CHECK_EQ(out, expired ? def : v);
  }
}

void TestNewerWins() {
  auto t = MakeTable(2, FeatureKeyKind::kInt64);
  const int64_t key = 1;
  auto write = [&](int64_t ts, float a) {
    const float v[2] = {a, a};
    size_t applied = 0;
    CHECK(t->UpsertInt64(&key, 1, v, &ts, &applied).ok());
    return applied;
  };
  CHECK_EQ(write(100, 1), size_t{1});
  CHECK_EQ(write(50, 2), size_t{0});   // older: dropped
  CHECK_EQ(write(100, 3), size_t{1});  // equal: replaces
  CHECK_EQ(write(150, 4), size_t{1});
  float row[2];
  int64_t ts = 0;
  CHECK(t->ReadInt64(key, row, &ts));
  CHECK_EQ(ts, int64_t{150});
  CHECK_EQ(row[0], 4.0f);
  const FeatureTableCounters c = t->Counters();
  CHECK_EQ(c.upserts, uint64_t{3});
  CHECK_EQ(c.stale, uint64_t{1});
  CHECK_EQ(c.entities, int64_t{1});
}

void TestStringKeysAndGrowth() {
  auto t = MakeTable(3, FeatureKeyKind::kString, 2, 2);
  const int n = 20000;
  std::vector<std::string> keys;
  for (int i = 0; i < n; ++i) keys.push_back(i == 0 ? std::string() : "user:" + std::to_string(i));
  keys.push_back(std::string("a\0b", 3));  // embedded NUL: keys are bytes
  std::vector<FeatureKey> refs;
  std::vector<float> values;
  std::vector<int64_t> ts;
  for (size_t i = 0; i < keys.size(); ++i) {
    refs.push_back({keys[i].data(), static_cast<uint32_t>(keys[i].size())});
    for (int j = 0; j < 3; ++j) values.push_back(static_cast<float>(i * 3 + j));
    ts.push_back(static_cast<int64_t>(i));
  }
  size_t applied = 0;
  CHECK(t->UpsertStrings(refs.data(), refs.size(), values.data(), ts.data(), &applied).ok());
  CHECK_EQ(applied, keys.size());
  CHECK_EQ(t->Counters().entities, static_cast<int64_t>(keys.size()));
  std::vector<float> out(keys.size() * 3);
  std::vector<uint8_t> status(keys.size(), 0);
  const int32_t cols[] = {0, 1, 2};
  const float defs[] = {0, 0, 0};
  GatherTarget g{cols, 3, defs, out.data(), 3, status.data(), 0, 0};
  CHECK(t->GatherStrings(refs.data(), refs.size(), g).ok());
  CHECK(std::all_of(status.begin(), status.end(), [](uint8_t s) { return s == 0; }));
  CHECK(out == values);
  const FeatureKey absent{"a\0c", 3};
  float row[3];
  int64_t when = 0;
  CHECK(!t->ReadString(absent, row, &when));
}

void TestPlan() {
  std::shared_ptr<FeatureTable> a = MakeTable(3, FeatureKeyKind::kInt64);
  std::shared_ptr<FeatureTable> b = MakeTable(2, FeatureKeyKind::kInt64);
  const int64_t k1 = 1, k2 = 2;
  const float va[3] = {1, 2, 3};
  const float vb[2] = {10, 20};
  const int64_t t_old = 100, t_new = 1000;
  CHECK(a->UpsertInt64(&k1, 1, va, &t_new, nullptr).ok());
  CHECK(b->UpsertInt64(&k1, 1, vb, &t_old, nullptr).ok());  // expires under b's TTL
  CHECK(b->UpsertInt64(&k2, 1, vb, &t_new, nullptr).ok());

  std::vector<FeaturePlanSegment> segs(2);
  segs[0] = {a, {2, 0}, {-1, -1}, 0, 0};
  segs[1] = {b, {1}, {-5}, /*ttl_ns=*/500, 2};
  std::unique_ptr<FeaturePlan> plan;
  CHECK(FeaturePlan::Create(segs, 3, &plan).ok());
  const int64_t keys[] = {1, 2};
  float out[6];
  uint8_t status[2];
  CHECK(plan->GatherInt64(keys, 2, /*now_ns=*/1000, out, status).ok());
  const float want[6] = {3, 1, -5, -1, -1, 20};
  for (int i = 0; i < 6; ++i) CHECK_EQ(out[i], want[i]);
  CHECK_EQ(int{status[0]}, int(FeatureRowStatus::kExpired));  // a present, b expired
  CHECK_EQ(int{status[1]}, int(FeatureRowStatus::kMissing));  // a missing, b present

  std::vector<FeaturePlanSegment> overlap = segs;
  overlap[1].out_offset = 1;
  CHECK_EQ(int(FeaturePlan::Create(overlap, 3, &plan).code()), int(StatusCode::kInvalidArgument));
  std::vector<FeaturePlanSegment> mixed = segs;
  mixed[1].table = MakeTable(2, FeatureKeyKind::kString);
  CHECK_EQ(int(FeaturePlan::Create(mixed, 3, &plan).code()), int(StatusCode::kInvalidArgument));
}

// Blobs travel with their rows (replaced together, expired together, kept by
// snapshots), and slots come back bit for bit, so two slots can hold an int64.
void TestBlobsAndBitExactSlots() {
  auto t = MakeTable(2, FeatureKeyKind::kInt64);
  const int64_t wide = INT64_C(0x7FF0000000000001);  // an int64 whose halves look like NaNs
  float slots[2];
  std::memcpy(slots, &wide, sizeof wide);
  const int64_t k1 = 1, k2 = 2;
  const std::string b1 = std::string("red\0blue", 8);
  const FeatureKey blob1{b1.data(), static_cast<uint32_t>(b1.size())};
  const int64_t t1 = 100;
  CHECK(t->UpsertInt64(&k1, 1, slots, &t1, nullptr, &blob1).ok());
  CHECK(t->UpsertInt64(&k2, 1, slots, &t1, nullptr).ok());  // no blobs: an empty one
  const int64_t keys[] = {1, 2, 3};
  std::vector<std::string> blobs;
  uint8_t status[3];
  CHECK(t->GatherBlobsInt64(keys, 3, /*now_ns=*/150, /*ttl_ns=*/0, &blobs, status).ok());
  CHECK_EQ(blobs.size(), size_t{3});
  CHECK(blobs[0] == b1);
  CHECK(blobs[1].empty());
  CHECK_EQ(int{status[0]}, int(FeatureRowStatus::kPresent));
  CHECK_EQ(int{status[2]}, int(FeatureRowStatus::kMissing));
  CHECK(t->GatherBlobsInt64(keys, 1, /*now_ns=*/1000, /*ttl_ns=*/10, &blobs, status).ok());
  CHECK(blobs[0].empty());
  CHECK_EQ(int{status[0]}, int(FeatureRowStatus::kExpired));
  CHECK_EQ(int(t->GatherBlobsInt64(keys, 1, 0, -1, &blobs, status).code()),
           int(StatusCode::kInvalidArgument));

  const int32_t cols[] = {0, 1};
  const float defs[] = {0, 0};
  float out[2];
  uint8_t st = 0;
  GatherTarget g{cols, 2, defs, out, 2, &st, 150, 0};
  CHECK(t->GatherInt64(&k1, 1, g).ok());
  int64_t back = 0;
  std::memcpy(&back, out, sizeof back);
  CHECK_EQ(back, wide);

  const std::string b2 = "green";
  const FeatureKey blob2{b2.data(), static_cast<uint32_t>(b2.size())};
  const int64_t t2 = 200;
  CHECK(t->UpsertInt64(&k1, 1, slots, &t2, nullptr, &blob2).ok());
  const std::string path = TempPath("blobs");
  CHECK(t->Snapshot(path).ok());
  auto reloaded = MakeTable(2, FeatureKeyKind::kInt64);
  size_t loaded = 0;
  CHECK(reloaded->LoadSnapshot(path, &loaded).ok());
  CHECK_EQ(loaded, size_t{2});
  CHECK(reloaded->GatherBlobsInt64(keys, 2, 250, 0, &blobs, status).ok());
  CHECK(blobs[0] == b2);
  CHECK(blobs[1].empty());
  std::remove(path.c_str());
  CHECK_EQ(int(MakeTable(2, FeatureKeyKind::kString)
                   ->GatherBlobsInt64(keys, 1, 0, 0, &blobs, status)
                   .code()),
           int(StatusCode::kInvalidArgument));
}

void TestSnapshot() {
  auto t = MakeTable(2, FeatureKeyKind::kInt64);
  std::vector<int64_t> keys, ts;
  std::vector<float> values;
  for (int i = 0; i < 1000; ++i) {
    keys.push_back(i * 7919);
    ts.push_back(i + 1);
    values.push_back(static_cast<float>(i));
    values.push_back(static_cast<float>(-i));
  }
  CHECK(t->UpsertInt64(keys.data(), keys.size(), values.data(), ts.data(), nullptr).ok());
  const std::string path = TempPath("snap");
  CHECK(t->Snapshot(path).ok());

  auto back = MakeTable(2, FeatureKeyKind::kInt64);
  size_t loaded = 0;
  CHECK(back->LoadSnapshot(path, &loaded).ok());
  CHECK_EQ(loaded, keys.size());
  for (size_t i = 0; i < keys.size(); ++i) {
    float row[2];
    int64_t when = 0;
    if (!CHECK(back->ReadInt64(keys[i], row, &when))) break;
    CHECK_EQ(when, ts[i]);
    CHECK_EQ(row[0], values[2 * i]);
    CHECK_EQ(row[1], values[2 * i + 1]);
  }
  // Loading does not override newer rows already present.
  const float newer[2] = {42, 42};
  const int64_t late = 1'000'000;
  CHECK(back->UpsertInt64(&keys[0], 1, newer, &late, nullptr).ok());
  CHECK(back->LoadSnapshot(path, nullptr).ok());
  float row[2];
  int64_t when = 0;
  CHECK(back->ReadInt64(keys[0], row, &when));
  CHECK_EQ(row[0], 42.0f);

  auto wrong_width = MakeTable(3, FeatureKeyKind::kInt64);
  CHECK_EQ(int(wrong_width->LoadSnapshot(path, nullptr).code()), int(StatusCode::kInvalidArgument));
  auto wrong_kind = MakeTable(2, FeatureKeyKind::kString);
  CHECK_EQ(int(wrong_kind->LoadSnapshot(path, nullptr).code()), int(StatusCode::kInvalidArgument));

  // Flip one byte in the middle: the checksum catches it and nothing is written.
  std::FILE* f = std::fopen(path.c_str(), "r+b");
  CHECK(f != nullptr);
  if (f != nullptr) {
    std::fseek(f, 200, SEEK_SET);
    const int c = std::fgetc(f);
    std::fseek(f, 200, SEEK_SET);
    std::fputc(c ^ 0x40, f);
    std::fclose(f);
  }
  auto fresh = MakeTable(2, FeatureKeyKind::kInt64);
  CHECK_EQ(int(fresh->LoadSnapshot(path, nullptr).code()), int(StatusCode::kInvalidArgument));
  CHECK_EQ(fresh->Counters().entities, int64_t{0});
  std::remove(path.c_str());
  CHECK_EQ(int(fresh->LoadSnapshot(path, nullptr).code()), int(StatusCode::kNotFound));
}

// ---------------------------------------------------------------- stress

struct Write {
  uint64_t key;
  int64_t ts;
};

std::string StringKey(uint64_t k) { return "entity-" + std::to_string(k * 2654435761u); }

// Applies one write to the table under test.
void Apply(FeatureTable& t, const Write& w, int width) {
  std::vector<float> v(static_cast<size_t>(width));
  for (int j = 0; j < width; ++j) v[static_cast<size_t>(j)] = ValueOf(w.key, w.ts, j);
  if (t.key_kind() == FeatureKeyKind::kInt64) {
    const int64_t k = static_cast<int64_t>(w.key);
    t.UpsertInt64(&k, 1, v.data(), &w.ts, nullptr);
  } else {
    const std::string s = StringKey(w.key);
    const FeatureKey k{s.data(), static_cast<uint32_t>(s.size())};
    t.UpsertStrings(&k, 1, v.data(), &w.ts, nullptr);
  }
}

bool ReadKey(const FeatureTable& t, uint64_t key, float* row, int64_t* ts) {
  if (t.key_kind() == FeatureKeyKind::kInt64)
    return t.ReadInt64(static_cast<int64_t>(key), row, ts);
  const std::string s = StringKey(key);
  return t.ReadString(FeatureKey{s.data(), static_cast<uint32_t>(s.size())}, row, ts);
}

void StressAgainstOracle(FeatureKeyKind kind, uint64_t seed) {
  char context[96];
  std::snprintf(context, sizeof context, "stress kind=%d seed=%llu", int(kind),
                static_cast<unsigned long long>(seed));
  test::SetContext(context);
  constexpr int kWidth = 24;
  constexpr uint64_t kKeys = 600;
  constexpr int kWritesPerKey = 30;
  constexpr int kWriters = 3;
  constexpr int kReaders = 3;
  constexpr size_t kBatch = 16;

  // The log: every key written kWritesPerKey times with distinct event
  // times, shuffled so that older writes often arrive after newer ones.
  std::mt19937_64 rng(seed);
  std::vector<Write> log;
  for (uint64_t k = 0; k < kKeys; ++k) {
    for (int w = 1; w <= kWritesPerKey; ++w) log.push_back({k, static_cast<int64_t>(w * 10)});
  }
  std::shuffle(log.begin(), log.end(), rng);

  // The sequential oracle: newer event time wins, equal replaces.
  std::map<uint64_t, int64_t> oracle;
  for (const Write& w : log) {
    auto it = oracle.find(w.key);
    if (it == oracle.end() || it->second <= w.ts) oracle[w.key] = w.ts;
  }

  auto table = MakeTable(kWidth, kind, 4, 8);  // small: many grows under readers
  std::atomic<int> writers_left{kWriters};
  std::atomic<long> torn{0}, backwards{0}, rows_checked{0};

  std::vector<std::thread> threads;
  for (int w = 0; w < kWriters; ++w) {
    threads.emplace_back([&, w] {
      for (size_t i = static_cast<size_t>(w); i < log.size(); i += kWriters) {
        Apply(*table, log[i], kWidth);
      }
      // Release: pairs with the readers' acquire load, so a reader that sees
      // zero sees every write.
      writers_left.fetch_sub(1, std::memory_order_release);
    });
  }
  for (int r = 0; r < kReaders; ++r) {
    threads.emplace_back([&, r] {
      std::mt19937_64 rrng(seed + 1000 + static_cast<uint64_t>(r));
      std::vector<int64_t> last_seen(kKeys, 0);
      std::vector<int32_t> cols(kWidth);
      for (int j = 0; j < kWidth; ++j) cols[static_cast<size_t>(j)] = j;
      std::vector<float> defs(kWidth, -1.0f);
      std::vector<float> out(kBatch * kWidth);
      std::vector<uint8_t> status(kBatch);
      std::vector<uint64_t> ids(kBatch);
      std::vector<int64_t> int_keys(kBatch);
      std::vector<std::string> str_keys(kBatch);
      std::vector<FeatureKey> refs(kBatch);
      bool last_round = false;
      while (!last_round) {
        // Acquire: pairs with the writers' release decrement.
        last_round = writers_left.load(std::memory_order_acquire) == 0;
        for (size_t i = 0; i < kBatch; ++i) {
          ids[i] = rrng() % kKeys;
          int_keys[i] = static_cast<int64_t>(ids[i]);
          str_keys[i] = StringKey(ids[i]);
          refs[i] = FeatureKey{str_keys[i].data(), static_cast<uint32_t>(str_keys[i].size())};
        }
        std::fill(status.begin(), status.end(), 0);
        GatherTarget g{cols.data(), kWidth, defs.data(), out.data(), kWidth, status.data(), 0, 0};
        const Status st = kind == FeatureKeyKind::kInt64
                              ? table->GatherInt64(int_keys.data(), kBatch, g)
                              : table->GatherStrings(refs.data(), kBatch, g);
        if (!CHECK(st.ok())) return;
        for (size_t i = 0; i < kBatch; ++i) {
          if (status[i] != 0) continue;
          int64_t ts = 0;
          if (!Consistent(ids[i], &out[i * kWidth], kWidth, &ts)) {
            torn.fetch_add(1, std::memory_order_relaxed);  // a tally
          } else if (ts < last_seen[ids[i]]) {
            backwards.fetch_add(1, std::memory_order_relaxed);  // a tally
          } else {
            last_seen[ids[i]] = ts;
          }
          rows_checked.fetch_add(1, std::memory_order_relaxed);  // a tally
        }
      }
    });
  }
  // A snapshot taken while writers run holds whole rows only.
  const std::string snap = TempPath("stress");
  threads.emplace_back([&] { CHECK(table->Snapshot(snap).ok()); });
  for (auto& t : threads) t.join();

  auto reloaded = MakeTable(kWidth, kind);
  size_t loaded = 0;
  CHECK(reloaded->LoadSnapshot(snap, &loaded).ok());
  std::remove(snap.c_str());
  long torn_in_snapshot = 0;
  for (uint64_t key = 0; key < kKeys; ++key) {
    float row[kWidth];
    int64_t ts = 0, value_ts = 0;
    if (ReadKey(*reloaded, key, row, &ts) &&
        (!Consistent(key, row, kWidth, &value_ts) || value_ts != ts)) {
      ++torn_in_snapshot;
    }
  }
  CHECK_EQ(torn_in_snapshot, 0L);
  CHECK(loaded <= kKeys);

  CHECK_EQ(torn.load(), 0L);
  CHECK_EQ(backwards.load(), 0L);
  CHECK(rows_checked.load() > 0);
  const FeatureTableCounters c = table->Counters();
  CHECK_EQ(c.upserts + c.stale, static_cast<uint64_t>(log.size()));
  CHECK_EQ(c.entities, static_cast<int64_t>(kKeys));
  long mismatches = 0;
  for (const auto& [key, ts] : oracle) {
    float row[kWidth];
    int64_t got_ts = -1;
    int64_t value_ts = -1;
    if (!ReadKey(*table, key, row, &got_ts) || got_ts != ts ||
        !Consistent(key, row, kWidth, &value_ts) || value_ts != ts) {
      ++mismatches;
    }
  }
  CHECK_EQ(mismatches, 0L);
  test::SetContext("");
}

}  // namespace
}  // namespace aiarch

int main() {
  using namespace aiarch;
  TestConfigValidation();
  TestColumnsDefaultsStatus();
  TestTtl();
  TestNewerWins();
  TestStringKeysAndGrowth();
  TestPlan();
  TestSnapshot();
  TestBlobsAndBitExactSlots();
  for (uint64_t round = 0; round < 3; ++round) {
    StressAgainstOracle(FeatureKeyKind::kInt64, kSeed + round);
    StressAgainstOracle(FeatureKeyKind::kString, kSeed + 100 + round);
  }
  return test::Finish("test_feature_table");
}
