"""scripts/gpu_check.sh and benchmarks/bench_gpu.py run end to end on a CPU machine (their figures
there mean nothing; what is checked is that every section runs and reports)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}


def test_bench_gpu_smoke_runs_every_section_on_cpu(tmp_path: Path) -> None:
    out = tmp_path / "bench_gpu.json"
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks/bench_gpu.py"), "--smoke", "--json", str(out)],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads(out.read_text())["results"]
    assert results["dry_run"] is True
    sections = results["sections"]
    assert set(sections) == {"mlp_b1", "resnet", "fp8"}
    mlp = {r["variant"]: r for r in sections["mlp_b1"]["rows"]}
    assert mlp["bare graph replay + H2D/D2H"]["p50_us"] > 0
    assert mlp["runtime (graphs)"]["added_us"] == pytest.approx(
        mlp["runtime (graphs)"]["p50_us"] - mlp["bare graph replay + H2D/D2H"]["p50_us"]
    )
    assert "compile not run in --smoke" in mlp["runtime (compile + graphs)"]["skipped"]
    resnet = sections["resnet"]["rows"]
    assert {r["batch"] for r in resnet} == {1, 2}
    assert all(r["img_s"] > 0 for r in resnet if r["variant"] in ("bare eager", "runtime (graphs)"))
    fp8 = sections["fp8"]["rows"]
    assert [r["variant"].split()[0] for r in fp8] == ["bf16", "fp8"] * 2
    assert all(0 <= r["max_rel_error"] < 0.2 for r in fp8)
    assert "fp8 on cpu" in run.stdout  # the printed table


@pytest.mark.slow
def test_gpu_check_dry_run_builds_nothing_runs_gpu_tests_and_compiled_benchmarks(
    tmp_path: Path,
) -> None:
    run = subprocess.run(
        [
            "bash",
            str(ROOT / "scripts/gpu_check.sh"),
            "--dry-run",
            "--no-build",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        env={**_env(), "PYTHON": sys.executable},
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["build"] == "prebuilt"
    assert report["preflight"]["dry_run"] is True
    tests = report["tests"]
    assert tests["exit_code"] == 0 and tests["tests"] >= 9
    assert tests["skipped"] == tests["tests"]  # no GPU here: every gpu test skips, saying why
    assert tests["skip_reasons"] == ["needs a CUDA GPU (torch sees none)"]
    rows = report["benchmark"]["results"]["sections"]["resnet"]["rows"]
    compiled = [r for r in rows if "compile default" in r["variant"]]
    assert len(compiled) == 4 and all(r["compile_s"] > 0 and r["img_s"] > 0 for r in compiled)
    assert "gpu check: build prebuilt" in run.stdout
