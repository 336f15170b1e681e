# Types of the compiled module aiarch._core (csrc/python/*.cpp). Private: the package's public
# surface is what aiarch.__all__ lists. Keep in step with the bindings; mypy checks the package
# against this file, and tests/core/test_core_stub.py checks it names what the module defines.

import asyncio
from collections.abc import Callable, Iterable, Sequence
from typing import Literal, Protocol, TypeAlias, TypedDict

import numpy as np
import numpy.typing as npt

from aiarch.errors import AiarchError

__version__: str

# Status code name -> value (aiarch.errors.StatusCode).
STATUS_CODES: dict[str, int]

def _raise_status(code: int, message: str, retry_after_s: float = 0.0) -> None:
    """Raises the aiarch.errors class mapped from a core status code (OK raises nothing)."""

# A model's result: one array for a single-output model, else a tuple in output order. Arrays
# are read-only views of the batch's result.
Outputs: TypeAlias = np.ndarray | tuple[np.ndarray, ...]
# What a submit takes: one array for a single-input model, else one per input in order.
Inputs: TypeAlias = np.ndarray | Sequence[np.ndarray]
# (name, dtype, shape after the rows dim).
SpecTuple: TypeAlias = tuple[str, str, tuple[int, ...]]
# A request in flight on an event loop: its future, or (future, inputs[, timing list]).
Pending: TypeAlias = asyncio.Future[object] | tuple[object, ...]
# (request_id, True, outputs) or (request_id, False, the error to raise).
Completed: TypeAlias = tuple[int, Literal[True], Outputs] | tuple[int, Literal[False], AiarchError]

class TensorSpecLike(Protocol):
    """Anything with a tensor's name, dtype name and per-row shape (aiarch.TensorSpec)."""

    @property
    def name(self) -> str: ...
    @property
    def dtype(self) -> str: ...
    @property
    def shape(self) -> Sequence[int]: ...

# ---------------------------------------------------------------- clock

class ManualClock:
    """A clock that moves only on advance()."""

    def __init__(self, start_ns: int = 0) -> None: ...
    @property
    def now_ns(self) -> int: ...
    def advance(self, ns: int) -> None: ...

# ---------------------------------------------------------------- histograms

class HistogramSnapshot:
    def __init__(
        self,
        highest_trackable: int,
        significant_digits: int,
        counts: npt.ArrayLike,
        clamped: int = 0,
    ) -> None: ...
    @property
    def total_count(self) -> int: ...
    @property
    def clamped(self) -> int: ...
    @property
    def min(self) -> int: ...
    @property
    def max(self) -> int: ...
    @property
    def mean(self) -> float: ...
    @property
    def highest_trackable(self) -> int: ...
    @property
    def significant_digits(self) -> int: ...
    def percentile(self, p: float) -> int: ...
    def merge(self, other: HistogramSnapshot) -> None: ...
    def counts(self) -> npt.NDArray[np.uint64]: ...
    def cumulative_counts(self, bounds: Sequence[int]) -> list[int]: ...

class Histogram:
    """Log-linear latency histogram (wait-free record)."""

    def __init__(
        self, highest_trackable: int = 68719476736, significant_digits: int = 3
    ) -> None: ...
    def record(self, value: int) -> None: ...
    def record_n(self, value: int, count: int) -> None: ...
    def record_corrected(self, value: int, expected_interval: int) -> None: ...
    def record_many(self, values: npt.ArrayLike) -> None: ...
    def snapshot(self) -> HistogramSnapshot: ...
    def reset(self) -> None: ...
    @property
    def counts_length(self) -> int: ...

# ---------------------------------------------------------------- cache

class ResponseCache:
    def __init__(
        self, max_bytes: int, ttl_ns: int = 0, shards: int = 16, buckets: int = 65536
    ) -> None: ...
    def lookup(self, key: bytes, now_ns: int = 0) -> bytes | None: ...
    def insert(self, key: bytes, value: bytes, now_ns: int = 0) -> bool: ...
    def erase(self, key: bytes) -> bool: ...
    def invalidate(self) -> None: ...
    def clear(self) -> None: ...
    @property
    def generation(self) -> int: ...
    def counters(self) -> dict[str, int]: ...

