"""Real 2-process jobs (gloo on CPU) under `aiarch train`: concurrency, restarts, failures."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from .conftest import JOB, Finished, Jobs

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def out_json(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def clean_pair(module_jobs: Jobs) -> tuple[list[Finished], list[dict]]:
    """Two uninterrupted jobs started together; each holds its main rank until both run."""
    meet = module_jobs.cwd / "meet"
    meet.mkdir()
    outs = [module_jobs.cwd / f"clean-{i}.json" for i in range(2)]
    started = [
        module_jobs.cli(
            str(JOB),
            "--nproc",
            "2",
            "--max-restarts",
            "0",
            "--json",
            "--",
            "--meet",
            str(meet),
            "--meet-count",
            "2",
            "--out",
            str(out),
        )
        for out in outs
    ]
    finished = [job.wait() for job in started]
    for f in finished:
        assert f.returncode == 0, f.stderr
    return finished, [out_json(o) for o in outs]


def test_two_jobs_on_one_host_at_once_do_not_collide(clean_pair):
    finished, outs = clean_pair
    results = [f.json() for f in finished]
    assert results[0]["run_id"] != results[1]["run_id"]
    for result, out in zip(results, outs):
        assert result["world_size"] == 2 and result["restarts"] == 0
        assert [e["epoch"] for e in result["epochs"]] == [0, 1, 2, 3]
        assert all(e["samples"] == 1536 and e["samples_per_s"] > 0 for e in result["epochs"])
        assert out["run_id"] == result["run_id"] and out["start_epoch"] == 0
        # the loss goes down on this separable task
        assert result["epochs"][-1]["loss"] < result["epochs"][0]["loss"]
    # Same seeds, same data, same world size: the two jobs train bit-identical models.
    assert outs[0]["weights_sha256"] == outs[1]["weights_sha256"]


def test_killed_rank_resumes_from_last_complete_checkpoint(jobs, clean_pair):
    _, clean_outs = clean_pair
    out = jobs.cwd / "resumed.json"
    # Through the Python API: rank 1 SIGKILLs itself on step 3 of epoch 2 (first attempt).
    code = (
        "import json, aiarch.train as t\n"
        f"r = t.launch({str(JOB)!r}, nproc=2, max_restarts=2, args=["
        f"'--kill-rank', '1', '--kill-epoch', '2', '--kill-step', '3', '--out', {str(out)!r}])\n"
        "print('RESULT ' + json.dumps(r.to_dict()))\n"
    )
    finished = jobs.python(code).wait()
    assert finished.returncode == 0, finished.stderr
    line = [x for x in finished.stdout.splitlines() if x.startswith("RESULT ")][-1]
    result = json.loads(line[len("RESULT ") :])

    # Exactly one restart: the kill's. A job that finished never restarts.
    assert result["restarts"] == 1
    # epochs 0 and 1 ran once; epoch 2 died mid-way and ran again after the restart
    assert [(e["restart_count"], e["epoch"]) for e in result["epochs"]] == [
        (0, 0),
        (0, 1),
        (1, 2),
        (1, 3),
    ]
    resumed = out_json(out)
    assert (resumed["restart_count"], resumed["start_epoch"]) == (1, 2)
    # Resuming model + optimizer + sampler epoch from the checkpoint reproduces the
    # uninterrupted run exactly.
    assert resumed["weights_sha256"] == clean_outs[0]["weights_sha256"]

    run_dir = Path(result["run_dir"])
    attempts = [json.loads(x) for x in (run_dir / "attempts.jsonl").read_text().splitlines()]
    assert [a["restart_count"] for a in attempts] == [0, 1]
    pointer = json.loads((run_dir / "checkpoints" / "latest.json").read_text())
    assert pointer["step"] == 3
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("step-*.pt")) == [
        "step-000000002.pt",
        "step-000000003.pt",
    ]


def test_dead_peer_fails_the_job_when_no_restarts_are_left(jobs):
    finished = jobs.cli(
        str(JOB),
        "--nproc",
        "2",
        "--max-restarts",
        "0",
        "--",
        "--kill-rank",
        "1",
        "--kill-epoch",
        "1",
    ).wait()
    assert finished.returncode == 1
    last = finished.stderr.strip().splitlines()[-1]
    assert last.startswith("aiarch train: training job ")
    assert "failed after 0 restart(s) (--max-restarts 0)" in last
    assert "rank 1 (local rank 1" in last and "killed by SIGKILL" in last
    assert "aiarch train: done" not in finished.stdout


def test_hung_peer_fails_the_job_on_the_collective_timeout(jobs):
    # Rank 1 stops answering (sleeps 300 s). torch's default gloo timeout is 30 minutes;
    # with --collective-timeout 3 the survivor gives up and the job fails well within
    # the subprocess bound.
    finished = jobs.cli(
        str(JOB),
        "--nproc",
        "2",
        "--max-restarts",
        "0",
        "--collective-timeout",
        "3",
        "--",
        "--hang-rank",
        "1",
        "--hang-epoch",
        "1",
    ).wait(timeout=150)
    assert finished.returncode == 1
    last = finished.stderr.strip().splitlines()[-1]
    assert "rank 0 (local rank 0" in last and "exited with code 1" in last
    assert "Timed out waiting 3000ms" in last


def test_two_agents_form_one_job_over_a_rendezvous_endpoint(jobs):
    # Two launchers on this host stand in for two hosts: `--nnodes 2` with one endpoint.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = jobs.cwd / "multi.json"
    started = [
        jobs.cli(
            str(JOB),
            "--nproc",
            "1",
            "--nnodes",
            "2",
            "--rdzv-endpoint",
            f"127.0.0.1:{port}",
            "--max-restarts",
            "0",
            "--json",
            "--",
            "--epochs",
            "2",
            "--out",
            str(out),
        )
        for _ in range(2)
    ]
    results = []
    for job in started:
        finished = job.wait()
        assert finished.returncode == 0, finished.stderr
        results.append(finished.json())
    # one job of world size 2, with the run id both hosts derived from the endpoint
    assert results[0]["run_id"] == results[1]["run_id"]
    assert all(r["world_size"] == 2 for r in results)
    assert out_json(out)["world_size"] == 2
