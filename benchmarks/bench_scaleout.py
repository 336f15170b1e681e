"""The shared engines behind several replicas, each against its one-machine counterpart measured
in the same run:

1. Online feature lookup on a Redis Cluster (3 masters + 3 replicas, Debian's redis-server on
   loopback ports) vs a single redis-server: 1 entity x 50 features and 100 x 50, random ids
   over 10,000 entities, timed one call at a time from Python (`plan.get`).
2. Opening a registry artifact (`Registry.open`: resolve, fetch if needed, verify its sha256)
   from an S3 bucket (moto's server on 127.0.0.1) vs from local disk: cold (first open on a host,
   an empty cache: download + hash) and cached (re-hash of the cached copy), on a file of
   --artifact-mb MB.

Everything is started on free loopback ports in temporary directories and stopped at the end.

    python benchmarks/bench_scaleout.py            # ~2 min; 100 MB artifact
    python benchmarks/bench_scaleout.py --smoke    # < 60 s; 8 MB artifact
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _report import print_table, write_json
from aiarch.features import Entity, Feature, FeatureStore, FeatureView
from aiarch.features.rediscluster import TemporaryRedisCluster
from aiarch.registry import Registry
from aiarch.registry.s3server import TemporaryS3

N_FEATURES = 50
N_ENTITIES = 10_000


def _pct(lat_ns: np.ndarray) -> tuple[float, float, float]:
    p50, p99, p999 = (float(np.percentile(lat_ns, q)) / 1e3 for q in (50, 99, 99.9))
    return p50, p99, p999


def _start_redis(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server is not installed (bash scripts/setup.sh installs it)")
    proc = subprocess.Popen(
        [
            *(binary, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(workdir)),
            *("--save", "", "--appendonly", "no", "--logfile", str(workdir / "redis.log")),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    import redis

    deadline = time.monotonic() + 10
    while True:
        try:
            with redis.Redis(port=port, socket_timeout=1) as r:
                r.ping()
            break
        except redis.RedisError:
            if time.monotonic() > deadline:
                proc.kill()
                sys.exit(f"redis-server did not start on port {port}")
            time.sleep(0.05)
    return proc, f"redis://127.0.0.1:{port}/0"


def bench_lookups(samples: int, tmp: Path) -> list[dict[str, Any]]:
    rng = np.random.default_rng(7)
    names = [f"f{j:02d}" for j in range(N_FEATURES)]
    view = FeatureView("bench", "entity", tuple(Feature(n) for n in names), ttl=86_400)
    values = rng.random((N_ENTITIES, N_FEATURES), dtype=np.float32)
    rows: dict[str, Any] = {
        "entity": np.arange(N_ENTITIES, dtype=np.int64),
        "event_timestamp": np.full(N_ENTITIES, time.time_ns(), np.int64),
    }
    rows.update({n: values[:, j] for j, n in enumerate(names)})
    refs = [f"bench:{n}" for n in names]

    single_dir = tmp / "redis"
    single_dir.mkdir()
    proc, single_url = _start_redis(single_dir)
    cluster = TemporaryRedisCluster(masters=3, replicas=1).start()
    print(f"started redis-server {single_url} and a 3+3 Redis Cluster {cluster.url}")
    results: list[dict[str, Any]] = []
    table: list[list[Any]] = []
    try:
        plans = {}
        stores = []
        for label, url in (("redis (baseline)", single_url), ("redis cluster", cluster.url)):
            store = FeatureStore(url, home=tmp / "home", timeout_s=1.0)
            store.apply(Entity("entity"), view)
            store.write("bench", rows)
            stores.append(store)
            plans[label] = store.plan(refs)
        check = rng.integers(0, N_ENTITIES, 100)
        for plan in plans.values():
            np.testing.assert_allclose(plan.get(check)[0], values[check], rtol=1e-6)
        for n in (1, 100):
            batches = [rng.integers(0, N_ENTITIES, n) for _ in range(samples)]
            lat: dict[str, np.ndarray] = {}
            for label, plan in plans.items():
                for b in batches[: min(200, samples // 10)]:
                    plan.get(b)
                out = np.empty(samples, np.int64)
                for i, b in enumerate(batches):
                    t0 = time.perf_counter_ns()
                    plan.get(b)
                    out[i] = time.perf_counter_ns() - t0
                lat[label] = out
            base_p50, base_p99, _ = _pct(lat["redis (baseline)"])
            for label, ns in lat.items():
                p50, p99, p999 = _pct(ns)
                row = {
                    "benchmark": "lookup",
                    "entities": n,
                    "features": N_FEATURES,
                    "backend": label,
                    "samples": samples,
                    "p50_us": p50,
                    "p99_us": p99,
                    "p999_us": p999,
                    "p50_over_baseline": p50 / base_p50,
                    "p99_over_baseline": p99 / base_p99,
                }
                results.append(row)
                table.append(
                    [
                        *(f"{n} x {N_FEATURES}", label, samples, p50, p99, p999),
                        *(f"{row['p50_over_baseline']:.2f}x", f"{row['p99_over_baseline']:.2f}x"),
                    ]
                )
        for store in stores:
            store.close()
    finally:
        cluster.stop()
        proc.terminate()
        proc.wait(10)
    print_table(
        "Feature lookup latency (µs per call from Python; baseline = one redis-server)",
        [
            *("entities x features", "backend", "samples", "p50", "p99", "p99.9"),
            *("p50 / baseline", "p99 / baseline"),
        ],
        table,
    )
    return results


def bench_artifacts(size_mb: int, repeats: int, tmp: Path) -> list[dict[str, Any]]:
    artifact = tmp / "weights.bin"
    with open(artifact, "wb") as f:
        for _ in range(size_mb):
            f.write(os.urandom(1 << 20))
    results: list[dict[str, Any]] = []
    table: list[list[Any]] = []
    with TemporaryS3(log=tmp / "moto.log") as s3:
        print(f"started moto's S3 server on {s3.endpoint_url}")
        os.environ.update(s3.env())
        s3.create_bucket("bench")
        db = f"sqlite:///{tmp / 'registry.db'}"
        url = s3.artifacts_url("bench", "models")
        started = time.perf_counter()
        with Registry(db, home=tmp / "writer", artifacts=url) as writer:
            writer.register("weights", artifact, format="custom")
        upload_s = time.perf_counter() - started
        with Registry(f"sqlite:///{tmp / 'local.db'}", home=tmp / "local-host") as local:
            local.register("weights", artifact, format="custom")
            times: dict[str, list[float]] = {"local": [], "s3 cold": [], "s3 cached": []}
            for i in range(repeats):
                t0 = time.perf_counter()
                local.open("weights/1")
                times["local"].append(time.perf_counter() - t0)
                # A fresh host each time: an empty cache, so the open downloads everything.
                with Registry(db, home=tmp / f"reader-{i}", artifacts=url) as reader:
                    t0 = time.perf_counter()
                    reader.open("weights/1")
                    times["s3 cold"].append(time.perf_counter() - t0)
                    t0 = time.perf_counter()
                    reader.open("weights/1")
                    times["s3 cached"].append(time.perf_counter() - t0)
                shutil.rmtree(tmp / f"reader-{i}")
    base = float(np.median(times["local"]))
    for label, ts in times.items():
        med = float(np.median(ts))
        row = {
            "benchmark": "artifact_open",
            "source": label,
            "size_mb": size_mb,
            "repeats": len(ts),
            "median_ms": med * 1e3,
            "max_ms": max(ts) * 1e3,
            "mb_per_s": size_mb / med,
            "over_local": med / base,
        }
        results.append(row)
        table.append(
            [label, size_mb, len(ts), med * 1e3, max(ts) * 1e3, size_mb / med, f"{med / base:.2f}x"]
        )
    results.append({"benchmark": "artifact_register_s3", "size_mb": size_mb, "s": upload_s})
    print_table(
        f"Registry.open of a {size_mb} MB artifact (ms; baseline = local disk, re-hash on open; "
        f"register + upload took {upload_s * 1e3:.0f} ms)",
        ["source", "MB", "repeats", "median", "max", "MB/s", "/ local"],
        table,
    )
    return results


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--samples", type=int, default=5000, help="lookups per point")
    ap.add_argument("--artifact-mb", type=int, default=100, help="artifact size")
    ap.add_argument("--repeats", type=int, default=5, help="opens per artifact source")
    ap.add_argument("--json", default="bench-results/bench_scaleout.json", help="JSON output")
    ap.add_argument("--smoke", action="store_true", help="< 60 s, to check the script runs")
    args = ap.parse_args()
    if args.smoke:
        args.samples, args.artifact_mb, args.repeats = 300, 8, 2
    with tempfile.TemporaryDirectory(prefix="aiarch-bench-scaleout-") as tmp:
        results = bench_lookups(args.samples, Path(tmp))
        results += bench_artifacts(args.artifact_mb, args.repeats, Path(tmp))
    write_json(args.json, "bench_scaleout", results)


if __name__ == "__main__":
    main()
