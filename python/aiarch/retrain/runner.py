"""One retraining run, and the loop that starts them when a trigger fires.

A run: build the window's data (Parquet), run `aiarch train SCRIPT` as a subprocess with the
data passed in (environment below, also usable through `aiarch.retrain.script_context()`)
under a timeout, find the version the script registered (its `run_id` tag), check the gates
with the registry's own gate code (`check_gates`: the policy's conditions, plus conditions
derived from the production version's metrics), then either set `promote_alias` on it
(`Registry.promote`, compare-and-swap) or archive it so that it can never hold an alias. With a
`[rollout]` table, a promoted version is then rolled out (`aiarch.rollout`: `Rollout.start`,
then the `Controller` drives it to completion or rollback unless `drive = false`); a run whose
training or gates failed never starts one. The run — trigger, data window, lineage (parent
version, policy digest), gate results and rollout, or why it failed — is recorded as the model
tag `retrain.run.<run_id>` and `retrain.last_run`; the training's output is kept in
`<home>/retrain/<model>/<run_id>/`.

Environment of the training script:
`AIARCH_RETRAIN_RUN_ID`, `AIARCH_RETRAIN_MODEL`, `AIARCH_RETRAIN_TRAIN` (train.parquet),
`AIARCH_RETRAIN_HOLDOUT` (holdout.parquet), `AIARCH_RETRAIN_WINDOW_START` and `..._END`
(seconds since the epoch), `AIARCH_RETRAIN_TRIGGER`, `AIARCH_RETRAIN_PARENT_VERSION` (empty when
there is no production version), `AIARCH_RETRAIN_POLICY_DIGEST`, `AIARCH_RETRAIN_REGISTRY` (the
policy's registry URL; empty for the default one under AIARCH_HOME).

`vs_production` gates compare the candidate with production on this run's holdout when the script
scored production there (`ScriptContext.score_production`, registered as `production.<metric>`
beside its own metrics); otherwise with the metrics production registered when it was trained,
measured on older data. `RunRecord.production_basis` says which, per metric.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aiarch.errors import AiarchError

from .data import build_run_data
from .policy import LOWER_IS_BETTER, RetrainPolicy
from .triggers import TriggerCheck, evaluate_triggers

__all__ = ["Retrainer", "RunRecord", "ScriptContext", "script_context"]

log = logging.getLogger("aiarch.retrain")

LAST_RUN_TAG = "retrain.last_run"
RUN_TAG_PREFIX = "retrain.run."


@dataclass
class RunRecord:
    """What one run did (recorded in the registry as JSON)."""

    run_id: str
    model: str
    trigger: str
    trigger_detail: str
    started_at: float
    finished_at: float = 0.0
    status: str = "running"
    """"promoted" (gates passed, alias set), "gate_failed" (version archived), "failed"
    (training failed, hung past its timeout, or registered nothing)."""
    reason: str = ""
    window_start: float = 0.0
    window_end: float = 0.0
    rows: int = 0
    holdout_rows: int = 0
    parent_version: int | None = None
    version: int | None = None
    alias: str | None = None
    gates: list[str] = field(default_factory=list)
    gate_results: list[dict[str, Any]] = field(default_factory=list)
    production_basis: dict[str, str] = field(default_factory=dict)
    """Per `vs_production` metric, what production's value came from: "holdout" (production
    re-scored on this run's holdout by the script) or "registered" (its registered metric)."""
    policy_digest: str = ""
    run_dir: str = ""
    rollout_id: int | None = None
    """The rollout the run started (policies with a `[rollout]` table), else None."""
    rollout_state: str | None = None
    """How it stands or ended: running (started, not driven here), completed, rolled_back,
    aborted, paused, or not_started (the start was refused: `rollout_reason` says why)."""
    rollout_reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ScriptContext:
    """What a training script started by a retraining run reads (None fields outside one)."""

    run_id: str
    model: str
    train_path: str
    holdout_path: str
    window_start: float
    window_end: float
    trigger: str
    parent_version: int | None
    policy_digest: str
    registry: str = ""
    """The registry URL of the run ("": the default one under AIARCH_HOME)."""

    def score_production(
        self, evaluate: Callable[[Callable[..., Any]], Mapping[str, float]]
    ) -> dict[str, float]:
        """Production (the run's parent version) scored by `evaluate` — the function the script
        scores its own model with, given ``predict(*arrays) -> outputs`` — as
        ``{"production.<metric>": value}``: register them beside the candidate's metrics and the
        policy's `vs_production` gates compare both models on this run's holdout. The version
        is loaded verified from the registry and run through an `aiarch.Runtime`. {} when there
        is no production version."""
        if self.parent_version is None:
            return {}
        import aiarch
        from aiarch.registry import Registry
        from aiarch.serving.loader import resolve_source
        from aiarch.serving.routing import artifact_source

        registry = Registry(url=self.registry or None)
        try:
            mv = registry.open(self.model, version=self.parent_version)
            source = resolve_source(artifact_source(mv))
        finally:
            registry.close()
        chunk = 256
        with aiarch.Runtime() as rt:
            rt.add_model(
                "production",
                source,
                batching=aiarch.BatchConfig(max_batch_size=chunk, max_delay_us=0),
            )

            def predict(*arrays: Any) -> Any:
                rows = len(arrays[0])
                parts = []
                for start in range(0, rows, chunk):
                    piece = tuple(a[start : start + chunk] for a in arrays)
                    parts.append(
                        rt.infer_sync("production", piece[0] if len(piece) == 1 else piece)
                    )
                if isinstance(parts[0], tuple):
                    return tuple(np.concatenate(p) for p in zip(*parts))
                return np.concatenate(parts)

            scores = evaluate(predict)
        return {f"production.{k}": float(v) for k, v in scores.items()}

    @property
    def tags(self) -> dict[str, str]:
        """Tags to register the trained version with (its lineage, searchable)."""
        return {
            "retrain.run_id": self.run_id,
            "retrain.trigger": self.trigger,
            "retrain.window": f"{self.window_start:.3f}-{self.window_end:.3f}",
            "retrain.parent_version": ""
            if self.parent_version is None
            else str(self.parent_version),
            "retrain.policy_digest": self.policy_digest,
        }


