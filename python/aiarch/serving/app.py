"""Routes of `aiarch serve`: KServe v2 REST, `/predict`, `/metrics`, health and repository.

`App.handle` is called by the HTTP protocol once per request, in the loop thread. Everything a
request needs about a model (names, dtypes, shapes, pre-encoded metadata and config) is cached in
a `ModelEntry` when the model is loaded, so the infer path is: route lookup (a dict hit) → decode
(msgspec; zero-copy views for binary tensors) → check against the entry → `runtime.infer` →
when its future completes, encode and write. No task is created when the runtime hands back a
future; a coroutine gets one task.
"""

from __future__ import annotations

import asyncio
import gzip
import hmac
import logging
import math
import types
import zlib
from typing import Any
from urllib.parse import unquote

import msgspec
import numpy as np

from aiarch.redact import redact_url

from . import v2
from .config import ModelConfig, ServeConfig, validate_model_name
from .errors import HttpError, status_for_exception
from .features import result_check
from .http import JSON, OCTETS, HttpProtocol, Request, build_response, error_response
from .loader import ClientConfigError, ModelRepository, SourceError, confine_client_config
from .metrics import MetricsExporter

__all__ = ["App", "ModelEntry"]

log = logging.getLogger("aiarch.serving")

SERVER_NAME = "aiarch"
EXTENSIONS = [
    "binary_tensor_data",
    "model_configuration",
    "statistics",
    "model_repository",
    "model_repository(unload_dependents)",
    "schedule_policy",
    "parameters",
]
_encode = msgspec.json.encode
_isfuture = asyncio.isfuture


def _spec(spec: Any) -> tuple[str, np.dtype[Any], tuple[int, ...]]:
    dtype = (
        v2.DATATYPES["BF16"]
        if spec.dtype == "bfloat16" and "BF16" in v2.DATATYPES
        else (np.dtype(spec.dtype))
    )
    return spec.name, dtype, tuple(int(d) for d in spec.shape)


def _triton_type(datatype: str) -> str:
    return "TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}"


class ModelEntry:
    """What the request path needs about one loaded model; rebuilt on (re)load."""

    __slots__ = (
        "check",
        "config_json",
        "input_index",
        "inputs",
        "metadata_json",
        "name",
        "output_datatypes",
        "output_index",
        "output_names",
        "outputs",
        "runtime_name",
        "version",
    )

    def __init__(self, info: Any, source: str = "", public_name: str | None = None):
        # A registry-served version runs under its own runtime name (e.g. `fraud.v3`) and
        # answers under the public one.
        self.runtime_name: str = info.name
        self.name: str = public_name or info.name
        self.version: str = str(info.version)
        self.inputs = [_spec(s) for s in info.inputs]
        self.outputs = [_spec(s) for s in info.outputs]
        self.input_index = {n: i for i, (n, _, _) in enumerate(self.inputs)}
        self.output_names = [n for n, _, _ in self.outputs]
        self.output_datatypes = [v2.np_to_v2(dt) for _, dt, _ in self.outputs]
        self.output_index = {n: i for i, n in enumerate(self.output_names)}
        # Per-request check of a model's results before encoding (feature-lookup policy).
        self.check: Any = None
        batching = info.batching
        max_batch = int(getattr(batching, "max_batch_size", 0) or 0)
        lead = [-1] if max_batch > 0 else []

        def meta(specs: list[tuple[str, np.dtype[Any], tuple[int, ...]]]) -> list[dict[str, Any]]:
            return [
                {"name": n, "datatype": v2.np_to_v2(dt), "shape": lead + list(tr)}
                for n, dt, tr in specs
            ]

        self.metadata_json = _encode(
            {
                "name": self.name,
                "versions": [self.version],
                "platform": "aiarch_python",
                "inputs": meta(self.inputs),
                "outputs": meta(self.outputs),
            }
        )

        def cfg(specs: list[tuple[str, np.dtype[Any], tuple[int, ...]]]) -> list[dict[str, Any]]:
            return [
                {"name": n, "data_type": _triton_type(v2.np_to_v2(dt)), "dims": list(tr)}
                for n, dt, tr in specs
            ]

        config: dict[str, Any] = {
            "name": self.name,
            "platform": "aiarch_python",
            "backend": "python",
            "version_policy": {"specific": {"versions": [self.version]}},
            "max_batch_size": max_batch,
            "input": cfg(self.inputs),
            "output": cfg(self.outputs),
            "instance_group": [
                {"count": int(getattr(batching, "instances", 1) or 1), "kind": "KIND_CPU"}
            ],
            "response_cache": {"enable": info.cache is not None},
            "parameters": {"source": {"string_value": redact_url(source)}} if source else {},
        }
        if max_batch > 0:
            config["dynamic_batching"] = {
                "preferred_batch_size": list(getattr(batching, "preferred_batch_sizes", ()) or ()),
                "max_queue_delay_microseconds": int(getattr(batching, "max_delay_us", 0) or 0),
                "priority_levels": int(getattr(batching, "priority_levels", 1) or 1),
            }
        self.config_json = _encode(config)

    def arrange(self, names: list[str], arrays: list[np.ndarray]) -> Any:
        """Check request tensors against the model and order them as its inputs; returns an array
        for single-input models, else a list. Raises HttpError(400)."""
        specs = self.inputs
        if len(names) != len(specs):
            raise HttpError(
                400,
                f"expected {len(specs)} inputs but got {len(names)} inputs for model '{self.name}'",
            )
        ordered: list[Any] = [None] * len(specs)
        rows = -1
        for name, arr in zip(names, arrays):
            i = self.input_index.get(name)
            if i is None:
                raise HttpError(400, f"unexpected inference input '{name}' for model '{self.name}'")
            if ordered[i] is not None:
                raise HttpError(400, f"input '{name}' given twice")
            _, dtype, trailing = specs[i]
            if arr.dtype != dtype:
                raise HttpError(
                    400,
                    f"unexpected datatype {v2.np_to_v2(arr.dtype)} for inference input '{name}', "
                    f"expecting {v2.np_to_v2(dtype)}",
                )
            shape = arr.shape
            if (
                len(shape) != len(trailing) + 1
                or shape[0] < 1
                or any(t >= 0 and s != t for s, t in zip(shape[1:], trailing))
            ):
                raise HttpError(
                    400,
                    f"unexpected shape for input '{name}' for model '{self.name}'. Expected "
                    f"{[-1, *trailing]}, got {list(shape)}",
                )
            if rows < 0:
                rows = shape[0]
            elif shape[0] != rows:
                raise HttpError(400, "all inputs must have the same batch size")
            ordered[i] = arr
        return ordered[0] if len(ordered) == 1 else ordered


