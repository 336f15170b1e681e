"""What scripts parse: `--json` output is strict JSON (no Infinity/NaN), and a `--json` command
that fails prints a JSON error object and exits non-zero."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from aiarch.serving.process import free_port, package_env

MODELS = Path(__file__).resolve().parents[1] / "serving" / "models.py"


def _strict(text: str) -> Any:
    def refuse(name: str) -> None:
        raise ValueError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def _aiarch(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aiarch.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=package_env(),
    )


def test_capacity_without_a_failing_rate_is_strict_json(tmp_path: Path) -> None:
    pytest.importorskip("aiarch._core", reason="the native core is not built", exc_type=ImportError)
    out = tmp_path / "capacity.json"
    r = _aiarch(
        "bench", "capacity", "--in-process", f"m={MODELS}:linear", "--slo-p99-ms", "1000",
        "--start-rps", "20", "--max-rps", "40", "--window-s", "0.3", "--warmup-s", "0.1",
        "--repeats", "1", "--quiet", "--json", str(out),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    doc = _strict(out.read_text())
    result = doc["result"]
    assert result["capacity_rps"] == 40.0
    assert result["failing_rps"] is None and result["bracket_rps"] == [40.0, None]
    assert "--max-rps" in result["failing_rps_reason"]


def test_failing_bench_writes_a_json_error(tmp_path: Path) -> None:
    out = tmp_path / "capacity.json"
    out.write_text('{"stale": true}\n')
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    r = _aiarch(
        "bench", "capacity", "--url", url, "-m", "x", "--slo-p99-ms", "5", "--json", str(out)
    )
    assert r.returncode != 0
    printed = _strict(r.stdout.strip().splitlines()[-1])
    assert printed == _strict(out.read_text())
    assert printed["command"] == "bench capacity" and printed["exit_code"] == r.returncode
    assert "cannot reach" in printed["error"] and url in printed["error"]


def test_failing_json_command_prints_a_json_error(tmp_path: Path) -> None:
    bad = tmp_path / "not-a-dir"
    bad.write_text("")  # a file where the registry wants a folder
    r = _aiarch("models", "list", "--json", "--registry", f"sqlite:///{bad}/registry.db")
    assert r.returncode != 0
    doc = _strict(r.stdout)
    assert doc["command"] == "models list" and doc["exit_code"] == r.returncode
    assert doc["error"].startswith("aiarch models list:")
