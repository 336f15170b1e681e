"""Lifecycle of `aiarch serve`: sockets, worker processes, start-up loading and graceful drain.

- One worker = one process, one uvloop event loop, one Runtime, one listening socket. With
  `workers > 1` a supervisor spawns N workers that bind the same port with SO_REUSEPORT (the
  kernel spreads connections); each loads its own models.
- Start-up: listen first (so `/v2/health/live` answers), then load and warm the models in a
  worker thread; `/v2/health/ready` turns 200 once all are loaded.
- SIGTERM/SIGINT: readiness turns false, the listening socket closes, idle keep-alive
  connections close, in-flight requests finish (up to `drain_timeout_s`), the runtime closes,
  the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import socket
import sys
from collections.abc import Callable
from typing import Any

from .app import App
from .config import ServeConfig
from .http import HttpProtocol
from .loader import ModelRepository, resolve_object
from .native import NativeFront, NativeProtocol
from .routing import RegistryRouting

__all__ = ["Server", "make_socket", "run"]

log = logging.getLogger("aiarch.serving")


def make_socket(host: str, port: int, reuse_port: bool) -> socket.socket:
    """A bound (not yet listening) TCP socket; SO_REUSEPORT when several workers share the port."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, type_, proto, _, addr = infos[0]
    sock = socket.socket(family, type_, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(addr)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class Server:
    """One worker: the listening socket, connections, the App and the drain logic."""

    def __init__(self, config: ServeConfig, runtime: Any):
        self.config = config
        self.runtime = runtime
        self.limits = config.limits
        self.connections: set[Any] = set()
        self.repository = ModelRepository(runtime, config.models)
        self.handler = App(runtime, config, self.repository)
        self.routing = RegistryRouting(self.handler, runtime, config)
        self._stop: asyncio.Event | None = None
        self.port: int | None = None

    @property
    def draining(self) -> bool:
        return self.handler.draining

    def request_stop(self) -> None:
        """Begin the graceful shutdown (idempotent; safe from a signal handler in the loop)."""
        if self._stop is not None:
            self._stop.set()

    async def serve(
        self, sock: socket.socket | None = None, on_listening: Callable[[int], None] | None = None
    ) -> None:
        """Serve until `request_stop`, then drain. Runs in the worker's event loop."""
        loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        cfg = self.config
        # With several workers sharing the port, the kernel hands connections to any worker
        # that listens: a worker joins only once its models are loaded, so no request reaches
        # one that would answer 404 while loading. A single worker listens at once, so health
        # probes see it live (and not yet ready) during a slow load.
        preload = cfg.workers > 1
        if preload:
            await self._load_models()
        if sock is None:
            sock = make_socket(cfg.host, cfg.port, reuse_port=cfg.workers > 1)
        native = NativeFront(self) if cfg.http == "native" else None
        if native is not None:
            native.start(loop)
            protocol: Any = lambda: NativeProtocol(self, native)  # noqa: E731
        else:
            protocol = lambda: HttpProtocol(self)  # noqa: E731
        server = await loop.create_server(protocol, sock=sock, backlog=cfg.backlog)
        self.port = sock.getsockname()[1]
        log.info("listening on http://%s:%d (pid %d)", cfg.host, self.port, os.getpid())
        if on_listening is not None:
            on_listening(self.port)
        sweeper = loop.create_task(self._sweep_idle())
        loader = loop.create_task(asyncio.sleep(0) if preload else self._load_models())
        watcher = loop.create_task(self.routing.watch_loop())
        try:
            await self._stop.wait()
        finally:
            log.info("shutting down: draining in-flight requests")
            self.handler.draining = True
            if native is not None:
                native.front.draining = True
            server.close()
            loader.cancel()
            watcher.cancel()
            sweeper.cancel()
            await self._drain()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1.0)
            await loop.run_in_executor(None, self._close_runtime)
            if native is not None:
                native.drain()
                native.stop()
            log.info("stopped")

    async def _load_models(self) -> None:
        loop = asyncio.get_running_loop()
        for m in self.config.models:
            try:
                if self.routing.handles(m):
                    await self.routing.load(m)
                    continue
                await loop.run_in_executor(None, self.repository.load, m.name, None)
            except Exception:
                log.exception("failed to load model %s from %s", m.name, m.source)
                self.request_stop()
                return
            self.handler.refresh(m.name)
        self.handler.ready = True
        log.info("ready: %d model(s) loaded", len(self.config.models))

    async def _sweep_idle(self) -> None:
        loop = asyncio.get_running_loop()
        timeout = self.limits.idle_timeout_s
        while True:
            await asyncio.sleep(min(5.0, max(timeout / 2, 0.05)))
            now = loop.time()
            for conn in list(self.connections):
                if conn.idle and now - conn.last_active > timeout:
                    conn.close()

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.drain_timeout_s
        for conn in list(self.connections):
            if conn.idle:
                conn.close()
        while self.connections and loop.time() < deadline:
            for conn in list(self.connections):
                if conn.idle:
                    conn.close()
            await asyncio.sleep(0.01)
        for conn in list(self.connections):
            conn.close()

    def _close_runtime(self) -> None:
        self.routing.close()
        close = getattr(self.runtime, "close", None)
        if close is not None:
            try:
                close()
            except Exception:
                log.exception("runtime close failed")


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; asyncio still works
        log.warning("uvloop is not installed; using the default asyncio loop")
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format=f"%(asctime)s aiarch[{os.getpid()}] %(levelname)s %(message)s",
        stream=sys.stderr,
    )


