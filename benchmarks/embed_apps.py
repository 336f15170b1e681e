"""The apps of bench_embedding.py: one service written naively and with aiarch embedded.

The same endpoint, POST /predict with ``{"x": [floats]}`` (one row) answering
``{"y": [floats]}``, in four shapes:

- ``fastapi_app()`` — FastAPI; ``EMBED_MODE=naive`` calls the model once per request in the
  handler (as users write it today), ``EMBED_MODE=aiarch`` awaits ``service.infer`` (batching on,
  cache off) through `aiarch.integrations.asgi`;
- ``flask_app()`` — Flask under gunicorn threads; ``naive`` calls the model per request in each
  thread, ``aiarch`` shares batches through ``service.infer_sync``.

``EMBED_MODEL``: ``wide`` (MLP 512→2048→2048→16) or ``small`` (64→256→256→16), or ``noop``
(returns its input's first 16 values: the framework's own cost). torch runs one thread.
Knobs of the aiarch apps, for experiments: ``EMBED_MAX_DELAY_US`` (default 0: a batch is what
arrived while the previous one ran), ``EMBED_INLINE`` (1: batches run on the submitting
thread), ``EMBED_WATCH_DISCONNECT`` (1: FastAPI handlers cancel on client disconnect).
"""

# No `from __future__ import annotations`: FastAPI resolves the handlers' annotations, and
# the request models are local to the factories.

import itertools
import os
import warnings
from typing import Annotated, Any

import numpy as np

warnings.filterwarnings("ignore", message="The given NumPy array is not writable")

SHAPES = {"wide": (512, 2048, 2048, 16), "small": (64, 256, 256, 16), "noop": (16, 16)}


def make_model(kind: str) -> tuple[Any, int]:
    """(fn(x[rows, n_in]) -> y[rows, 16], n_in); weights from seed 0."""
    dims = SHAPES[kind]
    if kind == "noop":
        return (lambda x: x[:, :16].copy()), dims[0]
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(1)
    layers: list[Any] = []
    for a, b in itertools.pairwise(dims):
        layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    net = torch.nn.Sequential(*layers[:-1]).eval()

    def mlp(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return net(torch.from_numpy(x)).numpy()

    return mlp, dims[0]


def _service(model: Any, n_in: int) -> Any:
    import aiarch
    from aiarch.integrations import ServiceRuntime

    def setup(svc: Any) -> None:
        svc.add_model(
            "mlp",
            model,
            inputs=[aiarch.TensorSpec("x", "float32", (n_in,))],
            batching=aiarch.BatchConfig(
                max_batch_size=64,
                # No fill wait: a batch is what arrived while the previous one ran.
                max_delay_us=float(os.environ.get("EMBED_MAX_DELAY_US", "0")),
                inline_execution=os.environ.get("EMBED_INLINE", "1") == "1",
            ),
        )

    return ServiceRuntime(setup)


def fastapi_app() -> Any:
    from fastapi import Depends, FastAPI, Request
    from pydantic import BaseModel

    model, n_in = make_model(os.environ.get("EMBED_MODEL", "small"))

    class Body(BaseModel):
        x: list[float]

    if os.environ.get("EMBED_MODE", "naive") == "naive":
        app = FastAPI()

        @app.post("/predict")
        async def predict(body: Body) -> dict[str, list[float]]:
            y = model(np.asarray([body.x], dtype=np.float32))
            return {"y": y[0].tolist()}

        @app.get("/healthz")
        async def health() -> dict[str, bool]:
            return {"ready": True}

        return app

    from aiarch.integrations import ServiceRuntime, asgi

    service = _service(model, n_in)
    app = FastAPI(lifespan=asgi.lifespan(service))
    asgi.install(app, service)
    service_dependency = Depends(asgi.dependency(service))

    @app.post("/predict")
    async def predict_batched(
        body: Body, request: Request, svc: Annotated[ServiceRuntime, service_dependency]
    ) -> dict[str, list[float]]:
        x = np.asarray([body.x], dtype=np.float32)
        if os.environ.get("EMBED_WATCH_DISCONNECT", "1") == "1":
            y = await asgi.cancel_on_disconnect(request, svc.infer("mlp", x))
        else:
            y = await svc.infer("mlp", x)
        return {"y": y[0].tolist()}

    return app


def flask_app() -> Any:
    from flask import Flask, jsonify, request

    model, n_in = make_model(os.environ.get("EMBED_MODEL", "small"))
    app = Flask(__name__)
    if os.environ.get("EMBED_MODE", "naive") == "naive":
        infer = model

        @app.get("/healthz")
        def health() -> Any:
            return jsonify(ready=True)

    else:
        from aiarch.integrations import wsgi

        service = _service(model, n_in)
        wsgi.install(app, service)

        def infer(x: np.ndarray) -> np.ndarray:
            return service.infer_sync("mlp", x)  # type: ignore[no-any-return]

    @app.post("/predict")
    def predict() -> Any:
        x = np.asarray([request.get_json()["x"]], dtype=np.float32)
        return jsonify(y=infer(x)[0].tolist())

    return app
