"""Configuration of `aiarch serve`: server, HTTP limits and per-model settings.

Every field has a default and a docstring (the attribute docstring right below it). The CLI builds a
`ServeConfig` from flags and an optional TOML/JSON file; embedders construct it directly.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiarch.backends.base import COMPILE_MODES

__all__ = [
    "HttpLimits",
    "ModelConfig",
    "ServeConfig",
    "is_loopback_address",
    "load_config_file",
    "validate_model_name",
]

_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}")


def validate_model_name(name: str) -> str:
    """Return `name` if it is a safe model name, else raise ValueError.

    Names may appear in file paths (model repositories, registry artifacts), so they are restricted
    to letters, digits, `_`, `.`, `-`, must start with a letter or digit and may not contain `..`.
    """
    if not _MODEL_NAME.fullmatch(name) or ".." in name:
        raise ValueError(
            f"invalid model name {name!r}: use 1-128 of [A-Za-z0-9_.-], starting with a letter "
            "or digit, without '..'"
        )
    return name


@dataclass
class HttpLimits:
    """Per-connection limits of the HTTP/1.1 front end."""

    max_body_bytes: int = 64 << 20
    """Largest accepted request body (after decompression); larger bodies get 413."""

    max_header_bytes: int = 16 << 10
    """Largest request line + header block; larger gets 431 and the connection closes."""

    max_headers: int = 100
    """Most header fields per request; more gets 431 and the connection closes."""

    max_pipelined: int = 64
    """Requests of one connection in flight at once; reading pauses beyond this (back-pressure)."""

    idle_timeout_s: float = 75.0
    """Keep-alive connections idle this long are closed (checked every few seconds)."""

    header_timeout_s: float = 10.0
    """A request line and header block must arrive within this many seconds of the request's
    first byte; a client that is slower gets 408 and the connection closes (slow-header
    clients cannot hold connections open)."""

    body_timeout_s: float = 60.0
    """A request body must arrive within this many seconds of the end of its headers; a client
    that is slower gets 408 and the connection closes."""

    max_connections: int = 10_000
    """Open connections per worker; a connection beyond it gets 503 and is closed at once."""

    max_connections_per_ip: int = 1_000
    """Open connections per client address per worker; beyond it, 503 and closed at once."""

    compress_min_bytes: int = 1024
    """Infer responses at least this large are compressed when the client sends Accept-Encoding."""


@dataclass
class ModelConfig:
    """One model the server loads: where it comes from and how the runtime batches and caches it."""

    name: str = ""
    """Model name used in URLs (`/v2/models/{name}`); validated by `validate_model_name`."""

    source: str = ""
    """Where the model comes from, e.g. `package.module:attr` or `path/to/file.py:attr`
    (see `aiarch.serving.loader` for the accepted forms)."""

    version: str = "1"
    """Version string reported in metadata and accepted in `/versions/{n}` paths."""

    batching: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments for `aiarch.BatchConfig` (max_batch_size, max_delay_us,
    preferred_batch_sizes, max_queue_rows, instances, priority_levels, default_priority_level,
    drop_unreachable, inline_execution, inline_max_exec_us); unset keys keep the runtime
    defaults."""

    cache: dict[str, Any] | None = None
    """Keyword arguments for `aiarch.CacheConfig` (max_bytes, ttl_s), or None for no cache."""

    warmup: bool = True
    """Run one zero batch at load so the model is warm before readiness turns true."""

    device: str | None = None
    """For model files: "cpu" (default) or "cuda[:N]"."""

    precision: str | None = None
    """For model files: "fp16", "bf16", "fp8" (torch on CUDA) or a TensorRT precision."""

    backend: str | None = None
    """For ONNX files: "tensorrt" builds a TensorRT engine instead of using ONNX Runtime."""

    compile: str | None = None
    """For torch.export (.pt2) files: a ``torch.compile`` mode ("default", "reduce-overhead",
    "max-autotune"), compiled per batch-size bucket before the model is ready; other formats
    run as loaded (with a warning)."""

    backend_options: dict[str, Any] = field(default_factory=dict)
    """Further `aiarch.backends.BackendOptions` fields (threads, cuda_graphs, extra...)."""

    features: dict[str, Any] | None = None
    """Feature inputs looked up per batch from an online store (see `aiarch.serving.features`:
    store, lookups, entity_input, on_missing, on_unavailable, timeout_ms, home), or None."""

    monitor: dict[str, Any] | None = None
    """Latency/drift monitor table: `reference` (a profile file from `Profile.to_bytes`) plus
    `aiarch.monitor.MonitorConfig` keys (window_s, alerts, webhook_url, prediction_log, drift),
    and an optional `feedback` table (`aiarch.monitor.FeedbackConfig`: label feedback and
    online quality; allowed alone, without `reference`); None = not monitored."""


