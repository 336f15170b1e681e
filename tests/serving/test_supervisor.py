"""`aiarch serve --workers N` under `kill -9`: the other workers keep answering on the port, the
supervisor starts a replacement, and a crash loop ends the service with a reason."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import numpy as np

from aiarch.serving.process import ServerProcess as BaseServerProcess

from .conftest import MODELS, _require_server_deps, request, running_server
from .models import linear


def _workers(srv: BaseServerProcess) -> set[int]:
    """Pids of the live worker processes of the supervisor ``srv`` that are listening: children
    (from /proc) whose "listening ... (pid N)" line is in the server's log."""
    listening = {int(p) for p in re.findall(r"listening on \S+ \(pid (\d+)\)", srv.output())}
    pids = set()
    for pid in listening:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        # Fields after the ")" that ends the command name: state, ppid, ...
        state, ppid = stat.rpartition(")")[2].split()[:2]
        if int(ppid) == srv.proc.pid and state != "Z":
            pids.add(pid)
    return pids


def _wait_for(predicate, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")


def _infer_ok(port: int, row: np.ndarray) -> None:
    body = json.dumps(
        {"inputs": [{"name": "x", "shape": [1, 8], "datatype": "FP32", "data": row.tolist()}]}
    ).encode()
    r = request(port, "POST", "/v2/models/lin/infer", body)
    assert r.status == 200, r.body
    got = np.asarray(r.json()["outputs"][0]["data"], np.float32)  # type: ignore[index]
    np.testing.assert_allclose(got, linear(row[None, :])[0], rtol=1e-5)


def test_killed_worker_is_replaced_while_the_others_serve(tmp_path: Path) -> None:
    _require_server_deps()
    rng = np.random.default_rng(7)
    with running_server(["-m", f"lin={MODELS}:linear", "--workers", "2"], tmp_path) as srv:
        before = _wait_for(lambda: len(_workers(srv)) == 2 and _workers(srv), 60, "2 workers")
        for _ in range(10):
            _infer_ok(srv.port, rng.standard_normal(8).astype(np.float32))
        victim = min(before)
        os.kill(victim, signal.SIGKILL)
        # Connections arriving while it dies are covered by test_shared_listener.py.
        _wait_for(lambda: not Path(f"/proc/{victim}").exists(), 30, "the killed worker reaped")
        # The survivor holds the port: every request is answered, correctly, with no retry,
        # while the replacement starts.
        limit = time.monotonic() + 60
        after: set[int] = set()
        while len(after) < 2:
            _infer_ok(srv.port, rng.standard_normal(8).astype(np.float32))
            after = _workers(srv)
            assert time.monotonic() < limit, "no replacement worker listened within 60 s"
        assert victim not in after and len(after - before) == 1
        for _ in range(20):
            _infer_ok(srv.port, rng.standard_normal(8).astype(np.float32))
        assert srv.stop() == 0
    assert "worker 0 restarted" in srv.output() or "worker 1 restarted" in srv.output()


CRASH_ON_RESTART = """
import os, signal
from pathlib import Path

if Path(os.environ["CRASH_MARKER"]).exists():
    os.kill(os.getpid(), signal.SIGKILL)  # every replacement dies while loading

from models import linear as model
"""


def test_crash_loop_gives_up_with_a_reason(tmp_path: Path) -> None:
    _require_server_deps()
    from aiarch.serving.process import package_env

    src = tmp_path / "crashy.py"
    src.write_text(CRASH_ON_RESTART)
    marker = tmp_path / "crash"
    env = package_env({"CRASH_MARKER": str(marker)})
    env["PYTHONPATH"] = os.pathsep.join([str(MODELS.parent), env["PYTHONPATH"]])
    srv = BaseServerProcess(
        ["-m", f"lin={src}:model", "--workers", "2"], tmp_path / "serve.log", env=env
    )
    try:
        srv.wait_ready()
        marker.touch()
        os.kill(min(_workers(srv)), signal.SIGKILL)
        code = srv.proc.wait(120)
    finally:
        srv.stop()
    out = srv.output()
    assert code == 1, out
    assert "giving up" in out and "SIGKILL" in out, out
