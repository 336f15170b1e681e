"""Shared output for the benchmark scripts: a fixed-width table and a JSON file
with the run's metadata (versions, CPU, commit)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def metadata() -> dict[str, Any]:
    """Versions, CPU and commit of this run."""
    import numpy

    try:
        import aiarch

        aiarch_version = aiarch.__version__
    except Exception:  # the baseline-only parts of a benchmark still run
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
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
            check=False,
        ).stdout.strip()
    except OSError:
        commit = ""
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "python": sys.version.split()[0],
        "numpy": numpy.__version__,
        "aiarch": aiarch_version,
        "cpu": cpu,
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "commit": commit or None,
    }


def print_table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    """Prints rows under a title as a fixed-width table."""

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            if v == 0 or 0.01 <= abs(v) < 1e6:
                return f"{v:,.2f}"
            return f"{v:.3g}"
        return str(v)

    cells = [[fmt(v) for v in r] for r in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print(f"\n{title}")
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths)))
    print("  ".join("-" * w for w in widths))
    for r in cells:
        print("  ".join(v.rjust(w) for v, w in zip(r, widths)))


def write_json(path: str | None, name: str, results: Any) -> None:
    """Writes {"benchmark", "metadata", "results"} to path (skipped when None)."""
    if not path:
        return
    out = {"benchmark": name, "metadata": metadata(), "results": results}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(out, indent=2))
    print(f"\nwrote {path}")
