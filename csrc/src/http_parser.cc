#include "aiarch/http_parser.h"

#include <cstring>

namespace aiarch {
namespace {

// RFC 9110 tchar: the characters of a method or a header name.
bool IsTokenChar(unsigned char c) {
  if (c >= '0' && c <= '9') return true;
  if ((c | 0x20) >= 'a' && (c | 0x20) <= 'z') return true;
  return std::strchr("!#$%&'*+-.^_`|~", c) != nullptr && c != 0;
}

bool IsFieldValueChar(unsigned char c) { return c == '\t' || (c >= 0x20 && c != 0x7f); }

std::string_view Trim(std::string_view v) {
  while (!v.empty() && (v.front() == ' ' || v.front() == '\t')) v.remove_prefix(1);
  while (!v.empty() && (v.back() == ' ' || v.back() == '\t')) v.remove_suffix(1);
  return v;
}

// Calls fn(token) for each comma-separated, trimmed, non-empty token.
template <typename Fn>
void ForEachToken(std::string_view v, Fn&& fn) {
  while (!v.empty()) {
    const size_t comma = v.find(',');
    std::string_view token = Trim(v.substr(0, comma));
    if (!token.empty()) fn(token);
    if (comma == std::string_view::npos) break;
    v.remove_prefix(comma + 1);
  }
}

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  const char l = static_cast<char>(c | 0x20);
  if (l >= 'a' && l <= 'f') return l - 'a' + 10;
  return -1;
}

}  // namespace

bool EqualsNoCase(std::string_view a, std::string_view lower) {
  if (a.size() != lower.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    char c = a[i];
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c | 0x20);
    if (c != lower[i]) return false;
  }
  return true;
}

std::string_view HttpRequest::Header(std::string_view lower_name, bool* found) const {
  for (const auto& h : headers) {
    if (EqualsNoCase(h.name, lower_name)) {
      if (found) *found = true;
      return h.value;
    }
  }
  if (found) *found = false;
  return {};
}

HttpRequestParser::HttpRequestParser(HttpParserLimits limits) : limits_(limits) {}

void HttpRequestParser::Compact() {
  if (start_ == 0) return;
  buffer_.erase(0, start_);
  scan_ = scan_ > start_ ? scan_ - start_ : 0;
  chunk_cursor_ = chunk_cursor_ > start_ ? chunk_cursor_ - start_ : 0;
  start_ = 0;
}

void HttpRequestParser::Feed(const char* data, size_t size) {
  delivered_bodies_.clear();
  if (error_status_ != 0) return;
  Compact();
  buffer_.append(data, size);
}

HttpRequestParser::Result HttpRequestParser::Fail(int status, std::string message) {
  error_status_ = status;
  error_message_ = std::move(message);
  buffer_.clear();
  start_ = scan_ = 0;
  return Result::kError;
}

bool HttpRequestParser::TakeContinue() {
  if (state_ == State::kHead || !expect_continue_ || continue_offered_) return false;
  continue_offered_ = true;
  return true;
}

HttpRequestParser::Result HttpRequestParser::Next(HttpRequest* out) {
  if (error_status_ != 0) return Result::kError;
  if (state_ == State::kHead) {
    // Empty lines between requests are tolerated (RFC 9112 §2.2).
    while (start_ < buffer_.size() && (buffer_[start_] == '\r' || buffer_[start_] == '\n')) {
      ++start_;
    }
    if (scan_ < start_) scan_ = start_;
    const size_t size = buffer_.size();
    const char* base = buffer_.data();
    const void* hit =
        size - scan_ >= 4 ? memmem(base + scan_, size - scan_, "\r\n\r\n", 4) : nullptr;
    if (hit == nullptr) {
      scan_ = size >= 3 && size - 3 > start_ ? size - 3 : start_;
      if (size - start_ > limits_.max_header_bytes) {
        const bool has_line = memmem(base + start_, size - start_, "\r\n", 2) != nullptr;
        return Fail(431, has_line ? "request header fields too large" : "request line too long");
      }
      return Result::kNeedMore;
    }
    const size_t head_end = static_cast<size_t>(static_cast<const char*>(hit) - base) + 4;
    Result r = ParseHead(head_end);
    if (r == Result::kError) return r;
  }
  if (state_ == State::kBody) {
    const size_t body_start = start_ + head_len_;
    if (buffer_.size() - body_start < content_length_) return Result::kNeedMore;
    return Complete(out, std::string_view(buffer_).substr(body_start, content_length_),
                    body_start + content_length_);
  }
  return ContinueChunked(out);
}

