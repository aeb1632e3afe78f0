"""Cases told step by step through the real domain (``decide``/``evolve``), at chosen times: the
events a projector gets for a reopened case, or for one breached at the station and handed up.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta

from services.cases.domain import (
    AcceptCase,
    CloseCase,
    DecideCase,
    HandOffCase,
    RaiseSlaWarning,
    ReceiveHandoff,
    RecordSlaBreach,
    ReopenCase,
    ReturnCase,
    SubmitCase,
    decide,
    evolve,
    sla_clock_actor,
)
from services.cases.domain.commands import Command
from services.cases.domain.state import Case
from services.projections.projectors import RawEvent
from shared.contracts.canonical import canonical_json
from shared.contracts.cases import Actor, CaseEvent, EncryptedApplicant, Outcome
from shared.reference import CHINA_TZ, Reference

STATION, TOWNSHIP, COUNTY = "530102001001", "530102001", "530102"
CLERK, OFFICER, COUNTY_OFFICER = "clerk.530102001001.a", "officer.530102001.a", "officer.530102.a"
START = datetime(2026, 3, 2, 9, 0, tzinfo=CHINA_TZ)  # a Monday: every hour is working time
SERVICE = "minimum_living_guarantee"  # community -> township -> county, which decides


def actor(user_id: str, ref: Reference) -> Actor:
    member = ref.staff.member(user_id)
    return Actor(user_id=member.user_id, role=member.role, unit=member.unit)


def told(ref: Reference, steps: Sequence[Command], state: Case | None = None,
         ) -> tuple[Case, list[CaseEvent]]:
    """The case after ``steps`` (from ``state``) and every event they made."""
    events: list[CaseEvent] = []
    for command in steps:
        for event in decide(state, command, ref):
            state = evolve(state, event)
            events.append(event)
    assert state is not None
    return state, events


def raw_events(events: Sequence[CaseEvent], first_position: int = 1) -> list[RawEvent]:
    """The events of one case as the projections read them from the log."""
    return [RawEvent(first_position + i, f"case-{e.case_id}", i + 1, e.event_type,
                     e.schema_version, canonical_json(e.model_dump(mode="json")), e.at)
            for i, e in enumerate(events)]


def reopened_at_the_county(ref: Reference, case_id: uuid.UUID | None = None,
                           ) -> tuple[Case, list[CaseEvent]]:
    """The county takes 2 h to decide, the case is closed, reopened, and decided again 1 h
    later: two rounds of the county's clock."""
    case_id = case_id or uuid.uuid4()
    clerk, officer, county = (actor(u, ref) for u in (CLERK, OFFICER, COUNTY_OFFICER))

    def hours(n: float) -> datetime:
        return START + timedelta(hours=n)

    return told(ref, [
        submitted(case_id, clerk, "KM-REOPEN-1"),
        AcceptCase(case_id=case_id, at=hours(0), actor=clerk),
        HandOffCase(case_id=case_id, at=hours(1), actor=clerk),
        ReceiveHandoff(case_id=case_id, at=hours(1), actor=officer),
        HandOffCase(case_id=case_id, at=hours(2), actor=officer),
        ReceiveHandoff(case_id=case_id, at=hours(2), actor=county),
        DecideCase(case_id=case_id, at=hours(4), actor=county, outcome=Outcome.REFUSED,
                   basis="income above the line"),
        CloseCase(case_id=case_id, at=hours(4), actor=county),
        ReopenCase(case_id=case_id, at=hours(5), actor=county, reason="new income proof"),
        DecideCase(case_id=case_id, at=hours(6), actor=county, outcome=Outcome.REFUSED,
                   basis="still above the line"),
        CloseCase(case_id=case_id, at=hours(6), actor=county),
    ])


def submitted(case_id: uuid.UUID, clerk: Actor, tracking_no: str) -> SubmitCase:
    return SubmitCase(case_id=case_id, at=START, actor=clerk, tracking_no=tracking_no,
                      service_code=SERVICE, visit_id=uuid.uuid4(), station=STATION,
                      applicant=EncryptedApplicant(subject_id="s", id_hash="h"))


def breached_at_the_station(ref: Reference) -> tuple[Case, list[CaseEvent]]:
    """The station is warned, then breached, then hands the case up to the township (which
    receives it): a township clock that has not warned yet."""
    case_id = uuid.uuid4()
    clerk, officer, clock = actor(CLERK, ref), actor(OFFICER, ref), sla_clock_actor(ref)
    state, events = told(ref, [submitted(case_id, clerk, "KM-BREACH-1"),
                               AcceptCase(case_id=case_id, at=START, actor=clerk)])
    assert state.timer is not None
    timer, due = state.timer.timer_no, state.timer.due_at
    state, more = told(ref, [
        RaiseSlaWarning(case_id=case_id, at=state.timer.warn_at, actor=clock, timer_no=timer),
        RecordSlaBreach(case_id=case_id, at=due, actor=clock, timer_no=timer),
        HandOffCase(case_id=case_id, at=due + timedelta(hours=1), actor=clerk),
        ReceiveHandoff(case_id=case_id, at=due + timedelta(hours=2), actor=officer),
    ], state)
    return state, events + more


def returned_to_the_station(ref: Reference, state: Case) -> tuple[Case, list[CaseEvent]]:
    """The township sends the case back down to the station it came from."""
    return told(ref, [ReturnCase(case_id=state.case_id, at=state.last_at + timedelta(hours=1),
                                 actor=actor(OFFICER, ref), reasons=("income proof unsigned",))],
                state)
