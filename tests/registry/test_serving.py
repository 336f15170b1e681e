"""`aiarch serve` with registry models over real HTTP: hot switch under load, refusal of a
tampered version, canary split with sticky keys, shadow traffic, per-version metrics."""

from __future__ import annotations

import http.client
import json
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from aiarch.registry import IntegrityError, Registry

from .conftest import Server, child_env, write_model

pytest.importorskip("uvloop", reason="uvloop is not installed")


class Setup:
    def __init__(
        self,
        tmp_path: Path,
        factors: list[float],
        fail_on_negative: bool = False,
        delay_s: float = 0.0,
    ):
        self.home = tmp_path / "home"
        self.url = f"sqlite:///{tmp_path / 'registry.db'}"
        self.reg = Registry(self.url, home=self.home)
        self.versions = [
            self.reg.register(
                "fraud", f"{write_model(tmp_path / 'src', f, fail_on_negative, delay_s)}:predict"
            )
            for f in factors
        ]
        self.env = child_env(AIARCH_HOME=str(self.home))
        self.args = ["--registry", self.url]


def _body(value: float = 1.0) -> bytes:
    return json.dumps(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [value] * 4}]}
    ).encode()


def _infer(
    conn: http.client.HTTPConnection,
    headers: dict[str, str] | None = None,
    value: float = 1.0,
    path: str = "/v2/models/fraud/infer",
    body: bytes | None = None,
) -> tuple[int, Any]:
    conn.request("POST", path, body=body or _body(value), headers=headers or {})
    r = conn.getresponse()
    return r.status, json.loads(r.read())


def _metric(server: Server, pattern: str) -> float | None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    m = re.search(pattern + r"\s+([0-9.e+]+)", text)
    return None if m is None else float(m.group(1))


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_hot_switch_under_load_drops_nothing(tmp_path: Path, serve: Callable[..., Server]) -> None:
    # 5 ms per batch and 8 clients: requests are queued on the old version when it switches,
    # so the drain is exercised, not just the pointer swap.
    s = Setup(tmp_path, [1.0, 2.0], delay_s=0.005)
    s.reg.promote("fraud", 1)
    server = serve(
        [
            *s.args,
            "--model",
            "fraud@production",
            "--inline-execution",
            "off",
            "--max-batch-size",
            "2",
        ],
        s.env,
    )
    stop = threading.Event()
    results: list[list[tuple[int, str, float]]] = [[] for _ in range(8)]
    errors: list[BaseException] = []

    def client(out: list[tuple[int, str, float]]) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        try:
            while not stop.is_set():
                status, body = _infer(conn)
                out.append(
                    (
                        status,
                        body.get("model_version", ""),
                        body.get("outputs", [{}])[0].get("data", [0])[0] if status == 200 else 0.0,
                    )
                )
        except BaseException as e:  # a dropped connection is a failure of the test
            errors.append(e)
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(r,)) for r in results]
    for t in threads:
        t.start()
    try:
        _wait(lambda: all(len(r) > 20 for r in results), 20, "traffic on every client")
        s.reg.promote("fraud", 2, reason="better auc")
        _wait(lambda: all(r and r[-1][1] == "2" for r in results), 20, "the switch to version 2")
        mark = [len(r) for r in results]
        _wait(lambda: all(len(r) > m + 20 for r, m in zip(results, mark)), 20, "more traffic")
        s.reg.rollback("fraud")
        _wait(lambda: all(r and r[-1][1] == "1" for r in results), 20, "the rollback to version 1")
        mark = [len(r) for r in results]
        _wait(lambda: all(len(r) > m + 20 for r, m in zip(results, mark)), 20, "more traffic")
    finally:
        stop.set()
        for t in threads:
            t.join(20)
    assert not errors, errors[0]
    total = sum(len(r) for r in results)
    assert total > 100
    for r in results:
        assert all(status == 200 for status, _, _ in r), [x for x in r if x[0] != 200][:3]
        # Each answer came from the version it names (y = x * factor of that version).
        assert all(y == float(v) for _, v, y in r)
        # On one connection the versions move 1 → 2 → 1 once each: the switch is atomic.
        changes = [v for i, (_, v, _) in enumerate(r) if i == 0 or r[i - 1][1] != v]
        assert changes == ["1", "2", "1"], changes
    assert _metric(server, r'aiarch_route_switches_total\{arm="production",model="fraud"\}') == 2
    v1_success = _metric(
        server, r'aiarch_requests_total\{model="fraud",status="success",version="1"\}'
    )
    assert v1_success is not None and v1_success > 0
    assert "drained and unloaded fraud.v2" in server.output()


