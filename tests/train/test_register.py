"""A 2-process job registers exactly one model version with lineage, even across a restart.

Needs aiarch.registry and aiarch.monitor (the registry and the drift profile).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from .conftest import JOB, Jobs


def test_job_registers_one_version_with_lineage(jobs: Jobs, monkeypatch):
    from aiarch.registry import Registry  # the test needs the registry itself

    out = jobs.cwd / "out.json"
    # Rank 1 is killed right after the registration on the first attempt: the restarted
    # job must not register a second version.
    finished = jobs.cli(
        str(JOB),
        "--nproc",
        "2",
        "--max-restarts",
        "2",
        "--json",
        "--",
        "--register",
        "fraud",
        "--kill-after-register",
        "1",
        "--out",
        str(out),
    ).wait()
    assert finished.returncode == 0, finished.stderr
    result = finished.json()
    assert result["restarts"] == 1
    info = result["registered"]["fraud"]
    assert info["name"] == "fraud" and int(info["version"]) == 1
    assert Path(info["pt2"]).is_file() and Path(info["onnx"]).is_file()
    assert Path(info["pt2"]).parent == Path(info["onnx"]).parent
    assert json.loads(out.read_text())["version"] == 1

    monkeypatch.setenv("AIARCH_HOME", str(jobs.home))
    registry = Registry(url=None)
    version = registry.get("fraud")
    assert int(version.version) == 1, "one job, one version"
    with pytest.raises(Exception, match="2"):
        registry.get("fraud", version=2)
    lineage = version.lineage
    assert lineage["run_id"] == result["run_id"]
    assert lineage["world_size"] == 2
    assert lineage["script_sha256"] == hashlib.sha256(JOB.read_bytes()).hexdigest()

    from aiarch.train import hash_data

    from .mlp_job import make_data

    x, _ = make_data(2048, seed=1)
    assert lineage["data_sha256"] == hash_data(x)
    assert lineage["artifacts"]["onnx"]["path"] == info["onnx"]
    assert version.digest == info["digest"]