HttpRequestParser::Result HttpRequestParser::ParseHead(size_t head_end) {
  head_len_ = head_end - start_;
  if (head_len_ - 4 > limits_.max_header_bytes) {
    return Fail(431, "request header fields too large");
  }
  const std::string_view head(buffer_.data() + start_, head_len_ - 2);  // ends with one CRLF
  size_t eol = head.find("\r\n");
  std::string_view line = head.substr(0, eol);
  // Request line: method SP target SP HTTP/1.x
  size_t sp1 = line.find(' ');
  if (sp1 == 0 || sp1 == std::string_view::npos)
    return Fail(400, "malformed HTTP request: invalid request line");
  for (size_t i = 0; i < sp1; ++i) {
    if (!IsTokenChar(static_cast<unsigned char>(line[i]))) {
      return Fail(400, "malformed HTTP request: invalid method");
    }
  }
  size_t sp2 = line.find(' ', sp1 + 1);
  if (sp2 == std::string_view::npos || sp2 == sp1 + 1) {
    return Fail(400, "malformed HTTP request: invalid request line");
  }
  for (size_t i = sp1 + 1; i < sp2; ++i) {
    const unsigned char c = static_cast<unsigned char>(line[i]);
    if (c <= 0x20 || c == 0x7f) return Fail(400, "malformed HTTP request: invalid request target");
  }
  const std::string_view version = line.substr(sp2 + 1);
  if (version == "HTTP/1.1") {
    minor_version_ = 1;
  } else if (version == "HTTP/1.0") {
    minor_version_ = 0;
  } else {
    return Fail(400, "malformed HTTP request: unsupported HTTP version");
  }
  method_ = {0, sp1};
  target_ = {sp1 + 1, sp2 - sp1 - 1};

  header_spans_.clear();
  bool has_length = false, close = false, keep_alive_token = false;
  chunked_ = false;
  expect_continue_ = false;
  continue_offered_ = false;
  content_length_ = 0;
  size_t pos = eol + 2;
  while (pos < head.size()) {
    eol = head.find("\r\n", pos);
    line = head.substr(pos, eol - pos);
    const size_t line_start = pos;
    pos = eol + 2;
    if (header_spans_.size() >= limits_.max_headers) {
      return Fail(431, "request header fields too large");
    }
    if (line.front() == ' ' || line.front() == '\t') {
      return Fail(400, "malformed HTTP request: folded header lines are not allowed");
    }
    const size_t colon = line.find(':');
    if (colon == 0 || colon == std::string_view::npos) {
      return Fail(400, "malformed HTTP request: invalid header line");
    }
    for (size_t i = 0; i < colon; ++i) {
      if (!IsTokenChar(static_cast<unsigned char>(line[i]))) {
        return Fail(400, "malformed HTTP request: invalid header name");
      }
    }
    for (size_t i = colon + 1; i < line.size(); ++i) {
      if (!IsFieldValueChar(static_cast<unsigned char>(line[i]))) {
        return Fail(400, "malformed HTTP request: invalid character in header value");
      }
    }
    const std::string_view name = line.substr(0, colon);
    const std::string_view raw_value = line.substr(colon + 1);
    const std::string_view value = Trim(raw_value);
    const size_t value_offset =
        line_start + colon + 1 + static_cast<size_t>(value.data() - raw_value.data());
    header_spans_.push_back({{line_start, colon}, {value_offset, value.size()}});
    if (EqualsNoCase(name, "content-length")) {
      if (value.empty() || value.size() > 18)
        return Fail(400, "malformed HTTP request: invalid Content-Length");
      uint64_t n = 0;
      for (char c : value) {
        if (c < '0' || c > '9') return Fail(400, "malformed HTTP request: invalid Content-Length");
        n = n * 10 + static_cast<uint64_t>(c - '0');
      }
      if (has_length && n != content_length_) {
        return Fail(400, "malformed HTTP request: conflicting Content-Length headers");
      }
      has_length = true;
      content_length_ = n;
    } else if (EqualsNoCase(name, "transfer-encoding")) {
      if (!EqualsNoCase(value, "chunked") || chunked_) {
        return Fail(400, "malformed HTTP request: unsupported Transfer-Encoding");
      }
      chunked_ = true;
    } else if (EqualsNoCase(name, "connection")) {
      ForEachToken(value, [&](std::string_view t) {
        if (EqualsNoCase(t, "close")) close = true;
        if (EqualsNoCase(t, "keep-alive")) keep_alive_token = true;
      });
    } else if (EqualsNoCase(name, "expect")) {
      if (!EqualsNoCase(value, "100-continue")) return Fail(417, "unsupported Expect");
      expect_continue_ = true;
    }
  }
  if (chunked_ && has_length) {
    return Fail(400, "malformed HTTP request: both Content-Length and Transfer-Encoding");
  }
  if (content_length_ > limits_.max_body_bytes) {
    return Fail(413,
                "request body larger than " + std::to_string(limits_.max_body_bytes) + " bytes");
  }
  keep_alive_ = minor_version_ == 1 ? !close : (keep_alive_token && !close);
  if (chunked_) {
    state_ = State::kChunkSize;
    chunk_cursor_ = start_ + head_len_;
    dechunked_.clear();
  } else {
    state_ = State::kBody;
  }
  return Result::kNeedMore;
}

