"""Reliability benchmark: `aiarch serve` attacked on purpose, on 127.0.0.1 only, bounded in time
and request count.

Five scenarios, each against its own freshly started server:

- overload: the capacity of a model with a fixed service time (`busy`, 4 ms per batch of 1 row,
  admission bound 16 rows) is measured closed-loop; then an open-loop generator offers 2x that
  rate. Reported: goodput (2xx per second) as a fraction of the capacity measured in the same run,
  the latency of the 429 refusals (p50/p99 from the intended send time: coordinated-omission
  safe), and the success rate of the first window after the overload (recovery).
- deadline: a request with an X-Request-Timeout-Ms deadline queued behind a batch that runs for
  200 ms (`slow`). Reported: how late its 504 arrives past the deadline, and how many expired
  requests were executed anyway (rows the model ran minus 2xx answers).
- fuzz: N hostile requests (random bytes, broken HTTP, malformed or out-of-range JSON, hostile
  header values, deep nesting, lying Content-Length) on fresh connections, one valid request on a
  keep-alive connection after every few. Reported: server crashes, wrong answers to the valid
  requests, 5xx answers to client errors, connections left hanging, and the server's RSS after
  warm-up and at the end.
- kill: `--workers 2` under open-loop load; one worker is killed with SIGKILL (repeatedly in the
  full run). Reported: refused connections, requests lost with the killed worker's connections,
  and the time until the supervisor's replacement listens.
- soak: wrk (64 keep-alive connections) sends `--soak-requests` valid requests in chunks.
  Reported: requests and non-2xx answers, and the server's RSS and open file descriptors after a
  warm-up chunk and at the end (flat means nothing leaks per request).

    python benchmarks/bench_reliability.py              # full run (~3 min), table + JSON
    python benchmarks/bench_reliability.py --smoke      # seconds (CI)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _report import print_table, write_json  # noqa: E402
from aiarch.serving.process import ServerProcess  # noqa: E402
from reliability_models import W  # noqa: E402

MODELS = HERE / "reliability_models.py"
HOST = "127.0.0.1"


# ------------------------------------------------------------------ a minimal HTTP/1.1 client


class Conn:
    """One keep-alive connection; `request` sends raw bytes and reads one response."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Conn:
        reader, writer = await asyncio.open_connection(HOST, port)
        return cls(reader, writer)

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            k, _, v = line.partition(b":")
            if k.strip().lower() == b"content-length":
                length = int(v)
        body = await self.reader.readexactly(length) if length else b""
        return status, body

    def close(self) -> None:
        self.writer.close()


def http_request(path: str, body: bytes, headers: dict[str, str] | None = None) -> bytes:
    hdrs = {"Host": HOST, "Content-Type": "application/json", "Content-Length": str(len(body))}
    hdrs.update(headers or {})
    head = f"POST {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items())
    return head.encode() + b"\r\n" + body


def v2_body(name: str, rows: np.ndarray, parameters: dict[str, Any] | None = None) -> bytes:
    doc: dict[str, Any] = {
        "inputs": [
            {
                "name": name,
                "shape": list(rows.shape),
                "datatype": "FP32",
                "data": rows.reshape(-1).tolist(),
            }
        ]
    }
    if parameters:
        doc["parameters"] = parameters
    return json.dumps(doc).encode()


@dataclass
class Outcome:
    intended: float
    """When the schedule wanted the request sent (monotonic s)."""
    done: float
    sent: float = 0.0
    """When it was actually written (later than `intended` when the generator lagged)."""
    status: int = 0
    """HTTP status; 0 when the request failed below HTTP (see `error`)."""
    error: str = ""
    """refused, reset or io."""

    @property
    def latency_ms(self) -> float:
        return (self.done - self.intended) * 1e3

    @property
    def service_ms(self) -> float:
        """From the actual write: what a closed-loop tool would report."""
        return (self.done - self.sent) * 1e3


