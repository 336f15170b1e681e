"""The rollout controller: judges each step from the servers' metrics and moves the rollout.

    Controller(registry, "fraud", ["http://10.0.0.5:8000"]).run()   # until it ends

One controller per rollout holds its lease (compare-and-swap in the registry); a second one
fails at once with `LeaseHeldError` naming the holder. Each tick (`poll_s`) it renews the
lease, re-reads the rollout, scrapes every server's `/metrics` and judges the candidate arm
against production over the current step's window (counts since the step began):

- a breach of any threshold rolls back at once (candidate weight 0, the reason recorded);
- once the step has dwelt `dwell_s` with enough requests on both arms and no breach, the
  rollout advances; after the last step (100 %) `production` moves to the candidate;
- a step that cannot be judged within `step_timeout_s` (too few requests) pauses the rollout
  with the reason, for an operator to resume or abort.

While paused the controller keeps judging (a breach still rolls back) but does not advance.
At 100 % production serves nothing, so the candidate is compared with production's figures
from the previous step. Production moved by someone else aborts the rollout.
"""

from __future__ import annotations

import logging
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from aiarch.errors import InvalidArgumentError
from aiarch.registry.errors import ConflictError
from aiarch.registry.registry import Registry

from . import state
from .judge import ArmCounters, ArmStats, Verdict, arm_stats, judge, parse_metrics
from .state import LeaseLostError, Rollout

__all__ = ["Controller", "Observation"]

log = logging.getLogger("aiarch.rollout")


@dataclass(frozen=True)
class Observation:
    """One tick of the controller: the weight in force and both arms over the step's window."""

    at: float
    step: int
    weight: int
    production: ArmStats
    candidate: ArmStats
    verdict: Verdict


