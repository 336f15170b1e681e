"""What `aiarch bench` sends load to: a KServe v2 HTTP endpoint or an in-process Runtime.

For an HTTP target the model's metadata (`GET /v2/models/{m}`) gives the input names, datatypes
and shapes; one request body is synthesized from it (JSON or the binary tensor extension) or
replayed from a file, and serialized once, with its HTTP head, into the exact bytes the native
generator writes. Server-side time comes from `GET /v2/models/{m}/stats` before and after a
measured window.
"""

from __future__ import annotations

import hashlib
import json
import socket
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aiarch.errors import InvalidArgumentError, NotFoundError, UnavailableError

__all__ = [
    "HttpTarget",
    "InputSpec",
    "ServerSnapshot",
    "build_request",
    "open_http_target",
    "synthesize_body",
]

# v2 datatype → numpy dtype (little-endian, as the binary extension requires).
_DTYPES: dict[str, str] = {
    "BOOL": "bool",
    "UINT8": "<u1",
    "UINT16": "<u2",
    "UINT32": "<u4",
    "UINT64": "<u8",
    "INT8": "<i1",
    "INT16": "<i2",
    "INT32": "<i4",
    "INT64": "<i8",
    "FP16": "<f2",
    "FP32": "<f4",
    "FP64": "<f8",
}
_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class InputSpec:
    """One model input as the metadata describes it."""

    name: str
    """Input name."""
    datatype: str
    """v2 datatype, e.g. FP32."""
    shape: tuple[int, ...]
    """Shape with -1 for variable dimensions (the batch dimension first)."""


@dataclass
class ServerSnapshot:
    """Cumulative server counters of one model at one moment (`/v2/models/{m}/stats`)."""

    success_count: int = 0
    """Successful requests so far."""
    queue_ns: int = 0
    """Total time requests spent queued."""
    queue_count: int = 0
    """Requests counted in queue_ns."""
    compute_ns: int = 0
    """Total compute (infer) time."""
    compute_count: int = 0
    """Divisor of compute_ns: batches for aiarch (per-batch totals), requests for Triton."""
    fail_count: int = 0
    """Failed requests so far."""


def breakdown(before: ServerSnapshot | None, after: ServerSnapshot | None) -> dict[str, float]:
    """Per-request server queue / compute time (µs) over the window between two snapshots."""
    if before is None or after is None:
        return {}
    dq = after.queue_count - before.queue_count
    dc = after.compute_count - before.compute_count
    return {
        "server_queue_us": (after.queue_ns - before.queue_ns) / dq / 1e3 if dq > 0 else 0.0,
        "server_compute_us": (after.compute_ns - before.compute_ns) / dc / 1e3 if dc > 0 else 0.0,
        "server_success": float(after.success_count - before.success_count),
        "server_fail": float(after.fail_count - before.fail_count),
    }


@dataclass
class HttpTarget:
    """A v2 model behind an HTTP server, resolved and ready to load."""

    host: str
    """IPv4 address the generator connects to."""
    port: int
    """TCP port."""
    model: str
    """Model name."""
    base_path: str = ""
    """Path prefix of the server (usually empty)."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """`GET /v2/models/{m}` as returned."""
    config: dict[str, Any] = field(default_factory=dict)
    """`GET /v2/models/{m}/config` when the server has it, else {}."""

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}{self.base_path}"

    def inputs(self) -> list[InputSpec]:
        """Input specs from the metadata."""
        out = []
        for t in self.metadata.get("inputs", []):
            out.append(
                InputSpec(str(t["name"]), str(t["datatype"]), tuple(int(d) for d in t["shape"]))
            )
        return out

    def digest(self) -> str:
        """sha256 of the model's metadata and config: identifies what was measured."""
        doc = json.dumps({"metadata": self.metadata, "config": self.config}, sort_keys=True)
        return hashlib.sha256(doc.encode()).hexdigest()

    def stats(self) -> ServerSnapshot | None:
        """Current cumulative counters, or None when the server has no stats endpoint."""
        try:
            doc = _get_json(f"{self.url}/v2/models/{self.model}/stats")
        except (UnavailableError, NotFoundError, InvalidArgumentError):
            return None
        stats = doc.get("model_stats") or []
        if not stats:
            return None
        s = stats[0]
        inf = s.get("inference_stats", {})
        per_batch = str(self.metadata.get("platform", "")).startswith("aiarch")

        def part(key: str) -> tuple[int, int]:
            d = inf.get(key) or {}
            return int(d.get("ns", 0)), int(d.get("count", 0))

        queue_ns, queue_count = part("queue")
        compute_ns, compute_count = part("compute_infer")
        if per_batch:
            # aiarch adds a batch's execution time once per batch.
            compute_count = int(s.get("execution_count", 0))
        return ServerSnapshot(
            success_count=part("success")[1],
            queue_ns=queue_ns,
            queue_count=queue_count,
            compute_ns=compute_ns,
            compute_count=compute_count,
            fail_count=part("fail")[1],
        )


