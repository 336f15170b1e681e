"""Models served from the registry: hot switch on alias moves, canary split and shadow traffic.

A model whose source is a registry reference (`fraud@production`, `models:/fraud/3`) is served
through a `Route`: one or more weighted *arms*, each an alias or a pinned version, plus an
optional *shadow* arm. Every version an arm needs is loaded into the Runtime under its own
name (`fraud.v3`), after `Registry.open` verified its artifact's digest.

- Hot switch: a watcher polls the aliases (`Registry.watch`, one indexed read each, every
  `registry_poll_s`). When one moves, the new version is loaded and warmed in a worker thread,
  the arm is re-pointed in the loop thread (one assignment: requests after it go to the new
  version, requests before it are already queued on the old one), and the old version is
  removed with `drain=True`, which runs everything still queued. No request is refused.
- Canary: `--route fraud=production:90,staging:10` splits requests by weight; a request that
  carries a key (header `X-Route-Key`, or v2 parameter `route_key`) always gets the same arm
  for the same key.
- Progressive rollout: a model served as `NAME@production` (no `--route`) follows the
  registry's active rollout of its model (`aiarch.rollout`): read on the same poll as the
  aliases (one indexed read), it adds a `candidate` arm pinned to the rollout's version and
  splits production:100-w / candidate:w at the recorded weight; when the rollout ends the
  candidate arm is drained (rolled back or aborted: at once; completed: production has moved
  to the candidate). A server that starts mid-rollout comes up at the recorded step.
- Shadow: `--shadow fraud@staging[:FRACTION]` also sends a sample of requests to another
  version; its answer and errors are counted and discarded, never seen by the client.
- Metrics: the runtime's families carry the version label (runtime names map back to the
  public model name), plus `aiarch_route_requests`, `aiarch_route_switches` and
  `aiarch_shadow_requests`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from .config import ModelConfig, ServeConfig
from .errors import HttpError
from .loader import (
    SourceResolver,
    _runtime_configs,
    feedback_tracker,
    register_resolver,
    resolve_source,
)

__all__ = [
    "Arm",
    "RegistryRouting",
    "Route",
    "load_registry_source",
    "parse_route_arms",
    "parse_shadow",
    "prepare_routes",
]

log = logging.getLogger("aiarch.serving")

SHADOW_MAX_IN_FLIGHT = 256
"""Mirrored requests in flight at once per route; beyond it a sample is skipped (counted)."""

_DEFAULT_SHADOW_FRACTION = 0.1

_ROLLOUT_ALIAS = "production"
"""The alias whose route follows the registry's progressive rollout of its model."""


def _is_registry_ref(source: str) -> bool:
    from aiarch.registry.uris import is_registry_ref

    return is_registry_ref(source)


def artifact_source(mv: Any) -> str:
    """What `resolve_source` takes for a verified version: `path.py:entry` for Python
    artifacts, else the artifact path (resolved by format resolvers keyed on the suffix)."""
    if mv.format == "python":
        if not mv.entry:
            raise ValueError(
                f"{mv.uri} is a Python artifact registered without a callable; register it as "
                "'file.py:CALLABLE'"
            )
        return f"{mv.artifact_path}:{mv.entry}"
    return str(mv.artifact_path)


def load_registry_source(source: str, registry: Any = None) -> Any:
    """The model object for a registry reference: open (and verify) the version, then load its
    artifact through the resolver of its format."""
    from aiarch.registry import Registry

    reg = registry if registry is not None else Registry()
    mv = reg.open(source)
    return resolve_source(artifact_source(mv))


register_resolver(SourceResolver("registry", _is_registry_ref, load_registry_source))


# -- configuration ---------------------------------------------------------------------------
def _selector(text: str, where: str) -> str:
    from aiarch.registry.uris import validate_alias

    text = text.strip()
    if text.isdigit() and int(text) > 0:
        return text
    try:
        return validate_alias(text)
    except ValueError:
        raise ValueError(
            f"{where}: {text!r} is neither an alias (e.g. production) nor a version number"
        ) from None


