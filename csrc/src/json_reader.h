// JSON reading for the v2 codec's request decoder (v2_decode.cc): a strict
// single-pass reader, a scanner for tensor data (arrays of numbers, read in
// one pass with each number's value), and the number conversions that turn a
// scanned token into exactly the double — or the float of that double — that
// a correct parser gives.
//
// Contract
// - Strict RFC 8259 JSON: a defect is reported (JsonReader::error, with its
//   byte offset) and never read past; nesting deeper than kMaxDepth is a
//   defect of its own (too_deep()), so callers can hand such bodies to a
//   general reader.
// - Numbers: ClingerDouble and FloatViaDouble answer only when they are sure
//   to match a correctly rounded parse (then bit for bit), else return false
//   for the caller to parse the token with std::from_chars.
// - Nothing here allocates per element; a reader never outlives its buffer.
#pragma once

#include <cstdint>
#include <cstring>
#include <limits>
#include <string>

namespace aiarch {
namespace json {

inline constexpr int kMaxDepth = 64;

// Eight ASCII digits, loaded little-endian (the first digit in the low byte).
inline bool EightDigits(const char* p, uint64_t* v) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
  std::memcpy(v, p, 8);
  // Every byte 0x30-0x39: high nibble 3, and adding 6 keeps it 3 (no byte
  // carries into the next once each is at most 0x3F).
  constexpr uint64_t kHigh = 0xF0F0F0F0F0F0F0F0, kThrees = 0x3030303030303030;
  return (*v & kHigh) == kThrees && ((*v + 0x0606060606060606) & kHigh) == kThrees;
#else
  (void)p;
  (void)v;
  return false;
#endif
}

// The value of eight digits EightDigits accepted, combined in a few
// multiplications instead of eight dependent ones: adjacent digits into
// two-digit numbers, those into four-digit ones, then the two halves.
inline uint64_t EightDigitsValue(uint64_t v) {
  v -= 0x3030303030303030;                         // bytes d0..d7, d0 first
  v = (v * 10 + (v >> 8)) & 0x00FF00FF00FF00FF;    // 16-bit lanes: 10*d0+d1, ...
  v = (v * 100 + (v >> 16)) & 0x0000FFFF0000FFFF;  // 32-bit lanes: 4 digits each
  return (v & 0xFFFFFFFF) * 10000 + (v >> 32);
}

// One JSON number token as the scanner read it: its text, and its value as
// mantissa * 10^exp10 while all its significant digits fit in the mantissa.
struct DecimalToken {
  const char* begin = nullptr;
  const char* end = nullptr;
  uint64_t mantissa = 0;
  int exp10 = 0;
  bool exact = true;  // at most 19 significant digits and a sane exponent
  bool negative = false;
};

// Scans, from `p`, an array of JSON numbers or of such arrays (nested at most
// to kMaxDepth counting from `depth`, as JsonReader counts), calling
// on_number(token) for each number in order (false stops the scan). Returns
// the end of the array, or null on anything else: a string, literal or object
// inside, a syntax defect, deeper nesting, or on_number refusing. Strict JSON
// number grammar; whitespace as JSON allows. The digits are read once, for
// the grammar and the token's value together.
template <typename OnNumber>
const char* ScanNumericArray(const char* p, const char* end, int depth, OnNumber&& on_number) {
  const auto digit = [&](const char* q) { return q < end && *q >= '0' && *q <= '9'; };
  int open = 0;
  bool after_value = false;  // a value (number or array) just ended
  bool need_value = false;   // after ',': a value must follow
  while (p < end) {
    const char c = *p;
    if (c == ' ' || c == '\t' || c == '\n' || c == '\r') {
      ++p;
    } else if (c == '[') {
      if (after_value || depth + open > kMaxDepth) return nullptr;
      ++open;
      ++p;
      need_value = false;
    } else if (c == ']') {
      if (open == 0 || need_value) return nullptr;
      --open;
      ++p;
      after_value = true;
      if (open == 0) return p;
    } else if (c == ',') {
      if (!after_value || open == 0) return nullptr;
      ++p;
      after_value = false;
      need_value = true;
    } else {
      if (after_value || open == 0 || depth + open > kMaxDepth) return nullptr;
      // -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?
      DecimalToken t;
      t.begin = p;
      if (*p == '-') {
        t.negative = true;
        ++p;
      }
      if (!digit(p)) return nullptr;
      uint64_t m = 0;
      int significant = 0, exp10 = 0;
      if (*p == '0') {
        ++p;
      } else {
        for (uint64_t eight; significant <= 11 && end - p >= 8 && EightDigits(p, &eight); p += 8) {
          m = m * 100000000 + EightDigitsValue(eight);
          significant += 8;
        }
        for (; digit(p); ++p) {
          if (significant++ < 19) {
            m = m * 10 + static_cast<uint64_t>(*p - '0');
          } else {
            t.exact = false;
          }
        }
      }
      if (p < end && *p == '.') {
        ++p;
        if (!digit(p)) return nullptr;
        // (Leading zeros read eight at a time count as significant: at worst
        // the token leaves the fast path.)
        for (uint64_t eight; significant <= 11 && end - p >= 8 && EightDigits(p, &eight); p += 8) {
          m = m * 100000000 + EightDigitsValue(eight);
          significant += 8;
          exp10 -= 8;
        }
        for (; digit(p); ++p) {
          if (m == 0 && *p == '0') {
            --exp10;  // a leading zero of the fraction
          } else if (significant++ < 19) {
            m = m * 10 + static_cast<uint64_t>(*p - '0');
            --exp10;
          } else {
            t.exact = false;
          }
        }
      }
      if (p < end && (*p == 'e' || *p == 'E')) {
        ++p;
        bool negative_exp = false;
        if (p < end && (*p == '+' || *p == '-')) negative_exp = *p++ == '-';
        if (!digit(p)) return nullptr;
        int x = 0;
        for (; digit(p); ++p) {
          if (x < 100000) x = x * 10 + (*p - '0');
        }
        if (x >= 100000) t.exact = false;
        exp10 += negative_exp ? -x : x;
      }
      t.end = p;
      t.mantissa = m;
      t.exp10 = exp10;
      if (!on_number(t)) return nullptr;
      after_value = true;
      need_value = false;
    }
  }
  return nullptr;
}

// A strict single-pass JSON reader over one buffer. Every method returns
// false on the first defect and leaves its description in `error`.
class JsonReader {
 public:
  JsonReader(const char* begin, const char* end) : p_(begin), end_(end) {}

