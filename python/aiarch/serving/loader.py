"""Where models come from: `--model name=SOURCE` and config files → objects for `Runtime.add_model`.

A source is resolved by the first registered `SourceResolver` that accepts it. Built in:

- `package.module:attr` — import a module, take `attr` (dotted attributes allowed);
- `path/to/file.py:attr` — load a Python file by path, take `attr`;
- `path/to/model.onnx|.pt2|.pt|.engine` (or a folder holding `model.*`) — a model file, run by
  the backend its format selects (`aiarch.backends`), with the ModelConfig's device/precision.

`attr` is a callable `fn(*batch_inputs) -> array | tuple[array, ...]` called once per batch,
optionally with `.inputs` / `.outputs` (lists of TensorSpec). A trailing `()` (`module:make()`)
calls a zero-argument factory first. Other sources (registry references such as `name@alias`)
are added by registering resolvers with `register_resolver`.

A config sent by a client (repository load over HTTP) is trusted less than the operator's:
`confine_client_config` admits only model files inside the configured model roots unless the
operator allowed arbitrary sources, and keeps every path it names inside those roots.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import logging
import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiarch.redact import redact_url

from .config import ModelConfig, _model_from_table, validate_model_name

__all__ = [
    "ClientConfigError",
    "ModelRepository",
    "SourceError",
    "SourceResolver",
    "confine_client_config",
    "parse_model_arg",
    "register_resolver",
    "resolve_object",
    "resolve_source",
]

log = logging.getLogger("aiarch.serving")


@dataclass
class SourceResolver:
    """Turns a source string into a model object for `Runtime.add_model`."""

    name: str = ""
    """Short name shown in errors (e.g. "python", "onnx")."""

    accepts: Callable[[str], bool] = lambda source: False
    """True if this resolver handles `source`. Called once per load."""

    load: Callable[[str], Any] = lambda source: None
    """Return the model object (a callable, possibly with .inputs/.outputs). Called once per
    load, in a worker thread; may be slow (imports, file reads)."""


_RESOLVERS: list[SourceResolver] = []


def register_resolver(resolver: SourceResolver, *, first: bool = True) -> None:
    """Add a resolver; `first` puts it ahead of the built-in Python ones."""
    if first:
        _RESOLVERS.insert(0, resolver)
    else:
        _RESOLVERS.append(resolver)


def _load_file_module(path: str) -> Any:
    p = Path(path).resolve()
    if not p.is_file():
        raise FileNotFoundError(f"no such model file: {path}")
    mod_name = f"_aiarch_model_{abs(hash(str(p))):x}"
    if mod_name in sys.modules:
        return sys.modules[mod_name]
    spec = importlib.util.spec_from_file_location(mod_name, p)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[mod_name]
        raise
    return module


def resolve_object(ref: str) -> Any:
    """Resolve `module:attr` or `file.py:attr` (attr may be dotted, may end in `()`)."""
    module_part, sep, attr = ref.rpartition(":")
    if not sep or not module_part or not attr:
        raise ValueError(f"expected 'module:attr' or 'file.py:attr', got {ref!r}")
    call = attr.endswith("()")
    if call:
        attr = attr[:-2]
    if module_part.endswith(".py"):
        obj = _load_file_module(module_part)
    else:
        obj = importlib.import_module(module_part)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj() if call else obj


def _is_python_ref(source: str) -> bool:
    module_part, sep, attr = source.rpartition(":")
    return bool(sep and module_part and attr) and "@" not in source


def _model_file(source: str) -> Path:
    # The Runtime loads the file itself, with the device/precision of the model's config.
    p = Path(source)
    if not p.exists():
        raise FileNotFoundError(f"no such model file: {source}")
    return p


def _is_model_file(source: str) -> bool:
    from aiarch.backends import is_model_file

    return not _is_python_ref(source) and is_model_file(source)


def _compile_for(name: str, path: Path, mode: str | None) -> str | None:
    """The compile mode for a model file: torch.compile applies to torch.export programs only,
    so a server-wide --compile leaves ONNX/TensorRT/TorchScript models as they are."""
    if mode is None:
        return None
    from aiarch.backends import detect_format

    fmt = detect_format(path)
    if fmt == "torch_export":
        return mode
    log.warning(
        "model %s: compile=%s applies to .pt2 models; this %s model runs as loaded", name, mode, fmt
    )
    return None


_RESOLVERS.append(SourceResolver("model file", _is_model_file, _model_file))
_RESOLVERS.append(SourceResolver("python", _is_python_ref, resolve_object))


def resolve_source(source: str) -> Any:
    """The model object for `source`, from the first resolver that accepts it."""
    for r in _RESOLVERS:
        if r.accepts(source):
            return r.load(source)
    kinds = ", ".join(r.name for r in _RESOLVERS)
    raise ValueError(f"no loader accepts model source {source!r} (known: {kinds})")


class ClientConfigError(ValueError):
    """A client-given model config asks for something the server's policy does not allow;
    `forbidden` tells a disabled capability (403) from a path outside the roots (400)."""

    def __init__(self, message: str, forbidden: bool = False):
        super().__init__(message)
        self.forbidden = forbidden


_MODEL_FILE_FORMS = "a model file (.onnx, .pt2, .pt, .engine, or a folder holding model.*)"
# Backend options a client may set in model-roots mode: none of them names a file.
_CLIENT_BACKEND_OPTIONS = frozenset(
    {"threads", "inter_op_threads", "batch_sizes", "max_batch_size", "cuda_graphs"}
)


def _inside_roots(path: str, roots: list[str], what: str) -> str:
    """The real path of `path` if it lies inside one of `roots` (symlinks resolved), else
    ClientConfigError. The message is the same whether or not the path exists."""
    real = os.path.realpath(path)
    for root in roots:
        real_root = os.path.realpath(root)
        if real == real_root or real.startswith(real_root.rstrip(os.sep) + os.sep):
            return real
    raise ClientConfigError(
        f"{what} {path!r} is not inside a model root; expected a path under "
        f"{', '.join(repr(r) for r in roots)}"
    )


def confine_client_config(
    cfg: ModelConfig, model_roots: list[str], allow_any_source: bool
) -> ModelConfig:
    """Check a model config sent by a client against the server's policy; returns it with its
    paths resolved. Raises ClientConfigError.

    - Without `allow_any_source`, the source must be a model file inside `model_roots`: no
      Python (`module:attr`, `file.py:attr`), no registry reference, no feature store, no alert
      webhook, and only backend options that name no file.
    - With `model_roots`, every path the config names (source file, monitor profiles,
      prediction log folder) must resolve inside a root, whatever `allow_any_source` says.
    """
    roots = list(model_roots)
    source = cfg.source
    python = _is_python_ref(source)
    registry = not python and ("@" in source or source.startswith("models:/"))
    if not allow_any_source:
        if python or registry:
            raise ClientConfigError(
                f"model source {source!r} is not allowed: a client may load only "
                f"{_MODEL_FILE_FORMS} inside a model root (Python and registry sources need "
                "--allow-repository-load)",
                forbidden=True,
            )
        if cfg.features is not None:
            raise ClientConfigError(
                "a client config may not set 'features' (needs --allow-repository-load)", True
            )
        if cfg.monitor is not None and cfg.monitor.get("webhook_url"):
            raise ClientConfigError(
                "a client config may not set monitor.webhook_url (needs --allow-repository-load)",
                True,
            )
        extra = set(cfg.backend_options) - _CLIENT_BACKEND_OPTIONS
        if extra:
            raise ClientConfigError(
                f"backend_options {sorted(extra)} are not allowed in a client config; "
                f"expected only {sorted(_CLIENT_BACKEND_OPTIONS)}"
            )
    if roots:
        if python:
            module_part = source.rpartition(":")[0]
            if module_part.endswith(".py"):
                real = _inside_roots(module_part, roots, "model source")
                source = real + source[len(module_part) :]
        elif not registry:
            source = _inside_roots(source, roots, "model source")
    # Checked only once the path is known to be inside a root, so nothing outside the roots
    # can be probed for existence.
    if not allow_any_source and not _is_model_file(source):
        raise ClientConfigError(f"model source {cfg.source!r} is not {_MODEL_FILE_FORMS}")
    if not roots:
        return dataclasses.replace(cfg, source=source)
    monitor = cfg.monitor
    if monitor is not None:
        monitor = dict(monitor)
        for key in ("reference", "output_reference"):
            if key in monitor:
                monitor[key] = _inside_roots(str(monitor[key]), roots, f"monitor.{key}")
        log_cfg = monitor.get("prediction_log")
        if isinstance(log_cfg, dict) and "directory" in log_cfg:
            log_cfg = dict(log_cfg)
            log_cfg["directory"] = _inside_roots(
                str(log_cfg["directory"]), roots, "monitor.prediction_log.directory"
            )
            monitor["prediction_log"] = log_cfg
    features = cfg.features
    if features is not None and features.get("home") is not None:
        features = {
            **features,
            "home": _inside_roots(str(features["home"]), roots, "features.home"),
        }
    return dataclasses.replace(cfg, source=source, monitor=monitor, features=features)


def parse_model_arg(arg: str) -> ModelConfig:
    """Parse `--model name=SOURCE`, or a bare registry reference (`fraud@production`,
    `models:/fraud/3`), served under the registry's model name."""
    name, sep, source = arg.partition("=")
    if (not sep and "@" in arg) or arg.startswith("models:/"):
        from aiarch.registry.uris import parse_ref

        try:
            return ModelConfig(name=validate_model_name(parse_ref(arg).name), source=arg)
        except ValueError as e:
            raise ValueError(f"--model {arg!r}: {e}") from None
    if not sep or not source:
        raise ValueError(
            f"--model expects NAME=SOURCE or a registry reference NAME@ALIAS, got {arg!r}"
        )
    return ModelConfig(name=validate_model_name(name.strip()), source=source.strip())


