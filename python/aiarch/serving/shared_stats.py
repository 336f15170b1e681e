"""One view of a multi-worker server: every worker's counters, histograms and drift counts,
merged at scrape time.

Each worker of `aiarch serve --workers N` publishes a `WorkerSnapshot` — its Prometheus
families, its runtime stats and its monitors' mergeable snapshots — into a run directory the
supervisor creates (on tmpfs when there is one) and names in the workers' environment:

- `worker-{slot}.msgpack`: the latest snapshot of the live worker in that slot, replaced
  atomically (write a temp file, rename) every `PUBLISH_PERIOD_S` and at every scrape, so what
  a scrape reported is never more than what the file holds;
- `retired.msgpack`: the monotonic part (counters, histograms, drift counts) of every worker
  that died, folded in by the supervisor when it reaps the worker and before it starts the
  replacement. It lists the workers it absorbed, so a reader that still sees a dead worker's
  own file skips it: nothing is counted twice, and counters never go backwards across a
  restart (a worker dead between two publishes loses at most that period's counts).

The worker answering `/metrics`, `/stats` or `/monitor` publishes its live snapshot, reads the
others and merges: counters and histogram buckets add, additive gauges (queue rows, in-flight
batches, connections, cache bytes) add over live workers, readiness is the minimum, and latency
percentiles, input and output drift scores are recomputed from the merged histograms and bin
counts. An alert rule is active when it fires in any live worker (each worker evaluates its
rules on its own traffic; a dead worker's alerts end with it), with the highest value any of
them measured.
A single-worker server has no run directory and does none of this.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from aiarch.monitor.monitor import WINDOWS, MonitorSnapshot, merge_snapshots

__all__ = [
    "FEEDBACK_PAIRS_PUBLISHED",
    "PUBLISH_PERIOD_S",
    "RUN_DIR_ENV",
    "WORKER_ENV",
    "AlertState",
    "Family",
    "FeedbackPart",
    "MonitorPart",
    "Peers",
    "SharedStats",
    "WorkerSnapshot",
    "absorb_dead_worker",
    "collect_families",
    "merge_families",
    "merge_feedback_parts",
    "merge_monitor_parts",
    "merge_stats",
    "publish_periodically",
    "stats_key",
    "to_metrics",
]

log = logging.getLogger("aiarch.serving")

RUN_DIR_ENV = "AIARCH_STATS_DIR"
"""Environment variable naming the run directory of a supervised worker (unset: one worker)."""
WORKER_ENV = "AIARCH_WORKER_ID"
"""Environment variable holding `{slot}:{generation}` of a supervised worker."""
PUBLISH_PERIOD_S = 0.5
"""How often a worker republishes its snapshot between scrapes (bounds what a kill loses)."""

RETIRED = "retired.msgpack"

_ADDITIVE_GAUGES = frozenset(
    {
        "aiarch_queue_rows",
        "aiarch_in_flight_batches",
        "aiarch_service_rate_rows_per_second",
        "aiarch_cache_bytes",
        "aiarch_cache_entries",
        "aiarch_http_connections",
    }
)
"""Gauges of one worker's share of the server: the server's value is the sum over live workers."""
_MIN_GAUGES = frozenset({"aiarch_model_ready", "aiarch_server_ready"})
"""Readiness: the server is ready when every live worker is. Other gauges (route weights, set
by configuration and equal in every worker) are the answering worker's own value."""
_MONOTONIC_TYPES = frozenset({"counter", "histogram", "summary"})

# Runtime-stats keys that do not add across workers: taken as the maximum, or dropped (means
# and percentiles; the merged histograms give them back where they are exported).
_MAX_STAT_KEYS = frozenset({"last_inference_ms", "max"})
_DROPPED_STAT_KEYS = frozenset({"latency_us", "mean", "p50_us", "p99_us"})
# Stats keys that describe the present, not a history: only live workers contribute.
_STAT_GAUGES = frozenset(
    {"queue_rows", "in_flight_batches", "service_rate_rows_per_s", "bytes", "entries"}
)


class Family(msgspec.Struct, array_like=True):
    """One Prometheus metric family as collected (samples keep their full names)."""

    name: str
    type: str
    documentation: str
    unit: str
    samples: list[tuple[str, dict[str, str], float]]


