"""Intake's Kafka ingress on real PostgreSQL and the broker: 1,000 submissions with 10 %
malformed → exactly 900 cases and 100 rejections with reasons, through a consumer restart that
redelivers everything; duplicates and results; and no personal data in plain form anywhere
intake writes (events, its tables, intake.rejected, case.events as relayed, the logs)."""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import json
import logging
import uuid
from collections.abc import AsyncIterator, Sequence

import asyncpg
import httpx
import pytest

from services.intake.agents import SubmissionAgent
from services.intake.bootstrap import IntakeService, bootstrap, build_app, running_worker
from services.intake.domain.ids import case_id, visit_id
from services.intake.messages import RawMessage
from shared.eventstore.postgres import PostgresEventStore
from shared.kafka import ensure_topics
from shared.reference import Reference
from shared.relay import Relay, RelayConfig
from tests.conftest import Db
from tests.integration.intake.kafka_support import (
    MALFORMED_KINDS,
    produce,
    signed,
    wait_until,
    workload,
)
from tests.integration.intake.support import SETTINGS, Clock, leaked
from tests.kafka_helpers import read_topic
from tests.unit.intake.people import synthetic_person

PARTITIONS = 3
EXPECTED_CODE = {"not_json": "not_json", "bad_id": "invalid", "unknown_service":
                 "unknown_service", "bad_signature": "bad_signature", "oversized": "oversized"}
HANDLED = "SELECT count(*) FROM intake_messages"


@pytest.fixture
async def service(database: Db, ref: Reference) -> AsyncIterator[IntakeService]:
    svc = await bootstrap(SETTINGS, database.service_dsn, ref=ref, clock=Clock())
    yield svc
    await svc.close()


@pytest.fixture
async def topics(kafka_bootstrap: str) -> tuple[str, str]:
    run = uuid.uuid4().hex[:8]
    names = (f"intake.submissions.{run}", f"intake.rejected.{run}")
    await ensure_topics(kafka_bootstrap, dict.fromkeys(names, PARTITIONS))
    return names


def worker(service: IntakeService, bootstrap: str, topics: tuple[str, str],
           group: str) -> contextlib.AbstractAsyncContextManager[SubmissionAgent]:
    return running_worker(service, bootstrap, submissions_topic=topics[0],
                          rejected_topic=topics[1], partitions=PARTITIONS, group=group)


