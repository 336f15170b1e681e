"""GPU benchmark: the Runtime against the same model called directly by torch, in one run.

Sections (each row names its baseline; ratios are against it, measured in the same process):

  mlp_b1    reference MLP 64->256->256->16, one row: Runtime end-to-end p50 (numpy in, numpy
            out) vs bare CUDA-graph replay including the host->device and device->host copies;
            also the Runtime with compile="max-autotune" (compiled kernels in its graphs).
  resnet    ResNet-50 (bottleneck 3-4-6-3, defined here: torchvision is not needed) in fp16,
            batches 1/32/256: bare eager, bare CUDA graph and bare torch.compile (channels-last,
            input resident on the GPU) vs the Runtime with CUDA graphs and with compile +
            graphs (input handed over as a float32 numpy batch, so its img/s includes the copies).
  fp8       512->2048->2048->16 MLP at batches 256 and 8192: FP8 Linear layers with calibrated
            per-tensor scales vs bf16, both bare modules on device tensors, with the max error of
            each against the fp32 model (relative to the largest fp32 output).

A time budget (--budget-s) bounds the run: a section that would start past it is recorded as
skipped with that reason, never silently dropped. --dry-run runs every section on the CPU at
tiny sizes (fp32 instead of fp16, no CUDA graphs) so the script is exercised end to end on a
machine without a GPU; its figures mean nothing.

    python benchmarks/bench_gpu.py                       # on a GPU machine
    python benchmarks/bench_gpu.py --dry-run --json /tmp/bench_gpu.json
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import aiarch
from _report import metadata, print_table, write_json
from aiarch.backends.export import export_model
from aiarch.backends.fp8 import quantize_linears_fp8


@dataclass
class Setup:
    """What one run measures with: the real sizes on a GPU, tiny ones in a dry run."""

    device: str
    dry_run: bool
    seconds: float
    deadline: float
    work: Path
    resnet_batches: tuple[int, ...] = (1, 32, 256)
    resnet_image: int = 224
    resnet_width: int = 64
    resnet_blocks: tuple[int, ...] = (3, 4, 6, 3)
    fp8_batches: tuple[int, ...] = (256, 8192)
    fp8_dims: tuple[int, ...] = (512, 2048, 2048, 16)
    compile_mode: str | None = "max-autotune"
    """None skips the compiled variants (--smoke), recorded as skipped."""

    @property
    def cuda(self) -> bool:
        return self.device.startswith("cuda")

    @property
    def half(self) -> torch.dtype:
        return torch.float16 if self.cuda else torch.float32

    @property
    def compile_label(self) -> str:
        return f"compile {self.compile_mode}" if self.compile_mode else "compile"

    def left(self) -> float:
        return self.deadline - time.monotonic()


# ---------------------------------------------------------------- models


def reference_mlp(dims: tuple[int, ...] = (64, 256, 256, 16), seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    layers: list[torch.nn.Module] = []
    for a, b in itertools.pairwise(dims):
        layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    return torch.nn.Sequential(*layers[:-1]).eval()


class Bottleneck(torch.nn.Module):
    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        cout = width * 4
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(cin, width, 1, bias=False),
            torch.nn.BatchNorm2d(width),
            torch.nn.ReLU(inplace=True),
            torch.nn.Conv2d(width, width, 3, stride, 1, bias=False),
            torch.nn.BatchNorm2d(width),
            torch.nn.ReLU(inplace=True),
            torch.nn.Conv2d(width, cout, 1, bias=False),
            torch.nn.BatchNorm2d(cout),
        )
        self.skip: torch.nn.Module = torch.nn.Identity()
        if stride != 1 or cin != cout:
            self.skip = torch.nn.Sequential(
                torch.nn.Conv2d(cin, cout, 1, stride, bias=False), torch.nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.skip(x))


def resnet50(
    width: int = 64, blocks: tuple[int, ...] = (3, 4, 6, 3), classes: int = 1000
) -> torch.nn.Module:
    """ResNet-50's layout (torchvision's resnet50 at the defaults), random weights."""
    torch.manual_seed(0)
    layers: list[torch.nn.Module] = [
        torch.nn.Conv2d(3, width, 7, 2, 3, bias=False),
        torch.nn.BatchNorm2d(width),
        torch.nn.ReLU(inplace=True),
        torch.nn.MaxPool2d(3, 2, 1),
    ]
    cin = width
    for i, n in enumerate(blocks):
        w = width * 2**i
        for j in range(n):
            layers.append(Bottleneck(cin, w, 2 if (j == 0 and i > 0) else 1))
            cin = w * 4
    layers += [torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(cin, classes)]
    return torch.nn.Sequential(*layers).eval()


# ---------------------------------------------------------------- timing


def _sync(s: Setup) -> None:
    if s.cuda:
        torch.cuda.synchronize()


def latency_us(s: Setup, fn: Callable[[], Any]) -> dict[str, float]:
    """p50/p99 of one call (synchronised), over s.seconds after a short warm-up."""
    for _ in range(10):
        fn()
    _sync(s)
    samples = []
    end = time.perf_counter() + s.seconds
    while time.perf_counter() < end or len(samples) < 20:
        t0 = time.perf_counter_ns()
        fn()
        _sync(s)
        samples.append((time.perf_counter_ns() - t0) / 1e3)
    a = np.asarray(samples)
    return {"p50_us": float(np.percentile(a, 50)), "p99_us": float(np.percentile(a, 99))}


def throughput(s: Setup, fn: Callable[[], Any], rows: int) -> float:
    """Rows per second of back-to-back calls (synchronised at the end of each timed block)."""
    fn()
    _sync(s)
    calls, started = 0, time.perf_counter()
    while True:
        for _ in range(5):
            fn()
        _sync(s)
        calls += 5
        elapsed = time.perf_counter() - started
        if elapsed >= s.seconds:
            return rows * calls / elapsed


def graphed(s: Setup, module: Any, x: torch.Tensor) -> Callable[[], torch.Tensor]:
    """A replay of ``module(x)`` captured in a CUDA graph (the plain call on CPU)."""
    with torch.inference_mode():
        if not s.cuda:
            return lambda: module(x)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):
                module(x)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = module(x)

    def replay() -> torch.Tensor:
        graph.replay()
        return out

    return replay


def runtime_call(rt: aiarch.Runtime, name: str, x: np.ndarray) -> Callable[[], Any]:
    return lambda: rt.infer_sync(name, x)


# ---------------------------------------------------------------- sections

# What the Runtime compiles with when it captures its own CUDA graphs (aiarch.backends.torch).
COMPILE_WITH_OWN_GRAPHS = {
    "default": "default",
    "reduce-overhead": "default",
    "max-autotune": "max-autotune-no-cudagraphs",
}


def skip_reason(s: Setup, needs_s: float, compiles: bool = False) -> str | None:
    """Why a variant is not run (recorded in its row), or None to run it."""
    if compiles and s.compile_mode is None:
        return "compile not run in --smoke (tests/backends/test_compile.py covers it)"
    if s.left() < needs_s:
        return "time budget spent"
    return None


def runtime_variants(s: Setup) -> list[tuple[str, dict[str, Any]]]:
    """(label, add_model keywords): the Runtime with its CUDA graphs, then with compile too."""
    return [
        ("runtime (graphs)", {}),
        (f"runtime ({s.compile_label} + graphs)", {"compile": s.compile_mode}),
    ]


def compile_seconds(info: Any) -> float | None:
    return (info.backend or {}).get("compile", {}).get("seconds")


def bench_mlp_b1(s: Setup) -> list[dict[str, Any]]:
    model = reference_mlp()
    files = export_model(model, torch.randn(4, 64), s.work / "mlp", onnx=False)
    dev_model = reference_mlp().to(s.device)
    x_host = torch.randn(1, 64).pin_memory() if s.cuda else torch.randn(1, 64)
    out_host = torch.empty(1, 16).pin_memory() if s.cuda else torch.empty(1, 16)
    x_dev = torch.zeros(1, 64, device=s.device)
    replay = graphed(s, dev_model, x_dev)

    def bare() -> torch.Tensor:
        x_dev.copy_(x_host, non_blocking=True)
        out_host.copy_(replay(), non_blocking=True)
        return out_host

    rows: list[dict[str, Any]] = [{"variant": "bare graph replay + H2D/D2H", **latency_us(s, bare)}]
    x = np.random.default_rng(0).standard_normal((1, 64), dtype=np.float32)
    for label, extra in runtime_variants(s):
        reason = skip_reason(s, 30, compiles=bool(extra))
        if reason:
            rows.append({"variant": label, "skipped": reason})
            continue
        with aiarch.Runtime() as rt:
            info = rt.add_model(
                "mlp",
                files.pt2,
                device=s.device,
                batching=aiarch.BatchConfig(max_batch_size=64, max_delay_us=0),
                **extra,
            )
            timing = latency_us(s, runtime_call(rt, "mlp", x))
            rows.append({"variant": label, **timing, "compile_s": compile_seconds(info)})
    base = rows[0]["p50_us"]
    for r in rows[1:]:
        if "p50_us" in r:
            r["added_us"] = r["p50_us"] - base
    return rows


def bench_resnet(s: Setup) -> list[dict[str, Any]]:
    model = resnet50(s.resnet_width, s.resnet_blocks)
    hw = s.resnet_image
    files = export_model(model, torch.randn(2, 3, hw, hw), s.work / "resnet", onnx=False)
    bare = model.to(s.device, s.half).to(memory_format=torch.channels_last)
    compiled = None
    if s.compile_mode is not None:
        # The bare graph below captures the compiled kernels, as the Runtime's graphs do.
        mode = COMPILE_WITH_OWN_GRAPHS[s.compile_mode] if s.cuda else s.compile_mode
        compiled = torch.compile(bare, mode=mode, dynamic=False)
    rows: list[dict[str, Any]] = []
    for b in s.resnet_batches:
        x_dev = torch.randn(b, 3, hw, hw, device=s.device, dtype=s.half).to(
            memory_format=torch.channels_last
        )
        with torch.inference_mode():
            eager = throughput(s, lambda x=x_dev: bare(x), b)
        rows.append({"batch": b, "variant": "bare eager", "img_s": eager})
        if s.cuda:
            graph = throughput(s, graphed(s, bare, x_dev), b)
            rows.append({"batch": b, "variant": "bare graph", "img_s": graph})
        label = f"bare {s.compile_label} + graph"
        reason = skip_reason(s, 60, compiles=True)
        if reason or compiled is None:
            rows.append({"batch": b, "variant": label, "skipped": reason})
            continue
        started = time.perf_counter()
        with torch.inference_mode():
            compiled(x_dev)
        compile_s = time.perf_counter() - started
        img_s = throughput(s, graphed(s, compiled, x_dev), b)
        rows.append({"batch": b, "variant": label, "img_s": img_s, "compile_s": compile_s})
    top = max(s.resnet_batches)
    for label, extra in runtime_variants(s):
        reason = skip_reason(s, 60, compiles=bool(extra))
        if reason:
            rows += [{"batch": b, "variant": label, "skipped": reason} for b in s.resnet_batches]
            continue
        with aiarch.Runtime() as rt:
            info = rt.add_model(
                "resnet",
                files.pt2,
                device=s.device,
                precision="fp16" if s.cuda else None,
                batching=aiarch.BatchConfig(
                    max_batch_size=top, preferred_batch_sizes=s.resnet_batches, max_delay_us=0
                ),
                **extra,
            )
            for b in s.resnet_batches:
                x = np.random.default_rng(b).standard_normal((b, 3, hw, hw), dtype=np.float32)
                img_s = throughput(s, runtime_call(rt, "resnet", x), b)
                rows.append(
                    {
                        "batch": b,
                        "variant": label,
                        "img_s": img_s,
                        "compile_s": compile_seconds(info),
                    }
                )
    for b in s.resnet_batches:
        measured = [r for r in rows if r["batch"] == b and "img_s" in r]
        best_bare = max(
            (r["img_s"] for r in measured if r["variant"].startswith("bare")), default=None
        )
        for r in measured:
            if best_bare:
                r["vs_best_bare"] = r["img_s"] / best_bare
    return rows


def bench_fp8(s: Setup) -> list[dict[str, Any]]:
    ref = reference_mlp(s.fp8_dims, seed=1)
    rng = np.random.default_rng(2)
    calib = torch.from_numpy(rng.standard_normal((512, s.fp8_dims[0]), dtype=np.float32))
    ep = torch.export.export(ref, (calib[:4],), dynamic_shapes=({0: torch.export.Dim("batch")},))
    fp8_module, layers = quantize_linears_fp8(ep.module(), [(calib,)])
    low = torch.bfloat16
    bf16 = reference_mlp(s.fp8_dims, seed=1).to(s.device, low)
    fp8 = fp8_module.to(s.device)  # scales stay float32, as _scaled_mm needs
    rows: list[dict[str, Any]] = []
    for b in s.fp8_batches:
        x = torch.from_numpy(rng.standard_normal((b, s.fp8_dims[0]), dtype=np.float32))
        with torch.inference_mode():
            want = ref(x)
            x_dev = x.to(s.device, low)
            scale = float(want.abs().max())
            for label, module in (("bf16", bf16), (f"fp8 calibrated ({layers} layers)", fp8)):
                err = float((module(x_dev).float().cpu() - want).abs().max()) / scale
                rows.append(
                    {
                        "batch": b,
                        "variant": label,
                        "rows_s": throughput(s, lambda m=module, x=x_dev: m(x), b),
                        "max_rel_error": err,
                    }
                )
        rows[-1]["vs_bf16"] = rows[-1]["rows_s"] / rows[-2]["rows_s"]
    return rows


SECTIONS: dict[str, Callable[[Setup], list[dict[str, Any]]]] = {
    "mlp_b1": bench_mlp_b1,
    "resnet": bench_resnet,
    "fp8": bench_fp8,
}
COLUMNS = {
    "mlp_b1": ["variant", "p50_us", "p99_us", "added_us", "compile_s"],
    "resnet": ["batch", "variant", "img_s", "vs_best_bare", "compile_s"],
    "fp8": ["batch", "variant", "rows_s", "vs_bf16", "max_rel_error"],
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--dry-run", action="store_true", help="every section on the CPU at tiny sizes")
    ap.add_argument(
        "--smoke",
        action="store_true",
        help="--dry-run without the compiled variants: seconds, what CI runs",
    )
    ap.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated subset")
    ap.add_argument("--seconds", type=float, default=1.0, help="seconds per measurement")
    ap.add_argument(
        "--budget-s", type=float, default=330.0, help="stop starting sections after this"
    )
    ap.add_argument(
        "--compile-mode",
        default="max-autotune",
        choices=["default", "reduce-overhead", "max-autotune"],
    )
    ap.add_argument("--json", default="bench-results/bench_gpu.json", help="JSON output path")
    args = ap.parse_args(argv)
    dry = args.dry_run or args.smoke
    if not dry and not torch.cuda.is_available():
        print(
            f"no CUDA device visible to torch {torch.__version__}; use --dry-run on a CPU machine",
            file=sys.stderr,
        )
        return 2
    wanted = [x for x in args.sections.split(",") if x]
    unknown = sorted(set(wanted) - set(SECTIONS))
    if unknown:
        ap.error(f"unknown sections {unknown}; expected some of {list(SECTIONS)}")
    with tempfile.TemporaryDirectory(prefix="bench_gpu_") as tmp:
        s = Setup(
            device="cpu" if dry else "cuda",
            dry_run=dry,
            seconds=0.05 if dry else args.seconds,
            deadline=time.monotonic() + args.budget_s,
            work=Path(tmp),
            compile_mode=None if args.smoke else "default" if dry else args.compile_mode,
        )
        if dry:
            s.resnet_batches, s.resnet_image, s.resnet_width = (1, 2), 16, 4
            s.resnet_blocks = (1, 1, 1, 1)
            s.fp8_batches, s.fp8_dims = (4, 32), (32, 64, 64, 16)
        results: dict[str, Any] = {
            "device": torch.cuda.get_device_name()
            if s.cuda
            else "cpu (dry run: figures mean nothing)",
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "dry_run": dry,
            "sections": {},
        }
        for name in wanted:
            if s.left() <= 0:
                results["sections"][name] = {"skipped": "time budget spent"}
                continue
            started = time.monotonic()
            rows = SECTIONS[name](s)
            results["sections"][name] = {
                "rows": rows,
                "seconds": round(time.monotonic() - started, 1),
            }
            cols = COLUMNS[name] + ["skipped"] * any("skipped" in r for r in rows)
            print_table(
                f"{name} on {results['device']}", cols, [[r.get(c, "") for c in cols] for r in rows]
            )
    results["metadata"] = metadata()
    write_json(args.json, "bench_gpu", results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
