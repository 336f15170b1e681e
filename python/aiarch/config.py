"""Configuration of the runtime's per-model batching and caching."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["BatchConfig", "CacheConfig", "TensorSpec"]

_DTYPES = (
    "bool",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "int8",
    "int16",
    "int32",
    "int64",
    "float16",
    "bfloat16",
    "float32",
    "float64",
)


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a model: name, dtype and the shape of one row."""

    name: str
    """Tensor name, as used by the v2 protocol and by mapping-style inputs."""
    dtype: str = "float32"
    """numpy dtype name: bool, (u)int8..64, float16, bfloat16, float32 or float64."""
    shape: tuple[int, ...] = ()
    """Dimensions after the batch (row) dimension; all fixed."""

    def __post_init__(self) -> None:
        dtype = self.dtype if isinstance(self.dtype, str) else np.dtype(self.dtype).name
        if dtype not in _DTYPES:
            raise ValueError(
                f"TensorSpec {self.name!r}: unknown dtype {dtype!r}; expected one of {_DTYPES}"
            )
        object.__setattr__(self, "dtype", dtype)
        shape = tuple(int(d) for d in self.shape)
        if any(d < 0 for d in shape):
            raise ValueError(
                f"TensorSpec {self.name!r}: dims after the batch dim must be >= 0, got {shape}"
            )
        object.__setattr__(self, "shape", shape)


@dataclass(frozen=True)
class BatchConfig:
    """How the native batcher forms batches for one model.

    By default batching is idle-aware: a request that arrives while an execution
    instance is free starts at once, and requests that arrive while every instance
    is busy queue and run together as the next batch as soon as one frees. Low load
    pays only the model's own time; under load batches fill by themselves.

    When a batch of several requests fails, it is split in halves that run again
    (recursively) so that only the requests whose rows make the model fail get its
    error. The extra executions are bounded: each one spends a credit of an
    allowance of ``2 * max_batch_size`` that only successful requests refill (two
    credits each), so a model that fails on every batch does not multiply its work.
    ``Runtime.stats()["isolation"]`` counts them.
    """

    max_batch_size: int = 64
    """Most rows in one batch (and in one request)."""
    max_delay_us: float = 0.0
    """Fixed fill wait (opt-in): how long the oldest queued request waits for company
    even when an instance is idle. 0 (default) never waits. A wait pays when fuller
    batches are worth the added latency — a GPU model whose batch costs about the same
    at 8 rows as at 64, under steady load that brings company within the wait; at low
    load every request pays it in full. A batch still closes early when full or when
    the earliest deadline in it requires."""
    preferred_batch_sizes: tuple[int, ...] = ()
    """Batch sizes the model runs best at; a batch is zero-padded up to the next one."""
    max_queue_rows: int = 4096
    """Admission bound: submits beyond it fail at once with ResourceExhaustedError."""
    instances: int = 1
    """Batches in flight at once (executor threads)."""
    priority_levels: int = 1
    """Priority levels 1..N (1 is served first); requests pick one with ``priority``."""
    default_priority_level: int = 0
    """Level of requests that give no priority; 0 means the lowest level."""
    drop_unreachable: bool = True
    """Expire requests whose deadline the measured execution time can no longer meet."""
    inline_execution: bool | None = None
    """Run a batch on the submitting thread when that submit closes it and an instance
    is free: no thread hand-off. Best for models that hold the GIL (numpy code) and for
    fast models; a slow model that releases the GIL (torch, onnxruntime) overlaps the
    event loop better on a batcher thread. None (default) picks: on for callables; on
    for model files too, bounded by ``inline_max_exec_us`` (1000 unless set), so that a
    fast model answers an idle request on the event loop while slow batches still run
    on a batcher thread."""
    inline_max_exec_us: float | None = None
    """With inline execution, run inline only a batch whose measured execution time
    (moving average for its size) is at most this; a batcher thread runs slower batches,
    and every batch until one of its size has been measured. None: no bound, except for
    model files on the default ``inline_execution`` (1000 µs)."""

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "preferred_batch_sizes", tuple(int(s) for s in self.preferred_batch_sizes)
        )
        if self.max_delay_us < 0:
            raise ValueError(f"BatchConfig.max_delay_us must be >= 0, got {self.max_delay_us}")
        if self.inline_max_exec_us is not None and self.inline_max_exec_us <= 0:
            raise ValueError(
                f"BatchConfig.inline_max_exec_us must be > 0, got {self.inline_max_exec_us}"
            )


@dataclass(frozen=True)
class CacheConfig:
    """The per-model response cache."""

    max_bytes: int = 64 << 20
    """Byte budget over keys, values and per-entry overhead."""
    ttl_s: float = 0.0
    """Entries older than this are not served; 0 keeps them until evicted."""
    shards: int = 16
    """Writer lock shards (a power of two); readers never lock."""
    buckets: int = field(default=1 << 16)
    """Hash buckets across all shards (a power of two)."""

    def __post_init__(self) -> None:
        if self.max_bytes <= 0:
            raise ValueError(f"CacheConfig.max_bytes must be > 0, got {self.max_bytes}")
        if self.ttl_s < 0:
            raise ValueError(f"CacheConfig.ttl_s must be >= 0, got {self.ttl_s}")
