// aiarch._core.Model (py_model.h): inputs read from numpy arrays (copied only
// when byte-swapped or strided), submitted to the batcher; a Python model is
// called once per batch with the GIL (PyExecutor), a native executor (an ONNX
// Runtime session) runs its batches without Python.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "aiarch/batcher.h"
#include "aiarch/cache.h"
#include "aiarch/clock.h"
#include "aiarch/completion.h"
#include "aiarch/tensor.h"
#include "bind_onnx.h"
#include "py_arrays.h"
#include "py_errors.h"
#include "py_model.h"
#include "py_results.h"

namespace aiarch::binding {

namespace {

// ---------------------------------------------------------------- executor

// Calls a Python callable once per batch, with the GIL taken once per batch.
class PyExecutor final : public Executor {
 public:
  PyExecutor(std::string model, py::object fn) : model_(std::move(model)), fn_(std::move(fn)) {}
  ~PyExecutor() override {
    if (Py_IsInitialized()) {
      py::gil_scoped_acquire gil;
      fn_ = py::object();
    } else {
      fn_.release();
    }
  }

  void SetInputSpecs(std::vector<TensorSpec> specs) { inputs_ = std::move(specs); }

  Status Execute(const Batch& batch, std::vector<ExecutorOutput>* outputs,
                 std::shared_ptr<ErrorDetail>* detail) override {
    py::gil_scoped_acquire gil;
    try {
      py::tuple args(batch.inputs.size());
      for (size_t i = 0; i < batch.inputs.size(); ++i) {
        args[i] = ViewOf(inputs_[i], batch.padded_rows, batch.inputs[i]->data(),
                         OwnerCapsule(batch.inputs[i]));
      }
      py::object result = fn_(*args);
      std::vector<py::handle> items;
      if (PyTuple_Check(result.ptr()) || PyList_Check(result.ptr())) {
        for (auto item : result) items.push_back(item);
      } else {
        items.push_back(result);
      }
      if (items.empty())
        return Status::ExecutionFailed("model '" + model_ + "' returned no outputs");
      outputs->clear();
      for (size_t i = 0; i < items.size(); ++i) {
        auto what = [&] { return "model '" + model_ + "' output " + std::to_string(i); };
        // AsArray accepts anything array-like (a CPU torch tensor, a list).
        py::array arr;
        binding::TensorBytes bytes;
        Status st = binding::AsArray(items[i], what(), binding::kTensorKinds, &arr);
        if (st.ok()) st = binding::ReadTensor(arr, what, &bytes);
        if (!st.ok()) return Status::ExecutionFailed(st.message());
        if (bytes.shape.empty() || bytes.shape[0] != batch.padded_rows) {
          return Status::ExecutionFailed(what() + " must have the batch's " +
                                         std::to_string(batch.padded_rows) +
                                         " rows as its first dimension, got shape " +
                                         py::str(py::getattr(arr, "shape")).cast<std::string>());
        }
        ExecutorOutput out;
        out.spec.dtype = bytes.dtype;
        out.spec.shape.assign(bytes.shape.begin() + 1, bytes.shape.end());
        if (bytes.owned) {
          out.data = std::move(bytes.owned);  // the native-order copy is the output
        } else {
          out.data = Buffer::Allocate(bytes.bytes);
          if (!out.data) return Status::Internal("out of memory copying " + what());
          std::memcpy(out.data->data(), bytes.data, bytes.bytes);
        }
        outputs->push_back(std::move(out));
      }
      return Status::Ok();
    } catch (py::error_already_set& e) {
      std::string type = py::str(e.type().attr("__name__")).cast<std::string>();
      std::string what = py::str(e.value()).cast<std::string>();
      *detail = std::make_shared<PyErrorDetail>(e.value());
      return Status::ExecutionFailed("model '" + model_ + "' raised " + type + ": " + what);
    } catch (const std::exception& e) {
      return Status::ExecutionFailed("model '" + model_ + "' failed: " + e.what());
    }
  }

