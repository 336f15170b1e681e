"""Distributed training on torch.distributed, from a script to a registered model.

``aiarch train script.py --nproc N`` (or `launch`) runs a script under torch's elastic
launcher; inside it, `context()` gives the rank, device, DDP/loader helpers, atomic
checkpoints, per-epoch progress and `register` (one model version per job).

Names are imported on first use, so ``import aiarch.train`` does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .checkpoint import CheckpointCorruptError, CheckpointStore, LoadedCheckpoint
    from .export import ExportedModel, export_model, hash_data
    from .launcher import TrainingError, TrainResult, launch
    from .pipeline import Pipeline, PipelineResult
    from .rundir import RunDir
    from .worker import Epoch, EpochLoader, TrainContext, context

__all__ = [
    "CheckpointCorruptError",
    "CheckpointStore",
    "Epoch",
    "EpochLoader",
    "ExportedModel",
    "LoadedCheckpoint",
    "Pipeline",
    "PipelineResult",
    "RunDir",
    "TrainContext",
    "TrainResult",
    "TrainingError",
    "context",
    "export_model",
    "hash_data",
    "launch",
]

_WHERE = {
    "CheckpointCorruptError": "checkpoint",
    "CheckpointStore": "checkpoint",
    "LoadedCheckpoint": "checkpoint",
    "Epoch": "worker",
    "EpochLoader": "worker",
    "TrainContext": "worker",
    "context": "worker",
    "ExportedModel": "export",
    "export_model": "export",
    "hash_data": "export",
    "TrainResult": "launcher",
    "TrainingError": "launcher",
    "launch": "launcher",
    "Pipeline": "pipeline",
    "PipelineResult": "pipeline",
    "RunDir": "rundir",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'aiarch.train' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