class _Job:
    """One in-flight inference: drives the runtime's `infer` coroutine and encodes its result.

    The coroutine is stepped by hand instead of wrapping it in a Task: the first step runs inside
    `handle`, so a cache hit or an immediate refusal (429, 404, 400) is answered synchronously,
    and afterwards each future the coroutine awaits resumes it through one done-callback. A
    coroutine that yields anything but a future is handed to a Task for the rest of its run.
    """

    __slots__ = (
        "accept",
        "app",
        "binary",
        "coro",
        "entry",
        "inputs",
        "keep_alive",
        "pending",
        "request_id",
        "select",
    )

    def __init__(self, app: App, entry: ModelEntry, keep_alive: bool):
        self.app = app
        self.entry = entry
        self.keep_alive = keep_alive
        self.request_id: str | None = None
        self.select: list[int] | None = None  # output indices; None = /predict (all outputs)
        self.binary: list[bool] = []
        self.accept: bytes | None = None
        self.pending: Any = None
        self.coro: Any = None
        self.inputs: Any = None

    def start(self, aw: Any, conn: HttpProtocol) -> bytes | list[Any] | None:
        """Run until the first suspension; returns the response if already known, else None
        after reserving the response slot on `conn`."""
        if _isfuture(aw):
            if aw.done():
                return self._from_future(aw)
            self._suspend(aw, conn)
            return None
        self.coro = aw
        try:
            y = aw.send(None)
        except StopIteration as stop:
            return self._encode_or_error(stop.value, None)
        except Exception as e:
            return self.app.error(e, self.keep_alive)
        self._suspend(y, conn)
        return None

    def _suspend(self, y: Any, conn: HttpProtocol) -> None:
        pending = conn.defer()
        self.pending = pending
        if _isfuture(y):
            y._asyncio_future_blocking = False
            pending.future = y
            y.add_done_callback(self._step if self.coro is not None else self._future_done)
        else:  # a bare yield (e.g. sleep(0)): let a Task run the rest
            task = asyncio.ensure_future(_rest(self.coro, y))
            self.coro = None
            pending.future = task
            task.add_done_callback(self._future_done)

    def _step(self, fut: asyncio.Future[Any]) -> None:
        """Done-callback of a future the coroutine awaits: resume it. Runs in the loop thread."""
        coro = self.coro
        try:
            y = coro.send(None)
        except StopIteration as stop:
            self._finish(stop.value, None)
            return
        except BaseException as e:  # CancelledError included: the client went away
            self._finish(None, e)
            return
        pending = self.pending
        if _isfuture(y):
            y._asyncio_future_blocking = False
            pending.future = y
            y.add_done_callback(self._step)
        else:
            task = asyncio.ensure_future(_rest(coro, y))
            self.coro = None
            pending.future = task
            task.add_done_callback(self._future_done)

    def _future_done(self, fut: asyncio.Future[Any]) -> None:
        if fut.cancelled():
            self._finish(None, asyncio.CancelledError())
        else:
            exc = fut.exception()
            self._finish(None if exc is not None else fut.result(), exc)

    def _from_future(self, fut: asyncio.Future[Any]) -> bytes | list[Any] | None:
        if fut.cancelled():
            return self.app.error(asyncio.CancelledError(), self.keep_alive)
        exc = fut.exception()
        return self._encode_or_error(None if exc is not None else fut.result(), exc)

    def _encode_or_error(self, value: Any, exc: BaseException | None) -> bytes | list[Any]:
        keep = self.keep_alive and not self.app.draining
        if exc is None:
            try:
                return self.encode(value, keep)
            except Exception as e:
                exc = e
        return self.app.error(exc, keep)

    def _finish(self, value: Any, exc: BaseException | None) -> None:
        pending = self.pending
        self.coro = None
        if pending.conn is None or isinstance(exc, asyncio.CancelledError):
            return  # the client is gone (its request was cancelled in the runtime)
        keep = self.keep_alive and not self.app.draining
        pending.resolve(self._encode_or_error(value, exc), keep)

    def encode(self, result: Any, keep: bool) -> bytes | list[Any]:
        entry = self.entry
        outputs = result if isinstance(result, tuple) else (result,)
        if entry.check is not None:
            entry.check(outputs, self.inputs)
        if len(outputs) != len(entry.output_names):
            raise HttpError(
                500, f"model returned {len(outputs)} outputs, expected {len(entry.output_names)}"
            )
        select = self.select
        if select is None:
            body = v2.encode_predict_response(entry.output_names, list(outputs))
            return build_response(200, body, JSON, (), keep)
        names = entry.output_names
        dts = entry.output_datatypes
        header, buffers = v2.encode_infer_response(
            entry.name,
            entry.version,
            self.request_id,
            [names[i] for i in select],
            [dts[i] for i in select],
            [outputs[i] for i in select],
            self.binary,
        )
        extra_headers: list[tuple[str, str]] = []
        if True in self.binary:
            extra_headers.append(("inference-header-content-length", str(len(header))))
            ctype = OCTETS
        else:
            ctype = JSON
        accept = self.accept
        if accept is not None:
            return _compressed(
                header,
                buffers,
                ctype,
                extra_headers,
                keep,
                accept,
                self.app.config.limits.compress_min_bytes,
            )
        return build_response(200, header, ctype, extra_headers, keep, buffers)


