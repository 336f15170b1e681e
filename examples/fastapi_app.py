"""A fraud-scoring FastAPI service with aiarch embedded: batching, response cache, Prometheus
metrics, feature lookup by entity id and a drift monitor, in the service users already run.

    python examples/fastapi_app.py --port 8000        # or: uvicorn examples.fastapi_app:app
    curl -s 127.0.0.1:8000/predict -d '{"card_id": 42, "amount": 120.5}'
    curl -s 127.0.0.1:8000/metrics | grep aiarch_request_duration
"""

from __future__ import annotations

import argparse
import tempfile
from typing import Annotated

import numpy as np
from fastapi import Depends, FastAPI, Request
from pydantic import BaseModel

import aiarch
from aiarch.features import Entity, Feature, FeatureStore, FeatureView
from aiarch.integrations import ServiceRuntime, asgi
from aiarch.monitor import Monitor, MonitorConfig, Profile

FEATURES = ["amount", "amount_7d", "count_1h"]  # request-time amount + two stored card features
_rng = np.random.default_rng(0)
TRAIN = np.abs(_rng.normal([50, 300, 2], [30, 150, 1.5], (10_000, 3))).astype(np.float32)
WEIGHTS = np.array([[0.02], [-0.004], [0.4]], np.float32)


def fraud_score(x: np.ndarray) -> np.ndarray:
    """Called once per batch: float32 [rows, 3] -> probability [rows, 1]."""
    return 1.0 / (1.0 + np.exp(1.0 - x @ WEIGHTS))


# Online features: the native in-process table (use "redis://..." to share it between replicas).
store = FeatureStore("memory://fraud-example", home=tempfile.mkdtemp(prefix="aiarch-example-"))
store.apply(Entity("card"), FeatureView("txn", "card", (Feature("amount_7d"), Feature("count_1h"))))
store.write("txn", {"card": [42, 7], "event_timestamp": [np.datetime64("now", "ns")] * 2,
                    "amount_7d": [310.5, 12.0], "count_1h": [3, 9]})  # fmt: skip
card_features = store.plan(["txn:amount_7d", "txn:count_1h"])


def load_models(service: ServiceRuntime) -> None:
    service.add_model(
        "fraud",
        fraud_score,
        inputs=[aiarch.TensorSpec("features", "float32", (3,))],
        # No fill wait: requests that arrive together or while a batch runs share the next one.
        batching=aiarch.BatchConfig(max_batch_size=64, max_delay_us=0),
        cache=aiarch.CacheConfig(max_bytes=16 << 20, ttl_s=60),
        monitor=Monitor(Profile.build(TRAIN, FEATURES), config=MonitorConfig(window_s=60)),
    )


service = ServiceRuntime(setup=load_models)
app = FastAPI(lifespan=asgi.lifespan(service))  # starts the runtime; drains it at shutdown
asgi.install(app, service)  # AiarchError -> its HTTP status + {"error": ...}; /metrics; /healthz
Service = Annotated[ServiceRuntime, Depends(asgi.dependency(service))]  # 503 if not started


class Transaction(BaseModel):
    card_id: int
    amount: float


@app.post("/predict")
async def predict(txn: Transaction, request: Request, svc: Service) -> dict[str, float | int]:
    stored, _status = card_features.get([txn.card_id])  # defaults for unknown or expired cards
    x = np.concatenate([[[txn.amount]], stored], axis=1, dtype=np.float32)
    # Queued with concurrent requests into one batch; cancelled if the client goes away.
    y = await asgi.cancel_on_disconnect(request, svc.infer("fraud", x))
    return {"card_id": txn.card_id, "fraud_probability": float(y[0, 0])}


if __name__ == "__main__":
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
