"""Rollout state in the registry database: what every server follows and every controller
steers.

One row per rollout (`rollouts`): the candidate version, the baseline (what `production`
pointed at when it started), the steps, the current step and its candidate weight, the state
and the controller lease. At most one rollout per model is active (running or paused): a
unique partial index says so, so two concurrent `start`s cannot both succeed. Every decision
is appended to `rollout_events` with the per-arm figures it was made on.

Writes are compare-and-swap: a controller's step changes hold only while its lease does and
the row is still in the state it read; an operator's pause, resume and abort need no lease.
Completion moves `production` to the candidate in the same transaction that marks the rollout
completed, so no reader ever sees one without the other.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

from aiarch.errors import InvalidArgumentError, NotFoundError
from aiarch.registry.errors import ConflictError
from aiarch.registry.registry import Registry, _actor
from aiarch.registry.search import check_gates

__all__ = [
    "ACTIVE_STATES",
    "DEFAULT_STEPS",
    "PRODUCTION",
    "LeaseHeldError",
    "LeaseLostError",
    "Rollout",
    "RolloutEvent",
    "Thresholds",
    "abort",
    "active",
    "events",
    "latest",
    "pause",
    "resume",
    "serving_split",
    "start",
]

DEFAULT_STEPS: tuple[int, ...] = (5, 25, 50, 100)
"""Candidate traffic share (%) of each step."""

PRODUCTION = "production"
"""The alias a rollout starts from and moves on completion."""

ACTIVE_STATES = ("running", "paused")
STATES = (*ACTIVE_STATES, "completed", "rolled_back", "aborted")

_ACTIVE_SQL = "state IN ('running', 'paused')"  # the predicate of index rollouts_active
SERVING_SPLIT_SQL = (
    "SELECT r.id, r.candidate, r.weight FROM rollouts r JOIN models m ON m.id = r.model_id "
    f"WHERE m.name = ? AND r.{_ACTIVE_SQL}"
)
"""What every server reads per poll: answered from the model name index and rollouts_active."""
_COLUMNS = (
    "r.id, m.name, r.candidate, r.baseline, r.steps, r.dwell_s, r.step_timeout_s, "
    "r.thresholds, r.step, r.weight, r.state, r.reason, r.created_by, r.created_at, "
    "r.updated_at, r.step_started_at, r.lease_owner, r.lease_expires_at"
)


class LeaseHeldError(ConflictError):
    """Another controller holds the rollout's lease; the message names it and its expiry."""


class LeaseLostError(ConflictError):
    """This controller's lease expired and another controller took the rollout over."""


