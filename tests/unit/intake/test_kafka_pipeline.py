"""What the Kafka worker's speed rests on, pure (no broker, no database): the events intake
encodes itself are the bytes the store would have made, the fast ids are ``uuid.uuid5``'s,
batches in flight take turns on what they share, and acks go out in the order read."""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import pytest

from services.intake.agents import SubmissionAgent
from services.intake.domain import Applicant, Refused, ServiceRequest, Visit, route
from services.intake.domain.ids import (
    INTAKE_NAMESPACE,
    case_id,
    command_id,
    derived_id,
    event_id,
    event_ids,
    visit_id,
)
from services.intake.handlers import IntakeHandler, Prepared, VisitRequest
from services.intake.ingress import Turns
from services.intake.messages import SOURCE_HEADER, RawMessage
from shared.contracts.cases import Actor, EncryptedApplicant
from shared.contracts.registry import to_new_event
from shared.eventstore.planning import encode
from shared.reference import CHINA_TZ, Reference, Role
from shared.streaming import make_app
from tests.unit.intake.people import synthetic_person

STATION = "530102001001"
SYSTEM = Actor(user_id="system:pension", role=Role.SYSTEM, unit="530100")
SEALED = EncryptedApplicant(subject_id="subj-1", id_hash="hmac-sha256:00",
                            encrypted={"name": "v1.xx", "id_number": "v1.yy"})


@pytest.mark.parametrize(("scope", "key"), [
    ("source:pension", "k-000001"), ("user:clerk.1", "键-中文"), ("", ""),
    ("source:employment", "x" * 200)])
def test_fast_ids_are_uuid5(scope: str, key: str) -> None:
    visit = visit_id(scope, key)
    assert visit == uuid.uuid5(INTAKE_NAMESPACE, f"visit\n{scope}\n{key}")
    assert command_id(scope, key) == uuid.uuid5(INTAKE_NAMESPACE, f"command\n{scope}\n{key}")
    assert derived_id(visit, "correlation") == uuid.uuid5(visit, "correlation")
    case = case_id(visit, "job_referral")
    assert case == uuid.uuid5(visit, "case\njob_referral")
    assert event_ids(case, 5) == [event_id(case, i) for i in range(5)] == [
        uuid.uuid5(case, f"event\n{i}") for i in range(5)]


def pure_handler(ref: Reference) -> IntakeHandler:
    """A handler for its pure part (``_prepare``): no store, privacy or idempotency."""
    return IntakeHandler(None, ref, None, None,  # type: ignore[arg-type]
                         lambda: datetime(2026, 3, 2, 9, 30, tzinfo=CHINA_TZ),
                         tracking_key=bytes(32))


@pytest.mark.parametrize("documents", [(), ("id_card",), ("id_card", "household_register")])
def test_the_events_encoded_here_are_the_bytes_the_store_would_make(
    ref: Reference, documents: tuple[str, ...],
) -> None:
    applicant = Applicant(**synthetic_person(random.Random(3)).as_applicant())
    request = VisitRequest(
        visit=Visit(station=STATION, applicant=applicant, services=(
            ServiceRequest(service_code="minimum_living_guarantee", documents=documents),
            ServiceRequest(service_code="legal_information"))),
        scope="source:pension", key="k-1", submitter=SYSTEM, receiver=None,
        correlation_id="c-1", source_system="pension")
    handler = pure_handler(ref)
    prepared = handler._prepare(request, route(request.visit, ref), SEALED)
    assert isinstance(prepared, Prepared)
    assert len(prepared.appends) == 2
    for part, (case, events) in zip(prepared.appends, prepared.decided.items(), strict=True):
        assert part.stream_id == f"case-{case}" and part.expected_version == 0
        expected = [encode(to_new_event(
            event, event_id=uuid.uuid5(case, f"event\n{i}"), occurred_at=event.at,
            metadata=_metadata(event.actor, prepared.visit, request)))
            for i, event in enumerate(events)]
        assert list(part.events) == expected


