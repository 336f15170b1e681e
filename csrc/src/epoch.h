// Epoch-based memory reclamation for lock-free readers (private to the core).
//
// Concurrency contract
// - EnterRead()/ExitRead(): wait-free after a thread's first call (which
//   takes a slot from a lock-free list, allocating one the first time the
//   list has no free slot). Between them the calling thread may load
//   pointers to shared nodes and dereference them; a node retired after
//   EnterRead() is not freed before the matching ExitRead().
// - No nesting: a thread is in at most one read section at a time, across
//   all structures that use this domain. The visitor of a cache lookup must
//   therefore not open another read section.
// - Do not open read sections from thread_local destructors: the thread's
//   slot may already have been handed back.
// - RetireList::Retire()/Reclaim(): blocking (one internal mutex per list);
//   called by writers only. Reclaim() frees every node whose retirement
//   every reader has since passed; a reader that stays in a read section
//   delays reclamation (of every list) until it leaves. There is no bound on
//   how long a retired node waits beyond "the next Reclaim() after every
//   reader that entered before its retirement has left".
// - Allocation: slots are 64-byte blocks that are never freed (a slot is
//   reused after its thread exits). Retire() may grow a vector.
//
// Correctness argument
//   G is the global epoch; each slot holds the epoch its thread announced,
//   or kIdle (greater than any epoch) outside a read section.
//   Reader:    e = G.load(acquire); slot = e; fence(seq_cst) [F_R];
//              ...pointer loads L...; slot.store(kIdle, release).
//   Writer:    unlink node p (release store U); list.Retire(p) (mutex).
//   Reclaimer: (mutex) fence(seq_cst) [F_W]; c = G.fetch_add(1) + 1; tag
//              every untagged node with c; m = min over slots of
//              slot.load(acquire) [B]; free nodes whose tag <= m.
//   U happens-before F_W (U is sequenced before Retire, which releases the
//   list mutex that Reclaim acquires). Take a reader that might still reach
//   p after p is freed. Case 1: B read the reader's announcement e. If e <
//   c, p is not freed. If e >= c, the reader's G load read our fetch_add or
//   a later one in G's modification order (a release sequence of RMWs), so
//   it synchronises with our fetch_add; U happens-before every L, and every
//   L sees the unlink: the reader cannot reach p. Case 2: B read kIdle
//   written by this reader's ExitRead (release, paired with the acquire B):
//   the section's loads happen-before the free. Case 3: B read a value
//   older than the announcement (kIdle from before it). Then B is
//   coherence-ordered before the announce store, with F_W happening before
//   B and the announce store before F_R, so F_W precedes F_R in the single
//   total order S of seq_cst operations. If some L did not observe U, then
//   L would be coherence-ordered before U with F_R before L and U before
//   F_W, forcing F_R to precede F_W in S: a contradiction. So every L
//   observes U and the reader cannot reach p. (C++20 [atomics.order]/4,
//   which C++17 compilers implement: a full fence on x86, dmb ish on Arm.)
//   A node stays reachable only through nodes retired no earlier than it,
//   so a reader that holds any retired node entered before its retirement
//   and keeps the min at or below its tag.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <vector>

namespace aiarch {
namespace epoch {

constexpr uint64_t kIdle = ~uint64_t{0};

#if defined(__SANITIZE_THREAD__)
#define AIARCH_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define AIARCH_TSAN 1
#endif
#endif

// A full seq_cst fence. ThreadSanitizer does not model standalone fences (GCC
// warns with -Wtsan), so TSan builds use a seq_cst RMW on a private atomic
// instead: a full barrier on the targets TSan runs on, and an operation TSan
// understands. Every other build uses the fence the argument above relies on.
#if defined(AIARCH_TSAN)
inline std::atomic<uint64_t> g_tsan_fence{0};
inline void SeqCstFence() { g_tsan_fence.fetch_add(0, std::memory_order_seq_cst); }
#else
inline void SeqCstFence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
#endif

// One per thread, padded to its own cache line so that announcing never
// writes a line another thread reads on its hot path.
struct alignas(64) Slot {
  std::atomic<uint64_t> epoch{kIdle};
  std::atomic<bool> in_use{false};
  uint32_t index = 0;    // dense id, stable for the slot's life; used for striping
  Slot* next = nullptr;  // immutable once the slot is published
};

// The global epoch. Starts at 1 so that 0 (the "untagged" mark) is never announced.
inline std::atomic<uint64_t> g_epoch{1};
// The calling thread's slot. Inline and constant-initialised so that other
// translation units read it directly, without a TLS wrapper call.
inline thread_local Slot* t_slot = nullptr;

// Takes a free slot or allocates one, and registers its release at thread exit.
Slot* AcquireSlot();

inline Slot* CurrentSlot() {
  Slot* s = t_slot;
  return s != nullptr ? s : AcquireSlot();
}

// Announces the current epoch for the calling thread. Not nestable.
// Thread-safe. Never allocates after the thread's first call.
inline void EnterRead() {
  Slot* s = CurrentSlot();
  // Acquire: pairs with the release fetch_add in RetireList::Reclaim(); a
  // reader that sees epoch c sees every unlink that was tagged c.
  const uint64_t e = g_epoch.load(std::memory_order_acquire);
  // Relaxed: ordered before this thread's pointer loads by the fence below.
  s->epoch.store(e, std::memory_order_relaxed);
  // Pairs with the seq_cst fence in RetireList::Reclaim() before it scans
  // the slots: either the scan sees this announcement, or every pointer load
  // below sees the reclaimer's unlinks (store-load ordering).
  SeqCstFence();
}

// Leaves the read section. Thread-safe. Never allocates.
inline void ExitRead() {
  // Release: pairs with the acquire slot loads in RetireList::Reclaim(), so
  // the section's reads of a node happen-before the node is freed.
  t_slot->epoch.store(kIdle, std::memory_order_release);
}

// True while the calling thread is inside a read section (for tests and asserts).
inline bool InReadSection() {
  return t_slot != nullptr && t_slot->epoch.load(std::memory_order_relaxed) != kIdle;
}

// Small dense id of the calling thread's slot (reused after a thread exits).
// Thread-safe.
inline uint32_t ThreadIndex() { return CurrentSlot()->index; }

// Smallest epoch announced by any thread in a read section (kIdle if none).
// Thread-safe. Never allocates.
uint64_t MinAnnouncedEpoch();

// Nodes waiting for every reader to pass them. One list per structure, so a
// structure's destructor can free its own nodes at once.
class RetireList {
 public:
  using Deleter = void (*)(void*);

  RetireList() = default;
  ~RetireList();  // frees everything still listed: no reader may remain
  RetireList(const RetireList&) = delete;
  RetireList& operator=(const RetireList&) = delete;

  // Records p, already unreachable for readers that start from now on.
  // Thread-safe. May allocate.
  void Retire(void* p, Deleter deleter);
  // Frees what no reader can still hold. Returns the number freed. Thread-safe.
  size_t Reclaim();
  // Frees everything now. Only when no reader can hold any listed node.
  void FreeAll();
  // Nodes not yet freed. Thread-safe.
  size_t pending() const;

 private:
  struct Node {
    void* ptr;
    Deleter deleter;
    uint64_t tag;  // 0 = retired since the last Reclaim(), not yet tagged
  };
  mutable std::mutex mu_;
  std::vector<Node> nodes_;  // guarded by mu_
  size_t untagged_ = 0;      // guarded by mu_
};

}  // namespace epoch
}  // namespace aiarch
