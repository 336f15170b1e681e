"""The monitor attached to a real Runtime: one count per batch, nulls, errors that never fail a
batch, windows, alerts (log once per state change, metric, webhook over real HTTP) and the
sampled Parquet prediction log."""

from __future__ import annotations

import http.server
import json
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import aiarch
from aiarch.monitor import AlertRule, Monitor, MonitorConfig, PredictionLogConfig, Profile
from aiarch.monitor.prometheus import MonitorCollector

SPEC = [aiarch.TensorSpec("x", "float32", (3,))]


def _profile() -> Profile:
    rng = np.random.default_rng(0)
    return Profile.build(rng.normal(size=(10_000, 3)), ["a", "b", "c"])


def _model(x: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):  # inf + -inf rows in the null test
        return x.sum(axis=1, keepdims=True)


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


def test_counts_every_served_row_but_not_the_warm_up(runtime: aiarch.Runtime) -> None:
    mon = Monitor(_profile(), config=MonitorConfig(ticker=False))
    runtime.add_model("m", _model, inputs=SPEC, monitor=mon)
    assert runtime.monitor("m") is mon
    assert mon.sketch.values_counted == 0  # warm-up batch is not served traffic
    rng = np.random.default_rng(1)
    for _ in range(20):
        runtime.infer_sync("m", rng.normal(size=(5, 3)).astype(np.float32))
    assert mon.sketch.values_counted == 20 * 5 * 3
    drift = mon.tick()
    assert drift.rows == 100 and not drift.drifted


def test_row_sampling_counts_every_kth_row() -> None:
    mon = Monitor(_profile(), config=MonitorConfig(ticker=False, max_rows_per_batch=16))
    x = np.arange(64 * 3, dtype=np.float32).reshape(64, 3)
    mon.observe((x,), None)
    assert mon.sketch.values_counted == 16 * 3
    want = Profile.from_bytes(mon.profile.to_bytes()).count(x[::4])
    assert np.asarray(mon.sketch.peek_window()).tolist() == want.tolist()
    mon.observe((x[:10],), None)  # under the limit: every row
    assert mon.sketch.values_counted == 16 * 3 + 10 * 3


def test_nan_inf_none_counted_as_nulls_and_served(runtime: aiarch.Runtime) -> None:
    mon = Monitor(_profile(), config=MonitorConfig(ticker=False))
    runtime.add_model("m", _model, inputs=SPEC, monitor=mon)
    x = np.array([[np.nan, 1, 2], [np.inf, -np.inf, 0], [0, 0, 0], [1, 1, 1]], np.float32)
    y = runtime.infer_sync("m", x)
    assert y.shape == (4, 1)
    y2 = runtime.infer_sync("m", [[None, 1.0, 2.0]])  # None becomes NaN in the float32 input
    assert np.isnan(y2[0, 0])
    by = {f.name: f for f in mon.tick().features}
    assert by["a"].null_rate == pytest.approx(3 / 5)
    assert by["b"].null_rate == pytest.approx(1 / 5)
    assert by["c"].null_rate == 0.0


