"""Drift metrics pinned to hand-computed literals, cross-checked with scipy where it applies."""

from __future__ import annotations

import numpy as np
import pytest

from aiarch.monitor import js_distance, ks_binned, psi, wasserstein_binned
from aiarch.monitor.drift import chisquare_pvalue, ks_pvalue

# Layout: [null, bin1, bin2, ...]; nulls are left out of the distributions.
REF_2 = np.array([7, 50, 50])  # 0.5 / 0.5
CUR_2 = np.array([0, 25, 75])  # 0.25 / 0.75
REF_4 = np.array([3, 10, 20, 30, 40])  # 0.1 0.2 0.3 0.4
CUR_4 = np.array([1, 40, 30, 20, 10])  # 0.4 0.3 0.2 0.1
CENTERS_4 = np.array([-1.0, 0.0, 2.0, 5.0])


def test_psi_golden() -> None:
    # 0.25 ln 2 + 0.25 ln 1.5
    assert psi(REF_2, CUR_2) == pytest.approx(0.274653072, abs=1e-9)
    # 2 * (0.3 ln 4 + 0.1 ln 1.5)
    assert psi(REF_4, CUR_4) == pytest.approx(0.912869638, abs=1e-9)
    assert psi(REF_4, REF_4) == 0.0


def test_psi_smooths_empty_bins() -> None:
    # An empty current bin counts as proportion 1e-4: (0.5 - 1e-4) ln(0.5 / 1e-4) + ...
    got = psi(np.array([0, 50, 50]), np.array([0, 0, 100]))
    want = (0.5 - 1e-4) * np.log(0.5 / 1e-4) + (0.5 - 1.0) * np.log(0.5 / 1.0)
    assert got == pytest.approx(float(want), rel=1e-12)
    assert got == pytest.approx(4.604318, abs=1e-6)


def test_js_distance_golden_and_scipy() -> None:
    from scipy.spatial.distance import jensenshannon

    assert js_distance(REF_2, CUR_2) == pytest.approx(0.183907791, abs=1e-9)
    assert js_distance(REF_4, CUR_4) == pytest.approx(0.326251644, abs=1e-9)
    assert js_distance(REF_4, CUR_4) == pytest.approx(
        float(jensenshannon([0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1])), rel=1e-12
    )
    # Disjoint supports: the largest distance, sqrt(ln 2).
    assert js_distance(np.array([0, 10, 0]), np.array([0, 0, 10])) == pytest.approx(
        np.sqrt(np.log(2)), rel=1e-12
    )


def test_ks_binned_golden_and_scipy() -> None:
    from scipy.stats import ks_2samp

    assert ks_binned(REF_2, CUR_2) == pytest.approx(0.25, abs=1e-12)
    # CDFs .1 .3 .6 1 vs .4 .7 .9 1: largest gap 0.4.
    assert ks_binned(REF_4, CUR_4) == pytest.approx(0.4, abs=1e-12)
    # Samples that sit on the bin centers have exactly the binned statistic.
    u = np.repeat(CENTERS_4, REF_4[1:])
    v = np.repeat(CENTERS_4, CUR_4[1:])
    res = ks_2samp(u, v, method="asymp")
    assert ks_binned(REF_4, CUR_4) == pytest.approx(res.statistic, abs=1e-12)
    # Effective size 50: scipy's kstwo, exactly as ks_2samp(method="asymp").
    assert ks_pvalue(0.4, 100, 100) == pytest.approx(res.pvalue, rel=1e-9)
    assert ks_pvalue(0.4, 100, 100) == pytest.approx(9.8636e-08, rel=1e-4)


