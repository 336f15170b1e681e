"""`aiarch serve --workers 2` against one worker on the reference MLP, and what one `/metrics`
scrape costs when it merges every worker's counters, histograms and drift counts.

Model: the MLP of `bench_server.py` (64 → 256 → 256 → 16, exported to ONNX, one-row KServe v2
JSON body). Load: Debian's `wrk -t1` at --connections for --duration seconds per server (closed
loop; both servers alike). Scrape cost: --scrapes GET /metrics, each on a fresh connection
(so with 2 workers either may answer and merge), timed from the client, after the load run.
The baseline is the single-worker server measured in the same run; ratios are 2 workers / 1.
On a machine with fewer free cores than workers, req/s cannot scale: the table says how many
cores the run had.

    python benchmarks/bench_workers.py            # ~1 min
    python benchmarks/bench_workers.py --smoke    # ~20 s
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _report import print_table, write_json  # noqa: E402
from bench_server import (  # noqa: E402
    _free_port,
    _server,
    aiarch_cmd,
    bodies,
    export_onnx,
    run_python_client,
    run_wrk,
)


def scrape_ms(port: int, n: int) -> np.ndarray:
    """Client-side time of `n` GET /metrics, one fresh connection each (ms)."""
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            r.read()
        out.append((time.perf_counter() - t0) * 1e3)
    return np.asarray(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--smoke", action="store_true", help="seconds, to check the script runs")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds of load per server")
    ap.add_argument("--connections", type=int, default=64, help="wrk connections")
    ap.add_argument("--scrapes", type=int, default=200, help="timed /metrics scrapes")
    ap.add_argument("--json", default="bench-results/bench_workers.json", help="output file")
    args = ap.parse_args(argv)
    if args.smoke:
        args.duration, args.scrapes = 2.0, 20
    load = run_wrk if shutil.which("wrk") else run_python_client
    path = "/v2/models/mlp/infer"
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="aiarch-bench-workers-") as tmpdir:
        tmp = Path(tmpdir)
        body, hlen = bodies(tmp)["json"]
        onnx = export_onnx(tmp)
        for workers in (1, 2):
            port = _free_port()
            cmd = [*aiarch_cmd(port, onnx, "native"), "--workers", str(workers)]
            with _server(cmd, port, tmp / f"{port}.log"):
                load(port, path, body, hlen, 8, 1.0)  # warm-up
                r = load(port, path, body, hlen, args.connections, args.duration)
                scrape_ms(port, 5)
                ms = scrape_ms(port, args.scrapes)
            results.append(
                {
                    "workers": workers,
                    "connections": args.connections,
                    "rps": r["rps"],
                    "p50_us": r["p50_us"],
                    "p99_us": r["p99_us"],
                    "scrape_p50_ms": float(np.percentile(ms, 50)),
                    "scrape_p99_ms": float(np.percentile(ms, 99)),
                    "cores": os.cpu_count(),
                }
            )
            print(f"  workers={workers} {r['rps']:8.0f} req/s", flush=True)
    base = results[0]
    rows = []
    for r in results:
        r["x_one_worker_rps"] = r["rps"] / base["rps"]
        r["x_one_worker_scrape"] = r["scrape_p50_ms"] / base["scrape_p50_ms"]
        rows.append(
            [
                r["workers"],
                f"{r['rps']:.0f}",
                f"{r['x_one_worker_rps']:.2f}",
                f"{r['p50_us']:.0f}",
                f"{r['p99_us']:.0f}",
                f"{r['scrape_p50_ms']:.2f}",
                f"{r['scrape_p99_ms']:.2f}",
                f"{r['x_one_worker_scrape']:.2f}",
            ]
        )
    print_table(
        f"aiarch serve --workers N, reference MLP, c={args.connections} ({os.cpu_count()} cores)",
        ["workers", "req/s", "x 1 worker", "p50 us", "p99 us", "scrape p50 ms", "p99 ms", "x 1"],
        rows,
    )
    write_json(args.json, "bench_workers", results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
