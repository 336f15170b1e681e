// aiarch._core.HttpFront / HttpConnection: the native request path of the
// server (see aiarch/http_connection.h). Every call runs on the event loop's
// thread with the GIL held; batches a call runs inline take it as they would
// anyway.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "aiarch/http_connection.h"

namespace py = pybind11;
using namespace aiarch;

aiarch::Batcher* BatcherOfModel(py::handle model);  // bind_model.cpp

namespace {

void CheckOk(const Status& status) {
  if (!status.ok()) throw std::runtime_error(status.ToString());
}

// (name, dtype, shape after the rows) per input, as Python registers them.
using InputSpecs = std::vector<std::tuple<std::string, std::string, std::vector<int64_t>>>;

V2Model MakeV2Model(const std::string& name, const std::string& version, const InputSpecs& inputs,
                    const std::vector<std::string>& output_names) {
  V2Model v2;
  v2.name = name;
  v2.version = version;
  for (const auto& [input, dtype, shape] : inputs) {
    TensorSpec spec;
    spec.name = input;
    CheckOk(DTypeFromName(dtype, &spec.dtype));
    spec.shape = shape;
    v2.inputs.push_back(std::move(spec));
  }
  v2.output_names = output_names;
  return v2;
}

// A registration keeps the model handle (and its batcher) alive; the last
// reference may drop wherever, so it takes the GIL.
std::shared_ptr<void> HoldModel(py::object model) {
  auto* held = new py::object(std::move(model));
  return std::shared_ptr<void>(held, [](void* p) {
    py::gil_scoped_acquire gil;
    delete static_cast<py::object*>(p);
  });
}

py::list Forwarded(std::vector<ForwardedRequest>& requests) {
  py::list out(requests.size());
  for (size_t i = 0; i < requests.size(); ++i) {
    ForwardedRequest& f = requests[i];
    py::dict headers;
    for (const auto& [name, value] : f.headers) {
      headers[py::bytes(name)] = py::bytes(value);
    }
    out[i] = py::make_tuple(f.slot, py::bytes(f.method), py::bytes(f.path), py::bytes(f.query),
                            headers, py::bytes(f.body), f.keep_alive, f.traced);
  }
  return out;
}

// HttpFront::ReadReady's events as (connection id, forwarded or None, ended) tuples.
py::list ReadReady(HttpFront& front, double now, size_t max_owed) {
  std::vector<HttpFront::ReadEvent> events;
  front.ReadReady(now, max_owed, &events);
  py::list out(events.size());
  for (size_t i = 0; i < events.size(); ++i) {
    HttpFront::ReadEvent& e = events[i];
    out[i] = py::make_tuple(
        e.connection,
        e.forwarded.empty() ? py::object(py::none()) : py::object(Forwarded(e.forwarded)), e.ended);
  }
  return out;
}

}  // namespace

