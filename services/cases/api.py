"""HTTP entrypoint of the cases service: one endpoint per officer's command, and the case's
current state. Routes only translate: payload → command → handler → response."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Header, Request, Response
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field

from services.cases.domain import commands as c
from services.cases.domain.errors import Rejection
from services.cases.handlers import CaseCommands, Handled, PreconditionFailed, StillConflicting
from services.cases.metrics import render
from shared.auth import CurrentPrincipal, Principal, require_staff
from shared.contracts.cases import Actor, Outcome
from shared.http import ProblemError
from shared.inputs import Text
from shared.reference import Role
from shared.service import PROMETHEUS_TEXT

router = APIRouter(prefix="/v1/cases", tags=["cases"])
operations = APIRouter(tags=["operations"])
_STATUS = {"forbidden": 403, "conflict": 409, "invalid": 422, "not_found": 404}
_REQUEST_FIELD = {
    "actor": "token", "actor.user_id": "token:sub", "actor.role": "token:role",
    "actor.unit": "token:unit", "actor.acting_for": "acting_for", "case_id": "path:case_id",
}
"""Where a command field the domain names comes from in a request: the actor is the bearer
token (plus the body's ``acting_for``), the case the path; the rest are body fields."""
IDEMPOTENCY_KEY_MAX = 200
MAX_BODY_BYTES = 1 << 20  # a command is a few KB; a 4,000-character note is 24 KB \u-escaped


class Body(BaseModel):
    """Every string a body carries is ``Text``: a control character (NUL above all) is refused
    here, not stored in an event that PostgreSQL's read models cannot hold."""

    model_config = ConfigDict(extra="forbid")
    acting_for: Text | None = Field(
        default=None, description="The owner on whose behalf a designated backup acts (A/B).")


class RequestDocumentsBody(Body):
    documents: list[Text] = Field(default_factory=list, description="Extra (inadequate) ones.")
    note: Text = ""
    approved_by: Text | None = Field(default=None,
                                    description="Supervisor approving a second request.")


class SupplyDocumentsBody(Body):
    documents: list[Text] = Field(min_length=1)


class HandOffBody(Body):
    note: Text = ""


class ReturnBody(Body):
    reasons: list[Annotated[Text, Field(min_length=1)]] = Field(min_length=1)
    documents: list[Text] = Field(default_factory=list)


class ReassignBody(Body):
    to_owner: Text = Field(min_length=1)
    reason: Text = Field(min_length=1)


class DecideBody(Body):
    outcome: Outcome
    basis: Text = Field(min_length=1, description="The legal or policy basis of the decision.")


class ReasonBody(Body):
    reason: Text = Field(min_length=1)


class NoteBody(Body):
    text: Text = Field(min_length=1, max_length=4000)


class Accepted(BaseModel):
    case_id: uuid.UUID
    version: int = Field(description="The case's stream version after the command.")
    position: int = Field(description="Global log position; pass as min_position to queries.")
    events: list[str]
    already_applied: bool = False


class CaseView(BaseModel):
    case_id: uuid.UUID
    tracking_no: str
    service_code: str
    visit_id: uuid.UUID
    status: str
    unit: str
    level: str
    owner: str | None
    documents_provided: list[str]
    documents_outstanding: list[str]
    document_requests: int
    outcome: str | None
    basis: str | None
    submitted_at: datetime
    last_at: datetime
    version: int
    position: int


async def commands_of(request: Request) -> CaseCommands:
    handler = request.app.state.case_commands
    assert isinstance(handler, CaseCommands)
    return handler


Handler = Annotated[CaseCommands, Depends(commands_of)]


def parse_if_match(if_match: str | None) -> int | None:
    try:
        return None if if_match in (None, "*") else int(str(if_match).strip('"W/ '))
    except ValueError as exc:
        raise ProblemError(400, "Bad If-Match", "If-Match must be the case version, e.g. \"3\"",
                           errors=[{"field": "header:If-Match", "message": "not a version"}]
                           ) from exc


@dataclass(frozen=True)
class CommandContext:
    """Everything a command endpoint needs besides its body, resolved as one dependency
    (FastAPI's per-dependency cost is a large share of a request)."""

    who: Principal
    handler: CaseCommands
    clock: Callable[[], datetime]
    expected_version: int | None
    command_id: uuid.UUID

    def common(self, body: Body) -> dict[str, Any]:
        """The fields every command carries: when, and who acts (for whom)."""
        return {"at": self.clock(), "actor": actor(self.who, body)}

    async def run(self, command: c.Command, response: Response) -> Accepted:
        return await run(self.handler, command, self, response)


async def command_context(
    request: Request, who: CurrentPrincipal,
    if_match: Annotated[str | None, Header(description="Stream version seen, as an ETag")] = None,
    idempotency_key: Annotated[str | None, Header(max_length=IDEMPOTENCY_KEY_MAX)] = None,
) -> CommandContext:
    return CommandContext(who, request.app.state.case_commands, request.app.state.clock,
                          parse_if_match(if_match), command_id_for(who, idempotency_key))


def command_id_for(who: Principal, idempotency_key: str | None) -> uuid.UUID:
    """The command's id: derived from the caller's ``Idempotency-Key`` (so a retry is the same
    command), else a new one. The key is the caller's own, as intake's are: a command the case
    already holds is answered as done before the domain checks who sends it, so with one
    namespace anyone sending another's key got 200 and the case's version, and a second
    person's command under the same key was dropped as a retry."""
    return (uuid.uuid5(uuid.NAMESPACE_URL,
                       f"yizhan:command\nuser:{who.user_id}\n{idempotency_key}")
            if idempotency_key else uuid.uuid4())


Ctx = Annotated[CommandContext, Depends(command_context)]


def actor(principal: Principal, body: Body) -> Actor:
    if principal.role == Role.SYSTEM:  # the domain trusts `system`: only internal callers
        raise ProblemError(403, "Not a person", "system identities cannot act over HTTP",
                           errors=[{"field": "token:role", "message": "role system refused"}])
    return Actor(user_id=principal.user_id, role=Role(principal.role), unit=principal.unit,
                 acting_for=body.acting_for)


async def run(handler: CaseCommands, command: c.Command, pre: CommandContext,
              response: Response) -> Accepted:
    try:
        done: Handled = await handler.handle(command, command_id=pre.command_id,
                                             expected_version=pre.expected_version)
    except Rejection as refused:
        field = _REQUEST_FIELD.get(refused.field or "", refused.field) or "command"
        raise ProblemError(
            _STATUS[refused.kind], type(refused).__name__, refused.reason,
            type_=f"/problems/{type(refused).__name__}",
            errors=[{"field": field, "message": refused.reason}],
        ) from refused
    except PreconditionFailed as stale:
        raise ProblemError(412, "Precondition failed", str(stale),
                           errors=[{"field": "header:If-Match", "message": str(stale)}],
                           current_version=stale.actual) from stale
    except StillConflicting as busy:
        raise ProblemError(409, "Conflict", str(busy),
                           errors=[{"field": "path:case_id", "message": str(busy)}]) from busy
    response.headers["ETag"] = f'"{done.version}"'
    return Accepted(case_id=done.case_id, version=done.version, position=done.position,
                    events=[e.event_type for e in done.events],
                    already_applied=done.already_applied)


RouteFn = TypeVar("RouteFn", bound=Callable[..., Any])


def _route(path: str, summary: str) -> Callable[[RouteFn], RouteFn]:
    decorate: Callable[[RouteFn], RouteFn] = router.post(
        f"/{{case_id}}/{path}", response_model=Accepted, summary=summary)
    return decorate


@_route("accept", "Accept a case: the receiving officer becomes its owner (首问责任制)")
async def accept(case_id: uuid.UUID, body: Body, ctx: Ctx, response: Response) -> Accepted:
    return await ctx.run(c.AcceptCase(case_id=case_id, **ctx.common(body)), response)


@_route("request-documents", "Ask for every missing document at once (一次性告知)")
async def request_documents(case_id: uuid.UUID, body: RequestDocumentsBody, ctx: Ctx,
                            response: Response) -> Accepted:
    return await ctx.run(c.RequestDocuments(
        case_id=case_id, **ctx.common(body), documents=tuple(body.documents), note=body.note,
        approved_by=body.approved_by), response)


@_route("supply-documents", "Record documents the applicant supplied")
async def supply_documents(case_id: uuid.UUID, body: SupplyDocumentsBody, ctx: Ctx,
                           response: Response) -> Accepted:
    return await ctx.run(c.SupplyDocuments(
        case_id=case_id, **ctx.common(body), documents=tuple(body.documents)), response)


@_route("hand-off", "Hand the case up to the next unit in the service's review chain")
async def hand_off(case_id: uuid.UUID, body: HandOffBody, ctx: Ctx,
                   response: Response) -> Accepted:
    return await ctx.run(c.HandOffCase(case_id=case_id, **ctx.common(body), note=body.note),
                         response)


@_route("receive", "Receive a handed-off case: the receiving officer becomes its owner")
async def receive(case_id: uuid.UUID, body: Body, ctx: Ctx, response: Response) -> Accepted:
    return await ctx.run(c.ReceiveHandoff(case_id=case_id, **ctx.common(body)), response)


@_route("return", "Return the case one level down, with reasons")
async def return_case(case_id: uuid.UUID, body: ReturnBody, ctx: Ctx,
                      response: Response) -> Accepted:
    return await ctx.run(c.ReturnCase(
        case_id=case_id, **ctx.common(body), reasons=tuple(body.reasons),
        documents=tuple(body.documents)), response)


@_route("reassign", "Give the case another owner in the holding unit")
async def reassign(case_id: uuid.UUID, body: ReassignBody, ctx: Ctx,
                   response: Response) -> Accepted:
    return await ctx.run(c.ReassignOwner(
        case_id=case_id, **ctx.common(body), to_owner=body.to_owner, reason=body.reason),
        response)


@_route("decide", "Approve or refuse, with the basis (deciding level only)")
async def decide(case_id: uuid.UUID, body: DecideBody, ctx: Ctx, response: Response) -> Accepted:
    return await ctx.run(c.DecideCase(
        case_id=case_id, **ctx.common(body), outcome=body.outcome, basis=body.basis), response)


@_route("close", "Close a decided case")
async def close(case_id: uuid.UUID, body: Body, ctx: Ctx, response: Response) -> Accepted:
    return await ctx.run(c.CloseCase(case_id=case_id, **ctx.common(body)), response)


@_route("withdraw", "Withdraw the case at the applicant's request")
async def withdraw(case_id: uuid.UUID, body: ReasonBody, ctx: Ctx,
                   response: Response) -> Accepted:
    return await ctx.run(c.WithdrawCase(case_id=case_id, **ctx.common(body),
                                        reason=body.reason), response)


@_route("reopen", "Reopen a closed case within the service's window")
async def reopen(case_id: uuid.UUID, body: ReasonBody, ctx: Ctx, response: Response) -> Accepted:
    return await ctx.run(c.ReopenCase(case_id=case_id, **ctx.common(body), reason=body.reason),
                         response)


@_route("notes", "Add a note to the case's record")
async def add_note(case_id: uuid.UUID, body: NoteBody, ctx: Ctx, response: Response) -> Accepted:
    return await ctx.run(c.AddNote(case_id=case_id, **ctx.common(body), text=body.text),
                         response)


@router.get("/{case_id}", response_model=CaseView, summary="A case's current state")
async def get_case(case_id: uuid.UUID, who: CurrentPrincipal, handler: Handler,
                   response: Response) -> CaseView:
    require_staff(who, handler.ref.staff)
    state, version, position, _ = await handler.load(case_id)
    if state is None:
        raise ProblemError(404, "Not found", f"no case {case_id}",
                           errors=[{"field": "path:case_id", "message": "no such case"}])
    org = handler.ref.org
    if who.role != Role.AUDITOR and not (
        org.is_within(state.unit, who.unit) or org.is_within(state.station, who.unit)
    ):
        raise ProblemError(403, "Outside your jurisdiction",
                           f"case {case_id} is outside the jurisdiction of {who.unit}",
                           errors=[{"field": "token:unit",
                                    "message": f"{who.unit} does not hold this case"}])
    response.headers["ETag"] = f'"{version}"'
    return CaseView(
        case_id=state.case_id, tracking_no=state.tracking_no, service_code=state.service_code,
        visit_id=state.visit_id, status=str(state.status), unit=state.unit,
        level=str(state.level), owner=state.owner,
        documents_provided=sorted(state.documents_provided),
        documents_outstanding=sorted(state.documents_outstanding),
        document_requests=state.document_requests,
        outcome=None if state.outcome is None else str(state.outcome), basis=state.basis,
        submitted_at=state.submitted_at, last_at=state.last_at, version=version,
        position=position,
    )


@operations.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
async def metrics(request: Request) -> PlainTextResponse:
    """The SLA clock: its timer's ticks and failures, what it fired, due timers not yet fired,
    and the agent keeping due times (applied, parked, retrying, position per partition)."""
    service = request.app.state.service
    text = await render(service.sla_ticks, service.sla_agent, service.pool, service.clock())
    return PlainTextResponse(text, media_type=PROMETHEUS_TEXT)
