"""A monitor window with no traffic is no evidence: a firing alert keeps firing through it, the
window's latency is "no data" (a gap in plots, "-" in tables), and reports stay valid JSON."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator

import msgspec
import numpy as np
import pytest

import aiarch
from aiarch.monitor import AlertRule, Monitor, MonitorConfig, Profile
from aiarch.monitor.report import latency_series_ms, render_table

SPEC = [aiarch.TensorSpec("x", "float32", (3,))]


class _Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def runtime() -> Iterator[aiarch.Runtime]:
    rt = aiarch.Runtime()
    yield rt
    rt.close()


def test_quiet_window_keeps_the_alert_and_has_no_latency(
    runtime: aiarch.Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    rng = np.random.default_rng(0)
    profile = Profile.build(rng.normal(size=(10_000, 3)), ["a", "b", "c"])
    clock = _Clock()
    cfg = MonitorConfig(
        ticker=False,
        alerts=(
            AlertRule("drifting", "drift", 0.5),
            AlertRule("slow", "latency_p99", 0.0),  # any finished request is "slow"
        ),
    )
    mon = Monitor(profile, config=cfg, clock=clock)
    runtime.add_model("m", lambda x: x.sum(axis=1, keepdims=True), inputs=SPEC, monitor=mon)
    with caplog.at_level(logging.INFO, logger="aiarch.monitor"):
        # Window 1: shifted inputs: both alerts fire.
        for _ in range(3):
            runtime.infer_sync("m", rng.normal(loc=3, size=(50, 3)).astype(np.float32))
        clock.t += 60
        mon.tick()
        assert mon.alerts.active == {"drifting": True, "slow": True}
        # Window 2: no traffic at all (the latency rule's 60 s window is empty too).
        clock.t += 61
        mon.tick()
        assert mon.alerts.active == {"drifting": True, "slow": True}
        # Window 3: traffic from the reference distribution: drift resolves on evidence.
        for _ in range(20):
            runtime.infer_sync("m", rng.normal(size=(50, 3)).astype(np.float32))
        clock.t += 60
        mon.tick()
        assert mon.alerts.active == {"drifting": False, "slow": True}
    changes = [r.getMessage() for r in caplog.records if r.getMessage().startswith("alert ")]
    assert [c.split(" for ")[0] for c in changes] == [
        "alert drifting firing",
        "alert slow firing",
        "alert drifting resolved",
    ]

    report = mon.report()
    history = report["history"]
    assert [bool(h["latency_us"]) for h in history] == [True, False, True]
    series = latency_series_ms(history, "p99_us")
    assert series[0] > 0 and math.isnan(series[1]) and series[2] > 0


def test_report_of_an_idle_model_is_strict_json(runtime: aiarch.Runtime) -> None:
    rng = np.random.default_rng(1)
    profile = Profile.build(rng.normal(size=(1_000, 3)), ["a", "b", "c"])
    clock = _Clock()
    cfg = MonitorConfig(ticker=False, alerts=(AlertRule("slow", "latency_p99", 5.0),))
    mon = Monitor(profile, config=cfg, clock=clock)
    runtime.add_model("m", lambda x: x.sum(axis=1, keepdims=True), inputs=SPEC, monitor=mon)
    clock.t += 60
    mon.tick()
    report = mon.report()
    assert report["alerts"][0]["value"] is None
    json.dumps(msgspec.to_builtins(report), allow_nan=False)  # raises on NaN / Infinity
    table = render_table(msgspec.to_builtins(report))
    e2e = [line for line in table.splitlines() if line.startswith("end_to_end")]
    assert e2e and all(line.split()[2:] == ["0", "-", "-", "-", "-"] for line in e2e), table
