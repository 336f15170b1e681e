"""One measured load point: open loop (constant / Poisson) or closed loop, against an HTTP
target (native generator) or an in-process Runtime (asyncio).

Latency of an open-loop request is measured from its intended send time, so a stalled server
or a generator that had to wait shows up in the tail (no coordinated omission). Every point
carries the generator's own send lag; a point whose schedule was not kept (mean send lag above
`max_lag_fraction` of the measurement interval: the window's requests left so late that the
rate it offered was not the one asked for) is marked refused and its latencies are not reported
as a result. Lag never hides latency: it is part of the latency measured from intended times.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from aiarch.errors import InvalidArgumentError

from .target import HttpTarget, ServerSnapshot, breakdown

if TYPE_CHECKING:
    from aiarch import _core

__all__ = ["LoadSettings", "Point", "run_http", "run_in_process"]

# perf_analyzer's column names, so numbers compare directly (latencies in µs).
COLUMNS = [
    "Request Rate",
    "Concurrency",
    "Inferences/Second",
    "Avg latency",
    "p50 latency",
    "p90 latency",
    "p95 latency",
    "p99 latency",
    "p99.9 latency",
    "Max latency",
    "Server Queue",
    "Server Compute Infer",
    "Errors",
    "Send Lag p99",
]
_PERCENTILES = (("p50", 50.0), ("p90", 90.0), ("p95", 95.0), ("p99", 99.0), ("p999", 99.9))

Progress = Callable[[float, str], None]


@dataclass
class LoadSettings:
    """How one point is driven."""

    mode: str = "constant"
    """constant or poisson (open loop, `rate` requests/s) or closed (`concurrency` in flight)."""
    rate: float = 0.0
    """Open loop: offered requests per second."""
    concurrency: int = 1
    """Closed loop: requests in flight (one per connection)."""
    connections: int = 64
    """Open loop: connection pool; a request due while all are busy waits (and counts as lag)."""
    threads: int = 1
    """Generator worker threads."""
    warmup_s: float = 1.0
    """Load before the measured window; not recorded."""
    duration_s: float = 5.0
    """Measured window (the measurement interval); 0 = bounded by `requests` only."""
    requests: int = 0
    """Measured requests; 0 = bounded by `duration_s` only."""
    seed: int = 1
    """Poisson arrival seed."""
    drain_timeout_s: float = 10.0
    """After the schedule, how long to wait for replies before counting timeouts."""
    max_lag_fraction: float = 0.01
    """Refuse a point whose mean send lag exceeds this fraction of the measurement interval."""

    def validate(self) -> None:
        if self.mode not in ("constant", "poisson", "closed"):
            raise InvalidArgumentError(
                f"mode must be constant, poisson or closed, got {self.mode!r}"
            )
        if self.mode != "closed" and not (self.rate > 0 and math.isfinite(self.rate)):
            raise InvalidArgumentError(f"open-loop load needs a rate > 0, got {self.rate}")
        if self.mode == "closed" and self.concurrency < 1:
            raise InvalidArgumentError(f"concurrency must be >= 1, got {self.concurrency}")
        if self.duration_s <= 0 and self.requests <= 0:
            raise InvalidArgumentError("give a duration > 0 or a request count > 0")
        if self.warmup_s < 0:
            raise InvalidArgumentError(f"warm-up must be >= 0 s, got {self.warmup_s}")
        if self.threads < 1 or self.connections < self.threads:
            raise InvalidArgumentError(
                f"need threads >= 1 and connections >= threads "
                f"(threads={self.threads}, connections={self.connections})"
            )


@dataclass
class Point:
    """What one measured window recorded."""

    mode: str
    """constant, poisson or closed."""
    offered_rps: float
    """Open loop: the scheduled rate; closed loop: 0."""
    concurrency: int
    """Closed loop: requests in flight; open loop: 0."""
    window_s: float
    """Span of the measured requests (first intended send → last reply)."""
    scheduled: int
    """Measured requests the schedule called for."""
    completed: int
    """Replies received (any status)."""
    succeeded: int
    """2xx replies."""
    throughput_rps: float
    """Successful replies per second of the window ("Inferences/Second")."""
    latency_us: dict[str, float]
    """Percentiles (p50, p90, p95, p99, p999), mean and max, from the intended send time."""
    service_us: dict[str, float]
    """The same from the actual write: what a closed-loop tool would have recorded."""
    send_lag_us: dict[str, float]
    """The generator's lag behind its schedule (mean, p50, p99, max)."""
    errors: dict[str, int]
    """Failed requests by HTTP status, plus io / timeout / unsent."""
    waited_for_connection: int
    """Open loop: requests due while every connection was busy."""
    server: dict[str, float] = field(default_factory=dict)
    """Per-request server queue and compute time (µs) from the stats endpoint, when it has one."""
    refused: str = ""
    """Why this point is not a valid measurement ("" when it is)."""

    @property
    def valid(self) -> bool:
        return not self.refused

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def row(self) -> dict[str, Any]:
        """The point under perf_analyzer's column names (latencies in µs)."""
        lat = self.latency_us
        return {
            "Request Rate": round(self.offered_rps, 2) if self.mode != "closed" else "",
            "Concurrency": self.concurrency if self.mode == "closed" else "",
            "Inferences/Second": round(self.throughput_rps, 2),
            "Avg latency": round(lat["mean"]),
            "p50 latency": round(lat["p50"]),
            "p90 latency": round(lat["p90"]),
            "p95 latency": round(lat["p95"]),
            "p99 latency": round(lat["p99"]),
            "p99.9 latency": round(lat["p999"]),
            "Max latency": round(lat["max"]),
            "Server Queue": round(self.server.get("server_queue_us", 0.0)),
            "Server Compute Infer": round(self.server.get("server_compute_us", 0.0)),
            "Errors": self.error_count,
            "Send Lag p99": round(self.send_lag_us["p99"]),
        }

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["valid"] = self.valid
        return d


