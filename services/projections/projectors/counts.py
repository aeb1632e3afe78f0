"""Counts by status and service: a unit's own (cases it holds) and its subtree's (cases held by
it or any unit under it). Subtree counts follow from own counts through the ancestor chain."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping

from services.projections.projectors.paths import UnitPaths
from services.projections.projectors.rows import Changes, CountKey


def own_deltas(changes: Iterable[Changes]) -> Counter[CountKey]:
    """The net change of own counts over a batch (zero entries dropped)."""
    total: Counter[CountKey] = Counter()
    for change in changes:
        for key, delta in change.counts:
            total[key] += delta
    return Counter({k: v for k, v in total.items() if v})


def subtree_deltas(own: Mapping[CountKey, int], paths: UnitPaths) -> Counter[CountKey]:
    """Each own delta, added to the unit and every ancestor of it."""
    total: Counter[CountKey] = Counter()
    for key, delta in own.items():
        for unit in paths.chain(key.unit):
            total[CountKey(unit, key.status, key.service_code)] += delta
    return Counter({k: v for k, v in total.items() if v})
