"""The embeddable runtime: models behind native batchers, caches and histograms.

Threading model
---------------
``Runtime.infer`` runs on an asyncio event loop (the default loop or uvloop).
Each loop that uses the runtime gets one native completion queue whose file
descriptor the loop watches; a batcher thread wakes the loop once per batch,
and the loop resolves every future of that batch in one pass. ``infer_sync``
blocks the calling thread (with the GIL released) and may be used from any
number of plain threads at once.
"""

from __future__ import annotations

import asyncio
import atexit
import math
import os
import re
import sys
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from aiarch import _core
from aiarch import tracing as _tracing
from aiarch.config import BatchConfig, CacheConfig, TensorSpec
from aiarch.errors import (
    AlreadyExistsError,
    InvalidArgumentError,
    NotFoundError,
    UnavailableError,
)

__all__ = ["ModelInfo", "Runtime"]

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
_PERCENTILES = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p999", 99.9))
_HISTOGRAMS = ("queue", "execution", "end_to_end")
# How long a model file's batch may hold the submitting thread (an event loop) by default:
# long enough for a small model's full batch, short enough that the loop stays responsive.
_MODEL_FILE_INLINE_MAX_EXEC_US = 1000.0


@dataclass(frozen=True)
class ModelInfo:
    """What the runtime knows about one loaded model."""

    name: str
    """Model name."""
    version: str
    """Version label given to add_model."""
    inputs: tuple[TensorSpec, ...]
    """Input specs (empty until the first request when none were declared)."""
    outputs: tuple[TensorSpec, ...]
    """Output specs (empty until the first batch when none were declared or warmed up)."""
    batching: BatchConfig
    """Batch policy."""
    cache: CacheConfig | None
    """Response cache settings, or None when caching is off."""
    ready: bool
    """True once the model can serve (loaded and, when possible, warmed up)."""
    backend: dict[str, Any] | None = None
    """For a model loaded from a file: its format, device, precision and buckets."""


class _Model:
    """Runtime-side state of one model. The native handle may be created lazily."""

    __slots__ = (
        "backend",
        "batching",
        "cache",
        "cache_config",
        "feedback",
        "fn",
        "handle",
        "inputs",
        "lock",
        "monitor",
        "name",
        "outputs",
        "version",
    )

    def __init__(
        self,
        name: str,
        fn: Callable[..., Any],
        version: str,
        batching: BatchConfig,
        cache_config: CacheConfig | None,
    ) -> None:
        self.name = name
        self.fn = fn
        self.version = version
        self.batching = batching
        self.cache_config = cache_config
        self.cache: _core.ResponseCache | None = None
        self.handle: _core.Model | None = None
        self.inputs: tuple[TensorSpec, ...] = ()
        self.outputs: tuple[TensorSpec, ...] = ()
        self.lock = threading.Lock()
        self.backend: Any = None
        self.monitor: Any = None
        self.feedback: Any = None

    def normalize(self, inputs: Any) -> Any:
        """Turns any accepted input form into an ndarray or a tuple of ndarrays.

        Called once per request that is not already a single ndarray.
        """
        specs = self.inputs
        if isinstance(inputs, Mapping):
            if not specs:
                raise InvalidArgumentError(
                    f"model {self.name!r} has no declared inputs; pass arrays in order, not by name"
                )
            names = [s.name for s in specs]
            unknown = sorted(set(inputs) - set(names))
            missing = [n for n in names if n not in inputs]
            if unknown or missing:
                raise InvalidArgumentError(
                    f"model {self.name!r} expects inputs {names}; "
                    f"missing {missing}, unknown {unknown}"
                )
            return tuple(self._as_array(inputs[s.name], s) for s in specs)
        if isinstance(inputs, (tuple, list)):
            if len(specs) <= 1 and not any(isinstance(x, np.ndarray) for x in inputs):
                # A nested list of numbers for a single-input model.
                return self._as_array(inputs, specs[0] if specs else None)
            return tuple(
                self._as_array(x, specs[i] if i < len(specs) else None)
                for i, x in enumerate(inputs)
            )
        return self._as_array(inputs, specs[0] if specs else None)

    @staticmethod
    def _as_array(x: Any, spec: TensorSpec | None) -> np.ndarray:
        if isinstance(x, np.ndarray):
            return x
        # Array-likes (a CPU torch tensor, a memoryview) convert without a
        # copy; plain Python numbers take the declared dtype.
        if (
            hasattr(x, "__array__")
            or hasattr(x, "__array_interface__")
            or isinstance(x, memoryview)
        ):
            return np.asarray(x)
        dtype = spec.dtype if spec is not None and spec.dtype != "bfloat16" else None
        try:
            return np.asarray(x, dtype=dtype)
        except (TypeError, ValueError) as e:
            where = f"input {spec.name!r}" if spec else "input"
            raise InvalidArgumentError(
                f"{where}: cannot convert {type(x).__name__} to an array "
                f"of {dtype or 'numbers'}: {e}"
            ) from None


