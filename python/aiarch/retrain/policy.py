"""A model's retraining policy: when to retrain, how, on what data, and what a candidate must
pass. Declared in TOML (or JSON, the same tree)::

    model = "fraud"                      # registry model name
    promote_alias = "candidate"          # set on a version that passes its gates
    [server]                             # where drift, SLO and quality are read
    url = "http://127.0.0.1:8000"
    [[triggers]]
    kind = "drift"                       # the last drift window drifted
    [[triggers]]
    kind = "quality"
    metric = "auc"
    floor = 0.8
    [train]
    script = "train.py"
    args = ["--epochs", "3"]
    timeout_s = 600
    [data]
    label_log = "labels"                 # the feedback label log (Parquet folder)
    window_s = 604800
    features = ["txn:*"]                 # point-in-time features from the feature store
    [gates]
    conditions = ["metrics.auc >= 0.7"]  # registry gate conditions on the candidate
    vs_production = { auc = 0.0 }        # at least production's value + 0.0
    [rollout]                            # optional: roll a promoted candidate out
    steps = [5, 25, 50, 100]             # candidate traffic share (%) per step
    dwell_s = 300
    thresholds = { max_error_rate_increase = 0.01 }
    servers = ["http://127.0.0.1:8000"]  # metrics URLs (default: [server] url)

Unknown keys, trigger kinds and metric names are refused with the valid ones.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from aiarch.errors import InvalidArgumentError
from aiarch.monitor.feedback import QUALITY_METRICS

__all__ = [
    "LOWER_IS_BETTER",
    "TRIGGER_KINDS",
    "DataSpec",
    "GateSpec",
    "RetrainPolicy",
    "RolloutSpec",
    "ServerSpec",
    "TrainSpec",
    "Trigger",
    "load_policy",
]

TRIGGER_KINDS = ("drift", "slo", "quality", "labels", "schedule")
"""drift: the served model's last drift window drifted (or its drift share reached `share`);
slo: its end-to-end p99 over `window` ("1m", "5m", "all") exceeded `p99_ms`; quality: its
online quality (`metric`) fell below `floor` with at least `min_labels` labels; labels: at
least `rows` labelled rows arrived since the last run; schedule: `interval_s` passed since the
last run."""

_TRIGGER_KEYS: dict[str, dict[str, type | tuple[type, ...]]] = {
    "drift": {"share": (int, float)},
    "slo": {"p99_ms": (int, float), "window": str},
    "quality": {"metric": str, "floor": (int, float), "min_labels": int},
    "labels": {"rows": int},
    "schedule": {"interval_s": (int, float)},
}
_REQUIRED: dict[str, tuple[str, ...]] = {
    "drift": (),
    "slo": ("p99_ms",),
    "quality": ("metric", "floor"),
    "labels": ("rows",),
    "schedule": ("interval_s",),
}

LOWER_IS_BETTER = frozenset({"mae", "mse", "rmse", "loss", "log_loss", "error_rate"})
"""Gate metrics compared the other way round against production (lower is better)."""


@dataclass(frozen=True)
class Trigger:
    """One condition that starts a run."""

    kind: str
    """One of TRIGGER_KINDS."""
    params: dict[str, Any] = field(default_factory=dict)
    """The kind's parameters (see TRIGGER_KINDS)."""

    def describe(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in sorted(self.params.items()))
        return f"{self.kind}({args})" if args else self.kind


@dataclass(frozen=True)
class ServerSpec:
    """The serving endpoint whose `/v2/models/{model}/monitor` the drift, SLO and quality
    triggers read."""

    url: str = ""
    """Base URL, e.g. http://127.0.0.1:8000 (empty = no server triggers)."""
    model: str = ""
    """Served model name (default: the policy's model)."""
    timeout_s: float = 5.0
    """Timeout of one monitor read."""


@dataclass(frozen=True)
class TrainSpec:
    """The training command: `aiarch train SCRIPT --nproc N -- ARGS`."""

    script: str = ""
    """Training script (relative to the policy file)."""
    args: tuple[str, ...] = ()
    """Arguments after `--`."""
    nproc: int = 1
    """Processes (`aiarch train --nproc`)."""
    timeout_s: float = 3600.0
    """A run longer than this is killed and recorded as failed."""
    max_restarts: int = 0
    """`aiarch train --max-restarts`."""


