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


def test_interleaved_submits_of_different_arity_shape_and_byte_order_keep_their_own_inputs() -> (
    None
):
    # One thread submits to a two-input and a one-input model in turn, with row counts, a
    # byte-swapped and a strided array varying between submits: no submit may see another's
    # input count, shape or bytes.
    swapped = ">" if np.little_endian else "<"
    with aiarch.Runtime() as rt:
        rt.add_model(
            "add",
            lambda a, b: a + b,
            inputs=[
                aiarch.TensorSpec("a", "float32", (3,)),
                aiarch.TensorSpec("b", "float32", (3,)),
            ],
        )
        rt.add_model("neg", lambda x: -x, inputs=[aiarch.TensorSpec("x", "float32", (2,))])

        async def run() -> list[tuple[np.ndarray, np.ndarray]]:
            jobs = []
            for i in range(40):
                rows = 1 + i % 4
                a = np.arange(rows * 3, dtype=np.float32).reshape(rows, 3) + i
                b = np.full((rows, 3), 100.0 * i, dtype=f"{swapped}f4")
                jobs.append((a + b.astype(np.float32), rt.infer("add", (a, b))))
                x = np.arange(rows * 4, dtype=np.float32).reshape(rows, 4)[:, ::2] - i  # strided
                jobs.append((-x, rt.infer("neg", x)))
            outs = await asyncio.wait_for(asyncio.gather(*(j[1] for j in jobs)), 30)
            return [(want, out) for (want, _), out in zip(jobs, outs)]

        for want, out in asyncio.run(run()):
            np.testing.assert_array_equal(out, want)
