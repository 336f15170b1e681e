"""OpenTelemetry tracing of `aiarch serve`: real HTTP on 127.0.0.1, spans caught by the SDK's
in-memory exporter (the server runs in this process, in its own thread and event loop), and
one run of the real CLI writing spans to a file."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("opentelemetry.sdk", reason="opentelemetry-sdk is not installed")
pytest.importorskip(
    "aiarch._core", reason="the aiarch native core is not built", exc_type=ImportError
)

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import aiarch
from aiarch import tracing
from aiarch.serving.config import ModelConfig, ServeConfig
from aiarch.serving.server import Server, make_socket

from .conftest import FRONT_ENDS, HERE, MODELS, read_response, request, running_server

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
SAMPLED = f"00-{TRACE_ID}-{PARENT_ID}-01"
UNSAMPLED = f"00-{TRACE_ID}-{PARENT_ID}-00"


def _body(rows: int = 1) -> bytes:
    data = np.arange(rows * 8, dtype=np.float32).reshape(rows, 8).tolist()
    return json.dumps(
        {"inputs": [{"name": "x", "shape": [rows, 8], "datatype": "FP32", "data": data}]}
    ).encode()


@pytest.fixture(scope="module")
def exporter() -> Iterator[InMemorySpanExporter]:
    exp = InMemorySpanExporter()
    tracing.configure(exp, simple=True)
    yield exp
    tracing.shutdown()


@contextlib.contextmanager
def serving(
    http: str,
    sample: float,
    grpc_port: int | None = None,
    models: list[ModelConfig] | None = None,
) -> Iterator[Server]:
    """`aiarch serve` (the `lin` model unless `models`) in a thread of this process."""
    config = ServeConfig(
        models=models or [ModelConfig(name="lin", source=f"{MODELS}:linear")],
        http=http,
        trace_sample=sample,
        log_level="warning",
        grpc_port=grpc_port,
    )
    server = Server(config, aiarch.Runtime())
    sock = make_socket("127.0.0.1", 0, reuse_port=False)
    listening = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        import uvloop

        loop = uvloop.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(server.serve(sock, on_listening=lambda _: listening.set()))
        except BaseException as e:  # surfaced by the test thread
            failure.append(e)
            listening.set()
        finally:
            loop.close()

    thread = threading.Thread(target=run, name=f"serve-{http}", daemon=True)
    thread.start()
    assert listening.wait(60), "the server did not start listening"
    if failure:
        raise failure[0]
    try:
        yield server
    finally:
        loop = server._stop._loop if server._stop is not None else None  # type: ignore[attr-defined]
        if loop is not None:
            loop.call_soon_threadsafe(server.request_stop)
        thread.join(60)
        assert not thread.is_alive(), "the server did not stop"


def _spans_of(exporter: InMemorySpanExporter, trace_id: str) -> list[Any]:
    return [s for s in exporter.get_finished_spans() if f"{s.context.trace_id:032x}" == trace_id]


def _server_spans(exporter: InMemorySpanExporter) -> list[Any]:
    from opentelemetry.trace import SpanKind

    return [s for s in exporter.get_finished_spans() if s.kind == SpanKind.SERVER]


@pytest.mark.parametrize("http", FRONT_ENDS)
def test_sampled_traceparent_is_traced_with_named_children(
    exporter: InMemorySpanExporter, http: str
) -> None:
    exporter.clear()
    with serving(http, sample=1e-6) as srv:  # the counter never picks: only the header does
        r = request(srv.port, "POST", "/v2/models/lin/infer", _body(), {"traceparent": SAMPLED})
        forwarded = srv.native.forwarded if srv.native is not None else 0
    assert r.status == 200, r.body
    assert forwarded == 0  # on the native front, the native path answered it
    spans = _spans_of(exporter, TRACE_ID)
    by_name = {s.name: s for s in spans}
    assert set(by_name) == {
        "POST /v2/models/lin/infer",
        "queue",
        "execution",
        "encode",
    }, by_name
    root = by_name["POST /v2/models/lin/infer"]
    assert root.parent is not None and f"{root.parent.span_id:016x}" == PARENT_ID
    assert root.parent.is_remote
    assert root.attributes["http.response.status_code"] == 200
    for name in ("queue", "execution", "encode"):
        assert by_name[name].parent.span_id == root.context.span_id, name
    assert by_name["execution"].attributes["aiarch.batch.rows"] >= 1
    q, ex = by_name["queue"], by_name["execution"]
    assert root.start_time <= q.end_time <= ex.start_time + 1_000 <= ex.end_time + 1_000
    assert ex.end_time <= by_name["encode"].start_time + 1_000
    # The response carries the server span's own traceparent, in the caller's trace.
    assert r.headers["traceparent"] == f"00-{TRACE_ID}-{root.context.span_id:016x}-01"


@pytest.mark.parametrize("http", FRONT_ENDS)
def test_unsampled_requests_produce_no_spans(exporter: InMemorySpanExporter, http: str) -> None:
    exporter.clear()
    with serving(http, sample=1e-6) as srv:
        plain = request(srv.port, "POST", "/v2/models/lin/infer", _body())
        declined = request(
            srv.port, "POST", "/v2/models/lin/infer", _body(), {"traceparent": UNSAMPLED}
        )
    assert plain.status == declined.status == 200
    assert "traceparent" not in plain.headers and "traceparent" not in declined.headers
    assert exporter.get_finished_spans() == ()


def test_sampling_zero_keeps_the_native_path_and_makes_no_spans(
    exporter: InMemorySpanExporter,
) -> None:
    exporter.clear()
    with serving("native", sample=0.0) as srv:
        assert srv.native is not None and srv.native.front.trace_every == 0
        for _ in range(20):
            r = request(srv.port, "POST", "/v2/models/lin/infer", _body(), {"traceparent": SAMPLED})
            assert r.status == 200 and "traceparent" not in r.headers
        assert srv.native.forwarded == 0  # every request was answered in C++
    assert exporter.get_finished_spans() == ()


def test_sample_rate_traces_every_nth_request_on_the_native_path(
    exporter: InMemorySpanExporter,
) -> None:
    exporter.clear()
    with serving("native", sample=0.25) as srv:
        assert srv.native is not None and srv.native.front.trace_every == 4
        traced = 0
        for _ in range(20):
            r = request(srv.port, "POST", "/v2/models/lin/infer", _body())
            assert r.status == 200
            traced += "traceparent" in r.headers
        forwarded = srv.native.forwarded
    assert traced == 5  # 20 requests, one in four
    assert forwarded == 0  # traced or not, every one was answered in C++
    assert len(_server_spans(exporter)) == 5


@pytest.mark.parametrize("http", FRONT_ENDS)
@pytest.mark.parametrize(
    "bad",
    [
        f"00-{'0' * 32}-{PARENT_ID}-01",  # all-zero trace id
        f"00-{TRACE_ID}-{'0' * 16}-01",  # all-zero parent id
        f"ff-{TRACE_ID}-{PARENT_ID}-01",  # forbidden version
        f"00-{TRACE_ID[:-1]}x-{PARENT_ID}-01",  # not hex
        "garbage",
    ],
)
def test_malformed_traceparent_starts_a_new_trace(
    exporter: InMemorySpanExporter, http: str, bad: str
) -> None:
    exporter.clear()
    with serving(http, sample=1.0) as srv:
        r = request(srv.port, "POST", "/v2/models/lin/infer", _body(), {"traceparent": bad})
    assert r.status == 200, r.body  # ignored, never a 400
    (root,) = _server_spans(exporter)
    assert root.parent is None  # a new trace: the bad header is not its parent
    assert f"{root.context.trace_id:032x}" != TRACE_ID
    assert r.headers["traceparent"] == (
        f"00-{root.context.trace_id:032x}-{root.context.span_id:016x}-01"
    )
    names = {s.name for s in _spans_of(exporter, f"{root.context.trace_id:032x}")}
    assert {"queue", "execution", "encode"} <= names


def test_traced_error_is_marked_and_answered(exporter: InMemorySpanExporter) -> None:
    """A traced request that fails is answered as usual, with its span marked."""
    exporter.clear()
    with serving("native", sample=1.0) as srv:
        r = request(srv.port, "POST", "/v2/models/nope/infer", _body(), {"traceparent": SAMPLED})
        ok = request(srv.port, "POST", "/v2/models/lin/infer", b"{not json", {})
    assert r.status == 404 and ok.status == 400
    roots = {s.name: s for s in _server_spans(exporter)}
    assert roots["POST /v2/models/nope/infer"].attributes["http.response.status_code"] == 404
    assert roots["POST /v2/models/lin/infer"].attributes["http.response.status_code"] == 400


def test_pipelined_traced_and_native_requests_keep_their_order(
    exporter: InMemorySpanExporter,
) -> None:
    """Traced requests amid untraced ones in one pipeline: all answered natively, in request
    order, each traced response's traceparent naming its server span."""
    exporter.clear()
    bodies = [_body(rows) for rows in (1, 2, 3, 4, 5, 6)]
    with (
        serving("native", sample=0.5) as srv,
        socket.create_connection(("127.0.0.1", srv.port), timeout=20) as s,
    ):
        wire = b"".join(
            b"POST /v2/models/lin/infer HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n%s"
            % (len(b), b)
            for b in bodies
        )
        s.sendall(wire)
        with s.makefile("rb") as f:
            responses = [read_response(f) for _ in bodies]
        forwarded = srv.native.forwarded  # type: ignore[union-attr]
    rows = [len(r.json()["outputs"][0]["data"]) // 4 for r in responses]  # type: ignore[index]
    assert rows == [1, 2, 3, 4, 5, 6]
    assert forwarded == 0
    sent = [r.headers["traceparent"] for r in responses if "traceparent" in r.headers]
    assert len(sent) == 3
    roots = _server_spans(exporter)
    assert sorted(sent) == sorted(
        f"00-{s.context.trace_id:032x}-{s.context.span_id:016x}-01" for s in roots
    )


def test_application_provider_traces_sampled_requests_on_the_python_path(
    exporter: InMemorySpanExporter,
) -> None:
    """Under an application's provider, spans are made only through its tracer, which picks
    the ids: the native front forwards the sampled requests to the Python path to trace."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    exporter.clear()
    app_provider = TracerProvider()
    app_provider.add_span_processor(SimpleSpanProcessor(exporter))
    server_provider, direct = tracing.tracer_provider(), tracing._direct
    tracing.enable(app_provider)
    try:
        with serving("native", sample=1e-6) as srv:
            assert srv.native is not None and not srv.native.front.trace_native
            r = request(srv.port, "POST", "/v2/models/lin/infer", _body(), {"traceparent": SAMPLED})
            plain = request(srv.port, "POST", "/v2/models/lin/infer", _body())
            forwarded = srv.native.forwarded
    finally:
        tracing.enable(server_provider)
        tracing._direct = direct  # the module's provider makes its spans directly again
    assert r.status == plain.status == 200
    assert forwarded == 1  # the sampled one; the other stayed native
    (root,) = _server_spans(exporter)
    assert f"{root.context.trace_id:032x}" == TRACE_ID
    assert r.headers["traceparent"] == f"00-{TRACE_ID}-{root.context.span_id:016x}-01"
    assert {"queue", "execution", "encode"} <= {s.name for s in _spans_of(exporter, TRACE_ID)}


def test_runtime_infer_under_an_application_span(exporter: InMemorySpanExporter) -> None:
    """Embedded: Runtime.infer under a recording span adds queue and execution spans."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    exporter.clear()
    rt = aiarch.Runtime()
    rt.add_model("double", lambda x: x * 2, inputs=[aiarch.TensorSpec("x", "float32", (4,))])
    app_provider = TracerProvider()  # the application's own
    app_provider.add_span_processor(SimpleSpanProcessor(exporter))
    server_provider, direct = tracing.tracer_provider(), tracing._direct
    tracing.enable(app_provider)
    tracer = app_provider.get_tracer("app")

    async def main() -> Any:
        with tracer.start_as_current_span("handler") as parent:
            y = await rt.infer("double", np.ones((1, 4), np.float32))
        return parent, y

    try:
        parent, y = asyncio.run(main())
    finally:
        rt.close()
        tracing.enable(server_provider)
        tracing._direct = direct  # the module's provider makes its spans directly again
    np.testing.assert_array_equal(y, np.full((1, 4), 2, np.float32))
    children = {
        s.name: s
        for s in exporter.get_finished_spans()
        if s.parent is not None and s.parent.span_id == parent.get_span_context().span_id
    }
    assert set(children) == {"queue", "execution"}
    assert children["execution"].attributes["aiarch.model"] == "double"


def test_cli_trace_sample_writes_spans_and_log_lines_carry_trace_ids(tmp_path: Path) -> None:
    """The real `aiarch serve --trace-sample` with spans written to AIARCH_TRACE_FILE; a
    traced request that fails on the server logs a line with its trace id."""
    spans = tmp_path / "spans.jsonl"
    env = {"AIARCH_TRACE_FILE": str(spans)}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        with running_server(
            [
                "--model",
                f"lin={MODELS}:linear",
                "--model",
                f"failing={MODELS}:failing",
                "--trace-sample",
                "0.000001",
                "--log-level",
                "info",
            ],
            tmp_path,
        ) as srv:
            ok = request(
                srv.port, "POST", "/v2/models/lin/infer", _body(), {"traceparent": SAMPLED}
            )
            failed = request(
                srv.port,
                "POST",
                "/v2/models/failing/infer",
                json.dumps(
                    {
                        "inputs": [
                            {"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [-1, 2]}
                        ]
                    }
                ).encode(),
                {"traceparent": SAMPLED.replace(PARENT_ID, "1" * 16)},
            )
            log_path = srv.log
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    assert ok.status == 200 and failed.status == 500
    exported = [json.loads(line) for line in spans.read_text().splitlines() if line.strip()]
    names = {s["name"] for s in exported if s["trace_id"] == TRACE_ID}
    assert {"POST /v2/models/lin/infer", "queue", "execution", "encode"} <= names
    log_text = Path(log_path).read_text()
    failing_lines = [line for line in log_text.splitlines() if "request failed" in line]
    assert failing_lines and all(f"trace_id={TRACE_ID}" in line for line in failing_lines)


def test_grpc_traceparent_metadata_is_traced(exporter: InMemorySpanExporter) -> None:
    """ModelInfer with a sampled traceparent in its metadata: a server span in the caller's
    trace with queue and execution children, and the span's traceparent sent back."""
    grpc = pytest.importorskip("grpc")
    from aiarch.serving.proto import open_inference_pb2 as pb

    exporter.clear()
    with serving("native", sample=1e-6, grpc_port=0) as srv:
        assert srv.grpc_port is not None
        with grpc.insecure_channel(f"127.0.0.1:{srv.grpc_port}") as channel:
            infer = channel.unary_unary(
                "/inference.GRPCInferenceService/ModelInfer",
                request_serializer=pb.ModelInferRequest.SerializeToString,
                response_deserializer=pb.ModelInferResponse.FromString,
            )
            req = pb.ModelInferRequest(model_name="lin")
            req.inputs.add(name="x", datatype="FP32", shape=[1, 8])
            req.raw_input_contents.append(np.ones((1, 8), np.float32).tobytes())
            response, call = infer.with_call(req, metadata=(("traceparent", SAMPLED),), timeout=10)
            untraced, plain_call = infer.with_call(req, timeout=10)
    assert len(response.raw_output_contents) == 1 and len(untraced.raw_output_contents) == 1
    (root,) = _server_spans(exporter)
    assert f"{root.context.trace_id:032x}" == TRACE_ID
    assert f"{root.parent.span_id:016x}" == PARENT_ID
    assert root.attributes["rpc.grpc.status_code"] == 0
    children = {s.name for s in _spans_of(exporter, TRACE_ID) if s.parent == root.context}
    assert {"queue", "execution"} <= children
    sent = dict(call.initial_metadata())
    assert sent["traceparent"] == f"00-{TRACE_ID}-{root.context.span_id:016x}-01"
    assert "traceparent" not in dict(plain_call.initial_metadata())


def test_feature_lookup_span_under_execution(
    exporter: InMemorySpanExporter, tmp_path: Path
) -> None:
    """A model with feature inputs: its traced request's execution span has the batch's
    feature lookup as a child, inside the execution's time."""
    import time

    from aiarch.features import Entity, Feature, FeatureStore, FeatureView

    home, store = tmp_path / "home", f"native://{tmp_path / 'online'}"
    fs = FeatureStore(store, home=home)
    fs.apply(
        Entity("card"),
        FeatureView("txn", "card", (Feature("amount_7d"), Feature("count_1h")), ttl=3600),
    )
    fs.write(
        "txn",
        {"card": [1], "event_timestamp": [time.time_ns()], "amount_7d": [10.0], "count_1h": [2.0]},
    )
    fs.save()
    model = ModelConfig(
        name="fraud",
        source=f"{HERE.parent / 'features' / 'serving_models.py'}:score",
        features={"store": store, "home": str(home), "lookups": ["txn:amount_7d", "txn:count_1h"]},
    )
    body = json.dumps(
        {"inputs": [{"name": "entity_id", "shape": [1], "datatype": "INT64", "data": [1]}]}
    ).encode()
    exporter.clear()
    with serving("native", sample=1e-6, models=[model]) as srv:
        r = request(srv.port, "POST", "/v2/models/fraud/infer", body, {"traceparent": SAMPLED})
    assert r.status == 200, r.body
    assert r.json()["outputs"][0]["data"] == [12.0]  # type: ignore[index]
    spans = {s.name: s for s in _spans_of(exporter, TRACE_ID)}
    lookup, execution = spans["feature_lookup"], spans["execution"]
    assert lookup.parent.span_id == execution.context.span_id
    assert execution.start_time <= lookup.start_time <= lookup.end_time <= execution.end_time


def _record(**fields: Any) -> tuple[Any, ...]:
    """An `HttpFront.take_traces` record: a request answered after a batch of 3 rows."""
    record = {
        "path": b"/v2/models/lin/infer",
        "model": "lin",
        "traceparent": None,
        "tracestate": None,
        "trace_id": int(TRACE_ID, 16),
        "span_id": 0x1234,
        "start": 1_000,
        "submit": 1_100,
        "enqueue": 1_150,
        "exec_start": 1_200,
        "exec_end": 1_500,
        "rows": 3,
        "encode_start": 1_600,
        "encode_end": 1_700,
        "end": 1_800,
        "status": 200,
        "cache_hit": False,
        "error": "",
    }
    record.update(fields)
    return tuple(record.values())


def _by_name(lines: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Exported span dicts by name, span and parent ids replaced by the spans' names (the
    children's ids are random)."""
    names = {s["span_id"]: s["name"] for s in lines}
    return {
        s["name"]: {
            **s,
            "span_id": s["name"],
            "parent_id": names.get(s["parent_id"], s["parent_id"]),
        }
        for s in lines
    }


@pytest.mark.parametrize(
    "fields, lookup",
    [
        ({}, None),
        ({"traceparent": SAMPLED, "tracestate": "k=v"}, (1_250, 1_300)),
        ({"cache_hit": True, "exec_start": 0, "exec_end": 0, "enqueue": 0}, None),
        ({"status": 500, "error": "model raised", "encode_start": 0, "encode_end": 0}, None),
        ({"status": 503, "error": "queue full", "exec_start": 0, "encode_start": 0}, None),
    ],
    ids=["executed", "caller-parent-and-lookup", "cache-hit", "failed-batch", "refused"],
)
def test_native_records_written_as_json_lines_match_the_spans_made_from_them(
    fields: dict[str, Any], lookup: tuple[int, int] | None
) -> None:
    """The local exporter writes a native traced request's spans straight from its record:
    the same lines, but for the random child ids, as exporting the SDK spans made from it."""
    import io

    from opentelemetry.sdk.resources import Resource

    record, offset = _record(**fields), 10**18
    direct = tracing._DirectSpans(Resource.create({}))
    via_spans, direct_out = io.BytesIO(), io.BytesIO()
    tracing.json_lines_exporter(via_spans).export(direct.record_spans(record, lookup, offset))
    tracing.json_lines_exporter(direct_out).export_records([(record, lookup)], offset)
    expected = [json.loads(line) for line in via_spans.getvalue().splitlines()]
    written = [json.loads(line) for line in direct_out.getvalue().splitlines()]
    assert _by_name(written) == _by_name(expected)
    server = _by_name(written)[f"POST {record[0].decode()}"]
    assert server["span_id"] == server["name"] and written[-1]["span_id"] == f"{0x1234:016x}"
    assert server["parent_id"] == (PARENT_ID if fields.get("traceparent") else None)
    assert server["start_ns"] == 1_000 + offset and server["end_ns"] == 1_800 + offset


def test_batch_processor_exports_what_it_queued_and_drops_beyond_its_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Spans and native records wait in the processor's queue (bounded by the SDK's
    OTEL_BSP_MAX_QUEUE_SIZE) until its thread exports them in a batch; a flush exports them
    now; what does not fit is dropped and counted, not exported later."""
    from opentelemetry.sdk.resources import Resource

    monkeypatch.setenv("OTEL_BSP_MAX_QUEUE_SIZE", "4")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "60000")  # only a flush exports here
    exp = InMemorySpanExporter()
    direct = tracing._DirectSpans(Resource.create({}))
    processor = tracing._batch_export_class()(exp, direct)
    try:
        span = direct.make(
            "encode", direct.new_context(1), None, direct.internal, 1, 2, {}, tracing._status(None)
        )
        processor.on_end(span)
        records = [(_record(span_id=n), None) for n in range(1, 6)]
        processor.add(records)  # room for 3 of the 5
        assert processor.dropped == 2
        assert exp.get_finished_spans() == ()  # queued, not exported per span
        processor.force_flush()
        exported = exp.get_finished_spans()
        servers = [s for s in exported if s.name.startswith("POST ")]
        assert sorted(s.context.span_id for s in servers) == [1, 2, 3]
        assert len(exported) == 1 + 3 * 4  # the span; per record server, queue, execution, encode
        processor.add(records[3:])  # room again once exported
        assert processor.dropped == 2
    finally:
        processor.shutdown()
    assert len(exp.get_finished_spans()) == 1 + 5 * 4  # shutdown exported the rest


def test_native_traced_requests_through_the_batch_processor(
    exporter: InMemorySpanExporter,
) -> None:
    """With the server's default batch processor (not the simple one the other tests use),
    the native front's traced requests become spans in its export thread: all of them are
    exported by shutdown, each response's traceparent naming its server span."""
    other = InMemorySpanExporter()
    tracing.configure(other)
    try:
        with serving("native", sample=0.5) as srv:
            responses = [
                request(srv.port, "POST", "/v2/models/lin/infer", _body()) for _ in range(6)
            ]
            forwarded = srv.native.forwarded  # type: ignore[union-attr]
        tracing.shutdown()
    finally:
        tracing.configure(exporter, simple=True)
    sent = sorted(r.headers["traceparent"] for r in responses if "traceparent" in r.headers)
    assert forwarded == 0 and len(sent) == 3
    roots = _server_spans(other)
    assert sent == sorted(
        f"00-{s.context.trace_id:032x}-{s.context.span_id:016x}-01" for s in roots
    )
    for root in roots:
        children = [
            s
            for s in other.get_finished_spans()
            if s.parent and s.parent.span_id == root.context.span_id
        ]
        assert {s.name for s in children} == {"queue", "execution", "encode"}


def test_native_traced_request_is_logged_under_its_span(
    exporter: InMemorySpanExporter, caplog: pytest.LogCaptureFixture
) -> None:
    """At debug level, a traced request the native path answered is logged as the Python path
    logs one, with its server span current: the line carries its trace and span ids."""
    import logging

    caplog.set_level(logging.DEBUG, logger="aiarch.serving")
    caplog.handler.addFilter(tracing.TraceLogFilter())
    with serving("native", sample=1e-6) as srv:
        r = request(srv.port, "POST", "/v2/models/lin/infer", _body(), {"traceparent": SAMPLED})
        forwarded = srv.native.forwarded  # type: ignore[union-attr]
    assert r.status == 200 and forwarded == 0
    span_id = r.headers["traceparent"].split("-")[2]
    (line,) = [x for x in caplog.records if x.getMessage() == "traced request answered 200"]
    assert line.trace_ids == f" trace_id={TRACE_ID} span_id={span_id}"  # type: ignore[attr-defined]
