"""Building, signing and producing submissions for the intake Kafka tests and the benchmark."""

from __future__ import annotations

import json
import random
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
from aiokafka import AIOKafkaProducer

from services.intake.messages import SIGNATURE_HEADER, SOURCE_HEADER
from services.intake.sources import SourceRegistry
from tests.unit.intake.people import Person, synthetic_person, with_bad_check_character

STATIONS = ("530102001001", "530102001002", "530103001001", "530102006901")
SERVICES: tuple[tuple[str, list[str]], ...] = (
    ("job_referral", ["id_card"]), ("legal_information", []),
    ("minimum_living_guarantee", ["id_card", "household_register"]),
    ("labour_export", ["id_card", "photo"]))
MALFORMED_KINDS = ("not_json", "bad_id", "unknown_service", "bad_signature", "oversized")


@dataclass(frozen=True)
class Submission:
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]
    person: Person
    malformed: str | None = None


def visit_body(person: Person, key: str, rng: random.Random,
               services: int = 1) -> dict[str, Any]:
    chosen = rng.sample(SERVICES, services)
    return {"kind": "visit", "idempotency_key": key, "station": rng.choice(STATIONS),
            "applicant": person.as_applicant(),
            "services": [{"service_code": code, "documents": docs} for code, docs in chosen]}


def signed(sources: SourceRegistry, source: str, key: str, body: bytes,
           signature: str | None = None) -> Submission:
    system = sources.get(source)
    assert system is not None
    return Submission(key.encode(), body, [
        (SOURCE_HEADER, source.encode()),
        (SIGNATURE_HEADER, (signature or system.signature(body)).encode())],
        Person("", "", "", ""))


def workload(sources: SourceRegistry, total: int, malformed_every: int | None,
             seed: int = 2026, max_bytes: int = 64 * 1024) -> list[Submission]:
    """``total`` visit submissions; with ``malformed_every`` = 10, every tenth is malformed,
    the five kinds in turn (20 of each in 1,000)."""
    rng = random.Random(seed)
    run = uuid.UUID(int=rng.getrandbits(128)).hex[:8]
    out = []
    for i in range(total):
        person = synthetic_person(rng)
        key = f"{run}-{i:06d}"
        body = visit_body(person, key, rng)
        source = ("pension", "employment")[i % 2]
        kind = (MALFORMED_KINDS[(i // malformed_every) % len(MALFORMED_KINDS)]
                if malformed_every and i % malformed_every == malformed_every - 1 else None)
        out.append(_spoiled(sources, source, key, body, person, kind, max_bytes))
    return out


def _spoiled(sources: SourceRegistry, source: str, key: str, body: dict[str, Any],
             person: Person, kind: str | None, max_bytes: int) -> Submission:
    signature = None
    if kind == "bad_id":
        body["applicant"]["id_number"] = with_bad_check_character(person.id_number)
    elif kind == "unknown_service":
        body["services"][0]["service_code"] = "space_travel"
    elif kind == "oversized":
        body["applicant"]["address"] = "填充" * max_bytes
    elif kind == "bad_signature":
        signature = "sha256=" + "0" * 64
    raw = json.dumps(body, ensure_ascii=False).encode()
    if kind == "not_json":
        raw = raw[: len(raw) // 2]
    made = signed(sources, source, key, raw, signature)
    return Submission(made.key, made.value, made.headers, person, kind)


async def produce(bootstrap: str, topic: str, submissions: Sequence[Submission]) -> float:
    """Send every submission and wait for every ack; the wall time it took, in seconds."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks="all",
                                max_request_size=4 * 1024 * 1024, max_batch_size=256 * 1024)
    await producer.start()
    try:
        started = time.perf_counter()
        pending = [await producer.send(topic, s.value, key=s.key, headers=s.headers)
                   for s in submissions]
        for future in pending:
            await future
        return time.perf_counter() - started
    finally:
        await producer.stop()


async def wait_until(pool: asyncpg.Pool, sql: str, done: Callable[[Any], bool],
                     timeout: float = 60.0, poll: float = 0.05) -> Any:
    """Poll ``sql`` until ``done(value)``; the value."""
    import asyncio

    deadline = time.monotonic() + timeout
    while True:
        value = await pool.fetchval(sql)
        if done(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{sql!r} still {value!r} after {timeout} s")
        await asyncio.sleep(poll)