  std::string error;

  const char* pos() const { return p_; }
  void Ws() {
    while (p_ < end_ && (*p_ == ' ' || *p_ == '\t' || *p_ == '\n' || *p_ == '\r')) ++p_;
  }
  char Peek() {
    Ws();
    return p_ < end_ ? *p_ : '\0';
  }
  bool AtEnd() {
    Ws();
    return p_ == end_;
  }
  bool Fail(const std::string& what) {
    if (error.empty()) error = what;
    return false;
  }
  bool Syntax(const char* what) {
    if (error.empty()) {
      error = std::string(what) + " at byte " + std::to_string(offset());
      syntax_ = true;
    }
    return false;
  }
  bool TooDeep() {
    if (error.empty()) too_deep_ = true;
    return Syntax("JSON nested too deeply");
  }
  bool syntax_error() const { return syntax_; }
  bool too_deep() const { return too_deep_; }
  size_t offset() const { return static_cast<size_t>(p_ - begin_); }
  void set_begin(const char* b) { begin_ = b; }

  bool Literal(const char* word) {
    const size_t n = std::strlen(word);
    if (static_cast<size_t>(end_ - p_) < n || std::memcmp(p_, word, n) != 0) {
      return Syntax("invalid literal");
    }
    p_ += n;
    return true;
  }

