"""HTTP/1.1 front end: an asyncio.Protocol driving httptools' C parser.

One `HttpProtocol` per connection. Keep-alive and pipelining are supported; responses leave in
request order through a per-connection queue of `Pending` slots, so a slow request never lets a
later one overtake it and one bad request never touches another connection. Parsing, routing and
the handler all run in the loop thread: Python runs once per request, with no thread hop.

Limits (`HttpLimits`): header block size and count (431), body size before and after
decompression (413), requests in flight per connection (reading pauses: back-pressure), time to
receive the headers and the body (408, then close: a slow client cannot hold a connection), open
connections per worker and per client address (503 at once). Malformed HTTP gets 400 and the
connection is closed after the responses already owed are sent. `HttpCounters` counts what the
limits refused, for /metrics.
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from collections import deque
from typing import TYPE_CHECKING, Any, Protocol

import httptools

from .config import HttpLimits
from .errors import HttpError, error_body

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = [
    "FlowControl",
    "Handler",
    "HttpCounters",
    "HttpProtocol",
    "Pending",
    "Refusal",
    "Request",
    "admit_connection",
    "build_response",
    "cancel_waiting",
    "decompress_body",
    "media_type",
    "release_connection",
    "require_json",
]

log = logging.getLogger("aiarch.serving")

_REASONS = {
    100: "Continue",
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    411: "Length Required",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    417: "Expectation Failed",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}
_STATUS_LINE = {code: f"HTTP/1.1 {code} {reason}\r\n".encode() for code, reason in _REASONS.items()}

JSON = b"application/json"
TEXT = b"text/plain; charset=utf-8"
OCTETS = b"application/octet-stream"

# Headers the server reads; every other header is counted and dropped.
_WANTED = frozenset(
    {
        b"content-length",
        b"content-type",
        b"content-encoding",
        b"accept-encoding",
        b"expect",
        b"authorization",
        b"origin",
        b"inference-header-content-length",
        b"x-request-timeout-ms",
        b"x-route-key",
        b"traceparent",
        b"tracestate",
    }
)
_SMALL_WRITE = 64 << 10  # join parts into one buffer below this size
_LINGER_S = 2.0  # how long a refused connection keeps draining input before it closes
_NO_DEADLINE = float("inf")


def build_response(
    status: int,
    body: bytes = b"",
    content_type: bytes = JSON,
    headers: Iterable[tuple[str, str]] = (),
    keep_alive: bool = True,
    extra: list[Any] | None = None,
) -> bytes | list[Any]:
    """Serialize a response. `extra` are buffers sent after `body` (binary tensors): the result is
    then a list of buffers for `transport.writelines`, else one bytes object."""
    length = len(body)
    if extra:
        for buf in extra:
            length += buf.nbytes if hasattr(buf, "nbytes") else len(buf)
    head = _STATUS_LINE.get(status) or f"HTTP/1.1 {status} Status\r\n".encode()
    lines = b"content-type: %s\r\ncontent-length: %d\r\n" % (content_type, length)
    for name, value in headers:
        lines += f"{name}: {value}\r\n".encode("latin-1")
    if not keep_alive:
        lines += b"connection: close\r\n"
    if not extra:
        return head + lines + b"\r\n" + body
    parts: list[Any] = [head + lines + b"\r\n" + body]
    for buf in extra:
        parts.append(memoryview(buf).cast("B") if not isinstance(buf, bytes) else buf)
    if length < _SMALL_WRITE:
        return b"".join(parts)
    return parts


def error_response(
    status: int, message: str, keep_alive: bool = True, headers: Iterable[tuple[str, str]] = ()
) -> bytes | list[Any]:
    """`{"error": message}` with `status`."""
    return build_response(status, error_body(message), JSON, headers, keep_alive)


class Request:
    """One parsed request. `headers` holds only the header names the server reads (lowercase
    bytes → bytes); `body` is the whole (decompressed) body; `traced`: chosen for tracing."""

    __slots__ = ("body", "headers", "keep_alive", "method", "path", "query", "traced")

    def __init__(
        self,
        method: bytes,
        path: bytes,
        query: bytes,
        headers: dict[bytes, bytes],
        body: bytes,
        keep_alive: bool,
        traced: bool = False,
    ):
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.body = body
        self.keep_alive = keep_alive
        self.traced = traced


class Pending:
    """A response slot reserved in request order; `resolve` fills it (once), possibly later.

    `future` is what the handler waits on; it is cancelled if the client disconnects first.
    """

    __slots__ = ("conn", "data", "future", "keep_alive")

    def __init__(self, conn: HttpProtocol | None):
        self.conn = conn
        self.data: bytes | list[Any] | None = None
        self.keep_alive = True
        self.future: asyncio.Future[Any] | None = None

    def resolve(self, data: bytes | list[Any], keep_alive: bool) -> None:
        """Fill the slot and write every response now at the head of the queue. Called once, in
        the loop thread."""
        self.data = data
        self.keep_alive = keep_alive
        conn = self.conn
        if conn is not None:
            conn._flush()


class Handler(Protocol):
    """What the protocol dispatches to: `handle` is called once per request, in the loop, and
    must answer through `conn.respond(...)` or `conn.defer()`; it must not raise."""

    def handle(self, req: Request, conn: HttpProtocol) -> None: ...


class HttpCounters:
    """What the connection limits refused, since the worker started. Incremented in the loop
    thread, read at scrape time. Not thread-safe (plain ints: one writer, readers tolerate a
    stale value)."""

    __slots__ = ("body_timeouts", "header_timeouts", "refused_global", "refused_per_ip")

    def __init__(self) -> None:
        self.header_timeouts = 0
        """Requests whose headers did not arrive within `header_timeout_s`."""
        self.body_timeouts = 0
        """Requests whose body did not arrive within `body_timeout_s`."""
        self.refused_global = 0
        """Connections refused because `max_connections` were open."""
        self.refused_per_ip = 0
        """Connections refused because their address had `max_connections_per_ip` open."""


class ServerState(Protocol):
    @property
    def handler(self) -> Any: ...
    @property
    def limits(self) -> HttpLimits: ...
    @property
    def connections(self) -> set[HttpProtocol]: ...
    @property
    def connections_per_ip(self) -> dict[str, int]: ...
    @property
    def counters(self) -> HttpCounters: ...
    @property
    def draining(self) -> bool: ...


class Refusal(Exception):
    """A request the connection refuses with `status` and `{"error": message}`."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def decompress_body(body: bytes, encoding: bytes, limit: int) -> bytes:
    """A gzip/deflate (or identity) body, at most `limit` bytes once decompressed; raises
    `Refusal` (415 unknown encoding, 413 too large, 400 corrupt or truncated)."""
    enc = encoding.strip().lower()
    if enc == b"identity":
        return body
    if enc == b"gzip":
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    elif enc == b"deflate":
        d = zlib.decompressobj(zlib.MAX_WBITS)
    else:
        raise Refusal(415, f"unsupported Content-Encoding {enc.decode('latin-1')!r}")
    try:
        out = d.decompress(body, limit + 1)
    except zlib.error as e:
        raise Refusal(400, f"bad {enc.decode()} body: {e}") from None
    if len(out) > limit:
        raise Refusal(413, f"decompressed body larger than {limit} bytes")
    if not d.eof:
        raise Refusal(400, f"truncated {enc.decode()} body")
    return out


