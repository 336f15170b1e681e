"""Candidate vs production, from the servers' Prometheus `/metrics` text.

A scrape is reduced to one `ArmCounters` per served version of the model: request counts by
final state (`aiarch_requests`), end-to-end latency buckets (`aiarch_request_duration_seconds`),
the drifted-feature share of the last drift window (`aiarch_drift_share`) and online quality
gauges (`aiarch_online_quality{model,version,metric}`). Counters and buckets are cumulative,
so a step is judged on the difference between two scrapes of each server (a server that
restarted in between counts from zero); gauges are taken from the later scrape.

`judge` compares the two arms' `ArmStats` against `Thresholds` and says breach, ok or
insufficient (too few requests to say anything).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from .state import Thresholds

__all__ = [
    "ArmCounters",
    "ArmStats",
    "Verdict",
    "arm_stats",
    "histogram_quantile",
    "judge",
    "parse_metrics",
]

ERROR_STATES = ("failed", "expired", "rejected")
"""Final request states that count as errors (cancelled = the client left: not the model's)."""
_COUNTED_STATES = ("success", *ERROR_STATES)

HIGHER_IS_BETTER = frozenset({"auc", "accuracy", "precision", "recall", "f1"})
LOWER_IS_BETTER = frozenset({"mae", "mse", "rmse", "log_loss", "brier"})


@dataclass
class ArmCounters:
    """What one server reported for one version of the model at one scrape."""

    requests: dict[str, float] = field(default_factory=dict)
    buckets: dict[float, float] = field(default_factory=dict)  # upper bound (s) → cumulative
    drift_share: float | None = None
    quality: dict[str, float] = field(default_factory=dict)

    def total(self) -> float:
        return sum(self.requests.get(s, 0.0) for s in _COUNTED_STATES)

    def minus(self, before: ArmCounters | None) -> ArmCounters:
        """The counts since `before` (a scrape of the same server); everything when the
        server restarted in between (a counter went down) or there was no earlier scrape."""
        if before is None or any(self.requests.get(k, 0.0) < v for k, v in before.requests.items()):
            return self
        return ArmCounters(
            requests={k: v - before.requests.get(k, 0.0) for k, v in self.requests.items()},
            buckets={k: v - before.buckets.get(k, 0.0) for k, v in self.buckets.items()},
            drift_share=self.drift_share,
            quality=dict(self.quality),
        )


def _served_as(labels: Mapping[str, str], model: str) -> bool:
    # Runtime families label the public name; monitor families the runtime name (`fraud.v3`).
    name = labels.get("model", "")
    return name == model or (name.startswith(model + ".v") and name[len(model) + 2 :].isdigit())


def parse_metrics(text: str, model: str) -> dict[str, ArmCounters]:
    """Version label → counters of `model` in one `/metrics` answer."""
    arms: dict[str, ArmCounters] = {}

    def arm(labels: Mapping[str, str]) -> ArmCounters:
        return arms.setdefault(labels.get("version", ""), ArmCounters())

    for family in text_string_to_metric_families(text):
        if family.name not in (
            "aiarch_requests",
            "aiarch_request_duration_seconds",
            "aiarch_drift_share",
            "aiarch_online_quality",
        ):
            continue
        for s in family.samples:
            labels = s.labels
            if not _served_as(labels, model) or not labels.get("version"):
                continue
            if family.name == "aiarch_requests" and s.name == "aiarch_requests_total":
                a = arm(labels)
                state = labels.get("status", "")
                a.requests[state] = a.requests.get(state, 0.0) + s.value
            elif s.name == "aiarch_request_duration_seconds_bucket":
                le = float(labels["le"])
                a = arm(labels)
                a.buckets[le] = a.buckets.get(le, 0.0) + s.value
            elif family.name == "aiarch_drift_share":
                arm(labels).drift_share = s.value
            elif (
                family.name == "aiarch_online_quality"
                and labels.get("metric")
                and math.isfinite(s.value)
            ):
                arm(labels).quality[labels["metric"]] = s.value
    return arms


def histogram_quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """The q-quantile of cumulative `buckets` (upper bound → count), interpolated linearly
    inside its bucket as Prometheus' histogram_quantile does; the highest finite bound when it
    falls in the +Inf bucket; None without observations."""
    bounds = sorted(buckets)
    if not bounds:
        return None
    total = buckets[bounds[-1]]
    if total <= 0:
        return None
    rank = q * total
    prev_bound, prev_count = 0.0, 0.0
    for b in bounds:
        c = buckets[b]
        if c >= rank:
            if math.isinf(b):
                return prev_bound
            if c == prev_count:
                return b
            return prev_bound + (b - prev_bound) * (rank - prev_count) / (c - prev_count)
        prev_bound, prev_count = b, c
    return prev_bound


@dataclass(frozen=True)
class ArmStats:
    """One arm over one step's window, summed over the servers."""

    version: int
    requests: int
    errors: int
    p99_s: float | None
    drift_share: float | None = None
    quality: dict[str, float] = field(default_factory=dict)

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["error_rate"] = self.error_rate
        return d


def arm_stats(version: int, windows: Iterable[ArmCounters]) -> ArmStats:
    """Sum one version's per-server windows; gauges are averaged over the servers having them."""
    requests: dict[str, float] = {}
    buckets: dict[float, float] = {}
    drift: list[float] = []
    quality: dict[str, list[float]] = {}
    for w in windows:
        for state, n in w.requests.items():
            requests[state] = requests.get(state, 0.0) + n
        for bound, n in w.buckets.items():
            buckets[bound] = buckets.get(bound, 0.0) + n
        if w.drift_share is not None:
            drift.append(w.drift_share)
        for k, v in w.quality.items():
            quality.setdefault(k, []).append(v)
    total = sum(requests.get(s, 0.0) for s in _COUNTED_STATES)
    errors = sum(requests.get(s, 0.0) for s in ERROR_STATES)
    return ArmStats(
        version=version,
        requests=round(total),
        errors=round(errors),
        p99_s=histogram_quantile(0.99, buckets),
        drift_share=sum(drift) / len(drift) if drift else None,
        quality={k: sum(v) / len(v) for k, v in sorted(quality.items())},
    )


@dataclass(frozen=True)
class Verdict:
    """`decision`: "breach" (roll back), "ok" (the candidate is no worse), or "insufficient"
    (an arm has fewer than `min_requests` requests: keep dwelling). `reasons` name every
    breached threshold with both arms' figures; `notes` what was not compared and why."""

    decision: str
    reasons: list[str]
    notes: list[str]

    @property
    def summary(self) -> str:
        return "; ".join(self.reasons or self.notes)


def _pct(x: float) -> str:
    return f"{100 * x:.2f} %"


def judge(production: ArmStats, candidate: ArmStats, limits: Thresholds) -> Verdict:
    """Compare the arms on error rate, p99 latency, drift and online quality."""
    short = [
        f"{name} has {arm.requests} requests (need {limits.min_requests})"
        for name, arm in (("candidate", candidate), ("production", production))
        if arm.requests < limits.min_requests
    ]
    if short:
        return Verdict("insufficient", [], short)
    reasons: list[str] = []
    notes: list[str] = []
    excess = candidate.error_rate - production.error_rate
    if excess > limits.max_error_rate_increase:
        reasons.append(
            f"error rate {_pct(candidate.error_rate)} vs {_pct(production.error_rate)} in "
            f"production (+{_pct(excess)} > +{_pct(limits.max_error_rate_increase)} allowed; "
            f"{candidate.errors} of {candidate.requests} requests failed)"
        )
    cp, pp = candidate.p99_s, production.p99_s
    if cp is None or pp is None:
        notes.append("p99 not compared: no latency histogram for an arm")
    elif cp > limits.p99_floor_s and cp > limits.max_p99_ratio * pp:
        reasons.append(
            f"p99 {cp * 1e3:.1f} ms vs {pp * 1e3:.1f} ms in production "
            f"(x{cp / pp if pp > 0 else math.inf:.2f} > x{limits.max_p99_ratio:g} allowed)"
        )
    cd, pd = candidate.drift_share, production.drift_share
    if cd is None or pd is None:
        notes.append("drift not compared: not exported for both arms")
    elif cd - pd > limits.max_drift_share_increase:
        reasons.append(
            f"drifted-feature share {cd:.2f} vs {pd:.2f} in production "
            f"(+{cd - pd:.2f} > +{limits.max_drift_share_increase:g} allowed)"
        )
    shared = sorted(set(candidate.quality) & set(production.quality))
    if not shared:
        notes.append("online quality not compared: not exported for both arms")
    for metric in shared:
        c, p = candidate.quality[metric], production.quality[metric]
        if metric in HIGHER_IS_BETTER:
            worse = p - c
        elif metric in LOWER_IS_BETTER:
            worse = c - p
        else:
            notes.append(f"online quality {metric!r} not compared: direction unknown")
            continue
        if worse > limits.max_quality_drop:
            reasons.append(
                f"online {metric} {c:.4g} vs {p:.4g} in production "
                f"(worse by {worse:.4g} > {limits.max_quality_drop:g} allowed)"
            )
    return Verdict("breach" if reasons else "ok", reasons, notes)
