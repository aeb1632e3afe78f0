"""The Faust boundary applies the relayed log exactly once, in per-stream order, through
redelivery, a failing apply, a worker stopped mid-batch and garbage on the topic — against real
PostgreSQL and the Kafka-protocol broker."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from shared.consumer import Apply, IdempotentConsumer, scope_for
from shared.contracts.envelope import NewEvent, RecordedEvent
from shared.eventstore.port import ANY
from shared.eventstore.postgres import PostgresEventStore
from shared.kafka import TopicMisconfigured, broker_state, ensure_topics
from shared.relay import Relay, RelayConfig
from shared.settings import Settings
from shared.streaming import EventAgent, idempotent_agent, make_app, running_app

PARTITIONS = 3
CONSUMER = "streaming-test"


async def wait_for(condition: Callable[[], object], timeout: float = 30.0,
                   what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout} s")
        await asyncio.sleep(0.05)


async def wait_for_db(pool: asyncpg.Pool, sql: str, expected: object,
                      timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while (got := await pool.fetchval(sql)) != expected:
        if time.monotonic() > deadline:
            raise AssertionError(f"{sql!r} gave {got!r}, expected {expected!r}")
        await asyncio.sleep(0.05)


async def append_many(store: PostgresEventStore, n: int, streams: int = 25) -> None:
    for start in range(0, n, 200):  # concurrent appends, group-committed by the store
        await asyncio.gather(*(
            store.append(f"case-{i % streams}", ANY, [NewEvent("Noted", {"i": i})])
            for i in range(start, min(n, start + 200))
        ))


async def write_rows(conn: asyncpg.Connection, events: list[RecordedEvent]) -> None:
    await conn.executemany(
        "INSERT INTO applied (position, stream_id, version) VALUES ($1, $2, $3)",
        [(e.position, e.stream_id, e.version) for e in events],
    )


@pytest.fixture
async def table(admin_pool: asyncpg.Pool) -> None:
    await admin_pool.execute(
        "CREATE TABLE applied (seq bigint GENERATED ALWAYS AS IDENTITY, position bigint"
        " PRIMARY KEY, stream_id text NOT NULL, version int NOT NULL);"
        " GRANT ALL ON applied TO yizhan_app;"
        " GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO yizhan_app"
    )


@pytest.fixture
async def topic(kafka_bootstrap: str) -> str:
    name = f"case.events.{uuid.uuid4().hex[:8]}"
    await ensure_topics(kafka_bootstrap, {name: PARTITIONS})  # before any client names it
    return name


@contextlib.asynccontextmanager
async def relaying(store: PostgresEventStore, bootstrap: str, topic: str) -> AsyncIterator[Relay]:
    relay = Relay(store, RelayConfig(bootstrap_servers=bootstrap, topic=topic,
                                     partitions=PARTITIONS, poll_interval_s=0.05,
                                     probe_interval_s=1.0, request_timeout_ms=3000))
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    try:
        yield relay
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)


@contextlib.asynccontextmanager
async def worker(
    bootstrap: str, topic: str, pool: asyncpg.Pool, apply: Apply = write_rows,
    group: str | None = None, batch_size: int = 200,
) -> AsyncIterator[EventAgent]:
    app = make_app(group or f"test-{uuid.uuid4().hex[:8]}", bootstrap_servers=bootstrap,
                   partitions=PARTITIONS)
    agent = idempotent_agent(app, topic=topic, consumer=IdempotentConsumer(pool, CONSUMER),
                             apply=apply, batch_size=batch_size, max_wait_s=0.1,
                             retry_initial_s=0.05, retry_max_s=0.2)
    async with running_app(app, stop_timeout=20):
        yield agent


async def all_topics(bootstrap: str) -> dict[str, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return (await broker_state(admin))[1]
    finally:
        await admin.close()


async def last_position_per_scope(bootstrap: str, topic: str, messages: int) -> dict[str, int]:
    """The highest envelope position in each partition (values that are not JSON skipped)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    last: dict[str, int] = {}
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        seen, deadline = 0, time.monotonic() + 30
        while seen < messages and time.monotonic() < deadline:
            for tp, records in (await consumer.getmany(timeout_ms=200)).items():
                for r in records:
                    seen += 1
                    with contextlib.suppress(ValueError, TypeError, KeyError):
                        position = int(json.loads(r.value)["position"])
                        scope = scope_for(topic, tp.partition)
                        last[scope] = max(last.get(scope, 0), position)
        assert seen == messages, f"read {seen} of {messages} messages"
    finally:
        await consumer.stop()
    return last


