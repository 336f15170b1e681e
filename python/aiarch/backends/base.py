"""The one interface every execution backend implements, and the batch-size bucketing they share.

A backend is what the native batcher calls once per batch: ``backend(*arrays) -> array | tuple``.
Besides that call it describes its inputs/outputs (so the Runtime can validate requests and
warm up without user-declared specs), the batch sizes it runs best at (a static-shape model,
one CUDA graph per bucket, a TensorRT profile), and how to warm itself up.
"""

from __future__ import annotations

import abc
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from aiarch.config import TensorSpec
from aiarch.errors import InvalidArgumentError

__all__ = [
    "COMPILE_MODES",
    "Backend",
    "BackendOptions",
    "Bucketing",
    "file_sha256",
    "pad_rows",
    "zero_batch",
]

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")
"""``BackendOptions.compile`` values, named as ``torch.compile`` names its modes."""


@dataclass(frozen=True)
class BackendOptions:
    """How a model file is executed. Every field has a default that suits a CPU server."""

    device: str = "cpu"
    """"cpu", "cuda" or "cuda:N"."""
    precision: str | None = None
    """None keeps the model's own dtypes; "fp16"/"bf16" cast a torch model on CUDA; "fp8" runs
    Linear layers through FP8 matmuls (Hopper); "int8"/"fp16"/"fp8" select TensorRT builder
    precisions."""
    threads: int | None = None
    """Intra-op threads (torch: ``torch.set_num_threads``; ONNX Runtime: per session). None keeps
    torch's default (one per core) and gives an ONNX Runtime session one thread: batching and
    instances supply the parallelism, and a pool thread handed each small batch costs a wake-up
    (a futex call and a context switch) per run. Set it for a large model run at low load."""
    inter_op_threads: int | None = None
    """ONNX Runtime inter-op threads (parallel graph branches); None = 1, since batching already
    supplies the parallelism."""
    batch_sizes: tuple[int, ...] = ()
    """Buckets to compile/capture for (CUDA graphs, TensorRT profile); empty derives them from
    the batching config (its preferred sizes, else powers of two up to max_batch_size)."""
    max_batch_size: int = 64
    """Largest batch the batcher will hand over."""
    cuda_graphs: bool = True
    """On CUDA, capture one graph per bucket so a batch costs one replay."""
    compile: str | None = None
    """torch models: ``torch.compile`` mode ("default", "reduce-overhead", "max-autotune"), one
    specialised program per batch-size bucket, compiled at warm-up; None runs the model as
    loaded. On CUDA with ``cuda_graphs`` the backend's own graph per bucket captures the compiled
    kernels (see `aiarch.backends.torch`)."""
    calibration: Any = None
    """Calibration inputs for precision="fp8" (an array or a tuple of arrays, rows first)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Backend-specific settings: TensorRT's ``cache_dir`` and ``workspace_mb``; ONNX Runtime's
    ``spin`` (let pool threads spin between runs; off by default) and ``native`` (run through
    ONNX Runtime's C API with no Python per batch; on by default where this build has it)."""


class Backend(abc.ABC):
    """A loaded model, ready to run batches. Subclasses set the attributes in ``__init__``."""

    format: str = ""
    """Model format name ("onnx", "torch_export", "torchscript", "tensorrt")."""
    path: str = ""
    """File the model was loaded from."""
    device: str = "cpu"
    """Where it runs."""
    inputs: tuple[TensorSpec, ...] = ()
    """Per-row input specs."""
    outputs: tuple[TensorSpec, ...] = ()
    """Per-row output specs (may be empty until the first batch for models that don't say)."""
    buckets: tuple[int, ...] = ()
    """Batch sizes this backend runs at; empty means any size. The Runtime makes them the
    batcher's preferred sizes, so batches arrive already padded to a bucket."""
    native_executor: Any = None
    """A native executor (``aiarch._core.OnnxSession``) that runs this model's batches exactly as
    ``__call__`` does, with no Python on the way; the Runtime hands it to the batcher when nothing
    needs to see each batch in Python (a monitor or feedback tracker does)."""

    @abc.abstractmethod
    def __call__(self, *arrays: np.ndarray) -> np.ndarray | tuple[np.ndarray, ...]:
        """Runs one batch: one array per input, rows first; returns one array per output."""

    def warm_up(self) -> None:
        """Runs every bucket once (or one row when dynamic) so the first request is not slow."""
        for rows in self.buckets or (1,):
            self(*zero_batch(self.inputs, rows))

    def describe(self) -> dict[str, Any]:
        """A JSON-able summary for logs, /config and benchmarks."""
        return {
            "format": self.format,
            "path": self.path,
            "device": self.device,
            "inputs": [_spec_dict(s) for s in self.inputs],
            "outputs": [_spec_dict(s) for s in self.outputs],
            "buckets": list(self.buckets),
        }

    def close(self) -> None:  # noqa: B027 - optional hook, most backends hold nothing to release
        """Releases device memory and sessions; the backend must not be called afterwards."""


