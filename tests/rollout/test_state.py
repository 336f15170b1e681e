"""Rollout state in the registry (SQLite and PostgreSQL): start and its refusals, the split
servers read, operator steering, the controller lease and completion."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from aiarch.errors import InvalidArgumentError, NotFoundError
from aiarch.registry import (
    ConflictError,
    GateFailedError,
    IntegrityError,
    ModelNotFoundError,
    Registry,
)
from aiarch.rollout import LeaseHeldError, LeaseLostError, Rollout, Thresholds, state

from .conftest import write_model


@pytest.fixture
def fraud(reg: Registry, tmp_path: Path) -> Registry:
    """Versions 1 (production), 2 and 3 of `fraud`."""
    for factor in (1.0, 2.0, 3.0):
        reg.register("fraud", write_model(tmp_path / "src", factor))
    reg.promote("fraud", 1)
    return reg


def test_start_records_the_first_step_that_servers_read(fraud: Registry) -> None:
    ro = Rollout.start(fraud, "fraud", 2, dwell_s=0.5, reason="retrained on May data")
    assert (ro.candidate, ro.baseline, ro.steps, ro.step, ro.weight, ro.state) == (
        2,
        1,
        (5, 25, 50, 100),
        0,
        5,
        "running",
    )
    assert ro.step_timeout_s == 5.0  # 10 x dwell by default
    assert state.serving_split(fraud, "fraud") == (ro.id, 2, 5)
    assert Rollout.active_for(fraud, "fraud") == ro == Rollout.latest_for(fraud, "fraud")
    [ev] = ro.events(fraud)
    assert (ev.decision, ev.weight, ev.reason) == ("start", 5, "retrained on May data")
    assert fraud.alias_version("fraud", "production") == 1  # production untouched


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        ((25, 5, 100), "increase strictly"),
        ((5, 5, 100), "increase strictly"),
        ((5, 50, 120), "from 1 to 100"),
        ((0, 50, 100), "from 1 to 100"),
        ((5, 50), "must end at 100"),
        ((), "non-empty"),
        ((5.5, 100), "whole percentages"),
    ],
)
def test_invalid_steps_are_refused_naming_the_rule(
    fraud: Registry, steps: tuple[int, ...], message: str
) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        Rollout.start(fraud, "fraud", 2, steps=steps)
    assert state.active(fraud, "fraud") is None


def test_bad_starts_are_refused_with_what_exists(fraud: Registry, tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match=r"no model named 'nope'.*fraud"):
        Rollout.start(fraud, "nope", 2)
    with pytest.raises(ModelNotFoundError, match="no version 9; versions: 1-3"):
        Rollout.start(fraud, "fraud", 9)
    with pytest.raises(InvalidArgumentError, match="version 1 is production already"):
        Rollout.start(fraud, "fraud", 1)
    with pytest.raises(InvalidArgumentError, match="dwell_s must be a positive"):
        Rollout.start(fraud, "fraud", 2, dwell_s=0)
    with pytest.raises(InvalidArgumentError, match="at least dwell_s"):
        Rollout.start(fraud, "fraud", 2, dwell_s=10, step_timeout_s=5)
    with pytest.raises(InvalidArgumentError, match="min_requests"):
        Rollout.start(fraud, "fraud", 2, thresholds=Thresholds(min_requests=0))
    fraud.register("solo", write_model(tmp_path / "src", 4.0))
    with pytest.raises(InvalidArgumentError, match="no 'production' alias"):
        Rollout.start(fraud, "solo", 1)
    assert state.active(fraud, "fraud") is None


def test_a_candidate_failing_its_gates_or_its_digest_is_not_rolled_out(
    reg: Registry, tmp_path: Path
) -> None:
    reg.register("fraud", write_model(tmp_path / "src", 1.0), metrics={"auc": 0.9})
    weak = reg.register("fraud", write_model(tmp_path / "src", 2.0), metrics={"auc": 0.7})
    reg.promote("fraud", 1)
    with pytest.raises(GateFailedError, match=r"metrics\.auc >= 0\.85 \(actual: 0\.7\)"):
        Rollout.start(reg, "fraud", 2, gates="metrics.auc >= 0.85")
    assert Rollout.start(reg, "fraud", 2, gates=["metrics.auc >= 0.5"]).candidate == 2
    state.abort(reg, "fraud")
    os.chmod(weak.artifact_path, 0o644)
    weak.artifact_path.write_text("tampered")
    with pytest.raises(IntegrityError, match="models:/fraud/2 cannot be loaded"):
        Rollout.start(reg, "fraud", 2)
    assert state.active(reg, "fraud") is None


def test_a_second_start_while_one_is_active_is_refused(fraud: Registry) -> None:
    first = Rollout.start(fraud, "fraud", 2)
    with pytest.raises(ConflictError, match=rf"already running \(#{first.id}: version 2 at 5 %\)"):
        Rollout.start(fraud, "fraud", 3)
    state.pause(fraud, "fraud")
    with pytest.raises(ConflictError, match="already paused"):
        Rollout.start(fraud, "fraud", 3)
    state.abort(fraud, "fraud")
    assert Rollout.start(fraud, "fraud", 3).candidate == 3  # allowed once it ended


def test_concurrent_starts_one_wins(make_registry: Callable[[], Registry], fraud: Registry) -> None:
    outcomes: list[object] = []
    barrier = threading.Barrier(2)

    def go(candidate: int) -> None:
        reg = make_registry()
        barrier.wait()
        try:
            outcomes.append(Rollout.start(reg, "fraud", candidate))
        except ConflictError as e:
            outcomes.append(e)

    threads = [threading.Thread(target=go, args=(c,)) for c in (2, 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(type(o).__name__ for o in outcomes) == ["ConflictError", "Rollout"]


def test_pause_resume_abort_and_their_refusals(fraud: Registry) -> None:
    for steer in (state.pause, state.resume, state.abort):
        with pytest.raises(NotFoundError, match="no active rollout of 'fraud'"):
            steer(fraud, "fraud")
    ro = Rollout.start(fraud, "fraud", 2)
    with pytest.raises(ConflictError, match="is running; resume needs it paused"):
        state.resume(fraud, "fraud")
    paused = state.pause(fraud, "fraud", "holiday traffic")
    assert (paused.state, paused.weight) == ("paused", 5)
    assert state.serving_split(fraud, "fraud") == (ro.id, 2, 5)  # servers keep the split
    with pytest.raises(ConflictError, match="is paused; pause needs it running"):
        state.pause(fraud, "fraud")
    resumed = state.resume(fraud, "fraud")
    assert resumed.state == "running" and resumed.step_started_at >= paused.step_started_at
    aborted = state.abort(fraud, "fraud", "wrong features")
    assert (aborted.state, aborted.weight, aborted.reason) == ("aborted", 0, "wrong features")
    assert state.serving_split(fraud, "fraud") is None
    assert state.latest(fraud, "fraud") == aborted
    assert [e.decision for e in ro.events(fraud)] == ["start", "pause", "resume", "abort"]
    assert fraud.alias_version("fraud", "production") == 1


def test_two_controllers_race_for_the_lease_and_one_wins(
    make_registry: Callable[[], Registry], fraud: Registry
) -> None:
    ro = Rollout.start(fraud, "fraud", 2)
    outcomes: dict[str, object] = {}
    barrier = threading.Barrier(2)

    def take(owner: str) -> None:
        reg = make_registry()
        barrier.wait()
        try:
            outcomes[owner] = state.acquire_lease(reg, ro.id, owner, 30.0)
        except LeaseHeldError as e:
            outcomes[owner] = e

    threads = [threading.Thread(target=take, args=(o,)) for o in ("ctl-a", "ctl-b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    winners = [o for o, r in outcomes.items() if isinstance(r, Rollout)]
    losers = [r for r in outcomes.values() if isinstance(r, LeaseHeldError)]
    assert len(winners) == 1 and len(losers) == 1
    assert f"controlled by {winners[0]}" in str(losers[0])
    assert state.active(fraud, "fraud").lease_owner == winners[0]  # type: ignore[union-attr]


def test_an_expired_lease_is_taken_over_and_the_old_holder_stops(fraud: Registry) -> None:
    ro = Rollout.start(fraud, "fraud", 2)
    state.acquire_lease(fraud, ro.id, "old", 0.05)
    time.sleep(0.1)  # the holder stalled past its lease
    state.acquire_lease(fraud, ro.id, "new", 30.0)
    with pytest.raises(LeaseLostError, match="passed to new"):
        state.renew_lease(fraud, ro.id, "old", 30.0)
    with pytest.raises(LeaseLostError):
        state.advance(fraud, ro, "old", {}, "late decision")
    assert state.active(fraud, "fraud").step == 0  # type: ignore[union-attr]


def test_steps_advance_then_completion_moves_production_in_one_transaction(
    fraud: Registry,
) -> None:
    ro = Rollout.start(fraud, "fraud", 2, steps=(10, 100))
    ro = state.acquire_lease(fraud, ro.id, "ctl", 30.0)
    ro = state.advance(fraud, ro, "ctl", {"candidate": {"requests": 7}}, "no breach")
    assert (ro.step, ro.weight) == (1, 100)
    assert state.serving_split(fraud, "fraud") == (ro.id, 2, 100)
    done = state.complete(fraud, ro, "ctl", {}, "no breach at 100 %")
    assert done.state == "completed" and state.serving_split(fraud, "fraud") is None
    assert fraud.alias_version("fraud", "production") == 2
    last = fraud.history("fraud", "production")[-1]
    assert (last.action, last.from_version, last.to_version) == ("promote", 1, 2)
    assert f"rollout #{ro.id} completed" in last.reason
    assert [e.decision for e in ro.events(fraud)] == ["start", "advance", "complete"]
    assert ro.events(fraud)[1].arms == {"candidate": {"requests": 7}}
    fraud.rollback("fraud")  # the usual rollback still walks the history back
    assert fraud.alias_version("fraud", "production") == 1


def test_completion_is_refused_when_production_moved_meanwhile(fraud: Registry) -> None:
    ro = Rollout.start(fraud, "fraud", 2, steps=(100,))
    ro = state.acquire_lease(fraud, ro.id, "ctl", 30.0)
    fraud.promote("fraud", 3, reason="hotfix")
    with pytest.raises(ConflictError, match="points at version 3, expected version 1"):
        state.complete(fraud, ro, "ctl", {}, "done")
    assert state.active(fraud, "fraud").state == "running"  # type: ignore[union-attr]
    assert fraud.alias_version("fraud", "production") == 3


def test_an_operator_pause_wins_over_a_stale_controller_decision(fraud: Registry) -> None:
    ro = state.acquire_lease(fraud, Rollout.start(fraud, "fraud", 2).id, "ctl", 30.0)
    state.pause(fraud, "fraud")
    with pytest.raises(ConflictError, match="changed meanwhile"):
        state.advance(fraud, ro, "ctl", {}, "stale")
    rolled = state.roll_back(fraud, ro, "ctl", {}, "breach while paused")
    assert (rolled.state, rolled.weight) == ("rolled_back", 0)


def test_migration_adds_rollouts_to_an_existing_database(
    registry_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from aiarch.registry import db as registry_db

    # A registry created by a release that knew the first two migrations.
    monkeypatch.setattr(registry_db, "MIGRATIONS", registry_db.MIGRATIONS[:2])
    with Registry(registry_url, home=tmp_path / "home") as old:
        for factor in (1.0, 2.0):
            old.register("fraud", write_model(tmp_path / "src", factor))
        old.promote("fraud", 1)
    monkeypatch.undo()
    with Registry(registry_url, home=tmp_path / "home") as new:
        ro = Rollout.start(new, "fraud", 2)
        assert state.serving_split(new, "fraud") == (ro.id, 2, 5)
        with new.db.tx() as tx:
            applied = [r[0] for r in tx.all("SELECT version FROM schema_migrations ORDER BY 1")]
        assert applied == [m[0] for m in registry_db.MIGRATIONS] and 3 in applied


def test_the_servers_poll_is_one_indexed_probe(tmp_path: Path) -> None:
    with Registry(f"sqlite:///{tmp_path / 'plan.db'}", home=tmp_path / "home") as reg:
        with reg.db.tx() as tx:
            plan = tx.all("EXPLAIN QUERY PLAN " + state.SERVING_SPLIT_SQL, ("fraud",))
    details = [row[-1] for row in plan]
    assert any("rollouts_active (model_id=?)" in d for d in details), details
    assert not any(d.startswith("SCAN") for d in details), details