def _get_json(url: str) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(url, timeout=_TIMEOUT_S) as r:
            return dict(json.loads(r.read()))
    except urllib.error.HTTPError as e:
        body = e.read().decode(errors="replace")[:300]
        if e.code == 404:
            raise NotFoundError(f"GET {url}: 404 {body}") from None
        raise InvalidArgumentError(f"GET {url}: HTTP {e.code} {body}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise UnavailableError(f"cannot reach {url}: {reason}") from None


def _resolve_host(host: str) -> str:
    try:
        infos = socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise UnavailableError(f"cannot resolve host {host!r}: {e}") from None
    return str(infos[0][4][0])


def open_http_target(url: str, model: str) -> HttpTarget:
    """Checks that `url` serves `model` and fetches its metadata.

    Raises InvalidArgumentError for a malformed URL, UnavailableError when the server cannot be
    reached and NotFoundError (listing the models it has) when the model is unknown.
    """
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme != "http" or not parsed.hostname:
        raise InvalidArgumentError(
            f"--url must look like http://HOST:PORT (plain HTTP/1.1), got {url!r}"
        )
    try:
        port = parsed.port or 80
    except ValueError:
        raise InvalidArgumentError(f"--url has an invalid port: {url!r}") from None
    host = _resolve_host(parsed.hostname)
    target = HttpTarget(host=host, port=port, model=model, base_path=parsed.path.rstrip("/"))
    try:
        target.metadata = _get_json(f"{target.url}/v2/models/{model}")
    except NotFoundError:
        known = _known_models(target.url)
        hint = f"; the server has: {', '.join(known)}" if known else ""
        raise NotFoundError(f"model {model!r} is not served at {url}{hint}") from None
    try:
        target.config = _get_json(f"{target.url}/v2/models/{model}/config")
    except (NotFoundError, InvalidArgumentError):
        target.config = {}
    if not target.metadata.get("inputs"):
        raise InvalidArgumentError(
            f"model {model!r} at {url} declares no inputs; pass --payload FILE to replay a body"
        )
    return target


def _known_models(base: str) -> list[str]:
    req = urllib.request.Request(
        f"{base}/v2/repository/index",
        data=b"{}",
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=_TIMEOUT_S) as r:
            return sorted(str(m.get("name")) for m in json.loads(r.read()))
    except (urllib.error.URLError, OSError, ValueError, TypeError, AttributeError):
        return []


def synthesize_arrays(
    inputs: list[InputSpec], rows: int = 1, seed: int = 0
) -> list[tuple[InputSpec, np.ndarray]]:
    """Random arrays matching the input specs (variable dims become `rows` / 1)."""
    rng = np.random.default_rng(seed)
    out = []
    for spec in inputs:
        if spec.datatype not in _DTYPES:
            raise InvalidArgumentError(
                f"input {spec.name!r} has datatype {spec.datatype}, which cannot be synthesized; "
                f"use --payload FILE (known: {', '.join(_DTYPES)})"
            )
        shape = [
            rows if i == 0 and d < 0 else (1 if d < 0 else d) for i, d in enumerate(spec.shape)
        ]
        dtype = np.dtype(_DTYPES[spec.datatype])
        if dtype.kind == "f":
            arr = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind == "b":
            arr = rng.integers(0, 2, shape).astype(dtype)
        else:
            arr = rng.integers(0, 10, shape).astype(dtype)
        out.append((spec, arr))
    return out


def synthesize_body(
    inputs: list[InputSpec], *, binary: bool, rows: int = 1, seed: int = 0
) -> tuple[bytes, int | None]:
    """A v2 infer body for random inputs: (body, Inference-Header-Content-Length or None)."""
    arrays = synthesize_arrays(inputs, rows, seed)
    if not binary:
        doc = {
            "inputs": [
                {
                    "name": s.name,
                    "shape": list(a.shape),
                    "datatype": s.datatype,
                    "data": a.reshape(-1).tolist(),
                }
                for s, a in arrays
            ]
        }
        return json.dumps(doc, separators=(",", ":")).encode(), None
    header = {
        "inputs": [
            {
                "name": s.name,
                "shape": list(a.shape),
                "datatype": s.datatype,
                "parameters": {"binary_data_size": a.nbytes},
            }
            for s, a in arrays
        ],
        "parameters": {"binary_data_output": True},
    }
    head = json.dumps(header, separators=(",", ":")).encode()
    return head + b"".join(a.tobytes() for _, a in arrays), len(head)


def build_request(
    target: HttpTarget, body: bytes, header_length: int | None = None, path: str | None = None
) -> bytes:
    """The full HTTP/1.1 request the generator writes, bytes for bytes."""
    path = path or f"{target.base_path}/v2/models/{target.model}/infer"
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {target.host}:{target.port}",
        f"Content-Length: {len(body)}",
    ]
    if header_length is None:
        lines.append("Content-Type: application/json")
    else:
        lines.append("Content-Type: application/octet-stream")
        lines.append(f"Inference-Header-Content-Length: {header_length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def load_payload(path: str) -> tuple[bytes, int | None]:
    """A request body to replay. A `.json` file is sent as is; any other file must start with
    a JSON header whose length is given as `FILE:HEADER_LENGTH` (binary extension)."""
    file, sep, hlen = path.rpartition(":")
    if sep and hlen.isdigit() and file:
        p, header_length = Path(file), int(hlen)
    else:
        p, header_length = Path(path), None
    try:
        body = p.read_bytes()
    except OSError as e:
        raise InvalidArgumentError(f"cannot read --payload {p}: {e.strerror}") from None
    if header_length is None:
        try:
            json.loads(body)
        except ValueError as e:
            raise InvalidArgumentError(
                f"--payload {p} is not JSON ({e}); for a binary body pass FILE:HEADER_LENGTH"
            ) from None
    elif header_length > len(body):
        raise InvalidArgumentError(
            f"--payload {p}: header length {header_length} exceeds the file ({len(body)} bytes)"
        )
    return body, header_length
