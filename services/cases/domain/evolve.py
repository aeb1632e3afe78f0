"""``evolve(state, event)``: the state after one event. ``fold(events)``: the state after all.

Pure and total over ``CASE_EVENTS``; an event evolve does not know is a programming error.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import reduce, singledispatch

from services.cases.domain.state import WORKABLE, Case, Timer, frozen_map, replace
from shared.contracts import cases as e
from shared.contracts.cases import CaseEvent, CaseStatus
from shared.contracts.registry import DomainEvent
from shared.reference import Level


def evolve(state: Case | None, event: DomainEvent) -> Case:
    """Apply one event; every event also advances ``version`` and ``last_at``."""
    if not isinstance(event, CaseEvent):
        raise TypeError(f"{type(event).__name__} is not a case event")
    if state is None:
        if not isinstance(event, e.CaseSubmitted):
            raise ValueError(f"a case stream starts with CaseSubmitted, not {event.event_type}")
        return _opened(event)
    after = _apply(event, state)
    return replace(after, version=state.version + 1, last_at=max(state.last_at, event.at))


def fold(events: Iterable[DomainEvent], state: Case | None = None) -> Case | None:
    """The state after ``events`` (``None`` for an empty history)."""
    return reduce(evolve, events, state)


def _opened(event: e.CaseSubmitted) -> Case:
    return Case(
        case_id=event.case_id, tracking_no=event.tracking_no, service_code=event.service_code,
        visit_id=event.visit_id, station=event.station, applicant=event.applicant,
        status=CaseStatus.SUBMITTED, unit=event.station, level=Level.COMMUNITY,
        submitted_at=event.at, last_at=event.at,
        documents_provided=frozenset(event.documents_provided),
    )


@singledispatch
def _apply(event: CaseEvent, state: Case) -> Case:
    raise TypeError(f"evolve does not know {type(event).__name__}")


@_apply.register
def _(event: e.CaseSubmitted, state: Case) -> Case:
    raise ValueError(f"case {state.case_id} was already submitted")


@_apply.register
def _(event: e.CaseAccepted, state: Case) -> Case:
    return _owned_by(replace(state, status=CaseStatus.ACCEPTED), event.owner)


@_apply.register
def _(event: e.DocumentsRequested, state: Case) -> Case:
    return replace(
        state, status=CaseStatus.DOCUMENTS_REQUESTED, resume_status=state.status,
        documents_outstanding=frozenset(event.documents),
        documents_provided=state.documents_provided - set(event.documents),
        document_requests=event.request_no,
    )


@_apply.register
def _(event: e.DocumentsSupplied, state: Case) -> Case:
    outstanding = frozenset(event.outstanding)
    provided = state.documents_provided | set(event.documents)
    if outstanding:
        return replace(state, documents_outstanding=outstanding, documents_provided=provided)
    return replace(
        state, status=state.resume_status or CaseStatus.IN_REVIEW, resume_status=None,
        documents_outstanding=outstanding, documents_provided=provided,
    )


@_apply.register
def _(event: e.CaseHandedOff, state: Case) -> Case:
    return replace(state, status=CaseStatus.HANDED_OFF, unit=event.to_unit, level=event.to_level)


@_apply.register
def _(event: e.CaseEscalated, state: Case) -> Case:
    return replace(state, status=CaseStatus.HANDED_OFF, unit=event.to_unit, level=event.to_level)


@_apply.register
def _(event: e.HandoffReceived, state: Case) -> Case:
    return _owned_by(replace(state, status=CaseStatus.IN_REVIEW), event.owner)


@_apply.register
def _(event: e.CaseReturned, state: Case) -> Case:
    moved = replace(
        state, status=CaseStatus.RETURNED, unit=event.to_unit, level=event.to_level,
        documents_provided=state.documents_provided - set(event.documents),
    )
    return _owned_by(moved, event.owner)


@_apply.register
def _(event: e.OwnerReassigned, state: Case) -> Case:
    return _owned_by(state, event.to_owner)


@_apply.register
def _(event: e.CaseDecided, state: Case) -> Case:
    return replace(state, status=CaseStatus.DECIDED, outcome=event.outcome, basis=event.basis)


@_apply.register
def _(event: e.CaseClosed, state: Case) -> Case:
    return replace(state, status=CaseStatus.CLOSED, closed_at=event.at)


@_apply.register
def _(event: e.CaseWithdrawn, state: Case) -> Case:
    return replace(
        state, status=CaseStatus.WITHDRAWN, resume_status=None, timer=None,
        documents_outstanding=frozenset(),
    )


@_apply.register
def _(event: e.CaseReopened, state: Case) -> Case:
    return replace(
        _owned_by(state, event.owner), status=CaseStatus.REOPENED, outcome=None, basis=None,
        closed_at=None, used_seconds=frozen_map({}), warned_levels=frozenset(),
        breached_levels=frozenset(),
    )


@_apply.register
def _(event: e.NoteAdded, state: Case) -> Case:
    return replace(state, notes=state.notes + 1)


@_apply.register
def _(event: e.ExternalResultRecorded, state: Case) -> Case:
    return replace(state, external_results=state.external_results + 1)


@_apply.register
def _(event: e.SlaTimerScheduled, state: Case) -> Case:
    timer = Timer(
        timer_no=event.timer_no, level=event.level, unit=event.unit,
        budget_days=event.budget_days, used_before=event.used_seconds,
        starts_at=event.starts_at, warn_at=event.warn_at, due_at=event.due_at,
        warned=event.level in state.warned_levels, breached=event.level in state.breached_levels,
    )
    return replace(state, timer=timer, timers_scheduled=event.timer_no)


@_apply.register
def _(event: e.SlaClockPaused, state: Case) -> Case:
    return _clock_done(state, event.level, event.used_seconds)


@_apply.register
def _(event: e.SlaClockStopped, state: Case) -> Case:
    return _clock_done(state, event.level, event.used_seconds)


@_apply.register
def _(event: e.SlaWarningRaised, state: Case) -> Case:
    timer = None if state.timer is None else replace(state.timer, warned=True)
    return replace(state, timer=timer, warned_levels=state.warned_levels | {event.level})


@_apply.register
def _(event: e.SlaBreached, state: Case) -> Case:
    timer = None if state.timer is None else replace(
        state.timer, breached=True, breached_at_work=state.status in WORKABLE)
    return replace(state, timer=timer, breached_levels=state.breached_levels | {event.level})


def _owned_by(state: Case, owner: str) -> Case:
    return replace(
        state, owner=owner, owners_by_unit=frozen_map({**state.owners_by_unit, state.unit: owner})
    )


def _clock_done(state: Case, level: Level, used: int) -> Case:
    used_seconds = frozen_map({**state.used_seconds, level: used})
    stopping_current = state.timer is not None and state.timer.level == level
    return replace(state, timer=None if stopping_current else state.timer,
                   used_seconds=used_seconds)
