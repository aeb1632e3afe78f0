"""Read-model queries. Each takes a connection, the active table set and a ``Scope`` (the
caller's jurisdiction: a unit and everything under it), and returns plain dicts.

Cases are scoped by the holding unit's path columns (county / township / community), so a
county's query is an index range on ``(county, last_change_at)``.
"""

from __future__ import annotations

import base64
import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

from shared.eventstore.postgres import Conn
from shared.reference.org import Level, OrgTree

SORTS = {"last_change_at", "submitted_at", "due_at", "tracking_no", "status"}
OPEN = ("submitted", "accepted", "in_review", "documents_requested", "handed_off", "returned",
        "reopened", "decided")
GROUPS = ("service_code", "unit", "level", "month")
PUBLIC_STEPS = ("CaseSubmitted", "CaseAccepted", "DocumentsRequested", "DocumentsSupplied",
                "CaseHandedOff", "CaseEscalated", "HandoffReceived", "CaseReturned",
                "CaseDecided", "CaseClosed", "CaseWithdrawn", "CaseReopened")
_PATH_COLUMN = {Level.COUNTY: "county", Level.TOWNSHIP: "township", Level.COMMUNITY: "community"}
# sla_facts and moves carry county and township paths only: a station is their unit column
_UPPER_PATH_COLUMN = {Level.COUNTY: "county", Level.TOWNSHIP: "township"}


@dataclass(frozen=True)
class Scope:
    """A unit and everything under it; ``None`` (auditors, the city) is everything."""

    unit: str | None
    level: Level | None = None

    @classmethod
    def of(cls, org: OrgTree, unit: str) -> Scope:
        found = org.unit(unit)
        return cls(None if found.level == Level.CITY else unit, found.level)


