"""Feature value types and the online row layout that stores them.

Types: ``float32``, ``int32`` and ``bool`` (one float32 slot, as always), ``float64`` and
``int64`` (exact, two 32-bit slots), ``vector[N]`` (N float32 slots: an embedding) and
``string`` (categorical, UTF-8; held in the row's blob, not in a slot).

An online row is the view's slots (32-bit words, little-endian) plus, when the view has string
features, one blob: the view's strings as a msgpack array. Every backend stores exactly these
two parts, so a row means the same in the native table (slots + blob), in Redis (event time,
slots, blob, one value) and after a snapshot.

Model input: a served join and ``LookupPlan.get`` produce float32 columns. float64 and int64
cast to float32 (int64 is exact up to 2**24; a float64 beyond the float32 range becomes
+-inf); a vector expands into N columns; a string joins
only when its feature declares a ``vocabulary``: the value's position in it, or
``len(vocabulary)`` for any other string (one out-of-vocabulary bucket).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np

from aiarch.errors import InvalidArgumentError

__all__ = [
    "VALID_TYPES",
    "FeatureType",
    "ViewLayout",
    "parse_type",
]

VALID_TYPES = ("float32", "float64", "int32", "int64", "bool", "string", "vector[N]")
"""The feature types a definition may name (``vector[N]`` with N in 1..65535)."""

_VECTOR = re.compile(r"vector\[([0-9]{1,5})\]")
_MAX_VECTOR = 65535


@dataclass(frozen=True)
class FeatureType:
    """What one feature holds and how it is stored and fed to a model."""

    name: str
    """As written in definitions: ``"int64"``, ``"vector[8]"``, ..."""
    kind: str
    """Storage kind: ``"float32"`` (also int32 and bool), ``"float64"``, ``"int64"``,
    ``"string"`` or ``"vector"``."""
    length: int = 1
    """Values per row: N for ``vector[N]``, else 1."""

    @property
    def slots(self) -> int:
        """32-bit slots the feature takes in an online row (strings take none)."""
        if self.kind in ("float64", "int64"):
            return 2
        if self.kind == "string":
            return 0
        return self.length

    @property
    def numpy(self) -> np.dtype[Any]:
        """The numpy dtype of one value (of one element for a vector)."""
        return np.dtype({"float64": "<f8", "int64": "<i8", "string": "O"}.get(self.kind, "<f4"))

    def normalize_default(self, feature: str, default: Any) -> Any:
        """The default as stored: a float, an int, a str, or a tuple of N floats."""
        expect = f"feature {feature!r} is {self.name}: its default must be"
        if self.kind == "string":
            if default is None:
                return ""
            if not isinstance(default, str):
                raise InvalidArgumentError(f"{expect} a str, got {default!r}")
            return default
        if self.kind == "int64":
            if default is None:
                return 0
            if isinstance(default, (bool, np.bool_)) or not isinstance(default, (int, np.integer)):
                raise InvalidArgumentError(f"{expect} an int, got {default!r}")
            if not -(2**63) <= int(default) < 2**63:
                raise InvalidArgumentError(f"{expect} an int64, got {default!r}")
            return int(default)
        if self.kind == "vector":
            if default is None:
                return (0.0,) * self.length
            if isinstance(default, (int, float, np.number)) and not isinstance(default, bool):
                return (float(default),) * self.length
            try:
                vals = tuple(float(x) for x in default)
            except (TypeError, ValueError):
                raise InvalidArgumentError(
                    f"{expect} a number or {self.length} numbers, got {default!r}"
                ) from None
            if len(vals) != self.length:
                raise InvalidArgumentError(
                    f"{expect} a number or {self.length} numbers, got {len(vals)} numbers"
                )
            return vals
        if default is None:
            return 0.0
        if isinstance(default, str) or not isinstance(default, (int, float, np.number)):
            raise InvalidArgumentError(f"{expect} a number, got {default!r}")
        return float(default)


def parse_type(feature: str, dtype: Any) -> FeatureType:
    """The FeatureType a definition names; raises InvalidArgumentError listing the valid ones."""
    if isinstance(dtype, str):
        if dtype in ("float32", "int32", "bool"):
            return FeatureType(dtype, "float32")
        if dtype in ("float64", "int64", "string"):
            return FeatureType(dtype, dtype)
        m = _VECTOR.fullmatch(dtype)
        if m and 1 <= int(m.group(1)) <= _MAX_VECTOR:
            return FeatureType(f"vector[{int(m.group(1))}]", "vector", int(m.group(1)))
    raise InvalidArgumentError(
        f"feature {feature!r}: unknown type {dtype!r}; valid types: {', '.join(VALID_TYPES)} "
        f"(N in 1..{_MAX_VECTOR})"
    )


# ---------------------------------------------------------------------------- values


def _is_arrow(col: Any) -> bool:
    import pyarrow as pa

    return isinstance(col, (pa.Array, pa.ChunkedArray))


def _wrong(feature: str, ftype: FeatureType, got: str) -> InvalidArgumentError:
    return InvalidArgumentError(f"feature {feature!r} expects {ftype.name} values; got {got}")


def typed_column(feature: str, ftype: FeatureType, default: Any, col: Any, n: int) -> np.ndarray:
    """One feature's values as a numpy array ([n] of the type's dtype; [n, N] float32 for a
    vector; object array of str for a string), nulls replaced by the default. Raises
    InvalidArgumentError naming the feature and the expected type for a wrong-typed value."""
    if _is_arrow(col):
        col = _from_arrow(feature, ftype, col)
    if ftype.kind == "vector":
        out = _vectors(feature, ftype, default, col)
    elif ftype.kind == "string":
        out = np.empty(len(col), object)
        for i, x in enumerate(col.tolist() if isinstance(col, np.ndarray) else col):
            if x is None:
                x = default
            elif isinstance(x, bytes):
                try:
                    x = x.decode()
                except UnicodeDecodeError:
                    raise _wrong(feature, ftype, f"non-UTF-8 bytes in row {i}") from None
            elif not isinstance(x, str):
                raise _wrong(feature, ftype, f"{type(x).__name__} {x!r} in row {i}")
            out[i] = x
    else:
        out = _numbers(feature, ftype, default, col)
    if len(out) != n:
        raise InvalidArgumentError(f"feature {feature!r} has {len(out)} rows; expected {n}")
    return out


def _from_arrow(feature: str, ftype: FeatureType, col: Any) -> Any:
    import pyarrow as pa

    t = col.type
    if ftype.kind == "string":
        if not (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_null(t)):
            raise _wrong(feature, ftype, f"a column of {t}")
        return col.to_pylist()
    if ftype.kind == "vector":
        if not (
            pa.types.is_list(t)
            or pa.types.is_large_list(t)
            or pa.types.is_fixed_size_list(t)
            or pa.types.is_null(t)
        ):
            raise _wrong(feature, ftype, f"a column of {t}")
        return col.to_pylist()
    ok = pa.types.is_integer(t) or pa.types.is_null(t) or pa.types.is_boolean(t)
    if ftype.kind != "int64":
        ok = ok or pa.types.is_floating(t) or pa.types.is_decimal(t)
    if not ok:
        raise _wrong(feature, ftype, f"a column of {t}")
    return col.to_pylist() if col.null_count else col.to_numpy(zero_copy_only=False)


def _numbers(feature: str, ftype: FeatureType, default: Any, col: Any) -> np.ndarray:
    arr = col if isinstance(col, np.ndarray) else np.asarray(col, dtype=object)
    if arr.ndim != 1:
        raise _wrong(feature, ftype, f"an array of {arr.ndim} dimensions")
    if arr.dtype.kind == "O":
        items = arr.tolist()
        for i, x in enumerate(items):
            if x is None:
                items[i] = default
            elif isinstance(x, (str, bytes)) or not isinstance(
                x, (int, float, np.integer, np.floating, bool, np.bool_)
            ):
                raise _wrong(feature, ftype, f"{type(x).__name__} {x!r} in row {i}")
        if ftype.kind != "int64":
            return np.asarray(items, dtype=ftype.numpy)
        for i, x in enumerate(items):
            if isinstance(x, (float, np.floating)):
                if not float(x).is_integer():
                    raise _wrong(feature, ftype, f"{x!r} in row {i}")
                items[i] = int(x)
        try:
            return np.asarray(items, dtype=np.int64)
        except OverflowError:
            raise _wrong(feature, ftype, "a value outside the int64 range") from None
    if arr.dtype.kind not in "iubf":
        raise _wrong(feature, ftype, f"an array of {arr.dtype}")
    if ftype.kind == "int64" and arr.dtype.kind == "f":
        # Whole numbers in a float column (a nullable integer column read as floats) are
        # accepted, NaN meaning null; a fraction is not an int64.
        nulls = np.isnan(arr)
        arr = np.where(nulls, float(default), arr)
        bad = np.flatnonzero((arr != np.round(arr)) | (np.abs(arr) >= 2.0**63))
        if len(bad):
            i = int(bad[0])
            raise _wrong(feature, ftype, f"{arr[i]!r} in row {i}")
        return arr.astype(np.int64)
    if ftype.kind == "int64" and arr.dtype == np.uint64 and len(arr) and arr.max() >= 2**63:
        raise _wrong(feature, ftype, "a uint64 above the int64 range")
    return arr.astype(ftype.numpy, copy=False)


def _vectors(feature: str, ftype: FeatureType, default: Any, col: Any) -> np.ndarray:
    n_len = ftype.length
    if isinstance(col, np.ndarray) and col.dtype.kind in "iuf":
        if col.ndim != 2 or col.shape[1] != n_len:
            raise _wrong(feature, ftype, f"an array of shape {list(col.shape)}")
        return col.astype(np.float32, copy=False)
    rows = col.tolist() if isinstance(col, np.ndarray) else list(col)
    out = np.empty((len(rows), n_len), np.float32)
    for i, row in enumerate(rows):
        if row is None:
            out[i] = default
            continue
        if isinstance(row, (str, bytes)) or not hasattr(row, "__len__"):
            raise _wrong(feature, ftype, f"{type(row).__name__} {row!r} in row {i}")
        if len(row) != n_len:
            raise _wrong(feature, ftype, f"a vector of {len(row)} values in row {i}")
        try:
            out[i] = np.asarray(row, dtype=np.float32)
        except (TypeError, ValueError):
            raise _wrong(feature, ftype, f"a non-numeric vector in row {i}") from None
    return out


# ---------------------------------------------------------------------------- row layout

_ENCODE = msgspec.msgpack.Encoder()
_DECODE = msgspec.msgpack.Decoder(list[str])


class ViewLayout:
    """Where each feature of a view lives in an online row, and the conversions between typed
    columns, stored rows (slots + blob) and model input. Built once per view."""

    def __init__(self, features: Any) -> None:
        self.names = [f.name for f in features]
        self.types = [f.type for f in features]
        self.defaults = [f.default for f in features]
        self.codes = [{v: float(i) for i, v in enumerate(f.vocabulary)} for f in features]
        self.slot_of: list[int] = []
        self.string_of: list[int] = []
        slots = strings = 0
        fields: dict[str, Any] = {"names": [], "formats": [], "offsets": []}
        for name, t in zip(self.names, self.types):
            self.slot_of.append(slots)
            self.string_of.append(strings if t.kind == "string" else -1)
            if t.kind == "string":
                strings += 1
                continue
            fields["names"].append(name)
            fields["formats"].append((t.numpy, (t.length,)) if t.kind == "vector" else t.numpy)
            fields["offsets"].append(4 * slots)
            slots += t.slots
        self.slots = slots
        """32-bit slots of the row."""
        self.strings = strings
        """String features (held in the blob)."""
        self.width = max(slots, 1)
        """Slots of the stored row (a row of strings only keeps one unused slot)."""
        fields["itemsize"] = 4 * self.width
        self.record: np.dtype[Any] = np.dtype(fields)  # type: ignore[call-overload]
        """The slots viewed as one record of typed fields."""
        defaults = np.zeros(1, self.record)
        for name, t, d in zip(self.names, self.types, self.defaults):
            if t.kind != "string":
                defaults[name] = d
        self.default_slots = defaults.view(np.float32).reshape(self.width)
        """The row of defaults, as slots."""
        self.plain = all(t.kind == "float32" for t in self.types)
        """Every feature is one float32 slot: the layout rows had before typed features."""

    def encode(self, columns: list[np.ndarray]) -> tuple[np.ndarray, list[bytes] | None]:
        """Typed columns (one per feature) → (slots float32[n, width], blobs or None)."""
        n = len(columns[0]) if columns else 0
        rec = np.zeros(n, self.record)
        for name, t, col in zip(self.names, self.types, columns):
            if t.kind != "string":
                rec[name] = col
        words = rec.view(np.float32).reshape(n, self.width)
        if not self.strings:
            return words, None
        picks = [c for t, c in zip(self.types, columns) if t.kind == "string"]
        return words, [_ENCODE.encode([p[i] for p in picks]) for i in range(n)]

    def decode_strings(self, blobs: list[bytes], present: np.ndarray) -> list[list[str]]:
        """The string features of each row (the defaults where the row is not present)."""
        fallback = [d for t, d in zip(self.types, self.defaults) if t.kind == "string"]
        out = []
        for blob, ok in zip(blobs, present.tolist()):
            out.append(_DECODE.decode(blob) if ok and blob else fallback)
        return out

    def model_columns(self, index: int) -> int:
        """Float columns feature `index` takes in model input (N for a vector)."""
        return self.types[index].length

    def string_code(self, index: int, values: list[str]) -> np.ndarray:
        """A string feature's values encoded through its vocabulary (see the module doc)."""
        codes = self.codes[index]
        oov = float(len(codes))
        return np.array([codes.get(v, oov) for v in values], np.float32)
