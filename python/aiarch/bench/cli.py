"""`aiarch bench run | capacity | sweep`: the argument parser (light; the work is imported by
the handler)."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_parser"]


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one value")
    return values


def _float_list(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}"
        ) from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one value")
    return values


def _target_args(p: argparse.ArgumentParser, *, sweep: bool = False) -> None:
    g = p.add_argument_group("target")
    if not sweep:
        g.add_argument("--url", metavar="URL", help="v2 HTTP server, e.g. http://127.0.0.1:8000")
        g.add_argument(
            "--in-process",
            metavar="NAME=SOURCE",
            help="load SOURCE into an in-process Runtime and call it directly (no HTTP), "
            "to separate the server's own overhead",
        )
    g.add_argument("--model", "-m", metavar="NAME", help="model name (with --url)")
    g.add_argument(
        "--payload",
        metavar="FILE[:HLEN]",
        help="replay this request body instead of synthesizing one from the model metadata "
        "(JSON; or a binary-extension body with its JSON header length)",
    )
    g.add_argument(
        "--binary",
        action="store_true",
        help="synthesize binary tensor bodies (KServe binary extension) instead of JSON",
    )
    g.add_argument(
        "--rows", type=_positive_int, default=1, help="rows per request (batch dim, default 1)"
    )
    if sweep:
        return
    b = p.add_argument_group("in-process batching (with --in-process)")
    b.add_argument("--max-batch-size", type=_positive_int, metavar="ROWS")
    b.add_argument("--max-delay-us", type=int, metavar="US")
    b.add_argument("--instances", type=_positive_int, metavar="N")


def _load_args(p: argparse.ArgumentParser, *, capacity: bool) -> None:
    g = p.add_argument_group("load generator")
    g.add_argument(
        "--connections",
        type=_positive_int,
        default=64,
        help="open-loop connection pool (default 64); a request due while all are busy waits",
    )
    g.add_argument("--threads", type=_positive_int, default=1, help="generator threads (default 1)")
    g.add_argument("--seed", type=int, default=1, help="Poisson arrival seed (default 1)")
    g.add_argument(
        "--max-lag",
        type=float,
        default=0.01,
        metavar="FRACTION",
        help="refuse a point whose mean send lag exceeds this fraction of the measurement "
        "interval (default 0.01)",
    )
    if not capacity:
        g.add_argument(
            "--mode",
            choices=["constant", "poisson", "closed"],
            default="constant",
            help="open loop at a constant or Poisson rate (latency from each intended send "
            "time), or closed loop at fixed concurrency (default constant)",
        )
        g.add_argument(
            "--rate",
            type=_float_list,
            metavar="RPS[,RPS...]",
            help="open-loop offered rate(s), requests/s; several give a latency-vs-rate curve",
        )
        g.add_argument(
            "--concurrency",
            type=_int_list,
            metavar="N[,N...]",
            help="closed-loop requests in flight",
        )
        g.add_argument("--warmup-s", type=float, default=1.0, help="warm-up (default 1 s)")
        g.add_argument(
            "--duration-s", type=float, default=5.0, help="measurement interval (default 5 s)"
        )
        g.add_argument(
            "--requests",
            type=int,
            default=0,
            help="measured requests per point (0 = bounded by --duration-s)",
        )


def _capacity_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("capacity search")
    g.add_argument(
        "--slo-p99-ms", type=float, required=True, help="p99 objective in ms (required, > 0)"
    )
    g.add_argument(
        "--arrivals",
        choices=["constant", "poisson"],
        default="constant",
        help="open-loop arrival process (default constant)",
    )
    g.add_argument(
        "--repeats", type=_positive_int, default=3, help="steady windows per rate (default 3)"
    )
    g.add_argument("--window-s", type=float, default=3.0, help="window length (default 3 s)")
    g.add_argument("--warmup-s", type=float, default=1.0, help="warm-up per rate (default 1 s)")
    g.add_argument(
        "--tolerance",
        type=float,
        default=0.05,
        help="stop when the pass/fail bracket is this narrow, relative (default 0.05)",
    )
    g.add_argument(
        "--start-rps",
        type=float,
        default=0.0,
        help="first upper bracket (default: closed-loop throughput probe + 20%%)",
    )
    g.add_argument("--max-rps", type=float, default=1e7, help="never offer more than this")
    g.add_argument(
        "--max-error-rate",
        type=float,
        default=0.001,
        help="largest tolerated failed fraction per window (default 0.001)",
    )
    g.add_argument("--peak-rps", type=float, help="peak rate to plan replicas for")
    g.add_argument(
        "--headroom",
        type=float,
        default=0.3,
        help="fraction of each replica's capacity kept free at peak (default 0.3)",
    )


def _output_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("output")
    g.add_argument("--json", metavar="PATH", help="write every result and the run metadata")
    g.add_argument("--csv", metavar="PATH", help="write the table (perf_analyzer column names)")
    g.add_argument("--plot", metavar="PNG", help="write a plot (needs matplotlib)")
    g.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr")


def add_parser(sub: Any) -> None:
    """Registers `aiarch bench` and its subcommands."""
    p = sub.add_parser(
        "bench",
        help="load-test a model: open-loop latency, capacity at a p99 SLO, replicas, sweeps",
        description=(
            "Load generator and capacity planner. Open loop: every request has an intended "
            "send time and its latency is measured from it (no coordinated omission); the "
            "generator reports its own send lag and refuses points where it fell behind. "
            "Columns use perf_analyzer's names (latencies in µs)."
        ),
    )
    bench_sub = p.add_subparsers(dest="bench_command", metavar="SUBCOMMAND")
    bench_sub.required = True
    fmt = argparse.RawDescriptionHelpFormatter

    run = bench_sub.add_parser(
        "run",
        help="measure latency and throughput at given rates or concurrencies",
        formatter_class=fmt,
        epilog=(
            "examples:\n"
            "  aiarch bench run --url http://127.0.0.1:8000 --model mlp --rate 1000\n"
            "  aiarch bench run --url http://127.0.0.1:8000 -m mlp --rate 500,1000,2000 "
            "--binary --plot lat.png\n"
            "  aiarch bench run --url http://127.0.0.1:8000 -m mlp --mode closed "
            "--concurrency 1,8,64\n"
            "  aiarch bench run --in-process mlp=benchmarks/server_mlp.py:mlp --rate 2000\n"
            "  aiarch bench run --url http://127.0.0.1:8000 -m mlp --payload body.json "
            "--rate 100 --json out.json --csv out.csv\n"
            "\n"
            "exit status: 0 ok, 1 a point was refused (generator fell behind), 2 bad "
            "arguments, 3 target unreachable or model unknown"
        ),
    )
    _target_args(run)
    _load_args(run, capacity=False)
    _output_args(run)
    run.set_defaults(handler=_handle)

    cap = bench_sub.add_parser(
        "capacity",
        help="highest rate whose p99 meets an SLO, and replicas for a peak",
        formatter_class=fmt,
        epilog=(
            "examples:\n"
            "  aiarch bench capacity --url http://127.0.0.1:8000 -m mlp --slo-p99-ms 10\n"
            "  aiarch bench capacity --url http://127.0.0.1:8000 -m mlp --slo-p99-ms 10 "
            "--peak-rps 50000 --headroom 0.3 --plot knee.png\n"
            "\n"
            "exit status: 0 ok, 1 no rate met the SLO, 2 bad arguments, 3 target "
            "unreachable or model unknown, 4 the generator could not keep the schedule"
        ),
    )
    _target_args(cap)
    _load_args(cap, capacity=True)
    _capacity_args(cap)
    _output_args(cap)
    cap.set_defaults(handler=_handle)

    sw = bench_sub.add_parser(
        "sweep",
        help="capacity of every server configuration (batch size, delay, instances, variants)",
        formatter_class=fmt,
        epilog=(
            "Each configuration runs in its own `aiarch serve` on a free loopback port.\n"
            "\n"
            "examples:\n"
            "  aiarch bench sweep -m mlp --source benchmarks/server_mlp.py:mlp "
            "--max-batch-size 1,16,64 --max-delay-us 0,500 --slo-p99-ms 10\n"
            "  aiarch bench sweep -m mlp --source pkg.models:mlp_fp32 --source "
            "pkg.models:mlp_int8 --instances 1,2 --slo-p99-ms 5 --plot sweep.png"
        ),
    )
    sw.add_argument(
        "--source",
        action="append",
        required=True,
        metavar="SOURCE",
        help="model source for `aiarch serve` (repeat for precision variants)",
    )
    sw.add_argument(
        "--batch-sizes",
        "--max-batch-size",
        dest="batch_sizes",
        type=_int_list,
        default=[64],
        help="max_batch_size values (default 64)",
    )
    sw.add_argument(
        "--delays-us",
        "--max-delay-us",
        dest="delays_us",
        type=_int_list,
        default=[0],
        help="max_delay_us values; 0 = no fill wait, the serving default (default 0)",
    )
    sw.add_argument(
        "--instance-counts",
        "--instances",
        dest="instance_counts",
        type=_int_list,
        default=[1],
        help="instances values (default 1)",
    )
    sw.add_argument(
        "--serve-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument for every `aiarch serve` (repeatable, e.g. --serve-arg=--workers=2)",
    )
    _target_args(sw, sweep=True)
    _load_args(sw, capacity=True)
    _capacity_args(sw)
    _output_args(sw)
    sw.set_defaults(handler=_handle)


def _handle(args: argparse.Namespace) -> int:
    from .commands import main

    return main(args)
