"""OpenTelemetry tracing of inference requests (off by default).

A traced request gets a span for the whole request and children for its stages::

    POST /v2/models/{m}/infer   (server span; the caller's W3C traceparent is its parent)
    ├── queue                   waiting in the batcher, from submit to its batch's start
    ├── execution               the batch that answered it (attribute aiarch.batch.rows)
    │   └── feature_lookup      the batch's online feature lookup, for models with features
    └── encode                  the response body

`aiarch serve --trace-sample RATE` (or ``AIARCH_TRACE_SAMPLE``) traces every 1/RATE-th
request, plus every request whose ``traceparent`` asks for sampling; the response then carries
the server span's own ``traceparent``. Spans go to an OTLP collector when
``opentelemetry-exporter-otlp`` is installed and ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) is set, else one JSON object per line to
``AIARCH_TRACE_FILE`` when set, else to stderr.

Embedded: after :func:`enable` (with the application's tracer provider, or the global one),
``await Runtime.infer(...)`` called under a recording span adds the queue, execution and
feature-lookup spans under it.

Cost: while tracing is off, a request pays one test of :data:`enabled` (Python path) or one
branch (native path); unsampled requests never leave the native path, and neither do sampled
ones it answers: C++ records their ids and times, the loop queues the records, and the span
processor's thread (:class:`_BatchExport`) makes their spans when it exports. Batch timings
come from the batcher itself (the completion carries when the request was queued and when its
batch ran), so a traced request's stages are exact, not inferred.
"""

from __future__ import annotations

import logging
import os
import random
import sys
import threading
import time
from collections import deque
from random import getrandbits
from typing import Any

__all__ = [
    "RequestSpan",
    "configure",
    "disable",
    "enable",
    "enabled",
    "ensure_enabled",
    "every_nth",
    "recent_lookups",
    "shutdown",
    "tracer_provider",
]

log = logging.getLogger("aiarch.tracing")

enabled = False
"""True while spans are made; the one test an untraced request pays on the Python path."""

_tracer: Any = None
_provider: Any = None  # the SDK provider `configure` made (shut down by `shutdown`)
_enabled_provider: Any = None  # the provider `_tracer` comes from
_direct: _DirectSpans | None = None  # set by `configure`: spans built without the tracer
_lock = threading.Lock()


# ---------------------------------------------------------------- set-up


def every_nth(rate: float) -> int:
    """The counter period that samples `rate` of the requests (0 = none)."""
    if not 0 <= rate <= 1:
        raise ValueError(f"the trace sample rate must be in [0, 1], got {rate}")
    return 0 if rate == 0 else max(1, round(1 / rate))


def enable(tracer_provider: Any = None) -> None:
    """Make spans with `tracer_provider` (default: OpenTelemetry's global provider), through
    its tracer (the standard, slower way: the provider's sampler and processors apply)."""
    global _tracer, _enabled_provider, _direct, enabled
    from opentelemetry import trace

    provider = tracer_provider or trace.get_tracer_provider()
    _tracer = provider.get_tracer("aiarch")
    _enabled_provider = provider
    _direct = None
    enabled = True


def tracer_provider() -> Any:
    """The provider spans are made with (None before :func:`enable` or :func:`configure`)."""
    return _enabled_provider


def disable() -> None:
    """Stop making spans (requests in flight finish their spans)."""
    global enabled
    enabled = False


def configure(exporter: Any = None, *, simple: bool = False) -> None:
    """Set up an SDK tracer provider for this process and :func:`enable` it.

    `exporter`: a span exporter (tests pass the SDK's ``InMemorySpanExporter``); default
    :func:`default_exporter`. Spans are exported in batches from a background thread
    (:class:`_BatchExport`, configured by the SDK's ``OTEL_BSP_*`` variables); `simple` exports
    each span as it ends instead. Idempotent: a second call replaces the first provider."""
    global _provider
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    global _direct
    with _lock:
        old = _provider
        resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "aiarch")})
        provider = TracerProvider(resource=resource)
        exp = exporter if exporter is not None else default_exporter()
        direct = _DirectSpans(resource)
        processor = SimpleSpanProcessor(exp) if simple else _batch_export_class()(exp, direct)
        direct.processor = processor
        provider.add_span_processor(processor)
        _provider = provider
        enable(provider)
        _direct = direct
    if old is not None:
        old.shutdown()


