"""Snapshots from several real worker processes merge into the single-process result."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest

import aiarch
from aiarch.monitor import MonitorSnapshot, Profile, merge_snapshots, report_from_snapshot
from aiarch.monitor.latency import StageCounts, merge_stage_counts

WORKER = Path(__file__).with_name("_worker.py")


class _Out(msgspec.Struct):
    snapshot: MonitorSnapshot
    known: StageCounts


def _run(tmp: Path, profile_path: Path, name: str, batches: list[int]) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    pkg_root = str(Path(aiarch.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_root, env.get("PYTHONPATH")) if p)
    return subprocess.Popen(
        [sys.executable, str(WORKER), str(profile_path), str(tmp / name), *map(str, batches)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def _wait(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0, out.decode(errors="replace")


def test_three_processes_merge_to_one(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    profile = Profile.build(rng.normal(size=(5000, 4)), ["a", "b", "c", "d"])
    profile_path = tmp_path / "m.profile"
    profile_path.write_bytes(profile.to_bytes())
    batches = list(range(30))
    shares = [batches[0::3], batches[1::3], batches[2::3]]
    procs = [_run(tmp_path, profile_path, f"w{i}.json", s) for i, s in enumerate(shares)]
    procs.append(_run(tmp_path, profile_path, "single.json", [1, *batches[:1], *batches[2:]]))
    _wait(procs)

    def load(name: str) -> Any:
        return msgspec.json.decode((tmp_path / name).read_bytes(), type=_Out)

    parts = [load(f"w{i}.json") for i in range(3)]
    single = load("single.json")
    merged = merge_snapshots([p.snapshot for p in parts])
    assert merged.processes == 3
    assert merged.drift_all == single.snapshot.drift_all
    assert sum(merged.drift_all) == 30 * 16 * 4
    assert merged.requests["all"] == single.snapshot.requests["all"]
    assert merged.requests["all"]["success"] == 30
    e2e = merged.latency["all"]["end_to_end"].histogram()
    assert e2e.total_count == single.snapshot.latency["all"]["end_to_end"].histogram().total_count
    # Histograms of the same known values recorded in different processes merge exactly.
    assert merge_stage_counts([p.known for p in parts]) == single.known

    report = report_from_snapshot(merged)
    want = report_from_snapshot(single.snapshot)
    assert report["drift"]["all"] == want["drift"]["all"]
    assert report["drift"]["all"]["rows"] == 480
    nulls = {f["name"]: f["null_rate"] for f in report["drift"]["all"]["features"]}
    assert 0.0 < nulls["c"] < 0.25 and nulls["a"] == 0.0


def test_merge_refuses_other_profiles(tmp_path: Path) -> None:
    a = Profile.build(np.arange(10.0).reshape(-1, 1))
    b = Profile.build(np.arange(20.0).reshape(-1, 1))
    snaps = [
        MonitorSnapshot("m", "1", 0.0, p.to_bytes(), {}, {}, [0] * 12, [0] * 12) for p in (a, b)
    ]
    with pytest.raises(aiarch.InvalidArgumentError, match="different profiles"):
        merge_snapshots(snaps)
