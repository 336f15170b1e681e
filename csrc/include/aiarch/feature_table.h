// Feature table: the in-process online feature store. Maps an entity key (an
// int64 or a byte string, fixed per table) to one row of `width` 32-bit
// slots, an optional byte string (the row's blob: variable-length values such
// as strings, which the caller encodes) and the row's event time, and gathers
// the slots of many entities into one contiguous array in a single call.
// Slots are copied as float32 words, bit for bit: a caller may store wider
// numbers (int64, float64) across two slots and reinterpret what it gathers.
//
// Concurrency contract
// - Gather*(): lock-free. Readers take no mutex and write no shared memory
//   except their own epoch announcement (src/epoch.h); they never wait for a
//   writer. A gather of N keys is one read section.
// - Upsert*(): blocking. A writer takes the mutex of ONE shard per key (keys
//   are spread over `shards` shards by hash), so writers of different shards
//   proceed in parallel. Rows are copy-on-write: an upsert publishes a new,
//   immutable row with one release store and retires the old one, so a reader
//   sees either the whole old row or the whole new row, never a mix (no torn
//   rows, by construction rather than by retry).
// - Ordering: newer event time wins. An upsert whose event time is older than
//   the stored row's is dropped (counted as stale); an equal event time
//   replaces. A Gather that starts after an Upsert returned sees that row (or
//   a newer one). Gathers concurrent with an Upsert may see either version.
//   Rows of different keys are independent: a gather is not a snapshot of the
//   whole table.
// - Memory reclamation: replaced rows and outgrown indexes are freed only
//   after every reader that might still hold them has left its read section.
// - Allocation: an upsert allocates one block per row (and a new index when a
//   shard grows); Gather never allocates. Rows are never deleted: an entity
//   whose row is older than the caller's TTL reads as EXPIRED.
// - Not provided: deletion, a consistent multi-key snapshot, or bounded
//   memory (a table holds every entity ever written).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "aiarch/status.h"

namespace aiarch {

enum class FeatureKeyKind : uint8_t { kInt64 = 0, kString = 1 };

// Per-row outcome of a gather. Ordered by severity: a plan that reads several
// tables keeps the largest status of a row.
enum class FeatureRowStatus : uint8_t { kPresent = 0, kExpired = 1, kMissing = 2 };

struct FeatureTableConfig {
  int32_t width = 0;  // float32 values per row, 1..65535
  FeatureKeyKind key_kind = FeatureKeyKind::kInt64;
  int shards = 16;               // power of two, 1..1024
  int64_t initial_slots = 1024;  // hash slots over all shards
  Status Validate() const;
};

// A string key: bytes that outlive the call. Not owned.
struct FeatureKey {
  const char* data = nullptr;
  uint32_t size = 0;
};

// Where a gather writes: selected columns of each row, in order, at
// out + i * out_stride (floats) for the i-th key.
struct GatherTarget {
  const int32_t* columns = nullptr;  // indices into the row; num_columns of them
  int32_t num_columns = 0;
  const float* defaults = nullptr;  // num_columns values written for missing/expired rows
  float* out = nullptr;
  int64_t out_stride = 0;     // floats between consecutive output rows
  uint8_t* status = nullptr;  // per key: set to max(status[i], this table's status)
  int64_t now_ns = 0;         // the reader's clock (same epoch as event times)
  int64_t ttl_ns = 0;         // a row older than now - ttl is EXPIRED; 0 = no TTL
};

struct FeatureTableCounters {
  uint64_t upserts = 0;  // rows written (new or replaced)
  uint64_t stale = 0;    // upserts dropped because the stored row was newer
  int64_t entities = 0;  // distinct keys held
};

class FeatureTable {
 public:
  // Creates an empty table. On success *out owns it; on failure *out is unchanged.
  static Status Create(const FeatureTableConfig& config, std::unique_ptr<FeatureTable>* out);
  ~FeatureTable();  // no reader or writer may remain
  FeatureTable(const FeatureTable&) = delete;
  FeatureTable& operator=(const FeatureTable&) = delete;

  // Writes n rows (values: n * width floats, row-major) with their event
  // times; newer event time wins per key. blobs (may be null: every row's
  // blob is empty) holds n byte strings stored with the rows, replaced with
  // them. *applied (may be null) receives the number of rows written. Fails
  // without writing anything when the table's key kind differs. Thread-safe.
  // Allocates.
  Status UpsertInt64(const int64_t* keys, size_t n, const float* values, const int64_t* event_ns,
                     size_t* applied, const FeatureKey* blobs = nullptr);
  Status UpsertStrings(const FeatureKey* keys, size_t n, const float* values,
                       const int64_t* event_ns, size_t* applied, const FeatureKey* blobs = nullptr);

