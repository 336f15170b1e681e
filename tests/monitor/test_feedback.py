"""FeedbackTracker and Runtime.feedback in process: joins by id and by entity id + time,
late/unknown accounting with an injected clock, and the quality metrics pinned to literals."""

from __future__ import annotations

import numpy as np
import pytest

from aiarch.errors import InvalidArgumentError, NotFoundError
from aiarch.monitor.feedback import (
    QUALITY_METRICS,
    FeedbackConfig,
    FeedbackTracker,
    Label,
    decode_labels,
    quality,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_quality_metrics_golden_values() -> None:
    scores = np.array([0.1, 0.4, 0.35, 0.8])
    labels = np.array([0.0, 0.0, 1.0, 1.0])
    assert quality("auc", scores, labels) == pytest.approx(0.75, abs=1e-12)
    assert quality("auc", scores, np.ones(4)) is None  # one class: undefined
    assert quality(
        "accuracy", np.array([1.0, 2.0, 0.0]), np.array([1.0, 2.0, 2.0])
    ) == pytest.approx(2 / 3)
    assert quality("mae", np.array([1.0, 2.5]), np.array([2.0, 2.0])) == pytest.approx(0.75)
    assert quality("mae", np.array([]), np.array([])) is None


def test_unknown_metric_is_refused_listing_the_valid_names() -> None:
    with pytest.raises(InvalidArgumentError) as e:
        FeedbackConfig(metric="f1")
    for name in QUALITY_METRICS:
        assert name in str(e.value)
    with pytest.raises(InvalidArgumentError, match="horizon_s"):
        FeedbackConfig.from_dict({"metric": "auc", "horizon": 5})


def test_labels_join_by_id_and_late_after_the_horizon() -> None:
    clock = Clock()
    t = FeedbackTracker("m", FeedbackConfig(metric="auc", horizon_s=60.0), clock=clock)
    t.record("a", "1", np.array([[0.9]]))
    t.record_many(["b", "c"], "2", np.array([[0.2], [0.7]]))
    r = t.feedback([Label(label=1, id="a"), Label(label=0, id="b"), Label(label=1, id="zz")])
    assert (r.joined, r.unknown, r.late) == (2, 1, 0)
    clock.now += 61.0
    t.record("d", "2", np.array([[0.5]]))  # evicts "c", older than the horizon
    r = t.feedback([Label(label=1, id="c"), Label(label=1, id="d")])
    assert (r.joined, r.unknown, r.late) == (1, 0, 1)
    assert t.counters() == {"1|joined": 1, "2|joined": 2, "|unknown": 1, "2|late": 1}


def test_index_is_bounded_by_max_predictions() -> None:
    t = FeedbackTracker("m", FeedbackConfig(metric="mae", max_predictions=3), clock=Clock())
    t.record_many([f"r{i}" for i in range(10)], "1", np.arange(10.0).reshape(10, 1))
    r = t.feedback([Label(label=0, id=f"r{i}") for i in range(10)])
    assert (r.joined, r.late) == (3, 7)
    assert t.quality()["1"] == {"metric": "mae", "value": pytest.approx(8.0), "labels": 3}


def test_accuracy_reads_the_argmax_of_class_scores() -> None:
    t = FeedbackTracker("m", FeedbackConfig(metric="accuracy"), clock=Clock())
    t.record_many(["a", "b"], "1", np.array([[0.1, 0.7, 0.2], [0.6, 0.3, 0.1]]))
    t.feedback([Label(label=1, id="a"), Label(label=2, id="b")])
    assert t.quality()["1"]["value"] == pytest.approx(0.5)


def test_quality_window_forgets_old_labels() -> None:
    clock = Clock()
    t = FeedbackTracker("m", FeedbackConfig(metric="mae", window_s=10.0), clock=clock)
    t.record("a", "1", np.array([[1.0]]))
    t.feedback([Label(label=0, id="a")])
    clock.now += 11.0
    assert t.quality()["1"] == {"metric": "mae", "value": None, "labels": 0}


def test_decode_labels_names_expected_fields() -> None:
    assert decode_labels(b'{"labels": [{"id": "x", "label": 1}]}')[0].id == "x"
    with pytest.raises(InvalidArgumentError, match='"labels"'):
        decode_labels(b'{"labels": [{"label": 1}]}')
    with pytest.raises(InvalidArgumentError, match="out of range"):
        decode_labels(b'{"labels": [{"id": "x", "label": 1e999}]}')


def test_runtime_feedback_joins_by_entity_id_and_time() -> None:
    """A model reading entity ids records each batch's ids and outputs; labels by entity +
    event time join the latest prediction made at or before the event."""
    from aiarch import Runtime, TensorSpec

    def model(entity: np.ndarray, x: np.ndarray) -> np.ndarray:
        return x * 2.0

    rt = Runtime()
    try:
        tracker = rt.enable_feedback("m", FeedbackConfig(metric="mae", entity_input=0))
        rt.add_model(
            "m",
            model,
            inputs=[TensorSpec("entity", "int64", (1,)), TensorSpec("x", "float32", (1,))],
            feedback=tracker,
        )
        ents = np.array([[7], [8]], np.int64)
        rt.infer_sync("m", (ents, np.array([[1.0], [3.0]], np.float32)))
        import time

        now = time.time()
        r = rt.feedback(
            "m",
            [
                {"entity_id": 7, "time": now + 0.5, "label": 2.5},  # predicted 2.0
                {"entity_id": 8, "label": 6.0},  # predicted 6.0
                {"entity_id": 9, "label": 1.0},
                {"entity_id": 7, "time": now - 86_400, "label": 1.0},  # before the horizon
            ],
        )
        assert (r.joined, r.unknown, r.late) == (2, 1, 1)
        assert tracker.quality()["1"] == {
            "metric": "mae",
            "value": pytest.approx(0.25),
            "labels": 2,
        }
        with pytest.raises(InvalidArgumentError, match="exactly one of"):
            rt.feedback("m", [{"label": 1.0}])
        with pytest.raises(InvalidArgumentError, match="finite"):
            rt.feedback("m", [{"id": "a", "label": float("nan")}])
        with pytest.raises(NotFoundError, match="enable_feedback"):
            rt.feedback("other", [])
    finally:
        rt.close()


def test_unreadable_predictions_are_counted_never_raised() -> None:
    t = FeedbackTracker("m", FeedbackConfig(metric="auc", score_index=5), clock=Clock())
    t.record("a", "1", np.array([[0.3]]))  # one column: no column 5
    t.record_many(["b"], "1", np.array([[0.3]]))
    assert t.record_errors == 2 and t.recorded == 0
    assert t.feedback([Label(label=1, id="a")]).unknown == 1
