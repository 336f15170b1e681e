"""Drift is detected on shifted data and not on same-distribution data, on large windows
(effect size) and small windows (statistical tests), with bounded false-alarm rates."""

from __future__ import annotations

import numpy as np
import pytest

from aiarch.monitor import DriftConfig, FeatureDriftConfig, Profile, evaluate_drift

FEATURES = 8
WINDOWS = 100


def _reference(seed: int = 100) -> tuple[Profile, np.random.Generator]:
    rng = np.random.default_rng(seed)
    x = np.column_stack(
        [rng.normal(size=20_000) for _ in range(FEATURES - 2)]
        + [rng.exponential(size=20_000), rng.integers(0, 5, size=20_000)]
    )
    names = [f"f{i}" for i in range(FEATURES)]
    return Profile.build(x, names, categorical=[names[-1]]), rng


def _window(rng: np.random.Generator, rows: int, shift: float = 0.0) -> np.ndarray:
    cats = (
        rng.choice(5, size=rows, p=[0.6, 0.1, 0.1, 0.1, 0.1]) if shift else rng.integers(0, 5, rows)
    )
    return np.column_stack(
        [rng.normal(loc=shift, size=rows) for _ in range(FEATURES - 2)]
        + [rng.exponential(size=rows) * (1 + shift), cats]
    )


@pytest.mark.parametrize("rows", [300, 5000], ids=["small-window", "large-window"])
def test_shift_is_detected(rows: int) -> None:
    profile, _ = _reference()
    for seed in range(10):
        drift = evaluate_drift(
            profile, profile.count(_window(np.random.default_rng(seed), rows, 0.5))
        )
        assert drift.drifted, [(f.name, f.method, f.score) for f in drift.features]
        assert drift.share == 1.0
        methods = {f.method for f in drift.features}
        assert methods == ({"ks", "chisquare"} if rows <= 1000 else {"wasserstein", "js"})


def test_false_alarms_small_windows_within_alpha() -> None:
    """Per feature, the tests run at alpha = 0.05 (the binned KS test is conservative). Over
    100 windows x 8 features the count of false alarms is Binomial(800, <= 0.05): mean <= 40,
    and P(count > 62) < 1e-3. The dataset needs half its features to drift, which same-
    distribution windows essentially never reach: at most 1 in 100 is allowed."""
    profile, _ = _reference()
    feature_alarms = dataset_alarms = 0
    for seed in range(WINDOWS):
        drift = evaluate_drift(profile, profile.count(_window(np.random.default_rng(seed), 300)))
        feature_alarms += sum(f.drifted for f in drift.features)
        dataset_alarms += drift.drifted
    assert feature_alarms <= 62
    assert dataset_alarms <= 1


def test_no_false_alarms_large_windows() -> None:
    """Effect-size thresholds (0.1) sit far above the sampling noise of 5,000-row windows
    (normalized Wasserstein ~ 0.02, JS ~ 0.02): zero alarms over 100 windows."""
    profile, _ = _reference()
    worst = 0.0
    for seed in range(WINDOWS):
        drift = evaluate_drift(profile, profile.count(_window(np.random.default_rng(seed), 5000)))
        assert not any(f.drifted for f in drift.features), seed
        worst = max(worst, *(f.score for f in drift.features))
    assert worst < 0.06


def test_per_feature_overrides_and_null_rate() -> None:
    profile, _ = _reference()
    x = _window(np.random.default_rng(7), 5000)
    x[:1000, 0] = np.nan
    x[1000:1500, 1] = np.inf
    cfg = DriftConfig(features={"f2": FeatureDriftConfig("psi", threshold=0.0)}, drift_share=0.1)
    drift = evaluate_drift(profile, profile.count(x), cfg)
    by = {f.name: f for f in drift.features}
    assert by["f0"].null_rate == pytest.approx(0.2)
    assert by["f1"].null_rate == pytest.approx(0.1)
    assert by["f2"].method == "psi" and by["f2"].drifted  # threshold 0: any PSI drifts
    assert drift.share == pytest.approx(1 / FEATURES)
    assert drift.drifted  # 1/8 >= 0.1