def ensure_enabled() -> bool:
    """Enable tracing, with :func:`configure`'s defaults unless a provider was set up before
    (an embedding application's, or a test's). Returns True when this call configured it."""
    global enabled
    if _tracer is None:
        configure()
        return True
    enabled = True
    return False


def configured() -> bool:
    """True once :func:`configure` or :func:`enable` ran in this process."""
    return _tracer is not None


def shutdown() -> None:
    """Flush and close the provider :func:`configure` made (at server exit)."""
    global _provider
    disable()
    with _lock:
        provider, _provider = _provider, None
    if provider is not None:
        provider.shutdown()


def default_exporter() -> Any:
    """OTLP when installed and configured by the standard environment, else JSON lines to
    ``AIARCH_TRACE_FILE`` or stderr."""
    env = os.environ
    if env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        protocol = (
            env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
            or "http/protobuf"
        )
        try:
            if protocol == "grpc":
                from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
                    OTLPSpanExporter,
                )
            else:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                    OTLPSpanExporter,
                )
            return OTLPSpanExporter()  # reads the OTEL_EXPORTER_OTLP_* variables itself
        except ImportError:
            log.warning(
                "an OTLP endpoint is set but the OTLP %s exporter is not installed "
                "(pip install opentelemetry-exporter-otlp); writing spans locally",
                protocol,
            )
    path = env.get("AIARCH_TRACE_FILE")
    out = open(path, "ab") if path else sys.stderr.buffer
    return json_lines_exporter(out)


def _json_lines_exporter_class() -> Any:
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    class _JsonLinesExporter(SpanExporter):
        """One compact JSON object per span and line (msgspec: a fraction of the SDK console
        exporter's cost, which matters because export shares the GIL with the event loop)."""

        def __init__(self, out: Any) -> None:
            import msgspec

            self._out = out
            self._encode = msgspec.json.Encoder().encode
            self._lock = threading.Lock()

        def export(self, spans: Any) -> Any:
            encode = self._encode
            lines = []
            for span in spans:
                c, parent = span.context, span.parent
                lines.append(
                    encode(
                        {
                            "name": span.name,
                            "trace_id": f"{c.trace_id:032x}",
                            "span_id": f"{c.span_id:016x}",
                            "parent_id": None if parent is None else f"{parent.span_id:016x}",
                            "kind": span.kind.name,
                            "start_ns": span.start_time,
                            "end_ns": span.end_time,
                            "status": span.status.status_code.name,
                            "attributes": dict(span.attributes or {}),
                        }
                    )
                )
            with self._lock:
                self._out.write(b"\n".join(lines) + b"\n")
                self._out.flush()
            return SpanExportResult.SUCCESS

        def export_records(self, records: Any, offset_ns: int) -> None:
            """Write the spans of native traced requests (`_BatchExport` items) straight from
            their records, as `export` would write the spans made from them."""
            encode = self._encode
            lines: list[str] = []
            for record, lookup in records:
                _record_json_lines(record, lookup, offset_ns, encode, lines)
            data = ("\n".join(lines) + "\n").encode()
            with self._lock:
                self._out.write(data)
                self._out.flush()

        def shutdown(self) -> None:
            with self._lock:
                self._out.flush()

    return _JsonLinesExporter