@types.coroutine
def _resume(coro: Any, first: Any) -> Any:
    """Pass what a hand-stepped coroutine yields up to a Task (starting with `first`, which it
    already yielded) and what the Task sends or throws back down."""
    value = first
    while True:
        try:
            yield value
        except BaseException as e:
            try:
                value = coro.throw(e)
            except StopIteration as stop:
                return stop.value
            continue
        try:
            value = coro.send(None)
        except StopIteration as stop:
            return stop.value


async def _rest(coro: Any, first: Any) -> Any:
    return await _resume(coro, first)


def _compressed(
    header: bytes,
    buffers: list[Any],
    ctype: bytes,
    headers: list[tuple[str, str]],
    keep: bool,
    accept: bytes,
    threshold: int,
) -> bytes | list[Any]:
    body = header + b"".join(
        memoryview(b).cast("B") if not isinstance(b, bytes) else b for b in buffers
    )
    if len(body) >= threshold:
        if b"gzip" in accept:
            return build_response(
                200, gzip.compress(body, 1), ctype, [*headers, ("content-encoding", "gzip")], keep
            )
        if b"deflate" in accept:
            return build_response(
                200,
                zlib.compress(body, 1),
                ctype,
                [*headers, ("content-encoding", "deflate")],
                keep,
            )
    return build_response(200, body, ctype, headers, keep)


def _int_header(value: bytes, name: str) -> int:
    if not value.isdigit():
        raise HttpError(400, f"invalid {name} header")
    return int(value)