def _spec_dict(s: TensorSpec) -> dict[str, Any]:
    return {"name": s.name, "dtype": s.dtype, "shape": list(s.shape)}


def _np_dtype(name: str) -> Any:
    if name == "bfloat16":
        return np.float32  # numpy has no bfloat16; backends cast on the way in
    return np.dtype(name)


def zero_batch(specs: Sequence[TensorSpec], rows: int) -> list[np.ndarray]:
    """One all-zero array per input spec, ``rows`` rows each (what warm-up runs)."""
    return [np.zeros((rows, *s.shape), dtype=_np_dtype(s.dtype)) for s in specs]


def pad_rows(a: np.ndarray, rows: int) -> np.ndarray:
    """``a`` with zero rows appended up to ``rows`` (returned as is when already that long)."""
    n = a.shape[0]
    if n == rows:
        return a
    out = np.zeros((rows, *a.shape[1:]), dtype=a.dtype)
    out[:n] = a
    return out


@dataclass(frozen=True)
class Bucketing:
    """Maps a batch of n rows onto fixed sizes: the smallest bucket that holds it, or chunks of
    the largest bucket when n exceeds every bucket. An empty bucket list means any size runs."""

    sizes: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        sizes = tuple(sorted({int(s) for s in self.sizes}))
        if any(s < 1 for s in sizes):
            raise InvalidArgumentError(f"batch-size buckets must be >= 1, got {list(self.sizes)}")
        object.__setattr__(self, "sizes", sizes)

    def bucket_for(self, rows: int) -> int:
        """The bucket a batch of ``rows`` runs in (``rows`` itself when dynamic)."""
        if not self.sizes:
            return rows
        for s in self.sizes:
            if s >= rows:
                return s
        return self.sizes[-1]

    def plan(self, rows: int) -> list[tuple[int, int, int]]:
        """(start, stop, bucket) slices covering ``rows`` rows."""
        if not self.sizes or rows <= self.sizes[-1]:
            return [(0, rows, self.bucket_for(rows))]
        top = self.sizes[-1]
        out = []
        for start in range(0, rows, top):
            stop = min(start + top, rows)
            out.append((start, stop, self.bucket_for(stop - start)))
        return out


def default_buckets(max_batch_size: int, preferred: Sequence[int] = ()) -> tuple[int, ...]:
    """Buckets for static-shape execution: the preferred sizes when given (plus the max), else
    powers of two up to ``max_batch_size`` and the max itself."""
    if preferred:
        return tuple(sorted({*preferred, max_batch_size}))
    sizes = []
    s = 1
    while s < max_batch_size:
        sizes.append(s)
        s *= 2
    sizes.append(max_batch_size)
    return tuple(sizes)


def run_bucketed(
    bucketing: Bucketing,
    arrays: Sequence[np.ndarray],
    run: Any,
) -> tuple[np.ndarray, ...]:
    """Runs ``run(bucket, *padded_arrays) -> tuple of outputs`` over the bucket plan of
    ``arrays`` and returns outputs trimmed (and concatenated) back to the batch's rows."""
    rows = arrays[0].shape[0] if arrays else 0
    pieces: list[tuple[np.ndarray, ...]] = []
    for start, stop, bucket in bucketing.plan(rows):
        chunk = [pad_rows(a[start:stop], bucket) for a in arrays]
        outs = run(bucket, *chunk)
        pieces.append(tuple(o[: stop - start] for o in outs))
    if len(pieces) == 1:
        return pieces[0]
    return tuple(np.concatenate(parts) for parts in zip(*pieces))


def check_arity(name: str, specs: Sequence[TensorSpec], arrays: Sequence[np.ndarray]) -> None:
    """Clear error when a batch carries the wrong number of inputs."""
    if len(arrays) != len(specs):
        raise InvalidArgumentError(
            f"model {name!r} expects {len(specs)} input(s) {[s.name for s in specs]}, "
            f"got {len(arrays)}"
        )


def file_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
