"""Retraining policies: triggers (drift, SLO breach, online quality below a floor, new labelled
rows, a schedule) start `aiarch train` on the window's labelled, point-in-time data; a version
that passes its gates gets the policy's `promote_alias` (never `production`).

    from aiarch.retrain import Retrainer, load_policy
    run = Retrainer(load_policy("fraud-policy.toml")).once()   # None when no trigger fired
"""

from __future__ import annotations

from .policy import TRIGGER_KINDS, RetrainPolicy, Trigger, load_policy, policy_from_dict
from .runner import Retrainer, RunRecord, ScriptContext, script_context
from .triggers import TriggerCheck

__all__ = [
    "TRIGGER_KINDS",
    "RetrainPolicy",
    "Retrainer",
    "RunRecord",
    "ScriptContext",
    "Trigger",
    "TriggerCheck",
    "load_policy",
    "policy_from_dict",
    "script_context",
]
