#include "aiarch/feature_table.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <limits>
#include <mutex>

#include "aiarch/hash.h"
#include "epoch.h"

namespace aiarch {

// An immutable row: header, then `width` floats, then the key bytes, then the
// blob bytes. Built fully before it is published and never written afterwards.
struct FeatureTable::Row {
  uint64_t hash;
  int64_t event_ns;
  uint32_t key_size;
  uint32_t blob_size;

  float* values() { return reinterpret_cast<float*>(this + 1); }
  const float* values() const { return reinterpret_cast<const float*>(this + 1); }
  const char* key(int32_t width) const { return reinterpret_cast<const char*>(values() + width); }
  const char* blob(int32_t width) const { return key(width) + key_size; }

  static Row* Make(uint64_t hash, const char* key, uint32_t key_size, const float* values,
                   const FeatureKey& blob, int64_t event_ns, int32_t width) {
    const size_t bytes =
        sizeof(Row) + sizeof(float) * static_cast<size_t>(width) + key_size + blob.size;
    Row* r = static_cast<Row*>(::operator new(bytes));
    r->hash = hash;
    r->event_ns = event_ns;
    r->key_size = key_size;
    r->blob_size = blob.size;
    std::memcpy(r->values(), values, sizeof(float) * static_cast<size_t>(width));
    std::memcpy(const_cast<char*>(r->key(width)), key, key_size);
    if (blob.size > 0) std::memcpy(const_cast<char*>(r->blob(width)), blob.data, blob.size);
    return r;
  }
  static void Free(void* p) { ::operator delete(p); }
};

// Open addressing with linear probing. Slots only ever go from null to a row
// or from one row of a key to a newer row of the same key, so a probe that
// meets a null slot may stop: the key is absent from this index.
struct FeatureTable::Index {
  uint64_t mask;
  std::unique_ptr<std::atomic<const Row*>[]> slots;

  explicit Index(uint64_t capacity)
      : mask(capacity - 1), slots(new std::atomic<const Row*>[capacity]()) {}
  static void Free(void* p) { delete static_cast<Index*>(p); }
};

// Padded so that one shard's writers never share a line with another's.
struct alignas(64) FeatureTable::Shard {
  mutable std::mutex mu;
  // Written under mu with release stores; read by readers with acquire loads.
  std::atomic<Index*> index{nullptr};
  uint64_t count = 0;                  // guarded by mu
  uint64_t retired_since_reclaim = 0;  // guarded by mu
  epoch::RetireList retired;
};

namespace {

// Version 2 stores each row's blob after its values; version 1 files (no
// blobs) still load.
constexpr char kMagic[8] = {'A', 'I', 'F', 'T', 'S', 'N', 'P', '2'};
constexpr char kMagicV1[8] = {'A', 'I', 'F', 'T', 'S', 'N', 'P', '1'};
constexpr uint32_t kEndOfRows = 0xFFFFFFFFu;
constexpr uint64_t kChecksumSeed = 0x5EED0F7AB1Eull;
constexpr uint64_t kReclaimEvery = 64;

uint64_t Mix64(uint64_t x) {
  // splitmix64's finaliser: every input bit affects every output bit.
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebull;
  x ^= x >> 31;
  return x;
}

const char* KindName(FeatureKeyKind kind) {
  return kind == FeatureKeyKind::kInt64 ? "int64" : "string";
}

Status WrongKind(FeatureKeyKind table, FeatureKeyKind given) {
  return Status::InvalidArgument(std::string("this feature table has ") + KindName(table) +
                                 " entity keys; got " + KindName(given) + " keys");
}

Status CheckTarget(const GatherTarget& t, int32_t width, size_t n) {
  if (t.num_columns < 0) return Status::InvalidArgument("num_columns must be >= 0");
  if (n == 0) return Status::Ok();
  if (t.status == nullptr) return Status::InvalidArgument("a gather needs a status array");
  if (t.num_columns == 0) return Status::Ok();
  if (t.columns == nullptr || t.defaults == nullptr || t.out == nullptr) {
    return Status::InvalidArgument("a gather needs columns, defaults and an output array");
  }
  if (t.out_stride < t.num_columns) {
    return Status::InvalidArgument("out_stride must be >= num_columns");
  }
  if (t.ttl_ns < 0) return Status::InvalidArgument("ttl must be >= 0");
  for (int32_t c = 0; c < t.num_columns; ++c) {
    if (t.columns[c] < 0 || t.columns[c] >= width) {
      return Status::InvalidArgument("column " + std::to_string(t.columns[c]) +
                                     " is out of range for a row of " + std::to_string(width) +
                                     " features");
    }
  }
  return Status::Ok();
}

// Buffered file output that hashes everything it writes.
class SnapshotWriter {
 public:
  explicit SnapshotWriter(std::FILE* f) : f_(f), hasher_(kChecksumSeed) {}
  bool Write(const void* p, size_t n) {
    hasher_.Update(p, n);
    return std::fwrite(p, 1, n, f_) == n;
  }
  uint64_t checksum() const { return hasher_.Digest().lo; }

