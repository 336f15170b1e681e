"""TensorRT backend: ONNX → engine (cached), executed with one context and stream per instance.

Building an engine takes seconds to minutes, so engines are cached on disk under a key made of
everything that makes an engine valid: the ONNX file's sha256, the GPU's name and compute
capability, the TensorRT version, the precision and the optimization profile. A change to any
of them builds a new engine; nothing else does. The builder's timing cache is kept per GPU and
TensorRT version and reused across builds.

Precision follows TensorRT 10's explicit path: a model carrying Q/DQ nodes (``aiarch
quantize``) is built as a strongly typed network, so the quantization in the file is what runs;
``fp16`` on an unquantized model sets the FP16 builder flag; INT8/FP8 without Q/DQ nodes is
refused (implicit calibration is deprecated in TensorRT 10).

The pure parts (keys, profiles, precision plans, the cache) need no GPU and are tested
everywhere; engine building and execution need ``tensorrt`` and a CUDA device.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aiarch.config import TensorSpec
from aiarch.errors import InvalidArgumentError, UnavailableError

from .base import Backend, BackendOptions, Bucketing, check_arity, file_sha256, run_bucketed

__all__ = [
    "BuildPlan",
    "EngineCache",
    "EngineKey",
    "TensorRTBackend",
    "optimization_profile",
    "plan_precision",
    "tensorrt_unavailable_reason",
]

PRECISIONS = ("fp32", "fp16", "bf16", "int8", "fp8")


def tensorrt_unavailable_reason() -> str | None:
    """Why the TensorRT path cannot run here, or None when it can."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return (
            "TensorRT is not installed (the 'tensorrt' Python package, which needs an NVIDIA "
            "GPU and driver). The same ONNX file runs on ONNX Runtime: load it without "
            "backend='tensorrt'"
        )
    try:
        import torch
    except ImportError:
        return "the TensorRT backend uses torch for CUDA buffers and streams: pip install 'aiarch[torch]'"
    if not torch.cuda.is_available():
        return "TensorRT needs a CUDA device and torch sees none"
    return None


@dataclass(frozen=True)
class EngineKey:
    """Everything that makes a serialized engine valid. Equal keys ⇒ the cached engine is reusable."""

    model_sha256: str
    gpu_name: str
    compute_capability: tuple[int, int]
    tensorrt_version: str
    precision: str
    profile: tuple[tuple[str, tuple[int, ...], tuple[int, ...], tuple[int, ...]], ...]

    def digest(self) -> str:
        """Stable sha256 of the key (the cache file name)."""
        blob = json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()


def optimization_profile(
    inputs: Sequence[TensorSpec], max_batch_size: int, preferred: Sequence[int] = ()
) -> tuple[tuple[str, tuple[int, ...], tuple[int, ...], tuple[int, ...]], ...]:
    """One profile over the batch dim: min 1, opt the largest preferred size (else the max),
    max the batcher's max_batch_size. Returns (name, min, opt, max) shapes per input."""
    if max_batch_size < 1:
        raise InvalidArgumentError(f"max_batch_size must be >= 1, got {max_batch_size}")
    bad = [p for p in preferred if not 1 <= p <= max_batch_size]
    if bad:
        raise InvalidArgumentError(
            f"preferred batch sizes {bad} fall outside 1..max_batch_size={max_batch_size}"
        )
    opt = max(preferred) if preferred else max_batch_size
    return tuple(
        (s.name, (1, *s.shape), (opt, *s.shape), (max_batch_size, *s.shape)) for s in inputs
    )


@dataclass(frozen=True)
class BuildPlan:
    """How the builder is configured for a precision request."""

    strongly_typed: bool
    """Build a strongly typed network: tensor types (and Q/DQ scales) come from the ONNX file."""
    flags: tuple[str, ...]
    """tensorrt.BuilderFlag names to set."""