def test_a_batch_the_profile_does_not_fit_is_served_and_counted_as_error(
    runtime: aiarch.Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    mon = Monitor(_profile(), config=MonitorConfig(ticker=False))
    runtime.add_model("m", _model, inputs=[aiarch.TensorSpec("x", "float32", (4,))], monitor=mon)
    with caplog.at_level(logging.ERROR, logger="aiarch.monitor"):
        for _ in range(3):
            assert runtime.infer_sync("m", np.ones((2, 4), np.float32)).tolist() == [[4.0], [4.0]]
    assert mon.observe_errors == 3
    msgs = [r.getMessage() for r in caplog.records if "cannot count" in r.getMessage()]
    assert len(msgs) == 1 and "4 feature columns; the profile has 3" in msgs[0]


def test_monitor_attaches_once(runtime: aiarch.Runtime) -> None:
    mon = Monitor(_profile(), config=MonitorConfig(ticker=False))
    runtime.add_model("m", _model, inputs=SPEC, monitor=mon)
    with pytest.raises(aiarch.InvalidArgumentError, match="already attached to model 'm'"):
        runtime.add_model("m2", _model, inputs=SPEC, monitor=mon)
    assert runtime.models() == ["m"]


class _Hook(http.server.BaseHTTPRequestHandler):
    bodies: list[dict[str, Any]] = []

    def do_POST(self) -> None:
        n = int(self.headers["content-length"])
        _Hook.bodies.append(json.loads(self.rfile.read(n)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_alerts_fire_once_per_state_change_with_webhook(
    runtime: aiarch.Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Hook.bodies = []
    clock = _Clock()
    cfg = MonitorConfig(
        ticker=False,
        alerts=(
            AlertRule("drifting", "drift", 0.5),
            AlertRule("slow", "latency_p99", 1e6),  # 1000 s SLO: never fires
            AlertRule("errors", "error_rate", 0.1),
        ),
        webhook_url=f"http://127.0.0.1:{server.server_address[1]}/hook",
        webhook_timeout_s=5.0,
    )
    mon = Monitor(_profile(), config=cfg, clock=clock)

    def flaky(x: np.ndarray) -> np.ndarray:
        if x[0, 0] == 99:
            raise RuntimeError("boom")
        return _model(x)

    runtime.add_model("m", flaky, inputs=SPEC, monitor=mon, warmup=False)
    rng = np.random.default_rng(2)
    try:
        with caplog.at_level(logging.INFO, logger="aiarch.monitor"):
            # Window 1: shifted inputs and 1 failure in 4 requests.
            for _ in range(3):
                runtime.infer_sync("m", rng.normal(loc=3, size=(50, 3)).astype(np.float32))
            with pytest.raises(aiarch.ExecutionError):
                runtime.infer_sync("m", np.full((1, 3), 99, np.float32))
            clock.t += 60
            mon.tick()
            assert mon.alerts.active == {"drifting": True, "slow": False, "errors": True}
            # Window 2: still drifting; errors stay above the rate over the last minute.
            runtime.infer_sync("m", rng.normal(loc=3, size=(50, 3)).astype(np.float32))
            clock.t += 30
            mon.tick()
            # Window 3: back to the reference distribution, no new errors for > 1 minute.
            for _ in range(20):
                runtime.infer_sync("m", rng.normal(size=(50, 3)).astype(np.float32))
            clock.t += 61
            mon.tick()
            assert mon.alerts.active == {"drifting": False, "slow": False, "errors": False}
        changes = [r.getMessage() for r in caplog.records if r.getMessage().startswith("alert ")]
        assert len(changes) == 4, changes
        assert sum("drifting firing" in m for m in changes) == 1
        assert sum("drifting resolved" in m for m in changes) == 1
        metrics = {m.name: m for m in MonitorCollector(runtime).collect()}
        assert {
            s.labels["alert"]: s.value for s in metrics["aiarch_monitor_alert_active"].samples
        } == {
            "drifting": 0.0,
            "slow": 0.0,
            "errors": 0.0,
        }
        deadline = time.monotonic() + 10
        while len(_Hook.bodies) < 4 and time.monotonic() < deadline:
            time.sleep(0.02)
        states = [(b["alert"], b["state"]) for b in _Hook.bodies]
        assert sorted(states) == sorted(
            [
                ("drifting", "firing"),
                ("errors", "firing"),
                ("drifting", "resolved"),
                ("errors", "resolved"),
            ]
        )
        assert all(b["model"] == "m" and b["version"] == "1" for b in _Hook.bodies)
    finally:
        server.shutdown()
        server.server_close()


def test_prediction_log_writes_sampled_parquet_and_never_blocks(
    runtime: aiarch.Runtime, tmp_path: Path
) -> None:
    import pyarrow.parquet as pq

    cfg = MonitorConfig(
        ticker=False,
        prediction_log=PredictionLogConfig(
            # A queue deep enough for every batch: how many rows reach the files must not
            # depend on how fast the writer thread gets CPU (dropping is tested on its own).
            str(tmp_path),
            sample_rate=0.5,
            rows_per_file=200,
            max_pending_batches=1000,
            seed=3,
        ),
    )
    mon = Monitor(_profile(), config=cfg)
    runtime.add_model("m", _model, inputs=SPEC, monitor=mon, version="7")
    x = np.random.default_rng(4).normal(size=(32, 3)).astype(np.float32)
    for _ in range(300):
        runtime.infer_sync("m", x)
    log = mon.prediction_log
    assert log is not None
    runtime.remove_model("m")  # closes the monitor: flushes the log
    files = sorted(tmp_path.glob("m-*.parquet"))
    rows = sum(pq.read_table(f).num_rows for f in files)
    assert rows == log.logged_rows
    # Nothing is lost silently: every sampled row is either written or counted as dropped.
    sampled = log.logged_rows + log.dropped_rows
    assert abs(sampled - 300 * 32 * 0.5) < 5 * np.sqrt(300 * 32 * 0.25)
    assert log.dropped_rows == 0
    assert len(files) >= 2  # rotation at 200 rows
    # However the writer thread batched its writes, every file but the last is full.
    assert [pq.read_table(f).num_rows for f in files[:-1]] == [200] * (len(files) - 1)
    assert 0 < pq.read_table(files[-1]).num_rows <= 200
    t = pq.read_table(files[0]).to_pydict()
    assert set(t) == {"time", "model", "version", "batch_latency_us", "inputs", "outputs"}
    assert t["version"][0] == "7" and t["model"][0] == "m"
    row = np.asarray(t["inputs"][0])
    assert row.shape == (3,)
    assert t["outputs"][0][0] == pytest.approx(row.sum(), rel=1e-5)
    assert any(np.allclose(row, r, rtol=1e-6) for r in x)


def test_prediction_log_full_queue_drops_and_counts(tmp_path: Path) -> None:
    from aiarch.monitor.predlog import PredictionLog

    log = PredictionLog(
        "m", PredictionLogConfig(str(tmp_path), sample_rate=1.0, max_pending_batches=1, seed=0)
    )
    x = np.ones((64, 16))
    t0 = time.perf_counter()
    for _ in range(2000):
        log.offer("1", (x,), x, 1000)
    offered_s = time.perf_counter() - t0
    log.close()
    assert log.dropped_rows > 0
    assert log.logged_rows + log.dropped_rows == 2000 * 64
    assert offered_s < 30  # sanity only: offers did not wait for the writer
