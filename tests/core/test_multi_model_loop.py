"""Two models answered from one event loop at once: each request gets its own model's answer
(request ids are unique across models, so one loop's pending table never mixes them up)."""

from __future__ import annotations

import asyncio

import numpy as np

import aiarch


def test_concurrent_requests_to_two_models_on_one_loop() -> None:
    spec = [aiarch.TensorSpec("x", "float32", (2,))]
    with aiarch.Runtime() as rt:
        rt.add_model("double", lambda x: x * 2, inputs=spec)
        rt.add_model("triple", lambda x: x * 3, inputs=spec)

        async def run() -> list[tuple[str, float, np.ndarray]]:
            jobs = []
            for i in range(50):
                x = np.full((1, 2), float(i), np.float32)
                for name, factor in (("double", 2.0), ("triple", 3.0)):
                    jobs.append((name, factor * i, rt.infer(name, x)))
            outs = await asyncio.wait_for(asyncio.gather(*(j[2] for j in jobs)), 30)
            return [(n, want, out) for (n, want, _), out in zip(jobs, outs)]

        for name, want, out in asyncio.run(run()):
            assert float(out[0, 0]) == want, name
