"""Errors of the model registry; all are `aiarch.AiarchError`s."""

from __future__ import annotations

from aiarch.errors import AiarchError, InvalidArgumentError, NotFoundError

__all__ = [
    "ConflictError",
    "GateFailedError",
    "IntegrityError",
    "InvalidArgumentError",
    "ModelNotFoundError",
    "RegistryError",
]


class RegistryError(AiarchError):
    """Base class of registry failures that are not a bad argument or a missing model."""

    http_status = 500


class ModelNotFoundError(NotFoundError):
    """An unknown model, version or alias; the message names what exists."""


class ConflictError(RegistryError):
    """A compare-and-swap lost: the alias moved since it was read, or the version is in use."""

    http_status = 409


class IntegrityError(RegistryError):
    """An artifact's content no longer matches its recorded digest (tampered or damaged)."""

    http_status = 500


class GateFailedError(RegistryError):
    """A promotion gate (e.g. `metrics.auc >= 0.9`) did not hold for the version."""

    http_status = 412
