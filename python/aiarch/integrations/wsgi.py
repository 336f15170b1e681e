"""Flask / Django and other thread-per-request WSGI servers: one Runtime per process.

Request threads share the process's Runtime through ``service.infer_sync`` (the GIL is
released while a request waits for its batch), so concurrent requests of one worker are
batched together.

Pre-forking servers (gunicorn): the Runtime's batcher threads do not survive ``fork()``, so it
is created in each worker after the fork — never at import time in the parent (which with
``preload_app`` is where the app module is imported). `install` does it lazily on each
worker's first request (``before_request``). To load models before the first request
instead, start it from gunicorn's ``post_fork`` hook, and drain it at exit from
``worker_exit``::

    # gunicorn.conf.py
    def post_fork(server, worker):
        from myapp import service
        service.start()

    def worker_exit(server, worker):
        from myapp import service
        service.close(drain=True)

Django: call ``service.ensure_started()`` at the top of a view (or in a middleware) and
``service.infer_sync(...)`` in it; serve `metrics_wsgi_app` or `metrics_response` at
``/metrics``; map `aiarch.AiarchError` with ``status_for_exception`` like `error_body` does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import msgspec

from aiarch.errors import AiarchError
from aiarch.serving.errors import status_for_exception

from .service import ServiceRuntime

__all__ = ["error_body", "install", "metrics_wsgi_app"]

_encode_json = msgspec.json.encode


def error_body(exc: BaseException) -> tuple[bytes, int, list[tuple[str, str]]]:
    """(JSON body ``{"error": text}``, HTTP status, headers) for an exception raised while
    serving: an `AiarchError` keeps its own status (400 bad input, 429 + Retry-After, 500
    model failure, 503, 504)."""
    status, message, headers = status_for_exception(exc)
    return (
        _encode_json({"error": message}),
        status,
        [("Content-Type", "application/json"), *headers],
    )


def metrics_wsgi_app(
    service: ServiceRuntime,
) -> Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]:
    """A WSGI app answering with the service's Prometheus metrics (starts the service in
    this process if needed, like a request would)."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        try:
            service.ensure_started()
            body, content_type = service.metrics()
        except AiarchError as e:
            body, status, headers = error_body(e)
            start_response(f"{status} Error", headers)
            return [body]
        start_response("200 OK", [("Content-Type", content_type)])
        return [body]

    return app


def install(
    app: Any,
    service: ServiceRuntime,
    *,
    metrics_path: str | None = "/metrics",
    health_path: str | None = "/healthz",
    start: str = "lazy",
) -> None:
    """Wire ``service`` into a Flask ``app``: `AiarchError` → its status with
    ``{"error": text}``, GET ``metrics_path`` and ``health_path`` (None leaves one out).

    ``start``: "lazy" starts the service in each process on its first request (safe under
    pre-fork); "manual" leaves it to the host (``service.start()`` in a ``post_fork`` hook, or
    before ``app.run()``) — a request before then fails with 503 naming what is missing."""
    from flask import Response

    if start not in ("lazy", "manual"):
        raise ValueError(f"start must be 'lazy' or 'manual', got {start!r}")

    def on_error(exc: AiarchError) -> Any:
        body, status, headers = error_body(exc)
        return Response(body, status=status, headers=headers)

    app.register_error_handler(AiarchError, on_error)
    if start == "lazy":

        def start_in_this_process() -> None:
            # A before_request hook that returns a value would replace the response.
            service.ensure_started()

        app.before_request(start_in_this_process)

    if metrics_path is not None:

        def metrics() -> Any:
            body, content_type = service.metrics()
            return Response(body, content_type=content_type)

        app.add_url_rule(metrics_path, "aiarch_metrics", metrics, methods=["GET"])
    if health_path is not None:

        def health() -> Any:
            ok, body = service.health()
            return Response(
                _encode_json(body), status=200 if ok else 503, content_type="application/json"
            )

        app.add_url_rule(health_path, "aiarch_health", health, methods=["GET"])
