"""The `aiarch` command line: `aiarch <command> [options]`.

Each command lives in a `_add_<command>` function that registers a subparser and sets
`handler`; adding a command is adding one such function to `_COMMANDS`. Heavy imports happen
inside handlers so `aiarch --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import io
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from aiarch.backends.base import COMPILE_MODES

__all__ = ["build_parser", "main"]


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return value


def _add_serve(sub: Any) -> None:
    p = sub.add_parser(
        "serve",
        help="run the HTTP inference server (KServe v2 REST + /predict + /metrics)",
        description=(
            "Serve models over HTTP/1.1 with the KServe v2 / Open Inference Protocol (JSON and "
            "binary tensors; works with tritonclient.http and perf_analyzer), a simple "
            "POST /predict/{model} JSON endpoint and Prometheus /metrics. Requests go through "
            "the aiarch Runtime: dynamic batching, response cache, latency histograms."
        ),
        epilog=(
            "examples:\n"
            "  aiarch serve --model mlp=mypkg.models:mlp\n"
            "  aiarch serve --model mlp=model.onnx --model cnn=cnn.pt2 --device cuda --precision fp16\n"
            "  aiarch serve --model mlp=./model.py:mlp --max-batch-size 64 --max-delay-us 300\n"
            "  aiarch serve --config serve.toml --workers 2 --port 8080\n"
            "  aiarch serve --model fraud@production  # registry; follows the alias as it moves\n"
            "  aiarch serve --route fraud=production:90,staging:10 --shadow fraud@candidate:0.2\n"
            "\n"
            "config file (TOML or JSON):\n"
            "  [server]\n"
            "  port = 8000\n"
            "  [models.mlp]\n"
            '  source = "mypkg.models:mlp"\n'
            "  batching = { max_batch_size = 64, max_queue_rows = 4096 }\n"
            "  cache = { max_bytes = 67108864, ttl_s = 30.0 }\n"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g = p.add_argument_group("models")
    g.add_argument(
        "--model",
        "-m",
        action="append",
        default=[],
        metavar="NAME=SOURCE",
        help="model to load; SOURCE is a model file (.onnx, .pt2 torch.export, .pt TorchScript, "
        ".engine TensorRT) or 'package.module:attr' / 'path/file.py:attr' (a callable called "
        "once per batch, optionally with .inputs/.outputs); repeatable",
    )
    g.add_argument(
        "--device",
        metavar="DEV",
        help="where model files run: cpu (default) or cuda[:N]",
    )
    g.add_argument(
        "--precision",
        choices=["fp32", "fp16", "bf16", "fp8", "int8"],
        help="for model files: fp16/bf16/fp8 cast a torch model on CUDA; with --backend "
        "tensorrt, the engine's precision (int8/fp8 need a Q/DQ model from `aiarch quantize`)",
    )
    g.add_argument(
        "--compile",
        choices=list(COMPILE_MODES),
        metavar="MODE",
        help="torch.compile .pt2 models in MODE (default, reduce-overhead, max-autotune): one "
        "program per batch-size bucket, compiled before the model is ready; compiled code is "
        "reused across restarts through inductor's cache ($TORCHINDUCTOR_CACHE_DIR)",
    )
    g.add_argument(
        "--backend",
        choices=["tensorrt"],
        help="run .onnx files through a TensorRT engine (built once, cached) instead of "
        "ONNX Runtime",
    )
    g.add_argument(
        "--registry",
        metavar="URL",
        help="model registry for NAME@ALIAS models (default: "
        "$AIARCH_REGISTRY, else SQLite under $AIARCH_HOME)",
    )
    g.add_argument(
        "--artifacts",
        metavar="URL",
        help="where registry artifacts live, e.g. s3://bucket/prefix (default: "
        "$AIARCH_ARTIFACTS, else files under $AIARCH_HOME)",
    )
    g.add_argument(
        "--registry-poll",
        type=float,
        metavar="S",
        help="seconds between reads of the aliases and the model's rollout step (default 1)",
    )
    g.add_argument(
        "--route",
        action="append",
        default=[],
        metavar="NAME=ARM:W,...",
        help="canary split of a registry model, e.g. fraud=production:90,staging:10 (sticky "
        "per X-Route-Key header / route_key parameter); repeatable",
    )
    g.add_argument(
        "--shadow",
        action="append",
        default=[],
        metavar="NAME@ALIAS[:FRACTION]",
        help="mirror a sample (default 0.1) of NAME's requests to another version; the "
        "response never depends on it; repeatable",
    )
    g.add_argument(
        "--config",
        "-c",
        metavar="FILE",
        help="TOML or JSON file with [server] options and [models.NAME] tables",
    )
    b = p.add_argument_group("batching and cache (defaults for every --model)")
    b.add_argument(
        "--max-batch-size",
        type=_positive_int,
        metavar="ROWS",
        help="most rows per batch (runtime default 64)",
    )
    b.add_argument(
        "--max-delay-us",
        type=int,
        metavar="US",
        help="fixed wait to fill a batch even while the model is idle (runtime default 0: "
        "a request that finds the model idle runs at once, and batches form from what "
        "queues while it is busy); a wait pays only for fuller GPU batches under steady load",
    )
    b.add_argument(
        "--max-queue-rows",
        type=_positive_int,
        metavar="ROWS",
        help="admission bound per model; beyond it requests get 429 + Retry-After "
        "(runtime default 4096)",
    )
    b.add_argument(
        "--instances",
        type=_positive_int,
        metavar="N",
        help="batches executing at once per model (runtime default 1)",
    )
    b.add_argument(
        "--inline-execution",
        choices=["on", "off"],
        help="run a batch on the event loop when a submit closes it (on: no thread "
        "hand-off, best for GIL-holding numpy models; off: a batcher thread runs "
        "it, best for slow models or ones that release the GIL, e.g. torch)",
    )
    b.add_argument(
        "--cache-mb", type=float, metavar="MB", help="enable the response cache with this budget"
    )
    b.add_argument(
        "--cache-ttl-s", type=float, metavar="S", help="cache entry lifetime (0 = no expiry)"
    )
    s = p.add_argument_group("server")
    s.add_argument("--host", help="address to bind (default 127.0.0.1)")
    s.add_argument("--port", type=int, help="TCP port (default 8000; 0 = any free port)")
    s.add_argument(
        "--grpc-port",
        type=int,
        metavar="PORT",
        help="also serve the KServe v2 gRPC service on this port (default: no gRPC)",
    )
    s.add_argument(
        "--workers",
        "-w",
        type=_positive_int,
        help="processes accepting on one listening socket, each with its own runtime (default 1)",
    )
    s.add_argument(
        "--auth-token",
        metavar="TOKEN",
        help="bearer token for repository calls (or env AIARCH_AUTH_TOKEN); required for "
        "them when --host is not loopback, and always with --allow-repository-load/--model-root",
    )
    s.add_argument(
        "--model-root",
        action="append",
        default=[],
        metavar="DIR",
        help="let clients (with the token) load model files inside DIR through "
        "POST /v2/repository/models/NAME/load with a config; repeatable",
    )
    s.add_argument(
        "--allow-repository-load",
        action="store_true",
        default=None,
        help="let clients (with the token) load models from any source they send, including "
        "Python code (module:attr, file.py:attr) that then runs in the server",
    )
    s.add_argument(
        "--header-timeout-s",
        type=float,
        metavar="S",
        help="a request's headers must arrive within S seconds, else 408 (default 10)",
    )
    s.add_argument(
        "--body-timeout-s",
        type=float,
        metavar="S",
        help="a request's body must arrive within S seconds of its headers, else 408 (default 60)",
    )
    s.add_argument(
        "--idle-timeout-s",
        type=float,
        metavar="S",
        help="close a kept-alive connection that sends nothing for S seconds (default 75)",
    )
    s.add_argument(
        "--max-connections",
        type=_positive_int,
        metavar="N",
        help="open connections per worker; more get 503 (default 10000)",
    )
    s.add_argument(
        "--max-connections-per-ip",
        type=_positive_int,
        metavar="N",
        help="open connections per client address per worker; more get 503 (default 1000)",
    )
    s.add_argument(
        "--request-timeout-s",
        type=float,
        metavar="S",
        help="default deadline for requests that carry none",
    )
    s.add_argument(
        "--drain-timeout-s",
        type=float,
        metavar="S",
        help="on SIGTERM/SIGINT, how long in-flight requests may finish (default 30)",
    )
    s.add_argument(
        "--max-body-mb",
        type=float,
        metavar="MB",
        help="largest request body; larger gets 413 (default 64)",
    )
    s.add_argument(
        "--log-level", choices=["debug", "info", "warning", "error"], help="default info"
    )
    s.add_argument(
        "--trace-sample",
        type=float,
        metavar="RATE",
        help="trace this fraction of requests with OpenTelemetry (e.g. 0.01), plus those whose "
        "traceparent asks for it; default $AIARCH_TRACE_SAMPLE, else off",
    )
    s.add_argument(
        "--http",
        choices=["native", "python"],
        help="HTTP front end: native (default; v2 infer parsed, batched and encoded in C++) "
        "or python (httptools, every request in Python)",
    )
    s.add_argument("--runtime", help=argparse.SUPPRESS)  # module:attr of a Runtime factory
    p.set_defaults(handler=_serve)


def _serve_config(args: argparse.Namespace) -> Any:
    from .serving.config import ModelConfig, ServeConfig, load_config_file
    from .serving.loader import parse_model_arg

    cfg = ServeConfig()
    models: list[ModelConfig] = []
    if args.config:
        server, models = load_config_file(args.config)
        for key, value in server.items():
            setattr(cfg, key, value)
    flag_models = [parse_model_arg(m) for m in args.model]
    names = {m.name for m in flag_models}
    models = [m for m in models if m.name not in names] + flag_models
    if args.registry:
        cfg.registry = args.registry
    if args.artifacts:
        cfg.artifacts = args.artifacts
    if args.registry_poll is not None:
        if not args.registry_poll > 0:
            raise ValueError(
                f"--registry-poll must be a positive number of seconds, got {args.registry_poll}"
            )
        cfg.registry_poll_s = args.registry_poll
    for spec in args.route:
        name, sep, arms = spec.partition("=")
        if not sep:
            raise ValueError(f"--route expects NAME=ARM:WEIGHT,..., got {spec!r}")
        cfg.routes[name.strip()] = arms
    for spec in args.shadow:
        cfg.shadows[spec.partition("@")[0].partition("/")[0]] = spec
    if cfg.routes or cfg.shadows:
        from .serving.routing import prepare_routes

        cfg.models = models
        prepare_routes(cfg)
    batching: dict[str, Any] = {}
    for flag, key in (
        ("max_batch_size", "max_batch_size"),
        ("max_delay_us", "max_delay_us"),
        ("max_queue_rows", "max_queue_rows"),
        ("instances", "instances"),
    ):
        value = getattr(args, flag)
        if value is not None:
            batching[key] = value
    if args.inline_execution is not None:
        batching["inline_execution"] = args.inline_execution == "on"
    cache: dict[str, Any] | None = None
    if args.cache_mb is not None:
        cache = {"max_bytes": int(args.cache_mb * (1 << 20))}
        if args.cache_ttl_s is not None:
            cache["ttl_s"] = args.cache_ttl_s
    for m in models:
        m.batching = {**batching, **m.batching}
        if m.cache is None and cache is not None:
            m.cache = dict(cache)
        for flag in ("device", "precision", "backend", "compile"):
            if getattr(m, flag) is None and getattr(args, flag) is not None:
                setattr(m, flag, getattr(args, flag))
    cfg.models = models
    for flag in (
        "host",
        "port",
        "grpc_port",
        "workers",
        "auth_token",
        "request_timeout_s",
        "drain_timeout_s",
        "log_level",
        "http",
        "trace_sample",
    ):
        value = getattr(args, flag)
        if value is not None:
            setattr(cfg, flag, value)
    if args.runtime:
        cfg.runtime_factory = args.runtime
    if args.max_body_mb is not None:
        cfg.limits.max_body_bytes = int(args.max_body_mb * (1 << 20))
    for flag in (
        "header_timeout_s",
        "body_timeout_s",
        "idle_timeout_s",
        "max_connections",
        "max_connections_per_ip",
    ):
        value = getattr(args, flag)
        if value is not None:
            setattr(cfg.limits, flag, value)
    if args.allow_repository_load:
        cfg.allow_repository_load = True
    if args.model_root:
        cfg.model_roots = [*cfg.model_roots, *args.model_root]
    cfg.validate()
    return cfg


def _serve(args: argparse.Namespace) -> int:
    from .serving.server import run

    try:
        cfg = _serve_config(args)
    except (ValueError, OSError) as e:
        print(f"aiarch serve: {e}", file=sys.stderr)
        return 2
    if not cfg.models:
        print(
            "aiarch serve: no models given (use --model NAME=SOURCE or --config FILE); "
            "starting with an empty repository",
            file=sys.stderr,
        )
    return run(cfg)


def _add_quantize(sub: Any) -> None:
    p = sub.add_parser(
        "quantize",
        help="make an INT8 (Q/DQ) ONNX model from calibration data and report its accuracy",
        description=(
            "Static INT8 quantization with ONNX Runtime: per-channel INT8 weights, activation "
            "ranges from calibration data, written as an explicit Q/DQ model that runs on ONNX "
            "Runtime (CPU) and TensorRT (GPU). Then compares the INT8 model with the fp32 one "
            "on held-out rows: max/mean absolute error and, for classifiers, top-1 agreement."
        ),
        epilog=(
            "examples:\n"
            "  aiarch quantize model.onnx --calibration calib.npy --out model.int8.onnx\n"
            "  aiarch quantize model.onnx --calibration calib.npz --eval heldout.npz "
            "--method entropy --json\n"
            "\n"
            ".npy holds the rows of a single-input model; .npz one array per input name."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", help="fp32 ONNX model")
    p.add_argument(
        "--calibration", required=True, metavar="FILE", help="representative inputs (.npy/.npz)"
    )
    p.add_argument(
        "--eval",
        metavar="FILE",
        help="held-out inputs for the accuracy report (default: the last fifth of --calibration)",
    )
    p.add_argument(
        "--method",
        choices=["minmax", "entropy", "percentile"],
        default="minmax",
        help="how activation ranges are chosen (default minmax)",
    )
    p.add_argument("--out", "-o", metavar="FILE", help="output path (default MODEL.int8.onnx)")
    p.add_argument(
        "--asymmetric",
        action="store_true",
        help="unsigned activations: fastest on ONNX Runtime x86, not accepted by TensorRT",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(handler=_quantize)


def _quantize(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from .errors import AiarchError
    from .quantize import load_samples, quantize_onnx

    out = args.out or str(Path(args.model).with_suffix(".int8.onnx"))
    try:
        calib = load_samples(args.calibration)
        held = load_samples(args.eval) if args.eval else None
        if not args.json:
            print(
                f"calibrating {args.model} with {args.calibration} ({args.method}) ...",
                file=sys.stderr,
            )
        result = quantize_onnx(
            args.model,
            calib,
            out,
            method=args.method,
            evaluation=held,
            symmetric=not args.asymmetric,
        )
    except AiarchError as e:
        print(f"aiarch quantize: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    r = result.report
    rows = [
        ("output", result.output),
        ("method", result.method),
        ("calibration rows", str(result.calibration_samples)),
        ("quantized tensors", str(result.quantized_nodes)),
        ("held-out rows", str(r.samples)),
        ("max |int8 - fp32|", f"{r.max_abs_error:.6g}"),
        ("mean |int8 - fp32|", f"{r.mean_abs_error:.6g}"),
        ("top-1 agreement", "n/a" if r.top1_agreement is None else f"{r.top1_agreement:.2%}"),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    return 0


def _package_command(module: str) -> Callable[[Any], None]:
    """The `add_parser(subparsers)` of a command that lives in its own package's `cli` module
    (kept light: the package's heavy imports happen inside its handlers)."""

    def add(sub: Any) -> None:
        importlib.import_module(module).add_parser(sub)

    return add


# One entry per command, in the order `aiarch --help` lists them. Commands that live in
# their own package expose `add_parser(subparsers)` from a light `cli` module.
_COMMANDS: list[Callable[[Any], None]] = [
    _add_serve,
    _add_quantize,
    _package_command("aiarch.registry.cli"),
    _package_command("aiarch.rollout.cli"),
    _package_command("aiarch.features.cli"),
    _package_command("aiarch.monitor.cli"),
    _package_command("aiarch.bench.cli"),
    _package_command("aiarch.train.cli"),
    _package_command("aiarch.retrain.cli"),
    _package_command("aiarch.demo.cli"),
]


def build_parser() -> argparse.ArgumentParser:
    """The full `aiarch` parser (one subparser per command)."""
    parser = argparse.ArgumentParser(
        prog="aiarch",
        description="aiarch: ML inference runtime with a native batching core.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for add in _COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """`aiarch` entry point; returns the process exit code."""
    args = build_parser().parse_args(argv)
    json_out = getattr(args, "json", None)
    if not json_out:
        return int(args.handler(args) or 0)
    return _run_with_json_errors(args, json_out)


class _StreamCopy(io.TextIOBase):
    """Passes writes through to a real stream and keeps a copy, so a failure's message can
    be repeated as JSON and a result already printed is never followed by an error object."""

    def __init__(self, target: Any) -> None:
        self.target = target
        self.parts: list[str] = []

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.parts.append(text)
        return int(self.target.write(text))

    def flush(self) -> None:
        self.target.flush()

    @property
    def written(self) -> bool:
        return any(p.strip() for p in self.parts)

    def error_message(self) -> str:
        """The last message starting "aiarch ...", with its continuation lines, else the last
        line written."""
        lines = [line.strip() for line in "".join(self.parts).splitlines() if line.strip()]
        for i in range(len(lines) - 1, -1, -1):
            if lines[i].startswith("aiarch "):
                return " ".join(lines[i:])
        return lines[-1] if lines else ""


def _mtime(path: str) -> float | None:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return None


def _run_with_json_errors(args: argparse.Namespace, json_out: Any) -> int:
    """Runs a command given `--json`. When it fails without producing its JSON (nothing on
    stdout for `--json`; the file not written for `--json PATH`), a JSON error object goes to
    stdout (and to the PATH) and the exit code stays non-zero, so a script that parses the
    output never reads an empty or stale result. A command that printed its result keeps its
    own exit code meaning (e.g. `monitor report` exits 1 when drift is detected)."""
    import contextlib
    import json
    import traceback

    to_file = isinstance(json_out, str)
    before = _mtime(json_out) if to_file else None
    out, err = _StreamCopy(sys.stdout), _StreamCopy(sys.stderr)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = int(args.handler(args) or 0)
        message = err.error_message()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
        message = err.error_message() or str(e.code or "")
    except Exception as e:
        traceback.print_exc()
        code, message = 1, f"{type(e).__name__}: {e}"
    produced = (_mtime(json_out) not in (None, before)) if to_file else out.written
    if code == 0 or produced:
        return code
    sub = getattr(args, f"{args.command}_command", None)  # e.g. `models_command` = "list"
    command = f"{args.command} {sub}" if sub else str(args.command)
    doc = {
        "error": message or f"aiarch {command} failed",
        "command": command,
        "exit_code": code,
    }
    text = json.dumps(doc)
    print(text)
    if to_file:
        with contextlib.suppress(OSError):
            with open(json_out, "w") as f:
                f.write(text + "\n")
    return code


if __name__ == "__main__":
    sys.exit(main())
