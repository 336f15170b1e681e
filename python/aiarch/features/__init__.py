"""Online feature lookup and point-in-time-correct training sets.

Definitions use Feast's nouns (:class:`Entity`, :class:`Feature`, :class:`FeatureView`) and live
in a SQLite file under ``AIARCH_HOME``. The online store is the native in-process table by
default (``memory://``, or ``native://PATH`` with snapshots) or Redis (``redis://...``), chosen by
URL; the API is the same::

    store = FeatureStore("memory://")
    store.apply(Entity("card"), FeatureView("txn", "card", (Feature("amount_7d"),), ttl=3600))
    plan = store.plan(["txn:amount_7d"])
    values, status = plan.get([42, 43])   # float32 [2, 1], uint8 [2]
"""

from __future__ import annotations

from .definitions import Entity, Feature, FeatureView
from .online import EXPIRED, MISSING, PRESENT, UNAVAILABLE
from .store import FeatureStore, LookupCounters, LookupPlan

__all__ = [
    "EXPIRED",
    "MISSING",
    "PRESENT",
    "UNAVAILABLE",
    "Entity",
    "Feature",
    "FeatureStore",
    "FeatureView",
    "LookupCounters",
    "LookupPlan",
]