def script_context() -> ScriptContext | None:
    """The retraining run this process belongs to, or None when not started by one."""
    env = os.environ
    if "AIARCH_RETRAIN_RUN_ID" not in env:
        return None
    parent = env.get("AIARCH_RETRAIN_PARENT_VERSION", "")
    return ScriptContext(
        run_id=env["AIARCH_RETRAIN_RUN_ID"],
        model=env["AIARCH_RETRAIN_MODEL"],
        train_path=env["AIARCH_RETRAIN_TRAIN"],
        holdout_path=env["AIARCH_RETRAIN_HOLDOUT"],
        window_start=float(env["AIARCH_RETRAIN_WINDOW_START"]),
        window_end=float(env["AIARCH_RETRAIN_WINDOW_END"]),
        trigger=env.get("AIARCH_RETRAIN_TRIGGER", ""),
        parent_version=int(parent) if parent else None,
        policy_digest=env.get("AIARCH_RETRAIN_POLICY_DIGEST", ""),
        registry=env.get("AIARCH_RETRAIN_REGISTRY", ""),
    )


class Retrainer:
    """Evaluates a policy's triggers and runs retraining. `once()` checks the triggers and
    runs at most once; `run(trigger)` runs now; `watch()` loops every `poll_s`."""

    def __init__(
        self,
        policy: RetrainPolicy,
        *,
        registry: Any = None,
        clock: Callable[[], float] = time.time,
        monitor: Callable[[], dict[str, Any]] | None = None,
        on_observation: Callable[[Any], None] | None = None,
    ) -> None:
        from aiarch.registry import Registry

        self.policy = policy
        self.home = Path(policy.home or os.environ.get("AIARCH_HOME", ".aiarch"))
        self.registry = (
            registry
            if registry is not None
            else Registry(url=policy.registry or None, home=self.home)
        )
        self._clock = clock
        self._monitor = monitor
        self._on_observation = on_observation
        """Called with each rollout controller tick (`aiarch.rollout.Observation`)."""

    # ------------------------------------------------------------ state in the registry

    def last_run(self) -> dict[str, Any] | None:
        """The recorded last run of the policy's model, or None."""
        from aiarch.registry.errors import ModelNotFoundError

        try:
            tags = self.registry.get_model(self.policy.model).tags
        except ModelNotFoundError:
            return None
        raw = tags.get(LAST_RUN_TAG)
        return json.loads(raw) if raw else None

    def runs(self) -> list[dict[str, Any]]:
        """Every recorded run of the model, oldest first."""
        from aiarch.registry.errors import ModelNotFoundError

        try:
            tags = self.registry.get_model(self.policy.model).tags
        except ModelNotFoundError:
            return []
        runs = [json.loads(v) for k, v in tags.items() if k.startswith(RUN_TAG_PREFIX)]
        return sorted(runs, key=lambda r: r["started_at"])

    def _record(self, rec: RunRecord) -> None:
        text = json.dumps(rec.to_dict(), sort_keys=True)
        if rec.run_dir:
            Path(rec.run_dir, "run.json").write_text(text)
        from aiarch.registry.errors import ModelNotFoundError

        try:
            self.registry.set_model_tag(self.policy.model, RUN_TAG_PREFIX + rec.run_id, text)
            self.registry.set_model_tag(self.policy.model, LAST_RUN_TAG, text)
        except ModelNotFoundError:
            log.warning(
                "model %s is not in the registry: run %s is recorded only in %s",
                self.policy.model,
                rec.run_id,
                rec.run_dir,
            )

    # ------------------------------------------------------------ triggers

    def check(self) -> list[TriggerCheck]:
        """Every trigger's current check (nothing runs)."""
        return evaluate_triggers(self.policy, self.last_run(), self._clock(), self._monitor)

    def once(self) -> RunRecord | None:
        """Run once if a trigger fires (the first that does names the run); None otherwise."""
        for c in self.check():
            if c.fired:
                return self.run(c.trigger.describe(), c.detail)
        return None

    def watch(self, stop: Callable[[], bool] = lambda: False, lease_s: float = 30.0) -> None:
        """`once()` every `poll_s` seconds until `stop()`, holding the model's watcher lease
        (`WatchLease`) throughout: LeaseHeldError naming the holder when another watcher runs
        for the model; returns (after the current round) if another one took it over."""
        from .lease import WatchLease

        lease = WatchLease(self.registry, self.policy.model, lease_s)
        lease.acquire()
        lease.keep()
        try:
            self._watch(lambda: stop() or lease.lost.is_set())
        finally:
            lease.release()

    def _watch(self, stop: Callable[[], bool]) -> None:
        while not stop():
            try:
                rec = self.once()
                if rec is not None:
                    log.info("retrain run %s: %s %s", rec.run_id, rec.status, rec.reason)
            except (AiarchError, OSError) as e:  # a bad round must not end the watch
                log.error("retrain check failed: %s", e)
            deadline = time.monotonic() + self.policy.poll_s
            while not stop() and time.monotonic() < deadline:
                time.sleep(min(1.0, self.policy.poll_s))

    # ------------------------------------------------------------ one run

    def run(self, trigger: str, detail: str = "") -> RunRecord:
        """Train, gate and record one run now."""
        p = self.policy
        now = self._clock()
        run_id = f"retrain-{p.model}-{time.strftime('%Y%m%dT%H%M%S', time.gmtime(now))}-{uuid.uuid4().hex[:6]}"
        run_dir = self.home / "retrain" / p.model / run_id
        run_dir.mkdir(parents=True, exist_ok=True)
        rec = RunRecord(
            run_id=run_id,
            model=p.model,
            trigger=trigger,
            trigger_detail=detail,
            started_at=now,
            window_start=now - p.data.window_s,
            window_end=now,
            parent_version=self.registry.alias_version(p.model, p.production_alias)
            if self._model_exists()
            else None,
            policy_digest=p.digest,
            run_dir=str(run_dir),
        )
        self._record(rec)
        try:
            self._run(rec, run_dir)
        except Exception as e:  # recorded, never silently lost
            rec.status, rec.reason = "failed", f"{type(e).__name__}: {e}"
        rec.finished_at = self._clock()
        self._record(rec)
        return rec

    def _model_exists(self) -> bool:
        from aiarch.registry.errors import ModelNotFoundError

        try:
            self.registry.get_model(self.policy.model)
            return True
        except ModelNotFoundError:
            return False

    def _run(self, rec: RunRecord, run_dir: Path) -> None:
        p = self.policy
        data = build_run_data(p.data, rec.window_start, rec.window_end, run_dir)
        rec.rows, rec.holdout_rows = data.rows, data.holdout_rows
        ok, reason = self._train(rec, data, run_dir)
        if not ok:
            rec.status, rec.reason = "failed", reason
            return
        versions = self.registry.search(f"name = '{p.model}' and tags.run_id = '{rec.run_id}'")
        if not versions:
            rec.status = "failed"
            rec.reason = (
                f"training finished but registered no version of {p.model!r} (call "
                "ctx.register in the script)"
            )
            return
        mv = versions[0]
        rec.version = mv.version
        gates = list(p.gates.conditions) + self._production_gates(rec, mv)
        rec.gates = gates
        rec.gate_results = self._gate_results(mv, gates)
        failed = [g for g in rec.gate_results if not g["passed"]]
        if failed:
            self.registry.archive(p.model, mv.version)
            rec.status = "gate_failed"
            rec.reason = "; ".join(g["detail"] for g in failed) + " (version archived)"
            return
        self.registry.promote(
            p.model,
            mv.version,
            to=p.promote_alias,
            gates=gates or None,
            reason=f"retrain {rec.run_id} ({rec.trigger})",
        )
        rec.status, rec.alias = "promoted", p.promote_alias
        if p.rollout is not None:
            self._record(rec)  # the promotion stands whatever the rollout does
            self._roll_out(rec, mv.version)

    def _roll_out(self, rec: RunRecord, version: int) -> None:
        """Start the rollout of `version` and, unless `drive` is off, drive it to its end."""
        from aiarch.rollout import Controller, Rollout

        spec = self.policy.rollout
        assert spec is not None
        try:
            ro = Rollout.start(
                self.registry,
                self.policy.model,
                version,
                steps=spec.steps,
                dwell_s=spec.dwell_s,
                step_timeout_s=spec.step_timeout_s,
                thresholds=spec.limits(),
                reason=f"retrain {rec.run_id} ({rec.trigger})",
            )
        except AiarchError as e:
            rec.rollout_state, rec.rollout_reason = "not_started", str(e)
            return
        rec.rollout_id, rec.rollout_state = ro.id, ro.state
        rec.rollout_reason = f"started at {ro.weight} %"
        self._record(rec)
        if not spec.drive:
            return
        controller = Controller(
            self.registry,
            self.policy.model,
            list(spec.servers),
            served_name=self.policy.served_model(),
            lease_s=spec.lease_s,
            on_observation=self._on_observation,
        )
        try:
            ro = controller.run()
        except Exception as e:  # another controller drives it or took it over, or the
            # registry failed: the promotion stands and the rollout goes on without this run
            rec.rollout_reason = f"not driven here: {type(e).__name__}: {e}"
            return
        rec.rollout_state, rec.rollout_reason = ro.state, ro.reason

    def _production_gates(self, rec: RunRecord, mv: Any) -> list[str]:
        """`vs_production` as registry gate conditions against production's value of each
        metric: re-scored on this run's holdout when the script did it, else registered."""
        margins = self.policy.gates.vs_production
        if not margins or rec.parent_version is None:
            return []
        parent = self.registry.get(self.policy.model, rec.parent_version)
        out = []
        for metric, margin in sorted(margins.items()):
            base = mv.metrics.get(f"production.{metric}")
            rec.production_basis[metric] = "holdout"
            if base is None:
                base = parent.metrics.get(metric)
                rec.production_basis[metric] = "registered"
            if base is None:
                del rec.production_basis[metric]
                continue  # production never recorded it: nothing to compare with
            if metric in LOWER_IS_BETTER:
                out.append(f"metrics.{metric} <= {float(base) - margin!r}")
            else:
                out.append(f"metrics.{metric} >= {float(base) + margin!r}")
        return out

    def _gate_results(self, mv: Any, gates: list[str]) -> list[dict[str, Any]]:
        from aiarch.registry.errors import GateFailedError
        from aiarch.registry.search import check_gates

        model = self.registry.get_model(self.policy.model)
        results = []
        for gate in gates:
            try:
                check_gates(mv, [gate], model)
                results.append({"gate": gate, "passed": True, "detail": "passed"})
            except GateFailedError as e:
                results.append({"gate": gate, "passed": False, "detail": str(e)})
        return results

    def _train(self, rec: RunRecord, data: Any, run_dir: Path) -> tuple[bool, str]:
        """Run `aiarch train` under the policy's timeout; (ok, why not)."""
        p = self.policy
        cmd = [
            sys.executable,
            "-m",
            "aiarch",
            "train",
            p.train.script,
            "--nproc",
            str(p.train.nproc),
            "--run-id",
            rec.run_id,
            "--home",
            str(self.home),
            "--max-restarts",
            str(p.train.max_restarts),
            "--device",
            "cpu",
        ]
        if p.registry:
            cmd += ["--registry", p.registry]
        if p.train.args:
            cmd += ["--", *p.train.args]
        env = {
            **os.environ,
            "AIARCH_HOME": str(self.home),
            "AIARCH_RETRAIN_RUN_ID": rec.run_id,
            "AIARCH_RETRAIN_MODEL": p.model,
            "AIARCH_RETRAIN_TRAIN": data.train_path,
            "AIARCH_RETRAIN_HOLDOUT": data.holdout_path,
            "AIARCH_RETRAIN_WINDOW_START": repr(data.window_start),
            "AIARCH_RETRAIN_WINDOW_END": repr(data.window_end),
            "AIARCH_RETRAIN_TRIGGER": rec.trigger,
            "AIARCH_RETRAIN_PARENT_VERSION": ""
            if rec.parent_version is None
            else str(rec.parent_version),
            "AIARCH_RETRAIN_POLICY_DIGEST": p.digest,
            "AIARCH_RETRAIN_REGISTRY": p.registry or "",
        }
        log_path = run_dir / "train.log"
        with open(log_path, "wb") as out:
            proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
            try:
                code = proc.wait(timeout=p.train.timeout_s)
            except BaseException as e:  # a timeout, or Ctrl-C: never leave the job behind
                _kill_group(proc)
                if not isinstance(e, subprocess.TimeoutExpired):
                    raise
                return False, (
                    f"training exceeded its timeout of {p.train.timeout_s:g} s and was killed "
                    f"(log: {log_path})"
                )
        if code != 0:
            tail = log_path.read_bytes()[-600:].decode(errors="replace").strip()
            return False, f"training exited with code {code}: {tail}"
        return True, ""


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Stop the training's whole process group (launcher and workers): TERM, then KILL."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=5.0)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    try:  # whatever of the group outlived the launcher
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
