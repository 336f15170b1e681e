"""Prometheus exposition of the runtime's counters and histograms, read at scrape time.

Nothing is recorded per request in Python: a scrape calls `runtime.stats(name)` and
`runtime.histograms(name)` once per model and turns the core's snapshots into metric families
(histogram buckets from `HistogramSnapshot.cumulative_counts`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from aiarch.monitor.prometheus import MonitorCollector

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


class MetricsExporter:
    """Owns a private CollectorRegistry (so several servers in one process never clash)."""

    def __init__(self, runtime: Any, app: Any = None):
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(RuntimeCollector(runtime, app))
        self.registry.register(MonitorCollector(runtime))

    def render(self) -> tuple[bytes, str]:
        """(body, content type) in the Prometheus text format. Called once per scrape."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