def _record_json_lines(
    record: Any, lookup: tuple[int, int] | None, offset: int, encode: Any, out: list[str]
) -> None:
    """The JSON lines of one native traced request's spans, appended to `out`: what the
    exporter writes for `_DirectSpans.record_spans`, without making those span objects."""
    (path, model, traceparent, _, trace_id, span_id, start, submit, enqueue, exec_start,
     exec_end, rows, encode_start, encode_end, end, status, cache_hit, error) = record  # fmt: skip
    ids = f',"trace_id":"{trace_id:032x}","span_id":"'
    server = f"{span_id:016x}"
    strings = _json_strings.get((path, model))
    if strings is None:
        strings = _json_strings_of(path, model, encode)
    name, url, model_attr, rows_attr = strings
    line = _child_line
    if cache_hit:
        line(out, "cache_hit", ids, server, submit, submit, offset, "UNSET", model_attr)
    elif exec_start > 0:
        line(out, "queue", ids, server, enqueue, exec_start, offset, "UNSET", model_attr)
        execution = line(
            out, "execution", ids, server, exec_start, exec_end, offset,
            "ERROR" if error else "UNSET", f"{rows_attr}{rows}}}",
        )  # fmt: skip
        if lookup is not None:
            line(out, "feature_lookup", ids, execution, *lookup, offset, "UNSET", model_attr)
    elif submit > 0:  # refused, expired or cancelled before it ran
        failed = "ERROR" if error else "UNSET"
        line(out, "queue", ids, server, enqueue or submit, end, offset, failed, model_attr)
    if encode_start > 0:
        line(out, "encode", ids, server, encode_start, encode_end, offset, "UNSET", "{}")
    parent = "null" if traceparent is None else f'"{traceparent[36:52]}"'
    out.append(
        f'{{"name":{name}{ids}{server}","parent_id":{parent},"kind":"SERVER",'
        f'"start_ns":{start + offset},"end_ns":{end + offset},'
        f'"status":"{"ERROR" if status >= 500 else "UNSET"}","attributes":'
        f'{{"http.request.method":"POST","url.path":{url},"http.response.status_code":{status}}}}}'
    )


def _child_line(
    out: list[str], name: str, ids: str, parent: str, start: int, end: int, offset: int,
    status: str, attributes: str,
) -> str:  # fmt: skip
    span_id = f"{getrandbits(64) or 1:016x}"
    out.append(
        f'{{"name":"{name}"{ids}{span_id}","parent_id":"{parent}","kind":"INTERNAL",'
        f'"start_ns":{start + offset},"end_ns":{end + offset},"status":"{status}",'
        f'"attributes":{attributes}}}'
    )
    return span_id


_json_strings: dict[tuple[bytes, str], tuple[str, str, str, str]] = {}
"""JSON text of a traced request path's server span name and url, and of its model's
attributes, by (path, model): they repeat request after request (bounded below)."""


def _json_strings_of(path: bytes, model: str, encode: Any) -> tuple[str, str, str, str]:
    url = path.decode("latin-1")
    model_attr = f'{{"aiarch.model":{encode(model).decode()}}}'
    strings = (
        encode(f"POST {url}").decode(),
        encode(url).decode(),
        model_attr,
        f'{model_attr[:-1]},"aiarch.batch.rows":',
    )
    if len(_json_strings) >= 1024:
        _json_strings.clear()
    _json_strings[(path, model)] = strings
    return strings


def json_lines_exporter(out: Any) -> Any:
    """A span exporter writing one JSON object per line to the binary stream `out`: name,
    trace_id, span_id, parent_id, kind, start_ns, end_ns, status, attributes."""
    return _json_lines_exporter_class()(out)


# ---------------------------------------------------------------- clocks

# The batcher's clock is std::chrono::steady_clock, CLOCK_MONOTONIC on Linux, as
# time.monotonic_ns(); spans want wall-clock (epoch) nanoseconds.


def _wall(monotonic_ns: int) -> int:
    return monotonic_ns + (time.time_ns() - time.monotonic_ns())


# ---------------------------------------------------------------- feature lookups

_LOOKUP_LOG = 256  # lookups remembered per model, to find the one of a traced batch


