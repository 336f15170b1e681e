"""The native ONNX Runtime executor (`aiarch._core.OnnxSession`): same results as the Python
package's session, batches run with no Python, a failing row fails alone, clear refusals."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

import aiarch
from aiarch import _core, backends
from aiarch.backends.onnx import onnxruntime_library
from aiarch.config import TensorSpec
from aiarch.errors import ExecutionError, InvalidArgumentError, UnavailableError

pytestmark = pytest.mark.skipif(
    not _core.onnx_executor_built or onnxruntime_library() is None,
    reason="this build has no native ONNX Runtime executor, or onnxruntime ships no library",
)


def python_session_run(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


@pytest.fixture(scope="module")
def gather_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """rows of int64 indices (shape [rows, 1]) → rows of a 10x4 table: an index outside 0..9
    makes ONNX Runtime fail the run, whichever other rows share the batch."""
    from onnx import TensorProto, helper, numpy_helper

    table = numpy_helper.from_array(np.arange(40, dtype=np.float32).reshape(10, 4), "table")
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "index"], ["row"], axis=0)],
        "gather",
        [helper.make_tensor_value_info("index", TensorProto.INT64, ["rows", 1])],
        [helper.make_tensor_value_info("row", TensorProto.FLOAT, ["rows", 1, 4])],
        initializer=[table],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path_factory.mktemp("gather") / "gather.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def test_native_session_runs_by_default_with_the_python_sessions_results(mlp_files) -> None:
    be = backends.load(mlp_files.onnx)
    assert be.native_executor is not None
    assert be.describe()["native"] is True
    assert be.native_executor.version == ort.__version__
    rng = np.random.default_rng(11)
    for rows in (1, 3, 64, 200):
        x = rng.standard_normal((rows, 64), dtype=np.float32)
        y = be(x)
        assert y.shape == (rows, 16) and y.dtype == np.float32
        np.testing.assert_allclose(y, python_session_run(mlp_files.onnx, x), rtol=1e-6, atol=1e-6)


def test_runtime_batches_never_enter_python(mlp_files, monkeypatch) -> None:
    rng = np.random.default_rng(12)
    requests = [rng.standard_normal((n, 64), dtype=np.float32) for n in (1, 5, 2, 64, 1)]
    with aiarch.Runtime() as rt:
        info = rt.add_model("mlp", mlp_files.onnx)
        assert info.backend is not None and info.backend["native"] is True
        be = rt._get("mlp").backend

        def python_path(*args: object) -> None:
            raise AssertionError("a batch went through the Python backend")

        monkeypatch.setattr(be, "_run", python_path)

        async def main() -> list[np.ndarray]:
            return await asyncio.gather(*(rt.infer("mlp", x) for x in requests))

        for x, y in zip(requests, asyncio.run(main())):
            np.testing.assert_allclose(y, mlp_files.eager(x), rtol=1e-4, atol=1e-5)
        assert rt.stats("mlp")["requests"]["success"] == len(requests)


def test_a_failing_row_fails_alone(gather_model) -> None:
    indices = [3, 12, 0, 9, -11, 5]  # 12 and -11 are out of range
    with aiarch.Runtime() as rt:
        rt.add_model("gather", gather_model)

        async def main() -> list[object]:
            calls = [rt.infer("gather", np.array([[i]], np.int64)) for i in indices]
            return await asyncio.gather(*calls, return_exceptions=True)

        results = asyncio.run(main())
    for i, r in zip(indices, results):
        if 0 <= i < 10:
            assert isinstance(r, np.ndarray), r
            np.testing.assert_array_equal(
                r, np.arange(4 * i, 4 * i + 4, dtype=np.float32)[None, None]
            )
        else:
            assert isinstance(r, ExecutionError), r
            assert "onnxruntime" in str(r) and "gather" in str(r)


def test_called_directly_it_checks_what_it_is_given(mlp_files) -> None:
    be = backends.load(mlp_files.onnx)
    session = be.native_executor
    with pytest.raises(InvalidArgumentError, match=r"input 'input' expects float32 rows"):
        session(np.zeros((2, 63), np.float32))
    with pytest.raises(InvalidArgumentError, match="expects float32"):
        session(np.zeros((2, 64), np.float64))
    with pytest.raises(InvalidArgumentError, match="takes 1 inputs"):
        session()
    # A strided view is read as the caller sees it (copied to C order, never reinterpreted).
    x = np.random.default_rng(13).standard_normal((64, 8), dtype=np.float32).T
    (y,) = session(x)
    np.testing.assert_allclose(y, mlp_files.eager(np.ascontiguousarray(x)), rtol=1e-4, atol=1e-5)


def test_specs_that_disagree_with_the_model_are_refused(mlp_files) -> None:
    library = onnxruntime_library()
    assert library is not None
    out = [TensorSpec("output", "float32", (16,))]

    def session(inputs: list[TensorSpec], outputs: list[TensorSpec] = out, **kw: str) -> object:
        args = {"library": library, "model_path": str(mlp_files.onnx), **kw}
        return _core.OnnxSession("mlp", args["library"], args["model_path"], inputs, outputs)

    with pytest.raises(InvalidArgumentError, match="input 0 is 'input', not 'x'"):
        session([TensorSpec("x", "float32", (64,))])
    with pytest.raises(InvalidArgumentError, match="'input' does not hold float64"):
        session([TensorSpec("input", "float64", (64,))])
    with pytest.raises(InvalidArgumentError, match="has 1 outputs; 2 were given"):
        session([TensorSpec("input", "float32", (64,))], out + out)
    with pytest.raises(InvalidArgumentError, match="cannot load ONNX model"):
        session([TensorSpec("input", "float32", (64,))], model_path="/nonexistent/m.onnx")
    with pytest.raises(UnavailableError, match="cannot load the onnxruntime library"):
        session([TensorSpec("input", "float32", (64,))], library="/nonexistent/libonnxruntime.so")


def test_native_off_and_static_batches_run_from_python(tmp_path, mlp_files) -> None:
    x = np.random.default_rng(14).standard_normal((5, 64), dtype=np.float32)
    off = backends.load(mlp_files.onnx, options=backends.BackendOptions(extra={"native": False}))
    assert off.native_executor is None and off.describe()["native"] is False
    np.testing.assert_allclose(off(x), backends.load(mlp_files.onnx)(x), rtol=1e-6, atol=1e-6)

    torch = pytest.importorskip("torch")
    static = tmp_path / "static.onnx"
    torch.onnx.export(mlp_files.model, (torch.randn(8, 64),), str(static), dynamo=True)
    be = backends.load(static)
    assert be.buckets == (8,) and be.native_executor is None
