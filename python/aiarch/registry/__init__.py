"""The model registry: versions, content-addressed artifacts, aliases with history and
rollback, search; SQLite by default, PostgreSQL for many machines; artifacts on local disk or
in an S3-compatible bucket.

    from aiarch.registry import Registry
    reg = Registry()
    mv = reg.register("fraud", "model.py:predict", metrics={"auc": 0.93})
    reg.promote("fraud", mv.version, to="production")
"""

from __future__ import annotations

from .errors import (
    ConflictError,
    GateFailedError,
    IntegrityError,
    ModelNotFoundError,
    RegistryError,
)
from .objectstore import StorageUnavailableError
from .registry import (
    AliasChange,
    AliasWatch,
    ModelSummary,
    ModelVersion,
    Registry,
    SearchPage,
)
from .uris import ModelRef, is_registry_ref, parse_ref

__all__ = [
    "AliasChange",
    "AliasWatch",
    "ConflictError",
    "GateFailedError",
    "IntegrityError",
    "ModelNotFoundError",
    "ModelRef",
    "ModelSummary",
    "ModelVersion",
    "Registry",
    "RegistryError",
    "SearchPage",
    "StorageUnavailableError",
    "is_registry_ref",
    "parse_ref",
]
