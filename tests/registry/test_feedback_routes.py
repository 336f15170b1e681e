"""Label feedback on a canary route: each label joins the version (arm) that answered its
request, and quality and label counts are reported per version."""

from __future__ import annotations

import http.client
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import Server
from .test_serving import Setup, _infer

pytest.importorskip("uvloop", reason="uvloop is not installed")


def test_quality_is_per_canary_arm(tmp_path: Path, serve: Callable[..., Server]) -> None:
    s = Setup(tmp_path, [1.0, -1.0])  # version 2 ranks every score backwards
    s.reg.promote("fraud", 1)
    s.reg.promote("fraud", 2, to="staging")
    cfg = tmp_path / "serve.toml"
    cfg.write_text(
        '[models.fraud]\nsource = "fraud@production"\n'
        '[models.fraud.monitor.feedback]\nmetric = "auc"\n'
    )
    server = serve(
        [*s.args, "--config", str(cfg), "--route", "fraud=production:50,staging:50"], s.env
    )
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    served: dict[str, list[int]] = {"1": [], "2": []}
    labels = []
    for i in range(60):
        body = {
            "id": f"r{i}",
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [i / 60] * 4}],
        }
        status, out = _infer(conn, body=json.dumps(body).encode())
        assert status == 200 and out["id"] == f"r{i}"
        served[out["model_version"]].append(i)
        labels.append({"id": f"r{i}", "label": int(i >= 30)})
    assert served["1"] and served["2"]
    conn.request(
        "POST",
        "/v2/models/fraud/feedback",
        body=json.dumps({"labels": labels}),
        headers={"Content-Type": "application/json"},
    )
    r = conn.getresponse()
    assert (r.status, json.loads(r.read())) == (200, {"joined": 60, "unknown": 0, "late": 0})
    conn.request("GET", "/v2/models/fraud/monitor")
    quality = json.loads(conn.getresponse().read())["quality"]
    for version, rows in served.items():
        q = quality[version]
        assert q["labels"] == len(rows)
        both_classes = any(i >= 30 for i in rows) and any(i < 30 for i in rows)
        if both_classes:  # version 1 scores in label order, version 2 in reverse
            assert q["value"] == pytest.approx(1.0 if version == "1" else 0.0)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    for version, rows in served.items():
        assert (
            f'aiarch_feedback_labels_total{{model="fraud",outcome="joined",version="{version}"}} '
            f"{float(len(rows))}"
        ) in text