def _summary_us(h: Any) -> dict[str, float]:
    if h is None or h.total_count == 0:
        return {**{k: 0.0 for k, _ in _PERCENTILES}, "mean": 0.0, "max": 0.0}
    out = {k: h.percentile(p) / 1e3 for k, p in _PERCENTILES}
    out["mean"] = h.mean / 1e3
    out["max"] = h.max / 1e3
    return out


def _lag_us(h: Any) -> dict[str, float]:
    if h is None or h.total_count == 0:
        return {"mean": 0.0, "p50": 0.0, "p99": 0.0, "max": 0.0}
    return {
        "mean": h.mean / 1e3,
        "p50": h.percentile(50) / 1e3,
        "p99": h.percentile(99) / 1e3,
        "max": h.max / 1e3,
    }


def _throughput(r: _core.LoadResult, settings: LoadSettings) -> float:
    """Successful replies per second: those that arrived inside the measured window when it
    has a duration (perf_analyzer's definition), else the measured ones over their span."""
    if settings.duration_s > 0:
        return float(r["succeeded_in_window"]) / settings.duration_s
    window = float(r["window_s"])
    return float(r["succeeded"]) / window if window > 0 else 0.0


def _judge(point: Point, settings: LoadSettings, stopped: bool) -> None:
    """Refuses a point whose schedule was not kept."""
    if stopped:
        point.refused = "the run was stopped before its end"
        return
    if point.mode == "closed":
        return
    interval_s = settings.duration_s if settings.duration_s > 0 else point.window_s
    budget_us = settings.max_lag_fraction * interval_s * 1e6
    lag = point.send_lag_us["mean"]
    if lag > budget_us:
        why = (
            f"the generator fell behind: mean send lag {lag / 1e3:.1f} ms > "
            f"{settings.max_lag_fraction:.0%} of the {interval_s:g} s measurement interval"
        )
        if point.waited_for_connection:
            why += (
                f"; {point.waited_for_connection} requests found all {settings.connections} "
                "connections busy (raise --connections, or the target is saturated)"
            )
        point.refused = why


