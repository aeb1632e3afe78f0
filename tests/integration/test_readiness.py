"""``/readyz`` beyond the database: the broker answers and holds the service's topics, the
agent's consumer has joined its group and is not stuck on a failing batch, and a database that
does not answer in time is not ready — against real PostgreSQL and the Kafka-protocol broker."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable

import asyncpg
import pytest
from fastapi.testclient import TestClient

from shared.consumer import IdempotentConsumer
from shared.contracts.envelope import RecordedEvent
from shared.eventstore.postgres import PostgresEventStore
from shared.kafka import BrokerProbe, ensure_topics
from shared.runtime import EmbeddedKafka, free_port
from shared.service import create_app, database_ready
from shared.streaming import consumer_ready, idempotent_agent, make_app, running_app
from tests.conftest import Db
from tests.integration.test_streaming import (
    CONSUMER,
    PARTITIONS,
    append_many,
    relaying,
    table,  # noqa: F401 - the fixture
    wait_for,
    write_rows,
)


async def answer_becomes(check: Callable[[], Awaitable[str | None]],
                         accept: Callable[[str | None], bool], what: str,
                         timeout: float = 60.0) -> str | None:
    deadline = time.monotonic() + timeout
    while not accept(got := await check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"readiness never {what}; last answer {got!r}")
        await asyncio.sleep(0.1)
    return got


async def test_the_broker_probe_counts_a_missing_topic_and_keeps_its_answer_for_a_while(
    kafka_bootstrap: str,
) -> None:
    topic = f"ready.{uuid.uuid4().hex[:8]}"
    absent = f"absent.{uuid.uuid4().hex[:8]}"
    await ensure_topics(kafka_bootstrap, {topic: 1})
    assert await BrokerProbe(kafka_bootstrap, [topic])() is None
    probe = BrokerProbe(kafka_bootstrap, [topic, absent], every_s=3600)
    # /readyz needs no login: the topic's name is in the log, not in the answer
    app = create_app("t", [], state={}, readiness=[probe])
    answer = TestClient(app).get("/readyz")
    assert answer.status_code == 503
    assert answer.json()["detail"] == "broker: 1 of the service's 2 topics missing"
    assert absent not in answer.text
    await ensure_topics(kafka_bootstrap, {absent: 1})
    assert await probe() == "broker: 1 of the service's 2 topics missing"  # not asked again yet
    probe.every_s = 0
    assert await probe() is None  # asked again: the topic is there now


async def test_the_broker_probe_says_unreachable_and_not_where() -> None:
    nobody = f"127.0.0.1:{free_port()}"
    probe = BrokerProbe(nobody, ["case.events"], timeout_s=1.0)
    app = create_app("t", [], state={}, readiness=[probe])
    answer = TestClient(app).get("/readyz")
    assert answer.status_code == 503
    assert answer.json()["detail"] == "broker unreachable"
    assert nobody not in answer.text


@pytest.mark.slow  # starts and kills a broker of its own
async def test_a_broker_that_goes_away_makes_the_service_unready_until_it_is_back(
    own_broker: EmbeddedKafka,
) -> None:
    probe = BrokerProbe(own_broker.bootstrap_servers, every_s=0, timeout_s=1.0)
    assert await probe() is None
    own_broker.stop()
    assert await probe() == "broker unreachable"
    own_broker.start()
    await answer_becomes(probe, lambda got: got is None, "came back")


async def test_a_database_that_does_not_answer_in_time_is_not_ready(
    database: Db,
) -> None:
    held = await asyncpg.create_pool(database.service_dsn, min_size=1, max_size=1)
    try:
        check = database_ready(held, timeout_s=0.5)
        assert await check() is None
        async with held.acquire():  # the one connection taken: no query can start
            assert await check() == "database: no answer within 0.5 s"
        assert await check() is None
    finally:
        await held.close()


@pytest.mark.usefixtures("table")
async def test_an_agent_is_ready_once_in_its_group_and_not_while_a_batch_fails_too_long(
    pg_store: PostgresEventStore, pool: asyncpg.Pool, kafka_bootstrap: str,
) -> None:
    topic = f"case.events.{uuid.uuid4().hex[:8]}"
    await ensure_topics(kafka_bootstrap, {topic: PARTITIONS})
    failing = False

    async def apply(conn: asyncpg.Connection, events: list[RecordedEvent]) -> None:
        await write_rows(conn, events)
        if failing:
            raise RuntimeError("the database went away mid-batch")

    app = make_app(f"test-{uuid.uuid4().hex[:8]}", bootstrap_servers=kafka_bootstrap,
                   partitions=PARTITIONS)
    agent = idempotent_agent(app, topic=topic, consumer=IdempotentConsumer(pool, CONSUMER),
                             apply=apply, max_wait_s=0.05, retry_initial_s=0.05,
                             retry_max_s=0.2)
    ready = consumer_ready(app, "test agent", lambda: agent.stats.retrying_since,
                           stuck_after_s=1.0)
    assert await ready() == "test agent: joining its consumer group"  # not started yet
    await append_many(pg_store, 50)
    async with relaying(pg_store, kafka_bootstrap, topic) as relay, \
            running_app(app, stop_timeout=20):
        await answer_becomes(ready, lambda got: got is None, "became ready")
        await wait_for(lambda: agent.stats.applied == 50, what="the first events applied")

        failing = True
        await append_many(pg_store, 10)
        stuck = await answer_becomes(ready, lambda got: got is not None, "reported the stuck batch")
        assert stuck is not None and stuck.startswith("test agent: retrying a failing batch for ")
        assert agent.stats.retrying and agent.stats.apply_errors >= 2

        failing = False
        await answer_becomes(ready, lambda got: got is None, "recovered")
        await wait_for(lambda: agent.stats.applied == 60, what="the held batch applied")
        assert agent.stats.retrying_since is None
        assert relay.stats.position == 60
    assert await ready() == "test agent: stopped"  # a stopping service leaves its balancer
