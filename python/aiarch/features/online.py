"""Online backends of the feature store, chosen by URL.

- ``None``, ``memory://`` or ``memory://NAME``: the native in-process table (C++), shared by every
  store of that name in the process; nothing is persisted.
- ``native://PATH``: the native table, loaded from snapshots under the directory PATH at start
  and snapshotted there by ``FeatureStore.save()`` (and after each materialized chunk).
- ``redis://HOST:PORT/DB``: Redis, shared by every replica. One key per entity per view holding a
  packed row (big-endian int64 event time, then float32 values); reads are one pipelined round
  trip per batch (one MGET per view), writes one Lua call per chunk that keeps the newer row.

A reader is built once per lookup plan and called once per batch.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aiarch import _core
from aiarch.errors import InvalidArgumentError, UnavailableError
from aiarch.redact import redact_url

from .definitions import FeatureView

__all__ = [
    "EXPIRED",
    "MISSING",
    "PRESENT",
    "UNAVAILABLE",
    "NativeBackend",
    "OnlineBackend",
    "RedisBackend",
    "Segment",
    "normalize_ids",
    "open_backend",
]

PRESENT = 0
"""Row status: the entity's row was found and is within the TTL."""
EXPIRED = 1
"""Row status: the row is older than the view's TTL; defaults were served."""
MISSING = 2
"""Row status: no row for the entity; defaults were served."""
UNAVAILABLE = 3
"""Row status: the online store did not answer; defaults were served (fallback mode only)."""


@dataclass(frozen=True)
class Segment:
    """One view's part of a lookup plan."""

    view: FeatureView
    columns: tuple[int, ...]
    defaults: tuple[float, ...]
    out_offset: int


def normalize_ids(ids: Any, key_dtype: str) -> Any:
    """Entity ids as a 1-D int64 array (int64 entities) or a list of str/bytes (string ones).

    Raises InvalidArgumentError naming the expected type."""
    if key_dtype == "int64":
        arr = ids if isinstance(ids, np.ndarray) else np.asarray(ids)
        if arr.dtype.kind not in "iu":
            raise InvalidArgumentError(
                f"entity ids of an int64 entity must be integers; got an array of {arr.dtype}"
            )
        if arr.ndim != 1:
            raise InvalidArgumentError(
                f"entity ids must be one-dimensional; got {arr.ndim} dimensions"
            )
        return arr.astype(np.int64, copy=False)
    out = list(ids.tolist() if isinstance(ids, np.ndarray) else ids)
    for x in out:
        if not isinstance(x, (str, bytes)):
            raise InvalidArgumentError(
                f"entity ids of a string entity must be str or bytes; got {type(x).__name__}"
            )
    return out


class OnlineBackend:
    """What every online backend provides. Thread-safe."""

    url: str = ""
    persistent: bool = False

    def write(
        self, view: FeatureView, key_dtype: str, ids: Any, values: np.ndarray, event_ns: np.ndarray
    ) -> int:
        """Upsert rows (newer event time wins); returns rows applied. Called once per chunk."""
        raise NotImplementedError

    def reader(self, segments: list[Segment], key_dtype: str, width: int) -> Any:
        """An object with ``get(ids, now_ns) -> (values, status)`` (and ``aget``), built once per
        plan."""
        raise NotImplementedError

    def save(self) -> None:
        """Persist what persistence this backend has (native snapshots); no-op otherwise."""

    def close(self) -> None:
        """Release connections."""


# ---------------------------------------------------------------------------- native


class _NativeReader:
    __slots__ = ("_plan",)

    def __init__(self, plan: _core.FeaturePlan) -> None:
        self._plan = plan

    def get(self, ids: Any, now_ns: int) -> tuple[np.ndarray, np.ndarray]:
        return self._plan.gather(ids, now_ns)

    async def aget(self, ids: Any, now_ns: int) -> tuple[np.ndarray, np.ndarray]:
        # Microseconds, lock-free, GIL released: no reason to leave the loop.
        return self._plan.gather(ids, now_ns)