 private:
  std::FILE* f_;
  Hasher hasher_;
};

// Reads a whole snapshot held in memory, checking bounds on every field.
class SnapshotReader {
 public:
  SnapshotReader(const char* data, size_t size) : p_(data), end_(data + size) {}
  bool Read(void* out, size_t n) {
    if (static_cast<size_t>(end_ - p_) < n) return false;
    std::memcpy(out, p_, n);
    p_ += n;
    return true;
  }
  const char* Take(size_t n) {
    if (static_cast<size_t>(end_ - p_) < n) return nullptr;
    const char* at = p_;
    p_ += n;
    return at;
  }
  const char* position() const { return p_; }
  bool at_end() const { return p_ == end_; }

 private:
  const char* p_;
  const char* end_;
};

}  // namespace

Status FeatureTableConfig::Validate() const {
  if (width < 1 || width > 65535) {
    return Status::InvalidArgument("feature table width must be 1..65535, got " +
                                   std::to_string(width));
  }
  if (shards < 1 || shards > 1024 || (shards & (shards - 1)) != 0) {
    return Status::InvalidArgument("shards must be a power of two in 1..1024, got " +
                                   std::to_string(shards));
  }
  if (initial_slots < 1) return Status::InvalidArgument("initial_slots must be >= 1");
  if (key_kind != FeatureKeyKind::kInt64 && key_kind != FeatureKeyKind::kString) {
    return Status::InvalidArgument("unknown key kind");
  }
  return Status::Ok();
}

Status FeatureTable::Create(const FeatureTableConfig& config, std::unique_ptr<FeatureTable>* out) {
  AIARCH_RETURN_IF_ERROR(config.Validate());
  out->reset(new FeatureTable(config));
  return Status::Ok();
}

FeatureTable::FeatureTable(const FeatureTableConfig& config)
    : config_(config), shard_bits_(0), seed_(ProcessHashSeed()) {
  while ((1 << shard_bits_) < config.shards) ++shard_bits_;
  shards_.reset(new Shard[static_cast<size_t>(config.shards)]);
  uint64_t per_shard = 16;
  const uint64_t wanted =
      static_cast<uint64_t>(config.initial_slots) / static_cast<uint64_t>(config.shards);
  while (per_shard < wanted) per_shard <<= 1;
  for (int s = 0; s < config.shards; ++s) {
    // Relaxed: the table is not yet shared with any thread.
    shards_[s].index.store(new Index(per_shard), std::memory_order_relaxed);
  }
}

FeatureTable::~FeatureTable() {
  for (int s = 0; s < config_.shards; ++s) {
    Shard& shard = shards_[s];
    shard.retired.FreeAll();
    // Relaxed: no other thread may use the table any more.
    Index* idx = shard.index.load(std::memory_order_relaxed);
    for (uint64_t i = 0; i <= idx->mask; ++i) {
      const Row* r = idx->slots[i].load(std::memory_order_relaxed);
      if (r != nullptr) Row::Free(const_cast<Row*>(r));
    }
    delete idx;
  }
}

uint64_t FeatureTable::HashInt64(int64_t key) const {
  return Mix64(static_cast<uint64_t>(key) + seed_);
}

uint64_t FeatureTable::HashBytes(const char* data, size_t size) const {
  Hasher h(seed_);
  h.Update(data, size);
  return h.Digest().lo;
}

FeatureTable::Shard& FeatureTable::ShardOf(uint64_t hash) const {
  // The top bits pick the shard; the low bits pick the slot inside it.
  const uint64_t s = shard_bits_ == 0 ? 0 : hash >> (64 - shard_bits_);
  return shards_[static_cast<size_t>(s)];
}

const FeatureTable::Row* FeatureTable::Find(uint64_t hash, const char* key,
                                            uint32_t key_size) const {
  // Acquire: pairs with the release store that published the index (Create
  // or a grow in UpsertOne), so its slots are initialised.
  const Index* idx = ShardOf(hash).index.load(std::memory_order_acquire);
  for (uint64_t i = hash & idx->mask;; i = (i + 1) & idx->mask) {
    // Acquire: pairs with the release store in UpsertOne that published the
    // row, so every byte of it is visible.
    const Row* r = idx->slots[i].load(std::memory_order_acquire);
    if (r == nullptr) return nullptr;
    if (r->hash == hash && r->key_size == key_size &&
        std::memcmp(r->key(config_.width), key, key_size) == 0) {
      return r;
    }
  }
}

void FeatureTable::CopyOut(const Row* row, size_t i, const GatherTarget& t) const {
  float* dst = t.out + static_cast<int64_t>(i) * t.out_stride;
  FeatureRowStatus st = FeatureRowStatus::kPresent;
  if (row == nullptr) {
    st = FeatureRowStatus::kMissing;
  } else if (t.ttl_ns > 0 && t.now_ns - row->event_ns > t.ttl_ns) {
    st = FeatureRowStatus::kExpired;
  }
  if (st == FeatureRowStatus::kPresent) {
    const float* src = row->values();
    for (int32_t c = 0; c < t.num_columns; ++c) dst[c] = src[t.columns[c]];
  } else {
    for (int32_t c = 0; c < t.num_columns; ++c) dst[c] = t.defaults[c];
  }
  const uint8_t code = static_cast<uint8_t>(st);
  if (t.status[i] < code) t.status[i] = code;
}

Status FeatureTable::GatherInt64(const int64_t* keys, size_t n, const GatherTarget& t) const {
  if (config_.key_kind != FeatureKeyKind::kInt64) {
    return WrongKind(config_.key_kind, FeatureKeyKind::kInt64);
  }
  AIARCH_RETURN_IF_ERROR(CheckTarget(t, config_.width, n));
  epoch::EnterRead();
  for (size_t i = 0; i < n; ++i) {
    const int64_t k = keys[i];
    CopyOut(Find(HashInt64(k), reinterpret_cast<const char*>(&k), sizeof k), i, t);
  }
  epoch::ExitRead();
  return Status::Ok();
}

void FeatureTable::CopyBlob(const Row* row, size_t i, int64_t now_ns, int64_t ttl_ns,
                            std::vector<std::string>* blobs, uint8_t* status) const {
  FeatureRowStatus st = FeatureRowStatus::kPresent;
  if (row == nullptr) {
    st = FeatureRowStatus::kMissing;
  } else if (ttl_ns > 0 && now_ns - row->event_ns > ttl_ns) {
    st = FeatureRowStatus::kExpired;
  }
  if (st == FeatureRowStatus::kPresent) {
    (*blobs)[i].assign(row->blob(config_.width), row->blob_size);
  } else {
    (*blobs)[i].clear();
  }
  status[i] = static_cast<uint8_t>(st);
}

Status FeatureTable::GatherBlobsInt64(const int64_t* keys, size_t n, int64_t now_ns, int64_t ttl_ns,
                                      std::vector<std::string>* blobs, uint8_t* status) const {
  if (config_.key_kind != FeatureKeyKind::kInt64) {
    return WrongKind(config_.key_kind, FeatureKeyKind::kInt64);
  }
  if (ttl_ns < 0) return Status::InvalidArgument("ttl must be >= 0");
  blobs->resize(n);
  epoch::EnterRead();
  for (size_t i = 0; i < n; ++i) {
    const int64_t k = keys[i];
    CopyBlob(Find(HashInt64(k), reinterpret_cast<const char*>(&k), sizeof k), i, now_ns, ttl_ns,
             blobs, status);
  }
  epoch::ExitRead();
  return Status::Ok();
}

Status FeatureTable::GatherBlobsStrings(const FeatureKey* keys, size_t n, int64_t now_ns,
                                        int64_t ttl_ns, std::vector<std::string>* blobs,
                                        uint8_t* status) const {
  if (config_.key_kind != FeatureKeyKind::kString) {
    return WrongKind(config_.key_kind, FeatureKeyKind::kString);
  }
  if (ttl_ns < 0) return Status::InvalidArgument("ttl must be >= 0");
  blobs->resize(n);
  epoch::EnterRead();
  for (size_t i = 0; i < n; ++i) {
    CopyBlob(Find(HashBytes(keys[i].data, keys[i].size), keys[i].data, keys[i].size), i, now_ns,
             ttl_ns, blobs, status);
  }
  epoch::ExitRead();
  return Status::Ok();
}

Status FeatureTable::GatherStrings(const FeatureKey* keys, size_t n, const GatherTarget& t) const {
  if (config_.key_kind != FeatureKeyKind::kString) {
    return WrongKind(config_.key_kind, FeatureKeyKind::kString);
  }
  AIARCH_RETURN_IF_ERROR(CheckTarget(t, config_.width, n));
  epoch::EnterRead();
  for (size_t i = 0; i < n; ++i) {
    CopyOut(Find(HashBytes(keys[i].data, keys[i].size), keys[i].data, keys[i].size), i, t);
  }
  epoch::ExitRead();
  return Status::Ok();
}

bool FeatureTable::ReadInt64(int64_t key, float* values, int64_t* event_ns) const {
  if (config_.key_kind != FeatureKeyKind::kInt64) return false;
  epoch::EnterRead();
  const Row* r = Find(HashInt64(key), reinterpret_cast<const char*>(&key), sizeof key);
  if (r != nullptr) {
    std::memcpy(values, r->values(), sizeof(float) * static_cast<size_t>(config_.width));
    *event_ns = r->event_ns;
  }
  epoch::ExitRead();
  return r != nullptr;
}

bool FeatureTable::ReadString(const FeatureKey& key, float* values, int64_t* event_ns) const {
  if (config_.key_kind != FeatureKeyKind::kString) return false;
  epoch::EnterRead();
  const Row* r = Find(HashBytes(key.data, key.size), key.data, key.size);
  if (r != nullptr) {
    std::memcpy(values, r->values(), sizeof(float) * static_cast<size_t>(config_.width));
    *event_ns = r->event_ns;
  }
  epoch::ExitRead();
  return r != nullptr;
}

bool FeatureTable::UpsertOne(uint64_t hash, const char* key, uint32_t key_size, const float* values,
                             const FeatureKey& blob, int64_t event_ns,
                             std::vector<Shard*>* touched) {
  Shard& shard = ShardOf(hash);
  std::lock_guard<std::mutex> lock(shard.mu);
  // Relaxed: the index is only replaced under mu, which we hold.
  Index* idx = shard.index.load(std::memory_order_relaxed);
  uint64_t i = hash & idx->mask;
  for (;; i = (i + 1) & idx->mask) {
    // Relaxed: slots are only written under mu, which we hold.
    const Row* r = idx->slots[i].load(std::memory_order_relaxed);
    if (r == nullptr) break;
    if (r->hash == hash && r->key_size == key_size &&
        std::memcmp(r->key(config_.width), key, key_size) == 0) {
      if (r->event_ns > event_ns) {
        // A counter only; orders nothing.
        stale_.fetch_add(1, std::memory_order_relaxed);
        return false;
      }
      Row* fresh = Row::Make(hash, key, key_size, values, blob, event_ns, config_.width);
      // Release: pairs with the acquire slot load in Find(); a reader that
      // sees the new row sees all of its bytes.
      idx->slots[i].store(fresh, std::memory_order_release);
      shard.retired.Retire(const_cast<Row*>(r), &Row::Free);
      if (++shard.retired_since_reclaim == kReclaimEvery) touched->push_back(&shard);
      upserts_.fetch_add(1, std::memory_order_relaxed);  // a counter; orders nothing
      return true;
    }
  }
  // A new key. Grow first when the index would pass half full, so probes stay short.
  if ((shard.count + 1) * 2 > idx->mask + 1) {
    Index* bigger = new Index((idx->mask + 1) * 2);
    for (uint64_t j = 0; j <= idx->mask; ++j) {
      const Row* r = idx->slots[j].load(std::memory_order_relaxed);  // under mu
      if (r == nullptr) continue;
      uint64_t k = r->hash & bigger->mask;
      while (bigger->slots[k].load(std::memory_order_relaxed) != nullptr) {
        k = (k + 1) & bigger->mask;
      }
      // Relaxed: `bigger` is published below by a release store.
      bigger->slots[k].store(r, std::memory_order_relaxed);
    }
    // Release: pairs with the acquire index load in Find(), publishing the
    // copied slots together with the index.
    shard.index.store(bigger, std::memory_order_release);
    shard.retired.Retire(idx, &Index::Free);
    if (++shard.retired_since_reclaim == kReclaimEvery) touched->push_back(&shard);
    idx = bigger;
    i = hash & idx->mask;
    while (idx->slots[i].load(std::memory_order_relaxed) != nullptr) i = (i + 1) & idx->mask;
  }
  Row* fresh = Row::Make(hash, key, key_size, values, blob, event_ns, config_.width);
  // Release: pairs with the acquire slot load in Find().
  idx->slots[i].store(fresh, std::memory_order_release);
  ++shard.count;
  upserts_.fetch_add(1, std::memory_order_relaxed);  // a counter; orders nothing
  return true;
}

void FeatureTable::ReclaimTouched(std::vector<Shard*>* touched) {
  for (Shard* s : *touched) {
    s->retired.Reclaim();
    std::lock_guard<std::mutex> lock(s->mu);
    s->retired_since_reclaim = 0;
  }
  touched->clear();
}

Status FeatureTable::UpsertInt64(const int64_t* keys, size_t n, const float* values,
                                 const int64_t* event_ns, size_t* applied,
                                 const FeatureKey* blobs) {
  if (config_.key_kind != FeatureKeyKind::kInt64) {
    return WrongKind(config_.key_kind, FeatureKeyKind::kInt64);
  }
  std::vector<Shard*> touched;
  size_t done = 0;
  const size_t w = static_cast<size_t>(config_.width);
  for (size_t i = 0; i < n; ++i) {
    const int64_t k = keys[i];
    done += UpsertOne(HashInt64(k), reinterpret_cast<const char*>(&k), sizeof k, values + i * w,
                      blobs != nullptr ? blobs[i] : FeatureKey{}, event_ns[i], &touched);
  }
  ReclaimTouched(&touched);
  if (applied != nullptr) *applied = done;
  return Status::Ok();
}

Status FeatureTable::UpsertStrings(const FeatureKey* keys, size_t n, const float* values,
                                   const int64_t* event_ns, size_t* applied,
                                   const FeatureKey* blobs) {
  if (config_.key_kind != FeatureKeyKind::kString) {
    return WrongKind(config_.key_kind, FeatureKeyKind::kString);
  }
  std::vector<Shard*> touched;
  size_t done = 0;
  const size_t w = static_cast<size_t>(config_.width);
  for (size_t i = 0; i < n; ++i) {
    done +=
        UpsertOne(HashBytes(keys[i].data, keys[i].size), keys[i].data, keys[i].size, values + i * w,
                  blobs != nullptr ? blobs[i] : FeatureKey{}, event_ns[i], &touched);
  }
  ReclaimTouched(&touched);
  if (applied != nullptr) *applied = done;
  return Status::Ok();
}

FeatureTableCounters FeatureTable::Counters() const {
  FeatureTableCounters c;
  c.upserts = upserts_.load(std::memory_order_relaxed);  // counters; order nothing
  c.stale = stale_.load(std::memory_order_relaxed);
  for (int s = 0; s < config_.shards; ++s) {
    std::lock_guard<std::mutex> lock(shards_[s].mu);
    c.entities += static_cast<int64_t>(shards_[s].count);
  }
  return c;
}

Status FeatureTable::Snapshot(const std::string& path) const {
  const std::string tmp = path + ".tmp";
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (f == nullptr) {
    return Status::Unavailable("cannot write feature snapshot " + tmp + ": " +
                               std::strerror(errno));
  }
  SnapshotWriter w(f);
  bool ok = w.Write(kMagic, sizeof kMagic);
  const uint32_t width = static_cast<uint32_t>(config_.width);
  const uint8_t kind[4] = {static_cast<uint8_t>(config_.key_kind), 0, 0, 0};
  ok = ok && w.Write(&width, sizeof width) && w.Write(kind, sizeof kind);
  uint64_t count = 0;
  const size_t value_bytes = sizeof(float) * width;
  for (int s = 0; ok && s < config_.shards; ++s) {
    // Holding the shard's mutex keeps its rows alive and its index fixed.
    std::lock_guard<std::mutex> lock(shards_[s].mu);
    const Index* idx = shards_[s].index.load(std::memory_order_relaxed);  // under mu
    for (uint64_t i = 0; ok && i <= idx->mask; ++i) {
      const Row* r = idx->slots[i].load(std::memory_order_relaxed);  // under mu
      if (r == nullptr) continue;
      ok = w.Write(&r->key_size, sizeof r->key_size) &&
           w.Write(r->key(config_.width), r->key_size) &&
           w.Write(&r->event_ns, sizeof r->event_ns) && w.Write(r->values(), value_bytes) &&
           w.Write(&r->blob_size, sizeof r->blob_size) &&
           w.Write(r->blob(config_.width), r->blob_size);
      ++count;
    }
  }
  ok = ok && w.Write(&kEndOfRows, sizeof kEndOfRows) && w.Write(&count, sizeof count);
  const uint64_t checksum = w.checksum();
  ok = ok && std::fwrite(&checksum, 1, sizeof checksum, f) == sizeof checksum;
  ok = (std::fclose(f) == 0) && ok;
  if (!ok || std::rename(tmp.c_str(), path.c_str()) != 0) {
    const std::string why = std::strerror(errno);
    std::remove(tmp.c_str());
    return Status::Unavailable("cannot write feature snapshot " + path + ": " + why);
  }
  return Status::Ok();
}

Status FeatureTable::LoadSnapshot(const std::string& path, size_t* loaded) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) {
    return Status::NotFound("cannot read feature snapshot " + path + ": " + std::strerror(errno));
  }
  std::vector<char> data;
  char buf[1 << 16];
  size_t got;
  while ((got = std::fread(buf, 1, sizeof buf, f)) > 0) data.insert(data.end(), buf, buf + got);
  std::fclose(f);

  const auto corrupt = [&](const char* what) {
    return Status::InvalidArgument("feature snapshot " + path + " is corrupt: " + what);
  };
  SnapshotReader r(data.data(), data.size());
  char magic[sizeof kMagic];
  uint32_t width = 0;
  uint8_t kind[4];
  if (!r.Read(magic, sizeof magic) || (std::memcmp(magic, kMagic, sizeof kMagic) != 0 &&
                                       std::memcmp(magic, kMagicV1, sizeof kMagicV1) != 0)) {
    return corrupt("not a feature snapshot (bad magic)");
  }
  const bool has_blobs = std::memcmp(magic, kMagic, sizeof kMagic) == 0;
  if (!r.Read(&width, sizeof width) || !r.Read(kind, sizeof kind)) return corrupt("short header");
  if (static_cast<int32_t>(width) != config_.width || kind[0] != uint8_t(config_.key_kind)) {
    return Status::InvalidArgument(
        "feature snapshot " + path + " holds rows of " + std::to_string(width) + " features with " +
        KindName(static_cast<FeatureKeyKind>(kind[0] > 1 ? 1 : kind[0])) +
        " keys; this table has " + std::to_string(config_.width) + " features with " +
        KindName(config_.key_kind) + " keys");
  }
  std::vector<std::string> keys;
  std::vector<std::string> blobs;
  std::vector<int64_t> times;
  std::vector<float> values;
  const size_t value_bytes = sizeof(float) * width;
  for (;;) {
    uint32_t key_size = 0;
    if (!r.Read(&key_size, sizeof key_size)) return corrupt("truncated row");
    if (key_size == kEndOfRows) break;
    const char* key = r.Take(key_size);
    int64_t event_ns = 0;
    const char* vals = key == nullptr
                           ? nullptr
                           : (r.Read(&event_ns, sizeof event_ns) ? r.Take(value_bytes) : nullptr);
    if (vals == nullptr) return corrupt("truncated row");
    uint32_t blob_size = 0;
    const char* blob = nullptr;
    if (has_blobs) {
      if (!r.Read(&blob_size, sizeof blob_size)) return corrupt("truncated row");
      blob = r.Take(blob_size);
      if (blob == nullptr) return corrupt("truncated row");
    }
    blobs.emplace_back(blob == nullptr ? "" : std::string(blob, blob_size));
    if (config_.key_kind == FeatureKeyKind::kInt64 && key_size != sizeof(int64_t)) {
      return corrupt("an int64 key is not 8 bytes");
    }
    keys.emplace_back(key, key_size);
    times.push_back(event_ns);
    const size_t at = values.size();
    values.resize(at + width);
    std::memcpy(values.data() + at, vals, value_bytes);
  }
  uint64_t count = 0;
  if (!r.Read(&count, sizeof count)) return corrupt("truncated trailer");
  Hasher h(kChecksumSeed);
  h.Update(data.data(), static_cast<size_t>(r.position() - data.data()));
  uint64_t checksum = 0;
  if (!r.Read(&checksum, sizeof checksum) || !r.at_end()) return corrupt("truncated trailer");
  if (checksum != h.Digest().lo) return corrupt("checksum mismatch");
  if (count != keys.size()) return corrupt("row count mismatch");

  size_t applied = 0;
  std::vector<FeatureKey> blob_refs(blobs.size());
  for (size_t i = 0; i < blobs.size(); ++i) {
    blob_refs[i] = FeatureKey{blobs[i].data(), static_cast<uint32_t>(blobs[i].size())};
  }
  if (config_.key_kind == FeatureKeyKind::kInt64) {
    std::vector<int64_t> ints(keys.size());
    for (size_t i = 0; i < keys.size(); ++i) std::memcpy(&ints[i], keys[i].data(), sizeof(int64_t));
    AIARCH_RETURN_IF_ERROR(UpsertInt64(ints.data(), ints.size(), values.data(), times.data(),
                                       &applied, blob_refs.data()));
  } else {
    std::vector<FeatureKey> refs(keys.size());
    for (size_t i = 0; i < keys.size(); ++i) {
      refs[i] = FeatureKey{keys[i].data(), static_cast<uint32_t>(keys[i].size())};
    }
    AIARCH_RETURN_IF_ERROR(UpsertStrings(refs.data(), refs.size(), values.data(), times.data(),
                                         &applied, blob_refs.data()));
  }
  if (loaded != nullptr) *loaded = keys.size();
  return Status::Ok();
}

