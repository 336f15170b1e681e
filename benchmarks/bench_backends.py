"""Execution backends: torch eager vs ONNX Runtime fp32 (the native C API session, and the
Python package's session) vs ONNX Runtime INT8 (Q/DQ) on the CPU,
the Runtime's overhead over calling a backend directly, and (with a CUDA GPU) CUDA-graph
execution through the Runtime vs a bare captured graph.

Models: the reference MLP 64 → 256 → 256 → 16 and a wide one 512 → 2048 → 2048 → 16, built
and exported here (no downloads). INT8 models come from `aiarch.quantize` (minmax, per-channel,
symmetric Q/DQ) calibrated on 512 rows; the accuracy columns compare them with fp32 on 1,024
held-out rows. Every throughput is rows/s, median of several interleaved rounds, all in one
process, so ratios compare like with like on a shared machine.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

import aiarch
from _report import print_table, write_json
from aiarch import backends
from aiarch.backends.export import export_model
from aiarch.quantize import quantize_onnx


def mlp(dims: tuple[int, ...]) -> torch.nn.Module:
    torch.manual_seed(0)
    layers: list[torch.nn.Module] = []
    for a, b in itertools.pairwise(dims):
        layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    return torch.nn.Sequential(*layers[:-1]).eval()


def rate(fn: Callable[[], Any], rows: int, seconds: float) -> float:
    """Rows per second of ``fn`` (one call = ``rows`` rows) over about ``seconds``."""
    fn()
    n, start = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds and n >= 3:
            return n * rows / elapsed


def interleaved(
    cands: dict[str, Callable[[], Any]], rows: int, seconds: float, rounds: int
) -> dict[str, float]:
    """Median rows/s per candidate, measured in alternating rounds (noise hits all alike)."""
    samples: dict[str, list[float]] = {k: [] for k in cands}
    for _ in range(rounds):
        for k, fn in cands.items():
            samples[k].append(rate(fn, rows, seconds))
    return {k: statistics.median(v) for k, v in samples.items()}


def cpu_section(
    dims: tuple[int, ...], batches: list[int], seconds: float, rounds: int, tmp: Path
) -> tuple[list[list[Any]], dict[str, Any]]:
    model = mlp(dims)
    name = "x".join(str(d) for d in dims)
    folder = tmp / name
    files = export_model(model, torch.randn(2, dims[0]), folder)
    paths = {"pt2": files.pt2, "onnx": files.onnx}
    rng = np.random.default_rng(0)
    calib = rng.standard_normal((512, dims[0]), dtype=np.float32)
    held = rng.standard_normal((1024, dims[0]), dtype=np.float32)
    q = quantize_onnx(paths["onnx"], {"": calib}, folder / "model.int8.onnx", evaluation={"": held})
    fp32 = backends.load(paths["onnx"])  # the native C API session where this build has it
    fp32_py = backends.load(paths["onnx"], options=backends.BackendOptions(extra={"native": False}))
    int8 = backends.load(folder / "model.int8.onnx")
    rows_out, results = [], []
    for b in batches:
        x = rng.standard_normal((b, dims[0]), dtype=np.float32)
        xt = torch.from_numpy(x)

        def eager(xt: torch.Tensor = xt) -> Any:
            with torch.inference_mode():
                return model(xt)

        r = interleaved(
            {
                "torch eager": eager,
                "onnxruntime fp32": lambda x=x: fp32(x),
                "onnxruntime fp32, Python session": lambda x=x: fp32_py(x),
                "onnxruntime int8": lambda x=x: int8(x),
            },
            b,
            seconds,
            rounds,
        )
        base = r["onnxruntime fp32"]
        for k, v in r.items():
            rows_out.append([name, b, k, v, v / base])
        results.append({"batch": b, "rows_per_s": r, "int8_vs_fp32": r["onnxruntime int8"] / base})
    acc = {
        "max_abs_error": q.report.max_abs_error,
        "mean_abs_error": q.report.mean_abs_error,
        "top1_agreement": q.report.top1_agreement,
    }
    return rows_out, {"model": name, "points": results, "int8_accuracy": acc}


def overhead_section(
    dims: tuple[int, ...], calls: int, tmp: Path
) -> tuple[list[list[Any]], list[dict[str, Any]]]:
    """Runtime.infer_sync of one 64-row request vs calling the same backend on 64 rows, with
    the batch executed on a batcher thread (the default for model files) and inline on the
    calling thread.

    The three are called in turn, call by call, and compared by their median call time: on a
    shared machine, bursts of noise then hit all alike instead of whole blocks of one.
    """
    model = mlp(dims)
    name = "x".join(str(d) for d in dims)
    files = export_model(model, torch.randn(2, dims[0]), tmp / f"ovh-{name}")
    x = np.random.default_rng(1).standard_normal((64, dims[0]), dtype=np.float32)
    rows_out, results = [], []
    with aiarch.Runtime() as rt:
        for fmt, path in (("onnx", files.onnx), ("pt2", files.pt2)):
            direct = backends.load(path)
            for mode, inline in (("worker", False), ("inline", True)):
                rt.add_model(
                    f"{fmt}-{mode}",
                    path,
                    batching=aiarch.BatchConfig(
                        max_batch_size=64, max_delay_us=0, inline_execution=inline
                    ),
                )
            samples: dict[str, list[int]] = {"direct": [], "worker": [], "inline": []}
            for i in range(calls + 5):
                for key in samples:
                    t0 = time.perf_counter_ns()
                    if key == "direct":
                        direct(x)
                    else:
                        rt.infer_sync(f"{fmt}-{key}", x)
                    if i >= 5:  # warm-up calls excluded
                        samples[key].append(time.perf_counter_ns() - t0)
            med = {k: statistics.median(v) / 1e3 for k, v in samples.items()}
            for mode in ("worker", "inline"):
                overhead = (med[mode] - med["direct"]) / med["direct"]
                rows_out.append(
                    [
                        name,
                        fmt,
                        mode,
                        med["direct"],
                        med[mode],
                        med[mode] - med["direct"],
                        overhead * 100,
                    ]
                )
                results.append(
                    {
                        "model": name,
                        "format": fmt,
                        "execution": mode,
                        "calls": calls,
                        "direct_us_median": med["direct"],
                        "runtime_us_median": med[mode],
                        "overhead_fraction": overhead,
                    }
                )
    return rows_out, results


def resnet50_like() -> torch.nn.Module:
    """ResNet-50's layout (bottlenecks 3-4-6-3, widths 256..2048) without torchvision."""

    class Bottleneck(torch.nn.Module):
        def __init__(self, cin: int, mid: int, stride: int) -> None:
            super().__init__()
            cout = mid * 4
            self.body = torch.nn.Sequential(
                torch.nn.Conv2d(cin, mid, 1, bias=False),
                torch.nn.BatchNorm2d(mid),
                torch.nn.ReLU(),
                torch.nn.Conv2d(mid, mid, 3, stride, 1, bias=False),
                torch.nn.BatchNorm2d(mid),
                torch.nn.ReLU(),
                torch.nn.Conv2d(mid, cout, 1, bias=False),
                torch.nn.BatchNorm2d(cout),
            )
            self.skip = (
                torch.nn.Sequential(
                    torch.nn.Conv2d(cin, cout, 1, stride, bias=False), torch.nn.BatchNorm2d(cout)
                )
                if stride != 1 or cin != cout
                else torch.nn.Identity()
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(self.body(x) + self.skip(x))

    layers: list[torch.nn.Module] = [
        torch.nn.Conv2d(3, 64, 7, 2, 3, bias=False),
        torch.nn.BatchNorm2d(64),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(3, 2, 1),
    ]
    cin = 64
    for mid, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for i in range(blocks):
            layers.append(Bottleneck(cin, mid, stride if i == 0 else 1))
            cin = mid * 4
    layers += [torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(2048, 1000)]
    return torch.nn.Sequential(*layers).eval()


def gpu_case(
    label: str,
    model: torch.nn.Module,
    shape: tuple[int, ...],
    batch: int,
    seconds: float,
    rounds: int,
    tmp: Path,
    smoke: bool,
) -> tuple[list[Any], dict[str, Any]]:
    pt2 = export_model(model, torch.randn(2, *shape), tmp / label.split()[0], onnx=False).pt2
    # Bare: the same fp16 module captured in one graph, fed from pinned memory.
    dev_model = model.to("cuda", torch.float16)
    if len(shape) == 3:
        dev_model = dev_model.to(memory_format=torch.channels_last)
    static_in = torch.zeros((batch, *shape), device="cuda", dtype=torch.float16)
    host = torch.randn((batch, *shape)).pin_memory()
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream), torch.inference_mode():
        for _ in range(3):
            dev_model(static_in)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.inference_mode(), torch.cuda.graph(graph, stream=stream):
        static_out = dev_model(static_in)

    def bare() -> Any:
        with torch.cuda.stream(stream):
            static_in.copy_(host, non_blocking=True)
            graph.replay()
            out = static_out.float().cpu()
        stream.synchronize()
        return out

    x = host.numpy().copy()
    with aiarch.Runtime() as rt:
        rt.add_model(
            "g",
            pt2,
            device="cuda",
            precision="fp16",
            batching=aiarch.BatchConfig(
                max_batch_size=batch, max_delay_us=0, preferred_batch_sizes=(1, batch)
            ),
        )
        r = interleaved(
            {"bare graph": bare, "runtime": lambda: rt.infer_sync("g", x)}, batch, seconds, rounds
        )
        one = x[:1]
        lat = []
        for _ in range(20 if smoke else 200):
            t = time.perf_counter()
            rt.infer_sync("g", one)
            lat.append((time.perf_counter() - t) * 1e6)
    frac = r["runtime"] / r["bare graph"]
    p50 = statistics.median(lat)
    row = [label, batch, r["bare graph"], r["runtime"], frac * 100, p50]
    return row, {
        "model": label,
        "batch": batch,
        "rows_per_s": r,
        "fraction_of_bare": frac,
        "batch1_p50_us": p50,
    }


