"""`aiarch bench` against a real `aiarch serve` on 127.0.0.1.

The `svc` model sleeps 20 ms per batch with max_batch_size=1 and one instance, so its capacity
is 50 requests/s by construction. Pause checks stop the server process (SIGSTOP) for 0.5 s:
what that must do to the recorded distribution is structural (every open-loop request due
during the pause waits for it; a closed loop holds only one request per connection behind
it), so the margins below are wide and no check depends on machine speed.
"""

from __future__ import annotations

import json
import math
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from aiarch.bench.capacity import CapacitySettings, find_capacity, knee_rate, replicas_needed
from aiarch.bench.load import COLUMNS, LoadSettings, Point, run_http, run_in_process
from aiarch.bench.target import build_request, open_http_target, synthesize_body
from aiarch.cli import main
from aiarch.errors import InvalidArgumentError
from aiarch.serving.process import free_port

from .conftest import MODELS, Server
from .models import SERVICE_S

ANALYTICAL_CAPACITY = 1.0 / SERVICE_S  # 50 requests/s
PAUSE_S = 0.5


def _requests(server: Server, model: str, binary: bool = False) -> tuple[Any, list[bytes]]:
    target = open_http_target(server.base, model)
    body, hlen = synthesize_body(target.inputs(), binary=binary)
    return target, [build_request(target, body, hlen)]


def _with_pause(server: Server, run: Any, after_s: float) -> Point:
    """Runs `run()` in a thread and stops the server for PAUSE_S, `after_s` into it."""
    box: dict[str, Any] = {}

    def body() -> None:
        try:
            box["point"] = run()
        except BaseException as e:
            box["error"] = e

    t = threading.Thread(target=body)
    t.start()
    time.sleep(after_s)
    server.pause()
    try:
        time.sleep(PAUSE_S)
    finally:
        server.resume()
    t.join(60)
    assert not t.is_alive(), "the load run did not finish"
    if "error" in box:
        raise box["error"]
    return box["point"]  # type: ignore[no-any-return]


def test_open_loop_shows_a_pause_that_closed_loop_hides(server: Server) -> None:
    target, reqs = _requests(server, "fast")
    pause_us = PAUSE_S * 1e6
    open_settings = LoadSettings(
        mode="constant", rate=200, connections=160, warmup_s=0.3, duration_s=3.0
    )
    opened = _with_pause(server, lambda: run_http(target, reqs, open_settings), 1.3)
    # ~100 requests were due during the pause (200/s x 0.5 s), out of ~600: each is recorded
    # from its intended time, so the tail carries the pause.
    # Enough connections for every request due during the pause: none waited in the generator.
    assert opened.waited_for_connection == 0
    assert opened.errors == {}
    assert opened.latency_us["p99"] >= pause_us / 2
    assert opened.latency_us["max"] >= pause_us * 0.9

    closed_settings = LoadSettings(mode="closed", concurrency=2, warmup_s=0.3, duration_s=3.0)
    closed = _with_pause(server, lambda: run_http(target, reqs, closed_settings), 1.3)
    # The same pause, seen by only the 2 requests in flight: the closed loop's p99 hides it.
    assert closed.completed > 400
    assert closed.latency_us["max"] >= pause_us * 0.9
    assert closed.latency_us["p99"] < pause_us / 2


