"""`aiarch serve` with feature inputs, over real HTTP: requests carry entity ids only, the
server looks features up once per batch (native snapshot store and a real Redis), the policy
for missing rows and an unavailable store applies per request, and the lookup stage shows in
/stats and /metrics."""

from __future__ import annotations

import concurrent.futures
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aiarch.features import FeatureStore
from aiarch.serving.process import ServerProcess

from .conftest import CARD, SESSION, T0, TXN, USER, RedisServer

pytestmark = pytest.mark.redis

MODELS = Path(__file__).resolve().parent / "serving_models.py"
LOOKUPS = '["txn:amount_7d", "txn:count_1h"]'


class Server(ServerProcess):
    """`aiarch serve` with a config file, ready when constructed."""

    def __init__(self, config: Path, tmp: Path) -> None:
        super().__init__(["--config", str(config), "--log-level", "warning"], tmp / "server.log")
        try:
            self.wait_ready(60)
        except BaseException:
            self.stop()
            raise

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        headers = {} if data is None else {"Content-Type": "application/json"}
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=20) as r:
                raw = r.read()
                status = r.status
        except urllib.error.HTTPError as e:
            raw, status = e.read(), e.code
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw.decode()


def seed(store: FeatureStore) -> None:
    store.apply(CARD, TXN)
    store.write(
        "txn",
        {
            "card": [1, 2, 3],
            "event_timestamp": [T0, T0, T0],  # long expired under the wall clock: TTL 1 h
            "amount_7d": [10.0, 20.0, 30.0],
            "count_1h": [1, 2, 3],
            "risky": [False, False, False],
        },
    )


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, RedisServer]]:
    tmp = tmp_path_factory.mktemp("serve-features")
    home = tmp / "home"
    # Fresh rows: event time now, so the 1-hour TTL holds during the test.
    now = time.time_ns()
    native = FeatureStore(f"native://{tmp / 'online'}", home=home)
    seed(native)
    native.write(
        "txn",
        {
            "card": [1, 2],
            "event_timestamp": [now, now],
            "amount_7d": [10.0, 20.0],
            "count_1h": [1, 2],
            "risky": [False, False],
        },
    )
    native.apply(USER, SESSION)
    native.write(
        "session",
        {
            "user": ["ana", "Zoë-7f3a", "b" * 64],
            "event_timestamp": [now, now, now],
            "clicks": [3.0, 4.0, 5.0],
            "dwell_s": [0.5, 0.25, 2.0],
        },
    )
    native.save()
    redis_srv = RedisServer(tmp / "redis")
    remote = FeatureStore(redis_srv.url, home=home)
    remote.write(
        "txn",
        {
            "card": [1],
            "event_timestamp": [now],
            "amount_7d": [5.0],
            "count_1h": [6],
            "risky": [True],
        },
    )
    remote.backend.close()
    store = f"native://{tmp / 'online'}"
    feats = f'store = "{store}", home = "{home}", lookups = {LOOKUPS}'
    rfeats = f'store = "{redis_srv.url}", home = "{home}", lookups = {LOOKUPS}'
    ufeats = f'store = "{store}", home = "{home}", lookups = ["session:*"], entity_input = "user"'
    config = tmp / "serve.toml"
    config.write_text(
        f"""
[models.fraud]
source = "{MODELS}:score"
batching = {{ max_batch_size = 16, max_delay_us = 20000 }}
features = {{ {feats} }}

[models.strict]
source = "{MODELS}:score"
batching = {{ max_batch_size = 16, max_delay_us = 50000 }}
features = {{ {feats}, on_missing = "error" }}

[models.scaled]
source = "{MODELS}:scaled"
features = {{ {feats}, entity_input = "card" }}

[models.by_user]
source = "{MODELS}:score"
features = {{ {ufeats} }}

[models.by_user_strict]
source = "{MODELS}:score"
features = {{ {ufeats}, on_missing = "error", max_key_bytes = 16 }}

[models.remote]
source = "{MODELS}:score"
features = {{ {rfeats}, timeout_ms = 50 }}

[models.remote_default]
source = "{MODELS}:score"
features = {{ {rfeats}, timeout_ms = 50, on_unavailable = "default" }}
"""
    )
    server = Server(config, tmp)
    try:
        yield server, redis_srv
    finally:
        server.stop()
        redis_srv.stop()


