"""Who works where: for a station, the clerks (A and backup B), and above it the township and
county officers and supervisors, all from the staff directory (reference data)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from shared.auth import Principal, mint_token
from shared.reference import Level, Reference, Role
from shared.settings import Settings


@dataclass(frozen=True)
class Post:
    """A post at a unit: its holder (A) and the designated backup (B)."""

    unit: str
    a: str
    b: str | None
    supervisor: str | None


@dataclass(frozen=True)
class Cast:
    """The posts along one station's chain, by level."""

    station: str
    posts: dict[str, Post]

    def at(self, level: str) -> Post:
        return self.posts[level]


def _post(ref: Reference, unit: str, role: Role) -> Post:
    people = ref.staff.at_unit(unit, role)
    holder = people[0]
    supervisors = ref.staff.at_unit(unit, Role.SUPERVISOR)
    return Post(unit=unit, a=holder.user_id, b=holder.backup,
                supervisor=supervisors[0].user_id if supervisors else None)


def cast_of(ref: Reference, station: str) -> Cast:
    """The posts that work a case received at ``station``, community up to county."""
    township = ref.org.ancestor_at(station, Level.TOWNSHIP)
    county = ref.org.ancestor_at(station, Level.COUNTY)
    assert township is not None and county is not None, station
    return Cast(station, {
        "community": _post(ref, station, Role.STATION_CLERK),
        "township": _post(ref, township.code, Role.TOWNSHIP_OFFICER),
        "county": _post(ref, county.code, Role.COUNTY_OFFICER),
    })


def receiving_stations(ref: Reference) -> list[str]:
    """Every station with a clerk and a township and county officer above it."""
    found = []
    for unit in ref.org:
        if unit.level != Level.COMMUNITY or not ref.staff.at_unit(unit.code,
                                                                  Role.STATION_CLERK):
            continue
        township = ref.org.ancestor_at(unit.code, Level.TOWNSHIP)
        county = ref.org.ancestor_at(unit.code, Level.COUNTY)
        if (township and county and ref.staff.at_unit(township.code, Role.TOWNSHIP_OFFICER)
                and ref.staff.at_unit(county.code, Role.COUNTY_OFFICER)):
            found.append(unit.code)
    return sorted(found)


class Tokens:
    """Bearer tokens for staff members, minted once each (the demo is its own identity
    provider: it holds the development JWT secret from the same settings as the services)."""

    def __init__(self, ref: Reference, settings: Settings) -> None:
        self._ref, self._settings = ref, settings
        self._mint = lru_cache(maxsize=None)(self._token)

    def _token(self, user_id: str) -> str:
        member = self._ref.staff.member(user_id)
        return mint_token(Principal(user_id=user_id, role=str(member.role), unit=member.unit,
                                    name=member.name), self._settings)

    def header(self, user_id: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._mint(user_id)}"}
