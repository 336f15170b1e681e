"""`aiarch serve --workers 2`: `/metrics`, `/stats` and `/monitor` cover both workers, whichever
one answers, and the counts of a worker killed with `kill -9` stay in the totals.

The workers accept on one socket, so which one takes a connection is the kernel's choice; a test
picks the worker by stopping the other one (SIGSTOP) for a while (`_only`)."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from aiarch.monitor import Profile
from aiarch.serving.shared_stats import (
    Family,
    WorkerSnapshot,
    merge_families,
    merge_stats,
)

from .conftest import MODELS, ServerProcess, _require_server_deps, request, running_server
from .test_supervisor import _wait_for, _workers

ROWS = 2  # rows per request
FEATURES = 8


def _config(tmp: Path, monitor: str = "") -> Path:
    """Model lin monitored against an input profile, 0.2 s windows; `monitor` adds TOML lines
    to its monitor table (an output profile is written to out.profile)."""
    rng = np.random.default_rng(0)
    profile = Profile.build(rng.normal(size=(5_000, FEATURES)), [f"f{i}" for i in range(8)])
    (tmp / "lin.profile").write_bytes(profile.to_bytes())
    (tmp / "out.profile").write_bytes(Profile.build(rng.normal(size=(5_000, 4))).to_bytes())
    cfg = tmp / "serve.toml"
    cfg.write_text(
        f"""
[models.lin]
source = "{MODELS}:linear"
[models.lin.monitor]
reference = "{tmp / "lin.profile"}"
window_s = 0.2
{monitor}"""
    )
    return cfg


@pytest.fixture
def two_workers(tmp_path: Path) -> Iterator[ServerProcess]:
    _require_server_deps()
    args = ["--config", str(_config(tmp_path)), "--workers", "2"]
    with running_server(args, tmp_path) as srv:
        _wait_for(lambda: len(_workers(srv)) == 2, 60, "2 listening workers")
        yield srv


@contextmanager
def _only(srv: ServerProcess, worker: int) -> Iterator[None]:
    """Every other worker stopped (SIGSTOP, nothing in flight): new connections go to `worker`."""
    others = _workers(srv) - {worker}
    for pid in others:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in others:
            os.kill(pid, signal.SIGCONT)


def _infer_on_each(srv: ServerProcess, counts: list[int], seed: int) -> None:
    """`counts[i]` requests served by the i-th worker (by pid)."""
    for i, (pid, n) in enumerate(zip(sorted(_workers(srv)), counts)):
        with _only(srv, pid):
            _infer(srv.port, n, seed + i)


def _infer(port: int, n: int, seed: int) -> None:
    """`n` requests, each on a fresh connection."""
    rng = np.random.default_rng(seed)
    for _ in range(n):
        x = rng.standard_normal((ROWS, FEATURES)).astype(np.float32)
        body = json.dumps(
            {
                "inputs": [
                    {
                        "name": "x",
                        "shape": [ROWS, 8],
                        "datatype": "FP32",
                        "data": x.ravel().tolist(),
                    }
                ]
            }
        ).encode()
        r = request(
            port, "POST", "/v2/models/lin/infer", body, {"Content-Type": "application/json"}
        )
        assert r.status == 200, r.body


def _scrape(port: int) -> dict[str, float]:
    """`/metrics` samples of model lin, by sample name and labels."""
    from prometheus_client.parser import text_string_to_metric_families

    r = request(port, "GET", "/metrics")
    assert r.status == 200, r.body
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(r.body.decode()):
        for s in fam.samples:
            if s.labels.get("model") == "lin":
                extra = ",".join(
                    f"{k}={v}" for k, v in sorted(s.labels.items()) if k not in ("model", "version")
                )
                out[f"{s.name}{{{extra}}}"] = s.value
    return out


def _succeeded(port: int) -> float:
    return _scrape(port).get("aiarch_requests_total{status=success}", 0.0)


def _own_counts(srv: ServerProcess) -> dict[int, int]:
    """Each live worker's own successful requests, from the file it publishes in the run
    directory (the supervisor logs where it is)."""
    import msgspec

    (run_dir,) = re.findall(r"workers share their stats in (\S+)", srv.output())
    out = {}
    for f in Path(run_dir).glob("worker-*.msgpack"):
        snap = msgspec.msgpack.decode(f.read_bytes(), type=WorkerSnapshot)
        for key, stats in snap.stats.items():
            if key.startswith("lin@"):
                out[int(snap.worker.split(":")[0])] = int(stats["requests"]["success"])
    return out


def _settle(port: int, expected: int) -> None:
    """Wait until the other worker's latest publish (every 0.5 s) holds every request."""
    _wait_for(lambda: _succeeded(port) == expected, 20, f"{expected} requests in /metrics")


