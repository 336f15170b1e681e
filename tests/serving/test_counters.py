"""Request counters over real HTTP: answers from the response cache are requests too, and the
model's `last_inference` time moves with every answer."""

from __future__ import annotations

import json
import re
import time

from .conftest import request


def _body(values: list[float]) -> bytes:
    return json.dumps(
        {"inputs": [{"name": "x", "shape": [1, 8], "datatype": "FP32", "data": values}]}
    ).encode()


def _success_total(port: int, model: str) -> float:
    text = request(port, "GET", "/metrics").body.decode()
    m = re.search(
        rf'aiarch_requests_total\{{model="{model}",status="success",version="[^"]*"\}} (\S+)',
        text,
    )
    assert m, text
    return float(m.group(1))


def _model_stat(port: int, model: str) -> dict:  # type: ignore[type-arg]
    r = request(port, "GET", f"/v2/models/{model}/stats")
    assert r.status == 200, r.body
    return r.json()["model_stats"][0]  # type: ignore[index, no-any-return]


def test_cache_hits_count_as_successful_requests(server) -> None:  # type: ignore[no-untyped-def]
    body = _body([0.25] * 8)
    before = _success_total(server.port, "cached")
    hits_before = _model_stat(server.port, "cached")["inference_stats"]["cache_hit"]["count"]
    for _ in range(5):
        assert request(server.port, "POST", "/v2/models/cached/infer", body).status == 200
    stat = _model_stat(server.port, "cached")
    hits = stat["inference_stats"]["cache_hit"]["count"] - hits_before
    assert hits >= 4  # the first may execute; every repeat is answered from the cache
    assert _success_total(server.port, "cached") - before == 5
    assert stat["inference_stats"]["success"]["count"] >= 5


def test_last_inference_is_the_time_of_the_last_answer(server) -> None:  # type: ignore[no-untyped-def]
    for model, values in (("lin", [0.5] * 8), ("cached", [0.75] * 8)):
        t0 = int(time.time() * 1000)
        for _ in range(2):  # on "cached", the second is a cache hit
            assert (
                request(server.port, "POST", f"/v2/models/{model}/infer", _body(values)).status
                == 200
            )
        t1 = int(time.time() * 1000)
        last = _model_stat(server.port, model)["last_inference"]
        assert t0 <= last <= t1, (model, t0, last, t1)