def plan_precision(
    precision: str | None, has_qdq: bool, compute_capability: tuple[int, int]
) -> BuildPlan:
    """The builder configuration for ``precision`` on a GPU of ``compute_capability``."""
    p = precision or "fp32"
    if p not in PRECISIONS:
        raise InvalidArgumentError(f"precision {p!r}: expected one of {list(PRECISIONS)}")
    if p == "fp8" and compute_capability < (8, 9):
        raise InvalidArgumentError(
            f"fp8 needs an Ada or Hopper GPU (compute capability >= 8.9), this one is "
            f"{compute_capability[0]}.{compute_capability[1]}"
        )
    if p == "bf16" and compute_capability < (8, 0):
        raise InvalidArgumentError("bf16 needs compute capability >= 8.0")
    if has_qdq:
        # Explicit quantization: the file's Q/DQ nodes decide; a strongly typed network keeps
        # every other tensor in the type the file gives it.
        return BuildPlan(strongly_typed=True, flags=())
    if p in ("int8", "fp8"):
        raise InvalidArgumentError(
            f"precision {p!r} needs a model with Q/DQ nodes (explicit quantization, the path "
            "TensorRT 10 keeps): produce one with `aiarch quantize model.onnx --calibration ...`"
        )
    if p == "fp16":
        return BuildPlan(strongly_typed=False, flags=("FP16",))
    if p == "bf16":
        return BuildPlan(strongly_typed=False, flags=("BF16",))
    return BuildPlan(strongly_typed=False, flags=())


class EngineCache:
    """Serialized engines on disk, one file per EngineKey digest, written atomically."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.dir = Path(directory)
        self._lock = threading.Lock()

    def path_for(self, key: EngineKey) -> Path:
        return self.dir / f"{key.digest()}.engine"

    def timing_cache_path(self, gpu_name: str, tensorrt_version: str) -> Path:
        tag = hashlib.sha256(f"{gpu_name}|{tensorrt_version}".encode()).hexdigest()[:16]
        return self.dir / f"timing-{tag}.cache"

    def get_or_build(self, key: EngineKey, build: Callable[[], bytes]) -> tuple[bytes, bool]:
        """(engine bytes, built) — ``build`` runs only when no engine for ``key`` is cached."""
        path = self.path_for(key)
        with self._lock:
            if path.is_file():
                return path.read_bytes(), False
            data = build()
            self.dir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_bytes(data)
            os.replace(tmp, path)
            (path.with_suffix(".json")).write_text(json.dumps(asdict(key), indent=1))
            return data, True


def onnx_has_qdq(path: str | os.PathLike[str]) -> bool:
    """True when the ONNX graph carries QuantizeLinear/DequantizeLinear nodes."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)


