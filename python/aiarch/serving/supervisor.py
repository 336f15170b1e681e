"""The supervisor of `aiarch serve --workers N`: N worker processes on one port, kept alive.

The supervisor binds the port; every worker inherits that one socket and accepts on it (the
first worker ready to serve makes it listen, so connections are refused, not queued, while the
first models load). New connections wait in the socket's single accept queue until a live
worker takes one: when a worker dies (a crash, an OOM kill, `kill -9`, a hang ended by a kill),
the connections that arrive meanwhile go to the others, none is reset, and the socket lives on
in the supervisor. The supervisor starts a replacement in the same slot after a short, growing
backoff. It gives up, stops the others and exits 1, saying why, only when:

- a worker of the first generation cannot load its models (`EXIT_MODEL_LOAD`) or bind its gRPC
  port (`EXIT_PORT_IN_USE`): the same configuration would fail the same way in every
  replacement; or
- one slot crashed more than `RestartPolicy.max_restarts` times within `window_s` seconds
  (a crash loop that restarting does not cure).

SIGTERM/SIGINT to the supervisor are forwarded to every worker (each drains, then exits 0);
workers get SIGTERM when the supervisor itself dies, so none outlives it.

The supervisor owns the run directory where workers publish their stats (`shared_stats`): it
creates it, folds a dead worker's last counts into the retired snapshot before starting its
replacement (so merged counters never go backwards), and removes it at the end.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import socket
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from .config import ServeConfig
from .shared_stats import RUN_DIR_ENV, WORKER_ENV, absorb_dead_worker

__all__ = ["EXIT_MODEL_LOAD", "EXIT_PORT_IN_USE", "RestartPolicy", "supervise"]

log = logging.getLogger("aiarch.serving")

EXIT_MODEL_LOAD = 3
"""Exit code of a worker (and of a single-worker `aiarch serve`) whose models cannot load."""
EXIT_PORT_IN_USE = 2
"""Exit code of `aiarch serve`, or of a worker, when a port it was given cannot be bound."""


@dataclass
class RestartPolicy:
    """When and how fast dead workers are replaced."""

    backoff_s: float = 0.1
    """Delay before the first restart of a slot; doubles with every further crash in the window."""

    max_backoff_s: float = 5.0
    """Upper bound of the restart delay."""

    max_restarts: int = 5
    """Crashes of one slot tolerated within `window_s`; one more and the supervisor gives up."""

    window_s: float = 60.0
    """How far back crashes count towards `max_restarts` (older ones are forgiven)."""


@dataclass
class _Slot:
    index: int
    process: Any = None
    reaped: bool = False
    generation: int = 0
    crashes: deque[float] = field(default_factory=deque)
    restart_at: float | None = None


def _supervised_worker(config: ServeConfig, run_dir: str, worker: str, sock: socket.socket) -> None:
    """Entry point of a worker process: names its run directory and identity, then serves on
    the supervisor's socket (multiprocessing hands the child a duplicate of its descriptor)."""
    from .server import worker_main

    os.environ[RUN_DIR_ENV] = run_dir
    os.environ[WORKER_ENV] = worker
    worker_main(config, sock)


def _run_directory() -> str:
    """A private directory for the workers' stats, on tmpfs when the machine has one."""
    shm = "/dev/shm"
    base = shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else None
    return tempfile.mkdtemp(prefix="aiarch-serve-", dir=base)


def _describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        with contextlib.suppress(ValueError):
            return f"signal {signal.Signals(-code).name}"
    return f"exit code {code}"


def _worker_id(slot: _Slot) -> str:
    return f"{slot.index}:{slot.generation}"