def test_tampered_version_is_refused_and_the_old_one_keeps_serving(
    tmp_path: Path, serve: Callable[..., Server]
) -> None:
    s = Setup(tmp_path, [1.0, 2.0])
    s.reg.promote("fraud", 1)
    server = serve([*s.args, "--model", "fraud@production"], s.env)
    bad = s.versions[1].artifact_path
    bad.chmod(0o644)
    bad.write_text(bad.read_text().replace("FACTOR = 2.0", "FACTOR = 666.0"))
    s.reg.set_alias("fraud", "production", 2)  # set_alias does not verify; the server must
    _wait(lambda: "cannot switch production to version 2" in server.output(), 20, "the refusal")
    assert "was modified" in server.output()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    status, body = _infer(conn)
    assert (status, body["model_version"], body["outputs"][0]["data"][0]) == (200, "1", 1.0)


def test_canary_split_is_weighted_and_sticky(tmp_path: Path, serve: Callable[..., Server]) -> None:
    s = Setup(tmp_path, [1.0, 2.0])
    s.reg.promote("fraud", 1)
    s.reg.promote("fraud", 2, to="staging")
    server = serve([*s.args, "--route", "fraud=production:70,staging:30"], s.env)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    seen = [_infer(conn)[1]["model_version"] for _ in range(300)]
    share = seen.count("2") / len(seen)
    assert 0.15 < share < 0.45, share
    by_key: dict[str, set[str]] = {}
    for key in (f"user-{i}" for i in range(20)):
        for _ in range(4):
            by_key.setdefault(key, set()).add(
                _infer(conn, {"X-Route-Key": key})[1]["model_version"]
            )
            body = json.loads(_body())
            body["parameters"] = {"route_key": key}
            by_key[key].add(_infer(conn, body=json.dumps(body).encode())[1]["model_version"])
    assert all(len(v) == 1 for v in by_key.values()), by_key
    assert {next(iter(v)) for v in by_key.values()} == {"1", "2"}
    status, body = _infer(conn, path="/v2/models/fraud/versions/2/infer")
    assert (status, body["model_version"]) == (200, "2")
    status, body = _infer(conn, path="/v2/models/fraud/versions/9/infer")
    assert status == 404 and "served versions: 1, 2" in body["error"]
    assert _metric(server, r'aiarch_route_weight\{arm="staging",model="fraud",version="2"\}') == 30
    status, body = _infer(conn, path="/v2/repository/models/fraud/load", body=b"{}")
    assert status == 400 and "served from the registry" in body["error"]


@pytest.mark.parametrize("front", ["native", "python"])
def test_shadow_never_affects_responses(
    tmp_path: Path, serve: Callable[..., Server], front: str
) -> None:
    """Mirrored answers and errors are counted, never seen; on the native front the whole
    exchange (arm and mirror) stays native."""
    s = Setup(tmp_path, [1.0], fail_on_negative=False)
    failing = write_model(tmp_path / "fail", 5.0, fail_on_negative=True)
    s.reg.register("fraud", f"{failing}:predict")
    s.reg.promote("fraud", 1)
    s.reg.promote("fraud", 2, to="staging")
    server = serve(
        [*s.args, "--model", "fraud@production", "--shadow", "fraud@staging:1.0", "--http", front],
        s.env,
    )
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    # Requests by version (never mirrored) create the batchers; the route is registered
    # natively at the next request that reaches the App.
    for _ in range(2):
        assert _infer(conn, path="/v2/models/fraud/versions/2/infer")[0] == 200
        assert _infer(conn, path="/v2/models/fraud/versions/1/infer")[0] == 200
    forwarded_before = _metric(server, "aiarch_http_requests_forwarded_total")
    for value in [-1.0] * 30 + [1.0] * 20:
        status, body = _infer(conn, value=value)
        assert (status, body["model_version"], body["outputs"][0]["data"][0]) == (200, "1", value)
    forwarded = _metric(server, "aiarch_http_requests_forwarded_total")
    if front == "native":  # nothing but this scrape reached the App since the last one
        assert forwarded is not None and forwarded_before is not None
        assert forwarded - forwarded_before == 1, (forwarded_before, forwarded)
    else:
        assert forwarded is None
    failed = r'aiarch_shadow_requests_total\{model="fraud",outcome="failed",version="2"\}'
    ok = r'aiarch_shadow_requests_total\{model="fraud",outcome="ok",version="2"\}'
    _wait(lambda: _metric(server, failed) == 30 and _metric(server, ok) == 20, 10, "shadow counts")
    success = _metric(
        server, r'aiarch_requests_total\{model="fraud",status="success",version="1"\}'
    )
    assert success == 50 + 2  # (and the two requests for version 1 by name)


