#include "aiarch/hash.h"

#include <cstring>
#include <random>

// Design: two 64-bit lanes absorb 16-byte blocks. Each block is xored into the
// lanes, the lanes are multiplied as a full 64x64->128 product against
// odd constants, and the halves are folded back crosswise so that every input
// bit reaches both lanes within one block. The block words are also added in
// unmultiplied, so a block that happens to zero one multiplicand still
// changes the state. Bytes are buffered until a full block is available, which
// makes the digest independent of how Update() calls split the input. The
// final partial block is zero-padded; the total length, folded in at the end,
// tells "ab" from "ab\0". Words are read little-endian (memcpy on the
// little-endian targets we build for), so digests are stable within a process,
// which is all the cache needs: keys are never persisted.

namespace aiarch {
namespace {

constexpr uint64_t kK0 = 0x9E3779B97F4A7C15ull;
constexpr uint64_t kK1 = 0xC2B2AE3D27D4EB4Full;
constexpr uint64_t kK2 = 0x165667B19E3779F9ull;
constexpr uint64_t kK3 = 0xD6E8FEB86659FD93ull;

inline uint64_t Rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

inline void Mul128(uint64_t a, uint64_t b, uint64_t* lo, uint64_t* hi) {
  const unsigned __int128 p = static_cast<unsigned __int128>(a) * b;
  *lo = static_cast<uint64_t>(p);
  *hi = static_cast<uint64_t>(p >> 64);
}

inline uint64_t Load64(const unsigned char* p) {
  uint64_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// A bijective finaliser (xor-shift-multiply) so that the two output words are
// each a full avalanche of the state.
inline uint64_t Avalanche(uint64_t x) {
  x ^= x >> 32;
  x *= kK3;
  x ^= x >> 29;
  x *= kK1;
  x ^= x >> 32;
  return x;
}

}  // namespace

Hasher::Hasher() : Hasher(ProcessHashSeed()) {}

Hasher::Hasher(uint64_t seed) : a_(seed ^ kK0), b_(Avalanche(seed + kK2)) {}

void Hasher::Block(uint64_t x, uint64_t y) {
  const uint64_t s = a_ ^ x;
  const uint64_t t = b_ ^ y;
  uint64_t lo0, hi0, lo1, hi1;
  Mul128(s ^ kK0, t ^ kK1, &lo0, &hi0);
  Mul128(Rotl(s, 32) ^ kK2, Rotl(t, 32) ^ kK3, &lo1, &hi1);
  a_ = (lo0 ^ hi1) + y;
  b_ = (lo1 ^ hi0) + x;
}

void Hasher::Update(const void* data, size_t n) {
  const unsigned char* p = static_cast<const unsigned char*>(data);
  total_ += n;
  if (tail_len_ > 0) {
    const size_t take = n < 16 - tail_len_ ? n : 16 - tail_len_;
    std::memcpy(tail_ + tail_len_, p, take);
    tail_len_ += take;
    p += take;
    n -= take;
    if (tail_len_ < 16) return;
    Block(Load64(tail_), Load64(tail_ + 8));
    tail_len_ = 0;
  }
  for (; n >= 16; p += 16, n -= 16) Block(Load64(p), Load64(p + 8));
  if (n > 0) {
    std::memcpy(tail_, p, n);
    tail_len_ = n;
  }
}

Hash128 Hasher::Digest() const {
  // Digest is const so that a caller may take it and keep updating; work on copies.
  Hasher h = *this;
  if (h.tail_len_ > 0) {
    unsigned char block[16] = {};
    std::memcpy(block, h.tail_, h.tail_len_);
    h.Block(Load64(block), Load64(block + 8));
  }
  // The length block separates zero-padded tails and empty input from the seed state.
  h.Block(h.total_ ^ kK2, Rotl(h.total_, 17) ^ kK3);
  Hash128 out;
  out.lo = Avalanche(h.a_ + Rotl(h.b_, 23));
  out.hi = Avalanche(h.b_ ^ Rotl(h.a_, 41) ^ kK1);
  return out;
}

uint64_t ProcessHashSeed() {
  // A function-local static is initialised once, thread-safely.
  static const uint64_t seed = [] {
    std::random_device rd;
    // random_device yields 32 bits per call.
    return (static_cast<uint64_t>(rd()) << 32) ^ rd();
  }();
  return seed;
}

}  // namespace aiarch
