"""Consumers' positions are per partition, and a stream's partition depends on the count: an
agent refuses positions kept for another count, and `yizhan consumers repartition` moves them
so that, with the topic recreated with the new count and the log published again, every event
is applied exactly once — against real PostgreSQL and the Kafka-protocol broker."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid

import asyncpg
import pytest
from aiokafka.admin import AIOKafkaAdminClient

from services.status import read_status, render
from shared.consumer import IdempotentConsumer, PositionsKeptForAnotherPartitionCount, scope_for
from shared.eventstore.postgres import PostgresEventStore
from shared.kafka import ensure_topics, recreate_topic
from shared.relay import RELAY_LOCK, Relay, RelayConfig, partition_for
from shared.repartition import (
    ConsumerHasNotCaughtUp,
    OldPartitionCountUnknown,
    RelayStillLeads,
    repartition,
)
from shared.streaming import idempotent_agent, make_app, running_app
from tests.conftest import Db
from tests.integration.test_streaming import (
    CONSUMER,
    append_many,
    table,  # noqa: F401 - the fixture
    wait_for,
    wait_for_db,
    write_rows,
)

TOPIC = "case.events"


async def counts(pool: asyncpg.Pool, topic: str = TOPIC) -> dict[str, int]:
    return {r[0]: r[1] for r in await pool.fetch(
        "SELECT consumer, partitions FROM consumer_partition_counts WHERE topic = $1", topic)}


async def caught_up_positions(pool: asyncpg.Pool, partitions: int) -> dict[int, int]:
    """Each partition's last position under ``partitions``: a consumer that applied it all."""
    last: dict[int, int] = {}
    for stream, position in await pool.fetch(
            "SELECT stream_id, max(position) FROM events GROUP BY stream_id"):
        p = partition_for(stream, partitions)
        last[p] = max(last.get(p, 0), position)
    return last


async def keep(admin_pool: asyncpg.Pool, consumer: str, positions: dict[int, int],
               partitions: int | None) -> None:
    await admin_pool.executemany(
        "INSERT INTO consumer_positions (consumer, scope, position) VALUES ($1, $2, $3)",
        [(consumer, scope_for(TOPIC, p), pos) for p, pos in positions.items()])
    if partitions is not None:
        await admin_pool.execute(
            "INSERT INTO consumer_partition_counts (consumer, topic, partitions)"
            " VALUES ($1, $2, $3)", consumer, TOPIC, partitions)


async def test_an_agent_records_the_count_and_refuses_positions_kept_for_another(
    pg_store: PostgresEventStore, pool: asyncpg.Pool, admin_pool: asyncpg.Pool,
) -> None:
    consumer = IdempotentConsumer(pool, "c")
    await consumer.check_partition_count(TOPIC, 3)  # no positions: recorded
    await consumer.check_partition_count(TOPIC, 4)  # still none: recorded anew
    assert await counts(pool) == {"c": 4}
    await keep(admin_pool, "c", {0: 5, 1: 7}, None)
    await consumer.check_partition_count(TOPIC, 4)
    with pytest.raises(PositionsKeptForAnotherPartitionCount, match="for 4 partitions"):
        await consumer.check_partition_count(TOPIC, 6)
    # positions kept before counts were recorded: taken for the topic's count if they fit
    await keep(admin_pool, "old", {0: 5, 2: 7}, None)
    await IdempotentConsumer(pool, "old").check_partition_count(TOPIC, 3)
    assert (await counts(pool))["old"] == 3
    await keep(admin_pool, "wider", {5: 9}, None)
    with pytest.raises(PositionsKeptForAnotherPartitionCount, match="at least 6"):
        await IdempotentConsumer(pool, "wider").check_partition_count(TOPIC, 4)
    assert "wider" not in await counts(pool)


