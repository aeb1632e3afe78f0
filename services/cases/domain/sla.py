"""Working-time arithmetic for SLA clocks (pure: the calendar is passed in).

A working day counts in full, 00:00–24:00 China Standard Time; other days count nothing. A budget
of N working days is N × 24 h of working time, so a case received at 10:00 on a Friday with a
one-day budget is due at 10:00 on the next working day. Time is measured in whole seconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from fractions import Fraction
from typing import Protocol

from shared.reference import CHINA_TZ

DAY_SECONDS = 86_400
_ONE_DAY = timedelta(days=1)
_MAX_DAYS_SEARCHED = 3_660


class WorkingDays(Protocol):
    def is_working_day(self, day: date) -> bool: ...


@dataclass(frozen=True, slots=True)
class SlaPlan:
    """When a level's clock that starts at ``starts_at`` warns and falls due."""

    starts_at: datetime
    warn_at: datetime
    due_at: datetime


def working_seconds_between(calendar: WorkingDays, start: datetime, end: datetime) -> int:
    """Working time between two instants, in whole seconds (0 when ``end`` ≤ ``start``)."""
    if end <= start:
        return 0
    total = timedelta()
    day = start.astimezone(CHINA_TZ).date()
    last = end.astimezone(CHINA_TZ).date()
    while day <= last:
        if calendar.is_working_day(day):
            opens = _midnight(day)
            total += max(timedelta(), min(end, opens + _ONE_DAY) - max(start, opens))
        day += _ONE_DAY
    return int(total.total_seconds())


def add_working_seconds(calendar: WorkingDays, start: datetime, seconds: int) -> datetime:
    """The instant at which ``seconds`` of working time have passed since ``start`` (UTC)."""
    cursor = start.astimezone(CHINA_TZ)
    remaining = timedelta(seconds=seconds)
    if remaining <= timedelta():
        return start.astimezone(UTC)
    for _ in range(_MAX_DAYS_SEARCHED):
        closes = _midnight(cursor.date() + _ONE_DAY)
        if calendar.is_working_day(cursor.date()):
            if remaining <= closes - cursor:
                return (cursor + remaining).astimezone(UTC)
            remaining -= closes - cursor
        cursor = closes
    raise ValueError(f"no working time found within {_MAX_DAYS_SEARCHED} days of {start}")


def plan(
    calendar: WorkingDays, *, starts_at: datetime, budget_days: int, used_seconds: int = 0,
    warning_share: float = 0.8,
) -> SlaPlan:
    """Warning and due instants for a level that starts (or resumes) at ``starts_at`` having
    already used ``used_seconds`` of its ``budget_days``."""
    budget = budget_days * DAY_SECONDS
    # the share as the catalogue writes it (0.55), not its binary approximation, whose
    # product with a budget can land just above a whole second and be rounded up past it
    warn_after = math.ceil(budget * Fraction(str(warning_share)))
    return SlaPlan(
        starts_at=starts_at.astimezone(UTC),
        warn_at=add_working_seconds(calendar, starts_at, warn_after - used_seconds),
        due_at=add_working_seconds(calendar, starts_at, budget - used_seconds),
    )


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time(), CHINA_TZ)
