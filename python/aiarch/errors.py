"""The aiarch exception hierarchy.

Every error raised by the runtime is an :class:`AiarchError`. Each subclass
corresponds to exactly one status code of the native core; the binding maps
codes onto these classes through :data:`ERRORS_BY_CODE`.
"""

from __future__ import annotations

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
    "UnavailableError",
]


class AiarchError(Exception):
    """Base class of every aiarch error."""

    code: int = 8
    #: HTTP status a server answers with for this error.
    http_status: int = 500


class InvalidArgumentError(AiarchError, ValueError):
    """The request or configuration is malformed (dtype, shape, option)."""

    code = 1
    http_status = 400


class NotFoundError(AiarchError, LookupError):
    """An unknown model, version or tensor was named."""

    code = 2
    http_status = 404


class AlreadyExistsError(AiarchError):
    """A model of that name is already loaded."""

    code = 3
    http_status = 400


class ResourceExhaustedError(AiarchError):
    """The model's admission queue is full; retry after :attr:`retry_after_s`."""

    code = 4
    http_status = 429

    def __init__(self, message: str = "", retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        #: Seconds after which a retry is likely to be admitted, from the
        #: measured service rate.
        self.retry_after_s = retry_after_s


class DeadlineExceededError(AiarchError, TimeoutError):
    """The request's deadline passed before it could run; it was not executed."""

    code = 5
    http_status = 504


class RequestCancelledError(AiarchError):
    """The request was cancelled by its caller before it ran."""

    code = 6
    http_status = 499


class UnavailableError(AiarchError):
    """The model or runtime is shutting down or not ready."""

    code = 7
    http_status = 503


class InternalError(AiarchError):
    """An unexpected failure inside aiarch (a bug: please report it)."""

    code = 8
    http_status = 500


class ExecutionError(AiarchError):
    """The model raised or returned malformed outputs.

    The model's own exception, when there was one, is the ``__cause__``.
    """

    code = 9
    http_status = 500


ERRORS_BY_CODE: dict[int, type[AiarchError]] = {
    cls.code: cls
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
