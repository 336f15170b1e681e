// aiarch._core.OnnxSession: an ONNX model run by ONNX Runtime's C API
// (aiarch/onnx_executor.h). Handed to aiarch._core.Model as its executor, its
// batches run with no Python at all; called from Python, it runs one batch
// with the GIL released.
#include "bind_onnx.h"

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <string>
#include <vector>

#include "aiarch/onnx_executor.h"
#include "py_arrays.h"
#include "py_errors.h"

namespace py = pybind11;
using namespace aiarch;
using binding::Check;
using binding::ThrowStatus;

namespace {

struct PyOnnxSession {
  std::shared_ptr<OnnxExecutor> executor;
  std::vector<py::dtype> output_dtypes;  // numpy's, made once
};

std::string Describe(const std::vector<TensorSpec>& specs) {
  std::string out;
  for (const auto& s : specs) out += (out.empty() ? "" : ", ") + s.ToString();
  return out;
}

// Runs one batch: one array per input, rows first. Returns a tuple of arrays
// in output order (owning the buffers ONNX Runtime wrote).
py::tuple Call(const PyOnnxSession& self, const py::args& args) {
  const OnnxExecutor& ex = *self.executor;
  const auto& specs = ex.inputs();
  if (args.size() != specs.size()) {
    ThrowStatus(Status::InvalidArgument("the model takes " + std::to_string(specs.size()) +
                                        " inputs (" + Describe(specs) + "), got " +
                                        std::to_string(args.size())));
  }
  std::vector<py::array> arrays(specs.size());
  std::vector<binding::TensorBytes> bytes(specs.size());
  std::vector<const uint8_t*> data(specs.size());
  int64_t rows = -1;
  for (size_t i = 0; i < specs.size(); ++i) {
    const TensorSpec& spec = specs[i];
    auto what = [&] { return "input '" + spec.name + "'"; };
    Check(binding::AsArray(args[i], what(), binding::kTensorKinds, &arrays[i]));
    Check(binding::ReadTensor(arrays[i], what, &bytes[i]));
    const auto& shape = bytes[i].shape;
    const bool trailing_ok = shape.size() == spec.shape.size() + 1 &&
                             std::equal(spec.shape.begin(), spec.shape.end(), shape.begin() + 1);
    if (bytes[i].dtype != spec.dtype || !trailing_ok) {
      ThrowStatus(Status::InvalidArgument(what() + " expects " + DTypeName(spec.dtype) +
                                          " rows shaped " + spec.ToString() + ", got " +
                                          DTypeName(bytes[i].dtype) + " " +
                                          py::str(arrays[i].attr("shape")).cast<std::string>()));
    }
    if (rows >= 0 && shape[0] != rows) {
      ThrowStatus(Status::InvalidArgument("inputs disagree on the number of rows (" +
                                          std::to_string(rows) + " and " +
                                          std::to_string(shape[0]) + ")"));
    }
    rows = shape[0];
    data[i] = bytes[i].data;
  }
  std::vector<std::shared_ptr<Buffer>> outputs;
  Status st;
  {
    py::gil_scoped_release release;  // `arrays` and `bytes` keep the inputs alive
    st = ex.Run(rows, data, &outputs);
  }
  Check(st);
  const auto& out_specs = ex.outputs();
  py::tuple result(outputs.size());
  for (size_t i = 0; i < outputs.size(); ++i) {
    std::vector<py::ssize_t> shape{static_cast<py::ssize_t>(rows)};
    for (int64_t d : out_specs[i].shape) shape.push_back(static_cast<py::ssize_t>(d));
    auto* owner = new std::shared_ptr<Buffer>(outputs[i]);
    py::capsule base(owner, [](void* p) { delete static_cast<std::shared_ptr<Buffer>*>(p); });
    result[i] = py::array(self.output_dtypes[i], shape, {}, outputs[i]->data(), base);
  }
  return result;
}

}  // namespace

std::shared_ptr<Executor> NativeExecutorOf(py::handle fn) {
  if (!py::isinstance<PyOnnxSession>(fn)) return nullptr;
  return fn.cast<const PyOnnxSession&>().executor;
}

void BindOnnx(py::module_& m) {
  m.attr("onnx_executor_built") = OnnxExecutor::Built();
  py::class_<PyOnnxSession>(
      m, "OnnxSession",
      "An ONNX model run by ONNX Runtime's C API, from the onnxruntime library at `library` "
      "(the one the onnxruntime package ships). As a Model's executor its batches run without "
      "Python; called with one array per input it runs one batch, GIL released.")
      .def(py::init([](const std::string& name, const std::string& library,
                       const std::string& model_path, const py::list& inputs,
                       const py::list& outputs, int intra_op_threads, int inter_op_threads,
                       bool allow_spinning) {
             OnnxSessionOptions options;
             options.name = name;
             options.library = library;
             options.model_path = model_path;
             options.intra_op_threads = intra_op_threads;
             options.inter_op_threads = inter_op_threads;
             options.allow_spinning = allow_spinning;
             for (auto s : inputs) options.inputs.push_back(binding::SpecFromPy(s));
             for (auto s : outputs) options.outputs.push_back(binding::SpecFromPy(s));
             PyOnnxSession session;
             Status st;
             {
               py::gil_scoped_release release;  // loading a model takes a while
               st = OnnxExecutor::Create(options, &session.executor);
             }
             Check(st);
             py::module_ np = py::module_::import("numpy");
             for (const auto& spec : session.executor->outputs()) {
               session.output_dtypes.push_back(
                   py::dtype::from_args(np.attr("dtype")(DTypeName(spec.dtype))));
             }
             return session;
           }),
           py::arg("name"), py::arg("library"), py::arg("model_path"), py::arg("inputs"),
           py::arg("outputs"), py::arg("intra_op_threads") = 1, py::arg("inter_op_threads") = 1,
           py::arg("allow_spinning") = false)
      .def_property_readonly("version",
                             [](const PyOnnxSession& s) { return s.executor->version(); })
      .def("__call__", &Call);
}
