"""The warm-up call at load is not a feature lookup: a served model with feature inputs starts
with every lookup counter at zero, and the first real request is counted by its row status."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from aiarch import Runtime
from aiarch.features import FeatureStore
from aiarch.serving.features import lookup_stats, prepare
from aiarch.serving.loader import resolve_object

from .conftest import CARD, TXN

MODELS = Path(__file__).resolve().parent / "serving_models.py"


def test_warm_up_counts_no_lookup(tmp_path: Path) -> None:
    home = tmp_path / "home"
    store = FeatureStore(f"native://{tmp_path / 'online'}", home=home)
    store.apply(CARD, TXN)
    now = time.time_ns()
    store.write(
        "txn",
        {
            "card": [1],
            "event_timestamp": [now],
            "amount_7d": [10.0],
            "count_1h": [2],
            "risky": [False],
        },
    )
    store.save()
    table = {
        "store": f"native://{tmp_path / 'online'}",
        "home": str(home),
        "lookups": ["txn:amount_7d", "txn:count_1h"],
    }
    model = prepare("warm_fraud", resolve_object(f"{MODELS}:score"), table, {}, None)
    with Runtime() as rt:
        rt.add_model("warm_fraud", model, warmup=True)
        stats = lookup_stats("warm_fraud")
        assert stats is not None
        assert stats["count"] == 0 and stats["ns"] == 0
        assert stats["rows"] == {"present": 0, "expired": 0, "missing": 0, "unavailable": 0}
        score, status = rt.infer_sync("warm_fraud", np.array([1], np.int64))
        np.testing.assert_allclose(score, [[12.0]])
        np.testing.assert_array_equal(status, [0])
        stats = lookup_stats("warm_fraud")
        assert stats is not None and stats["count"] == 1
        assert stats["rows"] == {"present": 1, "expired": 0, "missing": 0, "unavailable": 0}
