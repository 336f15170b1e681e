// aiarch._core.CompletionQueue and LoopQueue: where a model's requests
// complete, and how an event loop turns completions into resolved futures
// (one wake-up and one pass per batch, not per request); and `running_loop`,
// the loop lookup of the submit path.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "aiarch/batcher.h"
#include "aiarch/completion.h"
#include "py_errors.h"
#include "py_model.h"
#include "py_results.h"

namespace aiarch::binding {

namespace {

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

}  // namespace

// Registers CompletionQueue, LoopQueue and running_loop.
void BindQueues(py::module_& m) {
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
}

}  // namespace aiarch::binding
