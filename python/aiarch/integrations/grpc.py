"""gRPC (grpcio) servicers, sync and asyncio: a unary call becomes one `rt.infer`.

::

    predict = aio_unary(service, "fraud", decode=lambda req: req_to_array(req),
                        encode=lambda y: make_reply(y))

    class Fraud(fraud_pb2_grpc.FraudServicer):
        async def Predict(self, request, context):
            return await predict(request, context)

Works the same with generated protobuf servicers and with ``grpc.method_handlers_generic_handler``
over any serializer (the example uses msgspec, no code generation).

- Deadline: the call's remaining time (``context.time_remaining()``) becomes the request's
  ``timeout_s``; a request whose deadline passes while queued is never executed and the call
  ends with DEADLINE_EXCEEDED.
- Cancellation: on ``grpc.aio`` a cancelled call cancels its handler task, which removes the
  queued request. The sync server runs handlers on a thread pool, where a blocking wait
  cannot be interrupted; `sync_unary` therefore submits on one event loop thread per process
  and cancels the request from the call's termination callback (``context.add_callback``).
- Errors: a decode failure is INVALID_ARGUMENT; an `AiarchError` maps onto the matching status
  (bad input INVALID_ARGUMENT, unknown model NOT_FOUND, full queue RESOURCE_EXHAUSTED, model
  failure INTERNAL, ...) with the aiarch error text as details.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from aiarch.errors import (
    AiarchError,
    DeadlineExceededError,
    InvalidArgumentError,
    RequestCancelledError,
)
from aiarch.serving.grpc_status import code_for_error

from .service import ServiceRuntime

__all__ = ["aio_unary", "status_for", "sync_unary"]


def status_for(exc: AiarchError) -> grpc.StatusCode:
    """The gRPC status of an aiarch error: the server's table (`aiarch.serving.grpc_status`),
    through the native status code the error carries."""
    return code_for_error(exc)


def _timeout(context: Any) -> float | None:
    remaining = context.time_remaining()
    if remaining is None:
        return None
    if remaining <= 0:
        raise DeadlineExceededError("the call's deadline passed before its inference was queued")
    return remaining


def _decode(decode: Callable[[Any], Any], request: Any) -> Any:
    try:
        return decode(request)
    except AiarchError:
        raise
    except Exception as e:
        raise InvalidArgumentError(f"cannot decode the request: {e}") from e


def aio_unary(
    service: ServiceRuntime,
    model: str,
    *,
    decode: Callable[[Any], Any],
    encode: Callable[[Any], Any],
) -> Callable[[Any, Any], Awaitable[Any]]:
    """A ``grpc.aio`` unary handler ``async (request, context) -> reply``: ``decode(request)``
    gives the model's inputs, ``encode(outputs)`` the reply. Once per call, on the loop."""

    async def handler(request: Any, context: Any) -> Any:
        try:
            x = _decode(decode, request)
            y = await service.infer(model, x, timeout_s=_timeout(context))
        except AiarchError as e:
            await context.abort(status_for(e), str(e) or type(e).__name__)
        return encode(y)

    return handler


class _LoopThread:
    """One event loop on a daemon thread per process, on which sync handlers submit."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        self.thread = threading.Thread(
            target=self._run, args=(ready,), name="aiarch-grpc-loop", daemon=True
        )
        self.thread.start()
        ready.wait()

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(ready.set)
        self.loop.run_forever()


_loop_lock = threading.Lock()
_loop_thread: _LoopThread | None = None


def _submit_loop() -> asyncio.AbstractEventLoop:
    global _loop_thread
    lt = _loop_thread
    if lt is None or lt.pid != os.getpid():
        with _loop_lock:
            lt = _loop_thread
            if lt is None or lt.pid != os.getpid():
                lt = _loop_thread = _LoopThread()
    return lt.loop


def sync_unary(
    service: ServiceRuntime,
    model: str,
    *,
    decode: Callable[[Any], Any],
    encode: Callable[[Any], Any],
) -> Callable[[Any, Any], Any]:
    """A sync-server unary handler ``(request, context) -> reply``, called once per call on
    the server's thread pool; requests of all its threads share batches."""

    def handler(request: Any, context: Any) -> Any:
        try:
            x = _decode(decode, request)
            timeout_s = _timeout(context)
            service.runtime  # noqa: B018 - fail here when not started, not on the loop
            future: concurrent.futures.Future[Any] = asyncio.run_coroutine_threadsafe(
                service.infer(model, x, timeout_s=timeout_s), _submit_loop()
            )
            # Runs when the call ends for any reason; after a normal reply it finds the
            # future done and does nothing.
            if not context.add_callback(future.cancel):
                future.cancel()  # the call already ended
            try:
                y = future.result()
            except concurrent.futures.CancelledError:
                raise RequestCancelledError(
                    "the call was cancelled; its inference was removed from the queue"
                ) from None
        except AiarchError as e:
            context.abort(status_for(e), str(e) or type(e).__name__)
        return encode(y)

    return handler
