"""FP8 execution of Linear layers for ``torch.export`` programs (Hopper's FP8 tensor cores).

Each ``aten.linear`` whose weight is a parameter is replaced by an FP8 matmul
(``torch._scaled_mm``) with per-tensor scales: the weight's from its own absolute maximum, the
activation's from the largest value seen over calibration batches (static scaling, so a batch
costs no extra reduction and the graph stays capturable by CUDA graphs). Layers whose inner or
outer dimension is not a multiple of 16 (an FP8 GEMM requirement) keep their precision.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.fx

__all__ = ["FP8_MAX", "quantize_linears_fp8"]

FP8_MAX = float(torch.finfo(torch.float8_e4m3fn).max)  # 448
_LINEAR = torch.ops.aten.linear.default


class FP8Linear(torch.nn.Module):
    """y = x @ W.T + b with x and W in float8_e4m3fn and static per-tensor scales."""

    weight_fp8: torch.Tensor
    w_scale: torch.Tensor
    x_scale: torch.Tensor
    inv_x_scale: torch.Tensor
    bias: torch.nn.Parameter | None

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, x_amax: float) -> None:
        super().__init__()
        w = weight.detach().float()
        w_scale = max(w.abs().max().item(), 1e-12) / FP8_MAX
        # _scaled_mm wants the second operand column-major: keep W (N, K) and pass its .t().
        self.register_buffer("weight_fp8", (w / w_scale).to(torch.float8_e4m3fn))
        self.register_buffer("w_scale", torch.tensor(w_scale, dtype=torch.float32))
        self.register_buffer("x_scale", torch.tensor(max(x_amax, 1e-12) / FP8_MAX))
        self.register_buffer("inv_x_scale", torch.tensor(FP8_MAX / max(x_amax, 1e-12)))
        self.bias = None if bias is None else torch.nn.Parameter(bias.detach(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1])
        xq = (x2 * self.inv_x_scale.to(x2.dtype)).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
        out_dtype = x.dtype if x.dtype in (torch.float16, torch.bfloat16) else torch.float32
        y = torch._scaled_mm(
            xq,
            self.weight_fp8.t(),
            scale_a=self.x_scale,
            scale_b=self.w_scale,
            out_dtype=out_dtype,
        )
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.reshape(*lead, y.shape[-1]).to(x.dtype)


def _attr(gm: torch.fx.GraphModule, node: Any) -> torch.Tensor | None:
    if not isinstance(node, torch.fx.Node) or node.op != "get_attr":
        return None
    obj: Any = gm
    for part in str(node.target).split("."):
        obj = getattr(obj, part)
    return obj if isinstance(obj, torch.Tensor) else None


class _AmaxRecorder(torch.fx.Interpreter):
    """Runs the graph and records the absolute maximum of every linear's input."""

    def __init__(self, gm: torch.fx.GraphModule) -> None:
        super().__init__(gm)
        self.amax: dict[str, float] = {}
        self._current = ""

    def run_node(self, n: torch.fx.Node) -> Any:
        self._current = n.name
        return super().run_node(n)

    def call_function(self, target: Any, args: Any, kwargs: Any) -> Any:
        if target is _LINEAR and isinstance(args[0], torch.Tensor):
            m = float(args[0].detach().abs().max().item()) if args[0].numel() else 0.0
            self.amax[self._current] = max(self.amax.get(self._current, 0.0), m)
        return super().call_function(target, args, kwargs)


def quantize_linears_fp8(
    gm: torch.fx.GraphModule, calibration: Sequence[Sequence[torch.Tensor]]
) -> tuple[torch.fx.GraphModule, int]:
    """Replaces eligible linears in ``gm`` (from ``ExportedProgram.module()``) by FP8Linear.

    ``calibration`` is a list of input tuples run through the model to find activation ranges.
    Returns the rewritten module and how many layers now run in FP8.
    """
    if not calibration:
        raise ValueError("fp8 needs calibration batches to set activation scales")
    rec = _AmaxRecorder(gm)
    with torch.inference_mode():
        for batch in calibration:
            rec.run(*batch)
    replaced = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target is not _LINEAR:
            continue
        weight = _attr(gm, node.args[1])
        bias = _attr(gm, node.args[2]) if len(node.args) > 2 else None
        if weight is None or weight.dim() != 2 or node.name not in rec.amax:
            continue
        n_out, k_in = weight.shape
        if n_out % 16 or k_in % 16:
            continue
        name = f"fp8_{node.name}"
        gm.add_submodule(name, FP8Linear(weight, bias, rec.amax[node.name]))
        with gm.graph.inserting_before(node):
            new = gm.graph.call_module(name, (node.args[0],))
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
        replaced += 1
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return gm, replaced
