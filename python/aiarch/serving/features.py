"""Feature inputs of served models: entity ids in, stored features joined in the batch path.

A model's serve config may declare::

    [models.fraud]
    source = "mypkg.models:fraud"
    features = { store = "redis://127.0.0.1:6379/0", entity_input = "entity_id",
                 lookups = ["txn:amount_7d", "txn:count_1h"], on_missing = "default" }

The model is then wrapped: requests carry the entity ids (input `entity_input`, one per row:
INT64 for an int64 entity, BYTES for a string one) plus any request-time inputs the model
declares after its first; once per batch the wrapper
does ONE lookup for all rows and calls the model with ``(features[rows, len(lookups)], *rest)``.
Feature types join as float32 columns: float64 and int64 are cast, a ``vector[N]`` feature
expands into N columns, and a ``string`` feature joins only when it declares a vocabulary (its
index; ``len(vocabulary)`` for any other value) - a model whose lookups include a string feature
without one is refused at load. It appends an output ``feature_status`` (uint8 per row: 0 present, 1 expired, 2 missing,
3 store unavailable). With ``on_missing = "error"`` (or ``on_unavailable = "error"``) a request
whose rows were not all served from the store fails alone (404, or 503) while the rest of the
batch is answered. Lookup time is recorded per batch in a native histogram and shows up in
``/v2/models/{name}/stats`` (``feature_lookup``) and ``/metrics``
(``aiarch_feature_lookup_duration_seconds``, ``aiarch_feature_rows``,
``aiarch_feature_store_failures``).

String entity ids travel through the batcher as fixed-width UTF-8 (``uint8[max_key_bytes]``, NUL
padded; the public input stays BYTES): batching, routes and shadows need no side table, and a
batch's ids are read back in one numpy view. An id longer than ``max_key_bytes`` or holding a NUL
byte is refused with 400 naming it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from aiarch import _core
from aiarch import tracing as _tracing
from aiarch.config import TensorSpec
from aiarch.errors import InvalidArgumentError
from aiarch.redact import redact_url

from .errors import HttpError

__all__ = [
    "STATUS_OUTPUT",
    "FeatureInputs",
    "FeatureLookupModel",
    "collect_metrics",
    "lookup_stats",
    "prepare",
    "result_check",
]

STATUS_OUTPUT = "feature_status"
"""Name of the per-row status output appended to a model with feature inputs."""

_STATUS_NAMES = ("present", "expired", "missing", "unavailable")


@dataclass
class FeatureInputs:
    """The `features` table of a model's serve config."""

    store: str = "memory://"
    """Online store URL: memory://[NAME], native://PATH or redis://HOST:PORT/DB."""

    lookups: list[str] = field(default_factory=list)
    """Feature references ("view:feature" or "view:*"), in the order the model reads them."""

    entity_input: str = "entity_id"
    """Name of the request input holding one entity id per row (INT64, or BYTES for a string
    entity)."""

    max_key_bytes: int = 64
    """Longest string entity id accepted, in UTF-8 bytes (a UUID takes 36)."""

    on_missing: str = "default"
    """"default": serve defaults for missing or expired rows; "error": fail that request (404)."""

    on_unavailable: str = "error"
    """When the store does not answer in time: "error" fails the requests of that batch with
    503; "default" serves defaults (status 3) and counts it."""

    timeout_ms: float = 50.0
    """Longest a Redis round trip may take before the store counts as unavailable."""

    home: str | None = None
    """Metadata directory holding the definitions (default $AIARCH_HOME or ./.aiarch)."""

    @classmethod
    def from_table(cls, model: str, table: Any) -> FeatureInputs:
        """Validate a config table; raises ValueError naming the model and the problem."""
        if not isinstance(table, dict):
            raise ValueError(f"model {model!r}: 'features' must be a table")
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(table) - known)
        if unknown:
            raise ValueError(
                f"model {model!r}: unknown features keys {unknown}; expected {sorted(known)}"
            )
        cfg = cls(**table)
        if isinstance(cfg.lookups, str):
            cfg.lookups = [cfg.lookups]
        if not cfg.lookups:
            raise ValueError(f"model {model!r}: features.lookups is empty")
        for key in ("on_missing", "on_unavailable"):
            if getattr(cfg, key) not in ("default", "error"):
                raise ValueError(
                    f"model {model!r}: features.{key} must be 'default' or 'error', "
                    f"got {getattr(cfg, key)!r}"
                )
        if not cfg.timeout_ms > 0:
            raise ValueError(f"model {model!r}: features.timeout_ms must be > 0")
        if type(cfg.max_key_bytes) is not int or not 1 <= cfg.max_key_bytes <= 4096:
            raise ValueError(
                f"model {model!r}: features.max_key_bytes must be an integer from 1 to 4096"
            )
        return cfg


