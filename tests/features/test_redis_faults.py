"""A Redis that is down or stalled: lookups fail fast with a clear UnavailableError, or serve
defaults with status UNAVAILABLE when so configured, counted; they recover when Redis does."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from aiarch.errors import UnavailableError
from aiarch.features import PRESENT, UNAVAILABLE, FeatureStore

from .conftest import CARD, T0, TXN, RedisServer

pytestmark = pytest.mark.redis


def bounded(fn: Callable[[], Any], limit_s: float = 30.0) -> Any:
    """Run fn in a thread; fail (instead of hanging the suite) if it has not returned."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:
            box["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(limit_s)
    assert not t.is_alive(), f"call still blocked after {limit_s}s"
    if "error" in box:
        raise box["error"]
    return box["value"]


def seeded(server: RedisServer, make_store: Callable[..., FeatureStore], **kw: Any) -> FeatureStore:
    s = make_store(server.url, timeout_s=0.05, **kw)
    s.apply(CARD, TXN)
    s.write(
        "txn",
        {
            "card": [1],
            "event_timestamp": [T0],
            "amount_7d": [4.0],
            "count_1h": [2],
            "risky": [False],
        },
    )
    return s


def test_paused_redis_times_out_with_a_clear_error(
    own_redis: RedisServer, make_store: Callable[..., FeatureStore]
) -> None:
    s = seeded(own_redis, make_store)
    plan = s.plan(["txn:amount_7d"])
    own_redis.pause()
    try:
        with pytest.raises(UnavailableError, match=rf"{own_redis.url} timed out \(timeout 50 ms\)"):
            bounded(lambda: plan.get([1]))
        assert s.counters.failures == 1
    finally:
        own_redis.resume()
    values, status = bounded(lambda: plan.get([1]))  # recovers on the next call
    assert status[0] == PRESENT and values[0, 0] == 4.0


# The asyncio client is built with redis-py's asyncio Retry: a sync one draws a UserWarning.
@pytest.mark.filterwarnings("error::UserWarning")
def test_stopped_redis_serves_defaults_when_configured(
    own_redis: RedisServer, make_store: Callable[..., FeatureStore]
) -> None:
    s = seeded(own_redis, make_store, on_unavailable="default")
    plan = s.plan(["txn:amount_7d", "txn:count_1h"])
    own_redis.stop()
    values, status = bounded(lambda: plan.get([1, 2]))
    np.testing.assert_array_equal(values, [[0, -1], [0, -1]])
    np.testing.assert_array_equal(status, [UNAVAILABLE, UNAVAILABLE])
    assert s.counters.fallbacks == 1 and s.counters.failures == 0
    strict = s.plan(["txn:amount_7d"], on_unavailable="error")
    with pytest.raises(UnavailableError, match="is unreachable"):
        bounded(lambda: strict.get([1]))
    import asyncio

    values, status = bounded(lambda: asyncio.run(plan.get_async([1])))
    assert status.tolist() == [UNAVAILABLE]
    assert s.counters.fallbacks == 2
