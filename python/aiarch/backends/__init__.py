"""Execution backends: a model file's format picks the library that runs it.

========================  =====================  ==========================================
format                    files                  backend
========================  =====================  ==========================================
``torch_export``          ``*.pt2``              PyTorch (``torch.export`` programs), CPU/CUDA
``torchscript``           ``*.pt``, ``*.ts``     PyTorch (TorchScript), CPU/CUDA
``onnx``                  ``*.onnx``             ONNX Runtime (CPU; fp32 and INT8 Q/DQ) or
                                                 TensorRT with ``device="cuda"`` and
                                                 ``backend="tensorrt"``
``tensorrt``              ``*.engine``, ``*.plan``  a serialized TensorRT engine
========================  =====================  ==========================================

A folder holding ``model.pt2`` or ``model.onnx`` (as the registry stores them) loads that file.
Nothing here unpickles arbitrary objects: a ``torch.save`` pickle is refused with an error that
says how to export the model instead.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from aiarch.errors import InvalidArgumentError, NotFoundError

from .base import Backend, BackendOptions, Bucketing, default_buckets

__all__ = [
    "FORMATS",
    "Backend",
    "BackendOptions",
    "Bucketing",
    "default_buckets",
    "detect_format",
    "is_model_file",
    "load",
]

FORMATS = ("torch_export", "torchscript", "onnx", "tensorrt")
_SUFFIXES = {
    ".pt2": "torch_export",
    ".pt": "torchscript",
    ".ts": "torchscript",
    ".pth": "torchscript",
    ".onnx": "onnx",
    ".engine": "tensorrt",
    ".plan": "tensorrt",
}
# What a registry folder may hold, in the order tried.
_FOLDER_FILES = ("model.pt2", "model.onnx", "model.pt", "model.engine")


def is_model_file(source: str) -> bool:
    """True when ``source`` names a model file (by suffix) or a folder holding one."""
    p = Path(source)
    if p.suffix.lower() in _SUFFIXES:
        return True
    return p.is_dir() and any((p / f).is_file() for f in _FOLDER_FILES)


def _resolve_path(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    if p.is_dir():
        for f in _FOLDER_FILES:
            if (p / f).is_file():
                return p / f
        raise NotFoundError(f"folder {str(p)!r} holds none of {list(_FOLDER_FILES)}")
    if not p.is_file():
        raise NotFoundError(f"no such model file: {str(p)!r}")
    return p


def _is_pickle(head: bytes) -> bool:
    # Protocol 2+ pickles start with PROTO (0x80) and the protocol number.
    return len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def _refuse_pickle(p: Path, what: str) -> None:
    raise InvalidArgumentError(
        f"{str(p)!r} is {what}, not a TorchScript or torch.export archive; aiarch never "
        "unpickles arbitrary objects. Export the model with "
        "torch.export.save(torch.export.export(model, example_inputs), 'model.pt2') "
        "or torch.jit.save(torch.jit.script(model), 'model.pt')"
    )


def detect_format(path: str | os.PathLike[str]) -> str:
    """The format of a model file, from its suffix, checked against its contents."""
    p = _resolve_path(path)
    with open(p, "rb") as f:
        head = f.read(8)
    if not head:
        raise InvalidArgumentError(f"model file {str(p)!r} is empty")
    fmt = _SUFFIXES.get(p.suffix.lower())
    if fmt in ("torch_export", "torchscript"):
        if _is_pickle(head):
            _refuse_pickle(p, "a plain pickle")
        if not zipfile.is_zipfile(p):
            raise InvalidArgumentError(
                f"{str(p)!r} is not a PyTorch archive (expected a zip written by "
                "torch.export.save or torch.jit.save); the file may be truncated or corrupt"
            )
        with zipfile.ZipFile(p) as z:
            names = z.namelist()
        if any(n.endswith("/code/") or "/code/" in n for n in names):
            return "torchscript"
        if any(
            n.endswith(("serialized_exported_program.json", "models/model.json")) for n in names
        ):
            return "torch_export"
        if any(n.endswith("data.pkl") for n in names):
            _refuse_pickle(p, "a torch.save pickle (an object graph, not a program)")
        raise InvalidArgumentError(
            f"{str(p)!r} is a zip but neither a TorchScript nor a torch.export archive"
        )
    if fmt is None:
        raise InvalidArgumentError(
            f"cannot tell the format of {str(p)!r} from its suffix; expected one of "
            f"{sorted(_SUFFIXES)} (or pass format=one of {list(FORMATS)})"
        )
    return fmt


def load(
    path: str | os.PathLike[str],
    *,
    format: str | None = None,
    backend: str | None = None,
    options: BackendOptions | None = None,
    **kwargs: Any,
) -> Backend:
    """Loads a model file with the backend its format (or ``backend``) selects.

    ``options`` (or keyword arguments naming BackendOptions fields, e.g. ``device="cuda"``,
    ``precision="fp16"``, ``threads=4``) say how it runs. Raises InvalidArgumentError for a file
    that is not a model of a known format, NotFoundError for a missing one, and
    UnavailableError when the library the format needs is not installed.
    """
    opts = options or BackendOptions()
    if kwargs:
        known = set(BackendOptions.__dataclass_fields__)
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise InvalidArgumentError(
                f"unknown backend options {unknown}; expected some of {sorted(known)}"
            )
        opts = replace(opts, **kwargs)
    p = _resolve_path(path)
    fmt = format or detect_format(p)
    if fmt not in FORMATS:
        raise InvalidArgumentError(f"unknown model format {fmt!r}; expected one of {list(FORMATS)}")
    if backend not in (None, "torch", "onnxruntime", "tensorrt"):
        raise InvalidArgumentError(
            f"unknown backend {backend!r}; expected 'torch', 'onnxruntime' or 'tensorrt'"
        )
    if opts.compile is not None and fmt not in ("torch_export", "torchscript"):
        raise InvalidArgumentError(
            f"compile={opts.compile!r} applies to torch models (.pt2); {str(p)!r} is a {fmt} "
            "model, which its own library optimises"
        )
    if fmt in ("torch_export", "torchscript"):
        from .torch import TorchBackend

        return TorchBackend(p, fmt, opts)
    if fmt == "tensorrt" or backend == "tensorrt":
        from .tensorrt import TensorRTBackend

        return TensorRTBackend(p, fmt, opts)
    from .onnx import OnnxBackend

    return OnnxBackend(p, opts)
