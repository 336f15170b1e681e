"""The steps of `aiarch demo`, each a real use of one part of aiarch, printed as it goes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aiarch.serving.process import ServerProcess, free_port

from .data import CARD_FEATURES, MODEL_FEATURES, generate, model_inputs

MODEL = "fraud"
STEPS = 10


@dataclass
class DemoOptions:
    home: Path
    nproc: int = 2
    epochs: int = 6
    duration_s: float | None = None
    """Serve this long after the report, then stop; None serves until Ctrl-C."""
    serve: bool = True
    bench_window_s: float = 1.0
    slo_p99_ms: float = 50.0
    port: int = 0


def _step(n: int, title: str) -> None:
    print(f"\n[{n}/{STEPS}] {title}", flush=True)


def _table(columns: list[str], rows: list[list[Any]]) -> None:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:,.3f}" if abs(v) < 100 else f"{v:,.0f}"
        return str(v)

    cells = [[fmt(v) for v in r] for r in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print("  " + "  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    print("  " + "  ".join("-" * w for w in widths))
    for r in cells:
        print("  " + "  ".join(v.ljust(w) for v, w in zip(r, widths)))


def _aiarch(*args: str) -> list[str]:
    return [sys.executable, "-m", "aiarch", *args]


def run(opts: DemoOptions) -> int:
    # Subprocess output (training, benchmark) interleaves with ours: flush each line.
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)
    home = opts.home.resolve()
    if home.exists() and (home / ".aiarch-demo").exists():
        shutil.rmtree(home)  # a previous demo's folder: start fresh
    elif home.exists() and any(home.iterdir()):
        print(
            f"aiarch demo: {home} exists and is not a demo folder; pick another --home",
            file=sys.stderr,
        )
        return 2
    home.mkdir(parents=True, exist_ok=True)
    (home / ".aiarch-demo").touch()
    os.environ["AIARCH_HOME"] = str(home)
    out = home / "demo"
    out.mkdir()
    t0 = time.perf_counter()

    # 1. data ---------------------------------------------------------------------------
    _step(1, "synthetic card-fraud data (entity id = card)")
    data = generate()
    import pyarrow as pa
    import pyarrow.parquet as pq

    snap = dict(data.card_snapshots)
    snap["event_timestamp"] = snap["event_timestamp"].astype("datetime64[ns]")
    features_parquet = out / "card_stats.parquet"
    pq.write_table(pa.table(snap), features_parquet)
    tx = data.transactions
    print(
        f"  {len(tx['card']):,} transactions on {len(np.unique(tx['card'])):,} cards, fraud rate "
        f"{tx['label'].mean():.1%}; daily card features → {features_parquet}"
    )

    # 2. features -------------------------------------------------------------------------
    _step(2, "feature view, materialized to the native online store")
    from aiarch.features import Entity, Feature, FeatureStore, FeatureView

    store = FeatureStore(f"native://{home / 'online'}")
    view = FeatureView(
        "card_stats",
        "card",
        tuple(Feature(f) for f in CARD_FEATURES),
        source=str(features_parquet),
        ttl=3 * 86_400,
    )
    store.apply(Entity("card"), view)
    store.materialize("card_stats", progress=False)
    refs = [f"card_stats:{f}" for f in CARD_FEATURES]
    plan = store.plan(refs)
    ids = np.unique(tx["card"])[:100]
    lat1, lat100 = [], []
    for i in range(2000):
        t = time.perf_counter_ns()
        plan.get(ids[i % 100 : i % 100 + 1])
        lat1.append(time.perf_counter_ns() - t)
        t = time.perf_counter_ns()
        plan.get(ids)
        lat100.append(time.perf_counter_ns() - t)
    _table(
        ["lookup (4 features)", "p50 us", "p99 us"],
        [
            [
                f"{n} entit{'y' if n == 1 else 'ies'}",
                np.percentile(v, 50) / 1e3,
                np.percentile(v, 99) / 1e3,
            ]
            for n, v in ((1, lat1), (100, lat100))
        ],
    )

    # 3. training set ---------------------------------------------------------------------
    _step(3, "point-in-time-correct training set (DuckDB ASOF join)")
    entity_rows = {
        "card": tx["card"],
        "event_timestamp": tx["event_timestamp"].astype("datetime64[ns]"),
    }
    table = store.training_set(entity_rows, refs)
    card_x = np.column_stack([table.column(r).to_numpy().astype(np.float32) for r in refs])
    x = model_inputs(tx["amount"], card_x)
    y = tx["label"]
    data_file = out / "train.npz"
    np.savez(data_file, x=x, y=y)
    print(
        f"  {len(x):,} rows x {len(MODEL_FEATURES)} features {list(MODEL_FEATURES)} → {data_file}"
    )

    # 4. training -------------------------------------------------------------------------
    _step(4, f"aiarch train --nproc {opts.nproc} (DDP on gloo, checkpoints, one registry entry)")
    script = Path(__file__).with_name("train_fraud.py")
    cmd = _aiarch(
        "train",
        str(script),
        "--nproc",
        str(opts.nproc),
        "--",
        str(data_file),
        MODEL,
        str(opts.epochs),
    )
    print("  $ aiarch train " + " ".join(cmd[4:]))
    proc = subprocess.run(cmd, timeout=900)
    if proc.returncode != 0:
        print(f"aiarch demo: training failed (exit {proc.returncode})", file=sys.stderr)
        return 1

    # 5. registry + quantization ----------------------------------------------------------
    _step(5, "registry: promote to production; INT8 variant to staging")
    from aiarch.quantize import quantize_onnx
    from aiarch.registry import Registry

    reg = Registry()
    v1 = reg.get(MODEL)  # the version the training job registered (the latest)
    reg.promote(
        MODEL, v1.version, to="production", gates="metrics.auc >= 0.6", reason="demo: trained model"
    )
    onnx_path = Path(v1.lineage["artifacts"]["onnx"]["path"])
    int8_path = out / "fraud.int8.onnx"
    calib = x[: min(len(x), 1024)]
    q = quantize_onnx(onnx_path, {"": calib}, int8_path, evaluation={"": x[-2000:]})
    v2 = reg.register(
        MODEL,
        int8_path,
        format="onnx",
        metrics={**v1.metrics, "int8_top1_agreement": q.report.top1_agreement or 0.0},
        params={**v1.params, "precision": "int8"},
        tags={**v1.tags, "derived_from": str(v1.version)},
        lineage={"quantized_from": v1.uri, "method": q.method},
        reference=reg.load_reference(MODEL, v1.version),
    )
    reg.promote(MODEL, v2.version, to="staging", reason="demo: INT8 candidate")
    print(
        f"  INT8 vs fp32 on 2,000 held-out rows: max |err| {q.report.max_abs_error:.4f}, "
        f"top-1 agreement {q.report.top1_agreement:.2%}"
    )
    _table(
        ["version", "format", "auc", "digest", "aliases"],
        [
            [
                v.version,
                v.format,
                v.metrics.get("auc", float("nan")),
                v.digest[:12],
                ",".join(
                    a for a in ("production", "staging") if reg.alias_version(MODEL, a) == v.version
                ),
            ]
            for v in reg.list_versions(MODEL)
        ],
    )
    print("  alias history:")
    _table(
        ["when", "alias", "action", "from", "to", "who", "reason"],
        [
            [
                time.strftime("%H:%M:%S", time.localtime(h.at)),
                h.alias,
                h.action,
                h.from_version if h.from_version is not None else "-",
                h.to_version,
                h.actor,
                h.reason,
            ]
            for h in reg.history(MODEL)
        ],
    )

    # 6-7. serve and benchmark ------------------------------------------------------------
    server = None
    port = opts.port or free_port()
    if opts.serve:
        _step(6, "aiarch serve with a 90/10 canary between production and staging")
        server = ServerProcess(
            ["--route", f"{MODEL}=production:90,staging:10", "--log-level", "warning"],
            out / "server.log",
            port=port,
        )
        try:
            server.wait_ready(120)
            with urllib.request.urlopen(
                f"http://127.0.0.1:{port}/v2/models/{MODEL}", timeout=10
            ) as r:
                input_name = json.loads(r.read())["inputs"][0]["name"]
            body = _infer_body(input_name, x[0])
            for _ in range(200):
                _post(port, f"/v2/models/{MODEL}/infer", body)
            print(f"  serving on http://127.0.0.1:{port}; 200 requests sent, split by the canary:")
            _table(["arm", "version", "requests"], _route_counts(port))
            _step(7, f"aiarch bench capacity (p99 SLO {opts.slo_p99_ms:g} ms, short windows)")
            _bench(port, out, opts)
        except BaseException:
            server.stop()
            raise
    else:
        print(
            f"\n[6/{STEPS}] serving skipped (--no-serve)\n[7/{STEPS}] benchmark skipped (--no-serve)"
        )

    # 8. drift ----------------------------------------------------------------------------
    _step(8, "drift: a normal window, then a shifted one, against the stored reference profile")
    drift_png = out / "drift.png"
    _drift(reg, v1, x, drift_png)

    # 9-10. the closed loop, then a bad candidate --------------------------------------------
    if opts.serve:
        _step(
            9, "closed loop: the data shifts, labels come back, the policy retrains and rolls out"
        )
        from .loop_step import closed_loop
        from .rollout_step import bad_candidate_rolled_back, plot_rollouts

        loop = closed_loop(reg, MODEL, out)
        try:
            _step(10, "progressive rollout of a candidate made bad on purpose: automatic rollback")
            bad = bad_candidate_rolled_back(reg, MODEL, loop.traffic.x, out, [loop.server.base])
        finally:
            loop.traffic.stop()
            loop.server.stop()
        plot_rollouts([(loop.rollout, loop.observations), bad], out / "rollout.png")
        print(f"  route weights and per-arm error rate, p99 and online AUC → {out / 'rollout.png'}")
    else:
        print(f"\n[9/{STEPS}] closed loop skipped (--no-serve)")
        print(f"[10/{STEPS}] rollout skipped (--no-serve)")

    print(f"\ndone in {time.perf_counter() - t0:.0f} s. Files under {out}:")
    for p in sorted(out.iterdir()):
        if p.suffix in (".png", ".json"):
            print(f"  {p}")
    if server is None:
        return 0
    try:
        curl = f"curl -s localhost:{port}/v2/models/{MODEL}/infer -d '{body.decode()}'"
        print(f"\nserving {MODEL} at http://127.0.0.1:{port}  (metrics: /metrics)\n  {curl}")
        if opts.duration_s is None:
            print("Ctrl-C to stop.")
            server.proc.wait()
        else:
            server.proc.wait(timeout=opts.duration_s)
    except subprocess.TimeoutExpired:
        pass
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


def _infer_body(input_name: str, row: np.ndarray) -> bytes:
    """A one-row KServe v2 JSON request."""
    tensor = {
        "name": input_name,
        "shape": [1, len(row)],
        "datatype": "FP32",
        "data": [round(float(v), 4) for v in row],
    }
    return json.dumps({"inputs": [tensor]}).encode()


def _post(port: int, path: str, body: bytes) -> Any:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=body,
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def _route_counts(port: int) -> list[list[Any]]:
    """Requests per canary arm, from the server's Prometheus text."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    rows = []
    for family in text_string_to_metric_families(text):
        if family.name == "aiarch_route_requests":
            for sample in family.samples:
                if sample.name.endswith("_total") and sample.labels.get("model") == MODEL:
                    rows.append([sample.labels["arm"], sample.labels["version"], int(sample.value)])
    return sorted(rows)