@dataclass(frozen=True)
class Thresholds:
    """When the candidate arm counts as worse than production. Stored with the rollout, so
    every controller judges it the same way."""

    max_error_rate_increase: float = 0.01
    """Largest allowed excess of the candidate's error rate over production's (absolute:
    0.01 = one percentage point). Errors: failed, expired and rejected requests."""
    max_p99_ratio: float = 1.5
    """Largest allowed candidate p99 / production p99 (end-to-end latency per version)."""
    p99_floor_s: float = 0.005
    """A candidate p99 under this is never a breach: at sub-millisecond latencies a ratio
    measures scheduling noise, not the model."""
    max_quality_drop: float = 0.02
    """Largest allowed worsening of an online quality metric, in the metric's own units
    (auc/accuracy lower by more, mae higher by more); compared only when both arms have it."""
    max_drift_share_increase: float = 0.25
    """Largest allowed excess of the candidate's drifted-feature share over production's;
    compared only when the monitor exports it for both arms."""
    min_requests: int = 100
    """Requests each arm must have answered in a step's window before it is judged; with
    fewer the step keeps dwelling until its timeout."""

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                raise InvalidArgumentError(f"threshold {f.name} must be a number, got {v!r}")
            if v < 0:
                raise InvalidArgumentError(f"threshold {f.name} must be >= 0, got {v!r}")
        if self.max_p99_ratio < 1:
            raise InvalidArgumentError(
                f"threshold max_p99_ratio must be >= 1 (candidate p99 / production p99), "
                f"got {self.max_p99_ratio!r}"
            )
        if not isinstance(self.min_requests, int) or self.min_requests < 1:
            raise InvalidArgumentError(
                f"threshold min_requests must be an int >= 1, got {self.min_requests!r}"
            )

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Thresholds:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise InvalidArgumentError(
                f"unknown threshold(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        return cls(**d)


@dataclass(frozen=True)
class Rollout:
    """One rollout as recorded. `step` indexes `steps`; `weight` is the candidate's share (%)
    every server applies now (0 once rolled back or aborted)."""

    id: int
    model: str
    candidate: int
    baseline: int
    steps: tuple[int, ...]
    dwell_s: float
    step_timeout_s: float
    thresholds: Thresholds
    step: int
    weight: int
    state: str
    reason: str
    created_by: str
    created_at: float
    updated_at: float
    step_started_at: float
    lease_owner: str | None = None
    lease_expires_at: float | None = None

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES

    @property
    def last_step(self) -> bool:
        return self.step == len(self.steps) - 1

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["steps"] = list(self.steps)
        return d

    # The Python API in one place: `Rollout.start(reg, "fraud", 2)`, `Rollout.active(...)`.
    @classmethod
    def start(
        cls,
        registry: Registry,
        model: str,
        candidate: int,
        *,
        steps: Sequence[int] = DEFAULT_STEPS,
        dwell_s: float = 300.0,
        step_timeout_s: float | None = None,
        thresholds: Thresholds | None = None,
        gates: str | Sequence[str] | None = None,
        reason: str = "",
    ) -> Rollout:
        """Start rolling `candidate` out against `model@production` (see `start`)."""
        return start(
            registry,
            model,
            candidate,
            steps=steps,
            dwell_s=dwell_s,
            step_timeout_s=step_timeout_s,
            thresholds=thresholds,
            gates=gates,
            reason=reason,
        )

    @classmethod
    def active_for(cls, registry: Registry, model: str) -> Rollout | None:
        return active(registry, model)

    @classmethod
    def latest_for(cls, registry: Registry, model: str) -> Rollout | None:
        return latest(registry, model)

    def events(self, registry: Registry) -> list[RolloutEvent]:
        return events(registry, self.id)


@dataclass(frozen=True)
class RolloutEvent:
    """One decision: `decision` is start, advance, complete, rollback, hold (paused for lack
    of evidence), pause, resume or abort; `arms` holds the per-arm figures it was made on
    (`{"production": {...}, "candidate": {...}}`, empty for an operator's action)."""

    step: int
    weight: int
    decision: str
    reason: str
    arms: dict[str, Any]
    actor: str
    at: float
    id: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def controller_id() -> str:
    """A controller's identity in the lease: host, process and a random part."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _row(r: Sequence[Any]) -> Rollout:
    return Rollout(
        id=int(r[0]),
        model=r[1],
        candidate=int(r[2]),
        baseline=int(r[3]),
        steps=tuple(json.loads(r[4])),
        dwell_s=float(r[5]),
        step_timeout_s=float(r[6]),
        thresholds=Thresholds.from_dict(json.loads(r[7])),
        step=int(r[8]),
        weight=int(r[9]),
        state=r[10],
        reason=r[11],
        created_by=r[12],
        created_at=float(r[13]),
        updated_at=float(r[14]),
        step_started_at=float(r[15]),
        lease_owner=r[16],
        lease_expires_at=None if r[17] is None else float(r[17]),
    )


def validate_steps(steps: Sequence[int]) -> tuple[int, ...]:
    """Steps as a tuple of strictly increasing percentages in 1..100 ending at 100."""
    if isinstance(steps, str | bytes) or not isinstance(steps, Sequence) or not steps:
        raise InvalidArgumentError(
            f"steps must be a non-empty list of percentages (e.g. 5,25,50,100), got {steps!r}"
        )
    out: list[int] = []
    for s in steps:
        if isinstance(s, bool) or not isinstance(s, int) or not 1 <= s <= 100:
            raise InvalidArgumentError(
                f"steps must be whole percentages from 1 to 100, got {s!r} in {list(steps)}"
            )
        if out and s <= out[-1]:
            raise InvalidArgumentError(
                f"steps must increase strictly (e.g. 5,25,50,100), got {list(steps)}"
            )
        out.append(s)
    if out[-1] != 100:
        raise InvalidArgumentError(
            f"steps must end at 100 (the step after which production moves to the candidate), "
            f"got {list(steps)}"
        )
    return tuple(out)


def _positive(what: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v <= 0:
        raise InvalidArgumentError(f"{what} must be a positive number of seconds, got {v!r}")
    return float(v)


def start(
    registry: Registry,
    model: str,
    candidate: int,
    *,
    steps: Sequence[int] = DEFAULT_STEPS,
    dwell_s: float = 300.0,
    step_timeout_s: float | None = None,
    thresholds: Thresholds | None = None,
    gates: str | Sequence[str] | None = None,
    reason: str = "",
) -> Rollout:
    """Record a rollout of version `candidate` of `model` against the version `production`
    points at now, at its first step: every server following the model sends `steps[0]` % of
    its traffic to the candidate from its next poll. `step_timeout_s` (default 10 x dwell)
    bounds a step that sees too few requests to be judged; `gates` are promotion gates the
    candidate must pass first (e.g. "metrics.auc >= 0.9": GateFailedError naming the actual
    value). Refused: an unknown model or version, a candidate that is production already, a
    model without `production`, a candidate whose artifact fails its digest (IntegrityError),
    invalid steps, and a second rollout while one is active (ConflictError naming it)."""
    steps = validate_steps(steps)
    dwell = _positive("dwell_s", dwell_s)
    timeout = 10 * dwell if step_timeout_s is None else _positive("step_timeout_s", step_timeout_s)
    if timeout < dwell:
        raise InvalidArgumentError(
            f"step_timeout_s ({timeout:g}) must be at least dwell_s ({dwell:g})"
        )
    if isinstance(candidate, bool) or not isinstance(candidate, int):
        raise InvalidArgumentError(f"candidate must be a version number, got {candidate!r}")
    limits = thresholds if thresholds is not None else Thresholds()
    # ModelNotFoundError naming the versions there are; IntegrityError for a damaged artifact
    # (found now, not by every server refusing to load it).
    mv = registry.open(model, candidate)
    if mv.status != "active":
        raise ConflictError(f"{model} version {candidate} is {mv.status}; it cannot be rolled out")
    if gates:
        check_gates(
            mv, [gates] if isinstance(gates, str) else list(gates), registry.get_model(model)
        )
    now = time.time()
    actor = _actor()
    with registry.db.tx(write=True) as tx:
        model_id = registry.model_id_in(tx, model, lock=True)
        baseline = tx.scalar(
            "SELECT version FROM aliases WHERE model_id = ? AND alias = ?", (model_id, PRODUCTION)
        )
        if baseline is None:
            raise InvalidArgumentError(
                f"model {model!r} has no {PRODUCTION!r} alias to roll out against; promote a "
                f"version first (aiarch models promote {model} VERSION)"
            )
        baseline = int(baseline)
        if baseline == candidate:
            raise InvalidArgumentError(
                f"{model} version {candidate} is {PRODUCTION} already; roll out another version"
            )
        running = tx.one(
            f"SELECT id, candidate, weight, state FROM rollouts WHERE model_id = ? AND {_ACTIVE_SQL}",
            (model_id,),
        )
        if running is not None:
            raise ConflictError(
                f"a rollout of {model!r} is already {running[3]} (#{running[0]}: version "
                f"{running[1]} at {running[2]} %); abort it first (aiarch rollout abort {model})"
            )
        rollout_id = tx.scalar(
            "INSERT INTO rollouts (model_id, candidate, baseline, steps, dwell_s, step_timeout_s, "
            "thresholds, step, weight, state, reason, created_by, created_at, updated_at, "
            "step_started_at) VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?, 'running', ?, ?, ?, ?, ?) "
            "RETURNING id",
            (
                model_id,
                candidate,
                baseline,
                json.dumps(list(steps)),
                dwell,
                timeout,
                json.dumps(asdict(limits)),
                steps[0],
                reason,
                actor,
                now,
                now,
                now,
            ),
        )
        _event(tx, int(rollout_id), 0, steps[0], "start", reason, {}, actor, now)
    return _reread(registry, int(rollout_id))


def _event(
    tx: Any,
    rollout_id: int,
    step: int,
    weight: int,
    decision: str,
    reason: str,
    arms: Mapping[str, Any],
    actor: str,
    at: float,
) -> None:
    tx.execute(
        "INSERT INTO rollout_events (rollout_id, step, weight, decision, reason, arms, actor, at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (rollout_id, step, weight, decision, reason, json.dumps(arms, sort_keys=True), actor, at),
    )


def _reread(registry: Registry, rollout_id: int) -> Rollout:
    """The rollout as stored now, right after this process wrote it."""
    got = get(registry, rollout_id)
    assert got is not None
    return got


def get(registry: Registry, rollout_id: int) -> Rollout | None:
    row = registry.db.query_one(
        f"SELECT {_COLUMNS} FROM rollouts r JOIN models m ON m.id = r.model_id WHERE r.id = ?",
        (rollout_id,),
    )
    return None if row is None else _row(row)


def active(registry: Registry, model: str) -> Rollout | None:
    """The running or paused rollout of `model`, or None."""
    row = registry.db.query_one(
        f"SELECT {_COLUMNS} FROM rollouts r JOIN models m ON m.id = r.model_id "
        f"WHERE m.name = ? AND r.{_ACTIVE_SQL}",
        (model,),
    )
    return None if row is None else _row(row)


def latest(registry: Registry, model: str) -> Rollout | None:
    """The most recent rollout of `model` (active or finished), or None. ModelNotFoundError
    for an unknown model."""
    with registry.db.tx() as tx:
        model_id = registry.model_id_in(tx, model)
        row = tx.one(
            f"SELECT {_COLUMNS} FROM rollouts r JOIN models m ON m.id = r.model_id "
            "WHERE r.model_id = ? ORDER BY r.id DESC LIMIT 1",
            (model_id,),
        )
    return None if row is None else _row(row)


def events(registry: Registry, rollout_id: int) -> list[RolloutEvent]:
    """Every decision of a rollout, oldest first."""
    with registry.db.tx() as tx:
        rows = tx.all(
            "SELECT step, weight, decision, reason, arms, actor, at, id FROM rollout_events "
            "WHERE rollout_id = ? ORDER BY id",
            (rollout_id,),
        )
    return [
        RolloutEvent(
            step=int(r[0]),
            weight=int(r[1]),
            decision=r[2],
            reason=r[3],
            arms=json.loads(r[4]),
            actor=r[5],
            at=float(r[6]),
            id=int(r[7]),
        )
        for r in rows
    ]


def serving_split(registry: Registry, model: str) -> tuple[int, int, int] | None:
    """(rollout id, candidate version, candidate weight %) of the active rollout of `model`,
    or None: what a server polls next to the aliases. One indexed read."""
    row = registry.db.query_one(SERVING_SPLIT_SQL, (model,))
    return None if row is None else (int(row[0]), int(row[1]), int(row[2]))


# -- an operator's steering (no lease needed) -------------------------------------------------
def _require_active(tx: Any, registry: Registry, model: str) -> tuple[int, Rollout]:
    model_id = registry.model_id_in(tx, model, lock=True)
    row = tx.one(
        f"SELECT {_COLUMNS} FROM rollouts r JOIN models m ON m.id = r.model_id "
        f"WHERE r.model_id = ? AND r.{_ACTIVE_SQL}",
        (model_id,),
    )
    if row is None:
        raise NotFoundError(
            f"no active rollout of {model!r} (start one with aiarch rollout start {model} VERSION)"
        )
    return model_id, _row(row)


def _set_state(
    registry: Registry,
    model: str,
    *,
    want: tuple[str, ...],
    state: str,
    decision: str,
    reason: str,
    weight_zero: bool = False,
    restart_dwell: bool = False,
) -> Rollout:
    now = time.time()
    actor = _actor()
    with registry.db.tx(write=True) as tx:
        _, ro = _require_active(tx, registry, model)
        if ro.state not in want:
            raise ConflictError(
                f"the rollout of {model!r} (#{ro.id}) is {ro.state}; {decision} needs it "
                f"{' or '.join(want)}"
            )
        weight = 0 if weight_zero else ro.weight
        tx.execute(
            "UPDATE rollouts SET state = ?, weight = ?, reason = ?, updated_at = ?, "
            "step_started_at = ? WHERE id = ?",
            (state, weight, reason, now, now if restart_dwell else ro.step_started_at, ro.id),
        )
        _event(tx, ro.id, ro.step, weight, decision, reason, {}, actor, now)
    return _reread(registry, ro.id)


def pause(registry: Registry, model: str, reason: str = "") -> Rollout:
    """Hold the active rollout at its step: servers keep the weight, the controller keeps
    watching for breaches but does not advance. NotFoundError when none is active."""
    return _set_state(
        registry,
        model,
        want=("running",),
        state="paused",
        decision="pause",
        reason=reason or "paused by an operator",
    )


def resume(registry: Registry, model: str, reason: str = "") -> Rollout:
    """Let a paused rollout go on; its step's dwell starts again from now."""
    return _set_state(
        registry,
        model,
        want=("paused",),
        state="running",
        decision="resume",
        reason=reason or "resumed by an operator",
        restart_dwell=True,
    )


def abort(registry: Registry, model: str, reason: str = "") -> Rollout:
    """End the active rollout now: candidate weight 0, production untouched."""
    return _set_state(
        registry,
        model,
        want=ACTIVE_STATES,
        state="aborted",
        decision="abort",
        reason=reason or "aborted by an operator",
        weight_zero=True,
    )


# -- a controller's steps (hold only under its lease) ---------------------------------------
def acquire_lease(registry: Registry, rollout_id: int, owner: str, lease_s: float) -> Rollout:
    """Take (or renew) the controller lease of a rollout by compare-and-swap: succeeds when
    nobody holds it, `owner` does, or the holder's lease expired. LeaseHeldError naming the
    holder otherwise; NotFoundError when the rollout is not active any more."""
    now = time.time()
    with registry.db.tx(write=True) as tx:
        tx.execute(
            "UPDATE rollouts SET lease_owner = ?, lease_expires_at = ? WHERE id = ? "
            f"AND {_ACTIVE_SQL} AND (lease_owner IS NULL OR lease_owner = ? "
            "OR lease_expires_at < ?)",
            (owner, now + lease_s, rollout_id, owner, now),
        )
        won = tx.rowcount == 1
    ro = get(registry, rollout_id)
    if ro is None or not ro.active:
        raise NotFoundError(
            f"rollout #{rollout_id} is {'gone' if ro is None else ro.state}; nothing to control"
        )
    if not won:
        left = (ro.lease_expires_at or now) - now
        raise LeaseHeldError(
            f"the rollout of {ro.model!r} (#{ro.id}) is controlled by {ro.lease_owner} "
            f"(lease valid for {max(left, 0.0):.1f} s more); not starting a second controller"
        )
    return ro


def renew_lease(registry: Registry, rollout_id: int, owner: str, lease_s: float) -> Rollout:
    """Extend this controller's lease and re-read the rollout (in any state).
    LeaseLostError when another controller took it over."""
    now = time.time()
    with registry.db.tx(write=True) as tx:
        tx.execute(
            "UPDATE rollouts SET lease_expires_at = ? WHERE id = ? AND lease_owner = ?",
            (now + lease_s, rollout_id, owner),
        )
        held = tx.rowcount == 1
    ro = get(registry, rollout_id)
    assert ro is not None
    if not held:
        raise LeaseLostError(
            f"the lease of rollout #{rollout_id} of {ro.model!r} passed to {ro.lease_owner}; "
            "this controller stops"
        )
    return ro


def release_lease(registry: Registry, rollout_id: int, owner: str) -> None:
    with registry.db.tx(write=True) as tx:
        tx.execute(
            "UPDATE rollouts SET lease_owner = NULL, lease_expires_at = NULL "
            "WHERE id = ? AND lease_owner = ?",
            (rollout_id, owner),
        )


def _controlled(tx: Any, ro: Rollout, owner: str, states: tuple[str, ...]) -> None:
    """Raise unless the row is still at `ro`'s step, in one of `states`, under `owner`."""
    row = tx.one(
        "SELECT state, step, lease_owner FROM rollouts WHERE id = ?"
        + (" FOR UPDATE" if tx.postgres else ""),
        (ro.id,),
    )
    if row is None or row[2] != owner:
        raise LeaseLostError(
            f"rollout #{ro.id} is no longer controlled by {owner} (now: {row and row[2]})"
        )
    if row[0] not in states or int(row[1]) != ro.step:
        raise ConflictError(
            f"rollout #{ro.id} changed meanwhile (now {row[0]} at step {int(row[1]) + 1}); "
            "re-read it"
        )


def advance(
    registry: Registry, ro: Rollout, owner: str, arms: Mapping[str, Any], reason: str
) -> Rollout:
    """Move a running rollout to its next step (not past the last: see `complete`)."""
    if ro.last_step:
        raise InvalidArgumentError(f"rollout #{ro.id} is at its last step; complete it")
    now = time.time()
    nxt = ro.step + 1
    weight = ro.steps[nxt]
    with registry.db.tx(write=True) as tx:
        _controlled(tx, ro, owner, ("running",))
        tx.execute(
            "UPDATE rollouts SET step = ?, weight = ?, reason = ?, updated_at = ?, "
            "step_started_at = ? WHERE id = ?",
            (nxt, weight, reason, now, now, ro.id),
        )
        _event(tx, ro.id, ro.step, ro.weight, "advance", reason, arms, owner, now)
    return _reread(registry, ro.id)


def complete(
    registry: Registry, ro: Rollout, owner: str, arms: Mapping[str, Any], reason: str
) -> Rollout:
    """Point `production` at the candidate and mark the rollout completed, in one
    transaction. ConflictError (and nothing changed) if production moved since the start."""
    now = time.time()
    with registry.db.tx(write=True) as tx:
        model_id = registry.model_id_in(tx, ro.model, lock=True)
        _controlled(tx, ro, owner, ("running",))
        registry.move_alias_in(
            tx,
            model_id,
            ro.model,
            PRODUCTION,
            ro.candidate,
            expected_current=ro.baseline,
            reason=f"rollout #{ro.id} completed: {reason}",
            action="promote",
        )
        tx.execute(
            "UPDATE rollouts SET state = 'completed', reason = ?, updated_at = ? WHERE id = ?",
            (reason, now, ro.id),
        )
        _event(tx, ro.id, ro.step, ro.weight, "complete", reason, arms, owner, now)
    return _reread(registry, ro.id)


def _halt(
    registry: Registry,
    ro: Rollout,
    owner: str,
    allowed: tuple[str, ...],
    state: str,
    decision: str,
    reason: str,
    arms: Mapping[str, Any],
    *,
    zero_weight: bool,
) -> Rollout:
    """The controller stops the rollout in `state` (the candidate's weight set to 0 when
    `zero_weight`), recording the decision and why, in one transaction."""
    now = time.time()
    weight = ", weight = 0" if zero_weight else ""
    with registry.db.tx(write=True) as tx:
        _controlled(tx, ro, owner, allowed)
        tx.execute(
            f"UPDATE rollouts SET state = ?{weight}, reason = ?, updated_at = ? WHERE id = ?",
            (state, reason, now, ro.id),
        )
        _event(tx, ro.id, ro.step, ro.weight, decision, reason, arms, owner, now)
    return _reread(registry, ro.id)


def roll_back(
    registry: Registry, ro: Rollout, owner: str, arms: Mapping[str, Any], reason: str
) -> Rollout:
    """End the rollout with candidate weight 0 (production never moved), recording why."""
    return _halt(
        registry,
        ro,
        owner,
        ACTIVE_STATES,
        "rolled_back",
        "rollback",
        reason,
        arms,
        zero_weight=True,
    )


def hold(
    registry: Registry, ro: Rollout, owner: str, arms: Mapping[str, Any], reason: str
) -> Rollout:
    """Pause a running rollout that could not be judged in its step's time (too few
    requests); it keeps its weight until an operator resumes or aborts it."""
    return _halt(
        registry, ro, owner, ("running",), "paused", "hold", reason, arms, zero_weight=False
    )


def stop_outside_change(registry: Registry, ro: Rollout, owner: str, reason: str) -> Rollout:
    """Abort a rollout whose baseline no longer holds production (someone moved it)."""
    return _halt(
        registry, ro, owner, ACTIVE_STATES, "aborted", "abort", reason, {}, zero_weight=True
    )
