"""Progressive rollout with automatic rollback: a candidate version takes a growing share of
a model's traffic, step by step, while a controller compares it with production on the
servers' own metrics; a breach rolls it back at once, the last step moves `production`.

    from aiarch.rollout import Controller, Rollout
    ro = Rollout.start(reg, "fraud", 4, steps=(5, 25, 50, 100), dwell_s=300)
    Controller(reg, "fraud", ["http://127.0.0.1:8000"]).run()   # completed or rolled_back

State lives in the registry (`aiarch.rollout.state`): every `aiarch serve` following
`fraud@production` reads the step on its alias poll, so all servers agree on the split.
"""

from __future__ import annotations

from .controller import Controller, Observation
from .judge import ArmStats, Verdict, judge, parse_metrics
from .state import (
    DEFAULT_STEPS,
    LeaseHeldError,
    LeaseLostError,
    Rollout,
    RolloutEvent,
    Thresholds,
    abort,
    pause,
    resume,
)

__all__ = [
    "DEFAULT_STEPS",
    "ArmStats",
    "Controller",
    "LeaseHeldError",
    "LeaseLostError",
    "Observation",
    "Rollout",
    "RolloutEvent",
    "Thresholds",
    "Verdict",
    "abort",
    "judge",
    "parse_metrics",
    "pause",
    "resume",
]
