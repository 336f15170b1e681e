#include "aiarch/cache.h"

#include <algorithm>
#include <cstring>
#include <mutex>
#include <new>

#include "epoch.h"

// Structure
// - A fixed array of bucket heads (std::atomic<Entry*>) split evenly over the
//   shards: shard = top bits of key.hi, bucket = low bits of key.lo inside
//   the shard's range. A chain is written only under its shard's mutex and
//   read by Lookup without any lock.
// - One allocation per entry: the header below, then the key bytes, then the
//   value bytes. Everything a reader touches except `visited` and `next` is
//   written before the entry is published and never changed after.
// - Per shard, a SIEVE queue (newest..oldest) threaded through the entries
//   and a hand, touched only under the shard mutex. Readers never see it.
// - Unlinked entries go to a per-cache epoch::RetireList and are freed by a
//   later writer call once every reader that could hold them has left.
//
// Insert of a key that is already present links the new entry in place of
// the old one (a reader walking the chain sees one or the other, never a
// torn mix) and retires the old one. When the new entry is rejected for
// size, the old one is still removed: a failed Insert must not leave the
// value it was meant to replace.

#if defined(__clang__)
#define AIARCH_CAPABILITY(x) __attribute__((capability(x)))
#define AIARCH_SCOPED_CAPABILITY __attribute__((scoped_lockable))
#define AIARCH_GUARDED_BY(x) __attribute__((guarded_by(x)))
#define AIARCH_REQUIRES(...) __attribute__((requires_capability(__VA_ARGS__)))
#define AIARCH_ACQUIRE(...) __attribute__((acquire_capability(__VA_ARGS__)))
#define AIARCH_RELEASE(...) __attribute__((release_capability(__VA_ARGS__)))
#else
#define AIARCH_CAPABILITY(x)
#define AIARCH_SCOPED_CAPABILITY
#define AIARCH_GUARDED_BY(x)
#define AIARCH_REQUIRES(...)
#define AIARCH_ACQUIRE(...)
#define AIARCH_RELEASE(...)
#endif

namespace aiarch {
namespace {

// std::mutex carries no capability annotation in libstdc++; this wrapper lets
// -Wthread-safety check the GUARDED_BY fields below.
class AIARCH_CAPABILITY("mutex") Mutex {
 public:
  void Lock() AIARCH_ACQUIRE() { mu_.lock(); }
  void Unlock() AIARCH_RELEASE() { mu_.unlock(); }

 private:
  std::mutex mu_;
};

class AIARCH_SCOPED_CAPABILITY MutexLock {
 public:
  explicit MutexLock(Mutex* mu) AIARCH_ACQUIRE(mu) : mu_(mu) { mu_->Lock(); }
  ~MutexLock() AIARCH_RELEASE() { mu_->Unlock(); }
  MutexLock(const MutexLock&) = delete;
  MutexLock& operator=(const MutexLock&) = delete;

 private:
  Mutex* mu_;
};

struct Entry {
  std::atomic<Entry*> next{nullptr};  // chain link; see the orders in Link/Unlink
  Hash128 hash;
  uint64_t generation = 0;
  int64_t expiry_ns = 0;  // 0 = never
  size_t key_size = 0;
  size_t value_size = 0;
  // A SIEVE hint: set by readers (relaxed, only when clear), cleared by the
  // hand. A lost or late update only changes which entry is evicted.
  std::atomic<uint8_t> visited{0};
  // SIEVE queue links, under the shard mutex only.
  Entry* newer = nullptr;
  Entry* older = nullptr;

