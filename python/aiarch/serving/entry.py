"""What the request path keeps about one loaded model: `ModelEntry`, rebuilt on every (re)load.

Names, dtypes, shapes and the pre-encoded metadata and config of a model, so that answering a
metadata request or checking an infer request against the model is a dict lookup, not a runtime
call.
"""

from __future__ import annotations

from typing import Any

import msgspec
import numpy as np

from aiarch.redact import redact_url

from . import v2
from .errors import HttpError

__all__ = ["ModelEntry"]

_encode = msgspec.json.encode


def _spec(spec: Any) -> tuple[str, np.dtype[Any], tuple[int, ...]]:
    dtype = (
        v2.DATATYPES["BF16"]
        if spec.dtype == "bfloat16" and "BF16" in v2.DATATYPES
        else (np.dtype(spec.dtype))
    )
    return spec.name, dtype, tuple(int(d) for d in spec.shape)


def _triton_type(datatype: str) -> str:
    return "TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}"


class ModelEntry:
    """What the request path needs about one loaded model; rebuilt on (re)load."""

    __slots__ = (
        "byte_keys",
        "check",
        "config_json",
        "input_index",
        "inputs",
        "metadata_json",
        "name",
        "output_datatypes",
        "output_index",
        "output_names",
        "outputs",
        "runtime_name",
        "version",
    )

    def __init__(
        self,
        info: Any,
        source: str = "",
        public_name: str | None = None,
        byte_keys: tuple[int, int] | None = None,
    ):
        # A registry-served version runs under its own runtime name (e.g. `fraud.v3`) and
        # answers under the public one.
        self.runtime_name: str = info.name
        self.name: str = public_name or info.name
        self.version: str = str(info.version)
        self.inputs = [_spec(s) for s in info.inputs]
        # String entity ids: BYTES on the wire, fixed-width UTF-8 rows in the batcher
        # (`serving.features`); (input index, width) or None.
        self.byte_keys = byte_keys
        if byte_keys is not None:
            i, _ = byte_keys
            self.inputs[i] = (self.inputs[i][0], np.dtype(object), ())
        self.outputs = [_spec(s) for s in info.outputs]
        self.input_index = {n: i for i, (n, _, _) in enumerate(self.inputs)}
        self.output_names = [n for n, _, _ in self.outputs]
        self.output_datatypes = [v2.np_to_v2(dt) for _, dt, _ in self.outputs]
        self.output_index = {n: i for i, n in enumerate(self.output_names)}
        # Per-request check of a model's results before encoding (feature-lookup policy).
        self.check: Any = None
        batching = info.batching
        max_batch = int(getattr(batching, "max_batch_size", 0) or 0)
        lead = [-1] if max_batch > 0 else []

        def meta(specs: list[tuple[str, np.dtype[Any], tuple[int, ...]]]) -> list[dict[str, Any]]:
            return [
                {"name": n, "datatype": v2.np_to_v2(dt), "shape": lead + list(tr)}
                for n, dt, tr in specs
            ]

        self.metadata_json = _encode(
            {
                "name": self.name,
                "versions": [self.version],
                "platform": "aiarch_python",
                "inputs": meta(self.inputs),
                "outputs": meta(self.outputs),
            }
        )

        def cfg(specs: list[tuple[str, np.dtype[Any], tuple[int, ...]]]) -> list[dict[str, Any]]:
            return [
                {"name": n, "data_type": _triton_type(v2.np_to_v2(dt)), "dims": list(tr)}
                for n, dt, tr in specs
            ]

        config: dict[str, Any] = {
            "name": self.name,
            "platform": "aiarch_python",
            "backend": "python",
            "version_policy": {"specific": {"versions": [self.version]}},
            "max_batch_size": max_batch,
            "input": cfg(self.inputs),
            "output": cfg(self.outputs),
            "instance_group": [
                {"count": int(getattr(batching, "instances", 1) or 1), "kind": "KIND_CPU"}
            ],
            "response_cache": {"enable": info.cache is not None},
            "parameters": {"source": {"string_value": redact_url(source)}} if source else {},
        }
        if max_batch > 0:
            config["dynamic_batching"] = {
                "preferred_batch_size": list(getattr(batching, "preferred_batch_sizes", ()) or ()),
                "max_queue_delay_microseconds": int(getattr(batching, "max_delay_us", 0) or 0),
                "priority_levels": int(getattr(batching, "priority_levels", 1) or 1),
            }
        self.config_json = _encode(config)

    def arrange(self, names: list[str], arrays: list[np.ndarray]) -> Any:
        """Check request tensors against the model and order them as its inputs; returns an array
        for single-input models, else a list. Raises HttpError(400)."""
        specs = self.inputs
        if len(names) != len(specs):
            raise HttpError(
                400,
                f"expected {len(specs)} inputs but got {len(names)} inputs for model '{self.name}'",
            )
        ordered: list[Any] = [None] * len(specs)
        rows = -1
        for name, arr in zip(names, arrays):
            i = self.input_index.get(name)
            if i is None:
                raise HttpError(400, f"unexpected inference input '{name}' for model '{self.name}'")
            if ordered[i] is not None:
                raise HttpError(400, f"input '{name}' given twice")
            _, dtype, trailing = specs[i]
            if arr.dtype != dtype:
                raise HttpError(
                    400,
                    f"unexpected datatype {v2.np_to_v2(arr.dtype)} for inference input '{name}', "
                    f"expecting {v2.np_to_v2(dtype)}",
                )
            shape = arr.shape
            if (
                len(shape) != len(trailing) + 1
                or shape[0] < 1
                or any(t >= 0 and s != t for s, t in zip(shape[1:], trailing))
            ):
                raise HttpError(
                    400,
                    f"unexpected shape for input '{name}' for model '{self.name}'. Expected "
                    f"{[-1, *trailing]}, got {list(shape)}",
                )
            if rows < 0:
                rows = shape[0]
            elif shape[0] != rows:
                raise HttpError(400, "all inputs must have the same batch size")
            if self.byte_keys is not None and i == self.byte_keys[0]:
                from .features import pack_keys

                arr = pack_keys(arr, self.byte_keys[1], name)
            ordered[i] = arr
        return ordered[0] if len(ordered) == 1 else ordered
