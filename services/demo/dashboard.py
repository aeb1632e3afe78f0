"""Supervisors' dashboards read from the projections API, once the read models have applied
the log's head (``min_position``: read-your-writes)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

from services.demo.client import Answer, Api
from services.demo.report import UnitSummary
from shared.logging import get_logger
from shared.reference import Reference

log = get_logger("yizhan.demo")


class ProjectionsBehind(RuntimeError):
    """The read models did not reach the wanted position in time."""


async def read_caught_up(api: Api, path: str, reader: str, position: int,
                         timeout_s: float = 120.0, **params: Any) -> Answer:
    """GET ``path`` with ``min_position``, asking again while the projection is behind."""
    deadline = time.monotonic() + timeout_s
    while True:
        answer = await api.read(path, reader, min_position=position, **params)
        if answer.ok:
            return answer
        if answer.status != 504 or time.monotonic() > deadline:
            raise ProjectionsBehind(f"{path}: {answer.status} {answer.problem}")
        await asyncio.sleep(0.2)


async def city_total(api: Api, city: str, reader: str, position: int) -> int:
    answer = await read_caught_up(api, f"/v1/projections/units/{city}/counts", reader,
                                  position)
    return int(answer.body.get("subtree_total", 0))


async def summary(api: Api, ref: Reference, unit: str, reader: str,
                  position: int) -> UnitSummary:
    """One unit's dashboard: counts by status, own queue, overdue, SLA and hand-offs."""
    base = "/v1/projections"
    counts, queue, overdue = await asyncio.gather(
        read_caught_up(api, f"{base}/units/{unit}/counts", reader, position),
        read_caught_up(api, f"{base}/units/{unit}/queue", reader, position, limit=1),
        read_caught_up(api, f"{base}/overdue", reader, position, unit=unit, limit=1))
    sla, handoffs = await asyncio.gather(
        _items(api, f"{base}/sla", reader, position, unit=unit, group_by="level"),
        _items(api, f"{base}/handoffs", reader, position, unit=unit))
    found = ref.org.unit(unit)
    return UnitSummary(
        level=str(found.level), unit=unit, name=found.name, reader=reader,
        subtree_total=int(counts.body.get("subtree_total", 0)),
        own_open=int(queue.body.get("total", 0)), overdue=int(overdue.body.get("total", 0)),
        by_status=_by_status(counts.body.get("subtree", {})),
        sla=sla, handoffs=handoffs)


async def _items(api: Api, path: str, reader: str, position: int,
                 **params: Any) -> list[dict[str, Any]]:
    """The ``items`` of a statistics read; a failing read becomes one row naming the error
    (the dashboard still prints, and says what the projections API answered)."""
    try:
        answer = await read_caught_up(api, path, reader, position, **params)
    except ProjectionsBehind as exc:
        log.warning("demo.dashboard_read_failed", path=path, error=str(exc))
        return [{"error": str(exc)}]
    return list(answer.body.get("items", []))


def _by_status(subtree: dict[str, dict[str, int]]) -> dict[str, int]:
    totals: Counter[str] = Counter()
    for status, by_service in subtree.items():
        totals[status] += sum(by_service.values())
    return dict(totals)