_MAX_TIMEOUT_MS = 86_400_000
"""Longest deadline a request may ask for (one day); beyond it the value is a client error."""
_MAX_PRIORITY = 0xFFFFFFFF
"""Largest priority a request may carry; the model's own levels are checked by the runtime."""


def _media_type(req: Request) -> bytes | None:
    """The request's media type, lowercase without parameters, or None when not sent."""
    ctype = req.headers.get(b"content-type")
    if ctype is None:
        return None
    return ctype.partition(b";")[0].strip().lower()


def _require_json(req: Request, binary_ok: bool = False) -> None:
    """Refuse (415) a body declared as anything but JSON, so a browser form or `text/plain`
    request from another site cannot drive a JSON endpoint. A body without Content-Type is
    read as JSON (tritonclient sends none); with `binary_ok`, the binary tensor extension's
    `application/octet-stream` is accepted when `Inference-Header-Content-Length` frames it."""
    media = _media_type(req)
    if media is None or media == b"application/json":
        return
    if (
        binary_ok
        and media == b"application/octet-stream"
        and b"inference-header-content-length" in req.headers
    ):
        return
    expected = "application/json"
    if binary_ok:
        expected += (
            " (or application/octet-stream with Inference-Header-Content-Length for binary tensors)"
        )
    raise HttpError(
        415, f"unsupported Content-Type {media.decode('latin-1')[:100]!r}; expected {expected}"
    )


