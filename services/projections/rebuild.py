"""Rebuild the read models from the event store, blue/green.

1. Empty the inactive table set (``recreate_tables``: tables without indexes, but the
   timeline's), while the first ranges are already being read and folded.
2. Bulk phase: read the events table in position order, in ranges, while the previous range
   is projected (a reader task; ``data`` is parsed as it arrives); fold every event strictly
   with the same projectors as the live path, in memory (``CaseFolder`` + ``ReadModel``); each
   range's timeline rows are COPYed by a writer task on its own connection (into a table made
   with its index, ``INDEXED_FIRST``) while the next range is folded.
   In several processes (``parallel_fold``, ``Settings.rebuild_processes``), each folds and
   writes one ``Shard`` of the cases, and sends back its counts for this process to sum.
3. Then, in a few concurrent groups: COPY each other table, build its indexes, ANALYZE it
   (``ANALYZED``). Python encodes one table while the server indexes another. (In several
   processes, each COPYs its cases' rows after its fold; this one then writes the summed
   counts and builds every index.)
4. Catch up with the live writer (``writer.apply_batch``) until close to the head.
5. Swap: in one transaction, lock ``projections.state`` (every live writer holds it shared),
   apply the last events, set the new set's watermark and make it active.

Everything before the swap commits with ``synchronous_commit = off``: none of it is needed
after a crash (the inactive set is rebuilt from scratch), and the swap's own commit flushes
the log up to it, so once the new set is active it is durable. The cyclic garbage collector
is paused for the whole rebuild (see ``_GcPause``).

One rebuild at a time (``REBUILD_LOCK``, see ``rebuild``); the swap checks that no other
swapped meanwhile. Queries read the active set throughout, so they keep working. An event the
projectors do not know stops the rebuild (``Unprojectable``): nothing is swapped.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import multiprocessing
import os
import re
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnContext
from multiprocessing.synchronize import Event as EventType
from typing import Any, NamedTuple, cast

import asyncpg

from services.projections.projectors import (
    TABLES,
    CaseFolder,
    CountKey,
    Gap,
    RawEvent,
    ReadModel,
    TimelineRow,
    UnitPaths,
)
from services.projections.projectors.events import read_stored
from services.projections.schema import (
    LAYOUT,
    STATE,
    active_schema,
    as_app_role,
    ddl,
    other,
    recreate_tables,
)
from services.projections.writer import RAW_COLUMNS, apply_batch
from shared.eventstore.postgres import create_pool
from shared.logging import get_logger
from shared.runtime import end_with_parent

log = get_logger(__name__)

_RANGE = f"SELECT {RAW_COLUMNS} FROM events WHERE position > $1 AND position <= $2 " \
         "ORDER BY position"
_BULK_RANGE = _RANGE.replace("data::text", "convert_to(data::text, 'UTF8')")
"""The bulk phase reads ``data`` as the bytes of its text (no str is made), for orjson."""
_HEAD = "SELECT coalesce(max(position), 0) FROM events"
FIRST_RANGE = 500
"""The first range read is this small (nothing can be folded until it has arrived); each next
one twice the last, up to the batch size."""
ANALYZED = ("case_summary", "subtree_counts", "sla_facts", "moves")
"""The tables whose statistics are gathered after the COPY. Not the timeline, the largest: it
is only read through its primary key (``WHERE case_id = $1 [AND type = ANY(..)] ORDER BY
version``), a plan that needs no statistics, and ANALYZE of it was the longest step after the
fold; autovacuum gathers them soon after."""
YIELD_EVERY = 500
"""Events folded between two turns of the event loop: the reader's next range and the timeline
writer's COPY each need several round trips, and each can only take its next step then."""
_NO_SYNC = "SET LOCAL synchronous_commit = off"
REBUILD_LOCK = 0x59_5A_50_4C  # "YZPL": one rebuild at a time (``rebuild``)


class _GcPause:
    """Pause the cyclic garbage collector (re-entrant; restores what it found).

    A rebuild keeps every case's row, fact and count key in memory until it COPYs them: many
    container objects that live long and form no cycles. Each collection walks them all again
    (measured: 40-45% of the fold's time, then one long pause when collection resumes), and
    none of them is ever garbage. While paused, cyclic garbage made by anything else in the
    process waits for the next collection; plain garbage is freed as always."""

    def __init__(self) -> None:
        self.depth = 0
        self.was_enabled = False

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        if self.depth == 0:
            self.was_enabled = gc.isenabled()
            gc.disable()
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
            if self.depth == 0 and self.was_enabled:
                gc.enable()


