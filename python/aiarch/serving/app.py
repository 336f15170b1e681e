"""The router of `aiarch serve`: KServe v2 REST, `/predict`, `/metrics`, health and statistics.

`App.handle` is called by the HTTP front end once per request it hands to Python, in the loop
thread. Everything a request needs about a model is cached in a `ModelEntry` (entry.py) when the
model is loaded, so the infer path is: route lookup (a dict hit) → decode (msgspec; zero-copy
views for binary tensors) → check against the entry → `runtime.infer`, stepped by an `InferJob`
(jobs.py) that encodes the result when its future completes. The repository routes live in
repository.py. (v2 infer requests on plain models are answered natively, see native.py.)
"""

from __future__ import annotations

import logging
import math
from typing import Any
from urllib.parse import unquote

import msgspec

from aiarch.errors import InvalidArgumentError
from aiarch.monitor.feedback import decode_labels

from . import v2
from .config import ServeConfig
from .entry import ModelEntry
from .errors import HttpError, status_for_exception
from .features import result_check
from .http import JSON, HttpProtocol, Request, build_response, error_response, require_json
from .jobs import InferJob
from .loader import ModelRepository
from .metrics import MetricsExporter
from .repository import RepositoryApi
from .tracing import RequestSampler, RequestSpan, TracedConnection
from .tracing import untraced as _untraced

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


def _int_header(value: bytes, name: str) -> int:
    if not value.isdigit():
        raise HttpError(400, f"invalid {name} header")
    return int(value)


_MAX_TIMEOUT_MS = 86_400_000
"""Longest deadline a request may ask for (one day); beyond it the value is a client error."""
_MAX_PRIORITY = 0xFFFFFFFF
"""Largest priority a request may carry; the model's own levels are checked by the runtime."""


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
        self.repository_api = RepositoryApi(self)
        self.bound_loopback = False
        """True once the server's socket is bound to a loopback address (set by the server
        from the bound address itself); until then, treated as reachable from anywhere."""
        self.routes: dict[str, Any] = {}
        """Registry-served models by public name (`routing.Route`): canary arms and shadow."""
        self.public_names: dict[str, str] = {}
        """Runtime name → public model name, for versions loaded under their own names."""
        self.on_refresh: list[Any] = []
        """Called with a model name after its entry was rebuilt or dropped (the native path)."""
        self.trace_sampler: RequestSampler | None = None
        """Chooses the requests to trace on the httptools front end (the native front chooses
        in C++); None when tracing is off."""
        self._trace: RequestSpan | None = None  # the traced request being dispatched

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

    def route_changed(self, name: str) -> None:
        """The arms of registry route `name` (their versions or weights) changed."""
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
        if req.traced:
            self._handle_traced(req, conn)
            return
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

    def _handle_traced(self, req: Request, conn: HttpProtocol) -> None:
        """`handle` for a request chosen for tracing: the same dispatch under its server span,
        with the span's traceparent added to the response."""
        headers = req.headers
        method = req.method.decode("latin-1")
        path = req.path.decode("latin-1")
        span = RequestSpan(
            f"{method} {path}",
            headers.get(b"traceparent"),
            headers.get(b"tracestate"),
            {"http.request.method": method, "url.path": path},
        )
        token = span.activate()
        self._trace = span
        try:
            self.handle(_untraced(req), TracedConnection(conn, span))  # type: ignore[arg-type]
        finally:
            self._trace = None
            span.deactivate(token)

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
                api = self.repository_api
                if n == 3 and parts[2] == "index":
                    return self._verb(post, api.index, "POST"), ()
                if n == 5 and parts[2] == "models" and parts[4] in ("load", "unload"):
                    repo_fn: Any = api.load if parts[4] == "load" else api.unload
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
            if action == "feedback" and version is None:
                return self._verb(post, self._feedback, "POST"), (model,)
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
        mon = self.runtime.monitor(entry.runtime_name)
        tracker = self.runtime.feedback_tracker(entry.name)
        if mon is None and tracker is None:
            raise HttpError(
                404,
                f"model '{entry.name}' is not monitored (no monitor.reference nor "
                "monitor.feedback)",
            )
        report: dict[str, Any] = (
            self.metrics.monitor_report(entry.runtime_name, mon)
            if mon is not None
            else {"model": entry.name, "version": entry.version}
        )
        if tracker is not None:
            report["quality"] = self.metrics.quality(entry.name, tracker)
            report["feedback"] = self.metrics.feedback_counts(entry.name, tracker)
        return build_response(200, _encode(report), JSON, (), req.keep_alive)

    # -- label feedback --------------------------------------------------------------------
    def _feedback(self, req: Request, conn: HttpProtocol, model: str) -> bytes | list[Any]:
        """`POST /v2/models/{m}/feedback`: ground-truth labels joined with recent predictions
        (`aiarch.monitor.feedback`); answers the joined / unknown / late counts."""
        if model not in self.entries and model not in self.routes:
            raise HttpError(404, f"Request for unknown model: '{model}' is not found")
        tracker = self.runtime.feedback_tracker(model)
        if tracker is None:
            raise HttpError(
                404,
                f"model '{model}' takes no feedback (configure [models.{model}.monitor.feedback])",
            )
        require_json(req)
        try:
            labels = decode_labels(req.body)
        except InvalidArgumentError as e:
            raise HttpError(400, str(e)) from None
        result = tracker.feedback(labels)
        return build_response(200, _encode(result), JSON, (), req.keep_alive)

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
        require_json(req, binary_ok=True)
        headers = req.headers
        hlen = headers.get(b"inference-header-content-length")
        route = self.routes.get(model) if version is None else None
        job = InferJob(self, entry, req.keep_alive)
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
        require_json(req)
        route = self.routes.get(model)
        if route is not None:
            entry = route.pick(req.headers.get(b"x-route-key"), None)
        arrays = v2.decode_predict(req.body, entry.inputs)
        x = arrays[0] if len(arrays) == 1 else arrays
        job = InferJob(self, entry, req.keep_alive)
        response = self._submit(job, conn, entry.runtime_name, x, self._timeout(req, None), 0)
        if route is not None and route.shadow is not None:
            route.mirror(self._infer, x)
        return response

    def _submit(
        self,
        job: InferJob,
        conn: HttpProtocol,
        name: str,
        x: Any,
        timeout: float | None,
        priority: int,
    ) -> bytes | list[Any] | None:
        if job.entry.check is not None:
            job.inputs = x
        job.trace = self._trace
        return job.start(self._infer(name, x, timeout_s=timeout, priority=priority), conn)


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
