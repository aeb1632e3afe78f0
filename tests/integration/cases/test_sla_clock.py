"""The SLA clock on real PostgreSQL: due times kept idempotently, a breach recorded once."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import pytest

from services.cases.agents import fire_sla_timers_once
from services.cases.bootstrap import CasesService, bootstrap
from services.cases.domain import (
    AcceptCase,
    AddNote,
    Command,
    EscalateOverdueCase,
    RecordSlaBreach,
    SubmitCase,
    sla_clock_actor,
)
from services.cases.handlers import Handled, StillConflicting
from services.cases.sla_clock import FireReport, apply_sla_events, fire_due
from shared.consumer import ALL, IdempotentConsumer
from shared.contracts.cases import Actor, EncryptedApplicant
from shared.reference import Reference, Role
from shared.settings import Settings
from tests.conftest import Db
from tests.integration.cases.test_cases_api import CLERK, MLG_DOCUMENTS, STATION, Clock


@pytest.fixture
async def service(database: Db, ref: Reference) -> AsyncIterator[CasesService]:
    svc = await bootstrap(Settings(), database.service_dsn, ref=ref, clock=Clock())
    yield svc
    await svc.close()


LIC = "labour_inspection_complaint"  # escalates automatically after a community breach


async def accepted_case(
    svc: CasesService, service: str = "minimum_living_guarantee",
    documents: tuple[str, ...] = tuple(MLG_DOCUMENTS),
) -> uuid.UUID:
    case_id = uuid.uuid4()
    clerk = Actor(user_id=CLERK, role=Role.STATION_CLERK, unit=STATION)
    await svc.commands.handle(SubmitCase(
        case_id=case_id, at=svc.clock(), actor=clerk, tracking_no="KM-1",
        service_code=service, visit_id=uuid.uuid4(), station=STATION,
        applicant=EncryptedApplicant(subject_id="s", id_hash="h", encrypted={}),
        documents=documents), command_id=uuid.uuid4())
    await svc.commands.handle(AcceptCase(case_id=case_id, at=svc.clock(), actor=clerk),
                              command_id=uuid.uuid4())
    return case_id


async def catch_up(svc: CasesService) -> int:
    """Apply the log to sla_due the way the agent does (idempotent by position)."""
    assert svc.pool is not None
    consumer = IdempotentConsumer(svc.pool, "sla-clock")
    applied = 0
    async for batch in svc.store.read_all(await consumer.position(ALL)):
        applied += len(await consumer.apply(ALL, batch, apply_sla_events))
    return applied


async def events_of(svc: CasesService, case_id: uuid.UUID) -> list[str]:
    return [e.type for e in await svc.store.read_stream(f"case-{case_id}")]


async def test_due_times_follow_the_log_and_redelivery_changes_nothing(
    service: CasesService,
) -> None:
    case_id = await accepted_case(service)
    assert await catch_up(service) > 0
    assert service.pool is not None
    row = await service.pool.fetchrow("SELECT * FROM sla_due WHERE case_id = $1", case_id)
    assert row is not None and (row["level"], row["unit"]) == ("community", STATION)
    assert row["warn_at"] < row["due_at"]
    before = [dict(r) for r in await service.pool.fetch("SELECT * FROM sla_due")]
    consumer = IdempotentConsumer(service.pool, "sla-clock")
    everything = [e async for batch in service.store.read_all() for e in batch]
    assert await consumer.apply(ALL, everything, apply_sla_events) == []  # redelivered
    assert [dict(r) for r in await service.pool.fetch("SELECT * FROM sla_due")] == before


async def test_a_breach_fires_exactly_once_on_a_controlled_clock(
    service: CasesService,
) -> None:
    case_id = await accepted_case(service)
    await catch_up(service)
    assert service.pool is not None
    due = await service.pool.fetchval("SELECT due_at FROM sla_due WHERE case_id = $1", case_id)

    async def fire(at_offset: timedelta) -> object:
        async with service.pool.acquire() as conn:  # type: ignore[union-attr]
            return await fire_due(service.commands, conn, due + at_offset)

    early = await fire(-timedelta(seconds=1))  # before due: only the warning is owed
    assert (early.warnings, early.breaches) == (1, 0)  # type: ignore[attr-defined]
    reports = await asyncio.gather(*(fire(timedelta(minutes=1)) for _ in range(4)))
    await catch_up(service)
    again = await fire(timedelta(hours=1))  # the clock comes round once more
    types = await events_of(service, case_id)
    assert types.count("SlaWarningRaised") == 1
    assert types.count("SlaBreached") == 1
    assert sum(r.breaches for r in reports) == 1  # type: ignore[attr-defined]
    assert again.checked == 0  # type: ignore[attr-defined]
    breach = next(e for e in await service.store.read_stream(f"case-{case_id}")
                  if e.type == "SlaBreached")
    assert (breach.data["level"], breach.data["unit"]) == ("community", STATION)
    assert breach.metadata["actor_id"] == "system.sla-clock"


async def test_paused_clock_is_not_fired(service: CasesService, admin_pool: asyncpg.Pool) -> None:
    from services.cases.domain import RequestDocuments

    case_id = uuid.uuid4()
    clerk = Actor(user_id=CLERK, role=Role.STATION_CLERK, unit=STATION)
    await service.commands.handle(SubmitCase(
        case_id=case_id, at=service.clock(), actor=clerk, tracking_no="KM-2",
        service_code="minimum_living_guarantee", visit_id=uuid.uuid4(), station=STATION,
        applicant=EncryptedApplicant(subject_id="s", id_hash="h", encrypted={}),
        documents=("id_card",)), command_id=uuid.uuid4())
    await service.commands.handle(AcceptCase(case_id=case_id, at=service.clock(), actor=clerk),
                                  command_id=uuid.uuid4())
    await service.commands.handle(RequestDocuments(case_id=case_id, at=service.clock(),
                                                   actor=clerk), command_id=uuid.uuid4())
    await catch_up(service)
    assert await admin_pool.fetchval("SELECT count(*) FROM sla_due") == 0
    async with service.pool.acquire() as conn:  # type: ignore[union-attr]
        report = await fire_due(service.commands, conn, service.clock() + timedelta(days=90))
    assert report.checked == 0
    assert "SlaBreached" not in await events_of(service, case_id)


async def test_a_batch_of_many_cases_leaves_what_one_event_at_a_time_leaves(
    service: CasesService,
) -> None:
    """apply_sla_events sends a batch in rounds of executemany: same table as event by event."""
    from services.cases.domain import HandOffCase, ReceiveHandoff, RequestDocuments

    town = Actor(user_id=f"officer.{STATION[:9]}.a", role=Role.TOWNSHIP_OFFICER,
                 unit=STATION[:9])
    clerk = Actor(user_id=CLERK, role=Role.STATION_CLERK, unit=STATION)
    cases = [await accepted_case(service) for _ in range(4)]
    for case_id in cases[:3]:  # stopped and scheduled again, received; one more hand-off
        await service.commands.handle(HandOffCase(case_id=case_id, at=service.clock(),
                                                  actor=clerk), command_id=uuid.uuid4())
    await service.commands.handle(ReceiveHandoff(case_id=cases[0], at=service.clock(),
                                                 actor=town), command_id=uuid.uuid4())
    await service.commands.handle(RequestDocuments(case_id=cases[3], at=service.clock(),
                                                   actor=clerk, documents=("id_card",)),
                                  command_id=uuid.uuid4())  # paused: row deleted
    assert service.pool is not None
    everything = [e async for batch in service.store.read_all() for e in batch]
    snapshot = "SELECT * FROM sla_due ORDER BY case_id"

    async with service.pool.acquire() as conn, conn.transaction():
        await apply_sla_events(conn, everything)
    batched = [dict(r) for r in await service.pool.fetch(snapshot)]
    await service.pool.execute("DELETE FROM sla_due")
    async with service.pool.acquire() as conn, conn.transaction():
        for event in everything:
            await apply_sla_events(conn, [event])
    one_by_one = [dict(r) for r in await service.pool.fetch(snapshot)]
    assert batched == one_by_one
    assert {r["case_id"] for r in batched} == set(cases[:3])


async def test_a_resumed_clock_of_a_warned_level_does_not_block_the_timers_behind_it(
    service: CasesService, admin_pool: asyncpg.Pool,
) -> None:
    """A level warned once is not warned again after a pause (the domain's rule), but its new
    timer's row said "not warned" with the warning time already past: every tick picked it
    first, fired nothing, and with the tick's limit full of such rows no other timer fired."""
    from services.cases.domain import RequestDocuments, SupplyDocuments

    clerk = Actor(user_id=CLERK, role=Role.STATION_CLERK, unit=STATION)
    clock = service.clock
    resumed = await accepted_case(service)
    clock.now += timedelta(days=1)  # type: ignore[attr-defined]
    other = await accepted_case(service)
    await catch_up(service)

    async def row(case_id: uuid.UUID) -> asyncpg.Record:
        found = await admin_pool.fetchrow("SELECT * FROM sla_due WHERE case_id = $1", case_id)
        assert found is not None
        return found

    async def tick(now: datetime, limit: int) -> object:
        async with service.pool.acquire() as conn:  # type: ignore[union-attr]
            return await fire_due(service.commands, conn, now, limit=limit)

    warn_at = (await row(resumed))["warn_at"]
    assert (await tick(warn_at, 500)).warnings == 1  # type: ignore[attr-defined]
    clock.now = warn_at  # type: ignore[attr-defined]
    await service.commands.handle(RequestDocuments(
        case_id=resumed, at=clock(), actor=clerk, documents=("id_card",)),
        command_id=uuid.uuid4())
    clock.now += timedelta(hours=12)  # type: ignore[attr-defined]
    await service.commands.handle(SupplyDocuments(
        case_id=resumed, at=clock(), actor=clerk, documents=("id_card",)),
        command_id=uuid.uuid4())  # warned before the pause: no warning is owed any more
    await catch_up(service)
    now = (await row(other))["warn_at"]  # the other case's warning is owed; the resumed owes none
    assert (await row(resumed))["warn_at"] < now < (await row(resumed))["due_at"]
    assert (await row(resumed))["due_at"] < (await row(other))["due_at"]  # picked first
    for _ in range(2):  # one row a tick
        await tick(now, 1)
    assert "SlaWarningRaised" in await events_of(service, other)
    assert (await events_of(service, resumed)).count("SlaWarningRaised") == 1


async def tick(svc: CasesService, now: datetime) -> FireReport:
    assert svc.pool is not None
    async with svc.pool.acquire() as conn:
        return await fire_due(svc.commands, conn, now)


async def test_an_escalation_whose_command_failed_is_still_owed_at_the_next_tick(
    service: CasesService, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The breach and its escalation are two commands. When the second failed (here it kept
    conflicting; a crash or the database away are alike), the breach stood, the agent marked
    the row breached, no tick picked it again and the escalation the catalogue asks for never
    happened (found in review). It is owed until done, and sent at the clock's time: a note
    added since the breach makes the breach's own time one the case refuses."""
    case_id = await accepted_case(service, LIC, ("id_card",))
    await catch_up(service)
    assert service.pool is not None
    due = await service.pool.fetchval("SELECT due_at FROM sla_due WHERE case_id = $1", case_id)
    handle = service.commands.handle
    failed: list[Command] = []

    async def escalation_fails_once(command: Command, **kwargs: Any) -> Handled:
        if isinstance(command, EscalateOverdueCase) and not failed:
            failed.append(command)
            raise StillConflicting("injected")
        return await handle(command, **kwargs)

    monkeypatch.setattr(service.commands, "handle", escalation_fails_once)
    assert await fire_sla_timers_once(service, lambda: due + timedelta(minutes=1)) is True
    assert failed and service.sla_ticks.breaches == 1  # the case failed after its breach
    assert service.sla_ticks.case_failures == 1
    clock: Any = service.clock
    clock.now = due + timedelta(minutes=5)
    clerk = Actor(user_id=CLERK, role=Role.STATION_CLERK, unit=STATION)
    await service.commands.handle(AddNote(case_id=case_id, at=clock(), actor=clerk,
                                          text="applicant called"), command_id=uuid.uuid4())
    await catch_up(service)
    later = due + timedelta(minutes=10)
    assert (await tick(service, later)).escalations == 1
    await catch_up(service)
    assert (await tick(service, due + timedelta(hours=1))).checked == 0  # nothing more owed
    events = await service.store.read_stream(f"case-{case_id}")
    types = [e.type for e in events]
    assert types.count("SlaBreached") == 1 and types.count("CaseEscalated") == 1
    escalated = next(e for e in events if e.type == "CaseEscalated")
    assert escalated.data["to_level"] == "township"
    assert datetime.fromisoformat(escalated.data["at"]) == later


async def test_an_owed_escalation_fired_by_ticks_at_once_and_again_is_recorded_once(
    service: CasesService,
) -> None:
    """What a crash right after the breach leaves (the breach recorded, its escalation not):
    ticks running at once, and a tick repeated, escalate the case once."""
    case_id = await accepted_case(service, LIC, ("id_card",))
    await catch_up(service)
    assert service.pool is not None
    due = await service.pool.fetchval("SELECT due_at FROM sla_due WHERE case_id = $1", case_id)
    await service.commands.handle(RecordSlaBreach(
        case_id=case_id, at=due, actor=sla_clock_actor(service.commands.ref), timer_no=1),
        command_id=uuid.uuid4())
    await catch_up(service)
    reports = await asyncio.gather(*(tick(service, due + timedelta(minutes=5))
                                     for _ in range(4)))
    again = await tick(service, due + timedelta(minutes=6))  # before the agent caught up
    await catch_up(service)
    last = await tick(service, due + timedelta(hours=1))
    types = await events_of(service, case_id)
    assert types.count("SlaBreached") == 1 and types.count("CaseEscalated") == 1
    assert sum(r.escalations for r in [*reports, again, last]) == 1
    assert sum(r.breaches for r in [*reports, again, last]) == 0
    assert last.checked == 0


async def test_a_case_whose_timers_keep_failing_does_not_stop_the_others(
    service: CasesService, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A case the clock cannot fire (here every command on it fails; in review: an owed
    escalation to a unit with nobody in the role) is picked first at every tick: were its
    failure the tick's, no other case's warning or breach would ever fire again."""
    stuck = await accepted_case(service)
    other = await accepted_case(service)
    await catch_up(service)
    assert service.pool is not None
    due = await service.pool.fetchval("SELECT max(due_at) FROM sla_due")
    handle = service.commands.handle

    async def stuck_fails(command: Command, **kwargs: Any) -> Handled:
        if command.case_id == stuck:
            raise RuntimeError("injected")
        return await handle(command, **kwargs)

    monkeypatch.setattr(service.commands, "handle", stuck_fails)
    report = await tick(service, due + timedelta(minutes=1))
    assert report.failed == 1
    assert "SlaBreached" in await events_of(service, other)
    assert "SlaBreached" not in await events_of(service, stuck)
    monkeypatch.setattr(service.commands, "handle", handle)  # mended: the next tick fires it
    await catch_up(service)
    assert (await tick(service, due + timedelta(minutes=2))).breaches == 1
    assert "SlaBreached" in await events_of(service, stuck)