gc_paused = _GcPause()


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
    processes: int = 1

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


class Shard(NamedTuple):
    """The cases whose stream id hashes (PostgreSQL's ``hashtext``) to ``number`` modulo
    ``of``: every event of a case falls in one shard, so shards fold independently."""

    number: int = 0
    of: int = 1


WHOLE = Shard()
PARALLEL_FROM = 100_000
"""A shorter log is folded in one process, whatever the rebuild is given: it takes about two
seconds there, and starting another process costs a quarter to half a second of a core."""
_IN_SHARD = " AND (hashtext(stream_id) & 2147483647) % $3 = $4 ORDER BY"


async def _ranges(pool: asyncpg.Pool, after: int, upto: int, size: int,
                  shard: Shard = WHOLE) -> AsyncIterator[list[RawEvent]]:
    """The shard's events in ranges of positions, in order, the next range read while the
    caller works on this one."""
    queue: asyncio.Queue[list[RawEvent] | None] = asyncio.Queue(maxsize=3)
    extra: tuple[int, ...]
    query, extra = _BULK_RANGE, ()
    if shard.of > 1:
        query, extra = _BULK_RANGE.replace(" ORDER BY", _IN_SHARD), (shard.of, shard.number)

    async def read() -> None:
        start, step = after, min(size, FIRST_RANGE)  # folding starts sooner
        async with pool.acquire() as conn:
            while start < upto:
                end = min(start + step, upto)
                rows = await conn.fetch(query, start, end, *extra)
                await queue.put([RawEvent(p, s, v, t, sv, read_stored(data), at)
                                 for p, s, v, t, sv, data, at in rows])
                start, step = end, min(step * 2, size)
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
    """COPYs timeline rows into the new set from its own connection while folding goes on,
    in one transaction."""

    def __init__(self, pool: asyncpg.Pool, schema: str,
                 tables: Awaitable[None] | None) -> None:
        self.pool, self.schema, self.tables = pool, schema, tables
        self.queue: asyncio.Queue[list[TimelineRow] | None] = asyncio.Queue(maxsize=4)
        self.task = asyncio.create_task(self._run(), name="rebuild-timeline")

    async def put(self, rows: list[TimelineRow]) -> None:
        """Queue one range's rows."""
        if rows:
            await self._send(rows)

    async def close(self) -> None:
        """Wait for every row to be COPYed."""
        await self._send(None)
        await self.task

    async def _send(self, item: list[TimelineRow] | None) -> None:
        """Queue ``item``, waiting for room; raise what stopped the writer, if it stopped."""
        if not self.task.done() and self.queue.full():
            put = asyncio.ensure_future(self.queue.put(item))
            await asyncio.wait((put, self.task), return_when=asyncio.FIRST_COMPLETED)
            if put.done():
                return
            put.cancel()
        if self.task.done():
            await self.task  # raises what stopped it
            raise RuntimeError("the timeline writer stopped early")
        self.queue.put_nowait(item)

    async def _run(self) -> None:
        if self.tables is not None:  # folding starts while the tables are being made
            await self.tables
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(_NO_SYNC)
            while (rows := await self.queue.get()) is not None:
                await conn.copy_records_to_table("timeline", schema_name=self.schema,
                                                 records=rows, columns=TABLES["timeline"])


@functools.cache
def _indexes(schema: str) -> dict[str, list[str]]:
    """The statements of ``indexes.sql``, by the table they index."""
    text = "\n".join(line for line in ddl("indexes.sql", schema).splitlines()
                     if not line.lstrip().startswith("--"))
    found: dict[str, list[str]] = {}
    for statement in filter(None, (part.strip() for part in text.split(";"))):
        table = re.search(rf"\bON\s+{schema}\.(\w+)", statement)
        found.setdefault(table.group(1) if table else "", []).append(statement)
    return found


async def _index_table(conn: Any, schema: str, table: str) -> None:
    """Within the caller's transaction: build ``table``'s indexes (as the group role, so any
    service login may drop them later) and gather its statistics, in one round trip."""
    statements = _indexes(schema).get(table, [])
    if statements:
        await as_app_role(conn)
        statements = ["SET LOCAL maintenance_work_mem = '256MB'", *statements]
    if table in ANALYZED:
        statements.append(f"ANALYZE {schema}.{table}")
    if statements:
        await conn.execute(";\n".join(statements))


