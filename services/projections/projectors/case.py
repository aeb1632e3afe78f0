"""The projector: ``project(row, event, paths) -> Changes``, pure.

``row`` is the case's summary before the event (``None`` before ``CaseSubmitted``); the result
holds the summary after it and every other row the event adds or changes. One small function
per event type; the version check (duplicates, gaps) is the caller's (see ``fold``).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any
from uuid import UUID

from services.projections.projectors.events import ProjectedEvent, Unprojectable
from services.projections.projectors.paths import UnitPaths
from services.projections.projectors.rows import (
    BreachRow,
    CaseRow,
    Changes,
    CountKey,
    MoveRow,
    Receipt,
    SlaFact,
    TimelineRow,
)

Projector = Callable[[CaseRow, ProjectedEvent, UnitPaths], Changes]
PROJECTORS: dict[str, Projector] = {}
CHINA = timezone(timedelta(hours=8))
SILENT = frozenset({"SlaTimerScheduled", "SlaClockPaused", "SlaClockStopped"})
"""Clock bookkeeping: changes the summary and the SLA facts, but is not a step of the
timeline."""


def project(row: CaseRow | None, event: ProjectedEvent, paths: UnitPaths) -> Changes:
    """The changes ``event`` makes to a case whose summary is ``row``."""
    try:
        if row is None:
            if event.type != "CaseSubmitted":
                raise Unprojectable(event.position, event.stream_id, event.type,
                                    "a case stream starts with CaseSubmitted")
            return submitted(event, paths)
        handler = PROJECTORS.get(event.type)
        if handler is None:
            raise Unprojectable(event.position, event.stream_id, event.type,
                                "no projector for this event type")
        return handler(row, event, paths)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        if isinstance(exc, Unprojectable):
            raise
        raise Unprojectable(event.position, event.stream_id, event.type,
                            f"data does not fit: {exc!r}") from exc


def projects(type_: str) -> Callable[[Projector], Projector]:
    def register(fn: Projector) -> Projector:
        PROJECTORS[type_] = fn
        return fn

    return register


# ------------------------------------------------------------------ helpers


_last_ts: tuple[str | None, datetime | None] = (None, None)


def ts(value: str) -> datetime:
    """``datetime.fromisoformat``; the same string object twice in a row is parsed once (an
    event's ``at`` is read by ``step`` and again by ``timeline``)."""
    global _last_ts
    last, parsed = _last_ts
    if value is not last or parsed is None:
        parsed = datetime.fromisoformat(value)
        _last_ts = (value, parsed)
    return parsed


def month_of(at: datetime) -> str:
    """The calendar month in China Standard Time, ``YYYY-MM``."""
    return at.astimezone(CHINA).strftime("%Y-%m")


_FIELD = {name: i for i, name in enumerate(CaseRow._fields)}
_ACTING, _VERSION, _POSITION, _LAST_EVENT, _LAST_CHANGE_AT = (
    _FIELD[f] for f in ("acting_person", "version", "position", "last_event", "last_change_at"))
_new_row = tuple.__new__


def step(row: CaseRow, event: ProjectedEvent, **changes: Any) -> CaseRow:
    """The summary after ``event``: its changes plus version, position and last change.
    A person acting for the owner (A/B roles) becomes the acting person until the next
    person's step."""
    data = event.data
    at = ts(data["at"])
    actor = data["actor"]
    values = list(row)  # what ``row._replace(...)`` does, without its per-call overhead
    if actor["role"] != "system" and "acting_person" not in changes:
        values[_ACTING] = actor["user_id"] if actor.get("acting_for") else None
    for name, value in changes.items():
        values[_FIELD[name]] = value
    values[_VERSION] = event.version
    values[_POSITION] = event.position
    values[_LAST_EVENT] = event.type
    last = row.last_change_at
    values[_LAST_CHANGE_AT] = at if at > last else last  # max(last, at)
    return _new_row(CaseRow, values)


def moved_to(row: CaseRow, unit: str, level: str, paths: UnitPaths) -> dict[str, Any]:
    """Where the case goes, and the flags of that level's clock: a supervisor reading the
    queue asks whether the case is late there, not whether it was ever late somewhere."""
    county, township, community = paths.path(unit)
    return {"unit": unit, "level": level, "county": county, "township": township,
            "community": community, "warned": level in row.warned_levels,
            "breached": level in row.breached_levels}


def with_level(levels: tuple[str, ...], level: str) -> tuple[str, ...]:
    """``levels`` with ``level`` in it once, in the order they were first reached."""
    return tuple(levels) if level in levels else (*levels, level)


def count_moves(before: CaseRow | None, after: CaseRow) -> tuple[tuple[CountKey, int], ...]:
    """-1 for the key the case left, +1 for the key it entered (nothing if unchanged)."""
    if before is None:
        return ((CountKey(after.unit, after.status, after.service_code), 1),)
    if (before.unit == after.unit and before.status == after.status
            and before.service_code == after.service_code):
        return ()
    return ((CountKey(before.unit, before.status, before.service_code), -1),
            (CountKey(after.unit, after.status, after.service_code), 1))


def timeline(after: CaseRow, event: ProjectedEvent, detail: str = "",
             from_unit: str | None = None, to_unit: str | None = None) -> TimelineRow:
    data = event.data
    actor = data["actor"]
    if "\x00" in detail:  # free text the log holds but no PostgreSQL text column takes:
        detail = detail.replace("\x00", "\ufffd")  # else the worker would retry it forever
    return _new_row(TimelineRow, (
        after.case_id, event.version, event.position, ts(data["at"]), event.type,
        actor["user_id"], actor["role"], actor["unit"], actor.get("acting_for"),
        after.unit, after.level, from_unit, to_unit, after.status, detail,
    ))


def changed(before: CaseRow | None, after: CaseRow, event: ProjectedEvent, detail: str = "",
            **extra: Any) -> Changes:
    """Changes with the count moves and (unless clock bookkeeping) a timeline step."""
    line = None if event.type in SILENT else timeline(
        after, event, detail, extra.pop("from_unit", None), extra.pop("to_unit", None))
    if extra:
        return Changes(after, line, count_moves(before, after), **extra)
    return _new_row(Changes, (after, line, count_moves(before, after), None, None, None, None))


# ------------------------------------------------------------------ lifecycle


def submitted(event: ProjectedEvent, paths: UnitPaths) -> Changes:
    data = event.data
    at = ts(data["at"])
    station = data["station"]
    county, township, community = paths.path(station)
    row = CaseRow(
        case_id=event.case_id, tracking_no=data["tracking_no"],
        service_code=data["service_code"], station=station, visit_id=UUID(data["visit_id"]),
        status="submitted", unit=station, level="community", county=county,
        township=township, community=community, owner=None, acting_person=None, due_at=None,
        warned=False, breached=False, warned_levels=(), breached_levels=(), outcome=None,
        resume_status=None, submitted_at=at, last_change_at=at, last_event=event.type,
        pending_move=None, reopens=0, version=event.version, position=event.position,
    )
    return changed(None, row, event, data["service_code"])


@projects("CaseAccepted")
def accepted(row: CaseRow, event: ProjectedEvent, paths: UnitPaths) -> Changes:
    after = step(row, event, status="accepted", owner=event.data["owner"])
    return changed(row, after, event)


@projects("DocumentsRequested")
def documents_requested(row: CaseRow, event: ProjectedEvent, paths: UnitPaths) -> Changes:
    after = step(row, event, status="documents_requested", resume_status=row.status)
    return changed(row, after, event, ", ".join(event.data["documents"]))


@projects("DocumentsSupplied")
def documents_supplied(row: CaseRow, event: ProjectedEvent, paths: UnitPaths) -> Changes:
    if event.data.get("outstanding"):
        after = step(row, event)
    else:
        after = step(row, event, status=row.resume_status or "in_review", resume_status=None)
    return changed(row, after, event, ", ".join(event.data["documents"]))


def _up(row: CaseRow, event: ProjectedEvent, paths: UnitPaths, kind: str,
        detail: str) -> Changes:
    data = event.data
    after = step(row, event, status="handed_off", pending_move=event.version,
                 **moved_to(row, data["to_unit"], data["to_level"], paths))
    county, township, _ = paths.path(data["from_unit"])
    move = MoveRow(row.case_id, event.version, kind, row.service_code, data["from_unit"],
                   data["from_level"], data["to_unit"], data["to_level"], county, township,
                   ts(data["at"]), None)
    return changed(row, after, event, detail, move=move, from_unit=data["from_unit"],
                   to_unit=data["to_unit"])


@projects("CaseHandedOff")
def handed_off(row: CaseRow, event: ProjectedEvent, paths: UnitPaths) -> Changes:
    return _up(row, event, paths, "handoff", event.data.get("note", ""))


@projects("CaseEscalated")
def escalated(row: CaseRow, event: ProjectedEvent, paths: UnitPaths) -> Changes:
    return _up(row, event, paths, "escalation", event.data.get("reason", "sla_breach"))


@projects("HandoffReceived")
def handoff_received(row: CaseRow, event: ProjectedEvent, paths: UnitPaths) -> Changes:
    after = step(row, event, status="in_review", owner=event.data["owner"], pending_move=None)
    receipt = None if row.pending_move is None else Receipt(
        row.case_id, row.pending_move, ts(event.data["at"]))
    return changed(row, after, event, receipt=receipt)


@projects("CaseReturned")
def returned(row: CaseRow, event: ProjectedEvent, paths: UnitPaths) -> Changes:
    data = event.data
    after = step(row, event, status="returned", owner=data["owner"], pending_move=None,
                 **moved_to(row, data["to_unit"], data["to_level"], paths))
    return changed(row, after, event, "; ".join(data["reasons"]), from_unit=data["from_unit"],
                   to_unit=data["to_unit"])


@projects("OwnerReassigned")
def owner_reassigned(row: CaseRow, event: ProjectedEvent, paths: UnitPaths) -> Changes:
    data = event.data
    after = step(row, event, owner=data["to_owner"])
    return changed(row, after, event, f"{data['from_owner']} → {data['to_owner']}: "
                                      f"{data['reason']}")


@projects("CaseDecided")
def decided(row: CaseRow, event: ProjectedEvent, paths: UnitPaths) -> Changes:
    data = event.data
    after = step(row, event, status="decided", outcome=data["outcome"])
    return changed(row, after, event, f"{data['outcome']}: {data['basis']}")


@projects("CaseClosed")
def closed(row: CaseRow, event: ProjectedEvent, paths: UnitPaths) -> Changes:
    return changed(row, step(row, event, status="closed"), event)


@projects("CaseWithdrawn")
def withdrawn(row: CaseRow, event: ProjectedEvent, paths: UnitPaths) -> Changes:
    after = step(row, event, status="withdrawn", due_at=None, resume_status=None,
                 pending_move=None)
    return changed(row, after, event, event.data["reason"])


@projects("CaseReopened")
def reopened(row: CaseRow, event: ProjectedEvent, paths: UnitPaths) -> Changes:
    data = event.data
    after = step(row, event, status="reopened", owner=data["owner"], outcome=None,
                 warned=False, breached=False, warned_levels=(), breached_levels=(),
                 reopens=row.reopens + 1)
    return changed(row, after, event, data["reason"])


@projects("NoteAdded")
def note_added(row: CaseRow, event: ProjectedEvent, paths: UnitPaths) -> Changes:
    return changed(row, step(row, event), event, event.data["text"])


@projects("ExternalResultRecorded")
def external_result(row: CaseRow, event: ProjectedEvent, paths: UnitPaths) -> Changes:
    """The timeline shows what the other system said, not only that it said something: the
    officer deciding the case reads it there (as notes; the public status shows no detail)."""
    data = event.data
    detail = f"{data['source_system']}: {data['result_type']} {data['reference']}"
    said = [data.get("summary") or "",
            *(f"{k}: {v}" for k, v in sorted((data.get("details") or {}).items()))]
    if any(said):
        detail += " — " + "; ".join(part for part in said if part)
    return changed(row, step(row, event), event, detail)


# ------------------------------------------------------------------ the SLA clock


@projects("SlaTimerScheduled")
def timer_scheduled(row: CaseRow, event: ProjectedEvent, paths: UnitPaths) -> Changes:
    return changed(row, step(row, event, due_at=ts(event.data["due_at"])), event)


@projects("SlaClockPaused")
def clock_paused(row: CaseRow, event: ProjectedEvent, paths: UnitPaths) -> Changes:
    return changed(row, step(row, event, due_at=None), event)


@projects("SlaClockStopped")
def clock_stopped(row: CaseRow, event: ProjectedEvent, paths: UnitPaths) -> Changes:
    data = event.data
    at = ts(data["at"])
    county, township, _ = paths.path(data["unit"])
    fact = SlaFact(row.case_id, data["level"], data["unit"], row.reopens, row.service_code,
                   county, township, month_of(at), data["used_seconds"],
                   data["budget_seconds"], data["on_time"], at)
    return changed(row, step(row, event, due_at=None), event, sla=fact)


@projects("SlaWarningRaised")
def warning_raised(row: CaseRow, event: ProjectedEvent, paths: UnitPaths) -> Changes:
    data = event.data
    levels = with_level(row.warned_levels, data["level"])
    after = step(row, event, warned=row.level in levels, warned_levels=levels)
    return changed(row, after, event, f"{data['level']} {data['unit']} due {data['due_at']}")


@projects("SlaBreached")
def breached(row: CaseRow, event: ProjectedEvent, paths: UnitPaths) -> Changes:
    data = event.data
    at = ts(data["at"])
    county, township, _ = paths.path(data["unit"])
    breach = BreachRow(row.case_id, data["timer_no"], data["level"], data["unit"],
                       row.service_code, county, township, month_of(at), at)
    levels = with_level(row.breached_levels, data["level"])
    after = step(row, event, breached=row.level in levels, breached_levels=levels)
    return changed(row, after, event, f"{data['level']} {data['unit']} due {data['due_at']}",
                   breach=breach)
