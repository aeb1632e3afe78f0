"""HTTP entrypoint of the audit reads, in the projections service: a case's history (JSON,
text or a printable HTML page), a case's state or a unit's queue as of a moment or position,
and the access log. Auditors only; every read states a ``reason`` and is recorded in the log
(``audit-access-<yyyy-mm>``) before it is answered.

As-of replays the log with the cases domain's own ``evolve`` (pure, no I/O): the one place
this service imports the cases domain (see the issue note: ``evolve`` and ``Case`` belong in
``shared`` so no service imports another)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, Response

from services.cases.domain import Case, evolve
from services.projections.api import Read, echoed
from shared.audit import (
    AuditService,
    CaseNotFound,
    PositionBeyondLog,
    ReplayFailed,
    Requester,
    render_html,
    render_text,
)
from shared.audit.jsonable import to_jsonable
from shared.auth import CurrentPrincipal, require_staff
from shared.http import ProblemError
from shared.inputs import BIGINT_MAX, Moment, Month
from shared.reference.staff import Role

audit_router = APIRouter(prefix="/v1/audit", tags=["audit"])

Reason = Annotated[str, Query(min_length=3, max_length=500,
                              description="Why you read this (recorded in the access log).")]
At = Annotated[Moment | None, Query(description="A moment (ISO 8601 with zone): the state "
                                                  "from every event recorded by then.")]
Position = Annotated[int | None, Query(ge=0, le=BIGINT_MAX,
                                       description="A global position of the log.")]


def audit_service(request: Request, reader: Read) -> AuditService[Case]:
    """One ``AuditService`` per app, over the projections' pool."""
    found = getattr(request.app.state, "audit", None)
    if not isinstance(found, AuditService):
        found = AuditService(reader.pool, evolve)
        request.app.state.audit = found
    return found


Audit = Annotated[AuditService[Case], Depends(audit_service)]


async def auditor(who: CurrentPrincipal, reason: Reason, reader: Read) -> Requester:
    """The caller, who must be an auditor of the staff directory, with their reason."""
    require_staff(who, reader.staff)
    if who.role != Role.AUDITOR:
        raise ProblemError(403, "Auditors only", "audit reads are for the auditor role",
                           errors=[{"field": "token:role", "message": f"role {who.role}"}])
    return Requester(who.user_id, who.role, who.unit, reason, "api")


Auditor = Annotated[Requester, Depends(auditor)]


def _moment(at: datetime | None, position: int | None) -> None:
    if at is not None and position is not None:
        raise ProblemError(422, "Invalid request", "give at or position, not both",
                           errors=[{"field": "query:at", "message": "at or position"}])
    if at is not None and at.tzinfo is None:
        raise ProblemError(422, "Invalid request", "at needs a time zone",
                           errors=[{"field": "query:at", "message": "naive timestamp"}])


def _beyond(exc: PositionBeyondLog) -> ProblemError:
    return ProblemError(422, "Invalid request", str(exc),
                        errors=[{"field": "query:position", "message": "beyond the log's end"}])


def _unreplayable(exc: ReplayFailed, field: str) -> ProblemError:
    return ProblemError(409, "Cannot replay", str(exc),
                        errors=[{"field": field, "message": "an event cannot be read"}])


def _not_found(exc: CaseNotFound) -> ProblemError:
    return ProblemError(404, "Not found", str(exc),
                        errors=[{"field": "path:case_id", "message": "no such case"}])


@audit_router.get("/cases/{case_id}/history", summary="A case's full history",
                  response_model=None)
async def case_history(
    case_id: uuid.UUID, who: Auditor, audit: Audit,
    format: Annotated[str, Query(pattern="^(json|text|html)$")] = "json",
) -> Response | dict[str, Any]:
    """Every event with actor, role, unit, acting-for, from- and to-unit, times and reasons:
    as JSON, plain text, or a printable one-page HTML timeline (no personal data)."""
    try:
        found = await audit.history(who, case_id, fmt=format)
    except CaseNotFound as exc:
        raise _not_found(exc) from exc
    if format == "text":
        return PlainTextResponse(render_text(found))
    if format == "html":
        return HTMLResponse(render_html(found, generated_at=datetime.now().astimezone()))
    body: dict[str, Any] = found.as_dict()
    return body


@audit_router.get("/cases/{case_id}/as-of", summary="A case's state as of a moment")
async def case_as_of(case_id: uuid.UUID, who: Auditor, audit: Audit, at: At = None,
                     position: Position = None) -> dict[str, Any]:
    """The case replayed with the domain's evolve up to ``position``, or up to the last
    event recorded by ``at`` (default: now)."""
    _moment(at, position)
    try:
        found = await audit.case_as_of(who, case_id, at=at, position=position)
    except CaseNotFound as exc:
        raise _not_found(exc) from exc
    except PositionBeyondLog as exc:
        raise _beyond(exc) from exc
    except ReplayFailed as exc:
        raise _unreplayable(exc, "path:case_id") from exc
    body: dict[str, Any] = to_jsonable(found)
    return body


@audit_router.get("/units/{unit}/queue/as-of", summary="A unit's queue as of a moment")
async def queue_as_of(unit: str, who: Auditor, audit: Audit, reader: Read, at: At = None,
                      position: Position = None) -> dict[str, Any]:
    """The open cases (not closed or withdrawn) ``unit`` held then."""
    _moment(at, position)
    if unit not in reader.org:
        raise ProblemError(404, "Unknown unit", f"no unit {echoed(unit)}",
                           errors=[{"field": "path:unit", "message": "unknown unit"}])
    try:
        found = await audit.queue_as_of(who, unit, at=at, position=position)
    except PositionBeyondLog as exc:
        raise _beyond(exc) from exc
    except ReplayFailed as exc:
        raise _unreplayable(exc, "path:unit") from exc
    cases = [{"case_id": str(c.case_id), "tracking_no": c.tracking_no, "status": c.status.value,
              "level": c.level.value, "owner": c.owner, "last_at": c.last_at.isoformat()}
             for c in found.cases]
    return {"unit": unit, "position": found.position, "cases": cases}


@audit_router.get("/access-log", summary="Who read what, when and why")
async def access_log(
    who: Auditor, audit: Audit,
    month: Annotated[list[Month], Query(min_length=1, description="YYYY-MM, repeatable")],
    user_id: str | None = None, case_id: uuid.UUID | None = None,
) -> dict[str, Any]:
    """The recorded audit reads of the given months, for auditors of auditors (this read is
    recorded as well)."""
    found = await audit.access_log(who, month, user_id=user_id,
                                   case_id=None if case_id is None else str(case_id))
    return {"items": [e.as_dict() for e in found]}
