"""Rebuild the read models from the event store, blue/green.

1. Empty the inactive table set (``recreate_tables``: tables without indexes).
2. Bulk phase: read the events table in position order, in ranges, while the previous range
   is projected (a reader task); fold every event strictly with the same projectors as the
   live path, in memory (``CaseFolder`` + ``ReadModel``); timeline rows are COPYed out as they
   come, by a writer task on its own connection; the rest is COPYed at the end.
3. Index, then catch up with the live writer (``writer.apply_batch``) until close to the head.
4. Swap: in one transaction, lock ``projections.state`` (every live writer holds it shared),
   apply the last events, set the new set's watermark and make it active.

Queries read the active set throughout, so they keep working. An event the projectors do
not know stops the rebuild (``Unprojectable``): nothing is swapped.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from services.projections.projectors import (
    TABLES,
    CaseFolder,
    Gap,
    RawEvent,
    ReadModel,
    TimelineRow,
    UnitPaths,
)
from services.projections.schema import (
    STATE,
    active_schema,
    as_app_role,
    ddl,
    other,
    recreate_tables,
)
from services.projections.writer import RAW_COLUMNS, apply_batch
from shared.logging import get_logger

log = get_logger(__name__)

_RANGE = f"SELECT {RAW_COLUMNS} FROM events WHERE position > $1 AND position <= $2 " \
         "ORDER BY position"
_HEAD = "SELECT coalesce(max(position), 0) FROM events"
TIMELINE_CHUNK = 20_000


@dataclass(frozen=True)
class RebuildProgress:
    """Reported after every batch: ``done`` of ``total`` events, the rate, the estimate."""

    phase: str
    done: int
    total: int
    events_per_s: float
    eta_s: float


ProgressCallback = Callable[[RebuildProgress], None]


@dataclass
class RebuildReport:
    schema: str
    previous: str
    position: int
    events: int
    cases: int
    seconds: float
    bulk_seconds: float
    generation: int
    phases: dict[str, float] = field(default_factory=dict)

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


class RebuildFailed(RuntimeError):
    """The log holds something the rebuild cannot project; the active set is untouched."""


class _Rate:
    def __init__(self, total: int, callback: ProgressCallback | None, phase: str) -> None:
        self.total, self.callback, self.phase = total, callback, phase
        self.started = time.perf_counter()
        self.last_report = 0.0

    def report(self, done: int, *, force: bool = False) -> None:
        now = time.perf_counter()
        if self.callback is None or (not force and now - self.last_report < 0.25):
            return
        self.last_report = now
        rate = done / max(now - self.started, 1e-9)
        eta = (self.total - done) / rate if rate > 0 else float("inf")
        self.callback(RebuildProgress(self.phase, done, self.total, rate, max(eta, 0.0)))


async def _ranges(pool: asyncpg.Pool, after: int, upto: int,
                  size: int) -> AsyncIterator[list[RawEvent]]:
    """Event ranges in order, the next one read while the caller works on this one."""
    queue: asyncio.Queue[list[RawEvent] | None] = asyncio.Queue(maxsize=3)

    async def read() -> None:
        start = after
        async with pool.acquire() as conn:
            while start < upto:
                end = min(start + size, upto)
                rows = await conn.fetch(_RANGE, start, end)
                await queue.put([RawEvent(*r) for r in rows])
                start = end
        await queue.put(None)

    reader = asyncio.create_task(read(), name="rebuild-reader")
    try:
        while (batch := await queue.get()) is not None:
            yield batch
        await reader
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader


class _TimelineSink:
    """COPYs timeline rows into the new set from its own connection while folding goes on."""

    def __init__(self, pool: asyncpg.Pool, schema: str) -> None:
        self.pool, self.schema = pool, schema
        self.pending: list[TimelineRow] = []
        self.queue: asyncio.Queue[list[TimelineRow] | None] = asyncio.Queue(maxsize=4)
        self.task = asyncio.create_task(self._run(), name="rebuild-timeline")

    async def add(self, rows: list[TimelineRow]) -> None:
        self.pending.extend(rows)
        if len(self.pending) >= TIMELINE_CHUNK:
            await self.queue.put(self.pending)
            self.pending = []

    async def close(self) -> None:
        if self.pending:
            await self.queue.put(self.pending)
        await self.queue.put(None)
        await self.task

    async def _run(self) -> None:
        async with self.pool.acquire() as conn:
            while (rows := await self.queue.get()) is not None:
                await conn.copy_records_to_table("timeline", schema_name=self.schema,
                                                 records=rows, columns=TABLES["timeline"])


async def bulk_fold(pool: asyncpg.Pool, schema: str, paths: UnitPaths, upto: int, *,
                    batch_size: int, progress: ProgressCallback | None) -> CaseFolder:
    """Fold events 1..``upto`` into memory, COPYing timeline rows into ``schema``."""
    folder = CaseFolder(paths, strict=True)
    model = ReadModel(keep_timeline=False)
    sink = _TimelineSink(pool, schema)
    rate = _Rate(upto, progress, "bulk")
    done = 0
    try:
        async for batch in _ranges(pool, 0, upto, batch_size):
            for event in batch:
                if isinstance(folder.offer(event), Gap):
                    raise RebuildFailed(f"{event.stream_id}: version {event.version} comes "
                                        "after a version missing from the log")
            lines = [c.timeline for c in folder.changes if c.timeline is not None]
            for change in folder.changes:
                model.apply(change)
            folder.changes.clear()
            await sink.add(lines)
            done += len(batch)
            rate.report(done)
    except BaseException:
        sink.task.cancel()
        raise
    await sink.close()
    rate.report(done, force=True)
    await _copy_model(pool, schema, folder, model, paths)
    return folder


async def _copy_model(pool: asyncpg.Pool, schema: str, folder: CaseFolder, model: ReadModel,
                      paths: UnitPaths) -> None:
    tables: dict[str, list[Any]] = {
        "case_summary": list(folder.rows.values()),
        "unit_counts": [(*k, n) for k, n in model.own_counts().items()],
        "subtree_counts": [(*k, n) for k, n in model.subtree_counts(paths).items()],
        "sla_facts": list(model.sla.values()),
        "sla_breaches": list(model.breaches.values()),
        "moves": list(model.moves.values()),
    }

    async def copy(table: str, rows: list[Any]) -> None:
        columns = TABLES.get(table, ("unit", "status", "service_code", "n"))
        async with pool.acquire() as conn:
            await conn.copy_records_to_table(table, schema_name=schema, records=rows,
                                             columns=columns)

    await asyncio.gather(*(copy(t, rows) for t, rows in tables.items() if rows))


async def _index(pool: asyncpg.Pool, schema: str) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await as_app_role(conn)
        await conn.execute("SET LOCAL maintenance_work_mem = '256MB'")
        await conn.execute(ddl("indexes.sql", schema))
    async with pool.acquire() as conn:
        await conn.execute(f"ANALYZE {schema}.case_summary, {schema}.timeline, "
                           f"{schema}.subtree_counts, {schema}.sla_facts, {schema}.moves")


async def _catch_up(pool: asyncpg.Pool, schema: str, paths: UnitPaths, after: int,
                    batch_size: int, *, close_enough: int) -> int:
    """Apply what was appended since ``after`` until fewer than ``close_enough`` remain."""
    while True:
        head = int(await pool.fetchval(_HEAD))
        if head - after < close_enough:
            return after
        upto = min(head, after + batch_size)
        async with pool.acquire() as conn, conn.transaction():
            rows = [RawEvent(*r) for r in await conn.fetch(_RANGE, after, upto)]
            await apply_batch(conn, schema, rows, paths, strict=True)
            await _set_watermark(conn, schema, upto)
        after = upto


async def _set_watermark(conn: Any, schema: str, position: int) -> None:
    await conn.execute(f"UPDATE {schema}.progress SET position = $1, updated_at = now() "
                       "WHERE name = 'watermark'", position)


async def _swap(pool: asyncpg.Pool, schema: str, paths: UnitPaths, after: int) -> tuple[int,
                                                                                         int]:
    """Lock out live writers, apply the last events, make ``schema`` active."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.fetchval(f"SELECT active_schema FROM {STATE} WHERE name = 'main' FOR UPDATE")
        head = int(await conn.fetchval(_HEAD))
        if head > after:
            rows = [RawEvent(*r) for r in await conn.fetch(_RANGE, after, head)]
            await apply_batch(conn, schema, rows, paths, strict=True)
        await _set_watermark(conn, schema, head)
        generation = await conn.fetchval(
            f"UPDATE {STATE} SET active_schema = $1, generation = generation + 1, "
            "swapped_at = now(), rebuilt_to = $2 WHERE name = 'main' RETURNING generation",
            schema, head)
    return head, int(generation)


