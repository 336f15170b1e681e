"""Offline side of the feature store: Parquet sources read through DuckDB.

- `materialize`: the latest row per entity within a time window → the online store, chunked,
  with a progress bar, resumable (a resume point is stored after every chunk).
- `training_set`: a point-in-time-correct join of entity rows with feature values (ASOF JOIN:
  the latest value at or before each row's timestamp, within the view's TTL).
"""

from __future__ import annotations

import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from aiarch.errors import InvalidArgumentError, NotFoundError

from .definitions import Entity, Feature, FeatureView, parse_ref
from .types import typed_column

if TYPE_CHECKING:
    from .store import FeatureStore

__all__ = ["columns_of", "materialize", "to_ns", "training_set"]

_NS_PER_S = 1_000_000_000


def to_ns(t: Any) -> int | None:
    """A time as int ns since the Unix epoch: int (ns), datetime (naive = UTC), ISO string,
    numpy datetime64, or None."""
    if t is None:
        return None
    if isinstance(t, (bool, np.bool_)):
        raise InvalidArgumentError(f"expected a time, got {t!r}")
    if isinstance(t, (int, np.integer)):
        return int(t)
    if isinstance(t, np.datetime64):
        return int(t.astype("datetime64[ns]").astype(np.int64))
    if isinstance(t, str):
        try:
            t = datetime.fromisoformat(t.replace("Z", "+00:00"))
        except ValueError:
            raise InvalidArgumentError(f"expected an ISO 8601 time, got {t!r}") from None
    if isinstance(t, datetime):
        if t.tzinfo is None:
            t = t.replace(tzinfo=timezone.utc)
        delta = t - datetime(1970, 1, 1, tzinfo=timezone.utc)
        return (delta.days * 86_400 + delta.seconds) * _NS_PER_S + delta.microseconds * 1000
    raise InvalidArgumentError(f"expected a time, got {type(t).__name__}")


def _ns_iso(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, tz=timezone.utc).isoformat()


# ---------------------------------------------------------------------------- input tables


def _ids_of(col: Any, entity: Entity) -> Any:
    import pyarrow as pa

    if isinstance(col, (pa.Array, pa.ChunkedArray)):
        if col.null_count:
            raise InvalidArgumentError(f"entity key column {entity.join_key!r} has nulls")
        if entity.dtype == "int64":
            if not pa.types.is_integer(col.type):
                raise InvalidArgumentError(
                    f"entity {entity.name!r} has int64 keys; column {entity.join_key!r} is "
                    f"{col.type}"
                )
            return np.asarray(col.to_numpy(), dtype=np.int64)
        if not (
            pa.types.is_string(col.type)
            or pa.types.is_large_string(col.type)
            or pa.types.is_binary(col.type)
        ):
            raise InvalidArgumentError(
                f"entity {entity.name!r} has string keys; column {entity.join_key!r} is {col.type}"
            )
        return col.to_pylist()
    from .online import normalize_ids

    return normalize_ids(col, entity.dtype)


def _times_of(col: Any, name: str) -> np.ndarray:
    import pyarrow as pa

    if isinstance(col, (pa.Array, pa.ChunkedArray)):
        if col.null_count:
            raise InvalidArgumentError(f"timestamp column {name!r} has nulls")
        if pa.types.is_timestamp(col.type):
            col = col.cast(pa.timestamp("ns", col.type.tz)).cast(pa.int64())
        elif pa.types.is_date(col.type):
            col = col.cast(pa.timestamp("ns")).cast(pa.int64())
        elif not pa.types.is_integer(col.type):
            raise InvalidArgumentError(
                f"timestamp column {name!r} must hold timestamps or int64 ns; it is {col.type}"
            )
        return np.asarray(col.to_numpy(), dtype=np.int64)
    arr = np.asarray(col)
    if arr.dtype.kind == "M":
        return arr.astype("datetime64[ns]").astype(np.int64)
    if arr.dtype.kind in "iu":
        return arr.astype(np.int64)
    if arr.dtype.kind == "O":
        return np.array([to_ns(x) for x in arr], dtype=np.int64)
    raise InvalidArgumentError(
        f"timestamp column {name!r} must hold datetimes or int64 ns; it is {arr.dtype}"
    )