@pytest.mark.parametrize(("unit", "refused"), [("530102", False), ("530103", True)])
def test_a_source_opens_cases_only_at_stations_of_its_unit(
    ref: Reference, unit: str, refused: bool,
) -> None:
    applicant = Applicant(**synthetic_person(random.Random(4)).as_applicant())
    system = Actor(user_id="system:county_pension", role=Role.SYSTEM, unit=unit)
    request = VisitRequest(
        visit=Visit(station=STATION, applicant=applicant,
                    services=(ServiceRequest(service_code="legal_information"),)),
        scope="source:county_pension", key="k-1", submitter=system, receiver=None,
        correlation_id="c-1", source_system="county_pension")
    handler = pure_handler(ref)
    prepared = handler._prepare(request, route(request.visit, ref), SEALED)
    if refused:
        assert isinstance(prepared, Refused) and prepared.kind == "forbidden"
        assert [r.code for r in prepared.reasons] == ["SystemsActOnlyWithinTheirUnit"]
    else:
        assert isinstance(prepared, Prepared)


def _metadata(actor: Actor, visit: uuid.UUID, request: VisitRequest) -> dict[str, Any]:
    """The metadata as intake always wrote it."""
    meta = {"actor_id": actor.user_id, "role": str(actor.role), "unit": actor.unit,
            "acting_for": actor.acting_for, "correlation_id": request.correlation_id,
            "causation_id": str(visit), "source_system": request.source_system}
    return {k: v for k, v in meta.items() if v is not None}


def message(offset: int, key: str | None, source: str = "pension",
            partition: int = 0) -> RawMessage:
    body = {"kind": "visit"} if key is None else {"kind": "visit", "idempotency_key": key}
    return RawMessage("intake.submissions", partition, offset, json.dumps(body).encode(),
                      {SOURCE_HEADER: source.encode()})


async def test_batches_sharing_a_key_or_a_message_take_turns() -> None:
    turns = Turns(max_bytes=64 * 1024)
    first = turns.claim([message(0, "a"), message(1, "b")])
    disjoint = turns.claim([message(2, "c"), message(3, None), message(4, "a", "employment")])
    same_key = turns.claim([message(5, " b ")])  # stripped, as the submission model does
    redelivered = turns.claim([message(1, "zzz")])
    await asyncio.wait_for(first.wait(), 1)
    await asyncio.wait_for(disjoint.wait(), 1)
    waiting = [asyncio.ensure_future(t.wait()) for t in (same_key, redelivered)]
    await asyncio.sleep(0.01)
    assert not any(w.done() for w in waiting)
    first.release()
    await asyncio.wait_for(asyncio.gather(*waiting), 1)
    for turn in (disjoint, same_key, redelivered):
        turn.release()
    assert len(turns) == 0


async def test_unreadable_messages_claim_only_their_place() -> None:
    turns = Turns(max_bytes=64)
    junk = [RawMessage("t", 0, 0, b"{not json", {SOURCE_HEADER: b"pension"}),
            RawMessage("t", 0, 1, b"[" * 10_000 + b"]" * 10_000, {SOURCE_HEADER: b"pension"}),
            RawMessage("t", 0, 2, b"x" * 65, {SOURCE_HEADER: b"pension"}),
            RawMessage("t", 0, 3, None, {}), message(4, "k", source="")]
    turn = turns.claim(junk)
    assert len(turns) == 5
    turn.release()
    assert len(turns) == 0


class FakeIngress:
    """Handles batches when told to; the turns are the real ones."""

    def __init__(self) -> None:
        self.turns = Turns(max_bytes=64 * 1024)
        self.release: dict[int, asyncio.Event] = {}
        self.started: list[int] = []

    async def handle(self, messages: Sequence[RawMessage]) -> None:
        first = messages[0].offset
        self.started.append(first)
        await self.release.setdefault(first, asyncio.Event()).wait()


class FakeEvent:
    def __init__(self, offset: int) -> None:
        self.message = type("M", (), {"topic": "t", "partition": 0, "offset": offset,
                                      "value": json.dumps({"idempotency_key": f"k{offset}"})
                                      .encode(), "headers": [(SOURCE_HEADER, b"pension")]})()


class FakeStream:
    def __init__(self, batches: list[list[FakeEvent]]) -> None:
        self.batches = batches
        self.acked: list[int] = []
        self.more = asyncio.Event()

    async def noack_take(self, max_: int, within: float) -> Any:
        for batch in self.batches:
            yield batch
        await self.more.wait()  # the stream goes quiet

    async def ack(self, event: FakeEvent) -> bool:
        self.acked.append(event.message.offset)
        return True


