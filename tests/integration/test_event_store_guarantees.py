"""The event store's guarantees under real PostgreSQL: concurrency, commit order, immutability,
exact round trips. Each test fails if the guarantee it names is broken."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.contracts.canonical import canonical_json
from shared.contracts.envelope import NewEvent, chain_hash
from shared.contracts.registry import DomainEvent, EventRegistry, to_new_event
from shared.eventstore import verify
from shared.eventstore.checkpoints import CheckpointSigner, write_checkpoint
from shared.eventstore.errors import WrongExpectedVersion
from shared.eventstore.port import NO_STREAM, StreamAppend
from shared.eventstore.postgres import PostgresEventStore, create_pool
from shared.settings import DEV_SIGNING_KEY
from tests.conftest import Db, PgCluster, postgres_store
from tests.strategies import json_objects


def ev(**data: Any) -> NewEvent:
    return NewEvent("Noted", data)


@pytest.fixture
async def stores(database: Db) -> AsyncIterator[list[PostgresEventStore]]:
    """Eight independent store instances (own pools), as eight service processes would be."""
    pools = [await create_pool(database.service_dsn, min_size=1, max_size=3) for _ in range(8)]
    instances = [PostgresEventStore(p) for p in pools]
    yield instances
    for store, p in zip(instances, pools, strict=True):
        await store.close()
        await p.close()


async def test_concurrent_appends_at_one_version_exactly_one_wins(
    stores: list[PostgresEventStore],
) -> None:
    attempts = [s.append("case-x", NO_STREAM, [ev(writer=i)]) for i, s in enumerate(stores)]
    attempts += [stores[0].append("case-x", NO_STREAM, [ev(writer=100 + i)]) for i in range(8)]
    outcomes = await asyncio.gather(*attempts, return_exceptions=True)
    wins = [o for o in outcomes if not isinstance(o, BaseException)]
    losses = [o for o in outcomes if isinstance(o, WrongExpectedVersion)]
    assert len(wins) == 1 and len(losses) == len(outcomes) - 1
    assert await stores[0].stream_version("case-x") == 1


async def test_optimistic_retries_lose_no_update(stores: list[PostgresEventStore]) -> None:
    """Sixteen writers each add 10 increments with read-then-append; none is lost."""

    async def writer(store: PostgresEventStore, n: int) -> int:
        conflicts = 0
        for _ in range(10):
            while True:
                version = await store.stream_version("case-counter")
                try:
                    await store.append("case-counter", version, [ev(by=n)])
                    break
                except WrongExpectedVersion:
                    conflicts += 1
        return conflicts

    conflicts = await asyncio.gather(*(writer(stores[i % 8], i) for i in range(16)))
    assert await stores[0].stream_version("case-counter") == 160
    assert sum(conflicts) > 0  # the writers really did collide


async def test_late_commit_is_never_overtaken(
    database: Db, admin_pool: asyncpg.Pool, stores: list[PostgresEventStore]
) -> None:
    """A slow transaction takes position p and commits late; a fast one that starts after it
    must not become visible before it, or a tailer past the fast one would skip p forever."""
    await admin_pool.execute("""
        CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN PERFORM pg_sleep(1.5); RETURN NULL; END $$;
        CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT ON events
            DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
            WHEN (NEW.stream_id = 'case-slow') EXECUTE FUNCTION slow_commit();
    """)
    slow_store, fast_store, tail_store = stores[0], stores[1], stores[2]
    seen: list[int] = []
    observations: list[list[int]] = []

    async def tail() -> None:
        after = 0
        while len(seen) < 3:
            batch = await tail_store.read_batch(after, 100)
            if batch:
                observations.append([e.position for e in batch])
                seen.extend(e.position for e in batch)
                after = batch[-1].position
            await asyncio.sleep(0.005)

    await slow_store.append("case-before", NO_STREAM, [ev()])
    tailer = asyncio.create_task(tail())
    slow = asyncio.create_task(slow_store.append("case-slow", NO_STREAM, [ev()]))
    await asyncio.sleep(0.3)  # the slow append now holds position 2, committing
    fast_started = asyncio.get_running_loop().time()
    fast = await fast_store.append("case-fast", NO_STREAM, [ev()])
    fast_waited = asyncio.get_running_loop().time() - fast_started
    slow_result = await slow
    await asyncio.wait_for(tailer, 10)
    assert slow_result.position == 2 and fast.position == 3
    assert seen == [1, 2, 3], observations
    assert fast_waited > 0.5  # the fast writer was held back by the slow commit


async def test_eight_writers_one_tailer_sees_every_event_once_in_order(
    stores: list[PostgresEventStore],
) -> None:
    total, writers = 10_000, 8
    per_writer = total // writers
    appended: list[uuid.UUID] = []

    async def writer(store: PostgresEventStore, w: int) -> None:
        written = 0
        sizes = [1, 2, 3, 5, 1, 4]
        i = 0
        while written < per_writer:
            n = min(sizes[i % len(sizes)], per_writer - written)
            events = [ev(w=w, i=written + k) for k in range(n)]
            await store.append(f"case-{w}-{i}", NO_STREAM, events)
            appended.extend(e.event_id for e in events)
            written += n
            i += 1

    seen: list[Any] = []

    async def tailer() -> None:
        async for batch in stores[0].subscribe(0, batch_size=500, poll_interval=0.2):
            seen.extend(batch)
            if len(seen) >= total:
                return

    tail = asyncio.create_task(tailer())
    await asyncio.gather(*(writer(stores[w], w) for w in range(writers)))
    await asyncio.wait_for(tail, 60)
    assert [e.position for e in seen] == list(range(1, total + 1))
    assert sorted(e.event_id for e in seen) == sorted(appended)
    per_stream: dict[str, list[int]] = {}
    for e in seen:
        per_stream.setdefault(e.stream_id, []).append(e.version)
    assert all(v == list(range(1, len(v) + 1)) for v in per_stream.values())


async def test_a_writer_wrong_about_the_log_plans_again_and_nothing_is_lost(
    stores: list[PostgresEventStore], pool: asyncpg.Pool,
) -> None:
    """Two instances take turns, so each one's belief about the head is stale every time; one
    also runs ten seconds ahead of the database clock. yizhan_append must refuse every wrong
    belief (a refused batch writes nothing) and the writer must plan again: every append lands
    once, positions stay gap-free, recorded_at never goes back."""
    a, b = stores[0], stores[1]
    b._skew = timedelta(seconds=10)
    results = []
    for i in range(20):
        store = a if i % 2 == 0 else b
        results.append(await store.append(f"case-{i % 3}", None, [ev(i=i)]))
        # the stale-version belief: append to a stream the other instance just moved on
        if i % 5 == 4:
            with pytest.raises(WrongExpectedVersion):
                await store.append(f"case-{i % 3}", results[-1].version - 1, [ev(late=i)])
    rows = await pool.fetch("SELECT position, recorded_at, data::text FROM events "
                            "ORDER BY position")
    assert [r["position"] for r in rows] == list(range(1, 21))
    assert [r["position"] for r in rows] == [r.position for r in results]
    assert all(x["recorded_at"] <= y["recorded_at"] for x, y in itertools.pairwise(rows))
    assert all(r["recorded_at"] <= datetime.now(UTC) for r in rows)  # no stamp from the future
    assert b._skew < timedelta(seconds=1)  # b learnt the database clock


async def test_appends_look_ids_up_by_index_however_small_the_log_was_when_planned(
    database: Db, pg_store: PostgresEventStore,
) -> None:
    """A connection keeps the plans yizhan_append's queries got the first time it ran them.
    Planned generically on a nearly empty log (the worst case, forced here), a look-up of the
    batch's event ids by ``= ANY(...)`` got a sequential scan, and every later append on that
    connection scanned the whole table. Once the log has grown, neither the check before
    inserting nor the answer to a writer wrong about the log may scan the table."""
    conn = await asyncpg.connect(database.service_dsn)
    try:
        await conn.execute("SET plan_cache_mode = force_generic_plan")

        async def call(*, wrong_head: bool = False) -> bool:
            head = await conn.fetchrow("SELECT position, hash FROM events "
                                       "ORDER BY position DESC LIMIT 1")
            position, digest = (head["position"], head["hash"]) if head else (0, "0" * 64)
            now = await conn.fetchval("SELECT clock_timestamp()")
            row = await conn.fetchrow(
                "SELECT * FROM yizhan_append($1, $2, $3, $4, $5, $6, '{}', '{}', '{}', '{}', "
                "'{}', '{}', '{}', '{}', '{}', '{}', '{}')",
                position + wrong_head, digest, now, ["case-probe"], [0], [uuid.uuid4()])
            return bool(row["r_ok"])

        assert all([await call() for _ in range(6)])  # plans made on an empty log
        for chunk in range(6):  # the log grows (a few hundred pages)
            await pg_store.append_streams([StreamAppend(f"case-{chunk}-{i}", NO_STREAM,
                                                        [ev(i=i)]) for i in range(500)])
        for wrong_head in (False, True):
            async with conn.transaction():
                assert await call(wrong_head=wrong_head) is not wrong_head
                scans = await conn.fetchval(
                    "SELECT pg_stat_get_xact_numscans('events'::regclass)")
                assert scans == 0, f"{scans} sequential scan(s) of events (wrong head: " \
                                   f"{wrong_head})"
    finally:
        await conn.close()


@pytest.mark.parametrize(
    "statement",
    ["UPDATE events SET data = '{}'", "DELETE FROM events", "TRUNCATE events"],
)
async def test_service_role_cannot_change_history(
    pg_store: PostgresEventStore, pool: asyncpg.Pool, statement: str
) -> None:
    await pg_store.append("case-a", NO_STREAM, [ev(n=1)])
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
        await pool.execute(statement)
    assert (await pg_store.read_stream("case-a"))[0].data == {"n": 1}


@pytest.mark.parametrize(
    "statement",
    ["UPDATE events SET data = '{}'", "DELETE FROM events", "TRUNCATE events",
     "UPDATE event_checkpoints SET hash = 'x'", "DELETE FROM event_checkpoints",
     "TRUNCATE event_checkpoints"],
)
async def test_even_the_owner_is_refused_by_the_trigger(
    pg_store: PostgresEventStore, admin_pool: asyncpg.Pool, statement: str
) -> None:
    await pg_store.append("case-a", NO_STREAM, [ev(n=1)])
    assert await write_checkpoint(admin_pool, CheckpointSigner(DEV_SIGNING_KEY)) is not None
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
        await admin_pool.execute(statement)
    assert (await pg_store.read_stream("case-a"))[0].data == {"n": 1}


@contextlib.contextmanager
def store_on_a_runner(
    pg_cluster: PgCluster,
) -> Iterator[tuple[asyncio.Runner, PostgresEventStore]]:
    """A store on a database of its own, and the event loop it runs on, for Hypothesis tests
    (whose examples are plain functions that run coroutines on it)."""
    with asyncio.Runner() as runner:
        context = postgres_store(pg_cluster)
        store = runner.run(context.__aenter__())
        try:
            yield runner, store
        finally:
            runner.run(context.__aexit__(None, None, None))


def test_canonical_text_survives_postgres_exactly(pg_cluster: PgCluster) -> None:
    """Arbitrary nested data (Chinese, NUL, huge ints, floats) comes back byte for byte."""
    with store_on_a_runner(pg_cluster) as (runner, store):
        @settings(max_examples=150, deadline=None)
        @given(data=json_objects, metadata=json_objects)
        def round_trip(data: dict[str, Any], metadata: dict[str, Any]) -> None:
            event = NewEvent("Anything", data, metadata=metadata)
            result = runner.run(store.append(f"case-{event.event_id}", NO_STREAM, [event]))
            (got,) = runner.run(store.read_stream(f"case-{event.event_id}"))
            assert got.position == result.position
            assert got.data_json == canonical_json(data)
            assert got.metadata_json == canonical_json(metadata)
            assert got.data == data and got.metadata == metadata
            assert canonical_json(got.data) == got.data_json

        round_trip()


def test_postgres_builds_the_canonical_bytes_python_hashes(pg_cluster: PgCluster) -> None:
    """Verify has PostgreSQL assemble each event's canonical bytes: for any moment from year 1
    to 9999, in any offset, they are exactly the bytes the event was hashed over (a single
    microsecond off would read as tampering)."""
    moments = st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30),
                           timezones=st.sampled_from([UTC, timezone(timedelta(hours=8)),
                                                      timezone(-timedelta(hours=9, minutes=30))]))
    with store_on_a_runner(pg_cluster) as (runner, store):
        @settings(max_examples=150, deadline=None)
        @given(occurred=moments, data=json_objects)
        def same_bytes(occurred: datetime, data: dict[str, Any]) -> None:
            event = NewEvent("Anything", data, occurred_at=occurred)
            result = runner.run(store.append(f"case-{event.event_id}", NO_STREAM, [event]))
            rows = runner.run(store.pool.fetch(verify._READ, result.position - 1, 1))
            (got,) = runner.run(store.read_stream(f"case-{event.event_id}"))
            assert got.occurred_at == occurred
            assert rows[0][4] == got.canonical_bytes()
            assert chain_hash(rows[0][2], rows[0][4]) == rows[0][3] == got.hash

        same_bytes()


async def test_typed_event_with_decimal_and_upcaster_round_trips(
    pg_store: PostgresEventStore,
) -> None:
    registry = EventRegistry()

    @registry.register("BenefitGranted", 2)
    class BenefitGranted(DomainEvent):
        amount: Decimal
        currency: str

    @registry.register_upcaster("BenefitGranted", 1)
    def add_currency(data: dict[str, Any]) -> dict[str, Any]:
        return {**data, "currency": "CNY"}

    granted = BenefitGranted(amount=Decimal("1234567890.10"), currency="CNY")
    await pg_store.append("case-a", NO_STREAM, [to_new_event(granted)])
    await pg_store.append("case-a", 1, [NewEvent("BenefitGranted", {"amount": "0.30"},
                                                 schema_version=1)])
    stored_new, stored_old = await pg_store.read_stream("case-a")
    assert registry.decode(stored_new) == granted
    assert registry.decode(stored_old) == BenefitGranted(amount=Decimal("0.30"), currency="CNY")


async def test_writers_outlive_their_sessions_ending_and_nothing_is_appended_twice(
    database: Db,
) -> None:
    """The database ends every session of the store (a restart, an admin): the appends in
    flight may fail, the writers carry on with new sessions, and what was acknowledged is
    there once."""
    pool = await create_pool(database.service_dsn, min_size=2, max_size=4)
    store = PostgresEventStore(pool, writers=2)
    admin = await asyncpg.connect(database.admin_dsn)
    try:
        done: list[str] = []

        async def one(i: int) -> None:
            with contextlib.suppress(Exception):  # in flight when the session ended: any error
                await store.append(f"case-s{i}", NO_STREAM, [ev(i=i)])
                done.append(f"case-s{i}")

        await asyncio.gather(*(one(i) for i in range(40)))
        writers = list(store._writer_tasks)
        for round_ in range(3):
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                " AND usename <> current_user")
            await asyncio.gather(*(one(1000 * (round_ + 1) + i) for i in range(40)))
        await asyncio.gather(*(one(9000 + i) for i in range(40)))  # all sessions new by now
        assert {f"case-s{9000 + i}" for i in range(40)} <= set(done)
        assert not [t for t in writers if t.done()], "a writer task died"
        rows = await admin.fetch("SELECT stream_id, count(*) AS n FROM events"
                                 " WHERE stream_id LIKE 'case-s%' GROUP BY stream_id")
        assert all(r["n"] == 1 for r in rows)
        assert set(done) <= {r["stream_id"] for r in rows}
    finally:
        await admin.close()
        await store.close()
        await pool.close()
