"""The PostgreSQL event store (asyncpg).

How global position comes to equal commit order: every append transaction first takes one
transaction-scoped advisory lock, then reads the head (last position and hash), writes its rows
at the following positions and commits, which releases the lock. PostgreSQL makes a commit
visible before it releases the transaction's locks, so the next writer always sees the previous
one's rows: positions are assigned in commit order and the visible log is always a gap-free
prefix. A tailer reading ``position > p`` can never miss a late commit. The hash chain needs the
same serialisation (each hash covers the previous one).

Serialising would cost a commit per append, so appends are group-committed: each store instance
runs one writer task that takes every append waiting in its queue (up to ``max_batch``) into one
transaction, judges each one on its own (``planning.plan_batch``) and resolves each caller's
future after the commit. Several instances (processes) simply take turns on the lock.

A group commit is one round trip in the usual case: the writer plans on what it believes about
the log (its own last head, callers' expected versions) and the ``yizhan_append`` function
(migration 0002) takes the lock, checks those beliefs and inserts, or returns the log as it is
for a second plan.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from shared.contracts.envelope import GENESIS_HASH, NewEvent, RecordedEvent
from shared.eventstore.errors import AppendError
from shared.eventstore.planning import BatchPlan, StoredId, encode_appends, plan_batch
from shared.eventstore.port import AppendResult, Head, StreamAppend
from shared.logging import get_logger

log = get_logger(__name__)

APPEND_LOCK = 0x59_5A_41_50  # "YZAP": the one lock every append takes
# A sub-select that lets the statement it is part of commit without waiting for its WAL to
# reach disk (synchronous_commit off for that statement's own transaction). Only for writes
# that can be lost in a database crash without harm, because they are recomputed or redone:
# progress markers, never events or anything a consumer acknowledges after.
NO_FLUSH_WAIT = "SELECT set_config('synchronous_commit', 'off', true)"
NOTIFY_CHANNEL = "yizhan_events"

_COLUMNS = (
    "position, stream_id, version, event_id, type, schema_version, data::text, "
    "metadata::text, occurred_at, recorded_at, prev_hash, hash"
)
_INSERT = """
INSERT INTO events (position, stream_id, version, event_id, type, schema_version, data,
                    metadata, occurred_at, recorded_at, prev_hash, hash)
SELECT * FROM unnest($1::bigint[], $2::text[], $3::int[], $4::uuid[], $5::text[], $6::int[],
                     $7::json[], $8::json[], $9::timestamptz[], $10::timestamptz[], $11::text[],
                     $12::text[])
"""
# Taken in its own statement: a READ COMMITTED statement's snapshot is taken when it starts, so
# the reads below must start after the lock is held to see the previous writer's commit.
_BEGIN_LOCKED = f"BEGIN; SELECT pg_advisory_xact_lock({APPEND_LOCK})"
# Everything the planner needs, in one round trip.
_STATE = """
WITH head AS (SELECT position, hash FROM events ORDER BY position DESC LIMIT 1),
     versions AS (SELECT stream_id, max(version) AS version FROM events
                  WHERE stream_id = ANY($1::text[]) GROUP BY stream_id),
     stored AS (SELECT event_id, stream_id, version, position FROM events
                WHERE event_id = ANY($2::uuid[]))
SELECT clock_timestamp() AS now,
       (SELECT position FROM head) AS position, (SELECT hash FROM head) AS hash,
       (SELECT array_agg(stream_id) FROM versions) AS v_streams,
       (SELECT array_agg(version) FROM versions) AS v_versions,
       (SELECT array_agg(event_id) FROM stored) AS s_ids,
       (SELECT array_agg(stream_id) FROM stored) AS s_streams,
       (SELECT array_agg(version) FROM stored) AS s_versions,
       (SELECT array_agg(position) FROM stored) AS s_positions