# ---------------------------------------------------------------- batching

class BatchConfig:
    def __init__(
        self,
        max_batch_size: int,
        max_delay_ns: int,
        preferred_batch_sizes: Sequence[int],
        max_queue_rows: int,
        instances: int,
        priority_levels: int,
        default_priority_level: int,
        drop_unreachable: bool,
        inline_execution: bool,
        inline_max_exec_ns: int = 0,
    ) -> None: ...

class CompletionQueue:
    def __init__(self) -> None: ...
    @property
    def fd(self) -> int: ...
    def drain(self) -> list[Completed]:
        """Takes every finished request."""
    def resolve(self, pending: dict[int, Pending]) -> int:
        """Takes every finished request and resolves its future: ``pending`` maps a request id
        to its future or to (future, inputs[, timing]); each completed id leaves it. A
        ``timing`` list (a traced request's) receives [enqueue_ns, exec_start_ns, exec_end_ns,
        batch_rows] in the batcher's clock first. Returns how many futures were resolved."""
    def flush(self, models: Iterable[Model], pending: dict[int, Pending]) -> int:
        """Runs the ready batches of ``models`` on this thread, then resolve()s."""

class LoopQueue:
    """One event loop's completion queue, with its requests in flight."""

    def __init__(self, loop: asyncio.AbstractEventLoop, plain_futures: bool = False) -> None:
        """``plain_futures``: ``loop.create_future()`` is asyncio's own, returning
        ``asyncio.Future(loop=loop)``; the queue then makes that future itself."""
    @property
    def fd(self) -> int: ...
    @property
    def pending(self) -> dict[int, Pending]:
        """Request id -> future, or (future, inputs[, timing])."""
    def submit(
        self, model: Model, inputs: Inputs, timeout_ns: int, priority: int
    ) -> tuple[int, asyncio.Future[Outputs]] | tuple[None, Outputs]:
        """Submits one request and files its future: (request id, future), or (None, outputs)
        when the cache answered. An inline model's batch runs at this loop iteration's flush."""
    def flush(self) -> int:
        """Runs the ready batches of the models submitted to, then resolve()s."""
    def resolve(self) -> int:
        """Takes every finished request and resolves its future; returns how many."""

def running_loop() -> asyncio.AbstractEventLoop:
    """asyncio.get_running_loop(), made cheap: no system call per call on Python < 3.12."""

onnx_executor_built: bool
"""Whether this build has the native ONNX Runtime executor (`OnnxSession`)."""

class OnnxSession:
    """An ONNX model run by ONNX Runtime's C API, from the onnxruntime library at `library`. As
    a Model's executor its batches run without Python; called with one array per input it runs
    one batch with the GIL released."""

    def __init__(
        self,
        name: str,
        library: str,
        model_path: str,
        inputs: Sequence[TensorSpecLike],
        outputs: Sequence[TensorSpecLike],
        intra_op_threads: int = 1,
        inter_op_threads: int = 1,
        allow_spinning: bool = False,
    ) -> None: ...
    @property
    def version(self) -> str: ...
    def __call__(self, *arrays: np.ndarray) -> tuple[np.ndarray, ...]: ...

class Model:
    def __init__(
        self,
        name: str,
        fn: Callable[..., object] | OnnxSession,
        inputs: Sequence[TensorSpecLike],
        outputs: Sequence[TensorSpecLike],
        batching: BatchConfig,
        cache: ResponseCache | None = None,
        clock: ManualClock | None = None,
    ) -> None: ...
    def submit(
        self, inputs: Inputs, timeout_ns: int, priority: int, queue: CompletionQueue
    ) -> int | Outputs:
        """The request id, or the outputs when the cache answered."""
    def submit_sync(self, inputs: Inputs, timeout_ns: int, priority: int) -> Outputs: ...
    def cancel(self, request_id: int) -> bool: ...
    def run_ready(self) -> int: ...
    def shutdown(self, drain: bool) -> None: ...
    def stats(self) -> dict[str, int | float]:
        """Counters (ints) and service_rate_rows_per_s (float)."""
    def histogram(self, which: str) -> HistogramSnapshot:
        """queue, execution, end_to_end or batch_size; another name raises InvalidArgumentError."""
    def input_specs(self) -> list[SpecTuple]: ...
    def output_specs(self) -> list[SpecTuple]: ...

