"""A retraining job whose version is a Python model computing x * 2 (with --fail-negative: one
that fails on negative inputs), registered under the run's id and lineage tags, so that a
rollout of it can be judged against a real server in a few seconds."""

from __future__ import annotations

import sys
from pathlib import Path

from aiarch.registry import Registry
from aiarch.retrain import script_context

MODEL = """
def predict(x):
    if {fail} and (x < 0).any():
        raise ValueError("candidate fails on negative input")  # warm-up (zeros) passes
    return x * {factor}


predict.inputs = [{{"name": "x", "dtype": "float32", "shape": (4,)}}]
predict.outputs = [{{"name": "y", "dtype": "float32", "shape": (4,)}}]
"""


def main() -> None:
    run = script_context()
    assert run is not None, "started outside a retraining run"
    source = Path(run.train_path).parent / "candidate.py"
    source.write_text(MODEL.format(fail="--fail-negative" in sys.argv, factor=2.0))
    Registry().register(
        run.model,
        f"{source}:predict",
        metrics={"auc": 0.9},
        tags={"run_id": run.run_id, **run.tags},
    )


if __name__ == "__main__":
    main()