def test_capacity_is_within_15_percent_of_the_analytical_value(
    server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cap.json"
    rc = main(
        [
            "bench", "capacity", "--url", server.base, "--model", "svc",
            "--slo-p99-ms", "100", "--repeats", "2", "--window-s", "1.5", "--warmup-s", "0.5",
            "--peak-rps", "1000", "--headroom", "0.3", "--quiet",
            "--json", str(out), "--csv", str(tmp_path / "cap.csv"), "--plot", str(tmp_path / "cap.png"),
        ]
    )  # fmt: skip
    text = capsys.readouterr().out
    assert rc == 0, text
    doc = json.loads(out.read_text())
    result = doc["result"]
    capacity = result["capacity_rps"]
    assert abs(capacity - ANALYTICAL_CAPACITY) / ANALYTICAL_CAPACITY <= 0.15, text
    assert result["failing_rps"] > capacity
    assert result["spread"]["p99_ms_max"] <= 100 * 1.5  # windows of the passing rate
    assert doc["replicas"]["replicas"] == math.ceil(1000 / (capacity * 0.7))
    assert doc["metadata"]["model_digest"] and doc["metadata"]["cpu"]
    assert "capacity at p99 <= 100 ms" in text
    header = (tmp_path / "cap.csv").read_text().splitlines()[0].split(",")
    assert {"Inferences/Second", "p99 latency", "Server Queue", "Server Compute Infer"} <= set(
        header
    )
    assert (tmp_path / "cap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The server breakdown of a passing window: the model's 20 ms is compute, not queue.
    window = next(p for p in result["probes"] if p["passed"])["windows"][0]
    assert window["server"]["server_compute_us"] >= SERVICE_S * 1e6 * 0.9


def test_generator_detects_and_reports_falling_behind(
    server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # One connection to a 50/s model at 200/s: requests queue in the generator, which must
    # say so and refuse the point rather than report it.
    out = tmp_path / "run.json"
    rc = main(
        [
            "bench", "run", "--url", server.base, "-m", "svc", "--rate", "200",
            "--connections", "1", "--duration-s", "1", "--warmup-s", "0", "--quiet",
            "--json", str(out),
        ]
    )  # fmt: skip
    text = capsys.readouterr().out
    assert rc == 1
    assert "REFUSED" in text and "fell behind" in text and "connections busy" in text
    point = json.loads(out.read_text())["points"][0]
    assert point["valid"] is False
    assert point["waited_for_connection"] > 0
    assert point["send_lag_us"]["mean"] > 0.01 * 1e6


def test_capacity_search_stops_when_the_generator_cannot_keep_the_schedule(server: Server) -> None:
    from aiarch.bench.capacity import GeneratorBehindError

    target, reqs = _requests(server, "fast")
    load = LoadSettings(connections=1)
    cfg = CapacitySettings(slo_p99_ms=10_000, repeats=1, window_s=0.5, warmup_s=0, start_rps=5000)
    with pytest.raises(GeneratorBehindError, match="fell behind"):
        find_capacity(lambda s: run_http(target, reqs, s), load, cfg)


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["--model", "nope", "--slo-p99-ms", "5"], 3, "model 'nope' is not served"),
        (["--model", "svc", "--slo-p99-ms", "0"], 2, "--slo-p99-ms must be > 0"),
        (["--model", "svc", "--slo-p99-ms", "-3"], 2, "--slo-p99-ms must be > 0"),
        (["--model", "svc", "--slo-p99-ms", "5", "--headroom", "1"], 2, "--headroom"),
        (["--slo-p99-ms", "5"], 2, "--url needs --model"),
    ],
)
def test_bad_capacity_arguments(
    server: Server, capsys: pytest.CaptureFixture[str], argv: list[str], code: int, message: str
) -> None:
    rc = main(["bench", "capacity", "--url", server.base, "--quiet", *argv])
    err = capsys.readouterr().err
    assert rc == code, err
    assert message in err
    assert "Traceback" not in err
    if "nope" in argv:
        assert "fast" in err and "svc" in err  # what the server does have


