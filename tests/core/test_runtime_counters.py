"""Runtime.stats counts every answer: a response-cache hit is a successful request, and
`last_inference_ms` is the wall-clock time of the latest answer, executed or cached."""

from __future__ import annotations

import time

import numpy as np

import aiarch


def test_cache_hit_is_a_successful_request_with_its_time() -> None:
    calls = []

    def double(x: np.ndarray) -> np.ndarray:
        calls.append(len(x))
        return x * 2

    spec = [aiarch.TensorSpec("x", "float32", (4,))]
    with aiarch.Runtime() as rt:
        rt.add_model("m", double, inputs=spec, cache=True, warmup=False)
        assert rt.stats("m")["last_inference_ms"] == 0
        x = np.arange(4, dtype=np.float32)[None, :]
        t0 = int(time.time() * 1000)
        np.testing.assert_array_equal(rt.infer_sync("m", x), x * 2)
        executed = rt.stats("m")
        assert t0 <= executed["last_inference_ms"] <= int(time.time() * 1000)
        for _ in range(3):
            np.testing.assert_array_equal(rt.infer_sync("m", x), x * 2)
        t1 = int(time.time() * 1000)
        s = rt.stats("m")
        assert len(calls) == 1  # the repeats were cache hits
        assert s["cache_hits"] == 3 and s["cache"]["hits"] == 3
        assert s["requests"]["success"] == 4
        assert executed["last_inference_ms"] <= s["last_inference_ms"] <= t1
