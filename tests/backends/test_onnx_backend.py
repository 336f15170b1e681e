"""ONNX Runtime backend: fp32 round trips, static batch dims, bad requests, neighbours unharmed."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch

import aiarch
from aiarch import backends
from aiarch.errors import InvalidArgumentError


def test_runtime_serves_onnx_equal_to_eager(mlp_files) -> None:
    rng = np.random.default_rng(4)
    requests = [rng.standard_normal((n, 64), dtype=np.float32) for n in (1, 2, 31, 64, 9)]
    with aiarch.Runtime() as rt:
        info = rt.add_model("mlp", mlp_files.onnx)
        assert [s.name for s in info.inputs] == ["input"]
        assert [(s.name, s.shape) for s in info.outputs] == [("output", (16,))]

        async def main() -> list[np.ndarray]:
            return await asyncio.gather(*(rt.infer("mlp", x) for x in requests))

        for x, y in zip(requests, asyncio.run(main())):
            np.testing.assert_allclose(y, mlp_files.eager(x), rtol=1e-4, atol=1e-5)


def test_folder_with_model_files_loads(mlp_files) -> None:
    with aiarch.Runtime() as rt:
        info = rt.add_model("m", mlp_files.folder)
        assert info.backend is not None and info.backend["format"] == "torch_export"


def test_static_batch_onnx_is_padded(tmp_path, mlp_files) -> None:
    path = tmp_path / "static.onnx"
    torch.onnx.export(mlp_files.model, (torch.randn(8, 64),), str(path), dynamo=True, verbose=False)
    be = backends.load(path)
    assert be.buckets == (8,)
    x = np.random.default_rng(5).standard_normal((11, 64), dtype=np.float32)
    np.testing.assert_allclose(be(x), mlp_files.eager(x), rtol=1e-4, atol=1e-5)


def test_mismatched_request_fails_alone(mlp_files) -> None:
    with aiarch.Runtime() as rt:
        rt.add_model("mlp", mlp_files.onnx)
        rt.add_model("twin", mlp_files.pt2)
        with pytest.raises(InvalidArgumentError, match="64"):
            rt.infer_sync("mlp", np.zeros((2, 7), np.float32))  # 7 features, model wants 64
        with pytest.raises(InvalidArgumentError):
            rt.infer_sync("mlp", np.zeros((2, 64), np.int64))
        x = np.ones((2, 64), np.float32)
        np.testing.assert_allclose(
            rt.infer_sync("mlp", x), mlp_files.eager(x), rtol=1e-4, atol=1e-5
        )
        np.testing.assert_allclose(
            rt.infer_sync("twin", x), mlp_files.eager(x), rtol=1e-5, atol=1e-5
        )


def test_onnx_refuses_devices_it_does_not_run_on(mlp_files) -> None:
    with pytest.raises(InvalidArgumentError, match="tensorrt"):
        backends.load(mlp_files.onnx, device="cuda")
    with pytest.raises(InvalidArgumentError, match="aiarch quantize"):
        backends.load(mlp_files.onnx, precision="fp16")


def test_file_models_execute_inline_only_while_quick_by_default(mlp_files) -> None:
    with aiarch.Runtime() as rt:
        file = rt.add_model("file", mlp_files.onnx).batching
        assert file.inline_execution is True
        assert file.inline_max_exec_us == 1000.0
        fn = rt.add_model("fn", lambda x: x).batching
        assert fn.inline_execution is True and fn.inline_max_exec_us is None
        forced = aiarch.BatchConfig(inline_execution=True)
        unbounded = rt.add_model("forced", mlp_files.onnx, batching=forced).batching
        assert unbounded.inline_execution is True and unbounded.inline_max_exec_us is None
        off = aiarch.BatchConfig(inline_execution=False)
        assert rt.add_model("off", mlp_files.onnx, batching=off).batching.inline_execution is False


def test_duplicate_name_is_refused_and_the_first_keeps_serving(mlp_files) -> None:
    with aiarch.Runtime() as rt:
        rt.add_model("m", mlp_files.onnx)
        with pytest.raises(aiarch.AlreadyExistsError, match="already loaded"):
            rt.add_model("m", mlp_files.pt2)
        x = np.ones((1, 64), np.float32)
        np.testing.assert_allclose(rt.infer_sync("m", x), mlp_files.eager(x), rtol=1e-4, atol=1e-5)
