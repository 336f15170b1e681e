#include "aiarch/completion.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <string>

#ifdef __linux__
#include <sys/eventfd.h>
#endif

namespace aiarch {

Status CompletionQueue::Create(std::shared_ptr<CompletionQueue>* out) {
#ifdef __linux__
  const int fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (fd < 0) return Status::Internal(std::string("eventfd failed: ") + std::strerror(errno));
  out->reset(new CompletionQueue(fd, fd));
#else
  int fds[2];
  if (pipe(fds) != 0) return Status::Internal(std::string("pipe failed: ") + std::strerror(errno));
  for (int fd : fds) {
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    fcntl(fd, F_SETFD, FD_CLOEXEC);
  }
  out->reset(new CompletionQueue(fds[0], fds[1]));
#endif
  return Status::Ok();
}

CompletionQueue::~CompletionQueue() {
  close(read_fd_);
  if (write_fd_ != read_fd_) close(write_fd_);
}

void CompletionQueue::Wake() {
  signalled_ = true;
  const uint64_t one = 1;
  // EAGAIN means the counter/pipe is already signalled: the reader will wake.
  ssize_t n = write(write_fd_, &one, write_fd_ == read_fd_ ? sizeof one : 1);
  (void)n;
}

void CompletionQueue::ClearWake() {
  uint64_t buf[8];
  while (read(read_fd_, buf, sizeof buf) > 0) {
  }
}

void CompletionQueue::Deliver(std::vector<Completion>&& completions) {
  if (completions.empty()) return;
  // Only this thread ever stores its own id, so a relaxed load suffices.
  const bool caller_drains =
      inline_drainer_.load(std::memory_order_relaxed) == std::this_thread::get_id();
  std::lock_guard<std::mutex> lock(mu_);
  const bool was_empty = items_.empty();
  if (was_empty) {
    items_ = std::move(completions);
  } else {
    for (auto& c : completions) items_.push_back(std::move(c));
  }
  // Only the delivery that made the queue non-empty signals (a non-empty,
  // unsignalled queue belongs to an inline drain that is about to take it).
  // The signal and signalled_ change together under mu_, so Drain() reads
  // the fd exactly when it is readable: no wake-up is lost or left behind.
  if (was_empty && !caller_drains) Wake();
}

std::vector<Completion> CompletionQueue::Drain() {
  std::vector<Completion> out;
  std::lock_guard<std::mutex> lock(mu_);
  out.swap(items_);
  if (signalled_) {
    ClearWake();
    signalled_ = false;
  }
  return out;
}

CompletionQueue::InlineDrain::InlineDrain(CompletionQueue& queue) : queue_(queue) {
  queue_.inline_drainer_.store(std::this_thread::get_id(), std::memory_order_relaxed);
}

CompletionQueue::InlineDrain::~InlineDrain() {
  queue_.inline_drainer_.store(std::thread::id(), std::memory_order_relaxed);
  std::lock_guard<std::mutex> lock(queue_.mu_);
  if (!queue_.items_.empty() && !queue_.signalled_) queue_.Wake();
}

void SyncCompletion::Deliver(std::vector<Completion>&& completions) {
  std::lock_guard<std::mutex> lock(mu_);
  completion_ = std::move(completions.front());
  done_ = true;
  cv_.notify_all();
}

bool SyncCompletion::Wait(int64_t timeout_ns) {
  std::unique_lock<std::mutex> lock(mu_);
  if (timeout_ns < 0) {
    cv_.wait(lock, [this] { return done_; });
    return true;
  }
  return cv_.wait_for(lock, std::chrono::nanoseconds(timeout_ns), [this] { return done_; });
}

Completion SyncCompletion::Take() { return std::move(completion_); }

}  // namespace aiarch