class NativeBackend(OnlineBackend):
    """The C++ feature table: one table per view layout, optionally snapshotted to a directory."""

    def __init__(self, url: str, path: Path | None) -> None:
        self.url = url
        self.path = path
        self.persistent = path is not None
        self._tables: dict[tuple[str, str], _core.FeatureTable] = {}
        self._lock = threading.Lock()

    def _snapshot_path(self, view: FeatureView) -> Path:
        assert self.path is not None
        return self.path / f"{view.name}-{view.fingerprint}.snap"

    def table(self, view: FeatureView, key_dtype: str) -> _core.FeatureTable:
        """The native table of `view` (created, and loaded from its snapshot, on first use)."""
        key = (view.name, view.fingerprint)
        t = self._tables.get(key)
        if t is not None:
            return t
        with self._lock:
            t = self._tables.get(key)
            if t is None:
                t = _core.FeatureTable(len(view.features), key_dtype)
                if self.path is not None and self._snapshot_path(view).exists():
                    t.load_snapshot(str(self._snapshot_path(view)))
                self._tables[key] = t
        return t

    def write(
        self, view: FeatureView, key_dtype: str, ids: Any, values: np.ndarray, event_ns: np.ndarray
    ) -> int:
        return int(self.table(view, key_dtype).upsert(ids, values, event_ns))

    def reader(self, segments: list[Segment], key_dtype: str, width: int) -> _NativeReader:
        parts = [
            (
                self.table(s.view, key_dtype),
                list(s.columns),
                list(s.defaults),
                s.view.ttl_ns,
                s.out_offset,
            )
            for s in segments
        ]
        return _NativeReader(_core.FeaturePlan(parts, width))

    def save(self) -> None:
        if self.path is None:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        with self._lock:
            tables = list(self._tables.items())
        # The newest layout of each view (tables are kept in creation order).
        views = {name: fp for (name, fp), _ in tables}
        for (name, fp), t in tables:
            if views.get(name) == fp:
                t.snapshot(str(self.path / f"{name}-{fp}.snap"))

    def counters(self) -> dict[str, dict[str, int]]:
        """Per-view native counters (upserts, stale, entities)."""
        with self._lock:
            return {name: t.counters() for (name, _), t in self._tables.items()}


# ---------------------------------------------------------------------------- redis

# Keeps the newer row per key: KEYS are row keys, ARGV the packed rows in the same order.
# A row starts with its event time as a big-endian int64, compared as (signed high, low) words.
_UPSERT_LUA = """
local applied = 0
for i, key in ipairs(KEYS) do
  local row = ARGV[i]
  local nh, nl = struct.unpack('>i4I4', row)
  local old = redis.call('GET', key)
  local write = true
  if old and string.len(old) >= 8 then
    local oh, ol = struct.unpack('>i4I4', old)
    if oh > nh or (oh == nh and ol > nl) then write = false end
  end
  if write then
    redis.call('SET', key, row)
    applied = applied + 1
  end
end
return applied
"""


def _row_dtype(width: int) -> np.dtype[Any]:
    return np.dtype([("ts", ">i8"), ("v", "<f4", (width,))])


