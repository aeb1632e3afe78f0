"""The SLA clock end to end: relay → Kafka → Faust agent keeps due times → the timer fires a
breach exactly once on a controlled clock."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta

import httpx
import pytest

from services.cases.agents import SLA_CONSUMER, build_faust
from services.cases.bootstrap import CasesService, bootstrap, build_app
from shared.kafka import ensure_topics
from shared.relay import Relay, RelayConfig
from shared.settings import Settings
from shared.streaming import running_app
from tests.conftest import Db
from tests.integration.cases.test_cases_api import Clock
from tests.integration.cases.test_sla_clock import accepted_case, events_of


@pytest.fixture
async def service(database: Db, kafka_bootstrap: str) -> AsyncIterator[CasesService]:
    topic = f"case.events.{uuid.uuid4().hex[:8]}"
    settings = Settings(topic_case_events=topic, sla_tick_s=0.2)  # type: ignore[call-arg]
    await ensure_topics(kafka_bootstrap, {topic: settings.topic_partitions})
    svc = await bootstrap(settings, database.service_dsn, clock=Clock())
    yield svc
    await svc.close()


async def until(condition: object, timeout: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await condition():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.1)


async def test_breach_fires_once_through_kafka_and_faust(
    service: CasesService, kafka_bootstrap: str
) -> None:
    assert service.pool is not None
    pool = service.pool
    case_id = await accepted_case(service)
    controlled = {"now": service.clock()}
    relay = Relay(service.store, RelayConfig(  # type: ignore[arg-type]
        bootstrap_servers=kafka_bootstrap, topic=service.settings.topic_case_events,
        partitions=service.settings.topic_partitions, poll_interval_s=0.1))
    stop = asyncio.Event()
    relaying = asyncio.create_task(relay.run(stop))
    app, agent = build_faust(service, kafka_bootstrap, clock=lambda: controlled["now"],
                             app_id=f"yizhan-cases-{uuid.uuid4().hex[:6]}")
    try:
        async with running_app(app):
            async def scheduled() -> bool:
                return bool(await pool.fetchval(
                    "SELECT count(*) FROM sla_due WHERE case_id = $1", case_id))

            await until(scheduled)
            due: datetime = await pool.fetchval(
                "SELECT due_at FROM sla_due WHERE case_id = $1", case_id)
            controlled["now"] = due + timedelta(minutes=5)  # time passes: the case is overdue

            async def breached_and_recorded() -> bool:
                return bool(await pool.fetchval(
                    "SELECT breached FROM sla_due WHERE case_id = $1", case_id))

            await until(breached_and_recorded)
            await asyncio.sleep(1.0)  # several more ticks of the timer
    finally:
        stop.set()
        await relaying
    types = await events_of(service, case_id)
    assert types.count("SlaBreached") == 1 and types.count("SlaWarningRaised") == 1
    assert agent.stats.parked == 0
    position = await pool.fetchval("SELECT max(position) FROM consumer_positions"
                                   " WHERE consumer = $1", SLA_CONSUMER)
    assert position == (await service.store.head()).position
    # what an operator sees of it: the clock ticking, what it fired, nothing left unfired
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=build_app(service)),
                                 base_url="http://cases") as http:
        text = (await http.get("/metrics")).text
    metric = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
              if line and not line.startswith("#")}
    assert metric["yizhan_cases_sla_breaches_fired_total"] == 1
    assert metric["yizhan_cases_sla_warnings_fired_total"] == 1
    assert metric["yizhan_cases_sla_ticks_total"] >= 3
    assert metric["yizhan_cases_sla_tick_failures_total"] == 0
    assert metric["yizhan_cases_sla_timers_unfired"] == 0
    assert metric["yizhan_cases_sla_events_applied_total"] == agent.stats.applied > 0
    assert max(v for k, v in metric.items()
               if k.startswith("yizhan_cases_sla_consumer_position{")) == position