"""
_INSERT_NOTIFY = f"""
WITH inserted AS ({_INSERT} RETURNING position)
SELECT pg_notify('{NOTIFY_CHANNEL}', max(position)::text) FROM inserted
"""
_APPEND = (
    "SELECT * FROM yizhan_append($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, "
    "$15, $16, $17)"
)
_OPTIMISTIC_ATTEMPTS = 3
_VERSION_CACHE = 10_000  # the streams this writer wrote last, and their versions
_READ_AFTER = f"SELECT {_COLUMNS} FROM events WHERE position > $1 ORDER BY position LIMIT $2"
_READ_RANGE = (
    f"SELECT {_COLUMNS} FROM events WHERE position > $1 AND position <= $3 "
    "ORDER BY position LIMIT $2"
)


Conn: TypeAlias = "asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]"
"""A connection, whether taken from a pool or opened alone."""


def row_to_event(row: Any) -> RecordedEvent:
    return RecordedEvent(*row)


async def _keep_session(conn: asyncpg.Connection[asyncpg.Record]) -> None:
    """The pool's reset on release. asyncpg always rolls back an open transaction and drops
    the connection's listener callbacks first; its default reset would then also run
    ``pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL`` — a round trip on every
    release, a large share of a command's cost. Our code keeps no session state on pooled
    connections: settings are ``SET LOCAL``, locks are transaction-scoped, and the two
    session-level holders (the relay's leader lock, ``subscribe``'s LISTEN) undo their state
    or end the session before releasing."""


# The array types our statements pass or return that asyncpg has no built-in codec for (it
# knows text[]; these six it looked up, seen on the e2e bench). It looks each one up in the
# catalog (a recursive query, the heaviest a cold backend runs) the first time a statement of
# that connection uses it: under load, a pool growing by a dozen connections ran a few dozen of
# those lookups at the worst moment. One statement naming them all, run when a connection
# opens, does it once per connection, before it is handed out.
_ARRAY_TYPES = ("uuid[]", "bigint[]", "integer[]", "bytea[]", "json[]", "timestamptz[]")
_WARM_TYPES = "SELECT " + ", ".join(f"NULL::{t}" for t in _ARRAY_TYPES)


async def _warm_types(conn: asyncpg.Connection[asyncpg.Record]) -> None:
    await conn.fetchrow(_WARM_TYPES)


async def create_pool(dsn: str, *, min_size: int = 2, max_size: int = 10) -> asyncpg.Pool:
    """A pool whose connections name themselves in pg_stat_activity, know our array types
    from the start (``_WARM_TYPES``) and are released without a reset (``_keep_session``)."""
    pool = await asyncpg.create_pool(
        dsn, min_size=min_size, max_size=max_size, init=_warm_types,
        server_settings={"application_name": "yizhan"}, reset=_keep_session,
    )
    assert pool is not None
    return pool


class _Pending:
    __slots__ = ("appends", "future")

    def __init__(self, appends: list[StreamAppend], future: asyncio.Future[list[AppendResult]]):
        self.appends = appends
        self.future = future


def _ended(conn: PoolConnectionProxy[asyncpg.Record]) -> bool:
    """The session behind a pool connection ended (the server closed it). asyncpg then hands
    the connection back to the pool by itself and detaches the proxy, whose every call,
    ``terminate()`` included, raises ``InterfaceError``."""
    try:
        return conn.is_closed()
    except asyncpg.InterfaceError:
        return True


class PostgresEventStore:
    """The event store on PostgreSQL. Create with a pool; ``close()`` stops its writer task."""

    def __init__(
        self, pool: asyncpg.Pool, *, max_batch: int = 500, writers: int = 2,
        optimistic: bool = True,
    ) -> None:
        if writers < 1:
            raise ValueError("writers must be at least 1")
        self.pool = pool
        self.max_batch = max_batch
        self.optimistic = optimistic  # False: every batch planned under the lock
        # Two writers by default: the second plans and sends the next half of the queue while
        # the first half is in the database (holding a connection only while there is work),
        # so the callers' Python work and the database's overlap. Measured on 2 cores, 64
        # concurrent single-event appends, interleaved runs: median 17,557 events/s with two,
        # 10,974 with one; server CPU per event 30-39 µs against 26-33. Where appends come in
        # large batches that are already pipelined (intake), one writer is better.
        self.writers = writers
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._writer_tasks: list[asyncio.Task[None]] = []
        self._idle = 0  # writers waiting for work
        # What the writers believe about the log (yizhan_append checks it): the head as it will
        # be once every batch planned so far has committed, recently written streams' versions,
        # and the database clock's lead over ours.
        self._head: tuple[int, str] | None = None
        self._versions: dict[str, int] = {}
        self._skew = timedelta(0)

    # -- appending ---------------------------------------------------------------------------

    async def append(
        self, stream_id: str, expected_version: int | None, events: Sequence[NewEvent]
    ) -> AppendResult:
        """Append events to one stream if it is at ``expected_version`` (see the port)."""
        (result,) = await self.append_streams([StreamAppend(stream_id, expected_version, events)])
        return result

    async def append_streams(self, appends: Sequence[StreamAppend]) -> list[AppendResult]:
        """Append to several streams atomically (see the port)."""
        encoded = encode_appends(appends)
        future: asyncio.Future[list[AppendResult]] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Pending(encoded, future))
        if len(self._writer_tasks) < self.writers or any(t.done() for t in self._writer_tasks):
            self._start_writers()
        return await asyncio.shield(future)

    def _start_writers(self) -> None:
        alive = [t for t in self._writer_tasks if not t.done()]
        while len(alive) < self.writers:
            alive.append(asyncio.create_task(self._write_loop(keep_connection=not alive),
                                             name=f"eventstore-writer-{len(alive)}"))
        self._writer_tasks = alive

    async def _write_loop(self, keep_connection: bool) -> None:
        """One of the instance's writers. Two of them pipeline: while one batch is in the
        database the next is planned on top of it and sent, and waits there for the lock. The
        first keeps a connection of its own (no pool reset between batches), the others give
        theirs back when the queue runs dry; a fault or cancellation ends the session, never
        returns it dirty."""
        conn: PoolConnectionProxy[asyncpg.Record] | None = None
        try:
            while True:
                self._idle += 1
                try:
                    batch = [await self._queue.get()]
                finally:
                    self._idle -= 1
                # Leave half the queue to an idle writer: it plans and sends its half while
                # this half is in the database, so the two halves alternate from then on.
                take = self.max_batch
                if self._idle:
                    take = min(take, (self._queue.qsize() + 2) // 2)
                while len(batch) < take and not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                if conn is not None and _ended(conn):  # between batches: nothing was sent
                    ended, conn = conn, None
                    await self._give_back(ended, terminate=True)
                try:
                    conn = conn or await self.pool.acquire()
                    outcomes = await self._write(conn, batch)
                except Exception as exc:  # a database fault: every caller of the batch gets it
                    log.warning("eventstore.batch_failed", error=repr(exc), appends=len(batch))
                    for pending in batch:
                        if not pending.future.done():
                            pending.future.set_exception(exc)
                    self._head = None
                    if conn is not None:
                        dropped, conn = conn, None
                        await self._give_back(dropped, terminate=True)
                    continue
                self._resolve(batch, outcomes)
                if not keep_connection and self._queue.empty():
                    released, conn = conn, None
                    await self._give_back(released, terminate=False)
        finally:
            if conn is not None:
                await self._give_back(conn, terminate=True)

    async def _give_back(self, conn: PoolConnectionProxy[asyncpg.Record], *,
                         terminate: bool) -> None:
        """Return a writer's connection to the pool, ending its session first if it may be
        mid-query. Nothing here may end the writer: when the server ended the session, asyncpg
        has already taken the connection back and ``terminate()`` raises ``InterfaceError``
        (found in review, after a database restart: the writer task died with it, and appends
        waited for the next one to start a new writer)."""
        try:
            if terminate:
                conn.terminate()
            await self.pool.release(conn)
        except asyncpg.InterfaceError:
            pass  # asyncpg took it back itself when the session ended (``_ended``)
        except (asyncpg.PostgresError, OSError) as exc:
            log.warning("eventstore.release_failed", error=repr(exc))

    @staticmethod
    def _resolve(
        batch: list[_Pending], outcomes: list[list[AppendResult] | AppendError]
    ) -> None:
        for pending, outcome in zip(batch, outcomes, strict=True):
            if pending.future.done():
                continue
            if isinstance(outcome, AppendError):
                pending.future.set_exception(outcome)
            else:
                pending.future.set_result(outcome)

    async def _write(
        self, conn: Conn, batch: list[_Pending]
    ) -> list[list[AppendResult] | AppendError]:
        """One round trip in the usual case: plan on what this writer assumes about the log and
        let ``yizhan_append`` check and insert (see migration 0002). A wrong assumption (another
        instance wrote, a caller's expected version is stale, an id is already stored) costs a
        second call, planned on the log as the function returned it. Should other instances
        keep winning the race, the batch falls back to planning under the lock."""
        appends = [p.appends for p in batch]
        streams: dict[str, int] = {}
        for parts in appends:
            for part in parts:
                if part.stream_id not in streams:
                    assumed = part.expected_version
                    if assumed is None:
                        assumed = self._versions.get(part.stream_id, 0)
                    streams[part.stream_id] = assumed
        ids = [ev.event_id for parts in appends for part in parts for ev in part.events]
        head_position, head_hash = self._head or (0, GENESIS_HASH)
        stored: dict[uuid.UUID, StoredId] = {}
        now = _utcnow() + self._skew
        for _ in range(_OPTIMISTIC_ATTEMPTS if self.optimistic else 0):
            plan = plan_batch(appends, head_position=head_position, head_hash=head_hash,
                              versions=streams, stored_ids=stored, now=now)
            self._planned(plan)  # the next batch is planned on top of this one
            row = await conn.fetchrow(
                _APPEND, head_position, head_hash, now, list(streams), list(streams.values()),
                [eid for eid in ids if eid not in stored],
                *_columns(plan.rows, recorded_at=False),
            )
            assert row is not None
            if row["r_ok"]:
                return plan.outcomes
            # Wrong about the log (so is any batch planned on top of this one): start again
            # from the log as it was.
            head_position, head_hash = row["r_position"], row["r_hash"]
            self._head = (head_position, head_hash)
            self._versions.clear()
            streams = {s: 0 for s in streams}
            streams.update(zip(row["r_v_streams"] or (), row["r_v_versions"] or (), strict=True))
            stored.update(_stored_ids(row["r_s_ids"], row["r_s_streams"], row["r_s_versions"],
                                      row["r_s_positions"]))
            self._skew = row["r_now"] - _utcnow()
            now = row["r_now"]
        return await self._write_locked(conn, batch)

    def _planned(self, plan: BatchPlan) -> None:
        if not plan.rows:
            return
        last = plan.rows[-1]
        self._head = (last.position, last.hash)
        versions = self._versions
        for row in plan.rows:
            versions.pop(row.stream_id, None)  # re-insert: the dict's order is recency
            versions[row.stream_id] = row.version
        while len(versions) > _VERSION_CACHE:
            del versions[next(iter(versions))]

    async def _write_locked(
        self, conn: Conn, batch: list[_Pending]
    ) -> list[list[AppendResult] | AppendError]:
        """Plan under the append lock: four round trips, but it never has to try again."""
        streams = list({part.stream_id for p in batch for part in p.appends})
        ids = [ev.event_id for p in batch for part in p.appends for ev in part.events]
        await conn.execute(_BEGIN_LOCKED)
        try:
            state = await conn.fetchrow(_STATE, streams, ids)
            assert state is not None
            plan = plan_batch(
                [p.appends for p in batch], head_position=state["position"] or 0,
                head_hash=state["hash"] or GENESIS_HASH,
                versions=dict(zip(state["v_streams"] or (), state["v_versions"] or (),
                                  strict=True)),
                stored_ids=_stored_ids(state["s_ids"], state["s_streams"], state["s_versions"],
                                       state["s_positions"]),
                now=state["now"],
            )
            if plan.rows:
                await conn.execute(_INSERT_NOTIFY, *_columns(plan.rows))
            await conn.execute("COMMIT")
        except Exception:
            if not conn.is_closed():
                await conn.execute("ROLLBACK")
            raise
        self._planned(plan)
        return plan.outcomes

    async def close(self) -> None:
        tasks, self._writer_tasks = self._writer_tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # -- reading -----------------------------------------------------------------------------

    async def read_stream(
        self, stream_id: str, *, from_version: int = 1, to_position: int | None = None
    ) -> list[RecordedEvent]:
        """A stream's events in version order, from a version, up to a position (see port)."""
        rows = await self.pool.fetch(
            f"SELECT {_COLUMNS} FROM events WHERE stream_id = $1 AND version >= $3 "
            "AND ($2::bigint IS NULL OR position <= $2) ORDER BY version",
            stream_id, to_position, from_version,
        )
        return [row_to_event(r) for r in rows]

    async def read_batch(
        self, after: int, limit: int, to_position: int | None = None
    ) -> list[RecordedEvent]:
        """Up to ``limit`` events after ``after`` in position order."""
        if to_position is None:
            rows = await self.pool.fetch(_READ_AFTER, after, limit)
        else:
            rows = await self.pool.fetch(_READ_RANGE, after, limit, to_position)
        return [row_to_event(r) for r in rows]

    async def read_all(
        self, after: int = 0, *, batch_size: int = 1000, to_position: int | None = None
    ) -> AsyncIterator[list[RecordedEvent]]:
        """Every event after ``after`` in position order, in batches (see the port)."""
        while True:
            batch = await self.read_batch(after, batch_size, to_position)
            if not batch:
                return
            yield batch
            after = batch[-1].position

    async def subscribe(
        self, after: int = 0, *, batch_size: int = 1000, poll_interval: float = 1.0
    ) -> AsyncIterator[list[RecordedEvent]]:
        """Tail the log forever: NOTIFY wakes the reader early, polling covers lost wake-ups."""
        wake = asyncio.Event()

        def on_notify(*_: object) -> None:
            wake.set()

        listener = await self.pool.acquire()
        try:
            await listener.add_listener(NOTIFY_CHANNEL, on_notify)
            while True:
                wake.clear()
                batch = await self.read_batch(after, batch_size)
                if batch:
                    after = batch[-1].position
                    yield batch
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), poll_interval)
        finally:
            try:
                await listener.remove_listener(NOTIFY_CHANNEL, on_notify)
            except BaseException:  # the pool keeps sessions as they are: never keep a LISTEN
                listener.terminate()
                raise
            finally:
                await self.pool.release(listener)

    async def head(self) -> Head:
        row = await self.pool.fetchrow(
            "SELECT position, hash FROM events ORDER BY position DESC LIMIT 1"
        )
        return Head(0, GENESIS_HASH) if row is None else Head(row[0], row[1])

    async def stream_version(self, stream_id: str) -> int:
        version = await self.pool.fetchval(
            "SELECT max(version) FROM events WHERE stream_id = $1", stream_id
        )
        return int(version or 0)



def _utcnow() -> datetime:
    return datetime.now(UTC)


def _stored_ids(
    ids: Any, streams: Any, versions: Any, positions: Any
) -> dict[uuid.UUID, StoredId]:
    return {eid: StoredId(s, v, p) for eid, s, v, p in zip(
        ids or (), streams or (), versions or (), positions or (), strict=True)}


def _columns(rows: list[RecordedEvent], *, recorded_at: bool = True) -> tuple[list[Any], ...]:
    return (
        [r.position for r in rows], [r.stream_id for r in rows], [r.version for r in rows],
        [r.event_id for r in rows], [r.type for r in rows], [r.schema_version for r in rows],
        [r.data_json for r in rows], [r.metadata_json for r in rows],
        [r.occurred_at for r in rows],
        *([[r.recorded_at for r in rows]] if recorded_at else []),
        [r.prev_hash for r in rows], [r.hash for r in rows],
    )