# ---------------------------------------------------------------- HTTP front end

# A request the native path leaves to the App:
# (slot, method, path, query, headers read by the App (lowercase), body, keep_alive,
#  traced: chosen for tracing by `HttpFront.trace_every` or a sampled traceparent).
ForwardedRequest: TypeAlias = tuple[int, bytes, bytes, bytes, dict[bytes, bytes], bytes, bool, bool]

# A traced request answered natively: (path, model, the caller's traceparent and tracestate
# when its traceparent was valid else None, trace_id, span_id, start, submit, enqueue,
# exec_start, exec_end, batch_rows, encode_start, encode_end, end, status, cache_hit, error);
# times in time.monotonic_ns() nanoseconds, 0 for a stage not reached.
TracedRequest: TypeAlias = tuple[
    bytes,
    str,
    str | None,
    str | None,
    int,
    int,
    int,
    int,
    int,
    int,
    int,
    int,
    int,
    int,
    int,
    int,
    bool,
    str,
]

class HttpFront:
    """The native request path shared by the connections of one event loop."""

    def __init__(
        self,
        max_header_bytes: int,
        max_headers: int,
        max_body_bytes: int,
        default_timeout_ns: int = 0,
    ) -> None: ...
    @property
    def fd(self) -> int:
        """Readable when completions wait (see `drain`)."""
    @property
    def read_fd(self) -> int:
        """Readable while a connection read natively has input (-1: no native reads)."""
    def read_ready(
        self, now: float, max_owed: int
    ) -> list[tuple[int, list[ForwardedRequest] | None, int]]:
        """Reads every natively read connection with input, once; returns (connection id,
        forwarded requests or None, ended: -1 EOF, an errno, else 0) for those that need
        the caller. Submit what was decoded with `flush`."""
    def read_and_flush(
        self, now: float, max_owed: int
    ) -> tuple[list[tuple[int, list[ForwardedRequest] | None, int]], list[int]]:
        """`read_ready` then `flush` in one call: (read events, ids of connections with
        output to write)."""
    @property
    def draining(self) -> bool: ...
    @draining.setter
    def draining(self, value: bool) -> None: ...
    @property
    def in_flight(self) -> int: ...
    @property
    def trace_every(self) -> int:
        """Every N-th request, and each with a sampled traceparent, is traced (0: off): one
        the native path answers is recorded for `take_traces`, the others are forwarded to
        the App traced."""
    @trace_every.setter
    def trace_every(self, value: int) -> None: ...
    @property
    def trace_native(self) -> bool:
        """Traced requests the native path answers stay native (default); off, every traced
        request is forwarded."""
    @trace_native.setter
    def trace_native(self, value: bool) -> None: ...
    def register_model(
        self,
        name: str,
        version: str,
        model: Model,
        inputs: Sequence[SpecTuple],
        output_names: Sequence[str],
        record_predictions: bool = False,
    ) -> None:
        """Serves v2 infer requests for `name` natively through the batcher of `model`; with
        `record_predictions`, answered requests that carry an id are kept for
        `take_predictions`."""
    def take_predictions(self) -> list[tuple[str, str, list[str], bytes, int]]:
        """(model, version, ids, float64 values as bytes, width) per model since the last
        call."""
    @property
    def predictions_dropped(self) -> int: ...
    def take_traces(self) -> list[TracedRequest]:
        """The traced requests answered natively since the last call."""
    @property
    def traces_dropped(self) -> int: ...
    def unregister_model(self, name: str) -> bool: ...
    def registered(self) -> list[str]: ...
    def register_route(
        self,
        name: str,
        inputs: Sequence[SpecTuple],
        output_names: Sequence[str],
        arms: Sequence[tuple[str, Model, int, bool]],
        shadow: tuple[str, Model, float, int] | None = None,
    ) -> None:
        """Serves `name` natively over a canary split: arms are (version, model, weight,
        record_predictions), all taking `inputs`; `shadow` is (version, model, fraction,
        max_in_flight). A total weight of 0 registers nothing."""
    def unregister_route(self, name: str) -> bool: ...
    def registered_routes(self) -> list[str]: ...
    def take_route_picks(self, name: str) -> list[int]:
        """Requests each arm of route `name` got since the last call, in arm order."""
    def take_shadow_counts(self, name: str) -> list[tuple[str, str, int]]:
        """Mirrored requests of route `name` as (version, outcome, count) since the last
        call."""
    def connect(self, id: int) -> HttpConnection: ...
    def run_ready(self) -> int:
        """Runs the batches this loop iteration's submits made ready; returns how many ran."""
    def drain(self) -> list[int]:
        """Encodes waiting completions; returns the ids of connections with output left to
        write (what direct writes did not send)."""
    def flush(self) -> list[int]:
        """run_ready() then drain(); the batches run inline are answered without a wake-up."""