def cancel_waiting(pending: Iterable[Pending]) -> None:
    """The client is gone: detach its response slots and cancel what the handler still
    waits for."""
    for p in pending:
        p.conn = None
        fut = p.future
        if fut is not None and not fut.done():
            fut.cancel()


class FlowControl(asyncio.Protocol):
    """What the connections of both front ends share: read back-pressure and the way a
    connection closes after its last response. Runs in the loop thread.

    Reading pauses while the transport's write buffer is over its high-water mark or
    `max_pipelined` responses are owed, and resumes when neither holds. `_closing` is set
    once the connection answers nothing more; from then on reading is left alone."""

    __slots__ = ("_closing", "_limits", "_read_paused", "_write_paused", "transport")

    def __init__(self, limits: HttpLimits):
        self._limits = limits
        self._closing = False
        self._read_paused = False
        self._write_paused = False
        self.transport: asyncio.Transport | None = None

    def pause_writing(self) -> None:
        self._write_paused = True
        self._update_reading(self._owed())

    def resume_writing(self) -> None:
        self._write_paused = False
        self._update_reading(self._owed())

    def _owed(self) -> int:
        """Responses owed (requests received and not yet answered on the wire)."""
        raise NotImplementedError

    def _update_reading(self, owed: int) -> None:
        transport = self.transport
        if transport is None or self._closing:
            return
        pause = self._write_paused or owed >= self._limits.max_pipelined
        if pause != self._read_paused:
            self._read_paused = pause
            self._set_reading(not pause)

    def _set_reading(self, on: bool) -> None:
        """Takes input again, or stops taking it (back-pressure)."""
        transport = self.transport
        assert transport is not None
        if on:
            transport.resume_reading()
        else:
            transport.pause_reading()

    def _close_after_last_response(self, transport: asyncio.Transport, linger: bool) -> None:
        """Close once the response just written has left. With `linger` (the request was
        refused mid-body) the client may still be sending: closing now would make the kernel
        answer its data with RST and lose our response, so half-close, drop what arrives for
        a moment, then close."""
        if linger and transport.can_write_eof():
            transport.write_eof()
            if self._read_paused:
                self._read_paused = False
                transport.resume_reading()
            asyncio.get_running_loop().call_later(_LINGER_S, transport.close)
        else:
            transport.close()