class AlertState(msgspec.Struct):
    """One alert rule's state in one worker (or, merged, in the server)."""

    active: bool
    value: float
    """The rule's last value; NaN when its window had no traffic."""


class MonitorPart(msgspec.Struct):
    """One worker's monitor of one model version: the mergeable snapshot, its counters, its
    alert states and its last output window."""

    snapshot: MonitorSnapshot
    counters: dict[str, int]
    alerts: dict[str, AlertState] = {}
    """Rule name → state. The present, not a history: only live workers contribute."""
    output_window: list[int] = []
    """Output bin counts of the last closed window ([] with no output profile or no window)."""


class FeedbackPart(msgspec.Struct):
    """One worker's label feedback of one model: its latest joined (prediction, label) pairs
    per version within the window, and its outcome counters (`"version|outcome"` -> n)."""

    metric: str
    pairs: dict[str, tuple[list[float], list[float]]]
    counters: dict[str, int]


FEEDBACK_PAIRS_PUBLISHED = 10_000
"""Most recent joined labels per version a worker publishes for the merged quality."""


def merge_feedback_parts(parts: list[FeedbackPart]) -> FeedbackPart:
    """One model's feedback over several workers: pairs concatenated, counters summed."""
    pairs: dict[str, tuple[list[float], list[float]]] = {}
    counters: dict[str, int] = {}
    for p in parts:
        for version, (preds, labels) in p.pairs.items():
            acc = pairs.setdefault(version, ([], []))
            acc[0].extend(preds)
            acc[1].extend(labels)
        for key, n in p.counters.items():
            counters[key] = counters.get(key, 0) + n
    return FeedbackPart(parts[0].metric, pairs, counters)


class WorkerSnapshot(msgspec.Struct):
    """What one worker publishes (or, for `retired.msgpack`, what dead workers left)."""

    worker: str
    """`{slot}:{generation}`; "retired" for the folded contribution of dead workers."""
    taken_at: float
    families: list[Family] = []
    stats: dict[str, dict[str, Any]] = {}
    """`{runtime name}@{version}` → runtime stats (with "feature_lookup" when it has one)."""
    monitors: dict[str, MonitorPart] = {}
    """`{runtime name}@{version}` → monitor part."""
    feedback: dict[str, FeedbackPart] = {}
    """Public model name → label feedback part."""
    absorbed: list[str] = []
    """Workers whose counts this (retired) snapshot already holds."""


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(WorkerSnapshot)


def stats_key(name: str, version: Any) -> str:
    return f"{name}@{version}"


# -- merging -------------------------------------------------------------------------------


def merge_families(live: list[list[Family]], retired: list[Family] | None = None) -> list[Family]:
    """The server's families: ``live[0]`` is the answering worker's own (its order and its
    values of non-additive gauges win), ``live[1:]`` the other live workers', ``retired`` the
    monotonic part of dead workers."""
    order: list[str] = []
    merged: dict[str, Family] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}

    def add(fam: Family, own: bool) -> None:
        key = fam.name
        if key not in merged:
            order.append(key)
            merged[key] = Family(fam.name, fam.type, fam.documentation, fam.unit, [])
            values[key] = {}
        acc = values[key]
        kind = fam.type
        for sample_name, labels, value in fam.samples:
            sk = (sample_name, tuple(sorted(labels.items())))
            if sk not in acc:
                acc[sk] = value
            elif kind in _MONOTONIC_TYPES or key in _ADDITIVE_GAUGES:
                acc[sk] += value
            elif key in _MIN_GAUGES:
                acc[sk] = min(acc[sk], value)
            elif own:
                acc[sk] = value

    for i, families in enumerate(live):
        for fam in families:
            add(fam, i == 0)
    for fam in retired or ():
        if fam.type in _MONOTONIC_TYPES:
            add(fam, False)
    out = []
    for key in order:
        fam = merged[key]
        fam.samples = [(n, dict(labels), v) for (n, labels), v in values[key].items()]
        out.append(fam)
    return out


def _sum_tree(into: dict[Any, Any], part: Mapping[Any, Any], gauges: bool) -> None:
    for k, v in part.items():
        if k in _DROPPED_STAT_KEYS or (not gauges and k in _STAT_GAUGES):
            continue
        if isinstance(v, Mapping):
            sub = into.get(k)
            if not isinstance(sub, dict):
                sub = into[k] = {}
            _sum_tree(sub, v, gauges)
        elif isinstance(v, bool) or not isinstance(v, (int, float)):
            into.setdefault(k, v)
        elif k not in into or not isinstance(into[k], (int, float)):
            into[k] = v
        elif k in _MAX_STAT_KEYS:
            into[k] = max(into[k], v)
        else:
            into[k] = into[k] + v


