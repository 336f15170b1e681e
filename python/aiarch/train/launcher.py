"""`launch()`: run a training script on N processes under torch.distributed's elastic agent.

This is torchrun's machinery (``torch.distributed.launcher.api.elastic_launch``: the
elastic agent, c10d rendezvous, worker restarts), configured so that it is safe on a
shared host and fails fast:

- one host: the rendezvous store binds ``127.0.0.1:0``, so the OS picks a free port at
  bind time (no port chosen in advance that another job could take first), and the
  workers reuse the agent's store; two jobs at once never collide;
- several hosts: the same c10d rendezvous on ``--rdzv-endpoint host:port``;
- workers learn a short collective timeout (``AIARCH_COLLECTIVE_TIMEOUT_S``), so a dead or
  hung peer fails the job in seconds; ``max_restarts`` restarts the whole worker group,
  and the script resumes from its last complete checkpoint.

Importing this module is cheap; torch is imported when a job is launched.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aiarch.errors import AiarchError, InvalidArgumentError

from .rundir import RunDir, aiarch_home, new_run_id, validate_run_id

__all__ = ["TrainResult", "TrainingError", "launch", "parse_endpoint", "parse_nnodes"]

_launch_lock = threading.Lock()


class TrainingError(AiarchError):
    """The training job failed (after its restarts) or was stopped by a signal."""

    def __init__(
        self,
        message: str,
        *,
        run_id: str = "",
        run_dir: Path | None = None,
        exit_signal: int | None = None,
    ) -> None:
        super().__init__(message)
        self.run_id = run_id
        """The failed run's id (``--run-id`` reuses its checkpoints)."""
        self.run_dir = run_dir
        """Its run directory (checkpoints, logs)."""
        self.exit_signal = exit_signal
        """The signal that stopped the launcher (SIGINT, SIGTERM, …), if one did."""


@dataclass
class TrainResult:
    """What a finished job did, read from its run directory."""

    run_id: str
    run_dir: Path
    script: str
    nproc: int
    nnodes: str
    device: str
    world_size: int
    """Processes in the last attempt (all hosts)."""
    restarts: int
    """Times the worker group was restarted (0 when nothing failed)."""
    wall_s: float
    """Launch to exit, seconds."""
    epochs: list[dict[str, Any]] = field(default_factory=list)
    """One row per logged epoch: epoch, loss, samples, samples_per_s, seconds, …"""
    registered: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Model versions the job registered: name → {name, version, digest, uri, pt2, onnx}."""

    @property
    def final_loss(self) -> float | None:
        return self.epochs[-1]["loss"] if self.epochs else None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["run_dir"] = str(self.run_dir)
        return out


def parse_nnodes(text: str | int) -> tuple[int, int]:
    """``"2"`` → (2, 2); ``"1:4"`` → (1, 4) (elastic between MIN and MAX hosts)."""
    raw = str(text).strip()
    parts = raw.split(":")
    try:
        if len(parts) == 1:
            low = high = int(parts[0])
        elif len(parts) == 2:
            low, high = int(parts[0]), int(parts[1])
        else:
            raise ValueError
    except ValueError:
        raise InvalidArgumentError(
            f"--nnodes {raw!r}: expected a number of hosts (e.g. 2) or MIN:MAX (e.g. 1:4)"
        ) from None
    if low < 1 or high < low:
        raise InvalidArgumentError(
            f"--nnodes {raw!r}: expected 1 <= MIN <= MAX, got MIN={low}, MAX={high}"
        )
    return low, high


def parse_endpoint(text: str) -> tuple[str, int]:
    """``"host:port"`` (``[v6addr]:port`` for IPv6) → (host, port), checked."""
    raw = text.strip()
    host, sep, port_text = raw.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise InvalidArgumentError(
            f"--rdzv-endpoint {raw!r}: expected HOST:PORT with a port in 1-65535 "
            "(e.g. node0.example:29400)"
        )
    return host, int(port_text)


def _positive(name: str, value: float) -> None:
    if not value > 0:
        raise InvalidArgumentError(f"{name} must be > 0, got {value}")


def _resolve_device(device: str, nproc: int) -> str:
    if device not in ("auto", "cpu", "cuda"):
        raise InvalidArgumentError(f"--device {device!r}: expected auto, cpu or cuda")
    if device == "cpu":
        return "cpu"
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if device == "auto":
        return "cuda" if count >= nproc else "cpu"
    if count == 0:
        raise InvalidArgumentError("--device cuda: torch sees no CUDA device on this host")
    if count < nproc:
        raise InvalidArgumentError(
            f"--device cuda with --nproc {nproc}: this host has {count} CUDA device(s); "
            "use at most one process per GPU"
        )
    return "cuda"


@contextlib.contextmanager
def _environment(values: Mapping[str, str]) -> Iterator[None]:
    """Sets environment variables for the duration (the elastic agent copies os.environ
    into every worker it starts, restarts included)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def _restore_signal_handlers() -> Iterator[None]:
    """The elastic agent installs SIGTERM/SIGINT/... handlers; put the caller's back."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    names = ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT")
    saved = {
        getattr(signal, n): signal.getsignal(getattr(signal, n))
        for n in names
        if hasattr(signal, n)
    }
    try:
        yield
    finally:
        for sig, handler in saved.items():
            if handler is not None:
                signal.signal(sig, handler)


def _failure_summary(error: Any) -> str:
    """One line per failed rank from torch's ChildFailedError (root cause first)."""
    try:
        first_rank, first = error.get_first_failure()
        failures = [(first_rank, first)] + [
            (r, f) for r, f in sorted(error.failures.items()) if r != first_rank
        ]
    except Exception:
        return str(error)
    lines = []
    for rank, f in failures:
        message = f.message
        if isinstance(message, dict):
            message = message.get("message", "")
        message = str(message or "").strip()
        if f.exitcode < 0:
            how = f"was killed by {f.signal_name()}"
        else:
            how = f"exited with code {f.exitcode}"
        detail = ""
        if message and "pytorch.org/docs" not in message and not message.startswith("Signal "):
            detail = ": " + message.splitlines()[-1][:300]
        lines.append(f"rank {rank} (local rank {f.local_rank}, pid {f.pid}) {how}{detail}")
    return "; ".join(lines)