def test_serve_reports_unknown_registry_refs_and_bad_routes(tmp_path: Path) -> None:
    import subprocess
    import sys

    s = Setup(tmp_path, [1.0])
    s.reg.promote("fraud", 1, to="staging")
    cases = [
        (["--model", "fraud@production"], "no alias 'production'"),
        (["--route", "fraud=production:x"], "expected ALIAS_OR_VERSION:WEIGHT"),
        (["--route", "fraud=production:0"], "weights must add up"),
        (["--shadow", "other@staging"], "is not served from the registry"),
        (["--shadow", "fraud@staging:2", "--model", "fraud@staging"], "fraction must be in"),
    ]
    for args, message in cases:
        r = subprocess.run(
            [sys.executable, "-m", "aiarch.cli", "serve", "--port", "0", *s.args, *args],
            capture_output=True,
            text=True,
            env=s.env,
            timeout=60,
        )
        assert message in r.stderr, (args, r.stderr[-2000:])


def test_plain_loader_resolves_registry_refs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import numpy as np

    from aiarch.serving.loader import parse_model_arg, resolve_source

    s = Setup(tmp_path, [3.0])
    s.reg.promote("fraud", 1)
    monkeypatch.setenv("AIARCH_REGISTRY", s.url)
    monkeypatch.setenv("AIARCH_HOME", str(s.home))
    fn = resolve_source("models:/fraud@production")
    assert float(fn(np.ones((1, 4), np.float32))[0, 0]) == 3.0
    s.versions[0].artifact_path.chmod(0o644)
    s.versions[0].artifact_path.write_text("FACTOR = 666")
    with pytest.raises(IntegrityError, match="was modified"):
        resolve_source("fraud@production")
    cfg = parse_model_arg("fraud@production")
    assert (cfg.name, cfg.source) == ("fraud", "fraud@production")
    assert parse_model_arg("live=models:/fraud/1").name == "live"


@pytest.mark.parametrize("front", ["native", "python"])
def test_canary_split_agrees_on_both_front_ends(
    tmp_path: Path, serve: Callable[..., Server], front: str
) -> None:
    """The native front routes a canary split itself (no request handed to the App) by the
    App's rule: the same key lands on the same version on either front end, a key's arm is
    CRC-32(key) % total weight, picks are counted per arm, and a route_key the native front
    does not spell (a float) still routes (through the App)."""
    import zlib

    s = Setup(tmp_path, [1.0, 2.0])
    s.reg.promote("fraud", 1)
    s.reg.promote("fraud", 2, to="staging")
    server = serve([*s.args, "--route", "fraud=production:70,staging:30", "--http", front], s.env)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    # Both arms' batchers exist after their first requests (the first of a version may reach
    # the App, which creates it; the route is registered natively at the next one).
    for v in ("1", "2", "1", "2"):
        assert _infer(conn, path=f"/v2/models/fraud/versions/{v}/infer")[0] == 200
    assert _infer(conn)[0] == 200
    forwarded_before = _metric(server, "aiarch_http_requests_forwarded_total")
    expected = {}
    for i in range(40):
        key = f"user-{i}"
        expected[key] = "1" if zlib.crc32(key.encode()) % 100 < 70 else "2"
        assert _infer(conn, {"X-Route-Key": key})[1]["model_version"] == expected[key]
        body = json.loads(_body())
        body["parameters"] = {"route_key": key}
        assert _infer(conn, body=json.dumps(body).encode())[1]["model_version"] == expected[key]
    body = json.loads(_body())
    body["parameters"] = {"route_key": 12345}
    assert _infer(conn, body=json.dumps(body).encode())[1]["model_version"] == (
        "1" if zlib.crc32(b"12345") % 100 < 70 else "2"
    )
    unkeyed = [_infer(conn)[1]["model_version"] for _ in range(100)]
    assert set(unkeyed) == {"1", "2"}
    body["parameters"] = {"route_key": 1.5}  # spelled "1.5" by the App
    assert _infer(conn, body=json.dumps(body).encode())[1]["model_version"] == (
        "1" if zlib.crc32(b"1.5") % 100 < 70 else "2"
    )
    routed = 1 + 2 * 40 + 1 + 100 + 1
    picks = [
        _metric(
            server, f'aiarch_route_requests_total\\{{arm="{arm}",model="fraud",version="{v}"\\}}'
        )
        for arm, v in (("production", "1"), ("staging", "2"))
    ]
    assert sum(p or 0 for p in picks) == routed, picks
    forwarded = _metric(server, "aiarch_http_requests_forwarded_total")
    if front == "native":
        # Only the float route_key and the three metrics scrapes since reached the App.
        assert forwarded is not None and forwarded_before is not None
        assert forwarded - forwarded_before == 1 + 3, (forwarded_before, forwarded)
    else:
        assert forwarded is None
