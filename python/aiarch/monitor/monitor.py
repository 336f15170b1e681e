"""The per-model monitor: drift counts per served batch, latency windows, alerts, reports.

Cost on the serving path: one native ``DriftSketch.count`` call per batch (GIL released,
wait-free), plus one for the outputs when an output profile is given, plus the prediction log's
sampler when enabled. Everything else — windows, metrics, alerts — runs once per window on the
monitor's ticker thread, or at report/scrape time.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec
import numpy as np

from aiarch._json import finite
from aiarch.errors import InvalidArgumentError

from .alerts import AlertRule, Alerts, Webhook
from .drift import DatasetDrift, DriftConfig, evaluate_drift
from .latency import STAGES, LatencyHistory, StageCounts, merge_stage_counts, summarize
from .predlog import PredictionLog, PredictionLogConfig
from .profile import Profile

__all__ = [
    "WINDOWS",
    "Monitor",
    "MonitorConfig",
    "MonitorSnapshot",
    "merge_snapshots",
    "report_from_snapshot",
]

log = logging.getLogger("aiarch.monitor")

WINDOWS: dict[str, float] = {"1m": 60.0, "5m": 300.0, "all": float("inf")}
"""Latency and request-count windows of reports: last minute, last 5 minutes, since start."""
_REQUEST_STATES = ("success", "failed", "expired", "rejected", "cancelled")


@dataclass(frozen=True)
class MonitorConfig:
    """How a model is monitored. Every field has a default."""

    drift: DriftConfig = field(default_factory=DriftConfig)
    """Drift thresholds, tests and per-feature overrides."""
    window_s: float = 60.0
    """Length of a drift window; the ticker closes one (and evaluates alerts) this often."""
    ticker: bool = True
    """Run a background thread that calls ``tick`` every ``window_s``; False = call it yourself."""
    alerts: tuple[AlertRule, ...] = ()
    """Threshold rules evaluated each window."""
    webhook_url: str | None = None
    """Where alert state changes are POSTed as JSON (None = only logged and exported)."""
    webhook_timeout_s: float = 5.0
    """Timeout of one webhook POST."""
    prediction_log: PredictionLogConfig | None = None
    """Sampled Parquet log of inputs/outputs (None = off)."""
    history: int = 120
    """Closed windows kept for reports over time."""
    max_rows_per_batch: int = 0
    """Count at most about this many rows of each batch (every k-th row, a zero-copy strided
    view) to bound the cost for very wide or very fast models; 0 = count every row."""

    def __post_init__(self) -> None:
        if not self.window_s > 0:
            raise InvalidArgumentError(f"window_s must be > 0, got {self.window_s}")

    @classmethod
    def from_dict(cls, table: Mapping[str, Any]) -> MonitorConfig:
        """From a config-file table (``[models.NAME.monitor]`` minus ``reference``)."""
        t = dict(table)
        kwargs: dict[str, Any] = {}
        if "drift" in t:
            kwargs["drift"] = DriftConfig.from_dict(t.pop("drift"))
        if "alerts" in t:
            kwargs["alerts"] = tuple(AlertRule(**a) for a in t.pop("alerts"))
        if "prediction_log" in t:
            kwargs["prediction_log"] = PredictionLogConfig(**t.pop("prediction_log"))
        known = {
            "window_s",
            "ticker",
            "webhook_url",
            "webhook_timeout_s",
            "history",
            "max_rows_per_batch",
        }
        unknown = sorted(set(t) - known)
        if unknown:
            raise InvalidArgumentError(
                f"unknown monitor keys {unknown}; expected {sorted(known | set(kwargs))}"
            )
        return cls(**t, **kwargs)


class HistoryPoint(msgspec.Struct):
    """One closed window, for reports over time."""

    time: float
    rows: int
    drift_share: float
    dataset_drift: bool
    latency_us: dict[str, float]
    """End-to-end percentiles (p50_us, p90_us, p99_us, p999_us) within the window; empty when
    no request finished in it (no latency, not a latency of 0)."""


class MonitorSnapshot(msgspec.Struct):
    """Everything a report needs, as counts: snapshots of several processes merge by addition."""

    model: str
    version: str
    taken_at: float
    """Wall-clock time (s since the epoch)."""
    profile: bytes
    """The reference profile (so a snapshot file is self-contained)."""
    latency: dict[str, dict[str, StageCounts]]
    """window ("1m", "5m", "all") -> stage -> histogram counts within the window."""
    requests: dict[str, dict[str, int]]
    """window -> request state -> count within the window."""
    drift_window: list[int]
    """Input bin counts of the last closed drift window."""
    drift_all: list[int]
    """Input bin counts since start (closed windows plus the open one)."""
    processes: int = 1
    history: list[HistoryPoint] = []


def merge_snapshots(parts: list[MonitorSnapshot]) -> MonitorSnapshot:
    """One snapshot of several processes serving the same model version and profile."""
    if not parts:
        raise InvalidArgumentError("nothing to merge")
    first = parts[0]
    for p in parts[1:]:
        if (p.model, p.version) != (first.model, first.version):
            raise InvalidArgumentError(
                f"cannot merge {p.model} v{p.version} into {first.model} v{first.version}"
            )
        if p.profile != first.profile:
            raise InvalidArgumentError("cannot merge snapshots taken against different profiles")
    latency: dict[str, dict[str, StageCounts]] = {}
    for window in first.latency:
        stages = {s for p in parts for s in p.latency.get(window, {})}
        latency[window] = {
            s: merge_stage_counts([p.latency[window][s] for p in parts if s in p.latency[window]])
            for s in sorted(stages, key=STAGES.index)
        }
    requests = {
        w: {k: sum(p.requests.get(w, {}).get(k, 0) for p in parts) for k in _REQUEST_STATES}
        for w in first.requests
    }
    return MonitorSnapshot(
        model=first.model,
        version=first.version,
        taken_at=max(p.taken_at for p in parts),
        profile=first.profile,
        latency=latency,
        requests=requests,
        drift_window=np.sum([p.drift_window for p in parts], axis=0).tolist(),
        drift_all=np.sum([p.drift_all for p in parts], axis=0).tolist(),
        processes=sum(p.processes for p in parts),
        history=[],  # per-process windows do not line up in time
    )


def report_from_snapshot(
    snap: MonitorSnapshot,
    drift_config: DriftConfig | None = None,
    profile: Profile | None = None,
) -> dict[str, Any]:
    """The JSON-ready report of a (possibly merged) snapshot."""
    profile = profile or Profile.from_bytes(snap.profile)
    latency = {
        w: {s: summarize(c.histogram()) for s, c in stages.items()}
        for w, stages in snap.latency.items()
    }
    requests = {}
    for w, counts in snap.requests.items():
        finished = sum(counts.values())
        requests[w] = {
            **counts,
            "error_rate": counts.get("failed", 0) / finished if finished else 0.0,
        }
    drift = {
        "window": msgspec.to_builtins(
            evaluate_drift(profile, np.asarray(snap.drift_window), drift_config)
        ),
        "all": msgspec.to_builtins(
            evaluate_drift(profile, np.asarray(snap.drift_all), drift_config)
        ),
    }
    return {
        "model": snap.model,
        "version": snap.version,
        "taken_at": snap.taken_at,
        "processes": snap.processes,
        "latency_us": latency,
        "requests": requests,
        # A window with no rows has no drift scores: null, never NaN (not JSON).
        "drift": finite(drift),
        "history": msgspec.to_builtins(snap.history),
    }


class Monitor:
    """Latency and drift monitor of one model version.

    Example::

        mon = Monitor(Profile.from_bytes(blob), config=MonitorConfig(window_s=60))
        rt.add_model("m", fn, inputs=[...], monitor=mon)   # counts every batch's inputs
        mon.report()                                        # latency, drift, alerts

    Thread-safety: ``observe`` (the batch path) may run on any number of threads at once;
    every other method takes the monitor's lock.
    """

    def __init__(
        self,
        profile: Profile,
        *,
        output_profile: Profile | None = None,
        config: MonitorConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # Windows are evaluated with scipy; importing it takes seconds of CPU holding the GIL,
        # so it happens here, while the model loads, not on the first window while serving.
        import scipy.stats  # noqa: F401

        self.profile = profile
        self.output_profile = output_profile
        self.config = config or MonitorConfig()
        self._clock = clock
        self._profile_bytes = profile.to_bytes()
        self.profile_digest = hashlib.sha256(self._profile_bytes).hexdigest()[:16]
        self.sketch = profile.sketch()
        self.output_sketch = output_profile.sketch() if output_profile is not None else None
        self.model = ""
        self.version = ""
        self._runtime: Any = None
        self._lock = threading.Lock()
        self._latency = LatencyHistory(horizon_s=max(WINDOWS["5m"], self.config.window_s) + 30)
        self._requests: deque[tuple[float, dict[str, int]]] = deque()
        self._history: deque[HistoryPoint] = deque(maxlen=self.config.history)
        self._last_window = np.zeros(int(profile.offsets()[-1]), dtype=np.int64)
        self._last_output_window: np.ndarray | None = None
        """Output bin counts of the last closed window (None before the first one)."""
        self.last_drift: DatasetDrift | None = None
        self.last_output_drift: DatasetDrift | None = None
        self._last_tick = clock()
        self._started = self._last_tick
        self._prev_stages: dict[str, StageCounts] = {}
        self.windows_closed = 0
        self.observe_errors = 0
        self._observe_error_logged = False
        self.webhook = (
            Webhook(self.config.webhook_url, self.config.webhook_timeout_s)
            if self.config.webhook_url
            else None
        )
        self.alerts = Alerts("", list(self.config.alerts), self.webhook)
        self.prediction_log: PredictionLog | None = None
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        self._closed = False

    @classmethod
    def from_config(cls, table: Mapping[str, Any]) -> Monitor:
        """From a server config table: ``reference`` (and optionally ``output_reference``)
        name profile files; the other keys are :class:`MonitorConfig` fields."""
        t = dict(table)
        ref = t.pop("reference", None)
        if not ref:
            raise InvalidArgumentError("monitor: 'reference' (a profile file) is required")
        out_ref = t.pop("output_reference", None)

        def read(path: str) -> Profile:
            try:
                with open(path, "rb") as fh:
                    return Profile.from_bytes(fh.read())
            except OSError as e:
                raise InvalidArgumentError(f"monitor: cannot read profile {path!r}: {e}") from None

        return cls(
            read(ref),
            output_profile=read(out_ref) if out_ref else None,
            config=MonitorConfig.from_dict(t),
        )

    # ------------------------------------------------------------ attachment (once per model)

    def attach(self, runtime: Any, model: str, version: str) -> None:
        """Binds the monitor to a runtime's model; called by ``Runtime.add_model``."""
        with self._lock:
            if self._runtime is not None:
                raise InvalidArgumentError(
                    f"this monitor is already attached to model {self.model!r}; "
                    "create one Monitor per model"
                )
            self._runtime = runtime
            self.model, self.version = model, version
            self.alerts.model = model
            if self.config.prediction_log is not None:
                self.prediction_log = PredictionLog(model, self.config.prediction_log)
            now = self._clock()
            self._latency.append(now, {})
            self._requests.append((now, dict.fromkeys(_REQUEST_STATES, 0)))
        if self.config.ticker:
            self._ticker = threading.Thread(
                target=_tick_loop,
                args=(weakref.ref(self), self._stop, self.config.window_s),
                name=f"aiarch-monitor-{model}",
                daemon=True,
            )
            self._ticker.start()

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn`` with every batch's inputs and outputs observed (one call per batch)."""
        observe = self.observe
        clock = time.perf_counter_ns

        def monitored(*inputs: Any) -> Any:
            t0 = clock()
            outputs = fn(*inputs)
            observe(inputs, outputs, clock() - t0)
            return outputs

        monitored.__wrapped__ = fn  # type: ignore[attr-defined]
        return monitored

    def close(self) -> None:
        """Stops the ticker, the webhook sender and the prediction log (flushing it)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._stop.set()
        if self._ticker is not None and self._ticker is not threading.current_thread():
            self._ticker.join(5.0)
        if self.prediction_log is not None:
            self.prediction_log.close()
        if self.webhook is not None:
            self.webhook.close()

    # ------------------------------------------------------------ the batch path

    def observe(self, inputs: tuple[Any, ...], outputs: Any, latency_ns: int = 0) -> None:
        """Counts one batch. Never raises: a batch the profile does not fit is counted as an
        observe error (logged once) and the batch is served as usual. Thread-safe."""
        try:
            x = _features(self.profile, inputs)
            limit = self.config.max_rows_per_batch
            if 0 < limit < x.shape[0]:
                x = x[:: -(-x.shape[0] // limit)]
            self.sketch.count(x)
            if self.output_sketch is not None:
                outs = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
                self.output_sketch.count(_features(self.output_profile, tuple(outs)))
            if self.prediction_log is not None:
                self.prediction_log.offer(self.version, inputs, outputs, latency_ns)
        except Exception as e:
            self.observe_errors += 1
            if not self._observe_error_logged:
                self._observe_error_logged = True
                log.error("monitor of model %s cannot count a batch: %s", self.model, e)

    # ------------------------------------------------------------ windows (once per window_s)

    def tick(self, now: float | None = None) -> DatasetDrift:
        """Closes the drift window, records a latency point and evaluates the alerts."""
        with self._lock:
            now = self._clock() if now is None else now
            window = np.asarray(self.sketch.take_window(), dtype=np.int64)
            self._last_window = window
            drift = evaluate_drift(self.profile, window, self.config.drift)
            self.last_drift = drift
            if self.output_sketch is not None and self.output_profile is not None:
                out = np.asarray(self.output_sketch.take_window(), dtype=np.int64)
                self._last_output_window = out
                self.last_output_drift = evaluate_drift(self.output_profile, out, self.config.drift)
            stages = self._stage_counts()
            e2e = stages.get("end_to_end")
            tick_latency = (
                summarize(e2e.histogram(self._prev_stages.get("end_to_end")))
                if e2e is not None
                else summarize_empty()
            )
            self._prev_stages = stages
            self._latency.append(now, stages)
            self._requests.append((now, self._request_counts()))
            while len(self._requests) > 2 and self._requests[1][0] <= now - self._latency.horizon_s:
                self._requests.popleft()
            self._history.append(
                HistoryPoint(
                    time=time.time(),
                    rows=drift.rows,
                    drift_share=drift.share,
                    dataset_drift=drift.drifted,
                    latency_us={k: v for k, v in tick_latency.items() if k.endswith("_us")}
                    if tick_latency["count"]
                    else {},
                )
            )
            values = {
                rule.name: self._rule_value(rule, drift, now, stages) for rule in self.alerts.rules
            }
            self.alerts.evaluate(values, self.version, time.time())
            self._last_tick = now
            self.windows_closed += 1
            return drift

    @property
    def last_output_window(self) -> np.ndarray | None:
        """Output bin counts of the last closed window: None without an output profile or
        before the first window closes. Thread-safe (the array is replaced, never changed)."""
        return self._last_output_window

    def _rule_value(
        self, rule: AlertRule, drift: DatasetDrift, now: float, stages: Mapping[str, StageCounts]
    ) -> float:
        if rule.kind == "drift":
            return drift.share if drift.rows > 0 else float("nan")
        if rule.kind == "latency_p99":
            e2e = self._latency.window(now, rule.window_s, stages).get("end_to_end")
            if e2e is None or e2e.total_count == 0:
                return float("nan")
            return e2e.percentile(99.0) / 1e6
        counts = self._request_window(now, rule.window_s, self._request_counts())
        finished = sum(counts.values())
        return counts["failed"] / finished if finished else float("nan")

    # ------------------------------------------------------------ reports

    def snapshot(self) -> MonitorSnapshot:
        """Counts for a report, mergeable with other processes' snapshots. Thread-safe."""
        with self._lock:
            now = self._clock()
            stages = self._stage_counts()
            latency = {}
            for w, seconds in WINDOWS.items():
                if seconds == float("inf"):
                    latency[w] = dict(stages)
                else:
                    hist = self._latency.window(now, seconds, stages)
                    latency[w] = {s: StageCounts.of(h) for s, h in hist.items()}
            counts = self._request_counts()
            requests = {
                w: (counts if s == float("inf") else self._request_window(now, s, counts))
                for w, s in WINDOWS.items()
            }
            drift_all = np.asarray(self.sketch.totals(), np.int64) + np.asarray(
                self.sketch.peek_window(), np.int64
            )
            return MonitorSnapshot(
                model=self.model,
                version=self.version,
                taken_at=time.time(),
                profile=self._profile_bytes,
                latency=latency,
                requests=requests,
                drift_window=self._last_window.tolist(),
                drift_all=drift_all.tolist(),
                history=list(self._history),
            )

    def report(self) -> dict[str, Any]:
        """JSON-ready report: latency and request windows, drift of the last window and since
        start, alert states, counters, history, and the mergeable snapshot. Thread-safe."""
        snap = self.snapshot()
        out = report_from_snapshot(snap, self.config.drift, self.profile)
        if self.last_output_drift is not None:
            out["output_drift"] = msgspec.to_builtins(self.last_output_drift)
        out["alerts"] = [
            {
                "name": r.name,
                "kind": r.kind,
                "threshold": r.threshold,
                "active": self.alerts.active[r.name],
                # NaN (no traffic in the rule's window) is not JSON: null.
                "value": finite(self.alerts.values[r.name]),
            }
            for r in self.alerts.rules
        ]
        out["counters"] = {
            "values_counted": self.sketch.values_counted,
            "windows_closed": self.windows_closed,
            "observe_errors": self.observe_errors,
            "prediction_log_rows": self.prediction_log.logged_rows if self.prediction_log else 0,
            "prediction_log_dropped": self.prediction_log.dropped_rows
            if self.prediction_log
            else 0,
            "webhook_dropped": self.webhook.dropped if self.webhook else 0,
        }
        out["window_s"] = self.config.window_s
        out["snapshot"] = snap
        return out

    # ------------------------------------------------------------ internals

    def _stage_counts(self) -> dict[str, StageCounts]:
        rt = self._runtime
        if rt is None:
            return {}
        try:
            hists = rt.histograms(self.model)
        except Exception:  # the model was removed
            return {}
        return {s: StageCounts.of(hists[s]) for s in STAGES if s in hists}

    def _request_counts(self) -> dict[str, int]:
        rt = self._runtime
        try:
            req = rt.stats(self.model)["requests"] if rt is not None else {}
        except Exception:
            req = {}
        return {k: int(req.get(k, 0)) for k in _REQUEST_STATES}

    def _request_window(
        self, now: float, seconds: float, current: dict[str, int]
    ) -> dict[str, int]:
        base = self._requests[0][1] if self._requests else dict.fromkeys(_REQUEST_STATES, 0)
        for t, counts in self._requests:
            if t <= now - seconds:
                base = counts
        return {k: max(0, current[k] - base.get(k, 0)) for k in _REQUEST_STATES}


def summarize_empty() -> dict[str, float]:
    return {"count": 0, "mean_us": 0.0, "p50_us": 0.0, "p90_us": 0.0, "p99_us": 0.0, "p999_us": 0.0}


def _features(profile: Profile | None, arrays: tuple[Any, ...]) -> np.ndarray:
    """The batch as one rows x features array: a single 2-D input as is (no copy), else every
    input flattened per row and concatenated in order."""
    assert profile is not None
    if len(arrays) == 1:
        x = np.asarray(arrays[0])
        if x.ndim == 1:
            x = x.reshape(-1, 1)
        elif x.ndim > 2:
            x = x.reshape(x.shape[0], -1)
    else:
        parts = [np.asarray(a) for a in arrays]
        x = np.concatenate([p.reshape(p.shape[0], -1) for p in parts], axis=1)
    if x.dtype.kind not in "fiub":
        return profile.encode(x)
    return x


def _tick_loop(ref: weakref.ref[Monitor], stop: threading.Event, interval: float) -> None:
    while not stop.wait(interval):
        mon = ref()
        if mon is None:
            return
        try:
            mon.tick()
        except Exception as e:  # a bad window must not stop monitoring
            log.error("monitor tick failed: %s", e)
        del mon