class Controller:
    """Drives the active rollout of `model` to its end. `servers`: base URLs of the servers
    that serve the model (`http://127.0.0.1:8000`); `served_name`: the model's name on them
    (default: its registry name). `poll_s` defaults to a fifth of the dwell, at most 1 s.
    `on_observation` is called once per tick (plots, logs). Not thread-safe: one thread runs
    it."""

    def __init__(
        self,
        registry: Registry,
        model: str,
        servers: Sequence[str],
        *,
        served_name: str | None = None,
        owner: str | None = None,
        poll_s: float | None = None,
        lease_s: float = 30.0,
        scrape_timeout_s: float = 5.0,
        on_observation: Callable[[Observation], None] | None = None,
    ):
        if isinstance(servers, str) or not servers:
            raise InvalidArgumentError(
                "servers: give the base URL of at least one server serving the model, e.g. "
                "['http://127.0.0.1:8000']"
            )
        for url in servers:
            if not url.startswith(("http://", "https://")):
                raise InvalidArgumentError(f"server {url!r}: expected an http:// or https:// URL")
        if lease_s <= 0:
            raise InvalidArgumentError(f"lease_s must be positive, got {lease_s!r}")
        self.registry = registry
        self.model = model
        self.servers = [u.rstrip("/") for u in servers]
        self.served_name = served_name or model
        self.owner = owner or state.controller_id()
        self.poll_s = poll_s
        self.lease_s = lease_s
        self.scrape_timeout_s = scrape_timeout_s
        self.on_observation = on_observation
        self.observations: list[Observation] = []
        self.unreachable: list[str] = []
        """Servers whose /metrics did not answer at the last scrape."""
        self._window_key: tuple[int, float] | None = None
        self._window_start: dict[str, dict[str, ArmCounters]] = {}
        self._reference: tuple[int, ArmStats | None] | None = None

    # -- scraping ---------------------------------------------------------------------------
    def scrape(self) -> dict[str, dict[str, ArmCounters]]:
        """Server URL → version → counters, for the servers that answered."""
        out: dict[str, dict[str, ArmCounters]] = {}
        self.unreachable = []
        for url in self.servers:
            try:
                with urllib.request.urlopen(f"{url}/metrics", timeout=self.scrape_timeout_s) as r:
                    text = r.read().decode()
            except (OSError, urllib.error.URLError) as e:
                log.warning("rollout %s: cannot scrape %s/metrics: %s", self.model, url, e)
                self.unreachable.append(url)
                continue
            out[url] = parse_metrics(text, self.served_name)
        return out

    def _window(self, now_scrape: dict[str, dict[str, ArmCounters]], version: int) -> ArmStats:
        key = str(version)
        windows = []
        for url, arms in now_scrape.items():
            end = arms.get(key)
            if end is None:
                continue
            windows.append(end.minus(self._window_start.get(url, {}).get(key)))
        return arm_stats(version, windows)

    # -- the loop ---------------------------------------------------------------------------
    def run(self) -> Rollout:
        """Take the lease and drive the rollout until it completes, rolls back or is aborted;
        returns it as it ended. NotFoundError when none is active; LeaseHeldError when another
        controller drives it; LeaseLostError if another took it over meanwhile."""
        ro = state.active(self.registry, self.model)
        if ro is None:
            from aiarch.errors import NotFoundError

            raise NotFoundError(
                f"no active rollout of {self.model!r} to control (start one with "
                f"aiarch rollout start {self.model} VERSION)"
            )
        ro = state.acquire_lease(self.registry, ro.id, self.owner, self.lease_s)
        log.info(
            "rollout %s #%d: %s controls it (version %d vs production %d, step %d/%d at %d %%)",
            self.model,
            ro.id,
            self.owner,
            ro.candidate,
            ro.baseline,
            ro.step + 1,
            len(ro.steps),
            ro.weight,
        )
        try:
            while True:
                ro = state.renew_lease(self.registry, ro.id, self.owner, self.lease_s)
                if not ro.active:
                    return ro
                try:
                    ended = self.tick(ro)
                except LeaseLostError:
                    raise
                except ConflictError as e:  # an operator changed the rollout: re-read it
                    log.info("rollout %s #%d: %s", self.model, ro.id, e)
                    continue
                if ended is not None:
                    return ended
                time.sleep(self._poll_s(ro))
        finally:
            try:
                state.release_lease(self.registry, ro.id, self.owner)
            except Exception:  # the registry is gone; the lease expires on its own
                log.warning("rollout %s: could not release the lease", self.model)

    def _poll_s(self, ro: Rollout) -> float:
        if self.poll_s is not None:
            return self.poll_s
        return max(0.05, min(1.0, ro.dwell_s / 5))

    def tick(self, ro: Rollout) -> Rollout | None:
        """One judgement of the current step; returns the rollout when it ended."""
        production_now = self.registry.alias_version(self.model, state.PRODUCTION)
        if production_now != ro.baseline:
            reason = (
                f"{state.PRODUCTION} moved to version {production_now} outside the rollout "
                f"(it started from version {ro.baseline})"
            )
            log.warning("rollout %s #%d aborted: %s", self.model, ro.id, reason)
            return state.stop_outside_change(self.registry, ro, self.owner, reason)
        key = (ro.step, ro.step_started_at)
        if key != self._window_key:
            self._window_key = key
            self._window_start = self.scrape()
            return None
        scraped = self.scrape()
        for url in scraped.keys() - self._window_start.keys():
            # Did not answer when the window opened: its window opens now.
            self._window_start[url] = scraped.pop(url)
        production = self._window(scraped, ro.baseline)
        candidate = self._window(scraped, ro.candidate)
        reference = production
        if ro.weight >= 100:  # production serves nothing now: compare with the last step's
            reference = self._last_production(ro) or production
        verdict = judge(reference, candidate, ro.thresholds)
        obs = Observation(time.time(), ro.step, ro.weight, production, candidate, verdict)
        self.observations.append(obs)
        if self.on_observation is not None:
            self.on_observation(obs)
        arms = {"production": reference.to_dict(), "candidate": candidate.to_dict()}
        if verdict.decision == "breach":
            reason = f"at {ro.weight} %: " + "; ".join(verdict.reasons)
            log.warning("rollout %s #%d rolled back: %s", self.model, ro.id, reason)
            return state.roll_back(self.registry, ro, self.owner, arms, reason)
        if ro.state != "running":
            return None
        elapsed = time.time() - ro.step_started_at
        if elapsed >= ro.dwell_s and verdict.decision == "ok":
            reason = f"no breach over {elapsed:.1f} s at {ro.weight} %" + (
                f" ({'; '.join(verdict.notes)})" if verdict.notes else ""
            )
            if ro.last_step:
                log.info("rollout %s #%d completed", self.model, ro.id)
                return state.complete(self.registry, ro, self.owner, arms, reason)
            nxt = state.advance(self.registry, ro, self.owner, arms, reason)
            log.info(
                "rollout %s #%d: step %d at %d %%", self.model, ro.id, nxt.step + 1, nxt.weight
            )
            return None
        if elapsed >= ro.step_timeout_s:
            reason = (
                f"step {ro.step + 1} at {ro.weight} % not judged within {ro.step_timeout_s:g} s: "
                + verdict.summary
                + (f"; no answer from {', '.join(self.unreachable)}" if self.unreachable else "")
            )
            log.warning("rollout %s #%d paused: %s", self.model, ro.id, reason)
            state.hold(self.registry, ro, self.owner, arms, reason)
        return None

    def _last_production(self, ro: Rollout) -> ArmStats | None:
        """Production's figures recorded when the rollout last advanced (read once)."""
        if self._reference is None or self._reference[0] != ro.id:
            found = None
            for ev in reversed(state.events(self.registry, ro.id)):
                arm = ev.arms.get("production")
                if ev.decision == "advance" and arm:
                    found = ArmStats(
                        version=int(arm["version"]),
                        requests=int(arm["requests"]),
                        errors=int(arm["errors"]),
                        p99_s=arm.get("p99_s"),
                        drift_share=arm.get("drift_share"),
                        quality=dict(arm.get("quality") or {}),
                    )
                    break
            self._reference = (ro.id, found)
        return self._reference[1]