def test_every_scrape_counts_the_requests_of_both_workers(two_workers: ServerProcess) -> None:
    port = two_workers.port
    k = 60
    _infer_on_each(two_workers, [25, 35], seed=1)
    _settle(port, k)
    own = _own_counts(two_workers)
    # Both workers served part of the traffic, so no single worker's counts add up to k.
    assert sorted(own) == [0, 1] and sorted(own.values()) == [25, 35], own
    for _ in range(10):
        for pid in sorted(_workers(two_workers)):
            with _only(two_workers, pid):
                _assert_scrape_counts(port, k)


def _assert_scrape_counts(port: int, k: int) -> None:
    m = _scrape(port)
    assert m["aiarch_requests_total{status=success}"] == k
    assert m["aiarch_request_duration_seconds_count{}"] == k
    assert m["aiarch_request_duration_seconds_bucket{le=+Inf}"] == k
    assert m["aiarch_rows_total{}"] == k * ROWS
    assert m["aiarch_model_ready{}"] == 1.0
    stats = request(port, "GET", "/v2/models/lin/stats").json()
    (stat,) = stats["model_stats"]  # type: ignore[index]
    assert stat["inference_stats"]["success"]["count"] == k
    assert stat["inference_count"] == k * ROWS


def test_monitor_and_drift_counts_cover_both_workers(two_workers: ServerProcess) -> None:
    port = two_workers.port
    k = 40
    _infer_on_each(two_workers, [15, 25], seed=2)
    _settle(port, k)
    for pid in sorted(_workers(two_workers)) * 5:
        with _only(two_workers, pid):
            _assert_monitor_counts(port, k)


def _assert_monitor_counts(port: int, k: int) -> None:
    report = request(port, "GET", "/v2/models/lin/monitor").json()
    assert report["processes"] == 2  # type: ignore[index]
    assert report["requests"]["all"]["success"] == k  # type: ignore[index]
    assert report["latency_us"]["all"]["end_to_end"]["count"] == k  # type: ignore[index]
    assert report["drift"]["all"]["rows"] == k * ROWS  # type: ignore[index]
    assert report["counters"]["values_counted"] == k * ROWS * FEATURES  # type: ignore[index]
    m = _scrape(port)
    assert m["aiarch_monitor_values_counted_total{}"] == k * ROWS * FEATURES


def test_totals_survive_a_killed_worker(two_workers: ServerProcess) -> None:
    srv = two_workers
    port = srv.port
    k = 40
    _infer_on_each(srv, [20, 20], seed=3)
    _settle(port, k)
    before = _workers(srv)
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    _wait_for(
        lambda: len(now := _workers(srv)) == 2 and victim not in now, 60, "a replacement worker"
    )
    # The victim's counts were published before the kill: they stay, exactly, in every scrape
    # (answered by the survivor or the replacement), and are not counted twice.
    for _ in range(10):
        assert _succeeded(port) == k
    extra = 30
    _infer(port, extra, seed=4)
    _settle(port, k + extra)
    for _ in range(10):
        m = _scrape(port)
        assert m["aiarch_requests_total{status=success}"] == k + extra
        assert m["aiarch_request_duration_seconds_count{}"] == k + extra
    report = request(port, "GET", "/v2/models/lin/monitor").json()
    assert report["requests"]["all"]["success"] == k + extra  # type: ignore[index]
    assert report["drift"]["all"]["rows"] == (k + extra) * ROWS  # type: ignore[index]