class FeatureLookupModel:
    """A model wrapped with one feature lookup per batch. Called by the batcher once per batch,
    on a batcher thread or inline on the event loop; thread-safe (the plan and the native
    histogram are; counters are updated under a lock)."""

    def __init__(self, name: str, model: Any, cfg: FeatureInputs) -> None:
        from aiarch.features import FeatureStore

        self.name = name
        self.model = model
        self.cfg = cfg
        self.store = FeatureStore(
            cfg.store, home=cfg.home, timeout_s=cfg.timeout_ms / 1000.0, on_unavailable="default"
        )
        self.plan = self.store.plan(cfg.lookups)
        try:
            self.plan.check_joinable()
        except InvalidArgumentError as e:
            raise ValueError(f"model {name!r}: {e}") from None
        dtype = self.plan.entity.dtype
        if dtype not in ("int64", "string"):
            raise ValueError(
                f"model {name!r}: served feature lookups need an int64 or string entity; "
                f"{self.plan.entity.name!r} has {dtype} keys"
            )
        self.key_bytes: int | None = cfg.max_key_bytes if dtype == "string" else None
        """Width of a string entity id in the batch (None: int64 ids)."""
        width = self.plan.width
        declared = list(getattr(model, "inputs", None) or [])
        if declared:
            first = declared[0]
            shape = tuple(int(d) for d in first.shape)
            if shape != (width,) or str(first.dtype) != "float32":
                raise ValueError(
                    f"model {name!r}: its first input {first.name!r} receives the looked-up "
                    f"features and must be float32[{width}]; it is {first.dtype}{list(shape)}"
                )
        rest = [TensorSpec(s.name, s.dtype, tuple(s.shape)) for s in declared[1:]]
        entity = (
            TensorSpec(cfg.entity_input, "int64", ())
            if self.key_bytes is None
            else TensorSpec(cfg.entity_input, "uint8", (self.key_bytes,))
        )
        self.inputs = [entity, *rest]
        outputs = list(getattr(model, "outputs", None) or [])
        if not outputs:
            outputs = self._probe_outputs(width, rest)
        self.outputs = [*outputs, TensorSpec(STATUS_OUTPUT, "uint8", ())]
        self.histogram = _core.Histogram()
        self._lock = threading.Lock()
        self.batches = 0
        self.rows_by_status = [0, 0, 0, 0]
        self.total_ns = 0
        self.lookup_log = _tracing.recent_lookups()
        """(start, end) monotonic ns of recent lookups while tracing is on: the
        feature_lookup span of a traced request's batch."""

    def _probe_outputs(self, width: int, rest: list[TensorSpec]) -> list[TensorSpec]:
        """Output specs of a model that declares none, from one call on a zero row."""
        args = [np.zeros((1, width), np.float32)] + [
            np.zeros((1, *s.shape), np.dtype(s.dtype)) for s in rest
        ]
        result = self.model(*args)
        results = list(result) if isinstance(result, (tuple, list)) else [result]
        return [
            TensorSpec(f"output{i}", np.asarray(r).dtype.name, np.asarray(r).shape[1:])
            for i, r in enumerate(results)
        ]

    def __call__(self, entity_ids: np.ndarray, *rest: np.ndarray) -> tuple[Any, ...]:
        t0 = time.monotonic_ns()  # the batcher's clock, for traced batches
        ids = entity_ids if self.key_bytes is None else keys_of(entity_ids)
        values, status = self.plan.get(ids)
        elapsed = time.monotonic_ns() - t0
        if _tracing.enabled:
            self.lookup_log.append((t0, t0 + elapsed))
        self.histogram.record(max(elapsed, 1))
        counts = np.bincount(status, minlength=4)
        with self._lock:
            self.batches += 1
            self.total_ns += elapsed
            for i in range(4):
                self.rows_by_status[i] += int(counts[i])
        result = self.model(values, *rest)
        outs = tuple(result) if isinstance(result, (tuple, list)) else (result,)
        return (*outs, status)

    def warm_up_batch(self, entity_ids: np.ndarray, *rest: np.ndarray) -> tuple[Any, ...]:
        """The runtime's warm-up call (once per load): runs the model on zero features, without
        a store lookup, so no lookup, missing row or latency is counted for it."""
        rows = len(entity_ids)
        values = np.zeros((rows, self.plan.width), np.float32)
        result = self.model(values, *rest)
        outs = tuple(result) if isinstance(result, (tuple, list)) else (result,)
        return (*outs, np.full(rows, 2, np.uint8))

    def stats(self) -> dict[str, Any]:
        """The lookup stage: batches, total ns, rows by status, store failures."""
        with self._lock:
            rows = dict(zip(_STATUS_NAMES, self.rows_by_status))
            out: dict[str, Any] = {"count": self.batches, "ns": self.total_ns, "rows": rows}
        out["store_failures"] = self.store.counters.fallbacks
        snap = self.histogram.snapshot()
        out["p50_us"] = snap.percentile(50.0) / 1e3 if snap.total_count else 0.0
        out["p99_us"] = snap.percentile(99.0) / 1e3 if snap.total_count else 0.0
        return out


