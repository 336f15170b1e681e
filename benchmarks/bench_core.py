"""Runtime throughput and batcher-added latency against pure-Python batchers.

Both sides serve the same identity model on the same event loop, driven by N
concurrent submitter coroutines that each await one 1-row request at a time.
The baseline is the batcher people write first: an asyncio.Queue, a task that
collects up to max_batch_size items or waits max_delay, np.concatenate, one
model call, and a future per request. Two more cases: a caller holding 64
requests at once (`rt.infer_many` against gathering 64 baseline requests),
and 32 plain threads calling `rt.infer_sync` against a threaded batcher
(queue.Queue, one Event per request, one batching thread).

    python benchmarks/bench_core.py            # full run (~1 minute)
    python benchmarks/bench_core.py --smoke    # a few seconds
    python benchmarks/bench_core.py --case 64 --rounds 7 --duration 2   # one case, 7 rounds

On a shared machine one measurement is noise: --rounds N alternates the two sides N
times and reports medians (the ratio is the median of the per-round ratios), and each
side's CPU time per request (process CPU time over requests), which other load moves
far less than throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import queue
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import aiarch
from _report import print_table, write_json

FEATURES = 16


def identity(x: np.ndarray) -> np.ndarray:
    return x


class NaiveBatcher:
    """The straightforward pure-Python asyncio batcher (the baseline)."""

    def __init__(self, fn: Any, max_batch_size: int, max_delay_s: float) -> None:
        self.fn = fn
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_s
        self.queue: asyncio.Queue[tuple[np.ndarray, asyncio.Future[np.ndarray]]] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        assert self.task is not None
        self.task.cancel()
        try:
            await self.task
        except asyncio.CancelledError:
            pass

    async def infer(self, x: np.ndarray) -> np.ndarray:
        fut = asyncio.get_running_loop().create_future()
        await self.queue.put((x, fut))
        return await fut

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = [await self.queue.get()]
            deadline = loop.time() + self.max_delay_s
            while len(items) < self.max_batch_size:
                if not self.queue.empty():
                    items.append(self.queue.get_nowait())
                    continue
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    items.append(await asyncio.wait_for(self.queue.get(), remaining))
                except asyncio.TimeoutError:
                    break
            batch = np.concatenate([x for x, _ in items])
            out = self.fn(batch)
            offset = 0
            for x, fut in items:
                n = x.shape[0]
                if not fut.done():
                    fut.set_result(out[offset : offset + n])
                offset += n


class ThreadedBatcher:
    """The straightforward pure-Python threaded batcher (the infer_sync baseline)."""

    def __init__(self, fn: Any, max_batch_size: int) -> None:
        self.fn = fn
        self.max_batch_size = max_batch_size
        self.queue: queue.Queue[Any] = queue.Queue()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def infer(self, x: np.ndarray) -> np.ndarray:
        slot: list[Any] = [x, threading.Event(), None]
        self.queue.put(slot)
        slot[1].wait()
        return slot[2]

    def stop(self) -> None:
        self.queue.put(None)
        self.thread.join()

    def _run(self) -> None:
        while True:
            first = self.queue.get()
            if first is None:
                return
            items = [first]
            while len(items) < self.max_batch_size:
                try:
                    item = self.queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self.queue.put(None)
                    break
                items.append(item)
            out = self.fn(np.concatenate([it[0] for it in items]))
            offset = 0
            for it in items:
                n = it[0].shape[0]
                it[2] = out[offset : offset + n]
                offset += n
                it[1].set()


def drive_threads(infer: Any, threads: int, duration_s: float) -> dict[str, float]:
    """Closed loop over plain threads: each calls infer one request at a time."""
    hist = aiarch.Histogram()
    x = np.ones((1, FEATURES), np.float32)
    for _ in range(50):
        infer(x)
    counts = [0] * threads
    stop_at = time.perf_counter() + duration_s

    def worker(k: int) -> None:
        perf = time.perf_counter_ns
        end_ns = int(stop_at * 1e9)
        n = 0
        while True:
            t0 = perf()
            if t0 >= end_ns:
                break
            infer(x)
            hist.record(perf() - t0)
            n += 1
        counts[k] = n

    t0 = time.perf_counter()
    pool = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    elapsed = time.perf_counter() - t0
    snap = hist.snapshot()
    return {
        "requests": sum(counts),
        "rps": sum(counts) / elapsed,
        "p50_us": snap.percentile(50) / 1e3,
        "p99_us": snap.percentile(99) / 1e3,
        "p999_us": snap.percentile(99.9) / 1e3,
    }


async def drive_many(infer_many: Any, per_call: int, duration_s: float) -> dict[str, float]:
    """One caller holding per_call requests at a time; latency is per call."""
    hist = aiarch.Histogram()
    xs = [np.ones((1, FEATURES), np.float32) for _ in range(per_call)]
    for _ in range(10):
        await infer_many(xs)
    perf = time.perf_counter_ns
    end_ns = perf() + int(duration_s * 1e9)
    calls = 0
    t0 = time.perf_counter()
    while True:
        c0 = perf()
        if c0 >= end_ns:
            break
        await infer_many(xs)
        hist.record(perf() - c0)
        calls += 1
    elapsed = time.perf_counter() - t0
    snap = hist.snapshot()
    return {
        "requests": calls * per_call,
        "rps": calls * per_call / elapsed,
        "p50_us": snap.percentile(50) / 1e3,
        "p99_us": snap.percentile(99) / 1e3,
        "p999_us": snap.percentile(99.9) / 1e3,
    }


def _runtime() -> aiarch.Runtime:
    rt = aiarch.Runtime()
    rt.add_model(
        "identity",
        identity,
        inputs=[aiarch.TensorSpec("x", "float32", (FEATURES,))],
        batching=aiarch.BatchConfig(max_batch_size=64, max_queue_rows=1 << 16),
    )
    return rt


async def run_aiarch_many(per_call: int, duration_s: float) -> dict[str, float]:
    rt = _runtime()
    try:
        result = await drive_many(lambda xs: rt.infer_many("identity", xs), per_call, duration_s)
        result["mean_batch"] = rt.stats("identity")["batch_size"]["mean"]
        return result
    finally:
        rt.close()


async def run_naive_many(per_call: int, duration_s: float) -> dict[str, float]:
    b = NaiveBatcher(identity, 64, 0.0)
    b.start()
    try:
        return await drive_many(
            lambda xs: asyncio.gather(*(b.infer(x) for x in xs)), per_call, duration_s
        )
    finally:
        await b.stop()


def run_aiarch_threads(threads: int, duration_s: float) -> dict[str, float]:
    rt = _runtime()
    try:
        result = drive_threads(lambda x: rt.infer_sync("identity", x), threads, duration_s)
        result["mean_batch"] = rt.stats("identity")["batch_size"]["mean"]
        return result
    finally:
        rt.close()


def run_threaded_baseline(threads: int, duration_s: float) -> dict[str, float]:
    b = ThreadedBatcher(identity, 64)
    try:
        return drive_threads(b.infer, threads, duration_s)
    finally:
        b.stop()


async def drive(infer: Any, submitters: int, duration_s: float) -> dict[str, float]:
    """Closed loop: each submitter awaits one request at a time for duration_s."""
    hist = aiarch.Histogram()
    x = np.ones((1, FEATURES), np.float32)
    stop_at = time.perf_counter() + duration_s
    count = 0

    async def submitter() -> None:
        nonlocal count
        perf = time.perf_counter_ns
        record = hist.record
        end_ns = int(stop_at * 1e9)
        while True:
            t0 = perf()
            if t0 >= end_ns:
                return
            await infer(x)
            record(perf() - t0)
            count += 1

    # Warm up (thread start, first batches) outside the measurement.
    for _ in range(50):
        await infer(x)
    t0 = time.perf_counter()
    await asyncio.gather(*(submitter() for _ in range(submitters)))
    elapsed = time.perf_counter() - t0
    snap = hist.snapshot()
    return {
        "requests": count,
        "rps": count / elapsed,
        "p50_us": snap.percentile(50) / 1e3,
        "p99_us": snap.percentile(99) / 1e3,
        "p999_us": snap.percentile(99.9) / 1e3,
    }


async def run_aiarch(submitters: int, duration_s: float, max_delay_us: float) -> dict[str, float]:
    rt = aiarch.Runtime()
    rt.add_model(
        "identity",
        identity,
        inputs=[aiarch.TensorSpec("x", "float32", (FEATURES,))],
        batching=aiarch.BatchConfig(
            max_batch_size=64, max_delay_us=max_delay_us, max_queue_rows=1 << 16
        ),
    )

    # The coroutine itself, as the baseline's is: no wrapper coroutine per request.
    infer = functools.partial(rt.infer, "identity")

    try:
        result = await drive(infer, submitters, duration_s)
        st = rt.stats("identity")
        result["mean_batch"] = st["batch_size"]["mean"]
        result["core_e2e_p50_us"] = st["latency_us"]["end_to_end"]["p50"]
        return result
    finally:
        rt.close()


async def run_naive(submitters: int, duration_s: float, max_delay_us: float) -> dict[str, float]:
    b = NaiveBatcher(identity, 64, max_delay_us / 1e6)
    b.start()
    try:
        return await drive(b.infer, submitters, duration_s)
    finally:
        await b.stop()


# --case keys and the labels of the cases they select.
CASE_KEYS = {
    "64": "64 submitters, delay 0 (default)",
    "64-delay": "64 submitters, delay 500us",
    "1": "1 submitter, delay 0 (default)",
    "1-delay": "1 submitter, delay 500us",
    "many": "infer_many, 64 per call",
    "sync": "infer_sync, 32 threads",
}


def measured(run: Any) -> dict[str, float]:
    """One run's results plus its process CPU time per request (all threads), in µs."""
    cpu0 = time.process_time()
    result: dict[str, float] = run()
    result["cpu_us"] = (time.process_time() - cpu0) * 1e6 / max(1, result["requests"])
    return result


