"""KServe v2 / Open Inference Protocol codec: request decode and response encode.

Pure functions over bytes and numpy arrays, no I/O, so the HTTP layer calls them once per request
and the fuzz tests call them directly.

- JSON tensors: the request is decoded once by msgspec into typed Structs with each tensor's
  `data` kept as raw JSON; numeric data is then flattened (brackets dropped: nested and flat forms
  are the same row-major sequence), decoded by a typed msgspec decoder and turned into ONE numpy
  array by `np.array` — no per-element Python loop.
- Binary tensor extension: tensors are `np.frombuffer` views on the request body (zero-copy,
  read-only). BYTES elements are uint32-LE length-prefixed.
- Responses: JSON via msgspec; binary outputs are written as the arrays' own buffers after the
  JSON header, in `outputs` order.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

import msgspec
import numpy as np

from .errors import HttpError

__all__ = [
    "DATATYPES",
    "DecodedInfer",
    "InferRequest",
    "RequestInput",
    "RequestOutput",
    "decode_infer",
    "decode_predict",
    "encode_infer_response",
    "encode_predict_response",
    "np_to_v2",
    "v2_to_np",
]

# ---------------------------------------------------------------------------------------------
# Datatypes

DATATYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(object),
}
try:  # bfloat16 exists in numpy only through ml_dtypes (installed with tritonclient, jax, ...)
    import ml_dtypes

    DATATYPES["BF16"] = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover - optional
    pass

_NP_TO_V2: dict[np.dtype[Any], str] = {dt: name for name, dt in DATATYPES.items()}
_NP_TO_V2[np.dtype(np.bytes_)] = "BYTES"
_NP_TO_V2[np.dtype(np.str_)] = "BYTES"


def v2_to_np(datatype: str) -> np.dtype[Any]:
    """numpy dtype for a v2 datatype name; HttpError 400 if unknown."""
    try:
        return DATATYPES[datatype]
    except KeyError:
        raise HttpError(400, f"unsupported datatype '{datatype}'") from None


def np_to_v2(dtype: Any) -> str:
    """v2 datatype name for a numpy dtype (or dtype name such as "float32")."""
    dt = np.dtype(dtype)
    name = _NP_TO_V2.get(dt)
    if name is None:
        if dt.kind in ("S", "U", "O"):
            return "BYTES"
        name = _NP_TO_V2.get(dt.newbyteorder("<"))
        if name is None:
            raise ValueError(f"numpy dtype {dt} has no v2 datatype")
    return name


# Typed decoders for flattened numeric JSON data, by numpy kind.
_FLOATS = msgspec.json.Decoder(list[float])
_INTS = msgspec.json.Decoder(list[int])
_BOOLS = msgspec.json.Decoder(list[bool])
_FLAT_DECODER: dict[str, Any] = {"f": _FLOATS, "i": _INTS, "u": _INTS, "b": _BOOLS}
_BRACKETS = b"[]"

# ---------------------------------------------------------------------------------------------
# Wire types

Params = dict[str, Any]
Dim = Annotated[int, msgspec.Meta(ge=0)]


class RequestInput(msgspec.Struct, omit_defaults=True):
    name: str
    shape: list[Dim]
    datatype: str
    parameters: Params | None = None
    data: msgspec.Raw = msgspec.Raw(b"")
    """The tensor's JSON kept undecoded (empty when the data travels in binary)."""


class RequestOutput(msgspec.Struct, omit_defaults=True):
    name: str
    parameters: Params | None = None


class InferRequest(msgspec.Struct, omit_defaults=True):
    inputs: list[RequestInput]
    id: str | None = None
    parameters: Params | None = None
    outputs: list[RequestOutput] | None = None


class ResponseOutput(msgspec.Struct, omit_defaults=True):
    name: str
    datatype: str
    shape: list[int]
    parameters: Params | None = None
    data: list[Any] | None = None


class InferResponse(msgspec.Struct, omit_defaults=True):
    model_name: str
    outputs: list[ResponseOutput]
    model_version: str | None = None
    id: str | None = None
    parameters: Params | None = None


_REQUEST_DECODER = msgspec.json.Decoder(InferRequest)
_encode = msgspec.json.encode


class DecodedInfer:
    """A decoded v2 infer request: tensors in request order plus what the response must contain."""

    __slots__ = ("arrays", "binary_output", "id", "names", "outputs", "parameters")

    def __init__(
        self,
        names: list[str],
        arrays: list[np.ndarray],
        id: str | None,
        parameters: Params | None,
        outputs: list[RequestOutput] | None,
        binary_output: bool,
    ):
        self.names = names
        self.arrays = arrays
        self.id = id
        self.parameters = parameters
        self.outputs = outputs
        self.binary_output = binary_output