@dataclass
class ServeConfig:
    """Everything `aiarch serve` needs to run."""

    host: str = "127.0.0.1"
    """Address to bind. Loopback by default; binding elsewhere requires an auth token for
    repository load/unload."""

    port: int = 8000
    """TCP port (0 picks a free one)."""

    grpc_port: int | None = None
    """TCP port of the KServe v2 gRPC service on the same host (None = no gRPC; 0 picks a free
    one, single worker only)."""

    workers: int = 1
    """Processes accepting on one listening socket the supervisor binds; each has its own
    Runtime and models."""

    models: list[ModelConfig] = field(default_factory=list)
    """Models to load at start-up, in order."""

    auth_token: str | None = None
    """Bearer token required for repository calls (env AIARCH_AUTH_TOKEN). Without it,
    unloading and reloading the configured models is allowed only when the server is bound to a
    loopback address, and never from a browser page (a request carrying `Origin`)."""

    allow_repository_load: bool = False
    """Let clients load models from a config they send (`POST /v2/repository/models/NAME/load`
    with `parameters.config`), including Python sources (`module:attr`, `file.py:attr`): that
    runs client-chosen code in the server. Requires `auth_token`. With `model_roots` set, file
    paths stay confined to them."""

    model_roots: list[str] = field(default_factory=list)
    """Folders from which clients may load model files (`.onnx`, `.pt2`, `.pt`, `.engine`) with
    a config they send; every file a client config names (source, monitor profiles, prediction
    log) must resolve inside one of them. Setting any requires `auth_token`. Relative paths in a
    client config are taken relative to the first root."""

    request_timeout_s: float | None = None
    """Default per-request deadline when the request carries none (None = no deadline)."""

    drain_timeout_s: float = 30.0
    """On SIGTERM/SIGINT, how long in-flight requests may take before connections are closed."""

    backlog: int = 2048
    """listen() backlog."""

    limits: HttpLimits = field(default_factory=HttpLimits)
    """HTTP limits (body size, header size and count, pipelining, idle timeout)."""

    runtime_factory: str = "aiarch:Runtime"
    """`module:attr` (or `file.py:attr`) of a zero-argument callable returning the Runtime;
    it is resolved inside every worker process."""

    log_level: str = "info"
    """Logging level of the server (`debug`, `info`, `warning`, `error`)."""

    registry: str | None = None
    """Model registry URL for registry-served models (`--model fraud@production`); None =
    `$AIARCH_REGISTRY`, else SQLite under `$AIARCH_HOME`."""

    artifacts: str | None = None
    """Where registry artifacts live: `s3://BUCKET/PREFIX` for a bucket shared by every replica
    (cached under `$AIARCH_HOME`); None = `$AIARCH_ARTIFACTS`, else files under `$AIARCH_HOME`."""

    routes: dict[str, str] = field(default_factory=dict)
    """Canary splits by model name, e.g. {"fraud": "production:90,staging:10"} (aliases or
    version numbers with weights); see `aiarch.serving.routing`."""

    shadows: dict[str, str] = field(default_factory=dict)
    """Shadow traffic by model name, e.g. {"fraud": "fraud@staging:0.1"} (mirrored fraction,
    default 0.1); responses never depend on the shadow."""

    http: str = "native"
    """HTTP front end: "native" (requests parsed and v2 infer answered in C++; everything else
    handed to Python) or "python" (httptools; every request in Python)."""

    trace_sample: float | None = None
    """Fraction of requests traced with OpenTelemetry (0.01 = one in a hundred), plus every
    request whose W3C `traceparent` asks for sampling; 0 = off. None = `$AIARCH_TRACE_SAMPLE`,
    else off. See :mod:`aiarch.tracing` for where spans go."""

    registry_poll_s: float = 1.0
    """How often registry aliases are checked for a move (then the new version is loaded,
    warmed and switched to without dropping requests)."""

    @property
    def loopback(self) -> bool:
        """True when `host` binds a loopback address: an IP literal is checked as is, a name is
        resolved as the server resolves it to bind. The running server decides from the address
        its socket is bound to (`is_loopback_address`)."""
        try:
            infos = socket.getaddrinfo(
                self.host, None, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )
        except OSError:
            return False
        return bool(infos) and is_loopback_address(str(infos[0][4][0]))

    @property
    def repository_load_enabled(self) -> bool:
        """True when clients may load models from configs they send."""
        return self.allow_repository_load or bool(self.model_roots)

    def resolved_auth_token(self) -> str | None:
        """The configured token, else the AIARCH_AUTH_TOKEN environment variable, else None."""
        return self.auth_token or os.environ.get("AIARCH_AUTH_TOKEN") or None

    def resolved_trace_sample(self) -> float:
        """`trace_sample`, else the AIARCH_TRACE_SAMPLE environment variable, else 0."""
        if self.trace_sample is not None:
            return self.trace_sample
        raw = os.environ.get("AIARCH_TRACE_SAMPLE", "").strip()
        try:
            return float(raw) if raw else 0.0
        except ValueError:
            raise ValueError(
                f"AIARCH_TRACE_SAMPLE must be a fraction in [0, 1], got {raw!r}"
            ) from None

    def validate(self) -> None:
        """Raise ValueError naming the first inconsistent setting. Called before serving."""
        rate = self.resolved_trace_sample()
        if not 0 <= rate <= 1:
            raise ValueError(f"trace_sample must be a fraction in [0, 1], got {rate}")
        if self.grpc_port is not None and not 0 <= self.grpc_port <= 65535:
            raise ValueError(f"grpc_port must be a TCP port (0-65535), got {self.grpc_port}")
        if self.grpc_port == 0 and self.workers > 1:
            raise ValueError("--grpc-port 0 picks a port per process: give one with --workers")
        if self.repository_load_enabled and self.resolved_auth_token() is None:
            raise ValueError(
                "--allow-repository-load and --model-root let clients load models: they need "
                "--auth-token (or AIARCH_AUTH_TOKEN)"
            )
        for root in self.model_roots:
            if not os.path.isdir(root):
                raise ValueError(f"model root {root!r} is not a folder")
        limits = self.limits
        for name in ("header_timeout_s", "body_timeout_s", "idle_timeout_s"):
            if not getattr(limits, name) > 0:
                raise ValueError(f"limits.{name} must be positive, got {getattr(limits, name)}")
        for name in ("max_connections", "max_connections_per_ip"):
            if getattr(limits, name) < 1:
                raise ValueError(f"limits.{name} must be at least 1, got {getattr(limits, name)}")