class _Where:
    """Accumulates a WHERE clause and its parameters."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.args: list[Any] = []

    def add(self, sql: str, *values: Any) -> None:
        for value in values:
            self.args.append(value)
            sql = sql.replace("?", f"${len(self.args)}", 1)
        self.parts.append(sql)

    def scope(self, scope: Scope, unit_column: str = "unit",
              paths: dict[Level, str] = _PATH_COLUMN) -> None:
        if scope.unit is None or scope.level is None:
            return
        self.add(f"{paths.get(scope.level, unit_column)} = ?", scope.unit)

    @property
    def sql(self) -> str:
        return " WHERE " + " AND ".join(self.parts) if self.parts else ""


@dataclass(frozen=True)
class CaseFilter:
    status: Sequence[str] = ()
    service_code: str | None = None
    level: str | None = None
    unit: str | None = None
    overdue: bool | None = None
    open_only: bool = False
    tracking_no: str | None = None
    owner: str | None = None
    submitted_from: datetime | None = None
    submitted_to: datetime | None = None
    sort: str = "last_change_at"
    descending: bool = True
    limit: int = 50
    offset: int = 0
    after: tuple[Any, UUID] | None = None  # (sort value, case id) of the last row seen
    extra: dict[str, Any] = field(default_factory=dict)


_CASE_COLUMNS = (
    "case_id, tracking_no, service_code, station, status, unit, level, owner, acting_person, "
    "due_at, (due_at IS NOT NULL AND due_at < now()) AS overdue, warned, breached, "
    "breached_levels, outcome, "
    "submitted_at, last_change_at, last_event, version, position"
)


def _case_where(scope: Scope, f: CaseFilter) -> _Where:
    w = _Where()
    w.scope(scope)
    if f.status:
        w.add("status = ANY(?::text[])", list(f.status))
    if f.open_only:
        w.add("status = ANY(?::text[])", list(OPEN))
    if f.service_code:
        w.add("service_code = ?", f.service_code)
    if f.level:
        w.add("level = ?", f.level)
    if f.unit:
        w.add("unit = ?", f.unit)
    if f.overdue is True:
        w.add("due_at < now()")
    elif f.overdue is False:
        w.add("(due_at IS NULL OR due_at >= now())")
    if f.tracking_no:
        w.add("tracking_no = ?", f.tracking_no)
    if f.owner:
        w.add("owner = ?", f.owner)
    if f.submitted_from:
        w.add("submitted_at >= ?", f.submitted_from)
    if f.submitted_to:
        w.add("submitted_at < ?", f.submitted_to)
    return w


_NOT_NULL_SORTS = {"last_change_at", "submitted_at", "tracking_no", "status"}


def _order_by(sort: str, descending: bool) -> str:
    """The order of a case list, written so that an index on (scope, sort, case_id) serves it
    read forwards or backwards: ties by case id in the same direction, and NULLS LAST only
    where a column has NULLs (due_at: the index serves it ascending)."""
    direction = "DESC" if descending else "ASC"
    nulls = "" if sort in _NOT_NULL_SORTS else " NULLS LAST"
    return f"{sort} {direction}{nulls}, case_id {direction}"


class BadCursor(ValueError):
    """An ``after`` cursor that is not one this list gave (or was given for another sort)."""


def cursor(sort: str, row: dict[str, Any]) -> str:
    """The cursor of ``row`` in a list sorted by ``sort``: where the next page starts."""
    value = row[sort]
    text = value.isoformat() if isinstance(value, datetime) else value
    raw = json.dumps([sort, text, str(row["case_id"])], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def read_cursor(sort: str, given: str) -> tuple[Any, UUID]:
    """The (sort value, case id) a ``cursor`` of a list sorted by ``sort`` holds."""
    try:
        named, value, case_id = json.loads(base64.urlsafe_b64decode(
            given + "=" * (-len(given) % 4)))
        found = _sort_value(sort, value), UUID(case_id)
    except (AttributeError, TypeError, ValueError) as exc:
        raise BadCursor("not a cursor of this list") from exc
    if named != sort:
        raise BadCursor(f"a cursor of the list sorted by {named}, not by {sort}")
    return found


def _sort_value(sort: str, value: Any) -> Any:
    """A sort value as a cursor holds it (JSON), as its column's type; ValueError or TypeError
    if it is not one."""
    if value is None and sort not in _NOT_NULL_SORTS:
        return None
    if sort in ("tracking_no", "status") and isinstance(value, str):
        return value
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is None:
        raise ValueError("a moment without a zone")
    return moment


def _after(w: _Where, f: CaseFilter) -> None:
    """Only the rows after the cursor, in the list's order (``_order_by``): a page that starts
    where the last one ended, however many rows before it changed meanwhile. With an offset, a
    queue read oldest change first skipped a case for each case on an earlier page worked
    in between (it moves to the end, and every row after it one place up)."""
    if f.after is None:
        return
    value, case_id = f.after
    beyond = "<" if f.descending else ">"
    if value is None:  # due_at, in the NULLS LAST tail
        w.add(f"({f.sort} IS NULL AND case_id {beyond} ?)", case_id)
    elif f.sort in _NOT_NULL_SORTS:
        w.add(f"({f.sort}, case_id) {beyond} (?, ?)", value, case_id)
    else:
        w.add(f"(({f.sort}, case_id) {beyond} (?, ?) OR {f.sort} IS NULL)", value, case_id)


async def list_cases(conn: Conn, schema: str, scope: Scope, f: CaseFilter) -> dict[str, Any]:
    """Case summaries in scope, filtered, sorted and paginated, with the total (of the
    filter, not of what follows the cursor) and the cursor of the next page (``None`` after
    the last)."""
    if f.sort not in SORTS:
        raise ValueError(f"sort must be one of {sorted(SORTS)}")
    w = _case_where(scope, f)
    total = await conn.fetchval(f"SELECT count(*) FROM {schema}.case_summary{w.sql}", *w.args)
    _after(w, f)
    order = _order_by(f.sort, f.descending)
    rows = await conn.fetch(  # one more than asked: is there a next page?
        f"SELECT {_CASE_COLUMNS} FROM {schema}.case_summary{w.sql} ORDER BY {order} "
        f"LIMIT {int(f.limit) + 1} OFFSET {int(f.offset)}", *w.args)
    items = [dict(r) for r in rows[:f.limit]]
    after = cursor(f.sort, items[-1]) if len(rows) > f.limit else None
    return {"items": items, "total": int(total), "limit": f.limit, "offset": f.offset,
            "next": after}


_ONE_CASE_COLUMNS = f"{_CASE_COLUMNS}, county, township, community"
_ONE_CASE_KEYS = tuple(column.split()[-1] for column in _ONE_CASE_COLUMNS.split(", "))


async def get_case(conn: Conn, schema: str, case_id: UUID) -> dict[str, Any] | None:
    row = await conn.fetchrow(
        f"SELECT {_ONE_CASE_COLUMNS} FROM {schema}.case_summary WHERE case_id = $1", case_id)
    return None if row is None else dict(row)


@functools.cache
def status_and_case(schema: str) -> str:
    """The progress (``projections.read_status()``) and one case of ``schema``, in one round
    trip and one snapshot: the read after every command. Right only while ``schema`` is the
    active set, which the caller checks on the row (``active_schema``)."""
    return ("SELECT s.*, c.* FROM projections.read_status() AS s LEFT JOIN ("
            f"SELECT {_ONE_CASE_COLUMNS} FROM {schema}.case_summary WHERE case_id = $1"
            ") AS c ON true")


def case_of(row: Any) -> dict[str, Any] | None:
    """The case in a ``status_and_case`` row (``None``: no such case)."""
    return None if row["case_id"] is None else {key: row[key] for key in _ONE_CASE_KEYS}


async def timeline(conn: Conn, schema: str, case_id: UUID) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        f"SELECT version, position, at, type, actor_id, actor_role, actor_unit, acting_for, "
        f"unit, level, from_unit, to_unit, status, detail FROM {schema}.timeline "
        "WHERE case_id = $1 ORDER BY version", case_id)
    return [dict(r) for r in rows]


async def counts(conn: Conn, schema: str, org: OrgTree, unit: str) -> dict[str, Any]:
    """Own and subtree counts by status and service, and each child's subtree totals."""
    children = [u.code for u in org.children(unit)]
    rows = await conn.fetch(
        f"SELECT 'own' AS kind, unit, status, service_code, n FROM {schema}.unit_counts "
        "WHERE unit = $1 UNION ALL "
        f"SELECT 'subtree', unit, status, service_code, n FROM {schema}.subtree_counts "
        "WHERE unit = $1 OR unit = ANY($2::text[])", unit, children)
    own: dict[str, dict[str, int]] = {}
    subtree: dict[str, dict[str, int]] = {}
    by_child: dict[str, dict[str, int]] = {c: {} for c in children}
    for r in rows:
        if r["kind"] == "own":
            target = own
        elif r["unit"] == unit:
            target = subtree
        else:
            child = by_child[r["unit"]]
            child[r["status"]] = child.get(r["status"], 0) + r["n"]
            continue
        target.setdefault(r["status"], {})[r["service_code"]] = r["n"]
    return {
        "unit": unit, "own": own, "subtree": subtree,
        "own_total": sum(sum(v.values()) for v in own.values()),
        "subtree_total": sum(sum(v.values()) for v in subtree.values()),
        "children": [{"unit": c, "name": org.unit(c).name, "level": str(org.unit(c).level),
                      "by_status": by_child[c], "total": sum(by_child[c].values())}
                     for c in children],
    }


