"""FastAPI / Starlette: a lifespan that owns the Runtime, a dependency, /metrics, health, errors.

::

    service = ServiceRuntime(setup=load_models)
    app = FastAPI(lifespan=asgi.lifespan(service))
    asgi.install(app, service)          # AiarchError -> status + {"error": text}; /metrics; /healthz

    @app.post("/predict")
    async def predict(body: Body, request: Request, svc=Depends(asgi.dependency(service))):
        y = await asgi.cancel_on_disconnect(request, svc.infer("fraud", x))

- The lifespan starts the service in a worker thread (model loading must not block the event
  loop) and, at shutdown, closes it with ``drain=True``. uvicorn runs the shutdown half after
  its in-flight requests have been answered, so nothing queued is dropped.
- Starlette does not cancel a handler whose client went away. `cancel_on_disconnect` does:
  it watches the connection while the inference is queued and cancels it (the Runtime then
  removes the request from its queue) when the client disconnects.
- Only Starlette is imported (FastAPI is Starlette underneath); both are optional extras.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from aiarch.errors import AiarchError, RequestCancelledError
from aiarch.serving.errors import status_for_exception

from .service import ServiceRuntime

__all__ = [
    "ClientDisconnectedError",
    "MetricsApp",
    "cancel_on_disconnect",
    "dependency",
    "error_response",
    "health_endpoint",
    "install",
    "lifespan",
]

T = TypeVar("T")

CLIENT_CLOSED_STATUS = 499
"""Status logged for a request whose client disconnected (nothing is sent to anyone)."""


class ClientDisconnectedError(RequestCancelledError):
    """The client went away while its inference was queued; the inference was cancelled."""

    http_status = CLIENT_CLOSED_STATUS


def lifespan(
    service: ServiceRuntime,
    inner: Callable[[Any], contextlib.AbstractAsyncContextManager[Any]] | None = None,
) -> Callable[[Any], contextlib.AbstractAsyncContextManager[Any]]:
    """A lifespan for ``FastAPI(lifespan=...)`` / ``Starlette(lifespan=...)``: starts
    ``service`` before the app serves, wraps the app's own ``inner`` lifespan if given, and
    drains and closes the service at shutdown."""

    @contextlib.asynccontextmanager
    async def run(app: Any) -> AsyncIterator[Any]:
        await asyncio.get_running_loop().run_in_executor(None, service.start)
        try:
            if inner is None:
                yield None
            else:
                async with inner(app) as state:
                    yield state
        finally:
            service.draining = True
            # Requests still queued (if the server stopped waiting for them) run to completion
            # before the batchers stop.
            await asyncio.get_running_loop().run_in_executor(None, service.close)

    return run


def dependency(service: ServiceRuntime) -> Callable[[], Awaitable[ServiceRuntime]]:
    """A FastAPI dependency handing ``service`` to handlers (``Depends(dependency(service))``).
    Fails the request with 503 naming the missing lifespan when the service is not started."""

    # A coroutine: FastAPI runs a plain-function dependency on its thread pool, a thread hop
    # per request that costs more than the inference of a small model.
    async def get_service() -> ServiceRuntime:
        service.runtime  # noqa: B018 - raises UnavailableError when not started
        return service

    return get_service


async def cancel_on_disconnect(request: Request, inference: Awaitable[T]) -> T:
    """Await ``inference``; if the client disconnects first, cancel it (the queued request
    is removed from the batcher) and raise `ClientDisconnectedError`.

    Call it after the request body was read (a FastAPI body parameter reads it first): the
    only message the connection can then deliver is ``http.disconnect``. Costs one watcher
    task per call; the inference itself runs in the handler's own task."""
    handler = asyncio.current_task()
    if handler is None:
        return await inference
    gone = finished = False

    def on_disconnect(watcher: asyncio.Task[None]) -> None:
        nonlocal gone
        # `finished`: the callback may already be scheduled when the inference completes.
        if not finished and not watcher.cancelled() and watcher.exception() is None:
            gone = True
            handler.cancel()  # interrupts the await below, which cancels the queued request

    watcher = asyncio.ensure_future(_disconnected(request.receive))
    watcher.add_done_callback(on_disconnect)
    try:
        return await inference
    except asyncio.CancelledError:
        if not gone:
            raise
        if hasattr(handler, "uncancel"):
            handler.uncancel()  # this cancellation was ours and ends here
        raise ClientDisconnectedError(
            "the client disconnected; its inference was cancelled"
        ) from None
    finally:
        finished = True
        watcher.cancel()


async def _disconnected(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


def error_response(request: Request, exc: Exception) -> Response:
    """The response for an `AiarchError`: its HTTP status (400 bad input, 404 unknown model,
    429 with Retry-After, 500 model failure, 503 not started/draining, 504 deadline) and
    ``{"error": "<the aiarch error text>"}``. Register with ``app.add_exception_handler``."""
    status, message, headers = status_for_exception(exc)
    if isinstance(exc, ClientDisconnectedError):
        status = CLIENT_CLOSED_STATUS
    return JSONResponse({"error": message}, status_code=status, headers=dict(headers))


class MetricsApp:
    """An ASGI app answering every GET with the service's Prometheus metrics — the same
    families as ``aiarch serve``. Mount it (``app.mount("/metrics", MetricsApp(service))``)
    or route it; as a class instance, Starlette calls it as a raw ASGI app."""

    def __init__(self, service: ServiceRuntime):
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        try:
            body, content_type = self.service.metrics()
            response: Response = Response(body, media_type=content_type)
        except AiarchError as e:
            response = JSONResponse({"error": str(e)}, status_code=503)
        await response(scope, receive, send)


def health_endpoint(service: ServiceRuntime) -> Callable[[Request], Awaitable[Response]]:
    """A Starlette endpoint: 200 with the models' versions when ready, else 503."""

    async def health(request: Request) -> Response:
        ok, body = service.health()
        return JSONResponse(body, status_code=200 if ok else 503)

    return health


def install(
    app: Any,
    service: ServiceRuntime,
    *,
    metrics_path: str | None = "/metrics",
    health_path: str | None = "/healthz",
) -> None:
    """Register the `AiarchError` handler and the metrics and health routes on a FastAPI or
    Starlette ``app`` (pass None to leave a route out)."""
    app.add_exception_handler(AiarchError, error_response)
    if metrics_path is not None:
        app.add_route(metrics_path, MetricsApp(service), methods=["GET"], include_in_schema=False)
    if health_path is not None:
        app.add_route(
            health_path, health_endpoint(service), methods=["GET"], include_in_schema=False
        )