async def kept_for_3_misplaced_for_4(store: PostgresEventStore,
                                     pool: asyncpg.Pool) -> dict[int, int]:
    """300 events, and the positions a caught-up consumer keeps on 3 partitions: some stored
    position's stream is on another partition for 4 (what the guard must see)."""
    await append_many(store, 300)
    last = await caught_up_positions(pool, 3)
    streams = {r[0]: r[1] for r in await pool.fetch(
        "SELECT position, stream_id FROM events WHERE position = ANY($1)", list(last.values()))}
    assert any(partition_for(streams[pos], 4) != p for p, pos in last.items())
    return last


async def test_positions_kept_before_counts_were_recorded_are_checked_against_the_log(
    pg_store: PostgresEventStore, pool: asyncpg.Pool, admin_pool: asyncpg.Pool,
) -> None:
    # An upgrade that also grows the topic (3 -> 4 here; the relay recreates it): the old
    # positions name partitions 0-2 only, all below 4, yet were kept for 3. Each stored
    # position is the last event applied from its partition, whose stream is on that
    # partition for the count they were kept for, not (here) for 4.
    last = await kept_for_3_misplaced_for_4(pg_store, pool)
    await keep(admin_pool, "upgraded", last, None)
    with pytest.raises(PositionsKeptForAnotherPartitionCount, match="another count"):
        await IdempotentConsumer(pool, "upgraded").check_partition_count(TOPIC, 4)
    assert "upgraded" not in await counts(pool)
    await IdempotentConsumer(pool, "upgraded").check_partition_count(TOPIC, 3)  # theirs
    assert (await counts(pool))["upgraded"] == 3


async def test_repartition_checks_a_given_old_count_against_the_stored_positions(
    pg_store: PostgresEventStore, pool: asyncpg.Pool, admin_pool: asyncpg.Pool,
) -> None:
    last = await kept_for_3_misplaced_for_4(pg_store, pool)
    await keep(admin_pool, "unrecorded", last, None)  # kept for 3, before counts were recorded
    async with pool.acquire() as conn:
        with pytest.raises(OldPartitionCountUnknown, match="not kept for the 4 partitions"):
            await repartition(conn, TOPIC, 5, old_partitions=4)
        done = await repartition(conn, TOPIC, 5, old_partitions=3)
    assert [(d.consumer, d.old, d.new, d.position) for d in done] == [
        ("unrecorded", 3, 5, 300)]


async def test_repartition_refuses_while_a_relay_leads_or_a_consumer_lags(
    pg_store: PostgresEventStore, pool: asyncpg.Pool, admin_pool: asyncpg.Pool,
) -> None:
    await append_many(pg_store, 300)
    last = await caught_up_positions(pool, 3)
    assert set(last) == {0, 1, 2}
    lagging = min(last)
    await keep(admin_pool, "lags", {**last, lagging: last[lagging] - 1}, 3)
    await keep(admin_pool, "done", last, 3)
    before = await pool.fetch("SELECT * FROM consumer_positions ORDER BY consumer, scope")

    relay = await pool.acquire()
    try:
        assert await relay.fetchval("SELECT pg_try_advisory_lock($1)", RELAY_LOCK)
        async with pool.acquire() as conn:
            with pytest.raises(RelayStillLeads, match="stop every `yizhan relay`"):
                await repartition(conn, TOPIC, 4)
        await relay.execute("SELECT pg_advisory_unlock($1)", RELAY_LOCK)
    finally:
        await pool.release(relay)
    async with pool.acquire() as conn:
        with pytest.raises(ConsumerHasNotCaughtUp, match=f"partition {lagging} at"):
            await repartition(conn, TOPIC, 4)
    # every partition caught up, but the relay published more than the consumer applied
    await admin_pool.execute("UPDATE consumer_positions SET position = $2 WHERE consumer = "
                             "'lags' AND scope = $1", scope_for(TOPIC, lagging), last[lagging])
    await admin_pool.execute(
        "INSERT INTO relay_partition_offsets (relay, topic, partition, last_offset, position)"
        " VALUES ('case.events', $1, 0, 99, 301)", TOPIC)
    async with pool.acquire() as conn:
        with pytest.raises(ConsumerHasNotCaughtUp, match="relay published up to 301"):
            await repartition(conn, TOPIC, 4)
    # nothing was changed by any refusal (one transaction)
    await admin_pool.execute("UPDATE consumer_positions SET position = $2 WHERE consumer = "
                             "'lags' AND scope = $1", scope_for(TOPIC, lagging),
                             last[lagging] - 1)
    assert await pool.fetch("SELECT * FROM consumer_positions ORDER BY consumer, scope") == before
    assert await counts(pool) == {"lags": 3, "done": 3}


