"""The torch backend: .pt2 and TorchScript through the Runtime equal the eager model."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch

import aiarch
from aiarch import backends
from aiarch.errors import InvalidArgumentError, UnavailableError

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (torch sees none)")


@pytest.mark.parametrize("kind", ["pt2", "torchscript"])
def test_runtime_serves_torch_files_equal_to_eager(mlp_files, kind: str) -> None:
    path = getattr(mlp_files, kind)
    rng = np.random.default_rng(1)
    requests = [rng.standard_normal((n, 64), dtype=np.float32) for n in (1, 3, 17, 64, 5)]
    with aiarch.Runtime() as rt:
        info = rt.add_model("mlp", path, batching=aiarch.BatchConfig(max_batch_size=64))
        assert info.backend is not None and info.backend["format"] in (
            "torch_export",
            "torchscript",
        )

        async def main() -> list[np.ndarray]:
            return await asyncio.gather(*(rt.infer("mlp", x) for x in requests))

        outs = asyncio.run(main())
    for x, y in zip(requests, outs):
        np.testing.assert_allclose(y, mlp_files.eager(x), rtol=1e-5, atol=1e-5)


def test_pt2_declares_its_inputs(mlp_files) -> None:
    be = backends.load(mlp_files.pt2)
    assert [(s.dtype, s.shape) for s in be.inputs] == [("float32", (64,))]
    assert be.buckets == ()  # dynamic batch: any size runs as is


def test_static_batch_program_is_padded_and_chunked(tmp_path, mlp_files) -> None:
    ep = torch.export.export(mlp_files.model, (torch.randn(4, 64),))  # batch fixed at 4
    path = tmp_path / "static.pt2"
    torch.export.save(ep, str(path))
    be = backends.load(path)
    assert be.buckets == (4,)
    for rows in (1, 4, 7, 13):
        x = np.random.default_rng(rows).standard_normal((rows, 64), dtype=np.float32)
        np.testing.assert_allclose(be(x), mlp_files.eager(x), rtol=1e-5, atol=1e-5)
    with aiarch.Runtime() as rt:
        info = rt.add_model("s", path, batching=aiarch.BatchConfig(max_batch_size=8))
        assert info.batching.preferred_batch_sizes == (4,)
        x = np.ones((3, 64), np.float32)
        np.testing.assert_allclose(rt.infer_sync("s", x), mlp_files.eager(x), rtol=1e-5, atol=1e-5)


def test_fp8_linears_stay_close_to_fp32(mlp_files) -> None:
    # torch._scaled_mm also runs on the CPU, so the FP8 rewrite and its scales are checked here;
    # its speed only matters on Hopper.
    rng = np.random.default_rng(2)
    calib = rng.standard_normal((256, 64), dtype=np.float32)
    be = backends.load(mlp_files.pt2, precision="fp8", calibration=calib)
    assert be.describe()["fp8_layers"] == 3
    x = rng.standard_normal((128, 64), dtype=np.float32)
    ref = mlp_files.eager(x)
    rel = np.abs(be(x) - ref).max() / np.abs(ref).max()
    assert rel < 0.15, f"fp8 relative error {rel:.3f}"


def test_precision_and_device_errors(mlp_files) -> None:
    with pytest.raises(InvalidArgumentError, match="runs on CUDA"):
        backends.load(mlp_files.pt2, precision="fp16")
    with pytest.raises(InvalidArgumentError, match=r"fp8.*torch\.export"):
        backends.load(mlp_files.torchscript, precision="fp8", calibration=np.zeros((4, 64)))
    with pytest.raises(InvalidArgumentError, match="calibration"):
        backends.load(mlp_files.pt2, precision="fp8")
    with pytest.raises(InvalidArgumentError, match="expected 'cpu' or 'cuda"):
        backends.load(mlp_files.pt2, device="tpu")
    if not CUDA:
        with pytest.raises(UnavailableError, match="no CUDA device"):
            backends.load(mlp_files.pt2, device="cuda")


def test_callable_rejects_file_options() -> None:
    with aiarch.Runtime() as rt, pytest.raises(InvalidArgumentError, match="apply to model files"):
        rt.add_model("f", lambda x: x, device="cuda")


def test_eager_model_with_many_layers_under_concurrent_instances(mlp_files) -> None:
    # Two batcher instances call the same module from two threads at once.
    with aiarch.Runtime() as rt:
        rt.add_model(
            "mlp",
            mlp_files.pt2,
            batching=aiarch.BatchConfig(max_batch_size=16, instances=2, inline_execution=False),
        )
        rng = np.random.default_rng(3)
        xs = [rng.standard_normal((8, 64), dtype=np.float32) for _ in range(40)]

        async def main() -> list[np.ndarray]:
            return await asyncio.gather(*(rt.infer("mlp", x) for x in xs))

        for x, y in zip(xs, asyncio.run(main())):
            np.testing.assert_allclose(y, mlp_files.eager(x), rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("precision", [None, "fp16", "bf16"])
def test_cuda_graphs_match_eager(mlp_files, precision: str | None) -> None:
    be = backends.load(
        mlp_files.pt2, device="cuda", precision=precision, max_batch_size=64, batch_sizes=(1, 8, 64)
    )
    be.warm_up()
    assert be.cuda_graphs and be.buckets == (1, 8, 64)
    tol = 1e-4 if precision is None else 3e-2
    for rows in (1, 5, 8, 64, 100):
        x = np.random.default_rng(rows).standard_normal((rows, 64), dtype=np.float32)
        np.testing.assert_allclose(be(x), mlp_files.eager(x), rtol=tol, atol=tol)


@pytest.mark.gpu
@needs_cuda
def test_runtime_on_cuda_uses_buckets_as_preferred_sizes(mlp_files) -> None:
    with aiarch.Runtime() as rt:
        info = rt.add_model(
            "g", mlp_files.pt2, device="cuda", batching=aiarch.BatchConfig(max_batch_size=32)
        )
        assert info.batching.preferred_batch_sizes == (1, 2, 4, 8, 16, 32)
        x = np.ones((3, 64), np.float32)
        np.testing.assert_allclose(rt.infer_sync("g", x), mlp_files.eager(x), rtol=1e-4, atol=1e-4)
