"""Online feature lookup latency: the native in-process table and Redis through aiarch's lookup
plans, against the baseline many hand-rolled services use: one Redis HGET per feature.

One feature view of 50 float32 features over 10,000 int64 entities. Two points: 1 entity x 50
features and 100 entities x 50 features, each a lookup of random entity ids, timed one call at
a time from Python (the whole call: id conversion, the gather or round trip, array building).
The benchmark starts its own redis-server on a free 127.0.0.1 port in a temporary directory (no
persistence) and stops it at the end.

    python benchmarks/bench_features.py            # >= 10,000 samples per aiarch point (~1 min)
    python benchmarks/bench_features.py --smoke    # a few seconds

The HGET baseline makes 50 round trips per entity (5,000 for 100 entities), so it gets fewer
samples: as many as fit in --baseline-budget-s per point (its sample count is printed).
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _report import print_table, write_json
from aiarch.features import Entity, Feature, FeatureStore, FeatureView

N_FEATURES = 50
N_ENTITIES = 10_000
TARGETS_P99_US = {
    ("native", 1): 20.0,
    ("native", 100): 100.0,
    ("redis", 1): 1000.0,
    ("redis", 100): 2000.0,
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_redis(workdir: str) -> tuple[subprocess.Popen[bytes], int]:
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server is not installed (bash scripts/setup.sh installs it)")
    port = free_port()
    proc = subprocess.Popen(
        [
            binary,
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--dir",
            workdir,
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return proc, port
        except OSError:
            time.sleep(0.02)
    proc.kill()
    sys.exit(f"redis-server did not start on port {port}")


def sample(
    fn: Callable[[np.ndarray], Any],
    batches: list[np.ndarray],
    warmup: int,
    budget_s: float | None = None,
) -> np.ndarray:
    """Latency (ns) of fn on each batch, one call at a time."""
    for b in batches[:warmup]:
        fn(b)
    out = np.empty(len(batches), np.int64)
    clock = time.perf_counter_ns
    end = None if budget_s is None else time.monotonic() + budget_s
    n = 0
    for b in batches:
        t0 = clock()
        fn(b)
        out[n] = clock() - t0
        n += 1
        if end is not None and time.monotonic() > end:
            break
    return out[:n]


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--samples", type=int, default=10_000, help="samples per aiarch point")
    ap.add_argument(
        "--baseline-budget-s",
        type=float,
        default=10.0,
        help="seconds of HGET-loop samples per point",
    )
    ap.add_argument("--json", default="bench-results/bench_features.json", help="JSON output path")
    ap.add_argument("--smoke", action="store_true", help="a few seconds, to check the script runs")
    args = ap.parse_args()
    samples = 300 if args.smoke else args.samples
    budget = 0.5 if args.smoke else args.baseline_budget_s

    rng = np.random.default_rng(7)
    ids = np.arange(N_ENTITIES, dtype=np.int64)
    values = rng.random((N_ENTITIES, N_FEATURES), dtype=np.float32)
    now = time.time_ns()
    names = [f"f{j:02d}" for j in range(N_FEATURES)]
    view = FeatureView("bench", "entity", tuple(Feature(n) for n in names), ttl=86_400)
    rows: dict[str, Any] = {"entity": ids, "event_timestamp": np.full(N_ENTITIES, now, np.int64)}
    rows.update({n: values[:, j] for j, n in enumerate(names)})
    refs = [f"bench:{n}" for n in names]

    with tempfile.TemporaryDirectory() as tmp:
        proc, port = start_redis(tmp)
        print(f"started redis-server on 127.0.0.1:{port} (no persistence) for this benchmark")
        try:
            results = run(
                args, samples, budget, rng, ids, values, names, view, rows, refs, tmp, port
            )
        finally:
            proc.terminate()
            proc.wait(10)
            print(f"stopped redis-server on 127.0.0.1:{port}")
    write_json(args.json, "bench_features", results)


def run(
    args: argparse.Namespace,
    samples: int,
    budget: float,
    rng: np.random.Generator,
    ids: np.ndarray,
    values: np.ndarray,
    names: list[str],
    view: FeatureView,
    rows: dict[str, Any],
    refs: list[str],
    tmp: str,
    port: int,
) -> list[dict[str, Any]]:
    import redis

    home = Path(tmp) / "home"
    native = FeatureStore("memory://bench", home=home)
    native.apply(Entity("entity"), view)
    native.write("bench", rows)
    remote = FeatureStore(f"redis://127.0.0.1:{port}/0", home=home, timeout_s=1.0)
    remote.write("bench", rows)
    native_plan = native.plan(refs)
    redis_plan = remote.plan(refs)

    # The baseline's layout: one hash per entity, one field per feature, read field by field.
    client = redis.Redis(host="127.0.0.1", port=port)
    pipe = client.pipeline(transaction=False)
    for i in range(len(ids)):
        pipe.hset(f"hash:{i}", mapping={n: float(values[i, j]) for j, n in enumerate(names)})
    pipe.execute()

    def hget_loop(batch: np.ndarray) -> np.ndarray:
        out = np.empty((len(batch), len(names)), np.float32)
        for r, e in enumerate(batch.tolist()):
            key = f"hash:{e}"
            for j, n in enumerate(names):
                out[r, j] = float(client.hget(key, n))
        return out

    # Correctness first: every path returns the stored values.
    check = rng.integers(0, len(ids), 100)
    for got in (native_plan.get(check)[0], redis_plan.get(check)[0], hget_loop(check[:5])):
        np.testing.assert_allclose(got, values[check[: len(got)]], rtol=1e-6)

    results: list[dict[str, Any]] = []
    table: list[list[Any]] = []
    for n in (1, 100):
        batches = [rng.integers(0, len(ids), n) for _ in range(samples)]
        warm = min(200, samples // 10)
        runs = {
            "hget loop (baseline)": sample(hget_loop, batches, 3, budget),
            "native": sample(native_plan.get, batches, warm),
            "redis": sample(redis_plan.get, batches, warm),
        }
        base_p99 = float(np.percentile(runs["hget loop (baseline)"], 99))
        base_p50 = float(np.percentile(runs["hget loop (baseline)"], 50))
        for backend, lat in runs.items():
            p50, p99, p999 = (float(np.percentile(lat, q)) / 1e3 for q in (50, 99, 99.9))
            target = TARGETS_P99_US.get((backend, n))
            row = {
                "entities": n,
                "features": len(names),
                "backend": backend,
                "samples": len(lat),
                "p50_us": p50,
                "p99_us": p99,
                "p999_us": p999,
                "baseline_p50_over_this": base_p50 / 1e3 / p50,
                "baseline_p99_over_this": base_p99 / 1e3 / p99,
                "target_p99_us": target,
                "target_met": None if target is None else p99 <= target,
            }
            results.append(row)
            table.append(
                [
                    f"{n} x {len(names)}",
                    backend,
                    len(lat),
                    p50,
                    p99,
                    p999,
                    f"{row['baseline_p99_over_this']:.1f}x",
                    "-"
                    if target is None
                    else f"<= {target:g} {'met' if p99 <= target else 'MISSED'}",
                ]
            )
    print_table(
        "Online feature lookup latency (µs per call, from Python; baseline = one HGET per feature)",
        [
            "entities x features",
            "backend",
            "samples",
            "p50",
            "p99",
            "p99.9",
            "baseline p99 / this",
            "p99 target",
        ],
        table,
    )
    native.backend.close()
    remote.backend.close()
    client.close()
    return results


if __name__ == "__main__":
    main()
