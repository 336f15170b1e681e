"""Turning an eager PyTorch model into the files the backends serve.

``export_model(model, example, folder)`` writes ``model.pt2`` (``torch.export``) and
``model.onnx`` (``torch.onnx`` dynamo exporter) with a dynamic batch dimension, so both run at
any batch size through the Runtime; a folder with both is what the registry stores.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = ["export_model"]

FORMATS = ("pt2", "onnx", "torchscript")


def export_model(
    model: torch.nn.Module,
    example: torch.Tensor | Sequence[torch.Tensor],
    folder: str | os.PathLike[str],
    *,
    formats: Sequence[str] = ("pt2", "onnx"),
    max_batch: int = 65536,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
) -> dict[str, Path]:
    """Exports ``model`` (in eval mode) to ``folder``; returns ``{format: path}``.

    ``example`` is one input tensor or a tuple of them, rows first; the row dimension is
    exported as dynamic (1..max_batch). Input and output names default to ``input0..``,
    ``output0..``.
    """
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        raise ValueError(f"unknown export formats {unknown}; expected some of {list(FORMATS)}")
    args = (example,) if isinstance(example, torch.Tensor) else tuple(example)
    if not args or any(a.dim() < 1 for a in args):
        raise ValueError("example inputs must be tensors with a leading batch dimension")
    # Export traces with batch 2: torch.export specializes a size-1 dim to a constant.
    args = tuple(a[:1].expand(2, *a.shape[1:]).contiguous() for a in args)
    model = model.eval()
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    dynamic = tuple({0: batch} for _ in args)
    names_in = list(input_names or [f"input{i}" for i in range(len(args))])
    written: dict[str, Path] = {}
    if "pt2" in formats:
        ep = torch.export.export(model, args, dynamic_shapes=dynamic)
        written["pt2"] = out / "model.pt2"
        torch.export.save(ep, str(written["pt2"]))
    if "onnx" in formats:
        with torch.no_grad():
            n_out = _count_outputs(model(*args))
        written["onnx"] = out / "model.onnx"
        with _quiet_exporter():
            torch.onnx.export(
                model,
                args,
                str(written["onnx"]),
                input_names=names_in,
                output_names=list(output_names or [f"output{i}" for i in range(n_out)]),
                dynamic_shapes=dynamic,
                dynamo=True,
                verbose=False,
            )
    if "torchscript" in formats:
        written["torchscript"] = out / "model.pt"
        torch.jit.save(torch.jit.trace(model, args), str(written["torchscript"]))
    return written


def _count_outputs(result: Any) -> int:
    return len(result) if isinstance(result, (tuple, list)) else 1


@contextlib.contextmanager
def _quiet_exporter() -> Any:
    """The ONNX exporter reports each phase on stdout and warns about optional packages;
    keep a library call silent."""
    names = ("torch.onnx", "torch.onnx._internal.exporter._registration", "onnxscript")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)