  uint8_t* key() { return reinterpret_cast<uint8_t*>(this + 1); }
  const uint8_t* key() const { return reinterpret_cast<const uint8_t*>(this + 1); }
  const uint8_t* value() const { return key() + key_size; }
  int64_t charge() const { return static_cast<int64_t>(sizeof(Entry) + key_size + value_size); }
  bool Expired(int64_t now_ns) const { return expiry_ns != 0 && now_ns >= expiry_ns; }
};

Entry* NewEntry(const Hash128& hash, const uint8_t* key, size_t key_size, const uint8_t* value,
                size_t value_size) {
  void* block = ::operator new(sizeof(Entry) + key_size + value_size);
  Entry* e = new (block) Entry;
  e->hash = hash;
  e->key_size = key_size;
  e->value_size = value_size;
  if (key_size != 0) std::memcpy(e->key(), key, key_size);
  if (value_size != 0) std::memcpy(e->key() + key_size, value, value_size);
  return e;
}

void DeleteEntry(void* p) {
  Entry* e = static_cast<Entry*>(p);
  e->~Entry();
  ::operator delete(p);
}

bool SameKey(const Entry* e, const Hash128& hash, const uint8_t* key, size_t key_size) {
  return e->hash.lo == hash.lo && e->hash.hi == hash.hi && e->key_size == key_size &&
         (key_size == 0 || std::memcmp(e->key(), key, key_size) == 0);
}

// Read-side counters, striped by the reader's epoch slot so that two reader
// threads never write the same cache line.
struct alignas(64) ReadStripe {
  std::atomic<uint64_t> hits{0};
  std::atomic<uint64_t> misses{0};
  std::atomic<uint64_t> expirations{0};
};
constexpr size_t kReadStripes = 64;  // power of two

// Statistics are only ever bumped by one thread at a time (under the shard
// mutex) or by many (stripes); relaxed suffices: they order nothing.
inline void Bump(std::atomic<uint64_t>& c) { c.fetch_add(1, std::memory_order_relaxed); }
// Single-writer (shard mutex) update without a locked instruction.
template <typename T>
inline void AddOwned(std::atomic<T>& c, T delta) {
  c.store(c.load(std::memory_order_relaxed) + delta, std::memory_order_relaxed);
}

struct alignas(64) Shard {
  Mutex mu;
  Entry* newest AIARCH_GUARDED_BY(mu) = nullptr;
  Entry* oldest AIARCH_GUARDED_BY(mu) = nullptr;
  Entry* hand AIARCH_GUARDED_BY(mu) = nullptr;  // next SIEVE candidate; null = start at oldest
  // Written under mu (AddOwned), read without it by Counters().
  std::atomic<int64_t> bytes{0};
  std::atomic<int64_t> entries{0};
  std::atomic<uint64_t> inserts{0};
  std::atomic<uint64_t> evictions{0};
  std::atomic<uint64_t> rejected{0};
};

uint64_t RoundUpPow2(uint64_t v) {
  uint64_t p = 1;
  while (p < v) p <<= 1;
  return p;
}

int Log2(uint64_t pow2) { return 63 - __builtin_clzll(pow2); }

CacheConfig Normalize(CacheConfig c) {
  c.max_bytes = std::max<int64_t>(c.max_bytes, 0);
  c.ttl_ns = std::max<int64_t>(c.ttl_ns, 0);
  c.shards = static_cast<int>(RoundUpPow2(static_cast<uint64_t>(std::clamp(c.shards, 1, 1 << 16))));
  c.buckets = static_cast<int64_t>(RoundUpPow2(
      static_cast<uint64_t>(std::clamp<int64_t>(c.buckets, c.shards, int64_t{1} << 40))));
  return c;
}

}  // namespace

struct ResponseCache::Impl {
  explicit Impl(const CacheConfig& requested)
      : config(Normalize(requested)),
        shard_bits(Log2(static_cast<uint64_t>(config.shards))),
        bucket_bits(Log2(static_cast<uint64_t>(config.buckets)) - shard_bits),
        shard_budget(config.max_bytes / config.shards),
        buckets(new std::atomic<Entry*>[static_cast<size_t>(config.buckets)]),
        shards(new Shard[static_cast<size_t>(config.shards)]) {
    for (int64_t i = 0; i < config.buckets; ++i) {
      buckets[i].store(nullptr, std::memory_order_relaxed);
    }
  }