def _bench(port: int, out: Path, opts: DemoOptions) -> None:
    result = out / "capacity.json"  # written by aiarch bench, listed at the end
    cmd = _aiarch(
        "bench",
        "capacity",
        "--url",
        f"http://127.0.0.1:{port}",
        "--model",
        MODEL,
        "--slo-p99-ms",
        str(opts.slo_p99_ms),
        "--window-s",
        str(opts.bench_window_s),
        "--warmup-s",
        "0.5",
        "--repeats",
        "1",
        "--tolerance",
        "0.25",
        "--connections",
        "64",
        "--peak-rps",
        "5000",
        "--headroom",
        "0.3",
        "--json",
        str(result),
        "--plot",
        str(out / "capacity.png"),
    )
    proc = subprocess.run(cmd, timeout=600)
    if proc.returncode != 0:
        print(f"  the capacity benchmark found no passing rate (exit {proc.returncode}); see above")


def _drift(reg: Any, version: Any, x: np.ndarray, png: Path) -> None:
    import aiarch
    from aiarch.monitor import Monitor, MonitorConfig, Profile
    from aiarch.monitor.report import render_table, write_png

    blob = reg.load_reference(MODEL, version.version)
    profile = Profile.from_bytes(blob)
    opened = reg.open(MODEL, version=version.version)
    rng = np.random.default_rng(1)
    with aiarch.Runtime() as rt:
        mon = Monitor(profile, config=MonitorConfig(window_s=3600.0, ticker=False))
        rt.add_model(MODEL, opened.artifact_path, monitor=mon)
        same = x[rng.integers(0, len(x), 2000)]
        for i in range(0, len(same), 50):
            rt.infer_sync(MODEL, same[i : i + 50])
        normal = mon.tick()
        shifted = same.copy()
        shifted[:, 0] += 1.0  # amounts e^1, about 2.7 times larger
        shifted[:, 1] *= 1.5  # card averages half as large again
        shifted[:, 3] *= 3.0  # three times the chargeback rate
        for i in range(0, len(shifted), 50):
            rt.infer_sync(MODEL, shifted[i : i + 50])
        drifted = mon.tick()
        print(f"  same-distribution window: {_verdict(normal)}")
        print(f"  shifted window:           {_verdict(drifted)}")
        report = mon.report()
        print(render_table(report))
        write_png(report, str(png))


def _verdict(d: Any) -> str:
    moved = [f.name for f in d.features if f.drifted]
    return (
        f"{d.rows:,} rows, {d.share:.0%} of features drifted ({', '.join(moved) or 'none'}); "
        f"dataset drifted: {'yes' if d.drifted else 'no'}"
    )