def parse_route_arms(spec: str) -> list[tuple[str, int]]:
    """`production:90,staging:10` (aliases or version numbers) → [(selector, weight)]."""
    arms: list[tuple[str, int]] = []
    for part in spec.split(","):
        sel, sep, weight = part.partition(":")
        if not sep or not weight.strip().isdigit():
            raise ValueError(
                f"--route: expected ALIAS_OR_VERSION:WEIGHT[,...] (e.g. production:90,staging:10), "
                f"got {spec!r}"
            )
        arms.append((_selector(sel, "--route"), int(weight)))
    if sum(w for _, w in arms) <= 0:
        raise ValueError(f"--route {spec!r}: weights must add up to more than 0")
    if len({s for s, _ in arms}) != len(arms):
        raise ValueError(f"--route {spec!r}: an arm is named twice")
    return arms


def parse_shadow(spec: str) -> tuple[str, str, float]:
    """`fraud@staging[:0.25]` or `fraud/4[:0.25]` → (model, selector, fraction)."""
    body, sep, frac = spec.rpartition(":")
    if not sep:
        body, frac = spec, ""
    if "@" in body:
        name, _, sel = body.partition("@")
    else:
        name, _, sel = body.partition("/")
    if not name or not sel:
        raise ValueError(
            f"--shadow: expected NAME@ALIAS[:FRACTION] or NAME/VERSION[:FRACTION], got {spec!r}"
        )
    try:
        fraction = float(frac) if frac else _DEFAULT_SHADOW_FRACTION
    except ValueError:
        raise ValueError(f"--shadow {spec!r}: fraction must be a number in (0, 1]") from None
    if not 0 < fraction <= 1:
        raise ValueError(f"--shadow {spec!r}: fraction must be in (0, 1]")
    return name, _selector(sel, "--shadow"), fraction


def _registry_name(cfg: ModelConfig) -> str:
    from aiarch.registry.uris import parse_ref

    return parse_ref(cfg.source).name


def prepare_routes(cfg: ServeConfig) -> None:
    """Validate `routes`/`shadows` and add a registry-backed ModelConfig for a routed model
    that has none. Raises ValueError with the accepted forms. Idempotent."""
    by_name = {m.name: m for m in cfg.models}
    for name, spec in cfg.routes.items():
        arms = parse_route_arms(spec)
        if name not in by_name:
            sel = arms[0][0]
            source = f"models:/{name}/{sel}" if sel.isdigit() else f"{name}@{sel}"
            m = ModelConfig(name=name, source=source)
            cfg.models.append(m)
            by_name[name] = m
        elif not _is_registry_ref(by_name[name].source):
            raise ValueError(f"--route {name}: model {name!r} is not served from the registry")
    for name, spec in cfg.shadows.items():
        model, _, _ = parse_shadow(spec if "@" in spec or "/" in spec else f"{name}@{spec}")
        if name not in by_name or not _is_registry_ref(by_name[name].source):
            raise ValueError(
                f"--shadow {spec}: model {name!r} is not served from the registry; serve it with "
                f"--model {model}@ALIAS or --route first"
            )


# -- routes ----------------------------------------------------------------------------------
@dataclass(eq=False)
class Arm:
    """One alias or pinned version of a route, and the loaded version it points at now."""

    selector: str
    weight: int = 0
    entry: Any = None  # ModelEntry of the loaded version; replaced in one assignment on switch
    version: int | None = None
    requests: int = 0
    switches: int = 0
    watch: Any = None
    failed_version: int | None = None

    @property
    def alias(self) -> str | None:
        return None if self.selector.isdigit() else self.selector