def recent_lookups() -> deque[tuple[int, int]]:
    """A bounded log of (start, end) monotonic ns of a model's feature lookups; appended only
    while tracing is enabled (one per batch), read for a traced request's batch."""
    return deque(maxlen=_LOOKUP_LOG)


def _lookup_in(lookups: Any, start: int, end: int) -> tuple[int, int] | None:
    """The lookup of the batch that executed in [start, end]: the first lookup a batch does,
    so the one starting closest after `start` and ending before `end`."""
    best = None
    for s, e in list(lookups):
        if start <= s and e <= end and (best is None or s < best[0]):
            best = (s, e)
    return best


# ---------------------------------------------------------------- making spans


class _DirectSpans:
    """Finished spans built as SDK `ReadableSpan`s and handed to the span processor that
    :func:`configure` made: a few µs a span, where going through the tracer (sampler, id
    generator, attribute checks, locks) costs about ten times as much, and a traced request
    makes five. The ids are random as the SDK's; the request's sampling decision is made
    before any span exists, so every span made is sampled."""

    def __init__(self, resource: Any) -> None:
        from opentelemetry.sdk.trace import ReadableSpan
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope
        from opentelemetry.trace import SpanContext, SpanKind, TraceFlags

        self.processor: Any = None  # set by `configure`
        self.resource = resource
        self.scope = InstrumentationScope("aiarch")
        self.readable = ReadableSpan
        self.span_context = SpanContext
        self.sampled = TraceFlags(TraceFlags.SAMPLED)
        self.internal = SpanKind.INTERNAL
        self.server = SpanKind.SERVER

    def new_context(self, trace_id: int) -> Any:
        return self.span_context(trace_id, random.getrandbits(64) or 1, False, self.sampled)

    def make(
        self,
        name: str,
        context: Any,
        parent: Any,
        kind: Any,
        start_ns: int,
        end_ns: int,
        attributes: dict[str, Any],
        status: Any,
    ) -> Any:
        return self.readable(
            name,
            context,
            parent,
            resource=self.resource,
            attributes=attributes,
            kind=kind,
            status=status,
            start_time=start_ns,
            end_time=end_ns,
            instrumentation_scope=self.scope,
        )

    def emit(self, *span: Any) -> None:
        """Hands the span `make(*span)` builds to the processor."""
        self.processor.on_end(self.make(*span))

    def record_spans(self, record: Any, lookup: tuple[int, int] | None, offset: int) -> list[Any]:
        """The spans of a traced request the native front answered (`HttpFront.take_traces`),
        as the Python path makes them: the server span (ids chosen in C++; the caller's
        traceparent its parent) over queue, execution (with `lookup`, the batch's feature
        lookup, under it) or cache_hit, and encode. `offset` turns its monotonic ns into
        wall-clock ns."""
        (path, model, traceparent, tracestate, trace_id, span_id, start, submit, enqueue,
         exec_start, exec_end, rows, encode_start, encode_end, end, status, cache_hit,
         error) = record  # fmt: skip
        server = self.span_context(trace_id, span_id, False, self.sampled)
        attrs = {"aiarch.model": model}
        failure = _status(error or None)
        ok = _status(None)
        spans = []

        def child(name: str, parent: Any, s: int, e: int, a: dict[str, Any], st: Any) -> Any:
            ctx = self.new_context(trace_id)
            spans.append(self.make(name, ctx, parent, self.internal, s + offset, e + offset, a, st))
            return ctx

        if cache_hit:
            child("cache_hit", server, submit, submit, attrs, ok)
        elif exec_start > 0:
            child("queue", server, enqueue, exec_start, attrs, ok)
            execution = child(
                "execution", server, exec_start, exec_end, {**attrs, "aiarch.batch.rows": rows},
                failure,
            )  # fmt: skip
            if lookup is not None:
                child("feature_lookup", execution, lookup[0], lookup[1], attrs, ok)
        elif submit > 0:  # refused, expired or cancelled before it ran
            child("queue", server, enqueue or submit, end, attrs, failure)
        if encode_start > 0:
            child("encode", server, encode_start, encode_end, {}, ok)
        parent = None
        if traceparent is not None:
            from opentelemetry import trace

            parent = trace.get_current_span(
                _parent_context(traceparent, tracestate)
            ).get_span_context()
        url = path.decode("latin-1")
        spans.append(
            self.make(
                f"POST {url}",
                server,
                parent,
                self.server,
                start + offset,
                end + offset,
                {
                    "http.request.method": "POST",
                    "url.path": url,
                    "http.response.status_code": status,
                },
                _status("HTTP 5xx" if status >= 500 else None),
            )
        )
        return spans


