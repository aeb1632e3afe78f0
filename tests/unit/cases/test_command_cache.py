"""The command cache learns cases from the log read elsewhere (``CaseCommands.observe``, fed by
the SLA agent): the first command on a case intake opened then needs no read of the store, and
whatever the cache is shown — out of order, a gap, an event it cannot fold, another stream —
commands still decide on exactly the store's state."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import datetime, timedelta

import pytest

from services.cases.domain import AcceptCase, AddNote, HandOffCase, SubmitCase, errors
from services.cases.handlers import CaseCommands, PreconditionFailed
from shared.contracts.cases import Actor, EncryptedApplicant
from shared.contracts.envelope import RecordedEvent
from shared.eventstore.memory import InMemoryEventStore
from shared.reference import CHINA_TZ, Reference, Role, load_reference

pytestmark = pytest.mark.unit

STATION, TOWNSHIP = "530102001001", "530102001"
CLERK = Actor(user_id=f"clerk.{STATION}.a", role=Role.STATION_CLERK, unit=STATION)
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=CHINA_TZ)
DOCS = ("id_card", "household_register", "application_form", "income_certificate",
        "property_declaration", "bank_account")


class CountingStore(InMemoryEventStore):
    """The in-memory store, counting the stream reads the command side makes."""

    def __init__(self) -> None:
        super().__init__()
        self.stream_reads = 0

    async def read_stream(self, stream_id: str, *, from_version: int = 1,
                          to_position: int | None = None) -> list[RecordedEvent]:
        self.stream_reads += 1
        return await super().read_stream(stream_id, from_version=from_version,
                                         to_position=to_position)


@pytest.fixture(scope="module")
def ref() -> Reference:
    return load_reference()


async def opened_elsewhere(store: InMemoryEventStore, ref: Reference,
                           case_id: uuid.UUID) -> list[RecordedEvent]:
    """Intake's part, done by another process: submit and accept, straight into the store."""
    intake = CaseCommands(store, ref)
    await intake.handle(SubmitCase(
        case_id=case_id, at=T0, actor=CLERK, tracking_no=f"KM-{case_id.hex[-6:]}",
        service_code="minimum_living_guarantee", visit_id=case_id, station=STATION,
        applicant=EncryptedApplicant(subject_id="s", id_hash="hmac:00", encrypted={}),
        documents=DOCS), command_id=uuid.uuid4())
    await intake.handle(AcceptCase(case_id=case_id, at=T0 + timedelta(minutes=1), actor=CLERK),
                        command_id=uuid.uuid4())
    return await store.read_stream(f"case-{case_id}")


async def test_a_case_seen_in_the_log_is_commanded_without_reading_the_store(
    ref: Reference,
) -> None:
    store, case_id = CountingStore(), uuid.uuid4()
    log = await opened_elsewhere(store, ref, case_id)
    commands = CaseCommands(store, ref)
    assert commands.observe(log) == len(log)
    store.stream_reads = 0
    done = await commands.handle(
        HandOffCase(case_id=case_id, at=T0 + timedelta(minutes=2), actor=CLERK, note="转乡镇"),
        command_id=uuid.uuid4())
    assert store.stream_reads == 0
    assert done.version > len(log)
    state, version, _, _ = await commands.load(case_id)
    assert version == done.version and state is not None and state.unit == TOWNSHIP


async def test_whatever_the_cache_is_shown_commands_decide_on_the_stores_state(
    ref: Reference,
) -> None:
    store, case_id = CountingStore(), uuid.uuid4()
    first, second, *_ = await opened_elsewhere(store, ref, case_id)
    other = uuid.uuid4()
    unknown = dataclasses.replace(second, type="NoSuchEvent")
    commands = CaseCommands(store, ref)
    # a later version first (nothing to build on), another stream, a repeat, a gap
    assert commands.observe([second]) == 0
    assert commands.observe([dataclasses.replace(first, stream_id="relay-probe")]) == 0
    assert commands.observe([first, first]) == 1
    assert commands.observe([dataclasses.replace(second, version=3)]) == 0
    cached = commands._cache[case_id]  # what the next command would decide on
    assert (cached.version, cached.event_ids) == (1, frozenset({first.event_id}))
    # an event it cannot fold drops the case (never raises): the store decides next time
    assert commands.observe([unknown]) == 0
    assert case_id not in commands._cache
    assert commands.observe([first]) == 1
    assert commands.observe([dataclasses.replace(second, stream_id=f"case-{other}")]) == 0
    await commands.handle(AddNote(case_id=case_id, at=T0 + timedelta(minutes=3), actor=CLERK,
                                  text="来电"), command_id=uuid.uuid4())
    assert store.stream_reads > 0  # the cached fold was behind: the store's events were read
    fresh = CaseCommands(store, ref)
    assert await commands.load(case_id) == await fresh.load(case_id)


async def test_a_cached_fold_holding_part_of_a_transaction_is_decided_again_on_the_store(
    ref: Reference,
) -> None:
    """The log reaches the cache in Kafka's batches, which may end inside a transaction: here
    the acceptance without the SLA clock committed with it, a state no transaction left.
    A command the domain cannot decide on that state is decided on the store's."""
    store, case_id = CountingStore(), uuid.uuid4()
    log = await opened_elsewhere(store, ref, case_id)
    accepted = next(i for i, e in enumerate(log) if e.type == "CaseAccepted")
    assert log[accepted + 1].type == "SlaTimerScheduled"  # committed with the acceptance
    commands = CaseCommands(store, ref)
    assert commands.observe(log[:accepted + 1]) == accepted + 1  # the batch ends between them
    store.stream_reads = 0
    done = await commands.handle(
        HandOffCase(case_id=case_id, at=T0 + timedelta(minutes=2), actor=CLERK, note="转乡镇"),
        command_id=uuid.uuid4())
    assert store.stream_reads == 1
    assert done.version == len(log) + len(done.events)
    fresh = CaseCommands(store, ref)
    assert await commands.load(case_id) == await fresh.load(case_id)


async def test_a_stale_version_is_told_only_to_one_who_may_act_on_the_case(
    ref: Reference,
) -> None:
    """A 412 names the case's version (how much has happened to it): an officer of another
    township naming any version is refused as an outsider first."""
    store, case_id = CountingStore(), uuid.uuid4()
    await opened_elsewhere(store, ref, case_id)
    commands = CaseCommands(store, ref)
    outsider = Actor(user_id="officer.530102002.a", role=Role.TOWNSHIP_OFFICER, unit="530102002")
    note = AddNote(case_id=case_id, at=T0 + timedelta(minutes=3), actor=outsider, text="探")
    with pytest.raises(errors.OnlyTheHoldingUnitMayAct):
        await commands.handle(note, command_id=uuid.uuid4(), expected_version=1)
    with pytest.raises(PreconditionFailed):
        await commands.handle(dataclasses.replace(note, actor=CLERK), command_id=uuid.uuid4(),
                              expected_version=1)