def run_http(
    target: HttpTarget,
    requests: list[bytes],
    settings: LoadSettings,
    progress: Progress | None = None,
) -> Point:
    """Drives `target` with the native generator for one point. Blocks (GIL released)."""
    from aiarch import _core

    settings.validate()
    closed = settings.mode == "closed"
    connections = settings.concurrency if closed else settings.connections
    gen = _core.LoadGenerator(
        target.host,
        target.port,
        requests,
        mode=settings.mode,
        rate_per_s=settings.rate,
        threads=min(settings.threads, connections),
        connections=connections,
        warmup_s=settings.warmup_s,
        duration_s=settings.duration_s,
        max_requests=settings.requests,
        drain_timeout_s=settings.drain_timeout_s,
        seed=settings.seed,
    )
    before: ServerSnapshot | None = target.stats() if settings.warmup_s <= 0 else None
    gen.start()
    total = settings.warmup_s + settings.duration_s
    try:
        while not gen.wait(0.02):
            p = gen.progress()
            if before is None and p["measuring"]:
                before = target.stats()
            if progress is not None:
                frac = min(1.0, p["elapsed_s"] / total) if total > 0 else 0.0
                progress(frac, f"sent {p['sent']} done {p['completed']} errors {p['errors']}")
    except BaseException:
        gen.stop()
        gen.wait()
        raise
    after = target.stats()
    r = gen.result()
    errors: dict[str, int] = {
        str(code): int(n) for code, n in r["status_counts"].items() if not 200 <= code < 300
    }
    for key in ("io_errors", "timeouts", "unsent"):
        if r[key]:
            errors[key.removesuffix("_errors").removesuffix("s")] = int(r[key])
    window = float(r["window_s"])
    point = Point(
        mode=settings.mode,
        offered_rps=0.0 if closed else settings.rate,
        concurrency=settings.concurrency if closed else 0,
        window_s=window,
        scheduled=int(r["scheduled"]),
        completed=int(r["completed"]),
        succeeded=int(r["succeeded"]),
        throughput_rps=_throughput(r, settings),
        latency_us=_summary_us(r["latency"]),
        service_us=_summary_us(r["service"]),
        send_lag_us=_lag_us(r["send_lag"]),
        errors=errors,
        waited_for_connection=int(r["waited_for_connection"]),
        server=breakdown(before, after),
    )
    if r["first_error"] and not point.succeeded:
        point.refused = f"no request succeeded: {r['first_error']}"
        return point
    _judge(point, settings, bool(r["stopped"]))
    return point


def run_in_process(
    runtime: Any,
    model: str,
    inputs: Any,
    settings: LoadSettings,
    progress: Progress | None = None,
) -> Point:
    """Drives `runtime.infer(model, inputs)` directly (no HTTP) for one point, on uvloop when
    available, with the same schedule, recording and refusal rules as the HTTP generator."""
    settings.validate()
    try:
        import uvloop

        runner: Callable[[Any], Any] = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        runner = asyncio.run
    point: Point = runner(_in_process(runtime, model, inputs, settings, progress))
    return point


