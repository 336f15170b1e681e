"""Cost of tracing: `aiarch serve` with tracing off against `--trace-sample 0.01`, driven by wrk.

Model and load as in bench_server.py (the reference MLP as ONNX, one-row v2 JSON body, wrk
`-t1`, 64 connections by default). Both servers run at once on 127.0.0.1 and are loaded in
turn — off, on, off, on, ... — so that load from other work on the machine falls on both
alike; the figure is the ratio of the median req/s with tracing on to the median with it off
(target >= 0.98), and the ratio of the server's CPU time per request (read from /proc around
each run), which other load on the machine disturbs less. The traced server writes its spans to a file (the local exporter); the run
counts them, so a run that traced nothing cannot pass for a cheap one.

    python benchmarks/bench_tracing.py                 # 4 rounds of 10 s each way, table + JSON
    python benchmarks/bench_tracing.py --smoke         # under 30 s
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

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

SAMPLE = 0.01


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc), 0.0 where unavailable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="one short round each way (< 30 s)")
    ap.add_argument("--rounds", type=int, default=4, help="(off, on) pairs")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run")
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--json", default="bench_tracing.json", help="output file ('' = none)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.rounds, args.duration = 1, 2.0
    load = run_wrk if shutil.which("wrk") else run_python_client
    if load is run_python_client and not args.smoke:
        print("bench_tracing: wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory(prefix="aiarch-bench-tracing-") as d, ExitStack() as stack:
        tmp = Path(d)
        onnx = export_onnx(tmp)
        body, hlen = bodies(tmp)["json"]
        spans = tmp / "spans.jsonl"
        ports = {"off": _free_port(), "on": _free_port()}
        pids: dict[str, int] = {}
        for mode, port in ports.items():
            cmd = aiarch_cmd(port, onnx, "native")
            env = {"AIARCH_TRACE_SAMPLE": "0"}
            if mode == "on":
                cmd += ["--trace-sample", str(SAMPLE)]
                env = {"AIARCH_TRACE_FILE": str(spans)}
            pids[mode] = stack.enter_context(_server(cmd, port, tmp / f"{mode}.log", env))
        path = "/v2/models/mlp/infer"
        for port in ports.values():  # warm both before measuring either
            load(port, path, body, hlen, args.connections, 1.0)
        runs: list[dict[str, Any]] = []
        for i in range(args.rounds):
            for mode in ("off", "on"):
                cpu0 = _cpu_s(pids[mode])
                r = load(ports[mode], path, body, hlen, args.connections, args.duration)
                cpu = _cpu_s(pids[mode]) - cpu0
                r.update(mode=mode, round=i, server_cpu_us_per_request=cpu / r["requests"] * 1e6)
                runs.append(r)
                print(f"  round {i} tracing {mode}: {r['rps']:,.0f} req/s", flush=True)
        time.sleep(6)  # the batch span processor exports every 5 s
        spans_written = sum(1 for _ in spans.open()) if spans.exists() else 0

    rps = {m: [r["rps"] for r in runs if r["mode"] == m] for m in ("off", "on")}
    median = {m: statistics.median(v) for m, v in rps.items()}
    cpu = {
        m: statistics.median(r["server_cpu_us_per_request"] for r in runs if r["mode"] == m)
        for m in ("off", "on")
    }
    cpu_ratio = cpu["off"] / cpu["on"] if cpu["on"] else 0.0
    ratio = median["on"] / median["off"]
    pair_ratios = [on / off for off, on in zip(rps["off"], rps["on"])]
    rows = [
        [
            r["round"],
            r["mode"],
            r["rps"],
            r["p50_us"] / 1e3,
            r["p99_us"] / 1e3,
            r["server_cpu_us_per_request"],
            r["rps"] / median["off"],
        ]
        for r in runs
    ]
    print_table(
        f"aiarch serve, tracing off vs --trace-sample {SAMPLE} ({args.connections} connections, "
        f"{args.duration:g} s per run, interleaved)",
        ["round", "tracing", "req/s", "p50 ms", "p99 ms", "server CPU µs/req", "vs median off"],
        rows,
    )
    print(
        f"\nmedian req/s: off {median['off']:,.0f}, on {median['on']:,.0f}; "
        f"ratio on/off {ratio:.3f} (pairs: {', '.join(f'{x:.3f}' for x in pair_ratios)}); "
        f"spans written: {spans_written}\n"
        f"server CPU per request (median): off {cpu['off']:.1f} µs, on {cpu['on']:.1f} µs; "
        f"ratio off/on {cpu_ratio:.3f} (the throughput the CPU cost allows, less sensitive to "
        "other load on the machine than req/s)"
    )
    write_json(
        args.json,
        "bench_tracing",
        {
            "sample": SAMPLE,
            "connections": args.connections,
            "duration_s": args.duration,
            "runs": runs,
            "median_rps": median,
            "ratio_on_off": ratio,
            "server_cpu_us_per_request": cpu,
            "cpu_ratio_off_on": cpu_ratio,
            "pair_ratios": pair_ratios,
            "spans_written": spans_written,
        },
    )
    if spans_written == 0:
        print("bench_tracing: the traced server wrote no spans", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
