"""Shared pieces of the intake integration tests: a controlled clock, tokens, and the search
for personal data that must never appear in plain form."""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime, timedelta

from shared.auth import Principal, mint_token
from shared.reference import CHINA_TZ, Reference
from shared.settings import Settings
from tests.unit.intake.people import Person

SETTINGS = Settings()
_ID_RUNS = re.compile(r"[0-9Xx]{18,}")
_PHONE_RUNS = re.compile(r"\d{11,}")
_CJK_RUNS = re.compile(r"[\u3400-\u9fff]+")


class Clock:
    """Monday 2 March 2026, 09:00 in Kunming; a second later at every reading."""

    def __init__(self) -> None:
        self.now = datetime(2026, 3, 2, 9, 0, tzinfo=CHINA_TZ)

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


def bearer(user_id: str, ref: Reference) -> dict[str, str]:
    member = ref.staff.member(user_id)
    token = mint_token(Principal(user_id=user_id, role=str(member.role), unit=member.unit),
                       SETTINGS)
    return {"Authorization": f"Bearer {token}"}


def leaked(texts: Iterable[str], people: Iterable[Person]) -> set[str]:
    """Every ID number, phone, name or address of ``people`` found in ``texts`` (plain)."""
    people = list(people)
    ids = {p.id_number.upper() for p in people}
    phones = {p.phone for p in people}
    names = {p.name for p in people}
    addresses = {p.address for p in people}
    found: set[str] = set()
    for text in texts:
        found |= _windows(_ID_RUNS, text.upper(), 18) & ids
        found |= _windows(_PHONE_RUNS, text, 11) & phones
        found |= {n for run in _CJK_RUNS.findall(text) for n in names if n in run}
        found |= {a for a in addresses if a in text}
    return found


def _windows(runs: re.Pattern[str], text: str, width: int) -> set[str]:
    return {run[i:i + width] for run in runs.findall(text) for i in range(len(run) - width + 1)}
