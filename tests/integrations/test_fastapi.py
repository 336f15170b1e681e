"""FastAPI with aiarch embedded: the example served by uvicorn, and the fault cases."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="fastapi is not installed (the 'embed' extra)")
pytest.importorskip("uvicorn", reason="uvicorn is not installed (the 'embed' extra)")

from .conftest import CLEAN_EXIT, EXAMPLES, HERE, PY, get, metric, post_json

UVICORN = [PY, "-m", "uvicorn", "--host", "127.0.0.1", "--port", "{port}", "--log-level", "warning"]


def test_example_scores_caches_monitors_and_exports_metrics(app_process):
    app = app_process([PY, str(EXAMPLES / "fastapi_app.py"), "--port", "{port}"])
    url = app.base

    status, body = post_json(f"{url}/predict", {"card_id": 42, "amount": 120.5})
    assert status == 200, body
    assert body["card_id"] == 42
    # The stored features of card 42 (310.5, 3) joined with the amount, through the model.
    import numpy as np

    x = np.array([[120.5, 310.5, 3]], np.float32)
    expected = 1 / (1 + np.exp(1 - x @ np.array([[0.02], [-0.004], [0.4]], np.float32)))
    assert body["fraud_probability"] == pytest.approx(float(expected[0, 0]), rel=1e-6)

    again = post_json(f"{url}/predict", {"card_id": 42, "amount": 120.5})
    assert again == (200, body)
    unknown = post_json(f"{url}/predict", {"card_id": 999, "amount": 10.0})
    assert unknown[0] == 200  # an unknown card scores with the features' defaults

    status, text = get(f"{url}/metrics")
    assert status == 200
    labels = {"model": "fraud", "version": "1"}
    # Three answered requests, one of them from the cache.
    assert metric(text, "aiarch_requests_total", status="success", **labels) == 3
    assert metric(text, "aiarch_cache_operations_total", op="hits", **labels) == 1
    # The drift monitor counted the 3 features of each executed row.
    assert metric(text, "aiarch_monitor_values_counted_total", **labels) == 6

    status, health = get(f"{url}/healthz")
    assert status == 200
    assert json.loads(health)["models"] == {"fraud": {"version": "1", "ready": True}}

    status, err = post_json(f"{url}/predict", {"card_id": "not a number", "amount": 1})
    assert status == 422 and err["detail"][0]["loc"] == ["body", "card_id"]
    assert app.terminate() in CLEAN_EXIT


@pytest.fixture
def fault_app(app_process, tmp_path: Path):
    gate = tmp_path / "gate"
    gate.mkdir()
    app = app_process(
        [*UVICORN, "--app-dir", str(HERE), "fault_app:app"], env={"GATE_DIR": str(gate)}
    )
    return app, gate


def _send_predict(port: int, model: str, x: list[float]) -> socket.socket:
    body = json.dumps({"x": x}).encode()
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(
        f"POST /predict/{model} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    return s


def _read_status_and_body(s: socket.socket) -> tuple[int, dict]:
    with s.makefile("rb") as f:
        status = int(f.readline().split()[1])
        length = 0
        while (line := f.readline()) not in (b"\r\n", b""):
            k, _, v = line.decode().partition(":")
            if k.lower() == "content-length":
                length = int(v)
        return status, json.loads(f.read(length))


def _wait_for(path: Path, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.01)


def test_model_exception_is_500_with_the_aiarch_error_text(fault_app):
    app, _ = fault_app
    status, body = post_json(f"{app.base}/predict/failing", {"x": [1.0, -2.0]})
    assert status == 500
    assert "negative amount: this model scores purchases only" in body["error"]
    assert "failing" in body["error"]
    # One failing request affects no other.
    assert post_json(f"{app.base}/predict/failing", {"x": [1.0, 2.0]}) == (200, {"y": [2.0, 4.0]})


def test_bad_input_is_4xx_naming_what_was_expected(fault_app):
    app, _ = fault_app
    status, body = post_json(f"{app.base}/predict/failing", {"x": [1.0, 2.0, 3.0]})
    assert status == 400
    assert "expected shape [-1, 2]" in body["error"]
    status, body = post_json(f"{app.base}/predict/nosuch", {"x": [1.0, 2.0]})
    assert status == 404 and "'nosuch' is not loaded" in body["error"]
    status, _ = post_json(f"{app.base}/predict/failing", {"x": "text"})
    assert status == 422


def test_client_disconnect_cancels_the_queued_inference(fault_app):
    app, gate = fault_app
    running = _send_predict(app.port, "gated", [1.0, 1.0])
    _wait_for(gate / "entered")  # the single instance is busy with the first request
    queued = _send_predict(app.port, "gated", [5.0, 5.0])
    time.sleep(0.2)  # let the second request reach the queue before its client leaves
    queued.close()
    app.wait_until(
        lambda: metric(get(f"{app.base}/metrics")[1], "aiarch_requests_total",
                       model="gated", status="cancelled") == 1,
        "showing the cancelled request", timeout=20,
    )  # fmt: skip
    (gate / "release").touch()
    assert _read_status_and_body(running) == (200, {"y": [2.0, 2.0]})
    text = get(f"{app.base}/metrics")[1]
    # Only the first request ever executed.
    assert metric(text, "aiarch_batches_total", model="gated") == 1
    assert metric(text, "aiarch_requests_total", model="gated", status="success") == 1


def test_shutdown_drains_in_flight_and_queued_requests(fault_app):
    app, gate = fault_app
    running = _send_predict(app.port, "gated", [1.0, 1.0])
    _wait_for(gate / "entered")
    queued = _send_predict(app.port, "gated", [3.0, 3.0])
    time.sleep(0.2)
    app.proc.send_signal(15)  # SIGTERM while one request executes and one waits in the queue
    time.sleep(0.2)
    assert app.proc.poll() is None, "the server exited with requests in flight"
    (gate / "release").touch()
    assert _read_status_and_body(running) == (200, {"y": [2.0, 2.0]})
    assert _read_status_and_body(queued) == (200, {"y": [6.0, 6.0]})
    assert app.terminate() in CLEAN_EXIT


def test_forgotten_lifespan_is_a_clear_503_not_a_hang(app_process):
    app = app_process(
        [*UVICORN, "--app-dir", str(HERE), "fault_app:app_without_lifespan"], ready_path=None
    )
    app.wait_until(lambda: get(f"{app.base}/healthz")[0] == 503, "answering")
    t0 = time.monotonic()
    status, body = post_json(f"{app.base}/predict/failing", {"x": [1.0, 2.0]}, timeout=10)
    assert status == 503
    assert "not started" in body["error"] and "lifespan" in body["error"]
    assert time.monotonic() - t0 < 10  # answered, not stuck until the client's timeout
    status, health = get(f"{app.base}/healthz")
    assert json.loads(health)["state"] == "not started"