def _batch_export_class() -> Any:
    from opentelemetry import context
    from opentelemetry.sdk.trace import SpanProcessor
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    class _BatchExport(SpanProcessor):
        """The span processor :func:`configure` sets up: the SDK's BatchSpanProcessor's job
        (same ``OTEL_BSP_*`` settings) at less cost on the event loop. Ended spans, and the
        records of the traced requests the native front answered, queue in a deque (no lock,
        no wake-up per span); one thread wakes every schedule delay, or once a batch's worth
        is queued, and hands the exporter batches. A record becomes spans only there: the
        local JSON-lines exporter writes them straight from it, others get `ReadableSpan`s.
        Beyond the queue's bound, items are dropped and counted (`dropped`)."""

        def __init__(self, exporter: Any, direct: _DirectSpans) -> None:
            self._exporter = exporter
            self._direct = direct
            self._delay_s = BatchSpanProcessor._default_schedule_delay_millis() / 1e3
            self._batch = BatchSpanProcessor._default_max_export_batch_size()
            self._max_queue = BatchSpanProcessor._default_max_queue_size()
            self._queue: deque[Any] = deque()
            self._wake = threading.Event()
            self._export_lock = threading.Lock()
            self._stopped = False
            self.dropped = 0
            self._thread = threading.Thread(
                target=self._run, name="aiarch-span-export", daemon=True
            )
            self._thread.start()

        def on_start(self, span: Any, parent_context: Any = None) -> None:
            pass

        def on_end(self, span: Any) -> None:
            if span.context.trace_flags.sampled:
                self.add((span,))

        def add(self, items: Any) -> None:
            """Queue spans, or (record, feature lookup) pairs of native traced requests."""
            queue = self._queue
            room = 0 if self._stopped else self._max_queue - len(queue)
            if len(items) > room:
                if not self.dropped:
                    log.warning("the span export queue is full: spans are dropped")
                self.dropped += len(items) - max(room, 0)
                items = items[: max(room, 0)]
            queue.extend(items)
            if len(queue) >= self._batch and not self._wake.is_set():
                self._wake.set()

        def _run(self) -> None:
            while not self._stopped:
                self._wake.wait(self._delay_s)
                self._wake.clear()
                self._export_queued()

        def _export_queued(self) -> None:
            queue, batch, exporter = self._queue, self._batch, self._exporter
            # As the SDK's processors do: what the exporter does (an OTLP request) is not traced.
            token = context.attach(context.set_value(context._SUPPRESS_INSTRUMENTATION_KEY, True))
            try:
                with self._export_lock:
                    while queue:
                        spans: list[Any] = []
                        records: list[Any] = []
                        while queue and len(spans) + len(records) < batch:
                            item = queue.popleft()
                            (records if type(item) is tuple else spans).append(item)
                        try:
                            self._export(exporter, spans, records)
                        except Exception:  # an exporter failing must not stop the thread
                            log.exception("span export failed")
            finally:
                context.detach(token)

        def _export(self, exporter: Any, spans: list[Any], records: list[Any]) -> None:
            if records:
                offset = time.time_ns() - time.monotonic_ns()  # monotonic → wall clock
                fast = getattr(exporter, "export_records", None)
                if fast is not None:
                    fast(records, offset)
                else:
                    for record, lookup in records:
                        spans.extend(self._direct.record_spans(record, lookup, offset))
            if spans:
                exporter.export(spans)

        def force_flush(self, timeout_millis: int = 30000) -> bool:
            self._export_queued()
            return True

        def shutdown(self) -> None:
            if self._stopped:
                return
            self._stopped = True
            self._wake.set()
            self._thread.join()
            self._export_queued()
            self._exporter.shutdown()

    return _BatchExport


