// 128-bit non-cryptographic hashing for cache keys. Keys are always verified
// byte-for-byte on a hit, so a collision costs a miss, never a wrong answer.
#pragma once

#include <cstddef>
#include <cstdint>

namespace aiarch {

struct Hash128 {
  uint64_t lo = 0;
  uint64_t hi = 0;
  bool operator==(const Hash128& o) const { return lo == o.lo && hi == o.hi; }
};

// Streaming hasher: Update() any number of byte ranges, then Digest().
// Seeded per process so that keys cannot be precomputed by a client.
// Not thread-safe (one instance per key). Never allocates.
class Hasher {
 public:
  Hasher();
  explicit Hasher(uint64_t seed);
  void Update(const void* data, size_t n);
  void UpdateU64(uint64_t v) { Update(&v, sizeof v); }
  Hash128 Digest() const;

 private:
  uint64_t a_, b_;
  uint64_t total_ = 0;
  unsigned char tail_[16];
  size_t tail_len_ = 0;
  void Block(uint64_t x, uint64_t y);
};

// The process-wide seed used by Hasher(). Thread-safe.
uint64_t ProcessHashSeed();

}  // namespace aiarch