class _RedisReader:
    """One plan's pipelined Redis read: an MGET per view, one round trip per batch."""

    def __init__(
        self, backend: RedisBackend, segments: list[Segment], key_dtype: str, width: int
    ) -> None:
        self.backend = backend
        self.key_dtype = key_dtype
        self.width = width
        self.segments = [
            (
                backend.prefix(s.view),
                np.asarray(s.columns, np.intp),
                np.asarray(s.defaults, np.float32),
                s.view.ttl_ns,
                s.out_offset,
                _row_dtype(len(s.view.features)),
            )
            for s in segments
        ]
        self.defaults = np.zeros(width, np.float32)
        for s in segments:
            self.defaults[s.out_offset : s.out_offset + len(s.columns)] = s.defaults

    def _keys(self, prefix: bytes, ids: Any) -> list[bytes]:
        if self.key_dtype == "int64":
            return [prefix + b"%d" % i for i in ids.tolist()]
        return [prefix + (i.encode() if isinstance(i, str) else i) for i in ids]

    def _commands(self, ids: Any) -> list[list[bytes]]:
        return [self._keys(seg[0], ids) for seg in self.segments]

    def _assemble(
        self, n: int, replies: list[list[bytes | None]], now_ns: int
    ) -> tuple[np.ndarray, np.ndarray]:
        out = np.empty((n, self.width), np.float32)
        out[:] = self.defaults
        status = np.zeros(n, np.uint8)
        for (_, cols, _defaults, ttl_ns, off, rec), vals in zip(self.segments, replies):
            size = rec.itemsize
            hit = [i for i, v in enumerate(vals) if v is not None and len(v) == size]
            seg_status = np.full(n, MISSING, np.uint8)
            if hit:
                rows = np.frombuffer(b"".join([vals[i] for i in hit]), rec)  # type: ignore[misc]
                idx = np.asarray(hit, np.intp)
                fresh = np.ones(len(hit), bool)
                if ttl_ns > 0:
                    fresh = (now_ns - rows["ts"].astype(np.int64)) <= ttl_ns
                seg_status[idx] = np.where(fresh, PRESENT, EXPIRED)
                use = idx[fresh]
                out[use, off : off + len(cols)] = rows["v"][fresh][:, cols]
            np.maximum(status, seg_status, out=status)
        return out, status

    def get(self, ids: Any, now_ns: int) -> tuple[np.ndarray, np.ndarray]:
        ids = normalize_ids(ids, self.key_dtype)
        n = len(ids)
        if n == 0:
            return np.empty((0, self.width), np.float32), np.empty(0, np.uint8)
        cmds = self._commands(ids)
        replies = self.backend.mget_many(cmds)
        return self._assemble(n, replies, now_ns)

    async def aget(self, ids: Any, now_ns: int) -> tuple[np.ndarray, np.ndarray]:
        ids = normalize_ids(ids, self.key_dtype)
        n = len(ids)
        if n == 0:
            return np.empty((0, self.width), np.float32), np.empty(0, np.uint8)
        replies = await self.backend.amget_many(self._commands(ids))
        return self._assemble(n, replies, now_ns)


