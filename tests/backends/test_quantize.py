"""`aiarch quantize`: INT8 Q/DQ accuracy on a classification task, bad calibration data, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import aiarch
from aiarch.errors import InvalidArgumentError
from aiarch.quantize import load_samples, quantize_onnx

# The bound this project states for INT8 on small MLP classifiers (README): at least 97 % of
# held-out rows keep the fp32 prediction, and task accuracy drops by at most 2 points.
MIN_TOP1_AGREEMENT = 0.97
MAX_ACCURACY_DROP = 0.02


@pytest.mark.parametrize("method", ["minmax", "percentile"])
def test_int8_accuracy_within_bound(tmp_path: Path, classifier, method: str) -> None:
    out = tmp_path / "clf.int8.onnx"
    result = quantize_onnx(
        classifier.onnx,
        {"": classifier.x_train[:512]},
        out,
        method=method,
        evaluation={"": classifier.x_test},
    )
    model = onnx.load(str(out))
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # explicit Q/DQ
    assert result.report.samples == len(classifier.x_test)
    assert result.report.top1_agreement is not None
    assert result.report.top1_agreement >= MIN_TOP1_AGREEMENT
    fp32 = ort.InferenceSession(str(classifier.onnx), providers=["CPUExecutionProvider"])
    int8 = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    acc32 = np.mean(fp32.run(None, {"input": classifier.x_test})[0].argmax(1) == classifier.y_test)
    acc8 = np.mean(int8.run(None, {"input": classifier.x_test})[0].argmax(1) == classifier.y_test)
    assert acc32 > 0.9, "the task itself should be learnable"
    assert acc32 - acc8 <= MAX_ACCURACY_DROP


def test_int8_model_serves_through_runtime(tmp_path: Path, classifier) -> None:
    out = tmp_path / "clf.int8.onnx"
    quantize_onnx(classifier.onnx, {"": classifier.x_train[:256]}, out)
    direct = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = classifier.x_test[:40]
    with aiarch.Runtime() as rt:
        info = rt.add_model("clf8", out)
        assert info.backend is not None and info.backend["quantized"] is True
        got = rt.infer_sync("clf8", x)
    np.testing.assert_allclose(got, direct.run(None, {"input": x})[0], rtol=1e-5, atol=1e-5)


def test_bad_calibration_data_is_refused(tmp_path: Path, classifier) -> None:
    out = tmp_path / "x.onnx"
    with pytest.raises(InvalidArgumentError, match=r"expects shape \['N', 32\], got \[100, 7\]"):
        quantize_onnx(classifier.onnx, {"": np.zeros((100, 7), np.float32)}, out)
    with pytest.raises(InvalidArgumentError, match="expects float32 values"):
        quantize_onnx(classifier.onnx, {"": np.zeros((100, 32), np.int32)}, out)
    with pytest.raises(InvalidArgumentError, match="at least 16"):
        quantize_onnx(classifier.onnx, {"": classifier.x_train[:10]}, out)
    with pytest.raises(InvalidArgumentError, match="missing arrays for inputs"):
        quantize_onnx(classifier.onnx, {"wrong_name": classifier.x_train}, out)
    with pytest.raises(InvalidArgumentError, match="method"):
        quantize_onnx(classifier.onnx, {"": classifier.x_train}, out, method="magic")
    assert not out.exists()
    pickled = tmp_path / "obj.npy"
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InvalidArgumentError, match="not a numpy"):
        load_samples(pickled)


def test_cli_writes_model_and_json_report(tmp_path: Path, classifier) -> None:
    calib = tmp_path / "calib.npy"
    np.save(calib, classifier.x_train[:300])
    out = tmp_path / "cli.int8.onnx"
    cmd = [
        sys.executable,
        "-m",
        "aiarch",
        "quantize",
        str(classifier.onnx),
        "--calibration",
        str(calib),
        "--out",
        str(out),
        "--json",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["output"] == str(out) and out.is_file()
    assert report["report"]["top1_agreement"] >= MIN_TOP1_AGREEMENT
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((50, 3), np.float32))
    cmd[cmd.index(str(calib))] = str(bad)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "expects shape" in proc.stderr
    assert "Traceback" not in proc.stderr
