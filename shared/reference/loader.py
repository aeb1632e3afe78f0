"""Load and validate reference data from a folder (``data/kunming`` by default).

Every check happens here, once, at start-up; the objects returned are immutable. Any problem
raises ``ReferenceDataError`` naming the file, the line and the field.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from shared.logging import get_logger
from shared.reference.calendar import DayOverride, WorkingCalendar
from shared.reference.catalogue import DEFAULT_WARNING_SHARE, Catalogue, Document, ServiceType
from shared.reference.errors import ReferenceDataError
from shared.reference.org import KINDS_BY_LEVEL, Level, OrgTree, Unit
from shared.reference.sources import TomlFile, first_error, read_csv, validate_entry
from shared.reference.staff import ROLE_LEVELS, StaffDirectory, StaffMember

UNITS_FILE = "units.csv"
STAFF_FILE = "staff.csv"
CATALOGUE_FILE = "services.toml"
CALENDAR_FILE = "calendar_overrides.csv"

UNIT_COLUMNS = ("code", "name", "level", "parent", "kind", "synthetic")
STAFF_COLUMNS = ("user_id", "name", "role", "unit", "post", "backup", "synthetic")
CALENDAR_COLUMNS = ("date", "working", "name")

_LEVEL_ABOVE = {
    Level.COUNTY: Level.CITY, Level.TOWNSHIP: Level.COUNTY, Level.COMMUNITY: Level.TOWNSHIP,
}


@dataclass(frozen=True)
class Reference:
    """All reference data the domain needs: org tree, staff, catalogue and calendar."""

    org: OrgTree
    staff: StaffDirectory
    catalogue: Catalogue
    calendar: WorkingCalendar
    source: Path


REFERENCE_DIR_VARIABLE = "YIZHAN_REFERENCE_DIR"


def default_reference_dir() -> Path:
    """``$YIZHAN_REFERENCE_DIR`` if set (an installed package, another city's data), else the
    fixture shipped with the repository: ``data/kunming``."""
    configured = os.environ.get(REFERENCE_DIR_VARIABLE)
    if configured:
        return Path(configured)
    return Path(__file__).resolve().parents[2] / "data" / "kunming"


def load_reference(directory: Path | str | None = None) -> Reference:
    """Load ``units.csv``, ``staff.csv``, ``services.toml`` and ``calendar_overrides.csv`` from
    ``directory`` (default: ``data/kunming``), validating each and their cross-references."""
    folder = Path(directory) if directory is not None else default_reference_dir()
    org = load_org_tree(folder / UNITS_FILE)
    staff = load_staff(folder / STAFF_FILE, org)
    catalogue = load_catalogue(folder / CATALOGUE_FILE)
    calendar_path = folder / CALENDAR_FILE
    calendar = load_calendar(calendar_path if calendar_path.exists() else None)
    get_logger(__name__).debug(  # every CLI call loads it: not worth a line each time
        "reference_loaded", source=str(folder), units=len(org), staff=len(staff),
        services=len(catalogue), calendar_overrides=len(calendar.overrides),
    )
    return Reference(org, staff, catalogue, calendar, folder)


# ---------------------------------------------------------------- org tree


def load_org_tree(path: Path) -> OrgTree:
    """Read ``units.csv`` (code, name, level, parent, kind, synthetic) into an ``OrgTree``."""
    units: dict[str, tuple[int, Unit]] = {}
    for line, row in read_csv(path, UNIT_COLUMNS):
        unit = validate_entry(Unit, dict(row), path, line)
        _check_unit_shape(unit, path, line)
        if unit.code in units:
            raise ReferenceDataError(
                path, line, "code", f"duplicate code (first on line {units[unit.code][0]})"
            )
        units[unit.code] = (line, unit)
    for line, unit in units.values():
        _check_parent(unit, {code: u for code, (_, u) in units.items()}, path, line)
    cities = [(line, u) for line, u in units.values() if u.level == Level.CITY]
    if len(cities) != 1:
        raise ReferenceDataError(path, cities[1][0] if cities else 1, "level",
                                 f"exactly one city is required, found {len(cities)}")
    return OrgTree(unit for _, unit in units.values())


def _check_unit_shape(unit: Unit, path: Path, line: int) -> None:
    if len(unit.code) != unit.level.code_length:
        raise ReferenceDataError(
            path, line, "code", f"a {unit.level} code has {unit.level.code_length} digits"
        )
    if unit.kind not in KINDS_BY_LEVEL[unit.level]:
        allowed = ", ".join(sorted(KINDS_BY_LEVEL[unit.level]))
        raise ReferenceDataError(path, line, "kind", f"a {unit.level} unit must be: {allowed}")


def _check_parent(unit: Unit, units: dict[str, Unit], path: Path, line: int) -> None:
    if unit.level == Level.CITY:
        if unit.parent is not None:
            raise ReferenceDataError(path, line, "parent", "the city has no parent")
        return
    if unit.parent is None:
        raise ReferenceDataError(path, line, "parent", f"a {unit.level} unit needs a parent")
    parent = units.get(unit.parent)
    if parent is None:
        raise ReferenceDataError(path, line, "parent", f"unknown unit {unit.parent!r}")
    expected = _LEVEL_ABOVE[unit.level]
    if parent.level != expected:
        raise ReferenceDataError(
            path, line, "parent", f"the parent of a {unit.level} must be a {expected}"
        )
    prefix = parent.code[:4] if parent.level == Level.CITY else parent.code
    if not unit.code.startswith(prefix):
        raise ReferenceDataError(
            path, line, "code", f"must start with its parent's code prefix {prefix}"
        )


# ---------------------------------------------------------------- staff


def load_staff(path: Path, org: OrgTree) -> StaffDirectory:
    """Read ``staff.csv`` (user_id, name, role, unit, post, backup, synthetic), checking units,
    roles against unit levels and A/B backups."""
    members: dict[str, tuple[int, StaffMember]] = {}
    for line, row in read_csv(path, STAFF_COLUMNS):
        member = validate_entry(StaffMember, dict(row), path, line)
        _check_posting(member, org, path, line)
        if member.user_id in members:
            first = members[member.user_id][0]
            raise ReferenceDataError(path, line, "user_id", f"duplicate (first on line {first})")
        members[member.user_id] = (line, member)
    people = {user_id: member for user_id, (_, member) in members.items()}
    for line, member in members.values():
        _check_backup(member, people, path, line)
    return StaffDirectory(people.values())


def _check_posting(member: StaffMember, org: OrgTree, path: Path, line: int) -> None:
    unit = org.get(member.unit)
    if unit is None:
        raise ReferenceDataError(path, line, "unit", f"unknown unit {member.unit!r}")
    levels = ROLE_LEVELS[member.role]
    if unit.level not in levels:
        where = ", ".join(sorted(levels)) or "no unit (automated actors only)"
        raise ReferenceDataError(
            path, line, "role", f"a {member.role} is posted at {where}, not at a {unit.level}"
        )


def _check_backup(
    member: StaffMember, people: dict[str, StaffMember], path: Path, line: int
) -> None:
    if member.backup is None:
        return
    backup = people.get(member.backup)
    if backup is None:
        raise ReferenceDataError(path, line, "backup", f"unknown staff member {member.backup!r}")
    if backup.user_id == member.user_id:
        raise ReferenceDataError(path, line, "backup", "a person cannot be their own backup")
    if backup.unit != member.unit:
        raise ReferenceDataError(path, line, "backup", "the backup must work at the same unit")


# ---------------------------------------------------------------- catalogue


def load_catalogue(path: Path) -> Catalogue:
    """Read ``services.toml``: optional ``warning_share``, a ``[documents]`` table and one
    ``[[service]]`` entry per service."""
    toml = TomlFile.read(path)
    top = toml.section("")
    for key in toml.data:
        if key not in {"warning_share", "documents", "service"}:
            raise toml.error(top, key, "unknown key")
    share = toml.data.get("warning_share", DEFAULT_WARNING_SHARE)
    documents = _documents(toml)
    services = [_service(toml, index, entry, share, documents)
                for index, entry in enumerate(_entries(toml))]
    seen: dict[str, int] = {}
    for index, service in enumerate(services):
        if service.code in seen:
            raise toml.error(toml.section("service", index), "code",
                             f"duplicate service (first entry #{seen[service.code] + 1})")
        seen[service.code] = index
    return Catalogue(services, documents.values())


def _entries(toml: TomlFile) -> list[dict[str, Any]]:
    entries = toml.data.get("service", [])
    if not isinstance(entries, list) or not entries:
        raise toml.error(toml.section(""), "service", "at least one [[service]] is required")
    return entries


def _documents(toml: TomlFile) -> dict[str, Document]:
    section = toml.section("documents")
    table = toml.data.get("documents", {})
    if not isinstance(table, dict):
        raise toml.error(toml.section(""), "documents", "must be a table")
    documents: dict[str, Document] = {}
    for code, names in table.items():
        line = toml.line_of(section, code)
        data = {"code": code, **names} if isinstance(names, dict) else {"code": code}
        documents[code] = validate_entry(Document, data, toml.path, line)
    return documents


def _service(
    toml: TomlFile, index: int, entry: dict[str, Any], share: float,
    documents: dict[str, Document],
) -> ServiceType:
    section = toml.section("service", index)
    data = {"warning_share": share, **entry}
    try:
        service = ServiceType.model_validate(data)
    except ValidationError as exc:
        field, message = first_error(exc)
        # a service without its own share has the file's: the error is where that was written
        inherited = field == "warning_share" and field not in entry
        raise toml.error(toml.section("") if inherited else section, field, message) from exc
    for code in service.required_documents:
        if code not in documents:
            raise toml.error(section, "required_documents",
                             f"unknown document {code!r} (not in [documents])", value=code)
    return service


# ---------------------------------------------------------------- calendar


def load_calendar(path: Path | None) -> WorkingCalendar:
    """Read ``calendar_overrides.csv`` (date, working, name); ``None`` = package data only."""
    if path is None:
        return WorkingCalendar()
    return WorkingCalendar(_overrides(path))


def _overrides(path: Path) -> Iterable[DayOverride]:
    seen: dict[object, int] = {}
    overrides: list[DayOverride] = []
    for line, row in read_csv(path, CALENDAR_COLUMNS):
        override = validate_entry(DayOverride, dict(row), path, line)
        if override.date in seen:
            raise ReferenceDataError(
                path, line, "date", f"duplicate date (first on line {seen[override.date]})"
            )
        seen[override.date] = line
        overrides.append(override)
    return overrides
