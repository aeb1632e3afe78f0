"""The SLA clock's commands: warnings, breaches, idempotent firing, auto-escalation."""

from __future__ import annotations

from datetime import datetime

import pytest

from services.cases.domain import (
    AcceptCase,
    AddNote,
    EscalateOverdueCase,
    HandOffCase,
    RaiseSlaWarning,
    ReceiveHandoff,
    RecordSlaBreach,
    RequestDocuments,
    ReturnCase,
    SupplyDocuments,
    escalations_owed,
    fold,
    timer_commands_due,
)
from shared.contracts.cases import (
    CaseEscalated,
    CaseHandedOff,
    CaseStatus,
    HandoffReceived,
    SlaBreached,
    SlaClockStopped,
    SlaTimerScheduled,
    SlaWarningRaised,
)
from shared.reference import CHINA_TZ, Level
from tests.unit.cases.case_story import CAST, STATION, TOWNSHIP

pytestmark = pytest.mark.unit
LIC = "labour_inspection_complaint"  # escalates automatically after a community breach
LIC_DOCUMENTS = ("id_card", "complaint_form", "evidence_materials", "employer_information")


def cst(*args: int) -> datetime:
    return datetime(*args, tzinfo=CHINA_TZ)


def hours_until(story, moment: datetime) -> float:
    return (moment - story.start).total_seconds() / 3600


def test_the_warning_fires_at_80_percent_of_the_budget(given, story):
    timer = fold(story.accepted()).timer
    assert timer.warn_at == cst(2026, 3, 6, 10) and timer.due_at == cst(2026, 3, 9, 10)
    given(story.accepted()).when(story.cmd(
        RaiseSlaWarning, CAST.clock, hours_until(story, timer.warn_at), timer_no=1,
    )).then(SlaWarningRaised(
        case_id=story.case_id, at=timer.warn_at, actor=CAST.clock, timer_no=1,
        level=Level.COMMUNITY, unit=STATION, owner=CAST.clerk.user_id, due_at=timer.due_at,
    ))


def test_a_warning_fired_twice_is_recorded_once(given, story):
    warn = story.cmd(RaiseSlaWarning, CAST.clock, 24 * 5, timer_no=1)
    given([*story.accepted(), *story.history_after(story.accepted(), warn)]).when(
        story.cmd(RaiseSlaWarning, CAST.clock, 24 * 5 + 1, timer_no=1)
    ).then_nothing()


def test_the_breach_is_charged_to_the_level_that_used_the_time(given, story):
    due = fold(story.at_township()).timer.due_at
    [breach] = given(story.at_township()).when(
        story.cmd(RecordSlaBreach, CAST.clock, hours_until(story, due), timer_no=2)
    ).then(SlaBreached)
    assert (breach.level, breach.unit, breach.owner) == (
        Level.TOWNSHIP, TOWNSHIP, CAST.town.user_id
    )


def test_a_breach_fired_twice_is_recorded_once(given, story):
    history = [*story.accepted(), *story.history_after(
        story.accepted(), story.cmd(RecordSlaBreach, CAST.clock, 24 * 8, timer_no=1))]
    given(history).when(story.cmd(RecordSlaBreach, CAST.clock, 24 * 9, timer_no=1)).then_nothing()


def test_a_late_level_stops_its_clock_late(given, story):
    _, stopped, _ = given(story.accepted()).when(
        story.cmd(HandOffCase, CAST.clerk, 24 * 10)
    ).then(CaseHandedOff, SlaClockStopped, SlaTimerScheduled)
    assert stopped.on_time is False and stopped.level == Level.COMMUNITY


def test_a_stale_timer_records_nothing(given, story):
    given(story.at_township()).when(
        story.cmd(RecordSlaBreach, CAST.clock, 24 * 30, timer_no=1)
    ).then_nothing()


