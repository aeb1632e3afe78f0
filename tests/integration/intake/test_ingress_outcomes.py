"""The Kafka ingress's outcomes on real PostgreSQL, batch by batch (``KafkaIngress.handle``
driven directly, rejections caught by a recording publisher): what another system sees for a
repeated idempotency key, whether the repeat comes in the same batch or a later one."""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import asyncpg
import pytest

from services.intake.bootstrap import IntakeService, bootstrap, build_ingress
from services.intake.domain.ids import case_id, visit_id
from services.intake.handlers import PENDING, Remembered
from services.intake.ingress import KafkaIngress
from services.intake.messages import SIGNATURE_HEADER, SOURCE_HEADER, RawMessage
from shared.reference import Reference
from tests.conftest import Db
from tests.integration.intake.support import SETTINGS, Clock
from tests.unit.intake.people import synthetic_person

TOPIC = "intake.submissions"
SERVICE = "pension_qualification_certification"


class Recorder:
    """Stands in for the producer to ``intake.rejected``: keeps what it was given."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def publish(self, messages: Sequence[tuple[bytes, bytes]]) -> None:
        self.sent += [json.loads(value) for _, value in messages]


@pytest.fixture
async def service(database: Db, ref: Reference) -> AsyncIterator[IntakeService]:
    svc = await bootstrap(SETTINGS, database.service_dsn, ref=ref, clock=Clock())
    yield svc
    await svc.close()


@pytest.fixture
def rejected() -> Recorder:
    return Recorder()


@pytest.fixture
def ingress(service: IntakeService, rejected: Recorder) -> KafkaIngress:
    return build_ingress(service, rejected)  # type: ignore[arg-type]


class Topic:
    """Messages signed by a source, at the next offset of one partition."""

    def __init__(self, service: IntakeService) -> None:
        self.service = service
        self.offset = 0

    def message(self, payload: dict[str, Any], source: str = "pension") -> RawMessage:
        system = self.service.sources.get(source)
        assert system is not None
        body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
        self.offset += 1
        return RawMessage(TOPIC, 0, self.offset, body, {
            SOURCE_HEADER: source.encode(),
            SIGNATURE_HEADER: system.signature(body).encode()})


def visit(key: str, station: str = "530102001001", seed: int = 7) -> dict[str, Any]:
    return {"kind": "visit", "idempotency_key": key, "station": station,
            "applicant": synthetic_person(random.Random(seed)).as_applicant(),
            "services": [{"service_code": SERVICE, "documents": []}]}


def result(key: str, case: uuid.UUID, reference: str = "PEN-2026-000123") -> dict[str, Any]:
    return {"kind": "result", "idempotency_key": key, "case_id": str(case),
            "result_type": "qualification_verified", "reference": reference}


async def outcomes(pool: asyncpg.Pool) -> list[tuple[str, str]]:
    rows = await pool.fetch('SELECT outcome, reasons FROM intake_messages ORDER BY "offset"')
    return [(r["outcome"], ",".join(x["code"] for x in json.loads(r["reasons"])))
            for r in rows]


def opened_case(key: str) -> uuid.UUID:
    return case_id(visit_id("source:pension", key), SERVICE)


async def test_a_result_key_reused_for_another_case_is_rejected_not_retried_for_ever(
    service: IntakeService, ingress: KafkaIngress, pool: asyncpg.Pool, rejected: Recorder,
) -> None:
    # Before: the second result's command id (from the key) had already been used on the
    # first case, the store refused the append with EventIdReused, which escaped the batch:
    # the batch failed and was retried for ever, a poison message blocking its partition.
    topic = Topic(service)
    await ingress.handle([topic.message(visit("v-1", seed=1)),
                          topic.message(visit("v-2", seed=2))])
    await ingress.handle([topic.message(result("r-1", opened_case("v-1")))])
    await ingress.handle([topic.message(result("r-1", opened_case("v-2")))])
    assert await outcomes(pool) == [("accepted", ""), ("accepted", ""), ("accepted", ""),
                                    ("rejected", "idempotency_key_reused")]
    assert [r["reasons"][0]["field"] for r in rejected.sent] == ["idempotency_key"]


async def test_a_result_key_reused_with_another_payload_is_rejected_in_a_later_batch(
    service: IntakeService, ingress: KafkaIngress, pool: asyncpg.Pool, rejected: Recorder,
) -> None:
    # Before: in the same batch the second result was rejected (idempotency_key_reused), in a
    # later one it was "accepted" while nothing of it was recorded: its content silently lost.
    topic = Topic(service)
    case = opened_case("v-1")
    await ingress.handle([topic.message(visit("v-1"))])
    await ingress.handle([topic.message(result("r-1", case))])
    await ingress.handle([topic.message(result("r-1", case, reference="PEN-2026-999999"))])
    await ingress.handle([topic.message(result("r-1", case))])  # the same again: a duplicate
    assert await outcomes(pool) == [("accepted", ""), ("accepted", ""),
                                    ("rejected", "idempotency_key_reused"), ("duplicate", "")]
    assert len(rejected.sent) == 1
    rows = await pool.fetch("SELECT case_ids FROM intake_messages WHERE outcome = 'duplicate'")
    assert [r["case_ids"] for r in rows] == [[case]]
    stream = await service.store.read_stream(f"case-{case}")
    recorded = [e for e in stream if e.type == "ExternalResultRecorded"]
    assert [e.data["reference"] for e in recorded] == ["PEN-2026-000123"]


async def test_a_key_reused_after_a_crash_before_the_outcome_was_recorded_is_rejected(
    service: IntakeService, ingress: KafkaIngress, pool: asyncpg.Pool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A crash after the result was appended but before its outcome (and key) were recorded:
    # the key is not remembered, only its command id in the log. Another result sent with it
    # for another case must still be rejected, not fail the batch for ever.
    topic = Topic(service)
    await ingress.handle([topic.message(visit("v-1", seed=1)),
                          topic.message(visit("v-2", seed=2))])
    real = ingress.outcomes.record

    async def crash(*_: object) -> None:
        raise ConnectionError("the database went away")

    monkeypatch.setattr(ingress.outcomes, "record", crash)
    with pytest.raises(ConnectionError):
        await ingress.handle([topic.message(result("r-1", opened_case("v-1")))])
    monkeypatch.setattr(ingress.outcomes, "record", real)
    await ingress.handle([topic.message(result("r-1", opened_case("v-2")))])
    assert await outcomes(pool) == [("accepted", ""), ("accepted", ""),
                                    ("rejected", "idempotency_key_reused")]


async def test_a_corrected_resend_in_the_same_batch_as_its_refused_first_is_accepted(
    service: IntakeService, ingress: KafkaIngress, pool: asyncpg.Pool,
) -> None:
    # A source sends a visit to a station that does not exist, then the corrected visit with
    # the same key (its application number). Before: when both came in one batch the second
    # was refused as idempotency_key_reused (the first, refused, had opened nothing and kept
    # no key); in two batches it was accepted.
    topic = Topic(service)
    await ingress.handle([topic.message(visit("v-1", station="530102999999")),
                          topic.message(visit("v-1"))])
    assert await outcomes(pool) == [("rejected", "unknown_station"), ("accepted", "")]
    rows = await pool.fetch("SELECT case_ids FROM intake_messages WHERE outcome = 'accepted'")
    assert [r["case_ids"] for r in rows] == [[opened_case("v-1")]]


async def test_a_refused_message_repeated_in_the_same_batch_is_rejected_each_time(
    service: IntakeService, ingress: KafkaIngress, pool: asyncpg.Pool, rejected: Recorder,
) -> None:
    # A producer without idempotence sends a message twice (a retry after a lost ack). Before:
    # in one batch the copy was recorded as a 'duplicate' of the refused first and never
    # reached intake.rejected; in two batches both were rejected with their reasons.
    topic = Topic(service)
    bad = visit("v-1", station="530102999999")
    await ingress.handle([topic.message(bad), topic.message(bad)])
    assert await outcomes(pool) == [("rejected", "unknown_station")] * 2
    assert [(r["offset"], r["reasons"][0]["field"]) for r in rejected.sent] == [
        (1, "station"), (2, "station")]


async def dead_letter_of(service: IntakeService, kafka_bootstrap: str,
                         message: RawMessage) -> Any:
    """Handle ``message`` with the real rejection publisher on a topic of its own (the real
    broker refuses what is too large) and read back the one dead letter it published."""
    from services.intake.agents import KafkaRejectionPublisher
    from shared.kafka import ensure_topics
    from tests.kafka_helpers import read_topic

    dead = f"intake.rejected.{uuid.uuid4().hex[:8]}"
    await ensure_topics(kafka_bootstrap, {dead: 1})
    publisher = KafkaRejectionPublisher(kafka_bootstrap, dead)
    await publisher.start()
    try:
        await build_ingress(service, publisher).handle([message])
    finally:
        await publisher.stop()
    (sent,) = await read_topic(kafka_bootstrap, dead, 1, until=1, timeout=10)
    return sent


async def test_a_message_with_thousands_of_problems_still_reaches_intake_rejected(
    service: IntakeService, kafka_bootstrap: str,
) -> None:
    # Every problem was a reason: a 60 KB visit of 20,000 empty services (or a result with
    # thousands of bad detail keys) made a rejection of about 2 MB, which the producer refused
    # (MessageSizeTooLargeError). The batch failed and was retried for ever, blocking its
    # partition, and the message never reached intake.rejected.
    payload = {**visit("v-1"), "services": [{}] * 20_000}
    message = Topic(service).message(payload)
    assert message.value is not None and len(message.value) < 64 * 1024
    sent = await dead_letter_of(service, kafka_bootstrap, message)
    reasons = sent.value["reasons"]
    assert 1 < len(reasons) <= 101
    assert reasons[0]["field"] == "visit.services[0].service_code"
    assert reasons[-1]["field"] == "body" and "more" in reasons[-1]["message"]


async def test_a_huge_source_header_still_reaches_intake_rejected(
    service: IntakeService, kafka_bootstrap: str,
) -> None:
    # The source header, unregistered, was echoed whole into the rejection: 200 KB of control
    # characters (each escaped as \u0001 in JSON) made a 1.2 MB rejection the producer refused;
    # the batch was retried for ever and the message never reached intake.rejected.
    body = json.dumps(visit("v-1")).encode()
    sent = await dead_letter_of(service, kafka_bootstrap, RawMessage(TOPIC, 0, 1, body, {
        SOURCE_HEADER: b"pension" + b"\x01" * 200_000, SIGNATURE_HEADER: b"sha256=00"}))
    assert [r["code"] for r in sent.value["reasons"]] == ["unknown_source"]
    assert sent.value["source"].startswith("pension") and len(sent.value["source"]) <= 41


async def test_a_source_acting_outside_its_unit_is_told_which_field_of_its_message(
    service: IntakeService, rejected: Recorder, pool: asyncpg.Pool,
) -> None:
    # A county's system opening a case at another county's station, or attaching a result to
    # a case there, was refused naming "actor.unit": a field of the case domain's command,
    # not of the message (the sender can change the station or the case, not an actor).
    from services.intake.sources import SourceRegistry, SourceSystem

    pension = service.sources.get("pension")
    assert pension is not None
    county = SourceSystem(id="county_pension", name="county pension (synthetic)",
                          unit="530103", may=("visit", "result"), secret="s" * 32)
    service.sources = SourceRegistry([pension, county])
    ingress = build_ingress(service, rejected)  # type: ignore[arg-type]
    topic = Topic(service)
    await ingress.handle([topic.message(visit("v-1"))])  # pension: the city, any station
    await ingress.handle([topic.message(visit("c-1", seed=2), source="county_pension"),
                          topic.message(result("c-2", opened_case("v-1")),
                                        source="county_pension")])
    assert [(r["reasons"][0]["code"], r["reasons"][0]["field"]) for r in rejected.sent] == [
        ("SystemsActOnlyWithinTheirUnit", "station"),
        ("SystemsActOnlyWithinTheirUnit", "case_id")]


async def test_a_visit_redelivered_after_a_crash_is_accepted_and_a_changed_one_rejected(
    service: IntakeService, ingress: KafkaIngress, pool: asyncpg.Pool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A crash after the visit was appended, before its outcome and key were recorded: the
    # message comes again and is accepted (its events are already in the log); the key sent
    # again with a changed payload is rejected (before: accepted, the change dropped).
    topic = Topic(service)
    first = topic.message(visit("v-1"))
    real = ingress.outcomes.record

    async def crash(*_: object) -> None:
        raise ConnectionError("the database went away")

    monkeypatch.setattr(ingress.outcomes, "record", crash)
    with pytest.raises(ConnectionError):
        await ingress.handle([first])
    monkeypatch.setattr(ingress.outcomes, "record", real)
    changed = visit("v-1")
    changed["applicant"]["address"] += "（更正）"
    await ingress.handle([topic.message(changed)])
    await ingress.handle([first])
    assert await outcomes(pool) == [("accepted", ""), ("rejected", "idempotency_key_reused")]
    assert await pool.fetchval("SELECT count(*) FROM events WHERE type = 'CaseSubmitted'") == 1


async def test_a_visit_redelivered_after_a_restart_with_another_duty_clerk_is_accepted(
    service: IntakeService, ingress: KafkaIngress, pool: asyncpg.Pool,
    monkeypatch: pytest.MonkeyPatch, ref: Reference,
) -> None:
    # The owner of a source's visit is the station's duty clerk of the day, not part of the
    # message: a redelivery after a restart with another staff directory is the same visit.
    from shared.contracts.cases import Actor
    from shared.reference import Role

    topic = Topic(service)
    first = topic.message(visit("v-1"))
    real = ingress.outcomes.record

    async def crash(*_: object) -> None:
        raise ConnectionError("the database went away")

    monkeypatch.setattr(ingress.outcomes, "record", crash)
    with pytest.raises(ConnectionError):
        await ingress.handle([first])
    monkeypatch.setattr(ingress.outcomes, "record", real)
    other = Actor(user_id="clerk.530102001001.b", role=Role.STATION_CLERK, unit="530102001001")
    monkeypatch.setattr(service.handler, "_duty_clerk", lambda station: other)
    await ingress.handle([first])
    assert await outcomes(pool) == [("accepted", "")]


async def handled_while_the_broker_is_down(ingress: KafkaIngress, rejected: Recorder,
                                           monkeypatch: pytest.MonkeyPatch,
                                           message: RawMessage) -> None:
    """Handle ``message`` while publishing to intake.rejected fails: its outcome is recorded,
    the batch fails (nothing acked), and the publisher works again after."""
    real = rejected.publish

    async def down(_: object) -> None:
        raise ConnectionError("the broker went away")

    monkeypatch.setattr(rejected, "publish", down)
    with pytest.raises(ConnectionError):
        await ingress.handle([message])
    monkeypatch.setattr(rejected, "publish", real)


async def unpublished(pool: asyncpg.Pool) -> int:
    """Rejections recorded but not yet on intake.rejected."""
    return int(await pool.fetchval(
        "SELECT count(*) FROM intake_messages WHERE published_at IS NULL"))


async def test_a_rejection_recorded_before_the_broker_lost_its_log_is_still_published(
    service: IntakeService, ingress: KafkaIngress, pool: asyncpg.Pool, rejected: Recorder,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A rejection is recorded, then the publication fails (the whole stack stops: in the
    # embedded mode the memory broker goes with it). The broker comes back empty, so the
    # message is never delivered again; its offset is handed to a new message. Before: the
    # old rejection stayed unpublished for ever (a rejected message never on intake.rejected).
    first = Topic(service).message(visit("v-1", station="530102999999"))
    await handled_while_the_broker_is_down(ingress, rejected, monkeypatch, first)
    after = Topic(service).message(visit("v-2", station="530102999999", seed=2))
    assert after.where == first.where and after.digest != first.digest
    await ingress.handle([after])
    assert len(rejected.sent) == 2
    assert await unpublished(pool) == 0


async def test_a_rejection_whose_offset_never_returns_is_published_by_the_sweep(
    service: IntakeService, ingress: KafkaIngress, pool: asyncpg.Pool, rejected: Recorder,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # As above, but nothing ever takes the lost offset: only the sweep publishes it
    lost = Topic(service).message(visit("v-1", station="530102999999"))
    await handled_while_the_broker_is_down(ingress, rejected, monkeypatch, lost)
    assert await ingress.sweep(older_than_s=3600) == 0  # too young: its batch may yet retry
    assert rejected.sent == []

    assert await ingress.sweep(older_than_s=0) == 1
    assert [(r["partition"], r["offset"]) for r in rejected.sent] == [(0, lost.offset)]
    assert [x["code"] for x in rejected.sent[0]["reasons"]] == ["unknown_station"]
    assert await unpublished(pool) == 0
    assert await ingress.sweep(older_than_s=0) == 0  # published once
    assert ingress.stats.swept == 1 and len(rejected.sent) == 1


def a_visit_of(key: str, service_code: str, seed: int = 7) -> dict[str, Any]:
    payload = visit(key, seed=seed)
    payload["services"] = [{"service_code": service_code, "documents": []}]
    return payload


async def test_one_key_with_two_payloads_on_two_replicas_at_once_opens_one_visit(
    service: IntakeService, ingress: KafkaIngress, pool: asyncpg.Pool, rejected: Recorder,
) -> None:
    # Replica A reads a visit on partition 0 and is still opening it when replica B reads
    # another visit with the same key (other services) on partition 1. Each replica's Turns
    # only order its own batches. Before: both opened their cases (the ids follow from the
    # key and the service, so other services gave other cases), two visits for one key.
    other = build_ingress(service, rejected)  # type: ignore[arg-type]  # replica B
    first = Topic(service).message(a_visit_of("app-77", SERVICE))
    second = Topic(service).message(a_visit_of("app-77", "job_referral"))
    second = RawMessage(second.topic, 1, second.offset, second.value, second.headers)
    opening, go_on = asyncio.Event(), asyncio.Event()
    real = ingress._open_visits

    async def slow(visits: Sequence[Any]) -> Any:
        opening.set()
        await go_on.wait()  # A holds the key, has opened nothing yet
        return await real(visits)

    ingress._open_visits = slow  # type: ignore[method-assign]
    replica_a = asyncio.create_task(ingress.handle([first]))
    await asyncio.wait_for(opening.wait(), 10)
    await other.handle([second])
    go_on.set()
    await replica_a
    by_partition = await pool.fetch(
        "SELECT partition, outcome FROM intake_messages ORDER BY partition")
    assert [tuple(r) for r in by_partition] == [(0, "accepted"), (1, "rejected")]
    assert [(r["partition"], r["reasons"][0]["code"]) for r in rejected.sent] == [
        (1, "idempotency_key_reused")]
    streams = await pool.fetchval("SELECT count(DISTINCT stream_id) FROM events"
                                  " WHERE stream_id LIKE 'case-%'")
    assert streams == 1
    # the same payload again, on B: a duplicate of A's visit
    again = Topic(service).message(a_visit_of("app-77", SERVICE))
    await other.handle([RawMessage(again.topic, 2, again.offset, again.value, again.headers)])
    assert await pool.fetchval("SELECT outcome FROM intake_messages WHERE partition = 2") == (
        "duplicate")


async def test_a_visit_reserved_before_a_crash_opens_when_delivered_again(
    service: IntakeService, ingress: KafkaIngress, pool: asyncpg.Pool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The key is reserved, then the replica dies before the visit is opened: the message is
    # delivered again. It must open the visit (not count as a duplicate of nothing), and a
    # message with the key and another payload must find it taken.
    message = Topic(service).message(a_visit_of("app-9", SERVICE))

    async def crash(*_: object) -> None:
        raise ConnectionError("the replica died")

    monkeypatch.setattr(ingress, "_open_visits", crash)
    with pytest.raises(ConnectionError):
        await ingress.handle([message])
    assert await pool.fetchval("SELECT receipt::text FROM intake_requests") == "{}"
    monkeypatch.undo()
    await ingress.handle([message])
    assert await outcomes(pool) == [("accepted", "")]
    assert await pool.fetchval("SELECT count(*) FROM events WHERE type = 'CaseSubmitted'") == 1
    assert await pool.fetchval("SELECT receipt::text FROM intake_requests") != "{}"
    other = Topic(service)
    other.offset = 5
    await ingress.handle([other.message(a_visit_of("app-9", "job_referral"))])
    assert (await outcomes(pool))[-1] == ("rejected", "idempotency_key_reused")


async def test_a_refused_visit_gives_its_key_back_for_a_later_corrected_resend(
    service: IntakeService, ingress: KafkaIngress, pool: asyncpg.Pool,
) -> None:
    topic = Topic(service)
    await ingress.handle([topic.message(visit("v-1", station="530102999999"))])
    assert await pool.fetchval("SELECT count(*) FROM intake_requests") == 0
    await ingress.handle([topic.message(visit("v-1"))])
    assert await outcomes(pool) == [("rejected", "unknown_station"), ("accepted", "")]


async def test_a_refused_message_sent_a_thousand_times_in_one_batch_does_not_fail_it(
    service: IntakeService, ingress: KafkaIngress, pool: asyncpg.Pool, rejected: Recorder,
) -> None:
    # A source resending one refused message puts many copies in one batch; each copy is
    # decided again once the one before it is refused. Before, each round was a level of
    # recursion: past Python's limit the batch raised RecursionError, and was retried (and
    # failed) for ever, a poison batch holding its partition.
    topic = Topic(service)
    copies = [topic.message(visit("v-1", station="530102999999")) for _ in range(1100)]
    await ingress.handle(copies)
    assert await outcomes(pool) == [("rejected", "unknown_station")] * 1100
    assert len(rejected.sent) == 1100
    assert await pool.fetchval("SELECT count(*) FROM intake_requests") == 0


async def test_a_key_given_back_between_reserving_and_recalling_is_taken_not_lost(
    service: IntakeService, ingress: KafkaIngress, pool: asyncpg.Pool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Another replica holds the key; this one's insert finds it taken; the holder is refused
    # and gives it back; only then does this one recall the key, and finds nothing. Before,
    # the key was left out of the answer: the Kafka batch failed with a KeyError (retried,
    # logged as a failure), an HTTP request with a 500.
    log = service.handler.idempotency
    await log.reserve_many([("source:pension", "k-1", "fp-a")])
    real = log.recall

    async def given_back_meanwhile(keys: Sequence[tuple[str, str]]) -> Any:
        monkeypatch.setattr(log, "recall", real)
        await log.release_many([("source:pension", "k-1", "fp-a")])  # its holder: refused
        return await real(keys)

    monkeypatch.setattr(log, "recall", given_back_meanwhile)
    held = await log.reserve_many([("source:pension", "k-1", "fp-b")])
    assert held == {("source:pension", "k-1"): Remembered("fp-b", PENDING)}
    assert await pool.fetchval("SELECT fingerprint FROM intake_requests") == "fp-b"

    # and over Kafka: another replica takes the key just after this batch's recall, and gives
    # it back just before reserve_many's: the message opens its visit
    monkeypatch.setattr(log, "recall", taken_then_given_back(log, monkeypatch, "app-5"))
    await ingress.handle([Topic(service).message(a_visit_of("app-5", SERVICE))])
    assert await outcomes(pool) == [("accepted", "")]


def taken_then_given_back(log: Any, monkeypatch: pytest.MonkeyPatch, key: str) -> Any:
    real = log.recall
    other = [("source:pension", key, "fp-other")]
    calls = 0

    async def recall(keys: Sequence[tuple[str, str]]) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:  # the batch's own recall: the key is free; then another takes it
            found = await real(keys)
            await log.pool.execute(  # (not reserve_many: it would call this recall)
                "INSERT INTO intake_requests (scope, key, fingerprint, receipt)"
                " VALUES ($1, $2, $3, '{}'::jsonb)", *other[0])
            return found
        monkeypatch.setattr(log, "recall", real)  # reserve_many's: the other gave it back
        await log.release_many(other)
        return await real(keys)

    return recall