async def assert_applied_exactly_once(
    pool: asyncpg.Pool, bootstrap: str, topic: str, total: int, garbage: int = 0
) -> None:
    rows = await pool.fetch("SELECT position, stream_id, version FROM applied ORDER BY seq")
    assert sorted(r["position"] for r in rows) == list(range(1, total + 1))
    by_stream: dict[str, list[tuple[int, int]]] = {}
    for r in rows:  # in the order they were applied
        by_stream.setdefault(r["stream_id"], []).append((r["position"], r["version"]))
    for stream, seen in by_stream.items():
        assert seen == sorted(seen), f"{stream} applied out of order"
        assert [v for _, v in seen] == list(range(1, len(seen) + 1)), stream
    # the stored position of each partition is the last event on it
    expected = await last_position_per_scope(bootstrap, topic, total + garbage)
    assert await IdempotentConsumer(pool, CONSUMER).positions() == expected


async def test_relayed_events_are_applied_once_in_stream_order_and_no_topic_is_created(
    pg_store: PostgresEventStore, pool: asyncpg.Pool, table: None, topic: str,
    kafka_bootstrap: str,
) -> None:
    total = 2000
    await append_many(pg_store, total)
    before = await all_topics(kafka_bootstrap)
    started = time.monotonic()
    async with relaying(pg_store, kafka_bootstrap, topic), \
            worker(kafka_bootstrap, topic, pool) as agent:
        await wait_for_db(pool, "SELECT count(*) FROM applied", total)
        elapsed = time.monotonic() - started
        assert agent.stats.applied == total
        assert agent.stats.last_position == total
        assert agent.stats.parked == 0
        print(f"applied {total} events in {elapsed:.2f} s (including group join)")
    assert await all_topics(kafka_bootstrap) == before  # Faust created no topic
    await assert_applied_exactly_once(pool, kafka_bootstrap, topic, total)


async def test_the_worker_fetches_with_our_wait_not_fausts_hard_coded_one(
    pool: asyncpg.Pool, table: None, topic: str, kafka_bootstrap: str,
) -> None:
    """The embedded broker lets a waiting fetch run its full wait: Faust's 1,500 ms would be
    every hop's latency. The running consumer's fetcher must use kafka_fetch_max_wait_ms."""
    async with worker(kafka_bootstrap, topic, pool) as agent:
        consumer = agent.app.consumer._thread._consumer  # the aiokafka consumer Faust built
        assert consumer._fetcher._fetch_max_wait_ms == Settings().kafka_fetch_max_wait_ms
        assert Settings().kafka_fetch_max_wait_ms < 1500


async def test_redelivery_to_a_new_group_changes_nothing(
    pg_store: PostgresEventStore, pool: asyncpg.Pool, table: None, topic: str,
    kafka_bootstrap: str,
) -> None:
    total = 500
    await append_many(pg_store, total)
    async with relaying(pg_store, kafka_bootstrap, topic) as relay:
        await wait_for(lambda: relay.stats.position == total)
    async with worker(kafka_bootstrap, topic, pool):
        await wait_for_db(pool, "SELECT count(*) FROM applied", total)
    before = await pool.fetch("SELECT * FROM applied ORDER BY seq")
    positions = await IdempotentConsumer(pool, CONSUMER).positions()
    async with worker(kafka_bootstrap, topic, pool) as again:  # a new group: offsets from 0
        await wait_for(lambda: again.stats.duplicates + again.stats.applied >= total,
                       what="everything redelivered")
        assert (again.stats.duplicates, again.stats.applied) == (total, 0)
    assert await pool.fetch("SELECT * FROM applied ORDER BY seq") == before
    assert await IdempotentConsumer(pool, CONSUMER).positions() == positions


