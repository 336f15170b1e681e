"""The KServe v2 gRPC service (`inference.GRPCInferenceService`) of `aiarch serve --grpc-port`.

It runs on grpc.aio in the worker's own event loop, beside the HTTP front end, and answers
from the same `App` state (model entries, canary routes, readiness) and the same
`runtime.infer` path, so a gRPC request is batched with HTTP requests, hits the same cache and
is counted in the same statistics.

- Methods: ServerLive, ServerReady, ModelReady, ServerMetadata, ModelMetadata, ModelInfer.
  Others (ModelConfig, statistics, repository, shared memory, streaming) answer UNIMPLEMENTED.
- Tensors: inputs in `raw_input_contents` (little-endian, row-major; BYTES length-prefixed)
  or in typed `contents`; outputs always in `raw_output_contents`, as Triton answers.
- Deadline: the call's deadline (else the request's `timeout` parameter in µs, else the
  server's default) is the request's deadline in the batcher: a request whose deadline
  passes while queued is never executed.
- Cancellation: grpc.aio cancels the handler's task when the client cancels or goes away,
  and cancelling the task awaiting `runtime.infer` removes the queued request.
- Errors: an `AiarchError` maps through its native status code onto the gRPC code of the
  same name, the server's own `HttpError`s by HTTP status (`grpc_status`, the one table). The
  message is the one the HTTP front end sends.
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import TYPE_CHECKING, Any

import grpc
import msgspec
import numpy as np

from aiarch.errors import AiarchError, DeadlineExceededError

from . import v2
from .app import SERVER_NAME, _version
from .errors import HttpError, status_for_exception
from .grpc_status import code_for_error, code_for_http_status
from .proto import open_inference_pb2 as pb
from .tracing import RequestSampler, RequestSpan

if TYPE_CHECKING:
    from .app import App
    from .entry import ModelEntry

__all__ = ["SERVICE_NAME", "GrpcInferenceService", "grpc_code_for_exception", "start_grpc"]

log = logging.getLogger("aiarch.serving")

SERVICE_NAME = "inference.GRPCInferenceService"
"""The wire name clients call (`/inference.GRPCInferenceService/ModelInfer`)."""

EXTENSIONS = ["schedule_policy", "parameters"]
"""Triton extensions the gRPC service honours (request `priority` and `timeout` parameters)."""

_CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
"""The `InferTensorContents` field that carries each datatype (FP16/BF16: raw only)."""

_MAX_TIMEOUT_US = 86_400_000_000
"""Longest `timeout` parameter a request may carry (one day), as over HTTP."""
_MAX_PRIORITY = 0xFFFFFFFF


def grpc_code_for_exception(exc: BaseException) -> tuple[grpc.StatusCode, str, tuple[Any, ...]]:
    """(gRPC code, message, trailing metadata) of a failed call; the message and the
    Retry-After of an overload are those of the HTTP answer. Called once per failed call."""
    status, message, headers = status_for_exception(exc)
    if isinstance(exc, AiarchError):
        return code_for_error(exc), message, headers
    return code_for_http_status(status), message, headers


def _param_value(p: Any) -> Any:
    kind = p.WhichOneof("parameter_choice")
    return None if kind is None else getattr(p, kind)


def _count(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _shape(t: Any) -> list[int]:
    shape = list(t.shape)
    if any(d < 0 for d in shape):
        raise HttpError(400, f"input '{t.name}' has a negative dimension in shape {shape}")
    return shape


def _from_raw(t: Any, buf: bytes) -> np.ndarray:
    dtype = v2.v2_to_np(t.datatype)
    shape = _shape(t)
    if dtype.kind == "O":
        return v2._bytes_tensor(memoryview(buf), shape)
    expected = _count(shape) * dtype.itemsize
    if len(buf) != expected:
        raise HttpError(
            400,
            f"input '{t.name}': raw_input_contents holds {len(buf)} bytes, expected {expected} "
            f"for {t.datatype} of shape {shape}",
        )
    return np.frombuffer(buf, dtype=dtype).reshape(shape)


def _from_contents(t: Any) -> np.ndarray:
    dtype = v2.v2_to_np(t.datatype)
    shape = _shape(t)
    field = _CONTENTS_FIELD.get(t.datatype)
    if field is None:
        raise HttpError(
            400, f"input '{t.name}': {t.datatype} data must be sent in raw_input_contents"
        )
    values = getattr(t.contents, field)
    count = _count(shape)
    if len(values) != count:
        raise HttpError(
            400,
            f"input '{t.name}': contents.{field} holds {len(values)} elements, expected {count} "
            f"for shape {shape}",
        )
    if dtype.kind == "O":
        arr = np.empty(count, dtype=object)
        arr[:] = list(values)
        return arr.reshape(shape)
    try:
        return np.array(values, dtype=dtype).reshape(shape)
    except OverflowError as e:
        raise HttpError(
            400, f"input '{t.name}': value out of range for {t.datatype}: {e}"
        ) from None


def _raw_output(arr: Any, datatype: str) -> bytes:
    if datatype == "BYTES":
        return v2._bytes_payload(np.asarray(arr))
    return np.ascontiguousarray(arr, dtype=v2.DATATYPES[datatype]).tobytes()


class GrpcInferenceService:
    """The handlers of `inference.GRPCInferenceService`; one per worker, every method runs in
    the worker's event loop, once per call."""

    def __init__(
        self, app: App, runtime: Any, request_timeout_s: float | None, trace_every: int = 0
    ) -> None:
        self.app = app
        self.runtime = runtime
        self.request_timeout_s = request_timeout_s
        self.trace_sampler = RequestSampler(trace_every) if trace_every else None
        """Chooses the calls to trace (every n-th, and those whose `traceparent` metadata asks
        for sampling); None when tracing is off."""

    def handler(self) -> grpc.GenericRpcHandler:
        """The generic handler registering every method under `SERVICE_NAME`."""

        def unary(fn: Any, request: Any, response: Any) -> grpc.RpcMethodHandler:
            return grpc.unary_unary_rpc_method_handler(
                fn,
                request_deserializer=request.FromString,
                response_serializer=response.SerializeToString,
            )

        return grpc.method_handlers_generic_handler(
            SERVICE_NAME,
            {
                "ServerLive": unary(self.server_live, pb.ServerLiveRequest, pb.ServerLiveResponse),
                "ServerReady": unary(
                    self.server_ready, pb.ServerReadyRequest, pb.ServerReadyResponse
                ),
                "ModelReady": unary(self.model_ready, pb.ModelReadyRequest, pb.ModelReadyResponse),
                "ServerMetadata": unary(
                    self.server_metadata, pb.ServerMetadataRequest, pb.ServerMetadataResponse
                ),
                "ModelMetadata": unary(
                    self.model_metadata, pb.ModelMetadataRequest, pb.ModelMetadataResponse
                ),
                "ModelInfer": unary(self.model_infer, pb.ModelInferRequest, pb.ModelInferResponse),
            },
        )

    # -- health and metadata ---------------------------------------------------------------
    async def server_live(self, request: Any, context: Any) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def server_ready(self, request: Any, context: Any) -> Any:
        return pb.ServerReadyResponse(ready=self.app.is_ready())

    async def model_ready(self, request: Any, context: Any) -> Any:
        try:
            entry = self.app._entry(request.name, request.version or None)
        except (HttpError, AiarchError):
            # As over HTTP, where an unknown model is a 404 that clients read as "not ready".
            return pb.ModelReadyResponse(ready=False)
        ready = self.runtime.model_info(entry.runtime_name).ready and not self.app.draining
        return pb.ModelReadyResponse(ready=ready)

    async def server_metadata(self, request: Any, context: Any) -> Any:
        return pb.ServerMetadataResponse(
            name=SERVER_NAME, version=_version(), extensions=EXTENSIONS
        )

    async def model_metadata(self, request: Any, context: Any) -> Any:
        try:
            entry = self.app._entry(request.name, request.version or None)
        except Exception as e:
            await self._abort(context, e)
        meta = msgspec.json.decode(entry.metadata_json)

        def tensors(specs: list[dict[str, Any]]) -> list[Any]:
            return [
                pb.ModelMetadataResponse.TensorMetadata(
                    name=s["name"], datatype=s["datatype"], shape=s["shape"]
                )
                for s in specs
            ]

        return pb.ModelMetadataResponse(
            name=meta["name"],
            versions=meta["versions"],
            platform=meta["platform"],
            inputs=tensors(meta["inputs"]),
            outputs=tensors(meta["outputs"]),
        )

    # -- inference -------------------------------------------------------------------------
    async def model_infer(self, request: Any, context: Any) -> Any:
        sampler = self.trace_sampler
        if sampler is not None:
            traceparent = _metadata(context, "traceparent")
            if sampler.sample(traceparent):
                return await self._infer_traced(request, context, traceparent)
        try:
            return await self._infer(request, context)
        except asyncio.CancelledError:
            raise  # the client cancelled or went away: nothing to answer
        except Exception as e:
            await self._abort(context, e)

    async def _infer_traced(self, request: Any, context: Any, traceparent: str | None) -> Any:
        """`model_infer` under a server span; the span's traceparent is sent back as initial
        metadata."""
        span = RequestSpan(
            f"{SERVICE_NAME}/ModelInfer",
            traceparent,
            _metadata(context, "tracestate"),
            {"rpc.system": "grpc", "rpc.method": "ModelInfer", "aiarch.model": request.model_name},
        )
        token = span.activate()
        try:
            await context.send_initial_metadata((("traceparent", span.traceparent()),))
            try:
                response = await self._infer(request, context)
            except asyncio.CancelledError:
                span.end_rpc(grpc.StatusCode.CANCELLED.value[0])
                raise
            except Exception as e:
                code, message, headers = grpc_code_for_exception(e)
                span.end_rpc(code.value[0])
                if headers:
                    context.set_trailing_metadata(headers)
                await context.abort(code, message)
            span.end_rpc(0)
            return response
        finally:
            span.deactivate(token)

    async def _infer(self, request: Any, context: Any) -> Any:
        app = self.app
        model = request.model_name
        version = request.model_version or None
        entry: ModelEntry = app._entry(model, version)
        params = (
            {k: _param_value(v) for k, v in request.parameters.items()}
            if request.parameters
            else None
        )
        route = app.routes.get(model) if version is None else None
        if route is not None:
            entry = route.pick(_route_key(context), params)
        x = entry.arrange([t.name for t in request.inputs], self._inputs(request))
        select = self._select(request, entry)
        timeout = self._timeout(context, params)
        priority = _priority(params)
        pending = self.runtime.infer(entry.runtime_name, x, timeout_s=timeout, priority=priority)
        if route is not None and route.shadow is not None:
            route.mirror(self.runtime.infer, x)
        result = await pending
        outputs = result if isinstance(result, tuple) else (result,)
        if entry.check is not None:
            entry.check(outputs, x)
        if len(outputs) != len(entry.output_names):
            raise HttpError(
                500, f"model returned {len(outputs)} outputs, expected {len(entry.output_names)}"
            )
        response = pb.ModelInferResponse(
            model_name=entry.name, model_version=entry.version, id=request.id
        )
        names, datatypes = entry.output_names, entry.output_datatypes
        raw = response.raw_output_contents
        for i in select:
            arr = outputs[i]
            response.outputs.add(name=names[i], datatype=datatypes[i], shape=np.shape(arr))
            raw.append(_raw_output(arr, datatypes[i]))
        return response

    @staticmethod
    def _inputs(request: Any) -> list[np.ndarray]:
        inputs = request.inputs
        raw = request.raw_input_contents
        if not raw:
            return [_from_contents(t) for t in inputs]
        if len(raw) != len(inputs):
            raise HttpError(
                400,
                f"raw_input_contents has {len(raw)} entries for {len(inputs)} inputs; "
                "send every input raw, or every input in contents",
            )
        for t in inputs:
            if t.HasField("contents"):
                raise HttpError(
                    400, f"input '{t.name}' has contents while raw_input_contents is used"
                )
        return [_from_raw(t, buf) for t, buf in zip(inputs, raw)]

    @staticmethod
    def _select(request: Any, entry: ModelEntry) -> list[int]:
        if not request.outputs:
            return list(range(len(entry.output_names)))
        select = []
        for out in request.outputs:
            i = entry.output_index.get(out.name)
            if i is None:
                raise HttpError(
                    400, f"unexpected inference output '{out.name}' for model '{entry.name}'"
                )
            if "classification" in out.parameters:
                raise HttpError(400, "classification outputs are not supported")
            select.append(i)
        return select

    def _timeout(self, context: Any, params: dict[str, Any] | None) -> float | None:
        timeout = self.request_timeout_s
        if params:
            t = params.get("timeout")
            if t is not None:
                if type(t) is not int or not 0 <= t <= _MAX_TIMEOUT_US:
                    raise HttpError(
                        400,
                        "parameter 'timeout' must be an integer number of microseconds from 0 "
                        f"(none) to {_MAX_TIMEOUT_US} (one day)",
                    )
                if t:
                    timeout = t / 1e6
        remaining = context.time_remaining()
        if remaining is not None and math.isfinite(remaining):
            if remaining <= 0:
                raise DeadlineExceededError("the call's deadline passed before it was queued")
            timeout = remaining if timeout is None else min(timeout, remaining)
        return timeout

    async def _abort(self, context: Any, exc: BaseException) -> None:
        code, message, headers = grpc_code_for_exception(exc)
        if headers:
            context.set_trailing_metadata(headers)
        await context.abort(code, message)


