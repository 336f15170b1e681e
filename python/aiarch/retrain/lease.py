"""The lease that lets one `aiarch retrain --watch` per model run: a compare-and-swap on the
model tag `retrain.watcher` (JSON: owner, expiry), written in one transaction with the model
row locked, as the rollout controller's lease is on its rollout row.

Taking it succeeds when nobody holds it, this owner does, or the holder let it expire (a
watcher that died without releasing it). A second watcher gets `LeaseHeldError` naming the
holder and when its lease runs out. The holder renews it from a background thread, so a
training run longer than the lease keeps it.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

from aiarch.registry.registry import Registry
from aiarch.rollout.state import LeaseHeldError, LeaseLostError, controller_id

__all__ = ["WATCHER_TAG", "WatchLease"]

log = logging.getLogger("aiarch.retrain")

WATCHER_TAG = "retrain.watcher"


def _holder(tx: Any, model_id: int) -> dict[str, Any] | None:
    raw = tx.scalar(
        "SELECT value FROM model_tags WHERE model_id = ? AND key = ?", (model_id, WATCHER_TAG)
    )
    if raw is None:
        return None
    try:
        held = json.loads(raw)
    except ValueError:
        return None  # not ours to keep: a malformed tag counts as free
    return held if isinstance(held, dict) else None


class WatchLease:
    """The watcher lease of one model. `acquire()` once, then `keep()` starts renewing it;
    `release()` at the end. Thread-safe."""

    def __init__(
        self, registry: Registry, model: str, lease_s: float = 30.0, owner: str | None = None
    ):
        self.registry = registry
        self.model = model
        self.lease_s = lease_s
        self.owner = owner or controller_id()
        self.lost = threading.Event()
        """Set when a renewal found another owner (this watcher must stop)."""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _write(self, tx: Any, model_id: int, now: float) -> None:
        value = json.dumps({"owner": self.owner, "expires_at": now + self.lease_s})
        tx.execute(
            "INSERT INTO model_tags (model_id, key, value) VALUES (?, ?, ?) "
            "ON CONFLICT (model_id, key) DO UPDATE SET value = excluded.value",
            (model_id, WATCHER_TAG, value),
        )

    def acquire(self) -> None:
        """Take the lease; LeaseHeldError naming the holder when another watcher holds it,
        ModelNotFoundError when the model is not in the registry."""
        now = time.time()
        with self.registry.db.tx(write=True) as tx:
            model_id = self.registry.model_id_in(tx, self.model, lock=True)
            held = _holder(tx, model_id)
            if (
                held is not None
                and held.get("owner") != self.owner
                and float(held.get("expires_at", 0.0)) >= now
            ):
                left = float(held["expires_at"]) - now
                raise LeaseHeldError(
                    f"the retraining watch of {self.model!r} is held by {held.get('owner')} "
                    f"(lease valid for {left:.1f} s more); not starting a second watcher"
                )
            self._write(tx, model_id, now)

    def renew(self) -> None:
        """Extend the lease; LeaseLostError when another watcher took it over."""
        now = time.time()
        with self.registry.db.tx(write=True) as tx:
            model_id = self.registry.model_id_in(tx, self.model, lock=True)
            held = _holder(tx, model_id)
            if held is None or held.get("owner") != self.owner:
                raise LeaseLostError(
                    f"the retraining watch of {self.model!r} passed to "
                    f"{held and held.get('owner')}; this watcher stops"
                )
            self._write(tx, model_id, now)

    def keep(self) -> None:
        """Renew every third of the lease in a background thread until `release()`."""

        def loop() -> None:
            while not self._stop.wait(self.lease_s / 3):
                try:
                    self.renew()
                except LeaseLostError as e:
                    log.error("%s", e)
                    self.lost.set()
                    return
                except Exception as e:  # the registry is unreachable for now: retry
                    log.warning("cannot renew the retraining watch lease: %s", e)

        self._thread = threading.Thread(target=loop, name="aiarch-retrain-lease", daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Stop renewing and give the lease up (only if this watcher still holds it)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10.0)
        try:
            with self.registry.db.tx(write=True) as tx:
                model_id = self.registry.model_id_in(tx, self.model, lock=True)
                held = _holder(tx, model_id)
                if held is not None and held.get("owner") == self.owner:
                    tx.execute(
                        "DELETE FROM model_tags WHERE model_id = ? AND key = ?",
                        (model_id, WATCHER_TAG),
                    )
        except Exception as e:  # the lease expires on its own
            log.warning("could not release the retraining watch lease: %s", e)
