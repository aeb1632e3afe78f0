"""The organisation tree: city → county → township → community station (GB/T 2260-style codes)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from enum import StrEnum
from types import MappingProxyType
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from shared.reference.errors import UnknownReference


class Level(StrEnum):
    """An administrative level, top down. ``depth`` is 0 for the city, 3 for a station."""

    CITY = "city"
    COUNTY = "county"
    TOWNSHIP = "township"
    COMMUNITY = "community"

    @property
    def depth(self) -> int:
        return _DEPTH[self]

    @property
    def code_length(self) -> int:
        """Digits in a unit code at this level: 6, 6, 9, 12."""
        return _CODE_LENGTH[self]

    def is_above(self, other: Level) -> bool:
        """True when ``self`` is a higher (closer to the city) level than ``other``."""
        return self.depth < other.depth


_DEPTH = {Level.CITY: 0, Level.COUNTY: 1, Level.TOWNSHIP: 2, Level.COMMUNITY: 3}
_CODE_LENGTH = {Level.CITY: 6, Level.COUNTY: 6, Level.TOWNSHIP: 9, Level.COMMUNITY: 12}


class UnitKind(StrEnum):
    """What a unit is: a bureau (city, county), an office (township) or a service station."""

    BUREAU = "bureau"
    OFFICE = "office"
    STATION = "station"
    ENTERPRISE_STATION = "enterprise_station"


KINDS_BY_LEVEL: Mapping[Level, frozenset[UnitKind]] = MappingProxyType({
    Level.CITY: frozenset({UnitKind.BUREAU}),
    Level.COUNTY: frozenset({UnitKind.BUREAU}),
    Level.TOWNSHIP: frozenset({UnitKind.OFFICE}),
    Level.COMMUNITY: frozenset({UnitKind.STATION, UnitKind.ENTERPRISE_STATION}),
})

_CODE = re.compile(r"^\d{6}(\d{3}){0,2}$")


def _blank_is_none(value: object) -> object:
    return None if value == "" else value


class Unit(BaseModel):
    """One unit of the service network."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    code: str = Field(description="GB/T 2260-style code: 530102, 530102001, 530102001001")
    name: str = Field(min_length=1)
    level: Level
    parent: Annotated[str | None, BeforeValidator(_blank_is_none)] = None
    kind: UnitKind
    synthetic: bool = False

    @field_validator("code")
    @classmethod
    def _code_is_digits(cls, value: str) -> str:
        if not _CODE.match(value):
            raise ValueError("must be 6, 9 or 12 digits")
        return value


class OrgTree:
    """The validated, immutable org tree with constant-time lookups.

    Build it with ``OrgTree(units)`` after validation (``load_org_tree`` does both); every
    relation (parent chain, children, descendants) is computed once here.
    """

    __slots__ = ("_ancestors", "_by_code", "_children", "_descendants", "_root")

    def __init__(self, units: Iterable[Unit]) -> None:
        by_code = {unit.code: unit for unit in units}
        children: dict[str, list[str]] = {code: [] for code in by_code}
        for unit in by_code.values():
            if unit.parent is not None:
                children[unit.parent].append(unit.code)
        ancestors = {code: _ancestors_of(code, by_code) for code in by_code}
        descendants: dict[str, list[str]] = {code: [] for code in by_code}
        for code in sorted(by_code):
            for ancestor in ancestors[code]:
                descendants[ancestor].append(code)
        roots = [unit for unit in by_code.values() if unit.parent is None]
        if len(roots) != 1:
            raise ValueError(f"an org tree has exactly one root, found {len(roots)}")
        self._root = roots[0]
        self._by_code: Mapping[str, Unit] = MappingProxyType(by_code)
        self._children = MappingProxyType({k: tuple(sorted(v)) for k, v in children.items()})
        self._ancestors = MappingProxyType(ancestors)
        self._descendants = MappingProxyType({k: tuple(v) for k, v in descendants.items()})

    def __reduce__(self) -> tuple[type[OrgTree], tuple[tuple[Unit, ...]]]:
        """Pickled as its units (a rebuild's fold processes get the tree so)."""
        return OrgTree, (tuple(self._by_code.values()),)

    @property
    def root(self) -> Unit:
        """The city."""
        return self._root

    def unit(self, code: str) -> Unit:
        """The unit with ``code``; raise ``UnknownReference`` if there is none."""
        found = self._by_code.get(code)
        if found is None:
            raise UnknownReference("unit", code)
        return found

    def get(self, code: str) -> Unit | None:
        return self._by_code.get(code)

    def parent_chain(self, code: str) -> tuple[Unit, ...]:
        """The unit's ancestors, parent first, ending at the city."""
        self.unit(code)
        return tuple(self._by_code[a] for a in self._ancestors[code])

    def ancestor_at(self, code: str, level: Level) -> Unit | None:
        """The unit itself or its ancestor at ``level`` (``None`` when ``level`` is below it)."""
        unit = self.unit(code)
        if unit.level == level:
            return unit
        return next((u for u in self.parent_chain(code) if u.level == level), None)

    def children(self, code: str) -> tuple[Unit, ...]:
        self.unit(code)
        return tuple(self._by_code[c] for c in self._children[code])

    def descendants(self, code: str) -> tuple[Unit, ...]:
        """Every unit under ``code`` (not including it), in code order."""
        self.unit(code)
        return tuple(self._by_code[c] for c in self._descendants[code])

    def is_within(self, code: str, ancestor: str) -> bool:
        """True when ``code`` is ``ancestor`` or lies under it (a jurisdiction check)."""
        return code == ancestor or ancestor in self._ancestors.get(code, ())

    def at_level(self, level: Level) -> tuple[Unit, ...]:
        return tuple(u for u in self._by_code.values() if u.level == level)

    def __contains__(self, code: object) -> bool:
        return code in self._by_code

    def __iter__(self) -> Iterator[Unit]:
        return iter(self._by_code.values())

    def __len__(self) -> int:
        return len(self._by_code)


def _ancestors_of(code: str, by_code: Mapping[str, Unit]) -> tuple[str, ...]:
    chain: list[str] = []
    parent = by_code[code].parent
    while parent is not None:
        if parent in chain or parent == code:
            raise ValueError(f"unit {code} is its own ancestor")
        chain.append(parent)
        parent = by_code[parent].parent
    return tuple(chain)