class RedisBackend(OnlineBackend):
    """Redis through redis-py, with short timeouts and no retries: a down or stalled server
    fails a lookup within ``timeout_s`` (UnavailableError), it never hangs."""

    persistent = True

    def __init__(self, url: str, timeout_s: float = 0.05, namespace: str = "aiarch") -> None:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        if not timeout_s > 0:
            raise InvalidArgumentError(f"timeout_s must be > 0, got {timeout_s}")
        self.url = url
        self.timeout_s = timeout_s
        self.namespace = namespace
        self._kwargs: dict[str, Any] = {
            "socket_timeout": timeout_s,
            "socket_connect_timeout": timeout_s,
            "retry": Retry(NoBackoff(), 0),
            "health_check_interval": 0,
        }
        self.client = redis.Redis.from_url(url, **self._kwargs)
        self._upsert = self.client.register_script(_UPSERT_LUA)
        self._async: dict[asyncio.AbstractEventLoop, Any] = {}
        self._lock = threading.Lock()

    def prefix(self, view: FeatureView) -> bytes:
        return f"{self.namespace}:fv:{view.name}:{view.fingerprint}:".encode()

    def _unavailable(self, e: BaseException) -> UnavailableError:
        kind = "timed out" if "Timeout" in type(e).__name__ else "is unreachable"
        return UnavailableError(
            redact_url(
                f"feature store {self.url} {kind} (timeout {self.timeout_s * 1000:.0f} ms): {e}"
            )
        )

    def mget_many(self, key_lists: list[list[bytes]]) -> list[list[bytes | None]]:
        """One MGET per list, pipelined: one round trip."""
        import redis

        try:
            if len(key_lists) == 1:
                return [self.client.mget(key_lists[0])]  # type: ignore[list-item]
            pipe = self.client.pipeline(transaction=False)
            for keys in key_lists:
                pipe.mget(keys)
            return pipe.execute()
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as e:
            raise self._unavailable(e) from e

    def _aclient(self) -> Any:
        loop = asyncio.get_running_loop()
        c = self._async.get(loop)
        if c is None:
            import redis.asyncio as aredis

            with self._lock:
                for old in [lp for lp in self._async if lp.is_closed()]:
                    del self._async[old]
                c = self._async[loop] = aredis.Redis.from_url(self.url, **self._kwargs)
        return c

    async def amget_many(self, key_lists: list[list[bytes]]) -> list[list[bytes | None]]:
        import redis

        client = self._aclient()
        try:
            # socket_timeout bounds every read of the asyncio client too.
            if len(key_lists) == 1:
                return [await client.mget(key_lists[0])]
            pipe = client.pipeline(transaction=False)
            for keys in key_lists:
                pipe.mget(keys)
            return await pipe.execute()
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as e:
            raise self._unavailable(e) from e

    def write(
        self,
        view: FeatureView,
        key_dtype: str,
        ids: Any,
        values: np.ndarray,
        event_ns: np.ndarray,
        chunk: int = 1000,
    ) -> int:
        import redis

        rec = np.empty(len(values), _row_dtype(len(view.features)))
        rec["ts"] = event_ns
        rec["v"] = values
        raw = rec.tobytes()
        size = rec.dtype.itemsize
        prefix = self.prefix(view)
        if key_dtype == "int64":
            keys = [prefix + b"%d" % i for i in np.asarray(ids).tolist()]
        else:
            keys = [prefix + (i.encode() if isinstance(i, str) else i) for i in ids]
        applied = 0
        try:
            for start in range(0, len(keys), chunk):
                stop = min(start + chunk, len(keys))
                rows = [raw[i * size : (i + 1) * size] for i in range(start, stop)]
                applied += int(self._upsert(keys=keys[start:stop], args=rows))
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as e:
            raise self._unavailable(e) from e
        return applied

    def reader(self, segments: list[Segment], key_dtype: str, width: int) -> _RedisReader:
        return _RedisReader(self, segments, key_dtype, width)

    def close(self) -> None:
        self.client.close()


# ---------------------------------------------------------------------------- selection

_SHARED: dict[str, NativeBackend] = {}
_SHARED_LOCK = threading.Lock()


def open_backend(url: str | None, *, timeout_s: float = 0.05) -> OnlineBackend:
    """The backend for `url` (see the module docstring). Native backends are shared per URL
    within the process, so every store of one URL sees the same tables."""
    if url is None or url == "memory://" or url.startswith("memory://"):
        key = url or "memory://"
        path = None
    elif url.startswith("native://"):
        raw = url[len("native://") :]
        if not raw:
            raise InvalidArgumentError("native:// needs a directory, e.g. native:///var/lib/feat")
        path = Path(raw).resolve()
        key = f"native://{path}"
    elif url.startswith(("redis://", "rediss://", "unix://")):
        return RedisBackend(url, timeout_s=timeout_s)
    else:
        raise InvalidArgumentError(
            f"unknown online store URL {redact_url(url)!r}; expected memory://[NAME], native://PATH or "
            "redis://HOST:PORT/DB"
        )
    with _SHARED_LOCK:
        b = _SHARED.get(key)
        if b is None:
            b = _SHARED[key] = NativeBackend(key, path)
    return b
