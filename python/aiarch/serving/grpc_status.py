"""The ONE table from errors to gRPC status codes, shared by the KServe v2 gRPC service
(`grpc_service`) and the servicer helpers of `aiarch.integrations.grpc`. It needs grpcio only
(no generated messages).

An `AiarchError` maps through its native status code (`aiarch.errors`) onto the gRPC code of
the same name (EXECUTION_FAILED has none: INTERNAL); the server's own `HttpError`s map by HTTP
status as gRPC's HTTP mapping does.
"""

from __future__ import annotations

import grpc

from aiarch.errors import AiarchError, StatusCode

__all__ = ["CODE_BY_HTTP", "CODE_BY_STATUS", "code_for_error", "code_for_http_status"]

CODE_BY_STATUS: dict[int, grpc.StatusCode] = {
    int(code): grpc.StatusCode.__members__.get(code.name, grpc.StatusCode.INTERNAL)
    for code in StatusCode
    if code is not StatusCode.OK
}
"""aiarch status code → the gRPC code of the same name (EXECUTION_FAILED has none: INTERNAL)."""

CODE_BY_HTTP: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.ABORTED,
    412: grpc.StatusCode.FAILED_PRECONDITION,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    499: grpc.StatusCode.CANCELLED,
    501: grpc.StatusCode.UNIMPLEMENTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}
"""The server's own HTTP errors (`HttpError`: validation, unknown routes) as gRPC codes."""


def code_for_error(exc: AiarchError) -> grpc.StatusCode:
    """The gRPC code of an aiarch error (a subclass maps through the code it carries)."""
    return CODE_BY_STATUS.get(int(exc.code), grpc.StatusCode.INTERNAL)


def code_for_http_status(status: int) -> grpc.StatusCode:
    """The gRPC code of an HTTP error status (other 5xx: INTERNAL; other 4xx: INVALID_ARGUMENT)."""
    return CODE_BY_HTTP.get(status) or (
        grpc.StatusCode.INTERNAL if status >= 500 else grpc.StatusCode.INVALID_ARGUMENT
    )