class HttpConnection:
    """One socket's parser, native requests and response order."""

    @property
    def id(self) -> int: ...
    def feed(self, data: bytes, now: float = 0.0) -> list[ForwardedRequest] | None:
        """Parses one read received at `now`; returns the requests for the App (None: none)."""
    def needs_write(self, max_owed: int) -> bool:
        """Output to write, the connection to close, or `max_owed` responses owed."""
    def respond(self, slot: int, data: bytes, keep_alive: bool) -> None: ...
    def take_output(self) -> bytes: ...
    def attach_socket(self, fd: int) -> bool:
        """Sends responses straight to this socket (dup()ed) while `direct_writes` is set."""
    @property
    def direct_writes(self) -> bool:
        """Responses a drain encodes go straight to the attached socket."""
    @direct_writes.setter
    def direct_writes(self, allowed: bool) -> None: ...
    def start_reading(self) -> bool:
        """Reads the attached socket natively (the front's `read_ready`); False when it cannot."""
    def set_reading(self, on: bool) -> bool:
        """Pauses or resumes native reading; False when it could not be resumed."""
    @property
    def reading(self) -> bool: ...
    def stop_reading(self) -> None:
        """Ends native reading: the socket is the caller's to read again."""
    @property
    def last_active(self) -> float:
        """The `now` of the last read fed (or as set)."""
    @last_active.setter
    def last_active(self, now: float) -> None: ...
    @property
    def want_close(self) -> bool: ...
    @property
    def linger(self) -> bool: ...
    @property
    def owed(self) -> int: ...
    @property
    def in_request(self) -> bool: ...
    @property
    def phase(self) -> Literal[0, 1, 2]:
        """0 nothing buffered, 1 part of a request head, 2 a whole head and part of its body."""
    @property
    def phase_since(self) -> float:
        """The `now` of the read that began the current phase."""
    def fail(self, status: int, message: str) -> None:
        """Answers `status` after the responses owed, reads nothing more, and closes."""
    @property
    def closed(self) -> bool: ...
    def close(self) -> None: ...

# ---------------------------------------------------------------- features

# Entity ids: integers (an int64 table) or str/bytes (a string table).
EntityIds: TypeAlias = npt.ArrayLike | Sequence[str | bytes]

