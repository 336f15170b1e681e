// Request decoding of the v2 codec (aiarch/v2_codec.h): JSON and binary infer
// requests and /predict bodies, into contiguous tensors, with the server's
// error messages. The JSON reading itself is json_reader.h.
#include <charconv>
#include <cmath>
#include <cstring>
#include <limits>
#include <utility>

#include "aiarch/v2_codec.h"
#include "json_reader.h"

namespace aiarch {
namespace {

using namespace json;  // the JSON reader and number conversions, used only here

// Longest parameters.timeout a request may ask for: one day.
constexpr uint64_t kMaxTimeoutUs = uint64_t{86'400'000} * 1000;

// ---------------------------------------------------------------- datatypes

struct V2Type {
  const char* name;
  DType dtype;
};
constexpr V2Type kV2Types[] = {
    {"BOOL", DType::kBool},     {"UINT8", DType::kUint8},   {"UINT16", DType::kUint16},
    {"UINT32", DType::kUint32}, {"UINT64", DType::kUint64}, {"INT8", DType::kInt8},
    {"INT16", DType::kInt16},   {"INT32", DType::kInt32},   {"INT64", DType::kInt64},
    {"FP16", DType::kFp16},     {"BF16", DType::kBf16},     {"FP32", DType::kFp32},
    {"FP64", DType::kFp64},
};

// Product of dims, saturating at a value no body can reach.
uint64_t ElementCount(const std::vector<int64_t>& shape) {
  constexpr uint64_t kCap = uint64_t{1} << 62;
  uint64_t n = 1;
  for (int64_t d : shape) {
    const uint64_t u = static_cast<uint64_t>(d);
    if (u != 0 && n > kCap / u) return kCap;
    n *= u;
  }
  return n;
}

// ---------------------------------------------------------------- tensor data

template <typename T>
void Store(uint8_t* dst, size_t index, T v) {
  std::memcpy(dst + index * sizeof(T), &v, sizeof(T));
}

bool IntInRange(DType dt, bool negative, uint64_t m) {
  switch (dt) {
    case DType::kInt8: return negative ? m <= 128 : m <= 127;
    case DType::kInt16: return negative ? m <= 32768 : m <= 32767;
    case DType::kInt32: return negative ? m <= 2147483648ull : m <= 2147483647ull;
    case DType::kInt64: return negative ? m <= 9223372036854775808ull : m <= 9223372036854775807ull;
    case DType::kUint8: return !negative ? m <= 255 : m == 0;
    case DType::kUint16: return !negative ? m <= 65535 : m == 0;
    case DType::kUint32: return !negative ? m <= 4294967295ull : m == 0;
    case DType::kUint64: return !negative || m == 0;
    default: return false;
  }
}

void StoreInt(DType dt, uint8_t* dst, size_t i, bool negative, uint64_t m) {
  const int64_t s = negative ? static_cast<int64_t>(0 - m) : static_cast<int64_t>(m);
  switch (dt) {
    case DType::kInt8: Store<int8_t>(dst, i, static_cast<int8_t>(s)); break;
    case DType::kInt16: Store<int16_t>(dst, i, static_cast<int16_t>(s)); break;
    case DType::kInt32: Store<int32_t>(dst, i, static_cast<int32_t>(s)); break;
    case DType::kInt64: Store<int64_t>(dst, i, s); break;
    case DType::kUint8: Store<uint8_t>(dst, i, static_cast<uint8_t>(m)); break;
    case DType::kUint16: Store<uint16_t>(dst, i, static_cast<uint16_t>(m)); break;
    case DType::kUint32: Store<uint32_t>(dst, i, static_cast<uint32_t>(m)); break;
    case DType::kUint64: Store<uint64_t>(dst, i, m); break;
    default: break;
  }
}

// IEEE binary16 bits of `d`, rounded once from the double to the nearest half
// (ties to even; overflow to infinity), as numpy converts float64 to float16:
// JSON numbers read as doubles reach a float16 input as the Python path's do.
uint16_t DoubleToHalf(double d) {
  uint64_t x;
  std::memcpy(&x, &d, sizeof x);
  const uint16_t sign = static_cast<uint16_t>((x >> 48) & 0x8000);
  const int exp = static_cast<int>((x >> 52) & 0x7FF);
  uint64_t mant = x & ((uint64_t{1} << 52) - 1);
  if (exp == 0x7FF) return sign | (mant ? 0x7E00 : 0x7C00);  // NaN (quiet), infinity
  const int e = exp - 1023 + 15;                             // the half's biased exponent
  if (e >= 0x1F) return sign | 0x7C00;
  int shift = 42;  // 52 mantissa bits down to 10
  uint64_t bits;
  if (e <= 0) {                // a subnormal half (or zero): the implicit bit joins the mantissa
    if (e < -10) return sign;  // below half the smallest subnormal: zero
    mant |= uint64_t{1} << 52;
    shift = 43 - e;
    bits = mant >> shift;
  } else {
    bits = (static_cast<uint64_t>(e) << 10) | (mant >> shift);
  }
  const uint64_t rest = mant & ((uint64_t{1} << shift) - 1);
  const uint64_t half = uint64_t{1} << (shift - 1);
  if (rest > half || (rest == half && (bits & 1))) ++bits;  // a carry may reach infinity: right
  return static_cast<uint16_t>(sign | bits);
}

// Stores one parsed number of a float tensor (FP16 rounded once from the double).
void StoreFloat(DType dt, uint8_t* dst, size_t i, double v) {
  if (dt == DType::kFp32) {
    Store<float>(dst, i, static_cast<float>(v));
  } else if (dt == DType::kFp16) {
    Store<uint16_t>(dst, i, DoubleToHalf(v));
  } else {
    Store<double>(dst, i, v);
  }
}

// A float tensor's `data` at the reader, decoded while it is scanned: one pass
// where the general path takes two (skip, then DecodeJsonData). Takes only
// the common case — arrays of numbers holding exactly `count` values, each in
// range — and otherwise leaves the reader where it was, clears `out` and
// returns false, for the general path to read and word.
bool DecodeFloatArray(JsonReader& r, int depth, DType dt, uint64_t count,
                      std::vector<uint8_t>* out) {
  r.Ws();
  const char* begin = r.pos();
  // Each value takes at least two bytes ("0,"): a larger count cannot be here.
  if (count > static_cast<uint64_t>(r.end() - begin) / 2 + 1) return false;
  out->resize(static_cast<size_t>(count) * DTypeSize(dt));
  uint8_t* dst = out->data();
  uint64_t n = 0;
  const char* e = ScanNumericArray(begin, r.end(), depth, [&](const DecimalToken& t) {
    if (n == count) return false;
    const size_t i = static_cast<size_t>(n++);
    if (dt == DType::kFp32) {
      float f;
      if (FloatViaDouble(t, &f)) {
        Store<float>(dst, i, f);
        return true;
      }
    }
    double v;
    if (!ClingerDouble(t, &v)) {
      const auto res = std::from_chars(t.begin, t.end, v);
      if (res.ec != std::errc() || res.ptr != t.end) return false;
    }
    StoreFloat(dt, dst, i, v);
    return true;
  });
  if (e == nullptr || n != count) {
    out->clear();
    return false;
  }
  r.Seek(e);
  return true;
}

// Decodes the numbers of a (syntax-checked) JSON value, nested or flat — the
// brackets carry nothing once the shape is known — into `count` elements
// (only counted and checked when `out` is null).
bool DecodeJsonData(std::string_view raw, DType dt, const char* dt_name,
                    const std::vector<int64_t>& shape, uint64_t count, std::vector<uint8_t>* out,
                    std::string* error) {
  const size_t size = DTypeSize(dt);
  uint8_t* dst = nullptr;
  if (out != nullptr) {
    out->assign(static_cast<size_t>(count) * size, 0);
    dst = out->data();
  } else {
    count = std::numeric_limits<uint64_t>::max();  // never store
  }
  const uint64_t expected = out != nullptr ? count : ElementCount(shape);
  const char* p = raw.data();
  const char* end = p + raw.size();
  uint64_t n = 0;
  // Built only for an error: the happy path allocates nothing per element or per call.
  const auto what = [dt_name] { return std::string("invalid ") + dt_name + " tensor data: "; };
  while (p < end) {
    const char c = *p;
    if (c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '[' || c == ']' || c == ',') {
      ++p;
      continue;
    }
    if (dt == DType::kBool) {
      bool v;
      if (c == 't') {
        v = true;
        p += 4;
      } else if (c == 'f') {
        v = false;
        p += 5;
      } else {
        *error = what() + "expected a bool at element " + std::to_string(n);
        return false;
      }
      if (dst != nullptr && n < count) Store<uint8_t>(dst, static_cast<size_t>(n), v ? 1 : 0);
      ++n;
      continue;
    }
    if (c != '-' && (c < '0' || c > '9')) {
      *error = what() + "expected a number at element " + std::to_string(n);
      return false;
    }
    const char* b = p;
    if (dt == DType::kFp32 || dt == DType::kFp64 || dt == DType::kFp16) {
      // The value is syntax-checked JSON, so from_chars ends exactly where the
      // number token does: no scan of our own before it.
      double v;
      const auto r = std::from_chars(b, end, v);
      p = r.ptr;
      if (r.ec != std::errc() || p == b) {
        *error = std::string("value out of range for ") + dt_name + ": " + std::string(b, p);
        return false;
      }
      if (dst != nullptr && n < count) StoreFloat(dt, dst, static_cast<size_t>(n), v);
      ++n;
      continue;
    }
    bool integer = true;
    while (p < end && ((*p >= '0' && *p <= '9') || *p == '-' || *p == '+' || *p == '.' ||
                       *p == 'e' || *p == 'E')) {
      if (*p == '.' || *p == 'e' || *p == 'E') integer = false;
      ++p;
    }
    if (!integer) {
      *error = what() + "expected an integer at element " + std::to_string(n);
      return false;
    }
    uint64_t m;
    const bool negative = *b == '-';
    if (!ParseMagnitude(b, p, &m) || !IntInRange(dt, negative, m)) {
      *error = std::string("value out of range for ") + dt_name + ": " + std::string(b, p);
      return false;
    }
    if (dst != nullptr && n < count) StoreInt(dt, dst, static_cast<size_t>(n), negative, m);
    ++n;
  }
  if (n != expected) {
    *error = "unexpected number of elements for shape " + ShapeText(shape) + ": expected " +
             std::to_string(expected) + ", got " + std::to_string(n);
    return false;
  }
  return true;
}

// ---------------------------------------------------------------- request parse

struct RawInput {
  std::string name;
  std::vector<int64_t> shape;
  std::string datatype;
  bool has_name = false, has_shape = false, has_datatype = false;
  std::string_view data;  // raw JSON, empty when absent
  // `data` already decoded in one pass (float datatypes given before it, see
  // DecodeFloatArray); reset when `shape` or `datatype` is given again.
  bool predecoded = false;
  std::vector<uint8_t> decoded;
  bool has_binary_size = false;
  uint64_t binary_size = 0;
};

struct RawOutput {
  std::string name;
  bool has_name = false;
  bool classification = false;
  Scalar binary_data;  // kNull when absent
};

struct RawRequest {
  std::vector<RawInput> inputs;
  bool has_inputs = false;
  std::string id;
  bool has_id = false;
  std::vector<RawOutput> outputs;
  bool has_outputs = false;
  bool binary_data_output = false;
  Scalar priority, timeout;  // kNull when absent
  bool has_priority = false, has_timeout = false;
  Scalar route_key;              // kNull when absent
  std::string route_key_string;  // its value when a string
  std::string reserved_param;    // first triton_* key
  bool sequence_param = false;
};

std::string At(const std::string& path) { return " - at `" + path + "`"; }

// The array at `where` + `field` (the path is built only for an error).
bool ParseShape(JsonReader& r, int depth, const std::string& where, const char* field,
                std::vector<int64_t>* shape) {
  shape->clear();
  shape->reserve(4);  // one allocation for the common ranks
  if (r.Peek() != '[') {
    if (r.error.empty()) r.SkipValue(depth);
    return r.Fail("Expected `array`" + At(where + field));
  }
  return r.Array(depth, [&](size_t i) {
    Scalar s;
    if (!ReadScalar(r, depth + 1, &s)) return false;
    // The element's path is built only for an error.
    const auto at = [&] { return At(where + field + "[" + std::to_string(i) + "]"); };
    if (s.kind != Scalar::kInt) return r.Fail("Expected `int`" + at());
    if (s.negative && s.magnitude != 0) return r.Fail("Expected `int` >= 0" + at());
    if (s.overflow || s.magnitude > (uint64_t{1} << 62))
      return r.Fail("Integer value out of range" + at());
    shape->push_back(static_cast<int64_t>(s.magnitude));
    return true;
  });
}

// The value at `where` + `field` is not of the `expected` JSON type: skip it
// and fail in the general path's words. The path is built only here, on the
// error path.
bool WrongType(JsonReader& r, int depth, const char* expected, const std::string& where,
               const char* field = "") {
  r.SkipValue(depth);
  return r.Fail(std::string("Expected `") + expected + "`" + At(where + field));
}

// A string member at `where` + `field`.
bool ReadStringMember(JsonReader& r, int depth, const std::string& where, const char* field,
                      std::string* out, bool* seen) {
  if (r.Peek() != '"') return WrongType(r, depth, "str", where, field);
  *seen = true;
  return r.String(out);
}

// A `parameters` member: null, or an object whose members `member(key)` reads.
template <typename Member>
bool ReadParameters(JsonReader& r, int depth, const std::string& where, const char* field,
                    Member&& member) {
  const char c = r.Peek();
  if (c == 'n') return r.Literal("null");
  if (c != '{') return WrongType(r, depth, "object | null", where, field);
  return r.Object(depth, std::forward<Member>(member));
}

bool ParseInput(JsonReader& r, const std::string& where, RawInput* in) {
  if (r.Peek() != '{') return WrongType(r, 2, "object", where);
  const bool ok = r.Object(2, [&](const std::string& key) {
    if (key == "name") return ReadStringMember(r, 3, where, ".name", &in->name, &in->has_name);
    if (key == "datatype") {
      in->predecoded = false;
      return ReadStringMember(r, 3, where, ".datatype", &in->datatype, &in->has_datatype);
    }
    if (key == "shape") {
      in->has_shape = true;
      in->predecoded = false;
      return ParseShape(r, 3, where, ".shape", &in->shape);
    }
    if (key == "data") {
      r.Ws();
      const char* b = r.pos();
      DType dt;
      in->predecoded = in->has_datatype && in->has_shape && V2DatatypeFromName(in->datatype, &dt) &&
                       (dt == DType::kFp32 || dt == DType::kFp64 || dt == DType::kFp16) &&
                       DecodeFloatArray(r, 3, dt, ElementCount(in->shape), &in->decoded);
      if (!in->predecoded && !r.SkipNumericArray(3) && !r.SkipValue(3)) return false;
      in->data = std::string_view(b, static_cast<size_t>(r.pos() - b));
      return true;
    }
    if (key == "parameters") {
      return ReadParameters(r, 3, where, ".parameters", [&](const std::string& pkey) {
        Scalar s;
        if (!ReadScalar(r, 4, &s)) return false;
        if (pkey == "binary_data_size") {
          if (s.kind == Scalar::kNull) {
            in->has_binary_size = false;
            return true;
          }
          if (!s.NonNegativeInt()) return r.Fail("binary_data_size must be a non-negative integer");
          in->has_binary_size = true;
          in->binary_size = s.magnitude;
        }
        return true;
      });
    }
    return r.SkipValue(3);
  });
  if (!ok) return false;
  if (!in->has_name) return r.Fail("Object missing required field `name`" + At(where));
  if (!in->has_shape) return r.Fail("Object missing required field `shape`" + At(where));
  if (!in->has_datatype) return r.Fail("Object missing required field `datatype`" + At(where));
  return true;
}

bool ParseOutput(JsonReader& r, const std::string& where, RawOutput* out) {
  if (r.Peek() != '{') return WrongType(r, 2, "object", where);
  const bool ok = r.Object(2, [&](const std::string& key) {
    if (key == "name") return ReadStringMember(r, 3, where, ".name", &out->name, &out->has_name);
    if (key == "parameters") {
      return ReadParameters(r, 3, where, ".parameters", [&](const std::string& pkey) {
        if (pkey == "classification") out->classification = true;
        if (pkey == "binary_data") return ReadScalar(r, 4, &out->binary_data);
        Scalar ignored;
        return ReadScalar(r, 4, &ignored);
      });
    }
    return r.SkipValue(3);
  });
  if (!ok) return false;
  if (!out->has_name) return r.Fail("Object missing required field `name`" + At(where));
  return true;
}

bool ParseRequest(JsonReader& r, RawRequest* req) {
  if (r.Peek() != '{') {
    if (!r.SkipValue(0)) return false;
    return r.Fail("Expected `object`" + At("$"));
  }
  const bool ok = r.Object(0, [&](const std::string& key) {
    if (key == "inputs") {
      req->has_inputs = true;
      req->inputs.clear();
      if (r.Peek() != '[') return WrongType(r, 1, "array", "$", ".inputs");
      return r.Array(1, [&](size_t i) {
        req->inputs.emplace_back();
        return ParseInput(r, "$.inputs[" + std::to_string(i) + "]", &req->inputs.back());
      });
    }
    if (key == "outputs") {
      req->outputs.clear();
      const char c = r.Peek();
      if (c == 'n') {
        req->has_outputs = false;
        return r.Literal("null");
      }
      if (c != '[') return WrongType(r, 1, "array | null", "$", ".outputs");
      req->has_outputs = true;
      return r.Array(1, [&](size_t i) {
        req->outputs.emplace_back();
        return ParseOutput(r, "$.outputs[" + std::to_string(i) + "]", &req->outputs.back());
      });
    }
    if (key == "id") {
      const char c = r.Peek();
      if (c == 'n') {
        req->has_id = false;
        return r.Literal("null");
      }
      if (c != '"') return WrongType(r, 1, "str | null", "$", ".id");
      req->has_id = true;
      return r.String(&req->id);
    }
    if (key == "parameters") {
      return ReadParameters(r, 1, "$", ".parameters", [&](const std::string& pkey) {
        Scalar s;
        const bool route_key = pkey == "route_key";
        if (!ReadScalar(r, 2, &s, route_key ? &req->route_key_string : nullptr)) return false;
        if (route_key) {
          req->route_key = s;
        } else if (pkey.compare(0, 7, "triton_") == 0 && req->reserved_param.empty()) {
          req->reserved_param = pkey;
        } else if (pkey == "sequence_id" || pkey == "sequence_start" || pkey == "sequence_end") {
          req->sequence_param = true;
        } else if (pkey == "binary_data_output") {
          req->binary_data_output = s.kind == Scalar::kTrue;
        } else if (pkey == "priority") {
          req->priority = s;
          req->has_priority = true;
        } else if (pkey == "timeout") {
          req->timeout = s;
          req->has_timeout = true;
        }
        return true;
      });
    }
    return r.SkipValue(1);
  });
  if (!ok) return false;
  if (!r.AtEnd()) return r.Syntax("trailing characters");
  if (!req->has_inputs) return r.Fail("Object missing required field `inputs`");
  return true;
}

V2DecodeResult Bad(std::string* error, std::string message) {
  *error = std::move(message);
  return V2DecodeResult::kBadRequest;
}

V2DecodeResult DecodeRaw(std::string_view body, const V2Model& model, V2InferRequest* out,
                         std::string* error) {
  if (model.inputs.size() != 1) {
    return Bad(error, "raw binary requests need a model with exactly one input");
  }
  const TensorSpec& spec = model.inputs[0];
  const size_t row = spec.RowBytes();
  if (body.size() != row) {
    return Bad(error, "raw binary input for '" + spec.name + "' must be " + std::to_string(row) +
                          " bytes, got " + std::to_string(body.size()));
  }
  out->inputs.resize(1);
  V2DecodedInput& in = out->inputs[0];
  in.shape.assign(1, 1);
  in.shape.insert(in.shape.end(), spec.shape.begin(), spec.shape.end());
  in.data.assign(body.begin(), body.end());
  out->plan.Clear();
  for (size_t i = 0; i < model.output_names.size(); ++i) {
    out->plan.outputs.push_back(static_cast<int>(i));
    out->plan.binary.push_back(true);
  }
  return V2DecodeResult::kOk;
}

}  // namespace

const char* V2DatatypeName(DType dtype) {
  for (const auto& t : kV2Types) {
    if (t.dtype == dtype) return t.name;
  }
  return "BYTES";
}

bool V2DatatypeFromName(std::string_view name, DType* out) {
  for (const auto& t : kV2Types) {
    if (name == t.name) {
      *out = t.dtype;
      return true;
    }
  }
  return false;
}

V2DecodeResult DecodeV2Infer(std::string_view body, int64_t header_length, const V2Model& model,
                             V2InferRequest* out, std::string* error) {
  const size_t n = body.size();
  size_t json_len = n;
  if (header_length == 0) return DecodeRaw(body, model, out, error);
  if (header_length > 0) {
    if (static_cast<uint64_t>(header_length) > n) {
      return Bad(error, "Inference-Header-Content-Length exceeds the body size");
    }
    json_len = static_cast<size_t>(header_length);
  }
  RawRequest req;
  JsonReader r(body.data(), body.data() + json_len);
  r.set_begin(body.data());
  if (!ParseRequest(r, &req)) {
    // Deeper nesting than the native reader descends: the general path decides.
    if (r.too_deep()) return V2DecodeResult::kNotHandled;
    if (r.syntax_error()) return Bad(error, "failed to parse the request JSON: " + r.error);
    if (r.error.rfind("binary_data_size", 0) == 0) return Bad(error, r.error);
    return Bad(error, "invalid inference request: " + r.error);
  }
  if (req.inputs.empty()) return Bad(error, "inference request has no inputs");

  // Tensors in request order, decoded in the request's datatype.
  struct Decoded {
    DType dtype;
    bool known;
    V2DecodedInput value;
  };
  // Reused across calls (one per thread): one allocation less per request.
  thread_local std::vector<Decoded> decoded;
  decoded.clear();
  decoded.resize(req.inputs.size());
  size_t offset = json_len;
  for (size_t i = 0; i < req.inputs.size(); ++i) {
    RawInput& in = req.inputs[i];
    Decoded& d = decoded[i];
    d.known = V2DatatypeFromName(in.datatype, &d.dtype);
    d.value.shape = std::move(in.shape);  // read from here on as d.value.shape
    const std::vector<int64_t>& shape = d.value.shape;
    const uint64_t count = ElementCount(shape);
    if (in.has_binary_size) {
      if (!in.data.empty()) {
        return Bad(error, "input '" + in.name + "' has both binary_data_size and data");
      }
      if (in.binary_size > n - offset) {
        return Bad(error, "binary data for input '" + in.name + "' runs past the body");
      }
      if (!d.known && in.datatype != "BYTES") {
        return Bad(error, "unsupported datatype '" + in.datatype + "'");
      }
      if (d.known) {
        const uint64_t want = count * DTypeSize(d.dtype);
        if (count >= (uint64_t{1} << 62) / 8 || want != in.binary_size) {
          return Bad(error, "input '" + in.name + "': binary_data_size " +
                                std::to_string(in.binary_size) + " does not match shape " +
                                ShapeText(shape) + " of " + in.datatype + " (" +
                                std::to_string(want) + " bytes)");
        }
        d.value.data.assign(body.data() + offset, body.data() + offset + in.binary_size);
      }
      offset += static_cast<size_t>(in.binary_size);
    } else if (!in.data.empty()) {
      if (!d.known) {
        if (in.datatype == "BYTES") continue;  // refused below: no model takes BYTES here
        return Bad(error, "unsupported datatype '" + in.datatype + "'");
      }
      if (d.dtype == DType::kBf16) {
        return Bad(error, in.datatype + " data cannot be sent as JSON; use the binary extension");
      }
      if (in.predecoded) {
        d.value.data = std::move(in.decoded);
        continue;
      }
      // Far more elements than the body could hold: counted, never allocated.
      const bool absurd =
          count >= (uint64_t{1} << 62) / 8 || count * DTypeSize(d.dtype) > n * 8 + 64;
      if (!DecodeJsonData(in.data, d.dtype, in.datatype.c_str(), shape, count,
                          absurd ? nullptr : &d.value.data, error)) {
        return V2DecodeResult::kBadRequest;
      }
    } else {
      return Bad(error, "input '" + in.name + "' has no data");
    }
  }
  if (offset != n) return Bad(error, "request body has bytes after the last binary input");
  if (!req.reserved_param.empty()) {
    return Bad(error, "parameter '" + req.reserved_param + "' is reserved");
  }
  if (req.sequence_param) return Bad(error, "sequence batching is not supported");

  // Arrange against the model: names, datatypes, shapes, rows.
  const auto& specs = model.inputs;
  if (req.inputs.size() != specs.size()) {
    return Bad(error, "expected " + std::to_string(specs.size()) + " inputs but got " +
                          std::to_string(req.inputs.size()) + " inputs for model '" + model.name +
                          "'");
  }
  out->inputs.assign(specs.size(), V2DecodedInput());
  // Inputs already matched: bits for the first 64 (no allocation), then a vector.
  uint64_t seen_bits = 0;
  std::vector<bool> seen_more(specs.size() > 64 ? specs.size() - 64 : 0, false);
  const auto seen_before = [&](size_t k) {
    if (k < 64) {
      const bool was = (seen_bits >> k) & 1;
      seen_bits |= uint64_t{1} << k;
      return was;
    }
    const bool was = seen_more[k - 64];
    seen_more[k - 64] = true;
    return was;
  };
  int64_t rows = -1;
  for (size_t i = 0; i < req.inputs.size(); ++i) {
    const RawInput& in = req.inputs[i];
    size_t k = 0;
    while (k < specs.size() && specs[k].name != in.name) ++k;
    if (k == specs.size()) {
      return Bad(error,
                 "unexpected inference input '" + in.name + "' for model '" + model.name + "'");
    }
    if (seen_before(k)) return Bad(error, "input '" + in.name + "' given twice");
    const TensorSpec& spec = specs[k];
    Decoded& d = decoded[i];
    if (!d.known || d.dtype != spec.dtype) {
      return Bad(error, "unexpected datatype " + in.datatype + " for inference input '" + in.name +
                            "', expecting " + V2DatatypeName(spec.dtype));
    }
    const auto& shape = d.value.shape;
    bool fits = shape.size() == spec.shape.size() + 1 && shape[0] >= 1;
    for (size_t j = 0; fits && j < spec.shape.size(); ++j) {
      if (spec.shape[j] >= 0 && shape[j + 1] != spec.shape[j]) fits = false;
    }
    if (!fits) {
      std::vector<int64_t> expected{-1};
      expected.insert(expected.end(), spec.shape.begin(), spec.shape.end());
      return Bad(error, "unexpected shape for input '" + in.name + "' for model '" + model.name +
                            "'. Expected " + ShapeText(expected) + ", got " + ShapeText(shape));
    }
    if (rows < 0) {
      rows = shape[0];
    } else if (shape[0] != rows) {
      return Bad(error, "all inputs must have the same batch size");
    }
    out->inputs[k] = std::move(d.value);
  }

  // Outputs to return.
  V2ResponsePlan& plan = out->plan;
  plan.Clear();
  plan.has_id = req.has_id;
  plan.id = std::move(req.id);
  if (!req.has_outputs) {
    for (size_t i = 0; i < model.output_names.size(); ++i) {
      plan.outputs.push_back(static_cast<int>(i));
      plan.binary.push_back(req.binary_data_output);
    }
  } else {
    for (const RawOutput& o : req.outputs) {
      size_t k = 0;
      while (k < model.output_names.size() && model.output_names[k] != o.name) ++k;
      if (k == model.output_names.size()) {
        return Bad(error,
                   "unexpected inference output '" + o.name + "' for model '" + model.name + "'");
      }
      if (o.classification) return Bad(error, "classification outputs are not supported");
      bool binary = req.binary_data_output;
      if (o.binary_data.kind != Scalar::kNull) binary = o.binary_data.kind == Scalar::kTrue;
      plan.outputs.push_back(static_cast<int>(k));
      plan.binary.push_back(binary);
    }
  }

  // Schedule parameters, checked as the Python application does: timeout
  // (null or 0: none) before priority.
  out->timeout_us = 0;
  if (req.has_timeout && req.timeout.kind != Scalar::kNull) {
    if (!req.timeout.NonNegativeInt() || req.timeout.magnitude > kMaxTimeoutUs) {
      return Bad(error,
                 "parameter 'timeout' must be an integer number of microseconds from 0 (none) to " +
                     std::to_string(kMaxTimeoutUs) + " (one day)");
    }
    out->timeout_us = static_cast<int64_t>(req.timeout.magnitude);
  }
  out->priority = 0;
  if (req.has_priority) {
    if (!req.priority.NonNegativeInt() || req.priority.magnitude > 0xFFFFFFFFu) {
      return Bad(error,
                 "parameter 'priority' must be an integer from 0 (the model's default) to the "
                 "model's priority levels");
    }
    out->priority = static_cast<uint32_t>(req.priority.magnitude);
  }
  out->route_key.clear();
  using RouteKey = V2InferRequest::RouteKey;
  const Scalar& key = req.route_key;
  switch (key.kind) {
    case Scalar::kNull: out->route_key_kind = RouteKey::kNone; break;
    case Scalar::kString:
      out->route_key_kind = RouteKey::kText;
      out->route_key = req.route_key_string;
      break;
    case Scalar::kTrue:
    case Scalar::kFalse:
      out->route_key_kind = RouteKey::kText;
      out->route_key = key.kind == Scalar::kTrue ? "True" : "False";
      break;
    case Scalar::kInt:
      out->route_key_kind = key.overflow ? RouteKey::kOther : RouteKey::kText;
      if (!key.overflow) {
        out->route_key =
            (key.negative && key.magnitude != 0 ? "-" : "") + std::to_string(key.magnitude);
      }
      break;
    default: out->route_key_kind = RouteKey::kOther; break;
  }
  return V2DecodeResult::kOk;
}

// ---------------------------------------------------------------- /predict

namespace {

// The values of a /predict input as the Python codec reads them: brackets
// dropped, the rest a comma-separated list. -1 when that list is malformed
// although the JSON was not (an empty list somewhere: "[[1],[]]").
int64_t PredictValueCount(std::string_view raw) {
  int64_t count = 0;
  bool expecting = true;  // a value, not a comma
  for (size_t i = 0; i < raw.size();) {
    const char c = raw[i];
    if (c == '[' || c == ']' || c == ' ' || c == '\t' || c == '\n' || c == '\r') {
      ++i;
    } else if (c == ',') {
      if (expecting) return -1;
      expecting = true;
      ++i;
    } else {
      if (!expecting) return -1;
      ++count;
      expecting = false;
      while (i < raw.size() && raw[i] != ',' && raw[i] != '[' && raw[i] != ']' && raw[i] != ' ' &&
             raw[i] != '\t' && raw[i] != '\n' && raw[i] != '\r') {
        ++i;
      }
    }
  }
  return count > 0 && expecting ? -1 : count;
}

bool DecodePredictRows(std::string_view raw, const TensorSpec& spec, V2DecodedInput* out) {
  if (spec.dtype == DType::kBf16) return false;
  int64_t per_row = 1;
  for (int64_t d : spec.shape) {
    if (d < 0) return false;
    per_row *= d;
  }
  const int64_t count = PredictValueCount(raw);
  if (count <= 0 || per_row == 0 || count % per_row != 0) return false;
  out->shape.assign(1, count / per_row);
  out->shape.insert(out->shape.end(), spec.shape.begin(), spec.shape.end());
  std::string error;
  return DecodeJsonData(raw, spec.dtype, V2DatatypeName(spec.dtype), out->shape,
                        static_cast<uint64_t>(count), &out->data, &error);
}

}  // namespace

V2DecodeResult DecodePredict(std::string_view body, const V2Model& model,
                             std::vector<V2DecodedInput>* out) {
  constexpr auto kNo = V2DecodeResult::kNotHandled;
  JsonReader r(body.data(), body.data() + body.size());
  r.set_begin(body.data());
  std::string_view inputs;
  bool has_inputs = false, other = false;
  const bool ok = r.Object(0, [&](const std::string& key) {
    if (key != "inputs" || has_inputs) {
      other = true;
      return r.SkipValue(1);
    }
    r.Ws();
    const char* b = r.pos();
    if (!r.SkipValue(1)) return false;
    inputs = std::string_view(b, static_cast<size_t>(r.pos() - b));
    has_inputs = true;
    return true;
  });
  if (!ok || !r.AtEnd() || other || !has_inputs || inputs.empty()) return kNo;
  const size_t n = model.inputs.size();
  std::vector<std::string_view> raws(n);
  if (inputs.front() == '{') {
    JsonReader m(inputs.data(), inputs.data() + inputs.size());
    m.set_begin(inputs.data());
    std::vector<bool> seen(n, false);
    bool exact = true;
    const bool parsed = m.Object(1, [&](const std::string& key) {
      m.Ws();
      const char* b = m.pos();
      if (!m.SkipValue(2)) return false;
      size_t k = 0;
      while (k < n && model.inputs[k].name != key) ++k;
      if (k == n || seen[k]) {
        exact = false;  // an unknown or repeated name: the general path words it
      } else {
        seen[k] = true;
        raws[k] = std::string_view(b, static_cast<size_t>(m.pos() - b));
      }
      return true;
    });
    if (!parsed || !exact) return kNo;
    for (bool s : seen) {
      if (!s) return kNo;
    }
  } else if (inputs.front() == '[' && n == 1) {
    raws[0] = inputs;
  } else {
    return kNo;
  }
  out->assign(n, V2DecodedInput{});
  for (size_t k = 0; k < n; ++k) {
    if (!DecodePredictRows(raws[k], model.inputs[k], &(*out)[k])) return kNo;
    if ((*out)[k].shape[0] != (*out)[0].shape[0]) return kNo;
  }
  return V2DecodeResult::kOk;
}

}  // namespace aiarch
