"""Capacity at a p99 SLO: binary search over the offered rate, replicas for a peak, and the
Model-Analyzer-like sweep over server configurations.

A rate passes when the median p99 over `repeats` steady open-loop windows stays within the SLO,
errors stay within `max_error_rate` and the generator kept its schedule. The search brackets
the answer between a passing and a failing rate and stops when the bracket is narrower than
`tolerance` of the failing rate; the result carries the spread of its windows' p99 and
throughput and the bracket itself.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from aiarch.errors import InvalidArgumentError, UnavailableError

from .load import LoadSettings, Point

__all__ = [
    "CapacityResult",
    "CapacitySettings",
    "GeneratorBehindError",
    "RateProbe",
    "SweepConfig",
    "find_capacity",
    "knee_rate",
    "replicas_needed",
    "serve_process",
    "sweep_configs",
]

RunPoint = Callable[[LoadSettings], Point]


class GeneratorBehindError(UnavailableError):
    """The generator could not keep the schedule at a rate whose latency met the SLO, so the
    search cannot tell whether that rate passes."""


Notify = Callable[[str], None]


@dataclass
class CapacitySettings:
    """How the capacity search runs."""

    slo_p99_ms: float = 0.0
    """p99 latency objective (ms), measured from each request's intended send time."""
    repeats: int = 3
    """Steady windows per probed rate; the median p99 decides, the spread is reported."""
    window_s: float = 3.0
    """Length of each measured window."""
    warmup_s: float = 1.0
    """Load at the probed rate before its first window."""
    tolerance: float = 0.05
    """Stop when (failing - passing) / failing rate is at most this."""
    start_rps: float = 0.0
    """First upper bracket; 0 = the closed-loop throughput of a short probe, plus 20 %."""
    max_rps: float = 1e7
    """Never offer more than this."""
    max_steps: int = 16
    """Most probed rates after the first bracket."""
    max_error_rate: float = 0.001
    """Largest tolerated fraction of failed requests in a window."""
    probe_concurrency: int = 32
    """Closed-loop concurrency of the throughput probe."""
    mode: str = "constant"
    """Open-loop arrivals: constant or poisson."""

    def validate(self) -> None:
        if not (self.slo_p99_ms > 0 and math.isfinite(self.slo_p99_ms)):
            raise InvalidArgumentError(f"--slo-p99-ms must be > 0, got {self.slo_p99_ms}")
        if self.repeats < 1:
            raise InvalidArgumentError(f"--repeats must be >= 1, got {self.repeats}")
        if self.window_s <= 0:
            raise InvalidArgumentError(f"--window-s must be > 0, got {self.window_s}")
        if not 0 < self.tolerance < 1:
            raise InvalidArgumentError(f"--tolerance must be in (0, 1), got {self.tolerance}")
        if self.mode not in ("constant", "poisson"):
            raise InvalidArgumentError(f"capacity needs open-loop arrivals, got {self.mode!r}")


@dataclass
class RateProbe:
    """Every window measured at one offered rate and the verdict."""

    rate: float
    """Offered requests per second."""
    windows: list[Point]
    """The steady windows (the warm-up is not among them)."""
    passed: bool
    """Median p99 within the SLO, errors within bounds and the schedule kept."""
    reason: str = ""
    """Why it failed ("" when it passed)."""

    @property
    def p99_ms(self) -> float:
        """Median over windows of each window's p99."""
        return statistics.median(w.latency_us["p99"] for w in self.windows) / 1e3

    def spread(self) -> dict[str, float]:
        """Range of the windows' p99 (ms) and throughput (requests/s)."""
        p99 = [w.latency_us["p99"] / 1e3 for w in self.windows]
        tput = [w.throughput_rps for w in self.windows]
        return {
            "p99_ms_min": min(p99),
            "p99_ms_median": statistics.median(p99),
            "p99_ms_max": max(p99),
            "throughput_min": min(tput),
            "throughput_median": statistics.median(tput),
            "throughput_max": max(tput),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "rate": self.rate,
            "passed": self.passed,
            "reason": self.reason,
            "p99_ms": self.p99_ms,
            "spread": self.spread(),
            "windows": [w.to_dict() for w in self.windows],
        }