class FeatureTable:
    """In-process online feature table: entity key -> 32-bit slots + blob + event time."""

    def __init__(
        self, width: int, key_kind: str = "int64", shards: int = 16, initial_slots: int = 1024
    ) -> None: ...
    def upsert(
        self,
        ids: EntityIds,
        values: npt.ArrayLike,
        event_ns: npt.ArrayLike,
        blobs: Sequence[bytes] | None = None,
    ) -> int: ...
    def gather_blobs(
        self, ids: EntityIds, now_ns: int, ttl_ns: int = 0
    ) -> tuple[list[bytes], npt.NDArray[np.uint8]]: ...
    def read(self, id: int | str | bytes) -> tuple[npt.NDArray[np.float32], int] | None: ...
    def snapshot(self, path: str) -> None: ...
    def load_snapshot(self, path: str) -> int: ...
    @property
    def width(self) -> int: ...
    @property
    def key_kind(self) -> str: ...
    def counters(self) -> dict[str, int]: ...

# (table, columns, defaults, ttl_ns, out_offset)
PlanSegment: TypeAlias = tuple[FeatureTable, Sequence[int], Sequence[float], int, int]

class FeaturePlan:
    """A resolved multi-table gather into one float32 array."""

    def __init__(self, segments: Sequence[PlanSegment], out_width: int) -> None: ...
    def gather(
        self, ids: EntityIds, now_ns: int
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.uint8]]: ...
    @property
    def out_width(self) -> int: ...
    @property
    def key_kind(self) -> str: ...

# ---------------------------------------------------------------- drift

class NumericSummary(TypedDict):
    edges: npt.NDArray[np.float64]
    counts: npt.NDArray[np.uint64]
    sums: npt.NDArray[np.float64]
    finite: int
    min: float
    max: float
    std: float

def summarize_numeric(
    data: npt.ArrayLike, edges: Sequence[Sequence[float]]
) -> list[NumericSummary]: ...
def quantile_edges(
    data: npt.ArrayLike, quantiles: Sequence[float], rows: npt.ArrayLike | None = None
) -> list[list[float]]: ...

class DriftSketch:
    def __init__(self, kinds: Sequence[int], points: Sequence[Sequence[float]]) -> None: ...
    def count(self, batch: npt.ArrayLike) -> None: ...
    def bin_of(self, feature: int, value: float) -> int: ...
    def take_window(self) -> npt.NDArray[np.uint64]: ...
    def peek_window(self) -> npt.NDArray[np.uint64]: ...
    def totals(self) -> npt.NDArray[np.uint64]: ...
    @property
    def num_features(self) -> int: ...
    @property
    def num_bins(self) -> int: ...
    @property
    def values_counted(self) -> int: ...
    @property
    def offsets(self) -> npt.NDArray[np.uint64]: ...

# ---------------------------------------------------------------- load generator

class LoadProgress(TypedDict):
    sent: int
    completed: int
    errors: int
    measuring: bool
    done: bool
    elapsed_s: float

class LoadResult(TypedDict):
    latency: HistogramSnapshot
    service: HistogramSnapshot
    send_lag: HistogramSnapshot
    scheduled: int
    sent: int
    completed: int
    succeeded: int
    io_errors: int
    timeouts: int
    unsent: int
    waited_for_connection: int
    succeeded_in_window: int
    status_counts: dict[int, int]
    window_s: float
    stopped: bool
    first_error: str

class LoadGenerator:
    """Native HTTP/1.1 open/closed-loop load generator (epoll)."""

    def __init__(
        self,
        host: str,
        port: int,
        requests: Sequence[bytes],
        mode: str = "constant",
        rate_per_s: float = 0.0,
        threads: int = 1,
        connections: int = 16,
        pipeline: int = 1,
        warmup_s: float = 0.0,
        duration_s: float = 0.0,
        max_requests: int = 0,
        drain_timeout_s: float = 10.0,
        connect_timeout_s: float = 2.0,
        seed: int = 1,
    ) -> None: ...
    def start(self) -> None: ...
    def wait(self, timeout_s: float = -1.0) -> bool: ...
    def run(self) -> None: ...
    def stop(self) -> None: ...
    def progress(self) -> LoadProgress: ...
    def result(self) -> LoadResult: ...