def columns_of(
    data: Any, view: FeatureView, entity: Entity
) -> tuple[Any, np.ndarray, list[np.ndarray]]:
    """(ids, event_ns int64, one typed column per feature) from a pyarrow Table/RecordBatch or
    a dict of arrays. Nulls take the feature's default; a wrong-typed value raises
    InvalidArgumentError naming the feature and its type."""
    import pyarrow as pa

    if isinstance(data, (pa.Table, pa.RecordBatch)):
        names = list(data.schema.names)

        def column(n: str) -> Any:
            return data.column(n)
    elif isinstance(data, dict):
        names = list(data)

        def column(n: str) -> Any:
            return data[n]
    else:
        raise InvalidArgumentError(
            f"write() takes a pyarrow Table or a dict of arrays, got {type(data).__name__}"
        )
    needed = [entity.join_key, view.timestamp_field, *view.feature_names()]
    missing = [n for n in needed if n not in names]
    if missing:
        raise InvalidArgumentError(
            f"data for feature view {view.name!r} lacks columns {missing}; it has {names}"
        )
    ids = _ids_of(column(entity.join_key), entity)
    times = _times_of(column(view.timestamp_field), view.timestamp_field)
    n = len(times)
    values = [typed_column(f.name, f.type, f.default, column(f.name), n) for f in view.features]
    if len(ids) != n:
        raise InvalidArgumentError(f"key column has {len(ids)} rows; expected {n}")
    return ids, times, values


def sql_type(f: Feature) -> str:
    """The DuckDB type a feature's values take in materialization and training sets."""
    return {
        "float32": "FLOAT",
        "float64": "DOUBLE",
        "int64": "BIGINT",
        "string": "VARCHAR",
        "vector": "FLOAT[]",
    }[f.type.kind]


def sql_default(f: Feature) -> str:
    """The feature's default as a typed DuckDB literal."""
    d = f.default
    if f.type.kind == "string":
        return "'" + str(d).replace("'", "''") + "'::VARCHAR"
    if f.type.kind == "vector":
        return "[" + ", ".join(repr(float(x)) for x in d) + "]::FLOAT[]"
    return f"{d!r}::{sql_type(f)}"


# ---------------------------------------------------------------------------- sources


def _source_sql(view: FeatureView) -> str:
    src = view.source
    if not src:
        raise InvalidArgumentError(f"feature view {view.name!r} has no source")
    p = Path(src)
    if p.is_dir():
        src = str(p / "**" / "*.parquet")
    elif not any(ch in src for ch in "*?[") and not p.exists():
        raise NotFoundError(f"source of feature view {view.name!r} does not exist: {src}")
    return "read_parquet('" + src.replace("'", "''") + "')"


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _connect() -> Any:
    import duckdb

    con = duckdb.connect()
    con.execute("SET TimeZone='UTC'")
    return con


def _arrow_reader(rel: Any, batch_rows: int) -> Any:
    """A pyarrow RecordBatchReader over a DuckDB relation (newer and older DuckDB spellings)."""
    if hasattr(rel, "to_arrow_reader"):
        return rel.to_arrow_reader(batch_rows)
    return rel.fetch_arrow_reader(batch_rows)


def _arrow_table(rel: Any) -> Any:
    if hasattr(rel, "to_arrow_table"):
        return rel.to_arrow_table()
    return rel.arrow()


def _time_expr(column: str, sql_type: str) -> str:
    """The column as int64 ns since the epoch."""
    if sql_type.upper() in ("BIGINT", "INTEGER", "HUGEINT", "UBIGINT"):
        return f"CAST({_quote(column)} AS BIGINT)"
    return f"epoch_ns({_quote(column)})"


def _check_source(con: Any, view: FeatureView, entity: Entity) -> tuple[str, str]:
    """(source SQL, timestamp type); raises naming missing columns."""
    src = _source_sql(view)
    try:
        described = con.execute(f"DESCRIBE SELECT * FROM {src}").fetchall()
    except Exception as e:  # duckdb.IOException and friends: surface as our error
        raise NotFoundError(f"cannot read source of feature view {view.name!r}: {e}") from None
    types = {row[0]: row[1] for row in described}
    needed = [entity.join_key, view.timestamp_field, *view.feature_names()]
    missing = [n for n in needed if n not in types]
    if missing:
        raise InvalidArgumentError(
            f"source of feature view {view.name!r} lacks columns {missing}; it has {list(types)}"
        )
    return src, str(types[view.timestamp_field])


# ---------------------------------------------------------------------------- materialize


