#include "epoch.h"

#include <algorithm>

namespace aiarch {
namespace epoch {

namespace {

// Every slot ever allocated, newest first. Slots are pushed, never removed,
// and never freed, so a scan may follow `next` without protection.
std::atomic<Slot*> g_slots{nullptr};
std::atomic<uint32_t> g_slot_count{0};

// Hands the thread's slot back at thread exit. t_slot itself is a trivial
// thread_local so that the hot path pays no initialisation check.
struct SlotReleaser {
  ~SlotReleaser() {
    Slot* s = t_slot;
    if (s == nullptr) return;
    t_slot = nullptr;
    // Relaxed: the release store below orders it for the next owner.
    s->epoch.store(kIdle, std::memory_order_relaxed);
    // Release: pairs with the acquire exchange in AcquireSlot(); the next
    // owner starts after this thread's last use of the slot.
    s->in_use.store(false, std::memory_order_release);
  }
};

}  // namespace

Slot* AcquireSlot() {
  static thread_local SlotReleaser releaser;
  (void)&releaser;  // odr-use so that its destructor is registered for this thread
  // Acquire: pairs with the release CAS that pushed each slot, so its index
  // and next are visible.
  for (Slot* s = g_slots.load(std::memory_order_acquire); s != nullptr; s = s->next) {
    // Relaxed pre-check avoids writing the line of a slot that is in use.
    if (s->in_use.load(std::memory_order_relaxed)) continue;
    // Acquire: pairs with the release store in ~SlotReleaser of the previous owner.
    if (!s->in_use.exchange(true, std::memory_order_acquire)) {
      t_slot = s;
      return s;
    }
  }
  Slot* s = new Slot;  // never freed: scanners may hold it at any time
  s->in_use.store(true, std::memory_order_relaxed);  // not yet published
  // Relaxed: a dense id only needs to be unique.
  s->index = g_slot_count.fetch_add(1, std::memory_order_relaxed);
  Slot* head = g_slots.load(std::memory_order_relaxed);
  do {
    s->next = head;
    // Release: pairs with the acquire loads of g_slots in AcquireSlot() and
    // MinAnnouncedEpoch(), publishing next and index. Relaxed on failure:
    // the retry only needs the new head.
  } while (!g_slots.compare_exchange_weak(head, s, std::memory_order_release,
                                          std::memory_order_relaxed));
  t_slot = s;
  return s;
}

uint64_t MinAnnouncedEpoch() {
  uint64_t min_epoch = kIdle;
  // Acquire: pairs with the release CAS in AcquireSlot() (slot fields).
  for (Slot* s = g_slots.load(std::memory_order_acquire); s != nullptr; s = s->next) {
    // Acquire: pairs with the release store in ExitRead(), so a section we
    // see as finished has finished all its reads of retired nodes.
    min_epoch = std::min(min_epoch, s->epoch.load(std::memory_order_acquire));
  }
  return min_epoch;
}

RetireList::~RetireList() { FreeAll(); }

void RetireList::Retire(void* p, Deleter deleter) {
  std::lock_guard<std::mutex> lock(mu_);
  nodes_.push_back(Node{p, deleter, 0});
  ++untagged_;
}

size_t RetireList::Reclaim() {
  std::lock_guard<std::mutex> lock(mu_);
  if (nodes_.empty()) return 0;
  // Pairs with the seq_cst fence in EnterRead(): either the slot scan below
  // sees a reader's announcement, or that reader's pointer loads see every
  // unlink that happened before this point (see the argument in epoch.h).
  SeqCstFence();
  if (untagged_ > 0) {
    // Release: pairs with the acquire load of g_epoch in EnterRead(): a
    // reader announcing >= tag read this increment or a later one (all are
    // RMWs, so they extend this release sequence) and sees the unlinks of
    // every node tagged here.
    const uint64_t tag = g_epoch.fetch_add(1, std::memory_order_release) + 1;
    for (Node& n : nodes_) {
      if (n.tag == 0) n.tag = tag;
    }
    untagged_ = 0;
  }
  const uint64_t min_epoch = MinAnnouncedEpoch();
  size_t freed = 0;
  auto keep = std::partition(nodes_.begin(), nodes_.end(),
                             [min_epoch](const Node& n) { return n.tag > min_epoch; });
  for (auto it = keep; it != nodes_.end(); ++it) {
    it->deleter(it->ptr);
    ++freed;
  }
  nodes_.erase(keep, nodes_.end());
  return freed;
}

void RetireList::FreeAll() {
  std::lock_guard<std::mutex> lock(mu_);
  for (Node& n : nodes_) n.deleter(n.ptr);
  nodes_.clear();
  untagged_ = 0;
}

size_t RetireList::pending() const {
  std::lock_guard<std::mutex> lock(mu_);
  return nodes_.size();
}

}  // namespace epoch
}  // namespace aiarch
