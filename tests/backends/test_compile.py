"""The torch backend's ``compile`` option: torch.compile per batch-size bucket, compiled at load.

On CPU every test runs for real (inductor generates and compiles C++ kernels). Compiled and eager
fp32 results are compared at rtol = atol = 1e-5: inductor fuses the bias/ReLU epilogues but keeps
ATen's matmuls on CPU, so the two differ by float rounding only (observed ≤ 1e-7).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from torch._dynamo.utils import counters

import aiarch
from aiarch import backends
from aiarch.backends.export import export_model
from aiarch.errors import InvalidArgumentError

from .conftest import mlp

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (torch sees none)")
TOL = 1e-5


def _compiled_programs() -> int:
    """Programs dynamo has handed to inductor in this process so far."""
    return int(counters["stats"]["unique_graphs"])


def _requests(sizes: tuple[int, ...], width: int = 64) -> list[np.ndarray]:
    rng = np.random.default_rng(sum(sizes))
    return [rng.standard_normal((n, width), dtype=np.float32) for n in sizes]


@pytest.mark.parametrize("mode", ["default", "reduce-overhead", "max-autotune"])
def test_compiled_model_equals_eager_in_every_mode(mlp_files, mode: str) -> None:
    requests = _requests((1, 3, 8, 5, 7))  # batches of 1..8 rows, padded to buckets
    with aiarch.Runtime() as rt:
        info = rt.add_model(
            "mlp", mlp_files.pt2, compile=mode, batching=aiarch.BatchConfig(max_batch_size=8)
        )
        assert info.backend is not None and info.backend["compile"]["mode"] == mode

        async def main() -> list[np.ndarray]:
            return await asyncio.gather(*(rt.infer("mlp", x) for x in requests))

        outs = asyncio.run(main())
    for x, y in zip(requests, outs):
        np.testing.assert_allclose(y, mlp_files.eager(x), rtol=TOL, atol=TOL)


def test_warm_up_compiles_every_bucket_at_load_and_traffic_compiles_nothing(mlp_files) -> None:
    with aiarch.Runtime() as rt:
        before = _compiled_programs()
        info = rt.add_model(
            "mlp", mlp_files.pt2, compile="default", batching=aiarch.BatchConfig(max_batch_size=16)
        )
        at_load = _compiled_programs() - before
        assert info.batching.preferred_batch_sizes == (1, 2, 4, 8, 16)
        report = info.backend["compile"]
        assert sorted(int(b) for b in report["bucket_seconds"]) == [1, 2, 4, 8, 16]
        assert all(t > 0 for t in report["bucket_seconds"].values())
        assert report["seconds"] == pytest.approx(sum(report["bucket_seconds"].values()), abs=0.01)
        assert at_load == 5  # one program per bucket, all before the model was ready

        for x in _requests((1, 2, 3, 7, 9, 16)):
            np.testing.assert_allclose(
                rt.infer_sync("mlp", x), mlp_files.eager(x), rtol=TOL, atol=TOL
            )
        assert _compiled_programs() - before == 5  # no request met an uncompiled shape


def test_more_buckets_than_dynamo_keeps_by_default_are_all_compiled(tmp_path: Path) -> None:
    model = mlp((8, 16, 4), seed=3)
    files = export_model(model, torch.randn(2, 8), tmp_path, onnx=False)
    buckets = tuple(range(1, 11))  # 10 > dynamo's default recompile limit of 8
    before = _compiled_programs()
    be = backends.load(files.pt2, compile="default", max_batch_size=10, batch_sizes=buckets)
    be.warm_up()
    assert _compiled_programs() - before == len(buckets)
    for x in _requests((*buckets, 23), width=8):  # 23 rows: chunked into buckets of 10
        with torch.no_grad():
            want = model(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(be(x), want, rtol=TOL, atol=TOL)
    assert _compiled_programs() - before == len(buckets)


def test_unknown_compile_mode_is_refused_with_the_modes(mlp_files) -> None:
    with pytest.raises(InvalidArgumentError, match=r"'fastest'.*'default', 'reduce-overhead'"):
        backends.load(mlp_files.pt2, compile="fastest")
    with aiarch.Runtime() as rt, pytest.raises(InvalidArgumentError, match="max-autotune"):
        rt.add_model("m", mlp_files.pt2, compile="max_autotune")
        assert rt.models() == []


def test_compile_is_refused_for_models_torch_compile_does_not_run(mlp_files) -> None:
    with pytest.raises(InvalidArgumentError, match=r"torch models \(\.pt2\).*onnx model"):
        backends.load(mlp_files.onnx, compile="default")
    with pytest.raises(InvalidArgumentError, match=r"needs a torch.export \(\.pt2\) program"):
        backends.load(mlp_files.torchscript, compile="default")
    with aiarch.Runtime() as rt:
        with pytest.raises(InvalidArgumentError, match="a callable runs as it is"):
            rt.add_model(
                "f",
                lambda x: x,
                inputs=[aiarch.TensorSpec("x", "float32", (4,))],
                compile="default",
            )
        assert rt.models() == []


_LOAD_AND_REPORT = """
import json, sys
from aiarch import backends
be = backends.load(sys.argv[1], compile="default", batch_sizes=(1, 4), max_batch_size=4)
be.warm_up()
print(json.dumps(be.describe()["compile"]))
"""


def test_compiled_code_is_reused_from_disk_after_a_restart(tmp_path: Path) -> None:
    # A width no other run has used, so the first process cannot find it in the shared cache.
    width = 16 + 16 * (uuid.uuid4().int % 4096)
    files = export_model(mlp((width, 8), seed=5), torch.randn(2, width), tmp_path, onnx=False)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}

    def start() -> dict:
        out = subprocess.run(
            [sys.executable, "-c", _LOAD_AND_REPORT, str(files.pt2)],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        assert out.returncode == 0, out.stderr[-3000:]
        return json.loads(out.stdout.strip().splitlines()[-1])

    first, second = start(), start()
    assert first["fx_graph_cache"] == {"hits": 0, "misses": 2}
    assert second["fx_graph_cache"] == {"hits": 2, "misses": 0}
    assert first["cache_dir"] == second["cache_dir"]


# ------------------------------------------------------------------ CUDA


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize(
    ("mode", "inductor_mode"),
    [
        ("default", "default"),
        ("reduce-overhead", "default"),
        ("max-autotune", "max-autotune-no-cudagraphs"),
    ],
)
def test_compiled_kernels_are_captured_in_the_backends_cuda_graphs(
    mlp_files, mode: str, inductor_mode: str
) -> None:
    be = backends.load(
        mlp_files.pt2, device="cuda", compile=mode, max_batch_size=64, batch_sizes=(1, 8, 64)
    )
    be.warm_up()
    d = be.describe()
    assert d["cuda_graphs"] and d["compile"]["inductor_mode"] == inductor_mode
    assert sorted(int(b) for b in d["compile"]["bucket_seconds"]) == [1, 8, 64]
    for rows in (1, 5, 8, 64, 100):
        x = np.random.default_rng(rows).standard_normal((rows, 64), dtype=np.float32)
        np.testing.assert_allclose(be(x), mlp_files.eager(x), rtol=1e-4, atol=1e-4)
    be.close()


@pytest.mark.gpu
@needs_cuda
def test_compile_fp16_with_graphs_through_the_runtime(mlp_files) -> None:
    with aiarch.Runtime() as rt:
        info = rt.add_model(
            "g",
            mlp_files.pt2,
            device="cuda",
            precision="fp16",
            compile="max-autotune",
            batching=aiarch.BatchConfig(max_batch_size=32),
        )
        assert info.batching.preferred_batch_sizes == (1, 2, 4, 8, 16, 32)
        for x in _requests((1, 3, 32, 40)):
            np.testing.assert_allclose(
                rt.infer_sync("g", x), mlp_files.eager(x), rtol=3e-2, atol=3e-2
            )


@pytest.mark.gpu
@needs_cuda
def test_compile_without_backend_graphs_keeps_inductors_own(mlp_files) -> None:
    be = backends.load(
        mlp_files.pt2, device="cuda", compile="reduce-overhead", cuda_graphs=False, batch_sizes=(4,)
    )
    be.warm_up()
    assert be.describe()["compile"]["inductor_mode"] == "reduce-overhead"
    x = np.random.default_rng(0).standard_normal((3, 64), dtype=np.float32)
    np.testing.assert_allclose(be(x), mlp_files.eager(x), rtol=1e-4, atol=1e-4)
    be.close()
