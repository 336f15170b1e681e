"""The README example, plus a short load so the runtime's statistics mean something.

python examples/quickstart.py
"""

from __future__ import annotations

import asyncio

import numpy as np

import aiarch


def main() -> None:
    # --- the README example -------------------------------------------------
    rt = aiarch.Runtime()
    rt.add_model(
        "score",
        lambda x: x.sum(axis=1, keepdims=True),
        inputs=[aiarch.TensorSpec("x", "float32", (8,))],
        batching=aiarch.BatchConfig(max_batch_size=64, max_delay_us=500),
        cache=aiarch.CacheConfig(max_bytes=64 << 20),
    )
    y = rt.infer_sync("score", np.ones((1, 8), np.float32))  # from plain threads
    y = asyncio.run(rt.infer("score", np.ones((1, 8), np.float32)))  # from asyncio
    print("score:", y.ravel())
    # -------------------------------------------------------------------------

    rng = np.random.default_rng(0)
    requests = [rng.standard_normal((1, 8)).astype(np.float32) for _ in range(20_000)]

    async def load() -> None:
        sem = asyncio.Semaphore(64)

        async def one(x: np.ndarray) -> None:
            async with sem:
                await rt.infer("score", x)

        await asyncio.gather(*(one(x) for x in requests))

    asyncio.run(load())
    st = rt.stats("score")
    lat = st["latency_us"]
    print(
        f"\n{st['requests']['success']:,} requests in {st['batches']:,} batches "
        f"(mean {st['batch_size']['mean']:.1f} rows); cache hits {st['cache']['hits']:,}"
    )
    print(f"{'stage':<12}{'p50 us':>10}{'p99 us':>10}{'p99.9 us':>10}")
    for stage in ("queue", "execution", "end_to_end"):
        s = lat[stage]
        print(f"{stage:<12}{s['p50']:>10.1f}{s['p99']:>10.1f}{s['p999']:>10.1f}")
    rt.close()


if __name__ == "__main__":
    main()
