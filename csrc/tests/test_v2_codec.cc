// v2 codec: JSON and binary requests decoded into contiguous inputs, the
// server's error messages, and responses (shortest round-trip floats, binary
// layout).
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "aiarch/v2_codec.h"
#include "check.h"

namespace aiarch {
namespace {

V2Model LinearModel() {
  V2Model m;
  m.name = "lin";
  m.version = "1";
  m.inputs = {TensorSpec{"x", DType::kFp32, {8}}};
  m.output_names = {"y"};
  return m;
}

V2Model TwoInputModel() {
  V2Model m;
  m.name = "two";
  m.version = "3";
  m.inputs = {TensorSpec{"a", DType::kInt32, {2}}, TensorSpec{"b", DType::kBool, {1}}};
  m.output_names = {"sum", "flag"};
  return m;
}

template <typename T>
std::vector<T> As(const std::vector<uint8_t>& bytes) {
  std::vector<T> out(bytes.size() / sizeof(T));
  std::memcpy(out.data(), bytes.data(), out.size() * sizeof(T));
  return out;
}

std::string Decode(const V2Model& m, const std::string& body, V2InferRequest* out,
                   int64_t hlen = -1) {
  std::string error;
  const auto r = DecodeV2Infer(body, hlen, m, out, &error);
  if (r == V2DecodeResult::kOk) return "ok";
  if (r == V2DecodeResult::kNotHandled) return "not handled";
  return error;
}

void TestJsonRequest() {
  V2InferRequest req;
  const std::string body =
      R"({"id":"r\u00e9q-1","inputs":[{"name":"x","shape":[2,8],"datatype":"FP32",)"
      R"("data":[[1,2,3,4,5,6,7,8],[0.5,-1e2,0,0,0,0,0,1.25]]}],)"
      R"("parameters":{"priority":2,"timeout":1500,"other":[1,{"a":null}]},"extra":{}})";
  if (!CHECK_EQ(Decode(LinearModel(), body, &req), std::string("ok"))) return;
  CHECK_EQ(req.inputs.size(), size_t{1});
  CHECK_EQ(req.inputs[0].shape.size(), size_t{2});
  const auto x = As<float>(req.inputs[0].data);
  CHECK_EQ(x.size(), size_t{16});
  CHECK_EQ(x[7], 8.0f);
  CHECK_EQ(x[9], -100.0f);
  CHECK_EQ(x[15], 1.25f);
  CHECK_EQ(req.plan.id, std::string("r\xc3\xa9q-1"));
  CHECK(req.plan.has_id);
  CHECK_EQ(req.priority, 2u);
  CHECK_EQ(req.timeout_us, int64_t{1500});
  CHECK_EQ(req.plan.outputs.size(), size_t{1});
  CHECK(!req.plan.binary[0]);
}

// Every JSON number spelling decodes to the value strtod gives it, whitespace
// and nesting aside, and an out-of-range value is named whole in the error.
void TestJsonNumberSpellings() {
  const char* tokens[8] = {"-0",    "1E+2",  "2.5e-3", "-7.25E1",
                           "0.125", "1e-45", "3.4e38", "0.1257302165031433"};
  std::string data = "[ [";
  for (int i = 0; i < 8; ++i) data += std::string(i ? " ,\n\t" : "") + tokens[i];
  data += "] ]";
  V2InferRequest req;
  const std::string body =
      R"({"inputs":[{"name":"x","shape":[1,8],"datatype":"FP32","data":)" + data + "}]}";
  if (!CHECK_EQ(Decode(LinearModel(), body, &req), std::string("ok"))) return;
  const auto x = As<float>(req.inputs[0].data);
  if (!CHECK_EQ(x.size(), size_t{8})) return;
  for (int i = 0; i < 8; ++i) {
    test::SetContext(tokens[i]);
    CHECK_EQ(x[i], static_cast<float>(std::strtod(tokens[i], nullptr)));
  }
  test::SetContext("");
  CHECK(std::signbit(x[0]));
  const std::string huge =
      R"({"inputs":[{"name":"x","shape":[1,8],"datatype":"FP32","data":[1,2,3,1.5e999,5,6,7,8]}]})";
  const std::string got = Decode(LinearModel(), huge, &req);
  CHECK(got.find("value out of range for FP32: 1.5e999") != std::string::npos) ||
      (std::fprintf(stderr, "  got: %s\n", got.c_str()), false);
}

// parameters.route_key as the Python router spells it: str(value).
void TestRouteKey() {
  struct Case {
    const char* json;
    V2InferRequest::RouteKey kind;
    const char* text;
  };
  using RK = V2InferRequest::RouteKey;
  const Case cases[] = {
      {R"("user-\u00e9")", RK::kText, "user-\xc3\xa9"},
      {"12345", RK::kText, "12345"},
      {"-7", RK::kText, "-7"},
      {"-0", RK::kText, "0"},
      {"true", RK::kText, "True"},
      {"false", RK::kText, "False"},
      {"null", RK::kNone, ""},
      {"1.5", RK::kOther, ""},
      {"[1]", RK::kOther, ""},
      {"123456789012345678901234567890", RK::kOther, ""},
  };
  for (const Case& c : cases) {
    test::SetContext(c.json);
    V2InferRequest req;
    const std::string body =
        std::string(R"({"parameters":{"route_key":)") + c.json +
        R"(},"inputs":[{"name":"x","shape":[1,8],"datatype":"FP32","data":[1,2,3,4,5,6,7,8]}]})";
    if (!CHECK_EQ(Decode(LinearModel(), body, &req), std::string("ok"))) continue;
    CHECK(req.route_key_kind == c.kind);
    CHECK_EQ(req.route_key, std::string(c.text));
  }
  test::SetContext("");
}

// /predict bodies: rows nested or flat, cut by the input's shape; whatever the
// Python codec would read differently is left to it.
void TestPredict() {
  const V2Model m = LinearModel();  // x: FP32 [8]
  std::vector<V2DecodedInput> in;
  CHECK(DecodePredict(R"({"inputs": [[1,2,3,4,5,6,7,8],[[0,0,0,0],[0,0,0,-1.5]]]})", m, &in) ==
        V2DecodeResult::kOk);
  if (CHECK_EQ(in.size(), size_t{1})) {
    CHECK(in[0].shape == (std::vector<int64_t>{2, 8}));
    CHECK_EQ(As<float>(in[0].data)[15], -1.5f);
  }
  for (const char* body :
       {R"({"inputs": [[1,2,3,4,5,6,7,8],[]]})", R"({"inputs": []})", R"({"inputs": [1,2,3]})",
        R"({"inputs": {"y": [1,2,3,4,5,6,7,8]}})", R"({"inputs": [1,2,3,4,5,6,7,8], "id": 1})",
        R"({"inputs": 1})", R"({"inputs": ["1",2,3,4,5,6,7,8]})", R"({"inputs": [1,2,3,4,5,6,7,8])",
        R"([1,2,3,4,5,6,7,8])"}) {
    test::SetContext(body);
    CHECK(DecodePredict(body, m, &in) == V2DecodeResult::kNotHandled);
  }
  test::SetContext("");
  // One output nests by its shape; several go by name.
  const float y[6] = {1, 2, 3, 4, 5, 6};
  std::string out, error;
  V2Model two = m;
  CHECK(AppendPredictResponse(m, {TensorSpec{"y", DType::kFp32, {3}}},
                              {reinterpret_cast<const uint8_t*>(y)}, 2, true, &out, &error));
  CHECK(out.find(R"({"outputs":[[1.0,2.0,3.0],[4.0,5.0,6.0]]})") != std::string::npos) ||
      (std::fprintf(stderr, "  got: %s\n", out.c_str()), false);
  two.output_names = {"a", "b"};
  out.clear();
  CHECK(AppendPredictResponse(
      two, {{"a", DType::kFp32, {}}, {"b", DType::kFp32, {1}}},
      {reinterpret_cast<const uint8_t*>(y), reinterpret_cast<const uint8_t*>(y + 2)}, 2, true, &out,
      &error));
  CHECK(out.find(R"({"outputs":{"a":[1.0,2.0],"b":[[3.0],[4.0]]}})") != std::string::npos) ||
      (std::fprintf(stderr, "  got: %s\n", out.c_str()), false);
}

void TestInputsReorderedAndOutputs() {
  V2InferRequest req;
  const std::string body =
      R"({"inputs":[{"data":[true],"datatype":"BOOL","shape":[1,1],"name":"b"},)"
      R"({"name":"a","shape":[1,2],"datatype":"INT32","data":[-2147483648,7]}],)"
      R"("outputs":[{"name":"flag","parameters":{"binary_data":true}},{"name":"sum"}],)"
      R"("parameters":{"binary_data_output":false}})";
  if (!CHECK_EQ(Decode(TwoInputModel(), body, &req), std::string("ok"))) return;
  CHECK_EQ(As<int32_t>(req.inputs[0].data)[0], INT32_MIN);
  CHECK_EQ(As<int32_t>(req.inputs[0].data)[1], 7);
  CHECK_EQ(req.inputs[1].data[0], uint8_t{1});
  CHECK_EQ(req.plan.outputs[0], 1);
  CHECK_EQ(req.plan.outputs[1], 0);
  CHECK(req.plan.binary[0]);
  CHECK(!req.plan.binary[1]);
}

void TestBinaryRequest() {
  const std::string header =
      R"({"inputs":[{"name":"x","shape":[1,8],"datatype":"FP32","parameters":{"binary_data_size":32}}],)"
      R"("parameters":{"binary_data_output":true}})";
  std::string body = header;
  float values[8] = {1, 2, 3, 4, 5, 6, 7, 8};
  body.append(reinterpret_cast<const char*>(values), sizeof(values));
  V2InferRequest req;
  if (!CHECK_EQ(Decode(LinearModel(), body, &req, static_cast<int64_t>(header.size())),
                std::string("ok"))) {
    return;
  }
  CHECK_EQ(As<float>(req.inputs[0].data)[7], 8.0f);
  CHECK(req.plan.binary[0]);
  // Raw: the body is the one input's row.
  std::string raw(reinterpret_cast<const char*>(values), sizeof(values));
  CHECK_EQ(Decode(LinearModel(), raw, &req, 0), std::string("ok"));
  CHECK_EQ(req.inputs[0].shape[0], int64_t{1});
  CHECK(req.plan.binary[0]);
  CHECK(Decode(LinearModel(), raw + "x", &req, 0).find("must be 32 bytes") != std::string::npos);
  // Sizes that disagree.
  CHECK(Decode(LinearModel(), body + "z", &req, static_cast<int64_t>(header.size()))
            .find("bytes after the last binary input") != std::string::npos);
  CHECK(Decode(LinearModel(), body.substr(0, body.size() - 1), &req,
               static_cast<int64_t>(header.size()))
            .find("runs past the body") != std::string::npos);
  CHECK(Decode(LinearModel(), body, &req, static_cast<int64_t>(body.size() + 1))
            .find("exceeds the body size") != std::string::npos);
}

void TestErrors() {
  const V2Model m = LinearModel();
  V2InferRequest req;
  auto with = [](const std::string& name, const std::string& shape, const std::string& dt,
                 const std::string& data) {
    return R"({"inputs":[{"name":")" + name + R"(","shape":)" + shape + R"(,"datatype":")" + dt +
           R"(","data":)" + data + "}]}";
  };
  const std::string eight = "[0,0,0,0,0,0,0,0]";
  struct Case {
    std::string body;
    const char* fragment;
  } cases[] = {
      {R"({"inputs": [)", "failed to parse the request JSON"},
      {"not json", "failed to parse the request JSON"},
      {"[1,2]", "invalid inference request"},
      {"{}", "missing required field `inputs`"},
      {R"({"inputs":[]})", "has no inputs"},
      {with("x", "[1,7]", "FP32", "[0,0,0,0,0,0,0]"), "unexpected shape"},
      {with("z", "[1,8]", "FP32", eight), "unexpected inference input 'z'"},
      {with("x", "[1,8]", "FP64", eight), "unexpected datatype FP64"},
      {with("x", "[1,8]", "FP33", eight), "unsupported datatype 'FP33'"},
      {with("x", "[1,8]", "FP32", "[0,0]"), "expected 8, got 2"},
      {with("x", "[1,8]", "FP32", R"([0,0,0,0,0,0,0,"a"])"), "expected a number"},
      {with("x", "[1,-8]", "FP32", eight), "Expected `int` >= 0"},
      {with("x", "[1,8]", "FP32", eight.substr(0, 8) + ",,0]"), "failed to parse"},
      {with("x", "[1,8]", "BF16", eight), "cannot be sent as JSON"},
      {with("x", "[0,8]", "FP32", "[]"), "unexpected shape"},
      {with("x", "[4611686018427387904,8]", "FP32", eight), "unexpected number of elements"},
      {R"({"inputs":[{"name":"x","shape":[1,8],"datatype":"FP32"}]})", "has no data"},
      {R"({"inputs":[{"shape":[1,8],"datatype":"FP32","data":[]}]})", "field `name`"},
      {with("x", "[1,8]", "FP32", eight).insert(1, R"("outputs":[{"name":"q"}],)"),
       "unexpected inference output 'q'"},
      {with("x", "[1,8]", "FP32", eight).insert(1, R"("parameters":{"triton_x":1},)"),
       "is reserved"},
      {with("x", "[1,8]", "FP32", eight).insert(1, R"("parameters":{"sequence_id":1},)"),
       "sequence batching"},
      {with("x", "[1,8]", "FP32", eight).insert(1, R"("parameters":{"priority":-1},)"),
       "'priority' must be"},
      {with("x", "[1,8]", "FP32", eight).insert(1, R"("parameters":{"priority":true},)"),
       "'priority' must be"},
      {with("x", "[1,8]", "FP32", eight).insert(1, R"("parameters":{"timeout":1.5},)"),
       "'timeout' must be"},
      {with("x", "[1,8]", "FP32", eight).insert(1, R"("parameters":{"priority":4294967296},)"),
       "parameter 'priority' must be an integer from 0 (the model's default) to the model's "
       "priority levels"},
      {with("x", "[1,8]", "FP32", eight).insert(1, R"("parameters":{"priority":null},)"),
       "'priority' must be"},
      {with("x", "[1,8]", "FP32", eight)
           .insert(1, R"("parameters":{"timeout":9223372036854775807},)"),
       "parameter 'timeout' must be an integer number of microseconds from 0 (none) to "
       "86400000000 (one day)"},
      {with("x", "[1,8]", "FP32", eight).insert(1, R"("parameters":{"timeout":86400000001},)"),
       "'timeout' must be"},
      {with("x", "[1,8]", "FP32", eight)
           .insert(1, R"("parameters":{"timeout":99999999999999999999999},)"),
       "'timeout' must be"},
      {with("x", "[1,8]", "FP32", eight).insert(1, R"("id":5,)"), "invalid inference request"},
      {R"({"inputs":[{"name":"x","shape":[1,8],"datatype":"FP32","data":)" + eight + "}]} x",
       "failed to parse"},
      {"{\"inputs\":[{\"name\":\"\xff\"}]}", "failed to parse"},
  };
  for (const auto& c : cases) {
    test::SetContext(c.body);
    const std::string got = Decode(m, c.body, &req);
    CHECK(got.find(c.fragment) != std::string::npos) ||
        (std::fprintf(stderr, "  got: %s\n", got.c_str()), false);
  }
  test::SetContext("");
  // A null timeout is none, and one day is the longest accepted.
  CHECK_EQ(
      Decode(m, with("x", "[1,8]", "FP32", eight).insert(1, R"("parameters":{"timeout":null},)"),
             &req),
      std::string("ok"));
  CHECK_EQ(req.timeout_us, int64_t{0});
  CHECK_EQ(Decode(m,
                  with("x", "[1,8]", "FP32", eight)
                      .insert(1, R"("parameters":{"timeout":86400000000,"priority":4294967295},)"),
                  &req),
           std::string("ok"));
  CHECK_EQ(req.timeout_us, int64_t{86400000000});
  CHECK_EQ(req.priority, 4294967295u);
  // Integer ranges.
  V2Model ints = TwoInputModel();
  CHECK(Decode(ints,
               R"({"inputs":[{"name":"a","shape":[1,2],"datatype":"INT32","data":[2147483648,0]},)"
               R"({"name":"b","shape":[1,1],"datatype":"BOOL","data":[false]}]})",
               &req)
            .find("value out of range for INT32") != std::string::npos);
  CHECK(Decode(ints,
               R"({"inputs":[{"name":"a","shape":[1,2],"datatype":"INT32","data":[1.5,0]},)"
               R"({"name":"b","shape":[1,1],"datatype":"BOOL","data":[false]}]})",
               &req)
            .find("expected an integer") != std::string::npos);
  CHECK(Decode(ints,
               R"({"inputs":[{"name":"a","shape":[1,2],"datatype":"INT32","data":[1,0]},)"
               R"({"name":"b","shape":[2,1],"datatype":"BOOL","data":[false,true]}]})",
               &req)
            .find("same batch size") != std::string::npos);
  // FP16 numbers in JSON round once from their double to the nearest half, ties to even
  // (numpy's float64 → float16): the bits below are numpy's for the same numbers.
  V2Model half = LinearModel();
  half.inputs[0].dtype = DType::kFp16;
  if (CHECK_EQ(Decode(half,
                      R"({"inputs":[{"name":"x","shape":[1,8],"datatype":"FP16","data":)"
                      R"([1,-0.1,65504,65520,1e-7,2.98023223876953125e-8,3e-8,1.00048828125]}]})",
                      &req),
               std::string("ok"))) {
    const std::vector<uint16_t> bits = As<uint16_t>(req.inputs[0].data);
    const std::vector<uint16_t> numpy = {0x3C00, 0xAE66, 0x7BFF, 0x7C00,
                                         0x0002, 0x0000, 0x0001, 0x3C00};
    CHECK(bits == numpy);
  }
  // Nesting is bounded: deeper than the native reader descends is left to the general path.
  std::string deep = R"({"inputs":[{"name":"x","shape":[1,8],"datatype":"FP32","data":)" +
                     std::string(100, '[') + std::string(100, ']') + "}]}";
  CHECK_EQ(Decode(m, deep, &req), std::string("not handled"));
}

