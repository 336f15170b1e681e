"""Static INT8 quantization of ONNX models, with an accuracy report against the fp32 model.

The output is an explicit Q/DQ model (QuantizeLinear/DequantizeLinear pairs around each
quantized operator) with per-channel weights, produced by ONNX Runtime's static quantizer from
calibration data. Q/DQ is the form both ONNX Runtime (CPU) and TensorRT (explicit quantization)
execute, so one file serves both. ``symmetric=True`` (the default) uses signed, zero-centred
activations as TensorRT requires; ``symmetric=False`` uses unsigned activations, which ONNX
Runtime's x86 kernels run fastest but TensorRT does not accept.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aiarch.errors import InvalidArgumentError, UnavailableError

__all__ = ["METHODS", "AccuracyReport", "QuantizeResult", "load_samples", "quantize_onnx"]

METHODS = ("minmax", "entropy", "percentile")
MIN_CALIBRATION_SAMPLES = 16


@dataclass(frozen=True)
class AccuracyReport:
    """How far the INT8 model's outputs are from the fp32 model's on held-out inputs."""

    samples: int
    max_abs_error: float
    mean_abs_error: float
    """Mean over every output value."""
    top1_agreement: float | None
    """Share of rows whose argmax matches (outputs with ≥ 2 columns only)."""


@dataclass(frozen=True)
class QuantizeResult:
    """What ``quantize_onnx`` wrote and how accurate it is."""

    output: str
    method: str
    calibration_samples: int
    quantized_nodes: int
    report: AccuracyReport

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_samples(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Calibration/evaluation inputs: ``.npy`` (one input) or ``.npz`` (arrays named after the
    model's inputs), rows first."""
    p = Path(path)
    if not p.is_file():
        raise InvalidArgumentError(f"no such data file: {str(p)!r}")
    try:
        if p.suffix == ".npz":
            with np.load(p, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        return {"": np.load(p, allow_pickle=False)}
    except ValueError as e:
        raise InvalidArgumentError(f"{str(p)!r} is not a numpy .npy/.npz file: {e}") from None


def _bind(samples: Mapping[str, np.ndarray], session: Any, what: str) -> dict[str, np.ndarray]:
    """Checks samples against the model's inputs and keys them by input name."""
    inputs = session.get_inputs()
    if "" in samples:
        if len(inputs) != 1:
            raise InvalidArgumentError(
                f"{what}: the model has {len(inputs)} inputs {[i.name for i in inputs]}; pass an "
                ".npz with one array per input name"
            )
        samples = {inputs[0].name: samples[""]}
    names = [i.name for i in inputs]
    missing = [n for n in names if n not in samples]
    if missing:
        raise InvalidArgumentError(
            f"{what}: missing arrays for inputs {missing}; the file has {sorted(samples)}"
        )
    out: dict[str, np.ndarray] = {}
    rows = None
    for i in inputs:
        a = samples[i.name]
        want = [d if isinstance(d, int) and d > 0 else None for d in i.shape]
        shape_ok = a.ndim == len(want) and all(
            w is None or w == d for w, d in zip(want[1:], a.shape[1:])
        )
        if not shape_ok:
            shown = ["N" if w is None else w for w in want]
            raise InvalidArgumentError(
                f"{what}: input {i.name!r} expects shape {shown}, got {list(a.shape)}"
            )
        if i.type == "tensor(float)" and a.dtype != np.float32:
            if not np.issubdtype(a.dtype, np.floating):
                raise InvalidArgumentError(
                    f"{what}: input {i.name!r} expects float32 values, got {a.dtype}"
                )
            a = a.astype(np.float32)
        if rows is not None and a.shape[0] != rows:
            raise InvalidArgumentError(f"{what}: inputs have different row counts")
        rows = a.shape[0]
        out[i.name] = np.ascontiguousarray(a)
    return out


def quantize_onnx(
    model: str | os.PathLike[str],
    calibration: Mapping[str, np.ndarray],
    out: str | os.PathLike[str],
    *,
    method: str = "minmax",
    evaluation: Mapping[str, np.ndarray] | None = None,
    symmetric: bool = True,
    per_channel: bool = True,
    batch_size: int = 64,
) -> QuantizeResult:
    """Writes an INT8 Q/DQ version of ``model`` to ``out`` and reports its accuracy.

    ``calibration`` maps input names to arrays (rows first); ``evaluation`` is held-out data for
    the report (by default the last fifth of the calibration rows, which are then not used to
    calibrate).
    """
    try:
        import onnxruntime as ort
        from onnxruntime import quantization as q
    except ImportError:
        raise UnavailableError(
            "quantization needs onnxruntime: pip install 'aiarch[onnx]'"
        ) from None
    if method not in METHODS:
        raise InvalidArgumentError(f"method {method!r}: expected one of {list(METHODS)}")
    model = Path(model)
    if not model.is_file():
        raise InvalidArgumentError(f"no such ONNX model: {str(model)!r}")
    try:
        fp32 = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    except Exception as e:
        raise InvalidArgumentError(f"cannot load ONNX model {str(model)!r}: {e}") from None
    calib = _bind(calibration, fp32, "calibration data")
    if evaluation is None:
        n = next(iter(calib.values())).shape[0]
        cut = n - max(n // 5, 1)
        evaluation = {k: v[cut:] for k, v in calib.items()}
        calib = {k: v[:cut] for k, v in calib.items()}
    else:
        evaluation = _bind(evaluation, fp32, "evaluation data")
    n_calib = next(iter(calib.values())).shape[0]
    if n_calib < MIN_CALIBRATION_SAMPLES:
        raise InvalidArgumentError(
            f"calibration data has {n_calib} usable rows; at least {MIN_CALIBRATION_SAMPLES} are "
            "needed for stable activation ranges (a few hundred representative rows is typical)"
        )

    class Reader(q.CalibrationDataReader):
        def __init__(self) -> None:
            self._it = self._batches()

        def _batches(self) -> Iterator[dict[str, np.ndarray]]:
            for start in range(0, n_calib, batch_size):
                yield {k: v[start : start + batch_size] for k, v in calib.items()}

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

        def rewind(self) -> None:
            self._it = self._batches()

    calibrate = {
        "minmax": q.CalibrationMethod.MinMax,
        "entropy": q.CalibrationMethod.Entropy,
        "percentile": q.CalibrationMethod.Percentile,
    }[method]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        # Shape inference + graph cleanup first, as ONNX Runtime's quantizer recommends.
        q.quant_pre_process(str(model), str(prepared), skip_symbolic_shape=False)
        q.quantize_static(
            str(prepared),
            str(out),
            Reader(),
            quant_format=q.QuantFormat.QDQ,
            per_channel=per_channel,
            activation_type=q.QuantType.QInt8 if symmetric else q.QuantType.QUInt8,
            weight_type=q.QuantType.QInt8,
            calibrate_method=calibrate,
            extra_options={"ActivationSymmetric": symmetric, "WeightSymmetric": True},
        )
    int8 = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    report = compare_outputs(fp32, int8, evaluation, batch_size)
    import onnx

    nodes = sum(n.op_type == "QuantizeLinear" for n in onnx.load(str(out)).graph.node)
    return QuantizeResult(str(out), method, n_calib, nodes, report)


def compare_outputs(
    reference: Any, candidate: Any, data: Mapping[str, np.ndarray], batch_size: int = 256
) -> AccuracyReport:
    """Runs both sessions on ``data`` and measures the difference of their first outputs."""
    n = next(iter(data.values())).shape[0]
    refs, cands = [], []
    for start in range(0, n, batch_size):
        feed = {k: v[start : start + batch_size] for k, v in data.items()}
        refs.append(reference.run(None, feed)[0])
        cands.append(candidate.run(None, feed)[0])
    r = np.concatenate(refs).astype(np.float64)
    c = np.concatenate(cands).astype(np.float64)
    err = np.abs(r - c)
    top1 = None
    if r.ndim == 2 and r.shape[1] >= 2:
        top1 = float(np.mean(r.argmax(1) == c.argmax(1)))
    return AccuracyReport(
        samples=n,
        max_abs_error=float(err.max()) if err.size else 0.0,
        mean_abs_error=float(err.mean()) if err.size else 0.0,
        top1_agreement=top1,
    )
