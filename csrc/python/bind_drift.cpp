// Python binding of the drift sketch (aiarch._core.DriftSketch): converts
// arrays (py_arrays.h), maps Status onto aiarch.errors (py_errors.h), releases
// the GIL while counting.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <string>
#include <vector>

#include "aiarch/drift.h"
#include "aiarch/status.h"
#include "py_arrays.h"
#include "py_errors.h"

namespace py = pybind11;

namespace {

// Batches with fewer values are counted holding the GIL (about 10 us of work at
// most); releasing and re-taking it would cost more than it frees.
constexpr int64_t kReleaseGilValues = 2048;

using aiarch::binding::Check;
using aiarch::binding::ThrowInvalidArgument;

py::array_t<uint64_t> ToArray(std::vector<uint64_t>&& v) {
  auto* owned = new std::vector<uint64_t>(std::move(v));
  py::capsule owner(owned, [](void* p) { delete static_cast<std::vector<uint64_t>*>(p); });
  return py::array_t<uint64_t>(static_cast<py::ssize_t>(owned->size()), owned->data(), owner);
}

// Views a 2-D float32/float64 array (any strides: the native loops walk them)
// as a DriftBatch without copying; byte-swapped floats and other real dtypes
// are converted to native float64 first, values unchanged. Object, str and
// other kinds are refused (categories are counted by their codes:
// Profile.encode). `*keep` owns the memory the batch points into.
aiarch::DriftBatch ViewBatch(const py::handle& input, const char* what, py::array* keep) {
  py::array& arr = *keep;
  Check(aiarch::binding::AsArray(input, what, aiarch::binding::kRealKinds, &arr));
  const py::dtype dt = arr.dtype();
  const auto size = dt.itemsize();
  const bool native_float = dt.kind() == 'f' && (size == 4 || size == 8) &&
                            dt.byteorder() != aiarch::binding::kForeignByteOrder;
  if (!native_float) arr = py::array_t<double>::ensure(arr);  // lossless for these kinds
  if (arr.ndim() != 2) {
    ThrowInvalidArgument("expected a 2-D array (rows x features), got " +
                         std::to_string(arr.ndim()) + " dims");
  }
  const auto item = static_cast<py::ssize_t>(arr.itemsize());
  if (arr.strides(0) % item != 0 || arr.strides(1) % item != 0) {
    arr = py::array_t<double, py::array::c_style | py::array::forcecast>::ensure(arr);
  }
  aiarch::DriftBatch batch;
  batch.data = arr.data();
  batch.dtype = arr.itemsize() == 4 ? aiarch::DriftDType::kFloat32 : aiarch::DriftDType::kFloat64;
  batch.rows = arr.shape(0);
  batch.features = arr.shape(1);
  batch.row_stride = arr.strides(0) / static_cast<py::ssize_t>(arr.itemsize());
  batch.feature_stride = arr.strides(1) / static_cast<py::ssize_t>(arr.itemsize());
  return batch;
}

// Counts a batch (ViewBatch) into the sketch.
void CountArray(aiarch::DriftSketch& sketch, const py::handle& input) {
  py::array arr;
  const aiarch::DriftBatch batch = ViewBatch(input, "a drift batch (rows x features)", &arr);
  aiarch::Status st;
  if (batch.rows * batch.features < kReleaseGilValues) {
    st = sketch.Count(batch);  // a few microseconds: cheaper than handing the GIL over
  } else {
    py::gil_scoped_release release;  // bins the batch: touches only `arr`'s buffer and the sketch
    st = sketch.Count(batch);
  }
  Check(st);
}

// Summarizes a batch (ViewBatch) column by column (aiarch::SummarizeNumeric) into one dict
// per column of numpy arrays and floats.
py::list SummarizeArray(const py::handle& input, const std::vector<std::vector<double>>& edges) {
  py::array arr;
  const aiarch::DriftBatch batch = ViewBatch(input, "reference values (rows x features)", &arr);
  std::vector<aiarch::NumericSummary> summaries;
  aiarch::Status st;
  {
    py::gil_scoped_release release;  // reads only `arr`'s buffer and the argument vectors
    st = aiarch::SummarizeNumeric(batch, edges, &summaries);
  }
  Check(st);
  py::list out;
  for (auto& s : summaries) {
    py::dict d;
    d["edges"] = py::array_t<double>(static_cast<py::ssize_t>(s.edges.size()), s.edges.data());
    d["counts"] = py::array_t<uint64_t>(static_cast<py::ssize_t>(s.counts.size()), s.counts.data());
    d["sums"] = py::array_t<double>(static_cast<py::ssize_t>(s.sums.size()), s.sums.data());
    d["finite"] = s.finite;
    d["min"] = s.min;
    d["max"] = s.max;
    d["std"] = s.stddev;
    out.append(std::move(d));
  }
  return out;
}

// Quantile edges of every column of a batch (ViewBatch) over the listed rows (all rows when
// `rows` is None), as one list of floats per column.
std::vector<std::vector<double>> QuantileEdgesOf(const py::handle& input,
                                                 const std::vector<double>& quantiles,
                                                 const py::object& rows) {
  py::array arr;
  const aiarch::DriftBatch batch = ViewBatch(input, "reference values (rows x features)", &arr);
  py::array_t<int64_t, py::array::c_style | py::array::forcecast> picked;
  const int64_t* row_data = nullptr;
  int64_t num_rows = 0;
  if (!rows.is_none()) {
    py::array given;
    Check(aiarch::binding::AsArray(rows, "rows (row indices)", aiarch::binding::kIntegerKinds,
                                   &given));
    if (given.ndim() != 1) {
      ThrowInvalidArgument("rows must be 1-D, got " + std::to_string(given.ndim()) + " dims");
    }
    picked = py::array_t<int64_t, py::array::c_style | py::array::forcecast>::ensure(given);
    row_data = picked.data();
    num_rows = picked.shape(0);
  }
  std::vector<std::vector<double>> edges;
  aiarch::Status st;
  {
    py::gil_scoped_release release;  // reads only `arr`'s and `picked`'s buffers
    st = aiarch::QuantileEdges(batch, row_data, num_rows, quantiles, &edges);
  }
  Check(st);
  return edges;
}

}  // namespace