async def _in_process(
    runtime: Any, model: str, inputs: Any, settings: LoadSettings, progress: Progress | None
) -> Point:
    from aiarch import _core

    latency = _core.Histogram()
    service = _core.Histogram()
    lag = _core.Histogram()
    errors: dict[str, int] = {}
    counts = {"scheduled": 0, "completed": 0, "succeeded": 0, "in_window": 0}
    first_ns: list[int] = []
    last_ns = [0]
    closed = settings.mode == "closed"
    rng = random.Random(settings.seed)
    t0 = time.monotonic_ns() + 1_000_000
    start_ns = t0 + int(settings.warmup_s * 1e9)
    end_ns = start_ns + int(settings.duration_s * 1e9) if settings.duration_s > 0 else None
    limit = settings.requests or None
    loop = asyncio.get_running_loop()
    stats_before = _runtime_totals(runtime, model)
    stats_box: list[dict[str, int] | None] = [None if settings.warmup_s > 0 else stats_before]

    async def one(intended: int, measured: bool) -> None:
        sent = time.monotonic_ns()
        if measured and not closed:
            lag.record(sent - intended)
        ok = True
        try:
            await runtime.infer(model, inputs)
        except Exception as e:
            ok = False
            if measured:
                key = type(e).__name__
                errors[key] = errors.get(key, 0) + 1
        now = time.monotonic_ns()
        if ok and now >= start_ns and (end_ns is None or now < end_ns):
            counts["in_window"] += 1
        if measured:
            counts["completed"] += 1
            counts["succeeded"] += ok
            latency.record(now - intended)
            service.record(now - sent)
            last_ns[0] = max(last_ns[0], now)

    def measured_now(t: int) -> bool:
        if t < start_ns:
            return False
        if stats_box[0] is None:
            stats_box[0] = _runtime_totals(runtime, model)
        if not first_ns:
            first_ns.append(t)
        return True

    def finished(t: int) -> bool:
        if end_ns is not None and t >= end_ns:
            return True
        return limit is not None and counts["scheduled"] >= limit

    def report(t: int) -> None:
        if progress is not None:
            total = settings.warmup_s + settings.duration_s
            frac = min(1.0, (t - t0) / 1e9 / total) if total > 0 else 0.0
            progress(frac, f"done {counts['completed']}")

    tasks: set[asyncio.Task[None]] = set()
    if closed:

        async def worker() -> None:
            while True:
                t = time.monotonic_ns()
                if finished(t):
                    return
                measured = measured_now(t)
                counts["scheduled"] += measured
                await one(t, measured)

        workers = [loop.create_task(worker()) for _ in range(settings.concurrency)]
        while not all(w.done() for w in workers):
            report(time.monotonic_ns())
            await asyncio.sleep(0.05)
        for w in workers:
            w.result()
    else:
        interval = 1e9 / settings.rate
        intended = float(t0)
        last_report = 0
        while True:
            t = int(intended)
            if finished(t):
                break
            now = time.monotonic_ns()
            if t > now:
                await asyncio.sleep((t - now) / 1e9)
            measured = measured_now(t)
            counts["scheduled"] += measured
            task = loop.create_task(one(t, measured))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            if now - last_report > 50_000_000:
                report(now)
                last_report = now
            gap = (
                -math.log(1.0 - rng.random()) * interval if settings.mode == "poisson" else interval
            )
            intended += gap
        if tasks:
            await asyncio.wait(tasks, timeout=settings.drain_timeout_s)
        for task in list(tasks):
            task.cancel()
            errors["timeout"] = errors.get("timeout", 0) + 1
    after = _runtime_totals(runtime, model)
    window = (last_ns[0] - first_ns[0]) / 1e9 if first_ns and last_ns[0] else 0.0
    point = Point(
        mode=settings.mode,
        offered_rps=0.0 if closed else settings.rate,
        concurrency=settings.concurrency if closed else 0,
        window_s=window,
        scheduled=counts["scheduled"],
        completed=counts["completed"],
        succeeded=counts["succeeded"],
        throughput_rps=counts["in_window"] / settings.duration_s
        if settings.duration_s > 0
        else (counts["succeeded"] / window if window > 0 else 0.0),
        latency_us=_summary_us(latency.snapshot()),
        service_us=_summary_us(service.snapshot()),
        send_lag_us=_lag_us(lag.snapshot()),
        errors=errors,
        waited_for_connection=0,
        server=_runtime_breakdown(stats_box[0], after),
    )
    _judge(point, settings, stopped=False)
    return point


def _runtime_totals(runtime: Any, model: str) -> dict[str, int]:
    s = runtime.stats(model)
    return {
        "queue_ns": int(s["totals_ns"]["queue"]),
        "execution_ns": int(s["totals_ns"]["execution"]),
        "success": int(s["requests"]["success"]),
        "batches": int(s["batches"]),
    }


def _runtime_breakdown(before: dict[str, int] | None, after: dict[str, int]) -> dict[str, float]:
    if before is None:
        return {}
    n = after["success"] - before["success"]
    b = after["batches"] - before["batches"]
    return {
        "server_queue_us": (after["queue_ns"] - before["queue_ns"]) / n / 1e3 if n > 0 else 0.0,
        "server_compute_us": (after["execution_ns"] - before["execution_ns"]) / b / 1e3
        if b > 0
        else 0.0,
        "server_success": float(n),
        "server_fail": 0.0,
    }
