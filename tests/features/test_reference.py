"""Differential test: a seeded log of writes, clock moves and lookups applied to the store (each
backend) and to a tiny pure-Python reference of the semantics (newer event time wins, equal
replaces, TTL on read, defaults for missing and expired rows, worst status across views)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from aiarch.features import EXPIRED, MISSING, PRESENT, FeatureStore

from .conftest import CARD, PROFILE, TXN, Clock

S = 10**9


class Reference:
    def __init__(self) -> None:
        self.rows: dict[tuple[str, int], tuple[int, list[float]]] = {}

    def write(self, view: str, key: int, ts: int, values: list[float]) -> bool:
        old = self.rows.get((view, key))
        if old is not None and old[0] > ts:
            return False
        self.rows[(view, key)] = (ts, values)
        return True

    def get(self, key: int, now: int) -> tuple[list[float], int]:
        out: list[float] = []
        worst = PRESENT
        for view, ttl_s, defaults in (
            ("txn", TXN.ttl, [f.default for f in TXN.features]),
            ("profile", PROFILE.ttl, [f.default for f in PROFILE.features]),
        ):
            row = self.rows.get((view, key))
            if row is None:
                status, values = MISSING, defaults
            elif ttl_s > 0 and now - row[0] > ttl_s * S:
                status, values = EXPIRED, defaults
            else:
                status, values = PRESENT, row[1]
            worst = max(worst, status)
            out.extend(values)
        return out, worst


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_store_matches_reference(
    seed: int, backend_url: str, make_store: Callable[..., FeatureStore], clock: Clock
) -> None:
    rng = np.random.default_rng(seed)
    store = make_store(backend_url)
    store.apply(CARD, TXN, PROFILE)
    plan = store.plan(["txn:*", "profile:*"])
    ref = Reference()
    keys = 12
    seen: set[int] = set()
    for step in range(150):
        op = rng.random()
        if op < 0.5:
            view = "txn" if rng.random() < 0.6 else "profile"
            n = int(rng.integers(1, 4))
            ks = rng.choice(keys, size=n, replace=False)
            ts = clock.now + int(rng.integers(-7200, 60)) * S
            if view == "txn":
                vals = rng.integers(-5, 5, size=(n, 3)).astype(float)
                data = {
                    "card": ks,
                    "event_timestamp": np.full(n, ts),
                    "amount_7d": vals[:, 0],
                    "count_1h": vals[:, 1],
                    "risky": vals[:, 2],
                }
            else:
                vals = rng.integers(0, 100, size=(n, 1)).astype(float)
                data = {"card": ks, "event_timestamp": np.full(n, ts), "age_days": vals[:, 0]}
            applied = store.write(view, data)
            expected = sum(ref.write(view, int(k), ts, list(v)) for k, v in zip(ks, vals))
            assert applied == expected, (seed, step)
        elif op < 0.6:
            clock.now += int(rng.integers(0, 1800)) * S
        else:
            ids = rng.integers(0, keys, size=int(rng.integers(1, 6)))
            values, status = plan.get(ids)
            for i, k in enumerate(ids):
                want, want_status = ref.get(int(k), clock.now)
                assert values[i].tolist() == want and status[i] == want_status, (seed, step, k)
                seen.add(want_status)
    assert seen == {PRESENT, EXPIRED, MISSING}  # the log reached every case