@dataclass(frozen=True)
class DataSpec:
    """The data of a run: labelled rows of the window, with point-in-time features."""

    label_log: str = ""
    """Folder of the feedback label log (Parquet), relative to the policy file."""
    window_s: float = 7 * 86400.0
    """Rows whose event time falls in the last window_s seconds."""
    features: tuple[str, ...] = ()
    """Feature refs ("view:feature" or "view:*") joined point-in-time from the offline store;
    empty = the label log's columns only."""
    entity_key: str = "entity_id"
    """Entity key column of the feature views."""
    feature_home: str = ""
    """Feature store metadata folder (default $AIARCH_HOME)."""
    holdout_fraction: float = 0.2
    """Share of rows written to the holdout file (the newest rows by event time)."""


@dataclass(frozen=True)
class GateSpec:
    """What a trained version must pass to get `promote_alias`."""

    conditions: tuple[str, ...] = ()
    """Registry gate conditions (`metrics.auc >= 0.7`, as `aiarch models promote --gate`)."""
    vs_production: dict[str, float] = field(default_factory=dict)
    """metric -> margin: the candidate's metric must be at least production's + margin (at
    most production's - margin for LOWER_IS_BETTER metrics)."""


@dataclass(frozen=True)
class RolloutSpec:
    """How a candidate that passed its gates goes out (`aiarch.rollout`): the rollout's own
    settings, validated by the rollout module, plus where its controller reads metrics."""

    steps: tuple[int, ...] = (5, 25, 50, 100)
    """Candidate traffic share (%) of each step, strictly increasing, ending at 100."""
    dwell_s: float = 300.0
    """Seconds each step must run without a breach before the next."""
    step_timeout_s: float | None = None
    """A step not judged within this (too few requests) pauses the rollout (default 10 x
    dwell_s)."""
    thresholds: dict[str, float] = field(default_factory=dict)
    """`aiarch.rollout.Thresholds` fields (unset ones keep their defaults)."""
    servers: tuple[str, ...] = ()
    """Base URLs whose `/metrics` the controller reads (default: the `[server]` url)."""
    drive: bool = True
    """Drive the rollout to completion or rollback in the run; false = only start it (an
    `aiarch rollout run` elsewhere drives it)."""
    lease_s: float = 30.0
    """The controller's lease on the rollout (renewed every tick)."""

    def limits(self) -> Any:
        from aiarch.rollout import Thresholds

        return Thresholds.from_dict(self.thresholds)


@dataclass(frozen=True)
class RetrainPolicy:
    """A model's retraining policy (see the module doc for the file layout)."""

    model: str
    """Registry model name the training registers and the gates compare."""
    triggers: tuple[Trigger, ...]
    """Any one of them starts a run."""
    train: TrainSpec
    data: DataSpec = field(default_factory=DataSpec)
    gates: GateSpec = field(default_factory=GateSpec)
    server: ServerSpec = field(default_factory=ServerSpec)
    rollout: RolloutSpec | None = None
    """Roll a promoted candidate out progressively; None = stop at `promote_alias`."""
    promote_alias: str = "candidate"
    """Alias set on a version that passes its gates (never `production`'s job)."""
    production_alias: str = "production"
    """Alias of the version a candidate is compared with (and the run's parent)."""
    registry: str = ""
    """Registry URL (empty = the default registry under AIARCH_HOME)."""
    home: str = ""
    """AIARCH_HOME of the runs (default $AIARCH_HOME or ./.aiarch)."""
    poll_s: float = 30.0
    """`--watch`: seconds between trigger evaluations."""
    digest: str = ""
    """sha256 of the policy's canonical JSON (recorded with every run)."""

    def served_model(self) -> str:
        return self.server.model or self.model


def _table(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidArgumentError(f"{where}: expected a table, got {type(value).__name__}")
    return dict(value)


def _build(cls: Any, table: Mapping[str, Any], where: str) -> Any:
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(table) - known)
    if unknown:
        raise InvalidArgumentError(f"{where}: unknown keys {unknown}; valid keys: {sorted(known)}")
    kwargs = dict(table)
    for k, v in kwargs.items():
        if isinstance(v, list):
            kwargs[k] = tuple(v)
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise InvalidArgumentError(f"{where}: {e}") from None


