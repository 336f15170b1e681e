"""Evaluation of a policy's triggers: the served model's monitor (drift, SLO, quality), the
label log (new labelled rows) and the clock (schedule). Each check says why it fired."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .policy import RetrainPolicy, Trigger

__all__ = ["TriggerCheck", "count_labels", "evaluate_triggers", "read_monitor"]


class TriggerCheck:
    """The outcome of one trigger's evaluation."""

    __slots__ = ("detail", "fired", "trigger")

    def __init__(self, trigger: Trigger, fired: bool, detail: str) -> None:
        self.trigger = trigger
        self.fired = fired
        self.detail = detail

    def to_dict(self) -> dict[str, Any]:
        return {"trigger": self.trigger.describe(), "fired": self.fired, "detail": self.detail}


def read_monitor(policy: RetrainPolicy) -> dict[str, Any]:
    """`GET {server.url}/v2/models/{model}/monitor` as JSON; raises OSError when unreachable."""
    name = urllib.parse.quote(policy.served_model(), safe="")
    url = f"{policy.server.url.rstrip('/')}/v2/models/{name}/monitor"
    try:
        with urllib.request.urlopen(url, timeout=policy.server.timeout_s) as r:
            report: dict[str, Any] = json.loads(r.read())
            return report
    except urllib.error.HTTPError as e:
        raise OSError(f"{url} answered {e.code}: {e.read()[:200]!r}") from None


def count_labels(label_log: str, since: float) -> int:
    """Labelled rows the label log received after `since` (seconds since the epoch)."""
    folder = Path(label_log)
    if not folder.is_dir() or not any(folder.glob("*.parquet")):
        return 0
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    table = ds.dataset(str(folder), format="parquet").to_table(columns=["received_at"])
    return int(pc.sum(pc.greater(table["received_at"], since)).as_py() or 0)


def evaluate_triggers(
    policy: RetrainPolicy,
    last_run: dict[str, Any] | None,
    now: float,
    monitor: Callable[[], dict[str, Any]] | None = None,
) -> list[TriggerCheck]:
    """Every trigger's check, in policy order. `last_run` is the recorded state of the last
    run (its `started_at`), `monitor` reads the served model's monitor report (read once,
    only when a trigger needs it)."""
    read = monitor or (lambda: read_monitor(policy))
    report: dict[str, Any] | None = None
    report_error: str | None = None
    since = float(last_run["started_at"]) if last_run else 0.0
    checks = []
    for trig in policy.triggers:
        p = trig.params
        if trig.kind in ("drift", "slo", "quality"):
            if report is None and report_error is None:
                try:
                    report = read()
                except (OSError, ValueError) as e:
                    report_error = str(e)
            if report is None:
                checks.append(TriggerCheck(trig, False, f"monitor unreadable: {report_error}"))
                continue
            checks.append(_server_check(trig, report))
        elif trig.kind == "labels":
            n = count_labels(policy.data.label_log, since)
            checks.append(
                TriggerCheck(trig, n >= p["rows"], f"{n} labelled rows since the last run")
            )
        else:  # schedule
            waited = now - since
            fired = last_run is None or waited >= p["interval_s"]
            detail = "no run yet" if last_run is None else f"{waited:.0f} s since the last run"
            checks.append(TriggerCheck(trig, fired, detail))
    return checks


def _server_check(trig: Trigger, report: dict[str, Any]) -> TriggerCheck:
    p = trig.params
    if trig.kind == "drift":
        window = (report.get("drift") or {}).get("window") or {}
        share = float(window.get("share") or 0.0)
        rows = int(window.get("rows") or 0)
        fired = rows > 0 and (share >= p["share"] if "share" in p else bool(window.get("drifted")))
        return TriggerCheck(trig, fired, f"last window: drift share {share:.3f} over {rows} rows")
    if trig.kind == "slo":
        window = p.get("window", "1m")
        e2e = ((report.get("latency_us") or {}).get(window) or {}).get("end_to_end") or {}
        p99_ms = float(e2e.get("p99_us", 0.0)) / 1e3
        fired = int(e2e.get("count", 0)) > 0 and p99_ms > p["p99_ms"]
        return TriggerCheck(
            trig, fired, f"p99 {p99_ms:.3f} ms over {window} (bound {p['p99_ms']} ms)"
        )
    quality = report.get("quality") or {}
    low = []
    for version, q in sorted(quality.items()):
        value = q.get("value")
        if (
            q.get("metric") == p["metric"]
            and value is not None
            and q.get("labels", 0) >= p.get("min_labels", 1)
            and value < p["floor"]
        ):
            low.append(f"version {version}: {p['metric']} {value:.4f} < {p['floor']}")
    detail = "; ".join(low) if low else f"no version below {p['metric']} {p['floor']}"
    return TriggerCheck(trig, bool(low), detail)
