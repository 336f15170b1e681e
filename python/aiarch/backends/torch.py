"""PyTorch backend: ``torch.export`` programs (``.pt2``) and TorchScript (``.pt``).

CPU: the model runs under ``torch.inference_mode`` on zero-copy views of the batch.

CUDA: weights optionally cast to fp16/bf16 (or Linear layers to FP8 on Hopper); each instance
(one per batcher worker) owns a CUDA stream, pinned host staging buffers and, by default, one
CUDA graph per batch-size bucket, captured at warm-up. The Runtime makes the buckets the
batcher's preferred sizes, so a batch arrives padded to a bucket and costs one host-to-device
copy, one graph replay and one device-to-host copy.
"""

from __future__ import annotations

import queue
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aiarch.config import TensorSpec
from aiarch.errors import InvalidArgumentError, UnavailableError

from .base import Backend, BackendOptions, Bucketing, check_arity, default_buckets, run_bucketed

__all__ = ["TorchBackend"]

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

        # Buckets: a static batch dim fixes one; CUDA graphs need one per size.
        if static_batch:
            sizes: tuple[int, ...] = (static_batch,)
        elif options.batch_sizes:
            sizes = tuple(options.batch_sizes)
        elif dev.type == "cuda" and options.cuda_graphs:
            sizes = default_buckets(options.max_batch_size)
        else:
            sizes = ()
        self.bucketing = Bucketing(sizes)
        self.buckets = self.bucketing.sizes
        self.cuda_graphs = dev.type == "cuda" and options.cuda_graphs and bool(self.inputs)
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
                        lane.capture(b)
                return lane
        return self._lanes.get()

    def warm_up(self) -> None:
        """Creates every CUDA lane (capturing its graphs) and runs each bucket once."""
        if self.torch_device.type == "cuda":
            lanes = [self._take_lane() for _ in range(self._lanes_wanted)]
            for lane in lanes:
                self._lanes.put(lane)
        if self.inputs:
            super().warm_up()

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(
            precision=self.options.precision or "fp32",
            cuda_graphs=self.cuda_graphs,
            torch=torch.__version__,
        )
        if hasattr(self, "fp8_layers"):
            d["fp8_layers"] = self.fp8_layers
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