def keys_of(rows: np.ndarray) -> list[bytes]:
    """The string entity ids of a batch's fixed-width rows (see the module docstring)."""
    rows = np.ascontiguousarray(rows, dtype=np.uint8)
    return rows.view(f"S{rows.shape[1]}").reshape(-1).tolist()  # (NUL padding dropped)


def pack_keys(ids: np.ndarray, width: int, name: str) -> np.ndarray:
    """BYTES entity ids (str or bytes, one per row) as the batch's fixed-width rows; raises
    HttpError(400) naming an id that does not fit."""
    encoded = []
    for x in ids.reshape(-1).tolist():
        b = x.encode() if isinstance(x, str) else bytes(x) if isinstance(x, bytes) else None
        if b is None:
            raise HttpError(400, f"input {name!r}: entity ids must be strings")
        if len(b) > width or b"\0" in b or not b:
            why = (
                "empty"
                if not b
                else "holds a NUL byte"
                if b"\0" in b
                else f"is longer than {width} bytes (features.max_key_bytes)"
            )
            raise HttpError(400, f"input {name!r}: entity id {b[:80]!r} {why}")
        encoded.append(b)
    return np.array(encoded, dtype=f"S{width}").view(np.uint8).reshape(len(encoded), width)


_LOOKUPS: dict[str, FeatureLookupModel] = {}
_LOOKUPS_LOCK = threading.Lock()