OnBatch = Callable[[int, bool], None]
"""Called after every range with the events folded so far, and ``True`` once all are."""


async def _fold(pool: asyncpg.Pool, schema: str, paths: UnitPaths, upto: int, *,
                batch_size: int, shard: Shard, on_batch: OnBatch,
                tables: Awaitable[None] | None,
                then: Callable[[CaseFolder, ReadModel], Awaitable[None]],
                ) -> tuple[CaseFolder, ReadModel]:
    """Fold ``shard``'s events 1..``upto`` into memory, strictly, with the live path's
    projectors; each range's timeline rows are COPYed into ``schema`` by a writer task on its
    own connection while the next range is folded. Then ``then`` (which writes the rest),
    while the writer COPYs the last of the timeline. ``tables``: awaited before the first COPY
    (the tables may still be being made while the first ranges are folded)."""
    with gc_paused():
        folder = CaseFolder(paths, strict=True)
        # the case rows are the folder's; the timeline holds one range's rows for the sink
        model = ReadModel(keep_cases=False)
        sink = _TimelineSink(pool, schema, tables)
        done = 0
        offer, changes, apply = folder.offer, folder.changes, model.apply
        batch: list[RawEvent] = []
        try:
            async for batch in _ranges(pool, 0, upto, batch_size, shard):
                for at in range(0, len(batch), YIELD_EVERY):
                    for event in batch[at:at + YIELD_EVERY]:
                        if isinstance(offer(event), Gap):
                            raise RebuildFailed(f"{event.stream_id}: version {event.version} "
                                                "comes after a version missing from the log")
                    await asyncio.sleep(0)  # the reader and the writer take their next step
                for change in changes:
                    apply(change)
                changes.clear()
                lines, model.timeline = model.timeline, []
                await sink.put(lines)
                done += len(batch)
                on_batch(done, False)
            batch = []
            on_batch(done, True)
            if tables is not None:
                await tables
            await _together(sink.close(), then(folder, model))
        except BaseException:
            sink.task.cancel()
            await asyncio.gather(sink.task, return_exceptions=True)
            raise
    return folder, model


async def bulk_fold(pool: asyncpg.Pool, schema: str, paths: UnitPaths, upto: int, *,
                    batch_size: int, progress: ProgressCallback | None,
                    index: bool = False, phases: dict[str, float] | None = None,
                    tables: Awaitable[None] | None = None) -> CaseFolder:
    """Fold events 1..``upto`` in this process and COPY every read model into ``schema``
    (see ``_fold``). With ``index``, each table but those of ``INDEXED_FIRST`` (whose indexes
    the caller made with the tables) is indexed and analysed as soon as it is written.
    ``phases`` gets the seconds of "bulk" (read and fold, the timeline COPYed meanwhile) and
    "index" (the rest of the timeline and the other tables COPYed, indexed and analysed)."""
    started = folded = time.perf_counter()
    rate = _Rate(upto, progress, "bulk")

    def on_batch(done: int, last: bool) -> None:
        nonlocal folded
        rate.report(done, force=last)
        if last:
            folded = time.perf_counter()

    def copy(folder: CaseFolder, model: ReadModel) -> Awaitable[None]:
        def copied() -> None:  # what only the COPYs needed goes while the server indexes
            model.counts.clear()
            model.sla.clear()
            model.breaches.clear()
            model.moves.clear()

        return _copy_model(pool, schema, _rows_of(folder, model, paths), index=index,
                           copied=copied)

    folder, _ = await _fold(pool, schema, paths, upto, batch_size=batch_size, shard=WHOLE,
                            on_batch=on_batch, tables=tables, then=copy)
    if phases is not None:
        phases["bulk"] = folded - started
        phases["index"] = time.perf_counter() - folded
    return folder


INDEXED_FIRST = ("timeline",)
"""Tables whose indexes a rebuild makes with the tables, before any row: the timeline is the
largest table, written while Python folds, and the server keeps its index up to date on its own
core meanwhile (built at the end, it would lengthen the tail, when nothing is left to overlap it
with). The others are written after the fold, and indexed then."""
COPY_GROUPS = (("case_summary",), ("sla_facts", "sla_breaches"),
               ("moves", "subtree_counts", "unit_counts"))