  // Copies the selected columns of each key's row into the target, or the
  // defaults for a missing or expired row, and merges each row's status.
  // Validates the target once, then never fails. Thread-safe. Lock-free.
  // Never allocates.
  Status GatherInt64(const int64_t* keys, size_t n, const GatherTarget& target) const;
  Status GatherStrings(const FeatureKey* keys, size_t n, const GatherTarget& target) const;

  // Copies the blob of each key's row into (*blobs)[i] (resized to n), or
  // clears it for a missing or expired row, and sets status[i] to that row's
  // status. Thread-safe. Lock-free. Allocates (the copied strings).
  Status GatherBlobsInt64(const int64_t* keys, size_t n, int64_t now_ns, int64_t ttl_ns,
                          std::vector<std::string>* blobs, uint8_t* status) const;
  Status GatherBlobsStrings(const FeatureKey* keys, size_t n, int64_t now_ns, int64_t ttl_ns,
                            std::vector<std::string>* blobs, uint8_t* status) const;

  // Reads one row: the full row into values (width floats) and its event time.
  // Returns false when the key is absent. Thread-safe. Lock-free.
  bool ReadInt64(int64_t key, float* values, int64_t* event_ns) const;
  bool ReadString(const FeatureKey& key, float* values, int64_t* event_ns) const;

  // Writes every row to `path` (via a temporary file renamed into place, so
  // a crash leaves the previous snapshot intact). Each row is copied whole;
  // rows written meanwhile may or may not be included. Writers of a shard
  // wait while that shard is written. Thread-safe.
  Status Snapshot(const std::string& path) const;
  // Upserts every row of a snapshot (newer event time still wins). Fails,
  // writing nothing, when the file is corrupt or its key kind or width differ.
  // *loaded (may be null) receives the rows read. Thread-safe.
  Status LoadSnapshot(const std::string& path, size_t* loaded);

  int32_t width() const { return config_.width; }
  FeatureKeyKind key_kind() const { return config_.key_kind; }
  FeatureTableCounters Counters() const;  // Thread-safe.

 private:
  struct Row;
  struct Index;
  struct Shard;

  explicit FeatureTable(const FeatureTableConfig& config);
  uint64_t HashInt64(int64_t key) const;
  uint64_t HashBytes(const char* data, size_t size) const;
  Shard& ShardOf(uint64_t hash) const;
  const Row* Find(uint64_t hash, const char* key, uint32_t key_size) const;
  void CopyOut(const Row* row, size_t i, const GatherTarget& t) const;
  void CopyBlob(const Row* row, size_t i, int64_t now_ns, int64_t ttl_ns,
                std::vector<std::string>* blobs, uint8_t* status) const;
  // Writes one row under its shard's lock; returns true when applied.
  bool UpsertOne(uint64_t hash, const char* key, uint32_t key_size, const float* values,
                 const FeatureKey& blob, int64_t event_ns, std::vector<Shard*>* touched);
  void ReclaimTouched(std::vector<Shard*>* touched);

  FeatureTableConfig config_;
  int shard_bits_;
  uint64_t seed_;
  std::unique_ptr<Shard[]> shards_;
  std::atomic<uint64_t> upserts_{0};
  std::atomic<uint64_t> stale_{0};
};

// One table's part of a multi-table lookup: which columns, their defaults,
// the TTL, and where they land in the output row.
struct FeaturePlanSegment {
  std::shared_ptr<FeatureTable> table;
  std::vector<int32_t> columns;
  std::vector<float> defaults;  // one per column
  int64_t ttl_ns = 0;
  int32_t out_offset = 0;  // first output column of this segment
};

// A resolved lookup over one or more tables that share a key kind: one call
// gathers every segment into one [n, out_width] float32 array. Immutable
// after Create; thread-safe.
class FeaturePlan {
 public:
  // Validates the segments (same key kind, columns in range, one default per
  // column, output columns inside out_width and not overlapping).
  static Status Create(std::vector<FeaturePlanSegment> segments, int32_t out_width,
                       std::unique_ptr<FeaturePlan>* out);

  // out: n * out_width floats; status: n bytes (overwritten). Lock-free.
  // Never allocates.
  Status GatherInt64(const int64_t* keys, size_t n, int64_t now_ns, float* out,
                     uint8_t* status) const;
  Status GatherStrings(const FeatureKey* keys, size_t n, int64_t now_ns, float* out,
                       uint8_t* status) const;

  int32_t out_width() const { return out_width_; }
  FeatureKeyKind key_kind() const { return key_kind_; }

 private:
  FeaturePlan() = default;
  std::vector<FeaturePlanSegment> segments_;
  int32_t out_width_ = 0;
  FeatureKeyKind key_kind_ = FeatureKeyKind::kInt64;
};

}  // namespace aiarch
