"""The KServe v2 gRPC service of `aiarch serve --grpc-port`, driven by the unchanged
`tritonclient.grpc` against a real server on 127.0.0.1 (HTTP beside it on the same worker)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
import pytest

from aiarch.serving.process import free_port

from .conftest import CONFIG, ServerProcess, _require_server_deps, request
from .models import _W

grpcclient = pytest.importorskip(
    "tritonclient.grpc", reason="tritonclient[grpc] is not installed", exc_type=ImportError
)
service_pb2 = pytest.importorskip("tritonclient.grpc.service_pb2")
InferenceServerException = pytest.importorskip("tritonclient.utils").InferenceServerException


class GrpcServer:
    def __init__(self, proc: ServerProcess, grpc_port: int):
        self.proc = proc
        self.port = proc.port
        self.grpc_url = f"127.0.0.1:{grpc_port}"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GrpcServer]:
    _require_server_deps()
    tmp = tmp_path_factory.mktemp("serve-grpc")
    cfg = tmp / "serve.toml"
    cfg.write_text(CONFIG)
    grpc_port = free_port()
    proc = ServerProcess(
        ["--config", str(cfg), "--grpc-port", str(grpc_port), "--log-level", "warning"], tmp
    )
    try:
        proc.wait_ready()
        yield GrpcServer(proc, grpc_port)
    finally:
        proc.stop()


@pytest.fixture
def client(server: GrpcServer) -> Iterator[object]:
    c = grpcclient.InferenceServerClient(server.grpc_url)
    yield c
    c.close()


def _metric(port: int, name: str, **labels: str) -> float:
    text = request(port, "GET", "/metrics").body.decode()
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _wait_metric(port: int, name: str, target: float, **labels: str) -> float:
    """Poll /metrics until the counter reaches `target` (5 s at most); returns the last value."""
    deadline = time.monotonic() + 5
    value = _metric(port, name, **labels)
    while value < target and time.monotonic() < deadline:
        time.sleep(0.02)
        value = _metric(port, name, **labels)
    return value


def _input(name: str, arr: np.ndarray, datatype: str) -> object:
    t = grpcclient.InferInput(name, list(arr.shape), datatype)
    t.set_data_from_numpy(arr)
    return t


def test_health_and_metadata(client) -> None:  # type: ignore[no-untyped-def]
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("lin")
    assert client.is_model_ready("two", "3")
    assert not client.is_model_ready("two", "4")
    assert not client.is_model_ready("no_such_model")
    meta = client.get_server_metadata(as_json=True)
    assert meta["name"] == "aiarch"
    model = client.get_model_metadata("two", as_json=True)
    assert model["name"] == "two" and model["versions"] == ["3"]
    assert [(t["name"], t["datatype"], t["shape"]) for t in model["inputs"]] == [
        ("a", "INT32", ["-1", "3"]),
        ("b", "FP64", ["-1", "2"]),
    ]
    assert [(t["name"], t["datatype"]) for t in model["outputs"]] == [
        ("sum", "INT64"),
        ("double", "FP64"),
    ]


def test_infer_raw_contents(client) -> None:  # type: ignore[no-untyped-def]
    x = np.arange(24, dtype=np.float32).reshape(3, 8) / 7
    result = client.infer("lin", [_input("x", x, "FP32")], request_id="req-7")
    np.testing.assert_allclose(result.as_numpy("y"), x @ _W, rtol=1e-6)
    response = result.get_response()
    assert response.id == "req-7" and response.model_name == "lin"
    assert len(response.raw_output_contents) == 1  # outputs travel raw, as Triton sends them


def test_infer_two_inputs_selected_output(client) -> None:  # type: ignore[no-untyped-def]
    a = np.array([[1, 2, 3], [4, 5, 6]], dtype=np.int32)
    b = np.array([[0.5, 1.5], [2.0, -1.0]], dtype=np.float64)
    result = client.infer(
        "two",
        [_input("a", a, "INT32"), _input("b", b, "FP64")],
        model_version="3",
        outputs=[grpcclient.InferRequestedOutput("double")],
    )
    np.testing.assert_array_equal(result.as_numpy("double"), b * 2)
    assert result.as_numpy("sum") is None
    assert result.get_response().model_version == "3"


def test_infer_typed_contents(client) -> None:  # type: ignore[no-untyped-def]
    """Inputs in typed `contents` (no raw bytes), sent through tritonclient's own stub."""
    stub = client._client_stub
    req = service_pb2.ModelInferRequest(model_name="two")
    a = req.inputs.add(name="a", datatype="INT32", shape=[1, 3])
    a.contents.int_contents.extend([1, 2, 3])
    b = req.inputs.add(name="b", datatype="FP64", shape=[1, 2])
    b.contents.fp64_contents.extend([0.25, 4.0])
    response = stub.ModelInfer(req, timeout=10)
    by_name = dict(zip((o.name for o in response.outputs), response.raw_output_contents))
    assert np.frombuffer(by_name["sum"], "<i8").tolist() == [6]
    assert np.frombuffer(by_name["double"], "<f8").tolist() == [0.5, 8.0]


def _error(fn: object, *args: object, **kwargs: object) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as info:
        fn(*args, **kwargs)  # type: ignore[operator]
    return info.value