class SourceError(ValueError):
    """A model's source could not be turned into a model. The message is the same whatever the
    cause (a missing file, a failed import): the cause is kept as `__cause__` for the log."""

    def __init__(self, name: str, source: str):
        super().__init__(
            f"cannot load model '{name}' from source {redact_url(source)!r}: expected {_MODEL_FILE_FORMS} "
            "or a Python reference 'module:attr' / 'file.py:attr' that can be loaded"
        )


def feedback_tracker(runtime: Any, name: str, table: dict[str, Any] | None) -> Any:
    """The feedback tracker of public model `name` for a `monitor.feedback` table (created on
    first use, kept across versions), or None without the table."""
    if table is None:
        return None
    from aiarch.monitor.feedback import FeedbackConfig

    return runtime.enable_feedback(name, FeedbackConfig.from_dict(table))


def _runtime_configs(cfg: ModelConfig) -> tuple[Any, Any]:
    """aiarch.BatchConfig / CacheConfig from the plain dicts of a ModelConfig."""
    import aiarch

    batching = aiarch.BatchConfig(**cfg.batching) if cfg.batching else None
    cache = aiarch.CacheConfig(**cfg.cache) if cfg.cache is not None else None
    return batching, cache


def _check_declared_outputs(name: str, model: Any, cfg: ModelConfig) -> None:
    """A served callable must make its outputs known before the first request: the metadata
    endpoints describe them. Declared inputs with warm-up on derive them from one zero-row call;
    with warm-up off nothing would, so the load is refused."""
    if isinstance(model, Path) or cfg.warmup or cfg.features is not None:
        return
    if getattr(model, "inputs", None) and not getattr(model, "outputs", None):
        raise ValueError(
            f"model {name!r} declares .inputs but not .outputs and warmup is off: declare "
            ".outputs (a list of TensorSpec) or enable warmup so that one zero-row call "
            "derives them"
        )