def test_bad_run_arguments(
    server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = [
        (["--url", f"http://127.0.0.1:{free_port()}", "-m", "svc", "--rate", "10"], 3, "cannot reach"),
        (["--url", "https://127.0.0.1:1", "-m", "svc", "--rate", "10"], 2, "http://HOST:PORT"),
        (["--url", server.base, "-m", "svc"], 2, "give --rate"),
        (["--url", server.base, "-m", "svc", "--rate", "0"], 2, "must be > 0"),
        (["--url", server.base, "-m", "svc", "--rate", "5", "--payload", str(tmp_path / "x")], 2, "cannot read --payload"),
        (["-m", "svc", "--rate", "5"], 2, "give exactly one target"),
    ]  # fmt: skip
    for argv, code, message in cases:
        rc = main(["bench", "run", "--quiet", "--duration-s", "0.2", *argv])
        err = capsys.readouterr().err
        assert rc == code, (argv, err)
        assert message in err, (argv, err)


def test_payload_replay_and_binary_bodies(
    server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    payload = tmp_path / "body.json"
    payload.write_text(
        json.dumps(
            {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
        )
    )
    for extra in (["--payload", str(payload)], ["--binary"]):
        out = tmp_path / "p.json"
        rc = main(
            ["bench", "run", "--url", server.base, "-m", "fast", "--rate", "100", "--duration-s", "0.5",
             "--warmup-s", "0.1", "--quiet", "--json", str(out), *extra]
        )  # fmt: skip
        assert rc == 0, capsys.readouterr()
        point = json.loads(out.read_text())["points"][0]
        assert point["errors"] == {}
        assert point["succeeded"] == point["scheduled"] > 0


def test_in_process_target_separates_server_overhead() -> None:
    import aiarch

    from .models import fast

    with aiarch.Runtime() as rt:
        rt.add_model("fast", fast)
        x = np.ones((1, 4), "float32")
        p = run_in_process(rt, "fast", x, LoadSettings(rate=300, warmup_s=0.1, duration_s=0.7))
        c = run_in_process(
            rt, "fast", x, LoadSettings(mode="closed", concurrency=4, warmup_s=0.1, duration_s=0.5)
        )
    assert p.valid, p.refused
    assert p.errors == {} and p.succeeded == p.scheduled > 150
    assert p.server["server_success"] >= p.succeeded
    assert list(p.row()) == COLUMNS
    assert c.succeeded > 0 and c.concurrency == 4


def test_sweep_finds_that_two_instances_double_capacity(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "sweep.json"
    rc = main(
        [
            "bench", "sweep", "-m", "svc", "--source", f"{MODELS}:fixed_service",
            "--max-batch-size", "1", "--max-delay-us", "0", "--instances", "1,2",
            "--serve-arg=--inline-execution=off", "--slo-p99-ms", "100", "--repeats", "1",
            "--window-s", "1", "--warmup-s", "0.3", "--tolerance", "0.1", "--quiet",
            "--json", str(out), "--plot", str(tmp_path / "sweep.png"),
        ]
    )  # fmt: skip
    text = capsys.readouterr().out
    assert rc == 0, text
    doc = json.loads(out.read_text())
    caps = {c["config"]["instances"]: c["result"]["capacity_rps"] for c in doc["configs"]}
    assert abs(caps[1] - ANALYTICAL_CAPACITY) / ANALYTICAL_CAPACITY <= 0.2, text
    assert abs(caps[2] - 2 * ANALYTICAL_CAPACITY) / (2 * ANALYTICAL_CAPACITY) <= 0.2, text
    assert doc["best"].endswith("i2")
    assert (tmp_path / "sweep.png").read_bytes()[:4] == b"\x89PNG"


def test_knee_and_replicas_golden() -> None:
    assert knee_rate([(80, 5.0), (10, 1.0), (20, 1.5), (40, 1.9)]) == 40
    assert knee_rate([(10, 1.0)]) == 0.0
    assert replicas_needed(50_000, 1000, 0.3) == 72  # 50000 / 700 = 71.4
    assert replicas_needed(700, 1000, 0.3) == 1
    assert replicas_needed(701, 1000, 0.3) == 2
    with pytest.raises(InvalidArgumentError, match="headroom"):
        replicas_needed(100, 10, 1.0)
    with pytest.raises(InvalidArgumentError, match="no rate met the SLO"):
        replicas_needed(100, 0, 0.3)


def test_native_generator_errors_map_to_aiarch_errors() -> None:
    from aiarch import _core
    from aiarch.errors import UnavailableError

    request = [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"]
    with pytest.raises(InvalidArgumentError, match="unknown load mode 'burst'"):
        _core.LoadGenerator("127.0.0.1", 80, request, mode="burst", duration_s=1)
    with pytest.raises(InvalidArgumentError, match="rate > 0"):
        _core.LoadGenerator("127.0.0.1", 80, request, mode="constant", duration_s=1)
    with pytest.raises(InvalidArgumentError, match="duration or a request count"):
        _core.LoadGenerator("127.0.0.1", 80, request, mode="closed")
    with pytest.raises(InvalidArgumentError, match="blank line"):
        _core.LoadGenerator("127.0.0.1", 80, [b"GET / HTTP/1.1\r\n"], mode="closed", max_requests=1)
    gen = _core.LoadGenerator("127.0.0.1", free_port(), request, mode="closed", max_requests=1)
    with pytest.raises(UnavailableError, match="cannot connect"):
        gen.start()