def test_errors_map_to_grpc_status(client) -> None:  # type: ignore[no-untyped-def]
    x = np.ones((1, 8), np.float32)
    e = _error(client.infer, "no_such_model", [_input("x", x, "FP32")])
    assert e.status() == "StatusCode.NOT_FOUND" and "no_such_model" in e.message()
    e = _error(client.infer, "lin", [_input("x", np.ones((1, 7), np.float32), "FP32")])
    assert e.status() == "StatusCode.INVALID_ARGUMENT"
    assert "unexpected shape for input 'x'" in e.message()
    e = _error(client.infer, "lin", [_input("x", np.ones((1, 8), np.float64), "FP64")])
    assert e.status() == "StatusCode.INVALID_ARGUMENT" and "expecting FP32" in e.message()
    e = _error(client.infer, "failing", [_input("x", -np.ones((1, 2), np.float32), "FP32")])
    assert e.status() == "StatusCode.INTERNAL"
    e = _error(client.get_model_metadata, "no_such_model")
    assert e.status() == "StatusCode.NOT_FOUND"
    # One failed call affects no other.
    ok = client.infer("failing", [_input("x", np.ones((1, 2), np.float32), "FP32")])
    (out,) = ok.get_response().outputs
    assert ok.as_numpy(out.name).tolist() == [[1.0, 1.0]]


def test_raw_contents_of_the_wrong_size_are_refused(client) -> None:  # type: ignore[no-untyped-def]
    stub = client._client_stub
    req = service_pb2.ModelInferRequest(model_name="lin")
    req.inputs.add(name="x", datatype="FP32", shape=[1, 8])
    req.raw_input_contents.append(b"\0" * 28)
    with pytest.raises(Exception) as info:
        stub.ModelInfer(req, timeout=10)
    assert info.value.code().name == "INVALID_ARGUMENT"  # type: ignore[attr-defined]
    assert "holds 28 bytes, expected 32" in info.value.details()  # type: ignore[attr-defined]


def test_http_and_grpc_share_the_cache(server: GrpcServer, client) -> None:  # type: ignore[no-untyped-def]
    x = np.full((1, 8), 0.125, np.float32)
    hits = _metric(server.port, "aiarch_cache_operations_total", model="cached", op="hits")
    body = (
        b'{"inputs":[{"name":"x","shape":[1,8],"datatype":"FP32","data":'
        + str(x.ravel().tolist()).encode()
        + b"}]}"
    )
    assert request(server.port, "POST", "/v2/models/cached/infer", body).status == 200
    y = client.infer("cached", [_input("x", x, "FP32")]).as_numpy("y")
    np.testing.assert_allclose(y, x @ _W, rtol=1e-6)
    assert _metric(server.port, "aiarch_cache_operations_total", model="cached", op="hits") == (
        hits + 1
    )


def test_deadline_expires_queued_request(server: GrpcServer, client) -> None:  # type: ignore[no-untyped-def]
    """A call whose deadline passes while it waits behind a 200 ms batch fails with
    DEADLINE_EXCEEDED and is never executed."""
    port = server.port
    rows = _metric(port, "aiarch_rows_total", model="slow")
    failed = sum(
        _metric(port, "aiarch_requests_total", model="slow", status=s)
        for s in ("expired", "cancelled")
    )
    x = np.ones((1, 2), np.float32)
    done: list[object] = []
    client.async_infer("slow", [_input("x", x, "FP32")], lambda result, error: done.append(error))
    _wait_metric(port, "aiarch_in_flight_batches", 1, model="slow")
    e = _error(client.infer, "slow", [_input("x", x, "FP32")], client_timeout=0.05)
    assert e.status() == "StatusCode.DEADLINE_EXCEEDED"
    _wait_metric(port, "aiarch_rows_total", rows + 1, model="slow")
    deadline = time.monotonic() + 5
    while not done and time.monotonic() < deadline:
        time.sleep(0.01)
    assert done == [None]  # the call ahead of it succeeded
    after = sum(
        _metric(port, "aiarch_requests_total", model="slow", status=s)
        for s in ("expired", "cancelled")
    )
    assert after == failed + 1
    time.sleep(0.3)  # a wrongly executed late request would have finished by now
    assert _metric(port, "aiarch_rows_total", model="slow") == rows + 1


def test_client_cancel_removes_queued_request(server: GrpcServer, client) -> None:  # type: ignore[no-untyped-def]
    port = server.port
    rows = _metric(port, "aiarch_rows_total", model="slowc")
    cancelled = _metric(port, "aiarch_requests_total", model="slowc", status="cancelled")
    x = np.ones((1, 2), np.float32)
    results: list[object] = []
    client.async_infer(
        "slowc", [_input("x", x, "FP32")], lambda result, error: results.append(error)
    )
    _wait_metric(port, "aiarch_in_flight_batches", 1, model="slowc")
    queued = client.async_infer("slowc", [_input("x", x, "FP32")], lambda result, error: None)
    _wait_metric(port, "aiarch_queue_rows", 1, model="slowc")
    assert _metric(port, "aiarch_queue_rows", model="slowc") == 1
    queued.cancel()
    assert (
        _wait_metric(
            port, "aiarch_requests_total", cancelled + 1, model="slowc", status="cancelled"
        )
        == cancelled + 1
    )
    assert _metric(port, "aiarch_queue_rows", model="slowc") == 0
    _wait_metric(port, "aiarch_rows_total", rows + 1, model="slowc")
    time.sleep(0.3)  # a wrongly executed cancelled request would have finished by now
    assert _metric(port, "aiarch_rows_total", model="slowc") == rows + 1
    assert results == [None]
