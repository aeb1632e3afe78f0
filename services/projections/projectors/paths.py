"""Where a unit sits in the org tree, as the read models index it."""

from __future__ import annotations

from shared.reference.org import Level, OrgTree

Path = tuple[str | None, str | None, str | None]
"""(county, township, community) of a unit: itself at its own level, its ancestors above."""


class UnitPaths:
    """Cached paths and ancestor chains of the units of ``org``. A unit the tree does not know
    has an empty path and is its own only ancestor (its rows stay queryable by unit)."""

    __slots__ = ("_chains", "_paths", "org")

    def __init__(self, org: OrgTree) -> None:
        self.org = org
        self._paths: dict[str, Path] = {}
        self._chains: dict[str, tuple[str, ...]] = {}

    def path(self, unit: str) -> Path:
        found = self._paths.get(unit)
        if found is None:
            found = self._paths[unit] = self._path(unit)
        return found

    def chain(self, unit: str) -> tuple[str, ...]:
        """The unit and all its ancestors, up to the city."""
        found = self._chains.get(unit)
        if found is None:
            ancestors = tuple(u.code for u in self.org.parent_chain(unit)) if unit in self.org \
                else ()
            found = self._chains[unit] = (unit, *ancestors)
        return found

    def _path(self, unit: str) -> Path:
        if unit not in self.org:
            return (None, None, None)
        by_level = {u.level: u.code for u in (self.org.unit(unit), *self.org.parent_chain(unit))}
        return (by_level.get(Level.COUNTY), by_level.get(Level.TOWNSHIP),
                by_level.get(Level.COMMUNITY))
