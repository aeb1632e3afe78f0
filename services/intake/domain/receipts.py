"""What the resident (or the sending system) is told: per case its public tracking number, the
owner, the one-time notification of every missing document, and when the receiving level's
time limit falls due. Built from the events themselves, so a replayed request gets the answer
the log holds. Pure."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TypeVar
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from shared.contracts import cases as e
from shared.contracts.registry import DomainEvent
from shared.reference import Catalogue

T = TypeVar("T")


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True)


class MissingDocument(Frozen):
    code: str
    name_zh: str
    name_en: str


class Deadline(Frozen):
    level: str
    unit: str
    due_at: datetime = Field(description="When the receiving level's time limit falls due.")
    warn_at: datetime
    clock_paused: bool = Field(
        description="True while the case waits for missing documents: the due date moves "
                    "later by the time spent waiting.")


class CaseReceipt(Frozen):
    case_id: UUID
    tracking_no: str = Field(description="Public: look the case up with it, no personal data.")
    service_code: str
    station: str
    owner: str = Field(description="First-inquiry responsibility: who answers for the case.")
    missing_documents: list[MissingDocument] = Field(
        description="One-time notification: every required document not yet supplied.")
    sla: Deadline


class VisitReceipt(Frozen):
    visit_id: UUID
    subject_id: str = Field(description="The data subject (for erasure requests).")
    cases: list[CaseReceipt]
    position: int = Field(description="Global log position; pass as min_position to queries.")


def case_receipt(events: Sequence[DomainEvent], catalogue: Catalogue) -> CaseReceipt:
    submitted = _one(events, e.CaseSubmitted)
    accepted = _one(events, e.CaseAccepted)
    timer = _one(events, e.SlaTimerScheduled)
    requested = [ev for ev in events if isinstance(ev, e.DocumentsRequested)]
    missing = requested[0].documents if requested else ()
    return CaseReceipt(
        case_id=submitted.case_id, tracking_no=submitted.tracking_no,
        service_code=submitted.service_code, station=submitted.station, owner=accepted.owner,
        missing_documents=[_document(code, catalogue) for code in missing],
        sla=Deadline(level=timer.level, unit=timer.unit, due_at=timer.due_at,
                     warn_at=timer.warn_at, clock_paused=bool(requested)),
    )


def visit_receipt(visit: UUID, events_by_case: Mapping[UUID, Sequence[DomainEvent]],
                  catalogue: Catalogue, position: int) -> VisitReceipt:
    cases = [case_receipt(events, catalogue) for events in events_by_case.values()]
    first = _one(next(iter(events_by_case.values())), e.CaseSubmitted)
    return VisitReceipt(visit_id=visit, subject_id=first.applicant.subject_id, cases=cases,
                        position=position)


def _document(code: str, catalogue: Catalogue) -> MissingDocument:
    doc = catalogue.document(code)
    return MissingDocument(code=code, name_zh=doc.name_zh, name_en=doc.name_en)


def _one(events: Sequence[DomainEvent], kind: type[T]) -> T:
    for event in events:
        if isinstance(event, kind):
            return event
    raise ValueError(f"the case's opening events hold no {kind.__name__}")
