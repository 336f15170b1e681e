// Response encoding of the v2 codec (aiarch/v2_codec.h): HTTP/1.1 responses,
// v2 infer responses (JSON with shortest round-trip floats, or the binary
// tensor extension), /predict responses and `{"error": ...}` bodies.
#include <charconv>
#include <cmath>
#include <cstring>
#include <limits>
#include <utility>

#include "aiarch/v2_codec.h"

namespace aiarch {

namespace {

const char* Reason(int status) {
  switch (status) {
    case 100: return "Continue";
    case 200: return "OK";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 411: return "Length Required";
    case 413: return "Content Too Large";
    case 415: return "Unsupported Media Type";
    case 417: return "Expectation Failed";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    default: return "Status";
  }
}

void AppendInt(int64_t v, std::string* out) {
  char buf[24];
  const auto r = std::to_chars(buf, buf + sizeof(buf), v);
  out->append(buf, r.ptr);
}

void AppendUint(uint64_t v, std::string* out) {
  char buf[24];
  const auto r = std::to_chars(buf, buf + sizeof(buf), v);
  out->append(buf, r.ptr);
}

template <typename F>
void AppendFloat(F v, std::string* out) {
  if (!std::isfinite(v)) {
    out->append("null");
    return;
  }
  char buf[40];
  const auto r = std::to_chars(buf, buf + sizeof(buf), v);
  std::string_view s(buf, static_cast<size_t>(r.ptr - buf));
  out->append(s);
  // A float that prints as an integer ("1") keeps a fraction ("1.0") so it
  // reads back as a float in every JSON library.
  if (s.find_first_of(".en") == std::string_view::npos) out->append(".0");
}

float HalfToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1F;
  uint32_t mant = h & 0x3FF;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: normalise
      exp = 127 - 15 + 1;
      while ((mant & 0x400) == 0) {
        mant <<= 1;
        --exp;
      }
      mant &= 0x3FF;
      bits = sign | (exp << 23) | (mant << 13);
    }
  } else if (exp == 0x1F) {
    bits = sign | 0x7F800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

template <typename T>
T Load(const uint8_t* p, size_t i) {
  T v;
  std::memcpy(&v, p + i * sizeof(T), sizeof(T));
  return v;
}

void AppendJsonData(DType dt, const uint8_t* p, size_t count, std::string* out) {
  out->push_back('[');
  for (size_t i = 0; i < count; ++i) {
    if (i) out->push_back(',');
    switch (dt) {
      case DType::kBool: out->append(p[i] ? "true" : "false"); break;
      case DType::kUint8: AppendUint(Load<uint8_t>(p, i), out); break;
      case DType::kUint16: AppendUint(Load<uint16_t>(p, i), out); break;
      case DType::kUint32: AppendUint(Load<uint32_t>(p, i), out); break;
      case DType::kUint64: AppendUint(Load<uint64_t>(p, i), out); break;
      case DType::kInt8: AppendInt(Load<int8_t>(p, i), out); break;
      case DType::kInt16: AppendInt(Load<int16_t>(p, i), out); break;
      case DType::kInt32: AppendInt(Load<int32_t>(p, i), out); break;
      case DType::kInt64: AppendInt(Load<int64_t>(p, i), out); break;
      case DType::kFp16: AppendFloat(HalfToFloat(Load<uint16_t>(p, i)), out); break;
      case DType::kBf16: {
        const uint32_t bits = static_cast<uint32_t>(Load<uint16_t>(p, i)) << 16;
        float f;
        std::memcpy(&f, &bits, sizeof(f));
        AppendFloat(f, out);
        break;
      }
      case DType::kFp32: AppendFloat(Load<float>(p, i), out); break;
      case DType::kFp64: AppendFloat(Load<double>(p, i), out); break;
    }
  }
  out->push_back(']');
}

}  // namespace

void AppendJsonString(std::string_view s, std::string* out) {
  static const char kHex[] = "0123456789abcdef";
  out->push_back('"');
  for (char ch : s) {
    const unsigned char c = static_cast<unsigned char>(ch);
    switch (c) {
      case '"': out->append("\\\""); break;
      case '\\': out->append("\\\\"); break;
      case '\n': out->append("\\n"); break;
      case '\r': out->append("\\r"); break;
      case '\t': out->append("\\t"); break;
      case '\b': out->append("\\b"); break;
      case '\f': out->append("\\f"); break;
      default:
        if (c < 0x20) {
          out->append("\\u00");
          out->push_back(kHex[c >> 4]);
          out->push_back(kHex[c & 15]);
        } else {
          out->push_back(ch);
        }
    }
  }
  out->push_back('"');
}

void AppendHttpResponse(int status, std::string_view content_type, std::string_view body,
                        const std::vector<std::pair<std::string, std::string>>& headers,
                        bool keep_alive, std::string* out) {
  out->append("HTTP/1.1 ");
  AppendInt(status, out);
  out->push_back(' ');
  out->append(Reason(status));
  out->append("\r\ncontent-type: ");
  out->append(content_type);
  out->append("\r\ncontent-length: ");
  AppendUint(body.size(), out);
  out->append("\r\n");
  for (const auto& [name, value] : headers) {
    out->append(name);
    out->append(": ");
    out->append(value);
    out->append("\r\n");
  }
  if (!keep_alive) out->append("connection: close\r\n");
  out->append("\r\n");
  out->append(body);
}

