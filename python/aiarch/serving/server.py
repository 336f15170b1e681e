"""Lifecycle of `aiarch serve`: sockets, worker processes, start-up loading and graceful drain.

- One worker = one process, one uvloop event loop, one Runtime. With `workers > 1` a supervisor
  (`supervisor.py`) binds the port, spawns N workers that inherit that one socket and all accept
  on it, and replaces any that dies; each worker loads its own models. A connection waits in
  the socket's one accept queue until some live worker takes it, so a worker that dies strands
  none (per-worker SO_REUSEPORT listeners each have their own queue, reset when their worker
  dies). gRPC (`--grpc-port`) is served by every worker on one port with SO_REUSEPORT.
- Start-up: bind the ports (so a port in use fails at once, in one line naming it), load and
  warm every model, then listen. No request ever reaches a worker that would answer 404 while loading, and a model
  that cannot load ends the process with `EXIT_MODEL_LOAD` and one line naming the model and
  the reason, before anything listens.
- SIGTERM/SIGINT: readiness turns false, the listening socket closes, idle keep-alive
  connections close, in-flight requests finish (up to `drain_timeout_s`), the runtime closes,
  the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable
from typing import Any

from aiarch import tracing
from aiarch.redact import redact_url

from .app import App
from .config import ServeConfig, is_loopback_address
from .http import HttpCounters, HttpProtocol
from .loader import ModelRepository, SourceError, resolve_object
from .metrics import HttpCollector
from .native import NativeFront, NativeProtocol
from .routing import RegistryRouting
from .shared_stats import publish_periodically
from .supervisor import EXIT_MODEL_LOAD, EXIT_PORT_IN_USE, supervise
from .tracing import RequestSampler

__all__ = ["ModelLoadError", "Server", "make_socket", "run"]

log = logging.getLogger("aiarch.serving")


def make_socket(host: str, port: int, reuse_port: bool) -> socket.socket:
    """A bound (not yet listening) TCP socket; SO_REUSEPORT when several processes bind the port
    (the gRPC port of supervised workers)."""
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


class PortInUseError(Exception):
    """A port of the configuration cannot be bound; the message names it."""

    def __init__(self, protocol: str, host: str, port: int, cause: OSError) -> None:
        reason = cause.strerror or str(cause)
        if cause.errno == errno.EADDRINUSE:
            reason = "the port is in use"
        super().__init__(f"cannot listen for {protocol} on {host}:{port}: {reason}")


def _bind(protocol: str, host: str, port: int, reuse_port: bool) -> socket.socket:
    """`make_socket`, with a bind failure as a PortInUseError naming the port."""
    try:
        return make_socket(host, port, reuse_port)
    except OSError as e:
        raise PortInUseError(protocol, host, port, e) from e


class ModelLoadError(Exception):
    """A model of the configuration could not be loaded at start-up."""

    def __init__(self, name: str, source: str, cause: BaseException) -> None:
        # Clients get one message for every unloadable source (no oracle of which files
        # exist); the operator starting the server is told the real reason.
        if isinstance(cause, SourceError) and cause.__cause__ is not None:
            cause = cause.__cause__
        reason = " ".join(str(cause).split()) or type(cause).__name__
        super().__init__(f"model {name!r} (source {redact_url(source)}) cannot load: {reason}")
        self.name = name


class Server:
    """One worker: the listening socket, connections, the App and the drain logic."""

    def __init__(self, config: ServeConfig, runtime: Any):
        self.config = config
        self.runtime = runtime
        self.limits = config.limits
        # HttpProtocol or NativeProtocol, per the front end in use.
        self.connections: set[Any] = set()
        self.connections_per_ip: dict[str, int] = {}
        self.counters = HttpCounters()
        self.repository = ModelRepository(runtime, config.models)
        self.handler = App(runtime, config, self.repository)
        self.routing = RegistryRouting(self.handler, runtime, config)
        self.handler.metrics.registry.register(HttpCollector(self))
        self.trace_every, self._tracing_owned = _start_tracing(config)
        """Every n-th request is traced (0: tracing is off)."""
        if self.trace_every and config.http != "native":
            self.handler.trace_sampler = RequestSampler(self.trace_every)
        self._stop: asyncio.Event | None = None
        self.port: int | None = None
        self.grpc_port: int | None = None
        self.native: NativeFront | None = None  # the native front, once serving

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
        """Load every model, listen, serve until `request_stop`, then drain. Runs in the
        worker's event loop. Raises ModelLoadError (before listening) when a model cannot load."""
        loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        cfg = self.config
        owned = sock is None
        if sock is None:
            sock = make_socket(cfg.host, cfg.port, reuse_port=False)
        # Bound but not listening while the models load: connections are refused, never
        # accepted by a worker that would answer 404.
        try:
            await self._load_models()
        except BaseException:
            if owned:
                sock.close()
            raise
        native = self.native = NativeFront(self) if cfg.http == "native" else None
        if native is not None:
            native.start(loop)
            protocol: Any = lambda: NativeProtocol(self, native)  # noqa: E731
        else:
            protocol = lambda: HttpProtocol(self)  # noqa: E731
        grpc_server = await self._start_grpc() if cfg.grpc_port is not None else None
        server = await loop.create_server(protocol, sock=sock, backlog=cfg.backlog)
        self.port = sock.getsockname()[1]
        self.handler.bound_loopback = is_loopback_address(str(sock.getsockname()[0]))
        log.info("listening on http://%s:%d (pid %d)", cfg.host, self.port, os.getpid())
        if on_listening is not None:
            on_listening(self.port)
        sweeper = loop.create_task(self._sweep_idle())
        watcher = loop.create_task(self.routing.watch_loop())
        metrics = self.handler.metrics
        publisher = (
            loop.create_task(publish_periodically(metrics.publish)) if metrics.shared else None
        )
        try:
            await self._stop.wait()
        finally:
            log.info("shutting down: draining in-flight requests")
            self.handler.draining = True
            if native is not None:
                native.front.draining = True
            server.close()
            watcher.cancel()
            sweeper.cancel()
            if grpc_server is not None:  # refuses new calls, lets in-flight ones finish
                grpc_stopped = loop.create_task(grpc_server.stop(cfg.drain_timeout_s))
            await self._drain()
            if grpc_server is not None:
                await grpc_stopped
            if publisher is not None:
                publisher.cancel()
                try:
                    metrics.publish()  # the final counts, for the supervisor to retire
                except Exception:
                    log.exception("publishing the final worker stats failed")
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1.0)
            await loop.run_in_executor(None, self._close_runtime)
            if native is not None:
                native.drain()
                native.stop()
            if self._tracing_owned:
                tracing.shutdown()  # exports the spans still buffered
            log.info("stopped")

    async def _start_grpc(self) -> Any:
        """Start the KServe v2 gRPC service in this loop, beside HTTP (same App and Runtime)."""
        from .grpc_service import start_grpc

        cfg = self.config
        assert cfg.grpc_port is not None
        try:
            server, self.grpc_port = await start_grpc(
                self.handler,
                self.runtime,
                cfg.host,
                cfg.grpc_port,
                request_timeout_s=cfg.request_timeout_s,
                max_message_bytes=cfg.limits.max_body_bytes,
                reuse_port=cfg.workers > 1,
                trace_every=self.trace_every,
            )
        except OSError as e:
            raise PortInUseError("gRPC", cfg.host, cfg.grpc_port, e) from e
        log.info("listening on grpc://%s:%d (pid %d)", cfg.host, self.grpc_port, os.getpid())
        return server

    async def _load_models(self) -> None:
        loop = asyncio.get_running_loop()
        for m in self.config.models:
            try:
                if self.routing.handles(m):
                    await self.routing.load(m)
                else:
                    await loop.run_in_executor(None, self.repository.load, m.name, None)
            except Exception as e:
                log.debug("loading model %s failed", m.name, exc_info=True)
                raise ModelLoadError(m.name, m.source, e) from e
            self.handler.refresh(m.name)
        self.handler.ready = True
        log.info("ready: %d model(s) loaded", len(self.config.models))

    async def _sweep_idle(self) -> None:
        """Close idle keep-alive connections and time out requests that arrive too slowly
        (one pass over the connections a few times per the shortest timeout)."""
        loop = asyncio.get_running_loop()
        limits = self.limits
        timeout = limits.idle_timeout_s
        shortest = min(timeout, limits.header_timeout_s, limits.body_timeout_s)
        period = min(2.0, max(shortest / 4, 0.02))
        while True:
            await asyncio.sleep(period)
            now = loop.time()
            for conn in list(self.connections):
                if conn.idle:
                    if now - conn.last_active > timeout:
                        conn.close()
                else:
                    conn.check_deadline(now)

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