def test_a_paused_clock_neither_warns_nor_breaches(given, story):
    history = story.history(
        story.submit(documents=("id_card",)), story.cmd(AcceptCase, CAST.clerk, 1),
        story.cmd(RequestDocuments, CAST.clerk, 2),
    )
    given(history).when(story.cmd(RecordSlaBreach, CAST.clock, 24 * 30, timer_no=1)).then_nothing()
    assert timer_commands_due(fold(history), story.at(24 * 30), CAST.clock) == []


def test_a_level_warned_before_a_pause_is_not_warned_again_after_it(given, story):
    history = story.history(
        story.submit(documents=("id_card",)), story.cmd(AcceptCase, CAST.clerk, 1),
        story.cmd(RaiseSlaWarning, CAST.clock, 24 * 5, timer_no=1),
        story.cmd(RequestDocuments, CAST.clerk, 24 * 5),
        story.cmd(SupplyDocuments, CAST.clerk, 24 * 6, documents=(
            "household_register", "application_form", "income_certificate",
            "property_declaration", "bank_account",
        )),
    )
    assert fold(history).timer.timer_no == 2
    given(history).when(story.cmd(RaiseSlaWarning, CAST.clock, 24 * 7, timer_no=2)).then_nothing()


def test_the_clock_lists_what_is_due(story):
    state = fold(story.accepted())
    assert timer_commands_due(state, story.at(2), CAST.clock) == []
    due = timer_commands_due(state, state.timer.due_at, CAST.clock)
    assert [type(c) for c in due] == [RaiseSlaWarning, RecordSlaBreach]


def test_a_breach_escalates_where_the_catalogue_asks(given, story, ref):
    history = story.history(
        story.submit(service=LIC, documents=()), story.cmd(AcceptCase, CAST.clerk, 1),
    )
    due = fold(history).timer.due_at
    assert due == cst(2026, 3, 3, 10)  # one working day
    [breach] = given(history).when(
        story.cmd(RecordSlaBreach, CAST.clock, hours_until(story, due), timer_no=1)
    ).then(SlaBreached)
    breached = fold([*history, breach])
    [escalate] = escalations_owed(breached, due, CAST.clock, ref)
    assert isinstance(escalate, EscalateOverdueCase)
    escalated, stopped, started = given([*history, breach]).when(escalate).then(
        CaseEscalated(
            case_id=story.case_id, at=due, actor=CAST.clock, from_unit=STATION,
            from_level=Level.COMMUNITY, to_unit=TOWNSHIP, to_level=Level.TOWNSHIP,
            owner=CAST.clerk.user_id, timer_no=1,
        ), SlaClockStopped, SlaTimerScheduled,
    )
    assert stopped.on_time is True  # exactly at the limit
    after = [*history, breach, escalated, stopped, started]
    assert fold(after).status == CaseStatus.HANDED_OFF
    given(after).when(escalate).then_nothing()
    given(after).when(story.cmd(ReceiveHandoff, CAST.town, 30)).then(HandoffReceived)


def test_no_escalation_where_the_catalogue_does_not_ask(story, ref):
    history = story.accepted()
    events = story.history_after(history, story.cmd(RecordSlaBreach, CAST.clock, 24 * 8,
                                                    timer_no=1))
    assert escalations_owed(fold([*history, *events]), story.at(24 * 9), CAST.clock, ref) == []


def breached_lic(story) -> list:
    """A labour-inspection complaint breached at the community, its escalation not yet sent."""
    history = story.history(
        story.submit(service=LIC, documents=()), story.cmd(AcceptCase, CAST.clerk, 1),
    )
    due = fold(history).timer.due_at
    return [*history, *story.history_after(history, story.cmd(
        RecordSlaBreach, CAST.clock, hours_until(story, due), timer_no=1))]


