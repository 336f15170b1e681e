"""The demo's closed loop: the world shifts, labels come back, the retraining policy fires,
retrains with `aiarch train`, gates the new version and rolls it out step by step until
production moves to it."""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiarch.serving.process import ServerProcess, free_port

from .traffic import Traffic

POLICY = """\
model = "{model}"
poll_s = 1

[server]                      # where the quality trigger reads the online AUC
url = "{url}"

[[triggers]]
kind = "quality"
metric = "auc"
floor = {floor}
min_labels = {min_labels}

[train]                       # the demo's own training script, run by aiarch train
script = "{script}"
args = ["--inputs", "{requests}", "{model}", "12"]   # epochs
timeout_s = 600

[data]
label_log = "{labels}"
window_s = 3600
holdout_fraction = 0.25

[gates]                       # on the run's holdout (the newest labelled rows)
conditions = ["metrics.auc >= 0.65"]

[rollout]                     # then out step by step, judged on the server's metrics
steps = [25, 50, 100]
dwell_s = 1.5
step_timeout_s = 30
# A p99 under the service's 50 ms objective is no breach: seconds-long windows on a shared
# machine measure scheduling noise below it.
thresholds = {{ min_requests = 30, p99_floor_s = 0.05 }}
"""

SERVE = """\
[models.{model}]
source = "{model}@production"   # follows production and the rollout's weights
[models.{model}.batching]
inline_execution = false
[models.{model}.monitor.feedback]
metric = "auc"
label_log = "{labels}"
"""


@dataclass
class Loop:
    """What the closed loop left running and what it observed."""

    server: ServerProcess
    traffic: Traffic
    input_name: str
    run: Any = None
    rollout: Any = None
    observations: list[Any] = field(default_factory=list)


class _Progress(logging.Handler):
    """Prints the rollout controller's step changes as they happen."""

    def emit(self, record: logging.LogRecord) -> None:
        print(f"  {record.getMessage()}", flush=True)


def closed_loop(reg: Any, model: str, out: Path) -> Loop:
    """Serve `model@production` with label feedback, shift its traffic, let the policy
    retrain and roll out. Returns the server and traffic still running (the next step uses
    them); the caller stops them."""
    from aiarch.retrain import Retrainer, load_policy
    from aiarch.rollout.cli import history_table

    from .data import shifted

    production = reg.get(model, alias="production")
    input_name = (production.signature or {}).get("inputs", [{"name": "x"}])[0]["name"]
    labels, requests = out / "labels", out / "requests.parquet"
    config = out / "serve-loop.toml"
    config.write_text(SERVE.format(model=model, labels=labels))
    port = free_port()
    server = ServerProcess(
        ["--config", str(config), "--registry-poll", "0.1", "--log-level", "warning"],
        out / "loop-server.log",
        port=port,
    )
    try:
        server.wait_ready(120)
    except BaseException:
        server.stop()
        raise
    x_new, y_new = shifted()
    traffic = Traffic(port, model, input_name, x_new, y_new)
    loop = Loop(server, traffic, input_name)
    try:
        min_labels = 600
        print(
            f"  serving {model}@production (version {production.version}) on {server.base} "
            f"with label feedback; the world shifts: fraud is now small amounts on young "
            f"accounts ({y_new.mean():.0%} of {len(y_new):,} new transactions)"
        )
        window = 1000  # labelled rows to retrain on: comfortably more than the trigger needs
        if not traffic.wait_labelled(window, 120):
            raise RuntimeError(
                f"traffic stopped before {window} labels (see the server log under {out})"
            )
        policy_path = out / "retrain-policy.toml"
        policy_path.write_text(
            POLICY.format(
                model=model,
                url=server.base,
                floor=0.7,
                min_labels=min_labels,
                script=Path(__file__).with_name("train_fraud.py"),
                requests=requests,
                labels=labels,
            )
        )
        retrainer = Retrainer(load_policy(policy_path), on_observation=loop.observations.append)
        fired = _wait_for_trigger(retrainer, 30.0)
        print(f"  {traffic.labelled:,} labels fed back; policy {policy_path.name}: {fired}")
        logged = traffic.write_request_log(requests)
        print(
            f"  retraining: aiarch train {Path(__file__).with_name('train_fraud.py').name} on "
            f"the labelled window ({logged:,} logged requests), gates, then rollout 25 → 50 → "
            "100 % with 1.5 s dwells"
        )
        progress = _Progress(logging.INFO)
        rollout_log = logging.getLogger("aiarch.rollout")
        rollout_log.addHandler(progress)
        level = rollout_log.level
        rollout_log.setLevel(logging.INFO)
        try:
            loop.run = retrainer.once()
        finally:
            rollout_log.removeHandler(progress)
            rollout_log.setLevel(level)
        if loop.run is None:
            raise RuntimeError("the policy stopped firing before the run started")
        run = loop.run
        holdout_auc = reg.get(model, run.version).metrics.get("auc") if run.version else None
        print(
            f"  run {run.run_id}: {run.status}, version {run.version} "
            f"({run.rows:,} training rows, {run.holdout_rows:,} held out"
            + (f", holdout auc {holdout_auc:.3f}" if holdout_auc is not None else "")
            + "); gates: "
            + ", ".join(
                f"{g['gate']} {'passed' if g['passed'] else 'FAILED'}" for g in run.gate_results
            )
            + (f"; {run.reason}" if run.reason else "")
        )
        if run.rollout_id is None:
            print(f"  no rollout: {run.rollout_reason or run.reason}", file=sys.stderr)
            return loop
        loop.rollout = reg_rollout = _rollout(reg, run.rollout_id)
        print(f"  rollout #{reg_rollout.id}: {reg_rollout.state}: {reg_rollout.reason}")
        print(f"  production now on version {reg.alias_version(model, 'production')}")
        print(
            "\n".join("  " + line for line in history_table(reg_rollout.events(reg)).splitlines())
        )
        run_tag = json.loads(reg.get_model(model).tags[f"retrain.run.{run.run_id}"])
        print(
            f"  recorded as model tag retrain.run.{run.run_id}: rollout "
            f"#{run_tag['rollout_id']} {run_tag['rollout_state']}"
        )
        return loop
    except BaseException:
        traffic.stop()
        server.stop()
        raise


def _rollout(reg: Any, rollout_id: int) -> Any:
    from aiarch.rollout import state

    ro = state.get(reg, rollout_id)
    assert ro is not None
    return ro


def _wait_for_trigger(retrainer: Any, timeout_s: float) -> str:
    """The first fired trigger's description (the server's quality window needs the labels
    just posted; it is read until it shows them)."""
    deadline = time.monotonic() + timeout_s
    while True:
        checks = retrainer.check()
        fired = [c for c in checks if c.fired]
        if fired:
            return f"{fired[0].trigger.describe()} FIRED ({fired[0].detail})"
        if time.monotonic() > deadline:
            return "quiet (" + "; ".join(c.detail for c in checks) + ")"
        time.sleep(0.5)


def arm_quality(observation: Any, arm: str) -> float:
    """The online AUC of one arm of a controller observation (nan when unlabelled)."""
    value = getattr(observation, arm).quality.get("auc")
    return float("nan") if value is None else float(value)


__all__ = ["Loop", "arm_quality", "closed_loop"]