def median_of(results: list[dict[str, float]]) -> dict[str, float]:
    """The median of every figure over rounds."""
    return {k: statistics.median(r[k] for r in results) for k in results[0]}


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--duration", type=float, default=5.0, help="seconds per measurement (default 5)"
    )
    ap.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop", help="event loop")
    ap.add_argument("--json", default="bench-results/bench_core.json", help="JSON output path")
    ap.add_argument(
        "--smoke", action="store_true", help="a few seconds in all, to check the script runs"
    )
    ap.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="alternate aiarch and the baseline this many times per case; report medians",
    )
    ap.add_argument(
        "--case",
        action="append",
        choices=list(CASE_KEYS),
        help="run only this case (repeatable): "
        + ", ".join(f"{k}={v}" for k, v in CASE_KEYS.items()),
    )
    args = ap.parse_args()
    if args.rounds < 1:
        ap.error("--rounds must be >= 1")
    duration = 0.3 if args.smoke else args.duration

    if args.loop == "uvloop":
        import uvloop

        runner = uvloop.run
    else:
        runner = asyncio.run

    # (label, submitters, max_delay_us): the default (no fill wait) and an
    # opt-in 500 us fill wait, under load and at one submitter, where the wait
    # is paid in full by every request.
    cases = [
        ("64 submitters, delay 0 (default)", 64, 0.0),
        ("64 submitters, delay 500us", 64, 500.0),
        ("1 submitter, delay 0 (default)", 1, 0.0),
        ("1 submitter, delay 500us", 1, 500.0),
    ]
    # (label, aiarch run, baseline run, baseline name)
    runs: list[tuple[str, Any, Any, str, int, float]] = [
        (
            label,
            lambda n=n, d=delay: runner(run_aiarch(n, duration, d)),
            lambda n=n, d=delay: runner(run_naive(n, duration, d)),
            "asyncio baseline",
            n,
            delay,
        )
        for label, n, delay in cases
    ]
    runs.append(
        (
            "infer_many, 64 per call",
            lambda: runner(run_aiarch_many(64, duration)),
            lambda: runner(run_naive_many(64, duration)),
            "asyncio baseline (gather)",
            1,
            0.0,
        )
    )
    runs.append(
        (
            "infer_sync, 32 threads",
            lambda: run_aiarch_threads(32, duration),
            lambda: run_threaded_baseline(32, duration),
            "threaded baseline",
            32,
            0.0,
        )
    )
    wanted = {CASE_KEYS[k] for k in args.case} if args.case else None
    rows, results = [], []
    for label, run_ours, run_base, base_name, n, delay in runs:
        if wanted is not None and label not in wanted:
            continue
        rounds_ours, rounds_base = [], []
        for _ in range(args.rounds):
            rounds_ours.append(measured(run_ours))
            rounds_base.append(measured(run_base))
        ours, base = median_of(rounds_ours), median_of(rounds_base)
        ratios = [o["rps"] / b["rps"] for o, b in zip(rounds_ours, rounds_base)]
        cpu_ratios = [b["cpu_us"] / o["cpu_us"] for o, b in zip(rounds_ours, rounds_base)]
        ratio = statistics.median(ratios)
        cpu_ratio = statistics.median(cpu_ratios)
        rows.append(
            [
                label,
                "aiarch",
                ours["rps"],
                ours["p50_us"],
                ours["p99_us"],
                ours["p999_us"],
                ours["mean_batch"],
                ours["cpu_us"],
                ratio,
                cpu_ratio,
            ]
        )
        rows.append(
            [
                label,
                base_name,
                base["rps"],
                base["p50_us"],
                base["p99_us"],
                base["p999_us"],
                "",
                base["cpu_us"],
                1.0,
                1.0,
            ]
        )
        results.append(
            {
                "case": label,
                "submitters": n,
                "max_delay_us": delay,
                "aiarch": ours,
                "baseline": base,
                "throughput_ratio": ratio,
                "cpu_efficiency_ratio": cpu_ratio,
                "rounds": [{"aiarch": o, "baseline": b} for o, b in zip(rounds_ours, rounds_base)],
            }
        )
    print_table(
        f"Runtime vs pure-Python batchers (identity model, 1 row x {FEATURES} float32, "
        f"{args.loop}, {duration:g}s per point, median of {args.rounds} round(s); "
        "x baseline: throughput, x cpu: baseline CPU time per request / ours)",
        [
            "case",
            "impl",
            "req/s",
            "p50 us",
            "p99 us",
            "p99.9 us",
            "mean batch",
            "cpu us/req",
            "x baseline",
            "x cpu",
        ],
        rows,
    )
    write_json(
        args.json,
        "bench_core",
        {"loop": args.loop, "duration_s": duration, "rounds": args.rounds, "cases": results},
    )


if __name__ == "__main__":
    main()
