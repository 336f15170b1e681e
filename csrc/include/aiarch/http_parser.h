// HTTP/1.1 request parser for the server's native connection.
//
// Contract
// - Incremental: Feed() appends the bytes of one connection as they arrive
//   (split anywhere); Next() then yields complete requests one at a time, in
//   order. Keep-alive and pipelining: a read may hold many requests, and a
//   request may span many reads. Scanning is resumable: each byte of a head
//   is searched once, a body is waited for by length, never re-scanned.
// - Framing: Content-Length, or Transfer-Encoding: chunked (chunk extensions
//   and trailers are skipped); neither means an empty body. Both at once,
//   differing Content-Length values, or any other transfer coding is 400
//   (they are how requests are smuggled past proxies).
// - Limits (HttpParserLimits): request line + headers over max_header_bytes
//   or more than max_headers fields → 431; a body over max_body_bytes → 413,
//   reported as soon as the length is known. Expect other than 100-continue
//   → 417. Anything malformed → 400.
// - After an error Next() keeps returning kError: the caller answers with
//   error_status()/error_message() and closes the connection.
// - Lifetime: the views in an HttpRequest point into the parser's buffer and
//   stay valid until the next Feed(). Not thread-safe: one connection, one
//   thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <string>
#include <string_view>
#include <vector>

namespace aiarch {

struct HttpParserLimits {
  size_t max_header_bytes = 16 << 10;
  size_t max_headers = 100;
  size_t max_body_bytes = 64 << 20;
};

struct HttpHeader {
  std::string_view name;   // as sent; compare with EqualsNoCase
  std::string_view value;  // surrounding whitespace removed
};

struct HttpRequest {
  std::string_view method;
  std::string_view target;  // path plus "?query" as sent
  std::string_view path;    // target up to '?'
  std::string_view query;   // after '?', may be empty
  int minor_version = 1;    // HTTP/1.<minor_version>
  std::vector<HttpHeader> headers;
  std::string_view body;  // de-chunked when the request was chunked
  bool keep_alive = true;

  // The value of the first header named `lower_name` (ASCII lowercase), or an
  // empty view with *found false.
  std::string_view Header(std::string_view lower_name, bool* found = nullptr) const;
};

bool EqualsNoCase(std::string_view a, std::string_view lower);

class HttpRequestParser {
 public:
  enum class Result { kRequest, kNeedMore, kError };

  explicit HttpRequestParser(HttpParserLimits limits = {});

  // Appends bytes. Invalidates the views of requests returned before.
  void Feed(const char* data, size_t size);
  // The next complete request, kNeedMore, or kError (sticky).
  Result Next(HttpRequest* out);

  int error_status() const { return error_status_; }
  const std::string& error_message() const { return error_message_; }
  // Some bytes of a request not yet complete are buffered.
  bool in_request() const { return buffer_.size() > start_ || state_ != State::kHead; }
  // The head of the request being received is complete; its body is not.
  bool in_body() const { return state_ != State::kHead; }
  // True once for a request whose head is complete, that asked for
  // "Expect: 100-continue", and whose body has not fully arrived.
  bool TakeContinue();

 private:
  enum class State { kHead, kBody, kChunkSize, kChunkData, kChunkDataEnd, kTrailers };

  Result Fail(int status, std::string message);
  Result ParseHead(size_t head_end);
  Result Complete(HttpRequest* out, std::string_view body, size_t end);
  Result ContinueChunked(HttpRequest* out);
  void Compact();

  HttpParserLimits limits_;
  std::string buffer_;
  size_t start_ = 0;  // where the current request begins in buffer_
  size_t scan_ = 0;   // where the search for the head's end resumes
  State state_ = State::kHead;
  size_t head_len_ = 0;
  uint64_t content_length_ = 0;
  bool chunked_ = false;
  bool expect_continue_ = false;
  bool continue_offered_ = false;
  size_t chunk_cursor_ = 0;  // absolute offset in buffer_ while de-chunking
  uint64_t chunk_remaining_ = 0;
  std::string dechunked_;                     // body of the current chunked request
  std::deque<std::string> delivered_bodies_;  // deque: views stay valid on push_back  // de-chunked
                                              // bodies kept valid until Feed()
  // The parsed head, as offsets from start_ (the buffer may move before the
  // body arrives): method, target, then name/value pairs.
  struct Span {
    size_t offset = 0, size = 0;
  };
  Span method_, target_;
  std::vector<std::pair<Span, Span>> header_spans_;
  int minor_version_ = 1;
  bool keep_alive_ = true;
  int error_status_ = 0;
  std::string error_message_;
};

}  // namespace aiarch