def _group_sql(group_by: Sequence[str]) -> tuple[str, str]:
    bad = [g for g in group_by if g not in GROUPS]
    if bad:
        raise ValueError(f"group_by accepts {', '.join(GROUPS)}; not {', '.join(bad)}")
    cols = ", ".join(group_by)
    return (cols + ", ") if cols else "", (" GROUP BY " + cols) if cols else ""


async def sla_stats(conn: Conn, schema: str, scope: Scope, group_by: Sequence[str], *,
                    service_code: str | None = None, level: str | None = None,
                    month_from: str | None = None, month_to: str | None = None,
                    ) -> list[dict[str, Any]]:
    """On-time rate, median and p90 handling time (working seconds) per group, one fact per
    round of a level's clock (a reopened case's level counts once per round); breaches
    charged to the level (and unit) that used the time."""
    select, group = _group_sql(group_by)
    w = _Where()
    w.scope(scope, "unit", _UPPER_PATH_COLUMN)
    if service_code:
        w.add("service_code = ?", service_code)
    if level:
        w.add("level = ?", level)
    if month_from:
        w.add("month >= ?", month_from)
    if month_to:
        w.add("month <= ?", month_to)
    facts = await conn.fetch(
        f"SELECT {select}count(*) AS handled, "
        "avg(on_time::int)::float AS on_time_rate, "
        "percentile_cont(0.5) WITHIN GROUP (ORDER BY used_seconds) AS median_seconds, "
        "percentile_cont(0.9) WITHIN GROUP (ORDER BY used_seconds) AS p90_seconds "
        f"FROM {schema}.sla_facts{w.sql}{group}", *w.args)
    breaches = await conn.fetch(
        f"SELECT {select}count(*) AS breaches FROM {schema}.sla_breaches{w.sql}{group}",
        *w.args)
    merged: dict[tuple[Any, ...], dict[str, Any]] = {}
    for r in facts:
        merged[tuple(r[g] for g in group_by)] = {**dict(r), "breaches": 0}
    for r in breaches:
        key = tuple(r[g] for g in group_by)
        entry = merged.setdefault(key, {**{g: r[g] for g in group_by}, "handled": 0,
                                        "on_time_rate": None, "median_seconds": None,
                                        "p90_seconds": None})
        entry["breaches"] = r["breaches"]
    return [merged[k] for k in sorted(merged, key=lambda k: tuple(str(x) for x in k))]


