"""`aiarch demo` end to end: the README's main command, run as users run it (a subprocess)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="the demo trains with torch")
pytest.importorskip("onnxruntime", reason="the demo quantizes with onnxruntime")
pytest.importorskip("duckdb", reason="the demo builds its training set with duckdb")


def _demo(*args: str, timeout: float = 1200) -> subprocess.CompletedProcess[str]:
    import aiarch

    env = dict(os.environ)
    pkg_root = str(Path(aiarch.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_root, env.get("PYTHONPATH")) if p)
    return subprocess.run(
        [sys.executable, "-m", "aiarch", "demo", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    home = tmp_path / "demo-home"
    proc = _demo("--home", str(home), "--duration", "1", "--epochs", "3")
    out = proc.stdout
    assert proc.returncode == 0, f"{out[-4000:]}\n{proc.stderr[-4000:]}"
    for step in range(1, 11):
        assert f"[{step}/10]" in out
    assert "registered fraud  version 1" in out  # one registry entry for the 2-process job
    assert "production  promote  -     1" in out and "staging     promote  -     2" in out
    # The canary split sent requests to both arms.
    arms = [
        line.split()
        for line in out.splitlines()
        if line.strip().startswith(("production  1", "staging     2"))
    ]
    assert len(arms) == 2 and all(int(a[-1]) > 0 for a in arms)
    assert "same-distribution window:" in out and "dataset drifted: no" in out
    shifted = next(line for line in out.splitlines() if "shifted window:" in line)
    assert "dataset drifted: yes" in shifted
    assert (home / "demo" / "drift.png").stat().st_size > 0
    # The closed loop: labels pulled production's online AUC under the floor, the policy
    # retrained, the new version passed its gate and went out step by step to 100 %.
    loop, bad = out.split("[9/10]", 1)[1].split("[10/10]", 1)
    assert re.search(r"quality\(floor=0\.7, metric=auc, min_labels=600\) FIRED", loop), loop
    assert re.search(r"run retrain-fraud-\S+: promoted, version 3 ", loop), loop
    assert "metrics.auc >= 0.65 passed" in loop
    decisions = re.findall(r"^\s+\S+\s+\d\s+(\d+)%\s.*?\s(start|advance|complete)\s", loop, re.M)
    assert decisions == [
        ("25", "start"),
        ("25", "advance"),
        ("50", "advance"),
        ("100", "complete"),
    ], loop
    assert "production now on version 3" in loop
    assert re.search(r"recorded as model tag retrain\.run\.\S+: rollout #1 completed", loop)
    # The bad candidate was rolled back by the controller; production stayed on version 3.
    assert re.search(r"rolled_back: at (10|50) %: (error rate|p99|online auc) ", bad), bad
    assert "production still on version 3" in bad
    assert re.search(r"^\s+\S+\s+[12]\s+(10|50)%\s.*\srollback\s+at (10|50) %", bad, flags=re.M)
    assert (home / "demo" / "rollout.png").stat().st_size > 0
    assert "Traceback" not in proc.stderr


def test_demo_refuses_a_foreign_home(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    proc = _demo("--home", str(tmp_path), "--no-serve", timeout=120)
    assert proc.returncode == 2 and "not a demo folder" in proc.stderr
    assert (tmp_path / "precious.txt").read_text() == "keep me"
