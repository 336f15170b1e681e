"""HTTP/1.1 front end on the native request path (the server's default).

The event loop and sockets stay uvloop's. A plain TCP connection is read from C++: the front
watches the connections' sockets (their duplicates) in one epoll set, registered with the loop,
and one `read_and_flush` call per loop iteration reads every socket with input, however many, into
its native connection (`aiarch._core.HttpConnection`), which parses every request in them
(a TLS connection's reads come through the transport and `feed`, one call per read). The
connection answers v2 infer requests for the models registered with the loop's `HttpFront`
without entering Python per request:
decode into contiguous input buffers, validation, cache probe, batcher submit (the requests of
every read of a loop iteration together, in `HttpFront.run_ready` after the iteration's reads, so
they share a batch and wake a worker once), and on completion the response encoded into the
connection's output and sent from C++ (one non-blocking send per connection per batch, on the
connection's own duplicate of the socket). Python runs once per loop iteration (read and
submit) and once per batch (drain the completion queue), and per read only for what needs it
(requests for the App, a refusal to write, back-pressure, the end of the input); it writes
only what the kernel did not take, through the
transport, which then holds bytes: direct sends stop until it is empty again, and while reading is
paused or the connection closes, so nothing overtakes the transport's bytes and this protocol sees
every write that can resume reading.

Label feedback: for a model that takes feedback, the native path records each answered request
that carried an `id` (its first output's first row) in C++; `drain` hands a drain's records to
the model's tracker in one call. The server assigns no ids: feedback by request id needs the
client's `id` (requests without one can still be joined by entity id + time).

Registry-served models split over canary arms (`--route`, a progressive rollout) are served
natively too: the front picks the arm per request by the Python router's rule (sticky for a
route key), mirrors the shadow's sample once the arm accepted the request, and counts both,
which `fold_route_picks` adds to the route's counters before the route metrics are read.

`/predict` bodies are read natively when the native reader reads them exactly as the Python
one does; any other body (a defect included) goes to the App, which words its answer.

Tracing: a request chosen for tracing (every n-th, or a sampled traceparent) that the native
path answers stays on it; C++ gives it a server span id (and a trace id unless the caller's
traceparent is valid), writes the response's `traceparent` and records its times, and `drain`
hands a drain's records to the span processor (which makes the spans in its export thread), as
it does the prediction records.

Everything else — other routes, models with per-request result checks, routes whose versions
differ in inputs or outputs, string entity ids, compressed bodies or responses — comes back
from `feed` as a whole request and is answered by the App exactly as on the httptools path (`http.HttpProtocol`, kept as the fallback: `aiarch serve --http python`).
Responses leave in request order whichever path answers them.

The limits are the same on both front ends: the native connection forwards what the App must
refuse in its own words (a body not declared as JSON, a timeout header out of range, JSON nested
deeper than the native reader goes), and `NativeProtocol` applies the connection caps and the
header/body read timeouts as `HttpProtocol` does, counted in the same `HttpCounters`.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

import numpy as np

from aiarch import _core
from aiarch import tracing as _tracing

from . import features as _features
from .http import (
    FlowControl,
    Pending,
    Refusal,
    Request,
    admit_connection,
    cancel_waiting,
    decompress_body,
    error_response,
    release_connection,
)
from .routing import SHADOW_MAX_IN_FLIGHT

_PHASE_HEAD = 1  # `HttpConnection.phase`: part of a request head is buffered
_END_OF_INPUT = -1  # a read event's `ended`: the peer shut its side

__all__ = ["NativeFront", "NativeProtocol"]

log = logging.getLogger("aiarch.serving")


class NativeFront:
    """One per server (event loop): the native front, its models, and its connections."""

    def __init__(self, server: Any):
        self.server = server
        self.app = server.handler
        limits = server.limits
        timeout = server.config.request_timeout_s
        self.front = _core.HttpFront(
            max_header_bytes=limits.max_header_bytes,
            max_headers=limits.max_headers,
            max_body_bytes=limits.max_body_bytes,
            default_timeout_ns=int(timeout * 1e9) if timeout else 0,
        )
        self.protocols: dict[int, NativeProtocol] = {}
        self.forwarded = 0
        """Requests the native front handed to the App (all but the native v2 infer ones)."""
        self._next_id = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._flush_scheduled = False
        self._recording = False  # a registered model records predictions for feedback
        self.app.on_refresh.append(self.sync)
        self._route_arms: dict[str, list[Any]] = {}  # registered routes' arms, in arm order
        self._awaiting_handles: set[str] = set()  # routes an arm's batcher did not exist for
        server.routing.count_hooks.append(self.fold_route_picks)
        # Tracing: the front answers the sampled requests it serves natively and records what
        # their spans need (taken once per drain); the others it forwards to the App, which
        # traces them. Spans with ids chosen in C++ need aiarch's own provider (`configure`).
        self.front.trace_every = server.trace_every
        self._tracing = server.trace_every > 0
        self.front.trace_native = _tracing.spans_with_given_ids()
        self._max_owed = limits.max_pipelined

    native_reads = True
    """Plain TCP connections are read from C++ (`read_ready`); off, every read goes through
    the transport and `NativeProtocol.data_received`, as TLS connections' always do."""

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Watch the completion queue on `loop` and register the models already loaded."""
        self._loop = loop
        loop.add_reader(self.front.fd, self.drain)
        if self.front.read_fd >= 0:
            loop.add_reader(self.front.read_fd, self.read_ready)
        for name in list(self.app.entries):
            self.sync(name)

    def stop(self) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self.front.fd)
            if self.front.read_fd >= 0:
                self._loop.remove_reader(self.front.read_fd)

    def new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    # -- models ----------------------------------------------------------------------------
    def sync(self, name: str) -> None:
        """(Re)register `name` natively when it qualifies, else make sure it is not."""
        self.front.unregister_model(name)
        app = self.app
        route = app.routes.get(name)
        if route is not None or name in self._route_arms:
            self._sync_route(name, route)
            return
        entry = app.entries.get(name)
        if entry is None or name in app.routes or entry.check is not None or entry.byte_keys:
            return  # (string entity ids are BYTES on the wire: the App packs them)
        if entry.runtime_name != name or entry.name != name:
            return
        handle_of = getattr(app.runtime, "native_handle", None)
        handle = handle_of(name) if handle_of is not None else None
        if handle is None:
            return
        info = app.runtime.model_info(name)
        inputs = [(s.name, s.dtype, tuple(int(d) for d in s.shape)) for s in info.inputs]
        if any(d < 0 for _, _, shape in inputs for d in shape):
            return
        record = app.runtime.feedback_tracker(name) is not None
        self.front.register_model(
            name, entry.version, handle, inputs, list(entry.output_names), record
        )
        if record:
            self._recording = True

    def _sync_route(self, name: str, route: Any) -> None:
        """(Re)register the canary route `name` over its current arms when every arm can be
        served natively with the same inputs and outputs; the picks counted so far go to the
        arms they were made for first."""
        self.fold_route_picks(name)
        self.front.unregister_route(name)
        self._route_arms.pop(name, None)
        if route is None:
            return
        runtime = self.app.runtime
        entries = [arm.entry for arm in route.arms]
        shadow = route.shadow.entry if route.shadow is not None else None
        if shadow is not None:
            entries.append(shadow)
        if any(e is None or e.check is not None or e.byte_keys for e in entries):
            return
        handles = [runtime.native_handle(e.runtime_name) for e in entries]
        if any(h is None for h in handles):
            self._awaiting_handles.add(name)  # retried when a request reaches the App
            return
        self._awaiting_handles.discard(name)
        layouts = set()
        for e in entries:
            info = runtime.model_info(e.runtime_name)
            inputs = tuple((s.name, s.dtype, tuple(int(d) for d in s.shape)) for s in info.inputs)
            layouts.add((inputs, tuple(e.output_names)))
        if len(layouts) != 1:
            return  # versions disagree on inputs or outputs: the App's path arranges each
        inputs, outputs = layouts.pop()
        if any(d < 0 for _, _, shape in inputs for d in shape):
            return
        record = runtime.feedback_tracker(name) is not None
        arms = [
            (e.version, h, int(arm.weight), record)
            for arm, e, h in zip(route.arms, entries, handles, strict=False)
        ]
        mirror = None
        if shadow is not None:
            mirror = (shadow.version, handles[-1], route.shadow_fraction, SHADOW_MAX_IN_FLIGHT)
        self.front.register_route(name, list(inputs), list(outputs), arms, mirror)
        if name in self.front.registered_routes():
            self._route_arms[name] = list(route.arms)
            if record:
                self._recording = True

    def fold_route_picks(self, name: str | None = None) -> None:
        """Add the requests the front routed to each arm, and the outcomes of the requests
        it mirrored (of route `name`, or of every route), to the route's counters."""
        names = [name] if name is not None else list(self.app.routes)
        for n in names:
            arms = self._route_arms.get(n)
            if arms is not None:
                for arm, picks in zip(arms, self.front.take_route_picks(n), strict=False):
                    arm.requests += picks
            route = self.app.routes.get(n)
            if route is not None:
                counts = route.shadow_counts
                for version, outcome, count in self.front.take_shadow_counts(n):
                    counts[(version, outcome)] = counts.get((version, outcome), 0) + count

    def maybe_register(self, path: bytes) -> None:
        """A v2 infer request reached Python for a model loaded but not registered (its batcher
        did not exist yet at load): register it for the next ones."""
        parts = path.split(b"/")
        if len(parts) >= 5 and parts[-1] == b"infer" and parts[2] == b"models":
            name = parts[3].decode("latin-1")
            if name in self.app.routes:
                if name in self._awaiting_handles:
                    self.sync(name)
            elif name in self.app.entries and name not in self.front.registered():
                self.sync(name)

    # -- completions -----------------------------------------------------------------------
    def schedule_flush(self) -> None:
        """Submit the requests this loop iteration decoded and run the batches they made ready,
        once, after every read of the iteration."""
        if not self._flush_scheduled and self._loop is not None:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        self._write(self.front.flush())

    def read_ready(self) -> None:
        """Read every natively read connection with input, submit what was decoded and run
        the batches that made ready (one call, however many connections), then act on what
        needs Python and write what the kernel did not take."""
        assert self._loop is not None
        if self.app.draining:
            self.front.draining = True
        protocols = self.protocols
        events, to_write = self.front.read_and_flush(self._loop.time(), self._max_owed)
        # Answers of the batches run inline are already sent (or queued per connection, in
        # slot order, behind any forwarded request dispatched below).
        for cid, forwarded, ended in events:
            p = protocols.get(cid)
            if p is not None:
                p.read_event(forwarded, ended)
        self._write(to_write)

    def drain(self) -> None:
        """Encode finished requests into their connections and write each connection once."""
        self._write(self.front.drain())

    def _write(self, connection_ids: list[int]) -> None:
        """Write the connections a flush or drain gave output, then hand over the predictions
        it recorded (before any later read can bring the labels for them) and make the spans
        of the traced requests it answered."""
        protocols = self.protocols
        for cid in connection_ids:
            p = protocols.get(cid)
            if p is not None:
                p.write_output()
        if self._recording:
            self._take_predictions()
        if self._tracing:
            traces = self.front.take_traces()
            if traces:
                _tracing.emit_native(traces, lookup_log, log)

    def _take_predictions(self) -> None:
        """Hand the drain's recorded predictions (requests with an id, of models that take
        feedback) to their trackers: one call per model per drain."""
        runtime = self.app.runtime
        for model, version, ids, values, width in self.front.take_predictions():
            tracker = runtime.feedback_tracker(model)
            if tracker is not None and ids:
                rows = np.frombuffer(values, dtype=np.float64).reshape(len(ids), width)
                tracker.record_many(ids, version, rows)