async def handoff_delays(conn: Conn, schema: str, scope: Scope, group_by: Sequence[str] = (),
                         *, since: datetime | None = None) -> list[dict[str, Any]]:
    """Moves up between levels: how many, how many still waiting, and the delay until the
    upper unit received them (mean, median, p90, in seconds), per from-level → to-level."""
    allowed = {"service_code", "from_unit", "to_unit", "kind"}
    bad = [g for g in group_by if g not in allowed]
    if bad:
        raise ValueError(f"group_by accepts {', '.join(sorted(allowed))}")
    extra = "".join(f", {g}" for g in group_by)
    w = _Where()
    w.scope(scope, "from_unit", _UPPER_PATH_COLUMN)
    if since:
        w.add("sent_at >= ?", since)
    delay = "extract(epoch FROM received_at - sent_at)"
    rows = await conn.fetch(
        f"SELECT from_level, to_level{extra}, count(*) AS moves, "
        "count(*) FILTER (WHERE received_at IS NULL) AS waiting, "
        f"avg({delay})::float AS mean_seconds, "
        f"percentile_cont(0.5) WITHIN GROUP (ORDER BY {delay}) AS median_seconds, "
        f"percentile_cont(0.9) WITHIN GROUP (ORDER BY {delay}) AS p90_seconds "
        f"FROM {schema}.moves{w.sql} GROUP BY from_level, to_level{extra} "
        f"ORDER BY from_level, to_level{extra}", *w.args)
    return [dict(r) for r in rows]


async def public_status(conn: Conn, schema: str, tracking_no: str) -> dict[str, Any] | None:
    """What a resident may see: status, service, the level and office holding the case, and
    the dated steps — no person, no applicant data, no free text."""
    row = await conn.fetchrow(
        f"SELECT case_id, tracking_no, service_code, status, unit, level, outcome, "
        f"submitted_at, last_change_at FROM {schema}.case_summary WHERE tracking_no = $1 "
        "ORDER BY submitted_at DESC LIMIT 1", tracking_no)
    if row is None:
        return None
    steps = await conn.fetch(
        f"SELECT at, type, level, status FROM {schema}.timeline WHERE case_id = $1 "
        "AND type = ANY($2::text[]) ORDER BY version", row["case_id"], list(PUBLIC_STEPS))
    public = dict(row)
    del public["case_id"]
    public["steps"] = [dict(s) for s in steps]
    return public