class _LoopState:
    """One event loop's completion queue and its requests in flight."""

    __slots__ = ("loop", "pending", "queue", "submit")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        # Submits file each request's future in `pending`; a submit to a model that
        # runs batches inline schedules one flush per loop iteration, so that the
        # iteration's requests share a batch.
        self.queue = _core.LoopQueue(loop, _makes_plain_futures(loop))
        # One attribute lookup per request, not two. Typed loosely: the caller tells the
        # (request id, future) and (None, outputs) answers apart by the id.
        self.submit: Callable[[Any, Any, int, int], tuple[Any, Any]] = self.queue.submit
        # request id -> future, or (future, inputs[, timing list of a traced request]).
        # The batcher reads the inputs' bytes until the request completes: while its
        # infer() frame waits, the frame keeps them alive; a frame that leaves early
        # (cancelled, closed) stores (future, inputs) here first.
        self.pending: dict[int, Any] = self.queue.pending


def _makes_plain_futures(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether ``loop.create_future()`` is the stock one of asyncio or uvloop, which returns
    ``asyncio.Future(loop=loop)`` (a loop may override it to make its own futures)."""
    create = type(loop).create_future
    if create is asyncio.BaseEventLoop.create_future:
        return True
    uvloop_loop = sys.modules.get("uvloop.loop")
    return uvloop_loop is not None and create is getattr(uvloop_loop.Loop, "create_future", None)


# asyncio.get_running_loop() minus its per-call getpid() system call (Python < 3.12).
_get_running_loop = _core.running_loop
_ndarray = np.ndarray  # one global lookup per request, not two

_live_runtimes: weakref.WeakSet[Runtime] = weakref.WeakSet()


@atexit.register
def _close_live_runtimes() -> None:
    # Batcher threads must be joined while the interpreter can still give
    # them the GIL.
    for rt in list(_live_runtimes):
        rt.close(drain=False)


# Models of runtimes a forked child inherited, kept for the child's whole life.
_inherited_models: list[Any] = []


def _disown_after_fork() -> None:
    """In a forked child: the parent's runtimes are unusable (their batcher threads exist
    only in the parent, so a request would wait forever and a shutdown would join threads
    that are not there). Each is closed without touching its batchers, whose objects are
    kept so that no destructor ever runs in the child; a call says to create a Runtime
    after the fork (gunicorn's post-fork hook, or lazily in the worker)."""
    for rt in list(_live_runtimes):
        _inherited_models.extend(rt._models.values())
        rt._models = {}
        rt._closed = True
        rt._closed_reason = (
            f"this Runtime was created in process {rt._pid} and cannot be used in a forked "
            "child; create the Runtime after the fork"
        )
    _live_runtimes.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_disown_after_fork)


def _timeout_ns(timeout_s: float | None) -> int:
    if timeout_s is None or timeout_s == math.inf:
        return 0
    if not timeout_s > 0:
        raise InvalidArgumentError(f"timeout_s must be > 0, got {timeout_s}")
    return max(1, int(timeout_s * 1e9))


