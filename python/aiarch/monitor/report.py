"""Human output of monitor reports: a fixed-width table and a PNG (matplotlib, Agg)."""

from __future__ import annotations

import math
import time
from typing import Any

__all__ = ["latency_series_ms", "render_table", "write_png"]

_STAGE_ORDER = ("queue", "feature_lookup", "execution", "end_to_end")
_PCT_KEYS = ("p50_us", "p90_us", "p99_us", "p999_us")


def _f(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return str(v)
    return f"{v:.{digits}f}"


def render_table(report: dict[str, Any], max_features: int = 40) -> str:
    """The report as fixed-width text."""
    taken = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(report.get("taken_at", 0)))
    lines = [
        f"model {report['model']}  version {report['version']}  "
        f"processes {report.get('processes', 1)}  at {taken}",
        "",
        f"{'latency (us)':<16}{'window':>7}{'count':>10}{'p50':>11}{'p90':>11}{'p99':>11}{'p99.9':>11}",
    ]
    for window, stages in report["latency_us"].items():
        for stage in sorted(
            stages, key=lambda s: _STAGE_ORDER.index(s) if s in _STAGE_ORDER else 9
        ):
            s = stages[stage]
            # An empty window has no latency: "-", never 0.
            pct = [_f(s[k], 1) if s["count"] else "-" for k in _PCT_KEYS]
            lines.append(
                f"{stage:<16}{window:>7}{s['count']:>10}" + "".join(f"{v:>11}" for v in pct)
            )
    lines += [
        "",
        f"{'requests':<10}{'window':>7}{'success':>10}{'failed':>8}{'expired':>8}"
        f"{'rejected':>9}{'error_rate':>11}",
    ]
    for window, r in report["requests"].items():
        lines.append(
            f"{'':<10}{window:>7}{r['success']:>10}{r['failed']:>8}{r['expired']:>8}"
            f"{r['rejected']:>9}{r['error_rate']:>11.4f}"
        )
    for key, title in (("window", "last closed window"), ("all", "since start")):
        d = report["drift"][key]
        lines += [
            "",
            f"drift, {title}: {d['rows']} rows, {d['share']:.0%} of features drifted, "
            f"dataset drift: {_f(d['drifted'])}",
        ]
        if key == "all":
            continue
        lines.append(
            f"{'feature':<20}{'kind':<12}{'rows':>8}{'null%':>7}{'psi':>8}{'js':>7}{'ks':>7}"
            f"{'wass':>7}  {'method':<12}{'score':>8}{'thresh':>8}  drift"
        )
        feats = sorted(d["features"], key=lambda f: (not f["drifted"], f["name"]))
        for f in feats[:max_features]:
            null = f["null_rate"] * 100
            lines.append(
                f"{f['name'][:19]:<20}{f['kind']:<12}{f['rows']:>8}{null:>7.1f}{_f(f['psi']):>8}"
                f"{_f(f['js']):>7}{_f(f['ks']):>7}{_f(f['wasserstein']):>7}  {f['method']:<12}"
                f"{_f(f['score'], 4):>8}{_f(f['threshold']):>8}  {'DRIFT' if f['drifted'] else 'ok'}"
            )
        if len(feats) > max_features:
            lines.append(f"... {len(feats) - max_features} more features (--json for all)")
    alerts = report.get("alerts") or []
    if alerts:
        lines += ["", f"{'alert':<24}{'kind':<14}{'threshold':>10}{'value':>12}  state"]
        for a in alerts:
            state = "FIRING" if a["active"] else "ok"
            lines.append(
                f"{a['name']:<24}{a['kind']:<14}{a['threshold']:>10.4g}{_f(a['value'], 4):>12}  {state}"
            )
    return "\n".join(lines)


def latency_series_ms(history: list[dict[str, Any]], key: str) -> list[float]:
    """One percentile (``key``, e.g. "p99_us") per history window, in ms; NaN for a window in
    which no request finished, which matplotlib draws as a gap (no data, not 0 ms)."""
    return [h["latency_us"].get(key, math.nan) / 1e3 for h in history]


def write_png(report: dict[str, Any], path: str, max_features: int = 30) -> None:
    """Latency percentiles over time (or per window) and per-feature drift bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_lat, ax_drift) = plt.subplots(1, 2, figsize=(13, 4.8))
    history = report.get("history") or []
    if len(history) >= 2:
        t0 = history[0]["time"]
        xs = [(h["time"] - t0) / 60 for h in history]
        for key, label in (
            ("p50_us", "p50"),
            ("p90_us", "p90"),
            ("p99_us", "p99"),
            ("p999_us", "p99.9"),
        ):
            ax_lat.plot(xs, latency_series_ms(history, key), marker=".", label=label)
        ax_lat.set_xlabel("minutes")
        ax_lat.set_title(f"{report['model']} end-to-end latency per window")
    else:
        e2e = {w: s.get("end_to_end") for w, s in report["latency_us"].items()}
        windows = [w for w, s in e2e.items() if s and s["count"]]
        width = 0.2
        for i, (key, label) in enumerate(
            (("p50_us", "p50"), ("p90_us", "p90"), ("p99_us", "p99"), ("p999_us", "p99.9"))
        ):
            ax_lat.bar(
                [j + i * width for j in range(len(windows))],
                [e2e[w][key] / 1e3 for w in windows],
                width,
                label=label,
            )
        ax_lat.set_xticks([j + 1.5 * width for j in range(len(windows))], windows)
        ax_lat.set_title(f"{report['model']} end-to-end latency by window")
    ax_lat.set_ylabel("ms")
    ax_lat.legend()
    drift = report["drift"]["window"]
    if not drift["rows"]:
        drift = report["drift"]["all"]
    feats = [f for f in drift["features"] if f["score"] is not None and math.isfinite(f["score"])]
    distance = [f for f in feats if f["method"] not in ("ks", "chisquare")]
    shown = sorted(distance or feats, key=lambda f: -f["score"])[:max_features]
    if distance:
        values = [f["score"] for f in shown]
        ax_drift.set_ylabel("drift score (method in label)")
    else:
        values = [1 - f["score"] for f in shown]
        ax_drift.set_ylabel("1 - p-value")
    ax_drift.bar(
        range(len(shown)),
        values,
        color=["tab:red" if f["drifted"] else "tab:blue" for f in shown],
    )
    ax_drift.set_xticks(
        range(len(shown)), [f"{f['name']}\n{f['method']}" for f in shown], rotation=60, fontsize=7
    )
    ax_drift.set_title(
        f"drift per feature: {drift['share']:.0%} drifted, dataset drift "
        f"{'yes' if drift['drifted'] else 'no'} ({drift['rows']} rows)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