def merge_stats(
    live: Iterable[Mapping[str, Any]], retired: Iterable[Mapping[str, Any]] = ()
) -> dict[str, Any]:
    """Runtime stats of one model version summed over workers (gauges over live ones only);
    means and percentiles are left out (they do not add)."""
    out: dict[str, Any] = {}
    for s in live:
        _sum_tree(out, s, gauges=True)
    for s in retired:
        _sum_tree(out, s, gauges=False)
    return out


def _retire_monitor(part: MonitorPart) -> MonitorPart:
    """The part of a dead worker's monitor that stays true after it: totals since start, no
    recent windows (they would go stale) and no live process."""
    snap = part.snapshot
    empty_windows = {w for w, s in WINDOWS.items() if s != float("inf")}
    latency = {w: ({} if w in empty_windows else stages) for w, stages in snap.latency.items()}
    requests = {
        w: ({k: 0 for k in counts} if w in empty_windows else counts)
        for w, counts in snap.requests.items()
    }
    retired = msgspec.structs.replace(
        snap,
        latency=latency,
        requests=requests,
        drift_window=[0] * len(snap.drift_window),
        processes=0,
        history=[],
    )
    counters = {k: v for k, v in part.counters.items() if k != "windows_closed"}
    return MonitorPart(retired, counters)  # no alerts, no output window: they were its present


def _merge_alerts(parts: list[MonitorPart]) -> dict[str, AlertState]:
    """Active when any worker's rule is; the value is the highest finite one (NaN if none)."""
    out: dict[str, AlertState] = {}
    for p in parts:
        for name, st in p.alerts.items():
            prev = out.get(name)
            if prev is None:
                out[name] = AlertState(st.active, st.value)
                continue
            prev.active = prev.active or st.active
            if st.value == st.value and not (prev.value >= st.value):  # NaN-aware max
                prev.value = st.value
    return out


def _merge_output_windows(parts: list[MonitorPart]) -> list[int]:
    windows = [p.output_window for p in parts if p.output_window]
    if not windows or any(len(w) != len(windows[0]) for w in windows):
        return windows[0] if windows else []  # layouts differ: a profile changed mid-run
    return [int(c) for c in np.sum(windows, axis=0)]


def merge_monitor_parts(parts: list[MonitorPart]) -> MonitorPart:
    """One model version's monitor over several workers (same profile; others are skipped)."""
    first = parts[0]
    same = [p for p in parts if p.snapshot.profile == first.snapshot.profile]
    counters: dict[str, int] = {}
    for p in same:
        for k, v in p.counters.items():
            counters[k] = (
                max(counters.get(k, 0), v) if k == "windows_closed" else (counters.get(k, 0) + v)
            )
    return MonitorPart(
        merge_snapshots([p.snapshot for p in same]),
        counters,
        alerts=_merge_alerts(same),
        output_window=_merge_output_windows(same),
    )


def absorb_dead_worker(run_dir: str | os.PathLike[str], slot: int, worker: str) -> None:
    """Fold the last snapshot of the dead worker `worker` (slot `slot`) into `retired.msgpack`,
    then remove its file. Called by the supervisor after reaping the worker and before starting
    its replacement; the only writer of `retired.msgpack`."""
    root = Path(run_dir)
    own = root / f"worker-{slot}.msgpack"
    for tmp in root.glob(f"worker-{slot}.msgpack.*.tmp"):
        tmp.unlink(missing_ok=True)
    dead = _read(own)
    if dead is None or dead.worker != worker:
        return  # it died before its first publish: nothing to keep
    retired = _read(root / RETIRED) or WorkerSnapshot("retired", 0.0)
    families = merge_families(
        [[f for f in retired.families if f.type in _MONOTONIC_TYPES]], dead.families
    )
    stats = dict(retired.stats)
    for key, s in dead.stats.items():
        stats[key] = merge_stats([], [*([stats[key]] if key in stats else []), s])
    monitors = dict(retired.monitors)
    for key, part in dead.monitors.items():
        gone = _retire_monitor(part)
        prev = monitors.get(key)
        monitors[key] = merge_monitor_parts([prev, gone]) if prev is not None else gone
    folded = WorkerSnapshot(
        "retired",
        time.time(),
        families=families,
        stats=stats,
        monitors=monitors,
        absorbed=[*retired.absorbed, worker],
    )
    # The new retired file lists `worker` before its own file goes: a reader sees the dead
    # worker's counts exactly once, whichever of the two steps it lands between.
    _write_atomic(root / RETIRED, _encoder.encode(folded))
    own.unlink(missing_ok=True)


