// ONNX Runtime executor: runs an ONNX model through ONNX Runtime's C API, so a
// batch runs with no Python on its path (no GIL, no numpy objects, outputs
// written straight into the batch's output buffers).
//
// Contract
// - The onnxruntime shared library is loaded at run time (dlopen) from the
//   path the caller gives: the library the onnxruntime Python package ships,
//   so the native executor and the Python package always run one release.
//   Only ONNX Runtime's C API headers are needed to build; a build without
//   them compiles this executor out (Built() == false, Create fails with
//   Unavailable) and models run through the Python package instead.
// - A library is loaded once per process and never unloaded; its environment
//   (logging, global thread pools: none are used) is shared by every session.
// - Create validates the given input and output specs against the model's
//   own (count, names, element types); the specs' trailing shapes are the
//   ones the caller read from the model (symbolic dims are not allowed after
//   the batch dim).
// - Execute and Run are thread-safe (ONNX Runtime sessions are) and hold no
//   lock of ours: batcher instances run batches concurrently.
// - Run allocates one output buffer per output (rows * RowBytes) and binds it
//   as the session's output, so ONNX Runtime writes each result once; a model
//   whose outputs do not have the batch's rows fails with ONNX Runtime's
//   message, never with a short buffer.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "aiarch/batcher.h"
#include "aiarch/status.h"
#include "aiarch/tensor.h"

namespace aiarch {

struct OnnxSessionOptions {
  std::string name;        // the model's name, for error messages
  std::string library;     // path of the onnxruntime shared library
  std::string model_path;  // the .onnx file
  int intra_op_threads = 1;
  int inter_op_threads = 1;
  // ONNX Runtime's pool threads spin after each run unless told not to; on a
  // small machine that spinning takes the core the woken caller needs.
  bool allow_spinning = false;
  std::vector<TensorSpec> inputs;   // in the model's input order
  std::vector<TensorSpec> outputs;  // in the model's output order
};

class OnnxExecutor final : public Executor {
 public:
  // Whether this build has the C API (else Create always fails).
  static bool Built();
  static Status Create(const OnnxSessionOptions& options, std::shared_ptr<OnnxExecutor>* out);
  ~OnnxExecutor() override;
  OnnxExecutor(const OnnxExecutor&) = delete;
  OnnxExecutor& operator=(const OnnxExecutor&) = delete;

  Status Execute(const Batch& batch, std::vector<ExecutorOutput>* outputs,
                 std::shared_ptr<ErrorDetail>* detail) override;

  // Runs `rows` rows: inputs[i] holds rows * inputs()[i].RowBytes() bytes in
  // the spec's dtype. Fills *outputs with one buffer per output spec.
  Status Run(int64_t rows, const std::vector<const uint8_t*>& inputs,
             std::vector<std::shared_ptr<Buffer>>* outputs) const;

  const std::vector<TensorSpec>& inputs() const { return options_.inputs; }
  const std::vector<TensorSpec>& outputs() const { return options_.outputs; }
  // The loaded library's version string, e.g. "1.32.0".
  const std::string& version() const { return version_; }

 private:
  struct Session;
  explicit OnnxExecutor(OnnxSessionOptions options);

  OnnxSessionOptions options_;
  std::string version_;
  std::unique_ptr<Session> session_;
};

}  // namespace aiarch