def _status(error: BaseException | str | None) -> Any:
    from opentelemetry.trace import Status, StatusCode

    if error is None:
        return Status(StatusCode.UNSET)
    text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    return Status(StatusCode.ERROR, text[:200])


def _child(
    name: str,
    parent: Any,
    start_ns: int,
    end_ns: int,
    attributes: dict[str, Any],
    error: BaseException | str | None = None,
) -> Any:
    """A finished INTERNAL span under the span context `parent` (wall-clock ns); returns its
    span context."""
    from opentelemetry.trace import NonRecordingSpan, SpanKind, set_span_in_context

    direct = _direct
    if direct is not None:
        ctx = direct.new_context(parent.trace_id)
        direct.emit(
            name, ctx, parent, SpanKind.INTERNAL, start_ns, end_ns, attributes, _status(error)
        )
        return ctx
    span = _tracer.start_span(
        name,
        set_span_in_context(NonRecordingSpan(parent)),
        attributes=attributes,
        start_time=start_ns,
    )
    if error is not None:
        span.set_status(_status(error))
    span.end(end_time=end_ns)
    return span.get_span_context()


# ---------------------------------------------------------------- Runtime.infer


class InferTrace:
    """The stages of one `Runtime.infer` under a traced span. `timing` is filled by the
    native completion: [enqueue_ns, exec_start_ns, exec_end_ns, batch_rows]."""

    __slots__ = ("model", "parent", "submit_ns", "timing")

    def __init__(self, parent: Any, model: str) -> None:
        self.parent = parent  # the span context of the span current at submit
        self.model = model
        self.submit_ns = time.monotonic_ns()
        self.timing: list[int] = []

    def finish(self, lookups: Any, error: BaseException | None, cache_hit: bool = False) -> None:
        """Emit the queue / execution / feature-lookup spans. Called once, in the loop."""
        if _tracer is None:
            return
        parent = self.parent
        attrs = {"aiarch.model": self.model}
        if cache_hit:
            now = time.time_ns()
            _child("cache_hit", parent, now, now, attrs)
            return
        timing = self.timing
        if len(timing) == 4 and timing[1] > 0:
            enqueue, start, end, rows = timing
            offset = time.time_ns() - time.monotonic_ns()  # monotonic → wall clock
            _child("queue", parent, enqueue + offset, start + offset, attrs)
            execution = _child(
                "execution",
                parent,
                start + offset,
                end + offset,
                {**attrs, "aiarch.batch.rows": rows},
                error,
            )
            if lookups is not None:
                found = _lookup_in(lookups, start, end)
                if found is not None:
                    _child("feature_lookup", execution, found[0] + offset, found[1] + offset, attrs)
        else:  # refused, expired or cancelled before it ran: the wait is all there was
            start_at = timing[0] if timing else self.submit_ns
            _child("queue", parent, _wall(start_at), time.time_ns(), attrs, error)


def start_infer(model: str) -> InferTrace | None:
    """An InferTrace when the current span is traced (an aiarch request span, or a recording
    span of the application's), else None. Called by Runtime.infer only while :data:`enabled`."""
    from opentelemetry import trace

    if _tracer is None:
        return None
    span = trace.get_current_span()
    if not (span.is_recording() or isinstance(span, _ServerSpanMarker.cls())):
        return None
    return InferTrace(span.get_span_context(), model)