def prepare(name: str, model: Any, table: Any, batching: dict[str, Any], cache: Any) -> Any:
    """Wrap `model` for its `features` config (called once per load, in a worker thread).
    A Redis store moves execution off the event loop (a round trip must not block it) unless
    the config says otherwise. Raises ValueError for a bad config."""
    cfg = FeatureInputs.from_table(name, table)
    if cache is not None:
        raise ValueError(
            f"model {name!r}: a response cache cannot be combined with feature lookups "
            "(cached answers would ignore feature updates)"
        )
    wrapped = FeatureLookupModel(name, model, cfg)
    if cfg.store.startswith(("redis://", "rediss://", "unix://")):
        batching.setdefault("inline_execution", False)
    with _LOOKUPS_LOCK:
        old = _LOOKUPS.get(name)
        _LOOKUPS[name] = wrapped
    if old is not None:
        # A reload: release the old store's connections (a native table is shared and stays).
        old.store.backend.close()
    return wrapped


def string_entity(name: str) -> tuple[int, int] | None:
    """(input index, width) of runtime model `name`'s string entity ids, or None (no feature
    inputs, or an int64 entity)."""
    w = _LOOKUPS.get(name)
    return None if w is None or w.key_bytes is None else (0, w.key_bytes)


def lookup_stats(name: str) -> dict[str, Any] | None:
    """The lookup stage of a served model, or None when it has no feature inputs."""
    w = _LOOKUPS.get(name)
    return None if w is None else w.stats()


def result_check(name: str) -> Any:
    """For a model with feature inputs whose policy fails requests, a function
    ``check(outputs, inputs)`` run once per request before encoding; else None."""
    w = _LOOKUPS.get(name)
    if w is None or (w.cfg.on_missing == "default" and w.cfg.on_unavailable == "default"):
        return None
    fail_missing = w.cfg.on_missing == "error"
    fail_unavailable = w.cfg.on_unavailable == "error"
    entity_input = w.cfg.entity_input
    views = sorted({r.partition(":")[0] for r in w.plan.refs})

    def check(outputs: Any, inputs: Any) -> None:
        status = np.asarray(outputs[-1])
        if not status.any():
            return
        if fail_unavailable and (status == 3).any():
            raise HttpError(
                503,
                f"model {name!r}: the feature store {redact_url(w.cfg.store)} did not answer in time",
            )
        if fail_missing and ((status == 1) | (status == 2)).any():
            ids = np.asarray(inputs[0] if isinstance(inputs, (list, tuple)) else inputs)
            shown = (
                [k.decode(errors="replace") for k in keys_of(ids)]
                if w.key_bytes is not None
                else [str(int(i)) for i in ids.reshape(-1)]
            )
            bad = [f"{i} ({_STATUS_NAMES[int(s)]})" for i, s in zip(shown, status) if s in (1, 2)]
            raise HttpError(
                404,
                f"model {name!r}: no current features in {views} for {entity_input} "
                f"{', '.join(bad[:10])}",
            )

    return check


def collect_metrics(models: list[str]) -> Iterator[Any]:
    """Prometheus families of the lookup stage; called once per scrape."""
    from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

    from .metrics import LATENCY_BOUNDS_NS

    hist = HistogramMetricFamily(
        "aiarch_feature_lookup_duration_seconds",
        "Feature lookup time per batch (one lookup per batch).",
        labels=["model"],
    )
    rows = CounterMetricFamily(
        "aiarch_feature_rows", "Rows looked up, by status.", labels=["model", "status"]
    )
    failures = CounterMetricFamily(
        "aiarch_feature_store_failures",
        "Batches the online store did not answer in time.",
        labels=["model"],
    )
    for name in models:
        w = _LOOKUPS.get(name)
        if w is None:
            continue
        snap = w.histogram.snapshot()
        counts = snap.cumulative_counts(LATENCY_BOUNDS_NS)
        buckets = [(repr(b * 1e-9), float(c)) for b, c in zip(LATENCY_BOUNDS_NS, counts)]
        buckets.append(("+Inf", float(snap.total_count)))
        st = w.stats()
        hist.add_metric([name], buckets, st["ns"] * 1e-9)
        for status, n in st["rows"].items():
            rows.add_metric([name, status], float(n))
        failures.add_metric([name], float(st["store_failures"]))
    yield from (hist, rows, failures)