"""The tables written after the fold, one connection and transaction per group, the groups
concurrently (with the timeline's writer, four connections: a pool's usual minimum)."""
COUNT_TABLES = ("subtree_counts", "unit_counts")
"""Sums over all cases. Folded in several processes (``parallel_fold``), each process writes
the rows of its own cases, and sends its counts for the rebuild to write their sums."""
CASE_GROUPS = tuple(group for group in (
    tuple(table for table in tables if table not in COUNT_TABLES) for tables in COPY_GROUPS)
    if group)
"""``COPY_GROUPS`` but the counts: what each fold process writes after its fold."""

Rows = Callable[[str], list[Any]]
"""The rows to COPY into a table (none: nothing to COPY)."""


def _rows_of(folder: CaseFolder | None, model: ReadModel, paths: UnitPaths) -> Rows:
    """The rows of the case rows of ``folder`` and of ``model`` (all but the timeline)."""
    def rows(table: str) -> list[Any]:
        if table == "case_summary":
            return [] if folder is None else list(folder.rows.values())
        if table == "unit_counts":
            return [(*k, n) for k, n in model.own_counts().items()]
        if table == "subtree_counts":
            return [(*k, n) for k, n in model.subtree_counts(paths).items()]
        if table == "sla_facts":
            return list(model.sla.values())
        if table == "sla_breaches":
            return list(model.breaches.values())
        return list(model.moves.values())

    return rows


async def _copy_model(pool: asyncpg.Pool, schema: str, rows: Rows, *,
                      groups: tuple[tuple[str, ...], ...] = COPY_GROUPS, index: bool = False,
                      copied: Callable[[], None] | None = None) -> None:
    """COPY ``rows`` of each table of ``groups`` (one connection and transaction per group, the
    groups concurrently); with ``index``, each table's indexes and statistics right after its
    COPY. ``copied`` is called once every table's COPY is done."""
    waiting = sum(len(group) for group in groups)

    async def copy(tables: tuple[str, ...]) -> None:
        nonlocal waiting
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(_NO_SYNC)
            for table in tables:
                records = rows(table)
                if records:
                    columns = TABLES.get(table, ("unit", "status", "service_code", "n"))
                    await conn.copy_records_to_table(table, schema_name=schema,
                                                     records=records, columns=columns)
                del records
                waiting -= 1
                if waiting == 0 and copied is not None:
                    copied()
                if index:
                    await _index_table(conn, schema, table)

    await _together(*(copy(group) for group in groups))


async def _together(*steps: Awaitable[Any]) -> list[Any]:
    """Run ``steps`` concurrently and return their results; if one fails, cancel the others
    and raise its error."""
    tasks = [asyncio.ensure_future(step) for step in steps]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


# ------------------------------------------------------------ the fold in several processes


class _Folded(NamedTuple):
    """What one shard's fold leaves besides its rows, written already: its number of cases
    and its cases' own counts."""

    cases: int
    counts: dict[CountKey, int]


async def _fold_shard(pool: asyncpg.Pool, schema: str, paths: UnitPaths, upto: int,
                      shard: Shard, *, batch_size: int, on_batch: OnBatch,
                      tables: Awaitable[None] | None) -> _Folded:
    """Fold ``shard`` and write every row of its cases (``CASE_GROUPS``, not indexed)."""
    def copy(folder: CaseFolder, model: ReadModel) -> Awaitable[None]:
        return _copy_model(pool, schema, _rows_of(folder, model, paths), groups=CASE_GROUPS)

    folder, model = await _fold(pool, schema, paths, upto, batch_size=batch_size, shard=shard,
                                on_batch=on_batch, tables=tables, then=copy)
    return _Folded(len(folder.rows), model.own_counts())


PROGRESS_EVERY_S = 0.25