def run_worker(
    config: ServeConfig,
    runtime_factory: Callable[[], Any] | None = None,
    sock: socket.socket | None = None,
) -> int:
    """Run one worker in this process until SIGTERM/SIGINT; returns the exit code."""
    _setup_logging(config.log_level)
    if runtime_factory is None:
        runtime_factory = resolve_object(config.runtime_factory)
    loop = _new_loop()
    asyncio.set_event_loop(loop)
    try:
        runtime = runtime_factory()
        server = Server(config, runtime)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, server.request_stop)
        loop.run_until_complete(server.serve(sock))
        return 0
    finally:
        with contextlib.suppress(Exception):
            loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()
        asyncio.set_event_loop(None)


def _exit_now(signum: int, frame: Any) -> None:
    raise SystemExit(0)


def _worker_main(config: ServeConfig) -> None:
    # A stop that arrives before the loop takes over the signals ends the worker cleanly.
    signal.signal(signal.SIGTERM, _exit_now)
    signal.signal(signal.SIGINT, _exit_now)
    sys.exit(run_worker(config))


def run(config: ServeConfig) -> int:
    """Entry point of `aiarch serve`: one worker in-process, or a supervisor of N workers."""
    if config.workers <= 1:
        return run_worker(config)
    _setup_logging(config.log_level)
    # Reserve the port (port 0 → a concrete one) for the whole group: a bound, non-listening
    # member of the SO_REUSEPORT group receives no connections but keeps the port ours.
    holder = make_socket(config.host, config.port, reuse_port=True)
    port = holder.getsockname()[1]
    worker_cfg = ServeConfig(**{**config.__dict__, "port": port})
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=_worker_main, args=(worker_cfg,), name=f"aiarch-worker-{i}")
        for i in range(config.workers)
    ]
    stopping = False

    def forward(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True
        for p in procs:
            if p.pid is not None and p.exitcode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    log.info("starting %d workers on http://%s:%d", config.workers, config.host, port)
    for p in procs:
        p.start()
    code = 0
    try:
        while any(p.exitcode is None for p in procs):
            for p in procs:
                p.join(0.2)
                if p.exitcode is not None and p.exitcode != 0 and not stopping:
                    log.error("worker %s exited with %s; stopping the others", p.name, p.exitcode)
                    code = 1
                    forward(signal.SIGTERM, None)
    finally:
        holder.close()
    clean = (0, -signal.SIGTERM) if stopping else (0,)
    failed = [(p.name, p.exitcode) for p in procs if p.exitcode not in clean]
    if failed:
        log.error("workers exited with errors: %s", failed)
        code = code or 1
    return code
