"""The demo's rollout step: a candidate made bad on purpose goes out progressively and the
controller rolls it back on its own, from the server's metrics."""

from __future__ import annotations

import http.client
import json
import logging
import textwrap
import threading
from pathlib import Path
from typing import Any

import numpy as np

from aiarch.serving.process import ServerProcess, free_port

BAD_MODEL = """
import time

import numpy as np

LARGE = {large!r}  # log-amounts above this break this version once it degrades
LOADED = time.monotonic()


def predict(x):
    # Bad on purpose, like a leak: fine at first, then slower and failing on large amounts.
    if time.monotonic() - LOADED > {healthy_s!r}:
        time.sleep(0.02)
        if (x[:, 0] > LARGE).any():
            raise ValueError("bad on purpose: this version breaks on large amounts")
    return np.full((len(x), *{out_shape!r}), 0.5, dtype=np.float32)


predict.inputs = [{{"name": {in_name!r}, "dtype": "float32", "shape": {in_shape!r}}}]
predict.outputs = [{{"name": {out_name!r}, "dtype": "float32", "shape": {out_shape!r}}}]
"""


def _trailing(spec: dict[str, Any]) -> tuple[int, ...]:
    return tuple(int(d) for d in spec["shape"][1:])


HEALTHY_S = 3.0
"""The bad candidate degrades this long after it is loaded: past the first 2 s step."""


def write_bad_model(folder: Path, production: Any, x: np.ndarray) -> str:
    """A Python model with production's signature that, `HEALTHY_S` after it is loaded,
    fails on the largest tenth of amounts and sleeps 20 ms per batch; returns
    `file.py:predict` to register."""
    sig = production.signature or {}
    inputs = sig.get("inputs") or [{"name": "x", "shape": [-1, x.shape[1]]}]
    outputs = sig.get("outputs") or [{"name": "logits", "shape": [-1, 2]}]
    path = folder / "fraud_bad_candidate.py"
    path.write_text(
        textwrap.dedent(
            BAD_MODEL.format(
                large=float(np.quantile(x[:, 0], 0.9)),
                healthy_s=HEALTHY_S,
                in_name=inputs[0]["name"],
                in_shape=_trailing(inputs[0]),
                out_name=outputs[0]["name"],
                out_shape=_trailing(outputs[0]),
            )
        )
    )
    return f"{path}:predict"


class _Traffic:
    """Closed-loop clients sending rows of `x` until stopped."""

    def __init__(self, port: int, model: str, input_name: str, x: np.ndarray, clients: int = 4):
        self.stop_event = threading.Event()
        self.bodies = [
            json.dumps(
                {
                    "inputs": [
                        {
                            "name": input_name,
                            "shape": [1, x.shape[1]],
                            "datatype": "FP32",
                            "data": [round(float(v), 4) for v in row],
                        }
                    ]
                }
            ).encode()
            for row in x[:500]
        ]
        self.path = f"/v2/models/{model}/infer"
        self.threads = [
            threading.Thread(target=self._client, args=(port, i), daemon=True)
            for i in range(clients)
        ]
        for t in self.threads:
            t.start()

    def _client(self, port: int, offset: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        i = offset
        try:
            while not self.stop_event.is_set():
                conn.request("POST", self.path, body=self.bodies[i % len(self.bodies)])
                conn.getresponse().read()
                i += len(self.threads)
        except OSError:
            pass  # the server stopped
        finally:
            conn.close()

    def stop(self) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join(15)


def bad_candidate_rolled_back(
    reg: Any, model: str, x: np.ndarray, out: Path
) -> tuple[Any, list[Any]]:
    """Register the bad candidate, serve `model@production` in a fresh server, start a
    rollout and let the controller judge it; prints the history table and writes
    `rollout.png`. Returns the rollout as it ended and the controller's observations."""
    from aiarch.rollout import Controller, Rollout, Thresholds
    from aiarch.rollout.cli import history_table

    production = reg.get(model, alias="production")
    bad = reg.register(
        model,
        write_bad_model(out, production, x),
        tags={"task": "fraud", "purpose": "demo: bad on purpose"},
    )
    port = free_port()
    server = ServerProcess(
        [
            "--model",
            f"{model}@production",
            "--registry-poll",
            "0.1",
            "--inline-execution",
            "off",
            "--log-level",
            "warning",
        ],
        out / "rollout-server.log",
        port=port,
    )
    try:
        server.wait_ready(120)
        input_name = (production.signature or {}).get("inputs", [{"name": "x"}])[0]["name"]
        traffic = _Traffic(port, model, input_name, x)
        try:
            ro = Rollout.start(
                reg,
                model,
                bad.version,
                steps=(10, 50, 100),
                dwell_s=2.0,
                step_timeout_s=30.0,
                thresholds=Thresholds(min_requests=30),
                reason="demo: a candidate made bad on purpose",
            )
            print(
                f"  rolling out version {bad.version} against production version "
                f"{production.version}: steps 10, 50, 100 %, 2 s each, on "
                f"http://127.0.0.1:{port}; {HEALTHY_S:g} s after loading, version "
                f"{bad.version} starts failing on large amounts and takes 20 ms more per batch"
            )
            controller = Controller(reg, model, [server.base], poll_s=0.2)
            quiet = logging.getLogger("aiarch.rollout")
            level = quiet.level
            quiet.setLevel(logging.ERROR)  # the table below says it all
            try:
                ro = controller.run()
            finally:
                quiet.setLevel(level)
        finally:
            traffic.stop()
    finally:
        server.stop()
    print(f"  {ro.state}: {ro.reason}")
    print("  production still on version", reg.alias_version(model, "production"))
    print("\n".join("  " + line for line in history_table(ro.events(reg)).splitlines()))
    plot_rollout(controller.observations, ro, out / "rollout.png")
    return ro, controller.observations


def plot_rollout(observations: list[Any], ro: Any, png: Path) -> None:
    """Route weight and per-arm error rate and p99 over time, one panel each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not observations:
        return
    t0 = ro.created_at
    t = [o.at - t0 for o in observations]
    weights = [o.weight for o in observations]
    end = ro.updated_at - t0
    fig, (ax_w, ax_e, ax_p) = plt.subplots(3, 1, sharex=True, figsize=(8, 7))
    final = 100 if ro.state == "completed" else 0
    ax_w.step([0.0, *t, end], [weights[0], *weights, final], where="post")
    ax_w.set_ylabel("candidate weight %")
    ax_w.set_ylim(-5, 105)
    for arm, style in (("production", "-"), ("candidate", "--")):
        stats = [getattr(o, arm) for o in observations]
        ax_e.plot(t, [100 * s.error_rate for s in stats], style, label=arm)
        ax_p.plot(
            t, [np.nan if s.p99_s is None else 1e3 * s.p99_s for s in stats], style, label=arm
        )
    ax_e.set_ylabel("error rate %")
    ax_p.set_ylabel("p99 ms")
    ax_p.set_xlabel("seconds since the rollout started")
    for ax in (ax_w, ax_e, ax_p):
        ax.axvline(end, color="grey", linestyle=":")
        ax.grid(alpha=0.3)
    ax_e.legend()
    fig.suptitle(f"rollout #{ro.id} of {ro.model}: version {ro.candidate} → {ro.state}")
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