void BindHttp(py::module_& m) {
  py::class_<HttpFront, std::shared_ptr<HttpFront>>(
      m, "HttpFront", "The native request path shared by the connections of one event loop.")
      .def(py::init([](size_t max_header_bytes, size_t max_headers, size_t max_body_bytes,
                       int64_t default_timeout_ns) {
             HttpFrontConfig config;
             config.limits.max_header_bytes = max_header_bytes;
             config.limits.max_headers = max_headers;
             config.limits.max_body_bytes = max_body_bytes;
             config.default_timeout_ns = default_timeout_ns;
             std::shared_ptr<HttpFront> front;
             CheckOk(HttpFront::Create(config, &front));
             return front;
           }),
           py::arg("max_header_bytes"), py::arg("max_headers"), py::arg("max_body_bytes"),
           py::arg("default_timeout_ns") = 0)
      .def_property_readonly("fd", &HttpFront::fd)
      .def_property_readonly("read_fd", &HttpFront::read_fd,
                             "Readable while a connection read natively has input (-1: no "
                             "native reads on this platform).")
      .def("read_ready", &ReadReady, py::arg("now"), py::arg("max_owed"),
           "Reads every natively read connection with input, once, received at `now`; returns "
           "(connection id, forwarded requests or None, ended) for those that need the caller "
           "(requests to dispatch, output to write, `max_owed` responses owed, the front "
           "draining, or the input ended: ended is -1 at EOF, an errno after a failed read, "
           "else 0). Submit what was decoded with `flush`.")
      .def(
          "read_and_flush",
          [](HttpFront& front, double now, size_t max_owed) {
            py::list events = ReadReady(front, now, max_owed);
            return py::make_tuple(events, py::cast(front.Flush()));
          },
          py::arg("now"), py::arg("max_owed"),
          "`read_ready` then `flush` in one call (a loop iteration's reads, submits and inline "
          "batches): returns (read events, ids of connections with output to write).")
      .def_property("draining", &HttpFront::draining, &HttpFront::set_draining)
      .def_property_readonly("in_flight", &HttpFront::in_flight)
      .def_property("trace_every", &HttpFront::trace_every, &HttpFront::set_trace_every,
                    "Trace every N-th request, and those with a sampled traceparent (0: off): "
                    "native ones are recorded for take_traces, the others forwarded traced.")
      .def_property("trace_native", &HttpFront::trace_native, &HttpFront::set_trace_native,
                    "Traced requests the native path answers stay native (default); off, "
                    "every traced request is forwarded.")
      .def(
          "register_model",
          [](HttpFront& front, const std::string& name, const std::string& version,
             py::object model, const InputSpecs& inputs,
             const std::vector<std::string>& output_names, bool record_predictions) {
            V2Model v2 = MakeV2Model(name, version, inputs, output_names);
            Batcher* batcher = BatcherOfModel(model);
            front.RegisterModel(std::move(v2), batcher, HoldModel(std::move(model)),
                                record_predictions);
          },
          py::arg("name"), py::arg("version"), py::arg("model"), py::arg("inputs"),
          py::arg("output_names"), py::arg("record_predictions") = false,
          "Serves v2 infer requests for `name` natively through the batcher of `model` "
          "(an aiarch._core.Model); inputs are (name, dtype, shape-after-rows). With "
          "`record_predictions`, answered requests that carry an id are kept for "
          "`take_predictions`.")
      .def(
          "take_predictions",
          [](HttpFront& front) {
            std::vector<RecordedPredictions> taken = front.TakePredictions();
            py::list out(taken.size());
            for (size_t i = 0; i < taken.size(); ++i) {
              RecordedPredictions& r = taken[i];
              py::bytes values(reinterpret_cast<const char*>(r.values.data()),
                               r.values.size() * sizeof(double));
              out[i] = py::make_tuple(r.model, r.version, py::cast(r.ids), values, r.width);
            }
            return out;
          },
          "The prediction records since the last call: (model, version, ids, float64 values "
          "as bytes, width) per model; ids[i] answered values[i*width:(i+1)*width].")
      .def_property_readonly("predictions_dropped", &HttpFront::predictions_dropped)
      .def(
          "take_traces",
          [](HttpFront& front) {
            std::vector<TracedRequest> taken = front.TakeTraces();
            py::list out(taken.size());
            for (size_t i = 0; i < taken.size(); ++i) {
              const TracedRequest& t = taken[i];
              const py::int_ trace_id = (py::int_(t.trace_id_high).attr("__lshift__")(64))
                                            .attr("__or__")(py::int_(t.trace_id_low));
              out[i] = py::make_tuple(
                  py::bytes(t.path), t.model,
                  t.traceparent.empty() ? py::object(py::none())
                                        : py::object(py::str(t.traceparent)),
                  t.tracestate.empty() ? py::object(py::none()) : py::object(py::str(t.tracestate)),
                  trace_id, t.span_id, t.start_ns, t.submit_ns, t.enqueue_ns, t.exec_start_ns,
                  t.exec_end_ns, t.batch_rows, t.encode_start_ns, t.encode_end_ns, t.end_ns,
                  t.status, t.cache_hit, t.error);
            }
            return out;
          },
          "The traced requests answered natively since the last call: (path, model, "
          "traceparent, tracestate, trace_id, span_id, start, submit, enqueue, exec_start, "
          "exec_end, batch_rows, encode_start, encode_end, end, status, cache_hit, error) "
          "tuples; times in steady-clock (time.monotonic_ns) ns, 0 for a stage not reached; "
          "traceparent/tracestate are the caller's when its traceparent was valid, else None.")
      .def_property_readonly("traces_dropped", &HttpFront::traces_dropped)
      .def("unregister_model", &HttpFront::UnregisterModel, py::arg("name"))
      .def(
          "register_route",
          [](HttpFront& front, const std::string& name, const InputSpecs& inputs,
             const std::vector<std::string>& output_names,
             const std::vector<std::tuple<std::string, py::object, uint64_t, bool>>& arms,
             const std::optional<std::tuple<std::string, py::object, double, size_t>>& shadow) {
            auto arm_of = [&](const std::string& version, const py::object& model) {
              HttpFront::RouteArm arm;
              arm.model = MakeV2Model(name, version, inputs, output_names);
              arm.batcher = BatcherOfModel(model);
              arm.owner = HoldModel(model);
              return arm;
            };
            std::vector<HttpFront::RouteArm> native;
            for (const auto& [version, model, weight, record] : arms) {
              HttpFront::RouteArm arm = arm_of(version, model);
              arm.weight = weight;
              arm.record_predictions = record;
              native.push_back(std::move(arm));
            }
            HttpFront::Shadow mirror;
            if (shadow) {
              const auto& [version, model, fraction, max_in_flight] = *shadow;
              mirror.arm = arm_of(version, model);
              mirror.fraction = fraction;
              mirror.max_in_flight = max_in_flight;
            }
            front.RegisterRoute(name, std::move(native), shadow ? &mirror : nullptr);
          },
          py::arg("name"), py::arg("inputs"), py::arg("output_names"), py::arg("arms"),
          py::arg("shadow") = py::none(),
          "Serves v2 infer requests for `name` natively over a canary split: `arms` are "
          "(version, aiarch._core.Model, weight, record_predictions), every one taking "
          "`inputs` and giving `output_names`; `shadow` is (version, model, fraction, "
          "max_in_flight) or None. A total weight of 0 registers nothing.")
      .def("take_shadow_counts", &HttpFront::TakeShadowCounts, py::arg("name"),
           "Mirrored requests of route `name` as (version, outcome, count) since the last "
           "call.")
      .def("unregister_route", &HttpFront::UnregisterRoute, py::arg("name"))
      .def("registered_routes", &HttpFront::registered_routes)
      .def("take_route_picks", &HttpFront::TakeRoutePicks, py::arg("name"),
           "Requests each arm of route `name` got since the last call, in arm order.")
      .def("registered", &HttpFront::registered)
      .def("connect", &HttpFront::Connect, py::arg("id"))
      .def("run_ready", &HttpFront::RunReady,
           "Submits the native requests this loop iteration's reads decoded, then runs the batches "
           "those submits made ready; returns how many ran.")
      .def("flush", &HttpFront::Flush,
           "run_ready() then drain(), with the batches run inline answered without a wake-up; "
           "returns the ids of connections with output to write.")
      .def("drain", &HttpFront::Drain,
           "Encodes waiting completions into their connections; returns the ids of connections "
           "with output to write.");

  py::class_<HttpConnection, std::shared_ptr<HttpConnection>>(
      m, "HttpConnection", "One socket's parser, native requests and response order.")
      .def_property_readonly("id", &HttpConnection::id)
      .def(
          "feed",
          [](HttpConnection& conn, const py::bytes& data, double now) {
            std::string_view view = data;
            std::vector<ForwardedRequest> forwarded;
            conn.Feed(view.data(), view.size(), &forwarded, now);
            if (forwarded.empty()) return py::object(py::none());
            return py::object(Forwarded(forwarded));
          },
          py::arg("data"), py::arg("now") = 0.0,
          "Parses one read received at `now` (the caller's clock, for `phase_since`); returns "
          "the requests for Python: (slot, method, path, query, headers, body, keep_alive, "
          "traced) tuples, or None when there are none.")
      .def("needs_write", &HttpConnection::NeedsWrite, py::arg("max_owed"),
           "Output to write, the connection to close, or `max_owed` responses owed.")
      .def(
          "respond",
          [](HttpConnection& conn, uint64_t slot, const py::bytes& data, bool keep_alive) {
            std::string_view view = data;
            conn.Respond(slot, view, keep_alive);
          },
          py::arg("slot"), py::arg("data"), py::arg("keep_alive"))
      .def("take_output",
           [](HttpConnection& conn) {
             std::string out = conn.TakeOutput();
             return py::bytes(out);
           })
      .def_property_readonly("want_close", &HttpConnection::want_close)
      .def_property_readonly("linger", &HttpConnection::linger)
      .def_property_readonly("owed", &HttpConnection::owed)
      .def_property_readonly("in_request", &HttpConnection::in_request)
      .def_property_readonly(
          "phase", [](const HttpConnection& conn) { return static_cast<int>(conn.phase()); },
          "What is buffered of the request being received: 0 nothing, 1 part of its head, "
          "2 its whole head and part of its body.")
      .def_property_readonly("phase_since", &HttpConnection::phase_since,
                             "The `now` of the read that began the current phase.")
      .def(
          "fail",
          [](HttpConnection& conn, int status, const std::string& message) {
            conn.Fail(status, message);
          },
          py::arg("status"), py::arg("message"),
          "Answers `status` with `{\"error\": message}` after the responses owed, reads "
          "nothing more, and closes (see `want_close`, `linger`).")
      .def_property_readonly("closed", &HttpConnection::closed)
      .def("close", &HttpConnection::Close)
      .def("attach_socket", &HttpConnection::AttachSocket, py::arg("fd"),
           "Sends responses straight to this socket (dup()ed) while `direct_writes` is set; "
           "False when it cannot be duplicated.")
      .def("start_reading", &HttpConnection::StartReading,
           "Reads the attached socket natively (the front's `read_ready`) from now on; False "
           "when it cannot (no attached socket, or the platform has no native reads).")
      .def("set_reading", &HttpConnection::set_reading, py::arg("on"),
           "Pauses or resumes native reading; False when it could not be resumed.")
      .def_property_readonly("reading", &HttpConnection::reading)
      .def("stop_reading", &HttpConnection::StopReading,
           "Ends native reading: the socket is the caller's to read again.")
      .def_property("last_active", &HttpConnection::last_active, &HttpConnection::set_last_active,
                    "The `now` of the last read fed (or as set): when the peer was last heard.")
      .def_property("direct_writes", &HttpConnection::direct_writes,
                    &HttpConnection::set_direct_writes,
                    "Responses encoded by a drain go straight to the attached socket: set only "
                    "while the transport has nothing buffered and reading is not paused.");
}
