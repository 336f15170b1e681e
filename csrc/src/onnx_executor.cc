#include "aiarch/onnx_executor.h"

#include <algorithm>
#include <mutex>
#include <unordered_map>
#include <utility>

#if defined(AIARCH_HAVE_ONNXRUNTIME)
#include <dlfcn.h>
#include <onnxruntime_c_api.h>
#endif

namespace aiarch {

#if defined(AIARCH_HAVE_ONNXRUNTIME)

namespace {

// A loaded onnxruntime library: its API table, and the environment and CPU
// memory description every session of it shares.
struct Library {
  const OrtApi* api = nullptr;
  OrtEnv* env = nullptr;
  OrtMemoryInfo* cpu = nullptr;
  std::string version;
};

// Turns an OrtStatus (released here) into ours.
Status FromOrt(const OrtApi* api, OrtStatus* status, StatusCode code, const std::string& what) {
  std::string message = what + ": " + api->GetErrorMessage(status);
  api->ReleaseStatus(status);
  return Status(code, std::move(message));
}

Status LoadLibrary(const std::string& path, const Library** out) {
  static std::mutex mu;
  // Never freed: a loaded onnxruntime is never unloaded (sessions of it may
  // outlive any owner we could give it, up to interpreter exit).
  static auto* loaded = new std::unordered_map<std::string, Library>();
  std::lock_guard<std::mutex> lock(mu);
  auto it = loaded->find(path);
  if (it != loaded->end()) {
    *out = &it->second;  // (references to elements survive rehashing)
    return Status::Ok();
  }
  void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (handle == nullptr) {
    const char* why = dlerror();
    return Status::Unavailable("cannot load the onnxruntime library '" + path +
                               "': " + (why != nullptr ? why : "unknown error"));
  }
  using GetApiBase = const OrtApiBase* (*)();
  auto get = reinterpret_cast<GetApiBase>(dlsym(handle, "OrtGetApiBase"));
  if (get == nullptr) {
    return Status::Unavailable("'" + path + "' has no OrtGetApiBase: not an onnxruntime library");
  }
  const OrtApiBase* base = get();
  Library lib;
  lib.version = base->GetVersionString();
  lib.api = base->GetApi(ORT_API_VERSION);
  if (lib.api == nullptr) {
    return Status::Unavailable("onnxruntime " + lib.version +
                               " is older than the C API this build needs (API version " +
                               std::to_string(ORT_API_VERSION) + ")");
  }
  if (OrtStatus* st = lib.api->CreateEnv(ORT_LOGGING_LEVEL_WARNING, "aiarch", &lib.env)) {
    return FromOrt(lib.api, st, StatusCode::kUnavailable, "onnxruntime environment");
  }
  if (OrtStatus* st =
          lib.api->CreateCpuMemoryInfo(OrtArenaAllocator, OrtMemTypeDefault, &lib.cpu)) {
    return FromOrt(lib.api, st, StatusCode::kUnavailable, "onnxruntime CPU memory info");
  }
  *out = &loaded->emplace(path, std::move(lib)).first->second;
  return Status::Ok();
}

ONNXTensorElementDataType ElementType(DType dtype) {
  switch (dtype) {
    case DType::kBool: return ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL;
    case DType::kUint8: return ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8;
    case DType::kUint16: return ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT16;
    case DType::kUint32: return ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT32;
    case DType::kUint64: return ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT64;
    case DType::kInt8: return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8;
    case DType::kInt16: return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT16;
    case DType::kInt32: return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32;
    case DType::kInt64: return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64;
    case DType::kFp16: return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16;
    case DType::kBf16: return ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16;
    case DType::kFp32: return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
    case DType::kFp64: return ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE;
  }
  return ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
}

// Releases an ORT object of type T with `release` when it goes out of scope.
template <typename T>
struct Owned {
  T* ptr = nullptr;
  void (*release)(T*) = nullptr;
  ~Owned() {
    if (ptr != nullptr) release(ptr);
  }
};

}  // namespace

struct OnnxExecutor::Session {
  const Library* lib = nullptr;
  OrtSession* session = nullptr;
  std::vector<const char*> input_names, output_names;  // into options_'s specs
  std::vector<ONNXTensorElementDataType> input_types, output_types;

  ~Session() {
    if (session != nullptr) lib->api->ReleaseSession(session);
  }