def _trigger(raw: Any, i: int) -> Trigger:
    where = f"triggers[{i}]"
    t = _table(raw, where)
    kind = t.pop("kind", None)
    if kind not in TRIGGER_KINDS:
        raise InvalidArgumentError(
            f"{where}: unknown trigger kind {kind!r}; valid kinds: {list(TRIGGER_KINDS)}"
        )
    keys = _TRIGGER_KEYS[kind]
    unknown = sorted(set(t) - set(keys))
    if unknown:
        raise InvalidArgumentError(
            f"{where} ({kind}): unknown keys {unknown}; valid keys: {sorted(keys)}"
        )
    missing = [k for k in _REQUIRED[kind] if k not in t]
    if missing:
        raise InvalidArgumentError(f"{where} ({kind}): missing {missing}")
    for k, v in t.items():
        if isinstance(v, bool) or not isinstance(v, keys[k]):
            raise InvalidArgumentError(f"{where} ({kind}): {k} has the wrong type ({v!r})")
    if kind == "quality" and t["metric"] not in QUALITY_METRICS:
        raise InvalidArgumentError(
            f"{where} (quality): unknown metric {t['metric']!r}; valid metrics: "
            f"{list(QUALITY_METRICS)}"
        )
    if kind == "slo" and t.get("window", "1m") not in ("1m", "5m", "all"):
        raise InvalidArgumentError(f"{where} (slo): window must be one of ['1m', '5m', 'all']")
    return Trigger(kind, t)


def _rollout(raw: Any, server: ServerSpec) -> RolloutSpec:
    """The `[rollout]` table, checked by the rollout module's own validation now (not after a
    training run)."""
    from aiarch.rollout.state import Thresholds, validate_steps

    spec = _build(RolloutSpec, _table(raw, "rollout"), "rollout")
    try:
        steps = validate_steps(list(spec.steps))
        Thresholds.from_dict(_table(spec.thresholds, "rollout.thresholds"))
    except InvalidArgumentError as e:
        raise InvalidArgumentError(f"rollout: {e}") from None
    for what in ("dwell_s", "lease_s") + (("step_timeout_s",) if spec.step_timeout_s else ()):
        v = getattr(spec, what)
        if isinstance(v, bool) or not isinstance(v, int | float) or not v > 0:
            raise InvalidArgumentError(f"rollout: {what} must be a positive number, got {v!r}")
    if spec.step_timeout_s is not None and spec.step_timeout_s < spec.dwell_s:
        raise InvalidArgumentError(
            f"rollout: step_timeout_s ({spec.step_timeout_s:g}) must be at least dwell_s "
            f"({spec.dwell_s:g})"
        )
    if not isinstance(spec.drive, bool):
        raise InvalidArgumentError(f"rollout: drive must be true or false, got {spec.drive!r}")
    servers = tuple(str(u) for u in spec.servers) or ((server.url,) if server.url else ())
    if not servers:
        raise InvalidArgumentError(
            "rollout: the controller reads the servers' /metrics: set rollout.servers "
            '(e.g. ["http://127.0.0.1:8000"]) or [server] url'
        )
    for url in servers:
        if not url.startswith(("http://", "https://")):
            raise InvalidArgumentError(f"rollout.servers: {url!r} is not an http(s):// URL")
    return RolloutSpec(
        steps=steps,
        dwell_s=float(spec.dwell_s),
        step_timeout_s=None if spec.step_timeout_s is None else float(spec.step_timeout_s),
        thresholds=dict(spec.thresholds),
        servers=servers,
        drive=spec.drive,
        lease_s=float(spec.lease_s),
    )