# ---------------------------------------------------------------- native requests


def spans_with_given_ids() -> bool:
    """Spans can be made with ids chosen before they start (:func:`configure`'s provider),
    as the native front's traced requests need: it writes their traceparent itself."""
    return _direct is not None


def emit_native(records: Any, lookups_of: Any, log: logging.Logger) -> None:
    """Hand over the traced requests the native front answered (`HttpFront.take_traces`
    tuples) for their spans (see `_DirectSpans.record_spans`): with the batch processor,
    queued as they are and made into spans by its thread; else made now. Here, in the loop,
    only what cannot wait: the batch's feature lookup, from `lookups_of(model)` (a bounded
    log), and the request's log lines on `log` under its span, as the Python path writes them
    (a 5xx's warning; at debug level, each answer)."""
    direct = _direct
    if direct is None:
        return
    debug = log.isEnabledFor(logging.DEBUG)
    items = []
    for record in records:
        lookup = None
        exec_start = record[9]
        if exec_start > 0:
            lookups = lookups_of(record[1])
            if lookups is not None:
                lookup = _lookup_in(lookups, exec_start, record[10])
        status, error = record[15], record[17]
        if debug or (status >= 500 and error):
            _log_native(direct, record, log)
        items.append((record, lookup))
    add = getattr(direct.processor, "add", None)  # the batch processor's queue
    if add is not None:
        add(items)
        return
    offset = time.time_ns() - time.monotonic_ns()
    for record, lookup in items:
        for span in direct.record_spans(record, lookup, offset):
            direct.processor.on_end(span)


def _log_native(direct: _DirectSpans, record: Any, log: logging.Logger) -> None:
    """The log lines of a native traced request, written with its server span current."""
    from opentelemetry import context, trace

    server = direct.span_context(record[4], record[5], False, direct.sampled)
    token = context.attach(trace.set_span_in_context(_ServerSpanMarker.cls()(server)))
    try:
        status, error = record[15], record[17]
        if status >= 500 and error:
            log.warning("request failed: %s", error)
        log.debug("traced request answered %d", status)
    finally:
        context.detach(token)


# ---------------------------------------------------------------- requests


class RequestSampler:
    """Chooses the requests to trace on the Python paths (the native path counts in C++):
    every n-th, and every one whose traceparent asks for sampling. Loop thread only."""

    __slots__ = ("count", "every")

    def __init__(self, every: int) -> None:
        self.every = every
        self.count = 0

    def sample(self, traceparent: bytes | str | None) -> bool:
        self.count += 1
        if self.count >= self.every:
            self.count = 0
            return True
        return traceparent is not None and traceparent_sampled(traceparent)


def traceparent_sampled(value: bytes | str) -> bool:
    """The W3C trace-flags of `value` ask for sampling (only the flag is read here, as the
    native front does; the parent is validated when the span starts)."""
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if len(value) < 55 or value[2] != "-" or value[35] != "-" or value[52] != "-":
        return False
    try:
        return bool(int(value[53:55], 16) & 1)
    except ValueError:
        return False


def _parent_context(traceparent: bytes | str | None, tracestate: bytes | str | None) -> Any:
    """The caller's span context from W3C headers; a malformed traceparent is ignored (a new
    trace starts), as the W3C Trace Context spec asks."""
    global _propagator
    from opentelemetry.context import Context

    if traceparent is None:
        return Context()  # a new trace, whatever span is current
    if _propagator is None:
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        _propagator = TraceContextTextMapPropagator()
    carrier = {"traceparent": _text(traceparent)}
    if tracestate is not None:
        carrier["tracestate"] = _text(tracestate)
    return _propagator.extract(carrier)


_propagator: Any = None  # the W3C Trace Context propagator, made on first use


def _text(v: bytes | str) -> str:
    return v.decode("latin-1") if isinstance(v, bytes) else v