class Runtime:
    """Models served through native dynamic batchers, response caches and histograms.

    Example::

        rt = aiarch.Runtime()
        rt.add_model("double", lambda x: x * 2,
                     inputs=[aiarch.TensorSpec("x", "float32", (4,))])
        y = rt.infer_sync("double", np.ones((1, 4), np.float32))
    """

    def __init__(self, *, clock: _core.ManualClock | None = None) -> None:
        """``clock``: a :class:`aiarch.ManualClock` for tests; the steady clock by default."""
        self._feedback: dict[str, Any] = {}  # public model name -> FeedbackTracker
        self._clock = clock
        self._models: dict[str, _Model] = {}
        self._loops: dict[asyncio.AbstractEventLoop, _LoopState] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._closed_reason = "runtime is closed"
        self._pid = os.getpid()
        _live_runtimes.add(self)

    # ------------------------------------------------------------ models

    def add_model(
        self,
        name: str,
        model: Callable[..., Any] | str | os.PathLike[str],
        *,
        inputs: Sequence[TensorSpec] | None = None,
        outputs: Sequence[TensorSpec] | None = None,
        version: str = "1",
        batching: BatchConfig | None = None,
        cache: CacheConfig | bool | None = None,
        warmup: bool = True,
        device: str | None = None,
        precision: str | None = None,
        backend: str | None = None,
        backend_options: Mapping[str, Any] | None = None,
        monitor: Any = None,
        compile: str | None = None,
        feedback: Any = None,
    ) -> ModelInfo:
        """Loads a model under ``name``.

        ``model`` is either a model file (``.pt2``, TorchScript ``.pt``, ``.onnx``,
        a TensorRT engine, or a folder holding one; see `aiarch.backends`) or a
        callable. A file's format picks its backend; ``device`` ("cpu", "cuda"),
        ``precision`` ("fp16", "bf16", "fp8", "int8"), ``backend`` (to force
        "tensorrt" for an ONNX file) and ``backend_options`` (fields of
        `aiarch.backends.BackendOptions`) say how it runs. Its batch-size
        buckets (static shapes, CUDA graphs) become the batcher's preferred
        sizes unless ``batching`` sets them. ``compile`` ("default",
        "reduce-overhead", "max-autotune") runs a ``.pt2`` model through
        ``torch.compile``, one program per bucket, compiled before the model is
        ready (with ``warmup``; the time is in ``info.backend["compile"]``).

        A callable is called once per batch, on a batcher thread, with one array
        per input whose first dimension is the batch's rows; it returns an
        array or a tuple of arrays with the same number of rows. When
        ``inputs``/``outputs`` are omitted, ``model.inputs``/``model.outputs``
        are used if present; otherwise the first request fixes the input specs.
        With inputs known and ``warmup``, the model is called once on a zero
        row before it is marked ready, which also learns its output specs (a
        model with a ``warm_up_batch(*arrays)`` method gets that call instead,
        to keep it out of its own counters).
        ``monitor``: an :class:`aiarch.monitor.Monitor` that counts every batch's inputs
        and outputs (not the warm-up's) and reads this model's histograms.
        ``feedback``: an :class:`aiarch.monitor.FeedbackTracker` (see :meth:`enable_feedback`)
        that records every batch's entity ids and outputs when it reads entity ids.
        """
        if self._closed:
            raise UnavailableError(self._closed_reason)
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise InvalidArgumentError(
                f"model name {name!r} is invalid: use 1-128 letters, digits, '_', '-' or '.', "
                "starting with a letter or digit"
            )
        if batching is None:
            batching = BatchConfig()
        loaded = None
        if isinstance(model, (str, os.PathLike)):
            if name in self._models:  # refuse before the (slow) load; checked again below
                raise AlreadyExistsError(
                    f"model {name!r} is already loaded; remove_model() it first"
                )
            options = dict(backend_options or {})
            if compile is not None:
                options["compile"] = compile
            loaded, batching = self._load_file(
                model, batching, warmup, device, precision, backend, options
            )
            model = loaded
        elif device or precision or backend or backend_options or compile:
            raise InvalidArgumentError(
                f"model {name!r}: device/precision/backend/compile options apply to model "
                "files; a callable runs as it is"
            )
        if batching.inline_execution is None:
            # A model file may be slow: inline only batches measured to be quick.
            bound = batching.inline_max_exec_us
            if loaded is not None and bound is None:
                bound = _MODEL_FILE_INLINE_MAX_EXEC_US
            batching = replace(batching, inline_execution=True, inline_max_exec_us=bound)
        if not callable(model):
            raise InvalidArgumentError(
                f"model {name!r}: expected a model file path or a callable, "
                f"got {type(model).__name__}"
            )
        if cache is True:
            cache = CacheConfig()
        elif cache is False:
            cache = None
        inputs = inputs if inputs is not None else getattr(model, "inputs", None)
        outputs = outputs if outputs is not None else getattr(model, "outputs", None)

        m = _Model(name, model, str(version), batching, cache)
        m.backend = loaded
        m.feedback = feedback
        with self._lock:
            if name in self._models:
                if loaded is not None:
                    loaded.close()
                raise AlreadyExistsError(
                    f"model {name!r} is already loaded; remove_model() it first"
                )
            self._models[name] = m
        try:
            if monitor is not None:
                monitor.attach(self, name, m.version)
                m.monitor = monitor
            if inputs:
                m.inputs = tuple(_spec(s) for s in inputs)
                m.outputs = tuple(_spec(s) for s in outputs) if outputs else ()
                if warmup:
                    m.outputs = self._warm_up(m)
                self._create_handle(m)
        except BaseException:
            with self._lock:
                self._models.pop(name, None)
            if loaded is not None:
                loaded.close()
            if m.monitor is not None:
                m.monitor.close()
            raise
        return self.model_info(name)

    @staticmethod
    def _load_file(
        path: str | os.PathLike[str],
        batching: BatchConfig,
        warmup: bool,
        device: str | None,
        precision: str | None,
        backend: str | None,
        backend_options: Mapping[str, Any] | None,
    ) -> tuple[Any, BatchConfig]:
        """Loads a model file with its backend; returns it and the batching it runs best with."""
        from aiarch import backends

        extra = dict(backend_options or {})
        fields = set(backends.BackendOptions.__dataclass_fields__) - {"extra"}
        direct = {k: extra.pop(k) for k in list(extra) if k in fields}
        extra.setdefault("instances", batching.instances)
        opts = backends.BackendOptions(
            device=device or direct.pop("device", "cpu"),
            precision=precision or direct.pop("precision", None),
            max_batch_size=batching.max_batch_size,
            batch_sizes=tuple(direct.pop("batch_sizes", batching.preferred_batch_sizes)),
            extra=extra,
            **direct,
        )
        loaded = backends.load(path, backend=backend, options=opts)
        try:
            if loaded.buckets and not batching.preferred_batch_sizes:
                fits = tuple(b for b in loaded.buckets if b <= batching.max_batch_size)
                if fits:
                    batching = replace(batching, preferred_batch_sizes=fits)
            if warmup:
                loaded.warm_up()
        except BaseException:
            loaded.close()
            raise
        return loaded, batching

    def remove_model(self, name: str, *, drain: bool = True) -> None:
        """Unloads a model. With ``drain``, queued requests run first; otherwise
        they fail with UnavailableError. Blocks until its batchers stopped."""
        with self._lock:
            m = self._models.pop(name, None)
        if m is None:
            raise self._not_loaded(name)
        if m.handle is not None:
            m.handle.shutdown(drain)
        if m.backend is not None:
            m.backend.close()
        if m.monitor is not None:
            m.monitor.close()

    def models(self) -> list[str]:
        """Names of the loaded models."""
        return sorted(self._models)

    def model_info(self, name: str) -> ModelInfo:
        """Specs, configuration and readiness of one model."""
        m = self._get(name)
        outputs = m.outputs
        if not outputs and m.handle is not None:
            outputs = tuple(TensorSpec(n, d, s) for n, d, s in m.handle.output_specs())
            m.outputs = outputs
        return ModelInfo(
            name=m.name,
            version=m.version,
            inputs=m.inputs,
            outputs=outputs,
            batching=m.batching,
            cache=m.cache_config,
            ready=m.handle is not None or not m.inputs,
            backend=m.backend.describe() if m.backend is not None else None,
        )

    def native_handle(self, name: str) -> Any:
        """The model's native batcher handle (`aiarch._core.Model`), or None before it exists;
        the server's native request path submits to it directly."""
        m = self._models.get(name)
        return None if m is None else m.handle

    def invalidate_cache(self, name: str) -> None:
        """Makes every cached response of ``name`` unreachable (a generation bump)."""
        m = self._get(name)
        if m.cache is not None:
            m.cache.invalidate()

    # ------------------------------------------------------------ inference

    async def infer(
        self, name: str, inputs: Any, *, timeout_s: float | None = None, priority: int = 0
    ) -> Any:
        """Runs one request through the model's batcher; awaits its outputs.

        ``inputs``: an ndarray (single-input model), a sequence of arrays in
        input order, or a mapping by input name; each has the rows first.
        Returns an ndarray for a single-output model, else a tuple — read-only
        views of the batch's result. ``timeout_s`` is enforced while queued: an
        expired request is never executed (DeadlineExceededError).
        ``priority``: 0 = the model's default level, 1 = highest.
        Cancelling the awaiting task cancels the queued request.
        """
        m = self._models.get(name)
        if m is None:
            raise self._not_loaded(name)
        x = inputs if inputs.__class__ is _ndarray else m.normalize(inputs)
        handle = m.handle
        if handle is None:
            handle = self._create_handle(m, x)
        loop = _get_running_loop()
        st = self._loops.get(loop)
        if st is None:
            st = self._attach(loop)
        timeout_ns = 0 if timeout_s is None else _timeout_ns(timeout_s)
        if _tracing.enabled:
            return await self._infer_traced(m, handle, st, x, timeout_ns, priority)
        # Files fut in st.pending; x stays alive in this frame until fut is done.
        r, fut = st.submit(handle, x, timeout_ns, priority)
        if r is None:
            return fut  # answered from the cache: the outputs
        try:
            return await fut
        except BaseException:
            if not fut.done() or fut.cancelled():
                # Leaving before the completion (cancelled, or the coroutine closed): the
                # batcher may still read x, so the pending entry holds it from here on.
                if r in st.pending:
                    st.pending[r] = (fut, x)
                if fut.cancelled():
                    handle.cancel(r)
            raise

    async def _infer_traced(
        self,
        m: _Model,
        handle: Any,
        st: _LoopState,
        x: Any,
        timeout_ns: int,
        priority: int,
    ) -> Any:
        """:meth:`infer` while tracing is enabled: the same steps, plus the queue, execution
        and feature-lookup spans under the current span when it records (the completion
        carries the batch's timing into the third item of the pending entry)."""
        trace = _tracing.start_infer(m.name) if self._clock is None else None
        try:
            r, fut = st.submit(handle, x, timeout_ns, priority)
        except Exception as e:
            if trace is not None:
                trace.finish(None, e)
            raise
        if r is None:
            if trace is not None:
                trace.finish(None, None, cache_hit=True)
            return fut  # the outputs
        st.pending[r] = (fut, x) if trace is None else (fut, x, trace.timing)
        lookups = getattr(m.fn, "lookup_log", None)
        try:
            result = await fut
        except asyncio.CancelledError as e:
            if fut.cancelled():
                handle.cancel(r)
            if trace is not None:
                trace.finish(lookups, e)
            raise
        except Exception as e:
            if trace is not None:
                trace.finish(lookups, e)
            raise
        if trace is not None:
            trace.finish(lookups, None)
        return result

    async def infer_many(
        self,
        name: str,
        requests: Sequence[Any],
        *,
        timeout_s: float | None = None,
        priority: int = 0,
        return_exceptions: bool = False,
    ) -> list[Any]:
        """Runs many requests through the model's batcher; awaits all their outputs.

        For a caller that holds many requests at once: each element of ``requests``
        is what :meth:`infer` takes, and each keeps its own outputs, error and
        deadline, but they are submitted in one pass and awaited with one
        coroutine, so they share batches without a task per request. Returns the
        outputs in request order. An error (a request refused at submit, or one
        that failed) raises, and cancels the requests still queued, unless
        ``return_exceptions``, which puts each error in its request's place.
        """
        m = self._models.get(name)
        if m is None:
            raise self._not_loaded(name)
        loop = asyncio.get_running_loop()
        st = self._loops.get(loop)
        if st is None:
            st = self._attach(loop)
        timeout_ns = _timeout_ns(timeout_s)
        results: list[Any] = [None] * len(requests)
        waiting: list[tuple[int, int, asyncio.Future[Any]]] = []  # (index, request id, future)
        handle = m.handle
        try:
            for i, inputs in enumerate(requests):
                try:
                    x = inputs if inputs.__class__ is np.ndarray else m.normalize(inputs)
                    if handle is None:
                        handle = self._create_handle(m, x)
                    r, fut = st.submit(handle, x, timeout_ns, priority)
                except Exception as e:
                    if not return_exceptions:
                        raise
                    results[i] = e
                    continue
                if r is None:
                    results[i] = fut  # answered from the cache: the outputs
                    continue
                st.pending[r] = (fut, x)
                waiting.append((i, r, fut))
        except BaseException:
            self._cancel_waiting(handle, waiting)
            raise
        try:
            for i, _, fut in waiting:
                try:
                    results[i] = await fut
                except asyncio.CancelledError:
                    raise
                except Exception as e:
                    if not return_exceptions:
                        raise
                    results[i] = e
        except BaseException:
            self._cancel_waiting(handle, waiting)
            raise
        return results

    @staticmethod
    def _cancel_waiting(handle: Any, waiting: list[tuple[int, int, asyncio.Future[Any]]]) -> None:
        """Cancels the still-queued requests of an abandoned infer_many."""
        for _, r, fut in waiting:
            if not fut.done():
                fut.cancel()
                handle.cancel(r)
            elif not fut.cancelled():
                fut.exception()  # retrieved: an abandoned error is not logged as lost

    def infer_sync(
        self, name: str, inputs: Any, *, timeout_s: float | None = None, priority: int = 0
    ) -> Any:
        """Blocking form of :meth:`infer` for plain threads (the GIL is released while waiting)."""
        m = self._get(name)
        x = inputs if inputs.__class__ is np.ndarray else m.normalize(inputs)
        handle = m.handle if m.handle is not None else self._create_handle(m, x)
        return handle.submit_sync(x, _timeout_ns(timeout_s), priority)

    # ------------------------------------------------------------ observability

    def stats(self, name: str) -> dict[str, Any]:
        """Counters, queue depth and latency percentiles (µs) of one model."""
        m = self._get(name)
        out: dict[str, Any] = {"model": m.name, "version": m.version}
        if m.handle is None:
            out.update(
                requests=dict.fromkeys(
                    ("success", "failed", "expired", "rejected", "cancelled"), 0
                ),
                cache_hits=0,
                last_inference_ms=0,
                batches=0,
                rows=0,
                queue_rows=0,
                in_flight_batches=0,
                latency_us={k: _summary_us(None) for k in _HISTOGRAMS},
                totals_ns=dict.fromkeys(_HISTOGRAMS, 0),
                batch_size={"mean": 0.0, "max": 0, "counts": {}},
                cache=None,
                service_rate_rows_per_s=0.0,
                isolation={"batches": 0, "executions": 0},
            )
            return out
        s = m.handle.stats()
        out["requests"] = {
            k: s[k] for k in ("success", "failed", "expired", "rejected", "cancelled")
        }
        out["cache_hits"] = s["cache_hits"]  # also counted in requests["success"]
        out["last_inference_ms"] = s["last_inference_ms"]
        out["batches"] = s["batches"]
        out["rows"] = s["rows"]
        out["queue_rows"] = s["queue_rows"]
        out["in_flight_batches"] = s["in_flight_batches"]
        out["latency_us"] = {k: _summary_us(m.handle.histogram(k)) for k in _HISTOGRAMS}
        out["totals_ns"] = {k: s[f"{k}_ns_total"] for k in _HISTOGRAMS}
        bs = m.handle.histogram("batch_size")
        counts = bs.counts()
        nz = np.flatnonzero(counts)
        # Batch sizes are small integers: below 2048 every bucket is exact.
        out["batch_size"] = {
            "mean": bs.mean if bs.total_count else 0.0,
            "max": bs.max,
            "counts": {int(i): int(counts[i]) for i in nz if i < 2048},
        }
        out["cache"] = None if m.cache is None else m.cache.counters()
        out["service_rate_rows_per_s"] = s["service_rate_rows_per_s"]
        # Failed batches split to isolate the failing requests, and the extra
        # executions that took (also counted in "batches").
        out["isolation"] = {
            "batches": s["isolated_batches"],
            "executions": s["isolation_executions"],
        }
        return out

    def monitor(self, name: str) -> Any:
        """The model's :class:`aiarch.monitor.Monitor`, or None."""
        return self._get(name).monitor

    # ------------------------------------------------------------ label feedback

    def enable_feedback(self, model: str, config: Any = None) -> Any:
        """The :class:`aiarch.monitor.FeedbackTracker` of public model name ``model``, created
        with ``config`` (a FeedbackConfig) on the first call. It outlives versions: pass it as
        ``add_model(..., feedback=)`` to every version served under that name. Thread-safe."""
        from aiarch.monitor.feedback import FeedbackTracker

        with self._lock:
            tracker = self._feedback.get(model)
            if tracker is None:
                tracker = self._feedback[model] = FeedbackTracker(model, config)
            return tracker

    def feedback_tracker(self, model: str) -> Any:
        """The feedback tracker of ``model`` (public name), or None."""
        return self._feedback.get(model)

    def feedback_models(self) -> list[str]:
        """Public names of the models that take label feedback."""
        return list(self._feedback)

    def feedback(self, model: str, labels: Sequence[Any]) -> Any:
        """Joins ground-truth ``labels`` with ``model``'s recent predictions; returns a
        :class:`aiarch.monitor.FeedbackResult` (joined / unknown / late counts). Each label is
        an :class:`aiarch.monitor.Label` or a dict with ``label`` and either ``id`` (a request
        id) or ``entity_id`` (+ optional ``time``, seconds since the epoch). Unknown and late
        ids are counted, never raised. Thread-safe."""
        import msgspec

        from aiarch.monitor.feedback import LABEL_FIELDS, Label, check_label

        tracker = self._feedback.get(model)
        if tracker is None:
            raise NotFoundError(
                f"model {model!r} takes no feedback; enable it with enable_feedback() (or a "
                f"[models.{model}.monitor.feedback] table); feedback models: {sorted(self._feedback)}"
            )
        parsed = []
        for i, lab in enumerate(labels):
            if isinstance(lab, Label):
                check_label(i, lab)
                parsed.append(lab)
                continue
            try:
                parsed.append(msgspec.convert(lab, Label))
            except msgspec.ValidationError as e:
                raise InvalidArgumentError(f"labels[{i}]: {e}; expected {LABEL_FIELDS}") from None
            check_label(i, parsed[-1])
        return tracker.feedback(parsed)

    def histograms(self, name: str) -> dict[str, _core.HistogramSnapshot]:
        """Snapshots of the native histograms: queue, execution, end_to_end (ns), batch_size (rows)."""
        m = self._get(name)
        if m.handle is None:
            return {}
        return {k: m.handle.histogram(k) for k in (*_HISTOGRAMS, "batch_size")}

    # ------------------------------------------------------------ lifecycle

    def close(self, *, drain: bool = True) -> None:
        """Stops every model (draining queued requests when ``drain``) and
        resolves what is in flight. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            models = list(self._models.values())
            self._models.clear()
        for m in models:
            if m.handle is not None:
                m.handle.shutdown(drain)
            if m.backend is not None:
                m.backend.close()
            if m.monitor is not None:
                m.monitor.close()
        for tracker in list(self._feedback.values()):
            tracker.close()  # flushes its label log
        # Every request now has its completion queued: resolve them, then
        # stop watching the queues.
        try:
            current = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        for loop, st in list(self._loops.items()):
            if loop is current:
                self._finish_loop(st)
            elif not loop.is_closed():
                try:
                    loop.call_soon_threadsafe(self._finish_loop, st)
                except RuntimeError:
                    pass  # the loop closed meanwhile
        _live_runtimes.discard(self)

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Runtime:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ internals

    def _get(self, name: str) -> _Model:
        m = self._models.get(name)
        if m is None:
            raise self._not_loaded(name)
        return m

    def _not_loaded(self, name: str) -> Exception:
        if self._closed:
            return UnavailableError(self._closed_reason)
        return NotFoundError(f"model {name!r} is not loaded; loaded: {sorted(self._models)}")

    def _warm_up(self, m: _Model) -> tuple[TensorSpec, ...]:
        """Calls the model once on zero rows; returns the output specs it produced."""
        rows = m.batching.preferred_batch_sizes[0] if m.batching.preferred_batch_sizes else 1
        args = [np.zeros((rows, *s.shape), dtype=_np_dtype(s.dtype)) for s in m.inputs]
        # A model that counts its own calls (a feature lookup) takes the warm-up separately.
        result = getattr(m.fn, "warm_up_batch", m.fn)(*args)
        results = list(result) if isinstance(result, (tuple, list)) else [result]
        learned = []
        for i, r in enumerate(results):
            a = np.asarray(r)
            if a.ndim < 1 or a.shape[0] != rows:
                raise InvalidArgumentError(
                    f"model {m.name!r}: warm-up output {i} has shape {a.shape}; "
                    f"expected {rows} row(s) first"
                )
            name = m.outputs[i].name if i < len(m.outputs) else f"output{i}"
            learned.append(TensorSpec(name, a.dtype.name, a.shape[1:]))
        if m.outputs and len(m.outputs) != len(learned):
            raise InvalidArgumentError(
                f"model {m.name!r} declares {len(m.outputs)} outputs but returned {len(learned)}"
            )
        for declared, got in zip(m.outputs, learned):
            if (declared.dtype, declared.shape) != (got.dtype, got.shape):
                raise InvalidArgumentError(
                    f"model {m.name!r} output {declared.name!r} declared {declared.dtype}"
                    f"{list(declared.shape)} per row but the model returned {got.dtype}{list(got.shape)}"
                )
        return tuple(learned)

    def _create_handle(self, m: _Model, first_request: Any = None) -> Any:
        """Creates the native batcher; without declared inputs, takes the specs
        from the first request."""
        with m.lock:
            if m.handle is not None:
                return m.handle
            if not m.inputs:
                arrays = first_request if isinstance(first_request, tuple) else (first_request,)
                specs = []
                for i, a in enumerate(arrays):
                    if not isinstance(a, np.ndarray) or a.ndim < 1:
                        raise InvalidArgumentError(
                            f"model {m.name!r}: the first request fixes the input specs and needs "
                            "arrays with a leading row dimension"
                        )
                    specs.append(TensorSpec(f"input{i}", a.dtype.name, a.shape[1:]))
                m.inputs = tuple(specs)
            b = m.batching
            native_batching = _core.BatchConfig(
                max_batch_size=b.max_batch_size,
                max_delay_ns=int(b.max_delay_us * 1000),
                preferred_batch_sizes=list(b.preferred_batch_sizes),
                max_queue_rows=b.max_queue_rows,
                instances=b.instances,
                priority_levels=b.priority_levels,
                default_priority_level=b.default_priority_level,
                drop_unreachable=b.drop_unreachable,
                inline_execution=bool(b.inline_execution),  # None was resolved at add_model
                inline_max_exec_ns=int((b.inline_max_exec_us or 0) * 1000),
            )
            if m.cache_config is not None and m.cache is None:
                c = m.cache_config
                m.cache = _core.ResponseCache(
                    max_bytes=c.max_bytes,
                    ttl_ns=int(c.ttl_s * 1e9),
                    shards=c.shards,
                    buckets=c.buckets,
                )
            fn = m.fn if m.monitor is None else m.monitor.wrap(m.fn)
            fb = m.feedback
            if fb is not None and fb.config.entity_input is not None:
                fn = fb.wrap(fn, m.version)
            native = getattr(m.backend, "native_executor", None)
            if fn is m.fn and native is not None:
                fn = native  # nothing needs to see each batch in Python: run it natively
            m.handle = _core.Model(
                m.name, fn, list(m.inputs), list(m.outputs), native_batching, m.cache, self._clock
            )
            return m.handle

    def _attach(self, loop: asyncio.AbstractEventLoop) -> _LoopState:
        with self._lock:
            st = self._loops.get(loop)
            if st is None:
                if self._closed:
                    raise UnavailableError("runtime is closed")
                # Forget loops that closed with nothing in flight.
                for old in [
                    lp for lp, s in self._loops.items() if lp.is_closed() and not s.pending
                ]:
                    del self._loops[old]
                st = _LoopState(loop)
                loop.add_reader(st.queue.fd, st.queue.resolve)
                self._loops[loop] = st
        return st

    @staticmethod
    def _finish_loop(st: _LoopState) -> None:
        st.queue.resolve()
        if not st.pending:
            try:
                st.loop.remove_reader(st.queue.fd)
            except (RuntimeError, ValueError):
                pass


def _spec(s: Any) -> TensorSpec:
    if isinstance(s, TensorSpec):
        return s
    if isinstance(s, Mapping):
        return TensorSpec(s["name"], s.get("dtype", "float32"), tuple(s.get("shape", ())))
    if isinstance(s, (tuple, list)) and len(s) == 3:
        return TensorSpec(s[0], s[1], tuple(s[2]))
    raise InvalidArgumentError(f"expected a TensorSpec, got {s!r}")


def _np_dtype(name: str) -> Any:
    if name == "bfloat16":
        try:
            import ml_dtypes

            return ml_dtypes.bfloat16
        except ImportError:
            return np.uint16
    return np.dtype(name)


def _summary_us(h: Any) -> dict[str, float]:
    if h is None or h.total_count == 0:
        return {"count": 0, "mean": 0.0, **{k: 0.0 for k, _ in _PERCENTILES}, "max": 0.0}
    out = {"count": h.total_count, "mean": h.mean / 1e3}
    for k, p in _PERCENTILES:
        out[k] = h.percentile(p) / 1e3
    out["max"] = h.max / 1e3
    return out