class TensorRTBackend(Backend):
    """Builds (or loads from the cache) a TensorRT engine and runs it on one CUDA device."""

    format = "tensorrt"

    def __init__(self, path: Path, fmt: str, options: BackendOptions) -> None:
        reason = tensorrt_unavailable_reason()
        if reason:
            raise UnavailableError(reason)
        import tensorrt as trt
        import torch

        self.path = str(path)
        self.options = options
        self.trt = trt
        self.torch = torch
        dev = torch.device(options.device if options.device != "cpu" else "cuda")
        self.torch_device = dev
        self.device = str(dev)
        self.logger = trt.Logger(trt.Logger.WARNING)
        props = torch.cuda.get_device_properties(dev)
        cc = (props.major, props.minor)
        if fmt == "tensorrt":
            engine_bytes = path.read_bytes()
        else:
            engine_bytes = self._build_cached(path, options, props.name, cc)
        runtime = trt.Runtime(self.logger)
        self.engine = runtime.deserialize_cuda_engine(engine_bytes)
        if self.engine is None:
            raise InvalidArgumentError(f"{self.path!r}: TensorRT could not deserialize the engine")
        ins: list[TensorSpec] = []
        outs: list[TensorSpec] = []
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name))).name
            shape = tuple(self.engine.get_tensor_shape(name))[1:]
            spec = TensorSpec(name, dtype, tuple(max(d, 0) for d in shape))
            is_input = self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            (ins if is_input else outs).append(spec)
        self.inputs, self.outputs = tuple(ins), tuple(outs)
        _, _, top = self.engine.get_tensor_profile_shape(ins[0].name, 0)
        self.max_rows = int(top[0])
        self.bucketing = Bucketing(())
        self._lock = threading.Lock()
        self._lanes: list[Any] = []

    def _build_cached(
        self, path: Path, options: BackendOptions, gpu_name: str, cc: tuple[int, int]
    ) -> bytes:
        trt = self.trt
        import onnxruntime  # noqa: F401 - only to fail early with a clear message if ONNX is absent

        from .onnx import OnnxBackend

        specs = OnnxBackend(path, BackendOptions()).inputs
        profile = optimization_profile(specs, options.max_batch_size, options.batch_sizes)
        has_qdq = onnx_has_qdq(path)
        plan = plan_precision(options.precision, has_qdq, cc)
        key = EngineKey(
            model_sha256=file_sha256(path),
            gpu_name=gpu_name,
            compute_capability=cc,
            tensorrt_version=trt.__version__,
            precision=options.precision or "fp32",
            profile=profile,
        )
        cache_dir = options.extra.get("cache_dir") or os.path.join(
            os.environ.get("AIARCH_HOME", ".aiarch"), "engines"
        )
        cache = EngineCache(cache_dir)

        def build() -> bytes:
            flags = 0
            if plan.strongly_typed:
                flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
            builder = trt.Builder(self.logger)
            network = builder.create_network(flags)
            parser = trt.OnnxParser(network, self.logger)
            if not parser.parse_from_file(str(path)):
                errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
                raise InvalidArgumentError(f"TensorRT cannot parse {str(path)!r}: {errors}")
            config = builder.create_builder_config()
            workspace = int(options.extra.get("workspace_mb", 1024)) << 20
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
            for flag in plan.flags:
                config.set_flag(getattr(trt.BuilderFlag, flag))
            prof = builder.create_optimization_profile()
            for name, lo, opt, hi in profile:
                prof.set_shape(name, lo, opt, hi)
            config.add_optimization_profile(prof)
            timing_path = cache.timing_cache_path(gpu_name, trt.__version__)
            timing = config.create_timing_cache(
                timing_path.read_bytes() if timing_path.is_file() else b""
            )
            config.set_timing_cache(timing, ignore_mismatch=False)
            serialized = builder.build_serialized_network(network, config)
            if serialized is None:
                raise InvalidArgumentError(f"TensorRT failed to build an engine for {str(path)!r}")
            cache.dir.mkdir(parents=True, exist_ok=True)
            timing_path.write_bytes(memoryview(config.get_timing_cache().serialize()))
            return bytes(serialized)

        data, self.built = cache.get_or_build(key, build)
        self.engine_key = key
        return data

    def _lane(self) -> Any:
        with self._lock:
            if self._lanes:
                return self._lanes.pop()
        return _TrtLane(self)

    def __call__(self, *arrays: np.ndarray) -> np.ndarray | tuple[np.ndarray, ...]:
        check_arity(self.path, self.inputs, arrays)
        lane = self._lane()
        rows = arrays[0].shape[0]
        try:
            if rows <= self.max_rows:  # any size within the profile runs as it is
                outs = lane.run(rows, *arrays)
            else:
                outs = run_bucketed(Bucketing((self.max_rows,)), arrays, lane.run)
        finally:
            with self._lock:
                self._lanes.append(lane)
        return outs[0] if len(outs) == 1 else outs


class _TrtLane:
    """One execution context with its own CUDA stream and pinned host buffers."""

    def __init__(self, owner: TensorRTBackend) -> None:
        torch = owner.torch
        self.owner = owner
        self.context = owner.engine.create_execution_context()
        self.stream = torch.cuda.Stream(device=owner.torch_device)
        n = owner.max_rows

        def host(s: TensorSpec) -> Any:
            return torch.empty((n, *s.shape), dtype=getattr(torch, s.dtype), pin_memory=True)

        def device(s: TensorSpec) -> Any:
            return torch.empty(
                (n, *s.shape), dtype=getattr(torch, s.dtype), device=owner.torch_device
            )

        self.h_in = [host(s) for s in owner.inputs]
        self.d_in = [device(s) for s in owner.inputs]
        self.h_out = [host(s) for s in owner.outputs]
        self.d_out = [device(s) for s in owner.outputs]

    def run(self, rows: int, *arrays: np.ndarray) -> tuple[np.ndarray, ...]:
        o = self.owner
        torch = o.torch
        with torch.cuda.stream(self.stream):
            for spec, h, d, a in zip(o.inputs, self.h_in, self.d_in, arrays):
                h[:rows].numpy()[...] = a
                d[:rows].copy_(h[:rows], non_blocking=True)
                self.context.set_input_shape(spec.name, (rows, *spec.shape))
                self.context.set_tensor_address(spec.name, d.data_ptr())
            for spec, d in zip(o.outputs, self.d_out):
                self.context.set_tensor_address(spec.name, d.data_ptr())
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError(f"TensorRT execution failed for {o.path!r}")
            for h, d in zip(self.h_out, self.d_out):
                h[:rows].copy_(d[:rows], non_blocking=True)
            self.stream.synchronize()
        return tuple(h[:rows].numpy().copy() for h in self.h_out)