  ~Impl() {
    // No reader or writer may run concurrently with destruction: free directly.
    for (int64_t i = 0; i < config.buckets; ++i) {
      Entry* e = buckets[i].load(std::memory_order_relaxed);
      while (e != nullptr) {
        Entry* next = e->next.load(std::memory_order_relaxed);
        DeleteEntry(e);
        e = next;
      }
    }
    retired.FreeAll();
  }

  size_t ShardOf(const Hash128& h) const {
    return shard_bits == 0 ? 0 : static_cast<size_t>(h.hi >> (64 - shard_bits));
  }
  std::atomic<Entry*>& BucketOf(const Hash128& h) {
    const size_t in_shard = static_cast<size_t>(h.lo & ((uint64_t{1} << bucket_bits) - 1));
    return buckets[(ShardOf(h) << bucket_bits) | in_shard];
  }

  // The link that points at the entry for (hash, key), or null. Caller holds
  // the shard mutex, so relaxed loads see the chain as this shard last wrote it.
  std::atomic<Entry*>* FindLink(const Hash128& h, const uint8_t* key, size_t key_size) {
    std::atomic<Entry*>* link = &BucketOf(h);
    for (Entry* e; (e = link->load(std::memory_order_relaxed)) != nullptr; link = &e->next) {
      if (SameKey(e, h, key, key_size)) return link;
    }
    return nullptr;
  }

  void QueuePush(Shard& s, Entry* e) AIARCH_REQUIRES(s.mu) {
    e->older = s.newest;
    e->newer = nullptr;
    (s.newest != nullptr ? s.newest->newer : s.oldest) = e;
    s.newest = e;
  }

  void QueueRemove(Shard& s, Entry* e) AIARCH_REQUIRES(s.mu) {
    if (s.hand == e) s.hand = e->newer;
    (e->newer != nullptr ? e->newer->older : s.newest) = e->older;
    (e->older != nullptr ? e->older->newer : s.oldest) = e->newer;
    e->newer = e->older = nullptr;
  }

  // Makes `e` (reached through `link`) unreachable for new readers and hands
  // it to the retire list. Caller holds the shard mutex.
  void Unlink(Shard& s, std::atomic<Entry*>* link, Entry* e) AIARCH_REQUIRES(s.mu) {
    // Release: pairs with the acquire chain loads in FindEntry(); a reader
    // that follows the new link sees the successor's contents (published by
    // its own Insert, which happens-before this via the shard mutex).
    // e->next is left intact so a reader standing on e can walk on.
    link->store(e->next.load(std::memory_order_relaxed), std::memory_order_release);
    QueueRemove(s, e);
    AddOwned<int64_t>(s.bytes, -e->charge());
    AddOwned<int64_t>(s.entries, -1);
    retired.Retire(e, &DeleteEntry);
  }

  void UnlinkEntry(Shard& s, Entry* e) AIARCH_REQUIRES(s.mu) {
    std::atomic<Entry*>* link = &BucketOf(e->hash);
    for (Entry* cur; (cur = link->load(std::memory_order_relaxed)) != e; link = &cur->next) {
    }
    Unlink(s, link, e);
  }

  // One SIEVE step: the hand walks from the oldest entry towards the newest,
  // wrapping around, clears visited bits, and evicts the first entry that is
  // unvisited, of an older generation, or expired. Readers may set bits again
  // behind the hand; after two full turns the entry under the hand goes
  // regardless, which bounds the walk. Caller holds the shard mutex.
  void EvictOne(Shard& s, uint64_t generation, int64_t now_ns) AIARCH_REQUIRES(s.mu) {
    const int64_t limit = 2 * s.entries.load(std::memory_order_relaxed) + 1;
    Entry* e = s.hand != nullptr ? s.hand : s.oldest;
    for (int64_t step = 0; step < limit; ++step) {
      if (e->generation != generation || e->Expired(now_ns)) break;
      // Relaxed: a hint shared with readers' relaxed stores; it orders nothing.
      if (e->visited.load(std::memory_order_relaxed) == 0) break;
      e->visited.store(0, std::memory_order_relaxed);
      e = e->newer != nullptr ? e->newer : s.oldest;
    }
    s.hand = e->newer;
    UnlinkEntry(s, e);
    Bump(s.evictions);
  }

