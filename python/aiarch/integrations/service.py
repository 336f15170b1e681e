"""One Runtime owned by a host service's lifecycle: start, models, registry aliases, metrics, health.

`ServiceRuntime` is what the framework helpers (`aiarch.integrations.asgi`, `.wsgi`, `.grpc`)
share. It knows nothing of any framework:

- ``start()`` creates the `aiarch.Runtime` in the calling process and runs the ``setup``
  callback that adds the models; ``close(drain=True)`` runs what is queued, then stops. Until
  ``start()`` (and after ``close()``), every call fails at once with `UnavailableError` naming
  the missing step — a host that forgot to wire the lifecycle gets an error, never a hang.
- The Runtime belongs to the process that started it: its batcher threads do not survive a
  ``fork()``. Pre-fork servers (gunicorn) must start it in each worker, after the fork
  (``ensure_started()`` does so lazily on the first request); a Runtime inherited from the
  parent is refused with an error saying so.
- ``add_registry_model("fraud", "fraud@production")`` loads the version an alias points at
  (verified against its digest) and follows the alias: a thread polls it every
  ``registry_poll_s``; when it moves, the new version is loaded and warmed beside the old one,
  requests switch to it in one assignment, and the old version is drained and removed. No
  request is refused during the switch.
- ``metrics()`` renders the same Prometheus families as ``aiarch serve``'s ``/metrics``
  (`aiarch.serving.metrics.MetricsExporter`), with registry versions under their public name.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
from collections.abc import Callable
from typing import Any

from aiarch.errors import NotFoundError, UnavailableError
from aiarch.runtime import ModelInfo, Runtime

__all__ = ["ServiceRuntime"]

log = logging.getLogger("aiarch.integrations")

_NOT_STARTED = (
    "the aiarch runtime is not started: start it with the host's lifecycle "
    "(FastAPI/Starlette: lifespan=aiarch.integrations.asgi.lifespan(service); "
    "Flask/Django: aiarch.integrations.wsgi.install(app, service) or service.ensure_started() "
    "in each worker; gRPC: service.start() before server.start())"
)


class _RegistryModel:
    """A public model name that follows a registry alias."""

    __slots__ = ("add_kwargs", "alias", "failed_version", "name", "registry_name", "version")

    def __init__(
        self, name: str, registry_name: str, alias: str | None, add_kwargs: dict[str, Any]
    ):
        self.name = name
        self.registry_name = registry_name
        self.alias = alias
        self.add_kwargs = add_kwargs
        self.version: int | None = None
        self.failed_version: int | None = None


class ServiceRuntime:
    """A Runtime whose life follows the host service's: started once per process, drained at
    shutdown, with registry models that follow their alias, Prometheus metrics and health.

    ``setup(service)`` is called by ``start()`` to add the models (``service.add_model`` /
    ``service.add_registry_model``). ``registry``: a `aiarch.registry.Registry`, its URL, or
    None for the default registry (opened only when a registry model is added).
    ``registry_poll_s``: how often followed aliases are read (one indexed read each).
    ``freeze_gc``: after start-up, move every object allocated so far (the framework, the
    models, torch's modules) into the collector's permanent generation (``gc.freeze()``).
    Batching keeps many requests in flight at once, so their objects outlive the youngest
    generation and trigger full collections; without the freeze each one scans the whole
    start-up heap (~100 ms of CPU for a FastAPI + torch process), which at a few thousand
    requests per second doubled the CPU per request. Process-wide; pass False to leave the
    collector alone.

    ``infer``/``infer_sync`` take the public model name. Thread-safe.
    """

    def __init__(
        self,
        setup: Callable[[ServiceRuntime], None] | None = None,
        *,
        registry: Any = None,
        registry_poll_s: float = 1.0,
        freeze_gc: bool = True,
    ) -> None:
        if registry_poll_s <= 0:
            raise ValueError(f"registry_poll_s must be > 0, got {registry_poll_s}")
        self._setup = setup
        self._registry_arg = registry
        self._registry: Any = None
        self._poll_s = registry_poll_s
        self._freeze_gc = freeze_gc
        self._lock = threading.RLock()
        self._runtime: Runtime | None = None
        self._pid: int | None = None
        self._closed = False
        self._exporter: Any = None
        # Public name -> runtime name of the version serving it now. Replaced, never mutated
        # in place, so a reader on another thread sees either the old or the new mapping.
        self._current: dict[str, str] = {}
        self._followed: dict[str, _RegistryModel] = {}
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        # Read by the metrics collector (`aiarch_server_ready` and the model label).
        self.public_names: dict[str, str] = {}
        self.ready = False
        self.draining = False

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Create the Runtime in this process and add the models. Idempotent in one process.

        Blocks while models load and warm up; an ASGI lifespan runs it in a worker thread.
        Raises `UnavailableError` after ``close()`` or when the Runtime was started in a
        parent process (see the module's note on ``fork``)."""
        with self._lock:
            if self._closed:
                raise UnavailableError("the aiarch runtime is closed (the service shut down)")
            if self._runtime is not None:
                self._check_process()
                return
            rt = Runtime()
            self._runtime, self._pid = rt, os.getpid()
            self._stop = threading.Event()
            try:
                if self._setup is not None:
                    self._setup(self)
            except BaseException:
                self._runtime, self._pid = None, None
                self._stop_watcher()
                rt.close(drain=False)
                raise
            from aiarch.serving.metrics import MetricsExporter

            self._exporter = MetricsExporter(rt, self)
            if self._freeze_gc:
                gc.freeze()
            self.ready = True

    def ensure_started(self) -> Runtime:
        """The Runtime, started on first use in this process: for thread-per-request servers
        whose workers are forked from a parent that must not own one. Costs one attribute
        read and one ``getpid`` comparison once started."""
        rt = self._runtime
        if rt is not None and self._pid == os.getpid() and self.ready:
            return rt
        # Not started, or another thread of this process is starting it: start() takes the
        # lock, so this waits for the models to load rather than racing past them.
        self.start()
        return self.runtime

    def close(self, *, drain: bool = True) -> None:
        """Stop following aliases, then close the Runtime: with ``drain`` every queued request
        runs first; otherwise they fail with `UnavailableError`. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self.draining = True
            self.ready = False
            rt, self._runtime = self._runtime, None
        self._stop_watcher()
        if rt is not None and self._pid == os.getpid():
            rt.close(drain=drain)
        if self._registry is not None and self._registry_arg is not self._registry:
            self._registry.close()

    @property
    def runtime(self) -> Runtime:
        """The started Runtime; `UnavailableError` when not started, closed, or inherited."""
        rt = self._runtime
        if rt is None:
            if self._closed:
                raise UnavailableError("the aiarch runtime is closed (the service shut down)")
            raise UnavailableError(_NOT_STARTED)
        if self._pid != os.getpid():
            self._check_process()
        return rt

    def _check_process(self) -> None:
        if self._pid != os.getpid():
            raise UnavailableError(
                f"the aiarch runtime was started in process {self._pid}, before this process "
                f"({os.getpid()}) was forked from it; its batcher threads do not exist here. "
                "Start it in each worker after the fork (ensure_started() on first use, or a "
                "post_fork hook), never at import in a pre-forking parent"
            )

    # ------------------------------------------------------------------ models

    def add_model(self, name: str, model: Any, **kwargs: Any) -> ModelInfo:
        """`Runtime.add_model` on the started Runtime (call it from ``setup``)."""
        info = self.runtime.add_model(name, model, **kwargs)
        self._current = {**self._current, name: name}
        return info

    def add_registry_model(self, name: str, ref: str, **kwargs: Any) -> ModelInfo:
        """Serve registry reference ``ref`` (``fraud@production``, ``models:/fraud/3``) as
        ``name``; an alias is followed, a pinned version is not. ``kwargs`` go to
        `Runtime.add_model` for every version loaded (batching, cache, warmup, device...).
        Each version runs as ``NAME.vN`` in the Runtime. Call it from ``setup``."""
        from aiarch.registry.uris import parse_ref

        parsed = parse_ref(ref)
        if "monitor" in kwargs:
            raise ValueError(
                "a monitor belongs to one model version; attach it with add_model for a "
                "pinned version"
            )
        followed = _RegistryModel(name, parsed.name, parsed.alias, dict(kwargs))
        registry = self._open_registry()
        if parsed.alias is not None:
            mv = registry.get(parsed.name, alias=parsed.alias)
        elif parsed.version is not None:
            mv = registry.get(parsed.name, version=parsed.version)
        else:
            mv = registry.get(parsed.name)
        info = self._load_version(followed, int(mv.version))
        if parsed.alias is not None:
            with self._lock:
                self._followed[name] = followed
                if self._watcher is None:
                    self._watcher = threading.Thread(
                        target=self._watch, name="aiarch-alias-watch", daemon=True
                    )
                    self._watcher.start()
        return info

    def resolve(self, name: str) -> str:
        """The Runtime's name for the version serving public model ``name`` now."""
        return self._current.get(name, name)

    def versions(self) -> dict[str, str]:
        """Public model name -> version serving it now."""
        rt = self.runtime
        out = {}
        for public, runtime_name in self._current.items():
            try:
                out[public] = rt.model_info(runtime_name).version
            except NotFoundError:
                continue  # switching at this instant
        return out

    def _open_registry(self) -> Any:
        if self._registry is None:
            from aiarch.registry import Registry

            arg = self._registry_arg
            self._registry = arg if isinstance(arg, Registry) else Registry(arg)
        return self._registry

    def _load_version(self, followed: _RegistryModel, version: int) -> ModelInfo:
        """Load one verified version beside the serving one, switch to it, drain the old.
        Runs in ``start`` or on the watcher thread."""
        from aiarch.serving.loader import resolve_source
        from aiarch.serving.routing import artifact_source

        rt = self.runtime
        mv = self._open_registry().open(followed.registry_name, version=version)
        runtime_name = f"{followed.name}.v{version}"
        if runtime_name not in rt.models():
            rt.add_model(
                runtime_name,
                resolve_source(artifact_source(mv)),
                version=str(version),
                **followed.add_kwargs,
            )
        self.public_names = {**self.public_names, runtime_name: followed.name}
        old = self._current.get(followed.name)
        # The switch: requests resolved from here on go to the new version; those already
        # submitted to the old one stay queued there and run during its drain below.
        self._current = {**self._current, followed.name: runtime_name}
        followed.version = version
        if old is not None and old != runtime_name:
            rt.remove_model(old, drain=True)
            self.public_names = {k: v for k, v in self.public_names.items() if k != old}
            log.info("%s now serves version %d (was %s)", followed.name, version, old)
        return rt.model_info(runtime_name)

    def _watch(self) -> None:
        while not self._stop.wait(self._poll_s):
            for followed in list(self._followed.values()):
                v = None
                try:
                    v = self._open_registry().alias_version(followed.registry_name, followed.alias)
                    if v is None or v in (followed.version, followed.failed_version):
                        continue
                    self._load_version(followed, int(v))
                except UnavailableError:
                    return  # closed meanwhile
                except Exception:
                    followed.failed_version = v
                    log.exception(
                        "%s: cannot switch to version %s; still serving version %s",
                        followed.name,
                        v,
                        followed.version,
                    )

    def _stop_watcher(self) -> None:
        self._stop.set()
        w = self._watcher
        if w is not None and w is not threading.current_thread():
            w.join()

    # ------------------------------------------------------------------ inference

    async def infer(
        self, name: str, inputs: Any, *, timeout_s: float | None = None, priority: int = 0
    ) -> Any:
        """`Runtime.infer` on the version serving public model ``name``. Cancelling the
        awaiting task cancels the queued request."""
        rt = self.runtime
        runtime_name = self._current.get(name, name)
        try:
            return await rt.infer(runtime_name, inputs, timeout_s=timeout_s, priority=priority)
        except NotFoundError:
            # Resolved just before an alias switch removed that version: use the new one.
            now = self._current.get(name, name)
            if now == runtime_name:
                raise
            return await rt.infer(now, inputs, timeout_s=timeout_s, priority=priority)

    def infer_sync(
        self, name: str, inputs: Any, *, timeout_s: float | None = None, priority: int = 0
    ) -> Any:
        """`Runtime.infer_sync` (GIL released while waiting) on the version serving ``name``."""
        rt = self.runtime
        runtime_name = self._current.get(name, name)
        try:
            return rt.infer_sync(runtime_name, inputs, timeout_s=timeout_s, priority=priority)
        except NotFoundError:
            now = self._current.get(name, name)
            if now == runtime_name:
                raise
            return rt.infer_sync(now, inputs, timeout_s=timeout_s, priority=priority)

    # ------------------------------------------------------------------ observability

    def metrics(self) -> tuple[bytes, str]:
        """(body, content type) of the Prometheus text exposition. Once per scrape."""
        self.runtime  # noqa: B018 - raises the not-started / forked error
        return self._exporter.render()

    def health(self) -> tuple[bool, dict[str, Any]]:
        """(ready, body): ready once started with every model ready, false while draining.
        Never raises: a health probe of an unstarted service answers not ready."""
        rt = self._runtime
        if rt is None or self._pid != os.getpid() or not self.ready:
            state = "closed" if self._closed else "not started"
            return False, {"ready": False, "state": state, "pid": os.getpid()}
        models = {}
        for public, runtime_name in self._current.items():
            try:
                info = rt.model_info(runtime_name)
            except NotFoundError:
                continue
            models[public] = {"version": info.version, "ready": info.ready}
        ok = self.ready and not self.draining and all(m["ready"] for m in models.values())
        return ok, {
            "ready": ok,
            "state": "draining" if self.draining else "serving",
            "pid": os.getpid(),
            "runtime_pid": self._pid,
            "models": models,
        }
