"""End to end over real HTTP: `aiarch serve` with a monitored model; /metrics shows drift
gauges; GET /v2/models/{m}/monitor; `aiarch monitor report` against the URL and snapshots."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from aiarch.monitor import Profile
from aiarch.serving.process import package_env

from .conftest import ServerProcess, running_server

MODELS = Path(__file__).with_name("models.py")


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read()


def _infer(url: str, rows: np.ndarray) -> None:
    """One request with the binary tensor extension (JSON cannot carry NaN)."""
    raw = np.ascontiguousarray(rows, dtype=np.float32).tobytes()
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "datatype": "FP32",
                    "shape": list(rows.shape),
                    "parameters": {"binary_data_size": len(raw)},
                }
            ]
        }
    ).encode()
    req = urllib.request.Request(
        f"http://{url}/v2/models/mon/infer",
        data=header + raw,
        headers={
            "content-type": "application/octet-stream",
            "inference-header-content-length": str(len(header)),
        },
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 200


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("monitor-serve")
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(20_000, 4))
    ref[:, 3] = rng.integers(0, 3, size=20_000)
    (tmp / "mon.profile").write_bytes(
        Profile.build(ref, ["a", "b", "c", "plan"], categorical=["plan"]).to_bytes()
    )
    (tmp / "serve.toml").write_text(
        f"""
[models.mon]
source = "{MODELS}:summed"
version = "2"
[models.mon.monitor]
reference = "mon.profile"
window_s = 0.3
alerts = [{{ name = "drift", kind = "drift", threshold = 0.5 }}]

[models.plain]
source = "{MODELS}:summed"
"""
    )
    with running_server(
        ["--config", str(tmp / "serve.toml"), "--log-level", "warning"], tmp
    ) as srv:
        yield srv


def _metrics_with(url: str, needle: str, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text = _get(f"http://{url}/metrics").decode()
        if needle in text:
            return text
        time.sleep(0.1)
    raise AssertionError(f"{needle!r} not in /metrics after {timeout}s:\n{text[-3000:]}")


def _samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def test_metrics_show_drift_gauges_per_feature(server: ServerProcess) -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(loc=2.0, size=(32, 4)).astype(np.float32)
    x[:, 3] = 1
    x[0, 0] = np.nan
    mon = {"model": "mon", "version": "2"}
    deadline = time.monotonic() + 20
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    # Keep shifted traffic flowing until a closed window with rows is exported.
    while time.monotonic() < deadline:
        for _ in range(5):
            _infer(server.url, x)
        samples = _samples(_get(f"http://{server.url}/metrics").decode())
        if (mon, 1.0) in samples.get("aiarch_dataset_drift", []):
            break
        time.sleep(0.1)
    assert (mon, 1.0) in samples.get("aiarch_dataset_drift", []), samples.keys()
    scores = {
        (lab["feature"], lab["metric"]): v
        for lab, v in samples["aiarch_drift_score"]
        if lab["model"] == "mon"
    }
    for feature in ("a", "b", "c"):
        for metric in ("psi", "js", "ks", "wasserstein"):
            assert scores[(feature, metric)] > 0.1, (feature, metric)
    assert ("plan", "js") in scores and ("plan", "ks") not in scores
    detected = {lab["feature"]: v for lab, v in samples["aiarch_drift_detected"]}
    assert detected == {"a": 1.0, "b": 1.0, "c": 1.0, "plan": 1.0}
    nulls = {lab["feature"]: v for lab, v in samples["aiarch_drift_null_rate"]}
    assert 0 < nulls["a"] < 0.1 and nulls["b"] == 0.0
    assert ({**mon, "alert": "drift"}, 1.0) in samples["aiarch_monitor_alert_active"]
    quantiles = {
        lab["quantile"]
        for lab, _ in samples["aiarch_monitor_latency_seconds"]
        if lab["stage"] == "end_to_end" and lab["window"] == "1m"
    }
    assert quantiles == {"0.5", "0.9", "0.99", "0.999"}
    assert any(
        lab["model"] == "mon" for lab, _ in samples["aiarch_request_duration_seconds_bucket"]
    )
    assert all(lab["model"] == "mon" for lab, _ in samples["aiarch_drift_share"])


def test_monitor_endpoint_and_cli_report(server: ServerProcess, tmp_path: Path) -> None:
    _infer(server.url, np.zeros((4, 4), np.float32))
    report = json.loads(_get(f"http://{server.url}/v2/models/mon/monitor"))
    assert report["model"] == "mon" and report["version"] == "2"
    assert report["latency_us"]["all"]["end_to_end"]["count"] > 0
    assert {f["name"] for f in report["drift"]["all"]["features"]} == {"a", "b", "c", "plan"}
    assert report["counters"]["values_counted"] > 0
    with pytest.raises(urllib.error.HTTPError) as e:
        _get(f"http://{server.url}/v2/models/plain/monitor")
    assert e.value.code == 404

    env = package_env()
    cli = [sys.executable, "-m", "aiarch.cli", "monitor", "report", "mon"]
    png, snap = tmp_path / "mon.png", tmp_path / "snap.json"
    r = subprocess.run(
        [
            *cli,
            "--url",
            f"http://{server.url}",
            "--png",
            str(png),
            "--save-snapshot",
            str(snap),
            "--json",
        ],
        capture_output=True,
        env=env,
        timeout=60,
    )
    assert r.returncode in (0, 1), r.stderr.decode()
    out = json.loads(r.stdout)
    assert out["model"] == "mon" and "snapshot" not in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The saved snapshot, given twice, reports as two processes with twice the counts.
    r2 = subprocess.run(
        [*cli, "--snapshot", str(snap), "--snapshot", str(snap), "--png", ""],
        capture_output=True,
        env=env,
        timeout=60,
    )
    assert r2.returncode in (0, 1), r2.stderr.decode()
    table = r2.stdout.decode()
    assert "model mon  version 2  processes 2" in table
    assert "end_to_end" in table and "plan" in table
    # User errors: a clear message and exit code 2, no traceback.
    r3 = subprocess.run(
        [*cli, "--url", "http://127.0.0.1:1", "--png", ""], capture_output=True, env=env, timeout=60
    )
    assert r3.returncode == 2 and b"cannot reach" in r3.stderr and b"Traceback" not in r3.stderr
    r4 = subprocess.run(
        [*cli.copy()[:-1], "nope", "--url", f"http://{server.url}", "--png", ""],
        capture_output=True,
        env=env,
        timeout=60,
    )
    assert r4.returncode == 2 and b"404" in r4.stderr