// ---------------------------------------------------------------- plans

Status FeaturePlan::Create(std::vector<FeaturePlanSegment> segments, int32_t out_width,
                           std::unique_ptr<FeaturePlan>* out) {
  if (segments.empty()) return Status::InvalidArgument("a feature plan needs at least one table");
  if (out_width < 1) return Status::InvalidArgument("a feature plan needs at least one column");
  std::vector<bool> used(static_cast<size_t>(out_width), false);
  const FeatureKeyKind kind =
      segments[0].table ? segments[0].table->key_kind() : FeatureKeyKind::kInt64;
  for (const auto& s : segments) {
    if (!s.table) return Status::InvalidArgument("a feature plan segment has no table");
    if (s.table->key_kind() != kind) {
      return Status::InvalidArgument("every table of a feature plan must share one key kind");
    }
    if (s.defaults.size() != s.columns.size()) {
      return Status::InvalidArgument("a feature plan segment needs one default per column");
    }
    if (s.ttl_ns < 0) return Status::InvalidArgument("ttl must be >= 0");
    for (size_t c = 0; c < s.columns.size(); ++c) {
      if (s.columns[c] < 0 || s.columns[c] >= s.table->width()) {
        return Status::InvalidArgument("column " + std::to_string(s.columns[c]) +
                                       " is out of range for a row of " +
                                       std::to_string(s.table->width()) + " features");
      }
      const int64_t at = int64_t{s.out_offset} + static_cast<int64_t>(c);
      if (s.out_offset < 0 || at >= out_width || used[static_cast<size_t>(at)]) {
        return Status::InvalidArgument("feature plan output columns overlap or exceed the width");
      }
      used[static_cast<size_t>(at)] = true;
    }
  }
  std::unique_ptr<FeaturePlan> plan(new FeaturePlan());
  plan->segments_ = std::move(segments);
  plan->out_width_ = out_width;
  plan->key_kind_ = kind;
  *out = std::move(plan);
  return Status::Ok();
}

Status FeaturePlan::GatherInt64(const int64_t* keys, size_t n, int64_t now_ns, float* out,
                                uint8_t* status) const {
  std::memset(status, 0, n);
  for (const auto& s : segments_) {
    GatherTarget t{s.columns.data(),
                   static_cast<int32_t>(s.columns.size()),
                   s.defaults.data(),
                   out + s.out_offset,
                   out_width_,
                   status,
                   now_ns,
                   s.ttl_ns};
    AIARCH_RETURN_IF_ERROR(s.table->GatherInt64(keys, n, t));
  }
  return Status::Ok();
}

Status FeaturePlan::GatherStrings(const FeatureKey* keys, size_t n, int64_t now_ns, float* out,
                                  uint8_t* status) const {
  std::memset(status, 0, n);
  for (const auto& s : segments_) {
    GatherTarget t{s.columns.data(),
                   static_cast<int32_t>(s.columns.size()),
                   s.defaults.data(),
                   out + s.out_offset,
                   out_width_,
                   status,
                   now_ns,
                   s.ttl_ns};
    AIARCH_RETURN_IF_ERROR(s.table->GatherStrings(keys, n, t));
  }
  return Status::Ok();
}

}  // namespace aiarch
