"""Cost of tracing: `aiarch serve` with tracing off against `--trace-sample 0.01`, driven by wrk.

Model and load as in bench_server.py (the reference MLP as ONNX, one-row v2 JSON body, wrk
`-t1`, 64 connections by default). The servers run at once on 127.0.0.1 and are loaded in
turn — off, on, all, off, on, all, ... — so that load from other work on the machine falls on
each alike. The figure is the ratio of the median req/s with tracing on to the median with it
off (target >= 0.98), with the ratio of the server's CPU time per request (read from /proc
around each run). Both move by several per cent with the load other work puts on a shared
machine, more than 1 % sampling costs; the third server, tracing every request
(`--trace-sample 1`), shows the cost itself: its extra server CPU per request over the untraced
one is the CPU a traced request costs, and a hundredth of it what 1 % sampling costs each
request. The traced servers write their spans to files (the local exporter); the run counts
them, so a run that traced nothing cannot pass for a cheap one.

    python benchmarks/bench_tracing.py                 # 4 rounds of 10 s each, table + JSON
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


def _lines(path: Path) -> int:
    if not path.exists():
        return 0
    with path.open("rb") as f:
        return sum(1 for _ in f)


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
        rates = {"off": 0.0, "on": SAMPLE, "all": 1.0}
        ports = {mode: _free_port() for mode in rates}
        pids: dict[str, int] = {}
        for mode, port in ports.items():
            cmd = aiarch_cmd(port, onnx, "native")
            env = {"AIARCH_TRACE_SAMPLE": "0"}
            if rates[mode]:
                cmd += ["--trace-sample", str(rates[mode])]
                env = {"AIARCH_TRACE_FILE": str(tmp / f"spans-{mode}.jsonl")}
            pids[mode] = stack.enter_context(_server(cmd, port, tmp / f"{mode}.log", env))
        path = "/v2/models/mlp/infer"
        for port in ports.values():  # warm both before measuring either
            load(port, path, body, hlen, args.connections, 1.0)
        runs: list[dict[str, Any]] = []
        for i in range(args.rounds):
            for mode in rates:
                cpu0 = _cpu_s(pids[mode])
                r = load(ports[mode], path, body, hlen, args.connections, args.duration)
                cpu = _cpu_s(pids[mode]) - cpu0
                r.update(mode=mode, round=i, server_cpu_us_per_request=cpu / r["requests"] * 1e6)
                runs.append(r)
                print(f"  round {i} tracing {mode}: {r['rps']:,.0f} req/s", flush=True)
        time.sleep(6)  # the batch span processor exports every 5 s
        spans_written = {mode: _lines(tmp / f"spans-{mode}.jsonl") for mode in rates if rates[mode]}

    rps = {m: [r["rps"] for r in runs if r["mode"] == m] for m in rates}
    median = {m: statistics.median(v) for m, v in rps.items()}
    cpu = {
        m: statistics.median(r["server_cpu_us_per_request"] for r in runs if r["mode"] == m)
        for m in rates
    }
    traced_cpu_us = cpu["all"] - cpu["off"]  # per traced request
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
        f"{args.duration:g} s per run, interleaved; 'all': --trace-sample 1)",
        ["round", "tracing", "req/s", "p50 ms", "p99 ms", "server CPU µs/req", "vs median off"],
        rows,
    )
    print(
        f"\nmedian req/s: off {median['off']:,.0f}, on {median['on']:,.0f}; "
        f"ratio on/off {ratio:.3f} (pairs: {', '.join(f'{x:.3f}' for x in pair_ratios)}); "
        f"spans written: {spans_written['on']:,} (on), {spans_written['all']:,} (all)\n"
        f"server CPU per request (median): off {cpu['off']:.1f} µs, on {cpu['on']:.1f} µs; "
        f"ratio off/on {cpu_ratio:.3f} (the throughput the CPU cost allows, less sensitive to "
        "other load on the machine than req/s)\n"
        f"tracing every request: server CPU {cpu['all']:.1f} µs per request, so a traced "
        f"request costs {traced_cpu_us:.1f} µs; at {SAMPLE:g} sampling that is "
        f"{traced_cpu_us * SAMPLE:.2f} µs per request, off/on "
        f"{cpu['off'] / (cpu['off'] + traced_cpu_us * SAMPLE):.4f}"
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
            "server_cpu_us_per_traced_request": traced_cpu_us,
            "spans_written": spans_written,
        },
    )
    if not all(spans_written.values()):
        print(f"bench_tracing: a traced server wrote no spans: {spans_written}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
