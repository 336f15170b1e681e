"""PyTorch backend: ``torch.export`` programs (``.pt2``) and TorchScript (``.pt``).

CPU: the model runs under ``torch.inference_mode`` on zero-copy views of the batch.

CUDA: weights optionally cast to fp16/bf16 (or Linear layers to FP8 on Hopper); each instance
(one per batcher worker) owns a CUDA stream, pinned host staging buffers and, by default, one
CUDA graph per batch-size bucket, captured at warm-up. The Runtime makes the buckets the
batcher's preferred sizes, so a batch arrives padded to a bucket and costs one host-to-device
copy, one graph replay and one device-to-host copy.

``compile`` (torch.export programs): the model is wrapped in ``torch.compile`` with static
shapes, so each batch-size bucket gets its own specialised program, and warm-up compiles every
bucket before the model is ready (the time is in ``describe()["compile"]`` and the log). The
buckets are always set when compiling (powers of two up to max_batch_size unless given), so a
batch never reaches an uncompiled shape. Inductor's FX graph cache (on by default, under
``TORCHINDUCTOR_CACHE_DIR``, else ``/tmp/torchinductor_$USER``) makes a restart with the same
model, shapes and torch version load compiled code from disk instead of generating it again;
dynamo still traces the model anew in each process. On CUDA with CUDA graphs the backend captures
the compiled kernels in its own graph per bucket, so inductor's own CUDA graphs are turned off:
"reduce-overhead" then compiles like "default" and "max-autotune" like
"max-autotune-no-cudagraphs" — the graphs they would have added are the backend's.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aiarch.config import TensorSpec
from aiarch.errors import InvalidArgumentError, UnavailableError

from .base import (
    COMPILE_MODES,
    Backend,
    BackendOptions,
    Bucketing,
    check_arity,
    default_buckets,
    run_bucketed,
    zero_batch,
)

__all__ = ["TorchBackend"]

log = logging.getLogger("aiarch.backends")


# The batcher hands read-only views of its gather buffers; inference never writes its inputs,
# so torch's warning about non-writable arrays is noise on every batch.
warnings.filterwarnings("ignore", message="The given NumPy array is not writable")

_PRECISIONS = {None: None, "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_TORCH_TO_NUMPY = {
    torch.float32: "float32",
    torch.float64: "float64",
    torch.float16: "float16",
    torch.bfloat16: "bfloat16",
    torch.int64: "int64",
    torch.int32: "int32",
    torch.int16: "int16",
    torch.int8: "int8",
    torch.uint8: "uint8",
    torch.bool: "bool",
}


def _load_module(path: Path, fmt: str, device: str) -> tuple[Any, tuple[TensorSpec, ...], int]:
    """(callable module, input specs, static batch size or 0 when the batch dim is dynamic)."""
    try:
        if fmt == "torchscript":
            return torch.jit.load(str(path), map_location=device).eval(), (), 0
        ep = torch.export.load(str(path))
    except Exception as e:
        raise InvalidArgumentError(
            f"cannot load {fmt} model {str(path)!r}: {type(e).__name__}: {e}"
        ) from None
    specs: list[TensorSpec] = []
    static_batch = 0
    user_inputs = set(ep.graph_signature.user_inputs)
    for node in ep.graph.nodes:
        if node.op != "placeholder" or node.name not in user_inputs:
            continue
        val = node.meta.get("val")
        if not isinstance(val, torch.Tensor) or val.dim() < 1:
            raise InvalidArgumentError(
                f"{str(path)!r}: input {node.name!r} is not a tensor with a batch dimension"
            )
        dims = list(val.shape)
        if any(not isinstance(d, int) for d in dims[1:]):
            raise InvalidArgumentError(
                f"{str(path)!r}: input {node.name!r} has dynamic dims after the batch dim "
                f"({dims}); only the batch dim may be dynamic"
            )
        if isinstance(dims[0], int):
            static_batch = max(static_batch, dims[0])
        dtype = _TORCH_TO_NUMPY.get(val.dtype)
        if dtype is None:
            raise InvalidArgumentError(f"{str(path)!r}: input dtype {val.dtype} is not supported")
        specs.append(TensorSpec(node.name, dtype, tuple(int(d) for d in dims[1:])))
    module = ep.module()
    return module.to(device), tuple(specs), static_batch


class _CudaInstance:
    """One execution lane on the GPU: a stream, pinned staging buffers, graphs per bucket."""

    def __init__(self, owner: TorchBackend) -> None:
        self.owner = owner
        self.stream = torch.cuda.Stream(device=owner.torch_device)
        top = max(owner.bucketing.sizes or (owner.max_rows,))
        self.pinned_in = [
            torch.empty((top, *s.shape), dtype=_host_dtype(s), pin_memory=True)
            for s in owner.inputs
        ]
        self.static_in: dict[int, list[torch.Tensor]] = {}
        self.static_out: dict[int, list[torch.Tensor]] = {}
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.pool = torch.cuda.graph_pool_handle()

    def capture(self, bucket: int) -> None:
        o = self.owner
        with torch.cuda.stream(self.stream):
            ins = [
                torch.zeros((bucket, *s.shape), dtype=o.device_dtype(s), device=o.torch_device)
                for s in o.inputs
            ]
            with torch.inference_mode():
                for _ in range(2):  # settle lazy init / autotuning outside the capture
                    o.module(*ins)
            self.stream.synchronize()
            graph = torch.cuda.CUDAGraph()
            with (
                torch.inference_mode(),
                torch.cuda.graph(graph, pool=self.pool, stream=self.stream),
            ):
                out = o.module(*ins)
        outs = list(out) if isinstance(out, (tuple, list)) else [out]
        self.static_in[bucket], self.static_out[bucket], self.graphs[bucket] = ins, outs, graph

    def run(self, bucket: int, *arrays: np.ndarray) -> tuple[np.ndarray, ...]:
        o = self.owner
        n = arrays[0].shape[0]
        with torch.cuda.stream(self.stream), torch.inference_mode():
            device_in = []
            for i, a in enumerate(arrays):
                staged = self.pinned_in[i][:n]
                staged.numpy()[...] = a
                device_in.append(staged.to(o.torch_device, non_blocking=True))
            graph = self.graphs.get(bucket) if o.cuda_graphs else None
            if graph is not None:
                for dst, src in zip(self.static_in[bucket], device_in):
                    dst.copy_(src)
                graph.replay()
                outs = self.static_out[bucket]
            else:
                cast = [x.to(o.device_dtype(s)) for x, s in zip(device_in, o.inputs)]
                out = o.module(*cast)
                outs = list(out) if isinstance(out, (tuple, list)) else [out]
            host = [x.to("cpu", dtype=_host_out_dtype(x.dtype), non_blocking=True) for x in outs]
            self.stream.synchronize()
        return tuple(h.numpy() for h in host)


def _host_dtype(s: TensorSpec) -> torch.dtype:
    return torch.float32 if s.dtype == "bfloat16" else getattr(torch, s.dtype)


def _host_out_dtype(d: torch.dtype) -> torch.dtype:
    # numpy has no bfloat16 and fp16 outputs are surprising to clients: hand back float32.
    return torch.float32 if d in (torch.float16, torch.bfloat16) else d


def _check_compile_mode(mode: str | None, fmt: str) -> None:
    if mode is None:
        return
    if mode not in COMPILE_MODES:
        raise InvalidArgumentError(
            f"compile mode {mode!r}: expected one of {list(COMPILE_MODES)} (or None for no compile)"
        )
    if fmt != "torch_export":
        raise InvalidArgumentError(
            f"compile={mode!r} needs a torch.export (.pt2) program; a {fmt} model runs as loaded "
            "(TorchScript is compiled by its own JIT, not by torch.compile)"
        )


def _inductor_mode(mode: str, own_cuda_graphs: bool) -> str:
    """The torch.compile mode to use. With the backend's own graph per bucket, inductor's CUDA
    graphs would be captured inside it, which CUDA does not allow; the backend's graph gives the
    same launch savings, so only the kernel choices of the mode are kept."""
    if not own_cuda_graphs:
        return mode
    return {"default": "default", "reduce-overhead": "default"}.get(
        mode, "max-autotune-no-cudagraphs"
    )


def _fx_cache_counts() -> dict[str, int]:
    from torch._dynamo.utils import counters

    c = counters["inductor"]
    return {"hits": int(c["fxgraph_cache_hit"]), "misses": int(c["fxgraph_cache_miss"])}


def _inductor_cache_dir() -> str:
    """Where inductor keeps compiled code across processes ($TORCHINDUCTOR_CACHE_DIR or its
    default under the temp dir)."""
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    return str(cache_dir())


class TorchBackend(Backend):
    """Runs a ``.pt2`` or TorchScript model on CPU or one CUDA device."""

    def __init__(self, path: Path, fmt: str, options: BackendOptions) -> None:
        self.path = str(path)
        self.format = fmt
        self.options = options
        try:
            dev = torch.device(options.device)
        except RuntimeError:
            dev = torch.device("meta")  # reported just below with the accepted forms
        if dev.type not in ("cpu", "cuda"):
            raise InvalidArgumentError(f"device {options.device!r}: expected 'cpu' or 'cuda[:N]'")
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise UnavailableError(
                f"device {options.device!r} requested but torch sees no CUDA device "
                f"(torch {torch.__version__}, built with CUDA {torch.version.cuda})"
            )
        if options.precision not in (*_PRECISIONS, "fp8"):
            raise InvalidArgumentError(
                f"precision {options.precision!r}: the torch backend supports fp32, fp16, bf16 "
                "(CUDA) and fp8 (torch.export programs)"
            )
        _check_compile_mode(options.compile, fmt)
        self.torch_device = dev
        self.device = str(dev)
        if options.threads:
            torch.set_num_threads(options.threads)  # process-wide: torch has one intra-op pool
        module, specs, static_batch = _load_module(path, fmt, "cpu")
        self.inputs = specs
        self.max_rows = options.max_batch_size
        self.compute_dtype = (
            _PRECISIONS.get(options.precision) if options.precision != "fp8" else None
        )
        if (
            self.compute_dtype is not None
            and dev.type == "cpu"
            and self.compute_dtype != torch.float32
        ):
            raise InvalidArgumentError(
                f"precision {options.precision!r} runs on CUDA; on CPU use fp32, or INT8 through "
                "ONNX Runtime (`aiarch quantize`)"
            )
        if options.precision == "fp8":
            module = self._to_fp8(module, fmt, options)
        if self.compute_dtype is not None:
            module = module.to(self.compute_dtype)
        self.module = module.to(dev)
        self.cuda_graphs = dev.type == "cuda" and options.cuda_graphs and bool(specs)
        self.compile_mode = options.compile
        self.inductor_mode = (
            _inductor_mode(options.compile, self.cuda_graphs) if options.compile else None
        )
        self._compile_s: dict[int, float] = {}
        self._fx_cache: dict[str, int] = {}
        if self.inductor_mode is not None:
            # Static shapes: one program per bucket (the buckets below make them the only
            # shapes a batch has), fullgraph so a model dynamo cannot take whole fails at load
            # rather than silently running in pieces.
            self.module = torch.compile(
                self.module, mode=self.inductor_mode, dynamic=False, fullgraph=True
            )

        # Buckets: a static batch dim fixes one; CUDA graphs need one per size.
        if static_batch:
            sizes: tuple[int, ...] = (static_batch,)
        elif options.batch_sizes:
            sizes = tuple(options.batch_sizes)
        elif (dev.type == "cuda" and options.cuda_graphs) or options.compile:
            sizes = default_buckets(options.max_batch_size)
        else:
            sizes = ()
        self.bucketing = Bucketing(sizes)
        self.buckets = self.bucketing.sizes
        if options.compile:
            # Dynamo keeps at most `recompile_limit` programs per model (8 by default) and runs
            # eager past it; every bucket must keep its own. Process-wide, so only ever raised.
            limit = torch._dynamo.config.recompile_limit
            torch._dynamo.config.recompile_limit = max(limit, len(self.buckets))
        self._lanes: queue.SimpleQueue[_CudaInstance] = queue.SimpleQueue()
        self._lane_count = 0
        self._lane_lock = threading.Lock()
        self._lanes_wanted = max(1, int(options.extra.get("instances", 1)))

    def _to_fp8(self, module: Any, fmt: str, options: BackendOptions) -> Any:
        if fmt != "torch_export":
            raise InvalidArgumentError("precision 'fp8' needs a torch.export (.pt2) program")
        if options.calibration is None:
            raise InvalidArgumentError(
                "precision 'fp8' needs calibration inputs (BackendOptions.calibration) to set "
                "activation scales"
            )
        from .fp8 import quantize_linears_fp8

        calib = options.calibration
        arrays = calib if isinstance(calib, (tuple, list)) else (calib,)
        batches = [tuple(torch.as_tensor(np.asarray(a)) for a in arrays)]
        module, n = quantize_linears_fp8(module, batches)
        if n == 0:
            raise InvalidArgumentError(
                "precision 'fp8': the model has no Linear layer with dims divisible by 16"
            )
        self.fp8_layers = n
        return module

    def device_dtype(self, s: TensorSpec) -> torch.dtype:
        """The dtype an input has on the device (floats follow the compute precision)."""
        host = _host_dtype(s)
        if self.compute_dtype is not None and host.is_floating_point:
            return self.compute_dtype
        return host

    # ------------------------------------------------------------ execution

    def __call__(self, *arrays: np.ndarray) -> np.ndarray | tuple[np.ndarray, ...]:
        if self.inputs:
            check_arity(self.path, self.inputs, arrays)
        if self.torch_device.type == "cpu":
            outs = run_bucketed(self.bucketing, arrays, self._run_cpu)
        else:
            lane = self._take_lane()
            try:
                outs = run_bucketed(self.bucketing, arrays, lane.run)
            finally:
                self._lanes.put(lane)
        return outs[0] if len(outs) == 1 else outs

    def _run_cpu(self, bucket: int, *arrays: np.ndarray) -> tuple[np.ndarray, ...]:
        with torch.inference_mode():
            out = self.module(*(torch.from_numpy(np.ascontiguousarray(a)) for a in arrays))
        outs = out if isinstance(out, (tuple, list)) else (out,)
        return tuple(o.numpy() if o.dtype != torch.bfloat16 else o.float().numpy() for o in outs)

    def _take_lane(self) -> _CudaInstance:
        try:
            return self._lanes.get_nowait()
        except queue.Empty:
            pass
        with self._lane_lock:
            if self._lane_count < self._lanes_wanted:
                self._lane_count += 1
                lane = _CudaInstance(self)
                if self.cuda_graphs:
                    for b in sorted(self.buckets, reverse=True):  # big first: the pool reuses
                        started = time.perf_counter()
                        lane.capture(b)  # compiles the bucket first when compiling
                        if self.compile_mode:
                            self._compile_s.setdefault(b, time.perf_counter() - started)
                return lane
        return self._lanes.get()

    def warm_up(self) -> None:
        """Creates every CUDA lane (capturing its graphs) and runs each bucket once; with
        ``compile``, that first run of a bucket is its compilation. Called once, at load."""
        cache_before = _fx_cache_counts() if self.compile_mode else {}
        if self.torch_device.type == "cuda":
            lanes = [self._take_lane() for _ in range(self._lanes_wanted)]
            for lane in lanes:
                self._lanes.put(lane)
        if not self.inputs:
            return
        for rows in self.buckets or (1,):
            started = time.perf_counter()
            self(*zero_batch(self.inputs, rows))
            if self.compile_mode:
                self._compile_s.setdefault(rows, time.perf_counter() - started)
        if self.compile_mode:
            after = _fx_cache_counts()
            self._fx_cache = {k: after[k] - cache_before[k] for k in after}
            log.info(
                "%s: torch.compile %s (inductor mode %s) of buckets %s took %.1f s; "
                "FX graph cache: %d hit(s), %d miss(es) under %s",
                self.path,
                self.compile_mode,
                self.inductor_mode,
                list(self.buckets),
                sum(self._compile_s.values()),
                self._fx_cache["hits"],
                self._fx_cache["misses"],
                _inductor_cache_dir(),
            )

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(
            precision=self.options.precision or "fp32",
            cuda_graphs=self.cuda_graphs,
            torch=torch.__version__,
        )
        if hasattr(self, "fp8_layers"):
            d["fp8_layers"] = self.fp8_layers
        if self.compile_mode:
            d["compile"] = {
                "mode": self.compile_mode,
                "inductor_mode": self.inductor_mode,
                "seconds": round(sum(self._compile_s.values()), 3),
                "bucket_seconds": {str(b): round(t, 3) for b, t in sorted(self._compile_s.items())},
                "fx_graph_cache": dict(self._fx_cache),
                "cache_dir": _inductor_cache_dir(),
            }
        return d

    def close(self) -> None:
        self.module = None
        while True:
            try:
                self._lanes.get_nowait()
            except queue.Empty:
                break
        if self.torch_device.type == "cuda":
            torch.cuda.empty_cache()
