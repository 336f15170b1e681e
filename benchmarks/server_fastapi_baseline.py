"""The baseline of bench_server.py: the naive design people start with.

FastAPI + uvicorn, one worker, one model call per request, the same MLP and the same v2 JSON
request/response bodies. Run: `uvicorn --app-dir benchmarks server_fastapi_baseline:app`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import FastAPI, Request

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