# -- files ---------------------------------------------------------------------------------


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def _read(path: Path) -> WorkerSnapshot | None:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        return _decoder.decode(data)
    except msgspec.DecodeError as e:  # never written half (rename), so a bug or a foreign file
        log.error("ignoring unreadable worker snapshot %s: %s", path, e)
        return None


@dataclass
class Peers:
    """The other workers' latest snapshots and the dead workers' folded one."""

    live: list[WorkerSnapshot]
    retired: WorkerSnapshot | None


class SharedStats:
    """One supervised worker's side of the run directory. Every method runs on the worker's
    event-loop thread (not thread-safe)."""

    def __init__(self, run_dir: str | os.PathLike[str], worker: str, slot: int) -> None:
        self.root = Path(run_dir)
        self.worker = worker
        self.slot = slot
        self.path = self.root / f"worker-{slot}.msgpack"

    @classmethod
    def from_environment(cls) -> SharedStats | None:
        """The worker's shared stats when a supervisor started it; None for a lone server."""
        run_dir = os.environ.get(RUN_DIR_ENV)
        worker = os.environ.get(WORKER_ENV)
        if not run_dir or not worker:
            return None
        slot, _, _ = worker.partition(":")
        return cls(run_dir, worker, int(slot))

    def publish(self, snap: WorkerSnapshot) -> None:
        """Replace this worker's file with `snap` (atomically)."""
        try:
            _write_atomic(self.path, _encoder.encode(snap))
        except OSError as e:
            if e.errno != errno.ENOENT:  # the run directory is gone: the server is stopping
                log.error("cannot publish worker stats to %s: %s", self.path, e)

    def peers(self) -> Peers:
        """The other live workers' snapshots and the retired one, read consistently: a file
        that vanishes while being read (its worker was just absorbed) restarts the read."""
        for _ in range(5):
            try:
                names = sorted(os.listdir(self.root))
            except FileNotFoundError:
                return Peers([], None)
            retired = _read(self.root / RETIRED) if RETIRED in names else None
            absorbed = set(retired.absorbed) if retired is not None else set()
            live: list[WorkerSnapshot] = []
            vanished = False
            for name in names:
                if not name.startswith("worker-") or not name.endswith(".msgpack"):
                    continue
                if name == self.path.name:
                    continue
                snap = _read(self.root / name)
                if snap is None:
                    vanished = True
                    break
                if snap.worker not in absorbed:
                    live.append(snap)
            if not vanished:
                return Peers(live, retired)
        return Peers(live, retired)


def collect_families(registry: Any) -> list[Family]:
    """The families a Prometheus registry (or collector) yields now, as plain data."""
    return [
        Family(
            m.name,
            m.type,
            m.documentation,
            m.unit,
            [(s.name, dict(s.labels), float(s.value)) for s in m.samples],
        )
        for m in registry.collect()
    ]


def to_metrics(families: list[Family]) -> Iterator[Any]:
    """prometheus_client metric families of merged `families`."""
    from prometheus_client.core import Metric

    for fam in families:
        m = Metric(fam.name, fam.documentation, fam.type, fam.unit)
        for name, labels, value in fam.samples:
            m.add_sample(name, labels, value)
        yield m


async def publish_periodically(publish: Callable[[], object]) -> None:
    """Call `publish` every `PUBLISH_PERIOD_S` until cancelled (a task of the worker's loop).
    A failing publish is logged once and retried next period: stats must not stop serving."""
    import asyncio

    logged = False
    while True:
        await asyncio.sleep(PUBLISH_PERIOD_S)
        try:
            publish()
        except Exception:
            if not logged:
                logged = True
                log.exception("publishing this worker's stats failed; retrying every period")