def agent(ingress: FakeIngress, *, batch_size: int, depth: int) -> SubmissionAgent:
    app = make_app("intake-unit", bootstrap_servers="127.0.0.1:1", partitions=1)
    return SubmissionAgent(app, topic="t", ingress=ingress,  # type: ignore[arg-type]
                           batch_size=batch_size, max_wait_s=0.01, depth=depth)


async def test_batches_overlap_but_are_acked_in_the_order_read() -> None:
    ingress = FakeIngress()
    stream = FakeStream([[FakeEvent(o) for o in range(0, 2)],
                         [FakeEvent(o) for o in range(2, 4)],
                         [FakeEvent(o) for o in range(4, 6)]])
    run = asyncio.ensure_future(agent(ingress, batch_size=2, depth=2)._run(stream))  # type: ignore[arg-type]
    await _until(lambda: ingress.started == [0, 2])  # two in flight, the third waits
    ingress.release.setdefault(2, asyncio.Event()).set()  # the second is done first ...
    await asyncio.sleep(0.02)
    assert stream.acked == [] and ingress.started == [0, 2]  # ... but not acked before
    ingress.release.setdefault(0, asyncio.Event()).set()
    await _until(lambda: stream.acked == [0, 1, 2, 3] and ingress.started == [0, 2, 4])
    run.cancel()  # stopping: the batch in flight is never acked
    await asyncio.gather(run, return_exceptions=True)
    await asyncio.sleep(0.02)
    assert stream.acked == [0, 1, 2, 3]


async def test_a_partial_batch_starts_once_the_stream_goes_quiet() -> None:
    ingress = FakeIngress()
    stream = FakeStream([[FakeEvent(0), FakeEvent(1)], [FakeEvent(2)]])
    run = asyncio.ensure_future(agent(ingress, batch_size=5, depth=2)._run(stream))  # type: ignore[arg-type]
    await _until(lambda: ingress.started == [0])  # started at once: nothing was in flight
    await asyncio.sleep(0.02)
    assert ingress.started == [0]  # the one taken meanwhile waits for more ...
    ingress.release.setdefault(0, asyncio.Event()).set()
    ingress.release.setdefault(2, asyncio.Event()).set()
    await _until(lambda: stream.acked == [0, 1, 2])  # ... until the batch at work is done
    run.cancel()
    await asyncio.gather(run, return_exceptions=True)


async def _until(condition: Any, timeout: float = 2.0) -> None:
    async def poll() -> None:
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.005)

    await asyncio.wait_for(poll(), timeout)


class FailingIngress:
    """``handle`` fails for the batches named in ``failing`` (by their first offset)."""

    def __init__(self) -> None:
        self.failing: set[int] = set()

    async def handle(self, messages: Sequence[RawMessage]) -> None:
        if messages[0].offset in self.failing:
            raise ConnectionError("the database went away")


async def test_a_batch_held_failing_is_reported_whatever_the_batches_beside_it_do() -> None:
    # /readyz reads failing_since. Before, it was one value: a batch in flight beside a
    # failing one cleared it by succeeding, and a failing batch cancelled left it set.
    ingress = FailingIngress()
    worker = SubmissionAgent(make_app("intake-unit", bootstrap_servers="127.0.0.1:1",
                                      partitions=1),
                             topic="t", ingress=ingress,  # type: ignore[arg-type]
                             batch_size=1, max_wait_s=0.01, depth=2, retry_initial_s=0.01,
                             retry_max_s=0.01)
    ingress.failing = {0, 1}
    held = asyncio.ensure_future(worker._handle_until_done([RawMessage("t", 0, 0, b"x", {})]))
    other = asyncio.ensure_future(worker._handle_until_done([RawMessage("t", 0, 1, b"y", {})]))
    await _until(lambda: worker.failures >= 4)
    since = worker.failing_since
    assert since is not None
    ingress.failing = {0}  # the other batch goes through, the first still fails
    await other
    await asyncio.sleep(0.05)
    assert worker.failing_since is not None and worker.failing_since <= since
    held.cancel()  # stopping: nothing is failing any more
    with pytest.raises(asyncio.CancelledError):
        await held
    assert worker.failing_since is None
