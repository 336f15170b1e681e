"""Threshold alerts evaluated once per monitor window; logged and POSTed once per state change."""

from __future__ import annotations

import json
import logging
import queue
import threading
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from aiarch.errors import InvalidArgumentError
from aiarch.redact import redact_url

__all__ = ["AlertRule", "Alerts", "Webhook"]

log = logging.getLogger("aiarch.monitor")

AlertKind = Literal["drift", "latency_p99", "error_rate"]
_KINDS = ("drift", "latency_p99", "error_rate")


@dataclass(frozen=True)
class AlertRule:
    """One threshold rule, checked on each window's values."""

    name: str
    """Alert name, as in logs, the ``aiarch_monitor_alert_active`` metric and webhook bodies."""
    kind: AlertKind
    """drift: the dataset drift share; latency_p99: end-to-end p99 in milliseconds over
    ``window_s``; error_rate: failed / finished requests over ``window_s``."""
    threshold: float
    """The alert fires when the value is >= threshold (drift) or > threshold (others)."""
    window_s: float = 60.0
    """Window of latency_p99 and error_rate (drift uses the monitor's drift window)."""

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise InvalidArgumentError(
                f"unknown alert kind {self.kind!r}; expected one of {_KINDS}"
            )

    def firing(self, value: float) -> bool:
        if value != value:  # NaN: no data, no alert
            return False
        return value >= self.threshold if self.kind == "drift" else value > self.threshold


class Webhook:
    """POSTs JSON bodies from a background thread (stdlib urllib, with a timeout).

    ``post`` never blocks: a full queue drops the body and counts it. Thread-safe.
    """

    def __init__(self, url: str, timeout_s: float = 5.0, max_pending: int = 64) -> None:
        if not url.startswith(("http://", "https://")):
            raise InvalidArgumentError(
                f"webhook URL must be http(s)://..., got {redact_url(url)!r}"
            )
        self.url = url
        self.timeout_s = timeout_s
        self.sent = 0
        self.failed = 0
        self.dropped = 0
        self._queue: queue.Queue[bytes | None] = queue.Queue(max_pending)
        self._thread = threading.Thread(target=self._run, name="aiarch-webhook", daemon=True)
        self._thread.start()

    def post(self, body: Mapping[str, Any]) -> None:
        try:
            self._queue.put_nowait(json.dumps(body).encode())
        except queue.Full:
            self.dropped += 1

    def close(self, timeout_s: float = 5.0) -> None:
        """Sends what is queued (up to ``timeout_s``), then stops the thread."""
        try:
            self._queue.put(None, timeout=timeout_s)
        except queue.Full:
            return
        self._thread.join(timeout_s)

    def _run(self) -> None:
        while True:
            body = self._queue.get()
            if body is None:
                return
            req = urllib.request.Request(
                self.url, data=body, headers={"content-type": "application/json"}, method="POST"
            )
            try:
                with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                    resp.read()
                self.sent += 1
            except Exception as e:  # the receiver's trouble never reaches the monitor
                self.failed += 1
                log.warning("alert webhook %s failed: %s", redact_url(self.url), e)


class Alerts:
    """State of a model's rules; ``evaluate`` once per window. Not thread-safe (the monitor
    calls it under its lock)."""

    def __init__(self, model: str, rules: list[AlertRule], webhook: Webhook | None = None) -> None:
        names = [r.name for r in rules]
        if len(set(names)) != len(names):
            raise InvalidArgumentError(f"alert names must be unique, got {names}")
        self.model = model
        self.rules = list(rules)
        self.webhook = webhook
        self.active: dict[str, bool] = {r.name: False for r in rules}
        self.values: dict[str, float] = {r.name: float("nan") for r in rules}
        self.transitions = 0

    def evaluate(self, values: Mapping[str, float], version: str, now: float) -> list[str]:
        """Checks every rule against its value (``values`` by rule name); returns the rules
        whose state changed. A NaN value (a window with no traffic) is no evidence either way:
        the rule keeps its state, so a quiet window never resolves a firing alert."""
        changed = []
        for rule in self.rules:
            value = float(values.get(rule.name, float("nan")))
            self.values[rule.name] = value
            if value != value:
                continue
            on = rule.firing(value)
            if on == self.active[rule.name]:
                continue
            self.active[rule.name] = on
            self.transitions += 1
            changed.append(rule.name)
            state = "firing" if on else "resolved"
            (log.warning if on else log.info)(
                "alert %s %s for model %s version %s: %s = %.6g (threshold %.6g)",
                rule.name,
                state,
                self.model,
                version,
                rule.kind,
                value,
                rule.threshold,
            )
            if self.webhook is not None:
                self.webhook.post(
                    {
                        "alert": rule.name,
                        "state": state,
                        "model": self.model,
                        "version": version,
                        "kind": rule.kind,
                        "value": value if value == value else None,
                        "threshold": rule.threshold,
                        "time": now,
                    }
                )
        return changed
