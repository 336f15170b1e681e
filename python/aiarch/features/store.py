"""FeatureStore and LookupPlan: definitions, online lookups, writes, materialization and
point-in-time-correct training sets behind one object.

A lookup plan is resolved once (views, column offsets, defaults, TTLs) and then called once per
batch: on the native backend ``plan.get`` of float32 features is one C++ call that gathers every
view into one float32 array with the GIL released; on Redis it is one pipelined round trip.
``plan.get_typed`` answers each feature in its own type.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from aiarch.errors import InvalidArgumentError, NotFoundError, UnavailableError

from .definitions import Entity, FeatureView, parse_ref
from .metadata import MetadataStore
from .online import UNAVAILABLE, OnlineBackend, open_backend
from .rows import Segment

__all__ = ["FeatureStore", "LookupCounters", "LookupPlan"]


@dataclass
class LookupCounters:
    """Counts kept by a store across its plans (statistics; updated once per call)."""

    lookups: int = 0
    """Calls of ``plan.get`` / ``plan.get_async``."""
    rows: int = 0
    """Entity rows looked up."""
    failures: int = 0
    """Lookups that raised UnavailableError (the online store was down or slow)."""
    fallbacks: int = 0
    """Lookups answered with defaults because the online store was down or slow."""

    def as_dict(self) -> dict[str, int]:
        return {
            "lookups": self.lookups,
            "rows": self.rows,
            "failures": self.failures,
            "fallbacks": self.fallbacks,
        }


class LookupPlan:
    """A resolved list of ``"view:feature"`` references over one entity.

    ``get(ids)`` returns ``(values, status)``: ``values`` is the float32 model input
    ``[len(ids), len(columns)]`` with defaults filled for missing, expired or unavailable rows
    (float64 and int64 cast to float32, a vector[N] as N columns, a string as its vocabulary
    index), ``status`` a uint8 array per row (``PRESENT`` 0, ``EXPIRED`` 1, ``MISSING`` 2,
    ``UNAVAILABLE`` 3; a row reading several views gets the worst of them).
    ``get_typed(ids)`` returns ``(columns, status)``: a dict of ``"view:feature"`` → values in
    the feature's own type. Thread-safe.
    """

    def __init__(
        self,
        refs: list[str],
        entity: Entity,
        segments: list[Segment],
        reader: Any,
        clock: Callable[[], int],
        on_unavailable: str,
        counters: LookupCounters,
    ) -> None:
        self.refs = refs
        """The features (``"view:feature"``), in column order."""
        self.entity = entity
        """The entity every view of the plan describes."""
        self.width = sum(s.model_width for s in segments)
        """Number of model-input columns (a vector[N] feature takes N)."""
        self.model_columns: list[str] = []
        """Name of each model-input column: the feature, or ``"view:feature[i]"`` for element i
        of a vector."""
        self.unjoinable: list[str] = []
        """String features without a vocabulary: `get` refuses a plan that has any."""
        for s in segments:
            lay = s.view.layout
            for c in s.columns:
                ref, t = f"{s.view.name}:{lay.names[c]}", lay.types[c]
                if t.kind == "vector":
                    self.model_columns.extend(f"{ref}[{i}]" for i in range(t.length))
                else:
                    self.model_columns.append(ref)
                if t.kind == "string" and not lay.codes[c]:
                    self.unjoinable.append(ref)
        self.on_unavailable = on_unavailable
        """"error" (raise UnavailableError) or "default" (serve defaults, status UNAVAILABLE)."""
        self.defaults = np.zeros(self.width, np.float32)
        """Default of each column."""
        for s in segments:
            self.defaults[s.out_offset : s.out_offset + s.model_width] = s.defaults
        self.segments = segments
        self._reader = reader
        self._clock = clock
        self._counters = counters

    @property
    def columns(self) -> list[str]:
        """The model-input columns of `get` (see `model_columns`)."""
        return list(self.model_columns)

    @staticmethod
    def _as_batch(ids: Any) -> Any:
        if isinstance(ids, (int, str, bytes, np.integer)):
            return [ids]
        return ids

    def check_joinable(self) -> None:
        """Raise InvalidArgumentError when a feature cannot become a float model input."""
        if self.unjoinable:
            raise InvalidArgumentError(
                f"string features {self.unjoinable} cannot be joined into a float model input; "
                "declare a vocabulary on each (Feature(..., 'string', vocabulary=[...]): a "
                "value becomes its index, any other value len(vocabulary)) or read them with "
                "get_typed()"
            )

    def _fallback(self, ids: Any, exc: UnavailableError) -> tuple[np.ndarray, np.ndarray]:
        if self.on_unavailable != "default":
            self._counters.failures += 1
            raise exc
        self._counters.fallbacks += 1
        n = len(ids)
        return np.tile(self.defaults, (n, 1)), np.full(n, UNAVAILABLE, np.uint8)

    def get(self, ids: Any) -> tuple[np.ndarray, np.ndarray]:
        """Model input and status of each entity id. Called once per batch."""
        self.check_joinable()
        ids = self._as_batch(ids)
        c = self._counters
        c.lookups += 1
        c.rows += len(ids)
        try:
            return self._reader.get(ids, self._clock())
        except UnavailableError as e:
            return self._fallback(ids, e)

    async def get_async(self, ids: Any) -> tuple[np.ndarray, np.ndarray]:
        """`get` for an event loop: Redis reads go through redis.asyncio; native reads run
        inline (they take microseconds and never block)."""
        self.check_joinable()
        ids = self._as_batch(ids)
        c = self._counters
        c.lookups += 1
        c.rows += len(ids)
        try:
            return await self._reader.aget(ids, self._clock())
        except UnavailableError as e:
            return self._fallback(ids, e)

    def _typed_fallback(
        self, ids: Any, exc: UnavailableError
    ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        from .rows import RawRows, assemble_typed

        _, status = self._fallback(ids, exc)
        n = len(status)
        raws = [
            RawRows(np.zeros((n, s.view.layout.width), np.float32), None, status)
            for s in self.segments
        ]
        return assemble_typed(self.segments, raws, n)[0], status

    def get_typed(self, ids: Any) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Each feature in its own type (``"view:feature"`` → float32/float64/int64 [n],
        float32 [n, N] for a vector, object array of str for a string) and the status of each
        entity id."""
        ids = self._as_batch(ids)
        c = self._counters
        c.lookups += 1
        c.rows += len(ids)
        try:
            return self._reader.get_typed(ids, self._clock())
        except UnavailableError as e:
            return self._typed_fallback(ids, e)

    async def get_typed_async(self, ids: Any) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """`get_typed` for an event loop."""
        ids = self._as_batch(ids)
        c = self._counters
        c.lookups += 1
        c.rows += len(ids)
        try:
            return await self._reader.aget_typed(ids, self._clock())
        except UnavailableError as e:
            return self._typed_fallback(ids, e)


