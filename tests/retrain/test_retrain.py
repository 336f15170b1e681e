"""Retraining policies end to end: real `aiarch retrain` and `aiarch train` subprocesses, the
real registry (SQLite under a tmp AIARCH_HOME), a label log written by the feedback tracker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from aiarch.errors import InvalidArgumentError
from aiarch.monitor.feedback import QUALITY_METRICS, FeedbackConfig, FeedbackTracker, Label
from aiarch.retrain import TRIGGER_KINDS, Retrainer, load_policy, policy_from_dict

HERE = Path(__file__).resolve().parent
JOB = HERE / "retrain_job.py"
RUN_TIMEOUT_S = 300  # a loaded 2-core machine; the command is killed past it


def _env(home: Path) -> dict[str, str]:
    import aiarch

    env = dict(os.environ)
    pkg_root = str(Path(aiarch.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_root, env.get("PYTHONPATH")) if p)
    env["AIARCH_HOME"] = str(home)
    return env


def _labelled(tmp: Path, n: int = 80) -> Path:
    """A label log whose predictions separate the labels (so a refit scores well)."""
    folder = tmp / "labels"
    tracker = FeedbackTracker("fraud", FeedbackConfig(metric="auc", label_log=str(folder)))
    rng = np.random.default_rng(3)
    labels = (np.arange(n) % 2).astype(float)
    scores = labels * 0.6 + rng.random(n) * 0.5
    tracker.record_many([f"r{i}" for i in range(n)], "1", scores.reshape(-1, 1))
    tracker.feedback([Label(label=float(labels[i]), id=f"r{i}") for i in range(n)])
    tracker.close()
    return folder


def _production(home: Path, tmp: Path) -> Any:
    from aiarch.registry import Registry

    src = tmp / "prod_model.py"
    src.write_text("def predict(x):\n    return x\n")
    reg = Registry(home=home)
    mv = reg.register("fraud", f"{src}:predict", metrics={"auc": 0.6})
    reg.set_alias("fraud", "production", mv.version)
    return reg


def _policy(tmp: Path, home: Path, args: list[str], timeout_s: float = 240.0) -> Path:
    path = tmp / "policy.toml"
    path.write_text(
        f"""
model = "fraud"
home = "{home}"
promote_alias = "candidate"

[[triggers]]
kind = "labels"
rows = 20

[train]
script = "{JOB}"
args = {json.dumps(args)}
timeout_s = {timeout_s}

[data]
label_log = "labels"
window_s = 86400
holdout_fraction = 0.25

