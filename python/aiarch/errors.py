"""The aiarch exception hierarchy: the one table of status code, exception class and HTTP status.

Every error raised by aiarch is an :class:`AiarchError`, and every class carries two numbers:

- ``code``: the native core's status code (``csrc/include/aiarch/status.h``) the class is
  raised for. The binding raises ``ERRORS_BY_CODE[code]`` for a failed status, so each code
  has exactly one class here; classes defined elsewhere (the registry's, training's) inherit
  the code of the class they refine.
- ``http_status``: what the server answers when this error fails a request. The server reads
  it from the exception itself, so a subclass that means something else (``ConflictError``
  409, ``GateFailedError`` 412) says so in one line where it is defined.

=====================  ==========================  ====
code                   class                       HTTP
=====================  ==========================  ====
1 INVALID_ARGUMENT     InvalidArgumentError        400
2 NOT_FOUND            NotFoundError               404
3 ALREADY_EXISTS       AlreadyExistsError          400
4 RESOURCE_EXHAUSTED   ResourceExhaustedError      429 (+ Retry-After)
5 DEADLINE_EXCEEDED    DeadlineExceededError       504
6 CANCELLED            RequestCancelledError       499
7 UNAVAILABLE          UnavailableError            503
8 INTERNAL             InternalError               500
9 EXECUTION_FAILED     ExecutionError              500
=====================  ==========================  ====

HTTP statuses follow the KServe v2 / Triton mapping, except that a full queue is 429 (overload
is refused at the door, with Retry-After), an expired deadline is 504, and a request cancelled
by its own client is 499 ("client closed request", as nginx logs it: the client has gone and
the status is only recorded, never a claim that the request was malformed).
"""

from __future__ import annotations

import enum
from typing import ClassVar

__all__ = [
    "ERRORS_BY_CODE",
    "AiarchError",
    "AlreadyExistsError",
    "DeadlineExceededError",
    "ExecutionError",
    "InternalError",
    "InvalidArgumentError",
    "NotFoundError",
    "RequestCancelledError",
    "ResourceExhaustedError",
    "StatusCode",
    "UnavailableError",
]


class StatusCode(enum.IntEnum):
    """The native core's status codes (stable values, ``aiarch::StatusCode``)."""

    OK = 0
    INVALID_ARGUMENT = 1
    NOT_FOUND = 2
    ALREADY_EXISTS = 3
    RESOURCE_EXHAUSTED = 4
    DEADLINE_EXCEEDED = 5
    CANCELLED = 6
    UNAVAILABLE = 7
    INTERNAL = 8
    EXECUTION_FAILED = 9


class AiarchError(Exception):
    """Base class of every aiarch error."""

    #: The native status code this class is raised for.
    code: ClassVar[int] = StatusCode.INTERNAL
    #: HTTP status a server answers with for this error.
    http_status: ClassVar[int] = 500


class InvalidArgumentError(AiarchError, ValueError):
    """The request or configuration is malformed (dtype, shape, option)."""

    code = StatusCode.INVALID_ARGUMENT
    http_status = 400


class NotFoundError(AiarchError, LookupError):
    """An unknown model, version or tensor was named."""

    code = StatusCode.NOT_FOUND
    http_status = 404


class AlreadyExistsError(AiarchError):
    """A model of that name is already loaded."""

    code = StatusCode.ALREADY_EXISTS
    http_status = 400


class ResourceExhaustedError(AiarchError):
    """The model's admission queue is full; retry after :attr:`retry_after_s`."""

    code = StatusCode.RESOURCE_EXHAUSTED
    http_status = 429

    def __init__(self, message: str = "", retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        #: Seconds after which a retry is likely to be admitted, from the
        #: measured service rate.
        self.retry_after_s = retry_after_s


class DeadlineExceededError(AiarchError, TimeoutError):
    """The request's deadline passed before it could run; it was not executed."""

    code = StatusCode.DEADLINE_EXCEEDED
    http_status = 504


class RequestCancelledError(AiarchError):
    """The request was cancelled by its caller before it ran."""

    code = StatusCode.CANCELLED
    http_status = 499


class UnavailableError(AiarchError):
    """The model or runtime is shutting down or not ready."""

    code = StatusCode.UNAVAILABLE
    http_status = 503


class InternalError(AiarchError):
    """An unexpected failure inside aiarch (a bug: please report it)."""

    code = StatusCode.INTERNAL
    http_status = 500


class ExecutionError(AiarchError):
    """The model raised or returned malformed outputs.

    The model's own exception, when there was one, is the ``__cause__``.
    """

    code = StatusCode.EXECUTION_FAILED
    http_status = 500


ERRORS_BY_CODE: dict[int, type[AiarchError]] = {
    int(cls.code): cls
    for cls in (
        InvalidArgumentError,
        NotFoundError,
        AlreadyExistsError,
        ResourceExhaustedError,
        DeadlineExceededError,
        RequestCancelledError,
        UnavailableError,
        InternalError,
        ExecutionError,
    )
}
"""The class the binding raises for each failed status code (every code but OK)."""