class Pool:
    """Up to `size` keep-alive connections; a failed one is dropped and reopened on demand.

    Like common HTTP clients, a request that fails on a reused keep-alive connection before
    any byte of the response arrived (the server side closed it: a worker was killed) is sent
    once more on a fresh connection; `retried` counts those."""

    def __init__(self, port: int, size: int) -> None:
        self.port = port
        self.retried = 0
        self.idle: asyncio.Queue[Conn | None] = asyncio.Queue()
        for _ in range(size):
            self.idle.put_nowait(None)

    async def send(self, raw: bytes, intended: float) -> Outcome:
        conn = await self.idle.get()
        sent = time.monotonic()
        try:
            for attempt in range(2):
                reused = conn is not None
                try:
                    if conn is None:
                        conn = await Conn.open(self.port)
                    sent = time.monotonic()
                    status, _ = await conn.request(raw)
                    return Outcome(intended, time.monotonic(), sent, status)
                except ConnectionRefusedError:
                    conn = None
                    return Outcome(intended, time.monotonic(), sent, error="refused")
                except (ConnectionResetError, asyncio.IncompleteReadError, BrokenPipeError) as e:
                    if conn is not None:
                        conn.close()
                    conn = None
                    unanswered = not isinstance(e, asyncio.IncompleteReadError) or not e.partial
                    if reused and unanswered and attempt == 0:
                        self.retried += 1
                        continue
                    return Outcome(intended, time.monotonic(), sent, error="reset")
                except OSError:
                    if conn is not None:
                        conn.close()
                    conn = None
                    return Outcome(intended, time.monotonic(), sent, error="io")
            raise AssertionError("unreachable")
        finally:
            self.idle.put_nowait(conn)

    def close(self) -> None:
        while not self.idle.empty():
            c = self.idle.get_nowait()
            if c is not None:
                c.close()


async def open_loop(
    pool: Pool,
    raw: bytes,
    rate: float,
    duration_s: float,
    on_tick: Callable[[], None] | None = None,
) -> list[Outcome]:
    """Sends at `rate` per second for `duration_s`, each request at its scheduled time whether or
    not earlier ones were answered; latency counts from the scheduled time."""
    start = time.monotonic()
    n = max(1, int(rate * duration_s))
    tasks = []
    for i in range(n):
        intended = start + i / rate
        delay = intended - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        if on_tick is not None:
            on_tick()
        tasks.append(asyncio.ensure_future(pool.send(raw, intended)))
    return list(await asyncio.gather(*tasks))


async def closed_loop(pool: Pool, raw: bytes, concurrency: int, duration_s: float) -> float:
    """Successful responses per second with `concurrency` requests always in flight."""
    end = time.monotonic() + duration_s
    ok = 0

    async def worker() -> None:
        nonlocal ok
        while time.monotonic() < end:
            o = await pool.send(raw, time.monotonic())
            ok += 200 <= o.status < 300

    t0 = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return ok / (time.monotonic() - t0)


