"""ONNX Runtime backend: fp32 and INT8 Q/DQ models on the CPU execution provider.

One session per model (ONNX Runtime sessions are safe to run from several threads, which is
what batcher instances do). Where this build has the native executor (`aiarch._core.OnnxSession`,
ONNX Runtime's C API over the library the onnxruntime package ships) and the batch dimension is
dynamic, that session runs every batch: the batcher calls it with no Python on the way, and it
writes each output straight into the batch's output buffer. The Python package's session reads
the model's inputs and outputs and is then dropped, so the model is held once. Otherwise (no
native executor, static batch buckets, or ``backend_options={"native": False}``) the Python
package's session runs the batches.
"""

from __future__ import annotations

import glob
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from aiarch.config import TensorSpec
from aiarch.errors import InvalidArgumentError, UnavailableError

from .base import Backend, BackendOptions, Bucketing, check_arity, run_bucketed

__all__ = ["OnnxBackend", "onnxruntime_library"]

log = logging.getLogger("aiarch.backends")

_ONNX_TO_NUMPY = {
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(float16)": "float16",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(int16)": "int16",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(bool)": "bool",
}


def _import_ort() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise UnavailableError("ONNX models need onnxruntime: pip install 'aiarch[onnx]'") from None
    return onnxruntime


def onnxruntime_library() -> str | None:
    """Path of the shared library the installed onnxruntime package ships (the one its own
    Python binding was built with), or None when it ships none."""
    ort = _import_ort()
    capi = os.path.join(os.path.dirname(ort.__file__), "capi")
    names = ("libonnxruntime.so*", "libonnxruntime*.dylib", "onnxruntime.dll")
    found = sorted(p for n in names for p in glob.glob(os.path.join(capi, n)))
    return found[0] if found else None


def _spec(path: Path, arg: Any) -> tuple[TensorSpec, int | None]:
    """Per-row spec of an ONNX input/output and its batch dim (None when symbolic)."""
    dtype = _ONNX_TO_NUMPY.get(arg.type)
    if dtype is None:
        raise InvalidArgumentError(f"{str(path)!r}: {arg.name!r} has unsupported type {arg.type}")
    shape = list(arg.shape)
    if not shape:
        raise InvalidArgumentError(f"{str(path)!r}: {arg.name!r} has no batch dimension")
    rest = shape[1:]
    if any(not isinstance(d, int) for d in rest):
        raise InvalidArgumentError(
            f"{str(path)!r}: {arg.name!r} has symbolic dims after the batch dim ({shape}); "
            "only the batch dim may be dynamic"
        )
    batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
    return TensorSpec(arg.name, dtype, tuple(rest)), batch


