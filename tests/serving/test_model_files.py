"""`aiarch serve` with model files: ONNX (fp32 and INT8) and torch.export programs over real HTTP,
through tritonclient, with a bad request to one model leaving the others serving."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="exporting the test model needs torch")
pytest.importorskip("onnxruntime", reason="serving ONNX files needs onnxruntime")
import tritonclient.http as httpclient  # noqa: E402

from aiarch.backends.export import export_model  # noqa: E402
from aiarch.quantize import quantize_onnx  # noqa: E402

from .conftest import _require_server_deps, request, running_server  # noqa: E402


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, dict[str, Path]]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4)
    ).eval()
    folder = tmp_path_factory.mktemp("files")
    files = export_model(model, torch.randn(2, 16), folder)
    assert files.onnx is not None
    paths = {"pt2": files.pt2, "onnx": files.onnx}
    calib = np.random.default_rng(0).standard_normal((200, 16), dtype=np.float32)
    paths["int8"] = folder / "model.int8.onnx"
    quantize_onnx(paths["onnx"], {"": calib}, paths["int8"])
    return model, paths


def test_serves_onnx_pt2_and_int8_files(tmp_path: Path, files) -> None:
    _require_server_deps()
    model, paths = files
    cfg = tmp_path / "serve.toml"
    # A relative source in a config file is relative to the file.
    (tmp_path / "m.pt2").write_bytes(paths["pt2"].read_bytes())
    cfg.write_text(
        f'[models.exported]\nsource = "m.pt2"\ndevice = "cpu"\nbackend_options = {{ threads = 1 }}\n'
        f'[models.int8]\nsource = "{paths["int8"]}"\n'
    )
    args = ["-m", f"onnx={paths['onnx']}", "--config", str(cfg), "--log-level", "warning"]
    x = np.random.default_rng(1).standard_normal((5, 16), dtype=np.float32)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    with running_server(args, tmp_path) as srv:
        client = httpclient.InferenceServerClient(srv.url, network_timeout=30)
        for name, tol in (("onnx", 1e-4), ("exported", 1e-5), ("int8", 0.1)):
            meta = client.get_model_metadata(name)
            assert meta["inputs"][0]["datatype"] == "FP32"
            assert meta["inputs"][0]["shape"] == [-1, 16]
            inp = httpclient.InferInput(meta["inputs"][0]["name"], list(x.shape), "FP32")
            inp.set_data_from_numpy(x, binary_data=True)
            got = client.infer(name, [inp]).as_numpy(meta["outputs"][0]["name"])
            np.testing.assert_allclose(got, want, rtol=tol, atol=tol)
        # A request of the wrong width is a 400 naming the shape; the model keeps serving.
        bad = {
            "inputs": [{"name": "input", "shape": [2, 7], "datatype": "FP32", "data": [0.0] * 14}]
        }
        r = request(srv.port, "POST", "/v2/models/onnx/infer", json.dumps(bad).encode())
        assert r.status == 400 and "16" in json.loads(r.body)["error"]
        inp = httpclient.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        np.testing.assert_allclose(
            client.infer("onnx", [inp]).as_numpy("output"), want, rtol=1e-4, atol=1e-4
        )


def test_corrupt_model_file_fails_start_with_clear_message(tmp_path: Path) -> None:
    _require_server_deps()
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"\x08\x07garbage" * 50)
    from .conftest import ServerProcess

    srv = ServerProcess(["-m", f"broken={bad}"], tmp_path)
    try:
        with pytest.raises(RuntimeError, match="cannot load ONNX model"):
            srv.wait_ready(timeout=60)
    finally:
        srv.stop()