async def rebuild(
    pool: asyncpg.Pool, paths: UnitPaths, *, batch_size: int = 5000,
    progress: ProgressCallback | None = None, swap: bool = True,
) -> RebuildReport:
    """Rebuild every read model into the inactive table set and swap it in (see the module
    docstring). Raises ``Unprojectable`` or ``RebuildFailed`` (nothing swapped) on an event
    it cannot project. ``swap=False`` builds and catches up but leaves the active set alone."""
    started = time.perf_counter()
    phases: dict[str, float] = {}
    async with pool.acquire() as conn:
        previous = await active_schema(conn)
        target = other(previous)
        await recreate_tables(conn, target)
    upto = int(await pool.fetchval(_HEAD))
    log.info("projections.rebuild.start", table_set=target, head=upto)
    mark = time.perf_counter()
    folder = await bulk_fold(pool, target, paths, upto, batch_size=batch_size,
                             progress=progress)
    phases["bulk"] = time.perf_counter() - mark
    mark = time.perf_counter()
    await _index(pool, target)
    phases["index"] = time.perf_counter() - mark
    mark = time.perf_counter()
    async with pool.acquire() as conn:
        await _set_watermark(conn, target, upto)
    reached = await _catch_up(pool, target, paths, upto, batch_size, close_enough=batch_size)
    generation = 0
    if swap:
        reached, generation = await _swap(pool, target, paths, reached)
    phases["catch_up_and_swap"] = time.perf_counter() - mark
    seconds = time.perf_counter() - started
    report = RebuildReport(target, previous, reached, reached, len(folder.rows), seconds,
                           phases["bulk"], generation, phases)
    log.info("projections.rebuild.done", table_set=target, position=reached,
             cases=report.cases, seconds=round(seconds, 2),
             events_per_s=round(report.events_per_s), swapped=swap, phases=phases)
    return report