class OnnxBackend(Backend):
    """Runs an ONNX model with ONNX Runtime."""

    format = "onnx"

    def __init__(self, path: Path, options: BackendOptions) -> None:
        ort = _import_ort()
        self.path = str(path)
        self.options = options
        if options.device != "cpu":
            raise InvalidArgumentError(
                f"ONNX Runtime here runs on the CPU; device {options.device!r} needs "
                "backend='tensorrt' (ONNX → TensorRT engine) or a .pt2 model on the torch backend"
            )
        if options.precision not in (None, "fp32", "int8"):
            raise InvalidArgumentError(
                f"precision {options.precision!r}: ONNX Runtime runs the model's own types; "
                "produce an INT8 model with `aiarch quantize`"
            )
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.intra_op_num_threads = options.threads or 1
        so.inter_op_num_threads = options.inter_op_threads or 1
        if not options.extra.get("spin", False):
            # ONNX Runtime's pool threads spin for a while after each run. When the batch ran
            # on a batcher thread, that spinning holds the cores the woken caller needs, which
            # costs milliseconds per request on a small machine; blocking waits cost ~µs.
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
            so.add_session_config_entry("session.inter_op.allow_spinning", "0")
        try:
            self.session: Any = ort.InferenceSession(
                str(path), sess_options=so, providers=["CPUExecutionProvider"]
            )
        except Exception as e:
            raise InvalidArgumentError(
                f"cannot load ONNX model {str(path)!r}: {type(e).__name__}: {e}"
            ) from None
        self.device = "cpu"
        ins = [_spec(path, a) for a in self.session.get_inputs()]
        outs = [_spec(path, a) for a in self.session.get_outputs()]
        self.inputs = tuple(s for s, _ in ins)
        self.outputs = tuple(s for s, _ in outs)
        static = {b for _, b in ins if b is not None}
        if len(static) > 1:
            raise InvalidArgumentError(f"{str(path)!r}: inputs disagree on the batch size {static}")
        self.bucketing = Bucketing(tuple(static))
        self.buckets = self.bucketing.sizes
        self._input_names = [s.name for s in self.inputs]
        self._input_dtypes = [np.dtype(s.dtype) for s in self.inputs]
        self._output_names = [s.name for s in self.outputs]
        self.quantized = any(n.op_type in ("QuantizeLinear", "QLinearMatMul") for n in _nodes(path))
        self.providers = self.session.get_providers()
        self.native_executor = None
        if options.extra.get("native", True) and not self.buckets:
            self.native_executor = self._native_session(so)
            if self.native_executor is not None:
                self.session = None  # the native session runs every batch; hold the model once

    def _native_session(self, so: Any) -> Any:
        """The model as a native session (None where this build or package has none)."""
        from aiarch import _core

        library = onnxruntime_library() if _core.onnx_executor_built else None
        if library is None:
            return None
        try:
            return _core.OnnxSession(
                Path(self.path).name,
                library,
                self.path,
                list(self.inputs),
                list(self.outputs),
                intra_op_threads=so.intra_op_num_threads,
                inter_op_threads=so.inter_op_num_threads,
                allow_spinning=bool(self.options.extra.get("spin", False)),
            )
        except Exception as e:  # the Python package's session still runs the model
            log.warning(
                "%s: native ONNX Runtime session unavailable (%s); running it from Python",
                self.path,
                e,
            )
            return None

    def __call__(self, *arrays: np.ndarray) -> np.ndarray | tuple[np.ndarray, ...]:
        check_arity(self.path, self.inputs, arrays)
        if self.buckets:
            outs = run_bucketed(self.bucketing, arrays, self._run)
        else:  # dynamic batch dimension: the batch runs as it is
            outs = self._run(0, *arrays)
        return outs[0] if len(outs) == 1 else outs

    def _run(self, bucket: int, *arrays: np.ndarray) -> tuple[np.ndarray, ...]:
        if self.native_executor is not None:  # (it checks each input's dtype and shape itself)
            return tuple(self.native_executor(*arrays))
        for name, dtype, a in zip(self._input_names, self._input_dtypes, arrays):
            if a.dtype != dtype:  # (comparing dtypes is cheap; numpy builds `.name` in Python)
                raise InvalidArgumentError(
                    f"input {name!r} of {self.path!r} expects {dtype.name}, got {a.dtype.name}"
                )
        # A plain run on the CPU provider: ONNX Runtime allocates the outputs, which costs less
        # than building an I/O binding per call (about 8 µs less for one row, 10 µs for 64
        # rows of the reference MLP here); binding only pays for device memory.
        feed = {n: np.ascontiguousarray(a) for n, a in zip(self._input_names, arrays)}
        return tuple(self.session.run(self._output_names, feed))

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(
            providers=self.providers,
            quantized=self.quantized,
            onnxruntime=_import_ort().__version__,
            native=self.native_executor is not None,
        )
        return d


def _nodes(path: Path) -> list[Any]:
    """The graph's nodes (weights not loaded), to report whether the model is quantized."""
    try:
        import onnx

        return list(onnx.load(str(path), load_external_data=False).graph.node)
    except Exception:
        return []
