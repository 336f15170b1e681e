"""Latency and drift monitoring on the serving path.

- :class:`Profile`: reference bins and counts built once from training data, stored as bytes
  with a model version.
- :class:`Monitor`: attached to a model (``Runtime.add_model(..., monitor=Monitor(profile))``);
  counts each served batch in one native call; closes drift windows, evaluates alerts and
  reports latency percentiles per window.
- :class:`FeedbackTracker`: ground-truth labels joined with recent predictions by request id or
  entity id + time into online quality per version (``Runtime.feedback``).
- Drift metrics on binned counts: :func:`psi`, :func:`js_distance`, :func:`ks_binned`,
  :func:`wasserstein_binned`, and :func:`evaluate_drift` with Evidently-style defaults.
"""

from __future__ import annotations

from .alerts import AlertRule
from .drift import (
    DatasetDrift,
    DriftConfig,
    FeatureDrift,
    FeatureDriftConfig,
    evaluate_drift,
    js_distance,
    ks_binned,
    psi,
    wasserstein_binned,
)
from .feedback import FeedbackConfig, FeedbackResult, FeedbackTracker, Label
from .monitor import Monitor, MonitorConfig, MonitorSnapshot, merge_snapshots, report_from_snapshot
from .predlog import PredictionLogConfig
from .profile import FeatureProfile, Profile

__all__ = [
    "AlertRule",
    "DatasetDrift",
    "DriftConfig",
    "FeatureDrift",
    "FeatureDriftConfig",
    "FeatureProfile",
    "FeedbackConfig",
    "FeedbackResult",
    "FeedbackTracker",
    "Label",
    "Monitor",
    "MonitorConfig",
    "MonitorSnapshot",
    "PredictionLogConfig",
    "Profile",
    "evaluate_drift",
    "js_distance",
    "ks_binned",
    "merge_snapshots",
    "psi",
    "report_from_snapshot",
    "wasserstein_binned",
]