class App:
    """Request dispatcher. One per worker process; every method runs in the loop thread."""

    def __init__(self, runtime: Any, config: ServeConfig, repository: ModelRepository):
        self.runtime = runtime
        self.config = config
        self.repository = repository
        self.entries: dict[str, ModelEntry] = {}
        self.ready = False
        self.draining = False
        self.metrics = MetricsExporter(runtime, self)
        self._routes: dict[tuple[bytes, bytes], tuple[Any, tuple[Any, ...]]] = {}
        self._server_meta = _encode(
            {"name": SERVER_NAME, "version": _version(), "extensions": EXTENSIONS}
        )
        self._infer = runtime.infer
        config.validate()
        self._token = config.resolved_auth_token()
        self.bound_loopback = False
        """True once the server's socket is bound to a loopback address (set by the server
        from the bound address itself); until then, treated as reachable from anywhere."""
        self.routes: dict[str, Any] = {}
        """Registry-served models by public name (`routing.Route`): canary arms and shadow."""
        self.public_names: dict[str, str] = {}
        """Runtime name → public model name, for versions loaded under their own names."""
        self.on_refresh: list[Any] = []
        """Called with a model name after its entry was rebuilt or dropped (the native path)."""

    # -- model entries ---------------------------------------------------------------------
    def refresh(self, name: str) -> None:
        """Rebuild the cached entry of `name` after a load/unload."""
        if name in self.routes:
            return  # registry-served: its entries follow the route's arms
        if name in self.runtime.models():
            source = self.repository.source_of(name)
            entry = ModelEntry(self.runtime.model_info(name), source)
            entry.check = result_check(name)
            self.entries[name] = entry
        else:
            self.entries.pop(name, None)
        for listener in self.on_refresh:
            listener(name)

    def _entry(self, model: str, version: str | None) -> ModelEntry:
        route = self.routes.get(model)
        if route is not None and version is not None:
            return route.entry_for_version(version)
        entry = self.entries.get(model)
        if entry is None or (version is not None and version != entry.version):
            suffix = f" version {version}" if version is not None else ""
            raise HttpError(404, f"Request for unknown model: '{model}'{suffix} is not found")
        return entry

    # -- dispatch --------------------------------------------------------------------------
    def handle(self, req: Request, conn: HttpProtocol) -> None:
        key = (req.method, req.path)
        route = self._routes.get(key)
        if route is None:
            route = self._route(req.method, req.path)
            if len(self._routes) > 4096:
                self._routes.clear()
            self._routes[key] = route
        fn, args = route
        try:
            out = fn(req, conn, *args)
        except Exception as e:
            out = self.error(e, req.keep_alive)
        if out is not None:
            conn.respond(out, req.keep_alive)

    def error(self, exc: BaseException, keep_alive: bool) -> bytes | list[Any]:
        """The ONE conversion of an exception into an HTTP error response."""
        status, message, headers = status_for_exception(exc)
        return error_response(status, message, keep_alive, headers)

    def _route(self, method: bytes, raw_path: bytes) -> tuple[Any, tuple[Any, ...]]:
        path = raw_path.decode("latin-1")
        try:  # split first, then unquote: an encoded '/' stays inside its segment
            parts = [unquote(p, errors="strict") for p in path.split("/") if p]
        except UnicodeDecodeError:
            return self._fixed(400, "path is not valid UTF-8"), ()
        get, post = method == b"GET", method == b"POST"
        n = len(parts)
        if n and parts[0] == "v2":
            if n == 1:
                return self._verb(get, self._server_metadata, "GET"), ()
            head = parts[1]
            if head == "health" and n == 3 and parts[2] in ("live", "ready"):
                fn = self._live if parts[2] == "live" else self._ready
                return self._verb(get, fn, "GET"), ()
            if head == "models":
                if n == 3 and parts[2] == "stats":
                    return self._verb(get, self._stats, "GET"), (None, None)
                if n >= 3:
                    return self._model_route(parts[2:], get, post)
            if head == "repository":
                if n == 3 and parts[2] == "index":
                    return self._verb(post, self._repo_index, "POST"), ()
                if n == 5 and parts[2] == "models" and parts[4] in ("load", "unload"):
                    repo_fn: Any = self._repo_load if parts[4] == "load" else self._repo_unload
                    return self._verb(post, repo_fn, "POST"), (parts[3],)
            if head in ("systemsharedmemory", "cudasharedmemory"):
                return self._fixed(501, "shared memory is not supported"), ()
            if head == "logging" or (n >= 3 and parts[-2:] == ["trace", "setting"]):
                return self._fixed(501, "trace and logging settings are not supported"), ()
        elif n == 2 and parts[0] == "predict":
            return self._verb(post, self._predict, "POST"), (parts[1],)
        elif n == 1 and parts[0] == "metrics":
            return self._verb(get, self._metrics, "GET"), ()
        return self._fixed(404, f"not found: {path[:200]}"), ()

    def _model_route(self, rest: list[str], get: bool, post: bool) -> tuple[Any, tuple[Any, ...]]:
        model, rest = rest[0], rest[1:]
        version = None
        if len(rest) >= 2 and rest[0] == "versions":
            version, rest = rest[1], rest[2:]
        if not rest:
            return self._verb(get, self._model_metadata, "GET"), (model, version)
        if len(rest) == 1:
            action = rest[0]
            if action == "infer":
                return self._verb(post, self._v2_infer, "POST"), (model, version)
            if action in ("ready", "config", "stats"):
                fn = {
                    "ready": self._model_ready,
                    "config": self._model_config,
                    "stats": self._stats,
                }[action]
                return self._verb(get, fn, "GET"), (model, version)
            if action == "monitor":
                return self._verb(get, self._monitor, "GET"), (model, version)
            if action in ("generate", "generate_stream"):
                return self._fixed(501, f"{action} is not supported"), ()
        return self._fixed(404, "not found"), ()

    @staticmethod
    def _verb(ok: bool, fn: Any, allowed: str) -> Any:
        if ok:
            return fn

        def not_allowed(req: Request, conn: HttpProtocol, *args: Any) -> bytes | list[Any]:
            return error_response(405, "method not allowed", req.keep_alive, (("allow", allowed),))

        return not_allowed

    @staticmethod
    def _fixed(status: int, message: str) -> Any:
        def fixed(req: Request, conn: HttpProtocol, *args: Any) -> bytes | list[Any]:
            return error_response(status, message, req.keep_alive)

        return fixed

    # -- health and metadata ---------------------------------------------------------------
    def _live(self, req: Request, conn: HttpProtocol) -> bytes | list[Any]:
        return build_response(200, b'{"live":true}', JSON, (), req.keep_alive)

    def is_ready(self) -> bool:
        """Strict readiness: started, not draining, and every loaded model ready."""
        if not self.ready or self.draining:
            return False
        rt = self.runtime
        return all(rt.model_info(e.runtime_name).ready for e in self.entries.values())

    def _ready(self, req: Request, conn: HttpProtocol) -> bytes | list[Any]:
        if self.is_ready():
            return build_response(200, b'{"ready":true}', JSON, (), req.keep_alive)
        return error_response(400, "server is not ready", req.keep_alive)

    def _server_metadata(self, req: Request, conn: HttpProtocol) -> bytes | list[Any]:
        return build_response(200, self._server_meta, JSON, (), req.keep_alive)

    def _model_metadata(
        self, req: Request, conn: HttpProtocol, model: str, version: str | None
    ) -> bytes | list[Any]:
        entry = self._entry(model, version)
        return build_response(200, entry.metadata_json, JSON, (), req.keep_alive)

    def _model_config(
        self, req: Request, conn: HttpProtocol, model: str, version: str | None
    ) -> bytes | list[Any]:
        entry = self._entry(model, version)
        return build_response(200, entry.config_json, JSON, (), req.keep_alive)

    def _model_ready(
        self, req: Request, conn: HttpProtocol, model: str, version: str | None
    ) -> bytes | list[Any]:
        entry = self._entry(model, version)
        if self.runtime.model_info(entry.runtime_name).ready and not self.draining:
            return build_response(
                200, _encode({"name": entry.name, "ready": True}), JSON, (), req.keep_alive
            )
        return error_response(400, "Model version not ready", req.keep_alive)

    def _metrics(self, req: Request, conn: HttpProtocol) -> bytes | list[Any]:
        body, ctype = self.metrics.render()
        return build_response(200, body, ctype.encode(), (), req.keep_alive)

    # -- statistics ------------------------------------------------------------------------
    def _monitor(
        self, req: Request, conn: HttpProtocol, model: str, version: str | None
    ) -> bytes | list[Any]:
        entry = self._entry(model, version)
        mon = self.runtime.monitor(entry.name)
        if mon is None:
            raise HttpError(404, f"model '{entry.name}' is not monitored (no monitor.reference)")
        report = self.metrics.monitor_report(entry.name, mon)
        return build_response(200, _encode(report), JSON, (), req.keep_alive)

    def _stats(
        self, req: Request, conn: HttpProtocol, model: str | None, version: str | None
    ) -> bytes | list[Any]:
        if model is None:
            names = list(self.entries)
        else:
            names = [self._entry(model, version).runtime_name]
        stats = []
        for s in self.metrics.model_stats(names):  # over all workers when supervised
            stat = _model_stat(s)
            if s.get("feature_lookup") is not None:
                stat["feature_lookup"] = s["feature_lookup"]
            stats.append(stat)
        return build_response(200, _encode({"model_stats": stats}), JSON, (), req.keep_alive)

    # -- inference -------------------------------------------------------------------------
    def _timeout(self, req: Request, params: dict[str, Any] | None) -> float | None:
        if params:
            t = params.get("timeout")
            if t is not None:
                if type(t) is not int or not 0 <= t <= _MAX_TIMEOUT_MS * 1000:
                    raise HttpError(
                        400,
                        "parameter 'timeout' must be an integer number of microseconds from 0 "
                        f"(none) to {_MAX_TIMEOUT_MS * 1000} (one day)",
                    )
                if t:
                    return t / 1e6
        h = req.headers.get(b"x-request-timeout-ms")
        if h is not None:
            try:
                ms = float(h)
            except ValueError:
                ms = math.nan
            if not 0 < ms <= _MAX_TIMEOUT_MS:  # also refuses nan and inf
                raise HttpError(
                    400,
                    "X-Request-Timeout-Ms must be a positive number of milliseconds, at most "
                    f"{_MAX_TIMEOUT_MS} (one day); got {h.decode('latin-1')[:40]!r}",
                )
            return ms / 1e3
        return self.config.request_timeout_s

    def _v2_infer(
        self, req: Request, conn: HttpProtocol, model: str, version: str | None
    ) -> bytes | list[Any] | None:
        entry = self._entry(model, version)
        _require_json(req, binary_ok=True)
        headers = req.headers
        hlen = headers.get(b"inference-header-content-length")
        route = self.routes.get(model) if version is None else None
        job = _Job(self, entry, req.keep_alive)
        if hlen is not None and _int_header(hlen, "Inference-Header-Content-Length") == 0:
            if route is not None:
                entry = job.entry = route.pick(headers.get(b"x-route-key"), None)
            n_out = len(entry.output_names)
            if len(entry.inputs) != 1:
                raise HttpError(400, "raw binary requests need a model with exactly one input")
            name, dtype, trailing = entry.inputs[0]
            x = v2.decode_raw(req.body, name, dtype, trailing)
            job.select = list(range(n_out))
            job.binary = [True] * n_out
            timeout, priority = self._timeout(req, None), 0
        else:
            d = v2.decode_infer(req.body, None if hlen is None else int(hlen))
            if route is not None:
                entry = job.entry = route.pick(headers.get(b"x-route-key"), d.parameters)
            n_out = len(entry.output_names)
            x = entry.arrange(d.names, d.arrays)
            job.request_id = d.id
            if d.outputs is None:
                job.select = list(range(n_out))
                job.binary = [d.binary_output] * n_out
            else:
                select, binary = [], []
                for out in d.outputs:
                    i = entry.output_index.get(out.name)
                    if i is None:
                        raise HttpError(
                            400, f"unexpected inference output '{out.name}' for model '{model}'"
                        )
                    b = d.binary_output
                    p = out.parameters
                    if p:
                        if "classification" in p:
                            raise HttpError(400, "classification outputs are not supported")
                        flag = p.get("binary_data")
                        if flag is not None:
                            b = flag is True
                    select.append(i)
                    binary.append(b)
                job.select, job.binary = select, binary
            params = d.parameters
            timeout = self._timeout(req, params)
            priority = 0
            if params:
                pr = params.get("priority", 0)
                if type(pr) is not int or not 0 <= pr <= _MAX_PRIORITY:
                    raise HttpError(
                        400,
                        "parameter 'priority' must be an integer from 0 (the model's default) "
                        "to the model's priority levels",
                    )
                priority = pr
        job.accept = headers.get(b"accept-encoding")
        response = self._submit(job, conn, entry.runtime_name, x, timeout, priority)
        if route is not None and route.shadow is not None:
            route.mirror(self._infer, x)
        return response

    def _predict(self, req: Request, conn: HttpProtocol, model: str) -> bytes | list[Any] | None:
        entry = self._entry(model, None)
        _require_json(req)
        route = self.routes.get(model)
        if route is not None:
            entry = route.pick(req.headers.get(b"x-route-key"), None)
        arrays = v2.decode_predict(req.body, entry.inputs)
        x = arrays[0] if len(arrays) == 1 else arrays
        job = _Job(self, entry, req.keep_alive)
        response = self._submit(job, conn, entry.runtime_name, x, self._timeout(req, None), 0)
        if route is not None and route.shadow is not None:
            route.mirror(self._infer, x)
        return response

    def _submit(
        self, job: _Job, conn: HttpProtocol, name: str, x: Any, timeout: float | None, priority: int
    ) -> bytes | list[Any] | None:
        if job.entry.check is not None:
            job.inputs = x
        return job.start(self._infer(name, x, timeout_s=timeout, priority=priority), conn)

    # -- repository ------------------------------------------------------------------------
    def _authorize(self, req: Request) -> None:
        """Every repository call passes here. With a token configured (always, when clients may
        load their own configs) the call must carry it, loopback or not. Without one, only a
        loopback-bound server accepts calls, and never from a browser page: a request with an
        `Origin` header is cross-site by construction here (no client of this API sends one)."""
        token = self._token
        if token is None:
            if not self.bound_loopback:
                raise HttpError(
                    403,
                    "repository calls need --auth-token when the server is not bound to loopback",
                )
            if b"origin" in req.headers:
                raise HttpError(
                    403, "repository calls from a browser page are refused without --auth-token"
                )
            return
        got = req.headers.get(b"authorization", b"")
        expected = b"Bearer " + token.encode()
        if not hmac.compare_digest(got, expected):
            raise HttpError(401, "missing or wrong bearer token", (("www-authenticate", "Bearer"),))

    def _repo_index(self, req: Request, conn: HttpProtocol) -> bytes | list[Any]:
        _require_json(req)
        ready_only = False
        if req.body:
            body = _decode_json(req.body)
            if isinstance(body, dict):
                ready_only = body.get("ready") is True
        out = []
        for name in sorted(set(self.entries) | set(self.repository.known())):
            entry = self.entries.get(name)
            if entry is not None:
                out.append({"name": name, "version": entry.version, "state": "READY", "reason": ""})
            elif not ready_only:
                out.append({"name": name, "state": "UNAVAILABLE", "reason": "unloaded"})
        return build_response(200, _encode(out), JSON, (), req.keep_alive)

    def _repo_params(self, req: Request) -> dict[str, Any]:
        _require_json(req)
        if not req.body:
            return {}
        body = _decode_json(req.body)
        if not isinstance(body, dict):
            raise HttpError(400, "request body must be a JSON object")
        params = body.get("parameters") or {}
        if not isinstance(params, dict):
            raise HttpError(400, "'parameters' must be an object")
        return params

    def _repo_load(self, req: Request, conn: HttpProtocol, model: str) -> None:
        self._authorize(req)
        try:
            validate_model_name(model)
        except ValueError as e:
            raise HttpError(400, str(e)) from None
        if model in self.routes:
            raise HttpError(
                400, f"model '{model}' is served from the registry: move its alias to change it"
            )
        params = self._repo_params(req)
        if any(k.startswith("file:") for k in params):
            raise HttpError(501, "loading model files through the API is not supported")
        cfg: ModelConfig | None = None
        if "config" in params:
            cfg = self._client_config(model, params["config"])
        self._run_blocking(req, conn, self.repository.load, model, cfg)

    def _client_config(self, model: str, raw: Any) -> ModelConfig:
        """The config a client sent with a load, checked against the operator's policy."""
        config = self.config
        if not config.repository_load_enabled:
            raise HttpError(
                403,
                "loading a model from a client-given config is disabled; the operator enables "
                "it with --model-root DIR (model files inside DIR) or --allow-repository-load",
            )
        roots = config.model_roots
        try:
            tree = _decode_json(raw.encode()) if isinstance(raw, str) else raw
            cfg = self.repository.config_from_tree(model, tree, roots[0] if roots else None)
            return confine_client_config(cfg, roots, config.allow_repository_load)
        except ClientConfigError as e:
            raise HttpError(403 if e.forbidden else 400, f"invalid model config: {e}") from None
        except (ValueError, TypeError) as e:
            raise HttpError(400, f"invalid model config: {e}") from None

    def _repo_unload(self, req: Request, conn: HttpProtocol, model: str) -> None:
        self._authorize(req)
        self._repo_params(req)
        if model not in self.entries:
            raise HttpError(404, f"Request for unknown model: '{model}' is not found")
        self._run_blocking(req, conn, self.repository.unload, model)

    def _run_blocking(self, req: Request, conn: HttpProtocol, fn: Any, *args: Any) -> None:
        """Run a load/unload in a worker thread (it may warm up or drain a model) and answer
        when it is done; the loop keeps serving meanwhile."""
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(None, fn, *args)
        pending = conn.defer()
        pending.future = fut
        keep = req.keep_alive
        name = args[0]

        def done(f: asyncio.Future[Any]) -> None:
            if f.cancelled():
                return
            exc = f.exception()
            self.refresh(name)
            if isinstance(exc, SourceError):
                cause = exc.__cause__
                log.warning("load of model %s failed: %s: %s", name, type(cause).__name__, cause)
                exc = HttpError(400, str(exc))
            if pending.conn is None:
                return
            if exc is not None:
                pending.resolve(self.error(exc, keep), keep)
            else:
                pending.resolve(build_response(200, b"", JSON, (), keep), keep)

        fut.add_done_callback(done)