def gpu_section(
    seconds: float, rounds: int, tmp: Path, smoke: bool
) -> tuple[list[list[Any]], list[dict[str, Any]]]:
    """CUDA graphs through the Runtime vs a bare captured graph, fp16, at batch 256 (CNN and
    MLP); plus batch-1 end-to-end latency through the Runtime."""
    cases: list[tuple[str, torch.nn.Module, tuple[int, ...]]] = [
        ("mlp 64x256x256x16", mlp((64, 256, 256, 16)), (64,))
    ]
    if not smoke:
        cases.append(("resnet50-like 3x224x224", resnet50_like(), (3, 224, 224)))
    rows_out, results = [], []
    for label, model, shape in cases:
        row, res = gpu_case(label, model, shape, 256, seconds, rounds, tmp, smoke)
        rows_out.append(row)
        results.append(res)
    return rows_out, results


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--seconds", type=float, default=1.0, help="seconds per measurement round")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds per point (median)")
    ap.add_argument(
        "--threads", type=int, default=0, help="torch intra-op threads (0 = library default)"
    )
    ap.add_argument("--json", default="bench-results/bench_backends.json", help="JSON output path")
    ap.add_argument("--smoke", action="store_true", help="tiny run to check the script works")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    seconds = 0.05 if args.smoke else args.seconds
    rounds = 1 if args.smoke else args.rounds
    results: dict[str, Any] = {"seconds": seconds, "rounds": rounds}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        model_sets = (
            [((64, 256, 256, 16), [1, 64])]
            if args.smoke
            else [
                ((64, 256, 256, 16), [1, 64, 512]),
                ((512, 2048, 2048, 16), [1, 64, 512]),
            ]
        )
        rows: list[list[Any]] = []
        results["cpu"] = []
        for dims, batches in model_sets:
            r, res = cpu_section(dims, batches, seconds, rounds, tmp)
            rows += r
            results["cpu"].append(res)
        print_table(
            f"CPU throughput, rows/s ({torch.get_num_threads()} torch threads; ratio vs ONNX Runtime fp32)",
            ["model", "batch", "backend", "rows/s", "x ort fp32"],
            rows,
        )
        print_table(
            "INT8 accuracy vs fp32 on 1,024 held-out rows",
            ["model", "max |err|", "mean |err|", "top-1 agreement"],
            [
                [
                    c["model"],
                    c["int8_accuracy"]["max_abs_error"],
                    c["int8_accuracy"]["mean_abs_error"],
                    c["int8_accuracy"]["top1_agreement"],
                ]
                for c in results["cpu"]
            ],
        )
        ovh_dims = (
            [(64, 256, 256, 16)] if args.smoke else [(64, 256, 256, 16), (512, 2048, 2048, 16)]
        )
        rows = []
        results["runtime_overhead"] = []
        for dims in ovh_dims:
            calls = 20 if args.smoke else (2000 if dims[0] < 512 else 200)
            r, res = overhead_section(dims, calls, tmp)
            rows += r
            results["runtime_overhead"] += res
        print_table(
            "Runtime overhead at batch 64 (median call: one 64-row request through infer_sync vs the backend called directly, alternating)",
            ["model", "format", "execution", "direct us", "runtime us", "added us", "overhead %"],
            rows,
        )
        if torch.cuda.is_available():
            r, res = gpu_section(seconds, rounds, tmp, args.smoke)
            results["gpu"] = {"device": torch.cuda.get_device_name(), "cases": res}
            print_table(
                f"CUDA graphs through the Runtime vs a bare captured graph, fp16 ({torch.cuda.get_device_name()})",
                ["model", "batch", "bare rows/s", "runtime rows/s", "% of bare", "batch-1 p50 us"],
                r,
            )
        else:
            results["gpu"] = None
            print("\nGPU section skipped: torch sees no CUDA device.", file=sys.stderr)
    write_json(args.json, "bench_backends", results)


if __name__ == "__main__":
    main()
