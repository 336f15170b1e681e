"""gRPC serving benchmark: `aiarch serve --grpc-port` against HTTP on the same server, and
against a plain grpcio servicer that calls the model once per request.

Model: the reference MLP 64 → 256 → ReLU → 256 → ReLU → 16 (float32, torch, one thread;
benchmarks/server_mlp.py), one row per request. Three targets, all in this run, each its own
process on 127.0.0.1:

- `aiarch gRPC`: `aiarch serve --model mlp=benchmarks/server_mlp.py:mlp --grpc-port P`, KServe
  v2 ModelInfer with `raw_input_contents`;
- `aiarch HTTP`: the same server process, v2 infer with the binary tensor extension;
- `plain grpcio`: a grpc.aio servicer (this file, `--plain-server PORT`) that decodes the same
  ModelInfer message and calls the model once per request: what a hand-written service does.

Load: a closed-loop asyncio client (uvloop) in this process with 1 and 64 concurrent streams
(gRPC: concurrent calls on one HTTP/2 channel; HTTP: one keep-alive connection per stream),
pre-encoded requests; req/s and p50/p99 of the client-side latency. Closed-loop load
under-reports the tail and the Python client shares the 2 cores with the servers: compare the
targets with each other, not with other benchmarks.

    python benchmarks/bench_grpc.py --json out.json   # ~1 min
    python benchmarks/bench_grpc.py --smoke           # under 30 s
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from _report import print_table, write_json  # noqa: E402

METHOD = "/inference.GRPCInferenceService/ModelInfer"


def _infer_request_bytes() -> bytes:
    from aiarch.serving.proto import open_inference_pb2 as pb

    x = np.random.default_rng(0).standard_normal((1, 64)).astype(np.float32)
    req = pb.ModelInferRequest(model_name="mlp")
    req.inputs.add(name="input0", datatype="FP32", shape=[1, 64])
    req.raw_input_contents.append(x.tobytes())
    return req.SerializeToString()


def _http_request_bytes(port: int) -> bytes:
    x = np.random.default_rng(0).standard_normal((1, 64)).astype(np.float32)
    header = (
        b'{"inputs":[{"name":"input0","shape":[1,64],"datatype":"FP32",'
        b'"parameters":{"binary_data_size":256}}],'
        b'"outputs":[{"name":"output0","parameters":{"binary_data":true}}]}'
    )
    body = header + x.tobytes()
    return (
        b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
        b"Inference-Header-Content-Length: %d\r\nContent-Length: %d\r\n\r\n"
        % (port, len(header), len(body))
    ) + body


# -- the plain grpcio baseline -------------------------------------------------------------
def plain_server(port: int) -> None:
    """A grpc.aio servicer calling the model once per request (runs in its own process)."""
    import grpc

    sys.path.insert(0, str(HERE))
    from aiarch.serving.proto import open_inference_pb2 as pb
    from server_mlp import mlp

    async def model_infer(request: Any, context: Any) -> Any:
        t = request.inputs[0]
        x = np.frombuffer(request.raw_input_contents[0], np.float32).reshape(tuple(t.shape))
        y = mlp(x)
        resp = pb.ModelInferResponse(model_name=request.model_name)
        resp.outputs.add(name="output0", datatype="FP32", shape=y.shape)
        resp.raw_output_contents.append(y.tobytes())
        return resp

    async def main() -> None:
        server = grpc.aio.server()
        handler = grpc.unary_unary_rpc_method_handler(
            model_infer,
            request_deserializer=pb.ModelInferRequest.FromString,
            response_serializer=pb.ModelInferResponse.SerializeToString,
        )
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    "inference.GRPCInferenceService", {"ModelInfer": handler}
                ),
            )
        )
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()

    import uvloop

    uvloop.run(main())


# -- load ----------------------------------------------------------------------------------
async def _grpc_load(port: int, streams: int, seconds: float) -> list[float]:
    import grpc

    payload = _infer_request_bytes()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(METHOD)  # bytes in, bytes out: no client-side encoding
        await call(payload, timeout=30)  # connect and warm
        lat: list[float] = []
        end = time.perf_counter() + seconds

        async def stream() -> None:
            while time.perf_counter() < end:
                t0 = time.perf_counter()
                await call(payload, timeout=30)
                lat.append(time.perf_counter() - t0)

        await asyncio.gather(*(stream() for _ in range(streams)))
    return lat


async def _read_response(reader: asyncio.StreamReader) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"HTTP error: {head[:80]!r}")
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    await reader.readexactly(length)


async def _http_load(port: int, streams: int, seconds: float) -> list[float]:
    payload = _http_request_bytes(port)
    lat: list[float] = []
    end = time.perf_counter() + seconds

    async def stream() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(payload)
        await _read_response(reader)  # warm
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            writer.write(payload)
            await _read_response(reader)
            lat.append(time.perf_counter() - t0)
        writer.close()

    await asyncio.gather(*(stream() for _ in range(streams)))
    return lat


def _measure(kind: str, port: int, streams: int, seconds: float) -> dict[str, Any]:
    import uvloop

    load = _grpc_load if kind == "grpc" else _http_load
    t0 = time.perf_counter()
    lat = uvloop.run(load(port, streams, seconds))
    wall = time.perf_counter() - t0
    ms = np.asarray(lat) * 1e3
    return {
        "streams": streams,
        "requests": len(lat),
        "req_per_s": len(lat) / wall,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
    }


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port} after {timeout} s")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="short run (under 30 s)")
    ap.add_argument("--seconds", type=float, help="seconds per measurement (default 5)")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--plain-server", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.plain_server:
        plain_server(args.plain_server)
        return 0
    from aiarch.serving.process import ServerProcess, free_port, package_env

    seconds = args.seconds or (1.0 if args.smoke else 5.0)
    env = package_env({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    grpc_port, plain_port = free_port(), free_port()
    results: list[dict[str, Any]] = []
    aiarch_server = ServerProcess(
        [
            "--model",
            f"mlp={HERE / 'server_mlp.py'}:mlp",
            "--grpc-port",
            str(grpc_port),
            "--log-level",
            "warning",
        ],
        env=env,
    )
    try:
        aiarch_server.wait_ready()
        _wait_port(grpc_port, aiarch_server.proc)
        for streams in (1, 64):
            results.append(
                {"target": "aiarch gRPC", **_measure("grpc", grpc_port, streams, seconds)}
            )
            results.append(
                {"target": "aiarch HTTP", **_measure("http", aiarch_server.port, streams, seconds)}
            )
    finally:
        aiarch_server.stop()
    plain = subprocess.Popen(
        [sys.executable, __file__, "--plain-server", str(plain_port)], env=env, cwd=ROOT
    )
    try:
        _wait_port(plain_port, plain)
        for streams in (1, 64):
            results.append(
                {"target": "plain grpcio", **_measure("grpc", plain_port, streams, seconds)}
            )
    finally:
        plain.terminate()
        plain.wait(10)

    base = {r["streams"]: r["req_per_s"] for r in results if r["target"] == "aiarch gRPC"}
    rows = []
    for r in sorted(results, key=lambda r: (r["streams"], r["target"])):
        r["vs_aiarch_grpc"] = r["req_per_s"] / base[r["streams"]]
        rows.append(
            [
                r["target"],
                r["streams"],
                r["requests"],
                r["req_per_s"],
                r["p50_ms"],
                r["p99_ms"],
                r["vs_aiarch_grpc"],
            ]
        )
    print_table(
        f"reference MLP, one row per request, {seconds:g} s per cell (closed loop)",
        ["target", "streams", "requests", "req/s", "p50 ms", "p99 ms", "vs aiarch gRPC"],
        rows,
    )
    write_json(args.json, "grpc", {"seconds": seconds, "cells": results})
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