void BindDrift(py::module_& m) {
  m.def("quantile_edges", &QuantileEdgesOf, py::arg("data"), py::arg("quantiles"),
        py::arg("rows") = py::none(),
        "Per column: the distinct numpy.quantile values (linear method) of its finite values at "
        "`quantiles`, over the rows listed in `rows` (every row when None); a zero edge is "
        "+0.0. No sort: a radix selection per column. Releases the GIL.");
  m.def("summarize_numeric", &SummarizeArray, py::arg("data"), py::arg("edges"),
        "Per column, binned by its candidate edges in one pass: counts (null bin first), per-bin "
        "sums, min, max and std of the finite values; edges at or below the minimum dropped. "
        "Releases the GIL.");
  py::class_<aiarch::DriftSketch>(
      m, "DriftSketch",
      "Per-feature binned counters against a reference profile's bins (one native call per "
      "batch).")
      .def(py::init(
               [](const std::vector<int>& kinds, const std::vector<std::vector<double>>& points) {
                 if (kinds.size() != points.size()) {
                   ThrowInvalidArgument("kinds has " + std::to_string(kinds.size()) +
                                        " entries but points has " + std::to_string(points.size()));
                 }
                 std::vector<aiarch::FeatureBins> features(kinds.size());
                 for (size_t i = 0; i < kinds.size(); ++i) {
                   if (kinds[i] != 0 && kinds[i] != 1) {
                     ThrowInvalidArgument("kind of feature " + std::to_string(i) +
                                          " must be 0 (numeric) or 1 (categorical), got " +
                                          std::to_string(kinds[i]));
                   }
                   features[i].kind = static_cast<aiarch::FeatureKind>(kinds[i]);
                   features[i].points = points[i];
                 }
                 std::unique_ptr<aiarch::DriftSketch> sketch;
                 Check(aiarch::DriftSketch::Create(std::move(features), &sketch));
                 return sketch;
               }),
           py::arg("kinds"), py::arg("points"))
      .def("count", &CountArray, py::arg("batch"),
           "Counts a rows x features array (NaN/inf are nulls). Thread-safe; releases the GIL.")
      .def("bin_of", &aiarch::DriftSketch::BinOf, py::arg("feature"), py::arg("value"))
      .def("take_window", [](aiarch::DriftSketch& s) { return ToArray(s.TakeWindow()); })
      .def("peek_window", [](const aiarch::DriftSketch& s) { return ToArray(s.PeekWindow()); })
      .def("totals", [](const aiarch::DriftSketch& s) { return ToArray(s.Totals()); })
      .def_property_readonly("num_features", &aiarch::DriftSketch::num_features)
      .def_property_readonly("num_bins", &aiarch::DriftSketch::num_bins)
      .def_property_readonly("values_counted", &aiarch::DriftSketch::values_counted)
      .def_property_readonly("offsets", [](const aiarch::DriftSketch& s) {
        std::vector<uint64_t> out(s.num_features() + 1, 0);
        for (size_t f = 0; f < s.num_features(); ++f) out[f] = s.offset(f);
        out[s.num_features()] = s.num_bins();
        return ToArray(std::move(out));
      });
}