  // Reads a string; `out` may be null to skip it (still validated).
  bool String(std::string* out) {
    Ws();
    if (p_ >= end_ || *p_ != '"') return Syntax("expected a string");
    ++p_;
    if (out) out->clear();
    while (true) {
      const char* run = p_;
      while (p_ < end_ && *p_ != '"' && *p_ != '\\' && static_cast<unsigned char>(*p_) >= 0x20 &&
             static_cast<unsigned char>(*p_) < 0x80) {
        ++p_;
      }
      if (out) out->append(run, p_);
      if (p_ >= end_) return Syntax("unterminated string");
      const unsigned char c = static_cast<unsigned char>(*p_);
      if (c == '"') {
        ++p_;
        return true;
      }
      if (c < 0x20) return Syntax("control character in string");
      if (c == '\\') {
        if (!Escape(out)) return false;
        continue;
      }
      const size_t n = Utf8Length(p_, end_);
      if (n == 0) return Syntax("invalid UTF-8 in string");
      if (out) out->append(p_, n);
      p_ += n;
    }
  }

  struct Number {
    const char* begin = nullptr;
    const char* end = nullptr;
    bool integer = true;  // no fraction, no exponent
    bool negative = false;
  };
  bool ReadNumber(Number* num) {
    Ws();
    const char* s = p_;
    num->begin = s;
    num->negative = false;
    num->integer = true;
    if (p_ < end_ && *p_ == '-') {
      num->negative = true;
      ++p_;
    }
    if (p_ >= end_ || *p_ < '0' || *p_ > '9') return Syntax("invalid number");
    if (*p_ == '0') {
      ++p_;
    } else {
      while (p_ < end_ && *p_ >= '0' && *p_ <= '9') ++p_;
    }
    if (p_ < end_ && *p_ == '.') {
      num->integer = false;
      ++p_;
      if (p_ >= end_ || *p_ < '0' || *p_ > '9') return Syntax("invalid number");
      while (p_ < end_ && *p_ >= '0' && *p_ <= '9') ++p_;
    }
    if (p_ < end_ && (*p_ == 'e' || *p_ == 'E')) {
      num->integer = false;
      ++p_;
      if (p_ < end_ && (*p_ == '+' || *p_ == '-')) ++p_;
      if (p_ >= end_ || *p_ < '0' || *p_ > '9') return Syntax("invalid number");
      while (p_ < end_ && *p_ >= '0' && *p_ <= '9') ++p_;
    }
    num->end = p_;
    return true;
  }

  // Skips a value that is an array of numbers or of such arrays (a tensor's
  // `data`) in one tight pass. Anything else — another value, a defect, deeper
  // nesting than `depth` allows — leaves the reader where it was and returns
  // false, and SkipValue then reads it (and words any error) as before.
  bool SkipNumericArray(int depth) {
    Ws();
    const char* e = ScanNumericArray(p_, end_, depth, [](const DecimalToken&) { return true; });
    if (e == nullptr) return false;
    p_ = e;
    return true;
  }
  void Seek(const char* p) { p_ = p; }
  const char* end() const { return end_; }

  bool SkipValue(int depth) {
    if (depth > kMaxDepth) return TooDeep();
    switch (Peek()) {
      case '{': return Object(depth, [&](const std::string&) { return SkipValue(depth + 1); });
      case '[': return Array(depth, [&](size_t) { return SkipValue(depth + 1); });
      case '"': return String(nullptr);
      case 't': return Literal("true");
      case 'f': return Literal("false");
      case 'n': return Literal("null");
      default: {
        Number n;
        return ReadNumber(&n);
      }
    }
  }

  // Calls member(key) with the reader at each member's value; member must
  // consume the value.
  template <typename Fn>
  bool Object(int depth, Fn&& member) {
    if (depth > kMaxDepth) return TooDeep();
    if (Peek() != '{') return Syntax("expected an object");
    ++p_;
    if (Peek() == '}') {
      ++p_;
      return true;
    }
    std::string key;
    while (true) {
      if (!String(&key)) return false;
      if (Peek() != ':') return Syntax("expected ':'");
      ++p_;
      Ws();
      if (!member(key)) return false;
      const char c = Peek();
      ++p_;
      if (c == '}') return true;
      if (c != ',') {
        --p_;
        return Syntax("expected ',' or '}'");
      }
    }
  }

