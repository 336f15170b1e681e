"""A gRPC service with aiarch embedded, on grpc.aio (default) or the sync thread-pool server.

No protobuf code generation: the methods are registered through a generic handler with msgspec
MessagePack messages (a generated servicer works the same: call the handler from its method).

    python examples/grpc_service.py --port 50051 [--sync]

Each call's deadline bounds its queued inference; a cancelled call removes it from the queue.
"""

from __future__ import annotations

import argparse
import asyncio
from concurrent import futures

import grpc
import msgspec
import numpy as np

import aiarch
from aiarch.integrations import ServiceRuntime
from aiarch.integrations.grpc import aio_unary, sync_unary

SERVICE = "aiarch.example.Classifier"
PREDICT = f"/{SERVICE}/Predict"


class PredictRequest(msgspec.Struct):
    x: list[float]


class PredictReply(msgspec.Struct):
    scores: list[float]


encode = msgspec.msgpack.encode
decode_request = msgspec.msgpack.Decoder(PredictRequest).decode
decode_reply = msgspec.msgpack.Decoder(PredictReply).decode

_rng = np.random.default_rng(0)
W = _rng.standard_normal((4, 2)).astype(np.float32)


def load_models(service: ServiceRuntime) -> None:
    service.add_model(
        "classify",
        lambda x: x @ W,
        inputs=[aiarch.TensorSpec("x", "float32", (4,))],
        # No fill wait: requests that arrive while a batch runs share the next one.
        batching=aiarch.BatchConfig(max_batch_size=32, max_delay_us=0),
    )


def handler_options(service: ServiceRuntime, sync: bool) -> grpc.GenericRpcHandler:
    make = sync_unary if sync else aio_unary
    predict = make(
        service,
        "classify",
        # Decoded in the handler, not by grpc, so that a malformed message is INVALID_ARGUMENT
        # with the decoder's reason; the runtime then checks the row's length and dtype.
        decode=lambda body: [decode_request(body).x],
        encode=lambda y: PredictReply(scores=y[0].tolist()),
    )
    method = grpc.unary_unary_rpc_method_handler(
        predict, request_deserializer=None, response_serializer=encode
    )
    return grpc.method_handlers_generic_handler(SERVICE, {"Predict": method})


async def serve_aio(port: int) -> None:
    service = ServiceRuntime(setup=load_models)
    service.start()
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler_options(service, sync=False),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    try:
        await server.wait_for_termination()
    finally:
        await server.stop(grace=5)  # answers in-flight calls, then the runtime drains
        service.close(drain=True)


def serve_sync(port: int) -> None:
    service = ServiceRuntime(setup=load_models)
    service.start()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    server.add_generic_rpc_handlers((handler_options(service, sync=True),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    try:
        server.wait_for_termination()
    finally:
        server.stop(grace=5).wait()
        service.close(drain=True)


def predict(channel: grpc.Channel, x: list[float], timeout: float = 5.0) -> list[float]:
    """Client side: one Predict call."""
    call = channel.unary_unary(
        PREDICT, request_serializer=encode, response_deserializer=decode_reply
    )
    return list(call(PredictRequest(x=x), timeout=timeout).scores)


if __name__ == "__main__":
    import signal

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=50051)
    parser.add_argument("--sync", action="store_true", help="the thread-pool server")
    args = parser.parse_args()
    # SIGTERM stops the server like Ctrl-C: in-flight calls finish, then the runtime drains.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        if args.sync:
            serve_sync(args.port)
        else:
            asyncio.run(serve_aio(args.port))
    except KeyboardInterrupt:
        pass
