"""Candidate vs production from scraped `/metrics` text: parsing, windows, p99 from buckets,
and each threshold (error rate, p99, drift, online quality), with golden figures."""

from __future__ import annotations

import pytest

from aiarch.rollout import Thresholds, judge, parse_metrics
from aiarch.rollout.judge import ArmStats, arm_stats, histogram_quantile


def _scrape(
    p_ok: int, p_fail: int, c_ok: int, c_fail: int, c_slow: int, quality: bool = True
) -> str:
    """A `/metrics` answer as `aiarch serve` writes it: version 1 = production, 2 = candidate;
    candidate requests counted in `c_slow` took 0.1-0.25 s, the rest 0.5-1 ms."""
    p_total, c_total = p_ok + p_fail, c_ok + c_fail
    lines = [
        "# HELP aiarch_requests_total Requests by final state.",
        "# TYPE aiarch_requests_total counter",
        f'aiarch_requests_total{{model="fraud",status="success",version="1"}} {p_ok}.0',
        f'aiarch_requests_total{{model="fraud",status="failed",version="1"}} {p_fail}.0',
        'aiarch_requests_total{model="fraud",status="cancelled",version="1"} 4.0',
        f'aiarch_requests_total{{model="fraud",status="success",version="2"}} {c_ok}.0',
        f'aiarch_requests_total{{model="fraud",status="failed",version="2"}} {c_fail}.0',
        'aiarch_requests_total{model="other",status="failed",version="2"} 999.0',
        "# HELP aiarch_request_duration_seconds Submit-to-completion time per request.",
        "# TYPE aiarch_request_duration_seconds histogram",
    ]
    for version, total, slow in (("1", p_total, 0), ("2", c_total, c_slow)):
        for le, count in (
            ("0.0005", 0),
            ("0.001", total - slow),
            ("0.1", total - slow),
            ("0.25", total),
            ("+Inf", total),
        ):
            lines.append(
                f'aiarch_request_duration_seconds_bucket{{le="{le}",model="fraud",version="{version}"}} {count}.0'
            )
        lines.append(
            f'aiarch_request_duration_seconds_count{{model="fraud",version="{version}"}} {total}.0'
        )
        lines.append(
            f'aiarch_request_duration_seconds_sum{{model="fraud",version="{version}"}} 1.0'
        )
    lines += [
        "# HELP aiarch_drift_share Share of features that drifted in the last window.",
        "# TYPE aiarch_drift_share gauge",
        'aiarch_drift_share{model="fraud.v1",version="1"} 0.1',
        'aiarch_drift_share{model="fraud.v2",version="2"} 0.6',
    ]
    if quality:
        lines += [
            "# HELP aiarch_online_quality Online quality from labelled feedback.",
            "# TYPE aiarch_online_quality gauge",
            'aiarch_online_quality{metric="auc",model="fraud",version="1"} 0.91',
            'aiarch_online_quality{metric="auc",model="fraud",version="2"} 0.86',
            'aiarch_online_quality{metric="mae",model="fraud",version="1"} 2.0',
            'aiarch_online_quality{metric="mae",model="fraud",version="2"} 2.01',
        ]
    return "\n".join(lines) + "\n"


def test_parse_reads_each_arm_of_the_model_only() -> None:
    arms = parse_metrics(_scrape(90, 10, 45, 5, 0), "fraud")
    assert set(arms) == {"1", "2"}
    assert arms["1"].requests == {"success": 90.0, "failed": 10.0, "cancelled": 4.0}
    assert arms["2"].requests == {"success": 45.0, "failed": 5.0}  # "other" is not counted
    assert arms["2"].buckets[0.25] == 50.0 and arms["2"].buckets[float("inf")] == 50.0
    assert arms["1"].drift_share == 0.1 and arms["2"].drift_share == 0.6
    assert arms["2"].quality == {"auc": 0.86, "mae": 2.01}


def test_a_window_is_the_difference_of_two_scrapes_and_survives_a_restart() -> None:
    before = parse_metrics(_scrape(90, 10, 45, 5, 0), "fraud")
    after = parse_metrics(_scrape(190, 10, 95, 25, 20), "fraud")
    w = after["2"].minus(before["2"])
    assert w.requests == {"success": 50.0, "failed": 20.0}
    assert w.buckets[0.001] == 50.0 and w.buckets[0.25] == 70.0
    restarted = parse_metrics(_scrape(3, 0, 1, 0, 0), "fraud")
    assert restarted["2"].minus(after["2"]).requests == {"success": 1.0, "failed": 0.0}
    stats = arm_stats(2, [w, w])  # two servers
    assert (stats.requests, stats.errors) == (140, 40)
    assert stats.error_rate == pytest.approx(40 / 140)