@dataclass(eq=False)
class Route:
    """A public model name served from registry versions. `pick` and `mirror` run in the loop
    thread once per request."""

    name: str
    registry_name: str
    config: ModelConfig
    arms: list[Arm]
    shadow: Arm | None = None
    shadow_fraction: float = 0.0
    shadow_counts: dict[tuple[str, str], int] = field(default_factory=dict)
    shadow_in_flight: int = 0
    _bounds: list[tuple[int, Arm]] = field(default_factory=list)
    _total: int = 0
    _random: Any = field(default_factory=lambda: random.Random().random)

    follows_rollout: bool = False
    """True for `NAME@production` with no `--route`: the split follows the registry's rollout."""
    rollout: tuple[int, int, int] | None = None
    """(rollout id, candidate version, weight %) in force, None without a rollout."""
    candidate: Arm | None = None
    failed_candidate: int | None = None

    def __post_init__(self) -> None:
        self.set_arms(self.arms)

    def set_arms(self, arms: list[Arm]) -> None:
        """Route new requests over `arms` by their weights. Loop thread; no await inside, so
        a request sees the old split or the new one, never a mix."""
        acc = 0
        bounds = []
        for arm in arms:
            acc += arm.weight
            bounds.append((acc, arm))
        self.arms, self._bounds, self._total = arms, bounds, acc

    def pick(self, key: bytes | None, params: dict[str, Any] | None) -> Any:
        """The entry of the arm this request goes to (sticky for a key)."""
        if len(self.arms) == 1:
            arm = self.arms[0]
        else:
            if params:
                k = params.get("route_key")
                if k is not None:
                    key = str(k).encode()
            point = (
                zlib.crc32(key) % self._total
                if key is not None
                else int(self._random() * self._total)
            )
            arm = self.arms[-1]
            for bound, candidate in self._bounds:
                if point < bound:
                    arm = candidate
                    break
        arm.requests += 1
        return arm.entry

    def entry_for_version(self, version: str) -> Any:
        """The loaded entry of a specific version (`/v2/models/NAME/versions/N/...`)."""
        arms = [*self.arms, self.shadow] if self.shadow is not None else self.arms
        for arm in arms:
            if arm.entry is not None and arm.entry.version == version:
                return arm.entry
        served = sorted({a.entry.version for a in arms if a.entry is not None})
        raise HttpError(
            404,
            f"Request for unknown model: '{self.name}' version {version} is not found "
            f"(served versions: {', '.join(served)})",
        )

    def mirror(self, infer: Any, x: Any) -> None:
        """Send a sample of requests to the shadow arm; the result is counted and dropped."""
        shadow = self.shadow
        if shadow is None or shadow.entry is None or self._random() >= self.shadow_fraction:
            return
        version = shadow.entry.version
        if self.shadow_in_flight >= SHADOW_MAX_IN_FLIGHT:
            self._count(version, "skipped")
            return
        self.shadow_in_flight += 1
        task = asyncio.ensure_future(infer(shadow.entry.runtime_name, x))
        task.add_done_callback(lambda t: self._shadow_done(t, version))

    def _shadow_done(self, task: asyncio.Future[Any], version: str) -> None:
        self.shadow_in_flight -= 1
        if task.cancelled():
            self._count(version, "cancelled")
        elif task.exception() is not None:
            self._count(version, "failed")
        else:
            self._count(version, "ok")

    def _count(self, version: str, outcome: str) -> None:
        key = (version, outcome)
        self.shadow_counts[key] = self.shadow_counts.get(key, 0) + 1


class RoutingCollector:
    """Route metrics for the server's Prometheus registry; `collect` runs once per scrape."""

    def __init__(self, routing: RegistryRouting):
        self.routing = routing

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "aiarch_route_requests",
            "Requests routed to each arm.",
            labels=["model", "arm", "version"],
        )
        weight = GaugeMetricFamily(
            "aiarch_route_weight", "Traffic weight of each arm.", labels=["model", "arm", "version"]
        )
        switches = CounterMetricFamily(
            "aiarch_route_switches",
            "Hot switches of each arm to a new version.",
            labels=["model", "arm"],
        )
        shadow = CounterMetricFamily(
            "aiarch_shadow_requests",
            "Mirrored requests by outcome (ok, failed, skipped, cancelled).",
            labels=["model", "version", "outcome"],
        )
        for hook in self.routing.count_hooks:
            hook()
        for route in list(self.routing.routes.values()):
            for arm in route.arms:
                v = "" if arm.version is None else str(arm.version)
                requests.add_metric([route.name, arm.selector, v], float(arm.requests))
                weight.add_metric([route.name, arm.selector, v], float(arm.weight))
                switches.add_metric([route.name, arm.selector], float(arm.switches))
            for (version, outcome), n in list(route.shadow_counts.items()):
                shadow.add_metric([route.name, version, outcome], float(n))
        yield from (requests, weight, switches, shadow)