class _ServerSpanMarker:
    """The current span of a request traced by direct spans (`_DirectSpans`): it carries the
    ids for the children and the log lines; the span itself is emitted when the request ends."""

    _cls: Any = None

    @classmethod
    def cls(cls) -> Any:
        if cls._cls is None:
            from opentelemetry.trace import NonRecordingSpan

            class ServerSpan(NonRecordingSpan):
                pass

            cls._cls = ServerSpan
        return cls._cls


class RequestSpan:
    """The server span of one traced request, current while the request's code runs in the
    loop (`activate`), so the server's log lines carry its trace id."""

    __slots__ = ("attributes", "context", "name", "parent", "sdk_span", "span_context", "start")

    def __init__(
        self,
        name: str,
        traceparent: bytes | str | None,
        tracestate: bytes | str | None,
        attributes: dict[str, Any],
    ) -> None:
        from opentelemetry import trace
        from opentelemetry.trace import SpanKind

        parent_ctx = _parent_context(traceparent, tracestate)
        self.name = name
        self.attributes = attributes
        direct = _direct
        if direct is not None:
            parent = trace.get_current_span(parent_ctx).get_span_context()
            self.parent = parent if parent.is_valid else None
            trace_id = parent.trace_id if parent.is_valid else random.getrandbits(128) or 1
            self.span_context = direct.new_context(trace_id)
            self.start = time.time_ns()
            self.sdk_span = None
            current = _ServerSpanMarker.cls()(self.span_context)
        else:
            self.sdk_span = current = _tracer.start_span(
                name, parent_ctx, kind=SpanKind.SERVER, attributes=attributes
            )
            self.span_context = current.get_span_context()
            self.parent = None
            self.start = 0
        self.context = trace.set_span_in_context(current, parent_ctx)

    def activate(self) -> Any:
        """Make this span current; returns the token for :meth:`deactivate`."""
        from opentelemetry import context

        return context.attach(self.context)

    @staticmethod
    def deactivate(token: Any) -> None:
        from opentelemetry import context

        context.detach(token)

    def traceparent(self) -> str:
        """This span's W3C traceparent (sampled), for the response."""
        c = self.span_context
        return f"00-{c.trace_id:032x}-{c.span_id:016x}-01"

    def trace_id(self) -> str:
        return f"{self.span_context.trace_id:032x}"

    def child(self, name: str, start_ns: int, end_ns: int, **attributes: Any) -> None:
        """A finished child span (wall-clock ns)."""
        _child(name, self.span_context, start_ns, end_ns, attributes)

    def end(self, status: int) -> None:
        """End an HTTP request's span with its response status."""
        self._end("http.response.status_code", status, "HTTP 5xx" if status >= 500 else None)

    def end_rpc(self, code: int) -> None:
        """End a gRPC call's span with its status code (0: OK)."""
        self._end("rpc.grpc.status_code", code, "gRPC error" if code != 0 else None)

    def _end(self, key: str, value: int, error: str | None) -> None:
        from opentelemetry.trace import SpanKind

        span = self.sdk_span
        if span is None:
            assert _direct is not None
            _direct.emit(
                self.name,
                self.span_context,
                self.parent,
                SpanKind.SERVER,
                self.start,
                time.time_ns(),
                {**self.attributes, key: value},
                _status(error),
            )
            return
        span.set_attribute(key, value)
        if error is not None:
            span.set_status(_status(error))
        span.end()


class TraceLogFilter(logging.Filter):
    """Adds ``trace_ids`` to every record: `` trace_id=… span_id=…`` while a traced request's
    span is current, else empty (the server's log format ends with it when tracing is on)."""

    def filter(self, record: logging.LogRecord) -> bool:
        ids = ""
        if enabled:
            from opentelemetry import trace

            c = trace.get_current_span().get_span_context()
            if c.is_valid:
                ids = f" trace_id={c.trace_id:032x} span_id={c.span_id:016x}"
        record.trace_ids = ids
        return True