def _count(shape: list[int]) -> int:
    return math.prod(shape) if shape else 1


def _flatten_any(value: Any, out: list[Any]) -> None:
    if isinstance(value, list):
        for v in value:
            _flatten_any(v, out)
    else:
        out.append(value)


_TOO_DEEP = "failed to parse the request JSON: arrays or objects nested too deeply"
"""JSON nested past the decoder's recursion limit is a client error, not a server fault."""


def _decode_numbers(raw: bytes | memoryview, decoder: Any, what: str) -> list[Any]:
    """Decodes nested or flat JSON numbers as one flat list (brackets carry no
    information once the shape is known), mapping decode errors to 400."""
    try:
        return decoder.decode(b"[" + bytes(raw).translate(None, _BRACKETS) + b"]")
    except msgspec.ValidationError as e:
        raise HttpError(400, f"{what}: {e}") from None
    except msgspec.DecodeError as e:
        raise HttpError(400, f"{what}: malformed JSON: {e}") from None


def json_tensor(raw: bytes | memoryview, datatype: str, shape: list[int]) -> np.ndarray:
    """Decode one tensor's JSON `data` (nested or flat, row-major) to an array of `shape`."""
    dtype = v2_to_np(datatype)
    count = _count(shape)
    kind = dtype.kind
    decoder = _FLAT_DECODER.get(kind)
    try:
        if decoder is not None:
            values = _decode_numbers(raw, decoder, f"invalid {datatype} tensor data")
            if len(values) != count:
                raise HttpError(
                    400,
                    f"unexpected number of elements for shape {shape}: expected {count}, "
                    f"got {len(values)}",
                )
            return np.array(values, dtype=dtype).reshape(shape)
        if datatype == "BYTES":
            items: list[Any] = []
            _flatten_any(msgspec.json.decode(raw), items)
            if len(items) != count:
                raise HttpError(
                    400,
                    f"unexpected number of elements for shape {shape}: expected {count}, "
                    f"got {len(items)}",
                )
            arr = np.empty(count, dtype=object)
            for i, item in enumerate(items):
                if not isinstance(item, str):
                    raise HttpError(400, "BYTES tensor data must be JSON strings")
                arr[i] = item.encode()
            return arr.reshape(shape)
    except msgspec.ValidationError as e:
        raise HttpError(400, f"invalid {datatype} tensor data: {e}") from None
    except msgspec.DecodeError as e:
        raise HttpError(400, f"malformed tensor data: {e}") from None
    except RecursionError:
        raise HttpError(400, _TOO_DEEP) from None
    except OverflowError as e:
        raise HttpError(400, f"value out of range for {datatype}: {e}") from None
    raise HttpError(400, f"{datatype} data cannot be sent as JSON; use the binary extension")


def _bytes_tensor(buf: memoryview, shape: list[int]) -> np.ndarray:
    """Decode uint32-LE length-prefixed BYTES elements (rare path: one Python step per element)."""
    count = _count(shape)
    arr = np.empty(count, dtype=object)
    pos, end = 0, len(buf)
    for i in range(count):
        if pos + 4 > end:
            raise HttpError(400, "truncated BYTES tensor")
        n = int.from_bytes(buf[pos : pos + 4], "little")
        pos += 4
        if pos + n > end:
            raise HttpError(400, "truncated BYTES tensor")
        arr[i] = bytes(buf[pos : pos + n])
        pos += n
    if pos != end:
        raise HttpError(400, "BYTES tensor has trailing bytes")
    return arr.reshape(shape)


def _binary_size(params: Params | None) -> int | None:
    if not params:
        return None
    size = params.get("binary_data_size")
    if size is None:
        return None
    if type(size) is not int or size < 0:
        raise HttpError(400, "binary_data_size must be a non-negative integer")
    return size


