"""TensorRT: engine cache keys, profiles, precision plans and the cache run everywhere; building
and running engines needs TensorRT and a GPU and is marked `tensorrt`."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from aiarch import backends
from aiarch.backends.tensorrt import (
    EngineCache,
    EngineKey,
    optimization_profile,
    plan_precision,
    tensorrt_unavailable_reason,
)
from aiarch.config import TensorSpec
from aiarch.errors import InvalidArgumentError, UnavailableError

REASON = tensorrt_unavailable_reason()


def _key(**changes: object) -> EngineKey:
    base = EngineKey(
        model_sha256="ab" * 32,
        gpu_name="NVIDIA H100 80GB HBM3",
        compute_capability=(9, 0),
        tensorrt_version="10.8.0",
        precision="int8",
        profile=optimization_profile([TensorSpec("x", "float32", (64,))], 256, (64,)),
    )
    return dataclasses.replace(base, **changes)


def test_engine_key_changes_with_every_component() -> None:
    k = _key()
    assert k.digest() == _key().digest()  # stable
    variants = [
        _key(model_sha256="cd" * 32),
        _key(gpu_name="NVIDIA A100-SXM4-80GB"),
        _key(compute_capability=(8, 0)),
        _key(tensorrt_version="10.9.0"),
        _key(precision="fp16"),
        _key(profile=optimization_profile([TensorSpec("x", "float32", (64,))], 512, (64,))),
    ]
    digests = {v.digest() for v in variants}
    assert k.digest() not in digests and len(digests) == len(variants)


def test_profile_spans_one_to_max_with_opt_at_preferred() -> None:
    specs = [TensorSpec("x", "float32", (3, 224, 224)), TensorSpec("m", "int64", (4,))]
    prof = optimization_profile(specs, 256, (32, 128))
    assert prof[0] == ("x", (1, 3, 224, 224), (128, 3, 224, 224), (256, 3, 224, 224))
    assert prof[1] == ("m", (1, 4), (128, 4), (256, 4))
    assert optimization_profile(specs[1:], 16)[0][2] == (16, 4)
    with pytest.raises(InvalidArgumentError, match="outside"):
        optimization_profile(specs, 64, (128,))


def test_precision_plans() -> None:
    h100 = (9, 0)
    assert plan_precision(None, False, h100) == plan_precision("fp32", False, h100)
    assert plan_precision("fp16", False, h100).flags == ("FP16",)
    qdq = plan_precision("int8", True, h100)
    assert qdq.strongly_typed and qdq.flags == ()
    with pytest.raises(InvalidArgumentError, match="Q/DQ"):
        plan_precision("int8", False, h100)
    with pytest.raises(InvalidArgumentError, match=r"8\.9"):
        plan_precision("fp8", True, (8, 0))
    assert plan_precision("fp8", True, (8, 9)).strongly_typed
    with pytest.raises(InvalidArgumentError, match="expected one of"):
        plan_precision("int4", True, h100)


def test_engine_cache_builds_once_per_key(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)
    builds: list[EngineKey] = []

    def build_for(key: EngineKey):
        def build() -> bytes:
            builds.append(key)
            return b"engine:" + key.digest().encode()

        return build

    a, b = _key(), _key(precision="fp16")
    data, built = cache.get_or_build(a, build_for(a))
    assert built and data.startswith(b"engine:")
    assert cache.get_or_build(a, build_for(a)) == (data, False)
    assert EngineCache(tmp_path).get_or_build(a, build_for(a)) == (data, False)  # new process
    assert cache.get_or_build(b, build_for(b))[1] is True
    assert builds == [a, b]
    assert not list(tmp_path.glob("*.tmp*"))


@pytest.mark.skipif(REASON is None, reason="TensorRT is installed here")
def test_fallback_message_names_onnx_runtime(mlp_files) -> None:
    with pytest.raises(UnavailableError, match="ONNX Runtime") as e:
        backends.load(mlp_files.onnx, backend="tensorrt", device="cuda")
    assert "TensorRT" in str(e.value)


@pytest.mark.tensorrt
@pytest.mark.skipif(REASON is not None, reason=REASON or "")
def test_engine_runs_and_is_cached(tmp_path: Path, mlp_files) -> None:
    opts = {"cache_dir": str(tmp_path)}
    be = backends.load(
        mlp_files.onnx, backend="tensorrt", device="cuda", precision="fp16", extra=opts
    )
    assert be.built
    x = np.random.default_rng(0).standard_normal((7, 64), dtype=np.float32)
    np.testing.assert_allclose(be(x), mlp_files.eager(x), rtol=2e-2, atol=2e-2)
    again = backends.load(
        mlp_files.onnx, backend="tensorrt", device="cuda", precision="fp16", extra=opts
    )
    assert not again.built