def _start_tracing(config: ServeConfig) -> tuple[int, bool]:
    """Set up tracing for the configured sample rate (keeping a set-up made before, as an
    embedding application's or a test's): (sampling period, 0 when off; whether this server
    configured the exporter, and so shuts it down when it stops)."""
    every = tracing.every_nth(config.resolved_trace_sample())
    return every, bool(every) and tracing.ensure_enabled()


def _setup_logging(level: str, traced: bool = False) -> None:
    """The server's log format; with tracing on, lines written for a traced request end with
    its trace and span ids."""
    ids = "%(trace_ids)s" if traced else ""
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format=f"%(asctime)s aiarch[{os.getpid()}] %(levelname)s %(message)s{ids}",
        stream=sys.stderr,
    )
    if traced:
        for handler in logging.getLogger().handlers:
            handler.addFilter(tracing.TraceLogFilter())


def run_worker(
    config: ServeConfig,
    runtime_factory: Callable[[], Any] | None = None,
    sock: socket.socket | None = None,
) -> int:
    """Run one worker in this process until SIGTERM/SIGINT; returns the exit code
    (`EXIT_MODEL_LOAD` when a model cannot load)."""
    _setup_logging(config.log_level, traced=config.resolved_trace_sample() > 0)
    if runtime_factory is None:
        runtime_factory = resolve_object(config.runtime_factory)
    loop = _new_loop()
    asyncio.set_event_loop(loop)
    try:
        runtime = runtime_factory()
        server = Server(config, runtime)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, server.request_stop)
        try:
            loop.run_until_complete(server.serve(sock))
        except ModelLoadError as e:
            log.error("aiarch serve: %s", e)
            with contextlib.suppress(Exception):
                server._close_runtime()
            return EXIT_MODEL_LOAD
        except PortInUseError as e:  # the gRPC port, taken since `run` checked it
            log.error("aiarch serve: %s", e)
            with contextlib.suppress(Exception):
                server._close_runtime()
            return EXIT_PORT_IN_USE
        return 0
    finally:
        with contextlib.suppress(Exception):
            loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()
        asyncio.set_event_loop(None)


