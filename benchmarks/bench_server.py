"""HTTP serving benchmark: `aiarch serve` (default flags) against the naive FastAPI server and the
machine's limit (a trivial C HTTP server), driven by wrk.

Model: the MLP 64 → 256 → ReLU → 256 → ReLU → 16 (float32, seed 0; benchmarks/server_mlp.py),
exported to ONNX and served from that file: `aiarch serve --model mlp=mlp.onnx` with no other
flag, as a new user would; the FastAPI + uvicorn baseline (one worker, one onnxruntime call per
request; benchmarks/server_fastapi_baseline.py) runs the same file. The trivial C server
(benchmarks/trivial_http_server.c) reads the same requests and answers a fixed reply: what the
machine and wrk allow. aiarch is also measured with `--http python` (every request through the
Python httptools front end) to show what the native request path buys, and as a canary split
(`--route mlp=production:90,staging:10` over two registry versions of the same file, as a
progressive rollout serves it), which the native path routes itself. Load: Debian's
`wrk -t1 -d15s` at 1, 8, 64 and 256 connections, POSTing a one-row KServe v2 body, JSON and
binary tensor extension. Everything stays on 127.0.0.1. Every server runs for the whole
benchmark and each point (connections, body) measures them back to back, so the ratios compare
runs a minute apart at most; `--rounds N` measures every point N times and reports the median of
each figure and of each same-round ratio (each round's ratios are in the JSON).

wrk is closed-loop: each connection waits for its reply, so the tail is under-reported compared
with an open-loop (coordinated-omission-corrected) generator; all servers are measured alike.

    python benchmarks/bench_server.py                 # full run (~10 min), table + JSON
    python benchmarks/bench_server.py --rounds 3      # the same, three times (~30 min)
    python benchmarks/bench_server.py --smoke         # under a minute
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import warnings
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _report import print_table, write_json  # noqa: E402

LUA = HERE / "wrk_post.lua"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    # One torch/OpenMP thread in both servers: set_num_threads(1) alone applies to the thread
    # that calls it, and idle OpenMP workers spinning on a 2-core machine steal the loop's core.
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    try:
        import aiarch

        root = str(Path(aiarch.__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    except ImportError:
        pass
    return env


def _wait_ready(port: int, proc: subprocess.Popen[bytes], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError("server did not become ready")


@contextmanager
def _server(
    cmd: list[str], port: int, log: Path, extra_env: dict[str, str] | None = None
) -> Iterator[int]:
    """A server process for the run, stopped after; yields its pid."""
    with open(log, "wb") as logf:
        proc = subprocess.Popen(
            cmd,
            stdout=logf,
            stderr=subprocess.STDOUT,
            env={**_env(), **(extra_env or {})},
            cwd=str(HERE.parent),
        )
        try:
            _wait_ready(port, proc)
            yield proc.pid
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def aiarch_cmd(port: int, onnx: Path, http: str) -> list[str]:
    """`aiarch serve` with default flags (plus the front end when it is not the default)."""
    cmd = [sys.executable, "-m", "aiarch.cli", "serve", "--port", str(port)]
    cmd += ["--model", f"mlp={onnx}", "--log-level", "warning"]
    if http != "native":
        cmd += ["--http", http]
    return cmd


def canary_cmd(port: int, onnx: Path, tmp: Path) -> tuple[list[str], dict[str, str]]:
    """`aiarch serve` splitting the same model 90/10 between two registry versions (a canary
    as a rollout serves it), with no other flag."""
    from aiarch.registry import Registry

    home, url = tmp / "registry-home", f"sqlite:///{tmp / 'registry.db'}"
    reg = Registry(url, home=home)
    for alias in ("production", "staging"):
        reg.promote("mlp", reg.register("mlp", str(onnx)).version, to=alias)
    reg.close()
    cmd = [sys.executable, "-m", "aiarch.cli", "serve", "--port", str(port), "--registry", url]
    cmd += ["--model", "mlp@production", "--route", "mlp=production:90,staging:10"]
    return [*cmd, "--log-level", "warning"], {"AIARCH_HOME": str(home)}


def trivial_cmd(port: int, tmp: Path) -> list[str] | None:
    """The trivial C server, compiled for this run; None when no C compiler is found."""
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        return None
    exe = tmp / "trivial_http_server"
    subprocess.run([cc, "-O2", "-o", str(exe), str(HERE / "trivial_http_server.c")], check=True)
    return [str(exe), str(port)]


def export_onnx(tmp: Path) -> Path:
    """The reference MLP as an ONNX file (input0 → output0, dynamic rows)."""
    import torch

    from server_mlp import net

    path = tmp / "mlp.onnx"
    warnings.filterwarnings("ignore", category=DeprecationWarning, module="torch.onnx")
    torch.onnx.export(
        net,
        (torch.zeros(1, 64),),
        str(path),
        input_names=["input0"],
        output_names=["output0"],
        dynamic_axes={"input0": {0: "rows"}, "output0": {0: "rows"}},
        dynamo=False,
    )
    return path


def baseline_cmd(port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "--app-dir",
        str(HERE),
        "server_fastapi_baseline:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--log-level",
        "warning",
        "--no-access-log",
    ]


def bodies(tmp: Path) -> dict[str, tuple[Path, int | None]]:
    """One-row request bodies: v2 JSON, and v2 binary (JSON header + 256 raw bytes)."""
    x = np.random.default_rng(0).standard_normal(64).astype(np.float32)
    doc = {
        "inputs": [
            {"name": "input0", "shape": [1, 64], "datatype": "FP32", "data": [float(v) for v in x]}
        ]
    }
    (tmp / "json.body").write_bytes(json.dumps(doc).encode())
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input0",
                    "shape": [1, 64],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ],
            "outputs": [{"name": "output0", "parameters": {"binary_data": True}}],
        }
    ).encode()
    (tmp / "binary.body").write_bytes(header + x.tobytes())
    return {"json": (tmp / "json.body", None), "binary": (tmp / "binary.body", len(header))}


def run_wrk(
    port: int, path: str, body: Path, hlen: int | None, conns: int, duration: float
) -> dict[str, Any]:
    env = dict(
        os.environ,
        AIARCH_BENCH_PATH=path,
        AIARCH_BENCH_BODY=str(body),
        AIARCH_BENCH_HLEN="" if hlen is None else str(hlen),
    )
    cmd = [
        "wrk",
        "-t1",
        f"-c{conns}",
        f"-d{max(1, round(duration))}s",
        "--timeout",
        "10s",
        "-s",
        str(LUA),
        f"http://127.0.0.1:{port}",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=duration + 60)
    for line in out.stdout.splitlines():
        if line.startswith("WRKJSON "):
            r = json.loads(line[len("WRKJSON ") :])
            r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
            return r
    raise RuntimeError(f"wrk gave no result: {out.stdout}\n{out.stderr}")


def run_python_client(
    port: int, path: str, body: Path, hlen: int | None, conns: int, duration: float
) -> dict[str, Any]:
    """Fallback when wrk is missing (smoke runs only): one keep-alive connection, closed loop."""
    payload = body.read_bytes()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(payload)}\r\n"
        + (f"Inference-Header-Content-Length: {hlen}\r\n" if hlen is not None else "")
        + "\r\n"
    ).encode()
    lat: list[float] = []
    errors = 0
    with socket.create_connection(("127.0.0.1", port)) as s, s.makefile("rb") as f:
        end = time.perf_counter() + duration
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            s.sendall(head + payload)
            status = int(f.readline().split()[1])
            length = 0
            while (line := f.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            f.read(length)
            lat.append((time.perf_counter() - t0) * 1e6)
            errors += status != 200
    a = np.array(lat)
    return {
        "requests": len(a),
        "rps": len(a) / duration,
        "p50_us": float(np.percentile(a, 50)),
        "p90_us": float(np.percentile(a, 90)),
        "p99_us": float(np.percentile(a, 99)),
        "p999_us": float(np.percentile(a, 99.9)),
        "max_us": float(a.max()),
        "errors_status": errors,
        "client": "python (wrk not installed)",
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--smoke", action="store_true", help="under a minute in total")
    ap.add_argument("--duration", type=float, default=15.0, help="seconds per wrk run")
    ap.add_argument("--connections", type=int, nargs="+", default=[1, 8, 64, 256])
    ap.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="measure every point this many times (all servers each round); the table gives "
        "the median of each figure and of each same-round ratio",
    )
    ap.add_argument("--no-baseline", action="store_true", help="skip FastAPI")
    ap.add_argument("--json", default="bench-results/bench_server.json", help="output file")
    args = ap.parse_args(argv)
    if args.smoke:
        args.duration, args.connections, args.rounds = 2.0, [1, 64], 1
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    wrk = shutil.which("wrk")
    if wrk is None and not args.smoke:
        print("bench_server: wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    load = run_wrk if wrk else run_python_client
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        if not args.no_baseline:
            print("bench_server: fastapi/uvicorn missing; skipping the baseline", file=sys.stderr)
        args.no_baseline = True

    results: list[dict[str, Any]] = []
    path = "/v2/models/mlp/infer"
    with tempfile.TemporaryDirectory() as tmpdir, ExitStack() as servers:
        tmp = Path(tmpdir)
        b = bodies(tmp)
        onnx = export_onnx(tmp)
        plans: list[tuple[str, list[str], int, list[str], dict[str, str]]] = []
        if not args.no_baseline:
            port = _free_port()
            plans.append(
                ("fastapi", baseline_cmd(port), port, ["json"], {"AIARCH_BENCH_ONNX": str(onnx)})
            )
        port = _free_port()
        trivial = trivial_cmd(port, tmp)
        if trivial is not None:
            plans.append(("trivial C", trivial, port, ["json", "binary"], {}))
        for http in ("native", "python"):
            port = _free_port()
            name = "aiarch" if http == "native" else "aiarch --http python"
            plans.append((name, aiarch_cmd(port, onnx, http), port, ["json", "binary"], {}))
        port = _free_port()
        cmd, env = canary_cmd(port, onnx, tmp)
        plans.append(("aiarch canary 90/10", cmd, port, ["json", "binary"], env))
        # Every server runs for the whole benchmark (idle ones cost nothing), so the servers
        # of one point are measured back to back: drift in the shared machine's speed lands
        # on all of them alike rather than on whichever ran last.
        for _name, cmd, port, kinds, extra_env in plans:
            servers.enter_context(_server(cmd, port, tmp / f"{port}.log", extra_env))
            for kind in kinds:
                body, hlen = b[kind]
                load(port, path, body, hlen, 8, 1.0)  # warm-up
        for round_ in range(1, args.rounds + 1):
            for c in args.connections:
                for kind in ("json", "binary"):
                    body, hlen = b[kind]
                    for name, _cmd, port, kinds, _env in plans:
                        if kind not in kinds:
                            continue
                        r = load(port, path, body, hlen, c, args.duration)
                        r.update(server=name, body=kind, connections=c, round=round_)
                        results.append(r)
                        print(
                            f"  [{round_}/{args.rounds}] {name:22s} {kind:6s} c={c:<3d} "
                            f"{r['rps']:10.0f} req/s  p50 {r['p50_us']:8.0f} us  "
                            f"p99 {r['p99_us']:8.0f} us",
                            flush=True,
                        )
    # Ratios within a round (the baseline measured minutes, not rounds, apart), then the
    # median over rounds of each figure and each ratio.
    base = {(r["round"], r["connections"]): r for r in results if r["server"] == "fastapi"}
    limit = {
        (r["round"], r["connections"], r["body"]): r["rps"]
        for r in results
        if r["server"] == "trivial C"
    }
    for r in results:
        f = base.get((r["round"], r["connections"]))
        t = limit.get((r["round"], r["connections"], r["body"]))
        r["x_fastapi_rps"] = r["rps"] / f["rps"] if f else float("nan")
        r["x_fastapi_p50"] = r["p50_us"] / f["p50_us"] if f else float("nan")
        r["of_trivial_c"] = r["rps"] / t if t else float("nan")
    figures = ("rps", "p50_us", "p99_us", "x_fastapi_rps", "x_fastapi_p50", "of_trivial_c")
    summary: list[dict[str, Any]] = []
    for key in dict.fromkeys((r["server"], r["body"], r["connections"]) for r in results):
        runs = [r for r in results if (r["server"], r["body"], r["connections"]) == key]
        row: dict[str, Any] = dict(zip(("server", "body", "connections"), key, strict=True))
        row.update({f: float(np.median([r[f] for r in runs])) for f in figures})
        row["errors_status"] = sum(r.get("errors_status", 0) for r in runs)
        if args.rounds > 1:
            row["x_fastapi_p50_rounds"] = [r["x_fastapi_p50"] for r in runs]
            row["x_fastapi_rps_rounds"] = [r["x_fastapi_rps"] for r in runs]
        summary.append(row)
    rows = [
        [
            r["server"],
            r["body"],
            r["connections"],
            r["rps"],
            r["p50_us"] / 1e3,
            r["p99_us"] / 1e3,
            r["errors_status"],
            r["x_fastapi_rps"],
            r["x_fastapi_p50"],
            r["of_trivial_c"],
        ]
        for r in summary
    ]
    rounds = f"median of {args.rounds} rounds; " if args.rounds > 1 else ""
    print_table(
        f"v2 infer, one row, MLP 64-256-256-16 as ONNX ({'smoke, ' if args.smoke else ''}"
        f"{args.duration:g}s per point; {rounds}x fastapi = over FastAPI at the same "
        "connections, same round; of trivial C = share of the trivial C server's req/s, same "
        "body, connections and round)",
        [
            "server",
            "body",
            "conns",
            "req/s",
            "p50 ms",
            "p99 ms",
            "non-2xx",
            "x fastapi req/s",
            "x fastapi p50",
            "of trivial C",
        ],
        rows,
    )
    if args.rounds > 1 and base:
        print("\nper round, x fastapi p50 (c=1) and x fastapi req/s (c=64), aiarch:")
        for r in summary:
            if r["server"] == "aiarch" and r["connections"] in (1, 64):
                per = "x_fastapi_p50_rounds" if r["connections"] == 1 else "x_fastapi_rps_rounds"
                values = "  ".join(f"{v:.2f}" for v in r[per])
                print(f"  {r['body']:6s} c={r['connections']:<3d} {values}")
    write_json(
        args.json,
        "bench_server",
        {"duration_s": args.duration, "rounds": args.rounds, "summary": summary, "runs": results},
    )
    return 0 if all(r.get("errors_status", 0) == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
