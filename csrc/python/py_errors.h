// The binding's one route from a core Status to a Python exception; every
// bind file raises through it.
//
// The classes come from aiarch.errors.ERRORS_BY_CODE, the one table of status
// code <-> exception class <-> HTTP status. LoadErrorTable() reads it once at
// import (and refuses to import when a code has no class); after that raising
// is an array lookup. The class references are deliberately never released:
// they must outlive every module-level object that may still raise at exit.
#pragma once

#include <pybind11/pybind11.h>

#include <array>
#include <stdexcept>
#include <string>
#include <utility>

#include "aiarch/status.h"

namespace aiarch::binding {

namespace py = pybind11;

inline std::array<PyObject*, kStatusCodeCount>& ErrorClasses() {
  static std::array<PyObject*, kStatusCodeCount> classes{};
  return classes;
}

// Called once, first thing in PYBIND11_MODULE. Not thread-safe (import holds the GIL).
inline void LoadErrorTable() {
  py::dict by_code = py::module_::import("aiarch.errors").attr("ERRORS_BY_CODE");
  auto& classes = ErrorClasses();
  for (int code = 1; code < kStatusCodeCount; ++code) {
    py::int_ key(code);
    if (!by_code.contains(key)) {
      throw std::runtime_error(std::string("aiarch.errors.ERRORS_BY_CODE lacks a class for ") +
                               StatusCodeName(static_cast<StatusCode>(code)));
    }
    classes[code] = py::object(by_code[key]).release().ptr();  // one reference, kept forever
  }
}

// The exception object for a failed status (not raised). An unknown code
// becomes InternalError; the message is the status's message unchanged.
inline py::object MakeError(const Status& status) {
  const int code = static_cast<int>(status.code());
  const bool known = code > 0 && code < kStatusCodeCount;
  PyObject* cls = ErrorClasses()[known ? code : static_cast<int>(StatusCode::kInternal)];
  py::object exc = py::reinterpret_borrow<py::object>(cls)(status.message());
  if (status.retry_after_s() > 0) exc.attr("retry_after_s") = status.retry_after_s();
  return exc;
}

// Raises `exc` as the current Python error and unwinds to pybind11.
[[noreturn]] inline void Raise(const py::object& exc) {
  PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(exc.ptr())), exc.ptr());
  throw py::error_already_set();
}

// Raises the exception mapped from a failed status.
[[noreturn]] inline void ThrowStatus(const Status& status) { Raise(MakeError(status)); }

inline void Check(const Status& status) {
  if (!status.ok()) ThrowStatus(status);
}

[[noreturn]] inline void ThrowInvalidArgument(std::string message) {
  ThrowStatus(Status::InvalidArgument(std::move(message)));
}

}  // namespace aiarch::binding
