"""The ONE place where exceptions become HTTP status codes and `{"error": ...}` bodies.

Runtime errors are matched by class name along the exception's MRO, so an error class from the
`aiarch` hierarchy (or a subclass a backend defines) maps the same without this module importing
the native core. Codes follow the KServe v2 / Triton mapping (docs/v2-protocol.md §3), except that
a full queue is 429 + Retry-After (overload is refused at the door) and an expired deadline is 504.
"""

from __future__ import annotations

import logging
import math

import msgspec

__all__ = ["HttpError", "error_body", "status_for_exception"]

log = logging.getLogger("aiarch.serving")


class HttpError(Exception):
    """An error the server raises itself (bad request, unknown route, ...): status + message."""

    def __init__(self, status: int, message: str, headers: tuple[tuple[str, str], ...] = ()):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


_STATUS_BY_CLASS_NAME: dict[str, int] = {
    "InvalidArgumentError": 400,
    "AlreadyExistsError": 400,
    "RequestCancelledError": 400,
    "NotFoundError": 404,
    "ResourceExhaustedError": 429,
    "UnimplementedError": 501,
    "UnavailableError": 503,
    "DeadlineExceededError": 504,
    "InternalError": 500,
    "ExecutionError": 500,
    "AiarchError": 500,
}


def status_for_exception(exc: BaseException) -> tuple[int, str, tuple[tuple[str, str], ...]]:
    """Map an exception to (status, message, extra headers). Called once per failed request."""
    if isinstance(exc, HttpError):
        return exc.status, exc.message, exc.headers
    for cls in type(exc).__mro__:
        status = _STATUS_BY_CLASS_NAME.get(cls.__name__)
        if status is None:
            continue
        message = str(exc) or cls.__name__
        if status == 429:
            retry = getattr(exc, "retry_after_s", None)
            seconds = max(1, math.ceil(retry)) if isinstance(retry, (int, float)) else 1
            return status, message, (("retry-after", str(seconds)),)
        if status == 500:
            log.warning("request failed: %s: %s", type(exc).__name__, message)
        return status, message, ()
    log.exception("unexpected error while serving a request", exc_info=exc)
    return 500, f"internal error: {type(exc).__name__}", ()


_encode = msgspec.json.encode


def error_body(message: str) -> bytes:
    """`{"error": message}` as JSON bytes."""
    return _encode({"error": message})
