// Response cache: 128-bit-hashed keys verified byte-for-byte, a byte budget,
// SIEVE eviction, TTL, and generation-based invalidation.
//
// Concurrency contract
// - Lookup(): lock-free. It takes no mutex, writes no shared list, and on a
//   hit at most sets the entry's "visited" bit (only when it is clear). It
//   cannot block behind Insert/Invalidate.
// - Insert(), Erase(), Clear(): take the mutex of ONE shard (keys are spread
//   over `shards` shards by hash). Evictions happen inside Insert.
// - Invalidate(): wait-free generation bump; entries of older generations are
//   never returned again and are evicted first (they are never re-visited).
// - Memory reclamation: an entry unlinked by a writer is freed only after
//   every reader that might still see it has left its read section
//   (epoch-based reclamation; see src/epoch.h). A reader never touches freed
//   memory.
// - Ordering: a Lookup that starts after Insert() returned sees the entry
//   (unless it was evicted or expired since). A Lookup concurrent with Insert
//   may or may not see it. Invalidate() happens-before any Lookup that starts
//   after it returns: that Lookup misses every older entry.
// - Allocation: Insert allocates one block per entry; Lookup never allocates
//   (the visitor may).
// - Not provided: exact LRU order, per-key locking, or a bound on how long a
//   retired entry waits for reclamation beyond "the next writer call after
//   every reader left".
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>

#include "aiarch/hash.h"

namespace aiarch {

struct CacheConfig {
  int64_t max_bytes = 64ll << 20;  // budget over keys + values + per-entry overhead
  int64_t ttl_ns = 0;              // 0 = entries never expire
  int shards = 16;                 // power of two; writers lock one shard
  int64_t buckets = 1 << 16;       // hash buckets over all shards (power of two)
};

struct CacheCounters {
  uint64_t hits = 0;
  uint64_t misses = 0;
  uint64_t inserts = 0;
  uint64_t evictions = 0;
  uint64_t expirations = 0;  // lookups that found an expired entry
  uint64_t rejected = 0;     // inserts larger than a shard's budget
  int64_t bytes = 0;         // currently charged bytes
  int64_t entries = 0;
};

class ResponseCache {
 public:
  // Called with the stored value while the entry is protected; the span is
  // valid only during the call. Must not call back into the cache.
  using Visitor = std::function<void(const uint8_t* value, size_t size)>;

  explicit ResponseCache(const CacheConfig& config);
  ~ResponseCache();
  ResponseCache(const ResponseCache&) = delete;
  ResponseCache& operator=(const ResponseCache&) = delete;

  // Finds `key` whose stored key bytes equal `key_bytes` and whose
  // generation is current and not expired at now_ns; calls visit on a hit.
  // Returns true on a hit. Thread-safe. Lock-free. Never allocates.
  bool Lookup(const Hash128& key, const uint8_t* key_bytes, size_t key_size, int64_t now_ns,
              const Visitor& visit);
  // Same, template form for callers that must avoid std::function (hot loops).
  template <typename F>
  bool LookupWith(const Hash128& key, const uint8_t* key_bytes, size_t key_size, int64_t now_ns,
                  F&& visit);

  // Stores (key, key_bytes) -> value, replacing an existing entry with the
  // same key, evicting by SIEVE until the shard is within budget. Returns
  // false when the entry alone exceeds the shard budget. Thread-safe (locks
  // one shard). Allocates one block.
  bool Insert(const Hash128& key, const uint8_t* key_bytes, size_t key_size, const uint8_t* value,
              size_t value_size, int64_t now_ns);

  // Removes `key` if present. Thread-safe (locks one shard).
  bool Erase(const Hash128& key, const uint8_t* key_bytes, size_t key_size);
  // Makes every current entry unreachable. Thread-safe. Wait-free.
  void Invalidate();
  // Removes every entry now. Thread-safe (locks each shard in turn).
  void Clear();

  uint64_t generation() const;
  CacheCounters Counters() const;  // Thread-safe; counters are read one by one.
  const CacheConfig& config() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;

  // Read-section helpers for LookupWith (defined in cache.cc). FindEntry
  // must run inside a read section; the value span stays valid until it ends.
  const void* FindEntry(const Hash128& key, const uint8_t* key_bytes, size_t key_size,
                        int64_t now_ns, const uint8_t** value, size_t* value_size);
  static void EnterRead();
  static void ExitRead();

  // Holds a read section open for its scope, so that a visitor that throws
  // still leaves it (a section left open would stall reclamation forever).
  class ReadSection {
   public:
    ReadSection() { EnterRead(); }
    ~ReadSection() { ExitRead(); }
    ReadSection(const ReadSection&) = delete;
    ReadSection& operator=(const ReadSection&) = delete;
  };
};

template <typename F>
bool ResponseCache::LookupWith(const Hash128& key, const uint8_t* key_bytes, size_t key_size,
                               int64_t now_ns, F&& visit) {
  ReadSection section;
  const uint8_t* value = nullptr;
  size_t size = 0;
  if (FindEntry(key, key_bytes, key_size, now_ns, &value, &size) == nullptr) return false;
  visit(value, size);
  return true;
}

}  // namespace aiarch
