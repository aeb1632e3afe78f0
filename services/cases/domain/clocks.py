"""The SLA clock events a transition emits: a level's clock starts (or resumes), pauses while
the applicant is asked for documents, and stops when the level is done with the case."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from services.cases.domain import sla
from services.cases.domain.state import Case, Timer
from shared.contracts.cases import Actor, SlaClockPaused, SlaClockStopped, SlaTimerScheduled
from shared.reference import Level, Reference


def start_clock(
    case: Case, *, level: Level, unit: str, at: datetime, actor: Actor, ref: Reference,
    reason: Literal["started", "resumed", "restarted"] = "started", used: int | None = None,
) -> SlaTimerScheduled:
    """Schedule ``level``'s clock from ``at``, charging what the level already used this round."""
    service = ref.catalogue.service(case.service_code)
    budget = service.budget_for(level)
    used_seconds = case.used_seconds.get(level, 0) if used is None else used
    planned = sla.plan(
        ref.calendar, starts_at=at, budget_days=budget, used_seconds=used_seconds,
        warning_share=service.warning_share,
    )
    return SlaTimerScheduled(
        case_id=case.case_id, at=at, actor=actor, timer_no=case.timers_scheduled + 1,
        level=level, unit=unit, budget_days=budget, used_seconds=used_seconds,
        starts_at=planned.starts_at, warn_at=planned.warn_at, due_at=planned.due_at,
        reason=reason,
    )


def used_by(timer: Timer, at: datetime, ref: Reference) -> int:
    """Working seconds the timer's level has used by ``at`` (this round)."""
    return timer.used_before + sla.working_seconds_between(ref.calendar, timer.starts_at, at)


def stop_clock(case: Case, timer: Timer, at: datetime, actor: Actor, ref: Reference) -> (
    SlaClockStopped
):
    used = used_by(timer, at, ref)
    budget = timer.budget_days * sla.DAY_SECONDS
    return SlaClockStopped(
        case_id=case.case_id, at=at, actor=actor, timer_no=timer.timer_no, level=timer.level,
        unit=timer.unit, used_seconds=used, budget_seconds=budget, on_time=used <= budget,
    )


def pause_clock(case: Case, timer: Timer, at: datetime, actor: Actor, ref: Reference) -> (
    SlaClockPaused
):
    return SlaClockPaused(
        case_id=case.case_id, at=at, actor=actor, timer_no=timer.timer_no, level=timer.level,
        unit=timer.unit, used_seconds=used_by(timer, at, ref),
    )
