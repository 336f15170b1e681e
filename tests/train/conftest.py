"""Runs real `aiarch train` jobs (torch.distributed elastic, gloo on CPU) in subprocesses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
JOB = HERE / "mlp_job.py"
# Generous bounds for a loaded 2-core machine; a job that hangs is killed with its workers.
JOB_TIMEOUT_S = 240


def _require_torch() -> None:
    pytest.importorskip("torch", reason="torch is not installed (pip install '.[torch]')")


@dataclass
class Finished:
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


def job_env(home: Path) -> dict[str, str]:
    import aiarch

    env = dict(os.environ)
    pkg_root = str(Path(aiarch.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_root, env.get("PYTHONPATH")) if p)
    env["AIARCH_HOME"] = str(home)
    env.pop("OMP_NUM_THREADS", None)
    return env


class Job:
    """One `python -m aiarch.cli train ...` in its own session (killed as a group on timeout)."""

    def __init__(self, argv: list[str], cwd: Path, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )

    def wait(self, timeout: float = JOB_TIMEOUT_S) -> Finished:
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            out, err = self.proc.communicate(timeout=30)
            raise AssertionError(
                f"job did not finish in {timeout}s\n--- stdout\n{out}\n--- stderr\n{err}"
            ) from None
        return Finished(self.proc.returncode, out, err)


class Jobs:
    """Starts jobs in `cwd` with AIARCH_HOME=`cwd`/home; kills leftovers on close()."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        self.home = cwd / "home"
        self.started: list[Job] = []

    def cli(self, *args: str) -> Job:
        """`python -m aiarch.cli train ARGS`."""
        return self._start([sys.executable, "-m", "aiarch.cli", "train", *args])

    def python(self, code: str) -> Job:
        """`python -c CODE` (to drive aiarch.train.launch from Python)."""
        return self._start([sys.executable, "-c", code])

    def _start(self, argv: list[str]) -> Job:
        job = Job(argv, self.cwd, job_env(self.home))
        self.started.append(job)
        return job

    def close(self) -> None:
        for job in self.started:
            if job.proc.poll() is None:
                os.killpg(job.proc.pid, signal.SIGKILL)
                job.proc.wait(30)


@pytest.fixture
def jobs(tmp_path: Path):
    _require_torch()
    j = Jobs(tmp_path)
    yield j
    j.close()


@pytest.fixture(scope="module")
def module_jobs(tmp_path_factory: pytest.TempPathFactory):
    _require_torch()
    j = Jobs(tmp_path_factory.mktemp("train"))
    yield j
    j.close()
