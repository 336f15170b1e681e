"""Model export for registration: .pt2 and ONNX that reproduce the eager model at any batch."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (pip install '.[torch]')")

from aiarch.train import export_model, hash_data  # noqa: E402
from aiarch.train.export import _reference_profile  # noqa: E402


def mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))


def test_pt2_and_onnx_match_the_eager_model_at_other_batch_sizes(tmp_path):
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    model = mlp()
    # A one-row example must still export a dynamic batch dimension.
    exported = export_model(model, torch.randn(1, 6), tmp_path / "m")

    assert exported.pt2 == tmp_path / "m" / "model.pt2" and exported.pt2.stat().st_size > 0
    assert exported.onnx == tmp_path / "m" / "model.onnx"
    assert exported.signature == {
        "inputs": [{"name": "input", "dtype": "float32", "shape": [-1, 6]}],
        "outputs": [{"name": "output", "dtype": "float32", "shape": [-1, 3]}],
    }
    assert set(exported.sha256) == {"model.pt2", "model.onnx"}

    x = torch.randn(37, 6)
    with torch.no_grad():
        want = model(x)
    program = torch.export.load(str(exported.pt2))
    with torch.no_grad():
        got = program.module()(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)

    session = ort.InferenceSession(str(exported.onnx), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input"]
    assert session.get_inputs()[0].shape == ["batch", 6]
    (onnx_out,) = session.run(["output"], {"input": x.numpy()})
    np.testing.assert_allclose(onnx_out, want.numpy(), rtol=1e-5, atol=1e-5)


def test_ddp_wrapper_and_training_mode_do_not_leak_into_the_export(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Dropout(0.5))
    model.train()
    exported = export_model(model, np.ones((3, 4), np.float32), tmp_path, onnx=False)
    assert exported.onnx is None and not (tmp_path / "model.onnx").exists()
    program = torch.export.load(str(exported.pt2))
    x = torch.randn(5, 4)
    with torch.no_grad():
        # eval mode: dropout is the identity, so the export is deterministic
        torch.testing.assert_close(program.module()(x), program.module()(x))
    assert model.training, "the caller's model keeps its mode"


@pytest.mark.parametrize(
    ("example", "message"),
    [
        ((), "example_input is empty"),
        ("text", "expected a torch.Tensor or numpy array"),
        (torch.tensor(1.0), "leading batch dimension"),
    ],
)
def test_bad_example_input_is_refused(tmp_path, example, message):
    with pytest.raises((TypeError, ValueError), match=message):
        export_model(mlp(), example, tmp_path)


def test_data_hash_covers_bytes_dtype_and_shape():
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert hash_data(a) == hash_data(a.copy()) == hash_data(torch.from_numpy(a.copy()))
    assert hash_data(a) != hash_data(a.reshape(4, 3))
    assert hash_data(a) != hash_data(a.astype(np.float64))
    b = a.copy()
    b[2, 3] += 1
    assert hash_data(a) != hash_data(b)
    assert len(hash_data(a)) == 64


def test_reference_data_must_be_two_dimensional_with_matching_names():
    with pytest.raises(ValueError, match=r"expected a 2-D array"):
        _reference_profile(np.zeros(5), None)
    with pytest.raises(ValueError, match="feature_names has 2 names but reference_data has 3"):
        _reference_profile(np.zeros((4, 3)), ["a", "b"])
