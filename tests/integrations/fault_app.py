"""A FastAPI host app whose models fail or block on demand, for the fault tests.

``gated`` (one row per batch, one instance) creates ``$GATE_DIR/entered`` when a batch starts
and waits for ``$GATE_DIR/release``, so a test knows a request is executing and decides when it
ends. ``failing`` raises on a negative value. ``app_without_lifespan`` forgets the lifespan.
"""

# No `from __future__ import annotations`: FastAPI resolves the handler's annotations, and
# its dependency is local to the factory.

import os
import time
from pathlib import Path
from typing import Annotated

import numpy as np
from fastapi import Depends, FastAPI, Request
from pydantic import BaseModel

import aiarch
from aiarch.integrations import ServiceRuntime, asgi

GATE = Path(os.environ.get("GATE_DIR", "."))


def gated(x: np.ndarray) -> np.ndarray:
    (GATE / "entered").touch()
    deadline = time.monotonic() + 60
    while not (GATE / "release").exists() and time.monotonic() < deadline:
        time.sleep(0.005)
    return x * 2


def failing(x: np.ndarray) -> np.ndarray:
    if (x < 0).any():
        raise ValueError("negative amount: this model scores purchases only")
    return x * 2


def load(service: ServiceRuntime) -> None:
    row = [aiarch.TensorSpec("x", "float32", (2,))]
    one_at_a_time = aiarch.BatchConfig(max_batch_size=1, max_delay_us=0, inline_execution=False)
    service.add_model("gated", gated, inputs=row, batching=one_at_a_time, warmup=False)
    service.add_model("failing", failing, inputs=row)


class Body(BaseModel):
    x: list[float]


def make_app(with_lifespan: bool) -> FastAPI:
    service = ServiceRuntime(setup=load)
    app = FastAPI(lifespan=asgi.lifespan(service) if with_lifespan else None)
    asgi.install(app, service)
    service_dependency = Depends(asgi.dependency(service))

    @app.post("/predict/{model}")
    async def predict(
        model: str,
        body: Body,
        request: Request,
        svc: Annotated[ServiceRuntime, service_dependency],
    ) -> dict[str, list[float]]:
        y = await asgi.cancel_on_disconnect(request, svc.infer(model, [body.x]))
        return {"y": y[0].tolist()}

    return app


app = make_app(with_lifespan=True)
app_without_lifespan = make_app(with_lifespan=False)
