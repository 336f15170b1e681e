"""Online backends of the feature store, chosen by URL.

- ``None``, ``memory://`` or ``memory://NAME``: the native in-process table (C++), shared by every
  store of that name in the process; nothing is persisted.
- ``native://PATH``: the native table, loaded from snapshots under the directory PATH at start
  and snapshotted there by ``FeatureStore.save()`` (and after each materialized chunk).
- ``redis://HOST:PORT/DB``: Redis, shared by every replica. One key per entity per view holding a
  packed row (big-endian int64 event time, the row's 32-bit slots, then its blob of strings, see
  `types`); reads are one pipelined round trip per batch (one MGET per view), writes one Lua
  call per chunk that keeps the newer row.
- ``redis+cluster://HOST:PORT,HOST:PORT,...``: Redis Cluster (any reachable nodes; the rest are
  discovered). Keys carry the entity id as a hash tag, so one entity's rows of every view live in
  one slot: a batch is one MGET per entity, pipelined by node - one round trip per node per
  batch, the nodes answering in parallel; writes are one Lua call per slot, pipelined by node.
- ``redis+sentinel://[[USER]:PASSWORD@]HOST:PORT[,HOST:PORT...]/SERVICE[/DB]``: the master of
  SERVICE as Redis Sentinel names it (the nodes are sentinels; the credentials and DB are the
  master's). Keys, reads and writes are those of ``redis://``; after a failover the next
  connection asks the sentinels again and lands on the promoted replica.

A reader is built once per lookup plan and called once per batch: ``get`` answers the float32
model input, ``get_typed`` typed columns (`rows`).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from aiarch import _core
from aiarch.errors import InvalidArgumentError, UnavailableError
from aiarch.redact import redact_url

from .definitions import FeatureView
from .rows import (
    EXPIRED,
    MISSING,
    PRESENT,
    RawRows,
    Segment,
    assemble_model,
    assemble_typed,
    pack_rows,
    unpack_rows,
)

__all__ = [
    "EXPIRED",
    "MISSING",
    "PRESENT",
    "UNAVAILABLE",
    "NativeBackend",
    "OnlineBackend",
    "RedisBackend",
    "RedisClusterBackend",
    "RedisSentinelBackend",
    "Segment",
    "normalize_ids",
    "open_backend",
]

UNAVAILABLE = 3
"""Row status: the online store did not answer; defaults were served (fallback mode only)."""


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
        self,
        view: FeatureView,
        key_dtype: str,
        ids: Any,
        event_ns: np.ndarray,
        slots: np.ndarray,
        blobs: list[bytes] | None,
    ) -> int:
        """Upsert rows encoded by the view's layout (slots float32 [n, width], blobs or None);
        newer event time wins. Returns rows applied. Called once per chunk."""
        raise NotImplementedError

    def reader(self, segments: list[Segment], key_dtype: str, width: int) -> Any:
        """An object with ``get(ids, now_ns) -> (values, status)`` and
        ``get_typed(ids, now_ns) -> (columns, status)`` (and ``aget``/``aget_typed``), built
        once per plan."""
        raise NotImplementedError

    def save(self) -> None:
        """Persist what persistence this backend has (native snapshots); no-op otherwise."""

    def close(self) -> None:
        """Release connections."""


# ---------------------------------------------------------------------------- native


class _NativeReader:
    """A plan's native reads. A plan whose features are all float32 slots (float32, int32,
    bool, vector) is one lock-free C++ gather of every view into the model input; other plans
    gather each view's whole row (and its blob when strings are read) and convert in numpy."""

    __slots__ = ("_blob_tables", "_direct", "_segments", "_view_plans", "_width")

    def __init__(
        self, segments: list[Segment], tables: list[_core.FeatureTable], width: int
    ) -> None:
        self._segments = segments
        self._width = width
        self._direct: _core.FeaturePlan | None = None
        if all(s.slot_columns for s in segments):
            self._direct = _core.FeaturePlan(
                [
                    (t, list(s.slot_columns), list(s.defaults), s.view.ttl_ns, s.out_offset)
                    for s, t in zip(segments, tables)
                ],
                width,
            )
        # Whole rows, zeros for absent ones (defaults are applied per type afterwards).
        self._view_plans = [
            _core.FeaturePlan(
                [(t, list(range(t.width)), [0.0] * t.width, s.view.ttl_ns, 0)], t.width
            )
            for s, t in zip(segments, tables)
        ]
        self._blob_tables = [t if s.needs_blobs else None for s, t in zip(segments, tables)]

    def _raw(self, ids: Any, now_ns: int) -> list[RawRows]:
        raws = []
        for s, plan, bt in zip(self._segments, self._view_plans, self._blob_tables):
            slots, status = plan.gather(ids, now_ns)
            blobs = None if bt is None else bt.gather_blobs(ids, now_ns, s.view.ttl_ns)[0]
            raws.append(RawRows(slots, blobs, status))
        return raws

    def get(self, ids: Any, now_ns: int) -> tuple[np.ndarray, np.ndarray]:
        if self._direct is not None:
            return self._direct.gather(ids, now_ns)
        raws = self._raw(ids, now_ns)
        return assemble_model(self._segments, raws, len(raws[0].status), self._width)

    def get_typed(self, ids: Any, now_ns: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
        raws = self._raw(ids, now_ns)
        return assemble_typed(self._segments, raws, len(raws[0].status))

    async def aget(self, ids: Any, now_ns: int) -> tuple[np.ndarray, np.ndarray]:
        # Microseconds, lock-free, GIL released: no reason to leave the loop.
        return self.get(ids, now_ns)

    async def aget_typed(self, ids: Any, now_ns: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
        return self.get_typed(ids, now_ns)


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
                t = _core.FeatureTable(view.layout.width, key_dtype)
                if self.path is not None and self._snapshot_path(view).exists():
                    t.load_snapshot(str(self._snapshot_path(view)))
                self._tables[key] = t
        return t

    def write(
        self,
        view: FeatureView,
        key_dtype: str,
        ids: Any,
        event_ns: np.ndarray,
        slots: np.ndarray,
        blobs: list[bytes] | None,
    ) -> int:
        return int(self.table(view, key_dtype).upsert(ids, slots, event_ns, blobs))

    def reader(self, segments: list[Segment], key_dtype: str, width: int) -> _NativeReader:
        tables = [self.table(s.view, key_dtype) for s in segments]
        return _NativeReader(segments, tables, width)

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


def _row_keys(parts: tuple[bytes, bytes], key_dtype: str, ids: Any) -> list[bytes]:
    """The row key of each entity id: ``head + id + tail``."""
    head, tail = parts
    if key_dtype == "int64":
        return [b"%s%d%s" % (head, i, tail) for i in np.asarray(ids).tolist()]
    return [head + (i.encode() if isinstance(i, str) else i) + tail for i in ids]


class _RedisReader:
    """One plan's pipelined Redis read: an MGET per view, one round trip per batch."""

    def __init__(
        self, backend: RedisBackend, segments: list[Segment], key_dtype: str, width: int
    ) -> None:
        self.backend = backend
        self.key_dtype = key_dtype
        self.width = width
        self.segments = segments
        self.parts = [backend.key_parts(s.view) for s in segments]

    def _commands(self, ids: Any) -> list[list[bytes]]:
        return [_row_keys(p, self.key_dtype, ids) for p in self.parts]

    def _raw(self, replies: list[list[bytes | None]], now_ns: int) -> list[RawRows]:
        return [
            unpack_rows(s.view, vals, now_ns, s.view.ttl_ns, s.needs_blobs)
            for s, vals in zip(self.segments, replies)
        ]

    def get(self, ids: Any, now_ns: int) -> tuple[np.ndarray, np.ndarray]:
        ids = normalize_ids(ids, self.key_dtype)
        n = len(ids)
        if n == 0:
            return np.empty((0, self.width), np.float32), np.empty(0, np.uint8)
        replies = self.backend.mget_many(self._commands(ids))
        return assemble_model(self.segments, self._raw(replies, now_ns), n, self.width)

    async def aget(self, ids: Any, now_ns: int) -> tuple[np.ndarray, np.ndarray]:
        ids = normalize_ids(ids, self.key_dtype)
        n = len(ids)
        if n == 0:
            return np.empty((0, self.width), np.float32), np.empty(0, np.uint8)
        replies = await self.backend.amget_many(self._commands(ids))
        return assemble_model(self.segments, self._raw(replies, now_ns), n, self.width)

    def get_typed(self, ids: Any, now_ns: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
        ids = normalize_ids(ids, self.key_dtype)
        replies = self.backend.mget_many(self._commands(ids)) if len(ids) else []
        if not replies:
            replies = [[] for _ in self.segments]
        return assemble_typed(self.segments, self._raw(replies, now_ns), len(ids))

    async def aget_typed(self, ids: Any, now_ns: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
        ids = normalize_ids(ids, self.key_dtype)
        replies = await self.backend.amget_many(self._commands(ids)) if len(ids) else []
        if not replies:
            replies = [[] for _ in self.segments]
        return assemble_typed(self.segments, self._raw(replies, now_ns), len(ids))


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

    def key_parts(self, view: FeatureView) -> tuple[bytes, bytes]:
        """(head, tail) of `view`'s row keys: a row key is ``head + entity id + tail``."""
        return f"{self.namespace}:fv:{view.name}:{view.fingerprint}:".encode(), b""

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

    def _client_of_loop(self, make: Callable[[], Any]) -> Any:
        """The asyncio client of the running loop, made by `make` on first use in that loop
        (clients of closed loops are dropped then, through `_forget_loop`)."""
        loop = asyncio.get_running_loop()
        c = self._async.get(loop)
        if c is None:
            with self._lock:
                for old in [lp for lp in self._async if lp.is_closed()]:
                    self._forget_loop(old)
                c = self._async[loop] = make()
        return c

    def _forget_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        del self._async[loop]

    def _aclient(self) -> Any:
        import redis.asyncio as aredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        # The asyncio client needs the asyncio Retry (redis-py converts a sync one with a warning).
        kwargs = {**self._kwargs, "retry": Retry(NoBackoff(), 0)}
        return self._client_of_loop(lambda: aredis.Redis.from_url(self.url, **kwargs))

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
        event_ns: np.ndarray,
        slots: np.ndarray,
        blobs: list[bytes] | None,
        chunk: int = 1000,
    ) -> int:
        import redis

        packed = pack_rows(view, event_ns, slots, blobs)
        keys = _row_keys(self.key_parts(view), key_dtype, ids)
        applied = 0
        try:
            for start in range(0, len(keys), chunk):
                stop = min(start + chunk, len(keys))
                applied += int(self._upsert(keys=keys[start:stop], args=packed[start:stop]))
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as e:
            raise self._unavailable(e) from e
        return applied

    def reader(self, segments: list[Segment], key_dtype: str, width: int) -> _RedisReader:
        return _RedisReader(self, segments, key_dtype, width)

    def close(self) -> None:
        self.client.close()


# ---------------------------------------------------------------------------- redis cluster


def _pack_mgets(commands: list[list[bytes]]) -> bytes:
    """MGET commands in the Redis protocol (RESP arrays of bulk strings), back to back: what
    redis-py's `pack_commands` writes for these byte keys, without its per-argument work."""
    out = []
    for keys in commands:
        out.append(b"*%d\r\n$4\r\nMGET\r\n" % (len(keys) + 1))
        for key in keys:
            out.append(b"$%d\r\n%s\r\n" % (len(key), key))
    return b"".join(out)


_REDIRECTS = 2
"""Attempts of one cluster command: enough to follow a MOVED or an ASK. A multi-key read refused
with TRYAGAIN (its slot mid-migration, its keys split between two nodes) then pauses once in the
client (50 ms) and is read key by key, instead of being retried through the client's whole
series of sleeps. Plans of one view send one key per entity and never meet TRYAGAIN."""


def _cluster_nodes(url: str) -> tuple[list[tuple[str, int]], dict[str, Any]]:
    """Startup nodes and connection options of a ``redis+cluster://`` URL."""
    from urllib.parse import unquote, urlsplit

    form = "expected redis+cluster://[USER:PASSWORD@]HOST:PORT[,HOST:PORT...]"
    parts = urlsplit(url)
    userinfo, _, hosts = parts.netloc.rpartition("@")
    nodes: list[tuple[str, int]] = []
    for item in hosts.split(","):
        host, sep, port = item.strip().rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise InvalidArgumentError(
                f"invalid node {item!r} in online store URL {redact_url(url)!r}; {form}"
            )
        nodes.append((host.strip("[]"), int(port)))
    if parts.path.strip("/") not in ("", "0"):
        raise InvalidArgumentError(
            f"online store URL {redact_url(url)!r} names database {parts.path.strip('/')!r}; "
            "Redis Cluster has only database 0"
        )
    options: dict[str, Any] = {"ssl": parts.scheme == "rediss+cluster"}
    if userinfo:
        user, sep, password = userinfo.partition(":")
        options["username"] = unquote(user) or None
        options["password"] = unquote(password) if sep else None
    return nodes, options


class RedisClusterBackend(RedisBackend):
    """Redis Cluster through redis-py's cluster client, with the same row format, timeouts and
    no retries: a node that is down or stalled fails the batch within ``timeout_s``
    (UnavailableError, so the plan's policy raises or serves defaults, counted), never a hang.
    The slot map is refreshed after an error, so lookups recover once a replica has taken over.

    Rows of one entity share a hash tag (``aiarch:fv:{id=42}:txn:...``): every view of an
    entity is one MGET on one node. The client connects on first use."""

    def __init__(self, url: str, timeout_s: float = 0.05, namespace: str = "aiarch") -> None:
        if not timeout_s > 0:
            raise InvalidArgumentError(f"timeout_s must be > 0, got {timeout_s}")
        self.url = url
        self.timeout_s = timeout_s
        self.namespace = namespace
        self._nodes, options = _cluster_nodes(url)
        self._kwargs = {
            "socket_timeout": timeout_s,
            "socket_connect_timeout": timeout_s,
            **options,
        }
        self._client: Any = None
        # Set by a connection error of the direct read: batches go through redis-py's
        # pipeline (which refreshes the slot map) until one succeeds.
        self._recovering = False
        self._async: dict[asyncio.AbstractEventLoop, Any] = {}
        self._lock = threading.Lock()

    def key_parts(self, view: FeatureView) -> tuple[bytes, bytes]:
        # The tag is never empty ("id=" + id), so even an empty id keeps its views together.
        return (
            f"{self.namespace}:fv:{{id=".encode(),
            f"}}:{view.name}:{view.fingerprint}".encode(),
        )

    @staticmethod
    def _errors() -> tuple[type[BaseException], ...]:
        from redis import exceptions as x

        return (
            x.ConnectionError,
            x.TimeoutError,
            x.ClusterError,
            x.RedisClusterException,
            x.TryAgainError,
            x.MasterDownError,
            OSError,
        )

    @property
    def client(self) -> Any:  # type: ignore[override]
        if self._client is None:
            from redis.backoff import NoBackoff
            from redis.cluster import ClusterNode, RedisCluster
            from redis.retry import Retry

            with self._lock:
                if self._client is None:
                    try:
                        client = RedisCluster(
                            startup_nodes=[ClusterNode(h, p) for h, p in self._nodes],
                            retry=Retry(NoBackoff(), 0),
                            **self._kwargs,
                        )
                        client.RedisClusterRequestTTL = _REDIRECTS
                        self._client = client
                    except self._errors() as e:
                        raise self._unavailable(e) from e
        return self._client

    @staticmethod
    def _per_entity(key_lists: list[list[bytes]]) -> list[list[bytes]]:
        return [list(keys) for keys in zip(*key_lists)]

    @staticmethod
    def _per_view(replies: list[list[bytes | None]], views: int) -> list[list[bytes | None]]:
        return [[r[v] for r in replies] for v in range(views)]

    @staticmethod
    def _split_slot(reply: Any) -> bool:
        """Whether a reply is the refusal of a multi-key read in a slot being migrated (its
        keys split between two nodes: TRYAGAIN until the client gives up)."""
        from redis.exceptions import ClusterError, ConnectionError, TimeoutError, TryAgainError

        return isinstance(reply, (TryAgainError, ClusterError)) and not isinstance(
            reply, (ConnectionError, TimeoutError)
        )

    def _settle(self, replies: list[Any]) -> list[int]:
        """Indexes of the entities to read key by key; raises any other error."""
        again = []
        for i, r in enumerate(replies):
            if isinstance(r, BaseException):
                if not self._split_slot(r):
                    raise r
                again.append(i)
        return again

    @staticmethod
    def _queue_mgets(pipe: Any, per_entity: list[list[bytes]]) -> None:
        for keys in per_entity:
            pipe.execute_command("MGET", *keys)

    @staticmethod
    def _queue_gets(pipe: Any, per_entity: list[list[bytes]], again: list[int]) -> None:
        for i in again:
            for key in per_entity[i]:
                pipe.execute_command("GET", key)

    @staticmethod
    def _fill_gets(
        replies: list[Any], per_entity: list[list[bytes]], again: list[int], singles: list[Any]
    ) -> None:
        it = iter(singles)
        for i in again:
            replies[i] = [next(it) for _ in per_entity[i]]

    def _pipeline(self) -> Any:
        pipe = self.client.pipeline()
        pipe.RedisClusterRequestTTL = _REDIRECTS  # commands resent one by one use the pipe's
        return pipe

    def _pipeline_read(self, per_entity: list[list[bytes]]) -> list[Any]:
        """MGETs through redis-py's cluster pipeline, which follows MOVED and ASK and refreshes
        its slot map after an error. An entity whose slot is being migrated is read again with
        one GET per key."""
        pipe = self._pipeline()
        self._queue_mgets(pipe, per_entity)
        replies = pipe.execute(raise_on_error=False)
        again = self._settle(replies)
        if again:
            pipe = self._pipeline()
            self._queue_gets(pipe, per_entity, again)
            self._fill_gets(replies, per_entity, again, pipe.execute())
        return replies

    def _direct_read(self, per_entity: list[list[bytes]]) -> list[Any]:
        """MGETs grouped by the node that serves their slot in the client's map: every node's
        commands are written on one of its connections before any reply is read, so the batch
        costs one round trip per node with the nodes in parallel, and none of the cluster
        pipeline's per-command work. A reply that is an error (MOVED, ASK, TRYAGAIN, ...) is
        returned in place of that entity's values; a connection or timeout error is raised."""
        from redis.crc import key_slot
        from redis.exceptions import ResponseError

        client = self.client
        slots = client.nodes_manager
        groups: dict[str, tuple[Any, list[int]]] = {}
        for i, keys in enumerate(per_entity):
            node = slots.get_node_from_slot(key_slot(keys[0]))
            groups.setdefault(node.name, (node, []))[1].append(i)
        replies: list[Any] = [None] * len(per_entity)
        held: list[tuple[Any, Any, list[int]]] = []
        in_step = False
        try:
            for node, entities in groups.values():
                pool = client.get_redis_connection(node).connection_pool
                conn = pool.get_connection()
                held.append((pool, conn, entities))
                conn.send_packed_command([_pack_mgets([per_entity[i] for i in entities])])
            for _, conn, entities in held:
                for i in entities:
                    try:
                        replies[i] = conn.read_response()
                    except ResponseError as e:  # this command's alone: the stream stays in step
                        replies[i] = e
            in_step = True
        finally:
            for pool, conn, _ in held:
                if not in_step:  # replies may be left unread on it
                    conn.disconnect()
                pool.release(conn)
        return replies

    def mget_many(self, key_lists: list[list[bytes]]) -> list[list[bytes | None]]:
        """One MGET per entity (all its views, one slot), one round trip per node with the
        nodes in parallel (`_direct_read`). Entities answered with a redirect or a refusal are
        read again through redis-py's pipeline (`_pipeline_read`), and so is every batch after
        a connection error until one succeeds, so the slot map is refreshed the client's way
        (a replica that took over is found)."""
        from redis.exceptions import ResponseError

        per_entity = self._per_entity(key_lists)
        try:
            if self._recovering:
                replies = self._pipeline_read(per_entity)
                self._recovering = False
            else:
                try:
                    replies = self._direct_read(per_entity)
                except self._errors():
                    self._recovering = True
                    raise
                redo = [i for i, r in enumerate(replies) if isinstance(r, ResponseError)]
                if redo:
                    again = self._pipeline_read([per_entity[i] for i in redo])
                    for i, r in zip(redo, again):
                        replies[i] = r
        except self._errors() as e:
            raise self._unavailable(e) from e
        return self._per_view(replies, len(key_lists))

    def _aclient(self) -> Any:
        from redis.asyncio.cluster import ClusterNode, RedisCluster
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        def make() -> Any:
            c = RedisCluster(
                startup_nodes=[ClusterNode(h, p) for h, p in self._nodes],
                retry=Retry(NoBackoff(), 0),
                **self._kwargs,
            )
            c.RedisClusterRequestTTL = _REDIRECTS
            return c

        return self._client_of_loop(make)

    async def amget_many(self, key_lists: list[list[bytes]]) -> list[list[bytes | None]]:
        """As `mget_many` through the asyncio cluster pipeline (it writes to every node, then
        awaits their replies concurrently: one round trip per node)."""
        per_entity = self._per_entity(key_lists)
        client = self._aclient()
        try:
            pipe = client.pipeline()
            self._queue_mgets(pipe, per_entity)
            replies = await pipe.execute(raise_on_error=False)
            again = self._settle(replies)
            if again:
                pipe = client.pipeline()
                self._queue_gets(pipe, per_entity, again)
                self._fill_gets(replies, per_entity, again, await pipe.execute())
        except self._errors() as e:
            raise self._unavailable(e) from e
        return self._per_view(replies, len(key_lists))

    async def aclose(self) -> None:
        """Close the asyncio client of the running loop (if it has one)."""
        c = self._async.pop(asyncio.get_running_loop(), None)
        if c is not None:
            await c.aclose()

    def write(
        self,
        view: FeatureView,
        key_dtype: str,
        ids: Any,
        event_ns: np.ndarray,
        slots: np.ndarray,
        blobs: list[bytes] | None,
        chunk: int = 1000,
    ) -> int:
        """Upsert rows: one Lua call per slot (a call's keys must share one), pipelined by node
        per chunk of slots. The script is loaded on every master first (EVALSHA then finds it
        also on a replica promoted since: it is loaded again if not)."""
        from redis.crc import key_slot
        from redis.exceptions import NoScriptError

        packed = pack_rows(view, event_ns, slots, blobs)
        groups: dict[int, tuple[list[bytes], list[bytes]]] = {}
        for i, key in enumerate(_row_keys(self.key_parts(view), key_dtype, ids)):
            ks, rows = groups.setdefault(key_slot(key), ([], []))
            ks.append(key)
            rows.append(packed[i])
        batches = list(groups.values())
        applied = 0
        try:
            sha = self.client.script_load(_UPSERT_LUA)
            for start in range(0, len(batches), chunk):
                for attempt in (0, 1):
                    pipe = self.client.pipeline()
                    for ks, rows in batches[start : start + chunk]:
                        pipe.evalsha(sha, len(ks), *ks, *rows)
                    results = pipe.execute(raise_on_error=False)
                    if attempt == 0 and any(isinstance(r, NoScriptError) for r in results):
                        self.client.script_load(_UPSERT_LUA)  # a master without it took over
                        continue
                    for r in results:
                        if isinstance(r, BaseException):
                            raise r
                    applied += sum(int(r) for r in results)
                    break
        except self._errors() as e:
            raise self._unavailable(e) from e
        return applied

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


# ---------------------------------------------------------------------------- redis sentinel

_SENTINEL_FORM = "expected redis+sentinel://[[USER]:PASSWORD@]HOST:PORT[,HOST:PORT...]/SERVICE[/DB]"


def _sentinel_target(url: str) -> tuple[list[tuple[str, int]], str, dict[str, Any]]:
    """Sentinels, service name and master connection options of a ``redis+sentinel://`` URL."""
    from urllib.parse import unquote, urlsplit

    parts = urlsplit(url)
    userinfo, _, hosts = parts.netloc.rpartition("@")
    sentinels: list[tuple[str, int]] = []
    for item in hosts.split(","):
        host, sep, port = item.strip().rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise InvalidArgumentError(
                f"invalid sentinel {item!r} in online store URL {redact_url(url)!r}; "
                f"{_SENTINEL_FORM}"
            )
        sentinels.append((host.strip("[]"), int(port)))
    path = [unquote(p) for p in parts.path.strip("/").split("/")] if parts.path.strip("/") else []
    if not path or not path[0]:
        raise InvalidArgumentError(
            f"online store URL {redact_url(url)!r} names no service; {_SENTINEL_FORM}"
        )
    if len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise InvalidArgumentError(
            f"online store URL {redact_url(url)!r} has path {parts.path!r} where SERVICE[/DB] "
            f"was expected (DB a number); {_SENTINEL_FORM}"
        )
    if parts.query:
        raise InvalidArgumentError(
            f"online store URL {redact_url(url)!r} takes no query options; {_SENTINEL_FORM}"
        )
    options: dict[str, Any] = {"db": int(path[1]) if len(path) == 2 else 0}
    if userinfo:
        user, sep, password = userinfo.partition(":")
        options["username"] = unquote(user) or None
        options["password"] = unquote(password) if sep else None
    return sentinels, path[0], options


class RedisSentinelBackend(RedisBackend):
    """The master of a Redis Sentinel service, through redis-py's ``Sentinel.master_for``: the
    client is a normal redis client whose connections ask the sentinels where the master is
    before connecting, so the row format, the pipelined MGETs and the Lua upsert are those of
    ``redis://``. Every socket operation (a sentinel query, the master's connect and reads) is
    bounded by ``timeout_s`` with no retries. While the master is down and not yet replaced, a
    batch fails within that time (the sentinels name the dead master, or none while it is
    flagged down): the plan raises UnavailableError or serves counted defaults. Once a replica
    is promoted, the next connection is made to it; a connection still open to a demoted
    master is dropped on its first read-only refusal."""

    def __init__(self, url: str, timeout_s: float = 0.05, namespace: str = "aiarch") -> None:
        from redis.backoff import NoBackoff
        from redis.retry import Retry
        from redis.sentinel import Sentinel

        if not timeout_s > 0:
            raise InvalidArgumentError(f"timeout_s must be > 0, got {timeout_s}")
        self.url = url
        self.timeout_s = timeout_s
        self.namespace = namespace
        self._sentinels, self.service, options = _sentinel_target(url)
        timeouts = {"socket_timeout": timeout_s, "socket_connect_timeout": timeout_s}
        self._sentinel_kwargs: dict[str, Any] = dict(timeouts)
        self._kwargs = {**timeouts, "health_check_interval": 0, **options}
        self._sentinel = Sentinel(self._sentinels, sentinel_kwargs=self._sentinel_kwargs)
        self.client = self._sentinel.master_for(
            self.service, retry=Retry(NoBackoff(), 0), **self._kwargs
        )
        self._upsert = self.client.register_script(_UPSERT_LUA)
        self._async: dict[asyncio.AbstractEventLoop, Any] = {}
        self._async_sentinels: dict[asyncio.AbstractEventLoop, Any] = {}
        self._lock = threading.Lock()

    def _aclient(self) -> Any:
        from redis.asyncio.retry import Retry
        from redis.asyncio.sentinel import Sentinel
        from redis.backoff import NoBackoff

        loop = asyncio.get_running_loop()

        def make() -> Any:
            sentinel = Sentinel(self._sentinels, sentinel_kwargs=self._sentinel_kwargs)
            self._async_sentinels[loop] = sentinel
            return sentinel.master_for(self.service, retry=Retry(NoBackoff(), 0), **self._kwargs)

        return self._client_of_loop(make)

    def _forget_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        del self._async[loop]
        self._async_sentinels.pop(loop, None)

    async def aclose(self) -> None:
        """Close the asyncio client of the running loop and its sentinel connections."""
        loop = asyncio.get_running_loop()
        c = self._async.pop(loop, None)
        if c is not None:
            await c.aclose()
        sentinel = self._async_sentinels.pop(loop, None)
        if sentinel is not None:
            await sentinel.aclose()

    def close(self) -> None:
        self.client.close()
        self._sentinel.close()


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
    elif url.startswith(("redis+cluster://", "rediss+cluster://")):
        return RedisClusterBackend(url, timeout_s=timeout_s)
    elif url.startswith("redis+sentinel://"):
        return RedisSentinelBackend(url, timeout_s=timeout_s)
    else:
        raise InvalidArgumentError(
            f"unknown online store URL {redact_url(url)!r}; expected memory://[NAME], native://PATH, "
            "redis://HOST:PORT/DB, redis+cluster://HOST:PORT,HOST:PORT,... or "
            "redis+sentinel://HOST:PORT[,HOST:PORT...]/SERVICE[/DB]"
        )
    with _SHARED_LOCK:
        b = _SHARED.get(key)
        if b is None:
            b = _SHARED[key] = NativeBackend(key, path)
    return b
