"""Constrained types for what callers send over HTTP (bodies and query parameters), so that
bad input is refused with a 422 naming the field instead of failing later in PostgreSQL (a
500 at the API, or a projection that can never apply a stored event)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator

from shared.reference.calendar import CHINA_TZ

# C0 control characters other than tab, line feed and carriage return: PostgreSQL's text
# refuses NUL outright, and none of the others has a place in anything a person types.
CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")
BIGINT_MAX = 2**63 - 1
"""The largest PostgreSQL ``bigint``: the bound of log positions, versions and offsets."""
_MONTH = re.compile(r"[0-9]{4}-(0[1-9]|1[0-2])")  # ASCII digits: \d takes any script


def control_problem(value: str) -> str | None:
    """What is wrong with ``value`` if it holds a control character, else None."""
    found = CONTROL.search(value)
    if found is None:
        return None
    return (f"must not contain control characters (U+{ord(found.group()):04X} at "
            f"character {found.start()})")


def _no_control(value: str) -> str:
    problem = control_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


def _month(value: str) -> str:
    if not _MONTH.fullmatch(value):
        raise ValueError("must be a month as YYYY-MM, the month 01 to 12")
    return value


def _storable(value: datetime) -> datetime:
    # PostgreSQL stores timestamptz in UTC: a moment near year 1 or 9999 with an offset has
    # no UTC form in Python (asyncpg raised OverflowError, a 500)
    if value.tzinfo is not None:
        try:
            value.astimezone(UTC)
        except OverflowError as exc:
            raise ValueError("is out of the range of dates") from exc
    return value


def _china_time(value: datetime) -> datetime:
    # without a zone, the database driver would read the moment in the server's own zone
    if value.tzinfo is None:
        return value.replace(tzinfo=CHINA_TZ)
    return value


Text = Annotated[str, AfterValidator(_no_control)]
"""Free text a person types (a note, a reason, a name): no C0 control characters except tab,
line feed and carriage return."""
Month = Annotated[str, AfterValidator(_month)]
"""A calendar month, ``YYYY-MM``."""
Moment = Annotated[datetime, AfterValidator(_storable)]
"""A moment PostgreSQL can store (its UTC form exists)."""
ChinaMoment = Annotated[datetime, AfterValidator(_china_time), AfterValidator(_storable)]
"""A ``Moment`` in which a date or time given without a zone is China Standard Time, the time
the network works in (and counts its SLA months in): a supervisor's "from 1 March" is from
midnight in Kunming, not in whatever zone the server runs."""
