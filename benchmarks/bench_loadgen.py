"""The load generator's own ceiling against Debian's `wrk -t1`, and what each sees of a pause.

Endpoint: benchmarks/trivial_http_server.c, a single-threaded epoll HTTP/1.1 server that
answers every request with a fixed 2-byte 200 (keep-alive, pipelining), compiled with `cc -O2`
by this script. It does as little as a server can, so the client is what limits the rate.
With --pin the server runs on CPU 0 and both clients on CPU 1. Other processes on a shared
machine compete with both, so runs alternate wrk / aiarch and are repeated, and CPU µs per
request (user + system time of the client) is reported next to the rate: it does not depend on
how much of a core the client was given.

1. Ceiling: `wrk -t1 -cN` and aiarch's native generator (1 thread, N connections, closed loop)
   for the same duration; requests/s and CPU µs per request (user + system of the client),
   ratio aiarch / wrk. Then aiarch open loop at fixed rates (constant arrivals): the rate
   achieved, the generator's send lag and whether it kept the schedule (mean lag <= 1 % of the
   interval, the rule `aiarch bench` refuses points by).
2. Pause: the server is stopped (SIGSTOP) for 0.3 s in the middle of a run. Open loop records
   every request due during the pause from its intended time, so its p99 shows the pause;
   aiarch's closed loop has only its N requests in flight behind it and its raw p99 hides it.
   wrk is closed-loop too, but corrects its histogram afterwards for coordinated omission
   (stats_correct: synthetic samples at its mean request interval), so its p99 shows the pause
   as an estimate.

    python benchmarks/bench_loadgen.py              # full run (~1.5 min)
    python benchmarks/bench_loadgen.py --smoke      # a few seconds (CI)
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _report import print_table, write_json  # noqa: E402
from aiarch import _core  # noqa: E402

SERVER_C = HERE / "trivial_http_server.c"
SERVER_CPU, CLIENT_CPU = 0, 1


def _pin(cpu: int) -> list[int] | None:
    """Pins this process to `cpu` when the machine has it; returns the old set."""
    try:
        old = sorted(os.sched_getaffinity(0))
        if cpu in old and len(old) > 1:
            os.sched_setaffinity(0, {cpu})
            return old
    except (AttributeError, OSError):
        pass
    return None


@contextmanager
def trivial_server(tmp: Path, pin: bool) -> Iterator[tuple[int, subprocess.Popen[str]]]:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise SystemExit("bench_loadgen: a C compiler (cc) is needed to build the trivial server")
    exe = tmp / "trivial_http_server"
    subprocess.run([cc, "-O2", "-o", str(exe), str(SERVER_C)], check=True, timeout=120)
    cmd = [str(exe), "0"]
    if pin and shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        cmd = ["taskset", "-c", str(SERVER_CPU), *cmd]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("ready "):
            raise RuntimeError(f"trivial server did not start: {line!r}")
        yield int(line.split()[1]), proc
    finally:
        proc.send_signal(signal.SIGCONT)
        proc.terminate()
        proc.wait(10)


REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


def _cpu_self() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _cpu_children() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_wrk(port: int, conns: int, duration: float) -> dict[str, Any]:
    c0 = _cpu_children()
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{conns}",
            f"-d{max(1, round(duration))}s",
            "--latency",
            f"http://127.0.0.1:{port}/",
        ],
        capture_output=True,
        text=True,
        timeout=duration + 60,
    ).stdout
    cpu = _cpu_children() - c0
    n = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]

    def pct(label: str) -> float:
        m = re.search(rf"\s{re.escape(label)}\s+([\d.]+)(us|ms|s)\b", out)
        if m is None:
            return float("nan")
        scale = {"us": 1.0, "ms": 1e3, "s": 1e6}[m.group(2)]
        return float(m.group(1)) * scale

    return {
        "rps": rate,
        "requests": n,
        "cpu_us_per_req": cpu / max(1, n) * 1e6,
        "p50_us": pct("50%"),
        "p99_us": pct("99%"),
    }


def run_aiarch(
    port: int,
    mode: str,
    conns: int,
    duration: float,
    rate: float = 0.0,
    pipeline: int = 1,
    warmup: float = 0.5,
    threads: int = 1,
) -> dict[str, Any]:
    gen = _core.LoadGenerator(
        "127.0.0.1",
        port,
        [REQUEST],
        mode=mode,
        rate_per_s=rate,
        connections=conns,
        threads=threads,
        pipeline=pipeline,
        warmup_s=warmup,
        duration_s=duration,
    )
    c0 = _cpu_self()
    gen.run()
    cpu = _cpu_self() - c0
    r = gen.result()
    lat, lag = r["latency"], r["send_lag"]
    sent_total = gen.progress()["sent"]
    return {
        "rps": r["succeeded_in_window"] / duration,
        "requests": r["completed"],
        "cpu_us_per_req": cpu / max(1, sent_total) * 1e6,
        "p50_us": lat.percentile(50) / 1e3,
        "p99_us": lat.percentile(99) / 1e3,
        "p999_us": lat.percentile(99.9) / 1e3,
        "max_us": lat.max / 1e3,
        "lag_mean_us": lag.mean / 1e3 if lag.total_count else 0.0,
        "lag_p99_us": lag.percentile(99) / 1e3 if lag.total_count else 0.0,
        # aiarch bench's refusal rule: mean send lag <= 1 % of the measurement interval.
        "schedule_kept": (lag.mean if lag.total_count else 0) <= 0.01 * duration * 1e9,
        "errors": r["io_errors"] + r["timeouts"] + r["unsent"],
    }


def with_pause(proc: subprocess.Popen[str], run: Any, after_s: float, pause_s: float) -> Any:
    box: dict[str, Any] = {}
    t = threading.Thread(target=lambda: box.setdefault("r", run()))
    t.start()
    time.sleep(after_s)
    proc.send_signal(signal.SIGSTOP)
    time.sleep(pause_s)
    proc.send_signal(signal.SIGCONT)
    t.join()
    return box["r"]


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--smoke", action="store_true", help="a few seconds (CI)")
    ap.add_argument("--json", help="write results here")
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument(
        "--pin",
        action="store_true",
        help="pin the server to CPU 0 and the clients to CPU 1 (on a quiet machine; on a shared "
        "one it keeps them from moving to whichever core is free)",
    )
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit(
            "bench_loadgen: Debian's wrk is needed (apt-get install wrk; scripts/setup.sh)"
        )
    duration = 1.0 if args.smoke else 5.0
    repeats = 1 if args.smoke else 3
    open_rates = (
        [(20_000.0, 1)]
        if args.smoke
        else [(25_000.0, 1), (50_000.0, 1), (50_000.0, 2), (75_000.0, 2), (100_000.0, 2)]
    )
    conns = args.connections
    results: dict[str, Any] = {
        "connections": conns,
        "duration_s": duration,
        "endpoint": "benchmarks/trivial_http_server.c",
    }
    with tempfile.TemporaryDirectory() as tmp, trivial_server(Path(tmp), args.pin) as (port, proc):
        if args.pin:
            _pin(CLIENT_CPU)
        ceiling: list[dict[str, Any]] = []
        for k in range(repeats):
            w = run_wrk(port, conns, duration)
            a = run_aiarch(port, "closed", conns, duration)
            ceiling.append({"repeat": k, "wrk": w, "aiarch": a, "ratio": a["rps"] / w["rps"]})
        rows = []
        for c in ceiling:
            for name in ("wrk", "aiarch"):
                r = c[name]
                rows.append(
                    [
                        f"{name} -t1 -c{conns}" if name == "wrk" else f"aiarch closed c{conns}",
                        c["repeat"],
                        r["rps"],
                        r["cpu_us_per_req"],
                        r["p50_us"],
                        r["p99_us"],
                        c["ratio"] if name == "aiarch" else "",
                    ]
                )
        print_table(
            f"Ceiling against the trivial endpoint ({duration:g} s each, alternating)",
            ["client", "run", "req/s", "CPU us/req", "p50 us", "p99 us", "aiarch/wrk"],
            rows,
        )
        ratios = sorted(c["ratio"] for c in ceiling)
        best_a = max(c["aiarch"]["rps"] for c in ceiling)
        best_w = max(c["wrk"]["rps"] for c in ceiling)
        results["ceiling"] = ceiling
        results["ceiling_summary"] = {
            "ratio_median": ratios[len(ratios) // 2],
            "aiarch_best_rps": best_a,
            "wrk_best_rps": best_w,
            "best_ratio": best_a / best_w,
        }
        open_rows = []
        opened = []
        for rate, threads in open_rates:
            r = run_aiarch(port, "constant", conns, duration, rate=rate, threads=threads)
            r["offered"], r["threads"] = rate, threads
            opened.append(r)
            kept = "yes" if r["schedule_kept"] else "NO"
            open_rows.append(
                [
                    rate,
                    threads,
                    r["rps"],
                    r["cpu_us_per_req"],
                    r["lag_mean_us"],
                    r["lag_p99_us"],
                    kept,
                    r["p50_us"],
                    r["p99_us"],
                ]
            )
        print_table(
            "aiarch open loop (constant arrivals)",
            [
                "offered/s",
                "threads",
                "achieved/s",
                "CPU us/req",
                "lag mean us",
                "lag p99 us",
                "schedule kept",
                "p50 us",
                "p99 us",
            ],
            open_rows,
        )
        results["open_loop"] = opened

        pause_s, after_s = 0.3, (0.5 if args.smoke else 1.5)
        pdur = 1.5 if args.smoke else 4.0
        rate = 5000.0
        o = with_pause(
            proc,
            lambda: run_aiarch(port, "constant", 64, pdur, rate=rate, pipeline=32, warmup=0.0),
            after_s,
            pause_s,
        )
        c = with_pause(
            proc, lambda: run_aiarch(port, "closed", conns, pdur, warmup=0.0), after_s, pause_s
        )
        w = with_pause(proc, lambda: run_wrk(port, conns, pdur), after_s, pause_s)
        prow = [
            [
                f"aiarch open {rate:g}/s",
                o["p50_us"],
                o["p99_us"],
                o["max_us"],
                "yes" if o["p99_us"] >= pause_s * 1e6 / 2 else "no",
            ],
            [
                f"aiarch closed c{conns}",
                c["p50_us"],
                c["p99_us"],
                c["max_us"],
                "yes" if c["p99_us"] >= pause_s * 1e6 / 2 else "no",
            ],
            [
                f"wrk -t1 -c{conns}",
                w["p50_us"],
                w["p99_us"],
                float("nan"),
                "yes" if w["p99_us"] >= pause_s * 1e6 / 2 else "no",
            ],
        ]
        print_table(
            f"Server stopped for {pause_s * 1e3:g} ms in a {pdur:g} s run",
            ["generator", "p50 us", "p99 us", "max us", "p99 shows pause"],
            prow,
        )
        results["pause"] = {"pause_s": pause_s, "open": o, "closed": c, "wrk": w}
    s = results["ceiling_summary"]
    print(
        f"\nceiling: aiarch/wrk median ratio {s['ratio_median']:.2f} "
        f"(best aiarch {s['aiarch_best_rps']:,.0f} req/s vs best wrk {s['wrk_best_rps']:,.0f}); "
        f"targets: >= wrk {'met' if s['ratio_median'] >= 1 else 'MISSED'}, "
        f">= 50k req/s {'met' if s['aiarch_best_rps'] >= 50_000 else 'MISSED'}"
    )
    write_json(args.json, "loadgen", results)


if __name__ == "__main__":
    main()