async def test_a_thousand_submissions_survive_a_restart_exactly_once(
    service: IntakeService, kafka_bootstrap: str, topics: tuple[str, str],
    pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    messages = workload(service.sources, 1000, malformed_every=10)
    assert collections.Counter(m.malformed for m in messages)[None] == 900
    await produce(kafka_bootstrap, topics[0], messages)
    async with worker(service, kafka_bootstrap, topics, "intake-a") as first:
        stalled = stall_after(first, handled=300)  # the next batch hangs, unacked: "crash"
        await asyncio.wait_for(stalled.wait(), 30)
    handled_before_restart = await pool.fetchval(HANDLED)
    assert 300 <= handled_before_restart < 1000
    # restarted without committed offsets: every message is delivered again
    async with worker(service, kafka_bootstrap, topics, "intake-b") as second:
        await wait_until(pool, HANDLED, lambda n: n == 1000)
        await wait_until(pool, "SELECT count(*) FROM intake_messages WHERE outcome = 'rejected'"
                         " AND published_at IS NULL", lambda n: n == 0)
        # batches run two at a time: the last new message may be recorded while a batch of old
        # ones is still looking its outcomes up, so give the count (bounded) time to settle
        deadline = asyncio.get_running_loop().time() + 30
        while (second.ingress.stats.redelivered < handled_before_restart  # noqa: ASYNC110
               and asyncio.get_running_loop().time() < deadline):
            await asyncio.sleep(0.05)  # (the counters have no events)
    assert second.ingress.stats.redelivered >= handled_before_restart

    outcomes = {r["outcome"]: r["count"] for r in await pool.fetch(
        "SELECT outcome, count(*) FROM intake_messages GROUP BY outcome")}
    assert outcomes == {"accepted": 900, "rejected": 100}
    visits = await pool.fetchval("SELECT count(DISTINCT data->>'visit_id') FROM events"
                                 " WHERE type = 'CaseSubmitted'")
    submitted = await pool.fetchval("SELECT count(*) FROM events WHERE type = 'CaseSubmitted'")
    streams = await pool.fetchval("SELECT count(DISTINCT stream_id) FROM events")
    assert visits == submitted == streams == 900  # one service per submission: one case
    rejected = await read_topic(kafka_bootstrap, topics[1], PARTITIONS, until=100, timeout=30)
    assert len(rejected) == 100
    again = await read_topic(kafka_bootstrap, topics[1], PARTITIONS, until=101, timeout=2)
    assert len(again) <= 100  # nothing was published twice
    assert len({(m.value["partition"], m.value["offset"]) for m in rejected}) == 100
    by_code = collections.Counter(m.value["reasons"][0]["code"] for m in rejected)
    assert by_code == {EXPECTED_CODE[k]: 20 for k in MALFORMED_KINDS}
    assert all(m.value["source"] in ("pension", "employment") and m.value["original"]["sha256"]
               for m in rejected)

    people = [m.person for m in messages]
    texts = [r["t"] for r in await pool.fetch("SELECT data::text || metadata::text AS t"
                                              " FROM events")]
    texts += [r["t"] for r in await pool.fetch(
        "SELECT coalesce(m.rejection::text, '') || m.reasons::text AS t FROM intake_messages m"
        " UNION ALL SELECT receipt::text FROM intake_requests")]
    texts += [json.dumps(m.value, ensure_ascii=False) for m in rejected]
    texts += [base64.b64decode(m.value["original"]["data"]).decode("latin-1") for m in rejected]
    texts += await relayed(service.store, kafka_bootstrap)
    texts += [caplog.text]
    assert "intake.visit_opened" in caplog.text and "intake.submission_rejected" in caplog.text
    assert leaked(texts, people) == set()


def stall_after(agent: SubmissionAgent, handled: int) -> asyncio.Event:
    """Let the agent handle batches until ``handled`` messages were handed over, then hang
    inside each later batch (never acked): once the earlier batches are done (the agent has
    up to ``depth`` batches in flight), set the returned event."""
    ingress, real = agent.ingress, agent.ingress.handle
    stalled = asyncio.Event()
    handed = 0

    async def handle(messages: Sequence[RawMessage]) -> None:
        nonlocal handed
        if handed >= handled:
            while ingress.stats.accepted + ingress.stats.rejected < handed:  # noqa: ASYNC110
                await asyncio.sleep(0.01)  # (the counters have no events)
            stalled.set()
            await asyncio.Event().wait()
        handed += len(messages)
        await real(messages)

    ingress.handle = handle  # type: ignore[method-assign]
    return stalled


async def relayed(store: PostgresEventStore, bootstrap: str) -> list[str]:
    """Relay the log to a case.events topic of this test and read it back as text."""
    topic = f"case.events.{uuid.uuid4().hex[:8]}"
    await ensure_topics(bootstrap, {topic: PARTITIONS})
    head = (await store.head()).position
    relay = Relay(store, RelayConfig(bootstrap_servers=bootstrap, topic=topic,
                                     partitions=PARTITIONS, poll_interval_s=0.05,
                                     probe_interval_s=1.0, request_timeout_ms=3000))
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    try:
        read = await read_topic(bootstrap, topic, PARTITIONS, until=head, timeout=30)
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)
    assert len(read) == head
    return [json.dumps(m.value, ensure_ascii=False) for m in read]