class HttpProtocol(FlowControl):
    """One HTTP/1.1 connection. Not thread-safe: everything runs in the loop thread."""

    __slots__ = (
        "_body",
        "_body_size",
        "_deadline",
        "_discard_input",
        "_header_bytes",
        "_header_count",
        "_headers",
        "_in_body",
        "_in_request",
        "_linger",
        "_parser",
        "_peer",
        "_queue",
        "_state",
        "_url",
        "last_active",
    )

    def __init__(self, state: ServerState):
        super().__init__(state.limits)
        self._state = state
        self._parser = httptools.HttpRequestParser(self)
        self._queue: deque[Pending] = deque()
        self._discard_input = False
        self._linger = False
        self._in_request = False
        self._in_body = False
        self._url = b""
        self._headers: dict[bytes, bytes] = {}
        self._body: list[bytes] = []
        self._body_size = 0
        self._header_bytes = 0
        self._header_count = 0
        self.last_active = 0.0
        # When the request being received must be complete (loop time); inf when none is.
        self._deadline = _NO_DEADLINE
        self._peer: str | None = None

    # -- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.last_active = asyncio.get_running_loop().time()
        self._peer, refusal = admit_connection(self._state, self, transport)
        if refusal is not None:
            self._refuse(refusal)

    def _refuse(self, message: str) -> None:
        """Answer 503 before reading anything and close: the connection never counts."""
        self._closing = self._discard_input = True
        transport = self.transport
        if transport is not None:
            transport.write(error_response(503, message, keep_alive=False))  # type: ignore[arg-type]
            transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        release_connection(self._state, self, self._peer)
        self._peer = None
        queue, self._queue = self._queue, deque()
        cancel_waiting(queue)
        self.transport = None

    def data_received(self, data: bytes) -> None:
        if self._discard_input:
            return
        self.last_active = asyncio.get_running_loop().time()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as e:
            ctx = e.__context__
            if isinstance(ctx, Refusal):
                self._fail(ctx.status, ctx.message)
            else:
                log.exception("HTTP callback failed", exc_info=ctx or e)
                self._fail(500, "internal error")
        except httptools.HttpParserUpgrade:
            # Protocol upgrades (h2c, websocket) are not offered; answer what was parsed, then close.
            if self._in_request:
                self._fail(400, "protocol upgrade is not supported")
            else:
                self._close_when_flushed()
        except httptools.HttpParserError as e:
            self._fail(400, f"malformed HTTP request: {e}")

    def _owed(self) -> int:
        return len(self._queue)

    # -- httptools callbacks ---------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._in_request = True
        self._in_body = False
        self._deadline = self.last_active + self._limits.header_timeout_s
        self._url = b""
        self._headers = {}
        self._body = []
        self._body_size = 0
        self._header_bytes = 0
        self._header_count = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._header_bytes += len(url)
        if self._header_bytes > self._limits.max_header_bytes:
            raise Refusal(431, "request line too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        self._header_bytes += len(name) + len(value) + 4
        if (
            self._header_count > self._limits.max_headers
            or self._header_bytes > self._limits.max_header_bytes
        ):
            raise Refusal(431, "request header fields too large")
        name = name.lower()
        if name in _WANTED:
            self._headers[name] = value

    def on_headers_complete(self) -> None:
        self._in_body = True
        self._deadline = self.last_active + self._limits.body_timeout_s
        headers = self._headers
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self._limits.max_body_bytes:
            raise Refusal(413, f"request body larger than {self._limits.max_body_bytes} bytes")
        expect = headers.get(b"expect")
        if expect is not None:
            if expect.lower() != b"100-continue":
                raise Refusal(417, "unsupported Expect")
            if not self._queue and self.transport is not None:
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > self._limits.max_body_bytes:
            raise Refusal(413, f"request body larger than {self._limits.max_body_bytes} bytes")
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._in_request = False
        self._deadline = _NO_DEADLINE
        parts = self._body
        body = parts[0] if len(parts) == 1 else b"".join(parts)
        url = self._url
        q = url.find(b"?")
        if q >= 0:
            path, query = url[:q], url[q + 1 :]
        else:
            path, query = url, b""
        headers = self._headers
        encoding = headers.get(b"content-encoding")
        if encoding is not None and body:
            body = decompress_body(body, encoding, self._limits.max_body_bytes)
        req = Request(
            self._parser.get_method(),
            path,
            query,
            headers,
            body,
            self._parser.should_keep_alive() and not self._state.draining,
        )
        sampler = self._state.handler.trace_sampler
        if sampler is not None:
            req.traced = sampler.sample(headers.get(b"traceparent"))
        try:
            self._state.handler.handle(req, self)
        except Exception:
            log.exception("handler failed")
            self.respond(error_response(500, "internal error"), True)

    # -- responses -------------------------------------------------------------------------
    def respond(self, data: bytes | list[Any], keep_alive: bool) -> None:
        """Send a response now, or queue it behind responses still owed on this connection."""
        if self._queue:
            p = Pending(self)
            p.data = data
            p.keep_alive = keep_alive
            self._queue.append(p)
            self._flush()
        else:
            self._write(data, keep_alive)

    def defer(self) -> Pending:
        """Reserve the next response slot; the handler resolves it later."""
        p = Pending(self)
        self._queue.append(p)
        if len(self._queue) >= self._limits.max_pipelined:
            self._update_reading(len(self._queue))
        return p

    def _write(self, data: bytes | list[Any], keep_alive: bool) -> None:
        transport = self.transport
        if transport is None or self._closing:
            return
        if data.__class__ is bytes:
            if data:
                transport.write(data)
        else:
            transport.writelines(data)  # type: ignore[arg-type]
        if not keep_alive:
            self._closing = self._discard_input = True
            self._close_after_last_response(transport, self._linger)

    def _flush(self) -> None:
        queue = self._queue
        while queue and queue[0].data is not None:
            p = queue.popleft()
            p.conn = None
            self._write(p.data, p.keep_alive)  # type: ignore[arg-type]
        if self._closing:
            return
        if not queue and self._state.draining and not self._in_request:
            self.close()
            return
        if self._read_paused:
            self._update_reading(len(queue))

    def _fail(self, status: int, message: str) -> None:
        """Answer a protocol-level error after what is owed, then close (parser state is lost)."""
        self._discard_input = True
        self._linger = True
        self._in_request = False
        self._deadline = _NO_DEADLINE
        self.respond(error_response(status, message, keep_alive=False), False)

    def check_deadline(self, now: float) -> None:
        """408 and close if the request being received is late: its headers past
        `header_timeout_s`, or its body past `body_timeout_s`. Called by the server's sweeper,
        in the loop thread, a few times per timeout."""
        if now < self._deadline or not self._in_request or self._closing or self._read_paused:
            return  # (paused reading is the server's own back-pressure, not a slow client)
        limits = self._limits
        if self._in_body:
            self._state.counters.body_timeouts += 1
            self._fail(408, f"request body not received within {limits.body_timeout_s:g} s")
        else:
            self._state.counters.header_timeouts += 1
            self._fail(408, f"request headers not received within {limits.header_timeout_s:g} s")

    def _close_when_flushed(self) -> None:
        self._discard_input = True
        p = Pending(self)
        p.data = b""
        p.keep_alive = False
        self._queue.append(p)
        self._flush()

    # -- lifecycle -------------------------------------------------------------------------
    @property
    def idle(self) -> bool:
        """No request being received and no response owed."""
        return not self._in_request and not self._queue

    def close(self) -> None:
        """Close now (responses not yet written are dropped; their requests are cancelled)."""
        if self.transport is not None and not self.transport.is_closing():
            self._closing = self._discard_input = True
            self.transport.close()


def media_type(req: Request) -> bytes | None:
    """The request's media type, lowercase without parameters, or None when not sent."""
    ctype = req.headers.get(b"content-type")
    if ctype is None:
        return None
    return ctype.partition(b";")[0].strip().lower()


def require_json(req: Request, binary_ok: bool = False) -> None:
    """Refuse (415) a body declared as anything but JSON, so a browser form or `text/plain`
    request from another site cannot drive a JSON endpoint. A body without Content-Type is
    read as JSON (tritonclient sends none); with `binary_ok`, the binary tensor extension's
    `application/octet-stream` is accepted when `Inference-Header-Content-Length` frames it."""
    media = media_type(req)
    if media is None or media == b"application/json":
        return
    if (
        binary_ok
        and media == b"application/octet-stream"
        and b"inference-header-content-length" in req.headers
    ):
        return
    expected = "application/json"
    if binary_ok:
        expected += (
            " (or application/octet-stream with Inference-Header-Content-Length for binary tensors)"
        )
    raise HttpError(
        415, f"unsupported Content-Type {media.decode('latin-1')[:100]!r}; expected {expected}"
    )


def admit_connection(state: Any, conn: Any, transport: Any) -> tuple[str | None, str | None]:
    """Applies the server's global and per-IP connection caps to a new connection (either
    front end): (peer host, None) once it is counted in, or (None, refusal message) after
    counting the refusal. Runs in the loop thread."""
    limits = state.limits
    peer = transport.get_extra_info("peername")
    host = str(peer[0]) if isinstance(peer, tuple) and peer else ""
    per_ip = state.connections_per_ip
    if len(state.connections) >= limits.max_connections:
        state.counters.refused_global += 1
        return None, f"too many open connections (limit {limits.max_connections})"
    if per_ip.get(host, 0) >= limits.max_connections_per_ip:
        state.counters.refused_per_ip += 1
        return None, (
            f"too many open connections from {host} (limit {limits.max_connections_per_ip})"
        )
    per_ip[host] = per_ip.get(host, 0) + 1
    state.connections.add(conn)
    return host, None


def release_connection(state: Any, conn: Any, host: str | None) -> None:
    """Undoes `admit_connection` when the connection closes (`host` None: it was refused)."""
    state.connections.discard(conn)
    if host is None:
        return
    per_ip = state.connections_per_ip
    left = per_ip.get(host, 1) - 1
    if left > 0:
        per_ip[host] = left
    else:
        per_ip.pop(host, None)
