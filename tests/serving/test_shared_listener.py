"""`aiarch serve --workers N` accepts on one listening socket that the supervisor owns: a worker
that hangs and is then killed strands no connection (none is reset or refused), and a port in
use ends `aiarch serve` with one line naming it."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from .conftest import MODELS, _require_server_deps, running_server
from .test_supervisor import _wait_for, _workers

CLIENTS = 3


class _NewConnections:
    """`CLIENTS` threads, each opening a fresh connection per request (GET /v2/health/live)
    until stopped; every failure is kept. `pause()` returns once no request is in flight."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.ok = 0
        self.failures: list[str] = []
        self._lock = threading.Lock()
        self._in_flight = 0
        self._go = threading.Event()
        self._go.set()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(CLIENTS)]

    def _one(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)
        try:
            conn.request("GET", "/v2/health/live")
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                raise AssertionError(f"status {resp.status}")
        finally:
            conn.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._go.wait()
            with self._lock:
                if not self._go.is_set():
                    continue
                self._in_flight += 1
            try:
                self._one()
                with self._lock:
                    self.ok += 1
            except Exception as e:  # reset, refused, timeout: what this test is about
                with self._lock:
                    self.failures.append(f"{type(e).__name__}: {e}")
            finally:
                with self._lock:
                    self._in_flight -= 1

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def pause(self) -> None:
        self._go.clear()
        _wait_for(lambda: self._in_flight == 0, 30, "requests in flight to finish")

    def resume(self) -> None:
        self._go.set()

    def stop(self) -> None:
        self._stop.set()
        self._go.set()
        for t in self._threads:
            t.join(30)
            assert not t.is_alive(), "a client thread hangs"


def test_a_killed_worker_strands_no_new_connection(tmp_path: Path) -> None:
    _require_server_deps()
    with running_server(["-m", f"lin={MODELS}:linear", "--workers", "2"], tmp_path) as srv:
        before = _wait_for(lambda: len(_workers(srv)) == 2 and _workers(srv), 60, "2 workers")
        victim = min(before)
        load = _NewConnections(srv.port)
        load.start()
        try:
            _wait_for(lambda: load.ok >= 20, 30, "the first answers")
            # The victim hangs with nothing in flight (so no request it had already accepted
            # can be lost), new connections keep arriving for a while, then it is killed.
            load.pause()
            os.kill(victim, signal.SIGSTOP)
            load.resume()
            ok_before = load.ok
            time.sleep(0.5)
            os.kill(victim, signal.SIGKILL)
            _wait_for(lambda: not Path(f"/proc/{victim}").exists(), 30, "the victim reaped")
            _wait_for(
                lambda: len(now := _workers(srv)) == 2 and victim not in now, 60, "a replacement"
            )
            ok_replaced = load.ok
            _wait_for(lambda: load.ok >= ok_replaced + 20, 30, "answers after the replacement")
        finally:
            load.stop()
        assert load.failures == [], load.failures[:5]
        assert ok_replaced > ok_before  # connections arrived while the victim hung and died
    assert "restarted" in srv.output()


def _serve_with_port_in_use(args: list[str], tmp: Path) -> tuple[int, str, int]:
    """Runs `aiarch serve ARGS` while another socket listens on the port named ``PORT`` in
    ``args``; returns (exit code, output, the port)."""
    from aiarch.serving.process import package_env

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        argv = [a.replace("PORT", str(port)) for a in args]
        proc = subprocess.run(
            [sys.executable, "-m", "aiarch", "serve", "--host", "127.0.0.1", *argv],
            env=package_env({}),
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp,
        )
    finally:
        taken.close()
    return proc.returncode, proc.stdout + proc.stderr, port


def _assert_one_line_naming(out: str, what: str, port: int) -> None:
    assert "Traceback" not in out, out
    lines = [line for line in out.splitlines() if str(port) in line]
    assert len(lines) == 1, out
    assert what in lines[0] and "in use" in lines[0], out


def test_http_port_in_use_is_one_line_naming_it(tmp_path: Path) -> None:
    _require_server_deps()
    for workers in ("1", "2"):
        code, out, port = _serve_with_port_in_use(
            ["-m", f"lin={MODELS}:linear", "--port", "PORT", "--workers", workers], tmp_path
        )
        assert code == 2, out
        _assert_one_line_naming(out, "HTTP", port)


def test_grpc_port_in_use_is_one_line_naming_it(tmp_path: Path) -> None:
    _require_server_deps()
    for workers in ("1", "2"):
        code, out, port = _serve_with_port_in_use(
            [
                "-m",
                f"lin={MODELS}:linear",
                "--port",
                "0",
                "--grpc-port",
                "PORT",
                "--workers",
                workers,
            ],
            tmp_path,
        )
        assert code == 2, out
        _assert_one_line_naming(out, "gRPC", port)


def test_grpc_with_workers_answers_from_every_worker(tmp_path: Path) -> None:
    """Every worker serves gRPC on the one port (grpcio binds it with SO_REUSEPORT, the kernel
    spreads new channels over the workers): fresh tritonclient channels all get answers."""
    _require_server_deps()
    import numpy as np
    import pytest

    grpcclient = pytest.importorskip(
        "tritonclient.grpc", reason="tritonclient[grpc] is not installed", exc_type=ImportError
    )
    from aiarch.serving.process import free_port

    from .models import _W

    grpc_port = free_port()
    args = ["-m", f"lin={MODELS}:linear", "--workers", "2", "--grpc-port", str(grpc_port)]
    with running_server(args, tmp_path) as srv:
        _wait_for(lambda: len(_workers(srv)) == 2, 60, "2 workers")
        x = np.arange(16, dtype=np.float32).reshape(2, 8) / 5
        for _ in range(10):
            client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
            try:
                assert client.is_server_ready()
                inp = grpcclient.InferInput("x", [2, 8], "FP32")
                inp.set_data_from_numpy(x)
                got = client.infer("lin", [inp], client_timeout=20).as_numpy("y")
            finally:
                client.close()
            np.testing.assert_allclose(got, x @ _W, rtol=1e-6)
    assert srv.output().count(f"listening on grpc://127.0.0.1:{grpc_port}") == 2
