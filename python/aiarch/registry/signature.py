"""Signatures (input/output names, dtypes, shapes) read from artifacts without running them."""

from __future__ import annotations

import importlib.util
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["infer_signature"]


def _tensor_list(specs: Any) -> list[dict[str, Any]]:
    out = []
    for s in specs:  # TensorSpec objects or {"name", "dtype", "shape"} mappings
        get = s.get if isinstance(s, Mapping) else lambda k, s=s: getattr(s, k)
        out.append(
            {
                "name": str(get("name")),
                "dtype": str(get("dtype")),
                "shape": [int(d) for d in get("shape") or ()],
            }
        )
    return out


def infer_signature(fmt: str, path: Path, entry: str | None) -> dict[str, Any] | None:
    """Input/output names, dtypes and shapes read from the artifact where the format allows
    it without running the model: ONNX graphs, and Python callables with `.inputs`/`.outputs`.
    None when it cannot be read."""
    try:
        if fmt == "onnx" and path.is_file():
            import onnx
            from onnx import helper

            graph = onnx.load(str(path), load_external_data=False).graph
            initializers = {i.name for i in graph.initializer}

            def specs(values: Any) -> list[dict[str, Any]]:
                out = []
                for v in values:
                    if v.name in initializers:
                        continue
                    t = v.type.tensor_type
                    dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
                    dtype = str(helper.tensor_dtype_to_np_dtype(t.elem_type))
                    out.append({"name": v.name, "dtype": dtype, "shape": dims})
                return out

            return {"inputs": specs(graph.input), "outputs": specs(graph.output)}
        if fmt == "python" and entry and path.is_file():
            spec = importlib.util.spec_from_file_location(f"_aiarch_sig_{uuid.uuid4().hex}", path)
            if spec is None or spec.loader is None:
                return None
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            obj: Any = module
            for part in entry.removesuffix("()").split("."):
                obj = getattr(obj, part)
            inputs = getattr(obj, "inputs", None)
            if inputs is None:
                return None
            return {"inputs": _tensor_list(inputs), "outputs": _tensor_list(obj.outputs or [])}
    except Exception:  # a signature is optional: an unreadable model registers without one
        return None
    return None
