"""Turning an eager PyTorch model into the files the backends serve.

``export_model(model, example, folder)`` writes ``model.pt2`` (``torch.export``; what the torch
backend serves) and ``model.onnx`` (for ONNX Runtime, `aiarch quantize` and TensorRT), both with a
dynamic batch dimension, exported on CPU from an eval-mode copy and checked against the eager
outputs, so they run on any device and batch size. A folder holding them loads through
`aiarch.backends.load`.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .base import file_sha256

if TYPE_CHECKING:
    import torch

__all__ = ["ExportedModel", "export_model"]


@dataclass
class ExportedModel:
    """Files written by `export_model` and the signature they share."""

    pt2: Path
    onnx: Path | None
    signature: dict[str, Any]
    """``{"inputs": [{"name", "dtype", "shape"}], "outputs": [...]}``; batch dim is -1."""
    sha256: dict[str, str] = field(default_factory=dict)
    """sha256 of each written file, by file name."""
    torchscript: Path | None = None
    """``model.pt`` when TorchScript was asked for (traced)."""


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
            warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript's own notice
            yield
    finally:
        registration.setLevel(level)


def _spec(name: str, t: torch.Tensor) -> dict[str, Any]:
    return {"name": name, "dtype": str(t.dtype).removeprefix("torch."), "shape": [-1, *t.shape[1:]]}


def export_model(
    model: torch.nn.Module,
    example_input: Any,
    out_dir: str | Path,
    *,
    onnx: bool = True,
    torchscript: bool = False,
) -> ExportedModel:
    """Writes ``model.pt2`` (and ``model.onnx``, and a traced ``model.pt`` with `torchscript`)
    for `model` under `out_dir`.

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
    sha = {pt2.name: file_sha256(pt2)}

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
        sha[onnx_path.name] = file_sha256(onnx_path)
    ts_path: Path | None = None
    if torchscript:
        ts_path = out_dir / "model.pt"
        with _quiet_exporters(), torch.no_grad():
            torch.jit.save(torch.jit.trace(module, inputs), str(ts_path))
        sha[ts_path.name] = file_sha256(ts_path)
    return ExportedModel(
        pt2=pt2, onnx=onnx_path, signature=signature, sha256=sha, torchscript=ts_path
    )


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
