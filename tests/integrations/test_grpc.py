"""gRPC servicers with aiarch embedded: the example served on 127.0.0.1, and deadline,
cancellation and errors passed through, on the sync and the asyncio server."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import Iterator
from concurrent import futures

import numpy as np
import pytest

grpc = pytest.importorskip("grpc", reason="grpcio is not installed (the 'embed' extra)")

import aiarch  # noqa: E402
from aiarch.integrations import ServiceRuntime  # noqa: E402
from aiarch.integrations.grpc import aio_unary, sync_unary  # noqa: E402
from aiarch.serving.process import free_port  # noqa: E402

from .conftest import EXAMPLES, PY  # noqa: E402

sys.path.insert(0, str(EXAMPLES))
import grpc_service as example  # noqa: E402

sys.path.remove(str(EXAMPLES))


@pytest.mark.parametrize("mode", ["aio", "sync"])
def test_example_service_predicts_and_rejects_bad_messages(app_process, mode):
    argv = [PY, str(EXAMPLES / "grpc_service.py"), "--port", "{port}"]
    app = app_process([*argv, "--sync"] if mode == "sync" else argv, ready_path=None)
    channel = grpc.insecure_channel(f"127.0.0.1:{app.port}")
    app.wait_until(lambda: _ready(channel), "serving gRPC")
    x = [0.1, 0.2, 0.3, 0.4]
    np.testing.assert_allclose(example.predict(channel, x), np.array(x) @ example.W, rtol=1e-6)

    with pytest.raises(grpc.RpcError) as e:
        example.predict(channel, [1.0, 2.0])
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "expected shape [-1, 4]" in e.value.details()

    raw = channel.unary_unary(example.PREDICT)
    with pytest.raises(grpc.RpcError) as e:
        raw(b"\x01 not msgpack of a request", timeout=5)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "cannot decode the request" in e.value.details()
    channel.close()
    assert app.terminate() == 0


def _ready(channel: grpc.Channel) -> bool:
    ready = grpc.channel_ready_future(channel)
    try:
        ready.result(timeout=0.5)
        return True
    except grpc.FutureTimeoutError:
        # Unsubscribe its connectivity poller: left running, it raises once the channel closes.
        ready.cancel()
        return False


# -- deadline, cancellation and errors, in-process so the runtime's counters can be read ------
class Gate:
    """The ``gated`` model's batch signals ``entered`` and waits for ``release``."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def model(self, x: np.ndarray) -> np.ndarray:
        self.entered.set()
        self.release.wait(30)
        return x * 2


def _codec(sync: bool, service: ServiceRuntime, model: str) -> grpc.RpcMethodHandler:
    make = sync_unary if sync else aio_unary
    handler = make(
        service,
        model,
        decode=lambda body: np.frombuffer(body, np.float32).reshape(1, -1),
        encode=lambda y: np.ascontiguousarray(y, np.float32).tobytes(),
    )
    return grpc.unary_unary_rpc_method_handler(handler)


@pytest.fixture(params=["aio", "sync"])
def served(request: pytest.FixtureRequest) -> Iterator[tuple[ServiceRuntime, Gate, grpc.Channel]]:
    gate = Gate()

    def failing(x: np.ndarray) -> np.ndarray:
        raise ValueError("scores must be computed on positive rows")

    def setup(svc: ServiceRuntime) -> None:
        spec = [aiarch.TensorSpec("x", "float32", (2,))]
        svc.add_model("gated", gate.model, inputs=spec, warmup=False,
                      batching=aiarch.BatchConfig(max_batch_size=1, max_delay_us=0,
                                                  inline_execution=False))  # fmt: skip
        svc.add_model("failing", failing, inputs=spec, warmup=False)

    service = ServiceRuntime(setup)
    service.start()
    sync = request.param == "sync"
    handlers = grpc.method_handlers_generic_handler(
        "t.T", {m: _codec(sync, service, m) for m in ("gated", "failing")}
    )
    port = free_port()
    if sync:
        server = grpc.server(futures.ThreadPoolExecutor(8))
        server.add_generic_rpc_handlers((handlers,))
        server.add_insecure_port(f"127.0.0.1:{port}")
        server.start()
        stop = lambda: server.stop(grace=None).wait()  # noqa: E731
    else:
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, daemon=True)
        thread.start()

        async def start() -> grpc.aio.Server:
            s = grpc.aio.server()
            s.add_generic_rpc_handlers((handlers,))
            s.add_insecure_port(f"127.0.0.1:{port}")
            await s.start()
            return s

        aserver = asyncio.run_coroutine_threadsafe(start(), loop).result(10)

        def stop() -> None:
            asyncio.run_coroutine_threadsafe(aserver.stop(None), loop).result(10)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)

    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield service, gate, channel
    finally:
        gate.release.set()
        channel.close()
        stop()
        service.close()


def _call(channel: grpc.Channel, model: str) -> grpc.UnaryUnaryMultiCallable:
    return channel.unary_unary(f"/t.T/{model}")


def _row(*values: float) -> bytes:
    return np.array(values, np.float32).tobytes()


def _wait(check, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_call_deadline_expires_the_queued_inference(served):
    service, gate, channel = served
    running = _call(channel, "gated").future(_row(1, 1), timeout=30)
    assert gate.entered.wait(20)
    with pytest.raises(grpc.RpcError) as e:
        _call(channel, "gated")(_row(2, 2), timeout=0.3)
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    gate.release.set()
    assert np.frombuffer(running.result(20), np.float32).tolist() == [2.0, 2.0]
    # The expired call never ran: the runtime expired or cancelled it while queued.
    _wait(lambda: sum(service.runtime.stats("gated")["requests"][k]
                      for k in ("expired", "cancelled")) == 1, "the expired call to resolve")  # fmt: skip
    assert service.runtime.stats("gated")["batches"] == 1


def test_cancelled_call_removes_its_queued_inference(served):
    service, gate, channel = served
    running = _call(channel, "gated").future(_row(1, 1), timeout=30)
    assert gate.entered.wait(20)
    queued = _call(channel, "gated").future(_row(5, 5), timeout=30)
    _wait(lambda: service.runtime.stats("gated")["queue_rows"] == 1, "the call to queue")
    queued.cancel()
    _wait(lambda: service.runtime.stats("gated")["requests"]["cancelled"] == 1, "cancellation")
    gate.release.set()
    assert np.frombuffer(running.result(20), np.float32).tolist() == [2.0, 2.0]
    assert service.runtime.stats("gated")["batches"] == 1


def test_model_error_is_internal_with_the_aiarch_text_and_bad_input_invalid(served):
    _, _, channel = served
    with pytest.raises(grpc.RpcError) as e:
        _call(channel, "failing")(_row(1, 2), timeout=10)
    assert e.value.code() == grpc.StatusCode.INTERNAL
    assert "scores must be computed on positive rows" in e.value.details()
    with pytest.raises(grpc.RpcError) as e:
        _call(channel, "failing")(_row(1, 2, 3), timeout=10)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "expected shape [-1, 2]" in e.value.details()
    with pytest.raises(grpc.RpcError) as e:
        _call(channel, "failing")(b"\x00\x01\x02", timeout=10)  # not a whole float32
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