async def test_a_failing_apply_is_retried_without_losing_or_repeating_a_batch(
    pg_store: PostgresEventStore, pool: asyncpg.Pool, table: None, topic: str,
    kafka_bootstrap: str,
) -> None:
    total = 600
    await append_many(pg_store, total)
    failed: set[tuple[int, ...]] = set()

    async def fails_first_time(conn: asyncpg.Connection, events: list[RecordedEvent]) -> None:
        await write_rows(conn, events[: len(events) // 2])  # written, then rolled back
        key = tuple(e.position for e in events)
        if key not in failed:
            failed.add(key)
            raise RuntimeError("apply failed")
        await write_rows(conn, events[len(events) // 2:])

    async with relaying(pg_store, kafka_bootstrap, topic) as relay:
        await wait_for(lambda: relay.stats.position == total)
    async with worker(kafka_bootstrap, topic, pool, fails_first_time, batch_size=300) as agent:
        await wait_for_db(pool, "SELECT count(*) FROM applied", total)
        assert agent.stats.apply_errors == len(failed) > 1
        assert agent.stats.applied == total
    await assert_applied_exactly_once(pool, kafka_bootstrap, topic, total)


@pytest.mark.slow  # rejoining the same group takes ~12 s on the embedded broker
async def test_a_worker_stopped_while_a_batch_fails_loses_nothing_after_restart(
    pg_store: PostgresEventStore, pool: asyncpg.Pool, table: None, topic: str,
    kafka_bootstrap: str,
) -> None:
    total = 600
    poison = 350
    await append_many(pg_store, total)
    async with relaying(pg_store, kafka_bootstrap, topic) as relay:
        await wait_for(lambda: relay.stats.position == total)

    async def broken(conn: asyncpg.Connection, events: list[RecordedEvent]) -> None:
        await write_rows(conn, events)
        if any(e.position == poison for e in events):
            raise RuntimeError("the database went away mid-batch")

    group = f"test-{uuid.uuid4().hex[:8]}"
    async with worker(kafka_bootstrap, topic, pool, broken, group=group, batch_size=50) as agent:
        await wait_for(lambda: agent.stats.apply_errors >= 3, what="the batch being retried")
        assert agent.stats.retrying
        applied_before = agent.stats.applied
    count = await pool.fetchval("SELECT count(*) FROM applied")
    assert count == applied_before < total
    assert not await pool.fetchval("SELECT count(*) FROM applied WHERE position = $1", poison)

    async with worker(kafka_bootstrap, topic, pool, group=group) as restarted:  # same group
        await wait_for_db(pool, "SELECT count(*) FROM applied", total)
        # the committed offsets held: what was applied before is not delivered again in full
        assert restarted.stats.applied == total - count
    await assert_applied_exactly_once(pool, kafka_bootstrap, topic, total)


async def test_garbage_on_the_topic_is_parked_and_the_worker_keeps_going(
    pg_store: PostgresEventStore, pool: asyncpg.Pool, table: None, topic: str,
    kafka_bootstrap: str,
) -> None:
    total = 300
    await append_many(pg_store, 100)
    stored = (await pg_store.read_batch(0, 1))[0]
    tampered = {**stored.to_wire(), "data": {"i": 999}}
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, enable_idempotence=False)
    await producer.start()
    try:
        for value in (b"not json", b'{"position": 1}', json.dumps(tampered).encode(),
                      b"[1, 2]", None):
            await producer.send_and_wait(topic, value=value, key=b"case-0", partition=0)
    finally:
        await producer.stop()
    async with worker(kafka_bootstrap, topic, pool) as agent, \
            relaying(pg_store, kafka_bootstrap, topic):
        await wait_for(lambda: agent.stats.parked == 5, what="garbage parked")
        await append_many(pg_store, total - 100)
        await wait_for_db(pool, "SELECT count(*) FROM applied", total)
        reasons = [p.reason for p in agent.stats.last_parked]
        assert any("hash mismatch" in r for r in reasons), reasons
        assert {(p.partition, p.topic) for p in agent.stats.last_parked} == {(0, topic)}
    await assert_applied_exactly_once(pool, kafka_bootstrap, topic, total, garbage=5)


async def test_an_app_refuses_to_start_on_a_missing_or_misshapen_topic(
    pool: asyncpg.Pool, kafka_bootstrap: str
) -> None:
    # Without this check the consumer's subscription names the topic in a metadata request
    # and the embedded broker creates it with 4 partitions (seen with check_topics=False).
    missing = f"case.events.{uuid.uuid4().hex[:8]}"
    misshapen = f"case.events.{uuid.uuid4().hex[:8]}"
    await ensure_topics(kafka_bootstrap, {misshapen: PARTITIONS + 1})
    before = await all_topics(kafka_bootstrap)
    for name in (missing, misshapen):
        app = make_app(f"test-{uuid.uuid4().hex[:8]}", bootstrap_servers=kafka_bootstrap,
                       partitions=PARTITIONS)
        idempotent_agent(app, topic=name, pool=pool, consumer_name=CONSUMER, apply=write_rows)
        with pytest.raises(TopicMisconfigured, match=name):
            async with running_app(app, topics_wait_s=1.0):
                pass
    assert await all_topics(kafka_bootstrap) == before


async def test_an_app_waits_for_a_topic_being_recreated(
    pool: asyncpg.Pool, kafka_bootstrap: str
) -> None:
    """The relay deletes and recreates its topic when a broker lost its log; a service
    starting in that moment waits for it instead of failing."""
    name = f"case.events.{uuid.uuid4().hex[:8]}"
    app = make_app(f"test-{uuid.uuid4().hex[:8]}", bootstrap_servers=kafka_bootstrap,
                   partitions=PARTITIONS)
    idempotent_agent(app, topic=name, pool=pool, consumer_name=CONSUMER, apply=write_rows)

    async def recreate_soon() -> None:
        await asyncio.sleep(1.5)
        await ensure_topics(kafka_bootstrap, {name: PARTITIONS})

    creating = asyncio.create_task(recreate_soon())
    async with running_app(app, topics_wait_s=20.0):
        assert creating.done()  # it only started once the topic was there
    assert (await all_topics(kafka_bootstrap))[name] == PARTITIONS


async def test_two_workers_in_one_group_share_the_partitions_and_apply_once(
    pg_store: PostgresEventStore, pool: asyncpg.Pool, table: None, topic: str,
    kafka_bootstrap: str,
) -> None:
    total = 1500
    group = f"test-{uuid.uuid4().hex[:8]}"
    async with relaying(pg_store, kafka_bootstrap, topic), \
            worker(kafka_bootstrap, topic, pool, group=group, batch_size=50) as first:
        await append_many(pg_store, total // 3)
        await wait_for(lambda: first.stats.applied > 0, what="the first worker applying")
        async with worker(kafka_bootstrap, topic, pool, group=group, batch_size=50) as second:
            await append_many(pg_store, total - total // 3)  # written during the rebalance
            await wait_for_db(pool, "SELECT count(*) FROM applied", total, timeout=60)
            assert first.stats.applied + second.stats.applied == total
            assert second.stats.applied > 0, "the second worker got no partition"
    await assert_applied_exactly_once(pool, kafka_bootstrap, topic, total)


async def test_positions_of_partitions_taken_away_are_no_longer_reported(
    pg_store: PostgresEventStore, pool: asyncpg.Pool, table: None, topic: str,
    kafka_bootstrap: str,
) -> None:
    """The stats' per-partition positions feed a metric ('last position applied, per topic
    partition'): a partition revoked in a rebalance kept its last value in the worker that
    lost it, frozen, beside the live one of its new owner."""
    group = f"test-{uuid.uuid4().hex[:8]}"
    async with relaying(pg_store, kafka_bootstrap, topic), \
            worker(kafka_bootstrap, topic, pool, group=group, batch_size=50) as first:
        await append_many(pg_store, 300)
        await wait_for_db(pool, "SELECT count(*) FROM applied", 300)
        assert len(first.stats.positions) == PARTITIONS
        async with worker(kafka_bootstrap, topic, pool, group=group, batch_size=50) as second:
            await append_many(pg_store, 300)
            await wait_for_db(pool, "SELECT count(*) FROM applied", 600, timeout=60)
            await wait_for(lambda: second.stats.applied > 0, what="the second worker applying")
            kept = {scope_for(tp.topic, tp.partition) for tp in first.app.consumer.assignment()}
            assert len(kept) < PARTITIONS
            assert set(first.stats.positions) <= kept, (first.stats.positions, kept)
