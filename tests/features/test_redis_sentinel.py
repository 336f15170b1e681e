"""The online store behind Redis Sentinel (Debian's redis-server as one master, one replica and
three sentinels on loopback ports): the FeatureStore API of `redis://` through the master the
sentinels name, and a master that dies answered with counted defaults within the timeout until
the sentinels promote its replica, then reads and writes on the new master."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable, Iterator

import numpy as np
import pytest

from aiarch.errors import InvalidArgumentError, UnavailableError
from aiarch.features import EXPIRED, MISSING, PRESENT, UNAVAILABLE, FeatureStore
from aiarch.features.online import RedisSentinelBackend
from aiarch.features.redissentinel import TemporaryRedisSentinel

from .conftest import CARD, PROFILE, T0, TXN, Clock, redis_node, running
from .test_redis_cluster import REFS, _expected, _seed
from .test_redis_faults import bounded

pytestmark = pytest.mark.redis

N = 200


@pytest.fixture(scope="module")
def deployment() -> Iterator[TemporaryRedisSentinel]:
    """A deployment shared by the tests that leave every process running."""
    with running(TemporaryRedisSentinel(replicas=1, sentinels=3)) as deployment:
        yield deployment


@pytest.fixture
def own_deployment() -> Iterator[TemporaryRedisSentinel]:
    """A deployment of one test alone (it kills the master)."""
    with running(TemporaryRedisSentinel(replicas=1, sentinels=3)) as deployment:
        yield deployment


def test_lookups_and_writes_go_through_the_sentinels_to_the_master(
    deployment: TemporaryRedisSentinel, make_store: Callable[..., FeatureStore], clock: Clock
) -> None:
    master = deployment.master_port()
    with redis_node(master) as r:
        r.flushall()
    store = make_store(deployment.url, timeout_s=0.5)
    assert isinstance(store.backend, RedisSentinelBackend)
    _seed(store, N)
    plan = store.plan(REFS)
    ids = [0, 1, 2, 3, N + 7]
    values, status = plan.get(ids)
    np.testing.assert_array_equal(values[:4], _expected(ids[:4]))
    np.testing.assert_array_equal(values[4], [0, -1, 0, 7.5])  # defaults
    np.testing.assert_array_equal(status, [PRESENT, MISSING, PRESENT, MISSING, MISSING])

    async def read_async() -> tuple[np.ndarray, np.ndarray]:
        try:
            return await plan.get_async(ids)
        finally:
            assert isinstance(store.backend, RedisSentinelBackend)
            await store.backend.aclose()

    async_values, async_status = asyncio.run(read_async())
    np.testing.assert_array_equal(async_values, values)
    np.testing.assert_array_equal(async_status, status)

    # The packed rows of the single-Redis backend, on the master, copied to the replica.
    with redis_node(master) as r:
        assert r.dbsize() == N + N // 2
        head, _ = store.backend.key_parts(store.view("txn"))
        row = r.get(head + b"5")
        # Event time, then slots: amount_7d and risky take one each, the int64 count_1h two.
        assert row is not None and len(row) == 8 + 4 * 4
        assert int.from_bytes(row[:8], "big", signed=True) == T0
    deployment.wait_replicated()
    replica = next(p for p in deployment.data_ports if p != master)
    with redis_node(replica) as r:
        assert r.dbsize() == N + N // 2

    # The Lua upsert keeps the newer row.
    txn = {"card": [3], "count_1h": [9], "risky": [True]}
    assert store.write("txn", {**txn, "event_timestamp": [T0 - 1], "amount_7d": [-1.0]}) == 0
    assert store.write("txn", {**txn, "event_timestamp": [T0 + 1], "amount_7d": [42.0]}) == 1
    assert plan.get([3])[0][0, 0] == 42.0
    clock.now = T0 + 3601 * 10**9  # past the txn view's TTL
    assert store.plan(["txn:amount_7d"]).get([3])[1][0] == EXPIRED


def test_killing_the_master_serves_counted_defaults_until_the_replica_is_promoted(
    own_deployment: TemporaryRedisSentinel, make_store: Callable[..., FeatureStore]
) -> None:
    s = make_store(own_deployment.url, timeout_s=0.05, on_unavailable="default")
    _seed(s, N)
    own_deployment.wait_replicated()
    plan = s.plan(REFS)
    ids = list(range(30))
    np.testing.assert_array_equal(plan.get(ids)[0], _expected(ids))
    old_master = own_deployment.master_port()
    own_deployment.kill(old_master)

    defaults = np.array([0, -1, 0, 7.5], np.float32)
    unavailable = 0
    deadline = time.monotonic() + 60
    loop = asyncio.new_event_loop()
    while True:
        use_async = unavailable % 2 == 1
        values, status = bounded(
            (lambda: loop.run_until_complete(plan.get_async(ids)))
            if use_async
            else (lambda: plan.get(ids)),
            limit_s=10,
        )
        if not (status == UNAVAILABLE).any():
            break
        # A lookup is answered whole: all from the store, or all defaults while it fails over.
        assert (status == UNAVAILABLE).all(), status
        np.testing.assert_array_equal(values, np.tile(defaults, (len(ids), 1)))
        unavailable += 1
        assert time.monotonic() < deadline, "the sentinels never promoted the replica"
        time.sleep(0.02)
    backend = s.backend
    assert isinstance(backend, RedisSentinelBackend)
    loop.run_until_complete(backend.aclose())
    loop.close()
    np.testing.assert_array_equal(values, _expected(ids))  # the replica had every row
    assert unavailable >= 1  # the dead master was really asked
    assert s.counters.fallbacks == unavailable
    assert s.counters.failures == 0

    new_master = own_deployment.master_port()
    assert new_master != old_master
    written = s.write("profile", {"card": [1], "event_timestamp": [T0 + 1], "age_days": [99.0]})
    assert written == 1
    values, status = plan.get([1, 2])
    np.testing.assert_array_equal(values, [[1, 1, 0, 99.0], _expected([2])[0]])
    assert (status == PRESENT).all()
    with redis_node(new_master) as r:
        head, _ = backend.key_parts(s.view("profile"))
        assert r.exists(head + b"1") == 1


def test_a_password_protected_master_is_reached_with_the_urls_password(
    make_store: Callable[..., FeatureStore],
) -> None:
    # No failover here: a long down-after keeps a loaded machine's slow reply from marking the
    # master down while the test reads through the sentinel.
    with running(
        TemporaryRedisSentinel(replicas=1, sentinels=1, password="s3cr@t", down_after_ms=10_000)
    ) as deployment:
        assert "s3cr%40t@" in deployment.url
        s = make_store(deployment.url, timeout_s=0.5)
        _seed(s, 10)
        values, status = s.plan(REFS).get([0, 1])
        np.testing.assert_array_equal(values, _expected([0, 1]))
        np.testing.assert_array_equal(status, [PRESENT, MISSING])

        wrong = make_store(deployment.url.replace("s3cr%40t", "hunter2"), timeout_s=0.5)
        wrong.apply(CARD, TXN)
        with pytest.raises(UnavailableError) as e:
            bounded(lambda: wrong.plan(["txn:amount_7d"]).get([0]), limit_s=10)
        message = str(e.value)
        assert "hunter2" not in message and "***" in message
        assert "password" in message.lower(), message


def test_sentinel_urls_are_checked(make_store: Callable[..., FeatureStore]) -> None:
    with pytest.raises(InvalidArgumentError, match="names no service") as e:
        make_store("redis+sentinel://:hunter2@127.0.0.1:26379")
    assert "hunter2" not in str(e.value) and "***" in str(e.value)
    with pytest.raises(InvalidArgumentError, match="invalid sentinel 'nohost'"):
        make_store("redis+sentinel://127.0.0.1:26379,nohost/svc")
    with pytest.raises(InvalidArgumentError, match=r"invalid sentinel '127\.0\.0\.1:0'"):
        make_store("redis+sentinel://127.0.0.1:0/svc")
    with pytest.raises(InvalidArgumentError, match=r"SERVICE\[/DB\] was expected") as e:
        make_store("redis+sentinel://u:hunter2@127.0.0.1:26379/svc/zero")
    assert "hunter2" not in str(e.value)
    with pytest.raises(InvalidArgumentError, match=r"SERVICE\[/DB\] was expected"):
        make_store("redis+sentinel://127.0.0.1:26379/svc/1/extra")
    with pytest.raises(InvalidArgumentError, match="takes no query options"):
        make_store("redis+sentinel://127.0.0.1:26379/svc?ssl=true")
    backend = make_store("redis+sentinel://:p%40ss@127.0.0.1:26379,[::1]:26380/svc/3").backend
    assert isinstance(backend, RedisSentinelBackend)
    assert backend.service == "svc"
    assert backend._sentinels == [("127.0.0.1", 26379), ("::1", 26380)]
    assert backend._kwargs["db"] == 3 and backend._kwargs["password"] == "p@ss"


def test_unreachable_sentinels_fail_lookups_fast_with_a_redacted_error(
    make_store: Callable[..., FeatureStore],
) -> None:
    ports = []
    for _ in range(2):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
    hosts = ",".join(f"127.0.0.1:{p}" for p in ports)
    s = make_store(f"redis+sentinel://:hunter2@{hosts}/svc", timeout_s=0.05)
    s.apply(CARD, TXN, PROFILE)
    plan = s.plan(["txn:amount_7d"])
    with pytest.raises(UnavailableError, match="No master found for 'svc'") as e:
        bounded(lambda: plan.get([1]), limit_s=10)
    assert "hunter2" not in str(e.value) and "***" in str(e.value)
    assert s.counters.failures == 1


def test_an_unknown_service_is_unavailable_not_a_hang(
    deployment: TemporaryRedisSentinel, make_store: Callable[..., FeatureStore]
) -> None:
    url = deployment.url.rsplit("/", 1)[0] + "/no-such-service"
    s = make_store(url, timeout_s=0.5)
    s.apply(CARD, TXN)
    with pytest.raises(UnavailableError, match="No master found for 'no-such-service'"):
        bounded(lambda: s.plan(["txn:amount_7d"]).get([1]), limit_s=10)