def v2(
    ids: list[int], name: str = "entity_id", extra: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    return {
        "inputs": [
            {"name": name, "shape": [len(ids)], "datatype": "INT64", "data": ids},
            *(extra or []),
        ]
    }


def outputs(body: dict[str, Any]) -> dict[str, list[Any]]:
    return {o["name"]: o["data"] for o in body["outputs"]}


def test_v2_request_with_entity_ids_only(served: tuple[Server, RedisServer]) -> None:
    srv, _ = served
    status, meta = srv.call("GET", "/v2/models/fraud")
    assert status == 200
    assert [i["name"] for i in meta["inputs"]] == ["entity_id"]
    assert [o["name"] for o in meta["outputs"]] == ["score", "feature_status"]
    status, body = srv.call("POST", "/v2/models/fraud/infer", v2([2, 1, 3, 77]))
    assert status == 200, body
    out = outputs(body)
    # 2 and 1 are fresh; 3 is expired (TTL 1 h), 77 is missing: defaults 0 and -1.
    assert out["score"] == [22.0, 11.0, -1.0, -1.0]
    assert out["feature_status"] == [0, 0, 1, 2]


def test_predict_endpoint_and_request_time_inputs(served: tuple[Server, RedisServer]) -> None:
    srv, _ = served
    status, body = srv.call("POST", "/predict/fraud", {"inputs": [1, 2]})
    assert status == 200, body
    assert body["outputs"] == {"score": [[11.0], [22.0]], "feature_status": [0, 0]}
    factor = {"name": "factor", "shape": [2, 1], "datatype": "FP32", "data": [2.0, 10.0]}
    status, body = srv.call("POST", "/v2/models/scaled/infer", v2([1, 2], "card", [factor]))
    assert status == 200, body
    assert outputs(body)["output0"] == [20.0, 2.0, 200.0, 20.0]


def test_missing_entity_fails_only_its_own_request(served: tuple[Server, RedisServer]) -> None:
    srv, _ = served
    # Sent together so that they share one batch (max_delay 50 ms): one lookup for both.
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        bad = pool.submit(srv.call, "POST", "/v2/models/strict/infer", v2([1, 404]))
        good = pool.submit(srv.call, "POST", "/v2/models/strict/infer", v2([2]))
        (s_bad, b_bad), (s_good, b_good) = bad.result(), good.result()
    assert s_good == 200 and outputs(b_good)["score"] == [22.0]
    assert s_bad == 404
    assert "404 (missing)" in b_bad["error"] and "['txn']" in b_bad["error"]
    status, body = srv.call("POST", "/v2/models/strict/infer", v2([3]))
    assert status == 404 and "3 (expired)" in body["error"]


def test_wrong_entity_id_type_is_a_400(served: tuple[Server, RedisServer]) -> None:
    srv, _ = served
    body = {"inputs": [{"name": "entity_id", "shape": [1], "datatype": "FP32", "data": [1.0]}]}
    status, out = srv.call("POST", "/v2/models/fraud/infer", body)
    assert status == 400 and "expecting INT64" in out["error"]


def test_lookup_stage_in_stats_and_metrics(served: tuple[Server, RedisServer]) -> None:
    srv, _ = served
    srv.call("POST", "/v2/models/fraud/infer", v2([1, 999]))
    status, stats = srv.call("GET", "/v2/models/fraud/stats")
    assert status == 200
    lookup = stats["model_stats"][0]["feature_lookup"]
    assert lookup["count"] >= 1 and lookup["ns"] > 0
    assert lookup["rows"]["present"] >= 1 and lookup["rows"]["missing"] >= 1
    status, text = srv.call("GET", "/metrics")
    assert status == 200
    assert 'aiarch_feature_lookup_duration_seconds_count{model="fraud"}' in text
    assert 'aiarch_feature_rows_total{model="fraud",status="missing"}' in text


def test_redis_store_and_its_outage(served: tuple[Server, RedisServer]) -> None:
    srv, redis_srv = served
    status, body = srv.call("POST", "/v2/models/remote/infer", v2([1, 2]))
    assert status == 200, body
    assert outputs(body) == {"score": [11.0, -1.0], "feature_status": [0, 2]}
    redis_srv.pause()
    try:
        status, body = srv.call("POST", "/v2/models/remote/infer", v2([1]))
        assert status == 503 and "did not answer in time" in body["error"]
        status, body = srv.call("POST", "/v2/models/remote_default/infer", v2([1]))
        assert status == 200 and outputs(body) == {"score": [-1.0], "feature_status": [3]}
        status, text = srv.call("GET", "/metrics")
        line = next(
            x
            for x in text.splitlines()
            if x.startswith('aiarch_feature_store_failures_total{model="remote_default"}')
        )
        assert float(line.split()[-1]) >= 1
        # Other models keep serving while Redis is stalled.
        status, body = srv.call("POST", "/v2/models/fraud/infer", v2([1]))
        assert status == 200 and outputs(body)["score"] == [11.0]
    finally:
        redis_srv.resume()
    status, body = srv.call("POST", "/v2/models/remote/infer", v2([1]))
    assert status == 200 and outputs(body)["score"] == [11.0]


def test_string_entity_ids_are_served(served: tuple[Server, RedisServer]) -> None:
    """A string entity's ids arrive as BYTES (JSON strings or the binary extension) and join
    their features; ids that do not fit are refused naming them; other requests unaffected."""
    import struct
    import urllib.request

    srv, _ = served
    status, meta = srv.call("GET", "/v2/models/by_user")
    assert status == 200
    assert meta["inputs"] == [{"name": "user", "datatype": "BYTES", "shape": [-1]}]
    ids = ["Zoë-7f3a", "nobody", "ana", "b" * 64]
    body = {"inputs": [{"name": "user", "shape": [4], "datatype": "BYTES", "data": ids}]}
    status, out = srv.call("POST", "/v2/models/by_user/infer", body)
    assert status == 200, out
    # clicks + dwell_s; "nobody" is missing: defaults 0 + 1.0.
    assert outputs(out)["score"] == [4.25, 1.0, 3.5, 7.0]
    assert outputs(out)["feature_status"] == [0, 2, 0, 0]
    # The binary tensor extension: uint32-LE length-prefixed elements.
    raw = b"".join(struct.pack("<I", len(b)) + b for b in (x.encode() for x in ids[:2]))
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "user",
                    "shape": [2],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(raw)},
                }
            ]
        }
    ).encode()
    req = urllib.request.Request(
        srv.base + "/v2/models/by_user/infer",
        data=header + raw,
        method="POST",
        headers={
            "Inference-Header-Content-Length": str(len(header)),
            "Content-Type": "application/octet-stream",
        },
    )
    with urllib.request.urlopen(req, timeout=20) as r:
        assert outputs(json.loads(r.read()))["score"] == [4.25, 1.0]
    for bad, why in (("c" * 65, "longer than 64 bytes"), ("a\u0000b", "NUL"), ("", "empty")):
        body = {"inputs": [{"name": "user", "shape": [1], "datatype": "BYTES", "data": [bad]}]}
        status, out = srv.call("POST", "/v2/models/by_user/infer", body)
        assert status == 400 and why in out["error"] and "'user'" in out["error"], out
    body = {"inputs": [{"name": "user", "shape": [1], "datatype": "INT64", "data": [1]}]}
    status, out = srv.call("POST", "/v2/models/by_user/infer", body)
    assert status == 400 and "expecting BYTES" in out["error"]
    status, out = srv.call("POST", "/v2/models/fraud/infer", v2([2]))
    assert status == 200 and outputs(out)["score"] == [22.0]
    strict = "/v2/models/by_user_strict/infer"
    body = {"inputs": [{"name": "user", "shape": [2], "datatype": "BYTES", "data": ["ana", "x"]}]}
    status, out = srv.call("POST", strict, body)
    assert status == 404 and "x (missing)" in out["error"], out
    body["inputs"][0]["data"] = ["ana", "b" * 17]  # (17 bytes: over this model's 16)
    status, out = srv.call("POST", strict, body)
    assert status == 400 and "longer than 16 bytes" in out["error"], out