void AppendErrorResponse(int status, std::string_view message,
                         const std::vector<std::pair<std::string, std::string>>& headers,
                         bool keep_alive, std::string* out) {
  std::string body = "{\"error\":";
  AppendJsonString(message, &body);
  body.push_back('}');
  AppendHttpResponse(status, "application/json", body, headers, keep_alive, out);
}

namespace {

// The model returned the outputs it declared (and one data pointer each).
bool OutputsMatch(const V2Model& model, const std::vector<TensorSpec>& outputs,
                  const std::vector<const uint8_t*>& data, std::string* error) {
  if (outputs.size() == model.output_names.size() && data.size() == outputs.size()) return true;
  *error = "model returned " + std::to_string(outputs.size()) + " outputs, expected " +
           std::to_string(model.output_names.size());
  return false;
}

}  // namespace

bool AppendV2InferResponse(const V2Model& model, const V2ResponsePlan& plan,
                           const std::vector<TensorSpec>& outputs,
                           const std::vector<const uint8_t*>& data, int64_t rows, bool keep_alive,
                           std::string* out, std::string* error) {
  if (!OutputsMatch(model, outputs, data, error)) return false;
  thread_local std::string body;
  body.clear();
  body.append("{\"model_name\":");
  AppendJsonString(model.name, &body);
  body.append(",\"outputs\":[");
  bool any_binary = false;
  size_t binary_bytes = 0;
  for (size_t j = 0; j < plan.outputs.size(); ++j) {
    const size_t k = static_cast<size_t>(plan.outputs[j]);
    const TensorSpec& spec = outputs[k];
    if (j) body.push_back(',');
    body.append("{\"name\":");
    AppendJsonString(model.output_names[k], &body);
    body.append(",\"datatype\":\"");
    body.append(V2DatatypeName(spec.dtype));
    body.append("\",\"shape\":[");
    AppendInt(rows, &body);
    for (int64_t d : spec.shape) {
      body.push_back(',');
      AppendInt(d, &body);
    }
    body.push_back(']');
    const size_t bytes = static_cast<size_t>(rows) * spec.RowBytes();
    if (plan.binary[j]) {
      any_binary = true;
      binary_bytes += bytes;
      body.append(",\"parameters\":{\"binary_data_size\":");
      AppendUint(bytes, &body);
      body.append("}}");
    } else {
      body.append(",\"data\":");
      AppendJsonData(spec.dtype, data[k], static_cast<size_t>(rows * spec.RowElements()), &body);
      body.push_back('}');
    }
  }
  body.append("],\"model_version\":");
  AppendJsonString(model.version, &body);
  if (plan.has_id) {
    body.append(",\"id\":");
    AppendJsonString(plan.id, &body);
  }
  body.push_back('}');
  if (!any_binary) {
    AppendHttpResponse(200, "application/json", body, {}, keep_alive, out);
    return true;
  }
  const size_t json_len = body.size();
  for (size_t j = 0; j < plan.outputs.size(); ++j) {
    if (!plan.binary[j]) continue;
    const size_t k = static_cast<size_t>(plan.outputs[j]);
    const size_t bytes = static_cast<size_t>(rows) * outputs[k].RowBytes();
    body.append(reinterpret_cast<const char*>(data[k]), bytes);
  }
  (void)binary_bytes;
  AppendHttpResponse(200, "application/octet-stream", body,
                     {{"inference-header-content-length", std::to_string(json_len)}}, keep_alive,
                     out);
  return true;
}

namespace {

// One tensor of `rows` rows as nested JSON lists, as Python's tolist() nests it.
void AppendNested(DType dt, const uint8_t* data, const std::vector<int64_t>& dims, size_t level,
                  std::string* out) {
  if (level + 1 == dims.size()) {
    AppendJsonData(dt, data, static_cast<size_t>(dims[level]), out);
    return;
  }
  size_t inner = DTypeSize(dt);
  for (size_t d = level + 1; d < dims.size(); ++d) inner *= static_cast<size_t>(dims[d]);
  out->push_back('[');
  for (int64_t i = 0; i < dims[level]; ++i) {
    if (i) out->push_back(',');
    AppendNested(dt, data + static_cast<size_t>(i) * inner, dims, level + 1, out);
  }
  out->push_back(']');
}

}  // namespace

bool AppendPredictResponse(const V2Model& model, const std::vector<TensorSpec>& outputs,
                           const std::vector<const uint8_t*>& data, int64_t rows, bool keep_alive,
                           std::string* out, std::string* error) {
  if (!OutputsMatch(model, outputs, data, error)) return false;
  thread_local std::string body;
  body.assign("{\"outputs\":");
  const bool named = outputs.size() != 1;
  if (named) body.push_back('{');
  std::vector<int64_t> dims;
  for (size_t k = 0; k < outputs.size(); ++k) {
    if (named) {
      if (k) body.push_back(',');
      AppendJsonString(model.output_names[k], &body);
      body.push_back(':');
    }
    dims.assign(1, rows);
    dims.insert(dims.end(), outputs[k].shape.begin(), outputs[k].shape.end());
    AppendNested(outputs[k].dtype, data[k], dims, 0, &body);
  }
  if (named) body.push_back('}');
  body.push_back('}');
  AppendHttpResponse(200, "application/json", body, {}, keep_alive, out);
  return true;
}

}  // namespace aiarch