def _fold_process(pipe: Connection, ready: EventType, parent: int, dsn: str, schema: str,
                  paths: UnitPaths, upto: int, shard: Shard, batch_size: int) -> None:
    """A fold process (spawned by ``parallel_fold``): fold ``shard``, write its rows once
    ``ready`` is set (the tables exist), and send ``("progress", done)`` now and then,
    ``("folded", done)``, then ``("done", _Folded)`` or ``("failed", exception)``. It is
    killed if the rebuild's process dies."""
    end_with_parent(signal.SIGKILL)
    if os.getppid() != parent:  # it died before the line above
        return
    message: tuple[str, Any]
    try:
        message = ("done", asyncio.run(_run_fold_process(
            pipe, ready, dsn, schema, paths, upto, shard, batch_size)))
    except BaseException as exc:  # sent to the rebuild, which raises it
        message = ("failed", exc)
    try:
        pipe.send(message)
    except Exception:  # an error that does not pickle
        pipe.send(("failed", RebuildFailed(f"fold process {shard.number}: {message[1]!r}")))
    finally:
        pipe.close()


async def _run_fold_process(pipe: Connection, ready: EventType, dsn: str, schema: str,
                            paths: UnitPaths, upto: int, shard: Shard,
                            batch_size: int) -> _Folded:
    pool = await create_pool(dsn, min_size=1, max_size=len(CASE_GROUPS) + 2)
    last = 0.0

    def on_batch(done: int, folded: bool) -> None:
        nonlocal last
        now = time.monotonic()
        if folded or now - last >= PROGRESS_EVERY_S:
            last = now
            pipe.send(("folded" if folded else "progress", done))

    async def made() -> None:  # a wait on ``ready`` that a cancel ends within half a second
        while not await asyncio.to_thread(ready.wait, 0.5):
            pass

    try:
        return await _fold_shard(pool, schema, paths, upto, shard, batch_size=batch_size,
                                 on_batch=on_batch, tables=asyncio.ensure_future(made()))
    finally:
        await pool.close()


class _FoldProcess:
    """A fold process, seen from the rebuild."""

    def __init__(self, context: SpawnContext, ready: EventType, dsn: str, schema: str,
                 paths: UnitPaths, upto: int, shard: Shard, batch_size: int) -> None:
        self.shard = shard
        self.pipe, sender = context.Pipe(duplex=False)
        self.process = context.Process(
            target=_fold_process, name=f"yizhan-rebuild-fold-{shard.number}", daemon=True,
            args=(sender, ready, os.getpid(), dsn, schema, paths, upto, shard, batch_size))
        self.process.start()
        sender.close()

    async def result(self, on_batch: OnBatch) -> _Folded:
        """Its result, once it has written its rows; ``on_batch`` meanwhile."""
        while True:
            try:
                kind, value = await asyncio.to_thread(self.pipe.recv)
            except EOFError:
                await asyncio.to_thread(self.process.join)
                raise RebuildFailed(
                    f"fold process {self.shard.number} of {self.shard.of} ended (exit code "
                    f"{self.process.exitcode}) before it had written its rows") from None
            if kind == "done":
                return cast(_Folded, value)
            if kind == "failed":
                raise value
            on_batch(value, kind == "folded")

    async def stop(self, *, wait: bool) -> None:
        """Kill it unless it has ended (``wait``: give it a few seconds to end first)."""
        if wait:
            await asyncio.to_thread(self.process.join, 5.0)
        if self.process.is_alive():
            self.process.kill()
        await asyncio.to_thread(self.process.join)


