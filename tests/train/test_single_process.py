"""The same script runs as a plain `python script.py` (one process, no process group)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from .conftest import JOB, job_env


def test_plain_python_runs_and_a_reused_run_id_resumes(tmp_path):
    pytest.importorskip("torch", reason="torch is not installed")
    env = job_env(tmp_path / "home")
    env["AIARCH_RUN_ID"] = "solo"
    out = tmp_path / "out.json"

    def run(epochs: int) -> dict:
        proc = subprocess.run(
            [sys.executable, str(JOB), "--epochs", str(epochs), "--out", str(out)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert proc.returncode == 0, proc.stderr
        return json.loads(out.read_text())

    first = run(2)
    assert first["world_size"] == 1 and first["run_id"] == "solo" and first["start_epoch"] == 0
    second = run(3)  # resumes after epoch 1's checkpoint, trains epoch 2 only
    assert second["start_epoch"] == 2
    run_dir = tmp_path / "home" / "runs" / "solo"
    epochs = [json.loads(x)["epoch"] for x in (run_dir / "progress.jsonl").read_text().splitlines()]
    assert epochs == [0, 1, 2]
    assert json.loads((run_dir / "checkpoints" / "latest.json").read_text())["step"] == 2
