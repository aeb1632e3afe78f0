"""The relay publishes every committed event, in order per key, through broker restarts, empty
brokers and leader failover."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import uuid
from collections.abc import AsyncIterator

import asyncpg

from shared.contracts.envelope import NewEvent
from shared.eventstore.port import ANY
from shared.eventstore.postgres import PostgresEventStore, create_pool
from shared.relay import Relay, RelayConfig
from shared.runtime import EmbeddedKafka
from tests.conftest import Db
from tests.kafka_helpers import positions_by_key, read_topic

PARTITIONS = 6


async def append_many(store: PostgresEventStore, n: int, streams: int = 40) -> None:
    await asyncio.gather(*(
        store.append(f"case-{i % streams}", ANY,
                     [NewEvent("Noted", {"i": i}, metadata={"correlation_id": f"c-{i}"})])
        for i in range(n)
    ))


@contextlib.asynccontextmanager
async def running(relay: Relay) -> AsyncIterator[asyncio.Event]:
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    try:
        yield stop
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)


async def wait_for(condition: object, timeout: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():  # type: ignore[operator]
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


def config(bootstrap: str, topic: str | None = None) -> RelayConfig:
    topic = topic or f"case.events.{uuid.uuid4().hex[:8]}"
    return RelayConfig(bootstrap_servers=bootstrap, topic=topic,
                       partitions=PARTITIONS, poll_interval_s=0.1, probe_interval_s=0.5,
                       standby_interval_s=0.2, request_timeout_ms=3000)


def assert_complete_and_ordered(messages: list, total: int) -> None:
    by_key = positions_by_key(messages)
    seen = sorted({p for ps in by_key.values() for p in ps})
    assert seen == list(range(1, total + 1))
    for key, ps in by_key.items():
        assert ps == sorted(ps), f"{key} out of order"


async def test_publishes_every_event_in_order_per_key_with_headers(
    pg_store: PostgresEventStore, kafka_bootstrap: str
) -> None:
    await append_many(pg_store, 1500)
    cfg = config(kafka_bootstrap)
    relay = Relay(pg_store, cfg)
    async with running(relay):
        await wait_for(lambda: relay.stats.position == 1500)
    messages = await read_topic(kafka_bootstrap, cfg.topic, PARTITIONS, until=1500)
    assert len(messages) == 1500  # no duplicates in a clean run
    assert_complete_and_ordered(messages, 1500)
    first = min(messages, key=lambda m: m.value["position"])
    stored = (await pg_store.read_batch(0, 1))[0]
    assert first.value == stored.to_wire()
    assert first.key == stored.stream_id
    assert first.headers == {"type": "Noted", "schema_version": "1", "position": "1",
                             "correlation_id": stored.metadata["correlation_id"]}


async def test_broker_restart_loses_nothing(
    pg_store: PostgresEventStore, own_broker: EmbeddedKafka
) -> None:
    cfg = config(own_broker.bootstrap_servers)
    relay = Relay(pg_store, cfg)
    async with running(relay):
        await append_many(pg_store, 500)
        await wait_for(lambda: relay.stats.position == 500)
        own_broker.stop(kill=True)  # memory storage: the log is gone
        writes = asyncio.create_task(append_many(pg_store, 500))
        await asyncio.sleep(0.5)
        own_broker.start()
        await writes
        await wait_for(lambda: relay.stats.position == 1000 and relay.stats.republished_from_zero,
                       timeout=60)
    messages = await read_topic(own_broker.bootstrap_servers, cfg.topic, PARTITIONS, until=1000)
    assert_complete_and_ordered(messages, 1000)


async def test_broker_restarted_while_the_relay_was_idle_is_noticed_before_publishing(
    pg_store: PostgresEventStore, own_broker: EmbeddedKafka
) -> None:
    """No failed request tells the relay: its connections ended with the broker's process,
    and that alone makes it check the broker before the next batch (no periodic probe here)."""
    cfg = dataclasses.replace(config(own_broker.bootstrap_servers), probe_interval_s=3600)
    relay = Relay(pg_store, cfg)
    async with running(relay):
        await append_many(pg_store, 300)
        await wait_for(lambda: relay.stats.position == 300)
        own_broker.stop(kill=True)
        own_broker.start()
        await asyncio.sleep(1.0)  # idle meanwhile: nothing to publish, nothing failed
        await append_many(pg_store, 200)
        await wait_for(lambda: relay.stats.position == 500, timeout=60)
    assert relay.stats.republished_from_zero == 1
    messages = await read_topic(own_broker.bootstrap_servers, cfg.topic, PARTITIONS, until=500)
    assert_complete_and_ordered(messages, 500)


async def test_fresh_empty_broker_is_refilled_from_position_zero(
    pg_store: PostgresEventStore, kafka_bootstrap: str, own_broker: EmbeddedKafka
) -> None:
    topic = f"case.events.{uuid.uuid4().hex[:8]}"
    await append_many(pg_store, 300)
    first = Relay(pg_store, config(kafka_bootstrap, topic))
    async with running(first):
        await wait_for(lambda: first.stats.position == 300)
    second = Relay(pg_store, config(own_broker.bootstrap_servers, topic))  # a new, empty broker
    async with running(second):
        await wait_for(lambda: second.stats.position == 300 and second.stats.republished_from_zero)
    messages = await read_topic(own_broker.bootstrap_servers, topic, PARTITIONS, until=300)
    assert_complete_and_ordered(messages, 300)


async def test_standby_takes_over_when_the_leader_dies(
    database: Db, pg_store: PostgresEventStore, kafka_bootstrap: str, admin_pool: asyncpg.Pool
) -> None:
    topic = f"case.events.{uuid.uuid4().hex[:8]}"
    other_pool = await create_pool(database.service_dsn, min_size=1, max_size=4)
    other_store = PostgresEventStore(other_pool)
    relays = [Relay(pg_store, config(kafka_bootstrap, topic)),
              Relay(other_store, config(kafka_bootstrap, topic))]
    stops = [asyncio.Event(), asyncio.Event()]
    tasks = [asyncio.create_task(r.run(s)) for r, s in zip(relays, stops, strict=True)]
    try:
        await append_many(pg_store, 200)
        await wait_for(lambda: any(r.stats.position == 200 for r in relays))
        leader = next(i for i, r in enumerate(relays) if r.is_leader)
        standby = 1 - leader
        assert not relays[standby].is_leader
        tasks[leader].cancel()  # the leader's process dies ...
        await admin_pool.execute(  # ... and with it its database sessions
            "SELECT pg_terminate_backend(pid) FROM pg_locks"
            " WHERE locktype = 'advisory' AND objid = $1 AND granted", 0x595A524C)
        await append_many(pg_store, 200)
        await wait_for(lambda: relays[standby].is_leader and relays[standby].stats.position == 400)
    finally:
        for s in stops:
            s.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        await other_store.close()
        await other_pool.close()
    messages = await read_topic(kafka_bootstrap, topic, PARTITIONS, until=400)
    assert_complete_and_ordered(messages, 400)
