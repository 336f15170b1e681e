"""The demo's rollout step: a candidate made bad on purpose goes out progressively and the
controller rolls it back on its own, from the server's metrics; and the plot of rollouts."""

from __future__ import annotations

import logging
import textwrap
from pathlib import Path
from typing import Any

import numpy as np

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


def bad_candidate_rolled_back(
    reg: Any, model: str, x: np.ndarray, out: Path, servers: list[str]
) -> tuple[Any, list[Any]]:
    """Register the bad candidate and roll it out on the servers following
    `model@production` (their traffic keeps flowing), letting the controller judge it; prints
    the history table. Returns the rollout as it ended and the controller's observations."""
    from aiarch.rollout import Controller, Rollout, Thresholds
    from aiarch.rollout.cli import history_table

    production = reg.get(model, alias="production")
    bad = reg.register(
        model,
        write_bad_model(out, production, x),
        tags={"task": "fraud", "purpose": "demo: bad on purpose"},
    )
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
        f"{production.version}: steps 10, 50, 100 %, 2 s each; version {bad.version} scores "
        f"every transaction 0.5 and, {HEALTHY_S:g} s after loading, fails on large amounts and "
        "takes 20 ms more per batch"
    )
    controller = Controller(reg, model, servers, poll_s=0.2)
    quiet = logging.getLogger("aiarch.rollout")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # the table below says it all
    try:
        ro = controller.run()
    finally:
        quiet.setLevel(level)
    print(f"  {ro.state}: {ro.reason}")
    print("  production still on version", reg.alias_version(model, "production"))
    print("\n".join("  " + line for line in history_table(ro.events(reg)).splitlines()))
    return ro, controller.observations


def plot_rollouts(rollouts: list[tuple[Any, list[Any]]], png: Path) -> None:
    """One column per rollout: route weight, then per-arm error rate, p99 and online AUC
    (where labels exist) over time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [(ro, obs) for ro, obs in rollouts if ro is not None and obs]
    if not shown:
        return
    fig, axes = plt.subplots(
        4, len(shown), sharex="col", figsize=(6 * len(shown), 9), squeeze=False
    )
    for col, (ro, observations) in enumerate(shown):
        ax_w, ax_e, ax_p, ax_q = axes[:, col]
        t0 = ro.created_at
        t = [o.at - t0 for o in observations]
        weights = [o.weight for o in observations]
        end = ro.updated_at - t0
        final = 100 if ro.state == "completed" else 0
        ax_w.step([0.0, *t, end], [weights[0], *weights, final], where="post")
        ax_w.set_ylim(-5, 105)
        for arm, style in (("production", "-"), ("candidate", "--")):
            stats = [getattr(o, arm) for o in observations]
            # Markers: a rollout rolled back at its first judgement has one point per arm.
            line = {"linestyle": style, "marker": "o", "markersize": 3, "label": arm}
            ax_e.plot(t, [100 * s.error_rate for s in stats], **line)
            ax_p.plot(t, [np.nan if s.p99_s is None else 1e3 * s.p99_s for s in stats], **line)
            ax_q.plot(t, [s.quality.get("auc", np.nan) for s in stats], **line)
        for ax in (ax_w, ax_e, ax_p, ax_q):
            ax.axvline(end, color="grey", linestyle=":")
            ax.grid(alpha=0.3)
        ax_e.legend()
        ax_q.set_xlabel("seconds since the rollout started")
        ax_w.set_title(f"rollout #{ro.id}: version {ro.candidate} vs {ro.baseline} → {ro.state}")
        if col == 0:
            ax_w.set_ylabel("candidate weight %")
            ax_e.set_ylabel("error rate %")
            ax_p.set_ylabel("p99 ms")
            ax_q.set_ylabel("online AUC")
    fig.suptitle(f"progressive rollouts of {shown[0][0].model}")
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