def launch(
    script: str | os.PathLike[str],
    *,
    nproc: int = 1,
    args: Sequence[str] = (),
    nnodes: str | int = 1,
    rdzv_endpoint: str | None = None,
    max_restarts: int = 3,
    run_id: str | None = None,
    home: str | os.PathLike[str] | None = None,
    device: str = "auto",
    collective_timeout_s: float = 30.0,
    io_timeout_s: float = 600.0,
    monitor_interval_s: float = 0.1,
    env: Mapping[str, str] | None = None,
) -> TrainResult:
    """Runs `script` with `args` on `nproc` processes per host and waits for it.

    `nnodes` is a host count or ``"MIN:MAX"``; more than one host needs `rdzv_endpoint`
    (``host:port``, reachable from every host; its host runs the rendezvous store).
    `max_restarts` restarts the worker group after a failure. `run_id` names the run
    directory ``<home>/runs/<run_id>`` (a new id by default on one host; on several hosts
    the default is derived from the endpoint and script name, the same on every host);
    reusing a run id resumes from that run's checkpoints. `device` is auto, cpu (gloo) or
    cuda (NCCL, one GPU per process). `env` adds environment variables for the workers.

    Blocks until the job ends; returns a TrainResult, or raises TrainingError when the
    job failed after its restarts (the message names the failing rank and its error) and
    InvalidArgumentError for bad arguments. One launch at a time per process.
    """
    script_path = Path(script)
    if not script_path.is_file():
        raise InvalidArgumentError(
            f"training script {str(script)!r} does not exist or is not a file"
        )
    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise InvalidArgumentError(f"--nproc must be an integer >= 1, got {nproc!r}")
    if isinstance(max_restarts, bool) or not isinstance(max_restarts, int) or max_restarts < 0:
        raise InvalidArgumentError(f"--max-restarts must be an integer >= 0, got {max_restarts!r}")
    _positive("--collective-timeout", collective_timeout_s)
    _positive("--io-timeout", io_timeout_s)
    _positive("monitor_interval_s", monitor_interval_s)
    min_nodes, max_nodes = parse_nnodes(nnodes)
    if max_nodes > 1 and not rdzv_endpoint:
        raise InvalidArgumentError(
            f"--nnodes {nnodes}: more than one host needs --rdzv-endpoint HOST:PORT "
            "(the same on every host)"
        )
    if rdzv_endpoint:
        parse_endpoint(rdzv_endpoint)
    if run_id is None:
        if max_nodes > 1:
            digest = hashlib.sha256(f"{rdzv_endpoint}|{script_path.name}".encode()).hexdigest()
            run_id = f"{script_path.stem[:40]}-{digest[:12]}"
        else:
            run_id = new_run_id(script_path)
    try:
        validate_run_id(run_id)
    except ValueError as e:
        raise InvalidArgumentError(f"--run-id: {e}") from None
    device = _resolve_device(device, nproc)
    home_path = aiarch_home(home)
    run_dir = RunDir.for_run(run_id, home_path).create()

    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    single_host = max_nodes == 1
    config = LaunchConfig(
        min_nodes=min_nodes,
        max_nodes=max_nodes,
        nproc_per_node=nproc,
        run_id=run_id,
        rdzv_backend="c10d",
        rdzv_endpoint=rdzv_endpoint or "127.0.0.1:0",
        rdzv_configs={"join_timeout": max(1, math.ceil(io_timeout_s))},
        max_restarts=max_restarts,
        monitor_interval=monitor_interval_s,
        logs_specs=DefaultLogsSpecs(log_dir=str(run_dir.logs)),
        local_addr="127.0.0.1" if single_host and not rdzv_endpoint else None,
    )
    worker_env = {
        "AIARCH_HOME": str(home_path),
        "AIARCH_RUN_ID": run_id,
        "AIARCH_RUN_DIR": str(run_dir.path),
        "AIARCH_DEVICE": device,
        "AIARCH_COLLECTIVE_TIMEOUT_S": repr(float(collective_timeout_s)),
        "AIARCH_IO_TIMEOUT_S": repr(float(io_timeout_s)),
    }
    if nproc > 1 and "OMP_NUM_THREADS" not in os.environ:
        # As torchrun does: N processes each spawning a thread per core oversubscribe the host.
        worker_env["OMP_NUM_THREADS"] = "1"
    worker_env.update(env or {})

    started = time.perf_counter()
    since = time.time()
    if not _launch_lock.acquire(blocking=False):
        raise InvalidArgumentError("another training job is being launched from this process")
    try:
        with _environment(worker_env), _restore_signal_handlers():
            elastic_launch(config, sys.executable)("-u", str(script_path), *args)
    except ChildFailedError as e:
        restarts = _restarts(run_dir, since)
        raise TrainingError(
            f"training job {run_id} failed after {restarts} restart(s) "
            f"(--max-restarts {max_restarts}): {_failure_summary(e)}. "
            f"Logs: {run_dir.logs}",
            run_id=run_id,
            run_dir=run_dir.path,
        ) from None
    except SignalException as e:
        raise TrainingError(
            f"training job {run_id} stopped by {e.sigval.name}",
            run_id=run_id,
            run_dir=run_dir.path,
            exit_signal=int(e.sigval),
        ) from None
    except Exception as e:
        # Rendezvous failures (unreachable endpoint, timeout waiting for hosts) and the like.
        raise TrainingError(
            f"training job {run_id} could not run: {type(e).__name__}: {e}",
            run_id=run_id,
            run_dir=run_dir.path,
        ) from e
    finally:
        _launch_lock.release()
    wall_s = time.perf_counter() - started
    attempts = [a for a in run_dir.attempts() if a.get("time", 0) >= since]
    return TrainResult(
        run_id=run_id,
        run_dir=run_dir.path,
        script=str(script_path),
        nproc=nproc,
        nnodes=str(nnodes),
        device=device,
        world_size=int(attempts[-1]["world_size"]) if attempts else nproc * min_nodes,
        restarts=_restarts(run_dir, since),
        wall_s=wall_s,
        epochs=[e for e in run_dir.progress() if e.get("time", 0) >= since],
        registered=run_dir.registered(),
    )


def _restarts(run_dir: RunDir, since: float) -> int:
    """Restarts during this launch (a reused run id keeps older launches' rows)."""
    return max(
        (int(a.get("restart_count", 0)) for a in run_dir.attempts() if a.get("time", 0) >= since),
        default=0,
    )
