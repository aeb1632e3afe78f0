"""The live path's application logic, free of Faust: apply a partition's batch to the active
table set (inside the idempotent consumer's transaction), and keep the watermark moving."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from services.projections.progress import advance_watermark
from services.projections.projectors import UnitPaths, raw
from services.projections.schema import active_schema
from services.projections.writer import apply_batch
from shared.contracts.envelope import RecordedEvent
from shared.eventstore.postgres import Conn
from shared.logging import get_logger

log = get_logger(__name__)
CONSUMER = "projections"


@dataclass
class LiveStats:
    """Counters of the live path, for the metrics endpoint."""

    applied: int = 0
    duplicates: int = 0
    parked: int = 0
    gaps_filled: int = 0
    batches: int = 0


class LiveProjection:
    """``apply(conn, events)``: the ``Apply`` the idempotent consumer calls per partition and
    batch. Holds the active set shared, so a rebuild's swap waits for it (and it for the
    swap)."""

    def __init__(self, paths: UnitPaths) -> None:
        self.paths = paths
        self.stats = LiveStats()

    async def apply(self, conn: Conn, events: Sequence[RecordedEvent]) -> None:
        schema = await active_schema(conn, lock=True)
        result = await apply_batch(conn, schema, [raw(e) for e in events], self.paths)
        self.stats.batches += 1
        self.stats.applied += result.applied
        self.stats.duplicates += result.duplicates
        self.stats.parked += result.parked
        self.stats.gaps_filled += result.gaps_filled


async def keep_watermark_moving(pool: asyncpg.Pool, stop: asyncio.Event,
                                interval_s: float = 0.2) -> None:
    """Advance the watermark every ``interval_s`` until ``stop`` is set."""
    while not stop.is_set():
        try:
            async with pool.acquire() as conn:
                await advance_watermark(conn)
        except (asyncpg.PostgresError, OSError) as exc:
            log.warning("projections.watermark_failed", error=repr(exc))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s)