async def test_repartition_moves_caught_up_consumers_once(
    pg_store: PostgresEventStore, pool: asyncpg.Pool, admin_pool: asyncpg.Pool,
) -> None:
    await append_many(pg_store, 300)
    last = await caught_up_positions(pool, 3)
    await keep(admin_pool, "a", last, 3)
    await keep(admin_pool, "b", last, 3)
    await admin_pool.execute(  # a consumer with a count and no positions yet
        "INSERT INTO consumer_partition_counts (consumer, topic, partitions)"
        " VALUES ('idle', $1, 3)", TOPIC)
    async with pool.acquire() as conn:
        done = await repartition(conn, TOPIC, 4)
    assert [(d.consumer, d.old, d.new, d.position, d.changed) for d in done] == [
        ("a", 3, 4, 300, True), ("b", 3, 4, 300, True), ("idle", 3, 4, None, True)]
    for name in ("a", "b"):
        assert await IdempotentConsumer(pool, name).positions() == {
            scope_for(TOPIC, p): 300 for p in range(4)}
    assert await counts(pool) == {"a": 4, "b": 4, "idle": 4}
    async with pool.acquire() as conn:  # again: nothing to do
        again = await repartition(conn, TOPIC, 4)
    assert [d.changed for d in again] == [False, False, False]
    assert await IdempotentConsumer(pool, "a").positions() == {
        scope_for(TOPIC, p): 300 for p in range(4)}