 private:
  std::string model_;
  py::object fn_;
  std::vector<TensorSpec> inputs_;
};

// ---------------------------------------------------------------- model handle

// Native-order copies the binding made of a request's inputs. The batcher
// reads input bytes until the request's completion, so the copies live as long.
using InputCopies = std::vector<std::shared_ptr<Buffer>>;

// Fills args->inputs from an ndarray or a tuple/list of them, in the model's
// input order. Byte-swapped or strided arrays are copied into `copies`. The
// entries already in args->inputs, and `bytes`, are reused: their shape
// vectors keep their capacity, so a warm submit allocates nothing here.
void ParseInputs(const py::handle& obj, const Batcher& batcher, SubmitArgs* args,
                 InputCopies* copies, binding::TensorBytes* bytes) {
  size_t count = 0;
  auto add = [&](py::handle h) {
    auto what = [&] {
      const size_t i = count;
      const std::vector<TensorSpec> specs = batcher.input_specs();
      return "input " + (i < specs.size() ? "'" + specs[i].name + "'" : std::to_string(i)) +
             " of model '" + batcher.name() + "'";
    };
    if (!py::isinstance<py::array>(h)) {
      ThrowStatus(Status::InvalidArgument(what() + " must be a numpy array; got " +
                                          Py_TYPE(h.ptr())->tp_name));
    }
    bytes->owned.reset();
    Check(binding::ReadTensor(py::reinterpret_borrow<py::array>(h), what, bytes));
    if (count == args->inputs.size()) args->inputs.emplace_back();
    SubmitArgs::Input& in = args->inputs[count++];
    in.data = bytes->data;
    in.bytes = bytes->bytes;
    in.dtype = bytes->dtype;
    in.shape.assign(bytes->shape.begin(), bytes->shape.end());
    in.contiguous = true;  // ReadTensor hands out C-order bytes only
    if (bytes->owned) copies->push_back(std::move(bytes->owned));
  };
  if (PyTuple_Check(obj.ptr()) || PyList_Check(obj.ptr())) {
    for (auto item : obj) add(item);
  } else {
    add(obj);
  }
  args->inputs.resize(count);
}

// The parsed arguments of an event-loop submit, kept per thread between
// submits so that their vectors keep their capacity. Taken by move for the
// length of one submit: a submit nested in it (Python run while parsing)
// finds the slot empty and allocates its own.
class SubmitScratch {
 public:
  // The slot is looked up once: each thread_local access costs a TLS call in a shared library.
  SubmitScratch() : slot_(Slot()), args_(std::move(slot_.args)), bytes_(std::move(slot_.bytes)) {}
  ~SubmitScratch() {
    args_.sink.reset();  // the slot must not keep a completion queue alive
    bytes_.owned.reset();
    slot_.args = std::move(args_);
    slot_.bytes = std::move(bytes_);
  }
  SubmitScratch(const SubmitScratch&) = delete;
  SubmitScratch& operator=(const SubmitScratch&) = delete;

  SubmitArgs& args() { return args_; }
  binding::TensorBytes& bytes() { return bytes_; }

 private:
  struct Stored {
    SubmitArgs args;
    binding::TensorBytes bytes;
  };
  static Stored& Slot() {
    thread_local Stored slot;
    return slot;
  }
  Stored& slot_;
  SubmitArgs args_;
  binding::TensorBytes bytes_;
};

// Delivers one request's completion to `inner`, then frees the input copies
// the binding made for it. Never touches Python (Buffer frees without the GIL).
class KeepCopiesSink final : public CompletionSink {
 public:
  KeepCopiesSink(std::shared_ptr<CompletionSink> inner, InputCopies copies)
      : inner_(std::move(inner)), copies_(std::move(copies)) {}
  // Called once: a request gets exactly one completion.
  void Deliver(std::vector<Completion>&& completions) override {
    inner_->Deliver(std::move(completions));
    copies_.clear();
  }