HttpRequestParser::Result HttpRequestParser::ContinueChunked(HttpRequest* out) {
  const size_t size = buffer_.size();
  const char* base = buffer_.data();
  while (true) {
    switch (state_) {
      case State::kChunkSize: {
        const void* hit = memmem(base + chunk_cursor_, size - chunk_cursor_, "\r\n", 2);
        if (hit == nullptr) {
          if (size - chunk_cursor_ > 1024)
            return Fail(400, "malformed HTTP request: chunk size line too long");
          return Result::kNeedMore;
        }
        const size_t eol = static_cast<size_t>(static_cast<const char*>(hit) - base);
        uint64_t n = 0;
        size_t i = chunk_cursor_, digits = 0;
        for (; i < eol; ++i, ++digits) {
          const int v = HexValue(base[i]);
          if (v < 0) break;
          if (digits >= 15) return Fail(400, "malformed HTTP request: chunk size too large");
          n = n * 16 + static_cast<uint64_t>(v);
        }
        if (digits == 0 || (i < eol && base[i] != ';' && base[i] != ' ' && base[i] != '\t')) {
          return Fail(400, "malformed HTTP request: invalid chunk size");
        }
        if (dechunked_.size() + n > limits_.max_body_bytes) {
          return Fail(
              413, "request body larger than " + std::to_string(limits_.max_body_bytes) + " bytes");
        }
        chunk_cursor_ = eol + 2;
        chunk_remaining_ = n;
        state_ = n == 0 ? State::kTrailers : State::kChunkData;
        break;
      }
      case State::kChunkData: {
        const size_t avail = size - chunk_cursor_;
        const size_t take =
            avail < chunk_remaining_ ? avail : static_cast<size_t>(chunk_remaining_);
        dechunked_.append(base + chunk_cursor_, take);
        chunk_cursor_ += take;
        chunk_remaining_ -= take;
        if (chunk_remaining_ > 0) return Result::kNeedMore;
        state_ = State::kChunkDataEnd;
        break;
      }
      case State::kChunkDataEnd: {
        if (size - chunk_cursor_ < 2) return Result::kNeedMore;
        if (base[chunk_cursor_] != '\r' || base[chunk_cursor_ + 1] != '\n') {
          return Fail(400, "malformed HTTP request: chunk data not followed by CRLF");
        }
        chunk_cursor_ += 2;
        state_ = State::kChunkSize;
        break;
      }
      case State::kTrailers: {
        const void* hit = memmem(base + chunk_cursor_, size - chunk_cursor_, "\r\n", 2);
        if (hit == nullptr) {
          if (size - chunk_cursor_ > limits_.max_header_bytes) {
            return Fail(431, "request header fields too large");
          }
          return Result::kNeedMore;
        }
        const size_t eol = static_cast<size_t>(static_cast<const char*>(hit) - base);
        const bool last = eol == chunk_cursor_;
        chunk_cursor_ = eol + 2;
        if (last) {
          delivered_bodies_.push_back(std::move(dechunked_));
          dechunked_.clear();
          return Complete(out, delivered_bodies_.back(), chunk_cursor_);
        }
        break;
      }
      default: return Fail(500, "internal parser state error");
    }
  }
}

HttpRequestParser::Result HttpRequestParser::Complete(HttpRequest* out, std::string_view body,
                                                      size_t end) {
  const char* base = buffer_.data() + start_;
  out->method = std::string_view(base + method_.offset, method_.size);
  out->target = std::string_view(base + target_.offset, target_.size);
  const size_t q = out->target.find('?');
  out->path = out->target.substr(0, q);
  out->query = q == std::string_view::npos ? std::string_view() : out->target.substr(q + 1);
  out->minor_version = minor_version_;
  out->keep_alive = keep_alive_;
  out->headers.clear();
  out->headers.reserve(header_spans_.size());  // one allocation, not one per doubling
  for (const auto& [name, value] : header_spans_) {
    out->headers.push_back({std::string_view(base + name.offset, name.size),
                            std::string_view(base + value.offset, value.size)});
  }
  out->body = body;
  start_ = end;
  scan_ = end;
  state_ = State::kHead;
  return Result::kRequest;
}

}  // namespace aiarch
