#!/usr/bin/env python
"""Runs finished training jobs many times and counts aborts and restarts (all must be 0).

A job whose training has finished must exit cleanly on every rank, every time: an abort
at teardown makes the elastic agent restart (or fail) a job that had nothing left to do.
The failure this guards against is a race, so one run proves little; this script runs

  1. the demo's training script (``aiarch/demo/train_fraud.py``: DDP, checkpoints,
     registration with ONNX export) under ``aiarch train --nproc 2``, `--runs` times;
  2. two ``aiarch train --nnodes 2 --nproc 1`` agents forming one job over a
     rendezvous endpoint on 127.0.0.1 (tests/train/mlp_job.py), `--agent-runs` times;

with ``--max-restarts 0``, and prints a table of runs, aborts (a non-zero exit or
"terminate called" in the output) and restarts. Exit status 1 if any is non-zero.
Not a test: it takes minutes (about 10 s a run on two cores).

    python scripts/stress_train.py --runs 100 --agent-runs 30 --json stress.json
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MLP_JOB = ROOT / "tests" / "train" / "mlp_job.py"


def _env(home: Path) -> dict[str, str]:
    import aiarch

    env = dict(os.environ)
    pkg_root = str(Path(aiarch.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_root, env.get("PYTHONPATH")) if p)
    env["AIARCH_HOME"] = str(home)
    return env


def _train(
    script: Path, launcher: list[str], script_args: list[str], env: dict[str, str], cwd: Path
) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", "aiarch.cli", "train", str(script), *launcher]
    argv += ["--max-restarts", "0", "--json", "--", *script_args]
    return subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _outcome(proc: subprocess.Popen[str], timeout_s: float) -> tuple[bool, int, str]:
    """(aborted, restarts, last stderr line) of one finished launcher."""
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        return True, 0, f"timed out after {timeout_s:.0f} s"
    aborted = proc.returncode != 0 or "terminate called" in err
    restarts = 0
    try:
        restarts = int(json.loads(out)["restarts"])
    except (ValueError, KeyError, TypeError):
        pass
    last = (err.strip().splitlines() or [""])[-1]
    return aborted, restarts, last


def _demo_data(path: Path) -> None:
    import numpy as np

    from aiarch.demo.data import MODEL_FEATURES

    rng = np.random.default_rng(0)
    x = rng.normal(size=(4096, len(MODEL_FEATURES))).astype(np.float32)
    y = (x[:, 0] + 0.5 * rng.normal(size=len(x)) > 1.0).astype(np.int64)
    np.savez(path, x=x, y=y)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=100, help="demo training jobs (default 100)")
    p.add_argument("--agent-runs", type=int, default=30, help="two-agent jobs (default 30)")
    p.add_argument("--epochs", type=int, default=2, help="epochs per demo job (default 2)")
    p.add_argument("--timeout", type=float, default=300, help="seconds per job (default 300)")
    p.add_argument("--json", metavar="PATH", help="write the counts as JSON here")
    a = p.parse_args(argv)

    import aiarch.demo

    demo_script = Path(aiarch.demo.__file__).with_name("train_fraud.py")
    rows = []
    with tempfile.TemporaryDirectory(prefix="aiarch-stress-") as tmp:
        work = Path(tmp)
        env = _env(work / "home")
        data = work / "train.npz"
        _demo_data(data)
        cases = [
            ("demo train_fraud.py --nproc 2", a.runs, "demo"),
            ("mlp_job.py, 2 agents --nnodes 2", a.agent_runs, "agents"),
        ]
        for label, runs, kind in cases:
            aborts = restarts = 0
            failures: list[str] = []
            started = time.perf_counter()
            for i in range(runs):
                if kind == "demo":
                    script_args = [str(data), f"m{i}", str(a.epochs)]
                    procs = [_train(demo_script, ["--nproc", "2"], script_args, env, work)]
                else:
                    launcher = ["--nproc", "1", "--nnodes", "2"]
                    launcher += ["--rdzv-endpoint", f"127.0.0.1:{_free_port()}"]
                    procs = [
                        _train(MLP_JOB, launcher, ["--epochs", "2"], env, work) for _ in range(2)
                    ]
                outcomes = [_outcome(proc, a.timeout) for proc in procs]
                run_aborted = any(o[0] for o in outcomes)
                aborts += run_aborted
                restarts += sum(o[1] for o in outcomes)
                if run_aborted:
                    failures.append(f"run {i + 1}: " + " | ".join(o[2] for o in outcomes if o[0]))
                print(
                    f"\r{label}: {i + 1}/{runs}  aborts {aborts}  restarts {restarts}",
                    end="",
                    flush=True,
                )
            print()
            for line in failures:
                print(f"  {line}")
            rows.append(
                {
                    "case": label,
                    "runs": runs,
                    "aborts": aborts,
                    "restarts": restarts,
                    "seconds": round(time.perf_counter() - started, 1),
                }
            )

    print(f"\n{'case':<34} {'runs':>5} {'aborts':>7} {'restarts':>9} {'seconds':>8}")
    for r in rows:
        print(
            f"{r['case']:<34} {r['runs']:>5} {r['aborts']:>7} {r['restarts']:>9} {r['seconds']:>8}"
        )
    if a.json:
        Path(a.json).write_text(json.dumps({"cases": rows}, indent=2) + "\n")
    return 1 if any(r["aborts"] or r["restarts"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
