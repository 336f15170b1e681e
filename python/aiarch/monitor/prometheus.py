"""Prometheus exposition of the monitors attached to a Runtime, read at scrape time.

Latency histograms with buckets derived from the native histograms are exported by
:mod:`aiarch.serving.metrics`; this collector adds windowed latency percentiles, per-feature
drift gauges of the last closed window, dataset drift, alert states and monitor counters.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

__all__ = ["FeedbackCollector", "MonitorCollector"]

_DRIFT_METRICS = ("psi", "js", "ks", "wasserstein")


def _finite(v: float) -> float:
    return v if math.isfinite(v) else float("nan")


class MonitorCollector:
    """prometheus_client collector over every monitored model of a Runtime; `collect` runs
    once per scrape."""

    def __init__(self, runtime: Any) -> None:
        self.runtime = runtime

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        mv = ["model", "version"]
        latency = GaugeMetricFamily(
            "aiarch_monitor_latency_seconds",
            "Latency percentiles per stage over a window (1m, 5m, all).",
            labels=[*mv, "stage", "window", "quantile"],
        )
        score = GaugeMetricFamily(
            "aiarch_drift_score",
            "Drift of one feature in the last closed window, by metric (psi, js, ks, "
            "wasserstein normalized by the reference std).",
            labels=[*mv, "feature", "metric"],
        )
        null_rate = GaugeMetricFamily(
            "aiarch_drift_null_rate",
            "Share of null values in the last window.",
            labels=[*mv, "feature"],
        )
        detected = GaugeMetricFamily(
            "aiarch_drift_detected",
            "1 when the feature drifted in the last window.",
            labels=[*mv, "feature"],
        )
        share = GaugeMetricFamily(
            "aiarch_drift_share", "Share of features that drifted in the last window.", labels=mv
        )
        dataset = GaugeMetricFamily(
            "aiarch_dataset_drift", "1 when the dataset drifted in the last window.", labels=mv
        )
        window_rows = GaugeMetricFamily(
            "aiarch_drift_window_rows", "Rows counted in the last closed window.", labels=mv
        )
        alert = GaugeMetricFamily(
            "aiarch_monitor_alert_active", "1 while the alert rule fires.", labels=[*mv, "alert"]
        )
        counted = CounterMetricFamily(
            "aiarch_monitor_values_counted",
            "Feature values counted by the drift sketch.",
            labels=mv,
        )
        errors = CounterMetricFamily(
            "aiarch_monitor_observe_errors", "Batches the monitor could not count.", labels=mv
        )
        predlog = CounterMetricFamily(
            "aiarch_prediction_log_rows", "Sampled prediction rows, by fate.", labels=[*mv, "state"]
        )
        rt = self.runtime
        for name in rt.models():
            try:
                mon = rt.monitor(name)
            except Exception:  # unloaded between models() and monitor()
                continue
            if mon is None:
                continue
            lv = [name, mon.version]
            try:
                snap = mon.snapshot()
            except Exception:
                continue
            from .latency import PERCENTILES

            for window, stages in snap.latency.items():
                for stage, counts in stages.items():
                    h = counts.histogram()
                    if h.total_count == 0:
                        continue
                    for _, p in PERCENTILES:
                        quantile = f"{p / 100:g}"
                        latency.add_metric([*lv, stage, window, quantile], h.percentile(p) / 1e9)
            drift = mon.last_drift
            if drift is not None:
                for f in drift.features:
                    for metric in _DRIFT_METRICS:
                        v = getattr(f, metric)
                        if math.isfinite(v):
                            score.add_metric([*lv, f.name, metric], v)
                    null_rate.add_metric([*lv, f.name], _finite(f.null_rate))
                    detected.add_metric([*lv, f.name], 1.0 if f.drifted else 0.0)
                share.add_metric(lv, drift.share)
                dataset.add_metric(lv, 1.0 if drift.drifted else 0.0)
                window_rows.add_metric(lv, float(drift.rows))
            for rule_name, active in mon.alerts.active.items():
                alert.add_metric([*lv, rule_name], 1.0 if active else 0.0)
            counted.add_metric(lv, float(mon.sketch.values_counted))
            errors.add_metric(lv, float(mon.observe_errors))
            pl = mon.prediction_log
            if pl is not None:
                predlog.add_metric([*lv, "logged"], float(pl.logged_rows))
                predlog.add_metric([*lv, "dropped"], float(pl.dropped_rows))
        yield from (latency, score, null_rate, detected, share, dataset, window_rows, alert)
        yield from (counted, errors, predlog)


class FeedbackCollector:
    """`aiarch_online_quality{model,version,metric}` and
    `aiarch_feedback_labels{model,version,outcome}`; `collect` runs once per scrape.

    `source()` returns, per model, (model, quality report, counters): the quality report as
    `FeedbackTracker.quality` gives it and the counters as `FeedbackTracker.counters`
    (`"version|outcome"` -> labels)."""

    def __init__(self, source: Any) -> None:
        self.source = source

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        quality = GaugeMetricFamily(
            "aiarch_online_quality",
            "Online quality of each version over its window of joined labels (auc, accuracy "
            "or mae, by the model's feedback config).",
            labels=["model", "version", "metric"],
        )
        labels = CounterMetricFamily(
            "aiarch_feedback_labels",
            "Ground-truth labels received, by outcome: joined with a prediction, unknown id, "
            "or late (the prediction had left the index).",
            labels=["model", "version", "outcome"],
        )
        for model, report, counters in self.source():
            for version, q in report.items():
                if q["value"] is not None:
                    quality.add_metric([model, version, q["metric"]], float(q["value"]))
            for key, n in counters.items():
                version, _, outcome = key.rpartition("|")
                labels.add_metric([model, version, outcome], float(n))
        yield quality
        yield labels
