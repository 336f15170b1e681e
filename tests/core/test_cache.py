"""The native response cache against a pure-Python reference."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest

import aiarch
from aiarch import _core


def test_matches_a_dict_reference_on_a_seeded_operation_log():
    seed = 20261126
    rng = np.random.default_rng(seed)
    cache = _core.ResponseCache(max_bytes=64 << 20)  # large: no eviction, so a dict is exact
    ref: dict[bytes, bytes] = {}
    for step in range(20_000):
        key = b"k%d" % rng.integers(0, 500)
        op = rng.integers(0, 10)
        if op < 4:
            value = rng.bytes(int(rng.integers(0, 64)))
            assert cache.insert(key, value)
            ref[key] = value
        elif op < 9:
            assert cache.lookup(key) == ref.get(key), f"seed={seed} step={step}"
        elif op == 9 and rng.integers(0, 50) == 0:
            cache.invalidate()
            ref.clear()
        else:
            cache.erase(key)
            ref.pop(key, None)


def test_ttl_uses_the_callers_clock():
    cache = _core.ResponseCache(max_bytes=1 << 20, ttl_ns=1000)
    cache.insert(b"k", b"v", now_ns=0)
    assert cache.lookup(b"k", now_ns=999) == b"v"
    assert cache.lookup(b"k", now_ns=1001) is None
    assert cache.counters()["expirations"] >= 1


def test_byte_budget_is_respected():
    cache = _core.ResponseCache(max_bytes=64 << 10, shards=1, buckets=1024)
    for i in range(5000):
        cache.insert(b"key%d" % i, b"x" * 100)
    c = cache.counters()
    assert c["bytes"] <= 64 << 10
    assert c["evictions"] > 0


def _zipf_trace(rng, n, keys, s=0.99):
    weights = 1.0 / np.arange(1, keys + 1) ** s
    return rng.choice(keys, size=n, p=weights / weights.sum())


def _lru_hit_ratio(trace, capacity):
    lru: OrderedDict[int, None] = OrderedDict()
    hits = 0
    for k in trace:
        if k in lru:
            hits += 1
            lru.move_to_end(k)
        else:
            lru[k] = None
            if len(lru) > capacity:
                lru.popitem(last=False)
    return hits / len(trace)


def _cache_hit_ratio(trace, capacity):
    # Measure one entry's charge, then give the cache room for `capacity` of them.
    probe = _core.ResponseCache(max_bytes=1 << 20, shards=1, buckets=1 << 14)
    probe.insert(b"%08d" % 0, b"v" * 32)
    per_entry = probe.counters()["bytes"]
    cache = _core.ResponseCache(max_bytes=per_entry * capacity, shards=1, buckets=1 << 14)
    hits = 0
    for k in trace:
        key = b"%08d" % k
        if cache.lookup(key) is not None:
            hits += 1
        else:
            cache.insert(key, b"v" * 32)
    return hits / len(trace)


@pytest.mark.parametrize("scans", [False, True])
def test_hit_ratio_at_least_lru_on_zipf(scans):
    rng = np.random.default_rng(99)
    trace = _zipf_trace(rng, 60_000, 5_000)
    if scans:
        # Interleave one-time scans of never-repeated keys.
        parts = np.array_split(trace, 20)
        trace = np.concatenate(
            [
                np.concatenate([p, np.arange(10**6 + i * 400, 10**6 + (i + 1) * 400)])
                for i, p in enumerate(parts)
            ]
        )
    capacity = 500
    ours = _cache_hit_ratio(trace, capacity)
    lru = _lru_hit_ratio(trace, capacity)
    assert ours >= lru, (ours, lru)


def test_invalid_configuration_is_refused():
    with pytest.raises(aiarch.InvalidArgumentError, match="power of two"):
        _core.ResponseCache(max_bytes=1024, shards=3)
    with pytest.raises(aiarch.InvalidArgumentError, match="max_bytes"):
        _core.ResponseCache(max_bytes=0)