void TestResponses() {
  V2Model m = TwoInputModel();
  std::vector<TensorSpec> specs = {TensorSpec{"o0", DType::kFp32, {3}},
                                   TensorSpec{"o1", DType::kInt64, {}}};
  const float f[3] = {0.1f, 1.0f, std::nanf("")};
  const int64_t i[1] = {-5};
  V2ResponsePlan plan;
  plan.id = "a\"b";
  plan.has_id = true;
  plan.outputs = {0, 1};
  plan.binary = {false, false};
  std::string out, error;
  CHECK(AppendV2InferResponse(
      m, plan, specs, {reinterpret_cast<const uint8_t*>(f), reinterpret_cast<const uint8_t*>(i)}, 1,
      true, &out, &error));
  const std::string body =
      R"({"model_name":"two","outputs":[{"name":"sum","datatype":"FP32","shape":[1,3],)"
      R"("data":[0.1,1.0,null]},{"name":"flag","datatype":"INT64","shape":[1],"data":[-5]}],)"
      R"("model_version":"3","id":"a\"b"})";
  CHECK_EQ(out, "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: " +
                    std::to_string(body.size()) + "\r\n\r\n" + body);
  // Binary: the JSON header, then the raw bytes; the header length is sent.
  plan.binary = {true, false};
  plan.has_id = false;
  out.clear();
  CHECK(AppendV2InferResponse(
      m, plan, specs, {reinterpret_cast<const uint8_t*>(f), reinterpret_cast<const uint8_t*>(i)}, 1,
      false, &out, &error));
  const size_t head_end = out.find("\r\n\r\n") + 4;
  const std::string head = out.substr(0, head_end);
  CHECK(head.find("content-type: application/octet-stream\r\n") != std::string::npos);
  CHECK(head.find("connection: close\r\n") != std::string::npos);
  const size_t hl = head.find("inference-header-content-length: ");
  if (CHECK(hl != std::string::npos)) {
    const size_t json_len = std::stoul(head.substr(hl + 33));
    const std::string json = out.substr(head_end, json_len);
    CHECK(json.find(R"("parameters":{"binary_data_size":12})") != std::string::npos);
    CHECK_EQ(out.size() - head_end - json_len, size_t{12});
    CHECK_EQ(std::memcmp(out.data() + head_end + json_len, f, 12), 0);
  }
  // A model that returned the wrong number of outputs.
  out.clear();
  CHECK(!AppendV2InferResponse(m, plan, {specs[0]}, {reinterpret_cast<const uint8_t*>(f)}, 1, true,
                               &out, &error));
  CHECK(error.find("returned 1 outputs, expected 2") != std::string::npos);
  // Error bodies.
  out.clear();
  AppendErrorResponse(429, "queue \"full\"\n", {{"retry-after", "2"}}, true, &out);
  CHECK_EQ(out, std::string("HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\n"
                            "content-length: 28\r\nretry-after: 2\r\n\r\n"
                            R"({"error":"queue \"full\"\n"})"));
}

