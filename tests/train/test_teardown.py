"""A finished job leaves no gloo work for interpreter shutdown.

A gloo worker thread that frees a collective's tensors during interpreter shutdown needs
the GIL, is unwound by Python instead, and aborts the process ("terminate called without
an active exception") after training has finished. The race itself is timing-dependent
(scripts/stress_train.py runs it hundreds of times); these tests pin the state that makes
it impossible, deterministically: at exit, the groups the context owns are destroyed and
their threads joined, and no gloo thread still holds a tensor of ours.
"""

from __future__ import annotations

import json

import pytest

from .conftest import HERE, Jobs

JOB = HERE / "teardown_job.py"

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _run(jobs: Jobs, *extra: str) -> list[dict]:
    out = jobs.cwd / "exit"
    finished = jobs.cli(
        str(JOB), "--nproc", "2", "--max-restarts", "0", "--json", "--", "--out", str(out), *extra
    ).wait()
    assert finished.returncode == 0, finished.stderr
    assert finished.json()["restarts"] == 0
    return [json.loads((jobs.cwd / f"exit.{rank}").read_text()) for rank in (0, 1)]


def test_exit_joins_every_gloo_thread(jobs: Jobs):
    for rank, state in enumerate(_run(jobs)):
        assert state["distributed"] is False, f"rank {rank} left the process group open"
        gloo = [t for t in state["threads"] if "gloo" in t]
        assert gloo == [], f"rank {rank} reaches interpreter shutdown with threads {gloo}"
        assert state["buffer_use_counts"] == [1], "a gloo worker still holds our tensor"


def test_exit_with_ddp_leaves_no_tensor_of_ours_to_gloo(jobs: Jobs):
    # torch's DDP reducer can keep the default group (and its idle threads) alive past
    # our teardown; what must hold is that none of those threads still owns our tensors.
    for rank, state in enumerate(_run(jobs, "--ddp")):
        assert state["distributed"] is False, f"rank {rank} left the process group open"
        assert state["buffer_use_counts"] == [1], "a gloo worker still holds our tensor"
        assert state["threads"].count("pt_gloo_runloop") <= 2, state["threads"]