@dataclass
class CapacityResult:
    """The highest rate found within the SLO, with its evidence."""

    slo_p99_ms: float
    """The objective searched against."""
    capacity_rps: float
    """Highest passing offered rate (0 when even the lowest probed rate failed)."""
    failing_rps: float
    """Lowest failing rate found: the capacity lies in [capacity_rps, failing_rps)."""
    probes: list[RateProbe] = field(default_factory=list)
    """Every probed rate, in the order probed."""
    closed_loop_probe: Point | None = None
    """The closed-loop throughput probe that set the first bracket, if one ran."""
    knee_rps: float = 0.0
    """Last offered rate before p99 doubled its low-load value."""

    @property
    def at_capacity(self) -> RateProbe | None:
        for p in self.probes:
            if p.passed and p.rate == self.capacity_rps:
                return p
        return None

    def to_dict(self) -> dict[str, Any]:
        best = self.at_capacity
        # No failing rate was found when every rate up to --max-rps passed: JSON has no
        # infinity, so the bound is null and the reason says why.
        failing = self.failing_rps if math.isfinite(self.failing_rps) else None
        return {
            "slo_p99_ms": self.slo_p99_ms,
            "capacity_rps": self.capacity_rps,
            "failing_rps": failing,
            "failing_rps_reason": None
            if failing is not None
            else f"every probed rate passed, up to the rate cap {self.capacity_rps:g} req/s "
            "(--max-rps); the capacity is at least that",
            "bracket_rps": [self.capacity_rps, failing],
            "spread": best.spread() if best else None,
            "knee_rps": self.knee_rps,
            "closed_loop_probe": self.closed_loop_probe.to_dict()
            if self.closed_loop_probe
            else None,
            "probes": [p.to_dict() for p in self.probes],
        }


def replicas_needed(peak_rps: float, capacity_rps: float, headroom: float) -> int:
    """Replicas that carry `peak_rps` with each at most (1 - headroom) of its capacity."""
    if not 0 <= headroom < 1:
        raise InvalidArgumentError(f"--headroom must be in [0, 1), got {headroom}")
    if peak_rps <= 0:
        raise InvalidArgumentError(f"--peak-rps must be > 0, got {peak_rps}")
    if capacity_rps <= 0:
        raise InvalidArgumentError("no rate met the SLO, so no number of replicas does")
    return max(1, math.ceil(peak_rps / (capacity_rps * (1.0 - headroom)) - 1e-9))


def knee_rate(points: list[tuple[float, float]]) -> float:
    """The last offered rate before p99 exceeds twice its value at the lowest rate.

    `points`: (rate, p99) pairs in any order. 0 when there are fewer than two points.
    """
    pts = sorted(p for p in points if p[0] > 0)
    if len(pts) < 2:
        return 0.0
    base = pts[0][1]
    knee = pts[0][0]
    for rate, p99 in pts[1:]:
        if p99 > 2 * base:
            break
        knee = rate
    return knee


def _probe_rate(
    run: RunPoint, load: LoadSettings, cfg: CapacitySettings, rate: float, notify: Notify
) -> RateProbe:
    windows: list[Point] = []
    for k in range(cfg.repeats):
        settings = LoadSettings(
            mode=cfg.mode,
            rate=rate,
            connections=load.connections,
            threads=load.threads,
            warmup_s=cfg.warmup_s if k == 0 else 0.0,
            duration_s=cfg.window_s,
            seed=load.seed + k,
            drain_timeout_s=load.drain_timeout_s,
            max_lag_fraction=load.max_lag_fraction,
        )
        w = run(settings)
        windows.append(w)
        if not w.valid and w.latency_us["p99"] / 1e3 <= cfg.slo_p99_ms:
            # Latency looks fine but the schedule was not kept: the answer would be wrong.
            raise GeneratorBehindError(f"at {rate:.1f} req/s {w.refused}")
    probe = RateProbe(rate=rate, windows=windows, passed=True)
    worst_errors = max(w.error_count / max(1, w.scheduled) for w in windows)
    if probe.p99_ms > cfg.slo_p99_ms:
        probe.passed = False
        probe.reason = f"median p99 {probe.p99_ms:.2f} ms > SLO {cfg.slo_p99_ms:g} ms"
    elif worst_errors > cfg.max_error_rate:
        probe.passed = False
        probe.reason = f"error rate {worst_errors:.2%} > {cfg.max_error_rate:.2%}"
    notify(
        f"{rate:10.1f} req/s  p99 {probe.p99_ms:9.2f} ms  "
        f"{'pass' if probe.passed else 'FAIL: ' + probe.reason}"
    )
    return probe