def _wall_clock_ns() -> int:
    return time.time_ns()


def _model_defaults(view: FeatureView, index: int) -> list[float]:
    """Model-input defaults of one feature (N for a vector; a string's vocabulary index)."""
    f = view.features[index]
    if f.type.kind == "vector":
        return [float(x) for x in f.default]
    if f.type.kind == "string":
        return [float(view.layout.string_code(index, [f.default])[0])] if f.vocabulary else [0.0]
    return [float(f.default)]


class FeatureStore:
    """Feature definitions plus an online store chosen by URL.

    ``url``: ``None``/``"memory://"``/``"memory://NAME"`` (native in-process table),
    ``"native://PATH"`` (native table snapshotted under PATH), or ``"redis://HOST:PORT/DB"``.
    ``home``: the metadata directory (default ``$AIARCH_HOME`` or ``./.aiarch``).
    ``timeout_s``: how long a Redis call may take before the lookup fails or falls back.
    ``on_unavailable``: the default policy of plans when the online store does not answer.
    ``clock``: nanoseconds since the Unix epoch, for TTLs (injectable for tests).
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        home: str | os.PathLike[str] | None = None,
        timeout_s: float = 0.05,
        on_unavailable: str = "error",
        clock: Callable[[], int] | None = None,
    ) -> None:
        if on_unavailable not in ("error", "default"):
            raise InvalidArgumentError(
                f"on_unavailable must be 'error' or 'default', got {on_unavailable!r}"
            )
        self.metadata = MetadataStore(home)
        self.backend: OnlineBackend = open_backend(url, timeout_s=timeout_s)
        self.url = self.backend.url
        self.on_unavailable = on_unavailable
        self.clock: Callable[[], int] = clock or _wall_clock_ns
        self.counters = LookupCounters()

    # -- definitions ---------------------------------------------------------------------------
    def apply(self, *objects: Entity | FeatureView | Iterable[Entity | FeatureView]) -> None:
        """Store entities and feature views (replacing ones of the same name). A view's entity
        must be applied before it or in the same call."""
        flat: list[Any] = []
        for o in objects:
            if isinstance(o, (Entity, FeatureView)):
                flat.append(o)
            else:
                flat.extend(o)
        for o in flat:
            if not isinstance(o, (Entity, FeatureView)):
                raise InvalidArgumentError(
                    f"apply() takes Entity and FeatureView objects, got {type(o).__name__}"
                )
        entities = self.metadata.entities()
        for o in flat:
            if isinstance(o, Entity):
                self.metadata.put_entity(o)
                entities[o.name] = o
        for o in flat:
            if isinstance(o, FeatureView):
                if o.entity not in entities:
                    raise NotFoundError(
                        f"feature view {o.name!r} names unknown entity {o.entity!r}; "
                        f"known entities: {sorted(entities)}"
                    )
                self.metadata.put_view(o)

    def entities(self) -> dict[str, Entity]:
        return self.metadata.entities()

    def views(self) -> dict[str, FeatureView]:
        return self.metadata.views()

    def view(self, name: str | FeatureView) -> FeatureView:
        """The applied view of that name (a FeatureView must match what was applied)."""
        views = self.metadata.views()
        key = name.name if isinstance(name, FeatureView) else name
        v = views.get(key)
        if v is None:
            raise NotFoundError(f"unknown feature view {key!r}; known views: {sorted(views)}")
        if isinstance(name, FeatureView) and name.fingerprint != v.fingerprint:
            raise InvalidArgumentError(
                f"feature view {key!r} differs from the applied definition; apply() it first"
            )
        return v

    def entity_of(self, view: FeatureView) -> Entity:
        ents = self.metadata.entities()
        e = ents.get(view.entity)
        if e is None:
            raise NotFoundError(
                f"feature view {view.name!r} names unknown entity {view.entity!r}; "
                f"known entities: {sorted(ents)}"
            )
        return e

    # -- online --------------------------------------------------------------------------------
    def resolve(self, refs: Sequence[str]) -> tuple[list[str], Entity, list[Segment]]:
        """Expand and check references: (column names, entity, per-view segments)."""
        if isinstance(refs, str):
            refs = [refs]
        if not refs:
            raise InvalidArgumentError("a lookup needs at least one 'view:feature' reference")
        views = self.metadata.views()
        order: list[str] = []
        picked: dict[str, list[int]] = {}
        columns: list[str] = []
        for ref in refs:
            vname, fname = parse_ref(ref)
            v = views.get(vname)
            if v is None:
                raise NotFoundError(
                    f"unknown feature view {vname!r} in {ref!r}; known views: {sorted(views)}"
                )
            names = v.feature_names()
            wanted = names if fname == "*" else [fname]
            for f in wanted:
                if f not in names:
                    raise NotFoundError(
                        f"feature view {vname!r} has no feature {f!r}; it has: {names}"
                    )
                col = f"{vname}:{f}"
                if col in columns:
                    raise InvalidArgumentError(f"feature {col!r} is requested twice")
                if vname not in picked:
                    order.append(vname)
                    picked[vname] = []
                picked[vname].append(names.index(f))
                columns.append(col)
        ents = {views[v].entity for v in order}
        if len(ents) > 1:
            raise InvalidArgumentError(
                f"a lookup plan reads views of one entity; these views describe {sorted(ents)}"
            )
        entity = self.entity_of(views[order[0]])
        # Columns are grouped per view in the output, in the order the references gave them.
        segments: list[Segment] = []
        out_cols: list[str] = []
        width = 0
        for vname in order:
            v = views[vname]
            cols = picked[vname]
            segments.append(
                Segment(
                    view=v,
                    columns=tuple(cols),
                    defaults=tuple(d for c in cols for d in _model_defaults(v, c)),
                    out_offset=width,
                )
            )
            width += segments[-1].model_width
            out_cols.extend(f"{vname}:{v.features[c].name}" for c in cols)
        return out_cols, entity, segments

    def plan(self, refs: Sequence[str], *, on_unavailable: str | None = None) -> LookupPlan:
        """Resolve references (``"view:feature"`` or ``"view:*"``) once into a plan. Columns of
        one view are contiguous in the output, in the order first referenced."""
        policy = on_unavailable or self.on_unavailable
        if policy not in ("error", "default"):
            raise InvalidArgumentError(
                f"on_unavailable must be 'error' or 'default', got {policy!r}"
            )
        columns, entity, segments = self.resolve(refs)
        reader = self.backend.reader(segments, entity.dtype, sum(s.model_width for s in segments))
        return LookupPlan(columns, entity, segments, reader, self.clock, policy, self.counters)

    def get(self, refs: Sequence[str], ids: Any) -> tuple[np.ndarray, np.ndarray]:
        """One-off lookup (resolves a plan each call; use `plan` on hot paths)."""
        return self.plan(refs).get(ids)

    def write(self, view: str | FeatureView, data: Any) -> int:
        """Upsert rows into the online store; newer event time wins per entity.

        ``data``: a pyarrow Table/RecordBatch or a dict of numpy arrays (or lists) with the
        entity's key column, the view's timestamp column (timestamps, or int64 ns since the
        epoch) and every feature column. Nulls take the feature's default. Returns rows applied.
        """
        from .offline import columns_of

        v = self.view(view)
        entity = self.entity_of(v)
        ids, event_ns, values = columns_of(data, v, entity)
        if len(event_ns) == 0:
            return 0
        slots, blobs = v.layout.encode(values)
        return self.backend.write(v, entity.dtype, ids, event_ns, slots, blobs)

    def save(self) -> None:
        """Snapshot native tables to their directory (native://PATH); no-op otherwise."""
        self.backend.save()

    def close(self) -> None:
        """Save (native://PATH) and release connections (Redis)."""
        self.backend.save()
        self.backend.close()

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- offline -------------------------------------------------------------------------------
    def materialize(
        self,
        view: str | FeatureView,
        start: Any = None,
        end: Any = None,
        *,
        chunk_rows: int = 100_000,
        progress: bool = True,
        max_chunks: int | None = None,
    ) -> dict[str, Any]:
        """Load the latest row per entity with event time in [start, end) from the view's Parquet
        source into the online store, in chunks of `chunk_rows` entities, with a progress bar on
        stderr. ``start`` defaults to the end of the last completed run (incremental), ``end`` to
        now. An interrupted run resumes where it stopped when called again (``max_chunks`` stops
        a run early on purpose). Returns counts and the window."""
        from .offline import materialize

        return materialize(self, self.view(view), start, end, chunk_rows, progress, max_chunks)

    def training_set(
        self,
        entity_rows: Any,
        features: Sequence[str],
        *,
        timestamp_field: str = "event_timestamp",
        fill_defaults: bool = True,
    ) -> Any:
        """A pyarrow Table: `entity_rows` (key column(s) and `timestamp_field`) joined with each
        feature's latest value at or before the row's timestamp (DuckDB ASOF JOIN), within the
        view's TTL. Rows without such a value get the feature's default (or null when
        ``fill_defaults`` is false). Row order is kept; feature columns are named
        ``"view:feature"``."""
        from .offline import training_set

        return training_set(self, entity_rows, features, timestamp_field, fill_defaults)
