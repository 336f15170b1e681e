"""One in-flight HTTP inference: `InferJob` steps the runtime's `infer` coroutine by hand and
encodes its result into the response (v2 JSON or binary, `/predict`, optionally compressed)."""

from __future__ import annotations

import asyncio
import gzip
import time
import types
import zlib
from typing import TYPE_CHECKING, Any

from . import v2
from .errors import HttpError
from .http import JSON, OCTETS, HttpProtocol, build_response

if TYPE_CHECKING:
    from aiarch.tracing import RequestSpan

    from .app import App
    from .entry import ModelEntry

__all__ = ["InferJob"]

_isfuture = asyncio.isfuture


class InferJob:
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
        "trace",
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
        self.trace: RequestSpan | None = None  # the request's span when it is traced

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
        if self.trace is not None:
            return self._encode_traced(value, exc)
        keep = self.keep_alive and not self.app.draining
        if exc is None:
            try:
                return self.encode(value, keep)
            except Exception as e:
                exc = e
        return self.app.error(exc, keep)

    def _encode_traced(self, value: Any, exc: BaseException | None) -> bytes | list[Any]:
        """`_encode_or_error` under the request's span (log lines carry its trace id), with
        the encode span."""
        span = self.trace
        assert span is not None
        token = span.activate()
        try:
            keep = self.keep_alive and not self.app.draining
            if exc is None:
                start = time.time_ns()
                try:
                    return self.encode(value, keep)
                except Exception as e:
                    exc = e
                finally:
                    span.child("encode", start, time.time_ns())
            return self.app.error(exc, keep)
        finally:
            span.deactivate(token)

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
        if self.request_id is not None:
            tracker = self.app.runtime.feedback_tracker(entry.name)
            if tracker is not None:  # joined later with the label sent for this id
                tracker.record(self.request_id, entry.version, outputs[0])
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
