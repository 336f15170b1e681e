"""The work behind `aiarch bench run | capacity | sweep` (imported by the CLI handler)."""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import math
import statistics
import sys
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path
from typing import Any

from aiarch.errors import AiarchError, InvalidArgumentError, NotFoundError, UnavailableError

from .capacity import (
    CapacityResult,
    CapacitySettings,
    GeneratorBehindError,
    find_capacity,
    replicas_needed,
    serve_process,
    sweep_configs,
)
from .load import COLUMNS, LoadSettings, Point, run_http, run_in_process
from .report import (
    ProgressBar,
    format_table,
    plot_latency_vs_rate,
    plot_throughput_vs_latency,
    run_metadata,
    write_csv,
    write_json,
)
from .target import build_request, load_payload, open_http_target, synthesize_body

__all__ = ["main"]

RunPoint = Callable[[LoadSettings], Point]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_BEHIND = 0, 1, 2, 3, 4


def main(args: argparse.Namespace) -> int:
    """Runs one `aiarch bench` subcommand; returns the exit status."""
    progress = ProgressBar(enabled=not args.quiet)
    try:
        with ExitStack() as stack:
            if args.bench_command == "run":
                return _run(args, progress, stack)
            if args.bench_command == "capacity":
                return _capacity(args, progress, stack)
            return _sweep(args, progress)
    except GeneratorBehindError as e:
        progress.close()
        print(f"aiarch bench: {e}", file=sys.stderr)
        return EXIT_BEHIND
    except InvalidArgumentError as e:
        progress.close()
        print(f"aiarch bench: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (UnavailableError, NotFoundError) as e:
        progress.close()
        print(f"aiarch bench: {e}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except AiarchError as e:
        progress.close()
        print(f"aiarch bench: {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_FAILED
    except ImportError as e:
        progress.close()
        print(f"aiarch bench: {e}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        progress.close()


# ------------------------------------------------------------------ targets


def _open_target(
    args: argparse.Namespace, progress: ProgressBar, stack: ExitStack
) -> tuple[RunPoint, str, str]:
    """(run one point, target description, model digest) for --url or --in-process."""
    url = getattr(args, "url", None)
    in_process = getattr(args, "in_process", None)
    if bool(url) == bool(in_process):
        raise InvalidArgumentError(
            "give exactly one target: --url URL --model NAME, or --in-process NAME=SOURCE"
        )
    if url:
        if not args.model:
            raise InvalidArgumentError("--url needs --model NAME")
        return _http_runner(url, args.model, args, progress)
    return _in_process_runner(str(in_process), args, progress, stack)


def _http_runner(
    url: str, model: str, args: argparse.Namespace, progress: ProgressBar
) -> tuple[RunPoint, str, str]:
    target = open_http_target(url, model)
    if args.payload:
        body, hlen = load_payload(args.payload)
    else:
        body, hlen = synthesize_body(
            target.inputs(), binary=args.binary, rows=args.rows, seed=args.seed
        )
    request = build_request(target, body, hlen)

    def run(settings: LoadSettings) -> Point:
        return run_http(target, [request], settings, progress.update)

    kind = "binary" if hlen is not None else "JSON"
    return run, f"{target.url} model {model} ({kind}, {len(body)} B body)", target.digest()


def _in_process_runner(
    spec: str, args: argparse.Namespace, progress: ProgressBar, stack: ExitStack
) -> tuple[RunPoint, str, str]:
    import numpy as np

    import aiarch
    from aiarch.serving.loader import parse_model_arg, resolve_source

    if args.payload:
        raise InvalidArgumentError(
            "--payload replays HTTP bodies; it does not apply to --in-process"
        )
    try:
        cfg = parse_model_arg(spec)
    except ValueError as e:
        raise InvalidArgumentError(f"--in-process: {e}") from None
    try:
        model = resolve_source(cfg.source)
    except (ImportError, AttributeError, OSError, ValueError) as e:
        raise InvalidArgumentError(f"--in-process: cannot load {cfg.source!r}: {e}") from None
    batching: dict[str, Any] = {}
    for key in ("max_batch_size", "max_delay_us", "instances"):
        value = getattr(args, key, None)
        if value is not None:
            batching[key] = value
    rt = stack.enter_context(aiarch.Runtime())
    rt.add_model(cfg.name, model, batching=aiarch.BatchConfig(**batching))
    info = rt.model_info(cfg.name)
    if not info.inputs:
        raise InvalidArgumentError(
            f"--in-process: model {cfg.name!r} declares no inputs (.inputs), so no payload can be made"
        )
    rng = np.random.default_rng(args.seed)
    arrays = []
    for s in info.inputs:
        shape = (args.rows, *s.shape)
        dtype = np.dtype(s.dtype) if s.dtype != "bfloat16" else np.dtype("float32")
        if dtype.kind == "f":
            arrays.append(rng.standard_normal(shape).astype(dtype))
        else:
            arrays.append(rng.integers(0, 2 if dtype.kind == "b" else 10, shape).astype(dtype))
    x: Any = arrays[0] if len(arrays) == 1 else tuple(arrays)

    def run(settings: LoadSettings) -> Point:
        return run_in_process(rt, cfg.name, x, settings, progress.update)

    return run, f"in-process {cfg.name} = {cfg.source}", _source_digest(cfg.source)


def _source_digest(source: str) -> str:
    """sha256 of the file a model source comes from (module or path), else of the string."""
    module_part = source.rpartition(":")[0]
    path: Path | None = None
    if module_part.endswith(".py"):
        path = Path(module_part)
    elif module_part:
        try:
            found = importlib.util.find_spec(module_part)
        except (ImportError, ValueError):
            found = None
        if found is not None and found.origin:
            path = Path(found.origin)
    h = hashlib.sha256()
    if path is not None and path.is_file():
        h.update(path.read_bytes())
    else:
        h.update(source.encode())
    return h.hexdigest()


def _load_settings(args: argparse.Namespace) -> LoadSettings:
    if not 0 < args.max_lag <= 1:
        raise InvalidArgumentError(f"--max-lag must be in (0, 1], got {args.max_lag}")
    return LoadSettings(
        connections=args.connections,
        threads=args.threads,
        seed=args.seed,
        max_lag_fraction=args.max_lag,
    )


def _capacity_settings(args: argparse.Namespace) -> CapacitySettings:
    cfg = CapacitySettings(
        slo_p99_ms=args.slo_p99_ms,
        repeats=args.repeats,
        window_s=args.window_s,
        warmup_s=args.warmup_s,
        tolerance=args.tolerance,
        start_rps=args.start_rps,
        max_rps=args.max_rps,
        max_error_rate=args.max_error_rate,
        mode=args.arrivals,
    )
    cfg.validate()
    if args.peak_rps is not None and not args.peak_rps > 0:
        raise InvalidArgumentError(f"--peak-rps must be > 0, got {args.peak_rps}")
    if not 0 <= args.headroom < 1:
        raise InvalidArgumentError(f"--headroom must be in [0, 1), got {args.headroom}")
    return cfg


# ------------------------------------------------------------------ run


def _table_row(p: Point) -> dict[str, Any]:
    row = p.row()
    if not p.valid:
        for c in COLUMNS:
            if "latency" in c or c in ("Inferences/Second", "Server Queue", "Server Compute Infer"):
                row[c] = ""
    row["Status"] = "ok" if p.valid else "REFUSED"
    return row


def _run(args: argparse.Namespace, progress: ProgressBar, stack: ExitStack) -> int:
    load = _load_settings(args)
    closed = args.mode == "closed"
    if closed:
        if args.rate:
            raise InvalidArgumentError("--mode closed takes --concurrency, not --rate")
        levels: list[float] = [float(c) for c in (args.concurrency or [1])]
    else:
        if args.concurrency:
            raise InvalidArgumentError("--concurrency is for --mode closed; open loop takes --rate")
        if not args.rate:
            raise InvalidArgumentError(
                "give --rate RPS (open loop) or --mode closed --concurrency N"
            )
        levels = list(args.rate)
    for v in levels:
        if not (v > 0 and math.isfinite(v)):
            raise InvalidArgumentError(f"rates and concurrencies must be > 0, got {v:g}")
    if args.duration_s <= 0 and args.requests <= 0:
        raise InvalidArgumentError("--duration-s must be > 0 (or give --requests)")
    run_point, description, digest = _open_target(args, progress, stack)
    points: list[Point] = []
    for k, level in enumerate(levels):
        settings = LoadSettings(
            mode=args.mode,
            rate=0.0 if closed else level,
            concurrency=int(level) if closed else 1,
            connections=int(level) if closed else load.connections,
            threads=load.threads,
            warmup_s=args.warmup_s,
            duration_s=args.duration_s,
            requests=args.requests,
            seed=load.seed,
            max_lag_fraction=load.max_lag_fraction,
        )
        progress.stage(f"[{k + 1}/{len(levels)}] {'concurrency' if closed else 'rate'} {level:g}")
        p = run_point(settings)
        points.append(p)
        progress.note(
            f"{'concurrency' if closed else 'rate'} {level:g}: "
            + (
                f"p99 {p.latency_us['p99'] / 1e3:.2f} ms, {p.throughput_rps:.1f} inf/s"
                if p.valid
                else f"REFUSED ({p.refused})"
            )
        )
    progress.close()
    columns = [c for c in COLUMNS if c != ("Request Rate" if closed else "Concurrency")] + [
        "Status"
    ]
    rows = [_table_row(p) for p in points]
    print(f"aiarch bench run: {description}")
    print(format_table(columns, rows))
    for p in points:
        if not p.valid:
            print(f"refused: {p.refused}")
        if p.errors:
            print(f"errors at {p.offered_rps or p.concurrency:g}: {p.errors}")
    meta = run_metadata(digest, description)
    if args.json:
        write_json(
            args.json, {"command": "run", "metadata": meta, "points": [p.to_dict() for p in points]}
        )
    if args.csv:
        write_csv(args.csv, columns, rows)
    if args.plot:
        valid = [p for p in points if p.valid and p.mode != "closed"]
        if valid:
            plot_latency_vs_rate(
                args.plot, [(p.offered_rps, p.latency_us) for p in valid], title=description
            )
        else:
            series = {
                "closed loop": [
                    (p.throughput_rps, p.latency_us["p99"] / 1e3) for p in points if p.valid
                ]
            }
            plot_throughput_vs_latency(args.plot, series, title=description)
    return EXIT_OK if all(p.valid for p in points) else EXIT_FAILED


# ------------------------------------------------------------------ capacity


def _mean_latency(windows: list[Point]) -> dict[str, float]:
    keys = windows[0].latency_us.keys()
    return {k: statistics.mean(w.latency_us[k] for w in windows) for k in keys}


def _capacity_summary(
    result: CapacityResult, args: argparse.Namespace
) -> tuple[list[str], dict[str, Any]]:
    lines = []
    extra: dict[str, Any] = {}
    best = result.at_capacity
    if best is None:
        lines.append(
            f"no probed rate met p99 <= {result.slo_p99_ms:g} ms "
            f"(lowest failing: {result.failing_rps:.1f} req/s)"
        )
        return lines, extra
    s = best.spread()
    fails = (
        "no failing rate up to --max-rps"
        if math.isinf(result.failing_rps)
        else f"fails at {result.failing_rps:,.1f}"
    )
    lines.append(
        f"capacity at p99 <= {result.slo_p99_ms:g} ms: {result.capacity_rps:,.1f} req/s "
        f"({fails}; {len(best.windows)} windows: p99 {s['p99_ms_median']:.2f} ms "
        f"[{s['p99_ms_min']:.2f} .. {s['p99_ms_max']:.2f}], throughput "
        f"{s['throughput_median']:,.1f} [{s['throughput_min']:,.1f} .. {s['throughput_max']:,.1f}] inf/s)"
    )
    if result.knee_rps:
        lines.append(f"knee (p99 doubles its low-load value past it): {result.knee_rps:,.1f} req/s")
    if args.peak_rps is not None:
        n = replicas_needed(args.peak_rps, result.capacity_rps, args.headroom)
        lines.append(
            f"replicas for {args.peak_rps:,.0f} req/s with {args.headroom:.0%} headroom: {n} "
            f"(each at <= {result.capacity_rps * (1 - args.headroom):,.1f} req/s)"
        )
        extra["replicas"] = {"peak_rps": args.peak_rps, "headroom": args.headroom, "replicas": n}
    return lines, extra


def _probe_rows(result: CapacityResult) -> list[dict[str, Any]]:
    rows = []
    for p in result.probes:
        s = p.spread()
        rows.append(
            {
                "Request Rate": p.rate,
                "p99 latency (ms, median)": s["p99_ms_median"],
                "p99 min": s["p99_ms_min"],
                "p99 max": s["p99_ms_max"],
                "Inferences/Second": s["throughput_median"],
                "Errors": sum(w.error_count for w in p.windows),
                "Verdict": "pass" if p.passed else "fail",
            }
        )
    return rows


_PROBE_COLUMNS = [
    "Request Rate",
    "p99 latency (ms, median)",
    "p99 min",
    "p99 max",
    "Inferences/Second",
    "Errors",
    "Verdict",
]


def _capacity(args: argparse.Namespace, progress: ProgressBar, stack: ExitStack) -> int:
    cfg = _capacity_settings(args)
    load = _load_settings(args)
    run_point, description, digest = _open_target(args, progress, stack)
    progress.stage("capacity")
    result = find_capacity(run_point, load, cfg, progress.note)
    progress.close()
    print(f"aiarch bench capacity: {description}")
    print(
        format_table(_PROBE_COLUMNS, sorted(_probe_rows(result), key=lambda r: r["Request Rate"]))
    )
    lines, extra = _capacity_summary(result, args)
    print("\n".join(lines))
    meta = run_metadata(digest, description)
    if args.json:
        write_json(
            args.json,
            {
                "command": "capacity",
                "metadata": meta,
                "settings": asdict(cfg),
                "result": result.to_dict(),
                **extra,
            },
        )
    if args.csv:
        rows = [{**w.row(), "Window": k} for p in result.probes for k, w in enumerate(p.windows)]
        write_csv(args.csv, [*COLUMNS, "Window"], rows)
    if args.plot and result.probes:
        plot_latency_vs_rate(
            args.plot,
            [(p.rate, _mean_latency(p.windows)) for p in result.probes],
            slo_ms=cfg.slo_p99_ms,
            knee_rps=result.knee_rps,
            capacity_rps=result.capacity_rps,
            title=description,
        )
    return EXIT_OK if result.capacity_rps > 0 else EXIT_FAILED


# ------------------------------------------------------------------ sweep


def _sweep(args: argparse.Namespace, progress: ProgressBar) -> int:
    cfg = _capacity_settings(args)
    load = _load_settings(args)
    if not args.model:
        raise InvalidArgumentError("sweep needs --model NAME (the name each server serves)")
    configs = sweep_configs(args.source, args.batch_sizes, args.delays_us, args.instance_counts)
    results: list[tuple[Any, CapacityResult | None, str]] = []
    for k, sc in enumerate(configs):
        progress.note(f"[{k + 1}/{len(configs)}] {sc.label()}")
        progress.stage(sc.label())
        try:
            with serve_process(args.model, sc, args.serve_arg) as url:
                run_point, _, _ = _http_runner(url, args.model, args, progress)
                results.append((sc, find_capacity(run_point, load, cfg, progress.note), ""))
        except GeneratorBehindError:
            raise
        except (UnavailableError, NotFoundError, InvalidArgumentError) as e:
            results.append((sc, None, str(e).splitlines()[0]))
            progress.note(f"  skipped: {e}")
    progress.close()
    rows = []
    for sc, r, err in results:
        best = r.at_capacity if r else None
        rows.append(
            {
                "Config": sc.label(),
                "Capacity (req/s)": r.capacity_rps if r else "",
                "Fails at": r.failing_rps if r else "",
                "p99 at capacity (ms)": best.p99_ms if best else "",
                "Inferences/Second": best.spread()["throughput_median"] if best else "",
                "Note": err,
            }
        )
    scored = [(r.capacity_rps, sc, r) for sc, r, _ in results if r and r.capacity_rps > 0]
    best_cfg = max(scored, key=lambda t: t[0]) if scored else None
    for row in rows:
        row["Best"] = "*" if best_cfg and row["Config"] == best_cfg[1].label() else ""
    columns = [
        "Config",
        "Capacity (req/s)",
        "Fails at",
        "p99 at capacity (ms)",
        "Inferences/Second",
        "Best",
        "Note",
    ]
    print(f"aiarch bench sweep: model {args.model}, SLO p99 <= {cfg.slo_p99_ms:g} ms")
    print(format_table(columns, rows))
    extra: dict[str, Any] = {}
    if best_cfg:
        print(f"best: {best_cfg[1].label()} at {best_cfg[0]:,.1f} req/s")
        lines, extra = _capacity_summary(best_cfg[2], args)
        for line in lines[1:]:
            print(line)
    else:
        print("no configuration met the SLO")
    digests = {s: _source_digest(s) for s in args.source}
    meta = run_metadata(
        ",".join(f"{s}={d[:16]}" for s, d in digests.items()), f"sweep {args.model}"
    )
    meta["model_digests"] = digests
    if args.json:
        write_json(
            args.json,
            {
                "command": "sweep",
                "metadata": meta,
                "settings": asdict(cfg),
                "configs": [
                    {
                        "config": asdict(sc),
                        "label": sc.label(),
                        "error": err,
                        "result": r.to_dict() if r else None,
                    }
                    for sc, r, err in results
                ],
                "best": best_cfg[1].label() if best_cfg else None,
                **extra,
            },
        )
    if args.csv:
        write_csv(args.csv, columns, rows)
    if args.plot:
        series = {
            sc.label(): [
                (statistics.median(w.throughput_rps for w in p.windows), p.p99_ms) for p in r.probes
            ]
            for sc, r, _ in results
            if r
        }
        plot_throughput_vs_latency(args.plot, series, slo_ms=cfg.slo_p99_ms)
    return EXIT_OK if best_cfg else EXIT_FAILED
