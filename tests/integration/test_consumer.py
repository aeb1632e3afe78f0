"""The idempotent consumer applies each position once, atomically with its writes."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from shared.consumer import IdempotentConsumer
from shared.contracts.envelope import NewEvent, RecordedEvent
from shared.eventstore.port import NO_STREAM
from shared.eventstore.postgres import PostgresEventStore


@pytest.fixture
async def events(pg_store: PostgresEventStore, admin_pool: asyncpg.Pool) -> list[RecordedEvent]:
    await admin_pool.execute(
        "CREATE TABLE applied (position bigint PRIMARY KEY, n int);"
        " GRANT ALL ON applied TO yizhan_app"
    )
    for i in range(10):
        await pg_store.append(f"case-{i}", NO_STREAM, [NewEvent("Noted", {"n": i})])
    return [e async for batch in pg_store.read_all() for e in batch]


async def write_rows(conn: asyncpg.Connection, batch: list[RecordedEvent]) -> None:
    await conn.executemany("INSERT INTO applied VALUES ($1, $2)",
                           [(e.position, e.data["n"]) for e in batch])


async def applied(pool: asyncpg.Pool) -> list[int]:
    return [r[0] for r in await pool.fetch("SELECT position FROM applied ORDER BY position")]


async def test_redelivered_and_overlapping_batches_apply_once(
    pool: asyncpg.Pool, events: list[RecordedEvent]
) -> None:
    consumer = IdempotentConsumer(pool, "test")
    assert len(await consumer.apply("p0", events[:6], write_rows)) == 6
    assert await consumer.apply("p0", events[:6], write_rows) == []  # redelivery
    fresh = await consumer.apply("p0", events[3:], write_rows)  # overlap
    assert [e.position for e in fresh] == [7, 8, 9, 10]
    assert await applied(pool) == list(range(1, 11))
    assert await consumer.position("p0") == 10


async def test_a_position_twice_in_one_batch_is_applied_once(
    pool: asyncpg.Pool, events: list[RecordedEvent]
) -> None:
    consumer = IdempotentConsumer(pool, "test")
    applied_now = await consumer.apply("p0", [*events[:4], *events[:4]], write_rows)
    assert [e.position for e in applied_now] == [1, 2, 3, 4]
    assert await applied(pool) == [1, 2, 3, 4]


async def test_scopes_are_independent(pool: asyncpg.Pool, events: list[RecordedEvent]) -> None:
    consumer = IdempotentConsumer(pool, "test")
    await consumer.apply("p1", [e for e in events if e.position % 2 == 0], write_rows)
    await consumer.apply("p0", [e for e in events if e.position % 2 == 1], write_rows)
    assert await applied(pool) == list(range(1, 11))
    assert await consumer.positions() == {"p0": 9, "p1": 10}


async def test_a_failing_batch_writes_nothing_and_keeps_the_position(
    pool: asyncpg.Pool, events: list[RecordedEvent]
) -> None:
    consumer = IdempotentConsumer(pool, "test")
    await consumer.apply("p0", events[:3], write_rows)

    async def crash_midway(conn: asyncpg.Connection, batch: list[RecordedEvent]) -> None:
        await write_rows(conn, batch[:2])
        raise RuntimeError("worker died")

    with pytest.raises(RuntimeError):
        await consumer.apply("p0", events[3:], crash_midway)
    assert await applied(pool) == [1, 2, 3]
    assert await consumer.position("p0") == 3
    await consumer.apply("p0", events[3:], write_rows)  # the redelivery after restart
    assert await applied(pool) == list(range(1, 11))


async def test_two_workers_given_the_same_batch_apply_it_once(
    pool: asyncpg.Pool, events: list[RecordedEvent]
) -> None:
    a, b = IdempotentConsumer(pool, "test"), IdempotentConsumer(pool, "test")
    results = await asyncio.gather(a.apply("p0", events, write_rows),
                                   b.apply("p0", events, write_rows))
    assert sorted(len(r) for r in results) == [0, 10]
    assert await applied(pool) == list(range(1, 11))


# -- several scopes in one transaction (what a Faust agent fetched from all its partitions) --

def by_parity(events: list[RecordedEvent]) -> dict[str, list[RecordedEvent]]:
    return {"p0": [e for e in events if e.position % 2 == 1],
            "p1": [e for e in events if e.position % 2 == 0]}


async def test_scopes_applied_together_once_each_with_one_call_in_position_order(
    pool: asyncpg.Pool, events: list[RecordedEvent]
) -> None:
    consumer = IdempotentConsumer(pool, "test")
    await consumer.apply("p1", [e for e in events[:4] if e.position % 2 == 0], write_rows)
    calls: list[list[int]] = []

    async def recording(conn: asyncpg.Connection, batch: list[RecordedEvent]) -> None:
        calls.append([e.position for e in batch])
        await write_rows(conn, batch)

    fresh = await consumer.apply_scopes(by_parity(events), recording)
    assert calls == [[1, 3, 5, 6, 7, 8, 9, 10]]  # p1 had 2 and 4 already
    assert {s: [e.position for e in f] for s, f in fresh.items()} == {
        "p0": [1, 3, 5, 7, 9], "p1": [6, 8, 10]}
    assert await applied(pool) == list(range(1, 11))
    assert await consumer.positions() == {"p0": 9, "p1": 10}
    again = await consumer.apply_scopes(by_parity(events), recording)  # redelivery
    assert again == {"p0": [], "p1": []} and len(calls) == 1


async def test_scopes_applied_together_fail_together(
    pool: asyncpg.Pool, events: list[RecordedEvent]
) -> None:
    consumer = IdempotentConsumer(pool, "test")

    async def crash_midway(conn: asyncpg.Connection, batch: list[RecordedEvent]) -> None:
        await write_rows(conn, batch[:3])
        raise RuntimeError("worker died")

    with pytest.raises(RuntimeError):
        await consumer.apply_scopes(by_parity(events), crash_midway)
    assert await applied(pool) == []
    assert await consumer.positions() == {}  # not even the rows it created
    await consumer.apply_scopes(by_parity(events), write_rows)
    assert await applied(pool) == list(range(1, 11))


async def test_two_workers_given_the_same_scopes_in_any_order_apply_them_once(
    pool: asyncpg.Pool, events: list[RecordedEvent]
) -> None:
    a, b = IdempotentConsumer(pool, "test"), IdempotentConsumer(pool, "test")
    forward = by_parity(events)
    backward = dict(reversed(list(forward.items())))  # locked in scope order all the same
    results = await asyncio.gather(a.apply_scopes(forward, write_rows),
                                   b.apply_scopes(backward, write_rows))
    assert sorted(sum(len(f) for f in r.values()) for r in results) == [0, 10]
    assert await applied(pool) == list(range(1, 11))
