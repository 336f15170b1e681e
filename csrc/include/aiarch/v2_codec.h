// KServe v2 (Open Inference Protocol) codec for the native request path.
//
// Contract
// - DecodeV2Infer turns one infer request body — JSON, or a JSON header plus
//   binary tensors (the binary tensor extension, including the raw form with
//   Inference-Header-Content-Length: 0) — into contiguous little-endian input
//   buffers in the model's input order, the outputs to return (and which as
//   binary), the request id, and the schedule parameters (priority, timeout).
//   It checks the request against the model the way the Python server does,
//   with the same messages: each defect is kBadRequest with a message for a
//   400 `{"error": ...}` body. Requests it leaves to the general path (JSON
//   nested deeper than it reads) are kNotHandled; nothing has been consumed
//   then. FP16 numbers sent as JSON round once from the double they spell to
//   the nearest half, ties to even, as numpy's float64 → float16 does.
// - JSON is parsed strictly (RFC 8259, UTF-8, nesting ≤ 64 levels); unknown
//   object members are ignored, as the Python codec does.
// - DecodePredict reads a `/predict` body — {"inputs": rows} for a one-input
//   model, {"inputs": {name: rows, ...}} naming every input — into the same
//   buffers: rows are nested or flat numbers, read in row-major order and cut
//   into rows of the input's shape. Any body it does not read exactly as the
//   Python codec would (a defect, an unknown member, an empty list, BF16) is
//   kNotHandled, for the general path to answer or word the 400.
//   AppendPredictResponse writes {"outputs": rows} (one output) or
//   {"outputs": {name: rows, ...}}, rows nested by the output's shape.
// - AppendV2InferResponse writes a whole HTTP/1.1 200 response: JSON outputs
//   use the shortest text that reads back as the same value (std::to_chars;
//   NaN and infinities as null), binary outputs follow the JSON header.
// - Pure functions over caller-owned memory: no I/O, no allocation kept, safe
//   to call from any thread.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "aiarch/tensor.h"

namespace aiarch {

// What the codec needs to know about one served model.
struct V2Model {
  std::string name;
  std::string version;
  std::vector<TensorSpec> inputs;  // name, dtype, shape after the row dim
  std::vector<std::string> output_names;
};

// What the response to one request must contain.
struct V2ResponsePlan {
  bool predict = false;  // a `/predict` response (outputs and binary unused)
  std::string id;
  bool has_id = false;
  std::vector<int> outputs;  // model output indices, in response order
  std::vector<bool> binary;  // per entry of `outputs`
  // Back to a new plan's state, keeping the vectors' capacity (plans are reused).
  void Clear() {
    predict = false;
    id.clear();
    has_id = false;
    outputs.clear();
    binary.clear();
  }
};

struct V2DecodedInput {
  std::vector<int64_t> shape;  // rows first
  std::vector<uint8_t> data;   // row-major, little-endian
};

struct V2InferRequest {
  std::vector<V2DecodedInput> inputs;  // in model input order
  V2ResponsePlan plan;
  int64_t timeout_us = 0;  // parameters.timeout; 0 = none given
  uint32_t priority = 0;   // parameters.priority; 0 = the model's default level
  // parameters.route_key as the Python router spells it (str() of the value):
  // kText for a string, integer or bool; kOther for any other non-null value.
  enum class RouteKey { kNone, kText, kOther } route_key_kind = RouteKey::kNone;
  std::string route_key;
};

enum class V2DecodeResult { kOk, kBadRequest, kNotHandled };

// `header_length` is the Inference-Header-Content-Length value, or -1 when the
// header is absent (the whole body is JSON).
V2DecodeResult DecodeV2Infer(std::string_view body, int64_t header_length, const V2Model& model,
                             V2InferRequest* out, std::string* error);

// Never kBadRequest: see the contract above. `out` holds one entry per model
// input, in order, rows first.
V2DecodeResult DecodePredict(std::string_view body, const V2Model& model,
                             std::vector<V2DecodedInput>* out);

// v2 datatype names ("FP32", ...); BYTES has no fixed-size DType.
const char* V2DatatypeName(DType dtype);
bool V2DatatypeFromName(std::string_view name, DType* out);

// A successful infer response. `outputs` are the batch's output specs and
// `data[i]` points at this request's first row of output i. Fails (returns
// false, sets *error) when the model returned a different number of outputs.
bool AppendV2InferResponse(const V2Model& model, const V2ResponsePlan& plan,
                           const std::vector<TensorSpec>& outputs,
                           const std::vector<const uint8_t*>& data, int64_t rows, bool keep_alive,
                           std::string* out, std::string* error);

// The `/predict` response (see the contract); fails as AppendV2InferResponse.
bool AppendPredictResponse(const V2Model& model, const std::vector<TensorSpec>& outputs,
                           const std::vector<const uint8_t*>& data, int64_t rows, bool keep_alive,
                           std::string* out, std::string* error);

// A complete HTTP/1.1 response with the server's header layout.
void AppendHttpResponse(int status, std::string_view content_type, std::string_view body,
                        const std::vector<std::pair<std::string, std::string>>& headers,
                        bool keep_alive, std::string* out);
// `{"error": message}` with `status`.
void AppendErrorResponse(int status, std::string_view message,
                         const std::vector<std::pair<std::string, std::string>>& headers,
                         bool keep_alive, std::string* out);
// `s` as a JSON string literal (quotes included).
void AppendJsonString(std::string_view s, std::string* out);

}  // namespace aiarch