class _Progress:
    """A one-line progress bar on stderr (a line per update when stderr is not a terminal)."""

    def __init__(self, label: str, total: int, enabled: bool) -> None:
        self.label = label
        self.total = max(total, 0)
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self.t0 = time.monotonic()

    def update(self, done: int) -> None:
        if not self.enabled:
            return
        frac = done / self.total if self.total else 1.0
        bar = "#" * int(frac * 30)
        rate = done / max(time.monotonic() - self.t0, 1e-9)
        line = (
            f"{self.label} [{bar:<30}] {frac * 100:5.1f}% {done:,}/{self.total:,} entities "
            f"({rate:,.0f}/s)"
        )
        if self.tty:
            sys.stderr.write("\r" + line)
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            sys.stderr.write("\n")
            sys.stderr.flush()


def materialize(
    store: FeatureStore,
    view: FeatureView,
    start: Any,
    end: Any,
    chunk_rows: int,
    progress: bool,
    max_chunks: int | None,
) -> dict[str, Any]:
    if chunk_rows < 1:
        raise InvalidArgumentError(f"chunk_rows must be >= 1, got {chunk_rows}")
    entity = store.entity_of(view)
    target = store.url
    persistent = store.backend.persistent
    meta = store.metadata
    start_ns, end_ns = to_ns(start), to_ns(end)
    run = meta.run(view.name, target) if persistent else None
    resume_key: Any = None
    done_before = 0
    if (
        run is not None
        and (start_ns is None or start_ns == run["start_ns"])
        and (end_ns is None or end_ns == run["end_ns"])
    ):
        start_ns, end_ns = run["start_ns"], run["end_ns"]
        resume_key, done_before = run["last_key"], run["rows_done"]
    if start_ns is None:
        mark = meta.watermark(view.name, target) if persistent else None
        start_ns = mark if mark is not None else -(2**63)
    if end_ns is None:
        end_ns = store.clock()
    if end_ns <= start_ns:
        return {
            "view": view.name,
            "start_ns": start_ns,
            "end_ns": end_ns,
            "rows": 0,
            "applied": 0,
            "resumed": False,
            "complete": True,
        }

    con = _connect()
    src, ts_type = _check_source(con, view, entity)
    key = _quote(entity.join_key)
    ts = _time_expr(view.timestamp_field, ts_type)
    feats = ", ".join(
        f"CAST({_quote(f.name)} AS {sql_type(f)}) AS {_quote(f.name)}" for f in view.features
    )
    window = f"{ts} >= $start AND {ts} < $end AND {key} IS NOT NULL"
    params: dict[str, Any] = {"start": start_ns, "end": end_ns}
    total = con.execute(
        f"SELECT count(DISTINCT {key}) FROM {src} WHERE {window}", params
    ).fetchall()[0][0]
    after = ""
    if resume_key is not None:
        after = "AND __k > $after"
        params["after"] = resume_key
    sql = (
        f"SELECT __k, __ts, * EXCLUDE (__k, __ts, __rn) FROM ("
        f"  SELECT {key} AS __k, {ts} AS __ts, {feats},"
        f"    row_number() OVER (PARTITION BY {key} ORDER BY {ts} DESC) AS __rn"
        f"  FROM {src} WHERE {window}"
        f") WHERE __rn = 1 {after} ORDER BY __k"
    )
    reader = _arrow_reader(con.sql(sql, params=params), chunk_rows)
    bar = _Progress(f"materialize {view.name}", int(total), progress)
    done, applied, chunks, complete = done_before, 0, 0, True
    bar.update(done)
    try:
        for batch in reader:
            if batch.num_rows == 0:
                continue
            if max_chunks is not None and chunks >= max_chunks:
                complete = False
                break
            ids = _ids_of(batch.column(0), entity)
            times = np.asarray(batch.column(1).to_numpy(), dtype=np.int64)
            values = [
                typed_column(f.name, f.type, f.default, batch.column(2 + j), len(times))
                for j, f in enumerate(view.features)
            ]
            applied += store.backend.write(
                view, entity.dtype, ids, times, *view.layout.encode(values)
            )
            done += batch.num_rows
            chunks += 1
            last = ids[-1]
            if persistent:
                store.backend.save()
                meta.save_run(
                    view.name,
                    target,
                    start_ns,
                    end_ns,
                    int(last) if entity.dtype == "int64" else _key_text(last),
                    done,
                )
            bar.update(done)
    finally:
        bar.close()
        con.close()
    if complete and persistent:
        meta.set_watermark(view.name, target, end_ns)
    return {
        "view": view.name,
        "start_ns": start_ns,
        "end_ns": end_ns,
        "rows": done - done_before,
        "applied": applied,
        "resumed": resume_key is not None,
        "complete": complete,
    }