async def parallel_fold(pool: asyncpg.Pool, dsn: str, schema: str, paths: UnitPaths, upto: int,
                        *, processes: int, batch_size: int, progress: ProgressCallback | None,
                        phases: dict[str, float] | None = None,
                        tables: Awaitable[None] | None = None) -> int:
    """``bulk_fold`` in ``processes`` processes, this one and others it spawns (connecting with
    ``dsn``), each folding one ``Shard`` of the cases (every event of a case is in one): a fold
    is one core's Python, and the server has cycles to spare meanwhile. Each writes its cases'
    rows, the timeline while it folds; this one then writes the summed counts and indexes
    every table. Returns the number of cases. Any process failing fails the fold (the others
    are killed)."""
    started = time.perf_counter()
    rate = _Rate(upto, progress, "bulk")
    done, folded = [0] * processes, [0.0] * processes

    def on_batch_of(number: int) -> OnBatch:
        def on_batch(count: int, last: bool) -> None:
            done[number] = count
            if last:
                folded[number] = time.perf_counter()
            rate.report(sum(done), force=last and all(folded))

        return on_batch

    context = multiprocessing.get_context("spawn")
    ready = context.Event()
    others: list[_FoldProcess] = []

    async def made() -> None:
        if tables is not None:
            await tables
        ready.set()

    made_task = asyncio.ensure_future(made())
    ended = False
    try:  # started in here: a start that fails stops those started before it
        for number in range(1, processes):
            others.append(_FoldProcess(context, ready, dsn, schema, paths, upto,
                                       Shard(number, processes), batch_size))
        results: list[_Folded] = await _together(
            _fold_shard(pool, schema, paths, upto, Shard(0, processes), batch_size=batch_size,
                        on_batch=on_batch_of(0), tables=made_task),
            *(other.result(on_batch_of(other.shard.number)) for other in others))
        ended = True
    finally:
        made_task.cancel()
        await asyncio.gather(made_task, *(other.stop(wait=ended) for other in others),
                             return_exceptions=True)
    counts: Counter[CountKey] = Counter()
    for result in results:
        counts.update(result.counts)
    mark = max(folded)
    await _copy_model(pool, schema, _rows_of(None, ReadModel(counts=counts), paths), index=True)
    if phases is not None:
        phases["bulk"] = mark - started
        phases["index"] = time.perf_counter() - mark
    return sum(result.cases for result in results)


async def _index(pool: asyncpg.Pool, schema: str) -> None:
    """Whatever ``indexes.sql`` holds that is not one table's (none today)."""
    statements = _indexes(schema).get("", [])
    if statements:
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(_NO_SYNC)
            await as_app_role(conn)
            await conn.execute(";\n".join(statements))


async def _catch_up(pool: asyncpg.Pool, schema: str, paths: UnitPaths, after: int,
                    batch_size: int, *, close_enough: int) -> int:
    """Apply what was appended since ``after`` until fewer than ``close_enough`` remain."""
    while True:
        head = int(await pool.fetchval(_HEAD))
        if head - after < close_enough:
            return after
        upto = min(head, after + batch_size)
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(_NO_SYNC)
            rows = [RawEvent(*r) for r in await conn.fetch(_RANGE, after, upto)]
            await apply_batch(conn, schema, rows, paths, strict=True)
            await _set_watermark(conn, schema, upto)
        after = upto


async def _set_watermark(conn: Any, schema: str, position: int) -> None:
    """Within the caller's transaction (or on its own)."""
    await conn.execute(f"UPDATE {schema}.progress SET position = $1, updated_at = now() "
                       "WHERE name = 'watermark'", position)


async def _swap(pool: asyncpg.Pool, schema: str, paths: UnitPaths, after: int,
                generation: int) -> tuple[int, int]:
    """Lock out live writers, apply the last events, make ``schema`` active (and its layout,
    this code's, the active one's). ``generation``: the state's when the rebuild began; if
    another swap happened since (a rebuild that did not take ``REBUILD_LOCK``, e.g. older code
    during a rolling deployment), ``schema`` may be the active set or half rewritten: nothing
    is swapped."""
    async with pool.acquire() as conn, conn.transaction():
        state = await conn.fetchrow(
            f"SELECT active_schema, generation FROM {STATE} WHERE name = 'main' FOR UPDATE")
        assert state is not None  # the migration inserts the one row
        active, now = state
        if now != generation or active == schema:
            raise RebuildFailed(
                f"another rebuild swapped the read models meanwhile (generation {generation} "
                f"→ {now}, active {active}): nothing swapped; run the rebuild again")
        head = int(await conn.fetchval(_HEAD))
        if head > after:
            rows = [RawEvent(*r) for r in await conn.fetch(_RANGE, after, head)]
            await apply_batch(conn, schema, rows, paths, strict=True)
        await _set_watermark(conn, schema, head)
        generation = await conn.fetchval(
            f"UPDATE {STATE} SET active_schema = $1, generation = generation + 1, "
            "swapped_at = now(), rebuilt_to = $2, layout = $3 WHERE name = 'main' "
            "RETURNING generation", schema, head, LAYOUT)
    return head, int(generation)