@pytest.mark.usefixtures("table")
async def test_after_a_partition_change_an_agent_refuses_until_repartitioned_then_applies_once(
    pg_store: PostgresEventStore, pool: asyncpg.Pool, database: Db,
    kafka_bootstrap: str,
) -> None:
    topic = f"case.events.{uuid.uuid4().hex[:8]}"
    group = f"test-{uuid.uuid4().hex[:8]}"
    await ensure_topics(kafka_bootstrap, {topic: 3})

    def worker(partitions: int) -> tuple[object, object]:
        app = make_app(group, bootstrap_servers=kafka_bootstrap, partitions=partitions)
        agent = idempotent_agent(app, topic=topic, consumer=IdempotentConsumer(pool, CONSUMER),
                                 apply=write_rows, batch_size=100, max_wait_s=0.05)
        return app, agent

    def relay(partitions: int) -> Relay:
        return Relay(pg_store, RelayConfig(bootstrap_servers=kafka_bootstrap, topic=topic,
                                           partitions=partitions, poll_interval_s=0.05,
                                           probe_interval_s=1.0, request_timeout_ms=3000))

    async def relaying(r: Relay, until: int) -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(r.run(stop))
        try:
            await wait_for(lambda: r.stats.position == until, what=f"relayed to {until}")
        finally:
            stop.set()
            await asyncio.wait_for(task, 20)

    # kept for 3 partitions
    await append_many(pg_store, 300)
    await relaying(relay(3), 300)
    app, agent = worker(3)
    async with running_app(app, stop_timeout=20):  # type: ignore[arg-type]
        await wait_for_db(pool, "SELECT count(*) FROM applied", 300)
    assert await counts(pool, topic) == {CONSUMER: 3}

    # the topic now has 4 partitions (as an operator, or the relay on the new count, does)
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        await recreate_topic(admin, topic, 4)
    finally:
        await admin.close()
    app, _ = worker(4)
    with pytest.raises(PositionsKeptForAnotherPartitionCount) as refused:
        async with running_app(app, stop_timeout=20):  # type: ignore[arg-type]
            pass
    assert f"{CONSUMER!r} kept its positions on {topic} for 3 partitions" in str(refused.value)
    assert f"--topic {topic} --partitions 4" in str(refused.value)
    async with pool.acquire() as conn:  # `yizhan status` holds it against the topic's count
        status = await read_status(conn, partitions={topic: 4})
    problem = {p.name: p.problem for p in status.parts}[f"consumer {CONSUMER}"]
    assert problem is not None and "for 3 partitions" in problem
    assert "PROBLEM" in render(status)

    # the command, as an operator runs it (the relay stopped, the consumer caught up)
    env = {**os.environ, "DATABASE_URL": database.service_dsn,
           "YIZHAN_MIGRATE_ON_START": "false", "YIZHAN_LOG_LEVEL": "warning"}
    command = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "from services.cli import main; main()", "consumers",
        "repartition", "--topic", topic, "--partitions", "4", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(command.communicate(), 120)
    assert command.returncode == 0, err.decode()
    assert (f"{CONSUMER}: every event up to position 300 applied; {topic} partitions 0–3 now "
            "at 300") in out.decode()
    async with pool.acquire() as conn:
        assert (await read_status(conn, partitions={topic: 4})).problems == []

    # new events; the relay on 4 partitions finds its acknowledgements start again at 0,
    # recreates the topic and publishes the whole log again: applied once, none skipped
    await append_many(pg_store, 200, streams=40)
    r = relay(4)
    app, agent = worker(4)
    async with running_app(app, stop_timeout=20):  # type: ignore[arg-type]
        await relaying(r, 500)
        await wait_for_db(pool, "SELECT count(*) FROM applied", 500)
        await asyncio.sleep(1.0)  # anything late would show now
    assert r.stats.republished_from_zero == 1
    rows = await pool.fetch("SELECT position, stream_id, version FROM applied ORDER BY seq")
    assert sorted(r["position"] for r in rows) == list(range(1, 501))
    logged = {(e.position, e.stream_id, e.version) async for batch in pg_store.read_all()
              for e in batch}
    assert {(r["position"], r["stream_id"], r["version"]) for r in rows} == logged
    by_stream: dict[str, list[int]] = {}
    for row in rows:
        by_stream.setdefault(row["stream_id"], []).append(row["version"])
    for stream, versions in by_stream.items():
        assert versions == list(range(1, len(versions) + 1)), stream
    assert agent.stats.applied == 200  # type: ignore[attr-defined]
    assert await counts(pool, topic) == {CONSUMER: 4}


async def test_the_command_refuses_in_one_line_while_a_relay_leads(
    pg_store: PostgresEventStore, pool: asyncpg.Pool, admin_pool: asyncpg.Pool, database: Db,
) -> None:
    await append_many(pg_store, 50)
    await keep(admin_pool, "a", await caught_up_positions(pool, 3), 3)
    env = {**os.environ, "DATABASE_URL": database.service_dsn, "YIZHAN_TOPIC_PARTITIONS": "4",
           "YIZHAN_MIGRATE_ON_START": "false", "YIZHAN_LOG_LEVEL": "warning"}
    async with pool.acquire() as relay:
        assert await relay.fetchval("SELECT pg_try_advisory_lock($1)", RELAY_LOCK)
        command = await asyncio.create_subprocess_exec(
            sys.executable, "-c", "from services.cli import main; main()", "consumers",
            "repartition", env=env, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(command.communicate(), 120)
        await relay.execute("SELECT pg_advisory_unlock($1)", RELAY_LOCK)
    assert command.returncode == 2, (out, err)
    assert err.decode().strip().splitlines() == [
        "error: a relay leads (holds the relay lock): stop every `yizhan relay` first, then "
        "run this again"]
    assert await counts(pool) == {"a": 3}
