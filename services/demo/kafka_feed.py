"""Other government systems on Kafka ``intake.submissions``: signed visit submissions, results
attached to decided cases, and malformed messages of every kind intake must refuse (each one
then appears on ``intake.rejected`` with its reasons). The demo signs with the sources'
registry (development secrets; SYNTHETIC applicants)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from services.demo.workload import PlannedVisit
from services.intake.domain.ids import case_id, visit_id
from services.intake.messages import CORRELATION_HEADER, SIGNATURE_HEADER, SOURCE_HEADER
from services.intake.sources import SourceRegistry
from shared.logging import get_logger

log = get_logger("yizhan.demo.kafka")


@dataclass(frozen=True)
class Message:
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]
    malformed: str | None = None


@dataclass
class Sent:
    """Where each message landed: ``topic/partition/offset`` → malformed kind (or None)."""

    by_place: dict[str, str | None] = field(default_factory=dict)

    @property
    def malformed(self) -> int:
        return sum(1 for kind in self.by_place.values() if kind is not None)


def signed(sources: SourceRegistry, source: str, key: str, value: bytes, *,
           signature: str | None = None) -> Message:
    system = sources.get(source)
    assert system is not None, source
    return Message(key.encode(), value, [
        (SOURCE_HEADER, source.encode()),
        (SIGNATURE_HEADER, (signature or system.signature(value)).encode()),
        (CORRELATION_HEADER, uuid.uuid5(uuid.NAMESPACE_URL, key).hex.encode()),
    ])


def visit_message(sources: SourceRegistry, visit: PlannedVisit) -> Message:
    assert visit.source is not None
    body = {"kind": "visit", "idempotency_key": visit.key, "station": visit.station,
            "applicant": visit.applicant,
            "services": [{"service_code": c.service_code, "documents": list(c.documents)}
                         for c in visit.cases]}
    return signed(sources, visit.source, visit.key, _dump(body))


def kafka_case_ids(visit: PlannedVisit) -> list[str]:
    """The case ids intake derives for a Kafka visit (deterministic: source scope and key)."""
    assert visit.source is not None
    visit_uuid = visit_id(f"source:{visit.source}", visit.key)
    return [str(case_id(visit_uuid, c.service_code)) for c in visit.cases]


def result_message(sources: SourceRegistry, source: str, key: str, case: str) -> Message:
    body = {"kind": "result", "idempotency_key": key, "case_id": case,
            "result_type": "benefit_payment_started", "reference": f"DEMO-{key[-10:]}",
            "summary": "待遇已核定并开始发放（演示，合成）", "details": {"month": "synthetic"}}
    return signed(sources, source, key, _dump(body))


def malformed_message(sources: SourceRegistry, template: PlannedVisit, kind: str,
                      key: str, max_bytes: int) -> Message:
    """A message intake must refuse, of ``kind`` (see ``workload.MALFORMED_KINDS``)."""
    body: dict[str, Any] = {
        "kind": "visit", "idempotency_key": key, "station": template.station,
        "applicant": dict(template.applicant),
        "services": [{"service_code": "legal_information", "documents": []}]}
    if kind == "bad_id":
        number = body["applicant"]["id_number"]
        body["applicant"]["id_number"] = number[:17] + ("0" if number[17] != "0" else "1")
    elif kind == "unknown_service":
        body["services"][0]["service_code"] = "space_travel"
    elif kind == "oversized":
        body["applicant"]["address"] = "填充" * max_bytes
    value = _dump(body)
    if kind == "not_json":
        value = value[: len(value) // 2]
    made = signed(sources, "employment", key, value,
                  signature="sha256=" + "0" * 64 if kind == "bad_signature" else None)
    headers = made.headers
    if kind == "unknown_source":
        headers = [(SOURCE_HEADER, b"unregistered_system"), *headers[1:]]
    return Message(made.key, made.value, headers, kind)


def _dump(body: dict[str, Any]) -> bytes:
    return json.dumps(body, ensure_ascii=False).encode()


async def produce(bootstrap: str, topic: str, messages: Sequence[Message]) -> Sent:
    """Send every message, wait for every acknowledgement; where each one landed."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5,
                                max_request_size=4 * 1024 * 1024)
    await producer.start()
    sent = Sent()
    try:
        pending = [(m, await producer.send(topic, m.value, key=m.key, headers=m.headers))
                   for m in messages]
        for message, future in pending:
            meta = await future
            sent.by_place[f"{topic}/{meta.partition}/{meta.offset}"] = message.malformed
    finally:
        await producer.stop()
    return sent


async def read_rejections(bootstrap: str, topic: str, partitions: int, wanted: set[str],
                          timeout_s: float = 30.0) -> dict[str, list[str]]:
    """Read ``intake.rejected`` from the start until every place in ``wanted`` has shown up
    (or the timeout): place → the reason codes intake gave."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                                enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    found: dict[str, list[str]] = {}
    try:
        consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
        await consumer.seek_to_beginning()
        deadline = time.monotonic() + timeout_s
        while not wanted <= set(found) and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                for record in records:
                    _collect(record.value, wanted, found)
    finally:
        await asyncio.shield(consumer.stop())
    return found


def _collect(value: bytes | None, wanted: set[str], found: dict[str, list[str]]) -> None:
    try:
        rejection = json.loads(value or b"{}")
        place = f"{rejection['topic']}/{rejection['partition']}/{rejection['offset']}"
    except (ValueError, KeyError, TypeError):
        return
    if place in wanted:
        found[place] = [r.get("code", "?") for r in rejection.get("reasons", [])]