def _exit_now(signum: int, frame: Any) -> None:
    raise SystemExit(0)


def _die_with_parent() -> None:
    """Ask the kernel for SIGTERM when the supervisor dies, so no worker outlives it (Linux)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import multiprocessing

    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGTERM))
    parent = multiprocessing.parent_process()
    if parent is not None and os.getppid() != parent.pid:
        raise SystemExit(0)  # the supervisor died before the request took effect


def worker_main(config: ServeConfig, sock: socket.socket) -> None:
    """Entry point of one supervised worker process; `sock` is the supervisor's bound socket
    (the first worker ready to serve makes it listen; every worker accepts on it)."""
    # A stop that arrives before the loop takes over the signals ends the worker cleanly.
    signal.signal(signal.SIGTERM, _exit_now)
    signal.signal(signal.SIGINT, _exit_now)
    _die_with_parent()
    sys.exit(run_worker(config, sock=sock))


def run(config: ServeConfig) -> int:
    """Entry point of `aiarch serve`: one worker in-process, or a supervisor of N workers.
    A port that cannot be bound ends it at once with one line naming the port."""
    try:
        sock = _bind("HTTP", config.host, config.port, reuse_port=False)
    except PortInUseError as e:
        print(f"aiarch serve: {e}", file=sys.stderr)
        return EXIT_PORT_IN_USE
    grpc_holder = None
    try:
        if config.grpc_port is not None:
            try:
                # Nothing may listen there (checked without SO_REUSEPORT, which would let the
                # workers join another server's group). Supervised workers share the port with
                # SO_REUSEPORT: the supervisor keeps a bound, non-listening member of the group
                # (it receives no connections) so the port stays ours while workers restart.
                _bind("gRPC", config.host, config.grpc_port, reuse_port=False).close()
                if config.workers > 1:
                    grpc_holder = _bind("gRPC", config.host, config.grpc_port, reuse_port=True)
            except PortInUseError as e:
                print(f"aiarch serve: {e}", file=sys.stderr)
                return EXIT_PORT_IN_USE
        if config.workers <= 1:
            return run_worker(config, sock=sock)
        _setup_logging(config.log_level)
        return supervise(config, sock)
    finally:
        sock.close()
        if grpc_holder is not None:
            grpc_holder.close()