def decode_infer(body: bytes, header_length: int | None) -> DecodedInfer:
    """Decode a v2 infer request body.

    `header_length` is the Inference-Header-Content-Length value, or None when the whole body is
    JSON. Binary tensors become read-only views on `body`. Raises HttpError(400) on any defect.
    (A raw binary request — header length 0 — needs the model's input spec: see `decode_raw`.)
    """
    n = len(body)
    if header_length is None:
        header_length = n
    elif header_length < 0 or header_length > n:
        raise HttpError(400, "Inference-Header-Content-Length exceeds the body size")
    mv = memoryview(body)
    try:
        req = _REQUEST_DECODER.decode(mv[:header_length] if header_length != n else body)
    except msgspec.ValidationError as e:
        raise HttpError(400, f"invalid inference request: {e}") from None
    except msgspec.DecodeError as e:
        raise HttpError(400, f"failed to parse the request JSON: {e}") from None
    except RecursionError:
        raise HttpError(400, _TOO_DEEP) from None
    if not req.inputs:
        raise HttpError(400, "inference request has no inputs")
    offset = header_length
    names: list[str] = []
    arrays: list[np.ndarray] = []
    for inp in req.inputs:
        size = _binary_size(inp.parameters)
        shape = inp.shape
        if size is not None:
            if inp.data:
                raise HttpError(400, f"input '{inp.name}' has both binary_data_size and data")
            end = offset + size
            if end > n:
                raise HttpError(400, f"binary data for input '{inp.name}' runs past the body")
            dtype = v2_to_np(inp.datatype)
            if dtype.kind == "O":
                arr = _bytes_tensor(mv[offset:end], shape)
            else:
                count = _count(shape)
                if count * dtype.itemsize != size:
                    raise HttpError(
                        400,
                        f"input '{inp.name}': binary_data_size {size} does not match shape "
                        f"{shape} of {inp.datatype} ({count * dtype.itemsize} bytes)",
                    )
                arr = np.frombuffer(body, dtype=dtype, count=count, offset=offset).reshape(shape)
            offset = end
        elif inp.data:
            arr = json_tensor(inp.data, inp.datatype, shape)
        else:
            raise HttpError(400, f"input '{inp.name}' has no data")
        names.append(inp.name)
        arrays.append(arr)
    if offset != n:
        raise HttpError(400, "request body has bytes after the last binary input")
    params = req.parameters
    binary_output = False
    if params:
        for key in params:
            if key.startswith("triton_"):
                raise HttpError(400, f"parameter '{key}' is reserved")
            if key in ("sequence_id", "sequence_start", "sequence_end"):
                raise HttpError(400, "sequence batching is not supported")
        binary_output = params.get("binary_data_output") is True
    return DecodedInfer(names, arrays, req.id, params, req.outputs, binary_output)


def decode_raw(
    body: bytes, name: str, dtype: np.dtype[Any], trailing: tuple[int, ...]
) -> np.ndarray:
    """A raw binary request (Inference-Header-Content-Length: 0): the body is the one input's
    bytes; at most one dimension may be variable (-1), it takes what the size implies."""
    if dtype.kind == "O":
        return _bytes_tensor(memoryview(body), [1])
    dims = [1, *trailing]
    known = _count([d for d in dims if d >= 0]) * dtype.itemsize
    free = [i for i, d in enumerate(dims) if d < 0]
    if len(free) > 1:
        raise HttpError(400, f"raw binary request for '{name}' needs at most one variable dim")
    if free:
        if known == 0 or len(body) % known:
            raise HttpError(400, f"raw binary input size {len(body)} does not fit '{name}'")
        dims[free[0]] = len(body) // known
    elif len(body) != known:
        raise HttpError(
            400, f"raw binary input for '{name}' must be {known} bytes, got {len(body)}"
        )
    return np.frombuffer(body, dtype=dtype).reshape(dims)


# ---------------------------------------------------------------------------------------------
# Responses


def _bytes_payload(arr: np.ndarray) -> bytes:
    parts: list[bytes] = []
    for item in arr.reshape(-1):
        b = item if isinstance(item, bytes) else str(item).encode()
        parts.append(len(b).to_bytes(4, "little"))
        parts.append(b)
    return b"".join(parts)


def _json_data(arr: np.ndarray, datatype: str) -> list[Any]:
    if datatype == "BYTES":
        out = []
        for item in arr.reshape(-1):
            if isinstance(item, bytes):
                try:
                    item = item.decode()
                except UnicodeDecodeError:
                    raise HttpError(
                        400, "BYTES output is not UTF-8; request it with binary_data"
                    ) from None
            out.append(str(item))
        return out
    if datatype in ("BF16",):
        return arr.astype(np.float32).reshape(-1).tolist()
    return arr.reshape(-1).tolist()


