// ResponseParser: the load generator's minimal HTTP/1.1 response reader.
// It keeps only what a load test needs (status, framing, connection reuse)
// and skips bodies without storing them.
#include <strings.h>

#include <algorithm>
#include <cstring>
#include <string>

#include "aiarch/loadgen.h"

namespace aiarch {
namespace {

constexpr size_t kMaxHeadBytes = 64 << 10;

bool StartsWithNoCase(const char* p, const char* end, const char* lit) {
  const size_t n = std::strlen(lit);
  if (static_cast<size_t>(end - p) < n) return false;
  return strncasecmp(p, lit, n) == 0;
}

// True when the comma-separated header value contains `token` (case-insensitive).
bool HasToken(const char* p, const char* end, const char* token) {
  const size_t n = std::strlen(token);
  for (; p + n <= end; ++p) {
    if (strncasecmp(p, token, n) == 0) return true;
  }
  return false;
}

}  // namespace

void ResponseParser::Reset() {
  state_ = State::kHead;
  head_.clear();
  status_ = 0;
  close_after_ = false;
  remaining_ = 0;
}

bool ResponseParser::FinishOnClose() { return state_ == State::kUntilClose; }

ResponseParser::Result ResponseParser::ParseHead(const char* data, size_t size, size_t* consumed) {
  // Fast path: the whole head is in this read. Otherwise gather it.
  const char* head = data;
  size_t head_len = 0;
  const size_t old = head_.size();
  if (old == 0) {
    const void* end = memmem(data, size, "\r\n\r\n", 4);
    if (end == nullptr) {
      head_.assign(data, size);
      *consumed = size;
      if (head_.size() > kMaxHeadBytes) {
        error_ = "response header block over 64 KiB";
        return Result::kError;
      }
      return Result::kNeedMore;
    }
    head_len = static_cast<size_t>(static_cast<const char*>(end) - data) + 4;
    *consumed = head_len;
  } else {
    head_.append(data, size);
    const size_t from = old >= 3 ? old - 3 : 0;
    const size_t pos = head_.find("\r\n\r\n", from);
    if (pos == std::string::npos) {
      *consumed = size;
      if (head_.size() > kMaxHeadBytes) {
        error_ = "response header block over 64 KiB";
        return Result::kError;
      }
      return Result::kNeedMore;
    }
    head_len = pos + 4;
    *consumed = head_len - old;
    head = head_.data();
  }
  const char* p = head;
  const char* end = head + head_len;
  // Status line: HTTP/1.x SSS reason
  if (!StartsWithNoCase(p, end, "HTTP/1.") || end - p < 12 || p[8] != ' ') {
    error_ = "malformed status line";
    return Result::kError;
  }
  const bool http10 = p[7] == '0';
  int status = 0;
  for (int i = 9; i < 12; ++i) {
    if (p[i] < '0' || p[i] > '9') {
      error_ = "malformed status code";
      return Result::kError;
    }
    status = status * 10 + (p[i] - '0');
  }
  status_ = status;
  bool has_length = false, chunked = false, keep_alive = false;
  uint64_t length = 0;
  p = static_cast<const char*>(memchr(p, '\n', static_cast<size_t>(end - p)));
  while (p != nullptr && ++p < end) {
    const char* eol = static_cast<const char*>(memchr(p, '\n', static_cast<size_t>(end - p)));
    if (eol == nullptr) break;
    const char* colon = static_cast<const char*>(memchr(p, ':', static_cast<size_t>(eol - p)));
    if (colon != nullptr) {
      const char* v = colon + 1;
      while (v < eol && (*v == ' ' || *v == '\t')) ++v;
      const size_t name_len = static_cast<size_t>(colon - p);
      if (name_len == 14 && strncasecmp(p, "content-length", 14) == 0) {
        has_length = true;
        length = 0;
        for (; v < eol && *v >= '0' && *v <= '9'; ++v) length = length * 10 + (*v - '0');
      } else if (name_len == 17 && strncasecmp(p, "transfer-encoding", 17) == 0) {
        chunked = HasToken(v, eol, "chunked");
      } else if (name_len == 10 && strncasecmp(p, "connection", 10) == 0) {
        if (HasToken(v, eol, "close")) close_after_ = true;
        if (HasToken(v, eol, "keep-alive")) keep_alive = true;
      }
    }
    p = eol;
  }
  if (http10 && !keep_alive) close_after_ = true;
  head_.clear();
  if ((status >= 100 && status < 200) || status == 204 || status == 304) {
    return Result::kComplete;
  }
  if (chunked) {
    state_ = State::kChunkSize;
    return Result::kNeedMore;
  }
  if (has_length) {
    if (length == 0) return Result::kComplete;
    remaining_ = length;
    state_ = State::kBody;
    return Result::kNeedMore;
  }
  state_ = State::kUntilClose;
  close_after_ = true;
  return Result::kNeedMore;
}

ResponseParser::Result ResponseParser::Feed(const char* data, size_t size, size_t* consumed) {
  size_t used = 0;
  while (used < size) {
    const char* p = data + used;
    const size_t left = size - used;
    switch (state_) {
      case State::kHead: {
        size_t n = 0;
        const Result r = ParseHead(p, left, &n);
        used += n;
        if (r != Result::kNeedMore || state_ == State::kHead) {
          *consumed = used;
          return r;
        }
        break;
      }
      case State::kBody: {
        const uint64_t n = std::min<uint64_t>(remaining_, left);
        remaining_ -= n;
        used += n;
        *consumed = used;
        return remaining_ == 0 ? Result::kComplete : Result::kNeedMore;
      }
      case State::kUntilClose: *consumed = size; return Result::kNeedMore;
      case State::kChunkSize:
      case State::kTrailer: {
        // One line at a time; a partial line waits in head_.
        const char* nl = static_cast<const char*>(memchr(p, '\n', left));
        if (nl == nullptr) {
          head_.append(p, left);
          *consumed = size;
          if (head_.size() > kMaxHeadBytes) {
            error_ = "chunk header line too long";
            return Result::kError;
          }
          return Result::kNeedMore;
        }
        head_.append(p, static_cast<size_t>(nl - p));
        used += static_cast<size_t>(nl - p) + 1;
        std::string line;
        line.swap(head_);
        if (!line.empty() && line.back() == '\r') line.pop_back();
        if (state_ == State::kTrailer) {
          if (line.empty()) {
            *consumed = used;
            return Result::kComplete;
          }
          break;  // a trailer field: skipped
        }
        uint64_t chunk = 0;
        size_t digits = 0;
        for (char c : line) {
          int v;
          if (c >= '0' && c <= '9') {
            v = c - '0';
          } else if (c >= 'a' && c <= 'f') {
            v = c - 'a' + 10;
          } else if (c >= 'A' && c <= 'F') {
            v = c - 'A' + 10;
          } else {
            break;  // chunk extensions follow
          }
          chunk = chunk * 16 + static_cast<uint64_t>(v);
          ++digits;
        }
        if (digits == 0 || digits > 15) {
          error_ = "malformed chunk size";
          *consumed = used;
          return Result::kError;
        }
        if (chunk == 0) {
          state_ = State::kTrailer;
        } else {
          remaining_ = chunk;
          state_ = State::kChunkData;
        }
        break;
      }
      case State::kChunkData: {
        const uint64_t n = std::min<uint64_t>(remaining_, left);
        remaining_ -= n;
        used += n;
        if (remaining_ > 0) {
          *consumed = used;
          return Result::kNeedMore;
        }
        state_ = State::kChunkCrlf;
        remaining_ = 2;
        break;
      }
      case State::kChunkCrlf: {
        while (remaining_ > 0 && used < size) {
          const char expected = remaining_ == 2 ? '\r' : '\n';
          if (data[used] != expected) {
            error_ = "chunk data not followed by CRLF";
            *consumed = used;
            return Result::kError;
          }
          ++used;
          --remaining_;
        }
        if (remaining_ > 0) {
          *consumed = used;
          return Result::kNeedMore;
        }
        state_ = State::kChunkSize;
        break;
      }
    }
  }
  *consumed = used;
  return Result::kNeedMore;
}

}  // namespace aiarch
