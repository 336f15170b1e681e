"""The online store on a real Redis Cluster (3 masters + 3 replicas of Debian's redis-server on
loopback ports): the same FeatureStore API, one slot per entity, redirections followed, and a
master that dies or stalls answered with counted defaults within the timeout, never a hang."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable, Iterator

import numpy as np
import pytest

from aiarch.errors import InvalidArgumentError, UnavailableError
from aiarch.features import EXPIRED, MISSING, PRESENT, UNAVAILABLE, FeatureStore
from aiarch.features.online import RedisClusterBackend
from aiarch.features.rediscluster import TemporaryRedisCluster

from .conftest import CARD, PROFILE, SESSION, T0, TXN, USER, Clock, redis_node, running
from .test_redis_faults import bounded

pytestmark = pytest.mark.redis

N = 200


@pytest.fixture(scope="module")
def cluster() -> Iterator[TemporaryRedisCluster]:
    """A cluster shared by the tests that leave every node running."""
    with running(TemporaryRedisCluster(masters=3, replicas=1)) as cluster:
        yield cluster


@pytest.fixture
def own_cluster() -> Iterator[TemporaryRedisCluster]:
    """A cluster of one test alone (it kills a master)."""
    with running(TemporaryRedisCluster(masters=3, replicas=1)) as cluster:
        yield cluster


def _flush(cluster: TemporaryRedisCluster) -> None:
    for port in cluster.roles()["master"]:
        with redis_node(port) as r:
            r.flushall()


def _seed(store: FeatureStore, n: int = N) -> None:
    store.apply(CARD, TXN, PROFILE)
    ids = list(range(n))
    store.write(
        "txn",
        {
            "card": ids,
            "event_timestamp": [T0] * n,
            "amount_7d": [float(i) for i in ids],
            "count_1h": [i % 5 for i in ids],
            "risky": [i % 2 == 0 for i in ids],
        },
    )
    even = ids[::2]
    store.write(
        "profile",
        {"card": even, "event_timestamp": [T0] * len(even), "age_days": [i + 0.5 for i in even]},
    )


def _expected(ids: list[int]) -> np.ndarray:
    return np.array(
        [[i, i % 5, i % 2 == 0, i + 0.5 if i % 2 == 0 else 7.5] for i in ids], np.float32
    )


REFS = ["txn:amount_7d", "txn:count_1h", "txn:risky", "profile:age_days"]


@pytest.fixture
def store(cluster: TemporaryRedisCluster, make_store: Callable[..., FeatureStore]) -> FeatureStore:
    _flush(cluster)
    s = make_store(cluster.url, timeout_s=0.5)
    _seed(s)
    return s


def test_lookups_and_writes_match_the_single_redis_semantics(
    store: FeatureStore, clock: Clock
) -> None:
    plan = store.plan(REFS)
    ids = [0, 1, 2, 3, N + 7]
    values, status = plan.get(ids)
    np.testing.assert_array_equal(values[:4], _expected(ids[:4]))
    np.testing.assert_array_equal(values[4], [0, -1, 0, 7.5])  # defaults
    # Odd cards have no profile row: the worst status of a row's views is reported.
    np.testing.assert_array_equal(status, [PRESENT, MISSING, PRESENT, MISSING, MISSING])

    async def read_async() -> tuple[np.ndarray, np.ndarray]:
        try:
            return await plan.get_async(ids)
        finally:
            assert isinstance(store.backend, RedisClusterBackend)
            await store.backend.aclose()

    async_values, async_status = asyncio.run(read_async())
    np.testing.assert_array_equal(async_values, values)
    np.testing.assert_array_equal(async_status, status)

    # An older row never overwrites a newer one; a newer one does.
    txn = {"card": [3], "count_1h": [9], "risky": [True]}
    assert store.write("txn", {**txn, "event_timestamp": [T0 - 1], "amount_7d": [-1.0]}) == 0
    assert store.write("txn", {**txn, "event_timestamp": [T0 + 1], "amount_7d": [42.0]}) == 1
    assert plan.get([2])[0][0, 0] == 2.0
    assert plan.get([3])[0][0, 0] == 42.0
    clock.now = T0 + 3601 * 10**9  # past the txn view's TTL
    assert store.plan(["txn:amount_7d"]).get([3])[1][0] == EXPIRED


def test_string_entities_and_an_empty_id_keep_their_views_on_one_slot(
    cluster: TemporaryRedisCluster, make_store: Callable[..., FeatureStore]
) -> None:
    _flush(cluster)
    s = make_store(cluster.url, timeout_s=0.5)
    s.apply(USER, SESSION)
    users = ["ann", "", "b}o{b", "émile"]
    s.write(
        "session",
        {
            "user": users,
            "event_timestamp": [T0] * 4,
            "clicks": [1.0, 2.0, 3.0, 4.0],
            "dwell_s": [5.0, 6.0, 7.0, 8.0],
        },
    )
    values, status = s.plan(["session:clicks", "session:dwell_s"]).get(users)
    np.testing.assert_array_equal(values, [[1, 5], [2, 6], [3, 7], [4, 8]])
    assert (status == PRESENT).all()


def test_one_entitys_views_share_a_slot_and_entities_spread_over_every_master(
    store: FeatureStore, cluster: TemporaryRedisCluster
) -> None:
    backend = store.backend
    assert isinstance(backend, RedisClusterBackend)
    with redis_node(cluster.ports[0]) as r:
        for entity in (0, 1, 12345):
            keys = [
                head + b"%d" % entity + tail
                for head, tail in (backend.key_parts(store.view(v)) for v in ("txn", "profile"))
            ]
            slots = {int(r.execute_command("CLUSTER", "KEYSLOT", k)) for k in keys}
            assert len(slots) == 1, keys
    sizes = []
    for port in cluster.roles()["master"]:
        with redis_node(port) as r:
            sizes.append(r.dbsize())
    assert len(sizes) == 3 and min(sizes) > 0 and sum(sizes) == N + N // 2


def test_a_batch_is_one_mget_per_entity_covering_every_view(
    store: FeatureStore, cluster: TemporaryRedisCluster
) -> None:
    plan = store.plan(REFS)
    plan.get([0])  # connects and learns the slot map
    masters = cluster.roles()["master"]
    for port in masters:
        with redis_node(port) as r:
            r.config_resetstat()
    ids = list(range(100))
    np.testing.assert_array_equal(plan.get(ids)[0], _expected(ids))
    calls = 0
    for port in masters:
        with redis_node(port) as r:
            calls += int(r.info("commandstats").get("cmdstat_mget", {}).get("calls", 0))
    assert calls == len(ids)


def test_moved_and_ask_redirections_are_followed(
    store: FeatureStore, cluster: TemporaryRedisCluster
) -> None:
    plan = store.plan(REFS)
    plan.get([7])  # the client now maps every slot to its current master
    backend = store.backend
    assert isinstance(backend, RedisClusterBackend)
    head, tail = backend.key_parts(store.view("txn"))
    key = head + b"7" + tail
    src = cluster.master_of(key)
    dst = next(p for p in cluster.roles()["master"] if p != src)
    with redis_node(src) as s, redis_node(dst) as d:
        slot = int(s.execute_command("CLUSTER", "KEYSLOT", key))
        src_id, dst_id = s.execute_command("CLUSTER", "MYID"), d.execute_command("CLUSTER", "MYID")
        d.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
        s.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
        keys = s.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1000)
        s.execute_command("MIGRATE", "127.0.0.1", dst, "", 0, 5000, "KEYS", *keys)
        # Mid-migration: the source answers ASK for the keys that left; the new owner refuses
        # a multi-key read while the slot's keys are split (entity 7 has no profile row).
        np.testing.assert_array_equal(bounded(lambda: plan.get([7, 8]))[0], _expected([7, 8]))
        for port in cluster.roles()["master"]:
            with redis_node(port) as r:
                r.execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)
    # Done: the old owner answers MOVED; the client follows and updates its map.
    values, status = bounded(lambda: plan.get([7, 8]))
    np.testing.assert_array_equal(values, _expected([7, 8]))
    np.testing.assert_array_equal(status, [MISSING, PRESENT])  # 7 has no profile row
    assert cluster.master_of(key) == dst


def test_killing_a_master_serves_counted_defaults_until_its_replica_takes_over(
    own_cluster: TemporaryRedisCluster, make_store: Callable[..., FeatureStore]
) -> None:
    s = make_store(own_cluster.url, timeout_s=0.05, on_unavailable="default")
    _seed(s)
    own_cluster.wait_replicated()
    plan = s.plan(REFS)
    ids = list(range(30))
    np.testing.assert_array_equal(plan.get(ids)[0], _expected(ids))
    backend = s.backend
    assert isinstance(backend, RedisClusterBackend)
    head, tail = backend.key_parts(s.view("txn"))
    own_cluster.kill(own_cluster.master_of(head + b"0" + tail))

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
        assert time.monotonic() < deadline, "the replica never took over"
        time.sleep(0.02)
    loop.run_until_complete(backend.aclose())
    loop.close()
    np.testing.assert_array_equal(values, _expected(ids))  # the replica had every row
    assert unavailable >= 1  # the dead master was really asked
    assert s.counters.fallbacks == unavailable
    assert s.counters.failures == 0


def test_a_stalled_master_times_out_within_the_timeout_and_recovers(
    cluster: TemporaryRedisCluster, make_store: Callable[..., FeatureStore]
) -> None:
    _flush(cluster)
    s = make_store(cluster.url, timeout_s=0.05)
    _seed(s, n=20)
    cluster.wait_replicated()  # were a loaded machine to stretch the stall into a failover
    plan = s.plan(REFS)
    plan.get([0])
    backend = s.backend
    assert isinstance(backend, RedisClusterBackend)
    head, tail = backend.key_parts(s.view("txn"))
    pid = cluster.procs[cluster.master_of(head + b"0" + tail)].pid
    os.kill(pid, signal.SIGSTOP)
    try:
        # Stopped for far less than the cluster's node timeout: no failover, only a slow node.
        with pytest.raises(UnavailableError, match=r"timed out \(timeout 50 ms\)"):
            bounded(lambda: plan.get(list(range(20))), limit_s=10)
        assert s.counters.failures == 1
    finally:
        os.kill(pid, signal.SIGCONT)
    values, status = bounded(lambda: plan.get(list(range(20))), limit_s=10)
    np.testing.assert_array_equal(values, _expected(list(range(20))))
    assert (status != UNAVAILABLE).all()


def test_cluster_urls_are_checked(make_store: Callable[..., FeatureStore]) -> None:
    with pytest.raises(InvalidArgumentError, match="invalid node 'nohost'"):
        make_store("redis+cluster://127.0.0.1:7000,nohost")
    with pytest.raises(InvalidArgumentError, match="only database 0") as e:
        make_store("redis+cluster://u:hunter2@127.0.0.1:7000/3")
    assert "hunter2" not in str(e.value)


def test_an_unreachable_cluster_fails_lookups_fast_with_a_redacted_error(
    make_store: Callable[..., FeatureStore],
) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    s = make_store(f"redis+cluster://u:hunter2@127.0.0.1:{port}", timeout_s=0.05)
    s.apply(CARD, TXN)
    plan = s.plan(["txn:amount_7d"])
    with pytest.raises(UnavailableError) as e:
        bounded(lambda: plan.get([1]), limit_s=10)
    assert "hunter2" not in str(e.value) and "***" in str(e.value)
    assert s.counters.failures == 1


def test_typed_features_and_string_entities_round_trip_on_the_cluster(
    cluster: TemporaryRedisCluster, make_store: Callable[..., FeatureStore]
) -> None:
    from .test_types import BIG, PROFILE, USER, _rows

    _flush(cluster)
    store = make_store(cluster.url, timeout_s=0.5)
    store.apply(USER, PROFILE)
    assert store.write("uprofile", _rows()) == 3
    plan = store.plan(["uprofile:*"])
    cols, status = plan.get_typed(["bob", "alice", "nobody"])
    assert status.tolist() == [PRESENT, PRESENT, MISSING]
    assert cols["uprofile:visits"].tolist() == [-7, BIG, -1]
    assert cols["uprofile:country"].tolist() == ["XX", "DE", "??"]
    assert cols["uprofile:emb"].tolist() == [[4, 5, 6], [1, 2, 3], [9, 9, 9]]
    values, _ = store.plan(["uprofile:country", "uprofile:score"]).get(["alice", "nobody"])
    assert values.tolist() == [[1, np.float32(0.1)], [3, -0.5]]


def test_packed_mgets_are_the_bytes_redis_py_writes() -> None:
    from redis.connection import Connection

    from aiarch.features.online import _pack_mgets

    commands = [[b"aiarch:fv:{id=1}:txn:ab", b"aiarch:fv:{id=1}:card:cd"], [b"k" * 300], [b""]]
    want = b"".join(Connection().pack_commands([("MGET", *keys) for keys in commands]))
    assert _pack_mgets(commands) == want
