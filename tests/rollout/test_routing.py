"""The split a server applies for a rollout: weights, and keys that stay on the candidate."""

from __future__ import annotations

from aiarch.serving.config import ModelConfig
from aiarch.serving.routing import Arm, Route


def _route() -> tuple[Route, Arm, Arm]:
    production = Arm("production", 100, entry="v1", version=1)
    candidate = Arm("candidate", 0, entry="v2", version=2)
    route = Route(
        "fraud", "fraud", ModelConfig(name="fraud", source="fraud@production"), [production]
    )
    return route, production, candidate


def _on_candidate(route: Route, keys: list[bytes]) -> set[bytes]:
    return {k for k in keys if route.pick(k, None) == "v2"}


def test_a_key_on_the_candidate_stays_there_as_the_weight_grows() -> None:
    route, production, candidate = _route()
    keys = [f"card-{i}".encode() for i in range(2000)]
    assert _on_candidate(route, keys) == set()
    previous: set[bytes] = set()
    for weight in (5, 25, 50, 100):
        production.weight, candidate.weight = 100 - weight, weight
        route.set_arms([production, candidate])
        now = _on_candidate(route, keys)
        assert previous <= now
        assert abs(len(now) / len(keys) - weight / 100) < 0.05, (weight, len(now))
        previous = now
    assert previous == set(keys)  # production's weight 0 gets nothing
    production.weight = 100
    route.set_arms([production])
    assert _on_candidate(route, keys) == set()
