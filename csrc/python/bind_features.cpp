// Python binding of the feature table (aiarch._core.FeatureTable,
// aiarch._core.FeaturePlan): converts entity ids and arrays (py_arrays.h),
// maps Status codes onto aiarch.errors (py_errors.h), and releases the GIL
// around every native call that touches no Python object. The table's logic
// lives in csrc/src/feature_table.cc.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "aiarch/feature_table.h"
#include "py_arrays.h"
#include "py_errors.h"

namespace py = pybind11;

namespace aiarch {
namespace {

using binding::Check;
using binding::ThrowInvalidArgument;

const char* KindName(FeatureKeyKind kind) {
  return kind == FeatureKeyKind::kInt64 ? "int64" : "string";
}

FeatureKeyKind KindFromName(const std::string& name) {
  if (name == "int64") return FeatureKeyKind::kInt64;
  if (name == "string") return FeatureKeyKind::kString;
  ThrowInvalidArgument("key_kind must be 'int64' or 'string', got '" + name + "'");
}

// Entity ids for an int64 table: any 1-D array (or list) of integers,
// converted to native int64 (no copy when it already is one).
py::array_t<int64_t> IntKeys(const py::handle& ids) {
  py::array arr = py::array::ensure(ids);
  if (!arr) {
    PyErr_Clear();
    ThrowInvalidArgument("entity ids must be an array or a list of ints");
  }
  // Worded as the Python-side check of the other stores, so every backend says the same.
  if (!binding::KindAccepted(arr.dtype(), binding::kIntegerKinds)) {
    ThrowInvalidArgument("entity ids of an int64 entity must be integers; got an array of " +
                         binding::DTypeText(arr.dtype()));
  }
  arr = binding::NativeArray(arr, "entity ids", binding::kIntegerKinds);
  if (arr.ndim() != 1) {
    ThrowInvalidArgument("entity ids must be one-dimensional; got " + std::to_string(arr.ndim()) +
                         " dimensions");
  }
  if (arr.dtype().kind() == 'u' && arr.itemsize() == 8 && arr.size() > 0 &&
      py::int_(arr.attr("max")()).cast<uint64_t>() > static_cast<uint64_t>(INT64_MAX)) {
    ThrowInvalidArgument("entity ids of an int64 entity must fit in int64; got a uint64 above " +
                         std::to_string(INT64_MAX));
  }
  return py::array_t<int64_t, py::array::c_style | py::array::forcecast>::ensure(arr);
}

// Entity ids for a string table: str (UTF-8 encoded) or bytes, from any
// iterable (a list, or a numpy array of str, bytes or objects).
std::vector<std::string> StringKeys(const py::handle& ids) {
  if (py::isinstance<py::str>(ids) || py::isinstance<py::bytes>(ids)) {
    ThrowInvalidArgument("entity ids must be a sequence of ids, not a single str or bytes");
  }
  std::vector<std::string> out;
  for (py::handle item : py::iter(ids)) {
    if (PyUnicode_Check(item.ptr())) {
      Py_ssize_t size = 0;
      const char* s = PyUnicode_AsUTF8AndSize(item.ptr(), &size);
      if (s == nullptr) throw py::error_already_set();
      out.emplace_back(s, static_cast<size_t>(size));
    } else if (PyBytes_Check(item.ptr())) {
      out.emplace_back(PyBytes_AS_STRING(item.ptr()),
                       static_cast<size_t>(PyBytes_GET_SIZE(item.ptr())));
    } else {
      ThrowInvalidArgument("entity ids of a string entity must be str or bytes; got " +
                           std::string(Py_TYPE(item.ptr())->tp_name));
    }
  }
  return out;
}

std::vector<FeatureKey> KeyRefs(const std::vector<std::string>& keys) {
  std::vector<FeatureKey> refs(keys.size());
  for (size_t i = 0; i < keys.size(); ++i) {
    if (keys[i].size() > 0xFFFFFFF0u) {
      ThrowInvalidArgument("an entity id is longer than 4 GiB");
    }
    refs[i] = FeatureKey{keys[i].data(), static_cast<uint32_t>(keys[i].size())};
  }
  return refs;
}

// Row blobs: None (every blob empty) or one bytes object per row.
std::vector<std::string> Blobs(const py::handle& blobs, size_t n) {
  std::vector<std::string> out;
  if (blobs.is_none()) return out;
  for (py::handle item : py::iter(blobs)) {
    if (!PyBytes_Check(item.ptr())) {
      ThrowInvalidArgument("row blobs must be bytes; got " +
                           std::string(Py_TYPE(item.ptr())->tp_name));
    }
    out.emplace_back(PyBytes_AS_STRING(item.ptr()),
                     static_cast<size_t>(PyBytes_GET_SIZE(item.ptr())));
  }
  if (out.size() != n) ThrowInvalidArgument("row blobs and values differ in rows");
  return out;
}

size_t Upsert(FeatureTable& t, const py::handle& ids, const py::handle& values_obj,
              const py::handle& event_ns_obj, const py::handle& blobs_obj) {
  // Values are stored as float32 (the table's type); event times must be
  // integers: a float nanosecond time cannot hold today's epoch exactly.
  auto values = py::array_t<float, py::array::c_style | py::array::forcecast>::ensure(
      binding::NativeArray(values_obj, "values", binding::kRealKinds));
  auto event_ns = py::array_t<int64_t, py::array::c_style | py::array::forcecast>::ensure(
      binding::NativeArray(event_ns_obj, "event_ns (int64 nanoseconds)", binding::kIntegerKinds));
  if (values.ndim() != 2 || values.shape(1) != t.width()) {
    ThrowInvalidArgument("values must be a [rows, " + std::to_string(t.width()) +
                         "] array of float32");
  }
  const size_t n = static_cast<size_t>(values.shape(0));
  if (event_ns.ndim() != 1 || static_cast<size_t>(event_ns.shape(0)) != n) {
    ThrowInvalidArgument("event_ns must hold one int64 timestamp per row of values");
  }
  const std::vector<std::string> blobs = Blobs(blobs_obj, n);
  const std::vector<FeatureKey> blob_refs = KeyRefs(blobs);
  const FeatureKey* row_blobs = blobs_obj.is_none() ? nullptr : blob_refs.data();
  size_t applied = 0;
  Status st;
  if (t.key_kind() == FeatureKeyKind::kInt64) {
    py::array_t<int64_t> keys = IntKeys(ids);
    if (static_cast<size_t>(keys.shape(0)) != n) {
      ThrowInvalidArgument("entity ids and values differ in rows");
    }
    py::gil_scoped_release release;  // blocks on shard mutexes only
    st = t.UpsertInt64(keys.data(), n, values.data(), event_ns.data(), &applied, row_blobs);
  } else {
    std::vector<std::string> keys = StringKeys(ids);
    if (keys.size() != n) {
      ThrowInvalidArgument("entity ids and values differ in rows");
    }
    std::vector<FeatureKey> refs = KeyRefs(keys);
    py::gil_scoped_release release;  // blocks on shard mutexes only
    st = t.UpsertStrings(refs.data(), n, values.data(), event_ns.data(), &applied, row_blobs);
  }
  Check(st);
  return applied;
}

py::object ReadRow(const FeatureTable& t, const py::handle& id) {
  py::array_t<float> values(t.width());
  int64_t event_ns = 0;
  bool found;
  if (t.key_kind() == FeatureKeyKind::kInt64) {
    if (PyBool_Check(id.ptr()) || !PyIndex_Check(id.ptr())) {
      ThrowInvalidArgument("an entity id of an int64 entity must be an int; got " +
                           std::string(Py_TYPE(id.ptr())->tp_name));
    }
    found = t.ReadInt64(id.cast<int64_t>(), values.mutable_data(), &event_ns);
  } else {
    py::list one;
    one.append(id);
    std::vector<std::string> keys = StringKeys(one);
    found = t.ReadString(KeyRefs(keys)[0], values.mutable_data(), &event_ns);
  }
  if (!found) return py::none();
  return py::make_tuple(values, event_ns);
}

// (blobs: list of bytes, b"" for a missing or expired row; status uint8 per key).
py::tuple GatherBlobs(const FeatureTable& t, const py::handle& ids, int64_t now_ns,
                      int64_t ttl_ns) {
  std::vector<std::string> blobs;
  Status st;
  py::array_t<uint8_t> status;
  if (t.key_kind() == FeatureKeyKind::kInt64) {
    py::array_t<int64_t> keys = IntKeys(ids);
    const size_t n = static_cast<size_t>(keys.shape(0));
    status = py::array_t<uint8_t>(static_cast<py::ssize_t>(n));
    uint8_t* s = status.mutable_data();
    py::gil_scoped_release release;  // lock-free reads of native rows only
    st = t.GatherBlobsInt64(keys.data(), n, now_ns, ttl_ns, &blobs, s);
  } else {
    std::vector<std::string> keys = StringKeys(ids);
    std::vector<FeatureKey> refs = KeyRefs(keys);
    status = py::array_t<uint8_t>(static_cast<py::ssize_t>(refs.size()));
    uint8_t* s = status.mutable_data();
    py::gil_scoped_release release;  // lock-free reads of native rows only
    st = t.GatherBlobsStrings(refs.data(), refs.size(), now_ns, ttl_ns, &blobs, s);
  }
  Check(st);
  py::list out(blobs.size());
  for (size_t i = 0; i < blobs.size(); ++i) out[i] = py::bytes(blobs[i]);
  return py::make_tuple(out, status);
}

py::tuple Gather(const FeaturePlan& plan, const py::handle& ids, int64_t now_ns) {
  Status st;
  if (plan.key_kind() == FeatureKeyKind::kInt64) {
    py::array_t<int64_t> keys = IntKeys(ids);
    const py::ssize_t n = keys.shape(0);
    py::array_t<float> out({n, static_cast<py::ssize_t>(plan.out_width())});
    py::array_t<uint8_t> status(n);
    float* o = out.mutable_data();
    uint8_t* s = status.mutable_data();
    {
      py::gil_scoped_release release;  // lock-free reads of native rows only
      st = plan.GatherInt64(keys.data(), static_cast<size_t>(n), now_ns, o, s);
    }
    Check(st);
    return py::make_tuple(out, status);
  }
  std::vector<std::string> keys = StringKeys(ids);
  std::vector<FeatureKey> refs = KeyRefs(keys);
  const py::ssize_t n = static_cast<py::ssize_t>(keys.size());
  py::array_t<float> out({n, static_cast<py::ssize_t>(plan.out_width())});
  py::array_t<uint8_t> status(n);
  float* o = out.mutable_data();
  uint8_t* s = status.mutable_data();
  {
    py::gil_scoped_release release;  // lock-free reads of native rows only
    st = plan.GatherStrings(refs.data(), refs.size(), now_ns, o, s);
  }
  Check(st);
  return py::make_tuple(out, status);
}

}  // namespace
}  // namespace aiarch