class RegistryRouting:
    """Loads registry-backed models of one server worker, watches their aliases and switches
    versions. `load` and `watch_loop` run in the worker's event loop."""

    def __init__(self, app: Any, runtime: Any, config: ServeConfig):
        self.app = app
        self.runtime = runtime
        self.config = config
        self.routes: dict[str, Route] = {}
        self._registry: Any = None
        self._refs: dict[str, int] = {}  # runtime name → arms using it
        self._collector_added = False
        self.count_hooks: list[Any] = []
        """Called before the route metrics are read: front ends that route requests
        themselves add their picks to the arms' `requests` (the native front)."""

    def handles(self, cfg: ModelConfig) -> bool:
        return _is_registry_ref(cfg.source)

    @property
    def registry(self) -> Any:
        if self._registry is None:
            from aiarch.registry import Registry

            self._registry = Registry(self.config.registry, artifacts=self.config.artifacts)
        return self._registry

    async def load(self, cfg: ModelConfig) -> None:
        """Build the route of `cfg` and load every version its arms need."""
        from aiarch.registry.uris import parse_ref

        loop = asyncio.get_running_loop()
        ref = parse_ref(cfg.source)
        spec = self.config.routes.get(cfg.name)
        if spec:
            arms = [Arm(sel, w) for sel, w in parse_route_arms(spec)]
        else:
            sel = ref.alias or (str(ref.version) if ref.version is not None else "")
            if not sel:  # models:/NAME/latest: pin what is latest now
                mv = await loop.run_in_executor(None, self.registry.get, ref.name)
                sel = str(mv.version)
            arms = [Arm(sel, 100)]
        route = Route(cfg.name, ref.name, cfg, arms)
        shadow_spec = self.config.shadows.get(cfg.name)
        if shadow_spec:
            text = (
                shadow_spec
                if "@" in shadow_spec or "/" in shadow_spec
                else f"{cfg.name}@{shadow_spec}"
            )
            _, sel, fraction = parse_shadow(text)
            route.shadow = Arm(sel)
            route.shadow_fraction = fraction
        route.follows_rollout = not spec and arms[0].selector == _ROLLOUT_ALIAS
        for arm in [*route.arms, *([route.shadow] if route.shadow else [])]:
            version = await loop.run_in_executor(None, self._resolve_arm, route, arm)
            await self._switch(route, arm, version)
        if route.follows_rollout:
            split = await loop.run_in_executor(None, self._split, route)
            await self._follow(route, split)
        self.routes[cfg.name] = route
        self.app.routes[cfg.name] = route
        self.app.route_changed(cfg.name)
        if not self._collector_added:
            self.app.metrics.registry.register(RoutingCollector(self))
            self._collector_added = True

    def _resolve_arm(self, route: Route, arm: Arm) -> int:
        if arm.alias is None:
            return int(arm.selector)
        arm.watch = self.registry.watch(route.registry_name, arm.alias)
        if arm.watch.version is None:
            self.registry.get(route.registry_name, alias=arm.alias)  # raises naming what exists
        return int(arm.watch.version)

    def _acquire(self, route: Route, version: int) -> Any:
        """Load `version` (verified) unless loaded; returns its ModelEntry. Worker thread."""
        from .entry import ModelEntry

        rn = f"{route.name}.v{version}"
        rt = self.runtime
        if self._refs.get(rn, 0) == 0 or rn not in rt.models():
            mv = self.registry.open(route.registry_name, version=version)
            model = resolve_source(artifact_source(mv))
            batching, cache = _runtime_configs(route.config)
            kwargs: dict[str, Any] = {
                "version": str(version),
                "cache": cache,
                "warmup": route.config.warmup,
            }
            if batching is not None:
                kwargs["batching"] = batching
            monitor = route.config.monitor or {}
            tracker = feedback_tracker(rt, route.name, monitor.get("feedback"))
            if tracker is not None:
                kwargs["feedback"] = tracker
            rt.add_model(rn, model, **kwargs)
            log.info(
                "loaded %s version %d (%s) as %s", route.registry_name, version, mv.digest[:12], rn
            )
        self._refs[rn] = self._refs.get(rn, 0) + 1
        self.app.public_names[rn] = route.name
        return ModelEntry(rt.model_info(rn), f"models:/{route.registry_name}/{version}", route.name)

    def _release(self, runtime_name: str) -> None:
        """Drop one use of a runtime model; the last one drains and removes it. Worker thread."""
        n = self._refs.get(runtime_name, 0) - 1
        if n > 0:
            self._refs[runtime_name] = n
            return
        self._refs.pop(runtime_name, None)
        if runtime_name in self.runtime.models():
            self.runtime.remove_model(runtime_name, drain=True)
            log.info("drained and unloaded %s", runtime_name)
        self.app.public_names.pop(runtime_name, None)

    async def _switch(self, route: Route, arm: Arm, version: int) -> None:
        loop = asyncio.get_running_loop()
        entry = await loop.run_in_executor(None, self._acquire, route, version)
        old = arm.entry
        # The switch: from here on the loop thread routes new requests to the new version.
        arm.entry, arm.version = entry, version
        if arm is route.arms[0]:
            self.app.entries[route.name] = entry
        if route.name in self.routes:
            self.app.route_changed(route.name)
        if old is not None:
            arm.switches += 1
            log.info(
                "%s: %s now serves version %d (was %s)",
                route.name,
                arm.selector,
                version,
                old.version,
            )
            await loop.run_in_executor(None, self._release, old.runtime_name)

    async def watch_loop(self) -> None:
        """Poll every watched alias each `registry_poll_s`; switch the arms whose alias moved."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.config.registry_poll_s)
            if not self.routes:
                continue  # no registry-served model: nothing to poll
            try:
                polled = await loop.run_in_executor(None, self._poll)
            except Exception:
                log.exception("polling the registry failed; retrying")
                continue
            moved, splits = polled
            for route, arm, version in moved:
                try:
                    await self._switch(route, arm, version)
                except Exception:
                    arm.failed_version = version
                    log.exception(
                        "%s: cannot switch %s to version %d; still serving version %s",
                        route.name,
                        arm.selector,
                        version,
                        arm.version,
                    )
            for route, split in splits:
                await self._follow(route, split)

    def _poll(
        self,
    ) -> tuple[list[tuple[Route, Arm, int]], list[tuple[Route, tuple[int, int, int] | None]]]:
        moved = []
        splits = []
        for route in list(self.routes.values()):
            # The rollout before the alias: completion moves production and ends the rollout
            # in one transaction, so this order never sees the rollout gone with production
            # still on the old version.
            if route.follows_rollout:
                split = self._split(route)
                if split != route.rollout:
                    splits.append((route, split))
            for arm in [*self._base_arms(route), *([route.shadow] if route.shadow else [])]:
                if arm.watch is None:
                    continue
                arm.watch.poll()
                v = arm.watch.version
                if v is not None and v != arm.version and v != arm.failed_version:
                    moved.append((route, arm, v))
        return moved, splits

    # -- following a progressive rollout ----------------------------------------------------
    @staticmethod
    def _base_arms(route: Route) -> list[Arm]:
        return [a for a in route.arms if a is not route.candidate]

    def _split(self, route: Route) -> tuple[int, int, int] | None:
        """The active rollout's (id, candidate, weight) of the route's model. Worker thread."""
        from aiarch.rollout.state import serving_split

        return serving_split(self.registry, route.registry_name)

    async def _follow(self, route: Route, split: tuple[int, int, int] | None) -> None:
        """Apply a rollout's split to `route`: load the candidate version when it is new, then
        swap the arms' weights in one step; with no rollout, drop the candidate arm."""
        loop = asyncio.get_running_loop()
        production = self._base_arms(route)[0]
        old = route.candidate
        if split is None:
            if old is None:
                route.rollout = None
                return
            production.weight = 100
            route.set_arms([production])
            route.candidate, route.rollout = None, None
            self.app.route_changed(route.name)
            log.info("%s: rollout ended; candidate version %s drained", route.name, old.version)
            await loop.run_in_executor(None, self._release, old.entry.runtime_name)
            return
        _, version, weight = split
        if old is None or old.version != version:
            if version == route.failed_candidate:
                return
            try:
                entry = await loop.run_in_executor(None, self._acquire, route, version)
            except Exception:
                route.failed_candidate = version
                log.exception(
                    "%s: cannot load rollout candidate version %d; production keeps all traffic",
                    route.name,
                    version,
                )
                return
            arm = Arm("candidate", weight, entry=entry, version=version)
        else:
            arm = old
            arm.weight = weight
        production.weight = 100 - weight
        route.set_arms([production, arm])
        route.candidate, route.rollout = arm, split
        self.app.route_changed(route.name)
        log.info(
            "%s: rollout #%d: candidate version %d at %d %%", route.name, split[0], version, weight
        )
        if old is not None and old is not arm:
            await loop.run_in_executor(None, self._release, old.entry.runtime_name)

    def close(self) -> None:
        if self._registry is not None:
            self._registry.close()
