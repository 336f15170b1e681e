"""Model export (torch.export ``.pt2`` + ONNX) and registration with lineage.

The ``.pt2`` file is the served artifact and the one registered; the ONNX file is written
next to it (``<run dir>/export/<name>/model.onnx``) for ONNX Runtime and quantization, and
its path and sha256 are recorded in the version's lineage. Both are exported on CPU from
an eval-mode copy, with a dynamic batch dimension, so they run on any device and batch.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from .worker import TrainContext

__all__ = ["ExportedModel", "export_model", "hash_data", "register_model"]


@dataclass
class ExportedModel:
    """Files written by `export_model` and the signature they share."""

    pt2: Path
    onnx: Path | None
    signature: dict[str, Any]
    """``{"inputs": [{"name", "dtype", "shape"}], "outputs": [...]}``; batch dim is -1."""
    sha256: dict[str, str] = field(default_factory=dict)
    """sha256 of each written file, by file name."""


def _as_inputs(example_input: Any) -> tuple[torch.Tensor, ...]:
    import numpy as np
    import torch

    items = example_input if isinstance(example_input, (tuple, list)) else (example_input,)
    if not items:
        raise ValueError("example_input is empty: pass a tensor (or a tuple of tensors)")
    tensors = []
    for i, item in enumerate(items):
        if isinstance(item, np.ndarray):
            item = torch.from_numpy(np.ascontiguousarray(item))
        if not isinstance(item, torch.Tensor):
            raise TypeError(
                f"example_input[{i}] is {type(item).__name__}: expected a torch.Tensor or "
                "numpy array with a leading batch dimension"
            )
        if item.dim() < 1 or item.shape[0] < 1:
            raise ValueError(
                f"example_input[{i}] has shape {tuple(item.shape)}: expected a leading batch "
                "dimension with at least one row"
            )
        item = item.detach().cpu()
        # A batch of one would be specialised to a constant 1 by torch.export; two rows
        # keep the batch dimension symbolic.
        if item.shape[0] == 1:
            item = item.repeat(2, *([1] * (item.dim() - 1)))
        tensors.append(item)
    return tuple(tensors)


@contextlib.contextmanager
def _quiet_exporters() -> Iterator[None]:
    """Silences torch's exporter chatter (missing torchvision ops, internal deprecations)
    that says nothing about the model; errors still raise."""
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        registration.setLevel(level)


def _spec(name: str, t: torch.Tensor) -> dict[str, Any]:
    return {"name": name, "dtype": str(t.dtype).removeprefix("torch."), "shape": [-1, *t.shape[1:]]}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def export_model(
    model: torch.nn.Module, example_input: Any, out_dir: str | Path, *, onnx: bool = True
) -> ExportedModel:
    """Writes ``model.pt2`` (and ``model.onnx``) for `model` under `out_dir`.

    `model` may be wrapped in DistributedDataParallel. Inputs are named ``input`` (or
    ``input_0``, ``input_1``, … for several), outputs ``output`` (``output_0``, …).
    Checks that the exported program reproduces the eager outputs on `example_input`.
    """
    import torch

    inputs = _as_inputs(example_input)
    inner = (
        getattr(model, "module", model)
        if type(model).__name__ == "DistributedDataParallel"
        else model
    )
    module = copy.deepcopy(inner).to("cpu").eval()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    with torch.no_grad():
        eager = module(*inputs)
    outputs = eager if isinstance(eager, (tuple, list)) else (eager,)
    if not all(isinstance(o, torch.Tensor) for o in outputs):
        raise TypeError("the model must return a tensor or a tuple of tensors to be exported")
    in_names = ["input"] if len(inputs) == 1 else [f"input_{i}" for i in range(len(inputs))]
    out_names = ["output"] if len(outputs) == 1 else [f"output_{i}" for i in range(len(outputs))]
    signature = {
        "inputs": [_spec(n, t) for n, t in zip(in_names, inputs)],
        "outputs": [_spec(n, t) for n, t in zip(out_names, outputs)],
    }

    batch = torch.export.Dim("batch", min=1)
    dynamic_shapes = tuple({0: batch} for _ in inputs)
    with _quiet_exporters():
        program = torch.export.export(module, inputs, dynamic_shapes=dynamic_shapes)
    with torch.no_grad():
        replay = program.module()(*inputs)
    replay_outputs = replay if isinstance(replay, (tuple, list)) else (replay,)
    for want, got in zip(outputs, replay_outputs):
        if not torch.allclose(want, got, rtol=1e-4, atol=1e-5):
            raise RuntimeError("the exported program's outputs differ from the eager model's")
    pt2 = out_dir / "model.pt2"
    with _quiet_exporters():
        torch.export.save(program, str(pt2))
    sha = {pt2.name: _sha256(pt2)}

    onnx_path: Path | None = None
    if onnx:
        onnx_path = out_dir / "model.onnx"
        with _quiet_exporters():
            torch.onnx.export(
                program,
                inputs,
                str(onnx_path),
                input_names=in_names,
                output_names=out_names,
                dynamo=True,
                verbose=False,
            )
        _name_batch_dimension(onnx_path)
        sha[onnx_path.name] = _sha256(onnx_path)
    return ExportedModel(pt2=pt2, onnx=onnx_path, signature=signature, sha256=sha)


def _name_batch_dimension(path: Path) -> None:
    """Renames the exporter's symbolic batch dimension (e.g. ``s31``) to ``batch``."""
    import onnx

    proto = onnx.load(str(path))
    symbols = set()
    for value in list(proto.graph.input) + list(proto.graph.output):
        dims = value.type.tensor_type.shape.dim
        if dims and dims[0].dim_param:
            symbols.add(dims[0].dim_param)
    if len(symbols) != 1:
        return  # several symbols: leave the exporter's names rather than guess
    (symbol,) = symbols
    for value in list(proto.graph.input) + list(proto.graph.output) + list(proto.graph.value_info):
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param == symbol:
                dim.dim_param = "batch"
    onnx.save(proto, str(path))


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