  template <typename Fn>
  bool Array(int depth, Fn&& element) {
    if (depth > kMaxDepth) return TooDeep();
    if (Peek() != '[') return Syntax("expected an array");
    ++p_;
    if (Peek() == ']') {
      ++p_;
      return true;
    }
    for (size_t i = 0;; ++i) {
      Ws();
      if (!element(i)) return false;
      const char c = Peek();
      ++p_;
      if (c == ']') return true;
      if (c != ',') {
        --p_;
        return Syntax("expected ',' or ']'");
      }
    }
  }

 private:
  static size_t Utf8Length(const char* p, const char* end) {
    const unsigned char c = static_cast<unsigned char>(*p);
    size_t n;
    uint32_t cp;
    if (c >= 0xC2 && c <= 0xDF) {
      n = 2;
      cp = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
      n = 3;
      cp = c & 0x0F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      n = 4;
      cp = c & 0x07;
    } else {
      return 0;
    }
    if (static_cast<size_t>(end - p) < n) return 0;
    for (size_t i = 1; i < n; ++i) {
      const unsigned char k = static_cast<unsigned char>(p[i]);
      if ((k & 0xC0) != 0x80) return 0;
      cp = (cp << 6) | (k & 0x3F);
    }
    if ((n == 3 && cp < 0x800) || (n == 4 && (cp < 0x10000 || cp > 0x10FFFF)) ||
        (cp >= 0xD800 && cp <= 0xDFFF)) {
      return 0;
    }
    return n;
  }