def test_histogram_quantile_golden_values() -> None:
    buckets = {0.001: 50.0, 0.1: 50.0, 0.25: 100.0, float("inf"): 100.0}
    # rank 99 of 100 lies in (0.1, 0.25]: 0.1 + 0.15 * (99 - 50) / 50
    assert histogram_quantile(0.99, buckets) == pytest.approx(0.247)
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.001)
    assert histogram_quantile(0.99, {0.001: 0.0, float("inf"): 10.0}) == 0.001
    assert histogram_quantile(0.99, {0.001: 0.0, float("inf"): 0.0}) is None
    assert histogram_quantile(0.99, {}) is None


def _arms(text: str) -> tuple[ArmStats, ArmStats]:
    arms = parse_metrics(text, "fraud")
    return arm_stats(1, [arms["1"]]), arm_stats(2, [arms["2"]])


def test_candidate_errors_breach_naming_both_rates() -> None:
    prod, cand = _arms(_scrape(990, 10, 90, 10, 0, quality=False))
    v = judge(prod, cand, Thresholds(min_requests=50, max_drift_share_increase=1.0))
    assert v.decision == "breach"
    assert v.reasons == [
        "error rate 10.00 % vs 1.00 % in production (+9.00 % > +1.00 % allowed; 10 of 100 "
        "requests failed)"
    ]
    assert "online quality not compared: not exported for both arms" in v.notes


def test_slow_candidate_breaches_p99_but_fast_noise_does_not() -> None:
    prod, cand = _arms(_scrape(1000, 0, 100, 0, 5, quality=False))
    v = judge(prod, cand, Thresholds(min_requests=50, max_drift_share_increase=1.0))
    assert v.decision == "breach" and len(v.reasons) == 1
    assert v.reasons[0].startswith("p99 220.0 ms vs 1.0 ms in production")
    # Under the floor a ratio is noise: 1 ms vs 0.99 ms twice over is not judged.
    v = judge(ArmStats(1, 100, 0, 0.0004), ArmStats(2, 100, 0, 0.0009), Thresholds(min_requests=50))
    assert v.decision == "ok"


def test_online_quality_compares_each_metric_in_its_direction() -> None:
    prod, cand = _arms(_scrape(1000, 0, 100, 0, 0))
    limits = Thresholds(min_requests=50, max_drift_share_increase=1.0, max_quality_drop=0.02)
    v = judge(prod, cand, limits)
    # auc fell by 0.05 (higher is better); mae rose by 0.01 (lower is better, within 0.02).
    assert v.decision == "breach"
    assert v.reasons == ["online auc 0.86 vs 0.91 in production (worse by 0.05 > 0.02 allowed)"]
    v = judge(
        prod, cand, Thresholds(min_requests=50, max_drift_share_increase=1.0, max_quality_drop=0.06)
    )
    assert v.decision == "ok"
    worse_mae = ArmStats(2, 100, 0, 0.001, quality={"mae": 2.5})
    v = judge(ArmStats(1, 100, 0, 0.001, quality={"mae": 2.0}), worse_mae, limits)
    assert v.reasons == ["online mae 2.5 vs 2 in production (worse by 0.5 > 0.02 allowed)"]


def test_drift_share_increase_breaches_when_both_arms_export_it() -> None:
    prod, cand = _arms(_scrape(1000, 0, 100, 0, 0, quality=False))
    v = judge(prod, cand, Thresholds(min_requests=50, max_drift_share_increase=0.25))
    assert v.reasons == ["drifted-feature share 0.60 vs 0.10 in production (+0.50 > +0.25 allowed)"]


def test_too_few_requests_is_insufficient_not_a_verdict() -> None:
    prod, cand = _arms(_scrape(990, 10, 9, 10, 0))  # a candidate failing half: only 19 seen
    v = judge(prod, cand, Thresholds(min_requests=50))
    assert v.decision == "insufficient" and v.reasons == []
    assert v.notes == ["candidate has 19 requests (need 50)"]
