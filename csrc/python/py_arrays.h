// The binding's one route from a Python array to values the core reads; every
// bind file that takes an array goes through it, so element kind, byte order
// and contiguity are checked in one place.
//
// Contract: the core always reads an array's values in native byte order and
// C (row-major) order.
//  - An array already like that is used in place: no copy.
//  - A byte-swapped array (">f4" on a little-endian host) or a strided one (a
//    slice, a transpose, Fortran order) is copied once with numpy's
//    casting="equiv", which allows only a byte-order change: the values the
//    core reads are the values the caller sees, never reinterpreted bytes.
//  - Any element kind the argument does not accept (object, str, bytes,
//    complex, datetime, structured, ...) is refused with InvalidArgumentError
//    naming the argument, the kinds it accepts and the dtype it got.
// Every function here needs the GIL.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "aiarch/status.h"
#include "aiarch/tensor.h"
#include "py_errors.h"

namespace aiarch::binding {

namespace py = pybind11;

// Element kinds an argument accepts (a bit set).
enum ArrayKinds : unsigned {
  kBoolKind = 1u << 0,
  kSignedKind = 1u << 1,
  kUnsignedKind = 1u << 2,
  kFloatKind = 1u << 3,
  kBfloat16Kind = 1u << 4,  // ml_dtypes.bfloat16
  kIntegerKinds = kSignedKind | kUnsignedKind,
  kRealKinds = kBoolKind | kIntegerKinds | kFloatKind,
  kTensorKinds = kRealKinds | kBfloat16Kind,  // every DType of the core
};

inline bool IsBfloat16(const py::dtype& dt) {
  return dt.kind() == 'V' && dt.itemsize() == 2 &&
         py::str(dt.attr("name")).cast<std::string>() == "bfloat16";
}

// "bool, int, uint or float": the kinds in the words of an error message.
inline std::string KindsText(unsigned kinds) {
  std::vector<const char*> names;
  if (kinds & kBoolKind) names.push_back("bool");
  if (kinds & kSignedKind) names.push_back("int");
  if (kinds & kUnsignedKind) names.push_back("uint");
  if (kinds & kFloatKind) names.push_back("float");
  if (kinds & kBfloat16Kind) names.push_back("bfloat16");
  std::string out;
  for (size_t i = 0; i < names.size(); ++i) {
    if (i > 0) out += i + 1 == names.size() ? " or " : ", ";
    out += names[i];
  }
  return out;
}

inline bool KindAccepted(const py::dtype& dt, unsigned kinds) {
  switch (dt.kind()) {
    case 'b': return (kinds & kBoolKind) != 0;
    case 'i': return (kinds & kSignedKind) != 0;
    case 'u': return (kinds & kUnsignedKind) != 0;
    case 'f': return (kinds & kFloatKind) != 0;
    case 'V': return (kinds & kBfloat16Kind) != 0 && IsBfloat16(dt);
    default: return false;
  }
}

inline std::string DTypeText(const py::dtype& dt) { return py::str(dt).cast<std::string>(); }

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
inline constexpr char kForeignByteOrder = '<';
#else
inline constexpr char kForeignByteOrder = '>';
#endif

// True when the core may read `arr`'s buffer as it is. numpy spells the native
// order '=' and "not applicable" (1-byte types) '|'; only the opposite explicit
// order needs a swap.
inline bool IsNativeCContiguous(const py::array& arr) {
  return arr.dtype().byteorder() != kForeignByteOrder && (arr.flags() & py::array::c_style) != 0;
}

// Checks the element kind of an ndarray. Never raises; the status names `what`.
inline Status CheckKind(const py::array& arr, const std::string& what, unsigned kinds) {
  const py::dtype dt = arr.dtype();
  if (KindAccepted(dt, kinds)) return Status::Ok();
  return Status::InvalidArgument(what + " must be an array of " + KindsText(kinds) +
                                 " values; got dtype " + DTypeText(dt));
}

// `obj` as an ndarray (array-likes such as lists go through numpy.asarray)
// with an accepted kind. Never raises.
inline Status AsArray(py::handle obj, const std::string& what, unsigned kinds, py::array* out) {
  py::array arr = py::array::ensure(obj);
  if (!arr) {
    std::string why;
    if (PyErr_Occurred()) {
      py::error_already_set e;  // takes (and clears) the numpy error
      why = std::string(": ") + py::str(e.value()).cast<std::string>();
    }
    return Status::InvalidArgument(what + " must be an array of " + KindsText(kinds) +
                                   " values; got a " + Py_TYPE(obj.ptr())->tp_name +
                                   " that numpy cannot convert" + why);
  }
  AIARCH_RETURN_IF_ERROR(CheckKind(arr, what, kinds));
  *out = std::move(arr);
  return Status::Ok();
}

// Copies `src`'s values into `dst` (C order, native byte order, src.nbytes()
// bytes, owned by the caller). Raises only on a numpy failure.
inline void CopyNative(const py::array& src, void* dst) {
  const py::dtype native = src.dtype().attr("newbyteorder")("=");
  std::vector<py::ssize_t> shape(src.shape(), src.shape() + src.ndim());
  // A writable view of `dst`; the capsule stands in as its base so numpy
  // does not copy, and owns nothing.
  py::array view(native, shape, {}, dst, py::capsule(dst));
  py::module_::import("numpy").attr("copyto")(view, src, py::arg("casting") = "equiv");
}

// `obj` as an ndarray the core may read in place: returned as is when it
// already is one, else a native C-order copy. Raises InvalidArgumentError
// naming `what` when its kind is not accepted.
inline py::array NativeArray(py::handle obj, const std::string& what, unsigned kinds) {
  py::array arr;
  Check(AsArray(obj, what, kinds, &arr));
  if (IsNativeCContiguous(arr)) return arr;
  py::array copy(py::dtype(arr.dtype().attr("newbyteorder")("=")),
                 std::vector<py::ssize_t>(arr.shape(), arr.shape() + arr.ndim()));
  py::module_::import("numpy").attr("copyto")(copy, arr, py::arg("casting") = "equiv");
  return copy;
}

// The core DType of an array whose kind CheckKind accepted with kTensorKinds;
// false for a size the core has no type for (e.g. float128).
inline bool DTypeOfArray(const py::array& arr, DType* out) {
  static constexpr DType kNone = DType::kBool;  // placeholder for "no such type"
  // numpy (kind, itemsize) -> DType; index = log2(itemsize).
  static constexpr DType kFloat[4] = {kNone, DType::kFp16, DType::kFp32, DType::kFp64};
  static constexpr DType kInt[4] = {DType::kInt8, DType::kInt16, DType::kInt32, DType::kInt64};
  static constexpr DType kUint[4] = {DType::kUint8, DType::kUint16, DType::kUint32, DType::kUint64};
  const py::dtype dt = arr.dtype();
  const auto size = dt.itemsize();
  const int log2 = size == 1 ? 0 : size == 2 ? 1 : size == 4 ? 2 : size == 8 ? 3 : -1;
  switch (dt.kind()) {
    case 'b': *out = DType::kBool; return size == 1;
    case 'f': *out = kFloat[log2 < 0 ? 0 : log2]; return log2 >= 1;
    case 'i': *out = kInt[log2 < 0 ? 0 : log2]; return log2 >= 0;
    case 'u': *out = kUint[log2 < 0 ? 0 : log2]; return log2 >= 0;
    case 'V': *out = DType::kBf16; return IsBfloat16(dt);
    default: return false;
  }
}

// A tensor the batcher may read until the request's completion: the caller's
// own buffer when it is native and C-contiguous, else a copy in `owned`.
struct TensorBytes {
  const uint8_t* data = nullptr;
  size_t bytes = 0;
  DType dtype = DType::kFp32;
  std::vector<int64_t> shape;
  std::shared_ptr<Buffer> owned;  // set when a copy was made; frees without the GIL
};

// Reads a model input or output. Never raises: a refused kind, a dtype the
// core lacks or a failed copy comes back as a status naming what(), which is
// called on those paths only (the common path builds no string).
template <typename WhatFn>
Status ReadTensor(const py::array& arr, const WhatFn& what, TensorBytes* out) {
  const py::dtype dt = arr.dtype();
  if (!KindAccepted(dt, kTensorKinds)) return CheckKind(arr, what(), kTensorKinds);
  if (!DTypeOfArray(arr, &out->dtype)) {
    return Status::InvalidArgument(what() + " has dtype " + DTypeText(dt) +
                                   ", which has no tensor type; expected bool, (u)int8-64, "
                                   "float16, bfloat16, float32 or float64");
  }
  out->shape.assign(arr.shape(), arr.shape() + arr.ndim());
  out->bytes = static_cast<size_t>(arr.nbytes());
  if (IsNativeCContiguous(arr) || out->bytes == 0) {
    out->data = static_cast<const uint8_t*>(arr.data());
    return Status::Ok();
  }
  out->owned = Buffer::Allocate(out->bytes);
  if (!out->owned) return Status::Internal("out of memory copying " + what());
  try {
    CopyNative(arr, out->owned->data());
  } catch (py::error_already_set& e) {
    return Status::InvalidArgument("cannot copy " + what() + " to native byte order: " +
                                   py::str(e.value()).cast<std::string>());
  }
  out->data = out->owned->data();
  return Status::Ok();
}

// A TensorSpec from any object with .name, .dtype (str) and .shape (ints),
// e.g. aiarch.TensorSpec. Raises InvalidArgumentError for an unknown dtype.
inline TensorSpec SpecFromPy(const py::handle& obj) {
  TensorSpec spec;
  spec.name = py::str(obj.attr("name")).cast<std::string>();
  Check(DTypeFromName(py::str(obj.attr("dtype")).cast<std::string>(), &spec.dtype));
  for (auto d : obj.attr("shape")) spec.shape.push_back(d.cast<int64_t>());
  return spec;
}

}  // namespace aiarch::binding