def is_loopback_address(address: str) -> bool:
    """True when `address` (an IP literal, as a socket reports it) is a loopback address;
    names are never trusted by their spelling (`127.example.com` is not loopback)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback


_BATCH_KEYS = {
    "max_batch_size",
    "max_delay_us",
    "preferred_batch_sizes",
    "max_queue_rows",
    "instances",
    "priority_levels",
    "default_priority_level",
    "drop_unreachable",
    "inline_execution",
    "inline_max_exec_us",
}
_CACHE_KEYS = {"max_bytes", "ttl_s"}


def _model_from_table(name: str, table: Any, base_dir: Path) -> ModelConfig:
    if isinstance(table, str):
        table = {"source": table}
    if not isinstance(table, dict):
        raise ValueError(f"model {name!r}: expected a table or a source string")
    unknown = set(table) - {
        "source",
        "version",
        "batching",
        "cache",
        "warmup",
        "device",
        "precision",
        "backend",
        "compile",
        "backend_options",
        "features",
        "monitor",
    }
    if unknown:
        raise ValueError(f"model {name!r}: unknown keys {sorted(unknown)}")
    batching = dict(table.get("batching") or {})
    bad = set(batching) - _BATCH_KEYS
    if bad:
        raise ValueError(f"model {name!r}: unknown batching keys {sorted(bad)}")
    if "preferred_batch_sizes" in batching:
        batching["preferred_batch_sizes"] = tuple(batching["preferred_batch_sizes"])
    cache = table.get("cache")
    if cache is not None:
        if cache is False:
            cache = None
        elif cache is True:
            cache = {}
        else:
            cache = dict(cache)
            bad = set(cache) - _CACHE_KEYS
            if bad:
                raise ValueError(f"model {name!r}: unknown cache keys {sorted(bad)}")
    source = str(table.get("source", ""))
    # A relative file source is relative to the config file, not the working directory.
    path_part = source.rsplit(":", 1)[0]
    if path_part.endswith(".py") and not os.path.isabs(path_part):
        source = str(base_dir / path_part) + source[len(path_part) :]
    elif _is_model_path(source) and not os.path.isabs(source):
        source = str(base_dir / source)
    optional = {k: table.get(k) for k in ("device", "precision", "backend", "compile")}
    for key, value in optional.items():
        if value is not None and not isinstance(value, str):
            raise ValueError(f"model {name!r}: {key} must be a string, got {value!r}")
    if optional["compile"] is not None and optional["compile"] not in COMPILE_MODES:
        raise ValueError(
            f"model {name!r}: compile must be one of {list(COMPILE_MODES)}, "
            f"got {optional['compile']!r}"
        )
    return ModelConfig(
        name=validate_model_name(name),
        source=source,
        version=str(table.get("version", "1")),
        batching=batching,
        cache=cache,
        warmup=bool(table.get("warmup", True)),
        device=optional["device"],
        precision=optional["precision"],
        backend=optional["backend"],
        compile=optional["compile"],
        backend_options=dict(table.get("backend_options") or {}),
        features=dict(table["features"]) if table.get("features") is not None else None,
        monitor=_monitor_table(table.get("monitor"), base_dir),
    )


def _is_model_path(source: str) -> bool:
    from aiarch.backends import is_model_file

    return is_model_file(source)


def _monitor_table(table: Any, base_dir: Path) -> dict[str, Any] | None:
    if table is None:
        return None
    if not isinstance(table, dict) or ("reference" not in table and set(table) != {"feedback"}):
        raise ValueError(
            "monitor: expected a table with a 'reference' profile file (or only a 'feedback' "
            "table, for label feedback without drift monitoring)"
        )
    out = dict(table)
    feedback = out.get("feedback")
    if feedback is not None:
        from aiarch.monitor.feedback import FeedbackConfig

        if not isinstance(feedback, dict):
            raise ValueError("monitor.feedback: expected a table of FeedbackConfig keys")
        feedback = dict(feedback)
        log_dir = feedback.get("label_log")
        if log_dir and not os.path.isabs(str(log_dir)):
            feedback["label_log"] = str(base_dir / str(log_dir))
        FeedbackConfig.from_dict(feedback)  # refuse unknown keys and metrics at load time
        out["feedback"] = feedback
    for key in ("reference", "output_reference"):
        if key in out and not os.path.isabs(str(out[key])):
            out[key] = str(base_dir / str(out[key]))
    return out


def load_config_file(path: str | os.PathLike[str]) -> tuple[dict[str, Any], list[ModelConfig]]:
    """Read a TOML (`.toml`) or JSON config file.

    Layout (TOML shown; JSON is the same tree)::

        [server]            # optional: any ServeConfig field given as a flag (host, port, ...)
        port = 8000
        [models.mlp]
        source = "mypkg.models:mlp"
        version = "1"
        batching = { max_batch_size = 64, instances = 2 }
        cache = { max_bytes = 67108864, ttl_s = 30.0 }

    Returns (server overrides, models).
    """
    p = Path(path)
    raw = p.read_bytes()
    if p.suffix == ".toml":
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10
            import tomli as tomllib  # type: ignore[no-redef]
        tree = tomllib.loads(raw.decode())
    else:
        tree = json.loads(raw)
    if not isinstance(tree, dict):
        raise ValueError(f"{path}: top level must be a table/object")
    server = dict(tree.get("server") or {})
    known = {f.name for f in dataclasses.fields(ServeConfig)} - {"models"}
    bad = set(server) - known
    if bad:
        raise ValueError(f"{path}: unknown [server] keys {sorted(bad)}")
    if "limits" in server:
        table = server["limits"]
        fields = {f.name for f in dataclasses.fields(HttpLimits)}
        if not isinstance(table, dict) or set(table) - fields:
            raise ValueError(f"{path}: [server.limits] takes the keys {sorted(fields)}")
        server["limits"] = HttpLimits(**table)
    if "model_roots" in server:
        roots = server["model_roots"]
        if not isinstance(roots, list) or not all(isinstance(r, str) for r in roots):
            raise ValueError(f"{path}: model_roots must be a list of folder paths")
        server["model_roots"] = [str(p.parent / r) for r in roots]
    models = [
        _model_from_table(name, table, p.parent)
        for name, table in (tree.get("models") or {}).items()
    ]
    return server, models
