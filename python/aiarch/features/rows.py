"""Stored rows → lookup results, shared by every online backend.

A backend reads, per view of a plan, the raw rows of a batch (`RawRows`: slots, blobs, status);
`assemble_model` turns them into the float32 model input of ``LookupPlan.get`` and
`assemble_typed` into typed columns for ``LookupPlan.get_typed``. Redis rows are packed and
unpacked here too: big-endian int64 event time, the slots, then the blob.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .definitions import FeatureView

__all__ = ["PRESENT", "RawRows", "Segment", "assemble_model", "assemble_typed", "pack_rows"]

PRESENT = 0
EXPIRED = 1
MISSING = 2


@dataclass(frozen=True)
class Segment:
    """One view's part of a lookup plan: which features, where their model columns start."""

    view: FeatureView
    columns: tuple[int, ...]
    """Indices of the selected features in the view."""
    defaults: tuple[float, ...]
    """Model-input default of each model column of the segment (N for a vector)."""
    out_offset: int
    """First model column of the segment."""
    slot_columns: tuple[int, ...] = field(default=(), init=False)
    """The row slots of the model columns, when every selected feature is float32 slots
    (float32, int32, bool, vector): then one gather serves the model input. Else empty."""
    slot_index: np.ndarray | None = field(default=None, init=False, repr=False, compare=False)
    """`slot_columns` as an index array; None when they are the whole row in order."""
    default_row: np.ndarray = field(init=False, repr=False, compare=False)
    """`defaults` as float32."""
    float_at: tuple[np.ndarray, np.ndarray] | None = field(
        default=None, init=False, repr=False, compare=False
    )
    """(model columns, row slots) of the float32-slot features, copied in one step."""
    wide_at: tuple[tuple[int, int], ...] = field(default=(), init=False, repr=False)
    """(model column, feature index) of each int64 and float64 feature."""
    string_at: tuple[tuple[int, int], ...] = field(default=(), init=False, repr=False)
    """(model column, feature index) of each string feature."""

    def __post_init__(self) -> None:
        lay = self.view.layout
        kinds = {lay.types[c].kind for c in self.columns}
        if kinds <= {"float32", "vector"}:
            slots: list[int] = []
            for c in self.columns:
                slots.extend(range(lay.slot_of[c], lay.slot_of[c] + lay.types[c].length))
            object.__setattr__(self, "slot_columns", tuple(slots))
            if slots != list(range(lay.width)):
                object.__setattr__(self, "slot_index", np.asarray(slots, np.intp))
        object.__setattr__(self, "default_row", np.asarray(self.defaults, np.float32))
        at = 0
        float_pos: list[int] = []
        float_slots: list[int] = []
        wide: list[tuple[int, int]] = []
        strings: list[tuple[int, int]] = []
        for c in self.columns:
            t = lay.types[c]
            if t.kind in ("float32", "vector"):
                float_pos.extend(range(at, at + t.length))
                float_slots.extend(range(lay.slot_of[c], lay.slot_of[c] + t.length))
            elif t.kind == "string":
                strings.append((at, c))
            else:
                wide.append((at, c))
            at += t.length
        if float_pos:
            object.__setattr__(
                self,
                "float_at",
                (np.asarray(float_pos, np.intp), np.asarray(float_slots, np.intp)),
            )
        object.__setattr__(self, "wide_at", tuple(wide))
        object.__setattr__(self, "string_at", tuple(strings))

    @property
    def model_width(self) -> int:
        return len(self.defaults)

    @property
    def needs_blobs(self) -> bool:
        lay = self.view.layout
        return any(lay.types[c].kind == "string" for c in self.columns)


@dataclass
class RawRows:
    """One view's rows of a batch as stored: slots float32 [n, width] (any value where the row
    is not present), blobs (one per row, or None when not read) and status per row."""

    slots: np.ndarray
    blobs: list[bytes] | None
    status: np.ndarray