  static void AppendUtf8(uint32_t cp, std::string* out) {
    if (cp < 0x80) {
      out->push_back(static_cast<char>(cp));
    } else if (cp < 0x800) {
      out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
      out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else if (cp < 0x10000) {
      out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
      out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
      out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else {
      out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
      out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
      out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
      out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    }
  }

  bool Hex4(uint32_t* v) {
    if (end_ - p_ < 4) return Syntax("invalid \\u escape");
    *v = 0;
    for (int i = 0; i < 4; ++i) {
      const char c = *p_++;
      int d;
      if (c >= '0' && c <= '9') {
        d = c - '0';
      } else if ((c | 0x20) >= 'a' && (c | 0x20) <= 'f') {
        d = (c | 0x20) - 'a' + 10;
      } else {
        return Syntax("invalid \\u escape");
      }
      *v = (*v << 4) | static_cast<uint32_t>(d);
    }
    return true;
  }

  bool Escape(std::string* out) {
    ++p_;  // the backslash
    if (p_ >= end_) return Syntax("unterminated string");
    const char e = *p_++;
    char plain;
    switch (e) {
      case '"': plain = '"'; break;
      case '\\': plain = '\\'; break;
      case '/': plain = '/'; break;
      case 'b': plain = '\b'; break;
      case 'f': plain = '\f'; break;
      case 'n': plain = '\n'; break;
      case 'r': plain = '\r'; break;
      case 't': plain = '\t'; break;
      case 'u': {
        uint32_t cp = 0;
        if (!Hex4(&cp)) return false;
        if (cp >= 0xD800 && cp <= 0xDBFF) {
          uint32_t low = 0;
          if (end_ - p_ < 2 || p_[0] != '\\' || p_[1] != 'u') return Syntax("unpaired surrogate");
          p_ += 2;
          if (!Hex4(&low)) return false;
          if (low < 0xDC00 || low > 0xDFFF) return Syntax("unpaired surrogate");
          cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
        } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
          return Syntax("unpaired surrogate");
        }
        if (out) AppendUtf8(cp, out);
        return true;
      }
      default: return Syntax("invalid escape");
    }
    if (out) out->push_back(plain);
    return true;
  }

  const char* p_;
  const char* end_;
  const char* begin_ = nullptr;
  bool syntax_ = false;
  bool too_deep_ = false;
};

// A JSON value where the server only needs its type and, for integers, value
// (parameters: priority, timeout, binary_data_size, binary_data...).
struct Scalar {
  enum Kind { kNull, kTrue, kFalse, kInt, kFloat, kString, kOther } kind = kNull;
  bool negative = false;
  bool overflow = false;
  uint64_t magnitude = 0;
  bool NonNegativeInt() const { return kind == kInt && (!negative || magnitude == 0) && !overflow; }
};

inline bool ParseMagnitude(const char* b, const char* e, uint64_t* out) {
  if (b < e && *b == '-') ++b;
  uint64_t v = 0;
  for (; b < e; ++b) {
    const uint64_t d = static_cast<uint64_t>(*b - '0');
    if (v > (std::numeric_limits<uint64_t>::max() - d) / 10) return false;
    v = v * 10 + d;
  }
  *out = v;
  return true;
}

inline bool ReadScalar(JsonReader& r, int depth, Scalar* s, std::string* string_value = nullptr) {
  switch (r.Peek()) {
    case 'n': s->kind = Scalar::kNull; return r.Literal("null");
    case 't': s->kind = Scalar::kTrue; return r.Literal("true");
    case 'f': s->kind = Scalar::kFalse; return r.Literal("false");
    case '"': s->kind = Scalar::kString; return r.String(string_value);
    case '[':
    case '{': s->kind = Scalar::kOther; return r.SkipValue(depth);
    default: {
      JsonReader::Number n;
      if (!r.ReadNumber(&n)) return false;
      s->kind = n.integer ? Scalar::kInt : Scalar::kFloat;
      s->negative = n.negative;
      if (n.integer) s->overflow = !ParseMagnitude(n.begin, n.end, &s->magnitude);
      return true;
    }
  }
}

// ---------------------------------------------------------------- numbers

inline constexpr double kPow10[] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,
                                    1e8,  1e9,  1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
                                    1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};

// The double nearest the token's value when its significant digits fit 2^53
// and its exponent is within ±22 (Clinger's fast path: both operands are
// exact doubles, so the one multiplication or division rounds correctly).
inline bool ClingerDouble(const DecimalToken& t, double* out) {
  if (!t.exact || t.mantissa > (uint64_t{1} << 53) || t.exp10 < -22 || t.exp10 > 22) {
    return false;
  }
  double v = static_cast<double>(t.mantissa);
  v = t.exp10 < 0 ? v / kPow10[-t.exp10] : v * kPow10[t.exp10];
  *out = t.negative ? -v : v;
  return true;
}

// The float that the nearest double rounds to (what a reader that parses a
// double and casts it — the Python path — stores), for tokens of up to 19
// significant digits and exponents within ±22, as clients send float32 values
// (16-17 digits, e.g. Python's repr of a float32 widened to a double). The
// value is approximated by one multiplication (by 10^k, or by the double
// nearest 10^-k: no division) within 4 ulps of a double; unless that lies
// within 8 double ulps of the midpoint between two floats (about 1 in 2^24
// values), the nearest double rounds to the same float as the approximation.
// False for those, for subnormal floats and for other tokens: the caller then
// parses the double exactly.
inline bool FloatViaDouble(const DecimalToken& t, float* out) {
  static constexpr double kInvPow10[] = {1e0,   1e-1,  1e-2,  1e-3,  1e-4,  1e-5,  1e-6,  1e-7,
                                         1e-8,  1e-9,  1e-10, 1e-11, 1e-12, 1e-13, 1e-14, 1e-15,
                                         1e-16, 1e-17, 1e-18, 1e-19, 1e-20, 1e-21, 1e-22};
  if (!t.exact || t.exp10 < -22 || t.exp10 > 22) return false;
  if (t.mantissa == 0) {
    *out = t.negative ? -0.0f : 0.0f;
    return true;
  }
  const double m = static_cast<double>(t.mantissa);
  const double a = t.exp10 < 0 ? m * kInvPow10[-t.exp10] : m * kPow10[t.exp10];
  if (!(a >= 0x1p-126 && a < 0x1p127)) return false;
  uint64_t bits;
  std::memcpy(&bits, &a, sizeof bits);
  // The 29 bits of a double's mantissa below a float's: 2^28 is a midpoint.
  const uint64_t below = bits & ((uint64_t{1} << 29) - 1);
  constexpr uint64_t kMid = uint64_t{1} << 28;
  if (below + 8 >= kMid && below <= kMid + 8) return false;
  const float f = static_cast<float>(a);
  *out = t.negative ? -f : f;
  return true;
}

}  // namespace json
}  // namespace aiarch
