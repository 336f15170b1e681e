// aiarch._core: converts types, maps Status codes onto the aiarch.errors
// hierarchy (py_errors.h), scopes GIL releases and exchanges buffers
// (py_arrays.h). Batching, caching and histogram logic live in csrc/src.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <chrono>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "aiarch/batcher.h"
#include "aiarch/cache.h"
#include "aiarch/clock.h"
#include "aiarch/completion.h"
#include "aiarch/hash.h"
#include "aiarch/histogram.h"
#include "aiarch/status.h"
#include "aiarch/tensor.h"
#include "bind_onnx.h"
#include "py_arrays.h"
#include "py_errors.h"

#ifndef AIARCH_VERSION
#define AIARCH_VERSION "0.0.0"
#endif

namespace py = pybind11;
using namespace aiarch;
using aiarch::binding::Check;
using aiarch::binding::MakeError;
using aiarch::binding::ThrowStatus;

void BindFeatures(py::module_& m);  // bind_features.cpp
void BindDrift(py::module_& m);     // bind_drift.cpp
void BindLoadgen(py::module_& m);   // bind_loadgen.cpp
void BindHttp(py::module_& m);      // bind_http.cpp
void BindOnnx(py::module_& m);      // bind_onnx.cpp

namespace {

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

std::array<py::object, 13>& DTypeObjects() {
  static std::array<py::object, 13> objects;
  return objects;
}

void InitDTypes() {
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
py::array ViewOf(const TensorSpec& spec, int64_t rows, const uint8_t* data, py::handle base) {
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
py::capsule OwnerCapsule(std::shared_ptr<T> owner) {
  return py::capsule(new std::shared_ptr<T>(std::move(owner)),
                     [](void* p) { delete static_cast<std::shared_ptr<T>*>(p); });
}

// One array when the model has one output, else a tuple in output order.
py::object PackOutputs(std::vector<py::array>&& arrays) {
  if (arrays.size() == 1) return std::move(arrays[0]);
  py::tuple t(arrays.size());
  for (size_t i = 0; i < arrays.size(); ++i) t[i] = std::move(arrays[i]);
  return std::move(t);
}

py::object OutputsOfCompletion(const Completion& c, py::handle base) {
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

py::object OutputsOfHit(CachedResponse& hit) {
  py::capsule base = OwnerCapsule(hit.data);
  std::vector<py::array> arrays;
  for (size_t i = 0; i < hit.specs->size(); ++i) {
    arrays.push_back(ViewOf((*hit.specs)[i], hit.rows, hit.data->data() + hit.offsets[i], base));
  }
  return PackOutputs(std::move(arrays));
}

py::object ErrorOfCompletion(const Completion& c) {
  py::object exc = MakeError(c.status);
  if (auto* d = dynamic_cast<PyErrorDetail*>(c.error_detail.get())) {
    exc.attr("__cause__") = d->exception();
  }
  return exc;
}

// ---------------------------------------------------------------- specs

using binding::SpecFromPy;

py::tuple SpecToPy(const TensorSpec& spec) {
  py::tuple shape(spec.shape.size());
  for (size_t i = 0; i < spec.shape.size(); ++i) shape[i] = spec.shape[i];
  return py::make_tuple(spec.name, DTypeName(spec.dtype), shape);
}

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

class PyModel {
 public:
  PyModel(const std::string& name, py::object fn, const py::list& inputs, const py::list& outputs,
          const BatchConfig& config, py::object cache_config, py::object clock) {
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

  ~PyModel() {
    if (batcher_) {
      // Workers may need the GIL to finish a batch.
      py::gil_scoped_release release;
      batcher_->Shutdown(/*drain=*/false);
    }
  }

  // Returns the request id (int), or the outputs on a cache hit.
  py::object Submit(const py::handle& inputs, int64_t timeout_ns, uint32_t priority,
                    const std::shared_ptr<CompletionQueue>& queue) {
    CachedResponse hit;
    const uint64_t id = SubmitToQueue(inputs, timeout_ns, priority, queue, &hit);
    if (id == 0) return OutputsOfHit(hit);
    return py::int_(id);
  }

  // Submits one request whose completion `queue` receives and whose batch the
  // caller flushes. Returns its id, or 0 when the cache answered into `hit`.
  uint64_t SubmitToQueue(const py::handle& inputs, int64_t timeout_ns, uint32_t priority,
                         const std::shared_ptr<CompletionQueue>& queue, CachedResponse* hit) {
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

  py::object SubmitSync(const py::handle& inputs, int64_t timeout_ns, uint32_t priority) {
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

  bool Cancel(uint64_t id) { return batcher_->Cancel(id); }
  int RunReady() { return batcher_->RunReady(); }
  Batcher* batcher() const { return batcher_.get(); }
  // Whether a submit's batch may run on the submitting loop's flush.
  bool inline_execution() const { return batcher_->config().inline_execution; }

  void Shutdown(bool drain) {
    py::gil_scoped_release release;  // joins workers that may need the GIL
    batcher_->Shutdown(drain);
  }

  py::dict Stats() const {
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

  HistogramSnapshot Histogram(const std::string& which) const {
    if (which == "queue") return batcher_->queue_histogram().Snapshot();
    if (which == "execution") return batcher_->execution_histogram().Snapshot();
    if (which == "end_to_end") return batcher_->end_to_end_histogram().Snapshot();
    if (which == "batch_size") return batcher_->batch_size_histogram().Snapshot();
    ThrowStatus(Status::InvalidArgument("unknown histogram '" + which +
                                        "'; expected queue, execution, end_to_end or batch_size"));
  }

  py::list InputSpecs() const {
    py::list l;
    for (const auto& s : batcher_->input_specs()) l.append(SpecToPy(s));
    return l;
  }
  py::list OutputSpecs() const {
    py::list l;
    for (const auto& s : batcher_->output_specs()) l.append(SpecToPy(s));
    return l;
  }

 private:
  std::unique_ptr<Batcher> batcher_;
};

py::list DrainQueue(CompletionQueue& queue) {
  std::vector<Completion> items = queue.Drain();
  py::list out(items.size());
  // Completions of one batch share a result: one owner capsule per batch.
  const BatchResult* last = nullptr;
  py::object base;
  for (size_t i = 0; i < items.size(); ++i) {
    Completion& c = items[i];
    if (c.status.ok()) {
      if (c.result.get() != last) {
        last = c.result.get();
        base = OwnerCapsule(c.result);
      }
      out[i] = py::make_tuple(c.request_id, true, OutputsOfCompletion(c, base));
    } else {
      out[i] = py::make_tuple(c.request_id, false, ErrorOfCompletion(c));
    }
  }
  return out;
}

// A traced request's pending tuple carries a list as its third item: its
// timing is appended there, (enqueue_ns, exec_start_ns, exec_end_ns,
// batch_rows) in the batcher's clock, before its future is resolved.
void RecordTiming(PyObject* timing, const Completion& c) {
  if (!PyList_Check(timing)) return;
  for (int64_t v : {c.enqueue_ns, c.exec_start_ns, c.exec_end_ns, c.batch_rows}) {
    py::object item = py::reinterpret_steal<py::object>(PyLong_FromLongLong(v));
    if (!item || PyList_Append(timing, item.ptr()) != 0) throw py::error_already_set();
  }
}

// Resolves the futures of drained completions in one pass. `pending` maps a
// request id to the request's asyncio future, or to a tuple whose first item
// is that future (the rest keeps inputs alive, or collects timing); each
// completed id is removed, and a future already done (its caller cancelled)
// is left alone. A future that refuses its result does not stop the others:
// the first such error is raised once every completion is handled.
int ResolvePending(std::vector<Completion>&& items, const py::dict& pending) {
  // Method calls by vectorcall: no bound-method object per call.
  static PyObject* const kDone = PyUnicode_InternFromString("done");
  static PyObject* const kSetResult = PyUnicode_InternFromString("set_result");
  static PyObject* const kSetException = PyUnicode_InternFromString("set_exception");
  const BatchResult* last = nullptr;
  py::object base;
  py::object first_error;
  int resolved = 0;
  for (Completion& c : items) {
    py::object id = py::reinterpret_steal<py::object>(PyLong_FromUnsignedLongLong(c.request_id));
    if (!id) throw py::error_already_set();
    PyObject* entry = PyDict_GetItemWithError(pending.ptr(), id.ptr());  // borrowed
    if (entry == nullptr) {
      if (PyErr_Occurred()) throw py::error_already_set();
      continue;
    }
    // Owned before the dict drops its reference.
    py::object fut;
    if (PyTuple_Check(entry)) {
      fut = py::reinterpret_borrow<py::object>(PyTuple_GET_ITEM(entry, 0));
      if (PyTuple_GET_SIZE(entry) > 2) RecordTiming(PyTuple_GET_ITEM(entry, 2), c);
    } else {
      fut = py::reinterpret_borrow<py::object>(entry);
    }
    if (PyDict_DelItem(pending.ptr(), id.ptr()) != 0) throw py::error_already_set();
    try {
      py::object value;
      PyObject* method = kSetException;
      if (c.status.ok()) {
        if (c.result.get() != last) {
          last = c.result.get();
          base = OwnerCapsule(c.result);
        }
        value = OutputsOfCompletion(c, base);
        method = kSetResult;
      } else {
        value = ErrorOfCompletion(c);
      }
      py::object r = py::reinterpret_steal<py::object>(
          PyObject_CallMethodOneArg(fut.ptr(), method, value.ptr()));
      if (!r) {
        // Asked only now, on the rare path, not before every result: a future
        // already done was cancelled by its caller and is left alone.
        py::error_already_set refused;
        py::object done =
            py::reinterpret_steal<py::object>(PyObject_CallMethodNoArgs(fut.ptr(), kDone));
        if (!done) throw py::error_already_set();
        if (done.ptr() == Py_True) continue;
        throw refused;
      }
      ++resolved;
    } catch (py::error_already_set& e) {
      if (!first_error) first_error = e.value();
    }
  }
  if (first_error) binding::Raise(first_error);
  return resolved;
}

// Runs the ready batches of `models` on this thread, then resolves what is
// complete — those batches' requests included, with no wake-up in between.
int FlushQueue(CompletionQueue& queue, const py::iterable& models, const py::dict& pending) {
  std::vector<Completion> items;
  {
    CompletionQueue::InlineDrain scope(queue);
    for (py::handle model : models) model.cast<PyModel&>().RunReady();
    items = queue.Drain();
  }
  return ResolvePending(std::move(items), pending);
}

// One event loop's side of a completion queue: the loop submits through it,
// and resolves through it what the queue delivers. `pending` maps a request id
// to its future, or to (future, inputs[, timing]) (Python files those forms);
// each completed id leaves it. A submit to a model that runs batches inline
// marks the model for this loop iteration's flush, scheduled once per
// iteration with loop.call_soon, so that the iteration's requests share a
// batch. Used only on its loop's thread, with the GIL held. Not thread-safe.
class LoopQueue {
 public:
  // `plain_futures`: the loop's create_future() is the stock one, which returns
  // asyncio.Future(loop=loop); the queue then makes that future itself.
  static std::shared_ptr<LoopQueue> Create(const py::object& loop, bool plain_futures) {
    std::shared_ptr<LoopQueue> q(new LoopQueue());
    Check(CompletionQueue::Create(&q->queue_));
    if (plain_futures) {
      // One keyword dict for every future: Future.__init__ only reads it.
      q->future_type_ = py::module_::import("asyncio").attr("Future");
      q->future_kwargs_ = py::dict(py::arg("loop") = loop);
    } else {
      q->create_future_ = loop.attr("create_future");
    }
    q->call_soon_ = loop.attr("call_soon");
    // The loop may run a scheduled flush after the queue is gone: a weak reference.
    q->flush_callback_ = py::cpp_function([weak = std::weak_ptr<LoopQueue>(q)] {
      if (auto self = weak.lock()) self->Flush();
    });
    return q;
  }

  int fd() const { return queue_->fd(); }
  const py::dict& pending() const { return pending_; }

  // Submits one request and files its future in `pending`. Returns (request
  // id, future), or (None, outputs) when the cache answered. Called once per
  // request.
  py::tuple Submit(const py::object& model_obj, const py::handle& inputs, int64_t timeout_ns,
                   uint32_t priority) {
    if (!call_soon_) ThrowStatus(Status::Unavailable("this event loop's queue was collected"));
    PyModel& model = model_obj.cast<PyModel&>();
    CachedResponse hit;
    const uint64_t id = model.SubmitToQueue(inputs, timeout_ns, priority, queue_, &hit);
    if (id == 0) return PairOf(py::none(), OutputsOfHit(hit));
    py::object key = py::reinterpret_steal<py::object>(PyLong_FromUnsignedLongLong(id));
    if (!key) Withdraw(model, id, py::error_already_set());
    py::object fut = NewFuture();
    if (!fut || PyDict_SetItem(pending_.ptr(), key.ptr(), fut.ptr()) != 0) {
      Withdraw(model, id, py::error_already_set());
    }
    if (model.inline_execution()) {
      try {
        ScheduleFlush(model_obj);
      } catch (py::error_already_set& e) {
        PyDict_DelItem(pending_.ptr(), key.ptr());  // cannot fail: the key was just filed
        Withdraw(model, id, std::move(e));
      }
    }
    return PairOf(std::move(key), std::move(fut));
  }

  // Runs the marked models' ready batches on this thread, then resolves what
  // is complete. Once per loop iteration that submitted.
  int Flush() {
    flush_scheduled_ = false;
    std::vector<py::object> dirty;
    dirty.swap(dirty_);
    std::vector<Completion> items;
    {
      CompletionQueue::InlineDrain scope(*queue_);
      for (const py::object& model : dirty) model.cast<PyModel&>().RunReady();
      items = queue_->Drain();
    }
    return ResolvePending(std::move(items), pending_);
  }

  // Resolves everything delivered so far. Once per wake-up of the loop.
  int Resolve() { return ResolvePending(queue_->Drain(), pending_); }

  // The garbage collector's view: the queue references its loop (through
  // call_soon and create_future) and the loop references the queue (its
  // reader callback), a cycle the collector must see to free an abandoned loop.
  int Traverse(visitproc visit, void* arg) const {
    for (PyObject* o : {pending_.ptr(), create_future_.ptr(), future_type_.ptr(),
                        future_kwargs_.ptr(), call_soon_.ptr(), flush_callback_.ptr()}) {
      Py_VISIT(o);
    }
    for (const py::object& m : dirty_) Py_VISIT(m.ptr());
    return 0;
  }
  void Clear() {
    // Moved out first: dropping a reference may run code that reads this queue.
    py::object pending = std::move(pending_), create_future = std::move(create_future_),
               future_type = std::move(future_type_), future_kwargs = std::move(future_kwargs_),
               call_soon = std::move(call_soon_), flush_callback = std::move(flush_callback_);
    std::vector<py::object> dirty;
    dirty.swap(dirty_);
    pending_ = py::dict();
  }

 private:
  LoopQueue() = default;

  // A submit that cannot hand its caller a future (out of memory, a loop that
  // refuses call_soon) raises `failed`, after cancelling its request: an
  // inline model's request is still queued then (only this thread's flush
  // runs it), so the batcher never reads inputs the caller stops keeping alive.
  [[noreturn]] static void Withdraw(PyModel& model, uint64_t id, py::error_already_set failed) {
    model.batcher()->Cancel(id);
    throw failed;
  }

  // Marks `model` for this iteration's flush, scheduling the flush once.
  void ScheduleFlush(const py::object& model) {
    bool listed = false;
    for (const py::object& m : dirty_) listed = listed || m.is(model);
    if (!listed) dirty_.push_back(model);
    if (!flush_scheduled_) {
      py::object handle = py::reinterpret_steal<py::object>(
          PyObject_CallOneArg(call_soon_.ptr(), flush_callback_.ptr()));
      if (!handle) throw py::error_already_set();
      flush_scheduled_ = true;
    }
  }

  // A future of the loop (null with a Python error set on failure).
  py::object NewFuture() const {
    PyObject* fut = create_future_
                        ? PyObject_CallNoArgs(create_future_.ptr())
                        : PyObject_Call(future_type_.ptr(), EmptyTuple(), future_kwargs_.ptr());
    return py::reinterpret_steal<py::object>(fut);
  }

  static PyObject* EmptyTuple() {
    static PyObject* const empty = PyTuple_New(0);
    return empty;
  }

  static py::tuple PairOf(py::object first, py::object second) {
    PyObject* t = PyTuple_New(2);
    if (t == nullptr) throw py::error_already_set();
    PyTuple_SET_ITEM(t, 0, first.release().ptr());
    PyTuple_SET_ITEM(t, 1, second.release().ptr());
    return py::reinterpret_steal<py::tuple>(t);
  }

  std::shared_ptr<CompletionQueue> queue_;
  py::dict pending_;
  py::object create_future_;  // the loop's own create_future, or:
  py::object future_type_;    // asyncio.Future, called with
  py::dict future_kwargs_;    // {"loop": loop}
  py::object call_soon_;
  py::object flush_callback_;
  std::vector<py::object> dirty_;  // models submitted to since the last flush
  bool flush_scheduled_ = false;
};

// LoopQueue.submit(model, inputs, timeout_ns, priority) as a plain vectorcall
// method: the per-request call skips pybind11's overload dispatch and
// argument casters.
PyObject* LoopQueueSubmit(PyObject* self, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 4) {
    PyErr_Format(PyExc_TypeError,
                 "submit() takes 4 positional arguments (model, inputs, timeout_ns, priority), "
                 "%zd given",
                 nargs);
    return nullptr;
  }
  const long long timeout_ns = PyLong_AsLongLong(args[2]);
  if (timeout_ns == -1 && PyErr_Occurred()) return nullptr;
  const unsigned long priority = PyLong_AsUnsignedLong(args[3]);
  if (priority == static_cast<unsigned long>(-1) && PyErr_Occurred()) return nullptr;
  if (priority > UINT32_MAX) {
    PyErr_Format(PyExc_OverflowError, "priority %lu is out of range", priority);
    return nullptr;
  }
  try {
    LoopQueue& queue = py::handle(self).cast<LoopQueue&>();
    return queue
        .Submit(py::reinterpret_borrow<py::object>(args[0]), args[1], timeout_ns,
                static_cast<uint32_t>(priority))
        .release()
        .ptr();
  } catch (py::error_already_set& e) {
    e.restore();
  } catch (py::cast_error&) {
    PyErr_Format(PyExc_TypeError, "submit() needs an aiarch._core.Model as its model, got %s",
                 Py_TYPE(args[0])->tp_name);
  } catch (py::builtin_exception& e) {
    e.set_error();
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what());
  }
  return nullptr;
}

PyMethodDef kLoopQueueSubmitDef = {
    "submit", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(LoopQueueSubmit)),
    METH_FASTCALL,
    "submit(model, inputs, timeout_ns, priority)\n\nSubmits one request and files its future: "
    "(request id, future), or (None, outputs) when the cache answered. An inline model's batch "
    "runs at this loop iteration's flush."};

// asyncio.get_running_loop(), without the getpid() system call it makes on
// every call before Python 3.12 (there it guards against a forked child
// seeing its parent's loop). asyncio files a new holder object in the thread
// state dict each time a loop starts or stops running on a thread: while that
// holder is the one seen at the last call, the loop found then still runs
// here. The pair (holder, loop) is kept in the same dict, so it dies with its
// thread; it also keeps the thread's last loop referenced until another loop
// runs there. A forked child starts no loop of its parent's, and a Runtime
// refuses calls in a child. Once per request.
PyObject* RunningLoop(PyObject* /*module*/, PyObject* /*unused*/) {
  static PyObject* const get_running_loop = [] {
    PyObject* asyncio = PyImport_ImportModule("asyncio");
    PyObject* f = asyncio ? PyObject_GetAttrString(asyncio, "get_running_loop") : nullptr;
    Py_XDECREF(asyncio);
    return f;
  }();
  if (get_running_loop == nullptr) {
    if (!PyErr_Occurred())
      PyErr_SetString(PyExc_ImportError, "asyncio.get_running_loop is missing");
    return nullptr;
  }
#if PY_VERSION_HEX < 0x030C0000
  static PyObject* const holder_key = PyUnicode_InternFromString("__asyncio_running_event_loop__");
  static PyObject* const cache_key = PyUnicode_InternFromString("aiarch.running_loop");
  PyObject* state = PyThreadState_GetDict();  // borrowed
  if (state == nullptr) return PyObject_CallNoArgs(get_running_loop);
  PyObject* holder = PyDict_GetItemWithError(state, holder_key);  // borrowed
  if (holder == nullptr && PyErr_Occurred()) return nullptr;
  PyObject* cached = PyDict_GetItemWithError(state, cache_key);  // borrowed
  if (cached == nullptr && PyErr_Occurred()) return nullptr;
  if (holder != nullptr && cached != nullptr && PyTuple_GET_ITEM(cached, 0) == holder) {
    PyObject* loop = PyTuple_GET_ITEM(cached, 1);
    Py_INCREF(loop);
    return loop;
  }
  PyObject* loop = PyObject_CallNoArgs(get_running_loop);
  if (loop == nullptr) return nullptr;
  holder = PyDict_GetItemWithError(state, holder_key);  // set while a loop runs
  if (holder != nullptr) {
    PyObject* pair = PyTuple_Pack(2, holder, loop);
    if (pair == nullptr || PyDict_SetItem(state, cache_key, pair) != 0) {
      Py_XDECREF(pair);
      Py_DECREF(loop);
      return nullptr;
    }
    Py_DECREF(pair);
  } else if (PyErr_Occurred()) {
    Py_DECREF(loop);
    return nullptr;
  }
  return loop;
#else
  return PyObject_CallNoArgs(get_running_loop);
#endif
}

PyMethodDef kRunningLoopDef = {
    "running_loop", RunningLoop, METH_NOARGS,
    "asyncio.get_running_loop(), made cheap: no system call per call on Python < 3.12."};

Hash128 HashBytes(const py::bytes& b) {
  std::string_view v = b;
  Hasher h;
  h.Update(v.data(), v.size());
  return h.Digest();
}

}  // namespace

// For the native HTTP path (bind_http.cpp), which submits to models directly.
Batcher* BatcherOfModel(py::handle model) { return model.cast<PyModel&>().batcher(); }

PYBIND11_MODULE(_core, m) {
  m.doc() = "aiarch native core (private: use the aiarch package)";
  m.attr("__version__") = AIARCH_VERSION;

  binding::LoadErrorTable();
  InitDTypes();

  py::dict codes;
  for (int c = 0; c < kStatusCodeCount; ++c) {
    codes[StatusCodeName(static_cast<StatusCode>(c))] = c;
  }
  m.attr("STATUS_CODES") = codes;
  m.def(
      "_raise_status",
      [](int code, const std::string& message, double retry_after_s) {
        Status s(static_cast<StatusCode>(code), message);
        s.WithRetryAfter(retry_after_s);
        Check(s);
      },
      py::arg("code"), py::arg("message"), py::arg("retry_after_s") = 0.0,
      "Raises the Python error mapped from a core status code (for tests).");

  // ---- clock
  py::class_<ManualClock, std::shared_ptr<ManualClock>>(m, "ManualClock",
                                                        "A clock that moves only on advance().")
      .def(py::init<int64_t>(), py::arg("start_ns") = 0)
      .def_property_readonly("now_ns", &ManualClock::NowNs)
      .def(
          "advance",
          [](ManualClock& c, int64_t ns) {
            if (ns < 0) ThrowStatus(Status::InvalidArgument("advance() needs ns >= 0"));
            py::gil_scoped_release release;  // subscribers may run Python executors
            c.Advance(ns);
          },
          py::arg("ns"),
          "Moves time forward and returns once every batcher on this clock has acted on it.");

  // ---- histograms
  py::class_<HistogramSnapshot>(m, "HistogramSnapshot")
      .def(
          py::init([](int64_t highest, int digits, const py::handle& counts_obj, uint64_t clamped) {
            py::array_t<uint64_t> counts = py::array_t<uint64_t>::ensure(
                binding::NativeArray(counts_obj, "counts", binding::kIntegerKinds));
            std::vector<uint64_t> v(counts.data(), counts.data() + counts.size());
            aiarch::Histogram layout(highest, digits);
            if (v.size() != layout.counts_length()) {
              ThrowStatus(Status::InvalidArgument("counts has " + std::to_string(v.size()) +
                                                  " entries; this layout needs " +
                                                  std::to_string(layout.counts_length())));
            }
            return HistogramSnapshot(highest, digits, std::move(v), clamped);
          }),
          py::arg("highest_trackable"), py::arg("significant_digits"), py::arg("counts"),
          py::arg("clamped") = 0)
      .def_property_readonly("total_count", &HistogramSnapshot::total_count)
      .def_property_readonly("clamped", &HistogramSnapshot::clamped)
      .def_property_readonly("min", &HistogramSnapshot::Min)
      .def_property_readonly("max", &HistogramSnapshot::Max)
      .def_property_readonly("mean", &HistogramSnapshot::Mean)
      .def_property_readonly("highest_trackable", &HistogramSnapshot::highest_trackable)
      .def_property_readonly("significant_digits", &HistogramSnapshot::significant_digits)
      .def("percentile", &HistogramSnapshot::ValueAtPercentile, py::arg("p"))
      .def(
          "merge",
          [](HistogramSnapshot& self, const HistogramSnapshot& other) {
            if (!self.Merge(other)) {
              ThrowStatus(Status::InvalidArgument(
                  "cannot merge histograms with different layouts (highest_trackable, "
                  "significant_digits)"));
            }
          },
          py::arg("other"))
      .def("counts",
           [](const HistogramSnapshot& s) {
             return py::array_t<uint64_t>(static_cast<py::ssize_t>(s.counts().size()),
                                          s.counts().data());
           })
      .def(
          "cumulative_counts",
          [](const HistogramSnapshot& s, const std::vector<int64_t>& bounds) {
            // Count of recorded values whose bucket lies wholly at or below
            // each bound (Prometheus "le" buckets).
            std::vector<uint64_t> out(bounds.size(), 0);
            const auto& counts = s.counts();
            for (size_t i = 0; i < counts.size(); ++i) {
              if (counts[i] == 0) continue;
              const int64_t v = s.MidpointOf(i);
              for (size_t b = 0; b < bounds.size(); ++b) {
                if (v <= bounds[b]) out[b] += counts[i];
              }
            }
            return out;
          },
          py::arg("bounds"));

  py::class_<aiarch::Histogram>(m, "Histogram", "Log-linear latency histogram (wait-free record).")
      .def(py::init<int64_t, int>(), py::arg("highest_trackable") = int64_t{1} << 36,
           py::arg("significant_digits") = 3)
      .def("record", &aiarch::Histogram::Record, py::arg("value"))
      .def("record_n", &aiarch::Histogram::RecordN, py::arg("value"), py::arg("count"))
      .def("record_corrected", &aiarch::Histogram::RecordCorrected, py::arg("value"),
           py::arg("expected_interval"))
      .def(
          "record_many",
          [](aiarch::Histogram& h, const py::handle& values) {
            // Integers only: a float latency would be truncated without a word.
            auto v = py::array_t<int64_t, py::array::c_style | py::array::forcecast>::ensure(
                binding::NativeArray(values, "values", binding::kIntegerKinds));
            const int64_t* p = v.data();
            const py::ssize_t n = v.size();
            py::gil_scoped_release release;  // touches only the native histogram
            for (py::ssize_t i = 0; i < n; ++i) h.Record(p[i]);
          },
          py::arg("values"))
      .def("snapshot", &aiarch::Histogram::Snapshot)
      .def("reset", &aiarch::Histogram::Reset)
      .def_property_readonly("counts_length", &aiarch::Histogram::counts_length);

  // ---- cache
  py::class_<ResponseCache, std::shared_ptr<ResponseCache>>(m, "ResponseCache")
      .def(py::init([](int64_t max_bytes, int64_t ttl_ns, int shards, int64_t buckets) {
             CacheConfig c;
             c.max_bytes = max_bytes;
             c.ttl_ns = ttl_ns;
             c.shards = shards;
             c.buckets = buckets;
             if (max_bytes <= 0) ThrowStatus(Status::InvalidArgument("max_bytes must be > 0"));
             if (ttl_ns < 0) ThrowStatus(Status::InvalidArgument("ttl must be >= 0"));
             if (shards < 1 || (shards & (shards - 1)) != 0) {
               ThrowStatus(Status::InvalidArgument("shards must be a power of two"));
             }
             if (buckets < shards || (buckets & (buckets - 1)) != 0) {
               ThrowStatus(Status::InvalidArgument("buckets must be a power of two >= shards"));
             }
             return std::make_shared<ResponseCache>(c);
           }),
           py::arg("max_bytes"), py::arg("ttl_ns") = 0, py::arg("shards") = 16,
           py::arg("buckets") = 1 << 16)
      .def(
          "lookup",
          [](ResponseCache& c, const py::bytes& key, int64_t now_ns) -> py::object {
            std::string_view k = key;
            py::object out = py::none();
            c.LookupWith(HashBytes(key), reinterpret_cast<const uint8_t*>(k.data()), k.size(),
                         now_ns, [&](const uint8_t* v, size_t n) {
                           out = py::bytes(reinterpret_cast<const char*>(v), n);
                         });
            return out;
          },
          py::arg("key"), py::arg("now_ns") = 0)
      .def(
          "insert",
          [](ResponseCache& c, const py::bytes& key, const py::bytes& value, int64_t now_ns) {
            std::string_view k = key, v = value;
            return c.Insert(HashBytes(key), reinterpret_cast<const uint8_t*>(k.data()), k.size(),
                            reinterpret_cast<const uint8_t*>(v.data()), v.size(), now_ns);
          },
          py::arg("key"), py::arg("value"), py::arg("now_ns") = 0)
      .def(
          "erase",
          [](ResponseCache& c, const py::bytes& key) {
            std::string_view k = key;
            return c.Erase(HashBytes(key), reinterpret_cast<const uint8_t*>(k.data()), k.size());
          },
          py::arg("key"))
      .def("invalidate", &ResponseCache::Invalidate)
      .def("clear", &ResponseCache::Clear)
      .def_property_readonly("generation", &ResponseCache::generation)
      .def("counters", [](const ResponseCache& c) {
        const CacheCounters k = c.Counters();
        py::dict d;
        d["hits"] = k.hits;
        d["misses"] = k.misses;
        d["inserts"] = k.inserts;
        d["evictions"] = k.evictions;
        d["expirations"] = k.expirations;
        d["rejected"] = k.rejected;
        d["bytes"] = k.bytes;
        d["entries"] = k.entries;
        return d;
      });

  // ---- batching
  py::class_<BatchConfig>(m, "BatchConfig")
      .def(py::init([](int64_t max_batch_size, int64_t max_delay_ns, std::vector<int64_t> preferred,
                       int64_t max_queue_rows, int instances, int priority_levels,
                       int default_priority_level, bool drop_unreachable, bool inline_execution,
                       int64_t inline_max_exec_ns) {
             BatchConfig c;
             c.max_batch_size = max_batch_size;
             c.max_delay_ns = max_delay_ns;
             c.preferred_batch_sizes = std::move(preferred);
             c.max_queue_rows = max_queue_rows;
             c.instances = instances;
             c.priority_levels = priority_levels;
             c.default_priority_level = default_priority_level;
             c.drop_unreachable = drop_unreachable;
             c.inline_execution = inline_execution;
             c.inline_max_exec_ns = inline_max_exec_ns;
             Check(c.Validate());
             return c;
           }),
           py::arg("max_batch_size"), py::arg("max_delay_ns"), py::arg("preferred_batch_sizes"),
           py::arg("max_queue_rows"), py::arg("instances"), py::arg("priority_levels"),
           py::arg("default_priority_level"), py::arg("drop_unreachable"),
           py::arg("inline_execution"), py::arg("inline_max_exec_ns") = 0);

  py::class_<CompletionQueue, std::shared_ptr<CompletionQueue>>(m, "CompletionQueue")
      .def(py::init([] {
        std::shared_ptr<CompletionQueue> q;
        Check(CompletionQueue::Create(&q));
        return q;
      }))
      .def_property_readonly("fd", &CompletionQueue::fd)
      .def("drain", &DrainQueue,
           "Takes every finished request: a list of (request_id, ok, outputs-or-exception).")
      .def(
          "resolve",
          [](CompletionQueue& q, const py::dict& pending) {
            return ResolvePending(q.Drain(), pending);
          },
          py::arg("pending"),
          "Takes every finished request and resolves its future in `pending` (request id -> "
          "future or (future, ...)); returns how many futures were resolved.")
      .def("flush", &FlushQueue, py::arg("models"), py::arg("pending"),
           "Runs the ready batches of `models` on this thread, then resolve()s.");

  py::class_<LoopQueue, std::shared_ptr<LoopQueue>> loop_queue(
      m, "LoopQueue", "One event loop's completion queue, with its requests in flight.",
      py::custom_type_setup([](PyHeapTypeObject* heap_type) {
        PyTypeObject* type = &heap_type->ht_type;
        type->tp_flags |= Py_TPFLAGS_HAVE_GC;
        type->tp_traverse = [](PyObject* self, visitproc visit, void* arg) {
          Py_VISIT(Py_TYPE(self));  // a heap type's instances reference it
          if (!py::detail::is_holder_constructed(self)) return 0;
          return py::cast<LoopQueue&>(py::handle(self)).Traverse(visit, arg);
        };
        type->tp_clear = [](PyObject* self) {
          if (py::detail::is_holder_constructed(self))
            py::cast<LoopQueue&>(py::handle(self)).Clear();
          return 0;
        };
      }));
  loop_queue.def(py::init(&LoopQueue::Create), py::arg("loop"), py::arg("plain_futures") = false)
      .def_property_readonly("fd", &LoopQueue::fd)
      .def_property_readonly("pending", &LoopQueue::pending,
                             "Request id -> future, or (future, inputs[, timing]).")
      .def("flush", &LoopQueue::Flush,
           "Runs the ready batches of the models submitted to, then resolve()s.")
      .def("resolve", &LoopQueue::Resolve,
           "Takes every finished request and resolves its future; returns how many.");
  loop_queue.attr("submit") = py::reinterpret_steal<py::object>(
      PyDescr_NewMethod(reinterpret_cast<PyTypeObject*>(loop_queue.ptr()), &kLoopQueueSubmitDef));
  m.add_object("running_loop", py::reinterpret_steal<py::object>(
                                   PyCFunction_NewEx(&kRunningLoopDef, nullptr, nullptr)));

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

  BindFeatures(m);
  BindDrift(m);
  BindOnnx(m);
  BindLoadgen(m);
  BindHttp(m);
}
