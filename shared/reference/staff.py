"""The staff directory: who works where, in which role, and who is their designated backup."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from enum import StrEnum
from types import MappingProxyType
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from shared.reference.errors import UnknownReference
from shared.reference.org import Level


class Role(StrEnum):
    """What a person (or an automated system) may do. ``system`` never appears in the staff
    directory: it marks other government systems and the SLA clock acting on cases."""

    STATION_CLERK = "station_clerk"
    TOWNSHIP_OFFICER = "township_officer"
    COUNTY_OFFICER = "county_officer"
    SUPERVISOR = "supervisor"
    AUDITOR = "auditor"
    SYSTEM = "system"


CASE_ROLE_AT_LEVEL: Mapping[Level, Role] = MappingProxyType({
    Level.COMMUNITY: Role.STATION_CLERK,
    Level.TOWNSHIP: Role.TOWNSHIP_OFFICER,
    Level.COUNTY: Role.COUNTY_OFFICER,
})
"""The role that works cases held at each level (the city holds no cases)."""

ROLE_LEVELS: Mapping[Role, frozenset[Level]] = MappingProxyType({
    Role.STATION_CLERK: frozenset({Level.COMMUNITY}),
    Role.TOWNSHIP_OFFICER: frozenset({Level.TOWNSHIP}),
    Role.COUNTY_OFFICER: frozenset({Level.COUNTY}),
    Role.SUPERVISOR: frozenset({Level.CITY, Level.COUNTY, Level.TOWNSHIP}),
    Role.AUDITOR: frozenset({Level.CITY, Level.COUNTY}),
    Role.SYSTEM: frozenset(),
})
"""The levels at which a staff member of each role may be posted."""


def _blank_is_none(value: object) -> object:
    return None if value == "" else value


class StaffMember(BaseModel):
    """A person in the directory. ``post`` A is the holder, B the designated backup (AB角)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    user_id: str = Field(pattern=r"^[a-z][a-z0-9._-]*$", max_length=64)
    name: str = Field(min_length=1)
    role: Role
    unit: str
    post: Literal["A", "B"]
    backup: Annotated[str | None, BeforeValidator(_blank_is_none)] = None
    synthetic: bool = False


class StaffDirectory:
    """Immutable staff lookups: by id, by unit, the duty clerk of a station, a person's backup."""

    __slots__ = ("_by_id", "_by_unit")

    def __init__(self, members: Iterable[StaffMember]) -> None:
        by_id = {m.user_id: m for m in members}
        by_unit: dict[str, list[StaffMember]] = {}
        for member in by_id.values():
            by_unit.setdefault(member.unit, []).append(member)
        self._by_id: Mapping[str, StaffMember] = MappingProxyType(by_id)
        self._by_unit = MappingProxyType({
            unit: tuple(sorted(people, key=lambda m: (m.post, m.user_id)))
            for unit, people in by_unit.items()
        })

    def member(self, user_id: str) -> StaffMember:
        """The person with ``user_id``; raise ``UnknownReference`` if there is none."""
        found = self._by_id.get(user_id)
        if found is None:
            raise UnknownReference("staff member", user_id)
        return found

    def get(self, user_id: str) -> StaffMember | None:
        return self._by_id.get(user_id)

    def at_unit(self, unit: str, role: Role | None = None) -> tuple[StaffMember, ...]:
        """Everyone posted at ``unit`` (optionally only in ``role``), A posts first."""
        people = self._by_unit.get(unit, ())
        return people if role is None else tuple(m for m in people if m.role == role)

    def duty_clerk(self, station: str) -> StaffMember:
        """The clerk holding post A at ``station`` (the first to receive walk-in residents)."""
        clerks = self.at_unit(station, Role.STATION_CLERK)
        if not clerks:
            raise UnknownReference("duty clerk of station", station)
        return clerks[0]

    def backup_of(self, user_id: str) -> StaffMember | None:
        """The designated backup of ``user_id`` (who may act on their behalf)."""
        backup = self.member(user_id).backup
        return None if backup is None else self._by_id[backup]

    def __contains__(self, user_id: object) -> bool:
        return user_id in self._by_id

    def __iter__(self) -> Iterator[StaffMember]:
        return iter(self._by_id.values())

    def __len__(self) -> int:
        return len(self._by_id)