def assemble_model(
    segments: list[Segment], raws: list[RawRows], n: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """The float32 model input [n, width] and the worst status of each row."""
    out = np.empty((n, width), np.float32)
    if len(segments) == 1:
        status = raws[0].status
    else:
        status = np.zeros(n, np.uint8)
        for raw in raws:
            np.maximum(status, raw.status, out=status)
    for seg, raw in zip(segments, raws):
        off, k = seg.out_offset, seg.model_width
        present = raw.status == PRESENT
        target = out[:, off : off + k]
        if seg.slot_columns:
            target[...] = raw.slots if seg.slot_index is None else raw.slots[:, seg.slot_index]
        else:
            _convert(seg, raw, present, target)
        if not present.all():
            target[~present] = seg.default_row
    return out, status


def _convert(seg: Segment, raw: RawRows, present: np.ndarray, target: np.ndarray) -> None:
    """Model columns of a segment with int64, float64 or string features: float32 slots in one
    copy, each wide feature from its two slots, each string through its vocabulary."""
    lay = seg.view.layout
    if seg.float_at is not None:
        target[:, seg.float_at[0]] = raw.slots[:, seg.float_at[1]]
    for at, c in seg.wide_at:
        s = lay.slot_of[c]
        wide = np.ascontiguousarray(raw.slots[:, s : s + 2]).view(lay.types[c].numpy)
        # float64 beyond the float32 range becomes +-inf, as a cast in the model would.
        with np.errstate(over="ignore"):
            target[:, at] = wide[:, 0]
    if seg.string_at:
        n = len(present)
        strings = lay.decode_strings(raw.blobs or [b""] * n, present)
        for at, c in seg.string_at:
            target[:, at] = lay.string_code(c, [row[lay.string_of[c]] for row in strings])


def assemble_typed(
    segments: list[Segment], raws: list[RawRows], n: int
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Typed columns per ``"view:feature"`` (float32/float64/int64 [n], float32 [n, N] for a
    vector, an object array of str for a string; defaults where not present) and the worst
    status of each row."""
    out: dict[str, np.ndarray] = {}
    status = np.zeros(n, np.uint8)
    for seg, raw in zip(segments, raws):
        lay = seg.view.layout
        present = raw.status == PRESENT
        # Defaults over absent rows in one step; each column is then a field of the records.
        rec = np.where(present[:, None], raw.slots, lay.default_slots).view(lay.record)
        rec = rec.reshape(n)
        strings = lay.decode_strings(raw.blobs or [b""] * n, present) if seg.needs_blobs else []
        for c in seg.columns:
            t, name = lay.types[c], lay.names[c]
            if t.kind == "string":
                col = np.empty(n, object)
                col[:] = [row[lay.string_of[c]] for row in strings]
            else:
                col = np.ascontiguousarray(rec[name])
            out[f"{seg.view.name}:{name}"] = col
        np.maximum(status, raw.status, out=status)
    return out, status


# ---------------------------------------------------------------------------- redis rows


def redis_row_dtype(width: int) -> np.dtype[Any]:
    """The fixed part of a Redis row: event time, then the slots."""
    return np.dtype([("ts", ">i8"), ("v", "<f4", (width,))])


def pack_rows(
    view: FeatureView, event_ns: np.ndarray, slots: np.ndarray, blobs: list[bytes] | None
) -> list[bytes]:
    """One Redis value per row: event time, slots, blob."""
    rec = np.empty(len(event_ns), redis_row_dtype(view.layout.width))
    rec["ts"] = event_ns
    rec["v"] = slots
    raw = rec.tobytes()
    size = rec.dtype.itemsize
    rows = [raw[i * size : (i + 1) * size] for i in range(len(event_ns))]
    if blobs is not None:
        rows = [r + b for r, b in zip(rows, blobs)]
    return rows


def unpack_rows(
    view: FeatureView, values: list[bytes | None], now_ns: int, ttl_ns: int, want_blobs: bool
) -> RawRows:
    """Raw rows of one view from an MGET's replies (None: no row). A value shorter than the
    fixed part (a row of another layout) reads as missing."""
    n = len(values)
    width = view.layout.width
    rec = redis_row_dtype(width)
    size = rec.itemsize
    has_blob = view.layout.strings > 0
    blobs: list[bytes] | None = [b""] * n if want_blobs else None
    if has_blob:
        hit = [i for i, v in enumerate(values) if v is not None and len(v) >= size]
        head = b"".join([values[i][:size] for i in hit])  # type: ignore[index]
    else:
        hit = [i for i, v in enumerate(values) if v is not None and len(v) == size]
        head = b"".join([values[i] for i in hit])  # type: ignore[misc]
    rows = np.frombuffer(head, rec)
    fresh = (now_ns - rows["ts"].astype(np.int64)) <= ttl_ns if ttl_ns > 0 else None
    if len(hit) == n:
        # Every entity has a row (the common case): no scatter.
        slots = np.ascontiguousarray(rows["v"])
        status = (
            np.zeros(n, np.uint8)
            if fresh is None
            else np.where(fresh, PRESENT, EXPIRED).astype(np.uint8)
        )
    else:
        slots = np.zeros((n, width), np.float32)
        status = np.full(n, MISSING, np.uint8)
        if hit:
            idx = np.asarray(hit, np.intp)
            status[idx] = PRESENT if fresh is None else np.where(fresh, PRESENT, EXPIRED)
            slots[idx] = rows["v"]
    if blobs is not None:
        for i in hit:
            blobs[i] = values[i][size:]  # type: ignore[index]
    return RawRows(slots, blobs, status)