class ModelRepository:
    """The models a server knows (by name → ModelConfig) and their loading into the Runtime.

    `load`/`unload` block (imports, warm-up, draining) and are called from worker threads;
    they are serialized by a lock. Thread-safe.
    """

    def __init__(
        self,
        runtime: Any,
        models: list[ModelConfig],
        make_configs: Callable[[ModelConfig], tuple[Any, Any]] = _runtime_configs,
    ):
        self.runtime = runtime
        self._known: dict[str, ModelConfig] = {m.name: m for m in models}
        self._lock = threading.Lock()
        self._make_configs = make_configs

    def known(self) -> list[str]:
        """Names of every model this repository can load."""
        return list(self._known)

    def source_of(self, name: str) -> str:
        """The source string of a known model, or ""."""
        cfg = self._known.get(name)
        return cfg.source if cfg else ""

    def config_from_tree(self, name: str, tree: Any, base_dir: str | None = None) -> ModelConfig:
        """A ModelConfig from a JSON/TOML table (as in the config file's `[models.NAME]`);
        relative paths are taken relative to `base_dir` (default: the working directory)."""
        return _model_from_table(name, tree, Path(base_dir) if base_dir else Path.cwd())

    def load(self, name: str, cfg: ModelConfig | None = None) -> None:
        """Load (or reload) `name`, from `cfg` or the config it was registered with."""
        with self._lock:
            if cfg is None:
                cfg = self._known.get(name)
                if cfg is None:
                    from .errors import HttpError

                    raise HttpError(404, f"no source is known for model '{name}'")
            try:
                model = resolve_source(cfg.source)
            except Exception as e:
                raise SourceError(name, cfg.source) from e
            _check_declared_outputs(name, model, cfg)
            if cfg.features is not None:
                from .features import prepare

                cfg = dataclasses.replace(cfg, batching=dict(cfg.batching))
                model = prepare(name, model, cfg.features, cfg.batching, cfg.cache)
            batching, cache = self._make_configs(cfg)
            rt = self.runtime
            if name in rt.models():
                rt.remove_model(name, drain=True)
            kwargs: dict[str, Any] = {"version": cfg.version, "cache": cache, "warmup": cfg.warmup}
            if batching is not None:
                kwargs["batching"] = batching
            if isinstance(model, Path):
                kwargs.update(
                    device=cfg.device,
                    precision=cfg.precision,
                    backend=cfg.backend,
                    backend_options=cfg.backend_options,
                    compile=_compile_for(name, model, cfg.compile),
                )
            if cfg.monitor is not None:
                from aiarch.monitor import Monitor

                table = dict(cfg.monitor)
                feedback = feedback_tracker(rt, name, table.pop("feedback", None))
                if feedback is not None:
                    kwargs["feedback"] = feedback
                if "reference" in table:
                    kwargs["monitor"] = Monitor.from_config(table)
            rt.add_model(name, model, **kwargs)
            self._known[name] = cfg
            log.info(
                "loaded model %s (version %s) from %s", name, cfg.version, redact_url(cfg.source)
            )

    def unload(self, name: str) -> None:
        """Remove `name` from the runtime after draining its queue; it stays known."""
        with self._lock:
            self.runtime.remove_model(name, drain=True)
            log.info("unloaded model %s", name)