def _decode_json(body: bytes) -> Any:
    """A repository request's JSON body; malformed or too deeply nested JSON is a 400."""
    try:
        return msgspec.json.decode(body)
    except msgspec.DecodeError as e:
        raise HttpError(400, f"failed to parse the request JSON: {e}") from None
    except RecursionError:
        raise HttpError(400, "failed to parse the request JSON: nested too deeply") from None


def _model_stat(s: dict[str, Any]) -> dict[str, Any]:
    """Runtime stats → v2 `$model_stat` (durations as {"count", "ns"})."""
    req = s.get("requests", {})
    totals = s.get("totals_ns", {})
    success = int(req.get("success", 0))
    fail = sum(int(req.get(k, 0)) for k in ("failed", "expired", "rejected", "cancelled"))
    cache = s.get("cache") or {}

    def d(count: int, ns: Any = 0) -> dict[str, int]:
        return {"count": int(count), "ns": int(ns or 0)}

    return {
        "name": s.get("model"),
        "version": str(s.get("version", "")),
        "last_inference": int(s.get("last_inference_ms", 0)),
        "inference_count": int(s.get("rows", 0)),
        "execution_count": int(s.get("batches", 0)),
        "inference_stats": {
            "success": d(success, totals.get("end_to_end")),
            "fail": d(fail),
            "queue": d(success, totals.get("queue")),
            "compute_input": d(success),
            "compute_infer": d(success, totals.get("execution")),
            "compute_output": d(success),
            "cache_hit": d(cache.get("hits", 0)),
            "cache_miss": d(cache.get("misses", 0)),
        },
        "batch_stats": [
            {
                "batch_size": int(size),
                "compute_input": d(count),
                "compute_infer": d(count),
                "compute_output": d(count),
            }
            for size, count in sorted((s.get("batch_size") or {}).get("counts", {}).items())
        ],
    }


def _version() -> str:
    try:
        import aiarch

        return str(aiarch.__version__)
    except Exception:  # the native core is not importable: report the package metadata
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("aiarch")
        except PackageNotFoundError:
            return "0+unknown"
