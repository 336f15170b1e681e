// The native executors the binding exposes (bind_onnx.cpp), as the model
// handle sees them.
#pragma once

#include <pybind11/pybind11.h>

#include <memory>

#include "aiarch/batcher.h"

// The native executor behind `fn` when it is one (an aiarch._core.OnnxSession),
// else null: the batcher then calls `fn` as Python.
std::shared_ptr<aiarch::Executor> NativeExecutorOf(pybind11::handle fn);
