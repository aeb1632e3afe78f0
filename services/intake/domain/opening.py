"""The commands that open a case at the counter, in the case domain's own language: submit, the
receiving clerk accepts it (first-inquiry responsibility: they own it) and, when documents are
missing, asks for every one of them at once (one-time notification). Pure."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from services.cases.domain import AcceptCase, Command, RequestDocuments, SubmitCase
from services.intake.domain.ids import case_id, tracking_no
from services.intake.domain.routing import CasePlan, Route
from shared.contracts.cases import Actor, EncryptedApplicant


@dataclass(frozen=True, slots=True)
class Reception:
    """Who received the visit: ``submitter`` records the submission (the clerk at a counter,
    or the sending system), ``receiver`` is the clerk who accepts and owns the cases."""

    submitter: Actor
    receiver: Actor
    at: datetime
    source_system: str | None = None


def opening_commands(plan: CasePlan, *, case: UUID, visit: UUID, station: str,
                     applicant: EncryptedApplicant, reception: Reception,
                     tracking_key: bytes) -> list[Command]:
    submit = SubmitCase(
        case_id=case, at=reception.at, actor=reception.submitter,
        tracking_no=tracking_no(case, station, reception.at, tracking_key),
        service_code=plan.service.code,
        visit_id=visit, station=station, applicant=applicant, documents=plan.documents,
        source_system=reception.source_system,
    )
    commands: list[Command] = [
        submit, AcceptCase(case_id=case, at=reception.at, actor=reception.receiver)]
    if plan.missing:
        commands.append(RequestDocuments(case_id=case, at=reception.at, actor=reception.receiver))
    return commands


def visit_commands(route: Route, *, visit: UUID, applicant: EncryptedApplicant,
                   reception: Reception, tracking_key: bytes) -> dict[UUID, list[Command]]:
    """Every case of the visit with the commands that open it, keyed by case id;
    ``tracking_key`` keys the tracking numbers (``ids.tracking_no``)."""
    return {
        (cid := case_id(visit, plan.service.code)): opening_commands(
            plan, case=cid, visit=visit, station=route.station.code, applicant=applicant,
            reception=reception, tracking_key=tracking_key)
        for plan in route.cases
    }