  // Checks one side (inputs or outputs) of the session against the specs.
  Status Check(const std::string& model, bool inputs, const std::vector<TensorSpec>& specs) const {
    const OrtApi* api = lib->api;
    const char* side = inputs ? "input" : "output";
    size_t count = 0;
    OrtStatus* st = inputs ? api->SessionGetInputCount(session, &count)
                           : api->SessionGetOutputCount(session, &count);
    if (st) return FromOrt(api, st, StatusCode::kInvalidArgument, "model '" + model + "'");
    if (count != specs.size()) {
      return Status::InvalidArgument("model '" + model + "' has " + std::to_string(count) + " " +
                                     side + "s; " + std::to_string(specs.size()) + " were given");
    }
    OrtAllocator* allocator = nullptr;
    if ((st = api->GetAllocatorWithDefaultOptions(&allocator))) {
      return FromOrt(api, st, StatusCode::kInternal, "onnxruntime allocator");
    }
    for (size_t i = 0; i < count; ++i) {
      char* name = nullptr;
      st = inputs ? api->SessionGetInputName(session, i, allocator, &name)
                  : api->SessionGetOutputName(session, i, allocator, &name);
      if (st) return FromOrt(api, st, StatusCode::kInvalidArgument, "model '" + model + "'");
      const std::string got = name;
      if (OrtStatus* freed = api->AllocatorFree(allocator, name)) api->ReleaseStatus(freed);
      if (got != specs[i].name) {
        return Status::InvalidArgument("model '" + model + "' " + side + " " + std::to_string(i) +
                                       " is '" + got + "', not '" + specs[i].name + "'");
      }
      Owned<OrtTypeInfo> info{nullptr, api->ReleaseTypeInfo};
      st = inputs ? api->SessionGetInputTypeInfo(session, i, &info.ptr)
                  : api->SessionGetOutputTypeInfo(session, i, &info.ptr);
      if (st) return FromOrt(api, st, StatusCode::kInvalidArgument, "model '" + model + "'");
      const OrtTensorTypeAndShapeInfo* tensor = nullptr;
      ONNXTensorElementDataType type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
      if ((st = api->CastTypeInfoToTensorInfo(info.ptr, &tensor)) || tensor == nullptr ||
          (st = api->GetTensorElementType(tensor, &type))) {
        if (st) api->ReleaseStatus(st);
        return Status::InvalidArgument("model '" + model + "' " + side + " '" + got +
                                       "' is not a tensor");
      }
      if (type != ElementType(specs[i].dtype)) {
        return Status::InvalidArgument("model '" + model + "' " + side + " '" + got +
                                       "' does not hold " + DTypeName(specs[i].dtype));
      }
    }
    return Status::Ok();
  }
};

bool OnnxExecutor::Built() { return true; }

Status OnnxExecutor::Create(const OnnxSessionOptions& options, std::shared_ptr<OnnxExecutor>* out) {
  if (options.inputs.empty() || options.outputs.empty()) {
    return Status::InvalidArgument("model '" + options.name +
                                   "': the ONNX executor needs the input and output specs");
  }
  const Library* lib = nullptr;
  Status loaded = LoadLibrary(options.library, &lib);
  if (!loaded.ok()) return loaded;
  const OrtApi* api = lib->api;
  std::shared_ptr<OnnxExecutor> executor(new OnnxExecutor(options));
  executor->version_ = lib->version;
  auto session = std::make_unique<Session>();
  session->lib = lib;

  Owned<OrtSessionOptions> so{nullptr, api->ReleaseSessionOptions};
  OrtStatus* st = api->CreateSessionOptions(&so.ptr);
  const char* spin = options.allow_spinning ? "1" : "0";
  if (!st) st = api->SetSessionGraphOptimizationLevel(so.ptr, ORT_ENABLE_ALL);
  if (!st) st = api->SetSessionExecutionMode(so.ptr, ORT_SEQUENTIAL);
  if (!st) st = api->SetIntraOpNumThreads(so.ptr, std::max(1, options.intra_op_threads));
  if (!st) st = api->SetInterOpNumThreads(so.ptr, std::max(1, options.inter_op_threads));
  if (!st) st = api->AddSessionConfigEntry(so.ptr, "session.intra_op.allow_spinning", spin);
  if (!st) st = api->AddSessionConfigEntry(so.ptr, "session.inter_op.allow_spinning", spin);
  if (st) return FromOrt(api, st, StatusCode::kInvalidArgument, "onnxruntime session options");
  if ((st = api->CreateSession(lib->env, options.model_path.c_str(), so.ptr, &session->session))) {
    return FromOrt(api, st, StatusCode::kInvalidArgument,
                   "cannot load ONNX model '" + options.model_path + "'");
  }
  const auto& opts = executor->options_;
  Status checked = session->Check(opts.name, true, opts.inputs);
  if (checked.ok()) checked = session->Check(opts.name, false, opts.outputs);
  if (!checked.ok()) return checked;
  for (const auto& s : opts.inputs) {
    session->input_names.push_back(s.name.c_str());
    session->input_types.push_back(ElementType(s.dtype));
  }
  for (const auto& s : opts.outputs) {
    session->output_names.push_back(s.name.c_str());
    session->output_types.push_back(ElementType(s.dtype));
  }
  executor->session_ = std::move(session);
  *out = std::move(executor);
  return Status::Ok();
}

Status OnnxExecutor::Run(int64_t rows, const std::vector<const uint8_t*>& inputs,
                         std::vector<std::shared_ptr<Buffer>>* outputs) const {
  const Session& s = *session_;
  const OrtApi* api = s.lib->api;
  const auto& in_specs = options_.inputs;
  const auto& out_specs = options_.outputs;
  if (inputs.size() != in_specs.size() || rows < 0) {
    return Status::InvalidArgument("model '" + options_.name + "' takes " +
                                   std::to_string(in_specs.size()) + " inputs");
  }
  // Every value made below is released on every return.
  std::vector<OrtValue*> values(in_specs.size() + out_specs.size(), nullptr);
  struct Release {
    const OrtApi* api;
    std::vector<OrtValue*>& values;
    ~Release() {
      for (OrtValue* v : values) {
        if (v != nullptr) api->ReleaseValue(v);
      }
    }
  } release{api, values};
  OrtValue** in_values = values.data();
  OrtValue** out_values = values.data() + in_specs.size();

  std::vector<int64_t> shape;
  auto wrap = [&](const TensorSpec& spec, ONNXTensorElementDataType type, void* data,
                  OrtValue** value) -> OrtStatus* {
    shape.assign(1, rows);
    shape.insert(shape.end(), spec.shape.begin(), spec.shape.end());
    return api->CreateTensorWithDataAsOrtValue(s.lib->cpu, data,
                                               static_cast<size_t>(rows) * spec.RowBytes(),
                                               shape.data(), shape.size(), type, value);
  };
  for (size_t i = 0; i < in_specs.size(); ++i) {
    // ONNX Runtime never writes an input tensor; its API takes a mutable
    // pointer, and a non-null one even for zero bytes.
    static uint8_t empty = 0;
    void* data = inputs[i] != nullptr ? const_cast<uint8_t*>(inputs[i]) : &empty;
    if (OrtStatus* st = wrap(in_specs[i], s.input_types[i], data, &in_values[i])) {
      return FromOrt(api, st, StatusCode::kExecutionFailed,
                     "model '" + options_.name + "' input '" + in_specs[i].name + "'");
    }
  }
  outputs->clear();
  for (size_t i = 0; i < out_specs.size(); ++i) {
    const size_t bytes = static_cast<size_t>(rows) * out_specs[i].RowBytes();
    std::shared_ptr<Buffer> buffer = Buffer::Allocate(std::max<size_t>(bytes, 1));
    if (!buffer) return Status::Internal("out of memory for model '" + options_.name + "' outputs");
    if (OrtStatus* st = wrap(out_specs[i], s.output_types[i], buffer->data(), &out_values[i])) {
      return FromOrt(api, st, StatusCode::kExecutionFailed,
                     "model '" + options_.name + "' output '" + out_specs[i].name + "'");
    }
    outputs->push_back(std::move(buffer));
  }
  if (OrtStatus* st = api->Run(s.session, nullptr, s.input_names.data(), in_values, in_specs.size(),
                               s.output_names.data(), out_specs.size(), out_values)) {
    outputs->clear();
    return FromOrt(api, st, StatusCode::kExecutionFailed,
                   "model '" + options_.name + "' failed in onnxruntime");
  }
  return Status::Ok();
}

#else  // built without ONNX Runtime's C API headers

struct OnnxExecutor::Session {};

bool OnnxExecutor::Built() { return false; }

Status OnnxExecutor::Create(const OnnxSessionOptions& options, std::shared_ptr<OnnxExecutor>*) {
  return Status::Unavailable("model '" + options.name +
                             "': this build of aiarch has no native ONNX Runtime executor (ONNX "
                             "Runtime's C API headers were not found when it was built)");
}

Status OnnxExecutor::Run(int64_t, const std::vector<const uint8_t*>&,
                         std::vector<std::shared_ptr<Buffer>>*) const {
  return Status::Unavailable("no native ONNX Runtime executor in this build");
}

#endif

OnnxExecutor::OnnxExecutor(OnnxSessionOptions options) : options_(std::move(options)) {}

OnnxExecutor::~OnnxExecutor() = default;

Status OnnxExecutor::Execute(const Batch& batch, std::vector<ExecutorOutput>* outputs,
                             std::shared_ptr<ErrorDetail>* /*detail*/) {
  std::vector<const uint8_t*> inputs;
  inputs.reserve(batch.inputs.size());
  for (const auto& b : batch.inputs) inputs.push_back(b->data());
  std::vector<std::shared_ptr<Buffer>> buffers;
  Status st = Run(batch.padded_rows, inputs, &buffers);
  if (!st.ok()) return st;
  outputs->clear();
  for (size_t i = 0; i < buffers.size(); ++i) {
    outputs->push_back(ExecutorOutput{options_.outputs[i], std::move(buffers[i])});
  }
  return Status::Ok();
}

}  // namespace aiarch