def _alerting_config(tmp: Path) -> Path:
    """An output profile too, and a rule that fires in any window with traffic (an error rate
    above -1): a worker that serves nothing never fires it."""
    return _config(
        tmp,
        f"""output_reference = "{tmp / "out.profile"}"
[[models.lin.monitor.alerts]]
name = "traffic"
kind = "error_rate"
threshold = -1.0
window_s = 1.0
""",
    )


class _OneConnectionLoad:
    """Requests on one keep-alive connection, so one worker serves all of them, until stopped."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sent = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        x = np.random.default_rng(5).standard_normal((ROWS, FEATURES)).astype(np.float32)
        body = json.dumps(
            {
                "inputs": [
                    {
                        "name": "x",
                        "shape": [ROWS, 8],
                        "datatype": "FP32",
                        "data": x.ravel().tolist(),
                    }
                ]
            }
        )
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            while not self._stop.wait(0.005):
                conn.request(
                    "POST", "/v2/models/lin/infer", body, {"Content-Type": "application/json"}
                )
                resp = conn.getresponse()
                resp.read()
                assert resp.status == 200, resp.status
                self.sent += 1
        except BaseException as e:  # reported by stop()
            self.error = e
        finally:
            conn.close()

    def __enter__(self) -> _OneConnectionLoad:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(15)
        assert not self._thread.is_alive(), "the load thread hangs"
        assert self.error is None, self.error


def test_alerts_and_output_drift_cover_both_workers(tmp_path: Path) -> None:
    _require_server_deps()
    args = ["--config", str(_alerting_config(tmp_path)), "--workers", "2"]
    with running_server(args, tmp_path) as srv:
        _wait_for(lambda: len(_workers(srv)) == 2, 60, "2 listening workers")
        port = srv.port
        with _OneConnectionLoad(port) as load:
            _wait_for(lambda: load.sent >= 50, 30, "traffic on the loaded worker")
            # Each worker answers in turn (the other one stopped), and every answer shows the
            # loaded worker's firing alert and output drift, though only one of them served
            # any request.
            for pid in sorted(_workers(srv)) * 3:
                # A full window of traffic since any stall that stopping the loaded worker made.
                sent = load.sent
                _wait_for(lambda sent=sent: load.sent >= sent + 60, 30, "traffic")
                with _only(srv, pid):
                    report = request(port, "GET", "/v2/models/lin/monitor").json()
                    (alert,) = report["alerts"]  # type: ignore[index]
                    assert alert["active"] is True, report
                    assert alert["value"] == 0.0, report
                    output = report["output_drift"]  # type: ignore[index]
                    assert output is not None and output["rows"] > 0, report
                    assert len(output["features"]) == 4
                    m = _scrape(port)
                    assert m["aiarch_monitor_alert_active{alert=traffic}"] == 1.0
        # One worker served everything: the other one's own alert never fired.
        assert sorted(_own_alerts(srv).values()) == [False, True]


def _own_alerts(srv: ServerProcess) -> dict[int, bool]:
    """Each live worker's own state of the "traffic" alert, from the file it publishes."""
    import msgspec

    (run_dir,) = re.findall(r"workers share their stats in (\S+)", srv.output())
    out = {}
    for f in Path(run_dir).glob("worker-*.msgpack"):
        snap = msgspec.msgpack.decode(f.read_bytes(), type=WorkerSnapshot)
        for key, part in snap.monitors.items():
            if key.startswith("lin@"):
                out[int(snap.worker.split(":")[0])] = part.alerts["traffic"].active
    return out


# -- the merge rules, on plain data ------------------------------------------------------------


