"""HTTP entrypoint of intake: a station clerk receives a resident. Routes only translate:
payload → visit request → handler → receipt (or problem+json naming the field)."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Request, Response
from fastapi.responses import PlainTextResponse
from pydantic import Field

from services.intake.domain import Applicant, Refused, ServiceRequest, Visit
from services.intake.domain.ids import fingerprint
from services.intake.domain.receipts import VisitReceipt
from services.intake.domain.submission import Code, Documents, IdempotencyKey, Strict
from services.intake.handlers import IntakeHandler, KeyReused, VisitRequest
from services.intake.metrics import render
from shared.auth import CurrentPrincipal, Principal
from shared.contracts.cases import Actor
from shared.http import ProblemError
from shared.inputs import Text
from shared.logging import current_correlation_id
from shared.reference import Role
from shared.service import PROMETHEUS_TEXT

router = APIRouter(prefix="/v1", tags=["intake"])
operations = APIRouter(tags=["operations"])
_STATUS = {"invalid": 422, "forbidden": 403, "conflict": 409, "not_found": 404}
REPLAYED_HEADER = "Idempotent-Replayed"
# The largest valid visit (10 services of 30 document codes of 64 characters, a 50-character
# name and a 200-character address, all \u-escaped) is about 25 KB: 1 MiB leaves room for
# any formatting a client may add.
MAX_BODY_BYTES = 1 << 20
_HEADER_FIELDS = {"idempotency_key": "header:Idempotency-Key"}  # a visit's key, over HTTP


class VisitBody(Visit):
    acting_for: Text | None = Field(
        default=None, max_length=64,
        description="The clerk on whose behalf their designated backup receives (A/B).")


class IntakeBody(Strict):
    station: str = Field(pattern=r"^\d{12}$", description="Receiving station's unit code.")
    applicant: Applicant
    service_code: Code
    # checked here as in ServiceRequest: found only in as_visit, inside the route, it was a 500
    documents: Documents = ()
    acting_for: Text | None = Field(default=None, max_length=64)

    def as_visit(self) -> VisitBody:
        return VisitBody(station=self.station, applicant=self.applicant,
                         services=(ServiceRequest(service_code=self.service_code,
                                                  documents=self.documents),),
                         acting_for=self.acting_for)


def handler_of(request: Request) -> IntakeHandler:
    handler = request.app.state.intake_handler
    assert isinstance(handler, IntakeHandler)
    return handler


Handler = Annotated[IntakeHandler, Depends(handler_of)]
Key = Annotated[IdempotencyKey | None, Header(
    alias="Idempotency-Key",
    description="Same key and payload → the same receipt; same key, other payload → 409.")]
_RESPONSES: dict[int | str, dict[str, str]] = {
    401: {"description": "No valid bearer token"},
    403: {"description": "Not a clerk of this station"},
    409: {"description": "Idempotency-Key reused with another payload"},
    422: {"description": "Invalid: each problem names its field"},
}


@router.post("/visits", response_model=VisitReceipt, status_code=201, responses=_RESPONSES,
             summary="Receive a resident: every service of one visit, opened at once (一站式)")
async def receive_visit(body: VisitBody, who: CurrentPrincipal, handler: Handler,
                        response: Response, idempotency_key: Key = None) -> VisitReceipt:
    """Opens one case per service, atomically, linked by the visit id. The receiving clerk owns
    them (首问责任制); the receipt lists per case every missing document at once (一次性告知)
    and when the station's time limit falls due (限时办结)."""
    return await _submit(body, who, handler, response, idempotency_key)


@router.post("/intake", response_model=VisitReceipt, status_code=201, responses=_RESPONSES,
             summary="Receive a resident for a single service")
async def receive_one(body: IntakeBody, who: CurrentPrincipal, handler: Handler,
                      response: Response, idempotency_key: Key = None) -> VisitReceipt:
    """A visit with one service: the same rules and receipt as ``POST /v1/visits``."""
    return await _submit(body.as_visit(), who, handler, response, idempotency_key)


async def _submit(body: VisitBody, who: Principal, handler: IntakeHandler, response: Response,
                  key: str | None) -> VisitReceipt:
    clerk = _clerk(who, body.acting_for)
    request = VisitRequest(
        visit=body, scope=f"user:{who.user_id}", key=key or uuid.uuid4().hex, submitter=clerk,
        receiver=clerk, correlation_id=current_correlation_id() or uuid.uuid4().hex)
    try:
        receipt, replayed = await handler.submit_visit(
            request, fingerprint(body.model_dump(mode="json")), shared_key=key is not None)
    except Refused as refused:
        raise ProblemError(
            _STATUS[refused.kind], "Submission refused", str(refused),
            type_=f"/problems/{refused.reasons[0].code}",
            errors=[{"field": _HEADER_FIELDS.get(r.field, r.field), "message": r.message,
                     "type": r.code} for r in refused.reasons]) from refused
    except KeyReused as reused:
        raise ProblemError(409, "Idempotency-Key reused", str(reused),
                           errors=[{"field": "header:Idempotency-Key",
                                    "message": str(reused)}]) from reused
    if replayed:
        response.headers[REPLAYED_HEADER] = "true"
    return receipt


def _clerk(who: Principal, acting_for: str | None) -> Actor:
    if who.role != Role.STATION_CLERK:
        raise ProblemError(403, "Not a station clerk",
                           "only station clerks receive residents",
                           errors=[{"field": "token:role", "message": f"role {who.role}"}])
    return Actor(user_id=who.user_id, role=Role.STATION_CLERK, unit=who.unit,
                 acting_for=acting_for)


@operations.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
async def metrics(request: Request) -> PlainTextResponse:
    """The Kafka ingress: messages received, accepted, duplicate, rejected (and published to
    intake.rejected), redelivered, at reused offsets; failed batches."""
    agent = getattr(request.app.state, "submission_agent", None)
    text = render(agent.ingress.stats if agent else None, agent.failures if agent else 0)
    return PlainTextResponse(text, media_type=PROMETHEUS_TEXT)
