"""The baseline of bench_server.py: the naive design people start with.

FastAPI + uvicorn, one worker, one model call per request, the same MLP and the same v2 JSON
request/response bodies. Run: `uvicorn --app-dir benchmarks server_fastapi_baseline:app`. With
AIARCH_BENCH_ONNX=mlp.onnx the model is that ONNX file on onnxruntime (one thread), else torch.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from fastapi import FastAPI, Request

if os.environ.get("AIARCH_BENCH_ONNX"):
    import onnxruntime as ort

    _opts = ort.SessionOptions()
    _opts.intra_op_num_threads = 1
    _opts.inter_op_num_threads = 1
    _session = ort.InferenceSession(
        os.environ["AIARCH_BENCH_ONNX"], _opts, providers=["CPUExecutionProvider"]
    )

    def mlp(x: np.ndarray) -> np.ndarray:
        return _session.run(None, {"input0": x})[0]
else:
    from server_mlp import mlp

app = FastAPI()


@app.post("/v2/models/mlp/infer")
async def infer(request: Request) -> dict[str, Any]:
    body = await request.json()
    inp = body["inputs"][0]
    x = np.asarray(inp["data"], dtype=np.float32).reshape(inp["shape"])
    y = mlp(x)
    return {
        "model_name": "mlp",
        "outputs": [
            {
                "name": "output0",
                "datatype": "FP32",
                "shape": list(y.shape),
                "data": y.ravel().tolist(),
            }
        ],
    }


@app.get("/v2/health/ready")
async def ready() -> dict[str, bool]:
    return {"ready": True}