def test_an_escalation_stays_owed_until_done_and_is_sent_at_the_clocks_time(given, story, ref):
    """Owed from the case's state, not sent once in answer to the breach: an escalation that
    failed after the breach is still owed later, at the clock's time (the breach's own is
    older than a note added since, which the case would refuse)."""
    breached = [*breached_lic(story), *story.history_after(
        breached_lic(story), story.cmd(AddNote, CAST.clerk, 30, text="applicant called"))]
    [escalate] = escalations_owed(fold(breached), story.at(31), CAST.clock, ref)
    assert escalate == EscalateOverdueCase(case_id=story.case_id, at=story.at(31),
                                           actor=CAST.clock, timer_no=1)
    done = given(breached).when(escalate).then(CaseEscalated, SlaClockStopped, SlaTimerScheduled)
    assert escalations_owed(fold([*breached, *done]), story.at(32), CAST.clock, ref) == []
    given([*breached, *done]).when(escalate).then_nothing()  # fired twice: recorded once


def test_a_level_breached_on_an_earlier_timer_owes_no_escalation_again(story, ref):
    """The breach of a level is carried to its later timers (it is not recorded twice), but only
    the timer it was recorded on owes an escalation: the case returned to the community after
    escalating is not sent straight back up, nor one resumed after a pause."""
    escalated = story.history_after(breached_lic(story), *escalations_owed(
        fold(breached_lic(story)), story.at(26), CAST.clock, ref))
    returned = [*breached_lic(story), *escalated, *story.history_after(
        [*breached_lic(story), *escalated], story.cmd(ReceiveHandoff, CAST.town, 27),
        story.cmd(ReturnCase, CAST.town, 28, reasons=("see the employer first",)))]
    timer = fold(returned).timer
    assert (timer.level, timer.breached, timer.timer_no) == (Level.COMMUNITY, True, 3)
    assert escalations_owed(fold(returned), story.at(29), CAST.clock, ref) == []
    paused = [*breached_lic(story), *story.history_after(
        breached_lic(story), story.cmd(RequestDocuments, CAST.clerk, 26, documents=("id_card",)),
        story.cmd(SupplyDocuments, CAST.clerk, 27, documents=LIC_DOCUMENTS))]
    assert fold(paused).timer.breached
    assert escalations_owed(fold(paused), story.at(28), CAST.clock, ref) == []


def test_a_breach_while_the_case_was_on_its_way_owes_no_escalation_once_received(story, ref):
    """As before escalations were owed: a level breached before it received the case (the
    clock runs from the hand-off) is not escalated when it then receives it."""
    history = story.history(
        story.submit(service=LIC, documents=()), story.cmd(AcceptCase, CAST.clerk, 1),
        story.cmd(HandOffCase, CAST.clerk, 2),
    )
    due = fold(history).timer.due_at
    received = [*history, *story.history_after(
        history, story.cmd(RecordSlaBreach, CAST.clock, hours_until(story, due), timer_no=2),
        story.cmd(ReceiveHandoff, CAST.town, hours_until(story, due) + 1))]
    assert fold(received).timer.breached and fold(received).level == Level.TOWNSHIP
    assert escalations_owed(fold(received), due + (due - story.start), CAST.clock, ref) == []


async def test_a_failed_tick_of_the_sla_clock_is_logged_and_left_to_the_next() -> None:
    """An exception out of a Faust timer crashes the whole app and every later tick with it:
    a tick that fails (here the database is away) reports it and returns."""
    import contextlib
    from collections.abc import AsyncIterator
    from types import SimpleNamespace
    from typing import Any, cast

    from services.cases.agents import fire_sla_timers_once
    from services.cases.metrics import SlaTicks

    class AwayPool:
        @contextlib.asynccontextmanager
        async def acquire(self) -> AsyncIterator[Any]:
            raise OSError("connection refused")
            yield

    service = SimpleNamespace(pool=AwayPool(), commands=None, sla_ticks=SlaTicks(),
                              settings=SimpleNamespace(sla_tick_s=5.0))
    assert await fire_sla_timers_once(cast(Any, service), lambda: datetime.now(CHINA_TZ)) is False
    assert (service.sla_ticks.ticks, service.sla_ticks.failures) == (1, 1)  # on /metrics