def _fam(name: str, kind: str, *samples: tuple[str, dict[str, str], float]) -> Family:
    return Family(name, kind, "doc", "", list(samples))


def test_merge_adds_counters_and_histograms_and_keeps_gauges_of_live_workers() -> None:
    def worker(requests: float, queue: float, ready: float, weight: float) -> list[Family]:
        return [
            _fam("aiarch_requests", "counter", ("aiarch_requests_total", {"m": "a"}, requests)),
            _fam(
                "aiarch_request_duration_seconds",
                "histogram",
                ("aiarch_request_duration_seconds_bucket", {"le": "0.1"}, requests),
                ("aiarch_request_duration_seconds_count", {}, requests),
            ),
            _fam("aiarch_queue_rows", "gauge", ("aiarch_queue_rows", {}, queue)),
            _fam("aiarch_model_ready", "gauge", ("aiarch_model_ready", {}, ready)),
            _fam("aiarch_route_weight", "gauge", ("aiarch_route_weight", {}, weight)),
        ]

    retired = worker(100, 7, 0, 9)
    merged = merge_families([worker(3, 1, 1, 0.5), worker(4, 2, 0, 0.7)], retired)
    got = {name: v for f in merged for name, _, v in f.samples}
    assert got == {
        "aiarch_requests_total": 107,
        "aiarch_request_duration_seconds_bucket": 107,
        "aiarch_request_duration_seconds_count": 107,
        "aiarch_queue_rows": 3,  # live workers only: a dead worker's queue is gone
        "aiarch_model_ready": 0,  # ready only when every live worker is
        "aiarch_route_weight": 0.5,  # configuration: the answering worker's own value
    }


def test_merged_stats_add_counts_and_keep_the_latest_inference() -> None:
    a = {
        "version": "1",
        "requests": {"success": 2},
        "queue_rows": 1,
        "last_inference_ms": 5,
        "latency_us": {"queue": {"p50": 3.0}},
        "batch_size": {"mean": 1.0, "counts": {1: 2}},
    }
    b = {
        "version": "1",
        "requests": {"success": 3},
        "queue_rows": 4,
        "last_inference_ms": 9,
        "latency_us": {"queue": {"p50": 8.0}},
        "batch_size": {"mean": 2.0, "counts": {1: 1, 2: 1}},
    }
    gone = {"version": "1", "requests": {"success": 10}, "queue_rows": 50, "last_inference_ms": 1}
    assert merge_stats([a, b], [gone]) == {
        "version": "1",
        "requests": {"success": 15},
        "queue_rows": 5,
        "last_inference_ms": 9,
        "batch_size": {"counts": {1: 3, 2: 1}},
    }


def test_merged_alert_is_active_in_any_worker_with_the_highest_measured_value() -> None:
    from aiarch.serving.shared_stats import AlertState, MonitorPart, merge_monitor_parts

    rng = np.random.default_rng(1)
    profile = Profile.build(rng.normal(size=(100, 2)))
    from aiarch.monitor import Monitor, MonitorConfig

    snap = Monitor(profile, config=MonitorConfig(ticker=False)).snapshot()
    nan = float("nan")
    parts = [
        MonitorPart(snap, {}, {"a": AlertState(False, nan), "b": AlertState(False, 0.1)}, [1, 2]),
        MonitorPart(snap, {}, {"a": AlertState(True, 0.7), "b": AlertState(False, 0.3)}, [3, 4]),
        MonitorPart(snap, {}, {"a": AlertState(False, 0.2), "b": AlertState(False, nan)}, []),
    ]
    merged = merge_monitor_parts(parts)
    assert merged.alerts == {"a": AlertState(True, 0.7), "b": AlertState(False, 0.3)}
    assert merged.output_window == [4, 6]  # a worker with no closed window adds nothing
    quiet = merge_monitor_parts([parts[0], parts[0]]).alerts["a"]
    assert quiet.active is False and quiet.value != quiet.value  # NaN: no traffic anywhere
