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
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import logging
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import ModelConfig, _model_from_table, validate_model_name

__all__ = [
    "ModelRepository",
    "SourceResolver",
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


_RESOLVERS.append(SourceResolver("model file", _is_model_file, _model_file))
_RESOLVERS.append(SourceResolver("python", _is_python_ref, resolve_object))


def resolve_source(source: str) -> Any:
    """The model object for `source`, from the first resolver that accepts it."""
    for r in _RESOLVERS:
        if r.accepts(source):
            return r.load(source)
    kinds = ", ".join(r.name for r in _RESOLVERS)
    raise ValueError(f"no loader accepts model source {source!r} (known: {kinds})")


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

    def config_from_tree(self, name: str, tree: Any) -> ModelConfig:
        """A ModelConfig from a JSON/TOML table (as in the config file's `[models.NAME]`)."""
        return _model_from_table(name, tree, Path.cwd())

    def load(self, name: str, cfg: ModelConfig | None = None) -> None:
        """Load (or reload) `name`, from `cfg` or the config it was registered with."""
        with self._lock:
            if cfg is None:
                cfg = self._known.get(name)
                if cfg is None:
                    from .errors import HttpError

                    raise HttpError(404, f"no source is known for model '{name}'")
            model = resolve_source(cfg.source)
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
                )
            if cfg.monitor is not None:
                from aiarch.monitor import Monitor

                kwargs["monitor"] = Monitor.from_config(cfg.monitor)
            rt.add_model(name, model, **kwargs)
            self._known[name] = cfg
            log.info("loaded model %s (version %s) from %s", name, cfg.version, cfg.source)

    def unload(self, name: str) -> None:
        """Remove `name` from the runtime after draining its queue; it stays known."""
        with self._lock:
            self.runtime.remove_model(name, drain=True)
            log.info("unloaded model %s", name)
