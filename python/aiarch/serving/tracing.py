"""Tracing on the server's Python path: what a request chosen for tracing goes through.

The front ends choose (the native front in C++, every n-th request plus those whose
traceparent asks for sampling; the httptools front and gRPC with `RequestSampler`). A chosen
request the native front answers itself stays native: C++ writes its traceparent and records
its times, and `NativeFront` hands a drain's records to the span processor, whose export
thread makes their spans (`aiarch.tracing.emit_native`).
For every other chosen request, `App` dispatches it as any other, under its server span
(`RequestSpan`), through a `TracedConnection` that ends the span when the response leaves and
adds the span's `traceparent` to it. See :mod:`aiarch.tracing` for the spans and the exporters.
"""

from __future__ import annotations

import logging
from typing import Any

from aiarch.tracing import RequestSampler, RequestSpan

from .http import Request

__all__ = [
    "RequestSampler",
    "RequestSpan",
    "TracedConnection",
    "TracedPending",
    "untraced",
    "with_header",
]

log = logging.getLogger("aiarch.serving")


def untraced(req: Request) -> Request:
    """`req`, marked as handled by the traced dispatch (so it is not traced twice)."""
    req.traced = False
    return req


def with_header(data: bytes | list[Any], name: str, value: str) -> tuple[bytes | list[Any], int]:
    """A serialized response with one more header after its status line, and its status."""
    line = f"{name}: {value}\r\n".encode("latin-1")
    if isinstance(data, list):
        first = data[0] if isinstance(data[0], bytes) else bytes(data[0])
        patched, status = with_header(first, name, value)
        return [patched, *data[1:]], status
    eol = data.find(b"\r\n")
    if eol < 0:
        return data, 0
    parts = data[:eol].split(b" ", 2)
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    return data[: eol + 2] + line + data[eol + 2 :], status


def _finish(span: RequestSpan, data: bytes | list[Any]) -> bytes | list[Any]:
    """End the request's span; the response with its traceparent. Logs the request at debug
    level with the span current, so the line carries the trace id."""
    out, status = with_header(data, "traceparent", span.traceparent())
    token = span.activate()
    try:
        log.debug("traced request answered %d", status)
    finally:
        span.deactivate(token)
    span.end(status)
    return out


class TracedPending:
    """A response slot of a traced request (see `http.Pending`): the span ends on resolve."""

    __slots__ = ("_inner", "_span")

    def __init__(self, inner: Any, span: RequestSpan) -> None:
        self._inner = inner
        self._span = span

    @property
    def conn(self) -> Any:
        return self._inner.conn

    @property
    def future(self) -> Any:
        return self._inner.future

    @future.setter
    def future(self, value: Any) -> None:
        self._inner.future = value

    def resolve(self, data: bytes | list[Any], keep_alive: bool) -> None:
        self._inner.resolve(_finish(self._span, data), keep_alive)


class TracedConnection:
    """The connection as a traced request's handler sees it (`respond` / `defer`)."""

    __slots__ = ("_conn", "_span")

    def __init__(self, conn: Any, span: RequestSpan) -> None:
        self._conn = conn
        self._span = span

    def respond(self, data: bytes | list[Any], keep_alive: bool) -> None:
        self._conn.respond(_finish(self._span, data), keep_alive)

    def defer(self) -> TracedPending:
        return TracedPending(self._conn.defer(), self._span)
