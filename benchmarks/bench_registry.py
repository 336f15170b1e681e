"""Registry read latency at scale: `get(alias)` and a three-condition `search`, on SQLite and
PostgreSQL, against naive scans measured in the same run.

Population: M models x V versions (full: 500 x 20 = 10,000 versions), each version with 5 tags,
2 metrics and 2 params, registered through `Registry.register`; every model has `production`
and `staging` aliases. Then, on each backend:

- get(alias): `reg.get(name, alias=...)` for random models (target p99 <= 1 ms);
  baseline: list the model's versions and pick the one holding the alias.
- search: `metrics.auc >= T and tags.task = '...' and tags.region = '...'` with random values,
  limit 100 (target p99 <= 10 ms); baseline: the full scan an index-less registry does - read
  every version, evaluate the filter in Python.

    python benchmarks/bench_registry.py            # 10,000 versions on both backends
    python benchmarks/bench_registry.py --smoke    # 500 versions, a few seconds
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _report import print_table, write_json
from aiarch.registry import Registry
from aiarch.registry.filters import parse_filter
from aiarch.registry.pgcluster import TemporaryPostgres
from aiarch.registry.search import matches

TASKS = [f"task{i}" for i in range(10)]
REGIONS = ["eu", "us", "apac", "latam", "mea"]


def populate(reg: Registry, models: int, versions: int, art: Path, seed: int) -> float:
    rng = random.Random(seed)
    t0 = time.perf_counter()
    total = models * versions
    done = 0
    for _ in range(versions):
        for m in range(models):
            reg.register(
                f"model{m:04d}",
                art,
                format="blob",
                metrics={"auc": rng.uniform(0.5, 1.0), "loss": rng.random()},
                params={
                    "optimizer": rng.choice(["adam", "sgd", "rmsprop"]),
                    "lr": rng.choice(["0.1", "0.01", "0.001"]),
                },
                tags={
                    "task": rng.choice(TASKS),
                    "region": rng.choice(REGIONS),
                    "team": f"team{rng.randrange(20)}",
                    "dataset": f"ds{rng.randrange(50)}",
                    "owner": f"user{rng.randrange(100)}",
                },
            )
            done += 1
            if done % max(1, total // 10) == 0:
                print(f"  populated {done}/{total} versions", file=sys.stderr, flush=True)
    for m in range(models):
        reg.set_alias(f"model{m:04d}", "production", versions)
        reg.set_alias(f"model{m:04d}", "staging", max(1, versions - 1))
    return time.perf_counter() - t0


def timed(fn: Any, args: list[Any]) -> tuple[np.ndarray, np.ndarray]:
    """Wall-clock and on-CPU time (this thread) per call, in µs. On a shared machine the
    wall-clock tail includes time the thread spent preempted; the CPU time does not (for
    SQLite it is the whole cost of the call; for PostgreSQL the server's share is missing)."""
    wall = np.empty(len(args))
    cpu = np.empty(len(args))
    for i, a in enumerate(args):
        c0 = time.thread_time_ns()
        t0 = time.perf_counter_ns()
        fn(*a)
        wall[i] = time.perf_counter_ns() - t0
        cpu[i] = time.thread_time_ns() - c0
    return wall / 1000.0, cpu / 1000.0


def pct(samples: np.ndarray) -> tuple[float, float, float]:
    p50, p99, p999 = np.percentile(samples, [50, 99, 99.9])
    return float(p50), float(p99), float(p999)


def run_backend(name: str, url: str, home: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    reg = Registry(url, home=home)
    art = home / "model.bin"
    art.parent.mkdir(parents=True, exist_ok=True)
    art.write_bytes(b"x" * 4096)
    print(f"{name}: registering {args.models * args.versions} versions ...", file=sys.stderr)
    pop_s = populate(reg, args.models, args.versions, art, args.seed)
    reg.optimize()  # planner statistics after the bulk import
    rng = random.Random(args.seed + 1)
    names = [f"model{m:04d}" for m in range(args.models)]

    get_args = [
        (rng.choice(names), rng.choice(["production", "staging"])) for _ in range(args.gets)
    ]
    for a in get_args[:50]:  # warm connections and caches
        reg.get(a[0], alias=a[1])

    def naive_get(model: str, alias: str) -> Any:
        return next(v for v in reg.list_versions(model) if alias in v.aliases)

    filters = [
        f"metrics.auc >= {rng.uniform(0.8, 0.95):.3f} and tags.task = '{rng.choice(TASKS)}' "
        f"and tags.region = '{rng.choice(REGIONS)}'"
        for _ in range(args.searches)
    ]
    reg.search(filters[0])
    counts = [len(reg.search(f, limit=100)) for f in filters[:20]]

    def naive_search(f: str) -> list[Any]:
        conds = parse_filter(f)
        return [v for v in reg.search(limit=10**9) if matches(v, conds)][:100]

    # The two answer the same question: check once so the comparison is fair.
    assert {(v.name, v.version) for v in naive_search(filters[0])} == {
        (v.name, v.version) for v in reg.search(filters[0], limit=100)
    } or len(reg.search(filters[0], limit=100)) == 100

    get_us, get_cpu = timed(lambda m, a: reg.get(m, alias=a), get_args)
    naive_get_us, _ = timed(naive_get, get_args[: max(20, len(get_args) // 10)])
    search_us, search_cpu = timed(lambda f: reg.search(f, limit=100), [(f,) for f in filters])
    naive_search_us, _ = timed(naive_search, [(f,) for f in filters[: args.naive_searches]])
    reg.close()
    rows = []
    for op, samples, cpu, base, target_us in (
        ("get(alias)", get_us, get_cpu, naive_get_us, 1000.0),
        ("search 3 filters", search_us, search_cpu, naive_search_us, 10_000.0),
    ):
        p50, p99, p999 = pct(samples)
        c50, c99, _ = pct(cpu)
        b50, b99, _ = pct(base)
        rows.append(
            {
                "backend": name,
                "operation": op,
                "versions": args.models * args.versions,
                "n": len(samples),
                "p50_us": p50,
                "p99_us": p99,
                "p999_us": p999,
                "cpu_p50_us": c50,
                "cpu_p99_us": c99,
                "target_p99_us": target_us,
                "target_met": p99 <= target_us,
                "baseline": "list versions + pick" if op == "get(alias)" else "full scan in Python",
                "baseline_n": len(base),
                "baseline_p50_us": b50,
                "baseline_p99_us": b99,
                "speedup_p99": b99 / p99,
                "populate_s": pop_s,
                "mean_results": float(np.mean(counts)) if op != "get(alias)" else 1.0,
            }
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--smoke", action="store_true", help="500 versions, few samples (CI)")
    ap.add_argument("--models", type=int, default=500)
    ap.add_argument("--versions", type=int, default=20, help="versions per model")
    ap.add_argument("--gets", type=int, default=5000)
    ap.add_argument("--searches", type=int, default=1000)
    ap.add_argument("--naive-searches", type=int, default=30)
    ap.add_argument("--backends", default="sqlite,postgres", help="comma-separated")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default="bench-results/bench_registry.json", help="JSON output path")
    args = ap.parse_args()
    if args.smoke:
        args.models, args.versions = 50, 10
        args.gets, args.searches, args.naive_searches = 500, 100, 5
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = set(backends) - {"sqlite", "postgres"}
    if unknown:
        ap.error(f"unknown backends {sorted(unknown)}; expected sqlite and/or postgres")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="aiarch-bench-registry-") as tmp:
        if "sqlite" in backends:
            rows += run_backend(
                "sqlite", f"sqlite:///{tmp}/registry.db", Path(tmp) / "sqlite", args
            )
        if "postgres" in backends:
            with TemporaryPostgres() as pg:
                rows += run_backend("postgres", pg.url(schema="bench"), Path(tmp) / "pg", args)
    print_table(
        f"Registry reads, {args.models * args.versions} versions x 5 tags "
        f"({args.models} models); latency in µs",
        [
            "backend",
            "operation",
            "p50",
            "p99",
            "p99.9",
            "cpu p99",
            "target p99",
            "met",
            "baseline p99",
            "speedup",
        ],
        [
            [
                r["backend"],
                r["operation"],
                r["p50_us"],
                r["p99_us"],
                r["p999_us"],
                r["cpu_p99_us"],
                r["target_p99_us"],
                "yes" if r["target_met"] else "NO",
                r["baseline_p99_us"],
                f"{r['speedup_p99']:.1f}x",
            ]
            for r in rows
        ],
    )
    for r in rows:
        if r["operation"] == "get(alias)":
            print(
                f"{r['backend']}: populated in {r['populate_s']:.1f} s "
                f"({r['versions'] / r['populate_s']:.0f} registrations/s)"
            )
    load = os.getloadavg()[0]
    print(
        f"load average {load:.1f} on {os.cpu_count()} cores; 'cpu p99' is the calling thread's "
        "on-CPU time (the wall-clock tail includes preemption on a busy machine)"
    )
    write_json(args.json, "bench_registry", {"rows": rows, "load_average": load})


if __name__ == "__main__":
    main()