def _metadata(context: Any, key: str) -> str | None:
    for k, value in context.invocation_metadata() or ():
        if k == key:
            return value if isinstance(value, str) else value.decode("latin-1")
    return None


def _route_key(context: Any) -> bytes | None:
    for key, value in context.invocation_metadata() or ():
        if key == "x-route-key":
            return value.encode() if isinstance(value, str) else value
    return None


def _priority(params: dict[str, Any] | None) -> int:
    if not params:
        return 0
    pr = params.get("priority", 0)
    if type(pr) is not int or not 0 <= pr <= _MAX_PRIORITY:
        raise HttpError(
            400,
            "parameter 'priority' must be an integer from 0 (the model's default) "
            "to the model's priority levels",
        )
    return pr


async def start_grpc(
    app: App,
    runtime: Any,
    host: str,
    port: int,
    *,
    request_timeout_s: float | None,
    max_message_bytes: int,
    reuse_port: bool,
    trace_every: int = 0,
) -> tuple[grpc.aio.Server, int]:
    """Bind and start the gRPC service in the running loop; returns the server and its port.
    Raises OSError when the address cannot be bound."""
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", -1),
            # One port per worker group: without --workers a port in use is an error.
            ("grpc.so_reuseport", 1 if reuse_port else 0),
        ]
    )
    server.add_generic_rpc_handlers(
        (GrpcInferenceService(app, runtime, request_timeout_s, trace_every).handler(),)
    )
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as e:
        raise OSError(f"cannot bind the gRPC port {address}: {e}") from e
    if not bound:
        raise OSError(f"cannot bind the gRPC port {address}")
    await server.start()
    return server, bound
