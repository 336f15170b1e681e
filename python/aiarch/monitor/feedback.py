"""Label feedback: ground truth joined with recent predictions into online quality.

A `FeedbackTracker` is one per served model (public name). It keeps a bounded index of recent
predictions — by request id (the `id` a v2 request carries and its response echoes) and, when
the model reads entity ids, by entity id and time — fed from where predictions are recorded:

- requests the App answers in Python: once per request, as their response is encoded;
- requests the native front end answers: once per drain of its completion queue, the batch's
  (id, first output row) records taken together (`HttpFront.take_predictions`);
- entity ids: once per executed batch, the batch's entity column and outputs (`wrap`).

`feedback(labels)` joins each label with its prediction and counts the outcome: *joined*,
*unknown* (no prediction with that id or entity was recorded) or *late* (it was recorded but has
left the index: older than `horizon_s`, pushed out by `max_predictions`, or already labelled).
Neither is an error and nothing here blocks serving. Joined labels feed a quality window per
version (AUC for binary scores, accuracy for classes, MAE for regression), and every label that
names an entity and a time is appended to the label log (Parquet) that retraining reads.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from aiarch.errors import InvalidArgumentError

__all__ = [
    "OUTCOMES",
    "QUALITY_METRICS",
    "FeedbackConfig",
    "FeedbackResult",
    "FeedbackTracker",
    "Label",
    "decode_labels",
    "quality",
]

log = logging.getLogger("aiarch.monitor")

QUALITY_METRICS = ("auc", "accuracy", "mae")
"""Online quality metrics: `auc` (binary label 0/1 vs a score), `accuracy` (class id vs the
predicted class: argmax of the output row, or the value itself for a one-value output), `mae`
(mean absolute error of a regression output)."""

OUTCOMES = ("joined", "unknown", "late")
"""What became of a label (the `outcome` label of `aiarch_feedback_labels`)."""


@dataclass(frozen=True)
class FeedbackConfig:
    """How a model's labels are joined and scored (`[models.NAME.monitor.feedback]`)."""

    metric: str = "auc"
    """Online quality metric, one of `QUALITY_METRICS`."""
    score_index: int = -1
    """Column of the model's first output read as the score (auc) or prediction (mae); -1 =
    the last column (the positive-class probability of a two-column output)."""
    horizon_s: float = 3600.0
    """Predictions older than this leave the index; their labels count as late."""
    max_predictions: int = 200_000
    """Bound of the id index (and, in rows, of the entity index); the oldest leave first."""
    window_s: float = 3600.0
    """Quality is computed over labels joined within this many seconds."""
    max_window_labels: int = 100_000
    """Joined labels kept per version for the quality window."""
    entity_input: int | None = None
    """Index of the input holding one entity id per row (enables joins by entity id + time);
    None = joins by request id only."""
    label_log: str = ""
    """Folder of the label log (Parquet) that retraining reads; empty = no log."""

    def __post_init__(self) -> None:
        if self.metric not in QUALITY_METRICS:
            raise InvalidArgumentError(
                f"unknown quality metric {self.metric!r}; valid metrics: {list(QUALITY_METRICS)}"
            )
        if not (self.horizon_s > 0 and self.window_s > 0):
            raise InvalidArgumentError("feedback horizon_s and window_s must be > 0")
        if self.max_predictions < 1 or self.max_window_labels < 1:
            raise InvalidArgumentError(
                "feedback max_predictions and max_window_labels must be >= 1"
            )

    @classmethod
    def from_dict(cls, table: Mapping[str, Any]) -> FeedbackConfig:
        """From a config table; unknown keys are refused with the valid ones."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(table) - known)
        if unknown:
            raise InvalidArgumentError(f"unknown feedback keys {unknown}; expected {sorted(known)}")
        return cls(**dict(table))


class Label(msgspec.Struct, forbid_unknown_fields=True):
    """One ground-truth label: by request `id`, or by `entity_id` + `time` (seconds since the
    epoch of the event the prediction was made for; default: now)."""

    label: float
    id: str | None = None
    entity_id: int | None = None
    time: float | None = None


class _Body(msgspec.Struct, forbid_unknown_fields=True):
    labels: list[Label]


LABEL_FIELDS = (
    '{"labels": [{"id": str, "label": number} | '
    '{"entity_id": int, "time": number (optional), "label": number}, ...]}'
)
"""The feedback body, as error messages name it."""

_decoder = msgspec.json.Decoder(_Body)


def decode_labels(body: bytes) -> list[Label]:
    """The labels of a feedback body; InvalidArgumentError naming the expected fields."""
    try:
        labels = _decoder.decode(body).labels
    except msgspec.ValidationError as e:
        raise InvalidArgumentError(f"bad feedback body ({e}); expected {LABEL_FIELDS}") from None
    except msgspec.DecodeError as e:
        raise InvalidArgumentError(
            f"feedback body is not JSON ({e}); expected {LABEL_FIELDS}"
        ) from None
    for i, lab in enumerate(labels):
        check_label(i, lab)
    return labels


def check_label(i: int, lab: Label) -> None:
    """InvalidArgumentError unless label `i` names one key and a finite label."""
    if (lab.id is None) == (lab.entity_id is None):
        raise InvalidArgumentError(
            f"labels[{i}]: give exactly one of 'id' or 'entity_id'; expected {LABEL_FIELDS}"
        )
    if not np.isfinite(lab.label):
        raise InvalidArgumentError(f"labels[{i}]: 'label' must be a finite number")


class FeedbackResult(msgspec.Struct):
    """What one feedback call did with its labels."""

    joined: int = 0
    unknown: int = 0
    late: int = 0


def quality(metric: str, predictions: np.ndarray, labels: np.ndarray) -> float | None:
    """`metric` of `predictions` against `labels`; None when undefined (no labels, or AUC with
    a single class)."""
    if predictions.size == 0:
        return None
    if metric == "mae":
        return float(np.mean(np.abs(predictions - labels)))
    if metric == "accuracy":
        return float(np.mean(predictions == labels))
    positive = labels > 0.5
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    from scipy.stats import rankdata

    ranks = rankdata(predictions)  # ties get their average rank (Mann-Whitney U)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


# One recorded prediction: (time, version, value, entity id or None). A tuple of atomic values,
# so the garbage collector stops tracking it: an index of a million predictions adds nothing to
# the collector's passes.
_Prediction = tuple[float, str, float, "int | None"]


class FeedbackTracker:
    """Prediction index, label join and quality windows of one model. Thread-safe: the
    recording calls (loop thread, batcher threads) and `feedback` take one lock, held for
    dict operations only."""

    def __init__(
        self,
        model: str,
        config: FeedbackConfig | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.model = model
        self.config = config or FeedbackConfig()
        self._clock = clock
        self._lock = threading.Lock()
        self._by_id: OrderedDict[str, _Prediction] = OrderedDict()
        self._gone: OrderedDict[str, str] = OrderedDict()  # id -> version, for "late"
        # Entity index: per executed batch (time, version, entity ids, values), oldest first.
        self._entity_batches: deque[tuple[float, str, np.ndarray, np.ndarray]] = deque()
        self._entity_rows = 0
        self._joined: dict[str, deque[tuple[float, float, float]]] = {}
        self.counts: dict[tuple[str, str], int] = {}
        """(version, outcome) -> labels; version "" for unknown ids."""
        self.recorded = 0
        self.record_errors = 0
        """Predictions that could not be read (e.g. `score_index` beyond the output's width)."""
        self.label_log: LabelLog | None = (
            LabelLog(model, self.config.label_log) if self.config.label_log else None
        )

    # ------------------------------------------------------------ recording predictions

    def _reduce(self, row: np.ndarray) -> float:
        """The value a prediction is scored by: the score column, or the predicted class."""
        if self.config.metric == "accuracy":
            return float(np.argmax(row)) if row.size > 1 else float(row[0])
        return float(row[self.config.score_index])

    def _reduce_rows(self, values: np.ndarray) -> np.ndarray:
        """`_reduce` of every row of a (rows, width) array."""
        if self.config.metric == "accuracy":
            return values.argmax(axis=1) if values.shape[1] > 1 else values[:, 0]
        return values[:, self.config.score_index]

    def record(self, request_id: str, version: str, output: Any) -> None:
        """One answered request (its first output's first row). Called once per request on the
        App's path. Never raises: an output it cannot read is counted (`record_errors`)."""
        try:
            out = np.asarray(output)
            value = self._reduce(out.reshape(out.shape[0], -1)[0])
        except Exception as e:
            self._record_failed(e)
            return
        with self._lock:
            now = self._clock()
            self._by_id[request_id] = (now, version, value, None)
            self.recorded += 1
            self._evict(now)

    def record_many(self, ids: Sequence[str], version: str, values: np.ndarray) -> None:
        """The answered requests of one drain: `values[i]` is the first output row of `ids[i]`.
        Called once per drain of the native front end. Never raises (see `record`)."""
        try:
            reduced = self._reduce_rows(values)
        except Exception as e:
            self._record_failed(e)
            return
        now = self._clock()
        entries = [(now, version, v, None) for v in reduced.tolist()]
        with self._lock:
            self._by_id.update(zip(ids, entries))  # a reused id keeps its place in the order
            self.recorded += len(entries)
            self._evict(now)

    def _record_failed(self, e: Exception) -> None:
        self.record_errors += 1
        if self.record_errors == 1:
            log.error("feedback of %s cannot read a prediction (score_index?): %s", self.model, e)

    def record_entities(self, version: str, entities: np.ndarray, outputs: Any) -> None:
        """One executed batch of a model that reads entity ids. Called once per batch."""
        out = outputs[0] if isinstance(outputs, (tuple, list)) else outputs
        values = np.asarray(out).reshape(len(entities), -1)
        try:
            reduced = self._reduce_rows(values)
        except IndexError as e:
            self._record_failed(e)
            return
        ents = np.asarray(entities).reshape(-1).astype(np.int64, copy=True)
        with self._lock:
            self._entity_batches.append(
                (self._clock(), version, ents, np.asarray(reduced, np.float64).copy())
            )
            self._entity_rows += ents.size
            self._evict_entities(self._clock())

    def wrap(self, fn: Callable[..., Any], version: str) -> Callable[..., Any]:
        """`fn` with every batch's entity ids and outputs recorded (one call per batch)."""
        index = self.config.entity_input
        assert index is not None
        record = self.record_entities

        def recorded(*inputs: Any) -> Any:
            outputs = fn(*inputs)
            try:
                record(version, np.asarray(inputs[index]), outputs)
            except Exception as e:  # recording must never fail the batch
                log.warning("feedback of %s cannot record a batch: %s", self.model, e)
            return outputs

        recorded.__wrapped__ = fn  # type: ignore[attr-defined]
        return recorded

    def _evict(self, now: float) -> None:
        """Drop the oldest predictions past `max_predictions` or older than `horizon_s`."""
        by_id = self._by_id
        cutoff = now - self.config.horizon_s
        limit = self.config.max_predictions
        while by_id:
            if len(by_id) <= limit and next(iter(by_id.values()))[0] >= cutoff:
                break
            oldest_id, oldest = by_id.popitem(last=False)
            self._forget(oldest_id, oldest[1])

    def _forget(self, request_id: str, version: str) -> None:
        gone = self._gone
        gone[request_id] = version
        while len(gone) > 4 * self.config.max_predictions:
            gone.popitem(last=False)

    def _evict_entities(self, now: float) -> None:
        batches = self._entity_batches
        cutoff = now - self.config.horizon_s
        while batches and (
            batches[0][0] < cutoff
            or self._entity_rows - batches[0][2].size >= self.config.max_predictions
        ):
            self._entity_rows -= batches.popleft()[2].size

    # ------------------------------------------------------------ labels

    def feedback(self, labels: Sequence[Label]) -> FeedbackResult:
        """Join `labels` with the recorded predictions; counts each outcome."""
        result = FeedbackResult()
        now = self._clock()
        logged: list[tuple[float, int | None, float, str | None, str | None, float | None]] = []
        with self._lock:
            for lab in labels:
                if lab.id is not None:
                    p = self._by_id.pop(lab.id, None)
                    if p is not None:
                        t, version, value, entity = p
                        self._forget(lab.id, version)
                        self._join(version, value, lab.label, now, result)
                        event = lab.time if lab.time is not None else t
                        logged.append((event, entity, lab.label, lab.id, version, value))
                        continue
                    gone = self._gone.get(lab.id)
                    outcome = "late" if gone is not None else "unknown"
                    self._count(gone or "", outcome, result)
                    continue
                event = lab.time if lab.time is not None else now
                found = self._find_entity(int(lab.entity_id or 0), event)
                if found is None:
                    late = event < now - self.config.horizon_s
                    self._count("", "late" if late else "unknown", result)
                    logged.append((event, lab.entity_id, lab.label, None, None, None))
                    continue
                version, value = found
                self._join(version, value, lab.label, now, result)
                logged.append((event, lab.entity_id, lab.label, None, version, value))
        if self.label_log is not None and logged:
            self.label_log.offer(logged)
        return result

    def _find_entity(self, entity: int, event: float) -> tuple[str, float] | None:
        """The latest prediction for `entity` made at or before `event` (+1 s of clock skew)."""
        for t, version, ents, values in reversed(self._entity_batches):
            if t > event + 1.0:
                continue
            hit = np.flatnonzero(ents == entity)
            if hit.size:
                return version, float(values[hit[-1]])
        return None

    def _join(
        self, version: str, value: float, label: float, now: float, r: FeedbackResult
    ) -> None:
        window = self._joined.get(version)
        if window is None:
            window = self._joined[version] = deque(maxlen=self.config.max_window_labels)
        window.append((now, value, label))
        self._count(version, "joined", r)

    def _count(self, version: str, outcome: str, r: FeedbackResult) -> None:
        key = (version, outcome)
        self.counts[key] = self.counts.get(key, 0) + 1
        setattr(r, outcome, getattr(r, outcome) + 1)

    # ------------------------------------------------------------ reading

    def window_pairs(self) -> dict[str, tuple[list[float], list[float]]]:
        """version -> (predictions, labels) joined within the window (mergeable across
        processes by concatenation)."""
        cutoff = self._clock() - self.config.window_s
        out: dict[str, tuple[list[float], list[float]]] = {}
        with self._lock:
            for version, window in self._joined.items():
                while window and window[0][0] < cutoff:
                    window.popleft()
                out[version] = ([v for _, v, _ in window], [lab for _, _, lab in window])
        return out

    def quality(self) -> dict[str, dict[str, Any]]:
        """`{"<version>": {"metric": "auc", "value": 0.91 | None, "labels": n}}` over the
        window (the `quality` key of `/v2/models/{m}/monitor`)."""
        return quality_report(self.config.metric, self.window_pairs())

    def counters(self) -> dict[str, int]:
        """`"version|outcome"` -> labels since start (mergeable by addition)."""
        with self._lock:
            return {f"{v}|{o}": n for (v, o), n in self.counts.items()}

    def close(self) -> None:
        if self.label_log is not None:
            self.label_log.close()


def quality_report(
    metric: str, pairs: Mapping[str, tuple[Sequence[float], Sequence[float]]]
) -> dict[str, dict[str, Any]]:
    """The quality key of a monitor report from (predictions, labels) per version."""
    out: dict[str, dict[str, Any]] = {}
    for version, (preds, labels) in sorted(pairs.items()):
        value = quality(metric, np.asarray(preds, np.float64), np.asarray(labels, np.float64))
        out[version] = {"metric": metric, "value": value, "labels": len(labels)}
    return out


class LabelLog:
    """Labels appended to Parquet files (`time, entity_id, label, id, version, prediction,
    received_at`) by a background thread; the feedback call only queues (never blocks: a full
    queue drops and counts)."""

    SCHEMA_FIELDS = ("time", "entity_id", "label", "id", "version", "prediction", "received_at")

    def __init__(self, model: str, directory: str, max_pending: int = 1024) -> None:
        import pyarrow  # noqa: F401  (fail at configuration time)

        self.model = model
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.rows = 0
        self.dropped = 0
        self._files = 0
        self._queue: queue.Queue[list[Any] | None] = queue.Queue(max_pending)
        self._thread = threading.Thread(target=self._run, name="aiarch-labellog", daemon=True)
        self._thread.start()

    def offer(self, rows: list[Any]) -> None:
        try:
            self._queue.put_nowait([(*r, time.time()) for r in rows])
        except queue.Full:
            self.dropped += len(rows)

    def close(self, timeout_s: float = 10.0) -> None:
        try:
            self._queue.put(None, timeout=timeout_s)
        except queue.Full:
            return
        self._thread.join(timeout_s)

    def _run(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        done = False
        while not done:
            got = [self._queue.get()]
            while True:
                try:
                    got.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            done = got[-1] is None
            rows = [r for part in got if part is not None for r in part]
            if not rows:
                continue
            cols = list(zip(*rows))
            table = pa.table(
                {
                    "time": pa.array(cols[0], pa.float64()),
                    "entity_id": pa.array(cols[1], pa.int64()),
                    "label": pa.array(cols[2], pa.float64()),
                    "id": pa.array(cols[3], pa.string()),
                    "version": pa.array(cols[4], pa.string()),
                    "prediction": pa.array(cols[5], pa.float64()),
                    "received_at": pa.array(cols[6], pa.float64()),
                }
            )
            self._files += 1
            stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
            path = self.dir / f"{self.model}-labels-{stamp}-{os.getpid()}-{self._files:06d}.parquet"
            try:
                pq.write_table(table, path)
                self.rows += table.num_rows
            except Exception as e:  # a full disk must not stop feedback
                log.warning("label log of %s failed to write: %s", self.model, e)
                self.dropped += table.num_rows
