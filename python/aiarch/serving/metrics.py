"""Prometheus exposition of the runtime's counters and histograms, read at scrape time.

Nothing is recorded per request in Python: a scrape calls `runtime.stats(name)` and
`runtime.histograms(name)` once per model and turns the core's snapshots into metric families
(histogram buckets from `HistogramSnapshot.cumulative_counts`). A supervised worker
(`--workers N`) merges every worker's published families, stats and monitor snapshots into
each answer (`shared_stats`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import msgspec
import numpy as np
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from aiarch._json import finite
from aiarch.monitor.drift import evaluate_drift
from aiarch.monitor.feedback import quality_report
from aiarch.monitor.monitor import MonitorSnapshot, report_from_snapshot
from aiarch.monitor.prometheus import FeedbackCollector, MonitorCollector

from .features import lookup_stats
from .shared_stats import (
    FEEDBACK_PAIRS_PUBLISHED,
    AlertState,
    FeedbackPart,
    MonitorPart,
    Peers,
    SharedStats,
    WorkerSnapshot,
    collect_families,
    merge_families,
    merge_feedback_parts,
    merge_monitor_parts,
    merge_stats,
    stats_key,
    to_metrics,
)

__all__ = [
    "BATCH_BOUNDS",
    "LATENCY_BOUNDS_NS",
    "HttpCollector",
    "MetricsExporter",
    "RuntimeCollector",
]

LATENCY_BOUNDS_NS: list[int] = [
    int(us * 1000)
    for us in (
        25,
        50,
        100,
        250,
        500,
        1_000,
        2_500,
        5_000,
        10_000,
        25_000,
        50_000,
        100_000,
        250_000,
        500_000,
        1_000_000,
        2_500_000,
        5_000_000,
        10_000_000,
    )
]
"""Bucket upper bounds (ns) of the latency histograms; exported in seconds."""

BATCH_BOUNDS: list[int] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]
"""Bucket upper bounds (rows) of the batch-size histogram."""

_LATENCY = {
    "queue": ("aiarch_queue_duration_seconds", "Time requests wait in the batcher queue."),
    "execution": ("aiarch_execution_duration_seconds", "Model execution time per batch."),
    "end_to_end": ("aiarch_request_duration_seconds", "Submit-to-completion time per request."),
}
_REQUEST_STATES = ("success", "failed", "expired", "rejected", "cancelled")


def _buckets(snapshot: Any, bounds: list[int], scale: float) -> list[tuple[str, float]]:
    counts = snapshot.cumulative_counts(bounds)
    out = [(repr(b * scale) if scale != 1 else str(b), float(c)) for b, c in zip(bounds, counts)]
    out.append(("+Inf", float(snapshot.total_count)))
    return out


class RuntimeCollector:
    """prometheus_client collector over a Runtime; `collect` runs once per scrape."""

    def __init__(self, runtime: Any, app: Any = None):
        self.runtime = runtime
        self.app = app

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        rt = self.runtime
        labels = ["model", "version"]
        requests = CounterMetricFamily(
            "aiarch_requests", "Requests by final state.", labels=[*labels, "status"]
        )
        batches = CounterMetricFamily("aiarch_batches", "Batches executed.", labels=labels)
        rows = CounterMetricFamily("aiarch_rows", "Rows executed.", labels=labels)
        queue_rows = GaugeMetricFamily(
            "aiarch_queue_rows", "Rows waiting in the queue.", labels=labels
        )
        in_flight = GaugeMetricFamily(
            "aiarch_in_flight_batches", "Batches executing now.", labels=labels
        )
        rate = GaugeMetricFamily(
            "aiarch_service_rate_rows_per_second",
            "Measured service rate (used for Retry-After).",
            labels=labels,
        )
        ready = GaugeMetricFamily("aiarch_model_ready", "1 when the model is ready.", labels=labels)
        cache_ops = CounterMetricFamily(
            "aiarch_cache_operations", "Response cache operations.", labels=[*labels, "op"]
        )
        cache_bytes = GaugeMetricFamily(
            "aiarch_cache_bytes", "Bytes held by the response cache.", labels=labels
        )
        cache_entries = GaugeMetricFamily(
            "aiarch_cache_entries", "Entries in the response cache.", labels=labels
        )
        hists = {
            key: HistogramMetricFamily(name, doc, labels=labels, unit="")
            for key, (name, doc) in _LATENCY.items()
        }
        batch_hist = HistogramMetricFamily(
            "aiarch_batch_size", "Rows per executed batch.", labels=labels
        )
        public = getattr(self.app, "public_names", None) or {}
        for name in rt.models():
            try:
                s = rt.stats(name)
                h = rt.histograms(name)
                info_ready = rt.model_info(name).ready
            except Exception:  # unloaded between models() and stats(): skip it this scrape
                continue
            lv = [public.get(name, name), str(s.get("version", ""))]
            req = s.get("requests", {})
            for state in _REQUEST_STATES:
                requests.add_metric([*lv, state], float(req.get(state, 0)))
            batches.add_metric(lv, float(s.get("batches", 0)))
            rows.add_metric(lv, float(s.get("rows", 0)))
            queue_rows.add_metric(lv, float(s.get("queue_rows", 0)))
            in_flight.add_metric(lv, float(s.get("in_flight_batches", 0)))
            rate.add_metric(lv, float(s.get("service_rate_rows_per_s", 0.0)))
            ready.add_metric(lv, 1.0 if info_ready else 0.0)
            cache = s.get("cache")
            if cache:
                for op in ("hits", "misses", "evictions", "inserts"):
                    cache_ops.add_metric([*lv, op], float(cache.get(op, 0)))
                cache_bytes.add_metric(lv, float(cache.get("bytes", 0)))
                cache_entries.add_metric(lv, float(cache.get("entries", 0)))
            totals = s.get("totals_ns", {})
            for key, fam in hists.items():
                snap = h.get(key)
                if snap is not None:
                    fam.add_metric(
                        lv,
                        _buckets(snap, LATENCY_BOUNDS_NS, 1e-9),
                        float(totals.get(key, 0)) * 1e-9,
                    )
            snap = h.get("batch_size")
            if snap is not None:
                batch_hist.add_metric(lv, _buckets(snap, BATCH_BOUNDS, 1), float(s.get("rows", 0)))
        yield from (
            requests,
            batches,
            rows,
            queue_rows,
            in_flight,
            rate,
            ready,
            cache_ops,
            cache_bytes,
            cache_entries,
            *hists.values(),
            batch_hist,
        )
        app = self.app
        if app is not None:
            g = GaugeMetricFamily("aiarch_server_ready", "1 when the server is ready.")
            g.add_metric([], 1.0 if app.ready and not app.draining else 0.0)
            yield g
        from .features import collect_metrics

        yield from collect_metrics(rt.models())


class HttpCollector:
    """The HTTP front end's connections and what its limits refused; `collect` runs once per
    scrape. `server` has `connections` and `counters` (`aiarch.serving.http.HttpCounters`)."""

    def __init__(self, server: Any):
        self.server = server

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        server = self.server
        c = server.counters
        open_ = GaugeMetricFamily("aiarch_http_connections", "Open HTTP connections.")
        open_.add_metric([], float(len(server.connections)))
        timeouts = CounterMetricFamily(
            "aiarch_http_request_timeouts",
            "Requests closed with 408 because their headers or body arrived too slowly.",
            labels=["phase"],
        )
        timeouts.add_metric(["header"], float(c.header_timeouts))
        timeouts.add_metric(["body"], float(c.body_timeouts))
        refused = CounterMetricFamily(
            "aiarch_http_connections_refused",
            "Connections refused with 503 by the connection caps.",
            labels=["limit"],
        )
        refused.add_metric(["global"], float(c.refused_global))
        refused.add_metric(["per_ip"], float(c.refused_per_ip))
        yield from (open_, timeouts, refused)
        native = getattr(server, "native", None)
        if native is not None:
            forwarded = CounterMetricFamily(
                "aiarch_http_requests_forwarded",
                "Requests the native front end handed to the Python application: every one "
                "but the v2 infer requests it answers itself (see the README's native path).",
            )
            forwarded.add_metric([], float(native.forwarded))
            yield forwarded


class MetricsExporter:
    """`/metrics`, `/stats` and `/monitor` data of one worker: owns a private CollectorRegistry
    (so several servers in one process never clash). In a supervised worker (`--workers N`) every
    answer covers all workers (see `shared_stats`); a lone server reads only its own runtime."""

    def __init__(self, runtime: Any, app: Any = None):
        self.runtime = runtime
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(RuntimeCollector(runtime, app))
        self.shared = SharedStats.from_environment()
        if self.shared is None:
            self.registry.register(MonitorCollector(runtime))
            self.registry.register(FeedbackCollector(self._own_feedback))
        # Supervised: monitor and feedback families are computed from the merged snapshots at
        # render time.

    # -- one worker's snapshot (supervised workers only) ------------------------------------
    def publish(self) -> WorkerSnapshot | None:
        """Take this worker's snapshot and publish it for the other workers; None for a lone
        server. Called every `PUBLISH_PERIOD_S` on the loop thread, and by every scrape."""
        if self.shared is None:
            return None
        rt = self.runtime
        stats: dict[str, dict[str, Any]] = {}
        monitors: dict[str, MonitorPart] = {}
        for name in rt.models():
            try:
                s = rt.stats(name)
                mon = rt.monitor(name)
            except Exception:  # unloaded between models() and stats()
                continue
            lookup = lookup_stats(name)
            if lookup is not None:
                s["feature_lookup"] = lookup
            key = stats_key(name, s.get("version", ""))
            stats[key] = s
            if mon is not None:
                monitors[key] = monitor_part(mon)
        feedback = {}
        for model in rt.feedback_models():
            tracker = rt.feedback_tracker(model)
            pairs = {
                v: (p[-FEEDBACK_PAIRS_PUBLISHED:], lab[-FEEDBACK_PAIRS_PUBLISHED:])
                for v, (p, lab) in tracker.window_pairs().items()
            }
            feedback[model] = FeedbackPart(tracker.config.metric, pairs, tracker.counters())
        snap = WorkerSnapshot(
            self.shared.worker,
            time.time(),
            families=collect_families(self.registry),
            stats=stats,
            monitors=monitors,
            feedback=feedback,
        )
        self.shared.publish(snap)
        return snap

    def _server_view(self) -> tuple[WorkerSnapshot, Peers]:
        assert self.shared is not None
        own = self.publish()
        assert own is not None
        return own, self.shared.peers()

    # -- answers -----------------------------------------------------------------------------
    def render(self) -> tuple[bytes, str]:
        """(body, content type) in the Prometheus text format. Called once per scrape."""
        if self.shared is None:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        own, peers = self._server_view()
        retired = peers.retired
        families = merge_families(
            [own.families, *(p.families for p in peers.live)],
            retired.families if retired is not None else None,
        )
        merged = CollectorRegistry(auto_describe=False)
        merged.register(_Fixed(list(to_metrics(families))))
        merged.register(MonitorCollector(_MergedMonitors(self.runtime, own, peers)))
        parts = {m: _merged_feedback(m, own, peers) for m in own.feedback}
        merged.register(
            FeedbackCollector(
                lambda: [
                    (m, quality_report(p.metric, p.pairs), p.counters) for m, p in parts.items()
                ]
            )
        )
        return generate_latest(merged), CONTENT_TYPE_LATEST

    # -- label feedback ----------------------------------------------------------------------
    def _own_feedback(self) -> list[tuple[str, dict[str, Any], dict[str, int]]]:
        rt = self.runtime
        out = []
        for model in rt.feedback_models():
            tracker = rt.feedback_tracker(model)
            out.append((model, tracker.quality(), tracker.counters()))
        return out

    def quality(self, model: str, tracker: Any) -> dict[str, Any]:
        """The `quality` key of `/monitor`: per version over all workers when supervised (each
        worker's latest `FEEDBACK_PAIRS_PUBLISHED` joined labels), else this process's."""
        if self.shared is None:
            return tracker.quality()
        own, peers = self._server_view()
        part = _merged_feedback(model, own, peers)
        return quality_report(part.metric, part.pairs)

    def feedback_counts(self, model: str, tracker: Any) -> dict[str, dict[str, int]]:
        """`{"<version>": {"joined": n, ...}}` since start ("" = unknown ids), over all live
        workers when supervised."""
        if self.shared is None:
            counters = tracker.counters()
        else:
            own, peers = self._server_view()
            counters = _merged_feedback(model, own, peers).counters
        out: dict[str, dict[str, int]] = {}
        for key, n in counters.items():
            version, _, outcome = key.rpartition("|")
            out.setdefault(version, {})[outcome] = n
        return out

    def model_stats(self, names: list[str]) -> list[dict[str, Any]]:
        """Runtime stats of each model (with "feature_lookup" when it has a lookup stage), over
        all workers when supervised. Called once per `/stats` request."""
        if self.shared is None:
            out = []
            for n in names:
                s = self.runtime.stats(n)
                lookup = lookup_stats(n)
                if lookup is not None:
                    s["feature_lookup"] = lookup
                out.append(s)
            return out
        own, peers = self._server_view()
        result = []
        for n in names:
            key = _key_of(own, n)
            if key is None:
                result.append(self.runtime.stats(n))  # loaded after the snapshot: local only
                continue
            live = [own.stats[key], *(p.stats[key] for p in peers.live if key in p.stats)]
            gone = peers.retired.stats.get(key) if peers.retired is not None else None
            result.append(merge_stats(live, [gone] if gone is not None else []))
        return result

    def monitor_report(self, name: str, monitor: Any) -> dict[str, Any]:
        """The monitor report of model `name` (runtime name), over all workers when supervised:
        latency, request counts, input and output drift, alerts and counters merged. Called once
        per `/monitor` request."""
        report: dict[str, Any] = monitor.report()
        if self.shared is None:
            return report
        own, peers = self._server_view()
        key = _key_of(own, name)
        if key is None or key not in own.monitors:
            return report
        part = _merged_monitor(key, own, peers)
        merged = report_from_snapshot(part.snapshot, monitor.config.drift, monitor.profile)
        for field in ("taken_at", "processes", "latency_us", "requests", "drift"):
            report[field] = merged[field]
        report["counters"] = {**report["counters"], **part.counters}
        report["snapshot"] = part.snapshot
        for alert in report["alerts"]:
            state = part.alerts.get(alert["name"])
            if state is not None:
                alert["active"] = state.active
                alert["value"] = finite(state.value)
        if monitor.output_profile is not None and part.output_window:
            report["output_drift"] = msgspec.to_builtins(
                evaluate_drift(
                    monitor.output_profile, np.asarray(part.output_window), monitor.config.drift
                )
            )
        return report


def monitor_part(mon: Any) -> MonitorPart:
    """What one worker publishes of a monitor: its snapshot, counters, alert states and last
    output window."""
    alerts = mon.alerts
    out = mon.last_output_window
    return MonitorPart(
        mon.snapshot(),
        monitor_counters(mon),
        alerts={
            name: AlertState(bool(alerts.active[name]), float(alerts.values[name]))
            for name in alerts.active
        },
        output_window=out.tolist() if out is not None else [],
    )


def monitor_counters(mon: Any) -> dict[str, int]:
    """A monitor's counters, as its report names them."""
    pl = mon.prediction_log
    return {
        "values_counted": int(mon.sketch.values_counted),
        "windows_closed": int(mon.windows_closed),
        "observe_errors": int(mon.observe_errors),
        "prediction_log_rows": int(pl.logged_rows) if pl else 0,
        "prediction_log_dropped": int(pl.dropped_rows) if pl else 0,
        "webhook_dropped": int(mon.webhook.dropped) if mon.webhook else 0,
    }


def _key_of(own: WorkerSnapshot, name: str) -> str | None:
    for key in own.stats:
        if key.rpartition("@")[0] == name:
            return key
    return None


def _merged_feedback(model: str, own: WorkerSnapshot, peers: Peers) -> FeedbackPart:
    """Live workers' feedback of `model` (dead workers' labels are not kept)."""
    parts = [own.feedback[model], *(p.feedback[model] for p in peers.live if model in p.feedback)]
    return merge_feedback_parts(parts)


def _merged_monitor(key: str, own: WorkerSnapshot, peers: Peers) -> MonitorPart:
    parts = [own.monitors[key], *(p.monitors[key] for p in peers.live if key in p.monitors)]
    if peers.retired is not None and key in peers.retired.monitors:
        parts.append(peers.retired.monitors[key])
    return merge_monitor_parts(parts)


class _Fixed:
    """A collector of metric families computed before the scrape's render."""

    def __init__(self, metrics: list[Metric]) -> None:
        self.metrics = metrics

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        return iter(self.metrics)


class _MergedMonitors:
    """What `MonitorCollector` reads from a runtime (`models`, `monitor`), answered with every
    worker's monitors merged, so the exported monitor families are those of the server."""

    def __init__(self, runtime: Any, own: WorkerSnapshot, peers: Peers) -> None:
        self.runtime = runtime
        self.own = own
        self.peers = peers
        self.keys = {key.rpartition("@")[0]: key for key in own.monitors}

    def models(self) -> list[str]:
        return list(self.keys)

    def monitor(self, name: str) -> Any:
        live = self.runtime.monitor(name)
        if live is None:
            return None
        return _MergedMonitor(live, _merged_monitor(self.keys[name], self.own, self.peers))


class _MergedMonitor:
    """The attributes `MonitorCollector` reads from a Monitor, over every worker: merged
    snapshot, drift of the merged last windows, summed counters, merged alert states."""

    def __init__(self, live: Any, part: MonitorPart) -> None:
        self.version = live.version
        self.alerts = SimpleNamespace(
            active={
                name: (part.alerts[name].active if name in part.alerts else active)
                for name, active in live.alerts.active.items()
            }
        )
        self._snapshot = part.snapshot
        c = part.counters
        self.sketch = SimpleNamespace(values_counted=c.get("values_counted", 0))
        self.observe_errors = c.get("observe_errors", 0)
        self.prediction_log = (
            SimpleNamespace(
                logged_rows=c.get("prediction_log_rows", 0),
                dropped_rows=c.get("prediction_log_dropped", 0),
            )
            if live.prediction_log is not None
            else None
        )
        self.last_drift = (
            evaluate_drift(live.profile, np.asarray(part.snapshot.drift_window), live.config.drift)
            if c.get("windows_closed", 0) > 0
            else None
        )

    def snapshot(self) -> MonitorSnapshot:
        return self._snapshot