def lookup_log(model: str) -> Any:
    """The model's log of recent feature lookups (None when it joins no features): the
    feature_lookup span of a traced batch."""
    return getattr(_features._LOOKUPS.get(model), "lookup_log", None)


class _NativePending(Pending):
    """A response slot of a request the App answers later (see `http.Pending`)."""

    __slots__ = ("slot",)

    def __init__(self, conn: NativeProtocol, slot: int):
        super().__init__(None)
        self.conn = conn  # type: ignore[assignment]
        self.slot = slot

    def resolve(self, data: bytes | list[Any], keep_alive: bool) -> None:
        conn: Any = self.conn
        self.conn = None
        if conn is not None:
            conn.resolve_slot(self.slot, data, keep_alive)


def _joined(data: bytes | list[Any]) -> bytes:
    """One bytes object for a response the App built as bytes or as a list of buffers."""
    if isinstance(data, bytes):
        return data
    parts: list[Any] = data
    return b"".join(b if isinstance(b, bytes) else memoryview(b).cast("B") for b in parts)


class NativeProtocol(FlowControl):
    """One HTTP/1.1 connection on the native path. Everything runs in the loop thread."""

    __slots__ = (
        "_app",
        "_conn",
        "_direct",
        "_native",
        "_peer",
        "_pending",
        "_reader",
        "_slot",
        "_state",
    )

    def __init__(self, state: Any, native: NativeFront):
        super().__init__(state.limits)
        self._state = state
        self._app = state.handler  # its `draining` is read per read: an attribute, no property
        self._native = native
        self._conn = native.front.connect(native.new_id())
        self._pending: dict[int, _NativePending] = {}
        self._slot = 0
        self._peer: str | None = None
        self._direct = False  # the native connection may send straight to the socket
        self._reader = False  # the native connection reads the socket (see `read_event`)

    # -- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        loop = asyncio.get_running_loop()
        self._conn.last_active = loop.time()
        self._peer, refusal = admit_connection(self._state, self, transport)
        if refusal is not None:
            self._refuse(refusal)
            return
        self._native.protocols[self._conn.id] = self
        # Responses a drain encodes go straight to a plain TCP socket (one send per connection
        # per drain, no Python); TLS and other transports write everything themselves.
        sock = transport.get_extra_info("socket")
        if sock is not None and transport.get_extra_info("sslcontext") is None:
            self._direct = self._conn.attach_socket(sock.fileno())
            self._conn.direct_writes = self._direct
            if self._direct and self._native.native_reads:
                # The transport starts reading after this returns: it is paused (and C++ reads)
                # in a callback of its own; what it reads before then comes to data_received.
                loop.call_soon(self._start_native_reading)

    def _start_native_reading(self) -> None:
        transport = self.transport
        if transport is None or self._closing or not self._conn.start_reading():
            return
        self._reader = True
        if self._read_paused:
            self._conn.set_reading(False)  # the transport is paused already
        else:
            transport.pause_reading()

    def _hand_back_reading(self) -> None:
        """End native reading: the transport reads again (unless reading is paused), as when
        the connection began, for what follows its last response (see `_close_after_last_response`)."""
        if not self._reader:
            return
        self._reader = False
        self._conn.stop_reading()
        transport = self.transport
        if transport is not None and not self._read_paused and not transport.is_closing():
            transport.resume_reading()

    def _set_reading(self, on: bool) -> None:
        if not self._reader:
            super()._set_reading(on)
        elif not self._conn.set_reading(on):
            self._hand_back_reading()  # the socket could not be watched again: the transport reads

    @property
    def last_active(self) -> float:
        """When the peer was last heard (the loop's clock), for the idle sweep."""
        return self._conn.last_active

    def _refuse(self, message: str) -> None:
        """Answer 503 before reading anything and close: the connection never counts."""
        self._closing = True
        transport = self.transport
        if transport is not None:
            transport.write(_joined(error_response(503, message, keep_alive=False)))
            transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._conn.close()  # cancels the native requests still queued (and closes our dup)
        self._reader = False
        release_connection(self._state, self, self._peer)
        self._peer = None
        self._native.protocols.pop(self._conn.id, None)
        pending, self._pending = self._pending, {}
        cancel_waiting(pending.values())
        self.transport = None

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        native = self._native
        now = native._loop.time() if native._loop is not None else 0.0
        draining = self._app.draining
        if draining:
            native.front.draining = True
        conn = self._conn
        forwarded = conn.feed(data, now)
        if forwarded is not None:
            for item in forwarded:
                self._dispatch(*item)
        if not native._flush_scheduled:
            native.schedule_flush()
        # Most reads only queue requests for the flush: nothing to write, nothing to pause.
        if self._read_paused or draining or conn.needs_write(self._limits.max_pipelined):
            self.write_output()

    def read_event(self, forwarded: list[_core.ForwardedRequest] | None, ended: int) -> None:
        """What a native read left for this connection: requests for the App, output to write or
        back-pressure (as after `data_received`), or the end of the input (`ended`: -1 at EOF, an
        errno after a failed read), which it meets as the transport would have."""
        if ended:
            self._reader = False  # the native connection stopped reading
            transport = self.transport
            if transport is None:
                return
            if ended == _END_OF_INPUT:
                if not self.eof_received():
                    transport.close()
            else:
                log.debug("connection read failed: %s", os.strerror(ended))
                transport.abort()
            return
        if forwarded is not None:
            for item in forwarded:
                self._dispatch(*item)
        self.write_output()

    def _owed(self) -> int:
        return self._conn.owed

    def _update_reading(self, owed: int) -> None:
        super()._update_reading(owed)
        if self._direct:
            self._allow_direct_writes()

    def _allow_direct_writes(self) -> None:
        """Direct sends only while they cannot overtake or hide anything: the transport holds
        no bytes of ours, reading is not paused (resuming it needs this protocol to see the
        writes) and the connection is not closing."""
        transport = self.transport
        self._conn.direct_writes = (
            transport is not None
            and not self._read_paused
            and not self._closing
            and transport.get_write_buffer_size() == 0
        )

    # -- the App's side --------------------------------------------------------------------
    def _dispatch(
        self,
        slot: int,
        method: bytes,
        path: bytes,
        query: bytes,
        headers: dict[bytes, bytes],
        body: bytes,
        keep_alive: bool,
        traced: bool,
    ) -> None:
        self._native.forwarded += 1
        encoding = headers.get(b"content-encoding")
        if encoding is not None and body:
            try:
                body = decompress_body(body, encoding, self._limits.max_body_bytes)
            except Refusal as e:
                self._conn.respond(slot, _joined(error_response(e.status, e.message, False)), False)
                return
        req = Request(method, path, query, headers, body, keep_alive, traced)
        self._slot = slot
        if method == b"POST":
            self._native.maybe_register(path)
        try:
            self._app.handle(req, self)
        except Exception:
            log.exception("handler failed")
            self.respond(error_response(500, "internal error"), True)

    def respond(self, data: bytes | list[Any], keep_alive: bool) -> None:
        """The App's answer to the request being dispatched."""
        self._conn.respond(self._slot, _joined(data), keep_alive)

    def defer(self) -> Pending:
        """Reserve the response of the request being dispatched; the App resolves it later."""
        p = _NativePending(self, self._slot)
        self._pending[self._slot] = p
        return p

    def resolve_slot(self, slot: int, data: bytes | list[Any], keep_alive: bool) -> None:
        self._pending.pop(slot, None)
        self._conn.respond(slot, _joined(data), keep_alive)
        self.write_output()

    # -- output ----------------------------------------------------------------------------
    def write_output(self) -> None:
        transport = self.transport
        if transport is None:
            return
        conn = self._conn
        out = conn.take_output()
        if out:
            transport.write(out)
            if self._direct:
                self._allow_direct_writes()
        if conn.want_close:
            if not self._closing:
                self._closing = True
                conn.direct_writes = False
                self._hand_back_reading()
                self._close_after_last_response(transport, conn.linger)
            return
        owed = conn.owed
        if self._app.draining and owed == 0 and not conn.in_request:
            self.close()
            return
        # Reading is paused exactly while writing is paused or too many responses are owed
        # (see FlowControl): with it running and few owed there is nothing to change.
        if self._read_paused or owed >= self._limits.max_pipelined:
            self._update_reading(owed)

    # -- lifecycle -------------------------------------------------------------------------
    @property
    def idle(self) -> bool:
        """No request being received and no response owed."""
        return not self._conn.in_request and self._conn.owed == 0

    def check_deadline(self, now: float) -> None:
        """408 and close if the request being received is late: its headers past
        `header_timeout_s` from its first byte, or its body past `body_timeout_s` from the end
        of its headers. Called by the server's sweeper, in the loop thread, a few times per
        timeout (as `HttpProtocol.check_deadline`)."""
        conn = self._conn
        phase = conn.phase
        if not phase or self._closing or self._read_paused:
            return  # (paused reading is the server's own back-pressure, not a slow client)
        state = self._state
        limits = state.limits
        if phase == _PHASE_HEAD:
            if now - conn.phase_since < limits.header_timeout_s:
                return
            state.counters.header_timeouts += 1
            conn.fail(408, f"request headers not received within {limits.header_timeout_s:g} s")
        else:
            if now - conn.phase_since < limits.body_timeout_s:
                return
            state.counters.body_timeouts += 1
            conn.fail(408, f"request body not received within {limits.body_timeout_s:g} s")
        self.write_output()

    def close(self) -> None:
        """Close now (responses not yet written are dropped; their requests are cancelled)."""
        if self.transport is not None and not self.transport.is_closing():
            self._closing = True
            self._conn.direct_writes = False
            self._hand_back_reading()
            self.transport.close()