def _count(keys: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for k in keys:
        out[k] = out.get(k, 0) + 1
    return out


def pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def start_server(args: list[str], tmp: Path, name: str, env: dict[str, str] | None = None) -> Any:
    from aiarch.serving.process import package_env

    srv = ServerProcess(
        [*args, "--log-level", "info"], tmp / f"{name}.log", env=package_env(env or {})
    )
    try:
        srv.wait_ready(120)
    except BaseException:
        srv.stop()
        raise
    return srv


def rss_mb(pid: int) -> float | None:
    """Resident memory of a live process in MB (None once it is gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return None


def stats(srv: Any, model: str) -> dict[str, Any]:
    import urllib.request

    with urllib.request.urlopen(f"{srv.base}/v2/models/{model}/stats", timeout=10) as r:
        return json.loads(r.read())["model_stats"][0]  # type: ignore[no-any-return]


# ------------------------------------------------------------------ scenarios


def overload(tmp: Path, a: argparse.Namespace) -> dict[str, Any]:
    srv = start_server(
        ["-m", f"busy={MODELS}:busy", "--max-batch-size", "1", "--max-queue-rows", "16",
         "--inline-execution", "off"],
        tmp, "overload",
    )  # fmt: skip
    raw = http_request("/v2/models/busy/infer", v2_body("x", np.ones((1, 2), np.float32)))

    async def run() -> dict[str, Any]:
        pool = Pool(srv.port, 256)
        try:
            # Capacity: as many in flight as the admission bound holds, so the model never idles.
            await closed_loop(pool, raw, 16, min(0.5, a.window_s))  # warm-up
            capacity = await closed_loop(pool, raw, 16, a.window_s)
            before = stats(srv, "busy")
            over = await open_loop(pool, raw, 2 * capacity, a.window_s)
            during = stats(srv, "busy")
            after = await open_loop(pool, raw, 0.5 * capacity, a.recovery_s)
        finally:
            pool.close()
        ok = [o for o in over if 200 <= o.status < 300]
        refused = [o.latency_ms for o in over if o.status == 429]
        refused_service = [o.service_ms for o in over if o.status == 429]
        lag = [(o.sent - o.intended) * 1e3 for o in over]
        span = max(o.done for o in over) - min(o.intended for o in over)
        goodput = len(ok) / span
        # The model's own rate while it was busy: rows per second of execution time.
        rows = during["inference_count"] - before["inference_count"]
        busy_ns = (
            during["inference_stats"]["compute_infer"]["ns"]
            - before["inference_stats"]["compute_infer"]["ns"]
        )
        return {
            "capacity_rps": capacity,
            "model_service_rate_rps": rows / (busy_ns / 1e9) if busy_ns else None,
            "offered_rps": 2 * capacity,
            "goodput_rps": goodput,
            "goodput_vs_capacity": goodput / capacity,
            "ok": len(ok),
            "status_429": len(refused),
            "other_failures": len(over) - len(ok) - len(refused),
            "latency_429_ms": {"p50": pct(refused, 50), "p99": pct(refused, 99)},
            "service_429_ms": {"p50": pct(refused_service, 50), "p99": pct(refused_service, 99)},
            "send_lag_ms": {"p50": pct(lag, 50), "p99": pct(lag, 99)},
            "latency_2xx_ms": {
                "p50": pct([o.latency_ms for o in ok], 50),
                "p99": pct([o.latency_ms for o in ok], 99),
            },
            "recovery_success_rate": sum(200 <= o.status < 300 for o in after) / len(after),
            "recovery_statuses": _count(o.error or str(o.status) for o in after),
        }

    try:
        return asyncio.run(run())
    finally:
        srv.stop()


def deadline(tmp: Path, a: argparse.Namespace) -> dict[str, Any]:
    srv = start_server(
        ["-m", f"slow={MODELS}:slow", "--max-batch-size", "1", "--inline-execution", "off"],
        tmp, "deadline",
    )  # fmt: skip
    body = v2_body("x", np.ones((1, 2), np.float32))
    blocker = http_request("/v2/models/slow/infer", body)
    timed = http_request(
        "/v2/models/slow/infer", body, {"X-Request-Timeout-Ms": f"{a.deadline_ms:g}"}
    )
    before = stats(srv, "slow")

    async def run() -> tuple[list[float], dict[int, int], int]:
        late: list[float] = []
        statuses: dict[int, int] = {}
        ok = 0
        a_conn, b_conn = await Conn.open(srv.port), await Conn.open(srv.port)
        try:
            for _ in range(a.deadline_trials):
                busy = asyncio.ensure_future(a_conn.request(blocker))
                await asyncio.sleep(0.02)  # the blocker is executing
                t0 = time.monotonic()
                status, _ = await b_conn.request(timed)
                waited_ms = (time.monotonic() - t0) * 1e3
                statuses[status] = statuses.get(status, 0) + 1
                if status == 504:
                    late.append(waited_ms - a.deadline_ms)
                ok += 200 <= status < 300
                s, _ = await busy
                ok += 200 <= s < 300
        finally:
            a_conn.close()
            b_conn.close()
        return late, statuses, ok

    try:
        late, statuses, ok = asyncio.run(run())
        after = stats(srv, "slow")
    finally:
        srv.stop()
    executed = after["inference_count"] - before["inference_count"]
    return {
        "deadline_ms": a.deadline_ms,
        "model_busy_ms": 200,
        "trials": a.deadline_trials,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "late_504_ms": {"p50": pct(late, 50), "p99": pct(late, 99), "max": max(late, default=None)},
        "expired_executed": max(0, executed - ok),
    }


def _hostile(rng: random.Random) -> tuple[str, bytes]:
    """One hostile request: (category, raw bytes sent on a fresh connection)."""
    kind = rng.choice(
        ["bytes", "http", "json", "tensor", "header", "params", "nesting", "length", "path"]
    )
    infer = "/v2/models/lin/infer"
    if kind == "bytes":
        return kind, rng.randbytes(rng.randint(1, 512))
    if kind == "http":
        method = rng.choice(["GET", "POST", "PUT", "X", "POST\x00", "GET /../"])
        target = rng.choice(["/v2", infer, "/%ff", "/v2/models/../x", "*", "/" + "a" * 5000])
        junk = "".join(chr(rng.randint(1, 255)) for _ in range(rng.randint(0, 40)))
        return kind, f"{method} {target} HTTP/1.1\r\n{junk}\r\n\r\n".encode("latin-1")
    if kind == "json":
        body = rng.choice([b"{", b"[]", b"null", b'{"inputs": 3}', b"\xff\xfe", b'{"inputs":[{}]}'])
        return kind, http_request(infer, body)
    if kind == "tensor":
        tensor = {
            "name": rng.choice(["x", "", "y"]),
            "shape": rng.choice([[1, 8], [2, 8], [1, 7], [-1, 8], [0, 8], [1 << 40, 8], []]),
            "datatype": rng.choice(["FP32", "FP64", "INT8", "BYTES", "FP33", ""]),
            "data": rng.choice([[0.5] * 8, [0.5] * 7, ["a"] * 8, [[1, 2]], None, 1e309]),
        }
        return kind, http_request(infer, json.dumps({"inputs": [tensor]}).encode())
    valid = v2_body("x", np.zeros((1, 8), np.float32))
    if kind == "header":
        value = rng.choice(["1e20", "1e308", "-1", "nan", "inf", "abc", "0", "9" * 400])
        return kind, http_request(infer, valid, {"X-Request-Timeout-Ms": value})
    if kind == "params":
        params = rng.choice(
            [{"priority": 4294967296}, {"timeout": 9223372036854775807}, {"priority": -1},
             {"timeout": "soon"}, {"priority": 1.5}, {"timeout": 2**80}]
        )  # fmt: skip
        doc = json.loads(valid)
        doc["parameters"] = params
        return kind, http_request(infer, json.dumps(doc).encode())
    if kind == "nesting":
        depth = rng.choice([100, 1000, 10000])
        return kind, http_request(
            "/predict/lin", b'{"inputs": ' + b"[" * depth + b"]" * depth + b"}"
        )
    if kind == "length":
        head = (
            f"POST {infer} HTTP/1.1\r\nHost: h\r\nContent-Length: {rng.randint(100, 10**6)}\r\n\r\n"
        )
        return kind, head.encode() + valid[: rng.randint(0, len(valid))]
    target = rng.choice(
        [
            "/v2/models/nope/infer",
            "/v2/models/%2e%2e%2fetc/infer",
            "/v2/models/lin/versions/x/infer",
        ]
    )
    return kind, http_request(target, valid)


def _send_hostile(port: int, raw: bytes, timeout_s: float) -> tuple[int, str]:
    """Sends on a fresh connection, half-closes, reads to the end: (status or 0, problem)."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout_s) as s:
            s.sendall(raw)
            s.shutdown(socket.SHUT_WR)
            data = b""
            while chunk := s.recv(65536):
                data += chunk
    except TimeoutError:
        return 0, "hung"
    except (ConnectionResetError, BrokenPipeError):
        return 0, ""
    m = re.match(rb"HTTP/1\.[01] (\d{3})", data)
    return (int(m.group(1)) if m else 0), ""


def fuzz(tmp: Path, a: argparse.Namespace) -> dict[str, Any]:
    srv = start_server(["-m", f"lin={MODELS}:linear"], tmp, "fuzz")
    rng = random.Random(a.seed)
    xs = np.random.default_rng(a.seed).standard_normal((64, 8)).astype(np.float32)
    by_kind: dict[str, int] = {}
    server_errors: dict[str, int] = {}
    hung = wrong = valid = 0
    rss_warm: float | None = None
    try:
        with socket.create_connection((HOST, srv.port), timeout=10) as keep:
            reader = keep.makefile("rb")

            def check_valid(i: int) -> bool:
                x = xs[i % len(xs)]
                keep.sendall(http_request("/v2/models/lin/infer", v2_body("x", x[None, :])))
                status = int(reader.readline().split()[1])
                length = 0
                while (line := reader.readline()) not in (b"\r\n", b""):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                body = json.loads(reader.read(length))
                if status != 200:
                    return False
                got = np.asarray(body["outputs"][0]["data"], np.float32)
                return bool(np.allclose(got, x @ W, rtol=1e-5, atol=1e-6))

            warm = min(500, a.fuzz_requests)
            for i in range(a.fuzz_requests + warm):
                if i == warm:
                    rss_warm = rss_mb(srv.proc.pid)
                kind, raw = _hostile(rng)
                status, problem = _send_hostile(srv.port, raw, a.hang_timeout_s)
                if i >= warm:
                    by_kind[kind] = by_kind.get(kind, 0) + 1
                    hung += problem == "hung"
                    if status >= 500:
                        key = f"{kind}:{status}"
                        server_errors[key] = server_errors.get(key, 0) + 1
                if i % a.valid_every == 0:
                    valid += 1
                    wrong += not check_valid(i)
                if srv.proc.poll() is not None:
                    break
        crashed = srv.proc.poll() is not None
        rss_end = None if crashed else rss_mb(srv.proc.pid)
    finally:
        srv.stop()
    return {
        "hostile_requests": sum(by_kind.values()),
        "by_kind": by_kind,
        "valid_requests": valid,
        "crashes": int(crashed),
        "wrong_answers": wrong,
        "server_errors_5xx": sum(server_errors.values()),
        "server_errors_by_kind": server_errors,
        "hung_connections": hung,
        "rss_after_warmup_mb": rss_warm,
        "rss_end_mb": rss_end,
    }


class _KillRound:
    """One SIGKILL of a worker during open-loop load; `tick` runs before every send."""

    def __init__(
        self, victim: int, known: set[int], listening: Callable[[], list[int]], after_s: float
    ) -> None:
        self.victim, self.known, self.listening = victim, known, listening
        self.kill_at = time.monotonic() + after_s
        self.killed_at: float | None = None
        self.recovered_at: float | None = None

    def _check_recovered(self, now: float) -> None:
        if self.recovered_at is None and set(self.listening()) - self.known:
            self.recovered_at = now

    def tick(self) -> None:
        now = time.monotonic()
        if self.killed_at is None:
            if now >= self.kill_at:
                os.kill(self.victim, signal.SIGKILL)
                self.killed_at = now
        else:
            self._check_recovered(now)

    async def recovery(self, timeout_s: float) -> float | None:
        """Seconds from the kill until a replacement worker listened (None: not within
        `timeout_s` after the load)."""
        limit = time.monotonic() + timeout_s
        while self.killed_at is not None and self.recovered_at is None:
            if time.monotonic() > limit:
                return None
            self._check_recovered(time.monotonic())
            await asyncio.sleep(0.01)
        if self.killed_at is None or self.recovered_at is None:
            return None
        return self.recovered_at - self.killed_at


def kill_worker(tmp: Path, a: argparse.Namespace) -> dict[str, Any]:
    srv = start_server(["-m", f"lin={MODELS}:linear", "--workers", "2"], tmp, "kill")
    raw = http_request("/v2/models/lin/infer", v2_body("x", np.ones((1, 8), np.float32)))

    def listening() -> list[int]:
        return [int(p) for p in re.findall(r"listening on \S+ \(pid (\d+)\)", srv.output())]

    def alive(pid: int) -> bool:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            return False
        return state != "Z"

    async def run() -> dict[str, Any]:
        deadline = time.monotonic() + 60
        while len([p for p in listening() if alive(p)]) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        recoveries: list[float] = []
        outcomes: list[Outcome] = []
        pool = Pool(srv.port, 16)
        try:
            for _ in range(a.kills):
                victim = min(p for p in listening() if alive(p))
                kill = _KillRound(victim, set(listening()), listening, a.kill_load_s / 3)
                outcomes += await open_loop(pool, raw, a.kill_rate, a.kill_load_s, kill.tick)
                recovery = await kill.recovery(timeout_s=30)
                if recovery is not None:
                    recoveries.append(recovery)
        finally:
            pool.close()
        errors: dict[str, int] = {}
        for o in outcomes:
            if o.error or not 200 <= o.status < 300:
                key = o.error or str(o.status)
                errors[key] = errors.get(key, 0) + 1
        return {
            "kills": a.kills,
            "requests": len(outcomes),
            "ok": sum(200 <= o.status < 300 for o in outcomes),
            "refused": errors.get("refused", 0),
            "lost_with_killed_worker": errors.get("reset", 0) + errors.get("io", 0),
            "retried_on_a_fresh_connection": pool.retried,
            "other_failures": {k: v for k, v in errors.items() if k not in ("refused", "reset", "io")},
            "recovery_s": {"mean": float(np.mean(recoveries)) if recoveries else None,
                           "max": max(recoveries, default=None)},
            "recovered": len(recoveries),
            "service_exited": srv.proc.poll() is not None,
        }  # fmt: skip

    try:
        return asyncio.run(run())
    finally:
        srv.stop()


# ------------------------------------------------------------------ report


def _open_fds(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def _wrk_chunk(port: int, body_file: Path, seconds: float) -> dict[str, int]:
    import subprocess

    env = dict(os.environ)
    env["AIARCH_BENCH_PATH"] = "/v2/models/lin/infer"
    env["AIARCH_BENCH_BODY"] = str(body_file)
    env.pop("AIARCH_BENCH_HLEN", None)
    out = subprocess.run(
        ["wrk", "-t1", "-c64", f"-d{max(1, round(seconds))}s", "-s", str(HERE / "wrk_post.lua"),
         f"http://{HOST}:{port}/v2/models/lin/infer"],
        capture_output=True, text=True, env=env, timeout=seconds + 60, check=False,
    )  # fmt: skip
    for line in out.stdout.splitlines():
        if line.startswith("WRKJSON "):
            return json.loads(line[len("WRKJSON ") :])  # type: ignore[no-any-return]
    raise RuntimeError(f"wrk gave no result: {out.stdout}\n{out.stderr}")


def soak(tmp: Path, a: argparse.Namespace) -> dict[str, Any]:
    import shutil

    if shutil.which("wrk") is None:
        return {"skipped": "wrk is not installed (apt-get install wrk)"}
    srv = start_server(["-m", f"lin={MODELS}:linear"], tmp, "soak")
    body = tmp / "soak-body.json"
    body.write_bytes(v2_body("x", np.ones((1, 8), np.float32)))
    total = non_2xx = 0
    try:
        warm = _wrk_chunk(srv.port, body, min(2.0, a.soak_max_s / 2))
        total += warm["requests"]
        non_2xx += warm["errors_status"]
        pid = srv.proc.pid
        time.sleep(0.5)  # let wrk's connections close: both readings count no client socket
        rss_warm, fds_warm = rss_mb(pid), _open_fds(pid)
        deadline = time.monotonic() + a.soak_max_s
        while total < a.soak_requests and time.monotonic() < deadline:
            r = _wrk_chunk(srv.port, body, min(10.0, a.soak_max_s / 2))
            total += r["requests"]
            non_2xx += r["errors_status"] + r["errors_read"] + r["errors_write"]
        time.sleep(0.5)  # let closed connections go
        rss_end, fds_end = rss_mb(pid), _open_fds(pid)
        alive = srv.proc.poll() is None
    finally:
        srv.stop()
    return {
        "requests": total,
        "non_2xx_or_errors": non_2xx,
        "rss_after_warmup_mb": rss_warm,
        "rss_end_mb": rss_end,
        "fds_after_warmup": fds_warm,
        "fds_end": fds_end,
        "server_alive": alive,
    }


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--smoke", action="store_true", help="a few seconds per scenario (CI)")
    ap.add_argument("--json", default="bench-results/bench_reliability.json", help="output path")
    ap.add_argument("--window-s", type=float, default=5.0, help="capacity and overload windows")
    ap.add_argument("--recovery-s", type=float, default=2.0, help="window after the overload")
    ap.add_argument("--deadline-ms", type=float, default=50.0)
    ap.add_argument("--deadline-trials", type=int, default=20)
    ap.add_argument("--fuzz-requests", type=int, default=20_000, help="hostile requests")
    ap.add_argument("--valid-every", type=int, default=5, help="a valid request every N hostile")
    ap.add_argument("--hang-timeout-s", type=float, default=5.0)
    ap.add_argument("--kills", type=int, default=5, help="workers killed, one after another")
    ap.add_argument("--kill-rate", type=float, default=300.0, help="requests/s during the kills")
    ap.add_argument("--kill-load-s", type=float, default=6.0, help="load per kill")
    ap.add_argument("--soak-requests", type=int, default=1_000_000, help="valid requests")
    ap.add_argument("--soak-max-s", type=float, default=120.0, help="time cap of the soak")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--scenarios", default="overload,deadline,fuzz,kill,soak", help="comma-separated subset"
    )
    a = ap.parse_args()
    if a.smoke:
        a.window_s, a.recovery_s, a.deadline_trials = 1.5, 0.5, 3
        a.fuzz_requests, a.kills, a.kill_rate, a.kill_load_s = 300, 1, 150.0, 3.0
        a.soak_requests, a.soak_max_s = 20_000, 3.0
    chosen = [s.strip() for s in a.scenarios.split(",") if s.strip()]
    runners = {
        "overload": overload,
        "deadline": deadline,
        "fuzz": fuzz,
        "kill": kill_worker,
        "soak": soak,
    }
    unknown = set(chosen) - set(runners)
    if unknown:
        ap.error(f"unknown scenarios {sorted(unknown)}; expected {sorted(runners)}")
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="aiarch-bench-reliability-") as tmp:
        for name in chosen:
            t0 = time.monotonic()
            results[name] = runners[name](Path(tmp), a)
            results[name]["elapsed_s"] = time.monotonic() - t0

    rows: list[list[Any]] = []
    if "overload" in results:
        r = results["overload"]
        rows += [
            ["overload", "capacity (closed loop, baseline)", f"{r['capacity_rps']:.0f} req/s"],
            ["overload", "model rate while busy (server stats)",
             f"{r['model_service_rate_rps']:.0f} rows/s" if r["model_service_rate_rps"] else "-"],
            ["overload", "offered (open loop, 2x)", f"{r['offered_rps']:.0f} req/s"],
            ["overload", "goodput / capacity", f"{r['goodput_vs_capacity']:.3f}"],
            ["overload", "goodput / model rate while busy",
             f"{r['goodput_rps'] / r['model_service_rate_rps']:.3f}"
             if r["model_service_rate_rps"] else "-"],
            ["overload", "429 latency p50 / p99", f"{_ms(r['latency_429_ms']['p50'])} / "
             f"{_ms(r['latency_429_ms']['p99'])} ms"],
            ["overload", "429 from the actual write p50 / p99",
             f"{_ms(r['service_429_ms']['p50'])} / {_ms(r['service_429_ms']['p99'])} ms"],
            ["overload", "generator send lag p99", f"{_ms(r['send_lag_ms']['p99'])} ms"],
            ["overload", "2xx latency p99", f"{_ms(r['latency_2xx_ms']['p99'])} ms"],
            ["overload", "failures other than 429", str(r["other_failures"])],
            ["overload", "success rate right after (0.5x)", f"{r['recovery_success_rate']:.3f}"],
        ]  # fmt: skip
    if "deadline" in results:
        r = results["deadline"]
        late = r["late_504_ms"]
        rows += [
            ["deadline", f"504 past a {r['deadline_ms']:g} ms deadline p50 / p99",
             f"{_ms(late['p50'])} / {_ms(late['p99'])} ms"],
            ["deadline", "statuses", json.dumps(r["statuses"])],
            ["deadline", "expired requests executed", str(r["expired_executed"])],
        ]  # fmt: skip
    if "fuzz" in results:
        r = results["fuzz"]
        rows += [
            ["fuzz", "hostile / valid requests", f"{r['hostile_requests']} / {r['valid_requests']}"],
            ["fuzz", "crashes", str(r["crashes"])],
            ["fuzz", "wrong answers", str(r["wrong_answers"])],
            ["fuzz", "5xx for client errors", str(r["server_errors_5xx"])],
            ["fuzz", "connections left hanging", str(r["hung_connections"])],
            ["fuzz", "RSS after warm-up -> end", f"{_ms(r['rss_after_warmup_mb'])} -> "
             f"{_ms(r['rss_end_mb'])} MB"],
        ]  # fmt: skip
    if "kill" in results:
        r = results["kill"]
        rows += [
            ["kill", "workers killed / replaced", f"{r['kills']} / {r['recovered']}"],
            ["kill", "requests (ok)", f"{r['requests']} ({r['ok']})"],
            ["kill", "refused connections", str(r["refused"])],
            ["kill", "lost with the killed worker", str(r["lost_with_killed_worker"])],
            ["kill", "stale keep-alive, resent", str(r["retried_on_a_fresh_connection"])],
            ["kill", "replacement listening after", f"mean {_ms(r['recovery_s']['mean'])} s, "
             f"max {_ms(r['recovery_s']['max'])} s"],
            ["kill", "service exited", str(r["service_exited"])],
        ]  # fmt: skip
    if "soak" in results:
        r = results["soak"]
        if "skipped" in r:
            rows.append(["soak", "skipped", r["skipped"]])
        else:
            rows += [
                ["soak", "requests (non-2xx or errors)", f"{r['requests']} ({r['non_2xx_or_errors']})"],
                ["soak", "RSS after warm-up -> end", f"{_ms(r['rss_after_warmup_mb'])} -> "
                 f"{_ms(r['rss_end_mb'])} MB"],
                ["soak", "open fds after warm-up -> end", f"{r['fds_after_warmup']} -> {r['fds_end']}"],
                ["soak", "server alive at the end", str(r["server_alive"])],
            ]  # fmt: skip
    print_table("aiarch serve under attack (127.0.0.1)", ["scenario", "measure", "value"], rows)
    write_json(a.json, "bench_reliability", results)


if __name__ == "__main__":
    main()
