"""The SLA clock's commands: warnings, breaches, idempotent firing, auto-escalation."""

from __future__ import annotations

from datetime import datetime

import pytest

from services.cases.domain import (
    AcceptCase,
    EscalateOverdueCase,
    HandOffCase,
    RaiseSlaWarning,
    ReceiveHandoff,
    RecordSlaBreach,
    RequestDocuments,
    SupplyDocuments,
    fold,
    timer_commands_due,
    when_sla_breached_escalate,
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
    [escalate] = when_sla_breached_escalate(breached, breach, ref)
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
    assert when_sla_breached_escalate(fold([*history, *events]), events[0], ref) == []


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