def policy_from_dict(tree: Mapping[str, Any], base_dir: Path | None = None) -> RetrainPolicy:
    """A policy from its parsed tree; paths are relative to `base_dir`."""
    t = _table(tree, "policy")
    known = {f.name for f in fields(RetrainPolicy)} - {"digest"}
    unknown = sorted(set(t) - known)
    if unknown:
        raise InvalidArgumentError(f"policy: unknown keys {unknown}; valid keys: {sorted(known)}")
    if not isinstance(t.get("model"), str) or not t["model"]:
        raise InvalidArgumentError("policy: 'model' (the registry model name) is required")
    raw_triggers = t.get("triggers")
    if not isinstance(raw_triggers, list) or not raw_triggers:
        raise InvalidArgumentError(
            f"policy: 'triggers' must list at least one trigger; valid kinds: {list(TRIGGER_KINDS)}"
        )
    triggers = tuple(_trigger(raw, i) for i, raw in enumerate(raw_triggers))
    train = _build(TrainSpec, _table(t.get("train", {}), "train"), "train")
    if not train.script:
        raise InvalidArgumentError("train: 'script' (the training script) is required")
    data = _build(DataSpec, _table(t.get("data", {}), "data"), "data")
    gates = _build(GateSpec, _table(t.get("gates", {}), "gates"), "gates")
    server = _build(ServerSpec, _table(t.get("server", {}), "server"), "server")
    if not 0.0 <= data.holdout_fraction < 1.0:
        raise InvalidArgumentError("data: holdout_fraction must be in [0, 1)")
    if train.timeout_s <= 0:
        raise InvalidArgumentError("train: timeout_s must be > 0")
    needs_server = [tr.kind for tr in triggers if tr.kind in ("drift", "slo", "quality")]
    if needs_server and not server.url:
        raise InvalidArgumentError(
            f"triggers {needs_server} read the server's monitor: set [server] url"
        )
    rollout = _rollout(t["rollout"], server) if "rollout" in t else None
    if any(tr.kind == "labels" for tr in triggers) and not data.label_log:
        raise InvalidArgumentError("a 'labels' trigger counts the label log: set [data] label_log")
    base = base_dir or Path.cwd()

    def rel(p: str) -> str:
        return p if not p or os.path.isabs(p) else str(base / p)

    train = TrainSpec(
        script=rel(train.script),
        args=tuple(str(a) for a in train.args),
        nproc=train.nproc,
        timeout_s=float(train.timeout_s),
        max_restarts=train.max_restarts,
    )
    data = DataSpec(
        label_log=rel(data.label_log),
        window_s=float(data.window_s),
        features=tuple(data.features),
        entity_key=data.entity_key,
        feature_home=rel(data.feature_home),
        holdout_fraction=float(data.holdout_fraction),
    )
    from aiarch.registry.search import parse_filter
    from aiarch.registry.uris import validate_alias

    for cond in gates.conditions:
        parse_filter(cond)  # refuse a malformed gate now, not after a training run
    for alias in (t.get("promote_alias", "candidate"), t.get("production_alias", "production")):
        validate_alias(alias)
    if t.get("promote_alias", "candidate") == t.get("production_alias", "production"):
        raise InvalidArgumentError(
            "promote_alias must differ from production_alias: a retraining run never moves "
            "production itself"
        )
    canonical = json.dumps(tree, sort_keys=True, default=str).encode()
    return RetrainPolicy(
        model=t["model"],
        triggers=triggers,
        train=train,
        data=data,
        gates=GateSpec(tuple(gates.conditions), dict(gates.vs_production)),
        server=server,
        rollout=rollout,
        promote_alias=t.get("promote_alias", "candidate"),
        production_alias=t.get("production_alias", "production"),
        registry=str(t.get("registry", "")),
        home=rel(str(t.get("home", ""))),
        poll_s=float(t.get("poll_s", 30.0)),
        digest=hashlib.sha256(canonical).hexdigest(),
    )


def load_policy(path: str | os.PathLike[str]) -> RetrainPolicy:
    """Read a policy file: `.toml`, else JSON."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise InvalidArgumentError(f"cannot read policy {str(p)!r}: {e}") from None
    try:
        if p.suffix == ".toml":
            import tomllib

            tree = tomllib.loads(raw.decode())
        else:
            tree = json.loads(raw)
    except ValueError as e:
        raise InvalidArgumentError(
            f"policy {str(p)!r} is not valid {p.suffix or 'JSON'}: {e}"
        ) from None
    return policy_from_dict(tree, p.resolve().parent)