async def rebuild(
    pool: asyncpg.Pool, paths: UnitPaths, *, batch_size: int = 5000,
    progress: ProgressCallback | None = None, swap: bool = True, lock_held: bool = False,
    processes: int = 1, dsn: str | None = None,
) -> RebuildReport:
    """Rebuild every read model into the inactive table set and swap it in (see the module
    docstring). Raises ``Unprojectable`` or ``RebuildFailed`` (nothing swapped) on an event
    it cannot project. ``swap=False`` builds and catches up but leaves the active set alone.
    ``processes`` > 1: fold in that many processes (``parallel_fold``), the others connecting
    with ``dsn`` (the login of ``pool``).

    One rebuild at a time: it holds ``REBUILD_LOCK`` (a session advisory lock, on a connection
    of ``pool`` kept for it) throughout, and waits for it, saying so, while another process
    rebuilds; ``lock_held``: the caller holds it already. Two at once would both write the
    same inactive set, and the second would drop the tables of the set the first just swapped
    in (found in review: nothing stopped ``yizhan projections rebuild`` run twice, or beside
    a starting service's layout upgrade)."""
    if processes < 1 or (processes > 1 and dsn is None):
        raise ValueError("a rebuild folds in one process, or in several given a dsn")
    run = functools.partial(_rebuild, pool, paths, batch_size=batch_size, progress=progress,
                            swap=swap, processes=processes, dsn=dsn)
    if lock_held:
        with gc_paused():
            return await run()
    async with pool.acquire() as conn:
        if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", REBUILD_LOCK):
            log.warning("projections.rebuild.waiting", reason="another process is rebuilding "
                        "the read models; this one starts when it is done")
            await conn.execute("SELECT pg_advisory_lock($1)", REBUILD_LOCK)
        try:
            with gc_paused():
                return await run()
        finally:
            await _unlock(conn)


async def _unlock(conn: Any) -> None:
    """Release ``REBUILD_LOCK``; a connection that cannot is ended (the pool keeps sessions as
    they are, and a session holding the lock would block every later rebuild)."""
    try:
        await conn.execute("SELECT pg_advisory_unlock($1)", REBUILD_LOCK)
    except BaseException:
        conn.terminate()
        raise


async def _rebuild(pool: asyncpg.Pool, paths: UnitPaths, *, batch_size: int,
                   progress: ProgressCallback | None, swap: bool, processes: int,
                   dsn: str | None) -> RebuildReport:
    started = time.perf_counter()
    phases: dict[str, float] = {}
    async with pool.acquire() as conn:
        previous = await active_schema(conn)
        generation = int(await conn.fetchval(
            f"SELECT generation FROM {STATE} WHERE name = 'main'"))
    target = other(previous)

    async def recreate() -> None:
        async with pool.acquire() as conn:
            await recreate_tables(conn, target, durable=False, then="".join(
                f";\n{statement}" for table in INDEXED_FIRST
                for statement in _indexes(target).get(table, [])))

    tables = asyncio.ensure_future(recreate())
    try:
        upto = int(await pool.fetchval(_HEAD))
        if upto < PARALLEL_FROM:
            processes = 1
        log.info("projections.rebuild.start", table_set=target, head=upto,
                 processes=processes)
        if processes > 1:
            assert dsn is not None  # checked by ``rebuild``
            cases = await parallel_fold(pool, dsn, target, paths, upto, processes=processes,
                                        batch_size=batch_size, progress=progress,
                                        phases=phases, tables=tables)
        else:
            cases = len((await bulk_fold(pool, target, paths, upto, batch_size=batch_size,
                                         progress=progress, index=True, phases=phases,
                                         tables=tables)).rows)
    finally:
        tables.cancel()  # done by now, unless the fold failed
        await asyncio.gather(tables, return_exceptions=True)
    mark = time.perf_counter()
    await _index(pool, target)
    phases["index"] += time.perf_counter() - mark
    mark = time.perf_counter()
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(_NO_SYNC)
        await _set_watermark(conn, target, upto)
    reached = await _catch_up(pool, target, paths, upto, batch_size, close_enough=batch_size)
    swapped = 0
    if swap:
        reached, swapped = await _swap(pool, target, paths, reached, generation)
    phases["catch_up_and_swap"] = time.perf_counter() - mark
    seconds = time.perf_counter() - started
    report = RebuildReport(target, previous, reached, reached, cases, seconds,
                           phases["bulk"], swapped, phases, processes)
    log.info("projections.rebuild.done", table_set=target, position=reached,
             cases=report.cases, seconds=round(seconds, 2), processes=processes,
             events_per_s=round(report.events_per_s), swapped=swap, phases=phases)
    return report