def test_ks_pvalue_large_samples_use_the_corrected_asymptotic_form() -> None:
    from scipy.stats import ks_2samp, kstwo

    # Effective size 2,000: Stephens' form, within 2 % of kstwo at moderate p-values.
    for d in (0.02, 0.03, 0.04):
        exact = float(kstwo.sf(d, 2000))
        assert ks_pvalue(d, 4000, 4000) == pytest.approx(exact, rel=0.02), d
    # And of ks_2samp on real samples.
    rng = np.random.default_rng(9)
    a, b = rng.normal(size=4000), rng.normal(0.05, size=4000)
    res = ks_2samp(a, b, method="asymp")
    assert ks_pvalue(res.statistic, 4000, 4000) == pytest.approx(res.pvalue, rel=0.02)


def test_wasserstein_binned_golden_and_scipy() -> None:
    from scipy.stats import wasserstein_distance

    assert wasserstein_binned(REF_2, CUR_2, np.array([0.0, 1.0])) == pytest.approx(0.25)
    # |CDF gaps| .3 .4 .3 times center gaps 1 2 3.
    assert wasserstein_binned(REF_4, CUR_4, CENTERS_4) == pytest.approx(2.0, abs=1e-12)
    assert wasserstein_binned(REF_4, CUR_4, CENTERS_4) == pytest.approx(
        wasserstein_distance(CENTERS_4, CENTERS_4, REF_4[1:], CUR_4[1:]), rel=1e-12
    )


def test_chisquare_pvalue_matches_scipy() -> None:
    from scipy.stats import chisquare

    ref = np.array([0, 30, 30, 40])
    cur = np.array([5, 20, 50, 30])
    want = chisquare([20, 50, 30], np.array([0.3, 0.3, 0.4]) * 100).pvalue
    assert chisquare_pvalue(ref, cur) == pytest.approx(float(want), rel=1e-12)
    # X^2 = 100/30 + 400/30 + 100/40 = 115/6 with 2 degrees of freedom: p = exp(-115/12).
    assert chisquare_pvalue(ref, cur) == pytest.approx(6.886701e-05, rel=1e-6)


def test_dataset_evaluation_matches_the_scalar_functions() -> None:
    """evaluate_drift computes every metric over a features x bins matrix at once; it must agree
    with the one-feature functions above on random counts (empty bins included)."""
    from aiarch.monitor import Profile, evaluate_drift

    rng = np.random.default_rng(5)
    data = {f"n{i}": rng.normal(size=3000) * (i + 1) for i in range(5)}
    data["cat"] = rng.choice(["a", "b", "c", "d"], size=3000)
    data["few"] = rng.integers(0, 3, size=3000).astype(np.float64)  # fewer bins: its own group
    profile = Profile.build(data, categorical=["cat"])
    for rows in (200, 5000):
        cur = {k: v[rng.integers(0, 3000, rows)] for k, v in data.items()}
        cur["n0"] = cur["n0"] + 0.3
        cur["n1"][:20] = np.nan
        counts = profile.count(cur)
        drift = evaluate_drift(profile, counts)
        off = profile.offsets()
        for i, (f, got) in enumerate(zip(profile.features, drift.features)):
            ref = np.asarray(f.reference_counts)
            c = counts[off[i] : off[i + 1]]
            assert got.name == f.name and got.rows == int(c[1:].sum())
            assert got.psi == pytest.approx(psi(ref, c), rel=1e-9)
            assert got.js == pytest.approx(js_distance(ref, c), rel=1e-9, abs=1e-12)
            if f.kind == "numeric":
                assert got.ks == pytest.approx(ks_binned(ref, c), abs=1e-12)
                w = wasserstein_binned(ref, c, np.asarray(f.centers)) / f.std
                assert got.wasserstein == pytest.approx(w, rel=1e-9, abs=1e-12)
                if got.method == "ks":
                    p = ks_pvalue(ks_binned(ref, c), int(ref[1:].sum()), got.rows)
                    assert got.score == pytest.approx(p, rel=1e-9, abs=1e-300)
            elif got.method == "chisquare":
                assert got.score == pytest.approx(chisquare_pvalue(ref, c), rel=1e-9, abs=1e-300)
        assert {f.method for f in drift.features} == (
            {"ks", "chisquare"} if rows <= 1000 else {"wasserstein", "js"}
        )
