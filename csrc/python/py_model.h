// aiarch._core.Model: one model's batcher as Python submits to it (an event
// loop's completion queue, or a blocking call that releases the GIL) and reads
// its state. Declared here for the completion queues (bind_queues.cpp), which
// submit and flush through it.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <memory>
#include <string>

#include "aiarch/batcher.h"
#include "aiarch/completion.h"
#include "aiarch/histogram.h"

namespace aiarch::binding {

namespace py = pybind11;

class PyModel {
 public:
  PyModel(const std::string& name, py::object fn, const py::list& inputs, const py::list& outputs,
          const BatchConfig& config, py::object cache_config, py::object clock);
  ~PyModel();
  // Returns the request id (int), or the outputs on a cache hit.
  py::object Submit(const py::handle& inputs, int64_t timeout_ns, uint32_t priority,
                    const std::shared_ptr<CompletionQueue>& queue);
  // Submits one request whose completion `queue` receives and whose batch the
  // caller flushes. Returns its id, or 0 when the cache answered into `hit`.
  uint64_t SubmitToQueue(const py::handle& inputs, int64_t timeout_ns, uint32_t priority,
                         const std::shared_ptr<CompletionQueue>& queue, CachedResponse* hit);
  py::object SubmitSync(const py::handle& inputs, int64_t timeout_ns, uint32_t priority);
  bool Cancel(uint64_t id) { return batcher_->Cancel(id); }
  int RunReady() { return batcher_->RunReady(); }
  Batcher* batcher() const { return batcher_.get(); }
  // Whether a submit's batch may run on the submitting loop's flush.
  bool inline_execution() const { return batcher_->config().inline_execution; }
  void Shutdown(bool drain);
  py::dict Stats() const;
  HistogramSnapshot Histogram(const std::string& which) const;
  py::list InputSpecs() const;
  py::list OutputSpecs() const;

 private:
  std::unique_ptr<Batcher> batcher_;
};

// Registers aiarch._core.Model.
void BindModel(py::module_& m);

}  // namespace aiarch::binding
