"""Label feedback ingestion while serving: labels/s joined by `POST /v2/models/{m}/feedback`
while the same server answers v2 infer requests, and what recording predictions costs infer.

Model: a one-feature scorer (float32 [2] → [1]) served natively, every infer request carrying
an `id`. Load: --connections keep-alive connections each sending one-row v2 JSON infer requests
back to back (closed loop) for --duration seconds; with feedback on, one more connection posts
the answered ids' labels, --batch labels per POST, as fast as the server answers (so labels/s
follows infer/s). "labels only": the same server first answers --duration/2 s of infer load,
then takes all those ids' labels with no infer load — the ingestion capacity. Baseline, in the
same run: the same server and load with no feedback table (no prediction recording, no
labels), up at the same time: --rounds alternate between the two servers and each round's
ratio is infer req/s with feedback / the baseline's; the table gives every round and the median.
The client runs on the same cores as the servers.

    python benchmarks/bench_feedback.py            # ~1 min
    python benchmarks/bench_feedback.py --smoke    # < 30 s
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _report import print_table, write_json  # noqa: E402

MODEL = """
import numpy as np

def scorer(x):
    return x[:, :1].copy()

scorer.inputs = [{"name": "x", "dtype": "float32", "shape": (2,)}]
scorer.outputs = [{"name": "score", "dtype": "float32", "shape": (1,)}]
"""


def _config(tmp: Path, feedback: bool) -> Path:
    text = f'[models.score]\nsource = "{tmp / "scorer_model.py"}:scorer"\n'
    if feedback:
        text += '[models.score.monitor.feedback]\nmetric = "auc"\nmax_predictions = 1000000\n'
    path = tmp / f"serve-{int(feedback)}.toml"
    path.write_text(text)
    return path


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str, body: bytes
) -> bytes:
    writer.write(
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"server answered {head[:40]!r}")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return await reader.readexactly(length)


async def _infer_loop(
    port: int, conn: int, deadline: float, answered: deque[str], counts: dict[str, int]
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    i = 0
    while time.monotonic() < deadline:
        rid = f"c{conn}-{i}"
        score = (i % 100) / 100
        body = (
            f'{{"id":"{rid}","inputs":[{{"name":"x","shape":[1,2],"datatype":"FP32",'
            f'"data":[{score},0.0]}}]}}'
        ).encode()
        await _exchange(reader, writer, "/v2/models/score/infer", body)
        answered.append(rid)
        counts["infer"] += 1
        i += 1
    writer.close()


async def _feedback_loop(
    port: int,
    deadline: float,
    answered: deque[str],
    counts: dict[str, int],
    batch: int,
    until_empty: bool = False,
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    while time.monotonic() < deadline:
        ids = [answered.popleft() for _ in range(min(batch, len(answered)))]
        if not ids:
            if until_empty:
                break
            await asyncio.sleep(0.001)
            continue
        labels = [{"id": rid, "label": int(rid.rsplit("-", 1)[1]) % 2} for rid in ids]
        out = json.loads(
            await _exchange(
                reader, writer, "/v2/models/score/feedback", json.dumps({"labels": labels}).encode()
            )
        )
        counts["labels"] += len(ids)
        counts["joined"] += out["joined"]
    writer.close()


async def _burst(port: int, ids: deque[str], batch: int) -> dict[str, Any]:
    """Post the labels of every id in `ids` as fast as the server takes them (no infer load):
    the ingestion capacity."""
    counts = {"infer": 0, "labels": 0, "joined": 0}
    t0 = time.perf_counter()
    await _feedback_loop(port, time.monotonic() + 3600, ids, counts, batch, until_empty=True)
    elapsed = time.perf_counter() - t0
    return {
        "infer_rps": 0.0,
        "labels_per_s": counts["labels"] / elapsed,
        "joined_share": counts["joined"] / counts["labels"] if counts["labels"] else 0.0,
        "infer_requests": 0,
        "labels": counts["labels"],
    }


async def _load(
    port: int,
    connections: int,
    duration: float,
    feedback: bool,
    batch: int,
    answered: deque[str] | None = None,
) -> dict[str, Any]:
    answered = deque() if answered is None else answered
    counts = {"infer": 0, "labels": 0, "joined": 0}
    deadline = time.monotonic() + duration
    t0 = time.perf_counter()
    tasks = [_infer_loop(port, c, deadline, answered, counts) for c in range(connections)]
    if feedback:
        tasks.append(_feedback_loop(port, deadline, answered, counts, batch))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - t0
    return {
        "infer_rps": counts["infer"] / elapsed,
        "labels_per_s": counts["labels"] / elapsed,
        "joined_share": counts["joined"] / counts["labels"] if counts["labels"] else 0.0,
        "infer_requests": counts["infer"],
        "labels": counts["labels"],
    }


def in_process_costs(n: int, batch: int) -> dict[str, float]:
    """What the server's Python adds, timed in process: recording one prediction (a drain's
    records handed over together, `batch` at a time) and joining one label (`batch` per call)."""
    import numpy as np

    from aiarch.monitor.feedback import FeedbackConfig, FeedbackTracker, Label

    tracker = FeedbackTracker("m", FeedbackConfig(metric="auc", max_predictions=n))
    ids = [f"r{i}" for i in range(n)]
    values = np.random.default_rng(0).random((n, 1))
    t0 = time.perf_counter()
    for i in range(0, n, batch):
        tracker.record_many(ids[i : i + batch], "1", values[i : i + batch])
    record_s = time.perf_counter() - t0
    labels = [Label(label=float(i % 2), id=rid) for i, rid in enumerate(ids)]
    t0 = time.perf_counter()
    for i in range(0, n, batch):
        tracker.feedback(labels[i : i + batch])
    join_s = time.perf_counter() - t0
    return {"record_ns_per_prediction": record_s / n * 1e9, "join_ns_per_label": join_s / n * 1e9}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--smoke", action="store_true", help="seconds, to check the script runs")
    ap.add_argument("--duration", type=float, default=5.0, help="seconds of load per server")
    ap.add_argument("--rounds", type=int, default=5, help="alternating baseline/feedback rounds")
    ap.add_argument("--connections", type=int, default=16, help="infer connections")
    ap.add_argument("--batch", type=int, default=256, help="labels per feedback POST")
    ap.add_argument("--json", default="bench-results/bench_feedback.json", help="output file")
    args = ap.parse_args(argv)
    if args.smoke:
        args.duration, args.connections, args.rounds = 2.0, 4, 1
    from aiarch.serving.process import ServerProcess

    rounds: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="aiarch-bench-feedback-") as tmpdir:
        tmp = Path(tmpdir)
        (tmp / "scorer_model.py").write_text(MODEL)
        servers = {
            fb: ServerProcess(
                ["--config", str(_config(tmp, fb)), "--log-level", "warning"], tmp / f"{fb}.log"
            )
            for fb in (False, True)
        }
        try:
            for srv in servers.values():
                srv.wait_ready()
                asyncio.run(_load(srv.port, 2, 0.5, False, args.batch))  # warm-up
            # Both servers run at once and the rounds alternate between them, so that the
            # neighbours' load on a shared machine falls on both alike.
            for i in range(args.rounds):
                base = asyncio.run(
                    _load(servers[False].port, args.connections, args.duration, False, args.batch)
                )
                with_fb = asyncio.run(
                    _load(servers[True].port, args.connections, args.duration, True, args.batch)
                )
                rounds.append(
                    {
                        "round": i,
                        "baseline_infer_rps": base["infer_rps"],
                        "feedback_infer_rps": with_fb["infer_rps"],
                        "labels_per_s": with_fb["labels_per_s"],
                        "joined_share": with_fb["joined_share"],
                        "x_baseline_infer_rps": with_fb["infer_rps"] / base["infer_rps"],
                    }
                )
                print(
                    f"  round {i}: baseline {base['infer_rps']:8.0f} infer/s, with feedback "
                    f"{with_fb['infer_rps']:8.0f} infer/s + {with_fb['labels_per_s']:8.0f} labels/s",
                    flush=True,
                )
            # Predictions first, then only their labels: the ingestion capacity.
            pool: deque[str] = deque()
            port = servers[True].port
            asyncio.run(_load(port, args.connections, args.duration / 2, False, 0, pool))
            burst = asyncio.run(_burst(port, pool, args.batch))
        finally:
            for srv in servers.values():
                srv.stop()
    ratios = sorted(r["x_baseline_infer_rps"] for r in rounds)
    rows = [
        [
            r["round"],
            f"{r['baseline_infer_rps']:.0f}",
            f"{r['feedback_infer_rps']:.0f}",
            f"{r['x_baseline_infer_rps']:.2f}",
            f"{r['labels_per_s']:.0f}",
            f"{r['joined_share']:.3f}",
        ]
        for r in rounds
    ]
    rows.append(
        [
            "labels only",
            "-",
            "-",
            "-",
            f"{burst['labels_per_s']:.0f}",
            f"{burst['joined_share']:.3f}",
        ]
    )
    print_table(
        f"feedback while serving: {args.connections} infer connections + 1 feedback connection "
        f"({args.batch} labels/POST), {args.duration:g} s per server per round; median ratio "
        f"{ratios[len(ratios) // 2]:.2f} (range {ratios[0]:.2f}-{ratios[-1]:.2f})",
        ["round", "baseline infer/s", "feedback infer/s", "x baseline", "labels/s", "joined"],
        rows,
    )
    results = {
        "rounds": rounds,
        "median_x_baseline_infer_rps": ratios[len(ratios) // 2],
        "capacity_labels_per_s": burst["labels_per_s"],
        "connections": args.connections,
        "batch": args.batch,
        "duration_s": args.duration,
    }
    costs = in_process_costs(20_000 if args.smoke else 500_000, args.batch)
    print(
        f"\nin process: {costs['record_ns_per_prediction']:.0f} ns to record a prediction, "
        f"{costs['join_ns_per_label']:.0f} ns to join a label ({args.batch} per call)"
    )
    write_json(args.json, "bench_feedback", {"server": results, "in_process": costs})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