 private:
  std::shared_ptr<CompletionSink> inner_;
  InputCopies copies_;
};

}  // namespace

PyModel::PyModel(const std::string& name, py::object fn, const py::list& inputs,
                 const py::list& outputs, const BatchConfig& config, py::object cache_config,
                 py::object clock) {
  std::vector<TensorSpec> in_specs, out_specs;
  for (auto s : inputs) in_specs.push_back(SpecFromPy(s));
  for (auto s : outputs) out_specs.push_back(SpecFromPy(s));
  // A native executor (an ONNX Runtime session) runs batches with no Python;
  // anything else callable is called once per batch with the GIL.
  std::shared_ptr<Executor> executor = NativeExecutorOf(fn);
  if (!executor) {
    auto py_executor = std::make_shared<PyExecutor>(name, std::move(fn));
    py_executor->SetInputSpecs(in_specs);
    executor = std::move(py_executor);
  }
  std::shared_ptr<ResponseCache> cache;
  if (!cache_config.is_none()) cache = cache_config.cast<std::shared_ptr<ResponseCache>>();
  std::shared_ptr<Clock> c;
  if (!clock.is_none()) c = clock.cast<std::shared_ptr<ManualClock>>();
  Check(Batcher::Create(name, config, std::move(in_specs), std::move(out_specs),
                        std::move(executor), std::move(c), std::move(cache), &batcher_));
}

PyModel::~PyModel() {
  if (batcher_) {
    // Workers may need the GIL to finish a batch.
    py::gil_scoped_release release;
    batcher_->Shutdown(/*drain=*/false);
  }
}

py::object PyModel::Submit(const py::handle& inputs, int64_t timeout_ns, uint32_t priority,
                           const std::shared_ptr<CompletionQueue>& queue) {
  CachedResponse hit;
  const uint64_t id = SubmitToQueue(inputs, timeout_ns, priority, queue, &hit);
  if (id == 0) return OutputsOfHit(hit);
  return py::int_(id);
}

uint64_t PyModel::SubmitToQueue(const py::handle& inputs, int64_t timeout_ns, uint32_t priority,
                                const std::shared_ptr<CompletionQueue>& queue,
                                CachedResponse* hit) {
  SubmitScratch scratch;
  SubmitArgs& args = scratch.args();
  InputCopies copies;
  ParseInputs(inputs, *batcher_, &args, &copies, &scratch.bytes());
  args.timeout_ns = timeout_ns;
  args.priority = priority;
  if (copies.empty()) {
    args.sink = queue;
  } else {
    args.sink = std::make_shared<KeepCopiesSink>(queue, std::move(copies));
  }
  args.caller_flushes = true;
  uint64_t id = 0;
  Check(batcher_->Submit(args, &id, hit));
  return id;
}

py::object PyModel::SubmitSync(const py::handle& inputs, int64_t timeout_ns, uint32_t priority) {
  SubmitArgs args;
  InputCopies copies;  // read by the batcher until the completion below
  binding::TensorBytes bytes;
  ParseInputs(inputs, *batcher_, &args, &copies, &bytes);
  args.timeout_ns = timeout_ns;
  args.priority = priority;
  auto sink = std::make_shared<SyncCompletion>();
  args.sink = sink;
  uint64_t id = 0;
  CachedResponse hit;
  Check(batcher_->Submit(args, &id, &hit));
  if (id == 0) return OutputsOfHit(hit);
  bool interrupted = false;
  {
    // Blocks on the completion; polls for signals so Ctrl-C still works.
    py::gil_scoped_release release;
    while (!sink->Wait(50'000'000)) {
      py::gil_scoped_acquire gil;
      if (PyErr_CheckSignals() != 0) {
        interrupted = true;
        break;
      }
    }
  }
  if (interrupted) {
    // The request may still hold our input bytes: wait for its completion.
    batcher_->Cancel(id);
    {
      py::gil_scoped_release release;
      sink->Wait(-1);
    }
    throw py::error_already_set();
  }
  Completion c = sink->Take();
  if (!c.status.ok()) binding::Raise(ErrorOfCompletion(c));
  return OutputsOfCompletion(c, OwnerCapsule(c.result));
}

void PyModel::Shutdown(bool drain) {
  py::gil_scoped_release release;  // joins workers that may need the GIL
  batcher_->Shutdown(drain);
}

py::dict PyModel::Stats() const {
  const BatcherStats s = batcher_->Stats();
  py::dict d;
  d["success"] = s.success;
  d["failed"] = s.failed;
  d["expired"] = s.expired;
  d["rejected"] = s.rejected;
  d["cancelled"] = s.cancelled;
  d["cache_hits"] = s.cache_hits;
  d["last_inference_ms"] = s.last_inference_ms;
  d["batches"] = s.batches;
  d["rows"] = s.rows;
  d["queue_rows"] = s.queue_rows;
  d["in_flight_batches"] = s.in_flight_batches;
  d["queue_ns_total"] = s.queue_ns_total;
  d["execution_ns_total"] = s.execution_ns_total;
  d["end_to_end_ns_total"] = s.end_to_end_ns_total;
  d["service_rate_rows_per_s"] = s.service_rate_rows_per_s;
  d["isolated_batches"] = s.isolated_batches;
  d["isolation_executions"] = s.isolation_executions;
  return d;
}

HistogramSnapshot PyModel::Histogram(const std::string& which) const {
  if (which == "queue") return batcher_->queue_histogram().Snapshot();
  if (which == "execution") return batcher_->execution_histogram().Snapshot();
  if (which == "end_to_end") return batcher_->end_to_end_histogram().Snapshot();
  if (which == "batch_size") return batcher_->batch_size_histogram().Snapshot();
  ThrowStatus(Status::InvalidArgument("unknown histogram '" + which +
                                      "'; expected queue, execution, end_to_end or batch_size"));
}

py::list PyModel::InputSpecs() const {
  py::list l;
  for (const auto& s : batcher_->input_specs()) l.append(SpecToPy(s));
  return l;
}

py::list PyModel::OutputSpecs() const {
  py::list l;
  for (const auto& s : batcher_->output_specs()) l.append(SpecToPy(s));
  return l;
}

void BindModel(py::module_& m) {
  py::class_<PyModel>(m, "Model")
      .def(py::init<const std::string&, py::object, const py::list&, const py::list&,
                    const BatchConfig&, py::object, py::object>(),
           py::arg("name"), py::arg("fn"), py::arg("inputs"), py::arg("outputs"),
           py::arg("batching"), py::arg("cache") = py::none(), py::arg("clock") = py::none())
      .def("submit", &PyModel::Submit, py::arg("inputs"), py::arg("timeout_ns"),
           py::arg("priority"), py::arg("queue"))
      .def("submit_sync", &PyModel::SubmitSync, py::arg("inputs"), py::arg("timeout_ns"),
           py::arg("priority"))
      .def("cancel", &PyModel::Cancel, py::arg("request_id"))
      .def("run_ready", &PyModel::RunReady,
           "Runs every batch that may close now on this thread; returns how many ran.")
      .def("shutdown", &PyModel::Shutdown, py::arg("drain"))
      .def("stats", &PyModel::Stats)
      .def("histogram", &PyModel::Histogram, py::arg("which"))
      .def("input_specs", &PyModel::InputSpecs)
      .def("output_specs", &PyModel::OutputSpecs);
}

}  // namespace aiarch::binding

// For the native HTTP path (bind_http.cpp), which submits to models directly.
aiarch::Batcher* BatcherOfModel(pybind11::handle model) {
  return model.cast<aiarch::binding::PyModel&>().batcher();
}
