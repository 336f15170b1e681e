"""Start-up, graceful shutdown, workers and repository authorization."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading

import pytest

from .conftest import MODELS, ServerProcess, _require_server_deps, request, running_server


def _body(width: int) -> bytes:
    return json.dumps(
        {"inputs": [{"name": "x", "shape": [1, width], "datatype": "FP32", "data": [0.0] * width}]}
    ).encode()


def test_help_lists_serve_options() -> None:
    pytest.importorskip(
        "aiarch._core", reason="the aiarch native core is not built", exc_type=ImportError
    )
    out = subprocess.run(
        [sys.executable, "-m", "aiarch.cli", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0
    for flag in ("--model", "--config", "--workers", "--port", "--auth-token", "--max-queue-rows"):
        assert flag in out.stdout


def test_sigterm_drains_in_flight_then_exits_zero(tmp_path) -> None:  # type: ignore[no-untyped-def]
    _require_server_deps()
    srv = ServerProcess(
        ["-m", f"slow={MODELS}:slow", "--max-batch-size", "1", "--inline-execution", "off"],
        tmp_path,
    )
    try:
        srv.wait_ready()
        result: dict[str, object] = {}

        def call() -> None:
            result["r"] = request(srv.port, "POST", "/v2/models/slow/infer", _body(2))

        t = threading.Thread(target=call)
        t.start()
        import time

        time.sleep(0.08)  # the request is executing
        srv.proc.send_signal(signal.SIGTERM)
        t.join(20)
        assert result["r"].status == 200  # type: ignore[attr-defined]
        assert srv.proc.wait(20) == 0
    finally:
        srv.stop()


def test_two_workers_share_the_port(tmp_path) -> None:  # type: ignore[no-untyped-def]
    _require_server_deps()
    with running_server(["-m", f"lin={MODELS}:linear", "--workers", "2"], tmp_path) as srv:
        for _ in range(20):
            assert request(srv.port, "POST", "/v2/models/lin/infer", _body(8)).status == 200
        code = srv.stop()
    assert code == 0


def test_repository_needs_token_when_configured(tmp_path) -> None:  # type: ignore[no-untyped-def]
    _require_server_deps()
    args = ["-m", f"lin={MODELS}:linear", "--auth-token", "s3cret"]
    with running_server(args, tmp_path) as srv:
        r = request(srv.port, "POST", "/v2/repository/models/lin/unload")
        assert r.status == 401
        r = request(
            srv.port,
            "POST",
            "/v2/repository/models/lin/unload",
            headers={"Authorization": "Bearer s3cret"},
        )
        assert r.status == 200
        r = request(
            srv.port,
            "POST",
            "/v2/repository/models/..%2Fetc/load",
            headers={"Authorization": "Bearer s3cret"},
        )
        assert r.status == 400 and "invalid model name" in r.json()["error"]  # type: ignore[index]
