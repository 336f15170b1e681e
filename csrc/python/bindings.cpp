// aiarch._core: the module. Each bind file registers one part: the model
// handle (bind_model.cpp), its completion queues (bind_queues.cpp), the native
// HTTP path, feature table, drift, load generator and ONNX session; this one
// the module itself and the small types (clock, histograms, response cache,
// batching config). The binding converts types, maps Status codes onto the
// aiarch.errors hierarchy (py_errors.h), scopes GIL releases and exchanges
// buffers (py_arrays.h, py_results.h). Batching, caching and histogram logic
// live in csrc/src.
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
#include "py_arrays.h"
#include "py_errors.h"
#include "py_model.h"
#include "py_results.h"

#ifndef AIARCH_VERSION
#define AIARCH_VERSION "0.0.0"
#endif

namespace py = pybind11;
using namespace aiarch;
using aiarch::binding::Check;
using aiarch::binding::ThrowStatus;

namespace aiarch::binding {
void BindQueues(py::module_& m);  // bind_queues.cpp
}  // namespace aiarch::binding
using aiarch::binding::BindModel;
using aiarch::binding::BindQueues;

void BindFeatures(py::module_& m);  // bind_features.cpp
void BindDrift(py::module_& m);     // bind_drift.cpp
void BindLoadgen(py::module_& m);   // bind_loadgen.cpp
void BindHttp(py::module_& m);      // bind_http.cpp
void BindOnnx(py::module_& m);      // bind_onnx.cpp

namespace {

Hash128 HashBytes(const py::bytes& b) {
  std::string_view v = b;
  Hasher h;
  h.Update(v.data(), v.size());
  return h.Digest();
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "aiarch native core (private: use the aiarch package)";
  m.attr("__version__") = AIARCH_VERSION;

  binding::LoadErrorTable();
  binding::InitDTypes();

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

  BindQueues(m);
  BindModel(m);

  BindFeatures(m);
  BindDrift(m);
  BindOnnx(m);
  BindLoadgen(m);
  BindHttp(m);
}
