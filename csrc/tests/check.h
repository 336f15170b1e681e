// A minimal test harness: CHECK macros that report file:line and the values
// involved, keep counting after a failure, and a summary for main().
// Checks may run on any thread.
#pragma once

#include <atomic>
#include <cmath>
#include <cstdio>
#include <mutex>
#include <sstream>
#include <string>

namespace aiarch {
namespace test {

struct State {
  std::atomic<long> passed{0};
  std::atomic<long> failed{0};
  std::mutex mu;        // serialises failure reports
  std::string context;  // printed with each failure (e.g. the seed); guarded by mu
};

inline State& GetState() {
  static State state;
  return state;
}

// Text printed with every failure until replaced, e.g. "seed=42".
inline void SetContext(const std::string& context) {
  std::lock_guard<std::mutex> lock(GetState().mu);
  GetState().context = context;
}

inline bool Report(bool ok, const char* file, int line, const std::string& what) {
  State& s = GetState();
  if (ok) {
    s.passed.fetch_add(1, std::memory_order_relaxed);  // a tally; orders nothing
    return true;
  }
  s.failed.fetch_add(1, std::memory_order_relaxed);  // a tally; orders nothing
  std::lock_guard<std::mutex> lock(s.mu);
  std::fprintf(stderr, "%s:%d: FAILED: %s%s%s\n", file, line, what.c_str(),
               s.context.empty() ? "" : "  [", s.context.empty() ? "" : (s.context + "]").c_str());
  return false;
}

inline bool Report(bool ok, const char* file, int line, const char* what) {
  return ok ? Report(true, file, line, std::string())
            : Report(false, file, line, std::string(what));
}

template <typename A, typename B>
std::string Describe(const char* a_text, const char* b_text, const A& a, const B& b) {
  std::ostringstream out;
  out << a_text << " == " << b_text << " (" << a << " vs " << b << ")";
  return out.str();
}

template <typename A, typename B, typename T>
std::string DescribeNear(const char* a_text, const char* b_text, const A& a, const B& b,
                         const T& tol) {
  std::ostringstream out;
  out.precision(17);
  out << a_text << " ~= " << b_text << " (" << a << " vs " << b << ", tolerance " << tol << ")";
  return out.str();
}

inline long Failures() { return GetState().failed.load(); }

// Prints the summary; returns main()'s exit status.
inline int Finish(const char* name) {
  const long passed = GetState().passed.load();
  const long failed = GetState().failed.load();
  std::printf("%s: %ld passed, %ld failed\n", name, passed, failed);
  return failed == 0 ? 0 : 1;
}

}  // namespace test
}  // namespace aiarch

// Each evaluates to true when the check passed, so a test can stop early:
// `if (!CHECK(p != nullptr)) return;`.
#define CHECK(cond) ::aiarch::test::Report(static_cast<bool>(cond), __FILE__, __LINE__, #cond)

#define CHECK_EQ(a, b)                                                                     \
  [&](const auto& check_a_, const auto& check_b_) {                                        \
    const bool check_ok_ = check_a_ == check_b_;                                           \
    return ::aiarch::test::Report(                                                         \
        check_ok_, __FILE__, __LINE__,                                                     \
        check_ok_ ? std::string() : ::aiarch::test::Describe(#a, #b, check_a_, check_b_)); \
  }((a), (b))

#define CHECK_NEAR(a, b, tol)                                                            \
  [&](const auto& check_a_, const auto& check_b_, const auto& check_t_) {                \
    const bool check_ok_ =                                                               \
        std::fabs(static_cast<double>(check_a_) - static_cast<double>(check_b_)) <=      \
        static_cast<double>(check_t_);                                                   \
    return ::aiarch::test::Report(                                                       \
        check_ok_, __FILE__, __LINE__,                                                   \
        check_ok_ ? std::string()                                                        \
                  : ::aiarch::test::DescribeNear(#a, #b, check_a_, check_b_, check_t_)); \
  }((a), (b), (tol))
