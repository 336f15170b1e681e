"""Retraining into rollout: a policy's `[rollout]` table, the rollout a promoted run starts
(and only a promoted run), and one `--watch` per model. Real `aiarch retrain` processes and
the real SQLite registry under a tmp AIARCH_HOME."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from aiarch.errors import InvalidArgumentError
from aiarch.retrain import policy_from_dict
from aiarch.retrain.lease import WATCHER_TAG
from aiarch.rollout import state

from .rollout_job import MODEL
from .test_retrain import JOB, RUN_TIMEOUT_S, _env, _labelled, _policy, _production, _retrain

NO_SERVER = "http://127.0.0.1:1"  # never scraped: these rollouts are started, not driven


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Any]:
    """A label log of 80 rows and `fraud` v1 in production (metrics.auc 0.6)."""
    pytest.importorskip("torch", reason="torch is not installed (pip install '.[torch]')")
    home = tmp_path / "home"
    _labelled(tmp_path)
    return home, _production(home, tmp_path)


def _with_rollout(policy: Path, table: str) -> Path:
    policy.write_text(policy.read_text() + "\n[rollout]\n" + table)
    return policy


def _tree(**rollout: Any) -> dict[str, Any]:
    return {
        "model": "m",
        "triggers": [{"kind": "schedule", "interval_s": 60}],
        "train": {"script": "t.py"},
        "rollout": rollout,
    }


def test_rollout_table_uses_the_rollout_modules_names_and_validation() -> None:
    p = policy_from_dict(
        _tree(
            steps=[10, 100],
            dwell_s=2,
            thresholds={"min_requests": 5},
            servers=["http://127.0.0.1:9000"],
        )
    )
    assert p.rollout is not None
    assert p.rollout.steps == (10, 100) and p.rollout.limits().min_requests == 5
    with pytest.raises(InvalidArgumentError) as e:
        policy_from_dict(_tree(steps=[10, 100], stepz=3, servers=[NO_SERVER]))
    assert "unknown keys ['stepz']" in str(e.value)
    assert all(k in str(e.value) for k in ("dwell_s", "servers", "step_timeout_s", "thresholds"))
    with pytest.raises(InvalidArgumentError) as e:
        policy_from_dict(_tree(thresholds={"max_p99": 2}, servers=[NO_SERVER]))
    assert "max_p99" in str(e.value) and "max_p99_ratio" in str(e.value)
    with pytest.raises(InvalidArgumentError, match="steps must end at 100"):
        policy_from_dict(_tree(steps=[10, 50], servers=[NO_SERVER]))
    with pytest.raises(InvalidArgumentError, match=r"set rollout\.servers"):
        policy_from_dict(_tree(steps=[10, 100]))
    # The servers default to the policy's server URL.
    tree = _tree(steps=[50, 100])
    tree["server"] = {"url": "http://127.0.0.1:8123"}
    rollout = policy_from_dict(tree).rollout
    assert rollout is not None and rollout.servers == ("http://127.0.0.1:8123",)


def test_promoted_candidate_is_rolled_out_and_the_run_records_it(
    tmp_path: Path, setup: Any
) -> None:
    home, reg = setup
    policy = _with_rollout(
        _policy(tmp_path, home, []),
        f'steps = [10, 100]\ndwell_s = 5\nservers = ["{NO_SERVER}"]\ndrive = false\n',
    )
    code, rec, err = _retrain(policy, home, "--now")
    assert code == 0, err
    assert rec["status"] == "promoted" and rec["version"] == 2
    ro = state.active(reg, "fraud")
    assert ro is not None and (ro.candidate, ro.baseline, ro.weight) == (2, 1, 10)
    assert ro.steps == (10, 100) and ro.dwell_s == 5.0
    assert rec["rollout_id"] == ro.id and rec["rollout_state"] == "running"
    assert rec["run_id"] in ro.events(reg)[0].reason
    recorded = json.loads(reg.get_model("fraud").tags["retrain.last_run"])
    assert (recorded["rollout_id"], recorded["rollout_state"]) == (ro.id, "running")
    # A second promoted run while that rollout is active: its start is refused and recorded.
    code, rec, err = _retrain(policy, home, "--now")
    assert code == 1 and rec["status"] == "promoted", err
    assert rec["rollout_state"] == "not_started" and "already running" in rec["rollout_reason"]
    assert state.active(reg, "fraud").id == ro.id  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("args", "status"), [(["--fail"], "failed"), (["--auc", "0.55"], "gate_failed")]
)
def test_failed_training_or_gate_never_starts_a_rollout(
    tmp_path: Path, setup: Any, args: list[str], status: str
) -> None:
    home, reg = setup
    policy = _with_rollout(
        _policy(tmp_path, home, args), f'steps = [10, 100]\nservers = ["{NO_SERVER}"]\n'
    )
    code, rec, err = _retrain(policy, home, "--now")
    assert code == 1, err
    assert rec["status"] == status and rec["rollout_id"] is None and rec["rollout_state"] is None
    assert state.latest(reg, "fraud") is None
    assert reg.alias_version("fraud", "production") == 1


def _watcher(policy: Path, home: Path, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "aiarch", "retrain", "--policy", str(policy), "--watch"],
            env=_env(home),
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _holder(reg: Any) -> str | None:
    raw = reg.get_model("fraud").tags.get(WATCHER_TAG)
    return json.loads(raw)["owner"] if raw else None


def test_two_watchers_on_one_model_one_wins_the_other_names_it(tmp_path: Path, setup: Any) -> None:
    home, reg = setup
    policy = _policy(tmp_path, home, [])
    text = policy.read_text().replace('promote_alias = "candidate"', "poll_s = 0.5")
    policy.write_text(text.replace("rows = 20", "rows = 1000000"))  # never fires: no training
    first = _watcher(policy, home, tmp_path / "first.log")
    try:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while _holder(reg) is None:
            assert first.poll() is None, (tmp_path / "first.log").read_text()
            assert time.monotonic() < deadline, "the first watcher never took the lease"
            time.sleep(0.1)
        assert f":{first.pid}:" in (_holder(reg) or "")
        second = subprocess.run(
            [sys.executable, "-m", "aiarch", "retrain", "--policy", str(policy), "--watch"],
            env=_env(home),
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT_S,
        )
        assert second.returncode == 1, second.stderr
        assert "held by" in second.stderr and f":{first.pid}:" in second.stderr
        assert "not starting a second watcher" in second.stderr
        assert first.poll() is None  # the holder carries on
    finally:
        first.send_signal(signal.SIGINT)
        try:
            first.wait(timeout=60)
        except subprocess.TimeoutExpired:
            first.kill()
            first.wait()
    assert first.returncode == 0, (tmp_path / "first.log").read_text()
    assert _holder(reg) is None  # released on the way out: the next watcher may start


ROLLOUT_JOB = Path(__file__).resolve().parent / "rollout_job.py"


class _Traffic:
    """Rows of 4 values, every other one negative, sent to the served `fraud` until stopped."""

    def __init__(self, port: int) -> None:
        import threading

        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(port,), daemon=True)
        self.thread.start()

    def _run(self, port: int) -> None:
        import http.client

        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        i = 0
        while not self.stop_event.is_set():
            sign = -1 if i % 2 else 1
            x = {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [sign * 0.5] * 4}
            try:
                conn.request("POST", "/v2/models/fraud/infer", json.dumps({"inputs": [x]}))
                conn.getresponse().read()
            except OSError:
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            i += 1
        conn.close()

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(30)


@pytest.mark.parametrize(
    ("job_args", "code", "outcome", "production"),
    [([], 0, "completed", 2), (["--fail-negative"], 1, "rolled_back", 1)],
)
def test_retrainer_drives_the_rollout_on_a_real_server_to_its_end(
    tmp_path: Path, job_args: list[str], code: int, outcome: str, production: int
) -> None:
    """A promoted candidate is driven by the run's controller from the server's metrics: a
    healthy one reaches 100 % and production; one that fails requests is rolled back."""
    pytest.importorskip("torch", reason="aiarch train launches with torch")
    pytest.importorskip("uvloop", reason="uvloop is not installed")
    from aiarch.registry import Registry
    from aiarch.serving.process import ServerProcess, package_env

    home = tmp_path / "home"
    _labelled(tmp_path)
    prod = tmp_path / "prod.py"
    prod.write_text(MODEL.format(fail=False, factor=1.0))
    reg = Registry(home=home)
    reg.register("fraud", f"{prod}:predict", metrics={"auc": 0.6})
    reg.set_alias("fraud", "production", 1)
    server = ServerProcess(
        ["--model", "fraud@production", "--registry-poll", "0.05", "--log-level", "warning"],
        tmp_path / "serve.log",
        env=package_env({"AIARCH_HOME": str(home)}),
    )
    traffic = None
    try:
        server.wait_ready()
        traffic = _Traffic(server.port)
        policy = _policy(tmp_path, home, job_args)
        policy.write_text(policy.read_text().replace(str(JOB), str(ROLLOUT_JOB)))
        _with_rollout(
            policy,
            f'steps = [50, 100]\ndwell_s = 0.5\nstep_timeout_s = 120\nservers = ["{server.base}"]\n'
            # Latency is not what this test judges: a loaded machine's p99 must not decide it.
            "thresholds = { min_requests = 10, p99_floor_s = 60.0 }\n",
        )
        got, rec, err = _retrain(policy, home, "--now")
    finally:
        if traffic is not None:
            traffic.stop()
        server.stop()
    assert got == code, (err, rec)
    assert rec["status"] == "promoted" and rec["version"] == 2
    ro = state.get(reg, rec["rollout_id"])
    assert ro is not None and ro.state == outcome == rec["rollout_state"]
    assert rec["rollout_reason"] == ro.reason
    assert reg.alias_version("fraud", "production") == production
    if outcome == "rolled_back":
        assert "error rate" in ro.reason and ro.weight == 0
    recorded = json.loads(reg.get_model("fraud").tags["retrain.last_run"])
    assert (recorded["rollout_id"], recorded["rollout_state"]) == (ro.id, outcome)
