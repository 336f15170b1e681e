// Python views of what the core returns, shared by the model handle
// (bind_model.cpp) and the completion queues (bind_queues.cpp): numpy arrays
// over a completed request's rows of its batch's outputs (no copy: the
// array's base keeps the batch result alive), the exception of a failed
// request (the model's own Python exception as its __cause__), and tensor
// specs as (name, dtype, shape) tuples.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <array>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "aiarch/batcher.h"
#include "aiarch/completion.h"
#include "aiarch/tensor.h"
#include "py_errors.h"

namespace aiarch::binding {

namespace py = pybind11;

// ---------------------------------------------------------------- errors

// The original Python exception of a failed batch, handed to every request of
// the batch as the __cause__ of its ExecutionError.
class PyErrorDetail final : public ErrorDetail {
 public:
  explicit PyErrorDetail(py::object exc) : exc_(std::move(exc)) {}
  ~PyErrorDetail() override {
    // The last reference may drop on a batcher thread.
    if (Py_IsInitialized()) {
      py::gil_scoped_acquire gil;
      exc_ = py::object();
    } else {
      exc_.release();  // interpreter gone: leak rather than touch it
    }
  }
  const py::object& exception() const { return exc_; }

 private:
  py::object exc_;
};

// ---------------------------------------------------------------- dtypes

// numpy's dtype object per DType, made once at import (InitDTypes).
inline std::array<py::object, 13>& DTypeObjects() {
  static std::array<py::object, 13> objects;
  return objects;
}

inline void InitDTypes() {
  auto np = py::module_::import("numpy");
  auto& objs = DTypeObjects();
  for (int i = 0; i < 13; ++i) {
    const DType dt = static_cast<DType>(i);
    if (dt == DType::kBf16) {
      try {
        objs[i] = py::module_::import("ml_dtypes").attr("bfloat16");
        objs[i] = np.attr("dtype")(objs[i]);
      } catch (py::error_already_set&) {
        objs[i] = np.attr("dtype")("uint16");  // raw bits when ml_dtypes is absent
      }
      continue;
    }
    objs[i] = np.attr("dtype")(DTypeName(dt));
  }
}

// A read-only numpy view of `bytes` at `data`, kept alive by `base`. Made by
// the numpy C API directly (C strides computed by numpy, read-only from the
// start): one of these is made per completed request.
inline py::array ViewOf(const TensorSpec& spec, int64_t rows, const uint8_t* data,
                        py::handle base) {
  constexpr size_t kMaxDims = 32;  // NPY_MAXDIMS
  if (spec.shape.size() + 1 > kMaxDims) {
    ThrowStatus(Status::InvalidArgument("tensor '" + spec.name + "' has more than " +
                                        std::to_string(kMaxDims) + " dimensions"));
  }
  py::ssize_t shape[kMaxDims];
  shape[0] = rows;
  for (size_t i = 0; i < spec.shape.size(); ++i) shape[i + 1] = spec.shape[i];
  auto& api = py::detail::npy_api::get();
  PyObject* descr = DTypeObjects()[static_cast<int>(spec.dtype)].ptr();
  Py_INCREF(descr);  // stolen by PyArray_NewFromDescr
  auto arr = py::reinterpret_steal<py::array>(api.PyArray_NewFromDescr_(
      api.PyArray_Type_, descr, static_cast<int>(spec.shape.size() + 1), shape,
      /*strides=*/nullptr, const_cast<uint8_t*>(data), /*flags=*/0, nullptr));
  if (!arr) throw py::error_already_set();
  if (api.PyArray_SetBaseObject_(arr.ptr(), base.inc_ref().ptr()) != 0) {
    throw py::error_already_set();
  }
  return arr;
}

template <typename T>
inline py::capsule OwnerCapsule(std::shared_ptr<T> owner) {
  return py::capsule(new std::shared_ptr<T>(std::move(owner)),
                     [](void* p) { delete static_cast<std::shared_ptr<T>*>(p); });
}

// One array when the model has one output, else a tuple in output order.
inline py::object PackOutputs(std::vector<py::array>&& arrays) {
  if (arrays.size() == 1) return std::move(arrays[0]);
  py::tuple t(arrays.size());
  for (size_t i = 0; i < arrays.size(); ++i) t[i] = std::move(arrays[i]);
  return std::move(t);
}

inline py::object OutputsOfCompletion(const Completion& c, py::handle base) {
  const auto& specs = *c.result->specs;
  if (specs.size() == 1) {  // the common case: no vector, no tuple
    return ViewOf(specs[0], c.rows,
                  c.result->outputs[0]->data() + c.row_offset * specs[0].RowBytes(), base);
  }
  std::vector<py::array> arrays;
  arrays.reserve(specs.size());
  for (size_t i = 0; i < specs.size(); ++i) {
    const auto& spec = specs[i];
    const uint8_t* p = c.result->outputs[i]->data() + c.row_offset * spec.RowBytes();
    arrays.push_back(ViewOf(spec, c.rows, p, base));
  }
  return PackOutputs(std::move(arrays));
}

inline py::object OutputsOfHit(CachedResponse& hit) {
  py::capsule base = OwnerCapsule(hit.data);
  std::vector<py::array> arrays;
  for (size_t i = 0; i < hit.specs->size(); ++i) {
    arrays.push_back(ViewOf((*hit.specs)[i], hit.rows, hit.data->data() + hit.offsets[i], base));
  }
  return PackOutputs(std::move(arrays));
}

inline py::object ErrorOfCompletion(const Completion& c) {
  py::object exc = MakeError(c.status);
  if (auto* d = dynamic_cast<PyErrorDetail*>(c.error_detail.get())) {
    exc.attr("__cause__") = d->exception();
  }
  return exc;
}

// ---------------------------------------------------------------- specs

inline py::tuple SpecToPy(const TensorSpec& spec) {
  py::tuple shape(spec.shape.size());
  for (size_t i = 0; i < spec.shape.size(); ++i) shape[i] = spec.shape[i];
  return py::make_tuple(spec.name, DTypeName(spec.dtype), shape);
}

}  // namespace aiarch::binding
