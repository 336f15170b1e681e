// Status: errors are values in the core. Every fallible call returns a Status;
// the Python binding maps each code 1:1 onto one AiarchError subclass, whose
// class also names the HTTP status a server answers with (the one table of
// code <-> exception <-> HTTP status is python/aiarch/errors.py).
#pragma once

#include <string>
#include <utility>

namespace aiarch {

// Stable numeric values: the binding and aiarch/errors.py rely on them.
enum class StatusCode : int {
  kOk = 0,
  kInvalidArgument = 1,    // the caller sent something malformed (dtype, shape, config)
  kNotFound = 2,           // unknown model / tensor
  kAlreadyExists = 3,      // a model of that name is already loaded
  kResourceExhausted = 4,  // admission queue full; retry later
  kDeadlineExceeded = 5,   // the request's deadline passed before it could run
  kCancelled = 6,          // the caller cancelled the request
  kUnavailable = 7,        // the model or runtime is shutting down / not ready
  kInternal = 8,           // a bug or an unexpected failure inside the core
  kExecutionFailed = 9,    // the model's executor raised or returned bad outputs
};

// One more than the highest code: the binding checks at import that
// aiarch.errors has a class for every code below it.
inline constexpr int kStatusCodeCount = 10;

const char* StatusCodeName(StatusCode code);

class Status {
 public:
  Status() = default;  // OK
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status Ok() { return Status(); }
  static Status InvalidArgument(std::string m) {
    return {StatusCode::kInvalidArgument, std::move(m)};
  }
  static Status NotFound(std::string m) { return {StatusCode::kNotFound, std::move(m)}; }
  static Status AlreadyExists(std::string m) { return {StatusCode::kAlreadyExists, std::move(m)}; }
  static Status ResourceExhausted(std::string m) {
    return {StatusCode::kResourceExhausted, std::move(m)};
  }
  static Status DeadlineExceeded(std::string m) {
    return {StatusCode::kDeadlineExceeded, std::move(m)};
  }
  static Status Cancelled(std::string m) { return {StatusCode::kCancelled, std::move(m)}; }
  static Status Unavailable(std::string m) { return {StatusCode::kUnavailable, std::move(m)}; }
  static Status Internal(std::string m) { return {StatusCode::kInternal, std::move(m)}; }
  static Status ExecutionFailed(std::string m) {
    return {StatusCode::kExecutionFailed, std::move(m)};
  }

  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }
  std::string ToString() const;

  // For ResourceExhausted: when the caller should try again, from the
  // measured service rate. 0 = no estimate.
  double retry_after_s() const { return retry_after_s_; }
  Status& WithRetryAfter(double seconds) {
    retry_after_s_ = seconds;
    return *this;
  }

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
  double retry_after_s_ = 0;
};

}  // namespace aiarch

#define AIARCH_RETURN_IF_ERROR(expr)          \
  do {                                        \
    ::aiarch::Status _aiarch_status = (expr); \
    if (!_aiarch_status.ok()) {               \
      return _aiarch_status;                  \
    }                                         \
  } while (false)