async def test_duplicates_key_reuse_and_results_from_other_systems(
    service: IntakeService, kafka_bootstrap: str, topics: tuple[str, str], pool: asyncpg.Pool,
    ref: Reference,
) -> None:
    import random

    person = synthetic_person(random.Random(99))
    visit: dict[str, object] = {
        "kind": "visit", "idempotency_key": "pension-0001", "station": "530102001001",
        "applicant": person.as_applicant(),
             "services": [{"service_code": "pension_qualification_certification",
                           "documents": []}]}
    case = case_id(visit_id("source:pension", "pension-0001"),
                   "pension_qualification_certification")
    result: dict[str, object] = {
        "kind": "result", "idempotency_key": "result-0001", "case_id": str(case),
        "result_type": "qualification_verified", "reference": "PEN-2026-000123",
              "summary": "contribution record complete"}
    unknown = {**result, "idempotency_key": "result-0002", "case_id": str(uuid.uuid4())}
    other = {**visit, "station": "530102001002"}

    def body(payload: dict[str, object]) -> bytes:
        return json.dumps(payload, ensure_ascii=False).encode()

    batch = [signed(service.sources, "pension", "pension-0001", body(p))
             for p in (visit, visit, other, result, unknown)]
    batch.append(signed(service.sources, "medical_insurance", "pension-0001", body(visit)))
    await produce(kafka_bootstrap, topics[0], batch)  # one key: one partition, in order
    async with worker(service, kafka_bootstrap, topics, "intake-c"):
        await wait_until(pool, HANDLED, lambda n: n == len(batch))
    rows = await pool.fetch('SELECT outcome, reasons::text, case_ids FROM intake_messages'
                            ' ORDER BY "offset"')
    assert [r["outcome"] for r in rows] == ["accepted", "duplicate", "rejected", "accepted",
                                           "rejected", "rejected"]
    assert rows[1]["case_ids"] == [case]
    assert "idempotency_key_reused" in rows[2]["reasons"]
    assert "CaseDoesNotExist" in rows[4]["reasons"] and "not_allowed" in rows[5]["reasons"]
    stream = await service.store.read_stream(f"case-{case}")
    types = [e.type for e in stream]
    assert types[:3] == ["CaseSubmitted", "CaseAccepted", "SlaTimerScheduled"]
    assert types[-1] == "ExternalResultRecorded"
    assert stream[1].data["owner"] == ref.staff.duty_clerk("530102001001").user_id
    assert stream[0].metadata["source_system"] == "pension"
    assert stream[0].data["actor"]["role"] == "system"


async def test_a_broker_that_lost_its_log_reuses_offsets_and_no_new_message_is_skipped(
    service: IntakeService, kafka_bootstrap: str, topics: tuple[str, str], pool: asyncpg.Pool,
) -> None:
    """A restarted memory broker (or a topic made again) hands out offsets from 0 again: new
    messages at offsets already recorded are handled, not skipped as redeliveries."""
    from aiokafka.admin import AIOKafkaAdminClient

    from shared.kafka import recreate_topic

    before = workload(service.sources, 30, malformed_every=None, seed=1)
    await produce(kafka_bootstrap, topics[0], before)
    async with worker(service, kafka_bootstrap, topics, "intake-lost-1"):
        await wait_until(pool, HANDLED, lambda n: n == len(before))
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        await recreate_topic(admin, topics[0], PARTITIONS)  # the log is gone; offsets restart
    finally:
        await admin.close()
    after = workload(service.sources, 30, malformed_every=10, seed=2)  # other messages
    await produce(kafka_bootstrap, topics[0], after)
    async with worker(service, kafka_bootstrap, topics, "intake-lost-2") as second:
        await wait_until(pool, HANDLED, lambda n: n == len(before) + len(after))
        reused = second.ingress.stats.offsets_reused
        await wait_until(pool, "SELECT 1", lambda _: second.ingress.stats.published == 3)
        app = build_app(service)  # and an operator sees it on /metrics
        app.state.submission_agent = second
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://intake") as http:
            text = (await http.get("/metrics")).text
        assert f"yizhan_intake_messages_offsets_reused_total {reused}" in text
        assert "yizhan_intake_messages_rejected_total 3" in text
    outcomes = dict(await pool.fetch(
        "SELECT outcome, count(*) FROM intake_messages GROUP BY outcome"))
    assert outcomes == {"accepted": 30 + 27, "rejected": 3}
    twice = await pool.fetchval('SELECT count(*) FROM (SELECT 1 FROM intake_messages'
                                ' GROUP BY partition, "offset" HAVING count(*) = 2) AS t')
    assert reused == twice > 0  # each offset held a message before, now another one too
    # and the new log's messages, redelivered, are still handled once
    async with worker(service, kafka_bootstrap, topics, "intake-lost-3") as third:
        stats = third.ingress.stats

        def settled(_: object) -> bool:
            return stats.redelivered + stats.accepted + stats.rejected >= len(after)

        await wait_until(pool, "SELECT 1", settled, timeout=30)
        assert (stats.redelivered, stats.accepted, stats.rejected) == (len(after), 0, 0)
    assert await pool.fetchval(HANDLED) == len(before) + len(after)
