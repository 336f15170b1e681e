"""Registration of a trained model with lineage (export: `aiarch.backends.export`).

The ``.pt2`` file is the served artifact and the one registered; the ONNX file is written
next to it (``<run dir>/export/<name>/model.onnx``) for ONNX Runtime and quantization, and
its path and sha256 are recorded in the version's lineage. Both are exported on CPU from
an eval-mode copy, with a dynamic batch dimension, so they run on any device and batch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from aiarch.backends.export import ExportedModel, export_model

if TYPE_CHECKING:
    import torch

    from .worker import TrainContext

__all__ = ["ExportedModel", "export_model", "hash_data", "register_model"]


def hash_data(data: Any) -> str:
    """sha256 over an array's dtype, shape and bytes (tensors are read on CPU)."""
    import numpy as np

    if hasattr(data, "detach"):
        data = data.detach().cpu().numpy()
    arr = np.ascontiguousarray(np.asarray(data))
    h = hashlib.sha256()
    h.update(f"{arr.dtype.str}{arr.shape}".encode())
    h.update(arr.tobytes())
    return h.hexdigest()


def _reference_profile(reference_data: Any, feature_names: Sequence[str] | None) -> Any:
    import numpy as np

    if hasattr(reference_data, "detach"):
        reference_data = reference_data.detach().cpu().numpy()
    arr = np.asarray(reference_data)
    if arr.ndim != 2:
        raise ValueError(
            f"reference_data has shape {arr.shape}: expected a 2-D array (rows x features)"
        )
    names = (
        list(feature_names) if feature_names is not None else [f"f{i}" for i in range(arr.shape[1])]
    )
    if len(names) != arr.shape[1]:
        raise ValueError(
            f"feature_names has {len(names)} names but reference_data has {arr.shape[1]} columns"
        )
    from aiarch.monitor import Profile

    return Profile.build(arr, names)


def _version_info(version: Any) -> dict[str, Any]:
    return {k: getattr(version, k, None) for k in ("name", "version", "digest", "uri")}


def register_model(
    ctx: TrainContext,
    name: str,
    model: torch.nn.Module,
    *,
    example_input: Any,
    metrics: Mapping[str, float] | None = None,
    reference_data: Any = None,
    feature_names: Sequence[str] | None = None,
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, str] | None = None,
    data_hash: Any = None,
    registry: str | None = None,
    onnx: bool = True,
) -> Any:
    """Exports and registers one version; runs on the main rank only (see TrainContext.register)."""
    import torch

    from aiarch.registry import Registry

    reg = Registry(url=registry)
    previous = ctx.run_dir.registered().get(name)
    if previous is not None:
        # This run registered `name` before a restart: one job, one version.
        return reg.get(name, version=previous["version"])

    exported = export_model(model, example_input, ctx.run_dir.export_dir(name), onnx=onnx)
    profile = (
        _reference_profile(reference_data, feature_names) if reference_data is not None else None
    )
    lineage: dict[str, Any] = {
        "run_id": ctx.run_id,
        "world_size": ctx.world_size,
        "restart_count": ctx.restart_count,
        "backend": ctx.backend,
        "device": str(ctx.device),
        "torch": torch.__version__,
        "run_dir": str(ctx.run_dir.path),
        "script": str(ctx.script_path or ""),
        "script_sha256": ctx.script_sha256(),
        "data_sha256": (
            None
            if data_hash is None
            else data_hash
            if isinstance(data_hash, str)
            else hash_data(data_hash)
        ),
        "artifacts": {
            "pt2": {"path": str(exported.pt2), "sha256": exported.sha256[exported.pt2.name]},
            **(
                {
                    "onnx": {
                        "path": str(exported.onnx),
                        "sha256": exported.sha256[exported.onnx.name],
                    }
                }
                if exported.onnx is not None
                else {}
            ),
        },
    }
    version = reg.register(
        name,
        str(exported.pt2),
        format="torch_export",
        signature=exported.signature,
        metrics={k: float(v) for k, v in (metrics or {}).items()},
        params=dict(params or {}),
        tags={"run_id": ctx.run_id, **dict(tags or {})},
        lineage=lineage,
        reference=profile,
    )
    ctx.run_dir.record_registered(
        name,
        {
            **_version_info(version),
            "pt2": str(exported.pt2),
            "onnx": str(exported.onnx) if exported.onnx else None,
        },
    )
    return version