def find_capacity(
    run: RunPoint,
    load: LoadSettings,
    cfg: CapacitySettings,
    notify: Notify = lambda _msg: None,
) -> CapacityResult:
    """Binary search for the highest rate whose median p99 stays within the SLO.

    `run` measures one point for the given settings (HTTP or in-process); `load` supplies the
    connection pool, threads and seed.
    """
    cfg.validate()
    result = CapacityResult(slo_p99_ms=cfg.slo_p99_ms, capacity_rps=0.0, failing_rps=0.0)
    hi = cfg.start_rps
    if hi <= 0:
        probe = run(
            LoadSettings(
                mode="closed",
                concurrency=cfg.probe_concurrency,
                connections=cfg.probe_concurrency,
                threads=load.threads,
                warmup_s=min(cfg.warmup_s, 1.0),
                duration_s=cfg.window_s,
                drain_timeout_s=load.drain_timeout_s,
            )
        )
        result.closed_loop_probe = probe
        notify(f"closed-loop probe: {probe.throughput_rps:.1f} req/s at {cfg.probe_concurrency}")
        if probe.throughput_rps <= 0:
            raise UnavailableError(
                f"the closed-loop probe completed no request (errors: {probe.errors or 'none'})"
            )
        hi = probe.throughput_rps * 1.2
    hi = min(hi, cfg.max_rps)
    lo = 0.0
    # Grow the upper bracket until it fails.
    while True:
        p = _probe_rate(run, load, cfg, hi, notify)
        result.probes.append(p)
        if not p.passed:
            break
        lo = hi
        if hi >= cfg.max_rps:
            result.capacity_rps, result.failing_rps = lo, math.inf
            break
        hi = min(hi * 2, cfg.max_rps)
    if result.failing_rps != math.inf:
        steps = 0
        while steps < cfg.max_steps and (hi - lo) / hi > cfg.tolerance:
            mid = (lo + hi) / 2 if lo > 0 else hi / 2
            p = _probe_rate(run, load, cfg, mid, notify)
            result.probes.append(p)
            if p.passed:
                lo = mid
            else:
                hi = mid
            steps += 1
            if lo == 0 and hi < cfg.max_rps * 1e-6:
                break
        result.capacity_rps, result.failing_rps = lo, hi
    result.knee_rps = knee_rate([(p.rate, p.p99_ms) for p in result.probes])
    return result


# ------------------------------------------------------------------ sweep


@dataclass(frozen=True)
class SweepConfig:
    """One server configuration of a sweep."""

    source: str
    """Model source for `aiarch serve --model NAME=SOURCE` (precision variants differ here)."""
    max_batch_size: int
    """--max-batch-size."""
    max_delay_us: int
    """--max-delay-us."""
    instances: int
    """--instances."""

    def label(self) -> str:
        src = self.source.rsplit("/", 1)[-1]
        return f"{src} b{self.max_batch_size} d{self.max_delay_us} i{self.instances}"


def sweep_configs(
    sources: list[str], batch_sizes: list[int], delays_us: list[int], instances: list[int]
) -> list[SweepConfig]:
    """Every combination, in a stable order."""
    return [
        SweepConfig(s, b, d, i)
        for s, b, d, i in itertools.product(sources, batch_sizes, delays_us, instances)
    ]


@contextmanager
def serve_process(
    model: str,
    cfg: SweepConfig,
    extra_args: list[str] | None = None,
    ready_timeout_s: float = 120.0,
) -> Iterator[str]:
    """Runs `aiarch serve` with one sweep configuration on a free loopback port; yields its URL.

    The server is stopped with SIGTERM (then killed) when the block exits.
    """
    from aiarch.serving.process import ServerProcess

    args = [
        "--model",
        f"{model}={cfg.source}",
        "--max-batch-size",
        str(cfg.max_batch_size),
        "--max-delay-us",
        str(cfg.max_delay_us),
        "--instances",
        str(cfg.instances),
        "--log-level",
        "warning",
        *(extra_args or []),
    ]
    server = ServerProcess(args)
    try:
        try:
            server.wait_ready(ready_timeout_s)
        except (RuntimeError, TimeoutError) as e:
            raise UnavailableError(f"aiarch serve for {cfg.label()}: {str(e)[-2000:]}") from None
        yield server.base
    finally:
        server.stop(30)
