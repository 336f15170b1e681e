// aiarch._core.LoadGenerator: converts arguments, maps Status codes onto
// aiarch.errors (py_errors.h) and releases the GIL while the native workers run. The send /
// receive loop lives in csrc/src/loadgen.cc.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <string>
#include <vector>

#include "aiarch/histogram.h"
#include "aiarch/loadgen.h"
#include "aiarch/status.h"
#include "py_errors.h"

namespace py = pybind11;

namespace {

using aiarch::binding::Check;
using aiarch::binding::ThrowInvalidArgument;

aiarch::LoadMode ParseMode(const std::string& mode) {
  if (mode == "constant") return aiarch::LoadMode::kConstant;
  if (mode == "poisson") return aiarch::LoadMode::kPoisson;
  if (mode == "closed") return aiarch::LoadMode::kClosed;
  ThrowInvalidArgument("unknown load mode '" + mode + "'; expected constant, poisson or closed");
}

int64_t SecondsToNs(double s) { return static_cast<int64_t>(s * 1e9); }

class PyLoadGenerator {
 public:
  explicit PyLoadGenerator(aiarch::LoadgenConfig config) {
    Check(aiarch::LoadGenerator::Create(std::move(config), &gen_));
  }

  void Start() {
    aiarch::Status s;
    {
      py::gil_scoped_release release;  // blocks in connect()
      s = gen_->Start();
    }
    Check(s);
  }

  bool Wait(double timeout_s) {
    py::gil_scoped_release release;  // blocks until the workers finish
    return gen_->Wait(timeout_s < 0 ? -1 : SecondsToNs(timeout_s));
  }

  // Start + wait; Ctrl-C stops the run and re-raises once the workers exit.
  void Run() {
    Start();
    while (!Wait(0.05)) {
      if (PyErr_CheckSignals() != 0) {
        gen_->Stop();
        Wait(-1);
        throw py::error_already_set();
      }
    }
  }

  void Stop() { gen_->Stop(); }

  py::dict Progress() const {
    const aiarch::LoadgenProgress p = gen_->Progress();
    py::dict d;
    d["sent"] = p.sent;
    d["completed"] = p.completed;
    d["errors"] = p.errors;
    d["measuring"] = p.measuring;
    d["done"] = p.done;
    d["elapsed_s"] = p.elapsed_s;
    return d;
  }

  py::dict Result() const {
    aiarch::LoadgenResult r;
    Check(gen_->Result(&r));
    py::dict d;
    d["latency"] = r.latency;
    d["service"] = r.service;
    d["send_lag"] = r.send_lag;
    d["scheduled"] = r.scheduled;
    d["sent"] = r.sent;
    d["completed"] = r.completed;
    d["succeeded"] = r.succeeded;
    d["io_errors"] = r.io_errors;
    d["timeouts"] = r.timeouts;
    d["unsent"] = r.unsent;
    d["waited_for_connection"] = r.waited_for_connection;
    d["succeeded_in_window"] = r.succeeded_in_window;
    py::dict statuses;
    for (const auto& [code, count] : r.status_counts) statuses[py::int_(code)] = count;
    d["status_counts"] = statuses;
    d["window_s"] = r.window_ns / 1e9;
    d["stopped"] = r.stopped;
    d["first_error"] = r.first_error;
    return d;
  }

 private:
  std::unique_ptr<aiarch::LoadGenerator> gen_;
};

}  // namespace

void BindLoadgen(py::module_& m) {
  py::class_<PyLoadGenerator>(m, "LoadGenerator",
                              "Native HTTP/1.1 open/closed-loop load generator (epoll).")
      .def(py::init([](const std::string& host, int port, const std::vector<py::bytes>& requests,
                       const std::string& mode, double rate_per_s, int threads, int connections,
                       int pipeline, double warmup_s, double duration_s, uint64_t max_requests,
                       double drain_timeout_s, double connect_timeout_s, uint64_t seed) {
             aiarch::LoadgenConfig c;
             c.host = host;
             c.port = port;
             for (const auto& r : requests) c.requests.emplace_back(std::string(r));
             c.mode = ParseMode(mode);
             c.rate_per_s = rate_per_s;
             c.threads = threads;
             c.connections = connections;
             c.pipeline = pipeline;
             c.warmup_ns = SecondsToNs(warmup_s);
             c.duration_ns = SecondsToNs(duration_s);
             c.max_requests = max_requests;
             c.drain_timeout_ns = SecondsToNs(drain_timeout_s);
             c.connect_timeout_ns = SecondsToNs(connect_timeout_s);
             c.seed = seed;
             return std::make_unique<PyLoadGenerator>(std::move(c));
           }),
           py::arg("host"), py::arg("port"), py::arg("requests"), py::arg("mode") = "constant",
           py::arg("rate_per_s") = 0.0, py::arg("threads") = 1, py::arg("connections") = 16,
           py::arg("pipeline") = 1, py::arg("warmup_s") = 0.0, py::arg("duration_s") = 0.0,
           py::arg("max_requests") = 0, py::arg("drain_timeout_s") = 10.0,
           py::arg("connect_timeout_s") = 2.0, py::arg("seed") = 1)
      .def("start", &PyLoadGenerator::Start,
           "Opens every connection and starts the workers; returns at once.")
      .def("wait", &PyLoadGenerator::Wait, py::arg("timeout_s") = -1.0,
           "Blocks (GIL released) until the run ends or timeout_s passes; True when it ended.")
      .def("run", &PyLoadGenerator::Run, "start() + wait(); Ctrl-C stops the run.")
      .def("stop", &PyLoadGenerator::Stop, "Asks the workers to finish now.")
      .def("progress", &PyLoadGenerator::Progress)
      .def("result", &PyLoadGenerator::Result,
           "The measured results (after the run): histograms in ns, counts, status counts.");
}
