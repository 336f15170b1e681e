"""The demo's traffic: closed-loop clients sending rows to a served model with request ids, and
posting each answered request's ground-truth label back as feedback (labels arrive at once in
the demo; in production they arrive when a chargeback does)."""

from __future__ import annotations

import http.client
import json
import threading
import time
from pathlib import Path

import numpy as np

from .data import MODEL_FEATURES

LABEL_BATCH = 25
"""Labels per feedback call."""


class Traffic:
    """`clients` threads, each with one keep-alive connection, cycling through the rows of `x`
    at about `rate` requests per second in all, until `stop()`. Request `i` carries id `r<i>`;
    with `y`, its label is posted to `/v2/models/{model}/feedback` by that id once answered.
    The rate is bounded so that a training run on the same machine keeps its cores."""

    def __init__(
        self,
        port: int,
        model: str,
        input_name: str,
        x: np.ndarray,
        y: np.ndarray | None = None,
        clients: int = 4,
        rate: float = 400.0,
    ):
        self.port, self.model, self.input_name = port, model, input_name
        self.x, self.y = x, y
        self.stop_event = threading.Event()
        self._lock = threading.Lock()
        self._next = 0
        self.sent: list[tuple[str, int]] = []
        """(request id, row of x) of every answered request, in order."""
        self.labelled = 0
        self.interval_s = clients / rate
        self.threads = [
            threading.Thread(target=self._client, name=f"demo-traffic-{i}", daemon=True)
            for i in range(clients)
        ]
        for t in self.threads:
            t.start()

    def _take(self) -> tuple[str, int]:
        with self._lock:
            i = self._next
            self._next += 1
        return f"r{i}", i % len(self.x)

    def _body(self, request_id: str, row: int) -> bytes:
        tensor = {
            "name": self.input_name,
            "shape": [1, self.x.shape[1]],
            "datatype": "FP32",
            "data": [round(float(v), 4) for v in self.x[row]],
        }
        return json.dumps({"id": request_id, "inputs": [tensor]}).encode()

    def _client(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        labels: list[dict[str, object]] = []
        due = time.monotonic()
        try:
            while not self.stop_event.is_set():
                due += self.interval_s
                if self.stop_event.wait(max(0.0, due - time.monotonic())):
                    break
                request_id, row = self._take()
                conn.request("POST", f"/v2/models/{self.model}/infer", self._body(request_id, row))
                conn.getresponse().read()
                with self._lock:
                    self.sent.append((request_id, row))
                if self.y is not None:
                    labels.append({"id": request_id, "label": int(self.y[row])})
                    if len(labels) >= LABEL_BATCH:
                        self._feedback(conn, labels)
                        labels = []
            if labels:
                self._feedback(conn, labels)
        except OSError:
            pass  # the server stopped
        finally:
            conn.close()

    def _feedback(self, conn: http.client.HTTPConnection, labels: list[dict[str, object]]) -> None:
        body = json.dumps({"labels": labels}).encode()
        conn.request("POST", f"/v2/models/{self.model}/feedback", body)
        conn.getresponse().read()
        with self._lock:
            self.labelled += len(labels)

    def wait_labelled(self, n: int, timeout_s: float) -> bool:
        """Wait until `n` labels were posted (False after `timeout_s`)."""
        deadline = time.monotonic() + timeout_s
        while self.labelled < n:
            if time.monotonic() > deadline or not any(t.is_alive() for t in self.threads):
                return False
            time.sleep(0.05)
        return True

    def write_request_log(self, path: Path) -> int:
        """The inputs of every answered request by id (`id` + one column per MODEL_FEATURES),
        as the service's own request log; returns the rows written."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        with self._lock:
            sent = list(self.sent)
        rows = np.asarray([r for _, r in sent], np.int64)
        cols = {"id": pa.array([i for i, _ in sent], pa.string())}
        for j, name in enumerate(MODEL_FEATURES):
            cols[name] = pa.array(self.x[rows, j] if len(rows) else [], pa.float32())
        pq.write_table(pa.table(cols), path)
        return len(sent)

    def stop(self) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join(15)