def encode_infer_response(
    model_name: str,
    model_version: str,
    request_id: str | None,
    names: list[str],
    datatypes: list[str],
    arrays: list[np.ndarray],
    binary: list[bool],
) -> tuple[bytes, list[Any]]:
    """Encode a v2 infer response.

    Returns (json_header, buffers). With no binary output `buffers` is empty and the JSON is the
    whole body; otherwise the body is json_header followed by `buffers` (contiguous arrays or
    bytes) and the caller sends Inference-Header-Content-Length = len(json_header).
    """
    outs: list[ResponseOutput] = []
    buffers: list[Any] = []
    for name, datatype, arr, as_binary in zip(names, datatypes, arrays, binary):
        shape = list(arr.shape)
        if as_binary:
            if datatype == "BYTES":
                payload: Any = _bytes_payload(arr)
                size = len(payload)
            else:
                payload = np.ascontiguousarray(arr)
                if payload.dtype.byteorder == ">":
                    payload = payload.astype(payload.dtype.newbyteorder("<"))
                size = payload.nbytes
            if size:
                buffers.append(payload)
            outs.append(ResponseOutput(name, datatype, shape, {"binary_data_size": size}))
        else:
            outs.append(ResponseOutput(name, datatype, shape, None, _json_data(arr, datatype)))
    header = _encode(InferResponse(model_name, outs, model_version, request_id))
    return header, buffers


# ---------------------------------------------------------------------------------------------
# The simple JSON endpoint: POST /predict/{model} {"inputs": [[...], ...]} -> {"outputs": ...}


class PredictRequest(msgspec.Struct):
    inputs: msgspec.Raw


_PREDICT_DECODER = msgspec.json.Decoder(PredictRequest)


def _rows(
    raw: bytes | memoryview, name: str, dtype: np.dtype[Any], trailing: tuple[int, ...]
) -> np.ndarray:
    decoder = _FLAT_DECODER.get(dtype.kind)
    if decoder is None:
        raise HttpError(400, f"input '{name}' of dtype {dtype} cannot be sent to /predict")
    values = _decode_numbers(raw, decoder, f"input '{name}'")
    try:
        arr = np.array(values, dtype=dtype)
    except OverflowError as e:
        raise HttpError(400, f"input '{name}': value out of range: {e}") from None
    per_row = _count([d for d in trailing])
    if any(d < 0 for d in trailing):
        raise HttpError(400, f"input '{name}' has a variable dim; use the v2 endpoint")
    if per_row == 0 or arr.size == 0 or arr.size % per_row:
        raise HttpError(
            400, f"input '{name}': {arr.size} values do not form rows of shape {list(trailing)}"
        )
    return arr.reshape((-1, *trailing))


def decode_predict(
    body: bytes, inputs: list[tuple[str, np.dtype[Any], tuple[int, ...]]]
) -> list[np.ndarray]:
    """Decode `{"inputs": rows}` (single-input model) or `{"inputs": {name: rows}}`; returns the
    arrays in model input order, each shaped (rows, *trailing)."""
    try:
        req = _PREDICT_DECODER.decode(body)
    except msgspec.ValidationError as e:
        raise HttpError(400, f"invalid request: {e}") from None
    except msgspec.DecodeError as e:
        raise HttpError(400, f"failed to parse the request JSON: {e}") from None
    except RecursionError:
        raise HttpError(400, _TOO_DEEP) from None
    raw = bytes(req.inputs).lstrip()
    if raw[:1] == b"{":
        try:
            by_name = msgspec.json.decode(raw, type=dict[str, msgspec.Raw])
        except msgspec.MsgspecError as e:
            raise HttpError(400, f"invalid inputs: {e}") from None
        except RecursionError:
            raise HttpError(400, _TOO_DEEP) from None
        missing = [n for n, _, _ in inputs if n not in by_name]
        extra = set(by_name) - {n for n, _, _ in inputs}
        if missing or extra:
            raise HttpError(400, f"inputs must be exactly {[n for n, _, _ in inputs]}")
        arrays = [_rows(by_name[n], n, dt, tr) for n, dt, tr in inputs]
    else:
        if len(inputs) != 1:
            raise HttpError(
                400, f'model has {len(inputs)} inputs; send {{"inputs": {{name: rows}}}}'
            )
        n, dt, tr = inputs[0]
        arrays = [_rows(raw, n, dt, tr)]
    rows = arrays[0].shape[0]
    if any(a.shape[0] != rows for a in arrays):
        raise HttpError(400, "all inputs must have the same number of rows")
    return arrays


def encode_predict_response(names: list[str], arrays: list[np.ndarray]) -> bytes:
    """`{"outputs": rows}` for one output, `{"outputs": {name: rows}}` for several."""
    if len(arrays) == 1:
        return _encode({"outputs": _plain(arrays[0]).tolist()})
    return _encode({"outputs": {n: _plain(a).tolist() for n, a in zip(names, arrays)}})


def _plain(arr: np.ndarray) -> np.ndarray:
    if arr.dtype.kind == "O":
        return np.array(
            [x.decode(errors="replace") if isinstance(x, bytes) else x for x in arr.reshape(-1)],
            dtype=object,
        ).reshape(arr.shape)
    return arr
