"""`aiarch serve --compile`: .pt2 models are compiled per bucket before the server is ready, other
formats run as loaded; a bad mode in a config file is refused with the accepted modes."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from aiarch.serving.config import load_config_file
from aiarch.serving.process import ServerProcess

for _mod in ("uvloop", "httptools", "msgspec"):
    pytest.importorskip(_mod, reason=f"the server needs {_mod}")


def _post(base: str, path: str, body: dict) -> dict:
    req = urllib.request.Request(
        base + path, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def _get(base: str, path: str) -> dict:
    with urllib.request.urlopen(base + path, timeout=30) as r:
        return json.loads(r.read())


def test_serve_compile_flag_compiles_pt2_and_leaves_onnx(tmp_path: Path, mlp_files) -> None:
    args = [
        "-m",
        f"compiled={mlp_files.pt2}",
        "-m",
        f"plain={mlp_files.onnx}",
        "--compile",
        "default",
        "--max-batch-size",
        "4",
        "--log-level",
        "info",
    ]
    x = np.random.default_rng(2).standard_normal((3, 64), dtype=np.float32)
    body = {
        "inputs": [
            {"name": "input", "shape": [3, 64], "datatype": "FP32", "data": x.ravel().tolist()}
        ]
    }
    with ServerProcess(args, tmp_path / "server.log") as srv:
        srv.wait_ready(timeout=240)  # compiling happens before readiness
        for name, tol in (("compiled", 1e-5), ("plain", 1e-4)):
            out = _post(srv.base, f"/v2/models/{name}/infer", body)["outputs"][0]
            got = np.asarray(out["data"], np.float32).reshape(out["shape"])
            np.testing.assert_allclose(got, mlp_files.eager(x), rtol=tol, atol=tol)
        config = _get(srv.base, "/v2/models/compiled/config")
        # A compiled model's buckets are the batcher's preferred sizes.
        assert config["dynamic_batching"]["preferred_batch_size"] == [1, 2, 4]
        log = srv.output()
    assert "torch.compile default (inductor mode default) of buckets [1, 2, 4]" in log
    assert "model plain: compile=default applies to .pt2 models; this onnx model" in log


def test_config_file_compile_mode_is_checked(tmp_path: Path) -> None:
    cfg = tmp_path / "serve.toml"
    cfg.write_text('[models.m]\nsource = "m.pt2"\ncompile = "turbo"\n')
    with pytest.raises(ValueError, match=r"compile must be one of \['default', 'reduce-overhead'"):
        load_config_file(cfg)
    cfg.write_text('[models.m]\nsource = "m.pt2"\ncompile = "max-autotune"\n')
    assert load_config_file(cfg)[1][0].compile == "max-autotune"