void BindFeatures(py::module_& m) {
  using namespace aiarch;
  py::class_<FeatureTable, std::shared_ptr<FeatureTable>>(
      m, "FeatureTable",
      "In-process online feature table: entity key -> 32-bit slots + blob + event time.")
      .def(py::init(
               [](int32_t width, const std::string& key_kind, int shards, int64_t initial_slots) {
                 FeatureTableConfig c;
                 c.width = width;
                 c.key_kind = KindFromName(key_kind);
                 c.shards = shards;
                 c.initial_slots = initial_slots;
                 std::unique_ptr<FeatureTable> t;
                 Check(FeatureTable::Create(c, &t));
                 return std::shared_ptr<FeatureTable>(std::move(t));
               }),
           py::arg("width"), py::arg("key_kind") = "int64", py::arg("shards") = 16,
           py::arg("initial_slots") = 1024)
      .def("upsert", &Upsert, py::arg("ids"), py::arg("values"), py::arg("event_ns"),
           py::arg("blobs") = py::none(),
           "Writes rows (and their blobs: None or one bytes per row); newer event time wins "
           "per key. Returns the rows applied.")
      .def("gather_blobs", &GatherBlobs, py::arg("ids"), py::arg("now_ns"), py::arg("ttl_ns") = 0,
           "(blobs: list of bytes, b'' for a missing or expired row; status[n] uint8).")
      .def("read", &ReadRow, py::arg("id"), "(values, event_ns) of one key, or None.")
      .def(
          "snapshot",
          [](const FeatureTable& t, const std::string& path) {
            Status st;
            {
              py::gil_scoped_release release;  // file I/O and shard mutexes only
              st = t.Snapshot(path);
            }
            Check(st);
          },
          py::arg("path"))
      .def(
          "load_snapshot",
          [](FeatureTable& t, const std::string& path) {
            Status st;
            size_t loaded = 0;
            {
              py::gil_scoped_release release;  // file I/O and shard mutexes only
              st = t.LoadSnapshot(path, &loaded);
            }
            Check(st);
            return loaded;
          },
          py::arg("path"))
      .def_property_readonly("width", &FeatureTable::width)
      .def_property_readonly("key_kind",
                             [](const FeatureTable& t) { return KindName(t.key_kind()); })
      .def("counters", [](const FeatureTable& t) {
        const FeatureTableCounters c = t.Counters();
        py::dict d;
        d["upserts"] = c.upserts;
        d["stale"] = c.stale;
        d["entities"] = c.entities;
        return d;
      });

  py::class_<FeaturePlan, std::shared_ptr<FeaturePlan>>(
      m, "FeaturePlan", "A resolved multi-table gather into one float32 array.")
      .def(py::init([](const py::list& segments, int32_t out_width) {
             std::vector<FeaturePlanSegment> segs;
             for (py::handle item : segments) {
               py::tuple t = py::reinterpret_borrow<py::tuple>(item);
               if (t.size() != 5) {
                 ThrowInvalidArgument(
                     "a plan segment is (table, columns, defaults, ttl_ns, out_offset)");
               }
               FeaturePlanSegment s;
               s.table = t[0].cast<std::shared_ptr<FeatureTable>>();
               s.columns = t[1].cast<std::vector<int32_t>>();
               s.defaults = t[2].cast<std::vector<float>>();
               s.ttl_ns = t[3].cast<int64_t>();
               s.out_offset = t[4].cast<int32_t>();
               segs.push_back(std::move(s));
             }
             std::unique_ptr<FeaturePlan> plan;
             Check(FeaturePlan::Create(std::move(segs), out_width, &plan));
             return std::shared_ptr<FeaturePlan>(std::move(plan));
           }),
           py::arg("segments"), py::arg("out_width"))
      .def("gather", &Gather, py::arg("ids"), py::arg("now_ns"),
           "(values[n, out_width] float32, status[n] uint8: 0 present, 1 expired, 2 missing).")
      .def_property_readonly("out_width", &FeaturePlan::out_width)
      .def_property_readonly("key_kind",
                             [](const FeaturePlan& p) { return KindName(p.key_kind()); });
}
