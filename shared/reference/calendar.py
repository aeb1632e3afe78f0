"""The working-day calendar: China's official holidays and adjusted working days (调休).

Years known to the ``chinese_calendar`` package come from it; an overrides file adds years it
does not know yet (and may correct a known day). For a year with neither, the calendar warns once
and falls back to weekends-only until an override for that year is added.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import date, timedelta, timezone
from functools import cache
from types import MappingProxyType

import chinese_calendar
from pydantic import BaseModel, ConfigDict, Field

from shared.logging import get_logger

CHINA_TZ = timezone(timedelta(hours=8), "CST")
"""China Standard Time: UTC+8 all year (no daylight saving), the zone working days are counted
in."""


class DayOverride(BaseModel):
    """An official decision about one day: a holiday (``working=false``) or an adjusted working
    day (``working=true``, e.g. a Saturday worked around Spring Festival)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    date: date
    working: bool
    name: str = Field(default="", max_length=100)


@cache
def package_knows_year(year: int) -> bool:
    """True when the installed ``chinese_calendar`` has official data for ``year``."""
    try:
        chinese_calendar.is_workday(date(year, 6, 1))
    except NotImplementedError:
        return False
    return True


class WorkingCalendar:
    """Answers "is this a working day?" for any date.

    Precedence: an override for the day; else the package for the years it knows; else, for
    a year with overrides, weekdays; else weekdays with a one-time warning per year
    (``working_calendar_year_unknown``).
    """

    __slots__ = ("_answers", "_override_years", "_overrides", "_warned")

    def __init__(self, overrides: Iterable[DayOverride] = ()) -> None:
        by_day = {o.date: o for o in overrides}
        self._overrides: Mapping[date, DayOverride] = MappingProxyType(by_day)
        self._override_years = frozenset(day.year for day in by_day)
        self._warned: set[int] = set()
        self._answers: dict[date, bool] = {}  # the SLA maths asks about the same days often

    def is_working_day(self, day: date) -> bool:
        answer = self._answers.get(day)
        if answer is None:
            answer = self._answers[day] = self._is_working_day(day)
        return answer

    def _is_working_day(self, day: date) -> bool:
        override = self._overrides.get(day)
        if override is not None:
            return override.working
        if package_knows_year(day.year):
            return bool(chinese_calendar.is_workday(day))
        if day.year not in self._override_years:
            self._warn_unknown_year(day.year)
        return day.weekday() < 5

    def knows_year(self, year: int) -> bool:
        """True when ``year`` has official data (from the package or from overrides)."""
        return year in self._override_years or package_knows_year(year)

    @property
    def overrides(self) -> Mapping[date, DayOverride]:
        return self._overrides

    def _warn_unknown_year(self, year: int) -> None:
        if year in self._warned:
            return
        self._warned.add(year)
        get_logger(__name__).warning(
            "working_calendar_year_unknown",
            year=year,
            fallback="weekends_only",
            fix=f"add {year}'s official holidays and adjusted working days to the calendar "
            "overrides file (calendar_overrides.csv) or upgrade chinese-calendar",
        )