class _Supervisor:
    def __init__(
        self, config: ServeConfig, sock: socket.socket, policy: RestartPolicy, run_dir: str
    ) -> None:
        self.config = config
        self.sock = sock
        self.worker_config = ServeConfig(**{**config.__dict__, "port": sock.getsockname()[1]})
        self.policy = policy
        self.run_dir = run_dir
        self.ctx = multiprocessing.get_context("spawn")
        self.slots = [_Slot(i) for i in range(config.workers)]
        self.stopping = False
        self.failure: str | None = None

    def start(self, slot: _Slot) -> None:
        slot.generation += 1
        slot.restart_at = None
        slot.reaped = False
        p = self.ctx.Process(
            target=_supervised_worker,
            args=(self.worker_config, self.run_dir, _worker_id(slot), self.sock),
            name=f"aiarch-worker-{slot.index}",
        )
        p.start()
        slot.process = p
        if slot.generation > 1:
            log.info("worker %d restarted (pid %d)", slot.index, p.pid)

    def stop_all(self) -> None:
        """Forward SIGTERM to every live worker (each drains); no further restarts."""
        self.stopping = True
        for slot in self.slots:
            p = slot.process
            if p is not None and p.pid is not None and p.exitcode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGTERM)

    def on_exit(self, slot: _Slot, now: float) -> None:
        """A worker ended: schedule its replacement, or give up."""
        code = slot.process.exitcode
        slot.process.join()
        slot.reaped = True
        try:
            absorb_dead_worker(self.run_dir, slot.index, _worker_id(slot))
        except Exception:  # losing one worker's counts must not take the server down
            log.exception("could not keep the counts of worker %d", slot.index)
        if self.stopping:
            return
        how = _describe_exit(code)
        if code == EXIT_MODEL_LOAD and slot.generation == 1:
            self.give_up(f"worker {slot.index} could not load its models ({how})")
            return
        if code == EXIT_PORT_IN_USE and slot.generation == 1:
            self.give_up(f"worker {slot.index} could not bind its gRPC port ({how})")
            return
        window = self.policy.window_s
        slot.crashes.append(now)
        while slot.crashes and now - slot.crashes[0] > window:
            slot.crashes.popleft()
        recent = len(slot.crashes)
        if recent > self.policy.max_restarts:
            self.give_up(
                f"worker {slot.index} died {recent} times within {window:g}s "
                f"(last: {how}); giving up"
            )
            return
        delay = min(self.policy.backoff_s * 2 ** (recent - 1), self.policy.max_backoff_s)
        slot.restart_at = now + delay
        log.error(
            "worker %d (pid %s) died with %s; restarting it in %.1fs (%d of %d crashes allowed "
            "within %gs); the other workers keep serving",
            slot.index,
            slot.process.pid,
            how,
            delay,
            recent,
            self.policy.max_restarts,
            window,
        )

    def give_up(self, reason: str) -> None:
        self.failure = reason
        log.error("aiarch serve: %s; stopping the other workers", reason)
        self.stop_all()

    def run(self) -> int:
        for slot in self.slots:
            self.start(slot)
        while True:
            live = [s for s in self.slots if s.process is not None and not s.reaped]
            pending = [] if self.stopping else [s for s in self.slots if s.restart_at is not None]
            if not live and not pending:
                break
            now = time.monotonic()
            timeout = min((s.restart_at - now for s in pending if s.restart_at), default=1.0)
            multiprocessing.connection.wait(
                [s.process.sentinel for s in live], timeout=max(0.0, min(timeout, 1.0))
            )
            now = time.monotonic()
            for slot in live:
                if slot.process.exitcode is not None:
                    self.on_exit(slot, now)
            if not self.stopping:
                for slot in pending:
                    if slot.restart_at is not None and slot.restart_at <= now:
                        self.start(slot)
        if self.failure is not None:
            return 1
        failed = [
            (s.index, _describe_exit(s.process.exitcode))
            for s in self.slots
            if s.process.exitcode not in (0, -signal.SIGTERM)
        ]
        if failed:
            log.error("workers exited with errors: %s", failed)
            return 1
        return 0


def supervise(config: ServeConfig, sock: socket.socket, policy: RestartPolicy | None = None) -> int:
    """Run `config.workers` workers on the bound socket `sock` until SIGTERM/SIGINT or a
    give-up; the exit code. The caller owns `sock` and closes it after this returns."""
    run_dir = _run_directory()
    log.info("workers share their stats in %s", run_dir)
    try:
        return _supervise(config, sock, policy or RestartPolicy(), run_dir)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def _supervise(
    config: ServeConfig, sock: socket.socket, policy: RestartPolicy, run_dir: str
) -> int:
    port = sock.getsockname()[1]
    sup = _Supervisor(config, sock, policy, run_dir)

    def forward(signum: int, frame: Any) -> None:
        sup.stop_all()

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    log.info("starting %d workers on http://%s:%d", config.workers, config.host, port)
    return sup.run()
