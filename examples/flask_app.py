"""A Flask service with aiarch embedded: request threads share one Runtime per worker process
through ``infer_sync`` (the GIL is released while a request waits for its batch).

    gunicorn --workers 2 --threads 8 --preload --chdir examples flask_app:app
    curl -s 127.0.0.1:8000/predict -H content-type:application/json -d '{"x": [0.1, 0.2, 0.3, 0.4]}'

The Runtime is created in each worker on its first request, after gunicorn forked it — even with
``--preload``, where this module is imported once in the parent (see aiarch.integrations.wsgi).
"""

from __future__ import annotations

import numpy as np
from flask import Flask, jsonify, request

import aiarch
from aiarch.integrations import ServiceRuntime, wsgi

_rng = np.random.default_rng(0)
W1 = _rng.standard_normal((4, 32)).astype(np.float32)
W2 = _rng.standard_normal((32, 2)).astype(np.float32)


def classify(x: np.ndarray) -> np.ndarray:
    """Called once per batch: float32 [rows, 4] -> class scores [rows, 2]."""
    return np.maximum(x @ W1, 0) @ W2


def load_models(service: ServiceRuntime) -> None:
    service.add_model(
        "classify",
        classify,
        inputs=[aiarch.TensorSpec("x", "float32", (4,))],
        # No fill wait: requests that arrive while a batch runs share the next one.
        batching=aiarch.BatchConfig(max_batch_size=32, max_delay_us=0),
    )


service = ServiceRuntime(setup=load_models)
app = Flask(__name__)
wsgi.install(
    app, service
)  # lazy start per worker; AiarchError -> status + {"error"}; /metrics; /healthz


@app.post("/predict")
def predict():  # type: ignore[no-untyped-def]
    body = request.get_json(force=True, silent=True)
    if not isinstance(body, dict) or "x" not in body:
        return jsonify(error='expected a JSON object {"x": [4 numbers]}'), 400
    # One row; a wrong length or a non-number fails this request alone with the runtime's 400.
    y = service.infer_sync("classify", [body["x"]], timeout_s=5.0)
    return jsonify(scores=y[0].tolist(), label=int(y[0].argmax()))


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=8000, threaded=True)