[gates]
conditions = ["metrics.auc >= 0.5"]
vs_production = {{ auc = 0.0 }}
"""
    )
    return path


def _retrain(policy: Path, home: Path, *flags: str) -> tuple[int, Any, str]:
    p = subprocess.run(
        [sys.executable, "-m", "aiarch", "retrain", "--policy", str(policy), *flags, "--json"],
        env=_env(home),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )
    return p.returncode, json.loads(p.stdout) if p.stdout.strip() else None, p.stderr


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Any]:
    pytest.importorskip("torch", reason="torch is not installed (pip install '.[torch]')")
    home = tmp_path / "home"
    _labelled(tmp_path)
    return home, _production(home, tmp_path)


def test_labels_trigger_trains_gates_and_sets_candidate(tmp_path: Path, setup: Any) -> None:
    home, reg = setup
    policy = _policy(tmp_path, home, [])
    code, rec, err = _retrain(policy, home, "--once")
    assert code == 0, err
    assert rec["status"] == "promoted" and rec["alias"] == "candidate", rec
    assert rec["trigger"] == "labels(rows=20)" and "80 labelled rows" in rec["trigger_detail"]
    assert (rec["rows"], rec["holdout_rows"]) == (60, 20)
    assert rec["parent_version"] == 1 and rec["version"] == 2
    assert rec["gates"] == ["metrics.auc >= 0.5", "metrics.auc >= 0.6"]
    assert all(g["passed"] for g in rec["gate_results"])
    assert reg.alias_version("fraud", "candidate") == 2
    assert reg.alias_version("fraud", "production") == 1  # never moved by a run
    mv = reg.get("fraud", 2)
    assert mv.tags["retrain.run_id"] == rec["run_id"] and mv.tags["retrain.parent_version"] == "1"
    assert mv.tags["retrain.policy_digest"] == load_policy(policy).digest
    recorded = json.loads(reg.get_model("fraud").tags["retrain.last_run"])
    assert recorded["status"] == "promoted" and recorded["version"] == 2
    # The labels trigger counts rows since the last run: nothing new, nothing fires.
    code, rec, err = _retrain(policy, home, "--once")
    assert (code, rec) == (0, None), err


def test_vs_production_compares_on_this_runs_holdout_when_production_is_rescored(
    tmp_path: Path, setup: Any
) -> None:
    """Production registered auc 0.6 when it was trained; on this run's holdout it scores far
    higher. A candidate at 0.8 passes against the stale registered value, and fails once the
    script scores production on the same holdout (the value gated on is production's AUC there,
    computed here independently)."""
    import pyarrow.parquet as pq

    from aiarch.monitor.feedback import quality

    home, reg = setup
    code, rec, err = _retrain(_policy(tmp_path, home, ["--auc", "0.8"]), home, "--now")
    assert code == 0 and rec["status"] == "promoted", (err, rec)
    assert rec["production_basis"] == {"auc": "registered"}
    assert rec["gates"][-1] == "metrics.auc >= 0.6"

    code, rec, err = _retrain(_policy(tmp_path, home, ["--auc", "0.8", "--rescore"]), home, "--now")
    assert code == 1 and rec["status"] == "gate_failed", (err, rec)
    assert rec["production_basis"] == {"auc": "holdout"}
    holdout = pq.read_table(Path(rec["run_dir"]) / "holdout.parquet")
    expected = quality(
        "auc", holdout["prediction"].to_numpy().astype(np.float64), holdout["label"].to_numpy()
    )
    assert expected is not None and expected > 0.8
    assert rec["gates"][-1] == f"metrics.auc >= {expected!r}"
    assert reg.get("fraud", rec["version"]).metrics["production.auc"] == expected


def test_failed_gate_archives_the_version_and_says_why(tmp_path: Path, setup: Any) -> None:
    home, reg = setup
    code, rec, err = _retrain(_policy(tmp_path, home, ["--auc", "0.55"]), home, "--now")
    assert code == 1, err
    assert rec["status"] == "gate_failed" and rec["version"] == 2
    assert "metrics.auc >= 0.6" in rec["reason"] and "actual: 0.55" in rec["reason"]
    assert reg.get("fraud", 2).status == "archived"
    assert reg.alias_version("fraud", "candidate") is None


@pytest.mark.parametrize(
    ("args", "timeout_s", "reason"),
    [
        (["--fail"], 240.0, "training exited with code 1"),
        (["--hang"], 8.0, "exceeded its timeout of 8 s"),
    ],
)
def test_failed_or_hung_training_records_failure_and_no_candidate(
    tmp_path: Path, setup: Any, args: list[str], timeout_s: float, reason: str
) -> None:
    home, reg = setup
    code, rec, err = _retrain(_policy(tmp_path, home, args, timeout_s), home, "--now")
    assert code == 1, err
    assert rec["status"] == "failed" and reason in rec["reason"], rec
    assert rec["version"] is None
    assert reg.alias_version("fraud", "candidate") is None
    assert [v.version for v in reg.list_versions("fraud")] == [1]
    runs = json.loads(reg.get_model("fraud").tags["retrain.last_run"])
    assert runs["status"] == "failed" and reason in runs["reason"]


def test_unknown_trigger_kind_or_metric_is_refused_listing_valid_names(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps({"model": "m", "triggers": [{"kind": "vibes"}], "train": {"script": "t.py"}})
    )
    p = subprocess.run(
        [sys.executable, "-m", "aiarch", "retrain", "--policy", str(bad), "--check"],
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 2
    assert all(kind in p.stderr for kind in TRIGGER_KINDS), p.stderr
    tree = {
        "model": "m",
        "server": {"url": "http://127.0.0.1:1"},
        "triggers": [{"kind": "quality", "metric": "f1", "floor": 0.5}],
        "train": {"script": "t.py"},
    }
    with pytest.raises(InvalidArgumentError) as e:
        policy_from_dict(tree)
    assert all(m in str(e.value) for m in QUALITY_METRICS)
    tree["triggers"] = [{"kind": "slo", "p99": 5}]
    with pytest.raises(InvalidArgumentError, match="p99_ms"):
        policy_from_dict(tree)
    tree["triggers"] = [{"kind": "schedule", "interval_s": 60}]
    tree["promote_alias"] = "production"
    with pytest.raises(InvalidArgumentError, match="never moves production"):
        policy_from_dict(tree)


def test_server_triggers_read_drift_slo_and_quality_from_the_monitor(tmp_path: Path) -> None:
    from aiarch.registry import Registry

    policy = policy_from_dict(
        {
            "model": "m",
            "server": {"url": "http://127.0.0.1:1"},
            "triggers": [
                {"kind": "drift"},
                {"kind": "slo", "p99_ms": 5},
                {"kind": "quality", "metric": "auc", "floor": 0.8, "min_labels": 100},
                {"kind": "schedule", "interval_s": 3600},
            ],
            "train": {"script": "t.py"},
        }
    )
    report = {
        "drift": {"window": {"rows": 500, "share": 0.4, "drifted": True}},
        "latency_us": {"1m": {"end_to_end": {"count": 10, "p99_us": 7500.0}}},
        "quality": {
            "1": {"metric": "auc", "value": 0.91, "labels": 400},
            "2": {"metric": "auc", "value": 0.71, "labels": 300},
            "3": {"metric": "auc", "value": 0.10, "labels": 5},  # too few labels to judge
        },
    }
    r = Retrainer(policy, registry=Registry(home=tmp_path), monitor=lambda: report)
    checks = r.check()
    assert [c.fired for c in checks] == [True, True, True, True]
    assert checks[2].detail == "version 2: auc 0.7100 < 0.8"
    assert "p99 7.500 ms" in checks[1].detail
    report["drift"]["window"]["drifted"] = False  # type: ignore[index]
    report["latency_us"]["1m"]["end_to_end"]["p99_us"] = 900.0  # type: ignore[index]
    report["quality"]["2"]["value"] = 0.85  # type: ignore[index]
    assert [c.fired for c in r.check()][:3] == [False, False, False]

    def unreachable() -> dict[str, Any]:
        raise OSError("connection refused")

    quiet = Retrainer(policy, registry=Registry(home=tmp_path), monitor=unreachable).check()
    assert not quiet[0].fired and "unreadable" in quiet[0].detail


def test_quality_trigger_reads_a_real_server(tmp_path: Path) -> None:
    """Labels posted to a served model pull its online AUC below the policy's floor:
    `aiarch retrain --check` reads /monitor and says the quality trigger fired."""
    pytest.importorskip("uvloop", reason="uvloop is not installed")
    import urllib.request

    from aiarch.serving.process import ServerProcess

    models = HERE.parent / "serving" / "models.py"
    cfg = tmp_path / "serve.toml"
    cfg.write_text(
        f'[models.score]\nsource = "{models}:scorer"\n'
        '[models.score.monitor.feedback]\nmetric = "auc"\n'
    )
    srv = ServerProcess(["--config", str(cfg), "--log-level", "warning"], tmp_path / "serve.log")
    try:
        srv.wait_ready()

        def post(path: str, payload: object) -> Any:
            req = urllib.request.Request(
                srv.base + path,
                json.dumps(payload).encode(),
                {"Content-Type": "application/json"},
            )
            with urllib.request.urlopen(req, timeout=10) as r:
                return json.loads(r.read())

        for i in range(20):  # scores rank the labels backwards: AUC 0
            x = {"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [i / 20, 0.0]}
            post("/v2/models/score/infer", {"id": f"r{i}", "inputs": [x]})
        labels = [{"id": f"r{i}", "label": int(i < 10)} for i in range(20)]
        assert post("/v2/models/score/feedback", {"labels": labels})["joined"] == 20
        policy = tmp_path / "policy.json"
        policy.write_text(
            json.dumps(
                {
                    "model": "score",
                    "home": str(tmp_path / "home"),
                    "server": {"url": srv.base},
                    "triggers": [
                        {"kind": "quality", "metric": "auc", "floor": 0.6, "min_labels": 20},
                        {"kind": "slo", "p99_ms": 60000},
                    ],
                    "train": {"script": str(JOB)},
                }
            )
        )
        code, checks, err = _retrain(policy, tmp_path / "home", "--check")
        assert code == 0, err
        assert checks[0] == {
            "trigger": "quality(floor=0.6, metric=auc, min_labels=20)",
            "fired": True,
            "detail": "version 1: auc 0.0000 < 0.6",
        }
        assert checks[1]["fired"] is False and "bound 60000 ms" in checks[1]["detail"]
    finally:
        srv.stop()
