// CompletionQueue: wake-ups (the fd is readable exactly while completions
// wait for a loop) and inline drains (the draining thread's own deliveries
// make no wake-up; everyone else's do; nothing is ever stranded).
#include <poll.h>

#include <memory>
#include <thread>
#include <vector>

#include "aiarch/completion.h"
#include "check.h"

namespace aiarch {
namespace {

bool Readable(const CompletionQueue& q) {
  pollfd p{q.fd(), POLLIN, 0};
  return poll(&p, 1, 0) == 1 && (p.revents & POLLIN) != 0;
}

std::vector<Completion> Completions(std::initializer_list<uint64_t> ids) {
  std::vector<Completion> out;
  for (uint64_t id : ids) {
    Completion c;
    c.request_id = id;
    out.push_back(std::move(c));
  }
  return out;
}

std::vector<uint64_t> Ids(const std::vector<Completion>& items) {
  std::vector<uint64_t> ids;
  for (const auto& c : items) ids.push_back(c.request_id);
  return ids;
}

std::shared_ptr<CompletionQueue> NewQueue() {
  std::shared_ptr<CompletionQueue> q;
  CHECK(CompletionQueue::Create(&q).ok());
  return q;
}

void TestDeliverSignalsUntilDrained() {
  auto q = NewQueue();
  CHECK(!Readable(*q));
  q->Deliver(Completions({1, 2}));
  CHECK(Readable(*q));
  q->Deliver(Completions({3}));
  CHECK(Ids(q->Drain()) == (std::vector<uint64_t>{1, 2, 3}));
  CHECK(!Readable(*q));
  CHECK(q->Drain().empty());
  CHECK(!Readable(*q));
}

void TestInlineDrainOwnDeliveriesMakeNoWakeUp() {
  auto q = NewQueue();
  std::vector<Completion> got;
  {
    CompletionQueue::InlineDrain scope(*q);
    q->Deliver(Completions({1}));
    CHECK(!Readable(*q));
    got = q->Drain();
  }
  CHECK(Ids(got) == std::vector<uint64_t>{1});
  CHECK(!Readable(*q));
}

void TestInlineDrainOtherThreadsStillSignal() {
  auto q = NewQueue();
  CompletionQueue::InlineDrain scope(*q);
  std::thread([&] { q->Deliver(Completions({7})); }).join();
  CHECK(Readable(*q));
  CHECK(Ids(q->Drain()) == std::vector<uint64_t>{7});
  CHECK(!Readable(*q));
}

void TestInlineDrainLeftoversAreSignalledOnExit() {
  auto q = NewQueue();
  {
    CompletionQueue::InlineDrain scope(*q);
    q->Deliver(Completions({4}));
    // Another thread delivers into the non-empty queue; the scope ends
    // without draining (as when a flush is cut short).
    std::thread([&] { q->Deliver(Completions({5})); }).join();
    CHECK(!Readable(*q));
  }
  CHECK(Readable(*q));
  CHECK(Ids(q->Drain()) == (std::vector<uint64_t>{4, 5}));
  CHECK(!Readable(*q));
}

}  // namespace
}  // namespace aiarch

int main() {
  aiarch::TestDeliverSignalsUntilDrained();
  aiarch::TestInlineDrainOwnDeliveriesMakeNoWakeUp();
  aiarch::TestInlineDrainOtherThreadsStillSignal();
  aiarch::TestInlineDrainLeftoversAreSignalledOnExit();
  return aiarch::test::Finish("test_completion");
}