  const CacheConfig config;
  const int shard_bits;
  const int bucket_bits;  // per shard
  const int64_t shard_budget;
  std::unique_ptr<std::atomic<Entry*>[]> buckets;
  std::unique_ptr<Shard[]> shards;
  // Bumped by Invalidate (release), loaded by Lookup and Insert (acquire).
  std::atomic<uint64_t> generation{0};
  ReadStripe stripes[kReadStripes];
  epoch::RetireList retired;
};

ResponseCache::ResponseCache(const CacheConfig& config) : impl_(new Impl(config)) {}

ResponseCache::~ResponseCache() = default;

void ResponseCache::EnterRead() { epoch::EnterRead(); }

void ResponseCache::ExitRead() { epoch::ExitRead(); }

const void* ResponseCache::FindEntry(const Hash128& key, const uint8_t* key_bytes, size_t key_size,
                                     int64_t now_ns, const uint8_t** value, size_t* value_size) {
  Impl& im = *impl_;
  ReadStripe& stripe = im.stripes[epoch::ThreadIndex() & (kReadStripes - 1)];
  // Acquire: pairs with the release fetch_add in Invalidate(); a Lookup that
  // sees the new generation also sees what the invalidating thread did first.
  const uint64_t generation = im.generation.load(std::memory_order_acquire);
  // Acquire (head and every next): pairs with the release store that
  // published the entry in Insert() or relinked the chain in Unlink(), so the
  // entry's fields and bytes are visible before they are compared.
  for (const Entry* e = im.BucketOf(key).load(std::memory_order_acquire); e != nullptr;
       e = e->next.load(std::memory_order_acquire)) {
    if (!SameKey(e, key, key_bytes, key_size)) continue;
    // At most one entry per key is linked at a time, so the first match decides.
    if (e->generation != generation) break;
    if (e->Expired(now_ns)) {
      // Relaxed (all stripe counters): statistics, read one by one.
      Bump(stripe.expirations);
      break;
    }
    // Read before writing so that hot entries keep their line shared.
    if (e->visited.load(std::memory_order_relaxed) == 0) {
      // Relaxed: a hint for the SIEVE hand; see Entry::visited.
      const_cast<Entry*>(e)->visited.store(1, std::memory_order_relaxed);
    }
    Bump(stripe.hits);
    *value = e->value();
    *value_size = e->value_size;
    return e;
  }
  Bump(stripe.misses);
  return nullptr;
}

bool ResponseCache::Lookup(const Hash128& key, const uint8_t* key_bytes, size_t key_size,
                           int64_t now_ns, const Visitor& visit) {
  return LookupWith(key, key_bytes, key_size, now_ns, [&visit](const uint8_t* v, size_t n) {
    if (visit) visit(v, n);
  });
}

bool ResponseCache::Insert(const Hash128& key, const uint8_t* key_bytes, size_t key_size,
                           const uint8_t* value, size_t value_size, int64_t now_ns) {
  Impl& im = *impl_;
  Shard& s = im.shards[im.ShardOf(key)];
  const int64_t charge = static_cast<int64_t>(sizeof(Entry) + key_size + value_size);
  // Allocate and copy outside the shard mutex.
  Entry* fresh =
      charge <= im.shard_budget ? NewEntry(key, key_bytes, key_size, value, value_size) : nullptr;
  {
    MutexLock lock(&s.mu);
    if (std::atomic<Entry*>* link = im.FindLink(key, key_bytes, key_size)) {
      im.Unlink(s, link, link->load(std::memory_order_relaxed));
    }
    if (fresh == nullptr) {
      Bump(s.rejected);
    } else {
      // Acquire: pairs with the release fetch_add in Invalidate(), like FindEntry().
      const uint64_t generation = im.generation.load(std::memory_order_acquire);
      fresh->generation = generation;
      fresh->expiry_ns = im.config.ttl_ns > 0 ? now_ns + im.config.ttl_ns : 0;
      while (s.bytes.load(std::memory_order_relaxed) + charge > im.shard_budget) {
        im.EvictOne(s, generation, now_ns);
      }
      std::atomic<Entry*>& head = im.BucketOf(key);
      // Relaxed: fresh is not yet visible; the release store below publishes it.
      fresh->next.store(head.load(std::memory_order_relaxed), std::memory_order_relaxed);
      // Release: pairs with the acquire chain loads in FindEntry(); a reader
      // that sees fresh sees its fields, key and value bytes.
      head.store(fresh, std::memory_order_release);
      im.QueuePush(s, fresh);
      AddOwned<int64_t>(s.bytes, charge);
      AddOwned<int64_t>(s.entries, 1);
      Bump(s.inserts);
    }
  }
  im.retired.Reclaim();
  return fresh != nullptr;
}

bool ResponseCache::Erase(const Hash128& key, const uint8_t* key_bytes, size_t key_size) {
  Impl& im = *impl_;
  Shard& s = im.shards[im.ShardOf(key)];
  bool present = false;
  {
    MutexLock lock(&s.mu);
    if (std::atomic<Entry*>* link = im.FindLink(key, key_bytes, key_size)) {
      Entry* e = link->load(std::memory_order_relaxed);
      // An entry of an older generation is removed too, but was not "present":
      // Lookup could no longer return it.
      present = e->generation == im.generation.load(std::memory_order_acquire);
      im.Unlink(s, link, e);
    }
  }
  im.retired.Reclaim();
  return present;
}

void ResponseCache::Invalidate() {
  // Release: pairs with the acquire loads in FindEntry() and Insert().
  impl_->generation.fetch_add(1, std::memory_order_release);
}

void ResponseCache::Clear() {
  Impl& im = *impl_;
  const size_t per_shard = size_t{1} << im.bucket_bits;
  for (int i = 0; i < im.config.shards; ++i) {
    Shard& s = im.shards[i];
    MutexLock lock(&s.mu);
    for (size_t b = 0; b < per_shard; ++b) {
      std::atomic<Entry*>& head = im.buckets[(static_cast<size_t>(i) << im.bucket_bits) | b];
      while (Entry* e = head.load(std::memory_order_relaxed)) im.Unlink(s, &head, e);
    }
    s.hand = nullptr;
  }
  im.retired.Reclaim();
}

uint64_t ResponseCache::generation() const {
  // Acquire: pairs with the release fetch_add in Invalidate().
  return impl_->generation.load(std::memory_order_acquire);
}

CacheCounters ResponseCache::Counters() const {
  const Impl& im = *impl_;
  CacheCounters c;
  // Relaxed loads throughout: statistics, read one by one (see cache.h).
  for (const ReadStripe& st : im.stripes) {
    c.hits += st.hits.load(std::memory_order_relaxed);
    c.misses += st.misses.load(std::memory_order_relaxed);
    c.expirations += st.expirations.load(std::memory_order_relaxed);
  }
  for (int i = 0; i < im.config.shards; ++i) {
    const Shard& s = im.shards[i];
    c.inserts += s.inserts.load(std::memory_order_relaxed);
    c.evictions += s.evictions.load(std::memory_order_relaxed);
    c.rejected += s.rejected.load(std::memory_order_relaxed);
    c.bytes += s.bytes.load(std::memory_order_relaxed);
    c.entries += s.entries.load(std::memory_order_relaxed);
  }
  return c;
}

const CacheConfig& ResponseCache::config() const { return impl_->config; }

}  // namespace aiarch
