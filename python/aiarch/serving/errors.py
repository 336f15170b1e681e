"""The ONE place where exceptions become HTTP status codes and `{"error": ...}` bodies.

An :class:`aiarch.AiarchError` carries its own HTTP status (``http_status``: the table is
:mod:`aiarch.errors`), so this module reads it rather than keeping a second table: a subclass
defined anywhere (``ConflictError`` 409, ``GateFailedError`` 412) is answered with the status
it declares. The server's own errors are :class:`HttpError` (status + message); anything else
is a bug and answers 500 with its class name only.
"""

from __future__ import annotations

import asyncio
import logging
import math

import msgspec

from aiarch.errors import AiarchError, RequestCancelledError

__all__ = ["HttpError", "error_body", "status_for_exception"]

log = logging.getLogger("aiarch.serving")


class HttpError(Exception):
    """An error the server raises itself (bad request, unknown route, ...): status + message."""

    def __init__(self, status: int, message: str, headers: tuple[tuple[str, str], ...] = ()):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


def status_for_exception(exc: BaseException) -> tuple[int, str, tuple[tuple[str, str], ...]]:
    """Map an exception to (status, message, extra headers). Called once per failed request."""
    if isinstance(exc, HttpError):
        return exc.status, exc.message, exc.headers
    if isinstance(exc, asyncio.CancelledError):
        # The request's task was cancelled because its client went away: the answer is
        # never read, and there is nothing to log.
        return RequestCancelledError.http_status, "request cancelled", ()
    if not isinstance(exc, AiarchError):
        log.exception("unexpected error while serving a request", exc_info=exc)
        return 500, f"internal error: {type(exc).__name__}", ()
    status = exc.http_status
    message = str(exc) or type(exc).__name__
    if status == 429:
        retry = getattr(exc, "retry_after_s", None)
        seconds = 1
        if isinstance(retry, (int, float)) and math.isfinite(retry):
            seconds = max(1, math.ceil(retry))
        return status, message, (("retry-after", str(seconds)),)
    if status >= 500:
        log.warning("request failed: %s: %s", type(exc).__name__, message)
    return status, message, ()


_encode = msgspec.json.encode


def error_body(message: str) -> bytes:
    """`{"error": message}` as JSON bytes."""
    return _encode({"error": message})