// Shortest round-trip: every float32 printed reads back as itself.
void TestFloatRoundTrip() {
  V2Model m = LinearModel();
  std::vector<TensorSpec> specs = {TensorSpec{"y", DType::kFp32, {1}}};
  V2ResponsePlan plan;
  plan.outputs = {0};
  plan.binary = {false};
  uint32_t bits = 0x12345678;
  for (int n = 0; n < 20000; ++n) {
    bits = bits * 1664525u + 1013904223u;
    float v;
    std::memcpy(&v, &bits, 4);
    if (!std::isfinite(v)) continue;
    std::string out, error;
    AppendV2InferResponse(m, plan, specs, {reinterpret_cast<const uint8_t*>(&v)}, 1, true, &out,
                          &error);
    const size_t at = out.find("\"data\":[") + 8;
    const float back = std::strtof(out.c_str() + at, nullptr);
    if (!CHECK_EQ(back, v)) break;
  }
}

// Every spelling of a number decodes to the double strtod gives (bit for bit),
// and to that double rounded once more for FP32, whichever order the input's
// members come in (`data` after `shape` and `datatype` is decoded in one
// pass, with its own fast path for short decimals; before them, in two).
void TestJsonNumbersMatchStrtod() {
  std::mt19937_64 rng(7);
  auto token = [&]() -> std::string {
    char buf[64];
    const int kind = static_cast<int>(rng() % 10);
    const double u = std::ldexp(static_cast<double>(rng() >> 11), -53);  // [0, 1)
    const double mag = u * std::pow(10.0, static_cast<int>(rng() % 61) - 30);
    const double v = (rng() & 1) ? -mag : mag;
    switch (kind) {
      case 0: std::snprintf(buf, sizeof buf, "%.*g", 1 + static_cast<int>(rng() % 17), v); break;
      case 1: std::snprintf(buf, sizeof buf, "%.*e", static_cast<int>(rng() % 20), v); break;
      case 2: std::snprintf(buf, sizeof buf, "%.*f", static_cast<int>(rng() % 25), u * 1000); break;
      case 3:
        std::snprintf(buf, sizeof buf, "%llu",
                      static_cast<unsigned long long>(rng() >> (rng() % 64)));
        break;
      case 4:
        std::snprintf(buf, sizeof buf, "0.%0*d%llu", static_cast<int>(rng() % 20), 0,
                      static_cast<unsigned long long>(rng() % 100000000));
        break;
      case 5:
        std::snprintf(buf, sizeof buf, "%.9g", static_cast<double>(static_cast<float>(v)));
        break;
      case 6: {
        static const char* edge[] = {"9007199254740992",
                                     "9007199254740993",
                                     "1e22",
                                     "1e23",
                                     "-0",
                                     "-0.0",
                                     "0e5",
                                     "1234567890123456789",
                                     "12345678901234567890",
                                     "4.9e-324",
                                     "1.7976931348623157e308",
                                     "2.2250738585072014e-308",
                                     "0.1",
                                     "123456.789e-3"};
        return edge[rng() % (sizeof edge / sizeof edge[0])];
      }
      case 8: {  // a float32 as clients send it: widened to a double, 17 digits
        std::snprintf(buf, sizeof buf, "%.17g", static_cast<double>(static_cast<float>(v)));
        break;
      }
      case 9: {  // halfway between two floats (exactly, or as 17 digits round it)
        const float f = static_cast<float>(v);
        const double mid =
            (static_cast<double>(f) + static_cast<double>(std::nextafter(f, 2 * f + 1))) / 2;
        std::snprintf(buf, sizeof buf, (rng() & 1) ? "%.17g" : "%.25g", mid);
        break;
      }
      default: std::snprintf(buf, sizeof buf, "%.17g", v); break;
    }
    std::string t = buf;
    if (t.find("inf") != std::string::npos || t.find("nan") != std::string::npos) return "1";
    return t;
  };
  constexpr int kValues = 256;
  for (int order = 0; order < 2; ++order) {
    for (DType dt : {DType::kFp64, DType::kFp32}) {
      V2Model m;
      m.name = "m";
      m.version = "1";
      m.inputs = {TensorSpec{"x", dt, {kValues}}};
      m.output_names = {"y"};
      const std::string dt_name = dt == DType::kFp64 ? "FP64" : "FP32";
      for (int body_n = 0; body_n < 80; ++body_n) {
        std::vector<std::string> tokens;
        std::string data = "[[";
        for (int i = 0; i < kValues; ++i) {
          tokens.push_back(token());
          data += (i ? "," : "") + tokens.back();
        }
        data += "]]";
        const std::string meta =
            R"("shape":[1,)" + std::to_string(kValues) + R"(],"datatype":")" + dt_name + R"(")";
        const std::string body =
            order == 0 ? R"({"inputs":[{"name":"x",)" + meta + R"(,"data":)" + data + "}]}"
                       : R"({"inputs":[{"name":"x","data":)" + data + "," + meta + "}]}";
        V2InferRequest req;
        if (!CHECK_EQ(Decode(m, body, &req), std::string("ok"))) return;
        for (int i = 0; i < kValues; ++i) {
          const double want = std::strtod(tokens[i].c_str(), nullptr);
          bool same;
          if (dt == DType::kFp64) {
            const double got = As<double>(req.inputs[0].data)[i];
            same = std::memcmp(&got, &want, sizeof got) == 0;
          } else {
            const float got = As<float>(req.inputs[0].data)[i];
            const float wantf = static_cast<float>(want);
            same = std::memcmp(&got, &wantf, sizeof got) == 0;
          }
          test::SetContext(dt_name + " order " + std::to_string(order) + " " + tokens[i]);
          if (!CHECK(same)) return;
        }
      }
    }
  }
  test::SetContext("");
  // `shape` given again after `data`: the count is checked against the last one.
  V2InferRequest req;
  const std::string twice =
      R"({"inputs":[{"name":"x","shape":[1,8],"datatype":"FP32","data":[1,2,3,4,5,6,7,8],)"
      R"("shape":[2,8]}]})";
  CHECK(Decode(LinearModel(), twice, &req).find("unexpected number of elements") !=
        std::string::npos);
}

}  // namespace
}  // namespace aiarch

int main() {
  aiarch::TestJsonRequest();
  aiarch::TestJsonNumberSpellings();
  aiarch::TestJsonNumbersMatchStrtod();
  aiarch::TestRouteKey();
  aiarch::TestPredict();
  aiarch::TestInputsReorderedAndOutputs();
  aiarch::TestBinaryRequest();
  aiarch::TestErrors();
  aiarch::TestResponses();
  aiarch::TestFloatRoundTrip();
  return aiarch::test::Finish("test_v2_codec");
}
