"""Tracing of requests split over canary arms: the native front answers a sampled routed
request itself and its spans name the arm that answered (real `aiarch serve`, real HTTP,
spans written by the local exporter)."""

from __future__ import annotations

import http.client
import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from aiarch.registry import Registry

from .conftest import Server, child_env, write_model

pytest.importorskip("uvloop", reason="uvloop is not installed")
pytest.importorskip("opentelemetry.sdk", reason="opentelemetry-sdk is not installed")

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SAMPLED = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


def _forwarded(server: Server) -> float:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    m = re.search(r"aiarch_http_requests_forwarded_total\s+([0-9.e+]+)", text)
    assert m is not None
    return float(m.group(1))


def test_sampled_routed_requests_stay_native_with_the_arms_spans(
    tmp_path: Path, serve: Callable[..., Server]
) -> None:
    home = tmp_path / "home"
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    reg = Registry(url, home=home)
    for factor in (1.0, 2.0):
        reg.register("fraud", f"{write_model(tmp_path / 'src', factor)}:predict")
    reg.promote("fraud", 1)
    reg.promote("fraud", 2, to="staging")
    spans_file = tmp_path / "spans.jsonl"
    server = serve(
        ["--registry", url, "--route", "fraud=production:50,staging:50", "--trace-sample", "1e-6"],
        child_env(AIARCH_HOME=str(home), AIARCH_TRACE_FILE=str(spans_file)),
    )
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    body = json.dumps(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1.0] * 4}]}
    ).encode()

    def infer(path: str, headers: dict[str, str]) -> http.client.HTTPResponse:
        conn.request("POST", path, body=body, headers=headers)
        r = conn.getresponse()
        r.read()
        return r

    # Both arms' batchers exist after their first requests (the first of a version may reach
    # the App, which creates it; the route is registered natively at the next one).
    for v in ("1", "2", "1", "2"):
        assert infer(f"/v2/models/fraud/versions/{v}/infer", {}).status == 200
    assert infer("/v2/models/fraud/infer", {}).status == 200
    before = _forwarded(server)
    answers = [infer("/v2/models/fraud/infer", {"traceparent": SAMPLED}) for _ in range(20)]
    assert _forwarded(server) - before == 1  # only the scrape itself reached the App
    sent = {r.getheader("traceparent") for r in answers}
    assert all(tp is not None and tp.startswith(f"00-{TRACE_ID}-") for tp in sent)
    assert len(sent) == 20  # a server span each
    server.stop()
    exported = [json.loads(line) for line in spans_file.read_text().splitlines()]
    roots = [s for s in exported if s["kind"] == "SERVER" and s["trace_id"] == TRACE_ID]
    assert {f"00-{TRACE_ID}-{s['span_id']}-01" for s in roots} == sent
    executions = [s for s in exported if s["name"] == "execution" and s["trace_id"] == TRACE_ID]
    assert len(executions) == 20
    assert len({s["attributes"]["aiarch.model"] for s in executions}) == 2  # both arms answered