def _key_text(k: Any) -> str:
    return k.decode() if isinstance(k, bytes) else str(k)


# ---------------------------------------------------------------------------- training sets


def training_set(
    store: FeatureStore,
    entity_rows: Any,
    features: Any,
    timestamp_field: str,
    fill_defaults: bool,
) -> Any:
    import pyarrow as pa

    if isinstance(entity_rows, dict):
        entity_rows = pa.table(
            {
                k: (v if isinstance(v, (pa.Array, pa.ChunkedArray)) else np.asarray(v))
                for k, v in entity_rows.items()
            }
        )
    if isinstance(entity_rows, pa.RecordBatch):
        entity_rows = pa.Table.from_batches([entity_rows])
    if not isinstance(entity_rows, pa.Table):
        raise InvalidArgumentError(
            f"entity rows must be a pyarrow Table or a dict of arrays, got "
            f"{type(entity_rows).__name__}"
        )
    names = entity_rows.schema.names
    if timestamp_field not in names:
        raise InvalidArgumentError(
            f"entity rows lack the timestamp column {timestamp_field!r}; they have {names}"
        )
    if isinstance(features, str):
        features = [features]
    views = store.views()
    by_view: dict[str, list[str]] = {}
    out_names: list[str] = []
    for ref in features:
        vname, fname = parse_ref(ref)
        v = views.get(vname)
        if v is None:
            raise NotFoundError(
                f"unknown feature view {vname!r} in {ref!r}; known views: {sorted(views)}"
            )
        fnames = v.feature_names() if fname == "*" else [fname]
        for f in fnames:
            if f not in v.feature_names():
                raise NotFoundError(
                    f"feature view {vname!r} has no feature {f!r}; it has: {v.feature_names()}"
                )
            col = f"{vname}:{f}"
            if col in out_names:
                raise InvalidArgumentError(f"feature {col!r} is requested twice")
            out_names.append(col)
            by_view.setdefault(vname, []).append(f)

    con = _connect()
    try:
        ent = entity_rows.append_column("__row", pa.array(np.arange(entity_rows.num_rows)))
        con.register("__entities", ent)
        ts_type = str(
            dict((r[0], r[1]) for r in con.execute("DESCRIBE __entities").fetchall())[
                timestamp_field
            ]
        )
        ets = _time_expr(timestamp_field, ts_type)
        joins: list[str] = []
        selects: dict[str, str] = {}
        for i, (vname, fnames) in enumerate(by_view.items()):
            v = views[vname]
            entity = store.entity_of(v)
            if entity.join_key not in names:
                raise InvalidArgumentError(
                    f"entity rows lack the key column {entity.join_key!r} of view {vname!r}; "
                    f"they have {names}"
                )
            src, vts_type = _check_source(con, v, entity)
            alias = f"__v{i}"
            cols = ", ".join(_quote(f) for f in fnames)
            joins.append(
                f"ASOF LEFT JOIN (SELECT {_quote(entity.join_key)} AS __k, "
                f"{_time_expr(v.timestamp_field, vts_type)} AS __ts, {cols} FROM {src}) {alias} "
                f"ON e.{_quote(entity.join_key)} = {alias}.__k AND e.__ets >= {alias}.__ts"
            )
            fresh = f"{alias}.__ts IS NOT NULL"
            if v.ttl_ns > 0:
                fresh += f" AND e.__ets - {alias}.__ts <= {v.ttl_ns}"
            for f in fnames:
                feat = next(x for x in v.features if x.name == f)
                value = f"CAST({alias}.{_quote(f)} AS {sql_type(feat)})"
                if fill_defaults:
                    value = f"COALESCE({value}, {sql_default(feat)})"
                    otherwise = sql_default(feat)
                else:
                    otherwise = f"NULL::{sql_type(feat)}"
                selects[f"{vname}:{f}"] = (
                    f"CASE WHEN {fresh} THEN {value} ELSE {otherwise} END AS "
                    f"{_quote(vname + ':' + f)}"
                )
        sql = (
            f"SELECT e.* EXCLUDE (__row, __ets), {', '.join(selects[c] for c in out_names)} FROM "
            f"(SELECT *, {ets} AS __ets FROM __entities) e {' '.join(joins)} ORDER BY e.__row"
        )
        return _arrow_table(con.sql(sql))
    finally:
        con.close()
