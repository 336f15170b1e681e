"""Output of `aiarch bench`: progress bar, fixed-width tables, JSON, CSV, PNG plots and the
run's metadata (versions, CPU, model digest)."""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from aiarch._json import finite

__all__ = [
    "ProgressBar",
    "format_table",
    "plot_latency_vs_rate",
    "plot_throughput_vs_latency",
    "run_metadata",
    "write_csv",
    "write_json",
]


class ProgressBar:
    """A one-line progress bar on stderr (redrawn in place on a terminal; on a pipe, only
    `note()` lines are written, so logs stay readable)."""

    def __init__(self, stream: TextIO | None = None, enabled: bool = True, width: int = 28):
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = enabled and self.stream.isatty()
        self.width = width
        self.label = ""
        self._last = 0.0

    def stage(self, label: str) -> None:
        """Names what runs now (shown before the bar)."""
        self.label = label

    def update(self, fraction: float, text: str = "") -> None:
        """Redraws the bar; called often, drawn at most 10 times a second."""
        if not self.tty:
            return
        now = time.monotonic()
        if now - self._last < 0.1 and fraction < 1.0:
            return
        self._last = now
        filled = int(max(0.0, min(1.0, fraction)) * self.width)
        bar = "#" * filled + "." * (self.width - filled)
        line = f"{self.label} [{bar}] {fraction:4.0%} {text}"
        self.stream.write("\r\x1b[2K" + line[:160])
        self.stream.flush()

    def note(self, message: str) -> None:
        """A line that stays (clears the bar first)."""
        if not self.enabled:
            return
        if self.tty:
            self.stream.write("\r\x1b[2K")
        self.stream.write(message + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\r\x1b[2K")
            self.stream.flush()


def _cell(v: Any) -> str:
    if isinstance(v, float):
        if math.isinf(v):
            return "inf"
        if v == 0 or 0.01 <= abs(v) < 1e7:
            return f"{v:,.2f}" if abs(v) < 100 else f"{v:,.1f}"
        return f"{v:.3g}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return str(v)


def format_table(columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> str:
    """Rows (dicts keyed by column) as a fixed-width, right-aligned table."""
    cells = [[_cell(r.get(c, "")) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths)) for r in cells]
    return "\n".join(lines)


def write_json(path: str, doc: dict[str, Any]) -> None:
    """Writes `doc` as strict JSON (RFC 8259): a non-finite number becomes null, never
    `Infinity`/`NaN`, which most JSON parsers reject."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(finite(doc), indent=2, default=_json_default, allow_nan=False)
    Path(path).write_text(text + "\n")


def _json_default(o: Any) -> Any:
    if hasattr(o, "to_dict"):
        return finite(o.to_dict())
    return str(o)


def write_csv(path: str, columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow(r)


def run_metadata(model_digest: str | None = None, target: str | None = None) -> dict[str, Any]:
    """Versions, CPU and the model digest of this run."""
    import numpy

    try:
        import aiarch

        aiarch_version: str | None = aiarch.__version__
    except Exception:  # the core is not importable: still describe the run
        aiarch_version = None
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "aiarch": aiarch_version,
        "python": sys.version.split()[0],
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "target": target,
        "model_digest": model_digest,
    }


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise ImportError(
            "PNG plots need matplotlib: pip install 'aiarch[plots]' (or drop --plot)"
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_latency_vs_rate(
    path: str,
    points: Sequence[tuple[float, dict[str, float]]],
    *,
    slo_ms: float | None = None,
    knee_rps: float | None = None,
    capacity_rps: float | None = None,
    title: str = "",
) -> None:
    """Latency percentiles (ms) against offered rate, with the SLO line and the knee."""
    plt = _pyplot()
    pts = sorted(points, key=lambda p: p[0])
    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=110)
    rates = [r for r, _ in pts]
    for key, label in (("p50", "p50"), ("p90", "p90"), ("p99", "p99"), ("p999", "p99.9")):
        ax.plot(rates, [lat[key] / 1e3 for _, lat in pts], marker="o", ms=3, label=label)
    if slo_ms:
        ax.axhline(slo_ms, color="red", ls="--", lw=1, label=f"SLO p99 {slo_ms:g} ms")
    if knee_rps:
        ax.axvline(knee_rps, color="gray", ls=":", lw=1, label=f"knee {knee_rps:,.0f}/s")
    if capacity_rps:
        ax.axvline(
            capacity_rps, color="green", ls="-.", lw=1, label=f"capacity {capacity_rps:,.0f}/s"
        )
    ax.set_xlabel("offered rate (requests/s)")
    ax.set_ylabel("latency from intended send (ms)")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or "latency vs offered rate (open loop)")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def plot_throughput_vs_latency(
    path: str,
    series: Mapping[str, Sequence[tuple[float, float]]],
    *,
    slo_ms: float | None = None,
    title: str = "",
) -> None:
    """Per configuration: achieved throughput against p99 latency (ms)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=110)
    for label, pts in series.items():
        pts = sorted(pts, key=lambda p: p[1])
        ax.plot([p[1] for p in pts], [p[0] for p in pts], marker="o", ms=3, label=label)
    if slo_ms:
        ax.axvline(slo_ms, color="red", ls="--", lw=1, label=f"SLO p99 {slo_ms:g} ms")
    ax.set_xlabel("p99 latency (ms)")
    ax.set_ylabel("throughput (inferences/s)")
    ax.set_xscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(title or "throughput vs p99 latency per configuration")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
